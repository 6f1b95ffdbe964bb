//! Multi-user chat services: the conference rooms (`muc.<domain>`) and the bridges'
//! brewery (`internal-muc.<domain>`).
//!
//! A service registers its domain with the router like any component. Rooms are spread
//! over a few shard tasks by room name; each shard owns its rooms (sans-IO [`Room`]s)
//! and its instances of the room modules, so no room state is shared between threads.

pub mod form;
pub mod metadata;
pub mod room;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use minidom::Element;
use tokio::sync::mpsc;

use crate::router::{Router, ServiceHandle};
use crate::stanza::{self, StanzaError, el};
use crate::{ns, router::bare_of};
pub use room::{Affiliation, JoinRequest, Role, Room, RoomEvent};

/// Who may create rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation {
    /// Any user who may join (no focus in use).
    Anyone,
    /// Only the service admins (the focus), as `restrict_room_creation` does.
    Admins,
}

#[derive(Debug, Clone)]
pub struct MucConfig {
    pub domain: String,
    pub creation: Creation,
    /// Bare JIDs that own every room and pass every join restriction (the focus).
    pub admins: Vec<String>,
    /// When not empty, only users of these domains may join (the brewery: service accounts).
    pub allowed_domains: Vec<String>,
    pub max_rooms: usize,
    /// Per room; 0 = no limit. Admins do not count.
    pub max_occupants: usize,
    pub max_presence_bytes: usize,
    pub message_rate: u32,
    pub message_burst: u32,
    pub shards: usize,
    pub queue: usize,
}

impl MucConfig {
    pub fn new(domain: &str) -> MucConfig {
        MucConfig {
            domain: domain.to_string(),
            creation: Creation::Anyone,
            admins: Vec::new(),
            allowed_domains: Vec::new(),
            max_rooms: 10_000,
            max_occupants: 0,
            max_presence_bytes: 16 * 1024,
            message_rate: 20,
            message_burst: 60,
            shards: 4,
            queue: 4096,
        }
    }
}

/// A room feature (lobby, breakout rooms, speaker stats, ...) hooked onto room events.
/// Each shard gets its own instance; state is per room name.
pub trait RoomModule: Send {
    /// Before a join is let through. Return an error stanza to refuse it.
    fn check_join(&mut self, _room: &Room, _join: &JoinRequest<'_>) -> Option<Element> {
        None
    }
    /// A join was let in: stanzas pushed to `out` reach the joiner before the join's
    /// presences do (room metadata, which a stock install sends before the self-presence).
    fn before_join_presences(&mut self, _room: &Room, _nick: &str, _out: &mut Vec<Element>) {}
    /// After the room handled a stanza, once per event, in order. Stanzas pushed to
    /// `out` are routed.
    fn on_event(&mut self, _room: &Room, _event: &RoomEvent, _out: &mut Vec<Element>) {}
    /// A component domain this module answers on (`metadata.<domain>`, ...), served by the
    /// MUC service so the module sees the rooms.
    fn component(&self) -> Option<String> {
        None
    }
    /// The bare room JID a stanza to the component is about (used to pick the shard).
    fn room_of(&self, _st: &Element) -> Option<String> {
        None
    }
    /// A stanza addressed to the module's component, with the room it is about.
    fn component_stanza(&mut self, _room: Option<&Room>, _st: &Element, _out: &mut Vec<Element>) {}
}

pub type ModuleFactory = Arc<dyn Fn() -> Box<dyn RoomModule> + Send + Sync>;

