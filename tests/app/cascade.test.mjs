// Cascading (issue 17, docs/colibri2.md §4b, docs/bridge.md B.15): three meetd processes, the
// focus with its in-process bridge kept out and two bridge-only meetds in its brewery.
// `[focus] bridge_selection = "split"` puts the participants of one conference on both
// bridges by turns, and the focus joins the bridges with Colibri2 relays (ICE/DTLS between
// the bridges' media ports). Three people of the official web app meet: Alice and Carol on
// one bridge, Bob on the other; everyone decodes everyone's video and hears their audio, and
// Bob's reaction (an endpoint message) reaches the others through the relay's channel; a
// viewer (visitor) plays the speakers of both bridges.
// A fourth with last-N 1 follows the speaker on either bridge. Then Bob's bridge dies: Bob
// moves to the bridge that is left while Alice and Carol keep their sessions, and the test
// reports how long until they see each other again.
import { useApp, appTest, assert, sleep } from './lib.mjs';
import { gauge, withBridges, bridgePort, joinViewer } from './bridges.mjs';

const app = useApp({
    name: 'app-cascade',
    config: 'bridge_brewery = "jvbbrewery"\nuse_local_bridge = false\nbridge_selection = "split"\n\n[visitors]\nenabled = true\n',
});

const everyoneSeesEveryone = async (people, ms, audio = true) => {
    for (const x of people) {
        for (const y of people) {
            if (x !== y) await x.waitVideoFrom(y, ms, { audio });
        }
    }
};

