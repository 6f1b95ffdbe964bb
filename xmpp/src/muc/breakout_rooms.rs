//! Breakout rooms (Jitsi's `muc_breakout_rooms`, docs/rooms.md "Breakout rooms"): moderators
//! add, rename and remove rooms on `breakout.<domain>` and move participants between them and
//! the main room, with commands to that domain; everyone in the conference gets the rooms and
//! who is in them (`features/breakout-rooms/update`), a moved participant gets
//! `features/breakout-rooms/move-to-room` and switches rooms itself (a conference request and
//! a join, as for any room). Breakout rooms take the main room's moderators and its lobby; the
//! main room stays while it has breakout rooms, and everything goes a few seconds after the
//! last participant left all of them.
//!
//! Breakout room nodes are `<main node>~<id>`: the conference's rooms share a shard.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use minidom::Element;
use serde_json::{Map, Value, json};

use super::room::{Affiliation, JoinRequest, Role, Room, RoomEvent};
use super::{Ctx, JoinCheck, RoomModule, conference_key};
use crate::ns;
use crate::router::bare_of;
use crate::stanza::{self, StanzaError, el};

const NS_NICK: &str = "http://jabber.org/protocol/nick";
const RENAME_FEATURE: &str = "http://jitsi.org/protocol/breakout_rooms#rename";
const EVENT_UPDATE: &str = "features/breakout-rooms/update";
const EVENT_MOVE: &str = "features/breakout-rooms/move-to-room";
/// Updates are sent at most this often per conference (joins come in bursts).
const UPDATE_INTERVAL: Duration = Duration::from_millis(300);
/// Everything goes this long after the last participant left all rooms.
const CLOSE_AFTER: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Conference {
    /// Breakout room JID → name.
    rooms: BTreeMap<String, String>,
    counter: u64,
    update_at: Option<Instant>,
    close_at: Option<Instant>,
}

pub struct BreakoutRooms {
    main_domain: String,
    domain: String,
    /// Service admins (the focus): not listed as participants.
    admins: Vec<String>,
    max_rooms: usize,
    /// Main room JID → its breakout rooms.
    conferences: HashMap<String, Conference>,
    /// The main rooms' affiliations (main room, bare JID) and members-only flags, as breakout
    /// room joins see them.
    main_affiliation: HashMap<(String, String), Affiliation>,
    main_members_only: HashSet<String>,
}

impl BreakoutRooms {
    pub fn new(
        main_domain: &str,
        domain: &str,
        admins: Vec<String>,
        max_rooms: usize,
    ) -> BreakoutRooms {
        BreakoutRooms {
            main_domain: main_domain.to_string(),
            domain: domain.to_string(),
            admins,
            max_rooms,
            conferences: HashMap::new(),
            main_affiliation: HashMap::new(),
            main_members_only: HashSet::new(),
        }
    }

    fn main_of(&self, room: &str) -> String {
        format!("{}@{}", conference_key(room), self.main_domain)
    }

    fn is_breakout(&self, room: &str) -> bool {
        room.ends_with(&format!("@{}", self.domain))
    }

    fn admin(&self, jid: &str) -> bool {
        self.admins.iter().any(|a| a == bare_of(jid))
    }

    /// `{"type":"breakout_rooms",...}` from the breakout domain.
    fn message(&self, to: &str, body: &Value) -> Element {
        super::json_message(&self.domain, to, body)
    }

    fn participants(&self, room: Option<&Room>) -> Value {
        let mut p = Map::new();
        for o in room.into_iter().flat_map(|r| r.occupants.iter()) {
            if self.admin(&o.real_jid) {
                continue;
            }
            let name = o.presence.get_child("nick", NS_NICK).map(|n| n.text());
            p.insert(
                format!("{}/{}", room.map_or("", |r| r.jid.as_str()), o.nick),
                json!({"jid": o.real_jid, "role": o.role.as_str(), "displayName": name}),
            );
        }
        Value::Object(p)
    }

