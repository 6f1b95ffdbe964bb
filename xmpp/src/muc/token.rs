//! What a sign-in token means in the rooms (stock `token_verification`, `token_affiliation`
//! and `presence_identity`): a token holder joins only the room its token names, its token
//! makes it an owner (moderator) or a member, and its presence carries the identity from the
//! token instead of whatever the client wrote.
//!
//! Tokens were verified at sign-in (`crate::token`); this module reads what they said from
//! [`Identities`] by the joiner's full JID. Sessions without a token (guests, where allowed)
//! pass unchanged.

use std::sync::Arc;

use minidom::Element;

use super::{JoinCheck, JoinRequest, Room, RoomModule, conference_key};
use crate::stanza::{self, StanzaError};
use crate::token::{Identities, TokenIdentity};

const NS_JITMEET: &str = "http://jitsi.org/jitmeet";

pub struct TokenRooms {
    identities: Arc<Identities>,
    /// The breakout rooms' domain: a breakout room belongs to the token's room when its main
    /// room does.
    breakout_domain: Option<String>,
}

impl TokenRooms {
    pub fn new(identities: Arc<Identities>, breakout_domain: Option<String>) -> TokenRooms {
        TokenRooms {
            identities,
            breakout_domain,
        }
    }

    /// The room name a token's `room` claim is compared with.
    pub(crate) fn claimed_node<'a>(&self, room_jid: &'a str) -> &'a str {
        let (node, domain) = room_jid.split_once('@').unwrap_or((room_jid, ""));
        if self.breakout_domain.as_deref() == Some(domain) {
            conference_key(room_jid)
        } else {
            node
        }
    }
}

/// The `<identity>` element a stock install puts in a token holder's presence.
pub fn identity_element(id: &TokenIdentity) -> Element {
    let ns = crate::ns::CLIENT;
    let mut user = Element::builder("user", ns);
    for (k, v) in [
        ("id", &id.user.id),
        ("name", &id.user.name),
        ("email", &id.user.email),
        ("avatar", &id.user.avatar),
    ] {
        if let Some(v) = v {
            user = user.append(Element::builder(k, ns).append(v.as_str()).build());
        }
    }
    let mut e = Element::builder("identity", ns).append(user.build());
    if let Some(g) = &id.group {
        e = e.append(Element::builder("group", ns).append(g.as_str()).build());
    }
    e.build()
}

/// Jibri's namespace: recording and live-streaming requests to the focus.
const NS_JIBRI: &str = "http://jitsi.org/protocol/jibri";
/// Rayo: phone dial-out requests to the focus.
const NS_RAYO: &str = "urn:xmpp:rayo:1";

impl RoomModule for TokenRooms {
    /// A token's `context.features` gate recording, live streaming and phone dial-out (stock
    /// `mod_filter_iq_jibri` and `mod_filter_iq_rayo`): a start or stop from a holder whose
    /// token does not grant `recording` (file) or `livestreaming` (stream), or a dial without
    /// `outbound-call`, is refused before it reaches the focus.
    fn check_occupant_iq(&mut self, _room: &Room, from: &str, iq: &Element) -> Option<Element> {
        if iq.attr("type") != Some("set") {
            return None;
        }
        // Phone dial-out (stock mod_filter_iq_rayo): `outbound-call`.
        let feature = if let Some(d) = iq.get_child("dial", NS_RAYO) {
            if d.attr("to") == Some("jitsi_meet_transcribe") {
                "transcription"
            } else {
                "outbound-call"
            }
        } else {
            let j = iq.get_child("jibri", NS_JIBRI)?;
            if !matches!(j.attr("action"), Some("start") | Some("stop")) {
                return None;
            }
            match j.attr("recording_mode") {
                Some("file") => "recording",
                _ => "livestreaming",
            }
        };
        let id = self.identities.get(from)?;
        if id.feature(feature) != Some(false) {
            return None;
        }
        tracing::info!(jid = from, feature, "token does not grant this; refused");
        stanza::error_reply(
            iq,
            StanzaError {
                kind: "auth",
                condition: "forbidden",
            },
            Some("not allowed by the token"),
        )
    }

    fn filter_input(&mut self, _room: &str, from: &str, st: &mut Element) {
        // Nobody writes their own identity: only the server's, from the token, goes out.
        while st.remove_child("identity", crate::ns::CLIENT).is_some() {}
        if let Some(id) = self.identities.get(from) {
            st.append_child(identity_element(&id));
            // A token with `name-readonly` fixes the display name to the token's (stock's
            // muc_displayname): whatever the client says is replaced, or dropped without one.
            if id.features.as_ref().and_then(|f| f.get("name-readonly")) == Some(&true) {
                const NS_NICK: &str = "http://jabber.org/protocol/nick";
                while st.remove_child("nick", NS_NICK).is_some() {}
                if let Some(name) = id.user.name.as_deref().filter(|n| !n.is_empty()) {
                    st.append_child(
                        Element::builder("nick", NS_NICK)
                            .append(name.to_string())
                            .build(),
                    );
                }
            }
        }
    }

    fn check_join(&mut self, room: &Room, join: &JoinRequest<'_>) -> JoinCheck {
        if join.privileged {
            return JoinCheck::Continue;
        }
        let Some(id) = self.identities.get(join.real_jid) else {
            return JoinCheck::Continue;
        };
        if !id.allows_room(self.claimed_node(&room.jid)) {
            tracing::warn!(room = %room.jid, jid = join.real_jid, "token is for another room");
            return match stanza::error_reply(
                join.presence,
                StanzaError::NOT_ALLOWED,
                Some("Room does not match the room from token"),
            ) {
                Some(mut e) => {
                    // The reason as a stock install names it, for the app.
                    if let Some(err) = e.get_child_mut("error", crate::ns::CLIENT) {
                        err.append_child(Element::bare("room-mismatch", NS_JITMEET));
                    }
                    JoinCheck::Refuse(e)
                }
                None => JoinCheck::Continue,
            };
        }
        let bare = crate::router::bare_of(join.real_jid);
        if id.moderator {
            JoinCheck::Grant(super::Affiliation::Owner)
        } else if room.affiliation(bare) == super::Affiliation::None {
            JoinCheck::Grant(super::Affiliation::Member)
        } else {
            JoinCheck::Continue
        }
    }
}
