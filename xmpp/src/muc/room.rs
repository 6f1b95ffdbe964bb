//! One multi-user chat room (XEP-0045) as a sans-IO state machine.
//!
//! Input: a stanza addressed to the room or one of its occupants, with the current time.
//! Output: stanzas to route (already addressed to real JIDs) and [`RoomEvent`]s for the
//! room modules. The service ([`super::MucService`]) owns the rooms and the modules.

use std::collections::HashMap;
use std::time::Instant;

use base64::Engine;
use minidom::Element;

use super::MucConfig;
use super::form;
use crate::ns;
use crate::router::bare_of;
use crate::stanza::{self, StanzaError, el, rxml_name};

pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
pub const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
pub const NS_MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const NS_OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
const NS_DISPLAY_NAME: &str = "http://jitsi.org/protocol/display-name";
pub const NS_JITMEET: &str = "http://jitsi.org/jitmeet";

/// Invitees one invitation message may name.
const MAX_INVITEES: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Affiliation {
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }
    pub fn parse(s: &str) -> Option<Affiliation> {
        Some(match s {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "admin" => Affiliation::Admin,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
    }
    fn default_role(self) -> Role {
        match self {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            _ => Role::Participant,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    None,
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "none" => Role::None,
            "visitor" => Role::Visitor,
            "participant" => Role::Participant,
            "moderator" => Role::Moderator,
            _ => return None,
        })
    }
}

/// An occupant: one nick, one real (full) JID.
#[derive(Debug, Clone)]
pub struct Occupant {
    pub nick: String,
    pub real_jid: String,
    pub role: Role,
    /// The occupant's last available presence, as sent (minus the MUC join marker).
    pub presence: Element,
    pub occupant_id: String,
    /// Message rate limiting.
    tokens: f64,
    last: Instant,
}

impl Occupant {
    pub fn bare(&self) -> &str {
        bare_of(&self.real_jid)
    }
}

/// What room modules (lobby, breakout rooms, speaker stats, ...) are told.
#[derive(Debug, Clone)]
pub enum RoomEvent {
    Created,
    Destroyed,
    /// `jid`: the occupant's real (full) JID.
    Joined {
        nick: String,
        jid: String,
    },
    Left {
        nick: String,
        jid: String,
        why: Departure,
    },
    PresenceChanged {
        nick: String,
    },
    Message {
        nick: String,
        message: Element,
    },
    /// `by`: the real JID of the owner who changed it.
    ConfigChanged {
        by: String,
    },
    /// A moderator's mediated invitation (XEP-0045 §7.8.2) let `jid` (a real JID) in.
    Invited {
        by: String,
        jid: String,
    },
}

/// Why an occupant left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    Left,
    /// 307
    Kicked,
    /// 301
    Banned,
    /// 321: no longer a member of a members-only room.
    Affiliation,
}

/// Room configuration (the muc#owner form fields Jitsi uses).
#[derive(Debug, Clone, Default)]
pub struct RoomConfig {
    pub name: String,
    pub password: Option<String>,
    pub members_only: bool,
    /// 0 = the service limit.
    pub max_occupants: usize,
    pub whois_anyone: bool,
    pub subject: String,
    pub change_subject: bool,
}

/// The room state machine.
pub struct Room {
    pub jid: String,
    pub config: RoomConfig,
    pub occupants: Vec<Occupant>,
    pub affiliations: HashMap<String, Affiliation>,
    pub meeting_id: String,
    /// ms since epoch, set when the first non-admin occupant joins.
    pub created_timestamp: Option<u64>,
    wall: WallClock,
    secret: [u8; 16],
    pub events: Vec<RoomEvent>,
    out: Vec<Element>,
    /// Destroyed (by an owner or a module): the service drops it.
    pub destroyed: bool,
    /// Fields modules add to the room's disco#info form (`muc#roominfo_lobbyroom`, ...).
    pub info_fields: std::collections::BTreeMap<String, String>,
}

/// A client's request to join, as the modules see it.
pub struct JoinRequest<'a> {
    pub nick: &'a str,
    pub real_jid: &'a str,
    pub password: Option<&'a str>,
    pub presence: &'a Element,
    /// A service admin (the focus): passes passwords, members-only and limits.
    pub privileged: bool,
    /// On the service's allow-list: passes passwords and size limits.
    pub allow_listed: bool,
    /// A module (the lobby) let it in: no password asked.
    pub approved: bool,
}

/// Wall-clock time for an `Instant`, from one reference pair taken by whoever runs the MUC
/// (rooms read no clock themselves).
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    pub instant: Instant,
    /// Milliseconds since the Unix epoch at `instant`.
    pub unix_ms: u64,
}

impl WallClock {
    /// Milliseconds since the Unix epoch at `at`.
    pub fn unix_ms_at(&self, at: Instant) -> u64 {
        if at >= self.instant {
            self.unix_ms + (at - self.instant).as_millis() as u64
        } else {
            self.unix_ms
                .saturating_sub((self.instant - at).as_millis() as u64)
        }
    }
}

impl Room {
    /// A room `jid`. `rng` makes its secret (the key of its occupant ids) and its meeting id:
    /// seeded from the OS by the service, fixed in tests. `wall` dates its creation.
    pub fn new(jid: String, cfg: &MucConfig, rng: &mut impl rand::Rng, wall: WallClock) -> Room {
        let secret: [u8; 16] = rng.random();
        let meeting_id = uuid::Builder::from_random_bytes(rng.random())
            .into_uuid()
            .to_string();
        let name = jid.split('@').next().unwrap_or("").to_string();
        Room {
            jid,
            config: RoomConfig {
                name,
                whois_anyone: true,
                change_subject: false,
                ..Default::default()
            },
            occupants: Vec::new(),
            affiliations: HashMap::new(),
            meeting_id,
            created_timestamp: None,
            wall,
            secret,
            events: vec![RoomEvent::Created],
            out: Vec::new(),
            destroyed: false,
            info_fields: Default::default(),
            // The service fills admin affiliations on creation.
        }
        .with_admins(cfg)
    }

