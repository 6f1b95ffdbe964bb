// Dial-in numbers and PINs (issue 16, docs/dialin.md): with [dialin] numbers configured, the
// app's "Invite people" dialog shows the number and the meeting's PIN, the dial-in page
// (static/dialInInfo.html) shows them too, the PIN stays the same and maps back to the room
// (what a SIP gateway asks), and bad lookups get clear JSON errors.
import { client, xml } from '@xmpp/client';
import WebSocket from 'ws';
import { useApp, appTest, assert } from './lib.mjs';
import { withTimeout } from '../lib/server.mjs';

globalThis.WebSocket ??= WebSocket;

const NUMBER = '+49 30 1234567';
const app = useApp({
    name: 'app-dialin',
    config: `[dialin]\nnumbers = [ { country = "DE", number = "${NUMBER}" }, { country = "DE", number = "0800 7654321", toll_free = true } ]\n`,
});

const getJson = async (path) => {
    const r = await fetch(`${app.base}${path}`);
    return { status: r.status, body: await r.json() };
};

appTest('the invite dialog and the dial-in page show the number and the meeting PIN', app.wrap(async () => {
    const a = await app.join('Physics101', { name: 'Alice' });
    await a.clickToolbar('toolbar.accessibilityLabel.invite', 'invite people');
    const invite = await a.waitFor(() => {
        const s = APP.store.getState()['features/invite'];
        return s.conferenceID && s.numbers && { pin: s.conferenceID, numbers: s.numbers };
    }, 'dial-in numbers and PIN in the app', 20000);
    assert.equal(invite.numbers[0].formattedNumber, NUMBER);
    const pin = String(invite.pin);
    assert.match(pin, /^[1-9]\d{8}$/);
    // What the dialog shows.
    await a.waitFor((n) => document.body.innerText.includes(n), 'the number in the dialog', 10000, NUMBER);
    // The PIN is the room's, stable, and maps back (as a SIP gateway looks it up).
    const again = await getJson('/dialin/conference-code?conference=physics101@muc.meet.jitsi');
    assert.equal(String(again.body.id), pin);
    const back = await getJson(`/dialin/conference-code?id=${pin}`);
    assert.deepEqual([back.status, back.body.conference], [200, 'physics101@muc.meet.jitsi']);
    const other = await getJson('/dialin/conference-code?conference=chemistry@muc.meet.jitsi');
    assert.notEqual(String(other.body.id), pin);
    // Clear refusals.
    assert.equal((await getJson('/dialin/conference-code?conference=x@evil.example')).status, 400);
    assert.equal((await getJson('/dialin/conference-code?id=123')).status, 404);
    assert.equal((await getJson('/dialin/conference-code?id=abc')).status, 400);
    assert.equal((await getJson('/dialin/conference-code')).status, 400);
    // The app's dial-in page for the meeting.
    const page = await app.open('Info', `${app.base}/static/dialInInfo.html?room=physics101`);
    await page.waitFor((want) => want.every((w) => document.body.innerText.replace(/\s/g, '').includes(w.replace(/\s/g, ''))),
        'number and PIN on the dial-in page', 20000, [NUMBER, pin]);
    await app.leaveAll();
}));

// Dial-in through a stock Jigasi: the gateway looks the caller's PIN up as Jigasi does, logs in
// with its account, asks the focus for the conference and joins the room as the phone
// participant with the masked number as its name; the people in the meeting see it.
appTest('a phone caller joins through Jigasi with the meeting PIN', app.wrap(async () => {
    const a = await app.join('Lecture9', { name: 'Alice' });
    const pin = String((await getJson('/dialin/conference-code?conference=lecture9@muc.meet.jitsi')).body.id);
    // The caller typed the PIN and '#'.
    const map = await getJson(`/dialin/conference-code?id=${pin}%23`);
    assert.equal(map.status, 200);
    const room = map.body.conference;
    await app.server.userAdd('jigasi@auth.meet.jitsi', 'jigasipass');
    const xmpp = client({ service: app.server.wsUrl, domain: 'auth.meet.jitsi', username: 'jigasi', password: 'jigasipass', resource: 'sip1' });
    xmpp.on('error', () => {});
    await withTimeout(xmpp.start(), 15000, 'Jigasi login');
    const answer = await xmpp.iqCaller.request(xml('iq', { type: 'set', to: 'focus.meet.jitsi' },
        xml('conference', { xmlns: 'http://jitsi.org/protocol/focus', room, 'machine-uid': 'jigasi' })), 15000);
    assert.equal(answer.getChild('conference', 'http://jitsi.org/protocol/focus').attrs.ready, 'true');
    await xmpp.send(xml('presence', { to: `${room}/c4ll3r01` },
        xml('x', { xmlns: 'http://jabber.org/protocol/muc' }),
        xml('nick', { xmlns: 'http://jabber.org/protocol/nick' }, '+49 30 ***4567')));
    await a.waitFor(() => APP.conference.listMembers().some((m) => m.getDisplayName() === '+49 30 ***4567'),
        'the phone participant in the meeting', 15000);
    await withTimeout(xmpp.stop(), 3000, 'Jigasi logout').catch(() => {});
    await a.waitFor(() => APP.conference.listMembers().length === 0, 'the caller hung up', 15000);
    await app.leaveAll();
}));

