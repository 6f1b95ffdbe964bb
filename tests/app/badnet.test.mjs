// Bad networks (issue 14): one receiver's link from the bridge gets 5% random loss (nftables),
// then 300 kbit/s (tc htb), then a 2 s outage. Its video must keep decoding with NACK/RTX
// repair, step down and back up, and recover; its audio stays usable; another receiver of
// the same sender is not affected. (This kernel has no sch_netem: the 100 ms RTT of the
// issue's loss case cannot be added, the loss is.)
import { execFileSync } from 'node:child_process';
import { useApp, appTest, assert, sleep, firewall, firewallDrops, openFirewall, noNft } from './lib.mjs';
import { shapePort, unshape } from '../lib/shape.mjs';

const app = useApp({ name: 'app-badnet' });

/** What `p` receives from `other`: video and audio counters from getStats(). */
async function flow(p, other) {
    const id = await other.id();
    return p.eval(async (pid) => {
        const tracks = APP.store.getState()['features/base/tracks'];
        const ids = {};
        for (const k of ['video', 'audio']) {
            ids[k] = tracks.find((t) => !t.local && t.participantId === pid && t.mediaType === k)?.jitsiTrack?.getTrack()?.id;
        }
        const pc = APP.conference._room.jvbJingleSession.peerconnection.peerconnection;
        const out = { video: null, audio: null };
        (await pc.getStats()).forEach((s) => {
            if (s.type !== 'inbound-rtp') return;
            if (s.trackIdentifier === ids.video) {
                out.video = { decoded: s.framesDecoded ?? 0, freezes: s.freezeCount ?? 0, height: s.frameHeight ?? 0,
                    nacks: s.nackCount ?? 0, rtx: s.retransmittedPacketsReceived ?? 0, lost: s.packetsLost ?? 0 };
            }
            if (s.trackIdentifier === ids.audio) {
                out.audio = { concealed: s.concealedSamples ?? 0, samples: s.totalSamplesReceived ?? 0, lost: s.packetsLost ?? 0 };
            }
        });
        return out;
    }, id);
}

/** `p`'s reception of `other` over `ms`: frame rate, freezes, NACKs, repairs, audio concealment. */
async function over(p, other, ms) {
    const a = await flow(p, other);
    await sleep(ms);
    const b = await flow(p, other);
    const s = ms / 1000;
    return {
        fps: +((b.video.decoded - a.video.decoded) / s).toFixed(1),
        freezes: b.video.freezes - a.video.freezes,
        nacks: b.video.nacks - a.video.nacks,
        rtx: b.video.rtx - a.video.rtx,
        lost: b.video.lost - a.video.lost,
        height: b.video.height,
        concealed: +((b.audio.concealed - a.audio.concealed) / Math.max(1, b.audio.samples - a.audio.samples)).toFixed(3),
    };
}

