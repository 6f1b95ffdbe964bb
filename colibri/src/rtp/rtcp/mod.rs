//! RTCP (RFC 3550 §6) and its feedback messages (RFC 4585, RFC 5104, transport-cc), one file
//! per packet type. `parse_feedback` walks a compound packet from a receiver and collects what
//! the bridge acts on; the writers append one packet to a buffer.

pub mod fir;
pub mod nack;
pub mod pli;
pub mod rr;
pub mod sr;
pub mod twcc;

/// Payload type of a transport-layer feedback message (RFC 4585 §6.1).
pub const RTPFB: u8 = 205;
/// Payload type of a payload-specific feedback message (RFC 4585 §6.1).
pub const PSFB: u8 = 206;

/// The fixed part of a feedback message: header, sender SSRC, media SSRC.
pub const FEEDBACK_HEADER: usize = 12;

/// The media SSRC of a feedback message (`pkt` is one whole RTCP packet).
fn media_ssrc(pkt: &[u8]) -> Option<u32> {
    let b = pkt.get(8..12)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Set the length field of the packet that starts at `start` from the buffer's end (RFC 3550
/// §6.4.1: 32-bit words minus one).
fn finish_length(buf: &mut [u8], start: usize) {
    let words = ((buf.len() - start) / 4 - 1) as u16;
    buf[start + 2..start + 4].copy_from_slice(&words.to_be_bytes());
}

/// What a receiver's RTCP asks about a stream the bridge sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feedback {
    Nack {
        ssrc: u32,
        seqs: Vec<u16>,
    },
    Keyframe {
        ssrc: u32,
    },
    /// A sender report about one of the endpoint's own streams: the middle 32 bits of its NTP
    /// time, for the LSR field of the bridge's receiver reports.
    SenderReport {
        ssrc: u32,
        ntp_mid: u32,
    },
    /// Transport-cc feedback about what the bridge sent the endpoint.
    TransportCc(twcc::TwccFeedback),
}

/// Sender reports, NACKs, PLIs, FIRs and transport-cc feedback in a compound RTCP packet.
/// Malformed parts end the walk; at most `max_nacks` sequence numbers are taken.
pub fn parse_feedback(rtcp: &[u8], max_nacks: usize, out: &mut Vec<Feedback>) {
    let mut rest = rtcp;
    let mut nack_budget = max_nacks;
    while rest.len() >= 4 {
        let (b0, pt) = (rest[0], rest[1]);
        let len = (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1) * 4;
        if b0 >> 6 != 2 || len > rest.len() {
            return;
        }
        let pkt = &rest[..len];
        rest = &rest[len..];
        let fmt = b0 & 0x1f;
        match (pt, fmt) {
            (sr::PT, _) => {
                if let Some((ssrc, ntp_mid)) = sr::parse(pkt) {
                    out.push(Feedback::SenderReport { ssrc, ntp_mid });
                }
            }
            (RTPFB, nack::FMT) => {
                if let Some((ssrc, seqs)) = nack::parse(pkt, &mut nack_budget) {
                    out.push(Feedback::Nack { ssrc, seqs });
                }
            }
            (PSFB, pli::FMT) => {
                if let Some(ssrc) = pli::parse(pkt) {
                    out.push(Feedback::Keyframe { ssrc });
                }
            }
            (RTPFB, twcc::FMT) => {
                if let Some(fb) = twcc::parse(pkt) {
                    out.push(Feedback::TransportCc(fb));
                }
            }
            (PSFB, fir::FMT) => {
                out.extend(fir::requested(pkt).map(|ssrc| Feedback::Keyframe { ssrc }));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feedback_parsing() {
        let mut rtcp = Vec::new();
        // RR (ignored), NACK for 100 and 102, PLI, FIR.
        rtcp.extend_from_slice(&[0x80, 201, 0, 1, 0, 0, 0, 1]);
        rtcp.extend_from_slice(&[0x81, 205, 0, 3, 0, 0, 0, 1, 0, 0, 0, 5, 0, 100, 0, 2]);
        rtcp.extend_from_slice(&[0x81, 206, 0, 2, 0, 0, 0, 1, 0, 0, 0, 6]);
        rtcp.extend_from_slice(&[
            0x84, 206, 0, 4, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 8, 1, 0, 0, 0,
        ]);
        let mut out = Vec::new();
        parse_feedback(&rtcp, 100, &mut out);
        assert_eq!(
            out,
            [
                Feedback::Nack {
                    ssrc: 5,
                    seqs: vec![100, 102]
                },
                Feedback::Keyframe { ssrc: 6 },
                Feedback::Keyframe { ssrc: 8 },
            ]
        );
        // Garbage and truncation end the walk without panicking.
        out.clear();
        parse_feedback(&[0x81, 205, 0xff, 0xff, 1, 2], 100, &mut out);
        parse_feedback(&[0xff; 3], 100, &mut out);
        assert!(out.is_empty());
        // The NACK budget bounds the work.
        parse_feedback(&rtcp, 1, &mut out);
        assert_eq!(
            out[0],
            Feedback::Nack {
                ssrc: 5,
                seqs: vec![100]
            }
        );
        // Every prefix of a valid compound packet: no panic.
        for n in 0..rtcp.len() {
            parse_feedback(&rtcp[..n], 100, &mut out);
        }
    }
}
