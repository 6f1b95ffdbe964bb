//! A call's two media legs (docs/sip.md §4). The phone leg: G.711 RTP with the caller (and
//! its telephone events). The room leg: Opus RTP with the bridge over loopback, SRTP with
//! keys shared in-process; the room's speakers arrive on their own SSRCs and are decoded
//! and mixed here (`audio_mix::Mix`), the caller's voice goes out as one Opus source with
//! its level for the bridge's speaker detection. Both legs are plain state: the call task
//! feeds them datagrams and asks for a frame every 20 ms.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meetd_colibri::media::srtp::Srtp;
use meetd_colibri::rtp::header::{ExtIds, ExtOut, RtpOut, parse_rtp, write_header};

use super::audio::{Codec, Events, PHONE_FRAME, ROOM_FRAME, Upsampler, downsample, level};
use crate::audio_mix::Mix;

/// At most this much of the caller's audio waits (a second).
const PHONE_BUFFER: usize = 8000;
/// A room speaker's slot is free again after this long without packets.
const SLOT_IDLE: Duration = Duration::from_secs(1);
/// 20 ms of Opus silence (one CELT frame).
const OPUS_SILENCE: [u8; 3] = [0xf8, 0xff, 0xfe];

fn header(pt: u8, seq: u16, ts: u32, ssrc: u32, ids: &ExtIds, ext: &ExtOut, out: &mut Vec<u8>) {
    out.clear();
    let h = RtpOut {
        pt,
        marker: false,
        seq,
        ts,
        ssrc,
    };
    write_header(out, &h, ids, ext, None);
}

/// The RTP header's fields a receiver needs, and the payload (after extensions and padding).
struct RtpIn<'a> {
    pt: u8,
    seq: u16,
    ts: u32,
    ssrc: u32,
    hdr_len: usize,
    payload: &'a [u8],
}

fn rtp_parts(p: &[u8]) -> Option<RtpIn<'_>> {
    let v = parse_rtp(p, &ExtIds::default())?;
    let mut end = p.len();
    if v.padding {
        end = end.checked_sub(usize::from(*p.last()?))?;
    }
    Some(RtpIn {
        pt: v.pt,
        seq: v.seq,
        ts: v.ts,
        ssrc: v.ssrc,
        hdr_len: v.hdr_len,
        payload: p.get(v.hdr_len..end)?,
    })
}

/// The phone leg.
#[derive(Debug)]
pub struct PhoneLeg {
    /// Where the caller's RTP goes: the offer's address until its packets come from another
    /// (a NAT): then there (symmetric RTP).
    pub remote: SocketAddr,
    latched: bool,
    codec: Codec,
    /// Opus at 8 kHz (narrowband) when the phone speaks Opus.
    opus: Option<(opus::Encoder, opus::Decoder)>,
    events_pt: Option<u8>,
    events: Events,
    ssrc: u32,
    seq: u16,
    ts: u32,
    heard: VecDeque<i16>,
    buf: Vec<u8>,
    /// Packets from the caller that were not its audio or keys.
    pub unusable: u64,
}

impl PhoneLeg {
    pub fn new(
        remote: SocketAddr,
        codec: Codec,
        events_pt: Option<u8>,
        ssrc: u32,
        seq: u16,
    ) -> Result<PhoneLeg, opus::Error> {
        let opus = match codec {
            Codec::Opus(_) => {
                let mut e =
                    opus::Encoder::new(8000, opus::Channels::Mono, opus::Application::Voip)?;
                e.set_inband_fec(true)?;
                Some((e, opus::Decoder::new(8000, opus::Channels::Mono)?))
            }
            Codec::G711(_) => None,
        };
        Ok(PhoneLeg {
            remote,
            latched: false,
            codec,
            opus,
            events_pt,
            events: Events::default(),
            ssrc,
            seq,
            ts: u32::from(seq).wrapping_mul(160),
            heard: VecDeque::new(),
            buf: Vec::with_capacity(12 + PHONE_FRAME),
            unusable: 0,
        })
    }

    fn keep(&mut self, s: i16) {
        if self.heard.len() >= PHONE_BUFFER {
            self.heard.pop_front();
        }
        self.heard.push_back(s);
    }

