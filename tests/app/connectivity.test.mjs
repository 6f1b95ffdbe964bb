// Connectivity as the app reports it (issue 19): ICE to the bridge on its one UDP port, P2P
// for two (meetd's STUN server in config.js), the move to the bridge when a third joins and
// back to P2P when they leave.
import { execFileSync } from 'node:child_process';
import { useApp, appTest, assert } from './lib.mjs';

const app = useApp({ name: 'app-connectivity' });

appTest('bridge: ICE connected over UDP, everyone on the one media port', app.wrap(async () => {
    const hash = 'config.p2p.enabled=false';
    const a = await app.join('conn1', { name: 'Alice', hash });
    const b = await app.join('conn1', { name: 'Bob', hash });
    for (const p of [a, b]) {
        await p.waitFor(() => APP.conference.getConnectionState() === 'connected', 'ICE connected', 15000);
    }
    await Promise.all([a.waitVideoFrom(b), b.waitVideoFrom(a)]);
    for (const p of [a, b]) {
        const t = await p.waitFor(() => APP.conference.getStats().transport?.[0], 'transport stats', 15000);
        assert.equal(t.type, 'udp', JSON.stringify(t));
        assert.equal(Number(t.ip.split(':').pop()), app.server.mediaPort, JSON.stringify(t));
    }
    await app.leaveAll();
}));

appTest('two in P2P, a third moves everyone to the bridge, and back to P2P when they leave', app.wrap(async () => {
    const a = await app.join('conn2', { name: 'Alice' });
    const b = await app.join('conn2', { name: 'Bob' });
    for (const p of [a, b]) {
        await p.waitFor(() => APP.conference.getP2PConnectionState() === 'connected', 'P2P ICE connected', 15000);
    }
    await Promise.all([a.waitVideoFrom(b), b.waitVideoFrom(a)]);
    assert.ok(await a.isP2p());
    const c = await app.join('conn2', { name: 'Carol' });
    for (const p of [a, b]) await p.waitFor(() => !APP.conference._room.isP2PActive(), 'the bridge', 10000);
    const everyone = [a, b, c];
    await Promise.all(everyone.flatMap((x) => everyone.filter((y) => y !== x).map((y) => x.waitVideoFrom(y, 10000))));
    await c.hangUp();
    // lib-jitsi-meet goes back to P2P backToP2PDelay (5 s) after the third left.
    for (const p of [a, b]) await p.waitFor(() => APP.conference._room.isP2PActive(), 'P2P again', 15000);
    await Promise.all([a.waitVideoFrom(b), b.waitVideoFrom(a)]);
    await app.leaveAll();
}));

// The bridge unreachable long enough for ICE to fail (Chrome: ~30 s without consent answers),
// then back: lib-jitsi-meet asks the focus for a new session (session-terminate with
// bridge-session restart), the focus re-invites, and media comes back.
appTest('ICE fails and the session is restarted', app.wrap(async () => {
    const hash = 'config.p2p.enabled=false';
    const a = await app.join('conn3', { name: 'Alice', hash });
    const b = await app.join('conn3', { name: 'Bob', hash });
    await Promise.all([a.waitVideoFrom(b, 10000), b.waitVideoFrom(a, 10000)]);
    const port = String(app.server.mediaPort);
    const sid = (p) => p.eval(() => APP.conference._room.jvbJingleSession?.sid);
    const before = await Promise.all([a, b].map(sid));
    const tc = (...args) => execFileSync('tc', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    // htb (what this kernel has): everything else passes, the media port's datagrams go to a
    // class whose queue holds nothing.
    tc('qdisc', 'add', 'dev', 'lo', 'root', 'handle', '1:', 'htb', 'default', '10');
    tc('class', 'add', 'dev', 'lo', 'parent', '1:', 'classid', '1:10', 'htb', 'rate', '10gbit');
    tc('class', 'add', 'dev', 'lo', 'parent', '1:', 'classid', '1:3', 'htb', 'rate', '8bit', 'ceil', '8bit');
    tc('qdisc', 'add', 'dev', 'lo', 'parent', '1:3', 'handle', '30:', 'pfifo', 'limit', '0');
    // Media over UDP, and over ICE-TCP (the media TCP port, and HTTPS, which shares its port
    // with media): with a TCP pair left, Chromium stays connected over it.
    const blocked = [['17', port], ['6', String(app.server.mediaTcpPort)], ['6', String(app.server.httpsPort)]];
    for (const [proto, p] of blocked) {
        for (const dir of ['sport', 'dport']) {
            tc('filter', 'add', 'dev', 'lo', 'parent', '1:', 'protocol', 'ip', 'prio', '1', 'u32',
                'match', 'ip', 'protocol', proto, '0xff', 'match', 'ip', dir, p, '0xffff', 'flowid', '1:3');
        }
    }
    try {
        // Failed, or already restarted (the app replaces the session at once).
        await Promise.all([a, b].map((p, i) => p.waitFor((old) => APP.conference.getConnectionState() === 'failed'
            || APP.conference._room.jvbJingleSession?.sid !== old, 'ICE failed', 60000, before[i])));
    } finally {
        tc('qdisc', 'del', 'dev', 'lo', 'root');
    }
    for (const p of [a, b]) {
        await p.waitFor(() => APP.conference.getConnectionState() === 'connected', 'ICE connected again', 15000);
    }
    const after = await Promise.all([a, b].map(sid));
    assert.ok(after.every((s, i) => s !== before[i]), 'new Jingle sessions');
    await Promise.all([a.waitVideoFrom(b), b.waitVideoFrom(a)]);
    await app.leaveAll();
}), { timeout: 240000 });
