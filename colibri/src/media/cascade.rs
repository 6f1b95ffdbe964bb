//! Relays between bridges (docs/bridge.md B.15): a conference that spans bridges has, on each
//! of them, one relay per other bridge, and the other bridges' participants as relayed
//! endpoints.
//!
//! A relay is an endpoint of the engine with its own str0m `Rtc` doing full ICE (the role
//! the focus gave it) and DTLS (the ICE-controlling side is the DTLS client). Every packet a
//! local participant sends goes to every relay that wants it as it came in: the sender's
//! SSRCs, sequence numbers and timestamps, the header extensions the engine knows; the other
//! bridge chooses per receiver, as it does for its own senders, and says how much of each
//! video source it needs (`AddReceiver`, [`MediaEngine::set_relay_wants`]). What
//! arrives on a relay belongs to the relayed endpoint whose sources carry its SSRC, and from
//! there it is forwarded to the local participants only (never back to a relay: the bridges
//! of a conference form a full mesh). Keyframe requests for a relayed source go out on its
//! relay; those that arrive on a relay go to the local sender. The speech detector hears the
//! relayed audio too, so every bridge names the same dominant speaker.

use super::endpoint::Link;
use super::*;

/// The ICE username fragment of a relayed endpoint: never one a peer can use (a relayed
/// endpoint has no transport of its own, and its password is drawn at random).
fn relayed_ufrag(relay: EpId, endpoint: &str) -> String {
    format!("~relayed~{relay}~{endpoint}")
}

impl MediaEngine {
    /// A relay to another bridge of `conference`, named by that bridge's relay id, with the
    /// ICE credentials the Colibri2 service handed out. `ice_controlling`: this side checks
    /// and nominates, and is the DTLS client. `medias`: the payload types and header
    /// extensions of the relay link (the focus's offer). The remote side's transport comes
    /// with [`MediaEngine::set_remote_transport`].
    /// `port`: the relay's own UDP port (its only host candidates are the bridge's addresses
    /// with that port), or `None` for the media port.
    #[allow(clippy::too_many_arguments)]
    pub fn add_relay(
        &mut self,
        conference: &str,
        relay: &str,
        ufrag: &str,
        pwd: &str,
        ice_controlling: bool,
        medias: &[colibri2::Media],
        port: Option<u16>,
        now: Instant,
    ) {
        let own = port.map(|p| {
            self.cfg
                .local_addrs
                .iter()
                .map(|a| SocketAddr::new(a.ip(), p))
                .collect::<Vec<_>>()
        });
        let Some(id) = self.insert_endpoint(
            NewEndpoint {
                conference,
                endpoint: relay,
                ufrag,
                pwd,
                ssrc_rewriting: false,
                sctp: false,
                medias,
                link: Link::Relay {
                    owners: FastMap::default(),
                },
                ice_controlling,
                local_addrs: own,
            },
            now,
        ) else {
            return;
        };
        if let Some(p) = port {
            self.relay_ports.insert(p, id);
        }
        if let Some(ep) = self.endpoints.get_mut(&id) {
            // The other bridge chooses for its receivers: every source, every layer.
            ep.tx.constraints = ReceiverConstraints {
                last_n: Some(-1),
                default_max_height: Some(-1),
                ..ReceiverConstraints::default()
            };
        }
        self.allocate(id);
        tracing::debug!(conference, relay, ice_controlling, "relay added");
    }

