//! A conference the focus runs with two participants in session, driven through its public
//! sans-IO interface the way the room actor does (jingle/src/focus.rs): stanzas in, outputs
//! out, Colibri2 requests answered by a scripted bridge.

use std::time::{Duration, Instant};

use meetd_colibri::colibri2::{Colibri2Error, ConferenceModified, ConferenceModify};
use meetd_jingle::conference::{Conference, FocusConfig, Input, Output};
use meetd_jingle::offer::NS_FOCUS;
use meetd_jingle::sources::NS_JINGLE;
use meetd_xmpp::Element;
use meetd_xmpp::stanza;
use meetd_xmpp::xml::{self, XmlLimits};

const ROOM: &str = "room@muc.meet.jitsi";
const FOCUS: &str = "focus@auth.meet.jitsi/focus";
const NICKS: [&str; 2] = ["aaaa", "bbbb"];

pub struct Focus {
    c: Conference,
    now: Instant,
    sent: Vec<Element>,
    colibri: Vec<(u64, ConferenceModify)>,
    bridge_fails: bool,
    /// The participants' current Jingle session ids (a restart makes a new one).
    sids: [String; 2],
    /// The `<bridge-session id>` of the offers.
    bridge_session: String,
}

fn parse(s: &str) -> Option<Element> {
    xml::parse_document(s.as_bytes(), &XmlLimits::default()).ok()
}

impl Focus {
    /// The room joined, both participants in it with the stock client's features, and the
    /// bridge allocated: each has been sent a session-initiate. `None` if that did not work
    /// out (a change in the focus the harness must follow).
    pub fn in_session(bridge_fails: bool) -> Option<Focus> {
        let now = Instant::now();
        let mut f = Focus {
            c: Conference::new(ROOM, FocusConfig::new(FOCUS), now, 1),
            now,
            sent: Vec::new(),
            colibri: Vec::new(),
            bridge_fails: false,
            sids: Default::default(),
            bridge_session: String::new(),
        };
        f.drain();
        f.stanza(&format!("<presence xmlns='jabber:client' from='{ROOM}/focus' to='{FOCUS}'><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='owner' role='moderator' jid='{FOCUS}'/><status code='110'/></x></presence>"))?;
        let id = f.take_iq_id(ROOM)?;
        f.stanza(&format!("<iq xmlns='jabber:client' type='result' id='{id}' from='{ROOM}' to='{FOCUS}'><query xmlns='http://jabber.org/protocol/disco#info'><x xmlns='jabber:x:data' type='result'><field var='muc#roominfo_meetingId'><value>meeting-1</value></field></x></query></iq>"))?;
        for (n, nick) in NICKS.iter().enumerate() {
            f.stanza(&format!("<presence xmlns='jabber:client' from='{ROOM}/{nick}' to='{FOCUS}'><stats-id>s{n}</stats-id><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='participant' jid='u{n}@meet.jitsi/r{n}'/></x></presence>"))?;
            let id = f.take_iq_id(&format!("{ROOM}/{nick}"))?;
            let features: String = meetd_jingle::offer::WEB_CLIENT_FEATURES
                .iter()
                .map(|v| format!("<feature var='{v}'/>"))
                .collect();
            f.stanza(&format!("<iq xmlns='jabber:client' type='result' id='{id}' from='{ROOM}/{nick}' to='{FOCUS}'><query xmlns='http://jabber.org/protocol/disco#info'>{features}</query></iq>"))?;
        }
        f.bridge();
        if f.sids.iter().any(String::is_empty) || f.bridge_session.is_empty() {
            return None;
        }
        f.sent.clear();
        f.bridge_fails = bridge_fails;
        Some(f)
    }

