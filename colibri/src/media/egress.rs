//! The forwarding fast path's wire work: RTP headers and header extensions towards a receiver,
//! VP8 descriptor rewriting, the retransmission ring of a forwarded stream, the RTCP feedback a
//! receiver sends about forwarded streams (NACK, PLI, FIR) and the sender reports the bridge
//! sends for them. All sans-IO; the keys are in `srtp.rs`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Header extension ids negotiated with one receiver (0: not negotiated).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ExtIds {
    pub audio_level: u8,
    pub video_orientation: u8,
    pub dependency_descriptor: u8,
    /// Read from senders (the fast path does not write it: no bandwidth estimation).
    pub transport_cc: u8,
}

/// Header extension values of one forwarded packet (shared by all its receivers).
#[derive(Debug, Clone, Default)]
pub(super) struct ExtOut {
    /// The ssrc-audio-level byte (V bit and level), RFC 6464.
    pub audio_level: Option<u8>,
    /// The CVO byte (urn:3gpp:video-orientation).
    pub video_orientation: Option<u8>,
    pub dependency_descriptor: Option<Arc<[u8]>>,
}

/// The fields of one forwarded RTP packet that differ per receiver.
#[derive(Debug, Clone, Copy)]
pub(super) struct RtpOut {
    pub pt: u8,
    pub marker: bool,
    pub seq: u16,
    pub ts: u32,
    pub ssrc: u32,
}

/// Append the RTP header (RFC 3550 §5.1) with the extensions `ids` allows (RFC 8285: the
/// one-byte form, or the two-byte form when a value does not fit it).
pub(super) fn write_header(
    buf: &mut Vec<u8>,
    h: &RtpOut,
    ids: &ExtIds,
    ext: &ExtOut,
    transport_seq: Option<u16>,
) {
    let mut items: [(u8, &[u8]); 4] = [(0, &[]); 4];
    let mut n = 0;
    let al;
    let vo;
    let tw;
    if let (id @ 1..=14, Some(v)) = (ids.transport_cc, transport_seq) {
        tw = v.to_be_bytes();
        items[n] = (id, &tw);
        n += 1;
    }
    if let (id @ 1..=14, Some(v)) = (ids.audio_level, ext.audio_level) {
        al = [v];
        items[n] = (id, &al);
        n += 1;
    }
    if let (id @ 1..=14, Some(v)) = (ids.video_orientation, ext.video_orientation) {
        vo = [v];
        items[n] = (id, &vo);
        n += 1;
    }
    if let (id @ 1..=14, Some(v)) = (ids.dependency_descriptor, &ext.dependency_descriptor)
        && !v.is_empty()
        && v.len() <= 255
    {
        items[n] = (id, v);
        n += 1;
    }
    let items = &items[..n];
    buf.push(0x80 | if items.is_empty() { 0 } else { 0x10 });
    buf.push(h.pt & 0x7f | if h.marker { 0x80 } else { 0 });
    buf.extend_from_slice(&h.seq.to_be_bytes());
    buf.extend_from_slice(&h.ts.to_be_bytes());
    buf.extend_from_slice(&h.ssrc.to_be_bytes());
    if items.is_empty() {
        return;
    }
    let two_byte = items.iter().any(|(_, v)| v.len() > 16);
    let start = buf.len();
    buf.extend_from_slice(if two_byte {
        &[0x10, 0x00, 0, 0]
    } else {
        &[0xBE, 0xDE, 0, 0]
    });
    for (id, v) in items {
        if two_byte {
            buf.push(*id);
            buf.push(v.len() as u8);
        } else {
            buf.push(id << 4 | (v.len() as u8 - 1));
        }
        buf.extend_from_slice(v);
    }
    while !(buf.len() - start).is_multiple_of(4) {
        buf.push(0);
    }
    let words = ((buf.len() - start - 4) / 4) as u16;
    buf[start + 2..start + 4].copy_from_slice(&words.to_be_bytes());
}

