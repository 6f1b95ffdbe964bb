// Screen sharing (issue 14): Alice shares her screen (Chromium's fake capture); for every
// receiver the share goes on stage and arrives at the resolution Alice sends it in, while
// Alice's camera keeps playing in her thumbnail.
import { useApp, appTest, assert, sleep } from './lib.mjs';

const app = useApp({ name: 'app-screenshare' });

/** `p`'s view of `other`'s video of one kind: height and frames decoded, or null. */
function received(p, other, kind) {
    return p.eval(([pid, k]) => {
        // A screenshare track has media type "screenshare" (video type "desktop").
        const t = APP.store.getState()['features/base/tracks'].find((x) => !x.local && x.participantId === pid
            && (k === 'desktop' ? x.videoType === 'desktop' : x.mediaType === 'video' && x.videoType !== 'desktop'));
        const mst = t?.jitsiTrack?.getTrack();
        const els = mst ? [...document.querySelectorAll('video')].filter((e) => e.srcObject?.getVideoTracks?.()[0]?.id === mst.id) : [];
        const el = els.find((e) => e.videoHeight > 0);
        return el ? { height: el.videoHeight, frames: el.getVideoPlaybackQuality().totalVideoFrames } : null;
    }, [other, kind]);
}

appTest('a screenshare on stage at full resolution for everyone, the sharer\'s camera still visible', app.wrap(async () => {
    const hash = 'config.p2p.enabled=false';
    const alice = await app.join('share', { name: 'Alice', hash });
    const bob = await app.join('share', { name: 'Bob', hash });
    const carol = await app.join('share', { name: 'Carol', hash });
    await Promise.all([bob.waitVideoFrom(alice, 15000), carol.waitVideoFrom(alice, 15000)]);
    await alice.clickToolbar('toolbar.accessibilityLabel.shareYourScreen', 'share screen');
    const aliceId = await alice.id();
    for (const p of [bob, carol]) await p.waitLargeVideo(alice, 'desktop', 15000);
    // What Alice sends of her screen: the largest encoded height of the desktop track.
    const sent = await alice.waitFor(async () => {
        const t = APP.store.getState()['features/base/tracks'].find((x) => x.local && x.videoType === 'desktop');
        return t?.jitsiTrack?.getTrack()?.getSettings()?.height || false;
    }, 'the local screenshare', 10000);
    const heights = {};
    const deadline = Date.now() + 20000;
    for (;;) {
        for (const p of [bob, carol]) heights[p.name] = (await received(p, aliceId, 'desktop'))?.height ?? 0;
        if (Object.values(heights).every((h) => h >= sent)) break;
        if (Date.now() > deadline) break;
        await sleep(1000);
    }
    console.log(`screenshare: captured at ${sent}p; received ${JSON.stringify(heights)}`);
    for (const [who, h] of Object.entries(heights)) assert.ok(h >= sent, `${who} gets the share at ${h}p of ${sent}p`);
    // Alice's camera still plays for both.
    for (const p of [bob, carol]) {
        const a = await received(p, aliceId, 'camera');
        await sleep(1000);
        const b = await received(p, aliceId, 'camera');
        assert.ok(a && b && b.frames > a.frames, `${p.name} still plays Alice's camera: ${JSON.stringify([a, b])}`);
    }
    await app.leaveAll();
}));
