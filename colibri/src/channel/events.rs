//! Engine events as bridge-channel messages: what the media engine reports (speakers,
//! forwarded sources, SSRC maps, connectivity, sender constraints, bandwidth) becomes the
//! `colibriClass` JSON the clients read, sent now and, for the classes a reconnecting
//! channel needs, remembered in the hub.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;

use super::ChannelHub;
use crate::colibri2::MediaType;
use crate::driver::Event;
use crate::media::{EngineEvent, MappedSource};
use crate::service::ColibriService;

/// A message the bridge sends on a channel, by its `colibriClass`.
#[derive(Debug, Serialize)]
#[serde(tag = "colibriClass", rename_all_fields = "camelCase")]
pub enum BridgeMessage<'a> {
    SenderSourceConstraints {
        source_name: &'a str,
        max_height: u32,
    },
    ConnectionStats {
        estimated_downlink_bandwidth: u64,
    },
    ForwardedSources {
        forwarded_sources: &'a [String],
    },
    DominantSpeakerEndpointChangeEvent {
        dominant_speaker_endpoint: &'a str,
        previous_speakers: &'a [String],
        silence: bool,
    },
    VideoSourcesMap {
        mapped_sources: Vec<Mapping<'a>>,
    },
    AudioSourcesMap {
        mapped_sources: Vec<Mapping<'a>>,
    },
    EndpointConnectivityStatusChangeEvent {
        endpoint: &'a str,
        /// A string, as JVB sends it.
        active: &'static str,
    },
    /// To another bridge, on a relay's channel: how much of one of its senders' sources
    /// this bridge's receivers want (JVB's relay message; maxHeight 0: none).
    AddReceiver {
        bridge_id: &'a str,
        source_name: &'a str,
        video_constraints: VideoConstraints,
    },
}

/// `videoConstraints` of an `AddReceiver`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VideoConstraints {
    pub max_height: u32,
}

impl BridgeMessage<'_> {
    /// The JSON text.
    pub fn text(&self) -> String {
        // Strings, numbers and lists only: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One SSRC-rewriting slot of a receiver: whose source it carries now.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Mapping<'a> {
    source: &'a str,
    owner: &'a str,
    ssrc: u32,
    /// Video only (the client needs a real RTX SSRC there).
    #[serde(skip_serializing_if = "Option::is_none")]
    rtx: Option<Option<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    video_type: Option<&'a str>,
}

