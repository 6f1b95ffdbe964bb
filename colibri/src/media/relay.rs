//! One packet from a sender to every receiver (docs/bridge.md B.6–B.9): the sender's side
//! (`ingest`), then per receiver the layer, the slot, the rewriting and the send, on the fast
//! path (`send_fast`) or through str0m.

use super::cascade::send_to_relay;
use super::endpoint::Link;
use super::*;

impl MediaEngine {
    /// Forward one incoming RTP packet of `sender` to the other endpoints of its conference.
    /// The sender's side of forwarding `p` (docs/bridge.md B.6–B.8): which source and layer it
    /// is, force-mute, silence suppression and the speech detector for audio, the layer's rate
    /// and keyframe height for video. `None`: not forwarded (counted).
    pub(super) fn ingest(&mut self, sender: EpId, p: &Incoming, now: Instant) -> Option<Ingested> {
        let s = self.endpoints.get_mut(&sender)?;
        let from_relay = matches!(s.link, Link::Relayed { .. });
        let ssrc = p.ssrc;
        let Some(&(si, li)) = s.rx.ssrc_index.get(&ssrc) else {
            self.stats.rtp_unknown_ssrc += 1;
            return None;
        };
        let pt = p.pt;
        let codec = s.caps.pts.get(&pt).map(|(c, _)| *c);
        let muted = s.rx.muted(s.rx.sources[si].kind);
        let source = &mut s.rx.sources[si];
        let kind = source.kind;
        if muted {
            self.stats.force_muted_dropped += 1;
            return None;
        }
        let vcodec = match (kind, codec) {
            (MediaType::Video, Some(c)) => video_codec(c),
            _ => VideoCodec::Other,
        };
        let keyframe = kind == MediaType::Video && starts_keyframe(vcodec, &p.payload);
        let mut seq = p.seq;
        if kind == MediaType::Audio {
            // docs/bridge.md B.6: silence suppression; B.7: what is forwarded feeds the dominant
            // speaker identification (level 0 = silence … 127 = loud).
            let level = p.ext.audio_level.map(|b| -((b & 0x7f) as i8));
            match source.silence.filter(seq, level == Some(-127)) {
                Some(out) => seq = out,
                None => {
                    self.stats.silence_dropped += 1;
                    return None;
                }
            }
            if let Some(l) = level {
                let level = (127 + i16::from(l)).clamp(0, 127) as u8;
                if let Some(c) = self.conferences.get_mut(&s.conference) {
                    c.level(sender, level, now);
                }
            }
        }
        source.first_seen.get_or_insert(now);
        let single_layer = source.layers.len() == 1;
        let mut svc = None;
        {
            let layer = &mut source.layers[li];
            layer.last_seen = Some(now);
            let bytes = p.payload.len() as u64 + 12;
            layer.bytes += bytes;
            if keyframe
                && vcodec == VideoCodec::Vp8
                && let Some(h) = vp8_keyframe_height(&p.payload)
            {
                layer.height = Some(h);
            }
            // docs/bridge.md B.13: the layers inside one stream.
            if matches!(vcodec, VideoCodec::Av1 | VideoCodec::Vp9)
                && let Some(frame) = layer.svc.observe(
                    vcodec,
                    p.ext.dependency_descriptor.as_deref(),
                    &p.payload,
                    now,
                    bytes,
                )
                && let Some(layout) = layer.svc.layout.clone().filter(|l| l.spatial_layers > 1)
            {
                svc = Some(SvcPacket {
                    frame,
                    layout,
                    generation: layer.svc.generation,
                });
            }
        }
        // The source is an SVC stream while this layer sends one; a packet of another layer
        // (simulcast again) or a layout without spatial layers ends that. (A packet whose
        // descriptor did not read goes to everyone.)
        if svc.is_some() {
            source.svc_layer = Some(li);
        } else if source.svc_layer.is_some()
            && (source.svc_layer != Some(li)
                || source.layers[li]
                    .svc
                    .layout
                    .as_ref()
                    .is_none_or(|l| l.spatial_layers < 2))
        {
            source.svc_layer = None;
        }
        let svc_views = source.svc().is_some();
        let (view_buf, nviews) = source.layer_views(now);
        let source_id: SourceId = source.id;
        let vp8 = if vcodec == VideoCodec::Vp8 {
            Vp8Descriptor::parse(&p.payload).ok()
        } else {
            None
        };
        let input = InPacket {
            layer: li,
            seq,
            ts: p.ts,
            // A single stream starts anywhere (the receiver asks for a keyframe itself).
            keyframe: keyframe || single_layer || kind == MediaType::Audio,
            picture_id: vp8.and_then(|d| d.picture_id()),
            tl0: vp8.and_then(|d| d.tl0_pic_idx()),
            at: now,
            clock_rate: if kind == MediaType::Video {
                90_000
            } else {
                48_000
            },
        };
        Some(Ingested {
            from_relay,
            si,
            li,
            kind,
            source_id,
            views: view_buf,
            nviews,
            input,
            keyframe,
            vp8,
            svc,
            svc_views,
        })
    }

