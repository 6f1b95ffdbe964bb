//! Password-protected rooms (Prosody's `muc/password`): a join must carry the room's
//! password; the focus and other service admins, and the service's allow-list, pass.

use super::room::{JoinRequest, Room};
use super::{JoinCheck, RoomModule};
use crate::stanza::{self, StanzaError};

pub struct Password;

impl RoomModule for Password {
    fn check_join(&mut self, room: &Room, join: &JoinRequest<'_>) -> JoinCheck {
        match &room.config.password {
            Some(pw)
                if !join.privileged
                    && !join.allow_listed
                    && !join.approved
                    && join.password != Some(pw.as_str()) =>
            {
                stanza::error_reply(
                    join.presence,
                    StanzaError {
                        kind: "auth",
                        condition: "not-authorized",
                    },
                    Some("A password is required"),
                )
                .map_or(JoinCheck::Continue, JoinCheck::Refuse)
            }
            _ => JoinCheck::Continue,
        }
    }
}
