// A deliberately minimal XMPP-over-WebSocket (RFC 7395) client on raw `ws`,
// for tests that need exact control of the bytes on the wire: stream
// management resumption, abuse/limit tests. One WebSocket message = one
// top-level element (RFC 7395 framing).

import WebSocket from 'ws';
import { DOMParser } from '@xmldom/xmldom';
import { DOMAIN } from './server.mjs';

export const NS_FRAMING = 'urn:ietf:params:xml:ns:xmpp-framing';
export const NS_STREAM = 'http://etherx.jabber.org/streams';
export const NS_STREAM_ERR = 'urn:ietf:params:xml:ns:xmpp-streams';
export const NS_SASL = 'urn:ietf:params:xml:ns:xmpp-sasl';
export const NS_BIND = 'urn:ietf:params:xml:ns:xmpp-bind';
export const NS_SM = 'urn:xmpp:sm:3';
export const NS_CLIENT = 'jabber:client';

export function parseXml(str) {
    try {
        const doc = new DOMParser({
            onError: (level, msg) => {
                if (level === 'fatalError' || level === 'error') throw new Error(String(msg));
            },
        }).parseFromString(str, 'text/xml');
        return doc.documentElement || null;
    } catch {
        return null;
    }
}

export function xmlEscape(s) {
    return String(s)
        .replace(/&/g, '&amp;')
        .replace(/</g, '&lt;')
        .replace(/>/g, '&gt;')
        .replace(/'/g, '&apos;')
        .replace(/"/g, '&quot;');
}

export function childElements(el) {
    const out = [];
    for (let n = el?.firstChild; n; n = n.nextSibling) if (n.nodeType === 1) out.push(n);
    return out;
}

/** If el is a stream error (<stream:error/> or <error xmlns=streams/>), its condition name; else null. */
export function streamErrorCondition(el) {
    if (!el || el.localName !== 'error' || el.namespaceURI !== NS_STREAM) return null;
    const c = childElements(el).find((c) => c.namespaceURI === NS_STREAM_ERR && c.localName !== 'text');
    return c ? c.localName : '(no condition)';
}

let idCounter = 0;
export const nextId = (p = 'raw') => `${p}-${++idCounter}-${Math.random().toString(36).slice(2, 8)}`;

export class RawXmppWs {
    /** Open a WebSocket with subprotocol xmpp; resolves once open. */
    static open(url, { protocols = ['xmpp'], timeoutMs = 5000, wsOptions = {} } = {}) {
        const c = new RawXmppWs();
        c.url = url;
        c.ws = new WebSocket(url, protocols, { maxPayload: 64 * 1024 * 1024, ...wsOptions });
        c.ws.on('message', (data, isBinary) => c._onFrame(isBinary ? data : data.toString('utf8')));
        c.closed = new Promise((resolve) => {
            c.ws.on('close', (code, reason) => {
                c.isClosed = true;
                c.closeInfo = { code, reason: reason.toString() };
                resolve(c.closeInfo);
                c._wake();
            });
        });
        c.ws.on('error', (e) => {
            c.lastError = e;
        });
        return new Promise((resolve, reject) => {
            const t = setTimeout(() => reject(new Error(`WebSocket ${url} did not open within ${timeoutMs} ms`)), timeoutMs);
            c.ws.once('open', () => {
                clearTimeout(t);
                resolve(c);
            });
            c.ws.once('unexpected-response', (req, res) => {
                clearTimeout(t);
                reject(new Error(`WebSocket upgrade to ${url} refused: HTTP ${res.statusCode}`));
            });
            c.ws.once('error', (e) => {
                clearTimeout(t);
                reject(e);
            });
        });
    }

    constructor() {
        this.queue = []; // unconsumed {raw, el}
        this.trace = []; // all frames, both directions
        this.waiters = [];
        this.isClosed = false;
        this.h = 0; // XEP-0198 inbound stanza counter
        this.smActive = false;
        this.autoAck = true;
    }

    _wake() {
        const w = this.waiters;
        this.waiters = [];
        for (const fn of w) fn();
    }

    _onFrame(raw) {
        if (typeof raw !== 'string') raw = `[binary ${raw.length} bytes]`;
        this.trace.push(`<< ${raw.length > 2000 ? raw.slice(0, 2000) + `…(${raw.length} bytes)` : raw}`);
        if (raw.trim() === '') return; // whitespace keep-alive
        const el = parseXml(raw);
        if (el && el.namespaceURI === NS_SM) {
            if (el.localName === 'enabled' || el.localName === 'resumed') this.smActive = true;
            if (el.localName === 'r' && this.autoAck) {
                this.send(`<a xmlns='${NS_SM}' h='${this.h}'/>`);
            }
        }
        if (el && this.smActive && el.namespaceURI === NS_CLIENT && ['message', 'presence', 'iq'].includes(el.localName)) {
            this.h = (this.h + 1) % 2 ** 32;
        }
        this.queue.push({ raw, el });
        this._wake();
    }

    send(str) {
        this.trace.push(`>> ${str.length > 2000 ? str.slice(0, 2000) + `…(${str.length} bytes)` : str}`);
        this.ws.send(str);
    }

    traceText(n = 40) {
        return this.trace.slice(-n).join('\n');
    }

    /**
     * Wait for (and consume) the first queued frame for which pred({raw, el}) is
     * true. Frames that do not match stay queued. Rejects on timeout or, if
     * `failOnClose`, when the socket closes first.
     */
    waitFor(pred, { timeoutMs = 5000, what = 'frame', failOnClose = true } = {}) {
        return new Promise((resolve, reject) => {
            const deadline = Date.now() + timeoutMs;
            const check = () => {
                const i = this.queue.findIndex((f) => pred(f.el, f.raw));
                if (i >= 0) {
                    const [f] = this.queue.splice(i, 1);
                    clearTimeout(timer);
                    resolve(f.el ?? f.raw);
                    return;
                }
                if (this.isClosed && failOnClose) {
                    clearTimeout(timer);
                    reject(new Error(`socket closed (${JSON.stringify(this.closeInfo)}) while waiting for ${what}\n--- frames ---\n${this.traceText()}`));
                    return;
                }
                this.waiters.push(check);
            };
            const timer = setTimeout(() => {
                this.waiters = this.waiters.filter((w) => w !== check);
                reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}\n--- frames ---\n${this.traceText()}`));
            }, Math.max(0, deadline - Date.now()));
            check();
        });
    }

    waitForElement(localName, ns, opts = {}) {
        return this.waitFor((el) => el && el.localName === localName && (!ns || el.namespaceURI === ns), {
            what: `<${localName} xmlns='${ns}'>`,
            ...opts,
        });
    }

    /** Wait for a stream error; resolves with its condition name. */
    async waitForStreamError(opts = {}) {
        const el = await this.waitFor((el) => streamErrorCondition(el) !== null, {
            what: 'a stream error',
            ...opts,
        });
        return streamErrorCondition(el);
    }

    /** Resolve once the socket is closed, or reject after timeoutMs. */
    waitClosed(timeoutMs = 5000) {
        if (this.isClosed) return Promise.resolve(this.closeInfo);
        return new Promise((resolve, reject) => {
            const t = setTimeout(() => reject(new Error(`socket still open ${timeoutMs} ms later\n--- frames ---\n${this.traceText()}`)), timeoutMs);
            this.closed.then((info) => {
                clearTimeout(t);
                resolve(info);
            });
        });
    }

    /** Send RFC 7395 <open/> and wait for the server's <open/> and <stream:features/>. */
    async openStream(domain = DOMAIN) {
        this.send(`<open xmlns='${NS_FRAMING}' to='${domain}' version='1.0'/>`);
        const open = await this.waitForElement('open', NS_FRAMING);
        const features = await this.waitForElement('features', NS_STREAM);
        return { open, features };
    }

    /** SASL ANONYMOUS, stream restart; returns the post-auth features. */
    async authAnonymous(domain = DOMAIN) {
        const { features } = await this.openStream(domain);
        const mechs = Array.from(features.getElementsByTagNameNS(NS_SASL, 'mechanism')).map((m) => m.textContent.trim());
        if (!mechs.includes('ANONYMOUS')) {
            throw new Error(`server does not offer SASL ANONYMOUS on ${domain}: ${mechs.join(',')}`);
        }
        this.send(`<auth xmlns='${NS_SASL}' mechanism='ANONYMOUS'/>`);
        const res = await this.waitFor((el) => el && el.namespaceURI === NS_SASL && ['success', 'failure'].includes(el.localName), {
            what: 'SASL success/failure',
        });
        if (res.localName !== 'success') throw new Error(`SASL ANONYMOUS failed\n--- frames ---\n${this.traceText()}`);
        const restarted = await this.openStream(domain);
        this.postAuthFeatures = restarted.features;
        return restarted.features;
    }

    async bind() {
        const id = nextId('bind');
        this.send(`<iq xmlns='${NS_CLIENT}' type='set' id='${id}'><bind xmlns='${NS_BIND}'/></iq>`);
        const res = await this.waitFor((el) => el && el.localName === 'iq' && el.getAttribute('id') === id, { what: 'bind result' });
        if (res.getAttribute('type') !== 'result') throw new Error(`bind failed\n--- frames ---\n${this.traceText()}`);
        const jidEl = res.getElementsByTagNameNS(NS_BIND, 'jid')[0];
        this.jid = jidEl.textContent.trim();
        return this.jid;
    }

    /** Full anonymous login (open, ANONYMOUS, restart, bind). Resolves with the bound JID. */
    async login(domain = DOMAIN) {
        await this.authAnonymous(domain);
        return this.bind();
    }

    hasSmFeature(features = this.postAuthFeatures) {
        return !!features && features.getElementsByTagNameNS(NS_SM, 'sm').length > 0;
    }

    async iq(type, to, payload, opts = {}) {
        const id = nextId('iq');
        this.send(`<iq xmlns='${NS_CLIENT}' type='${type}' id='${id}'${to ? ` to='${to}'` : ''}>${payload}</iq>`);
        return this.waitFor((el) => el && el.localName === 'iq' && el.getAttribute('id') === id, { what: `iq ${id}`, ...opts });
    }

    async ping(to = DOMAIN, opts = {}) {
        return this.iq('get', to, `<ping xmlns='urn:xmpp:ping'/>`, opts);
    }

    /** Graceful close: RFC 7395 <close/>, then WebSocket close. */
    async close() {
        if (this.isClosed) return;
        try {
            this.send(`<close xmlns='${NS_FRAMING}'/>`);
        } catch {
            // already gone
        }
        try {
            this.ws.close(1000);
        } catch {
            // ignore
        }
        await this.waitClosed(3000).catch(() => this.ws.terminate());
    }

    /** Abrupt loss of the connection (no <close/>, no close frame). */
    terminate() {
        this.ws.terminate();
    }
}
