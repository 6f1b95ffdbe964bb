// Multi-user chat (XEP-0045) as the Jitsi clients use it, driven by @xmpp/client over
// WebSocket: join/leave order and status codes for 2..20 occupants, presence extensions
// relayed unchanged, password, members-only, kick and moderator grant with permission
// failures, IQ routing through occupant JIDs, and the brewery for service accounts.

import WebSocket from 'ws';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { client, xml } from '@xmpp/client';
import { useServer, DOMAIN, AUTH_DOMAIN, withTimeout } from '../lib/server.mjs';

globalThis.WebSocket ??= WebSocket;

const MUC = `muc.${DOMAIN}`;
const BREWERY = `internal-muc.${DOMAIN}`;
const NS_MUC = 'http://jabber.org/protocol/muc';
const NS_USER = 'http://jabber.org/protocol/muc#user';
const NS_ADMIN = 'http://jabber.org/protocol/muc#admin';
const NS_OWNER = 'http://jabber.org/protocol/muc#owner';
const NS_STANZAS = 'urn:ietf:params:xml:ns:xmpp-stanzas';

// Rooms are created by their first joiner here (no focus involved); the focus tests cover
// the stock policy where only the focus creates rooms.
const srv = useServer({ name: 'muc', config: '[muc]\nroom_creation = "anyone"\n' });
const all = [];
srv.defer(async () => {
    for (const c of all) await withTimeout(c.xmpp.stop(), 3000, 'stop').catch(() => {});
});

