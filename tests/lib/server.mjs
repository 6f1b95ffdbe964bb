// Start and stop a real meetd process for black-box tests.
//
// Every test file gets its own meetd on free loopback ports with a fresh data
// directory. The binary comes from $MEETD_BIN (default: ../target/debug/meetd
// relative to tests/). The server log is kept in memory and attached to the
// error of any failing test wrapped with `srv.wrap(...)`, and written to
// tests/.logs/ so CI output can point at it.
//
// Network rule: everything here talks to 127.0.0.1 only.

import { spawn } from 'node:child_process';
import { appendFileSync, mkdtempSync, mkdirSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import net from 'node:net';
import dgram from 'node:dgram';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { before, after } from 'node:test';

const here = path.dirname(fileURLToPath(import.meta.url));
export const TESTS_DIR = path.resolve(here, '..');
export const REPO_DIR = path.resolve(TESTS_DIR, '..');
export const MEETD_BIN = process.env.MEETD_BIN
    ? path.resolve(process.env.MEETD_BIN)
    : path.resolve(TESTS_DIR, '../target/debug/meetd');

export const DOMAIN = 'meet.jitsi';
export const AUTH_DOMAIN = 'auth.meet.jitsi';
export const MUC_DOMAIN = 'conference.meet.jitsi';
export const FOCUS_DOMAIN = 'focus.meet.jitsi';

const HEALTH_TIMEOUT_MS = Number(process.env.MEETD_START_TIMEOUT_MS || 20000);
const LOG_TAIL_LINES = 80;

/** A free TCP port on 127.0.0.1 (bind to 0, read it, close). */
export function freePort() {
    return new Promise((resolve, reject) => {
        const srv = net.createServer();
        srv.unref();
        srv.on('error', reject);
        srv.listen(0, '127.0.0.1', () => {
            const { port } = srv.address();
            srv.close(() => resolve(port));
        });
    });
}

/** A free UDP port on 127.0.0.1. */
export function freeUdpPort() {
    return new Promise((resolve, reject) => {
        const sock = dgram.createSocket('udp4');
        sock.on('error', reject);
        sock.bind(0, '127.0.0.1', () => {
            const { port } = sock.address();
            sock.close(() => resolve(port));
        });
    });
}

async function distinctFreePorts(n) {
    const ports = new Set();
    while (ports.size < n) ports.add(await freePort());
    return [...ports];
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Run a meetd sub-command (e.g. `user add`) to completion.
 * @returns {Promise<{code:number, stdout:string, stderr:string}>}
 */
export function runMeetd(args, { input = null, timeoutMs = 30000, env = {} } = {}) {
    return new Promise((resolve, reject) => {
        const child = spawn(MEETD_BIN, args, {
            stdio: ['pipe', 'pipe', 'pipe'],
            env: { ...process.env, ...env },
        });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (d) => (stdout += d));
        child.stderr.on('data', (d) => (stderr += d));
        const timer = setTimeout(() => {
            child.kill('SIGKILL');
            reject(new Error(`meetd ${args.join(' ')} timed out after ${timeoutMs} ms\n${stdout}\n${stderr}`));
        }, timeoutMs);
        child.on('error', (e) => {
            clearTimeout(timer);
            reject(e);
        });
        child.on('close', (code) => {
            clearTimeout(timer);
            resolve({ code, stdout, stderr });
        });
        if (input !== null) child.stdin.end(input);
        else child.stdin.end();
    });
}

// Kill any meetd still running when this process goes away (test timeout,
// Ctrl-C, uncaught error), so no server outlives its test file.
const running = new Set();
function killAll() {
    for (const p of running) {
        try {
            p.kill('SIGKILL');
        } catch {
            // already gone
        }
    }
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.once(sig, () => {
        killAll();
        process.exit(128 + ({ SIGINT: 2, SIGTERM: 15, SIGHUP: 1 })[sig]);
    });
}

export class MeetdServer {
    constructor(opts = {}) {
        this.opts = opts;
        this.name = opts.name || 'meetd';
        this.logLines = [];
        this.proc = null;
        this.exited = null; // {code, signal} once the process has exited
    }

    /** Where the listeners are: 127.0.0.1 (or opts.host, another loopback address), or with opts.ipv6 [::1]. */
    get host() {
        return this.opts.ipv6 ? '[::1]' : (this.opts.host || '127.0.0.1');
    }
    get httpBase() {
        return `http://${this.host}:${this.httpPort}`;
    }
    /** With opts.https: meetd's HTTPS listener (its self-signed certificate). */
    get httpsBase() {
        return `https://${this.host}:${this.httpsPort}`;
    }
    get wsUrl() {
        return `ws://${this.host}:${this.httpPort}/xmpp-websocket`;
    }
    get boshUrl() {
        return `http://${this.host}:${this.httpPort}/http-bind`;
    }

    /** Common CLI options for every sub-command. */
    commonArgs() {
        const a = ['--data-dir', this.dataDir];
        if (this.configPath) a.push('--config', this.configPath);
        return a;
    }

    async start() {
        if (!existsSync(MEETD_BIN)) {
            throw new Error(`meetd binary not found at ${MEETD_BIN} (build it with cargo build, or set MEETD_BIN)`);
        }
        this.dataDir = mkdtempSync(path.join(tmpdir(), 'meetd-test-'));
        if (this.opts.config) {
            this.configPath = path.join(this.dataDir, 'meetd-test.toml');
            writeFileSync(this.configPath, this.opts.config);
        }
        [this.httpPort, this.c2sPort, this.componentPort, this.httpsPort, this.mediaTcpPort, this.turnPort] = await distinctFreePorts(6);
        this.mediaPort = await freeUdpPort();
        const args = [
            'serve',
            ...this.commonArgs(),
            '--http', `${this.host}:${this.httpPort}`,
            '--https', this.opts.https ? `${this.host}:${this.httpsPort}` : 'off',
            '--c2s', `${this.host}:${this.c2sPort}`,
            '--component', `${this.host}:${this.componentPort}`,
            '--media-port', String(this.mediaPort),
            '--media-tcp-port', String(this.mediaTcpPort),
            '--turn-port', String(this.turnPort),
            '--log-level', process.env.MEETD_LOG_LEVEL || 'info',
            ...(this.opts.extraArgs || []),
        ];
        this.args = args;
        this.spawn();
        await this.waitHealthy();
        return this;
    }

    spawn() {
        const args = this.args;
        this.cmdline = `${MEETD_BIN} ${args.join(' ')}`;
        this.log(`# ${this.cmdline}`);
        // The browsers and clients of a test stand in for other people's machines; on one
        // small machine they can starve meetd of CPU (nine Chromiums on two cores left the
        // debug build's media socket unread for seconds, and the kernel dropped ICE checks).
        // As root, meetd runs ahead of them (MEETD_NICE, default -10; 0: as the tests).
        const niceness = Number(process.env.MEETD_NICE ?? -10);
        const [cmd, cmdArgs] = process.getuid?.() === 0 && niceness !== 0
            ? ['nice', ['-n', String(niceness), MEETD_BIN, ...args]]
            : [MEETD_BIN, args];
        this.proc = spawn(cmd, cmdArgs, {
            stdio: ['ignore', 'pipe', 'pipe'],
            env: { ...process.env, NO_COLOR: '1', ...(this.opts.env || {}) },
        });
        const onData = (prefix) => {
            let buf = '';
            return (chunk) => {
                buf += chunk;
                let i;
                while ((i = buf.indexOf('\n')) >= 0) {
                    this.log(prefix + buf.slice(0, i));
                    buf = buf.slice(i + 1);
                }
            };
        };
        this.proc.stdout.on('data', onData(''));
        this.proc.stderr.on('data', onData(''));
        const proc = this.proc;
        running.add(proc);
        proc.on('exit', (code, signal) => {
            running.delete(proc);
            if (this.proc === proc) this.exited = { code, signal };
            this.log(`# meetd exited code=${code} signal=${signal}`);
        });
    }

    log(line) {
        // MEETD_LOG_FILE: every line of every meetd the tests start, appended there too.
        if (process.env.MEETD_LOG_FILE) appendFileSync(process.env.MEETD_LOG_FILE, line + '\n');
        this.logLines.push(line);
        if (this.logLines.length > 20000) this.logLines.splice(0, 5000);
    }

    logTail(n = LOG_TAIL_LINES) {
        return this.logLines.slice(-n).join('\n');
    }

    async waitHealthy() {
        const deadline = Date.now() + HEALTH_TIMEOUT_MS;
        let lastErr = null;
        while (Date.now() < deadline) {
            if (this.exited) {
                throw new Error(`meetd exited before becoming healthy (code=${this.exited.code} signal=${this.exited.signal})\n--- meetd log ---\n${this.logTail()}`);
            }
            try {
                const res = await fetch(`${this.httpBase}/about/health`, { signal: AbortSignal.timeout(2000) });
                await res.arrayBuffer();
                if (res.status === 200) return;
                lastErr = new Error(`/about/health answered ${res.status}`);
            } catch (e) {
                lastErr = e;
            }
            await sleep(100);
        }
        throw new Error(`meetd not healthy after ${HEALTH_TIMEOUT_MS} ms: ${lastErr}\n--- meetd log ---\n${this.logTail()}`);
    }

    /** `meetd user add JID` with the password on stdin. */
    async userAdd(jid, password) {
        const r = await runMeetd(['user', 'add', jid, ...this.commonArgs()], { input: `${password}\n` });
        if (r.code !== 0) {
            throw new Error(`meetd user add ${jid} failed (exit ${r.code})\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
        }
        return r;
    }

    /**
     * Stop meetd (SIGTERM) and start it again on the same ports, data and configuration, as
     * an upgrade or `systemctl restart` does. Resolves once the new one is healthy.
     */
    async restart() {
        await this.terminate(10000);
        this.exited = null;
        this.spawn();
        await this.waitHealthy();
    }

    /** SIGTERM, and SIGKILL after `ms` if it is still running. */
    async terminate(ms) {
        if (this.proc && !this.exited) {
            const exited = new Promise((r) => this.proc.once('exit', r));
            this.proc.kill('SIGTERM');
            const t = setTimeout(() => this.proc.kill('SIGKILL'), ms);
            await exited;
            clearTimeout(t);
        }
    }

    async stop() {
        await this.terminate(5000);
        this.saveLog();
        if (this.dataDir && !process.env.MEETD_KEEP_DATA) {
            rmSync(this.dataDir, { recursive: true, force: true });
        }
    }

    saveLog() {
        try {
            const dir = path.join(TESTS_DIR, '.logs');
            mkdirSync(dir, { recursive: true });
            this.logFile = path.join(dir, `${this.name}-${process.pid}.log`);
            writeFileSync(this.logFile, this.logLines.join('\n') + '\n');
        } catch {
            // best effort
        }
    }
}

export async function startServer(opts = {}) {
    const s = new MeetdServer(opts);
    try {
        await s.start();
    } catch (e) {
        await s.stop().catch(() => {});
        throw e;
    }
    return s;
}

/**
 * Register before/after hooks that run one meetd for the calling test file.
 * Returns a handle; `handle.server` is the running MeetdServer and
 * `handle.wrap(fn)` turns a test body into one that, on failure, appends the
 * tail of the meetd log to the error message.
 */
export function useServer(opts = {}) {
    const handle = {
        server: null,
        failed: false,
        cleanups: [],
        /** Register a cleanup to run at the end of the file (before meetd stops). */
        defer(fn) {
            handle.cleanups.push(fn);
        },
        wrap(fn) {
            return async (t) => {
                try {
                    return await fn(t, handle.server);
                } catch (e) {
                    handle.failed = true;
                    if (handle.server && e && typeof e === 'object') {
                        const tail = handle.server.logTail();
                        try {
                            e.message = `${e.message}\n--- meetd log (last ${LOG_TAIL_LINES} lines) ---\n${tail}\n--- end meetd log ---`;
                        } catch {
                            // read-only message
                        }
                    }
                    throw e;
                }
            };
        },
    };
    before(async () => {
        handle.server = await startServer(opts);
    });
    after(async () => {
        for (const fn of handle.cleanups.reverse()) {
            try {
                await fn();
            } catch {
                // ignore cleanup errors
            }
        }
        if (handle.server) {
            await handle.server.stop();
            if (handle.failed) {
                process.stderr.write(`meetd log of ${opts.name || 'meetd'} saved to ${handle.server.logFile}\n`);
            }
        }
    });
    return handle;
}

/** Await a promise with a timeout and a useful message. */
export function withTimeout(promise, ms, what) {
    let t;
    const timeout = new Promise((_, reject) => {
        t = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(t));
}