    /// One datagram from the caller: its audio is kept, a key is returned.
    pub fn receive(&mut self, from: SocketAddr, data: &[u8]) -> Option<char> {
        let Some(RtpIn {
            pt, ts, payload, ..
        }) = rtp_parts(data)
        else {
            // RTCP and anything else.
            return None;
        };
        if !self.latched {
            self.remote = from;
            self.latched = true;
        }
        if Some(pt) == self.events_pt {
            return self.events.packet(ts, payload);
        }
        if pt != self.codec.payload_type() {
            self.unusable += 1;
            return None;
        }
        match (self.codec, self.opus.as_mut()) {
            (Codec::G711(law), _) => {
                for b in payload {
                    self.keep(law.decode(*b));
                }
            }
            (Codec::Opus(_), Some((_, dec))) => {
                // Up to 120 ms in one packet.
                let mut pcm = [0i16; 960];
                match dec.decode(payload, &mut pcm, false) {
                    Ok(n) => {
                        for s in &pcm[..n] {
                            self.keep(*s);
                        }
                    }
                    Err(_) => self.unusable += 1,
                }
            }
            (Codec::Opus(_), None) => {}
        }
        None
    }

    /// The caller's next 20 ms (silence where nothing came).
    pub fn take_frame(&mut self, out: &mut [i16; PHONE_FRAME]) {
        for o in out.iter_mut() {
            *o = self.heard.pop_front().unwrap_or(0);
        }
    }

    /// The datagram for 20 ms to the caller.
    pub fn frame(&mut self, pcm: &[i16; PHONE_FRAME]) -> &[u8] {
        let mut buf = std::mem::take(&mut self.buf);
        header(
            self.codec.payload_type(),
            self.seq,
            self.ts,
            self.ssrc,
            &ExtIds::default(),
            &ExtOut::default(),
            &mut buf,
        );
        match (self.codec, self.opus.as_mut()) {
            (Codec::G711(law), _) => buf.extend(pcm.iter().map(|s| law.encode(*s))),
            (Codec::Opus(_), Some((enc, _))) => {
                let start = buf.len();
                buf.resize(start + 400, 0);
                match enc.encode(pcm, &mut buf[start..]) {
                    Ok(n) => buf.truncate(start + n),
                    Err(_) => buf.truncate(start),
                }
            }
            (Codec::Opus(_), None) => {}
        }
        self.seq = self.seq.wrapping_add(1);
        // 20 ms at the codec's RTP clock.
        self.ts = self.ts.wrapping_add(self.codec.clock() / 50);
        self.buf = buf;
        &self.buf
    }
}

/// Which slot of the mix a room speaker's SSRC is; a slot idle for [`SLOT_IDLE`] goes to
/// the next new speaker.
#[derive(Debug)]
struct Slots {
    taken: Vec<Option<(u32, Instant)>>,
}

impl Slots {
    fn new(n: usize) -> Slots {
        Slots {
            taken: vec![None; n],
        }
    }

    /// The slot of `ssrc`, and whether it was just given to it (its decoder starts over).
    fn slot(&mut self, ssrc: u32, now: Instant) -> Option<(usize, bool)> {
        if let Some(i) = self
            .taken
            .iter()
            .position(|t| t.is_some_and(|(s, _)| s == ssrc))
        {
            self.taken[i] = Some((ssrc, now));
            return Some((i, false));
        }
        let free = self.taken.iter().position(|t| {
            t.is_none_or(|(_, seen)| now.saturating_duration_since(seen) >= SLOT_IDLE)
        })?;
        self.taken[free] = Some((ssrc, now));
        Some((free, true))
    }
}

/// The room leg.
pub struct RoomLeg {
    /// The bridge's address (its candidate).
    pub bridge: SocketAddr,
    srtp: Srtp,
    opus_pt: u8,
    ids: ExtIds,
    ssrc: u32,
    seq: u16,
    ts: u32,
    encoder: opus::Encoder,
    up: Upsampler,
    decoders: Vec<opus::Decoder>,
    slots: Slots,
    mix: Mix,
    hdr: Vec<u8>,
    payload: Vec<u8>,
    plain: Vec<u8>,
    out: Vec<u8>,
    /// Room packets received, and those that did not decrypt or decode.
    pub received: u64,
    pub unusable: u64,
}

