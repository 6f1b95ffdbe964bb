//! Lobby (Jitsi's `muc_lobby_rooms`, docs/rooms.md "Lobby"): a moderator makes the room
//! members-only from the security dialog; the room then has a lobby room `<node>@lobby.<domain>`
//! where people who are not members knock. Moderators (who join the lobby room too) see the
//! knockers, chat with them, admit them with a mediated invitation (they become members) or
//! reject them with a kick from the lobby room. The room password lets a joiner past the lobby;
//! turning the lobby off lets everyone waiting in.
//!
//! In the lobby room knockers see only themselves and moderators see the knockers; messages go
//! only between a knocker and the moderators.

use std::collections::{HashMap, HashSet};

use minidom::Element;
use serde_json::json;

use super::room::{
    Affiliation, Departure, JoinRequest, NS_JITMEET, NS_MUC, NS_MUC_USER, Room, RoomEvent,
};
use super::{Ctx, JoinCheck, RoomModule};
use crate::router::bare_of;
use crate::stanza::{self, StanzaError, el};

const NS_NICK: &str = "http://jabber.org/protocol/nick";
const DISPLAY_NAME_REQUIRED: &str = "http://jitsi.org/protocol/lobbyrooms#displayname_required";

pub struct Lobby {
    /// Service admins (the focus): their configuration changes do not toggle the lobby.
    admins: Vec<String>,
    main_domain: String,
    lobby_domain: String,
    /// Domains and bare JIDs that skip the lobby (the recorder's hidden domain).
    whitelist: Vec<String>,
    /// Knockers one lobby room may hold.
    max_waiting: usize,
    /// Main rooms (JIDs) with their lobby on.
    enabled: HashSet<String>,
    /// Lobby room → the owners of its main room, kept in step with it (who sees what).
    owners: HashMap<String, HashSet<String>>,
    /// Wait for host: who the hosts are. Until one is in a room, everyone else waits in its
    /// lobby; hosts become owners.
    hosts: Option<Hosts>,
    /// Main rooms whose lobby is open because no host came yet.
    waiting: HashSet<String>,
    /// Main rooms a host has been in.
    hosted: HashSet<String>,
}

/// Who may start a meeting when guests wait for the host.
#[derive(Clone)]
pub enum Hosts {
    /// Users signed in with an account on this domain.
    Domain(String),
    /// Users whose sign-in token makes them moderators.
    TokenModerators(std::sync::Arc<crate::token::Identities>),
}

impl Lobby {
    pub fn new(
        admins: Vec<String>,
        main_domain: &str,
        lobby_domain: &str,
        whitelist: Vec<String>,
        max_waiting: usize,
    ) -> Lobby {
        Lobby {
            admins,
            main_domain: main_domain.to_string(),
            lobby_domain: lobby_domain.to_string(),
            whitelist,
            max_waiting,
            enabled: HashSet::new(),
            owners: HashMap::new(),
            hosts: None,
            waiting: HashSet::new(),
            hosted: HashSet::new(),
        }
    }

    /// Wait for host (docs/rooms.md).
    pub fn wait_for_host(mut self, hosts: Hosts) -> Lobby {
        self.hosts = Some(hosts);
        self
    }

    fn is_host(&self, jid: &str) -> bool {
        match &self.hosts {
            None => false,
            Some(Hosts::Domain(d)) => bare_of(jid).rsplit_once('@').is_some_and(|(_, h)| h == d),
            Some(Hosts::TokenModerators(ids)) => ids.get(jid).is_some_and(|i| i.moderator),
        }
    }

    fn lobby_of(&self, main: &str) -> String {
        format!("{}@{}", conference_key_node(main), self.lobby_domain)
    }

    fn main_of(&self, lobby: &str) -> String {
        format!("{}@{}", conference_key_node(lobby), self.main_domain)
    }

    fn is_lobby(&self, room: &str) -> bool {
        room.ends_with(&format!("@{}", self.lobby_domain))
    }

    fn whitelisted(&self, jid: &str) -> bool {
        let bare = bare_of(jid);
        let domain = bare.rsplit('@').next().unwrap_or(bare);
        self.whitelist.iter().any(|w| w == bare || w == domain)
    }

