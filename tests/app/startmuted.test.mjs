// "Everyone starts muted" in the official web app (issue 19): a moderator ticks it in the
// settings' Moderator tab (room metadata `startMuted`), joiners start muted and everyone sees
// their mute icons; they can unmute; the moderator who set it is not muted.
import { useApp, appTest, assert } from './lib.mjs';

const app = useApp({ name: 'app-startmuted' });

appTest('moderator sets start muted; a joiner starts muted and can unmute', app.wrap(async () => {
    const r = 'startmuted';
    const a = await app.join(r, { name: 'Alice' });
    await a.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'moderator role');
    await a.setStartMuted({ audio: true, video: true });
    const b = await app.join(r, { name: 'Bob' });
    await b.waitFor(() => {
        const c = APP.store.getState()['features/base/conference'];
        return c.startAudioMutedPolicy && c.startVideoMutedPolicy;
    }, 'the start-muted policy');
    await b.waitFor(() => APP.store.getState()['features/base/tracks']
        .filter((t) => t.local && t.muted).length === 2, 'Bob muted', 5000);
    await a.waitMuteIcon(b, 'audio', true);
    await a.waitMuteIcon(b, 'video', true);
    await b.waitMuteIcon(b, 'audio', true);
    assert.equal(await a.localMuted('audio'), false, 'the moderator who set it is not muted');
    await b.waitVideoFrom(a);
    // Bob unmutes: Alice sees him.
    await b.clickToolbar('toolbar.accessibilityLabel.unmute', 'unmute');
    await b.clickToolbar('toolbar.accessibilityLabel.videounmute', 'start camera');
    await a.waitMuteIcon(b, 'audio', false);
    await a.waitVideoFrom(b);
    // A third joiner starts muted too, and sees Bob unmuted.
    const c = await app.join(r, { name: 'Carol' });
    await c.waitFor(() => APP.store.getState()['features/base/tracks']
        .filter((t) => t.local && t.muted).length === 2, 'Carol muted', 5000);
    await c.waitVideoFrom(b);
    await app.leaveAll();
}));
