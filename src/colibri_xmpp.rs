//! meetd's bridge on XMPP, as a stock Jicofo finds and drives a JVB (docs/colibri2.md §1, §4):
//! it sits in the bridge brewery (`jvbbrewery@internal-muc.<domain>`, `[bridge] brewery`)
//! with JVB's stats presence — stress level, region, relay id, version, graceful-shutdown and
//! drain — re-sent every 5 s, and answers Colibri2 `conference-modify` IQs (and health checks
//! and version queries) sent to its occupant JID there or to its own JID. Only service accounts
//! may drive it: brewery occupants (the brewery admits the auth domain's accounts only) and
//! accounts of the auth domain.
//!
//! [`classify`] and [`presence`] are the sans-IO part; [`start_local`] runs them on meetd's
//! router, [`start_remote`] on a link to another XMPP server (`--role bridge`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use meetd_colibri::colibri2::{Colibri2Error, ConferenceModify};
use meetd_colibri::driver::EngineHandle;
use meetd_colibri::service::ColibriService;
use meetd_xmpp::stanza::{self, StanzaError, el};
use meetd_xmpp::{Element, Router};
use tokio::sync::mpsc;

const NS_COLIBRI2: &str = "jitsi:colibri2";
const NS_COLIBRI: &str = "http://jitsi.org/protocol/colibri";
const NS_HEALTH: &str = "http://jitsi.org/protocol/healthcheck";
const NS_VERSION: &str = "jabber:iq:version";
const NS_MUC: &str = "http://jabber.org/protocol/muc";
/// How often the stats presence is sent again (JVB's default).
const PRESENCE_INTERVAL: Duration = Duration::from_secs(5);
/// Stanzas waiting for the bridge's task.
const MAILBOX: usize = 256;

/// Who the bridge is on XMPP.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Its own full JID (`jvb@<auth domain>/<bridge id>`).
    pub jid: String,
    /// Its occupant JID in the brewery (`jvbbrewery@internal-muc.<domain>/<bridge id>`).
    pub occupant: String,
    /// The domain whose accounts may drive it.
    pub auth_domain: String,
}

impl Identity {
    fn brewery(&self) -> &str {
        self.occupant.split('/').next().unwrap_or("")
    }

    /// Whether `from` may send Colibri2 requests: a brewery occupant, or an account of the
    /// auth domain.
    pub fn may_drive(&self, from: &str) -> bool {
        if let Some((room, nick)) = from.split_once('/')
            && room == self.brewery()
        {
            return !nick.is_empty() && from != self.occupant;
        }
        let bare = from.split('/').next().unwrap_or("");
        bare.rsplit_once('@')
            .is_some_and(|(node, domain)| !node.is_empty() && domain == self.auth_domain)
    }
}

/// What the bridge reports in its presence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub stress_level: f64,
    pub region: String,
    pub relay_id: String,
    pub version: String,
    pub graceful_shutdown: bool,
    pub drain: bool,
    pub conferences: usize,
    pub endpoints: usize,
}

/// The brewery presence with JVB's stats.
pub fn presence(id: &Identity, s: &Stats) -> Element {
    let mut p = el(
        "presence",
        "jabber:client",
        &[("from", &id.jid), ("to", &id.occupant)],
    );
    p.append_child(el("x", NS_MUC, &[]));
    let mut stats = el("stats", NS_COLIBRI, &[]);
    let stress = format!("{:.3}", s.stress_level);
    let (conferences, endpoints) = (s.conferences.to_string(), s.endpoints.to_string());
    let mut stat = |name: &str, value: &str| {
        let mut e = el("stat", NS_COLIBRI, &[]);
        stanza::set_attr(&mut e, "name", name);
        stanza::set_attr(&mut e, "value", value);
        stats.append_child(e);
    };
    stat("stress_level", &stress);
    stat("version", &s.version);
    stat("release", &s.version);
    stat("graceful_shutdown", bool_str(s.graceful_shutdown));
    stat("shutting_down", "false");
    stat("drain", bool_str(s.drain));
    stat("healthy", "true");
    stat("colibri2", "true");
    stat("conferences", &conferences);
    stat("participants", &endpoints);
    if !s.region.is_empty() {
        stat("region", &s.region);
    }
    if !s.relay_id.is_empty() {
        stat("relay_id", &s.relay_id);
    }
    p.append_child(stats);
    p
}

