//! The client-to-server session: one state machine for WebSocket, BOSH and TCP.
//!
//! [`C2s`] is sans-IO: feed it what the client sent ([`C2s::input`]), stanzas routed to
//! it ([`C2s::deliver`]) and lookups it asked for; drain [`C2s::take_actions`]. [`run`]
//! is the thin task that connects it to a [`Link`], the router and the clock.
//!
//! Stream management (XEP-0198): a session that enabled resumption survives the loss of
//! its transport for `sm_resume_timeout`; stanzas for it queue up as unacknowledged and
//! are replayed when a new connection sends `<resume/>` and the task adopts that link.

use std::collections::{HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use minidom::Element;
use tokio::sync::mpsc;

use crate::config::{AuthMode, XmppConfig};
use crate::link::{Link, LinkEvent, Out, TransportKind};
use crate::ns;
use crate::router::bare_of;
use crate::sasl::{Mechanism, SaslFailure, SaslServer, Step, StoredCredentials};
use crate::server::{ConnectionSlot, ResumeEntry, Server};
use crate::stanza::{self, StanzaError, el};
use crate::token::{TokenError, TokenIdentity};
use crate::xml::StreamHeader;

/// Query parameters of the WebSocket/BOSH URL that stay attached to the session.
#[derive(Debug, Clone, Default)]
pub struct QueryParams {
    pub room: Option<String>,
    pub prefix: Option<String>,
    pub token: Option<String>,
    pub previd: Option<String>,
}

impl QueryParams {
    pub fn from_query(q: Option<&str>) -> QueryParams {
        let mut p = QueryParams::default();
        for pair in q.unwrap_or("").split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "room" => p.room = Some(v),
                "prefix" => p.prefix = Some(v),
                "token" => p.token = Some(v),
                "previd" => p.previd = Some(v),
                _ => {}
            }
        }
        p
    }
}

pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Facts about the connection the session runs on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub kind: TransportKind,
    /// Encrypted now (TLS, or HTTPS / a trusted proxy for WebSocket and BOSH).
    pub secure: bool,
    /// TCP: STARTTLS can be offered.
    pub tls_available: bool,
    pub ip: IpAddr,
    pub query: QueryParams,
    /// The username of the session named by `previd`, for anonymous re-login.
    pub resume_username: Option<String>,
}

/// What the session asks its driver to do besides writing to the client.
#[derive(Debug)]
pub enum Action {
    Send(Out),
    Route(Element),
    LookupCredentials {
        username: String,
        domain: String,
    },
    Bind {
        full_jid: String,
    },
    EnableResume {
        id: String,
    },
    Resume {
        previd: String,
        h: u32,
    },
    /// Check the session's token (`token` query parameter); answer with
    /// [`C2s::token_checked`]. `tenant`: the `prefix` query parameter.
    VerifyToken {
        token: String,
        tenant: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a stream header (first, after STARTTLS, after SASL).
    WaitOpen,
    Open,
    Closed,
}

struct Sm {
    id: String,
    resume: bool,
    /// Stanzas received from the client since enable (XEP-0198 `h`, ours to report).
    inbound: u32,
    /// Stanzas the client acknowledged.
    acked: u32,
    /// Stanzas sent and not yet acknowledged, oldest first.
    unacked: VecDeque<Element>,
    ack_requested: bool,
}

struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The c2s stream state machine.
pub struct C2s {
    cfg: Arc<XmppConfig>,
    info: ConnInfo,
    phase: Phase,
    tls: bool,
    domain: Option<String>,
    mode: AuthMode,
    sasl: Option<SaslServer>,
    sasl_failures: u32,
    pending_user: Option<String>,
    username: Option<String>,
    /// SASL ANONYMOUS succeeded and waits for the token check.
    pending_token: bool,
    /// What the session's token says about its user.
    identity: Option<Arc<TokenIdentity>>,
    jid: Option<String>,
    sm: Option<Sm>,
    directed: HashSet<String>,
    rate: TokenBucket,
    actions: Vec<Action>,
}

const MAX_SASL_FAILURES: u32 = 3;

impl C2s {
    pub fn new(cfg: Arc<XmppConfig>, info: ConnInfo, now: Instant) -> C2s {
        let l = cfg.limits;
        C2s {
            tls: info.secure,
            info,
            phase: Phase::WaitOpen,
            domain: None,
            mode: AuthMode::Anonymous,
            sasl: None,
            sasl_failures: 0,
            pending_user: None,
            username: None,
            pending_token: false,
            identity: None,
            jid: None,
            sm: None,
            directed: HashSet::new(),
            rate: TokenBucket {
                tokens: l.stanza_burst as f64,
                rate: l.stanza_rate_per_second as f64,
                burst: l.stanza_burst.max(1) as f64,
                last: now,
            },
            actions: Vec::new(),
            cfg,
        }
    }

    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    pub fn full_jid(&self) -> Option<&str> {
        self.jid.as_deref()
    }

    pub fn query(&self) -> &QueryParams {
        &self.info.query
    }

    /// What a verified token said about this session's user.
    pub fn identity(&self) -> Option<Arc<TokenIdentity>> {
        self.identity.clone()
    }

    /// Resumable: a transport loss should hibernate rather than end the session.
    pub fn resumable(&self) -> bool {
        self.jid.is_some() && self.sm.as_ref().is_some_and(|s| s.resume) && !self.is_closed()
    }

    pub fn sm_id(&self) -> Option<&str> {
        self.sm.as_ref().map(|s| s.id.as_str())
    }

    fn send(&mut self, o: Out) {
        self.actions.push(Action::Send(o));
    }

    fn send_el(&mut self, e: Element) {
        self.actions.push(Action::Send(Out::Element(e)));
    }

    fn stream_error(&mut self, condition: &'static str, text: Option<&str>) {
        if self.phase == Phase::Closed {
            return;
        }
        tracing::info!(jid = self.jid.as_deref(), condition, text, "stream error");
        if self.phase == Phase::WaitOpen {
            // RFC 6120 §4.9.1.2: open a stream before reporting the error on it.
            let from = self
                .domain
                .clone()
                .unwrap_or_else(|| self.cfg.domain.clone());
            self.send(Out::Open { id: new_id(), from });
        }
        self.send(Out::StreamError {
            condition,
            text: text.map(str::to_string),
        });
        self.phase = Phase::Closed;
    }

    /// Something from the client.
    pub fn input(&mut self, ev: LinkEvent, now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        match ev {
            LinkEvent::Open(h) => self.open(h),
            LinkEvent::Element(e) => {
                if self.phase != Phase::Open {
                    self.stream_error("not-authorized", Some("stream not open"));
                    return;
                }
                self.element(e, now)
            }
            LinkEvent::Close => {
                self.send(Out::Close);
                self.phase = Phase::Closed;
            }
            LinkEvent::Gone => self.phase = Phase::Closed,
            LinkEvent::Error(e) => {
                let cond = e.stream_condition();
                self.stream_error(cond, Some(&e.to_string()));
            }
        }
    }

