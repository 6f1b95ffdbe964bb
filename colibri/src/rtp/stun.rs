//! A quick look at a STUN message (RFC 8489 §5, §14.3), enough to route a datagram to the
//! endpoint it is for; str0m's ICE agent parses and verifies the message itself.

/// The local ufrag (before ':') of a STUN Binding Request's USERNAME, or `None` for anything
/// else (other STUN, DTLS, RTP, garbage). Only a quick look; str0m verifies the message.
pub fn stun_request_local_ufrag(data: &[u8]) -> Option<&str> {
    if data.len() < 20 || data[0] & 0xc0 != 0 || data[4..8] != [0x21, 0x12, 0xa4, 0x42] {
        return None;
    }
    // Binding (0x001) request (class 00).
    if u16::from_be_bytes([data[0], data[1]]) != 0x0001 {
        return None;
    }
    let len = u16::from_be_bytes([data[2], data[3]]) as usize;
    let body = data.get(20..20 + len)?;
    let mut i = 0;
    while i + 4 <= body.len() {
        let t = u16::from_be_bytes([body[i], body[i + 1]]);
        let l = u16::from_be_bytes([body[i + 2], body[i + 3]]) as usize;
        let v = body.get(i + 4..i + 4 + l)?;
        if t == 0x0006 {
            let user = std::str::from_utf8(v).ok()?;
            return user.split(':').next().filter(|u| !u.is_empty());
        }
        i += 4 + l.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_username_parsing() {
        assert_eq!(stun_request_local_ufrag(&[]), None);
        let mut m = vec![0x00, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42];
        m.extend_from_slice(&[0; 12]);
        m.extend_from_slice(&[0x00, 0x06, 0x00, 0x07]);
        m.extend_from_slice(b"abc:def\0");
        assert_eq!(stun_request_local_ufrag(&m), Some("abc"));
        m[1] = 0x11; // an indication
        assert_eq!(stun_request_local_ufrag(&m), None);
        m[1] = 0x01;
        m[3] = 0x40; // length beyond the datagram
        assert_eq!(stun_request_local_ufrag(&m), None);
    }
}
