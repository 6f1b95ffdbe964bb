//! The RTCP the bridge sends: transport-cc feedback, NACKs and receiver reports to senders,
//! sender reports for forwarded streams, retransmissions answering receivers' NACKs, and
//! keyframe requests to senders.

use super::*;

impl MediaEngine {
    /// Fast path: transport-cc feedback and NACKs to every sender, receiver reports once a
    /// second.
    pub(super) fn feedback_round(&mut self, now: Instant) {
        let rr_due = self.next_rr.is_none_or(|t| t <= now);
        if rr_due {
            self.next_rr = Some(now + RR_INTERVAL);
        }
        self.feedback_rounds += 1;
        let twcc_due = self.feedback_rounds.is_multiple_of(2);
        // docs/bridge.md B.15: what a relayed sender lost between the bridges is NACKed over
        // the relay it came on (relayed endpoints have no transport of their own).
        let mut relay_nacks: Vec<(EpId, u32, Vec<u16>)> = Vec::new();
        for ep in self.endpoints.values_mut() {
            let endpoint::Link::Relayed { relay } = ep.link else {
                continue;
            };
            due_video_nacks(&mut ep.rx.sources, now, &mut self.nacks, |ssrc, seqs| {
                relay_nacks.push((relay, ssrc, seqs.to_vec()));
            });
        }
        for (id, ep) in self.endpoints.iter_mut() {
            let Some((srtp, path)) = ep.transport.fast_path() else {
                continue;
            };
            self.rtcp.clear();
            crate::rtp::rtcp::rr::write_header(&mut self.rtcp, ep.tx.fb_ssrc, 0);
            let mut blocks: u8 = 0;
            if rr_due {
                for l in ep.rx.sources.iter_mut().flat_map(|s| s.layers.iter_mut()) {
                    if blocks < 31 && l.rx.write_report_block(l.ssrc, now, &mut self.rtcp) {
                        blocks += 1;
                    }
                }
                self.rtcp[0] = 0x80 | blocks;
                self.rtcp[2..4].copy_from_slice(&(1 + 6 * u16::from(blocks)).to_be_bytes());
            }
            let bare = self.rtcp.len() == 8;
            let had = self.rtcp.len();
            if twcc_due {
                ep.rx.twcc.write_feedback(&mut self.rtcp, ep.tx.fb_ssrc);
            }
            let (rtcp, fb_ssrc) = (&mut self.rtcp, ep.tx.fb_ssrc);
            due_video_nacks(&mut ep.rx.sources, now, &mut self.nacks, |ssrc, seqs| {
                crate::rtp::rtcp::nack::write(rtcp, fb_ssrc, ssrc, seqs);
            });
            for (_, ssrc, seqs) in relay_nacks.iter().filter(|(r, _, _)| r == id) {
                crate::rtp::rtcp::nack::write(&mut self.rtcp, ep.tx.fb_ssrc, *ssrc, seqs);
            }
            if bare && self.rtcp.len() == had {
                continue;
            }
            let mut data = self.bufs.pool.take();
            if srtp.protect_rtcp(&self.rtcp, &mut data).is_err() {
                continue;
            }
            queue_transmit(&mut self.out, &mut self.stats, path, data);
        }
    }

