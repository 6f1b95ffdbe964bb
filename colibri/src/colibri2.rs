//! Colibri2 (`jitsi:colibri2`): the focus ⇄ videobridge control protocol.
//!
//! The focus sends `<conference-modify/>` in an IQ `get`/`set`; the bridge answers
//! `<conference-modified/>` or a stanza error carrying a colibri2 `<error reason=…/>`
//! (docs/colibri2.md §1, §2, §2.7). The types here have exactly the wire
//! shape, so driving a stock JVB (or being driven by a stock Jicofo) is only a matter
//! of [`ConferenceModify::to_element`] / [`ConferenceModified::parse`] and back.
//!
//! The Jingle building blocks ([`PayloadType`], [`RtcpFb`], [`RtpHdrext`],
//! [`IceUdpTransport`], [`Candidate`], [`Fingerprint`], [`WebSocket`], [`SctpMap`],
//! [`Source`], [`SsrcGroup`]) parse from their own element whatever its parent, so the
//! focus' Jingle code reuses them for `<description>`/`<transport>` contents.
//!
//! Parsing never panics: unknown children and attributes are ignored, a missing
//! required attribute is [`Colibri2Error::MissingAttribute`], an unparsable value is
//! [`Colibri2Error::InvalidAttribute`]. Booleans accept `true`/`false`/`1`/`0` and are
//! written as `true`/`false`. Serialisation writes children in the order of the
//! protocol document's examples.

use std::str::FromStr;

use meetd_xmpp::stanza::rxml_name;
use minidom::{Element, ElementBuilder, IntoAttributeValue};

/// XML namespaces used by Colibri2 and the Jingle elements it embeds.
pub mod ns {
    /// Colibri2 itself: `conference-modify`, `endpoint`, `media`, `transport`, `sources`, ….
    pub const COLIBRI2: &str = "jitsi:colibri2";
    /// XEP-0167 `payload-type` (and its `parameter`).
    pub const JINGLE_RTP: &str = "urn:xmpp:jingle:apps:rtp:1";
    /// XEP-0293 `rtcp-fb`.
    pub const JINGLE_RTCP_FB: &str = "urn:xmpp:jingle:apps:rtp:rtcp-fb:0";
    /// XEP-0294 `rtp-hdrext` and `extmap-allow-mixed`.
    pub const JINGLE_RTP_HDREXT: &str = "urn:xmpp:jingle:apps:rtp:rtp-hdrext:0";
    /// XEP-0339 `source` and `ssrc-group`.
    pub const JINGLE_SSMA: &str = "urn:xmpp:jingle:apps:rtp:ssma:0";
    /// XEP-0176 ICE-UDP `transport`, `candidate`, `rtcp-mux`.
    pub const JINGLE_ICE_UDP: &str = "urn:xmpp:jingle:transports:ice-udp:1";
    /// XEP-0320 DTLS `fingerprint`.
    pub const JINGLE_DTLS: &str = "urn:xmpp:jingle:apps:dtls:0";
    /// XEP-0343 `sctpmap` (Jingle data content only; colibri2 uses its own `<sctp/>`).
    pub const JINGLE_DTLS_SCTP: &str = "urn:xmpp:jingle:transports:dtls-sctp:1";
    /// Jitsi's colibri (v1) namespace, still used for `<web-socket/>`.
    pub const JITSI_COLIBRI: &str = "http://jitsi.org/protocol/colibri";
}

type Result<T> = std::result::Result<T, Colibri2Error>;

// ---------------------------------------------------------------------------------------
// Errors (§2.7)
// ---------------------------------------------------------------------------------------

/// Everything that can go wrong with a Colibri2 request: malformed input (a parse error,
/// answered with `bad-request`) and the bridge's protocol refusals of §2.7.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Colibri2Error {
    #[error("<{element}/> lacks required attribute '{attribute}'")]
    MissingAttribute {
        element: &'static str,
        attribute: &'static str,
    },
    #[error("<{element}/> has an invalid '{attribute}' value {value:?}")]
    InvalidAttribute {
        element: &'static str,
        attribute: &'static str,
        value: String,
    },
    #[error("expected <{expected} xmlns='{namespace}'/>, found <{found} xmlns='{found_ns}'/>")]
    UnexpectedElement {
        expected: &'static str,
        namespace: &'static str,
        found: String,
        found_ns: String,
    },
    /// `create` for a meeting-id the bridge already has.
    #[error("Conference already exists for ID: {meeting_id}")]
    ConferenceAlreadyExists { meeting_id: String },
    /// A non-create request for an unknown meeting-id.
    #[error("Conference not found for ID: {meeting_id}")]
    ConferenceNotFound { meeting_id: String },
    /// The media engine's queue has no room for the request now; nothing changed, and the
    /// request may be sent again.
    #[error("Bridge busy, try again")]
    Busy,
    /// `create` while the bridge is in graceful shutdown.
    #[error("In graceful shutdown")]
    GracefulShutdown,
    /// A modifying request names an endpoint the conference does not have.
    #[error("Unknown endpoint {id}")]
    UnknownEndpoint { id: String },
    /// A request shape the bridge does not handle (endpoint and relay mixed, more than one
    /// relay, several endpoints with media/transport/sources). Carries reason
    /// `feature_not_implemented`.
    #[error("{0}")]
    UnsupportedRequest(String),
    /// A feature disabled or unsupported (relays or SCTP off, endpoint SCTP role other than
    /// server). No colibri2 reason.
    #[error("{0}")]
    FeatureNotImplemented(String),
    /// A semantically invalid request (endpoint create without transport or without
    /// `source-names`, sources on a visitor, SCTP port other than 5000, bad conference name).
    #[error("{0}")]
    BadRequest(String),
    /// Duplicate endpoint or relay id.
    #[error("{0}")]
    Conflict(String),
}

/// The `reason` of a colibri2 `<error/>`: the lower-cased enum name on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    ConferenceNotFound,
    ConferenceAlreadyExists,
    GracefulShutdown,
    UnknownEndpoint,
    FeatureNotImplemented,
    /// No or unrecognised `reason` attribute.
    Unspecified,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ConferenceNotFound => "conference_not_found",
            Reason::ConferenceAlreadyExists => "conference_already_exists",
            Reason::GracefulShutdown => "graceful_shutdown",
            Reason::UnknownEndpoint => "unknown_endpoint",
            Reason::FeatureNotImplemented => "feature_not_implemented",
            Reason::Unspecified => "unspecified",
        }
    }

    /// Case-insensitive, like Jitsi's `Reason.valueOf(s.toUpperCase())`; anything
    /// unknown is [`Reason::Unspecified`] (a newer bridge may add reasons).
    pub fn from_wire(s: &str) -> Reason {
        [
            Reason::ConferenceNotFound,
            Reason::ConferenceAlreadyExists,
            Reason::GracefulShutdown,
            Reason::UnknownEndpoint,
            Reason::FeatureNotImplemented,
        ]
        .into_iter()
        .find(|r| r.as_str().eq_ignore_ascii_case(s))
        .unwrap_or(Reason::Unspecified)
    }

    /// The colibri2 reason inside a stanza `<error/>` element (the child of an IQ of type
    /// `error`), or None when it carries no `jitsi:colibri2` `<error/>`.
    pub fn from_stanza_error(error: &Element) -> Option<Reason> {
        let c2 = error.get_child("error", ns::COLIBRI2)?;
        Some(
            c2.attr("reason")
                .map_or(Reason::Unspecified, Reason::from_wire),
        )
    }
}

impl Colibri2Error {
    /// The RFC 6120 defined condition (element name in `urn:ietf:params:xml:ns:xmpp-stanzas`).
    pub fn condition(&self) -> &'static str {
        match self {
            Colibri2Error::MissingAttribute { .. }
            | Colibri2Error::InvalidAttribute { .. }
            | Colibri2Error::UnexpectedElement { .. }
            | Colibri2Error::BadRequest(_) => "bad-request",
            Colibri2Error::ConferenceAlreadyExists { .. } | Colibri2Error::Conflict(_) => {
                "conflict"
            }
            Colibri2Error::ConferenceNotFound { .. } | Colibri2Error::UnknownEndpoint { .. } => {
                "item-not-found"
            }
            Colibri2Error::GracefulShutdown => "service-unavailable",
            Colibri2Error::Busy => "resource-constraint",
            Colibri2Error::UnsupportedRequest(_) | Colibri2Error::FeatureNotImplemented(_) => {
                "feature-not-implemented"
            }
        }
    }

    /// The stanza error `type`: RFC 6120's usual type for the condition (the stock
    /// bridge's choice is unverified, see docs/colibri2.md §3).
    pub fn error_type(&self) -> &'static str {
        match self.condition() {
            "bad-request" => "modify",
            "resource-constraint" => "wait",
            _ => "cancel",
        }
    }

    /// The colibri2 reason, for the errors §2.7 gives one.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Colibri2Error::ConferenceAlreadyExists { .. } => Some(Reason::ConferenceAlreadyExists),
            Colibri2Error::ConferenceNotFound { .. } => Some(Reason::ConferenceNotFound),
            Colibri2Error::GracefulShutdown => Some(Reason::GracefulShutdown),
            Colibri2Error::UnknownEndpoint { .. } => Some(Reason::UnknownEndpoint),
            Colibri2Error::UnsupportedRequest(_) => Some(Reason::FeatureNotImplemented),
            _ => None,
        }
    }

    /// The stanza `<error type=…>` payload: defined condition, `<text/>`, the colibri2
    /// `<error reason=…/>` when there is a reason, and for an unknown endpoint the
    /// echoed `<endpoint id=…/>`.
    pub fn to_error_element(&self) -> Element {
        let mut b = Element::builder("error", meetd_xmpp::ns::CLIENT)
            .attr(rxml_name("type"), self.error_type())
            .append(Element::bare(self.condition(), meetd_xmpp::ns::STANZAS))
            .append(
                Element::builder("text", meetd_xmpp::ns::STANZAS)
                    .append(self.to_string())
                    .build(),
            );
        if let Some(reason) = self.reason() {
            b = b.append(
                Element::builder("error", ns::COLIBRI2)
                    .attr(rxml_name("reason"), reason.as_str())
                    .build(),
            );
        }
        if let Colibri2Error::UnknownEndpoint { id } = self {
            b = b.append(
                Element::builder("endpoint", ns::COLIBRI2)
                    .attr(rxml_name("id"), id.as_str())
                    .build(),
            );
        }
        b.build()
    }

    /// The IQ error answering `request` (an IQ carrying a `<conference-modify/>`).
    pub fn to_error_iq(&self, request: &Element) -> Element {
        Element::builder("iq", meetd_xmpp::ns::CLIENT)
            .attr(rxml_name("type"), "error")
            .attr(rxml_name("id"), request.attr("id"))
            .attr(rxml_name("from"), request.attr("to"))
            .attr(rxml_name("to"), request.attr("from"))
            .append(self.to_error_element())
            .build()
    }
}

