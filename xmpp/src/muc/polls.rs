//! Polls (Jitsi's polls component, docs/rooms.md "Polls"): occupants send `new-poll` and
//! `answer-poll` commands to `polls.<domain>` as JSON; the component keeps each room's polls,
//! passes every command on to all occupants with the sender's occupant id (and name) added, and
//! gives a joiner the polls so far (`old-polls`). Answers replace the voter's earlier ones.

use std::collections::HashMap;

use minidom::Element;
use serde_json::{Value, json};

use super::room::{NS_JITMEET, Room, RoomEvent};
use super::{Ctx, RoomModule};
use crate::ns;
use crate::stanza::{self, StanzaError};

const NS_NICK: &str = "http://jabber.org/protocol/nick";
/// Largest command accepted (the JSON text), as stock.
const MAX_PAYLOAD: usize = 1024;

#[derive(Debug, Clone, Copy)]
pub struct PollLimits {
    pub per_room: usize,
    pub options: usize,
}

/// A voter: occupant id and display name.
type Voter = (String, Option<String>);

struct Poll {
    id: String,
    sender_id: String,
    sender_name: Option<String>,
    question: String,
    /// Option names, and per option the voters (occupant id → name).
    answers: Vec<(String, Vec<Voter>)>,
}

pub struct Polls {
    domain: String,
    limits: PollLimits,
    rooms: HashMap<String, Vec<Poll>>,
}

impl Polls {
    pub fn new(domain: &str, limits: PollLimits) -> Polls {
        Polls {
            domain: domain.to_string(),
            limits,
            rooms: HashMap::new(),
        }
    }

    fn message(&self, to: &str, body: &Value) -> Element {
        super::json_message(&self.domain, to, body)
    }

    fn to_all(&self, room: &Room, body: &Value, out: &mut Vec<Element>) {
        for o in &room.occupants {
            out.push(self.message(&o.real_jid, body));
        }
    }

