//! The bridge channel (`/colibri-ws/<bridge>/<conference>/<endpoint>?pwd=…`): JSON messages
//! between the bridge and each endpoint (docs/bridge.md Part A).
//!
//! [`ChannelHub`] holds one bounded outbound queue per connected endpoint and the receivers'
//! latest constraints; [`ChannelHub::client_message`] is the sans-IO handling of one message
//! from a client. The WebSocket glue is [`serve`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::mpsc;

pub mod events;
pub mod sctp;

pub use crate::media::ReceiverConstraints;
use crate::service::ColibriService;

type Key = (String, String);

struct Conn {
    tx: mpsc::Sender<String>,
    generation: u64,
    /// A relay's channel to another bridge (docs/bridge.md B.15), keyed by the relay id.
    relay: bool,
}

/// All connected bridge channels.
pub struct ChannelHub {
    conns: Mutex<HashMap<Key, Conn>>,
    constraints: Mutex<HashMap<Key, ReceiverConstraints>>,
    video_types: Mutex<HashMap<(String, String), String>>,
    next: Mutex<u64>,
    queue: usize,
    engine: Mutex<Option<crate::driver::EngineHandle>>,
    /// The latest message of some classes, per conference (DominantSpeakerEndpointChangeEvent)
    /// and per endpoint (ForwardedSources, VideoSourcesMap, AudioSourcesMap): sent again to a
    /// channel when it (re)connects.
    sticky_conf: Mutex<HashMap<String, HashMap<String, String>>>,
    sticky_ep: Mutex<HashMap<Key, HashMap<String, String>>>,
    /// Endpoints whose bridge channel is an SCTP data channel: where the engine's reports of
    /// their messages go (the channel's task reads them, [`sctp`]).
    sctp_in: Mutex<HashMap<Key, mpsc::Sender<String>>>,
    /// Visitors' endpoints (docs/visitors.md): what they send for others is dropped.
    visitors: Mutex<std::collections::HashSet<Key>>,
}

/// What one client message asks the bridge to do.
#[derive(Debug, PartialEq)]
pub enum Effect {
    /// Send this JSON text to that endpoint of the same conference.
    Send { to: String, text: String },
    /// The receiver's constraints changed (the media engine should re-select layers).
    Constraints(ReceiverConstraints),
    /// The sender declared the video type of one of its sources.
    VideoType { source: String, video_type: String },
    /// The bridge behind a relay wants one of this bridge's senders' sources at most this
    /// high (its `AddReceiver`; 0: not at all).
    RelayWants { source: String, max_height: u32 },
    /// Nothing to do (or the message was invalid and logged).
    None,
}

impl ChannelHub {
    pub fn new(queue: usize) -> Arc<ChannelHub> {
        Arc::new(ChannelHub {
            conns: Mutex::new(HashMap::new()),
            constraints: Mutex::new(HashMap::new()),
            video_types: Mutex::new(HashMap::new()),
            next: Mutex::new(0),
            queue: queue.max(1),
            engine: Mutex::new(None),
            sticky_conf: Mutex::new(HashMap::new()),
            sticky_ep: Mutex::new(HashMap::new()),
            sctp_in: Mutex::new(HashMap::new()),
            visitors: Mutex::new(Default::default()),
        })
    }

    /// Remember `text` as the conference's current message under `key` (`None` forgets it):
    /// every channel of the conference that connects later gets it (except a key ending in
    /// `/<that endpoint>`, which is about the endpoint itself). Returns the previous one.
    pub fn set_conference_sticky(
        &self,
        conf: &str,
        key: &str,
        text: Option<String>,
    ) -> Option<String> {
        let mut all = self.sticky_conf.lock();
        match text {
            Some(t) => all
                .entry(conf.to_string())
                .or_default()
                .insert(key.to_string(), t),
            None => {
                let m = all.get_mut(conf)?;
                let old = m.remove(key);
                if m.is_empty() {
                    all.remove(conf);
                }
                old
            }
        }
    }

    /// Remember `text` as the endpoint's current `class` message, sent again when its channel
    /// (re)connects.
    pub fn set_endpoint_sticky(&self, conf: &str, ep: &str, class: &str, text: String) {
        self.sticky_ep
            .lock()
            .entry((conf.to_string(), ep.to_string()))
            .or_default()
            .insert(class.to_string(), text);
    }

