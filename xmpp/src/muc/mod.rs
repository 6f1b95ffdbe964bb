//! Multi-user chat services: the conference rooms (`muc.<domain>`) and the bridges'
//! brewery (`internal-muc.<domain>`).
//!
//! A service registers its domain with the router like any component. Rooms are spread
//! over a few shard tasks by room name; each shard owns its rooms (sans-IO [`Room`]s)
//! and its instances of the room modules, so no room state is shared between threads.

pub mod av_moderation;
pub mod breakout_rooms;
pub mod directory;
pub mod end_conference;
pub mod form;
pub mod lobby;
pub mod max_occupants;
pub mod members_only;
pub mod metadata;
pub mod password;
pub mod permissions;
pub mod policies;
pub mod polls;
pub mod room;
pub mod speaker_stats;
pub mod token;
pub mod visitors;
pub mod whois;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use minidom::Element;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::router::{Router, ServiceHandle};
use crate::stanza::{self, StanzaError, el};
use crate::{ns, router::bare_of};
pub use room::{Affiliation, Departure, JoinRequest, Role, Room, RoomEvent, WallClock};

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
    /// Domains or bare JIDs that pass room passwords and size limits and do not count
    /// against them (stock's `muc_access_whitelist` and `muc_password_whitelist`).
    pub allow_list: Vec<String>,
    /// Nicks must look like the web app's (letters, digits, `_`); `focus` is the focus's
    /// (stock's `muc_resource_validate`).
    pub validate_nicknames: bool,
    /// Chat messages a room may carry, then chat is closed (stock's
    /// `muc_limit_messages_count`); 0: no limit.
    pub max_chat_messages: u32,
    /// Visitors (docs/visitors.md): their login domain, and the MUC domain under which they
    /// see the rooms (`muc.v1.meet.jitsi`, the app's vnode view of this service).
    pub visitors: Option<VisitorView>,
}

/// How visitors see a MUC service: from another login domain, under another MUC domain.
#[derive(Debug, Clone)]
pub struct VisitorView {
    pub login_domain: String,
    pub muc_domain: String,
}

impl MucConfig {
    /// Whether `jid` (a real JID) is on the allow-list, by its domain or bare JID.
    pub fn allow_listed(&self, jid: &str) -> bool {
        let bare = bare_of(jid);
        let domain = bare.rsplit('@').next().unwrap_or(bare);
        self.allow_list
            .iter()
            .any(|a| a.eq_ignore_ascii_case(bare) || a.eq_ignore_ascii_case(domain))
    }

    /// Whether `jid` (a real JID) is a visitor's.
    pub fn is_visitor(&self, jid: &str) -> bool {
        self.visitors.as_ref().is_some_and(|v| {
            let bare = bare_of(jid);
            bare.rsplit_once('@').map(|(_, d)| d) == Some(v.login_domain.as_str())
        })
    }

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
            allow_list: Vec::new(),
            validate_nicknames: false,
            max_chat_messages: 0,
            visitors: None,
        }
    }
}

/// What a module says about a join, in module order.
pub enum JoinCheck {
    /// No objection: the next module decides.
    Continue,
    /// Refused with this error stanza; later modules are not asked.
    Refuse(Element),
    /// Give the joiner this affiliation, then go on.
    Grant(Affiliation),
    /// Give the joiner this affiliation and let the password rule pass it (a lobby letting in
    /// someone a moderator approved or who gave the password).
    Approve(Affiliation),
}