impl<'a> Mapping<'a> {
    fn of(m: &'a MappedSource, kind: MediaType) -> Mapping<'a> {
        let video = kind == MediaType::Video;
        Mapping {
            source: &m.source,
            owner: &m.owner,
            ssrc: m.ssrc,
            rtx: video.then_some(m.rtx),
            video_type: video.then_some(m.video_type.as_str()),
        }
    }
}

/// The conference-level remembered message saying that `ep` is inactive.
pub fn connectivity_key(ep: &str) -> String {
    format!("EndpointConnectivityStatusChangeEvent/{ep}")
}

/// Send `text` to every connected channel of the conference.
fn broadcast(hub: &ChannelHub, conf: &str, text: &str) {
    for ep in hub.connected(conf) {
        hub.send(conf, &ep, text.to_string());
    }
}

/// The bridge task: every event of the engine threads, in order, applied to the channels
/// (and an expired endpoint to `service`), until the engine is gone.
pub async fn run(
    hub: Arc<ChannelHub>,
    service: Option<Arc<ColibriService>>,
    mut events: mpsc::Receiver<Event>,
) {
    while let Some(e) = events.recv().await {
        on_event(&hub, service.as_deref(), e);
    }
}

/// One event of the engine threads.
pub fn on_event(hub: &Arc<ChannelHub>, service: Option<&ColibriService>, e: Event) {
    match e {
        Event::EndpointAdded {
            conference,
            endpoint,
            visitor,
        } => {
            hub.reset_endpoint(&conference, &endpoint);
            hub.set_visitor(&conference, &endpoint, visitor);
        }
        Event::EndpointRemoved {
            conference,
            endpoint,
            conference_gone,
        } => {
            hub.forget_endpoint(&conference, &endpoint);
            hub.set_conference_sticky(&conference, &connectivity_key(&endpoint), None);
            if conference_gone {
                hub.forget_conference(&conference);
            }
        }
        Event::ConferenceRemoved { conference } => hub.forget_conference(&conference),
        Event::Engine(e) => event(hub, service, e),
    }
}

/// One engine event as bridge-channel messages (docs/bridge.md A.3); an expired endpoint also
/// leaves `service`.
pub fn event(hub: &Arc<ChannelHub>, service: Option<&ColibriService>, e: EngineEvent) {
    match e {
        EngineEvent::SenderSourceConstraints {
            conference,
            endpoint,
            source,
            max_height,
        } => {
            let msg = BridgeMessage::SenderSourceConstraints {
                source_name: &source,
                max_height,
            }
            .text();
            hub.set_endpoint_sticky(
                &conference,
                &endpoint,
                &format!("SenderSourceConstraints/{source}"),
                msg.clone(),
            );
            hub.send(&conference, &endpoint, msg);
        }
        EngineEvent::RelayWants {
            conference,
            relay,
            source,
            max_height,
        } => {
            let msg = BridgeMessage::AddReceiver {
                bridge_id: service.map(|s| s.bridge_id()).unwrap_or(""),
                source_name: &source,
                video_constraints: VideoConstraints { max_height },
            }
            .text();
            // Sent again whenever the relay's channel (re)connects.
            hub.set_endpoint_sticky(
                &conference,
                &relay,
                &format!("AddReceiver/{source}"),
                msg.clone(),
            );
            hub.send(&conference, &relay, msg);
        }
        EngineEvent::ConnectionStats {
            conference,
            endpoint,
            estimated_downlink_bps,
        } => {
            let msg = BridgeMessage::ConnectionStats {
                estimated_downlink_bandwidth: estimated_downlink_bps,
            }
            .text();
            hub.send(&conference, &endpoint, msg);
        }
        EngineEvent::ChannelOpen {
            conference,
            endpoint,
        } => hub.sctp_opened(&conference, &endpoint),
        EngineEvent::ChannelMessage {
            conference,
            endpoint,
            text,
        } => hub.sctp_message(&conference, &endpoint, text),
        EngineEvent::ChannelClosed {
            conference,
            endpoint,
        } => hub.sctp_closed(&conference, &endpoint),
        // docs/bridge.md B.10 / docs/colibri2.md §5: the focus learns of it by `unknown-endpoint` on its
        // next request and re-invites. A newer endpoint of the same id (another ufrag) stays.
        EngineEvent::Expired {
            conference,
            endpoint,
            ufrag,
        } => {
            let removed =
                service.is_none_or(|s| s.endpoint_expired(&conference, &endpoint, &ufrag));
            if removed {
                hub.forget_endpoint(&conference, &endpoint);
                hub.set_conference_sticky(&conference, &connectivity_key(&endpoint), None);
            }
        }
        EngineEvent::ForwardedSources {
            conference,
            endpoint,
            sources,
        } => {
            let msg = BridgeMessage::ForwardedSources {
                forwarded_sources: &sources,
            }
            .text();
            hub.set_endpoint_sticky(&conference, &endpoint, "ForwardedSources", msg.clone());
            hub.send(&conference, &endpoint, msg);
        }
        // JVB's connection-status monitor (docs/bridge.md B.10): `active:"false"` to everyone
        // (the endpoint included) when an endpoint's media stops, `"true"` when it resumes
        // after that; endpoints connecting later are told about the inactive ones.
        EngineEvent::Connected {
            conference,
            endpoint,
        } => {
            tracing::debug!(%conference, %endpoint, "media active");
            if hub
                .set_conference_sticky(&conference, &connectivity_key(&endpoint), None)
                .is_some()
            {
                let msg = connectivity_message(&endpoint, true);
                broadcast(hub, &conference, &msg);
            }
        }
        EngineEvent::Disconnected {
            conference,
            endpoint,
        } => {
            tracing::debug!(%conference, %endpoint, "media inactive");
            let msg = connectivity_message(&endpoint, false);
            hub.set_conference_sticky(&conference, &connectivity_key(&endpoint), Some(msg.clone()));
            broadcast(hub, &conference, &msg);
        }
        EngineEvent::DominantSpeaker {
            conference,
            endpoint,
            previous,
            silence,
        } => {
            let msg = BridgeMessage::DominantSpeakerEndpointChangeEvent {
                dominant_speaker_endpoint: &endpoint,
                previous_speakers: &previous,
                silence,
            }
            .text();
            hub.set_conference_sticky(
                &conference,
                "DominantSpeakerEndpointChangeEvent",
                Some(msg.clone()),
            );
            broadcast(hub, &conference, &msg);
        }
        EngineEvent::SourcesMap {
            conference,
            endpoint,
            kind,
            sources,
            changed,
        } => {
            let class = match kind {
                MediaType::Video => "VideoSourcesMap",
                MediaType::Audio => "AudioSourcesMap",
            };
            let map = |list: &[MappedSource]| -> String {
                let mapped_sources = list.iter().map(|m| Mapping::of(m, kind)).collect();
                match kind {
                    MediaType::Video => BridgeMessage::VideoSourcesMap { mapped_sources },
                    MediaType::Audio => BridgeMessage::AudioSourcesMap { mapped_sources },
                }
                .text()
            };
            // Live, what changed (as JVB): lib-jitsi-meet handles a new SSRC by renegotiating,
            // and the same SSRC again before that finished becomes a second remote track. A
            // channel that (re)connects gets the whole map.
            hub.set_endpoint_sticky(&conference, &endpoint, class, map(&sources));
            hub.send(&conference, &endpoint, map(&changed));
        }
        EngineEvent::SpeakersCleared { conference } => {
            hub.set_conference_sticky(&conference, "DominantSpeakerEndpointChangeEvent", None);
        }
    }
}

fn connectivity_message(endpoint: &str, active: bool) -> String {
    BridgeMessage::EndpointConnectivityStatusChangeEvent {
        endpoint,
        active: if active { "true" } else { "false" },
    }
    .text()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(rx: &mut tokio::sync::mpsc::Receiver<String>) -> Vec<serde_json::Value> {
        let mut v = Vec::new();
        while let Ok(t) = rx.try_recv() {
            v.push(serde_json::from_str(&t).unwrap());
        }
        v
    }

    #[test]
    fn engine_events_become_bridge_channel_messages() {
        let hub = ChannelHub::new(16);
        let (mut ra, _) = hub.register("c", "a");
        let (mut rb, _) = hub.register("c", "b");
        let ev = |e| event(&hub, None, e);
        ev(EngineEvent::DominantSpeaker {
            conference: "c".into(),
            endpoint: "b".into(),
            previous: vec!["a".into()],
            silence: false,
        });
        let expect = serde_json::json!({"colibriClass":"DominantSpeakerEndpointChangeEvent",
            "dominantSpeakerEndpoint":"b","previousSpeakers":["a"],"silence":false});
        assert_eq!(drain(&mut ra), std::slice::from_ref(&expect));
        assert_eq!(drain(&mut rb), std::slice::from_ref(&expect));
        // First activity is not announced; inactivity is, to everyone; then recovery.
        let who = |active| EngineEvent::connectivity("c".to_string(), "a".to_string(), active);
        ev(who(true));
        assert!(drain(&mut rb).is_empty());
        ev(who(false));
        let off = serde_json::json!({"colibriClass":"EndpointConnectivityStatusChangeEvent",
            "endpoint":"a","active":"false"});
        assert_eq!(drain(&mut rb), std::slice::from_ref(&off));
        assert_eq!(drain(&mut ra), std::slice::from_ref(&off));
        ev(EngineEvent::ForwardedSources {
            conference: "c".into(),
            endpoint: "d".into(),
            sources: vec!["b-v0".into()],
        });
        // A channel connecting now gets its forwarded sources, the speaker and the inactive.
        let hello: Vec<serde_json::Value> = hub
            .on_connect_messages("c", "d")
            .iter()
            .map(|t| serde_json::from_str(t).unwrap())
            .collect();
        let fwd =
            serde_json::json!({"colibriClass":"ForwardedSources","forwardedSources":["b-v0"]});
        assert_eq!(hello, [fwd, expect.clone(), off]);
        // Not its own inactivity.
        assert_eq!(hub.on_connect_messages("c", "a").len(), 2);
        ev(who(true));
        let on = serde_json::json!({"colibriClass":"EndpointConnectivityStatusChangeEvent",
            "endpoint":"a","active":"true"});
        assert_eq!(drain(&mut rb), [on]);
        ev(EngineEvent::SpeakersCleared {
            conference: "c".into(),
        });
        assert_eq!(
            hub.on_connect_messages("c", "e").len(),
            1,
            "just ForwardedSources []"
        );
    }

    #[test]
    fn sender_constraints_and_connection_stats_messages() {
        let hub = ChannelHub::new(16);
        let (mut ra, _) = hub.register("c", "a");
        let sc = |source: &str, h| EngineEvent::SenderSourceConstraints {
            conference: "c".into(),
            endpoint: "a".into(),
            source: source.into(),
            max_height: h,
        };
        event(&hub, None, sc("a-v0", 180));
        event(&hub, None, sc("a-v1", 0));
        event(&hub, None, sc("a-v0", 720));
        event(
            &hub,
            None,
            EngineEvent::ConnectionStats {
                conference: "c".into(),
                endpoint: "a".into(),
                estimated_downlink_bps: 2_480_000,
            },
        );
        let msg = |s: &str, h: u32| serde_json::json!({"colibriClass":"SenderSourceConstraints","sourceName":s,"maxHeight":h});
        assert_eq!(
            drain(&mut ra),
            [
                msg("a-v0", 180),
                msg("a-v1", 0),
                msg("a-v0", 720),
                serde_json::json!({"colibriClass":"ConnectionStats","estimatedDownlinkBandwidth":2_480_000})
            ]
        );
        // On (re)connect: the current value of every source, after ForwardedSources.
        let hello: Vec<serde_json::Value> = hub
            .on_connect_messages("c", "a")
            .iter()
            .map(|t| serde_json::from_str(t).unwrap())
            .collect();
        assert_eq!(hello[1..], [msg("a-v0", 720), msg("a-v1", 0)]);
        assert_eq!(hello[0]["colibriClass"], "ForwardedSources");
        assert_eq!(
            hub.on_connect_messages("c", "b").len(),
            1,
            "others' are not sent"
        );
    }

    fn service() -> Arc<ColibriService> {
        ColibriService::new(crate::service::test_config(10))
    }

    /// Create endpoint `id` (and the conference): its bridge conference id and ICE ufrag.
    fn create(s: &ColibriService, id: &str, conf: bool) -> (String, String) {
        use crate::colibri2::{ConferenceModify, Endpoint, Sctp, Transport};
        let mut m = ConferenceModify::new("m1");
        m.create = conf;
        let mut e = Endpoint::new(id);
        e.create = true;
        e.capabilities.push("source-names".into());
        e.transport = Some(Transport {
            sctp: Some(Sctp::default()),
            ..Transport::default()
        });
        m.endpoints.push(e);
        let r = s.handle(&m).unwrap();
        let ice = r.endpoints[0].transport.clone().unwrap().ice.unwrap();
        let url = ice.web_sockets[0].url.clone().unwrap();
        let conf_id = url.split('/').nth_back(1).unwrap().to_string();
        (conf_id, ice.ufrag.unwrap())
    }

    #[test]
    fn an_expired_endpoint_leaves_the_service_and_its_channel_closes() {
        use crate::colibri2::{ConferenceModify, Endpoint};
        let svc = service();
        let hub = ChannelHub::new(16);
        let (conf, ufrag) = create(&svc, "aaaa", true);
        let (_, ufrag_b) = create(&svc, "bbbb", false);
        let (mut ra, _) = hub.register(&conf, "aaaa");
        let (mut rb, _) = hub.register(&conf, "bbbb");
        let expired = |ep: &str, ufrag: &str| EngineEvent::Expired {
            conference: conf.clone(),
            endpoint: ep.into(),
            ufrag: ufrag.into(),
        };
        event(
            &hub,
            None,
            EngineEvent::Disconnected {
                conference: conf.clone(),
                endpoint: "aaaa".into(),
            },
        );
        drain(&mut ra);
        drain(&mut rb);
        // Another generation of "aaaa" (other ufrag): kept.
        event(&hub, Some(&svc), expired("aaaa", &ufrag_b));
        assert_eq!(svc.endpoint_count(), 2);
        assert!(
            ra.try_recv()
                .is_err_and(|e| e == mpsc::error::TryRecvError::Empty)
        );
        event(&hub, Some(&svc), expired("aaaa", &ufrag));
        assert_eq!(svc.endpoint_count(), 1);
        assert!(svc.endpoint("m1", "aaaa").is_none());
        assert_eq!(
            ra.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected),
            "channel closed"
        );
        assert_eq!(hub.connected(&conf), ["bbbb"]);
        // Its inactivity is no longer told to channels connecting later.
        assert_eq!(hub.on_connect_messages(&conf, "cccc").len(), 1);
        // The focus's next update about it: unknown-endpoint (it re-invites on that).
        let mut m = ConferenceModify::new("m1");
        m.endpoints.push(Endpoint::new("aaaa"));
        assert!(matches!(
            svc.handle(&m),
            Err(crate::Colibri2Error::UnknownEndpoint { .. })
        ));
        // It can be created again.
        create(&svc, "aaaa", false);
        assert_eq!(svc.endpoint_count(), 2);
    }
}
