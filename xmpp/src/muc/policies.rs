//! Room policies of a stock install (docs/rooms.md "Policies"): Jicofo's health-check rooms
//! are the focus's alone (stock's `muc_meeting_id`), the nick `focus` is the focus's, and,
//! with `[muc] validate_nicknames`, nicks look like the ones the web app makes (stock's
//! `muc_resource_validate`).

use std::sync::Arc;

use super::room::{JoinRequest, Room};
use super::{JoinCheck, MucConfig, RoomModule};
use crate::stanza::{self, StanzaError};

/// Rooms Jicofo creates to check itself.
pub const HEALTH_CHECK_PREFIX: &str = "__jicofo-health-check";

pub struct Policies {
    cfg: Arc<MucConfig>,
}

impl Policies {
    pub fn new(cfg: Arc<MucConfig>) -> Policies {
        Policies { cfg }
    }
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