    fn with_admins(mut self, cfg: &MucConfig) -> Room {
        for a in &cfg.admins {
            self.affiliations.insert(a.clone(), Affiliation::Owner);
        }
        self
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    pub fn take_output(&mut self) -> Vec<Element> {
        std::mem::take(&mut self.out)
    }

    pub fn take_events(&mut self) -> Vec<RoomEvent> {
        std::mem::take(&mut self.events)
    }

    pub fn is_empty(&self) -> bool {
        self.occupants.is_empty()
    }

    pub fn occupant(&self, nick: &str) -> Option<&Occupant> {
        self.occupants.iter().find(|o| o.nick == nick)
    }

    fn occupant_idx(&self, nick: &str) -> Option<usize> {
        self.occupants.iter().position(|o| o.nick == nick)
    }

    pub fn occupant_by_real(&self, real: &str) -> Option<usize> {
        self.occupants.iter().position(|o| o.real_jid == real)
    }

    pub fn affiliation(&self, bare: &str) -> Affiliation {
        self.affiliations
            .get(bare)
            .copied()
            .unwrap_or(Affiliation::None)
    }

    fn occupant_jid(&self, nick: &str) -> String {
        format!("{}/{}", self.jid, nick)
    }

    fn occupant_id_for(&self, bare: &str) -> String {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.secret);
        let tag = aws_lc_rs::hmac::sign(&key, bare.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(&tag.as_ref()[..18])
    }

    /// The presence of `o` as `to` should see it.
    fn presence_of(
        &self,
        o: &Occupant,
        to: &str,
        statuses: &[&str],
        extra_item: Option<Element>,
    ) -> Element {
        let mut p = Element::builder("presence", ns::CLIENT)
            .attr(rxml_name("from"), self.occupant_jid(&o.nick))
            .attr(rxml_name("to"), to)
            .build();
        if let Some(t) = o.presence.attr("type") {
            stanza::set_attr(&mut p, "type", t);
        }
        for c in o.presence.children() {
            if c.is("x", NS_MUC) || c.is("x", NS_MUC_USER) || c.is("occupant-id", NS_OCCUPANT_ID) {
                continue;
            }
            p.append_child(c.clone());
        }
        p.append_child(el("occupant-id", NS_OCCUPANT_ID, &[("id", &o.occupant_id)]));
        let aff = self.affiliation(o.bare());
        // The real JID; the whois module takes it out where the room is semi-anonymous.
        let mut item = Element::builder("item", NS_MUC_USER)
            .attr(rxml_name("affiliation"), aff.as_str())
            .attr(rxml_name("role"), o.role.as_str())
            .attr(rxml_name("jid"), o.real_jid.as_str())
            .build();
        if let Some(x) = extra_item {
            for c in x.children() {
                item.append_child(c.clone());
            }
        }
        let mut x = Element::builder("x", NS_MUC_USER).append(item);
        for s in statuses {
            x = x.append(el("status", NS_MUC_USER, &[("code", s)]));
        }
        p.append_child(x.build());
        p
    }

    fn broadcast_presence(
        &mut self,
        idx: usize,
        self_statuses: &[&str],
        other_statuses: &[&str],
        extra_item: Option<Element>,
    ) {
        let o = self.occupants[idx].clone();
        let mut out = Vec::with_capacity(self.occupants.len());
        for r in &self.occupants {
            let mut st: Vec<&str> = if r.real_jid == o.real_jid {
                self_statuses.to_vec()
            } else {
                other_statuses.to_vec()
            };
            if r.real_jid == o.real_jid && !st.contains(&"110") {
                st.push("110");
            }
            out.push(self.presence_of(&o, &r.real_jid, &st, extra_item.clone()));
        }
        self.out.extend(out);
    }

    /// The number of occupants that count against `max_occupants` (service admins do not).
    pub fn counted_occupants(&self, cfg: &MucConfig) -> usize {
        self.occupants
            .iter()
            .filter(|o| {
                !cfg.admins.iter().any(|a| a == o.bare())
                    && !cfg.allow_listed(&o.real_jid)
                    && o.role != Role::Visitor
            })
            .count()
    }

    /// Presence addressed to `R/nick` from `from` (a full real JID).
    pub fn handle_presence(
        &mut self,
        p: &Element,
        nick: &str,
        from: &str,
        cfg: &MucConfig,
        now: Instant,
    ) {
        let ty = p.attr("type");
        let existing = self.occupant_by_real(from);
        match (ty, existing) {
            (Some("unavailable"), Some(i)) => self.leave(i, p),
            (Some("unavailable"), None) => {}
            (Some("error"), Some(i)) => {
                // Delivery to this occupant failed: it is gone.
                let unavail = el("presence", ns::CLIENT, &[("type", "unavailable")]);
                self.leave(i, &unavail);
            }
            (None, Some(i)) => {
                if self.occupants[i].nick != nick {
                    // Stock's muc_resource_validate: nicks stay what they were at the join
                    // (display names travel in <nick>), and none becomes the focus's.
                    let admin = cfg.admins.iter().any(|a| a == bare_of(from));
                    if !admin
                        && (cfg.validate_nicknames
                            || (!cfg.admins.is_empty() && nick.eq_ignore_ascii_case("focus")))
                    {
                        if let Some(r) = stanza::error_reply(
                            p,
                            StanzaError::NOT_ALLOWED,
                            Some("Nick changes are not allowed"),
                        ) {
                            self.out.push(r);
                        }
                        return;
                    }
                    self.change_nick(i, nick, p);
                } else {
                    self.update_presence(i, p, cfg);
                }
            }
            (None, None) => self.join(p, nick, from, cfg, now),
            _ => {}
        }
    }

    fn presence_size_ok(&mut self, p: &Element, cfg: &MucConfig) -> bool {
        let size = crate::xml::to_string(p).len();
        if size > cfg.max_presence_bytes {
            if let Some(e) =
                stanza::error_reply(p, StanzaError::POLICY_VIOLATION, Some("presence too large"))
            {
                self.out.push(e);
            }
            return false;
        }
        true
    }

    /// A join the room modules let through (password, members-only, lobby, limits are modules).
    fn join(&mut self, p: &Element, nick: &str, from: &str, cfg: &MucConfig, now: Instant) {
        let bare = bare_of(from).to_string();
        let aff = self.affiliation(&bare);
        let privileged = cfg.admins.contains(&bare);
        let err = |room: &mut Room, e: StanzaError, text: Option<&str>| {
            if let Some(r) = stanza::error_reply(p, e, text) {
                room.out.push(r);
            }
        };
        if nick.is_empty() || nick.len() > 256 {
            return err(self, StanzaError::JID_MALFORMED, Some("bad nickname"));
        }
        if aff == Affiliation::Outcast {
            return err(
                self,
                StanzaError {
                    kind: "auth",
                    condition: "forbidden",
                },
                Some("You are banned from this room"),
            );
        }
        if self.occupant_idx(nick).is_some() {
            return err(
                self,
                StanzaError {
                    kind: "cancel",
                    condition: "conflict",
                },
                Some("Nickname is in use"),
            );
        }
        if !self.presence_size_ok(p, cfg) {
            return;
        }
        let mut presence = p.clone();
        presence.remove_child("x", NS_MUC);
        let occupant = Occupant {
            nick: nick.to_string(),
            real_jid: from.to_string(),
            // Everyone of the visitors' domain is a visitor (docs/visitors.md).
            role: if cfg.is_visitor(from) {
                Role::Visitor
            } else {
                aff.default_role()
            },
            presence,
            occupant_id: self.occupant_id_for(&bare),
            tokens: cfg.message_burst as f64,
            last: now,
        };
        let created =
            self.occupants.is_empty() && matches!(self.events.first(), Some(RoomEvent::Created));
        // Existing occupants to the joiner first, then the joiner to everyone.
        let existing: Vec<Element> = self
            .occupants
            .iter()
            .map(|o| self.presence_of(o, from, &[], None))
            .collect();
        self.out.extend(existing);
        self.occupants.push(occupant);
        let idx = self.occupants.len() - 1;
        let mut self_st = vec!["100", "110"];
        if created {
            self_st.push("201");
        }
        self.broadcast_presence(idx, &self_st, &[], None);
        // No history; the (possibly empty) subject ends the join.
        let mut subj = el(
            "message",
            ns::CLIENT,
            &[("type", "groupchat"), ("from", &self.jid), ("to", from)],
        );
        let s = Element::builder("subject", ns::CLIENT);
        let s = if self.config.subject.is_empty() {
            s.build()
        } else {
            s.append(self.config.subject.clone()).build()
        };
        subj.append_child(s);
        self.out.push(subj);
        if self.created_timestamp.is_none() && !privileged {
            self.created_timestamp = Some(self.wall.unix_ms_at(now));
        }
        self.events.push(RoomEvent::Joined {
            nick: nick.to_string(),
            jid: from.to_string(),
        });
    }

    fn update_presence(&mut self, i: usize, p: &Element, cfg: &MucConfig) {
        if !self.presence_size_ok(p, cfg) {
            return;
        }
        let mut presence = p.clone();
        presence.remove_child("x", NS_MUC);
        self.occupants[i].presence = presence;
        self.broadcast_presence(i, &[], &[], None);
        self.events.push(RoomEvent::PresenceChanged {
            nick: self.occupants[i].nick.clone(),
        });
    }

    fn change_nick(&mut self, i: usize, new_nick: &str, p: &Element) {
        if self.occupant_idx(new_nick).is_some() || new_nick.is_empty() {
            if let Some(r) = stanza::error_reply(
                p,
                StanzaError {
                    kind: "cancel",
                    condition: "conflict",
                },
                None,
            ) {
                self.out.push(r);
            }
            return;
        }
        let o = self.occupants[i].clone();
        let mut gone = o.clone();
        gone.presence = el("presence", ns::CLIENT, &[("type", "unavailable")]);
        let item = Element::builder("item", NS_MUC_USER)
            .attr(rxml_name("nick"), new_nick)
            .build();
        let wrapper = Element::builder("x", NS_MUC_USER).append(item).build();
        let mut out = Vec::new();
        for r in &self.occupants {
            let mut p303 = self.presence_of(&gone, &r.real_jid, &["303"], None);
            // XEP-0045 §7.6: the new nick goes on the item.
            if let Some(x) = p303.get_child_mut("x", NS_MUC_USER)
                && let Some(it) = x.get_child_mut("item", NS_MUC_USER)
            {
                it.set_attr(
                    rxml::Namespace::NONE,
                    rxml_name("nick"),
                    new_nick.to_string(),
                );
            }
            if r.real_jid == o.real_jid
                && let Some(x) = p303.get_child_mut("x", NS_MUC_USER)
            {
                x.append_child(el("status", NS_MUC_USER, &[("code", "110")]));
            }
            out.push(p303);
        }
        let _ = wrapper;
        self.out.extend(out);
        self.occupants[i].nick = new_nick.to_string();
        let mut presence = p.clone();
        presence.remove_child("x", NS_MUC);
        self.occupants[i].presence = presence;
        self.broadcast_presence(i, &[], &[], None);
        self.events.push(RoomEvent::Left {
            nick: o.nick,
            jid: o.real_jid.clone(),
            why: Departure::Left,
        });
        self.events.push(RoomEvent::Joined {
            nick: new_nick.to_string(),
            jid: o.real_jid,
        });
    }

    fn leave(&mut self, i: usize, p: &Element) {
        let mut o = self.occupants[i].clone();
        let mut pres = el("presence", ns::CLIENT, &[("type", "unavailable")]);
        if let Some(s) = p.get_child("status", ns::CLIENT) {
            pres.append_child(s.clone());
        }
        o.presence = pres;
        o.role = Role::None;
        let mut out = Vec::new();
        for r in &self.occupants {
            let st: &[&str] = if r.real_jid == o.real_jid {
                &["110"]
            } else {
                &[]
            };
            out.push(self.presence_of(&o, &r.real_jid, st, None));
        }
        self.out.extend(out);
        self.occupants.remove(i);
        self.events.push(RoomEvent::Left {
            nick: o.nick,
            jid: o.real_jid,
            why: Departure::Left,
        });
    }

    /// Remove an occupant with status codes (307 kick, 301 ban, 321 affiliation change).
    fn remove_with(&mut self, i: usize, code: &str, actor: Option<&str>, reason: Option<&str>) {
        let mut o = self.occupants[i].clone();
        o.presence = el("presence", ns::CLIENT, &[("type", "unavailable")]);
        o.role = Role::None;
        let mut extra = Element::bare("extra", NS_MUC_USER);
        if let Some(a) = actor {
            extra.append_child(el("actor", NS_MUC_USER, &[("nick", a)]));
        }
        if let Some(r) = reason {
            extra.append_child(
                Element::builder("reason", NS_MUC_USER)
                    .append(r.to_string())
                    .build(),
            );
        }
        let mut out = Vec::new();
        for r in &self.occupants {
            let st: Vec<&str> = if r.real_jid == o.real_jid {
                vec![code, "110"]
            } else {
                vec![code]
            };
            out.push(self.presence_of(&o, &r.real_jid, &st, Some(extra.clone())));
        }
        self.out.extend(out);
        self.occupants.remove(i);
        let why = match code {
            "307" => Departure::Kicked,
            "301" => Departure::Banned,
            _ => Departure::Affiliation,
        };
        self.events.push(RoomEvent::Left {
            nick: o.nick,
            jid: o.real_jid,
            why,
        });
    }

    /// Messages to the room (groupchat) or to an occupant (private).
    pub fn handle_message(
        &mut self,
        m: &Element,
        nick: Option<&str>,
        from: &str,
        cfg: &MucConfig,
        now: Instant,
    ) {
        let ty = m.attr("type").unwrap_or("normal");
        if ty == "error" {
            return;
        }
        let Some(si) = self.occupant_by_real(from) else {
            if nick.is_none() && m.get_child("x", NS_MUC_USER).is_some() {
                // Mediated invitations from non-occupants are not supported.
                if let Some(e) = stanza::error_reply(m, StanzaError::NOT_ALLOWED, None) {
                    self.out.push(e);
                }
                return;
            }
            if let Some(e) = stanza::error_reply(
                m,
                StanzaError {
                    kind: "cancel",
                    condition: "not-acceptable",
                },
                Some("You are not in the room"),
            ) {
                self.out.push(e);
            }
            return;
        };
        // Visitors watch; they do not write to the room or its occupants, but the audience
        // (docs/visitors.md §2) may chat with everyone.
        let audience_chat = nick.is_none()
            && ty == "groupchat"
            && cfg.is_visitor(from)
            && m.get_child("body", ns::CLIENT).is_some()
            && m.get_child("subject", ns::CLIENT).is_none();
        if self.occupants[si].role == Role::Visitor && !audience_chat {
            if let Some(e) = stanza::error_reply(
                m,
                StanzaError {
                    kind: "auth",
                    condition: "forbidden",
                },
                Some("Visitors may not send messages"),
            ) {
                self.out.push(e);
            }
            return;
        }
        // Per-occupant rate limit: a flooding occupant only hurts itself.
        {
            let o = &mut self.occupants[si];
            let dt = now.saturating_duration_since(o.last).as_secs_f64();
            o.last = now;
            o.tokens = (o.tokens + dt * cfg.message_rate as f64).min(cfg.message_burst as f64);
            if o.tokens < 1.0 {
                if let Some(e) = stanza::error_reply(
                    m,
                    StanzaError {
                        kind: "wait",
                        condition: "policy-violation",
                    },
                    Some("You are sending messages too fast"),
                ) {
                    self.out.push(e);
                }
                return;
            }
            o.tokens -= 1.0;
        }
        let sender = self.occupants[si].clone();
        if nick.is_none()
            && ty != "groupchat"
            && let Some(x) = m.get_child("x", NS_MUC_USER)
            && x.get_child("invite", NS_MUC_USER).is_some()
        {
            return self.invite(m, x, &sender);
        }
        match nick {
            None => {
                if ty != "groupchat" {
                    if let Some(e) =
                        stanza::error_reply(m, StanzaError::BAD_REQUEST, Some("Use groupchat"))
                    {
                        self.out.push(e);
                    }
                    return;
                }
                if m.get_child("subject", ns::CLIENT).is_some()
                    && m.get_child("body", ns::CLIENT).is_none()
                {
                    if !(sender.role == Role::Moderator || self.config.change_subject) {
                        if let Some(e) = stanza::error_reply(
                            m,
                            StanzaError {
                                kind: "auth",
                                condition: "forbidden",
                            },
                            None,
                        ) {
                            self.out.push(e);
                        }
                        return;
                    }
                    self.config.subject = m
                        .get_child("subject", ns::CLIENT)
                        .map(|s| s.text())
                        .unwrap_or_default();
                }
                if audience_chat {
                    return self.audience_chat(m, &sender);
                }
                if sender.role == Role::Visitor {
                    if let Some(e) = stanza::error_reply(
                        m,
                        StanzaError {
                            kind: "auth",
                            condition: "forbidden",
                        },
                        Some("Visitors cannot speak"),
                    ) {
                        self.out.push(e);
                    }
                    return;
                }
                self.groupchat_from(&sender.nick, strip_for_relay(m), m.clone());
            }
            Some(target) => {
                let Some(ti) = self.occupant_idx(target) else {
                    if let Some(e) = stanza::error_reply(
                        m,
                        StanzaError::ITEM_NOT_FOUND,
                        Some("Recipient not in room"),
                    ) {
                        self.out.push(e);
                    }
                    return;
                };
                if ty == "groupchat" {
                    if let Some(e) = stanza::error_reply(m, StanzaError::BAD_REQUEST, None) {
                        self.out.push(e);
                    }
                    return;
                }
                let mut c = m.clone();
                stanza::set_attr(&mut c, "from", &self.occupant_jid(&sender.nick));
                stanza::set_attr(&mut c, "to", &self.occupants[ti].real_jid);
                if c.get_child("x", NS_MUC_USER).is_none() {
                    c.append_child(Element::bare("x", NS_MUC_USER));
                }
                self.out.push(c);
            }
        }
    }

    /// A visitor's chat message (docs/visitors.md §2): to everyone, with the body only and the
    /// visitor's name as the app shows a viewer's message (`<display-name source='visitor'>`,
    /// from the visitor's own presence, never from the message).
    fn audience_chat(&mut self, m: &Element, sender: &Occupant) {
        let name = sender
            .presence
            .get_child("nick", "http://jabber.org/protocol/nick")
            .map(|n| n.text())
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| "Viewer".to_string());
        let mut msg = el("message", ns::CLIENT, &[("type", "groupchat")]);
        if let Some(id) = m.attr("id") {
            stanza::set_attr(&mut msg, "id", id);
        }
        if let Some(body) = m.get_child("body", ns::CLIENT) {
            msg.append_child(body.clone());
        }
        msg.append_child(
            Element::builder("display-name", NS_DISPLAY_NAME)
                .attr(stanza::rxml_name("source"), "visitor")
                .append(name)
                .build(),
        );
        self.groupchat_from(&sender.nick, msg.clone(), msg);
    }