    /// Both participants accept with camera (simulcast + RTX) and microphone.
    pub fn accept_both(&mut self) {
        for (i, nick) in NICKS.iter().enumerate() {
            let sid = self.sids[i].clone();
            let b = 100 * (i as u32 + 1);
            let (a, v1, v2, r1, r2) = (b, b + 1, b + 2, b + 3, b + 4);
            let _ = self.stanza(&format!(
                "<iq xmlns='jabber:client' type='set' id='acc{i}' from='{ROOM}/{nick}' to='{FOCUS}'><jingle xmlns='urn:xmpp:jingle:1' action='session-accept' sid='{sid}'>\
                 <content name='audio'><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'>\
                 <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='{a}' name='{nick}-a0'><parameter name='msid' value='{nick}-audio x'/></source></description>\
                 <transport xmlns='urn:xmpp:jingle:transports:ice-udp:1' ufrag='cu' pwd='cpwdcpwdcpwdcpwdcpwdcpwd'><fingerprint xmlns='urn:xmpp:jingle:apps:dtls:0' hash='sha-256' setup='active'>CC:DD</fingerprint></transport></content>\
                 <content name='video'><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='video'>\
                 <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='{v1}' name='{nick}-v0' videoType='camera'><parameter name='msid' value='{nick}-video y'/></source>\
                 <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='{v2}' name='{nick}-v0' videoType='camera'><parameter name='msid' value='{nick}-video y'/></source>\
                 <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='{r1}' name='{nick}-v0' videoType='camera'><parameter name='msid' value='{nick}-video y'/></source>\
                 <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='{r2}' name='{nick}-v0' videoType='camera'><parameter name='msid' value='{nick}-video y'/></source>\
                 <ssrc-group xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' semantics='SIM'><source ssrc='{v1}'/><source ssrc='{v2}'/></ssrc-group>\
                 <ssrc-group xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' semantics='FID'><source ssrc='{v1}'/><source ssrc='{r1}'/></ssrc-group>\
                 <ssrc-group xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' semantics='FID'><source ssrc='{v2}'/><source ssrc='{r2}'/></ssrc-group>\
                 </description></content></jingle></iq>"
            ));
            self.bridge();
        }
        self.sent.clear();
    }

    /// One element from participant `nick`: a `<jingle/>` (sent in an IQ), an `<iq/>`, a
    /// `<presence/>` or a `<message/>` (a component's message keeps its `from`), addressed
    /// as the MUC delivers it; a `<conference/>` request's properties. Unless `keep_sid`, a
    /// `<jingle/>` gets the participant's session id and bridge-session id.
    pub fn participant_sends(&mut self, nick: &str, el: Element, keep_sid: bool) {
        if el.is("conference", NS_FOCUS) {
            self.c.request_properties(&el);
            return;
        }
        let mut el = if el.is("jingle", NS_JINGLE) {
            let mut iq = stanza::el("iq", "jabber:client", &[("type", "set"), ("id", "fz")]);
            iq.append_child(el);
            iq
        } else {
            el
        };
        if !matches!(el.name(), "iq" | "presence" | "message") {
            return;
        }
        if el.name() != "message" || el.attr("from").is_none() {
            stanza::set_attr(&mut el, "from", &format!("{ROOM}/{nick}"));
        }
        stanza::set_attr(&mut el, "to", FOCUS);
        if !keep_sid {
            let i = NICKS.iter().position(|n| *n == nick).unwrap_or(0);
            if let Some(j) = el.get_child_mut("jingle", NS_JINGLE) {
                stanza::set_attr(j, "sid", &self.sids[i]);
                if let Some(bs) = j.get_child_mut("bridge-session", NS_FOCUS) {
                    stanza::set_attr(bs, "id", &self.bridge_session);
                }
            }
        }
        self.input(Input::Stanza(el));
        self.bridge();
    }

    /// Every deadline the conference asks for, in order (a few rounds).
    pub fn timeouts(&mut self) {
        for _ in 0..4 {
            let Some(t) = self.c.poll_timeout() else {
                break;
            };
            self.now = t.max(self.now) + Duration::from_millis(1);
            self.input(Input::Timeout);
            self.bridge();
        }
    }

    fn input(&mut self, i: Input) {
        self.c.handle(i, self.now);
        self.drain();
    }

    fn stanza(&mut self, s: &str) -> Option<()> {
        let el = parse(s)?;
        self.input(Input::Stanza(el));
        Some(())
    }

