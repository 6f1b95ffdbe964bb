//! Room policies of a stock install (docs/rooms.md "Policies"): Jicofo's health-check rooms
//! are the focus's alone (stock's `muc_meeting_id`), the nick `focus` is the focus's, and,
//! with `[muc] validate_nicknames`, nicks look like the ones the web app makes (stock's
//! `muc_resource_validate`).

use std::collections::HashMap;
use std::sync::Arc;

use minidom::Element;

use super::room::{JoinRequest, NS_JITMEET, Room, RoomEvent};
use super::{Ctx, JoinCheck, MucConfig, RoomModule};
use crate::ns;
use crate::stanza::{self, StanzaError, el};

/// Rooms Jicofo creates to check itself.
pub const HEALTH_CHECK_PREFIX: &str = "__jicofo-health-check";

pub struct Policies {
    cfg: Arc<MucConfig>,
    /// Chat messages each room carried (with `max_chat_messages`).
    chat_counts: HashMap<String, u32>,
}

impl Policies {
    pub fn new(cfg: Arc<MucConfig>) -> Policies {
        Policies {
            cfg,
            chat_counts: HashMap::new(),
        }
    }
}

/// What the room says, and the refusal says, once its chat is closed.
pub const CHAT_LIMIT_TEXT: &str =
    "The message limit for the room has been reached. Messaging is now disabled.";

/// A chat message, as the limit counts them: a group message with a body, or one without a
/// body that is not a poll answer (those always pass).
fn counts_as_chat(msg: &Element) -> bool {
    if msg.attr("type") != Some("groupchat") {
        return false;
    }
    if msg.get_child("body", ns::CLIENT).is_some() {
        return true;
    }
    !msg.get_child("json-message", NS_JITMEET)
        .is_some_and(|j| j.text().contains("answer-poll"))
}

/// A nick as the web app makes them (the first characters of a UUID) and stock accepts:
/// a letter or digit, then letters, digits and `_`.
pub fn valid_nick(nick: &str) -> bool {
    let mut c = nick.chars();
    c.next().is_some_and(|f| f.is_ascii_alphanumeric())
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
        && nick.len() <= 64
}

const NOT_ALLOWED: StanzaError = StanzaError {
    kind: "cancel",
    condition: "not-allowed",
};

impl RoomModule for Policies {
    fn check_join(&mut self, room: &Room, join: &JoinRequest<'_>) -> JoinCheck {
        let refuse = |e: StanzaError, text: &str| {
            stanza::error_reply(join.presence, e, Some(text))
                .map_or(JoinCheck::Continue, JoinCheck::Refuse)
        };
        let health_check = room.jid.starts_with(HEALTH_CHECK_PREFIX);
        if join.privileged {
            return JoinCheck::Continue;
        }
        if health_check {
            return refuse(
                StanzaError::SERVICE_UNAVAILABLE,
                "Health-check rooms are the focus's",
            );
        }
        // Nobody else may look like the focus to the clients (in the conference MUC, which
        // names its admins; the breweries have none and the focus joins them as any service).
        if !self.cfg.admins.is_empty() && join.nick.eq_ignore_ascii_case("focus") {
            return refuse(NOT_ALLOWED, "This nick is the focus's");
        }
        if self.cfg.validate_nicknames && !valid_nick(join.nick) {
            return refuse(NOT_ALLOWED, "Invalid resource");
        }
        JoinCheck::Continue
    }

    fn check_message(
        &mut self,
        room: &Room,
        from: &str,
        msg: &Element,
        private: bool,
        out: &mut Vec<Element>,
    ) -> Option<Element> {
        let max = self.cfg.max_chat_messages;
        if max == 0
            || private
            || !counts_as_chat(msg)
            || room.occupant_by_real(from).is_none()
            || self.cfg.admins.iter().any(|a| a == super::bare_of(from))
        {
            return None;
        }
        let n = self.chat_counts.entry(room.jid.clone()).or_insert(0);
        if *n < max {
            *n += 1;
            return None;
        }
        if *n == max {
            // The first one over the limit: the room says so, once.
            *n += 1;
            let id = format!("chat-limit-{}", room.meeting_id);
            for o in &room.occupants {
                let mut m = el(
                    "message",
                    ns::CLIENT,
                    &[
                        ("from", &room.jid),
                        ("to", &o.real_jid),
                        ("type", "groupchat"),
                        ("id", &id),
                    ],
                );
                m.append_child(
                    Element::builder("body", ns::CLIENT)
                        .append(CHAT_LIMIT_TEXT.to_string())
                        .build(),
                );
                out.push(m);
            }
        }
        stanza::error_reply(msg, NOT_ALLOWED, Some(CHAT_LIMIT_TEXT))
    }

    fn on_event(&mut self, _ctx: &mut Ctx<'_>, room: &str, event: &RoomEvent) {
        if matches!(event, RoomEvent::Destroyed) {
            self.chat_counts.remove(room);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nicks() {
        for ok in ["a1b2c3d4", "Alice", "user_1", "0abc"] {
            assert!(valid_nick(ok), "{ok}");
        }
        for bad in ["", "_x", "a-b", "a b", "ä", "a/b", &"x".repeat(65)] {
            assert!(!valid_nick(bad), "{bad}");
        }
    }
}
