//! The HTTP APIs that a stock install's Prosody modules offer and that integrations script
//! against (docs/http-api.md): room size and occupants, the session count, the room census,
//! room info and passcode checks, kicking a participant, ending a meeting, system chat
//! messages, inviting a phone number through Jigasi, and TURN credentials. Same paths,
//! parameters, bodies, status codes and token rules as stock; what stock leaves open (and
//! leaves to the proxy not to publish) is answered on loopback only unless `[http_api]
//! public`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use meetd_xmpp::muc::directory::{Directory, RoomSummary};
use meetd_xmpp::token::TokenAuthority;
use serde_json::{Value, json};

/// What the endpoints need besides the XMPP server.
pub struct HttpApi {
    pub cfg: crate::config::HttpApiSection,
    /// The XMPP domain and the rooms' MUC domain.
    pub domain: String,
    pub muc_domain: String,
    pub rooms: Arc<Directory>,
    /// Verifies system tokens (none configured: the system endpoints refuse everyone).
    pub system: Option<Arc<TokenAuthority>>,
    /// The focus's full JID: kicks and room destruction go out as the focus, the rooms' owner.
    pub focus_jid: String,
}

fn status(code: StatusCode) -> Response {
    code.into_response()
}

fn json_response(v: &Value) -> Response {
    let mut r = (StatusCode::OK, v.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `Authorization: Bearer <token>`, exactly as stock parses it.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .filter(|t| !t.is_empty())
}

/// The JSON body, as stock takes it: Content-Type exactly `application/json`, not empty, JSON.
fn json_body(headers: &HeaderMap, body: &[u8]) -> Option<Value> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/json");
    if !json || body.is_empty() {
        return None;
    }
    serde_json::from_slice(body).ok()
}

impl HttpApi {
    /// The open endpoints (no token in stock) answer loopback callers, or anyone when public.
    pub fn open_to(&self, client: IpAddr) -> bool {
        self.cfg.public || client.is_loopback()
    }

    async fn system_ok(&self, headers: &HeaderMap) -> bool {
        let (Some(t), Some(auth)) = (bearer(headers), &self.system) else {
            return false;
        };
        auth.verify(t, None).await.is_ok()
    }

    /// `room` (+ `domain`) of the query as a room JID of this MUC: None for another domain.
    fn room_from_query(&self, q: &HashMap<String, String>) -> Option<String> {
        let room = q.get("room").filter(|r| !r.is_empty())?.to_lowercase();
        if let Some(d) = q.get("domain")
            && !(d.eq_ignore_ascii_case(&self.domain) || d.eq_ignore_ascii_case(&self.muc_domain))
        {
            return None;
        }
        valid_node(&room).then(|| format!("{room}@{}", self.muc_domain))
    }

    /// A full room JID (`room@muc.<domain>`, or stock's `room@conference.<tenant>.<domain>`)
    /// as a room JID of this MUC.
    fn room_from_jid(&self, jid: &str) -> Option<String> {
        let (node, domain) = jid.split_once('@')?;
        let node = node.to_lowercase();
        let domain = domain.to_lowercase();
        let ours = domain == self.muc_domain
            || domain
                .strip_suffix(&format!(".{}", self.domain))
                .is_some_and(|head| head.starts_with("conference") || head.starts_with("muc"));
        (ours && valid_node(&node)).then(|| format!("{node}@{}", self.muc_domain))
    }

    /// A `set` IQ from the focus to `room` with `<query xmlns=ns>` around `item`: the
    /// room's owner acting for the API.
    fn as_focus(&self, room: &str, ns: &str, item: minidom::Element) -> minidom::Element {
        let mut iq = meetd_xmpp::stanza::el(
            "iq",
            meetd_xmpp::ns::CLIENT,
            &[
                ("type", "set"),
                ("id", &format!("http-api-{}", rand::random::<u32>())),
                ("from", &self.focus_jid),
                ("to", room),
            ],
        );
        iq.append_child(minidom::Element::builder("query", ns).append(item).build());
        iq
    }

    fn room(&self, jid: &str) -> Option<RoomSummary> {
        self.rooms.room(jid)
    }

