//! The focus's bridge pool (docs/colibri2.md §4a): the in-process bridge and every bridge in
//! the brewery — bridge-only meetds or stock JVBs — each conference on one of them, chosen as
//! Jicofo's default strategy does: bridges that are not draining, shutting down or unhealthy;
//! of those the ones in the focus's region; then the least stressed, an overloaded one
//! (stress above 0.8) only when nothing else is left. The focus talks to a remote bridge with
//! Colibri2 over XMPP, from `focus@<auth domain>/bridges`, which sits in the brewery to see
//! the bridges' stats. A conference whose bridge left the brewery answers
//! `conference_not_found`, and the focus starts it again on another bridge.
//!
//! [`Pool`] (the choice and the bookkeeping) is sans-IO; [`BridgePool`] is its tokio glue.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use meetd_colibri::colibri2::{Colibri2Error, ConferenceModified, ConferenceModify, Reason, Relay};
use meetd_colibri::service::{BoxFuture, Bridge, ColibriService};
use meetd_jingle::focus::BridgeLoss;
use meetd_xmpp::stanza::{self, el};
use meetd_xmpp::{Element, Router};
use parking_lot::Mutex;

use crate::cascade::{Link, OnBridges, Plan, Selection, Spreads, fewest};
use tokio::sync::{mpsc, oneshot};

const NS_COLIBRI: &str = "http://jitsi.org/protocol/colibri";
const NS_COLIBRI2: &str = "jitsi:colibri2";
const NS_MUC: &str = "http://jabber.org/protocol/muc";
/// A remote bridge has this long to answer a request (Jicofo waits 15 s too).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Stress above this is overload (Jicofo's default `stress-threshold`).
const OVERLOADED: f64 = 0.8;
/// Requests waiting for remote answers at once.
const MAX_PENDING: usize = 4096;
/// Stanzas waiting for the pool's task.
const MAILBOX: usize = 1024;

/// A bridge as the pool sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BridgeInfo {
    pub stress: f64,
    pub region: String,
    /// Draining, in graceful shutdown, shutting down, or not healthy: no new conferences.
    pub unavailable: bool,
    /// How relays name it (docs/bridge.md B.15; "": its nick).
    pub relay_id: String,
}

impl BridgeInfo {
    /// From a brewery presence's `<stats>`.
    pub fn from_stats(stats: &Element) -> BridgeInfo {
        let get = |n: &str| {
            stats
                .children()
                .find(|s| s.attr("name") == Some(n))
                .and_then(|s| s.attr("value"))
        };
        let yes = |n: &str| get(n) == Some("true");
        BridgeInfo {
            stress: get("stress_level")
                .and_then(|v| v.parse().ok())
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .unwrap_or(0.0),
            region: get("region").unwrap_or("").to_string(),
            unavailable: yes("drain")
                || yes("graceful_shutdown")
                || yes("shutting_down")
                || get("healthy") == Some("false"),
            relay_id: get("relay_id").unwrap_or("").to_string(),
        }
    }
}

/// A request for a bridge of a split conference that another bridge of it left behind (an
/// expire of the conference or of its relay to the lost bridge), sent before the next one.
pub type Orphan = (Target, ConferenceModify);

/// Where a conference runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Local,
    /// A brewery occupant JID.
    Remote(String),
}

/// The pool's state: the bridges and which conference is where.
#[derive(Debug, Default)]
pub struct Pool {
    /// The in-process bridge takes conferences too (with its stress).
    pub local: Option<BridgeInfo>,
    pub remotes: HashMap<String, BridgeInfo>,
    pub region: String,
    /// Meeting id → its bridge and its room.
    conferences: HashMap<String, (Target, String)>,
    /// How participants are placed (`[focus] bridge_selection`).
    pub selection: Selection,
    /// With `Selection::Split` or `Region`: the conferences and their bridges (docs/colibri2.md §4b).
    pub spreads: Spreads,
    /// Meeting id → room, of split conferences.
    rooms: HashMap<String, String>,
    /// The in-process bridge's relay id.
    pub local_relay_id: String,
    /// With `Selection::Region`: a bridge with this many of a conference's endpoints is
    /// overloaded for that conference (Jicofo's `max-bridge-participants`; 0: no limit).
    pub max_bridge_participants: usize,
}

impl Pool {
    /// The bridges that may take a new conference or participant, best first, as Jicofo's
    /// default selection orders them: not draining or shutting down; the focus's region
    /// first; least stressed first, overloaded ones last.
    pub fn candidates(&self) -> Vec<Target> {
        let mut all = self.available();
        let in_region = |i: &BridgeInfo| !self.region.is_empty() && i.region == self.region;
        // Stable: least stressed first within each group.
        all.sort_by(|a, b| {
            (!in_region(a.1))
                .cmp(&!in_region(b.1))
                .then_with(|| (a.1.stress > OVERLOADED).cmp(&(b.1.stress > OVERLOADED)))
        });
        all.into_iter().map(|(t, _)| t).collect()
    }

