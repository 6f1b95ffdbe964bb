//! XEP-0004 data forms, as much as the MUC needs.

use std::collections::HashMap;

use minidom::Element;

use super::room::Room;
use crate::stanza::rxml_name;

pub const NS_DATA: &str = "jabber:x:data";

fn field(var: &str, ty: Option<&str>, label: Option<&str>, values: &[&str]) -> Element {
    let mut f = Element::builder("field", NS_DATA).attr(rxml_name("var"), var);
    if let Some(t) = ty {
        f = f.attr(rxml_name("type"), t);
    }
    if let Some(l) = label {
        f = f.attr(rxml_name("label"), l);
    }
    for v in values {
        f = f.append(
            Element::builder("value", NS_DATA)
                .append(v.to_string())
                .build(),
        );
    }
    f.build()
}

/// A `type='result'` form with a FORM_TYPE.
pub fn result(form_type: &str, fields: &[(&str, String)]) -> Element {
    let mut x = Element::builder("x", NS_DATA)
        .attr(rxml_name("type"), "result")
        .append(field("FORM_TYPE", Some("hidden"), None, &[form_type]));
    for (var, value) in fields {
        x = x.append(field(var, None, None, &[value.as_str()]));
    }
    x.build()
}

/// The muc#owner configuration form with the room's current values.
pub fn config_form(room: &Room) -> Element {
    let c = &room.config;
    let b = |v: bool| if v { "1" } else { "0" };
    let max = c.max_occupants.to_string();
    let secret = c.password.clone().unwrap_or_default();
    Element::builder("x", NS_DATA)
        .attr(rxml_name("type"), "form")
        .append(field(
            "FORM_TYPE",
            Some("hidden"),
            None,
            &["http://jabber.org/protocol/muc#roomconfig"],
        ))
        .append(field(
            "muc#roomconfig_roomname",
            Some("text-single"),
            Some("Title"),
            &[&c.name],
        ))
        .append(field(
            "muc#roomconfig_persistentroom",
            Some("boolean"),
            Some("Persistent"),
            &["0"],
        ))
        .append(field(
            "muc#roomconfig_publicroom",
            Some("boolean"),
            Some("Public"),
            &["1"],
        ))
        .append(field(
            "muc#roomconfig_changesubject",
            Some("boolean"),
            Some("Occupants may change the subject"),
            &[b(c.change_subject)],
        ))
        .append(field(
            "muc#roomconfig_passwordprotectedroom",
            Some("boolean"),
            Some("Password protected"),
            &[b(c.password.is_some())],
        ))
        .append(field(
            "muc#roomconfig_roomsecret",
            Some("text-private"),
            Some("Password"),
            &[&secret],
        ))
        .append(field(
            "muc#roomconfig_membersonly",
            Some("boolean"),
            Some("Members only"),
            &[b(c.members_only)],
        ))
        .append(field(
            "muc#roomconfig_maxusers",
            Some("text-single"),
            Some("Maximum occupants (0: no limit)"),
            &[&max],
        ))
        .append(field(
            "muc#roomconfig_whois",
            Some("list-single"),
            Some("Real JIDs visible to"),
            &[if c.whois_anyone {
                "anyone"
            } else {
                "moderators"
            }],
        ))
        .append(field(
            "muc#roominfo_meetingId",
            Some("text-single"),
            Some("Meeting id"),
            &[&room.meeting_id],
        ))
        .build()
}

/// Field values of a submitted form (first value of each field).
pub fn values(x: &Element) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for f in x.children().filter(|c| c.is("field", NS_DATA)) {
        if let Some(var) = f.attr("var") {
            let v = f
                .children()
                .find(|c| c.is("value", NS_DATA))
                .map(|v| v.text())
                .unwrap_or_default();
            m.insert(var.to_string(), v);
        }
    }
    m
}