    /// Checks a sign-in token for `room` (`/room-size` with verification on).
    async fn login_token_for(
        &self,
        server: &meetd_xmpp::Server,
        token: Option<&str>,
        room_node: &str,
    ) -> bool {
        let (Some(t), Some(auth)) = (token, server.token_authority()) else {
            return false;
        };
        match auth.verify(t, None).await {
            Ok(id) => match id.room.as_deref() {
                None | Some("*") => true,
                Some(r) => r.eq_ignore_ascii_case(room_node),
            },
            Err(_) => false,
        }
    }

    /// `GET /room-size` and `GET /room`.
    pub async fn room_size(
        &self,
        server: &meetd_xmpp::Server,
        q: &HashMap<String, String>,
        list: bool,
    ) -> Response {
        if q.is_empty() || q.get("room").is_none_or(|r| r.is_empty()) {
            return status(StatusCode::BAD_REQUEST);
        }
        if self.cfg.room_size_token {
            let node = q.get("room").map(|r| r.to_lowercase()).unwrap_or_default();
            if !self
                .login_token_for(server, q.get("token").map(String::as_str), &node)
                .await
            {
                return status(StatusCode::FORBIDDEN);
            }
        }
        let Some(room) = self.room_from_query(q).and_then(|j| self.room(&j)) else {
            return status(StatusCode::NOT_FOUND);
        };
        if !list {
            // As stock: everyone, less one (the focus) once there is more than one.
            let n = room.occupants.len();
            let n = if n > 1 { n - 1 } else { n };
            return (StatusCode::OK, json!({ "participants": n }).to_string()).into_response();
        }
        let people: Vec<Value> = room
            .occupants
            .iter()
            .filter(|o| o.nick != "focus")
            .map(|o| {
                json!({
                    "jid": format!("{}/{}", room.jid, o.nick),
                    "email": o.email.clone().unwrap_or_default(),
                    "display_name": o.display_name.clone().unwrap_or_default(),
                })
            })
            .collect();
        (StatusCode::OK, Value::Array(people).to_string()).into_response()
    }

    /// `GET /room-census`.
    pub fn census(&self, live: impl Fn(&str) -> bool) -> Response {
        let rooms: Vec<Value> = self
            .rooms
            .rooms()
            .into_iter()
            .filter(|r| {
                !r.jid
                    .starts_with(meetd_xmpp::muc::policies::HEALTH_CHECK_PREFIX)
            })
            .map(|r| {
                let people = r.occupants.iter().filter(|o| o.nick != "focus").count();
                let leaked = people > 0
                    && !r
                        .occupants
                        .iter()
                        .filter(|o| o.nick != "focus")
                        .any(|o| live(&o.jid));
                let mut v = json!({
                    "room_name": r.jid,
                    "participants": people,
                    "leaked": leaked,
                });
                if let Some(t) = r.created_ms {
                    v["created_time"] = json!(t.to_string());
                }
                v
            })
            .collect();
        (StatusCode::OK, json!({ "room_census": rooms }).to_string()).into_response()
    }

    /// `GET` and `PUT /room-info`: whether a room has a password or a lobby; a passcode check.
    pub async fn room_info(
        &self,
        server: &meetd_xmpp::Server,
        headers: &HeaderMap,
        q: &HashMap<String, String>,
        put: Option<&[u8]>,
    ) -> Response {
        let mut passcode = None;
        if let Some(body) = put {
            let Some(v) = json_body(headers, body) else {
                return status(StatusCode::BAD_REQUEST);
            };
            let Some(p) = v.get("passcode").and_then(Value::as_str) else {
                return status(StatusCode::BAD_REQUEST);
            };
            passcode = Some(p.to_string());
        }
        if q.get("room").is_none_or(|r| r.is_empty()) {
            return status(StatusCode::BAD_REQUEST);
        }
        if self.cfg.room_info_token {
            let ok = match (bearer(headers), server.token_authority()) {
                (Some(t), Some(auth)) => auth.verify(t, None).await.is_ok(),
                _ => false,
            };
            if !ok {
                return status(StatusCode::FORBIDDEN);
            }
        }
        let Some(room) = self.room_from_query(q).and_then(|j| self.room(&j)) else {
            return status(StatusCode::NOT_FOUND);
        };
        match passcode {
            Some(p) => json_response(&json!({
                "valid": room.password.as_deref().is_some_and(|pw| pw == p)
            })),
            None => json_response(&json!({
                "conference": room.jid,
                "passcodeProtected": room.password.is_some(),
                "lobbyEnabled": room.lobby,
            })),
        }
    }

