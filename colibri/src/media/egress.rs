//! The send side of the fast path: the retransmission ring of a forwarded stream (what NACKs
//! are answered from) and the counts behind the sender reports the bridge sends for it. The
//! packet formats are in `crate::rtp`; the keys in `srtp.rs`. Sans-IO.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::rtp::ExtOut;
use crate::rtp::rtcp::sr::{self, Clock};

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
    pub payload: super::buf::Buf,
    pub ext: ExtOut,
    /// SVC: the spatial layer of the frame this packet ends.
    pub end_spatial: Option<u8>,
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

/// What a sender report of a forwarded stream needs.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct SendStats {
    pub packets: u32,
    pub octets: u32,
    /// The last packet's RTP timestamp and when its original arrived.
    pub last: Option<(u32, Instant)>,
}

/// Append an SR (RFC 3550 §6.4.1, no report blocks) for a stream at `now`: the last
/// packet's RTP timestamp extrapolated to `now` at `clock_rate`.
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
    sr::write(buf, ssrc, clock.ntp(now), rtp, s.packets, s.octets);
}

#[cfg(test)]
mod tests {
    use super::*;

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
            payload: super::super::buf::Buf::copy_of(&[seq as u8]),
            ext: ExtOut::default(),
            end_spatial: None,
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
        let clock = Clock {
            instant: Instant::now(),
            system: std::time::SystemTime::now(),
        };
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
