//! Members-only rooms (Prosody's `muc/members_only`): only members, admins and owners get
//! in; the focus and other service admins pass. A lobby answers before this rule with its own
//! refusal that tells the client where to knock.

use super::room::{Affiliation, JoinRequest, Room};
use super::{JoinCheck, RoomModule};
use crate::router::bare_of;
use crate::stanza::{self, StanzaError};

pub struct MembersOnly;

impl RoomModule for MembersOnly {
    fn check_join(&mut self, room: &Room, join: &JoinRequest<'_>) -> JoinCheck {
        if !room.config.members_only
            || join.privileged
            || room.affiliation(bare_of(join.real_jid)) >= Affiliation::Member
        {
            return JoinCheck::Continue;
        }
        stanza::error_reply(
            join.presence,
            StanzaError {
                kind: "auth",
                condition: "registration-required",
            },
            Some("Members only"),
        )
        .map_or(JoinCheck::Continue, JoinCheck::Refuse)
    }
}
