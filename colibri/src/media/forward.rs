//! Per-receiver rewriting of one forwarded source (docs/bridge.md B.9) and layer choice (B.8).
//!
//! Every forwarded source reaches a receiver as one continuous stream on the SSRC the receiver
//! was told about. Switching simulcast layers happens only on a keyframe of the target layer;
//! sequence numbers, RTP timestamps, VP8 picture id and TL0PICIDX continue across the switch.

use std::time::Instant;

/// The default height of simulcast layer `index` of `count` when the sender's keyframes have
/// not told us yet: Jitsi's 180/360/720 ladder, highest layer 720.
pub(super) fn default_height(index: usize, count: usize) -> u32 {
    let shift = count.saturating_sub(1).saturating_sub(index).min(8);
    720 >> shift
}

/// What the selection needs to know about one layer of a sender's source.
#[derive(Debug, Clone, Copy)]
pub(super) struct LayerView {
    pub height: u32,
    pub active: bool,
}

/// The layer to forward: the highest active layer within `max_height`, else the lowest active
/// layer (constraints are soft except 0, docs/bridge.md B.8); `None` if nothing is active or the
/// receiver asked for nothing.
pub(super) fn select_layer(layers: &[LayerView], max_height: u32) -> Option<usize> {
    if max_height == 0 {
        return None;
    }
    let mut lowest = None;
    let mut best = None;
    for (i, l) in layers.iter().enumerate() {
        if !l.active {
            continue;
        }
        if lowest.is_none() {
            lowest = Some(i);
        }
        if l.height <= max_height {
            best = Some(i);
        }
    }
    best.or(lowest)
}

/// On-stage sources are raised straight to their highest layer up to this height before
/// anything else gets more than its lowest layer (JVB `onstage-preferred-height-px`).
pub(super) const ONSTAGE_PREFERRED_HEIGHT: u32 = 360;
/// The first source, when it is an on-stage screenshare, gets its lowest layer even if that
/// exceeds the estimate by up to this much (JVB's oversending, docs/bridge.md B.8 step 4).
pub(super) const MAX_OVERSEND_BPS: u64 = 500_000;

/// One video source competing for a receiver's bandwidth.
#[derive(Debug, Clone, Default)]
pub(super) struct BandwidthCandidate {
    /// The layers it may get (active and within its constraints), lowest first: (height,
    /// measured bps).
    pub layers: Vec<(u32, u64)>,
    pub on_stage: bool,
    pub desktop: bool,
}

/// What [`allocate_bandwidth`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BandwidthAllocation {
    /// Per candidate, the index into its `layers`; `None`: not forwarded (suspended).
    pub chosen: Vec<Option<usize>>,
    /// The measured rate of what was chosen.
    pub target_bps: u64,
    /// The rate with every candidate at its highest layer.
    pub ideal_bps: u64,
}

/// Share `budget` (bps) among `candidates`, given in priority order (docs/bridge.md B.8 step 3):
/// rounds over the candidates in order, each taking its next layer if it fits in what is left;
/// an on-stage source goes straight up to [`ONSTAGE_PREFERRED_HEIGHT`]; a candidate that cannot
/// reach its preferred layer (on stage: that height; else its lowest) stops the round, so
/// lower priorities never take bandwidth a higher one needs.
pub(super) fn allocate_bandwidth(
    candidates: &[BandwidthCandidate],
    budget: u64,
) -> BandwidthAllocation {
    let rate = |c: &BandwidthCandidate, i: Option<usize>| i.map_or(0, |i| c.layers[i].1);
    let preferred = |c: &BandwidthCandidate| {
        if c.on_stage {
            c.layers
                .iter()
                .rposition(|l| l.0 <= ONSTAGE_PREFERRED_HEIGHT)
                .unwrap_or(0)
        } else {
            0
        }
    };
    let mut chosen: Vec<Option<usize>> = vec![None; candidates.len()];
    let mut used: u64 = 0;
    loop {
        let mut changed = false;
        for (k, c) in candidates.iter().enumerate() {
            if c.layers.is_empty() {
                continue;
            }
            let cur = chosen[k];
            let pref = preferred(c);
            let first = cur.map_or(0, |i| i + 1);
            let last = match cur {
                Some(i) if i >= pref => i + 1,
                _ => pref,
            }
            .min(c.layers.len() - 1);
            // What is left for this candidate with its current layer given back.
            let avail = budget.saturating_sub(used - rate(c, cur));
            let mut best = (first..=last).rev().find(|&i| c.layers[i].1 <= avail);
            if best.is_none()
                && cur.is_none()
                && k == 0
                && c.on_stage
                && c.desktop
                && c.layers[0].1 <= avail + MAX_OVERSEND_BPS
            {
                best = Some(0);
            }
            if let Some(i) = best {
                used = used - rate(c, cur) + c.layers[i].1;
                chosen[k] = Some(i);
                changed = true;
            }
            if chosen[k].is_none_or(|i| i < pref) {
                break;
            }
        }
        if !changed {
            break;
        }
    }
    let ideal_bps = candidates
        .iter()
        .map(|c| c.layers.last().map_or(0, |l| l.1))
        .sum();
    BandwidthAllocation {
        chosen,
        target_bps: used,
        ideal_bps,
    }
}

