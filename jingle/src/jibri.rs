//! Recording and live streaming through Jibri (docs/jibri.md), the focus's side, sans-IO.
//!
//! * [`Pool`]: the Jibri instances in the brewery room, from their `jibri-status` presence
//!   (idle or busy, healthy or not), and which one to hand the next session.
//! * [`Recorder`]: one conference's recording or live-streaming session: a moderator's
//!   `jibri` IQ starts or stops it; the focus hands it to a Jibri (retrying others when one
//!   fails), follows the Jibri's status and tells the room through the focus's presence
//!   (`jibri-recording-status`).
//!
//! The glue (`focus.rs`) joins the brewery, sends the IQs and awaits their answers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meetd_xmpp::Element;
use meetd_xmpp::stanza::{self, StanzaError, el};

pub const NS_JIBRI: &str = "http://jitsi.org/protocol/jibri";
const NS_HEALTH: &str = "http://jitsi.org/protocol/health";

pub const FORBIDDEN: StanzaError = StanzaError::FORBIDDEN;
pub const UNEXPECTED_REQUEST: StanzaError = StanzaError {
    kind: "wait",
    condition: "unexpected-request",
};
pub const INTERNAL_SERVER_ERROR: StanzaError = StanzaError {
    kind: "cancel",
    condition: "internal-server-error",
};

/// A Jibri picked this recently is not picked again (its busy presence may not be here yet).
const RESELECT_AFTER: Duration = Duration::from_millis(200);
/// A Jibri that failed is not picked for this long.
const FAILED_BACKOFF: Duration = Duration::from_secs(60);

/// File recording or live streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    File,
    Stream,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::File => "file",
            Mode::Stream => "stream",
        }
    }

    /// The token feature (`context.features`) that allows it.
    pub fn feature(self) -> &'static str {
        match self {
            Mode::File => "recording",
            Mode::Stream => "livestreaming",
        }
    }
}

/// A session to start on a Jibri.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    pub session_id: String,
    /// The conference room's bare JID.
    pub room: String,
    pub mode: Mode,
    pub streamid: Option<String>,
    pub broadcast: Option<String>,
    pub app_data: Option<String>,
    pub displayname: Option<String>,
    /// Jibris that failed this session already.
    pub tried: Vec<String>,
}

impl StartRequest {
    /// The `<jibri action='start'>` payload for the Jibri.
    pub fn payload(&self) -> Element {
        let mut e = el(
            "jibri",
            NS_JIBRI,
            &[
                ("action", "start"),
                ("recording_mode", self.mode.as_str()),
                ("room", &self.room),
                ("session_id", &self.session_id),
            ],
        );
        for (k, v) in [
            ("streamid", &self.streamid),
            ("you_tube_broadcast_id", &self.broadcast),
            ("app_data", &self.app_data),
            ("displayname", &self.displayname),
        ] {
            if let Some(v) = v {
                stanza::set_attr(&mut e, k, v);
            }
        }
        e
    }
}

/// The `<jibri action='stop'>` payload for a Jibri.
pub fn stop_payload(session_id: &str) -> Element {
    el(
        "jibri",
        NS_JIBRI,
        &[("action", "stop"), ("session_id", session_id)],
    )
}

/// A status from a Jibri (its answer to a start, or a later IQ).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// `on`, `off` or `pending`.
    pub status: Option<String>,
    /// `busy` or `error`.
    pub failure: Option<String>,
    pub should_retry: bool,
}

/// Read the `<jibri>` payload of an IQ from a Jibri; `None` without one.
pub fn parse_status(iq: &Element) -> Option<Status> {
    let j = iq.get_child("jibri", NS_JIBRI)?;
    let attr = |k: &str| {
        j.attr(k)
            .filter(|v| !v.is_empty())
            .map(|v| v.to_ascii_lowercase())
    };
    Some(Status {
        status: attr("status"),
        failure: attr("failure_reason"),
        should_retry: attr("should_retry").as_deref() == Some("true"),
    })
}

/// Why no Jibri was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoJibri {
    /// Jibris are there, none idle and healthy.
    Busy,
    /// No Jibri in the brewery.
    Unavailable,
}

