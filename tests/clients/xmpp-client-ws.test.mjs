// @xmpp/client (xmpp.js, used by Jitsi's own Prosody plugin tests) against
// meetd over WebSocket: anonymous login, IQs to the domain, and a message and
// an IQ between two clients.

import WebSocket from 'ws';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { client, xml } from '@xmpp/client';
import { useServer, DOMAIN, withTimeout } from '../lib/server.mjs';

// @xmpp/websocket uses the global WebSocket, which Node 20 does not have.
globalThis.WebSocket ??= WebSocket;

const srv = useServer({ name: 'xmpp-client-ws' });
const clients = [];
srv.defer(async () => {
    for (const c of clients) await withTimeout(c.stop(), 3000, 'xmpp.stop()').catch(() => {});
});

async function connect() {
    const xmpp = client({ service: `${srv.server.wsUrl}?room=testroom`, domain: DOMAIN });
    xmpp.errors = [];
    xmpp.received = [];
    xmpp.on('error', (e) => xmpp.errors.push(e));
    xmpp.on('stanza', (st) => xmpp.received.push(st));
    clients.push(xmpp);
    const jid = await withTimeout(xmpp.start(), 15000, '@xmpp/client start() (anonymous login)');
    // xmpp.js 0.14 goes online before <enabled/> arrives and resets its inbound
    // counter when it does, so a stanza that lands in between makes it report
    // a too-high 'h' later. Wait for <enabled/> (if SM was offered) first.
    const sm = xmpp.streamManagement;
    const deadline = Date.now() + 5000;
    while (sm.enableSent && !sm.enabled && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    return { xmpp, jid };
}

function waitStanza(xmpp, pred, ms = 5000, what = 'stanza') {
    return withTimeout(
        new Promise((resolve) => {
            const f = (st) => {
                if (pred(st)) {
                    xmpp.removeListener('stanza', f);
                    resolve(st);
                }
            };
            xmpp.on('stanza', f);
        }),
        ms,
        what,
    );
}

let a;
let b;

test('@xmpp/client: anonymous login over WebSocket', srv.wrap(async () => {
    a = await connect();
    assert.equal(a.jid.domain, DOMAIN);
    assert.ok(a.jid.local, `JID ${a.jid} should have a node`);
    assert.ok(a.jid.resource, `JID ${a.jid} should have a resource`);
    assert.deepEqual(a.xmpp.errors, []);
}));

test('@xmpp/client: ping and disco#info to the domain', srv.wrap(async () => {
    const pong = await a.xmpp.iqCaller.request(xml('iq', { type: 'get', to: DOMAIN }, xml('ping', { xmlns: 'urn:xmpp:ping' })), 5000);
    assert.equal(pong.attrs.type, 'result');
    const info = await a.xmpp.iqCaller.request(
        xml('iq', { type: 'get', to: DOMAIN }, xml('query', { xmlns: 'http://jabber.org/protocol/disco#info' })),
        5000,
    );
    const vars = info.getChild('query', 'http://jabber.org/protocol/disco#info').getChildren('feature').map((f) => f.attrs.var);
    assert.ok(vars.includes('urn:xmpp:ping'), `features: ${vars}`);
}));

test('@xmpp/client: message and IQ between two clients', srv.wrap(async () => {
    b = await connect();
    assert.notEqual(b.jid.toString(), a.jid.toString());
    const body = `xmppjs ${Date.now()}`;
    const got = waitStanza(b.xmpp, (st) => st.is('message') && st.getChildText('body') === body, 5000, 'message a→b');
    await a.xmpp.send(xml('message', { to: b.jid.toString(), type: 'chat' }, xml('body', {}, body)));
    const m = await got;
    assert.equal(m.attrs.from, a.jid.toString());

    // @xmpp/client answers urn:xmpp:ping itself (iqCallee), so b answers a's ping
    const res = await a.xmpp.iqCaller.request(
        xml('iq', { type: 'get', to: b.jid.toString() }, xml('ping', { xmlns: 'urn:xmpp:ping' })),
        5000,
    );
    assert.equal(res.attrs.type, 'result');
    assert.equal(res.attrs.from, b.jid.toString());
}));

test('@xmpp/client: IQ to an unknown full JID is rejected with service-unavailable', srv.wrap(async () => {
    await assert.rejects(
        a.xmpp.iqCaller.request(xml('iq', { type: 'get', to: `ghost@${DOMAIN}/nowhere` }, xml('ping', { xmlns: 'urn:xmpp:ping' })), 5000),
        (err) => {
            assert.equal(err.name, 'StanzaError', `expected a StanzaError, got ${err}`);
            assert.equal(err.condition, 'service-unavailable');
            return true;
        },
    );
}));

test('@xmpp/client: stream management was enabled (server offers sm:3 over WebSocket)', srv.wrap(async () => {
    assert.equal(a.xmpp.streamManagement.enabled, true, 'xmpp.js enables XEP-0198 when the server offers it');
    assert.ok(a.xmpp.streamManagement.id, 'SM id should be set when resume was granted');
}));

test('@xmpp/client: clean stop', srv.wrap(async () => {
    await withTimeout(b.xmpp.stop(), 5000, 'b.stop()');
    await withTimeout(a.xmpp.stop(), 5000, 'a.stop()');
    assert.equal(a.xmpp.status, 'offline');
    assert.deepEqual(a.xmpp.errors, []);
}));
