// The basic call in the official web app: two people (P2P), a third (the bridge), leaving.
import { useApp, appTest, assert, sleep } from './lib.mjs';

const app = useApp({ name: 'app-call' });

appTest('two people see each other, a third joins, one leaves', app.wrap(async () => {
    const a = await app.join('smoke', { name: 'Alice' });
    const b = await app.join('smoke', { name: 'Bob' });
    await a.waitVideoFrom(b, 15000);
    await b.waitVideoFrom(a, 15000);
    console.log('p2p?', await a.isP2p());
    const c = await app.join('smoke', { name: 'Carol' });
    for (const [x, y] of [[a, b], [a, c], [b, a], [b, c], [c, a], [c, b]]) await x.waitVideoFrom(y, 15000);
    console.log('p2p after 3?', await a.isP2p());
    await c.hangUp();
    await a.waitVideoFrom(b, 15000);
    await b.waitVideoFrom(a, 15000);
    console.log('p2p after leave?', await a.isP2p());
    await app.leaveAll();
}));
