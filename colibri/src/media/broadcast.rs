//! Live streaming from the bridge (docs/streaming.md): one conference as a local encoder
//! process wants it — the on-stage video as one continuous VP8 stream and the speakers' audio
//! on a few Opus streams that never pause — sent as plain RTP over loopback. Sans-IO: packets
//! and the time go in, datagrams and keyframe wishes come out.
//!
//! * Video: only the on-stage source (chosen by the engine: a screen share, else the dominant
//!   speaker's camera) is passed on, one layer of it, switched on keyframes and renumbered
//!   onto one SSRC. While no video is on stage for a second, a still frame (`filler`, made by
//!   the encoder side) is repeated, so that the encoder's picture never stalls.
//! * Audio: each of `audio.len()` slots carries one sender at a time, renumbered; a slot with
//!   nothing to carry sends 20 ms Opus silence frames, so that the encoder's mixer always has
//!   input on every slot.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;

use super::endpoint::{EpId, SourceId};
use super::forward::{LayerView, select_layer};
use crate::colibri2::MediaType;

/// Where the encoder listens and what it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BroadcastTarget {
    /// The encoder's video RTP port (VP8, payload type [`VIDEO_PT`]).
    pub video: SocketAddr,
    /// One RTP port per mixed speaker (Opus, payload type [`AUDIO_PT`]).
    pub audio: Vec<SocketAddr>,
    /// The largest simulcast layer taken.
    pub max_height: u32,
    /// One VP8 keyframe (the frame alone, no RTP) shown while no video is on stage.
    pub filler: Vec<u8>,
}

/// The payload types of the encoder's session description.
pub const VIDEO_PT: u8 = 96;
pub const AUDIO_PT: u8 = 111;

/// 20 ms of Opus silence (one CELT frame, the usual comfort filler).
const OPUS_SILENCE: [u8; 3] = [0xf8, 0xff, 0xfe];
const AUDIO_FRAME: Duration = Duration::from_millis(20);
const AUDIO_FRAME_TS: u32 = 960;
/// A slot whose sender sent nothing for this long is filled with silence (and may be given
/// to another sender).
const AUDIO_IDLE: Duration = Duration::from_millis(60);
const AUDIO_FREE: Duration = Duration::from_millis(500);
/// No video sent for this long: the filler frame, repeated at this interval.
const VIDEO_IDLE: Duration = Duration::from_millis(1000);
const FILLER_INTERVAL: Duration = Duration::from_millis(500);
/// Keyframe requests for the on-stage source, at most this often.
const KEYFRAME_INTERVAL: Duration = Duration::from_millis(1000);
/// Payload bytes per filler packet.
const FILLER_MTU: usize = 1100;

/// One datagram for the encoder.
pub(super) type Datagram = (SocketAddr, Vec<u8>);

/// What one incoming video packet is, as the broadcast sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct VideoIn<'a> {
    pub sender: EpId,
    pub source: SourceId,
    pub layer: usize,
    pub seq: u64,
    pub ts: u32,
    pub keyframe: bool,
    pub marker: bool,
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, Copy)]
struct Binding {
    sender: EpId,
    source: SourceId,
    layer: usize,
    seq_off: i64,
    ts_off: u32,
    first_seq: u64,
}

#[derive(Debug, Default)]
struct Video {
    bound: Option<Binding>,
    next_seq: u16,
    last_ts: u32,
    /// When something was last sent (a real packet or the filler).
    last_at: Option<Instant>,
    /// When a real packet was last sent.
    last_real: Option<Instant>,
}

impl Video {
    /// The timestamp of a frame starting at `now`, one frame (33 ms) later at least.
    fn next_ts(&self, now: Instant) -> u32 {
        let ms = self
            .last_at
            .map_or(33, |t| now.saturating_duration_since(t).as_millis().max(33));
        self.last_ts.wrapping_add((ms as u32).wrapping_mul(90))
    }
}

#[derive(Debug)]
struct AudioSlot {
    to: SocketAddr,
    ssrc: u32,
    sender: Option<(EpId, SourceId)>,
    /// Input timestamp offset while the sender's packets flow.
    ts_off: Option<u32>,
    highest_in: u64,
    next_seq: u16,
    /// The timestamp of the last frame sent (48 kHz, on the feed's clock, [`Broadcast::wall_ts`]).
    last_ts: u32,
    last_real: Option<Instant>,
}

