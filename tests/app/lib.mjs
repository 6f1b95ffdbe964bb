// The official Jitsi Meet web app through meetd, driven as a person would: one headless Chromium
// context per participant, the room URL, the prejoin screen, "Join meeting", then the toolbar,
// dialogs and panes. What a test checks comes from the app itself: its Redux store
// (`APP.store.getState()`), the DOM and `<video>` elements that play.
//
// The app is the unmodified build in ../shared/clients/jitsi-meet-web.tar.xz (never copied into
// the project): unpacked once per test process into a temporary directory and served by meetd
// with --web-root. Where ../shared/clients is absent (a fresh clone outside CI), `appSkip` says
// why and the suites skip.
//
// Every app test runs in a loopback-only network namespace (tests/app/run.sh creates it):
// Chromium sends ICE checks from every interface it has (testing.md, "Network rule").

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startServer, REPO_DIR, withTimeout, sleep } from '../lib/server.mjs';

export { sleep, withTimeout };

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const CLIENTS_DIR = process.env.JITSI_CLIENTS_DIR || path.resolve(REPO_DIR, '../shared/clients');
const TARBALL = path.join(CLIENTS_DIR, 'jitsi-meet-web.tar.xz');

/** Why the app suites cannot run here, or null. */
export const appSkip = (() => {
    if (!existsSync(TARBALL)) return `the official web app is not here (${TARBALL}); CI has it`;
    if (!existsSync(CHROMIUM)) return `Chromium not found at ${CHROMIUM} (apt-get install chromium)`;
    if (process.getuid && process.getuid() !== 0) return 'needs root (tests/app/run.sh makes a network namespace)';
    const ifaces = readFileSync('/proc/net/dev', 'utf8').split('\n').slice(2)
        .map((l) => l.split(':')[0].trim()).filter(Boolean);
    if (ifaces.some((i) => i !== 'lo')) {
        return `not in a loopback-only network namespace (interfaces: ${ifaces.join(', ')}); use tests/app/run.sh`;
    }
    return null;
})();

let webRoot = null;
let strings = null;
/** The web app's English text for an i18n key from its lang/main.json ({{x}} filled from params). */
export function label(key, params = {}) {
    strings ??= JSON.parse(readFileSync(path.join(unpackWebApp(), 'lang', 'main.json'), 'utf8'));
    const v = key.split('.').reduce((o, k) => o?.[k], strings);
    if (typeof v !== 'string') throw new Error(`no text for ${key} in the app's lang/main.json`);
    return v.replace(/{{\s*(\w+)\s*}}/g, (_, k) => String(params[k] ?? ''));
}
/** The unpacked web app (once per process). */
function unpackWebApp() {
    if (webRoot) return webRoot;
    const dir = mkdtempSync(path.join(tmpdir(), 'meetd-webapp-'));
    execFileSync('tar', ['-xJf', TARBALL, '-C', dir]);
    webRoot = path.join(dir, 'jitsi-meet-web');
    process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
    return webRoot;
}

const BROWSER_ARGS = [
    '--headless=new', '--no-sandbox', '--disable-gpu',
    '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
    '--allow-loopback-in-peer-connection',
    '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run',
    '--disable-quic', '--autoplay-policy=no-user-gesture-required',
    '--disable-renderer-backgrounding', '--disable-background-timer-throttling',
    '--disable-backgrounding-occluded-windows',
];

/**
 * One meetd with the web app and one Chromium for a test file. `config` is extra meetd.toml
 * text. Returns a handle whose `join()` opens a participant.
 */
/**
 * One meetd serving the app, and a Chromium, for the calling test file. `ipv6`: the media
 * address to announce (an IPv6 one); the listeners are then on [::1]. `host`: another
 * loopback address for meetd's listeners and media (127.0.0.2: clients still come from
 * 127.0.0.1). `browserArgs`: more Chromium flags.
 */