    fn open(&mut self, h: StreamHeader) {
        let to = h.to.clone().unwrap_or_else(|| self.cfg.domain.clone());
        if let Some(d) = &self.domain
            && *d != to
        {
            self.stream_error("host-unknown", Some("domain changed on restart"));
            return;
        }
        let Some(mode) = self.cfg.login_domain(&to) else {
            self.domain = Some(self.cfg.domain.clone());
            self.stream_error("host-unknown", None);
            return;
        };
        if self.info.kind != TransportKind::Bosh && h.version.as_deref() != Some("1.0") {
            self.domain = Some(to);
            self.stream_error("unsupported-version", None);
            return;
        }
        self.domain = Some(to.clone());
        self.mode = mode;
        self.phase = Phase::Open;
        self.send(Out::Open {
            id: new_id(),
            from: to,
        });
        let features = self.features();
        self.send(Out::Features(features));
    }

    fn offered_mechanisms(&self) -> Vec<Mechanism> {
        match self.mode {
            AuthMode::Anonymous | AuthMode::Token => vec![Mechanism::Anonymous],
            AuthMode::Internal => {
                let mut m = vec![Mechanism::ScramSha256, Mechanism::ScramSha1];
                if self.tls {
                    m.push(Mechanism::Plain);
                }
                m
            }
        }
    }

    fn features(&self) -> Vec<Element> {
        let mut f = Vec::new();
        if self.username.is_none() {
            if self.info.kind == TransportKind::Tcp && !self.tls && self.info.tls_available {
                f.push(
                    Element::builder("starttls", ns::TLS)
                        .append(Element::bare("required", ns::TLS))
                        .build(),
                );
                return f;
            }
            let mut m = Element::builder("mechanisms", ns::SASL);
            for mech in self.offered_mechanisms() {
                m = m.append(
                    Element::builder("mechanism", ns::SASL)
                        .append(mech.name())
                        .build(),
                );
            }
            f.push(m.build());
        } else {
            f.push(
                Element::builder("bind", ns::BIND)
                    .append(Element::bare("required", ns::BIND))
                    .build(),
            );
            f.push(
                Element::builder("session", ns::SESSION)
                    .append(Element::bare("optional", ns::SESSION))
                    .build(),
            );
            if self.info.kind != TransportKind::Bosh {
                f.push(Element::bare("sm", ns::SM));
            }
        }
        f
    }

    fn element(&mut self, e: Element, now: Instant) {
        let name = e.name().to_string();
        let nsv = e.ns();
        if nsv == ns::TLS && name == "starttls" {
            if self.info.kind == TransportKind::Tcp && !self.tls && self.info.tls_available {
                self.tls = true;
                self.phase = Phase::WaitOpen;
                self.send(Out::StartTls);
            } else {
                self.send_el(Element::bare("failure", ns::TLS));
                self.send(Out::Close);
                self.phase = Phase::Closed;
            }
            return;
        }
        if self.info.kind == TransportKind::Tcp
            && !self.tls
            && self.info.tls_available
            && self.username.is_none()
        {
            self.stream_error("policy-violation", Some("STARTTLS required"));
            return;
        }
        if nsv == ns::SASL {
            self.sasl_element(&name, &e);
            return;
        }
        if self.username.is_none() {
            self.stream_error("not-authorized", None);
            return;
        }
        if nsv == ns::SM {
            self.sm_element(&name, &e);
            return;
        }
        if !stanza::is_stanza(&e) {
            self.stream_error("unsupported-stanza-type", Some(&name));
            return;
        }
        if self.jid.is_none() {
            self.pre_bind_stanza(e);
            return;
        }
        if let Some(sm) = &mut self.sm {
            sm.inbound = sm.inbound.wrapping_add(1);
        }
        if !self.rate.take(now) {
            self.stream_error("policy-violation", Some("stanza rate limit exceeded"));
            return;
        }
        self.client_stanza(e);
    }

    fn sasl_element(&mut self, name: &str, e: &Element) {
        if self.pending_token {
            self.stream_error("policy-violation", Some("authentication in progress"));
            return;
        }
        if self.username.is_some() {
            self.stream_error("policy-violation", Some("already authenticated"));
            return;
        }
        let step = match name {
            "auth" => {
                if self.sasl.is_some() || self.pending_user.is_some() {
                    self.sasl = None;
                    self.pending_user = None;
                }
                let Some(mech) = e.attr("mechanism").and_then(Mechanism::from_name) else {
                    self.sasl_failure(SaslFailure::InvalidMechanism);
                    return;
                };
                if !self.offered_mechanisms().contains(&mech) {
                    self.sasl_failure(SaslFailure::InvalidMechanism);
                    return;
                }
                let initial = match decode_sasl(&e.text()) {
                    Ok(v) => v,
                    Err(()) => {
                        self.sasl_failure(SaslFailure::IncorrectEncoding);
                        return;
                    }
                };
                let (srv, step) = SaslServer::start(mech, initial.as_deref());
                self.sasl = Some(srv);
                step
            }
            "response" => {
                let data = match decode_sasl(&e.text()) {
                    Ok(v) => v.unwrap_or_default(),
                    Err(()) => {
                        self.sasl = None;
                        self.sasl_failure(SaslFailure::IncorrectEncoding);
                        return;
                    }
                };
                match &mut self.sasl {
                    Some(s) if self.pending_user.is_none() => s.response(&data),
                    _ => {
                        self.sasl_failure(SaslFailure::MalformedRequest);
                        return;
                    }
                }
            }
            "abort" => {
                self.sasl = None;
                self.pending_user = None;
                Step::Failure(SaslFailure::Aborted)
            }
            _ => {
                self.stream_error("unsupported-stanza-type", Some(name));
                return;
            }
        };
        self.sasl_step(step);
    }

    /// Answer to [`Action::LookupCredentials`].
    pub fn credentials(&mut self, creds: Option<StoredCredentials>) {
        if self.pending_user.take().is_none() {
            return;
        }
        let step = match &mut self.sasl {
            Some(s) => s.credentials(creds),
            None => return,
        };
        self.sasl_step(step);
    }

    fn sasl_step(&mut self, step: Step) {
        let b64 = base64::engine::general_purpose::STANDARD;
        match step {
            Step::Challenge(c) => {
                let ch = Element::builder("challenge", ns::SASL)
                    .append(b64.encode(c))
                    .build();
                self.send_el(ch);
            }
            Step::NeedCredentials { username } => {
                self.pending_user = Some(username.clone());
                let domain = self.domain.clone().unwrap_or_default();
                self.actions
                    .push(Action::LookupCredentials { username, domain });
            }
            Step::Success {
                username,
                additional_data,
            } => {
                self.sasl = None;
                if username.is_none() && self.mode == AuthMode::Token && self.identity.is_none() {
                    // ANONYMOUS on a token domain: the token decides.
                    match self.info.query.token.clone().filter(|t| !t.is_empty()) {
                        Some(token) => {
                            self.pending_token = true;
                            let tenant = self.info.query.prefix.clone().filter(|p| !p.is_empty());
                            self.actions.push(Action::VerifyToken { token, tenant });
                            return;
                        }
                        None if self.cfg.allow_empty_token => {}
                        None => {
                            self.token_failure(&TokenError::Missing);
                            return;
                        }
                    }
                }
                let user = match username {
                    Some(u) => u.to_lowercase(),
                    None => self
                        .info
                        .resume_username
                        .clone()
                        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
                };
                self.username = Some(user);
                let mut s = Element::builder("success", ns::SASL);
                if let Some(d) = additional_data {
                    s = s.append(b64.encode(d));
                }
                self.send_el(s.build());
                self.phase = Phase::WaitOpen;
                self.send(Out::Reset);
            }
            Step::Failure(f) => {
                self.sasl = None;
                self.sasl_failure(f);
            }
        }
    }