/// Rewrite the PictureID and TL0PICIDX of a VP8 payload descriptor (RFC 7741 §4.2) in place,
/// keeping the PictureID's width (a 7-bit one gets the low bits).
pub(super) fn patch_vp8(payload: &mut [u8], picture_id: Option<u16>, tl0: Option<u8>) {
    let Some(&b0) = payload.first() else {
        return;
    };
    if b0 & 0x80 == 0 {
        return;
    }
    let Some(&x) = payload.get(1) else {
        return;
    };
    let mut i = 2;
    if x & 0x80 != 0 {
        let Some(&p0) = payload.get(i) else {
            return;
        };
        if p0 & 0x80 != 0 {
            if let (Some(pid), true) = (picture_id, payload.len() > i + 1) {
                payload[i] = 0x80 | ((pid >> 8) as u8 & 0x7f);
                payload[i + 1] = pid as u8;
            }
            i += 2;
        } else {
            if let Some(pid) = picture_id {
                payload[i] = pid as u8 & 0x7f;
            }
            i += 1;
        }
    }
    if x & 0x40 != 0
        && let (Some(t), Some(b)) = (tl0, payload.get_mut(i))
    {
        *b = t;
    }
}

/// A packet of a sender's stream kept to answer receivers' NACKs (as the sender sent it; each
/// receiver's offsets are applied when it is resent).
#[derive(Debug, Clone)]
pub(super) struct Sent {
    pub seq: u64,
    pub ts: u32,
    pub pt: u8,
    pub marker: bool,
    pub picture_id: Option<u16>,
    pub tl0: Option<u8>,
    pub at: Instant,
    pub payload: super::buf::Payload,
    pub ext: ExtOut,
}

/// A NACKed packet is resent to one receiver at most once per this interval.
pub(super) const RESEND_INTERVAL: Duration = Duration::from_millis(100);

/// The packets most recently forwarded from one sender's stream (one simulcast layer), oldest
/// first, bounded by count and age. One per sender layer, not per receiver (as JVB does).
#[derive(Debug, Default, Clone)]
pub(super) struct RtxRing {
    ring: VecDeque<Sent>,
}

impl RtxRing {
    pub fn push(&mut self, s: Sent, max: usize, max_age: Duration) {
        while self.ring.len() >= max.max(1) {
            self.ring.pop_front();
        }
        while self
            .ring
            .front()
            .is_some_and(|f| s.at.saturating_duration_since(f.at) > max_age)
        {
            self.ring.pop_front();
        }
        // Sequence numbers only grow on a stream (projection): an older one is a late or
        // repaired packet, already in the ring or past it.
        if self.ring.back().is_some_and(|b| b.seq >= s.seq) {
            return;
        }
        self.ring.push_back(s);
    }

    /// The packet with (extended) sequence number `seq`.
    pub fn get(&self, seq: u64) -> Option<&Sent> {
        let i = self.ring.binary_search_by_key(&seq, |s| s.seq).ok()?;
        self.ring.get(i)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ring.len()
    }
}

/// What a receiver's RTCP asks about a stream the bridge sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Feedback {
    Nack {
        ssrc: u32,
        seqs: Vec<u16>,
    },
    Keyframe {
        ssrc: u32,
    },
    /// A sender report about one of the endpoint's own streams: the middle 32 bits of its NTP
    /// time, for the LSR field of the bridge's receiver reports.
    SenderReport {
        ssrc: u32,
        ntp_mid: u32,
    },
    /// Transport-cc feedback about what the bridge sent the endpoint.
    TransportCc(super::bwe::TwccFeedback),
}

/// NACKs (RFC 4585 §6.2.1), PLIs (§6.3.1) and FIRs (RFC 5104 §4.3.1) in a compound RTCP
/// packet. Malformed parts end the walk; at most `max_nacks` sequence numbers are taken.
pub(super) fn parse_feedback(rtcp: &[u8], max_nacks: usize, out: &mut Vec<Feedback>) {
    let mut rest = rtcp;
    let mut nacks = 0;
    while rest.len() >= 4 {
        let (b0, pt) = (rest[0], rest[1]);
        let len = (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1) * 4;
        if b0 >> 6 != 2 || len > rest.len() {
            return;
        }
        let pkt = &rest[..len];
        rest = &rest[len..];
        let fmt = b0 & 0x1f;
        if pt == 200 && pkt.len() >= 28 {
            let ssrc = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
            let ntp_mid = u32::from_be_bytes([pkt[10], pkt[11], pkt[12], pkt[13]]);
            out.push(Feedback::SenderReport { ssrc, ntp_mid });
            continue;
        }
        if pkt.len() < 12 {
            continue;
        }
        let media = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
        match (pt, fmt) {
            (205, 1) => {
                let mut seqs = Vec::new();
                for fci in pkt[12..].chunks_exact(4) {
                    let pid = u16::from_be_bytes([fci[0], fci[1]]);
                    let blp = u16::from_be_bytes([fci[2], fci[3]]);
                    for k in 0..17u16 {
                        if (k == 0 || blp & (1 << (k - 1)) != 0) && nacks < max_nacks {
                            seqs.push(pid.wrapping_add(k));
                            nacks += 1;
                        }
                    }
                }
                if !seqs.is_empty() {
                    out.push(Feedback::Nack { ssrc: media, seqs });
                }
            }
            (206, 1) => out.push(Feedback::Keyframe { ssrc: media }),
            (205, 15) => {
                if let Some(fb) = super::bwe::parse_twcc(pkt) {
                    out.push(Feedback::TransportCc(fb));
                }
            }
            (206, 4) => {
                for fci in pkt[12..].chunks_exact(8) {
                    let ssrc = u32::from_be_bytes([fci[0], fci[1], fci[2], fci[3]]);
                    out.push(Feedback::Keyframe { ssrc });
                }
            }
            _ => {}
        }
    }
}

