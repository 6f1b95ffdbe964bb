// End-to-end media through meetd with real Chromium WebRTC: meetd (XMPP, MUC, focus, bridge)
// and headless Chromium pages running a minimal Jitsi-like client (client.js: strophe.js over
// WebSocket, Jingle ⇄ SDP as lib-jitsi-meet does, SSRC-signalled simulcast, bridge channel).
//
// MUST run inside a loopback-only network namespace (tests/e2e/run.sh does that): Chromium
// sends ICE checks from every interface it has (testing.md, "Network rule"). The test refuses
// to start when any interface other than `lo` exists.
//
// Steps: two participants exchange audio + video; a third joins and everyone decodes both
// others; one leaves and the other two keep receiving from each other. Media is checked with
// getStats(): framesDecoded / totalSamplesReceived of each remote source growing over a window.
//
// E2E_TRANSPORT=bosh: the same client over strophe.js's BOSH transport (http://…/http-bind, what
// the mobile apps use by default) instead of WebSocket; the steps are the same.
//
// E2E_P2P=1: lib-jitsi-meet's peer-to-peer mode instead of the bridge. meetd runs with
// [focus] min_participants = 3, so the focus never invites the pair (no bridge session: what
// is tested is the MUC routing occupant-addressed Jingle IQs both ways, and media that never
// touches meetd). The participant with the smaller endpoint id (as lib-jitsi-meet decides)
// sends session-initiate built from its SDP offer to room@muc/<peer>; the peer sees it from the
// initiator's occupant JID, answers session-accept the same way; both trickle candidates in
// transport-info; both must decode each other's audio and video over a direct 127.0.0.1 pair.
// STUN (E2E_STUN=0 to turn off): meetd answers plain STUN Binding requests on its media port.
// A first step sends one from Node and checks the XOR-MAPPED-ADDRESS. Then Chromium's STUN
// server is meetd's media port behind a port-translating UDP forwarder in this test (a NAT in
// user space: meetd sees the forwarder's port, not the browser's): without it the mapped
// address would equal the host candidate and Chromium drops such a srflx as redundant. Each
// STUN request must be answered, and the initiator must gather a srflx candidate whose address
// is the one meetd mapped for it (the responder connects before its answer arrives).
//
// Env: E2E_PARTICIPANTS (default 3), E2E_SIMULCAST (default 1), E2E_JSON (which participants
// advertise json-encoded-sources, default "0,2": mixed on purpose), E2E_CODEC (preferred video
// codec, default: the focus' order), E2E_WINDOW_MS (default 5000), E2E_TRACE=1 (XMPP trace in
// the page logs), MEETD_LOG_LEVEL (default debug for the meetd crates).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import dgram from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { readFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { useServer, DOMAIN, TESTS_DIR, withTimeout, sleep } from '../lib/server.mjs';
import { shapePort, unshape } from '../lib/shape.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const STROPHE = path.join(path.dirname(require.resolve('strophe.js/package.json')), 'dist', 'strophe.umd.min.js');
const N = Number(process.env.E2E_PARTICIPANTS || 3);
const SIMULCAST = process.env.E2E_SIMULCAST !== '0';
const JSON_IDX = new Set((process.env.E2E_JSON ?? '0,2').split(',').filter(Boolean).map(Number));
// VP8 by default: Chromium honours SSRC-signalled simulcast (a=ssrc-group:SIM) only for VP8/H264;
// with AV1 (the focus' first codec) it sends one L1T1 stream on the first SSRC. E2E_CODEC=offer
// keeps the focus' order (AV1, no simulcast munging: lib-jitsi-meet uses SVC, not SIM, for AV1).
const CODEC = (process.env.E2E_CODEC || 'VP8') === 'offer' ? null : (process.env.E2E_CODEC || 'VP8');
const WINDOW_MS = Number(process.env.E2E_WINDOW_MS || 5000);
const MEDIA_TIMEOUT_MS = Number(process.env.E2E_MEDIA_TIMEOUT_MS || 45000);
const TRANSPORT = process.env.E2E_TRANSPORT || 'websocket';
const P2P = process.env.E2E_P2P === '1';
const STUN = process.env.E2E_STUN !== '0';
// E2E_SHAPE=1 (run.sh's vp8 pass): a bandwidth step shapes one receiver's link with tc (htb on
// the namespace's lo; needs root in it, as run.sh gives).
const SHAPE = process.env.E2E_SHAPE === '1';
const MUC = `muc.${DOMAIN}`;
const ROOM = `e2emedia@${MUC}`;

