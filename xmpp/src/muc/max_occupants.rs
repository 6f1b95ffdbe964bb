//! Room size (Prosody's `muc/occupant_limit` and `muc_max_occupants`): the room's own
//! `maxusers` and the service's `[muc] max_occupants`, whichever is smaller; the focus and
//! other service admins, and the service's allow-list, neither count nor are refused.

use std::sync::Arc;

use super::room::{JoinRequest, Room};
use super::{JoinCheck, MucConfig, RoomModule};
use crate::stanza::{self, StanzaError};

pub struct MaxOccupants {
    cfg: Arc<MucConfig>,
}

impl MaxOccupants {
    pub fn new(cfg: Arc<MucConfig>) -> MaxOccupants {
        MaxOccupants { cfg }
    }
}

impl RoomModule for MaxOccupants {
    fn check_join(&mut self, room: &Room, join: &JoinRequest<'_>) -> JoinCheck {
        let max = match (room.config.max_occupants, self.cfg.max_occupants) {
            (0, s) => s,
            (r, 0) => r,
            (r, s) => r.min(s),
        };
        if join.privileged
            || join.allow_listed
            || max == 0
            || room.counted_occupants(&self.cfg) < max
        {
            return JoinCheck::Continue;
        }
        stanza::error_reply(
            join.presence,
            StanzaError::SERVICE_UNAVAILABLE,
            Some("The room is full"),
        )
        .map_or(JoinCheck::Continue, JoinCheck::Refuse)
    }
}