fn bool_str(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// What an incoming stanza asks of the bridge.
#[derive(Debug)]
pub enum Request {
    Modify(ConferenceModify),
    /// JVB's graceful-shutdown IQ: take no new conferences from now on (answer with this).
    GracefulShutdown(Element),
    /// Answer with this stanza.
    Reply(Element),
    Ignore,
}

/// What to do with a stanza routed to the bridge's JID.
pub fn classify(id: &Identity, st: &Element, version: &str) -> Request {
    if st.name() != "iq" {
        if st.name() == "presence" && st.attr("type") == Some("error") {
            tracing::warn!("bridge: the brewery refused its presence");
        }
        return Request::Ignore;
    }
    let ty = st.attr("type").unwrap_or("");
    if ty != "get" && ty != "set" {
        return Request::Ignore;
    }
    let from = st.attr("from").unwrap_or("");
    let refuse = |e: StanzaError, text: &str| match stanza::error_reply(st, e, Some(text)) {
        Some(r) => Request::Reply(with_from(r, &id.jid, st)),
        None => Request::Ignore,
    };
    let Some(payload) = stanza::payload(st) else {
        return refuse(StanzaError::BAD_REQUEST, "empty IQ");
    };
    match (payload.name(), payload.ns().as_str()) {
        ("conference-modify", NS_COLIBRI2) => {
            if !id.may_drive(from) {
                tracing::info!(%from, "bridge: Colibri2 request from outside the service accounts refused");
                return refuse(
                    StanzaError::FORBIDDEN,
                    "only service accounts drive the bridge",
                );
            }
            match ConferenceModify::parse(payload) {
                Ok(m) => Request::Modify(m),
                Err(e) => {
                    let err = Colibri2Error::BadRequest(e.to_string());
                    Request::Reply(with_from(err.to_error_iq(st), &id.jid, st))
                }
            }
        }
        ("graceful-shutdown", NS_COLIBRI) if ty == "set" => {
            if !id.may_drive(from) {
                return refuse(
                    StanzaError::FORBIDDEN,
                    "only service accounts shut the bridge down",
                );
            }
            Request::GracefulShutdown(with_from(stanza::iq_result(st, None), &id.jid, st))
        }
        ("healthcheck", NS_HEALTH) => {
            Request::Reply(with_from(stanza::iq_result(st, None), &id.jid, st))
        }
        ("query", NS_VERSION) => {
            let mut q = el("query", NS_VERSION, &[]);
            for (k, v) in [("name", "meetd"), ("version", version), ("os", "")] {
                let mut e = el(k, NS_VERSION, &[]);
                e.append_text_node(v);
                q.append_child(e);
            }
            Request::Reply(with_from(stanza::iq_result(st, Some(q)), &id.jid, st))
        }
        _ => refuse(StanzaError::SERVICE_UNAVAILABLE, "not a bridge request"),
    }
}

/// Answers go out from the address the request went to (the occupant JID, through the
/// MUC, or the bridge's own), which `iq_result` already put there; requests to the occupant
/// JID are answered from the bridge's real JID to that occupant address's MUC.
fn with_from(mut e: Element, own: &str, req: &Element) -> Element {
    let to_occupant = req.attr("to").is_some_and(|t| t != own);
    if to_occupant {
        // The MUC rewrites the sender: the bridge sends from its real JID to the occupant
        // who asked (via the room).
        stanza::set_attr(&mut e, "from", own);
    }
    e
}

/// What the bridge on XMPP works with. `draining` is set when meetd drains (no new
/// conferences).
#[derive(Clone)]
pub struct Setup {
    pub service: Arc<ColibriService>,
    pub engine: EngineHandle,
    pub region: String,
    pub draining: Arc<AtomicBool>,
}

/// Where the bridge's stanzas go: meetd's own router, or a link to another XMPP server.
enum Out {
    Router(Arc<Router>),
    Link(mpsc::Sender<Element>),
}

impl Out {
    async fn send(&self, e: Element) {
        match self {
            Out::Router(r) => {
                r.route(e);
            }
            Out::Link(tx) => {
                // A closed link ends the session; the reconnect joins again.
                let _ = tx.send(e).await;
            }
        }
    }
}

/// The bridge in the brewery of meetd's own XMPP server, as `id`.
pub fn start_local(s: Setup, router: Arc<Router>, id: Identity) {
    let (tx, mut rx) = mpsc::channel::<Box<Element>>(MAILBOX);
    router.bind(&id.jid, tx);
    tokio::spawn(async move {
        serve(&s, &id, Out::Router(router), &mut rx).await;
    });
}

/// A bridge-only meetd (`--role bridge`): logs in to another XMPP server with `link`, joins
/// `brewery` (a room JID) as `nick`, and logs in again (after 1 s, doubling up to 30 s) whenever
/// the connection is lost.
pub fn start_remote(s: Setup, link: crate::xmpp_link::LinkConfig, brewery: String, nick: String) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_secs(1);
        loop {
            match crate::xmpp_link::connect(&link).await {
                Ok(mut l) => {
                    backoff = Duration::from_secs(1);
                    let id = Identity {
                        jid: l.jid.clone(),
                        occupant: format!("{brewery}/{nick}"),
                        auth_domain: link.domain.clone(),
                    };
                    tracing::info!(jid = %l.jid, url = %link.url, "bridge: logged in to the focus's XMPP server");
                    serve(&s, &id, Out::Link(l.tx.clone()), &mut l.rx).await;
                    tracing::warn!(url = %link.url, "bridge: the XMPP connection was lost; logging in again");
                }
                Err(e) => {
                    tracing::warn!(error = %e, url = %link.url, "bridge: XMPP login failed; trying again");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    });
}

/// Sit in the brewery and serve Colibri2 until `rx` closes.
async fn serve(s: &Setup, id: &Identity, out: Out, rx: &mut mpsc::Receiver<Box<Element>>) {
    let version = env!("CARGO_PKG_VERSION").to_string();
    let mut tick = tokio::time::interval(PRESENCE_INTERVAL);
    tracing::info!(brewery = %id.brewery(), jid = %id.jid, "bridge: joining the brewery for Colibri2 over XMPP");
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let stats = s.engine.stats().await;
                let draining = s.draining.load(Ordering::Relaxed);
                let st = Stats {
                    stress_level: stats.as_ref().map_or(0.0, |x| x.engine_cpu_permille as f64 / 900.0),
                    region: s.region.clone(),
                    // Relays name the bridge at their other end by this (docs/bridge.md B.15).
                    relay_id: id.occupant.rsplit('/').next().unwrap_or("").to_string(),
                    version: version.clone(),
                    graceful_shutdown: draining,
                    drain: draining,
                    conferences: s.service.conference_count(),
                    endpoints: stats.as_ref().map_or(0, |x| x.endpoints),
                };
                out.send(presence(id, &st)).await;
            }
            m = rx.recv() => {
                let Some(st) = m else { return };
                match classify(id, &st, &version) {
                    Request::Modify(req) => {
                        if req.create && s.draining.load(Ordering::Relaxed) {
                            let e = Colibri2Error::GracefulShutdown;
                            out.send(with_from(e.to_error_iq(&st), &id.jid, &st)).await;
                            continue;
                        }
                        let reply = match s.service.handle(&req) {
                            Ok(m) => stanza::iq_result(&st, Some(m.to_element())),
                            Err(e) => e.to_error_iq(&st),
                        };
                        out.send(with_from(reply, &id.jid, &st)).await;
                    }
                    Request::GracefulShutdown(r) => {
                        tracing::info!("bridge: graceful shutdown asked over XMPP: no new conferences");
                        s.draining.store(true, Ordering::Relaxed);
                        out.send(r).await;
                        // The pool learns it from the next presence: send it now.
                        tick.reset_immediately();
                    }
                    Request::Reply(r) => out.send(r).await,
                    Request::Ignore => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            jid: "jvb@auth.meet.jitsi/jvb1".into(),
            occupant: "jvbbrewery@internal-muc.meet.jitsi/jvb1".into(),
            auth_domain: "auth.meet.jitsi".into(),
        }
    }

    fn parse(s: &str) -> Element {
        s.parse().unwrap()
    }

    #[test]
    fn who_may_drive_the_bridge() {
        let i = id();
        assert!(i.may_drive("jvbbrewery@internal-muc.meet.jitsi/jicofo"));
        assert!(i.may_drive("focus@auth.meet.jitsi/focus"));
        assert!(
            !i.may_drive("jvbbrewery@internal-muc.meet.jitsi/jvb1"),
            "itself"
        );
        assert!(!i.may_drive("abc@meet.jitsi/x"), "a web user");
        assert!(
            !i.may_drive("room@muc.meet.jitsi/focus"),
            "a conference occupant"
        );
        assert!(!i.may_drive("auth.meet.jitsi"));
        assert!(!i.may_drive(""));
    }

    #[test]
    fn the_presence_carries_jvbs_stats() {
        let p = presence(
            &id(),
            &Stats {
                stress_level: 0.25,
                region: "eu".into(),
                version: "0.1.0".into(),
                drain: true,
                ..Stats::default()
            },
        );
        assert_eq!(
            p.attr("to"),
            Some("jvbbrewery@internal-muc.meet.jitsi/jvb1")
        );
        let stats = p.get_child("stats", NS_COLIBRI).unwrap();
        let get = |n: &str| {
            stats
                .children()
                .find(|s| s.attr("name") == Some(n))
                .and_then(|s| s.attr("value"))
                .map(str::to_string)
        };
        assert_eq!(get("stress_level").as_deref(), Some("0.250"));
        assert_eq!(get("region").as_deref(), Some("eu"));
        assert_eq!(get("drain").as_deref(), Some("true"));
        assert_eq!(get("graceful_shutdown").as_deref(), Some("false"));
        assert_eq!(get("version").as_deref(), Some("0.1.0"));
        assert_eq!(get("relay_id"), None, "no relays: no relay id");
    }

    #[test]
    fn requests_are_sorted_and_strangers_refused() {
        let i = id();
        let modify = "<iq xmlns='jabber:client' type='get' id='1' from='jvbbrewery@internal-muc.meet.jitsi/jicofo' to='jvbbrewery@internal-muc.meet.jitsi/jvb1'><conference-modify xmlns='jitsi:colibri2' meeting-id='m1' name='room@muc.meet.jitsi' create='true'/></iq>";
        assert!(
            matches!(classify(&i, &parse(modify), "v"), Request::Modify(m) if m.meeting_id == "m1" && m.create)
        );
        let stranger = modify.replace(
            "jvbbrewery@internal-muc.meet.jitsi/jicofo",
            "evil@meet.jitsi/x",
        );
        let Request::Reply(r) = classify(&i, &parse(&stranger), "v") else {
            panic!("no refusal")
        };
        assert_eq!(r.attr("type"), Some("error"));
        assert!(
            r.get_child("error", "jabber:client")
                .unwrap()
                .get_child("forbidden", "urn:ietf:params:xml:ns:xmpp-stanzas")
                .is_some()
        );
        let bad = "<iq xmlns='jabber:client' type='set' id='2' from='focus@auth.meet.jitsi/f' to='jvb@auth.meet.jitsi/jvb1'><conference-modify xmlns='jitsi:colibri2'/></iq>";
        let Request::Reply(r) = classify(&i, &parse(bad), "v") else {
            panic!("no error")
        };
        assert_eq!(r.attr("type"), Some("error"));
        let health = "<iq xmlns='jabber:client' type='get' id='3' from='focus@auth.meet.jitsi/f' to='jvb@auth.meet.jitsi/jvb1'><healthcheck xmlns='http://jitsi.org/protocol/healthcheck'/></iq>";
        let Request::Reply(r) = classify(&i, &parse(health), "v") else {
            panic!("no answer")
        };
        assert_eq!(
            (r.attr("type"), r.attr("to")),
            (Some("result"), Some("focus@auth.meet.jitsi/f"))
        );
        let result =
            "<iq xmlns='jabber:client' type='result' id='4' from='focus@auth.meet.jitsi/f'/>";
        assert!(matches!(classify(&i, &parse(result), "v"), Request::Ignore));
        let version = "<iq xmlns='jabber:client' type='get' id='5' from='x@meet.jitsi/y' to='jvb@auth.meet.jitsi/jvb1'><query xmlns='jabber:iq:version'/></iq>";
        let Request::Reply(r) = classify(&i, &parse(version), "0.1.0") else {
            panic!()
        };
        assert_eq!(
            r.get_child("query", NS_VERSION)
                .unwrap()
                .get_child("version", NS_VERSION)
                .unwrap()
                .text(),
            "0.1.0"
        );
    }
}