// Network rule: refuse to run with any interface but loopback.
// (/proc/net/dev belongs to the current network namespace; /sys/class/net does not follow unshare -n.)
const ifaces = readFileSync('/proc/net/dev', 'utf8').split('\n').slice(2).map((l) => l.split(':')[0].trim()).filter(Boolean);
// run.sh's ipv6 pass adds a veth pair that exists only inside the namespace it created.
const allowed = new Set(['lo', ...(process.env.E2E_NETNS_IFACES || '').split(',').filter(Boolean)]);
const outsideNamespace = ifaces.some((i) => !allowed.has(i));
if (outsideNamespace) {
    throw new Error(`media.test.mjs must run in a loopback-only network namespace (found interfaces: ${ifaces.join(', ')}); use tests/e2e/run.sh`);
}

process.env.MEETD_LOG_LEVEL ??= 'info,meetd=debug,meetd_colibri=debug,meetd_jingle=debug,str0m=info';

const srv = useServer({
    name: 'e2e-media',
    // E2E_ADVERTISE: the bridge's host candidates (comma list; "::1" makes an IPv6-only bridge).
    extraArgs: (process.env.E2E_ADVERTISE || '127.0.0.1').split(',').flatMap((ip) => ['--advertise-ip', ip]),
    // P2P: a focus that never invites two participants (lib-jitsi-meet would also run the
    // bridge session and suspend it; here the pair only has the direct session).
    // E2E_MEDIA_THREADS: media engine threads (run.sh's bosh pass uses 2: the receive thread
    // hands datagrams to the conference's engine thread).
    config: `[focus]\nsingle_participant_timeout_secs = 60\n${P2P ? 'min_participants = 3\n' : ''}`
        + `[media]\nthreads = ${Number(process.env.E2E_MEDIA_THREADS || 1)}\n`,
});

let web;
let webBase;
let browser;
const parts = []; // {idx, nick, page, ctx, errors, left}
const results = { joinMs: [] };

before(async () => {
    assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM}`);
    const files = {
        '/': ['text/html; charset=utf-8', readFileSync(path.join(here, 'page.html'))],
        '/client.js': ['application/javascript', readFileSync(path.join(here, 'client.js'))],
        '/strophe.js': ['application/javascript', readFileSync(STROPHE)],
    };
    web = http.createServer((req, res) => {
        if (req.url === '/favicon.ico') {
            res.writeHead(204);
            res.end();
            return;
        }
        const f = files[req.url.split('?')[0]];
        if (f) {
            res.writeHead(200, { 'content-type': f[0], 'cache-control': 'no-store' });
            res.end(f[1]);
        } else {
            res.writeHead(404);
            res.end();
        }
    });
    await new Promise((r) => web.listen(0, '127.0.0.1', r));
    webBase = `http://127.0.0.1:${web.address().port}`;
    browser = await chromium.launch({
        executablePath: CHROMIUM,
        headless: true,
        args: [
            '--headless=new', '--no-sandbox', '--disable-gpu',
            '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
            '--allow-loopback-in-peer-connection',
            '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run',
            '--disable-quic', '--autoplay-policy=no-user-gesture-required',
            '--disable-renderer-backgrounding', '--disable-background-timer-throttling', '--disable-backgrounding-occluded-windows',
        ],
    });
});

after(async () => {
    if (browser) await withTimeout(browser.close(), 10000, 'browser.close()').catch(() => {});
    if (web) await new Promise((r) => web.close(r));
});

const nickOf = (i) => `${(0xa0a0a0a0 + i * 0x01010101).toString(16)}`.slice(0, 8);

async function addParticipant(i) {
    const ctx = await browser.newContext({ permissions: ['camera', 'microphone'] });
    const page = await ctx.newPage();
    const p = { idx: i, nick: nickOf(i), page, ctx, errors: [], left: false };
    page.on('pageerror', (e) => p.errors.push(`pageerror: ${e}`));
    page.on('console', (m) => { if (m.type() === 'error') p.errors.push(`console: ${m.text()}`); });
    await page.goto(`${webBase}/`);
    parts.push(p);
    const opts = {
        wsUrl: `${srv.server.wsUrl}?room=e2emedia`, domain: DOMAIN, room: ROOM, nick: p.nick,
        serviceUrl: TRANSPORT === 'bosh' ? `${srv.server.boshUrl}?room=e2emedia` : null,
        p2p: P2P, iceServers: P2P && STUN ? [{ urls: `stun:127.0.0.1:${stunNat.port}` }] : [],
        // SSRC-signalled simulcast only where lib-jitsi-meet uses it (VP8/H264); AV1/VP9 get one stream.
        json: JSON_IDX.has(i), simulcast: SIMULCAST && ['VP8', 'H264'].includes(CODEC), videoCodec: CODEC, trace: process.env.E2E_TRACE === '1',
        dropExt: (process.env.E2E_DROP_EXT || '').split(',').filter(Boolean), // diagnostics: header extensions to refuse
        width: Number(process.env.E2E_WIDTH || 1280), height: Number(process.env.E2E_HEIGHT || 720),
    };
    p.start = await withTimeout(page.evaluate((o) => window.meet.start(o), opts), 30000, `participant ${p.nick} start`);
    assert.equal(p.start.transport, TRANSPORT, `participant ${p.nick} connected over ${p.start.transport}, expected ${TRANSPORT}`);
    return p;
}

