//! Dominant speaker identification per conference (docs/bridge.md B.7).
//!
//! The algorithm is JVB's (jitsi-utils `DominantSpeakerIdentification`, after Volfin & Cohen,
//! "Dominant Speaker Identification for Multipoint Videoconferencing"), driven by the
//! sender-reported ssrc-audio-level of every forwarded audio packet, no decoding:
//!
//! * each packet's level (0 = silence … 127 = loud) is kept in a 50-packet history per speaker;
//!   a speaker that sends nothing for 40 ms gets a silent level pushed every 40 ms;
//! * levels below the speaker's noise floor (+ one sub-band) count as silence; the floor is the
//!   lowest level seen, raised (geometric mean) after ~15 s (750 packets) of louder levels;
//! * immediate activity: the newest level in 13 sub-bands; medium: how many of the last 5
//!   immediates exceed 7; long: how many of the last 10 mediums exceed 4; each is turned into a
//!   score with the paper's binomial/exponential model;
//! * every 300 ms, a speaker replaces the dominant one when its score ratios over the current
//!   dominant's exceed e^3 (immediate), e^2 (medium) and e^0 (long); among several, the highest
//!   medium ratio wins. With one speaker, it is dominant.
//!
//! Timing is sans-IO: idle levels are pushed lazily (when a level arrives or a decision runs,
//! for every 40 ms elapsed), and decisions run from the engine's timer while any level arrived
//! in the last 15 s.

use std::time::{Duration, Instant};

use super::endpoint::EpId;

const C1: f64 = 3.0;
const C2: f64 = 2.0;
const C3: f64 = 0.0;
pub(super) const DECISION_INTERVAL: Duration = Duration::from_millis(300);
const LEVEL_IDLE_TIMEOUT: Duration = Duration::from_millis(40);
/// No decisions after this long without any level.
const DECISION_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// A non-dominant speaker silent this long is forgotten.
const SPEAKER_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
const LONG_THRESHOLD: u8 = 4;
const MEDIUM_THRESHOLD: u8 = 7;
const MAX_LEVEL: u8 = 127;
const MIN_LEVEL: u8 = 0;
const MIN_LEVEL_WINDOW_LENGTH: u32 = 15 * 1000 / 20;
const MIN_SCORE: f64 = 1e-10;
const N1: u32 = 13;
const N1_SUBUNIT_LENGTH: u8 = ((MAX_LEVEL - MIN_LEVEL) as u32).div_ceil(N1) as u8;
const N2: usize = 5;
const N3: usize = 10;
const HISTORY: usize = N2 * N3;
/// The recent-speakers list (dominant first) holds at most this many
/// (`speech-activity.recent-speakers-count`).
pub(super) const RECENT_SPEAKERS: usize = 10;

fn binomial(n: u32, r: u32) -> f64 {
    let r = r.max(n - r);
    let mut t: u64 = 1;
    for (j, i) in (1..).zip((r + 1..=n).rev()) {
        t = t * u64::from(i) / j;
    }
    t as f64
}

fn score(v: u8, n: u32, lambda: f64) -> f64 {
    let v = u32::from(v).min(n);
    let p: f64 = 0.5;
    let s = binomial(n, v).ln() + f64::from(v) * p.ln() + f64::from(n - v) * (1.0 - p).ln()
        - lambda.ln()
        + lambda * f64::from(v);
    s.max(MIN_SCORE)
}

#[derive(Debug, Clone)]
struct Speaker {
    ep: EpId,
    /// Newest first.
    levels: [u8; HISTORY],
    immediates: [u8; HISTORY],
    mediums: [u8; N3],
    long: u8,
    scores: [f64; 3],
    min_level: u8,
    next_min_level: u8,
    next_min_window: u32,
    last_level_at: Instant,
    /// Idle levels already pushed since `last_level_at`.
    idle_pushed: u32,
}

impl Speaker {
    fn new(ep: EpId, now: Instant) -> Speaker {
        Speaker {
            ep,
            levels: [MIN_LEVEL; HISTORY],
            immediates: [0; HISTORY],
            mediums: [0; N3],
            long: 0,
            scores: [MIN_SCORE; 3],
            min_level: MIN_LEVEL,
            next_min_level: MIN_LEVEL,
            next_min_window: 0,
            last_level_at: now,
            idle_pushed: 0,
        }
    }

    fn push(&mut self, level: u8) {
        self.levels.copy_within(0..HISTORY - 1, 1);
        self.levels[0] = level.min(MAX_LEVEL);
    }

