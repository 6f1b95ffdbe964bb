//! Who gets what (docs/bridge.md B.8): each receiver's forwarded sources kept in step with
//! the conference, the order and heights lastN and the constraints allow, the share of the
//! bandwidth estimate each gets, layer rates, and padding probes.

use super::*;

impl MediaEngine {
    /// Make every endpoint of the conference have exactly one outgoing stream (and mid) per
    /// source of every other endpoint, then re-select.
    pub(super) fn sync_conference(&mut self, conference: &str) {
        let members: Vec<EpId> = self
            .conferences
            .get(conference)
            .map(|c| c.members.clone())
            .unwrap_or_default();
        struct Src {
            sender: EpId,
            owner: String,
            id: SourceId,
            name: String,
            kind: MediaType,
            video_type: String,
            ssrc: u32,
            rtx: Option<u32>,
        }
        let mut all: Vec<Src> = Vec::new();
        for id in &members {
            if let Some(ep) = self.endpoints.get(id) {
                for s in &ep.rx.sources {
                    let l0 = &s.layers[0];
                    all.push(Src {
                        sender: *id,
                        owner: ep.id.clone(),
                        id: s.id,
                        name: s.name.clone(),
                        kind: s.kind,
                        video_type: s.video_type.clone(),
                        ssrc: l0.ssrc,
                        rtx: l0.rtx,
                    });
                }
            }
        }
        for rid in &members {
            let Some(r) = self.endpoints.get_mut(rid) else {
                continue;
            };
            let wanted: Vec<&Src> = all.iter().filter(|x| x.sender != *rid).collect();
            // Drop what is gone with its slot. With SSRC rewriting too, as JVB does: the next
            // source gets a new SSRC (a new remote track in the client) while there are fewer
            // than the slot limit; lib-jitsi-meet handles an SSRC re-mapped to a new owner as a
            // track of the old one that changed hands, which it never removes when the call
            // moves to P2P (a stale track the app keeps showing).
            let gone: Vec<SourceId> =
                r.tx.forwards
                    .keys()
                    .filter(|k| !wanted.iter().any(|w| w.id == **k))
                    .copied()
                    .collect();
            for k in gone {
                if let Some(slot) = r.tx.forwards.remove(&k).and_then(|f| f.slot) {
                    r.remove_slot(slot);
                }
            }
            let video_rtx = r.video_rtx();
            for w in wanted {
                if let Some(f) = r.tx.forwards.get_mut(&w.id) {
                    f.video_type.clone_from(&w.video_type);
                    continue;
                }
                let mut slot = None;
                if !r.tx.ssrc_rewriting {
                    let rtx = w.rtx.filter(|_| w.kind == MediaType::Video && video_rtx);
                    // An SSRC the receiver itself sends, or one already forwarded: skip (str0m
                    // keys streams by SSRC).
                    if r.ssrc_taken(w.ssrc) || rtx.is_some_and(|x| r.ssrc_taken(x)) {
                        tracing::warn!(source = %w.name, "SSRC clash; source not forwarded");
                        continue;
                    }
                    let id = r.new_slot(w.kind, w.ssrc, rtx);
                    if let Some(s) = r.tx.slots.get_mut(&id) {
                        s.source = Some(w.id);
                    }
                    slot = Some(id);
                }
                r.tx.forwards.insert(
                    w.id,
                    Forward {
                        sender: w.sender,
                        owner: w.owner.clone(),
                        name: w.name.clone(),
                        kind: w.kind,
                        video_type: w.video_type.clone(),
                        slot,
                        max_height: 0,
                        bwe_height: u32::MAX,
                        bwe_view: usize::MAX,
                    },
                );
            }
            r.dirty = true;
        }
        self.pending_sender_constraints
            .insert(conference.to_string());
        for rid in members {
            if let Some(ep) = self.endpoints.get_mut(&rid)
                && ep.dirty
            {
                ep.dirty = false;
                self.mark_dirty(rid);
            }
            self.allocate(rid);
        }
    }

