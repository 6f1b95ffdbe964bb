//! The focus as an XMPP entity: the `focus.<domain>` service that answers conference
//! requests, and the `focus@auth.<domain>/focus` occupant that runs one [`Conference`]
//! actor task per room. Thin tokio glue around the sans-IO actor.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meetd_colibri::ConferenceModify;
use meetd_colibri::service::Bridge;
use meetd_xmpp::router::{Router, ServiceHandle};
use meetd_xmpp::stanza::{self, StanzaError, el};
use meetd_xmpp::{Element, router::bare_of};
use tokio::sync::{mpsc, oneshot};

use crate::conference::{Conference, FocusConfig, Input, Output};
use crate::jibri;
use crate::live_stream::{LiveStreams, NATIVE};
use crate::offer::NS_FOCUS;

/// A conference request that arrived over HTTP (`POST /conference-request/v1`).
pub struct HttpRequest {
    pub room: String,
    pub reply: oneshot::Sender<Result<(), String>>,
}

enum ActorMsg {
    Input(Input),
    /// A conference IQ to answer once the focus is in the room.
    Request(Element),
    Http(oneshot::Sender<Result<(), String>>),
}

struct Room {
    tx: mpsc::Sender<ActorMsg>,
    generation: u64,
}

#[derive(Clone)]
pub struct FocusHandle {
    http: mpsc::Sender<HttpRequest>,
    draining: Arc<std::sync::atomic::AtomicBool>,
    router: Arc<Router>,
    jigasi: Option<Arc<JigasiBrewery>>,
}

/// Why a phone number could not be invited into a conference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteError {
    /// The focus does not use a Jigasi brewery (`[jigasi] dial_out` off).
    NoBrewery,
    /// No SIP-capable Jigasi is in the brewery.
    NoJigasi,
}

impl FocusHandle {
    /// Have the least loaded SIP-capable Jigasi call `number` into `room` (the HTTP API's
    /// invite-jigasi). The dial goes out now; its outcome is the Jigasi's and the room's.
    pub fn invite_jigasi(&self, room: &str, number: &str) -> Result<(), InviteError> {
        let j = self.jigasi.clone().ok_or(InviteError::NoBrewery)?;
        let jigasi = lock(&j.pool).select(&[]).ok_or(InviteError::NoJigasi)?;
        let dial = Element::builder("dial", crate::jigasi::NS_RAYO)
            .attr(stanza::rxml_name("from"), "fromnumber")
            .attr(stanza::rxml_name("to"), number)
            .append(el(
                "header",
                crate::jigasi::NS_RAYO,
                &[("name", "JvbRoomName"), ("value", room)],
            ))
            .build();
        let router = self.router.clone();
        tokio::spawn(async move {
            if j.room
                .request(&router, &jigasi, dial)
                .await
                .map(|a| a.attr("type") == Some("result"))
                != Some(true)
            {
                tracing::warn!(%jigasi, "Jigasi did not dial (HTTP invite)");
            }
        });
        Ok(())
    }

    /// Take no new conferences from now on; running ones go on.
    pub fn drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Ask for a conference as the HTTP endpoint does; resolves when the focus is ready.
    pub async fn request(&self, room: String) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.http
            .send(HttpRequest { room, reply: tx })
            .await
            .map_err(|_| "focus is not running".to_string())?;
        rx.await
            .map_err(|_| "focus dropped the request".to_string())?
    }
}

pub struct FocusOptions {
    pub cfg: FocusConfig,
    /// `focus.<domain>`: where clients send conference requests.
    pub service_domain: String,
    /// `muc.<domain>` (and `breakout.<domain>`): rooms the focus may manage.
    pub muc_domains: Vec<String>,
    pub max_conferences: usize,
    pub queue: usize,
    /// Room components whose JSON notices name their room (`metadata.<domain>` with
    /// startMuted, `avmoderation.<domain>`).
    pub component_domains: Vec<String>,
    /// Jibri's brewery room, which the focus joins to find Jibris (docs/jibri.md).
    pub jibri_brewery: Option<String>,
    /// How long a Jibri has to answer a start.
    pub jibri_reply_timeout: Duration,
    /// Jigasi's brewery room, for phone dial-out (docs/dialin.md).
    pub jigasi_brewery: Option<String>,
    /// Set while meetd drains before it stops: no new conferences (FocusHandle::drain).
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// meetd's own live streaming, used when no Jibri is registered (docs/streaming.md).
    pub live_streams: Option<Arc<dyn LiveStreams>>,
    /// Conferences a bridge of the pool took with it (docs/colibri2.md §4a, §4b).
    pub bridge_lost: Option<mpsc::Receiver<BridgeLoss>>,
    /// The MUC's rooms as they are (a room with a lobby sends nobody to the visitors).
    pub rooms: Option<Arc<meetd_xmpp::muc::directory::Directory>>,
}

/// What a bridge that left the pool took with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeLoss {
    /// The room's conference: it starts again on another bridge.
    Conference(String),
    /// Some endpoints of the room's conference (it went on on other bridges): those
    /// participants are invited anew.
    Endpoints {
        room: String,
        endpoints: Vec<String>,
    },
}

/// The gateways the focus hands work to: Jibris (recording, streaming) and Jigasis (phone).
#[derive(Clone, Default)]
struct Gateways {
    jibri: Option<Arc<Brewery>>,
    jigasi: Option<Arc<JigasiBrewery>>,
    streams: Option<Arc<dyn LiveStreams>>,
    /// The MUC's rooms (`FocusOptions::rooms`) and its main domain (visitors only there).
    rooms: Option<Arc<meetd_xmpp::muc::directory::Directory>>,
    main_muc: String,
}

