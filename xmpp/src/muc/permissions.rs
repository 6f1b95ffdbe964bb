//! What a moderator may use (stock `mod_jitsi_permissions`): a moderator's own presence (status
//! 110) carries `<permissions xmlns='http://jitsi.org/jitmeet'>` with one `<p name= val=/>` per
//! feature, unless the moderator's token lists its own `context.features` (the app reads
//! those from the token). The app shows live streaming and recording only to a participant
//! whose features grant them, so without this a moderator who is not signed in with such a
//! token never sees "Start live stream".

use std::sync::Arc;

use minidom::Element;

use super::RoomModule;
use super::room::{NS_MUC_USER, Role, Room};
use crate::stanza::el;
use crate::token::Identities;

pub const NS_PERMISSIONS: &str = "http://jitsi.org/jitmeet";

/// The features a moderator gets, as a stock install grants them by default.
const DEFAULT_PERMISSIONS: [&str; 10] = [
    "livestreaming",
    "recording",
    "transcription",
    "outbound-call",
    "create-polls",
    "send-groupchat",
    "send-private-message",
    "flip",
    "live-translation",
    "live-translation-subscribe",
];

pub struct Permissions {
    /// Tokens by full JID, where tokens are in use.
    identities: Option<Arc<Identities>>,
    /// Service admins (the focus, meetd's own stream occupant): never told.
    admins: Vec<String>,
}

impl Permissions {
    pub fn new(identities: Option<Arc<Identities>>, admins: Vec<String>) -> Permissions {
        Permissions { identities, admins }
    }
}

impl RoomModule for Permissions {
    fn filter_output(&mut self, room: &Room, st: &mut Element) -> bool {
        if st.name() != "presence" || st.attr("type").is_some() {
            return true;
        }
        let to = st.attr("to").unwrap_or("");
        let Some(x) = st.get_child("x", NS_MUC_USER) else {
            return true;
        };
        let own = x
            .children()
            .any(|c| c.is("status", NS_MUC_USER) && c.attr("code") == Some("110"));
        let moderator = room
            .occupant_by_real(to)
            .is_some_and(|i| room.occupants[i].role == Role::Moderator);
        if !own || !moderator || st.get_child("permissions", NS_PERMISSIONS).is_some() {
            return true;
        }
        let bare = crate::router::bare_of(to);
        if self.admins.iter().any(|a| a == bare) {
            return true;
        }
        if self
            .identities
            .as_ref()
            .and_then(|ids| ids.get(to))
            .is_some_and(|id| id.features.is_some())
        {
            return true;
        }
        let mut p = el("permissions", NS_PERMISSIONS, &[]);
        for name in DEFAULT_PERMISSIONS {
            p.append_child(el("p", NS_PERMISSIONS, &[("name", name), ("val", "true")]));
        }
        st.append_child(p);
        true
    }
}
