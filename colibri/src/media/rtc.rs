//! Each endpoint's str0m `Rtc`: draining its outputs (DTLS and ICE datagrams, RTP when the
//! fast path is off) and its events (ICE and DTLS state, keyframe requests, bandwidth).

use super::*;

impl MediaEngine {
    /// Poll one endpoint's `Rtc` until it wants a timeout.
    pub(super) fn drain(&mut self, id: EpId) {
        self.drain_inner(id, false);
    }

    /// Poll one endpoint's `Rtc` until it hands over a received RTP packet (then leave the
    /// endpoint for the next full drain) or wants a timeout.
    pub(super) fn drain_until_packet(&mut self, id: EpId) {
        self.drain_inner(id, true);
    }

    pub(super) fn drain_inner(&mut self, id: EpId, stop_after_packet: bool) {
        loop {
            let Some(ep) = self.endpoints.get_mut(&id) else {
                return;
            };
            ep.dirty = false;
            if ep.transport.failed {
                return;
            }
            let polled = ep.transport.rtc.poll_output();
            match polled {
                Ok(Output::Timeout(t)) => {
                    ep.transport.next_timeout = t;
                    if let Some(d) = self.ep_deadline {
                        self.ep_deadline = Some(d.min(t));
                    }
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    // Responses to our own checks come from where we sent them.
                    if let std::collections::hash_map::Entry::Vacant(v) =
                        self.by_addr.entry(t.destination)
                    {
                        v.insert(id);
                        ep.transport.addrs.push(t.destination);
                    }
                    // DTLS and RTCP (not STUN checks) go over the selected pair.
                    let path = Path {
                        from: t.source,
                        to: t.destination,
                        proto: t.proto,
                    };
                    if t.contents.first().is_some_and(|b| *b >= 20) {
                        ep.transport.send_path = Some(path);
                    }
                    let mut data = self.bufs.pool.take();
                    data.clear();
                    data.extend_from_slice(&t.contents);
                    queue_transmit(&mut self.out, &mut self.stats, path, data);
                }
                Ok(Output::Event(e)) => {
                    let packet = matches!(e, Event::RtpPacket(_));
                    self.on_event(id, e);
                    if packet && stop_after_packet {
                        self.mark_dirty(id);
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, conference = %ep.conference, endpoint = %ep.id, "endpoint failed");
                    self.stats.rtc_errors += 1;
                    if !ep.transport.rtc.is_alive() {
                        if !ep.transport.failed {
                            self.stats.ice_failed += 1;
                        }
                        ep.transport.failed = true;
                        self.update_status(id);
                    }
                    return;
                }
            }
        }
    }

    pub(super) fn on_event(&mut self, id: EpId, e: Event) {
        match e {
            Event::Connected => {
                let Some(ep) = self.endpoints.get_mut(&id) else {
                    return;
                };
                ep.transport.connected = true;
                if !ep.transport.connected_once {
                    let ms = self
                        .now
                        .map(|n| n.saturating_duration_since(ep.created).as_millis() as u64)
                        .unwrap_or(0);
                    self.stats.record_connect(ms);
                    match ep.transport.send_path.map(|p| p.proto) {
                        Some(str0m::net::Protocol::Udp) | None => self.stats.connected_udp += 1,
                        Some(_) => self.stats.connected_tcp += 1,
                    }
                }
                ep.transport.connected_once = true;
                if ep.caps.fast_egress && ep.transport.srtp.is_none() {
                    ep.transport.srtp = ep.caps.keys.get().and_then(Srtp::new);
                    if ep.transport.srtp.is_none() {
                        tracing::debug!(conference = %ep.conference, endpoint = %ep.id, "SRTP keys not known yet");
                    }
                }
                self.update_status(id);
            }
            Event::EgressBitrateEstimate(
                BweKind::Twcc { estimate, .. } | BweKind::Remb { estimate, .. },
            ) => {
                if let Some(ep) = self.endpoints.get_mut(&id) {
                    ep.tx.bwe_bps = Some(estimate.as_u64());
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                let Some(ep) = self.endpoints.get_mut(&id) else {
                    return;
                };
                ep.transport.connected = false;
                self.update_status(id);
            }
            Event::IceConnectionStateChange(IceConnectionState::Connected)
            | Event::IceConnectionStateChange(IceConnectionState::Completed) => {
                // Back after a disconnect: DTLS is still up.
                if let Some(ep) = self.endpoints.get_mut(&id)
                    && !ep.transport.connected
                    && ep.transport.rtc.is_connected()
                {
                    ep.transport.connected = true;
                    self.update_status(id);
                }
            }
            Event::RtpPacket(p) => self.forward(id, Incoming::from_str0m(p)),
            Event::ChannelOpen(channel, label) => self.channel_opened(id, channel, &label),
            Event::ChannelData(d) => self.channel_data(id, d),
            Event::ChannelClose(channel) => self.channel_closed(id, channel),
            Event::KeyframeRequest(r) => {
                let slot = self
                    .endpoints
                    .get(&id)
                    .and_then(|ep| ep.tx.by_mid.get(&r.mid).copied());
                if let Some(slot) = slot {
                    self.receiver_wants_keyframe(id, slot);
                }
            }
            _ => {}
        }
    }
}
