//! A quick look at a STUN message (RFC 8489 §5, §14.3), enough to route a datagram to the
//! endpoint it is for (str0m's ICE agent parses and verifies the message itself), and the
//! answer to a plain Binding request (no ICE).

use std::net::SocketAddr;

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

/// A STUN message (RFC 5389: first two bits 0, the magic cookie).
pub fn is_stun(data: &[u8]) -> bool {
    data.len() >= 20 && data[0] & 0xc0 == 0 && data[4..8] == [0x21, 0x12, 0xa4, 0x42]
}

/// A STUN Binding request without USERNAME (a plain STUN client, e.g. for P2P) gets a
/// Binding success response with XOR-MAPPED-ADDRESS (RFC 5389). ICE checks carry USERNAME
/// and go to the engine instead.
pub fn plain_binding_response(req: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
    const MAGIC: u32 = 0x2112_A442;
    if req.len() < 20 || req[0] != 0x00 || req[1] != 0x01 {
        return None;
    }
    if u32::from_be_bytes([req[4], req[5], req[6], req[7]]) != MAGIC {
        return None;
    }
    let len = u16::from_be_bytes([req[2], req[3]]) as usize;
    if req.len() < 20 + len {
        return None;
    }
    let mut i = 20;
    while i + 4 <= 20 + len {
        let ty = u16::from_be_bytes([req[i], req[i + 1]]);
        let alen = u16::from_be_bytes([req[i + 2], req[i + 3]]) as usize;
        if ty == 0x0006 {
            return None; // USERNAME: an ICE check.
        }
        i += 4 + alen.div_ceil(4) * 4;
    }
    let tid = &req[8..20];
    let mut attr = Vec::with_capacity(24);
    let port = from.port() ^ (MAGIC >> 16) as u16;
    match from {
        SocketAddr::V4(a) => {
            attr.extend_from_slice(&[0x00, 0x01]);
            attr.extend_from_slice(&port.to_be_bytes());
            let ip = u32::from(*a.ip()) ^ MAGIC;
            attr.extend_from_slice(&ip.to_be_bytes());
        }
        SocketAddr::V6(a) => {
            attr.extend_from_slice(&[0x00, 0x02]);
            attr.extend_from_slice(&port.to_be_bytes());
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC.to_be_bytes());
            key[4..].copy_from_slice(tid);
            for (b, k) in a.ip().octets().iter().zip(key) {
                attr.push(b ^ k);
            }
        }
    }
    let mut out = Vec::with_capacity(20 + 4 + attr.len());
    out.extend_from_slice(&[0x01, 0x01]);
    out.extend_from_slice(&((4 + attr.len()) as u16).to_be_bytes());
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(tid);
    out.extend_from_slice(&[0x00, 0x20]);
    out.extend_from_slice(&(attr.len() as u16).to_be_bytes());
    out.extend_from_slice(&attr);
    Some(out)
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

    #[test]
    fn plain_binding_request_gets_xor_mapped_address() {
        let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        req.extend_from_slice(&[7u8; 12]);
        let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let r = plain_binding_response(&req, from).unwrap();
        assert_eq!(&r[0..2], &[0x01, 0x01]);
        assert_eq!(&r[8..20], &[7u8; 12]);
        // XOR-MAPPED-ADDRESS port and address.
        assert_eq!(u16::from_be_bytes([r[26], r[27]]) ^ 0x2112, 40000);
        let ip = u32::from_be_bytes([r[28], r[29], r[30], r[31]]) ^ 0x2112_A442;
        assert_eq!(std::net::Ipv4Addr::from(ip), std::net::Ipv4Addr::LOCALHOST);
        // With USERNAME it is an ICE check: not ours.
        let mut ice = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42];
        ice.extend_from_slice(&[7u8; 12]);
        ice.extend_from_slice(&[0x00, 0x06, 0x00, 0x04, b'a', b':', b'b', b'c']);
        assert!(plain_binding_response(&ice, from).is_none());
        assert!(plain_binding_response(b"garbage", from).is_none());
    }
}
