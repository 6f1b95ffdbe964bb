//! Conferences across bridges (docs/colibri2.md §4b): with `[focus] bridge_selection =
//! "split"` the bridge pool spreads a conference's participants over its bridges, and joins
//! the bridges of a conference with Colibri2 relays, as Jicofo's session manager does. The
//! focus's conference still sees one bridge: the pool sends each endpoint's requests to the
//! endpoint's bridge, and tells every other bridge of the conference, through its relay to
//! that bridge, of the endpoint and its sources.
//!
//! [`Spreads`] is the plan, sans-IO: for one request of the focus, which bridge gets which
//! part, which relays are to be set up, and which relays learn of which endpoints. The pool
//! (`bridge_pool.rs`) sends what it says, in its order.
//!
//! Each relay has a UDP port of its own on its bridge (JVB's `use-unique-port`), so any
//! number of conferences may span the same bridges.

use std::collections::{BTreeMap, HashMap};

use meetd_colibri::colibri2::{
    Colibri2Error, ConferenceModify, Endpoint, Media, Relay, Sources, Transport,
};

use crate::bridge_pool::Target;

/// How a new participant's bridge is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Selection {
    /// A conference stays on the bridge it started on (Jicofo's default strategies).
    #[default]
    Single,
    /// Each participant on the bridge of the conference with the fewest participants, new
    /// bridges first (Jicofo's `SplitBridgeSelectionStrategy`, for testing cascades).
    Split,
    /// A conference stays on its bridge until that bridge is overloaded (stress, or
    /// `max_bridge_participants` of the conference on it); then newcomers go to the least
    /// loaded other bridge, joined by a relay, the focus's region first (Jicofo's
    /// `RegionBasedBridgeSelectionStrategy`, docs/colibri2.md §4c).
    Region,
}

impl Selection {
    /// Whether conferences may span bridges (they go through [`Spreads`]).
    pub fn spreads(self) -> bool {
        self != Selection::Single
    }
}

/// A conference's bridges and how many of its endpoints each has, in the order the bridges
/// joined it. The pool's strategy picks a new endpoint's bridge from it.
pub type OnBridges = [(Target, usize)];

/// One conference over its bridges.
#[derive(Debug, Default)]
struct Spread {
    /// Its bridges in the order they joined it.
    bridges: Vec<Target>,
    /// Endpoint → its bridge and its last sources.
    endpoints: BTreeMap<String, (Target, Option<Sources>)>,
    /// The payload types and header extensions of the relays (the first offer seen).
    medias: Vec<Media>,
    /// Visitors' endpoints (docs/visitors.md): they send nothing, and no relay carries them.
    visitors: std::collections::HashSet<String>,
}

/// Two relays to set up between `a` (ICE-controlling, DTLS client) and `b`: send each its
/// create, then each the other's transport from the answers.
#[derive(Debug)]
pub struct Link {
    pub a: Target,
    pub b: Target,
    /// The create for `a` (its relay named by `b`'s relay id) and for `b`.
    pub a_create: ConferenceModify,
    pub b_create: ConferenceModify,
}

impl Link {
    /// The update that gives the relay named `relay` on its bridge the other side's
    /// transport (the `<transport>` of the other bridge's create answer).
    pub fn peer(meeting_id: &str, relay: &str, transport: Transport) -> ConferenceModify {
        let mut m = ConferenceModify::new(meeting_id);
        m.relays.push(Relay {
            id: relay.to_string(),
            transport: Some(Transport {
                ice: transport.ice,
                ..Transport::default()
            }),
            ..Relay::default()
        });
        m
    }
}

/// What to send for one request of the focus, in this order.
#[derive(Debug, Default)]
pub struct Plan {
    /// The request's parts, per bridge.
    pub primary: Vec<(Target, ConferenceModify)>,
    /// Relays between bridges new to each other.
    pub links: Vec<Link>,
    /// Relays that learn of new, changed or gone endpoints.
    pub mirror: Vec<(Target, ConferenceModify)>,
}

