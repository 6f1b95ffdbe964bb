//! RTP fixed headers and RFC 8285 header extensions: reading what a sender sent (the few
//! extensions the bridge acts on) and writing the header of a forwarded packet.

use std::sync::Arc;

/// Header extension ids negotiated with one receiver (0: not negotiated).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtIds {
    pub audio_level: u8,
    pub video_orientation: u8,
    pub dependency_descriptor: u8,
    /// Read from senders (the fast path does not write it: no bandwidth estimation).
    pub transport_cc: u8,
}

/// What the fast path needs from an RTP header (RFC 3550 §5.1, RFC 8285 extensions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtpView {
    pub marker: bool,
    pub pt: u8,
    pub seq: u16,
    pub ts: u32,
    pub ssrc: u32,
    pub hdr_len: usize,
    pub padding: bool,
    /// The ssrc-audio-level byte.
    pub audio_level: Option<u8>,
    pub video_orientation: Option<u8>,
    /// Byte range of the dependency descriptor in the packet.
    pub dependency_descriptor: Option<(usize, usize)>,
    pub transport_seq: Option<u16>,
}

/// Parse an RTP header with the extension ids `ids`. `None`: not a well-formed RTP header.
pub fn parse_rtp(data: &[u8], ids: &ExtIds) -> Option<RtpView> {
    if data.len() < 12 || data[0] >> 6 != 2 {
        return None;
    }
    let cc = usize::from(data[0] & 0x0f);
    let mut v = RtpView {
        marker: data[1] & 0x80 != 0,
        pt: data[1] & 0x7f,
        seq: u16::from_be_bytes([data[2], data[3]]),
        ts: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
        ssrc: u32::from_be_bytes([data[8], data[9], data[10], data[11]]),
        padding: data[0] & 0x20 != 0,
        ..RtpView::default()
    };
    let mut off = 12 + 4 * cc;
    if data[0] & 0x10 != 0 {
        let x = data.get(off..off + 4)?;
        let profile = u16::from_be_bytes([x[0], x[1]]);
        let words = usize::from(u16::from_be_bytes([x[2], x[3]]));
        let start = off + 4;
        let end = start + words * 4;
        let ext = data.get(start..end)?;
        let two_byte = profile & 0xfff0 == 0x1000;
        if profile == 0xBEDE || two_byte {
            let mut i = 0;
            while i < ext.len() {
                let (id, len, hdr) = if two_byte {
                    let id = ext[i];
                    if id == 0 {
                        i += 1;
                        continue;
                    }
                    let Some(&l) = ext.get(i + 1) else {
                        break;
                    };
                    (id, usize::from(l), 2)
                } else {
                    let b = ext[i];
                    if b == 0 {
                        i += 1;
                        continue;
                    }
                    if b >> 4 == 15 {
                        break;
                    }
                    (b >> 4, usize::from(b & 0x0f) + 1, 1)
                };
                let vs = i + hdr;
                let Some(val) = ext.get(vs..vs + len) else {
                    break;
                };
                if id == ids.audio_level && len >= 1 {
                    v.audio_level = Some(val[0]);
                } else if id == ids.video_orientation && len >= 1 {
                    v.video_orientation = Some(val[0]);
                } else if id == ids.dependency_descriptor {
                    v.dependency_descriptor = Some((start + vs, start + vs + len));
                } else if id == ids.transport_cc && len >= 2 {
                    v.transport_seq = Some(u16::from_be_bytes([val[0], val[1]]));
                }
                i = vs + len;
            }
        }
        off = end;
    }
    if off > data.len() {
        return None;
    }
    v.hdr_len = off;
    Some(v)
}

/// Header extension values of one forwarded packet (shared by all its receivers).
#[derive(Debug, Clone, Default)]
pub struct ExtOut {
    /// The ssrc-audio-level byte (V bit and level), RFC 6464.
    pub audio_level: Option<u8>,
    /// The CVO byte (urn:3gpp:video-orientation).
    pub video_orientation: Option<u8>,
    pub dependency_descriptor: Option<Arc<[u8]>>,
}

/// The fields of one forwarded RTP packet that differ per receiver.
#[derive(Debug, Clone, Copy)]
pub struct RtpOut {
    pub pt: u8,
    pub marker: bool,
    pub seq: u16,
    pub ts: u32,
    pub ssrc: u32,
}

