//! Speaker stats (Jitsi's speaker stats component, docs/rooms.md "Speaker stats"): each client
//! tells `speakerstats.<domain>` when the bridge made it the dominant speaker; the component
//! adds up each occupant's time as dominant speaker and gives a joiner the totals so far (the
//! app counts on from there with the bridge's dominant-speaker events).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use minidom::Element;
use serde_json::{Map, Value, json};

use super::room::{NS_JITMEET, RoomEvent};
use super::{Ctx, RoomModule};
use crate::ns;
use crate::router::bare_of;
use crate::stanza::el;

const NS_NICK: &str = "http://jabber.org/protocol/nick";

#[derive(Default)]
struct Speaker {
    nick: String,
    display_name: Option<String>,
    total: Duration,
    since: Option<Instant>,
    present: bool,
}

impl Speaker {
    fn time(&self, now: Instant) -> Duration {
        self.total
            + self
                .since
                .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }
    fn stop(&mut self, now: Instant) {
        if let Some(s) = self.since.take() {
            self.total += now.saturating_duration_since(s);
        }
    }
}

#[derive(Default)]
struct RoomStats {
    /// By real JID.
    speakers: HashMap<String, Speaker>,
    dominant: Option<String>,
}

pub struct SpeakerStats {
    domain: String,
    /// Service admins (the focus) are not speakers.
    admins: Vec<String>,
    /// Entries kept per room (who joined, also after leaving).
    max_per_room: usize,
    rooms: HashMap<String, RoomStats>,
}

impl SpeakerStats {
    pub fn new(domain: &str, admins: Vec<String>, max_per_room: usize) -> SpeakerStats {
        SpeakerStats {
            domain: domain.to_string(),
            admins,
            max_per_room,
            rooms: HashMap::new(),
        }
    }
}

impl RoomModule for SpeakerStats {
    fn component(&self) -> Option<String> {
        Some(self.domain.clone())
    }

    fn room_of(&self, st: &Element) -> Option<String> {
        st.get_child("speakerstats", NS_JITMEET)
            .and_then(|s| s.attr("room"))
            .map(str::to_lowercase)
    }

    fn component_stanza(&mut self, ctx: &mut Ctx<'_>, _sender_room: Option<&str>, st: &Element) {
        if super::answer_component_iq(st, "speakerstats", ctx.out) {
            return;
        }
        if st.name() != "message" || st.attr("type") == Some("error") {
            return;
        }
        let Some(room_jid) = self.room_of(st) else {
            return;
        };
        let from = st.attr("from").unwrap_or("");
        // Only an occupant speaks for itself.
        if ctx
            .room(&room_jid)
            .is_none_or(|r| r.occupant_by_real(from).is_none())
        {
            return;
        }
        let silence = st
            .get_child("speakerstats", NS_JITMEET)
            .and_then(|s| s.attr("silence"))
            == Some("true");
        let Some(stats) = self.rooms.get_mut(&room_jid) else {
            return;
        };
        let now = ctx.now;
        if let Some(old) = stats.dominant.take()
            && let Some(s) = stats.speakers.get_mut(&old)
        {
            s.stop(now);
        }
        if !silence && let Some(s) = stats.speakers.get_mut(from) {
            s.since = Some(now);
            stats.dominant = Some(from.to_string());
        }
    }

    fn on_event(&mut self, ctx: &mut Ctx<'_>, room: &str, event: &RoomEvent) {
        let now = ctx.now;
        match event {
            RoomEvent::Joined { nick, jid } => {
                if self.admins.iter().any(|a| a == bare_of(jid)) {
                    return;
                }
                let stats = self.rooms.entry(room.to_string()).or_default();
                let mut users = Map::new();
                for s in stats.speakers.values() {
                    let t = s.time(now);
                    if t > Duration::ZERO || !s.present {
                        users.insert(
                            s.nick.clone(),
                            json!({"displayName": s.display_name,
                                   "totalDominantSpeakerTime": t.as_millis() as u64}),
                        );
                    }
                }
                if !users.is_empty() {
                    let body = json!({"type": "speakerstats", "users": Value::Object(users)});
                    let mut m = el(
                        "message",
                        ns::CLIENT,
                        &[("from", &self.domain), ("to", jid)],
                    );
                    m.append_child(
                        Element::builder("json-message", NS_JITMEET)
                            .append(body.to_string())
                            .build(),
                    );
                    ctx.out.push(m);
                }
                if stats.speakers.len() >= self.max_per_room && !stats.speakers.contains_key(jid) {
                    // Forget someone who left and never spoke.
                    let idle = stats
                        .speakers
                        .iter()
                        .find(|(_, s)| !s.present && s.total.is_zero())
                        .map(|(k, _)| k.clone());
                    match idle {
                        Some(k) => {
                            stats.speakers.remove(&k);
                        }
                        None => return,
                    }
                }
                let name = ctx
                    .room(room)
                    .and_then(|r| r.occupant(nick))
                    .and_then(|o| o.presence.get_child("nick", NS_NICK).map(|n| n.text()));
                let s = stats.speakers.entry(jid.clone()).or_default();
                s.nick = nick.clone();
                s.present = true;
                s.display_name = name;
            }
            RoomEvent::Left { jid, .. } => {
                let Some(stats) = self.rooms.get_mut(room) else {
                    return;
                };
                if let Some(s) = stats.speakers.get_mut(jid) {
                    s.stop(now);
                    s.present = false;
                }
                if stats.dominant.as_deref() == Some(jid) {
                    stats.dominant = None;
                }
            }
            RoomEvent::PresenceChanged { nick } => {
                // Keep the display name: it is what the app shows for someone who left.
                let Some(r) = ctx.room(room) else {
                    return;
                };
                let Some(o) = r.occupant(nick) else {
                    return;
                };
                let name = o.presence.get_child("nick", NS_NICK).map(|n| n.text());
                let jid = o.real_jid.clone();
                if let Some(s) = self
                    .rooms
                    .get_mut(room)
                    .and_then(|st| st.speakers.get_mut(&jid))
                {
                    s.display_name = name;
                }
            }
            RoomEvent::Destroyed => {
                self.rooms.remove(room);
            }
            _ => {}
        }
    }
}
