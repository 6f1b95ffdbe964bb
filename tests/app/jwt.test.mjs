// Sign-in with tokens as a university runs it (issue 12): a "Moodle" page embeds the meeting
// exactly as mod_jitsi does (external_api.js from meetd, JitsiMeetExternalAPI with roomName and
// jwt, the displayName command after joining), with tokens signed here in mod_jitsi's shape.
// The teacher's token makes a moderator, the student's a participant who cannot kick or mute;
// bad tokens get the app's "Authentication failed" and meetd keeps serving; RS256 keys come
// from a key server served here; a guest waits until a token moderator arrives.
import http from 'node:http';
import { after } from 'node:test';
import { createHash, generateKeyPairSync, sign as cryptoSign } from 'node:crypto';
import { useApp, appTest, assert, label, sleep } from './lib.mjs';
import { b64u, signToken, moodleClaims as claimsFor } from '../lib/jwt.mjs';

const SECRET = 'moodle-shared-secret';
const APP_ID = 'moodle';
const ROOM = 'Physics101';
const AVATAR = 'https://moodle.example.org/pluginfile.php/5/user/icon/f1';

// The key server (stock ASAP layout: <url>/<sha256-hex(kid)>.pem) and the "Moodle" pages.
const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
const RS_KID = 'moodle/rs-1';
const keyPath = `/asap/${createHash('sha256').update(RS_KID).digest('hex')}.pem`;
let keyFetches = 0;
let meetHttps = '';
const pages = http.createServer((req, res) => {
    const u = new URL(req.url, 'http://x');
    if (u.pathname === keyPath) {
        keyFetches++;
        res.writeHead(200, { 'content-type': 'application/x-pem-file' });
        res.end(rsa.publicKey.export({ type: 'spki', format: 'pem' }));
        return;
    }
    if (u.pathname === '/mod/jitsi/session.php') {
        res.writeHead(200, { 'content-type': 'text/html' });
        res.end(moodlePage(u.searchParams.get('room'), u.searchParams.get('jwt'), u.searchParams.get('name'),
            u.searchParams.get('teacher') === '1'));
        return;
    }
    res.writeHead(404);
    res.end();
});
await new Promise((r) => pages.listen(0, '127.0.0.1', r));
const pagesBase = `http://127.0.0.1:${pages.address().port}`;
// Neither keeps the test process alive once the tests are done.
pages.unref();
after(() => {
    pages.closeAllConnections();
    pages.close();
});

/** The page mod_jitsi renders for a session (classes/local/session.php), trimmed to the call. */
function moodlePage(room, jwt, name, teacher) {
    const domain = new URL(meetHttps).host;
    const configOverwrite = {
        subject: 'Physics 101',
        disableDeepLinking: true,
        disableInviteFunctions: true,
        disableProfile: true,
        prejoinPageEnabled: false,
        prejoinConfig: { enabled: false },
        remoteVideoMenu: teacher ? { disableGrantModerator: true } : { disableKick: true, disableGrantModerator: true },
        ...(teacher ? {} : { disableRemoteMute: true }),
        // The test's own: the toolbar stays up for the clicks.
        toolbarConfig: { alwaysVisible: true },
    };
    return `<!doctype html><html><body style="margin:0">
<div id="jitsi-container" style="width:1280px;height:720px"></div>
<script src="https://${domain}/external_api.js"></script>
<script>
const domain = ${JSON.stringify(domain)};
const options = {
configOverwrite: ${JSON.stringify(configOverwrite)},
roomName: ${JSON.stringify(room)},
${jwt ? `jwt: ${JSON.stringify(jwt)},` : ''}
parentNode: document.querySelector('#jitsi-container'),
width: '100%', height: '100%',
};
const api = new JitsiMeetExternalAPI(domain, options);
window.jitsiSessionApi = api;
api.addListener('videoConferenceJoined', () => {
api.executeCommand('displayName', ${JSON.stringify(name)});
});
</script></body></html>`;
}

/** A token as mod_jitsi's build_token signs it (HS256, kid jitsi/custom_key_name). */
function token(claims = {}, { alg = 'HS256', secret = SECRET, kid = 'jitsi/custom_key_name' } = {}) {
    return signToken(claims, { alg, secret, kid, privateKey: rsa.privateKey });
}
function moodleClaims({ room = ROOM, ...rest }) {
    return claimsFor({ room, appId: APP_ID, avatar: AVATAR, ...rest });
}