export function useApp({ name = 'app', config = '', extraArgs = [], https = false, ipv6 = '', host = '', browserArgs = [] } = {}) {
    const h = {
        server: null,
        browser: null,
        participants: [],
        failed: false,
        /** Called with each new browser context before its page opens (to watch requests). */
        onContext: null,
        get base() {
            return h.server.httpBase;
        },
        /** A test body that, on failure, gets the meetd log tail and the pages' errors. */
        wrap(fn) {
            return async (t) => {
                try {
                    return await fn(t);
                } catch (e) {
                    h.failed = true;
                    try {
                        const states = await Promise.all(h.participants.map((p) => p.describe()));
                        const pages = h.participants.map((p) => `[${p.name}] ${p.log.slice(-(Number(process.env.APP_PAGE_LOG_LINES) || 25)).join('\n  ')}`).join('\n');
                        const more = `\n--- what the apps show ---\n${states.join('\n')}\n--- page logs ---\n${pages}\n--- meetd log ---\n${h.server?.logTail(60)}`;
                        try {
                            e.message = `${e.message}${more}`;
                        } catch {
                            // Some errors' messages are read-only (Playwright's): print it.
                            console.log(`failure context of "${e.message}":${more}`);
                        }
                    } catch (d) {
                        console.log(`no failure context: ${d}`);
                    }
                    throw e;
                }
            };
        },
        join: (room, opts) => join(h, room, opts),
        /** A new participant's browser on `url` (a page that embeds the app, say). */
        async open(name, url) {
            const ctx = await h.browser.newContext({ permissions: ['camera', 'microphone'], ignoreHTTPSErrors: true });
            h.onContext?.(ctx);
            const page = await ctx.newPage();
            const p = new Participant(h, name, ctx, page);
            h.participants.push(p);
            await page.goto(url);
            return p;
        },
        /** Leave everyone (between tests). */
        async leaveAll() {
            await Promise.all(h.participants.splice(0).map((p) => p.close()));
        },
    };
    if (appSkip) return h;
    before(async () => {
        const root = unpackWebApp();
        h.server = await startServer({
            name,
            config: `[focus]\nsingle_participant_timeout_secs = 60\n${config}`,
            extraArgs: ['--web-root', root, '--advertise-ip', ipv6 || host || '127.0.0.1', ...extraArgs],
            https,
            host,
            ipv6: Boolean(ipv6),
        });
        h.browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: [...BROWSER_ARGS, ...browserArgs] });
    });
    after(async () => {
        await h.leaveAll().catch(() => {});
        if (h.browser) await withTimeout(h.browser.close(), 10000, 'browser.close()').catch(() => {});
        if (h.server) {
            await h.server.stop();
            if (h.failed) process.stderr.write(`meetd log of ${name} saved to ${h.server.logFile}\n`);
        }
    });
    return h;
}

const nft = (...args) => execFileSync('nft', args, { stdio: ['ignore', 'ignore', 'pipe'] });

/** Why firewall tests cannot run here (no `nft`), or false. */
export const noNft = (() => {
    try {
        nft('--version');
        return false;
    } catch {
        return 'nft (Debian nftables) is not installed';
    }
})();

/**
 * Drop what each rule matches (nftables, output hook of the test's network namespace), e.g.
 * `udp dport 10000`, until `openFirewall()`.
 */
export function firewall(rules) {
    nft('add', 'table', 'inet', 'meetd_fw');
    nft('add', 'chain', 'inet', 'meetd_fw', 'out', '{ type filter hook output priority 0; }');
    for (const r of rules) nft('add', 'rule', 'inet', 'meetd_fw', 'out', ...r.split(' '), 'counter', 'drop');
}

