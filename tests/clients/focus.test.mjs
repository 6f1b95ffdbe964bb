// The conference focus, with @xmpp/client playing two Jitsi participants the way
// lib-jitsi-meet does (fixtures 03, 04, 07, 09, 10, 11): conference request, MUC join,
// session-initiate with the bridge's transport, session-accept with sources, source-add
// to the other, invalid sources rejected, the lone participant's session ended.

import WebSocket from 'ws';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { client, xml } from '@xmpp/client';
import { useServer, DOMAIN, withTimeout } from '../lib/server.mjs';

globalThis.WebSocket ??= WebSocket;

const MUC = `muc.${DOMAIN}`;
const FOCUS = `focus.${DOMAIN}`;
const FOCUS_JID = `focus@auth.${DOMAIN}`;
const NS_FOCUS = 'http://jitsi.org/protocol/focus';
const NS_JINGLE = 'urn:xmpp:jingle:1';
const NS_USER = 'http://jabber.org/protocol/muc#user';
const NS_ICE = 'urn:xmpp:jingle:transports:ice-udp:1';

// What lib-jitsi-meet advertises (fixture 07).
const FEATURES = [
    'http://jabber.org/protocol/caps', 'http://jitsi.org/json-encoded-sources', 'http://jitsi.org/receive-multiple-video-streams',
    'http://jitsi.org/remb', 'http://jitsi.org/source-name', 'http://jitsi.org/tcc', 'urn:ietf:rfc:4588', 'urn:xmpp:jingle:1',
    'urn:xmpp:jingle:apps:dtls:0', 'urn:xmpp:jingle:apps:rtp:1', 'urn:xmpp:jingle:apps:rtp:audio', 'urn:xmpp:jingle:apps:rtp:video',
    'urn:xmpp:jingle:transports:dtls-sctp:1', 'urn:xmpp:jingle:transports:ice-udp:1',
];

const srv = useServer({
    name: 'focus',
    config: '[server]\ndrain_timeout_secs = 60\n[focus]\nsingle_participant_timeout_secs = 2\n',
    extraArgs: ['--advertise-ip', '127.0.0.1'],
});
const all = [];
srv.defer(async () => {
    for (const c of all) await withTimeout(c.xmpp.stop(), 3000, 'stop').catch(() => {});
});