    /// The endpoint expired: close its socket and forget what was kept for it.
    /// A new endpoint took this id (the focus allocated it again): what was kept for the
    /// previous one (source maps, constraints) must not reach the new one's channel.
    pub fn reset_endpoint(&self, conf: &str, ep: &str) {
        let key = (conf.to_string(), ep.to_string());
        self.sticky_ep.lock().remove(&key);
        self.constraints.lock().remove(&key);
    }

    /// Whether the endpoint is a visitor's (its messages for others are dropped).
    pub fn set_visitor(&self, conf: &str, ep: &str, visitor: bool) {
        let key = (conf.to_string(), ep.to_string());
        let mut v = self.visitors.lock();
        if visitor {
            v.insert(key);
        } else {
            v.remove(&key);
        }
    }

    pub fn forget_endpoint(&self, conf: &str, ep: &str) {
        let key = (conf.to_string(), ep.to_string());
        self.visitors.lock().remove(&key);
        {
            let mut sticky = self.sticky_ep.lock();
            sticky.remove(&key);
            // What this bridge wanted of it, if it was another bridge's participant (its
            // sources are named `<endpoint>-…`).
            let wanted = format!("AddReceiver/{ep}-");
            for ((c, _), m) in sticky.iter_mut() {
                if c == conf {
                    m.retain(|k, _| !k.starts_with(&wanted));
                }
            }
        }
        self.conns.lock().remove(&key);
        self.constraints.lock().remove(&key);
        self.sctp_in.lock().remove(&key);
    }

    /// The conference ended: close its sockets and forget everything kept for it.
    pub fn forget_conference(&self, conf: &str) {
        self.sticky_conf.lock().remove(conf);
        self.sticky_ep.lock().retain(|(c, _), _| c != conf);
        self.conns.lock().retain(|(c, _), _| c != conf);
        self.constraints.lock().retain(|(c, _), _| c != conf);
        self.video_types.lock().retain(|(c, _), _| c != conf);
        self.sctp_in.lock().retain(|(c, _), _| c != conf);
        self.visitors.lock().retain(|(c, _)| c != conf);
    }

    /// What a channel gets right after it connects, after ServerHello: the endpoint's latest
    /// ForwardedSources (`[]` if none yet, as JVB), its source maps, then the conference's
    /// messages (dominant speaker, inactive endpoints).
    pub fn on_connect_messages(&self, conf: &str, ep: &str) -> Vec<String> {
        let mut out = Vec::new();
        let eps = self.sticky_ep.lock();
        let mine = eps.get(&(conf.to_string(), ep.to_string()));
        match mine.and_then(|m| m.get("ForwardedSources")) {
            Some(t) => out.push(t.clone()),
            None => out.push(
                json!({"colibriClass": "ForwardedSources", "forwardedSources": []}).to_string(),
            ),
        }
        for class in ["AudioSourcesMap", "VideoSourcesMap"] {
            if let Some(t) = mine.and_then(|m| m.get(class)) {
                out.push(t.clone());
            }
        }
        // What this endpoint's own sources are needed at (SenderSourceConstraints).
        if let Some(m) = mine {
            let mut v: Vec<_> = m
                .iter()
                .filter(|(k, _)| k.starts_with("SenderSourceConstraints/"))
                .collect();
            v.sort();
            out.extend(v.into_iter().map(|(_, t)| t.clone()));
        }
        drop(eps);
        if let Some(m) = self.sticky_conf.lock().get(conf) {
            let own = format!("/{ep}");
            let mut v: Vec<_> = m.iter().filter(|(k, _)| !k.ends_with(&own)).collect();
            v.sort();
            out.extend(v.into_iter().map(|(_, t)| t.clone()));
        }
        out
    }

    /// What a relay's channel gets right after it connects: this bridge's `AddReceiver`s
    /// for the other bridge's sources.
    pub fn relay_connect_messages(&self, conf: &str, relay: &str) -> Vec<String> {
        let eps = self.sticky_ep.lock();
        let Some(m) = eps.get(&(conf.to_string(), relay.to_string())) else {
            return Vec::new();
        };
        let mut v: Vec<_> = m
            .iter()
            .filter(|(k, _)| k.starts_with("AddReceiver/"))
            .collect();
        v.sort();
        v.into_iter().map(|(_, t)| t.clone()).collect()
    }

    /// Receivers' constraints go to this media engine.
    pub fn set_engine(&self, e: crate::driver::EngineHandle) {
        *self.engine.lock() = Some(e);
    }

