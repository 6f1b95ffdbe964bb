// The embedded TURN server (issue 14): no coturn. The app learns it through XEP-0215 with
// time-limited credentials and relays through it: the bridge connection forced to relay
// candidates (lib-jitsi-meet takes TURN over TCP and TLS for it), a P2P call relayed both ways,
// and, with TURN's own port blocked by nftables, TURN over TLS on the HTTPS port.
import { useApp, appTest, assert, bridgeCall, firewall, openFirewall, noNft } from './lib.mjs';

// meetd's self-signed certificate: Chromium's TURN-over-TLS client checks it like any other.
const app = useApp({ name: 'app-turn', https: true, browserArgs: ['--ignore-certificate-errors'] });

appTest('the bridge connection relayed through the embedded TURN server', app.wrap(async () => {
    const ts = await bridgeCall(app, 'turn1', 'config.forceTurnRelay=true');
    for (const t of ts) assert.equal(t.localCandidateType, 'relay', JSON.stringify(t));
}));

appTest('a P2P call relayed both ways', app.wrap(async () => {
    const hash = 'config.forceTurnRelay=true';
    const a = await app.join('turn2', { name: 'Alice', hash });
    const b = await app.join('turn2', { name: 'Bob', hash });
    for (const p of [a, b]) {
        await p.waitFor(() => APP.conference.getP2PConnectionState() === 'connected', 'P2P ICE connected', 30000);
    }
    await Promise.all([a.waitVideoFrom(b, 15000), b.waitVideoFrom(a, 15000)]);
    assert.ok(await a.isP2p());
    const t = await a.waitFor(() => APP.conference.getStats().transport?.find((x) => x.p2p), 'P2P transport stats', 15000);
    assert.equal(t.localCandidateType, 'relay', JSON.stringify(t));
    await app.leaveAll();
}));

appTest('TURN\'s port blocked: TURN over TLS on the HTTPS port', app.wrap(async () => {
    const port = app.server.turnPort;
    firewall([`udp dport ${port}`, `tcp dport ${port}`, `tcp dport ${app.server.mediaTcpPort}`]);
    try {
        const ts = await bridgeCall(app, 'turn3', 'config.forceTurnRelay=true');
        for (const t of ts) assert.equal(t.localCandidateType, 'relay', JSON.stringify(t));
    } finally {
        openFirewall();
    }
}), { skip: noNft });