/// What a lost bridge took from one conference.
#[derive(Debug, PartialEq)]
pub struct Dropped {
    pub meeting_id: String,
    /// Its endpoints that were on that bridge.
    pub endpoints: Vec<String>,
    /// The conference's bridges left (each to drop its relay to the lost one).
    pub left: Vec<Target>,
}

/// The split conferences. See the module docs.
#[derive(Debug, Default)]
pub struct Spreads {
    confs: HashMap<String, Spread>,
}

impl Spreads {
    pub fn contains(&self, meeting_id: &str) -> bool {
        self.confs.contains_key(meeting_id)
    }

    /// The conference's bridges.
    pub fn bridges(&self, meeting_id: &str) -> Vec<Target> {
        self.confs
            .get(meeting_id)
            .map(|s| s.bridges.clone())
            .unwrap_or_default()
    }

    /// The conference is gone: its bridges are free for other splits.
    pub fn forget(&mut self, meeting_id: &str) -> Vec<Target> {
        self.confs
            .remove(meeting_id)
            .map(|s| s.bridges)
            .unwrap_or_default()
    }

    /// Bridge `t` is gone. Per conference that used it: the endpoints it had, and the bridges
    /// left (none: the conference is forgotten and starts again). `relay_id`: `t`'s.
    pub fn drop_bridge(&mut self, t: &Target) -> Vec<Dropped> {
        let mut out = Vec::new();
        for m in self.using(t) {
            let Some(spread) = self.confs.get_mut(&m) else {
                continue;
            };
            spread.bridges.retain(|b| b != t);
            let lost: Vec<String> = spread
                .endpoints
                .iter()
                .filter(|(_, (b, _))| b == t)
                .map(|(id, _)| id.clone())
                .collect();
            spread.endpoints.retain(|_, (b, _)| b != t);
            let left_ids: Vec<String> = spread.endpoints.keys().cloned().collect();
            spread.visitors.retain(|v| left_ids.contains(v));
            let left = spread.bridges.clone();
            if left.is_empty() {
                self.forget(&m);
            }
            out.push(Dropped {
                meeting_id: m,
                endpoints: lost,
                left,
            });
        }
        out
    }

    /// The conferences that use bridge `t` (they start again when it is lost).
    pub fn using(&self, t: &Target) -> Vec<String> {
        self.confs
            .iter()
            .filter(|(_, s)| s.bridges.contains(t))
            .map(|(m, _)| m.clone())
            .collect()
    }

