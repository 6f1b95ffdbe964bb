// Privacy by default (issue 18), judged with the official web app:
// - a whole meeting (a token sign-in, a room password, chat, a poll, the media's ICE
//   credentials) with meetd logging at trace level into [log] dir: no log line holds the chat
//   text, the password, the token or its signature, the poll, the e-mail from the token, or
//   the ICE credentials, and client addresses are masked (127.0.0.x) while meetd's own
//   (127.0.0.2) are not;
// - the app with meetd's generated config.js asks no host other than meetd for anything
//   (every request and WebSocket of every page, and the STUN servers it is given).
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after } from 'node:test';
import { useApp, appTest, assert } from './lib.mjs';
import { signToken, moodleClaims } from '../lib/jwt.mjs';

const SECRET = 'privacy-test-shared-secret';
const logDir = mkdtempSync(path.join(tmpdir(), 'meetd-privacy-logs-'));
after(() => process.env.MEETD_KEEP_DATA || rmSync(logDir, { recursive: true, force: true }));

// The harness passes --log-level from this variable; the flag wins over [log] level.
process.env.MEETD_LOG_LEVEL = 'trace';
// meetd on 127.0.0.2: its own addresses are logged in full, the clients' (127.0.0.1) masked.
const app = useApp({
    name: 'app-privacy',
    host: '127.0.0.2',
    config: `[auth]\nmode = "jwt"\n[auth.jwt]\napp_id = "moodle"\napp_secret = "${SECRET}"\nallow_empty = true\n`
        + `[log]\nlevel = "trace"\ndir = "${logDir}"\n`,
});

const requests = []; // {page, url} of everything the browsers asked for
app.onContext = (ctx) => {
    ctx.on('request', (r) => requests.push(r.url()));
    ctx.on('page', (page) => page.on('websocket', (ws) => requests.push(ws.url())));
};

const uniq = () => Math.random().toString(36).slice(2, 10);

appTest('a meeting leaves no content, secret or full address in the trace log, and asks no third party', app.wrap(async () => {
    const room = 'Privacy' + uniq();
    const chat = `chat-${uniq()}-text`;
    const password = `pw${uniq()}`;
    const question = `poll-${uniq()}-question`;
    const options = [`opt-${uniq()}-a`, `opt-${uniq()}-b`];
    const token = signToken(moodleClaims({ name: 'Alice Teacher', teacher: true, room }), { secret: SECRET });

    const a = await app.join(room, { name: 'Alice', query: `jwt=${token}` });
    await a.addPassword(password);
    const b = await app.join(room, { name: 'Bob', waitJoined: false });
    await b.submitRoomPassword(password);
    await b.waitJoined();
    await Promise.all([a.waitVideoFrom(b, 15000), b.waitVideoFrom(a, 15000)]);

    await a.clickToolbar('toolbar.accessibilityLabel.openChat', 'chat');
    await a.page.locator('#chat-input-messagebox').fill(chat);
    await a.page.keyboard.press('Enter');
    await b.waitFor((t) => APP.store.getState()['features/chat'].messages.some((m) => m.message === t), 'the chat message', 10000, chat);
    const id = await a.createPoll(question, options);
    await b.answerPoll(id, [1]);
    await a.waitFor((pid) => APP.store.getState()['features/polls'].polls[pid]?.answers[1].voters.length === 1,
        'Bob\'s vote', 10000, id);

    // The ICE credentials of both sides of each page's media sessions.
    const ice = new Set();
    for (const p of [a, b]) {
        const sdps = await p.eval(() => {
            const out = [];
            const c = APP.conference._room;
            for (const s of [c.jvbJingleSession, c.p2pJingleSession]) {
                const pc = s?.peerconnection?.peerconnection;
                if (pc) out.push(pc.localDescription?.sdp || '', pc.remoteDescription?.sdp || '');
            }
            return out;
        });
        for (const sdp of sdps) {
            for (const m of sdp.matchAll(/a=ice-(?:ufrag|pwd):(\S+)/g)) ice.add(m[1]);
        }
    }
    assert.ok(ice.size >= 4, `ICE credentials found in the SDPs: ${ice.size}`);
    const stun = await a.eval(() => APP.store.getState()['features/base/config'].p2p?.stunServers ?? []);
    await app.leaveAll();

    // Every request went to meetd.
    const own = new URL(app.base).host;
    const foreign = requests.filter((u) => /^(https?|wss?):/.test(u) && new URL(u).host !== own);
    assert.deepEqual([...new Set(foreign)], [], 'requests to hosts other than meetd');
    assert.ok(requests.length > 20, `requests seen: ${requests.length}`);
    for (const s of stun) {
        for (const u of [s.urls].flat()) assert.match(u, new RegExp(`^stuns?:${new URL(app.base).hostname}:`), 'STUN server');
    }

    // The log files.
    const files = readdirSync(logDir).filter((f) => /^meetd\..*\.log$/.test(f));
    assert.equal(files.length, 1, `one daily log file: ${files}`);
    const log = readFileSync(path.join(logDir, files[0]), 'utf8');
    const lines = log.split('\n');
    assert.ok(lines.some((l) => / TRACE /.test(l)), `a trace-level log (${lines.length} lines)`);
    assert.ok(lines.some((l) => l.includes(room.toLowerCase())), 'the log is about this meeting');
    const secrets = {
        chat, password, question, 'poll option a': options[0], 'poll option b': options[1],
        token, 'token signature': token.split('.')[2], 'token payload': token.split('.')[1],
        'e-mail': 'alice@uni.example', 'shared secret': SECRET,
    };
    for (const v of ice) secrets[`ICE credential ${v}`] = v;
    const leaks = [];
    for (const [what, v] of Object.entries(secrets)) {
        const hit = lines.find((l) => l.includes(v));
        if (hit) leaks.push(`${what}: ${hit.slice(0, 300)}`);
    }
    const full = lines.find((l) => /(^|[^\d.])127\.0\.0\.1([^\d]|$)/.test(l) || /\[::1\]/.test(l));
    if (full) leaks.push(`a full client address: ${full.slice(0, 300)}`);
    assert.deepEqual(leaks, [], 'what the log holds');
    assert.ok(lines.some((l) => l.includes('127.0.0.x')), 'client addresses are in the log, masked');
    assert.ok(lines.some((l) => /listening on http:\/\/127\.0\.0\.2:/.test(l)), 'meetd\'s own address is in the log in full');
}));
