// End-to-end encryption from the app (issue 14): the media stays decodable through the bridge
// once both apps encrypt it with insertable streams, across a simulcast layer switch (the
// bridge rewrites RTP headers and the VP8 descriptor, never the encrypted payload).
import { useApp, appTest, assert } from './lib.mjs';

const app = useApp({ name: 'app-e2ee' });

/** Frames of `other`'s video decoded here over `ms`. */
async function decodedOver(p, other, ms) {
    const first = await p.waitVideoFrom(other, 15000);
    await p.page.waitForTimeout(ms);
    const then = await p.waitVideoFrom(other, 15000);
    return then.frames - first.frames;
}

appTest('E2EE on: both keep decoding each other, also after a layer switch', app.wrap(async () => {
    const hash = 'config.p2p.enabled=false';
    const a = await app.join('e2ee', { name: 'Alice', hash });
    const b = await app.join('e2ee', { name: 'Bob', hash });
    await Promise.all([a.waitVideoFrom(b, 15000), b.waitVideoFrom(a, 15000)]);
    // What the security dialog's switch does.
    await a.eval(() => APP.store.dispatch({ type: 'TOGGLE_E2EE', enabled: true }));
    for (const p of [a, b]) {
        await p.waitFor(() => APP.store.getState()['features/e2ee'].enabled
            && [...APP.store.getState()['features/base/participants'].remote.values()].every((r) => r.e2eeEnabled),
        'everyone encrypting', 15000);
    }
    assert.ok(await decodedOver(a, b, 2000) > 5, 'Alice decodes Bob under E2EE');
    assert.ok(await decodedOver(b, a, 2000) > 5, 'Bob decodes Alice under E2EE');
    // Alice asks for the low layer, then the high one again: two switches under E2EE.
    for (const q of [180, 720]) {
        await a.eval((h) => APP.store.dispatch({ type: 'SET_PREFERRED_VIDEO_QUALITY', preferredVideoQuality: h }), q);
        await a.page.waitForTimeout(3000);
        assert.ok(await decodedOver(a, b, 2000) > 5, `Alice decodes Bob after switching to ${q}p`);
    }
    await app.leaveAll();
}));
