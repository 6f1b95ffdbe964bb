//! Audio/video moderation (Jitsi's `av_moderation` component, docs/rooms.md "A/V moderation"):
//! a moderator turns it on per media through `avmoderation.<domain>`; participants then need a
//! moderator's approval (a whitelist) to unmute. Everyone in the room, the focus included, is
//! told when it is turned on or off; moderators get the whitelists; an approved participant is
//! told it may unmute. The focus mutes everyone else at the bridge and refuses their unmute.

use std::collections::{BTreeMap, HashMap, HashSet};

use minidom::Element;
use serde_json::{Value, json};

use super::room::{Role, Room, RoomEvent};
use super::{Ctx, RoomModule};
use crate::stanza::{self, StanzaError};

const MEDIA: [&str; 3] = ["audio", "video", "desktop"];

#[derive(Default)]
struct State {
    /// Media with moderation on → (the actor's occupant JID, the whitelist of occupant JIDs).
    on: BTreeMap<&'static str, (String, Vec<String>)>,
    /// Moderators that have the current whitelists.
    told: HashSet<String>,
}

pub struct AvModeration {
    domain: String,
    rooms: HashMap<String, State>,
}

impl AvModeration {
    pub fn new(domain: &str) -> AvModeration {
        AvModeration {
            domain: domain.to_string(),
            rooms: HashMap::new(),
        }
    }

    fn message(&self, to: &str, body: &Value) -> Element {
        super::json_message(&self.domain, to, body)
    }

    fn whitelists(state: &State) -> Value {
        let mut w = serde_json::Map::new();
        for (m, (_, list)) in &state.on {
            w.insert((*m).to_string(), json!(list));
        }
        Value::Object(w)
    }

    /// The whitelist of `media` to the moderators (and, when `about` is a participant, that it
    /// was approved or removed).
    fn whitelist_change(
        &self,
        room: &Room,
        state: &State,
        media: &str,
        about: Option<&str>,
        removed: bool,
        out: &mut Vec<Element>,
    ) {
        let mut to_mods = json!({"type": "av_moderation", "room": room.jid,
            "whitelists": Self::whitelists(state), "mediaType": media});
        if removed {
            to_mods["removed"] = json!(true);
        }
        let mut to_one = json!({"type": "av_moderation", "room": room.jid, "mediaType": media});
        to_one[if removed { "removed" } else { "approved" }] = json!(true);
        for o in &room.occupants {
            if o.role == Role::Moderator {
                out.push(self.message(&o.real_jid, &to_mods));
            } else if about == Some(o.real_jid.as_str()) {
                out.push(self.message(&o.real_jid, &to_one));
            }
        }
    }

    fn command(
        &mut self,
        room: &Room,
        from: &str,
        cmd: &Element,
        out: &mut Vec<Element>,
    ) -> Result<(), (StanzaError, &'static str)> {
        let forbidden = (
            StanzaError {
                kind: "auth",
                condition: "forbidden",
            },
            "only moderators may moderate",
        );
        let Some(i) = room.occupant_by_real(from) else {
            return Err((StanzaError::NOT_ALLOWED, "not in the room"));
        };
        let actor = &room.occupants[i];
        if actor.role != Role::Moderator {
            return Err(forbidden);
        }
        let actor_jid = format!("{}/{}", room.jid, actor.nick);
        let media = cmd
            .attr("mediaType")
            .and_then(|m| MEDIA.iter().find(|x| **x == m).copied())
            .ok_or((
                StanzaError::BAD_REQUEST,
                "mediaType: audio, video or desktop",
            ))?;
        let state = self.rooms.entry(room.jid.clone()).or_default();
        if let Some(enable) = cmd.attr("enable") {
            let on = enable == "true";
            if on == state.on.contains_key(media) {
                // Someone else did it already: nothing changes.
                return Ok(());
            }
            if on {
                state.on.insert(media, (actor_jid.clone(), Vec::new()));
            } else {
                state.on.remove(media);
            }
            let body = json!({"type": "av_moderation", "enabled": on, "room": room.jid,
                "actor": actor_jid, "mediaType": media});
            for o in &room.occupants {
                out.push(self.message(&o.real_jid, &body));
            }
            return Ok(());
        }
        let (target, add) = match (cmd.attr("jidToWhitelist"), cmd.attr("jidToBlacklist")) {
            (Some(t), _) => (t, true),
            (None, Some(t)) => (t, false),
            _ => return Err((StanzaError::BAD_REQUEST, "no command")),
        };
        let Some(t) = target
            .strip_prefix(&format!("{}/", room.jid))
            .and_then(|nick| room.occupant(nick))
        else {
            return Err((StanzaError::ITEM_NOT_FOUND, "no such occupant"));
        };
        let target_real = t.real_jid.clone();
        let Some((_, list)) = state.on.get_mut(media) else {
            // Moderation is off: an "ask to unmute" passed on to the participant.
            if add {
                let body = json!({"type": "av_moderation", "room": room.jid, "approved": true,
                    "mediaType": media, "from": actor_jid});
                out.push(self.message(&target_real, &body));
            }
            return Ok(());
        };
        let had = list.iter().any(|x| x == target);
        if add && !had {
            list.push(target.to_string());
        } else if !add && had {
            list.retain(|x| x != target);
        } else {
            return Ok(());
        }
        let state = &self.rooms[&room.jid];
        self.whitelist_change(room, state, media, Some(&target_real), !add, out);
        Ok(())
    }
}

