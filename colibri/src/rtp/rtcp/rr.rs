//! Receiver Report (RFC 3550 §6.4.2) and the report block (§6.4.1) that says how one stream
//! arrives: losses, highest sequence number, jitter, and the delay since its last SR.

/// The RTCP packet type of an RR.
pub const PT: u8 = 201;

/// Append an RR header for `blocks` report blocks that follow.
pub fn write_header(buf: &mut Vec<u8>, sender: u32, blocks: u8) {
    buf.push(0x80 | (blocks & 0x1f));
    buf.push(PT);
    buf.extend_from_slice(&(1 + 6 * u16::from(blocks)).to_be_bytes());
    buf.extend_from_slice(&sender.to_be_bytes());
}

/// One report block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportBlock {
    pub ssrc: u32,
    /// Lost since the last report, in 1/256.
    pub fraction_lost: u8,
    /// Lost since the start (24 bits).
    pub cumulative_lost: u32,
    pub highest_seq: u32,
    pub jitter: u32,
    /// The middle 32 bits of the last SR's NTP time, or 0.
    pub lsr: u32,
    /// Since that SR, in 1/65536 s.
    pub dlsr: u32,
}

impl ReportBlock {
    /// Append the 24 bytes of the block.
    pub fn write(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&self.ssrc.to_be_bytes());
        buf.push(self.fraction_lost);
        buf.extend_from_slice(&self.cumulative_lost.min(0x7f_ffff).to_be_bytes()[1..]);
        buf.extend_from_slice(&self.highest_seq.to_be_bytes());
        buf.extend_from_slice(&self.jitter.to_be_bytes());
        buf.extend_from_slice(&self.lsr.to_be_bytes());
        buf.extend_from_slice(&self.dlsr.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let mut b = Vec::new();
        write_header(&mut b, 7, 1);
        ReportBlock {
            ssrc: 5,
            fraction_lost: 42,
            cumulative_lost: 3,
            highest_seq: 15,
            ..ReportBlock::default()
        }
        .write(&mut b);
        assert_eq!(b.len(), 32);
        assert_eq!(&b[..8], [0x81, 201, 0, 7, 0, 0, 0, 7]);
        assert_eq!(&b[8..16], [0, 0, 0, 5, 42, 0, 0, 3]);
        assert_eq!(u16::from_be_bytes([b[2], b[3]]) as usize, b.len() / 4 - 1);
    }
}