/// Counts for the metrics and the tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BroadcastStats {
    pub video_packets: u64,
    pub filler_frames: u64,
    pub audio_packets: u64,
    pub silence_packets: u64,
    pub switches: u64,
}

/// One conference's live-stream feed.
#[derive(Debug)]
pub(super) struct Broadcast {
    target: BroadcastTarget,
    video_ssrc: u32,
    video: Video,
    audio: Vec<AudioSlot>,
    on_stage: Option<(EpId, SourceId)>,
    last_keyframe_request: Option<Instant>,
    next_tick: Instant,
    /// Where the audio slots' clock stands at 0 (one frame before the feed started).
    epoch: Instant,
    pub stats: BroadcastStats,
}

impl Broadcast {
    /// `ssrc` seeds the SSRCs (the engine's randomness).
    pub fn new(target: BroadcastTarget, now: Instant, ssrc: u32) -> Broadcast {
        let audio = target
            .audio
            .iter()
            .enumerate()
            .map(|(i, to)| AudioSlot {
                to: *to,
                ssrc: ssrc.wrapping_add(1 + i as u32),
                sender: None,
                ts_off: None,
                highest_in: 0,
                next_seq: 0,
                last_ts: 0,
                last_real: None,
            })
            .collect();
        Broadcast {
            target,
            video_ssrc: ssrc,
            video: Video::default(),
            audio,
            on_stage: None,
            last_keyframe_request: None,
            next_tick: now,
            // The first tick sends the first silence frame of every slot at once.
            epoch: now.checked_sub(AUDIO_FRAME).unwrap_or(now),
            stats: BroadcastStats::default(),
        }
    }

    /// The audio clock at `now`: 48 kHz since the feed's start, wrapping as RTP does. Every
    /// slot stays tied to it, so that what the encoder mixes keeps pace with the picture.
    fn wall_ts(&self, now: Instant) -> u32 {
        let us = now.saturating_duration_since(self.epoch).as_micros();
        // Truncation is the RTP timestamp's wrap-around.
        (us * 48 / 1000) as u32
    }

    pub fn target(&self) -> &BroadcastTarget {
        &self.target
    }

    pub fn on_stage(&self) -> Option<(EpId, SourceId)> {
        self.on_stage
    }

    /// The video source to show from now on; whether it changed (the engine then asks it
    /// for a keyframe).
    pub fn set_on_stage(&mut self, s: Option<(EpId, SourceId)>) -> bool {
        if self.on_stage == s {
            return false;
        }
        self.on_stage = s;
        true
    }

    /// When [`Broadcast::tick`] is due.
    pub fn next_timeout(&self) -> Instant {
        self.next_tick
    }

    /// The layer to take of a source with these layers.
    pub fn layer(&self, views: &[LayerView]) -> Option<usize> {
        select_layer(views, self.target.max_height)
    }

