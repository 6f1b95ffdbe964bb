//! XML framing for XMPP: whole documents (WebSocket frames, BOSH bodies) and the
//! endless stream of a TCP connection, both with size and depth limits.
//!
//! rxml is a restricted XML 1.0 parser: DTDs, entity declarations and processing
//! instructions are errors, never expanded. On top of it we count bytes per stanza
//! and nesting depth, so a peer cannot make us buffer more than the configured limit.

use minidom::Element;
use minidom::tree_builder::TreeBuilder;
use rxml::{Parse, RawEvent, RawParser, error::EndOrError};

/// Limits applied to every parsed document or stanza.
#[derive(Debug, Clone, Copy)]
pub struct XmlLimits {
    /// Largest stanza (or WebSocket frame / BOSH body) in bytes.
    pub max_stanza_bytes: usize,
    /// Deepest element nesting inside one stanza (the stanza itself is depth 1).
    pub max_depth: usize,
}

impl Default for XmlLimits {
    fn default() -> Self {
        XmlLimits {
            max_stanza_bytes: 256 * 1024,
            max_depth: 32,
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum XmlError {
    #[error("not well-formed: {0}")]
    NotWellFormed(String),
    #[error("stanza larger than {0} bytes")]
    TooLarge(usize),
    #[error("XML nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("restricted XML: {0}")]
    Restricted(String),
    #[error("document incomplete")]
    Incomplete,
}

impl XmlError {
    /// The RFC 6120 stream error condition this failure maps to.
    pub fn stream_condition(&self) -> &'static str {
        match self {
            XmlError::TooLarge(_) => "policy-violation",
            XmlError::TooDeep(_) => "policy-violation",
            XmlError::Restricted(_) => "restricted-xml",
            XmlError::NotWellFormed(_) | XmlError::Incomplete => "not-well-formed",
        }
    }
}

fn map_err(e: rxml::Error) -> XmlError {
    let text = e.to_string();
    // rxml reports DOCTYPE, PIs and similar as restricted-XML violations.
    if matches!(e, rxml::Error::RestrictedXml(_)) {
        XmlError::Restricted(text)
    } else {
        XmlError::NotWellFormed(text)
    }
}

fn parser_for(limits: &XmlLimits) -> RawParser {
    let mut opts = rxml::Options::default();
    // A single token (attribute value, text chunk) can never exceed the stanza limit.
    opts.max_token_length = limits.max_stanza_bytes.min(opts.max_token_length.max(1));
    <RawParser as rxml::WithOptions>::with_options(opts)
}

/// Parse one complete XML document (a WebSocket frame, a BOSH `<body/>`).
pub fn parse_document(data: &[u8], limits: &XmlLimits) -> Result<Element, XmlError> {
    if data.len() > limits.max_stanza_bytes {
        return Err(XmlError::TooLarge(limits.max_stanza_bytes));
    }
    let mut parser = parser_for(limits);
    let mut builder = TreeBuilder::new();
    let mut buf = data;
    loop {
        match parser.parse(&mut buf, true) {
            Ok(Some(ev)) => {
                if let RawEvent::ElementHeadOpen(..) = ev
                    && builder.depth() >= limits.max_depth
                {
                    return Err(XmlError::TooDeep(limits.max_depth));
                }
                builder
                    .process_event(ev)
                    .map_err(|e| XmlError::NotWellFormed(e.to_string()))?;
            }
            Ok(None) => break,
            Err(EndOrError::NeedMoreData) => return Err(XmlError::Incomplete),
            Err(EndOrError::Error(e)) => return Err(map_err(e)),
        }
    }
    let mut root = builder.root.take().ok_or(XmlError::Incomplete)?;
    forget_prefixes(&mut root);
    Ok(root)
}

/// Drops the prefix declarations a sender wrote: names and namespaces are resolved already,
/// and the writer declares what it needs itself. Kept, a sender's declarations (a child
/// redeclaring an ancestor's prefix, say) could make the writer fail on the way out.
fn forget_prefixes(el: &mut Element) {
    el.prefixes = Default::default();
    for c in el.children_mut() {
        forget_prefixes(c);
    }
}

/// What a TCP XML stream yields.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// `<stream:stream ...>` with its attributes (namespace-less ones, and `xml:lang`).
    Open(StreamHeader),
    /// A complete top-level child of the stream.
    Stanza(Element),
    /// `</stream:stream>`
    Close,
}

/// Attributes of a stream header that matter to a server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamHeader {
    pub to: Option<String>,
    pub from: Option<String>,
    pub version: Option<String>,
    pub lang: Option<String>,
    /// The default namespace (`jabber:client`, `jabber:component:accept`).
    pub default_ns: Option<String>,
}