    /// `relayed` from occupant `nick` to every occupant; `original` is what modules hear of.
    fn groupchat_from(&mut self, nick: &str, relayed: Element, original: Element) {
        let from_occ = self.occupant_jid(nick);
        let mut out = Vec::with_capacity(self.occupants.len());
        for r in &self.occupants {
            let mut c = relayed.clone();
            stanza::set_attr(&mut c, "from", &from_occ);
            stanza::set_attr(&mut c, "to", &r.real_jid);
            out.push(c);
        }
        self.out.extend(out);
        self.events.push(RoomEvent::Message {
            nick: nick.to_string(),
            message: original,
        });
    }

    /// A groupchat message from the room itself (`from` an occupant's nick when given) to
    /// every occupant: what modules announce in a room (`json-message` notifications).
    pub fn broadcast_message(&mut self, from_nick: Option<&str>, payload: Element) {
        let from = from_nick.map_or_else(|| self.jid.clone(), |n| self.occupant_jid(n));
        for o in &self.occupants {
            let mut m = el(
                "message",
                ns::CLIENT,
                &[("type", "groupchat"), ("from", &from), ("to", &o.real_jid)],
            );
            m.append_child(payload.clone());
            self.out.push(m);
        }
    }

    /// A new subject (a module renaming the room), told to every occupant.
    pub fn set_subject(&mut self, subject: &str) {
        self.config.subject = subject.to_string();
        for o in &self.occupants {
            let mut m = el(
                "message",
                ns::CLIENT,
                &[
                    ("type", "groupchat"),
                    ("from", &self.jid),
                    ("to", &o.real_jid),
                ],
            );
            m.append_child(
                Element::builder("subject", ns::CLIENT)
                    .append(subject.to_string())
                    .build(),
            );
            self.out.push(m);
        }
    }

