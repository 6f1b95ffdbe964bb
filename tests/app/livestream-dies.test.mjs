// An encoder that dies (issue 15, docs/streaming.md §2): meetd starts it once more, and when it
// dies again the session ends with an error that the app shows, rather than silence. The
// encoder here is a stand-in that makes the still frame with the real ffmpeg and fails every
// encoding run.
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { useApp, appTest, assert, recordingSessions, startLiveStreamFromMenu } from './lib.mjs';

const dir = mkdtempSync(path.join(tmpdir(), 'meetd-dying-encoder-'));
const runs = path.join(dir, 'runs');
const encoder = path.join(dir, 'ffmpeg');
writeFileSync(encoder, `#!/bin/sh
case " $* " in
  *" -progress "*) echo run >> '${runs}'; echo 'simulated encoder failure' >&2; exit 1 ;;
  *) exec ffmpeg "$@" ;;
esac
`);
chmodSync(encoder, 0o755);
writeFileSync(runs, '');

const app = useApp({
    name: 'app-livestream-dies',
    config: `[streaming]\nhls = true\nffmpeg = "${encoder}"\nwidth = 640\nheight = 360\n[jibri]\nbrewery = ""\n`,
});

appTest('an encoder that dies is started once more, then the app shows the stream failed', app.wrap(async () => {
    const a = await app.join('dying', { name: 'Teacher' });
    await a.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'moderator');
    await startLiveStreamFromMenu(a, 'lecture');
    const ended = await a.waitFor(() => Object.values(APP.store.getState()['features/recording'].sessionDatas ?? [])
        .find((s) => s.mode === 'stream' && s.error), 'the live stream with an error', 40000)
        .catch(async (e) => {
            throw new Error(`${e.message}; the app's sessions: ${JSON.stringify(await recordingSessions(a))}`);
        });
    // (The app keeps such a session's status at "pending"; its error is what it shows.)
    console.log(`dies: the app's session ${JSON.stringify({ status: ended.status, error: ended.error })}`);
    assert.equal(readFileSync(runs, 'utf8').trim().split('\n').length, 2, 'the encoder ran twice');
    // meetd is still there, and its HLS name is free again.
    assert.equal((await fetch(`${app.base}/live/lecture.m3u8`)).status, 404);
    await app.leaveAll();
}), { timeout: 120000 });