const stats = (p) => withTimeout(p.page.evaluate(() => window.meet.stats()), 10000, `stats of ${p.nick}`);
const debugOf = (p) => withTimeout(p.page.evaluate(() => window.meet.debug()), 10000, `debug of ${p.nick}`).catch((e) => ({ error: String(e) }));

// For every participant in `who`, the remote sources (by owner) it must receive.
function flowsOf(s, owner) {
    const mine = s.inbound.filter((i) => i.owner === owner);
    return { video: mine.filter((i) => i.kind === 'video'), audio: mine.filter((i) => i.kind === 'audio') };
}
const sum = (arr, k) => arr.reduce((a, x) => a + (x[k] || 0), 0);

/**
 * Wait until each active participant decodes video and receives audio from every other active
 * participant, growing over WINDOW_MS. Returns the last per-participant stats.
 */
async function expectMedia(t, label) {
    const active = parts.filter((p) => !p.left);
    const deadline = Date.now() + MEDIA_TIMEOUT_MS;
    let last = null;
    let why = '';
    while (Date.now() < deadline) {
        const s0 = await Promise.all(active.map(stats));
        await sleep(WINDOW_MS);
        const s1 = await Promise.all(active.map(stats));
        last = s1;
        const problems = [];
        active.forEach((p, k) => {
            for (const o of active) {
                if (o === p) continue;
                const a = flowsOf(s0[k], o.nick);
                const b = flowsOf(s1[k], o.nick);
                const dv = sum(b.video, 'framesDecoded') - sum(a.video, 'framesDecoded');
                const da = sum(b.audio, 'totalSamplesReceived') - sum(a.audio, 'totalSamplesReceived');
                const dpa = sum(b.audio, 'packetsReceived') - sum(a.audio, 'packetsReceived');
                if (!(dv > 0)) problems.push(`${p.nick} ← ${o.nick}: video framesDecoded +${dv} (${b.video.length} video stream(s), packets ${sum(b.video, 'packetsReceived')})`);
                if (!(da > 0 && dpa > 0)) problems.push(`${p.nick} ← ${o.nick}: audio samples +${da}, packets +${dpa} (${b.audio.length} audio stream(s))`);
            }
        });
        if (!problems.length) {
            const summary = active.map((p, k) => `${p.nick}: ` + active.filter((o) => o !== p).map((o) => {
                const v = flowsOf(last[k], o.nick).video[0] || {};
                return `${o.nick} ${v.codec || '?'} ${v.frameWidth}x${v.frameHeight}@${v.framesPerSecond ?? '?'}fps`;
            }).join(', '));
            t.diagnostic(`${label}: media flows; ${summary.join(' | ')}`);
            t.diagnostic(`${label}: senders: ${active.map((p, k) => {
                const s = last[k];
                const v = s.outbound.filter((o) => o.kind === 'video').map((o) => `${o.ssrc}/${o.rtxSsrc} ${o.frameWidth}x${o.frameHeight}@${o.framesPerSecond ?? 0}fps`).join(' ');
                return `${p.nick} bwe=${Math.round((s.pair?.availableOutgoingBitrate || 0) / 1000)}kbps [${v}]${s.unsignalledOutbound?.length ? ` UNSIGNALLED ${s.unsignalledOutbound.join(',')}` : ''}`;
            }).join(' | ')}`);
            return last;
        }
        why = problems.join('\n');
    }
    throw new Error(`${label}: media did not flow within ${MEDIA_TIMEOUT_MS} ms:\n${why}\n${await report(last)}`);
}

