//! Generic NACK (RFC 4585 §6.2.1): a receiver lists the sequence numbers it misses as packet
//! ids with a bitmask of the 16 that follow.

use super::{FEEDBACK_HEADER, RTPFB, finish_length, media_ssrc};

/// The feedback message type of a generic NACK.
pub const FMT: u8 = 1;

/// Append a generic NACK for `seqs` (sorted, of one stream).
pub fn write(buf: &mut Vec<u8>, sender: u32, media: u32, seqs: &[u16]) {
    if seqs.is_empty() {
        return;
    }
    let start = buf.len();
    buf.extend_from_slice(&[0x80 | FMT, RTPFB, 0, 0]);
    buf.extend_from_slice(&sender.to_be_bytes());
    buf.extend_from_slice(&media.to_be_bytes());
    let mut i = 0;
    while i < seqs.len() {
        let pid = seqs[i];
        let mut blp: u16 = 0;
        i += 1;
        while i < seqs.len() {
            let d = seqs[i].wrapping_sub(pid);
            if d == 0 || d > 16 {
                break;
            }
            blp |= 1 << (d - 1);
            i += 1;
        }
        buf.extend_from_slice(&pid.to_be_bytes());
        buf.extend_from_slice(&blp.to_be_bytes());
    }
    finish_length(buf, start);
}

/// The media SSRC and the sequence numbers a NACK (`pkt`, one whole packet) asks for, at most
/// `budget` of them (the budget shrinks by what is taken); `None` if it asks for none.
pub fn parse(pkt: &[u8], budget: &mut usize) -> Option<(u32, Vec<u16>)> {
    let media = media_ssrc(pkt)?;
    let mut seqs = Vec::new();
    for fci in pkt[FEEDBACK_HEADER..].chunks_exact(4) {
        let pid = u16::from_be_bytes([fci[0], fci[1]]);
        let blp = u16::from_be_bytes([fci[2], fci[3]]);
        for k in 0..17u16 {
            if (k == 0 || blp & (1 << (k - 1)) != 0) && *budget > 0 {
                seqs.push(pid.wrapping_add(k));
                *budget -= 1;
            }
        }
    }
    (!seqs.is_empty()).then_some((media, seqs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut n = Vec::new();
        write(&mut n, 1, 2, &[12, 13, 30]);
        assert_eq!(
            n,
            [
                0x81, 205, 0, 4, 0, 0, 0, 1, 0, 0, 0, 2, 0, 12, 0, 1, 0, 30, 0, 0
            ]
        );
        let mut budget = 100;
        assert_eq!(parse(&n, &mut budget), Some((2, vec![12, 13, 30])));
        assert_eq!(budget, 97);
        let mut none = 0;
        assert_eq!(parse(&n, &mut none), None);
        assert_eq!(parse(&n[..8], &mut budget), None);
    }
}
