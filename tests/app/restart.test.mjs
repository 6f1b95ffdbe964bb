// Restarts nobody has to act on (issue 18): three people in a meeting of the official web app,
// meetd is stopped (SIGTERM) and started again on the same ports and data, as an upgrade
// does; every app gets back into the meeting by itself and everyone has everyone's video
// again. Reports the time from the restart until all media is back.
import { useApp, appTest, assert } from './lib.mjs';

const app = useApp({ name: 'app-restart' });

appTest('three participants get their media back after meetd restarts', app.wrap(async () => {
    const r = 'restart' + Math.random().toString(36).slice(2, 8);
    const hash = 'config.p2p.enabled=false';
    const ps = [];
    for (const name of ['Alice', 'Bob', 'Carol']) ps.push(await app.join(r, { name, hash }));
    const allMedia = async (ms) => {
        for (const p of ps) {
            for (const o of ps) if (o !== p) await p.waitVideoFrom(o, ms);
        }
    };
    await allMedia(20000);
    const before = await Promise.all(ps.map((p) => p.id()));

    const t0 = Date.now();
    await app.server.restart();
    const up = Date.now() - t0;
    // Everyone back in the room (a new join: a new endpoint id), and media both ways.
    for (const [i, p] of ps.entries()) {
        await p.waitFor(([old, n]) => {
            const c = APP.store.getState()['features/base/conference'].conference;
            return c && c.isJoined() && c.myUserId() !== old && c.getParticipants().length === n;
        }, 'back in the meeting with the others', 90000, [before[i], ps.length - 1]);
    }
    const rejoined = Date.now() - t0;
    await allMedia(60000);
    const back = Date.now() - t0;
    const after = await Promise.all(ps.map((p) => p.id()));
    assert.equal(new Set(after).size, 3);
    for (const id of after) assert.ok(!before.includes(id), 'a new endpoint id');
    console.log(`# restart: meetd healthy again after ${up} ms; everyone rejoined after ${rejoined} ms; all video back after ${back} ms (from the SIGTERM)`);
}), { timeout: 240000 });
