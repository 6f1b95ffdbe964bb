// Automatic certificates (issue 18) against Debian's pebble, the ACME test server, on
// loopback: meetd starts with a placeholder, orders a certificate for public_url's host
// (HTTP-01 answered on its own HTTP listener), serves the full chain on HTTPS (it verifies
// against pebble's root), and renews it without a restart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import https from 'node:https';
import { useServer, freePort, sleep } from '../lib/server.mjs';

const noPebble = (() => {
    try {
        execFileSync('pebble', ['-h'], { stdio: 'ignore' });
        return false;
    } catch (e) {
        return e.code === 'ENOENT' ? 'pebble (Debian package pebble) is not installed' : false;
    }
})();

// pebble's own HTTPS certificate, from a CA made here.
const dir = mkdtempSync(path.join(tmpdir(), 'meetd-acme-'));
const openssl = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
if (!noPebble) {
    openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key',
        '-out', 'ca.pem', '-days', '2', '-subj', '/CN=meetd test ACME CA');
    openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'srv.key',
        '-out', 'srv.csr', '-subj', '/CN=127.0.0.1');
    writeFileSync(path.join(dir, 'ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost');
    openssl('x509', '-req', '-in', 'srv.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
        '-out', 'srv.pem', '-days', '2', '-extfile', 'ext');
}
const acmePort = await freePort();
const mgmtPort = await freePort();
const CA = path.join(dir, 'ca.pem');

const srv = useServer({
    name: 'acme',
    https: true,
    config: `[server]\npublic_url = "https://localhost"\n[tls]\nacme = true\n`
        + `acme_directory = "https://127.0.0.1:${acmePort}/dir"\nacme_ca_root = "${CA}"\n`
        // Renew at every check: a renewal within the test.
        + `acme_check_secs = 3\nacme_renew_days = 100000\n`,
});

/** The certificate chain meetd's HTTPS listener presents for `localhost`. */
function served(port) {
    return new Promise((resolve, reject) => {
        const s = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', rejectUnauthorized: false }, () => {
            const chain = [];
            let c = s.getPeerCertificate(true);
            while (c && !chain.some((x) => x.fingerprint256 === c.fingerprint256)) {
                chain.push(c);
                c = c.issuerCertificate;
            }
            s.end();
            resolve(chain);
        });
        s.on('error', reject);
    });
}

test('ACME: a certificate from pebble, the full chain, renewed without a restart', { skip: noPebble, timeout: 90000 }, srv.wrap(async (t, server) => {
    writeFileSync(path.join(dir, 'pebble.json'), JSON.stringify({
        pebble: {
            listenAddress: `127.0.0.1:${acmePort}`, managementListenAddress: `127.0.0.1:${mgmtPort}`,
            certificate: path.join(dir, 'srv.pem'), privateKey: path.join(dir, 'srv.key'),
            // HTTP-01: pebble fetches http://localhost:<this>/.well-known/acme-challenge/...
            httpPort: server.httpPort, tlsPort: await freePort(),
            ocspResponderURL: '', externalAccountBindingRequired: false,
        },
    }));
    const pebble = spawn('pebble', ['-config', path.join(dir, 'pebble.json')], {
        env: { ...process.env, PEBBLE_VA_NOSLEEP: '1', PEBBLE_WFE_NONCEREJECT: '0' },
        stdio: 'ignore',
    });
    t.after(() => {
        pebble.kill();
        rmSync(dir, { recursive: true, force: true });
    });
    // The placeholder first (self-signed), then pebble's certificate.
    let chain = [];
    const deadline = Date.now() + 45000;
    while (Date.now() < deadline) {
        chain = await served(server.httpsPort).catch(() => []);
        if (chain[0]?.issuer?.CN?.startsWith('Pebble')) break;
        await sleep(300);
    }
    assert.ok(chain[0]?.issuer?.CN?.startsWith('Pebble'), `issued by pebble: ${JSON.stringify(chain[0]?.issuer)}`);
    assert.equal(chain[0].subject.CN, 'localhost');
    assert.ok(chain.length >= 2 && chain[1].subject.CN.startsWith('Pebble Intermediate'), 'the intermediate is served too');
    // The chain verifies against pebble's root (fetched from its management interface).
    const root = await new Promise((resolve, reject) => {
        https.get(`https://127.0.0.1:${mgmtPort}/roots/0`, { ca: readFileSync(CA) }, (res) => {
            let b = '';
            res.on('data', (d) => (b += d));
            res.on('end', () => resolve(b));
        }).on('error', reject);
    });
    const status = await new Promise((resolve, reject) => {
        https.get({ host: '127.0.0.1', port: server.httpsPort, path: '/about/health', servername: 'localhost', ca: root }, (res) => {
            res.resume();
            resolve(res.statusCode);
        }).on('error', reject);
    });
    assert.equal(status, 200);
    // Renewed (a new certificate) while meetd runs on.
    const first = chain[0].fingerprint256;
    let renewed = false;
    const until = Date.now() + 30000;
    while (!renewed && Date.now() < until) {
        await sleep(500);
        const c = await served(server.httpsPort).catch(() => []);
        renewed = Boolean(c[0]) && c[0].fingerprint256 !== first && c[0].issuer.CN.startsWith('Pebble');
    }
    assert.ok(renewed, 'a renewed certificate is served without a restart');
    assert.equal(server.exited, null);
    assert.ok(server.logLines.some((l) => l.includes('ACME: new certificate stored')));
}));