const jwtConfig = `[auth]\nmode = "jwt"\n[auth.jwt]\napp_id = "${APP_ID}"\napp_secret = "${SECRET}"\n`
    + `key_server = "${pagesBase}/asap"\nclock_skew_secs = 0\n`;
const app = useApp({ name: 'app-jwt', https: true, config: jwtConfig });
const hostApp = useApp({
    name: 'app-jwt-host',
    https: true,
    config: `[auth]\nmode = "jwt"\nwait_for_host = true\n[auth.jwt]\napp_id = "${APP_ID}"\napp_secret = "${SECRET}"\nallow_empty = true\n`,
});

/** Open the Moodle session page with a token; the participant drives the app's iframe. */
async function moodle(h, name, jwt, { room = ROOM, teacher = false } = {}) {
    meetHttps = h.server.httpsBase;
    const q = new URLSearchParams({ room, name, teacher: teacher ? '1' : '0', ...(jwt ? { jwt } : {}) });
    const p = await h.open(name, `${pagesBase}/mod/jitsi/session.php?${q}`);
    const iframe = await p.page.waitForSelector('#jitsi-container iframe', { timeout: 15000 });
    p.frame = await iframe.contentFrame();
    await p.waitFor(() => typeof APP !== 'undefined' && Boolean(APP.store), 'the app in the iframe', 20000);
    return p;
}

const role = () => APP.store.getState()['features/base/participants'].local.role;

/** The app says the sign-in was refused: "Authentication failed". */
async function refusedAtSignIn(p, { withToken = true } = {}) {
    await p.waitFor(() => APP.store.getState()['features/base/connection'].error?.name === 'connection.passwordRequired',
        'connection refused (passwordRequired)', 15000);
    if (withToken) {
        await p.doc.getByText(label('dialog.tokenAuthFailedTitle')).first().waitFor({ timeout: 10000 });
    } else {
        // Without a token the app asks for credentials, as on a stock install.
        await p.doc.locator('#login-dialog-username').waitFor({ timeout: 10000 });
    }
    assert.equal(await p.eval(() => APP.conference.isJoined() ?? false), false);
}

appTest('teacher moderates, student participates, through the IFrame API as Moodle embeds it', app.wrap(async () => {
    const t = await moodle(app, 'Tina Teacher', token(moodleClaims({ name: 'Tina Teacher', teacher: true })), { teacher: true });
    await t.waitJoined();
    await t.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'teacher moderator');
    const s = await moodle(app, 'Sam Student', token(moodleClaims({ name: 'Sam Student', teacher: false })));
    await s.waitJoined();
    assert.equal(await s.eval(role), 'participant');
    await Promise.all([t.waitVideoFrom(s, 10000), s.waitVideoFrom(t, 10000)]);
    // Identity from the token: the teacher's app shows the student's name and token avatar.
    const sid = await s.id();
    const seen = await t.waitFor((id) => {
        const p = APP.store.getState()['features/base/participants'].remote.get(id);
        return p?.name === 'Sam Student' && p.avatarURL ? { name: p.name, avatar: p.avatarURL } : false;
    }, 'student as the teacher sees them', 10000, sid);
    assert.equal(seen.avatar, AVATAR);
    // The student cannot kick or mute the teacher, even by calling the library directly.
    const tid = await t.id();
    await s.eval((id) => {
        APP.conference._room.kickParticipant(id, 'bye');
        APP.conference._room.muteParticipant(id, 'audio');
    }, tid);
    await sleep(2000);
    assert.ok((await s.remotes()).some((r) => r.id === tid), 'teacher still in the room');
    assert.equal(await t.eval(() => APP.store.getState()['features/base/tracks'].find((x) => x.local && x.mediaType === 'audio')?.muted), false);
    assert.equal(await t.eval(() => APP.conference.isJoined()), true);
    // The teacher can: mute the student from the app.
    await t.eval((id) => APP.conference._room.muteParticipant(id, 'audio'), sid);
    await s.waitFor(() => APP.store.getState()['features/base/tracks'].find((x) => x.local && x.mediaType === 'audio')?.muted === true,
        'student muted by the teacher', 10000);
    await app.leaveAll();
}));