/// The focus's place in one brewery room (Jibri's or Jigasi's): joining it, IQs to its
/// occupants and their answers. The gateways below add their pools on top.
struct BreweryRoom {
    room: String,
    /// The focus's occupant JID in it.
    occupant: String,
    focus_jid: String,
    waiting: Mutex<HashMap<String, oneshot::Sender<Element>>>,
    next_id: AtomicU64,
    reply_timeout: Duration,
}

/// A poisoned lock only means another task panicked while holding it; the data (a pool, a
/// map of waiters) is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BreweryRoom {
    fn new(room: &str, focus_jid: &str, reply_timeout: Duration) -> BreweryRoom {
        BreweryRoom {
            room: room.to_string(),
            occupant: format!("{room}/focus"),
            focus_jid: focus_jid.to_string(),
            waiting: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            reply_timeout,
        }
    }

    fn join(&self, router: &Router) {
        let mut p = el(
            "presence",
            "jabber:client",
            &[("to", &self.occupant), ("from", &self.focus_jid)],
        );
        p.append_child(Element::bare("x", "http://jabber.org/protocol/muc"));
        router.route(p);
    }

    /// An IQ set from the focus to an occupant.
    fn iq(&self, to: &str, payload: Element) -> (String, Element) {
        let id = format!("gw{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut iq = el(
            "iq",
            "jabber:client",
            &[
                ("type", "set"),
                ("id", &id),
                ("to", to),
                ("from", &self.focus_jid),
            ],
        );
        iq.append_child(payload);
        (id, iq)
    }

    /// Send an IQ set without waiting for its answer.
    fn send(&self, router: &Router, to: &str, payload: Element) {
        router.route(self.iq(to, payload).1);
    }

    /// Send an IQ set and wait for its answer; `None` when none came in time.
    async fn request(&self, router: &Router, to: &str, payload: Element) -> Option<Element> {
        let (id, iq) = self.iq(to, payload);
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(id.clone(), tx);
        router.route(iq);
        let answer = tokio::time::timeout(self.reply_timeout, rx).await;
        lock(&self.waiting).remove(&id);
        answer.ok().and_then(Result::ok)
    }

    /// An IQ result or error from the room: hand it to its waiter. False for anything else.
    fn answered(&self, st: &Element) -> bool {
        if st.name() != "iq" || !matches!(st.attr("type"), Some("result" | "error")) {
            return false;
        }
        if let Some(tx) = lock(&self.waiting).remove(st.attr("id").unwrap_or("")) {
            let _ = tx.send(st.clone());
        }
        true
    }

    /// A presence from another occupant (not the focus's own).
    fn other_presence<'a>(&self, st: &'a Element) -> Option<&'a str> {
        let from = st.attr("from").unwrap_or("");
        (st.name() == "presence" && from != self.occupant).then_some(from)
    }
}

/// The Jigasi brewery as the focus sees it: the base room and the instances.
struct JigasiBrewery {
    room: BreweryRoom,
    pool: Mutex<crate::jigasi::Pool>,
}

impl JigasiBrewery {
    fn stanza(&self, st: &Element) {
        if let Some(from) = self.room.other_presence(st) {
            lock(&self.pool).presence(from, st);
        } else {
            self.room.answered(st);
        }
    }

    /// Hand a moderator's dial to a Jigasi (others when one fails or is silent) and answer the
    /// moderator with the Jigasi's `ref`, or why none dialled.
    async fn dial(self: Arc<Self>, router: Arc<Router>, client_iq: Element) {
        let Some(dial) = client_iq.get_child("dial", crate::jigasi::NS_RAYO).cloned() else {
            return;
        };
        let mut tried: Vec<String> = Vec::new();
        let mut timed_out = false;
        let reply = loop {
            let Some(jigasi) = lock(&self.pool).select(&tried) else {
                break Err(if tried.is_empty() {
                    StanzaError::SERVICE_UNAVAILABLE
                } else if timed_out {
                    crate::jigasi::REMOTE_SERVER_TIMEOUT
                } else {
                    crate::jigasi::UNDEFINED_CONDITION
                });
            };
            match self.room.request(&router, &jigasi, dial.clone()).await {
                Some(a) if a.attr("type") == Some("result") => {
                    break Ok(a.children().next().cloned());
                }
                answer => timed_out = answer.is_none(),
            }
            tracing::warn!(%jigasi, timed_out, "Jigasi did not dial");
            tried.push(jigasi);
            if tried.len() >= crate::jigasi::ATTEMPTS {
                break Err(if timed_out {
                    crate::jigasi::REMOTE_SERVER_TIMEOUT
                } else {
                    crate::jigasi::UNDEFINED_CONDITION
                });
            }
        };
        let out = match reply {
            Ok(payload) => Some(stanza::iq_result(&client_iq, payload)),
            Err(e) => stanza::error_reply(&client_iq, e, Some("no Jigasi dialled")),
        };
        if let Some(mut out) = out {
            stanza::set_attr(&mut out, "from", &self.room.focus_jid);
            router.route(out);
        }
    }
}

/// The Jibri brewery as the focus sees it: the base room, who is there, which conference each
/// busy Jibri works for. Shared by the focus's dispatcher and the tasks that hand sessions to
/// Jibris.
struct Brewery {
    room: BreweryRoom,
    pool: Mutex<jibri::Pool>,
    owners: Mutex<HashMap<String, String>>,
    retries: usize,
}