    /// Answer to [`Action::VerifyToken`].
    pub fn token_checked(&mut self, r: Result<TokenIdentity, TokenError>) {
        if !std::mem::take(&mut self.pending_token) {
            return;
        }
        match r {
            Ok(id) => {
                self.identity = Some(Arc::new(id));
                self.sasl_step(Step::Success {
                    username: None,
                    additional_data: None,
                });
            }
            Err(e) => self.token_failure(&e),
        }
    }

    /// A refused token: the SASL failure carries the reason in the shape lib-jitsi-meet reads
    /// (`<not-allowed/><text>…</text>`), then the stream ends.
    fn token_failure(&mut self, e: &TokenError) {
        tracing::warn!(ip = %self.info.ip, reason = %e, "token refused");
        let fail = Element::builder("failure", ns::SASL)
            .append(Element::bare("not-allowed", ns::SASL))
            .append(
                Element::builder("text", ns::SASL)
                    .append(e.to_string())
                    .build(),
            )
            .build();
        self.send_el(fail);
        self.send(Out::Close);
        self.phase = Phase::Closed;
    }

    fn sasl_failure(&mut self, f: SaslFailure) {
        self.sasl_failures += 1;
        let fail = Element::builder("failure", ns::SASL)
            .append(Element::bare(f.condition(), ns::SASL))
            .build();
        self.send_el(fail);
        if self.sasl_failures >= MAX_SASL_FAILURES {
            self.stream_error("policy-violation", Some("too many authentication failures"));
        }
    }

    fn pre_bind_stanza(&mut self, e: Element) {
        let is_bind =
            e.name() == "iq" && e.attr("type") == Some("set") && e.has_child("bind", ns::BIND);
        if !is_bind {
            if let Some(r) = stanza::error_reply(&e, StanzaError::NOT_ALLOWED, Some("bind first")) {
                self.send_el(r);
            }
            return;
        }
        let requested = e
            .get_child("bind", ns::BIND)
            .and_then(|b| b.get_child("resource", ns::BIND))
            .map(|r| r.text())
            .filter(|r| !r.is_empty() && r.len() <= 256);
        let resource = requested
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_string());
        let domain = self.domain.clone().unwrap_or_default();
        let user = self.username.clone().unwrap_or_default();
        let full = match jid::FullJid::new(&format!("{user}@{domain}/{resource}")) {
            Ok(j) => j.to_string(),
            Err(_) => {
                if let Some(r) = stanza::error_reply(&e, StanzaError::BAD_REQUEST, None) {
                    self.send_el(r);
                }
                return;
            }
        };
        self.jid = Some(full.clone());
        self.actions.push(Action::Bind {
            full_jid: full.clone(),
        });
        let mut reply = stanza::iq_result(&e, None);
        let b = Element::builder("bind", ns::BIND)
            .append(Element::builder("jid", ns::BIND).append(full).build())
            .build();
        reply.append_child(b);
        self.send_el(reply);
    }

    /// The driver found another session holding this full JID and replaced the resource.
    pub fn rebind(&mut self, full: String) {
        self.jid = Some(full);
    }

    fn sm_element(&mut self, name: &str, e: &Element) {
        match name {
            "enable" => {
                if self.jid.is_none() || self.sm.is_some() || self.info.kind == TransportKind::Bosh
                {
                    let f = Element::builder("failed", ns::SM)
                        .append(Element::bare("unexpected-request", ns::STANZAS))
                        .build();
                    self.send_el(f);
                    return;
                }
                let resume = matches!(e.attr("resume"), Some("true") | Some("1"));
                let id = uuid::Uuid::new_v4().to_string();
                self.sm = Some(Sm {
                    id: id.clone(),
                    resume,
                    inbound: 0,
                    acked: 0,
                    unacked: VecDeque::new(),
                    ack_requested: false,
                });
                let max = self.cfg.sm_resume_timeout.as_secs().to_string();
                let mut attrs = vec![("id", id.as_str())];
                if resume {
                    attrs.push(("resume", "true"));
                    attrs.push(("max", max.as_str()));
                }
                self.send_el(el("enabled", ns::SM, &attrs));
                if resume {
                    self.actions.push(Action::EnableResume { id });
                }
            }
            "r" => {
                if let Some(sm) = &self.sm {
                    let h = sm.inbound.to_string();
                    self.send_el(el("a", ns::SM, &[("h", &h)]));
                }
            }
            "a" => {
                let h = e.attr("h").and_then(|h| h.parse::<u32>().ok());
                match (h, &mut self.sm) {
                    (Some(h), Some(sm)) => {
                        if !sm_ack(sm, h) {
                            self.stream_error(
                                "undefined-condition",
                                Some("h is beyond what was sent"),
                            );
                        }
                    }
                    _ => self.stream_error("bad-format", Some("bad ack")),
                }
            }
            "resume" => {
                let previd = e.attr("previd").unwrap_or("").to_string();
                let h = e.attr("h").and_then(|h| h.parse::<u32>().ok());
                match h {
                    Some(h) if self.jid.is_none() && !previd.is_empty() => {
                        self.actions.push(Action::Resume { previd, h })
                    }
                    _ => self.resume_failed(),
                }
            }
            _ => self.stream_error("unsupported-stanza-type", Some(name)),
        }
    }

    /// The driver could not find (or may not adopt) the session named in `<resume/>`.
    pub fn resume_failed(&mut self) {
        let f = Element::builder("failed", ns::SM)
            .append(Element::bare("item-not-found", ns::STANZAS))
            .build();
        self.send_el(f);
    }

    /// The XEP-0198 `h` of this session (client stanzas handled), once enabled.
    pub fn sm_inbound(&self) -> Option<u32> {
        self.sm.as_ref().map(|s| s.inbound)
    }

    /// `<resume/>` named a session of the meetd that ran before this one (crate::handoff):
    /// this stream takes over its full JID, its resumption id and its `h`. The client said it
    /// received `h` of the old session's stanzas; nothing of them is left to send again.
    pub fn adopt(&mut self, full_jid: String, id: String, inbound: u32, h: u32) {
        self.jid = Some(full_jid);
        self.phase = Phase::Open;
        self.sm = Some(Sm {
            id: id.clone(),
            resume: true,
            inbound,
            acked: h,
            unacked: VecDeque::new(),
            ack_requested: false,
        });
        let inbound = inbound.to_string();
        self.send_el(el("resumed", ns::SM, &[("previd", &id), ("h", &inbound)]));
    }