    /// Plan one request. `choose`: the pool's strategy, the bridge for a new endpoint given
    /// the conference's bridges and the participant's region (None: no bridge may take it);
    /// `relay_id`: a bridge's relay id.
    pub fn plan(
        &mut self,
        req: &ConferenceModify,
        choose: &dyn Fn(&OnBridges, Option<&str>) -> Option<Target>,
        relay_id: &dyn Fn(&Target) -> String,
    ) -> Result<Plan, Colibri2Error> {
        let mut plan = Plan::default();
        if req.create && !self.confs.contains_key(&req.meeting_id) {
            self.confs.insert(req.meeting_id.clone(), Spread::default());
        }
        let not_found = || Colibri2Error::ConferenceNotFound {
            meeting_id: req.meeting_id.clone(),
        };
        if req.expire {
            for t in self.forget(&req.meeting_id) {
                let mut m = ConferenceModify::new(req.meeting_id.clone());
                m.expire = true;
                plan.primary.push((t, m));
            }
            return Ok(plan);
        }
        let spread = self.confs.get_mut(&req.meeting_id).ok_or_else(not_found)?;
        let old_bridges = spread.bridges.clone();
        let mut parts: Vec<(Target, ConferenceModify)> = Vec::new();
        let part = |parts: &mut Vec<(Target, ConferenceModify)>, t: &Target| -> usize {
            if let Some(i) = parts.iter().position(|(x, _)| x == t) {
                return i;
            }
            let mut m = ConferenceModify::new(req.meeting_id.clone());
            m.rtcstats_enabled = req.rtcstats_enabled;
            parts.push((t.clone(), m));
            parts.len() - 1
        };
        for ep in &req.endpoints {
            let known = spread.endpoints.get(&ep.id).map(|(t, _)| t.clone());
            let t = match known {
                Some(t) => t,
                None if ep.create => choose(&spread.on_bridges(), ep.region.as_deref())
                    .ok_or(Colibri2Error::GracefulShutdown)?,
                None if ep.expire => continue,
                None => return Err(Colibri2Error::UnknownEndpoint { id: ep.id.clone() }),
            };
            if !spread.bridges.contains(&t) {
                spread.bridges.push(t.clone());
            }
            if spread.medias.is_empty() && !ep.medias.is_empty() {
                spread.medias = ep.medias.clone();
            }
            if ep.create && ep.muc_role.as_deref() == Some("visitor") {
                spread.visitors.insert(ep.id.clone());
            }
            let visitor = spread.visitors.contains(&ep.id);
            if ep.expire {
                spread.endpoints.remove(&ep.id);
                spread.visitors.remove(&ep.id);
            } else {
                let sources = ep
                    .sources
                    .clone()
                    .or_else(|| spread.endpoints.get(&ep.id).and_then(|(_, s)| s.clone()));
                spread.endpoints.insert(ep.id.clone(), (t.clone(), sources));
            }
            let i = part(&mut parts, &t);
            parts[i].1.endpoints.push(ep.clone());
            // The bridges that knew the conference before learn of the endpoint through
            // their relay to its bridge (new relays get everyone at their creation).
            if old_bridges.contains(&t)
                && !visitor
                && (ep.create || ep.expire || ep.sources.is_some())
            {
                for b in old_bridges.iter().filter(|b| **b != t) {
                    let mut far = Endpoint::new(ep.id.clone());
                    far.create = ep.create;
                    far.expire = ep.expire;
                    far.stats_id = ep.stats_id.clone();
                    far.sources = ep.sources.clone();
                    let mut m = ConferenceModify::new(req.meeting_id.clone());
                    m.relays.push(Relay {
                        id: relay_id(&t),
                        endpoints: vec![far],
                        ..Relay::default()
                    });
                    plan.mirror.push((b.clone(), m));
                }
            }
        }
        if req.create && parts.is_empty() && spread.bridges.is_empty() {
            let t = choose(&[], None).ok_or(Colibri2Error::GracefulShutdown)?;
            spread.bridges.push(t.clone());
            part(&mut parts, &t);
        }
        // A bridge new to the conference creates it.
        for (t, m) in &mut parts {
            if !old_bridges.contains(t) {
                m.create = true;
                m.name.clone_from(&req.name);
            }
        }
        // Its relays to every bridge that was there before, with what each side carries.
        let new: Vec<Target> = spread
            .bridges
            .iter()
            .filter(|b| !old_bridges.contains(b))
            .cloned()
            .collect();
        for n in &new {
            for e in spread.bridges.iter().filter(|b| *b != n) {
                if new.contains(e)
                    && new.iter().position(|x| x == e) > new.iter().position(|x| x == n)
                {
                    continue;
                }
                let relay_create = |on: &Target, to: &Target, controlling: bool| {
                    let mut m = ConferenceModify::new(req.meeting_id.clone());
                    m.relays.push(Relay {
                        id: relay_id(to),
                        create: true,
                        medias: spread.medias.clone(),
                        transport: Some(Transport {
                            ice_controlling: Some(controlling),
                            use_unique_port: Some(true),
                            ..Transport::default()
                        }),
                        endpoints: spread
                            .endpoints
                            .iter()
                            .filter(|(id, (t, _))| t == to && !spread.visitors.contains(*id))
                            .map(|(id, (_, s))| {
                                let mut far = Endpoint::new(id.clone());
                                far.create = true;
                                far.sources = s.clone();
                                far
                            })
                            .collect(),
                        ..Relay::default()
                    });
                    let _ = on;
                    m
                };
                plan.links.push(Link {
                    a: e.clone(),
                    b: n.clone(),
                    a_create: relay_create(e, n, true),
                    b_create: relay_create(n, e, false),
                });
            }
        }
        plan.primary = parts;
        Ok(plan)
    }
}

