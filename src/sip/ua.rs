//! meetd's SIP user agent (docs/sip.md §1): it takes calls (RFC 3261 as a UAS), answers them
//! with the session description the glue gives it, passes the caller's keys from SIP INFO
//! on, and ends calls from either side. Sans-IO: messages and the time go in; messages to
//! send, events and the next deadline come out. rsip parses the messages; the transactions
//! that matter to a gateway (INVITE with its 2xx retransmissions until the ACK, BYE, CANCEL,
//! INFO, OPTIONS) are kept here.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rsip::prelude::*;
use rsip::{Header, Method, Request, SipMessage};

use super::audio::info_key;
use super::sdp::{self, Offer};

/// RFC 3261's timer T1 (the first retransmission), T2 (the longest interval), and 64·T1
/// (how long a transaction waits at most).
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
const GIVE_UP: Duration = Duration::from_secs(32);
/// Digest nonces are good for this long, and this many are remembered.
const NONCE_LIFE: Duration = Duration::from_secs(300);
const MAX_NONCES: usize = 1024;
/// Finished calls are remembered this long, to answer retransmissions of their last request.
const LINGER: Duration = Duration::from_secs(32);
const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    fn via(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }
}

/// Where a message came from and where its answers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    pub transport: Transport,
    pub addr: SocketAddr,
}

/// The glue's handle of a call.
pub type CallKey = u64;

/// Who calls, as far as meetd may know: `None` when the caller hid the number (`Privacy`,
/// `anonymous`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub number: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new call: answer it ([`Ua::answer`]) or refuse it ([`Ua::hangup`]).
    Incoming {
        call: CallKey,
        caller: Caller,
        offer: Offer,
        /// The user part of the Request-URI (what was dialled).
        dialled: Option<String>,
    },
    /// A key from SIP INFO.
    Key { call: CallKey, key: char },
    /// The call is over from the other side.
    Ended { call: CallKey, why: EndReason },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The caller hung up (BYE).
    Bye,
    /// The caller gave up before the answer (CANCEL).
    Cancelled,
    /// The answer was never acknowledged.
    NoAck,
}

#[derive(Debug, Clone)]
pub struct UaConfig {
    /// `host:port` that meetd's Contact and Via name.
    pub contact: String,
    pub max_calls: usize,
    /// Digest credentials callers must give (realm, user, password); `None`: anyone may call.
    pub auth: Option<(String, String, String)>,
}

/// The retransmission state of one message.
#[derive(Debug)]
struct Resend {
    data: Vec<u8>,
    at: Instant,
    interval: Duration,
    give_up: Instant,
}

impl Resend {
    fn new(data: Vec<u8>, peer: Peer, now: Instant) -> Resend {
        Resend {
            data,
            // Over TCP nothing is sent again; the deadline still holds.
            at: if peer.transport == Transport::Udp {
                now + T1
            } else {
                now + GIVE_UP
            },
            interval: T1,
            give_up: now + GIVE_UP,
        }
    }
}

#[derive(Debug)]
enum State {
    /// INVITE taken, not answered yet; its last response (100 or final).
    Proceeding {
        last: Vec<u8>,
    },
    /// 200 sent, waiting for the ACK.
    Answered(Resend),
    Confirmed,
    /// BYE sent, waiting for its answer.
    Ending(Resend),
    /// Over: lingers to answer retransmissions.
    Done {
        until: Instant,
    },
}

#[derive(Debug)]
struct Call {
    key: CallKey,
    peer: Peer,
    invite: Request,
    invite_cseq: u32,
    local_tag: String,
    /// The 2xx sent (answers a retransmitted INVITE or a re-INVITE).
    ok: Option<Vec<u8>>,
    state: State,
    local_cseq: u32,
}

/// See the module docs.
pub struct Ua {
    cfg: UaConfig,
    rng: SmallRng,
    calls: HashMap<String, Call>,
    by_key: HashMap<CallKey, String>,
    next_key: CallKey,
    nonces: VecDeque<(String, Instant)>,
    out: VecDeque<(Peer, Vec<u8>)>,
    events: VecDeque<Event>,
    /// Messages that did not parse or lacked what a request needs.
    pub malformed: u64,
}

fn header_value(r: &Request, name: &str) -> Option<String> {
    r.headers.iter().find_map(|h| match h {
        Header::Other(n, v) if n.eq_ignore_ascii_case(name) => Some(v.clone()),
        _ => None,
    })
}

/// The URI inside a name-addr (`"x" <sip:a@b>;tag=1` → `sip:a@b`).
fn addr_spec(v: &str) -> &str {
    match (v.find('<'), v.find('>')) {
        (Some(a), Some(b)) if a < b => &v[a + 1..b],
        _ => v.split(';').next().unwrap_or(v).trim(),
    }
}

