//! The telephone side's audio (docs/sip.md §4): G.711 µ-law and A-law, the 8 kHz ↔ 48 kHz
//! conversion between the phone and the room's Opus, the level the bridge's speaker
//! detection reads, the prompt tones, and the telephone events (RFC 4733) and SIP INFO bodies
//! that carry the caller's keys. Pure functions and small state, no I/O.

/// Samples of one 20 ms frame at 8 kHz (the phone) and at 48 kHz (the room).
pub const PHONE_FRAME: usize = 160;
pub const ROOM_FRAME: usize = 960;
const RATIO: usize = ROOM_FRAME / PHONE_FRAME;

/// The phone's codec: a G.711 law, or Opus (narrowband here: the rest of the call runs at
/// 8 kHz) on a dynamic payload type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    G711(Law),
    Opus(u8),
}

impl Codec {
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::G711(l) => l.payload_type(),
            Codec::Opus(pt) => pt,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::G711(l) => l.name(),
            Codec::Opus(_) => "opus",
        }
    }

    /// The RTP clock rate (Opus's is 48 kHz whatever it codes, RFC 7587).
    pub fn clock(self) -> u32 {
        match self {
            Codec::G711(_) => 8000,
            Codec::Opus(_) => 48_000,
        }
    }
}

/// The two G.711 laws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    /// PCMU, RTP payload type 0.
    Mu,
    /// PCMA, RTP payload type 8.
    A,
}

impl Law {
    pub fn payload_type(self) -> u8 {
        match self {
            Law::Mu => 0,
            Law::A => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Law::Mu => "PCMU",
            Law::A => "PCMA",
        }
    }

    pub fn encode(self, s: i16) -> u8 {
        match self {
            Law::Mu => ulaw_encode(s),
            Law::A => alaw_encode(s),
        }
    }

    pub fn decode(self, b: u8) -> i16 {
        match self {
            Law::Mu => ulaw_decode(b),
            Law::A => alaw_decode(b),
        }
    }
}

const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 32635;

fn ulaw_encode(s: i16) -> u8 {
    let mut x = i32::from(s);
    let sign = if x < 0 {
        x = -x;
        0x80
    } else {
        0
    };
    x = x.min(ULAW_CLIP) + ULAW_BIAS;
    // The segment: the highest set bit among bits 7..=14.
    let top = (x >> 7) & 0xff;
    let exp = if top == 0 {
        0
    } else {
        31 - (top as u32).leading_zeros() as i32
    };
    let mantissa = (x >> (exp + 3)) & 0x0f;
    !((sign | (exp << 4) | mantissa) as u8)
}

fn ulaw_decode(b: u8) -> i16 {
    let u = i32::from(!b);
    let exp = (u >> 4) & 7;
    let mantissa = u & 0x0f;
    let x = (((mantissa << 3) + ULAW_BIAS) << exp) - ULAW_BIAS;
    (if u & 0x80 != 0 { -x } else { x }) as i16
}

/// Upper ends of the A-law segments (13-bit magnitudes).
const ALAW_SEG_END: [i32; 8] = [0x1f, 0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff];

fn alaw_encode(s: i16) -> u8 {
    let mut x = i32::from(s) >> 3;
    let mask = if x >= 0 {
        0xd5
    } else {
        x = -x - 1;
        0x55
    };
    let Some(seg) = ALAW_SEG_END.iter().position(|end| x <= *end) else {
        return 0x7f ^ mask;
    };
    let mut a = (seg as i32) << 4;
    a |= if seg < 2 {
        (x >> 1) & 0x0f
    } else {
        (x >> seg) & 0x0f
    };
    (a as u8) ^ mask
}

