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
    // The operations metrics see the meeting: one conference of three, three media
    // connections (UDP, or ICE-TCP where the browser picks that pair), each with its join latency.
    const m = await (await fetch(`${app.base}/metrics`)).text();
    const v = (re) => Number(m.match(re)?.[1] ?? NaN);
    assert.equal(v(/^meetd_conferences_by_size\{size="3-4"\} (\d+)$/m), 1, 'a conference of three');
    assert.ok(v(/^meetd_media_connections_total\{transport="udp"\} (\d+)$/m)
        + v(/^meetd_media_connections_total\{transport="tcp"\} (\d+)$/m) >= 3, 'media connections (UDP, or ICE-TCP)');
    assert.ok(v(/^meetd_media_connect_seconds_count (\d+)$/m) >= 3, 'join latencies');
    assert.equal(v(/^meetd_media_connect_seconds_bucket\{le="\+Inf"\} (\d+)$/m), v(/^meetd_media_connect_seconds_count (\d+)$/m));
    console.log('# join latency (allocation to media up), mean ms:',
        Math.round(1000 * v(/^meetd_media_connect_seconds_sum ([\d.]+)$/m) / v(/^meetd_media_connect_seconds_count (\d+)$/m)));
    console.log('p2p after 3?', await a.isP2p());
    await c.hangUp();
    await a.waitVideoFrom(b, 15000);
    await b.waitVideoFrom(a, 15000);
    console.log('p2p after leave?', await a.isP2p());
    await app.leaveAll();
}));