    /// The bridges that may take a new participant (not draining or shutting down), least
    /// stressed first (as Jicofo's selector orders them), with what the pool knows of them.
    fn available(&self) -> Vec<(Target, &BridgeInfo)> {
        let mut all: Vec<(Target, &BridgeInfo)> = self
            .local
            .iter()
            .map(|i| (Target::Local, i))
            .chain(
                self.remotes
                    .iter()
                    .map(|(j, i)| (Target::Remote(j.clone()), i)),
            )
            .filter(|(_, i)| !i.unavailable)
            .collect();
        all.sort_by(|a, b| {
            a.1.stress
                .total_cmp(&b.1.stress)
                .then_with(|| key(&a.0).cmp(key(&b.0)))
        });
        all
    }

    /// `Selection::Region`'s choice for a new endpoint of a conference that has `on`
    /// (Jicofo's `RegionBasedBridgeSelectionStrategy` without region groups) for a participant
    /// of region `participant` (none, or no bridge there: the focus's region; no bridge there
    /// either: every bridge is in the region): a bridge of the
    /// conference in the region that is not overloaded; else any such bridge in the region; else the conference's bridge in the
    /// region even if overloaded; else any bridge in the region; else a bridge of the
    /// conference that is not overloaded; else the least loaded. Overloaded: stress above 0.8,
    /// or `max_bridge_participants` of the conference on it.
    pub fn choose_region(&self, on: &OnBridges, participant: Option<&str>) -> Option<Target> {
        let all = self.available();
        let max = self.max_bridge_participants;
        let count = |t: &Target| on.iter().find(|(x, _)| x == t).map(|(_, n)| *n);
        let in_conf = |t: &Target| count(t).is_some();
        let loaded = |t: &Target, i: &BridgeInfo| {
            i.stress > OVERLOADED || (max > 0 && count(t).is_some_and(|n| n >= max))
        };
        // The participant's region if a bridge is there, else the focus's if a bridge is
        // there; else every bridge counts as in the region (Jicofo would go straight to the
        // least loaded bridge, a conference's overloaded one too).
        let has = |r: &str| !r.is_empty() && all.iter().any(|(_, i)| i.region == r);
        let region = participant
            .filter(|r| has(r))
            .or_else(|| has(&self.region).then_some(self.region.as_str()));
        let in_region = |i: &BridgeInfo| region.is_none_or(|r| i.region == r);
        let first = |ok: &dyn Fn(&Target, &BridgeInfo) -> bool| {
            all.iter().find(|(t, i)| ok(t, i)).map(|(t, _)| t.clone())
        };
        first(&|t, i| in_conf(t) && in_region(i) && !loaded(t, i))
            .or_else(|| first(&|t, i| in_region(i) && !loaded(t, i)))
            .or_else(|| first(&|t, i| in_conf(t) && in_region(i)))
            .or_else(|| first(&|_, i| in_region(i)))
            .or_else(|| first(&|t, i| in_conf(t) && !loaded(t, i)))
            .or_else(|| first(&|_, _| true))
    }

    /// How relays name bridge `t`.
    pub fn relay_id(&self, t: &Target) -> String {
        match t {
            Target::Local => self.local_relay_id.clone(),
            Target::Remote(j) => match self.remotes.get(j) {
                Some(i) if !i.relay_id.is_empty() => i.relay_id.clone(),
                _ => j.rsplit('/').next().unwrap_or(j).to_string(),
            },
        }
    }

    /// Plan a request of a split conference (docs/colibri2.md §4b). A conference one of
    /// whose bridges left is not found (it starts again).
    pub fn plan(&mut self, req: &ConferenceModify) -> Result<Plan, Colibri2Error> {
        if req.create && !self.spreads.contains(&req.meeting_id) {
            self.rooms
                .insert(req.meeting_id.clone(), req.name.clone().unwrap_or_default());
        }
        let gone = self
            .spreads
            .bridges(&req.meeting_id)
            .iter()
            .any(|t| match t {
                Target::Local => self.local.is_none(),
                Target::Remote(j) => !self.remotes.contains_key(j),
            });
        if gone {
            self.forget(&req.meeting_id);
            return Err(Colibri2Error::ConferenceNotFound {
                meeting_id: req.meeting_id.clone(),
            });
        }
        let candidates = self.candidates();
        let ids: HashMap<Target, String> = candidates
            .iter()
            .chain(self.spreads.bridges(&req.meeting_id).iter())
            .map(|t| (t.clone(), self.relay_id(t)))
            .collect();
        let relay_id = |t: &Target| ids.get(t).cloned().unwrap_or_default();
        let mut spreads = std::mem::take(&mut self.spreads);
        let plan = {
            let me = &*self;
            let choose = |on: &OnBridges, region: Option<&str>| match me.selection {
                Selection::Region => me.choose_region(on, region),
                _ => fewest(on, &candidates),
            };
            spreads.plan(req, &choose, &relay_id)
        };
        self.spreads = spreads;
        if req.expire {
            self.rooms.remove(&req.meeting_id);
        }
        plan
    }