    /// The bare JID this stream authenticated as (for resumption checks).
    pub fn authenticated_bare(&self) -> Option<String> {
        Some(format!(
            "{}@{}",
            self.username.as_ref()?,
            self.domain.as_ref()?
        ))
    }

    /// A new transport took this session over with `<resume h=…/>`.
    pub fn resumed(&mut self, h: u32, kind: TransportKind, secure: bool) {
        self.info.kind = kind;
        self.tls = secure;
        self.phase = Phase::Open;
        let Some(sm) = &mut self.sm else { return };
        if !sm_ack(sm, h) {
            self.stream_error("undefined-condition", Some("h is beyond what was sent"));
            return;
        }
        let inbound = sm.inbound.to_string();
        let id = sm.id.clone();
        let replay: Vec<Element> = sm.unacked.iter().cloned().collect();
        sm.ack_requested = false;
        self.send_el(el("resumed", ns::SM, &[("previd", &id), ("h", &inbound)]));
        for e in replay {
            self.send_el(e);
        }
        if !self.sm.as_ref().is_some_and(|s| s.unacked.is_empty()) {
            self.request_ack();
        }
    }

    fn request_ack(&mut self) {
        if let Some(sm) = &mut self.sm
            && !sm.ack_requested
        {
            sm.ack_requested = true;
            self.actions
                .push(Action::Send(Out::Element(Element::bare("r", ns::SM))));
        }
    }

    fn client_stanza(&mut self, mut e: Element) {
        let Some(full) = self.jid.clone() else { return };
        // What and where, never the content (docs/operations.md "Logs").
        tracing::trace!(
            from = %full,
            stanza = e.name(),
            kind = e.attr("type").unwrap_or(""),
            to = e.attr("to").unwrap_or(""),
            payload = stanza::payload(&e).map(|p| p.name()).unwrap_or(""),
            "from client"
        );
        // RFC 3921 session establishment: a no-op that strophe.js still performs.
        if e.name() == "iq"
            && e.attr("type") == Some("set")
            && e.attr("to")
                .is_none_or(|t| t == bare_of(&full) || Some(t) == self.domain.as_deref())
            && e.has_child("session", ns::SESSION)
        {
            let mut r = stanza::iq_result(&e, None);
            stanza::set_attr(&mut r, "to", &full);
            self.send_el(r);
            return;
        }
        let bare = bare_of(&full).to_string();
        stanza::set_attr(&mut e, "from", &full);
        let to = e.attr("to").map(str::to_string);
        let to = match to {
            None => {
                if e.name() == "presence" {
                    self.broadcast_presence(&e);
                    return;
                }
                bare.clone()
            }
            Some(t) => match jid::Jid::new(&t) {
                Ok(j) => j.to_string(),
                Err(_) => {
                    if let Some(r) = stanza::error_reply(&e, StanzaError::JID_MALFORMED, None) {
                        self.send_el(r);
                    }
                    return;
                }
            },
        };
        stanza::set_attr(&mut e, "to", &to);
        if e.name() == "presence" {
            match e.attr("type") {
                None => {
                    if self.directed.len() < self.cfg.limits.max_directed_presences {
                        self.directed.insert(to.clone());
                    } else if !self.directed.contains(&to) {
                        if let Some(r) = stanza::error_reply(
                            &e,
                            StanzaError::POLICY_VIOLATION,
                            Some("too many directed presences"),
                        ) {
                            self.send_el(r);
                        }
                        return;
                    }
                }
                Some("unavailable") => {
                    self.directed.remove(&to);
                }
                _ => {}
            }
        }
        self.actions.push(Action::Route(e));
    }

    fn broadcast_presence(&mut self, e: &Element) {
        // No rosters: a broadcast only matters when it is unavailable, which also goes to
        // every directed-presence target (RFC 6121 §4.6.3).
        if e.attr("type") == Some("unavailable") {
            self.unavailable_to_directed();
        }
    }

    fn unavailable_to_directed(&mut self) {
        let Some(full) = self.jid.clone() else { return };
        let mut targets: Vec<String> = self.directed.drain().collect();
        targets.sort();
        for t in targets {
            let p = el(
                "presence",
                ns::CLIENT,
                &[("from", &full), ("to", &t), ("type", "unavailable")],
            );
            self.actions.push(Action::Route(p));
        }
    }

    /// A stanza the router delivered to this session.
    pub fn deliver(&mut self, e: Element) {
        if self.phase == Phase::Closed && !self.resumable() {
            return;
        }
        if let Some(sm) = &mut self.sm {
            if sm.unacked.len() >= self.cfg.sm_max_unacked {
                self.stream_error(
                    "resource-constraint",
                    Some("too many unacknowledged stanzas"),
                );
                return;
            }
            sm.unacked.push_back(e.clone());
            let n = sm.unacked.len();
            self.send_el(e);
            if n % self.cfg.sm_request_every.max(1) == 0 {
                self.request_ack();
            }
            return;
        }
        self.send_el(e);
    }

    /// The client took too long to authenticate and bind.
    pub fn timed_out(&mut self) {
        if self.jid.is_none() {
            self.stream_error("connection-timeout", Some("no resource bound in time"));
        }
    }

    /// Forget pending writes (there is no transport to write them to).
    pub fn drop_sends(&mut self) {
        self.actions.retain(|a| !matches!(a, Action::Send(_)));
    }

    /// The session ends for good: tell directed-presence targets, bounce what was never acked.
    pub fn finish(&mut self) {
        self.unavailable_to_directed();
        if let Some(sm) = &mut self.sm {
            let pending: Vec<Element> = sm.unacked.drain(..).collect();
            for e in pending {
                if e.name() == "presence" {
                    continue;
                }
                if let Some(r) = stanza::error_reply(&e, StanzaError::SERVICE_UNAVAILABLE, None) {
                    // error_reply swaps to/from: the bounce goes back to the original sender.
                    self.actions.push(Action::Route(r));
                }
            }
        }
        self.phase = Phase::Closed;
    }
}

/// Apply an ack; false when `h` acknowledges more than was sent. An ack behind the last
/// one (a client that lost count) is ignored rather than fatal, as Prosody does.
fn sm_ack(sm: &mut Sm, h: u32) -> bool {
    let newly = h.wrapping_sub(sm.acked);
    if newly > u32::MAX / 2 {
        tracing::debug!(h, acked = sm.acked, "stale stream-management ack ignored");
        return true;
    }
    let newly = newly as usize;
    if newly > sm.unacked.len() {
        return false;
    }
    sm.unacked.drain(..newly);
    sm.acked = h;
    sm.ack_requested = false;
    true
}

/// XMPP's base64 for SASL: empty text means "no data", `=` means "empty data".
fn decode_sasl(text: &str) -> Result<Option<Vec<u8>>, ()> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if t == "=" {
        return Ok(Some(Vec::new()));
    }
    base64::engine::general_purpose::STANDARD
        .decode(t)
        .map(Some)
        .map_err(|_| ())
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A new connection adopting a hibernating session.
pub struct Handover {
    pub link: Box<dyn Link>,
    pub h: u32,
    pub bare: String,
}

