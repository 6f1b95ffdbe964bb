// People in two regions (issue 17, docs/colibri2.md §4c): with `[focus] bridge_selection =
// "region"` the focus places each participant on a bridge of the participant's own region,
// as Jicofo's region-based strategy does with the region the app puts in its presence
// (config.js `deploymentInfo.userRegion`, which meetd fills from `[web] regions` or, as a
// stock nginx does, from a local proxy's X-Proxy-Region header). Alice and Bob come without
// a region (the focus's, "north"); Carol's proxy says "south": she is on the south bridge,
// joined to the north one by a relay, and all three decode each other.
import { useApp, appTest, assert } from './lib.mjs';
import { withBridges, bridgePort } from './bridges.mjs';

const app = useApp({
    name: 'app-regions',
    config: 'bridge_brewery = "jvbbrewery"\nuse_local_bridge = false\nbridge_selection = "region"\nregion = "north"\n',
});

appTest('each participant on a bridge of its own region, the regions joined by a relay', app.wrap(async () => {
    await app.server.userAdd('jvb@auth.meet.jitsi', 'jvbpass');
    await withBridges(app, 'app-regions', [['jvb2', 'region = "north"\n'], ['jvb3', 'region = "south"\n']], async ([north, south]) => {
        const hash = 'config.p2p.enabled=false';
        const a = await app.join('regional', { name: 'Alice', hash });
        const b = await app.join('regional', { name: 'Bob', hash });
        const c = await app.join('regional', { name: 'Carol', hash, headers: { 'X-Proxy-Region': 'south' } });
        assert.equal(await c.eval(() => config.deploymentInfo?.userRegion), 'south', 'config.js names her region');
        for (const [x, y] of [[a, b], [a, c], [b, c], [c, a], [c, b]]) await x.waitVideoFrom(y, 30000, { audio: true });
        const on = (port) => (port === north.mediaPort ? 'north' : port === south.mediaPort ? 'south' : `port ${port}`);
        const where = { Alice: on(await bridgePort(a)), Bob: on(await bridgePort(b)), Carol: on(await bridgePort(c)) };
        console.log(`# regions: ${JSON.stringify(where)}`);
        assert.deepEqual(where, { Alice: 'north', Bob: 'north', Carol: 'south' });
        assert.match(app.server.logTail(800), /relay between bridges set up/);
        await app.leaveAll();
    });
}));