    /// The bridge for a new conference, as Jicofo's default selection picks it.
    pub fn choose(&self) -> Option<Target> {
        self.candidates().into_iter().next()
    }

    /// Where conference `meeting_id` runs; a `create` gets a bridge.
    pub fn route(&mut self, req: &ConferenceModify) -> Result<Target, Colibri2Error> {
        if req.create && !self.conferences.contains_key(&req.meeting_id) {
            let t = self.choose().ok_or(Colibri2Error::GracefulShutdown)?;
            let room = req.name.clone().unwrap_or_default();
            self.conferences
                .insert(req.meeting_id.clone(), (t.clone(), room));
            return Ok(t);
        }
        let t = self
            .conferences
            .get(&req.meeting_id)
            .map(|(t, _)| t.clone())
            .ok_or_else(|| Colibri2Error::ConferenceNotFound {
                meeting_id: req.meeting_id.clone(),
            })?;
        if let Target::Remote(j) = &t
            && !self.remotes.contains_key(j)
        {
            // The bridge left: the conference is gone with it.
            self.conferences.remove(&req.meeting_id);
            return Err(Colibri2Error::ConferenceNotFound {
                meeting_id: req.meeting_id.clone(),
            });
        }
        if req.expire {
            self.conferences.remove(&req.meeting_id);
        }
        Ok(t)
    }

    /// The conference is not on its bridge any more (it answered `conference_not_found`);
    /// a split one's other bridges are returned (they are to expire it).
    pub fn forget(&mut self, meeting_id: &str) -> Vec<Target> {
        self.conferences.remove(meeting_id);
        self.rooms.remove(meeting_id);
        self.spreads.forget(meeting_id)
    }

    /// Bridge `jid` left: it is out of the pool. What it took: the rooms of its conferences
    /// (forgotten: they start again elsewhere), and of split conferences that go on
    /// elsewhere the participants it had; with the requests their other bridges are to get
    /// (their relays to it expired).
    pub fn bridge_left(&mut self, jid: &str) -> Option<(Vec<BridgeLoss>, Vec<Orphan>)> {
        let gone = Target::Remote(jid.to_string());
        let gone_id = self.relay_id(&gone);
        self.remotes.remove(jid)?;
        let mut orphans = Vec::new();
        let mut losses = Vec::new();
        for d in self.spreads.drop_bridge(&gone) {
            let room = self.rooms.get(&d.meeting_id).cloned().unwrap_or_default();
            if d.left.is_empty() {
                self.rooms.remove(&d.meeting_id);
                losses.push(BridgeLoss::Conference(room));
                continue;
            }
            for t in d.left {
                let mut m = ConferenceModify::new(d.meeting_id.clone());
                m.relays.push(Relay {
                    id: gone_id.clone(),
                    expire: true,
                    ..Relay::default()
                });
                orphans.push((t, m));
            }
            if !d.endpoints.is_empty() {
                losses.push(BridgeLoss::Endpoints {
                    room,
                    endpoints: d.endpoints,
                });
            }
        }
        let mut rooms = Vec::new();
        self.conferences.retain(|_, (t, room)| {
            if *t == gone {
                rooms.push(room.clone());
                false
            } else {
                true
            }
        });
        losses.extend(rooms.into_iter().map(BridgeLoss::Conference));
        Some((losses, orphans))
    }

    /// Conferences per target.
    #[cfg(test)]
    pub fn load(&self) -> HashMap<Target, usize> {
        let mut m = HashMap::new();
        for (t, _) in self.conferences.values() {
            *m.entry(t.clone()).or_default() += 1;
        }
        m
    }
}

fn key(t: &Target) -> &str {
    match t {
        Target::Local => "",
        Target::Remote(j) => j,
    }
}

