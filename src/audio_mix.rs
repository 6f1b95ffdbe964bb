//! The speakers' mix for a live stream or recording (docs/streaming.md §3): the bridge sends
//! each of a few speakers' Opus on a slot of its own (an SSRC each, all to one loopback
//! socket here); this decodes every slot with libopus, adds them up every 20 ms and hands the
//! encoder one stream of 48 kHz mono PCM (RTP L16). The encoder then reads one audio stream
//! instead of several, each of which it had to wait for: with three slots, ffmpeg 5.1 fell
//! behind real time on a busy machine (its output 20–40 s late after two minutes).
//!
//! [`Mix`] is the sans-IO part (frames and the clock in, mixed frames out); [`spawn`] runs it
//! on a thread of its own with the socket and the decoders.

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use meetd_colibri::rtp::header::{ExtIds, ExtOut, RtpOut, parse_rtp, write_header};

/// Samples per 20 ms frame at 48 kHz.
pub const FRAME: usize = 960;
const FRAME_TIME: Duration = Duration::from_millis(20);
/// The payload type of the mixed stream in the encoder's session description.
pub const L16_PT: u8 = 97;
/// Frames a slot holds before it is mixed (40 ms: the bridge's packets come in small bursts).
const PREBUFFER: usize = 2;

/// One speaker slot: its decoded frames, waiting for the clock.
#[derive(Debug, Default)]
struct Slot {
    frames: VecDeque<Box<[i16; FRAME]>>,
    /// Mixed from since it had [`PREBUFFER`] frames; off again when it ran dry.
    playing: bool,
    received: u64,
    dropped: u64,
}

/// The mix of `n` slots.
#[derive(Debug)]
pub struct Mix {
    slots: Vec<Slot>,
    /// Frames a slot may hold; older ones are dropped, so that a slot never falls behind.
    max_queued: usize,
}

impl Mix {
    /// `n` slots of at most `max_queued` frames each (at least [`PREBUFFER`]).
    pub fn new(n: usize, max_queued: usize) -> Mix {
        Mix {
            slots: (0..n).map(|_| Slot::default()).collect(),
            max_queued: max_queued.max(PREBUFFER),
        }
    }

    /// A decoded 20 ms frame of slot `slot` (mono, 48 kHz).
    pub fn push(&mut self, slot: usize, frame: Box<[i16; FRAME]>) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        s.received += 1;
        if s.frames.len() >= self.max_queued {
            s.frames.pop_front();
            s.dropped += 1;
        }
        s.frames.push_back(frame);
    }

    /// The next 20 ms of the mix: one frame of every slot that has one, added with
    /// saturation; silence from slots that have none.
    pub fn next_frame(&mut self, out: &mut [i16; FRAME]) {
        let mut acc = [0i32; FRAME];
        for s in &mut self.slots {
            if !s.playing && s.frames.len() >= PREBUFFER {
                s.playing = true;
            }
            if !s.playing {
                continue;
            }
            match s.frames.pop_front() {
                Some(f) => {
                    for (a, x) in acc.iter_mut().zip(f.iter()) {
                        *a += i32::from(*x);
                    }
                }
                None => s.playing = false,
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            *o = a.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
        }
    }

    /// Frames dropped because a slot held too many.
    pub fn dropped(&self) -> u64 {
        self.slots.iter().map(|s| s.dropped).sum()
    }

    /// Frames each slot received.
    pub fn received(&self) -> Vec<u64> {
        self.slots.iter().map(|s| s.received).collect()
    }
}

/// Which slot an SSRC is: slots are taken in the order their SSRCs first appear (the bridge
/// gives each slot one SSRC for the whole stream); SSRCs past the last slot are ignored.
#[derive(Debug, Default)]
struct SlotMap(Vec<u32>);

impl SlotMap {
    fn slot(&mut self, ssrc: u32, n: usize) -> Option<usize> {
        if let Some(i) = self.0.iter().position(|s| *s == ssrc) {
            return Some(i);
        }
        (self.0.len() < n).then(|| {
            self.0.push(ssrc);
            self.0.len() - 1
        })
    }
}

/// An RTP packet's SSRC and payload (after CSRCs, extensions and padding); None for anything
/// else.
fn rtp_payload(p: &[u8]) -> Option<(u32, &[u8])> {
    let v = parse_rtp(p, &ExtIds::default())?;
    let mut end = p.len();
    if v.padding {
        end = end.checked_sub(usize::from(*p.last()?))?;
    }
    Some((v.ssrc, p.get(v.hdr_len..end)?))
}

