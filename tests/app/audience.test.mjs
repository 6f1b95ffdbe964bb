// Hundreds of viewers of one speaker (issue 17, docs/visitors.md, Measured): a bridge-only meetd in
// the focus's pool serves one meeting of the official web app — Alice speaks, Bob listens —
// to two viewers of the app (config.preferVisitor) and to 200 simulated visitors
// (examples/audience.rs: receive-only str0m clients that a service account adds to the same
// conference over Colibri2, as the focus adds the app's viewers, each asking for 720p over its
// bridge channel). Every simulated visitor gets Alice's audio and video, the app's viewers
// keep playing her, and the test reports the bridge's CPU and memory per visitor (the
// bridge-only process, with the two app viewers' cost measured first as the baseline).
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { useApp, appTest, assert, sleep } from './lib.mjs';
import { gauge, bridgeOnly as bridgeOnlyOf, joinedBrewery as joinedBreweryOf, joinViewer } from './bridges.mjs';
import { MEETD_BIN, AUTH_DOMAIN } from '../lib/server.mjs';

const N = Number(process.env.AUDIENCE_VISITORS ?? 200);
const WINDOW_S = 15;

const app = useApp({
    name: 'app-audience',
    config: 'bridge_brewery = "jvbbrewery"\nuse_local_bridge = false\n\n[visitors]\nenabled = true\n',
});

/** The simulated audience, built next to the meetd under test. */
function audienceBin() {
    const bin = path.join(path.dirname(MEETD_BIN), 'examples', 'audience');
    if (!existsSync(bin)) {
        const release = path.basename(path.dirname(MEETD_BIN)) === 'release' ? ['--release'] : [];
        const r = spawnSync('cargo', ['build', '--example', 'audience', ...release], { stdio: 'inherit' });
        assert.equal(r.status, 0, 'cargo build --example audience');
    }
    return bin;
}

/** CPU seconds (user + system) and resident memory (KiB) of a process. */
function usage(pid) {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    const rss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
    return { cpu: (Number(stat[11]) + Number(stat[12])) / 100, rss };
}

/** The bridge's CPU (share of one core) and memory over `s` seconds. */
async function measure(pid, s) {
    const u0 = usage(pid);
    await sleep(s * 1000);
    const u1 = usage(pid);
    return { cpu: (u1.cpu - u0.cpu) / s, rss: u1.rss };
}