/// A remote bridge's error answer as the focus's Colibri2 error.
pub fn error_of(iq: &Element, meeting_id: &str) -> Colibri2Error {
    let Some(e) = iq.get_child("error", "jabber:client") else {
        return Colibri2Error::FeatureNotImplemented("no error in the bridge's answer".into());
    };
    let text = e
        .get_child("text", meetd_xmpp::ns::STANZAS)
        .map(|t| t.text())
        .unwrap_or_default();
    match Reason::from_stanza_error(e) {
        Some(Reason::ConferenceNotFound) => Colibri2Error::ConferenceNotFound {
            meeting_id: meeting_id.to_string(),
        },
        Some(Reason::ConferenceAlreadyExists) => Colibri2Error::ConferenceAlreadyExists {
            meeting_id: meeting_id.to_string(),
        },
        Some(Reason::GracefulShutdown) => Colibri2Error::GracefulShutdown,
        Some(Reason::UnknownEndpoint) => Colibri2Error::UnknownEndpoint {
            id: e
                .children()
                .find(|c| c.name() == "endpoint")
                .and_then(|c| c.attr("id"))
                .unwrap_or("")
                .to_string(),
        },
        _ => {
            let cond = e
                .children()
                .find(|c| c.ns() == meetd_xmpp::ns::STANZAS && c.name() != "text")
                .map(|c| c.name().to_string())
                .unwrap_or_default();
            match cond.as_str() {
                "bad-request" => Colibri2Error::BadRequest(text),
                "resource-constraint" => Colibri2Error::Busy,
                "conflict" => Colibri2Error::Conflict(text),
                "item-not-found" => Colibri2Error::ConferenceNotFound {
                    meeting_id: meeting_id.to_string(),
                },
                _ => Colibri2Error::FeatureNotImplemented(format!("{cond}: {text}")),
            }
        }
    }
}

/// The pool on the router. See the module docs.
pub struct BridgePool {
    pool: Mutex<Pool>,
    local: Option<Arc<ColibriService>>,
    router: Arc<Router>,
    jid: String,
    /// Requests waiting for remote answers: IQ id → (the bridge, its waiter).
    pending: Mutex<HashMap<String, (String, oneshot::Sender<Element>)>>,
    next_id: Mutex<u64>,
    /// The brewery nick of the in-process bridge, when it sits there too (not a remote).
    own_bridge: Option<String>,
    /// Rooms whose bridge left, for the focus.
    lost: mpsc::Sender<BridgeLoss>,
    /// Split conferences whose other bridge left: (bridge, meeting id) to expire.
    orphans: Mutex<Vec<Orphan>>,
    /// One request of a split conference at a time (its plan depends on the one before).
    split_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl BridgePool {
    /// The pool with `local` (the in-process bridge, when it takes conferences) and the
    /// bridges of `brewery` (a room JID), which the pool joins as `jid` (a full JID of the
    /// auth domain).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        router: Arc<Router>,
        local: Option<Arc<ColibriService>>,
        brewery: &str,
        jid: &str,
        region: &str,
        own_bridge: Option<String>,
        selection: Selection,
        max_bridge_participants: usize,
        lost: mpsc::Sender<BridgeLoss>,
    ) -> Arc<BridgePool> {
        let p = Arc::new(BridgePool {
            pool: Mutex::new(Pool {
                local: local.as_ref().map(|_| BridgeInfo::default()),
                region: region.to_string(),
                selection,
                max_bridge_participants,
                local_relay_id: own_bridge.clone().unwrap_or_else(|| "meetd".into()),
                ..Pool::default()
            }),
            orphans: Mutex::new(Vec::new()),
            split_locks: Mutex::new(HashMap::new()),
            local,
            router: router.clone(),
            jid: jid.to_string(),
            pending: Mutex::new(HashMap::new()),
            next_id: Mutex::new(1),
            own_bridge,
            lost,
        });
        let (tx, mut rx) = mpsc::channel::<Box<Element>>(MAILBOX);
        router.bind(jid, tx);
        let nick = jid.rsplit('/').next().unwrap_or("focus");
        let mut join = el(
            "presence",
            "jabber:client",
            &[("from", jid), ("to", &format!("{brewery}/{nick}"))],
        );
        join.append_child(el("x", NS_MUC, &[]));
        router.route(join);
        let me = p.clone();
        let brewery = brewery.to_string();
        tokio::spawn(async move {
            while let Some(st) = rx.recv().await {
                me.stanza(&brewery, &st);
            }
        });
        p
    }

