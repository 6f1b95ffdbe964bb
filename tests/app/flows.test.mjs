// The everyday flows of a call in the official web app (issue 19): muting before someone joins,
// leaving and coming back, display names, a password set and removed, kicks. Each other
// person's stream must play within 5 s of the event, as a person would expect.
//
// APP_P2P=0 runs them on the bridge only (config.p2p.enabled=false, as Jitsi's own torture tests
// do); the default is the app's own default, P2P for two people.
import { useApp, appTest, assert, sleep } from './lib.mjs';

const P2P = process.env.APP_P2P !== '0';
const app = useApp({ name: `app-flows-${P2P ? 'p2p' : 'jvb'}` });
const hash = P2P ? '' : 'config.p2p.enabled=false';
let n = 0;
const room = () => `flow${P2P ? 'p' : 'j'}${++n}`;
const join = (r, o = {}) => app.join(r, { hash, ...o });
const rejoin = (p, r, o = {}) => p.rejoin(r, { hash, ...o });

/** Both directions play within `ms`. */
async function mediaBothWays(a, b, ms = 5000) {
    await Promise.all([a.waitVideoFrom(b, ms), b.waitVideoFrom(a, ms)]);
}

appTest('stop video, start it; stopped before the other joins', app.wrap(async () => {
    const r = room();
    const a = await join(r, { name: 'Alice' });
    const b = await join(r, { name: 'Bob' });
    await mediaBothWays(a, b, 10000);

    await a.clickToolbar('toolbar.accessibilityLabel.videomute', 'stop camera');
    await b.waitMuteIcon(a, 'video', true);
    await a.clickToolbar('toolbar.accessibilityLabel.videounmute', 'start camera');
    await b.waitMuteIcon(a, 'video', false);
    await b.waitVideoFrom(a);

    // Bob leaves, Alice stops her camera, Bob comes back: he sees her muted, then her video.
    await b.hangUp();
    await a.clickToolbar('toolbar.accessibilityLabel.videomute', 'stop camera');
    await rejoin(b, r);
    await a.waitVideoFrom(b);
    await b.waitMuteIcon(a, 'video', true);
    await a.clickToolbar('toolbar.accessibilityLabel.videounmute', 'start camera');
    await b.waitVideoFrom(a);
    await app.leaveAll();
}));

appTest('audio muted before the other joins', app.wrap(async () => {
    const r = room();
    const a = await join(r, { name: 'Alice' });
    await a.clickToolbar('toolbar.accessibilityLabel.mute', 'mute');
    const b = await join(r, { name: 'Bob' });
    await mediaBothWays(a, b);
    await b.waitMuteIcon(a, 'audio', true);
    await a.clickToolbar('toolbar.accessibilityLabel.unmute', 'unmute');
    await b.waitMuteIcon(a, 'audio', false);
    await app.leaveAll();
}));

appTest('muted on the prejoin screen, then the other joins', app.wrap(async () => {
    const r = room();
    const a = await join(r, { name: 'Alice', startAudioMuted: true, startVideoMuted: true });
    const b = await join(r, { name: 'Bob' });
    await a.waitVideoFrom(b);
    await b.waitMuteIcon(a, 'video', true);
    await b.waitMuteIcon(a, 'audio', true);
    await a.clickToolbar('toolbar.accessibilityLabel.videounmute', 'start camera');
    await b.waitVideoFrom(a);
    await app.leaveAll();
}));

appTest('leave and join again, twice', app.wrap(async () => {
    const r = room();
    const a = await join(r, { name: 'Alice' });
    const b = await join(r, { name: 'Bob' });
    await mediaBothWays(a, b, 10000);
    for (let i = 0; i < 2; i++) {
        await rejoin(b, r);
        await mediaBothWays(a, b);
    }
    // The first one (the moderator) leaves and comes back too.
    await rejoin(a, r);
    await mediaBothWays(a, b);
    await app.leaveAll();
}));

appTest('display name changed, then leave and come back', app.wrap(async () => {
    const r = room();
    const a = await join(r, { name: 'Alice' });
    const b = await join(r, { name: 'Bob' });
    await mediaBothWays(a, b, 10000);
    const bid = await b.id();
    await b.setDisplayName('Robert');
    await a.waitFor((id) => APP.store.getState()['features/base/participants'].remote.get(id)?.name === 'Robert',
        'the new name', 5000, bid);
    // Back with the name the app kept (not typed again on the prejoin screen).
    await rejoin(b, r, { name: null });
    await mediaBothWays(a, b);
    assert.equal(await a.remoteName(await b.id()), 'Robert');
    await app.leaveAll();
}));

appTest('password set, wrong and right password, removed, then someone joins', app.wrap(async () => {
    const r = room();
    const a = await join(r, { name: 'Alice' });
    await a.addPassword('4321');
    const b = await join(r, { name: 'Bob', waitJoined: false });
    await b.submitRoomPassword('43211234');
    await sleep(500);
    await b.submitRoomPassword('4321');
    await b.waitJoined();
    await mediaBothWays(a, b, 10000);
    await b.openSecurityDialog();
    await b.waitDialogLocked(true);
    await b.closeDialog();

    await b.hangUp();
    await a.removePassword();
    const c = await join(r, { name: 'Carol' });
    await mediaBothWays(a, c);
    await app.leaveAll();
}));

appTest('moderator kicks; a non-moderator\'s kick is refused and media stays', app.wrap(async () => {
    const r = room();
    const a = await join(r, { name: 'Alice' });
    const b = await join(r, { name: 'Bob' });
    await mediaBothWays(a, b, 10000);
    assert.equal(await a.eval(() => APP.store.getState()['features/base/participants'].local.role), 'moderator');

    // Bob (not a moderator) tries to kick Alice through the library; the room refuses it.
    await b.eval((id) => APP.conference._room.kickParticipant(id, 'bye'), await a.id());
    await sleep(1000);
    assert.equal((await b.remotes()).length, 1, 'Alice is still there for Bob');
    await mediaBothWays(a, b);

    // Alice kicks Bob from his thumbnail's menu; he sees why he left.
    await a.participantAction(b, (id) => `#ejectlink_${id}`, true);
    await a.waitFor(() => APP.conference.listMembers().length === 0, 'Bob gone', 5000);
    await b.page.locator('[data-testid="dialog.leaveReason"]').waitFor({ timeout: 5000 });

    const c = await join(r, { name: 'Carol' });
    await mediaBothWays(a, c);
    await app.leaveAll();
}));
