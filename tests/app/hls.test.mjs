// Live streams as HLS from meetd itself, and recording to a file (issue 15, docs/streaming.md):
// a moderator starts a live stream from the app's menu; meetd's encoder writes HLS that
// meetd serves at /live/<key>.m3u8, and a viewer's Chromium plays it in meetd's player page
// with hls.js (from npm). A key starting with "U" needs a signed-in account (HTTP Basic with
// a meetd account here), one starting with "X" is left out of the /live/ index. When the
// stream ends its files are gone. "Start recording" writes an MP4 into recording_dir.
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after } from 'node:test';
import { useApp, appTest, assert, sleep, recordingSessions, startLiveStreamFromMenu, stopLiveStreamFromMenu, COLOUR_CAMERA, firstRedFrame, withTimeout, until } from './lib.mjs';
import { probeFile, assertH264Aac } from '../lib/rtmp.mjs';
import { REPO_DIR } from '../lib/server.mjs';

const noFfmpeg = existsSync('/usr/bin/ffmpeg') ? false : 'ffmpeg is not installed';
const HLS_JS = path.join(REPO_DIR, 'tests/node_modules/hls.js/dist/hls.min.js');
const recordings = mkdtempSync(path.join(tmpdir(), 'meetd-recordings-'));
after(() => rmSync(recordings, { recursive: true, force: true }));

const app = useApp({
    name: 'app-hls',
    config: `[streaming]\nhls = true\nhls_segment_secs = 1\nhls_js = "${HLS_JS}"\nrecording_dir = "${recordings}"\n`
        + 'width = 640\nheight = 360\nfps = 15\nvideo_kbps = 600\npreset = "ultrafast"\n[jibri]\nbrewery = ""\n[web]\nlocal_recording = false\n',
});

const get = (p, headers = {}) => fetch(`${app.base}${p}`, { headers });
const basic = (user, pw) => ({ authorization: `Basic ${Buffer.from(`${user}:${pw}`).toString('base64')}` });


const sessionIs = (p, mode, status, ms) => p.waitFor(([m, s]) => Object.values(APP.store.getState()['features/recording'].sessionDatas ?? [])
    .some((x) => x.mode === m && x.status === s), `${mode} ${status}`, ms, [mode, status])
    .catch(async (e) => {
        throw new Error(`${e.message}; the app's sessions: ${JSON.stringify(await recordingSessions(p))}`);
    });

const allOff = (p) => p.waitFor(() => Object.values(APP.store.getState()['features/recording'].sessionDatas ?? [])
    .every((s) => s.status === 'off'), 'sessions off', 20000)
    .catch(async (e) => {
        throw new Error(`${e.message}; the app's sessions: ${JSON.stringify(await recordingSessions(p))}`);
    });