    /// `{"type":"lobby-notify",...}` in the main room, from the actor's occupant JID.
    fn notify(room: &mut Room, actor_nick: Option<&str>, body: serde_json::Value) {
        let payload = Element::builder("json-message", NS_JITMEET)
            .append(body.to_string())
            .build();
        room.broadcast_message(actor_nick, payload);
    }

    fn enable(&mut self, ctx: &mut Ctx<'_>, main: &str, actor: Option<String>) {
        if !self.enabled.insert(main.to_string()) {
            return;
        }
        let lobby = self.lobby_of(main);
        ctx.create_room(&lobby);
        self.sync_owners(ctx, main);
        if let Some(room) = ctx.room_mut(main) {
            room.info_fields
                .insert("muc#roominfo_lobbyroom".into(), lobby.clone());
            // A moderator's doing is announced (waiting for the host is nobody's).
            if actor.is_some() {
                Self::notify(
                    room,
                    actor.as_deref(),
                    json!({"type": "lobby-notify", "event": "LOBBY-ENABLED", "value": true}),
                );
            }
        }
        tracing::info!(room = %main, "lobby enabled");
    }

    /// The lobby goes: everyone waiting is sent to the main room (the lobby room's destroy
    /// names it), and may now join without knocking.
    fn disable(&mut self, ctx: &mut Ctx<'_>, main: &str, actor: Option<String>) {
        if !self.enabled.remove(main) {
            return;
        }
        let lobby = self.lobby_of(main);
        self.owners.remove(&lobby);
        if let Some(l) = ctx.room_mut(&lobby) {
            l.destroy(Some(main), Some("Lobby room closed."));
        }
        if let Some(room) = ctx.room_mut(main) {
            room.info_fields.remove("muc#roominfo_lobbyroom");
            if actor.is_some() {
                Self::notify(
                    room,
                    actor.as_deref(),
                    json!({"type": "lobby-notify", "event": "LOBBY-ENABLED", "value": false}),
                );
            }
        }
        tracing::info!(room = %main, "lobby disabled");
    }

    fn sync_owners(&mut self, ctx: &Ctx<'_>, main: &str) {
        let Some(room) = ctx.room(main) else {
            return;
        };
        let owners: HashSet<String> = room
            .affiliations
            .iter()
            .filter(|(_, a)| **a == Affiliation::Owner)
            .map(|(j, _)| j.clone())
            .collect();
        self.owners.insert(self.lobby_of(main), owners);
    }

    fn owner_in_lobby(&self, lobby: &str, jid: &str) -> bool {
        self.owners
            .get(lobby)
            .is_some_and(|o| o.contains(bare_of(jid)))
    }

    /// The display name a knocker gave (its `<nick>`).
    fn display_name(room: &Room, jid: &str) -> Option<String> {
        let i = room.occupant_by_real(jid)?;
        room.occupants[i]
            .presence
            .get_child("nick", NS_NICK)
            .map(|n| n.text())
    }

    fn main_room_join(&self, room: &Room, join: &JoinRequest<'_>) -> JoinCheck {
        if !self.enabled.contains(&room.jid)
            || join.privileged
            || join.presence.get_child("x", NS_MUC).is_none()
        {
            return JoinCheck::Continue;
        }
        let aff = room.affiliation(bare_of(join.real_jid));
        let password_ok = room
            .config
            .password
            .as_deref()
            .is_some_and(|pw| join.password == Some(pw));
        if self.whitelisted(join.real_jid) || password_ok {
            return if aff <= Affiliation::Member {
                JoinCheck::Approve(Affiliation::Member)
            } else {
                JoinCheck::Continue
            };
        }
        let waiting = self.waiting.contains(&room.jid);
        // Admitted earlier: no password asked. While the room waits for its host, members
        // (students whose token makes them members) wait too.
        if aff >= Affiliation::Member && !(waiting && aff < Affiliation::Owner) {
            return JoinCheck::Approve(aff);
        }
        let name = join
            .presence
            .get_child("nick", NS_NICK)
            .map(|n| n.text())
            .unwrap_or_default();
        if name.trim().is_empty() && !waiting {
            let Some(mut e) = stanza::error_reply(
                join.presence,
                StanzaError {
                    kind: "modify",
                    condition: "not-acceptable",
                },
                None,
            ) else {
                return JoinCheck::Continue;
            };
            if let Some(err) = e.get_child_mut("error", crate::ns::CLIENT) {
                stanza::set_attr(err, "code", "406");
                err.append_child(el("displayname-required", NS_JITMEET, &[("lobby", "true")]));
            }
            e.append_child(Element::bare("x", NS_MUC));
            return JoinCheck::Refuse(e);
        }
        let Some(mut e) = stanza::error_reply(
            join.presence,
            StanzaError {
                kind: "auth",
                condition: "registration-required",
            },
            None,
        ) else {
            return JoinCheck::Continue;
        };
        let lobby = self.lobby_of(&room.jid);
        if let Some(err) = e.get_child_mut("error", crate::ns::CLIENT) {
            stanza::set_attr(err, "code", "407");
            if waiting {
                err.append_child(Element::bare("waiting-for-host", NS_JITMEET));
            }
            err.append_child(
                Element::builder("lobbyroom", NS_JITMEET)
                    .append(lobby.clone())
                    .build(),
            );
        }
        e.append_child(Element::bare("x", NS_MUC));
        JoinCheck::Refuse(e)
    }

