//! What the focus offers: codec and header-extension lists (Jicofo's defaults, the same in
//! the Jingle offer and the Colibri2 `<media>`), and the Jingle elements built from them.

use std::collections::BTreeMap;

use meetd_colibri::colibri2::{
    IceUdpTransport, Media, MediaType, PayloadType, RtcpFb, RtpHdrext, SctpMap,
};
use meetd_xmpp::Element;
use meetd_xmpp::stanza::rxml_name as n;

use crate::sources::{NS_JINGLE, NS_JITMEET, NS_RTP};

pub const NS_HDREXT: &str = "urn:xmpp:jingle:apps:rtp:rtp-hdrext:0";
pub const NS_GROUPING: &str = "urn:xmpp:jingle:apps:grouping:0";
pub const NS_FOCUS: &str = "http://jitsi.org/protocol/focus";

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
}

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
        }
    }
}

impl Features {
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
        m.payload_types = vec![
            pt(
                111,
                "opus",
                48000,
                Some(2),
                &[("minptime", "10"), ("useinbandfec", "1")],
                tcc,
            ),
            pt(126, "telephone-event", 8000, None, &[], &[]),
        ];
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

/// `<description>` for one media type, with `extra` source elements (classic encoding).
fn description(m: &Media, extra: &[Element]) -> Element {
    let mut d = Element::builder("description", NS_RTP).attr(n("media"), m.kind.as_str());
    if m.kind == MediaType::Audio {
        d = d.attr(n("maxptime"), "60");
    }
    let mut d = d.build();
    for p in &m.payload_types {
        d.append_child(p.to_element());
    }
    for h in &m.rtp_hdrexts {
        d.append_child(h.to_element());
    }
    if m.extmap_allow_mixed {
        d.append_child(Element::bare("extmap-allow-mixed", NS_HDREXT));
    }
    for e in extra {
        d.append_child(e.clone());
    }
    d.append_child(Element::bare("rtcp-mux", NS_RTP));
    d
}

/// Everything the bridge allocated that goes into an offer.
pub struct BridgeTransport<'a> {
    pub ice: &'a IceUdpTransport,
    pub sctp_port: Option<u16>,
    pub session_id: &'a str,
    pub region: &'a str,
}

/// A session-initiate `<jingle>`: audio, video (and data when SCTP is on), BUNDLE,
/// bridge-session, and the sources either as classic elements or as JSON.
pub fn session_initiate(
    sid: &str,
    initiator: &str,
    media: &[Media],
    bridge: &BridgeTransport<'_>,
    classic_sources: &BTreeMap<&'static str, Vec<Element>>,
    json_sources: Option<&str>,
) -> Element {
    let mut j = Element::builder("jingle", NS_JINGLE)
        .attr(n("action"), "session-initiate")
        .attr(n("initiator"), initiator)
        .attr(n("sid"), sid)
        .build();
    let mut names = Vec::new();
    for m in media {
        let name = m.kind.as_str();
        let extra = classic_sources.get(name).map(Vec::as_slice).unwrap_or(&[]);
        let mut ice = bridge.ice.clone();
        ice.sctpmap = None;
        j.append_child(content(name, description(m, extra), ice.to_element()));
        names.push(name);
    }
    if let Some(port) = bridge.sctp_port {
        let mut ice = bridge.ice.clone();
        ice.sctpmap = Some(SctpMap {
            number: port,
            protocol: "webrtc-datachannel".into(),
            streams: Some(1024),
        });
        let d = Element::builder("description", NS_RTP)
            .attr(n("media"), "application")
            .build();
        j.append_child(content("data", d, ice.to_element()));
        names.push("data");
    }
    let mut g = Element::builder("group", NS_GROUPING).attr(n("semantics"), "BUNDLE");
    for name in &names {
        g = g.append(
            Element::builder("content", NS_GROUPING)
                .attr(n("name"), *name)
                .build(),
        );
    }
    j.append_child(g.build());
    j.append_child(
        Element::builder("bridge-session", NS_FOCUS)
            .attr(n("id"), bridge.session_id)
            .attr(n("region"), bridge.region)
            .build(),
    );
    if let Some(json) = json_sources {
        j.append_child(
            Element::builder("json-message", NS_JITMEET)
                .append(json.to_string())
                .build(),
        );
    }
    j
}

fn content(name: &str, desc: Element, transport: Element) -> Element {
    Element::builder("content", NS_JINGLE)
        .attr(n("creator"), "initiator")
        .attr(n("name"), name)
        .attr(n("senders"), "both")
        .append(desc)
        .append(transport)
        .build()
}

/// A source-add or source-remove `<jingle>` (classic or JSON).
pub fn source_change(
    action: &str,
    sid: &str,
    classic: &BTreeMap<&'static str, Vec<Element>>,
    json: Option<&str>,
) -> Element {
    let mut j = Element::builder("jingle", NS_JINGLE)
        .attr(n("action"), action)
        .attr(n("sid"), sid)
        .build();
    if let Some(json) = json {
        j.append_child(
            Element::builder("json-message", NS_JITMEET)
                .append(json.to_string())
                .build(),
        );
        return j;
    }
    for (media, elems) in classic {
        let mut d = Element::builder("description", NS_RTP)
            .attr(n("media"), *media)
            .build();
        for e in elems {
            d.append_child(e.clone());
        }
        j.append_child(
            Element::builder("content", NS_JINGLE)
                .attr(n("name"), *media)
                .append(d)
                .build(),
        );
    }
    j
}

/// session-terminate with a reason condition and text.
pub fn session_terminate(sid: &str, reason: &str, text: &str) -> Element {
    let r = Element::builder("reason", NS_JINGLE)
        .append(Element::bare(reason, NS_JINGLE))
        .append(
            Element::builder("text", NS_JINGLE)
                .append(text.to_string())
                .build(),
        )
        .build();
    Element::builder("jingle", NS_JINGLE)
        .attr(n("action"), "session-terminate")
        .attr(n("sid"), sid)
        .append(r)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_lists_match_jicofo() {
        let f = Features::from_disco(&[
            "urn:xmpp:jingle:apps:rtp:audio",
            "urn:xmpp:jingle:apps:rtp:video",
            "urn:ietf:rfc:4588",
            "http://jitsi.org/tcc",
            "urn:xmpp:jingle:transports:dtls-sctp:1",
            "http://jitsi.org/json-encoded-sources",
        ]);
        let m = default_media(&f);
        let ids: Vec<u8> = m[1].payload_types.iter().map(|p| p.id).collect();
        assert_eq!(ids, vec![41, 100, 107, 101, 42, 96, 97, 99]);
        let ext: Vec<u16> = m[1].rtp_hdrexts.iter().map(|e| e.id).collect();
        assert_eq!(ext, vec![3, 10, 5, 11]);
        assert_eq!(m[0].payload_types[0].id, 111);
    }
}
