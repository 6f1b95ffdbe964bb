//! Visitors asking to join (docs/visitors.md §4): a visitor raises its hand, the room's
//! moderators get a promotion request from `visitors.<domain>`, and a moderator's answer
//! (the app's Admit or Reject) tells the visitor, which then joins the room as a participant.
//!
//! The requests are the visitors' raised hands: a visitor whose presence carries
//! `jitsi_participant_raisedHand` asks; lowering it, leaving or an answer withdraws the
//! request. Moderators who join later get the requests still open.

use std::collections::{BTreeMap, HashMap};

use minidom::Element;
use serde_json::{Value, json};

use super::room::{NS_JITMEET, Role, Room, RoomEvent};
use super::{Ctx, RoomModule, json_message};
use crate::ns;
use crate::stanza::el;

const NS_VISITORS: &str = "jitsi:visitors";
/// Open requests kept per room at most (the oldest go first).
const MAX_REQUESTS: usize = 1000;

pub struct Visitors {
    /// `visitors.<domain>`, where the requests come from.
    domain: String,
    /// The MUC domain visitors see the rooms under (`muc.v1.meet.jitsi`).
    view_domain: String,
    /// The focus's bare JID, which a promoted visitor trusts.
    focus: String,
    /// Room → the visitors asking (real JID → nick).
    requests: HashMap<String, BTreeMap<String, String>>,
    next_ticket: u64,
    ticket_salt: u64,
}

impl Visitors {
    pub fn new(domain: &str, view_domain: &str, focus: &str, salt: u64) -> Visitors {
        Visitors {
            domain: domain.to_string(),
            view_domain: view_domain.to_string(),
            focus: focus.to_string(),
            requests: HashMap::new(),
            next_ticket: 0,
            ticket_salt: salt,
        }
    }

    /// The request message for `moderator` (a real JID).
    fn request(&self, room: &str, moderator: &str, visitor: &str, nick: &str, on: bool) -> Element {
        json_message(
            &self.domain,
            moderator,
            &json!({
                "type": "visitors",
                "room": room,
                "action": "promotion-request",
                "nick": nick,
                "from": visitor,
                "on": on,
            }),
        )
    }

    /// Tell every moderator of `room` (not the service admins) about one request.
    fn tell_moderators(
        &self,
        r: &Room,
        visitor: &str,
        nick: &str,
        on: bool,
        out: &mut Vec<Element>,
    ) {
        for o in r.occupants.iter().filter(|o| o.role == Role::Moderator) {
            if o.bare() == self.focus {
                continue;
            }
            out.push(self.request(&r.jid, &o.real_jid, visitor, nick, on));
        }
    }

    /// The answer to a visitor: from the room (the visitors' view of it), with the ticket the
    /// app takes back to the room.
    fn answer(&mut self, r: &Room, visitor: &str, allow: bool) -> Element {
        self.next_ticket += 1;
        let ticket = format!(
            "{:016x}",
            self.ticket_salt
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(self.next_ticket)
        );
        let node = r.jid.split('@').next().unwrap_or("");
        let view = format!("{node}@{}", self.view_domain);
        let mut iq = el(
            "iq",
            ns::CLIENT,
            &[
                ("type", "set"),
                ("from", &r.jid),
                ("to", visitor),
                ("id", &format!("promotion-{ticket}")),
            ],
        );
        iq.append_child(
            Element::builder("visitors", NS_VISITORS)
                .attr(crate::stanza::rxml_name("room"), view)
                .attr(crate::stanza::rxml_name("focusjid"), self.focus.as_str())
                .append(el(
                    "promotion-response",
                    NS_VISITORS,
                    &[
                        ("jid", visitor),
                        ("username", &ticket),
                        ("allow", if allow { "true" } else { "false" }),
                    ],
                ))
                .build(),
        );
        iq
    }
}

/// Whether a presence says its hand is raised.
fn hand_raised(p: &Element) -> bool {
    p.children()
        .find(|c| c.name() == "jitsi_participant_raisedHand")
        .map(|c| c.text())
        .is_some_and(|t| {
            let t = t.trim();
            !t.is_empty() && t != "0" && t != "false"
        })
}

impl Visitors {
    /// A moderator's "Move to viewer" (`{"type":"visitors","action":"demote-request","id":
    /// <nick>,"actor":<the moderator's nick>}` as a groupchat JSON message): the participant
    /// named and the other moderators get it from `visitors.<domain>` as a chat message (the
    /// participant's app then comes back as a visitor); the room does not. What stops the
    /// message is returned: the first of those, or the error for the sender.
    fn demote(
        &self,
        r: &Room,
        from: &str,
        msg: &Element,
        m: &serde_json::Map<String, Value>,
        out: &mut Vec<Element>,
    ) -> Element {
        let refuse = |err, text| {
            crate::stanza::error_reply(msg, err, Some(text)).unwrap_or_else(|| msg.clone())
        };
        let Some(sender) = r.occupant_by_real(from).map(|i| &r.occupants[i]) else {
            return refuse(crate::stanza::StanzaError::NOT_ALLOWED, "not in the room");
        };
        if sender.role != Role::Moderator {
            tracing::info!(room = %r.jid, from, "demote request from a non-moderator refused");
            return refuse(
                crate::stanza::StanzaError::FORBIDDEN,
                "only moderators move participants to the viewers",
            );
        }
        if m.get("actor").and_then(Value::as_str) != Some(sender.nick.as_str()) {
            return refuse(
                crate::stanza::StanzaError::BAD_REQUEST,
                "the actor is not the sender",
            );
        }
        let id = m.get("id").and_then(Value::as_str).unwrap_or("");
        let Some(target) = r
            .occupant(id)
            .filter(|o| o.role != Role::Visitor && o.bare() != self.focus)
        else {
            return refuse(
                crate::stanza::StanzaError::ITEM_NOT_FOUND,
                "no such participant",
            );
        };
        tracing::info!(room = %r.jid, participant = %target.nick, moderator = %sender.nick, "moving a participant to the viewers");
        let mut sent: Vec<Element> = r
            .occupants
            .iter()
            .filter(|o| o.real_jid != sender.real_jid && o.bare() != self.focus)
            .filter(|o| o.role == Role::Moderator || o.nick == target.nick)
            .map(|o| json_message(&self.domain, &o.real_jid, &Value::Object(m.clone())))
            .map(|mut e| {
                crate::stanza::set_attr(&mut e, "type", "chat");
                e
            })
            .collect();
        // The participant's own message first: it is what stops the groupchat.
        let first = sent
            .iter()
            .position(|e| e.attr("to") == Some(target.real_jid.as_str()))
            .unwrap_or(0);
        let head = sent.remove(first);
        out.extend(sent);
        head
    }
}

