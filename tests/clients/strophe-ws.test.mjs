// strophe.js (the library inside lib-jitsi-meet) against meetd over WebSocket
// (RFC 7395), plus XEP-0198 resumption on a raw `ws` socket shaped like
// lib-jitsi-meet's ResumeTask (reconnect to URL&previd=<id>, SASL again,
// <resume previd h/> instead of bind).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { useServer, DOMAIN, sleep, withTimeout } from '../lib/server.mjs';
import {
    $iq,
    $msg,
    stropheConnect,
    stropheDisconnect,
    sendIqAny,
    sendIqResult,
    waitForStanza,
    childText,
    findChild,
    errorCondition,
    discoFeatures,
    pingIq,
    discoInfoIq,
    extdiscoIq,
    serialize,
    NS_EXTDISCO2,
} from '../lib/strophe.mjs';
import { RawXmppWs, NS_SM, streamErrorCondition, xmlEscape } from '../lib/rawws.mjs';

const srv = useServer({ name: 'strophe-ws' });
const open = [];
srv.defer(async () => {
    for (const c of open) {
        if (c instanceof RawXmppWs) c.terminate();
        else await stropheDisconnect(c, 2000);
    }
});

const wsUrl = (q = 'room=testroom') => `${srv.server.wsUrl}?${q}`;

async function connect(opts) {
    const c = await stropheConnect(wsUrl(), opts);
    open.push(c);
    return c;
}

const FULL_JID_RE = /^[^@/\s]+@meet\.jitsi\/[^\s]+$/;

let a; // first strophe session, shared by the simple tests

test('strophe: anonymous login over WebSocket binds a full JID on meet.jitsi', srv.wrap(async () => {
    a = await connect();
    assert.ok(a.connected, 'connection should be connected');
    assert.ok(a.authenticated, 'connection should be authenticated');
    assert.match(a.jid, FULL_JID_RE, `bound JID ${a.jid} should be <node>@meet.jitsi/<resource>`);
}));

test('strophe: XEP-0199 ping to the domain is answered with a result', srv.wrap(async () => {
    const res = await sendIqResult(a, pingIq(DOMAIN));
    assert.equal(res.getAttribute('type'), 'result');
    const from = res.getAttribute('from');
    assert.ok(from === null || from === DOMAIN, `ping result from ${from}`);
}));

test('strophe: disco#info on the domain lists urn:xmpp:ping', srv.wrap(async () => {
    const res = await sendIqResult(a, discoInfoIq(DOMAIN));
    const features = discoFeatures(res);
    assert.ok(features.includes('urn:xmpp:ping'), `features: ${JSON.stringify(features)}\n${serialize(res)}`);
    assert.ok(features.includes('http://jabber.org/protocol/disco#info'), `features: ${JSON.stringify(features)}`);
}));

test('strophe: XEP-0215 extdisco:2 services query is answered with a result', srv.wrap(async () => {
    const res = await sendIqAny(a, extdiscoIq(DOMAIN));
    assert.equal(res.getAttribute('type'), 'result', `extdisco:2 answer: ${serialize(res)}`);
    const services = findChild(res, 'services', NS_EXTDISCO2);
    assert.ok(services, `result should carry <services xmlns='${NS_EXTDISCO2}'>: ${serialize(res)}`);
    for (const s of Array.from(services.getElementsByTagName('service'))) {
        assert.ok(s.getAttribute('type') && s.getAttribute('host'), `service needs type and host: ${serialize(s)}`);
    }
}));