    pub(super) fn forward(&mut self, sender: EpId, p: Incoming) {
        let now = self.now.unwrap_or(p.arrival);
        let Some(g) = self.ingest(sender, &p, now) else {
            return;
        };
        let (si, li, kind, source_id, input, vp8) =
            (g.si, g.li, g.kind, g.source_id, g.input, g.vp8);
        let svc = g.svc.as_ref();
        let views = &g.views[..g.nviews];
        let seq = input.seq;
        let pt = p.pt;
        let ssrc = p.ssrc;
        let Incoming {
            payload,
            ext: ext_out,
            marker,
            arrival,
            ..
        } = p;
        let pt_u8 = pt;
        let red = kind == MediaType::Audio && pt == crate::codecs::RED_PT;
        let Some((members, has_broadcast)) = self
            .endpoints
            .get(&sender)
            .and_then(|s| self.conferences.get(&s.conference))
            .map(|c| (&c.members, c.broadcast.is_some()))
        else {
            return;
        };
        let from_relay = g.from_relay;
        let mut want_keyframe = false;
        let mut cache_it = false;
        for rid in members {
            if *rid == sender {
                continue;
            }
            let Some(r) = self.endpoints.get_mut(rid) else {
                continue;
            };
            if !r.transport.connected || r.transport.failed {
                continue;
            }
            match r.link {
                Link::Client => {}
                Link::Relayed { .. } => continue,
                // docs/bridge.md B.15: a local sender's packet, as it came, to the other
                // bridges; what came from one never goes on to another.
                Link::Relay { .. } => {
                    // A video source the other bridge wants at no height stays here; of a
                    // simulcast source only the layers up to the one its receivers could
                    // pick within what it wants cross (it never sees the others).
                    let want = (kind == MediaType::Video)
                        .then(|| r.tx.forwards.get(&source_id).map(|f| f.max_height))
                        .flatten();
                    let unwanted = want == Some(0)
                        || (!g.svc_views
                            && views.len() > 1
                            && want
                                .and_then(|h| select_layer(views, h))
                                .is_some_and(|top| li > top));
                    if !from_relay && !unwanted {
                        // Kept for the other bridge's NACKs (docs/bridge.md B.15).
                        cache_it |= kind == MediaType::Video;
                        send_to_relay(
                            r,
                            ssrc,
                            seq,
                            input.ts,
                            pt_u8,
                            marker,
                            &payload,
                            &ext_out,
                            &mut self.bufs,
                            &mut self.out,
                            &mut self.stats,
                        );
                    }
                    continue;
                }
            }
            let Some(f) = r.tx.forwards.get_mut(&source_id) else {
                continue;
            };
            let target = if kind == MediaType::Audio {
                Some(0)
            } else {
                select_layer(views, f.max_height.min(f.bwe_height)).map(|t| t.min(f.bwe_view))
            };
            let Some(mut target) = target else {
                // Suspended (lastN, constraints or the estimate): what comes back starts at a
                // keyframe and continues the numbering, with no gap for the receiver to NACK.
                if let Some(slot) = f.slot.and_then(|id| r.tx.slots.get_mut(&id))
                    && slot.source == Some(source_id)
                    && slot.proj.layer().is_some()
                {
                    slot.proj.rebind();
                    slot.svc.reset();
                }
                continue;
            };
            // SVC: the choice is a spatial layer inside the one stream.
            let view = if g.svc_views {
                Some(std::mem::replace(&mut target, li)).filter(|_| svc.is_some())
            } else {
                None
            };
            let slot_id = match f.slot {
                Some(s) => s,
                None if r.tx.ssrc_rewriting => {
                    let limit = match kind {
                        MediaType::Audio => self.cfg.rewrite_audio_slots,
                        MediaType::Video => self.cfg.rewrite_video_slots,
                    };
                    let Some(s) = r.bind_slot(source_id, limit, now, &[]) else {
                        continue;
                    };
                    let ev = r.sources_map_event(kind, &[source_id]);
                    self.out.push_back(EngineOutput::Event(ev));
                    s
                }
                None => continue,
            };
            let Some(slot) = r.tx.slots.get_mut(&slot_id) else {
                continue;
            };
            slot.last_used = Some(now);
            let mut mark = marker;
            if let (Some(s), Some(view)) = (svc, view) {
                let v = slot.svc.decide(&s.frame, view, &s.layout, s.generation);
                want_keyframe |= v.want_keyframe;
                if !v.forward {
                    slot.proj.skip(&input);
                    self.stats.svc_skipped += 1;
                    continue;
                }
                if v.switched {
                    self.stats.layer_switches += 1;
                }
                mark |= v.mark;
            }
            if slot.proj.layer() != Some(target) && li == target && !input.keyframe {
                want_keyframe = true;
            }
            let before = slot.proj.layer();
            let Some(out) = slot.proj.project(&input, target) else {
                continue;
            };
            if out.switched && before.is_some() {
                self.stats.layer_switches += 1;
            }
            if before.is_none() && kind == MediaType::Video {
                // A stream starts: the receiver may drop its packets until its signalling
                // caught up (an SSRC it does not know yet); not congestion.
                r.tx.sendside.ignore_losses_until(now + NEW_SOURCE_GRACE);
            }
            // Opus with RED goes as it is to a receiver that negotiated RED, and as its
            // primary Opus block to one that did not (send_fast).
            let has_rtx = if red && r.caps.red_pt == Some(pt) {
                false
            } else {
                let want = if red { crate::codecs::OPUS_PT } else { pt };
                let Some((_, has_rtx)) = r.caps.pts.get(&want).copied() else {
                    continue;
                };
                has_rtx
            };
            if red && !r.caps.fast_egress {
                // str0m's streams know no RED.
                continue;
            }
            if r.caps.fast_egress {
                let fwd = Forwarded {
                    sender,
                    source_id,
                    kind,
                    pt: pt_u8,
                    marker: mark,
                    payload: &payload,
                    ext: &ext_out,
                    input: &input,
                    now,
                };
                let sent = send_fast(
                    r,
                    slot_id,
                    &fwd,
                    &out,
                    has_rtx,
                    &mut self.bufs,
                    &mut self.out,
                    &mut self.stats,
                );
                cache_it |= sent == Some(true);
                continue;
            }
            let mut w = RtpWrite::new(
                Pt::from(pt_u8),
                out.seq.into(),
                out.ts,
                arrival,
                Arc::<[u8]>::from(&payload[..]),
            )
            .marker(mark)
            .ext_vals(ext_out.to_str0m())
            .nackable(kind == MediaType::Video && has_rtx && slot.rtx.is_some());
            if let Some(d) = vp8 {
                let mut b = d.patch();
                if let Some(pid) = out.picture_id {
                    let pid = if pid > 0x7f && d.picture_id().is_some_and(|x| x <= 0x7f) {
                        pid & 0x7f
                    } else {
                        pid
                    };
                    b = b.picture_id(pid);
                }
                if let Some(t) = out.tl0 {
                    b = b.tl0_pic_idx(t);
                }
                if let Ok(patch) = b.build() {
                    w = w.vp8_patch(patch);
                }
            }
            let out_ssrc = Ssrc::from(slot.ssrc);
            // Advancing a receiver's clock walks all its streams: do it at most once per
            // millisecond, not for every forwarded packet.
            if now.saturating_duration_since(r.transport.rtc_now) >= RECEIVER_CLOCK_STEP {
                r.transport.rtc_now = now;
                if r.transport.rtc.handle_input(Input::Timeout(now)).is_err() {
                    self.stats.rtc_errors += 1;
                }
            }
            if let Some(stream) = r.transport.rtc.direct_api().stream_tx(&out_ssrc) {
                stream.write_rtp(w);
                self.stats.rtp_forwarded += 1;
                if !r.dirty {
                    r.dirty = true;
                    self.dirty.push(*rid);
                }
            }
        }
        if has_broadcast {
            self.broadcast_packet(sender, &g, pt_u8, marker, &payload, now);
        }
        if cache_it
            && let Some(layer) = self
                .endpoints
                .get_mut(&sender)
                .and_then(|e| e.rx.sources.get_mut(si))
                .and_then(|s| s.layers.get_mut(li))
        {
            layer.cache.push(
                Sent {
                    seq,
                    ts: input.ts,
                    pt: pt_u8,
                    marker,
                    picture_id: input.picture_id,
                    tl0: input.tl0,
                    at: now,
                    payload,
                    ext: ext_out,
                    end_spatial: svc.filter(|s| s.frame.end).map(|s| s.frame.spatial),
                },
                self.cfg.rtx_cache_packets,
                self.cfg.rtx_cache_age,
            );
        }
        if want_keyframe {
            // Rare (a receiver waits for a layer switch): the name is only cloned here.
            let name = self
                .endpoints
                .get(&sender)
                .and_then(|e| e.rx.sources.get(si))
                .map(|s| s.name.clone());
            if let Some(name) = name {
                self.request_keyframe(sender, &name, li);
            }
        }
    }
}

