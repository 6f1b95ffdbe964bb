//! Phone dial-out through Jigasi (docs/dialin.md §Jigasi), the focus's side, sans-IO: the
//! Jigasi instances in their brewery room (from the colibri `stats` in their presence) and
//! which one takes the next call. A moderator's Rayo `dial` goes through the focus to the
//! chosen Jigasi's occupant JID in the brewery; its `ref` answer goes back to the moderator.

use std::collections::BTreeMap;

use meetd_xmpp::Element;
use meetd_xmpp::stanza::StanzaError;

pub const NS_RAYO: &str = "urn:xmpp:rayo:1";
const NS_COLIBRI: &str = "http://jitsi.org/protocol/colibri";

/// The Jigasis dialling out for one request try this many instances at most.
pub const ATTEMPTS: usize = 3;

pub const REMOTE_SERVER_TIMEOUT: StanzaError = StanzaError {
    kind: "wait",
    condition: "remote-server-timeout",
};
pub const UNDEFINED_CONDITION: StanzaError = StanzaError {
    kind: "cancel",
    condition: "undefined-condition",
};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Instance {
    sip: bool,
    shutting_down: bool,
    participants: u64,
}

/// The Jigasis in the brewery, by occupant JID.
#[derive(Debug, Default)]
pub struct Pool {
    instances: BTreeMap<String, Instance>,
}

impl Pool {
    /// A presence in the brewery from `occupant`; presences without stats are not Jigasis.
    pub fn presence(&mut self, occupant: &str, p: &Element) {
        if p.attr("type") == Some("unavailable") {
            self.instances.remove(occupant);
            return;
        }
        let Some(stats) = p.get_child("stats", NS_COLIBRI) else {
            return;
        };
        let stat = |name: &str| {
            stats
                .children()
                .find(|c| c.name() == "stat" && c.attr("name") == Some(name))
                .and_then(|c| c.attr("value"))
                .unwrap_or("")
        };
        self.instances.insert(
            occupant.to_string(),
            Instance {
                sip: stat("supports_sip") == "true",
                shutting_down: stat("graceful_shutdown") == "true",
                participants: stat("participants").parse().unwrap_or(0),
            },
        );
    }

    /// The least loaded Jigasi that can dial out, not one in `tried`.
    pub fn select(&self, tried: &[String]) -> Option<String> {
        self.instances
            .iter()
            .filter(|(jid, i)| i.sip && !i.shutting_down && !tried.contains(jid))
            .min_by_key(|(_, i)| i.participants)
            .map(|(jid, _)| jid.clone())
    }
}

/// Whether a moderator's `dial` may go on: its `JvbRoomName`, when given, names `room`.
pub fn names_room(dial: &Element, room: &str) -> bool {
    dial.children()
        .filter(|h| h.name() == "header" && h.attr("name") == Some("JvbRoomName"))
        .all(|h| {
            h.attr("value")
                .is_some_and(|v| v.eq_ignore_ascii_case(room))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Element {
        meetd_xmpp::xml::parse_document(s.as_bytes(), &Default::default()).unwrap()
    }

    fn stats(sip: bool, shutdown: bool, participants: u32) -> Element {
        parse(&format!(
            "<presence xmlns='jabber:client'><stats xmlns='{NS_COLIBRI}'>\
             <stat name='supports_sip' value='{sip}'/><stat name='graceful_shutdown' value='{shutdown}'/>\
             <stat name='participants' value='{participants}'/></stats></presence>"
        ))
    }

    #[test]
    fn least_loaded_sip_capable_jigasi() {
        let mut p = Pool::default();
        assert_eq!(p.select(&[]), None);
        p.presence("b/j1", &stats(true, false, 5));
        p.presence("b/j2", &stats(true, false, 2));
        p.presence("b/j3", &stats(false, false, 0));
        p.presence("b/j4", &stats(true, true, 0));
        p.presence("b/other", &parse("<presence xmlns='jabber:client'/>"));
        assert_eq!(p.select(&[]).as_deref(), Some("b/j2"));
        assert_eq!(p.select(&["b/j2".into()]).as_deref(), Some("b/j1"));
        assert_eq!(p.select(&["b/j2".into(), "b/j1".into()]), None);
        p.presence(
            "b/j2",
            &parse("<presence xmlns='jabber:client' type='unavailable'/>"),
        );
        assert_eq!(p.select(&[]).as_deref(), Some("b/j1"));
    }

    #[test]
    fn the_dial_must_name_its_room() {
        let d = |v: &str| {
            parse(&format!(
                "<dial xmlns='{NS_RAYO}' to='+4930' from='fromnumber'><header name='JvbRoomName' value='{v}'/></dial>"
            ))
        };
        assert!(names_room(&d("r@muc.x"), "r@muc.x"));
        assert!(!names_room(&d("other@muc.x"), "r@muc.x"));
        assert!(names_room(
            &parse(&format!("<dial xmlns='{NS_RAYO}' to='1'/>")),
            "r@muc.x"
        ));
    }
}