/// Incremental parser for a TCP XML stream. Keeps at most one stanza in memory.
pub struct StreamParser {
    parser: RawParser,
    builder: TreeBuilder,
    limits: XmlLimits,
    /// Bytes consumed since the current stanza started.
    stanza_bytes: usize,
    opened: bool,
    header: StreamHeader,
    closed: bool,
}

impl StreamParser {
    pub fn new(limits: XmlLimits) -> Self {
        StreamParser {
            parser: parser_for(&limits),
            builder: TreeBuilder::new(),
            limits,
            stanza_bytes: 0,
            opened: false,
            header: StreamHeader::default(),
            closed: false,
        }
    }

    /// After STARTTLS or SASL success both sides start a new stream on the same socket.
    pub fn reset(&mut self) {
        *self = StreamParser::new(self.limits);
    }

    /// Feed bytes; complete events are appended to `out`. On error the stream is dead.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), XmlError> {
        if self.closed {
            return Ok(());
        }
        loop {
            let before = data.len();
            let res = self.parser.parse(&mut data, false);
            let used = before - data.len();
            if self.opened && self.builder.depth() >= 2 {
                self.stanza_bytes += used;
                if self.stanza_bytes > self.limits.max_stanza_bytes {
                    return Err(XmlError::TooLarge(self.limits.max_stanza_bytes));
                }
            }
            match res {
                Ok(Some(ev)) => self.event(ev, out)?,
                Ok(None) => {
                    self.closed = true;
                    return Ok(());
                }
                Err(EndOrError::NeedMoreData) => {
                    // A stanza still being received counts its buffered bytes too.
                    return Ok(());
                }
                Err(EndOrError::Error(e)) => return Err(map_err(e)),
            }
            if self.closed {
                return Ok(());
            }
        }
    }

    fn event(&mut self, ev: RawEvent, out: &mut Vec<StreamEvent>) -> Result<(), XmlError> {
        let is_open = matches!(ev, RawEvent::ElementHeadOpen(..));
        let is_head_close = matches!(ev, RawEvent::ElementHeadClose(..));
        let is_foot = matches!(ev, RawEvent::ElementFoot(..));
        if is_open {
            // depth counts the stream element as 1.
            if self.builder.depth() > self.limits.max_depth {
                return Err(XmlError::TooDeep(self.limits.max_depth));
            }
            if self.builder.depth() == 1 {
                self.stanza_bytes = 0;
            }
        }
        if !self.opened
            && let RawEvent::Attribute(_, (prefix, name), value) = &ev
        {
            match (prefix.as_ref().map(|p| p.as_str()), name.as_str()) {
                (None, "to") => self.header.to = Some(value.to_string()),
                (None, "from") => self.header.from = Some(value.to_string()),
                (None, "version") => self.header.version = Some(value.to_string()),
                (None, "xmlns") => self.header.default_ns = Some(value.to_string()),
                (Some("xml"), "lang") => self.header.lang = Some(value.to_string()),
                _ => {}
            }
        }
        if matches!(ev, RawEvent::Text(..)) && self.builder.depth() <= 1 {
            // Whitespace keep-alives between stanzas: never accumulate them.
            return Ok(());
        }
        if is_foot && self.builder.depth() == 1 {
            self.closed = true;
            out.push(StreamEvent::Close);
            return Ok(());
        }
        self.builder
            .process_event(ev)
            .map_err(|e| XmlError::NotWellFormed(e.to_string()))?;
        if is_head_close && !self.opened && self.builder.depth() == 1 {
            self.opened = true;
            out.push(StreamEvent::Open(std::mem::take(&mut self.header)));
        }
        if is_foot
            && self.builder.depth() == 1
            && let Some(mut stanza) = self.builder.unshift_child()
        {
            self.stanza_bytes = 0;
            forget_prefixes(&mut stanza);
            out.push(StreamEvent::Stanza(stanza));
        }
        Ok(())
    }

    /// Frees parser scratch buffers while the stream is idle.
    pub fn shrink(&mut self) {
        self.parser.release_temporaries();
    }
}

