// The everyday features that ride on presence, room messages and endpoint messages, in the
// official web app (issue 11): chat, private chat, raise hand, reactions, follow-me, the room
// subject.
import { useApp, appTest, assert, label } from './lib.mjs';

const app = useApp({ name: 'app-features' });

appTest('chat, private chat, raised hand, reactions, follow-me, subject', app.wrap(async () => {
    const r = 'features';
    // Alice (the first, a moderator) sets a subject, as the app does from its config.
    const a = await app.join(r, { name: 'Alice', hash: 'config.subject=%22Weekly%20sync%22' });
    await a.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'moderator');
    const b = await app.join(r, { name: 'Bob' });
    const c = await app.join(r, { name: 'Carol' });
    await b.waitFor(() => APP.store.getState()['features/base/conference'].subject === 'Weekly sync', 'the subject', 10000);
    // Group chat.
    await a.clickToolbar('toolbar.accessibilityLabel.openChat', 'chat');
    await a.page.locator('#chat-input-messagebox').fill('Hello everyone');
    await a.page.keyboard.press('Enter');
    await b.waitFor(() => APP.store.getState()['features/chat'].messages.some((m) => m.message === 'Hello everyone'), 'the chat message', 10000);
    // Private chat from Bob to Alice: Carol does not get it.
    await b.clickToolbar('toolbar.accessibilityLabel.openChat', 'chat');
    await b.page.locator('#select-chat-recipient').selectOption({ label: 'Alice' });
    await b.page.locator('#chat-input-messagebox').fill('Just for you');
    await b.page.keyboard.press('Enter');
    await a.waitFor(() => APP.store.getState()['features/chat'].messages.some((m) => m.message === 'Just for you' && m.privateMessage),
        'the private message', 10000);
    await c.page.waitForTimeout(1000);
    assert.equal(await c.eval(() => APP.store.getState()['features/chat'].messages.some((m) => m.message === 'Just for you')), false);
    // Carol raises her hand; Alice sees it.
    // (The toolbar may still be settling from the chat panel: the click is checked in Carol's
    // own app, and made once more if it did not land.)
    const handUp = () => APP.store.getState()['features/base/participants'].local.raisedHandTimestamp > 0;
    await c.clickToolbar('toolbar.accessibilityLabel.raiseHand', 'raise hand');
    if (!(await c.waitFor(handUp, 'Carol\'s hand up', 2000).then(() => true, () => false))) {
        await c.clickToolbar('toolbar.accessibilityLabel.raiseHand', 'raise hand');
        await c.waitFor(handUp, 'Carol\'s hand up', 5000);
    }
    const cid = await c.id();
    await a.waitFor((id) => APP.store.getState()['features/base/participants'].remote.get(id)?.raisedHandTimestamp > 0,
        'Carol\'s raised hand', 5000, cid);
    // Bob claps (the app's keyboard shortcut, Alt+C); the others see it fly. Reactions are
    // endpoint messages on the bridge channel: the SCTP data channel here.
    for (const p of [a, b, c]) {
        assert.equal(await p.eval(() => APP.conference._room?.rtc?._channel?.mode), 'datachannel', `${p.name}'s bridge channel`);
    }
    await b.clickToolbar('toolbar.accessibilityLabel.closeChat', 'close chat');
    await b.page.locator('body').press('Alt+c');
    await a.page.locator('.reaction-emoji').first().waitFor({ timeout: 5000 });
    // Follow-me: Alice turns it on and switches to tile view; Bob follows.
    await a.clickToolbar('toolbar.accessibilityLabel.Settings', 'settings');
    await a.page.locator('.settings-dialog').getByText(label('settings.moderator'), { exact: true }).first().click({ timeout: 5000 });
    const box = a.page.locator('input[name="follow-me"]');
    if (!(await box.isChecked())) await box.locator('xpath=ancestor::div[1]').click();
    await a.page.locator('#modal-dialog-ok-button').click({ timeout: 5000 });
    // Alice's button says what her screen shows (tile view may be on by itself, by layout).
    const before = await a.eval(() => Boolean(document.querySelector('.tile-view')));
    await a.clickToolbar(before ? 'toolbar.accessibilityLabel.exitTileView' : 'toolbar.accessibilityLabel.enterTileView', 'tile view');
    await b.waitFor((want) => APP.store.getState()['features/video-layout'].tileViewEnabled === want, 'Bob following', 5000, !before);
    await app.leaveAll();
}));