    /// A keyframe request for the on-stage source is allowed now (and counted as made).
    pub fn may_request_keyframe(&mut self, now: Instant) -> bool {
        if self
            .last_keyframe_request
            .is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_INTERVAL)
        {
            return false;
        }
        self.last_keyframe_request = Some(now);
        true
    }

    /// One VP8 packet of a sender. `target`: the layer wanted of this source. Returns
    /// whether a keyframe of `p.layer` is wanted (the stream waits for one).
    pub fn video(
        &mut self,
        p: &VideoIn<'_>,
        target: Option<usize>,
        now: Instant,
        out: &mut Vec<Datagram>,
    ) -> bool {
        if self.on_stage != Some((p.sender, p.source)) {
            return false;
        }
        let v = &mut self.video;
        let bound_here = v
            .bound
            .is_some_and(|b| b.sender == p.sender && b.source == p.source && b.layer == p.layer);
        let wanted = target == Some(p.layer);
        if wanted && !bound_here {
            if !p.keyframe {
                return true;
            }
            let seq_off = i64::from(v.next_seq) - p.seq as i64;
            let ts_off = v.next_ts(now).wrapping_sub(p.ts);
            if v.bound.is_some() {
                self.stats.switches += 1;
            }
            v.bound = Some(Binding {
                sender: p.sender,
                source: p.source,
                layer: p.layer,
                seq_off,
                ts_off,
                first_seq: p.seq,
            });
        } else if !bound_here {
            return false;
        }
        let Some(b) = v.bound else {
            return false;
        };
        if p.seq < b.first_seq {
            return false;
        }
        let seq = (p.seq as i64 + b.seq_off) as u16;
        let ts = p.ts.wrapping_add(b.ts_off);
        if seq.wrapping_sub(v.next_seq) < 0x8000 {
            v.next_seq = seq.wrapping_add(1);
            v.last_ts = ts;
        }
        v.last_at = Some(now);
        v.last_real = Some(now);
        out.push((
            self.target.video,
            rtp(VIDEO_PT, p.marker, seq, ts, self.video_ssrc, p.payload),
        ));
        self.stats.video_packets += 1;
        false
    }

    /// One Opus packet (the primary block of a RED one) of a sender.
    #[allow(clippy::too_many_arguments)]
    pub fn audio(
        &mut self,
        sender: EpId,
        source: SourceId,
        seq: u64,
        ts: u32,
        payload: &[u8],
        now: Instant,
        out: &mut Vec<Datagram>,
    ) {
        let me = Some((sender, source));
        let i = match self.audio.iter().position(|s| s.sender == me) {
            Some(i) => i,
            None => {
                // A free slot: never used, or its sender quiet for a while.
                let Some(i) = self.audio.iter().position(|s| {
                    s.last_real
                        .is_none_or(|t| now.saturating_duration_since(t) >= AUDIO_FREE)
                }) else {
                    return;
                };
                let s = &mut self.audio[i];
                s.sender = me;
                s.ts_off = None;
                i
            }
        };
        let wall = self.wall_ts(now);
        let s = &mut self.audio[i];
        let ts_off = match s.ts_off {
            Some(o) if seq > s.highest_in => o,
            Some(_) => return, // late or repeated: its place was filled already
            None => {
                // The sender (again) from now on, after what the slot sent: never earlier,
                // and never after the silence it was given meanwhile. Late packets that
                // come in a burst after a pause would otherwise be put after that silence,
                // and each pause would push the slot further ahead of the picture (34 s
                // in two minutes with six streams on two cores).
                let next = s.last_ts.wrapping_add(AUDIO_FRAME_TS);
                let at = if (wall.wrapping_sub(next) as i32) > 0 {
                    wall
                } else {
                    next
                };
                let o = at.wrapping_sub(ts);
                s.ts_off = Some(o);
                o
            }
        };
        s.highest_in = seq;
        let out_ts = ts.wrapping_add(ts_off);
        let seq_out = s.next_seq;
        s.next_seq = s.next_seq.wrapping_add(1);
        s.last_ts = out_ts;
        s.last_real = Some(now);
        out.push((s.to, rtp(AUDIO_PT, false, seq_out, out_ts, s.ssrc, payload)));
        self.stats.audio_packets += 1;
    }

    /// The clock: silence on quiet slots, the filler frame while no video flows. Returns
    /// whether the on-stage source should be asked for a keyframe.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Datagram>) -> bool {
        if now < self.next_tick {
            return false;
        }
        self.next_tick = now + AUDIO_FRAME;
        let wall = self.wall_ts(now);
        for s in &mut self.audio {
            let talking = s.ts_off.is_some()
                && s.last_real
                    .is_some_and(|t| now.saturating_duration_since(t) < AUDIO_IDLE);
            if talking {
                continue;
            }
            // Quiet: silence from the last frame on, one per 20 ms, up to the clock. The
            // sender's next packet continues from there.
            s.ts_off = None;
            while wall.wrapping_sub(s.last_ts) as i32 >= AUDIO_FRAME_TS as i32 {
                s.last_ts = s.last_ts.wrapping_add(AUDIO_FRAME_TS);
                let seq = s.next_seq;
                s.next_seq = s.next_seq.wrapping_add(1);
                out.push((
                    s.to,
                    rtp(AUDIO_PT, false, seq, s.last_ts, s.ssrc, &OPUS_SILENCE),
                ));
                self.stats.silence_packets += 1;
            }
        }
        let v = &mut self.video;
        let quiet = v
            .last_real
            .is_none_or(|t| now.saturating_duration_since(t) >= VIDEO_IDLE);
        let filler_due = v
            .last_at
            .is_none_or(|t| now.saturating_duration_since(t) >= FILLER_INTERVAL);
        if quiet && filler_due && !self.target.filler.is_empty() {
            // What comes next of a real source starts at its keyframe.
            v.bound = None;
            let ts = v.next_ts(now);
            let chunks: Vec<&[u8]> = self.target.filler.chunks(FILLER_MTU).collect();
            let n = chunks.len();
            for (i, c) in chunks.into_iter().enumerate() {
                // VP8 payload descriptor: S (start of partition 0) on the first packet only.
                let mut body = Vec::with_capacity(c.len() + 1);
                body.push(if i == 0 { 0x10 } else { 0x00 });
                body.extend_from_slice(c);
                let seq = v.next_seq;
                v.next_seq = v.next_seq.wrapping_add(1);
                out.push((
                    self.target.video,
                    rtp(VIDEO_PT, i + 1 == n, seq, ts, self.video_ssrc, &body),
                ));
            }
            v.last_ts = ts;
            v.last_at = Some(now);
            self.stats.filler_frames += 1;
        }
        quiet && self.on_stage.is_some()
    }
}