    /// `PUT /kick-participant?room=`: `{"participantId": nick}` or `{"number": digits}`.
    pub async fn kick(
        &self,
        router: &meetd_xmpp::router::Router,
        headers: &HeaderMap,
        q: &HashMap<String, String>,
        body: &[u8],
    ) -> Response {
        let Some(v) = json_body(headers, body) else {
            return status(StatusCode::BAD_REQUEST);
        };
        let id = v.get("participantId").and_then(Value::as_str);
        let number = v.get("number").and_then(Value::as_str);
        if id.is_some() == number.is_some() || q.get("room").is_none_or(|r| r.is_empty()) {
            return status(StatusCode::BAD_REQUEST);
        }
        if !self.system_ok(headers).await {
            return status(StatusCode::FORBIDDEN);
        }
        let Some(room) = self.room_from_query(q).and_then(|j| self.room(&j)) else {
            return status(StatusCode::NOT_FOUND);
        };
        let target = room.occupants.iter().find(|o| {
            o.nick != "focus"
                && match (id, number) {
                    (Some(id), _) => o.nick == id,
                    (None, Some(n)) => o.display_name.as_deref().is_some_and(|d| d.starts_with(n)),
                    _ => false,
                }
        });
        let Some(t) = target else {
            return status(StatusCode::NOT_FOUND);
        };
        let item = meetd_xmpp::stanza::el(
            "item",
            "http://jabber.org/protocol/muc#admin",
            &[("nick", &t.nick), ("role", "none")],
        );
        router.route(self.as_focus(&room.jid, "http://jabber.org/protocol/muc#admin", item));
        tracing::info!(room = %room.jid, nick = %t.nick, "participant kicked (HTTP API)");
        status(StatusCode::OK)
    }

    /// `POST /end-meeting?conference=<room JID>[&silent-reconnect=true]`.
    pub async fn end_meeting(
        &self,
        router: &meetd_xmpp::router::Router,
        headers: &HeaderMap,
        q: &HashMap<String, String>,
    ) -> Response {
        let Some(conference) = q.get("conference").filter(|c| !c.is_empty()) else {
            return status(StatusCode::BAD_REQUEST);
        };
        if !self.system_ok(headers).await {
            return status(StatusCode::UNAUTHORIZED);
        }
        let Some(room) = self.room_from_jid(conference).and_then(|j| self.room(&j)) else {
            return status(StatusCode::NOT_FOUND);
        };
        let silent = q.get("silent-reconnect").is_some_and(|v| v == "true");
        let mut destroy =
            minidom::Element::builder("destroy", "http://jabber.org/protocol/muc#owner");
        if silent {
            destroy = destroy.attr(meetd_xmpp::stanza::rxml_name("jid"), room.jid.clone());
        }
        let reason = if silent {
            "The meeting has been terminated silently"
        } else {
            "The meeting has been terminated"
        };
        let destroy = destroy
            .append(
                minidom::Element::builder("reason", "http://jabber.org/protocol/muc#owner")
                    .append(reason.to_string())
                    .build(),
            )
            .build();
        router.route(self.as_focus(&room.jid, "http://jabber.org/protocol/muc#owner", destroy));
        tracing::info!(room = %room.jid, silent, "meeting ended (HTTP API)");
        status(StatusCode::OK)
    }

