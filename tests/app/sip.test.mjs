// meetd's own SIP gateway (issue 16, docs/sip.md): Debian's baresip calls meetd on loopback
// (over UDP with G.711, over TLS with Opus, over TCP),
// types the meeting's PIN on its keypad (RFC 4733 telephone events), and is in the meeting as
// a participant of the official web app: its name is the masked number, the app hears its
// tone, a moderator mutes it and it unmutes with *6, and the caller's recording holds the
// room. A wrong PIN is asked again, three times at most, then meetd hangs up; the meeting is
// untouched. Kicking the caller ends the call.
import { spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { connect } from 'node:net';
import { mkdtempSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { useApp, appTest, assert, sleep } from './lib.mjs';

const freeUdpPort = () => new Promise((resolve) => {
    const s = createSocket('udp4');
    s.bind(0, '127.0.0.1', () => {
        const { port } = s.address();
        s.close(() => resolve(port));
    });
});

const SIP_PORT = await freeUdpPort();
const SIPS_PORT = await freeUdpPort();
const app = useApp({
    name: 'app-sip',
    config: `[sip]\nenabled = true\nlisten = "127.0.0.1:${SIP_PORT}"\ntls_listen = "127.0.0.1:${SIPS_PORT}"\n[dialin]\nnumbers = [ { country = "DE", number = "+49 30 1234567" } ]\n`,
});

/** A WAV file of 8 kHz mono 16-bit PCM: a 700 Hz tone for `secs` seconds. */
function toneWav(file, secs) {
    const n = 8000 * secs;
    const b = Buffer.alloc(44 + 2 * n);
    b.write('RIFF', 0); b.writeUInt32LE(36 + 2 * n, 4); b.write('WAVEfmt ', 8);
    b.writeUInt32LE(16, 16); b.writeUInt16LE(1, 20); b.writeUInt16LE(1, 22);
    b.writeUInt32LE(8000, 24); b.writeUInt32LE(16000, 28); b.writeUInt16LE(2, 32); b.writeUInt16LE(16, 34);
    b.write('data', 36); b.writeUInt32LE(2 * n, 40);
    for (let i = 0; i < n; i++) b.writeInt16LE(Math.round(8000 * Math.sin(2 * Math.PI * 700 * i / 8000)), 44 + 2 * i);
    writeFileSync(file, b);
}

/** The 16-bit mono samples of a WAV file baresip's sndfile wrote, and its rate. */
function readWav(file) {
    const b = readFileSync(file);
    let off = 12;
    let rate = 8000;
    let channels = 1;
    while (off + 8 <= b.length) {
        const id = b.toString('ascii', off, off + 4);
        const len = b.readUInt32LE(off + 4);
        if (id === 'fmt ') {
            channels = b.readUInt16LE(off + 10);
            rate = b.readUInt32LE(off + 12);
        }
        if (id === 'data') {
            const end = Math.min(b.length, off + 8 + len);
            const samples = [];
            for (let i = off + 8; i + 1 < end; i += 2 * channels) samples.push(b.readInt16LE(i));
            return { rate, samples };
        }
        off += 8 + len + (len & 1);
    }
    return { rate, samples: [] };
}

/** A baresip phone with the number `number`, driven over its ctrl_tcp socket. */
class Phone {
    static async start(number, label, { opus = false } = {}) {
        const dir = mkdtempSync(path.join(tmpdir(), `meetd-baresip-${label}-`));
        const ctrl = await freeUdpPort();
        const sipPort = await freeUdpPort();
        mkdirSync(path.join(dir, 'rec'));
        toneWav(path.join(dir, 'tone.wav'), 60);
        writeFileSync(path.join(dir, 'config'), [
            'poll_method epoll', 'net_interface 127.0.0.1', `sip_listen 127.0.0.1:${sipPort}`,
            'audio_player aubridge,nil', `audio_source aufile,${path.join(dir, 'tone.wav')}`, 'audio_alert aubridge,nil',
            'ausrc_srate 8000', 'auplay_srate 8000', 'ausrc_channels 1', 'auplay_channels 1',
            'module_path /usr/lib/baresip/modules',
            ...(opus ? ['module opus.so'] : []), 'module g711.so', 'module aufile.so', 'module aubridge.so', 'module sndfile.so',
            'module_app account.so', 'module_app menu.so', 'module_app ctrl_tcp.so',
            `ctrl_tcp_listen 127.0.0.1:${ctrl}`, `snd_path ${path.join(dir, 'rec')}`, '',
        ].join('\n'));
        writeFileSync(path.join(dir, 'accounts'), `<sip:${number}@127.0.0.1>;regint=0\n`);
        const p = new Phone();
        p.dir = dir;
        p.log = [];
        p.events = [];
        p.proc = spawn('baresip', ['-f', dir], { stdio: ['ignore', 'pipe', 'pipe'] });
        for (const s of [p.proc.stdout, p.proc.stderr]) s.on('data', (d) => p.log.push(...d.toString().split('\n').filter((l) => l.trim() && !l.includes('bit/s'))));
        for (let i = 0; ; i++) {
            try {
                p.sock = await new Promise((resolve, reject) => {
                    const c = connect(ctrl, '127.0.0.1', () => resolve(c));
                    c.on('error', reject);
                });
                break;
            } catch (e) {
                if (i > 50) throw new Error(`baresip's control socket: ${e.message}\n${p.log.join('\n')}`);
                await sleep(100);
            }
        }
        let buf = Buffer.alloc(0);
        p.sock.on('data', (d) => {
            buf = Buffer.concat([buf, d]);
            for (;;) {
                const colon = buf.indexOf(':');
                if (colon < 0) break;
                const len = Number(buf.toString('ascii', 0, colon));
                if (buf.length < colon + 1 + len + 1) break;
                try {
                    const m = JSON.parse(buf.toString('utf8', colon + 1, colon + 1 + len));
                    if (m.event) p.events.push(m);
                } catch { /* not JSON */ }
                buf = buf.subarray(colon + 1 + len + 1);
            }
        });
        return p;
    }

    command(command, params = '') {
        const s = JSON.stringify({ command, params, token: 't' });
        this.sock.write(`${Buffer.byteLength(s)}:${s},`);
    }

    async waitEvent(type, ms = 15000) {
        const end = Date.now() + ms;
        while (Date.now() < end) {
            const e = this.events.find((x) => x.type === type);
            if (e) return e;
            await sleep(100);
        }
        throw new Error(`baresip: no ${type} in ${ms} ms; events ${JSON.stringify(this.events.map((e) => e.type))}\n${this.log.slice(-30).join('\n')}`);
    }

    /** Keys on the keypad, one at a time (RFC 4733 events). */
    async keys(s) {
        for (const k of s) {
            this.command('sndcode', k);
            await sleep(250);
        }
    }

    /** What the phone heard (sndfile's dump of the decoded audio). */
    recording() {
        const f = readdirSync(path.join(this.dir, 'rec')).find((x) => x.endsWith('-dec.wav'));
        return f ? readWav(path.join(this.dir, 'rec', f)) : { rate: 8000, samples: [] };
    }

    async stop() {
        this.sock?.destroy();
        this.proc.kill('SIGTERM');
        await new Promise((r) => (this.proc.exitCode !== null ? r() : this.proc.on('exit', r)));
    }
}

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
    try {
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
    } catch (e) {
        e.message += `\n--- baresip ---\n${phone.log.slice(-40).join('\n')}`;
        throw e;
    } finally {
        await phone.stop();
    }
    await app.leaveAll();
}));

appTest('a hidden caller on Opus over TLS joins as "Phone user", is heard, and the meeting\'s end hangs up', app.wrap(async () => {
    const a = await app.join('opuscall', { name: 'Alice' });
    await a.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'moderator');
    const pin = await pinOf('opuscall');
    const phone = await Phone.start('anonymous', 'opus', { opus: true });
    try {
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
    } catch (e) {
        e.message += `\n--- baresip ---\n${phone.log.slice(-40).join('\n')}`;
        throw e;
    } finally {
        await phone.stop();
    }
    await app.leaveAll();
}));

appTest('a wrong PIN (over TCP) is asked again, three times at most, then meetd hangs up; the meeting goes on', app.wrap(async () => {
    const a = await app.join('wrongpin', { name: 'Alice' });
    const pin = await pinOf('wrongpin');
    const wrong = String((Number(pin) + 1) % 1e9).padStart(9, '1');
    const phone = await Phone.start('anonymous', 'wrong');
    try {
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
    } finally {
        await phone.stop();
    }
    await app.leaveAll();
}));