    /// Send a stanza on the room's behalf (to an occupant or anyone).
    pub fn send(&mut self, st: Element) {
        self.out.push(st);
    }

    /// Mediated invitations (XEP-0045 §7.8.2): each invitee gets an invitation from the room
    /// (with the password, if any). In a members-only room only moderators may invite, and
    /// the invitee becomes a member (how a lobby admits a knocker).
    fn invite(&mut self, m: &Element, x: &Element, sender: &Occupant) {
        if self.config.members_only && sender.role != Role::Moderator {
            if let Some(e) = stanza::error_reply(
                m,
                StanzaError {
                    kind: "auth",
                    condition: "forbidden",
                },
                Some("Only moderators may invite to a members-only room"),
            ) {
                self.out.push(e);
            }
            return;
        }
        let invitees: Vec<String> = x
            .children()
            .filter(|c| c.is("invite", NS_MUC_USER))
            .filter_map(|c| c.attr("to"))
            .filter(|to| jid::Jid::new(to).is_ok())
            .take(MAX_INVITEES)
            .map(str::to_string)
            .collect();
        let from_occ = self.occupant_jid(&sender.nick);
        for to in invitees {
            let bare = bare_of(&to).to_string();
            if self.config.members_only && self.affiliation(&bare) < Affiliation::Member {
                self.affiliations.insert(bare, Affiliation::Member);
            }
            let mut inv = Element::builder("x", NS_MUC_USER).append(el(
                "invite",
                NS_MUC_USER,
                &[("from", &from_occ)],
            ));
            if let Some(pw) = &self.config.password {
                inv = inv.append(
                    Element::builder("password", NS_MUC_USER)
                        .append(pw.clone())
                        .build(),
                );
            }
            let mut msg = el("message", ns::CLIENT, &[("from", &self.jid), ("to", &to)]);
            msg.append_child(inv.build());
            self.out.push(msg);
            self.events.push(RoomEvent::Invited {
                by: sender.nick.clone(),
                jid: to,
            });
        }
    }

