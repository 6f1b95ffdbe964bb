// Shared video in the official web app (issue 11): it rides on presence (the sharer's
// `shared-video` command). The app offers it only when config.js allows third-party requests,
// which meetd turns off by default; an admin turns it on in [web], as here, and lists the hosts
// whose videos play for everyone unasked.
import { useApp, appTest, assert } from './lib.mjs';

const app = useApp({
    name: 'app-sharedvideo',
    config: '[web]\nthird_party_requests = true\nshared_video_domains = ["127.0.0.1"]\n',
});

appTest('shared video reaches the others and stops for them', app.wrap(async () => {
    const r = 'sharedvideo';
    const a = await app.join(r, { name: 'Alice' });
    const b = await app.join(r, { name: 'Bob' });
    await a.waitVideoFrom(b);
    const url = await a.eval(() => `${location.origin}/sounds/joined.mp3`);
    await a.clickToolbar('toolbar.accessibilityLabel.sharedvideo', 'share video');
    await a.page.locator('#shared-video-url-input').fill(url, { timeout: 5000 });
    await a.page.locator('#modal-dialog-ok-button').click({ timeout: 5000 });
    const shared = () => APP.store.getState()['features/shared-video'].videoUrl;
    await b.waitFor((u) => APP.store.getState()['features/shared-video'].videoUrl === u, 'the shared video at Bob', 5000, url);
    const aid = await a.id();
    assert.equal(await b.eval(() => APP.store.getState()['features/shared-video'].ownerId), aid);
    await a.clickToolbar('toolbar.accessibilityLabel.stopSharedVideo', 'stop video');
    await b.waitFor(() => !APP.store.getState()['features/shared-video'].videoUrl, 'the shared video gone at Bob', 5000);
    assert.ok(!(await a.eval(shared)), 'the sharer stopped too');
    await app.leaveAll();
}));