/// A plain RTP packet: version 2, no extensions.
fn rtp(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(12 + payload.len());
    b.push(0x80);
    b.push(pt | if marker { 0x80 } else { 0 });
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&ts.to_be_bytes());
    b.extend_from_slice(&ssrc.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> BroadcastTarget {
        BroadcastTarget {
            video: "127.0.0.1:5000".parse().unwrap(),
            audio: vec![
                "127.0.0.1:5002".parse().unwrap(),
                "127.0.0.1:5004".parse().unwrap(),
            ],
            max_height: 720,
            filler: vec![7; 2500],
        }
    }

    fn hdr(d: &[u8]) -> (u8, bool, u16, u32, u32) {
        (
            d[1] & 0x7f,
            d[1] & 0x80 != 0,
            u16::from_be_bytes([d[2], d[3]]),
            u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
            u32::from_be_bytes([d[8], d[9], d[10], d[11]]),
        )
    }

    fn vp(sender: EpId, seq: u64, ts: u32, keyframe: bool) -> VideoIn<'static> {
        VideoIn {
            sender,
            source: sender * 10,
            layer: 0,
            seq,
            ts,
            keyframe,
            marker: true,
            payload: &[0x10, 1, 2, 3],
        }
    }

    #[test]
    fn quiet_slots_get_silence_and_the_picture_a_filler() {
        let t0 = Instant::now();
        let mut b = Broadcast::new(target(), t0, 1000);
        let mut out = Vec::new();
        assert!(!b.tick(t0, &mut out), "nothing on stage: no keyframe wish");
        // One silence frame per slot, and a filler frame in three packets (2500 bytes).
        let audio: Vec<_> = out.iter().filter(|(to, _)| to.port() != 5000).collect();
        assert_eq!(audio.len(), 2);
        assert!(audio.iter().all(|(_, d)| d[12..] == OPUS_SILENCE));
        let video: Vec<_> = out.iter().filter(|(to, _)| to.port() == 5000).collect();
        assert_eq!(video.len(), 3);
        assert_eq!(video[0].1[12], 0x10, "start of the frame");
        assert_eq!(video[1].1[12], 0x00);
        assert!(hdr(&video[2].1).1, "the last packet is marked");
        assert_eq!(hdr(&video[0].1).2 + 2, hdr(&video[2].1).2);
        // 100 ms later: five more silence frames per slot, continuous.
        out.clear();
        for i in 1..=5 {
            b.tick(t0 + AUDIO_FRAME * i, &mut out);
        }
        let slot0: Vec<_> = out
            .iter()
            .filter(|(to, _)| to.port() == 5002)
            .map(|(_, d)| hdr(d))
            .collect();
        assert_eq!(slot0.len(), 5);
        for w in slot0.windows(2) {
            assert_eq!(w[0].2.wrapping_add(1), w[1].2);
            assert_eq!(w[0].3.wrapping_add(960), w[1].3);
        }
    }

    #[test]
    fn a_speaker_takes_a_slot_and_continues_its_numbering() {
        let t0 = Instant::now();
        let mut b = Broadcast::new(target(), t0, 1000);
        let mut out = Vec::new();
        b.tick(t0, &mut out);
        let last = out
            .iter()
            .filter(|(to, _)| to.port() == 5002)
            .map(|(_, d)| hdr(d))
            .next_back()
            .unwrap();
        out.clear();
        let t1 = t0 + Duration::from_millis(20);
        b.audio(1, 10, 500, 777_000, &[1, 2, 3, 4], t1, &mut out);
        b.audio(
            1,
            10,
            501,
            777_960,
            &[1, 2, 3, 4],
            t1 + AUDIO_FRAME,
            &mut out,
        );
        // Another sender gets the second slot; a third finds none.
        b.audio(2, 20, 9, 5, &[9], t1, &mut out);
        b.audio(3, 30, 9, 5, &[9], t1, &mut out);
        assert_eq!(out.len(), 3);
        let (pt, _, seq, ts, ssrc) = hdr(&out[0].1);
        assert_eq!((pt, seq, ts), (AUDIO_PT, last.2 + 1, last.3 + 960));
        assert_eq!(ssrc, last.4);
        assert_eq!(hdr(&out[1].1).3, ts + 960);
        assert_eq!(out[2].0.port(), 5004);
        // A late packet is dropped; while the speaker talks, no silence is added.
        out.clear();
        b.audio(1, 10, 500, 777_000, &[1], t1 + AUDIO_FRAME * 2, &mut out);
        b.tick(t1 + AUDIO_FRAME, &mut out);
        assert!(out.iter().all(|(to, _)| to.port() != 5002), "{out:?}");
    }

    #[test]
    fn a_speaker_whose_packets_come_in_bursts_stays_with_the_clock() {
        // A speaker's 20 ms frames arrive late in bursts (a busy sender or network): after
        // each 200 ms pause, ten at once. The slot fills each pause with silence; what
        // comes late may run ahead of the clock for a while, but pauses must not add up.
        let t0 = Instant::now();
        let mut b = Broadcast::new(target(), t0, 1000);
        let mut out = Vec::new();
        let (mut seq, mut ts) = (100u64, 5_000u32);
        let mut now = t0;
        for _ in 0..50 {
            // A pause: only the clock.
            for _ in 0..10 {
                now += AUDIO_FRAME;
                b.tick(now, &mut out);
            }
            // Ten frames at once, then the speaker stops (a word).
            for _ in 0..10 {
                b.audio(1, 10, seq, ts, &[1], now, &mut out);
                seq += 1;
                ts = ts.wrapping_add(960);
            }
            for _ in 0..5 {
                now += AUDIO_FRAME;
                b.tick(now, &mut out);
            }
        }
        // 50 rounds of 300 ms: 15 s on the clock. The slot's last frame is within one burst
        // of it (before, every pause put it 200 ms further ahead: 10 s by now).
        let last = out
            .iter()
            .filter(|(to, _)| to.port() == 5002)
            .map(|(_, d)| hdr(d).3)
            .next_back()
            .unwrap();
        let clock = b.wall_ts(now);
        let ahead_ms = i64::from(last.wrapping_sub(clock) as i32) / 48;
        assert!(ahead_ms <= 200, "{ahead_ms} ms ahead of the clock");
        assert!(ahead_ms >= -20, "{ahead_ms} ms behind the clock");
    }

    #[test]
    fn video_waits_for_a_keyframe_of_the_on_stage_source_and_switches_on_one() {
        let t0 = Instant::now();
        let mut b = Broadcast::new(target(), t0, 1000);
        let mut out = Vec::new();
        assert!(!b.video(&vp(1, 100, 9000, true), Some(0), t0, &mut out));
        assert!(out.is_empty(), "not on stage");
        assert!(b.set_on_stage(Some((1, 10))));
        assert!(b.video(&vp(1, 101, 12000, false), Some(0), t0, &mut out));
        assert!(out.is_empty(), "waits for a keyframe");
        assert!(!b.video(&vp(1, 102, 15000, true), Some(0), t0, &mut out));
        assert!(!b.video(&vp(1, 103, 18000, false), Some(0), t0, &mut out));
        assert_eq!(out.len(), 2);
        let (a, c) = (hdr(&out[0].1), hdr(&out[1].1));
        assert_eq!((a.0, c.2, c.3), (VIDEO_PT, a.2 + 1, a.3 + 3000));
        // Speaker 2 on stage: 1's packets stop, 2's start at its keyframe, numbered on.
        out.clear();
        b.set_on_stage(Some((2, 20)));
        b.video(&vp(1, 104, 21000, false), Some(0), t0, &mut out);
        assert!(b.video(&vp(2, 7, 50, false), Some(0), t0, &mut out));
        let t1 = t0 + Duration::from_millis(100);
        b.video(&vp(2, 8, 3050, true), Some(0), t1, &mut out);
        assert_eq!(out.len(), 1);
        let d = hdr(&out[0].1);
        assert_eq!(d.2, c.2 + 1);
        assert_eq!(d.3, c.3 + 9000, "100 ms later on the 90 kHz clock");
        assert_eq!(d.4, c.4, "one SSRC");
        assert_eq!(b.stats.switches, 1);
    }

    #[test]
    fn no_filler_while_video_flows() {
        let t0 = Instant::now();
        let mut b = Broadcast::new(target(), t0, 1000);
        b.set_on_stage(Some((1, 10)));
        let mut out = Vec::new();
        b.video(&vp(1, 1, 0, true), Some(0), t0, &mut out);
        out.clear();
        assert!(!b.tick(t0 + Duration::from_millis(500), &mut out));
        assert!(out.iter().all(|(to, _)| to.port() != 5000));
        // The source stops: after a second the filler, and a keyframe wish.
        assert!(b.tick(t0 + Duration::from_millis(1100), &mut out));
        assert!(out.iter().any(|(to, _)| to.port() == 5000));
        assert_eq!(b.stats.filler_frames, 1);
    }
}

