//! Full Intra Request (RFC 5104 §4.3.1): a list of (SSRC, command sequence number) entries,
//! each asking that sender for a keyframe.

use super::FEEDBACK_HEADER;

/// The feedback message type of a FIR.
pub const FMT: u8 = 4;

/// The SSRCs a FIR (one whole packet) asks keyframes of.
pub fn requested(pkt: &[u8]) -> impl Iterator<Item = u32> + '_ {
    pkt.get(FEEDBACK_HEADER..)
        .unwrap_or_default()
        .chunks_exact(8)
        .map(|fci| u32::from_be_bytes([fci[0], fci[1], fci[2], fci[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries() {
        let p = [
            0x84, 206, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 8, 1, 0, 0, 0, 0, 0, 0, 9, 2, 0, 0, 0,
        ];
        assert_eq!(requested(&p).collect::<Vec<_>>(), [8, 9]);
        assert_eq!(requested(&p[..20]).count(), 1);
        assert_eq!(requested(&p[..4]).count(), 0);
    }
}
