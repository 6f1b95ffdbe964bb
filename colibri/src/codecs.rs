//! The codec and header-extension lists Jitsi uses (Jicofo's defaults): the focus offers
//! them in Jingle and Colibri2 `<media>`, and the bridge falls back to them.

use crate::colibri2::{Media, MediaType, PayloadType, RtcpFb, RtpHdrext};

/// Capabilities a participant advertised in disco#info (fixture 07).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    pub audio: bool,
    pub video: bool,
    pub sctp: bool,
    pub rtx: bool,
    pub tcc: bool,
    pub remb: bool,
    pub json_sources: bool,
    pub ssrc_rewriting: bool,
    /// Opus with RFC 2198 redundancy (`http://jitsi.org/opus-red`, the app's
    /// `enableOpusRed`); offered only where the focus is configured for it.
    pub opus_red: bool,
}

/// RED's payload type in Jitsi's offers (Jicofo's `opus.red.pt`), carrying Opus (111).
pub const RED_PT: u8 = 112;
pub const OPUS_PT: u8 = 111;

impl Default for Features {
    /// What Jicofo assumes when a participant does not answer disco#info.
    fn default() -> Self {
        Features {
            audio: true,
            video: true,
            sctp: true,
            rtx: false,
            tcc: false,
            remb: false,
            json_sources: false,
            ssrc_rewriting: false,
            opus_red: false,
        }
    }
}

impl Features {
    /// What lib-jitsi-meet advertises: everything the default lists can use.
    pub fn all() -> Features {
        Features {
            audio: true,
            video: true,
            sctp: true,
            rtx: true,
            tcc: true,
            remb: false,
            json_sources: true,
            ssrc_rewriting: false,
            opus_red: false,
        }
    }

    pub fn from_disco(vars: &[&str]) -> Features {
        let has = |v: &str| vars.contains(&v);
        Features {
            audio: has("urn:xmpp:jingle:apps:rtp:audio"),
            video: has("urn:xmpp:jingle:apps:rtp:video"),
            sctp: has("urn:xmpp:jingle:transports:dtls-sctp:1"),
            rtx: has("urn:ietf:rfc:4588"),
            tcc: has("http://jitsi.org/tcc"),
            remb: has("http://jitsi.org/remb"),
            json_sources: has("http://jitsi.org/json-encoded-sources"),
            ssrc_rewriting: has("http://jitsi.org/ssrc-rewriting-1"),
            opus_red: has("http://jitsi.org/opus-red"),
        }
    }
}

fn pt(
    id: u8,
    name: &str,
    clockrate: u32,
    channels: Option<u8>,
    params: &[(&str, &str)],
    fbs: &[(&str, Option<&str>)],
) -> PayloadType {
    PayloadType {
        id,
        name: name.into(),
        clockrate,
        channels,
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        rtcp_fbs: fbs
            .iter()
            .map(|(t, s)| RtcpFb {
                type_: t.to_string(),
                subtype: s.map(str::to_string),
            })
            .collect(),
    }
}

fn ext(id: u16, uri: &str) -> RtpHdrext {
    RtpHdrext {
        id,
        uri: uri.into(),
    }
}

const TCC_URI: &str = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// Jicofo's default audio and video lists for a participant with these features.
pub fn default_media(f: &Features) -> Vec<Media> {
    let mut out = Vec::new();
    if f.audio {
        let mut m = Media::new(MediaType::Audio);
        let tcc: &[(&str, Option<&str>)] = if f.tcc {
            &[("transport-cc", None)]
        } else {
            &[]
        };
        m.payload_types = Vec::new();
        if f.opus_red {
            // Before Opus, so that it is what the client sends (as Jicofo offers it).
            let red_fmtp = format!("{OPUS_PT}/{OPUS_PT}");
            m.payload_types
                .push(pt(RED_PT, "red", 48000, Some(2), &[("", &red_fmtp)], &[]));
        }
        // No in-band FEC where RED carries the redundancy already.
        let opus_params: &[(&str, &str)] = if f.opus_red {
            &[("minptime", "10")]
        } else {
            &[("minptime", "10"), ("useinbandfec", "1")]
        };
        m.payload_types.extend([
            pt(OPUS_PT, "opus", 48000, Some(2), opus_params, tcc),
            pt(126, "telephone-event", 8000, None, &[], &[]),
        ]);
        m.rtp_hdrexts = vec![
            ext(1, "urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
            ext(10, "urn:ietf:params:rtp-hdrext:sdes:mid"),
        ];
        if f.tcc {
            m.rtp_hdrexts.push(ext(5, TCC_URI));
        }
        m.extmap_allow_mixed = true;
        out.push(m);
    }
    if f.video {
        let mut m = Media::new(MediaType::Video);
        let mut fb: Vec<(&str, Option<&str>)> =
            vec![("ccm", Some("fir")), ("nack", None), ("nack", Some("pli"))];
        if f.tcc {
            fb.push(("transport-cc", None));
        } else if f.remb {
            fb.push(("goog-remb", None));
        }
        let rtx_fb: &[(&str, Option<&str>)] =
            &[("ccm", Some("fir")), ("nack", None), ("nack", Some("pli"))];
        m.payload_types = vec![
            pt(41, "AV1", 90000, None, &[], &fb),
            pt(100, "VP8", 90000, None, &[], &fb),
            pt(
                107,
                "H264",
                90000,
                None,
                &[(
                    "profile-level-id",
                    "42e01f;level-asymmetry-allowed=1;packetization-mode=1;",
                )],
                &fb,
            ),
            pt(101, "VP9", 90000, None, &[], &fb),
        ];
        if f.rtx {
            m.payload_types.extend([
                pt(42, "rtx", 90000, None, &[("apt", "41")], rtx_fb),
                pt(96, "rtx", 90000, None, &[("apt", "100")], rtx_fb),
                pt(97, "rtx", 90000, None, &[("apt", "101")], rtx_fb),
                pt(99, "rtx", 90000, None, &[("apt", "107")], &[]),
            ]);
        }
        m.rtp_hdrexts = vec![
            ext(
                3,
                "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
            ),
            ext(10, "urn:ietf:params:rtp-hdrext:sdes:mid"),
        ];
        if f.tcc {
            m.rtp_hdrexts.push(ext(5, TCC_URI));
        }
        m.rtp_hdrexts.push(ext(11, "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension"));
        m.extmap_allow_mixed = true;
        out.push(m);
    }
    out
}
