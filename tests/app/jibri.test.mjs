// Live streaming through a stock Jibri (issue 15, docs/jibri.md): a moderator starts a live
// stream from the app's menu with a stream key; meetd's focus hands it to the Jibri waiting in
// the brewery room and relays its status to the room; stopping from the app stops the Jibri.
// The Jibri here is a fake one speaking Jibri's XMPP protocol (@xmpp/client as its control
// connection); it records what it was asked. Without a Jibri the app says the service is
// unavailable, and a participant who is not a moderator is refused.
import { client, xml } from '@xmpp/client';
import WebSocket from 'ws';
import { useApp, appTest, assert, sleep, recordingSessions, startLiveStreamFromMenu, stopLiveStreamFromMenu, ownStartRefusal } from './lib.mjs';
import { withTimeout } from '../lib/server.mjs';
import { signToken, moodleClaims } from '../lib/jwt.mjs';

globalThis.WebSocket ??= WebSocket;

const NS_JIBRI = 'http://jitsi.org/protocol/jibri';
const BREWERY = 'jibribrewery@internal-muc.meet.jitsi';
// Signed in from the learning platform, as the seed runs it: the app shows "Start live
// stream" only to a token whose context.features grant livestreaming.
const SECRET = 'moodle-shared-secret';
const app = useApp({
    name: 'app-jibri',
    config: `[jibri]\nlive_streaming = true\nreply_timeout_secs = 5\n[auth]\nmode = "jwt"\n[auth.jwt]\napp_id = "moodle"\napp_secret = "${SECRET}"\n`,
});

/** A token for `room` (mod_jitsi's claims) with these context.features. */
function token(room, name, teacher, features) {
    const claims = moodleClaims({ name, teacher, room, appId: 'moodle' });
    claims.context.features = features;
    return signToken(claims, { secret: SECRET });
}
const join = (room, name, teacher, features) => app.join(room, { name, query: `jwt=${token(room, name, teacher, features)}` });

/**
 * A Jibri: its control connection joins the brewery idle and healthy and takes what it is
 * given; for a session its "browser" (here an XMPP login on the hidden domain, as Jibri's
 * recorder account) joins the conference with the session id in its presence, which is what
 * the app shows as the stream being on.
 */
async function fakeJibri(nick) {
    await app.server.userAdd('jibri@auth.meet.jitsi', 'jibripass');
    await app.server.userAdd('recorder@hidden.meet.jitsi', 'recorderpass');
    let browser = null;
    const joinRoom = async (room, sessionId) => {
        browser = client({ service: app.server.wsUrl, domain: 'hidden.meet.jitsi', username: 'recorder', password: 'recorderpass' });
        browser.on('error', () => {});
        browser.iqCallee.get('http://jabber.org/protocol/disco#info', 'query', () =>
            xml('query', { xmlns: 'http://jabber.org/protocol/disco#info' }, xml('feature', { var: NS_JIBRI })));
        await withTimeout(browser.start(), 15000, 'recorder login');
        await browser.send(xml('presence', { to: `${room}/recorder1` },
            xml('x', { xmlns: 'http://jabber.org/protocol/muc' }),
            xml('session_id', {}, sessionId),
            xml('mode', {}, 'stream')));
    };
    const leaveRoom = async () => {
        const b = browser;
        browser = null;
        if (b) await withTimeout(b.stop(), 3000, 'recorder logout').catch(() => {});
    };
    const xmpp = client({ service: app.server.wsUrl, domain: 'auth.meet.jitsi', username: 'jibri', password: 'jibripass', resource: nick });
    const j = { xmpp, requests: [], focus: `${BREWERY}/focus` };
    xmpp.on('error', () => {});
    const status = (busy) => xml('presence', { to: `${BREWERY}/${nick}` },
        xml('x', { xmlns: 'http://jabber.org/protocol/muc' }),
        xml('jibri-status', { xmlns: NS_JIBRI },
            xml('busy-status', { xmlns: NS_JIBRI, status: busy ? 'busy' : 'idle' }),
            xml('health-status', { xmlns: 'http://jitsi.org/protocol/health', status: 'healthy' })));
    xmpp.iqCallee.set(NS_JIBRI, 'jibri', (ctx) => {
        const a = ctx.element.attrs;
        j.requests.push({ ...a, from: ctx.from?.toString() });
        if (a.action === 'start') {
            xmpp.send(status(true)).catch(() => {});
            // As Jibri: pending at once, on once its browser joined and the stream runs.
            setTimeout(async () => {
                await joinRoom(a.room, a.session_id).catch((e) => console.log('recorder join failed', e));
                xmpp.iqCaller.request(xml('iq', { type: 'set', to: j.focus }, xml('jibri', { xmlns: NS_JIBRI, status: 'on' })), 5000).catch(() => {});
            }, 500);
            return xml('jibri', { xmlns: NS_JIBRI, status: 'pending' });
        }
        leaveRoom().then(() => xmpp.send(status(false))).catch(() => {});
        return xml('jibri', { xmlns: NS_JIBRI, status: 'off' });
    });
    await withTimeout(xmpp.start(), 15000, 'Jibri login');
    await xmpp.send(status(false));
    j.stop = async () => {
        await leaveRoom();
        await withTimeout(xmpp.stop(), 3000, 'Jibri logout').catch(() => {});
    };
    return j;
}

