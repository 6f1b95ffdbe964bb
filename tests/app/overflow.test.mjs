// A conference that outgrows its bridge (issue 17, docs/colibri2.md §4c): with `[focus]
// bridge_selection = "region"` the focus keeps a conference on its bridge while that bridge is
// not overloaded for it, as Jicofo's RegionBasedBridgeSelectionStrategy does; here a bridge
// counts as overloaded once it holds `max_bridge_participants = 2` of the conference. Alice
// and Bob of the official web app land on the same bridge-only meetd; Carol, the third, on
// the other one, joined by a relay, and all three decode each other. A viewer is placed on the
// bridge with room and plays the speakers of both.
import { useApp, appTest, assert } from './lib.mjs';
import { withBridges, bridgePort, joinViewer } from './bridges.mjs';

const app = useApp({
    name: 'app-overflow',
    config: 'bridge_brewery = "jvbbrewery"\nuse_local_bridge = false\nbridge_selection = "region"\nmax_bridge_participants = 2\n\n[visitors]\nenabled = true\n',
});

appTest('a conference grows onto a second bridge when its own holds max_bridge_participants', app.wrap(async () => {
    await app.server.userAdd('jvb@auth.meet.jitsi', 'jvbpass');
    await withBridges(app, 'app-overflow', [['jvb2'], ['jvb3']], async ([b1, b2]) => {
        const hash = 'config.p2p.enabled=false';
        const a = await app.join('growing', { name: 'Alice', hash });
        const b = await app.join('growing', { name: 'Bob', hash });
        await a.waitVideoFrom(b, 30000, { audio: true });
        await b.waitVideoFrom(a, 30000, { audio: true });
        const name = (port) => (port === b1.mediaPort ? 'jvb2' : port === b2.mediaPort ? 'jvb3' : `port ${port}`);
        const [pa, pb] = [name(await bridgePort(a)), name(await bridgePort(b))];
        assert.equal(pa, pb, 'Alice and Bob on one bridge');
        assert.doesNotMatch(app.server.logTail(800), /relay between bridges set up/, 'no relay for two');
        const c = await app.join('growing', { name: 'Carol', hash });
        const t0 = Date.now();
        for (const [x, y] of [[a, c], [b, c], [c, a], [c, b]]) await x.waitVideoFrom(y, 30000, { audio: true });
        const pc = name(await bridgePort(c));
        assert.notEqual(pc, pa, 'Carol on the other bridge');
        assert.match(app.server.logTail(800), /relay between bridges set up/);
        console.log(`# overflow: Alice and Bob on ${pa}, Carol on ${pc}; all decode each other ${Date.now() - t0} ms after Carol joined`);
        // A viewer is placed the same way (Carol's bridge has room for one more of the
        // conference) and plays Alice from the other bridge through the relay.
        const v = await joinViewer(app, 'growing', 'Vic', hash, [a, c]);
        const pv = name(await bridgePort(v));
        assert.equal(pv, pc, 'the viewer on the bridge with room');
        console.log(`# overflow: a viewer on ${pv} plays Alice (${pa}) and Carol`);
        await app.leaveAll();
    });
}));
