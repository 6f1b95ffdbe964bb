// Colibri2 over XMPP (issue 17, docs/colibri2.md §1, §4): with [bridge] brewery set, meetd's
// bridge sits in jvbbrewery@internal-muc.<domain> with JVB's stats presence, and a Jicofo-like
// service account in the brewery allocates a conference and an endpoint on it by sending
// conference-modify to the bridge's occupant JID, as a stock Jicofo does, and gets the shapes
// Jicofo parses back: the endpoint's ICE transport, DTLS fingerprint, candidates and bridge
// channel URL, and the bridge's feedback sources. Anyone else is refused. A second meetd with
// --role bridge logs in to the first with a service account, joins the same brewery, and is
// driven the same way; when it stops, it leaves the brewery.
import WebSocket from 'ws';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { client, xml } from '@xmpp/client';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { useServer, startServer, runMeetd, freePort, freeUdpPort, DOMAIN, AUTH_DOMAIN, withTimeout } from '../lib/server.mjs';

globalThis.WebSocket ??= WebSocket;

const BREWERY = `jvbbrewery@internal-muc.${DOMAIN}`;
const NS_COLIBRI = 'http://jitsi.org/protocol/colibri';
const NS_C2 = 'jitsi:colibri2';
const NS_ICE = 'urn:xmpp:jingle:transports:ice-udp:1';

const srv = useServer({ name: 'colibri-xmpp', config: '[bridge]\nbrewery = "jvbbrewery"\nregion = "campus-a"\n' });
const clients = [];
srv.defer(async () => {
    for (const c of clients) await withTimeout(c.stop(), 3000, 'stop').catch(() => {});
});

async function login(opts) {
    const xmpp = client({ service: srv.server.wsUrl, ...opts });
    const presences = [];
    xmpp.on('error', () => {});
    xmpp.on('stanza', (st) => {
        if (st.is('presence')) presences.push(st);
    });
    await withTimeout(xmpp.start(), 15000, 'login');
    clients.push(xmpp);
    return { xmpp, presences };
}

/** The latest presence of `from` that `pred` accepts, waiting up to `ms`. */
async function presenceOf(c, from, pred, ms = 15000) {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
        const p = c.presences.filter((x) => x.attrs.from === from).pop();
        if (p && pred(p)) return p;
        await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`no such presence from ${from}: ${c.presences.filter((x) => x.attrs.from === from).map(String).join('\n')}`);
}

/** A Jicofo-like create of conference `meetingId` with endpoint `ep`. */
const createIq = (to, meetingId, ep) => xml('iq', { type: 'get', to, id: `c-${ep}` },
    xml('conference-modify', { xmlns: NS_C2, 'meeting-id': meetingId, name: `lecture@muc.${DOMAIN}`, create: 'true' },
        xml('endpoint', { id: ep, create: 'true', 'stats-id': 'Ann-1' },
            xml('media', { type: 'audio' },
                xml('payload-type', { xmlns: 'urn:xmpp:jingle:apps:rtp:1', id: '111', name: 'opus', clockrate: '48000', channels: '2' }),
                xml('rtp-hdrext', { xmlns: 'urn:xmpp:jingle:apps:rtp:rtp-hdrext:0', id: '1', uri: 'urn:ietf:params:rtp-hdrext:ssrc-audio-level' })),
            xml('transport', { 'ice-controlling': 'true' }),
            xml('capability', { name: 'source-names' }))));

