// Breakout rooms in the official web app (issue 11): a moderator adds a room in the
// participants pane and sends someone there, another joins by themselves; media moves with
// them; leaving a breakout room returns to the main room; closing a room sends its people back.
import { useApp, appTest, assert, label } from './lib.mjs';

const app = useApp({ name: 'app-breakout' });

const inBreakout = () => APP.store.getState()['features/base/conference'].conference?.getBreakoutRooms()?.isBreakoutRoom();
const rooms = (p) => p.eval(() => Object.values(APP.store.getState()['features/breakout-rooms'].rooms ?? {})
    .map((r) => ({ id: r.id, jid: r.jid, name: r.name, main: Boolean(r.isMainRoom), people: Object.values(r.participants ?? {}).map((x) => x.displayName) })));

appTest('add a room, move someone, join and leave by oneself, close the room', app.wrap(async () => {
    const r = 'breakout';
    const a = await app.join(r, { name: 'Alice' });
    await a.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'moderator');
    const b = await app.join(r, { name: 'Bob' });
    const c = await app.join(r, { name: 'Carol' });
    await a.openParticipantsPane();
    await a.page.getByRole('button', { name: label('breakoutRooms.actions.add') }).click({ timeout: 10000 });
    const name = label('breakoutRooms.defaultName', { index: 1 });
    await a.waitFor((n) => Object.values(APP.store.getState()['features/breakout-rooms'].rooms ?? {}).some((x) => x.name === n),
        'the breakout room', 10000, name);
    const room = (await rooms(a)).find((x) => x.name === name);
    // Alice sends Bob there from his entry's menu.
    const bid = await b.id();
    await a.openMoreOptions(bid);
    await a.page.locator(`[role="button"][aria-label="${name}"]`).filter({ visible: true }).first().click({ timeout: 5000 });
    await b.waitFor(inBreakout, 'Bob in the breakout room', 15000);
    await b.waitJoined();
    // Carol joins it by herself.
    await c.openParticipantsPane();
    await c.page.locator(`.breakout-room-container[data-testid="${room.id}"]`).hover();
    await c.page.locator(`[data-testid="join-room-${room.id}"]`).click({ timeout: 5000 });
    await c.waitFor(inBreakout, 'Carol in the breakout room', 15000);
    await c.waitJoined();
    await Promise.all([b.waitVideoFrom(c, 10000), c.waitVideoFrom(b, 10000)]);
    // Alice sees who is where.
    await a.waitFor((rid) => {
        const x = APP.store.getState()['features/breakout-rooms'].rooms[rid];
        return x && Object.keys(x.participants ?? {}).length === 2;
    }, 'two people in the breakout room', 10000, room.id);
    assert.deepEqual((await a.remotes()).length, 0, 'nobody else in the main room');
    // Bob leaves the breakout room (participants pane): back with Alice.
    await b.openParticipantsPane();
    await b.page.getByRole('button', { name: label('breakoutRooms.actions.leaveBreakoutRoom') }).click({ timeout: 10000 });
    await b.waitFor(() => !APP.store.getState()['features/base/conference'].conference?.getBreakoutRooms()?.isBreakoutRoom()
        && APP.conference.isJoined(), 'Bob back in the main room', 15000);
    await Promise.all([a.waitVideoFrom(b, 10000), b.waitVideoFrom(a, 10000)]);
    // Alice closes the room: Carol comes back too.
    await a.page.locator(`.breakout-room-container[data-testid="${room.id}"]`).hover();
    await a.page.locator(`.breakout-room-container[data-testid="${room.id}"] button[title="${label('breakoutRooms.actions.more')}"]`).click({ timeout: 5000 });
    await a.page.locator(`[id="close-room-${room.id}"]`).click({ timeout: 5000 });
    await c.waitFor(() => !APP.store.getState()['features/base/conference'].conference?.getBreakoutRooms()?.isBreakoutRoom()
        && APP.conference.isJoined(), 'Carol back in the main room', 20000);
    await Promise.all([a.waitVideoFrom(c, 10000), c.waitVideoFrom(a, 10000)]);
    await app.leaveAll();
}), { timeout: 240000 });