    fn stanza(&self, brewery: &str, st: &Element) {
        let from = st.attr("from").unwrap_or("");
        match st.name() {
            "presence" => {
                let Some((room, nick)) = from.split_once('/') else {
                    return;
                };
                if room != brewery
                    || nick == self.nick()
                    || self.own_bridge.as_deref() == Some(nick)
                {
                    return;
                }
                let mut pool = self.pool.lock();
                match (st.attr("type"), st.get_child("stats", NS_COLIBRI)) {
                    (Some("unavailable"), _) => {
                        drop(pool);
                        self.lose(from, "it left the brewery");
                    }
                    (None, Some(stats)) => {
                        let info = BridgeInfo::from_stats(stats);
                        if pool.remotes.insert(from.to_string(), info).is_none() {
                            tracing::info!(bridge = %from, "bridge pool: a bridge joined the brewery");
                        }
                    }
                    _ => {}
                }
            }
            "iq" if matches!(st.attr("type"), Some("result") | Some("error")) => {
                let id = st.attr("id").unwrap_or("");
                let waiter = self.pending.lock().remove(id);
                if let Some((_, tx)) = waiter {
                    let _ = tx.send(st.clone());
                }
            }
            "iq" => {
                if let Some(e) =
                    stanza::error_reply(st, stanza::StanzaError::SERVICE_UNAVAILABLE, None)
                {
                    let mut e = e;
                    stanza::set_attr(&mut e, "from", &self.jid);
                    self.router.route(e);
                }
            }
            _ => {}
        }
    }

    /// Bridge `jid` is out of the pool: its conferences start again elsewhere, at once.
    fn lose(&self, jid: &str, why: &str) {
        // Requests waiting for it fail now, not after the timeout.
        self.pending.lock().retain(|_, (b, _)| b != jid);
        let Some((losses, orphans)) = self.pool.lock().bridge_left(jid) else {
            return;
        };
        // The other bridges of its split conferences expire them before they start again.
        {
            let mut o = self.orphans.lock();
            o.extend(orphans);
            let n = o.len();
            if n > MAX_PENDING {
                o.drain(..n - MAX_PENDING);
            }
        }
        tracing::warn!(bridge = %jid, conferences = losses.len(), why, "bridge pool: a bridge is gone; its conferences start again elsewhere (or, when spread, its participants move)");
        for loss in losses {
            if self.lost.try_send(loss).is_err() {
                tracing::warn!(
                    "bridge pool: the focus's queue is full; a conference moves on its next request"
                );
            }
        }
    }

    fn nick(&self) -> &str {
        self.jid.rsplit('/').next().unwrap_or("focus")
    }

    /// The in-process bridge's stress (its conferences count as load) for the choice.
    pub fn set_local_stress(&self, stress: f64) {
        if let Some(l) = self.pool.lock().local.as_mut() {
            l.stress = stress;
        }
    }

    async fn remote(
        &self,
        bridge: &str,
        req: &ConferenceModify,
    ) -> Result<ConferenceModified, Colibri2Error> {
        let id = {
            let mut n = self.next_id.lock();
            *n += 1;
            format!("c2-{n}")
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock();
            if pending.len() >= MAX_PENDING {
                return Err(Colibri2Error::Busy);
            }
            pending.insert(id.clone(), (bridge.to_string(), tx));
        }
        let mut iq = el(
            "iq",
            "jabber:client",
            &[
                ("type", "get"),
                ("id", &id),
                ("from", &self.jid),
                ("to", bridge),
            ],
        );
        iq.append_child(req.to_element());
        self.router.route(iq);
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, rx).await;
        self.pending.lock().remove(&id);
        let Ok(Ok(answer)) = answer else {
            // A bridge that does not answer is as good as gone (Jicofo counts such failures
            // against a bridge too): it is out of the pool until its next stats presence.
            self.lose(bridge, "no answer to a Colibri2 request");
            return Err(Colibri2Error::ConferenceNotFound {
                meeting_id: req.meeting_id.clone(),
            });
        };
        if answer.attr("type") == Some("error") {
            return Err(error_of(&answer, &req.meeting_id));
        }
        match answer.get_child("conference-modified", NS_COLIBRI2) {
            Some(m) => ConferenceModified::parse(m),
            None => Err(Colibri2Error::FeatureNotImplemented(
                "the bridge's answer has no conference-modified".into(),
            )),
        }
    }
}

impl BridgePool {
    /// One request to one bridge.
    async fn send(
        &self,
        target: &Target,
        req: &ConferenceModify,
    ) -> Result<ConferenceModified, Colibri2Error> {
        match target {
            Target::Local => match &self.local {
                Some(l) => l.handle(req),
                None => Err(Colibri2Error::ConferenceNotFound {
                    meeting_id: req.meeting_id.clone(),
                }),
            },
            Target::Remote(j) => self.remote(j, req).await,
        }
    }

