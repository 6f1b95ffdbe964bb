//! End the meeting for everyone (Jitsi's `end_conference`, docs/rooms.md "End conference"): a
//! moderator of a main room sends `<end_conference/>` to `endconference.<domain>`; the room is
//! destroyed (its lobby and breakout rooms with it) and every occupant is told why.

use minidom::Element;

use super::room::Role;
use super::{Ctx, RoomModule};
use crate::stanza::{self, StanzaError};

const REASON: &str = "The meeting has been terminated";

pub struct EndConference {
    domain: String,
    /// The MUC domain of main rooms (breakout and lobby rooms cannot be ended this way).
    muc_domain: String,
}

impl EndConference {
    pub fn new(domain: &str, muc_domain: &str) -> EndConference {
        EndConference {
            domain: domain.to_string(),
            muc_domain: muc_domain.to_string(),
        }
    }
}

impl RoomModule for EndConference {
    fn component(&self) -> Option<String> {
        Some(self.domain.clone())
    }

    fn component_stanza(&mut self, ctx: &mut Ctx<'_>, sender_room: Option<&str>, st: &Element) {
        if super::answer_component_iq(st, "end_conference", ctx.out) {
            return;
        }
        if st.name() != "message"
            || st.attr("type") == Some("error")
            || !st.children().any(|c| c.name() == "end_conference")
        {
            return;
        }
        let from = st.attr("from").unwrap_or("");
        let refuse = |out: &mut Vec<Element>, e: StanzaError, text: &str| {
            tracing::info!(from, text, "end_conference refused");
            if let Some(r) = stanza::error_reply(st, e, Some(text)) {
                out.push(r);
            }
        };
        let Some(jid) = sender_room.filter(|r| r.ends_with(&format!("@{}", self.muc_domain)))
        else {
            return refuse(ctx.out, StanzaError::NOT_ALLOWED, "not in a main room");
        };
        let Some(room) = ctx.room_mut(jid) else {
            return refuse(ctx.out, StanzaError::ITEM_NOT_FOUND, "no such room");
        };
        let moderator = room
            .occupant_by_real(from)
            .is_some_and(|i| room.occupants[i].role == Role::Moderator);
        if !moderator {
            return refuse(
                ctx.out,
                StanzaError {
                    kind: "auth",
                    condition: "forbidden",
                },
                "only moderators may end the meeting",
            );
        }
        tracing::info!(room = %jid, by = from, "meeting ended for everyone");
        room.destroy(None, Some(REASON));
    }
}