/// Reusable buffers of the fast path: send buffers given back by the I/O side, an RTP header,
/// a payload copy.
pub(super) struct SendBufs {
    pub(super) pool: SendPool,
    pub(super) hdr: Vec<u8>,
    pub(super) scratch: Vec<u8>,
}

impl SendBufs {
    pub(super) fn new(limit: usize) -> SendBufs {
        SendBufs {
            pool: SendPool {
                free: Vec::new(),
                limit,
            },
            hdr: Vec::with_capacity(64),
            scratch: Vec::with_capacity(SEND_BUF_KEEP),
        }
    }
}

/// Send buffers given back by the I/O side, at most `limit` of them.
pub(super) struct SendPool {
    free: Vec<Vec<u8>>,
    limit: usize,
}

/// Capacity of a new send buffer: a full-size datagram and its SRTP tag or padding, so that
/// it comes back to the pool (a buffer grown from empty for each packet cost a malloc, a
/// realloc and a free per forwarded packet).
const SEND_BUF_CAPACITY: usize = 1600;
/// Smallest buffer worth keeping.
const SEND_BUF_KEEP: usize = 1500;

impl SendPool {
    /// An empty send buffer: a recycled one, or a new one of full datagram size.
    pub(super) fn take(&mut self) -> Vec<u8> {
        self.free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(SEND_BUF_CAPACITY))
    }

    /// A buffer back from the I/O side; kept while there is room.
    pub(super) fn give_back(&mut self, mut buf: Vec<u8>) {
        if self.free.len() < self.limit && buf.capacity() >= SEND_BUF_KEEP {
            buf.clear();
            self.free.push(buf);
        }
    }
}