appTest('bad tokens get the app\'s "Authentication failed"; meetd keeps serving', app.wrap(async () => {
    const now = Math.floor(Date.now() / 1000);
    const claims = (extra) => moodleClaims({ name: 'Eve', teacher: true, ...extra });
    const none = token(claims({}), { alg: 'none' });
    const bad = {
        expired: token(claims({ exp: now - 10 })),
        'wrong signature': token(claims({}), { secret: 'guessed' }),
        'wrong audience': token(claims({ aud: 'other-app' })),
        'wrong issuer': token(claims({ iss: 'evil' })),
        'alg none': none,
        'no token': null,
    };
    for (const [what, jwt] of Object.entries(bad)) {
        const p = await moodle(app, `Eve (${what})`, jwt);
        await refusedAtSignIn(p, { withToken: jwt !== null }).catch((e) => { throw new Error(`${what}: ${e.message}`); });
        await p.close();
    }
    // A token for room A trying room B: signed in, but the room refuses it.
    const p = await moodle(app, 'Eve (other room)', token(claims({ room: 'Chemistry' })));
    await p.waitFor(() => APP.store.getState()['features/base/conference'].error?.name === 'conference.connectionError.notAllowed',
        'join refused (notAllowed)', 20000);
    await p.doc.getByText(label('dialog.tokenAuthFailed')).first().waitFor({ timeout: 10000 });
    await p.close();
    // A replay after expiry: the token worked until it expired, then no more.
    const t0 = Math.floor(Date.now() / 1000);
    const short = token(claims({ exp: t0 + 10 }));
    const first = await moodle(app, 'Eve (short)', short);
    await first.waitJoined();
    await first.close();
    await sleep(Math.max(0, (t0 + 11) * 1000 - Date.now()));
    await refusedAtSignIn(await moodle(app, 'Eve (replay)', short));
    // meetd is fine and still lets a good token in.
    const health = await fetch(`${app.server.httpBase}/about/health`);
    assert.equal(health.status, 200);
    const ok = await moodle(app, 'Olga', token(moodleClaims({ name: 'Olga', teacher: false })));
    await ok.waitJoined();
    await app.leaveAll();
}));

appTest('RS256 tokens with the key from a key server (fetched once, then cached)', app.wrap(async () => {
    const rs = (name) => token(moodleClaims({ name, teacher: true }), { alg: 'RS256', kid: RS_KID });
    const a = await moodle(app, 'Rita', rs('Rita'), { teacher: true });
    await a.waitJoined();
    await a.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'Rita moderator');
    const b = await moodle(app, 'Rolf', rs('Rolf'), { teacher: true });
    await b.waitJoined();
    assert.equal(keyFetches, 1);
    // A token signed with another RSA key under the same kid is refused.
    const other = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const head = `${b64u(JSON.stringify({ kid: RS_KID, typ: 'JWT', alg: 'RS256' }))}.${b64u(JSON.stringify(moodleClaims({ name: 'Mallory', teacher: true })))}`;
    const forged = `${head}.${cryptoSign('sha256', Buffer.from(head), other.privateKey).toString('base64url')}`;
    await refusedAtSignIn(await moodle(app, 'Mallory', forged));
    await app.leaveAll();
}));

appTest('a guest without a token waits until a token moderator arrives', hostApp.wrap(async () => {
    const g = await moodle(hostApp, 'Gus Guest', null, { room: 'Seminar' });
    await g.waitFor(() => APP.store.getState()['features/lobby'].knocking || APP.store.getState()['features/lobby'].lobbyWaitingForHost,
        'Gus waiting for the host', 20000);
    assert.equal(await g.eval(() => APP.conference.isJoined() ?? false), false);
    // A student's token does not start the meeting.
    const s = await moodle(hostApp, 'Sam Student', token(moodleClaims({ name: 'Sam Student', teacher: false, room: 'Seminar' })), { room: 'Seminar' });
    await s.waitFor(() => APP.store.getState()['features/lobby'].knocking || APP.store.getState()['features/lobby'].lobbyWaitingForHost,
        'Sam waiting for the host', 20000);
    const t = await moodle(hostApp, 'Tina Teacher', token(moodleClaims({ name: 'Tina Teacher', teacher: true, room: 'Seminar' })),
        { room: 'Seminar', teacher: true });
    await t.waitJoined();
    await t.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'teacher moderator');
    await g.waitJoined(20000);
    await s.waitJoined(20000);
    assert.equal(await g.eval(role), 'participant');
    await hostApp.leaveAll();
}));