/** Packets the rules of `firewall` dropped so far (0 when none is there). */
export function firewallDrops() {
    try {
        const out = execFileSync('nft', ['list', 'table', 'inet', 'meetd_fw'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
        return [...out.matchAll(/counter packets (\d+)/g)].reduce((n, m) => n + Number(m[1]), 0);
    } catch {
        return 0;
    }
}

export function openFirewall() {
    try {
        nft('delete', 'table', 'inet', 'meetd_fw');
    } catch {
        // not there
    }
}

/**
 * Alice and Bob in `room` without P2P (and with `extraHash` config): both see each other
 * through the bridge. Returns each one's transport as the app reports it ({type, ip,
 * localCandidateType, ...}), then everyone leaves.
 */
export async function bridgeCall(h, room, extraHash = '', settled = null) {
    const hash = `config.p2p.enabled=false${extraHash ? `&${extraHash}` : ''}`;
    const a = await h.join(room, { name: 'Alice', hash });
    const b = await h.join(room, { name: 'Bob', hash });
    await Promise.all([a.waitVideoFrom(b, 30000), b.waitVideoFrom(a, 30000)]);
    const transports = [];
    const stats = (p) => p.waitFor(() => APP.conference.getStats().transport?.[0], 'transport stats', 15000);
    for (const p of [a, b]) {
        // `settled(t)`: the pair the test expects. A starved browser can select a lower-priority
        // pair whose check was answered first and switch to the better one when its own check
        // comes back, so give it up to 20 s before reporting what it uses.
        let t = await stats(p);
        for (const end = Date.now() + 20000; settled && !settled(t) && Date.now() < end;) {
            await sleep(500);
            t = await stats(p);
        }
        transports.push(t);
    }
    await h.leaveAll();
    return transports;
}

/** `test()` that skips with the reason when the app cannot run here. */
export function appTest(name, fn, opts = {}) {
    if (appSkip) {
        return test(name, { skip: appSkip });
    }
    return test(name, { timeout: 180000, ...opts }, fn);
}

/**
 * Open the room as a new participant: the room URL, the prejoin screen with a display name,
 * "Join meeting"; resolves once the app says it has joined the conference.
 * opts: name, hash (URL hash, e.g. 'config.startWithAudioMuted=true'), query, startAudioMuted,
 * startVideoMuted (toggled on the prejoin screen as a person would), waitJoined (default true),
 * headers (extra HTTP request headers of this participant's browser), patience (ms a starved
 * browser may take to load and pass the prejoin screen), evalTimeout (ms per page.evaluate).
 */
async function join(h, room, opts = {}) {
    let p = opts.reuse;
    if (!p) {
        // `headers`: sent with every request of this browser, as a proxy in front of meetd
        // would add them (e.g. X-Proxy-Region).
        const ctx = await h.browser.newContext({
            permissions: ['camera', 'microphone'],
            ignoreHTTPSErrors: true,
            ...(opts.headers ? { extraHTTPHeaders: opts.headers } : {}),
        });
        h.onContext?.(ctx);
        const page = await ctx.newPage();
        p = new Participant(h, opts.name || `p${h.participants.length + 1}`, ctx, page);
        h.participants.push(p);
    }
    const { page } = p;
    if (opts.evalTimeout) p.evalTimeout = opts.evalTimeout;
    // The toolbar stays up (as in Jitsi's own UI tests): a hidden toolbar slides out of the
    // viewport, and a moved mouse brings it back only after its transition.
    const hash = `#config.toolbarConfig.alwaysVisible=true${opts.hash ? `&${opts.hash}` : ''}`;
    const query = opts.query ? `?${opts.query}` : '';
    // `patience` (ms): how long a starved browser may take to load the page and to let the
    // prejoin screen be used (the nine-person call on two cores).
    await page.goto(`${h.base}/${room}${query}${hash}`, opts.patience ? { timeout: opts.patience } : undefined);
    if (opts.prejoin === false) return p;
    await p.passPrejoin(opts);
    if (opts.waitJoined !== false) await p.waitJoined();
    return p;
}

export class Participant {
    constructor(h, name, ctx, page) {
        this.h = h;
        this.name = name;
        this.ctx = ctx;
        this.page = page;
        this.log = [];
        this.closed = false;
        /** The app's frame where it is embedded in another page (IFrame API), else null. */
        this.frame = null;
        page.on('pageerror', (e) => this.log.push(`pageerror: ${e}`));
        // A page the app reloads (its reload overlay after a fatal error) loses its state:
        // note when, so that a failure's page log shows it.
        page.on('framenavigated', (f) => {
            if (f === page.mainFrame()) this.log.push(`navigated ${new Date().toISOString()}: ${f.url().slice(0, 200)}`);
        });
        page.on('console', (m) => {
            const t = m.text();
            if (m.type() === 'error' || m.type() === 'warning' || /\[(INFO|WARN|ERROR)\]/.test(t)) {
                this.log.push(`${new Date().toISOString().slice(11, 23)} ${m.type()}: ${t.slice(0, 300)}`);
                if (this.log.length > 400) this.log.splice(0, 100);
            }
        });
    }

    /** Fill the display name, set the prejoin mute buttons, press "Join meeting". */
    /** Leave (hang up) and join the room again in the same browser (its storage kept). */
    async rejoin(room, opts = {}) {
        await this.hangUp();
        await this.page.waitForURL((u) => !u.pathname.endsWith(`/${room}`), { timeout: 8000 }).catch(() => {});
        await this.page.goto('about:blank');
        return join(this.h, room, { ...opts, reuse: this });
    }

    async passPrejoin({ name = this.name, startAudioMuted = false, startVideoMuted = false, patience = 0 } = {}) {
        const { page } = this;
        const joinBtn = page.locator('[data-testid="prejoin.joinMeeting"]');
        await joinBtn.waitFor({ timeout: Math.max(30000, patience) });
        const input = page.locator('#premeeting-name-input');
        if (name !== null && await input.count()) await input.fill(name);
        // Wait for the local tracks the prejoin screen makes before toggling them.
        await this.waitFor(() => {
            const tracks = APP.store.getState()['features/base/tracks'];
            return tracks.filter((t) => t.local).length >= 2;
        }, 'local tracks on the prejoin screen', Math.max(20000, patience));
        if (startAudioMuted) await this.clickToolbar('toolbar.accessibilityLabel.mute', 'audio');
        if (startVideoMuted) await this.clickToolbar('toolbar.accessibilityLabel.videomute', 'video');
        // A browser starved of CPU (nine on two cores) can take longer than the default 30 s.
        await joinBtn.click({ timeout: Math.max(60000, patience) });
    }

    /**
     * Click a toolbar button by its aria-label's i18n key (the DOM carries the text), in the
     * toolbar or, where the app put it, in the "More actions" menu.
     */
    async clickToolbar(key, what, timeout = 30000) {
        // Generous by default: with six browsers and their encoders on two cores a menu can
        // take seconds to open (a click that succeeds returns at once).
        const text = label(key);
        const fail = (e) => { throw new Error(`${this.name}: toolbar button ${what} (${text}): ${e.message}`); };
        const inBar = this.doc.locator(`.toolbox-content-items [aria-label="${text}"]`);
        if (await inBar.count()) {
            await inBar.first().click({ timeout }).catch(fail);
            return;
        }
        await this.doc.locator(`[aria-label="${label('toolbar.accessibilityLabel.moreActions')}"]`).first()
            .click({ timeout }).catch(fail);
        await this.doc.locator(`[aria-label="${text}"]`).first().click({ timeout }).catch(fail);
    }

    /** The aria-labels of the toolbar's buttons and of its "More actions" menu. */
    async toolbarLabels() {
        await this.doc.locator(`[aria-label="${label('toolbar.accessibilityLabel.moreActions')}"]`).first()
            .click({ timeout: 10000 });
        await this.doc.locator('#overflow-context-menu').waitFor({ timeout: 5000 });
        const labels = await this.eval(() => [...document.querySelectorAll(
            '.toolbox-content-items [aria-label], #overflow-context-menu [aria-label]')].map((e) => e.getAttribute('aria-label')));
        await this.page.keyboard.press('Escape');
        return labels;
    }

    /** The app's English text for an i18n key (so selectors follow the app's own labels). */
    t(key, params) {
        return label(key, params);
    }

    /** Where the app runs: its iframe when embedded, else the page. */
    get doc() {
        return this.frame ?? this.page;
    }

    /** Evaluate fn in the page (gets the app's globals). */
    eval(fn, arg) {
        return withTimeout(this.doc.evaluate(fn, arg), this.evalTimeout ?? 15000, `${this.name}: page.evaluate`);
    }

    /** Poll a page predicate until it is truthy. */
    async waitFor(fn, what, ms = 15000, arg) {
        const deadline = Date.now() + ms;
        let last;
        while (Date.now() < deadline) {
            try {
                last = await this.doc.evaluate(fn, arg);
                if (last) return last;
            } catch (e) {
                last = String(e);
            }
            await sleep(200);
        }
        throw new Error(`${this.name}: timed out after ${ms} ms waiting for ${what} (last: ${JSON.stringify(last)?.slice(0, 500)})`);
    }

    waitJoined(ms = 30000) {
        return this.waitFor(() => {
            const c = APP.store.getState()['features/base/conference'];
            return Boolean(c.conference) && !c.joining;
        }, 'conference joined', ms);
    }

    /**
     * Start timing this participant's join in the page (call right after "Join meeting"):
     * when the app joined the MUC, got the bridge session, connected ICE and DTLS, got the
     * remote video track of endpoint `otherId`, and presented its first frame. `joinTimes()`
     * reads the wall-clock times (Date.now(), same clock as the test's).
     */
    traceJoin(otherId) {
        return this.eval((other) => {
            const jt = { start: Date.now() };
            window.__joinTimes = jt;
            const tick = () => {
                const room = APP.conference._room;
                const now = Date.now();
                if (!jt.joined && room?.isJoined?.()) jt.joined = now;
                const session = room?.jvbJingleSession;
                if (!jt.session && session) jt.session = now;
                const pc = session?.peerconnection?.peerconnection;
                if (!jt.ice && pc && ['connected', 'completed'].includes(pc.iceConnectionState)) jt.ice = now;
                if (!jt.dtls && pc?.connectionState === 'connected') jt.dtls = now;
                if (!jt.track) {
                    const t = APP.store.getState()['features/base/tracks']
                        .find((x) => !x.local && x.participantId === other && x.mediaType === 'video' && x.jitsiTrack);
                    if (t) {
                        const id = t.jitsiTrack.getTrack().id;
                        const el = [...document.querySelectorAll('video')].find((e) => e.srcObject?.getVideoTracks?.()[0]?.id === id);
                        if (el) {
                            jt.track = now;
                            el.requestVideoFrameCallback(() => { jt.frame = Date.now(); });
                        }
                    }
                }
                // Every 50 ms (a finer poll costs the starved browsers of the nine-person
                // call too much), for at most a minute.
                if (!jt.frame && !jt.track && now - jt.start < 60000) setTimeout(tick, 50);
            };
            tick();
        }, otherId);
    }

    /** What `traceJoin` saw so far. */
    joinTimes() {
        return this.eval(() => ({ ...window.__joinTimes }));
    }

    /** My endpoint id (the MUC resource). */
    id() {
        return this.eval(() => APP.store.getState()['features/base/conference'].conference?.myUserId());
    }

    /** Remote participants the app knows: [{id, name, role}]. */
    remotes() {
        return this.eval(() => [...APP.store.getState()['features/base/participants'].remote.values()]
            .map((p) => ({ id: p.id, name: p.name, role: p.role })));
    }

    /** Is the conference in P2P mode (the app's view). */
    isP2p() {
        return this.eval(() => Boolean(APP.conference._room?.isP2PActive()));
    }

    /**
     * Media from `other` as this person sees it: the remote video track's <video> element plays
     * (videoWidth > 0 and frames growing) and its audio track receives. Resolves with details;
     * throws after `ms`.
     */
    /** The height of `other`'s video as it arrives here (its element's videoHeight), or 0. */
    async receivedHeight(other) {
        const id = await other.id();
        return this.eval((pid) => {
            const tracks = APP.store.getState()['features/base/tracks'];
            const v = tracks.find((t) => !t.local && t.participantId === pid && t.mediaType === 'video' && !t.muted);
            const mst = v?.jitsiTrack?.getTrack();
            const el = mst && [...document.querySelectorAll('video')].find((e) => e.srcObject?.getVideoTracks?.()[0]?.id === mst.id);
            return el?.videoHeight ?? 0;
        }, id);
    }

    async waitVideoFrom(other, ms = 5000, { audio = false } = {}) {
        const otherId = typeof other === 'string' ? other : await other.id();
        return this.waitFor(async ([id, wantAudio]) => {
            const tracks = APP.store.getState()['features/base/tracks'];
            const v = tracks.find((t) => !t.local && t.participantId === id && t.mediaType === 'video' && !t.muted);
            if (!v?.jitsiTrack) return false;
            const mst = v.jitsiTrack.getTrack();
            const el = [...document.querySelectorAll('video')].find((e) => e.srcObject?.getVideoTracks?.()[0]?.id === mst.id);
            if (!el || el.videoWidth === 0) return false;
            const f0 = el.getVideoPlaybackQuality().totalVideoFrames;
            await new Promise((r) => setTimeout(r, 400));
            const f1 = el.getVideoPlaybackQuality().totalVideoFrames;
            if (f1 <= f0) return false;
            if (wantAudio) {
                const a = tracks.find((t) => !t.local && t.participantId === id && t.mediaType === 'audio' && !t.muted);
                if (!a?.jitsiTrack) return false;
            }
            return { width: el.videoWidth, frames: f1 };
        }, `video from ${otherId}`, ms, [otherId, audio]);
    }

    // ---- dialogs and panes, with the app's own element ids and classes ----

    /** The security dialog: open it from the toolbar. */
    async openSecurityDialog() {
        await this.clickToolbar('toolbar.accessibilityLabel.security', 'security options');
        await this.doc.locator('.security-dialog').first().waitFor({ timeout: 5000 });
    }

    async closeDialog() {
        await this.doc.locator('#modal-header-close-button').click({ timeout: 5000 });
    }

    /** The security dialog shows a password (set here or by another moderator). */
    async dialogShowsLocked() {
        return (await this.doc.locator('.info-password-local, .info-password-remote').count()) > 0;
    }

    async waitDialogLocked(locked, ms = 3000) {
        const deadline = Date.now() + ms;
        while (Date.now() < deadline) {
            if (await this.dialogShowsLocked() === locked) return;
            await sleep(100);
        }
        throw new Error(`${this.name}: the security dialog does not show the room ${locked ? 'locked' : 'unlocked'}`);
    }

    /** Turn the lobby on or off from the security dialog, as a moderator does. */
    async setLobby(on) {
        await this.openSecurityDialog();
        const box = this.doc.locator('#lobby-section-switch');
        await box.waitFor({ state: 'attached', timeout: 5000 });
        if (await box.isChecked() !== on) await this.doc.locator('label[for="lobby-section-switch"]').click();
        await this.waitFor((want) => document.querySelector('#lobby-section-switch')?.checked === want,
            `the lobby switch ${on ? 'on' : 'off'}`, 5000, on);
        await this.closeDialog();
    }

    /**
     * On the lobby screen: knock ("Ask to join"), with a name if the field is empty. The app
     * knocks by itself when it has a name from the prejoin screen.
     */
    async knock(name = this.name) {
        const state = () => this.eval(() => {
            const l = APP.store.getState()['features/lobby'];
            return l.knocking ? 'knocking' : document.querySelector('[data-testid="lobby.knockButton"]') ? 'button' : '';
        });
        const deadline = Date.now() + 15000;
        let s = '';
        while (Date.now() < deadline && !(s = await state())) await sleep(200);
        if (s === 'button') {
            const field = this.doc.locator('#lobby-name-field');
            if (await field.count() && !(await field.inputValue())) await field.fill(name);
            await this.doc.locator('[data-testid="lobby.knockButton"]').click();
        } else if (!s) {
            throw new Error(`${this.name}: no lobby screen`);
        }
        await this.waitFor(() => APP.store.getState()['features/lobby'].knocking, 'knocking', 5000);
    }

    /** The moderator's view: someone named `name` knocks (participants pane lobby list). */
    async lobbyEntry(name, ms = 10000) {
        await this.openParticipantsPane();
        const row = this.doc.locator('#lobby-list [id^="participant-item-"]', { hasText: name });
        await row.first().waitFor({ timeout: ms });
        return (await row.first().getAttribute('id')).slice('participant-item-'.length);
    }

    /** Admit a knocker from the participants pane. */
    async admit(name) {
        const id = await this.lobbyEntry(name);
        await this.doc.locator(`#participant-item-${id}`).hover();
        await this.doc.locator(`[data-testid="admit-${id}"]`).click({ timeout: 5000 });
    }

    /** Reject a knocker from the participants pane ("More moderation options" → Reject). */
    async reject(name) {
        const id = await this.lobbyEntry(name);
        await this.doc.locator(`#participant-item-${id}`).hover();
        const inline = this.doc.locator(`[data-testid="reject-${id}"]`);
        if (!(await inline.isVisible())) {
            await this.doc.locator(`button[title="${label('participantsPane.actions.moreModerationActions')} ${name}"]`)
                .first().click({ timeout: 5000 });
        }
        await inline.click({ timeout: 5000 });
    }

    /** The chat panel's polls tab. */
    async openPolls() {
        if (!(await this.doc.locator('#polls-tab').isVisible())) {
            await this.clickToolbar('toolbar.accessibilityLabel.openChat', 'chat');
        }
        await this.doc.locator('#polls-tab').click({ timeout: 5000 });
        await this.doc.locator('#polls-tab-panel').waitFor({ timeout: 5000 });
    }

    /** Create and send a poll from the polls tab; resolves with its id. */
    async createPoll(question, options) {
        await this.openPolls();
        await this.doc.getByRole('button', { name: label('polls.create.create') }).click({ timeout: 5000 });
        await this.doc.locator('#polls-create-input').fill(question);
        for (let i = 0; i < options.length; i++) {
            const input = this.doc.locator(`#polls-answer-input-${i}`);
            if (!(await input.count())) {
                await this.doc.getByRole('button', { name: label('polls.create.addOption') }).click();
            }
            await input.fill(options[i]);
        }
        await this.doc.getByRole('button', { name: label('polls.create.save') }).click({ timeout: 5000 });
        await this.doc.getByRole('button', { name: label('polls.create.accessibilityLabel.send') }).click({ timeout: 5000 });
        return this.waitFor((q) => Object.values(APP.store.getState()['features/polls'].polls)
            .find((p) => p.question === q)?.id ?? Object.keys(APP.store.getState()['features/polls'].polls)
            .find((k) => APP.store.getState()['features/polls'].polls[k].question === q), `poll "${question}"`, 10000, question);
    }

    /** Tick the options (indexes) of a poll and submit. */
    async answerPoll(pollId, picks) {
        await this.openPolls();
        await this.doc.locator(`#poll-${pollId}`).waitFor({ timeout: 10000 });
        for (const i of picks) {
            await this.doc.locator(`#poll-answer-checkbox-${pollId}-${i}`).check({ force: true });
        }
        await this.doc.locator(`#poll-${pollId}`).getByRole('button', { name: label('polls.answer.submit') }).click({ timeout: 5000 });
    }

    /** The result line of one option as the app shows it ("1 (50%)"). */
    pollResult(pollId, i) {
        return this.doc.locator(`#poll-result-${pollId}-${i}`).innerText({ timeout: 10000 });
    }

    /** Lock the room with a password through the security dialog, as a moderator does. */
    async addPassword(password) {
        await this.openSecurityDialog();
        await this.waitDialogLocked(false);
        await this.doc.locator('.add-password').click({ timeout: 5000 });
        const input = this.doc.locator('#info-password-input');
        await input.waitFor({ timeout: 5000 });
        await input.click();
        await this.page.keyboard.type(password);
        await this.doc.locator('.password-actions button', { hasText: 'Add' }).click({ timeout: 5000 });
        await this.waitDialogLocked(true);
        await this.closeDialog();
    }

    async removePassword() {
        await this.openSecurityDialog();
        await this.waitDialogLocked(true);
        await this.doc.locator('.remove-password').click({ timeout: 5000 });
        await this.waitDialogLocked(false);
        await this.closeDialog();
    }

    /** The password prompt a joiner of a locked room gets. */
    async submitRoomPassword(password, ms = 10000) {
        const input = this.doc.locator('input[name="lockKey"]');
        await input.waitFor({ timeout: ms });
        await input.fill(password);
        await this.doc.locator('#modal-dialog-ok-button').click({ timeout: 5000 });
    }

    async openParticipantsPane() {
        if (await this.doc.locator('#participants-pane').count()) return;
        await this.doc.locator('[aria-label^="Open participants panel"]').first().click({ timeout: 10000 });
        await this.doc.locator('#participants-pane').waitFor({ timeout: 5000 });
    }

    /** Wait until the participants pane shows (or no longer shows) a mute icon for `other`. */
    async waitMuteIcon(other, kind, shown = true, ms = 5000) {
        await this.openParticipantsPane();
        const id = typeof other === 'string' ? other : await other.id();
        const icon = this.doc.locator(`#participant-item-${id} .indicators svg#${kind === 'video' ? 'videoMuted' : 'audioMuted'}`);
        await icon.first().waitFor({ state: shown ? 'visible' : 'hidden', timeout: ms })
            .catch(() => { throw new Error(`${this.name}: ${kind} mute icon of ${id} ${shown ? 'not shown' : 'still shown'} in the participants pane after ${ms} ms`); });
    }

    /**
     * Open a participant's "more" menu in the participants pane. The button shows on hover; when
     * the pane's list leaves it outside the viewport, a click event is sent to it directly.
     */
    async openMoreOptions(id) {
        await this.doc.locator(`#participant-item-${id}`).hover().catch(() => {});
        const button = this.doc.locator(`[data-testid="participant-more-options-${id}"]`);
        await button.click({ timeout: 3000 }).catch(() => button.dispatchEvent('click', {}, { timeout: 5000 }));
    }

    /**
     * In the participants pane, click an entry of participant `id`'s row (shown on hover, or in
     * its "more" menu). The pane re-renders rows as mute icons change: tried again then.
     */
    async clickParticipantEntry(id, sel) {
        let last;
        for (let i = 0; i < 3; i++) {
            try {
                await this.page.mouse.move(0, 0);
                await this.doc.locator(`#participant-item-${id}`).hover({ timeout: 3000 });
                const entry = this.doc.locator(sel);
                if (!(await entry.isVisible())) await this.openMoreOptions(id);
                await entry.click({ timeout: 3000 });
                return;
            } catch (e) {
                last = e;
            }
        }
        throw last;
    }

    /**
     * In the participants pane, open `other`'s "more" menu and click an entry: `item` is a
     * CSS selector, or a function of the participant id giving one (`(id) => `#ejectlink_${id}``
     * for kick); `confirm` presses the dialog's OK.
     */
    async participantAction(other, item, confirm) {
        await this.openParticipantsPane();
        const id = typeof other === 'string' ? other : await other.id();
        await this.openMoreOptions(id);
        const sel = typeof item === 'function' ? item(id) : item;
        await this.doc.locator(sel).filter({ visible: true }).first().click({ timeout: 5000 });
        if (confirm) await this.doc.locator('#modal-dialog-ok-button').click({ timeout: 5000 });
    }

    /** Settings dialog, Moderator tab: "everyone starts muted" (audio, video), then OK. */
    async setStartMuted({ audio, video }) {
        await this.clickToolbar('toolbar.accessibilityLabel.Settings', 'settings');
        await this.doc.locator('.settings-pane').first().waitFor({ timeout: 5000 });
        await this.doc.locator('.settings-dialog').getByText(label('settings.moderator'), { exact: true }).first()
            .click({ timeout: 5000 });
        for (const [name, want] of [['start-audio-muted', audio], ['start-video-muted', video]]) {
            const box = this.doc.locator(`input[name="${name}"]`);
            await box.waitFor({ state: 'attached', timeout: 5000 });
            // The label's decoration grabs the click: click the box's parent, as the app's own tests do.
            if (await box.isChecked() !== want) await box.locator('xpath=ancestor::div[1]').click();
        }
        await this.doc.locator('#modal-dialog-ok-button').click({ timeout: 5000 });
    }

    /** My own microphone / camera is muted (the app's local track state). */
    localMuted(kind) {
        return this.eval((k) => APP.store.getState()['features/base/tracks']
            .some((t) => t.local && t.mediaType === k && t.muted), kind);
    }

    /** Change my display name in the filmstrip, as a person does. */
    async setDisplayName(name) {
        await this.doc.locator('#localVideoContainer').hover();
        await this.doc.locator('#localVideoContainer #localDisplayName').click();
        await this.page.keyboard.press('Control+A');
        await this.page.keyboard.type(name);
        await this.page.keyboard.press('Enter');
    }

    /** The name `other` has on my screen. */
    remoteName(other) {
        return this.eval((id) => APP.store.getState()['features/base/participants'].remote.get(id)?.name, other);
    }

    /** The large video plays `other`'s screenshare (desktop) or camera. */
    async waitLargeVideo(other, kind = 'camera', ms = 10000) {
        const id = typeof other === 'string' ? other : await other.id();
        return this.waitFor(async ([pid, k]) => {
            const t = APP.store.getState()['features/base/tracks'].find((x) => !x.local && x.participantId === pid
                && (k === 'desktop' ? x.videoType === 'desktop' : x.mediaType === 'video' && x.videoType !== 'desktop'));
            const el = document.getElementById('largeVideo');
            if (!t?.jitsiTrack || !el || el.srcObject?.getVideoTracks?.()[0]?.id !== t.jitsiTrack.getTrack().id) return false;
            const f0 = el.getVideoPlaybackQuality().totalVideoFrames;
            await new Promise((r) => setTimeout(r, 400));
            return el.videoWidth > 0 && el.getVideoPlaybackQuality().totalVideoFrames > f0;
        }, `${id}'s ${kind} on the large video`, ms, [id, kind]);
    }

    /** The app shows `other` as the dominant speaker. */
    async waitDominantSpeaker(other, ms = 10000) {
        const id = typeof other === 'string' ? other : await other.id();
        return this.waitFor((pid) => APP.store.getState()['features/base/participants'].dominantSpeaker === pid,
            `${id} as dominant speaker`, ms, id);
    }

    /** The app shows `other` as outside last-N (the "ninja" on its thumbnail), or no longer. */
    async waitNotInLastN(other, shown = true, ms = 5000) {
        const id = typeof other === 'string' ? other : await other.id();
        await this.doc.locator(`#participant_${id} .connection_ninja`).first()
            .waitFor({ state: shown ? 'visible' : 'hidden', timeout: ms })
            .catch(() => { throw new Error(`${this.name}: ${id} is ${shown ? 'not shown' : 'still shown'} as outside last-N after ${ms} ms`); });
    }

    /** One line of what the app shows: room, P2P, remote participants, tracks and videos. */
    async describe() {
        try {
            return `[${this.name}] ` + await withTimeout(this.doc.evaluate(() => JSON.stringify({
                me: APP.conference.getMyUserId?.(),
                room: APP.conference._room?.room?.roomjid,
                joined: APP.conference.isJoined?.(),
                p2p: APP.conference._room?.isP2PActive?.(),
                remotes: [...APP.store.getState()['features/base/participants'].remote.values()].map((p) => `${p.id}:${p.name}`),
                tracks: APP.store.getState()['features/base/tracks'].map((t) => `${t.local ? 'local' : t.participantId}/${t.mediaType}${t.muted ? '(muted)' : ''}${t.jitsiTrack?.isP2P ? '(p2p)' : ''}${t.jitsiTrack?.conference && t.jitsiTrack.conference !== APP.conference._room ? '(old conference)' : ''}=${t.jitsiTrack?.getTrack?.()?.id?.slice(0, 16)}/${t.jitsiTrack?.getTrack?.()?.readyState}`),
                videos: [...document.querySelectorAll('video')].map((e) => `${e.id}:${e.srcObject?.getVideoTracks?.()[0]?.id?.slice(0, 16)}:${e.videoWidth}`),
            })), 3000, 'describe');
        } catch (e) {
            return `[${this.name}] (no state: ${e.message})`;
        }
    }

    /** Leave through the hang-up button, as a person would. */
    async hangUp() {
        await this.clickToolbar('toolbar.accessibilityLabel.hangup', 'leave');
    }

    async close() {
        if (this.closed) return;
        this.closed = true;
        const i = this.h.participants.indexOf(this);
        if (i >= 0) this.h.participants.splice(i, 1);
        await withTimeout(this.ctx.close(), 10000, `${this.name}: close`).catch(() => {});
    }
}

export { assert };

/** The app's recording / live-stream sessions (redux): id, mode, status, error. */
export const recordingSessions = (p) => p.eval(() => Object.values(APP.store.getState()['features/recording'].sessionDatas ?? [])
    .map((s) => ({ id: s.id, mode: s.mode, status: s.status, error: s.error ?? null })));

/** "Start live stream" from the app's menu with stream key `key`. */
export async function startLiveStreamFromMenu(p, key) {
    await p.clickToolbar('dialog.startLiveStreaming', 'start live stream');
    const input = p.doc.locator(`input[placeholder="${label('liveStreaming.enterStreamKey')}"]`);
    await input.first().fill(key, { timeout: 30000 });
    await p.doc.locator('#modal-dialog-ok-button').click({ timeout: 30000 });
}

/** "Stop live stream" from the app's menu, confirmed. */
export async function stopLiveStreamFromMenu(p) {
    await p.clickToolbar('dialog.stopLiveStreaming', 'stop live stream');
    await p.doc.locator('#modal-dialog-ok-button').click({ timeout: 10000 });
}

/** The condition of the error a participant's own start of a live stream gets. */
export const ownStartRefusal = (p) => p.eval(async () => {
    try {
        await APP.conference._room.startRecording({ mode: 'stream', streamId: 'mine' });
        return 'accepted';
    } catch (e) {
        return e?.querySelector?.('error')?.firstElementChild?.tagName ?? String(e?.message ?? e);
    }
});

/**
 * An init script (`ctx.addInitScript`) that makes the page's camera a canvas of one colour,
 * which the test changes (`window.meetdColour`): a viewer of a stream can tell when a change
 * made at the speaker reaches it.
 */
export const COLOUR_CAMERA = `(() => {
    const md = navigator.mediaDevices;
    const real = md.getUserMedia.bind(md);
    md.getUserMedia = async (c) => {
        const s = await real(c);
        if (!c || !c.video) return s;
        const canvas = document.createElement('canvas');
        canvas.width = 640;
        canvas.height = 360;
        const g = canvas.getContext('2d');
        const draw = () => {
            g.fillStyle = window.meetdColour || '#108010';
            g.fillRect(0, 0, 640, 360);
        };
        draw();
        setInterval(draw, 40);
        for (const t of s.getVideoTracks()) {
            s.removeTrack(t);
            t.stop();
        }
        s.addTrack(canvas.captureStream(25).getVideoTracks()[0]);
        return s;
    };
})();`;

/** In a viewer's page: resolves with Date.now() at the first frame whose centre is red. */
export const firstRedFrame = () => new Promise((resolve) => {
    const v = document.querySelector('video');
    const c = document.createElement('canvas');
    c.width = 16;
    c.height = 16;
    const g = c.getContext('2d', { willReadFrequently: true });
    const check = () => {
        g.drawImage(v, 0, 0, 16, 16);
        const [r, gr, b] = g.getImageData(8, 8, 1, 1).data;
        if (r > 150 && gr < 90 && b < 90) return resolve(Date.now());
        v.requestVideoFrameCallback(check);
    };
    v.requestVideoFrameCallback(check);
});

/** Resolves with `fn()`'s first truthy value, asking every `every` ms; fails after `ms`. */
export async function until(what, fn, ms, every = 500) {
    const deadline = Date.now() + ms;
    for (;;) {
        const v = await fn();
        if (v) return v;
        if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
        await sleep(every);
    }
}