/// Serialise an element without an XML declaration.
pub fn to_string(el: &Element) -> String {
    let mut v = Vec::with_capacity(256);
    // Writing to a Vec cannot fail for I/O reasons; minidom only fails on
    // invalid names, which parsed or built elements never have.
    if el.write_to(&mut v).is_err() {
        return String::new();
    }
    String::from_utf8(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_prefixes_do_not_reach_the_writer() {
        // A child redeclaring its parent's prefix made the writer panic (found by fuzzing).
        let el = parse_document(
            b"<iq xmlns='jabber:client' xmlns:p='urn:a' type='get'><q xmlns='urn:b' xmlns:p='urn:a' p:x='1'><p:y/></q></iq>",
            &XmlLimits::default(),
        )
        .unwrap();
        let out = to_string(&el);
        let again = parse_document(out.as_bytes(), &XmlLimits::default()).unwrap();
        let q = again.get_child("q", "urn:b").unwrap();
        assert!(q.get_child("y", "urn:a").is_some());
        assert_eq!(q.attr_ns("urn:a", "x"), Some("1"));
    }

    #[test]
    fn document_parses() {
        let el = parse_document(
            b"<message xmlns='jabber:client' to='a@b'><body>hi</body></message>",
            &XmlLimits::default(),
        )
        .unwrap();
        assert_eq!(el.name(), "message");
        assert_eq!(el.attr("to"), Some("a@b"));
    }

    #[test]
    fn doctype_rejected() {
        let doc = b"<!DOCTYPE x [<!ENTITY a 'aaaa'>]><x xmlns='y'>&a;</x>";
        let e = parse_document(doc, &XmlLimits::default()).unwrap_err();
        assert!(
            matches!(e, XmlError::Restricted(_) | XmlError::NotWellFormed(_)),
            "{e:?}"
        );
    }

    #[test]
    fn depth_limited() {
        let mut s = String::from("<a xmlns='x'>");
        for _ in 0..40 {
            s.push_str("<b>");
        }
        for _ in 0..40 {
            s.push_str("</b>");
        }
        s.push_str("</a>");
        let e = parse_document(s.as_bytes(), &XmlLimits::default()).unwrap_err();
        assert_eq!(e, XmlError::TooDeep(32));
    }

    #[test]
    fn stream_yields_stanzas_across_chunks() {
        let mut p = StreamParser::new(XmlLimits::default());
        let data = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='meet.jitsi' version='1.0'> <iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq> <message/></stream:stream>";
        let mut out = vec![];
        for chunk in data.chunks(7) {
            p.feed(chunk, &mut out).unwrap();
        }
        assert!(matches!(&out[0], StreamEvent::Open(h) if h.to.as_deref() == Some("meet.jitsi")));
        match &out[1] {
            StreamEvent::Stanza(el) => {
                assert_eq!(el.name(), "iq");
                assert_eq!(el.ns(), "jabber:client");
                assert!(el.has_child("ping", "urn:xmpp:ping"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&out[2], StreamEvent::Stanza(el) if el.name() == "message"));
        assert_eq!(out[3], StreamEvent::Close);
    }

    #[test]
    fn stream_stanza_size_limited() {
        let limits = XmlLimits {
            max_stanza_bytes: 100,
            max_depth: 8,
        };
        let mut p = StreamParser::new(limits);
        let mut out = vec![];
        p.feed(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'><message><body>", &mut out).unwrap();
        let big = vec![b'a'; 200];
        let e = p.feed(&big, &mut out).unwrap_err();
        assert_eq!(e, XmlError::TooLarge(100));
    }
}
