// Which layer each receiver gets (issue 14), in the official web app: the person on stage
// comes in at a high resolution, a thumbnail at the low layer, not the whole stream. The app
// sends AV1 (its first choice on Chrome) as simulcast here (config.js).
import { useApp, appTest, assert } from './lib.mjs';

const app = useApp({ name: 'app-layers' });

appTest('the one on stage at a high layer, a thumbnail at the low one (AV1 simulcast)', app.wrap(async () => {
    const hash = 'config.p2p.enabled=false';
    const a = await app.join('layers', { name: 'Alice', hash });
    const b = await app.join('layers', { name: 'Bob', hash });
    const c = await app.join('layers', { name: 'Carol', hash });
    await Promise.all([a.waitVideoFrom(b, 15000), a.waitVideoFrom(c, 15000)]);
    // Alice leaves tile view and pins Bob: Bob on stage, Carol in the filmstrip.
    const bob = await b.id();
    await a.eval((id) => {
        APP.store.dispatch({ type: 'SET_TILE_VIEW', enabled: false });
        APP.store.dispatch({ type: 'PIN_PARTICIPANT', participant: { id, local: false } });
    }, bob);
    // Who is on stage is the app's choice (the pin, or the speaker): judge by its large video.
    const ids = { [await b.id()]: b, [await c.id()]: c };
    let seen = [];
    const deadline = Date.now() + 30000;
    for (;;) {
        const onStage = await a.eval(() => APP.store.getState()['features/large-video'].participantId);
        const stage = ids[onStage] ?? b;
        const thumb = stage === b ? c : b;
        seen = [await a.receivedHeight(stage), await a.receivedHeight(thumb)];
        if (seen[0] > 180 && seen[1] > 0 && seen[1] <= 180) break;
        if (Date.now() > deadline) break;
        await a.page.waitForTimeout(500);
    }
    const codec = await a.eval(async () => {
        const pc = APP.conference._room.jvbJingleSession.peerconnection.peerconnection;
        const codecs = [];
        (await pc.getStats()).forEach((s) => { if (s.type === 'codec' && s.mimeType.startsWith('video/')) codecs.push(s.mimeType); });
        return codecs;
    });
    console.log('received heights (stage, thumbnail):', seen, 'codecs:', codec);
    assert.ok(seen[0] > 180, `the one on stage at ${seen[0]}p`);
    assert.ok(seen[1] > 0 && seen[1] <= 180, `the thumbnail at ${seen[1]}p`);
    assert.ok(codec.includes('video/AV1'), codec.join());
    await app.leaveAll();
}));
