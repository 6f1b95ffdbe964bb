//! Transport-wide congestion control feedback (RTPFB FMT 15,
//! draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1): for a run of transport-wide
//! sequence numbers, whether each arrived and when, as status chunks and arrival deltas in
//! 250 µs ticks from a 64 ms reference time.

use super::{RTPFB, finish_length};

/// The feedback message type of transport-cc feedback.
pub const FMT: u8 = 15;

/// Status symbols: not received, received with a one-byte delta, with a two-byte delta.
pub const NOT_RECEIVED: u8 = 0;
pub const SMALL_DELTA: u8 = 1;
pub const LARGE_DELTA: u8 = 2;

/// One transport-cc feedback: base sequence number, and per status the arrival time in µs
/// (on the receiver's clock) or `None` (not received).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwccFeedback {
    pub base: u16,
    pub arrivals: Vec<Option<i64>>,
}

/// Parse an RTPFB FMT 15 packet (whole, from its RTCP header). `None` if malformed.
pub fn parse(pkt: &[u8]) -> Option<TwccFeedback> {
    if pkt.len() < 20 || pkt[0] & 0x1f != 15 || pkt[1] != 205 {
        return None;
    }
    let base = u16::from_be_bytes([pkt[12], pkt[13]]);
    let count = usize::from(u16::from_be_bytes([pkt[14], pkt[15]]));
    let r = u32::from_be_bytes([0, pkt[16], pkt[17], pkt[18]]);
    // 24-bit signed, multiples of 64 ms.
    let reference = (((r << 8) as i32) >> 8) as i64 * 64_000;
    let mut symbols: Vec<u8> = Vec::with_capacity(count);
    let mut i = 20;
    while symbols.len() < count {
        let c = u16::from_be_bytes([*pkt.get(i)?, *pkt.get(i + 1)?]);
        i += 2;
        if c & 0x8000 == 0 {
            let sym = ((c >> 13) & 3) as u8;
            let run = usize::from(c & 0x1fff).min(count - symbols.len());
            symbols.extend(std::iter::repeat_n(sym, run));
        } else if c & 0x4000 == 0 {
            for b in (0..14).rev() {
                symbols.push(((c >> b) & 1) as u8);
            }
        } else {
            for b in (0..7).rev() {
                symbols.push(((c >> (2 * b)) & 3) as u8);
            }
        }
    }
    symbols.truncate(count);
    let mut t = reference;
    let mut arrivals = Vec::with_capacity(count);
    for s in symbols {
        match s {
            0 => arrivals.push(None),
            1 => {
                t += i64::from(*pkt.get(i)?) * 250;
                i += 1;
                arrivals.push(Some(t));
            }
            2 => {
                t += i64::from(i16::from_be_bytes([*pkt.get(i)?, *pkt.get(i + 1)?])) * 250;
                i += 2;
                arrivals.push(Some(t));
            }
            _ => return None,
        }
    }
    Some(TwccFeedback { base, arrivals })
}

/// The header fields of one feedback packet.
#[derive(Debug, Clone, Copy)]
pub struct FeedbackHeader {
    pub sender: u32,
    pub media: u32,
    /// The transport-wide sequence number of the first status.
    pub base: u16,
    /// Reference time in multiples of 64 ms (24 bits).
    pub reference: u32,
    /// Feedback packet count (wraps).
    pub count: u8,
}

/// Append a feedback packet: `statuses` (one symbol each) as two-bit status vector chunks and
/// `deltas` (already encoded, one or two bytes per received packet), padded to 32 bits.
pub fn write(buf: &mut Vec<u8>, h: &FeedbackHeader, statuses: &[u8], deltas: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(&[0x80 | FMT, RTPFB, 0, 0]);
    buf.extend_from_slice(&h.sender.to_be_bytes());
    buf.extend_from_slice(&h.media.to_be_bytes());
    buf.extend_from_slice(&h.base.to_be_bytes());
    buf.extend_from_slice(&(statuses.len() as u16).to_be_bytes());
    buf.extend_from_slice(&(h.reference & 0x00ff_ffff).to_be_bytes()[1..]);
    buf.push(h.count);
    // Status vector chunks with two-bit symbols: seven statuses each.
    for chunk in statuses.chunks(7) {
        let mut c: u16 = 0xC000;
        for (i, s) in chunk.iter().enumerate() {
            c |= u16::from(*s & 3) << (12 - 2 * i);
        }
        buf.extend_from_slice(&c.to_be_bytes());
    }
    buf.extend_from_slice(deltas);
    let body = buf.len() - start;
    let pad = (4 - body % 4) % 4;
    if pad > 0 {
        buf.extend(std::iter::repeat_n(0u8, pad - 1));
        buf.push(pad as u8);
        buf[start] |= 0x20;
    }
    finish_length(buf, start);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_chunks_parse() {
        // Run-length and one-bit chunks (as browsers write them).
        let mut p = vec![
            0x8F, 205, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 5, 0, 17, 0, 0, 1, 0,
        ];
        p.extend_from_slice(&0x2003u16.to_be_bytes()); // run of 3 × "small delta"
        p.extend_from_slice(&0xA000u16.to_be_bytes()); // 1-bit vector: 1, then 13 × 0
        p.extend_from_slice(&[4, 4, 4, 8, 0, 0]);
        let fb = parse(&p).unwrap();
        assert_eq!(fb.arrivals.len(), 17);
        assert_eq!(fb.arrivals[0], Some(64_000 + 1000));
        assert_eq!(fb.arrivals[3], Some(64_000 + 5000));
        assert!(fb.arrivals[4..].iter().all(Option::is_none));
        // Truncated: None, never a panic.
        for n in 0..p.len() - 2 {
            let _ = parse(&p[..n]);
        }
        assert!(parse(&p[..22]).is_none());
    }

    #[test]
    fn what_we_write_parses() {
        let h = FeedbackHeader {
            sender: 1,
            media: 9,
            base: 65_535,
            reference: 3,
            count: 7,
        };
        let mut b = Vec::new();
        write(
            &mut b,
            &h,
            &[SMALL_DELTA, NOT_RECEIVED, LARGE_DELTA],
            &[4, 0x01, 0x18],
        );
        assert_eq!(b.len() % 4, 0);
        assert_eq!(b[0] & 0x20, 0x20, "padded");
        let fb = parse(&b).unwrap();
        assert_eq!(fb.base, 65_535);
        assert_eq!(
            fb.arrivals,
            [Some(192_000 + 1000), None, Some(192_000 + 1000 + 280 * 250)]
        );
    }
}