    /// Endpoints of `conf` with an open channel.
    pub fn connected(&self, conf: &str) -> Vec<String> {
        self.open(conf, false)
    }

    /// Relays of `conf` with an open channel to their bridge.
    pub fn relays(&self, conf: &str) -> Vec<String> {
        self.open(conf, true)
    }

    fn open(&self, conf: &str, relays: bool) -> Vec<String> {
        let mut v: Vec<String> = self
            .conns
            .lock()
            .iter()
            .filter(|((c, _), conn)| c == conf && conn.relay == relays)
            .map(|((_, e), _)| e.clone())
            .collect();
        v.sort();
        v
    }

    /// One message from another bridge on relay `relay`'s channel: an endpoint message or
    /// endpoint stats of one of its participants (`from` as that bridge set it), for the
    /// participants here it is addressed to. Nothing goes on to another relay.
    pub fn relay_message(&self, conf: &str, relay: &str, text: &str) -> Vec<Effect> {
        let Ok(Value::Object(msg)) = serde_json::from_str::<Value>(text) else {
            tracing::debug!(%conf, %relay, "invalid relay channel message");
            return vec![Effect::None];
        };
        let class = msg
            .get("colibriClass")
            .and_then(|c| c.as_str())
            .unwrap_or("");
        if class == "AddReceiver" {
            let source = msg.get("sourceName").and_then(|s| s.as_str());
            let h = msg
                .get("videoConstraints")
                .and_then(|v| v.get("maxHeight"))
                .and_then(|h| h.as_i64());
            return match (source, h) {
                (Some(s), Some(h)) if !s.is_empty() => vec![Effect::RelayWants {
                    source: s.to_string(),
                    // -1 (or any negative): no limit.
                    max_height: u32::try_from(h).unwrap_or(u32::MAX),
                }],
                _ => {
                    tracing::debug!(%conf, %relay, "AddReceiver without sourceName or maxHeight");
                    vec![Effect::None]
                }
            };
        }
        if !matches!(class, "EndpointMessage" | "EndpointStats") {
            return vec![Effect::None];
        }
        let from = msg.get("from").and_then(|f| f.as_str()).unwrap_or("");
        let to = msg.get("to").and_then(|t| t.as_str()).unwrap_or("");
        let local = self.connected(conf);
        let targets: Vec<String> = if to.is_empty() {
            local.into_iter().filter(|e| e != from).collect()
        } else if local.iter().any(|e| e == to) {
            vec![to.to_string()]
        } else {
            Vec::new()
        };
        targets
            .into_iter()
            .map(|to| Effect::Send {
                to,
                text: text.to_string(),
            })
            .collect()
    }

    pub fn constraints(&self, conf: &str, ep: &str) -> Option<ReceiverConstraints> {
        self.constraints
            .lock()
            .get(&(conf.to_string(), ep.to_string()))
            .cloned()
    }

    /// Queue a message for an endpoint; dropped (and logged) when its queue is full.
    pub fn send(&self, conf: &str, ep: &str, text: String) -> bool {
        let tx = self
            .conns
            .lock()
            .get(&(conf.to_string(), ep.to_string()))
            .map(|c| c.tx.clone());
        match tx {
            Some(tx) => match tx.try_send(text) {
                Ok(()) => true,
                Err(e) => {
                    // Loud: a dropped source map leaves the client with a stale SSRC mapping
                    // (a remote track that never plays) until its channel reconnects.
                    let text = e.into_inner();
                    let class = text
                        .split("\"colibriClass\":\"")
                        .nth(1)
                        .and_then(|r| r.split('"').next())
                        .unwrap_or("?");
                    tracing::warn!(%conf, %ep, class, "bridge channel queue full, message dropped");
                    false
                }
            },
            None => false,
        }
    }