appTest('HLS from meetd plays in a viewer; U keys need a sign-in, X keys are unlisted; recording writes an MP4', app.wrap(async () => {
    await app.server.userAdd('viewer@meet.jitsi', 'lecture-pw');
    app.onContext = (ctx) => ctx.addInitScript(COLOUR_CAMERA);
    const a = await app.join('hlsroom', { name: 'Teacher' });
    app.onContext = null;
    const b = await app.join('hlsroom', { name: 'Student', startAudioMuted: true });
    await a.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'moderator');
    await b.waitVideoFrom(a, 20000);

    // A "U" stream: listed, but only for signed-in accounts.
    const started = Date.now();
    await startLiveStreamFromMenu(a, 'Ulecture');
    await sessionIs(a, 'stream', 'on', 30000);
    await sessionIs(b, 'stream', 'on', 10000);
    await until('the first playlist', async () => (await get('/live/Ulecture.m3u8', basic('viewer', 'lecture-pw'))).status === 200, 20000);
    console.log(`HLS playlist served ${((Date.now() - started) / 1000).toFixed(1)} s after the moderator's start`);
    assert.match(await (await get('/live/')).text(), /Ulecture\.html/);
    assert.equal((await get('/live/Ulecture.m3u8')).status, 401);
    assert.equal((await get('/live/Ulecture.m3u8', basic('viewer', 'wrong'))).status, 401);
    assert.equal((await get('/live/Ulecture.html')).status, 401);
    assert.equal((await get('/live/stream5.html?s=Ulecture.m3u8')).status, 401);
    const signedIn = await get('/live/Ulecture.m3u8', basic('viewer', 'lecture-pw'));
    const playlist = await signedIn.text();
    assert.match(playlist, /^#EXTM3U/);
    assert.match(playlist, /#EXT-X-PROGRAM-DATE-TIME/);
    const cookie = signedIn.headers.get('set-cookie')?.split(';')[0];
    assert.ok(cookie?.startsWith('meetd_live='), String(cookie));
    assert.equal((await get('/live/Ulecture.m3u8', { cookie })).status, 200);
    assert.equal((await get('/live/Ulecture.m3u8', { cookie: 'meetd_live=99999999999.AAAA' })).status, 401);
    const segment = playlist.split('\n').find((l) => l.endsWith('.ts'));
    assert.equal((await get(`/live/${segment}`)).status, 401);
    assert.equal((await get(`/live/${segment}`, { cookie })).headers.get('content-type'), 'video/mp2t');

    // A viewer signs in and plays it in meetd's player page (hls.js), opened by the link form
    // the seed's streaming server uses (stream5.html?s=<name>.m3u8): time advances.
    const ctx = await app.browser.newContext({ httpCredentials: { username: 'viewer', password: 'lecture-pw' } });
    try {
        const page = await ctx.newPage();
        await page.goto(`${app.base}/live/stream5.html?s=Ulecture.m3u8`);
        await page.waitForFunction(() => document.querySelector('video')?.currentTime > 0.5, null, { timeout: 30000 });
        const t0 = await page.evaluate(() => document.querySelector('video').currentTime);
        await sleep(4000);
        const v = await page.evaluate(() => {
            const el = document.querySelector('video');
            return { t: el.currentTime, w: el.videoWidth, h: el.videoHeight, hlsjs: Boolean(window.meetdPlayer) };
        });
        assert.ok(v.hlsjs, 'the page plays with hls.js');
        assert.ok(v.t - t0 > 2, `currentTime ${t0} -> ${v.t}`);
        assert.deepEqual([v.w, v.h], [640, 360]);
        // The delay from the speaker to the viewer: the teacher's camera turns red; when does
        // the viewer's picture?
        const seen = page.evaluate(firstRedFrame);
        const changed = await a.eval(() => {
            window.meetdColour = '#e01010';
            return Date.now();
        });
        const delay = (await withTimeout(seen, 30000, 'the red picture at the viewer')) - changed;
        console.log(`HLS delay from the speaker's camera to the viewer's picture: ${(delay / 1000).toFixed(1)} s (1 s segments, hls.js defaults)`);
    } finally {
        await ctx.close();
    }

    // Stopped: not served, no files left.
    await stopLiveStreamFromMenu(a);
    await allOff(a);
    await until('the stream gone', async () => (await get('/live/Ulecture.m3u8', { cookie })).status === 404, 15000);
    assert.deepEqual(readdirSync(path.join(app.server.dataDir, 'live')), []);
    assert.doesNotMatch(await (await get('/live/')).text(), /Ulecture/);

    // An "X" stream: anyone with the name may watch, the index does not show it.
    await startLiveStreamFromMenu(a, 'Xhidden');
    await sessionIs(a, 'stream', 'on', 30000);
    await until('the X playlist', async () => (await get('/live/Xhidden.m3u8')).status === 200, 20000);
    assert.doesNotMatch(await (await get('/live/')).text(), /Xhidden/);
    assert.equal((await get('/live/Xhidden.html')).status, 200);
    assert.match(await (await get('/live/stream5.html?s=Xhidden.m3u8')).text(), /Xhidden\.m3u8/);
    await stopLiveStreamFromMenu(a);
    await allOff(a);

    // "Start recording": an MP4 in recording_dir, H.264 + AAC at the configured size.
    await a.clickToolbar('toolbar.record', 'record');
    await a.doc.locator('#modal-dialog-ok-button').click({ timeout: 10000 });
    await sessionIs(a, 'file', 'on', 30000);
    await sleep(5000);
    // Stop: the same dialog, "Record audio and video" switched off, "Apply changes".
    await a.clickToolbar('toolbar.record', 'record');
    // The switch is the app's own (a checkbox under a styled track): its label turns it off.
    const recordSwitch = a.doc.locator('#recording-switch-audio-video');
    await recordSwitch.waitFor({ state: 'attached', timeout: 10000 });
    for (let k = 0; k < 5 && await recordSwitch.isChecked(); k++) {
        await a.doc.locator('label[for="recording-switch-audio-video"]').click({ timeout: 5000 });
        await sleep(300);
    }
    assert.equal(await recordSwitch.isChecked(), false, 'record audio and video switched off');
    await a.doc.locator('#modal-dialog-ok-button').click({ timeout: 10000 });
    await allOff(a);
    // The app shows it off at once; the encoder then finishes the file (its index last).
    await until('the encoder ended', async () => (app.server.logTail(400).match(/live stream ended/g) ?? []).length >= 3, 15000);
    const files = await until('the recording', async () => {
        const f = readdirSync(recordings).filter((n) => n.endsWith('.mp4'));
        return f.length ? f : null;
    }, 15000);
    assert.equal(files.length, 1, files.join(', '));
    assert.match(files[0], /^hlsroom-/);
    const probe = await probeFile(path.join(recordings, files[0]));
    assertH264Aac(probe, 640, 360);
    assert.ok(probe.duration >= 3, `duration ${probe.duration}`);
    console.log(`recording: ${files[0]}, ${probe.duration.toFixed(1)} s`);
    await app.leaveAll();
}), { skip: noFfmpeg });