/// Drive one session over `link` until it ends.
pub async fn run(server: Arc<Server>, link: Box<dyn Link>, info: ConnInfo, slot: ConnectionSlot) {
    let mut cfg = server.config.clone();
    cfg.limits = server.limits();
    let cfg = Arc::new(cfg);
    let (tx, mut mailbox) = mpsc::channel::<Box<Element>>(server.limits().session_queue.max(1));
    let (htx, mut hrx) = mpsc::channel::<Box<Handover>>(1);
    let mut c2s = C2s::new(cfg.clone(), info, Instant::now());
    let mut link: Option<Box<dyn Link>> = Some(link);
    let mut hibernate_until: Option<tokio::time::Instant> = None;
    let mut bound = false;
    let mut resume_id: Option<String> = None;
    // Our `h`, for the next meetd should this one stop (crate::handoff).
    let inbound = Arc::new(std::sync::atomic::AtomicU32::new(0));
    // The connection slot moves with the link: a hibernating session holds none.
    let mut slot = Some(slot);
    let bind_deadline = tokio::time::Instant::now() + cfg.limits.bind_timeout;
    loop {
        // Carry out what the state machine asked for.
        let mut pending = c2s.take_actions();
        while !pending.is_empty() {
            let mut outs = Vec::new();
            for a in pending.drain(..) {
                match a {
                    Action::Send(o) => outs.push(o),
                    Action::Route(e) => {
                        server.router.route(e);
                    }
                    Action::LookupCredentials { username, domain } => {
                        let creds = match server.accounts.credentials(&username, &domain).await {
                            Ok(c) => c,
                            Err(err) => {
                                tracing::error!(%err, "account lookup failed");
                                None
                            }
                        };
                        c2s.credentials(creds);
                    }
                    Action::VerifyToken { token, tenant } => {
                        let r = match server.token_authority() {
                            Some(a) => a.verify(&token, tenant.as_deref()).await,
                            None => Err(crate::token::TokenError::Missing),
                        };
                        c2s.token_checked(r);
                    }
                    Action::Bind { full_jid } => {
                        if server.router.is_bound(&full_jid) {
                            // Resource conflict: keep the old session, give this one a fresh resource.
                            let fresh = format!(
                                "{}{}",
                                full_jid,
                                &uuid::Uuid::new_v4().simple().to_string()[..6]
                            );
                            c2s.rebind(fresh.clone());
                            rewrite_bind_reply(&mut outs, &fresh);
                            server.router.bind(&fresh, tx.clone());
                        } else {
                            server.router.bind(&full_jid, tx.clone());
                        }
                        bound = true;
                        if let (Some(id), Some(full)) = (c2s.identity(), c2s.full_jid()) {
                            server.token_identities.set(full, id);
                        }
                        tracing::debug!(jid = c2s.full_jid(), "bound");
                    }
                    Action::EnableResume { id } => {
                        server.register_resumable(
                            &id,
                            ResumeEntry {
                                full_jid: c2s.full_jid().unwrap_or_default().to_string(),
                                handover: htx.clone(),
                                inbound: inbound.clone(),
                            },
                        );
                        resume_id = Some(id);
                    }
                    Action::Resume { previd, h } => {
                        let target = server.resumable(&previd);
                        let me = c2s.authenticated_bare();
                        match (target, me, link.take()) {
                            (Some((full, handover)), Some(me), Some(l)) if bare_of(&full) == me => {
                                // Flush what we owe this link before handing it over.
                                let mut l = l;
                                if !outs.is_empty() {
                                    let _ = l.send(&outs).await;
                                }
                                let ho = Box::new(Handover {
                                    link: l,
                                    h,
                                    bare: me,
                                });
                                if let Err(mpsc::error::SendError(ho)) = handover.send(ho).await {
                                    link = Some(ho.link);
                                    c2s.resume_failed();
                                } else {
                                    // The old session now owns the link and our slot's purpose.
                                    drop(slot.take());
                                    return;
                                }
                            }
                            (None, Some(me), l) => {
                                link = l;
                                // A session of the meetd that ran before this one?
                                match server.adoptable(&previd, false) {
                                    Some(r)
                                        if bare_of(&r.jid) == me
                                            && !server.router.is_bound(&r.jid) =>
                                    {
                                        server.adoptable(&previd, true);
                                        c2s.adopt(r.jid.clone(), r.id.clone(), r.h, h);
                                        server.router.bind(&r.jid, tx.clone());
                                        bound = true;
                                        if let Some(id) = c2s.identity() {
                                            server.token_identities.set(&r.jid, id);
                                        }
                                        inbound.store(r.h, std::sync::atomic::Ordering::SeqCst);
                                        server.register_resumable(
                                            &r.id,
                                            ResumeEntry {
                                                full_jid: r.jid.clone(),
                                                handover: htx.clone(),
                                                inbound: inbound.clone(),
                                            },
                                        );
                                        resume_id = Some(r.id);
                                        tracing::debug!(
                                            jid = c2s.full_jid(),
                                            "resumed a session of the previous meetd"
                                        );
                                    }
                                    _ => c2s.resume_failed(),
                                }
                            }
                            (_, _, l) => {
                                link = l;
                                c2s.resume_failed();
                            }
                        }
                    }
                }
            }
            if let Some(l) = &mut link
                && !outs.is_empty()
                && l.send(&outs).await.is_err()
            {
                link = None;
                c2s.input(LinkEvent::Gone, Instant::now());
            }
            pending = c2s.take_actions();
        }

        if link.is_none() && hibernate_until.is_none() {
            if c2s.resumable() {
                hibernate_until = Some(tokio::time::Instant::now() + cfg.sm_resume_timeout);
                slot = None;
                tracing::debug!(jid = c2s.full_jid(), "hibernating");
            } else {
                break;
            }
        }
        if c2s.is_closed() && link.is_some() {
            break;
        }

        tokio::select! {
            ev = recv_opt(&mut link) => {
                let gone = matches!(ev, LinkEvent::Gone);
                if server.is_stopping() {
                    // Our `h` went to the next meetd: handle nothing more from the client.
                    if gone {
                        link = None;
                    }
                    continue;
                }
                if gone {
                    link = None;
                    if c2s.resumable() {
                        continue;
                    }
                }
                c2s.input(ev, Instant::now());
                if let Some(n) = c2s.sm_inbound() {
                    inbound.store(n, std::sync::atomic::Ordering::SeqCst);
                }
                if gone {
                    break;
                }
            }
            Some(e) = mailbox.recv(), if bound => {
                c2s.deliver(*e);
                if link.is_none() {
                    // Hibernating: the stanzas wait in the unacked queue; drop the writes.
                    c2s.drop_sends();
                }
            }
            Some(ho) = hrx.recv() => {
                if Some(ho.bare.as_str()) != c2s.full_jid().map(bare_of) {
                    continue;
                }
                if let Some(mut old) = link.take() {
                    let _ = old.send(&[Out::StreamError { condition: "conflict", text: Some("session resumed elsewhere".into()) }]).await;
                }
                let kind = ho.link.kind();
                let secure = ho.link.secure();
                link = Some(ho.link);
                hibernate_until = None;
                c2s.resumed(ho.h, kind, secure);
                tracing::debug!(jid = c2s.full_jid(), "resumed");
            }
            _ = tokio::time::sleep_until(bind_deadline), if !bound => {
                c2s.timed_out();
            }
            _ = sleep_opt(hibernate_until) => {
                tracing::debug!(jid = c2s.full_jid(), "resumption timed out");
                break;
            }
        }
    }
    // The end: unregister first so nothing new is delivered, then tell the others.
    if let Some(id) = &resume_id {
        server.unregister_resumable(id);
    }
    if let Some(full) = c2s.full_jid().map(str::to_string) {
        server.router.unbind(&full, &tx);
        if c2s.identity().is_some() {
            server.token_identities.remove(&full);
        }
    }
    mailbox.close();
    while let Ok(e) = mailbox.try_recv() {
        c2s.deliver(*e);
    }
    c2s.finish();
    let mut outs = Vec::new();
    for a in c2s.take_actions() {
        match a {
            Action::Route(e) => {
                server.router.route(e);
            }
            Action::Send(o) => outs.push(o),
            _ => {}
        }
    }
    if let Some(l) = &mut link {
        outs.retain(|o| matches!(o, Out::StreamError { .. } | Out::Close));
        if !outs.is_empty() {
            let _ = l.send(&outs).await;
        }
    }
    drop(slot);
}

