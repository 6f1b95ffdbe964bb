// Nine on video (issue 14): nine people of the official web app in one room, every one
// sending video, in tile view. Everyone must see everyone else's video. The test prints what
// the issue asks to report: join to first remote frame, the bridge's CPU and memory, and every
// browser's received frame rates and freezes from getStats(), what each one sends, its ICE
// pair, and the namespace's UDP receive-buffer drops.
//
// Scaled down so that nine Chromiums fit on two cores: a 180p camera at 10 fps, VP8 without
// simulcast (AV1, the app's first choice, costs the browsers far more CPU; and with simulcast
// Chrome encodes only the lowest layer, 45p, of a 180p camera). Even so the browsers are
// starved: their UDP pings come late, and Chrome moves some of them to TURN over TCP.
import { readFileSync } from 'node:fs';
import { useApp, appTest, assert } from './lib.mjs';

const app = useApp({ name: 'app-nine' });
const N = Number(process.env.APP_NINE || 9);
const hash = [
    'config.p2p.enabled=false',
    'config.resolution=180',
    'config.constraints.video.height.ideal=180',
    'config.constraints.video.height.max=180',
    'config.constraints.video.width.max=320',
    'config.constraints.video.frameRate.max=10',
    'config.constraints.video.frameRate.min=5',
    `config.videoQuality.codecPreferenceOrder=${encodeURIComponent('["VP8"]')}`,
    'config.disableSimulcast=true',
    'config.pcStatsInterval=2000',
].join('&');

/** CPU seconds (user + system) and resident memory (KiB) of a process. */
function usage(pid) {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    const ticks = Number(stat[11]) + Number(stat[12]);
    const rss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
    return { cpu: ticks / 100, rss };
}

/** Received video per remote, from the JVB connection's getStats(). */
function inboundVideo(p) {
    return p.eval(async () => {
        const pc = APP.conference._room.jvbJingleSession.peerconnection.peerconnection;
        const out = [];
        (await pc.getStats()).forEach((s) => {
            if (s.type === 'inbound-rtp' && s.kind === 'video' && s.framesDecoded > 0) {
                out.push({
                    ssrc: s.ssrc,
                    fps: s.framesPerSecond ?? 0,
                    decoded: s.framesDecoded,
                    freezes: s.freezeCount ?? 0,
                    frozenMs: Math.round((s.totalFreezesDuration ?? 0) * 1000),
                    height: s.frameHeight,
                });
            }
        });
        return out;
    });
}

/** What a browser sends: per encoding, its height, frame rate and what limits it. */
function outboundVideo(p) {
    return p.eval(async () => {
        const pc = APP.conference._room.jvbJingleSession.peerconnection.peerconnection;
        const out = [];
        (await pc.getStats()).forEach((s) => {
            if (s.type === 'outbound-rtp' && s.kind === 'video') {
                out.push(`${s.rid ?? '-'}:${s.frameHeight ?? 0}p@${Math.round(s.framesPerSecond ?? 0)}${s.active === false ? ' off' : ''} ${s.qualityLimitationReason}`);
            }
            if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
                out.push(`out ${Math.round((s.availableOutgoingBitrate ?? 0) / 1000)} kbps`);
            }
        });
        return out.join(', ');
    });
}

const median = (v) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];

/** The namespace's UDP counters (receive-buffer overflows show as RcvbufErrors). */
function udpCounters() {
    const lines = readFileSync('/proc/net/snmp', 'utf8').split('\n').filter((l) => l.startsWith('Udp:'));
    const [names, values] = lines.map((l) => l.split(/\s+/).slice(1));
    return Object.fromEntries(names.map((n, i) => [n, Number(values[i])]));
}

/** Receive-buffer drops of every UDP socket in the namespace that has any, as port:count. */
function socketDrops() {
    const out = [];
    for (const f of ['/proc/net/udp', '/proc/net/udp6']) {
        for (const l of readFileSync(f, 'utf8').split('\n').slice(1)) {
            const c = l.trim().split(/\s+/);
            if (c.length > 12 && Number(c.at(-1)) > 0) out.push(`${parseInt(c[1].split(':')[1], 16)}:${c.at(-1)}`);
        }
    }
    return out.join(' ');
}

/** Each participant's selected ICE pair on the bridge connection (local -> remote). */
function icePairs(people) {
    return Promise.all(people.map((p) => p.eval(async () => {
        const pc = APP.conference._room.jvbJingleSession?.peerconnection?.peerconnection;
        if (!pc) return '?';
        const st = await pc.getStats();
        let out = '?';
        st.forEach((s) => {
            if (s.type === 'transport' && s.selectedCandidatePairId) {
                const cp = st.get(s.selectedCandidatePairId);
                const l = st.get(cp.localCandidateId);
                const r = st.get(cp.remoteCandidateId);
                out = `${l.candidateType}/${l.protocol}${l.relayProtocol ? '/' + l.relayProtocol : ''}->${r.candidateType}/${r.protocol}:${r.port}`;
            }
        });
        return out;
    }).catch(() => 'err'))).then((v) => v.join(' '));
}