/// A source counts as sending video when one of its layers sent this recently.
const VIDEO_ACTIVE: Duration = Duration::from_millis(1500);

impl super::MediaEngine {
    /// Start (`Some`) or stop (`None`) the live-stream feed of `conference` (docs/streaming.md).
    /// The conference is kept while a feed runs, also with no endpoints in it.
    pub fn set_broadcast(&mut self, conference: &str, target: Option<BroadcastTarget>) {
        let now = self.now.unwrap_or(self.clock.instant);
        match target {
            Some(t) => {
                let ssrc = self.rng.random::<u32>() | 1;
                let c = self.conferences.entry(conference.to_string()).or_default();
                c.broadcast = Some(Broadcast::new(t, now, ssrc));
            }
            None => {
                if let Some(c) = self.conferences.get_mut(conference) {
                    c.broadcast = None;
                    if c.members.is_empty() {
                        self.conferences.remove(conference);
                    }
                }
            }
        }
        self.pending_sender_constraints
            .insert(conference.to_string());
    }

    /// The counts of a conference's live-stream feed, while one runs.
    pub fn broadcast_stats(&self, conference: &str) -> Option<BroadcastStats> {
        self.conferences
            .get(conference)
            .and_then(|c| c.broadcast.as_ref())
            .map(|b| b.stats)
    }