// ---------------------------------------------------------------------------------------
// Parse / serialise helpers
// ---------------------------------------------------------------------------------------

fn expect(el: &Element, name: &'static str, namespace: &'static str) -> Result<()> {
    if el.is(name, namespace) {
        Ok(())
    } else {
        Err(Colibri2Error::UnexpectedElement {
            expected: name,
            namespace,
            found: el.name().to_string(),
            found_ns: el.ns(),
        })
    }
}

fn required<'a>(
    el: &'a Element,
    element: &'static str,
    attribute: &'static str,
) -> Result<&'a str> {
    el.attr(attribute)
        .ok_or(Colibri2Error::MissingAttribute { element, attribute })
}

fn invalid(element: &'static str, attribute: &'static str, value: &str) -> Colibri2Error {
    Colibri2Error::InvalidAttribute {
        element,
        attribute,
        value: value.to_string(),
    }
}

fn optional_parsed<T: FromStr>(
    el: &Element,
    element: &'static str,
    attribute: &'static str,
) -> Result<Option<T>> {
    el.attr(attribute)
        .map(|v| v.trim().parse().map_err(|_| invalid(element, attribute, v)))
        .transpose()
}

fn required_parsed<T: FromStr>(
    el: &Element,
    element: &'static str,
    attribute: &'static str,
) -> Result<T> {
    let v = required(el, element, attribute)?;
    v.trim().parse().map_err(|_| invalid(element, attribute, v))
}

fn parse_bool(s: &str) -> Option<bool> {
    let s = s.trim();
    if s == "1" || s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s == "0" || s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

fn optional_bool(
    el: &Element,
    element: &'static str,
    attribute: &'static str,
) -> Result<Option<bool>> {
    el.attr(attribute)
        .map(|v| parse_bool(v).ok_or_else(|| invalid(element, attribute, v)))
        .transpose()
}

/// A boolean attribute whose absence means false (`create`, `expire`, …).
fn flag(el: &Element, element: &'static str, attribute: &'static str) -> Result<bool> {
    Ok(optional_bool(el, element, attribute)?.unwrap_or(false))
}

fn optional_string(el: &Element, attribute: &str) -> Option<String> {
    el.attr(attribute).map(str::to_string)
}

fn bool_str(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// Attribute setters for [`ElementBuilder`] with our static attribute names.
trait BuilderExt: Sized {
    fn with<V: IntoAttributeValue>(self, name: &'static str, value: V) -> Self;

    fn with_bool(self, name: &'static str, value: Option<bool>) -> Self {
        self.with(name, value.map(bool_str))
    }

    /// Written only when true, as `true`.
    fn with_flag(self, name: &'static str, value: bool) -> Self {
        self.with_bool(name, value.then_some(true))
    }
}

impl BuilderExt for ElementBuilder {
    fn with<V: IntoAttributeValue>(self, name: &'static str, value: V) -> Self {
        self.attr(rxml_name(name), value)
    }
}

/// Error for an attribute holding a value outside an enumeration.
#[derive(Debug)]
pub struct UnknownValue;

// ---------------------------------------------------------------------------------------
// Media description: media, payload-type, rtcp-fb, rtp-hdrext
// ---------------------------------------------------------------------------------------

/// `type` of a colibri2 `<media/>` or `<media-source/>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaType {
    Audio,
    Video,
}

impl MediaType {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaType::Audio => "audio",
            MediaType::Video => "video",
        }
    }
}

impl FromStr for MediaType {
    type Err = UnknownValue;
    fn from_str(s: &str) -> std::result::Result<Self, UnknownValue> {
        match s.to_ascii_lowercase().as_str() {
            "audio" => Ok(MediaType::Audio),
            "video" => Ok(MediaType::Video),
            _ => Err(UnknownValue),
        }
    }
}

/// XEP-0293 `<rtcp-fb type [subtype]/>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtcpFb {
    pub type_: String,
    pub subtype: Option<String>,
}

impl RtcpFb {
    pub fn parse(el: &Element) -> Result<Self> {
        expect(el, "rtcp-fb", ns::JINGLE_RTCP_FB)?;
        Ok(RtcpFb {
            type_: required(el, "rtcp-fb", "type")?.to_string(),
            subtype: optional_string(el, "subtype"),
        })
    }

    pub fn to_element(&self) -> Element {
        Element::builder("rtcp-fb", ns::JINGLE_RTCP_FB)
            .with("type", self.type_.as_str())
            .with("subtype", self.subtype.as_deref())
            .build()
    }
}

/// XEP-0167 `<payload-type id name clockrate [channels]>` with `<parameter/>`s and
/// `<rtcp-fb/>`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadType {
    pub id: u8,
    pub name: String,
    pub clockrate: u32,
    pub channels: Option<u8>,
    /// `<parameter name value/>` in document order (fmtp).
    pub parameters: Vec<(String, String)>,
    pub rtcp_fbs: Vec<RtcpFb>,
}

impl PayloadType {
    pub fn parse(el: &Element) -> Result<Self> {
        const E: &str = "payload-type";
        expect(el, E, ns::JINGLE_RTP)?;
        let mut pt = PayloadType {
            id: required_parsed(el, E, "id")?,
            name: required(el, E, "name")?.to_string(),
            clockrate: required_parsed(el, E, "clockrate")?,
            channels: optional_parsed(el, E, "channels")?,
            parameters: Vec::new(),
            rtcp_fbs: Vec::new(),
        };
        for child in el.children() {
            if child.is("parameter", ns::JINGLE_RTP) {
                // A parameter without a name is a whole fmtp value (RED's `111/111`).
                pt.parameters.push((
                    child.attr("name").unwrap_or("").to_string(),
                    required(child, "parameter", "value")?.to_string(),
                ));
            } else if child.is("rtcp-fb", ns::JINGLE_RTCP_FB) {
                pt.rtcp_fbs.push(RtcpFb::parse(child)?);
            }
        }
        Ok(pt)
    }

    pub fn to_element(&self) -> Element {
        Element::builder("payload-type", ns::JINGLE_RTP)
            .with("id", self.id)
            .with("name", self.name.as_str())
            .with("clockrate", self.clockrate)
            .with("channels", self.channels)
            .append_all(self.parameters.iter().map(|(name, value)| {
                Element::builder("parameter", ns::JINGLE_RTP)
                    .with("name", (!name.is_empty()).then_some(name.as_str()))
                    .with("value", value.as_str())
                    .build()
            }))
            .append_all(self.rtcp_fbs.iter().map(RtcpFb::to_element))
            .build()
    }
}

/// XEP-0294 `<rtp-hdrext id uri/>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpHdrext {
    pub id: u16,
    pub uri: String,
}

impl RtpHdrext {
    pub fn parse(el: &Element) -> Result<Self> {
        expect(el, "rtp-hdrext", ns::JINGLE_RTP_HDREXT)?;
        Ok(RtpHdrext {
            id: required_parsed(el, "rtp-hdrext", "id")?,
            uri: required(el, "rtp-hdrext", "uri")?.to_string(),
        })
    }

    pub fn to_element(&self) -> Element {
        Element::builder("rtp-hdrext", ns::JINGLE_RTP_HDREXT)
            .with("id", self.id)
            .with("uri", self.uri.as_str())
            .build()
    }
}

/// Colibri2 `<media type>`: what the client negotiated for one media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub kind: MediaType,
    pub payload_types: Vec<PayloadType>,
    pub rtp_hdrexts: Vec<RtpHdrext>,
    /// `<extmap-allow-mixed xmlns='urn:xmpp:jingle:apps:rtp:rtp-hdrext:0'/>` present.
    pub extmap_allow_mixed: bool,
}

impl Media {
    pub fn new(kind: MediaType) -> Self {
        Media {
            kind,
            payload_types: Vec::new(),
            rtp_hdrexts: Vec::new(),
            extmap_allow_mixed: false,
        }
    }

    pub fn parse(el: &Element) -> Result<Self> {
        expect(el, "media", ns::COLIBRI2)?;
        let mut media = Media::new(required_parsed(el, "media", "type")?);
        for child in el.children() {
            if child.is("payload-type", ns::JINGLE_RTP) {
                media.payload_types.push(PayloadType::parse(child)?);
            } else if child.is("rtp-hdrext", ns::JINGLE_RTP_HDREXT) {
                media.rtp_hdrexts.push(RtpHdrext::parse(child)?);
            } else if child.is("extmap-allow-mixed", ns::JINGLE_RTP_HDREXT) {
                media.extmap_allow_mixed = true;
            }
        }
        Ok(media)
    }

    pub fn to_element(&self) -> Element {
        let mut b = Element::builder("media", ns::COLIBRI2)
            .with("type", self.kind.as_str())
            .append_all(self.payload_types.iter().map(PayloadType::to_element))
            .append_all(self.rtp_hdrexts.iter().map(RtpHdrext::to_element));
        if self.extmap_allow_mixed {
            b = b.append(Element::bare("extmap-allow-mixed", ns::JINGLE_RTP_HDREXT));
        }
        b.build()
    }
}

// ---------------------------------------------------------------------------------------
// Transport: colibri2 <transport>, <sctp>, ICE-UDP transport and its children
// ---------------------------------------------------------------------------------------

/// ICE candidate `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CandidateType {
    Host,
    Srflx,
    Prflx,
    Relay,
}

impl CandidateType {
    pub fn as_str(self) -> &'static str {
        match self {
            CandidateType::Host => "host",
            CandidateType::Srflx => "srflx",
            CandidateType::Prflx => "prflx",
            CandidateType::Relay => "relay",
        }
    }
}

impl FromStr for CandidateType {
    type Err = UnknownValue;
    fn from_str(s: &str) -> std::result::Result<Self, UnknownValue> {
        match s {
            "host" => Ok(CandidateType::Host),
            "srflx" => Ok(CandidateType::Srflx),
            "prflx" => Ok(CandidateType::Prflx),
            "relay" => Ok(CandidateType::Relay),
            _ => Err(UnknownValue),
        }
    }
}

/// XEP-0176 `<candidate/>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub component: u8,
    pub foundation: String,
    pub generation: u32,
    pub id: String,
    /// An IP literal, or an mDNS `.local` name from a browser: kept as text.
    pub ip: String,
    pub port: u16,
    pub priority: u32,
    pub protocol: String,
    pub type_: CandidateType,
    pub network: Option<u32>,
    pub rel_addr: Option<String>,
    pub rel_port: Option<u16>,
    /// RFC 6544 `tcptype` of a TCP candidate: `active`, `passive` or `so`.
    pub tcptype: Option<String>,
}