    /// IQs to an occupant (`R/nick`): forwarded to its real JID, from the sender's occupant JID.
    /// Results and errors travel back the same way.
    pub fn handle_occupant_iq(&mut self, iq: &Element, nick: &str, from: &str) {
        let ty = iq.attr("type").unwrap_or("");
        let sender = self.occupant_by_real(from);
        let target = self.occupant_idx(nick);
        match (sender, target) {
            (Some(s), Some(t)) => {
                let mut c = iq.clone();
                stanza::set_attr(&mut c, "from", &self.occupant_jid(&self.occupants[s].nick));
                stanza::set_attr(&mut c, "to", &self.occupants[t].real_jid);
                self.out.push(c);
            }
            (None, _) if ty == "result" || ty == "error" => {}
            (None, _) => {
                if let Some(e) = stanza::error_reply(
                    iq,
                    StanzaError {
                        kind: "cancel",
                        condition: "not-acceptable",
                    },
                    Some("You are not in the room"),
                ) {
                    self.out.push(e);
                }
            }
            (Some(_), None) => {
                if let Some(e) = stanza::error_reply(
                    iq,
                    StanzaError::ITEM_NOT_FOUND,
                    Some("Recipient not in room"),
                ) {
                    self.out.push(e);
                }
            }
        }
    }