appTest('loss, a narrow link and an outage on one receiver\'s link', app.wrap(async () => {
    const hash = 'config.p2p.enabled=false';
    // Only Bob speaks: he stays the dominant speaker, on Alice's and Carol's stage.
    const alice = await app.join('badnet', { name: 'Alice', hash, startAudioMuted: true });
    const bob = await app.join('badnet', { name: 'Bob', hash });
    const carol = await app.join('badnet', { name: 'Carol', hash, startAudioMuted: true });
    await Promise.all([alice.waitVideoFrom(bob, 15000), carol.waitVideoFrom(bob, 15000)]);
    // Alice has Bob on stage: she receives his high layer (and Carol the same).
    const pin = (id) => {
        APP.store.dispatch({ type: 'SET_TILE_VIEW', enabled: false });
        APP.store.dispatch({ type: 'PIN_PARTICIPANT', participant: { id, local: false } });
    };
    const bobId = await bob.id();
    // Until the app shows Bob on the large video and the high layer arrives.
    for (const p of [alice, carol]) {
        const deadline = Date.now() + 20000;
        while (Date.now() < deadline) {
            await p.eval(pin, bobId);
            await sleep(1000);
            const onStage = await p.eval(() => APP.store.getState()['features/large-video'].participantId);
            if (onStage === bobId && await p.receivedHeight(bob) > 180) break;
        }
    }
    // Alice's end of the bridge connection as her browser uses it now (its selected pair),
    // read again before each phase: a rule on a port her browser no longer uses (its session
    // was renewed, or its pair changed) would leave the phase without effect. Its candidate
    // type and the bridge's port go into the report, to tell such a run apart.
    const selected = () => alice.waitFor(async () => {
        const pc = APP.conference._room.jvbJingleSession.peerconnection.peerconnection;
        const stats = [...(await pc.getStats()).values()];
        const t = stats.find((s) => s.type === 'transport' && s.selectedCandidatePairId);
        const pair = stats.find((s) => s.id === t?.selectedCandidatePairId);
        const local = stats.find((s) => s.id === pair?.localCandidateId);
        return local && { proto: local.protocol, port: local.port, type: local.candidateType, remote: stats.find((s) => s.id === pair?.remoteCandidateId)?.port };
    }, 'the selected candidate pair', 15000);
    let path = await selected();
    let { port, proto } = path;
    assert.ok(port > 0, JSON.stringify(path));
    const report = {};
    const [ab, cb] = await Promise.all([over(alice, bob, 10000), over(carol, bob, 10000)]);
    report.baseline = { alice: ab, carol: cb };

    // 5% of the datagrams to Alice lost. A rule that dropped nothing (it missed Alice's
    // path: the run is reported with the path and the sockets, then the phase runs again once)
    // says nothing about the bridge.
    let carolDuring;
    for (let attempt = 1; attempt <= 2; attempt++) {
        ({ port, proto } = path = await selected());
        firewall([`${proto} dport ${port} numgen random mod 100 < 5`]);
        let drops = 0;
        try {
            [report.loss, carolDuring] = await Promise.all([over(alice, bob, 20000), over(carol, bob, 20000)]);
            drops = firewallDrops();
        } finally {
            openFirewall();
        }
        if (drops > 0) break;
        let sockets = '';
        try {
            sockets = execFileSync('ss', ['-uanp'], { encoding: 'utf8' }).split('\n').filter((l) => l.includes(`:${port}`) || l.includes('meetd')).join(' | ');
        } catch { /* no ss */ }
        console.log(`badnet: the loss rule dropped nothing (attempt ${attempt}): path ${JSON.stringify(path)}; sockets ${sockets}`);
    }
    report.lossCarol = carolDuring;

    // 300 kbit/s to Alice: her video steps down, and up again once the link clears.
    const high = (await flow(alice, bob)).video.height;
    let low = 0;
    try {
        ({ port, proto } = path = await selected());
        shapePort(port, '300kbit', proto);
        const deadline = Date.now() + 30000;
        while (Date.now() < deadline && !low) {
            await sleep(1000);
            const h = (await flow(alice, bob)).video.height;
            if (h > 0 && h < high) low = h;
        }
        report.narrow = await over(alice, bob, 5000);
        // And once it settled (the estimate picks frame rates within the low layer).
        report.narrowSettled = await over(alice, bob, 8000);
    } finally {
        unshape();
    }
    let back = 0;
    const deadline = Date.now() + 60000;
    while (Date.now() < deadline && !back) {
        await sleep(1000);
        const h = (await flow(alice, bob)).video.height;
        if (h > low) back = h;
    }
    report.steps = { high, low, back };

    // 2 s with nothing reaching Alice: her video comes back.
    ({ port, proto } = path = await selected());
    firewall([`${proto} dport ${port}`]);
    await sleep(2000);
    openFirewall();
    const before = (await flow(alice, bob)).video.decoded;
    let resumedMs = -1;
    const t0 = Date.now();
    while (Date.now() - t0 < 15000) {
        await sleep(500);
        if ((await flow(alice, bob)).video.decoded > before + 5) {
            resumedMs = Date.now() - t0;
            break;
        }
    }
    report.outage = { resumedMs, after: await over(alice, bob, 5000) };
    report.path = { ...path, bridgeUdp: app.server.mediaPort, turn: app.server.turnPort };
    console.log(`badnet: ${JSON.stringify(report)}`);

    // Loss: repaired by NACK/RTX, video still flowing, audio concealment small.
    assert.ok(report.loss.nacks > 0 && report.loss.rtx > 0, `NACKs ${report.loss.nacks}, RTX ${report.loss.rtx}`);
    assert.ok(report.loss.fps >= report.baseline.alice.fps / 2, `fps ${report.loss.fps} under loss (baseline ${report.baseline.alice.fps})`);
    assert.ok(report.loss.concealed < report.baseline.alice.concealed + 0.1,
        `audio concealed ${report.loss.concealed} (baseline ${report.baseline.alice.concealed})`);
    // Carol, on the same sender, unaffected.
    assert.ok(report.lossCarol.fps >= report.baseline.carol.fps / 2, `Carol at ${report.lossCarol.fps} fps`);
    assert.ok(report.lossCarol.nacks <= 5, `Carol NACKed ${report.lossCarol.nacks}`);
    // The narrow link: down, and up again.
    assert.ok(low > 0, `no lower layer behind 300 kbit/s (from ${high}p)`);
    assert.ok(report.narrowSettled.fps > 0, 'video kept decoding behind 300 kbit/s');
    assert.ok(back > low, `not back above ${low}p after the link cleared`);
    // The outage: video again within 15 s.
    assert.ok(resumedMs >= 0, 'video did not resume after the outage');
    await app.leaveAll();
}), { skip: noNft, timeout: 300000 });
