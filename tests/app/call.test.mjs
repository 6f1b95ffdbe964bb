// The basic call in the official web app: two people (P2P), a third (the bridge), leaving.
// Alice and Bob run the bridge channel over the SCTP data channel (the app's default), Carol
// over the WebSocket (`bridgeChannel.preferSctp: false`): the source maps and constraints
// that seeing each other needs ride on both.
import { useApp, appTest, assert, sleep } from './lib.mjs';

/** The app's bridge-channel transport: "datachannel", "websocket" or null. */
const channelMode = (p) => p.eval(() => APP.conference._room?.rtc?._channel?.mode ?? null);

const app = useApp({ name: 'app-call' });

appTest('two people see each other, a third joins, one leaves', app.wrap(async () => {
    const a = await app.join('smoke', { name: 'Alice' });
    const b = await app.join('smoke', { name: 'Bob' });
    await a.waitVideoFrom(b, 15000);
    await b.waitVideoFrom(a, 15000);
    console.log('p2p?', await a.isP2p());
    const c = await app.join('smoke', { name: 'Carol', hash: 'config.bridgeChannel.preferSctp=false' });
    for (const [x, y] of [[a, b], [a, c], [b, a], [b, c], [c, a], [c, b]]) await x.waitVideoFrom(y, 15000);
    assert.deepEqual([await channelMode(a), await channelMode(b), await channelMode(c)],
        ['datachannel', 'datachannel', 'websocket']);
    console.log('p2p after 3?', await a.isP2p());
    await c.hangUp();
    await a.waitVideoFrom(b, 15000);
    await b.waitVideoFrom(a, 15000);
    console.log('p2p after leave?', await a.isP2p());
    await app.leaveAll();
}));