    /// One message from a client: validate, update state, and say what to relay.
    pub fn client_message(&self, conf: &str, from: &str, text: &str) -> Vec<Effect> {
        let Ok(Value::Object(mut msg)) = serde_json::from_str::<Value>(text) else {
            tracing::debug!(%conf, %from, "invalid bridge channel message");
            return vec![Effect::None];
        };
        let class = msg
            .get("colibriClass")
            .and_then(|c| c.as_str())
            .unwrap_or("")
            .to_string();
        match class.as_str() {
            "EndpointMessage" | "EndpointStats"
                if self
                    .visitors
                    .lock()
                    .contains(&(conf.to_string(), from.to_string())) =>
            {
                // A visitor is not in the meeting: nothing it sends reaches the others.
                tracing::debug!(%conf, %from, class, "a visitor's message dropped");
                vec![Effect::None]
            }
            "EndpointMessage" | "EndpointStats" => {
                // The bridge sets `from`: clients cannot speak for others.
                msg.insert("from".into(), json!(from));
                let to = msg
                    .get("to")
                    .and_then(|t| t.as_str())
                    .unwrap_or("")
                    .to_string();
                if class == "EndpointMessage" && !msg.contains_key("to") {
                    return vec![Effect::None];
                }
                let text = Value::Object(msg).to_string();
                // Participants of other bridges are reached through the relays' channels.
                let local = self.connected(conf);
                let targets: Vec<String> = if to.is_empty() {
                    local
                        .into_iter()
                        .filter(|e| e != from)
                        .chain(self.relays(conf))
                        .collect()
                } else if local.contains(&to) {
                    vec![to]
                } else {
                    self.relays(conf)
                };
                targets
                    .into_iter()
                    .map(|to| Effect::Send {
                        to,
                        text: text.clone(),
                    })
                    .collect()
            }
            "ReceiverVideoConstraints" => {
                let key = (conf.to_string(), from.to_string());
                let mut all = self.constraints.lock();
                let first = !all.contains_key(&key);
                let c = all.entry(key).or_default();
                if let Some(n) = msg.get("lastN").and_then(|v| v.as_i64()) {
                    c.last_n = Some(n);
                }
                match msg
                    .get("defaultConstraints")
                    .and_then(|d| d.get("maxHeight"))
                    .and_then(|v| v.as_i64())
                {
                    Some(h) => c.default_max_height = Some(h),
                    // docs/bridge.md A.3: a first message without defaults means 180.
                    None if first => c.default_max_height = Some(180),
                    None => {}
                }
                if let Some(Value::Object(cs)) = msg.get("constraints") {
                    c.constraints = cs
                        .iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.get("maxHeight")?.as_i64()?)))
                        .collect();
                }
                let strings = |v: Option<&Value>| -> Option<Vec<String>> {
                    Some(
                        v?.as_array()?
                            .iter()
                            .filter_map(|s| s.as_str().map(str::to_string))
                            .collect(),
                    )
                };
                if let Some(v) = strings(msg.get("onStageSources")) {
                    c.on_stage = v;
                }
                if let Some(v) = strings(msg.get("selectedSources")) {
                    c.selected = v;
                }
                vec![Effect::Constraints(c.clone())]
            }
            "LastNChangedEvent" => {
                let key = (conf.to_string(), from.to_string());
                let mut all = self.constraints.lock();
                let c = all.entry(key).or_default();
                c.last_n = msg.get("lastN").and_then(|v| v.as_i64());
                vec![Effect::Constraints(c.clone())]
            }
            "SourceVideoTypeMessage" => {
                if let (Some(s), Some(t)) = (
                    msg.get("sourceName").and_then(|v| v.as_str()),
                    msg.get("videoType").and_then(|v| v.as_str()),
                ) {
                    self.video_types
                        .lock()
                        .insert((conf.to_string(), s.to_string()), t.to_string());
                    return vec![Effect::VideoType {
                        source: s.to_string(),
                        video_type: t.to_string(),
                    }];
                }
                vec![Effect::None]
            }
            // Deprecated endpoint-level form: the endpoint's first video source.
            "VideoTypeMessage" => match msg.get("videoType").and_then(|v| v.as_str()) {
                Some(t) => vec![Effect::VideoType {
                    source: format!("{from}-v0"),
                    video_type: t.to_string(),
                }],
                None => vec![Effect::None],
            },
            "ClientHello" => vec![Effect::Send {
                to: from.to_string(),
                text: json!({"colibriClass": "ServerHello"}).to_string(),
            }],
            // Accepted and ignored for now.
            "ReceiverAudioSubscription" => vec![Effect::None],
            _ => {
                tracing::debug!(%conf, %from, class, "unknown bridge channel message");
                vec![Effect::None]
            }
        }
    }

    pub(crate) fn register(&self, conf: &str, ep: &str) -> (mpsc::Receiver<String>, u64) {
        self.register_as(conf, ep, false)
    }

    fn register_as(&self, conf: &str, ep: &str, relay: bool) -> (mpsc::Receiver<String>, u64) {
        let (tx, rx) = mpsc::channel(self.queue);
        let g = {
            let mut n = self.next.lock();
            *n += 1;
            *n
        };
        // A new socket replaces the previous one for that endpoint.
        self.conns.lock().insert(
            (conf.to_string(), ep.to_string()),
            Conn {
                tx,
                generation: g,
                relay,
            },
        );
        (rx, g)
    }

    fn unregister(&self, conf: &str, ep: &str, generation: u64) {
        let key = (conf.to_string(), ep.to_string());
        let mut conns = self.conns.lock();
        if conns.get(&key).is_some_and(|c| c.generation == generation) {
            conns.remove(&key);
        }
    }
}