    /// Fast path: resend NACKed packets of one forwarded stream as RTX (RFC 4588), from the
    /// sender's cache with this receiver's offsets.
    pub(super) fn resend(&mut self, id: EpId, ssrc: u32, seqs: &[u16]) {
        let Some(now) = self.now else {
            return;
        };
        // Which sender packets: through the slot's history of offsets.
        let mut todo: Vec<(u64, endpoint::SlotMap)> = Vec::new();
        {
            let Some(slot) = self
                .endpoints
                .get_mut(&id)
                .and_then(|ep| ep.tx.slots.values_mut().find(|s| s.ssrc == ssrc))
            else {
                return;
            };
            let (Some(_), Some(last)) = (slot.rtx, slot.proj.last_seq()) else {
                return;
            };
            for &seq in seqs {
                let out = crate::rtp::extend_seq(last, seq);
                if out > last
                    || slot.recent.iter().any(|(s, t)| {
                        *s == out && now.saturating_duration_since(*t) < egress::RESEND_INTERVAL
                    })
                {
                    continue;
                }
                let Some(m) = slot.history.iter().rev().find(|m| m.first_out <= out) else {
                    continue;
                };
                if slot.recent.len() >= RECENT_RESENDS {
                    slot.recent.pop_front();
                }
                slot.recent.push_back((out, now));
                todo.push((out, *m));
            }
        }
        let mut packets: Vec<(u64, Sent, forward::Offsets, Option<u8>)> = Vec::new();
        for (out, m) in todo {
            let Ok(in_seq) = u64::try_from(out as i64 - m.off.seq) else {
                continue;
            };
            let cached = self
                .endpoints
                .get(&m.sender)
                .and_then(|e| e.rx.sources.iter().find(|s| s.id == m.source))
                .and_then(|s| s.layers.get(m.off.layer))
                .and_then(|l| l.cache.get(in_seq));
            if let Some(c) = cached {
                packets.push((out, c.clone(), m.off, m.mark_spatial));
            }
        }
        if packets.is_empty() {
            return;
        }
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        let (Some(srtp), Some(path)) = (ep.transport.srtp.as_mut(), ep.transport.send_path) else {
            return;
        };
        let Some(slot) = ep.tx.slots.values_mut().find(|s| s.ssrc == ssrc) else {
            return;
        };
        let Some(rtx_ssrc) = slot.rtx else {
            return;
        };
        // Bytes per second retransmissions may take now (`None`: no estimate, no limit).
        let rtx_rate = ep
            .tx
            .sendside
            .estimate()
            .map(|e| e as f64 * RTX_SHARE / 8.0);
        if let Some(rate) = rtx_rate {
            let cap = rate * RTX_BURST.as_secs_f64();
            ep.tx.rtx_tokens = match ep.tx.rtx_at {
                Some(t) => ep.tx.rtx_tokens + rate * now.saturating_duration_since(t).as_secs_f64(),
                None => cap,
            }
            .min(cap);
            ep.tx.rtx_at = Some(now);
        }
        for (out, s, off, mark_spatial) in packets {
            if rtx_rate.is_some() {
                let size = (s.payload.len() + 40) as f64;
                if ep.tx.rtx_tokens < size {
                    self.stats.retransmissions_limited += 1;
                    continue;
                }
                ep.tx.rtx_tokens -= size;
            }
            let Some(&rtx_pt) = ep.caps.rtx_pts.get(&s.pt) else {
                continue;
            };
            self.bufs.scratch.clear();
            self.bufs
                .scratch
                .extend_from_slice(&(out as u16).to_be_bytes());
            self.bufs.scratch.extend_from_slice(&s.payload);
            patch_vp8(
                &mut self.bufs.scratch[2..],
                s.picture_id.map(|p| p.wrapping_add(off.pid) & 0x7fff),
                s.tl0.map(|t| t.wrapping_add(off.tl0)),
            );
            let rtx_seq = slot.rtx_seq;
            slot.rtx_seq += 1;
            self.bufs.hdr.clear();
            let tseq = (ep.caps.ext_ids.transport_cc != 0)
                .then(|| ep.tx.sendside.on_send(now, self.bufs.scratch.len() + 40));
            write_header(
                &mut self.bufs.hdr,
                &RtpOut {
                    pt: rtx_pt,
                    // SVC: the end of the receiver's picture, as first sent.
                    marker: s.marker || s.end_spatial.is_some() && s.end_spatial == mark_spatial,
                    seq: rtx_seq as u16,
                    ts: s.ts.wrapping_add(off.ts),
                    ssrc: rtx_ssrc,
                },
                &ep.caps.ext_ids,
                &s.ext,
                tseq,
            );
            let mut data = self.bufs.pool.take();
            if srtp
                .protect_rtp(
                    &self.bufs.hdr,
                    &self.bufs.scratch,
                    rtx_ssrc,
                    rtx_seq,
                    &mut data,
                )
                .is_err()
            {
                self.stats.rtc_errors += 1;
                continue;
            }
            self.stats.retransmissions += 1;
            queue_transmit(&mut self.out, &mut self.stats, path, data);
        }
    }