    fn drain(&mut self) {
        let mut jibri = Vec::new();
        for o in self.c.take_output() {
            match o {
                Output::Send(e) => {
                    // Whatever the focus sends (sources, names and JSON taken from the
                    // participants) must be XML the receiver can parse.
                    crate::assert_reparses(&e);
                    self.note_offer(&e);
                    self.sent.push(e);
                }
                Output::Colibri { req, modify } => {
                    let again =
                        ConferenceModify::parse(&crate::assert_reparses(&modify.to_element()));
                    assert_eq!(
                        again.as_ref(),
                        Ok(&modify),
                        "focus's conference-modify round trip"
                    );
                    self.colibri.push((req, modify));
                }
                Output::JibriStart(req) => {
                    // What the Jibri gets must parse; it takes the session at once.
                    crate::assert_reparses(&req.payload());
                    jibri.push(req.session_id);
                }
                Output::JigasiDial(iq) => {
                    crate::assert_reparses(&iq);
                }
                Output::JibriStop { session_id, .. } => {
                    crate::assert_reparses(&meetd_jingle::jibri::stop_payload(&session_id));
                }
                Output::Ready | Output::Failed(_) | Output::Stopped => {}
            }
        }
        for session_id in jibri {
            self.input(Input::JibriStarted {
                session_id,
                result: Ok("jibribrewery@internal-muc.meet.jitsi/jibri-1".into()),
            });
        }
        let _ = (
            self.c.is_ready(),
            self.c.is_stopped(),
            self.c.participant_count(),
        );
    }

    /// Remember the session and bridge-session ids of a session-initiate.
    fn note_offer(&mut self, e: &Element) {
        let Some(j) = e
            .get_child("jingle", NS_JINGLE)
            .filter(|j| j.attr("action") == Some("session-initiate"))
        else {
            return;
        };
        let to = e.attr("to").unwrap_or("");
        let Some(i) = NICKS.iter().position(|n| to == format!("{ROOM}/{n}")) else {
            return;
        };
        if let Some(sid) = j.attr("sid") {
            self.sids[i] = sid.to_string();
        }
        if let Some(id) = j
            .get_child("bridge-session", NS_FOCUS)
            .and_then(|b| b.attr("id"))
        {
            self.bridge_session = id.to_string();
        }
    }

    /// The id of the last IQ sent to `to` (a disco#info), removed from the sent list.
    fn take_iq_id(&mut self, to: &str) -> Option<String> {
        let i = self
            .sent
            .iter()
            .rposition(|e| e.name() == "iq" && e.attr("to") == Some(to))?;
        let iq = self.sent.remove(i);
        iq.attr("id").map(str::to_string)
    }

    /// Answer every pending Colibri2 request as a bridge would (or fail them all).
    fn bridge(&mut self) {
        for _ in 0..8 {
            let reqs = std::mem::take(&mut self.colibri);
            if reqs.is_empty() {
                break;
            }
            for (req, m) in reqs {
                let result = if self.bridge_fails {
                    Err(Colibri2Error::BadRequest("fuzzed bridge failure".into()))
                } else {
                    Ok(bridge_answer(&m))
                };
                self.input(Input::Colibri { req, result });
            }
        }
    }
}

/// A bridge's `<conference-modified/>` for `m`: a transport for each created endpoint and,
/// when the conference is created, the feedback sources.
fn bridge_answer(m: &ConferenceModify) -> ConferenceModified {
    let mut xml = String::from("<conference-modified xmlns='jitsi:colibri2'>");
    for ep in m.endpoints.iter().filter(|e| e.create) {
        let id = xml_escape(&ep.id);
        xml.push_str(&format!(
            "<endpoint id='{id}'><transport><transport xmlns='urn:xmpp:jingle:transports:ice-udp:1' ufrag='ufrg' pwd='pwdpwdpwdpwdpwdpwdpwdpwd'>\
             <fingerprint xmlns='urn:xmpp:jingle:apps:dtls:0' hash='sha-256' setup='actpass'>AA:BB</fingerprint>\
             <web-socket xmlns='http://jitsi.org/protocol/colibri' url='ws://127.0.0.1/colibri-ws/jvb1/c/{id}?pwd=x'/><rtcp-mux/>\
             <candidate component='1' foundation='1' generation='0' id='c1' network='0' priority='2130706431' protocol='udp' type='host' ip='127.0.0.1' port='10000'/>\
             </transport></transport></endpoint>"
        ));
    }
    if m.create {
        xml.push_str("<sources><media-source type='audio' id='jvb-a0'><source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='411312308' name='jvb-a0'/></media-source>\
                      <media-source type='video' id='jvb-v0'><source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='3929652146' name='jvb-v0'/></media-source></sources>");
    }
    xml.push_str("</conference-modified>");
    parse(&xml)
        .and_then(|e| ConferenceModified::parse(&e).ok())
        .unwrap_or_default()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('\'', "&apos;")
}