fn has_tag(v: &str) -> bool {
    let lower = v.to_ascii_lowercase();
    // A tag parameter sits after the URI (after '>' when there is one).
    let after = lower.rfind('>').map_or(lower.as_str(), |i| &lower[i..]);
    after.contains(";tag=")
}

/// The caller's number from an INVITE, `None` when hidden.
fn caller_of(r: &Request) -> Caller {
    let privacy = header_value(r, "Privacy").is_some_and(|p| {
        p.split([';', ','])
            .any(|t| matches!(t.trim(), "id" | "header" | "user"))
    });
    let from = r.from_header().ok().map(|f| f.value().to_string());
    let user = from.as_deref().map(addr_spec).and_then(|u| {
        let rest = u.split_once(':').map_or(u, |(_, r)| r);
        rest.split_once('@').map(|(user, _)| user.to_string())
    });
    let hidden = privacy
        || user
            .as_deref()
            .is_none_or(|u| u.is_empty() || u.eq_ignore_ascii_case("anonymous"));
    Caller {
        number: if hidden { None } else { user },
    }
}

impl Ua {
    pub fn new(cfg: UaConfig, seed: u64) -> Ua {
        Ua {
            cfg,
            rng: SmallRng::seed_from_u64(seed),
            calls: HashMap::new(),
            by_key: HashMap::new(),
            next_key: 1,
            nonces: VecDeque::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            malformed: 0,
        }
    }

    /// Calls that are not over yet.
    pub fn active(&self) -> usize {
        self.calls
            .values()
            .filter(|c| !matches!(c.state, State::Done { .. }))
            .count()
    }

