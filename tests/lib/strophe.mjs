// Thin promise helpers around strophe.js (the XMPP library the Jitsi client
// uses). Importing 'strophe.js' under Node loads its Node entry, which installs
// `ws` as globalThis.WebSocket and @xmldom/xmldom as DOMParser/XMLSerializer/
// document (strophe.js >= 5).

import { Strophe, $iq, $msg, $pres } from 'strophe.js';
import { DOMAIN } from './server.mjs';

export { Strophe, $iq, $msg, $pres };

const S = Strophe.Status;
const STATUS_NAMES = Object.fromEntries(Object.entries(S).map(([k, v]) => [v, k]));
export const statusName = (s) => STATUS_NAMES[s] ?? String(s);

export const NS_PING = 'urn:xmpp:ping';
export const NS_DISCO_INFO = 'http://jabber.org/protocol/disco#info';
export const NS_EXTDISCO2 = 'urn:xmpp:extdisco:2';
export const NS_STANZAS = 'urn:ietf:params:xml:ns:xmpp-stanzas';

export function serialize(el) {
    if (!el) return String(el);
    return Strophe.serialize(el);
}

/**
 * Connect a strophe connection and resolve once CONNECTED.
 * `conn.trace` keeps the last 200 raw frames in both directions;
 * `conn.statusLog` every status change; `conn.onStatus` (set by caller)
 * gets later status changes.
 */
export function stropheConnect(service, { jid = DOMAIN, password = null, options = {}, timeoutMs = 15000 } = {}) {
    const conn = new Strophe.Connection(service, options);
    conn.trace = [];
    conn.statusLog = [];
    conn.statusListeners = [];
    const push = (dir) => (data) => {
        conn.trace.push(`${dir} ${typeof data === 'string' ? data : serialize(data)}`);
        if (conn.trace.length > 200) conn.trace.shift();
    };
    conn.xmlInput = push('<<');
    conn.xmlOutput = push('>>');
    return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
            reject(new Error(`strophe connect to ${service} timed out; statuses: ${JSON.stringify(conn.statusLog)}\n${conn.trace.join('\n')}`));
        }, timeoutMs);
        conn.connect(jid, password, (status, condition) => {
            conn.statusLog.push([statusName(status), condition ?? null]);
            for (const l of conn.statusListeners) l(status, condition);
            if (status === S.CONNECTED) {
                clearTimeout(timer);
                resolve(conn);
            } else if ([S.CONNFAIL, S.AUTHFAIL, S.ERROR, S.CONNTIMEOUT, S.DISCONNECTED].includes(status)) {
                clearTimeout(timer);
                reject(new Error(`strophe connect failed: ${statusName(status)} ${condition ?? ''}; statuses: ${JSON.stringify(conn.statusLog)}\n--- trace ---\n${conn.trace.join('\n')}`));
            }
        });
    });
}

/** Disconnect cleanly and wait for DISCONNECTED (bounded). */
export function stropheDisconnect(conn, timeoutMs = 5000) {
    if (!conn || !conn.connected) return Promise.resolve();
    return new Promise((resolve) => {
        const timer = setTimeout(resolve, timeoutMs);
        conn.statusListeners.push((status) => {
            if (status === S.DISCONNECTED) {
                clearTimeout(timer);
                resolve();
            }
        });
        conn.disconnect('test done');
    });
}

/**
 * Send an IQ and resolve with the response stanza, whether result or error.
 * Rejects only on timeout.
 */
export function sendIqAny(conn, iq, timeoutMs = 5000) {
    return new Promise((resolve, reject) => {
        conn.sendIQ(
            iq,
            (res) => resolve(res),
            (err) => {
                if (err === null || err === undefined) {
                    reject(new Error(`IQ timed out after ${timeoutMs} ms: ${serialize(iq.tree ? iq.tree() : iq)}\n--- trace ---\n${conn.trace.slice(-20).join('\n')}`));
                } else {
                    resolve(err);
                }
            },
            timeoutMs,
        );
    });
}

/** Send an IQ, resolve with the result stanza, reject with the error stanza text. */
export async function sendIqResult(conn, iq, timeoutMs = 5000) {
    const res = await sendIqAny(conn, iq, timeoutMs);
    if (res.getAttribute('type') !== 'result') {
        throw new Error(`expected IQ result, got: ${serialize(res)}`);
    }
    return res;
}

/** Resolve with the first message stanza for which pred(msg) is true. */
export function waitForStanza(conn, name, pred, timeoutMs = 5000, what = name) {
    return new Promise((resolve, reject) => {
        let ref = null;
        const timer = setTimeout(() => {
            if (ref) conn.deleteHandler(ref);
            reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}\n--- trace ---\n${conn.trace.slice(-20).join('\n')}`));
        }, timeoutMs);
        ref = conn.addHandler(
            (st) => {
                if (!pred(st)) return true;
                clearTimeout(timer);
                resolve(st);
                return false;
            },
            null,
            name,
        );
    });
}

export function childText(el, name) {
    const c = el.getElementsByTagName(name)[0];
    return c ? c.textContent : null;
}

/** The first child element with the given local name and namespace, or null. */
export function findChild(el, localName, ns) {
    for (let n = el.firstChild; n; n = n.nextSibling) {
        if (n.nodeType !== 1) continue;
        const nns = n.namespaceURI || n.getAttribute('xmlns');
        if ((n.localName || n.nodeName) === localName && (!ns || nns === ns)) return n;
    }
    return null;
}

/** The stanza error condition (local name of the urn:...:xmpp-stanzas child of <error/>), or null. */
export function errorCondition(st) {
    const err = findChild(st, 'error');
    if (!err) return null;
    for (let n = err.firstChild; n; n = n.nextSibling) {
        if (n.nodeType !== 1) continue;
        const nns = n.namespaceURI || n.getAttribute('xmlns');
        if (nns === NS_STANZAS && (n.localName || n.nodeName) !== 'text') return n.localName || n.nodeName;
    }
    return null;
}

export function discoFeatures(result) {
    const q = findChild(result, 'query', NS_DISCO_INFO);
    if (!q) return [];
    return Array.from(q.getElementsByTagName('feature')).map((f) => f.getAttribute('var'));
}

export function discoIdentities(result) {
    const q = findChild(result, 'query', NS_DISCO_INFO);
    if (!q) return [];
    return Array.from(q.getElementsByTagName('identity')).map((i) => ({
        category: i.getAttribute('category'),
        type: i.getAttribute('type'),
        name: i.getAttribute('name'),
    }));
}

export const pingIq = (to) => $iq({ type: 'get', to }).c('ping', { xmlns: NS_PING });
export const discoInfoIq = (to) => $iq({ type: 'get', to }).c('query', { xmlns: NS_DISCO_INFO });
export const extdiscoIq = (to) => $iq({ type: 'get', to }).c('services', { xmlns: NS_EXTDISCO2 });