/// Start a MUC service and register it with the router. Returns false when the domain is taken.
pub fn start(router: Arc<Router>, cfg: MucConfig, modules: Vec<ModuleFactory>) -> bool {
    let shards = cfg.shards.max(1);
    let cfg = Arc::new(cfg);
    let mut txs = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (tx, rx) = mpsc::channel::<Box<Element>>(cfg.queue.max(1));
        txs.push(tx);
        let shard = Shard {
            cfg: cfg.clone(),
            rooms: HashMap::new(),
            modules: modules.iter().map(|f| f()).collect(),
        };
        tokio::spawn(shard.run(router.clone(), rx));
    }
    let (tx, mut rx) = mpsc::channel::<Box<Element>>(cfg.queue.max(1));
    if !router.register_service(&cfg.domain, ServiceHandle { tx: tx.clone() }) {
        return false;
    }
    // Modules' components share the dispatcher; one instance of each finds the room.
    let routers: Vec<Box<dyn RoomModule>> = modules.iter().map(|f| f()).collect();
    for m in &routers {
        if let Some(d) = m.component()
            && !router.register_service(&d, ServiceHandle { tx: tx.clone() })
        {
            tracing::error!(domain = %d, "room module domain already taken");
        }
    }
    let muc_domain = cfg.domain.clone();
    let router2 = router.clone();
    tokio::spawn(async move {
        while let Some(st) = rx.recv().await {
            let to_domain = st
                .attr("to")
                .map(|t| bare_of(t).rsplit('@').next().unwrap_or("").to_string())
                .unwrap_or_default();
            let room = if to_domain == muc_domain {
                st.attr("to").map(|t| bare_of(t).to_string())
            } else {
                routers
                    .iter()
                    .filter(|m| m.component().as_deref() == Some(to_domain.as_str()))
                    .find_map(|m| m.room_of(&st))
            };
            let node = room
                .as_deref()
                .and_then(|t| t.split_once('@'))
                .map(|(n, _)| n.to_string())
                .unwrap_or_default();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            node.hash(&mut h);
            let i = (h.finish() as usize) % txs.len();
            if let Err(mpsc::error::TrySendError::Full(st)) = txs[i].try_send(st) {
                tracing::warn!("MUC shard queue full");
                if let Some(e) = stanza::error_reply(&st, StanzaError::RESOURCE_CONSTRAINT, None) {
                    router2.route(e);
                }
            }
        }
    });
    true
}

struct Shard {
    cfg: Arc<MucConfig>,
    rooms: HashMap<String, Room>,
    modules: Vec<Box<dyn RoomModule>>,
}

impl Shard {
    async fn run(mut self, router: Arc<Router>, mut rx: mpsc::Receiver<Box<Element>>) {
        while let Some(st) = rx.recv().await {
            for out in self.handle(*st, Instant::now()) {
                router.route(out);
            }
        }
    }

    /// Everything a stanza to this service produces.
    pub fn handle(&mut self, st: Element, now: Instant) -> Vec<Element> {
        let mut out = Vec::new();
        let from = st.attr("from").unwrap_or("").to_string();
        let to = st.attr("to").unwrap_or("").to_string();
        let to_domain = bare_of(&to).rsplit('@').next().unwrap_or("");
        if to_domain != self.cfg.domain {
            // A module's component.
            for m in self.modules.iter_mut() {
                if m.component().as_deref() == Some(to_domain) {
                    let room = m.room_of(&st).and_then(|r| self.rooms.get(&r));
                    m.component_stanza(room, &st, &mut out);
                }
            }
            return out;
        }
        let (node, nick) = match to.split_once('@') {
            None => {
                self.service_stanza(&st, &mut out);
                return out;
            }
            Some((n, rest)) => (
                n.to_string(),
                rest.split_once('/').map(|(_, r)| r.to_string()),
            ),
        };
        let room_jid = format!("{node}@{}", self.cfg.domain);
        if !self.allowed(&from) {
            if let Some(e) = stanza::error_reply(
                &st,
                StanzaError::NOT_ALLOWED,
                Some("This service is for internal use"),
            ) {
                out.push(e);
            }
            return out;
        }
        let is_join = st.name() == "presence" && st.attr("type").is_none() && nick.is_some();
        if !self.rooms.contains_key(&room_jid) {
            if !is_join {
                if st.attr("type") != Some("error")
                    && st.attr("type") != Some("unavailable")
                    && let Some(e) =
                        stanza::error_reply(&st, StanzaError::ITEM_NOT_FOUND, Some("No such room"))
                {
                    out.push(e);
                }
                return out;
            }
            if let Some(e) = self.may_create(&st, &from) {
                out.push(e);
                return out;
            }
            let mut room = Room::new(room_jid.clone(), &self.cfg);
            if self.cfg.creation == Creation::Anyone {
                // XEP-0045 §10.1: the creator owns the room.
                room.affiliations
                    .insert(bare_of(&from).to_string(), Affiliation::Owner);
            }
            self.rooms.insert(room_jid.clone(), room);
        }
        let Some(room) = self.rooms.get_mut(&room_jid) else {
            return out;
        };
        match st.name() {
            "presence" => {
                let nick = nick.unwrap_or_default();
                if is_join && !room.occupants.iter().any(|o| o.real_jid == from) {
                    let password = st
                        .get_child("x", room::NS_MUC)
                        .and_then(|x| x.get_child("password", room::NS_MUC))
                        .map(|p| p.text());
                    let req = JoinRequest {
                        nick: &nick,
                        real_jid: &from,
                        password: password.as_deref(),
                        presence: &st,
                    };
                    let refused = self
                        .modules
                        .iter_mut()
                        .find_map(|m| m.check_join(room, &req));
                    if let Some(e) = refused {
                        out.push(e);
                        self.finish(&room_jid, &mut out);
                        return out;
                    }
                }
                room.handle_presence(&st, &nick, &from, &self.cfg, now);
            }
            "message" => room.handle_message(&st, nick.as_deref(), &from, &self.cfg, now),
            "iq" => match nick {
                None => room.handle_room_iq(&st, &from, &self.cfg),
                Some(n) => room.handle_occupant_iq(&st, &n, &from),
            },
            _ => {}
        }
        self.finish(&room_jid, &mut out);
        out
    }