// Dial-out through a stock Jigasi: a moderator's dial (the app's invite dialog calls
// conference.dial) goes through meetd's focus to the least loaded Jigasi in its brewery, whose
// answer (the phone participant's room JID) comes back; others are refused.
const out = useApp({ name: 'app-dialout', config: '[jigasi]\ndial_out = true\n' });
const NS_RAYO = 'urn:xmpp:rayo:1';

let jigasiAccount = null;
async function fakeJigasi(nick, participants) {
    jigasiAccount ??= out.server.userAdd('jigasi@auth.meet.jitsi', 'jigasipass');
    await jigasiAccount;
    const xmpp = client({ service: out.server.wsUrl, domain: 'auth.meet.jitsi', username: 'jigasi', password: 'jigasipass', resource: nick });
    const j = { xmpp, dials: [] };
    xmpp.on('error', () => {});
    xmpp.iqCallee.set(NS_RAYO, 'dial', (ctx) => {
        const d = ctx.element;
        const headers = Object.fromEntries(d.getChildren('header').map((h) => [h.attrs.name, h.attrs.value]));
        j.dials.push({ to: d.attrs.to, from: ctx.from?.toString(), headers });
        // As Jigasi: it joins the room as the phone participant and answers with its JID there.
        return xml('ref', { xmlns: NS_RAYO, uri: `xmpp:${headers.JvbRoomName}/${nick}-call` });
    });
    await withTimeout(xmpp.start(), 15000, 'Jigasi login');
    await xmpp.send(xml('presence', { to: `jigasibrewery@internal-muc.meet.jitsi/${nick}` },
        xml('x', { xmlns: 'http://jabber.org/protocol/muc' }),
        xml('stats', { xmlns: 'http://jitsi.org/protocol/colibri' },
            xml('stat', { name: 'supports_sip', value: 'true' }),
            xml('stat', { name: 'graceful_shutdown', value: 'false' }),
            xml('stat', { name: 'participants', value: String(participants) }))));
    j.stop = () => withTimeout(xmpp.stop(), 3000, 'Jigasi logout').catch(() => {});
    return j;
}

appTest('a moderator dials a phone number out through the least loaded Jigasi; a participant cannot', out.wrap(async () => {
    const jigasis = [];
    try {
        const busy = await fakeJigasi('jigasi-busy', 7);
        jigasis.push(busy);
        const idle = await fakeJigasi('jigasi-idle', 1);
        jigasis.push(idle);
        const a = await out.join('dialout', { name: 'Alice' });
        const b = await out.join('dialout', { name: 'Bob' });
        await a.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'moderator');
        // The app knows it can dial out (the focus said sipGatewayEnabled).
        assert.equal(String(await a.eval(() => APP.conference._room.isSIPCallingSupported())), 'true');
        await a.eval(() => APP.conference._room.dial('+49 30 1234567'));
        assert.equal(idle.dials.length, 1, 'the idle Jigasi dialled');
        assert.equal(busy.dials.length, 0);
        assert.equal(idle.dials[0].to, '+49 30 1234567');
        assert.equal(idle.dials[0].headers.JvbRoomName, 'dialout@muc.meet.jitsi');
        assert.equal(idle.dials[0].from, 'jigasibrewery@internal-muc.meet.jitsi/focus');
        // Bob is no moderator.
        const refused = await b.eval(async () => {
            try {
                await APP.conference._room.dial('+49 30 7654321');
                return 'dialled';
            } catch (e) {
                return e?.querySelector?.('error')?.firstElementChild?.tagName ?? String(e?.message ?? e);
            }
        });
        assert.equal(refused, 'forbidden');
        assert.equal(idle.dials.length + busy.dials.length, 1);
        await out.leaveAll();
    } finally {
        for (const j of jigasis) await j.stop();
    }
}));
