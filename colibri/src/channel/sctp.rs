//! The bridge channel over an SCTP data channel (docs/bridge.md A.1). The media engine
//! carries the bytes (`media::datachannel`) and reports the channel opening, each message and
//! the close as events; here each open channel gets a task that serves it exactly as a
//! WebSocket is served ([`super::drive`]): messages from the client arrive through a bounded
//! queue fed by the bridge task, messages to it leave as [`Command::ChannelSend`].

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{ChannelHub, Link};
use crate::driver::{Command, EngineHandle};

struct SctpLink {
    incoming: mpsc::Receiver<String>,
    engine: EngineHandle,
    conf: String,
    ep: String,
}

impl Link for SctpLink {
    async fn recv(&mut self) -> Option<String> {
        self.incoming.recv().await
    }

    async fn send(&mut self, text: String) -> bool {
        // A busy engine drops this message (logged by `send_hint`); the channel stays.
        let _ = self
            .engine
            .send_hint(Command::ChannelSend {
                conf: self.conf.clone(),
                ep: self.ep.clone(),
                text,
            })
            .await;
        true
    }

    async fn close(&mut self) {}
}

impl ChannelHub {
    /// The engine reports that `ep` opened its data channel: serve it (replacing a WebSocket
    /// or an earlier data channel of the endpoint).
    pub fn sctp_opened(self: &Arc<Self>, conf: &str, ep: &str) {
        let Some(engine) = self.engine.lock().clone() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(%conf, %ep, "no runtime for the SCTP bridge channel");
            return;
        };
        let (tx, incoming) = mpsc::channel(self.queue);
        self.sctp_in
            .lock()
            .insert((conf.to_string(), ep.to_string()), tx);
        let link = SctpLink {
            incoming,
            engine,
            conf: conf.to_string(),
            ep: ep.to_string(),
        };
        rt.spawn(super::drive(
            self.clone(),
            link,
            conf.to_string(),
            ep.to_string(),
            "sctp",
        ));
    }

    /// One message the engine received on `ep`'s data channel, for its task. Dropped with a
    /// log line when the task is `queue` messages behind.
    pub fn sctp_message(&self, conf: &str, ep: &str, text: String) {
        let tx = self
            .sctp_in
            .lock()
            .get(&(conf.to_string(), ep.to_string()))
            .cloned();
        match tx {
            Some(tx) => {
                if tx.try_send(text).is_err() {
                    tracing::warn!(%conf, %ep, "SCTP bridge channel inbound queue full; message dropped");
                }
            }
            None => tracing::debug!(%conf, %ep, "message on an unknown SCTP bridge channel"),
        }
    }

    /// The data channel closed: its task ends.
    pub fn sctp_closed(&self, conf: &str, ep: &str) {
        self.sctp_in
            .lock()
            .remove(&(conf.to_string(), ep.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn next(rx: &mut mpsc::Receiver<Command>) -> Command {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a command in time")
            .expect("queue open")
    }

    /// A data channel is served as a WebSocket is: ServerHello and the state first, the
    /// client's messages applied, relays from others sent, and the close ends it.
    #[tokio::test]
    async fn a_data_channel_is_served_like_a_websocket() {
        let hub = ChannelHub::new(8);
        let (engine, mut rxs, _) = EngineHandle::detached(1, 64);
        hub.set_engine(engine);
        let rx = &mut rxs[0];
        hub.sctp_opened("c", "a");
        let mut sent = Vec::new();
        for _ in 0..2 {
            match next(rx).await {
                Command::ChannelSend { conf, ep, text } => {
                    assert_eq!((conf.as_str(), ep.as_str()), ("c", "a"));
                    sent.push(text);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(sent[0].contains("ServerHello"));
        assert!(sent[1].contains("ForwardedSources"));
        assert_eq!(hub.connected("c"), ["a"]);
        hub.sctp_message(
            "c",
            "a",
            r#"{"colibriClass":"ReceiverVideoConstraints","lastN":2}"#.into(),
        );
        match next(rx).await {
            Command::Constraints {
                ep, constraints, ..
            } => {
                assert_eq!(ep, "a");
                assert_eq!(constraints.last_n, Some(2));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(hub.send("c", "a", "relayed".into()));
        assert!(matches!(next(rx).await, Command::ChannelSend { text, .. } if text == "relayed"));
        hub.sctp_closed("c", "a");
        for _ in 0..100 {
            if hub.connected("c").is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(hub.connected("c").is_empty(), "the channel's task ended");
        // Messages for a closed channel go nowhere (and do not panic).
        hub.sctp_message("c", "a", "{}".into());
    }
}
