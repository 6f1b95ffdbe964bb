// Visitors (issue 17, docs/visitors.md): an audience that watches the meeting without being in
// it. A participant of the official web app who asks to be a visitor (config.preferVisitor, as
// a link for an audience would set it) is sent by the focus to the app's visitor node, which
// meetd serves itself (v1.meet.jitsi, the rooms under muc.v1.meet.jitsi): the app shows its
// visitor mode, plays the speakers' video and audio from the bridge, and the participants do
// not see the visitor in their list but see the count of visitors (which also moves their
// two-person call from P2P to the bridge). A visitor who raises her hand is admitted by the
// moderator and comes back as a participant. A visitor's chat reaches everyone, marked as a
// viewer's. A moderator moves a participant to the viewers
// ("Move to viewer"), and that participant's app comes back in viewer mode.
import { useApp, appTest, assert } from './lib.mjs';

const app = useApp({ name: 'app-visitors', config: '\n[visitors]\nenabled = true\n' });

const visitorsState = (p) => p.eval(() => {
    const v = APP.store.getState()['features/visitors'];
    return { iAmVisitor: v.iAmVisitor, count: v.count };
});
const remotes = (p) => p.eval(() => [...APP.store.getState()['features/base/participants'].remote.values()].map((x) => x.name));

appTest('a visitor watches the meeting: visitor mode in the app, media from the bridge, a count for the participants', app.wrap(async () => {
    const r = 'audience';
    const a = await app.join(r, { name: 'Alice' });
    const b = await app.join(r, { name: 'Bob' });
    await a.waitVideoFrom(b, 20000, { audio: true });
    const v = await app.join(r, { name: 'Vera', hash: 'config.preferVisitor=true' });
    await v.waitFor(() => APP.store.getState()['features/visitors'].iAmVisitor === true, 'visitor mode', 15000);
    assert.match(await v.eval(() => APP.connection?.xmpp?.connection?.service ?? ''), /vnode=v1/, 'the visitor connection names the vnode');
    // The visitor gets both speakers from the bridge.
    await v.waitVideoFrom(a, 30000, { audio: true });
    await v.waitVideoFrom(b, 30000, { audio: true });
    // The participants see a count, not a participant; their call stays up (P2P gives way).
    for (const p of [a, b]) {
        await p.waitFor(() => APP.store.getState()['features/visitors'].count === 1, 'one visitor counted', 15000);
        assert.ok(!(await remotes(p)).includes('Vera'), `${p.name} does not list the visitor`);
    }
    await a.doc.locator('#visitorsCountLabel').first().waitFor({ timeout: 10000 });
    await a.waitVideoFrom(b, 20000, { audio: true });
    await b.waitVideoFrom(a, 20000, { audio: true });
    assert.equal(await a.eval(() => APP.conference._room?.isP2PActive?.()), false, 'no P2P while there are visitors');
    console.log(`# visitors: Vera ${JSON.stringify(await visitorsState(v))}; Alice ${JSON.stringify(await visitorsState(a))}, remotes ${JSON.stringify(await remotes(a))}`);
    // A second visitor: the count follows.
    const w = await app.join(r, { name: 'Walt', hash: 'config.preferVisitor=true' });
    await w.waitFor(() => APP.store.getState()['features/visitors'].iAmVisitor === true, 'visitor mode', 15000);
    await w.waitVideoFrom(a, 30000, { audio: true });
    await a.waitFor(() => APP.store.getState()['features/visitors'].count === 2, 'two visitors counted', 15000);
    // Walt leaves: the count goes back to 1.
    await w.close();
    await a.waitFor(() => APP.store.getState()['features/visitors'].count === 1, 'one visitor counted again', 15000);

    // Vera closes the app's viewer dialog ("If you wish to speak, please raise your hand")
    // and raises her hand: Alice, the moderator, gets the request and admits her; Vera comes
    // back as a participant.
    await v.doc.locator('#modal-dialog-ok-button').click({ timeout: 10000 });
    // Vera chats: Alice and Bob get her message as a viewer's (her name, marked a viewer).
    await v.clickToolbar('toolbar.accessibilityLabel.openChat', 'chat');
    await v.page.locator('#chat-input-messagebox').fill('Hello from the audience');
    await v.page.keyboard.press('Enter');
    for (const p of [a, b]) {
        const m = await p.waitFor(() => APP.store.getState()['features/chat'].messages
            .find((x) => x.message === 'Hello from the audience'), 'the viewer\'s chat message', 10000);
        assert.equal(m.displayName, 'Vera');
        assert.equal(m.isFromVisitor, true, JSON.stringify(m));
    }
    await v.clickToolbar('toolbar.accessibilityLabel.closeChat', 'chat', 10000).catch(() => v.page.keyboard.press('Escape'));
    await v.clickToolbar('toolbar.accessibilityLabel.raiseHand', 'raise hand');
    await a.waitFor(() => APP.store.getState()['features/visitors'].promotionRequests.length === 1, 'Vera\'s request', 15000);
    await a.doc.getByRole('button', { name: 'Admit', exact: true }).first().click({ timeout: 10000 });
    await v.waitFor(() => APP.store.getState()['features/visitors'].iAmVisitor === false && APP.conference.isJoined(), 'Vera promoted and in the meeting', 30000);
    await a.waitFor(() => [...APP.store.getState()['features/base/participants'].remote.values()].some((x) => x.name === 'Vera'), 'Vera among the participants', 20000);
    await v.waitVideoFrom(a, 30000, { audio: true });
    await a.waitFor(() => APP.store.getState()['features/visitors'].count === 0, 'no visitors counted', 15000);
    console.log(`# visitors: Vera admitted; Alice's participants ${JSON.stringify(await remotes(a))}`);

    // Alice moves Bob to the viewers ("Move to viewer" in his menu): his app comes back in
    // viewer mode, still plays Alice, and the others count him instead of listing him.
    await a.participantAction(b, (id) => `#demotelink_${id}`, true);
    await b.waitFor(() => APP.store.getState()['features/visitors'].iAmVisitor === true && APP.conference.isJoined(), 'Bob a viewer', 30000);
    await b.waitVideoFrom(a, 30000, { audio: true });
    await a.waitFor(() => APP.store.getState()['features/visitors'].count === 1, 'Bob counted as a viewer', 15000);
    assert.ok(!(await remotes(a)).includes('Bob'), 'Bob is not among Alice\'s participants');
    assert.match(app.server.logTail(400), /moving a participant to the viewers/);
    console.log(`# visitors: Bob moved to the viewers; Alice's participants ${JSON.stringify(await remotes(a))}`);
    await app.leaveAll();
}));

// As Jicofo: visitors and a lobby do not go together. In a room with a lobby, someone who asks
// to be a viewer is not sent to the visitor node: they knock like anyone, and once admitted
// are a participant.
appTest('a room with a lobby sends nobody to the viewers: they knock and join as participants', app.wrap(async () => {
    const r = 'guarded';
    const a = await app.join(r, { name: 'Alice' });
    await a.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'moderator');
    await a.setLobby(true);
    const v = await app.join(r, { name: 'Vera', hash: 'config.preferVisitor=true', waitJoined: false });
    await v.knock();
    await a.admit('Vera');
    await v.waitJoined();
    assert.equal(await v.eval(() => APP.store.getState()['features/visitors'].iAmVisitor), false, 'not a viewer');
    await a.waitFor(() => [...APP.store.getState()['features/base/participants'].remote.values()].some((x) => x.name === 'Vera'), 'Vera a participant', 15000);
    await v.waitVideoFrom(a, 30000, { audio: true });
    console.log('# visitors: with a lobby, a would-be viewer knocked and joined as a participant');
    await app.leaveAll();
}));
