// /config.js as the Jitsi mobile app consumes it: fetched directly (no nginx
// SSI, no page), evaluated as plain JS with no window/document, then read as
// the global `config` object.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import vm from 'node:vm';
import { useServer, DOMAIN, MUC_DOMAIN, FOCUS_DOMAIN } from '../lib/server.mjs';

const srv = useServer({ name: 'config-js' });

/** GET with an explicit Host header (fetch() does not let us set Host). */
function get(path, { host } = {}) {
    return new Promise((resolve, reject) => {
        const req = http.request(
            {
                host: '127.0.0.1',
                port: srv.server.httpPort,
                path,
                method: 'GET',
                headers: host ? { Host: host } : {},
                timeout: 5000,
            },
            (res) => {
                let body = '';
                res.setEncoding('utf8');
                res.on('data', (d) => (body += d));
                res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }));
            },
        );
        req.on('timeout', () => req.destroy(new Error(`GET ${path} timed out`)));
        req.on('error', reject);
        req.end();
    });
}

/** Evaluate config.js the way the mobile app does: a bare JS context, no DOM. */
function evalConfig(src) {
    const sandbox = {};
    vm.createContext(sandbox);
    vm.runInContext(src, sandbox, { filename: 'config.js', timeout: 2000 });
    // `var config` at top level becomes a property of the context's global
    const config = vm.runInContext('typeof config === "undefined" ? undefined : config', sandbox);
    assert.ok(config && typeof config === 'object', 'config.js must define a global `config` object');
    // the app serialises it (JSON.stringify(config)) — must not throw or lose hosts
    return JSON.parse(JSON.stringify(config));
}

function resolveUrl(u, base) {
    return new URL(u, base);
}

test('config.js: served as JavaScript and evaluates without window/document', srv.wrap(async () => {
    const res = await get('/config.js');
    assert.equal(res.status, 200, `GET /config.js → ${res.status}`);
    assert.match(String(res.headers['content-type'] || ''), /javascript/, `content-type ${res.headers['content-type']}`);
    const config = evalConfig(res.body);
    assert.equal(config.hosts?.domain, DOMAIN);
    // Any MUC domain works as long as config.js and the server agree (the client
    // never hard-codes it): docker-jitsi-meet's muc.<domain> or Debian's conference.<domain>.
    assert.ok([MUC_DOMAIN, `muc.${DOMAIN}`].includes(config.hosts?.muc), `hosts.muc = ${config.hosts?.muc}`);
    if (config.hosts?.focus !== undefined) assert.equal(config.hosts.focus, FOCUS_DOMAIN);
}));

test('config.js: websocket and bosh URLs point at the requesting host', srv.wrap(async () => {
    const port = srv.server.httpPort;
    for (const host of [`127.0.0.1:${port}`, `localhost:${port}`]) {
        const res = await get('/config.js?room=testroom', { host });
        assert.equal(res.status, 200);
        const config = evalConfig(res.body);
        const page = `http://${host}/testroom`;

        assert.ok(config.websocket, 'config.websocket should be set (the web app prefers it)');
        const ws = resolveUrl(config.websocket, page);
        assert.equal(ws.host, host, `websocket URL ${config.websocket} for Host ${host}`);
        assert.equal(ws.protocol, 'ws:', `plain-HTTP deployment (--https off) must advertise ws:, got ${config.websocket}`);
        assert.equal(ws.pathname, '/xmpp-websocket');

        assert.ok(config.bosh, 'config.bosh should be set (the mobile app uses BOSH by default)');
        const bosh = resolveUrl(config.bosh, page);
        assert.equal(bosh.host, host, `bosh URL ${config.bosh} for Host ${host}`);
        assert.equal(bosh.protocol, 'http:', `bosh URL ${config.bosh}`);
        assert.equal(bosh.pathname, '/http-bind');
    }
}));

test('config.js: no third-party hosts (p2p STUN, jitsi.net) and disableThirdPartyRequests', srv.wrap(async () => {
    const res = await get('/config.js');
    const config = evalConfig(res.body);
    assert.equal(config.disableThirdPartyRequests, true);
    // If p2p.stunServers is unset, lib-jitsi-meet falls back to a jitsi.net STUN server.
    assert.ok(Array.isArray(config.p2p?.stunServers), `p2p.stunServers must be set explicitly: ${JSON.stringify(config.p2p)}`);
    for (const s of config.p2p.stunServers) {
        const urls = [].concat(s.urls ?? s.url ?? []);
        for (const u of urls) assert.doesNotMatch(String(u), /jitsi\.net/i, `STUN server ${u}`);
    }
    assert.doesNotMatch(res.body, /jitsi\.net|8x8\.vc|meet\.jit\.si/i, 'config.js must not name jitsi.net / 8x8 hosts');
}));

test('health: /about/health answers 200', srv.wrap(async () => {
    const res = await get('/about/health');
    assert.equal(res.status, 200);
}));

test('keep-alive: plain GET on /xmpp-websocket is answered (LJM keep-alive probe)', srv.wrap(async () => {
    const res = await get('/xmpp-websocket?room=testroom');
    assert.ok(res.status < 500, `GET /xmpp-websocket → ${res.status}`);
}));

test('metrics: /metrics exposes Prometheus counters to local scrapers', srv.wrap(async () => {
    const res = await get('/metrics');
    assert.equal(res.status, 200);
    for (const name of ['meetd_xmpp_sessions', 'meetd_bridge_conferences', 'meetd_media_packets_received_total']) {
        assert.match(res.body, new RegExp(`^${name} \\d+$`, 'm'), name);
        assert.match(res.body, new RegExp(`^# TYPE ${name} (gauge|counter)$`, 'm'));
    }
    for (const name of ['meetd_media_probe_packets_total', 'meetd_media_rtp_duplicates_total', 'meetd_media_bwe_suspensions_total']) {
        assert.match(res.body, new RegExp(`^${name} \\d+$`, 'm'), name);
    }
    // JVB's stress level: the media engine's CPU use over 0.9 of a core.
    assert.match(res.body, /^# TYPE meetd_media_stress_level gauge$/m);
    assert.match(res.body, /^meetd_media_stress_level \d+\.\d{3}$/m);
}));
