//! Who sees real JIDs (Prosody's `muc/whois`): in a non-anonymous room (`whois` anyone, as
//! Jitsi configures its rooms) everyone; in a semi-anonymous one only moderators, and each
//! occupant its own.

use minidom::Element;

use super::RoomModule;
use super::room::{NS_MUC_USER, Role, Room};

pub struct Whois;

impl RoomModule for Whois {
    fn filter_output(&mut self, room: &Room, st: &mut Element) -> bool {
        if room.config.whois_anyone || st.name() != "presence" {
            return true;
        }
        let to = st.attr("to").unwrap_or("").to_string();
        let viewer_moderator = room
            .occupant_by_real(&to)
            .is_some_and(|i| room.occupants[i].role == Role::Moderator);
        if viewer_moderator {
            return true;
        }
        if let Some(item) = st
            .get_child_mut("x", NS_MUC_USER)
            .and_then(|x| x.get_child_mut("item", NS_MUC_USER))
            && item.attr("jid").is_some_and(|j| j != to)
        {
            item.attrs_mut().remove(&rxml::Namespace::NONE, "jid");
        }
        true
    }
}
