// Speaker stats and the conference timer in the official web app (issue 11): the stats dialog
// shows each speaker's time, a late joiner gets the totals so far; the timer counts from the
// room's creation for everyone, late joiners included.
import { useApp, appTest, assert, sleep } from './lib.mjs';

const app = useApp({ name: 'app-speakerstats' });

/** Seconds shown for `name` in the open speaker stats dialog. */
async function shownSeconds(p, name) {
    const text = await p.page.locator('.row.item', { hasText: name }).locator('.time').first().innerText({ timeout: 5000 });
    let s = 0;
    for (const [, n, u] of text.matchAll(/(\d+)([hms])/g)) s += Number(n) * { h: 3600, m: 60, s: 1 }[u];
    return s;
}

appTest('speaking time adds up and reaches a late joiner; one timer for all', app.wrap(async () => {
    const r = 'speakers';
    // Through the bridge, whose dominant speaker is meetd's: in a two-person P2P call the app
    // detects the speaker itself, from the P2P audio level (lib-jitsi-meet's
    // P2PDominantSpeakerDetection), and that missed Alice's fake tone at times.
    const hash = 'config.p2p.enabled=false';
    const a = await app.join(r, { name: 'Alice', hash });
    const b = await app.join(r, { name: 'Bob', startAudioMuted: true, hash });
    await b.waitVideoFrom(a, 10000);
    // Alice is the only one with a microphone on: she becomes the dominant speaker.
    await b.waitDominantSpeaker(a, 15000);
    await sleep(6000);
    const c = await app.join(r, { name: 'Carol', startAudioMuted: true, hash });
    // Carol's stats dialog shows Alice's time so far.
    await c.clickToolbar('toolbar.accessibilityLabel.speakerStats', 'participants stats');
    const seen = await shownSeconds(c, 'Alice');
    assert.ok(seen >= 3, `Carol sees ${seen}s for Alice`);
    // The timer: the same start for everyone.
    const ts = await Promise.all([a, b, c].map((p) => p.waitFor(
        () => APP.store.getState()['features/base/conference'].conferenceTimestamp, 'conference timestamp', 10000)));
    assert.ok(ts.every((t) => t === ts[0]), JSON.stringify(ts));
    assert.ok(Date.now() - ts[0] >= 6000, 'counted from the room\'s creation');
    await app.leaveAll();
}));
