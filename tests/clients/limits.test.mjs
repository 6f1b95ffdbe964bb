// Abuse and limits over WebSocket, with a raw `ws` socket: oversized frames,
// DTD/entity declarations, deep nesting and garbage must each end only the
// offending stream (stream error, then close) — never expand entities, never
// take the server or other sessions down.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { useServer, DOMAIN } from '../lib/server.mjs';
import { RawXmppWs, NS_CLIENT } from '../lib/rawws.mjs';

// Defaults per the CLI contract: max stanza 256 KiB.
const DEFAULT_MAX_STANZA = 256 * 1024;

const srv = useServer({ name: 'limits' });
const sockets = [];
srv.defer(() => sockets.forEach((s) => s.terminate()));

async function loggedIn() {
    const c = await RawXmppWs.open(`${srv.server.wsUrl}?room=limits`);
    sockets.push(c);
    const jid = await c.login();
    return { c, jid };
}

let bystander; // a session that must survive everything below

async function assertOthersUnaffected() {
    // the long-lived session still works
    const pong = await bystander.c.ping(DOMAIN);
    assert.equal(pong.getAttribute('type'), 'result', 'bystander ping after abuse');
    // and a brand-new client can log in and be reached
    const fresh = await loggedIn();
    const body = `still-alive-${Date.now()}`;
    bystander.c.send(`<message xmlns='${NS_CLIENT}' to='${fresh.jid}' type='chat'><body>${body}</body></message>`);
    await fresh.c.waitFor((el) => el?.localName === 'message' && el.getElementsByTagName('body')[0]?.textContent === body, {
        what: 'message from bystander to a fresh client',
    });
    await fresh.c.close();
}

/**
 * The abusive socket must get a stream error (one of `conditions`) and then be
 * closed. `wsCloseCodes` lists WebSocket close codes accepted instead of a
 * stream error (e.g. 1007 for a frame that is not XML at all, as Prosody does).
 */
async function expectStreamErrorAndClose(c, conditions, what, { wsCloseCodes = [] } = {}) {
    let cond;
    try {
        cond = await c.waitForStreamError({ timeoutMs: 5000, failOnClose: true });
    } catch (e) {
        if (c.isClosed && wsCloseCodes.includes(c.closeInfo.code)) return;
        throw new Error(`${what}: expected a stream error (${conditions.join(' or ')}) before close: ${e.message}`);
    }
    assert.ok(conditions.includes(cond), `${what}: stream error condition <${cond}/>, expected one of ${conditions.join(', ')}\n${c.traceText(10)}`);
    await c.waitClosed(5000);
}

test('limits: setup — a bystander session', srv.wrap(async () => {
    bystander = await loggedIn();
}));

test('limits: a stanza well below the limit (64 KiB) is delivered', srv.wrap(async () => {
    const { c, jid } = await loggedIn();
    const body = 'x'.repeat(64 * 1024);
    c.send(`<message xmlns='${NS_CLIENT}' to='${jid}' type='chat'><body>${body}</body></message>`);
    // (Not the login-time push from the domain: the chat message to ourselves.)
    const m = await c.waitFor((el) => el?.localName === 'message' && el.getAttribute('type') === 'chat', { what: '64 KiB message to self' });
    assert.equal(m.getElementsByTagName('body')[0].textContent.length, body.length);
    await c.close();
}));

test('limits: oversized frame → policy-violation stream error and close', srv.wrap(async () => {
    const { c, jid } = await loggedIn();
    const body = 'A'.repeat(DEFAULT_MAX_STANZA + 64 * 1024);
    c.send(`<message xmlns='${NS_CLIENT}' to='${jid}' type='chat'><body>${body}</body></message>`);
    await expectStreamErrorAndClose(c, ['policy-violation'], 'oversized frame');
    assert.ok(!c.queue.some((f) => f.el?.localName === 'message' && f.el.getAttribute('type') === 'chat'), 'the oversized message must not be delivered');
    await assertOthersUnaffected();
}));

test('limits: oversized frame before authentication → policy-violation and close', srv.wrap(async () => {
    const c = await RawXmppWs.open(`${srv.server.wsUrl}`);
    sockets.push(c);
    c.send(`<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='${DOMAIN}' version='1.0' junk='${'j'.repeat(DEFAULT_MAX_STANZA + 1024)}'/>`);
    await expectStreamErrorAndClose(c, ['policy-violation'], 'oversized unauthenticated frame');
    await assertOthersUnaffected();
}));