async function connect() {
    const xmpp = client({ service: `${srv.server.wsUrl}?room=fr`, domain: DOMAIN });
    const c = { xmpp, inbox: [], waiters: [] };
    xmpp.on('error', () => {});
    xmpp.on('stanza', (st) => {
        const i = c.waiters.findIndex((w) => w.pred(st));
        if (i >= 0) c.waiters.splice(i, 1)[0].resolve(st);
        else c.inbox.push(st);
    });
    // Answer the focus' disco#info like the client, and ack Jingle requests.
    xmpp.iqCallee.get('http://jabber.org/protocol/disco#info', 'query', () =>
        xml('query', { xmlns: 'http://jabber.org/protocol/disco#info' }, ...FEATURES.map((v) => xml('feature', { var: v }))));
    xmpp.iqCallee.set(NS_JINGLE, 'jingle', (ctx) => {
        c.inbox.push(ctx.stanza);
        const i = c.waiters.findIndex((w) => w.pred(ctx.stanza));
        if (i >= 0) c.waiters.splice(i, 1)[0].resolve(c.inbox.pop());
        return true;
    });
    c.jid = (await withTimeout(xmpp.start(), 15000, 'login')).toString();
    const sm = xmpp.streamManagement;
    const deadline = Date.now() + 5000;
    while (sm.enableSent && !sm.enabled && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    all.push(c);
    return c;
}

function next(c, pred, what, ms = 8000) {
    const i = c.inbox.findIndex(pred);
    if (i >= 0) return Promise.resolve(c.inbox.splice(i, 1)[0]);
    return withTimeout(new Promise((resolve) => c.waiters.push({ pred, resolve })), ms, `${what} at ${c.jid}`);
}

const jingle = (action) => (st) => st.is('iq') && st.getChild('jingle', NS_JINGLE)?.attrs.action === action;

async function conferenceRequest(c, room) {
    const iq = xml('iq', { type: 'set', to: FOCUS },
        xml('conference', { xmlns: NS_FOCUS, room, 'machine-uid': '0123456789abcdef' },
            xml('property', { name: 'rtcstatsEnabled', value: 'false' }),
            xml('property', { name: 'visitors-version', value: '1' })));
    return c.xmpp.iqCaller.request(iq, 15000);
}

async function joinRoom(c, room, nick) {
    await c.xmpp.send(xml('presence', { to: `${room}/${nick}` },
        xml('x', { xmlns: 'http://jabber.org/protocol/muc' }),
        xml('stats-id', {}, `stats-${nick}`),
        xml('SourceInfo', {}, '{}'),
        xml('nick', { xmlns: 'http://jabber.org/protocol/nick' }, `User ${nick}`)));
    return next(c, (st) => st.is('presence') && st.attrs.from === `${room}/${nick}`, 'self-presence');
}

function accept(room, sid, nick, base) {
    const src = (ssrc, name, msid, vt) => xml('source', { xmlns: 'urn:xmpp:jingle:apps:rtp:ssma:0', ssrc: String(ssrc), name, ...(vt ? { videoType: vt } : {}) },
        xml('parameter', { name: 'msid', value: msid }));
    const grp = (sem, ...ssrcs) => xml('ssrc-group', { xmlns: 'urn:xmpp:jingle:apps:rtp:ssma:0', semantics: sem }, ...ssrcs.map((s) => xml('source', { ssrc: String(s) })));
    const transport = xml('transport', { xmlns: NS_ICE, ufrag: `u${nick}`, pwd: 'clientpwdclientpwdclient' },
        xml('fingerprint', { xmlns: 'urn:xmpp:jingle:apps:dtls:0', hash: 'sha-256', setup: 'active' }, 'AA:BB:CC'));
    const vmsid = `${nick}-video-1 vid`;
    return xml('iq', { type: 'set', to: `${room}/focus` },
        xml('jingle', { xmlns: NS_JINGLE, action: 'session-accept', initiator: `${room}/focus`, sid },
            xml('group', { xmlns: 'urn:xmpp:jingle:apps:grouping:0', semantics: 'BUNDLE' }, xml('content', { name: 'audio' }), xml('content', { name: 'video' }), xml('content', { name: 'data' })),
            xml('content', { creator: 'responder', name: 'audio', senders: 'both' },
                xml('description', { xmlns: 'urn:xmpp:jingle:apps:rtp:1', media: 'audio' },
                    xml('payload-type', { id: '111', name: 'opus', clockrate: '48000', channels: '2' }),
                    src(base, `${nick}-a0`, `${nick}-audio-1 aud`)), transport),
            xml('content', { creator: 'responder', name: 'video', senders: 'both' },
                xml('description', { xmlns: 'urn:xmpp:jingle:apps:rtp:1', media: 'video' },
                    xml('payload-type', { id: '100', name: 'VP8', clockrate: '90000' }),
                    src(base + 1, `${nick}-v0`, vmsid, 'camera'), src(base + 2, `${nick}-v0`, vmsid, 'camera'), src(base + 3, `${nick}-v0`, vmsid, 'camera'),
                    src(base + 4, `${nick}-v0`, vmsid, 'camera'), src(base + 5, `${nick}-v0`, vmsid, 'camera'), src(base + 6, `${nick}-v0`, vmsid, 'camera'),
                    grp('SIM', base + 1, base + 2, base + 3), grp('FID', base + 1, base + 4), grp('FID', base + 2, base + 5), grp('FID', base + 3, base + 6)),
                transport)));
}

test('focus: conference request, join, session-initiate, accept, source-add, invalid sources, idle timeout', srv.wrap(async (t, server) => {
    const room = `standup@${MUC}`;
    const a = await connect();
    const b = await connect();
    // Before the conference request the room cannot be created by a client.
    await a.xmpp.send(xml('presence', { to: `early@${MUC}/x` }, xml('x', { xmlns: 'http://jabber.org/protocol/muc' })));
    const refused = await next(a, (st) => st.is('presence') && st.attrs.from === `early@${MUC}/x`, 'refused join');
    assert.equal(refused.attrs.type, 'error');
    assert.ok(refused.toString().includes('Room creation is restricted'));

    const reply = await conferenceRequest(a, room);
    const conf = reply.getChild('conference', NS_FOCUS);
    assert.equal(conf.attrs.ready, 'true');
    assert.equal(conf.attrs.focusjid, FOCUS_JID);

    // The focus' presence (with its real JID) arrives before our self-presence.
    const focusP = next(a, (st) => st.is('presence') && st.attrs.from === `${room}/focus`, 'focus presence');
    const selfA = await joinRoom(a, room, 'aaaa0000');
    const fp = await focusP;
    assert.ok(fp.getChild('x', NS_USER).getChild('item').attrs.jid.startsWith(`${FOCUS_JID}/`));
    assert.ok(fp.getChild('conference-properties', NS_FOCUS));
    assert.ok(selfA.getChild('x', NS_USER).getChildren('status').some((s) => s.attrs.code === '110'));
    // The first participant is made moderator by the focus.
    await next(a, (st) => st.is('presence') && st.attrs.from === `${room}/aaaa0000` && st.getChild('x', NS_USER)?.getChild('item')?.attrs.role === 'moderator', 'owner grant');

    assert.equal((await conferenceRequest(b, room)).getChild('conference', NS_FOCUS).attrs.ready, 'true');
    await joinRoom(b, room, 'bbbb1111');

    // Both get a session-initiate from the focus occupant, with the bridge's transport.
    const siA = await next(a, jingle('session-initiate'), 'session-initiate for a');
    const siB = await next(b, jingle('session-initiate'), 'session-initiate for b');
    for (const si of [siA, siB]) {
        assert.equal(si.attrs.from, `${room}/focus`);
        const j = si.getChild('jingle', NS_JINGLE);
        // A data content (the bridge channel over SCTP, port 5000) and the WebSocket fallback.
        assert.deepEqual(j.getChildren('content').map((c) => c.attrs.name), ['audio', 'video', 'data']);
        const sctpmap = j.getChildren('content')[2].getChild('transport', NS_ICE).getChild('sctpmap', 'urn:xmpp:jingle:transports:dtls-sctp:1');
        assert.equal(sctpmap.attrs.number, '5000');
        assert.equal(sctpmap.attrs.protocol, 'webrtc-datachannel');
        const tr = j.getChildren('content')[0].getChild('transport', NS_ICE);
        assert.ok(tr.attrs.ufrag && tr.attrs.pwd.length >= 22);
        assert.equal(tr.getChild('fingerprint', 'urn:xmpp:jingle:apps:dtls:0').attrs.setup, 'actpass');
        const cand = tr.getChild('candidate');
        assert.equal(cand.attrs.ip, '127.0.0.1');
        assert.equal(cand.attrs.port, String(server.mediaPort));
        assert.ok(tr.getChild('web-socket', 'http://jitsi.org/protocol/colibri').attrs.url.includes('/colibri-ws/'));
        const pts = j.getChildren('content')[1].getChild('description', 'urn:xmpp:jingle:apps:rtp:1').getChildren('payload-type').map((p) => p.attrs.name);
        assert.deepEqual(pts.slice(0, 4), ['AV1', 'VP8', 'H264', 'VP9']);
        assert.ok(j.getChild('bridge-session', NS_FOCUS).attrs.id);
        const json = JSON.parse(j.getChildText('json-message', 'http://jitsi.org/jitmeet'));
        assert.ok(json.sources.jvb, 'bridge feedback sources');
    }
    // The bridge channel: ServerHello, EndpointMessage relay with `from` set by the bridge.
    const wsUrl = (si) => si.getChild('jingle', NS_JINGLE).getChildren('content')[0].getChild('transport', NS_ICE).getChild('web-socket', 'http://jitsi.org/protocol/colibri').attrs.url;
    const open = (url) => new Promise((resolve, reject) => {
        const ws = new WebSocket(url);
        ws.msgs = [];
        ws.on('message', (m) => ws.msgs.push(JSON.parse(m.toString())));
        ws.on('open', () => resolve(ws));
        ws.on('error', reject);
        ws.on('unexpected-response', (req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
    });
    const until = async (ws, pred, what) => {
        const deadline = Date.now() + 5000;
        while (Date.now() < deadline) {
            const m = ws.msgs.find(pred);
            if (m) return m;
            await new Promise((r) => setTimeout(r, 20));
        }
        throw new Error(`timed out waiting for ${what}`);
    };
    const chA = await open(wsUrl(siA));
    const chB = await open(wsUrl(siB));
    t.after(() => { chA.close(); chB.close(); });
    await until(chA, (m) => m.colibriClass === 'ServerHello', 'ServerHello');
    chA.send(JSON.stringify({ colibriClass: 'EndpointMessage', to: '', from: 'spoof', msgPayload: { type: 'hello' } }));
    const relayed = await until(chB, (m) => m.colibriClass === 'EndpointMessage', 'relayed EndpointMessage');
    assert.equal(relayed.from, 'aaaa0000');
    assert.deepEqual(relayed.msgPayload, { type: 'hello' });
    await assert.rejects(open(wsUrl(siA).replace(/pwd=.*/, 'pwd=wrong')), /403/);

    const sidA = siA.getChild('jingle', NS_JINGLE).attrs.sid;
    const sidB = siB.getChild('jingle', NS_JINGLE).attrs.sid;

    // a accepts with camera (3 simulcast layers + RTX) and mic.
    const ra = await a.xmpp.iqCaller.request(accept(room, sidA, 'aaaa0000', 1000), 10000);
    assert.equal(ra.attrs.type, 'result');
    // b reuses a's SSRCs: refused, the conference goes on.
    await assert.rejects(b.xmpp.iqCaller.request(accept(room, sidB, 'bbbb1111', 1000), 10000), (e) => e.condition === 'bad-request');
    const rb = await b.xmpp.iqCaller.request(accept(room, sidB, 'bbbb1111', 2000), 10000);
    assert.equal(rb.attrs.type, 'result');

    // Each learns the other's sources (JSON, simulcast stripped to the first layer + RTX).
    const addA = await next(a, jingle('source-add'), 'source-add for a');
    const jsA = JSON.parse(addA.getChild('jingle', NS_JINGLE).getChildText('json-message', 'http://jitsi.org/jitmeet'));
    assert.deepEqual(jsA.sources.bbbb1111[0].map((s) => s.s), [2001, 2004]);
    assert.equal(jsA.sources.bbbb1111[2][0].s, 2000);
    const addB = await next(b, jingle('source-add'), 'source-add for b');
    const jsB = JSON.parse(addB.getChild('jingle', NS_JINGLE).getChildText('json-message', 'http://jitsi.org/jitmeet'));
    assert.equal(jsB.sources.aaaa0000[2][0].s, 1000);

    // b leaves; a is alone and its session ends after the single-participant timeout.
    await b.xmpp.send(xml('presence', { to: `${room}/bbbb1111`, type: 'unavailable' }));
    const term = await next(a, jingle('session-terminate'), 'idle session-terminate', 10000);
    assert.ok(term.toString().includes('Idle session timeout'));
}));

test('focus: HTTP conference request', srv.wrap(async (t, server) => {
    const res = await fetch(`${server.httpBase}/conference-request/v1`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ room: `http@${MUC}`, machineUid: 'x', properties: { rtcstatsEnabled: false } }),
    });
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.equal(body.ready, true);
    assert.equal(body.focusJid, FOCUS_JID);
    const bad = await fetch(`${server.httpBase}/conference-request/v1`, { method: 'POST', body: '{}' });
    assert.equal(bad.status, 400);
}));

