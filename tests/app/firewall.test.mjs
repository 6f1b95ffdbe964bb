// Clients behind firewalls that block UDP (issue 14). nftables in the test's network namespace
// drops every datagram to the bridge's media port: the app must reach the bridge over ICE-TCP
// (RFC 6544), first on the bridge's ICE-TCP port, then, with that port blocked as well, on the
// HTTPS port that it shares with HTTPS (what university guest networks let through).
import { useApp, appTest, assert, bridgeCall, firewall, openFirewall, noNft } from './lib.mjs';

const app = useApp({ name: 'app-firewall', https: true });

/** Both see each other through the bridge, each over `type` to `port`. */
async function callOver(room, type, port) {
    const over = (t) => t.type === type && Number(t.ip.split(':').pop()) === port;
    for (const t of await bridgeCall(app, room, '', over)) {
        assert.equal(t.type, type, JSON.stringify(t));
        assert.equal(Number(t.ip.split(':').pop()), port, JSON.stringify(t));
    }
}

appTest('UDP blocked: media over ICE-TCP on the bridge\'s TCP port', app.wrap(async () => {
    firewall([`udp dport ${app.server.mediaPort}`]);
    try {
        await callOver('fw1', 'tcp', app.server.mediaTcpPort);
    } finally {
        openFirewall();
    }
}), { skip: noNft });

appTest('UDP and the ICE-TCP port blocked: media over the HTTPS port', app.wrap(async () => {
    firewall([`udp dport ${app.server.mediaPort}`, `tcp dport ${app.server.mediaTcpPort}`]);
    try {
        await callOver('fw2', 'tcp', app.server.httpsPort);
    } finally {
        openFirewall();
    }
}), { skip: noNft });
