//! What arrives from endpoints: the demultiplexer (STUN USERNAME, then remote address), RTP
//! on the fast path (decrypt, reception statistics, transport-cc record) and the RTCP
//! feedback receivers send about forwarded streams.

use super::*;

impl MediaEngine {
    /// One datagram received on the media port. Never panics on any input.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        self.receive(now, Protocol::Udp, from, to, data);
    }

    /// One RFC 4571 frame from an ICE-TCP connection (docs/bridge.md B.1): `from` the
    /// client's end, `to` the bridge's end of the connection. Never panics on any input.
    pub fn handle_tcp_frame(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: SocketAddr,
        data: &[u8],
    ) {
        self.receive(now, Protocol::Tcp, from, to, data);
    }

    fn receive(
        &mut self,
        now: Instant,
        proto: Protocol,
        from: SocketAddr,
        to: SocketAddr,
        data: &[u8],
    ) {
        let now = self.tick(now);
        self.stats.packets_in += 1;
        self.stats.bytes_in += data.len() as u64;
        // A relay's own port names the relay (docs/bridge.md B.15).
        let relay = (proto == Protocol::Udp)
            .then(|| self.relay_on_port(to.port()))
            .flatten();
        let to = match relay {
            Some(_) => self
                .cfg
                .local_addrs
                .iter()
                .find(|a| a.is_ipv4() == to.is_ipv4())
                .map(|a| SocketAddr::new(a.ip(), to.port())),
            None => self.local_candidate(proto, to),
        };
        let Some(to) = to else {
            self.stats.dropped_datagrams += 1;
            return;
        };
        let stun_user = stun_request_local_ufrag(data);
        let id = match (relay, stun_user.and_then(|u| self.by_ufrag.get(u))) {
            (Some(r), _) => r,
            (None, Some(id)) => *id,
            (None, None) if stun_user.is_some() => {
                self.stats.dropped_datagrams += 1;
                return;
            }
            (None, None) => match self.by_addr.get(&from) {
                Some(id) => *id,
                None => {
                    self.stats.dropped_datagrams += 1;
                    return;
                }
            },
        };
        // The fast path: the endpoint's RTP and RTCP are handled here, without str0m (which
        // has no streams to apply RTCP to in this mode).
        let rtcp = is_rtcp(data);
        if stun_user.is_none()
            && (rtcp || is_rtp(data))
            && let Some(ep) = self.endpoints.get_mut(&id)
            && ep.transport.srtp.is_some()
            && !ep.transport.failed
        {
            ep.transport.last_rx = Some(now);
            if ep.transport.status != Some(true) && ep.transport.connected {
                self.update_status(id);
            }
            if rtcp {
                self.receiver_feedback(id, data);
            } else {
                self.fast_rtp(id, now, data);
            }
            return;
        }
        let Ok(recv) = Receive::new(proto, from, to, data) else {
            self.stats.dropped_datagrams += 1;
            return;
        };
        let Some(ep) = self.endpoints.get_mut(&id) else {
            self.stats.dropped_datagrams += 1;
            return;
        };
        if ep.transport.failed {
            self.stats.dropped_datagrams += 1;
            return;
        }
        let input = Input::Receive(now.max(ep.transport.rtc_now), recv);
        if stun_user.is_some() {
            if !ep.transport.rtc.accepts(&input) {
                self.stats.dropped_datagrams += 1;
                return;
            }
            // A verified check binds the address to this endpoint (it may move endpoints).
            if self.by_addr.insert(from, id) != Some(id) {
                ep.transport.addrs.push(from);
            }
        }
        ep.transport.rtc_now = now.max(ep.transport.rtc_now);
        ep.transport.last_rx = Some(now);
        if let Err(e) = ep.transport.rtc.handle_input(input) {
            tracing::debug!(error = %e, "endpoint input");
            self.stats.rtc_errors += 1;
        }
        if ep.transport.status != Some(true) && ep.transport.connected {
            self.update_status(id);
        }
        // In RTP mode str0m holds one received packet until the next poll: take it now, or a
        // second datagram before `poll_output` would overwrite it. The rest of the endpoint's
        // output waits for `poll_output` (one full drain per batch of datagrams).
        self.drain_until_packet(id);
    }

    /// The local candidate a datagram arrived on. The socket may see another local address
    /// than the one advertised (NAT, wildcard bind): str0m needs one of its own candidates
    /// as destination, of the same protocol, preferably of the same port, and of the same
    /// address family.
    fn local_candidate(&self, proto: Protocol, to: SocketAddr) -> Option<SocketAddr> {
        let own = match proto {
            Protocol::Udp => &self.cfg.local_addrs,
            _ => &self.cfg.tcp_local_addrs,
        };
        if own.contains(&to) {
            return Some(to);
        }
        let family = own.iter().filter(|a| a.is_ipv4() == to.is_ipv4());
        family
            .clone()
            .find(|a| a.port() == to.port())
            .or_else(|| family.clone().next())
            .copied()
    }

    /// Fast path: the endpoint's RTCP — feedback about the streams forwarded to it, sender
    /// reports about its own.
    pub(super) fn receiver_feedback(&mut self, id: EpId, data: &[u8]) {
        let Some(srtp) = self
            .endpoints
            .get_mut(&id)
            .and_then(|e| e.transport.srtp.as_mut())
        else {
            return;
        };
        if srtp.unprotect_rtcp(data, &mut self.rtcp).is_err() {
            self.stats.dropped_datagrams += 1;
            return;
        }
        let mut fb = std::mem::take(&mut self.feedback);
        fb.clear();
        parse_feedback(&self.rtcp, MAX_NACKS_PER_PACKET, &mut fb);
        for f in fb.drain(..) {
            match f {
                Feedback::Nack { ssrc, seqs } => {
                    if matches!(
                        self.endpoints.get(&id).map(|e| &e.link),
                        Some(endpoint::Link::Relay { .. })
                    ) {
                        self.resend_to_relay(id, ssrc, &seqs);
                    } else {
                        self.resend(id, ssrc, &seqs);
                    }
                }
                Feedback::TransportCc(fb) => {
                    let now = self.now.unwrap_or(self.clock.instant);
                    if let Some(ep) = self.endpoints.get_mut(&id)
                        && let Some((rate, loss, queued)) = ep.tx.sendside.on_feedback(&fb, now)
                    {
                        tracing::trace!(
                            endpoint = %ep.id,
                            statuses = fb.arrivals.len(),
                            delivered_bps = rate as u64,
                            loss,
                            queued,
                            estimate = ?ep.tx.sendside.estimate(),
                            "transport-cc feedback"
                        );
                        let moved = match (ep.tx.alloc_budget, ep.tx.sendside.estimate()) {
                            (Some(a), Some(e)) => {
                                (e as f64 - a as f64).abs() > REALLOCATE_CHANGE * a as f64
                            }
                            _ => false,
                        };
                        if moved {
                            tracing::debug!(
                                endpoint = %ep.id,
                                delivered_bps = rate as u64,
                                loss,
                                queued,
                                from = ?ep.tx.alloc_budget,
                                to = ?ep.tx.sendside.estimate(),
                                "bandwidth estimate moved: reallocating"
                            );
                            self.allocate(id);
                        }
                    }
                }
                Feedback::SenderReport { ssrc, ntp_mid } => {
                    let now = self.now.unwrap_or(self.clock.instant);
                    let owner = match self.endpoints.get(&id).map(|e| &e.link) {
                        Some(endpoint::Link::Relay { owners }) => owners.get(&ssrc).copied(),
                        _ => Some(id),
                    };
                    if let Some(ep) = owner.and_then(|o| self.endpoints.get_mut(&o))
                        && let Some(&(si, li)) = ep.rx.ssrc_index.get(&ssrc)
                        && let Some(l) =
                            ep.rx.sources.get_mut(si).and_then(|s| s.layers.get_mut(li))
                    {
                        l.rx.last_sr = Some((ntp_mid, now));
                    }
                }
                Feedback::Keyframe { ssrc } => {
                    self.stats.receiver_keyframe_requests += 1;
                    if self
                        .endpoints
                        .get(&id)
                        .is_some_and(|e| matches!(e.link, endpoint::Link::Relay { .. }))
                    {
                        self.relay_wants_keyframe(id, ssrc);
                        continue;
                    }
                    let slot = self.endpoints.get(&id).and_then(|ep| {
                        ep.tx
                            .slots
                            .iter()
                            .find(|(_, s)| s.ssrc == ssrc)
                            .map(|(k, _)| *k)
                    });
                    if let Some(slot) = slot {
                        self.receiver_wants_keyframe(id, slot);
                    }
                }
            }
        }
        self.feedback = fb;
    }

    /// Fast path: one RTP packet from an endpoint whose SRTP keys are known.
    pub(super) fn fast_rtp(&mut self, id: EpId, now: Instant, data: &[u8]) {
        enum Which {
            Main(usize, usize),
            Rtx(usize, usize),
            Other,
        }
        let epoch = self.clock.instant;
        let Some(ep) = self.endpoints.get(&id) else {
            return;
        };
        let Some(h) = crate::rtp::parse_rtp(data, &ep.caps.ext_ids) else {
            self.stats.dropped_datagrams += 1;
            return;
        };
        // On a relay the packet is a relayed endpoint's (docs/bridge.md B.15).
        let sender = match &ep.link {
            endpoint::Link::Relay { owners } => match owners.get(&h.ssrc) {
                Some(s) => *s,
                None => {
                    self.stats.rtp_unknown_ssrc += 1;
                    return;
                }
            },
            _ => id,
        };
        // A client's own packet: the endpoint already at hand.
        let ep = if sender == id {
            ep
        } else {
            let Some(e) = self.endpoints.get(&sender) else {
                return;
            };
            e
        };
        let which = if let Some(((si, li), rtx)) = ep.rx.stream_of(h.ssrc) {
            if rtx {
                Which::Rtx(si, li)
            } else {
                Which::Main(si, li)
            }
        } else if ep.rx.other_ssrcs.contains(&h.ssrc) {
            Which::Other
        } else {
            self.stats.rtp_unknown_ssrc += 1;
            return;
        };
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        let Some(srtp) = ep.transport.srtp.as_mut() else {
            return;
        };
        // Decrypted straight into a payload buffer that receivers and the cache will share.
        let mut plain = Buf::scratch();
        let Ok((index, mut len)) = srtp.unprotect_rtp(data, h.hdr_len, h.ssrc, h.seq, &mut plain)
        else {
            drop(Buf::from_vec(plain, 0..0));
            self.stats.dropped_datagrams += 1;
            return;
        };
        let plain = Buf::from_vec(plain, 0..len);
        if let Some(t) = h.transport_seq {
            ep.rx.twcc.record(t, now, epoch);
            ep.rx.twcc.media_ssrc = h.ssrc;
        }
        if h.padding {
            let pad = usize::from(plain.last().copied().unwrap_or(0));
            if pad == 0 || pad > len {
                self.stats.dropped_datagrams += 1;
                return;
            }
            len -= pad;
        }
        let ep = if sender == id {
            ep
        } else {
            let Some(e) = self.endpoints.get_mut(&sender) else {
                return;
            };
            e
        };
        let (si, li, seq, start, pt) = match which {
            Which::Other => return,
            Which::Main(si, li) => (si, li, index, 0, h.pt),
            Which::Rtx(si, li) => {
                // Padding-only RTX packets probe the bandwidth: nothing to forward.
                if len < 2 {
                    return;
                }
                let osn = u16::from_be_bytes([plain[0], plain[1]]);
                let near = ep
                    .rx
                    .sources
                    .get(si)
                    .and_then(|s| s.layers.get(li))
                    .and_then(|l| l.rx.max())
                    .unwrap_or(u64::from(osn));
                let Some((&apt, _)) = ep.caps.rtx_pts.iter().find(|(_, r)| **r == h.pt) else {
                    return;
                };
                (si, li, crate::rtp::extend_seq(near, osn), 2, apt)
            }
        };
        if len <= start {
            return;
        }
        let Some(source) = ep.rx.sources.get_mut(si) else {
            return;
        };
        let kind = source.kind;
        let Some(layer) = source.layers.get_mut(li) else {
            return;
        };
        let clock_rate = match kind {
            MediaType::Audio => 48_000,
            MediaType::Video => 90_000,
        };
        if !layer
            .rx
            .on_packet(seq, h.ts, now, epoch, clock_rate, kind == MediaType::Video)
        {
            self.stats.rtp_duplicates += 1;
            return;
        }
        let incoming = Incoming {
            ssrc: layer.ssrc,
            seq,
            ts: h.ts,
            pt,
            marker: h.marker,
            payload: Buf::from_vec(plain.into_vec(), start..len),
            ext: ExtOut {
                audio_level: h.audio_level,
                video_orientation: h.video_orientation,
                dependency_descriptor: h
                    .dependency_descriptor
                    .and_then(|(a, b)| data.get(a..b))
                    .map(Arc::from),
            },
            arrival: now,
        };
        self.forward(sender, incoming);
    }
}
