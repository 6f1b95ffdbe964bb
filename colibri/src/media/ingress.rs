//! The receive side of the fast path: per-stream reception statistics and loss tracking
//! (what goes into receiver reports and NACKs), and the record of transport-wide sequence
//! numbers behind the transport-cc feedback the senders' bandwidth estimation needs. The
//! packet formats are in `crate::rtp`; `srtp.rs` decrypts. Sans-IO.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::rtp::extend_seq;
use crate::rtp::rtcp::rr::ReportBlock;
use crate::rtp::rtcp::twcc::{self, FeedbackHeader};

/// A missing packet of a stream, until it arrives or is given up.
#[derive(Debug, Clone, Copy)]
struct Missing {
    since: Instant,
    tries: u8,
    last_sent: Option<Instant>,
}

/// Packets tracked as missing per stream at most.
pub(super) const MAX_MISSING: usize = 512;
/// A missing packet is NACKed at most this often…
const NACK_INTERVAL: Duration = Duration::from_millis(100);
/// …this many times…
const NACK_TRIES: u8 = 5;
/// …and not after this long.
const NACK_MAX_AGE: Duration = Duration::from_secs(1);

/// Reception state of one incoming stream (one simulcast layer): RFC 3550 §6.4.1 statistics and
/// §A.8 jitter, and the missing sequence numbers to NACK.
#[derive(Debug, Default, Clone)]
pub(super) struct RxStream {
    base: Option<u64>,
    max: u64,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Interarrival jitter in timestamp units (×16, as RFC 3550 computes it).
    jitter16: u64,
    last_transit: Option<i64>,
    /// Middle 32 bits of the NTP time of the sender's last SR, and when it arrived.
    pub last_sr: Option<(u32, Instant)>,
    missing: BTreeMap<u64, Missing>,
}

impl RxStream {
    /// The highest extended sequence number seen.
    pub fn max(&self) -> Option<u64> {
        self.base.map(|_| self.max)
    }

    /// A packet arrived (`seq` extended; `clock_rate` for the jitter). With `track_loss`,
    /// returns false for a duplicate: a sequence number at or below the highest that is not
    /// missing (received already, or given up on). Senders resend packets as RTX to probe their
    /// bandwidth (Chromium does): forwarding those again would make receivers drop them as
    /// SRTP replays.
    pub fn on_packet(
        &mut self,
        seq: u64,
        ts: u32,
        arrival: Instant,
        epoch: Instant,
        clock_rate: u32,
        track_loss: bool,
    ) -> bool {
        match self.base {
            None => {
                self.base = Some(seq);
                self.max = seq;
            }
            Some(_) if seq > self.max => {
                let gap = seq - self.max - 1;
                if track_loss && gap > 0 {
                    if gap as usize > MAX_MISSING {
                        self.missing.clear();
                    } else {
                        for s in self.max + 1..seq {
                            self.missing.insert(
                                s,
                                Missing {
                                    since: arrival,
                                    tries: 0,
                                    last_sent: None,
                                },
                            );
                        }
                        while self.missing.len() > MAX_MISSING {
                            self.missing.pop_first();
                        }
                    }
                }
                self.max = seq;
            }
            Some(_) => {
                if self.missing.remove(&seq).is_none() && track_loss {
                    return false;
                }
            }
        }
        self.received += 1;
        let arrival_ts = (arrival.saturating_duration_since(epoch).as_micros() as u64
            * u64::from(clock_rate)
            / 1_000_000) as i64;
        let transit = arrival_ts - i64::from(ts);
        if let Some(last) = self.last_transit {
            let d = (transit - last).unsigned_abs();
            // J += (|D| - J) / 16, kept ×16.
            self.jitter16 = self.jitter16 + d - (self.jitter16 + 8) / 16;
        }
        self.last_transit = Some(transit);
        true
    }

    /// Sequence numbers to NACK now (appended to `out`); gives up on old ones.
    pub fn due_nacks(&mut self, now: Instant, out: &mut Vec<u16>) {
        self.missing.retain(|seq, m| {
            if m.tries >= NACK_TRIES || now.saturating_duration_since(m.since) > NACK_MAX_AGE {
                return false;
            }
            if m.last_sent
                .is_none_or(|t| now.saturating_duration_since(t) >= NACK_INTERVAL)
            {
                m.tries += 1;
                m.last_sent = Some(now);
                out.push(*seq as u16);
            }
            true
        });
    }

