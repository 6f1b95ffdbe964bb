// Six live streams at once (issue 15; `[streaming] max_concurrent` = 6, as the seed's
// streaming server has): six rooms, each with a teacher of the official app, each streaming
// from the app's menu to nginx-rtmp and, through the same encoding, as HLS from meetd (one
// ffmpeg per stream with the tee muxer). Every stream reaches the RTMP server and is served as
// HLS; a seventh is refused as busy. Reports each encoder's CPU. (The delay to an HLS viewer
// is measured in hls.test.mjs, on one stream.)
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { useApp, appTest, assert, sleep, recordingSessions, startLiveStreamFromMenu, stopLiveStreamFromMenu, ownStartRefusal, until, COLOUR_CAMERA, firstRedFrame, withTimeout } from './lib.mjs';
import { startRtmp, noRtmp, probeFile } from '../lib/rtmp.mjs';
import { REPO_DIR } from '../lib/server.mjs';

const RTMP_PORT = 20000 + ((process.pid + 2500) % 5000);
const HLS_JS = path.join(REPO_DIR, 'tests/node_modules/hls.js/dist/hls.min.js');
const ROOMS = 6;
/** The stream a viewer watches. */
const VIEWED = 3;
const app = useApp({
    name: 'app-livestream-six',
    config: `[streaming]\nrtmp_url = "rtmp://127.0.0.1:${RTMP_PORT}/live"\nhls = true\nhls_segment_secs = 1\nhls_js = "${HLS_JS}"\n`
        + 'width = 640\nheight = 360\nfps = 15\nvideo_kbps = 600\npreset = "ultrafast"\nmax_concurrent = 6\n[jibri]\nbrewery = ""\n',
});

/** CPU ticks (user + system) of a process, from /proc. */
const ticks = (pid) => {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
    return Number(rest[11]) + Number(rest[12]);
};
const ffmpegs = (parent) => readdirSync('/proc').filter((d) => /^\d+$/.test(d)).filter((d) => {
    try {
        const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
        return stat.includes('(ffmpeg)') && Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === parent;
    } catch {
        return false;
    }
}).map(Number);


const isOn = (p) => p.waitFor(() => Object.values(APP.store.getState()['features/recording'].sessionDatas ?? [])
    .some((s) => s.mode === 'stream' && s.status === 'on'), 'live stream on', 40000)
    .catch(async (e) => {
        throw new Error(`${e.message}; the app's sessions: ${JSON.stringify(await recordingSessions(p))}`);
    });