/// One incoming packet as the projection sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct InPacket {
    pub layer: usize,
    /// Extended sequence number (str0m's `SeqNo`).
    pub seq: u64,
    pub ts: u32,
    /// The first packet of a keyframe.
    pub keyframe: bool,
    pub picture_id: Option<u16>,
    pub tl0: Option<u8>,
    pub at: Instant,
    /// 90 kHz video (timestamp steps of 3000 on a switch) or anything else.
    pub clock_rate: u32,
}

/// The rewritten header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct OutPacket {
    pub seq: u64,
    pub ts: u32,
    pub picture_id: Option<u16>,
    pub tl0: Option<u8>,
    /// This packet starts a new layer.
    pub switched: bool,
}

/// The rewriting state of one forwarded source towards one receiver.
#[derive(Debug, Default, Clone)]
pub(super) struct Projection {
    layer: Option<usize>,
    seq_off: i64,
    ts_off: u32,
    pid_off: u16,
    tl0_off: u8,
    /// First input sequence number of the current layer: older packets are from before the
    /// switch and are dropped.
    switch_seq: u64,
    last: Option<LastOut>,
    /// Incremented at every switch: the offsets below changed.
    epoch: u32,
    /// The highest input sequence number of the current layer seen.
    highest_in: Option<u64>,
    /// Input sequence numbers skipped lately (SVC frames a receiver does not get), oldest
    /// first: a late packet before some of them is numbered as if they were not yet skipped.
    skipped: std::collections::VecDeque<u64>,
}

/// Skipped sequence numbers remembered for late packets.
const SKIPPED_KEPT: usize = 64;

/// The offsets from a sender's stream to what a receiver gets, since one switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Offsets {
    pub layer: usize,
    pub seq: i64,
    pub ts: u32,
    pub pid: u16,
    pub tl0: u8,
}

#[derive(Debug, Clone, Copy)]
struct LastOut {
    seq: u64,
    ts: u32,
    pid: Option<u16>,
    tl0: Option<u8>,
    at: Instant,
}

impl Projection {
    /// The layer currently forwarded.
    pub fn layer(&self) -> Option<usize> {
        self.layer
    }

    /// Changes at every switch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The current offsets (while a layer is forwarded).
    pub fn offsets(&self) -> Option<Offsets> {
        Some(Offsets {
            layer: self.layer?,
            seq: self.seq_off,
            ts: self.ts_off,
            pid: self.pid_off,
            tl0: self.tl0_off,
        })
    }

    /// The highest sequence number sent.
    pub fn last_seq(&self) -> Option<u64> {
        self.last.map(|l| l.seq)
    }

    /// Another source will ride on this stream: wait for its keyframe (any packet for audio)
    /// and continue sequence numbers and timestamps from what was sent last.
    pub fn rebind(&mut self) {
        self.layer = None;
    }

    /// `p`, of the layer forwarded, is not sent (an SVC frame the receiver does not get):
    /// later packets are numbered without a gap for it. A late one leaves its gap.
    pub fn skip(&mut self, p: &InPacket) {
        if self.layer != Some(p.layer) || p.seq < self.switch_seq {
            return;
        }
        if self.highest_in.is_some_and(|h| p.seq <= h) {
            return;
        }
        self.highest_in = Some(p.seq);
        self.seq_off -= 1;
        self.epoch = self.epoch.wrapping_add(1);
        if self.skipped.len() >= SKIPPED_KEPT {
            self.skipped.pop_front();
        }
        self.skipped.push_back(p.seq);
    }