    /// `POST /send-system-chat-message`: `{room, connectionJIDs, message, displayName?}`.
    pub async fn system_chat(
        &self,
        router: &meetd_xmpp::router::Router,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Response {
        let Some(v) = json_body(headers, body) else {
            return status(StatusCode::BAD_REQUEST);
        };
        let (Some(message), Some(jids), Some(room)) = (
            v.get("message").and_then(Value::as_str),
            v.get("connectionJIDs").and_then(Value::as_array),
            v.get("room").and_then(Value::as_str),
        ) else {
            return status(StatusCode::BAD_REQUEST);
        };
        // As stock: an unknown room is told before the token is looked at.
        let Some(room) = self.room_from_jid(room).and_then(|j| self.room(&j)) else {
            return status(StatusCode::NOT_FOUND);
        };
        if !self.system_ok(headers).await {
            return status(StatusCode::UNAUTHORIZED);
        }
        let mut payload = json!({ "type": "system_chat_message", "message": message });
        if let Some(d) = v.get("displayName").and_then(Value::as_str) {
            payload["displayName"] = json!(d);
        }
        let text = payload.to_string();
        // Only the room's own occupants' sessions: the room does not speak to strangers.
        let mut sent = 0;
        for to in jids.iter().filter_map(Value::as_str) {
            if !room.occupants.iter().any(|o| o.jid == to) {
                continue;
            }
            let mut m = meetd_xmpp::stanza::el(
                "message",
                meetd_xmpp::ns::CLIENT,
                &[("from", &room.jid), ("to", to)],
            );
            m.append_child(
                minidom::Element::builder("json-message", "http://jitsi.org/jitmeet")
                    .append(text.clone())
                    .build(),
            );
            router.route(m);
            sent += 1;
        }
        tracing::info!(room = %room.jid, recipients = sent, "system chat message (HTTP API)");
        status(StatusCode::OK)
    }

    /// `POST /invite-jigasi`: `{conference, phoneNo}`, dialled through the least loaded
    /// SIP-capable Jigasi.
    pub async fn invite_jigasi(
        &self,
        focus: Option<&meetd_jingle::focus::FocusHandle>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Response {
        if !self.system_ok(headers).await {
            return status(StatusCode::UNAUTHORIZED);
        }
        let Some(v) = json_body(headers, body) else {
            return status(StatusCode::BAD_REQUEST);
        };
        let (Some(conference), Some(number)) = (
            v.get("conference").and_then(Value::as_str),
            v.get("phoneNo").and_then(Value::as_str),
        ) else {
            return status(StatusCode::BAD_REQUEST);
        };
        let room = self
            .room_from_jid(conference)
            .unwrap_or_else(|| conference.to_string());
        let not_found =
            |e: &str| (StatusCode::NOT_FOUND, json!({ "error": e }).to_string()).into_response();
        match focus.map(|f| f.invite_jigasi(&room, number)) {
            Some(Ok(())) => status(StatusCode::OK),
            Some(Err(meetd_jingle::focus::InviteError::NoJigasi)) => not_found("Jigasi not found"),
            Some(Err(meetd_jingle::focus::InviteError::NoBrewery)) | None => {
                not_found("Brewery room was not found")
            }
        }
    }

    /// `GET /turn-credentials`: the XEP-0215 services as JSON.
    pub fn turn_credentials(&self, server: &meetd_xmpp::Server) -> Response {
        let services =
            server.external_services("urn:xmpp:extdisco:2", std::time::SystemTime::now());
        let list: Vec<Value> = services
            .children()
            .map(|s| {
                let mut v = serde_json::Map::new();
                for ((_, name), val) in s.attrs() {
                    let k: &str = name.as_ref();
                    let value = match k {
                        "port" => val.parse::<u16>().map(|p| json!(p)).unwrap_or(json!(val)),
                        "restricted" => json!(val == "1" || val == "true"),
                        "expires" => match iso_to_unix(val) {
                            Some(t) => json!(t),
                            None => continue,
                        },
                        _ => json!(val),
                    };
                    v.insert(k.to_string(), value);
                }
                Value::Object(v)
            })
            .collect();
        json_response(&Value::Array(list))
    }
}

/// A room node as the APIs accept it: not empty, no JID-special characters.
fn valid_node(node: &str) -> bool {
    !node.is_empty()
        && node.len() <= 1023
        && !node.chars().any(|c| {
            c.is_whitespace() || matches!(c, '@' | '/' | '"' | '&' | '\'' | ':' | '<' | '>')
        })
}

/// `YYYY-MM-DDTHH:MM:SSZ` as seconds since the epoch.
fn iso_to_unix(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso_to_unix("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(iso_to_unix("2026-12-05T06:00:00Z"), Some(1_796_450_400));
        assert_eq!(iso_to_unix("2026-12-05 06:00:00"), None);
    }

    #[test]
    fn room_nodes() {
        assert!(valid_node("physics101"));
        assert!(!valid_node(""));
        assert!(!valid_node("a@b"));
        assert!(!valid_node("a b"));
    }
}
