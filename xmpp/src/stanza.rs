//! Small helpers for building and answering stanzas.

use minidom::Element;

use crate::ns;

/// `iq`, `message` or `presence` in the client namespace.
pub fn is_stanza(el: &Element) -> bool {
    matches!(el.name(), "iq" | "message" | "presence")
        && (el.ns() == ns::CLIENT || el.ns() == ns::COMPONENT)
}

/// An RFC 6120 §8.3 stanza error condition with its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StanzaError {
    pub kind: &'static str,
    pub condition: &'static str,
}

impl StanzaError {
    pub const FORBIDDEN: StanzaError = StanzaError {
        kind: "auth",
        condition: "forbidden",
    };
    pub const SERVICE_UNAVAILABLE: StanzaError = StanzaError {
        kind: "cancel",
        condition: "service-unavailable",
    };
    pub const ITEM_NOT_FOUND: StanzaError = StanzaError {
        kind: "cancel",
        condition: "item-not-found",
    };
    pub const FEATURE_NOT_IMPLEMENTED: StanzaError = StanzaError {
        kind: "cancel",
        condition: "feature-not-implemented",
    };
    pub const BAD_REQUEST: StanzaError = StanzaError {
        kind: "modify",
        condition: "bad-request",
    };
    pub const JID_MALFORMED: StanzaError = StanzaError {
        kind: "modify",
        condition: "jid-malformed",
    };
    pub const NOT_ALLOWED: StanzaError = StanzaError {
        kind: "cancel",
        condition: "not-allowed",
    };
    pub const REMOTE_SERVER_NOT_FOUND: StanzaError = StanzaError {
        kind: "cancel",
        condition: "remote-server-not-found",
    };
    pub const RESOURCE_CONSTRAINT: StanzaError = StanzaError {
        kind: "wait",
        condition: "resource-constraint",
    };
    pub const POLICY_VIOLATION: StanzaError = StanzaError {
        kind: "modify",
        condition: "policy-violation",
    };
    pub const CONFLICT: StanzaError = StanzaError {
        kind: "cancel",
        condition: "conflict",
    };
}

/// The error reply to `el`, or None when `el` must not be answered (errors, iq results).
pub fn error_reply(el: &Element, err: StanzaError, text: Option<&str>) -> Option<Element> {
    let ty = el.attr("type").unwrap_or("");
    if ty == "error" || (el.name() == "iq" && ty == "result") {
        return None;
    }
    let mut b = Element::builder(el.name(), ns::CLIENT).attr(rxml_name("type"), "error");
    if let Some(id) = el.attr("id") {
        b = b.attr(rxml_name("id"), id);
    }
    if let Some(from) = el.attr("to") {
        b = b.attr(rxml_name("from"), from);
    }
    if let Some(to) = el.attr("from") {
        b = b.attr(rxml_name("to"), to);
    }
    let mut e = Element::builder("error", ns::CLIENT)
        .attr(rxml_name("type"), err.kind)
        .append(Element::bare(err.condition, ns::STANZAS));
    if let Some(t) = text {
        e = e.append(
            Element::builder("text", ns::STANZAS)
                .append(t.to_string())
                .build(),
        );
    }
    Some(b.append(e.build()).build())
}

/// An empty iq result for `iq`, optionally with one payload.
pub fn iq_result(iq: &Element, payload: Option<Element>) -> Element {
    let mut b = Element::builder("iq", ns::CLIENT).attr(rxml_name("type"), "result");
    if let Some(id) = iq.attr("id") {
        b = b.attr(rxml_name("id"), id);
    }
    if let Some(from) = iq.attr("to") {
        b = b.attr(rxml_name("from"), from);
    }
    if let Some(to) = iq.attr("from") {
        b = b.attr(rxml_name("to"), to);
    }
    if let Some(p) = payload {
        b = b.append(p);
    }
    b.build()
}

/// The first element child of an iq (its payload).
pub fn payload(iq: &Element) -> Option<&Element> {
    iq.children().next()
}

/// Attribute names are compile-time constants here; `NcName` conversion cannot fail.
pub fn rxml_name(s: &'static str) -> rxml::NcName {
    rxml::NcName::try_from(s).unwrap_or_else(|_| unreachable_name())
}

#[cold]
fn unreachable_name() -> rxml::NcName {
    // Only reachable if a constant above were not an XML name.
    rxml::NcName::try_from("x").unwrap_or_else(|_| unreachable!())
}

/// Set (or replace) an attribute on an element.
pub fn set_attr(el: &mut Element, name: &'static str, value: &str) {
    el.set_attr(rxml::Namespace::NONE, rxml_name(name), value.to_string());
}

/// The status codes (XEP-0045 `<status code/>`) of a MUC presence's `<x>` in `muc#user`.
pub fn muc_statuses(p: &Element) -> Vec<&str> {
    p.get_child("x", "http://jabber.org/protocol/muc#user")
        .map(|x| {
            x.children()
                .filter(|c| c.name() == "status")
                .filter_map(|c| c.attr("code"))
                .collect()
        })
        .unwrap_or_default()
}

/// Build `<name xmlns=ns attr=value.../>`.
pub fn el(name: &str, ns: &str, attrs: &[(&'static str, &str)]) -> Element {
    let mut b = Element::builder(name, ns);
    for (k, v) in attrs {
        b = b.attr(rxml_name(k), v.to_string());
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_swaps_addresses() {
        let iq = crate::xml::parse_document(
            b"<iq xmlns='jabber:client' type='get' id='a1' from='u@d/r' to='x@d/y'><query xmlns='q'/></iq>",
            &Default::default(),
        )
        .unwrap();
        let e = error_reply(&iq, StanzaError::SERVICE_UNAVAILABLE, None).unwrap();
        assert_eq!(e.attr("type"), Some("error"));
        assert_eq!(e.attr("to"), Some("u@d/r"));
        assert_eq!(e.attr("from"), Some("x@d/y"));
        assert_eq!(e.attr("id"), Some("a1"));
        let err = e.get_child("error", ns::CLIENT).unwrap();
        assert!(err.has_child("service-unavailable", ns::STANZAS));
        let result = iq_result(&iq, None);
        assert!(error_reply(&result, StanzaError::SERVICE_UNAVAILABLE, None).is_none());
    }
}
