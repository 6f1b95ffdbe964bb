// strophe.js over BOSH (XEP-0124/0206) in headless Chromium: the transport the
// Jitsi mobile apps use by default. The page and strophe's browser bundle are
// served by a tiny node http server on 127.0.0.1; strophe talks cross-origin to
// meetd's /http-bind (so CORS is exercised too). A node-side strophe WebSocket
// session exchanges messages with the BOSH session.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { readFileSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { useServer, DOMAIN, withTimeout } from '../lib/server.mjs';
import { $msg, stropheConnect, stropheDisconnect, waitForStanza, childText, serialize } from '../lib/strophe.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const require = createRequire(import.meta.url);
const stropheBundle = path.join(path.dirname(require.resolve('strophe.js/package.json')), 'dist', 'strophe.umd.min.js');

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>meetd BOSH test</title>
<script src="/strophe.js"></script>
<script>
(() => {
// The UMD bundle sets window.Strophe (and, depending on the build, window.$iq/$msg
// or window.Strophe.$iq/$msg).
const Strophe = window.Strophe.Strophe || window.Strophe;
const $iq = window.$iq || window.Strophe.$iq;
const $msg = window.$msg || window.Strophe.$msg;
window.log = [];
window.inbox = [];
window.statuses = [];
const names = Object.fromEntries(Object.entries(Strophe.Status).map(([k, v]) => [v, k]));
window.boshConnect = (url, domain) => new Promise((resolve, reject) => {
  const c = new Strophe.Connection(url, { maxRetries: 3 });
  window.conn = c;
  c.xmlInput = (x) => window.log.push('<< ' + Strophe.serialize(x));
  c.xmlOutput = (x) => window.log.push('>> ' + Strophe.serialize(x));
  c.addHandler((m) => { window.inbox.push({ from: m.getAttribute('from'), type: m.getAttribute('type'),
      body: (m.getElementsByTagName('body')[0] || {}).textContent }); return true; }, null, 'message');
  c.connect(domain, null, (status, cond) => {
    window.statuses.push([names[status], cond || null]);
    if (status === Strophe.Status.CONNECTED) resolve(c.jid);
    else if ([Strophe.Status.CONNFAIL, Strophe.Status.AUTHFAIL, Strophe.Status.ERROR,
              Strophe.Status.CONNTIMEOUT, Strophe.Status.DISCONNECTED].includes(status))
      reject(new Error('BOSH connect: ' + names[status] + ' ' + (cond || '') + '\\n' + window.log.join('\\n')));
  });
});
window.iq = (type, to, child, ns) => new Promise((resolve) => {
  window.conn.sendIQ($iq({ type, to }).c(child, { xmlns: ns }),
    (r) => resolve({ type: r.getAttribute('type'), xml: Strophe.serialize(r) }),
    (e) => resolve(e ? { type: e.getAttribute('type'), xml: Strophe.serialize(e) } : { type: 'timeout' }),
    5000);
});
window.sendChat = (to, body) => window.conn.send($msg({ to, type: 'chat' }).c('body').t(body));
window.boshDisconnect = () => new Promise((resolve) => {
  const c = window.conn;
  const t = setTimeout(() => resolve('timeout'), 5000);
  c.connect_callback_orig = c.connect_callback;
  c.connect_callback = (status, cond) => { window.statuses.push([names[status], cond || null]);
    if (status === Strophe.Status.DISCONNECTED) { clearTimeout(t); resolve('disconnected'); } };
  c.disconnect('bye');
});
})();
</script></head><body>BOSH test</body></html>`;

const srv = useServer({ name: 'strophe-bosh' });
let web; // page server
let webPort;
let browser;
let page;
const pageErrors = [];

before(async () => {
    assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM} (apt-get install chromium)`);
    const bundle = readFileSync(stropheBundle);
    web = http.createServer((req, res) => {
        if (req.url === '/strophe.js') {
            res.writeHead(200, { 'content-type': 'application/javascript' });
            res.end(bundle);
        } else if (req.url === '/' || req.url.startsWith('/?')) {
            res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
            res.end(PAGE);
        } else if (req.url === '/favicon.ico') {
            res.writeHead(204);
            res.end();
        } else {
            res.writeHead(404);
            res.end();
        }
    });
    await new Promise((r) => web.listen(0, '127.0.0.1', r));
    webPort = web.address().port;
    browser = await chromium.launch({
        executablePath: CHROMIUM,
        headless: true,
        args: [
            '--headless=new',
            '--no-sandbox',
            '--disable-gpu',
            '--disable-quic',
            '--disable-background-networking',
            '--disable-component-update',
            '--disable-sync',
            '--no-first-run',
        ],
    });
    page = await browser.newPage();
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    page.on('console', (m) => {
        if (m.type() === 'error') pageErrors.push(m.text());
    });
    await page.goto(`http://127.0.0.1:${webPort}/`);
});