    /// Project `p` given the layer the receiver should get. `None`: drop the packet.
    pub fn project(&mut self, p: &InPacket, target: usize) -> Option<OutPacket> {
        let mut switched = false;
        if self.layer != Some(target) && p.layer == target && p.keyframe {
            self.switch(p);
            switched = true;
        }
        if self.layer != Some(p.layer) || p.seq < self.switch_seq {
            return None;
        }
        let mut off = self.seq_off;
        match self.highest_in {
            Some(h) if p.seq < h => {
                // Late: the skips after it had not happened yet.
                off += self
                    .skipped
                    .iter()
                    .rev()
                    .take_while(|s| **s > p.seq)
                    .count() as i64;
            }
            _ => self.highest_in = Some(p.seq),
        }
        let seq = p.seq as i64 + off;
        if seq < 0 {
            return None;
        }
        let seq = seq as u64;
        let out = OutPacket {
            seq,
            ts: p.ts.wrapping_add(self.ts_off),
            picture_id: p.picture_id.map(|x| x.wrapping_add(self.pid_off) & 0x7fff),
            tl0: p.tl0.map(|x| x.wrapping_add(self.tl0_off)),
            switched,
        };
        if self.last.is_none_or(|l| seq > l.seq) {
            self.last = Some(LastOut {
                seq,
                ts: out.ts,
                pid: out.picture_id,
                tl0: out.tl0,
                at: p.at,
            });
        }
        Some(out)
    }

    fn switch(&mut self, p: &InPacket) {
        match self.last {
            None => {
                // Start at the sender's own 16-bit value: a zero rollover counter for SRTP.
                self.seq_off = i64::from(p.seq as u16) - p.seq as i64;
                self.ts_off = 0;
                self.pid_off = 0;
                self.tl0_off = 0;
            }
            Some(last) => {
                self.seq_off = (last.seq + 1) as i64 - p.seq as i64;
                let elapsed_ms = p.at.saturating_duration_since(last.at).as_millis() as u32;
                let per_frame = (p.clock_rate / 30).max(1);
                let frames = (elapsed_ms / 33).max(1);
                let ts = last.ts.wrapping_add(per_frame.wrapping_mul(frames));
                self.ts_off = ts.wrapping_sub(p.ts);
                if let (Some(lp), Some(pid)) = (last.pid, p.picture_id) {
                    self.pid_off = ((lp + 1) & 0x7fff).wrapping_sub(pid) & 0x7fff;
                }
                if let (Some(lt), Some(tl0)) = (last.tl0, p.tl0) {
                    self.tl0_off = lt.wrapping_add(1).wrapping_sub(tl0);
                }
            }
        }
        self.switch_seq = p.seq;
        self.highest_in = None;
        self.skipped.clear();
        self.layer = Some(p.layer);
        self.epoch = self.epoch.wrapping_add(1);
    }
}

/// Silent audio packets forwarded in a row before the rest of the run is dropped
/// (`forwarded-silence-packets-limit`, docs/bridge.md B.6).
pub(super) const SILENCE_PACKETS_LIMIT: u32 = 3;

/// Silence suppression of one sending audio stream (docs/bridge.md B.6): a packet whose
/// ssrc-audio-level says silence (-127 dBov) is dropped once more than
/// [`SILENCE_PACKETS_LIMIT`] silent packets in a row went through, and the sequence numbers of
/// what is forwarded are lowered by the number dropped so receivers see no gaps (JVB's
/// `ResumableStreamRewriter`). The drop decision depends only on the sender, so one filter per
/// sending stream serves every receiver.
#[derive(Debug, Default, Clone)]
pub(super) struct SilenceFilter {
    /// Silent packets forwarded in a row.
    run: u32,
    /// Dropped packets to squeeze out of the sequence numbers.
    gap: u64,
    /// The highest sequence number forwarded (after rewriting).
    highest_out: Option<u64>,
}

