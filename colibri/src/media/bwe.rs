//! A send-side estimate of the bandwidth towards each receiver, from the transport-cc feedback
//! (draft-holmer-rmcat-transport-wide-cc-extensions-01) it sends about the packets the bridge
//! numbered. GCC's rules in a simpler form: per feedback it measures what got through
//! (delivery rate over 1 s), whether the path holds a standing queue (mean one-way delay
//! 25 ms above its 10 s minimum; no trendline filter) and the loss over 1 s (packets no
//! feedback reported count as lost). It backs off on queueing (to 0.85x of what got through)
//! or on more than 10% loss (by half the loss, from what got through), holds between 2% and
//! 10% loss, and otherwise grows by 8% a second, but never beyond 1.5x of what got through —
//! an estimate already above that stays (the engine pads up to it when the allocation wants
//! more). Losses of packets sent before a decrease do not decrease it again. Starts from an
//! initial estimate (2.5 Mbit/s, as JVB) unless the first measurement shows trouble. Feeds
//! the bandwidth allocation and `ConnectionStats`. Sans-IO.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::rtp::extend_seq;
use crate::rtp::rtcp::twcc::TwccFeedback;

/// Packets remembered for matching feedback at most.
const MAX_SENT: usize = 1024;
/// A packet not reported on for this long is forgotten.
const SENT_MAX_AGE: Duration = Duration::from_millis(500);
const MIN_BPS: f64 = 30_000.0;
const MAX_BPS: f64 = 100_000_000.0;

#[derive(Debug, Clone, Copy)]
struct SentRecord {
    seq: u64,
    at: Instant,
    size: u32,
}

/// How far back the delivery rate and the loss are measured.
const WINDOW: Duration = Duration::from_millis(1000);
/// The shortest arrival span a delivery rate is computed over.
const MIN_SPAN_US: i64 = 200_000;
/// A standing queue of more than this means congestion ...
const QUEUE_DELAY: Duration = Duration::from_millis(25);
/// ... measured against the lowest delay of this long.
const BASE_DELAY_WINDOW: Duration = Duration::from_secs(10);
/// Feedback delays remembered at most (10 s of feedback every 50 ms).
const MAX_DELAYS: usize = 256;
/// Decreases happen at most this often (feedback comes every 50–100 ms).
const DECREASE_INTERVAL: Duration = Duration::from_millis(300);

/// The transport-wide numbering of what the bridge sends one receiver, and the estimate.
#[derive(Debug)]
pub(super) struct SendSide {
    next_seq: u64,
    sent: VecDeque<SentRecord>,
    /// Arrivals (receiver µs, bytes) of the last `WINDOW`.
    arrived: VecDeque<(i64, u32)>,
    /// Per feedback in the last `WINDOW`: when, packets received, packets lost.
    reports: VecDeque<(Instant, u32, u32)>,
    estimate: Option<f64>,
    last_update: Option<Instant>,
    last_decrease: Option<Instant>,
    /// Losses reported before this are not counted.
    ignore_losses_until: Option<Instant>,
    /// The estimate to start from when the first measurement shows no trouble.
    initial: f64,
    /// The loss the last feedback measured (over the window).
    loss: f64,
    /// Send times are µs since this.
    epoch: Option<Instant>,
    /// Per feedback: when, and the mean one-way delay of its packets (µs, clocks unrelated).
    delays: VecDeque<(Instant, i64)>,
}

impl Default for SendSide {
    fn default() -> Self {
        SendSide {
            next_seq: 1 << 20,
            sent: VecDeque::new(),
            arrived: VecDeque::new(),
            reports: VecDeque::new(),
            estimate: None,
            last_update: None,
            last_decrease: None,
            ignore_losses_until: None,
            initial: 0.0,
            loss: 0.0,
            epoch: None,
            delays: VecDeque::new(),
        }
    }
}

impl SendSide {
    /// Start from `bps` until the path shows loss or queueing.
    pub fn with_initial(bps: u64) -> SendSide {
        SendSide {
            initial: bps as f64,
            ..SendSide::default()
        }
    }