impl RoomModule for Visitors {
    fn component(&self) -> Option<String> {
        Some(self.domain.clone())
    }

    fn component_stanza(&mut self, ctx: &mut Ctx<'_>, _sender_room: Option<&str>, st: &Element) {
        super::answer_component_iq(st, "visitors", ctx.out);
    }

    fn on_event(&mut self, ctx: &mut Ctx<'_>, room: &str, event: &RoomEvent) {
        if matches!(event, RoomEvent::Created) {
            // The app offers "Move to viewer" where the room says visitors are enabled.
            if let Some(r) = ctx.room_mut(room) {
                r.info_fields
                    .insert("muc#roominfo_visitorsEnabled".into(), "1".into());
            }
            return;
        }
        let Some(r) = ctx.rooms.get(room) else {
            if matches!(event, RoomEvent::Destroyed) {
                self.requests.remove(room);
            }
            return;
        };
        match event {
            RoomEvent::Joined { nick, .. } | RoomEvent::PresenceChanged { nick } => {
                let Some(o) = r.occupant(nick) else {
                    return;
                };
                if o.role == Role::Moderator && o.bare() != self.focus {
                    // A moderator who came (or became one) gets the requests still open.
                    if matches!(event, RoomEvent::Joined { .. })
                        && let Some(open) = self.requests.get(room)
                    {
                        for (v, n) in open {
                            ctx.out.push(self.request(room, &o.real_jid, v, n, true));
                        }
                    }
                    return;
                }
                if o.role != Role::Visitor {
                    return;
                }
                let (jid, nick, raised) =
                    (o.real_jid.clone(), o.nick.clone(), hand_raised(&o.presence));
                tracing::debug!(room, visitor = %nick, raised, "visitor's presence");
                let open = self.requests.entry(room.to_string()).or_default();
                let was = open.contains_key(&jid);
                if raised == was {
                    return;
                }
                if raised {
                    if open.len() >= MAX_REQUESTS
                        && let Some(oldest) = open.keys().next().cloned()
                    {
                        open.remove(&oldest);
                    }
                    open.insert(jid.clone(), nick.clone());
                } else {
                    open.remove(&jid);
                }
                tracing::info!(room, visitor = %nick, raised, "visitor's request to join");
                self.tell_moderators(r, &jid, &nick, raised, ctx.out);
            }
            RoomEvent::Left { jid, nick, .. }
                if self
                    .requests
                    .get_mut(room)
                    .is_some_and(|open| open.remove(jid).is_some()) =>
            {
                self.tell_moderators(r, jid, nick, false, ctx.out);
            }
            RoomEvent::Destroyed => {
                self.requests.remove(room);
            }
            _ => {}
        }
    }

    /// A moderator's answer, `{"type":"visitors","action":"promotion-response","approved":…,
    /// "id"|"ids":…}` as a groupchat JSON message: each visitor named is told. The message
    /// goes on to the room (the other moderators' apps clear the request from it).
    fn check_message(
        &mut self,
        r: &Room,
        from: &str,
        msg: &Element,
        private: bool,
        out: &mut Vec<Element>,
    ) -> Option<Element> {
        if private {
            return None;
        }
        let body = msg.get_child("json-message", NS_JITMEET)?.text();
        let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&body) else {
            return None;
        };
        if m.get("type").and_then(Value::as_str) != Some("visitors") {
            return None;
        }
        let action = m.get("action").and_then(Value::as_str);
        if action == Some("demote-request") {
            return Some(self.demote(r, from, msg, &m, out));
        }
        if action != Some("promotion-response") {
            return None;
        }
        let moderator = r
            .occupant_by_real(from)
            .is_some_and(|i| r.occupants[i].role == Role::Moderator);
        if !moderator {
            tracing::info!(room = %r.jid, from, "promotion answer from a non-moderator ignored");
            return None;
        }
        let approved = m.get("approved").and_then(Value::as_bool).unwrap_or(false);
        let mut ids: Vec<String> = m
            .get("ids")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(id) = m.get("id").and_then(Value::as_str) {
            ids.push(id.to_string());
        }
        for id in ids.into_iter().take(MAX_REQUESTS) {
            // Only a visitor of this room is answered.
            let Some(i) = r.occupant_by_real(&id) else {
                continue;
            };
            if r.occupants[i].role != Role::Visitor {
                continue;
            }
            if let Some(open) = self.requests.get_mut(&r.jid) {
                open.remove(&id);
            }
            tracing::info!(room = %r.jid, visitor = %r.occupants[i].nick, approved, "visitor's request answered");
            out.push(self.answer(r, &id, approved));
        }
        None
    }
}
