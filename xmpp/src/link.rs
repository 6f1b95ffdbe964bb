//! The boundary between a session and its transport.
//!
//! A [`Link`] turns transport frames into [`LinkEvent`]s and writes the session's
//! [`Out`] items in the transport's own framing (RFC 7395 frames, a TCP stream,
//! BOSH bodies). The session logic never knows which one it talks to.

use minidom::Element;

use crate::server::BoxFuture;
use crate::xml::{StreamHeader, XmlError};

/// What a transport delivers to the session.
#[derive(Debug)]
pub enum LinkEvent {
    /// A stream header (`<open/>`, `<stream:stream>`, or a BOSH creation/restart).
    Open(StreamHeader),
    /// A top-level element: a stanza or a nonza (SASL, SM, STARTTLS).
    Element(Element),
    /// The client closed the stream cleanly.
    Close,
    /// The transport went away (socket error, EOF without close, BOSH expiry).
    Gone,
    /// The client sent XML we refuse.
    Error(XmlError),
}

/// What the session asks the transport to write.
#[derive(Debug, Clone)]
pub enum Out {
    /// The stream header. BOSH carries it in the session-creation response instead.
    Open { id: String, from: String },
    /// `<stream:features>` with these children.
    Features(Vec<Element>),
    /// A stanza or nonza, written as is.
    Element(Element),
    /// TCP only: write `<proceed/>`, then run the TLS handshake and start a new stream.
    StartTls,
    /// The client will send a new stream header (after SASL success): reset the parser.
    Reset,
    /// `<stream:error>`; the transport closes after writing it.
    StreamError {
        condition: &'static str,
        text: Option<String>,
    },
    /// Close the stream cleanly.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    WebSocket,
    Bosh,
    Tcp,
}

pub trait Link: Send {
    /// Next event from the client. Must be cancel-safe: the session selects over it.
    fn recv(&mut self) -> BoxFuture<'_, LinkEvent>;
    /// Write items in order. An error means the transport is gone.
    fn send<'a>(&'a mut self, items: &'a [Out]) -> BoxFuture<'a, Result<(), ()>>;
    fn kind(&self) -> TransportKind;
    /// Whether the transport is encrypted (or trusted as such behind a proxy).
    fn secure(&self) -> bool;
}

/// `<stream:error>` payload shared by every framing.
pub fn stream_error_xml(condition: &str, text: Option<&str>) -> String {
    let mut s = String::with_capacity(160);
    s.push_str("<stream:error xmlns:stream='http://etherx.jabber.org/streams'><");
    s.push_str(condition);
    s.push_str(" xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>");
    if let Some(t) = text {
        s.push_str("<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>");
        s.push_str(&escape(t));
        s.push_str("</text>");
    }
    s.push_str("</stream:error>");
    s
}

/// `<stream:features>` with its children serialised.
pub fn features_xml(children: &[Element]) -> String {
    let mut s = String::from("<stream:features xmlns:stream='http://etherx.jabber.org/streams'>");
    for c in children {
        s.push_str(&crate::xml::to_string(c));
    }
    s.push_str("</stream:features>");
    s
}

/// Escape text or an attribute value.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '\'' => o.push_str("&apos;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}