    /// A participant of the bridge at the other end of `relay`, or new sources of one
    /// (`None`: unchanged). Refused (logged) for a name a local participant has.
    pub fn set_relayed_endpoint(
        &mut self,
        conference: &str,
        relay: &str,
        endpoint: &str,
        sources: Option<&colibri2::Sources>,
        now: Instant,
    ) {
        let Some(rid) = self.id_of((conference, relay)) else {
            tracing::warn!(conference, relay, "relayed endpoint for an unknown relay");
            return;
        };
        let medias = match self.endpoints.get(&rid) {
            Some(r) if matches!(r.link, Link::Relay { .. }) => r.medias.clone().unwrap_or_default(),
            _ => return,
        };
        match self
            .id_of((conference, endpoint))
            .and_then(|id| self.endpoints.get(&id))
        {
            Some(e) if !matches!(e.link, Link::Relayed { relay } if relay == rid) => {
                tracing::warn!(
                    conference,
                    relay,
                    endpoint,
                    "a relayed endpoint may not take a local endpoint's name"
                );
                return;
            }
            Some(_) => {}
            None => {
                let ufrag = relayed_ufrag(rid, endpoint);
                let pwd = format!("{:032x}", self.rng.random::<u128>());
                let Some(id) = self.insert_endpoint(
                    NewEndpoint {
                        conference,
                        endpoint,
                        ufrag: &ufrag,
                        pwd: &pwd,
                        ssrc_rewriting: false,
                        sctp: false,
                        medias: &medias,
                        link: Link::Relayed { relay: rid },
                        ice_controlling: false,
                        local_addrs: None,
                    },
                    now,
                ) else {
                    return;
                };
                tracing::debug!(conference, relay, endpoint, "relayed endpoint added");
                let _ = id;
            }
        }
        if let Some(s) = sources {
            self.set_sources((conference, endpoint), s);
        }
        self.index_relay(rid);
    }

    /// The relay's SSRC → relayed endpoint map, after its endpoints or their sources changed.
    pub(super) fn index_relay(&mut self, rid: EpId) {
        let mut owners: FastMap<u32, EpId> = FastMap::default();
        for (id, e) in &self.endpoints {
            if matches!(e.link, Link::Relayed { relay } if relay == rid) {
                for ssrc in
                    e.rx.ssrc_index
                        .keys()
                        .chain(e.rx.rtx_index.keys())
                        .chain(e.rx.other_ssrcs.iter())
                {
                    owners.insert(*ssrc, *id);
                }
            }
        }
        if let Some(Endpoint {
            link: Link::Relay { owners: o },
            ..
        }) = self.endpoints.get_mut(&rid)
        {
            *o = owners;
        }
    }

    /// The bridge behind relay `relay` wants `source` (a local sender's) at most `max_height`
    /// high (its `AddReceiver`; 0: not at all): the relay forwards it only while wanted, and
    /// the sender hears of it in its `SenderSourceConstraints`. A source wanted again gets a
    /// keyframe request, so the other bridge's receivers need not wait for one.
    pub fn set_relay_wants(&mut self, relay: (&str, &str), source: &str, max_height: u32) {
        let Some(rid) = self.id_of(relay) else {
            return;
        };
        // Only a source of a participant here (a stale or made-up name is not kept).
        let sender = self.conferences.get(relay.0).and_then(|c| {
            c.members.iter().find_map(|id| {
                let e = self.endpoints.get(id)?;
                (matches!(e.link, Link::Client) && e.rx.sources.iter().any(|s| s.name == source))
                    .then_some(*id)
            })
        });
        let Some(sender) = sender else {
            tracing::debug!(
                conference = relay.0,
                relay = relay.1,
                source,
                "wants for an unknown source ignored"
            );
            return;
        };
        let h = i64::from(max_height.min(i32::MAX as u32));
        let h = if max_height == u32::MAX { -1 } else { h };
        let before = match self.endpoints.get_mut(&rid) {
            Some(r) if matches!(r.link, Link::Relay { .. }) => {
                r.tx.constraints.constraints.insert(source.to_string(), h)
            }
            _ => return,
        };
        if before == Some(h) {
            return;
        }
        tracing::debug!(
            conference = relay.0,
            relay = relay.1,
            source,
            max_height = h,
            "the other bridge's wants"
        );
        self.allocate(rid);
        if before == Some(0) && h != 0 {
            self.request_keyframe(sender, source, 0);
        }
    }

    /// The relay with its own port `port`, if any.
    pub(super) fn relay_on_port(&self, port: u16) -> Option<EpId> {
        if self.relay_ports.is_empty() {
            return None;
        }
        self.relay_ports.get(&port).copied()
    }

    /// The endpoints whose media arrives through relay `rid`.
    pub(super) fn relayed_by(&self, rid: EpId) -> Vec<String> {
        self.endpoints
            .values()
            .filter(|e| matches!(e.link, Link::Relayed { relay } if relay == rid))
            .map(|e| e.id.clone())
            .collect()
    }

