//! What the HTTP APIs may read about the rooms (docs/http-api.md): a summary of every room of
//! a MUC service, refreshed by its shards whenever a room changes, so that a request never
//! waits on a shard. Only what those APIs answer is kept: no chat, no presence payloads.

use std::collections::HashMap;

use parking_lot::RwLock;

use super::room::Room;

/// One occupant as the APIs describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OccupantSummary {
    pub nick: String,
    /// The real (full) JID.
    pub jid: String,
    /// From the presence's `<nick xmlns='http://jabber.org/protocol/nick'>`.
    pub display_name: Option<String>,
    /// From the presence's `<email>` (the web app sends it when the user set one).
    pub email: Option<String>,
    pub role: &'static str,
    pub occupant_id: String,
}

/// One room as the APIs describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSummary {
    pub jid: String,
    pub meeting_id: String,
    /// ms since the epoch, once the first participant joined.
    pub created_ms: Option<u64>,
    pub occupants: Vec<OccupantSummary>,
    /// The room password (for `/room-info`'s passcode check; never logged).
    pub password: Option<String>,
    pub members_only: bool,
    pub lobby: bool,
    pub subject: String,
}

impl RoomSummary {
    fn of(room: &Room) -> RoomSummary {
        RoomSummary {
            jid: room.jid.clone(),
            meeting_id: room.meeting_id.clone(),
            created_ms: room.created_timestamp,
            occupants: room
                .occupants
                .iter()
                .map(|o| OccupantSummary {
                    nick: o.nick.clone(),
                    jid: o.real_jid.clone(),
                    display_name: o
                        .presence
                        .get_child("nick", "http://jabber.org/protocol/nick")
                        .map(|n| n.text())
                        .filter(|t| !t.is_empty()),
                    email: o
                        .presence
                        .children()
                        .find(|c| c.name() == "email")
                        .map(|n| n.text())
                        .filter(|t| !t.is_empty()),
                    role: o.role.as_str(),
                    occupant_id: o.occupant_id.clone(),
                })
                .collect(),
            password: room.config.password.clone().filter(|p| !p.is_empty()),
            members_only: room.config.members_only,
            lobby: room.info_fields.contains_key("muc#roominfo_lobbyroom"),
            subject: room.config.subject.clone(),
        }
    }
}

/// Every room of one MUC service (bounded by the rooms the service holds).
#[derive(Default)]
pub struct Directory(RwLock<HashMap<String, RoomSummary>>);

impl Directory {
    pub fn room(&self, jid: &str) -> Option<RoomSummary> {
        self.0.read().get(jid).cloned()
    }

    pub fn rooms(&self) -> Vec<RoomSummary> {
        let mut v: Vec<RoomSummary> = self.0.read().values().cloned().collect();
        v.sort_by(|a, b| a.jid.cmp(&b.jid));
        v
    }

    /// Occupants across all rooms (the session count of the APIs counts these).
    pub fn occupant_count(&self) -> usize {
        self.0.read().values().map(|r| r.occupants.len()).sum()
    }

    pub(super) fn update(&self, room: &Room) {
        let s = RoomSummary::of(room);
        let mut m = self.0.write();
        if m.get(&room.jid) != Some(&s) {
            m.insert(room.jid.clone(), s);
        }
    }

    pub(super) fn remove(&self, jid: &str) {
        self.0.write().remove(jid);
    }
}