fn alaw_decode(b: u8) -> i16 {
    let a = i32::from(b ^ 0x55);
    let mut t = (a & 0x0f) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

/// 8 kHz → 48 kHz: linear interpolation from the previous frame's last sample.
#[derive(Debug, Default)]
pub struct Upsampler {
    last: i16,
}

impl Upsampler {
    pub fn process(&mut self, input: &[i16; PHONE_FRAME], out: &mut [i16; ROOM_FRAME]) {
        let mut prev = i32::from(self.last);
        for (i, s) in input.iter().enumerate() {
            let next = i32::from(*s);
            for k in 0..RATIO {
                let v = prev + (next - prev) * (k as i32 + 1) / RATIO as i32;
                out[i * RATIO + k] = v as i16;
            }
            prev = next;
        }
        self.last = input[PHONE_FRAME - 1];
    }
}

/// 48 kHz → 8 kHz: the mean of each six samples (a low-pass good enough for a telephone's
/// band), then every sixth.
pub fn downsample(input: &[i16; ROOM_FRAME], out: &mut [i16; PHONE_FRAME]) {
    for (o, chunk) in out.iter_mut().zip(input.chunks_exact(RATIO)) {
        let sum: i32 = chunk.iter().map(|s| i32::from(*s)).sum();
        *o = (sum / RATIO as i32) as i16;
    }
}

/// The level of a frame as RFC 6464 carries it: 0 (loudest) to 127 (silence) −dBov.
pub fn level(pcm: &[i16]) -> u8 {
    if pcm.is_empty() {
        return 127;
    }
    let energy: f64 = pcm.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / pcm.len() as f64;
    let rms = energy.sqrt() / 32768.0;
    if rms <= 0.0 {
        return 127;
    }
    (-20.0 * rms.log10()).clamp(0.0, 127.0) as u8
}

/// The prompts the caller hears, as tones (there are no recorded voices: nothing to
/// translate, nothing to store). docs/sip.md §2 lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prompt {
    /// "Type the meeting PIN, then #": two mid beeps.
    EnterPin,
    /// "That PIN is not known": three low beeps.
    WrongPin,
    /// "You are being let in": one long high tone.
    Joining,
    /// "Goodbye": a falling pair.
    Goodbye,
}

impl Prompt {
    /// (frequency in Hz, milliseconds on, milliseconds of silence after).
    fn notes(self) -> &'static [(f32, u32, u32)] {
        match self {
            Prompt::EnterPin => &[(660.0, 200, 120), (660.0, 200, 400)],
            Prompt::WrongPin => &[(300.0, 150, 100), (300.0, 150, 100), (300.0, 150, 400)],
            Prompt::Joining => &[(880.0, 400, 200)],
            Prompt::Goodbye => &[(660.0, 200, 50), (440.0, 300, 200)],
        }
    }

    /// The prompt as 8 kHz samples, padded to whole frames.
    pub fn samples(self) -> Vec<i16> {
        let mut out = Vec::new();
        for (f, on, off) in self.notes() {
            let n = (*on as usize) * 8;
            for i in 0..n {
                // A 5 ms ramp at each end, so the beeps do not click.
                let ramp = (i.min(n - 1 - i) as f32 / 40.0).min(1.0);
                let v = (2.0 * std::f32::consts::PI * f * i as f32 / 8000.0).sin();
                out.push((v * ramp * 8000.0) as i16);
            }
            out.extend(std::iter::repeat_n(0, (*off as usize) * 8));
        }
        let pad = (PHONE_FRAME - out.len() % PHONE_FRAME) % PHONE_FRAME;
        out.extend(std::iter::repeat_n(0, pad));
        out
    }
}

/// A key of the telephone keypad from an RFC 4733 event code.
pub fn event_key(code: u8) -> Option<char> {
    Some(match code {
        0..=9 => (b'0' + code) as char,
        10 => '*',
        11 => '#',
        12..=15 => (b'A' + code - 12) as char,
        _ => return None,
    })
}

/// RFC 4733 telephone events of one stream: each key once, when its first packet arrives
/// (an event's packets share its RTP timestamp; the end packet is sent three times).
#[derive(Debug, Default)]
pub struct Events {
    last_ts: Option<u32>,
}

impl Events {
    /// The key of a telephone-event payload with RTP timestamp `ts`, if it starts one.
    pub fn packet(&mut self, ts: u32, payload: &[u8]) -> Option<char> {
        let code = *payload.first()?;
        if payload.len() < 4 || self.last_ts == Some(ts) {
            return None;
        }
        self.last_ts = Some(ts);
        event_key(code)
    }
}