    /// docs/bridge.md B.8 step 1: the video sources forwarded to `r`, on-stage first, then
    /// selected, then by speaker order (join order after); a screenshare before a camera of the
    /// same rank on stage or selected; sources that send nothing last.
    pub(super) fn allocation_order(&self, r: &Endpoint) -> Option<Vec<VideoCandidate>> {
        let conf = self.conferences.get(&r.conference)?;
        let (members, recent) = (&conf.members, conf.recent_speakers());
        let c = &r.tx.constraints;
        let mut order: Vec<VideoCandidate> = Vec::new();
        for sid in members {
            if let Some(s) = self.endpoints.get(sid) {
                let speaker = recent.iter().position(|x| x == sid).unwrap_or(usize::MAX);
                for src in s.rx.sources.iter().filter(|x| x.kind == MediaType::Video) {
                    if r.tx.forwards.contains_key(&src.id) {
                        order.push(VideoCandidate {
                            id: src.id,
                            rank: c.rank(&src.name),
                            name: src.name.clone(),
                            speaker,
                            desktop: src.video_type.starts_with("DESKTOP"),
                            off: matches!(src.video_type.as_str(), "NONE" | "DISABLED"),
                        });
                    }
                }
            }
        }
        order.sort_by_key(|x| (x.off, x.rank, !(x.desktop && x.rank < 2), x.speaker));
        Some(order)
    }

    /// docs/bridge.md B.8 step 3: share the receiver's estimate `budget` among what lastN and
    /// the constraints leave (`heights`), in priority order. Per source, the height of the
    /// layer it got (0: none) and that layer's view index (an SVC stream's temporal layers share
    /// a height), and the padding to probe with for more.
    pub(super) fn share_bandwidth(
        &self,
        r: &Endpoint,
        order: &[VideoCandidate],
        heights: &[(SourceId, u32)],
        budget: u64,
        now: Instant,
    ) -> (Vec<u32>, Vec<usize>, u64) {
        let mut bwe = vec![u32::MAX; order.len()];
        let mut bwe_views = vec![usize::MAX; order.len()];
        let mut view_ids: Vec<Vec<usize>> = Vec::new();
        let mut cands: Vec<BandwidthCandidate> = Vec::new();
        let mut at: Vec<usize> = Vec::new();
        for (k, x) in order.iter().enumerate() {
            let h = heights[k].1;
            let Some(src) =
                r.tx.forwards
                    .get(&x.id)
                    .and_then(|f| self.endpoints.get(&f.sender))
                    .and_then(|s| s.rx.sources.iter().find(|s| s.id == x.id))
            else {
                continue;
            };
            let mut ids: Vec<usize> = (0..src.view_count())
                .filter(|&i| src.view_selectable(i, now) && src.view_allocatable(i))
                .collect();
            let mut layers: Vec<(u32, u64)> = ids
                .iter()
                .map(|&i| (src.view_height(i), src.view_bps(i)))
                .collect();
            // Nothing flowing yet: nothing to share (the next round sees it).
            if h == 0 || layers.is_empty() {
                continue;
            }
            // Constraints are soft: the lowest active layer when none is within them.
            let within = layers.iter().rposition(|l| l.0 <= h).map_or(1, |p| p + 1);
            layers.truncate(within);
            ids.truncate(within);
            view_ids.push(ids);
            cands.push(BandwidthCandidate {
                layers,
                on_stage: x.rank == 0,
                desktop: x.desktop,
            });
            at.push(k);
        }
        let a = allocate_bandwidth(&cands, budget);
        for (j, k) in at.into_iter().enumerate() {
            bwe[k] = a.chosen[j].map_or(0, |i| cands[j].layers[i].0);
            bwe_views[k] = a.chosen[j].map_or(usize::MAX, |i| view_ids[j][i]);
        }
        let mut probe_bps = 0;
        if r.caps.fast_egress && a.ideal_bps > a.target_bps {
            probe_bps = (a.ideal_bps - a.target_bps).min(budget.saturating_sub(a.target_bps));
        }
        (bwe, bwe_views, probe_bps)
    }