    /// The update every participant of the conference gets.
    fn send_update(&self, ctx: &mut Ctx<'_>, main: &str) {
        let Some(conf) = self.conferences.get(main) else {
            return;
        };
        let node = conference_key(main);
        let main_room = ctx.room(main);
        let mut rooms = Map::new();
        rooms.insert(
            main.split('@').next().unwrap_or(node).to_string(),
            json!({"isMainRoom": true, "id": main.split('@').next(), "jid": main,
                "name": main_room.map(|r| r.config.subject.clone()).unwrap_or_default(),
                "participants": self.participants(main_room)}),
        );
        for (jid, name) in &conf.rooms {
            let id = jid.split('@').next().unwrap_or("");
            rooms.insert(
                id.to_string(),
                json!({"id": id, "jid": jid, "name": name, "participants": self.participants(ctx.room(jid))}),
            );
        }
        let body = json!({"type": "breakout_rooms", "event": EVENT_UPDATE,
            "roomCounter": conf.counter, "rooms": Value::Object(rooms)});
        let mut to: Vec<String> = Vec::new();
        for r in std::iter::once(main).chain(conf.rooms.keys().map(String::as_str)) {
            if let Some(room) = ctx.room(r) {
                to.extend(
                    room.occupants
                        .iter()
                        .filter(|o| !self.admin(&o.real_jid))
                        .map(|o| o.real_jid.clone()),
                );
            }
        }
        for t in to {
            let m = self.message(&t, &body);
            ctx.out.push(m);
        }
    }

    /// Keep the main room's affiliations and members-only for joins of its breakout rooms.
    fn mirror(&mut self, ctx: &Ctx<'_>, main: &str) {
        let Some(r) = ctx.room(main) else {
            return;
        };
        self.main_affiliation.retain(|(m, _), _| m != main);
        for (j, a) in &r.affiliations {
            self.main_affiliation
                .insert((main.to_string(), j.clone()), *a);
        }
        if r.config.members_only {
            self.main_members_only.insert(main.to_string());
        } else {
            self.main_members_only.remove(main);
        }
    }

    fn schedule_update(&mut self, main: &str, now: Instant) {
        if let Some(c) = self.conferences.get_mut(main) {
            c.update_at.get_or_insert(now + UPDATE_INTERVAL);
        }
    }

    /// Anyone but the focus in any of the conference's rooms?
    fn occupied(&self, ctx: &Ctx<'_>, main: &str) -> bool {
        let Some(conf) = self.conferences.get(main) else {
            return false;
        };
        std::iter::once(main)
            .chain(conf.rooms.keys().map(String::as_str))
            .filter_map(|r| ctx.room(r))
            .any(|r| r.occupants.iter().any(|o| !self.admin(&o.real_jid)))
    }