    /// Number a packet of `size` bytes sent at `at`: the transport-wide sequence number to
    /// write in it.
    pub fn on_send(&mut self, at: Instant, size: usize) -> u16 {
        let seq = self.next_seq;
        self.next_seq += 1;
        while self.sent.len() >= MAX_SENT
            || self
                .sent
                .front()
                .is_some_and(|f| at.saturating_duration_since(f.at) > SENT_MAX_AGE)
        {
            self.sent.pop_front();
        }
        self.sent.push_back(SentRecord {
            seq,
            at,
            size: size as u32,
        });
        seq as u16
    }

    /// Losses reported until `t` are not congestion (the receiver is still setting up a
    /// stream and drops its packets).
    pub fn ignore_losses_until(&mut self, t: Instant) {
        self.ignore_losses_until = Some(self.ignore_losses_until.map_or(t, |u| u.max(t)));
    }

    /// The path lost packets (over 2% in the last feedback's window, which came less than
    /// a second ago): no probing. Without recent feedback it is not known to lose: probing is
    /// then the way to learn more.
    pub fn losing(&self, now: Instant) -> bool {
        self.loss > 0.02
            && self
                .last_update
                .is_some_and(|t| now.saturating_duration_since(t) < WINDOW)
    }

    /// The current estimate (bps), once feedback arrived.
    pub fn estimate(&self) -> Option<u64> {
        self.estimate.map(|e| e as u64)
    }