    /// Decide each forwarded video source's effective maxHeight for one receiver `rid`
    /// (docs/bridge.md B.8: the order of the sources it may get, the height lastN and its
    /// constraints allow each, the share of its bandwidth estimate each gets) and announce the
    /// forwarded set; the forwarders, slots and announcements follow.
    pub(super) fn allocate(&mut self, rid: EpId) {
        let Some(r) = self.endpoints.get(&rid) else {
            return;
        };
        let Some(order) = self.allocation_order(r) else {
            return;
        };
        let c = &r.tx.constraints;
        let heights = constrained_heights(c, &order);
        let budget = self.budget(r);
        let (bwe, bwe_views, probe_bps) = match (budget, self.now) {
            (Some(budget), Some(now)) => self.share_bandwidth(r, &order, &heights, budget, now),
            _ => (
                vec![u32::MAX; order.len()],
                vec![usize::MAX; order.len()],
                0,
            ),
        };
        let mut forwarded: Vec<String> = order
            .iter()
            .zip(&heights)
            .zip(&bwe)
            .filter(|((_, h), b)| h.1 > 0 && **b > 0)
            .map(|((x, _), _)| x.name.clone())
            .collect();
        let Some(r) = self.endpoints.get_mut(&rid) else {
            return;
        };
        r.tx.alloc_budget = budget;
        r.tx.probe_bps = probe_bps;
        if probe_bps > 0
            && self.timers.get(Timer::Probe).is_none()
            && let Some(n) = self.now
        {
            self.timers.set(Timer::Probe, n + PROBE_INTERVAL);
        }
        let mut changed = false;
        for ((&(sid, h), &b), &v) in heights.iter().zip(&bwe).zip(&bwe_views) {
            if let Some(f) = r.tx.forwards.get_mut(&sid) {
                f.bwe_view = v;
                if f.max_height != h {
                    f.max_height = h;
                    changed = true;
                }
                if f.bwe_height != b {
                    if b == 0 && h > 0 {
                        self.stats.bwe_suspensions += 1;
                    }
                    f.bwe_height = b;
                }
            }
        }
        if changed && !self.pending_sender_constraints.contains(&r.conference) {
            self.pending_sender_constraints.insert(r.conference.clone());
        }
        if r.tx.ssrc_rewriting
            && let Some(now) = self.now
        {
            // As JVB: what lastN and the constraints let through (with video on), then the
            // rest with video on while slots remain, so the client has a track for everyone
            // and shows who is outside last-N.
            let limit = self.cfg.rewrite_video_slots;
            let on = || order.iter().zip(&heights).filter(|(x, _)| !x.off);
            let active: Vec<SourceId> = on()
                .filter(|(_, h)| h.1 > 0)
                .chain(on().filter(|(_, h)| h.1 == 0))
                .map(|(x, _)| x.id)
                .take(limit)
                .collect();
            let bound = r.activate_slots(&active, limit, now);
            if !bound.is_empty() {
                let ev = r.sources_map_event(MediaType::Video, &bound);
                self.out.push_back(EngineOutput::Event(ev));
            }
        }
        forwarded.sort();
        if forwarded != r.tx.announced {
            r.tx.announced = forwarded.clone();
            let ev = EngineEvent::ForwardedSources {
                conference: r.conference.clone(),
                endpoint: r.id.clone(),
                sources: forwarded,
            };
            self.out.push_back(EngineOutput::Event(ev));
        }
    }

    /// The bandwidth a receiver's video may take (bps), if the allocation follows one: str0m's
    /// estimate on its path; on the fast path ours, or the initial one until feedback comes
    /// (only receivers that send transport-cc feedback have one).
    pub(super) fn budget(&self, r: &Endpoint) -> Option<u64> {
        if !self.cfg.trust_bwe || !matches!(r.link, endpoint::Link::Client) {
            return None;
        }
        if r.tx.bwe_bps.is_some() {
            return r.tx.bwe_bps;
        }
        (r.caps.fast_egress && r.caps.ext_ids.transport_cc != 0)
            .then(|| r.tx.sendside.estimate().unwrap_or(INITIAL_BWE_BPS))
    }

    /// Measure every sender layer's rate (bps) over the time since the last measurement.
    pub(super) fn measure_rates(&mut self, now: Instant) {
        let elapsed = self
            .rates_at
            .map_or(RATE_INTERVAL, |t| now.saturating_duration_since(t))
            .as_secs_f64()
            .max(0.001);
        self.rates_at = Some(now);
        for l in self
            .endpoints
            .values_mut()
            .flat_map(|e| e.rx.sources.iter_mut())
            .flat_map(|s| s.layers.iter_mut())
        {
            let smooth = |bytes: &mut u64, bps: &mut u64| {
                let now = (std::mem::take(bytes) as f64 * 8.0 / elapsed) as u64;
                // Smoothed over about two intervals: keyframes come and go.
                *bps = if *bps == 0 { now } else { (*bps + now) / 2 };
            };
            smooth(&mut l.bytes, &mut l.bps);
            for v in &mut l.svc.views {
                smooth(&mut v.bytes, &mut v.bps);
            }
        }
    }