    /// IQs to the room itself: disco, muc#owner, muc#admin.
    pub fn handle_room_iq(&mut self, iq: &Element, from: &str, cfg: &MucConfig) {
        let ty = iq.attr("type").unwrap_or("");
        let Some(payload) = stanza::payload(iq) else {
            if let Some(e) = stanza::error_reply(iq, StanzaError::BAD_REQUEST, None) {
                self.out.push(e);
            }
            return;
        };
        // The reply goes out before what the request caused (status 104, kicks).
        let start = self.out.len();
        let reply = if payload.is("query", ns::DISCO_INFO) && ty == "get" {
            Ok(Some(self.disco_info(payload.attr("node"))))
        } else if payload.is("query", ns::DISCO_ITEMS) && ty == "get" {
            Ok(Some(Element::bare("query", ns::DISCO_ITEMS)))
        } else if payload.is("query", NS_MUC_OWNER) {
            self.owner_iq(ty, payload, from, cfg)
        } else if payload.is("query", NS_MUC_ADMIN) {
            self.admin_iq(ty, payload, from, &cfg.admins)
        } else if payload.is("ping", ns::PING) {
            // XEP-0410 self-ping: are we still an occupant?
            if self.occupant_by_real(from).is_some() {
                Ok(None)
            } else {
                Err((
                    StanzaError {
                        kind: "cancel",
                        condition: "not-acceptable",
                    },
                    None,
                ))
            }
        } else {
            Err((StanzaError::SERVICE_UNAVAILABLE, None))
        };
        match reply {
            Ok(p) => self.out.insert(start, stanza::iq_result(iq, p)),
            Err((e, text)) => {
                if let Some(r) = stanza::error_reply(iq, e, text) {
                    self.out.insert(start, r);
                }
            }
        }
    }