/// A room feature (lobby, breakout rooms, speaker stats, ...) hooked onto room events, as a
/// Prosody module hooks MUC events. Each shard gets its own instance; a module sees all rooms
/// of a conference (main, lobby and breakout rooms live on one shard) through [`Ctx`].
pub trait RoomModule: Send {
    /// A join is about to be checked: the module may change rooms first (a lobby that opens
    /// because no host is there yet, or closes because the host came).
    fn before_join(&mut self, _ctx: &mut Ctx<'_>, _room: &str, _join: &JoinRequest<'_>) {}
    /// A presence an occupant (or joiner) sent to `room`, before the room sees it: the module
    /// may change it (the server's word on who the sender is replaces the sender's own).
    fn filter_input(&mut self, _room: &str, _from: &str, _st: &mut Element) {}
    /// Before a join is let through, in module order.
    fn check_join(&mut self, _room: &Room, _join: &JoinRequest<'_>) -> JoinCheck {
        JoinCheck::Continue
    }
    /// An IQ from `from` (a real JID) to an occupant, before it is relayed: `Some` refuses it
    /// with that error reply.
    fn check_occupant_iq(&mut self, _room: &Room, _from: &str, _iq: &Element) -> Option<Element> {
        None
    }
    /// A message from `from` (a real JID) to the room (`private`: to one occupant), before
    /// the room relays it: `Some` stops it there and sends that stanza instead (an error
    /// reply, or what the module made of the message); stanzas pushed to `out` go out as
    /// well (a notice to the room).
    fn check_message(
        &mut self,
        _room: &Room,
        _from: &str,
        _msg: &Element,
        _private: bool,
        _out: &mut Vec<Element>,
    ) -> Option<Element> {
        None
    }
    /// A join was let in: stanzas pushed to `out` reach the joiner before the join's
    /// presences do (room metadata, which a stock install sends before the self-presence).
    fn before_join_presences(&mut self, _room: &Room, _nick: &str, _out: &mut Vec<Element>) {}
    /// A stanza the room is about to send: drop it (false) or change it (a lobby hides its
    /// occupants from each other; a semi-anonymous room hides real JIDs).
    fn filter_output(&mut self, _room: &Room, _st: &mut Element) -> bool {
        true
    }
    /// After the room handled a stanza, once per event, in order.
    fn on_event(&mut self, _ctx: &mut Ctx<'_>, _room: &str, _event: &RoomEvent) {}
    /// Keep an empty room (a lobby while it is enabled, a main room while it has breakout
    /// rooms).
    fn keep_alive(&self, _room: &Room) -> bool {
        false
    }
    /// A component domain this module answers on (`metadata.<domain>`, ...), served by the
    /// MUC service so the module sees the rooms.
    fn component(&self) -> Option<String> {
        None
    }
    /// A MUC domain whose rooms this module creates (`lobby.<domain>`); joins never create
    /// them.
    fn room_domain(&self) -> Option<String> {
        None
    }
    /// When the module wants [`RoomModule::timeout`] called (time as input: the shard's task
    /// waits for the earliest).
    fn next_timeout(&self) -> Option<Instant> {
        None
    }
    /// The time asked for by [`RoomModule::next_timeout`] has come.
    fn timeout(&mut self, _ctx: &mut Ctx<'_>) {}
    /// disco#info features of a MUC domain (or a node of it) this module adds.
    fn domain_features(&self, _domain: &str, _node: Option<&str>) -> Vec<&'static str> {
        Vec::new()
    }
    /// The room a component stanza names itself (otherwise the sender's conference is used).
    fn room_of(&self, _st: &Element) -> Option<String> {
        None
    }
    /// A stanza addressed to the module's component. `sender_room`: the room its sender is
    /// in (main, lobby or breakout room; [`conference_key`] leads to its conference).
    fn component_stanza(&mut self, _ctx: &mut Ctx<'_>, _sender_room: Option<&str>, _st: &Element) {}
}

pub type ModuleFactory = Arc<dyn Fn() -> Box<dyn RoomModule> + Send + Sync>;

/// What a module may touch: the shard's rooms and the stanzas going out.
pub struct Ctx<'a> {
    pub rooms: &'a mut HashMap<String, Room>,
    /// For rooms a module creates.
    pub rng: &'a mut rand::rngs::StdRng,
    pub wall: WallClock,
    pub cfg: &'a MucConfig,
    pub out: &'a mut Vec<Element>,
    pub now: Instant,
}

impl Ctx<'_> {
    pub fn room(&self, jid: &str) -> Option<&Room> {
        self.rooms.get(jid)
    }
    pub fn room_mut(&mut self, jid: &str) -> Option<&mut Room> {
        self.rooms.get_mut(jid)
    }
    /// Create a room (or find it); `owners` get owner affiliation.
    pub fn create_room(&mut self, jid: &str) -> &mut Room {
        let (cfg, wall) = (self.cfg, self.wall);
        let rng = &mut *self.rng;
        self.rooms
            .entry(jid.to_string())
            .or_insert_with(|| Room::new(jid.to_string(), cfg, rng, wall))
    }
}