    fn lobby_room_join(&self, room: &Room, join: &JoinRequest<'_>) -> JoinCheck {
        let owner = self.owner_in_lobby(&room.jid, join.real_jid);
        if owner {
            return JoinCheck::Grant(Affiliation::Owner);
        }
        if self.max_waiting > 0
            && room
                .occupants
                .iter()
                .filter(|o| !self.owner_in_lobby(&room.jid, &o.real_jid))
                .count()
                >= self.max_waiting
        {
            return stanza::error_reply(
                join.presence,
                StanzaError::SERVICE_UNAVAILABLE,
                Some("The lobby is full"),
            )
            .map_or(JoinCheck::Continue, JoinCheck::Refuse);
        }
        JoinCheck::Continue
    }
}

/// The node of a room JID (the same for a main room and its lobby).
fn conference_key_node(room: &str) -> &str {
    room.split('@').next().unwrap_or(room)
}

impl RoomModule for Lobby {
    fn room_domain(&self) -> Option<String> {
        Some(self.lobby_domain.clone())
    }

    fn before_join(&mut self, ctx: &mut Ctx<'_>, room: &str, join: &JoinRequest<'_>) {
        if self.hosts.is_none()
            || join.privileged
            || self.is_lobby(room)
            || !room.ends_with(&format!("@{}", self.main_domain))
            || self.hosted.contains(room)
        {
            return;
        }
        let host_inside = ctx
            .room(room)
            .is_some_and(|r| r.occupants.iter().any(|o| self.is_host(&o.real_jid)));
        if self.is_host(join.real_jid) || host_inside {
            // The host is here: the lobby it was waiting with goes, the waiting come in.
            self.hosted.insert(room.to_string());
            if self.waiting.remove(room) {
                if let Some(r) = ctx.room_mut(room) {
                    r.config.members_only = false;
                }
                tracing::info!(room, "host arrived");
                self.disable(ctx, room, None);
            }
        } else if !self.enabled.contains(room) {
            tracing::info!(room, "waiting for the host");
            if let Some(r) = ctx.room_mut(room) {
                r.config.members_only = true;
            }
            self.waiting.insert(room.to_string());
            self.enable(ctx, room, None);
        }
    }

    fn check_join(&mut self, room: &Room, join: &JoinRequest<'_>) -> JoinCheck {
        if self.is_lobby(&room.jid) {
            return self.lobby_room_join(room, join);
        }
        if self.is_host(join.real_jid) && !join.privileged {
            // Signed-in users are the meeting's moderators.
            return JoinCheck::Approve(Affiliation::Owner);
        }
        self.main_room_join(room, join)
    }

