//! A phone caller in the room (docs/sip.md §3), as the XMPP side sees it: meetd's gateway
//! joins the MUC for the caller as Jigasi would — the conference request to the focus, the
//! presence with the masked number as its name and Jigasi's features (the app shows a phone
//! icon and offers no peer-to-peer call), answers the focus's disco#info and Jingle, and
//! follows the focus's mute requests. Sans-IO: stanzas in, stanzas and events out.
//!
//! The media session differs from Jigasi's in one respect: the gateway runs in the same
//! process as the bridge, so it does not do ICE and DTLS with it. Its session-accept carries
//! its audio source and no transport; the glue attaches the endpoint the focus allocated
//! (named by the ICE ufrag of the offer) to the gateway's socket in-process.

use std::collections::VecDeque;
use std::net::SocketAddr;

use meetd_xmpp::Element;
use meetd_xmpp::stanza::{self, el};

const NS_CLIENT: &str = "jabber:client";
const NS_MUC: &str = "http://jabber.org/protocol/muc";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const NS_FOCUS: &str = "http://jitsi.org/protocol/focus";
const NS_JINGLE: &str = "urn:xmpp:jingle:1";
const NS_RTP: &str = "urn:xmpp:jingle:apps:rtp:1";
const NS_HDREXT: &str = "urn:xmpp:jingle:apps:rtp:rtp-hdrext:0";
const NS_ICE: &str = "urn:xmpp:jingle:transports:ice-udp:1";
const NS_SSMA: &str = "urn:xmpp:jingle:apps:rtp:ssma:0";
const NS_AUDIO: &str = "http://jitsi.org/jitmeet/audio";
const NS_NICK: &str = "http://jabber.org/protocol/nick";
const LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
/// What Jigasi's participant says it is (`features/base/participants` reads it for the
/// phone icon; lib-jitsi-meet keeps a two-person call with it on the bridge).
pub const FEATURE_JIGASI: &str = "http://jitsi.org/protocol/jigasi";
/// The features the gateway's participant answers disco#info with: audio over RTP, nothing
/// else (the focus offers it audio only).
const DISCO_FEATURES: &[&str] = &[
    "urn:xmpp:jingle:1",
    "urn:xmpp:jingle:apps:rtp:1",
    "urn:xmpp:jingle:apps:rtp:audio",
    "urn:xmpp:jingle:transports:ice-udp:1",
    "urn:xmpp:jingle:apps:dtls:0",
    "http://jitsi.org/protocol/source-info",
    FEATURE_JIGASI,
];

/// The media session the focus offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub sid: String,
    /// The bridge's ICE ufrag for this endpoint: what the glue attaches.
    pub ufrag: String,
    /// The bridge's UDP candidates, in the offer's order.
    pub candidates: Vec<SocketAddr>,
    pub opus_pt: u8,
    /// The ssrc-audio-level extension id (0: none offered).
    pub level_id: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OccEvent {
    /// The focus has the conference: the gateway's presence went out.
    Requested,
    /// In the room.
    Joined,
    /// A media session: attach it and start sending.
    Media(Session),
    /// The focus ended the media session.
    MediaEnded,
    /// Muted (by a moderator, or by the caller's `*6`) or unmuted.
    Muted(bool),
    /// Out of the room: kicked, the room ended, or refused.
    Left(Left),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    Kicked,
    RoomEnded,
    Refused,
    /// The focus would not create the conference.
    NoConference,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Requesting,
    Joining,
    In,
    Gone,
}

/// See the module docs.
#[derive(Debug)]
pub struct Occupant {
    /// The gateway's full JID for this call.
    jid: String,
    room: String,
    nick: String,
    display: String,
    focus_domain: String,
    ssrc: u32,
    msid: String,
    muted: bool,
    phase: Phase,
    session: Option<Session>,
    next_id: u64,
    conference_iq: Option<String>,
    out: VecDeque<Element>,
    events: VecDeque<OccEvent>,
}

