// meetd's SIP gateway towards a trunk (issue 16, docs/sip.md §1): with [sip] auth_user set, a
// caller with the right digest credentials is answered and one with wrong credentials is not;
// a caller who hangs up while typing the PIN leaves meetd taking the next call. Debian's
// baresip on loopback (the in-meeting part is tests/app/sip.test.mjs).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { execFileSync } from 'node:child_process';
import { useServer, sleep } from '../lib/server.mjs';
import { Phone, freeUdpPort } from '../lib/baresip.mjs';

const noBaresip = (() => {
    try {
        execFileSync('baresip', ['-h'], { stdio: 'ignore' });
        return false;
    } catch (e) {
        return e.code === 'ENOENT' ? 'baresip (Debian package baresip-core) is not installed' : false;
    }
})();

const PORT = await freeUdpPort();
const srv = useServer({
    name: 'sip',
    config: `[sip]\nenabled = true\nlisten = "127.0.0.1:${PORT}"\nauth_user = "trunk"\nauth_password = "s3cret"\n`,
});

/** One OPTIONS over UDP: meetd's status line. */
const options = () => new Promise((resolve, reject) => {
    const s = createSocket('udp4');
    const timer = setTimeout(() => { s.close(); reject(new Error('no answer to OPTIONS')); }, 5000);
    s.on('message', (m) => { clearTimeout(timer); s.close(); resolve(m.toString().split('\r\n')[0]); });
    s.bind(0, '127.0.0.1', () => {
        const { port } = s.address();
        s.send(`OPTIONS sip:meet@127.0.0.1:${PORT} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:${port};branch=z9hG4bKopt1\r\n`
            + `From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:meet@127.0.0.1>\r\nCall-ID: opt1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n`,
        PORT, '127.0.0.1');
    });
});

test('digest credentials: the right ones get in, wrong ones are refused; a caller who hangs up mid-PIN leaves meetd as it was',
    { skip: noBaresip }, srv.wrap(async () => {
        const good = await Phone.start('+4930123456', 'trunk', { auth: { user: 'trunk', password: 's3cret' } });
        try {
            good.command('dial', `sip:meet@127.0.0.1:${PORT}`);
            await good.waitEvent('CALL_ESTABLISHED');
            await good.keys('12');
            good.command('hangup');
            await good.waitEvent('CALL_CLOSED');
        } finally {
            await good.stop();
        }
        const bad = await Phone.start('+4930123456', 'intruder', { auth: { user: 'trunk', password: 'guess' } });
        try {
            bad.command('dial', `sip:meet@127.0.0.1:${PORT}`);
            await bad.waitEvent('CALL_CLOSED');
            assert.ok(!bad.events.some((e) => e.type === 'CALL_ESTABLISHED'), 'wrong credentials were answered');
        } finally {
            await bad.stop();
        }
        await sleep(500);
        assert.equal(await options(), 'SIP/2.0 200 OK');
        const log = srv.server.logTail(200);
        assert.match(log, /SIP: the caller hung up caller=\+493\*\*\*\*456/);
        assert.match(log, /SIP: call refused, wrong digest credentials/);
        assert.ok(!log.includes('4930123456'), 'the number is never logged unmasked');
    }));