impl Brewery {
    /// A stanza from the brewery room. Returns (room, input) when a conference must hear of it.
    fn stanza(&self, router: &Router, st: &Element) -> Option<(String, Input)> {
        if let Some(from) = self.room.other_presence(st) {
            if !lock(&self.pool).presence(from, st) {
                return None;
            }
            tracing::info!(jibri = from, "Jibri left the brewery");
            let room = lock(&self.owners).remove(from)?;
            return Some((
                room,
                Input::JibriGone {
                    jibri: from.to_string(),
                },
            ));
        }
        if self.room.answered(st) {
            return None;
        }
        let from = st.attr("from").unwrap_or("");
        match st.name() {
            "iq" => match st.attr("type") {
                Some("set") => {
                    let Some(status) = jibri::parse_status(st) else {
                        error_reply(router, st, StanzaError::SERVICE_UNAVAILABLE, "unsupported");
                        return None;
                    };
                    let mut ok = stanza::iq_result(st, None);
                    stanza::set_attr(&mut ok, "from", &self.room.focus_jid);
                    router.route(ok);
                    let owners = lock(&self.owners);
                    let room = owners.get(from)?.clone();
                    drop(owners);
                    if status.status.as_deref() == Some("off") {
                        lock(&self.owners).remove(from);
                    }
                    Some((
                        room,
                        Input::JibriStatus {
                            jibri: from.to_string(),
                            status,
                        },
                    ))
                }
                _ => None,
            },
            _ => None,
        }
    }

    fn stop(&self, router: &Router, jibri: &str, session_id: &str) {
        lock(&self.owners).remove(jibri);
        self.room
            .send(router, jibri, jibri::stop_payload(session_id));
    }

    /// Hand a session to a Jibri: the first idle one that answers `pending`, trying others
    /// when one refuses or does not answer in time.
    async fn start(
        self: Arc<Self>,
        router: Arc<Router>,
        req: jibri::StartRequest,
        tx: mpsc::Sender<ActorMsg>,
    ) {
        let mut tried = req.tried.clone();
        let mut attempts = 0;
        let result = loop {
            let pick = lock(&self.pool).select(Instant::now(), &tried);
            let jibri = match pick {
                Ok(j) => j,
                Err(no) => {
                    let (e, text) = no.error();
                    break Err((e, text.to_string()));
                }
            };
            let answer = self.room.request(&router, &jibri, req.payload()).await;
            let status = answer
                .as_ref()
                .filter(|a| a.attr("type") == Some("result"))
                .and_then(jibri::parse_status);
            if status.as_ref().and_then(|s| s.status.as_deref()) == Some("pending") {
                lock(&self.owners).insert(jibri.clone(), req.room.clone());
                tracing::info!(room = %req.room, %jibri, mode = req.mode.as_str(), "Jibri took the session");
                break Ok(jibri);
            }
            tracing::warn!(room = %req.room, %jibri, ?status, timed_out = answer.is_none(), "Jibri did not take the session");
            lock(&self.pool).failed(&jibri, Instant::now());
            if answer.is_none() {
                // It may still start late: tell it to stop.
                self.room
                    .send(&router, &jibri, jibri::stop_payload(&req.session_id));
            }
            tried.push(jibri);
            attempts += 1;
            if attempts > self.retries {
                break Err((
                    jibri::INTERNAL_SERVER_ERROR,
                    "no Jibri took the session".to_string(),
                ));
            }
        };
        let input = Input::JibriStarted {
            session_id: req.session_id.clone(),
            result,
        };
        if tx.send(ActorMsg::Input(input)).await.is_err() {
            tracing::debug!(room = %req.room, "conference ended before its Jibri answered");
        }
    }
}