async function report(lastStats) {
    const out = [];
    const dump = { participants: [] };
    for (const p of parts) {
        const d = await debugOf(p);
        const s = p.left ? null : await stats(p).catch((e) => ({ error: String(e) }));
        dump.participants.push({ nick: p.nick, left: p.left, pageErrors: p.errors, stats: s, debug: d });
        out.push(`==== participant ${p.nick}${p.left ? ' (left)' : ''} jid=${d.jid}`);
        if (s && !s.error) {
            if (s.unsignalledOutbound?.length) out.push(`  SENDING ON UNSIGNALLED SSRCs: ${s.unsignalledOutbound.join(', ')}`);
            out.push(`  pc=${s.pc} ice=${s.ice} dtls=${s.dtls} pair=${JSON.stringify(s.pair)} transport=${JSON.stringify(s.transport)}`);
            for (const i of s.inbound) out.push(`  in  ${i.kind} mid=${i.mid} owner=${i.owner} ssrc=${i.ssrc} codec=${i.codec} pkts=${i.packetsReceived} lost=${i.packetsLost} bytes=${i.bytesReceived} framesRx=${i.framesReceived} decoded=${i.framesDecoded} key=${i.keyFramesDecoded} ${i.frameWidth}x${i.frameHeight} samples=${i.totalSamplesReceived} nack=${i.nackCount} pli=${i.pliCount}`);
            for (const o of s.outbound) out.push(`  out ${o.kind} mid=${o.mid} ssrc=${o.ssrc} codec=${o.codec} pkts=${o.packetsSent} frames=${o.framesEncoded} ${o.frameWidth}x${o.frameHeight} active=${o.active} ql=${o.qualityLimitationReason} sm=${o.scalabilityMode} nack=${o.nackCount} pli=${o.pliCount}`);
            for (const r of s.remoteInbound || []) out.push(`  bridge RR for ${r.kind} ssrc=${r.ssrc}: lost=${r.packetsLost} fractionLost=${r.fractionLost} rtt=${r.roundTripTime} jitter=${r.jitter} reports=${r.reports}`);
            if (s.pairs) out.push(`  pairs ${JSON.stringify(s.pairs)}`);
        } else if (s) {
            out.push(`  stats: ${s.error}`);
        }
        if (d.errors && d.errors.length) out.push(`  client errors:\n    ${d.errors.join('\n    ')}`);
        if (p.errors.length) out.push(`  page errors:\n    ${p.errors.slice(-10).join('\n    ')}`);
        if (d.mlines) out.push(`  m-lines: ${d.mlines.map((m) => `${m.mid}:${m.media}${m.main ? '*' : ''}:${m.owner}:${m.dir}:${(m.ssrcs || []).join('/')}`).join(' ')}`);
        if (d.channel) out.push(`  bridge channel ${d.channel.url} open=${d.channel.open} last msgs: ${(d.channel.received || []).slice(-3).join(' ')}`);
        if (d.log) out.push(`  log tail:\n    ${d.log.slice(-25).join('\n    ')}`);
        if (d.jingleIn) out.push(`  jingle received (first 3000 chars of each):\n    ${d.jingleIn.map((x) => x.slice(0, 3000)).join('\n    ')}`);
    }
    try {
        const dir = path.join(TESTS_DIR, '.logs');
        mkdirSync(dir, { recursive: true });
        const f = path.join(dir, `e2e-media-${process.pid}.json`);
        writeFileSync(f, JSON.stringify(dump, null, 1));
        out.push(`(full dump incl. SDP offers/answers: ${f})`);
    } catch { /* best effort */ }
    out.push(`--- meetd log tail ---\n${srv.server ? srv.server.logTail(120) : ''}`);
    return out.join('\n');
}