impl RoomModule for AvModeration {
    fn component(&self) -> Option<String> {
        Some(self.domain.clone())
    }

    fn component_stanza(&mut self, ctx: &mut Ctx<'_>, sender_room: Option<&str>, st: &Element) {
        if super::answer_component_iq(st, "av_moderation", ctx.out) {
            return;
        }
        if st.name() != "message" || st.attr("type") == Some("error") {
            return;
        }
        let Some(cmd) = st.children().find(|c| c.name() == "av_moderation") else {
            return;
        };
        let from = st.attr("from").unwrap_or("");
        let result = match sender_room.and_then(|r| ctx.rooms.get(r)) {
            Some(room) => self.command(room, from, cmd, ctx.out),
            None => Err((StanzaError::NOT_ALLOWED, "not in a room")),
        };
        if let Err((e, text)) = result {
            tracing::info!(from, text, "av_moderation refused");
            if let Some(r) = stanza::error_reply(st, e, Some(text)) {
                ctx.out.push(r);
            }
        }
    }

    fn on_event(&mut self, ctx: &mut Ctx<'_>, room: &str, event: &RoomEvent) {
        match event {
            RoomEvent::Joined { nick, .. } | RoomEvent::PresenceChanged { nick } => {
                let (Some(r), Some(state)) = (ctx.rooms.get(room), self.rooms.get(room)) else {
                    return;
                };
                if state.on.is_empty() {
                    return;
                }
                let Some(o) = r.occupant(nick) else {
                    return;
                };
                let mut out = Vec::new();
                if matches!(event, RoomEvent::Joined { .. }) {
                    for (m, (actor, _)) in &state.on {
                        let body = json!({"type": "av_moderation", "enabled": true, "room": r.jid,
                            "actor": actor, "mediaType": m});
                        out.push(self.message(&o.real_jid, &body));
                    }
                }
                // A (new) moderator gets the whitelists.
                let new_moderator = o.role == Role::Moderator && !state.told.contains(&o.real_jid);
                if new_moderator {
                    for m in state.on.keys() {
                        let body = json!({"type": "av_moderation", "room": r.jid,
                            "whitelists": Self::whitelists(state), "mediaType": m});
                        out.push(self.message(&o.real_jid, &body));
                    }
                }
                let jid = o.real_jid.clone();
                ctx.out.extend(out);
                if new_moderator && let Some(s) = self.rooms.get_mut(room) {
                    s.told.insert(jid);
                }
            }
            RoomEvent::Left { jid, .. } => {
                if let Some(s) = self.rooms.get_mut(room) {
                    s.told.remove(jid);
                }
            }
            RoomEvent::Destroyed => {
                self.rooms.remove(room);
            }
            _ => {}
        }
    }
}
