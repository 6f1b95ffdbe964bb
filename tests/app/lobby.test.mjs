// The lobby in the official web app (issue 11): a moderator turns it on in the security dialog,
// joiners knock and wait, moderators admit or reject from the participants pane, the room
// password lets a joiner past, lobby chat, and turning it off lets the waiting in.
import { useApp, appTest, assert, sleep } from './lib.mjs';

const app = useApp({ name: 'app-lobby' });

async function moderator(room) {
    const a = await app.join(room, { name: 'Alice' });
    await a.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'moderator');
    await a.setLobby(true);
    return a;
}

appTest('knock and be admitted; knock and be rejected', app.wrap(async () => {
    const r = 'lobby1';
    const a = await moderator(r);
    const b = await app.join(r, { name: 'Bob', waitJoined: false });
    await b.knock();
    await a.admit('Bob');
    await b.waitJoined();
    await Promise.all([a.waitVideoFrom(b, 10000), b.waitVideoFrom(a, 10000)]);
    const c = await app.join(r, { name: 'Carol', waitJoined: false });
    await c.knock();
    await a.reject('Carol');
    await c.page.locator('[data-testid="lobby.joinRejectedTitle"]').waitFor({ timeout: 10000 });
    assert.equal(await c.eval(() => APP.conference.isJoined() ?? false), false);
    // Bob, already in, sees no Carol.
    assert.deepEqual((await b.remotes()).map((p) => p.name), ['Alice']);
    await app.leaveAll();
}));

appTest('the room password lets a joiner past the lobby', app.wrap(async () => {
    const r = 'lobby2';
    const a = await moderator(r);
    await a.addPassword('9876');
    const b = await app.join(r, { name: 'Bob', waitJoined: false });
    await b.page.locator('[data-testid="lobby.enterPasswordButton"]').click({ timeout: 15000 });
    await b.page.locator('[data-testid="lobby.password"]').fill('9876');
    await b.page.locator('[data-testid="lobby.passwordJoinButton"]').click();
    await b.waitJoined();
    await b.waitVideoFrom(a, 10000);
    await app.leaveAll();
}));

appTest('lobby chat between a moderator and a knocker', app.wrap(async () => {
    const r = 'lobby3';
    const a = await moderator(r);
    const b = await app.join(r, { name: 'Bob', waitJoined: false });
    await b.knock();
    const id = await a.lobbyEntry('Bob');
    await a.page.locator(`#participant-item-${id}`).hover();
    const more = a.page.locator(`button[title^="More moderation options"]`);
    if (await more.count()) await more.first().click();
    await a.page.locator(`[data-testid="lobby-chat-${id}"]`).click({ timeout: 5000 });
    await a.page.locator('#chat-input-messagebox').fill('Who are you?');
    await a.page.keyboard.press('Enter');
    await b.page.locator('.lobby-chat-container .chatmessage', { hasText: 'Who are you?' }).waitFor({ timeout: 10000 });
    await b.page.locator('#chat-input-messagebox').fill('Bob from accounting');
    await b.page.keyboard.press('Enter');
    await a.page.locator('.chatmessage', { hasText: 'Bob from accounting' }).waitFor({ timeout: 10000 });
    await app.leaveAll();
}));

appTest('turning the lobby off lets the waiting in', app.wrap(async () => {
    const r = 'lobby4';
    const a = await moderator(r);
    const b = await app.join(r, { name: 'Bob', waitJoined: false });
    await b.knock();
    await a.lobbyEntry('Bob');
    await a.setLobby(false);
    await b.waitJoined(15000);
    await Promise.all([a.waitVideoFrom(b, 10000), b.waitVideoFrom(a, 10000)]);
    // Later joiners walk straight in.
    const c = await app.join(r, { name: 'Carol' });
    await c.waitVideoFrom(a, 10000);
    await sleep(10);
    await app.leaveAll();
}));
