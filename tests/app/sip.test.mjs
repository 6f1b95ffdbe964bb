// meetd's own SIP gateway (issue 16, docs/sip.md): Debian's baresip calls meetd on loopback
// (over UDP with G.711, over TLS with Opus, over TCP),
// types the meeting's PIN on its keypad (RFC 4733 telephone events), and is in the meeting as
// a participant of the official web app: its name is the masked number, the app hears its
// tone, a moderator mutes it and it unmutes with *6, and the caller's recording holds the
// room. A wrong PIN is asked again, three times at most, then meetd hangs up; the meeting is
// untouched. Kicking the caller ends the call.
import { useApp, appTest, assert, sleep } from './lib.mjs';
import { Phone, freeUdpPort } from '../lib/baresip.mjs';

const SIP_PORT = await freeUdpPort();
const SIPS_PORT = await freeUdpPort();
const app = useApp({
    name: 'app-sip',
    config: `[sip]\nenabled = true\nlisten = "127.0.0.1:${SIP_PORT}"\ntls_listen = "127.0.0.1:${SIPS_PORT}"\n[dialin]\nnumbers = [ { country = "DE", number = "+49 30 1234567" } ]\n`,
});

/** The levels (dBov, 0 = loudest) of the 100 ms windows of `samples`. */
const windowLevels = ({ rate, samples }) => {
    const w = rate / 10;
    const out = [];
    for (let i = 0; i + w <= samples.length; i += w) {
        let e = 0;
        for (let j = i; j < i + w; j++) e += samples[j] * samples[j];
        const rms = Math.sqrt(e / w) / 32768;
        out.push(rms > 0 ? Math.round(-20 * Math.log10(rms)) : 127);
    }
    return out;
};

/** `body` with `phone` on the line: a failure carries baresip's log; the phone stops either way. */
async function withPhone(phone, body) {
    try {
        await body();
    } catch (e) {
        e.message += `\n--- baresip ---\n${phone.log.slice(-40).join('\n')}`;
        throw e;
    } finally {
        await phone.stop();
    }
}

const pinOf = async (room) => String((await (await fetch(`${app.base}/dialin/conference-code?conference=${room}@muc.meet.jitsi`)).json()).id);

const remoteByName = (p, name) => p.eval((n) => {
    const m = APP.conference.listMembers().find((x) => x.getDisplayName() === n);
    if (!m) return null;
    const tracks = APP.store.getState()['features/base/tracks'];
    const a = tracks.find((t) => !t.local && t.participantId === m.getId() && t.mediaType === 'audio');
    return { id: m.getId(), audio: Boolean(a), muted: a ? a.muted : null, role: m.getRole() };
}, name);

/** The largest audio level Chrome reports for incoming audio over `ms`. */
const loudestIncoming = (p, ms) => p.eval(async (dur) => {
    const pc = APP.conference._room.jvbJingleSession?.peerconnection?.peerconnection;
    if (!pc) return -1;
    let max = 0;
    const end = Date.now() + dur;
    while (Date.now() < end) {
        (await pc.getStats()).forEach((s) => {
            if (s.type === 'inbound-rtp' && s.kind === 'audio' && typeof s.audioLevel === 'number') max = Math.max(max, s.audioLevel);
        });
        await new Promise((r) => setTimeout(r, 200));
    }
    return max;
}, ms);