/// The bind result was built before the driver found a conflict; fix the JID in it.
fn rewrite_bind_reply(outs: &mut [Out], fresh: &str) {
    for o in outs.iter_mut() {
        if let Out::Element(e) = o
            && let Some(b) = e.get_child_mut("bind", ns::BIND)
            && let Some(j) = b.get_child_mut("jid", ns::BIND)
        {
            *j = Element::builder("jid", ns::BIND)
                .append(fresh.to_string())
                .build();
        }
    }
}

async fn recv_opt(link: &mut Option<Box<dyn Link>>) -> LinkEvent {
    match link {
        Some(l) => l.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(until: Option<tokio::time::Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sasl;

    fn cfg() -> Arc<XmppConfig> {
        let mut c = XmppConfig::for_domain("meet.jitsi");
        c.limits.stanza_rate_per_second = 10;
        c.limits.stanza_burst = 20;
        Arc::new(c)
    }

    fn info(kind: TransportKind) -> ConnInfo {
        ConnInfo {
            kind,
            secure: false,
            tls_available: kind == TransportKind::Tcp,
            ip: "127.0.0.1".parse().unwrap(),
            query: QueryParams::from_query(Some("room=testroom&token=abc%20d")),
            resume_username: None,
        }
    }

    fn parse(s: &str) -> Element {
        crate::xml::parse_document(s.as_bytes(), &Default::default()).unwrap()
    }

    fn open(to: &str) -> LinkEvent {
        LinkEvent::Open(StreamHeader {
            to: Some(to.into()),
            version: Some("1.0".into()),
            ..Default::default()
        })
    }

    fn sent(c: &mut C2s) -> Vec<String> {
        c.take_actions()
            .into_iter()
            .map(|a| match a {
                Action::Send(Out::Open { from, .. }) => format!("open:{from}"),
                Action::Send(Out::Features(f)) => {
                    format!(
                        "features:{}",
                        f.iter().map(crate::xml::to_string).collect::<String>()
                    )
                }
                Action::Send(Out::Element(e)) => crate::xml::to_string(&e),
                Action::Send(Out::StreamError { condition, .. }) => {
                    format!("stream-error:{condition}")
                }
                Action::Send(o) => format!("{o:?}"),
                Action::Route(e) => format!("route:{}", crate::xml::to_string(&e)),
                Action::Bind { full_jid } => format!("bind:{full_jid}"),
                Action::LookupCredentials { username, domain } => {
                    format!("lookup:{username}@{domain}")
                }
                Action::EnableResume { id } => format!("resume-enabled:{id}"),
                Action::Resume { previd, h } => format!("resume:{previd}:{h}"),
                Action::VerifyToken { token, tenant } => format!("verify:{token}:{tenant:?}"),
            })
            .collect()
    }

    /// Anonymous login over WebSocket as lib-jitsi-meet does it (fixture 01).
    fn logged_in(kind: TransportKind) -> (C2s, String) {
        let now = Instant::now();
        let mut c = C2s::new(cfg(), info(kind), now);
        let out = anonymous_auth(&mut c, now);
        assert!(out[0].starts_with("<success"), "{out:?}");
        assert_eq!(out[1], "Reset");
        c.input(open("meet.jitsi"), now);
        let out = sent(&mut c);
        assert!(out[1].contains("urn:ietf:params:xml:ns:xmpp-bind"));
        assert_eq!(
            out[1].contains("urn:xmpp:sm:3"),
            kind != TransportKind::Bosh
        );
        c.input(LinkEvent::Element(parse("<iq xmlns='jabber:client' id='_bind_auth_2' type='set'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")), now);
        let out = sent(&mut c);
        assert!(out[0].starts_with("bind:"), "{out:?}");
        assert!(out[1].contains("<jid>"));
        let jid = c.full_jid().unwrap().to_string();
        assert!(jid.ends_with(&format!("@meet.jitsi/{}", jid.rsplit('/').next().unwrap())));
        (c, jid)
    }

    fn token_session(query: &str, allow_empty: bool) -> (C2s, Vec<String>) {
        let now = Instant::now();
        let mut c = XmppConfig::for_domain("meet.jitsi");
        c.main_auth = AuthMode::Token;
        c.allow_empty_token = allow_empty;
        let mut i = info(TransportKind::WebSocket);
        i.query = QueryParams::from_query(Some(query));
        let mut c = C2s::new(Arc::new(c), i, now);
        let out = anonymous_auth(&mut c, now);
        (c, out)
    }

    /// Open the stream on the main domain, which offers ANONYMOUS, and send `<auth/>`.
    fn anonymous_auth(c: &mut C2s, now: Instant) -> Vec<String> {
        c.input(open("meet.jitsi"), now);
        let out = sent(c);
        assert_eq!(out[0], "open:meet.jitsi");
        assert!(
            out[1].contains("<mechanism>ANONYMOUS</mechanism>"),
            "{out:?}"
        );
        c.input(
            LinkEvent::Element(parse(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'/>",
            )),
            now,
        );
        sent(c)
    }

    #[test]
    fn a_token_is_checked_before_the_session_signs_in() {
        let (mut c, out) = token_session("room=r&token=T0K&prefix=faculty", false);
        assert_eq!(out, vec!["verify:T0K:Some(\"faculty\")"]);
        // Nothing else happens while the check runs.
        c.input(
            LinkEvent::Element(parse(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'/>",
            )),
            Instant::now(),
        );
        assert_eq!(sent(&mut c), vec!["stream-error:policy-violation"]);

        let (mut c, _) = token_session("token=T0K", false);
        let id = TokenIdentity {
            moderator: true,
            ..Default::default()
        };
        c.token_checked(Ok(id.clone()));
        let out = sent(&mut c);
        assert!(out[0].starts_with("<success"), "{out:?}");
        assert_eq!(c.identity().as_deref(), Some(&id));
        // A second answer changes nothing.
        c.token_checked(Err(TokenError::Expired));
        assert!(sent(&mut c).is_empty());
    }

    #[test]
    fn a_bad_or_missing_token_ends_the_stream_with_its_reason() {
        let (mut c, _) = token_session("token=T0K", false);
        c.token_checked(Err(TokenError::WrongAudience));
        let out = sent(&mut c);
        assert_eq!(
            out[0],
            "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-allowed/><text>wrong audience</text></failure>"
        );
        assert_eq!(out[1], "Close");
        assert!(c.is_closed() && c.identity().is_none());

        let (c, out) = token_session("room=r", false);
        assert!(out[0].contains("<text>token required</text>"), "{out:?}");
        assert!(c.is_closed());
        let (c, out) = token_session("room=r&token=", false);
        assert!(out[0].contains("token required"), "{out:?}");
        assert!(c.is_closed());
        // Guests allowed: no token, no identity.
        let (c, out) = token_session("room=r", true);
        assert!(out[0].starts_with("<success"), "{out:?}");
        assert!(c.identity().is_none());
    }

    #[test]
    fn anonymous_login_bind_and_route() {
        let (mut c, jid) = logged_in(TransportKind::WebSocket);
        assert_eq!(c.query().room.as_deref(), Some("testroom"));
        assert_eq!(c.query().token.as_deref(), Some("abc d"));
        let now = Instant::now();
        // `from` is always the session's JID, whatever the client wrote.
        c.input(LinkEvent::Element(parse("<message xmlns='jabber:client' from='evil@x/y' to='b@meet.jitsi/r'><body>hi</body></message>")), now);
        let out = sent(&mut c);
        assert!(
            out[0].starts_with("route:") && out[0].contains(&format!("from='{jid}'")),
            "{out:?}"
        );
        // An iq without `to` is addressed to the account.
        c.input(LinkEvent::Element(parse("<iq xmlns='jabber:client' id='r1' type='get'><query xmlns='jabber:iq:roster'/></iq>")), now);
        let out = sent(&mut c);
        assert!(
            out[0].contains(&format!("to='{}'", bare_of(&jid))),
            "{out:?}"
        );
    }

    #[test]
    fn legacy_session_iq_is_answered() {
        let (mut c, jid) = logged_in(TransportKind::WebSocket);
        c.input(LinkEvent::Element(parse("<iq xmlns='jabber:client' id='_session_auth_2' type='set'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")), Instant::now());
        let out = sent(&mut c);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].contains("type='result'")
                && out[0].contains("id='_session_auth_2'")
                && out[0].contains(&jid),
            "{out:?}"
        );
    }

    #[test]
    fn stanzas_before_auth_are_refused() {
        let now = Instant::now();
        let mut c = C2s::new(cfg(), info(TransportKind::WebSocket), now);
        c.input(open("meet.jitsi"), now);
        sent(&mut c);
        c.input(
            LinkEvent::Element(parse("<message xmlns='jabber:client' to='a@meet.jitsi'/>")),
            now,
        );
        assert_eq!(sent(&mut c), vec!["stream-error:not-authorized"]);
        assert!(c.is_closed());
    }

    #[test]
    fn unknown_host_and_version() {
        let now = Instant::now();
        let mut c = C2s::new(cfg(), info(TransportKind::WebSocket), now);
        c.input(open("elsewhere.example"), now);
        let out = sent(&mut c);
        assert_eq!(out.last().unwrap(), "stream-error:host-unknown");
        let mut c = C2s::new(cfg(), info(TransportKind::Tcp), now);
        c.input(
            LinkEvent::Open(StreamHeader {
                to: Some("meet.jitsi".into()),
                ..Default::default()
            }),
            now,
        );
        assert_eq!(
            sent(&mut c).last().unwrap(),
            "stream-error:unsupported-version"
        );
    }

    #[test]
    fn tcp_requires_starttls_then_offers_scram() {
        let now = Instant::now();
        let mut c = C2s::new(cfg(), info(TransportKind::Tcp), now);
        c.input(open("auth.meet.jitsi"), now);
        let out = sent(&mut c);
        assert!(
            out[1].contains("starttls") && !out[1].contains("mechanisms"),
            "{out:?}"
        );
        c.input(
            LinkEvent::Element(parse(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'/>",
            )),
            now,
        );
        assert_eq!(sent(&mut c), vec!["stream-error:policy-violation"]);

        let mut c = C2s::new(cfg(), info(TransportKind::Tcp), now);
        c.input(open("auth.meet.jitsi"), now);
        sent(&mut c);
        c.input(
            LinkEvent::Element(parse("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")),
            now,
        );
        assert_eq!(sent(&mut c), vec!["StartTls"]);
        c.input(open("auth.meet.jitsi"), now);
        let out = sent(&mut c);
        assert!(
            out[1].contains("SCRAM-SHA-256")
                && out[1].contains("SCRAM-SHA-1")
                && out[1].contains("PLAIN"),
            "{out:?}"
        );
        assert!(!out[1].contains("ANONYMOUS"));
    }

    #[test]
    fn scram_login_asks_for_credentials() {
        let now = Instant::now();
        let mut i = info(TransportKind::WebSocket);
        i.secure = true;
        let mut c = C2s::new(cfg(), i, now);
        c.input(open("auth.meet.jitsi"), now);
        sent(&mut c);
        let b64 = base64::engine::general_purpose::STANDARD;
        // PLAIN with the initial response: user focus, password secret.
        let plain = b64.encode(b"\0focus\0secret");
        c.input(
            LinkEvent::Element(parse(&format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>"
            ))),
            now,
        );
        assert_eq!(sent(&mut c), vec!["lookup:focus@auth.meet.jitsi"]);
        c.credentials(Some(sasl::derive_credentials("secret", 4096)));
        let out = sent(&mut c);
        assert!(out[0].starts_with("<success"), "{out:?}");
        c.input(open("auth.meet.jitsi"), now);
        sent(&mut c);
        c.input(LinkEvent::Element(parse("<iq xmlns='jabber:client' id='b' type='set'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>focus</resource></bind></iq>")), now);
        sent(&mut c);
        assert_eq!(c.full_jid(), Some("focus@auth.meet.jitsi/focus"));
    }

    #[test]
    fn wrong_password_fails_then_closes_after_three() {
        let now = Instant::now();
        let mut i = info(TransportKind::WebSocket);
        i.secure = true;
        let mut c = C2s::new(cfg(), i, now);
        c.input(open("auth.meet.jitsi"), now);
        sent(&mut c);
        let b64 = base64::engine::general_purpose::STANDARD;
        let plain = b64.encode(b"\0focus\0wrong");
        for n in 0..3 {
            c.input(LinkEvent::Element(parse(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>"))), now);
            sent(&mut c);
            c.credentials(Some(sasl::derive_credentials("secret", 4096)));
            let out = sent(&mut c);
            assert!(out[0].contains("not-authorized"), "{out:?}");
            assert_eq!(c.is_closed(), n == 2);
        }
    }

    #[test]
    fn stream_management_acks_and_resume() {
        let (mut c, _jid) = logged_in(TransportKind::WebSocket);
        let now = Instant::now();
        c.input(
            LinkEvent::Element(parse("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")),
            now,
        );
        let out = sent(&mut c);
        assert!(
            out[0].starts_with("<enabled") && out[0].contains("resume='true'"),
            "{out:?}"
        );
        assert!(out[1].starts_with("resume-enabled:"));
        assert!(c.resumable());
        for i in 0..7 {
            c.deliver(parse(&format!(
                "<message xmlns='jabber:client' to='x' id='m{i}'/>"
            )));
        }
        let out = sent(&mut c);
        // One ack request after five unacked stanzas.
        assert_eq!(
            out.iter().filter(|s| s.starts_with("<r ")).count(),
            1,
            "{out:?}"
        );
        c.input(
            LinkEvent::Element(parse("<a xmlns='urn:xmpp:sm:3' h='3'/>")),
            now,
        );
        assert!(sent(&mut c).is_empty());
        // A stale ack (behind the last one) is ignored, not fatal.
        c.input(
            LinkEvent::Element(parse("<a xmlns='urn:xmpp:sm:3' h='1'/>")),
            now,
        );
        assert!(sent(&mut c).is_empty());
        assert!(!c.is_closed());
        c.input(LinkEvent::Element(parse("<iq xmlns='jabber:client' id='p' type='get' to='meet.jitsi'><ping xmlns='urn:xmpp:ping'/></iq>")), now);
        sent(&mut c);
        c.input(LinkEvent::Element(parse("<r xmlns='urn:xmpp:sm:3'/>")), now);
        assert_eq!(sent(&mut c), vec!["<a xmlns='urn:xmpp:sm:3' h='1'/>"]);
        // The transport is replaced; the client had seen 5 of the 7.
        c.resumed(5, TransportKind::WebSocket, false);
        let out = sent(&mut c);
        assert!(
            out[0].starts_with("<resumed") && out[0].contains("h='1'"),
            "{out:?}"
        );
        assert!(
            out[1].contains("id='m5'") && out[2].contains("id='m6'"),
            "{out:?}"
        );
        // Acking more than was sent is a stream error.
        c.input(
            LinkEvent::Element(parse("<a xmlns='urn:xmpp:sm:3' h='99'/>")),
            now,
        );
        assert_eq!(sent(&mut c), vec!["stream-error:undefined-condition"]);
    }

    #[test]
    fn finish_sends_unavailable_to_directed_targets_and_bounces_unacked() {
        let (mut c, jid) = logged_in(TransportKind::WebSocket);
        let now = Instant::now();
        c.input(
            LinkEvent::Element(parse(
                "<presence xmlns='jabber:client' to='room@muc.meet.jitsi/nick'/>",
            )),
            now,
        );
        c.input(
            LinkEvent::Element(parse("<enable xmlns='urn:xmpp:sm:3'/>")),
            now,
        );
        sent(&mut c);
        c.deliver(parse("<iq xmlns='jabber:client' type='get' id='q' from='focus@auth.meet.jitsi/focus' to='x'><query xmlns='y'/></iq>"));
        sent(&mut c);
        c.finish();
        let out = sent(&mut c);
        assert!(
            out.iter().any(|s| s.contains("type='unavailable'")
                && s.contains("to='room@muc.meet.jitsi/nick'")
                && s.contains(&jid)),
            "{out:?}"
        );
        assert!(
            out.iter().any(|s| s.contains("service-unavailable")
                && s.contains("to='focus@auth.meet.jitsi/focus'")),
            "{out:?}"
        );
    }

    #[test]
    fn rate_limit_is_a_policy_violation() {
        let (mut c, _) = logged_in(TransportKind::WebSocket);
        let now = Instant::now();
        for _ in 0..20 {
            c.input(
                LinkEvent::Element(parse(
                    "<message xmlns='jabber:client' to='a@meet.jitsi/b'/>",
                )),
                now,
            );
        }
        assert!(!c.is_closed());
        sent(&mut c);
        c.input(
            LinkEvent::Element(parse(
                "<message xmlns='jabber:client' to='a@meet.jitsi/b'/>",
            )),
            now,
        );
        assert_eq!(sent(&mut c), vec!["stream-error:policy-violation"]);
        // Tokens come back with time.
        let (mut c, _) = logged_in(TransportKind::WebSocket);
        for i in 0..60 {
            c.input(
                LinkEvent::Element(parse(
                    "<message xmlns='jabber:client' to='a@meet.jitsi/b'/>",
                )),
                now + std::time::Duration::from_millis(100 * i),
            );
        }
        assert!(!c.is_closed());
    }

    #[test]
    fn bad_xml_maps_to_stream_errors() {
        let (mut c, _) = logged_in(TransportKind::WebSocket);
        c.input(
            LinkEvent::Error(crate::xml::XmlError::TooLarge(10)),
            Instant::now(),
        );
        assert_eq!(sent(&mut c), vec!["stream-error:policy-violation"]);
        let (mut c, _) = logged_in(TransportKind::WebSocket);
        c.input(
            LinkEvent::Error(crate::xml::XmlError::Restricted("doctype".into())),
            Instant::now(),
        );
        assert_eq!(sent(&mut c), vec!["stream-error:restricted-xml"]);
    }

    #[test]
    fn previd_keeps_anonymous_username() {
        let now = Instant::now();
        let mut i = info(TransportKind::WebSocket);
        i.resume_username = Some("olduser".into());
        let mut c = C2s::new(cfg(), i, now);
        c.input(open("meet.jitsi"), now);
        c.input(
            LinkEvent::Element(parse(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'/>",
            )),
            now,
        );
        c.input(open("meet.jitsi"), now);
        sent(&mut c);
        assert_eq!(
            c.authenticated_bare().as_deref(),
            Some("olduser@meet.jitsi")
        );
        c.input(
            LinkEvent::Element(parse("<resume xmlns='urn:xmpp:sm:3' previd='abc' h='4'/>")),
            now,
        );
        assert_eq!(sent(&mut c), vec!["resume:abc:4"]);
        // The previous meetd handled 9 of the client's stanzas; the client got 4 of ours.
        c.adopt("olduser@meet.jitsi/r1".into(), "abc".into(), 9, 4);
        let out = sent(&mut c);
        assert_eq!(out.len(), 1);
        assert!(
            out[0].starts_with("<resumed")
                && out[0].contains("previd='abc'")
                && out[0].contains("h='9'"),
            "{out:?}"
        );
        assert_eq!(c.full_jid(), Some("olduser@meet.jitsi/r1"));
        assert!(c.resumable());
        // Counting goes on from there: one more stanza makes h 10.
        c.input(
            LinkEvent::Element(parse("<presence xmlns='jabber:client'/>")),
            now,
        );
        sent(&mut c);
        c.input(LinkEvent::Element(parse("<r xmlns='urn:xmpp:sm:3'/>")), now);
        let out = sent(&mut c);
        assert!(
            out.iter().any(|o| o.contains("<a") && o.contains("h='10'")),
            "{out:?}"
        );
        assert_eq!(c.sm_inbound(), Some(10));
    }
}