impl Candidate {
    pub fn parse(el: &Element) -> Result<Self> {
        const E: &str = "candidate";
        expect(el, E, ns::JINGLE_ICE_UDP)?;
        Ok(Candidate {
            component: required_parsed(el, E, "component")?,
            foundation: required(el, E, "foundation")?.to_string(),
            generation: required_parsed(el, E, "generation")?,
            id: required(el, E, "id")?.to_string(),
            ip: required(el, E, "ip")?.to_string(),
            port: required_parsed(el, E, "port")?,
            priority: required_parsed(el, E, "priority")?,
            protocol: required(el, E, "protocol")?.to_string(),
            type_: required_parsed(el, E, "type")?,
            network: optional_parsed(el, E, "network")?,
            rel_addr: optional_string(el, "rel-addr"),
            rel_port: optional_parsed(el, E, "rel-port")?,
            tcptype: optional_string(el, "tcptype"),
        })
    }

    pub fn to_element(&self) -> Element {
        Element::builder("candidate", ns::JINGLE_ICE_UDP)
            .with("component", self.component)
            .with("foundation", self.foundation.as_str())
            .with("generation", self.generation)
            .with("id", self.id.as_str())
            .with("network", self.network)
            .with("priority", self.priority)
            .with("protocol", self.protocol.as_str())
            .with("type", self.type_.as_str())
            .with("ip", self.ip.as_str())
            .with("port", self.port)
            .with("rel-addr", self.rel_addr.as_deref())
            .with("rel-port", self.rel_port)
            .with("tcptype", self.tcptype.as_deref())
            .build()
    }
}

/// DTLS `setup` role (RFC 4145) of a fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DtlsSetup {
    Active,
    Passive,
    Actpass,
    Holdconn,
}

impl DtlsSetup {
    pub fn as_str(self) -> &'static str {
        match self {
            DtlsSetup::Active => "active",
            DtlsSetup::Passive => "passive",
            DtlsSetup::Actpass => "actpass",
            DtlsSetup::Holdconn => "holdconn",
        }
    }
}

impl FromStr for DtlsSetup {
    type Err = UnknownValue;
    fn from_str(s: &str) -> std::result::Result<Self, UnknownValue> {
        match s {
            "active" => Ok(DtlsSetup::Active),
            "passive" => Ok(DtlsSetup::Passive),
            "actpass" => Ok(DtlsSetup::Actpass),
            "holdconn" => Ok(DtlsSetup::Holdconn),
            _ => Err(UnknownValue),
        }
    }
}

/// XEP-0320 `<fingerprint hash [setup] [cryptex]>AB:CD:…</fingerprint>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub hash: String,
    pub setup: Option<DtlsSetup>,
    pub cryptex: Option<bool>,
    /// The colon-separated hex digest (the element's text, trimmed).
    pub value: String,
}

impl Fingerprint {
    pub fn parse(el: &Element) -> Result<Self> {
        const E: &str = "fingerprint";
        expect(el, E, ns::JINGLE_DTLS)?;
        Ok(Fingerprint {
            hash: required(el, E, "hash")?.to_string(),
            setup: optional_parsed(el, E, "setup")?,
            cryptex: optional_bool(el, E, "cryptex")?,
            value: el.text().trim().to_string(),
        })
    }

    pub fn to_element(&self) -> Element {
        Element::builder("fingerprint", ns::JINGLE_DTLS)
            .with("hash", self.hash.as_str())
            .with("setup", self.setup.map(DtlsSetup::as_str))
            .with_bool("cryptex", self.cryptex)
            .append(self.value.as_str())
            .build()
    }
}

/// Jitsi `<web-socket xmlns='http://jitsi.org/protocol/colibri' [url] [active]/>` inside
/// an ICE-UDP transport: the bridge-channel URL for an endpoint, or for a relay either a
/// URL to dial or `active='true'` ("I will dial").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebSocket {
    pub url: Option<String>,
    pub active: Option<bool>,
}

impl WebSocket {
    pub fn parse(el: &Element) -> Result<Self> {
        expect(el, "web-socket", ns::JITSI_COLIBRI)?;
        Ok(WebSocket {
            url: optional_string(el, "url"),
            active: optional_bool(el, "web-socket", "active")?,
        })
    }

    pub fn to_element(&self) -> Element {
        Element::builder("web-socket", ns::JITSI_COLIBRI)
            .with("url", self.url.as_deref())
            .with_bool("active", self.active)
            .build()
    }
}

/// XEP-0343 `<sctpmap number protocol [streams]/>` (Jingle `data` content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SctpMap {
    pub number: u16,
    pub protocol: String,
    pub streams: Option<u32>,
}

impl SctpMap {
    pub fn parse(el: &Element) -> Result<Self> {
        const E: &str = "sctpmap";
        expect(el, E, ns::JINGLE_DTLS_SCTP)?;
        Ok(SctpMap {
            number: required_parsed(el, E, "number")?,
            protocol: required(el, E, "protocol")?.to_string(),
            streams: optional_parsed(el, E, "streams")?,
        })
    }

    pub fn to_element(&self) -> Element {
        Element::builder("sctpmap", ns::JINGLE_DTLS_SCTP)
            .with("number", self.number)
            .with("protocol", self.protocol.as_str())
            .with("streams", self.streams)
            .build()
    }
}

/// XEP-0176 `<transport xmlns='urn:xmpp:jingle:transports:ice-udp:1' [ufrag] [pwd]>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IceUdpTransport {
    /// Optional on the wire (e.g. a candidates-only transport-info); ICE starts once
    /// both are known.
    pub ufrag: Option<String>,
    pub pwd: Option<String>,
    /// `ice-generation`: set by the bridge on an ICE-restart answer that created a new agent.
    pub ice_generation: Option<u32>,
    pub sctpmap: Option<SctpMap>,
    pub fingerprints: Vec<Fingerprint>,
    pub web_sockets: Vec<WebSocket>,
    pub rtcp_mux: bool,
    pub candidates: Vec<Candidate>,
}

impl IceUdpTransport {
    /// What a client's session-accept carries for the bridge: its ICE credentials and its
    /// SHA-256 certificate fingerprint as DTLS client (`setup=active`), mux, no candidates.
    pub fn client_answer(ufrag: &str, pwd: &str, sha256: &[u8]) -> IceUdpTransport {
        let value = sha256
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        IceUdpTransport {
            ufrag: Some(ufrag.to_string()),
            pwd: Some(pwd.to_string()),
            fingerprints: vec![Fingerprint {
                hash: "sha-256".into(),
                setup: Some(DtlsSetup::Active),
                cryptex: None,
                value,
            }],
            rtcp_mux: true,
            ..IceUdpTransport::default()
        }
    }

    pub fn parse(el: &Element) -> Result<Self> {
        const E: &str = "transport";
        expect(el, E, ns::JINGLE_ICE_UDP)?;
        let mut t = IceUdpTransport {
            ufrag: optional_string(el, "ufrag"),
            pwd: optional_string(el, "pwd"),
            ice_generation: optional_parsed(el, E, "ice-generation")?,
            ..IceUdpTransport::default()
        };
        for child in el.children() {
            if child.is("candidate", ns::JINGLE_ICE_UDP) {
                t.candidates.push(Candidate::parse(child)?);
            } else if child.is("fingerprint", ns::JINGLE_DTLS) {
                t.fingerprints.push(Fingerprint::parse(child)?);
            } else if child.is("web-socket", ns::JITSI_COLIBRI) {
                t.web_sockets.push(WebSocket::parse(child)?);
            } else if child.name() == "rtcp-mux"
                && (child.has_ns(ns::JINGLE_ICE_UDP) || child.has_ns(ns::JINGLE_RTP))
            {
                t.rtcp_mux = true;
            } else if child.is("sctpmap", ns::JINGLE_DTLS_SCTP) {
                t.sctpmap = Some(SctpMap::parse(child)?);
            }
        }
        Ok(t)
    }

    /// Children in the order Jitsi writes them: sctpmap, fingerprints, web-sockets,
    /// rtcp-mux, candidates.
    pub fn to_element(&self) -> Element {
        let mut b = Element::builder("transport", ns::JINGLE_ICE_UDP)
            .with("ufrag", self.ufrag.as_deref())
            .with("pwd", self.pwd.as_deref())
            .with("ice-generation", self.ice_generation)
            .append_all(self.sctpmap.iter().map(SctpMap::to_element))
            .append_all(self.fingerprints.iter().map(Fingerprint::to_element))
            .append_all(self.web_sockets.iter().map(WebSocket::to_element));
        if self.rtcp_mux {
            b = b.append(Element::bare("rtcp-mux", ns::JINGLE_ICE_UDP));
        }
        b.append_all(self.candidates.iter().map(Candidate::to_element))
            .build()
    }
}

/// SCTP role in colibri2 `<sctp role/>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SctpRole {
    Client,
    Server,
}

impl SctpRole {
    pub fn as_str(self) -> &'static str {
        match self {
            SctpRole::Client => "client",
            SctpRole::Server => "server",
        }
    }
}

impl FromStr for SctpRole {
    type Err = UnknownValue;
    fn from_str(s: &str) -> std::result::Result<Self, UnknownValue> {
        match s.to_ascii_lowercase().as_str() {
            "client" => Ok(SctpRole::Client),
            "server" => Ok(SctpRole::Server),
            _ => Err(UnknownValue),
        }
    }
}

/// Colibri2 `<sctp [port] [role]/>`: an SCTP data channel over the DTLS transport.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sctp {
    pub port: Option<u16>,
    pub role: Option<SctpRole>,
}

impl Sctp {
    pub fn parse(el: &Element) -> Result<Self> {
        expect(el, "sctp", ns::COLIBRI2)?;
        Ok(Sctp {
            port: optional_parsed(el, "sctp", "port")?,
            role: optional_parsed(el, "sctp", "role")?,
        })
    }

    pub fn to_element(&self) -> Element {
        Element::builder("sctp", ns::COLIBRI2)
            .with("port", self.port)
            .with("role", self.role.map(SctpRole::as_str))
            .build()
    }
}

/// Colibri2 `<transport>` wrapping the ICE-UDP transport and the optional `<sctp/>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transport {
    /// Absent means false (§2.2); read by the bridge only on create.
    pub ice_controlling: Option<bool>,
    pub use_unique_port: Option<bool>,
    pub ice_restart: Option<bool>,
    pub ice: Option<IceUdpTransport>,
    pub sctp: Option<Sctp>,
}

impl Transport {
    pub fn parse(el: &Element) -> Result<Self> {
        const E: &str = "transport";
        expect(el, E, ns::COLIBRI2)?;
        let mut t = Transport {
            ice_controlling: optional_bool(el, E, "ice-controlling")?,
            use_unique_port: optional_bool(el, E, "use-unique-port")?,
            ice_restart: optional_bool(el, E, "ice-restart")?,
            ..Transport::default()
        };
        for child in el.children() {
            if child.is("transport", ns::JINGLE_ICE_UDP) {
                t.ice = Some(IceUdpTransport::parse(child)?);
            } else if child.is("sctp", ns::COLIBRI2) {
                t.sctp = Some(Sctp::parse(child)?);
            }
        }
        Ok(t)
    }

