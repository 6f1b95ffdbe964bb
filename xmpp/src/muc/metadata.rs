//! Room metadata (docs/rooms.md ("Room metadata")): moderators set keys (`startMuted`, `whiteboard`, ...)
//! through `metadata.<domain>`; every occupant, the focus included, gets the whole map as
//! `{"type":"room_metadata","metadata":{…}}` on each change, and a joiner gets it (`{}` when
//! nothing is set) before its own presence, as a stock install sends it.

use std::collections::HashMap;

use minidom::Element;
use serde_json::{Map, Value, json};

use super::room::{NS_JITMEET, Role, Room, RoomEvent};
use super::{Ctx, RoomModule};
use crate::ns;
use crate::stanza::{self, StanzaError, el};

/// Largest metadata update accepted (the JSON text).
const MAX_UPDATE_BYTES: usize = 16 * 1024;
/// Keys one room may hold.
const MAX_KEYS: usize = 64;

pub struct RoomMetadata {
    domain: String,
    rooms: HashMap<String, Map<String, Value>>,
    /// What sign-in tokens say (their `send-groupchat` / `send-private-message` features).
    identities: Option<std::sync::Arc<crate::token::Identities>>,
}

impl RoomMetadata {
    pub fn new(domain: &str) -> RoomMetadata {
        RoomMetadata {
            domain: domain.to_string(),
            rooms: HashMap::new(),
            identities: None,
        }
    }

    /// Token features decide who may chat in a restricted room, as stock does.
    pub fn with_identities(mut self, ids: std::sync::Arc<crate::token::Identities>) -> Self {
        self.identities = Some(ids);
        self
    }

    /// The whole map (`{}` before anything was set) for one occupant.
    fn message(&self, room: &Room, to: &str) -> Element {
        let empty = Map::new();
        let meta = self.rooms.get(&room.jid).unwrap_or(&empty);
        let body = json!({"type": "room_metadata", "room": room.jid, "metadata": meta}).to_string();
        let mut m = el("message", ns::CLIENT, &[("from", &self.domain), ("to", to)]);
        m.append_child(
            Element::builder("json-message", NS_JITMEET)
                .append(body)
                .build(),
        );
        m
    }

    fn broadcast(&self, room: &Room, out: &mut Vec<Element>) {
        for o in &room.occupants {
            out.push(self.message(room, &o.real_jid));
        }
    }
}

impl RoomModule for RoomMetadata {
    /// `permissions.groupChatRestricted` / `privateChatRestricted` (set by a moderator, as the
    /// web app does): chat with a body is refused unless the sender's token grants
    /// `send-groupchat` (`send-private-message`), or, without token features, the sender
    /// moderates (stock's `filter_messages` with Jitsi's default permissions).
    fn check_message(
        &mut self,
        room: &Room,
        from: &str,
        msg: &Element,
        private: bool,
        _out: &mut Vec<Element>,
    ) -> Option<Element> {
        msg.get_child("body", ns::CLIENT)?;
        let key = if private {
            "privateChatRestricted"
        } else {
            "groupChatRestricted"
        };
        let restricted = self
            .rooms
            .get(&room.jid)
            .and_then(|m| m.get("permissions"))
            .and_then(|p| p.get(key))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !restricted {
            return None;
        }
        let sender = room.occupant_by_real(from)?;
        // A token's features decide (`send-groupchat`, `send-private-message`); without
        // features, moderators may (Jitsi's default permissions), others not.
        let feature = if private {
            "send-private-message"
        } else {
            "send-groupchat"
        };
        let granted = self
            .identities
            .as_ref()
            .and_then(|ids| ids.get(from))
            .and_then(|id| id.features.as_ref().map(|f| f.get(feature) == Some(&true)));
        match granted {
            Some(true) => return None,
            Some(false) => {}
            None if room.occupants[sender].role == Role::Moderator => return None,
            None => {}
        }
        let text = if private {
            "Sending private messages not allowed"
        } else {
            "Sending group messages not allowed"
        };
        stanza::error_reply(msg, StanzaError::NOT_ALLOWED, Some(text))
    }

    fn component(&self) -> Option<String> {
        Some(self.domain.clone())
    }

    fn room_of(&self, st: &Element) -> Option<String> {
        st.get_child("room_metadata", NS_JITMEET)
            .and_then(|r| r.attr("room"))
            .map(|r| r.to_lowercase())
    }

    fn component_stanza(&mut self, ctx: &mut Ctx<'_>, _sender_room: Option<&str>, st: &Element) {
        let room = self.room_of(st).and_then(|r| ctx.rooms.get(&r));
        let out = &mut *ctx.out;
        let refuse = |out: &mut Vec<Element>, e: StanzaError, text: &str| {
            if let Some(r) = stanza::error_reply(st, e, Some(text)) {
                out.push(r);
            }
        };
        if st.name() == "iq" {
            // Disco of the component: the identity the client looks for.
            if st.attr("type") == Some("get") {
                let q = Element::builder("query", ns::DISCO_INFO)
                    .append(el(
                        "identity",
                        ns::DISCO_INFO,
                        &[("category", "component"), ("type", "room_metadata")],
                    ))
                    .build();
                out.push(stanza::iq_result(st, Some(q)));
            }
            return;
        }
        if st.name() != "message" || st.attr("type") == Some("error") {
            return;
        }
        let Some(req) = st.get_child("room_metadata", NS_JITMEET) else {
            return;
        };
        let Some(room) = room else {
            return refuse(out, StanzaError::ITEM_NOT_FOUND, "no such room");
        };
        let from = st.attr("from").unwrap_or("");
        let moderator = room
            .occupants
            .iter()
            .any(|o| o.real_jid == from && o.role == Role::Moderator);
        if !moderator {
            return refuse(
                out,
                StanzaError::NOT_ALLOWED,
                "only moderators may set room metadata",
            );
        }
        let text = req.text();
        if text.len() > MAX_UPDATE_BYTES {
            return refuse(out, StanzaError::POLICY_VIOLATION, "metadata too large");
        }
        let Ok(Value::Object(update)) = serde_json::from_str::<Value>(&text) else {
            return refuse(
                out,
                StanzaError::BAD_REQUEST,
                "metadata is not a JSON object",
            );
        };
        let Some(key) = update
            .get("key")
            .and_then(|k| k.as_str())
            .filter(|k| !k.is_empty())
        else {
            return refuse(out, StanzaError::BAD_REQUEST, "metadata needs a key");
        };
        let data = update.get("data").cloned().unwrap_or(Value::Null);
        let meta = self.rooms.entry(room.jid.clone()).or_default();
        if !meta.contains_key(key) && meta.len() >= MAX_KEYS {
            return refuse(out, StanzaError::POLICY_VIOLATION, "too many metadata keys");
        }
        meta.insert(key.to_string(), data);
        self.broadcast(room, out);
    }

    fn before_join_presences(&mut self, room: &Room, nick: &str, out: &mut Vec<Element>) {
        if let Some(o) = room.occupant(nick) {
            out.push(self.message(room, &o.real_jid));
        }
    }

    fn on_event(&mut self, _ctx: &mut Ctx<'_>, room: &str, event: &RoomEvent) {
        if let RoomEvent::Destroyed = event {
            self.rooms.remove(room);
        }
    }
}
