// Wait for host in the official web app (issue 11): with sign-in and a guest domain, guests
// wait until a signed-in user has started the room; the host signs in from the waiting
// screen, becomes moderator, and the waiting guests come in.
import { useApp, appTest, assert } from './lib.mjs';

const app = useApp({
    name: 'app-waitforhost',
    config: '[auth]\nmode = "internal"\nguest_domain = "guest.meet.jitsi"\nwait_for_host = true\n',
});

const moderator = () => APP.store.getState()['features/base/participants'].local.role === 'moderator';

appTest('guests wait until the host signs in', app.wrap(async () => {
    await app.server.userAdd('teacher@meet.jitsi', 'correct horse');
    const r = 'lecture';
    const b = await app.join(r, { name: 'Bob', waitJoined: false });
    await b.waitFor(() => APP.store.getState()['features/lobby'].knocking || APP.store.getState()['features/lobby'].lobbyWaitingForHost,
        'Bob waiting', 15000);
    assert.equal(await b.eval(() => APP.conference.isJoined() ?? false), false);
    // The host opens the room as a guest too, and signs in from the waiting screen.
    const a = await app.join(r, { name: 'Alice', waitJoined: false });
    await a.page.locator('[data-testid="lobby.loginButton"]').click({ timeout: 15000 });
    await a.page.locator('#login-dialog-username').fill('teacher');
    await a.page.locator('#login-dialog-password').fill('correct horse');
    await a.page.locator('#modal-dialog-ok-button').click();
    await a.waitJoined();
    await a.waitFor(moderator, 'Alice moderator', 10000);
    // Bob comes in by himself, as a participant.
    await b.waitJoined(15000);
    assert.equal(await b.eval(moderator), false);
    await Promise.all([a.waitVideoFrom(b, 10000), b.waitVideoFrom(a, 10000)]);
    await app.leaveAll();
}));