    pub fn to_element(&self) -> Element {
        Element::builder("transport", ns::COLIBRI2)
            .with_bool("ice-controlling", self.ice_controlling)
            .with_bool("use-unique-port", self.use_unique_port)
            .with_bool("ice-restart", self.ice_restart)
            .append_all(self.ice.iter().map(IceUdpTransport::to_element))
            .append_all(self.sctp.iter().map(Sctp::to_element))
            .build()
    }
}

// ---------------------------------------------------------------------------------------
// Sources: sources, media-source, source, ssrc-group
// ---------------------------------------------------------------------------------------

/// XEP-0339 `<source ssrc [name] [videoType]>` with an optional
/// `<parameter name='msid' value/>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub ssrc: u32,
    /// The source name (e.g. `abcd1234-v0`), shared by all SSRCs of one media source.
    pub name: Option<String>,
    /// `videoType` (`camera`/`desktop`), as lib-jitsi-meet writes it.
    pub video_type: Option<String>,
    pub msid: Option<String>,
}

impl Source {
    pub fn new(ssrc: u32) -> Self {
        Source {
            ssrc,
            name: None,
            video_type: None,
            msid: None,
        }
    }

    pub fn parse(el: &Element) -> Result<Self> {
        expect(el, "source", ns::JINGLE_SSMA)?;
        let mut source = Source {
            name: optional_string(el, "name"),
            video_type: optional_string(el, "videoType"),
            ..Source::new(required_parsed(el, "source", "ssrc")?)
        };
        for child in el.children() {
            if child.name() == "parameter"
                && (child.has_ns(ns::JINGLE_SSMA) || child.has_ns(ns::JINGLE_RTP))
                && child.attr("name") == Some("msid")
            {
                source.msid = Some(required(child, "parameter", "value")?.to_string());
            }
        }
        Ok(source)
    }

    pub fn to_element(&self) -> Element {
        Element::builder("source", ns::JINGLE_SSMA)
            .with("ssrc", self.ssrc)
            .with("name", self.name.as_deref())
            .with("videoType", self.video_type.as_deref())
            .append_all(self.msid.iter().map(|msid| {
                Element::builder("parameter", ns::JINGLE_SSMA)
                    .with("name", "msid")
                    .with("value", msid.as_str())
                    .build()
            }))
            .build()
    }
}

/// XEP-0339 `<ssrc-group semantics><source ssrc/>…</ssrc-group>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsrcGroup {
    /// `SIM` (layers low→high), `FID` (primary, RTX) or `FEC`.
    pub semantics: String,
    pub ssrcs: Vec<u32>,
}

impl SsrcGroup {
    pub fn parse(el: &Element) -> Result<Self> {
        expect(el, "ssrc-group", ns::JINGLE_SSMA)?;
        let mut group = SsrcGroup {
            semantics: required(el, "ssrc-group", "semantics")?.to_string(),
            ssrcs: Vec::new(),
        };
        for child in el.children() {
            if child.is("source", ns::JINGLE_SSMA) {
                group.ssrcs.push(required_parsed(child, "source", "ssrc")?);
            }
        }
        Ok(group)
    }

    pub fn to_element(&self) -> Element {
        Element::builder("ssrc-group", ns::JINGLE_SSMA)
            .with("semantics", self.semantics.as_str())
            .append_all(self.ssrcs.iter().map(|ssrc| {
                Element::builder("source", ns::JINGLE_SSMA)
                    .with("ssrc", *ssrc)
                    .build()
            }))
            .build()
    }
}

/// Colibri2 `<media-source type id [synthetic]>`: one source name and its SSRCs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSource {
    pub kind: MediaType,
    /// The source name (e.g. `abcd1234-v0`, or `jvb-a0` for the bridge's own).
    pub id: String,
    pub synthetic: Option<bool>,
    pub sources: Vec<Source>,
    pub ssrc_groups: Vec<SsrcGroup>,
}

impl MediaSource {
    pub fn parse(el: &Element) -> Result<Self> {
        const E: &str = "media-source";
        expect(el, E, ns::COLIBRI2)?;
        let mut ms = MediaSource {
            kind: required_parsed(el, E, "type")?,
            id: required(el, E, "id")?.to_string(),
            synthetic: optional_bool(el, E, "synthetic")?,
            sources: Vec::new(),
            ssrc_groups: Vec::new(),
        };
        for child in el.children() {
            if child.is("source", ns::JINGLE_SSMA) {
                ms.sources.push(Source::parse(child)?);
            } else if child.is("ssrc-group", ns::JINGLE_SSMA) {
                ms.ssrc_groups.push(SsrcGroup::parse(child)?);
            }
        }
        Ok(ms)
    }

    pub fn to_element(&self) -> Element {
        Element::builder("media-source", ns::COLIBRI2)
            .with("type", self.kind.as_str())
            .with("id", self.id.as_str())
            .with_bool("synthetic", self.synthetic)
            .append_all(self.sources.iter().map(Source::to_element))
            .append_all(self.ssrc_groups.iter().map(SsrcGroup::to_element))
            .build()
    }
}

/// Colibri2 `<sources>`: an endpoint's sending sources (replacing the previous set), or
/// in a response the bridge's own feedback sources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    pub media_sources: Vec<MediaSource>,
}

impl Sources {
    pub fn parse(el: &Element) -> Result<Self> {
        expect(el, "sources", ns::COLIBRI2)?;
        Ok(Sources {
            media_sources: el
                .children()
                .filter(|c| c.is("media-source", ns::COLIBRI2))
                .map(MediaSource::parse)
                .collect::<Result<_>>()?,
        })
    }

    pub fn to_element(&self) -> Element {
        Element::builder("sources", ns::COLIBRI2)
            .append_all(self.media_sources.iter().map(MediaSource::to_element))
            .build()
    }
}

// ---------------------------------------------------------------------------------------
// Endpoint, relay, conference-modify / conference-modified
// ---------------------------------------------------------------------------------------

/// Colibri2 `<force-mute audio video/>`: the bridge drops that media from the endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForceMute {
    pub audio: Option<bool>,
    pub video: Option<bool>,
}

impl ForceMute {
    pub fn parse(el: &Element) -> Result<Self> {
        expect(el, "force-mute", ns::COLIBRI2)?;
        Ok(ForceMute {
            audio: optional_bool(el, "force-mute", "audio")?,
            video: optional_bool(el, "force-mute", "video")?,
        })
    }

    pub fn to_element(&self) -> Element {
        Element::builder("force-mute", ns::COLIBRI2)
            .with_bool("audio", self.audio)
            .with_bool("video", self.video)
            .build()
    }
}

/// Colibri2 `<endpoint id>`: a local participant (or, inside a relay's `<endpoints>`, one
/// of the remote bridge's participants).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub id: String,
    pub create: bool,
    pub expire: bool,
    pub stats_id: Option<String>,
    /// `visitor` makes a receive-only, invisible endpoint.
    pub muc_role: Option<String>,
    pub medias: Vec<Media>,
    pub transport: Option<Transport>,
    pub sources: Option<Sources>,
    pub force_mute: Option<ForceMute>,
    /// `<capability name/>`s: `source-names`, `ssrc-rewriting`, ….
    pub capabilities: Vec<String>,
    pub initial_last_n: Option<i32>,
    /// Not on the wire: the participant's region (its presence's
    /// `jitsi_participant_region`), for the focus's bridge pool to choose by.
    pub region: Option<String>,
}

impl Endpoint {
    pub fn new(id: impl Into<String>) -> Self {
        Endpoint {
            id: id.into(),
            ..Endpoint::default()
        }
    }

    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities.iter().any(|c| c == name)
    }

    pub fn parse(el: &Element) -> Result<Self> {
        const E: &str = "endpoint";
        expect(el, E, ns::COLIBRI2)?;
        let mut ep = Endpoint {
            id: required(el, E, "id")?.to_string(),
            create: flag(el, E, "create")?,
            expire: flag(el, E, "expire")?,
            stats_id: optional_string(el, "stats-id"),
            muc_role: optional_string(el, "muc-role"),
            ..Endpoint::default()
        };
        for child in el.children().filter(|c| c.has_ns(ns::COLIBRI2)) {
            match child.name() {
                "media" => ep.medias.push(Media::parse(child)?),
                "transport" => ep.transport = Some(Transport::parse(child)?),
                "sources" => ep.sources = Some(Sources::parse(child)?),
                "force-mute" => ep.force_mute = Some(ForceMute::parse(child)?),
                "capability" => ep
                    .capabilities
                    .push(required(child, "capability", "name")?.to_string()),
                "initial-last-n" => {
                    ep.initial_last_n = Some(required_parsed(child, "initial-last-n", "value")?)
                }
                _ => {}
            }
        }
        Ok(ep)
    }

    pub fn to_element(&self) -> Element {
        Element::builder("endpoint", ns::COLIBRI2)
            .with("id", self.id.as_str())
            .with_flag("create", self.create)
            .with_flag("expire", self.expire)
            .with("stats-id", self.stats_id.as_deref())
            .with("muc-role", self.muc_role.as_deref())
            .append_all(self.medias.iter().map(Media::to_element))
            .append_all(self.transport.iter().map(Transport::to_element))
            .append_all(self.sources.iter().map(Sources::to_element))
            .append_all(self.force_mute.iter().map(ForceMute::to_element))
            .append_all(self.capabilities.iter().map(|name| {
                Element::builder("capability", ns::COLIBRI2)
                    .with("name", name.as_str())
                    .build()
            }))
            .append_all(self.initial_last_n.iter().map(|n| {
                Element::builder("initial-last-n", ns::COLIBRI2)
                    .with("value", *n)
                    .build()
            }))
            .build()
    }
}

/// Colibri2 `<relay id>`: a bridge-to-bridge link (§2.5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Relay {
    /// The remote bridge's relay-id.
    pub id: String,
    pub create: bool,
    pub expire: bool,
    pub mesh_id: Option<String>,
    pub medias: Vec<Media>,
    pub transport: Option<Transport>,
    /// The remote bridge's endpoints (`<endpoints><endpoint/>…</endpoints>`); an empty
    /// list is written as no `<endpoints>` element.
    pub endpoints: Vec<Endpoint>,
}