    /// Take one feedback; returns what the window measures (delivery rate bps, loss, whether
    /// this feedback saw queueing) once it spans enough.
    pub fn on_feedback(&mut self, fb: &TwccFeedback, now: Instant) -> Option<(f64, f64, bool)> {
        self.sent.front()?;
        let base = extend_seq(self.next_seq.saturating_sub(1), fb.base);
        // (send time, arrival µs) of what arrived, in sequence order; and the losses.
        let mut acked: Vec<(Instant, i64)> = Vec::new();
        let mut lost = 0u32;
        // Packets sent before the last decrease are its cause, not news: not counted.
        let mut counted = 0u32;
        let since = self.last_decrease;
        // Packets before this feedback's base that no feedback reported will never be: lost
        // (str0m starts each feedback at the first packet it received after the last one).
        while let Some(r) = self.sent.front().filter(|r| r.seq < base).copied() {
            self.sent.pop_front();
            lost += u32::from(since.is_none_or(|d| r.at >= d));
        }
        let front = self.sent.front().map(|f| f.seq)?;
        let mut highest = None;
        for (k, a) in fb.arrivals.iter().enumerate() {
            let seq = base + k as u64;
            let Some(r) = seq
                .checked_sub(front)
                .and_then(|i| self.sent.get(i as usize))
                .filter(|r| r.seq == seq)
            else {
                continue;
            };
            highest = Some(seq);
            let news = since.is_none_or(|d| r.at >= d);
            match a {
                Some(t) => {
                    acked.push((r.at, *t));
                    counted += u32::from(news);
                    // A receiver clock that jumped back (reference time wrapped or reset)
                    // starts the window over.
                    if self
                        .arrived
                        .back()
                        .is_some_and(|b| *t < b.0 - WINDOW.as_micros() as i64)
                    {
                        self.arrived.clear();
                    }
                    self.arrived.push_back((*t, r.size));
                }
                None => lost += u32::from(news),
            }
        }
        // Everything up to the highest reported packet is settled.
        if let Some(h) = highest {
            while self.sent.front().is_some_and(|f| f.seq <= h) {
                self.sent.pop_front();
            }
        }
        if self.ignore_losses_until.is_some_and(|t| now < t) {
            lost = 0;
        }
        self.reports.push_back((now, counted, lost));
        while self
            .reports
            .front()
            .is_some_and(|r| now.saturating_duration_since(r.0) > WINDOW)
        {
            self.reports.pop_front();
        }
        // Arrival times only grow within a receiver's clock; drop what is older than WINDOW.
        if let Some(&(last, _)) = self.arrived.back() {
            let horizon = last - WINDOW.as_micros() as i64;
            while self.arrived.front().is_some_and(|a| a.0 < horizon) {
                self.arrived.pop_front();
            }
        }
        let (first, last) = (self.arrived.front()?.0, self.arrived.back()?.0);
        let span = last - first;
        if span < MIN_SPAN_US {
            return None;
        }
        let bytes: u64 = self.arrived.iter().skip(1).map(|a| u64::from(a.1)).sum();
        let rate = bytes as f64 * 8.0 * 1e6 / span as f64;
        let (got, missed) = self
            .reports
            .iter()
            .fold((0u32, 0u32), |(g, m), r| (g + r.1, m + r.2));
        let loss = f64::from(missed) / f64::from((got + missed).max(1));
        // Queueing: the mean one-way delay of this feedback's packets (on the receiver's
        // clock against ours: only differences count) above the lowest of the last
        // `BASE_DELAY_WINDOW` by more than `QUEUE_DELAY`: a standing queue, not the jitter of
        // a busy receiver or of batched sends.
        let queued = if acked.is_empty() {
            false
        } else {
            let epoch = *self.epoch.get_or_insert(acked[0].0);
            let sum: i64 = acked
                .iter()
                .map(|(s, a)| a - s.saturating_duration_since(epoch).as_micros() as i64)
                .sum();
            let mean = sum / acked.len() as i64;
            while self
                .delays
                .front()
                .is_some_and(|d| now.saturating_duration_since(d.0) > BASE_DELAY_WINDOW)
            {
                self.delays.pop_front();
            }
            // A receiver clock that jumped back starts over.
            if self.delays.back().is_some_and(|d| d.1 - mean > 10_000_000) {
                self.delays.clear();
            }
            let base = self
                .delays
                .iter()
                .map(|d| d.1)
                .min()
                .unwrap_or(mean)
                .min(mean);
            if self.delays.len() >= MAX_DELAYS {
                self.delays.pop_front();
            }
            self.delays.push_back((now, mean));
            mean - base > QUEUE_DELAY.as_micros() as i64
        };
        let elapsed = self.last_update.map_or(0.0, |t| {
            now.saturating_duration_since(t).as_secs_f64().min(1.0)
        });
        self.last_update = Some(now);
        let may_decrease = self
            .last_decrease
            .is_none_or(|t| now.saturating_duration_since(t) >= DECREASE_INTERVAL);
        let est = match self.estimate {
            // Until the path shows trouble, start from the initial estimate (as GCC does).
            None if loss > 0.1 || queued => rate,
            None => rate.max(self.initial),
            Some(e) if loss > 0.1 => {
                if may_decrease {
                    self.last_decrease = Some(now);
                    // These losses are answered: the next decrease needs new ones.
                    self.reports.clear();
                    // From what got through when the estimate is above it (an initial one).
                    rate.min(e) * (1.0 - 0.5 * loss).max(0.5)
                } else {
                    e
                }
            }
            // Some loss: hold (GCC's 2–10% band).
            Some(e) if loss > 0.02 => e,
            Some(e) if queued => {
                if may_decrease && e > 0.85 * rate {
                    self.last_decrease = Some(now);
                    0.85 * rate
                } else {
                    e
                }
            }
            // Grow 8% a second, but not beyond 1.5x of what got through (more has not been
            // tried; an estimate already above that stays, as in GCC); what got through is
            // the floor.
            Some(e) => (e * (1.0 + 0.08 * elapsed))
                .min(e.max(1.5 * rate))
                .max(rate),
        };
        self.estimate = Some(est.clamp(MIN_BPS, MAX_BPS));
        self.loss = loss;
        Some((rate, loss, queued))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::ingress::TwccRecorder;

    /// Send `n` packets of 1000 bytes every `gap`, arriving after `delay(i)`; feedback written
    /// by the receive side's own recorder every 25 packets.
    fn run(
        s: &mut SendSide,
        t0: Instant,
        n: usize,
        gap: Duration,
        lose: impl Fn(usize) -> bool,
        delay: impl Fn(usize) -> Duration,
    ) -> Instant {
        let mut rec = TwccRecorder::default();
        let mut now = t0;
        for i in 0..n {
            now = t0 + gap * i as u32;
            let seq = s.on_send(now, 1000);
            if !lose(i) {
                rec.record(seq, now + delay(i), t0);
            }
            if (i + 1) % 25 == 0 {
                let mut b = Vec::new();
                if rec.write_feedback(&mut b, 1) {
                    let fb = crate::rtp::rtcp::twcc::parse(&b).expect("our own feedback parses");
                    s.on_feedback(&fb, now + delay(i));
                }
            }
        }
        now
    }

    #[test]
    fn parses_what_the_recorder_writes() {
        let t0 = Instant::now();
        let mut rec = TwccRecorder::default();
        rec.record(10, t0 + Duration::from_millis(1), t0);
        rec.record(12, t0 + Duration::from_millis(2), t0);
        rec.record(13, t0 + Duration::from_millis(100), t0);
        let mut b = Vec::new();
        assert!(rec.write_feedback(&mut b, 7));
        let fb = crate::rtp::rtcp::twcc::parse(&b).unwrap();
        assert_eq!(fb.base, 10);
        assert_eq!(fb.arrivals.len(), 4);
        assert!(fb.arrivals[1].is_none());
        let a: Vec<i64> = fb.arrivals.iter().flatten().copied().collect();
        assert_eq!(a[1] - a[0], 1000);
        assert_eq!(a[2] - a[1], 98_000);
    }

    #[test]
    fn losses_while_a_receiver_sets_up_a_stream_are_not_congestion() {
        let t0 = Instant::now();
        let mut s = SendSide::default();
        run(
            &mut s,
            t0,
            200,
            Duration::from_millis(2),
            |_| false,
            |_| Duration::from_millis(20),
        );
        let before = s.estimate().unwrap() as f64;
        let t1 = t0 + Duration::from_secs(1);
        s.ignore_losses_until(t1 + Duration::from_secs(5));
        run(
            &mut s,
            t1,
            1000,
            Duration::from_millis(2),
            |i| i % 4 == 0,
            |_| Duration::from_millis(20),
        );
        let e = s.estimate().unwrap() as f64;
        assert!(e >= 0.7 * before, "{before} -> {e}");
    }

    #[test]
    fn estimate_follows_the_path() {
        let t0 = Instant::now();
        // 1000-byte packets every 2 ms: 4 Mbit/s, constant delay, no loss.
        let mut s = SendSide::default();
        let t = run(
            &mut s,
            t0,
            1000,
            Duration::from_millis(2),
            |_| false,
            |_| Duration::from_millis(20),
        );
        let e = s.estimate().unwrap() as f64;
        assert!((3.5e6..=6.1e6).contains(&e), "clean path: {e}");
        // A queue builds (each packet 0.5 ms later than the one before): back off.
        let before = e;
        run(
            &mut s,
            t,
            200,
            Duration::from_millis(2),
            |_| false,
            |i| Duration::from_millis(20) + Duration::from_micros(500 * i as u64),
        );
        let e = s.estimate().unwrap() as f64;
        assert!(e < 0.9 * before, "queueing: {before} -> {e}");
        // Heavy loss: back off too.
        let mut s = SendSide::default();
        run(
            &mut s,
            t0,
            200,
            Duration::from_millis(2),
            |_| false,
            |_| Duration::from_millis(20),
        );
        let before = s.estimate().unwrap() as f64;
        run(
            &mut s,
            t0 + Duration::from_secs(1),
            1000,
            Duration::from_millis(2),
            |i| i % 4 == 0,
            |_| Duration::from_millis(20),
        );
        let e = s.estimate().unwrap() as f64;
        assert!(e < 0.9 * before, "25% loss: {before} -> {e}");
    }

    #[test]
    fn starts_from_the_initial_estimate_and_takes_jitter_for_no_queue() {
        let t0 = Instant::now();
        let mut s = SendSide::with_initial(2_500_000);
        // 500 kbit/s (1000 bytes every 16 ms) with up to 15 ms of jitter.
        let t = run(
            &mut s,
            t0,
            300,
            Duration::from_millis(16),
            |_| false,
            |i| Duration::from_millis(20 + (i as u64 * 7) % 16),
        );
        let e = s.estimate().unwrap();
        assert!(e >= 2_500_000, "the initial estimate stands: {e}");
        // A standing queue (delay growing to 80 ms): back off below what gets through.
        run(
            &mut s,
            t,
            200,
            Duration::from_millis(16),
            |_| false,
            |i| Duration::from_millis(20 + (2 * i as u64).min(60)),
        );
        let e = s.estimate().unwrap();
        assert!(e < 600_000, "queueing: {e}");
        // Loss at the start: no initial estimate, what got through.
        let mut s = SendSide::with_initial(2_500_000);
        run(
            &mut s,
            t0,
            300,
            Duration::from_millis(16),
            |i| i % 3 == 0,
            |_| Duration::from_millis(20),
        );
        let e = s.estimate().unwrap();
        assert!(e < 600_000, "lossy start: {e}");
    }
}