test('limits: DOCTYPE with entity declaration → stream error, never expanded', srv.wrap(async () => {
    const { c, jid } = await loggedIn();
    c.send(
        `<!DOCTYPE message [<!ENTITY boom "EXPANDED-ENTITY"><!ENTITY b2 "&boom;&boom;&boom;&boom;">]>` +
            `<message xmlns='${NS_CLIENT}' to='${jid}' type='chat'><body>&b2;</body></message>`,
    );
    await expectStreamErrorAndClose(c, ['restricted-xml', 'not-well-formed', 'invalid-xml', 'bad-format'], 'DOCTYPE');
    assert.ok(!c.trace.some((l) => l.startsWith('<<') && l.includes('EXPANDED-ENTITY')), 'entity must never be expanded');
    await assertOthersUnaffected();
}));

test('limits: undeclared entity reference → stream error', srv.wrap(async () => {
    const { c, jid } = await loggedIn();
    c.send(`<message xmlns='${NS_CLIENT}' to='${jid}' type='chat'><body>&xxe;</body></message>`);
    await expectStreamErrorAndClose(c, ['restricted-xml', 'not-well-formed', 'invalid-xml', 'bad-format'], 'undeclared entity');
    await assertOthersUnaffected();
}));

test('limits: processing instruction → restricted-xml (or not-well-formed)', srv.wrap(async () => {
    const { c, jid } = await loggedIn();
    c.send(`<message xmlns='${NS_CLIENT}' to='${jid}' type='chat'><?evil pi?><body>x</body></message>`);
    await expectStreamErrorAndClose(c, ['restricted-xml', 'not-well-formed', 'invalid-xml', 'bad-format'], 'processing instruction');
    await assertOthersUnaffected();
}));

test('limits: deeply nested XML (20000 levels) → stream error and close', srv.wrap(async () => {
    const { c, jid } = await loggedIn();
    const depth = 20000; // ~140 KB, under the size limit: the depth limit must trigger
    const frame = `<message xmlns='${NS_CLIENT}' to='${jid}' type='chat'>${'<a>'.repeat(depth)}${'</a>'.repeat(depth)}</message>`;
    assert.ok(frame.length < DEFAULT_MAX_STANZA);
    c.send(frame);
    await expectStreamErrorAndClose(c, ['policy-violation', 'not-well-formed', 'restricted-xml', 'invalid-xml', 'resource-constraint'], 'deep nesting');
    await assertOthersUnaffected();
}));

test('limits: malformed XML → not-well-formed and close', srv.wrap(async () => {
    const { c } = await loggedIn();
    c.send("<message xmlns='jabber:client' <<not>> xml at all &&& </unbalanced>");
    await expectStreamErrorAndClose(c, ['not-well-formed', 'bad-format', 'invalid-xml'], 'malformed XML');
    await assertOthersUnaffected();
}));

test('limits: a frame that is not XML at all → stream error (or WS close 1007) and close', srv.wrap(async () => {
    const { c } = await loggedIn();
    c.send('this is not xml &&& </unbalanced>');
    await expectStreamErrorAndClose(c, ['not-well-formed', 'bad-format', 'invalid-xml'], 'garbage', { wsCloseCodes: [1007] });
    await assertOthersUnaffected();
}));

test('limits: garbage as the very first frame → stream error (or WS close 1007) and close', srv.wrap(async () => {
    const c = await RawXmppWs.open(`${srv.server.wsUrl}`);
    sockets.push(c);
    c.send('\u0000\u0001GET / HTTP/1.1\r\n\r\n<<<');
    await expectStreamErrorAndClose(c, ['not-well-formed', 'bad-format', 'invalid-xml', 'invalid-namespace'], 'garbage first frame', {
        wsCloseCodes: [1007],
    });
    await assertOthersUnaffected();
}));

test('limits: the bystander survived everything', srv.wrap(async () => {
    assert.equal(bystander.c.isClosed, false);
    const pong = await bystander.c.ping(DOMAIN);
    assert.equal(pong.getAttribute('type'), 'result');
    await bystander.c.close();
}));