appTest('one conference over two bridge-only meetds joined by a relay: everyone decodes everyone; a bridge dies and the call goes on', app.wrap(async () => {
    await app.server.userAdd('jvb@auth.meet.jitsi', 'jvbpass');
    // The second bridge's engine runs sharded (a receive thread and two engine threads): its
    // relays' own sockets are read by the shard of their conference.
    await withBridges(app, 'app-cascade', [['jvb2'], ['jvb3', '[media]\nthreads = 2\n']], async ([b1, b2]) => {
        const hash = 'config.p2p.enabled=false';
        const a = await app.join('cascaded', { name: 'Alice', hash });
        const b = await app.join('cascaded', { name: 'Bob', hash });
        const c = await app.join('cascaded', { name: 'Carol', hash });
        const t0 = Date.now();
        await everyoneSeesEveryone([a, b, c], 30000);
        console.log(`# cascade: all three decode each other ${Date.now() - t0} ms after the last join`);
        const log = app.server.logTail(800);
        const placed = [...log.matchAll(/conference placed \(split\).*bridge=Remote\("[^"]*\/(jvb\d)"\)/g)].map((m) => m[1]);
        console.log(`# cascade: conference created on ${placed.join(', ')}; relays: ${(log.match(/relay between bridges set up/g) ?? []).length}`);
        assert.deepEqual([...new Set(placed)].sort(), ['jvb2', 'jvb3'], 'the conference runs on both bridges');
        assert.match(log, /relay between bridges set up/);
        const [e1, e2] = [await gauge(b1.httpBase, 'meetd_media_endpoints'), await gauge(b2.httpBase, 'meetd_media_endpoints')];
        console.log(`# cascade: engine endpoints (participants, relay, relayed) jvb2 ${e1}, jvb3 ${e2}; on the focus's meetd ${await gauge(app.base, 'meetd_media_endpoints')}`);
        // A second conference over the same two bridges (each relay has a port of its own).
        const d1 = await app.join('cascaded2', { name: 'Dan', hash });
        const er = await app.join('cascaded2', { name: 'Erin', hash });
        await d1.waitVideoFrom(er, 30000, { audio: true });
        await er.waitVideoFrom(d1, 30000, { audio: true });
        const placed2 = (app.server.logTail(800).match(/conference placed \(split\)/g) ?? []).length;
        console.log(`# cascade: a second conference over the same bridges: both decode each other (split placements so far: ${placed2})`);
        assert.ok(placed2 >= 4, 'the second conference runs on both bridges too');
        await d1.hangUp();
        await er.hangUp();
        // Bob claps (Alt+C): reactions are endpoint messages on the bridge channel, and reach
        // Alice and Carol on the other bridge through the relay's channel.
        await b.page.locator('body').press('Alt+c');
        for (const p of [a, c]) await p.page.locator('.reaction-emoji').first().waitFor({ timeout: 10000 });
        assert.match(b2.logTail(400) + b1.logTail(400), /relay channel: connected to the other bridge/);
        console.log('# cascade: a reaction crosses the relay\'s channel');
        // A viewer (visitor) is served from the pool too: on whichever bridge it lands, it
        // plays the speakers of both.
        const vw = await joinViewer(app, 'cascaded', 'Vic', hash, [a, b]);
        const on = async (p) => ((await bridgePort(p)) === b1.mediaPort ? 'jvb2' : 'jvb3');
        const [av, bv, vv] = [await on(a), await on(b), await on(vw)];
        assert.notEqual(av, bv, 'Alice and Bob on different bridges');
        console.log(`# cascade: a viewer on ${vv} plays Alice (${av}) and Bob (${bv})`);
        await vw.close();
        // Dominant speaker and last-N across the cascade: Dave (on Bob's bridge, by turns)
        // receives one video. Only Alice (the other bridge) speaks: she is the dominant
        // speaker there too, Dave gets her video, and Bob (his own bridge) is outside last-N.
        // Then only Bob speaks: the other way round, and Carol sees Bob as dominant speaker.
        const d = await app.join('cascaded', { name: 'Dave', hash: `${hash}&config.channelLastN=1&config.pcStatsInterval=1500`, startAudioMuted: true });
        await c.clickToolbar('toolbar.accessibilityLabel.mute', 'mute');
        await b.clickToolbar('toolbar.accessibilityLabel.mute', 'mute');
        await d.waitDominantSpeaker(a, 15000);
        await d.waitVideoFrom(a, 15000);
        await d.waitNotInLastN(b, true, 15000);
        await a.clickToolbar('toolbar.accessibilityLabel.mute', 'mute');
        await b.clickToolbar('toolbar.accessibilityLabel.unmute', 'unmute');
        await d.waitDominantSpeaker(b, 15000);
        await c.waitDominantSpeaker(b, 15000);
        await d.waitVideoFrom(b, 15000);
        await d.waitNotInLastN(a, true, 15000);
        console.log('# cascade: dominant speaker and last-N follow a speaker on either bridge');
        await d.hangUp();
        // Bob's bridge dies: who was on it (Bob, and Carol if the pool put her there too)
        // moves to the bridge left; who was on the other keeps their session.
        const sessions = async (p) => p.eval(() => APP.conference._room?.jvbJingleSession?.sid);
        const people = [a, b, c];
        const before = await Promise.all(people.map(async (p) => ({ p, port: await bridgePort(p), sid: await sessions(p) })));
        const bobs = before[1].port;
        const dying = bobs === b1.mediaPort ? b1 : b2;
        assert.ok(bobs === b1.mediaPort || bobs === b2.mediaPort, `Bob on a bridge-only meetd (${bobs})`);
        console.log(`# cascade: on the bridge killed: ${before.filter((x) => x.port === bobs).map((x) => x.p.name).join(', ')}`);
        const killed = Date.now();
        dying.proc.kill('SIGKILL');
        // (Only Bob's microphone is on now.) All six directions are watched at once, from 1 s
        // after the kill (frames decoded before it cannot count); each reports when it
        // decodes again.
        await sleep(1000);
        const back = {};
        await Promise.all([[a, b, true], [c, b, true], [b, a, false], [b, c, false], [a, c, false], [c, a, false]]
            .map(async ([x, y, audio]) => {
                await x.waitVideoFrom(y, 45000, { audio });
                back[`${y.name}→${x.name}`] = Date.now() - killed;
            }));
        console.log(`# cascade: Bob's bridge killed → everyone sees everyone again in ${Date.now() - killed} ms (${JSON.stringify(back)})`);
        for (const x of before) {
            const sid = await sessions(x.p);
            if (x.port === bobs) assert.notEqual(sid, x.sid, `${x.p.name} moved to a new session`);
            else assert.equal(sid, x.sid, `${x.p.name} kept the session`);
        }
        assert.match(app.server.logTail(800), /bridge pool: a bridge is gone/);
        assert.match(app.server.logTail(800), /its bridge is gone; re-inviting/);
        await app.leaveAll();
    });
}));
