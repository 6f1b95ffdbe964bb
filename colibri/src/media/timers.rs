//! The engine's bridge-wide timers in one table (as quinn-proto keeps a connection's): each
//! [`Timer`] is unset or due at an instant; the engine sleeps until the earliest and, on a
//! timeout, runs the due ones in the table's order. Per-endpoint deadlines (str0m's, ICE,
//! DTLS) and per-conference ones (the speech detector) stay with their owners.

use std::time::Instant;

/// What the engine does on a timer, in the order it does it when several are due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// Transport-cc feedback and NACKs to senders (and receiver reports when due).
    Feedback,
    /// Sender reports for forwarded streams.
    SenderReports,
    /// Layer rate measurement and a bandwidth allocation round.
    Rates,
    /// Padding probes while some receiver probes for more bandwidth.
    Probe,
    /// The connectivity monitor and endpoint expiry.
    StatusCheck,
    /// `ConnectionStats` to every connected endpoint.
    ConnectionStats,
}

impl Timer {
    pub const ALL: [Timer; 6] = [
        Timer::Feedback,
        Timer::SenderReports,
        Timer::Rates,
        Timer::Probe,
        Timer::StatusCheck,
        Timer::ConnectionStats,
    ];
}

#[derive(Debug, Default, Clone)]
pub(super) struct TimerTable {
    at: [Option<Instant>; Timer::ALL.len()],
}

impl TimerTable {
    pub fn get(&self, t: Timer) -> Option<Instant> {
        self.at[t as usize]
    }

    pub fn set(&mut self, t: Timer, at: Instant) {
        self.at[t as usize] = Some(at);
    }

    /// Set `t` unless it is already running.
    pub fn start(&mut self, t: Timer, at: Instant) {
        self.at[t as usize].get_or_insert(at);
    }

    pub fn stop(&mut self, t: Timer) {
        self.at[t as usize] = None;
    }

    pub fn stop_all(&mut self) {
        self.at = Default::default();
    }

    /// Is `t` running and due at `now`?
    pub fn is_due(&self, t: Timer, now: Instant) -> bool {
        self.get(t).is_some_and(|at| at <= now)
    }

    /// The earliest running timer.
    pub fn next(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn earliest_due_and_stops() {
        let t0 = Instant::now();
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        t.set(Timer::Rates, t0 + Duration::from_millis(500));
        t.start(Timer::Feedback, t0 + Duration::from_millis(20));
        t.start(Timer::Feedback, t0 + Duration::from_millis(900));
        assert_eq!(
            t.next(),
            Some(t0 + Duration::from_millis(20)),
            "start keeps a running one"
        );
        assert!(t.is_due(Timer::Feedback, t0 + Duration::from_millis(20)));
        assert!(!t.is_due(Timer::Rates, t0 + Duration::from_millis(20)));
        assert!(
            !t.is_due(Timer::Probe, t0 + Duration::from_secs(99)),
            "unset is never due"
        );
        t.stop(Timer::Feedback);
        assert_eq!(t.next(), Some(t0 + Duration::from_millis(500)));
        t.stop_all();
        assert_eq!(t.next(), None);
    }
}