/// The key in a SIP INFO body (`application/dtmf-relay`: `Signal=5`; `application/dtmf`:
/// `5`).
pub fn info_key(content_type: &str, body: &str) -> Option<char> {
    let ct = content_type.trim().to_ascii_lowercase();
    let sig = if ct.starts_with("application/dtmf-relay") {
        body.lines()
            .find_map(|l| {
                let (k, v) = l.split_once('=')?;
                k.trim().eq_ignore_ascii_case("signal").then(|| v.trim())
            })?
            .to_string()
    } else if ct.starts_with("application/dtmf") {
        body.trim().to_string()
    } else {
        return None;
    };
    let mut c = sig.chars();
    let k = c.next()?;
    if c.next().is_some() {
        // Some send the event code instead (10 = *, 11 = #).
        return sig.parse::<u8>().ok().and_then(event_key);
    }
    matches!(k, '0'..='9' | '*' | '#' | 'A'..='D' | 'a'..='d').then(|| k.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g711_known_codes_and_round_trips() {
        assert_eq!(Law::Mu.encode(0), 0xff);
        assert_eq!(Law::A.encode(0), 0xd5);
        assert_eq!(Law::Mu.encode(i16::MAX), 0x80);
        assert_eq!(Law::Mu.encode(i16::MIN), 0x00);
        for law in [Law::Mu, Law::A] {
            for s in [-32000i16, -1000, -100, -5, 0, 5, 100, 1000, 12345, 32000] {
                let back = law.decode(law.encode(s));
                // G.711's step grows with the magnitude: about 1/16 of it at most.
                let err = (i32::from(back) - i32::from(s)).abs();
                assert!(err <= i32::from(s).abs() / 16 + 16, "{law:?} {s} -> {back}");
            }
            // Every code decodes to what encodes back to it (the laws are bijections on
            // their codes, A-law's and µ-law's two zeros apart).
            for b in 0..=255u8 {
                let s = law.decode(b);
                let again = law.encode(s);
                assert_eq!(law.decode(again), s, "{law:?} {b:#x}");
            }
        }
    }

    #[test]
    fn resampling_keeps_a_tone_and_its_level() {
        let mut up = Upsampler::default();
        let mut phone = [0i16; PHONE_FRAME];
        for (i, s) in phone.iter_mut().enumerate() {
            *s = ((2.0 * std::f32::consts::PI * 400.0 * i as f32 / 8000.0).sin() * 10000.0) as i16;
        }
        let mut room = [0i16; ROOM_FRAME];
        up.process(&phone, &mut room);
        // The 48 kHz frame holds the same tone: sample 6k ≈ phone sample k (one step late).
        for k in 2..PHONE_FRAME {
            let d = (i32::from(room[k * RATIO - 1]) - i32::from(phone[k - 1])).abs();
            assert!(d < 50, "{k}: {d}");
        }
        let mut back = [0i16; PHONE_FRAME];
        downsample(&room, &mut back);
        assert!((i32::from(level(&back)) - i32::from(level(&phone))).abs() <= 1);
        assert_eq!(level(&[0; 10]), 127);
        assert!(level(&phone) < 15);
    }

    #[test]
    fn prompts_are_whole_frames_of_sound_and_silence() {
        for p in [
            Prompt::EnterPin,
            Prompt::WrongPin,
            Prompt::Joining,
            Prompt::Goodbye,
        ] {
            let s = p.samples();
            assert_eq!(s.len() % PHONE_FRAME, 0);
            assert!(level(&s[..PHONE_FRAME]) < 40, "{p:?} starts with a tone");
        }
    }

    #[test]
    fn telephone_events_give_each_key_once() {
        let mut e = Events::default();
        let start = [5u8, 0x0a, 0, 160];
        let end = [5u8, 0x8a, 3, 0x20];
        assert_eq!(e.packet(1000, &start), Some('5'));
        assert_eq!(e.packet(1000, &start), None);
        assert_eq!(e.packet(1000, &end), None);
        assert_eq!(e.packet(1000, &end), None);
        assert_eq!(e.packet(2000, &[11, 0x0a, 0, 160]), Some('#'));
        assert_eq!(e.packet(3000, &[10, 0, 0, 0]), Some('*'));
        assert_eq!(e.packet(4000, &[200, 0, 0, 0]), None);
        assert_eq!(e.packet(5000, &[1, 0]), None);
        assert_eq!(e.packet(6000, &[]), None);
    }

    #[test]
    fn info_bodies() {
        assert_eq!(
            info_key("application/dtmf-relay", "Signal=7\r\nDuration=160\r\n"),
            Some('7')
        );
        assert_eq!(
            info_key("Application/DTMF-Relay", "signal= #\r\n"),
            Some('#')
        );
        assert_eq!(info_key("application/dtmf", "*"), Some('*'));
        assert_eq!(
            info_key("application/dtmf-relay", "Signal=11\r\n"),
            Some('#')
        );
        assert_eq!(info_key("application/dtmf-relay", "Duration=160"), None);
        assert_eq!(info_key("text/plain", "5"), None);
        assert_eq!(info_key("application/dtmf", "x"), None);
    }
}
