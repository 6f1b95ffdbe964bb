//! What the engine reports about the conferences it serves: media up or down, speakers,
//! forwarded sources, SSRC maps, sender constraints, bandwidth, expiries. The driver hands
//! them to the bridge task, which turns them into bridge-channel messages
//! (`channel::events`).

use crate::colibri2::MediaType;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// The endpoint's media is flowing: ICE and DTLS are up and it sent something in the last
    /// 8 s (docs/bridge.md B.10). Emitted on every change to active.
    Connected {
        conference: String,
        endpoint: String,
    },
    /// The endpoint's media stopped: ICE lost or failed, nothing received for 8 s, or never
    /// active 15 s after creation. Only after a `Connected`, or once for an endpoint that never
    /// connected.
    Disconnected {
        conference: String,
        endpoint: String,
    },
    /// The conference's recent-speakers list changed (docs/bridge.md B.7): `endpoint` is the
    /// dominant speaker, `previous` the rest of the list (at most 9), most recent first.
    DominantSpeaker {
        conference: String,
        endpoint: String,
        previous: Vec<String>,
        silence: bool,
    },
    /// SSRC rewriting: a receiver's slots of one kind got sources (docs/bridge.md A.3
    /// `VideoSourcesMap` / `AudioSourcesMap`): `changed` the new mappings, `sources` the full
    /// map. Slots are never announced as removed.
    SourcesMap {
        conference: String,
        endpoint: String,
        kind: MediaType,
        sources: Vec<MappedSource>,
        changed: Vec<MappedSource>,
    },
    /// The recent-speakers list became empty (its endpoints left): nothing to send to a newly
    /// connected channel any more.
    SpeakersCleared { conference: String },
    /// The video sources now forwarded to `endpoint` (for the bridge channel's
    /// `ForwardedSources`).
    ForwardedSources {
        conference: String,
        endpoint: String,
        sources: Vec<String>,
    },
    /// The largest height any receiver currently needs of one of `endpoint`'s video sources
    /// (docs/bridge.md A.3 `SenderSourceConstraints`, sent to the sender); 0: nobody wants it.
    /// Emitted when it changes (and first when the source appears).
    SenderSourceConstraints {
        conference: String,
        endpoint: String,
        source: String,
        max_height: u32,
    },
    /// The largest height the receivers of this bridge need of a video source of a relayed
    /// endpoint (docs/bridge.md B.15): for the bridge behind `relay`, which then forwards
    /// the source only while it is wanted (JVB's `AddReceiver`). Emitted when it changes.
    RelayWants {
        conference: String,
        relay: String,
        source: String,
        max_height: u32,
    },
    /// The bandwidth estimate towards `endpoint` (docs/bridge.md A.3 `ConnectionStats`), every
    /// `connection_stats_interval` while one exists (only with `bwe_initial_bps`).
    ConnectionStats {
        conference: String,
        endpoint: String,
        estimated_downlink_bps: u64,
    },
    /// The client opened its bridge channel as an SCTP data channel (docs/bridge.md A.1):
    /// from now on [`MediaEngine::channel_send`](super::MediaEngine::channel_send) reaches it.
    ChannelOpen {
        conference: String,
        endpoint: String,
    },
    /// One text message on the endpoint's data channel.
    ChannelMessage {
        conference: String,
        endpoint: String,
        text: String,
    },
    /// The data channel closed (the endpoint itself may stay).
    ChannelClosed {
        conference: String,
        endpoint: String,
    },
    /// The engine expired the endpoint (never connected, or silent too long; docs/bridge.md B.10)
    /// and removed it. `ufrag` is the local ICE ufrag it was created with, so that a newer
    /// endpoint of the same id is not mistaken for it.
    Expired {
        conference: String,
        endpoint: String,
        ufrag: String,
    },
}

impl EngineEvent {
    /// `Connected` (`active`) or `Disconnected` for one endpoint.
    pub fn connectivity(conference: String, endpoint: String, active: bool) -> EngineEvent {
        if active {
            EngineEvent::Connected {
                conference,
                endpoint,
            }
        } else {
            EngineEvent::Disconnected {
                conference,
                endpoint,
            }
        }
    }
}

/// One entry of `VideoSourcesMap` / `AudioSourcesMap` (docs/bridge.md A.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedSource {
    pub source: String,
    pub owner: String,
    pub ssrc: u32,
    /// Always set for video (the client only understands a real RTX SSRC), `None` for audio.
    pub rtx: Option<u32>,
    pub video_type: String,
}
