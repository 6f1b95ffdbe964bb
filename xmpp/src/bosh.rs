//! BOSH (XEP-0124) connection-manager logic for one session, plus the XMPP-over-BOSH
//! parts of XEP-0206 (stream restart, session attributes next to the stream features).
//! Sans-IO: HTTP requests, outgoing stanzas and time come in as calls; what to answer
//! and what to hand to the XMPP session goes out as [`Action`]s.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use minidom::{Element, Node};

/// Namespace of the BOSH `<body/>` wrapper.
pub const NS_HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
/// XEP-0206 attribute namespace (`xmpp:version`, `xmpp:restart`).
pub const NS_XBOSH: &str = "urn:xmpp:xbosh";
/// Namespace bound to the `stream:` prefix on every response body.
pub const NS_STREAM: &str = "http://etherx.jabber.org/streams";
const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";
const NS_CLIENT: &str = "jabber:client";

/// Highest BOSH version we claim; the same as Prosody, which is what strophe.js is tested with.
const OUR_VER: (u64, u64) = (1, 6);
/// Used when the creation request lacks `wait` / `hold` (they are only SHOULD in XEP-0124).
const DEFAULT_WAIT: u64 = 60;
const DEFAULT_HOLD: u32 = 1;

/// Connection-manager limits, advertised in the session creation response.
#[derive(Debug, Clone)]
pub struct BoshConfig {
    /// Upper bound for the client's `wait`.
    pub max_wait: Duration,
    /// Upper bound for the client's `hold`.
    pub max_hold: u32,
    /// Advertised `requests` (raised to `hold + 1` if smaller).
    pub max_requests: u32,
    /// Session expires after this long with no request outstanding.
    pub inactivity: Duration,
    /// Longest `pause` honoured (longer requests are clamped to it).
    pub max_pause: Duration,
    /// Cap on queued outbound payload while the client has no request held;
    /// exceeding it terminates the session with `policy-violation`.
    pub max_pending_bytes: usize,
    /// Shortest polling interval: advertised, not enforced (see [`BoshSession::request`]).
    pub polling: Duration,
}

impl Default for BoshConfig {
    fn default() -> Self {
        BoshConfig {
            max_wait: Duration::from_secs(60),
            max_hold: 1,
            max_requests: 2,
            inactivity: Duration::from_secs(60),
            max_pause: Duration::from_secs(120),
            max_pending_bytes: 1024 * 1024,
            polling: Duration::from_secs(5),
        }
    }
}

/// Why a `<body/>` could not be accepted.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BoshError {
    #[error("not a <body xmlns='http://jabber.org/protocol/httpbind'/> element")]
    NotBody,
    #[error("missing attribute '{0}'")]
    Missing(&'static str),
    #[error("invalid value for attribute '{0}'")]
    Invalid(&'static str),
    #[error("session creation request carries a 'sid'")]
    HasSid,
}

impl BoshError {
    /// XEP-0124 §17.2 terminal binding condition to answer with.
    pub fn condition(&self) -> &'static str {
        match self {
            // XEP-0124 names a dedicated condition for a missing/empty 'to'.
            BoshError::Missing("to") => "improper-addressing",
            _ => "bad-request",
        }
    }
}

/// Parsed attributes of a session-creation request (first `<body/>` without sid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    pub rid: u64,
    pub to: String,
    pub wait: u64,
    pub hold: u32,
    pub ver: Option<String>,
    pub lang: Option<String>,
    pub route: Option<String>,
    pub ack: Option<u64>,
    pub xmpp_version: Option<String>,
}

impl CreateRequest {
    /// Missing `wait`/`hold` default to 60/1; a missing or empty `to` is an error
    /// (XEP-0206 needs it to pick the virtual host).
    pub fn parse(body: &Element) -> Result<CreateRequest, BoshError> {
        if !body.is("body", NS_HTTPBIND) {
            return Err(BoshError::NotBody);
        }
        if body.attr("sid").is_some() {
            return Err(BoshError::HasSid);
        }
        let rid = parse_rid(body)?;
        let to = body
            .attr("to")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(BoshError::Missing("to"))?
            .to_owned();
        let wait = opt_num::<u64>(body, "wait")?.unwrap_or(DEFAULT_WAIT);
        let hold = opt_num::<u32>(body, "hold")?.unwrap_or(DEFAULT_HOLD);
        let ack = opt_num::<u64>(body, "ack")?;
        Ok(CreateRequest {
            rid,
            to,
            wait,
            hold,
            ver: body.attr("ver").map(str::to_owned),
            lang: body.attr_ns(NS_XML, "lang").map(str::to_owned),
            route: body.attr("route").map(str::to_owned),
            ack,
            xmpp_version: body.attr_ns(NS_XBOSH, "version").map(str::to_owned),
        })
    }
}

/// Assigned by the HTTP glue, unique per HTTP request.
pub type RequestId = u64;

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Answer HTTP request `req` with 200 and this serialized `<body/>`.
    Respond { req: RequestId, body: String },
    /// Answer HTTP request `req` with this status and body. Only used for legacy
    /// clients (no `ver` in the creation request, XEP-0124 §17.1): 400/403/404 for
    /// bad-request/policy-violation/item-not-found. Everyone else gets 200 + terminate body.
    Fail {
        req: RequestId,
        status: u16,
        body: String,
    },
    /// Stanzas the client sent, in rid order, for the XMPP session.
    Deliver(Vec<Element>),
    /// `xmpp:restart='true'`: restart the XMPP stream; the next `push` (new stream
    /// features) answers the restart request.
    Restart,
    /// The client sent `type='terminate'` (its payload was delivered just before).
    /// End the XMPP session now, but keep routing this sid here until `Expired` so
    /// retransmissions are answered.
    Terminated,
    /// Session is over: drop it (and end the XMPP session if still running).
    /// Always the last action a session emits.
    Expired,
}

/// The terminal `<body type='terminate'/>` the glue sends when it has no session to
/// ask (unknown sid → `item-not-found`, unparsable creation request → `bad-request`).
pub fn terminal_body(condition: &str) -> String {
    let mut s = String::from("<body xmlns='http://jabber.org/protocol/httpbind' type='terminate'");
    push_attr(&mut s, "condition", condition);
    s.push_str("/>");
    s
}

/// The deprecated HTTP status for a legacy client (XEP-0124 §17.1), if there is one.
pub fn legacy_status(condition: &str) -> Option<u16> {
    match condition {
        "bad-request" => Some(400),
        "policy-violation" => Some(403),
        "item-not-found" => Some(404),
        _ => None,
    }
}

#[derive(Debug)]
struct Held {
    rid: u64,
    req: RequestId,
    since: Instant,
}

/// A request that arrived ahead of a gap in the rid sequence.
#[derive(Debug)]
struct Queued {
    /// None once the HTTP request went away; the payload is still processed in order.
    req: Option<RequestId>,
    since: Instant,
    body: Element,
}

#[derive(Debug)]
enum Phase {
    Open,
    /// Terminated by the client or by `close`: answer retransmissions until `until`.
    /// `terminal` is a close body no request was there to carry yet.
    Closing {
        until: Option<Instant>,
        terminal: Option<String>,
    },
    Dead,
}

/// Connection-manager state of one BOSH session.
#[derive(Debug)]
pub struct BoshSession {
    sid: String,
    from: String,
    secure: bool,
    /// No `ver` in the creation request: errors use HTTP status codes (§17.1).
    legacy: bool,
    ver: String,
    wait: Duration,
    hold: usize,
    requests: u64,
    inactivity: Duration,
    max_pause: Duration,
    polling: Duration,
    max_pending: usize,
    creation_rid: u64,
    /// Highest rid whose body has been processed; all lower ones were too.
    last_rid: u64,
    /// Processed requests waiting for data, in rid order.
    held: VecDeque<Held>,
    /// Requests above a gap, processed once the gap is filled. Keys lie in the window.
    queued: BTreeMap<u64, Queued>,
    /// Processed rids whose HTTP request vanished unanswered: a resend is held anew.
    orphans: VecDeque<u64>,
    out: Vec<String>,
    out_bytes: usize,
    /// Last `requests` response bodies, for retransmissions (§14.4).
    cache: VecDeque<(u64, String)>,
    /// Since when no request is outstanding (None while one is).
    idle_since: Option<Instant>,
    /// Inactivity limit requested with `pause`, until the next request.
    pause: Option<Duration>,
    phase: Phase,
}