/// Start the focus; returns a handle for HTTP conference requests.
pub fn start(router: Arc<Router>, opts: FocusOptions, bridge: Arc<dyn Bridge>) -> FocusHandle {
    let (svc_tx, mut svc_rx) = mpsc::channel::<Box<Element>>(opts.queue.max(16));
    let (jid_tx, mut jid_rx) = mpsc::channel::<Box<Element>>(opts.queue.max(16));
    let (http_tx, mut http_rx) = mpsc::channel::<HttpRequest>(64);
    let (done_tx, mut done_rx) = mpsc::channel::<(String, u64)>(64);
    if !router.register_service(&opts.service_domain, ServiceHandle { tx: svc_tx }) {
        tracing::error!(domain = %opts.service_domain, "focus domain already taken");
    }
    let focus_jid = opts.cfg.focus_jid.clone();
    router.bind(&focus_jid, jid_tx.clone());
    if let Some(jid) = &opts.cfg.streamer_jid {
        // meetd's own live-stream occupant hears the room and ignores it (docs/streaming.md):
        // bound, so that the room does not take it for gone. Requests get an error at once,
        // as a Jibri's browser declines them: a teacher alone with it offers it a
        // peer-to-peer call, which would otherwise wait for its timeout.
        let (tx, mut rx) = mpsc::channel::<Box<Element>>(64);
        router.bind(jid, tx);
        let r = router.clone();
        tokio::spawn(async move {
            while let Some(el) = rx.recv().await {
                if el.name() == "iq"
                    && let Some(reply) = meetd_xmpp::stanza::error_reply(
                        &el,
                        meetd_xmpp::stanza::StanzaError::SERVICE_UNAVAILABLE,
                        None,
                    )
                {
                    r.route(reply);
                }
            }
        });
    }
    let base = |room: &String| BreweryRoom::new(room, &focus_jid, opts.jibri_reply_timeout);
    let brewery = opts.jibri_brewery.as_ref().map(|room| {
        Arc::new(Brewery {
            room: base(room),
            pool: Mutex::new(jibri::Pool::default()),
            owners: Mutex::new(HashMap::new()),
            retries: opts.cfg.recorder.retries,
        })
    });
    let jigasi = opts.jigasi_brewery.as_ref().map(|room| {
        Arc::new(JigasiBrewery {
            room: base(room),
            pool: Mutex::new(crate::jigasi::Pool::default()),
        })
    });
    for r in [
        brewery.as_ref().map(|b| &b.room),
        jigasi.as_ref().map(|j| &j.room),
    ]
    .into_iter()
    .flatten()
    {
        r.join(&router);
    }
    let gw = Gateways {
        jibri: brewery.clone(),
        jigasi: jigasi.clone(),
        streams: opts.live_streams.clone(),
        rooms: opts.rooms.clone(),
        main_muc: opts.muc_domains.first().cloned().unwrap_or_default(),
    };
    let draining = opts.draining.clone();
    let (handle_router, handle_jigasi) = (router.clone(), jigasi.clone());
    let mut opts = opts;
    let mut bridge_lost = opts.bridge_lost.take();
    let opts = Arc::new(opts);
    tokio::spawn(async move {
        let mut rooms: HashMap<String, Room> = HashMap::new();
        let mut generation = 0u64;
        loop {
            tokio::select! {
                Some(st) = svc_rx.recv() => {
                    conference_iq(&router, &opts, &bridge, &gw, &mut rooms, &mut generation, &done_tx, *st);
                }
                Some(st) = jid_rx.recv() => {
                    // From the MUC: the room is the bare `from`; from a room component: the
                    // room named in its JSON.
                    let from = st.attr("from").unwrap_or("");
                    if let Some(j) = jigasi.as_ref().filter(|j| bare_of(from) == j.room.room) {
                        j.stanza(&st);
                        continue;
                    }
                    if let Some(b) = brewery.as_ref().filter(|b| bare_of(from) == b.room.room) {
                        if let Some((room, input)) = b.stanza(&router, &st)
                            && let Some(r) = rooms.get(&room)
                            && r.tx.try_send(ActorMsg::Input(input)).is_err()
                        {
                            tracing::warn!(%room, "conference queue full; Jibri status lost");
                        }
                        continue;
                    }
                    let room = if opts.component_domains.iter().any(|d| d == from) {
                        match component_room(&st) {
                            Some(r) => r,
                            None => continue,
                        }
                    } else {
                        bare_of(from).to_string()
                    };
                    match rooms.get(&room) {
                        Some(r) => {
                            if let Some(busy) = deliver_stanza(&r.tx, &room, *st, &opts.cfg.focus_jid) {
                                router.route(busy);
                            }
                        }
                        None => {
                            if let Some(e) = stanza::error_reply(&st, StanzaError::ITEM_NOT_FOUND, Some("no conference")) {
                                let mut e = e;
                                stanza::set_attr(&mut e, "from", &opts.cfg.focus_jid);
                                router.route(e);
                            }
                        }
                    }
                }
                Some(req) = http_rx.recv() => {
                    match room_actor(&router, &opts, &bridge, &gw, &mut rooms, &mut generation, &done_tx, &req.room) {
                        Ok(tx) => deliver_http(&tx, &req.room, req.reply),
                        Err(e) => {
                            let _ = req.reply.send(Err(e.1));
                        }
                    }
                }
                Some(loss) = recv_lost(&mut bridge_lost) => {
                    let (room, input) = match loss {
                        BridgeLoss::Conference(room) => (room, Input::BridgeLost),
                        BridgeLoss::Endpoints { room, endpoints } => {
                            (room, Input::EndpointsLost(endpoints))
                        }
                    };
                    if let Some(r) = rooms.get(&room)
                        && r.tx.try_send(ActorMsg::Input(input)).is_err()
                    {
                        tracing::warn!(%room, "conference queue full; its lost bridge is noticed on its next request");
                    }
                }
                Some((room, g)) = done_rx.recv() => {
                    if rooms.get(&room).is_some_and(|r| r.generation == g) {
                        rooms.remove(&room);
                    }
                }
                else => break,
            }
        }
    });
    FocusHandle {
        http: http_tx,
        draining,
        router: handle_router,
        jigasi: handle_jigasi,
    }
}

async fn recv_lost(rx: &mut Option<mpsc::Receiver<BridgeLoss>>) -> Option<BridgeLoss> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Hand a stanza to its conference's actor. When the actor's queue is full the sender learns
/// it: an IQ (session-accept, mute, …) gets resource-constraint back (returned, to route) and
/// may be sent again; a presence or message has no answer, so the log line says which.
fn deliver_stanza(
    tx: &mpsc::Sender<ActorMsg>,
    room: &str,
    st: Element,
    focus_jid: &str,
) -> Option<Element> {
    let e = tx.try_send(ActorMsg::Input(Input::Stanza(st))).err()?;
    let closed = matches!(e, mpsc::error::TrySendError::Closed(_));
    let ActorMsg::Input(Input::Stanza(st)) = e.into_inner() else {
        return None;
    };
    if closed {
        // The conference has just ended (its actor is gone, the map learns it next): what
        // was for it, typically the focus's own leave presence, has nobody to go to.
        tracing::debug!(%room, stanza = st.name(), "conference ended; stanza dropped");
    } else {
        tracing::warn!(%room, stanza = st.name(), from = st.attr("from"), "conference queue full");
    }
    if st.name() != "iq" {
        return None;
    }
    let mut busy = if closed {
        stanza::error_reply(&st, StanzaError::ITEM_NOT_FOUND, Some("no conference"))?
    } else {
        stanza::error_reply(
            &st,
            StanzaError::RESOURCE_CONSTRAINT,
            Some("conference busy"),
        )?
    };
    stanza::set_attr(&mut busy, "from", st.attr("to").unwrap_or(focus_jid));
    Some(busy)
}

