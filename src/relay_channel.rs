//! The dialing side of a relay's channel (docs/bridge.md B.15): the ICE-controlling bridge
//! of a relay connects to the other bridge's `/colibri-relay-ws/…` URL, and both carry their
//! participants' endpoint messages and endpoint stats over it. Redialed while the relay
//! exists, a few times, with growing pauses.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use meetd_colibri::channel::{ChannelHub, Link, drive_relay};
use meetd_colibri::service::{ColibriService, RelayDialer};
use tokio_tungstenite::tungstenite::Message;

/// Tries per relay before it goes without a channel (its media is not affected).
const ATTEMPTS: u32 = 6;
/// Longest pause between tries.
const MAX_PAUSE: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message accepted from the other bridge.
const MAX_MESSAGE: usize = 64 * 1024;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Dialed(Ws);

impl Link for Dialed {
    async fn recv(&mut self) -> Option<String> {
        loop {
            match self.0.next().await {
                Some(Ok(Message::Text(t))) if t.len() <= MAX_MESSAGE => {
                    return Some(t.as_str().to_string());
                }
                Some(Ok(Message::Text(_))) => {
                    tracing::warn!(
                        "relay channel: message over 64 KiB from the other bridge; closing"
                    );
                    return None;
                }
                Some(Ok(
                    Message::Ping(_) | Message::Pong(_) | Message::Binary(_) | Message::Frame(_),
                )) => {}
                _ => return None,
            }
        }
    }

    async fn send(&mut self, text: String) -> bool {
        self.0.send(Message::Text(text.into())).await.is_ok()
    }

    async fn close(&mut self) {
        let _ = self.0.send(Message::Close(None)).await;
    }
}

/// The dialer the Colibri2 service calls when a relay it controls learns the other side's
/// URL.
pub fn dialer(hub: Arc<ChannelHub>, service: std::sync::Weak<ColibriService>) -> RelayDialer {
    Arc::new(move |conf: String, relay: String, url: String| {
        let (hub, service) = (hub.clone(), service.clone());
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(250);
            for attempt in 1..=ATTEMPTS {
                let alive = service
                    .upgrade()
                    .is_some_and(|s| s.has_relay(&conf, &relay));
                if !alive {
                    return;
                }
                match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(&url))
                    .await
                {
                    Ok(Ok((ws, _))) => {
                        tracing::info!(%conf, %relay, "relay channel: connected to the other bridge");
                        drive_relay(hub.clone(), Dialed(ws), conf.clone(), relay.clone()).await;
                        pause = Duration::from_millis(250);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%conf, %relay, attempt, error = %e, "relay channel: cannot connect");
                    }
                    Err(_) => {
                        tracing::warn!(%conf, %relay, attempt, "relay channel: connect timed out");
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        });
    })
}