test('room metadata: advertised in disco, set by the moderator, delivered to everyone', srv.wrap(async () => {
    const room = `meta@${MUC}`;
    const a = await connect();
    const b = await connect();
    const info = await a.xmpp.iqCaller.request(xml('iq', { type: 'get', to: DOMAIN }, xml('query', { xmlns: 'http://jabber.org/protocol/disco#info' })), 5000);
    const ident = info.getChild('query').getChildren('identity').find((i) => i.attrs.type === 'room_metadata');
    assert.equal(ident?.attrs.name, `metadata.${DOMAIN}`);
    await conferenceRequest(a, room);
    await joinRoom(a, room, 'aaaa2222');
    await next(a, (st) => st.is('presence') && st.attrs.from === `${room}/aaaa2222` && st.getChild('x', NS_USER)?.getChild('item')?.attrs.role === 'moderator', 'owner grant');
    await conferenceRequest(b, room);
    await joinRoom(b, room, 'bbbb3333');
    const update = JSON.stringify({ key: 'startMuted', data: { audio: true, video: false }, type: 'room_metadata' });
    await a.xmpp.send(xml('message', { to: `metadata.${DOMAIN}` }, xml('room_metadata', { xmlns: 'http://jitsi.org/jitmeet', room }, update)));
    const metadataOf = (m) => JSON.parse(m.getChildText('json-message', 'http://jitsi.org/jitmeet'));
    for (const c of [a, b]) {
        const m = await next(c, (st) => st.is('message') && st.attrs.from === `metadata.${DOMAIN}`
            && metadataOf(st).metadata.startMuted, 'metadata message');
        const v = metadataOf(m);
        assert.equal(v.type, 'room_metadata');
        assert.deepEqual(v.metadata.startMuted, { audio: true, video: false });
    }
    // A joiner gets the map before its own presence (a stock install sends `{}` too).
    const c = await connect();
    const seen = [];
    c.xmpp.on('stanza', (st) => {
        if (st.attrs.from === `metadata.${DOMAIN}`) seen.push('metadata');
        if (st.is('presence') && st.attrs.from === `${room}/cccc4444`) seen.push('self');
    });
    await conferenceRequest(c, room);
    await joinRoom(c, room, 'cccc4444');
    assert.deepEqual(seen.slice(0, 2), ['metadata', 'self']);
}));