    pub fn poll_transmit(&mut self) -> Option<(Peer, Vec<u8>)> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Ua::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.calls
            .values()
            .filter_map(|c| match &c.state {
                State::Answered(r) | State::Ending(r) => Some(r.at.min(r.give_up)),
                State::Done { until } => Some(*until),
                _ => None,
            })
            .min()
    }

    fn token(&mut self) -> String {
        format!("{:016x}", self.rng.random::<u64>())
    }

    /// One message from `peer` (a datagram, or one framed off a TCP stream).
    pub fn handle(&mut self, now: Instant, peer: Peer, data: &[u8]) {
        if data.iter().all(|b| b.is_ascii_whitespace()) {
            // A keep-alive (RFC 5626 CRLF).
            return;
        }
        match SipMessage::try_from(data) {
            Ok(SipMessage::Request(r)) => self.request(now, peer, r),
            Ok(SipMessage::Response(r)) => self.response(now, r),
            Err(e) => {
                self.malformed += 1;
                tracing::debug!(error = %e, "SIP: unparsable message dropped");
            }
        }
    }

    fn request(&mut self, now: Instant, peer: Peer, r: Request) {
        let (Ok(call_id), Ok(cseq), Ok(_), Ok(to)) = (
            r.call_id_header().map(|c| c.value().to_string()),
            r.cseq_header().and_then(|c| c.typed()),
            r.from_header(),
            r.to_header().map(|t| t.value().to_string()),
        ) else {
            self.malformed += 1;
            tracing::debug!(method = %r.method, "SIP: request without Call-ID, CSeq, From or To");
            if r.method != Method::Ack && r.via_header().is_ok() {
                let resp = self.response_to(&r, 400, "Bad Request", None, &[], None);
                self.out.push_back((peer, resp));
            }
            return;
        };
        match r.method {
            Method::Invite => self.invite(now, peer, r, call_id, cseq.seq, &to),
            Method::Ack => {
                if let Some(c) = self.calls.get_mut(&call_id)
                    && matches!(c.state, State::Answered(_))
                {
                    c.state = State::Confirmed;
                }
            }
            Method::Bye => match self.calls.get(&call_id).map(|c| c.key) {
                Some(key) if !self.is_done(&call_id) => {
                    let tag = self.calls.get(&call_id).map(|c| c.local_tag.clone());
                    let resp = self.response_to(&r, 200, "OK", tag.as_deref(), &[], None);
                    self.out.push_back((peer, resp));
                    self.finish(&call_id, now);
                    self.events.push_back(Event::Ended {
                        call: key,
                        why: EndReason::Bye,
                    });
                }
                Some(_) => {
                    // A retransmitted BYE of a call already over.
                    let resp = self.response_to(&r, 200, "OK", None, &[], None);
                    self.out.push_back((peer, resp));
                }
                None => self.no_such_call(peer, &r),
            },
            Method::Cancel => {
                let proceeding = self
                    .calls
                    .get(&call_id)
                    .filter(|c| {
                        matches!(c.state, State::Proceeding { .. }) && c.invite_cseq == cseq.seq
                    })
                    .map(|c| (c.key, c.invite.clone(), c.local_tag.clone()));
                let code = if self.calls.contains_key(&call_id) {
                    (200, "OK")
                } else {
                    (481, "Call/Transaction Does Not Exist")
                };
                let resp = self.response_to(&r, code.0, code.1, None, &[], None);
                self.out.push_back((peer, resp));
                if let Some((key, invite, tag)) = proceeding {
                    let t =
                        self.response_to(&invite, 487, "Request Terminated", Some(&tag), &[], None);
                    self.out.push_back((peer, t));
                    self.finish(&call_id, now);
                    self.events.push_back(Event::Ended {
                        call: key,
                        why: EndReason::Cancelled,
                    });
                }
            }
            Method::Info => {
                let Some(key) = self.calls.get(&call_id).map(|c| c.key) else {
                    self.no_such_call(peer, &r);
                    return;
                };
                let resp = self.response_to(&r, 200, "OK", None, &[], None);
                self.out.push_back((peer, resp));
                let ct = r
                    .headers
                    .iter()
                    .find_map(|h| match h {
                        Header::ContentType(c) => Some(c.value().to_string()),
                        _ => None,
                    })
                    .unwrap_or_default();
                if let Some(key_pressed) = info_key(&ct, &String::from_utf8_lossy(&r.body)) {
                    self.events.push_back(Event::Key {
                        call: key,
                        key: key_pressed,
                    });
                }
            }
            Method::Options => {
                let extra = [format!("Allow: {ALLOW}"), "Accept: application/sdp".into()];
                let resp = self.response_to(&r, 200, "OK", None, &extra, None);
                self.out.push_back((peer, resp));
            }
            Method::Update => {
                let resp = self.response_to(&r, 200, "OK", None, &[], None);
                self.out.push_back((peer, resp));
            }
            Method::Register | Method::Subscribe | Method::Publish | Method::Message => {
                let extra = [format!("Allow: {ALLOW}")];
                let resp = self.response_to(&r, 405, "Method Not Allowed", None, &extra, None);
                self.out.push_back((peer, resp));
            }
            _ => {
                let resp = self.response_to(&r, 501, "Not Implemented", None, &[], None);
                self.out.push_back((peer, resp));
            }
        }
    }

    /// 481: a request within a dialog meetd does not have.
    fn no_such_call(&mut self, peer: Peer, r: &Request) {
        let resp = self.response_to(r, 481, "Call/Transaction Does Not Exist", None, &[], None);
        self.out.push_back((peer, resp));
    }

    fn is_done(&self, call_id: &str) -> bool {
        self.calls
            .get(call_id)
            .is_some_and(|c| matches!(c.state, State::Done { .. }))
    }

    fn invite(
        &mut self,
        now: Instant,
        peer: Peer,
        r: Request,
        call_id: String,
        seq: u32,
        to: &str,
    ) {
        if let Some(c) = self.calls.get_mut(&call_id) {
            // A retransmission: the last answer again. A re-INVITE (a new CSeq) in a
            // confirmed call: the same session again (meetd changes nothing mid-call).
            let again = match &c.state {
                State::Proceeding { last } if c.invite_cseq == seq => Some(last.clone()),
                State::Answered(_) if c.invite_cseq == seq => c.ok.clone(),
                _ => None,
            };
            if let Some(m) = again {
                self.out.push_back((peer, m));
                return;
            }
            if matches!(c.state, State::Confirmed) && seq > c.invite_cseq {
                let sdp =
                    c.ok.as_ref()
                        .and_then(|ok| SipMessage::try_from(ok.as_slice()).ok())
                        .map(|m| m.body().clone())
                        .unwrap_or_default();
                let tag = c.local_tag.clone();
                let contact = format!("Contact: <sip:meetd@{}>", self.cfg.contact);
                let resp = self.response_to(
                    &r,
                    200,
                    "OK",
                    Some(&tag),
                    &[contact],
                    Some(("application/sdp", &sdp)),
                );
                self.out.push_back((peer, resp));
                return;
            }
            let resp = self.response_to(&r, 491, "Request Pending", None, &[], None);
            self.out.push_back((peer, resp));
            return;
        }
        if has_tag(to) {
            self.no_such_call(peer, &r);
            return;
        }
        if self.active() >= self.cfg.max_calls {
            tracing::warn!(
                max = self.cfg.max_calls,
                "SIP: call refused, [sip] max_calls reached"
            );
            let resp = self.response_to(&r, 486, "Busy Here", None, &[], None);
            self.out.push_back((peer, resp));
            return;
        }
        if !self.authorized(&r, now) {
            let nonce = self.token();
            if self.nonces.len() >= MAX_NONCES {
                self.nonces.pop_front();
            }
            self.nonces.push_back((nonce.clone(), now));
            let realm = self
                .cfg
                .auth
                .as_ref()
                .map(|a| a.0.clone())
                .unwrap_or_default();
            let challenge = format!(
                "WWW-Authenticate: Digest realm=\"{realm}\", nonce=\"{nonce}\", algorithm=MD5"
            );
            let tag = self.token();
            let resp = self.response_to(&r, 401, "Unauthorized", Some(&tag), &[challenge], None);
            self.out.push_back((peer, resp));
            return;
        }
        let offer = match sdp::parse_offer(&String::from_utf8_lossy(&r.body)) {
            Ok(o) => o,
            Err(e) => {
                tracing::info!(error = %e, "SIP: call refused, its offer does not suit");
                let tag = self.token();
                let resp = self.response_to(&r, 488, "Not Acceptable Here", Some(&tag), &[], None);
                self.out.push_back((peer, resp));
                return;
            }
        };
        let key = self.next_key;
        self.next_key += 1;
        let local_tag = self.token();
        let trying = self.response_to(&r, 100, "Trying", None, &[], None);
        self.out.push_back((peer, trying.clone()));
        let caller = caller_of(&r);
        let dialled = r.uri.user().map(str::to_string);
        self.calls.insert(
            call_id.clone(),
            Call {
                key,
                peer,
                invite: r,
                invite_cseq: seq,
                local_tag,
                ok: None,
                state: State::Proceeding { last: trying },
                local_cseq: 1,
            },
        );
        self.by_key.insert(key, call_id);
        self.events.push_back(Event::Incoming {
            call: key,
            caller,
            offer,
            dialled,
        });
    }

    fn authorized(&mut self, r: &Request, now: Instant) -> bool {
        let Some((realm, user, password)) = self.cfg.auth.clone() else {
            return true;
        };
        self.nonces
            .retain(|(_, t)| now.saturating_duration_since(*t) < NONCE_LIFE);
        let Some(auth) = r.headers.iter().find_map(|h| match h {
            Header::Authorization(a) => a.typed().ok(),
            _ => None,
        }) else {
            return false;
        };
        if auth.username != user
            || auth.realm != realm
            || !self.nonces.iter().any(|(n, _)| *n == auth.nonce)
        {
            return false;
        }
        let ok = rsip::services::DigestGenerator::from(&auth, &password, &Method::Invite)
            .verify(&auth.response);
        if !ok {
            tracing::info!("SIP: call refused, wrong digest credentials");
        }
        ok
    }

    fn response(&mut self, now: Instant, r: rsip::Response) {
        let Ok(call_id) = r.call_id_header().map(|c| c.value().to_string()) else {
            self.malformed += 1;
            return;
        };
        let is_bye = r
            .cseq_header()
            .and_then(|c| c.typed())
            .is_ok_and(|c| c.method == Method::Bye);
        if is_bye
            && u16::from(r.status_code.clone()) >= 200
            && self
                .calls
                .get(&call_id)
                .is_some_and(|c| matches!(c.state, State::Ending(_)))
        {
            self.finish(&call_id, now);
        }
    }

    fn finish(&mut self, call_id: &str, now: Instant) {
        if let Some(c) = self.calls.get_mut(call_id) {
            c.state = State::Done {
                until: now + LINGER,
            };
        }
    }

    /// Answer `call` with the session description `sdp`.
    pub fn answer(&mut self, now: Instant, call: CallKey, sdp: &str) {
        let Some(id) = self.by_key.get(&call).cloned() else {
            return;
        };
        let Some(c) = self.calls.get(&id) else { return };
        if !matches!(c.state, State::Proceeding { .. }) {
            return;
        }
        let (invite, tag, peer) = (c.invite.clone(), c.local_tag.clone(), c.peer);
        let contact = format!(
            "Contact: <sip:meetd@{};transport={}>",
            self.cfg.contact,
            peer.transport.via().to_ascii_lowercase()
        );
        let extra = [contact, format!("Allow: {ALLOW}")];
        let ok = self.response_to(
            &invite,
            200,
            "OK",
            Some(&tag),
            &extra,
            Some(("application/sdp", sdp.as_bytes())),
        );
        self.out.push_back((peer, ok.clone()));
        if let Some(c) = self.calls.get_mut(&id) {
            c.ok = Some(ok.clone());
            c.state = State::Answered(Resend::new(ok, peer, now));
        }
    }

    /// End `call` from meetd's side: a final refusal before the answer, a BYE after it. No
    /// event follows.
    pub fn hangup(&mut self, now: Instant, call: CallKey) {
        let Some(id) = self.by_key.get(&call).cloned() else {
            return;
        };
        let Some(c) = self.calls.get(&id) else { return };
        match c.state {
            State::Proceeding { .. } => {
                let (invite, tag, peer) = (c.invite.clone(), c.local_tag.clone(), c.peer);
                let resp = self.response_to(
                    &invite,
                    480,
                    "Temporarily Unavailable",
                    Some(&tag),
                    &[],
                    None,
                );
                self.out.push_back((peer, resp));
                self.finish(&id, now);
            }
            State::Answered(_) | State::Confirmed => {
                let peer = c.peer;
                let bye = self.bye(&id);
                self.out.push_back((peer, bye.clone()));
                if let Some(c) = self.calls.get_mut(&id) {
                    c.state = State::Ending(Resend::new(bye, peer, now));
                }
            }
            State::Ending(_) | State::Done { .. } => {}
        }
    }

    /// Retransmissions and deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut ended = Vec::new();
        let mut gone = Vec::new();
        for (id, c) in &mut self.calls {
            match &mut c.state {
                State::Answered(r) | State::Ending(r) => {
                    if now >= r.give_up {
                        if matches!(c.state, State::Answered(_)) {
                            ended.push((id.clone(), c.key));
                        }
                        c.state = State::Done {
                            until: now + LINGER,
                        };
                        continue;
                    }
                    if now >= r.at {
                        self.out.push_back((c.peer, r.data.clone()));
                        r.interval = (r.interval * 2).min(T2);
                        r.at = now + r.interval;
                    }
                }
                State::Done { until } if now >= *until => gone.push((id.clone(), c.key)),
                _ => {}
            }
        }
        for (id, key) in ended {
            tracing::info!("SIP: the answer to a call was never acknowledged; hanging up");
            // Ended without an ACK: a BYE anyway, as RFC 3261 §13.3.1.4 asks.
            let bye = self.bye(&id);
            if let Some(c) = self.calls.get(&id) {
                self.out.push_back((c.peer, bye));
            }
            self.events.push_back(Event::Ended {
                call: key,
                why: EndReason::NoAck,
            });
        }
        for (id, key) in gone {
            self.calls.remove(&id);
            self.by_key.remove(&key);
        }
    }

    /// A BYE within the dialog of call `id`.
    fn bye(&mut self, id: &str) -> Vec<u8> {
        let branch = self.token();
        let contact = self.cfg.contact.clone();
        let Some(c) = self.calls.get_mut(id) else {
            return Vec::new();
        };
        c.local_cseq += 1;
        let inv = &c.invite;
        let target = inv
            .contact_header()
            .map(|h| addr_spec(h.value()).to_string())
            .unwrap_or_else(|_| inv.uri.to_string());
        let from = inv
            .from_header()
            .map(|h| h.value().to_string())
            .unwrap_or_default();
        let to = inv
            .to_header()
            .map(|h| h.value().to_string())
            .unwrap_or_default();
        let to = if has_tag(&to) {
            to
        } else {
            format!("{to};tag={}", c.local_tag)
        };
        let mut m = format!(
            "BYE {target} SIP/2.0\r\nVia: SIP/2.0/{} {contact};branch=z9hG4bK{branch};rport\r\nMax-Forwards: 70\r\nFrom: {to}\r\nTo: {from}\r\nCall-ID: {id}\r\nCSeq: {} BYE\r\n",
            c.peer.transport.via(),
            c.local_cseq
        );
        for h in inv.headers.iter() {
            if let Header::RecordRoute(rr) = h {
                m.push_str(&format!("Route: {}\r\n", rr.value()));
            }
        }
        m.push_str("User-Agent: meetd\r\nContent-Length: 0\r\n\r\n");
        m.into_bytes()
    }

    /// A response to `r`: its Via, From, To (with `to_tag` when it has none), Call-ID and
    /// CSeq, `extra` headers, and a body.
    fn response_to(
        &self,
        r: &Request,
        code: u16,
        reason: &str,
        to_tag: Option<&str>,
        extra: &[String],
        body: Option<(&str, &[u8])>,
    ) -> Vec<u8> {
        let mut m = format!("SIP/2.0 {code} {reason}\r\n");
        for h in r.headers.iter() {
            match h {
                Header::Via(_) | Header::From(_) | Header::CallId(_) | Header::CSeq(_) => {
                    m.push_str(&format!("{h}\r\n"));
                }
                Header::To(t) => {
                    let v = t.value();
                    match to_tag {
                        Some(tag) if !has_tag(v) => m.push_str(&format!("To: {v};tag={tag}\r\n")),
                        _ => m.push_str(&format!("To: {v}\r\n")),
                    }
                }
                _ => {}
            }
        }
        for e in extra {
            m.push_str(e);
            m.push_str("\r\n");
        }
        m.push_str("User-Agent: meetd\r\n");
        let mut out = match body {
            Some((ct, b)) => {
                m.push_str(&format!(
                    "Content-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
                    b.len()
                ));
                let mut v = m.into_bytes();
                v.extend_from_slice(b);
                v
            }
            None => {
                m.push_str("Content-Length: 0\r\n\r\n");
                m.into_bytes()
            }
        };
        out.shrink_to_fit();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: Peer = Peer {
        transport: Transport::Udp,
        addr: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5070),
    };
    const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";

    fn ua(auth: bool) -> Ua {
        Ua::new(
            UaConfig {
                contact: "127.0.0.1:5060".into(),
                max_calls: 2,
                auth: auth.then(|| ("meetd".into(), "trunk".into(), "secret".into())),
            },
            7,
        )
    }

    fn invite(call_id: &str, cseq: u32, from_user: &str, extra: &str, body: &str) -> Vec<u8> {
        format!(
            "INVITE sip:123456789@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{call_id}{cseq};rport\r\nMax-Forwards: 70\r\nFrom: \"Caller\" <sip:{from_user}@127.0.0.1>;tag=abc\r\nTo: <sip:123456789@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:{from_user}@127.0.0.1:5070>\r\n{extra}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn in_dialog(
        method: &str,
        call_id: &str,
        cseq: u32,
        to_tag: &str,
        extra: &str,
        body: &str,
    ) -> Vec<u8> {
        format!(
            "{method} sip:meetd@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{method}{cseq}\r\nFrom: <sip:+4930123456@127.0.0.1>;tag=abc\r\nTo: <sip:123456789@127.0.0.1>;tag={to_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn sent(u: &mut Ua) -> Vec<String> {
        std::iter::from_fn(|| u.poll_transmit())
            .map(|(_, d)| String::from_utf8_lossy(&d).into_owned())
            .collect()
    }

    fn first_line(m: &str) -> &str {
        m.lines().next().unwrap_or("")
    }

    fn tag_of(m: &str) -> String {
        let to = m.lines().find(|l| l.starts_with("To:")).unwrap();
        to.split(";tag=").nth(1).unwrap().trim().to_string()
    }

    #[test]
    fn a_call_is_answered_acknowledged_keyed_and_ended_by_the_caller() {
        let mut u = ua(false);
        let t0 = Instant::now();
        u.handle(t0, PEER, &invite("c1", 1, "+4930123456", "", SDP));
        assert_eq!(
            sent(&mut u)
                .iter()
                .map(|m| first_line(m).to_string())
                .collect::<Vec<_>>(),
            ["SIP/2.0 100 Trying"]
        );
        let Some(Event::Incoming {
            call,
            caller,
            offer,
            dialled,
        }) = u.poll_event()
        else {
            panic!("no call");
        };
        assert_eq!(caller.number.as_deref(), Some("+4930123456"));
        assert_eq!(dialled.as_deref(), Some("123456789"));
        assert_eq!(offer.events_pt, Some(101));
        u.answer(t0, call, "v=0\r\n");
        let ok = sent(&mut u);
        assert_eq!(first_line(&ok[0]), "SIP/2.0 200 OK");
        assert!(ok[0].contains("Content-Type: application/sdp") && ok[0].ends_with("v=0\r\n"));
        let tag = tag_of(&ok[0]);
        // Not acknowledged yet: the 200 again after T1, then after 2·T1.
        u.handle_timeout(t0 + T1);
        assert_eq!(sent(&mut u).len(), 1);
        u.handle_timeout(t0 + T1 + T1);
        assert!(sent(&mut u).is_empty());
        // A retransmitted INVITE gets the 200 again.
        u.handle(t0, PEER, &invite("c1", 1, "+4930123456", "", SDP));
        assert_eq!(first_line(&sent(&mut u)[0]), "SIP/2.0 200 OK");
        u.handle(t0, PEER, &in_dialog("ACK", "c1", 1, &tag, "", ""));
        u.handle_timeout(t0 + Duration::from_secs(10));
        assert!(sent(&mut u).is_empty(), "no retransmission after the ACK");
        u.handle(
            t0,
            PEER,
            &in_dialog(
                "INFO",
                "c1",
                2,
                &tag,
                "Content-Type: application/dtmf-relay\r\n",
                "Signal=5\r\nDuration=100\r\n",
            ),
        );
        assert_eq!(first_line(&sent(&mut u)[0]), "SIP/2.0 200 OK");
        assert_eq!(u.poll_event(), Some(Event::Key { call, key: '5' }));
        u.handle(t0, PEER, &in_dialog("BYE", "c1", 3, &tag, "", ""));
        assert_eq!(first_line(&sent(&mut u)[0]), "SIP/2.0 200 OK");
        assert_eq!(
            u.poll_event(),
            Some(Event::Ended {
                call,
                why: EndReason::Bye
            })
        );
        assert_eq!(u.active(), 0);
        u.handle_timeout(t0 + Duration::from_secs(60));
        assert!(u.calls.is_empty());
    }

    #[test]
    fn meetd_hangs_up_with_a_bye_in_the_dialog() {
        let mut u = ua(false);
        let t0 = Instant::now();
        u.handle(
            t0,
            PEER,
            &invite(
                "c2",
                5,
                "+4930123456",
                "Record-Route: <sip:proxy.example;lr>\r\n",
                SDP,
            ),
        );
        let Some(Event::Incoming { call, .. }) = u.poll_event() else {
            panic!()
        };
        u.answer(t0, call, "v=0\r\n");
        let ok = sent(&mut u).pop().unwrap();
        let tag = tag_of(&ok);
        u.handle(t0, PEER, &in_dialog("ACK", "c2", 5, &tag, "", ""));
        u.hangup(t0, call);
        let bye = sent(&mut u).pop().unwrap();
        assert!(
            bye.starts_with("BYE sip:+4930123456@127.0.0.1:5070 SIP/2.0\r\n"),
            "{bye}"
        );
        assert!(
            bye.contains(&format!(";tag={tag}"))
                && bye.contains("To: \"Caller\" <sip:+4930123456@127.0.0.1>;tag=abc")
        );
        assert!(bye.contains("Route: <sip:proxy.example;lr>"));
        assert!(bye.contains("CSeq: 2 BYE"));
        // Resent until answered.
        u.handle_timeout(t0 + T1);
        assert_eq!(sent(&mut u).len(), 1);
        let answer = format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=x\r\nFrom: <sip:a@b>;tag={tag}\r\nTo: <sip:c@d>;tag=abc\r\nCall-ID: c2\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        );
        u.handle(t0, PEER, answer.as_bytes());
        u.handle_timeout(t0 + Duration::from_secs(5));
        assert!(sent(&mut u).is_empty());
        assert_eq!(u.active(), 0);
    }

    #[test]
    fn cancel_before_the_answer_and_an_answer_never_acknowledged() {
        let mut u = ua(false);
        let t0 = Instant::now();
        u.handle(t0, PEER, &invite("c3", 1, "anonymous", "", SDP));
        let Some(Event::Incoming { call, caller, .. }) = u.poll_event() else {
            panic!()
        };
        assert_eq!(caller.number, None);
        sent(&mut u);
        let cancel = "CANCEL sip:123456789@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKc31\r\nFrom: \"Caller\" <sip:anonymous@127.0.0.1>;tag=abc\r\nTo: <sip:123456789@127.0.0.1>\r\nCall-ID: c3\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n";
        u.handle(t0, PEER, cancel.as_bytes());
        let lines: Vec<String> = sent(&mut u)
            .iter()
            .map(|m| first_line(m).to_string())
            .collect();
        assert_eq!(lines, ["SIP/2.0 200 OK", "SIP/2.0 487 Request Terminated"]);
        assert_eq!(
            u.poll_event(),
            Some(Event::Ended {
                call,
                why: EndReason::Cancelled
            })
        );

        u.handle(
            t0,
            PEER,
            &invite("c4", 1, "+4930123456", "Privacy: id\r\n", SDP),
        );
        let Some(Event::Incoming { call, caller, .. }) = u.poll_event() else {
            panic!()
        };
        assert_eq!(caller.number, None, "Privacy: id hides the number");
        u.answer(t0, call, "v=0\r\n");
        u.handle_timeout(t0 + GIVE_UP);
        let last = sent(&mut u).pop().unwrap();
        assert!(last.starts_with("BYE "));
        assert_eq!(
            u.poll_event(),
            Some(Event::Ended {
                call,
                why: EndReason::NoAck
            })
        );
    }

    #[test]
    fn refusals_busy_bad_offers_unknown_dialogs_and_methods() {
        let mut u = ua(false);
        let t0 = Instant::now();
        u.handle(t0, PEER, &invite("a", 1, "1", "", SDP));
        u.handle(t0, PEER, &invite("b", 1, "2", "", SDP));
        sent(&mut u);
        u.handle(t0, PEER, &invite("c", 1, "3", "", SDP));
        assert_eq!(first_line(&sent(&mut u)[0]), "SIP/2.0 486 Busy Here");
        let mut u = ua(false);
        u.handle(
            t0,
            PEER,
            &invite(
                "d",
                1,
                "1",
                "",
                "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 9 RTP/AVP 18\r\n",
            ),
        );
        assert_eq!(
            first_line(&sent(&mut u)[0]),
            "SIP/2.0 488 Not Acceptable Here"
        );
        u.handle(t0, PEER, &in_dialog("BYE", "nope", 1, "x", "", ""));
        assert_eq!(
            first_line(&sent(&mut u)[0]),
            "SIP/2.0 481 Call/Transaction Does Not Exist"
        );
        u.handle(t0, PEER, &in_dialog("OPTIONS", "o", 1, "x", "", ""));
        let o = sent(&mut u).pop().unwrap();
        assert!(o.starts_with("SIP/2.0 200 OK") && o.contains("Allow: INVITE"));
        u.handle(t0, PEER, &in_dialog("REFER", "o", 2, "x", "", ""));
        assert_eq!(first_line(&sent(&mut u)[0]), "SIP/2.0 501 Not Implemented");
        u.handle(t0, PEER, b"\r\n\r\n");
        u.handle(t0, PEER, b"GARBAGE \x00\xff");
        u.handle(t0, PEER, b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\n");
        let bad = sent(&mut u);
        assert!(
            bad.iter()
                .all(|m| first_line(m) == "SIP/2.0 400 Bad Request"),
            "{bad:?}"
        );
        assert!(u.malformed >= 2);
        assert!(u.poll_event().is_none());
    }

    #[test]
    fn digest_authentication_when_configured() {
        let mut u = ua(true);
        let t0 = Instant::now();
        u.handle(t0, PEER, &invite("e", 1, "1", "", SDP));
        let challenge = sent(&mut u).pop().unwrap();
        assert!(challenge.starts_with("SIP/2.0 401 Unauthorized"));
        let nonce = challenge
            .split("nonce=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_string();
        let uri: rsip::Uri = rsip::Uri::try_from("sip:123456789@127.0.0.1:5060").unwrap();
        let digest = |password: &str| {
            rsip::services::DigestGenerator {
                username: "trunk",
                password,
                nonce: &nonce,
                uri: &uri,
                realm: "meetd",
                method: &Method::Invite,
                qop: None,
                algorithm: rsip::headers::auth::Algorithm::Md5,
            }
            .compute()
        };
        let auth = |resp: String| {
            format!(
                "Authorization: Digest username=\"trunk\", realm=\"meetd\", nonce=\"{nonce}\", uri=\"sip:123456789@127.0.0.1:5060\", response=\"{resp}\", algorithm=MD5\r\n"
            )
        };
        u.handle(t0, PEER, &invite("e", 2, "1", &auth(digest("wrong")), SDP));
        assert!(first_line(&sent(&mut u)[0]).starts_with("SIP/2.0 401"));
        assert!(u.poll_event().is_none());
        u.handle(t0, PEER, &invite("e", 3, "1", &auth(digest("secret")), SDP));
        assert_eq!(first_line(&sent(&mut u)[0]), "SIP/2.0 100 Trying");
        assert!(matches!(u.poll_event(), Some(Event::Incoming { .. })));
    }

    /// Bad input never panics: mutations of every message the tests use (bytes flipped,
    /// cut short, lines doubled) go through the user agent, seeded, with its timers run.
    #[test]
    fn mangled_messages_never_panic() {
        let mut rng = SmallRng::seed_from_u64(16);
        let seeds: Vec<Vec<u8>> = vec![
            invite("m", 1, "+4930123456", "Record-Route: <sip:p;lr>\r\nPrivacy: id\r\n", SDP),
            in_dialog("BYE", "m", 2, "t", "", ""),
            in_dialog("INFO", "m", 3, "t", "Content-Type: application/dtmf-relay\r\n", "Signal=5\r\n"),
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=x\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: m\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ];
        let mut u = ua(true);
        let t0 = Instant::now();
        for i in 0..20_000u32 {
            let mut m = seeds[rng.random_range(0..seeds.len())].clone();
            match rng.random_range(0..4) {
                0 => {
                    for _ in 0..rng.random_range(1..8) {
                        let at = rng.random_range(0..m.len());
                        m[at] = rng.random();
                    }
                }
                1 => m.truncate(rng.random_range(0..m.len())),
                2 => {
                    let at = rng.random_range(0..m.len());
                    let piece = m[at..(at + 40).min(m.len())].to_vec();
                    m.splice(at..at, piece);
                }
                _ => {
                    let at = rng.random_range(0..m.len());
                    m.insert(at, b':');
                }
            }
            u.handle(t0 + Duration::from_millis(u64::from(i)), PEER, &m);
            while u.poll_transmit().is_some() {}
            while let Some(ev) = u.poll_event() {
                if let Event::Incoming { call, .. } = ev {
                    u.answer(t0, call, "v=0\r\n");
                    u.hangup(t0, call);
                }
            }
            u.handle_timeout(t0 + Duration::from_millis(u64::from(i) * 10));
        }
    }
}
