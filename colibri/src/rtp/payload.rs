//! Video payload descriptors: which packet starts a keyframe (VP8, VP9, H.264, AV1), the
//! height a VP8 keyframe announces, and rewriting the VP8 descriptor of a forwarded packet.

/// Offset of the VP8 payload header after the RTP payload descriptor (RFC 7741 §4.2).
fn vp8_header_offset(payload: &[u8]) -> Option<usize> {
    let b0 = *payload.first()?;
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let x = *payload.get(i)?;
        i += 1;
        if x & 0x80 != 0 {
            i += if *payload.get(i)? & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1;
        }
        if x & 0x30 != 0 {
            i += 1;
        }
    }
    (i < payload.len()).then_some(i)
}

/// Height of a VP8 keyframe from its frame header (RFC 6386 §9.1), if `payload` starts one.
pub fn vp8_keyframe_height(payload: &[u8]) -> Option<u32> {
    let b0 = *payload.first()?;
    if b0 & 0x10 == 0 || b0 & 0x07 != 0 {
        return None;
    }
    let h = vp8_header_offset(payload)?;
    let f = payload.get(h..h + 10)?;
    if f[0] & 0x01 != 0 || f[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    Some(u32::from(u16::from_le_bytes([f[8], f[9]]) & 0x3fff))
}

/// The codecs whose keyframes we recognise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    Vp8,
    Vp9,
    H264,
    Av1,
    Other,
}

/// Does `payload` start a keyframe? Only the first packet of one counts.
pub fn starts_keyframe(codec: VideoCodec, payload: &[u8]) -> bool {
    let Some(&b0) = payload.first() else {
        return false;
    };
    match codec {
        VideoCodec::Vp8 => {
            b0 & 0x10 != 0
                && b0 & 0x07 == 0
                && vp8_header_offset(payload).is_some_and(|h| payload[h] & 0x01 == 0)
        }
        // RFC 9628: P=0 (not inter-predicted) and B=1 (start of frame).
        // With layer indices, the base spatial layer's frame starts the picture.
        VideoCodec::Vp9 => {
            b0 & 0x40 == 0 && b0 & 0x08 != 0 && vp9_layers(payload).is_none_or(|l| l.spatial == 0)
        }
        // AV1 aggregation header: N=1 starts a coded video sequence.
        VideoCodec::Av1 => b0 & 0x08 != 0,
        VideoCodec::H264 => match b0 & 0x1f {
            5 | 7 => true,
            // STAP-A: the first aggregated NAL unit.
            24 => payload.get(3).is_some_and(|n| matches!(n & 0x1f, 5 | 7)),
            // FU-A: start bit and an IDR inside.
            28 => payload
                .get(1)
                .is_some_and(|fu| fu & 0x80 != 0 && fu & 0x1f == 5),
            _ => false,
        },
        VideoCodec::Other => false,
    }
}

/// The layer fields of a VP9 payload descriptor (RFC 9628 §4.2), for SVC forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp9Layers {
    /// The 7- or 15-bit picture id (the same for every spatial layer of a picture).
    pub picture_id: Option<u16>,
    pub spatial: u8,
    pub temporal: u8,
    /// B: the first packet of a layer frame; E: its last.
    pub start: bool,
    pub end: bool,
    /// P = 0: not predicted from an earlier picture (a keyframe's layer frames).
    pub intra: bool,
    /// The spatial layer heights of the scalability structure, when this packet has one
    /// (keyframes), lowest first.
    pub heights: [u16; 8],
    pub layers: u8,
}

/// The layer fields of a VP9 payload descriptor; `None` without layer indices (no SVC) or
/// when truncated.
pub fn vp9_layers(payload: &[u8]) -> Option<Vp9Layers> {
    let b0 = *payload.first()?;
    let (i, p, l, f, b, e, v) = (
        b0 & 0x80 != 0,
        b0 & 0x40 != 0,
        b0 & 0x20 != 0,
        b0 & 0x10 != 0,
        b0 & 0x08 != 0,
        b0 & 0x04 != 0,
        b0 & 0x02 != 0,
    );
    if !l {
        return None;
    }
    let mut at = 1;
    let mut picture_id = None;
    if i {
        let p0 = *payload.get(at)?;
        if p0 & 0x80 != 0 {
            picture_id = Some(u16::from(p0 & 0x7f) << 8 | u16::from(*payload.get(at + 1)?));
            at += 2;
        } else {
            picture_id = Some(u16::from(p0));
            at += 1;
        }
    }
    let lb = *payload.get(at)?;
    at += 1;
    if !f {
        at += 1; // TL0PICIDX
    }
    if p && f {
        // Up to three reference indices, N = 1 continuing.
        for _ in 0..3 {
            let d = *payload.get(at)?;
            at += 1;
            if d & 1 == 0 {
                break;
            }
        }
    }
    let mut out = Vp9Layers {
        picture_id,
        temporal: lb >> 5,
        spatial: (lb >> 1) & 7,
        start: b,
        end: e,
        intra: !p,
        heights: [0; 8],
        layers: 0,
    };
    if v {
        let ss = *payload.get(at)?;
        at += 1;
        let n = (ss >> 5) + 1;
        if ss & 0x10 != 0 {
            for k in 0..usize::from(n) {
                let h = payload.get(at + 2..at + 4)?;
                out.heights[k] = u16::from_be_bytes([h[0], h[1]]);
                at += 4;
            }
            out.layers = n;
        }
    }
    Some(out)
}