    /// A request of a conference spread over bridges (docs/colibri2.md §4b): its parts to
    /// their bridges, then new relays, then what the other bridges' relays learn. The
    /// answer is the parts' answers together, as one bridge would give it.
    async fn modify_split(
        &self,
        req: &ConferenceModify,
    ) -> Result<ConferenceModified, Colibri2Error> {
        let lock = {
            let mut locks = self.split_locks.lock();
            if locks.len() > MAX_PENDING {
                locks.retain(|_, l| Arc::strong_count(l) > 1);
            }
            locks.entry(req.meeting_id.clone()).or_default().clone()
        };
        let _one_at_a_time = lock.lock().await;
        let orphans: Vec<Orphan> = std::mem::take(&mut *self.orphans.lock());
        for (t, m) in orphans {
            let _ = self.send(&t, &m).await;
        }
        let plan = self.pool.lock().plan(req)?;
        let mut answer = ConferenceModified::default();
        for (t, part) in &plan.primary {
            match self.send(t, part).await {
                Ok(m) => {
                    answer.endpoints.extend(m.endpoints);
                    if req.create && answer.sources.is_none() {
                        answer.sources = m.sources;
                    }
                    if part.create {
                        tracing::info!(meeting = %req.meeting_id, bridge = ?t, "bridge pool: conference placed (split)");
                    }
                }
                Err(e) => {
                    if req.expire {
                        continue;
                    }
                    tracing::warn!(meeting = %req.meeting_id, bridge = ?t, error = %e, "bridge pool: a split conference's bridge refused; it starts again");
                    let others = self.pool.lock().forget(&req.meeting_id);
                    for o in others.iter().filter(|o| *o != t) {
                        let mut expire = ConferenceModify::new(req.meeting_id.clone());
                        expire.expire = true;
                        let _ = self.send(o, &expire).await;
                    }
                    return Err(Colibri2Error::ConferenceNotFound {
                        meeting_id: req.meeting_id.clone(),
                    });
                }
            }
        }
        for link in plan.links {
            if let Err(e) = self.link(&req.meeting_id, link).await {
                tracing::warn!(meeting = %req.meeting_id, error = %e, "bridge pool: a relay between bridges failed");
            }
        }
        for (t, m) in &plan.mirror {
            if let Err(e) = self.send(t, m).await {
                tracing::warn!(meeting = %req.meeting_id, bridge = ?t, error = %e, "bridge pool: a relay did not take an endpoint");
            }
        }
        Ok(answer)
    }

    /// Two relays between bridges: each created, then each told the other's transport.
    async fn link(&self, meeting_id: &str, l: Link) -> Result<(), Colibri2Error> {
        let no_transport =
            || Colibri2Error::FeatureNotImplemented("the relay answer has no transport".into());
        let a = self.send(&l.a, &l.a_create).await?;
        let b = self.send(&l.b, &l.b_create).await?;
        let ta = a
            .relays
            .first()
            .and_then(|r| r.transport.clone())
            .ok_or_else(no_transport)?;
        let tb = b
            .relays
            .first()
            .and_then(|r| r.transport.clone())
            .ok_or_else(no_transport)?;
        let (id_at_a, id_at_b) = (
            l.a_create.relays[0].id.clone(),
            l.b_create.relays[0].id.clone(),
        );
        self.send(&l.a, &Link::peer(meeting_id, &id_at_a, tb))
            .await?;
        self.send(&l.b, &Link::peer(meeting_id, &id_at_b, ta))
            .await?;
        tracing::info!(meeting = %meeting_id, a = ?l.a, b = ?l.b, "bridge pool: relay between bridges set up");
        Ok(())
    }
}

