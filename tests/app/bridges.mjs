// Helpers of the tests that run bridge-only meetds next to the app's meetd (the focus's
// bridge pool, cascading).
import { assert, sleep } from './lib.mjs';
import { startServer } from '../lib/server.mjs';

/** A Prometheus gauge of the meetd at `base`. */
export async function gauge(base, name) {
    const m = await (await fetch(`${base}/metrics`)).text();
    return Number(m.match(new RegExp(`^${name} (\\d+)$`, 'm'))?.[1] ?? NaN);
}

/**
 * A bridge-only meetd (`--role bridge`) with bridge id `id`, logged in to `app`'s meetd;
 * `extra`: more of its meetd.toml.
 */
export function bridgeOnly(app, prefix, id, extra = '') {
    return startServer({
        name: `${prefix}-${id}`,
        config: `[bridge]\nid = "${id}"\nxmpp_url = "${app.server.wsUrl}"\nxmpp_password = "jvbpass"\n${extra}`,
        extraArgs: ['--role', 'bridge', '--advertise-ip', '127.0.0.1'],
    });
}

/** Wait until `n` bridges have joined the focus's brewery. */
export async function joinedBrewery(app, n) {
    const deadline = Date.now() + 15000;
    const count = () => (app.server.logTail(2000).match(/bridge pool: a bridge joined the brewery/g) ?? []).length;
    while (count() < n && Date.now() < deadline) await sleep(200);
    assert.ok(count() >= n, `${n} bridges in the brewery`);
}

/** The media port of the bridge `p`'s browser is connected to (its selected pair). */
export const bridgePort = (p) => p.waitFor(async () => {
    const pc = APP.conference._room.jvbJingleSession.peerconnection.peerconnection;
    const stats = [...(await pc.getStats()).values()];
    const t = stats.find((s) => s.type === 'transport' && s.selectedCandidatePairId);
    const pair = stats.find((s) => s.id === t?.selectedCandidatePairId);
    return stats.find((s) => s.id === pair?.remoteCandidateId)?.port;
}, 'the bridge connection', 15000);

/**
 * `name` joins `room` of `app` as a viewer (config.preferVisitor, after `hash`): the app is in
 * viewer mode and plays every one of `speakers` (video and audio).
 */
export async function joinViewer(app, room, name, hash, speakers) {
    const v = await app.join(room, { name, hash: `${hash}&config.preferVisitor=true` });
    await v.waitFor(() => APP.store.getState()['features/visitors'].iAmVisitor === true, 'viewer mode', 15000);
    for (const s of speakers) await v.waitVideoFrom(s, 30000, { audio: true });
    return v;
}

/**
 * Run `fn(bridges)` with bridge-only meetds of `app`'s brewery, one per `[id, extra toml]` of
 * `specs`, all in the brewery first and stopped after; a failure carries their log tails.
 */
export async function withBridges(app, prefix, specs, fn) {
    const bridges = [];
    try {
        for (const [id, extra] of specs) bridges.push(await bridgeOnly(app, prefix, id, extra));
        await joinedBrewery(app, bridges.length);
        return await fn(bridges);
    } catch (e) {
        e.message += bridges.map((b, i) => `\n--- ${specs[i][0]} ---\n${b.logTail(40)}`).join('');
        throw e;
    } finally {
        for (const b of bridges) await b.stop();
    }
}