impl RoomLeg {
    /// `speakers` slots of at most `buffer_frames` 20 ms frames each.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        bridge: SocketAddr,
        srtp: Srtp,
        opus_pt: u8,
        level_id: u8,
        ssrc: u32,
        seq: u16,
        speakers: usize,
        buffer_frames: usize,
    ) -> Result<RoomLeg, opus::Error> {
        let mut encoder =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)?;
        encoder.set_bitrate(opus::Bitrate::Bits(24_000))?;
        let decoders = (0..speakers)
            .map(|_| opus::Decoder::new(48_000, opus::Channels::Mono))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RoomLeg {
            bridge,
            srtp,
            opus_pt,
            ids: ExtIds {
                audio_level: level_id,
                ..ExtIds::default()
            },
            ssrc,
            seq,
            ts: u32::from(seq).wrapping_mul(ROOM_FRAME as u32),
            encoder,
            up: Upsampler::default(),
            decoders,
            slots: Slots::new(speakers),
            mix: Mix::new(speakers, buffer_frames),
            hdr: Vec::with_capacity(32),
            payload: vec![0; 1275],
            plain: Vec::with_capacity(1500),
            out: Vec::with_capacity(1500),
            received: 0,
            unusable: 0,
        })
    }

    /// The datagram for the caller's next 20 ms (`pcm`, 8 kHz); silence while `muted`.
    pub fn send(&mut self, pcm: &[i16; PHONE_FRAME], muted: bool) -> Option<&[u8]> {
        let lvl = if muted { 127 } else { level(pcm) };
        let n = if muted {
            self.payload[..OPUS_SILENCE.len()].copy_from_slice(&OPUS_SILENCE);
            OPUS_SILENCE.len()
        } else {
            let mut wide = [0i16; ROOM_FRAME];
            self.up.process(pcm, &mut wide);
            match self.encoder.encode(&wide, &mut self.payload) {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "SIP: Opus encoding failed");
                    return None;
                }
            }
        };
        let ext = ExtOut {
            // RFC 6464: the V bit says "voice" when it is louder than silence.
            audio_level: Some(if lvl < 127 { 0x80 | lvl } else { lvl }),
            ..ExtOut::default()
        };
        let mut hdr = std::mem::take(&mut self.hdr);
        header(
            self.opus_pt,
            self.seq,
            self.ts,
            self.ssrc,
            &self.ids,
            &ext,
            &mut hdr,
        );
        let index = u64::from(self.seq);
        let ok = self
            .srtp
            .protect_rtp(&hdr, &self.payload[..n], self.ssrc, index, &mut self.out)
            .is_ok();
        self.hdr = hdr;
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(ROOM_FRAME as u32);
        ok.then_some(self.out.as_slice())
    }

    /// One datagram from the bridge: a speaker's Opus goes into the mix; RTCP is ignored.
    pub fn receive(&mut self, data: &[u8], now: Instant) {
        let Some(RtpIn {
            pt,
            seq,
            ssrc,
            hdr_len,
            ..
        }) = rtp_parts(data)
        else {
            return;
        };
        if pt != self.opus_pt {
            // The bridge's RTCP (its second byte is 200–206: no payload type of ours).
            return;
        }
        self.received += 1;
        let Ok((_, len)) = self
            .srtp
            .unprotect_rtp(data, hdr_len, ssrc, seq, &mut self.plain)
        else {
            self.unusable += 1;
            return;
        };
        let Some((slot, fresh)) = self.slots.slot(ssrc, now) else {
            return;
        };
        if fresh && let Ok(d) = opus::Decoder::new(48_000, opus::Channels::Mono) {
            self.decoders[slot] = d;
        }
        let mut frame = Box::new([0i16; ROOM_FRAME]);
        match self.decoders[slot].decode(&self.plain[..len], &mut frame[..], false) {
            Ok(ROOM_FRAME) => self.mix.push(slot, frame),
            _ => self.unusable += 1,
        }
    }

    /// The room's next 20 ms for the caller (8 kHz).
    pub fn mixed(&mut self, out: &mut [i16; PHONE_FRAME]) {
        let mut wide = [0i16; ROOM_FRAME];
        self.mix.next_frame(&mut wide);
        downsample(&wide, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meetd_colibri::media::srtp::MasterKeys;

    /// The header of a packet the room leg sent (audio level on extension id 1).
    fn with_level(d: &[u8]) -> meetd_colibri::rtp::header::RtpView {
        let ids = ExtIds {
            audio_level: 1,
            ..ExtIds::default()
        };
        parse_rtp(d, &ids).unwrap()
    }

    fn tone(freq: f32, n: usize, amp: f32) -> Vec<i16> {
        (0..n)
            .map(|i| ((2.0 * std::f32::consts::PI * freq * i as f32 / 8000.0).sin() * amp) as i16)
            .collect()
    }

    #[test]
    fn the_phone_leg_decodes_audio_and_keys_and_latches_onto_the_sender() {
        let offered: SocketAddr = "10.0.0.9:4000".parse().unwrap();
        let mu = Codec::G711(super::super::audio::Law::Mu);
        let mut caller =
            PhoneLeg::new("127.0.0.1:9".parse().unwrap(), mu, Some(101), 1, 1).unwrap();
        let mut leg = PhoneLeg::new(offered, mu, Some(101), 2, 100).unwrap();
        let t: Vec<i16> = tone(400.0, PHONE_FRAME, 8000.0);
        let frame: [i16; PHONE_FRAME] = t.clone().try_into().unwrap();
        let pkt = caller.frame(&frame).to_vec();
        let nat: SocketAddr = "192.0.2.1:6000".parse().unwrap();
        assert_eq!(leg.receive(nat, &pkt), None);
        assert_eq!(leg.remote, nat, "symmetric RTP");
        let mut got = [0i16; PHONE_FRAME];
        leg.take_frame(&mut got);
        assert!((i32::from(level(&got)) - i32::from(level(&frame))).abs() <= 1);
        leg.take_frame(&mut got);
        assert_eq!(level(&got), 127, "silence when nothing came");
        // A telephone event: '#', once.
        let mut ev = Vec::new();
        header(
            101,
            9,
            5000,
            1,
            &ExtIds::default(),
            &ExtOut::default(),
            &mut ev,
        );
        ev.extend_from_slice(&[11, 0x0a, 0, 160]);
        assert_eq!(leg.receive(nat, &ev), Some('#'));
        assert_eq!(leg.receive(nat, &ev), None);
        assert_eq!(leg.receive(nat, b"\x80\xc8junk"), None);
    }

    #[test]
    fn the_room_leg_carries_the_caller_as_opus_and_mixes_two_speakers() {
        let (bridge_keys, peer_keys) = MasterKeys::local_pair([3; 60]);
        let b: SocketAddr = "127.0.0.1:10000".parse().unwrap();
        let mut leg =
            RoomLeg::new(b, Srtp::new(&peer_keys).unwrap(), 111, 1, 77, 1, 4, 10).unwrap();
        // The "bridge" decrypts what the leg sends: Opus with a voice level.
        let mut bridge = Srtp::new(&bridge_keys).unwrap();
        let t = tone(400.0, PHONE_FRAME * 10, 8000.0);
        let mut plain = Vec::new();
        let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
        let mut loud = 0;
        for chunk in t.chunks_exact(PHONE_FRAME) {
            let f: [i16; PHONE_FRAME] = chunk.try_into().unwrap();
            let d = leg.send(&f, false).unwrap().to_vec();
            let v = with_level(&d);
            assert_eq!((v.pt, v.ssrc), (111, 77));
            assert!(
                v.audio_level
                    .is_some_and(|l| l & 0x80 != 0 && l & 0x7f < 30)
            );
            let (_, n) = bridge
                .unprotect_rtp(&d, v.hdr_len, v.ssrc, v.seq, &mut plain)
                .unwrap();
            let mut pcm = [0i16; ROOM_FRAME];
            assert_eq!(
                decoder.decode(&plain[..n], &mut pcm, false).unwrap(),
                ROOM_FRAME
            );
            if level(&pcm) < 40 {
                loud += 1;
            }
        }
        assert!(loud >= 7, "{loud} of 10 frames carried the tone");
        let d = leg.send(&[0; PHONE_FRAME], true).unwrap().to_vec();
        let v = with_level(&d);
        assert_eq!(v.audio_level, Some(127), "muted: silence");

        // Two speakers from the bridge, each an Opus tone on its SSRC: both in the mix.
        let mut enc =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        let now = Instant::now();
        let mut seqs = [0u16; 2];
        for round in 0..6 {
            for (k, ssrc) in [1001u32, 1002].iter().enumerate() {
                let wide: Vec<i16> = (0..ROOM_FRAME)
                    .map(|i| {
                        let x = (round * ROOM_FRAME + i) as f32 / 48_000.0;
                        ((2.0 * std::f32::consts::PI * 300.0 * (k + 1) as f32 * x).sin() * 6000.0)
                            as i16
                    })
                    .collect();
                let mut opus = vec![0u8; 400];
                let n = enc.encode(&wide, &mut opus).unwrap();
                let mut hdr = Vec::new();
                header(
                    111,
                    seqs[k],
                    0,
                    *ssrc,
                    &ExtIds::default(),
                    &ExtOut::default(),
                    &mut hdr,
                );
                let mut pkt = Vec::new();
                bridge
                    .protect_rtp(&hdr, &opus[..n], *ssrc, u64::from(seqs[k]), &mut pkt)
                    .unwrap();
                seqs[k] += 1;
                leg.receive(&pkt, now);
            }
        }
        assert_eq!((leg.received, leg.unusable), (12, 0));
        let mut out = [0i16; PHONE_FRAME];
        let mut levels = Vec::new();
        for _ in 0..6 {
            leg.mixed(&mut out);
            levels.push(level(&out));
        }
        assert!(
            levels.iter().filter(|l| **l < 40).count() >= 4,
            "{levels:?}"
        );
        // A forged packet does not decrypt.
        let mut forged = Vec::new();
        header(
            111,
            50,
            0,
            1001,
            &ExtIds::default(),
            &ExtOut::default(),
            &mut forged,
        );
        forged.extend_from_slice(&[0u8; 30]);
        leg.receive(&forged, now);
        assert_eq!(leg.unusable, 1);
    }

    #[test]
    fn an_opus_phone_is_heard_at_8_khz_with_48_khz_timestamps() {
        let opus = Codec::Opus(111);
        let mut caller = PhoneLeg::new("127.0.0.1:9".parse().unwrap(), opus, None, 1, 1).unwrap();
        let mut leg = PhoneLeg::new("127.0.0.1:8".parse().unwrap(), opus, None, 2, 1).unwrap();
        let t = tone(400.0, PHONE_FRAME * 10, 8000.0);
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut stamps = Vec::new();
        for chunk in t.chunks_exact(PHONE_FRAME) {
            let f: [i16; PHONE_FRAME] = chunk.try_into().unwrap();
            let pkt = caller.frame(&f).to_vec();
            stamps.push(parse_rtp(&pkt, &ExtIds::default()).unwrap().ts);
            assert!(
                pkt.len() < 12 + PHONE_FRAME,
                "Opus, not G.711: {} bytes",
                pkt.len()
            );
            leg.receive(from, &pkt);
        }
        assert_eq!(stamps[1].wrapping_sub(stamps[0]), 960);
        let mut got = [0i16; PHONE_FRAME];
        let mut loud = 0;
        for _ in 0..10 {
            leg.take_frame(&mut got);
            if level(&got) < 40 {
                loud += 1;
            }
        }
        assert!(loud >= 7, "{loud} of 10 frames carried the tone");
        assert_eq!(leg.unusable, 0);
    }

    #[test]
    fn speaker_slots_are_reused_after_a_second_of_silence() {
        let mut s = Slots::new(2);
        let t0 = Instant::now();
        assert_eq!(s.slot(1, t0), Some((0, true)));
        assert_eq!(s.slot(2, t0), Some((1, true)));
        assert_eq!(s.slot(1, t0), Some((0, false)));
        assert_eq!(s.slot(3, t0 + Duration::from_millis(500)), None);
        s.slot(2, t0 + Duration::from_millis(900));
        assert_eq!(s.slot(3, t0 + SLOT_IDLE), Some((0, true)));
    }
}
