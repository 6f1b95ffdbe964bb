// What the stock HTTP APIs do to people in the official web app (issue 20, docs/http-api.md):
// a system chat message shows in the app's chat from its display name, a kick through the
// API removes the participant (the others see them go), ending the meeting through the API
// ends it for everyone left; moderator-only chat refuses a participant's message.
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after } from 'node:test';
import { useApp, appTest, assert } from './lib.mjs';
import { signToken } from '../lib/jwt.mjs';

const dir = mkdtempSync(path.join(tmpdir(), 'meetd-app-api-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const sys = generateKeyPairSync('rsa', { modulusLength: 2048 });
writeFileSync(path.join(dir, 'sys.pem'), sys.publicKey.export({ type: 'spki', format: 'pem' }));
const token = signToken({ iss: 'jitsi', aud: 'jitsi', sub: 'system.meet.jitsi', exp: Math.floor(Date.now() / 1000) + 3600 },
    { alg: 'RS256', privateKey: sys.privateKey, kid: 'sys' });

const app = useApp({
    name: 'app-httpapi',
    config: `[http_api]\nsystem_public_keys = { "sys" = "${path.join(dir, 'sys.pem')}" }\n`,
});

const api = async (method, p, body) => {
    const res = await fetch(`${app.base}${p}`, {
        method,
        headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
        body: body ? JSON.stringify(body) : undefined,
    });
    return res.status;
};

appTest('system chat, kick and end of meeting through the API, moderator-only chat', app.wrap(async () => {
    const room = 'apiroom' + Math.random().toString(36).slice(2, 7);
    const conference = `${room}@muc.meet.jitsi`;
    const a = await app.join(room, { name: 'Alice' });
    const b = await app.join(room, { name: 'Bob' });
    const c = await app.join(room, { name: 'Carol' });

    // A system chat message to Bob's session: the app shows it as a private chat entry.
    const bobJid = await b.eval(() => APP.conference._room.xmpp.connection.jid);
    assert.equal(await api('POST', '/send-system-chat-message',
        { room: conference, connectionJIDs: [bobJid], message: 'Recording starts in 5 minutes', displayName: 'IT Centre' }), 200);
    const m = await b.waitFor(() => APP.store.getState()['features/chat'].messages
        .find((x) => x.message === 'Recording starts in 5 minutes'), 'the system message in the chat', 10000);
    assert.equal(m.displayName, 'IT Centre');
    assert.equal(m.privateMessage, true);

    // Moderator-only chat (the room metadata the app writes): Carol's message is refused.
    await a.eval(() => APP.conference._room.getMetadataHandler().setMetadata('permissions', { groupChatRestricted: true }));
    await c.waitFor(() => APP.store.getState()['features/base/conference'].metadata?.permissions?.groupChatRestricted === true,
        'the restriction reaches Carol', 10000);
    await c.eval(() => APP.conference._room.sendTextMessage('not allowed now'));
    await a.eval(() => APP.conference._room.sendTextMessage('the moderator may'));
    await b.waitFor(() => APP.store.getState()['features/chat'].messages.some((x) => x.message === 'the moderator may'),
        'the moderator\'s message', 10000);
    assert.ok(!(await b.eval(() => APP.store.getState()['features/chat'].messages.some((x) => x.message === 'not allowed now'))),
        'Carol\'s message was not relayed');

    // Kick Carol through the API: the others see her leave.
    const carol = await c.id();
    assert.equal(await api('PUT', `/kick-participant?room=${room}`, { participantId: carol }), 200);
    await a.waitFor((id) => !APP.conference.listMembers().some((p) => p.getId() === id), 'Carol gone', 10000, carol);

    // End the meeting through the API: Alice and Bob are out of it.
    assert.equal(await api('POST', `/end-meeting?conference=${conference}`), 200);
    for (const p of [a, b]) {
        await p.waitFor(() => !APP.conference.isJoined(), 'out of the meeting', 15000);
    }
    await app.leaveAll();
}));
