// The focus's bridge pool (issue 17, docs/colibri2.md §4a): meetd's focus takes bridges from
// its brewery. Here the in-process bridge is kept out ([focus] use_local_bridge = false) and a
// second meetd runs as a bridge only (--role bridge), logged in to the first over XMPP: two
// people of the official web app meet, and their media goes through that bridge. When that
// bridge dies, the focus moves the conference to a third meetd from the brewery and the two
// see each other again; the test reports how long that took.
import { useApp, appTest, assert } from './lib.mjs';
import { gauge, bridgeOnly as bridgeOnlyOf, joinedBrewery as joinedBreweryOf } from './bridges.mjs';

const app = useApp({
    name: 'app-bridgepool',
    config: 'bridge_brewery = "jvbbrewery"\nuse_local_bridge = false\n',
});

const bridgeOnly = (id) => bridgeOnlyOf(app, 'app-bridgepool', id);
const joinedBrewery = (n) => joinedBreweryOf(app, n);

appTest('with the in-process bridge kept out, the call runs on a bridge-only meetd from the brewery, and moves when that bridge dies', app.wrap(async () => {
    await app.server.userAdd('jvb@auth.meet.jitsi', 'jvbpass');
    const bridge = await bridgeOnly('jvb2');
    let spare = null;
    try {
        // Its first stats presence goes out on login.
        await joinedBrewery(1);
        const hash = 'config.p2p.enabled=false';
        const a = await app.join('pooled', { name: 'Alice', hash });
        const b = await app.join('pooled', { name: 'Bob', hash });
        await a.waitVideoFrom(b, 20000, { audio: true });
        await b.waitVideoFrom(a, 20000, { audio: true });
        const [remote, local] = [await gauge(bridge.httpBase, 'meetd_media_endpoints'), await gauge(app.base, 'meetd_media_endpoints')];
        console.log(`# bridge pool: endpoints on the bridge-only meetd ${remote}, on the focus's meetd ${local}`);
        assert.equal(remote, 2, 'both endpoints on the bridge-only meetd');
        assert.equal(local, 0, 'none on the focus\'s own bridge');
        assert.match(app.server.logTail(400), /bridge pool: conference placed .*jvbbrewery@internal-muc\.meet\.jitsi\/jvb2/);
        // A spare bridge joins; the first one dies.
        spare = await bridgeOnly('jvb3');
        await joinedBrewery(2);
        const killed = Date.now();
        bridge.proc.kill('SIGKILL');
        await a.waitVideoFrom(b, 45000, { audio: true });
        await b.waitVideoFrom(a, 45000, { audio: true });
        const moved = Date.now() - killed;
        const onSpare = await gauge(spare.httpBase, 'meetd_media_endpoints');
        console.log(`# bridge pool: bridge killed → both see each other again through the spare in ${moved} ms (endpoints there: ${onSpare})`);
        assert.equal(onSpare, 2, 'both endpoints moved to the spare bridge');
        assert.match(app.server.logTail(600), /bridge pool: a bridge is gone/);
        await app.leaveAll();
    } catch (e) {
        e.message += `\n--- bridge-only meetd ---\n${bridge.logTail(40)}\n--- spare ---\n${spare?.logTail(40)}`;
        throw e;
    } finally {
        await bridge.stop();
        await spare?.stop();
    }
}));