    /// The endpoint whose transport carries `id`'s packets: its relay for a relayed one.
    pub(super) fn transport_of(&self, id: EpId) -> EpId {
        match self.endpoints.get(&id).map(|e| &e.link) {
            Some(Link::Relayed { relay }) => *relay,
            _ => id,
        }
    }

    /// A keyframe request that arrived on relay `rid` for `ssrc`: for the local sender of that
    /// stream.
    pub(super) fn relay_wants_keyframe(&mut self, rid: EpId, ssrc: u32) {
        let Some(conf) = self.endpoints.get(&rid).map(|r| r.conference.clone()) else {
            return;
        };
        let found = self.conferences.get(&conf).and_then(|c| {
            c.members.iter().find_map(|id| {
                let e = self.endpoints.get(id)?;
                if !matches!(e.link, Link::Client) {
                    return None;
                }
                let &(si, li) = e.rx.ssrc_index.get(&ssrc)?;
                Some((*id, e.rx.sources.get(si)?.name.clone(), li))
            })
        });
        if let Some((sender, name, layer)) = found {
            self.request_keyframe(sender, &name, layer);
        }
    }
}

impl MediaEngine {
    /// NACKed packets of a local sender that the bridge behind relay `rid` lost: resent from
    /// the sender's cache over the relay as they first went (same SSRC and numbering; the
    /// other bridge takes a packet it was missing as a late one).
    pub(super) fn resend_to_relay(&mut self, rid: EpId, ssrc: u32, seqs: &[u16]) {
        let Some(conf) = self.endpoints.get(&rid).map(|r| r.conference.clone()) else {
            return;
        };
        let mut packets = Vec::new();
        if let Some(c) = self.conferences.get(&conf) {
            for id in &c.members {
                let Some(e) = self.endpoints.get(id) else {
                    continue;
                };
                if !matches!(e.link, Link::Client) {
                    continue;
                }
                let Some(&(si, li)) = e.rx.ssrc_index.get(&ssrc) else {
                    continue;
                };
                let Some(layer) = e.rx.sources.get(si).and_then(|s| s.layers.get(li)) else {
                    break;
                };
                let Some(max) = layer.rx.max() else {
                    break;
                };
                packets.extend(
                    seqs.iter()
                        .filter_map(|&s| layer.cache.get(crate::rtp::extend_seq(max, s)).cloned()),
                );
                break;
            }
        }
        let Some(r) = self.endpoints.get_mut(&rid) else {
            return;
        };
        for p in packets {
            send_to_relay(
                r,
                ssrc,
                p.seq,
                p.ts,
                p.pt,
                p.marker,
                &p.payload,
                &p.ext,
                &mut self.bufs,
                &mut self.out,
                &mut self.stats,
            );
            self.stats.retransmissions += 1;
        }
    }
}

/// One packet of a local sender to relay `r`, as it came: the sender's SSRC and numbering,
/// our header with the relay's extension ids, the relay's SRTP.
#[allow(clippy::too_many_arguments)]
pub(super) fn send_to_relay(
    r: &mut Endpoint,
    ssrc: u32,
    seq: u64,
    ts: u32,
    pt: u8,
    marker: bool,
    payload: &[u8],
    ext: &ExtOut,
    bufs: &mut SendBufs,
    queue: &mut VecDeque<EngineOutput>,
    stats: &mut EngineStats,
) {
    if r.transport.srtp.is_none() {
        r.transport.srtp = r.caps.keys.get().and_then(Srtp::new);
    }
    let (Some(srtp), Some(path)) = (r.transport.srtp.as_mut(), r.transport.send_path) else {
        return;
    };
    bufs.hdr.clear();
    write_header(
        &mut bufs.hdr,
        &RtpOut {
            pt,
            marker,
            seq: seq as u16,
            ts,
            ssrc,
        },
        &r.caps.ext_ids,
        ext,
        None,
    );
    let mut data = bufs.pool.take();
    if srtp
        .protect_rtp(&bufs.hdr, payload, ssrc, seq, &mut data)
        .is_err()
    {
        stats.rtc_errors += 1;
        return;
    }
    stats.rtp_forwarded += 1;
    queue_transmit(queue, stats, path, data);
}
