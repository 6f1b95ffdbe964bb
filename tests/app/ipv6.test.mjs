// An IPv6-only line (issue 14): meetd listens on ::1 and announces only fd00::1 as media
// address (a veth pair inside the test's namespace carries fd00::1 and fd00::2: Chromium
// gathers no candidates on IPv6 loopback), nftables drops every IPv4 packet, and the app loads,
// signals and sends media over IPv6.
import { execFileSync } from 'node:child_process';
import { after } from 'node:test';
import { useApp, appTest, assert, bridgeCall, firewall, openFirewall, noNft } from './lib.mjs';

const ip = (...args) => execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
try {
    ip('link', 'show', 'v6a');
} catch {
    ip('link', 'add', 'v6a', 'type', 'veth', 'peer', 'name', 'v6b');
    ip('link', 'set', 'v6a', 'up');
    ip('link', 'set', 'v6b', 'up');
    ip('-6', 'addr', 'add', 'fd00::1/64', 'dev', 'v6a', 'nodad');
    ip('-6', 'addr', 'add', 'fd00::2/64', 'dev', 'v6b', 'nodad');
}

// The other suites in this namespace expect it loopback-only again.
after(() => ip('link', 'del', 'v6a'));

const app = useApp({ name: 'app-ipv6', ipv6: 'fd00::1' });

appTest('IPv4 dropped: the app works over IPv6 alone', app.wrap(async () => {
    firewall(['meta nfproto ipv4']);
    try {
        for (const t of await bridgeCall(app, 'v6')) {
            assert.equal(t.type, 'udp', JSON.stringify(t));
            // The bridge's address, or, where Chromium learned the bridge's candidate from its
            // check before the signalled one (peer-reflexive), our own IPv6 address: Chromium
            // does not show a peer-reflexive remote address.
            assert.ok(t.ip.includes('fd00::1') || (t.remoteCandidateType === 'prflx' && t.localip.startsWith('fd00::2')),
                JSON.stringify(t));
        }
    } finally {
        openFirewall();
    }
}), { skip: noNft });
