// Dial-in numbers and PINs (issue 16, docs/dialin.md): with [dialin] numbers configured, the
// app's "Invite people" dialog shows the number and the meeting's PIN, the dial-in page
// (static/dialInInfo.html) shows them too, the PIN stays the same and maps back to the room
// (what a SIP gateway asks), and bad lookups get clear JSON errors.
import { useApp, appTest, assert } from './lib.mjs';

const NUMBER = '+49 30 1234567';
const app = useApp({
    name: 'app-dialin',
    config: `[dialin]\nnumbers = [ { country = "DE", number = "${NUMBER}" }, { country = "DE", number = "0800 7654321", toll_free = true } ]\n`,
});

const getJson = async (path) => {
    const r = await fetch(`${app.base}${path}`);
    return { status: r.status, body: await r.json() };
};

appTest('the invite dialog and the dial-in page show the number and the meeting PIN', app.wrap(async () => {
    const a = await app.join('Physics101', { name: 'Alice' });
    await a.clickToolbar('toolbar.accessibilityLabel.invite', 'invite people');
    const invite = await a.waitFor(() => {
        const s = APP.store.getState()['features/invite'];
        return s.conferenceID && s.numbers && { pin: s.conferenceID, numbers: s.numbers };
    }, 'dial-in numbers and PIN in the app', 20000);
    assert.equal(invite.numbers[0].formattedNumber, NUMBER);
    const pin = String(invite.pin);
    assert.match(pin, /^[1-9]\d{8}$/);
    // What the dialog shows.
    await a.waitFor((n) => document.body.innerText.includes(n), 'the number in the dialog', 10000, NUMBER);
    // The PIN is the room's, stable, and maps back (as a SIP gateway looks it up).
    const again = await getJson('/dialin/conference-code?conference=physics101@muc.meet.jitsi');
    assert.equal(String(again.body.id), pin);
    const back = await getJson(`/dialin/conference-code?id=${pin}`);
    assert.deepEqual([back.status, back.body.conference], [200, 'physics101@muc.meet.jitsi']);
    const other = await getJson('/dialin/conference-code?conference=chemistry@muc.meet.jitsi');
    assert.notEqual(String(other.body.id), pin);
    // Clear refusals.
    assert.equal((await getJson('/dialin/conference-code?conference=x@evil.example')).status, 400);
    assert.equal((await getJson('/dialin/conference-code?id=123')).status, 404);
    assert.equal((await getJson('/dialin/conference-code?id=abc')).status, 400);
    assert.equal((await getJson('/dialin/conference-code')).status, 400);
    // The app's dial-in page for the meeting.
    const page = await app.open('Info', `${app.base}/static/dialInInfo.html?room=physics101`);
    await page.waitFor((want) => want.every((w) => document.body.innerText.replace(/\s/g, '').includes(w.replace(/\s/g, ''))),
        'number and PIN on the dial-in page', 20000, [NUMBER, pin]);
    await app.leaveAll();
}));