/// Append the RTP header (RFC 3550 §5.1) with the extensions `ids` allows (RFC 8285: the
/// one-byte form, or the two-byte form when a value does not fit it).
pub fn write_header(
    buf: &mut Vec<u8>,
    h: &RtpOut,
    ids: &ExtIds,
    ext: &ExtOut,
    transport_seq: Option<u16>,
) {
    let mut items: [(u8, &[u8]); 4] = [(0, &[]); 4];
    let mut n = 0;
    let al;
    let vo;
    let tw;
    if let (id @ 1..=14, Some(v)) = (ids.transport_cc, transport_seq) {
        tw = v.to_be_bytes();
        items[n] = (id, &tw);
        n += 1;
    }
    if let (id @ 1..=14, Some(v)) = (ids.audio_level, ext.audio_level) {
        al = [v];
        items[n] = (id, &al);
        n += 1;
    }
    if let (id @ 1..=14, Some(v)) = (ids.video_orientation, ext.video_orientation) {
        vo = [v];
        items[n] = (id, &vo);
        n += 1;
    }
    if let (id @ 1..=14, Some(v)) = (ids.dependency_descriptor, &ext.dependency_descriptor)
        && !v.is_empty()
        && v.len() <= 255
    {
        items[n] = (id, v);
        n += 1;
    }
    let items = &items[..n];
    buf.push(0x80 | if items.is_empty() { 0 } else { 0x10 });
    buf.push(h.pt & 0x7f | if h.marker { 0x80 } else { 0 });
    buf.extend_from_slice(&h.seq.to_be_bytes());
    buf.extend_from_slice(&h.ts.to_be_bytes());
    buf.extend_from_slice(&h.ssrc.to_be_bytes());
    if items.is_empty() {
        return;
    }
    let two_byte = items.iter().any(|(_, v)| v.len() > 16);
    let start = buf.len();
    buf.extend_from_slice(if two_byte {
        &[0x10, 0x00, 0, 0]
    } else {
        &[0xBE, 0xDE, 0, 0]
    });
    for (id, v) in items {
        if two_byte {
            buf.push(*id);
            buf.push(v.len() as u8);
        } else {
            buf.push(id << 4 | (v.len() as u8 - 1));
        }
        buf.extend_from_slice(v);
    }
    while !(buf.len() - start).is_multiple_of(4) {
        buf.push(0);
    }
    let words = ((buf.len() - start - 4) / 4) as u16;
    buf[start + 2..start + 4].copy_from_slice(&words.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: ExtIds = ExtIds {
        audio_level: 1,
        video_orientation: 4,
        dependency_descriptor: 11,
        transport_cc: 5,
    };

    #[test]
    fn parses_headers_and_extensions() {
        // One-byte form: audio level 0x9e, transport-cc 0x0102, padding.
        let mut p = vec![0x90, 0xEF, 0x12, 0x34, 0, 0, 0, 9, 0, 0, 0, 7];
        p.extend_from_slice(&[0xBE, 0xDE, 0, 2, 0x10, 0x9e, 0x51, 0x01, 0x02, 0, 0, 0]);
        p.extend_from_slice(&[1, 2, 3]);
        let v = parse_rtp(&p, &IDS).unwrap();
        assert_eq!(
            (v.marker, v.pt, v.seq, v.ts, v.ssrc, v.hdr_len),
            (true, 111, 0x1234, 9, 7, 24)
        );
        assert_eq!(v.audio_level, Some(0x9e));
        assert_eq!(v.transport_seq, Some(0x0102));
        // Two-byte form with a 20-byte dependency descriptor.
        let mut p = vec![0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2];
        p.extend_from_slice(&[0x10, 0x00, 0, 6, 11, 20]);
        p.extend_from_slice(&[7u8; 20]);
        p.extend_from_slice(&[0, 0]);
        let v = parse_rtp(&p, &IDS).unwrap();
        assert_eq!(v.dependency_descriptor, Some((18, 38)));
        assert_eq!(v.hdr_len, 40);
        // Truncated or garbage: None, never a panic.
        assert!(parse_rtp(&p[..20], &IDS).is_none());
        assert!(parse_rtp(&[0x40; 12], &IDS).is_none());
        for n in 0..p.len() {
            let _ = parse_rtp(&p[..n], &IDS);
        }
        let mut bad = p.clone();
        bad[17] = 200; // element longer than the block
        assert!(parse_rtp(&bad, &IDS).is_some());
    }

    #[test]
    fn header_with_one_and_two_byte_extensions() {
        let h = RtpOut {
            pt: 111,
            marker: true,
            seq: 0x1234,
            ts: 0xdeadbeef,
            ssrc: 7,
        };
        let ids = ExtIds {
            audio_level: 1,
            video_orientation: 0,
            dependency_descriptor: 11,
            transport_cc: 0,
        };
        let mut b = Vec::new();
        write_header(&mut b, &h, &ids, &ExtOut::default(), None);
        assert_eq!(
            b,
            [0x80, 0xEF, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 7]
        );
        b.clear();
        let ext = ExtOut {
            audio_level: Some(0x80 | 30),
            ..ExtOut::default()
        };
        write_header(&mut b, &h, &ids, &ext, None);
        assert_eq!(&b[12..], [0xBE, 0xDE, 0, 1, 0x10, 0x9E, 0, 0]);
        assert_eq!(b[0], 0x90);
        b.clear();
        let ext = ExtOut {
            dependency_descriptor: Some(Arc::from(vec![9u8; 20])),
            ..ExtOut::default()
        };
        write_header(&mut b, &h, &ids, &ext, None);
        assert_eq!(&b[12..18], [0x10, 0x00, 0, 6, 11, 20]);
        assert_eq!(b.len(), 12 + 4 + 24);
    }
}
