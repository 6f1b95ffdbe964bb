// Serving a Jitsi Meet web build (--web-root) as the stock nginx site does: room URLs get
// index.html with its server-side includes (config.js inlined), static folders with CORS
// and long caching for versioned URLs, external_api.js, tenants, 404 page, wasm type.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import vm from 'node:vm';
import { useServer } from '../lib/server.mjs';

// A web root shaped like the jitsi-meet-web package (written for this test).
const root = mkdtempSync(path.join(tmpdir(), 'meetd-webroot-'));
for (const d of ['libs', 'css', 'static', 'lang', 'sounds', 'images']) mkdirSync(path.join(root, d));
writeFileSync(path.join(root, 'index.html'), [
    '<html><head>',
    '<!--#include virtual="head.html" -->',
    '<!--#include virtual="base.html" -->',
    '<script><!--#include virtual="/config.js" --></script>',
    '<script><!--#include virtual="/interface_config.js" --></script>',
    '<!--#include virtual="title.html" -->',
    '<!--#include virtual="plugin.head.html" -->',
    '</head><body data-tenant="<!--# echo var="subdir" default="none" -->">',
    '<!--#include virtual="body.html" -->',
    '<script src="libs/app.bundle.min.js?v=42"></script></body></html>',
].join('\n'));
writeFileSync(path.join(root, 'head.html'), '<meta name="x-head" content="1">');
writeFileSync(path.join(root, 'base.html'), '<base href="" />');
writeFileSync(path.join(root, 'title.html'), '<title>Jitsi Meet</title>');
writeFileSync(path.join(root, 'interface_config.js'), 'var interfaceConfig = { APP_NAME: "Jitsi Meet" };');
writeFileSync(path.join(root, 'pwa-worker.js'), '// worker');
writeFileSync(path.join(root, 'libs', 'app.bundle.min.js'), 'console.log("app");');
writeFileSync(path.join(root, 'libs', 'external_api.min.js'), 'var JitsiMeetExternalAPI = function () {};');
writeFileSync(path.join(root, 'libs', 'model.wasm'), Buffer.from([0, 97, 115, 109]));
writeFileSync(path.join(root, 'static', '404.html'), '<h1>page not found</h1>');
writeFileSync(path.join(root, 'lang', 'main-de.json'), '{"welcome":"Willkommen"}');

const srv = useServer({ name: 'webroot', extraArgs: ['--web-root', root] });

async function get(p) {
    const res = await fetch(`${srv.server.httpBase}${p}`);
    return { res, text: await res.text() };
}

test('web root: room URLs get index.html with includes and the generated config inlined', srv.wrap(async () => {
    for (const p of ['/', '/SomeRoom', '/some%20room%C3%A9']) {
        const { res, text } = await get(p);
        assert.equal(res.status, 200, p);
        assert.match(res.headers.get('content-type'), /text\/html/);
        assert.ok(text.includes('<meta name="x-head" content="1">'), 'head.html included');
        assert.ok(text.includes('<title>Jitsi Meet</title>'));
        assert.ok(!text.includes('<!--#'), `no directive left in ${p}`);
        assert.ok(text.includes('data-tenant="none"'));
        // The inlined config evaluates and names the domain.
        const script = text.split('<script>')[1].split('</script>')[0];
        const ctx = {};
        vm.runInNewContext(script, ctx);
        assert.equal(ctx.config.hosts.domain, 'meet.jitsi');
        assert.ok(text.includes('APP_NAME'), 'interface_config.js inlined');
    }
    const { text } = await get('/acme/standup');
    assert.ok(text.includes('data-tenant="acme/"'), 'tenant in subdir');
}));

test('web root: static files, caching, CORS, external_api.js, wasm', srv.wrap(async () => {
    let { res, text } = await get('/libs/app.bundle.min.js?v=42');
    assert.equal(res.status, 200);
    assert.equal(text, 'console.log("app");');
    assert.equal(res.headers.get('access-control-allow-origin'), '*');
    assert.match(res.headers.get('cache-control') || '', /max-age=31536000/);
    ({ res } = await get('/libs/app.bundle.min.js'));
    assert.ok(!(res.headers.get('cache-control') || '').includes('31536000'), 'unversioned: no long cache');
    ({ res, text } = await get('/external_api.js'));
    assert.equal(res.status, 200);
    assert.ok(text.includes('JitsiMeetExternalAPI'));
    ({ res } = await get('/libs/model.wasm'));
    assert.equal(res.headers.get('content-type'), 'application/wasm');
    ({ res, text } = await get('/acme/lang/main-de.json'));
    assert.equal(res.status, 200, 'tenant prefix dropped for files');
    assert.ok(text.includes('Willkommen'));
    ({ res } = await get('/pwa-worker.js'));
    assert.equal(res.status, 200);
}));

test('web root: 404s', srv.wrap(async () => {
    for (const p of ['/libs/nope.js', '/a:b', '/x/y/z', '/libs/']) {
        const { res, text } = await get(p);
        assert.equal(res.status, 404, p);
        if (p === '/libs/nope.js') assert.ok(text.includes('page not found'));
    }
    // The XMPP endpoints are still there.
    const { res } = await get('/xmpp-websocket');
    assert.equal(res.status, 200);
    const cfg = await get('/acme/config.js');
    assert.equal(cfg.res.status, 200);
    assert.match(cfg.res.headers.get('content-type'), /javascript/);
}));