/// Hand an HTTP conference request to its actor; a full queue answers "conference busy".
fn deliver_http(
    tx: &mpsc::Sender<ActorMsg>,
    room: &str,
    reply: oneshot::Sender<Result<(), String>>,
) {
    if let Err(e) = tx.try_send(ActorMsg::Http(reply)) {
        tracing::warn!(%room, "conference queue full");
        if let ActorMsg::Http(reply) = e.into_inner() {
            let _ = reply.send(Err("conference busy".into()));
        }
    }
}

/// The room a room component's JSON notice is about.
fn component_room(st: &Element) -> Option<String> {
    let text = st
        .get_child("json-message", "http://jitsi.org/jitmeet")?
        .text();
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(v.get("room")?.as_str()?.to_string())
}

fn error_reply(router: &Router, iq: &Element, e: StanzaError, text: &str) {
    if let Some(r) = stanza::error_reply(iq, e, Some(text)) {
        router.route(r);
    }
}

/// The actor for `room`, started if needed.
#[allow(clippy::too_many_arguments)]
fn room_actor(
    router: &Arc<Router>,
    opts: &Arc<FocusOptions>,
    bridge: &Arc<dyn Bridge>,
    gw: &Gateways,
    rooms: &mut HashMap<String, Room>,
    generation: &mut u64,
    done: &mpsc::Sender<(String, u64)>,
    room: &str,
) -> Result<mpsc::Sender<ActorMsg>, (StanzaError, String)> {
    let room = room.to_lowercase();
    let valid = meetd_xmpp::jid::BareJid::new(&room).ok().filter(|j| {
        j.node().is_some() && opts.muc_domains.iter().any(|d| d == j.domain().as_str())
    });
    if valid.is_none() {
        return Err((StanzaError::BAD_REQUEST, format!("Invalid room: {room}")));
    }
    if let Some(r) = rooms.get(&room)
        && !r.tx.is_closed()
    {
        return Ok(r.tx.clone());
    }
    if opts.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return Err((
            StanzaError::SERVICE_UNAVAILABLE,
            "meetd is shutting down".into(),
        ));
    }
    if rooms.len() >= opts.max_conferences {
        return Err((
            StanzaError::RESOURCE_CONSTRAINT,
            "too many conferences".into(),
        ));
    }
    *generation += 1;
    let g = *generation;
    let (tx, rx) = mpsc::channel(opts.queue.max(16));
    rooms.insert(
        room.clone(),
        Room {
            tx: tx.clone(),
            generation: g,
        },
    );
    let conf = Conference::new(&room, opts.cfg.clone(), Instant::now(), rand::random());
    tokio::spawn(run_actor(
        conf,
        rx,
        tx.clone(),
        router.clone(),
        bridge.clone(),
        gw.clone(),
        done.clone(),
        g,
    ));
    Ok(tx)
}

#[allow(clippy::too_many_arguments)]
fn conference_iq(
    router: &Arc<Router>,
    opts: &Arc<FocusOptions>,
    bridge: &Arc<dyn Bridge>,
    gw: &Gateways,
    rooms: &mut HashMap<String, Room>,
    generation: &mut u64,
    done: &mpsc::Sender<(String, u64)>,
    iq: Element,
) {
    if iq.name() != "iq" {
        return;
    }
    let ty = iq.attr("type").unwrap_or("");
    if ty == "result" || ty == "error" {
        return;
    }
    let Some(c) = iq.get_child("conference", NS_FOCUS) else {
        // Disco on the focus component: say what it is.
        if stanza::payload(&iq)
            .is_some_and(|q| q.is("query", "http://jabber.org/protocol/disco#info"))
        {
            let q = Element::builder("query", "http://jabber.org/protocol/disco#info")
                .append(el(
                    "identity",
                    "http://jabber.org/protocol/disco#info",
                    &[
                        ("category", "component"),
                        ("type", "focus"),
                        ("name", "meetd focus"),
                    ],
                ))
                .append(el(
                    "feature",
                    "http://jabber.org/protocol/disco#info",
                    &[("var", NS_FOCUS)],
                ))
                .build();
            router.route(stanza::iq_result(&iq, Some(q)));
            return;
        }
        error_reply(
            router,
            &iq,
            StanzaError::SERVICE_UNAVAILABLE,
            "unsupported request",
        );
        return;
    };
    let Some(room) = c.attr("room").filter(|r| !r.is_empty()) else {
        error_reply(
            router,
            &iq,
            StanzaError::BAD_REQUEST,
            "No 'room' specified.",
        );
        return;
    };
    match room_actor(router, opts, bridge, gw, rooms, generation, done, room) {
        Ok(tx) => {
            if tx.try_send(ActorMsg::Request(iq.clone())).is_err() {
                error_reply(router, &iq, StanzaError::RESOURCE_CONSTRAINT, "busy");
            }
        }
        Err((e, text)) => error_reply(router, &iq, e, &text),
    }
}

