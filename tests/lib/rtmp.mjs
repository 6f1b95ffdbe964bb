// An RTMP server for the live-streaming tests: Debian's nginx with libnginx-mod-rtmp on
// loopback, as a university runs its own streaming server; ffprobe (Debian's ffmpeg) looks
// at what arrives.
import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import assert from 'node:assert/strict';
import { withTimeout } from './server.mjs';

const MODULE = '/usr/lib/nginx/modules/ngx_rtmp_module.so';

/** Why the RTMP tests cannot run here, or false. */
export const noRtmp = !existsSync('/usr/sbin/nginx') ? 'nginx is not installed'
    : !existsSync(MODULE) ? 'libnginx-mod-rtmp is not installed'
        : false;

/** nginx-rtmp on 127.0.0.1:`port` with one live application, `live`. */
export async function startRtmp(port) {
    const dir = mkdtempSync(path.join(tmpdir(), 'meetd-rtmp-'));
    const conf = path.join(dir, 'nginx.conf');
    writeFileSync(conf, `load_module ${MODULE};
daemon off;
master_process off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;
events { worker_connections 64; }
rtmp {
    server {
        listen 127.0.0.1:${port};
        application live { live on; record off; }
    }
}
`);
    const proc = spawn('/usr/sbin/nginx', ['-c', conf, '-p', dir], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 500));
    if (proc.exitCode !== null) throw new Error(`nginx-rtmp exited (${proc.exitCode}); see ${dir}/error.log`);
    return {
        url: `rtmp://127.0.0.1:${port}/live`,
        /**
         * ffprobe's view of the stream `key` (its streams), or the error; it looks at the
         * first `analyzeSecs` of the stream.
         */
        probe(key, ms = 15000, analyzeSecs = 3) {
            return new Promise((resolve) => {
                execFile('ffprobe', ['-v', 'error', '-rw_timeout', String(ms * 1000), '-analyzeduration', String(analyzeSecs * 1000000),
                    '-show_entries', 'stream=codec_type,codec_name,width,height,sample_rate', '-of', 'json',
                    `rtmp://127.0.0.1:${port}/live/${key}`], { timeout: ms + analyzeSecs * 1000 + 5000 }, (err, stdout, stderr) => {
                    if (err) return resolve({ error: `${err.message} ${stderr}`.trim(), streams: [] });
                    try {
                        resolve({ streams: JSON.parse(stdout).streams ?? [] });
                    } catch (e) {
                        resolve({ error: String(e), streams: [] });
                    }
                });
            });
        },
        async stop() {
            proc.kill('SIGTERM');
            await withTimeout(new Promise((r) => (proc.exitCode !== null ? r() : proc.once('exit', r))), 5000, 'nginx stop').catch(() => proc.kill('SIGKILL'));
            rmSync(dir, { recursive: true, force: true });
        },
    };
}

/** ffprobe's view of a media file: its streams and duration (seconds), or the error. */
export function probeFile(file) {
    return new Promise((resolve) => {
        execFile('ffprobe', ['-v', 'error', '-show_entries', 'stream=codec_type,codec_name,width,height,start_time:format=duration',
            '-of', 'json', file], { timeout: 20000 }, (err, stdout, stderr) => {
            if (err) return resolve({ error: `${err.message} ${stderr}`.trim(), streams: [] });
            try {
                const j = JSON.parse(stdout);
                resolve({ streams: j.streams ?? [], duration: Number(j.format?.duration ?? 0) });
            } catch (e) {
                resolve({ error: String(e), streams: [] });
            }
        });
    });
}

/** What ffprobe saw (`probe`/`probeFile`) is H.264 at `width`x`height` and AAC. */
export function assertH264Aac(probe, width, height) {
    const video = probe.streams.find((s) => s.codec_type === 'video');
    const audio = probe.streams.find((s) => s.codec_type === 'audio');
    assert.ok(video && audio, JSON.stringify(probe));
    assert.equal(video.codec_name, 'h264');
    assert.deepEqual([video.width, video.height], [width, height]);
    assert.equal(audio.codec_name, 'aac');
}