/// Answer `GET /colibri-ws/<bridge>/<conf>/<endpoint>?pwd=…`.
pub fn serve(
    hub: Arc<ChannelHub>,
    service: Arc<ColibriService>,
    ws: WebSocketUpgrade,
    conf: String,
    endpoint: String,
    query: Option<&str>,
    peer: IpAddr,
) -> Response {
    // JVB takes everything after `pwd=` as the password.
    let pwd = query.and_then(|q| q.strip_prefix("pwd=")).unwrap_or("");
    if !service.check_ws(&conf, &endpoint, pwd) {
        tracing::info!(%peer, %conf, %endpoint, "bridge channel authentication failed");
        return (StatusCode::FORBIDDEN, "authentication failed\n").into_response();
    }
    ws.read_buffer_size(4096)
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| run(hub, socket, conf, endpoint))
}

/// Answer `GET /colibri-relay-ws/<bridge>/<conf>/<relay>?pwd=…`: the other bridge of a
/// relay dials its channel (docs/bridge.md B.15).
pub fn serve_relay(
    hub: Arc<ChannelHub>,
    service: Arc<ColibriService>,
    ws: WebSocketUpgrade,
    conf: String,
    relay: String,
    query: Option<&str>,
    peer: IpAddr,
) -> Response {
    let pwd = query.and_then(|q| q.strip_prefix("pwd=")).unwrap_or("");
    if !service.check_relay_ws(&conf, &relay, pwd) {
        tracing::info!(%peer, %conf, %relay, "relay channel authentication failed");
        return (StatusCode::FORBIDDEN, "authentication failed\n").into_response();
    }
    ws.read_buffer_size(4096)
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| drive_relay(hub, WsLink(socket), conf, relay))
}

/// Carry one relay's channel until either side ends it: endpoint messages of the other
/// bridge's participants in, those of this bridge's participants out.
pub async fn drive_relay<L: Link>(hub: Arc<ChannelHub>, mut link: L, conf: String, relay: String) {
    let (mut rx, generation) = hub.register_as(&conf, &relay, true);
    tracing::debug!(%conf, %relay, "relay channel open");
    // What this bridge wants of the other's senders, as last computed.
    for text in hub.relay_connect_messages(&conf, &relay) {
        if !link.send(text).await {
            hub.unregister(&conf, &relay, generation);
            return;
        }
    }
    loop {
        tokio::select! {
            m = link.recv() => match m {
                Some(text) => {
                    for e in hub.relay_message(&conf, &relay, &text) {
                        match e {
                            Effect::Send { to, text } => {
                                hub.send(&conf, &to, text);
                            }
                            Effect::RelayWants { source, max_height } => {
                                let engine = hub.engine.lock().clone();
                                if let Some(engine) = engine {
                                    let _ = engine
                                        .send_hint(crate::driver::Command::RelayWants {
                                            conf: conf.clone(),
                                            relay: relay.clone(),
                                            source,
                                            max_height,
                                        })
                                        .await;
                                }
                            }
                            _ => {}
                        }
                    }
                }
                None => break,
            },
            out = rx.recv() => match out {
                Some(text) => {
                    if !link.send(text).await {
                        break;
                    }
                }
                None => {
                    link.close().await;
                    break;
                }
            },
        }
    }
    hub.unregister(&conf, &relay, generation);
    tracing::debug!(%conf, %relay, "relay channel closed");
}

/// One bridge channel's two directions, whatever carries them: the WebSocket here, a relay's
/// WebSocket to another bridge, or the SCTP data channel inside the media transport
/// ([`sctp`]).
#[allow(async_fn_in_trait)]
pub trait Link {
    /// The next text message from the client; `None` once the channel is gone.
    async fn recv(&mut self) -> Option<String>;
    /// Send one message; false when the channel is gone.
    async fn send(&mut self, text: String) -> bool;
    /// The bridge ends the channel (a newer one replaced it, or the endpoint expired).
    async fn close(&mut self);
}

