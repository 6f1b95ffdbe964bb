// JWT sign-in on the wire (issue 12): the token in the `token` query parameter of the
// WebSocket and BOSH URLs, checked before SASL ANONYMOUS succeeds; a refused token gets
// <failure><not-allowed/><text>reason</text></failure> (the shape lib-jitsi-meet reads) and
// the stream ends. The app-level checks are in tests/app/jwt.test.mjs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { useServer, DOMAIN } from '../lib/server.mjs';
import { stropheConnect, stropheDisconnect } from '../lib/strophe.mjs';
import { signToken, moodleClaims } from '../lib/jwt.mjs';

const SECRET = 'wire-secret';
const srv = useServer({
    name: 'jwt',
    config: `[auth]\nmode = "jwt"\n[auth.jwt]\napp_id = "moodle"\napp_secret = "${SECRET}"\n`,
});
const good = () => signToken(moodleClaims({ name: 'Ada', teacher: false, room: 'r1' }), { secret: SECRET });

test('WebSocket: a good token signs in, a bad one fails with its reason', srv.wrap(async (t, server) => {
    const conn = await stropheConnect(`${server.wsUrl}?room=r1&token=${good()}`);
    assert.match(conn.jid, new RegExp(`@${DOMAIN.replace(/\./g, '\\.')}/`));
    await stropheDisconnect(conn);
    const forged = signToken(moodleClaims({ name: 'Eve', teacher: true, room: 'r1' }), { secret: 'guess' });
    const err = await stropheConnect(`${server.wsUrl}?room=r1&token=${forged}`).then(() => null, (e) => e);
    assert.ok(err, 'refused');
    assert.match(err.message, /AUTHFAIL/);
    assert.match(err.message, /<failure xmlns="urn:ietf:params:xml:ns:xmpp-sasl"><not-allowed\/><text>bad signature<\/text><\/failure>/);
    const none = await stropheConnect(`${server.wsUrl}?room=r1`).then(() => null, (e) => e);
    assert.match(none.message, /token required/);
    assert.ok(server.logTail(50).includes('token refused'), 'a log line');
    assert.ok(!server.logTail(200).includes(forged), 'the token is never logged');
}));

/** One BOSH request; returns the response body text. */
async function bosh(server, query, body) {
    const r = await fetch(`${server.boshUrl}?${query}`, { method: 'POST', body, headers: { 'content-type': 'text/xml' } });
    return r.text();
}

test('BOSH: the token comes with the session request', srv.wrap(async (t, server) => {
    for (const [token, want] of [[good(), /<success/], [signToken(moodleClaims({ name: 'E', teacher: false, room: 'r1', aud: 'x' }), { secret: SECRET }), /<text>wrong audience<\/text>/]]) {
        const q = `room=r1&token=${token}`;
        const rid = 1000 + Math.floor(Math.random() * 1e6);
        const open = await bosh(server, q, `<body rid='${rid}' to='${DOMAIN}' xml:lang='en' wait='10' hold='1' ver='1.6' xmpp:version='1.0' xmlns='http://jabber.org/protocol/httpbind' xmlns:xmpp='urn:xmpp:xbosh'/>`);
        const sid = /sid=['"]([^'"]+)['"]/.exec(open)?.[1];
        assert.ok(sid, open);
        assert.match(open, /ANONYMOUS/);
        const auth = await bosh(server, q, `<body rid='${rid + 1}' sid='${sid}' xmlns='http://jabber.org/protocol/httpbind'><auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'/></body>`);
        assert.match(auth, want);
    }
}));