/// A component's `<json-message xmlns='http://jitsi.org/jitmeet'>` carrying `body` (how the
/// A/V moderation, breakout-room and polls components talk to the app).
pub(crate) fn json_message(from: &str, to: &str, body: &serde_json::Value) -> Element {
    let mut m = el("message", ns::CLIENT, &[("from", from), ("to", to)]);
    m.append_child(
        Element::builder("json-message", room::NS_JITMEET)
            .append(body.to_string())
            .build(),
    );
    m
}

/// Sleep until `t`; never, without one.
async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// The access rules every room has (Prosody's `plugins/muc/*.lib.lua`), after the configured
/// modules (a lobby admits a password holder before the password rule asks).
fn builtin_modules(cfg: &Arc<MucConfig>) -> Vec<ModuleFactory> {
    let c = cfg.clone();
    let p = cfg.clone();
    vec![
        Arc::new(move || Box::new(policies::Policies::new(p.clone())) as Box<dyn RoomModule>),
        Arc::new(|| Box::new(password::Password) as Box<dyn RoomModule>),
        Arc::new(|| Box::new(members_only::MembersOnly) as Box<dyn RoomModule>),
        Arc::new(move || {
            Box::new(max_occupants::MaxOccupants::new(c.clone())) as Box<dyn RoomModule>
        }),
        Arc::new(|| Box::new(whois::Whois) as Box<dyn RoomModule>),
    ]
}

/// The shard a room lives on: its node up to the first `~`, so a conference's main room
/// (`n`), lobby (`n@lobby…`) and breakout rooms (`n~x@breakout…`) share one.
pub fn conference_key(room_jid: &str) -> &str {
    let node = room_jid.split('@').next().unwrap_or("");
    node.split('~').next().unwrap_or(node)
}

/// Which rooms each occupant (real full JID) is in, in join order, for component stanzas that
/// do not name their room: the first one is where it takes part (a moderator joins the lobby
/// after the main room). Shards fill it on joins and leaves; bounded by the occupants, and to
/// a few rooms per JID (the focus is in every room).
#[derive(Default)]
pub struct Occupancy(Mutex<HashMap<String, Vec<String>>>);

const ROOMS_PER_OCCUPANT: usize = 4;

impl Occupancy {
    fn set(&self, jid: &str, room: &str) {
        let mut m = self.0.lock();
        let rooms = m.entry(jid.to_string()).or_default();
        if !rooms.iter().any(|r| r == room) && rooms.len() < ROOMS_PER_OCCUPANT {
            rooms.push(room.to_string());
        }
    }
    fn clear(&self, jid: &str, room: &str) {
        let mut m = self.0.lock();
        if let Some(rooms) = m.get_mut(jid) {
            rooms.retain(|r| r != room);
            if rooms.is_empty() {
                m.remove(jid);
            }
        }
    }
    /// The room the occupant `jid` takes part in.
    pub fn room_of(&self, jid: &str) -> Option<String> {
        self.0.lock().get(jid).and_then(|r| r.first().cloned())
    }
}

