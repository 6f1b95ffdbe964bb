// Clients behind firewalls that block UDP (issue 14). nftables in the test's network namespace
// drops every datagram to the bridge's media port: the app must reach the bridge over ICE-TCP
// (RFC 6544), first on the bridge's ICE-TCP port, then, with that port blocked as well, on the
// HTTPS port that it shares with HTTPS (what university guest networks let through).
import { execFileSync } from 'node:child_process';
import { useApp, appTest, assert } from './lib.mjs';

const app = useApp({ name: 'app-firewall', https: true });

const nft = (...args) => execFileSync('nft', args, { stdio: ['ignore', 'ignore', 'pipe'] });
const noNft = (() => {
    try {
        nft('--version');
        return false;
    } catch {
        return 'nft (Debian nftables) is not installed';
    }
})();

/** Drop what the rules match (nftables output hook), until `open()`. */
function firewall(rules) {
    nft('add', 'table', 'inet', 'meetd_fw');
    nft('add', 'chain', 'inet', 'meetd_fw', 'out', '{ type filter hook output priority 0; }');
    for (const r of rules) nft('add', 'rule', 'inet', 'meetd_fw', 'out', ...r.split(' '), 'drop');
}

function open() {
    try {
        nft('delete', 'table', 'inet', 'meetd_fw');
    } catch {
        // not there
    }
}

/** Both see each other over the bridge, and each one's transport is TCP to `port`. */
async function callOverTcp(room, port) {
    const hash = 'config.p2p.enabled=false';
    const a = await app.join(room, { name: 'Alice', hash });
    const b = await app.join(room, { name: 'Bob', hash });
    await Promise.all([a.waitVideoFrom(b, 30000), b.waitVideoFrom(a, 30000)]);
    for (const p of [a, b]) {
        const t = await p.waitFor(() => APP.conference.getStats().transport?.[0], 'transport stats', 15000);
        assert.equal(t.type, 'tcp', JSON.stringify(t));
        assert.equal(Number(t.ip.split(':').pop()), port, JSON.stringify(t));
    }
    await app.leaveAll();
}

appTest('UDP blocked: media over ICE-TCP on the bridge\'s TCP port', app.wrap(async () => {
    firewall([`udp dport ${app.server.mediaPort}`]);
    try {
        await callOverTcp('fw1', app.server.mediaTcpPort);
    } finally {
        open();
    }
}), { skip: noNft });

appTest('UDP and the ICE-TCP port blocked: media over the HTTPS port', app.wrap(async () => {
    firewall([`udp dport ${app.server.mediaPort}`, `tcp dport ${app.server.mediaTcpPort}`]);
    try {
        await callOverTcp('fw2', app.server.httpsPort);
    } finally {
        open();
    }
}), { skip: noNft });