impl Relay {
    pub fn parse(el: &Element) -> Result<Self> {
        const E: &str = "relay";
        expect(el, E, ns::COLIBRI2)?;
        let mut relay = Relay {
            id: required(el, E, "id")?.to_string(),
            create: flag(el, E, "create")?,
            expire: flag(el, E, "expire")?,
            mesh_id: optional_string(el, "mesh-id"),
            ..Relay::default()
        };
        for child in el.children().filter(|c| c.has_ns(ns::COLIBRI2)) {
            match child.name() {
                "media" => relay.medias.push(Media::parse(child)?),
                "transport" => relay.transport = Some(Transport::parse(child)?),
                "endpoints" => {
                    for ep in child.children().filter(|c| c.is("endpoint", ns::COLIBRI2)) {
                        relay.endpoints.push(Endpoint::parse(ep)?);
                    }
                }
                _ => {}
            }
        }
        Ok(relay)
    }

    pub fn to_element(&self) -> Element {
        let mut b = Element::builder("relay", ns::COLIBRI2)
            .with("id", self.id.as_str())
            .with("mesh-id", self.mesh_id.as_deref())
            .with_flag("create", self.create)
            .with_flag("expire", self.expire)
            .append_all(self.medias.iter().map(Media::to_element))
            .append_all(self.transport.iter().map(Transport::to_element));
        if !self.endpoints.is_empty() {
            b = b.append(
                Element::builder("endpoints", ns::COLIBRI2)
                    .append_all(self.endpoints.iter().map(Endpoint::to_element))
                    .build(),
            );
        }
        b.build()
    }
}

/// The request `<conference-modify meeting-id>` (§2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConferenceModify {
    pub meeting_id: String,
    /// The conference room JID; only meaningful with `create`.
    pub name: Option<String>,
    pub create: bool,
    pub expire: bool,
    pub rtcstats_enabled: Option<bool>,
    pub endpoints: Vec<Endpoint>,
    pub relays: Vec<Relay>,
}

impl ConferenceModify {
    pub fn new(meeting_id: impl Into<String>) -> Self {
        ConferenceModify {
            meeting_id: meeting_id.into(),
            ..ConferenceModify::default()
        }
    }

    pub fn parse(el: &Element) -> Result<Self> {
        const E: &str = "conference-modify";
        expect(el, E, ns::COLIBRI2)?;
        let mut cm = ConferenceModify {
            meeting_id: required(el, E, "meeting-id")?.to_string(),
            name: optional_string(el, "name"),
            create: flag(el, E, "create")?,
            expire: flag(el, E, "expire")?,
            rtcstats_enabled: optional_bool(el, E, "rtcstats-enabled")?,
            ..ConferenceModify::default()
        };
        for child in el.children() {
            if child.is("endpoint", ns::COLIBRI2) {
                cm.endpoints.push(Endpoint::parse(child)?);
            } else if child.is("relay", ns::COLIBRI2) {
                cm.relays.push(Relay::parse(child)?);
            }
        }
        Ok(cm)
    }

    pub fn to_element(&self) -> Element {
        Element::builder("conference-modify", ns::COLIBRI2)
            .with("meeting-id", self.meeting_id.as_str())
            .with("name", self.name.as_deref())
            .with_flag("create", self.create)
            .with_flag("expire", self.expire)
            .with_bool("rtcstats-enabled", self.rtcstats_enabled)
            .append_all(self.endpoints.iter().map(Endpoint::to_element))
            .append_all(self.relays.iter().map(Relay::to_element))
            .build()
    }
}

/// The response `<conference-modified>` (§2.6).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConferenceModified {
    pub endpoints: Vec<Endpoint>,
    pub relays: Vec<Relay>,
    /// The bridge's own feedback sources (`jvb-a0`, `jvb-v0`), on conference or endpoint
    /// create.
    pub sources: Option<Sources>,
}

impl ConferenceModified {
    pub fn parse(el: &Element) -> Result<Self> {
        expect(el, "conference-modified", ns::COLIBRI2)?;
        let mut cm = ConferenceModified::default();
        for child in el.children().filter(|c| c.has_ns(ns::COLIBRI2)) {
            match child.name() {
                "endpoint" => cm.endpoints.push(Endpoint::parse(child)?),
                "relay" => cm.relays.push(Relay::parse(child)?),
                "sources" => cm.sources = Some(Sources::parse(child)?),
                _ => {}
            }
        }
        Ok(cm)
    }