appTest('a phone caller types the PIN, is in the meeting, is heard, hears the room, is muted and unmuted, and is kicked', app.wrap(async () => {
    const a = await app.join('phonecall', { name: 'Alice' });
    await a.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'moderator');
    const pin = await pinOf('phonecall');
    const phone = await Phone.start('+4930123456', 'caller');
    await withPhone(phone, async () => {
        phone.command('dial', `sip:meet@127.0.0.1:${SIP_PORT}`);
        await phone.waitEvent('CALL_ESTABLISHED');
        await sleep(1500);
        await phone.keys(`${pin}#`);
        const joined = await a.waitFor((n) => APP.conference.listMembers().some((m) => m.getDisplayName() === n),
            'the phone participant in the meeting', 20000, '+493****456');
        assert.ok(joined);
        // Its audio reaches the app: a track, and a level on it.
        await a.waitFor(() => APP.store.getState()['features/base/tracks'].some((t) => !t.local && t.mediaType === 'audio'),
            'the phone participant\'s audio track', 20000);
        const level = await loudestIncoming(a, 3000);
        assert.ok(level > 0.05, `the app hears the caller: audio level ${level}`);
        // A moderator mutes the caller: the app shows it muted; *6 unmutes.
        const before = await remoteByName(a, '+493****456');
        await a.eval((id) => APP.conference._room.muteParticipant(id, 'audio'), before.id);
        await a.waitFor((n) => {
            const m = APP.conference.listMembers().find((x) => x.getDisplayName() === n);
            return APP.store.getState()['features/base/tracks'].some((t) => t.participantId === m?.getId() && t.mediaType === 'audio' && t.muted);
        }, 'the caller muted in the app', 10000, '+493****456');
        await phone.keys('*6');
        await a.waitFor((n) => {
            const m = APP.conference.listMembers().find((x) => x.getDisplayName() === n);
            return APP.store.getState()['features/base/tracks'].some((t) => t.participantId === m?.getId() && t.mediaType === 'audio' && !t.muted);
        }, 'the caller unmuted with *6', 10000, '+493****456');
        const again = await loudestIncoming(a, 3000);
        assert.ok(again > 0.05, `heard again after *6: ${again}`);
        // Kicked: the call ends from meetd's side.
        await a.eval((id) => APP.conference._room.kickParticipant(id), before.id);
        await phone.waitEvent('CALL_CLOSED', 15000);
        await a.waitFor((n) => !APP.conference.listMembers().some((m) => m.getDisplayName() === n), 'the caller gone', 10000, '+493****456');
        // What the caller heard: the prompts, then the room (Chromium's fake microphone beeps).
        const levels = windowLevels(phone.recording());
        const loud = levels.filter((l) => l < 45).length;
        console.log(`# sip: app level ${level.toFixed(3)} / after *6 ${again.toFixed(3)}; caller's recording ${levels.length / 10} s, ${loud} loud 100 ms windows`);
        assert.ok(levels.length > 50, `the caller's recording: ${levels.length} windows`);
        // The prompts alone are under a second of sound; the room adds the rest.
        assert.ok(loud >= 15, `the caller heard the room: ${loud} loud windows of ${levels.length}: ${levels.join(',')}`);
    });
    await app.leaveAll();
}));

appTest('a hidden caller on Opus over TLS joins as "Phone user", is heard, and the meeting\'s end hangs up', app.wrap(async () => {
    const a = await app.join('opuscall', { name: 'Alice' });
    await a.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'moderator');
    const pin = await pinOf('opuscall');
    const phone = await Phone.start('anonymous', 'opus', { opus: true });
    await withPhone(phone, async () => {
        phone.command('dial', `sip:meet@127.0.0.1:${SIPS_PORT};transport=tls`);
        await phone.waitEvent('CALL_ESTABLISHED');
        await sleep(1500);
        await phone.keys(`${pin}#`);
        await a.waitFor(() => APP.conference.listMembers().some((m) => m.getDisplayName() === 'Phone user'),
            'the hidden caller in the meeting as "Phone user"', 20000);
        await a.waitFor(() => APP.store.getState()['features/base/tracks'].some((t) => !t.local && t.mediaType === 'audio'),
            'the caller\'s audio track', 20000);
        const level = await loudestIncoming(a, 3000);
        assert.ok(level > 0.05, `the app hears the Opus caller: audio level ${level}`);
        assert.match(app.server.logTail(200), /SIP: call answered caller=Phone user codec="opus"/);
        // End the meeting for everyone: the call ends too.
        await a.eval(() => APP.conference._room.end());
        await phone.waitEvent('CALL_CLOSED', 15000);
        console.log(`# sip: Opus over TLS, app level ${level.toFixed(3)}; ended with the meeting`);
    });
    await app.leaveAll();
}));

appTest('a wrong PIN (over TCP) is asked again, three times at most, then meetd hangs up; the meeting goes on', app.wrap(async () => {
    const a = await app.join('wrongpin', { name: 'Alice' });
    const pin = await pinOf('wrongpin');
    const wrong = String((Number(pin) + 1) % 1e9).padStart(9, '1');
    const phone = await Phone.start('anonymous', 'wrong');
    await withPhone(phone, async () => {
        phone.command('dial', `sip:meet@127.0.0.1:${SIP_PORT};transport=tcp`);
        await phone.waitEvent('CALL_ESTABLISHED');
        await sleep(1200);
        await phone.keys(`${wrong}#`);
        await sleep(1500);
        await phone.keys('12#');
        await sleep(1500);
        assert.equal(phone.events.filter((e) => e.type === 'CALL_CLOSED').length, 0, 'still on the line after two wrong PINs');
        await phone.keys('#');
        await phone.waitEvent('CALL_CLOSED', 15000);
        assert.ok(!(await a.eval(() => APP.conference.listMembers().length)), 'nobody joined');
        assert.match(app.server.logTail(200), /wrong PIN, the last try; hanging up/);
        // The meeting is there as before, and meetd takes the next call.
        assert.equal(await a.eval(() => APP.conference.isJoined()), true);
    });
    await app.leaveAll();
}));