test('strophe: chat message between two sessions is routed by full JID', srv.wrap(async () => {
    const b = await connect();
    assert.notEqual(b.jid, a.jid, 'two anonymous sessions must get different JIDs');
    const body = `hello from a ${Date.now()}`;
    const got = waitForStanza(b, 'message', (m) => childText(m, 'body') === body, 5000, 'message a→b');
    a.send($msg({ to: b.jid, type: 'chat', id: 'm1' }).c('body').t(body));
    const m = await got;
    assert.equal(m.getAttribute('from'), a.jid, `from should be the sender's full JID: ${serialize(m)}`);
    assert.equal(m.getAttribute('type'), 'chat');

    // and back, with a non-chat IQ round trip between the two clients
    b.addHandler((iq) => {
        b.send($iq({ type: 'result', to: iq.getAttribute('from'), id: iq.getAttribute('id') }));
        return true;
    }, 'urn:xmpp:ping', 'iq', 'get');
    const r = await sendIqAny(a, pingIq(b.jid));
    assert.equal(r.getAttribute('type'), 'result', `client-to-client ping: ${serialize(r)}`);
    assert.equal(r.getAttribute('from'), b.jid);
    await stropheDisconnect(b);
}));

test('strophe: IQ to a nonexistent full JID gets error service-unavailable', srv.wrap(async () => {
    const node = a.jid.split('@')[0];
    for (const to of [`nosuchuser-${Date.now()}@${DOMAIN}/nores`, `${node}@${DOMAIN}/no-such-resource-${Date.now()}`]) {
        const res = await sendIqAny(a, pingIq(to));
        assert.equal(res.getAttribute('type'), 'error', `IQ to ${to}: ${serialize(res)}`);
        assert.equal(errorCondition(res), 'service-unavailable', `IQ to ${to}: ${serialize(res)}`);
        assert.equal(res.getAttribute('from'), to, `error should come from the addressed JID: ${serialize(res)}`);
    }
}));

test('strophe: built-in XEP-0198 support gets <enabled resume="true"> with a URL-safe id', srv.wrap(async () => {
    const c = await connect({ options: { enableStreamManagement: true } });
    await withTimeout((async () => {
        while (!c.sm.enabled) await sleep(20);
    })(), 5000, `<enabled/> (trace:\n${c.trace.join('\n')})`);
    assert.equal(c.sm.state.resumeSupported, true, 'server should grant resume="true"');
    assert.match(c.sm.state.id, /^[A-Za-z0-9_-]+$/, 'LJM rewrites previd= with [A-Za-z0-9_-]+ so the SM id must match it');
    // the connection keeps working with SM on
    await sendIqResult(c, pingIq(DOMAIN));
    await stropheDisconnect(c);
}));