/// One L16 RTP packet (big-endian samples).
fn l16_packet(seq: u16, ts: u32, ssrc: u32, pcm: &[i16; FRAME], buf: &mut Vec<u8>) {
    buf.clear();
    let h = RtpOut {
        pt: L16_PT,
        marker: false,
        seq,
        ts,
        ssrc,
    };
    write_header(buf, &h, &ExtIds::default(), &ExtOut::default(), None);
    for s in pcm {
        buf.extend_from_slice(&s.to_be_bytes());
    }
}

/// A running mixer; stops (and its thread ends) when dropped.
pub struct Mixer {
    /// Where the bridge sends the slots.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Mixer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a mixer of `slots` slots, each holding at most `buffer` of audio, on a loopback
/// socket of `to`'s family, sending the mix to `to` every 20 ms from now on (silence while
/// nobody speaks).
pub fn spawn(slots: usize, buffer: Duration, to: SocketAddr, room: &str) -> std::io::Result<Mixer> {
    let bind = if to.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0))
    };
    let sock = UdpSocket::bind(bind)?;
    let addr = sock.local_addr()?;
    let mut decoders = (0..slots)
        .map(|_| opus::Decoder::new(48_000, opus::Channels::Mono))
        .collect::<Result<Vec<_>, _>>()
        .map_err(std::io::Error::other)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let room = room.to_string();
    let ssrc: u32 = rand::random();
    let thread = std::thread::Builder::new()
        .name("audio-mix".into())
        .spawn(move || {
            let frames = (buffer.as_millis() / FRAME_TIME.as_millis()) as usize;
            let mut mix = Mix::new(slots, frames);
            let mut map = SlotMap::default();
            let mut buf = [0u8; 1500];
            let mut out = Vec::with_capacity(12 + 2 * FRAME);
            let mut pcm = [0i16; FRAME];
            let (mut seq, mut ts) = (rand::random::<u16>(), rand::random::<u32>());
            let started = Instant::now();
            let mut next = started;
            let mut bad = 0u64;
            while !stopped.load(Ordering::Relaxed) {
                let now = Instant::now();
                // Late (a busy machine): the frames it owes, at once, so the clock holds.
                while next <= now {
                    mix.next_frame(&mut pcm);
                    l16_packet(seq, ts, ssrc, &pcm, &mut out);
                    // The encoder may not listen yet, or have gone; the next frame tries again.
                    let _ = sock.send_to(&out, to);
                    seq = seq.wrapping_add(1);
                    ts = ts.wrapping_add(FRAME as u32);
                    next += FRAME_TIME;
                }
                let wait = next.saturating_duration_since(Instant::now());
                if sock
                    .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
                    .is_err()
                {
                    break;
                }
                let Ok(n) = sock.recv(&mut buf) else { continue };
                let Some((s, payload)) = rtp_payload(&buf[..n]) else {
                    bad += 1;
                    continue;
                };
                let Some(i) = map.slot(s, slots) else {
                    continue;
                };
                let mut frame = Box::new([0i16; FRAME]);
                match decoders[i].decode(payload, &mut frame[..], false) {
                    Ok(FRAME) => mix.push(i, frame),
                    // Frames of other lengths (Opus allows 2.5 to 60 ms): left out.
                    Ok(_) => bad += 1,
                    Err(_) => bad += 1,
                }
            }
            tracing::info!(%room, secs = started.elapsed().as_secs(), frames = ?mix.received(), dropped = mix.dropped(), unusable = bad, "live stream: the audio mix ended");
        })?;
    Ok(Mixer {
        addr,
        stop,
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: i16) -> Box<[i16; FRAME]> {
        Box::new([v; FRAME])
    }

    #[test]
    fn slots_are_added_with_saturation_once_they_have_two_frames() {
        let mut m = Mix::new(3, 10);
        let mut out = [0i16; FRAME];
        m.push(0, frame(1000));
        m.next_frame(&mut out);
        assert_eq!(out[0], 0, "one frame: still buffering");
        m.push(0, frame(2000));
        m.push(1, frame(30000));
        m.push(1, frame(-30000));
        m.next_frame(&mut out);
        assert_eq!(out[0], 31000);
        m.push(2, frame(-5000));
        m.next_frame(&mut out);
        assert_eq!(
            out[0], -28000,
            "slot 2 buffers; slots 0 and 1 play their second frames"
        );
        m.next_frame(&mut out);
        assert_eq!(out[0], 0, "slots 0 and 1 ran dry, slot 2 still buffers");
        // A dry slot buffers again before it plays; the sum saturates.
        m.push(0, frame(-30000));
        m.next_frame(&mut out);
        assert_eq!(out[0], 0);
        m.push(0, frame(7));
        m.push(2, frame(-5000));
        m.next_frame(&mut out);
        assert_eq!(out[0], i16::MIN, "-30000 - 5000");
        m.push(1, frame(30000));
        m.push(1, frame(30000));
        m.push(2, frame(20000));
        m.next_frame(&mut out);
        assert_eq!(out[0], 7 + 30000 - 5000);
        m.next_frame(&mut out);
        assert_eq!(out[0], i16::MAX, "30000 + 20000");
    }

    #[test]
    fn a_slot_holds_ten_frames_at_most() {
        let mut m = Mix::new(1, 10);
        for i in 0..15 {
            m.push(0, frame(i));
        }
        assert_eq!(m.dropped(), 5);
        let mut out = [0i16; FRAME];
        m.next_frame(&mut out);
        assert_eq!(out[0], 5, "the oldest were dropped");
        m.push(7, frame(1)); // no such slot: ignored
    }

    #[test]
    fn slots_go_to_ssrcs_in_order_of_appearance() {
        let mut map = SlotMap::default();
        assert_eq!(map.slot(50, 2), Some(0));
        assert_eq!(map.slot(40, 2), Some(1));
        assert_eq!(map.slot(50, 2), Some(0));
        assert_eq!(map.slot(60, 2), None);
    }

    #[test]
    fn rtp_payloads_with_csrcs_extensions_and_padding() {
        let mut p = vec![0x80, 111, 0, 1, 0, 0, 0, 2, 0, 0, 0, 9, 0xAB];
        assert_eq!(rtp_payload(&p), Some((9, &[0xAB][..])));
        // One CSRC, a one-word extension, two bytes of padding.
        p = vec![0xB1, 111, 0, 1, 0, 0, 0, 2, 0, 0, 0, 9];
        p.extend_from_slice(&[1, 2, 3, 4, 0xBE, 0xDE, 0, 1, 5, 6, 7, 8, 0xCD, 0, 2]);
        assert_eq!(rtp_payload(&p), Some((9, &[0xCD][..])));
        for bad in [
            &[0x80u8, 1, 2][..],
            &[0x40; 12],
            &[0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ] {
            assert_eq!(rtp_payload(bad), None, "{bad:?}");
        }
        assert_eq!(
            rtp_payload(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 200]),
            None
        );
    }

    #[test]
    fn the_mixer_decodes_opus_and_sends_its_sum_as_l16() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let m = spawn(
            2,
            Duration::from_millis(200),
            rx.local_addr().unwrap(),
            "test",
        )
        .unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        // A 1 kHz tone on one slot, the bridge's silence frames on the other.
        let mut enc =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Audio).unwrap();
        let mut packet = [0u8; 400];
        for k in 0..25u32 {
            let tone: Vec<i16> = (0..FRAME)
                .map(|i| {
                    let t = (k as usize * FRAME + i) as f32 / 48_000.0;
                    ((t * 1000.0 * std::f32::consts::TAU).sin() * 8000.0) as i16
                })
                .collect();
            let n = enc.encode(&tone, &mut packet).unwrap();
            let mut rtp = vec![0x80, 111, 0, k as u8, 0, 0, 0, 0, 0, 0, 0, 1];
            rtp.extend_from_slice(&packet[..n]);
            tx.send_to(&rtp, m.addr).unwrap();
            let silence = [
                0x80, 111, 0, k as u8, 0, 0, 0, 0, 0, 0, 0, 2, 0xF8, 0xFF, 0xFE,
            ];
            tx.send_to(&silence, m.addr).unwrap();
            std::thread::sleep(FRAME_TIME);
        }
        // Some 20 ms packets of L16 come out, and some of them carry the tone.
        let mut loudest = 0i32;
        let mut buf = [0u8; 4000];
        for _ in 0..25 {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(n, 12 + 2 * FRAME);
            assert_eq!(buf[1], L16_PT);
            let peak = buf[12..n]
                .chunks(2)
                .map(|c| i32::from(i16::from_be_bytes([c[0], c[1]])).abs())
                .max()
                .unwrap();
            loudest = loudest.max(peak);
        }
        assert!(loudest > 2000, "peak {loudest}");
        drop(m);
    }
}