/// One forwarded packet as every receiver gets it, before each receiver's own rewriting.
pub(super) struct Forwarded<'a> {
    pub(super) sender: EpId,
    pub(super) source_id: SourceId,
    pub(super) kind: MediaType,
    pub(super) pt: u8,
    pub(super) marker: bool,
    pub(super) payload: &'a [u8],
    pub(super) ext: &'a ExtOut,
    pub(super) input: &'a InPacket,
    pub(super) now: Instant,
}

/// The fast path to receiver `r` on its slot `slot_id`: our own RTP header (rewritten as
/// `out` says), SRTP, and the slot's counts and retransmission history; the datagram goes on
/// `queue`. `Some(keep)`: sent, and whether the packet is to be kept for retransmissions.
#[allow(clippy::too_many_arguments)]
pub(super) fn send_fast(
    r: &mut Endpoint,
    slot_id: endpoint::SlotId,
    f: &Forwarded<'_>,
    out: &forward::OutPacket,
    has_rtx: bool,
    bufs: &mut SendBufs,
    queue: &mut VecDeque<EngineOutput>,
    stats: &mut EngineStats,
) -> Option<bool> {
    let now = f.now;
    if r.transport.srtp.is_none() {
        r.transport.srtp = r.caps.keys.get().and_then(Srtp::new);
    }
    let (Some(srtp), Some(path)) = (r.transport.srtp.as_mut(), r.transport.send_path) else {
        return None;
    };
    let slot = r.tx.slots.get_mut(&slot_id)?;
    // Only a stream whose offsets moved (a switch) needs its descriptor patched, and a copy
    // of the payload for it.
    let patch = out.picture_id != f.input.picture_id || out.tl0 != f.input.tl0;
    // Opus with RED to a receiver that did not negotiate RED: its primary block alone.
    let mut pt = f.pt;
    let red = if f.kind == MediaType::Audio
        && f.pt == crate::codecs::RED_PT
        && r.caps.red_pt != Some(f.pt)
    {
        let Some((primary, data)) = crate::rtp::red::primary(f.payload) else {
            stats.dropped_datagrams += 1;
            return None;
        };
        pt = primary;
        stats.red_stripped += 1;
        Some(data)
    } else {
        None
    };
    let body: &[u8] = if let Some(data) = red {
        data
    } else if patch {
        bufs.scratch.clear();
        bufs.scratch.extend_from_slice(f.payload);
        patch_vp8(&mut bufs.scratch, out.picture_id, out.tl0);
        &bufs.scratch
    } else {
        f.payload
    };
    bufs.hdr.clear();
    // Video only, as JVB: a receiver that did not negotiate transport-cc on its audio m-line
    // would report every audio packet lost.
    let tseq = (r.caps.ext_ids.transport_cc != 0 && f.kind == MediaType::Video)
        .then(|| r.tx.sendside.on_send(now, body.len() + 40));
    write_header(
        &mut bufs.hdr,
        &RtpOut {
            pt,
            marker: f.marker,
            seq: out.seq as u16,
            ts: out.ts,
            ssrc: slot.ssrc,
        },
        &r.caps.ext_ids,
        f.ext,
        tseq,
    );
    let mut data = bufs.pool.take();
    if srtp
        .protect_rtp(&bufs.hdr, body, slot.ssrc, out.seq, &mut data)
        .is_err()
    {
        stats.rtc_errors += 1;
        return None;
    }
    slot.sent.packets = slot.sent.packets.wrapping_add(1);
    slot.sent.octets = slot.sent.octets.wrapping_add(body.len() as u32);
    slot.sent.last = Some((out.ts, now));
    let keep = f.kind == MediaType::Video && has_rtx && slot.rtx.is_some();
    if keep {
        slot.pt = Some(f.pt);
        let mapped = slot.history.back().map(|m| m.mark_spatial);
        if (slot.map_epoch != Some(slot.proj.epoch())
            || mapped.is_some_and(|m| m != slot.svc.mark_spatial))
            && let Some(off) = slot.proj.offsets()
        {
            slot.map_epoch = Some(slot.proj.epoch());
            if slot.history.len() >= SLOT_HISTORY {
                slot.history.pop_front();
            }
            slot.history.push_back(endpoint::SlotMap {
                first_out: out.seq,
                sender: f.sender,
                source: f.source_id,
                off,
                mark_spatial: slot.svc.mark_spatial,
            });
        }
    }
    stats.rtp_forwarded += 1;
    queue_transmit(queue, stats, path, data);
    Some(keep)
}