/// Start a MUC service and register it with the router. `modules` run in order before the
/// built-in access rules (password, members-only, room size). Answers the service's room
/// directory, or None when the domain is taken.
pub fn start(
    router: Arc<Router>,
    cfg: MucConfig,
    modules: Vec<ModuleFactory>,
) -> Option<Arc<directory::Directory>> {
    let shards = cfg.shards.max(1);
    let cfg = Arc::new(cfg);
    let occupancy = Arc::new(Occupancy::default());
    let directory = Arc::new(directory::Directory::default());
    let mut all = modules;
    all.extend(builtin_modules(&cfg));
    let mut txs = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (tx, rx) = mpsc::channel::<Box<Element>>(cfg.queue.max(1));
        txs.push(tx);
        let shard = Shard {
            visitor_nicks: Default::default(),
            rng: rand::SeedableRng::from_os_rng(),
            wall: WallClock {
                instant: Instant::now(),
                unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            },
            cfg: cfg.clone(),
            rooms: HashMap::new(),
            modules: all.iter().map(|f| f()).collect(),
            occupancy: occupancy.clone(),
            directory: directory.clone(),
        };
        tokio::spawn(shard.run(router.clone(), rx));
    }
    let (tx, mut rx) = mpsc::channel::<Box<Element>>(cfg.queue.max(1));
    if !router.register_service(&cfg.domain, ServiceHandle { tx: tx.clone() }) {
        return None;
    }
    // Modules' components and room domains share the dispatcher; one instance of each finds
    // the room.
    let routers: Vec<Box<dyn RoomModule>> = all.iter().map(|f| f()).collect();
    let mut room_domains = vec![cfg.domain.clone()];
    room_domains.extend(routers.iter().filter_map(|m| m.room_domain()));
    let mut served = vec![cfg.domain.clone()];
    if let Some(v) = &cfg.visitors {
        // The visitors' view: the same rooms under another domain.
        room_domains.push(v.muc_domain.clone());
        if router.register_service(&v.muc_domain, ServiceHandle { tx: tx.clone() }) {
            served.push(v.muc_domain.clone());
        } else {
            tracing::error!(domain = %v.muc_domain, "visitors' MUC domain already taken");
        }
    }
    for d in routers
        .iter()
        .flat_map(|m| [m.component(), m.room_domain()])
        .flatten()
    {
        if served.contains(&d) {
            continue;
        }
        if !router.register_service(&d, ServiceHandle { tx: tx.clone() }) {
            tracing::error!(domain = %d, "room module domain already taken");
        }
        served.push(d);
    }
    let router2 = router.clone();
    tokio::spawn(async move {
        while let Some(st) = rx.recv().await {
            let to = st.attr("to").unwrap_or("");
            let bare = bare_of(to);
            let room = if bare.contains('@')
                && room_domains
                    .iter()
                    .any(|d| bare.ends_with(&format!("@{d}")))
            {
                Some(bare.to_string())
            } else {
                let domain = bare.rsplit('@').next().unwrap_or("");
                routers
                    .iter()
                    .filter(|m| m.component().as_deref() == Some(domain))
                    .find_map(|m| m.room_of(&st))
                    .or_else(|| st.attr("from").and_then(|f| occupancy.room_of(f)))
            };
            let key = room.as_deref().map(conference_key).unwrap_or_default();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            key.hash(&mut h);
            let i = (h.finish() as usize) % txs.len();
            if let Err(mpsc::error::TrySendError::Full(st)) = txs[i].try_send(st) {
                tracing::warn!("MUC shard queue full");
                if let Some(e) = stanza::error_reply(&st, StanzaError::RESOURCE_CONSTRAINT, None) {
                    router2.route(e);
                }
            }
        }
    });
    Some(directory)
}

/// Visitor occupants (room, nick) a shard remembers at most.
const MAX_VISITOR_NICKS: usize = 100_000;
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";

struct Shard {
    /// Visitor occupants whose presences are hidden from the others (docs/visitors.md).
    visitor_nicks: std::collections::HashSet<(String, String)>,
    /// Seeded from the OS: room secrets and meeting ids.
    rng: rand::rngs::StdRng,
    wall: WallClock,
    cfg: Arc<MucConfig>,
    rooms: HashMap<String, Room>,
    modules: Vec<Box<dyn RoomModule>>,
    occupancy: Arc<Occupancy>,
    /// What the HTTP APIs read: refreshed for every room that changed.
    directory: Arc<directory::Directory>,
}

impl Shard {
    async fn run(mut self, router: Arc<Router>, mut rx: mpsc::Receiver<Box<Element>>) {
        loop {
            let wake = self.modules.iter().filter_map(|m| m.next_timeout()).min();
            let out = tokio::select! {
                st = rx.recv() => match st {
                    Some(st) => self.handle(*st, Instant::now()),
                    None => break,
                },
                _ = sleep_until(wake) => {
                    let mut out = self.tick(Instant::now());
                    self.visitor_view(&mut out);
                    out
                }
            };
            for st in out {
                router.route(st);
            }
        }
    }

    /// Modules whose time has come.
    pub fn tick(&mut self, now: Instant) -> Vec<Element> {
        let mut out = Vec::new();
        {
            let Shard {
                rooms,
                modules,
                cfg,
                rng,
                wall,
                ..
            } = self;
            let mut ctx = Ctx {
                rooms,
                rng,
                wall: *wall,
                cfg,
                out: &mut out,
                now,
            };
            for m in modules.iter_mut() {
                if m.next_timeout().is_some_and(|t| t <= now) {
                    m.timeout(&mut ctx);
                }
            }
        }
        self.settle(&mut out, now);
        out
    }