    /// Fast path: a sender report for every stream forwarded to each endpoint lately (RFC 3550
    /// §6.4.1; the receivers' lip sync and round-trip times rest on them).
    pub(super) fn sender_reports(&mut self, now: Instant) {
        let clock = self.clock;
        for ep in self.endpoints.values_mut() {
            let Some((srtp, path)) = ep.transport.fast_path() else {
                continue;
            };
            let mut slots: Vec<&endpoint::Slot> = ep
                .tx
                .slots
                .values()
                .filter(|s| {
                    s.sent
                        .last
                        .is_some_and(|(_, at)| now.saturating_duration_since(at) < SR_IDLE)
                })
                .collect();
            slots.sort_by_key(|s| s.ssrc);
            // Compound packets of up to 40 reports (28 bytes each).
            for chunk in slots.chunks(40) {
                self.rtcp.clear();
                for s in chunk {
                    let rate = match s.kind {
                        MediaType::Audio => 48_000,
                        MediaType::Video => 90_000,
                    };
                    egress::write_sr(&mut self.rtcp, s.ssrc, &s.sent, rate, now, &clock);
                }
                let mut data = self.bufs.pool.take();
                if srtp.protect_rtcp(&self.rtcp, &mut data).is_err() {
                    continue;
                }
                queue_transmit(&mut self.out, &mut self.stats, path, data);
            }
        }
    }

    /// A receiver asked for a keyframe on one of its streams: ask the sender of the source on
    /// it for one on the layer it gets.
    pub(super) fn receiver_wants_keyframe(&mut self, id: EpId, slot: endpoint::SlotId) {
        let Some(ep) = self.endpoints.get(&id) else {
            return;
        };
        let Some(slot) = ep.tx.slots.get(&slot) else {
            return;
        };
        let Some(f) = slot.source.and_then(|s| ep.tx.forwards.get(&s)) else {
            return;
        };
        let (sender, name, layer) = (f.sender, f.name.clone(), slot.proj.layer());
        if let Some(layer) = layer {
            self.request_keyframe(sender, &name, layer);
        }
    }

    /// Ask `sender` for a keyframe on one layer of a source, rate-limited.
    pub(super) fn request_keyframe(&mut self, sender: EpId, source: &str, layer: usize) {
        let Some(now) = self.now else {
            return;
        };
        let Some(ep) = self.endpoints.get_mut(&sender) else {
            return;
        };
        let Some(l) = ep
            .rx
            .sources
            .iter_mut()
            .find(|s| s.name == source && s.kind == MediaType::Video)
            .and_then(|s| s.layers.get_mut(layer))
        else {
            return;
        };
        if l.last_pli
            .is_some_and(|t| now.saturating_duration_since(t) < PLI_INTERVAL)
        {
            return;
        }
        l.last_pli = Some(now);
        let media = l.ssrc;
        // A relayed source's request goes out on its relay (docs/bridge.md B.15).
        let via = self.transport_of(sender);
        let Some(ep) = self.endpoints.get_mut(&via) else {
            return;
        };
        if let (Some(srtp), Some(path)) = (ep.transport.srtp.as_mut(), ep.transport.send_path) {
            self.rtcp.clear();
            crate::rtp::rtcp::rr::write_header(&mut self.rtcp, ep.tx.fb_ssrc, 0);
            crate::rtp::rtcp::pli::write(&mut self.rtcp, ep.tx.fb_ssrc, media);
            let mut data = self.bufs.pool.take();
            if srtp.protect_rtcp(&self.rtcp, &mut data).is_ok() {
                self.stats.keyframe_requests += 1;
                queue_transmit(&mut self.out, &mut self.stats, path, data);
            }
            return;
        }
        let ssrc = Ssrc::from(media);
        if let Some(s) = ep.transport.rtc.direct_api().stream_rx(&ssrc) {
            s.request_keyframe(KeyframeRequestKind::Pli);
            self.stats.keyframe_requests += 1;
            self.mark_dirty(sender);
        }
    }
}

/// Each received video layer of `sources` with sequence numbers due for a NACK now: its
/// SSRC and those numbers, sorted (`scratch` holds them meanwhile).
fn due_video_nacks(
    sources: &mut [endpoint::SenderSource],
    now: Instant,
    scratch: &mut Vec<u16>,
    mut each: impl FnMut(u32, &[u16]),
) {
    for s in sources.iter_mut().filter(|s| s.kind == MediaType::Video) {
        for l in &mut s.layers {
            scratch.clear();
            l.rx.due_nacks(now, scratch);
            if !scratch.is_empty() {
                scratch.sort_unstable();
                each(l.ssrc, scratch);
            }
        }
    }
}