function median(xs) {
    const s = [...xs].sort((a, b) => a - b);
    return s.length ? (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : NaN;
}

// Where a join's time goes: ms after XMPP connect of each client-side milestone.
function phases(t) {
    const names = ['joined', 'sessionInitiate', 'acceptSent', 'acceptAcked', 'iceConnected', 'pcConnected', 'firstAudio', 'firstVideoFrame'];
    return names.filter((n) => t[n]).map((n) => `${n}=${Math.round(t[n] - t.connected)}`).join(' ');
}

async function joinTimes() {
    const out = [];
    for (const p of parts.filter((x) => !x.left)) {
        const d = await debugOf(p);
        if (d.t && d.t.connected && d.t.firstVideoFrame) out.push({ nick: p.nick, ms: Math.round(d.t.firstVideoFrame - d.t.connected), t: d.t });
    }
    return out;
}

// Failing steps leave the following ones pointless.
let broken = null;
const step = (name, fn) => test(name, srv.wrap(async (t) => {
    if (broken) return t.skip(`earlier step failed: ${broken}`);
    try {
        await fn(t);
    } catch (e) {
        broken = name;
        throw e;
    }
}));

// A plain STUN Binding request (RFC 5389, no USERNAME) to meetd's media port from Node; returns
// the XOR-MAPPED-ADDRESS of the answer and our own address.
async function stunProbe(port) {
    const sock = dgram.createSocket('udp4');
    try {
        await new Promise((r) => sock.bind(0, '127.0.0.1', r));
        const tid = randomBytes(12);
        const req = Buffer.concat([Buffer.from([0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42]), tid]);
        const answer = new Promise((resolve) => sock.on('message', (m) => resolve(m)));
        let resp = null;
        for (let i = 0; i < 5 && !resp; i++) {
            sock.send(req, port, '127.0.0.1');
            resp = await Promise.race([answer, sleep(500).then(() => null)]);
        }
        if (!resp) throw new Error(`no STUN answer from 127.0.0.1:${port}`);
        assert.equal(resp.readUInt16BE(0), 0x0101, `STUN answer type 0x${resp.readUInt16BE(0).toString(16)}, expected Binding success 0x0101`);
        assert.ok(resp.subarray(8, 20).equals(tid), 'STUN answer transaction id differs');
        let mapped = null;
        for (let i = 20; i + 4 <= resp.length;) {
            const ty = resp.readUInt16BE(i);
            const len = resp.readUInt16BE(i + 2);
            if (ty === 0x0020 && resp[i + 5] === 0x01) {
                const xport = resp.readUInt16BE(i + 6) ^ 0x2112;
                const ip = [0, 1, 2, 3].map((k) => resp[i + 8 + k] ^ [0x21, 0x12, 0xa4, 0x42][k]).join('.');
                mapped = `${ip}:${xport}`;
            }
            i += 4 + Math.ceil(len / 4) * 4;
        }
        return { mapped, local: `127.0.0.1:${sock.address().port}` };
    } finally {
        sock.close();
    }
}

// A port-translating UDP forwarder (NAT) in front of meetd's STUN: every client address gets
// its own outbound socket; answers from meetd go back to the client from the front port.
let stunNat = null;
async function startStunNat(target) {
    const front = dgram.createSocket('udp4');
    await new Promise((r) => front.bind(0, '127.0.0.1', r));
    const nat = { port: front.address().port, requests: 0, answers: 0, mapped: new Map(), answered: new Set() };
    const outs = new Map();
    front.on('message', (msg, rinfo) => {
        const key = `${rinfo.address}:${rinfo.port}`;
        let o = outs.get(key);
        if (!o) {
            const sock = dgram.createSocket('udp4');
            o = { sock, ready: new Promise((r) => sock.bind(0, '127.0.0.1', r)) };
            outs.set(key, o);
            sock.on('message', (resp, from) => {
                if (from.port !== target) return;
                nat.answers++;
                nat.answered.add(key);
                front.send(resp, rinfo.port, rinfo.address);
            });
            o.ready.then(() => nat.mapped.set(key, `127.0.0.1:${sock.address().port}`));
        }
        o.ready.then(() => {
            nat.requests++;
            o.sock.send(msg, target, '127.0.0.1');
        });
    });
    nat.close = () => {
        front.close();
        for (const o of outs.values()) o.sock.close();
    };
    return nat;
}

const p2pInfo = (p) => withTimeout(p.page.evaluate(() => window.meet.p2pInfo()), 10000, `p2p info of ${p.nick}`);

if (P2P) {
    if (STUN) {
        step('p2p: meetd answers a plain STUN binding request on its media port', async (t) => {
            const r = await stunProbe(srv.server.mediaPort);
            t.diagnostic(`STUN 127.0.0.1:${srv.server.mediaPort}: mapped ${r.mapped} (we sent from ${r.local})`);
            assert.equal(r.mapped, r.local, 'XOR-MAPPED-ADDRESS must be the address we sent from');
        });
    }

    step('p2p: two participants, Jingle through the MUC, audio + video directly between the browsers', async (t) => {
        if (STUN) {
            stunNat = await startStunNat(srv.server.mediaPort);
            srv.defer(() => stunNat.close());
        }
        await addParticipant(0);
        await addParticipant(1);
        // lib-jitsi-meet: the participant with the smaller endpoint id initiates.
        const [ini, res] = [...parts].sort((a, b) => (a.nick < b.nick ? -1 : 1));
        await withTimeout(ini.page.evaluate((n) => window.meet.startP2P(n), res.nick), 15000, 'startP2P');
        const last = await expectMedia(t, 'p2p pair');
        const [ii, ri] = [await p2pInfo(ini), await p2pInfo(res)];
        const [di, dr] = [await debugOf(ini), await debugOf(res)];
        const occ = (p) => `${ROOM}/${p.nick}`;
        const problems = [];
        const expect = (ok, what) => { if (!ok) problems.push(what); };
        // Signalling went participant ⇄ participant through the MUC, with occupant JIDs on both ends.
        expect(ri && ri.initiateFrom === occ(ini), `responder saw session-initiate from ${ri && ri.initiateFrom}, expected ${occ(ini)}`);
        expect(ii && ii.acceptFrom === occ(res), `initiator saw session-accept from ${ii && ii.acceptFrom}, expected ${occ(res)}`);
        for (const [who, info, peer] of [[ini, ii, res], [res, ri, ini]]) {
            for (const a of info.acks) expect(a.type === 'result' && a.from === occ(peer), `${who.nick}: ${a.what} answered ${a.type} from ${a.from}, expected result from ${occ(peer)}`);
            expect(info.acks.some((a) => a.what === 'transport-info'), `${who.nick}: no transport-info acknowledged`);
            expect(info.remoteCandidates.length > 0, `${who.nick}: received no candidates in transport-info`);
            expect(info.candidateErrors.length === 0, `${who.nick}: icecandidateerror ${JSON.stringify(info.candidateErrors)}`);
        }
        // The focus stayed out (min_participants = 3): no Jingle from focus at all.
        for (const d of [di, dr]) expect(!d.jingleIn.some((x) => x.includes(`from="${ROOM}/focus"`)), `${d.nick} got Jingle from the focus`);
        // Media path: the selected pair is 127.0.0.1 ⇄ 127.0.0.1 between the two browsers, never meetd's media port.
        const [si, sr] = [last[parts.indexOf(ini)], last[parts.indexOf(res)]];
        expect(si.pair && sr.pair && si.pair.remote.split(' ')[0] === sr.pair.local.split(' ')[0] && sr.pair.remote.split(' ')[0] === si.pair.local.split(' ')[0],
            `selected pairs do not mirror each other: ${JSON.stringify(si.pair)} / ${JSON.stringify(sr.pair)}`);
        for (const s of [si, sr]) expect(s.pair && !s.pair.remote.startsWith(`127.0.0.1:${srv.server.mediaPort} `) && s.pair.remote.startsWith('127.0.0.1:'), `${s.nick}: remote candidate ${s.pair && s.pair.remote}`);
        const gatherMs = (d) => (d.t.p2pGathered ? Math.round(d.t.p2pGathered - (d.t.p2pStart || d.t.sessionInitiate)) : NaN);
        const types = (info) => [...new Set(info.localCandidates.map((c) => c.split(' ')[7]))].join(',');
        t.diagnostic(`p2p: ${ini.nick} initiated; pair ${si.pair && si.pair.local} ⇄ ${si.pair && si.pair.remote}; local candidate types ${ini.nick}: ${types(ii)}, ${res.nick}: ${types(ri)}; STUN ${STUN ? `stun:127.0.0.1:${stunNat.port} → meetd :${srv.server.mediaPort}, ${stunNat.requests} requests, ${stunNat.answers} answers` : 'off'}, icecandidateerrors ${ii.candidateErrors.length + ri.candidateErrors.length}; gathering ${ii.iceGatheringState} in ${gatherMs(di)} ms / ${ri.iceGatheringState} in ${gatherMs(dr)} ms`);
        if (STUN) {
            // srflx a.b.c.d:P raddr 127.0.0.1 rport H: P must be what meetd mapped for host port H.
            // Only the initiator surely has one: it gathers before it knows any remote candidate.
            // The responder already has the initiator's host candidate when it starts gathering,
            // its host pair on loopback is writable within a millisecond, and Chromium then stops
            // gathering and ignores the STUN answer still on its way.
            const unanswered = [...stunNat.mapped.keys()].filter((k) => !stunNat.answered.has(k));
            expect(stunNat.requests > 0 && !unanswered.length, `meetd answered ${stunNat.answers} of ${stunNat.requests} STUN requests; never answered: ${unanswered.join(', ')}`);
            for (const [who, info] of [[ini, ii], [res, ri]]) {
                const srflx = info.localCandidates.map((c) => c.split(' ')).filter((c) => c[7] === 'srflx');
                expect(who !== ini || srflx.length > 0, `${who.nick}: no srflx candidate (STUN via meetd: ${stunNat.requests} requests, ${stunNat.answers} answers)`);
                for (const c of srflx) {
                    const raddr = `${c[c.indexOf('raddr') + 1]}:${c[c.indexOf('rport') + 1]}`;
                    expect(stunNat.mapped.get(raddr) === `${c[4]}:${c[5]}`, `${who.nick}: srflx ${c[4]}:${c[5]} for base ${raddr}, meetd should have mapped ${stunNat.mapped.get(raddr)}`);
                }
                t.diagnostic(`${who.nick} (${who === ini ? 'initiator' : 'responder'}) srflx: ${srflx.map((c) => `${c[4]}:${c[5]} (base ${c[c.indexOf('raddr') + 1]}:${c[c.indexOf('rport') + 1]})`).join(', ') || 'none (gathering stopped once connected)'}`);
            }
        }
        if (problems.length) throw new Error(`p2p checks failed:\n${problems.join('\n')}\n${await report(last)}`);
        const jt = await joinTimes();
        const ms = jt.map((x) => x.ms);
        process.stdout.write(`# e2e join time (XMPP connect → first decoded remote video frame): median ${median(ms)} ms [${ms.join(', ')}]\n`);
    });
} else {
    step('two participants: audio + video both ways through the bridge', async (t) => {
        await addParticipant(0);
        await addParticipant(1);
        await expectMedia(t, '2 participants');
        if (TRANSPORT === 'bosh') {
            const ds = await Promise.all(parts.map(debugOf));
            t.diagnostic(`BOSH: ${ds.map((d) => `${d.nick} ${d.transport}, ${d.boshBodies} <body/> responses`).join('; ')}`);
            for (const d of ds) assert.ok(d.transport === 'bosh' && d.boshBodies > 0, `${d.nick} is not on BOSH (${d.transport}, ${d.boshBodies} bodies)`);
        }
    });

    // Chrome starts its estimate at 300 kbit/s; without the bridge's transport-cc feedback it
    // never grows (it reached 4–5 Mbit/s within seconds on an idle machine).
    step('bridge feedback: receiver reports with round-trip times, and transport-cc lets each sender\'s estimate pass 500 kbit/s', async (t) => {
        const deadline = Date.now() + 20000;
        let bad = [];
        while (Date.now() < deadline) {
            const all = await Promise.all(parts.filter((p) => !p.left).map(stats));
            bad = all.filter((s) => {
                const rr = (s.remoteInbound || []).filter((r) => r.kind === 'video' && r.reports > 0 && r.roundTripTime !== undefined);
                return rr.length === 0 || !(s.pair && s.pair.availableOutgoingBitrate > 5e5);
            }).map((s) => `${s.nick} (RRs ${JSON.stringify(s.remoteInbound || [])}, bwe ${s.pair && s.pair.availableOutgoingBitrate})`);
            if (bad.length === 0) {
                t.diagnostic(all.map((s) => `${s.nick}: bwe ${Math.round(s.pair.availableOutgoingBitrate / 1000)} kbps, rtt ${(s.remoteInbound || []).map((r) => r.roundTripTime).join('/')}`).join(' | '));
                return;
            }
            await sleep(500);
        }
        throw new Error(`bridge feedback missing: ${bad.join('; ')}`);
    });

    step('sender reports: each browser takes the bridge\'s RTCP SRs for the audio and video it receives', async (t) => {
        const deadline = Date.now() + 8000;
        let missing = [];
        while (Date.now() < deadline) {
            const all = await Promise.all(parts.filter((p) => !p.left).map(stats));
            missing = all.filter((s) => !['audio', 'video'].every((k) => (s.remoteOutbound || []).some((r) => r.kind === k && r.reportsSent > 0))).map((s) => s.nick);
            if (missing.length === 0) {
                t.diagnostic(all.map((s) => `${s.nick}: ${(s.remoteOutbound || []).map((r) => `${r.kind} ${r.ssrc} reports=${r.reportsSent} pkts=${r.packetsSent}`).join(', ')}`).join(' | '));
                return;
            }
            await sleep(500);
        }
        throw new Error(`no sender reports from the bridge at ${missing.join(', ')}\n${await report()}`);
    });

    if (N >= 3) {
        step('a third participant joins: everyone decodes video and audio from both others', async (t) => {
            await addParticipant(2);
            await expectMedia(t, '3 participants');
            const jt = await joinTimes();
            results.joinMs = jt;
            const ms = jt.map((x) => x.ms);
            t.diagnostic(`XMPP connect → first decoded remote video frame: median ${median(ms)} ms (${jt.map((x) => `${x.nick} ${x.ms} ms`).join(', ')}; the first participant waits for the second)`);
            process.stdout.write(`# e2e join time (XMPP connect → first decoded remote video frame): median ${median(ms)} ms [${ms.join(', ')}]\n`);
            t.diagnostic(`phases (ms after XMPP connect): ${jt.map((x) => `${x.nick} ${phases(x.t)}`).join(' | ')}`);
        });

        step('one participant leaves: the other two keep receiving from each other', async (t) => {
            const leaver = parts[1];
            await withTimeout(leaver.page.evaluate(() => window.meet.leave()), 10000, 'leave');
            leaver.left = true;
            await leaver.ctx.close();
            await sleep(1000);
            await expectMedia(t, 'after one left');
        });
    }

    step('ConnectionStats: each receiver gets the bridge\'s estimate of its downlink (every 10 s)', async (t) => {
        const deadline = Date.now() + 15000;
        let ds = [];
        while (Date.now() < deadline) {
            ds = await Promise.all(parts.filter((p) => !p.left).map(debugOf));
            if (ds.every((d) => d.connectionStats && d.connectionStats.estimatedDownlinkBandwidth > 100000)) {
                t.diagnostic(ds.map((d) => `${d.nick}: ${Math.round(d.connectionStats.estimatedDownlinkBandwidth / 1000)} kbps`).join(' | '));
                return;
            }
            await sleep(1000);
        }
        throw new Error(`no plausible ConnectionStats: ${ds.map((d) => `${d.nick} ${JSON.stringify(d.connectionStats)}`).join('; ')}`);
    });

    step('simulcast: a receiver asking for 720p gets a higher layer', async (t) => {
        if (!SIMULCAST || !['VP8', 'H264'].includes(CODEC)) return t.skip('no simulcast in this pass (AV1/VP9 send one stream)');
        const [rx, tx] = parts.filter((p) => !p.left);
        const before = flowsOf(await stats(rx), tx.nick).video[0];
        await rx.page.evaluate((n) => window.meet.constraints({ constraints: { [`${n}-v0`]: { maxHeight: 720 } }, defaultConstraints: { maxHeight: 180 } }), tx.nick);
        const deadline = Date.now() + 20000;
        let v = before;
        while (Date.now() < deadline) {
            await sleep(1000);
            v = flowsOf(await stats(rx), tx.nick).video[0];
            if (v && before && v.frameHeight > before.frameHeight) break;
        }
        const txOut = (await stats(tx)).outbound.filter((o) => o.kind === 'video').map((o) => `${o.ssrc} ${o.frameWidth}x${o.frameHeight} pkts=${o.packetsSent} ql=${o.qualityLimitationReason}`);
        t.diagnostic(`${rx.nick} ← ${tx.nick}: ${before?.frameWidth}x${before?.frameHeight} → ${v?.frameWidth}x${v?.frameHeight}; sender layers: ${txOut.join(' | ')}`);
        if (!(v && before && v.frameHeight > before.frameHeight)) {
            throw new Error(`resolution did not go up after maxHeight 720: ${before?.frameHeight} → ${v?.frameHeight}\n${await report()}`);
        }
    });

    step('bandwidth: a receiver behind a 400 kbit/s link gets a lower layer, and a higher one again once it clears', async (t) => {
        if (!SHAPE) return t.skip('only in the vp8 pass (E2E_SHAPE=1)');
        if (!SIMULCAST || !['VP8', 'H264'].includes(CODEC)) return t.skip('no simulcast in this pass');
        const [rx, tx] = parts.filter((p) => !p.left);
        const video = async () => flowsOf(await stats(rx), tx.nick).video[0];
        const port = Number(String((await stats(rx)).pair?.local || '').split(' ')[0].split(':').pop());
        assert.ok(port > 0, 'the receiver\'s local port');
        const before = await video();
        // Everything to the receiver's UDP port through a 400 kbit/s class with a short queue.
        try {
            shapePort(port, '400kbit');
        } catch (e) {
            unshape();
            return t.skip(`tc htb unavailable here: ${String(e.stderr || e).trim()}`);
        }
        const t0 = Date.now();
        let low;
        try {
            const deadline = Date.now() + 30000;
            let prev = before;
            while (Date.now() < deadline) {
                await sleep(1000);
                const v = await video();
                // A lower layer, and still decoding.
                if (v && v.frameHeight < before.frameHeight && prev && v.framesDecoded > prev.framesDecoded) {
                    low = v;
                    break;
                }
                prev = v;
            }
        } finally {
            unshape();
        }
        const shaped = Date.now() - t0;
        if (!low) throw new Error(`still ${before?.frameHeight}p behind 400 kbit/s after ${shaped} ms\n${await report()}`);
        const t1 = Date.now();
        const deadline = Date.now() + 60000;
        let v = low;
        while (Date.now() < deadline) {
            await sleep(1000);
            v = await video();
            if (v && v.frameHeight > low.frameHeight) break;
        }
        const d = await debugOf(rx);
        t.diagnostic(`${rx.nick} ← ${tx.nick}: ${before.frameHeight}p → ${low.frameHeight}p ${shaped} ms after shaping to 400 kbit/s → ${v?.frameHeight}p ${Date.now() - t1} ms after it cleared; last ConnectionStats ${d.connectionStats?.estimatedDownlinkBandwidth}`);
        if (!(v && v.frameHeight > low.frameHeight)) {
            throw new Error(`no higher layer within 60 s of the link clearing: ${low.frameHeight}p → ${v?.frameHeight}p\n${await report()}`);
        }
    });
}

if (process.env.E2E_DUMP === '1') {
    test('dump (E2E_DUMP=1): per-participant stats and signalling', async (t) => {
        const r = await report();
        process.stdout.write(r.split('\n').filter((l) => !l.includes('<iq')).join('\n') + '\n');
    });
}
