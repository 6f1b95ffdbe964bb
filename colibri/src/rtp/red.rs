//! RFC 2198 redundant audio (RED), as Opus with RED reaches the bridge: a receiver that did
//! not negotiate RED gets the packet's primary encoding alone.

/// The primary block of a RED payload: its payload type and data. `None` when the headers
/// run past the payload or the blocks are longer than it.
pub fn primary(payload: &[u8]) -> Option<(u8, &[u8])> {
    let mut i = 0;
    let mut redundant = 0usize;
    loop {
        let b = *payload.get(i)?;
        if b & 0x80 == 0 {
            // The last header (one byte): the primary block's payload type.
            let start = i + 1 + redundant;
            return Some((b & 0x7f, payload.get(start..)?));
        }
        // F=1: payload type, 14-bit timestamp offset, 10-bit block length.
        let h = payload.get(i..i + 4)?;
        redundant += (usize::from(h[2] & 0x03) << 8) | usize::from(h[3]);
        i += 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primary_block() {
        // One redundant block of 3 bytes (PT 111, offset 960), then the primary (PT 111).
        let red = [0xef, 0x0f, 0x00, 0x03, 0x6f, 1, 2, 3, 9, 8, 7, 6];
        assert_eq!(primary(&red), Some((111, &[9u8, 8, 7, 6][..])));
        // Only the primary.
        assert_eq!(primary(&[0x6f, 5, 5]), Some((111, &[5u8, 5][..])));
        // Empty primary is fine; truncated headers or blocks are not.
        assert_eq!(primary(&[0x6f]), Some((111, &[][..])));
        assert_eq!(primary(&[]), None);
        assert_eq!(primary(&[0xef, 0x0f]), None);
        assert_eq!(primary(&[0xef, 0x0f, 0x00, 0x09, 0x6f, 1]), None);
    }
}
