// Live streaming without a Jibri (issue 15, docs/streaming.md): a moderator starts a live
// stream from the app's menu with a stream key; meetd's bridge passes the on-stage video and
// the speakers' audio to Debian's ffmpeg, which sends H.264 + AAC to the university's RTMP
// server (nginx with libnginx-mod-rtmp here, on loopback). The picture follows the speaker;
// a participant who is not a moderator is refused; stopping from the app ends the stream.
import { useApp, appTest, assert, sleep, recordingSessions, startLiveStreamFromMenu, stopLiveStreamFromMenu, ownStartRefusal, until } from './lib.mjs';
import { startRtmp, noRtmp, assertH264Aac } from '../lib/rtmp.mjs';

const RTMP_PORT = 20000 + (process.pid % 5000);
const app = useApp({
    name: 'app-livestream',
    config: `[streaming]\nrtmp_url = "rtmp://127.0.0.1:${RTMP_PORT}/live"\nwidth = 640\nheight = 360\nfps = 15\nvideo_kbps = 600\npreset = "ultrafast"\n[jibri]\nbrewery = ""\n`,
});

const metric = async (name) => {
    const m = await (await fetch(`${app.base}/metrics`)).text();
    return Number(m.match(new RegExp(`^${name} (\\d+)`, 'm'))?.[1] ?? NaN);
};


appTest('a moderator streams to the RTMP server; the picture follows the speaker; stop ends it', app.wrap(async () => {
    const rtmp = await startRtmp(RTMP_PORT);
    try {
        const a = await app.join('lecture', { name: 'Teacher' });
        const b = await app.join('lecture', { name: 'Student', startAudioMuted: true });
        await a.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'moderator');
        await b.waitVideoFrom(a, 20000);
        await startLiveStreamFromMenu(a, 'lecture-2026');
        // Everyone's app shows the live stream on.
        for (const p of [a, b]) {
            await p.waitFor(() => Object.values(APP.store.getState()['features/recording'].sessionDatas ?? [])
                .some((s) => s.mode === 'stream' && s.status === 'on'), 'live stream on', 30000)
                .catch(async (e) => {
                    throw new Error(`${e.message}; the app's sessions: ${JSON.stringify(await recordingSessions(p))}`);
                });
        }
        // The RTMP server gets H.264 at the configured size and AAC.
        const probe = await rtmp.probe('lecture-2026');
        assertH264Aac(probe, 640, 360);
        // The student is not a moderator: the focus refuses their start.
        assert.equal(await ownStartRefusal(b), 'not-allowed');
        // The teacher falls silent and the student speaks: the stream shows the student.
        const switches = await metric('meetd_media_live_stream_switches_total');
        await a.clickToolbar('toolbar.accessibilityLabel.mute', 'mute');
        await b.clickToolbar('toolbar.accessibilityLabel.unmute', 'unmute');
        await a.waitDominantSpeaker(b, 20000);
        await until('the live stream switched to the student',
            async () => (await metric('meetd_media_live_stream_switches_total')) > switches, 15000);
        // Stop from the menu: everyone sees it off, the encoder ends, nothing reaches the server.
        await stopLiveStreamFromMenu(a);
        for (const p of [a, b]) {
            await p.waitFor(() => Object.values(APP.store.getState()['features/recording'].sessionDatas ?? [])
                .every((s) => s.status === 'off'), 'live stream off', 20000);
        }
        await until('the encoder ended', async () => /live stream ended/.test(app.server.logTail(400)), 15000);
        const cpu = app.server.logTail(400).match(/cpu_percent="?(\d+)/)?.[1];
        console.log(`live stream encoder: ${cpu ?? '?'}% of one core (640x360, 15 fps, ultrafast)`);
        const after = await rtmp.probe('lecture-2026', 4000);
        assert.ok(!after.streams.length, JSON.stringify(after));
        assert.ok((await recordingSessions(b)).every((x) => x.status === 'off'));
        await app.leaveAll();
    } finally {
        await rtmp.stop();
    }
}), { skip: noRtmp });
