// A real SIP phone for the SIP gateway's tests (docs/sip.md): Debian's baresip, with a WAV
// tone as its microphone and a recording of what it hears, driven over its ctrl_tcp socket.
import { spawn } from 'node:child_process';
import { connect } from 'node:net';
import { mkdtempSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { freeUdpPort, sleep } from './server.mjs';

export { freeUdpPort };

/** A WAV file of 8 kHz mono 16-bit PCM: a 700 Hz tone for `secs` seconds. */
export function toneWav(file, secs) {
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
export function readWav(file) {
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
export class Phone {
    /** `auth`: digest credentials for meetd's `[sip] auth_user`. */
    static async start(number, label, { opus = false, auth = null } = {}) {
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
        const creds = auth ? `;auth_user=${auth.user};auth_pass=${auth.password}` : '';
        writeFileSync(path.join(dir, 'accounts'), `<sip:${number}@127.0.0.1>${creds};regint=0\n`);
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