    /// The domains whose rooms modules create (never a join).
    fn module_room_domain(&self, domain: &str) -> bool {
        self.modules
            .iter()
            .any(|m| m.room_domain().as_deref() == Some(domain))
    }

    /// Everything a stanza to this service produces.
    pub fn handle(&mut self, mut st: Element, now: Instant) -> Vec<Element> {
        // A visitor's stanza to the view of a room is a stanza to the room.
        if let Some(v) = &self.cfg.visitors
            && let Some(to) = st.attr("to")
            && let Some((node, rest)) = to.split_once('@')
            && (rest == v.muc_domain || rest.starts_with(&format!("{}/", v.muc_domain)))
        {
            let to = format!("{node}@{}{}", self.cfg.domain, &rest[v.muc_domain.len()..]);
            stanza::set_attr(&mut st, "to", &to);
        }
        let mut out = self.handle_inner(st, now);
        self.visitor_view(&mut out);
        out
    }

    /// What visitors see and who sees them (docs/visitors.md): stanzas to a visitor come from
    /// the view's domain; a visitor's presence reaches only itself and the service admins
    /// (the focus), never the other occupants.
    fn visitor_view(&mut self, out: &mut Vec<Element>) {
        let Some(v) = self.cfg.visitors.clone() else {
            return;
        };
        let main_suffix = format!("@{}", self.cfg.domain);
        // Visitors gone with this batch: forgotten after it (their departure goes to the
        // others after their own copy).
        let mut gone = Vec::new();
        out.retain_mut(|st| {
            let to = st.attr("to").unwrap_or("").to_string();
            let from = st.attr("from").unwrap_or("").to_string();
            if st.name() == "presence"
                && let Some((room, nick)) = from.split_once('/')
                && room.ends_with(&main_suffix)
            {
                let key = (room.to_string(), nick.to_string());
                // A visitor is an occupant from the visitors' domain (not whoever has the
                // role: a moderator's role change must not hide anyone). Remembered for its
                // departure, when it is no longer in the room.
                let visitor = self
                    .rooms
                    .get(room)
                    .and_then(|r| r.occupant(nick))
                    .is_some_and(|o| self.cfg.is_visitor(&o.real_jid));
                if visitor {
                    self.visitor_nicks.insert(key.clone());
                }
                if self.visitor_nicks.contains(&key) {
                    let to_bare = bare_of(&to);
                    let to_self = st.get_child("x", NS_MUC_USER).is_some_and(|x| {
                        x.children()
                            .any(|c| c.is("status", NS_MUC_USER) && c.attr("code") == Some("110"))
                    });
                    if to_self && st.attr("type") == Some("unavailable") {
                        gone.push(key.clone());
                    }
                    if !to_self && !self.cfg.admins.iter().any(|a| a == to_bare) {
                        return false;
                    }
                }
            }
            if self.cfg.is_visitor(&to)
                && let Some((node, rest)) = from.split_once('@')
                && (rest == self.cfg.domain || rest.starts_with(&format!("{}/", self.cfg.domain)))
            {
                let f = format!("{node}@{}{}", v.muc_domain, &rest[self.cfg.domain.len()..]);
                stanza::set_attr(st, "from", &f);
            }
            true
        });
        for k in gone {
            self.visitor_nicks.remove(&k);
        }
        if self.visitor_nicks.len() > MAX_VISITOR_NICKS {
            self.visitor_nicks.clear();
        }
    }