    /// Push a silent level for every idle timeout elapsed since the last real level.
    fn catch_up(&mut self, now: Instant) {
        let idle = now.saturating_duration_since(self.last_level_at);
        let due = (idle.as_millis() / LEVEL_IDLE_TIMEOUT.as_millis()) as u32;
        while self.idle_pushed < due {
            self.idle_pushed += 1;
            if self.idle_pushed as usize > HISTORY {
                // The history is all silence already.
                self.idle_pushed = due;
                break;
            }
            self.push(MIN_LEVEL);
        }
    }

    fn level(&mut self, level: u8, now: Instant) {
        if now < self.last_level_at {
            return;
        }
        self.catch_up(now);
        self.last_level_at = now;
        self.idle_pushed = 0;
        let level = level.min(MAX_LEVEL);
        self.push(level);
        self.update_min_level(level);
    }

    fn update_min_level(&mut self, level: u8) {
        if level == MIN_LEVEL {
            return;
        }
        if self.min_level == MIN_LEVEL || self.min_level > level {
            self.min_level = level;
            self.next_min_level = MIN_LEVEL;
            self.next_min_window = 0;
        } else if self.next_min_level == MIN_LEVEL {
            self.next_min_level = level;
            self.next_min_window = 1;
        } else {
            self.next_min_level = self.next_min_level.min(level);
            self.next_min_window += 1;
            if self.next_min_window >= MIN_LEVEL_WINDOW_LENGTH {
                let mean = (f64::from(self.min_level) * f64::from(self.next_min_level)).sqrt();
                self.min_level = mean.clamp(f64::from(MIN_LEVEL), f64::from(MAX_LEVEL)) as u8;
                self.next_min_level = MIN_LEVEL;
                self.next_min_window = 0;
            }
        }
    }

    fn evaluate(&mut self) {
        let floor = self.min_level.saturating_add(N1_SUBUNIT_LENGTH);
        let mut changed = false;
        for (imm, &l) in self.immediates.iter_mut().zip(&self.levels) {
            let l = if l < floor { MIN_LEVEL } else { l };
            let v = l / N1_SUBUNIT_LENGTH;
            changed |= *imm != v;
            *imm = v;
        }
        if !changed {
            return;
        }
        self.scores[0] = score(self.immediates[0], N1, 0.78);
        let mut changed = false;
        for (b, m) in self.mediums.iter_mut().enumerate() {
            let v = self.immediates[b * N2..(b + 1) * N2]
                .iter()
                .filter(|x| **x > MEDIUM_THRESHOLD)
                .count() as u8;
            changed |= *m != v;
            *m = v;
        }
        if !changed {
            return;
        }
        self.scores[1] = score(self.mediums[0], N2 as u32, 24.0);
        let long = self.mediums.iter().filter(|x| **x > LONG_THRESHOLD).count() as u8;
        if long != self.long {
            self.long = long;
            self.scores[2] = score(long, N3 as u32, 47.0);
        }
    }
}

/// The speech activity of one conference.
#[derive(Debug, Default)]
pub(super) struct SpeechActivity {
    /// In order of first level.
    speakers: Vec<Speaker>,
    dominant: Option<EpId>,
    /// Dominant first, at most [`RECENT_SPEAKERS`].
    recent: Vec<EpId>,
    last_level_at: Option<Instant>,
    next_decision: Option<Instant>,
}

impl SpeechActivity {
    /// A level from `ep`'s audio: 0 (silence) … 127 (loud), i.e. 127 − the RFC 6465 value.
    pub fn level(&mut self, ep: EpId, level: u8, now: Instant) {
        let i = match self.speakers.iter().position(|s| s.ep == ep) {
            Some(i) => i,
            None => {
                self.speakers.push(Speaker::new(ep, now));
                self.speakers.len() - 1
            }
        };
        self.speakers[i].level(level, now);
        self.last_level_at = Some(now);
        if self.next_decision.is_none() {
            self.next_decision = Some(now + DECISION_INTERVAL);
        }
    }