    /// Append an RR report block about `ssrc` (RFC 3550 §6.4.1), or nothing before the first
    /// packet.
    pub fn write_report_block(&mut self, ssrc: u32, now: Instant, buf: &mut Vec<u8>) -> bool {
        let Some(base) = self.base else {
            return false;
        };
        let expected = self.max - base + 1;
        let lost = expected.saturating_sub(self.received);
        let expected_interval = expected - self.expected_prior;
        let received_interval = self.received - self.received_prior;
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        let fraction = (lost_interval << 8)
            .checked_div(expected_interval)
            .map_or(0, |f| f.min(255) as u8);
        let (lsr, dlsr) = match self.last_sr {
            Some((ntp, at)) => {
                let d = now.saturating_duration_since(at);
                (ntp, (d.as_micros() as u64 * 65_536 / 1_000_000) as u32)
            }
            None => (0, 0),
        };
        ReportBlock {
            ssrc,
            fraction_lost: fraction,
            cumulative_lost: lost.min(0x7f_ffff) as u32,
            highest_seq: self.max as u32,
            jitter: (self.jitter16 / 16) as u32,
            lsr,
            dlsr,
        }
        .write(buf);
        true
    }
}

/// Transport-wide sequence numbers seen since the last feedback, per endpoint.
#[derive(Debug, Default)]
pub(super) struct TwccRecorder {
    /// The first sequence number not yet reported.
    base: Option<u64>,
    /// Arrival (250 µs ticks since the engine's epoch) of `base`, `base + 1`, …
    arrivals: VecDeque<Option<i64>>,
    last: u64,
    fb_count: u8,
    pub media_ssrc: u32,
}

/// Sequence numbers one recorder tracks at most (a larger jump starts over).
const TWCC_WINDOW: usize = 2048;
/// Statuses per feedback packet at most.
const TWCC_MAX_STATUSES: usize = 1000;

impl TwccRecorder {
    pub fn record(&mut self, seq: u16, arrival: Instant, epoch: Instant) {
        let ext = match self.base {
            None => u64::from(seq) + (1 << 20),
            Some(_) => extend_seq(self.last, seq),
        };
        let base = *self.base.get_or_insert(ext);
        if ext < base {
            return; // Already reported as lost.
        }
        let idx = (ext - base) as usize;
        if idx >= TWCC_WINDOW {
            self.base = Some(ext);
            self.arrivals.clear();
            return self.record(seq, arrival, epoch);
        }
        if idx >= self.arrivals.len() {
            self.arrivals.resize(idx + 1, None);
        }
        let ticks = (arrival.saturating_duration_since(epoch).as_micros() / 250) as i64;
        self.arrivals[idx] = Some(ticks);
        self.last = self.last.max(ext);
    }

