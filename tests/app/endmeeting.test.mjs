// "End meeting for all" in the official web app (issue 11): the moderator's hang-up menu ends
// the meeting; everyone sees why they left. A participant cannot end it.
import { useApp, appTest, assert, label } from './lib.mjs';

const app = useApp({ name: 'app-endmeeting' });

appTest('a moderator ends the meeting for everyone', app.wrap(async () => {
    const r = 'endall';
    const a = await app.join(r, { name: 'Alice' });
    await a.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'moderator');
    const b = await app.join(r, { name: 'Bob' });
    const c = await app.join(r, { name: 'Carol' });
    await b.waitVideoFrom(a, 10000);
    // Bob (a participant; his hang-up button just leaves) tries through the library: refused.
    await b.eval(() => APP.conference._room.end());
    await b.page.waitForTimeout(1000);
    assert.equal(await c.eval(() => APP.conference.isJoined()), true, 'the meeting goes on');
    await a.page.locator(`[aria-label="${label('toolbar.accessibilityLabel.hangup')}"]`).first().click();
    await a.page.getByRole('button', { name: label('toolbar.endConference') }).click({ timeout: 5000 });
    for (const p of [b, c]) {
        await p.page.locator('[data-testid="dialog.leaveReason"]').waitFor({ timeout: 10000 });
        await p.waitFor(() => !APP.conference.isJoined(), 'left the meeting', 10000);
    }
    await app.leaveAll();
}));
