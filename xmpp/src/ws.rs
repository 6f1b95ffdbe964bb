//! XMPP over WebSocket (RFC 7395): one element per text frame.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;

use crate::link::{Link, LinkEvent, Out, TransportKind, escape, features_xml, stream_error_xml};
use crate::ns;
use crate::server::{BoxFuture, Server};
use crate::session::{self, ConnInfo, QueryParams};
use crate::xml::{self, StreamHeader, XmlLimits};

pub struct WsLink {
    socket: WebSocket,
    secure: bool,
    limits: XmlLimits,
    closed: bool,
}

impl WsLink {
    fn frame(&self, data: &[u8]) -> LinkEvent {
        let el = match xml::parse_document(data, &self.limits) {
            Ok(e) => e,
            Err(e) => return LinkEvent::Error(e),
        };
        if el.ns() == ns::FRAMING {
            return match el.name() {
                "open" => LinkEvent::Open(StreamHeader {
                    to: el.attr("to").map(str::to_string),
                    from: el.attr("from").map(str::to_string),
                    version: el.attr("version").map(str::to_string),
                    lang: None,
                    default_ns: Some(ns::CLIENT.to_string()),
                }),
                "close" => LinkEvent::Close,
                _ => LinkEvent::Error(xml::XmlError::NotWellFormed(format!(
                    "unknown framing element {}",
                    el.name()
                ))),
            };
        }
        LinkEvent::Element(el)
    }
}

impl Link for WsLink {
    fn recv(&mut self) -> BoxFuture<'_, LinkEvent> {
        Box::pin(async move {
            loop {
                if self.closed {
                    return std::future::pending().await;
                }
                match self.socket.recv().await {
                    Some(Ok(Message::Text(t))) => return self.frame(t.as_bytes()),
                    Some(Ok(Message::Binary(_))) => {
                        return LinkEvent::Error(xml::XmlError::NotWellFormed(
                            "binary frame".into(),
                        ));
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        self.closed = true;
                        return LinkEvent::Gone;
                    }
                }
            }
        })
    }

    fn send<'a>(&'a mut self, items: &'a [Out]) -> BoxFuture<'a, Result<(), ()>> {
        Box::pin(async move {
            if self.closed {
                return Err(());
            }
            let mut close = false;
            for o in items {
                let text = match o {
                    Out::Open { id, from } => format!(
                        "<open xmlns='{}' id='{}' from='{}' version='1.0' xml:lang='en'/>",
                        ns::FRAMING,
                        escape(id),
                        escape(from)
                    ),
                    Out::Features(f) => features_xml(f),
                    Out::Element(e) => xml::to_string(e),
                    Out::StartTls | Out::Reset => continue,
                    Out::StreamError { condition, text } => {
                        close = true;
                        stream_error_xml(condition, text.as_deref())
                    }
                    Out::Close => {
                        close = true;
                        format!("<close xmlns='{}'/>", ns::FRAMING)
                    }
                };
                if self.socket.feed(Message::Text(text.into())).await.is_err() {
                    self.closed = true;
                    return Err(());
                }
                if close {
                    break;
                }
            }
            if close {
                if !matches!(items.last(), Some(Out::Close)) {
                    let _ = self
                        .socket
                        .feed(Message::Text(
                            format!("<close xmlns='{}'/>", ns::FRAMING).into(),
                        ))
                        .await;
                }
                let _ = self.socket.flush().await;
                let _ = self.socket.send(Message::Close(None)).await;
                self.closed = true;
                return Ok(());
            }
            self.socket.flush().await.map_err(|_| {
                self.closed = true;
            })
        })
    }

    fn kind(&self) -> TransportKind {
        TransportKind::WebSocket
    }

    fn secure(&self) -> bool {
        self.secure
    }
}

/// Answer a WebSocket upgrade on `/xmpp-websocket`.
pub fn upgrade(
    server: Arc<Server>,
    ws: WebSocketUpgrade,
    peer: IpAddr,
    query: Option<&str>,
    secure: bool,
) -> Response {
    let Some(slot) = server.admit(peer) else {
        tracing::warn!(%peer, "too many sessions, refusing WebSocket");
        return (StatusCode::TOO_MANY_REQUESTS, "too many sessions\n").into_response();
    };
    let limits = server.xml_limits();
    let query = QueryParams::from_query(query);
    let resume_username = query
        .previd
        .as_deref()
        .and_then(|p| {
            server
                .resumable(p)
                .map(|(full, _)| full)
                .or_else(|| server.adoptable(p, false).map(|r| r.jid))
        })
        .and_then(|full| full.split_once('@').map(|(u, _)| u.to_string()));
    let info = ConnInfo {
        kind: TransportKind::WebSocket,
        secure: secure || server.config.consider_http_secure,
        tls_available: false,
        ip: peer,
        query,
        resume_username,
    };
    // Frames above the stanza limit still arrive whole (up to twice the limit) so that we can
    // answer them with a policy-violation stream error instead of a bare disconnect.
    let max = limits.max_stanza_bytes.saturating_mul(2).max(64 * 1024);
    ws.protocols(["xmpp"])
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            let link = WsLink {
                socket,
                secure: info.secure,
                limits,
                closed: false,
            };
            session::run(server, Box::new(link), info, slot).await;
        })
}