appTest('a moderator streams through the Jibri in the brewery and stops; others are refused', app.wrap(async () => {
    const jibri = await fakeJibri('jibri-1');
    try {
        const a = await join('lecture', 'Teacher', true, { livestreaming: true, recording: false });
        const b = await join('lecture', 'Student', false, { livestreaming: true });
        await a.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'moderator');
        await startLiveStreamFromMenu(a, 'lecture-2026');
        // The Jibri was asked, with the key, the room and a session id.
        const deadline = Date.now() + 15000;
        while (!jibri.requests.length && Date.now() < deadline) await sleep(200);
        const start = jibri.requests[0];
        assert.ok(start, 'the Jibri got a start');
        assert.equal(start.action, 'start');
        assert.equal(start.recording_mode, 'stream');
        assert.equal(start.streamid, 'lecture-2026');
        assert.equal(start.room, 'lecture@muc.meet.jitsi');
        assert.ok(start.session_id, 'a session id');
        assert.equal(start.from, jibri.focus, 'from the focus in the brewery');
        // Everyone's app shows the live stream on.
        for (const p of [a, b]) {
            await p.waitFor((id) => Object.values(APP.store.getState()['features/recording'].sessionDatas ?? [])
                .some((s) => s.id === id && s.mode === 'stream' && s.status === 'on'), 'live stream on', 20000, start.session_id);
        }
        // The student (no moderator) cannot stop or start it: the focus refuses.
        const refused = await ownStartRefusal(b);
        assert.equal(refused, 'not-allowed');
        // A moderator whose token does not grant live streaming: refused by the room.
        const c = await join('lecture', 'Assistant', true, { livestreaming: false });
        const gated = await ownStartRefusal(c);
        assert.equal(gated, 'forbidden');
        assert.equal(jibri.requests.length, 1, 'nothing reached the Jibri');
        // The teacher stops from the menu: the Jibri is told, everyone sees it off.
        await stopLiveStreamFromMenu(a);
        const until = Date.now() + 15000;
        while (jibri.requests.length < 2 && Date.now() < until) await sleep(200);
        assert.equal(jibri.requests[1]?.action, 'stop');
        assert.equal(jibri.requests[1]?.session_id, start.session_id);
        for (const p of [a, b]) {
            await p.waitFor((id) => Object.values(APP.store.getState()['features/recording'].sessionDatas ?? [])
                .some((s) => s.id === id && s.status === 'off'), 'live stream off', 20000, start.session_id);
        }
        assert.ok((await recordingSessions(b)).every((x) => x.status === 'off'));
        await app.leaveAll();
    } finally {
        await jibri.stop();
    }
}));

appTest('without a Jibri the app says live streaming is unavailable', app.wrap(async () => {
    const a = await join('nojibri', 'Teacher', true, { livestreaming: true });
    await a.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'moderator');
    await startLiveStreamFromMenu(a, 'lecture-x');
    await a.waitFor(() => APP.store.getState()['features/notifications'].notifications
        .some((n) => (n.props?.titleKey ?? n.titleKey) === 'liveStreaming.unavailableTitle'), 'the "Live Streaming unavailable" notice', 20000);
    await app.leaveAll();
}));