impl Spread {
    fn on_bridges(&self) -> Vec<(Target, usize)> {
        self.bridges
            .iter()
            .map(|t| {
                let n = self.endpoints.values().filter(|(x, _)| x == t).count();
                (t.clone(), n)
            })
            .collect()
    }
}

/// `Selection::Split`'s choice: of the candidates (best first), the one with the fewest of
/// the conference's endpoints, a new one before one that has as few, else in their order.
pub fn fewest(on: &OnBridges, candidates: &[Target]) -> Option<Target> {
    let count = |t: &Target| {
        on.iter()
            .find(|(x, _)| x == t)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    };
    candidates
        .iter()
        .enumerate()
        .min_by_key(|(i, t)| (count(t), *i))
        .map(|(_, t)| t.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meetd_colibri::colibri2::{MediaSource, MediaType, Source};

    fn t(n: &str) -> Target {
        Target::Remote(format!("jvbbrewery@internal-muc.meet.jitsi/{n}"))
    }

    fn rid(t: &Target) -> String {
        match t {
            Target::Local => "local".into(),
            Target::Remote(j) => j.rsplit('/').next().unwrap_or("").into(),
        }
    }

    fn create_ep(id: &str) -> Endpoint {
        let mut e = Endpoint::new(id);
        e.create = true;
        e
    }

    fn sources(ssrc: u32) -> Sources {
        Sources {
            media_sources: vec![MediaSource {
                kind: MediaType::Audio,
                id: format!("s{ssrc}"),
                synthetic: None,
                sources: vec![Source::new(ssrc)],
                ssrc_groups: Vec::new(),
            }],
        }
    }

    fn alloc(s: &mut Spreads, m: &str, ep: &str, create: bool, c: &[Target]) -> Plan {
        let choose = |on: &OnBridges, _: Option<&str>| fewest(on, c);
        let mut r = ConferenceModify::new(m);
        r.create = create;
        r.name = Some("room@muc.meet.jitsi".into());
        r.endpoints.push(create_ep(ep));
        s.plan(&r, &choose, &rid).unwrap()
    }

    #[test]
    fn participants_alternate_and_bridges_get_relays_to_each_other() {
        let mut s = Spreads::default();
        let c = [t("b1"), t("b2")];
        // The first on b1, which creates the conference; no relays yet.
        let p = alloc(&mut s, "m", "ep1", true, &c);
        assert_eq!(p.primary.len(), 1);
        assert_eq!(p.primary[0].0, t("b1"));
        assert!(p.primary[0].1.create && p.primary[0].1.name.is_some());
        assert!(p.links.is_empty() && p.mirror.is_empty());
        // Its sources arrive: nobody else to tell.
        let mut r = ConferenceModify::new("m");
        let mut e = Endpoint::new("ep1");
        e.sources = Some(sources(11));
        r.endpoints.push(e);
        let p = s
            .plan(&r, &|on: &OnBridges, _: Option<&str>| fewest(on, &c), &rid)
            .unwrap();
        assert_eq!(p.primary[0].0, t("b1"));
        assert!(p.mirror.is_empty());
        // The second on b2: b2 creates the conference, and b1 ↔ b2 get relays, each with
        // the other's endpoints and their sources; b1 controls.
        let p = alloc(&mut s, "m", "ep2", false, &c);
        assert_eq!(p.primary[0].0, t("b2"));
        assert!(
            p.primary[0].1.create,
            "a bridge new to the conference creates it"
        );
        assert_eq!(p.links.len(), 1);
        let l = &p.links[0];
        assert_eq!((&l.a, &l.b), (&t("b1"), &t("b2")));
        let ra = &l.a_create.relays[0];
        assert_eq!(ra.id, "b2");
        assert!(ra.create);
        assert_eq!(ra.transport.as_ref().unwrap().ice_controlling, Some(true));
        assert_eq!(ra.endpoints.len(), 1);
        assert_eq!(ra.endpoints[0].id, "ep2");
        let rb = &l.b_create.relays[0];
        assert_eq!(rb.id, "b1");
        assert_eq!(rb.transport.as_ref().unwrap().ice_controlling, Some(false));
        assert_eq!(rb.endpoints[0].id, "ep1");
        assert_eq!(rb.endpoints[0].sources, Some(sources(11)));
        assert!(p.mirror.is_empty());
        // The third on b1 again (fewest); b2 learns of it through its relay "b1".
        let p = alloc(&mut s, "m", "ep3", false, &c);
        assert_eq!(p.primary[0].0, t("b1"));
        assert!(!p.primary[0].1.create);
        assert!(p.links.is_empty());
        assert_eq!(p.mirror.len(), 1);
        assert_eq!(p.mirror[0].0, t("b2"));
        let r = &p.mirror[0].1.relays[0];
        assert_eq!(r.id, "b1");
        assert!(r.endpoints[0].create);
        // ep2's sources: b1 learns them; ep2 leaves: b1 forgets it.
        let mut r = ConferenceModify::new("m");
        let mut e = Endpoint::new("ep2");
        e.sources = Some(sources(22));
        r.endpoints.push(e);
        let p = s
            .plan(&r, &|on: &OnBridges, _: Option<&str>| fewest(on, &c), &rid)
            .unwrap();
        assert_eq!(p.primary[0].0, t("b2"));
        assert_eq!(p.mirror[0].0, t("b1"));
        assert_eq!(
            p.mirror[0].1.relays[0].endpoints[0].sources,
            Some(sources(22))
        );
        let mut r = ConferenceModify::new("m");
        let mut e = Endpoint::new("ep2");
        e.expire = true;
        r.endpoints.push(e);
        let p = s
            .plan(&r, &|on: &OnBridges, _: Option<&str>| fewest(on, &c), &rid)
            .unwrap();
        assert!(p.mirror[0].1.relays[0].endpoints[0].expire);
        // The conference ends: every bridge expires it.
        let mut r = ConferenceModify::new("m");
        r.expire = true;
        let p = s
            .plan(&r, &|on: &OnBridges, _: Option<&str>| fewest(on, &c), &rid)
            .unwrap();
        let mut gone: Vec<Target> = p.primary.iter().map(|(t, _)| t.clone()).collect();
        gone.sort_by_key(rid);
        assert_eq!(gone, vec![t("b1"), t("b2")]);
        assert!(p.primary.iter().all(|(_, m)| m.expire));
        assert!(!s.contains("m"));
    }

    #[test]
    fn no_relay_carries_a_visitor() {
        let mut s = Spreads::default();
        let c = [t("b1"), t("b2")];
        alloc(&mut s, "m", "e1", true, &c);
        alloc(&mut s, "m", "e2", false, &c);
        let mut r = ConferenceModify::new("m");
        let mut v = create_ep("v1");
        v.muc_role = Some("visitor".into());
        r.endpoints.push(v);
        let p = s
            .plan(&r, &|on: &OnBridges, _: Option<&str>| fewest(on, &c), &rid)
            .unwrap();
        assert_eq!(p.primary.len(), 1);
        assert!(
            p.mirror.is_empty(),
            "the other bridge is not told of a visitor"
        );
        // A third bridge's relays carry the participants only.
        let p = alloc(&mut s, "m", "e3", false, &[t("b3")]);
        let carried: Vec<&str> = p
            .links
            .iter()
            .flat_map(|l| l.b_create.relays[0].endpoints.iter().map(|e| e.id.as_str()))
            .collect();
        assert!(!carried.contains(&"v1"), "{carried:?}");
        assert!(carried.contains(&"e1") && carried.contains(&"e2"));
    }

    #[test]
    fn two_conferences_may_span_the_same_two_bridges() {
        let mut s = Spreads::default();
        let c = [t("b1"), t("b2")];
        alloc(&mut s, "m1", "a1", true, &c);
        assert_eq!(alloc(&mut s, "m1", "a2", false, &c).links.len(), 1);
        // Each relay has a port of its own: m2 splits over the same pair.
        assert_eq!(alloc(&mut s, "m2", "x1", true, &c).primary[0].0, t("b1"));
        let p = alloc(&mut s, "m2", "x2", false, &c);
        assert_eq!(p.primary[0].0, t("b2"));
        assert_eq!(p.links.len(), 1);
    }

    #[test]
    fn a_lost_bridge_takes_only_its_endpoints() {
        let mut s = Spreads::default();
        let c = [t("b1"), t("b2")];
        alloc(&mut s, "m", "e1", true, &c);
        alloc(&mut s, "m", "e2", false, &c);
        alloc(&mut s, "m", "e3", false, &c);
        alloc(&mut s, "solo", "x1", true, &[t("b2")]);
        let mut d = s.drop_bridge(&t("b2"));
        d.sort_by(|a, b| a.meeting_id.cmp(&b.meeting_id));
        assert_eq!(
            d,
            vec![
                Dropped {
                    meeting_id: "m".into(),
                    endpoints: vec!["e2".into()],
                    left: vec![t("b1")],
                },
                Dropped {
                    meeting_id: "solo".into(),
                    endpoints: vec!["x1".into()],
                    left: vec![],
                },
            ]
        );
        assert!(!s.contains("solo"), "nothing left: it starts again");
        // e2 comes back: on b1, the only one left; no relays to set up.
        let p = alloc(&mut s, "m", "e2", false, &[t("b1")]);
        assert_eq!(p.primary[0].0, t("b1"));
        assert!(p.links.is_empty() && p.mirror.is_empty());
        // A new b3 joins.
        let p = alloc(&mut s, "m", "e4", false, &[t("b1"), t("b3")]);
        assert_eq!(p.primary[0].0, t("b3"));
        assert_eq!(p.links.len(), 1);
    }

    #[test]
    fn unknown_endpoints_and_conferences_are_refused() {
        let mut s = Spreads::default();
        let c = [t("b1")];
        let mut r = ConferenceModify::new("nope");
        r.endpoints.push(Endpoint::new("e"));
        assert!(matches!(
            s.plan(&r, &|on: &OnBridges, _: Option<&str>| fewest(on, &c), &rid),
            Err(Colibri2Error::ConferenceNotFound { .. })
        ));
        alloc(&mut s, "m", "e1", true, &c);
        let mut r = ConferenceModify::new("m");
        r.endpoints.push(Endpoint::new("zz"));
        assert!(matches!(
            s.plan(&r, &|on: &OnBridges, _: Option<&str>| fewest(on, &c), &rid),
            Err(Colibri2Error::UnknownEndpoint { .. })
        ));
        // No bridge left for a newcomer.
        let mut r = ConferenceModify::new("m");
        r.endpoints.push(create_ep("e2"));
        assert!(matches!(
            s.plan(&r, &|on: &OnBridges, _: Option<&str>| fewest(on, &[]), &rid),
            Err(Colibri2Error::GracefulShutdown)
        ));
        assert_eq!(s.using(&t("b1")), vec!["m".to_string()]);
    }
}