impl BoshSession {
    /// Create from the first request. The creation request is held until the first
    /// `push` (normally the stream features) or until `wait`, whatever the client's `hold`.
    pub fn create(
        cfg: &BoshConfig,
        sid: String,
        from_domain: String,
        secure: bool,
        req: RequestId,
        create: &CreateRequest,
        now: Instant,
    ) -> (BoshSession, Vec<Action>) {
        let wait = Duration::from_secs(create.wait.min(cfg.max_wait.as_secs()));
        let hold = create.hold.min(cfg.max_hold);
        let requests = u64::from(cfg.max_requests).max(u64::from(hold) + 1).max(1);
        let ver = match create.ver.as_deref().and_then(parse_ver) {
            Some(v) if v < OUR_VER => format!("{}.{}", v.0, v.1),
            _ => format!("{}.{}", OUR_VER.0, OUR_VER.1),
        };
        let mut held = VecDeque::new();
        held.push_back(Held {
            rid: create.rid,
            req,
            since: now,
        });
        let session = BoshSession {
            sid,
            from: from_domain,
            secure,
            legacy: create.ver.is_none(),
            ver,
            wait,
            hold: hold as usize,
            requests,
            inactivity: cfg.inactivity,
            max_pause: cfg.max_pause,
            polling: cfg.polling,
            max_pending: cfg.max_pending_bytes,
            creation_rid: create.rid,
            last_rid: create.rid,
            held,
            queued: BTreeMap::new(),
            orphans: VecDeque::new(),
            out: Vec::new(),
            out_bytes: 0,
            cache: VecDeque::new(),
            idle_since: None,
            pause: None,
            phase: Phase::Open,
        };
        (session, Vec::new())
    }

    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// True once the session no longer carries an XMPP stream (terminated, closed or
    /// expired). It may still answer retransmissions until it emits `Expired`.
    pub fn is_closed(&self) -> bool {
        !matches!(self.phase, Phase::Open)
    }

    /// A later HTTP request with this session's sid.
    ///
    /// Not enforced: the "polling too frequently" rule of §11/§12 (easy to trip with
    /// legitimate clients, and `requests` already bounds the load) and `key` sequences.
    /// The client's `ack` is ignored; we never advertise `ack`, so responses carry none
    /// (§9.1 makes acknowledgements optional for the connection manager).
    pub fn request(&mut self, req: RequestId, body: &Element, now: Instant) -> Vec<Action> {
        let mut acts = Vec::new();
        let rid = if body.is("body", NS_HTTPBIND) {
            parse_rid(body).ok()
        } else {
            None
        };
        match self.phase {
            Phase::Dead => acts.push(self.terminal_action(req, "item-not-found")),
            Phase::Closing { .. } => self.closing_request(req, rid, &mut acts),
            Phase::Open => match rid {
                None => self.fail_session("bad-request", Some(req), &mut acts),
                Some(rid) => self.open_request(req, rid, body, now, &mut acts),
            },
        }
        acts
    }

    /// After termination: replay cached answers, hand out an undelivered close body
    /// once, and treat everything else as an unknown session.
    fn closing_request(&mut self, req: RequestId, rid: Option<u64>, acts: &mut Vec<Action>) {
        if let Some(cached) = rid.and_then(|r| self.cached(r)) {
            acts.push(Action::Respond { req, body: cached });
            return;
        }
        let pending = match &mut self.phase {
            Phase::Closing { terminal, .. } => terminal.take(),
            _ => None,
        };
        match pending {
            Some(t) => {
                if let Some(r) = rid {
                    self.cache_put(r, t.clone());
                }
                acts.push(Action::Respond { req, body: t });
            }
            None => acts.push(self.terminal_action(req, "item-not-found")),
        }
    }

    fn open_request(
        &mut self,
        req: RequestId,
        rid: u64,
        body: &Element,
        now: Instant,
        acts: &mut Vec<Action>,
    ) {
        // Whatever happens below, the client was active now; `update_idle` restarts
        // the inactivity clock from here if nothing stays outstanding.
        self.idle_since = None;
        if rid <= self.last_rid {
            // Already processed: a resend after a broken connection (§14.4).
            if let Some(cached) = self.cached(rid) {
                acts.push(Action::Respond { req, body: cached });
            } else if let Some(h) = self.held.iter_mut().find(|h| h.rid == rid) {
                // The old connection is dead as far as the client is concerned; its
                // (uncached) empty answer goes nowhere, the resend takes its place.
                let old = std::mem::replace(&mut h.req, req);
                h.since = now;
                let body = self.render(false, None, "");
                acts.push(Action::Respond { req: old, body });
            } else if let Some(pos) = self.orphans.iter().position(|&r| r == rid) {
                self.orphans.remove(pos);
                let at = self.held.partition_point(|h| h.rid < rid);
                self.held.insert(
                    at,
                    Held {
                        rid,
                        req,
                        since: now,
                    },
                );
                self.settle_held(acts);
            } else {
                self.fail_session("item-not-found", Some(req), acts);
            }
        } else if rid > self.last_rid.saturating_add(self.requests) {
            // Same condition for too small and too large, per §14.4.
            self.fail_session("item-not-found", Some(req), acts);
        } else if let Some(q) = self.queued.get_mut(&rid) {
            // Resend of a request still waiting for the gap below it.
            let old = q.req.replace(req);
            q.since = now;
            if let Some(old) = old {
                let body = self.render(false, None, "");
                acts.push(Action::Respond { req: old, body });
            }
        } else {
            let outstanding =
                self.held.len() + self.queued.values().filter(|q| q.req.is_some()).count() + 1;
            // §11: one extra request is allowed if it pauses or terminates.
            let extra = u64::from(body.attr("pause").is_some() || is_terminate(body));
            if outstanding as u64 > self.requests + extra {
                self.fail_session("policy-violation", Some(req), acts);
                return;
            }
            self.queued.insert(
                rid,
                Queued {
                    req: Some(req),
                    since: now,
                    body: body.clone(),
                },
            );
            while matches!(self.phase, Phase::Open) {
                let next = self.last_rid.saturating_add(1);
                let Some(q) = self.queued.remove(&next) else {
                    break;
                };
                self.process(next, q.req, &q.body, now, acts);
            }
        }
        self.update_idle(now);
    }

