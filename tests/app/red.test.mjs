// Opus with RED (issue 14, [focus] opus_red): the focus offers RED (RFC 2198, payload type
// 112 carrying Opus 111, ahead of Opus) to the clients that support it (config.js
// enableOpusRed), and plain Opus to a client with RED off in the same meeting. The RED
// clients send RED; the bridge passes it to the other RED client and sends Carol each
// packet's primary Opus block (colibri/src/rtp/red.rs); everyone's audio plays. (Chrome's
// stats name the primary codec, audio/opus, for RED streams too.)
import { useApp, appTest, assert, sleep } from './lib.mjs';

// (useApp's configuration starts with [focus]: this line lands there.)
const app = useApp({ name: 'app-red', config: 'opus_red = true\n' });

/** The audio payload types the bridge offered this page, in order, and what it receives. */
const audioView = (p) => p.eval(async () => {
    const pc = APP.conference._room.jvbJingleSession?.peerconnection?.peerconnection;
    if (!pc) return null;
    const m = pc.remoteDescription.sdp.split('\r\n').find((l) => l.startsWith('m=audio'));
    const stats = await pc.getStats();
    const inbound = [];
    stats.forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'audio' && s.packetsReceived > 0) {
            inbound.push({ codec: stats.get(s.codecId)?.mimeType, packets: s.packetsReceived,
                samples: s.totalSamplesReceived, concealed: s.concealedSamples });
        }
    });
    return { offered: m.split(' ').slice(3).map(Number), inbound };
});

appTest('RED offered to clients that support it, plain Opus to one that does not, audio for all', app.wrap(async () => {
    const hash = 'config.p2p.enabled=false';
    const a = await app.join('redroom', { name: 'Alice', hash });
    const b = await app.join('redroom', { name: 'Bob', hash });
    const c = await app.join('redroom', { name: 'Carol', hash: `${hash}&config.enableOpusRed=false` });
    for (const [x, y] of [[b, a], [c, a], [a, b]]) await x.waitVideoFrom(y, 20000, { audio: true });
    await sleep(3000);
    const [va, vb, vc] = [await audioView(a), await audioView(b), await audioView(c)];
    assert.deepEqual(va.offered.slice(0, 2), [112, 111], `Alice: RED first ${va.offered}`);
    assert.deepEqual(vb.offered.slice(0, 2), [112, 111], `Bob: RED first ${vb.offered}`);
    assert.ok(!vc.offered.includes(112), `Carol: no RED ${vc.offered}`);
    for (const [name, v] of [['Alice', va], ['Bob', vb], ['Carol', vc]]) {
        const playing = v.inbound.filter((s) => s.packets > 50);
        assert.ok(playing.length >= 1, `${name} receives audio: ${JSON.stringify(v.inbound)}`);
        for (const s of playing) assert.ok(s.concealed / Math.max(1, s.samples) < 0.2, `${name}'s audio plays: ${JSON.stringify(s)}`);
    }
    const m = await (await fetch(`${app.base}/metrics`)).text();
    const stripped = Number(m.match(/^meetd_media_red_stripped_total (\d+)$/m)?.[1] ?? 0);
    assert.ok(stripped > 50, `RED packets sent to Carol as Opus: ${stripped}`);
    console.log(`# RED: received codecs ${[va, vb, vc].map((v) => v.inbound.map((s) => s.codec).join('+')).join(' / ')}; `
        + `stripped for Carol ${m.match(/^meetd_media_red_stripped_total (\d+)$/m)?.[1]}`);
    await app.leaveAll();
}));