impl Bridge for BridgePool {
    fn modify(
        &self,
        req: ConferenceModify,
    ) -> BoxFuture<'_, Result<ConferenceModified, Colibri2Error>> {
        Box::pin(async move {
            if self.pool.lock().selection.spreads() {
                return self.modify_split(&req).await;
            }
            let target = self.pool.lock().route(&req)?;
            let r = self.send(&target, &req).await;
            if req.create && r.is_ok() {
                tracing::info!(meeting = %req.meeting_id, bridge = ?target, "bridge pool: conference placed");
            }
            if matches!(r, Err(Colibri2Error::ConferenceNotFound { .. }))
                || (req.create && r.is_err())
            {
                self.pool.lock().forget(&req.meeting_id);
            }
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(stress: f64, region: &str, unavailable: bool) -> BridgeInfo {
        BridgeInfo {
            stress,
            region: region.into(),
            unavailable,
            relay_id: String::new(),
        }
    }

    fn create(id: &str) -> ConferenceModify {
        let mut m = ConferenceModify::new(id);
        m.create = true;
        m
    }

    #[test]
    fn stats_are_read_as_jicofo_reads_them() {
        let s: Element = "<stats xmlns='http://jitsi.org/protocol/colibri'><stat name='stress_level' value='0.5'/><stat name='region' value='eu'/><stat name='drain' value='false'/></stats>".parse().unwrap();
        assert_eq!(BridgeInfo::from_stats(&s), info(0.5, "eu", false));
        let s: Element = "<stats xmlns='http://jitsi.org/protocol/colibri'><stat name='stress_level' value='NaN'/><stat name='graceful_shutdown' value='true'/></stats>".parse().unwrap();
        assert_eq!(BridgeInfo::from_stats(&s), info(0.0, "", true));
    }

    #[test]
    fn region_then_least_stress_overloaded_last_never_draining() {
        let mut p = Pool {
            local: Some(info(0.3, "", false)),
            region: "eu".into(),
            ..Pool::default()
        };
        p.remotes.insert("b@x/us".into(), info(0.1, "us", false));
        p.remotes.insert("b@x/eu1".into(), info(0.6, "eu", false));
        p.remotes.insert("b@x/eu2".into(), info(0.4, "eu", false));
        p.remotes.insert("b@x/eu3".into(), info(0.0, "eu", true));
        assert_eq!(p.choose(), Some(Target::Remote("b@x/eu2".into())));
        p.remotes.get_mut("b@x/eu2").unwrap().stress = 0.9;
        p.remotes.get_mut("b@x/eu1").unwrap().stress = 0.95;
        assert_eq!(
            p.choose(),
            Some(Target::Remote("b@x/eu2".into())),
            "overloaded, but the region's"
        );
        p.region = "asia".into();
        assert_eq!(
            p.choose(),
            Some(Target::Remote("b@x/us".into())),
            "no bridge in the region: all"
        );
        p.remotes.clear();
        p.local = Some(info(0.0, "", true));
        assert_eq!(p.choose(), None);
    }

    #[test]
    fn a_conference_stays_on_its_bridge_until_that_bridge_leaves() {
        let mut p = Pool::default();
        p.remotes.insert("b@x/1".into(), info(0.1, "", false));
        let t = p.route(&create("m1")).unwrap();
        assert_eq!(t, Target::Remote("b@x/1".into()));
        p.remotes.insert("b@x/2".into(), info(0.0, "", false));
        assert_eq!(p.route(&ConferenceModify::new("m1")).unwrap(), t, "sticky");
        assert_eq!(p.load().get(&t), Some(&1));
        p.remotes.remove("b@x/1");
        assert!(matches!(
            p.route(&ConferenceModify::new("m1")),
            Err(Colibri2Error::ConferenceNotFound { .. })
        ));
        // Started again: on the bridge still there.
        assert_eq!(
            p.route(&create("m1")).unwrap(),
            Target::Remote("b@x/2".into())
        );
        let mut expire = ConferenceModify::new("m1");
        expire.expire = true;
        p.route(&expire).unwrap();
        assert!(p.load().is_empty());
        assert!(matches!(
            p.route(&ConferenceModify::new("zz")),
            Err(Colibri2Error::ConferenceNotFound { .. })
        ));
    }

    fn r(n: &str) -> Target {
        Target::Remote(format!("b@x/{n}"))
    }

    #[test]
    fn region_selection_keeps_a_conference_on_its_bridge_until_it_is_overloaded() {
        let mut p = Pool {
            selection: Selection::Region,
            max_bridge_participants: 3,
            ..Pool::default()
        };
        p.remotes.insert("b@x/1".into(), info(0.3, "", false));
        p.remotes.insert("b@x/2".into(), info(0.1, "", false));
        p.remotes.insert("b@x/3".into(), info(0.2, "", false));
        assert_eq!(
            p.choose_region(&[], None),
            Some(r("2")),
            "a new conference: least stressed"
        );
        assert_eq!(
            p.choose_region(&[(r("1"), 2)], None),
            Some(r("1")),
            "its own bridge, although others are less stressed"
        );
        assert_eq!(
            p.choose_region(&[(r("1"), 3)], None),
            Some(r("2")),
            "max_bridge_participants reached: the least stressed other"
        );
        assert_eq!(
            p.choose_region(&[(r("1"), 3), (r("3"), 1)], None),
            Some(r("3")),
            "a bridge already in the conference before a new one"
        );
        p.remotes.get_mut("b@x/1").unwrap().stress = 0.85;
        assert_eq!(
            p.choose_region(&[(r("1"), 1)], None),
            Some(r("2")),
            "its bridge is stressed: overloaded"
        );
        for b in ["1", "2", "3"] {
            p.remotes.get_mut(&format!("b@x/{b}")).unwrap().stress = 0.9;
        }
        p.remotes.get_mut("b@x/2").unwrap().stress = 0.95;
        assert_eq!(
            p.choose_region(&[(r("2"), 3)], None),
            Some(r("2")),
            "all overloaded: the conference's own"
        );
        assert_eq!(
            p.choose_region(&[], None),
            Some(r("1")),
            "else the least loaded"
        );
        p.remotes.get_mut("b@x/3").unwrap().unavailable = true;
        p.remotes.get_mut("b@x/1").unwrap().unavailable = true;
        p.remotes.get_mut("b@x/2").unwrap().unavailable = true;
        assert_eq!(
            p.choose_region(&[], None),
            None,
            "draining bridges take nobody"
        );
    }

    #[test]
    fn region_selection_prefers_the_focus_region() {
        let mut p = Pool {
            selection: Selection::Region,
            region: "eu".into(),
            max_bridge_participants: 2,
            ..Pool::default()
        };
        p.remotes.insert("b@x/us".into(), info(0.0, "us", false));
        p.remotes.insert("b@x/eu1".into(), info(0.5, "eu", false));
        p.remotes.insert("b@x/eu2".into(), info(0.6, "eu", false));
        assert_eq!(p.choose_region(&[], None), Some(r("eu1")));
        assert_eq!(
            p.choose_region(&[(r("eu1"), 2)], None),
            Some(r("eu2")),
            "in the region first"
        );
        assert_eq!(
            p.choose_region(&[(r("eu1"), 2), (r("eu2"), 2)], None),
            Some(r("eu1")),
            "the region's conference bridge, overloaded, before another region"
        );
        // A participant's own region comes first; one nobody serves falls back to the focus's.
        assert_eq!(p.choose_region(&[(r("eu1"), 1)], Some("us")), Some(r("us")));
        assert_eq!(p.choose_region(&[], Some("mars")), Some(r("eu1")));
        p.region = "asia".into();
        assert_eq!(
            p.choose_region(&[], None),
            Some(r("us")),
            "no bridge in the region: any"
        );
    }

    #[test]
    fn region_selection_grows_a_conference_onto_a_second_bridge_with_relays() {
        let mut p = Pool {
            selection: Selection::Region,
            max_bridge_participants: 2,
            ..Pool::default()
        };
        p.remotes.insert("b@x/1".into(), info(0.0, "", false));
        p.remotes.insert("b@x/2".into(), info(0.1, "", false));
        let join = |p: &mut Pool, ep: &str, create: bool| {
            let mut m = ConferenceModify::new("m1");
            m.create = create;
            m.name = Some("room@muc.meet.jitsi".into());
            let mut e = meetd_colibri::colibri2::Endpoint::new(ep);
            e.create = true;
            m.endpoints.push(e);
            p.plan(&m).unwrap()
        };
        let a = join(&mut p, "alice", true);
        assert_eq!(a.primary.len(), 1);
        assert_eq!(a.primary[0].0, r("1"));
        assert!(a.links.is_empty());
        let b = join(&mut p, "bob", false);
        assert_eq!(b.primary[0].0, r("1"), "Bob stays with Alice");
        assert!(b.links.is_empty());
        let c = join(&mut p, "carol", false);
        assert_eq!(
            c.primary[0].0,
            r("2"),
            "bridge 1 has max_bridge_participants"
        );
        assert!(c.primary[0].1.create, "bridge 2 creates the conference");
        assert_eq!(c.links.len(), 1, "a relay between the two bridges");
        let relayed: Vec<&str> = c.links[0].b_create.relays[0]
            .endpoints
            .iter()
            .map(|e| e.id.as_str())
            .collect();
        assert_eq!(
            relayed,
            ["alice", "bob"],
            "bridge 2's relay carries Alice and Bob"
        );
        let d = join(&mut p, "dave", false);
        assert_eq!(d.primary[0].0, r("2"), "with Carol, no new relay");
        assert!(d.links.is_empty());
        assert_eq!(d.mirror.len(), 1, "bridge 1's relay learns of Dave");
    }

    #[test]
    fn remote_errors_become_colibri2_errors() {
        let e = Colibri2Error::UnknownEndpoint { id: "ep1".into() };
        let req: Element = "<iq xmlns='jabber:client' type='get' id='1' from='a@b/c' to='d@e/f'/>"
            .parse()
            .unwrap();
        let iq = e.to_error_iq(&req);
        assert!(matches!(error_of(&iq, "m"), Colibri2Error::UnknownEndpoint { id } if id == "ep1"));
        let iq = Colibri2Error::ConferenceNotFound {
            meeting_id: "m".into(),
        }
        .to_error_iq(&req);
        assert!(matches!(
            error_of(&iq, "m"),
            Colibri2Error::ConferenceNotFound { .. }
        ));
        let iq = Colibri2Error::Busy.to_error_iq(&req);
        assert!(matches!(error_of(&iq, "m"), Colibri2Error::Busy));
        let iq = Colibri2Error::BadRequest("x".into()).to_error_iq(&req);
        assert!(matches!(error_of(&iq, "m"), Colibri2Error::BadRequest(t) if t == "x"));
    }
}
