//! The session descriptions of a phone call (RFC 4566, RFC 3264 offer/answer), as far as a
//! telephone's audio needs them: where its RTP goes, which G.711 law, and which payload type
//! carries telephone events (RFC 4733).

use std::net::{IpAddr, SocketAddr};

use super::audio::{Codec, Law};

/// What a caller's offer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Where the caller receives RTP.
    pub rtp: SocketAddr,
    /// The codec to use: the first of the offer's that meetd speaks.
    pub codec: Codec,
    /// The telephone-event payload type, if offered, and its clock rate.
    pub events_pt: Option<u8>,
    pub events_clock: u32,
    /// The packet time asked for (20 ms when not said).
    pub ptime_ms: u32,
}

/// Why an offer is not taken (the call gets 488 Not Acceptable Here).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("no audio stream with an address")]
    NoAudio,
    #[error("none of PCMU, PCMA or Opus offered")]
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
    let codec = pts
        .iter()
        .find_map(|pt| match (pt, name_of(*pt).as_deref()) {
            (0, None) | (_, Some("pcmu/8000")) => Some(Codec::G711(Law::Mu)),
            (8, None) | (_, Some("pcma/8000")) => Some(Codec::G711(Law::A)),
            (96..=127, Some(n)) if n.starts_with("opus/48000") => Some(Codec::Opus(*pt)),
            _ => None,
        })
        .ok_or(SdpError::NoCodec)?;
    // The events at the codec's clock when offered so, else at any.
    let events = |clock: Option<u32>| {
        pts.iter().copied().find(|pt| {
            name_of(*pt).as_deref().is_some_and(|n| match clock {
                Some(c) => n == format!("telephone-event/{c}"),
                None => n.starts_with("telephone-event/"),
            })
        })
    };
    let events_pt = events(Some(codec.clock())).or_else(|| events(None));
    let events_clock = events_pt
        .and_then(name_of)
        .and_then(|n| {
            n.strip_prefix("telephone-event/")
                .and_then(|c| c.parse().ok())
        })
        .unwrap_or(8000);
    Ok(Offer {
        rtp: SocketAddr::new(ip, port),
        codec,
        events_pt,
        events_clock,
        ptime_ms: ptime.clamp(10, 60),
    })
}

/// meetd's answer: one audio stream at `rtp` in the offer's codec, with its telephone events.
pub fn answer(offer: &Offer, rtp: SocketAddr, session_id: u64, version: u64) -> String {
    let family = if rtp.is_ipv6() { "IP6" } else { "IP4" };
    let ip = rtp.ip();
    let codec = offer.codec;
    let pt = codec.payload_type();
    let mut pts = pt.to_string();
    let mut attrs = match codec {
        Codec::G711(law) => format!("a=rtpmap:{pt} {}/8000\r\n", law.name()),
        // Mono, narrowband is what meetd sends; FEC where the phone can use it.
        Codec::Opus(_) => format!(
            "a=rtpmap:{pt} opus/48000/2\r\na=fmtp:{pt} stereo=0;sprop-stereo=0;useinbandfec=1\r\n"
        ),
    };
    if let Some(te) = offer.events_pt {
        pts.push_str(&format!(" {te}"));
        attrs.push_str(&format!(
            "a=rtpmap:{te} telephone-event/{}\r\na=fmtp:{te} 0-15\r\n",
            offer.events_clock
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
        assert_eq!(
            (o.codec, o.events_pt, o.ptime_ms),
            (Codec::G711(Law::Mu), Some(101), 20)
        );
        let a = parse_offer(
            "v=0\nc=IN IP6 ::1\nm=audio 4000 RTP/AVP 8 0\na=ptime:30\nm=video 5000 RTP/AVP 96\nc=IN IP4 10.0.0.1\n",
        )
        .unwrap();
        assert_eq!(a.rtp, "[::1]:4000".parse().unwrap());
        assert_eq!(
            (a.codec, a.events_pt, a.ptime_ms),
            (Codec::G711(Law::A), None, 30)
        );
        let o = parse_offer(
            "c=IN IP4 1.2.3.4\nm=audio 9 RTP/AVP 111 0 101 102\na=rtpmap:111 opus/48000/2\na=rtpmap:101 telephone-event/8000\na=rtpmap:102 telephone-event/48000\n",
        )
        .unwrap();
        assert_eq!(
            (o.codec, o.events_pt, o.events_clock),
            (Codec::Opus(111), Some(102), 48_000)
        );
        let a = answer(&o, "127.0.0.1:20000".parse().unwrap(), 1, 1);
        assert!(a.contains("m=audio 20000 RTP/AVP 111 102\r\n"), "{a}");
        assert!(a.contains("a=rtpmap:111 opus/48000/2\r\n") && a.contains("telephone-event/48000"));
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
        assert_eq!(parse_offer(&a).unwrap().codec, Codec::G711(Law::Mu));
    }
}