    /// The video source a live stream shows: the newest screen share that is sending, else
    /// the camera of the most recent speaker that is sending video, else the one shown
    /// already while it sends, else the first member's camera that sends.
    fn broadcast_on_stage(&self, conference: &str, now: Instant) -> Option<(EpId, SourceId)> {
        let c = self.conferences.get(conference)?;
        let sending = |id: EpId, desktop: Option<bool>| {
            let ep = self.endpoints.get(&id)?;
            ep.rx
                .sources
                .iter()
                .filter(|s| s.kind == MediaType::Video)
                .filter(|s| desktop.is_none_or(|d| (s.video_type == "DESKTOP") == d))
                .filter(|s| {
                    s.layers.iter().any(|l| {
                        l.last_seen
                            .is_some_and(|t| now.saturating_duration_since(t) < VIDEO_ACTIVE)
                    })
                })
                .max_by_key(|s| s.first_seen)
                .map(|s| (id, s.id))
        };
        if let Some(share) = c
            .members
            .iter()
            .filter_map(|id| sending(*id, Some(true)))
            .max_by_key(|(id, sid)| {
                self.endpoints
                    .get(id)
                    .and_then(|e| e.rx.sources.iter().find(|s| s.id == *sid))
                    .and_then(|s| s.first_seen)
            })
        {
            return Some(share);
        }
        if let Some(s) = c
            .recent_speakers()
            .iter()
            .find_map(|id| sending(*id, Some(false)))
        {
            return Some(s);
        }
        if let Some((id, _)) = c.broadcast.as_ref().and_then(|b| b.on_stage())
            && let Some(s) = sending(id, None)
        {
            return Some(s);
        }
        if let Some(s) = c.members.iter().find_map(|id| sending(*id, None)) {
            return Some(s);
        }
        // Nobody sends: a camera that is signalled, the most recent speaker's first. A sender
        // nobody else watches (a teacher alone) has stopped sending; on stage, the feed's
        // wish for its height asks it to start again.
        let camera = |id: EpId| {
            let ep = self.endpoints.get(&id)?;
            ep.rx
                .sources
                .iter()
                .find(|s| s.kind == MediaType::Video && s.video_type != "DESKTOP")
                .map(|s| (id, s.id))
        };
        c.recent_speakers()
            .iter()
            .copied()
            .chain(c.members.iter().copied())
            .find_map(camera)
    }