appTest(`${N} simulated visitors and two viewers of the app watch one speaker on a bridge of the pool`, app.wrap(async () => {
    await app.server.userAdd(`jvb@${AUTH_DOMAIN}`, 'jvbpass');
    await app.server.userAdd(`audience@${AUTH_DOMAIN}`, 'audiencepass');
    const bin = audienceBin();
    const bridge = await bridgeOnlyOf(app, 'app-audience', 'jvb2', `max_endpoints_per_conference = ${N + 50}\n`);
    let swarm;
    try {
        await joinedBreweryOf(app, 1);
        const hash = 'config.p2p.enabled=false';
        const a = await app.join('lecture', { name: 'Alice', hash });
        const b = await app.join('lecture', { name: 'Bob', hash, startAudioMuted: true, startVideoMuted: true });
        await b.waitVideoFrom(a, 30000, { audio: true });
        const viewers = [];
        for (const name of ['Vera', 'Walt']) {
            viewers.push(await joinViewer(app, 'lecture', name, hash, [a]));
        }
        const meetingId = await a.eval(() => APP.conference._room.getMeetingUniqueId());
        assert.ok(meetingId, 'the meeting id');
        const pid = bridge.proc.pid;
        const base = await measure(pid, WINDOW_S);
        const baseEndpoints = await gauge(bridge.httpBase, 'meetd_media_endpoints');
        console.log(`# audience: bridge with Alice, Bob and two viewers: ${(base.cpu * 100).toFixed(1)}% of one core, RSS ${base.rss} KiB, ${baseEndpoints} endpoints`);

        // The simulated audience joins the same conference on the same bridge.
        const t0 = Date.now();
        swarm = spawn(bin, ['--ws', app.server.wsUrl, '--domain', AUTH_DOMAIN, '--user', 'audience',
            '--password', 'audiencepass', '--bridge', `jvb@${AUTH_DOMAIN}/jvb2`, '--meeting-id', meetingId,
            '--visitors', String(N), '--height', '720', '--seconds', '400'], { stdio: ['pipe', 'pipe', 'pipe'] });
        const reports = [];
        let stderr = '';
        swarm.stderr.on('data', (d) => { stderr += d; });
        readline.createInterface({ input: swarm.stdout }).on('line', (l) => {
            try { reports.push(JSON.parse(l)); } catch { stderr += `${l}\n`; }
        });
        const exited = new Promise((r) => swarm.once('exit', r));
        const last = () => reports[reports.length - 1] ?? {};
        const deadline = Date.now() + 120000;
        while (!(last().connected === N && last().receiving === N && last().with_audio === N) && Date.now() < deadline) {
            if (swarm.exitCode !== null) break;
            await sleep(500);
        }
        assert.equal(last().connected, N, `all visitors connected: ${JSON.stringify(last())}\n${stderr}`);
        assert.equal(last().receiving, N, `all visitors receive Alice's video: ${JSON.stringify(last())}`);
        assert.equal(last().with_audio, N, `all visitors got Alice's audio: ${JSON.stringify(last())}`);
        console.log(`# audience: ${N} visitors connected and receiving ${Date.now() - t0} ms after the first request (${stderr.trim()})`);
        const endpoints = await gauge(bridge.httpBase, 'meetd_media_endpoints');
        assert.equal(endpoints, baseEndpoints + N, 'the bridge holds the simulated visitors');

        const p0 = last().packets;
        const loaded = await measure(pid, WINDOW_S);
        const rate = (last().packets - p0) / WINDOW_S;
        const per = (loaded.cpu - base.cpu) / N;
        console.log(`# audience: bridge with ${N} more visitors: ${(loaded.cpu * 100).toFixed(1)}% of one core, `
            + `${(per * 100).toFixed(3)}% of a core per visitor, RSS ${loaded.rss} KiB (+${Math.round((loaded.rss - base.rss) / N)} KiB per visitor); `
            + `${Math.round(rate)} packets/s received by the simulated visitors (${Math.round(rate / N)} each), `
            + `${last().channels} bridge channels open (${process.env.MEETD_BIN ? path.basename(path.dirname(MEETD_BIN)) : 'debug'} build)`);
        // "receiving" counts the visitors whose video grew within the last report's second: on
        // a starved machine (200 visitors, the bridge and four browsers on two cores) one second
        // can miss some, so every visitor has to be receiving again within a few seconds.
        const still = Date.now() + 15000;
        while (last().receiving !== N && Date.now() < still && swarm.exitCode === null) await sleep(250);
        assert.equal(last().receiving, N, `still all receiving: ${JSON.stringify(last())}`);
        // The app's viewers keep playing Alice with the audience on the bridge.
        for (const v of viewers) await v.waitVideoFrom(a, 20000, { audio: true });
        await b.waitVideoFrom(a, 20000, { audio: true });

        // The audience leaves: its endpoints are expired, the meeting goes on.
        swarm.stdin.end('stop\n');
        await Promise.race([exited, sleep(30000)]);
        assert.equal(swarm.exitCode, 0, `the audience exits cleanly: ${stderr}`);
        swarm = null;
        const after = await gauge(bridge.httpBase, 'meetd_media_endpoints');
        assert.equal(after, baseEndpoints, 'the simulated visitors are gone from the bridge');
        await viewers[0].waitVideoFrom(a, 20000, { audio: true });
        await app.leaveAll();
    } catch (e) {
        e.message += `\n--- jvb2 ---\n${bridge.logTail(40)}`;
        throw e;
    } finally {
        swarm?.kill('SIGKILL');
        await bridge.stop();
    }
}));