    /// Padding towards every receiver whose allocation wants more than its estimate allows
    /// (docs/bridge.md B.4 probing): padding-only RTX packets on one of its video streams, numbered
    /// for transport-cc, so the estimate can grow.
    pub(super) fn probe(&mut self, now: Instant) {
        let mut any = false;
        for ep in self.endpoints.values_mut() {
            if ep.tx.probe_bps == 0 || !ep.transport.connected || ep.caps.ext_ids.transport_cc == 0
            {
                ep.tx.probe_at = None;
                continue;
            }
            any = true;
            if ep.tx.sendside.losing(now) {
                ep.tx.probe_at = None;
                continue;
            }
            let (Some(srtp), Some(path)) = (ep.transport.srtp.as_mut(), ep.transport.send_path)
            else {
                continue;
            };
            let elapsed = ep.tx.probe_at.map_or(PROBE_INTERVAL, |t| {
                now.saturating_duration_since(t).min(4 * PROBE_INTERVAL)
            });
            ep.tx.probe_at = Some(now);
            let Some(slot) = ep
                .tx
                .slots
                .values_mut()
                .filter(|s| s.kind == MediaType::Video && s.rtx.is_some())
                .max_by_key(|s| s.last_used)
            else {
                continue;
            };
            // The payload type of what it carried; before any video, the lowest with RTX.
            let pt = slot.pt.or_else(|| ep.caps.rtx_pts.keys().min().copied());
            let (Some(rtx), Some(rtx_pt)) = (
                slot.rtx,
                pt.and_then(|pt| ep.caps.rtx_pts.get(&pt).copied()),
            ) else {
                continue;
            };
            let ts = slot.sent.last.map_or(0, |l| l.0);
            let mut bytes = (ep.tx.probe_bps as f64 * elapsed.as_secs_f64() / 8.0) as usize;
            self.bufs.scratch.clear();
            self.bufs.scratch.resize(PROBE_PADDING, 0);
            self.bufs.scratch[PROBE_PADDING - 1] = PROBE_PADDING as u8;
            for _ in 0..PROBE_PACKETS_PER_ROUND {
                if bytes == 0 {
                    break;
                }
                let seq = slot.rtx_seq;
                slot.rtx_seq += 1;
                let tseq = ep.tx.sendside.on_send(now, PROBE_PADDING + 40);
                self.bufs.hdr.clear();
                write_header(
                    &mut self.bufs.hdr,
                    &RtpOut {
                        pt: rtx_pt,
                        marker: false,
                        seq: seq as u16,
                        ts,
                        ssrc: rtx,
                    },
                    &ep.caps.ext_ids,
                    &ExtOut::default(),
                    Some(tseq),
                );
                // The padding bit: the payload is all padding (RFC 3550 §5.1).
                self.bufs.hdr[0] |= 0x20;
                let mut data = self.bufs.pool.take();
                if srtp
                    .protect_rtp(&self.bufs.hdr, &self.bufs.scratch, rtx, seq, &mut data)
                    .is_err()
                {
                    self.stats.rtc_errors += 1;
                    break;
                }
                self.stats.probe_packets += 1;
                queue_transmit(&mut self.out, &mut self.stats, path, data);
                bytes = bytes.saturating_sub(PROBE_PADDING + 40);
            }
        }
        if any {
            self.timers.set(Timer::Probe, now + PROBE_INTERVAL);
        }
    }
}

/// A video source a receiver may get, as bandwidth allocation ranks it.
pub(super) struct VideoCandidate {
    pub(super) id: SourceId,
    pub(super) name: String,
    /// 0 on stage, 1 selected, 2 neither.
    pub(super) rank: u8,
    /// Position in the recent-speakers list (`usize::MAX`: not in it).
    pub(super) speaker: usize,
    pub(super) desktop: bool,
    /// Declared `none`/`disabled`: not sending.
    pub(super) off: bool,
}

/// docs/bridge.md B.8 step 2: the height each source in `order` may have under lastN and the
/// receiver's constraints (0: not forwarded).
pub(super) fn constrained_heights(
    c: &ReceiverConstraints,
    order: &[VideoCandidate],
) -> Vec<(SourceId, u32)> {
    let last_n = match c.last_n {
        Some(n) if n >= 0 => n as usize,
        _ => usize::MAX,
    };
    let default = c.default_max_height.map_or(DEFAULT_MAX_HEIGHT, wire_height);
    let mut counted = 0usize;
    order
        .iter()
        .map(|x| {
            let h = if x.off || counted >= last_n {
                0
            } else {
                counted += 1;
                c.constraints
                    .get(&x.name)
                    .map_or(default, |h| wire_height(*h))
            };
            (x.id, h)
        })
        .collect()
}

/// A maxHeight from the bridge channel: −1 (any negative) is unlimited.
pub(super) fn wire_height(h: i64) -> u32 {
    if h < 0 {
        u32::MAX
    } else {
        h.min(i64::from(u32::MAX)) as u32
    }
}