impl NoJibri {
    /// What the moderator's start request is answered with.
    pub fn error(self) -> (StanzaError, &'static str) {
        match self {
            NoJibri::Busy => (StanzaError::RESOURCE_CONSTRAINT, "all Jibris are busy"),
            NoJibri::Unavailable => (StanzaError::SERVICE_UNAVAILABLE, "no Jibris available"),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Instance {
    available: bool,
    selected_at: Option<Instant>,
    failed_at: Option<Instant>,
}

/// The Jibris in the brewery, by occupant JID.
#[derive(Debug, Default)]
pub struct Pool {
    instances: BTreeMap<String, Instance>,
}

impl Pool {
    /// A presence in the brewery from `occupant`. Returns true when a Jibri left.
    pub fn presence(&mut self, occupant: &str, p: &Element) -> bool {
        if p.attr("type") == Some("unavailable") {
            return self.instances.remove(occupant).is_some();
        }
        let Some(s) = p.get_child("jibri-status", NS_JIBRI) else {
            return false;
        };
        let idle = s
            .get_child("busy-status", NS_JIBRI)
            .and_then(|b| b.attr("status"))
            .is_some_and(|v| v.eq_ignore_ascii_case("idle"));
        let healthy = s
            .get_child("health-status", NS_HEALTH)
            .and_then(|h| h.attr("status"))
            .is_none_or(|v| v.eq_ignore_ascii_case("healthy"));
        let i = self.instances.entry(occupant.to_string()).or_default();
        i.available = idle && healthy;
        if i.available {
            i.failed_at = None;
        }
        false
    }

    pub fn len(&self) -> usize {
        self.instances.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// Pick an idle, healthy Jibri (not one in `exclude`): the one that failed longest ago.
    pub fn select(&mut self, now: Instant, exclude: &[String]) -> Result<String, NoJibri> {
        if self.instances.is_empty() {
            return Err(NoJibri::Unavailable);
        }
        let pick = self
            .instances
            .iter()
            .filter(|(jid, i)| {
                i.available
                    && !exclude.contains(jid)
                    && i.selected_at
                        .is_none_or(|t| now.saturating_duration_since(t) >= RESELECT_AFTER)
                    && i.failed_at
                        .is_none_or(|t| now.saturating_duration_since(t) >= FAILED_BACKOFF)
            })
            .min_by_key(|(_, i)| i.failed_at)
            .map(|(jid, _)| jid.clone())
            .ok_or(NoJibri::Busy)?;
        if let Some(i) = self.instances.get_mut(&pick) {
            i.selected_at = Some(now);
        }
        Ok(pick)
    }

    /// `occupant` failed a session.
    pub fn failed(&mut self, occupant: &str, now: Instant) {
        if let Some(i) = self.instances.get_mut(occupant) {
            i.failed_at = Some(now);
        }
    }
}

/// Limits of the focus's Jibri handling (`[jibri]`).
#[derive(Debug, Clone, Copy)]
pub struct RecorderConfig {
    /// A session still pending after this is stopped (the room sees it off, with an error).
    pub pending_timeout: Duration,
    /// Other Jibris tried for one session after the first fails.
    pub retries: usize,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            pending_timeout: Duration::from_secs(90),
            retries: 5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Handed to a Jibri; waiting for its `pending`.
    Starting,
    Pending,
    On,
}

#[derive(Debug)]
struct Session {
    req: StartRequest,
    /// The requester's occupant JID.
    initiator: String,
    jibri: Option<String>,
    state: State,
    /// The moderator's start IQ, answered once a Jibri took the session.
    client_iq: Option<Element>,
    retries_left: usize,
    pending_deadline: Option<Instant>,
}

/// What the conference does for the recorder.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Answer the requester (routed from the focus).
    Reply(Element),
    /// Hand the session to a Jibri.
    Start(StartRequest),
    /// Tell a Jibri to stop.
    Stop { jibri: String, session_id: String },
    /// Put this `jibri-recording-status` in the focus's presence.
    Publish(Element),
}

/// One conference's recording / live-streaming session (one at a time, as Jicofo).
#[derive(Debug, Default)]
pub struct Recorder {
    cfg: RecorderConfig,
    session: Option<Session>,
}

impl Recorder {
    pub fn new(cfg: RecorderConfig) -> Recorder {
        Recorder { cfg, session: None }
    }

    /// When [`Recorder::timeout`] is due.
    pub fn deadline(&self) -> Option<Instant> {
        self.session.as_ref().and_then(|s| s.pending_deadline)
    }

    /// Whether `jibri` runs this conference's session.
    pub fn has_jibri(&self, jibri: &str) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.jibri.as_deref() == Some(jibri))
    }

    /// The session `jibri` runs, once it is on: its id and mode.
    pub fn on_with(&self, jibri: &str) -> Option<(&str, Mode)> {
        self.session
            .as_ref()
            .filter(|s| s.jibri.as_deref() == Some(jibri) && s.state == State::On)
            .map(|s| (s.req.session_id.as_str(), s.req.mode))
    }

    /// A participant's `jibri` IQ. `moderator`: `None` when the sender is not in the room.
    /// `session_id` makes the id of a new session.
    pub fn request(
        &mut self,
        iq: &Element,
        from: &str,
        moderator: Option<bool>,
        room: &str,
        session_id: impl FnOnce() -> String,
    ) -> Vec<Action> {
        let err = |e: StanzaError, text: &str| {
            stanza::error_reply(iq, e, Some(text))
                .map(Action::Reply)
                .into_iter()
                .collect::<Vec<_>>()
        };
        let Some(j) = iq.get_child("jibri", NS_JIBRI) else {
            return err(StanzaError::BAD_REQUEST, "no jibri element");
        };
        if j.attr("sipaddress").is_some_and(|s| !s.is_empty()) {
            return err(
                StanzaError::FEATURE_NOT_IMPLEMENTED,
                "SIP gateway sessions are not supported",
            );
        }
        match moderator {
            None => return err(FORBIDDEN, "not in the room"),
            Some(false) => return err(StanzaError::NOT_ALLOWED, "only moderators may do this"),
            Some(true) => {}
        }
        let attr = |k: &str| j.attr(k).filter(|v| !v.is_empty()).map(str::to_string);
        match attr("action").as_deref() {
            Some("start") => {}
            Some("stop") => {
                let Some(s) = self.session.take() else {
                    return err(StanzaError::ITEM_NOT_FOUND, "Unknown session");
                };
                let mut out = vec![Action::Reply(stanza::iq_result(iq, None))];
                if let Some(jibri) = &s.jibri {
                    out.push(Action::Stop {
                        jibri: jibri.clone(),
                        session_id: s.req.session_id.clone(),
                    });
                }
                if let Some(c) = &s.client_iq
                    && let Some(e) = stanza::error_reply(c, INTERNAL_SERVER_ERROR, Some("stopped"))
                {
                    out.push(Action::Reply(e));
                }
                out.push(Action::Publish(status_element(
                    "off",
                    &s.req,
                    Some(from),
                    None,
                )));
                return out;
            }
            _ => return err(StanzaError::BAD_REQUEST, "undefined action"),
        }
        if self.session.is_some() {
            return err(
                UNEXPECTED_REQUEST,
                "Recording or live streaming is already enabled",
            );
        }
        let streamid = attr("streamid");
        let mode = match (attr("recording_mode").as_deref(), &streamid) {
            (Some("file"), Some(_)) => {
                return err(
                    StanzaError::BAD_REQUEST,
                    "Stream ID is provided for a FILE recording.",
                );
            }
            (Some("file"), None) => Mode::File,
            (_, Some(_)) => Mode::Stream,
            (_, None) => {
                return err(StanzaError::BAD_REQUEST, "Stream ID is empty or undefined");
            }
        };
        let req = StartRequest {
            session_id: session_id(),
            room: room.to_string(),
            mode,
            streamid,
            broadcast: attr("you_tube_broadcast_id"),
            app_data: attr("app_data"),
            displayname: attr("displayname"),
            tried: Vec::new(),
        };
        self.session = Some(Session {
            req: req.clone(),
            initiator: from.to_string(),
            jibri: None,
            state: State::Starting,
            client_iq: Some(iq.clone()),
            retries_left: self.cfg.retries,
            pending_deadline: None,
        });
        vec![Action::Start(req)]
    }

    /// The outcome of handing session `session_id` to a Jibri: the Jibri that said
    /// `pending`, or why none did.
    pub fn started(
        &mut self,
        session_id: &str,
        result: Result<String, (StanzaError, String)>,
        now: Instant,
    ) -> Vec<Action> {
        let Some(s) = self
            .session
            .as_mut()
            .filter(|s| s.req.session_id == session_id && s.state == State::Starting)
        else {
            // Stopped meanwhile: a Jibri that took it must stop again.
            return match result {
                Ok(jibri) => vec![Action::Stop {
                    jibri,
                    session_id: session_id.to_string(),
                }],
                Err(_) => Vec::new(),
            };
        };
        match result {
            Ok(jibri) => {
                s.jibri = Some(jibri);
                s.state = State::Pending;
                s.pending_deadline = Some(now + self.cfg.pending_timeout);
                let mut out = Vec::new();
                if let Some(iq) = s.client_iq.take() {
                    let payload = el("jibri", NS_JIBRI, &[("session_id", &s.req.session_id)]);
                    out.push(Action::Reply(stanza::iq_result(&iq, Some(payload))));
                }
                out
            }
            Err((e, text)) => {
                let Some(s) = self.session.take() else {
                    return Vec::new();
                };
                match s.client_iq {
                    // The first start: the requester learns why.
                    Some(iq) => stanza::error_reply(&iq, e, Some(&text))
                        .map(Action::Reply)
                        .into_iter()
                        .collect(),
                    // A retry after the session was accepted: the room sees it end.
                    None => vec![Action::Publish(status_element(
                        "off",
                        &s.req,
                        None,
                        Some("error"),
                    ))],
                }
            }
        }
    }

    /// A status IQ from `jibri`.
    pub fn status(&mut self, jibri: &str, st: &Status) -> Vec<Action> {
        let Some(s) = self
            .session
            .as_mut()
            .filter(|s| s.jibri.as_deref() == Some(jibri))
        else {
            return Vec::new();
        };
        match st.status.as_deref() {
            Some("pending") => Vec::new(),
            Some("on") => {
                s.pending_deadline = None;
                if s.state == State::On {
                    return Vec::new();
                }
                s.state = State::On;
                vec![Action::Publish(status_element(
                    "on",
                    &s.req,
                    Some(&s.initiator),
                    None,
                ))]
            }
            Some("off") => {
                s.pending_deadline = None;
                if st.failure.is_some() && st.should_retry && s.retries_left > 0 {
                    // Another Jibri takes over; the room is not told.
                    s.retries_left -= 1;
                    s.req.tried.push(jibri.to_string());
                    s.jibri = None;
                    s.state = State::Starting;
                    return vec![Action::Start(s.req.clone())];
                }
                let Some(s) = self.session.take() else {
                    return Vec::new();
                };
                vec![Action::Publish(status_element(
                    "off",
                    &s.req,
                    None,
                    st.failure.as_deref(),
                ))]
            }
            _ => Vec::new(),
        }
    }

    /// The Jibri of the session left the brewery.
    pub fn jibri_gone(&mut self, jibri: &str) -> Vec<Action> {
        self.status(
            jibri,
            &Status {
                status: Some("off".into()),
                failure: Some("error".into()),
                should_retry: true,
            },
        )
    }

    /// The pending deadline passed: stop the Jibri, the room sees an error.
    pub fn timeout(&mut self, now: Instant) -> Vec<Action> {
        if self
            .session
            .as_ref()
            .and_then(|s| s.pending_deadline)
            .is_none_or(|d| now < d)
        {
            return Vec::new();
        }
        let Some(s) = self.session.take() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Some(jibri) = s.jibri.clone() {
            out.push(Action::Stop {
                jibri,
                session_id: s.req.session_id.clone(),
            });
        }
        out.push(Action::Publish(status_element(
            "off",
            &s.req,
            None,
            Some("error"),
        )));
        out
    }

    /// The conference ends: stop what runs.
    pub fn end(&mut self) -> Vec<Action> {
        match self.session.take() {
            Some(Session {
                jibri: Some(jibri),
                req,
                ..
            }) => vec![Action::Stop {
                jibri,
                session_id: req.session_id,
            }],
            _ => Vec::new(),
        }
    }
}

/// The `jibri-recording-status` element of the focus's presence.
fn status_element(
    status: &str,
    req: &StartRequest,
    initiator: Option<&str>,
    failure: Option<&str>,
) -> Element {
    let mut e = el(
        "jibri-recording-status",
        NS_JIBRI,
        &[
            ("status", status),
            ("session_id", &req.session_id),
            ("recording_mode", req.mode.as_str()),
        ],
    );
    if let Some(i) = initiator {
        stanza::set_attr(&mut e, "initiator", i);
    }
    if let Some(f) = failure {
        stanza::set_attr(&mut e, "failure_reason", f);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Element {
        meetd_xmpp::xml::parse_document(s.as_bytes(), &Default::default()).unwrap()
    }

    const ROOM: &str = "r@muc.example";

    fn start_iq(attrs: &str) -> Element {
        parse(&format!(
            "<iq xmlns='jabber:client' type='set' id='s1' from='{ROOM}/mod1' to='{ROOM}/focus'>\
             <jibri xmlns='{NS_JIBRI}' action='start' {attrs}/></iq>"
        ))
    }

    fn stop_iq() -> Element {
        parse(&format!(
            "<iq xmlns='jabber:client' type='set' id='s2' from='{ROOM}/mod1' to='{ROOM}/focus'>\
             <jibri xmlns='{NS_JIBRI}' action='stop' recording_mode='stream'/></iq>"
        ))
    }

    fn condition(a: &Action) -> Option<String> {
        match a {
            Action::Reply(e) if e.attr("type") == Some("error") => e
                .get_child("error", "jabber:client")
                .and_then(|x| x.children().next())
                .map(|c| c.name().to_string()),
            _ => None,
        }
    }

    fn presence(status: &str, health: &str) -> Element {
        parse(&format!(
            "<presence xmlns='jabber:client'><jibri-status xmlns='{NS_JIBRI}'>\
             <busy-status xmlns='{NS_JIBRI}' status='{status}'/>\
             <health-status xmlns='{NS_HEALTH}' status='{health}'/></jibri-status></presence>"
        ))
    }

    #[test]
    fn pool_picks_idle_healthy_and_not_recently_failed() {
        let t = Instant::now();
        let mut p = Pool::default();
        assert_eq!(p.select(t, &[]), Err(NoJibri::Unavailable));
        p.presence("b/j1", &presence("busy", "healthy"));
        p.presence("b/j2", &presence("idle", "unhealthy"));
        assert_eq!(p.select(t, &[]), Err(NoJibri::Busy));
        p.presence("b/j1", &presence("idle", "healthy"));
        assert_eq!(p.select(t, &[]), Ok("b/j1".into()));
        // Picked a moment ago: not again until its busy presence had time to come.
        assert_eq!(p.select(t, &[]), Err(NoJibri::Busy));
        let later = t + Duration::from_secs(1);
        p.failed("b/j1", later);
        assert_eq!(p.select(later, &[]), Err(NoJibri::Busy));
        assert_eq!(
            p.select(later + FAILED_BACKOFF, &[]),
            Ok("b/j1".to_string())
        );
        assert_eq!(
            p.select(later + FAILED_BACKOFF * 2, &["b/j1".into()]),
            Err(NoJibri::Busy)
        );
        let gone = parse("<presence xmlns='jabber:client' type='unavailable'/>");
        assert!(p.presence("b/j1", &gone));
        assert!(p.presence("b/j2", &gone));
        assert!(p.is_empty());
    }

    #[test]
    fn a_moderator_streams_and_stops() {
        let t = Instant::now();
        let mut r = Recorder::new(RecorderConfig::default());
        let out = r.request(
            &start_iq("recording_mode='stream' streamid='lecture1'"),
            &format!("{ROOM}/mod1"),
            Some(true),
            ROOM,
            || "sid1".into(),
        );
        let [Action::Start(req)] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!(req.mode, Mode::Stream);
        assert_eq!(req.streamid.as_deref(), Some("lecture1"));
        let p = req.payload();
        assert_eq!(p.attr("room"), Some(ROOM));
        assert_eq!(p.attr("session_id"), Some("sid1"));
        // A second start meanwhile is refused.
        let out = r.request(&start_iq("streamid='x'"), "x", Some(true), ROOM, || {
            "sid2".into()
        });
        assert_eq!(condition(&out[0]).as_deref(), Some("unexpected-request"));
        // A Jibri said pending: the moderator gets the session id.
        let out = r.started("sid1", Ok("b/j1".into()), t);
        let [Action::Reply(res)] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!(res.attr("type"), Some("result"));
        assert_eq!(
            res.get_child("jibri", NS_JIBRI)
                .and_then(|j| j.attr("session_id")),
            Some("sid1")
        );
        assert_eq!(r.deadline(), Some(t + Duration::from_secs(90)));
        // Another Jibri's status is not ours.
        let on = Status {
            status: Some("on".into()),
            ..Default::default()
        };
        assert!(r.status("b/j2", &on).is_empty());
        let out = r.status("b/j1", &on);
        let [Action::Publish(e)] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!(e.attr("status"), Some("on"));
        assert_eq!(e.attr("recording_mode"), Some("stream"));
        assert_eq!(e.attr("initiator"), Some(format!("{ROOM}/mod1").as_str()));
        assert_eq!(r.deadline(), None);
        // Stop: the Jibri is told, the room sees off with the stopper.
        let out = r.request(
            &stop_iq(),
            &format!("{ROOM}/mod1"),
            Some(true),
            ROOM,
            || unreachable!(),
        );
        assert!(matches!(&out[0], Action::Reply(e) if e.attr("type") == Some("result")));
        assert!(
            matches!(&out[1], Action::Stop { jibri, session_id } if jibri == "b/j1" && session_id == "sid1")
        );
        assert!(matches!(&out[2], Action::Publish(e) if e.attr("status") == Some("off")));
        assert!(r.end().is_empty());
    }

    #[test]
    fn refusals() {
        let mut r = Recorder::default();
        let id = || "sid".to_string();
        let c = |out: Vec<Action>| condition(&out[0]);
        let s = start_iq("streamid='k'");
        assert_eq!(
            c(r.request(&s, "x", None, ROOM, id)).as_deref(),
            Some("forbidden")
        );
        assert_eq!(
            c(r.request(&s, "x", Some(false), ROOM, id)).as_deref(),
            Some("not-allowed")
        );
        assert_eq!(
            c(r.request(
                &start_iq("recording_mode='stream'"),
                "x",
                Some(true),
                ROOM,
                id
            ))
            .as_deref(),
            Some("bad-request")
        );
        assert_eq!(
            c(r.request(
                &start_iq("recording_mode='file' streamid='k'"),
                "x",
                Some(true),
                ROOM,
                id
            ))
            .as_deref(),
            Some("bad-request")
        );
        assert_eq!(
            c(r.request(&stop_iq(), "x", Some(true), ROOM, id)).as_deref(),
            Some("item-not-found")
        );
        // No Jibri: the requester hears why, nothing is left.
        assert!(matches!(
            r.request(&s, "x", Some(true), ROOM, id).as_slice(),
            [Action::Start(_)]
        ));
        let (e, text) = NoJibri::Unavailable.error();
        let out = r.started("sid", Err((e, text.into())), Instant::now());
        assert_eq!(condition(&out[0]).as_deref(), Some("service-unavailable"));
        assert!(r.end().is_empty());
    }

    #[test]
    fn a_failing_jibri_is_replaced_and_a_stuck_one_times_out() {
        let t = Instant::now();
        let mut r = Recorder::new(RecorderConfig {
            pending_timeout: Duration::from_secs(10),
            retries: 1,
        });
        r.request(&start_iq("streamid='k'"), "m", Some(true), ROOM, || {
            "sid".into()
        });
        r.started("sid", Ok("b/j1".into()), t);
        let fail = Status {
            status: Some("off".into()),
            failure: Some("error".into()),
            should_retry: true,
        };
        let out = r.status("b/j1", &fail);
        let [Action::Start(req)] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!(req.tried, vec!["b/j1".to_string()]);
        // The retry was taken, then that Jibri never comes on.
        assert!(r.started("sid", Ok("b/j2".into()), t).is_empty());
        assert!(r.timeout(t + Duration::from_secs(5)).is_empty());
        let out = r.timeout(t + Duration::from_secs(10));
        assert!(matches!(&out[0], Action::Stop { jibri, .. } if jibri == "b/j2"));
        assert!(matches!(&out[1], Action::Publish(e) if e.attr("failure_reason") == Some("error")));
        // Retries used up: a failure ends it.
        r.request(&start_iq("streamid='k'"), "m", Some(true), ROOM, || {
            "sid2".into()
        });
        r.started("sid2", Ok("b/j1".into()), t);
        r.status("b/j1", &fail);
        r.started("sid2", Ok("b/j2".into()), t);
        let out = r.jibri_gone("b/j2");
        assert!(
            matches!(&out[0], Action::Publish(e) if e.attr("status") == Some("off") && e.attr("failure_reason") == Some("error"))
        );
        // A Jibri that answers after a stop is stopped again.
        let out = r.started("old", Ok("b/j3".into()), t);
        assert!(matches!(&out[0], Action::Stop { jibri, .. } if jibri == "b/j3"));
    }
}