/// Whether a conference request asks to join as a visitor (docs/visitors.md): it knows
/// visitors (`visitors-version`) and says `visitor=true`.
fn wants_visitor(iq: &Element) -> bool {
    let Some(c) = iq.get_child("conference", NS_FOCUS) else {
        return false;
    };
    let prop = |name: &str| {
        c.children()
            .find(|p| p.is("property", NS_FOCUS) && p.attr("name") == Some(name))
            .and_then(|p| p.attr("value"))
    };
    prop("visitors-version").is_some() && prop("visitor") == Some("true")
}

/// Whether a conference request's client knows visitors (`visitors-version`).
fn visitors_version(iq: &Element) -> bool {
    iq.get_child("conference", NS_FOCUS).is_some_and(|c| {
        c.children()
            .any(|p| p.is("property", NS_FOCUS) && p.attr("name") == Some("visitors-version"))
    })
}

/// The reply to a conference IQ (fixture 03): ready, the focus JID, properties. With `vnode`
/// the client is sent to the visitors' node (docs/visitors.md).
fn conference_reply(
    iq: &Element,
    focus_bare: &str,
    ready: bool,
    sip: bool,
    vnode: Option<&str>,
) -> Element {
    let room = iq
        .get_child("conference", NS_FOCUS)
        .and_then(|c| c.attr("room"))
        .unwrap_or("")
        .to_string();
    let mut c = Element::builder("conference", NS_FOCUS)
        .attr(stanza::rxml_name("room"), room)
        .attr(
            stanza::rxml_name("ready"),
            if ready { "true" } else { "false" },
        )
        .attr(stanza::rxml_name("focusjid"), focus_bare);
    if ready && let Some(v) = vnode {
        c = c.attr(stanza::rxml_name("vnode"), v);
    }
    let c = c
        .append(el(
            "property",
            NS_FOCUS,
            &[("name", "authentication"), ("value", "false")],
        ))
        .append(el(
            "property",
            NS_FOCUS,
            &[
                ("name", "visitors-supported"),
                ("value", if vnode.is_some() { "true" } else { "false" }),
            ],
        ));
    // The app offers phone dial-out to moderators when a Jigasi brewery is there.
    let c = if sip {
        c.append(el(
            "property",
            NS_FOCUS,
            &[("name", "sipGatewayEnabled"), ("value", "true")],
        ))
    } else {
        c
    };
    stanza::iq_result(iq, Some(c.build()))
}

/// Colibri2 requests of one conference waiting for the bridge at most.
const COLIBRI_QUEUE: usize = 256;