    fn command(
        &mut self,
        ctx: &mut Ctx<'_>,
        sender_room: Option<&str>,
        st: &Element,
    ) -> Result<(), (StanzaError, &'static str)> {
        let cmd = st
            .children()
            .find(|c| c.name() == "breakout_rooms")
            .ok_or((StanzaError::BAD_REQUEST, "no command"))?;
        let from = st.attr("from").unwrap_or("");
        let sender_room = sender_room.ok_or((StanzaError::NOT_ALLOWED, "not in a room"))?;
        let main = self.main_of(sender_room);
        let moderator = ctx
            .room(sender_room)
            .and_then(|r| r.occupant_by_real(from).map(|i| r.occupants[i].role))
            == Some(Role::Moderator);
        if !moderator {
            return Err((
                StanzaError {
                    kind: "auth",
                    condition: "forbidden",
                },
                "only moderators manage breakout rooms",
            ));
        }
        if ctx.room(&main).is_none() {
            return Err((StanzaError::ITEM_NOT_FOUND, "no main room"));
        }
        let now = ctx.now;
        let known = |this: &Self, jid: &str| {
            this.conferences
                .get(&main)
                .is_some_and(|c| c.rooms.contains_key(jid))
        };
        match cmd.attr("type") {
            Some("features/breakout-rooms/add") => {
                let conf = self.conferences.entry(main.clone()).or_default();
                if conf.rooms.len() >= self.max_rooms {
                    return Err((StanzaError::POLICY_VIOLATION, "too many breakout rooms"));
                }
                let name = cmd.attr("subject").unwrap_or("").to_string();
                conf.counter += 1;
                let id = uuid::Uuid::new_v4().simple().to_string();
                let jid = format!(
                    "{}~{}@{}",
                    main.split('@').next().unwrap_or(""),
                    &id[..12],
                    self.domain
                );
                conf.rooms.insert(jid.clone(), name.clone());
                self.mirror(ctx, &main);
                let room = ctx.create_room(&jid);
                room.config.subject = name;
                room.info_fields
                    .insert("muc#roominfo_isbreakout".into(), "true".into());
                room.info_fields
                    .insert("muc#roominfo_breakout_main_room".into(), main.clone());
                tracing::debug!(room = %jid, "breakout room added");
            }
            Some("features/breakout-rooms/remove") => {
                let jid = cmd.attr("breakoutRoomJid").unwrap_or("").to_string();
                if !known(self, &jid) {
                    return Err((StanzaError::ITEM_NOT_FOUND, "no such breakout room"));
                }
                if let Some(c) = self.conferences.get_mut(&main) {
                    c.rooms.remove(&jid);
                }
                // Whoever is in it goes back to the main room (the destroy names it).
                if let Some(r) = ctx.room_mut(&jid) {
                    r.destroy(Some(&main), Some("Breakout room removed."));
                }
            }
            Some("features/breakout-rooms/rename") => {
                let jid = cmd.attr("breakoutRoomJid").unwrap_or("").to_string();
                if !known(self, &jid) {
                    return Err((StanzaError::ITEM_NOT_FOUND, "no such breakout room"));
                }
                let name = cmd.attr("subject").unwrap_or("").to_string();
                if let Some(c) = self.conferences.get_mut(&main) {
                    c.rooms.insert(jid.clone(), name.clone());
                }
                if let Some(r) = ctx.room_mut(&jid) {
                    r.set_subject(&name);
                }
            }
            Some("features/breakout-rooms/move-to-room") => {
                let target = cmd.attr("roomJid").unwrap_or("");
                if target != main && !known(self, target) {
                    return Err((StanzaError::ITEM_NOT_FOUND, "no such room"));
                }
                let who = cmd.attr("participantJid").unwrap_or("");
                // Only someone in this conference can be moved.
                let in_conference = std::iter::once(main.as_str())
                    .chain(
                        self.conferences
                            .get(&main)
                            .into_iter()
                            .flat_map(|c| c.rooms.keys().map(String::as_str)),
                    )
                    .filter_map(|r| ctx.room(r))
                    .any(|r| r.occupant_by_real(who).is_some());
                if !in_conference {
                    return Err((StanzaError::ITEM_NOT_FOUND, "no such participant"));
                }
                let body =
                    json!({"type": "breakout_rooms", "event": EVENT_MOVE, "roomJid": target});
                let m = self.message(who, &body);
                ctx.out.push(m);
                return Ok(());
            }
            _ => return Err((StanzaError::BAD_REQUEST, "unknown command")),
        }
        self.schedule_update(&main, now);
        Ok(())
    }
}

impl RoomModule for BreakoutRooms {
    fn component(&self) -> Option<String> {
        Some(self.domain.clone())
    }

    fn room_domain(&self) -> Option<String> {
        Some(self.domain.clone())
    }