appTest('six rooms stream at once, to RTMP and HLS; a seventh is busy', app.wrap(async () => {
    const rtmp = await startRtmp(RTMP_PORT);
    try {
        const teachers = [];
        for (let i = 0; i < ROOMS; i++) {
            // The teacher whose stream is watched has a camera the test can turn red.
            app.onContext = i === VIEWED ? (ctx) => ctx.addInitScript(COLOUR_CAMERA) : null;
            teachers.push(await app.join(`lecture${i}`, { name: `Teacher ${i}`, hash: 'config.resolution=360' }));
        }
        app.onContext = null;
        for (const [i, t] of teachers.entries()) {
            await t.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'moderator');
            await startLiveStreamFromMenu(t, `stream${i}`);
        }
        for (const t of teachers) await isOn(t);
        // A seventh room: all encoders busy.
        const extra = await app.join('lecture6', { name: 'Teacher 6' });
        await extra.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'moderator');
        assert.equal(await ownStartRefusal(extra), 'resource-constraint');
        await extra.close();

        // Every stream reaches the RTMP server (H.264 + AAC) and is served as HLS.
        for (let i = 0; i < ROOMS; i++) {
            // ffprobe decides on what it saw in its first seconds of stream time; on this loaded
            // machine the encoders run behind their input's clock (the log says by how much) and
            // a stream's audio or video may come late: it looks for 10 s, then twice for 20 s.
            let probe = await rtmp.probe(`stream${i}`, 15000, 10);
            for (let again = 0; again < 2 && probe.streams.length < 2; again++) {
                console.log(`# stream${i}: probe saw ${JSON.stringify(probe)}, probing again`);
                probe = await rtmp.probe(`stream${i}`, 15000, 20);
            }
            assert.deepEqual(probe.streams.map((s) => s.codec_name).sort(), ['aac', 'h264'], `stream${i}: ${JSON.stringify(probe)}`);
            await until(`stream${i}.m3u8`, async () => (await fetch(`${app.base}/live/stream${i}.m3u8`)).status === 200, 15000);
        }

        // The encoders' CPU over 20 s, with all six running.
        const pids = ffmpegs(app.server.proc.pid);
        assert.equal(pids.length, ROOMS, `encoders: ${pids}`);
        const hz = 100;
        const before = pids.map(ticks);
        const meetdBefore = ticks(app.server.proc.pid);
        const t0 = Date.now();
        await sleep(20000);
        const secs = (Date.now() - t0) / 1000;
        const per = pids.map((p, i) => (ticks(p) - before[i]) / hz / secs * 100);
        const meetd = (ticks(app.server.proc.pid) - meetdBefore) / hz / secs * 100;

        console.log(`six streams (640x360, 15 fps, ultrafast, RTMP + HLS from one encoding; 2-core VM with six app participants): `
            + `encoder CPU per stream ${per.map((c) => c.toFixed(0)).join(', ')} % of one core (mean ${(per.reduce((x, y) => x + y, 0) / ROOMS).toFixed(0)} %); `
            + `meetd ${meetd.toFixed(0)} %`);

        // A viewer of one of the six plays it in meetd's player page for 20 s, through the
        // seed's link form, without a fatal error and without running dry for long (it did
        // both while ffmpeg mixed the speakers, docs/streaming.md §3a); the requests and the
        // player's state are printed when it stalls.
        const ctx = await app.browser.newContext();
        let played = null;
        let fatal = [];
        try {
            const page = await ctx.newPage();
            const errors = [];
            page.on('console', (m) => errors.push(m.text()));
            const net = [];
            const t00 = Date.now();
            const short = (u) => u.split('/').pop();
            page.on('request', (r) => net.push(`${((Date.now() - t00) / 1000).toFixed(1)} > ${short(r.url())}`));
            page.on('requestfinished', (r) => {
                const at = ((Date.now() - t00) / 1000).toFixed(1);
                // The page may be gone before the response is read.
                r.response().then((resp) => net.push(`${at} < ${short(r.url())} ${resp?.status()}`), () => {});
            });
            page.on('requestfailed', (r) => net.push(`${((Date.now() - t00) / 1000).toFixed(1)} X ${short(r.url())} ${r.failure()?.errorText}`));
            await page.goto(`${app.base}/live/stream5.html?s=stream${VIEWED}.m3u8`);
            await page.waitForFunction(() => window.meetdPlayer, null, { timeout: 30000 });
            await page.evaluate(() => {
                window.meetdErrors = [];
                window.meetdPlayer.on('hlsError', (e, d) => window.meetdErrors.push(`${d.fatal ? 'FATAL ' : ''}${d.type}/${d.details} ${d.error?.message ?? ''} ${d.reason ?? ''} ${d.frag?.sn ?? ''} ${d.sourceBufferName ?? ''}`));
            });
            await page.waitForFunction(() => document.querySelector('video')?.currentTime > 0.5, null, { timeout: 30000 });
            const t0v = await page.evaluate(() => document.querySelector('video').currentTime);
            await sleep(20000);
            const v = await page.evaluate(() => ({ t: document.querySelector('video').currentTime, errors: window.meetdErrors }));
            console.log(`six: viewer of stream${VIEWED}: currentTime ${t0v.toFixed(1)} -> ${v.t.toFixed(1)} in 20 s; hls.js errors: ${JSON.stringify(v.errors)}`);
            played = v.t - t0v;
            fatal = v.errors.filter((e) => e.startsWith('FATAL'));
            // The delay from the speaker to the viewer with all six running: the teacher's
            // camera turns red; when does the viewer's picture?
            if (!fatal.length) {
                const seen = page.evaluate(firstRedFrame);
                const changed = await teachers[VIEWED].eval(() => {
                    window.meetdColour = '#e01010';
                    return Date.now();
                });
                const delay = (await withTimeout(seen, 30000, 'the red picture at the viewer')) - changed;
                console.log(`six: HLS delay from the speaker's camera to the viewer's picture, six streams running: ${(delay / 1000).toFixed(1)} s (1 s segments)`);
            }
            if (v.errors.length) console.log(`six: viewer console: ${errors.slice(-20).join(' | ')}`);
            // The newest segments as ffprobe sees them: audio and video start together (they
            // drifted apart before the encoder filled the gaps of each speaker's audio).
            const pl = await (await fetch(`${app.base}/live/stream${VIEWED}.m3u8`)).text();
            const stalled = v.t - t0v <= 15;
            for (const seg of pl.split('\n').filter((l) => l.endsWith('.ts')).slice(stalled ? -4 : -1)) {
                const p = await probeFile(path.join(app.server.dataDir, 'live', seg));
                console.log(`six: ${seg}: ${p.error ?? p.streams.map((s) => `${s.codec_type} from ${s.start_time}`).join(', ')}`);
            }
            if (stalled) {
                console.log(`six: the viewer stalled (${(v.t - t0v).toFixed(1)} s of 20)`);
                console.log(`six: playlist ${pl.replace(/\n/g, ' | ')}`);
                console.log(`six: viewer requests: ${net.join(', ')}`);
                const det = await page.evaluate(() => {
                    const d = window.meetdPlayer.levels?.[0]?.details;
                    return { live: d?.live, end: d?.endSN, frags: d?.fragments?.map((f) => `${f.sn}@${f.start?.toFixed(2)}+${f.duration?.toFixed(2)}`), loadLevel: window.meetdPlayer.loadLevel, media: document.querySelector('video').buffered.length };
                });
                console.log(`six: hls.js level ${JSON.stringify(det)}`);
            }
        } finally {
            await ctx.close();
        }
        assert.deepEqual(fatal, [], 'the viewer had no fatal hls.js error');
        assert.ok(played >= 10, `the viewer played ${played?.toFixed(1)} s of 20`);

        for (const t of teachers) await stopLiveStreamFromMenu(t);
        await until('every encoder ended', async () => ffmpegs(app.server.proc.pid).length === 0, 20000);
        // A session deletes its files just after its encoder exits: wait for that, then look.
        const liveDir = path.join(app.server.dataDir, 'live');
        await until('every stream\'s files deleted', async () => readdirSync(liveDir).length === 0, 10000).catch(() => {});
        assert.deepEqual(readdirSync(liveDir), []);
        await app.leaveAll();
    } finally {
        await rtmp.stop();
    }
}), { skip: noRtmp, timeout: 300000 });
