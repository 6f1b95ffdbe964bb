// A minimal Jitsi-like conference client for the browser (what lib-jitsi-meet does on the
// wire, reduced to one bridge session): strophe.js over WebSocket, anonymous login, disco#info
// answers, conference request to focus.<domain>, MUC join, Jingle session-initiate → SDP offer
// (one m-line per remote source, as lib-jitsi-meet does for bridge sessions), session-accept
// with our sources (SSRC-signalled simulcast by SDP munging, like lib-jitsi-meet's
// SdpSimulcast), transport-info, source-add / source-remove / member-left renegotiation, the
// bridge channel (colibri WebSocket) and getStats() snapshots for the test.
//
// Loaded by page.html; driven by media.test.mjs through window.meet.
(() => {
'use strict';

const Strophe = window.Strophe.Strophe || window.Strophe;
const $iq = window.$iq || window.Strophe.$iq;
const $pres = window.$pres || window.Strophe.$pres;

const NS = {
    JINGLE: 'urn:xmpp:jingle:1',
    RTP: 'urn:xmpp:jingle:apps:rtp:1',
    ICE: 'urn:xmpp:jingle:transports:ice-udp:1',
    DTLS: 'urn:xmpp:jingle:apps:dtls:0',
    SCTP: 'urn:xmpp:jingle:transports:dtls-sctp:1',
    FB: 'urn:xmpp:jingle:apps:rtp:rtcp-fb:0',
    HDREXT: 'urn:xmpp:jingle:apps:rtp:rtp-hdrext:0',
    SSMA: 'urn:xmpp:jingle:apps:rtp:ssma:0',
    GROUP: 'urn:xmpp:jingle:apps:grouping:0',
    JITMEET: 'http://jitsi.org/jitmeet',
    COLIBRI: 'http://jitsi.org/protocol/colibri',
    FOCUS: 'http://jitsi.org/protocol/focus',
    DISCO: 'http://jabber.org/protocol/disco#info',
    MUC: 'http://jabber.org/protocol/muc',
    MUC_USER: 'http://jabber.org/protocol/muc#user',
};

// lib-jitsi-meet's feature list (fixture 07, without ssrc-rewriting).
const FEATURES = [
    'http://jabber.org/protocol/caps', 'http://jitsi.org/json-encoded-sources',
    'http://jitsi.org/receive-multiple-video-streams', 'http://jitsi.org/remb', 'http://jitsi.org/source-name',
    'http://jitsi.org/start-muted-room-metadata', 'http://jitsi.org/tcc', 'http://jitsi.org/visitors-1',
    'urn:ietf:rfc:4588', 'urn:xmpp:jingle:1', 'urn:xmpp:jingle:apps:dtls:0', 'urn:xmpp:jingle:apps:rtp:1',
    'urn:xmpp:jingle:apps:rtp:audio', 'urn:xmpp:jingle:apps:rtp:video', 'urn:xmpp:jingle:transports:dtls-sctp:1',
    'urn:xmpp:jingle:transports:ice-udp:1', 'urn:xmpp:rayo:client:1',
];

// Direct element children of `el` with local name `name` and namespace `ns` (or any).
function kids(el, name, ns) {
    return Array.from(el ? el.children : []).filter((c) => (!name || c.localName === name) && (!ns || c.namespaceURI === ns));
}
const kid = (el, name, ns) => kids(el, name, ns)[0];
const attr = (el, a) => (el ? el.getAttribute(a) : null);
const rand32 = () => (crypto.getRandomValues(new Uint32Array(1))[0] >>> 1) + 1; // 1 … 2^31

class Client {
    constructor(opts) {
        this.opts = opts;
        this.nick = opts.nick;
        this.room = opts.room; // bare room JID
        this.log = [];
        this.jingleIn = []; // serialized Jingle IQs received
        this.jingleOut = [];
        this.errors = [];
        this.members = new Map(); // nick → real jid
        this.pc = null;
        this.sid = null;
        this.focusJid = `${this.room}/focus`;
        this.remote = null; // model of the remote offer
        this.queue = Promise.resolve();
        this.t = {}; // timestamps (performance.now())
        this.channelMsgs = [];
        this.localSources = null;
        this.simSsrcs = null;
    }

    L(...a) {
        const line = `${(performance.now() / 1000).toFixed(3)} ${a.join(' ')}`;
        this.log.push(line);
        if (this.log.length > 2000) this.log.splice(0, 500);
    }

    err(what, e) {
        const msg = `${what}: ${e && e.stack ? e.stack : e}`;
        this.errors.push(msg);
        this.L('ERROR', msg);
    }

    // ---------------------------------------------------------------- XMPP
    connect() {
        return new Promise((resolve, reject) => {
            // ws:// → strophe's WebSocket transport; http:// → its BOSH transport (XEP-0124/0206),
            // what the mobile apps use by default. lib-jitsi-meet sets maxRetries to 3 for BOSH.
            const c = new Strophe.Connection(this.opts.serviceUrl || this.opts.wsUrl, {});
            c.maxRetries = 3;
            this.conn = c;
            this.transport = c._proto instanceof Strophe.Bosh ? 'bosh' : c._proto instanceof Strophe.Websocket ? 'websocket' : 'other';
            this.L('xmpp transport', this.transport, this.opts.serviceUrl || this.opts.wsUrl);
            this.boshBodies = 0; // BOSH <body/> responses received (0 over WebSocket)
            c.xmlInput = (x) => {
                if (x.localName === 'body') this.boshBodies++;
                if (this.opts.trace) this.L('<<', Strophe.serialize(x));
            };
            c.xmlOutput = (x) => { if (this.opts.trace) this.L('>>', Strophe.serialize(x)); };
            this.t.connectStart = performance.now();
            c.connect(this.opts.domain, null, (status, cond) => {
                this.L('xmpp status', status, cond || '');
                if (status === Strophe.Status.CONNECTED) {
                    this.t.connected = performance.now();
                    this.jid = c.jid;
                    c.addHandler((iq) => this.onDisco(iq), NS.DISCO, 'iq', 'get');
                    c.addHandler((iq) => this.onJingleIq(iq), NS.JINGLE, 'iq', 'set');
                    c.addHandler((p) => this.onPresence(p), null, 'presence');
                    resolve(c.jid);
                } else if ([Strophe.Status.CONNFAIL, Strophe.Status.AUTHFAIL, Strophe.Status.ERROR,
                    Strophe.Status.CONNTIMEOUT].includes(status)) {
                    reject(new Error(`XMPP connect failed: ${status} ${cond || ''}`));
                } else if (status === Strophe.Status.DISCONNECTED) {
                    this.t.disconnected = performance.now();
                }
            });
        });
    }

    sendIQ(iq, timeout = 10000) {
        return new Promise((resolve, reject) => {
            this.conn.sendIQ(iq, (r) => resolve(r), (e) => reject(new Error(e ? Strophe.serialize(e) : 'IQ timeout')), timeout);
        });
    }

    onDisco(iq) {
        const r = $iq({ type: 'result', to: attr(iq, 'from'), id: attr(iq, 'id') }).c('query', { xmlns: NS.DISCO });
        const node = attr(kid(iq, 'query'), 'node');
        if (node) r.attrs({ node });
        for (const f of this.features()) r.c('feature', { var: f }).up();
        this.conn.send(r);
        return true;
    }

    features() {
        return FEATURES.filter((f) => this.opts.json || f !== 'http://jitsi.org/json-encoded-sources');
    }

    async conferenceRequest() {
        const iq = $iq({ type: 'set', to: `focus.${this.opts.domain}` })
            .c('conference', { xmlns: NS.FOCUS, room: this.room, 'machine-uid': `m${this.nick}` })
            .c('property', { name: 'rtcstatsEnabled', value: 'false' }).up()
            .c('property', { name: 'visitors-version', value: '1' });
        const r = await this.sendIQ(iq, 15000);
        const conf = kid(r, 'conference', NS.FOCUS);
        if (attr(conf, 'ready') !== 'true') throw new Error(`conference not ready: ${Strophe.serialize(r)}`);
        this.focusUserJid = attr(conf, 'focusjid');
        return this.focusUserJid;
    }

    join() {
        const si = JSON.stringify({ [`${this.nick}-a0`]: { muted: false }, [`${this.nick}-v0`]: { muted: false, videoType: 'camera' } });
        const p = $pres({ to: `${this.room}/${this.nick}` })
            .c('x', { xmlns: NS.MUC }).up()
            .c('stats-id').t(`stats-${this.nick}`).up()
            .c('SourceInfo').t(si).up()
            .c('jitsi_participant_codecList').t('av1,vp9,vp8,h264').up()
            .c('nick', { xmlns: 'http://jabber.org/protocol/nick' }).t(`Participant ${this.nick}`);
        this.joined = new Promise((resolve) => { this.onJoined = resolve; });
        this.conn.send(p);
        return this.joined;
    }

    onPresence(p) {
        try {
            const from = attr(p, 'from') || '';
            if (!from.startsWith(`${this.room}/`)) return true;
            const nick = from.slice(this.room.length + 1);
            const x = kid(p, 'x', NS.MUC_USER);
            const item = kid(x, 'item');
            if (attr(p, 'type') === 'unavailable') {
                this.members.delete(nick);
                this.L('member left', nick);
                if (nick !== 'focus' && nick !== this.nick) this.enqueue('member-left', () => this.removeOwner(nick));
                return true;
            }
            if (attr(p, 'type') === 'error') {
                this.err('presence error', Strophe.serialize(p));
                return true;
            }
            this.members.set(nick, attr(item, 'jid'));
            if (kids(x, 'status').some((s) => attr(s, 'code') === '110') && this.onJoined) {
                this.t.joined = performance.now();
                this.onJoined(nick);
                this.onJoined = null;
            }
        } catch (e) {
            this.err('presence', e);
        }
        return true;
    }

    leave() {
        this.L('leaving');
        try { if (this.channel) this.channel.close(); } catch { /* ignore */ }
        try { if (this.pc) this.pc.close(); } catch { /* ignore */ }
        for (const t of this.localStream ? this.localStream.getTracks() : []) t.stop();
        this.conn.send($pres({ to: `${this.room}/${this.nick}`, type: 'unavailable' }));
        this.conn.flush();
        return new Promise((resolve) => {
            setTimeout(() => { this.conn.disconnect('bye'); resolve(true); }, 300);
        });
    }

    // ---------------------------------------------------------------- Jingle in
    onJingleIq(iq) {
        const j = kid(iq, 'jingle', NS.JINGLE);
        const action = attr(j, 'action');
        const from = attr(iq, 'from');
        this.jingleIn.push(Strophe.serialize(iq));
        this.L('jingle in', action);
        if (this.opts.p2p && (action === 'session-initiate' ? Strophe.getResourceFromJid(from) !== 'focus'
            : this.p2p && attr(j, 'sid') === this.p2p.sid && from === this.p2p.peerJid)) {
            return this.onP2PJingle(iq, j, action, from);
        }
        if (action !== 'session-initiate' && (attr(j, 'sid') !== this.sid || from !== this.focusJid)) {
            this.conn.send($iq({ type: 'error', to: from, id: attr(iq, 'id') })
                .c('error', { type: 'cancel' }).c('item-not-found', { xmlns: 'urn:ietf:params:xml:ns:xmpp-stanzas' }).up()
                .c('unknown-session', { xmlns: 'urn:xmpp:jingle:errors:1' }));
            return true;
        }
        this.conn.send($iq({ type: 'result', to: from, id: attr(iq, 'id') }));
        switch (action) {
        case 'session-initiate':
            if (from !== this.focusJid) {
                this.err('session-initiate', `from non-focus ${from}`);
                break;
            }
            this.t.sessionInitiate = performance.now();
            this.sid = attr(j, 'sid');
            this.enqueue('session-initiate', () => this.onSessionInitiate(j));
            break;
        case 'source-add':
            this.enqueue('source-add', () => this.onSourceChange(j, true));
            break;
        case 'source-remove':
            this.enqueue('source-remove', () => this.onSourceChange(j, false));
            break;
        case 'session-terminate':
            this.L('session terminated', Strophe.serialize(j));
            this.terminated = Strophe.serialize(j);
            break;
        default:
            this.L('ignored jingle action', action);
        }
        return true;
    }

    enqueue(what, fn) {
        this.queue = this.queue.then(fn).catch((e) => this.err(what, e));
        return this.queue;
    }

    // Sources of one <jingle> (classic <source>/<ssrc-group> in the descriptions, or the JSON
    // message) as [{media, owner, name, videoType, ssrcs:[{ssrc, params:[[n,v]]}], groups:[{sem, ssrcs}]}],
    // one entry per source name (primary + RTX share a name and thus an m-line).
    parseSources(j) {
        const byName = new Map();
        const entry = (media, owner, name) => {
            const key = `${media}/${name || owner}`;
            if (!byName.has(key)) byName.set(key, { media, owner, name, ssrcs: [], groups: [] });
            return byName.get(key);
        };
        const json = kid(j, 'json-message', NS.JITMEET);
        if (json) {
            const msg = JSON.parse(json.textContent);
            for (const [owner, arr] of Object.entries(msg.sources || {})) {
                const [vs = [], vg = [], as = [], ag = []] = arr;
                for (const [media, srcs, groups] of [['video', vs, vg], ['audio', as, ag]]) {
                    const ssrcOwner = new Map();
                    for (const s of srcs) {
                        const e = entry(media, owner, s.n);
                        if (media === 'video') e.videoType = s.v === 'd' ? 'desktop' : 'camera';
                        e.ssrcs.push({ ssrc: String(s.s), params: s.m ? [['msid', s.m]] : [] });
                        ssrcOwner.set(String(s.s), e);
                    }
                    for (const g of groups) {
                        const [sem, ...ssrcs] = g;
                        const e = ssrcOwner.get(String(ssrcs[0]));
                        if (e) e.groups.push({ sem: sem === 's' ? 'SIM' : sem === 'f' ? 'FID' : sem, ssrcs: ssrcs.map(String) });
                    }
                }
            }
        }
        for (const content of kids(j, 'content')) {
            const desc = kid(content, 'description', NS.RTP);
            if (!desc) continue;
            const media = attr(desc, 'media') || attr(content, 'name');
            const ssrcOwner = new Map();
            for (const s of kids(desc, 'source', NS.SSMA)) {
                const info = kid(s, 'ssrc-info', NS.JITMEET);
                let owner = attr(info, 'owner') || 'unknown';
                if (owner.includes('/')) owner = owner.slice(owner.lastIndexOf('/') + 1);
                const e = entry(media, owner, attr(s, 'name'));
                if (attr(s, 'videoType')) e.videoType = attr(s, 'videoType');
                e.ssrcs.push({ ssrc: attr(s, 'ssrc'), params: kids(s, 'parameter').map((p) => [attr(p, 'name'), attr(p, 'value')]) });
                ssrcOwner.set(attr(s, 'ssrc'), e);
            }
            for (const g of kids(desc, 'ssrc-group', NS.SSMA)) {
                const ssrcs = kids(g, 'source').map((s) => attr(s, 'ssrc'));
                const e = ssrcOwner.get(ssrcs[0]);
                if (e) e.groups.push({ sem: attr(g, 'semantics'), ssrcs });
            }
        }
        return [...byName.values()];
    }

    async onSessionInitiate(j) {
        // Codecs, extensions and the transport, per content.
        const m = { media: {}, mlines: [], version: 1, sessId: String(Date.now()) };
        for (const content of kids(j, 'content')) {
            const name = attr(content, 'name');
            const desc = kid(content, 'description', NS.RTP);
            const tr = kid(content, 'transport', NS.ICE);
            if (tr && !m.transport) {
                const fp = kid(tr, 'fingerprint', NS.DTLS);
                m.transport = {
                    ufrag: attr(tr, 'ufrag'), pwd: attr(tr, 'pwd'),
                    fp: { hash: attr(fp, 'hash'), value: fp ? fp.textContent.trim() : '', setup: attr(fp, 'setup') || 'actpass' },
                    cryptex: attr(fp, 'cryptex') === 'true',
                    candidates: kids(tr, 'candidate').map((c) => Object.fromEntries(Array.from(c.attributes).map((a) => [a.name, a.value]))),
                };
                const ws = kid(tr, 'web-socket', NS.COLIBRI);
                if (ws) m.wsUrl = attr(ws, 'url');
            }
            const sctp = tr && kid(tr, 'sctpmap', NS.SCTP);
            if (sctp) {
                m.media.data = { name, sctpPort: attr(sctp, 'number') };
                continue;
            }
            if (!desc) continue;
            const media = attr(desc, 'media');
            m.media[media] = {
                name,
                senders: attr(content, 'senders') || 'both',
                maxptime: attr(desc, 'maxptime'),
                rtcpMux: !!kid(desc, 'rtcp-mux'),
                allowMixed: !!kid(desc, 'extmap-allow-mixed', NS.HDREXT),
                pts: kids(desc, 'payload-type').map((pt) => ({
                    id: attr(pt, 'id'), name: attr(pt, 'name'), clock: attr(pt, 'clockrate'), ch: attr(pt, 'channels'),
                    params: kids(pt, 'parameter').map((p) => (attr(p, 'name') ? `${attr(p, 'name')}=${attr(p, 'value')}` : attr(p, 'value'))),
                    fb: kids(pt, 'rtcp-fb', NS.FB).map((f) => [attr(f, 'type'), attr(f, 'subtype')].filter(Boolean).join(' ')),
                })),
                exts: kids(desc, 'rtp-hdrext', NS.HDREXT).map((e) => ({ id: attr(e, 'id'), uri: attr(e, 'uri') }))
                    .filter((e) => !(this.opts.dropExt || []).includes(e.uri)),
            };
        }
        this.remote = m;
        this.bundle = !!kids(j, 'group', NS.GROUP).find((g) => attr(g, 'semantics') === 'BUNDLE');
        // First m-line of each media: ours (sendrecv) with the bridge's feedback source; then data;
        // every remote source gets its own m-line (the bridge sends on it).
        const sources = this.parseSources(j);
        for (const media of ['audio', 'video']) {
            if (!m.media[media]) continue;
            const fb = sources.find((s) => s.media === media && s.owner === 'jvb');
            m.mlines.push({ media, main: true, owner: 'jvb', src: fb || null, dir: 'sendrecv' });
        }
        if (m.media.data) m.mlines.push({ media: 'application' });
        this.addRemoteSources(sources.filter((s) => s.owner !== 'jvb'));

        await this.startBridgeChannel();
        this.pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require', encodedInsertableStreams: false });
        this.pc.onicecandidate = (ev) => this.onLocalCandidate(ev.candidate);
        this.pc.oniceconnectionstatechange = () => {
            this.L('ice', this.pc.iceConnectionState);
            if (this.pc.iceConnectionState === 'connected' && !this.t.iceConnected) this.t.iceConnected = performance.now();
        };
        this.pc.onconnectionstatechange = () => {
            this.L('pc', this.pc.connectionState);
            if (this.pc.connectionState === 'connected' && !this.t.pcConnected) this.t.pcConnected = performance.now();
        };
        this.pc.ontrack = (ev) => this.attachRemoteTrack(ev);

        await this.pc.setRemoteDescription({ type: 'offer', sdp: this.buildOffer() });
        await this.afterBridgeOffer(m);
    }

    attachRemoteTrack(ev) {
        this.L('ontrack', ev.track.kind, ev.transceiver.mid, ev.streams.map((s) => s.id).join(','));
        // Chrome only decodes remote audio that is played out: attach every remote track to
        // a media element, as the Jitsi app does.
        const el = document.createElement(ev.track.kind === 'audio' ? 'audio' : 'video');
        el.autoplay = true;
        el.muted = false;
        el.playsInline = true;
        el.dataset.mid = ev.transceiver.mid;
        el.srcObject = new MediaStream([ev.track]);
        document.body.appendChild(el);
        el.play().catch((e) => this.L('play()', ev.track.kind, ev.transceiver.mid, String(e)));
    }

    async afterBridgeOffer(m) {
        // Our tracks go on the first audio / video m-line (the bridge's sendrecv ones).
        for (const tr of this.pc.getTransceivers()) {
            const ml = m.mlines[Number(tr.mid)];
            if (!ml || !ml.main) continue;
            const track = this.localStream.getTracks().find((t) => t.kind === ml.media);
            if (!track) continue;
            await tr.sender.replaceTrack(track);
            tr.sender.setStreams(this.localStream);
            tr.direction = 'sendrecv';
        }
        const answer = await this.answer();
        this.localSources = this.sourcesFromLocal(answer.sdp);
        await this.sendSessionAccept(answer.sdp);
    }

    addRemoteSources(sources) {
        for (const s of sources) {
            if (!s.ssrcs.some((x) => x.params.some(([n]) => n === 'msid'))) continue; // LJM: no msid → no SDP
            const existing = this.remote.mlines.find((ml) => !ml.main && ml.src && ml.src.name === s.name && ml.media === s.media && ml.dir !== 'inactive');
            if (existing) {
                existing.src = s;
                continue;
            }
            this.remote.mlines.push({ media: s.media, main: false, owner: s.owner, src: s, dir: 'sendonly' });
        }
    }

    async onSourceChange(j, add) {
        if (!this.remote) throw new Error('source change before session-initiate');
        const sources = this.parseSources(j);
        this.L(add ? 'source-add' : 'source-remove', sources.map((s) => `${s.name}:${s.ssrcs.map((x) => x.ssrc).join('/')}`).join(' '));
        if (add) {
            this.addRemoteSources(sources.filter((s) => s.owner !== 'jvb'));
        } else {
            for (const s of sources) {
                const gone = new Set(s.ssrcs.map((x) => x.ssrc));
                for (const ml of this.remote.mlines) {
                    if (!ml.main && ml.src && ml.media === s.media && ml.src.ssrcs.some((x) => gone.has(x.ssrc))) {
                        ml.src = null;
                        ml.dir = 'inactive';
                    }
                }
            }
        }
        await this.renegotiate();
    }

    async removeOwner(nick) {
        if (!this.remote) return;
        let changed = false;
        for (const ml of this.remote.mlines) {
            if (!ml.main && ml.owner === nick && ml.dir !== 'inactive') {
                ml.src = null;
                ml.dir = 'inactive';
                changed = true;
            }
        }
        if (changed) await this.renegotiate();
    }

    async renegotiate() {
        this.remote.version++;
        await this.pc.setRemoteDescription({ type: 'offer', sdp: this.buildOffer() });
        await this.answer();
    }

    async answer() {
        const a = await this.pc.createAnswer();
        let sdp = a.sdp;
        if (this.opts.simulcast) sdp = this.mungeSimulcast(sdp);
        await this.pc.setLocalDescription({ type: 'answer', sdp });
        this.lastAnswer = this.pc.localDescription.sdp;
        this.lastOffer = this.pc.remoteDescription.sdp;
        return this.pc.localDescription;
    }

    // ---------------------------------------------------------------- SDP
    buildOffer() {
        const m = this.remote;
        const t = m.transport;
        const lines = ['v=0', `o=- ${m.sessId} ${m.version} IN IP4 0.0.0.0`, 's=-', 't=0 0'];
        if (this.bundle) lines.push(`a=group:BUNDLE ${m.mlines.map((_, i) => i).join(' ')}`);
        if (t.cryptex) lines.push('a=cryptex');
        lines.push('a=msid-semantic: WMS *');
        m.mlines.forEach((ml, i) => {
            const common = () => {
                lines.push('c=IN IP4 0.0.0.0');
                lines.push(`a=ice-ufrag:${t.ufrag}`, `a=ice-pwd:${t.pwd}`);
                lines.push(`a=fingerprint:${t.fp.hash} ${t.fp.value}`, `a=setup:${t.fp.setup}`);
                lines.push(`a=mid:${i}`);
                for (const c of t.candidates) {
                    let s = `a=candidate:${c.foundation} ${c.component} ${c.protocol} ${c.priority} ${c.ip} ${c.port} typ ${c.type}`;
                    if (c['rel-addr']) s += ` raddr ${c['rel-addr']} rport ${c['rel-port']}`;
                    if (c.tcptype) s += ` tcptype ${c.tcptype}`;
                    s += ` generation ${c.generation || 0}`;
                    lines.push(s);
                }
            };
            if (ml.media === 'application') {
                lines.push('m=application 9 UDP/DTLS/SCTP webrtc-datachannel');
                common();
                lines.push(`a=sctp-port:${m.media.data.sctpPort}`);
                return;
            }
            const md = m.media[ml.media];
            lines.push(`m=${ml.media} 9 UDP/TLS/RTP/SAVPF ${md.pts.map((p) => p.id).join(' ')}`);
            common();
            lines.push('a=rtcp:9 IN IP4 0.0.0.0');
            for (const e of md.exts) lines.push(`a=extmap:${e.id} ${e.uri}`);
            if (md.allowMixed) lines.push('a=extmap-allow-mixed');
            lines.push(`a=${ml.dir}`);
            if (md.rtcpMux) lines.push('a=rtcp-mux');
            for (const p of md.pts) {
                lines.push(`a=rtpmap:${p.id} ${p.name}/${p.clock}${p.ch && p.ch !== '1' ? `/${p.ch}` : ''}`);
                if (p.params.length) lines.push(`a=fmtp:${p.id} ${p.params.join(';')}`);
                for (const f of p.fb) lines.push(`a=rtcp-fb:${p.id} ${f}`);
            }
            if (md.maxptime) lines.push(`a=maxptime:${md.maxptime}`);
            if (ml.src) {
                for (const g of ml.src.groups) lines.push(`a=ssrc-group:${g.sem} ${g.ssrcs.join(' ')}`);
                for (const s of ml.src.ssrcs) for (const [n, v] of s.params) lines.push(`a=ssrc:${s.ssrc} ${n}:${v}`);
            }
        });
        const sdp = lines.join('\r\n') + '\r\n';
        // lib-jitsi-meet's codec preference is applied to the remote offer too (it decides what we send).
        return this.opts.videoCodec ? preferCodec(sdp, this.opts.videoCodec) : sdp;
    }

    // Like lib-jitsi-meet's SdpSimulcast: turn the single video SSRC (+ RTX) of our sending
    // m-line into 3 SSRC-signalled simulcast layers, each with RTX, the same SSRCs every time.
    mungeSimulcast(sdp) {
        const secs = splitSdp(sdp);
        const sec = secs.media.find((s) => s.mid === '1' && s.media === 'video');
        if (!sec || sec.lines.some((l) => l.startsWith('a=ssrc-group:SIM'))) return sdp;
        const fid = sec.lines.find((l) => l.startsWith('a=ssrc-group:FID'));
        const ssrcLines = sec.lines.filter((l) => l.startsWith('a=ssrc:'));
        if (!ssrcLines.length) return sdp;
        const primary = fid ? fid.split(' ')[1] : ssrcLines[0].slice(7).split(' ')[0];
        const rtx = fid ? fid.split(' ')[2] : null;
        const attrsOf = (ssrc) => ssrcLines.filter((l) => l.startsWith(`a=ssrc:${ssrc} `)).map((l) => l.slice(`a=ssrc:${ssrc} `.length));
        const base = attrsOf(primary);
        if (!this.simSsrcs) this.simSsrcs = { p: [primary, String(rand32()), String(rand32())], r: [rtx, String(rand32()), String(rand32())] };
        const { p, r } = this.simSsrcs;
        const out = sec.lines.filter((l) => !l.startsWith('a=ssrc:') && !l.startsWith('a=ssrc-group:'));
        out.push(`a=ssrc-group:SIM ${p.join(' ')}`);
        for (let i = 0; i < 3; i++) if (r[i]) out.push(`a=ssrc-group:FID ${p[i]} ${r[i]}`);
        for (let i = 0; i < 3; i++) {
            for (const a of base) out.push(`a=ssrc:${p[i]} ${a}`);
            if (r[i]) for (const a of base) out.push(`a=ssrc:${r[i]} ${a}`);
        }
        sec.lines = out;
        return joinSdp(secs);
    }

    // Our sources from the local answer: audio on mid 0, video on mid 1.
    sourcesFromLocal(sdp) {
        const secs = splitSdp(sdp);
        const res = {};
        for (const sec of secs.media) {
            const ml = this.remote.mlines[Number(sec.mid)];
            if (!ml || !ml.main) continue;
            const msidLine = sec.lines.find((l) => l.startsWith('a=msid:'));
            const ssrcs = [];
            for (const l of sec.lines.filter((x) => x.startsWith('a=ssrc:'))) {
                const s = l.slice(7).split(' ')[0];
                if (!ssrcs.includes(s)) ssrcs.push(s);
            }
            const groups = sec.lines.filter((l) => l.startsWith('a=ssrc-group:')).map((l) => {
                const [sem, ...ss] = l.slice('a=ssrc-group:'.length).split(' ');
                return { sem, ssrcs: ss };
            });
            // Chrome puts the msid on the SSRC lines (a=ssrc:N msid:stream track) or on a=msid.
            const ssrcMsid = sec.lines.find((l) => /^a=ssrc:\d+ msid:/.test(l));
            const trackId = msidLine ? msidLine.split(' ')[1] : ssrcMsid ? ssrcMsid.split(' ')[2] : `t${this.nick}`;
            const kind = sec.media;
            res[kind] = {
                name: `${this.nick}-${kind === 'audio' ? 'a' : 'v'}0`,
                msid: `${this.nick}-${kind}-0-1 ${trackId}-1`,
                ssrcs, groups, sec,
            };
        }
        return res;
    }

    // ---------------------------------------------------------------- Jingle out
    async sendSessionAccept(sdp) {
        const secs = splitSdp(sdp);
        const iq = $iq({ type: 'set', to: this.focusJid })
            .c('jingle', { xmlns: NS.JINGLE, action: 'session-accept', initiator: this.focusJid, responder: this.jid, sid: this.sid });
        iq.c('group', { xmlns: NS.GROUP, semantics: 'BUNDLE' });
        for (const n of ['audio', 'video', 'data']) iq.c('content', { name: n }).up();
        iq.up();
        const transport = (sec) => {
            const ufrag = findAttr(sec, secs, 'ice-ufrag');
            const pwd = findAttr(sec, secs, 'ice-pwd');
            const fp = findAttr(sec, secs, 'fingerprint').split(' ');
            const setup = findAttr(sec, secs, 'setup');
            iq.c('transport', { xmlns: NS.ICE, ufrag, pwd });
            if (sec.media === 'application') iq.c('sctpmap', { xmlns: NS.SCTP, number: findAttr(sec, secs, 'sctp-port') || '5000', protocol: 'webrtc-datachannel', streams: '0' }).up();
            iq.c('fingerprint', { xmlns: NS.DTLS, hash: fp[0], setup }).t(fp[1]).up();
            iq.up();
        };
        for (const sec of secs.media) {
            const ml = this.remote.mlines[Number(sec.mid)];
            if (!ml) continue;
            if (ml.media === 'application') {
                iq.c('content', { creator: 'responder', name: 'data' });
                transport(sec);
                iq.up();
                continue;
            }
            if (!ml.main) continue;
            const src = this.localSources[ml.media];
            const senders = /a=(sendrecv|sendonly)/.test(sec.lines.join('\n')) ? 'both' : 'initiator';
            iq.c('content', { creator: 'responder', name: ml.media, senders });
            iq.c('description', { xmlns: NS.RTP, media: ml.media });
            const pts = sec.mline.split(' ').slice(3);
            for (const id of pts) {
                const rtpmap = sec.lines.find((l) => l.startsWith(`a=rtpmap:${id} `));
                if (!rtpmap) continue;
                const [name, clock, ch] = rtpmap.split(' ')[1].split('/');
                iq.c('payload-type', { id, name, clockrate: clock, channels: ch || '1' });
                const fmtp = sec.lines.find((l) => l.startsWith(`a=fmtp:${id} `));
                if (fmtp) {
                    for (const kv of fmtp.slice(fmtp.indexOf(' ') + 1).split(';')) {
                        const eq = kv.indexOf('=');
                        if (eq > 0) iq.c('parameter', { name: kv.slice(0, eq).trim(), value: kv.slice(eq + 1).trim() }).up();
                        else if (kv.trim()) iq.c('parameter', { value: kv.trim() }).up();
                    }
                }
                for (const fb of sec.lines.filter((l) => l.startsWith(`a=rtcp-fb:${id} `))) {
                    const [type, subtype] = fb.split(' ').slice(1);
                    iq.c('rtcp-fb', subtype ? { xmlns: NS.FB, type, subtype } : { xmlns: NS.FB, type }).up();
                }
                iq.up();
            }
            if (senders === 'both') {
                for (const s of src.ssrcs) {
                    const a = { xmlns: NS.SSMA, ssrc: s, name: src.name };
                    if (ml.media === 'video') a.videoType = 'camera';
                    iq.c('source', a).c('parameter', { name: 'msid', value: src.msid }).up().up();
                }
                for (const g of src.groups) {
                    iq.c('ssrc-group', { xmlns: NS.SSMA, semantics: g.sem });
                    for (const s of g.ssrcs) iq.c('source', { ssrc: s }).up();
                    iq.up();
                }
            }
            if (sec.lines.includes('a=rtcp-mux')) iq.c('rtcp-mux').up();
            for (const l of sec.lines.filter((x) => x.startsWith('a=extmap:'))) {
                const [id, uri] = l.slice(9).split(' ');
                iq.c('rtp-hdrext', { xmlns: NS.HDREXT, id, uri }).up();
            }
            if (sec.lines.includes('a=extmap-allow-mixed') || secs.session.includes('a=extmap-allow-mixed')) iq.c('extmap-allow-mixed', { xmlns: NS.HDREXT }).up();
            iq.up();
            transport(sec);
            iq.up();
        }
        this.acceptXml = Strophe.serialize(iq.tree());
        this.jingleOut.push(this.acceptXml);
        this.t.acceptSent = performance.now();
        const r = await this.sendIQ(iq, 10000);
        this.t.acceptAcked = performance.now();
        this.L('session-accept acked', attr(r, 'type'));
        this.accepted = true;
        this.flushCandidates();
    }

    onLocalCandidate(c) {
        if (!this.pendingCandidates) this.pendingCandidates = [];
        if (c) this.pendingCandidates.push(c);
        else this.pendingCandidates.push(null);
        if (this.accepted) this.flushCandidates();
    }

    flushCandidates() {
        const cands = (this.pendingCandidates || []).filter(Boolean);
        this.pendingCandidates = [];
        if (!cands.length || !this.pc) return;
        const ld = splitSdp(this.pc.localDescription.sdp);
        const sec0 = ld.media[0];
        const iq = $iq({ type: 'set', to: this.focusJid })
            .c('jingle', { xmlns: NS.JINGLE, action: 'transport-info', initiator: this.focusJid, sid: this.sid });
        const byMid = new Map();
        for (const c of cands) {
            const mid = c.sdpMid || '0';
            if (!byMid.has(mid)) byMid.set(mid, []);
            byMid.get(mid).push(c);
        }
        for (const [mid, list] of byMid) {
            iq.c('content', { creator: 'responder', name: mid })
                .c('transport', { xmlns: NS.ICE, ufrag: findAttr(sec0, ld, 'ice-ufrag'), pwd: findAttr(sec0, ld, 'ice-pwd') });
            for (const c of list) {
                const p = c.candidate.replace(/^candidate:/, '').split(' ');
                const a = { foundation: p[0], component: p[1], protocol: p[2].toLowerCase(), priority: p[3], ip: p[4], port: p[5], type: p[7], generation: '0', network: '1', id: Math.random().toString(36).slice(2, 12) };
                for (let i = 8; i + 1 < p.length; i += 2) {
                    if (p[i] === 'raddr') a['rel-addr'] = p[i + 1];
                    if (p[i] === 'rport') a['rel-port'] = p[i + 1];
                    if (p[i] === 'tcptype') a.tcptype = p[i + 1];
                    if (p[i] === 'generation') a.generation = p[i + 1];
                }
                iq.c('candidate', a).up();
            }
            const fp = findAttr(sec0, ld, 'fingerprint').split(' ');
            iq.c('fingerprint', { xmlns: NS.DTLS, hash: fp[0], required: 'true' }).t(fp[1]).up();
            iq.up().up();
        }
        this.jingleOut.push(Strophe.serialize(iq.tree()));
        this.sendIQ(iq).then(() => this.L('transport-info acked'), (e) => this.err('transport-info', e));
    }

    // ---------------------------------------------------------------- P2P
    // lib-jitsi-meet's peer-to-peer mode (JingleSessionPC with isP2P): with exactly two
    // participants, the one with the smaller endpoint id sends a session-initiate made from its
    // own SDP offer directly to the other's occupant JID room@muc/<nick>; the MUC delivers it
    // from the initiator's occupant JID. The responder answers session-accept to that JID; both
    // trickle ICE candidates in transport-info. Media then flows browser ⇄ browser, not via meetd.
    newP2PConnection(p) {
        const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require', iceServers: this.opts.iceServers || [] });
        this.pc = pc;
        pc.onicecandidate = (ev) => {
            if (ev.candidate) {
                p.localCandidates.push(ev.candidate.candidate);
                p.pending.push(ev.candidate);
                this.flushP2PCandidates();
            } else {
                this.t.p2pGathered = performance.now();
                this.L('p2p ice gathering complete');
            }
        };
        pc.onicecandidateerror = (ev) => {
            p.candidateErrors.push({ url: ev.url, code: ev.errorCode, text: ev.errorText, address: ev.address, port: ev.port });
            this.L('p2p icecandidateerror', ev.url, ev.errorCode, ev.errorText);
        };
        pc.oniceconnectionstatechange = () => {
            this.L('p2p ice', pc.iceConnectionState);
            if (pc.iceConnectionState === 'connected' && !this.t.iceConnected) this.t.iceConnected = performance.now();
        };
        pc.onconnectionstatechange = () => {
            this.L('p2p pc', pc.connectionState);
            if (pc.connectionState === 'connected' && !this.t.pcConnected) this.t.pcConnected = performance.now();
        };
        pc.ontrack = (ev) => this.attachRemoteTrack(ev);
        return pc;
    }

    newP2PState(peerJid, sid, initiator) {
        this.p2p = {
            peerJid, peerNick: Strophe.getResourceFromJid(peerJid), sid, initiator,
            pending: [], ready: false, localCandidates: [], remoteCandidates: [], candidateErrors: [], acks: [],
        };
        this.sid = sid;
        return this.p2p;
    }

    async startP2P(peerNick) {
        const peerJid = `${this.room}/${peerNick}`;
        for (let i = 0; i < 100 && !this.members.has(peerNick); i++) await new Promise((r) => setTimeout(r, 100));
        if (!this.members.has(peerNick)) throw new Error(`P2P peer ${peerNick} is not in the room`);
        const p = this.newP2PState(peerJid, Math.random().toString(36).slice(2, 14), true);
        this.t.p2pStart = performance.now();
        const pc = this.newP2PConnection(p);
        for (const track of this.localStream.getTracks()) pc.addTransceiver(track, { direction: 'sendrecv', streams: [this.localStream] });
        const offer = await pc.createOffer();
        await pc.setLocalDescription(offer);
        this.lastOffer = pc.localDescription.sdp;
        const iq = $iq({ type: 'set', to: peerJid })
            .c('jingle', { xmlns: NS.JINGLE, action: 'session-initiate', initiator: this.jid, sid: p.sid });
        this.sdpToJingle(iq, pc.localDescription.sdp, 'initiator');
        await this.sendP2P(iq, 'session-initiate');
        return { sid: p.sid };
    }

    // Send a Jingle IQ to the peer; candidates may follow right behind it (same path, in order).
    sendP2P(iq, what) {
        const p = this.p2p;
        this.jingleOut.push(Strophe.serialize(iq.tree()));
        const r = this.sendIQ(iq, 10000).then((res) => {
            p.acks.push({ what, type: attr(res, 'type'), from: attr(res, 'from') });
            this.L('p2p', what, 'acked from', attr(res, 'from'));
            return res;
        });
        if (what === 'session-initiate' || what === 'session-accept') {
            p.ready = true;
            this.flushP2PCandidates();
        }
        return r;
    }

    onP2PJingle(iq, j, action, from) {
        this.conn.send($iq({ type: 'result', to: from, id: attr(iq, 'id') }));
        switch (action) {
        case 'session-initiate':
            if (this.p2p) {
                this.err('p2p', `second session-initiate from ${from}`);
                break;
            }
            this.t.sessionInitiate = performance.now();
            this.newP2PState(from, attr(j, 'sid'), false);
            this.p2p.initiateFrom = from;
            this.enqueue('p2p session-initiate', () => this.onP2PInitiate(j));
            break;
        case 'session-accept':
            this.p2p.acceptFrom = from;
            this.enqueue('p2p session-accept', () => this.pc.setRemoteDescription({ type: 'answer', sdp: jingleToSdp(j, 'responder') })
                .then(() => { this.lastAnswer = this.pc.remoteDescription.sdp; this.L('p2p answer applied'); }));
            break;
        case 'transport-info':
            this.enqueue('p2p transport-info', () => this.onP2PTransportInfo(j));
            break;
        case 'session-terminate':
            this.L('p2p session terminated', Strophe.serialize(j));
            this.terminated = Strophe.serialize(j);
            break;
        default:
            this.L('ignored p2p jingle action', action);
        }
        return true;
    }

    async onP2PInitiate(j) {
        const pc = this.newP2PConnection(this.p2p);
        await pc.setRemoteDescription({ type: 'offer', sdp: jingleToSdp(j, 'initiator') });
        for (const tr of pc.getTransceivers()) {
            const track = this.localStream.getTracks().find((t) => t.kind === tr.receiver.track.kind);
            if (!track) continue;
            await tr.sender.replaceTrack(track);
            tr.sender.setStreams(this.localStream);
            tr.direction = 'sendrecv';
        }
        const answer = await pc.createAnswer();
        await pc.setLocalDescription(answer);
        this.lastOffer = pc.remoteDescription.sdp;
        this.lastAnswer = pc.localDescription.sdp;
        const iq = $iq({ type: 'set', to: this.p2p.peerJid })
            .c('jingle', { xmlns: NS.JINGLE, action: 'session-accept', initiator: attr(j, 'initiator') || this.p2p.peerJid, responder: this.jid, sid: this.p2p.sid });
        this.sdpToJingle(iq, pc.localDescription.sdp, 'responder');
        this.t.acceptSent = performance.now();
        await this.sendP2P(iq, 'session-accept');
    }

    async onP2PTransportInfo(j) {
        for (const content of kids(j, 'content')) {
            const tr = kid(content, 'transport', NS.ICE);
            for (const c of kids(tr, 'candidate')) {
                const cand = jingleCandidateToSdp(Object.fromEntries(Array.from(c.attributes).map((a) => [a.name, a.value])));
                this.p2p.remoteCandidates.push(cand);
                await this.pc.addIceCandidate({ candidate: cand.slice(2), sdpMid: attr(content, 'name'), usernameFragment: attr(tr, 'ufrag') });
            }
        }
    }

    flushP2PCandidates() {
        const p = this.p2p;
        if (!p || !p.ready || !p.pending.length) return;
        const cands = p.pending.splice(0);
        const ld = splitSdp(this.pc.localDescription.sdp);
        const iq = $iq({ type: 'set', to: p.peerJid })
            .c('jingle', { xmlns: NS.JINGLE, action: 'transport-info', initiator: p.initiator ? this.jid : p.peerJid, sid: p.sid });
        const byMid = new Map();
        for (const c of cands) {
            if (!byMid.has(c.sdpMid)) byMid.set(c.sdpMid, []);
            byMid.get(c.sdpMid).push(c);
        }
        for (const [mid, list] of byMid) {
            const sec = ld.media.find((m) => m.mid === mid) || ld.media[0];
            iq.c('content', { creator: p.initiator ? 'initiator' : 'responder', name: sec.mid })
                .c('transport', { xmlns: NS.ICE, ufrag: findAttr(sec, ld, 'ice-ufrag'), pwd: findAttr(sec, ld, 'ice-pwd') });
            for (const c of list) iq.c('candidate', sdpCandidateToJingle(c.candidate)).up();
            iq.up().up();
        }
        this.jingleOut.push(Strophe.serialize(iq.tree()));
        this.sendIQ(iq).then((r) => p.acks.push({ what: 'transport-info', type: attr(r, 'type'), from: attr(r, 'from') }),
            (e) => this.err('p2p transport-info', e));
    }

    // Our SDP (offer or answer) as Jingle contents, the way lib-jitsi-meet's SDP.toJingle does:
    // one content per m-line, named by its mid (the BUNDLE demux key: both ends must use the
    // offerer's mids, so the content name carries them), payload types, header extensions, our sources
    // (<source> with msid + ssrc-info owner, ssrc-group FID), ICE ufrag/pwd, DTLS fingerprint.
    sdpToJingle(iq, sdp, creator) {
        const secs = splitSdp(sdp);
        const bundle = secs.session.find((l) => l.startsWith('a=group:BUNDLE '));
        if (bundle) {
            iq.c('group', { xmlns: NS.GROUP, semantics: 'BUNDLE' });
            for (const sec of secs.media) iq.c('content', { name: sec.mid }).up();
            iq.up();
        }
        for (const sec of secs.media) {
            const dir = ['sendrecv', 'sendonly', 'recvonly', 'inactive'].find((d) => sec.lines.includes(`a=${d}`)) || 'sendrecv';
            const other = creator === 'initiator' ? 'responder' : 'initiator';
            const senders = { sendrecv: 'both', sendonly: creator, recvonly: other, inactive: 'none' }[dir];
            iq.c('content', { creator, name: sec.mid, senders });
            iq.c('description', { xmlns: NS.RTP, media: sec.media });
            appendPayloadTypes(iq, sec, secs);
            // sources
            const ssrcs = [];
            const params = new Map();
            for (const l of sec.lines.filter((x) => x.startsWith('a=ssrc:'))) {
                const [ssrc, ...rest] = l.slice(7).split(' ');
                if (!ssrcs.includes(ssrc)) ssrcs.push(ssrc);
                const kv = rest.join(' ');
                const i = kv.indexOf(':');
                if (i > 0) (params.get(ssrc) || params.set(ssrc, []).get(ssrc)).push([kv.slice(0, i), kv.slice(i + 1)]);
            }
            const msidLine = sec.lines.find((l) => l.startsWith('a=msid:'));
            for (const ssrc of ssrcs) {
                const a = { xmlns: NS.SSMA, ssrc, name: `${this.nick}-${sec.media === 'audio' ? 'a' : 'v'}0` };
                if (sec.media === 'video') a.videoType = 'camera';
                iq.c('source', a);
                const msid = (params.get(ssrc) || []).find(([n]) => n === 'msid');
                iq.c('parameter', { name: 'msid', value: msid ? msid[1] : msidLine ? msidLine.slice(7) : `${this.nick}-${sec.media}` }).up();
                iq.c('ssrc-info', { xmlns: NS.JITMEET, owner: `${this.room}/${this.nick}` }).up();
                iq.up();
            }
            for (const g of sec.lines.filter((l) => l.startsWith('a=ssrc-group:'))) {
                const [sem, ...ss] = g.slice('a=ssrc-group:'.length).split(' ');
                iq.c('ssrc-group', { xmlns: NS.SSMA, semantics: sem });
                for (const x of ss) iq.c('source', { ssrc: x }).up();
                iq.up();
            }
            if (sec.lines.includes('a=rtcp-mux')) iq.c('rtcp-mux').up();
            iq.up(); // description
            const fp = findAttr(sec, secs, 'fingerprint').split(' ');
            iq.c('transport', { xmlns: NS.ICE, ufrag: findAttr(sec, secs, 'ice-ufrag'), pwd: findAttr(sec, secs, 'ice-pwd') });
            iq.c('fingerprint', { xmlns: NS.DTLS, hash: fp[0], setup: findAttr(sec, secs, 'setup') }).t(fp[1]).up();
            for (const l of sec.lines.filter((x) => x.startsWith('a=candidate:'))) iq.c('candidate', sdpCandidateToJingle(l.slice(2))).up();
            iq.up(); // transport
            iq.up(); // content
        }
    }

    p2pInfo() {
        const p = this.p2p;
        if (!p) return null;
        return {
            peerJid: p.peerJid, sid: p.sid, initiator: p.initiator, initiateFrom: p.initiateFrom || null, acceptFrom: p.acceptFrom || null,
            acks: p.acks, localCandidates: p.localCandidates, remoteCandidates: p.remoteCandidates, candidateErrors: p.candidateErrors,
            signalingState: this.pc && this.pc.signalingState, iceGatheringState: this.pc && this.pc.iceGatheringState,
        };
    }

    // ---------------------------------------------------------------- bridge channel
    startBridgeChannel() {
        const url = this.remote.wsUrl;
        if (!url) {
            this.L('no bridge channel url');
            return Promise.resolve();
        }
        return new Promise((resolve) => {
            const ws = new WebSocket(url);
            this.channel = ws;
            const done = setTimeout(resolve, 3000);
            ws.onopen = () => {
                this.L('bridge channel open');
                this.channelOpen = true;
                ws.send(JSON.stringify({ colibriClass: 'SourceVideoTypeMessage', sourceName: `${this.nick}-v0`, videoType: 'camera' }));
                ws.send(JSON.stringify({ colibriClass: 'ReceiverVideoConstraints', assumedBandwidthBps: -1, lastN: -1 }));
                this.sendConstraints({ defaultConstraints: { maxHeight: this.opts.maxHeight || 180 } });
                clearTimeout(done);
                resolve();
            };
            ws.onmessage = (ev) => {
                this.channelMsgs.push(ev.data);
                if (ev.data.includes('"ConnectionStats"')) {
                    try { this.connectionStats = JSON.parse(ev.data); } catch { /* ignore */ }
                }
                if (this.channelMsgs.length > 200) this.channelMsgs.splice(0, 50);
            };
            ws.onerror = () => this.L('bridge channel error');
            ws.onclose = (ev) => { this.L('bridge channel closed', ev.code); this.channelOpen = false; };
        });
    }

    sendConstraints(c) {
        if (!this.channel || this.channel.readyState !== 1) return false;
        this.channel.send(JSON.stringify({ colibriClass: 'ReceiverVideoConstraints', lastN: -1, ...c }));
        return true;
    }

    // ---------------------------------------------------------------- stats
    async stats() {
        const out = { nick: this.nick, t: performance.now(), ice: null, pc: null, dtls: null, inbound: [], outbound: [], pair: null, transport: null };
        if (!this.pc) return out;
        out.ice = this.pc.iceConnectionState;
        out.pc = this.pc.connectionState;
        const rep = await this.pc.getStats();
        const byId = new Map();
        rep.forEach((s) => byId.set(s.id, s));
        const midOwner = (mid) => {
            if (this.p2p) return { owner: this.p2p.peerNick, main: true };
            const ml = this.remote && this.remote.mlines[Number(mid)];
            return ml ? { owner: ml.owner, name: ml.src ? ml.src.name : null, main: ml.main, dir: ml.dir } : {};
        };
        rep.forEach((s) => {
            if (s.type === 'transport') {
                out.dtls = s.dtlsState;
                out.transport = { dtlsState: s.dtlsState, iceState: s.iceState, srtpCipher: s.srtpCipher, tlsVersion: s.tlsVersion, bytesSent: s.bytesSent, bytesReceived: s.bytesReceived, packetsSent: s.packetsSent, packetsReceived: s.packetsReceived, selectedCandidatePairChanges: s.selectedCandidatePairChanges };
                const pair = byId.get(s.selectedCandidatePairId);
                if (pair) {
                    const l = byId.get(pair.localCandidateId);
                    const r = byId.get(pair.remoteCandidateId);
                    out.pair = { availableOutgoingBitrate: pair.availableOutgoingBitrate, currentRoundTripTime: pair.currentRoundTripTime, state: pair.state, nominated: pair.nominated, local: l && `${l.address}:${l.port} ${l.candidateType}`, remote: r && `${r.address}:${r.port} ${r.candidateType}`, requestsSent: pair.requestsSent, responsesReceived: pair.responsesReceived, requestsReceived: pair.requestsReceived, responsesSent: pair.responsesSent };
                }
            } else if (s.type === 'inbound-rtp') {
                const codec = byId.get(s.codecId);
                out.inbound.push({
                    kind: s.kind, ssrc: s.ssrc, mid: s.mid, ...midOwner(s.mid), trackIdentifier: s.trackIdentifier,
                    codec: codec && codec.mimeType, packetsReceived: s.packetsReceived, packetsLost: s.packetsLost, bytesReceived: s.bytesReceived,
                    framesReceived: s.framesReceived, framesDecoded: s.framesDecoded, keyFramesDecoded: s.keyFramesDecoded, framesDropped: s.framesDropped,
                    frameWidth: s.frameWidth, frameHeight: s.frameHeight, framesPerSecond: s.framesPerSecond,
                    totalSamplesReceived: s.totalSamplesReceived, concealedSamples: s.concealedSamples, audioLevel: s.audioLevel,
                    nackCount: s.nackCount, pliCount: s.pliCount, firCount: s.firCount, jitter: s.jitter,
                });
            } else if (s.type === 'outbound-rtp') {
                const codec = byId.get(s.codecId);
                out.outbound.push({
                    kind: s.kind, ssrc: s.ssrc, rtxSsrc: s.rtxSsrc, mid: s.mid, rid: s.rid, targetBitrate: s.targetBitrate, framesPerSecond: s.framesPerSecond, codec: codec && codec.mimeType, packetsSent: s.packetsSent, bytesSent: s.bytesSent,
                    framesEncoded: s.framesEncoded, frameWidth: s.frameWidth, frameHeight: s.frameHeight, active: s.active,
                    qualityLimitationReason: s.qualityLimitationReason, scalabilityMode: s.scalabilityMode, encoderImplementation: s.encoderImplementation,
                    nackCount: s.nackCount, pliCount: s.pliCount, firCount: s.firCount, retransmittedPacketsSent: s.retransmittedPacketsSent,
                });
            } else if (s.type === 'remote-inbound-rtp') {
                // What the bridge reports (RTCP RR) about what we send.
                (out.remoteInbound ||= []).push({ kind: s.kind, ssrc: s.ssrc, packetsLost: s.packetsLost, fractionLost: s.fractionLost, roundTripTime: s.roundTripTime, jitter: s.jitter, reports: s.roundTripTimeMeasurements });
            } else if (s.type === 'remote-outbound-rtp') {
                // The bridge's sender reports about what we receive (RTCP SR).
                (out.remoteOutbound ||= []).push({ kind: s.kind, ssrc: s.ssrc, packetsSent: s.packetsSent, reportsSent: s.reportsSent });
            } else if (s.type === 'candidate-pair' && !out.pairs) {
                out.pairs = [];
            }
            if (s.type === 'candidate-pair') out.pairs.push({ state: s.state, nominated: s.nominated, requestsSent: s.requestsSent, responsesReceived: s.responsesReceived, requestsReceived: s.requestsReceived });
        });
        // First decoded remote video frame (for the join-time metric).
        if (!this.t.firstVideoFrame && out.inbound.some((i) => i.kind === 'video' && i.framesDecoded > 0)) this.t.firstVideoFrame = performance.now();
        if (!this.t.firstAudio && out.inbound.some((i) => i.kind === 'audio' && i.packetsReceived > 0)) this.t.firstAudio = performance.now();
        // Every SSRC we send must be one we signalled in session-accept.
        const signalled = new Set(Object.values(this.localSources || {}).flatMap((x) => x.ssrcs.map(Number)));
        out.unsignalledOutbound = this.p2p ? [] : out.outbound.flatMap((o) => [o.ssrc, o.rtxSsrc]).filter((x) => x && !signalled.has(x));
        return out;
    }

    watchFirstFrame() {
        const tick = async () => {
            if (this.t.firstVideoFrame || this.stopped) return;
            try { await this.stats(); } catch { /* ignore */ }
            setTimeout(tick, 50);
        };
        tick();
    }

    debug() {
        return {
            nick: this.nick, jid: this.jid, sid: this.sid, t: this.t, errors: this.errors, log: this.log.slice(-150),
            jingleIn: this.jingleIn, jingleOut: this.jingleOut, offer: this.lastOffer, answer: this.lastAnswer,
            mlines: this.remote ? this.remote.mlines.map((ml, i) => ({ mid: i, media: ml.media, main: ml.main, owner: ml.owner, name: ml.src && ml.src.name, ssrcs: ml.src && ml.src.ssrcs.map((s) => s.ssrc), dir: ml.dir })) : null,
            channel: { url: this.remote && this.remote.wsUrl, open: this.channelOpen, received: this.channelMsgs.slice(-30) },
            members: [...this.members.keys()], terminated: this.terminated || null,
            transport: this.transport, boshBodies: this.boshBodies, p2p: this.p2pInfo ? this.p2pInfo() : null,
            connectionStats: this.connectionStats || null,
        };
    }
}

// ---------------------------------------------------------------- SDP helpers
function splitSdp(sdp) {
    const lines = sdp.split(/\r?\n/).filter((l) => l.length);
    const session = [];
    const media = [];
    let cur = null;
    for (const l of lines) {
        if (l.startsWith('m=')) {
            cur = { mline: l, media: l.slice(2).split(' ')[0], lines: [] };
            media.push(cur);
        } else if (cur) {
            cur.lines.push(l);
            if (l.startsWith('a=mid:')) cur.mid = l.slice(6);
        } else {
            session.push(l);
        }
    }
    return { session, media };
}

function joinSdp(s) {
    const out = [...s.session];
    for (const m of s.media) out.push(m.mline, ...m.lines);
    return out.join('\r\n') + '\r\n';
}

function findAttr(sec, secs, name) {
    const p = `a=${name}:`;
    const l = sec.lines.find((x) => x.startsWith(p)) || secs.session.find((x) => x.startsWith(p));
    return l ? l.slice(p.length) : null;
}

// ---------------------------------------------------------------- Jingle ⇄ SDP helpers (P2P)
// Payload types (rtpmap, fmtp parameters, rtcp-fb), header extensions and extmap-allow-mixed of
// one m-section, as children of the current <description>.
function appendPayloadTypes(iq, sec, secs) {
    for (const id of sec.mline.split(' ').slice(3)) {
        const rtpmap = sec.lines.find((l) => l.startsWith(`a=rtpmap:${id} `));
        if (!rtpmap) continue;
        const [name, clock, ch] = rtpmap.split(' ')[1].split('/');
        iq.c('payload-type', { id, name, clockrate: clock, channels: ch || '1' });
        const fmtp = sec.lines.find((l) => l.startsWith(`a=fmtp:${id} `));
        if (fmtp) {
            for (const kv of fmtp.slice(fmtp.indexOf(' ') + 1).split(';')) {
                const eq = kv.indexOf('=');
                if (eq > 0) iq.c('parameter', { name: kv.slice(0, eq).trim(), value: kv.slice(eq + 1).trim() }).up();
                else if (kv.trim()) iq.c('parameter', { value: kv.trim() }).up();
            }
        }
        for (const fb of sec.lines.filter((l) => l.startsWith(`a=rtcp-fb:${id} `))) {
            const [type, subtype] = fb.split(' ').slice(1);
            iq.c('rtcp-fb', subtype ? { xmlns: NS.FB, type, subtype } : { xmlns: NS.FB, type }).up();
        }
        iq.up();
    }
    for (const l of sec.lines.filter((x) => x.startsWith('a=extmap:'))) {
        const [id, uri] = l.slice(9).split(' ');
        iq.c('rtp-hdrext', { xmlns: NS.HDREXT, id, uri }).up();
    }
    if (sec.lines.includes('a=extmap-allow-mixed') || secs.session.includes('a=extmap-allow-mixed')) iq.c('extmap-allow-mixed', { xmlns: NS.HDREXT }).up();
}

// `candidate:…` (RTCIceCandidate.candidate) → Jingle <candidate> attributes.
function sdpCandidateToJingle(cand) {
    const p = cand.replace(/^candidate:/, '').split(' ');
    const a = { foundation: p[0], component: p[1], protocol: p[2].toLowerCase(), priority: p[3], ip: p[4], port: p[5], type: p[7], generation: '0', network: '1', id: Math.random().toString(36).slice(2, 12) };
    for (let i = 8; i + 1 < p.length; i += 2) {
        if (p[i] === 'raddr') a['rel-addr'] = p[i + 1];
        if (p[i] === 'rport') a['rel-port'] = p[i + 1];
        if (p[i] === 'tcptype') a.tcptype = p[i + 1];
        if (p[i] === 'generation') a.generation = p[i + 1];
    }
    return a;
}

// Jingle <candidate> attributes → `a=candidate:…`.
function jingleCandidateToSdp(c) {
    let s = `a=candidate:${c.foundation} ${c.component} ${c.protocol} ${c.priority} ${c.ip} ${c.port} typ ${c.type}`;
    if (c['rel-addr']) s += ` raddr ${c['rel-addr']} rport ${c['rel-port']}`;
    if (c.tcptype) s += ` tcptype ${c.tcptype}`;
    return `${s} generation ${c.generation || 0}`;
}

// A P2P session-initiate / session-accept → SDP (lib-jitsi-meet's SDP.fromJingle without the
// bridge's per-source m-line split): one m-line per content, a=mid = content name. `role` is
// who sent the Jingle (for `senders`).
function jingleToSdp(j, role) {
    const lines = ['v=0', `o=- ${Date.now()} 2 IN IP4 0.0.0.0`, 's=-', 't=0 0'];
    const group = kids(j, 'group', NS.GROUP).find((g) => attr(g, 'semantics') === 'BUNDLE');
    if (group) lines.push(`a=group:BUNDLE ${kids(group, 'content').map((c) => attr(c, 'name')).join(' ')}`);
    lines.push('a=msid-semantic: WMS *');
    for (const content of kids(j, 'content')) {
        const desc = kid(content, 'description', NS.RTP);
        const tr = kid(content, 'transport', NS.ICE);
        if (!desc || !tr) continue;
        const media = attr(desc, 'media');
        const pts = kids(desc, 'payload-type');
        lines.push(`m=${media} 9 UDP/TLS/RTP/SAVPF ${pts.map((p) => attr(p, 'id')).join(' ')}`, 'c=IN IP4 0.0.0.0', 'a=rtcp:9 IN IP4 0.0.0.0');
        lines.push(`a=ice-ufrag:${attr(tr, 'ufrag')}`, `a=ice-pwd:${attr(tr, 'pwd')}`);
        const fp = kid(tr, 'fingerprint', NS.DTLS);
        if (fp) lines.push(`a=fingerprint:${attr(fp, 'hash')} ${fp.textContent.trim()}`, `a=setup:${attr(fp, 'setup')}`);
        lines.push(`a=mid:${attr(content, 'name')}`);
        for (const c of kids(tr, 'candidate')) lines.push(jingleCandidateToSdp(Object.fromEntries(Array.from(c.attributes).map((a) => [a.name, a.value]))));
        for (const e of kids(desc, 'rtp-hdrext', NS.HDREXT)) lines.push(`a=extmap:${attr(e, 'id')} ${attr(e, 'uri')}`);
        if (kid(desc, 'extmap-allow-mixed', NS.HDREXT)) lines.push('a=extmap-allow-mixed');
        const senders = attr(content, 'senders') || 'both';
        lines.push(`a=${senders === 'both' ? 'sendrecv' : senders === 'none' ? 'inactive' : senders === role ? 'sendonly' : 'recvonly'}`);
        if (kid(desc, 'rtcp-mux')) lines.push('a=rtcp-mux');
        for (const p of pts) {
            const ch = attr(p, 'channels');
            lines.push(`a=rtpmap:${attr(p, 'id')} ${attr(p, 'name')}/${attr(p, 'clockrate')}${ch && ch !== '1' ? `/${ch}` : ''}`);
            const params = kids(p, 'parameter').map((x) => (attr(x, 'name') ? `${attr(x, 'name')}=${attr(x, 'value')}` : attr(x, 'value')));
            if (params.length) lines.push(`a=fmtp:${attr(p, 'id')} ${params.join(';')}`);
            for (const f of kids(p, 'rtcp-fb', NS.FB)) lines.push(`a=rtcp-fb:${attr(p, 'id')} ${[attr(f, 'type'), attr(f, 'subtype')].filter(Boolean).join(' ')}`);
        }
        for (const g of kids(desc, 'ssrc-group', NS.SSMA)) lines.push(`a=ssrc-group:${attr(g, 'semantics')} ${kids(g, 'source').map((s) => attr(s, 'ssrc')).join(' ')}`);
        for (const s of kids(desc, 'source', NS.SSMA)) {
            for (const p of kids(s, 'parameter')) lines.push(`a=ssrc:${attr(s, 'ssrc')} ${attr(p, 'name')}:${attr(p, 'value')}`);
        }
    }
    return lines.join('\r\n') + '\r\n';
}

// Move the payload types of one codec (and their RTX) to the front of every video m-line.
function preferCodec(sdp, codec) {
    const secs = splitSdp(sdp);
    for (const sec of secs.media.filter((m) => m.media === 'video')) {
        const parts = sec.mline.split(' ');
        const pts = parts.slice(3);
        const want = pts.filter((pt) => sec.lines.some((l) => l.toLowerCase().startsWith(`a=rtpmap:${pt} ${codec.toLowerCase()}/`)));
        const rtx = pts.filter((pt) => sec.lines.some((l) => want.some((w) => l === `a=fmtp:${pt} apt=${w}`)));
        const first = [...want, ...rtx];
        sec.mline = [...parts.slice(0, 3), ...first, ...pts.filter((p) => !first.includes(p))].join(' ');
    }
    return joinSdp(secs);
}

// ---------------------------------------------------------------- page API
window.meet = {
    client: null,
    async start(opts) {
        const c = new Client(opts);
        window.meet.client = c;
        c.localStream = await navigator.mediaDevices.getUserMedia({
            audio: true,
            video: { width: { ideal: opts.width || 1280 }, height: { ideal: opts.height || 720 }, frameRate: { ideal: 30 } },
        });
        await c.connect();
        c.watchFirstFrame();
        await c.conferenceRequest();
        await c.join();
        return { jid: c.jid, t: c.t, transport: c.transport };
    },
    stats: () => window.meet.client.stats(),
    debug: () => window.meet.client.debug(),
    leave: () => window.meet.client.leave(),
    startP2P: (peerNick) => window.meet.client.startP2P(peerNick),
    p2pInfo: () => window.meet.client.p2pInfo(),
    constraints: (c) => window.meet.client.sendConstraints(c),
};
window.stats = () => window.meet.stats();
})();
