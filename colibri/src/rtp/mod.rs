//! The media wire: stateless reading and writing of what arrives on and leaves the bridge's
//! media port. RTP headers and their extensions (`header`), video payload descriptors
//! (`payload`), the AV1 dependency descriptor (`dd`), RED audio (`red`), the STUN peek that routes a datagram
//! (`stun`) and RTCP, one file per packet type (`rtcp`). Nothing here keeps state, reads a
//! clock or allocates beyond the buffer it writes into (a dependency descriptor's template
//! structure, sent with keyframes, is the exception); the media engine (`crate::media`) keeps the state. Every reader takes
//! untrusted bytes and answers `None` or stops rather than panicking (fuzzed in `fuzz/`).

pub mod dd;
pub mod header;
pub mod payload;
pub mod red;
pub mod rtcp;
pub mod stun;

pub use header::{ExtIds, ExtOut, RtpOut, RtpView, parse_rtp, write_header};

/// The sequence number `seq` extended to be closest to `near`.
pub fn extend_seq(near: u64, seq: u16) -> u64 {
    let base = near & !0xffff;
    let cand = base | u64::from(seq);
    let alts = [cand.wrapping_sub(0x10000), cand, cand + 0x10000];
    alts.into_iter()
        .filter(|c| *c < (1 << 48))
        .min_by_key(|c| c.abs_diff(near))
        .unwrap_or(cand)
}

/// RTP (not RTCP, STUN or DTLS) on a multiplexed port.
pub fn is_rtp(data: &[u8]) -> bool {
    data.len() >= 12 && data[0] >> 6 == 2 && !(192..=223).contains(&data[1])
}

/// RTCP rather than RTP on a multiplexed port (RFC 5761 §4: payload types 64–95 with the
/// marker bit).
pub fn is_rtcp(data: &[u8]) -> bool {
    data.len() >= 8 && data[0] >> 6 == 2 && (192..=223).contains(&data[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_extension() {
        assert_eq!(extend_seq(65_535, 0), 65_536);
        assert_eq!(extend_seq(65_536, 65_535), 65_535);
        assert_eq!(extend_seq(100, 50), 50);
        assert_eq!(extend_seq(5, 65_534), 65_534);
    }

    #[test]
    fn demultiplexing() {
        assert!(is_rtp(&[0x80, 111, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_rtp(&[0x80, 200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert!(is_rtcp(&[0x80, 200, 0, 1, 0, 0, 0, 0]));
        assert!(!is_rtcp(&[0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0]), "DTLS");
        assert!(!is_rtp(&[]) && !is_rtcp(&[]));
    }
}