    fn old_polls(polls: &[Poll]) -> Value {
        let list: Vec<Value> = polls
            .iter()
            .map(|p| {
                json!({
                    "pollId": p.id,
                    "senderId": p.sender_id,
                    "senderName": p.sender_name,
                    "question": p.question,
                    "answers": p.answers.iter().map(|(name, voters)| json!({
                        "name": name,
                        "voters": voters.iter().map(|(id, n)| json!({"id": id, "name": n})).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({"type": "polls", "command": "old-polls", "polls": list})
    }

    /// One command; `Err` is the error the sender gets.
    fn command(
        &mut self,
        room: &Room,
        from: &str,
        mut data: serde_json::Map<String, Value>,
    ) -> Result<Value, (StanzaError, &'static str)> {
        let bad = |t| (StanzaError::BAD_REQUEST, t);
        let Some(i) = room.occupant_by_real(from) else {
            return Err((StanzaError::NOT_ALLOWED, "not in the room"));
        };
        let occupant = &room.occupants[i];
        let sender_id = occupant.nick.clone();
        let sender_name = occupant
            .presence
            .get_child("nick", NS_NICK)
            .map(|n| n.text());
        let poll_id = data
            .get("pollId")
            .and_then(Value::as_str)
            .ok_or(bad("no pollId"))?
            .to_string();
        let answers = data
            .get("answers")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
            .ok_or(bad("no answers"))?
            .clone();
        let polls = self.rooms.entry(room.jid.clone()).or_default();
        match data.get("command").and_then(Value::as_str) {
            Some("new-poll") => {
                let question = data
                    .get("question")
                    .and_then(Value::as_str)
                    .ok_or(bad("no question"))?
                    .to_string();
                let names: Vec<String> = answers
                    .iter()
                    .map(|a| a.get("name").and_then(Value::as_str).map(str::to_string))
                    .collect::<Option<_>>()
                    .ok_or(bad("an option without a name"))?;
                if names.len() > self.limits.options {
                    return Err((StanzaError::POLICY_VIOLATION, "too many options"));
                }
                if polls.len() >= self.limits.per_room {
                    return Err((StanzaError::POLICY_VIOLATION, "too many polls in this room"));
                }
                if polls.iter().any(|p| p.id == poll_id) {
                    return Err((StanzaError::NOT_ALLOWED, "Poll already exists"));
                }
                polls.push(Poll {
                    id: poll_id,
                    sender_id: sender_id.clone(),
                    sender_name,
                    question,
                    answers: names.into_iter().map(|n| (n, Vec::new())).collect(),
                });
                data.insert("senderId".into(), json!(sender_id));
            }
            Some("answer-poll") => {
                let votes: Vec<bool> = answers
                    .iter()
                    .map(Value::as_bool)
                    .collect::<Option<_>>()
                    .ok_or(bad("answers must be true or false"))?;
                let Some(poll) = polls.iter_mut().find(|p| p.id == poll_id) else {
                    return Err((StanzaError::ITEM_NOT_FOUND, "no such poll"));
                };
                if votes.len() != poll.answers.len() {
                    return Err(bad("one answer per option"));
                }
                for ((_, voters), vote) in poll.answers.iter_mut().zip(&votes) {
                    voters.retain(|(id, _)| *id != sender_id);
                    if *vote {
                        voters.push((sender_id.clone(), sender_name.clone()));
                    }
                }
                data.insert("senderId".into(), json!(sender_id));
                data.insert("senderName".into(), json!(sender_name));
            }
            _ => return Err(bad("unknown command")),
        }
        data.insert("type".into(), json!("polls"));
        Ok(Value::Object(data))
    }
}

impl RoomModule for Polls {
    fn component(&self) -> Option<String> {
        Some(self.domain.clone())
    }

    fn component_stanza(&mut self, ctx: &mut Ctx<'_>, sender_room: Option<&str>, st: &Element) {
        if super::answer_component_iq(st, "polls", ctx.out) {
            return;
        }
        if st.name() != "message"
            || matches!(st.attr("type"), Some("groupchat" | "error"))
            || st.get_child("body", ns::CLIENT).is_some()
        {
            return;
        }
        let Some(json) = st.get_child("json-message", NS_JITMEET) else {
            return;
        };
        let refuse = |out: &mut Vec<Element>, e: StanzaError, text: &str| {
            tracing::debug!(from = st.attr("from"), text, "poll command refused");
            if let Some(r) = stanza::error_reply(st, e, Some(text)) {
                out.push(r);
            }
        };
        let text = json.text();
        if text.len() >= MAX_PAYLOAD {
            return refuse(ctx.out, StanzaError::POLICY_VIOLATION, "poll too large");
        }
        let Ok(Value::Object(data)) = serde_json::from_str::<Value>(&text) else {
            return refuse(ctx.out, StanzaError::BAD_REQUEST, "not a JSON object");
        };
        if data.get("type").and_then(Value::as_str) != Some("polls") {
            return;
        }
        let Some(room) = sender_room.and_then(|r| ctx.rooms.get(r)) else {
            return refuse(ctx.out, StanzaError::NOT_ALLOWED, "not in a room");
        };
        match self.command(room, st.attr("from").unwrap_or(""), data) {
            Ok(body) => self.to_all(room, &body, ctx.out),
            Err((e, text)) => refuse(ctx.out, e, text),
        }
    }

    fn on_event(&mut self, ctx: &mut Ctx<'_>, room: &str, event: &RoomEvent) {
        match event {
            RoomEvent::Joined { jid, .. } => {
                if let Some(polls) = self.rooms.get(room).filter(|p| !p.is_empty()) {
                    let m = self.message(jid, &Self::old_polls(polls));
                    ctx.out.push(m);
                }
            }
            RoomEvent::Destroyed => {
                self.rooms.remove(room);
            }
            _ => {}
        }
    }
}
