//! The session descriptions of a phone call (RFC 4566, RFC 3264 offer/answer), as far as a
//! telephone's audio needs them: where its RTP goes, which G.711 law, and which payload type
//! carries telephone events (RFC 4733).

use std::net::{IpAddr, SocketAddr};

use super::audio::Law;

/// What a caller's offer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Where the caller receives RTP.
    pub rtp: SocketAddr,
    /// The law to use: the first of the offer's that meetd speaks.
    pub law: Law,
    /// The telephone-event payload type, if offered.
    pub events_pt: Option<u8>,
    /// The packet time asked for (20 ms when not said).
    pub ptime_ms: u32,
}

/// Why an offer is not taken (the call gets 488 Not Acceptable Here).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("no audio stream with an address")]
    NoAudio,
    #[error("neither PCMU nor PCMA offered")]
    NoCodec,
    #[error("secure RTP offered only")]
    Secure,
}

/// The offer in an INVITE's body.
pub fn parse_offer(sdp: &str) -> Result<Offer, SdpError> {
    let mut session_ip: Option<IpAddr> = None;
    let mut media_ip: Option<IpAddr> = None;
    let mut port: Option<u16> = None;
    let mut pts: Vec<u8> = Vec::new();
    let mut rtpmap: Vec<(u8, String)> = Vec::new();
    let mut ptime = 20;
    let mut in_audio = false;
    let mut seen_audio = false;
    let mut profile_secure = false;
    for line in sdp.lines() {
        let line = line.trim_end();
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            "m" => {
                let mut f = v.split_whitespace();
                let media = f.next().unwrap_or("");
                in_audio = media == "audio" && !seen_audio;
                if in_audio {
                    seen_audio = true;
                    port = f.next().and_then(|p| p.parse().ok());
                    let proto = f.next().unwrap_or("");
                    profile_secure = proto.contains("SAVP");
                    pts = f.filter_map(|p| p.parse().ok()).collect();
                }
            }
            "c" => {
                let ip = v.split_whitespace().nth(2).and_then(|a| {
                    // A multicast address may carry /ttl.
                    a.split('/').next().and_then(|a| a.parse::<IpAddr>().ok())
                });
                if in_audio {
                    media_ip = ip;
                } else if !seen_audio {
                    session_ip = ip;
                }
            }
            "a" if in_audio => {
                if let Some(m) = v.strip_prefix("rtpmap:") {
                    let mut f = m.split_whitespace();
                    if let (Some(pt), Some(enc)) = (f.next().and_then(|p| p.parse().ok()), f.next())
                    {
                        rtpmap.push((pt, enc.to_ascii_lowercase()));
                    }
                } else if let Some(p) = v.strip_prefix("ptime:") {
                    ptime = p.trim().parse().unwrap_or(20);
                }
            }
            _ => {}
        }
    }
    let ip = media_ip.or(session_ip).ok_or(SdpError::NoAudio)?;
    let port = port.filter(|p| *p != 0).ok_or(SdpError::NoAudio)?;
    if profile_secure {
        return Err(SdpError::Secure);
    }
    let name_of = |pt: u8| {
        rtpmap
            .iter()
            .find(|(p, _)| *p == pt)
            .map(|(_, n)| n.clone())
    };
    let law = pts
        .iter()
        .find_map(|pt| match (pt, name_of(*pt).as_deref()) {
            (0, None) | (_, Some("pcmu/8000")) => Some(Law::Mu),
            (8, None) | (_, Some("pcma/8000")) => Some(Law::A),
            _ => None,
        })
        .ok_or(SdpError::NoCodec)?;
    let events_pt = pts.iter().copied().find(|pt| {
        name_of(*pt)
            .as_deref()
            .is_some_and(|n| n.starts_with("telephone-event/8000"))
    });
    Ok(Offer {
        rtp: SocketAddr::new(ip, port),
        law,
        events_pt,
        ptime_ms: ptime.clamp(10, 60),
    })
}

/// meetd's answer: one audio stream at `rtp` in the offer's law, with its telephone events.
pub fn answer(offer: &Offer, rtp: SocketAddr, session_id: u64, version: u64) -> String {
    let family = if rtp.is_ipv6() { "IP6" } else { "IP4" };
    let ip = rtp.ip();
    let law = offer.law;
    let mut pts = law.payload_type().to_string();
    let mut attrs = format!("a=rtpmap:{} {}/8000\r\n", law.payload_type(), law.name());
    if let Some(te) = offer.events_pt {
        pts.push_str(&format!(" {te}"));
        attrs.push_str(&format!(
            "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-15\r\n"
        ));
    }
    format!(
        "v=0\r\no=meetd {session_id} {version} IN {family} {ip}\r\ns=meetd\r\nc=IN {family} {ip}\r\nt=0 0\r\nm=audio {} RTP/AVP {pts}\r\n{attrs}a=ptime:20\r\na=sendrecv\r\n",
        rtp.port()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BARESIP: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 10004 RTP/AVP 9 0 8 101\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n";

    #[test]
    fn takes_the_first_law_and_the_events() {
        let o = parse_offer(BARESIP).unwrap();
        assert_eq!(o.rtp, "127.0.0.1:10004".parse().unwrap());
        assert_eq!((o.law, o.events_pt, o.ptime_ms), (Law::Mu, Some(101), 20));
        let a = parse_offer(
            "v=0\nc=IN IP6 ::1\nm=audio 4000 RTP/AVP 8 0\na=ptime:30\nm=video 5000 RTP/AVP 96\nc=IN IP4 10.0.0.1\n",
        )
        .unwrap();
        assert_eq!(a.rtp, "[::1]:4000".parse().unwrap());
        assert_eq!((a.law, a.events_pt, a.ptime_ms), (Law::A, None, 30));
    }

    #[test]
    fn refusals() {
        assert_eq!(parse_offer("v=0\r\n"), Err(SdpError::NoAudio));
        assert_eq!(
            parse_offer("c=IN IP4 1.2.3.4\nm=audio 0 RTP/AVP 0\n"),
            Err(SdpError::NoAudio)
        );
        assert_eq!(
            parse_offer("c=IN IP4 1.2.3.4\nm=audio 9 RTP/AVP 9\na=rtpmap:9 G722/8000\n"),
            Err(SdpError::NoCodec)
        );
        assert_eq!(
            parse_offer("c=IN IP4 1.2.3.4\nm=audio 9 RTP/SAVP 0\n"),
            Err(SdpError::Secure)
        );
        assert!(parse_offer("c=IN IP4 nonsense\nm=audio 9 RTP/AVP 0\n").is_err());
    }

    #[test]
    fn the_answer_names_one_law_and_the_events() {
        let o = parse_offer(BARESIP).unwrap();
        let a = answer(&o, "127.0.0.1:20000".parse().unwrap(), 7, 1);
        assert!(a.contains("m=audio 20000 RTP/AVP 0 101\r\n"), "{a}");
        assert!(a.contains("a=rtpmap:0 PCMU/8000\r\n"));
        assert!(a.contains("a=rtpmap:101 telephone-event/8000\r\n"));
        assert!(a.contains("c=IN IP4 127.0.0.1\r\n"));
        // And it parses as an offer would.
        assert_eq!(parse_offer(&a).unwrap().law, Law::Mu);
    }
}
