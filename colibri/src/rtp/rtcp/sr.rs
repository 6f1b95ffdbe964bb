//! Sender Report (RFC 3550 §6.4.1): the sender's wall-clock (NTP) time, the RTP timestamp
//! of the same instant, and its packet and octet counts. Receivers use it for lip sync and
//! to measure the round trip (their reports echo the middle of the NTP time).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The RTCP packet type of an SR.
pub const PT: u8 = 200;

/// Wall-clock time for an `Instant`, from one reference pair (taken once by whoever drives
/// the engine: nothing here reads a clock).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub instant: Instant,
    pub system: SystemTime,
}

impl Clock {
    /// 64-bit NTP timestamp of `at`.
    pub fn ntp(&self, at: Instant) -> u64 {
        let t = if at >= self.instant {
            self.system + (at - self.instant)
        } else {
            self.system - (self.instant - at)
        };
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs() + 2_208_988_800;
        let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
        (secs << 32) | frac
    }
}

/// Append an SR without report blocks.
pub fn write(buf: &mut Vec<u8>, ssrc: u32, ntp: u64, rtp_ts: u32, packets: u32, octets: u32) {
    buf.extend_from_slice(&[0x80, PT, 0, 6]);
    buf.extend_from_slice(&ssrc.to_be_bytes());
    buf.extend_from_slice(&ntp.to_be_bytes());
    buf.extend_from_slice(&rtp_ts.to_be_bytes());
    buf.extend_from_slice(&packets.to_be_bytes());
    buf.extend_from_slice(&octets.to_be_bytes());
}

/// The sender's SSRC and the middle 32 bits of the NTP time of an SR (one whole packet).
pub fn parse(pkt: &[u8]) -> Option<(u32, u32)> {
    if pkt.len() < 28 {
        return None;
    }
    let ssrc = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
    let ntp_mid = u32::from_be_bytes([pkt[10], pkt[11], pkt[12], pkt[13]]);
    Some((ssrc, ntp_mid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn round_trip_and_ntp() {
        let clock = Clock {
            instant: Instant::now(),
            system: UNIX_EPOCH + Duration::from_millis(1500),
        };
        let ntp = clock.ntp(clock.instant + Duration::from_millis(500));
        assert_eq!(ntp >> 32, 2_208_988_802);
        assert_eq!(ntp & 0xffff_ffff, 0);
        let mut b = Vec::new();
        write(&mut b, 9, ntp, 1000, 3, 300);
        assert_eq!(b.len(), 28);
        assert_eq!(&b[..8], [0x80, 200, 0, 6, 0, 0, 0, 9]);
        assert_eq!(parse(&b), Some((9, (ntp >> 16) as u32)));
        assert_eq!(parse(&b[..27]), None);
    }
}
