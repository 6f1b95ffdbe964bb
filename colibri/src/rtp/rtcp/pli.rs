//! Picture Loss Indication (RFC 4585 §6.3.1): a receiver asks the sender of `media` for a
//! keyframe.

use super::{PSFB, media_ssrc};

/// The feedback message type of a PLI.
pub const FMT: u8 = 1;

/// Append a PLI from `sender` about `media`.
pub fn write(buf: &mut Vec<u8>, sender: u32, media: u32) {
    buf.extend_from_slice(&[0x80 | FMT, PSFB, 0, 2]);
    buf.extend_from_slice(&sender.to_be_bytes());
    buf.extend_from_slice(&media.to_be_bytes());
}

/// The media SSRC a PLI (one whole packet) is about.
pub fn parse(pkt: &[u8]) -> Option<u32> {
    media_ssrc(pkt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut b = Vec::new();
        write(&mut b, 1, 6);
        assert_eq!(b, [0x81, 206, 0, 2, 0, 0, 0, 1, 0, 0, 0, 6]);
        assert_eq!(parse(&b), Some(6));
        assert_eq!(parse(&b[..11]), None);
    }
}