    /// Append one transport-cc feedback packet (RTPFB FMT 15) for what arrived since the last
    /// one; `false` when there is nothing to report.
    pub fn write_feedback(&mut self, buf: &mut Vec<u8>, sender: u32) -> bool {
        let Some(base) = self.base else {
            return false;
        };
        let Some(first_rx) = self.arrivals.iter().flatten().next().copied() else {
            return false;
        };
        let reference = first_rx.div_euclid(256);
        let mut prev = reference * 256;
        let mut statuses: Vec<u8> = Vec::new();
        let mut deltas: Vec<u8> = Vec::new();
        for a in self.arrivals.iter().take(TWCC_MAX_STATUSES) {
            match a {
                None => statuses.push(twcc::NOT_RECEIVED),
                Some(t) => {
                    let d = t - prev;
                    if (0..=255).contains(&d) {
                        statuses.push(twcc::SMALL_DELTA);
                        deltas.push(d as u8);
                    } else if let Ok(d) = i16::try_from(d) {
                        statuses.push(twcc::LARGE_DELTA);
                        deltas.extend_from_slice(&d.to_be_bytes());
                    } else {
                        break; // The rest goes in the next feedback.
                    }
                    prev = *t;
                }
            }
        }
        // Never end on a lost packet: those may still arrive.
        while statuses.last() == Some(&twcc::NOT_RECEIVED) {
            statuses.pop();
        }
        let n = statuses.len();
        if n == 0 {
            return false;
        }
        let header = FeedbackHeader {
            sender,
            media: self.media_ssrc,
            base: base as u16,
            reference: reference as u32,
            count: self.fb_count,
        };
        twcc::write(buf, &header, &statuses, &deltas);
        self.fb_count = self.fb_count.wrapping_add(1);
        self.arrivals.drain(..n);
        self.base = Some(base + n as u64);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_become_nacks_and_reports() {
        let t0 = Instant::now();
        let mut s = RxStream::default();
        for seq in [10u64, 11, 14, 15] {
            assert!(s.on_packet(seq, 0, t0, t0, 90_000, true));
        }
        // Duplicates (a sender's RTX probes resend what arrived): not fresh.
        assert!(!s.on_packet(11, 0, t0, t0, 90_000, true));
        assert!(!s.on_packet(15, 0, t0, t0, 90_000, true));
        let mut due = Vec::new();
        s.due_nacks(t0, &mut due);
        assert_eq!(due, [12, 13]);
        due.clear();
        s.due_nacks(t0 + Duration::from_millis(10), &mut due);
        assert!(due.is_empty(), "not again before the interval");
        assert!(
            s.on_packet(12, 0, t0, t0, 90_000, true),
            "a repair is fresh"
        );
        assert!(!s.on_packet(12, 0, t0, t0, 90_000, true));
        s.due_nacks(t0 + Duration::from_millis(150), &mut due);
        assert_eq!(due, [13], "12 was repaired");
        let mut b = Vec::new();
        assert!(s.write_report_block(5, t0, &mut b));
        assert_eq!(b.len(), 24);
        assert_eq!(u32::from(b[4]), 256 / 6, "1 of 6 lost");
        assert_eq!(u32::from_be_bytes([b[8], b[9], b[10], b[11]]), 15);
    }

    #[test]
    fn transport_cc_feedback_layout() {
        let t0 = Instant::now();
        let mut r = TwccRecorder {
            media_ssrc: 9,
            ..TwccRecorder::default()
        };
        // 100 and 101 1 ms apart, 102 lost, 103 70 ms later (a large delta).
        r.record(100, t0, t0);
        r.record(101, t0 + Duration::from_millis(1), t0);
        r.record(103, t0 + Duration::from_millis(71), t0);
        let mut b = Vec::new();
        assert!(r.write_feedback(&mut b, 1));
        assert_eq!(b[0] & 0x1f, 15);
        assert_eq!(b[1], 205);
        assert_eq!(u16::from_be_bytes([b[12], b[13]]), 100, "base");
        assert_eq!(u16::from_be_bytes([b[14], b[15]]), 4, "status count");
        assert_eq!(b[19], 0, "feedback count");
        // One chunk: 2-bit vector, statuses 1 1 0 2.
        assert_eq!(
            u16::from_be_bytes([b[20], b[21]]),
            0xC000 | 1 << 12 | 1 << 10 | 2 << 6
        );
        assert_eq!(b[22], 0, "first delta from the reference time");
        assert_eq!(b[23], 4, "1 ms = 4 ticks");
        assert_eq!(i16::from_be_bytes([b[24], b[25]]), 280);
        assert_eq!(b.len() % 4, 0);
        let words = u16::from_be_bytes([b[2], b[3]]) as usize;
        assert_eq!((words + 1) * 4, b.len());
        // Nothing new: nothing to send; the next one starts after 103.
        assert!(!r.write_feedback(&mut b, 1));
        r.record(104, t0 + Duration::from_millis(80), t0);
        let mut b2 = Vec::new();
        assert!(r.write_feedback(&mut b2, 1));
        assert_eq!(u16::from_be_bytes([b2[12], b2[13]]), 104);
        assert_eq!(b2[19], 1);
        // Late arrivals of reported numbers are ignored; wrap-around continues.
        r.record(102, t0 + Duration::from_millis(90), t0);
        for (i, s) in [65_534u16, 65_535, 0, 1].iter().enumerate() {
            r.record(*s, t0 + Duration::from_millis(100 + i as u64), t0);
        }
    }
}