/** A connected client that keeps every stanza it receives until a test takes it. */
async function connect({ username, password, domain = DOMAIN } = {}) {
    const xmpp = client({ service: `${srv.server.wsUrl}?room=r`, domain, username, password });
    const c = { xmpp, inbox: [], waiters: [] };
    xmpp.on('error', () => {});
    xmpp.on('stanza', (st) => {
        const i = c.waiters.findIndex((w) => w.pred(st));
        if (i >= 0) {
            const [w] = c.waiters.splice(i, 1);
            w.resolve(st);
        } else {
            c.inbox.push(st);
        }
    });
    c.jid = (await withTimeout(xmpp.start(), 15000, 'login')).toString();
    const sm = xmpp.streamManagement;
    const deadline = Date.now() + 5000;
    while (sm.enableSent && !sm.enabled && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    all.push(c);
    return c;
}

/** The next stanza matching `pred` (already received or still to come). */
function next(c, pred, what = 'stanza', ms = 5000) {
    const i = c.inbox.findIndex(pred);
    if (i >= 0) return Promise.resolve(c.inbox.splice(i, 1)[0]);
    return withTimeout(new Promise((resolve) => c.waiters.push({ pred, resolve })), ms, `${what} at ${c.jid}`);
}

/** All stanzas matching `pred` received within `ms`. */
async function collect(c, pred, ms = 300) {
    await new Promise((r) => setTimeout(r, ms));
    const got = c.inbox.filter(pred);
    c.inbox = c.inbox.filter((s) => !pred(s));
    return got;
}

const statuses = (p) => (p.getChild('x', NS_USER)?.getChildren('status') ?? []).map((s) => s.attrs.code);
const item = (p) => p.getChild('x', NS_USER)?.getChild('item');
const errCond = (st) => st.getChild('error')?.children.find((c) => c.attrs?.xmlns === NS_STANZAS)?.name;
const isPresence = (from) => (st) => st.is('presence') && st.attrs.from === from;

async function join(c, room, nick, extra = [], password) {
    const x = xml('x', { xmlns: NS_MUC }, password ? xml('password', {}, password) : null);
    await c.xmpp.send(xml('presence', { to: `${room}/${nick}` }, x, ...extra));
    const self = await next(c, (st) => st.is('presence') && st.attrs.from === `${room}/${nick}`, `self-presence in ${room}`);
    return self;
}

test('MUC: 20 occupants join one by one; each sees the others first, then itself with 110 and 100', srv.wrap(async () => {
    const room = `order@${MUC}`;
    const clients = [];
    for (let n = 0; n < 20; n++) {
        const c = await connect();
        const nick = `n${n}`;
        const selfFrom = `${room}/${nick}`;
        await c.xmpp.send(xml('presence', { to: selfFrom }, xml('x', { xmlns: NS_MUC })));
        // Presences arrive in order: n earlier occupants, then self, then the subject.
        const seen = [];
        for (let k = 0; k <= n; k++) {
            seen.push(await next(c, (st) => st.is('presence') && st.attrs.from?.startsWith(`${room}/`), `presence ${k} for joiner ${n}`));
        }
        for (let k = 0; k < n; k++) {
            assert.equal(seen[k].attrs.from, `${room}/n${k}`, `joiner ${n}: presence ${k}`);
            assert.equal(item(seen[k]).attrs.jid, clients[k].jid, 'real JIDs are visible to all');
            assert.ok(!statuses(seen[k]).includes('110'));
        }
        const self = seen[n];
        assert.equal(self.attrs.from, selfFrom);
        assert.ok(statuses(self).includes('110') && statuses(self).includes('100'), `statuses ${statuses(self)}`);
        assert.equal(item(self).attrs.jid, c.jid);
        await next(c, (st) => st.is('message') && st.attrs.type === 'groupchat' && st.getChild('subject'), 'subject');
        // Every earlier occupant hears about the joiner.
        for (const o of clients) await next(o, isPresence(selfFrom), `join of ${nick} seen by ${o.jid}`);
        clients.push(c);
    }
    // Leave in reverse: the leaver gets 110, the others unavailable.
    for (let n = 19; n >= 0; n--) {
        const c = clients[n];
        const from = `${room}/n${n}`;
        await c.xmpp.send(xml('presence', { to: from, type: 'unavailable' }));
        const self = await next(c, isPresence(from), 'own unavailable');
        assert.equal(self.attrs.type, 'unavailable');
        assert.ok(statuses(self).includes('110'));
        for (let k = 0; k < n; k++) {
            const p = await next(clients[k], isPresence(from), 'unavailable seen by others');
            assert.equal(p.attrs.type, 'unavailable');
            assert.equal(item(p).attrs.role, 'none');
        }
    }
}));

test('MUC: the Jitsi join presence extensions arrive unchanged', srv.wrap(async () => {
    const room = `ext@${MUC}`;
    const a = await connect();
    const b = await connect();
    await join(a, room, 'aaaa0000');
    const ext = [
        xml('stats-id', {}, 'Abdiel-Y1O'),
        xml('c', { xmlns: 'http://jabber.org/protocol/caps', hash: 'sha-1', node: 'https://jitsi.org/jitsi-meet', ver: '+mpajJhafj8jFogLBKsPbQfMgzU=' }),
        xml('SourceInfo', {}, '{"bbbb1111-a0":{"muted":true},"bbbb1111-v0":{"muted":false,"videoType":"camera"}}'),
        xml('jitsi_participant_codecList', {}, 'av1,vp9,vp8,h264'),
        xml('nick', { xmlns: 'http://jabber.org/protocol/nick' }, 'Participant 1'),
        xml('features', {}, xml('feature', { var: 'https://jitsi.org/meet/e2ee' })),
    ];
    await join(b, room, 'bbbb1111', ext);
    const p = await next(a, isPresence(`${room}/bbbb1111`), 'b seen by a');
    for (const e of ext) {
        const got = p.getChild(e.name, e.attrs.xmlns);
        assert.ok(got, `missing ${e.name}`);
        assert.equal(got.toString(), e.toString());
    }
    // Updates (mute) are relayed too.
    await b.xmpp.send(xml('presence', { to: `${room}/bbbb1111` }, xml('SourceInfo', {}, '{"bbbb1111-a0":{"muted":false}}')));
    const upd = await next(a, isPresence(`${room}/bbbb1111`), 'update');
    assert.equal(upd.getChildText('SourceInfo'), '{"bbbb1111-a0":{"muted":false}}');
}));

test('MUC: groupchat, private message, IQ routing through occupant JIDs both ways', srv.wrap(async () => {
    const room = `talk@${MUC}`;
    const a = await connect();
    const b = await connect();
    await join(a, room, 'a');
    await join(b, room, 'b');
    await a.xmpp.send(xml('message', { to: room, type: 'groupchat' }, xml('body', {}, 'hello room')));
    for (const c of [a, b]) {
        const m = await next(c, (st) => st.is('message') && st.getChildText('body') === 'hello room', 'groupchat');
        assert.equal(m.attrs.from, `${room}/a`);
    }
    await a.xmpp.send(xml('message', { to: `${room}/b`, type: 'chat' }, xml('body', {}, 'psst')));
    const pm = await next(b, (st) => st.is('message') && st.getChildText('body') === 'psst', 'private message');
    assert.equal(pm.attrs.from, `${room}/a`);
    // b answers a custom IQ; a sees the answer from b's occupant JID.
    b.xmpp.iqCallee.get('urn:example:muc-test', 'q', (ctx) => {
        assert.equal(ctx.stanza.attrs.from, `${room}/a`, 'request comes from the occupant JID');
        return xml('q', { xmlns: 'urn:example:muc-test' }, 'answer');
    });
    const res = await a.xmpp.iqCaller.request(xml('iq', { type: 'get', to: `${room}/b` }, xml('q', { xmlns: 'urn:example:muc-test' })), 5000);
    assert.equal(res.attrs.from, `${room}/b`);
    assert.equal(res.getChildText('q', 'urn:example:muc-test'), 'answer');
    // An outsider cannot reach occupants.
    const o = await connect();
    await assert.rejects(
        o.xmpp.iqCaller.request(xml('iq', { type: 'get', to: `${room}/b` }, xml('q', { xmlns: 'urn:example:muc-test' })), 5000),
        (e) => e.condition === 'not-acceptable',
    );
    // Room disco#info carries the Jitsi fields.
    const info = await a.xmpp.iqCaller.request(xml('iq', { type: 'get', to: room }, xml('query', { xmlns: 'http://jabber.org/protocol/disco#info' })), 5000);
    const s = info.toString();
    assert.ok(s.includes('muc#roominfo_meetingId') && s.includes('muc#roominfo_created_timestamp'), s);
}));

async function configure(c, room, fields) {
    const form = xml('x', { xmlns: 'jabber:x:data', type: 'submit' },
        xml('field', { var: 'FORM_TYPE' }, xml('value', {}, 'http://jabber.org/protocol/muc#roomconfig')),
        ...Object.entries(fields).map(([k, v]) => xml('field', { var: k }, xml('value', {}, v))));
    return c.xmpp.iqCaller.request(xml('iq', { type: 'set', to: room }, xml('query', { xmlns: NS_OWNER }, form)), 5000);
}

async function joinError(c, room, nick, password, extra = []) {
    const x = xml('x', { xmlns: NS_MUC }, password ? xml('password', {}, password) : null);
    await c.xmpp.send(xml('presence', { to: `${room}/${nick}` }, x, ...extra));
    const e = await next(c, (st) => st.is('presence') && st.attrs.from === `${room}/${nick}`, 'join answer');
    assert.equal(e.attrs.type, 'error', `expected an error, got ${e}`);
    return errCond(e);
}

test('MUC: password-protected and members-only rooms, room full', srv.wrap(async () => {
    const room = `locked@${MUC}`;
    const owner = await connect();
    const self = await join(owner, room, 'owner');
    assert.equal(item(self).attrs.affiliation, 'owner', 'the creator owns the room');
    const form = await owner.xmpp.iqCaller.request(xml('iq', { type: 'get', to: room }, xml('query', { xmlns: NS_OWNER })), 5000);
    assert.ok(form.toString().includes('muc#roomconfig_roomsecret'));
    await configure(owner, room, { 'muc#roomconfig_roomsecret': '1234', 'muc#roomconfig_passwordprotectedroom': '1' });
    const note = await next(owner, (st) => st.is('message') && statuses(st).includes('104'), 'status 104');
    assert.equal(note.attrs.from, room);
    const guest = await connect();
    assert.equal(await joinError(guest, room, 'g'), 'not-authorized');
    assert.equal(await joinError(guest, room, 'g', 'wrong'), 'not-authorized');
    await join(guest, room, 'g', [], '1234');

    const room2 = `members@${MUC}`;
    await join(owner, room2, 'owner');
    await configure(owner, room2, { 'muc#roomconfig_membersonly': 'true', 'muc#roomconfig_maxusers': '2' });
    const m1 = await connect();
    const m2 = await connect();
    // Members-only turns the Jitsi lobby on: a joiner must give a display name (XEP-0172)
    // to knock, and a non-member with one is pointed at the lobby.
    assert.equal(await joinError(m1, room2, 'm1'), 'not-acceptable');
    assert.equal(await joinError(m1, room2, 'm1', undefined,
        [xml('nick', { xmlns: 'http://jabber.org/protocol/nick' }, 'Member One')]), 'registration-required');
    for (const c of [m1, m2]) {
        await owner.xmpp.iqCaller.request(xml('iq', { type: 'set', to: room2 },
            xml('query', { xmlns: NS_ADMIN }, xml('item', { affiliation: 'member', jid: c.jid.split('/')[0] }))), 5000);
    }
    await join(m1, room2, 'm1');
    // owner + m1 fill the two places.
    assert.equal(await joinError(m2, room2, 'm2'), 'service-unavailable');
}));

async function admin(c, room, attrs, reason) {
    return c.xmpp.iqCaller.request(xml('iq', { type: 'set', to: room },
        xml('query', { xmlns: NS_ADMIN }, xml('item', attrs, reason ? xml('reason', {}, reason) : null))), 5000);
}

test('MUC: kick and moderator grant, with the permission failures', srv.wrap(async () => {
    const room = `mod@${MUC}`;
    const owner = await connect();
    const p1 = await connect();
    const p2 = await connect();
    await join(owner, room, 'owner');
    await join(p1, room, 'p1');
    await join(p2, room, 'p2');
    // A participant cannot kick.
    await assert.rejects(admin(p1, room, { nick: 'p2', role: 'none' }), (e) => e.condition === 'forbidden');
    // ... nor grant ownership.
    await assert.rejects(admin(p1, room, { affiliation: 'owner', jid: p1.jid.split('/')[0] }), (e) => e.condition === 'forbidden');
    // The owner grants p1 moderator the Jitsi way (affiliation owner on the bare JID).
    await admin(owner, room, { affiliation: 'owner', jid: p1.jid.split('/')[0] });
    const up = await next(p1, (st) => isPresence(`${room}/p1`)(st) && item(st)?.attrs.role === 'moderator', 'p1 becomes moderator');
    assert.equal(item(up).attrs.affiliation, 'owner');
    assert.ok(statuses(up).includes('110'));
    await next(p2, (st) => isPresence(`${room}/p1`)(st) && item(st)?.attrs.role === 'moderator', 'p2 sees p1 as moderator');
    // A moderator with a mere role cannot kick an owner.
    await admin(owner, room, { nick: 'p2', role: 'moderator' });
    await assert.rejects(admin(p2, room, { nick: 'p1', role: 'none' }), (e) => e.condition === 'not-allowed');
    await admin(owner, room, { nick: 'p2', role: 'participant' });
    // p1 kicks p2: 307 for everyone, 110 for p2.
    await admin(p1, room, { nick: 'p2', role: 'none' }, 'You have been kicked.');
    const kicked = await next(p2, (st) => isPresence(`${room}/p2`)(st) && st.attrs.type === 'unavailable', 'p2 kicked');
    assert.ok(statuses(kicked).includes('307') && statuses(kicked).includes('110'), `${statuses(kicked)}`);
    assert.equal(item(kicked).getChildText('reason'), 'You have been kicked.');
    const seen = await next(owner, (st) => isPresence(`${room}/p2`)(st) && st.attrs.type === 'unavailable', 'owner sees kick');
    assert.ok(statuses(seen).includes('307'));
}));

test('MUC: the brewery admits service accounts only, who see each other', srv.wrap(async (t, server) => {
    await server.userAdd(`jvb@${AUTH_DOMAIN}`, 'jvbpass');
    await server.userAdd(`focus@${AUTH_DOMAIN}`, 'focuspass');
    const brewery = `jvbbrewery@${BREWERY}`;
    const guest = await connect();
    assert.equal(await joinError(guest, brewery, 'x'), 'not-allowed');
    const focus = await connect({ username: 'focus', password: 'focuspass', domain: AUTH_DOMAIN });
    const jvb = await connect({ username: 'jvb', password: 'jvbpass', domain: AUTH_DOMAIN });
    await join(focus, brewery, 'focus');
    const stats = xml('stats', { xmlns: 'http://jitsi.org/protocol/colibri' }, xml('stat', { name: 'stress_level', value: '0.05' }));
    await join(jvb, brewery, 'jvb1', [stats]);
    const p = await next(focus, isPresence(`${brewery}/jvb1`), 'jvb presence at the focus');
    assert.equal(p.getChild('stats', 'http://jitsi.org/protocol/colibri').getChild('stat').attrs.value, '0.05');
    assert.equal(item(p).attrs.jid, jvb.jid);
}));