    /// Handle one request whose turn has come (all lower rids processed).
    fn process(
        &mut self,
        rid: u64,
        req: Option<RequestId>,
        body: &Element,
        now: Instant,
        acts: &mut Vec<Action>,
    ) {
        self.last_rid = rid;
        // §10: the normal inactivity period is back with the next request.
        self.pause = None;
        let payload: Vec<Element> = body
            .children()
            .cloned()
            .map(|c| {
                if c.ns() == NS_HTTPBIND {
                    into_client_ns(c)
                } else {
                    c
                }
            })
            .collect();

        if is_terminate(body) {
            if !payload.is_empty() {
                acts.push(Action::Deliver(payload));
            }
            let mut data = self.take_out();
            let mut targets: Vec<(u64, Option<RequestId>)> =
                self.held.drain(..).map(|h| (h.rid, Some(h.req))).collect();
            targets.push((rid, req));
            // Requests above this one will never be processed; answer them too.
            targets.extend(
                std::mem::take(&mut self.queued)
                    .into_iter()
                    .map(|(r, q)| (r, q.req)),
            );
            for (r, q) in targets {
                let b = self.render(false, Some(None), &std::mem::take(&mut data));
                self.respond(r, q, b, acts);
            }
            acts.push(Action::Terminated);
            self.orphans.clear();
            self.phase = Phase::Closing {
                until: now.checked_add(self.inactivity),
                terminal: None,
            };
            return;
        }

        let restart = matches!(body.attr_ns(NS_XBOSH, "restart"), Some("true" | "1"));
        if restart {
            acts.push(Action::Restart);
        }
        if !payload.is_empty() {
            acts.push(Action::Deliver(payload));
        }

        let pause = body
            .attr("pause")
            .and_then(|p| p.trim().parse::<u64>().ok())
            .filter(|&p| p > 0);
        if let Some(p) = pause {
            // §10: answer everything now; the pause response itself carries no payload.
            // Longer pauses than maxpause are clamped rather than refused: the client
            // is leaving anyway, and the longest allowed pause is the best we can offer.
            self.pause = Some(Duration::from_secs(p).min(self.max_pause));
            while !self.held.is_empty() {
                self.flush_oldest(acts);
            }
            let b = self.render(false, None, "");
            self.respond(rid, req, b, acts);
            return;
        }

        match req {
            Some(req) => {
                self.held.push_back(Held {
                    rid,
                    req,
                    since: now,
                });
                self.settle_held(acts);
            }
            None => self.add_orphan(rid),
        }
    }

    /// Pending data goes out on the oldest held request; beyond `hold`, older requests
    /// are answered so the client always has the newest one parked with us.
    fn settle_held(&mut self, acts: &mut Vec<Action>) {
        if !self.out.is_empty() && !self.held.is_empty() {
            self.flush_oldest(acts);
        }
        while self.held.len() > self.hold {
            self.flush_oldest(acts);
        }
    }

    /// The HTTP client went away before we answered.
    pub fn request_gone(&mut self, req: RequestId, now: Instant) -> Vec<Action> {
        if !matches!(self.phase, Phase::Open) {
            return Vec::new();
        }
        if let Some(pos) = self.held.iter().position(|h| h.req == req) {
            if let Some(h) = self.held.remove(pos) {
                self.add_orphan(h.rid);
            }
        } else if let Some(q) = self.queued.values_mut().find(|q| q.req == Some(req)) {
            // Keep the payload: it is still due in rid order even if nobody waits for
            // the answer (e.g. an unload beacon whose page is gone).
            q.req = None;
        }
        self.update_idle(now);
        Vec::new()
    }

    /// Outgoing top-level elements from the XMPP session (one string may hold several;
    /// pushing everything produced by one incoming batch at once saves round trips).
    pub fn push(&mut self, payload: String, now: Instant) -> Vec<Action> {
        let mut acts = Vec::new();
        if !matches!(self.phase, Phase::Open) || payload.is_empty() {
            return acts;
        }
        self.out_bytes = self.out_bytes.saturating_add(payload.len());
        self.out.push(payload);
        if !self.held.is_empty() {
            self.flush_oldest(&mut acts);
        } else if self.out_bytes > self.max_pending {
            // The client stopped collecting; don't buffer without bound.
            self.out.clear();
            self.out_bytes = 0;
            self.fail_session("policy-violation", None, &mut acts);
        }
        self.update_idle(now);
        acts
    }

    /// The XMPP session ends the stream. All outstanding requests get a
    /// `type='terminate'` body (with `condition` if given); the first one also carries
    /// queued data and `payload` (e.g. `<stream:error>` with `remote-stream-error`).
    /// With no request outstanding, the next request gets that body.
    pub fn close(
        &mut self,
        condition: Option<&str>,
        payload: Option<String>,
        now: Instant,
    ) -> Vec<Action> {
        let mut acts = Vec::new();
        if !matches!(self.phase, Phase::Open) {
            return acts;
        }
        let mut data = self.take_out();
        if let Some(p) = payload {
            data.push_str(&p);
        }
        let mut targets: Vec<(u64, RequestId)> =
            self.held.drain(..).map(|h| (h.rid, h.req)).collect();
        targets.extend(
            std::mem::take(&mut self.queued)
                .into_iter()
                .filter_map(|(r, q)| q.req.map(|req| (r, req))),
        );
        let first = self.render(false, Some(condition), &data);
        let terminal = if targets.is_empty() {
            Some(first)
        } else {
            let mut first = Some(first);
            for (rid, req) in targets {
                let b = first
                    .take()
                    .unwrap_or_else(|| self.render(false, Some(condition), ""));
                self.respond(rid, Some(req), b, &mut acts);
            }
            None
        };
        self.orphans.clear();
        self.phase = Phase::Closing {
            until: now.checked_add(self.inactivity),
            terminal,
        };
        acts
    }

    /// Earliest instant at which `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Dead => None,
            Phase::Closing { until, .. } => *until,
            Phase::Open => {
                let held = self
                    .held
                    .iter()
                    .filter_map(|h| h.since.checked_add(self.wait));
                let gap = self.gap_limit();
                let queued = self
                    .queued
                    .values()
                    .filter_map(|q| q.since.checked_add(gap));
                let idle = self
                    .idle_since
                    .and_then(|t| t.checked_add(self.idle_limit()));
                held.chain(queued).chain(idle).min()
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        let mut acts = Vec::new();
        match &self.phase {
            Phase::Dead => {}
            Phase::Closing { until, .. } => {
                if until.is_some_and(|u| u <= now) {
                    self.phase = Phase::Dead;
                    acts.push(Action::Expired);
                }
            }
            Phase::Open => {
                let gap = self.gap_limit();
                if self
                    .queued
                    .values()
                    .any(|q| q.since.checked_add(gap).is_some_and(|t| t <= now))
                {
                    // A lost request was never resent: the stream can't continue in order.
                    self.fail_session("item-not-found", None, &mut acts);
                    return acts;
                }
                // Answer in rid order: an expired request takes all older ones with it.
                let due = self
                    .held
                    .iter()
                    .rposition(|h| h.since.checked_add(self.wait).is_some_and(|t| t <= now));
                if let Some(last) = due {
                    for _ in 0..=last {
                        self.flush_oldest(&mut acts);
                    }
                }
                self.update_idle(now);
                let limit = self.idle_limit();
                if self
                    .idle_since
                    .and_then(|t| t.checked_add(limit))
                    .is_some_and(|t| t <= now)
                {
                    // §10: the client is gone; terminate without telling it.
                    self.clear();
                    self.phase = Phase::Dead;
                    acts.push(Action::Expired);
                }
            }
        }
        acts
    }

    // --- internals ---

    fn idle_limit(&self) -> Duration {
        self.pause.unwrap_or(self.inactivity)
    }

    /// How long a request may wait for a missing lower rid: the client resends a lost
    /// request after about `wait`, so allow that plus the inactivity grace.
    fn gap_limit(&self) -> Duration {
        self.wait.saturating_add(self.inactivity)
    }

    fn update_idle(&mut self, now: Instant) {
        let outstanding = !self.held.is_empty() || self.queued.values().any(|q| q.req.is_some());
        if outstanding {
            self.idle_since = None;
        } else if self.idle_since.is_none() {
            self.idle_since = Some(now);
        }
    }

    fn add_orphan(&mut self, rid: u64) {
        self.orphans.push_back(rid);
        // Older rids fall out of the retransmission window anyway.
        while self.orphans.len() as u64 > self.requests {
            self.orphans.pop_front();
        }
    }

    fn take_out(&mut self) -> String {
        let s = self.out.concat();
        self.out.clear();
        self.out_bytes = 0;
        s
    }

    /// Answer the oldest held request with everything queued (possibly nothing).
    fn flush_oldest(&mut self, acts: &mut Vec<Action>) {
        if let Some(h) = self.held.pop_front() {
            let data = self.take_out();
            let b = self.render(h.rid == self.creation_rid, None, &data);
            self.respond(h.rid, Some(h.req), b, acts);
        }
    }

    fn respond(&mut self, rid: u64, req: Option<RequestId>, body: String, acts: &mut Vec<Action>) {
        self.cache_put(rid, body.clone());
        if let Some(req) = req {
            acts.push(Action::Respond { req, body });
        }
    }