    pub fn to_element(&self) -> Element {
        Element::builder("conference-modified", ns::COLIBRI2)
            .append_all(self.endpoints.iter().map(Endpoint::to_element))
            .append_all(self.relays.iter().map(Relay::to_element))
            .append_all(self.sources.iter().map(Sources::to_element))
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(xml: &str) -> Element {
        xml.parse().expect("test XML parses")
    }

    /// The doc's `<iq>` examples omit the stream's default namespace, which a standalone
    /// parse needs.
    fn iq(xml: &str) -> Element {
        el(&xml.replacen("<iq ", "<iq xmlns='jabber:client' ", 1))
    }

    /// Serialise to text, parse again: catches namespace mistakes a struct compare
    /// on the Element alone would not.
    fn reparse(e: &Element) -> Element {
        String::from(e).parse().expect("serialised XML parses")
    }

    fn modify_in_iq(xml: &str) -> ConferenceModify {
        let iq = iq(xml);
        let payload = iq
            .get_child("conference-modify", ns::COLIBRI2)
            .expect("conference-modify in iq");
        let cm = ConferenceModify::parse(payload).expect("parses");
        assert_eq!(
            ConferenceModify::parse(&reparse(&cm.to_element())),
            Ok(cm.clone())
        );
        cm
    }

    fn modified_in_iq(xml: &str) -> ConferenceModified {
        let iq = iq(xml);
        let payload = iq
            .get_child("conference-modified", ns::COLIBRI2)
            .expect("conference-modified in iq");
        let cm = ConferenceModified::parse(payload).expect("parses");
        assert_eq!(
            ConferenceModified::parse(&reparse(&cm.to_element())),
            Ok(cm.clone())
        );
        cm
    }

    fn modify(xml: &str) -> ConferenceModify {
        let cm = ConferenceModify::parse(&el(xml)).expect("parses");
        assert_eq!(
            ConferenceModify::parse(&reparse(&cm.to_element())),
            Ok(cm.clone())
        );
        cm
    }

    fn child_names(e: &Element) -> Vec<String> {
        e.children().map(|c| c.name().to_string()).collect()
    }

    const CREATE: &str = r#"<iq type='get' id='c1' to='brewery@internal.example/bridge-1'>
  <conference-modify xmlns='jitsi:colibri2' meeting-id='6f1c…-uuid' name='room1@conference.example' create='true'>
    <endpoint id='ep1' create='true' stats-id='Alice-x1'>
      <media type='audio'>
        <payload-type xmlns='urn:xmpp:jingle:apps:rtp:1' id='111' name='opus' clockrate='48000' channels='2'>
          <rtcp-fb xmlns='urn:xmpp:jingle:apps:rtp:rtcp-fb:0' type='transport-cc'/>
        </payload-type>
        <rtp-hdrext xmlns='urn:xmpp:jingle:apps:rtp:rtp-hdrext:0' id='1' uri='urn:ietf:params:rtp-hdrext:ssrc-audio-level'/>
        <rtp-hdrext xmlns='urn:xmpp:jingle:apps:rtp:rtp-hdrext:0' id='5' uri='http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01'/>
      </media>
      <media type='video'>
        <payload-type xmlns='urn:xmpp:jingle:apps:rtp:1' id='100' name='VP8' clockrate='90000'>
          <rtcp-fb xmlns='urn:xmpp:jingle:apps:rtp:rtcp-fb:0' type='nack'/>
          <rtcp-fb xmlns='urn:xmpp:jingle:apps:rtp:rtcp-fb:0' type='nack' subtype='pli'/>
          <rtcp-fb xmlns='urn:xmpp:jingle:apps:rtp:rtcp-fb:0' type='ccm' subtype='fir'/>
          <rtcp-fb xmlns='urn:xmpp:jingle:apps:rtp:rtcp-fb:0' type='transport-cc'/>
        </payload-type>
        <payload-type xmlns='urn:xmpp:jingle:apps:rtp:1' id='96' name='rtx' clockrate='90000'>
          <parameter name='apt' value='100'/>
        </payload-type>
        <rtp-hdrext xmlns='urn:xmpp:jingle:apps:rtp:rtp-hdrext:0' id='3' uri='http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time'/>
        <rtp-hdrext xmlns='urn:xmpp:jingle:apps:rtp:rtp-hdrext:0' id='5' uri='http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01'/>
      </media>
      <transport ice-controlling='true'/>
      <capability name='source-names'/>
      <capability name='ssrc-rewriting'/>
    </endpoint>
  </conference-modify>
</iq>"#;

    const CREATE_ANSWER: &str = r#"<iq type='result' id='c1'>
  <conference-modified xmlns='jitsi:colibri2'>
    <endpoint id='ep1'>
      <transport>
        <transport xmlns='urn:xmpp:jingle:transports:ice-udp:1' ufrag='4k2p1ab3cd9ef' pwd='q1w2e3r4t5y6u7i8o9p0a1s2d'>
          <fingerprint xmlns='urn:xmpp:jingle:apps:dtls:0' hash='sha-256' setup='actpass'>AB:CD:…:EF</fingerprint>
          <web-socket xmlns='http://jitsi.org/protocol/colibri' url='wss://meet.example/colibri-ws/bridge-1/3a9f00c1d2e4/ep1?pwd=Zk3…24chars'/>
          <rtcp-mux/>
          <candidate component='1' foundation='1' generation='0' id='c0' network='0' priority='2130706431'
                     protocol='udp' type='host' ip='10.0.0.5' port='10000'/>
          <candidate component='1' foundation='2' generation='0' id='c1' network='0' priority='1694498815'
                     protocol='udp' type='srflx' ip='203.0.113.7' port='10000' rel-addr='10.0.0.5' rel-port='10000'/>
        </transport>
      </transport>
    </endpoint>
    <sources>
      <media-source type='audio' id='jvb-a0'><source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='1111111111' name='jvb-a0'/></media-source>
      <media-source type='video' id='jvb-v0'><source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='2222222222' name='jvb-v0'/></media-source>
    </sources>
  </conference-modified>
</iq>"#;

    const UPDATE: &str = r#"<iq type='get' id='c2' to='brewery@internal.example/bridge-1'>
  <conference-modify xmlns='jitsi:colibri2' meeting-id='6f1c…-uuid'>
    <endpoint id='ep1'>
      <transport>
        <transport xmlns='urn:xmpp:jingle:transports:ice-udp:1' ufrag='Ab3x' pwd='client-ice-password-22ch'>
          <fingerprint xmlns='urn:xmpp:jingle:apps:dtls:0' hash='sha-256' setup='active'>11:22:…:FF</fingerprint>
          <rtcp-mux/>
        </transport>
      </transport>
      <sources>
        <media-source type='audio' id='ep1-a0'><source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='100' name='ep1-a0'/></media-source>
        <media-source type='video' id='ep1-v0'>
          <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='201' name='ep1-v0'/>
          <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='202' name='ep1-v0'/>
          <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='203' name='ep1-v0'/>
          <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='211' name='ep1-v0'/>
          <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='212' name='ep1-v0'/>
          <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='213' name='ep1-v0'/>
          <ssrc-group xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' semantics='SIM'><source ssrc='201'/><source ssrc='202'/><source ssrc='203'/></ssrc-group>
          <ssrc-group xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' semantics='FID'><source ssrc='201'/><source ssrc='211'/></ssrc-group>
          <ssrc-group xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' semantics='FID'><source ssrc='202'/><source ssrc='212'/></ssrc-group>
          <ssrc-group xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' semantics='FID'><source ssrc='203'/><source ssrc='213'/></ssrc-group>
        </media-source>
      </sources>
    </endpoint>
  </conference-modify>
</iq>"#;

    const ERROR_IQ: &str = r#"<iq type='error' id='c9'>
  <error type='cancel'>
    <item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>
    <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>Conference not found for ID: …</text>
    <error xmlns='jitsi:colibri2' reason='conference_not_found'/>
  </error>
</iq>"#;

    const RELAY_CREATE: &str = r#"<conference-modify xmlns='jitsi:colibri2' meeting-id='…'>
  <relay id='relay-of-bridge-2' mesh-id='0' create='true'>
    <media type='audio'>…PTs/exts…</media>
    <media type='video'>…PTs/exts…</media>
    <transport ice-controlling='true' use-unique-port='false'><sctp role='client'/></transport>
    <endpoints>
      <endpoint id='epX' create='true' stats-id='Bob-y2'><sources>…</sources></endpoint>
    </endpoints>
  </relay>
</conference-modify>"#;

    /// The audio content's transport of fixture 08 (focus → client session-initiate).
    const FIXTURE_08_TRANSPORT: &str = r#"<transport xmlns="urn:xmpp:jingle:transports:ice-udp:1" ufrag="fu53" pwd="fakeicepwd50xxxxxxxxxxxx">
        <fingerprint xmlns="urn:xmpp:jingle:apps:dtls:0" hash="sha-256" setup="actpass">38:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67</fingerprint>
        <web-socket xmlns="http://jitsi.org/protocol/colibri" url="ws://127.0.0.1:18443/colibri-ws/jvb1/c0ffee00/a0a0a0a0?pwd=fakeicepwd50xxxxxxxxxxxx"/>
        <rtcp-mux/>
        <candidate component="1" foundation="1" generation="0" id="c1326919" network="0" priority="2130706431" protocol="udp" type="host" ip="127.0.0.1" port="10000"/>
      </transport>"#;

    /// The data content's transport of fixture 08 (with sctpmap).
    const FIXTURE_08_DATA_TRANSPORT: &str = r#"<transport xmlns="urn:xmpp:jingle:transports:ice-udp:1" ufrag="fu53" pwd="fakeicepwd50xxxxxxxxxxxx">
        <sctpmap xmlns="urn:xmpp:jingle:transports:dtls-sctp:1" number="5000" protocol="webrtc-datachannel" streams="1024"/>
        <fingerprint xmlns="urn:xmpp:jingle:apps:dtls:0" hash="sha-256" setup="actpass">38:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67</fingerprint>
        <web-socket xmlns="http://jitsi.org/protocol/colibri" url="ws://127.0.0.1:18443/colibri-ws/jvb1/c0ffee00/a0a0a0a0?pwd=fakeicepwd50xxxxxxxxxxxx"/>
        <rtcp-mux/>
        <candidate component="1" foundation="1" generation="0" id="c1326919" network="0" priority="2130706431" protocol="udp" type="host" ip="127.0.0.1" port="10000"/>
      </transport>"#;

    #[test]
    fn create_conference_and_first_endpoint() {
        let cm = modify_in_iq(CREATE);
        assert_eq!(cm.meeting_id, "6f1c…-uuid");
        assert_eq!(cm.name.as_deref(), Some("room1@conference.example"));
        assert!(cm.create);
        assert!(!cm.expire);
        assert_eq!(cm.rtcstats_enabled, None);
        assert!(cm.relays.is_empty());
        assert_eq!(cm.endpoints.len(), 1);

        let ep = &cm.endpoints[0];
        assert_eq!(ep.id, "ep1");
        assert!(ep.create);
        assert_eq!(ep.stats_id.as_deref(), Some("Alice-x1"));
        assert_eq!(ep.capabilities, ["source-names", "ssrc-rewriting"]);
        assert!(ep.has_capability("source-names"));
        assert_eq!(ep.sources, None);
        assert_eq!(ep.force_mute, None);

        let transport = ep.transport.as_ref().expect("transport");
        assert_eq!(transport.ice_controlling, Some(true));
        assert_eq!(transport.ice, None);
        assert_eq!(transport.sctp, None);

        assert_eq!(ep.medias.len(), 2);
        let audio = &ep.medias[0];
        assert_eq!(audio.kind, MediaType::Audio);
        assert!(!audio.extmap_allow_mixed);
        assert_eq!(
            audio.payload_types,
            [PayloadType {
                id: 111,
                name: "opus".into(),
                clockrate: 48000,
                channels: Some(2),
                parameters: vec![],
                rtcp_fbs: vec![RtcpFb {
                    type_: "transport-cc".into(),
                    subtype: None
                }],
            }]
        );
        assert_eq!(
            audio.rtp_hdrexts[0],
            RtpHdrext {
                id: 1,
                uri: "urn:ietf:params:rtp-hdrext:ssrc-audio-level".into()
            }
        );
        let video = &ep.medias[1];
        assert_eq!(video.kind, MediaType::Video);
        assert_eq!(video.payload_types.len(), 2);
        let vp8 = &video.payload_types[0];
        assert_eq!(
            (vp8.id, vp8.name.as_str(), vp8.channels),
            (100, "VP8", None)
        );
        assert_eq!(vp8.rtcp_fbs.len(), 4);
        assert_eq!(vp8.rtcp_fbs[1].subtype.as_deref(), Some("pli"));
        let rtx = &video.payload_types[1];
        assert_eq!(rtx.parameters, [("apt".to_string(), "100".to_string())]);
        assert_eq!(
            video.rtp_hdrexts.iter().map(|h| h.id).collect::<Vec<_>>(),
            [3, 5]
        );
    }

    #[test]
    fn create_answer() {
        let cm = modified_in_iq(CREATE_ANSWER);
        assert_eq!(cm.endpoints.len(), 1);
        assert!(cm.relays.is_empty());
        let ep = &cm.endpoints[0];
        assert_eq!(ep.id, "ep1");
        assert!(!ep.create && !ep.expire);

        let transport = ep.transport.as_ref().expect("transport");
        assert_eq!(transport.ice_controlling, None);
        let ice = transport.ice.as_ref().expect("ice-udp transport");
        assert_eq!(ice.ufrag.as_deref(), Some("4k2p1ab3cd9ef"));
        assert_eq!(ice.pwd.as_deref(), Some("q1w2e3r4t5y6u7i8o9p0a1s2d"));
        assert!(ice.rtcp_mux);
        assert_eq!(
            ice.fingerprints,
            [Fingerprint {
                hash: "sha-256".into(),
                setup: Some(DtlsSetup::Actpass),
                cryptex: None,
                value: "AB:CD:…:EF".into(),
            }]
        );
        assert_eq!(
            ice.web_sockets,
            [WebSocket {
                url: Some(
                    "wss://meet.example/colibri-ws/bridge-1/3a9f00c1d2e4/ep1?pwd=Zk3…24chars"
                        .into()
                ),
                active: None,
            }]
        );
        assert_eq!(ice.candidates.len(), 2);
        let host = &ice.candidates[0];
        assert_eq!(host.type_, CandidateType::Host);
        assert_eq!((host.ip.as_str(), host.port), ("10.0.0.5", 10000));
        assert_eq!(host.priority, 2130706431);
        assert_eq!(host.network, Some(0));
        assert_eq!(host.rel_addr, None);
        let srflx = &ice.candidates[1];
        assert_eq!(srflx.type_, CandidateType::Srflx);
        assert_eq!(srflx.rel_addr.as_deref(), Some("10.0.0.5"));
        assert_eq!(srflx.rel_port, Some(10000));

        let sources = cm.sources.as_ref().expect("feedback sources");
        let ids: Vec<_> = sources
            .media_sources
            .iter()
            .map(|m| (m.kind, m.id.as_str(), m.sources[0].ssrc))
            .collect();
        assert_eq!(
            ids,
            [
                (MediaType::Audio, "jvb-a0", 1111111111),
                (MediaType::Video, "jvb-v0", 2222222222)
            ]
        );
        assert_eq!(
            sources.media_sources[1].sources[0].name.as_deref(),
            Some("jvb-v0")
        );
    }

    #[test]
    fn ice_udp_children_keep_document_order() {
        let cm = modified_in_iq(CREATE_ANSWER);
        let ice = cm.endpoints[0]
            .transport
            .as_ref()
            .unwrap()
            .ice
            .as_ref()
            .unwrap();
        assert_eq!(
            child_names(&ice.to_element()),
            [
                "fingerprint",
                "web-socket",
                "rtcp-mux",
                "candidate",
                "candidate"
            ]
        );
        let out = String::from(&cm.to_element());
        assert!(out.contains("<fingerprint xmlns='urn:xmpp:jingle:apps:dtls:0'"));
        assert!(out.contains("<web-socket xmlns='http://jitsi.org/protocol/colibri'"));
    }

    #[test]
    fn update_with_transport_and_simulcast_sources() {
        let cm = modify_in_iq(UPDATE);
        assert_eq!(cm.meeting_id, "6f1c…-uuid");
        assert!(!cm.create);
        assert_eq!(cm.name, None);
        let ep = &cm.endpoints[0];
        assert_eq!(ep.id, "ep1");
        assert!(!ep.create);
        let ice = ep.transport.as_ref().unwrap().ice.as_ref().unwrap();
        assert_eq!(ice.ufrag.as_deref(), Some("Ab3x"));
        assert_eq!(ice.fingerprints[0].setup, Some(DtlsSetup::Active));
        assert!(ice.candidates.is_empty());
        assert!(ice.web_sockets.is_empty());

        let sources = ep.sources.as_ref().unwrap();
        assert_eq!(sources.media_sources.len(), 2);
        let audio = &sources.media_sources[0];
        assert_eq!(
            (audio.kind, audio.id.as_str()),
            (MediaType::Audio, "ep1-a0")
        );
        assert_eq!(
            audio.sources,
            [Source {
                name: Some("ep1-a0".into()),
                ..Source::new(100)
            }]
        );
        let video = &sources.media_sources[1];
        assert_eq!(video.id, "ep1-v0");
        assert_eq!(
            video.sources.iter().map(|s| s.ssrc).collect::<Vec<_>>(),
            [201, 202, 203, 211, 212, 213]
        );
        assert_eq!(
            video.ssrc_groups[0],
            SsrcGroup {
                semantics: "SIM".into(),
                ssrcs: vec![201, 202, 203]
            }
        );
        assert_eq!(video.ssrc_groups.len(), 4);
        assert_eq!(video.ssrc_groups[3].semantics, "FID");
        assert_eq!(video.ssrc_groups[3].ssrcs, [203, 213]);
    }

    #[test]
    fn update_answer() {
        let cm = ConferenceModified::parse(&el(
            "<conference-modified xmlns='jitsi:colibri2'><endpoint id='ep1'/></conference-modified>",
        ))
        .unwrap();
        assert_eq!(
            cm,
            ConferenceModified {
                endpoints: vec![Endpoint::new("ep1")],
                ..Default::default()
            }
        );
        assert_eq!(
            ConferenceModified::parse(&reparse(&cm.to_element())),
            Ok(cm)
        );
    }

    #[test]
    fn force_mute_expire_endpoint_expire_conference() {
        let mute = modify(
            "<conference-modify xmlns='jitsi:colibri2' meeting-id='…'>
  <endpoint id='ep1'><force-mute audio='true' video='false'/></endpoint>
  <endpoint id='ep2'><force-mute audio='true' video='true'/></endpoint>
</conference-modify>",
        );
        assert_eq!(mute.meeting_id, "…");
        assert_eq!(mute.endpoints.len(), 2);
        assert_eq!(
            mute.endpoints[0].force_mute,
            Some(ForceMute {
                audio: Some(true),
                video: Some(false)
            })
        );
        assert_eq!(
            mute.endpoints[1].force_mute,
            Some(ForceMute {
                audio: Some(true),
                video: Some(true)
            })
        );
        assert!(
            mute.endpoints
                .iter()
                .all(|e| e.transport.is_none() && !e.expire)
        );

        let expire_ep = modify(
            "<conference-modify xmlns='jitsi:colibri2' meeting-id='…'><endpoint id='ep3' expire='true'/></conference-modify>",
        );
        assert_eq!(
            expire_ep.endpoints,
            [Endpoint {
                expire: true,
                ..Endpoint::new("ep3")
            }]
        );
        assert!(!expire_ep.expire);

        let expire_conf =
            modify("<conference-modify xmlns='jitsi:colibri2' meeting-id='…' expire='true'/>");
        assert!(expire_conf.expire);
        assert!(expire_conf.endpoints.is_empty());
    }

    #[test]
    fn relay_create() {
        let cm = modify(RELAY_CREATE);
        assert!(cm.endpoints.is_empty());
        let relay = &cm.relays[..];
        assert_eq!(relay.len(), 1);
        let relay = &relay[0];
        assert_eq!(relay.id, "relay-of-bridge-2");
        assert_eq!(relay.mesh_id.as_deref(), Some("0"));
        assert!(relay.create);
        assert_eq!(
            relay.medias.iter().map(|m| m.kind).collect::<Vec<_>>(),
            [MediaType::Audio, MediaType::Video]
        );
        let transport = relay.transport.as_ref().unwrap();
        assert_eq!(transport.ice_controlling, Some(true));
        assert_eq!(transport.use_unique_port, Some(false));
        assert_eq!(
            transport.sctp,
            Some(Sctp {
                port: None,
                role: Some(SctpRole::Client)
            })
        );
        assert_eq!(
            relay.endpoints,
            [Endpoint {
                create: true,
                stats_id: Some("Bob-y2".into()),
                sources: Some(Sources::default()),
                ..Endpoint::new("epX")
            }]
        );
        assert_eq!(
            child_names(&relay.to_element()),
            ["media", "media", "transport", "endpoints"]
        );
    }

    #[test]
    fn relay_response_with_websocket_active() {
        let relay = Relay {
            id: "relay-of-bridge-1".into(),
            transport: Some(Transport {
                ice: Some(IceUdpTransport {
                    ufrag: Some("u".into()),
                    pwd: Some("p".into()),
                    web_sockets: vec![WebSocket {
                        url: None,
                        active: Some(true),
                    }],
                    ..Default::default()
                }),
                sctp: Some(Sctp {
                    port: Some(5000),
                    role: Some(SctpRole::Server),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cm = ConferenceModified {
            relays: vec![relay],
            ..Default::default()
        };
        let back = ConferenceModified::parse(&reparse(&cm.to_element())).unwrap();
        assert_eq!(back, cm);
    }

    #[test]
    fn error_example_reason() {
        let iq = iq(ERROR_IQ);
        let error = iq.children().find(|c| c.name() == "error").unwrap();
        assert_eq!(
            Reason::from_stanza_error(error),
            Some(Reason::ConferenceNotFound)
        );
        let no_reason = el(
            "<error xmlns='jabber:client' type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>",
        );
        assert_eq!(Reason::from_stanza_error(&no_reason), None);
        let unknown = el(
            "<error xmlns='jabber:client'><error xmlns='jitsi:colibri2' reason='whatever'/></error>",
        );
        assert_eq!(
            Reason::from_stanza_error(&unknown),
            Some(Reason::Unspecified)
        );
        assert_eq!(
            Reason::from_wire("GRACEFUL_SHUTDOWN"),
            Reason::GracefulShutdown
        );
    }

    #[test]
    fn error_element_matches_doc_shape() {
        let err = Colibri2Error::ConferenceNotFound {
            meeting_id: "…".into(),
        };
        let e = reparse(&err.to_error_element());
        assert!(e.is("error", meetd_xmpp::ns::CLIENT));
        assert_eq!(e.attr("type"), Some("cancel"));
        assert_eq!(child_names(&e), ["item-not-found", "text", "error"]);
        assert!(e.has_child("item-not-found", meetd_xmpp::ns::STANZAS));
        assert_eq!(
            e.get_child("text", meetd_xmpp::ns::STANZAS).unwrap().text(),
            "Conference not found for ID: …"
        );
        assert_eq!(
            Reason::from_stanza_error(&e),
            Some(Reason::ConferenceNotFound)
        );

        let cases = [
            (
                Colibri2Error::ConferenceAlreadyExists {
                    meeting_id: "m".into(),
                },
                "conflict",
                Some(Reason::ConferenceAlreadyExists),
            ),
            (
                Colibri2Error::GracefulShutdown,
                "service-unavailable",
                Some(Reason::GracefulShutdown),
            ),
            (
                Colibri2Error::UnknownEndpoint { id: "ep9".into() },
                "item-not-found",
                Some(Reason::UnknownEndpoint),
            ),
            (
                Colibri2Error::UnsupportedRequest("mixed endpoint and relay".into()),
                "feature-not-implemented",
                Some(Reason::FeatureNotImplemented),
            ),
            (
                Colibri2Error::FeatureNotImplemented("SCTP disabled".into()),
                "feature-not-implemented",
                None,
            ),
            (
                Colibri2Error::BadRequest("no transport".into()),
                "bad-request",
                None,
            ),
            (
                Colibri2Error::Conflict("duplicate endpoint".into()),
                "conflict",
                None,
            ),
            (
                Colibri2Error::MissingAttribute {
                    element: "conference-modify",
                    attribute: "meeting-id",
                },
                "bad-request",
                None,
            ),
        ];
        for (err, condition, reason) in cases {
            let e = reparse(&err.to_error_element());
            assert!(e.has_child(condition, meetd_xmpp::ns::STANZAS), "{err:?}");
            assert_eq!(Reason::from_stanza_error(&e), reason, "{err:?}");
            let expected_type = if condition == "bad-request" {
                "modify"
            } else {
                "cancel"
            };
            assert_eq!(e.attr("type"), Some(expected_type));
        }

        let unknown = Colibri2Error::UnknownEndpoint { id: "ep9".into() }.to_error_element();
        let echoed = unknown.get_child("endpoint", ns::COLIBRI2).unwrap();
        assert_eq!(echoed.attr("id"), Some("ep9"));
    }

    #[test]
    fn error_iq_answers_request() {
        let mut request = iq(CREATE);
        meetd_xmpp::stanza::set_attr(&mut request, "from", "focus@auth.example/focus");
        let reply = Colibri2Error::GracefulShutdown.to_error_iq(&request);
        assert_eq!(reply.attr("type"), Some("error"));
        assert_eq!(reply.attr("id"), Some("c1"));
        assert_eq!(reply.attr("to"), Some("focus@auth.example/focus"));
        assert_eq!(
            reply.attr("from"),
            Some("brewery@internal.example/bridge-1")
        );
        let error = reply.get_child("error", meetd_xmpp::ns::CLIENT).unwrap();
        assert_eq!(
            Reason::from_stanza_error(error),
            Some(Reason::GracefulShutdown)
        );
    }

    #[test]
    fn fixture_08_ice_udp_transport() {
        let t = IceUdpTransport::parse(&el(FIXTURE_08_TRANSPORT)).unwrap();
        assert_eq!(t.ufrag.as_deref(), Some("fu53"));
        assert_eq!(t.pwd.as_deref(), Some("fakeicepwd50xxxxxxxxxxxx"));
        assert!(t.rtcp_mux);
        assert_eq!(t.sctpmap, None);
        assert_eq!(t.fingerprints.len(), 1);
        assert_eq!(t.fingerprints[0].hash, "sha-256");
        assert_eq!(t.fingerprints[0].setup, Some(DtlsSetup::Actpass));
        assert!(t.fingerprints[0].value.starts_with("38:AB:CD:EF:"));
        assert_eq!(t.fingerprints[0].value.len(), 32 * 3 - 1);
        assert_eq!(
            t.web_sockets[0].url.as_deref(),
            Some(
                "ws://127.0.0.1:18443/colibri-ws/jvb1/c0ffee00/a0a0a0a0?pwd=fakeicepwd50xxxxxxxxxxxx"
            )
        );
        assert_eq!(
            t.candidates,
            [Candidate {
                component: 1,
                foundation: "1".into(),
                generation: 0,
                id: "c1326919".into(),
                ip: "127.0.0.1".into(),
                port: 10000,
                priority: 2130706431,
                protocol: "udp".into(),
                type_: CandidateType::Host,
                network: Some(0),
                rel_addr: None,
                rel_port: None,
                tcptype: None,
            }]
        );
        assert_eq!(
            IceUdpTransport::parse(&reparse(&t.to_element())),
            Ok(t.clone())
        );
        assert_eq!(
            child_names(&t.to_element()),
            ["fingerprint", "web-socket", "rtcp-mux", "candidate"]
        );

        let data = IceUdpTransport::parse(&el(FIXTURE_08_DATA_TRANSPORT)).unwrap();
        assert_eq!(
            data.sctpmap,
            Some(SctpMap {
                number: 5000,
                protocol: "webrtc-datachannel".into(),
                streams: Some(1024)
            })
        );
        assert_eq!(
            IceUdpTransport::parse(&reparse(&data.to_element())),
            Ok(data.clone())
        );
        assert_eq!(child_names(&data.to_element())[0], "sctpmap");
    }

    #[test]
    fn payload_type_parses_inside_jingle_description() {
        // Inside a Jingle <description>, payload-type inherits the rtp namespace.
        let desc = el(
            r#"<description xmlns="urn:xmpp:jingle:apps:rtp:1" media="audio">
          <payload-type id="111" name="opus" clockrate="48000" channels="2">
            <parameter name="minptime" value="10"/>
            <parameter name="useinbandfec" value="1"/>
            <rtcp-fb xmlns="urn:xmpp:jingle:apps:rtp:rtcp-fb:0" type="transport-cc"/>
          </payload-type>
          <source xmlns="urn:xmpp:jingle:apps:rtp:ssma:0" ssrc="411312308" name="jvb-a0">
            <ssrc-info xmlns="http://jitsi.org/jitmeet" owner="jvb"/>
            <parameter name="msid" value="mixedmslabel mixedlabelaudio0"/>
          </source>
        </description>"#,
        );
        let pt =
            PayloadType::parse(desc.get_child("payload-type", ns::JINGLE_RTP).unwrap()).unwrap();
        assert_eq!(
            pt.parameters,
            [
                ("minptime".to_string(), "10".to_string()),
                ("useinbandfec".to_string(), "1".to_string())
            ]
        );
        assert_eq!(pt.rtcp_fbs.len(), 1);
        assert_eq!(PayloadType::parse(&reparse(&pt.to_element())), Ok(pt));

        let src = Source::parse(desc.get_child("source", ns::JINGLE_SSMA).unwrap()).unwrap();
        assert_eq!(src.ssrc, 411312308);
        assert_eq!(src.msid.as_deref(), Some("mixedmslabel mixedlabelaudio0"));
        assert_eq!(Source::parse(&reparse(&src.to_element())), Ok(src));
    }

    #[test]
    fn source_video_type_round_trips() {
        let src = Source::parse(&el(r#"<source xmlns="urn:xmpp:jingle:apps:rtp:ssma:0" name="a0a0a0a0-v0" ssrc="3826462377" videoType="camera">
          <parameter name="msid" value="a0a0a0a0-video-0-1 00000000-0000-4000-8000-000000000094-1"/>
        </source>"#))
        .unwrap();
        assert_eq!(src.video_type.as_deref(), Some("camera"));
        assert_eq!(Source::parse(&reparse(&src.to_element())), Ok(src));
    }

    #[test]
    fn full_endpoint_round_trip() {
        let ep = Endpoint {
            id: "ep7".into(),
            create: true,
            stats_id: Some("Carol".into()),
            muc_role: Some("visitor".into()),
            medias: vec![Media {
                extmap_allow_mixed: true,
                ..Media::new(MediaType::Audio)
            }],
            transport: Some(Transport {
                ice_controlling: Some(true),
                ice_restart: Some(true),
                sctp: Some(Sctp::default()),
                ice: Some(IceUdpTransport {
                    ice_generation: Some(1),
                    fingerprints: vec![Fingerprint {
                        hash: "sha-256".into(),
                        setup: Some(DtlsSetup::Passive),
                        cryptex: Some(true),
                        value: "00:11".into(),
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            sources: Some(Sources {
                media_sources: vec![MediaSource {
                    kind: MediaType::Video,
                    id: "ep7-v0".into(),
                    synthetic: Some(true),
                    sources: vec![Source::new(42)],
                    ssrc_groups: vec![],
                }],
            }),
            force_mute: Some(ForceMute {
                audio: None,
                video: Some(true),
            }),
            capabilities: vec!["source-names".into()],
            initial_last_n: Some(-1),
            ..Default::default()
        };
        let e = ep.to_element();
        assert_eq!(
            child_names(&e),
            [
                "media",
                "transport",
                "sources",
                "force-mute",
                "capability",
                "initial-last-n"
            ]
        );
        assert_eq!(Endpoint::parse(&reparse(&e)), Ok(ep));
    }

    #[test]
    fn booleans_accept_numeric_forms_and_write_words() {
        let cm = ConferenceModify::parse(&el(
            "<conference-modify xmlns='jitsi:colibri2' meeting-id='m' create='1' rtcstats-enabled='0'>
               <endpoint id='e' expire='TRUE'><force-mute audio='0' video='1'/></endpoint>
             </conference-modify>",
        ))
        .unwrap();
        assert!(cm.create);
        assert_eq!(cm.rtcstats_enabled, Some(false));
        assert!(cm.endpoints[0].expire);
        assert_eq!(
            cm.endpoints[0].force_mute,
            Some(ForceMute {
                audio: Some(false),
                video: Some(true)
            })
        );
        let e = cm.to_element();
        assert_eq!(e.attr("create"), Some("true"));
        assert_eq!(e.attr("rtcstats-enabled"), Some("false"));
        assert_eq!(e.attr("expire"), None);

        let bad = ConferenceModify::parse(&el(
            "<conference-modify xmlns='jitsi:colibri2' meeting-id='m' create='yes'/>",
        ));
        assert_eq!(
            bad,
            Err(Colibri2Error::InvalidAttribute {
                element: "conference-modify",
                attribute: "create",
                value: "yes".into()
            })
        );
    }

    #[test]
    fn unknown_children_are_ignored() {
        let cm = ConferenceModify::parse(&el(
            "<conference-modify xmlns='jitsi:colibri2' meeting-id='m'>
               <traceparent xmlns='urn:example:trace' value='00-abc'/>
               <connects><connect url='wss://x' protocol='mediajson' type='transcriber'/></connects>
               <endpoint id='e'><future-thing/><payload-type xmlns='jitsi:colibri2' id='x'/></endpoint>
             </conference-modify>",
        ))
        .unwrap();
        assert_eq!(cm.endpoints, [Endpoint::new("e")]);
    }

    #[test]
    fn missing_meeting_id() {
        let err = ConferenceModify::parse(&el("<conference-modify xmlns='jitsi:colibri2'/>"));
        assert_eq!(
            err,
            Err(Colibri2Error::MissingAttribute {
                element: "conference-modify",
                attribute: "meeting-id"
            })
        );
        let err = err.unwrap_err();
        assert!(err.to_string().contains("meeting-id"));
        assert_eq!(err.condition(), "bad-request");
    }

    #[test]
    fn bad_ssrc() {
        for ssrc in ["abc", "4294967296", "-1", ""] {
            let xml = format!(
                "<conference-modify xmlns='jitsi:colibri2' meeting-id='m'><endpoint id='e'><sources>
                   <media-source type='video' id='e-v0'><source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='{ssrc}'/></media-source>
                 </sources></endpoint></conference-modify>"
            );
            assert_eq!(
                ConferenceModify::parse(&el(&xml)),
                Err(Colibri2Error::InvalidAttribute {
                    element: "source",
                    attribute: "ssrc",
                    value: ssrc.into()
                })
            );
        }
        let group = el(
            "<ssrc-group xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' semantics='FID'><source ssrc='1'/><source ssrc='x'/></ssrc-group>",
        );
        assert!(matches!(
            SsrcGroup::parse(&group),
            Err(Colibri2Error::InvalidAttribute {
                attribute: "ssrc",
                ..
            })
        ));
        let missing = el("<source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' name='n'/>");
        assert_eq!(
            Source::parse(&missing),
            Err(Colibri2Error::MissingAttribute {
                element: "source",
                attribute: "ssrc"
            })
        );
    }

    #[test]
    fn non_numeric_port() {
        let xml = FIXTURE_08_TRANSPORT.replace("port=\"10000\"", "port=\"ten-thousand\"");
        assert_eq!(
            IceUdpTransport::parse(&el(&xml)),
            Err(Colibri2Error::InvalidAttribute {
                element: "candidate",
                attribute: "port",
                value: "ten-thousand".into()
            })
        );
        let xml = FIXTURE_08_TRANSPORT.replace("port=\"10000\"", "port=\"70000\"");
        assert!(IceUdpTransport::parse(&el(&xml)).is_err());
        let sctp = el("<sctp xmlns='jitsi:colibri2' port='x'/>");
        assert!(matches!(
            Sctp::parse(&sctp),
            Err(Colibri2Error::InvalidAttribute {
                attribute: "port",
                ..
            })
        ));
    }

    #[test]
    fn other_invalid_values() {
        let bad_type = el("<media xmlns='jitsi:colibri2' type='application'/>");
        assert!(matches!(
            Media::parse(&bad_type),
            Err(Colibri2Error::InvalidAttribute {
                attribute: "type",
                ..
            })
        ));
        let bad_candidate = FIXTURE_08_TRANSPORT.replace("type=\"host\"", "type=\"bogus\"");
        assert!(IceUdpTransport::parse(&el(&bad_candidate)).is_err());
        let no_ip = FIXTURE_08_TRANSPORT.replace("ip=\"127.0.0.1\"", "");
        assert_eq!(
            IceUdpTransport::parse(&el(&no_ip)),
            Err(Colibri2Error::MissingAttribute {
                element: "candidate",
                attribute: "ip"
            })
        );
        let bad_pt = el(
            "<payload-type xmlns='urn:xmpp:jingle:apps:rtp:1' id='300' name='x' clockrate='1'/>",
        );
        assert!(PayloadType::parse(&bad_pt).is_err());
        let bad_setup = el(
            "<fingerprint xmlns='urn:xmpp:jingle:apps:dtls:0' hash='sha-256' setup='sideways'>00</fingerprint>",
        );
        assert!(Fingerprint::parse(&bad_setup).is_err());
        let bad_last_n =
            el("<endpoint xmlns='jitsi:colibri2' id='e'><initial-last-n value='many'/></endpoint>");
        assert!(Endpoint::parse(&bad_last_n).is_err());
        let no_endpoint_id = el("<endpoint xmlns='jitsi:colibri2'/>");
        assert_eq!(
            Endpoint::parse(&no_endpoint_id),
            Err(Colibri2Error::MissingAttribute {
                element: "endpoint",
                attribute: "id"
            })
        );
    }

    #[test]
    fn wrong_element_is_rejected() {
        let wrong_ns = el("<conference-modify xmlns='jitsi:colibri' meeting-id='m'/>");
        assert!(matches!(
            ConferenceModify::parse(&wrong_ns),
            Err(Colibri2Error::UnexpectedElement {
                expected: "conference-modify",
                ..
            })
        ));
        let modified = el("<conference-modified xmlns='jitsi:colibri2'/>");
        assert!(ConferenceModify::parse(&modified).is_err());
        assert_eq!(
            ConferenceModified::parse(&modified),
            Ok(ConferenceModified::default())
        );
    }
}