/// Rewrite the PictureID and TL0PICIDX of a VP8 payload descriptor (RFC 7741 §4.2) in place,
/// keeping the PictureID's width (a 7-bit one gets the low bits).
pub fn patch_vp8(payload: &mut [u8], picture_id: Option<u16>, tl0: Option<u8>) {
    let Some(&b0) = payload.first() else {
        return;
    };
    if b0 & 0x80 == 0 {
        return;
    }
    let Some(&x) = payload.get(1) else {
        return;
    };
    let mut i = 2;
    if x & 0x80 != 0 {
        let Some(&p0) = payload.get(i) else {
            return;
        };
        if p0 & 0x80 != 0 {
            if let (Some(pid), true) = (picture_id, payload.len() > i + 1) {
                payload[i] = 0x80 | ((pid >> 8) as u8 & 0x7f);
                payload[i + 1] = pid as u8;
            }
            i += 2;
        } else {
            if let Some(pid) = picture_id {
                payload[i] = pid as u8 & 0x7f;
            }
            i += 1;
        }
    }
    if x & 0x40 != 0
        && let (Some(t), Some(b)) = (tl0, payload.get_mut(i))
    {
        *b = t;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframe_detection() {
        // VP8: X=1, I=1 (15-bit picture id), S=1, then a keyframe header 640x360.
        let mut kf = vec![0x90, 0x80, 0x80, 0x01];
        kf.extend_from_slice(&[0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]);
        assert!(starts_keyframe(VideoCodec::Vp8, &kf));
        assert_eq!(vp8_keyframe_height(&kf), Some(360));
        let mut delta = kf.clone();
        delta[4] = 0x01;
        assert!(!starts_keyframe(VideoCodec::Vp8, &delta));
        assert!(!starts_keyframe(VideoCodec::Vp8, &[0x90]));
        assert!(!starts_keyframe(VideoCodec::Vp8, &[]));
        assert!(starts_keyframe(VideoCodec::H264, &[0x65, 0]));
        assert!(starts_keyframe(VideoCodec::H264, &[0x7c, 0x85]));
        assert!(!starts_keyframe(VideoCodec::H264, &[0x7c, 0x05]));
        assert!(starts_keyframe(VideoCodec::Vp9, &[0x08]));
        assert!(!starts_keyframe(VideoCodec::Vp9, &[0x48]));
    }

    #[test]
    fn vp9_layer_fields() {
        // I (15-bit pid 0x0102), L, B, keyframe with SS: three layers 320x180 … 1280x720.
        let mut p = vec![0xAA, 0x81, 0x02, 0b010_1_001_0, 7, 0b010_1_1000];
        for (w, h) in [(320u16, 180u16), (640, 360), (1280, 720)] {
            p.extend_from_slice(&w.to_be_bytes());
            p.extend_from_slice(&h.to_be_bytes());
        }
        let v = vp9_layers(&p).unwrap();
        assert_eq!(v.picture_id, Some(0x0102));
        assert_eq!((v.spatial, v.temporal), (1, 2));
        assert!(v.start && !v.end && v.intra);
        assert_eq!((v.layers, &v.heights[..3]), (3, &[180, 360, 720][..]));
        // Flexible mode, predicted, two reference indices; E set.
        let v = vp9_layers(&[0xF4, 0x05, 0b001_0_010_0, 0x03, 0x02, 0x99]).unwrap();
        assert_eq!((v.spatial, v.temporal, v.end, v.intra), (2, 1, true, false));
        assert_eq!(v.picture_id, Some(5));
        // No layer indices: not SVC; truncated: None, no panic.
        assert_eq!(vp9_layers(&[0x88, 0x05]), None);
        for n in 0..p.len() {
            let _ = vp9_layers(&p[..n]);
        }
    }

    #[test]
    fn vp8_picture_id_and_tl0_are_patched_in_place() {
        // X, I (15-bit), L.
        let mut p = [0x90, 0xC0, 0x81, 0x02, 0x05, 0xAA];
        patch_vp8(&mut p, Some(0x1234), Some(9));
        assert_eq!(p, [0x90, 0xC0, 0x92, 0x34, 9, 0xAA]);
        // 7-bit PictureID keeps its width.
        let mut p = [0x90, 0x80, 0x05, 0xAA];
        patch_vp8(&mut p, Some(0x1234), None);
        assert_eq!(p, [0x90, 0x80, 0x34, 0xAA]);
        // No extension: untouched; truncated input: no panic.
        let mut p = [0x10, 0xAA];
        patch_vp8(&mut p, Some(1), Some(1));
        assert_eq!(p, [0x10, 0xAA]);
        let mut p = [0x90, 0xC0, 0x81];
        patch_vp8(&mut p, Some(1), Some(1));
        patch_vp8(&mut [], Some(1), Some(1));
    }
}