after(async () => {
    if (browser) await withTimeout(browser.close(), 10000, 'browser.close()').catch(() => {});
    if (web) await new Promise((r) => web.close(r));
});

/** page.evaluate bounded in time (a dead strophe connection never calls back). */
function evalT(fn, arg, ms = 15000, what = 'page.evaluate') {
    return withTimeout(page.evaluate(fn, arg), ms, what);
}

function needLogin() {
    assert.ok(boshJid, 'BOSH login failed in an earlier test');
}

async function pageLog() {
    return withTimeout(page.evaluate(() => window.log.slice(-30).join('\n')), 5000, 'page log').catch(() => '(no page log)');
}

let boshJid;

test('bosh: CORS preflight and headers on /http-bind', srv.wrap(async () => {
    const origin = `http://127.0.0.1:${webPort}`;
    const pre = await fetch(srv.server.boshUrl, {
        method: 'OPTIONS',
        headers: { Origin: origin, 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'content-type' },
    });
    assert.ok(pre.status >= 200 && pre.status < 300, `OPTIONS /http-bind → ${pre.status}`);
    const allow = pre.headers.get('access-control-allow-origin');
    assert.ok(allow === '*' || allow === origin, `Access-Control-Allow-Origin on preflight: ${allow}`);
}));

test('bosh: anonymous login from Chromium over BOSH', srv.wrap(async () => {
    boshJid = await withTimeout(
        page.evaluate(([url, domain]) => window.boshConnect(url, domain), [`${srv.server.boshUrl}?room=testroom`, DOMAIN]),
        20000,
        'BOSH login in Chromium',
    ).catch(async (e) => {
        throw new Error(`${e.message}\n--- page log ---\n${await pageLog()}\n--- page errors ---\n${pageErrors.join('\n')}`);
    });
    assert.match(boshJid, /^[^@/\s]+@meet\.jitsi\/\S+$/);
}));

test('bosh: ping and disco#info to the domain', srv.wrap(async () => {
    needLogin();
    const ping = await evalT(([d]) => window.iq('get', d, 'ping', 'urn:xmpp:ping'), [DOMAIN], 10000, 'ping over BOSH');
    assert.equal(ping.type, 'result', `ping over BOSH: ${ping.xml}\n${await pageLog()}`);
    const info = await evalT(([d]) => window.iq('get', d, 'query', 'http://jabber.org/protocol/disco#info'), [DOMAIN], 10000, 'disco over BOSH');
    assert.equal(info.type, 'result', info.xml);
    assert.match(info.xml, /var="urn:xmpp:ping"/, info.xml);
    const ext = await evalT(([d]) => window.iq('get', d, 'services', 'urn:xmpp:extdisco:2'), [DOMAIN], 10000, 'extdisco over BOSH');
    assert.equal(ext.type, 'result', `extdisco:2 over BOSH: ${ext.xml}`);
}));

test('bosh: messages both ways between a BOSH and a WebSocket session', srv.wrap(async () => {
    needLogin();
    const ws = await stropheConnect(`${srv.server.wsUrl}?room=testroom`);
    srv.defer(() => stropheDisconnect(ws, 2000));
    try {
        // WebSocket → BOSH (delivered on a held long-poll request)
        const b1 = `ws-to-bosh ${Date.now()}`;
        ws.send($msg({ to: boshJid, type: 'chat' }).c('body').t(b1));
        await withTimeout(
            page.waitForFunction((b) => window.inbox.some((m) => m.body === b), b1, { timeout: 10000 }),
            11000,
            'message on the BOSH side',
        ).catch(async (e) => {
            throw new Error(`${e.message}\n--- page log ---\n${await pageLog()}`);
        });
        const got = await evalT((b) => window.inbox.find((m) => m.body === b), b1);
        assert.equal(got.from, ws.jid);

        // BOSH → WebSocket
        const b2 = `bosh-to-ws ${Date.now()}`;
        const wait = waitForStanza(ws, 'message', (m) => childText(m, 'body') === b2, 10000, 'message on the WebSocket side');
        await evalT(([to, b]) => window.sendChat(to, b), [ws.jid, b2]);
        const m = await wait;
        assert.equal(m.getAttribute('from'), boshJid, serialize(m));
    } finally {
        await stropheDisconnect(ws);
    }
}));

test('bosh: clean disconnect (type=terminate)', srv.wrap(async () => {
    needLogin();
    const r = await evalT(() => window.boshDisconnect(), undefined, 10000, 'BOSH disconnect');
    assert.equal(r, 'disconnected', `BOSH disconnect: ${r}\n${await pageLog()}`);
    const terminated = await evalT(() => window.log.some((l) => l.startsWith('<<') && /type="terminate"/.test(l)));
    assert.ok(terminated, `server should answer the terminate request with type="terminate"\n${await pageLog()}`);
    assert.deepEqual(
        pageErrors.filter((e) => !/favicon/.test(e)),
        [],
        'no page errors (CORS failures show up here)',
    );
}));