impl Occupant {
    /// `jid`: the gateway's full JID for the call; `room`: the room's bare JID; `nick`: the
    /// occupant's nickname (random, as the app's); `display`: the name shown; `ssrc` and
    /// `msid_id` for its audio source.
    pub fn new(
        jid: &str,
        room: &str,
        nick: &str,
        display: &str,
        focus_domain: &str,
        ssrc: u32,
        msid_id: &str,
    ) -> Occupant {
        Occupant {
            jid: jid.to_string(),
            room: room.to_string(),
            nick: nick.to_string(),
            display: display.to_string(),
            focus_domain: focus_domain.to_string(),
            ssrc,
            msid: format!("{nick}-audio-0 {msid_id}"),
            muted: false,
            phase: Phase::Start,
            session: None,
            next_id: 1,
            conference_iq: None,
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn occupant_jid(&self) -> String {
        format!("{}/{}", self.room, self.nick)
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    pub fn muted(&self) -> bool {
        self.muted
    }

    pub fn poll_stanza(&mut self) -> Option<Element> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<OccEvent> {
        self.events.pop_front()
    }

    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("sip{}", self.next_id)
    }

    /// Send an IQ `set` with `payload` to `to`; returns its id.
    fn set(&mut self, to: &str, payload: Element) -> String {
        let id = self.id();
        let mut iq = el(
            "iq",
            NS_CLIENT,
            &[
                ("type", "set"),
                ("to", to),
                ("from", &self.jid),
                ("id", &id),
            ],
        );
        iq.append_child(payload);
        self.out.push_back(iq);
        id
    }

    /// Ask the focus for the conference (it creates the room), as Jigasi does first.
    pub fn start(&mut self) {
        let c = el(
            "conference",
            NS_FOCUS,
            &[("room", &self.room), ("machine-uid", &self.nick)],
        );
        let to = self.focus_domain.clone();
        self.conference_iq = Some(self.set(&to, c));
        self.phase = Phase::Requesting;
    }

    /// Leave the room (the call is over).
    pub fn leave(&mut self) {
        if matches!(self.phase, Phase::Joining | Phase::In) {
            let to = self.occupant_jid();
            let p = el(
                "presence",
                NS_CLIENT,
                &[("type", "unavailable"), ("from", &self.jid), ("to", &to)],
            );
            self.out.push_back(p);
        }
        self.phase = Phase::Gone;
    }

    /// The caller's `*6`: unmute asks the focus to lift a moderator's mute; mute is the
    /// caller's own.
    pub fn toggle_mute(&mut self) {
        if self.phase != Phase::In {
            return;
        }
        let mute = !self.muted;
        let focus = format!("{}/focus", self.room);
        let me = self.occupant_jid();
        let mut m = el("mute", NS_AUDIO, &[("jid", &me)]);
        m.append_text_node(if mute { "true" } else { "false" });
        self.set(&focus, m);
        self.set_muted(mute);
    }

    fn set_muted(&mut self, muted: bool) {
        if self.muted == muted {
            return;
        }
        self.muted = muted;
        self.events.push_back(OccEvent::Muted(muted));
        if self.phase == Phase::In {
            let p = self.presence();
            self.out.push_back(p);
        }
    }

    fn presence(&self) -> Element {
        let to = self.occupant_jid();
        let mut p = el("presence", NS_CLIENT, &[("from", &self.jid), ("to", &to)]);
        p.append_child(el("x", NS_MUC, &[]));
        let mut n = el("nick", NS_NICK, &[]);
        n.append_text_node(self.display.as_str());
        p.append_child(n);
        let mut f = el("features", NS_CLIENT, &[]);
        f.append_child(el("feature", NS_CLIENT, &[("var", FEATURE_JIGASI)]));
        f.append_child(el(
            "feature",
            NS_CLIENT,
            &[("var", "http://jitsi.org/protocol/audio-mute")],
        ));
        f.append_child(el(
            "feature",
            NS_CLIENT,
            &[("var", "urn:xmpp:jingle:dtmf:0")],
        ));
        p.append_child(f);
        let muted = if self.muted { "true" } else { "false" };
        let mut a = el("audiomuted", NS_AUDIO, &[]);
        a.append_text_node(muted);
        p.append_child(a);
        let mut v = el("videomuted", "http://jitsi.org/jitmeet/video", &[]);
        v.append_text_node("true");
        p.append_child(v);
        let mut si = el("SourceInfo", "jabber:client", &[]);
        si.append_text_node(format!("{{\"{}-a0\":{{\"muted\":{muted}}}}}", self.nick));
        p.append_child(si);
        p
    }

    /// A stanza routed to the gateway's JID.
    pub fn handle(&mut self, st: &Element) {
        match st.name() {
            "iq" => self.iq(st),
            "presence" => self.presence_in(st),
            _ => {}
        }
    }

    fn iq(&mut self, iq: &Element) {
        let ty = iq.attr("type").unwrap_or("");
        if ty == "result" || ty == "error" {
            if iq.attr("id").is_some() && iq.attr("id") == self.conference_iq.as_deref() {
                self.conference_iq = None;
                let ready = iq
                    .get_child("conference", NS_FOCUS)
                    .and_then(|c| c.attr("ready"))
                    == Some("true");
                if ty == "result" && ready && self.phase == Phase::Requesting {
                    self.phase = Phase::Joining;
                    let p = self.presence();
                    self.out.push_back(p);
                    self.events.push_back(OccEvent::Requested);
                } else if self.phase == Phase::Requesting {
                    self.phase = Phase::Gone;
                    self.events.push_back(OccEvent::Left(Left::NoConference));
                }
            }
            return;
        }
        if let Some(q) = iq.get_child("query", NS_DISCO_INFO)
            && ty == "get"
        {
            let mut r = el("query", NS_DISCO_INFO, &[]);
            if let Some(node) = q.attr("node") {
                stanza::set_attr(&mut r, "node", node);
            }
            for f in DISCO_FEATURES {
                r.append_child(el("feature", NS_DISCO_INFO, &[("var", f)]));
            }
            self.reply(iq, Some(r));
            return;
        }
        if let Some(j) = iq.get_child("jingle", NS_JINGLE)
            && ty == "set"
        {
            self.jingle(iq, j);
            return;
        }
        if let Some(m) = iq.get_child("mute", NS_AUDIO)
            && ty == "set"
        {
            self.reply(iq, None);
            if m.text().trim() == "true" {
                self.set_muted(true);
            }
            return;
        }
        if let Some(e) = stanza::error_reply(iq, stanza::StanzaError::SERVICE_UNAVAILABLE, None) {
            self.out.push_back(with_from(e, &self.jid));
        }
    }

    fn reply(&mut self, iq: &Element, payload: Option<Element>) {
        let r = stanza::iq_result(iq, payload);
        self.out.push_back(with_from(r, &self.jid));
    }

    fn jingle(&mut self, iq: &Element, j: &Element) {
        let sid = j.attr("sid").unwrap_or("").to_string();
        match j.attr("action").unwrap_or("") {
            "session-initiate" => match parse_offer(j) {
                Some(s) => {
                    self.reply(iq, None);
                    let accept = self.accept(&s);
                    let focus = iq.attr("from").unwrap_or("").to_string();
                    self.set(&focus, accept);
                    self.session = Some(s.clone());
                    self.events.push_back(OccEvent::Media(s));
                }
                None => {
                    tracing::info!("SIP: the focus offered no audio the gateway can take");
                    if let Some(e) = stanza::error_reply(
                        iq,
                        stanza::StanzaError::BAD_REQUEST,
                        Some("no audio content"),
                    ) {
                        self.out.push_back(with_from(e, &self.jid));
                    }
                }
            },
            "session-terminate" => {
                self.reply(iq, None);
                if self.session.as_ref().is_some_and(|s| s.sid == sid) {
                    self.session = None;
                    self.events.push_back(OccEvent::MediaEnded);
                }
            }
            // Sources of others (the mix takes any), transport updates: acknowledged.
            _ => self.reply(iq, None),
        }
    }

    /// The session-accept: the audio content with the gateway's one source, no transport.
    fn accept(&self, s: &Session) -> Element {
        let me = self.occupant_jid();
        let mut j = el(
            "jingle",
            NS_JINGLE,
            &[
                ("action", "session-accept"),
                ("sid", &s.sid),
                ("responder", &me),
            ],
        );
        let mut c = el(
            "content",
            NS_JINGLE,
            &[
                ("creator", "initiator"),
                ("name", "audio"),
                ("senders", "both"),
            ],
        );
        let ssrc = self.ssrc.to_string();
        let mut d = el(
            "description",
            NS_RTP,
            &[("media", "audio"), ("ssrc", &ssrc)],
        );
        let pt = s.opus_pt.to_string();
        d.append_child(el(
            "payload-type",
            NS_RTP,
            &[
                ("id", &pt),
                ("name", "opus"),
                ("clockrate", "48000"),
                ("channels", "2"),
            ],
        ));
        if s.level_id != 0 {
            let id = s.level_id.to_string();
            d.append_child(el(
                "rtp-hdrext",
                NS_HDREXT,
                &[("id", &id), ("uri", LEVEL_URI)],
            ));
        }
        let name = format!("{}-a0", self.nick);
        let mut src = el("source", NS_SSMA, &[("ssrc", &ssrc), ("name", &name)]);
        src.append_child(el(
            "parameter",
            NS_SSMA,
            &[("name", "msid"), ("value", &self.msid)],
        ));
        src.append_child(el(
            "ssrc-info",
            "http://jitsi.org/jitmeet",
            &[("owner", &me)],
        ));
        d.append_child(src);
        d.append_child(el("rtcp-mux", NS_RTP, &[]));
        c.append_child(d);
        j.append_child(c);
        j
    }

    fn presence_in(&mut self, p: &Element) {
        let from = p.attr("from").unwrap_or("");
        if from != self.occupant_jid() {
            return;
        }
        let x = p.get_child("x", NS_MUC_USER);
        let statuses = stanza::muc_statuses(p);
        match p.attr("type") {
            Some("error") if self.phase != Phase::Gone => {
                self.phase = Phase::Gone;
                self.events.push_back(OccEvent::Left(Left::Refused));
            }
            Some("unavailable") => {
                if self.phase == Phase::Gone {
                    return;
                }
                self.phase = Phase::Gone;
                let why = if x
                    .and_then(|x| x.get_child("destroy", NS_MUC_USER))
                    .is_some()
                {
                    Left::RoomEnded
                } else if statuses.contains(&"307") || statuses.contains(&"301") {
                    Left::Kicked
                } else {
                    Left::RoomEnded
                };
                self.events.push_back(OccEvent::Left(why));
            }
            None if self.phase == Phase::Joining && statuses.contains(&"110") => {
                self.phase = Phase::In;
                self.events.push_back(OccEvent::Joined);
            }
            _ => {}
        }
    }
}

fn with_from(mut e: Element, from: &str) -> Element {
    stanza::set_attr(&mut e, "from", from);
    e
}

/// The audio content of a session-initiate: ufrag, UDP candidates, Opus and the level
/// extension.
fn parse_offer(j: &Element) -> Option<Session> {
    let content = j.children().find(|c| {
        c.is("content", NS_JINGLE)
            && c.get_child("description", NS_RTP)
                .is_some_and(|d| d.attr("media") == Some("audio"))
    })?;
    let d = content.get_child("description", NS_RTP)?;
    let t = content.get_child("transport", NS_ICE)?;
    let ufrag = t.attr("ufrag").filter(|u| !u.is_empty())?.to_string();
    let candidates = t
        .children()
        .filter(|c| c.name() == "candidate")
        .filter(|c| {
            c.attr("protocol")
                .is_none_or(|p| p.eq_ignore_ascii_case("udp"))
        })
        .filter_map(|c| {
            let ip = c.attr("ip")?.parse().ok()?;
            let port = c.attr("port")?.parse().ok()?;
            Some(SocketAddr::new(ip, port))
        })
        .collect::<Vec<_>>();
    let opus_pt = d
        .children()
        .filter(|p| p.name() == "payload-type")
        .find(|p| {
            p.attr("name")
                .is_some_and(|n| n.eq_ignore_ascii_case("opus"))
        })
        .and_then(|p| p.attr("id")?.parse().ok())?;
    let level_id = d
        .children()
        .filter(|h| h.name() == "rtp-hdrext")
        .find(|h| h.attr("uri") == Some(LEVEL_URI))
        .and_then(|h| h.attr("id")?.parse().ok())
        .filter(|id| (1..=14).contains(id))
        .unwrap_or(0);
    if candidates.is_empty() {
        return None;
    }
    Some(Session {
        sid: j.attr("sid").unwrap_or("").to_string(),
        ufrag,
        candidates,
        opus_pt,
        level_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOM: &str = "physics@muc.meet.jitsi";
    const JID: &str = "sip-gateway@auth.meet.jitsi/call1";

    fn parse(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    fn drain(o: &mut Occupant) -> Vec<Element> {
        std::iter::from_fn(|| o.poll_stanza()).collect()
    }

    fn joined() -> Occupant {
        let mut o = Occupant::new(
            JID,
            ROOM,
            "c4ll3r01",
            "+493****456",
            "focus.meet.jitsi",
            4242,
            "uuid1",
        );
        o.start();
        let iq = drain(&mut o).pop().unwrap();
        assert_eq!(iq.attr("to"), Some("focus.meet.jitsi"));
        let id = iq.attr("id").unwrap().to_string();
        o.handle(&parse(&format!(
            "<iq xmlns='jabber:client' type='result' id='{id}' from='focus.meet.jitsi'><conference xmlns='{NS_FOCUS}' ready='true' room='{ROOM}'/></iq>"
        )));
        assert_eq!(o.poll_event(), Some(OccEvent::Requested));
        let p = drain(&mut o).pop().unwrap();
        assert_eq!(p.attr("to"), Some("physics@muc.meet.jitsi/c4ll3r01"));
        assert_eq!(p.get_child("nick", NS_NICK).unwrap().text(), "+493****456");
        let f: Vec<&str> = p
            .get_child("features", NS_CLIENT)
            .unwrap()
            .children()
            .filter_map(|f| f.attr("var"))
            .collect();
        assert!(f.contains(&FEATURE_JIGASI));
        o.handle(&parse(&format!(
            "<presence xmlns='jabber:client' from='{ROOM}/c4ll3r01'><x xmlns='{NS_MUC_USER}'><item affiliation='none' role='participant'/><status code='110'/></x></presence>"
        )));
        assert_eq!(o.poll_event(), Some(OccEvent::Joined));
        o
    }

    const OFFER: &str = "<iq xmlns='jabber:client' type='set' id='j1' from='physics@muc.meet.jitsi/focus'><jingle xmlns='urn:xmpp:jingle:1' action='session-initiate' sid='s1'><content name='audio'><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'><payload-type id='111' name='opus' clockrate='48000' channels='2'/><payload-type id='126' name='telephone-event' clockrate='8000'/><rtp-hdrext xmlns='urn:xmpp:jingle:apps:rtp:rtp-hdrext:0' id='1' uri='urn:ietf:params:rtp-hdrext:ssrc-audio-level'/></description><transport xmlns='urn:xmpp:jingle:transports:ice-udp:1' ufrag='brufrag' pwd='p'><candidate foundation='1' component='1' protocol='udp' priority='1' ip='10.0.0.1' port='10000' type='host' generation='0' id='c1'/><candidate foundation='2' component='1' protocol='tcp' priority='1' ip='10.0.0.1' port='4443' type='host' generation='0' id='c2'/></transport></content></jingle></iq>";

    #[test]
    fn joins_through_the_focus_and_accepts_the_audio_session() {
        let mut o = joined();
        o.handle(&parse(OFFER));
        let out = drain(&mut o);
        assert_eq!(out[0].attr("type"), Some("result"));
        let accept = out[1].get_child("jingle", NS_JINGLE).unwrap();
        assert_eq!(accept.attr("action"), Some("session-accept"));
        assert_eq!(out[1].attr("to"), Some("physics@muc.meet.jitsi/focus"));
        let desc = accept
            .get_child("content", NS_JINGLE)
            .and_then(|c| c.get_child("description", NS_RTP))
            .unwrap();
        let src = desc.get_child("source", NS_SSMA).unwrap();
        assert_eq!(
            (src.attr("ssrc"), src.attr("name")),
            (Some("4242"), Some("c4ll3r01-a0"))
        );
        assert!(
            accept
                .get_child("content", NS_JINGLE)
                .unwrap()
                .get_child("transport", NS_ICE)
                .is_none()
        );
        let Some(OccEvent::Media(s)) = o.poll_event() else {
            panic!("no media")
        };
        assert_eq!(s.ufrag, "brufrag");
        assert_eq!(s.candidates, vec!["10.0.0.1:10000".parse().unwrap()]);
        assert_eq!((s.opus_pt, s.level_id), (111, 1));
        // The focus's source updates are acknowledged; its terminate ends the media.
        o.handle(&parse("<iq xmlns='jabber:client' type='set' id='j2' from='physics@muc.meet.jitsi/focus'><jingle xmlns='urn:xmpp:jingle:1' action='source-add' sid='s1'/></iq>"));
        assert_eq!(drain(&mut o)[0].attr("type"), Some("result"));
        o.handle(&parse("<iq xmlns='jabber:client' type='set' id='j3' from='physics@muc.meet.jitsi/focus'><jingle xmlns='urn:xmpp:jingle:1' action='session-terminate' sid='s1'/></iq>"));
        assert_eq!(o.poll_event(), Some(OccEvent::MediaEnded));
    }

    #[test]
    fn disco_mute_and_star_six() {
        let mut o = joined();
        o.handle(&parse("<iq xmlns='jabber:client' type='get' id='d1' from='physics@muc.meet.jitsi/focus'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"));
        let r = drain(&mut o).pop().unwrap();
        let vars: Vec<String> = r
            .get_child("query", NS_DISCO_INFO)
            .unwrap()
            .children()
            .filter_map(|f| f.attr("var").map(str::to_string))
            .collect();
        assert!(vars.contains(&"urn:xmpp:jingle:apps:rtp:audio".to_string()));
        assert!(!vars.iter().any(|v| v.ends_with(":video")));
        // A moderator mutes the caller.
        o.handle(&parse(&format!("<iq xmlns='jabber:client' type='set' id='m1' from='{ROOM}/focus'><mute xmlns='{NS_AUDIO}' actor='{ROOM}/mod' jid='{ROOM}/c4ll3r01'>true</mute></iq>")));
        let out = drain(&mut o);
        assert_eq!(out[0].attr("type"), Some("result"));
        assert_eq!(
            out[1].get_child("audiomuted", NS_AUDIO).unwrap().text(),
            "true"
        );
        assert_eq!(o.poll_event(), Some(OccEvent::Muted(true)));
        // *6: the caller unmutes, asking the focus.
        o.toggle_mute();
        let out = drain(&mut o);
        let m = out[0].get_child("mute", NS_AUDIO).unwrap();
        assert_eq!(
            (out[0].attr("to"), m.text().as_str()),
            (Some("physics@muc.meet.jitsi/focus"), "false")
        );
        assert_eq!(
            out[1].get_child("audiomuted", NS_AUDIO).unwrap().text(),
            "false"
        );
        assert_eq!(o.poll_event(), Some(OccEvent::Muted(false)));
    }

    #[test]
    fn kicked_room_ended_refused_and_no_conference() {
        let mut o = joined();
        o.handle(&parse(&format!("<presence xmlns='jabber:client' type='unavailable' from='{ROOM}/c4ll3r01'><x xmlns='{NS_MUC_USER}'><status code='307'/><status code='110'/></x></presence>")));
        assert_eq!(o.poll_event(), Some(OccEvent::Left(Left::Kicked)));
        let mut o = joined();
        o.handle(&parse(&format!("<presence xmlns='jabber:client' type='unavailable' from='{ROOM}/c4ll3r01'><x xmlns='{NS_MUC_USER}'><destroy/></x></presence>")));
        assert_eq!(o.poll_event(), Some(OccEvent::Left(Left::RoomEnded)));
        o.leave();
        assert!(drain(&mut o).is_empty(), "nothing to leave once out");
        let mut o = Occupant::new(JID, ROOM, "n", "Phone user", "focus.meet.jitsi", 1, "u");
        o.start();
        let id = drain(&mut o)[0].attr("id").unwrap().to_string();
        o.handle(&parse(&format!(
            "<iq xmlns='jabber:client' type='error' id='{id}' from='focus.meet.jitsi'/>"
        )));
        assert_eq!(o.poll_event(), Some(OccEvent::Left(Left::NoConference)));
        let mut o = joined();
        o.handle(&parse(&format!(
            "<presence xmlns='jabber:client' type='error' from='{ROOM}/c4ll3r01'/>"
        )));
        assert_eq!(o.poll_event(), Some(OccEvent::Left(Left::Refused)));
        // Others' presence and unknown IQs.
        let mut o = joined();
        o.handle(&parse(&format!(
            "<presence xmlns='jabber:client' type='unavailable' from='{ROOM}/someone'/>"
        )));
        assert_eq!(o.poll_event(), None);
        o.handle(&parse(&format!("<iq xmlns='jabber:client' type='get' id='v' from='{ROOM}/x'><query xmlns='jabber:iq:version'/></iq>")));
        assert_eq!(drain(&mut o)[0].attr("type"), Some("error"));
        o.leave();
        assert_eq!(drain(&mut o)[0].attr("type"), Some("unavailable"));
    }
}
