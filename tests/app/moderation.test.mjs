// A moderator's tools in the official web app (issue 11): mute everyone (audio), stop
// everyone's video, grant moderator rights; a participant's own attempts are refused.
import { useApp, appTest, assert, label, sleep } from './lib.mjs';

const app = useApp({ name: 'app-moderation' });

const localMuted = (kind) => APP.store.getState()['features/base/tracks'].some((t) => t.local && t.mediaType === kind && t.muted);
const role = () => APP.store.getState()['features/base/participants'].local.role;

appTest('mute everyone, stop everyone\'s video, grant moderator', app.wrap(async () => {
    const r = 'moderation';
    const hash = 'config.p2p.enabled=false';
    const a = await app.join(r, { name: 'Alice', hash });
    await a.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'moderator');
    const b = await app.join(r, { name: 'Bob', hash });
    const c = await app.join(r, { name: 'Carol', hash });
    await a.waitVideoFrom(b, 10000);
    // Bob (a participant) cannot mute Carol: the focus refuses, Carol stays unmuted.
    await b.eval((id) => APP.conference._room.muteParticipant(id, 'audio'), await c.id());
    await sleep(1000);
    assert.equal(await c.eval(localMuted, 'audio'), false);
    // Alice: "Mute all" in the participants pane.
    await a.openParticipantsPane();
    await a.page.getByRole('button', { name: label('participantsPane.actions.muteAll') }).click({ timeout: 5000 });
    await a.page.locator('#modal-dialog-ok-button').click({ timeout: 5000 });
    for (const p of [b, c]) await p.waitFor(localMuted, `${p.name} muted`, 5000, 'audio');
    assert.equal(await a.eval(localMuted, 'audio'), false, 'the moderator keeps her microphone');
    await a.waitMuteIcon(b, 'audio', true);
    // Alice: stop everyone's video (the pane's moderation menu).
    await a.page.locator('#participants-pane-context-menu').click({ timeout: 5000 });
    await a.page.locator('#participants-pane-context-menu-stop-video').click({ timeout: 5000 });
    await a.page.locator('#modal-dialog-ok-button').click({ timeout: 5000 });
    for (const p of [b, c]) await p.waitFor(localMuted, `${p.name}'s video stopped`, 5000, 'video');
    await a.waitMuteIcon(c, 'video', true);
    // They may turn things back on (no moderation): Bob starts his camera and is seen.
    await b.clickToolbar('toolbar.accessibilityLabel.videounmute', 'start camera');
    await a.waitVideoFrom(b);
    // Alice makes Bob a moderator from his menu in the participants pane.
    await a.participantAction(b, '.grantmoderatorlink', true);
    await b.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'Bob moderator', 5000);
    assert.equal(await c.eval(role), 'participant');
    await app.leaveAll();
}));