    fn domain_features(&self, domain: &str, _node: Option<&str>) -> Vec<&'static str> {
        if domain == self.domain {
            vec![RENAME_FEATURE]
        } else {
            Vec::new()
        }
    }

    fn check_join(&mut self, room: &Room, join: &JoinRequest<'_>) -> JoinCheck {
        if !self.is_breakout(&room.jid) || join.privileged {
            return JoinCheck::Continue;
        }
        // The main room's moderators are moderators here; its members-only (lobby) holds.
        let main_aff = self
            .main_affiliation
            .get(&(self.main_of(&room.jid), bare_of(join.real_jid).to_string()))
            .copied();
        match main_aff {
            Some(a) if a >= Affiliation::Member => JoinCheck::Approve(a),
            _ if self.main_members_only.contains(&self.main_of(&room.jid)) => stanza::error_reply(
                join.presence,
                StanzaError {
                    kind: "auth",
                    condition: "registration-required",
                },
                Some("Members only"),
            )
            .map_or(JoinCheck::Continue, JoinCheck::Refuse),
            _ => JoinCheck::Continue,
        }
    }

    fn keep_alive(&self, room: &Room) -> bool {
        if self.is_breakout(&room.jid) {
            let main = self.main_of(&room.jid);
            return self
                .conferences
                .get(&main)
                .is_some_and(|c| c.rooms.contains_key(&room.jid));
        }
        self.conferences
            .get(&room.jid)
            .is_some_and(|c| !c.rooms.is_empty())
    }

    fn next_timeout(&self) -> Option<Instant> {
        self.conferences
            .values()
            .flat_map(|c| [c.update_at, c.close_at])
            .flatten()
            .min()
    }

    fn timeout(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now;
        let mains: Vec<String> = self.conferences.keys().cloned().collect();
        for main in mains {
            let (update, close) = {
                let c = &self.conferences[&main];
                (
                    c.update_at.is_some_and(|t| t <= now),
                    c.close_at.is_some_and(|t| t <= now),
                )
            };
            if update {
                if let Some(c) = self.conferences.get_mut(&main) {
                    c.update_at = None;
                }
                self.send_update(ctx, &main);
            }
            if close {
                if let Some(c) = self.conferences.get_mut(&main) {
                    c.close_at = None;
                }
                if !self.occupied(ctx, &main) {
                    tracing::debug!(room = %main, "everyone left all rooms: closing");
                    if let Some(c) = self.conferences.remove(&main) {
                        for jid in c.rooms.keys() {
                            if let Some(r) = ctx.room_mut(jid) {
                                r.destroy(None, Some("All occupants left."));
                            }
                        }
                    }
                    if let Some(r) = ctx.room_mut(&main) {
                        if r.occupants.is_empty() {
                            r.destroyed = true;
                        } else {
                            r.destroy(None, Some("All occupants left."));
                        }
                    }
                }
            }
        }
    }

    fn component_stanza(&mut self, ctx: &mut Ctx<'_>, sender_room: Option<&str>, st: &Element) {
        if st.name() == "iq" {
            if st.attr("type") == Some("get") {
                let q = Element::builder("query", ns::DISCO_INFO)
                    .append(el(
                        "identity",
                        ns::DISCO_INFO,
                        &[
                            ("category", "conference"),
                            ("type", "text"),
                            ("name", "Breakout rooms"),
                        ],
                    ))
                    .append(el("feature", ns::DISCO_INFO, &[("var", RENAME_FEATURE)]))
                    .build();
                ctx.out.push(stanza::iq_result(st, Some(q)));
            }
            return;
        }
        if st.name() != "message" || st.attr("type") == Some("error") {
            return;
        }
        if let Err((e, text)) = self.command(ctx, sender_room, st) {
            tracing::info!(
                from = st.attr("from"),
                text,
                "breakout rooms command refused"
            );
            if let Some(r) = stanza::error_reply(st, e, Some(text)) {
                ctx.out.push(r);
            }
        }
    }

    fn on_event(&mut self, ctx: &mut Ctx<'_>, room: &str, event: &RoomEvent) {
        let main = self.main_of(room);
        let now = ctx.now;
        if !self.conferences.contains_key(&main) {
            return;
        }
        if room == main {
            self.mirror(ctx, &main);
        }
        match event {
            RoomEvent::Joined { jid, .. } | RoomEvent::Left { jid, .. } if !self.admin(jid) => {
                self.schedule_update(&main, now);
                let occupied = self.occupied(ctx, &main);
                if let Some(c) = self.conferences.get_mut(&main) {
                    c.close_at = if occupied {
                        None
                    } else {
                        c.close_at.or(Some(now + CLOSE_AFTER))
                    };
                }
            }
            RoomEvent::PresenceChanged { .. } => self.schedule_update(&main, now),
            RoomEvent::Destroyed if room == main => {
                self.main_affiliation.retain(|(m, _), _| *m != main);
                self.main_members_only.remove(&main);
                if let Some(c) = self.conferences.remove(&main) {
                    for jid in c.rooms.keys() {
                        if let Some(r) = ctx.room_mut(jid) {
                            r.destroy(None, Some("The meeting has ended."));
                        }
                    }
                }
            }
            _ => {}
        }
    }
}