    /// Collect the room's output, run the modules over its events, drop it when empty.
    fn finish(&mut self, room_jid: &str, out: &mut Vec<Element>) {
        let Some(room) = self.rooms.get_mut(room_jid) else {
            return;
        };
        let output = room.take_output();
        let mut events = room.take_events();
        for ev in &events {
            if let RoomEvent::Joined { nick } = ev {
                for m in self.modules.iter_mut() {
                    m.before_join_presences(room, nick, out);
                }
            }
        }
        out.extend(output);
        let empty = room.is_empty();
        if empty && !events.iter().any(|e| matches!(e, RoomEvent::Destroyed)) {
            events.push(RoomEvent::Destroyed);
        }
        for ev in &events {
            for m in self.modules.iter_mut() {
                m.on_event(room, ev, out);
            }
        }
        if empty {
            self.rooms.remove(room_jid);
            tracing::debug!(room = room_jid, "room destroyed");
        }
    }

    fn allowed(&self, from: &str) -> bool {
        if self.cfg.allowed_domains.is_empty() {
            return true;
        }
        let domain = bare_of(from).rsplit('@').next().unwrap_or("");
        self.cfg.allowed_domains.iter().any(|d| d == domain)
    }

    fn may_create(&self, st: &Element, from: &str) -> Option<Element> {
        if self.rooms.len() >= self.cfg.max_rooms {
            return stanza::error_reply(
                st,
                StanzaError::RESOURCE_CONSTRAINT,
                Some("Too many rooms"),
            );
        }
        if self.cfg.creation == Creation::Admins
            && !self.cfg.admins.iter().any(|a| a == bare_of(from))
        {
            // lib-jitsi-meet re-sends its conference request when it sees this.
            let mut e = stanza::error_reply(
                st,
                StanzaError::NOT_ALLOWED,
                Some("Room creation is restricted"),
            )?;
            if let Some(err) = e.get_child_mut("error", ns::CLIENT) {
                err.append_child(Element::bare("room-does-not-exist", room::NS_JITMEET));
            }
            return Some(e);
        }
        None
    }

    fn service_stanza(&self, st: &Element, out: &mut Vec<Element>) {
        if st.name() != "iq" {
            return;
        }
        let ty = st.attr("type").unwrap_or("");
        match stanza::payload(st) {
            Some(p) if p.is("query", ns::DISCO_INFO) && ty == "get" => {
                let q = Element::builder("query", ns::DISCO_INFO)
                    .append(el(
                        "identity",
                        ns::DISCO_INFO,
                        &[
                            ("category", "conference"),
                            ("type", "text"),
                            ("name", "Chatrooms"),
                        ],
                    ))
                    .append(el("feature", ns::DISCO_INFO, &[("var", room::NS_MUC)]))
                    .append(el("feature", ns::DISCO_INFO, &[("var", ns::DISCO_INFO)]))
                    .append(el("feature", ns::DISCO_INFO, &[("var", ns::DISCO_ITEMS)]))
                    .build();
                out.push(stanza::iq_result(st, Some(q)));
            }
            // Rooms are not listed: Jitsi room names are not public.
            Some(p) if p.is("query", ns::DISCO_ITEMS) && ty == "get" => {
                out.push(stanza::iq_result(
                    st,
                    Some(Element::bare("query", ns::DISCO_ITEMS)),
                ));
            }
            Some(p) if p.is("ping", ns::PING) => out.push(stanza::iq_result(st, None)),
            _ => {
                if let Some(e) = stanza::error_reply(st, StanzaError::SERVICE_UNAVAILABLE, None) {
                    out.push(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
