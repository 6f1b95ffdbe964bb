// The focus's bridge pool (issue 17, docs/colibri2.md §4a): meetd's focus takes bridges from
// its brewery. Here the in-process bridge is kept out ([focus] use_local_bridge = false) and a
// second meetd runs as a bridge only (--role bridge), logged in to the first over XMPP: two
// people of the official web app meet, and their media goes through that bridge.
import { useApp, appTest, assert, sleep } from './lib.mjs';
import { startServer } from '../lib/server.mjs';

const app = useApp({
    name: 'app-bridgepool',
    config: 'bridge_brewery = "jvbbrewery"\nuse_local_bridge = false\n',
});

const gauge = async (base, name) => {
    const m = await (await fetch(`${base}/metrics`)).text();
    return Number(m.match(new RegExp(`^${name} (\\d+)$`, 'm'))?.[1] ?? NaN);
};

appTest('with the in-process bridge kept out, the call runs on a bridge-only meetd from the brewery', app.wrap(async () => {
    await app.server.userAdd('jvb@auth.meet.jitsi', 'jvbpass');
    const bridge = await startServer({
        name: 'app-bridgepool-jvb2',
        config: `[bridge]\nid = "jvb2"\nxmpp_url = "${app.server.wsUrl}"\nxmpp_password = "jvbpass"\n`,
        extraArgs: ['--role', 'bridge', '--advertise-ip', '127.0.0.1'],
    });
    try {
        // Its first stats presence goes out on login.
        const deadline = Date.now() + 15000;
        while (!/bridge pool: a bridge joined the brewery/.test(app.server.logTail(400)) && Date.now() < deadline) await sleep(200);
        assert.match(app.server.logTail(400), /bridge pool: a bridge joined the brewery/);
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
        await app.leaveAll();
    } catch (e) {
        e.message += `\n--- bridge-only meetd ---\n${bridge.logTail(40)}`;
        throw e;
    } finally {
        await bridge.stop();
    }
}));