/// What a sender report of a forwarded stream needs.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct SendStats {
    pub packets: u32,
    pub octets: u32,
    /// The last packet's RTP timestamp and when its original arrived.
    pub last: Option<(u32, Instant)>,
}

/// Wall-clock time for an `Instant`, from one reference pair.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    pub instant: Instant,
    pub system: SystemTime,
}

impl Clock {
    pub fn now() -> Clock {
        Clock {
            instant: Instant::now(),
            system: SystemTime::now(),
        }
    }

    /// 64-bit NTP timestamp of `at`.
    pub fn ntp(&self, at: Instant) -> u64 {
        let t = if at >= self.instant {
            self.system + (at - self.instant)
        } else {
            self.system - (self.instant - at)
        };
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs() + 2_208_988_800;
        let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
        (secs << 32) | frac
    }
}

/// Append an SR (RFC 3550 §6.4.1, no report blocks) for a stream at `now`.
pub(super) fn write_sr(
    buf: &mut Vec<u8>,
    ssrc: u32,
    s: &SendStats,
    clock_rate: u32,
    now: Instant,
    clock: &Clock,
) {
    let Some((ts, at)) = s.last else {
        return;
    };
    let elapsed = now.saturating_duration_since(at);
    let rtp =
        ts.wrapping_add((elapsed.as_micros() as u64 * u64::from(clock_rate) / 1_000_000) as u32);
    buf.extend_from_slice(&[0x80, 200, 0, 6]);
    buf.extend_from_slice(&ssrc.to_be_bytes());
    buf.extend_from_slice(&clock.ntp(now).to_be_bytes());
    buf.extend_from_slice(&rtp.to_be_bytes());
    buf.extend_from_slice(&s.packets.to_be_bytes());
    buf.extend_from_slice(&s.octets.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_with_one_and_two_byte_extensions() {
        let h = RtpOut {
            pt: 111,
            marker: true,
            seq: 0x1234,
            ts: 0xdeadbeef,
            ssrc: 7,
        };
        let ids = ExtIds {
            audio_level: 1,
            video_orientation: 0,
            dependency_descriptor: 11,
            transport_cc: 0,
        };
        let mut b = Vec::new();
        write_header(&mut b, &h, &ids, &ExtOut::default(), None);
        assert_eq!(
            b,
            [0x80, 0xEF, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 7]
        );
        b.clear();
        let ext = ExtOut {
            audio_level: Some(0x80 | 30),
            ..ExtOut::default()
        };
        write_header(&mut b, &h, &ids, &ext, None);
        assert_eq!(&b[12..], [0xBE, 0xDE, 0, 1, 0x10, 0x9E, 0, 0]);
        assert_eq!(b[0], 0x90);
        b.clear();
        let ext = ExtOut {
            dependency_descriptor: Some(Arc::from(vec![9u8; 20])),
            ..ExtOut::default()
        };
        write_header(&mut b, &h, &ids, &ext, None);
        assert_eq!(&b[12..18], [0x10, 0x00, 0, 6, 11, 20]);
        assert_eq!(b.len(), 12 + 4 + 24);
    }

    #[test]
    fn vp8_picture_id_and_tl0_are_patched_in_place() {
        // X, I (15-bit), L.
        let mut p = [0x90, 0xC0, 0x81, 0x02, 0x05, 0xAA];
        patch_vp8(&mut p, Some(0x1234), Some(9));
        assert_eq!(p, [0x90, 0xC0, 0x92, 0x34, 9, 0xAA]);
        // 7-bit PictureID keeps its width.
        let mut p = [0x90, 0x80, 0x05, 0xAA];
        patch_vp8(&mut p, Some(0x1234), None);
        assert_eq!(p, [0x90, 0x80, 0x34, 0xAA]);
        // No extension: untouched; truncated input: no panic.
        let mut p = [0x10, 0xAA];
        patch_vp8(&mut p, Some(1), Some(1));
        assert_eq!(p, [0x10, 0xAA]);
        let mut p = [0x90, 0xC0, 0x81];
        patch_vp8(&mut p, Some(1), Some(1));
        patch_vp8(&mut [], Some(1), Some(1));
    }

    #[test]
    fn feedback_parsing() {
        let mut rtcp = Vec::new();
        // RR (ignored), NACK for 100 and 102, PLI, FIR.
        rtcp.extend_from_slice(&[0x80, 201, 0, 1, 0, 0, 0, 1]);
        rtcp.extend_from_slice(&[0x81, 205, 0, 3, 0, 0, 0, 1, 0, 0, 0, 5, 0, 100, 0, 2]);
        rtcp.extend_from_slice(&[0x81, 206, 0, 2, 0, 0, 0, 1, 0, 0, 0, 6]);
        rtcp.extend_from_slice(&[
            0x84, 206, 0, 4, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 8, 1, 0, 0, 0,
        ]);
        let mut out = Vec::new();
        parse_feedback(&rtcp, 100, &mut out);
        assert_eq!(
            out,
            [
                Feedback::Nack {
                    ssrc: 5,
                    seqs: vec![100, 102]
                },
                Feedback::Keyframe { ssrc: 6 },
                Feedback::Keyframe { ssrc: 8 },
            ]
        );
        // Garbage and truncation end the walk without panicking.
        out.clear();
        parse_feedback(&[0x81, 205, 0xff, 0xff, 1, 2], 100, &mut out);
        parse_feedback(&[0xff; 3], 100, &mut out);
        assert!(out.is_empty());
        // The NACK budget bounds the work.
        parse_feedback(&rtcp, 1, &mut out);
        assert_eq!(
            out[0],
            Feedback::Nack {
                ssrc: 5,
                seqs: vec![100]
            }
        );
    }

    #[test]
    fn ring_finds_by_sequence_number_across_gaps_and_bounds() {
        let t0 = Instant::now();
        let sent = |seq: u64, ms: u64| Sent {
            seq,
            ts: 0,
            pt: 100,
            marker: false,
            picture_id: None,
            tl0: None,
            at: t0 + Duration::from_millis(ms),
            payload: super::super::buf::Buf::payload(&[seq as u8]),
            ext: ExtOut::default(),
        };
        let mut r = RtxRing::default();
        for (i, seq) in [65_534u64, 65_535, 65_536, 65_540, 65_541]
            .iter()
            .enumerate()
        {
            r.push(sent(*seq, i as u64), 10, Duration::from_secs(1));
        }
        assert_eq!(r.get(65_536).map(|s| s.seq), Some(65_536));
        assert_eq!(r.get(65_540).map(|s| s.seq), Some(65_540));
        assert_eq!(r.get(65_535).map(|s| s.seq), Some(65_535));
        assert!(r.get(65_538).is_none(), "never forwarded");
        assert!(r.get(1000).is_none());
        r.push(sent(65_539, 5), 10, Duration::from_secs(1));
        assert!(r.get(65_539).is_none(), "late: not kept");
        r.push(sent(65_542, 2000), 10, Duration::from_secs(1));
        assert_eq!(r.len(), 1, "older than the age limit");
        for i in 0..20 {
            r.push(sent(70_000 + i, 2001), 10, Duration::from_secs(1));
        }
        assert_eq!(r.len(), 10);
    }

    #[test]
    fn sender_report_extrapolates_the_timestamp() {
        let clock = Clock::now();
        let at = clock.instant;
        let s = SendStats {
            packets: 3,
            octets: 300,
            last: Some((1000, at)),
        };
        let mut b = Vec::new();
        write_sr(
            &mut b,
            9,
            &s,
            90_000,
            at + Duration::from_millis(100),
            &clock,
        );
        assert_eq!(b.len(), 28);
        assert_eq!(&b[..8], [0x80, 200, 0, 6, 0, 0, 0, 9]);
        assert_eq!(
            u32::from_be_bytes([b[16], b[17], b[18], b[19]]),
            1000 + 9000
        );
        assert_eq!(u32::from_be_bytes([b[20], b[21], b[22], b[23]]), 3);
    }
}