    fn filter_output(&mut self, room: &Room, st: &mut Element) -> bool {
        if !self.is_lobby(&room.jid) {
            return true;
        }
        let to = st.attr("to").unwrap_or("");
        let to_owner = self.owner_in_lobby(&room.jid, to);
        match st.name() {
            "presence" => {
                let Some(x) = st.get_child("x", NS_MUC_USER) else {
                    return true;
                };
                let own = x
                    .children()
                    .any(|c| c.is("status", NS_MUC_USER) && c.attr("code") == Some("110"));
                if own || st.attr("type") == Some("unavailable") {
                    return true;
                }
                // A moderator sees the knockers (not the other moderators); knockers see
                // nobody.
                let subject = x
                    .get_child("item", NS_MUC_USER)
                    .and_then(|i| i.attr("jid"))
                    .unwrap_or("");
                to_owner && !self.owner_in_lobby(&room.jid, subject)
            }
            "message" => {
                // Lobby chat: between a knocker and the moderators only.
                let from_nick = st
                    .attr("from")
                    .and_then(|f| f.split_once('/'))
                    .map(|(_, n)| n);
                let from_owner = from_nick
                    .and_then(|n| room.occupant(n))
                    .is_some_and(|o| self.owner_in_lobby(&room.jid, &o.real_jid));
                to_owner || from_owner || from_nick.is_none()
            }
            _ => true,
        }
    }

    fn domain_features(&self, domain: &str, _node: Option<&str>) -> Vec<&'static str> {
        // Knocking needs a display name (the app asks for one on its lobby screen).
        if domain == self.lobby_domain {
            vec![DISPLAY_NAME_REQUIRED]
        } else {
            Vec::new()
        }
    }

    fn keep_alive(&self, room: &Room) -> bool {
        self.is_lobby(&room.jid) && self.enabled.contains(&self.main_of(&room.jid))
    }

    fn on_event(&mut self, ctx: &mut Ctx<'_>, room: &str, event: &RoomEvent) {
        if self.is_lobby(room) {
            // A moderator's kick from the lobby room is a rejection.
            if let RoomEvent::Left {
                jid,
                why: Departure::Kicked,
                nick,
            } = event
            {
                let main = self.main_of(room);
                let name = ctx.room(room).and_then(|r| Self::display_name(r, jid));
                if let Some(r) = ctx.room_mut(&main) {
                    Self::notify(
                        r,
                        None,
                        json!({"type": "lobby-notify", "event": "LOBBY-ACCESS-DENIED",
                               "value": format!("{room}/{nick}"), "name": name}),
                    );
                }
            }
            return;
        }
        if !room.ends_with(&format!("@{}", self.main_domain)) {
            return;
        }
        match event {
            RoomEvent::ConfigChanged { by } => {
                let Some(r) = ctx.room(room) else {
                    return;
                };
                // The focus's own configuration (meeting id, ...) is not a moderator's choice.
                if self.admins.iter().any(|a| a == bare_of(by)) {
                    return;
                }
                let on = r.config.members_only;
                let actor = r.occupant_by_real(by).map(|i| r.occupants[i].nick.clone());
                if on {
                    self.enable(ctx, room, actor);
                } else {
                    self.disable(ctx, room, actor);
                }
            }
            RoomEvent::Invited { by, jid } if self.enabled.contains(room) => {
                let lobby = self.lobby_of(room);
                let knocker = ctx.room(&lobby).and_then(|l| {
                    l.occupant_by_real(jid)
                        .map(|i| (l.occupants[i].nick.clone(), Self::display_name(l, jid)))
                });
                if let (Some((nick, name)), Some(r)) = (knocker, ctx.room_mut(room)) {
                    Self::notify(
                        r,
                        Some(by),
                        json!({"type": "lobby-notify", "event": "LOBBY-ACCESS-GRANTED",
                               "value": format!("{lobby}/{nick}"), "name": name}),
                    );
                }
            }
            RoomEvent::Left {
                jid,
                why: Departure::Kicked,
                ..
            } if self.enabled.contains(room) => {
                // Kicked out of a room behind a lobby: back to knocking.
                if let Some(r) = ctx.room_mut(room)
                    && r.affiliation(bare_of(jid)) == Affiliation::Member
                {
                    r.affiliations.remove(bare_of(jid));
                }
            }
            RoomEvent::Joined { .. } | RoomEvent::PresenceChanged { .. }
                if self.enabled.contains(room) =>
            {
                self.sync_owners(ctx, room);
            }
            RoomEvent::Destroyed => {
                self.waiting.remove(room);
                self.hosted.remove(room);
                if self.enabled.remove(room) {
                    let lobby = self.lobby_of(room);
                    self.owners.remove(&lobby);
                    if let Some(l) = ctx.room_mut(&lobby) {
                        l.destroy(None, Some("The meeting has ended."));
                    }
                }
            }
            _ => {}
        }
    }
}