// Last: it stops the server. SIGTERM with [server] drain_timeout_secs: meetd keeps the running
// conference, refuses new ones, and stops once the last one has ended.
test('drain: SIGTERM waits for the running conference and refuses new ones', srv.wrap(async (t, server) => {
    // The earlier tests' participants leave, and with them their conferences.
    for (const c of all.splice(0)) await withTimeout(c.xmpp.stop(), 3000, 'stop').catch(() => {});
    const room = `draining@${MUC}`;
    const a = await connect();
    const b = await connect();
    for (const [c, nick] of [[a, 'aaaa5555'], [b, 'bbbb6666']]) {
        await conferenceRequest(c, room);
        await joinRoom(c, room, nick);
    }
    await next(a, jingle('session-initiate'), 'session-initiate for a');
    await next(b, jingle('session-initiate'), 'session-initiate for b');
    const seen = (what) => server.logLines.some((l) => l.includes(what));
    server.proc.kill('SIGTERM');
    const deadline = Date.now() + 10000;
    while (!seen('draining') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.ok(seen('draining'), 'meetd says it drains');
    assert.equal(server.exited, null, 'still running');
    const c = await connect().catch(() => null);
    const refused = await conferenceRequest(c ?? a, `later@${MUC}`).then(() => null, (e) => e);
    assert.equal(refused?.condition, 'service-unavailable');
    assert.equal(server.exited, null, 'the running conference goes on');
    for (const [x, nick] of [[a, 'aaaa5555'], [b, 'bbbb6666']]) {
        await x.xmpp.send(xml('presence', { to: `${room}/${nick}`, type: 'unavailable' }));
    }
    const end = Date.now() + 15000;
    while (!server.exited && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
    assert.ok(server.exited, 'meetd stopped once the conference ended');
    assert.ok(seen('drained: no conference left'));
}));