    pub fn disco_info(&self, node: Option<&str>) -> Element {
        let mut q = Element::builder("query", ns::DISCO_INFO);
        if let Some(n) = node {
            q = q.attr(rxml_name("node"), n);
        }
        q = q.append(el(
            "identity",
            ns::DISCO_INFO,
            &[
                ("category", "conference"),
                ("type", "text"),
                ("name", &self.config.name),
            ],
        ));
        let mut features = vec![
            NS_MUC,
            "muc_temporary",
            "muc_public",
            "urn:xmpp:occupant-id:0",
            "http://jabber.org/protocol/muc#stable_id",
        ];
        features.push(if self.config.password.is_some() {
            "muc_passwordprotected"
        } else {
            "muc_unsecured"
        });
        features.push(if self.config.members_only {
            "muc_membersonly"
        } else {
            "muc_open"
        });
        features.push(if self.config.whois_anyone {
            "muc_nonanonymous"
        } else {
            "muc_semianonymous"
        });
        features.push("muc_unmoderated");
        for f in features {
            q = q.append(el("feature", ns::DISCO_INFO, &[("var", f)]));
        }
        let created = self
            .created_timestamp
            .map(|t| t.to_string())
            .unwrap_or_default();
        let occupants = self.occupants.len().to_string();
        let mut fields: Vec<(&str, String)> = vec![
            ("muc#roominfo_description", String::new()),
            ("muc#roominfo_occupants", occupants),
            ("muc#roomconfig_roomname", self.config.name.clone()),
            ("muc#roominfo_meetingId", self.meeting_id.clone()),
            ("muc#roominfo_created_timestamp", created),
            (
                "muc#roomconfig_changesubject",
                if self.config.change_subject { "1" } else { "0" }.into(),
            ),
        ];
        fields.extend(
            self.info_fields
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone())),
        );
        q = q.append(form::result(
            "http://jabber.org/protocol/muc#roominfo",
            &fields,
        ));
        q.build()
    }

    fn requester(&self, from: &str) -> (Affiliation, Option<usize>) {
        (self.affiliation(bare_of(from)), self.occupant_by_real(from))
    }

    fn owner_iq(
        &mut self,
        ty: &str,
        q: &Element,
        from: &str,
        cfg: &MucConfig,
    ) -> Result<Option<Element>, (StanzaError, Option<&'static str>)> {
        let (aff, _) = self.requester(from);
        if aff != Affiliation::Owner {
            return Err((
                StanzaError {
                    kind: "auth",
                    condition: "forbidden",
                },
                Some("Only owners may configure the room"),
            ));
        }
        let forbid = (StanzaError::BAD_REQUEST, None);
        match ty {
            "get" => Ok(Some(
                Element::builder("query", NS_MUC_OWNER)
                    .append(form::config_form(self))
                    .build(),
            )),
            "set" => {
                if let Some(d) = q.get_child("destroy", NS_MUC_OWNER) {
                    let reason = d.get_child("reason", NS_MUC_OWNER).map(|r| r.text());
                    self.destroy(d.attr("jid"), reason.as_deref());
                    return Ok(None);
                }
                let Some(x) = q.get_child("x", form::NS_DATA) else {
                    return Err(forbid);
                };
                if x.attr("type") == Some("cancel") {
                    return Ok(None);
                }
                let values = form::values(x);
                let mut changed = false;
                let truthy = |v: &str| v == "1" || v == "true";
                if let Some(v) = values.get("muc#roomconfig_roomsecret") {
                    let pw = (!v.is_empty()).then(|| v.clone());
                    changed |= pw != self.config.password;
                    self.config.password = pw;
                }
                if let Some(v) = values.get("muc#roomconfig_passwordprotectedroom")
                    && !truthy(v)
                    && self.config.password.is_some()
                {
                    self.config.password = None;
                    changed = true;
                }
                if let Some(v) = values.get("muc#roomconfig_membersonly") {
                    changed |= truthy(v) != self.config.members_only;
                    self.config.members_only = truthy(v);
                }
                if let Some(v) = values.get("muc#roomconfig_maxusers") {
                    let n = v.parse::<usize>().unwrap_or(0);
                    self.config.max_occupants = if cfg.max_occupants > 0 {
                        n.min(cfg.max_occupants)
                    } else {
                        n
                    };
                }
                if let Some(v) = values.get("muc#roomconfig_whois") {
                    self.config.whois_anyone = v == "anyone";
                }
                if let Some(v) = values.get("muc#roomconfig_roomname") {
                    self.config.name = v.clone();
                }
                if let Some(v) = values.get("muc#roomconfig_changesubject") {
                    self.config.change_subject = truthy(v);
                }
                if let Some(v) = values
                    .get("muc#roominfo_meetingId")
                    .or(values.get("muc#roomconfig_meetingId"))
                {
                    self.meeting_id = v.clone();
                }
                if changed {
                    self.config_changed(from);
                }
                Ok(None)
            }
            _ => Err(forbid),
        }
    }

    /// Status 104 to everyone so clients re-read the room's disco#info.
    fn config_changed(&mut self, actor: &str) {
        let mut out = Vec::new();
        for o in &self.occupants {
            let mut m = el(
                "message",
                ns::CLIENT,
                &[
                    ("type", "groupchat"),
                    ("from", &self.jid),
                    ("to", &o.real_jid),
                ],
            );
            m.append_child(
                Element::builder("x", NS_MUC_USER)
                    .append(el("status", NS_MUC_USER, &[("code", "104")]))
                    .build(),
            );
            out.push(m);
        }
        self.out.extend(out);
        self.events.push(RoomEvent::ConfigChanged {
            by: actor.to_string(),
        });
    }

    /// Destroy the room: everyone gets unavailable with `<destroy/>`.
    pub fn destroy(&mut self, alt: Option<&str>, reason: Option<&str>) {
        let mut d = Element::builder("destroy", NS_MUC_USER);
        if let Some(j) = alt {
            d = d.attr(rxml_name("jid"), j);
        }
        let mut d = d.build();
        if let Some(r) = reason {
            d.append_child(
                Element::builder("reason", NS_MUC_USER)
                    .append(r.to_string())
                    .build(),
            );
        }
        let occupants = std::mem::take(&mut self.occupants);
        for o in &occupants {
            let mut p = el(
                "presence",
                ns::CLIENT,
                &[
                    ("type", "unavailable"),
                    ("from", &self.occupant_jid(&o.nick)),
                    ("to", &o.real_jid),
                ],
            );
            let x = Element::builder("x", NS_MUC_USER)
                .append(el(
                    "item",
                    NS_MUC_USER,
                    &[("affiliation", "none"), ("role", "none")],
                ))
                .append(d.clone())
                .append(el("status", NS_MUC_USER, &[("code", "110")]))
                .build();
            p.append_child(x);
            self.out.push(p);
        }
        self.destroyed = true;
    }

    fn admin_iq(
        &mut self,
        ty: &str,
        q: &Element,
        from: &str,
        service_admins: &[String],
    ) -> Result<Option<Element>, (StanzaError, Option<&'static str>)> {
        let (aff, actor_idx) = self.requester(from);
        let actor_role = actor_idx
            .map(|i| self.occupants[i].role)
            .unwrap_or(Role::None);
        let actor_nick = actor_idx.map(|i| self.occupants[i].nick.clone());
        let forbidden = (
            StanzaError {
                kind: "auth",
                condition: "forbidden",
            },
            None,
        );
        let not_allowed = (StanzaError::NOT_ALLOWED, None);
        if ty == "get" {
            if aff < Affiliation::Admin && actor_role != Role::Moderator {
                return Err(forbidden);
            }
            let mut res = Element::builder("query", NS_MUC_ADMIN);
            if let Some(item) = q.get_child("item", NS_MUC_ADMIN) {
                if let Some(want) = item.attr("affiliation").and_then(Affiliation::parse) {
                    let mut list: Vec<_> = self
                        .affiliations
                        .iter()
                        .filter(|(_, a)| **a == want)
                        .collect();
                    list.sort();
                    for (j, a) in list {
                        res = res.append(el(
                            "item",
                            NS_MUC_ADMIN,
                            &[("jid", j), ("affiliation", a.as_str())],
                        ));
                    }
                } else if let Some(want) = item.attr("role").and_then(Role::parse) {
                    for o in self.occupants.iter().filter(|o| o.role == want) {
                        res = res.append(el(
                            "item",
                            NS_MUC_ADMIN,
                            &[
                                ("nick", &o.nick),
                                ("role", o.role.as_str()),
                                ("jid", &o.real_jid),
                            ],
                        ));
                    }
                }
            }
            return Ok(Some(res.build()));
        }
        if ty != "set" {
            return Err((StanzaError::BAD_REQUEST, None));
        }
        let items: Vec<&Element> = q
            .children()
            .filter(|c| c.is("item", NS_MUC_ADMIN))
            .collect();
        if items.is_empty() {
            return Err((StanzaError::BAD_REQUEST, None));
        }
        // Check everything first so a batch is applied all or nothing.
        let mut plan = Vec::new();
        for item in &items {
            let reason = item.get_child("reason", NS_MUC_ADMIN).map(|r| r.text());
            if let Some(role) = item.attr("role").and_then(Role::parse) {
                let Some(nick) = item.attr("nick") else {
                    return Err((StanzaError::BAD_REQUEST, None));
                };
                let Some(ti) = self.occupant_idx(nick) else {
                    return Err((StanzaError::ITEM_NOT_FOUND, None));
                };
                let target = &self.occupants[ti];
                let taff = self.affiliation(target.bare());
                if actor_role != Role::Moderator {
                    return Err(forbidden);
                }
                match role {
                    Role::None => {
                        // Kick: never an admin/owner, and a moderator only with a higher affiliation.
                        if taff >= Affiliation::Admin
                            || (target.role == Role::Moderator && aff <= taff)
                        {
                            return Err(not_allowed);
                        }
                    }
                    Role::Moderator => {
                        if aff < Affiliation::Admin {
                            return Err(forbidden);
                        }
                    }
                    Role::Participant | Role::Visitor => {
                        if target.role == Role::Moderator
                            && (aff < Affiliation::Admin || taff >= aff)
                        {
                            return Err(not_allowed);
                        }
                        if taff >= Affiliation::Admin {
                            return Err(not_allowed);
                        }
                    }
                }
                plan.push(Change::Role(nick.to_string(), role, reason));
            } else if let Some(new_aff) = item.attr("affiliation").and_then(Affiliation::parse) {
                let target_bare = match (item.attr("jid"), item.attr("nick")) {
                    (Some(j), _) => bare_of(j).to_string(),
                    (None, Some(n)) => match self.occupant(n) {
                        Some(o) => o.bare().to_string(),
                        None => return Err((StanzaError::ITEM_NOT_FOUND, None)),
                    },
                    _ => return Err((StanzaError::BAD_REQUEST, None)),
                };
                let taff = self.affiliation(&target_bare);
                // The focus (a service admin) keeps its place: nobody but another service
                // admin changes its affiliation (an owner's ban or demotion is refused).
                if service_admins.iter().any(|a| a == &target_bare)
                    && !service_admins.iter().any(|a| a == bare_of(from))
                {
                    return Err((StanzaError::NOT_ALLOWED, Some("The focus cannot be banned")));
                }
                let ok = match aff {
                    Affiliation::Owner => true,
                    Affiliation::Admin => taff < Affiliation::Admin && new_aff < Affiliation::Admin,
                    _ => false,
                };
                if !ok {
                    return Err(forbidden);
                }
                if taff == Affiliation::Owner
                    && new_aff != Affiliation::Owner
                    && self
                        .affiliations
                        .values()
                        .filter(|a| **a == Affiliation::Owner)
                        .count()
                        <= 1
                {
                    return Err((
                        StanzaError {
                            kind: "cancel",
                            condition: "conflict",
                        },
                        Some("The room needs an owner"),
                    ));
                }
                plan.push(Change::Affiliation(target_bare, new_aff, reason));
            } else {
                return Err((StanzaError::BAD_REQUEST, None));
            }
        }
        for change in plan {
            match change {
                Change::Role(nick, role, reason) => {
                    self.set_role(&nick, role, actor_nick.as_deref(), reason.as_deref())
                }
                Change::Affiliation(bare, a, reason) => {
                    self.set_affiliation(&bare, a, actor_nick.as_deref(), reason.as_deref())
                }
            }
        }
        Ok(None)
    }

    fn set_role(&mut self, nick: &str, role: Role, actor: Option<&str>, reason: Option<&str>) {
        let Some(i) = self.occupant_idx(nick) else {
            return;
        };
        if role == Role::None {
            self.remove_with(i, "307", actor, reason);
            return;
        }
        self.occupants[i].role = role;
        let extra = actor.map(|a| {
            Element::builder("extra", NS_MUC_USER)
                .append(el("actor", NS_MUC_USER, &[("nick", a)]))
                .build()
        });
        self.broadcast_presence(i, &[], &[], extra);
        self.events.push(RoomEvent::PresenceChanged {
            nick: nick.to_string(),
        });
    }

    /// Change an affiliation and apply it to the occupants with that bare JID.
    pub fn set_affiliation(
        &mut self,
        bare: &str,
        a: Affiliation,
        actor: Option<&str>,
        reason: Option<&str>,
    ) {
        if a == Affiliation::None {
            self.affiliations.remove(bare);
        } else {
            self.affiliations.insert(bare.to_string(), a);
        }
        let affected: Vec<String> = self
            .occupants
            .iter()
            .filter(|o| o.bare() == bare)
            .map(|o| o.nick.clone())
            .collect();
        for nick in affected {
            let Some(i) = self.occupant_idx(&nick) else {
                continue;
            };
            if a == Affiliation::Outcast {
                self.remove_with(i, "301", actor, reason);
                continue;
            }
            if self.config.members_only && a < Affiliation::Member {
                self.remove_with(i, "321", actor, reason);
                continue;
            }
            self.occupants[i].role = a.default_role();
            let extra = actor.map(|n| {
                Element::builder("extra", NS_MUC_USER)
                    .append(el("actor", NS_MUC_USER, &[("nick", n)]))
                    .build()
            });
            self.broadcast_presence(i, &[], &[], extra);
            self.events.push(RoomEvent::PresenceChanged { nick });
        }
    }
}

enum Change {
    Role(String, Role, Option<String>),
    Affiliation(String, Affiliation, Option<String>),
}

/// A groupchat message as relayed: `<nick>` removed (mod_muc_meeting_id does the same).
fn strip_for_relay(m: &Element) -> Element {
    if m.get_child("nick", "http://jabber.org/protocol/nick")
        .is_none()
    {
        return m.clone();
    }
    let mut c = m.clone();
    c.remove_child("nick", "http://jabber.org/protocol/nick");
    c
}
