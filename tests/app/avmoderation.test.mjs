// Audio moderation in the official web app (issue 11): the moderator turns it on from the
// participants pane; a participant cannot unmute (the app says so); the moderator asks it to
// unmute and it can; someone not approved whose library unmutes anyway is still not heard:
// the focus refuses the unmute and the bridge drops the audio.
import { useApp, appTest, assert, sleep } from './lib.mjs';

const app = useApp({ name: 'app-avmoderation' });

/** The highest audio level `listener` measures from `speaker` over `ms`. */
async function loudest(listener, speaker, ms) {
    const id = await speaker.id();
    let max = 0;
    for (const end = Date.now() + ms; Date.now() < end;) {
        max = Math.max(max, await listener.eval(async (pid) => {
            // The receiver of the speaker's audio track: its inbound-rtp audioLevel.
            const t = APP.store.getState()['features/base/tracks']
                .find((x) => !x.local && x.participantId === pid && x.mediaType === 'audio');
            const mst = t?.jitsiTrack?.getTrack();
            const pc = APP.conference._room.getActivePeerConnection()?.peerconnection;
            const rx = mst && pc?.getReceivers().find((r) => r.track.id === mst.id);
            if (!rx) return 0;
            let level = 0;
            (await rx.getStats()).forEach((s) => { if (s.type === 'inbound-rtp') level = s.audioLevel ?? 0; });
            return level;
        }, id));
        await sleep(200);
    }
    return max;
}

const audioMuted = () => APP.store.getState()['features/base/tracks'].some((t) => t.local && t.mediaType === 'audio' && t.muted);

appTest('moderated audio: muted, refused, asked to unmute, heard; the unapproved stay unheard', app.wrap(async () => {
    const r = 'avmod';
    const hash = 'config.p2p.enabled=false';
    const a = await app.join(r, { name: 'Alice', hash });
    await a.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'moderator');
    const b = await app.join(r, { name: 'Bob', hash });
    const c = await app.join(r, { name: 'Carol', hash });
    await a.waitVideoFrom(b, 10000);
    assert.ok(await loudest(a, b, 3000) > 0.1, 'Bob is heard before');
    await a.openParticipantsPane();
    await a.page.locator('#participants-pane-context-menu').click({ timeout: 5000 });
    await a.page.locator('#participants-pane-context-menu-start-audio-moderation').click({ timeout: 5000 });
    await a.page.keyboard.press('Escape');
    // Bob and Carol are muted by it.
    for (const p of [b, c]) await p.waitFor(audioMuted, `${p.name} muted`, 5000);
    await a.waitMuteIcon(b, 'audio', true);
    // Bob tries the button: the app says a moderator must allow it.
    await b.clickToolbar('toolbar.accessibilityLabel.unmute', 'unmute');
    await b.page.locator('[data-testid="notify.moderationInEffectTitle"]').waitFor({ timeout: 5000 });
    assert.equal(await b.eval(audioMuted), true);
    // Alice asks Bob to unmute (participants pane); Bob unmutes from the notice and is heard.
    const bid = await b.id();
    await a.clickParticipantEntry(bid, `[data-testid="unmute-audio-${bid}"]`);
    await b.page.locator('[data-testid="notify.hostAskedUnmute"]').waitFor({ timeout: 5000 });
    await b.page.locator('[data-testid="notify.unmute"]').click({ timeout: 5000 });
    await a.waitMuteIcon(b, 'audio', false);
    assert.ok(await loudest(a, b, 4000) > 0.1, 'Bob is heard after the approval');
    // Carol's library unmutes without approval: the focus refuses, the bridge drops her audio.
    await c.eval(() => APP.conference._room.getLocalAudioTrack()?.unmute());
    assert.ok(await loudest(a, c, 3000) < 0.05, 'Carol is not heard');
    await app.leaveAll();
}));