struct WsLink(WebSocket);

impl Link for WsLink {
    async fn recv(&mut self) -> Option<String> {
        loop {
            match self.0.recv().await {
                Some(Ok(Message::Text(t))) => return Some(t.as_str().to_string()),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Binary(_))) => {}
                _ => return None,
            }
        }
    }

    async fn send(&mut self, text: String) -> bool {
        self.0.send(Message::Text(text.into())).await.is_ok()
    }

    async fn close(&mut self) {
        let _ = self.0.send(Message::Close(None)).await;
    }
}

async fn run(hub: Arc<ChannelHub>, socket: WebSocket, conf: String, ep: String) {
    drive(hub, WsLink(socket), conf, ep, "websocket").await;
}

/// Serve one bridge channel until either side ends it: ServerHello and the current state
/// first, then the client's messages applied and the bridge's queued ones sent.
pub(crate) async fn drive<L: Link>(
    hub: Arc<ChannelHub>,
    mut link: L,
    conf: String,
    ep: String,
    kind: &'static str,
) {
    let (mut rx, generation) = hub.register(&conf, &ep);
    tracing::debug!(%conf, %ep, kind, "bridge channel open");
    // docs/bridge.md A.2: ServerHello, then the current state.
    let mut hello = vec![json!({"colibriClass": "ServerHello"}).to_string()];
    hello.extend(hub.on_connect_messages(&conf, &ep));
    for h in hello {
        if !link.send(h).await {
            hub.unregister(&conf, &ep, generation);
            return;
        }
    }
    loop {
        tokio::select! {
            m = link.recv() => match m {
                Some(text) => hub.apply(&conf, &ep, &text).await,
                None => break,
            },
            out = rx.recv() => match out {
                Some(text) => {
                    if !link.send(text).await {
                        break;
                    }
                }
                // Replaced by a newer channel or the endpoint expired.
                None => {
                    link.close().await;
                    break;
                }
            },
        }
    }
    hub.unregister(&conf, &ep, generation);
    tracing::debug!(%conf, %ep, kind, "bridge channel closed");
}