impl SilenceFilter {
    /// The rewritten (extended) sequence number to forward `seq` with, or `None` to drop it.
    pub fn filter(&mut self, seq: u64, silent: bool) -> Option<u64> {
        if silent && self.run > SILENCE_PACKETS_LIMIT {
            if let Some(h) = self.highest_out
                && seq > h
            {
                self.gap = self.gap.max(seq - h);
            }
            return None;
        }
        self.run = if silent { self.run + 1 } else { 0 };
        let out = seq.saturating_sub(self.gap);
        if self.highest_out.is_none_or(|h| out > h) {
            self.highest_out = Some(out);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pkt(layer: usize, seq: u64, ts: u32, keyframe: bool, pid: u16, at: Instant) -> InPacket {
        InPacket {
            layer,
            seq,
            ts,
            keyframe,
            picture_id: Some(pid),
            tl0: Some(pid as u8),
            at,
            clock_rate: 90_000,
        }
    }

    #[test]
    fn selection_follows_constraints_and_activity() {
        let l = |h, a| LayerView {
            height: h,
            active: a,
        };
        let all = [l(180, true), l(360, true), l(720, true)];
        assert_eq!(select_layer(&all, 180), Some(0));
        assert_eq!(select_layer(&all, 360), Some(1));
        assert_eq!(select_layer(&all, 720), Some(2));
        assert_eq!(select_layer(&all, 100), Some(0), "soft constraint");
        assert_eq!(select_layer(&all, 0), None, "0 is hard");
        let top_off = [l(180, true), l(360, true), l(720, false)];
        assert_eq!(select_layer(&top_off, 720), Some(1));
        assert_eq!(select_layer(&[l(180, false)], 720), None);
        assert_eq!(default_height(0, 3), 180);
        assert_eq!(default_height(2, 3), 720);
        assert_eq!(default_height(0, 1), 720);
    }

    #[test]
    fn skipped_packets_leave_no_gap_and_late_ones_keep_their_place() {
        let t = Instant::now();
        let mut p = Projection::default();
        let out = |p: &mut Projection, seq| p.project(&pkt(0, seq, 0, seq == 100, 1, t), 0);
        assert_eq!(out(&mut p, 100).map(|o| o.seq), Some(100));
        let e = p.epoch();
        // 101 and 102 are another layer's frame: skipped.
        p.skip(&pkt(0, 101, 0, false, 1, t));
        p.skip(&pkt(0, 102, 0, false, 1, t));
        assert_ne!(p.epoch(), e, "the offsets changed: NACK mapping follows");
        assert_eq!(out(&mut p, 104).map(|o| o.seq), Some(102));
        // 103 comes late: it keeps the number between 100 and 104's.
        assert_eq!(out(&mut p, 103).map(|o| o.seq), Some(101));
        // A late packet that is skipped leaves its gap (later numbers already went out).
        p.skip(&pkt(0, 99, 0, false, 1, t));
        assert_eq!(out(&mut p, 105).map(|o| o.seq), Some(103));
        // Before the first keyframe there is nothing to skip.
        let mut q = Projection::default();
        q.skip(&pkt(0, 5, 0, false, 1, t));
        assert_eq!(
            q.project(&pkt(0, 6, 0, true, 1, t), 0).map(|o| o.seq),
            Some(6)
        );
    }

    #[test]
    fn projection_is_continuous_across_a_switch() {
        let t0 = Instant::now();
        let mut p = Projection::default();
        // Waits for a keyframe.
        assert_eq!(p.project(&pkt(0, 70_000, 1000, false, 5, t0), 0), None);
        let a = p.project(&pkt(0, 70_001, 1000, true, 6, t0), 0).unwrap();
        assert_eq!(a.seq, 70_001 & 0xffff);
        assert!(a.switched);
        let b = p.project(&pkt(0, 70_002, 4000, false, 7, t0), 0).unwrap();
        assert_eq!((b.seq, b.ts, b.picture_id), (a.seq + 1, 4000, Some(7)));
        // Layer 2 non-keyframe: dropped, still on layer 0.
        let t1 = t0 + Duration::from_millis(66);
        assert_eq!(p.project(&pkt(2, 500, 9_000_000, false, 900, t1), 2), None);
        assert_eq!(
            p.project(&pkt(0, 70_003, 7000, false, 8, t1), 2)
                .unwrap()
                .seq,
            b.seq + 1
        );
        // Layer 2 keyframe: switch, continuous.
        let c = p
            .project(&pkt(2, 501, 9_000_000, true, 901, t1), 2)
            .unwrap();
        assert!(c.switched);
        assert_eq!(c.seq, b.seq + 2);
        assert_eq!(c.ts, 7000 + 3000);
        assert_eq!(c.picture_id, Some(9));
        assert_eq!(c.tl0, Some(9));
        assert_eq!(p.layer(), Some(2));
        // Old layer packets are dropped now; older layer-2 packets too.
        assert_eq!(p.project(&pkt(0, 70_004, 10_000, false, 9, t1), 2), None);
        assert_eq!(p.project(&pkt(2, 500, 9_000_000, false, 900, t1), 2), None);
        let d = p
            .project(&pkt(2, 502, 9_003_000, false, 902, t1), 2)
            .unwrap();
        assert_eq!(
            (d.seq, d.ts, d.picture_id),
            (c.seq + 1, c.ts + 3000, Some(10))
        );
    }

    #[test]
    fn silence_is_dropped_after_four_and_sequence_numbers_close_up() {
        let mut f = SilenceFilter::default();
        let mut out = Vec::new();
        let mut seq = 1000u64;
        let mut send = |f: &mut SilenceFilter, silent: bool, out: &mut Vec<u64>| {
            seq += 1;
            if let Some(s) = f.filter(seq, silent) {
                out.push(s);
            }
        };
        for _ in 0..3 {
            send(&mut f, false, &mut out);
        }
        for _ in 0..10 {
            send(&mut f, true, &mut out);
        }
        assert_eq!(out.len(), 3 + 4, "the first 4 silent packets go through");
        for _ in 0..3 {
            send(&mut f, false, &mut out);
        }
        for _ in 0..2 {
            send(&mut f, true, &mut out);
        }
        assert_eq!(out.len(), 3 + 4 + 3 + 2);
        for w in out.windows(2) {
            assert_eq!(w[1], w[0] + 1, "{out:?}");
        }
        assert_eq!(out[0], 1001);
    }

    fn cand(layers: &[(u32, u64)], on_stage: bool, desktop: bool) -> BandwidthCandidate {
        BandwidthCandidate {
            layers: layers.to_vec(),
            on_stage,
            desktop,
        }
    }

    const CAMERA: [(u32, u64); 3] = [(180, 200_000), (360, 500_000), (720, 1_500_000)];

    #[test]
    fn bandwidth_goes_to_the_lowest_layers_first_then_up_in_priority_order() {
        let c = vec![cand(&CAMERA, false, false); 3];
        // Everything fits.
        let a = allocate_bandwidth(&c, 10_000_000);
        assert_eq!(a.chosen, vec![Some(2); 3]);
        assert_eq!(a.target_bps, 4_500_000);
        assert_eq!(a.ideal_bps, 4_500_000);
        // 1.5 Mbit/s: everyone's lowest (600k), then the first to 360p (+300k), the second
        // (+300k), the third (+300k): 1.5M exactly.
        let a = allocate_bandwidth(&c, 1_500_000);
        assert_eq!(a.chosen, vec![Some(1); 3]);
        // 1 Mbit/s: lowest for all, then the first one step up; the second does not fit.
        let a = allocate_bandwidth(&c, 1_000_000);
        assert_eq!(a.chosen, vec![Some(1), Some(0), Some(0)]);
        assert_eq!(a.target_bps, 900_000);
        // Not enough for everyone's lowest: the last in priority is suspended.
        let a = allocate_bandwidth(&c, 450_000);
        assert_eq!(a.chosen, vec![Some(0), Some(0), None]);
        // A higher priority that cannot be served stops the lower ones.
        let c2 = vec![
            cand(&[(180, 300_000)], false, false),
            cand(&[(180, 100_000)], false, false),
        ];
        let a = allocate_bandwidth(&c2, 200_000);
        assert_eq!(a.chosen, vec![None, None]);
        assert_eq!(a.target_bps, 0);
        assert_eq!(a.ideal_bps, 400_000);
    }

    #[test]
    fn on_stage_goes_straight_to_its_preferred_height_and_screenshare_may_oversend() {
        let c = vec![
            cand(&CAMERA, true, false),
            cand(&CAMERA, false, false),
            cand(&CAMERA, false, false),
        ];
        // 1 Mbit/s: the on-stage source takes 360p before the others get their lowest.
        let a = allocate_bandwidth(&c, 1_000_000);
        assert_eq!(a.chosen, vec![Some(1), Some(0), Some(0)]);
        let a = allocate_bandwidth(&c, 600_000);
        assert_eq!(a.chosen, vec![Some(1), None, None]);
        // Without room for its preferred layer, nothing below it gets anything.
        let a = allocate_bandwidth(&c, 400_000);
        assert_eq!(a.chosen, vec![Some(0), None, None]);
        // A screenshare on stage gets its (single, costly) layer even 400k over the estimate.
        let share = vec![
            cand(&[(1080, 900_000)], true, true),
            cand(&CAMERA, false, false),
        ];
        let a = allocate_bandwidth(&share, 500_000);
        assert_eq!(a.chosen, vec![Some(0), None]);
        assert_eq!(a.target_bps, 900_000);
        let a = allocate_bandwidth(&share, 300_000);
        assert_eq!(a.chosen, vec![None, None]);
        // A camera never oversends.
        let a = allocate_bandwidth(&[cand(&[(720, 900_000)], true, false)], 500_000);
        assert_eq!(a.chosen, vec![None]);
    }

    #[test]
    fn sources_without_layers_take_nothing_and_block_nothing() {
        let c = vec![cand(&[], false, false), cand(&CAMERA, false, false)];
        let a = allocate_bandwidth(&c, 250_000);
        assert_eq!(a.chosen, vec![None, Some(0)]);
        // Unmeasured layers (0 bps) always fit.
        let a = allocate_bandwidth(&[cand(&[(180, 0), (360, 0)], false, false)], 0);
        assert_eq!(a.chosen, vec![Some(1)]);
    }
}