    /// When [`SpeechActivity::poll`] wants to run next.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.next_decision
    }

    /// The recent speakers, dominant first.
    pub fn recent(&self) -> &[EpId] {
        &self.recent
    }

    /// Forget an endpoint. True if the recent-speakers list changed.
    pub fn remove(&mut self, ep: EpId) -> bool {
        self.speakers.retain(|s| s.ep != ep);
        if self.dominant == Some(ep) {
            self.dominant = None;
        }
        let before = self.recent.len();
        self.recent.retain(|x| *x != ep);
        self.recent.len() != before
    }

    /// Run a decision if one is due. True if the recent-speakers list changed.
    pub fn poll(&mut self, now: Instant) -> bool {
        let Some(due) = self.next_decision else {
            return false;
        };
        if now < due {
            return false;
        }
        self.next_decision = match self.last_level_at {
            Some(t) if now.saturating_duration_since(t) < DECISION_IDLE_TIMEOUT => {
                Some(now + DECISION_INTERVAL)
            }
            _ => None,
        };
        let dominant = self.dominant;
        self.speakers.retain(|s| {
            Some(s.ep) == dominant
                || now.saturating_duration_since(s.last_level_at) < SPEAKER_IDLE_TIMEOUT
        });
        for s in &mut self.speakers {
            s.catch_up(now);
        }
        let new = self.decide();
        match new {
            Some(ep) if Some(ep) != self.dominant => {
                self.dominant = Some(ep);
                self.recent.retain(|x| *x != ep);
                self.recent.insert(0, ep);
                self.recent.truncate(RECENT_SPEAKERS);
                true
            }
            _ => false,
        }
    }

    fn decide(&mut self) -> Option<EpId> {
        match self.speakers.len() {
            0 => return None,
            1 => return Some(self.speakers[0].ep),
            _ => {}
        }
        let (di, mut new) = match self
            .dominant
            .and_then(|d| self.speakers.iter().position(|s| s.ep == d))
        {
            Some(i) => (i, None),
            // Nominate the first speaker and let the others compete with it.
            None => (0, Some(self.speakers[0].ep)),
        };
        self.speakers[di].evaluate();
        let dom = self.speakers[di].scores;
        let mut best_c2 = C2;
        for (i, s) in self.speakers.iter_mut().enumerate() {
            if i == di {
                continue;
            }
            s.evaluate();
            let c: Vec<f64> = (0..3).map(|k| (s.scores[k] / dom[k]).ln()).collect();
            if c[0] > C1 && c[1] > C2 && c[2] > C3 && c[1] > best_c2 {
                best_c2 = c[1];
                new = Some(s.ep);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20 ms packets for `ms`: `talking` speakers alternate a noise floor (every 10th packet)
    /// with loud speech, the others send silence.
    fn run(sa: &mut SpeechActivity, t: &mut Instant, ms: u64, talking: &[EpId], silent: &[EpId]) {
        let mut changes = 0;
        for i in 0..ms / 20 {
            for &ep in talking {
                sa.level(ep, if i % 10 == 0 { 40 } else { 110 }, *t);
            }
            for &ep in silent {
                sa.level(ep, 0, *t);
            }
            *t += Duration::from_millis(20);
            if sa.poll(*t) {
                changes += 1;
            }
        }
        assert!(changes <= 2, "flapping: {changes} changes");
    }

    #[test]
    fn scores_and_binomials() {
        assert_eq!(binomial(13, 11), 78.0);
        assert_eq!(binomial(10, 5), 252.0);
        assert_eq!(binomial(5, 0), 1.0);
        assert_eq!(N1_SUBUNIT_LENGTH, 10);
        assert_eq!(score(0, N1, 0.78), MIN_SCORE);
        assert!(score(11, N1, 0.78) > 1.0);
    }

    #[test]
    fn the_talker_becomes_dominant_and_the_list_keeps_order() {
        let mut sa = SpeechActivity::default();
        let mut t = Instant::now();
        run(&mut sa, &mut t, 2000, &[1], &[2, 3]);
        assert_eq!(sa.recent(), &[1]);
        // 2 takes over after 1 stops; 1 goes silent (its packets dropped: nothing arrives).
        run(&mut sa, &mut t, 3000, &[2], &[3]);
        assert_eq!(sa.recent(), &[2, 1]);
        run(&mut sa, &mut t, 3000, &[3], &[]);
        assert_eq!(sa.recent(), &[3, 2, 1]);
        // A short burst by 1 while 3 keeps talking does not switch.
        run(&mut sa, &mut t, 100, &[1, 3], &[]);
        run(&mut sa, &mut t, 1000, &[3], &[]);
        assert_eq!(sa.recent()[0], 3);
        assert!(sa.remove(2));
        assert_eq!(sa.recent(), &[3, 1]);
        assert!(!sa.remove(7));
    }

    #[test]
    fn decisions_stop_when_nobody_sends() {
        let mut sa = SpeechActivity::default();
        let mut t = Instant::now();
        assert_eq!(sa.next_timeout(), None);
        run(&mut sa, &mut t, 400, &[1], &[]);
        assert!(sa.next_timeout().is_some());
        for _ in 0..100 {
            t += DECISION_INTERVAL;
            sa.poll(t);
        }
        assert_eq!(sa.next_timeout(), None);
        assert_eq!(sa.recent(), &[1]);
    }

    #[test]
    fn list_is_capped() {
        let mut sa = SpeechActivity::default();
        let mut t = Instant::now();
        for ep in 1..=12 {
            run(&mut sa, &mut t, 3000, &[ep], &[]);
            assert_eq!(sa.recent()[0], ep);
        }
        assert_eq!(sa.recent().len(), RECENT_SPEAKERS);
        assert_eq!(sa.recent()[9], 3);
    }
}