impl ChannelHub {
    /// One client message, applied: relayed to the others, or handed to the engine.
    async fn apply(&self, conf: &str, ep: &str, text: &str) {
        for e in self.client_message(conf, ep, text) {
            let cmd = match e {
                Effect::Send { to, text } => {
                    self.send(conf, &to, text);
                    continue;
                }
                Effect::Constraints(c) => crate::driver::Command::Constraints {
                    conf: conf.to_string(),
                    ep: ep.to_string(),
                    constraints: c,
                },
                Effect::VideoType { source, video_type } => {
                    crate::driver::Command::SourceVideoType {
                        conf: conf.to_string(),
                        ep: ep.to_string(),
                        source,
                        video_type,
                    }
                }
                // Only relays' channels say what they want.
                Effect::RelayWants { .. } | Effect::None => continue,
            };
            let engine = self.engine.lock().clone();
            if let Some(engine) = engine {
                let _ = engine.send_hint(cmd).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new endpoint with the id of an earlier one (the focus allocated it again) must not
    /// get the earlier one's source maps when its channel connects: the client would map the
    /// same sources to two SSRCs and show two tracks of each.
    #[test]
    fn a_reallocated_endpoint_starts_without_the_old_source_maps() {
        let hub = ChannelHub::new(8);
        hub.set_endpoint_sticky("c", "a", "VideoSourcesMap", "old".into());
        assert!(
            hub.on_connect_messages("c", "a")
                .contains(&"old".to_string())
        );
        hub.reset_endpoint("c", "a");
        assert!(
            !hub.on_connect_messages("c", "a")
                .contains(&"old".to_string())
        );
    }

    /// docs/bridge.md B.15: participants of another bridge are reached through the relay's
    /// channel; what comes from a relay reaches only this bridge's participants.
    #[test]
    fn endpoint_messages_cross_to_other_bridges_and_not_further() {
        let hub = ChannelHub::new(8);
        let (_ra, _) = hub.register("c", "a");
        let (_rb, _) = hub.register("c", "b");
        let (_r1, _) = hub.register_as("c", "bridge-2", true);
        let (_r2, _) = hub.register_as("c", "bridge-3", true);
        assert_eq!(hub.connected("c"), ["a", "b"], "relays are no participants");
        let sends = |fx: Vec<Effect>| -> Vec<String> {
            let mut v: Vec<String> = fx
                .into_iter()
                .filter_map(|e| match e {
                    Effect::Send { to, .. } => Some(to),
                    _ => None,
                })
                .collect();
            v.sort();
            v
        };
        let all = r#"{"colibriClass":"EndpointMessage","to":"","msgPayload":{"x":1}}"#;
        assert_eq!(
            sends(hub.client_message("c", "a", all)),
            ["b", "bridge-2", "bridge-3"]
        );
        let far = r#"{"colibriClass":"EndpointMessage","to":"zz","msgPayload":{}}"#;
        assert_eq!(
            sends(hub.client_message("c", "a", far)),
            ["bridge-2", "bridge-3"]
        );
        let near = r#"{"colibriClass":"EndpointMessage","to":"b","msgPayload":{}}"#;
        assert_eq!(sends(hub.client_message("c", "a", near)), ["b"]);
        // From a relay: to everyone here but its sender, or to the one named if here.
        let from_far = r#"{"colibriClass":"EndpointMessage","to":"","from":"a","msgPayload":{}}"#;
        assert_eq!(sends(hub.relay_message("c", "bridge-2", from_far)), ["b"]);
        let to_b = r#"{"colibriClass":"EndpointStats","to":"b","from":"zz"}"#;
        assert_eq!(sends(hub.relay_message("c", "bridge-2", to_b)), ["b"]);
        let elsewhere = r#"{"colibriClass":"EndpointMessage","to":"qq","from":"zz"}"#;
        assert!(sends(hub.relay_message("c", "bridge-2", elsewhere)).is_empty());
        let other = r#"{"colibriClass":"DominantSpeakerEndpointChangeEvent","dominantSpeakerEndpoint":"zz"}"#;
        assert!(sends(hub.relay_message("c", "bridge-2", other)).is_empty());
    }

    /// docs/bridge.md B.15: the other bridge's `AddReceiver` says how much of a source it
    /// wants; ours goes out on the relay's channel and again when it reconnects.
    #[test]
    fn add_receiver_between_bridges() {
        let hub = ChannelHub::new(8);
        let want = |h: &str| {
            format!(
                r#"{{"colibriClass":"AddReceiver","bridgeId":"jvb3","sourceName":"a-v0","videoConstraints":{{"maxHeight":{h}}}}}"#
            )
        };
        assert_eq!(
            hub.relay_message("c", "jvb3", &want("360")),
            vec![Effect::RelayWants {
                source: "a-v0".into(),
                max_height: 360
            }]
        );
        assert_eq!(
            hub.relay_message("c", "jvb3", &want("-1")),
            vec![Effect::RelayWants {
                source: "a-v0".into(),
                max_height: u32::MAX
            }]
        );
        let bad = r#"{"colibriClass":"AddReceiver","videoConstraints":{"maxHeight":1}}"#;
        assert_eq!(hub.relay_message("c", "jvb3", bad), vec![Effect::None]);
        // Ours: sent now if the channel is open, and kept for its next connection.
        let (mut rx, _) = hub.register_as("c", "jvb3", true);
        events::event(
            &hub,
            None,
            crate::media::EngineEvent::RelayWants {
                conference: "c".into(),
                relay: "jvb3".into(),
                source: "z-v0".into(),
                max_height: 0,
            },
        );
        let sent = rx.try_recv().unwrap();
        let v: serde_json::Value = serde_json::from_str(&sent).unwrap();
        assert_eq!(v["colibriClass"], "AddReceiver");
        assert_eq!(v["sourceName"], "z-v0");
        assert_eq!(v["videoConstraints"]["maxHeight"], 0);
        assert_eq!(hub.relay_connect_messages("c", "jvb3"), [sent]);
        assert!(hub.relay_connect_messages("c", "other").is_empty());
        // The other bridge's participant z leaves: nothing is kept for its sources.
        hub.forget_endpoint("c", "z");
        assert!(hub.relay_connect_messages("c", "jvb3").is_empty());
    }

    #[test]
    fn a_visitors_messages_reach_nobody() {
        let hub = ChannelHub::new(8);
        let (_ra, _) = hub.register("c", "a");
        let (_rv, _) = hub.register("c", "v");
        hub.set_visitor("c", "v", true);
        let all = r#"{"colibriClass":"EndpointMessage","to":"","msgPayload":{"x":1}}"#;
        assert_eq!(hub.client_message("c", "v", all), vec![Effect::None]);
        let stats = r#"{"colibriClass":"EndpointStats","to":"a"}"#;
        assert_eq!(hub.client_message("c", "v", stats), vec![Effect::None]);
        // Others still reach the visitor; a reallocated endpoint of that id is no visitor.
        assert!(
            matches!(&hub.client_message("c", "a", all)[..], [Effect::Send { to, .. }] if to == "v")
        );
        hub.set_visitor("c", "v", false);
        assert!(
            matches!(&hub.client_message("c", "v", all)[..], [Effect::Send { to, .. }] if to == "a")
        );
    }

    #[tokio::test]
    async fn endpoint_messages_are_relayed_with_from() {
        let hub = ChannelHub::new(8);
        let (mut ra, _) = hub.register("c", "a");
        let (mut rb, _) = hub.register("c", "b");
        let (_rx, _) = hub.register("other", "z");
        let fx = hub.client_message(
            "c",
            "a",
            r#"{"colibriClass":"EndpointMessage","to":"","from":"evil","msgPayload":{"type":"x"}}"#,
        );
        assert_eq!(fx.len(), 1, "broadcast goes to b only");
        for e in fx {
            if let Effect::Send { to, text } = e {
                assert_eq!(to, "b");
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["from"], "a");
                hub.send("c", &to, text);
            }
        }
        assert!(rb.recv().await.unwrap().contains("\"from\":\"a\""));
        let fx = hub.client_message(
            "c",
            "b",
            r#"{"colibriClass":"EndpointMessage","to":"a","msgPayload":{}}"#,
        );
        assert!(matches!(&fx[0], Effect::Send { to, .. } if to == "a"));
        if let Effect::Send { to, text } = &fx[0] {
            hub.send("c", to, text.clone());
        }
        assert!(ra.recv().await.is_some());
    }

    #[test]
    fn constraints_default_to_180_and_update() {
        let hub = ChannelHub::new(8);
        let fx = hub.client_message("c", "a", r#"{"colibriClass":"ReceiverVideoConstraints","lastN":25,"constraints":{"b-v0":{"maxHeight":720}}}"#);
        let Effect::Constraints(c) = &fx[0] else {
            panic!()
        };
        assert_eq!(c.default_max_height, Some(180));
        assert_eq!(c.constraints.get("b-v0"), Some(&720));
        assert_eq!(c.last_n, Some(25));
        let fx = hub.client_message(
            "c",
            "a",
            r#"{"colibriClass":"ReceiverVideoConstraints","defaultConstraints":{"maxHeight":0}}"#,
        );
        let Effect::Constraints(c) = &fx[0] else {
            panic!()
        };
        assert_eq!(c.default_max_height, Some(0));
        assert_eq!(c.last_n, Some(25), "absent fields keep their value");
    }

    #[test]
    fn video_types_go_to_the_engine() {
        let hub = ChannelHub::new(8);
        let fx = hub.client_message(
            "c",
            "a",
            r#"{"colibriClass":"SourceVideoTypeMessage","sourceName":"a-v1","videoType":"desktop"}"#,
        );
        assert_eq!(
            fx,
            [Effect::VideoType {
                source: "a-v1".into(),
                video_type: "desktop".into()
            }]
        );
        let fx = hub.client_message(
            "c",
            "a",
            r#"{"colibriClass":"VideoTypeMessage","videoType":"camera"}"#,
        );
        assert_eq!(
            fx,
            [Effect::VideoType {
                source: "a-v0".into(),
                video_type: "camera".into()
            }]
        );
        let fx = hub.client_message(
            "c",
            "a",
            r#"{"colibriClass":"SourceVideoTypeMessage","sourceName":"a-v1"}"#,
        );
        assert_eq!(fx, [Effect::None]);
    }

    #[test]
    fn garbage_is_ignored() {
        let hub = ChannelHub::new(8);
        for g in [
            "",
            "null",
            "[]",
            "{",
            "{\"colibriClass\":5}",
            "{\"colibriClass\":\"Nope\"}",
        ] {
            assert_eq!(hub.client_message("c", "a", g), vec![Effect::None]);
        }
    }
}