appTest(`${N} on video in tile view: everyone sees everyone`, app.wrap(async () => {
    const pid = app.server.proc.pid;
    process.on('exit', () => console.log(`nine: UDP ${JSON.stringify(udpCounters())}`));
    const people = [];
    const report = setInterval(async () => console.log(`nine: socket drops (port:count) ${socketDrops()}; pairs ${await icePairs(people)}`), 15000);
    report.unref();
    const idle = usage(pid);
    const firstFrame = [];
    const phases = [];
    let firstId = null;
    for (let i = 0; i < N; i++) {
        // Starved browsers (and this VM's speed varies by a factor of two) get up to 3 min
        // to load the page and let "Join meeting" be clicked, and a minute per evaluate.
        const p = await app.join('nine', { name: `P${i + 1}`, hash, waitJoined: false, patience: 180000, evalTimeout: 60000 });
        // From "Join meeting" (the click has just gone) to the first presented frame of the
        // first participant, timed in the page (lib.mjs traceJoin).
        const t0 = Date.now();
        if (i > 0) await p.traceJoin(firstId);
        await p.waitJoined(120000);
        if (i === 0) firstId = await p.id();
        if (i > 0) {
            // Measured, not asserted: on two cores the ninth browser can take longer than
            // this; whether everyone sees everyone is checked below.
            const seen = await p.waitVideoFrom(people[0], 45000).then(() => true, () => false);
            const jt = await p.joinTimes();
            firstFrame.push(seen && jt.frame ? jt.frame - t0 : Infinity);
            const at = (k) => (jt[k] ? jt[k] - t0 : '-');
            phases.push(`${p.name}: joined ${at('joined')}, session ${at('session')}, ice ${at('ice')}, dtls ${at('dtls')}, track ${at('track')}, frame ${at('frame')}`);
        }
        people.push(p);
    }
    // Everyone sees every other one's video.
    await Promise.all(people.map(async (x) => {
        for (const y of people) if (y !== x) await x.waitVideoFrom(y, 150000);
    }));
    const tile = await people[0].eval(() => APP.store.getState()['features/video-layout'].tileViewEnabled);
    // A steady 20 s: the bridge's CPU and memory, then what each browser received.
    const before = await Promise.all(people.map(inboundVideo));
    const u0 = usage(pid);
    await people[0].page.waitForTimeout(20000);
    const u1 = usage(pid);
    const after = await Promise.all(people.map(inboundVideo));
    const cpu = (u1.cpu - u0.cpu) / 20;
    const rows = after.map((streams, i) => {
        const prev = new Map(before[i].map((s) => [s.ssrc, s]));
        const fps = streams.map((s) => (s.decoded - (prev.get(s.ssrc)?.decoded ?? 0)) / 20);
        return {
            who: people[i].name,
            streams: streams.length,
            fpsMin: Math.min(...fps).toFixed(1),
            fpsMedian: median(fps).toFixed(1),
            freezes: streams.reduce((n, s) => n + s.freezes - (prev.get(s.ssrc)?.freezes ?? 0), 0),
            heights: [...new Set(streams.map((s) => s.height))].join('/'),
        };
    });
    console.log(`nine: ${N} participants, tile view ${tile}`);
    console.log(`nine: "Join meeting" to first remote frame (ms): ${firstFrame.map((t) => (t === Infinity ? '>45000' : t)).join(', ')}; median ${median(firstFrame)}`);
    for (const l of phases) console.log(`nine: ms after "Join meeting": ${l}`);
    console.log(`nine: bridge CPU ${(cpu * 100).toFixed(1)}% of one core (${(cpu * 100 / N).toFixed(2)}% per participant), RSS ${u1.rss} KiB (idle ${idle.rss} KiB, +${Math.round((u1.rss - idle.rss) / N)} KiB per participant)`);
    for (const r of rows) console.log(`nine: ${JSON.stringify(r)}`);
    const sent = await Promise.all(people.map(outboundVideo));
    sent.forEach((s, i) => console.log(`nine: ${people[i].name} sends ${s}`));
    clearInterval(report);
    for (const r of rows) assert.ok(r.streams >= N - 1, `${r.who} decodes ${r.streams} streams`);
    await app.leaveAll();
}), { timeout: 900000 });