    fn cache_put(&mut self, rid: u64, body: String) {
        self.cache.retain(|(r, _)| *r != rid);
        self.cache.push_back((rid, body));
        while self.cache.len() as u64 > self.requests {
            self.cache.pop_front();
        }
    }

    fn cached(&self, rid: u64) -> Option<String> {
        self.cache
            .iter()
            .find(|(r, _)| *r == rid)
            .map(|(_, b)| b.clone())
    }

    fn clear(&mut self) {
        self.held.clear();
        self.queued.clear();
        self.orphans.clear();
        self.out.clear();
        self.out_bytes = 0;
        self.cache.clear();
    }

    /// Terminal binding error: `offender` gets `condition`, every other outstanding
    /// request `other-request` (§17.2), or `condition` when nobody offended.
    fn fail_session(
        &mut self,
        condition: &str,
        offender: Option<RequestId>,
        acts: &mut Vec<Action>,
    ) {
        let others = if offender.is_some() {
            "other-request"
        } else {
            condition
        };
        let mut reqs: Vec<RequestId> = self.held.iter().map(|h| h.req).collect();
        reqs.extend(self.queued.values().filter_map(|q| q.req));
        for r in reqs {
            acts.push(self.terminal_action(r, others));
        }
        if let Some(r) = offender {
            acts.push(self.terminal_action(r, condition));
        }
        self.clear();
        self.phase = Phase::Dead;
        acts.push(Action::Expired);
    }

    fn terminal_action(&self, req: RequestId, condition: &str) -> Action {
        let body = self.render(false, Some(Some(condition)), "");
        match legacy_status(condition) {
            Some(status) if self.legacy => Action::Fail { req, status, body },
            _ => Action::Respond { req, body },
        }
    }

    /// One response `<body/>`. `terminate`: None = normal, Some(cond) = type='terminate'.
    fn render(&self, creation: bool, terminate: Option<Option<&str>>, payload: &str) -> String {
        let mut s = String::with_capacity(160 + payload.len());
        s.push_str(
            "<body xmlns='http://jabber.org/protocol/httpbind' \
             xmlns:stream='http://etherx.jabber.org/streams'",
        );
        if creation {
            s.push_str(" xmlns:xmpp='urn:xmpp:xbosh'");
        }
        push_attr(&mut s, "sid", &self.sid);
        if creation {
            // The session parameters, only in the creation response (§7.1).
            push_attr(&mut s, "authid", &self.sid);
            push_attr(&mut s, "wait", &self.wait.as_secs().to_string());
            push_attr(&mut s, "requests", &self.requests.to_string());
            push_attr(&mut s, "hold", &self.hold.to_string());
            push_attr(&mut s, "inactivity", &self.inactivity.as_secs().to_string());
            push_attr(&mut s, "polling", &self.polling.as_secs().to_string());
            push_attr(&mut s, "maxpause", &self.max_pause.as_secs().to_string());
            push_attr(&mut s, "ver", &self.ver);
            push_attr(&mut s, "from", &self.from);
            push_attr(&mut s, "secure", if self.secure { "true" } else { "false" });
            push_attr(&mut s, "xmpp:version", "1.0");
        }
        if let Some(cond) = terminate {
            push_attr(&mut s, "type", "terminate");
            if let Some(c) = cond {
                push_attr(&mut s, "condition", c);
            }
        }
        if payload.is_empty() {
            s.push_str("/>");
        } else {
            s.push('>');
            s.push_str(payload);
            s.push_str("</body>");
        }
        s
    }
}

fn is_terminate(body: &Element) -> bool {
    body.attr("type") == Some("terminate")
}

fn parse_rid(body: &Element) -> Result<u64, BoshError> {
    opt_num::<u64>(body, "rid")?.ok_or(BoshError::Missing("rid"))
}

fn opt_num<T: std::str::FromStr>(
    body: &Element,
    name: &'static str,
) -> Result<Option<T>, BoshError> {
    match body.attr(name) {
        None => Ok(None),
        Some(v) => {
            let v = v.trim();
            // Digits only: FromStr would also take a leading '+'.
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BoshError::Invalid(name));
            }
            v.parse().map(Some).map_err(|_| BoshError::Invalid(name))
        }
    }
}