/// One conference's Colibri2 requests, sent to the bridge in order; each answer goes back to
/// the conference's actor while it runs.
async fn colibri_worker(
    bridge: Arc<dyn Bridge>,
    mut rx: mpsc::Receiver<(u64, ConferenceModify)>,
    tx: mpsc::Sender<ActorMsg>,
) {
    // Every queued request goes to the bridge, also after the conference has ended: its last
    // ones expire its endpoints and the bridge conference itself.
    while let Some((req, modify)) = rx.recv().await {
        let result = bridge.modify(modify).await;
        let _ = tx
            .send(ActorMsg::Input(Input::Colibri { req, result }))
            .await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_actor(
    mut conf: Conference,
    mut rx: mpsc::Receiver<ActorMsg>,
    self_tx: mpsc::Sender<ActorMsg>,
    router: Arc<Router>,
    bridge: Arc<dyn Bridge>,
    gw: Gateways,
    done: mpsc::Sender<(String, u64)>,
    generation: u64,
) {
    let room = conf.room.clone();
    let focus_bare = conf.focus_bare().to_string();
    let sip = gw.jigasi.is_some();
    let vnode_id = conf.visitor_vnode().map(str::to_string);
    // Where a request goes (docs/visitors.md §1): to the visitors' node when it asks to be a
    // visitor, or when the meeting is full of participants — never in a breakout room, nor
    // while the room has a lobby (as Jicofo: visitors and a lobby do not go together; the
    // person joins, through the lobby, as a participant).
    let main_room = room.rsplit_once('@').is_some_and(|(_, d)| d == gw.main_muc);
    let rooms = gw.rooms.clone();
    let redirect = |iq: &Element, conf: &Conference| -> Option<&str> {
        let v = vnode_id.as_deref()?;
        let knows = visitors_version(iq);
        let lobby = rooms
            .as_ref()
            .and_then(|d| d.room(&conf.room))
            .is_some_and(|r| r.lobby);
        (main_room && !lobby && knows && (wants_visitor(iq) || conf.full_of_participants()))
            .then_some(v)
    };
    let focus_jid = conf.focus_jid().to_string();
    let brewery = gw.jibri.clone();
    let mut waiting: Vec<Element> = Vec::new();
    let mut waiting_http: Vec<oneshot::Sender<Result<(), String>>> = Vec::new();
    let mut failed: Option<String> = None;
    let mut stopped = false;
    // Colibri2 requests go to the bridge one after the other, in the order the conference
    // made them: an endpoint's expiry must reach the bridge before its re-allocation.
    let (colibri_tx, colibri_rx) = mpsc::channel(COLIBRI_QUEUE);
    tokio::spawn(colibri_worker(bridge.clone(), colibri_rx, self_tx.clone()));
    loop {
        for o in conf.take_output() {
            match o {
                Output::Send(e) => {
                    router.route(e);
                }
                Output::Colibri { req, modify } => {
                    if colibri_tx.try_send((req, modify)).is_err() {
                        // As a busy bridge would answer (the conference retries or gives up).
                        tracing::warn!(%room, "Colibri2 request queue full");
                        let busy = Input::Colibri {
                            req,
                            result: Err(meetd_colibri::Colibri2Error::Busy),
                        };
                        if self_tx.try_send(ActorMsg::Input(busy)).is_err() {
                            tracing::warn!(%room, "conference queue full; Colibri2 answer lost");
                        }
                    }
                }
                Output::Ready => {
                    for iq in waiting.drain(..) {
                        let v = redirect(&iq, &conf);
                        router.route(conference_reply(&iq, &focus_bare, true, sip, v));
                    }
                    for h in waiting_http.drain(..) {
                        let _ = h.send(Ok(()));
                    }
                }
                Output::Failed(why) => {
                    tracing::warn!(%room, %why, "focus could not join the room");
                    failed = Some(why);
                }
                Output::Stopped => stopped = true,
                Output::JibriStart(req) => match (&brewery, &gw.streams) {
                    (Some(b), _) if !lock(&b.pool).is_empty() => {
                        tokio::spawn(b.clone().start(router.clone(), req, self_tx.clone()));
                    }
                    (_, Some(streams)) => {
                        // No Jibri: meetd streams it itself.
                        let tx = self_tx.clone();
                        let status_room = room.clone();
                        let status = Box::new(move |status| {
                            let input = Input::JibriStatus {
                                jibri: NATIVE.to_string(),
                                status,
                            };
                            if tx.try_send(ActorMsg::Input(input)).is_err() {
                                tracing::warn!(room = %status_room, "conference queue full; live-stream status lost");
                            }
                        });
                        let result = streams
                            .start(&req, conf.meeting_id(), status)
                            .map(|()| NATIVE.to_string());
                        let input = Input::JibriStarted {
                            session_id: req.session_id,
                            result,
                        };
                        if self_tx.try_send(ActorMsg::Input(input)).is_err() {
                            tracing::warn!(%room, "conference queue full; live-stream answer lost");
                        }
                    }
                    (Some(b), None) => {
                        tokio::spawn(b.clone().start(router.clone(), req, self_tx.clone()));
                    }
                    (None, None) => {
                        let (e, text) = jibri::NoJibri::Unavailable.error();
                        let input = Input::JibriStarted {
                            session_id: req.session_id,
                            result: Err((e, text.to_string())),
                        };
                        if self_tx.try_send(ActorMsg::Input(input)).is_err() {
                            tracing::warn!(%room, "conference queue full; Jibri answer lost");
                        }
                    }
                },
                Output::JigasiDial(iq) => match &gw.jigasi {
                    Some(j) => {
                        tokio::spawn(j.clone().dial(router.clone(), iq));
                    }
                    None => {
                        if let Some(mut e) = stanza::error_reply(
                            &iq,
                            StanzaError::SERVICE_UNAVAILABLE,
                            Some("no phone gateway"),
                        ) {
                            stanza::set_attr(&mut e, "from", &focus_jid);
                            router.route(e);
                        }
                    }
                },
                Output::JibriStop { jibri, session_id } if jibri == NATIVE => {
                    if let Some(streams) = &gw.streams {
                        streams.stop(&session_id);
                    }
                }
                Output::JibriStop { jibri, session_id } => {
                    if let Some(b) = &brewery {
                        b.stop(&router, &jibri, &session_id);
                    }
                }
            }
        }
        if let Some(why) = &failed {
            for iq in waiting.drain(..) {
                error_reply(&router, &iq, StanzaError::SERVICE_UNAVAILABLE, why);
            }
            for h in waiting_http.drain(..) {
                let _ = h.send(Err(why.clone()));
            }
        }
        if stopped {
            break;
        }
        let deadline = conf.poll_timeout().map(tokio::time::Instant::from_std);
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = sleep_opt(deadline) => Some(ActorMsg::Input(Input::Timeout)),
        };
        let Some(msg) = msg else { break };
        match msg {
            ActorMsg::Input(i) => conf.handle(i, Instant::now()),
            ActorMsg::Request(iq) => {
                if let Some(c) = iq.get_child("conference", NS_FOCUS) {
                    conf.request_properties(c);
                }
                if conf.is_ready() {
                    let v = redirect(&iq, &conf);
                    router.route(conference_reply(&iq, &focus_bare, true, sip, v));
                } else {
                    waiting.push(iq);
                }
            }
            ActorMsg::Http(h) => {
                if conf.is_ready() {
                    let _ = h.send(Ok(()));
                } else {
                    waiting_http.push(h);
                }
            }
        }
    }
    // Requests that arrived while stopping: the client retries and gets a fresh conference.
    for iq in waiting.drain(..) {
        router.route(conference_reply(&iq, &focus_bare, false, sip, None));
    }
    tracing::debug!(%room, "conference ended");
    let _ = done.send((room, generation)).await;
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

    fn parse(s: &str) -> Element {
        meetd_xmpp::xml::parse_document(s.as_bytes(), &Default::default()).unwrap()
    }

    /// docs/visitors.md §1: a client that knows visitors and asks to be one is sent to the
    /// vnode with the focus it is to trust; an old client or a participant is not.
    #[test]
    fn a_request_to_be_a_visitor_is_sent_to_the_vnode() {
        let req = |props: &str| {
            parse(&format!(
                "<iq xmlns='jabber:client' type='set' id='c1' from='u@meet.jitsi/r' to='focus.meet.jitsi'><conference xmlns='http://jitsi.org/protocol/focus' room='r@muc.meet.jitsi'>{props}</conference></iq>"
            ))
        };
        let visitor = req(
            "<property name='visitors-version' value='1'/><property name='visitor' value='true'/>",
        );
        let plain = req("<property name='visitors-version' value='1'/>");
        let old = req("<property name='visitor' value='true'/>");
        assert!(wants_visitor(&visitor) && !wants_visitor(&plain) && !wants_visitor(&old));
        assert!(visitors_version(&plain) && !visitors_version(&old));
        let r = conference_reply(&visitor, "focus@auth.meet.jitsi", true, false, Some("v1"));
        let c = r.get_child("conference", NS_FOCUS).unwrap();
        assert_eq!(c.attr("vnode"), Some("v1"));
        assert_eq!(c.attr("focusjid"), Some("focus@auth.meet.jitsi"));
        assert_eq!(c.attr("ready"), Some("true"));
        let r = conference_reply(&plain, "focus@auth.meet.jitsi", true, false, None);
        assert_eq!(
            r.get_child("conference", NS_FOCUS).unwrap().attr("vnode"),
            None
        );
        // Not ready: no redirect yet.
        let r = conference_reply(&visitor, "focus@auth.meet.jitsi", false, false, Some("v1"));
        assert_eq!(
            r.get_child("conference", NS_FOCUS).unwrap().attr("vnode"),
            None
        );
    }

    /// A conference actor's queue with its one place taken.
    fn full_queue() -> (mpsc::Sender<ActorMsg>, mpsc::Receiver<ActorMsg>) {
        let (tx, rx) = mpsc::channel(1);
        assert!(tx.try_send(ActorMsg::Input(Input::Timeout)).is_ok());
        (tx, rx)
    }

    #[test]
    fn a_full_conference_queue_answers_iqs_busy_and_drops_nothing_silently() {
        let (tx, mut rx) = full_queue();
        let iq = parse(
            "<iq xmlns='jabber:client' type='set' id='j1' from='r@muc.example/abcd' \
             to='focus@auth.example/focus'><jingle xmlns='urn:xmpp:jingle:1' \
             action='session-accept' sid='s'/></iq>",
        );
        let busy = deliver_stanza(&tx, "r@muc.example", iq, "focus@auth.example/focus")
            .expect("an IQ is answered");
        assert_eq!(busy.attr("type"), Some("error"));
        assert_eq!(busy.attr("id"), Some("j1"));
        assert_eq!(busy.attr("to"), Some("r@muc.example/abcd"));
        assert_eq!(busy.attr("from"), Some("focus@auth.example/focus"));
        let err = busy.get_child("error", "jabber:client").expect("error");
        assert!(err.children().any(|c| c.name() == "resource-constraint"));
        // A presence has no answer (logged).
        let p = parse("<presence xmlns='jabber:client' from='r@muc.example/abcd'/>");
        assert!(deliver_stanza(&tx, "r@muc.example", p, "focus").is_none());
        // With room again, the stanza reaches the actor.
        assert!(rx.try_recv().is_ok());
        let p = parse("<presence xmlns='jabber:client' from='r@muc.example/abcd'/>");
        assert!(deliver_stanza(&tx, "r@muc.example", p, "focus").is_none());
        assert!(matches!(
            rx.try_recv(),
            Ok(ActorMsg::Input(Input::Stanza(_)))
        ));
    }

    #[test]
    fn a_full_conference_queue_answers_http_busy() {
        let (tx, _rx) = full_queue();
        let (reply, answer) = oneshot::channel();
        deliver_http(&tx, "r@muc.example", reply);
        assert_eq!(
            answer.blocking_recv().ok(),
            Some(Err("conference busy".to_string()))
        );
    }

    /// A bridge that takes longer for the first request than for the second, and notes when
    /// each starts and ends.
    struct SlowFirst(std::sync::Mutex<Vec<String>>);

    impl Bridge for SlowFirst {
        fn modify(
            &self,
            req: ConferenceModify,
        ) -> meetd_colibri::service::BoxFuture<
            '_,
            Result<meetd_colibri::ConferenceModified, meetd_colibri::Colibri2Error>,
        > {
            Box::pin(async move {
                let id = req.meeting_id.clone();
                self.0.lock().unwrap().push(format!("start {id}"));
                let ms = if id == "expire" { 50 } else { 1 };
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                self.0.lock().unwrap().push(format!("end {id}"));
                Ok(meetd_colibri::ConferenceModified::default())
            })
        }
    }

    /// An endpoint's expiry reaches the bridge before its re-allocation, however long the
    /// bridge takes for it, and the answers come back in order.
    #[tokio::test]
    async fn colibri_requests_reach_the_bridge_in_order() {
        let bridge = Arc::new(SlowFirst(std::sync::Mutex::new(Vec::new())));
        let (tx, rx) = mpsc::channel(8);
        let (actor_tx, mut actor_rx) = mpsc::channel(8);
        tokio::spawn(colibri_worker(bridge.clone(), rx, actor_tx));
        tx.send((1, ConferenceModify::new("expire"))).await.unwrap();
        tx.send((2, ConferenceModify::new("create"))).await.unwrap();
        for want in [1, 2] {
            match actor_rx.recv().await {
                Some(ActorMsg::Input(Input::Colibri { req, .. })) => assert_eq!(req, want),
                _ => panic!("no answer {want}"),
            }
        }
        assert_eq!(
            *bridge.0.lock().unwrap(),
            ["start expire", "end expire", "start create", "end create"]
        );
    }
}
