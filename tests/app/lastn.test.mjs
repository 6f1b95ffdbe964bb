// Last-N in the official web app (issue 19), as Jitsi's own last-N test runs it: with
// channelLastN 1 a receiver gets the video of the most recent speaker who has video, and the
// app shows the others as outside last-N; who is received follows speaking and muting.
import { useApp, appTest } from './lib.mjs';

const app = useApp({ name: 'app-lastn' });
// The app notices a stream that stopped from its stats, every pcStatsInterval (10 s by default);
// Jitsi's own tests use 1.5 s, so the indicator follows within seconds.
const stats = 'config.pcStatsInterval=1500';
const hash = `config.channelLastN=1&${stats}`;

appTest('channelLastN 1: the speaker with video is received, the others are outside last-N', app.wrap(async () => {
    const r = 'lastn';
    const p1 = await app.join(r, { name: 'P1', hash, startAudioMuted: true, startVideoMuted: true });
    await app.join(r, { name: 'P2', hash, startAudioMuted: true, startVideoMuted: true });
    const p3 = await app.join(r, { name: 'P3', hash });
    await p1.waitVideoFrom(p3, 10000);
    await p3.clickToolbar('toolbar.accessibilityLabel.mute', 'mute');
    const p4 = await app.join(r, { name: 'P4', hash });
    await p4.clickToolbar('toolbar.accessibilityLabel.mute', 'mute');
    await p3.clickToolbar('toolbar.accessibilityLabel.unmute', 'unmute');
    // P3 speaks: P1 gets P3, and P4 is outside last-N.
    await p1.waitDominantSpeaker(p3);
    await p1.waitVideoFrom(p3);
    await p1.waitNotInLastN(p4, true);
    // P3 stops the camera: P4 (the only other one with video) comes in.
    await p3.clickToolbar('toolbar.accessibilityLabel.videomute', 'stop camera');
    await p1.waitVideoFrom(p4);
    await p1.waitNotInLastN(p4, false);
    // P3's camera again: P3 back in, P4 out.
    await p3.clickToolbar('toolbar.accessibilityLabel.videounmute', 'start camera');
    await p1.waitVideoFrom(p3);
    await p1.waitNotInLastN(p4, true);
    await app.leaveAll();
}));

appTest('a screenshare on stage with channelLastN 2: the speaker is received, the others outside last-N', app.wrap(async () => {
    const r = 'lastnshare';
    const p1 = await app.join(r, { name: 'P1', hash: stats });
    const p2 = await app.join(r, { name: 'P2', hash: stats });
    const p3 = await app.join(r, { name: 'P3', hash: stats });
    await p3.clickToolbar('toolbar.accessibilityLabel.shareYourScreen', 'share screen');
    await p1.clickToolbar('toolbar.accessibilityLabel.mute', 'mute');
    await p3.clickToolbar('toolbar.accessibilityLabel.mute', 'mute');
    const p4 = await app.join(r, { name: 'P4', hash: `config.channelLastN=2&${stats}`, startAudioMuted: true });
    const p3id = await p3.id();
    // Everyone has P3's screenshare tile; P4 plays it on the large video.
    for (const p of [p1, p2, p4]) {
        await p.page.locator(`#participant_${p3id}-v1`).waitFor({ timeout: 10000 });
    }
    await p4.waitLargeVideo(p3, 'desktop');
    // P2 speaks: P4 (lastN 2 = the screenshare and one camera) gets P2, P1 is outside.
    await p4.waitDominantSpeaker(p2);
    await p4.waitNotInLastN(p1, true);
    await p4.waitVideoFrom(p2);
    // P1 speaks instead of P2.
    await p1.clickToolbar('toolbar.accessibilityLabel.unmute', 'unmute');
    await p2.clickToolbar('toolbar.accessibilityLabel.mute', 'mute');
    // Chromium's fake microphone beeps once a second: the switch from P2 takes a few of
    // them, more when four browsers share two cores.
    await p4.waitDominantSpeaker(p1, 20000);
    await p4.waitNotInLastN(p2, true);
    await p4.waitVideoFrom(p1);
    await app.leaveAll();
}));