/// "1.6" → (1, 6); compared numerically so that 1.10 > 1.6.
fn parse_ver(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.trim().split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Stanzas written without xmlns inherit the httpbind namespace; XEP-0206 §2 notes
/// that clients mean jabber:client by that, which is what the XMPP session expects.
fn into_client_ns(mut el: Element) -> Element {
    let mut new = Element::bare(el.name(), NS_CLIENT);
    *new.attrs_mut() = el.attrs().clone();
    for node in el.take_nodes() {
        match node {
            Node::Element(c) if c.ns() == NS_HTTPBIND => {
                new.append_child(into_client_ns(c));
            }
            Node::Element(c) => {
                new.append_child(c);
            }
            Node::Text(t) => new.append_text_node(t),
        }
    }
    new
}

fn push_attr(s: &mut String, name: &str, value: &str) {
    s.push(' ');
    s.push_str(name);
    s.push_str("='");
    for c in value.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '\'' => s.push_str("&apos;"),
            '"' => s.push_str("&quot;"),
            _ => s.push(c),
        }
    }
    s.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "00000000-0000-4000-8000-000000000884";
    const R0: u64 = 766466320;
    const CREATE: &str = r#"<body xmlns="http://jabber.org/protocol/httpbind" xmlns:xmpp="urn:xmpp:xbosh" content="text/xml; charset=utf-8" hold="1" rid="766466320" to="meet.jitsi" ver="1.6" wait="60" xml:lang="en" xmpp:version="1.0"/>"#;
    const FEATURES: &str = "<stream:features xmlns='jabber:client'><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>ANONYMOUS</mechanism></mechanisms></stream:features>";

    fn el(s: &str) -> Element {
        s.parse().expect("test XML parses")
    }

    /// A request body for the session; `attrs` and `inner` are spliced in verbatim.
    fn body(rid: u64, attrs: &str, inner: &str) -> Element {
        el(&format!(
            "<body xmlns='{NS_HTTPBIND}' xmlns:xmpp='{NS_XBOSH}' rid='{rid}' sid='{SID}' {attrs}>{inner}</body>"
        ))
    }

    fn start_with(cfg: &BoshConfig, create: &str) -> (BoshSession, Instant) {
        let t0 = Instant::now();
        let cr = CreateRequest::parse(&el(create)).expect("creation parses");
        let (s, acts) = BoshSession::create(cfg, SID.into(), "meet.jitsi".into(), true, 1, &cr, t0);
        assert!(acts.is_empty(), "creation response is held: {acts:?}");
        (s, t0)
    }

    /// Session after the creation response has gone out (features pushed).
    fn started() -> (BoshSession, Instant) {
        let (mut s, t0) = start_with(&BoshConfig::default(), CREATE);
        let acts = s.push(FEATURES.into(), t0);
        assert_eq!(resps(&acts).len(), 1);
        (s, t0)
    }

    fn secs(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_secs(n)
    }

    fn resps(acts: &[Action]) -> Vec<(RequestId, Element)> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Respond { req, body } => Some((*req, el(body))),
                _ => None,
            })
            .collect()
    }

    fn resp_for(acts: &[Action], req: RequestId) -> Element {
        resps(acts)
            .into_iter()
            .find(|(r, _)| *r == req)
            .unwrap_or_else(|| panic!("no response for {req} in {acts:?}"))
            .1
    }

    fn delivered(acts: &[Action]) -> Vec<Element> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Deliver(v) => Some(v.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn is_empty_body(b: &Element) -> bool {
        b.is("body", NS_HTTPBIND)
            && b.children().next().is_none()
            && b.attr("type").is_none()
            && b.attr("sid") == Some(SID)
    }

    fn is_terminal(b: &Element, cond: Option<&str>) -> bool {
        b.attr("type") == Some("terminate") && b.attr("condition") == cond
    }

    #[test]
    fn creation_response_held_until_first_push_and_carries_attributes() {
        let (mut s, t0) = start_with(&BoshConfig::default(), CREATE);
        assert_eq!(s.sid(), SID);
        assert_eq!(s.poll_timeout(), Some(secs(t0, 60)));
        assert!(s.handle_timeout(secs(t0, 1)).is_empty());
        let acts = s.push(FEATURES.into(), secs(t0, 1));
        assert_eq!(acts.len(), 1);
        let b = resp_for(&acts, 1);
        for (k, v) in [
            ("sid", SID),
            ("authid", SID),
            ("wait", "60"),
            ("requests", "2"),
            ("hold", "1"),
            ("inactivity", "60"),
            ("polling", "5"),
            ("maxpause", "120"),
            ("ver", "1.6"),
            ("from", "meet.jitsi"),
            ("secure", "true"),
        ] {
            assert_eq!(b.attr(k), Some(v), "attribute {k}");
        }
        assert_eq!(b.attr_ns(NS_XBOSH, "version"), Some("1.0"));
        let f = b.get_child("features", NS_STREAM).expect("stream features");
        assert!(
            f.get_child("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl")
                .is_some()
        );
        // Later responses don't repeat the session attributes.
        let acts = s.request(2, &body(R0 + 1, "", ""), secs(t0, 2));
        assert!(acts.is_empty());
        let acts = s.push(
            "<iq xmlns='jabber:client' type='result' id='x'/>".into(),
            secs(t0, 2),
        );
        let b = resp_for(&acts, 2);
        assert!(b.attr("wait").is_none() && b.attr("authid").is_none());
        assert_eq!(b.attr("sid"), Some(SID));
    }

    #[test]
    fn creation_wait_expiry_sends_attributes_without_payload() {
        let (mut s, t0) = start_with(&BoshConfig::default(), CREATE);
        assert!(s.handle_timeout(secs(t0, 59)).is_empty());
        let acts = s.handle_timeout(secs(t0, 60));
        let b = resp_for(&acts, 1);
        assert_eq!(b.attr("requests"), Some("2"));
        assert!(b.children().next().is_none());
        // The features then go out on the next request.
        assert!(s.push(FEATURES.into(), secs(t0, 61)).is_empty());
        let acts = s.request(2, &body(R0 + 1, "", ""), secs(t0, 61));
        assert!(
            resp_for(&acts, 2)
                .get_child("features", NS_STREAM)
                .is_some()
        );
    }

    #[test]
    fn creation_parse_and_limits() {
        let cr = CreateRequest::parse(&el(CREATE)).unwrap();
        assert_eq!(cr.rid, R0);
        assert_eq!(cr.to, "meet.jitsi");
        assert_eq!((cr.wait, cr.hold), (60, 1));
        assert_eq!(cr.ver.as_deref(), Some("1.6"));
        assert_eq!(cr.lang.as_deref(), Some("en"));
        assert_eq!(cr.xmpp_version.as_deref(), Some("1.0"));
        assert_eq!(cr.ack, None);
        // Client asks for more than we allow, and an older BOSH version.
        let (mut s, t0) = start_with(
            &BoshConfig::default(),
            &format!("<body xmlns='{NS_HTTPBIND}' rid='5' to='x' wait='300' hold='3' ver='1.5'/>"),
        );
        let b = resp_for(&s.push(FEATURES.into(), t0), 1);
        assert_eq!(b.attr("wait"), Some("60"));
        assert_eq!(b.attr("hold"), Some("1"));
        assert_eq!(b.attr("ver"), Some("1.5"));
        // ver is compared numerically: 1.11 is newer than 1.6.
        let (mut s, t0) = start_with(
            &BoshConfig::default(),
            &format!("<body xmlns='{NS_HTTPBIND}' rid='5' to='x' ver='1.11'/>"),
        );
        let b = resp_for(&s.push(FEATURES.into(), t0), 1);
        assert_eq!(b.attr("ver"), Some("1.6"));
    }

    #[test]
    fn creation_parse_errors() {
        let cases = [
            (
                "<body xmlns='urn:other' rid='1' to='x'/>",
                BoshError::NotBody,
            ),
            (
                "<body xmlns='http://jabber.org/protocol/httpbind' to='x'/>",
                BoshError::Missing("rid"),
            ),
            (
                "<body xmlns='http://jabber.org/protocol/httpbind' rid='-1' to='x'/>",
                BoshError::Invalid("rid"),
            ),
            (
                "<body xmlns='http://jabber.org/protocol/httpbind' rid='+1' to='x'/>",
                BoshError::Invalid("rid"),
            ),
            (
                "<body xmlns='http://jabber.org/protocol/httpbind' rid='99999999999999999999999' to='x'/>",
                BoshError::Invalid("rid"),
            ),
            (
                "<body xmlns='http://jabber.org/protocol/httpbind' rid='1' to=' '/>",
                BoshError::Missing("to"),
            ),
            (
                "<body xmlns='http://jabber.org/protocol/httpbind' rid='1' to='x' wait='soon'/>",
                BoshError::Invalid("wait"),
            ),
            (
                "<body xmlns='http://jabber.org/protocol/httpbind' rid='1' to='x' sid='s'/>",
                BoshError::HasSid,
            ),
        ];
        for (xml, want) in cases {
            assert_eq!(CreateRequest::parse(&el(xml)), Err(want), "{xml}");
        }
        assert_eq!(BoshError::Missing("to").condition(), "improper-addressing");
        assert_eq!(BoshError::Invalid("rid").condition(), "bad-request");
        assert_eq!(
            terminal_body("item-not-found"),
            "<body xmlns='http://jabber.org/protocol/httpbind' type='terminate' condition='item-not-found'/>"
        );
    }

    #[test]
    fn fixture_login_sequence() {
        let (mut s, t0) = start_with(&BoshConfig::default(), CREATE);
        let t = |ms: u64| t0 + Duration::from_millis(ms);
        let b = resp_for(&s.push(FEATURES.into(), t(14)), 1);
        assert_eq!(b.attr("sid"), Some(SID));

        // SASL ANONYMOUS in rid+1.
        let acts = s.request(
            2,
            &body(
                R0 + 1,
                "",
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'/>",
            ),
            t(117),
        );
        let d = delivered(&acts);
        assert_eq!(d.len(), 1);
        assert!(d[0].is("auth", "urn:ietf:params:xml:ns:xmpp-sasl"));
        assert!(
            resps(&acts).is_empty(),
            "auth request is held for the answer"
        );
        let acts = s.push(
            "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>".into(),
            t(133),
        );
        assert!(
            resp_for(&acts, 2)
                .get_child("success", "urn:ietf:params:xml:ns:xmpp-sasl")
                .is_some()
        );

        // Stream restart: held until the new features are pushed.
        let acts = s.request(
            3,
            &body(
                R0 + 2,
                "to='meet.jitsi' xml:lang='en' xmpp:restart='true'",
                "",
            ),
            t(227),
        );
        assert_eq!(acts, vec![Action::Restart]);
        let bind_features = "<stream:features xmlns='jabber:client'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><required/></bind><session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session></stream:features>";
        let acts = s.push(bind_features.into(), t(235));
        let b = resp_for(&acts, 3);
        assert!(b.attr("wait").is_none(), "not a creation response");
        let f = b.get_child("features", NS_STREAM).unwrap();
        assert!(
            f.get_child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
                .is_some()
        );

        // Bind.
        let acts = s.request(
            4,
            &body(
                R0 + 3,
                "",
                "<iq xmlns='jabber:client' id='_bind_auth_2' type='set'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>",
            ),
            t(337),
        );
        let d = delivered(&acts);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].attr("id"), Some("_bind_auth_2"));
        let acts = s.push(
            "<iq xmlns='jabber:client' type='result' id='_bind_auth_2'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>anon-user-7@meet.jitsi/resource-7</jid></bind></iq>".into(),
            t(345),
        );
        assert_eq!(
            resp_for(&acts, 4).children().next().unwrap().attr("id"),
            Some("_bind_auth_2")
        );

        // Three IQs in one body are delivered together, in order.
        let acts = s.request(
            5,
            &body(
                R0 + 4,
                "",
                "<iq xmlns='jabber:client' id='a' type='get'/><iq xmlns='jabber:client' id='b' type='get'/><iq xmlns='jabber:client' id='c' type='set'/>",
            ),
            t(513),
        );
        let ids: Vec<_> = delivered(&acts)
            .iter()
            .map(|e| e.attr("id").unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let acts = s.push(
            "<iq xmlns='jabber:client' type='error' id='a'/><iq xmlns='jabber:client' type='result' id='b'/>".into(),
            t(525),
        );
        assert_eq!(resp_for(&acts, 5).children().count(), 2);

        // Two requests back to back: the older is answered when the newer arrives.
        assert!(
            s.request(
                6,
                &body(R0 + 5, "", "<iq xmlns='jabber:client' id='d' type='get'/>"),
                t(624)
            )
            .len()
                == 1
        );
        let acts = s.request(
            7,
            &body(R0 + 6, "", "<presence xmlns='jabber:client' to='r@c/n'/>"),
            t(637),
        );
        assert!(is_empty_body(&resp_for(&acts, 6)));
        assert_eq!(delivered(&acts)[0].name(), "presence");
        let acts = s.push(
            "<iq xmlns='jabber:client' type='result' id='c'/>".into(),
            t(640),
        );
        assert_eq!(resp_for(&acts, 7).children().count(), 1);

        // Terminate with an unavailable presence.
        let acts = s.request(
            8,
            &body(
                R0 + 7,
                "type='terminate'",
                "<presence xmlns='jabber:client' type='unavailable'/>",
            ),
            t(7034),
        );
        assert_eq!(delivered(&acts)[0].attr("type"), Some("unavailable"));
        assert!(matches!(acts.first(), Some(Action::Deliver(_))));
        assert_eq!(acts.last(), Some(&Action::Terminated));
        assert!(is_terminal(&resp_for(&acts, 8), None));
        assert!(s.is_closed());
    }

    #[test]
    fn long_poll_held_until_wait_then_empty_body() {
        let (mut s, t0) = started();
        assert!(s.request(2, &body(R0 + 1, "", ""), secs(t0, 1)).is_empty());
        assert_eq!(s.poll_timeout(), Some(secs(t0, 61)));
        assert!(s.handle_timeout(secs(t0, 60)).is_empty());
        let acts = s.handle_timeout(secs(t0, 61));
        assert_eq!(acts.len(), 1);
        let Action::Respond { body: raw, .. } = &acts[0] else {
            panic!("{acts:?}")
        };
        assert_eq!(
            raw,
            &format!(
                "<body xmlns='http://jabber.org/protocol/httpbind' xmlns:stream='http://etherx.jabber.org/streams' sid='{SID}'/>"
            )
        );
        // Now idle: the inactivity clock runs from this response.
        assert_eq!(s.poll_timeout(), Some(secs(t0, 121)));
    }

    #[test]
    fn push_without_held_request_is_queued_for_next_request() {
        let (mut s, t0) = started();
        assert!(
            s.push(
                "<message xmlns='jabber:client' id='1'/>".into(),
                secs(t0, 1)
            )
            .is_empty()
        );
        assert!(
            s.push(
                "<message xmlns='jabber:client' id='2'/>".into(),
                secs(t0, 2)
            )
            .is_empty()
        );
        let acts = s.request(2, &body(R0 + 1, "", ""), secs(t0, 3));
        let b = resp_for(&acts, 2);
        let ids: Vec<_> = b
            .children()
            .map(|c| c.attr("id").unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["1", "2"]);
        // Nothing outstanding after an immediate answer.
        assert_eq!(s.poll_timeout(), Some(secs(t0, 63)));
    }

    #[test]
    fn hold_overflow_answers_older_request() {
        let (mut s, t0) = started();
        assert!(s.request(2, &body(R0 + 1, "", ""), secs(t0, 1)).is_empty());
        let acts = s.request(3, &body(R0 + 2, "", ""), secs(t0, 2));
        assert_eq!(acts.len(), 1);
        assert!(is_empty_body(&resp_for(&acts, 2)));
        // The newer one is held and gets the next data.
        let acts = s.push("<iq xmlns='jabber:client' id='z'/>".into(), secs(t0, 3));
        assert_eq!(resp_for(&acts, 3).children().count(), 1);

        // hold=2 keeps two, answering the oldest on the third.
        let cfg = BoshConfig {
            max_hold: 2,
            ..BoshConfig::default()
        };
        let (mut s, t0) = start_with(
            &cfg,
            &format!(
                "<body xmlns='{NS_HTTPBIND}' rid='{R0}' to='meet.jitsi' ver='1.6' hold='2' wait='30'/>"
            ),
        );
        let b = resp_for(&s.push(FEATURES.into(), t0), 1);
        assert_eq!((b.attr("hold"), b.attr("requests")), (Some("2"), Some("3")));
        assert!(s.request(2, &body(R0 + 1, "", ""), t0).is_empty());
        assert!(s.request(3, &body(R0 + 2, "", ""), t0).is_empty());
        let acts = s.request(4, &body(R0 + 3, "", ""), t0);
        assert_eq!(resps(&acts).len(), 1);
        assert!(is_empty_body(&resp_for(&acts, 2)));
        // Data goes to the oldest held request (rid order).
        let acts = s.push("<iq xmlns='jabber:client' id='y'/>".into(), t0);
        assert_eq!(resp_for(&acts, 3).children().count(), 1);
    }

    #[test]
    fn out_of_order_requests_are_delivered_in_rid_order() {
        let (mut s, t0) = started();
        let acts = s.request(
            3,
            &body(R0 + 2, "", "<iq xmlns='jabber:client' id='second'/>"),
            secs(t0, 1),
        );
        assert!(acts.is_empty(), "waits for rid+1: {acts:?}");
        let acts = s.request(
            2,
            &body(R0 + 1, "", "<iq xmlns='jabber:client' id='first'/>"),
            secs(t0, 2),
        );
        let ids: Vec<_> = delivered(&acts)
            .iter()
            .map(|e| e.attr("id").unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["first", "second"]);
        // rid+1 answered (hold=1), rid+2 held.
        assert_eq!(resps(&acts).len(), 1);
        assert!(is_empty_body(&resp_for(&acts, 2)));
        let acts = s.push("<iq xmlns='jabber:client' id='r'/>".into(), secs(t0, 3));
        assert_eq!(resp_for(&acts, 3).children().count(), 1);
    }

    #[test]
    fn retransmission_replays_identical_body() {
        let (mut s, t0) = started();
        s.request(2, &body(R0 + 1, "", ""), secs(t0, 1));
        let acts = s.push("<iq xmlns='jabber:client' id='q'/>".into(), secs(t0, 1));
        let Action::Respond { body: original, .. } = acts[0].clone() else {
            panic!()
        };
        let acts = s.request(9, &body(R0 + 1, "", ""), secs(t0, 2));
        assert_eq!(
            acts,
            vec![Action::Respond {
                req: 9,
                body: original
            }]
        );
        // The creation response is replayed too, attributes and all.
        let acts = s.request(10, &body(R0, "", ""), secs(t0, 2));
        assert_eq!(resp_for(&acts, 10).attr("authid"), Some(SID));
        assert!(!s.is_closed());
    }

    #[test]
    fn resend_of_held_or_vanished_request_takes_its_place() {
        let (mut s, t0) = started();
        assert!(s.request(2, &body(R0 + 1, "", ""), secs(t0, 1)).is_empty());
        // Same rid again while held: the old HTTP request gets a throwaway answer.
        let acts = s.request(3, &body(R0 + 1, "", ""), secs(t0, 2));
        assert_eq!(resps(&acts).len(), 1);
        assert!(is_empty_body(&resp_for(&acts, 2)));
        let acts = s.push("<iq xmlns='jabber:client' id='a'/>".into(), secs(t0, 3));
        assert_eq!(resp_for(&acts, 3).children().count(), 1);

        // Held request's connection drops; data queues; the resend gets it.
        assert!(s.request(4, &body(R0 + 2, "", ""), secs(t0, 4)).is_empty());
        assert!(s.request_gone(4, secs(t0, 5)).is_empty());
        assert_eq!(s.poll_timeout(), Some(secs(t0, 65)), "idle after the drop");
        assert!(
            s.push("<iq xmlns='jabber:client' id='b'/>".into(), secs(t0, 6))
                .is_empty()
        );
        let acts = s.request(5, &body(R0 + 2, "", ""), secs(t0, 7));
        assert_eq!(
            resp_for(&acts, 5).children().next().unwrap().attr("id"),
            Some("b")
        );
        // Unknown request ids are ignored.
        assert!(s.request_gone(77, secs(t0, 8)).is_empty());
    }

    #[test]
    fn rid_outside_window_is_item_not_found() {
        // Too large.
        let (mut s, t0) = started();
        assert!(s.request(2, &body(R0 + 1, "", ""), secs(t0, 1)).is_empty());
        let acts = s.request(3, &body(R0 + 4, "", ""), secs(t0, 2));
        assert!(is_terminal(&resp_for(&acts, 3), Some("item-not-found")));
        assert!(is_terminal(&resp_for(&acts, 2), Some("other-request")));
        assert_eq!(acts.last(), Some(&Action::Expired));
        assert!(s.is_closed());
        assert_eq!(s.poll_timeout(), None);
        let acts = s.request(4, &body(R0 + 2, "", ""), secs(t0, 3));
        assert!(is_terminal(&resp_for(&acts, 4), Some("item-not-found")));

        // Too old: no longer in the response cache.
        let (mut s, t0) = started();
        for i in 1..=4u64 {
            s.request(i + 1, &body(R0 + i, "", ""), secs(t0, i));
        }
        let acts = s.request(20, &body(R0 + 1, "", ""), secs(t0, 9));
        assert!(is_terminal(&resp_for(&acts, 20), Some("item-not-found")));
        assert_eq!(acts.last(), Some(&Action::Expired));

        // Missing rid on a later request: bad-request.
        let (mut s, t0) = started();
        let acts = s.request(
            2,
            &el(&format!("<body xmlns='{NS_HTTPBIND}' sid='{SID}'/>")),
            t0,
        );
        assert!(is_terminal(&resp_for(&acts, 2), Some("bad-request")));
    }

    #[test]
    fn legacy_client_gets_http_status_codes() {
        let (mut s, t0) = start_with(
            &BoshConfig::default(),
            &format!("<body xmlns='{NS_HTTPBIND}' rid='{R0}' to='meet.jitsi' wait='60' hold='1'/>"),
        );
        s.push(FEATURES.into(), t0);
        let acts = s.request(2, &body(R0 + 9, "", ""), t0);
        assert!(
            matches!(&acts[0], Action::Fail { req: 2, status: 404, body } if body.contains("item-not-found"))
        );
        assert_eq!(acts.last(), Some(&Action::Expired));
    }

    #[test]
    fn overactivity_is_policy_violation() {
        let (mut s, t0) = started();
        assert!(s.request(2, &body(R0 + 1, "", ""), t0).is_empty());
        // rid+1 held; rid+3 waits for rid+2: two outstanding.
        assert!(s.request(4, &body(R0 + 3, "", ""), t0).is_empty());
        // rid+2 would make three simultaneous requests with requests=2.
        let acts = s.request(3, &body(R0 + 2, "", ""), t0);
        assert!(is_terminal(&resp_for(&acts, 3), Some("policy-violation")));
        assert!(is_terminal(&resp_for(&acts, 2), Some("other-request")));
        assert!(is_terminal(&resp_for(&acts, 4), Some("other-request")));
        assert_eq!(acts.last(), Some(&Action::Expired));

        // One extra request is allowed when it pauses or terminates.
        let (mut s, t0) = started();
        s.request(2, &body(R0 + 1, "", ""), t0);
        s.request(4, &body(R0 + 3, "", ""), t0);
        let acts = s.request(3, &body(R0 + 2, "type='terminate'", ""), t0);
        assert_eq!(acts.last(), Some(&Action::Terminated));
        assert_eq!(resps(&acts).len(), 3);
        assert!(resps(&acts).iter().all(|(_, b)| is_terminal(b, None)));
    }

    #[test]
    fn inactivity_expires_idle_session() {
        let (mut s, t0) = started();
        // Creation answered at t0: nothing outstanding.
        assert_eq!(s.poll_timeout(), Some(secs(t0, 60)));
        assert!(s.handle_timeout(secs(t0, 59)).is_empty());
        assert_eq!(s.handle_timeout(secs(t0, 60)), vec![Action::Expired]);
        assert!(s.is_closed());
        assert_eq!(s.poll_timeout(), None);
        assert!(s.handle_timeout(secs(t0, 999)).is_empty());

        // A held request keeps the session alive past `inactivity`.
        let (mut s, t0) = started();
        s.request(2, &body(R0 + 1, "", ""), secs(t0, 30));
        assert!(s.handle_timeout(secs(t0, 60)).is_empty());
        let acts = s.handle_timeout(secs(t0, 90));
        assert_eq!(resps(&acts).len(), 1);
        assert!(!acts.contains(&Action::Expired));
        assert_eq!(s.handle_timeout(secs(t0, 150)), vec![Action::Expired]);
    }

    #[test]
    fn pause_answers_everything_and_extends_inactivity() {
        let (mut s, t0) = started();
        s.request(2, &body(R0 + 1, "", ""), t0);
        let acts = s.request(3, &body(R0 + 2, "pause='100'", ""), secs(t0, 1));
        assert_eq!(resps(&acts).len(), 2);
        assert!(is_empty_body(&resp_for(&acts, 2)));
        assert!(is_empty_body(&resp_for(&acts, 3)));
        // Data pushed during the pause waits: the pause response had no payload.
        assert!(
            s.push("<message xmlns='jabber:client'/>".into(), secs(t0, 2))
                .is_empty()
        );
        assert_eq!(s.poll_timeout(), Some(secs(t0, 101)));
        assert!(
            s.handle_timeout(secs(t0, 61)).is_empty(),
            "normal inactivity is suspended"
        );
        // Back before the pause ends: normal inactivity again, queued data delivered.
        let acts = s.request(4, &body(R0 + 3, "", ""), secs(t0, 90));
        assert_eq!(resp_for(&acts, 4).children().count(), 1);
        assert_eq!(s.poll_timeout(), Some(secs(t0, 150)));

        // A pause beyond maxpause is clamped to it.
        let (mut s, t0) = started();
        s.request(2, &body(R0 + 1, "pause='9999'", ""), t0);
        assert_eq!(s.poll_timeout(), Some(secs(t0, 120)));
        assert_eq!(s.handle_timeout(secs(t0, 120)), vec![Action::Expired]);
    }

    #[test]
    fn client_terminate() {
        let (mut s, t0) = started();
        s.request(2, &body(R0 + 1, "", ""), t0);
        s.push("<iq xmlns='jabber:client' id='x'/>".into(), t0);
        s.request(3, &body(R0 + 2, "", ""), t0);
        let acts = s.request(
            4,
            &body(
                R0 + 3,
                "type='terminate'",
                "<presence xmlns='jabber:client' type='unavailable'/>",
            ),
            secs(t0, 1),
        );
        assert!(matches!(&acts[0], Action::Deliver(v) if v.len() == 1));
        assert_eq!(acts.last(), Some(&Action::Terminated));
        assert!(is_terminal(&resp_for(&acts, 3), None));
        let term = resp_for(&acts, 4);
        assert!(is_terminal(&term, None));
        assert!(s.is_closed());
        // The XMPP session's late output is dropped.
        assert!(
            s.push("<presence xmlns='jabber:client'/>".into(), secs(t0, 1))
                .is_empty()
        );
        // Resending the terminate request replays its answer; anything else is unknown.
        let acts = s.request(5, &body(R0 + 3, "type='terminate'", ""), secs(t0, 2));
        assert_eq!(resp_for(&acts, 5), term);
        let acts = s.request(6, &body(R0 + 4, "", ""), secs(t0, 2));
        assert!(is_terminal(&resp_for(&acts, 6), Some("item-not-found")));
        // Lingers for retransmissions, then expires.
        assert_eq!(s.poll_timeout(), Some(secs(t0, 61)));
        assert_eq!(s.handle_timeout(secs(t0, 61)), vec![Action::Expired]);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn close_with_stream_error() {
        let err =
            "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>";
        let (mut s, t0) = started();
        s.request(2, &body(R0 + 1, "", ""), t0);
        let acts = s.close(Some("remote-stream-error"), Some(err.into()), secs(t0, 1));
        let b = resp_for(&acts, 2);
        assert!(is_terminal(&b, Some("remote-stream-error")));
        assert!(b.get_child("error", NS_STREAM).is_some());
        assert!(s.is_closed());
        assert!(
            s.close(None, None, secs(t0, 1)).is_empty(),
            "closing twice is a no-op"
        );
        assert_eq!(s.handle_timeout(secs(t0, 61)), vec![Action::Expired]);

        // No request outstanding: queued data and the error wait for the next one.
        let (mut s, t0) = started();
        s.push("<message xmlns='jabber:client' id='m'/>".into(), t0);
        assert!(
            s.close(Some("remote-stream-error"), Some(err.into()), t0)
                .is_empty()
        );
        let acts = s.request(2, &body(R0 + 1, "", ""), secs(t0, 1));
        let b = resp_for(&acts, 2);
        assert!(is_terminal(&b, Some("remote-stream-error")));
        let names: Vec<_> = b.children().map(|c| c.name().to_owned()).collect();
        assert_eq!(names, ["message", "error"]);
        // ...and a resend of that request gets it again.
        let acts = s.request(3, &body(R0 + 1, "", ""), secs(t0, 2));
        assert_eq!(resp_for(&acts, 3), b);

        // Normal close: type='terminate' without condition.
        let (mut s, t0) = started();
        s.request(2, &body(R0 + 1, "", ""), t0);
        let acts = s.close(None, None, t0);
        assert!(is_terminal(&resp_for(&acts, 2), None));
    }

    #[test]
    fn pending_bytes_cap_terminates() {
        let cfg = BoshConfig {
            max_pending_bytes: 100,
            ..BoshConfig::default()
        };
        let (mut s, t0) = start_with(&cfg, CREATE);
        // Pushes bigger than the cap are fine while a request is there to take them.
        let big = format!(
            "<message xmlns='jabber:client'>{}</message>",
            "x".repeat(500)
        );
        assert_eq!(resps(&s.push(big.clone(), t0)).len(), 1);
        assert!(
            s.push(
                "<message xmlns='jabber:client'>1234567890</message>".into(),
                t0
            )
            .is_empty()
        );
        let acts = s.push(big, t0);
        assert_eq!(acts, vec![Action::Expired]);
        assert!(s.is_closed());
        let acts = s.request(2, &body(R0 + 1, "", ""), t0);
        assert!(is_terminal(&resp_for(&acts, 2), Some("item-not-found")));
    }

    #[test]
    fn gap_never_filled_expires() {
        let (mut s, t0) = started();
        assert!(s.request(3, &body(R0 + 2, "", ""), t0).is_empty());
        assert_eq!(s.poll_timeout(), Some(secs(t0, 120)));
        let acts = s.handle_timeout(secs(t0, 120));
        assert!(is_terminal(&resp_for(&acts, 3), Some("item-not-found")));
        assert_eq!(acts.last(), Some(&Action::Expired));
    }

    #[test]
    fn vanished_out_of_order_request_is_still_delivered() {
        let (mut s, t0) = started();
        s.request(
            3,
            &body(
                R0 + 2,
                "",
                "<presence xmlns='jabber:client' type='unavailable'/>",
            ),
            t0,
        );
        s.request_gone(3, t0);
        let acts = s.request(
            2,
            &body(R0 + 1, "", "<iq xmlns='jabber:client' id='i'/>"),
            secs(t0, 1),
        );
        let names: Vec<_> = delivered(&acts)
            .iter()
            .map(|e| e.name().to_owned())
            .collect();
        assert_eq!(names, ["iq", "presence"]);
        // rid+1 is held (only outstanding request), rid+2 is an orphan.
        assert!(resps(&acts).is_empty());
        let acts = s.push("<iq xmlns='jabber:client' id='r'/>".into(), secs(t0, 2));
        assert_eq!(resps(&acts).len(), 1);
    }

    #[test]
    fn unqualified_stanzas_become_jabber_client() {
        let (mut s, t0) = started();
        let acts = s.request(
            2,
            &body(
                R0 + 1,
                "",
                "<message to='a@b'><body>hi</body><x xmlns='urn:x'><y/></x></message>",
            ),
            t0,
        );
        let m = &delivered(&acts)[0];
        assert!(m.is("message", NS_CLIENT));
        assert_eq!(m.attr("to"), Some("a@b"));
        assert_eq!(m.get_child("body", NS_CLIENT).unwrap().text(), "hi");
        let x = m.get_child("x", "urn:x").unwrap();
        assert!(x.get_child("y", "urn:x").is_some());
    }

    #[test]
    fn attribute_values_are_escaped() {
        let t0 = Instant::now();
        let cr = CreateRequest::parse(&el(CREATE)).unwrap();
        let (mut s, _) = BoshSession::create(
            &BoshConfig::default(),
            "a'b\"<&>".into(),
            "x'y".into(),
            false,
            1,
            &cr,
            t0,
        );
        let b = resp_for(&s.push(FEATURES.into(), t0), 1);
        assert_eq!(b.attr("sid"), Some("a'b\"<&>"));
        assert_eq!(b.attr("from"), Some("x'y"));
        assert_eq!(b.attr("secure"), Some("false"));
    }

    #[test]
    fn hostile_values_do_not_panic() {
        let cfg = BoshConfig {
            max_wait: Duration::MAX,
            inactivity: Duration::MAX,
            max_pause: Duration::MAX,
            max_requests: u32::MAX,
            ..BoshConfig::default()
        };
        let create = format!(
            "<body xmlns='{NS_HTTPBIND}' rid='{}' to='x' wait='{}' hold='0' ver='9999999999999999999999.1'/>",
            u64::MAX - 1,
            u64::MAX
        );
        let (mut s, t0) = start_with(&cfg, &create);
        let _ = s.poll_timeout();
        for (i, rid) in [u64::MAX, u64::MAX, 0, u64::MAX - 1, 1]
            .into_iter()
            .enumerate()
        {
            let acts = s.request(
                i as u64 + 10,
                &body(rid, "pause='18446744073709551615'", ""),
                t0,
            );
            let _ = (acts, s.poll_timeout());
        }
        let _ = s.handle_timeout(t0 + Duration::from_secs(1 << 40));
        let _ = s.request(99, &el("<other xmlns='x'/>"), t0);
        let _ = s.close(Some("x'<"), Some(String::new()), t0);

        // hold=0 (polling): answered at once, even with nothing to send.
        let (mut s, t0) = start_with(
            &BoshConfig::default(),
            &format!("<body xmlns='{NS_HTTPBIND}' rid='1' to='x' ver='1.6' hold='0' wait='0'/>"),
        );
        s.push(FEATURES.into(), t0);
        let acts = s.request(2, &body(2, "", ""), t0);
        assert!(is_empty_body(&resp_for(&acts, 2)));
    }
}
