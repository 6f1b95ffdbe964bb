// meetd behind nginx with the README's snippet: config.js names nginx's address, and an
// XMPP client logs in over WebSocket and BOSH through the proxy; the bridge channel's
// WebSocket passes too. Skipped when nginx is not installed (.ci/run installs it).

import WebSocket from 'ws';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import vm from 'node:vm';
import { client, xml } from '@xmpp/client';
import { useServer, freePort, sleep, withTimeout, DOMAIN, REPO_DIR } from '../lib/server.mjs';

globalThis.WebSocket ??= WebSocket;

const NGINX = ['/usr/sbin/nginx', '/usr/bin/nginx'].find((p) => existsSync(p));
const srv = useServer({ name: 'nginx' });
let proxyPort;
let nginx;
let prefix;

/** The `location /` block of the README, verbatim. */
function readmeSnippet() {
    const readme = readFileSync(path.join(REPO_DIR, 'README.md'), 'utf8');
    const m = readme.match(/```nginx\n([\s\S]*?)```/);
    assert.ok(m, 'README has an nginx snippet');
    return m[1];
}

async function startNginx(upstreamPort) {
    prefix = mkdtempSync(path.join(tmpdir(), 'meetd-nginx-'));
    mkdirSync(path.join(prefix, 'logs'));
    proxyPort = await freePort();
    const location = readmeSnippet().replace('127.0.0.1:8080', `127.0.0.1:${upstreamPort}`);
    const conf = `
daemon off;
master_process off;
worker_processes 1;
pid ${prefix}/nginx.pid;
error_log ${prefix}/logs/error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path ${prefix}/body;
    proxy_temp_path ${prefix}/proxy;
    fastcgi_temp_path ${prefix}/fastcgi;
    uwsgi_temp_path ${prefix}/uwsgi;
    scgi_temp_path ${prefix}/scgi;
    server {
        listen 127.0.0.1:${proxyPort};
        server_name localhost;
${location}
    }
}`;
    writeFileSync(path.join(prefix, 'nginx.conf'), conf);
    nginx = spawn(NGINX, ['-p', prefix, '-c', path.join(prefix, 'nginx.conf')], { stdio: ['ignore', 'pipe', 'pipe'] });
    const deadline = Date.now() + 10000;
    while (Date.now() < deadline) {
        try {
            const r = await fetch(`http://127.0.0.1:${proxyPort}/about/health`);
            if (r.status === 200) return;
        } catch {
            // not yet
        }
        await sleep(100);
    }
    throw new Error(`nginx did not come up: ${readFileSync(path.join(prefix, 'logs', 'error.log'), 'utf8')}`);
}

srv.defer(async () => {
    if (nginx) {
        nginx.kill('SIGTERM');
        await sleep(200);
    }
    if (prefix) rmSync(prefix, { recursive: true, force: true });
});

test('nginx: config.js, WebSocket and BOSH through the README snippet', { skip: !NGINX && 'nginx not installed' }, srv.wrap(async (t, server) => {
    await startNginx(server.httpPort);
    const base = `http://127.0.0.1:${proxyPort}`;
    const res = await fetch(`${base}/config.js`);
    const ctx = {};
    vm.runInNewContext(await res.text(), ctx);
    assert.equal(ctx.config.websocket, `ws://127.0.0.1:${proxyPort}/xmpp-websocket`, 'URLs name the proxy, not meetd');
    assert.equal(ctx.config.bosh, `${base}/http-bind`);

    const xmpp = client({ service: ctx.config.websocket, domain: DOMAIN });
    xmpp.on('error', () => {});
    const jid = await withTimeout(xmpp.start(), 15000, 'login through nginx');
    assert.equal(jid.domain, DOMAIN);
    const pong = await xmpp.iqCaller.request(xml('iq', { type: 'get', to: DOMAIN }, xml('ping', { xmlns: 'urn:xmpp:ping' })), 5000);
    assert.equal(pong.attrs.type, 'result');
    await withTimeout(xmpp.stop(), 5000, 'stop');

    // BOSH session creation through the proxy.
    const body = `<body xmlns='http://jabber.org/protocol/httpbind' xmlns:xmpp='urn:xmpp:xbosh' rid='1000' to='${DOMAIN}' ver='1.6' wait='10' hold='1' xmpp:version='1.0'/>`;
    const b = await fetch(ctx.config.bosh, { method: 'POST', body, headers: { 'Content-Type': 'text/xml; charset=utf-8' } });
    const text = await b.text();
    assert.equal(b.status, 200);
    assert.ok(text.includes('sid=') && text.includes('ANONYMOUS'), text);
}));