test('raw ws: XEP-0198 resume after socket loss delivers messages sent meanwhile', srv.wrap(async () => {
    const sender = await connect();

    // 1. session with resumption enabled
    const r1 = await RawXmppWs.open(wsUrl('room=testroom'));
    open.push(r1);
    await r1.authAnonymous();
    assert.ok(r1.hasSmFeature(), `post-SASL features should offer <sm xmlns='${NS_SM}'/>`);
    const jid = await r1.bind();
    assert.match(jid, FULL_JID_RE);
    r1.send(`<enable xmlns='${NS_SM}' resume='true'/>`);
    const enabled = await r1.waitForElement('enabled', NS_SM);
    assert.equal(enabled.getAttribute('resume'), 'true', 'resume should be granted');
    const smId = enabled.getAttribute('id');
    assert.match(smId ?? '', /^[A-Za-z0-9_-]+$/, `SM id ${smId} must be URL-safe`);

    // 2. one outbound stanza (acked by h on resume) and one inbound message
    const ping = await r1.ping(DOMAIN);
    assert.equal(ping.getAttribute('type'), 'result');
    sender.send($msg({ to: jid, type: 'chat' }).c('body').t('before-drop'));
    await r1.waitFor((el) => el?.localName === 'message' && el.getElementsByTagName('body')[0]?.textContent === 'before-drop', {
        what: 'message before the drop',
    });
    const hBefore = r1.h;
    assert.ok(hBefore >= 2, `client counted ${hBefore} inbound stanzas (ping result + message)`);

    // 3. the socket dies without <close/>; a message is sent while we are away
    r1.terminate();
    await r1.waitClosed();
    await sleep(300);
    sender.send($msg({ to: jid, type: 'chat' }).c('body').t('while-away'));
    await sleep(300);

    // 4. reconnect like LJM's ResumeTask: same URL + previd, SASL again, <resume/>
    const r2 = await RawXmppWs.open(wsUrl(`room=testroom&previd=${encodeURIComponent(smId)}`));
    open.push(r2);
    await r2.authAnonymous();
    assert.ok(r2.hasSmFeature(), 'the new stream must offer sm again so the client can resume');
    // Count from where we were before sending <resume/>: the replayed stanzas and the
    // server's <r/> can arrive in the same batch as <resumed/>.
    r2.smActive = true;
    r2.h = hBefore;
    r2.send(`<resume xmlns='${NS_SM}' previd='${xmlEscape(smId)}' h='${hBefore}'/>`);
    const ans = await r2.waitFor((el) => el?.namespaceURI === NS_SM && ['resumed', 'failed'].includes(el.localName), {
        what: '<resumed/> or <failed/>',
    });
    assert.equal(ans.localName, 'resumed', `expected <resumed/>, got: ${ans.toString()}`);
    assert.equal(ans.getAttribute('previd'), smId);
    assert.equal(ans.getAttribute('h'), '1', 'server must have handled exactly our one ping IQ (h=1)');

    // 5. the message sent while away arrives on the resumed stream, to the same JID
    const away = await r2.waitFor((el) => el?.localName === 'message' && el.getElementsByTagName('body')[0]?.textContent === 'while-away', {
        what: 'message sent while disconnected',
    });
    assert.equal(away.getAttribute('to'), jid, 'resumed session keeps its full JID');
    // nothing we already acked (before-drop) is replayed
    const replayed = r2.queue.filter((f) => f.el?.getElementsByTagName('body')[0]?.textContent === 'before-drop');
    assert.equal(replayed.length, 0, 'stanzas acknowledged by h must not be re-sent');

    // 6. still routable and usable after resume
    const pong = await r2.ping(DOMAIN);
    assert.equal(pong.getAttribute('type'), 'result');
    sender.send($msg({ to: jid, type: 'chat' }).c('body').t('after-resume'));
    await r2.waitFor((el) => el?.localName === 'message' && el.getElementsByTagName('body')[0]?.textContent === 'after-resume', {
        what: 'message after resume',
    });
    await r2.close();
    await stropheDisconnect(sender);
}));

test('raw ws: <resume/> with an unknown previd gets <failed/> and the stream can still bind', srv.wrap(async () => {
    const r = await RawXmppWs.open(wsUrl('room=testroom&previd=doesnotexist123'));
    open.push(r);
    await r.authAnonymous();
    r.send(`<resume xmlns='${NS_SM}' previd='doesnotexist123' h='0'/>`);
    const ans = await r.waitFor((el) => el?.namespaceURI === NS_SM && ['resumed', 'failed'].includes(el.localName), {
        what: '<failed/>',
    });
    assert.equal(ans.localName, 'failed', ans.toString());
    const jid = await r.bind();
    assert.match(jid, FULL_JID_RE);
    const pong = await r.ping(DOMAIN);
    assert.equal(pong.getAttribute('type'), 'result');
    await r.close();
}));

test('raw ws: graceful <close/> is answered with <close/>', srv.wrap(async () => {
    const r = await RawXmppWs.open(wsUrl());
    open.push(r);
    await r.login();
    r.send(`<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>`);
    await r.waitFor((el) => el?.localName === 'close', { what: '<close/> from server', failOnClose: true });
    await r.waitClosed(5000);
    assert.ok(!r.queue.some((f) => streamErrorCondition(f.el)), 'no stream error on a clean close');
}));

test('strophe: clean disconnect', srv.wrap(async () => {
    await stropheDisconnect(a);
    assert.equal(a.connected, false);
}));
