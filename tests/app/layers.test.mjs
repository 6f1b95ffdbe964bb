// Which layer each receiver gets (issue 14), in the official web app, for every codec it can
// send: the person on stage comes in at a high resolution, a thumbnail at the low layer, not
// the whole stream. AV1 (the app's first choice on Chrome) and VP9 go as one SVC stream
// (L3T3_KEY: the bridge drops the spatial layers a receiver does not get, docs/bridge.md
// B.13), VP8 and H.264 as simulcast (B.8).
import { useApp, appTest, assert } from './lib.mjs';

const app = useApp({ name: 'app-layers' });

async function metric(name) {
    const text = await (await fetch(`${app.base}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith(`${name} `));
    return Number(line?.split(' ')[1] ?? 0);
}

/** What Bob's camera sender sends: codec and scalability mode per encoding. */
async function sending(p) {
    return p.eval(async () => {
        const pc = APP.conference._room.jvbJingleSession.peerconnection.peerconnection;
        const stats = await pc.getStats();
        const codecs = {};
        stats.forEach((s) => { if (s.type === 'codec') codecs[s.id] = s.mimeType; });
        const out = [];
        stats.forEach((s) => {
            if (s.type === 'outbound-rtp' && s.kind === 'video' && s.bytesSent > 0) {
                out.push(`${codecs[s.codecId]} ${s.scalabilityMode ?? '-'} ${s.frameHeight ?? 0}p`);
            }
        });
        return out;
    });
}

for (const [codec, svc] of [['AV1', true], ['VP9', true], ['VP8', false], ['H264', false]]) {
    appTest(`${codec}: the one on stage at a high layer, a thumbnail at the low one (${svc ? 'SVC' : 'simulcast'})`, app.wrap(async () => {
        const order = encodeURIComponent(JSON.stringify([codec]));
        const hash = `config.p2p.enabled=false&config.videoQuality.codecPreferenceOrder=${order}`;
        const room = `layers-${codec.toLowerCase()}`;
        const skippedBefore = await metric('meetd_media_svc_skipped_total');
        const a = await app.join(room, { name: 'Alice', hash });
        const b = await app.join(room, { name: 'Bob', hash });
        const c = await app.join(room, { name: 'Carol', hash });
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
        const deadline = Date.now() + 40000;
        for (;;) {
            const onStage = await a.eval(() => APP.store.getState()['features/large-video'].participantId);
            const stage = ids[onStage] ?? b;
            const thumb = stage === b ? c : b;
            seen = [await a.receivedHeight(stage), await a.receivedHeight(thumb)];
            if (seen[0] > 180 && seen[1] > 0 && seen[1] <= 180) break;
            if (Date.now() > deadline) break;
            await a.page.waitForTimeout(500);
        }
        const received = await a.eval(async () => {
            const pc = APP.conference._room.jvbJingleSession.peerconnection.peerconnection;
            const codecs = [];
            (await pc.getStats()).forEach((s) => { if (s.type === 'codec' && s.mimeType.startsWith('video/')) codecs.push(s.mimeType); });
            return codecs;
        });
        const sent = [await sending(b), await sending(c)];
        const skipped = await metric('meetd_media_svc_skipped_total') - skippedBefore;
        console.log(`${codec}: received heights (stage, thumbnail):`, seen, 'codecs:', received, 'sent:', sent, 'SVC packets skipped:', skipped);
        assert.ok(seen[0] > 180, `the one on stage at ${seen[0]}p`);
        assert.ok(seen[1] > 0 && seen[1] <= 180, `the thumbnail at ${seen[1]}p`);
        assert.ok(received.includes(`video/${codec}`), received.join());
        if (svc) {
            // One stream per sender with spatial layers, and the bridge dropped some of them.
            assert.ok(sent.every((s) => s.length === 1 && /^L[23]T/.test(s[0].split(' ')[1])), JSON.stringify(sent));
            assert.ok(skipped > 0, 'the bridge dropped the layers a thumbnail does not need');
        } else {
            assert.ok(sent.some((s) => s.length > 1), `simulcast: ${JSON.stringify(sent)}`);
        }
        await app.leaveAll();
    }));
}