test('a Jicofo in the brewery finds the bridge by its stats and allocates through Colibri2; strangers are refused', srv.wrap(async (t, server) => {
    await server.userAdd(`jicofo@${AUTH_DOMAIN}`, 'jicofopass');
    const jicofo = await login({ domain: AUTH_DOMAIN, username: 'jicofo', password: 'jicofopass', resource: 'jicofo' });
    await jicofo.xmpp.send(xml('presence', { to: `${BREWERY}/jicofo` }, xml('x', { xmlns: 'http://jabber.org/protocol/muc' })));
    const deadline = Date.now() + 10000;
    let bridge;
    while (!bridge && Date.now() < deadline) {
        bridge = jicofo.presences.find((p) => p.attrs.from === `${BREWERY}/jvb1` && p.getChild('stats', NS_COLIBRI));
        if (!bridge) await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(bridge, `the bridge's presence in the brewery: ${jicofo.presences.map((p) => p.attrs.from)}`);
    const stat = (n) => bridge.getChild('stats', NS_COLIBRI).getChildren('stat').find((s) => s.attrs.name === n)?.attrs.value;
    assert.ok(Number(stat('stress_level')) >= 0, `stress_level ${stat('stress_level')}`);
    assert.equal(stat('region'), 'campus-a');
    assert.equal(stat('graceful_shutdown'), 'false');
    assert.equal(stat('drain'), 'false');
    assert.ok(stat('version'));

    const meetingId = '0d3c6d7e-1111-4222-8333-944445555666';
    const create = createIq(`${BREWERY}/jvb1`, meetingId, 'f00d');
    const answer = await withTimeout(jicofo.xmpp.iqCaller.request(create, 10000), 11000, 'conference-modified');
    const modified = answer.getChild('conference-modified', NS_C2);
    assert.ok(modified, answer.toString());
    const ice = modified.getChild('endpoint').getChild('transport').getChild('transport', NS_ICE);
    assert.ok(ice.attrs.ufrag && ice.attrs.pwd, ice.toString());
    assert.equal(ice.getChild('fingerprint').attrs.hash, 'sha-256');
    assert.ok(ice.getChildren('candidate').some((c) => c.attrs.protocol === 'udp' && c.attrs.port), ice.toString());
    assert.match(ice.getChild('web-socket', NS_COLIBRI).attrs.url, /\/colibri-ws\/jvb1\/[0-9a-f]+\/f00d\?pwd=/);
    const feedback = modified.getChild('sources').getChildren('media-source').map((m) => m.attrs.id).sort();
    assert.deepEqual(feedback, ['jvb-a0', 'jvb-v0']);
    // The same conference again: the bridge's Colibri2 error, as Jicofo reads it.
    const again = await jicofo.xmpp.iqCaller.request(create, 10000).then(() => null, (e) => e);
    // (@xmpp/client's StanzaError: `element` is the <error/>, `application` its own condition.)
    assert.equal(again?.application?.attrs?.reason ?? again?.element?.getChild('error', NS_C2)?.attrs.reason,
        'conference_already_exists', String(again?.element ?? again));
    // Health check, then the conference ends.
    await jicofo.xmpp.iqCaller.request(xml('iq', { type: 'get', to: `${BREWERY}/jvb1` },
        xml('healthcheck', { xmlns: 'http://jitsi.org/protocol/healthcheck' })), 10000);
    await jicofo.xmpp.iqCaller.request(xml('iq', { type: 'get', to: `${BREWERY}/jvb1` },
        xml('conference-modify', { xmlns: NS_C2, 'meeting-id': meetingId, expire: 'true' })), 10000);

    // A web user who finds the bridge's own JID is refused.
    const guest = await login({ domain: DOMAIN });
    const refused = await guest.xmpp.iqCaller.request(xml('iq', { type: 'get', to: `jvb@${AUTH_DOMAIN}/jvb1` },
        xml('conference-modify', { xmlns: NS_C2, 'meeting-id': 'x', name: `y@muc.${DOMAIN}`, create: 'true' })), 10000)
        .then(() => null, (e) => e);
    assert.equal(refused?.condition, 'forbidden', String(refused));
}));

test('a bridge-only meetd (--role bridge) logs in to meetd, waits in its brewery, is driven there, and leaves when it stops', srv.wrap(async (t, server) => {
    await server.userAdd(`jvb@${AUTH_DOMAIN}`, 'jvbpass');
    await server.userAdd(`jicofo2@${AUTH_DOMAIN}`, 'jicofopass');
    const jicofo = await login({ domain: AUTH_DOMAIN, username: 'jicofo2', password: 'jicofopass', resource: 'jicofo2' });
    await jicofo.xmpp.send(xml('presence', { to: `${BREWERY}/jicofo2` }, xml('x', { xmlns: 'http://jabber.org/protocol/muc' })));
    const bridge = await startServer({
        name: 'bridge-only',
        config: `[bridge]\nid = "jvb2"\nxmpp_url = "${server.wsUrl}"\nxmpp_password = "jvbpass"\nregion = "campus-b"\n`,
        extraArgs: ['--role', 'bridge', '--advertise-ip', '127.0.0.1'],
    });
    try {
        const p = await presenceOf(jicofo, `${BREWERY}/jvb2`, (x) => x.getChild('stats', NS_COLIBRI));
        const region = p.getChild('stats', NS_COLIBRI).getChildren('stat').find((s) => s.attrs.name === 'region')?.attrs.value;
        assert.equal(region, 'campus-b');
        const answer = await jicofo.xmpp.iqCaller.request(createIq(`${BREWERY}/jvb2`, 'aaaa-2', 'beef'), 10000);
        const ice = answer.getChild('conference-modified', NS_C2).getChild('endpoint').getChild('transport').getChild('transport', NS_ICE);
        // The candidates and the bridge channel are the bridge-only process's, not meetd's.
        assert.ok(ice.getChildren('candidate').some((c) => Number(c.attrs.port) === bridge.mediaPort), ice.toString());
        assert.match(ice.getChild('web-socket', NS_COLIBRI).attrs.url, new RegExp(`:${bridge.httpPort}/colibri-ws/jvb2/`));
        assert.match(bridge.logTail(200), /bridge: logged in to the focus's XMPP server/);
        // Jicofo's graceful shutdown: the presence says so at once, new conferences are refused.
        await jicofo.xmpp.iqCaller.request(xml('iq', { type: 'set', to: `${BREWERY}/jvb2` },
            xml('graceful-shutdown', { xmlns: NS_COLIBRI })), 10000);
        await presenceOf(jicofo, `${BREWERY}/jvb2`, (x) => x.getChild('stats', NS_COLIBRI)?.getChildren('stat')
            .some((s) => s.attrs.name === 'graceful_shutdown' && s.attrs.value === 'true'), 5000);
        const refused = await jicofo.xmpp.iqCaller.request(createIq(`${BREWERY}/jvb2`, 'aaaa-3', 'cafe'), 10000).then(() => null, (e) => e);
        assert.equal(refused?.application?.attrs?.reason ?? refused?.element?.getChild('error', NS_C2)?.attrs.reason,
            'graceful_shutdown', String(refused?.element ?? refused));
    } finally {
        await bridge.stop();
    }
    await presenceOf(jicofo, `${BREWERY}/jvb2`, (x) => x.attrs.type === 'unavailable', 15000);
}));

test('meetd doctor --role bridge says whether the bridge can log in to its focus\'s meetd', srv.wrap(async (t, server) => {
    // (The test before may have made the account already.)
    await server.userAdd(`jvb@${AUTH_DOMAIN}`, 'jvbpass').catch(() => {});
    const dir = mkdtempSync(path.join(tmpdir(), 'meetd-doctor-bridge-'));
    const check = async (password) => {
        const config = path.join(dir, `${password}.toml`);
        writeFileSync(config, `[bridge]\nid = "jvb9"\nxmpp_url = "${server.wsUrl}"\nxmpp_password = "${password}"\n`);
        const r = await runMeetd(['doctor', '--role', 'bridge', '--config', config, '--data-dir', dir,
            '--http', `127.0.0.1:${await freePort()}`, '--https', 'off', '--media-port', String(await freeUdpPort()),
            '--media-tcp-port', '0', '--turn-port', '0']);
        return r.stdout.split('\n').filter((l) => l.includes('bridge.xmpp_url')).join('\n');
    };
    assert.match(await check('jvbpass'), /ok .*bridge\.xmpp_url.*logged in to .* as jvb@auth\.meet\.jitsi\/jvb9-doctor/);
    assert.match(await check('wrong'), /ERROR.*bridge\.xmpp_url.*cannot log in/);
}));