    fn handle_inner(&mut self, mut st: Element, now: Instant) -> Vec<Element> {
        let mut out = Vec::new();
        let from = st.attr("from").unwrap_or("").to_string();
        let to = st.attr("to").unwrap_or("").to_string();
        let to_bare = bare_of(&to);
        let to_domain = to_bare.rsplit('@').next().unwrap_or("").to_string();
        let module_rooms = self.module_room_domain(&to_domain);
        let component = self
            .modules
            .iter()
            .any(|m| m.component().as_deref() == Some(to_domain.as_str()));
        if module_rooms && !to_bare.contains('@') && !component {
            // The module's MUC domain itself (disco).
            self.service_stanza(&st, &mut out);
            return out;
        }
        if to_domain != self.cfg.domain && !(module_rooms && to_bare.contains('@')) {
            // A module's component.
            let sender_room = self
                .modules
                .iter()
                .filter(|m| m.component().as_deref() == Some(to_domain.as_str()))
                .find_map(|m| m.room_of(&st))
                .or_else(|| self.occupancy.room_of(&from));
            let Shard {
                rooms,
                modules,
                cfg,
                rng,
                wall,
                ..
            } = self;
            let mut ctx = Ctx {
                rooms,
                rng,
                wall: *wall,
                cfg,
                out: &mut out,
                now,
            };
            for m in modules.iter_mut() {
                if m.component().as_deref() == Some(to_domain.as_str()) {
                    m.component_stanza(&mut ctx, sender_room.as_deref(), &st);
                }
            }
            self.settle(&mut out, now);
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
        let room_jid = format!("{node}@{to_domain}");
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
            if !is_join || module_rooms {
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
            let mut room = Room::new(room_jid.clone(), &self.cfg, &mut self.rng, self.wall);
            if self.cfg.creation == Creation::Anyone {
                // XEP-0045 §10.1: the creator owns the room.
                room.affiliations
                    .insert(bare_of(&from).to_string(), Affiliation::Owner);
            }
            self.rooms.insert(room_jid.clone(), room);
        }
        if st.name() == "presence" && st.attr("type").is_none() {
            for m in self.modules.iter_mut() {
                m.filter_input(&room_jid, &from, &mut st);
            }
        }
        let nick_s = nick.clone().unwrap_or_default();
        let fresh_join = is_join
            && self
                .rooms
                .get(&room_jid)
                .is_some_and(|r| !r.occupants.iter().any(|o| o.real_jid == from));
        let password = st
            .get_child("x", room::NS_MUC)
            .and_then(|x| x.get_child("password", room::NS_MUC))
            .map(|p| p.text());
        let mut req = JoinRequest {
            nick: &nick_s,
            real_jid: &from,
            password: password.as_deref(),
            presence: &st,
            privileged: self.cfg.admins.iter().any(|a| a == bare_of(&from)),
            allow_listed: self.cfg.allow_listed(&from),
            approved: false,
        };
        if fresh_join {
            let Shard {
                rooms,
                modules,
                cfg,
                rng,
                wall,
                ..
            } = self;
            let mut ctx = Ctx {
                rooms,
                rng,
                wall: *wall,
                cfg,
                out: &mut out,
                now,
            };
            for m in modules.iter_mut() {
                m.before_join(&mut ctx, &room_jid, &req);
            }
        }
        let Some(room) = self.rooms.get_mut(&room_jid) else {
            return out;
        };
        match st.name() {
            "presence" => {
                let nick = nick.unwrap_or_default();
                if fresh_join {
                    for m in self.modules.iter_mut() {
                        match m.check_join(room, &req) {
                            JoinCheck::Continue => {}
                            JoinCheck::Grant(a) => {
                                room.affiliations.insert(bare_of(&from).to_string(), a);
                            }
                            JoinCheck::Approve(a) => {
                                room.affiliations.insert(bare_of(&from).to_string(), a);
                                req.approved = true;
                            }
                            JoinCheck::Refuse(e) => {
                                out.push(e);
                                self.settle(&mut out, now);
                                return out;
                            }
                        }
                    }
                }
                room.handle_presence(&st, &nick, &from, &self.cfg, now);
            }
            "message" => {
                let private = nick.is_some();
                let refused = self
                    .modules
                    .iter_mut()
                    .find_map(|m| m.check_message(room, &from, &st, private, &mut out));
                match refused {
                    Some(e) => out.push(e),
                    None => room.handle_message(&st, nick.as_deref(), &from, &self.cfg, now),
                }
            }
            "iq" => match nick {
                None => room.handle_room_iq(&st, &from, &self.cfg),
                Some(n) => {
                    let refused = self
                        .modules
                        .iter_mut()
                        .find_map(|m| m.check_occupant_iq(room, &from, &st));
                    match refused {
                        Some(e) => out.push(e),
                        None => room.handle_occupant_iq(&st, &n, &from),
                    }
                }
            },
            _ => {}
        }
        self.settle(&mut out, now);
        out
    }

    /// Collect what rooms produced, run the modules over their events (which may touch rooms
    /// again), and drop rooms that are destroyed or empty and not kept.
    fn settle(&mut self, out: &mut Vec<Element>, now: Instant) {
        // Modules acting on events act on rooms, whose events the next round handles; a
        // module loop cannot run away.
        for _ in 0..16 {
            let busy: Vec<String> = self
                .rooms
                .iter()
                .filter(|(_, r)| !r.events.is_empty() || r.has_output())
                .map(|(j, _)| j.clone())
                .collect();
            if busy.is_empty() {
                break;
            }
            for jid in busy {
                let Some(room) = self.rooms.get_mut(&jid) else {
                    continue;
                };
                let output = room.take_output();
                let events = room.take_events();
                // What the directory holds changes with joins, leaves, presences and
                // configuration, never with the chat messages that keep a room busy.
                if !events.is_empty() || output.iter().any(|st| st.name() != "message") {
                    self.directory.update(room);
                }
                for ev in &events {
                    match ev {
                        RoomEvent::Joined { nick, jid: real } => {
                            self.occupancy.set(real, &jid);
                            for m in self.modules.iter_mut() {
                                m.before_join_presences(room, nick, out);
                            }
                        }
                        RoomEvent::Left { jid: real, .. } => self.occupancy.clear(real, &jid),
                        _ => {}
                    }
                }
                for mut st in output {
                    if self
                        .modules
                        .iter_mut()
                        .all(|m| m.filter_output(room, &mut st))
                    {
                        out.push(st);
                    }
                }
                let Shard {
                    rooms,
                    modules,
                    cfg,
                    rng,
                    wall,
                    ..
                } = self;
                let mut ctx = Ctx {
                    rooms,
                    rng,
                    wall: *wall,
                    cfg,
                    out,
                    now,
                };
                for ev in &events {
                    for m in modules.iter_mut() {
                        m.on_event(&mut ctx, &jid, ev);
                    }
                }
            }
            let gone: Vec<String> = self
                .rooms
                .iter()
                .filter(|(_, r)| {
                    r.destroyed || (r.is_empty() && !self.modules.iter().any(|m| m.keep_alive(r)))
                })
                .map(|(j, _)| j.clone())
                .collect();
            for jid in gone {
                let Some(mut room) = self.rooms.remove(&jid) else {
                    continue;
                };
                out.extend(room.take_output());
                for o in &room.occupants {
                    self.occupancy.clear(&o.real_jid, &jid);
                }
                self.directory.remove(&jid);
                tracing::debug!(room = %jid, "room destroyed");
                let Shard {
                    rooms,
                    modules,
                    cfg,
                    rng,
                    wall,
                    ..
                } = self;
                let mut ctx = Ctx {
                    rooms,
                    rng,
                    wall: *wall,
                    cfg,
                    out,
                    now,
                };
                for m in modules.iter_mut() {
                    m.on_event(&mut ctx, &jid, &RoomEvent::Destroyed);
                }
            }
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
                let domain = st.attr("to").unwrap_or("");
                let mut q = Element::builder("query", ns::DISCO_INFO);
                if let Some(n) = p.attr("node") {
                    q = q.attr(stanza::rxml_name("node"), n);
                }
                for f in self
                    .modules
                    .iter()
                    .flat_map(|m| m.domain_features(domain, p.attr("node")))
                {
                    q = q.append(el("feature", ns::DISCO_INFO, &[("var", f)]));
                }
                let q = q
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

/// A feature component's answer to an IQ: its disco#info identity (`component`/`kind`, which
/// lib-jitsi-meet looks for) to a get, nothing to the rest. False for other stanzas.
pub(crate) fn answer_component_iq(st: &Element, kind: &str, out: &mut Vec<Element>) -> bool {
    if st.name() != "iq" {
        return false;
    }
    if st.attr("type") == Some("get") {
        let q = Element::builder("query", ns::DISCO_INFO)
            .append(el(
                "identity",
                ns::DISCO_INFO,
                &[("category", "component"), ("type", kind)],
            ))
            .build();
        out.push(stanza::iq_result(st, Some(q)));
    }
    true
}

#[cfg(test)]
mod tests;
