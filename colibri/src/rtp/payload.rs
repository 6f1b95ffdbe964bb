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
        VideoCodec::Vp9 => b0 & 0x40 == 0 && b0 & 0x08 != 0,
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