    /// The feed's clock: choose what is on stage, fill silence and pictures, ask for
    /// keyframes.
    pub(super) fn broadcast_tick(&mut self, conference: &str, now: Instant) {
        let on_stage = self.broadcast_on_stage(conference, now);
        let Some(b) = self
            .conferences
            .get_mut(conference)
            .and_then(|c| c.broadcast.as_mut())
        else {
            return;
        };
        if now < b.next_timeout() {
            return;
        }
        let mut wish = false;
        if b.set_on_stage(on_stage) {
            self.pending_sender_constraints
                .insert(conference.to_string());
            wish = true;
        }
        let mut out = Vec::new();
        wish |= b.tick(now, &mut out);
        let ask = wish && on_stage.is_some() && b.may_request_keyframe(now);
        self.queue_broadcast(out);
        if ask && let Some((ep, sid)) = on_stage {
            self.broadcast_keyframe(ep, sid, now);
        }
    }

    /// Ask the on-stage source for a keyframe of the layer the feed takes.
    fn broadcast_keyframe(&mut self, ep: EpId, sid: SourceId, now: Instant) {
        let Some(e) = self.endpoints.get(&ep) else {
            return;
        };
        let Some(src) = e.rx.sources.iter().find(|s| s.id == sid) else {
            return;
        };
        let (views, n) = src.layer_views(now);
        let max = self
            .conferences
            .get(&e.conference)
            .and_then(|c| c.broadcast.as_ref())
            .map_or(0, |b| b.target().max_height);
        let name = src.name.clone();
        if let Some(layer) = select_layer(&views[..n], max) {
            self.request_keyframe(ep, &name, layer);
        }
    }

    fn queue_broadcast(&mut self, out: Vec<Datagram>) {
        self.stats.broadcast_packets += out.len() as u64;
        for (to, data) in out {
            super::queue_transmit(
                &mut self.out,
                &mut self.stats,
                super::Path {
                    from: to,
                    to,
                    proto: super::Protocol::Udp,
                },
                data,
            );
        }
    }

    /// One forwarded packet for the conference's feed, if one runs (called by `forward`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn broadcast_packet(
        &mut self,
        sender: EpId,
        g: &super::Ingested,
        pt: u8,
        marker: bool,
        payload: &[u8],
        now: Instant,
    ) {
        let Some(ep) = self.endpoints.get(&sender) else {
            return;
        };
        let Some(b) = self
            .conferences
            .get_mut(&ep.conference)
            .and_then(|c| c.broadcast.as_mut())
        else {
            return;
        };
        let mut out = Vec::new();
        let mut keyframe = false;
        match g.kind {
            MediaType::Audio => {
                let body = if pt == crate::codecs::RED_PT {
                    match crate::rtp::red::primary(payload) {
                        Some((crate::codecs::OPUS_PT, data)) => data,
                        _ => return,
                    }
                } else if pt == crate::codecs::OPUS_PT {
                    payload
                } else {
                    return;
                };
                b.audio(
                    sender,
                    g.source_id,
                    g.input.seq,
                    g.input.ts,
                    body,
                    now,
                    &mut out,
                );
            }
            MediaType::Video => {
                if g.vp8.is_none() {
                    return;
                }
                let target = b.layer(&g.views[..g.nviews]);
                let p = VideoIn {
                    sender,
                    source: g.source_id,
                    layer: g.li,
                    seq: g.input.seq,
                    ts: g.input.ts,
                    keyframe: g.keyframe,
                    marker,
                    payload,
                };
                let switches = b.stats.switches;
                keyframe = b.video(&p, target, now, &mut out) && b.may_request_keyframe(now);
                self.stats.broadcast_switches += b.stats.switches - switches;
            }
        }
        self.queue_broadcast(out);
        if keyframe {
            self.broadcast_keyframe(sender, g.source_id, now);
        }
    }
}
