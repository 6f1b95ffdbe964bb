//! The bridge channel over SCTP (docs/bridge.md A.1): when the offer has a `data` content the
//! client connects an SCTP association inside the DTLS session and opens one data channel
//! (label "JVB data channel"); the bridge listens. Text messages on it are the same JSON as
//! on the WebSocket. The engine only carries them: it reports the channel opening, each
//! message and the close as [`EngineEvent`]s, and writes what [`MediaEngine::channel_send`]
//! is given. The bridge task does the rest (`channel::sctp`).

use str0m::channel::{ChannelData, ChannelId};

use super::*;

/// The largest bridge-channel message taken or sent (the WebSocket's limit too).
pub const MAX_CHANNEL_MESSAGE: usize = 64 * 1024;

impl MediaEngine {
    pub(super) fn channel_opened(&mut self, id: EpId, channel: ChannelId, label: &str) {
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        if let Some(old) = ep.transport.channel.replace(channel)
            && old != channel
        {
            tracing::debug!(conference = %ep.conference, endpoint = %ep.id, "second data channel replaces the first");
        }
        tracing::debug!(conference = %ep.conference, endpoint = %ep.id, label, "bridge channel open (SCTP)");
        let ev = EngineEvent::ChannelOpen {
            conference: ep.conference.clone(),
            endpoint: ep.id.clone(),
        };
        self.out.push_back(EngineOutput::Event(ev));
    }

    pub(super) fn channel_data(&mut self, id: EpId, d: ChannelData) {
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        if ep.transport.channel != Some(d.id) || d.binary || d.data.len() > MAX_CHANNEL_MESSAGE {
            tracing::debug!(conference = %ep.conference, endpoint = %ep.id, binary = d.binary, len = d.data.len(), "data channel message ignored");
            self.stats.channel_messages_dropped += 1;
            return;
        }
        let Ok(text) = String::from_utf8(d.data) else {
            tracing::debug!(conference = %ep.conference, endpoint = %ep.id, "data channel message is not UTF-8");
            self.stats.channel_messages_dropped += 1;
            return;
        };
        self.stats.channel_messages_in += 1;
        let ev = EngineEvent::ChannelMessage {
            conference: ep.conference.clone(),
            endpoint: ep.id.clone(),
            text,
        };
        self.out.push_back(EngineOutput::Event(ev));
    }

    pub(super) fn channel_closed(&mut self, id: EpId, channel: ChannelId) {
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        if ep.transport.channel != Some(channel) {
            return;
        }
        ep.transport.channel = None;
        let ev = EngineEvent::ChannelClosed {
            conference: ep.conference.clone(),
            endpoint: ep.id.clone(),
        };
        self.out.push_back(EngineOutput::Event(ev));
    }

    /// Write one bridge-channel message on the endpoint's data channel. False (counted) when
    /// the endpoint has no open channel, the message is too large, or SCTP's send buffer is
    /// full (str0m buffers 128 KiB per association).
    pub fn channel_send(&mut self, endpoint: (&str, &str), text: &str) -> bool {
        let Some(id) = self.id_of(endpoint) else {
            return false;
        };
        let sent = match self.endpoints.get_mut(&id) {
            Some(ep) if text.len() <= MAX_CHANNEL_MESSAGE => match ep.transport.channel {
                Some(c) => ep
                    .transport
                    .rtc
                    .channel(c)
                    .is_some_and(|mut ch| matches!(ch.write(false, text.as_bytes()), Ok(true))),
                None => false,
            },
            _ => false,
        };
        if sent {
            self.stats.channel_messages_out += 1;
            self.mark_dirty(id);
        } else {
            tracing::debug!(
                conference = endpoint.0,
                endpoint = endpoint.1,
                "data channel message not sent"
            );
            self.stats.channel_messages_dropped += 1;
        }
        sent
    }
}
