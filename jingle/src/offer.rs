//! What the focus offers: codec and header-extension lists (Jicofo's defaults, the same in
//! the Jingle offer and the Colibri2 `<media>`), and the Jingle elements built from them.

use std::collections::BTreeMap;

use meetd_colibri::colibri2::{IceUdpTransport, Media, MediaType, SctpMap};
use meetd_xmpp::Element;
use meetd_xmpp::stanza::rxml_name as n;

use crate::sources::{NS_JINGLE, NS_JITMEET, NS_RTP};

pub const NS_HDREXT: &str = "urn:xmpp:jingle:apps:rtp:rtp-hdrext:0";
pub const NS_GROUPING: &str = "urn:xmpp:jingle:apps:grouping:0";
pub const NS_FOCUS: &str = "http://jitsi.org/protocol/focus";

pub use meetd_colibri::codecs::{Features, default_media};

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

/// The Jingle-related disco#info features the Jitsi Meet web app advertises (audio, video,
/// RTX, transport-cc, SCTP, JSON sources): what a simulated client answers in tests and
/// benchmarks.
pub const WEB_CLIENT_FEATURES: &[&str] = &[
    "urn:xmpp:jingle:apps:rtp:audio",
    "urn:xmpp:jingle:apps:rtp:video",
    "urn:ietf:rfc:4588",
    "http://jitsi.org/tcc",
    "urn:xmpp:jingle:transports:dtls-sctp:1",
    "http://jitsi.org/json-encoded-sources",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_lists_match_jicofo() {
        let f = Features::from_disco(WEB_CLIENT_FEATURES);
        let m = default_media(&f);
        let ids: Vec<u8> = m[1].payload_types.iter().map(|p| p.id).collect();
        assert_eq!(ids, vec![41, 100, 107, 101, 42, 96, 97, 99]);
        let ext: Vec<u16> = m[1].rtp_hdrexts.iter().map(|e| e.id).collect();
        assert_eq!(ext, vec![3, 10, 5, 11]);
        assert_eq!(m[0].payload_types[0].id, 111);
    }
}
