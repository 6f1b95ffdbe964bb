use super::*;
use meetd_colibri::colibri2::{
    Candidate, CandidateType, DtlsSetup, Fingerprint, MediaSource, Sources, WebSocket,
};

const ROOM: &str = "room@muc.meet.jitsi";
const FOCUS: &str = "focus@auth.meet.jitsi/focus";

fn parse(s: &str) -> Element {
    meetd_xmpp::xml::parse_document(s.as_bytes(), &Default::default()).unwrap()
}

struct Harness {
    c: Conference,
    now: Instant,
    sent: Vec<Element>,
    colibri: Vec<(u64, ConferenceModify)>,
    ready: bool,
    stopped: bool,
    jibri_starts: Vec<jibri::StartRequest>,
    jibri_stops: Vec<(String, String)>,
    dials: Vec<Element>,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(FocusConfig::new(FOCUS))
    }

    fn with(cfg: FocusConfig) -> Harness {
        let now = Instant::now();
        let c = Conference::new(ROOM, cfg, now, 1);
        let mut h = Harness {
            c,
            now,
            sent: vec![],
            colibri: vec![],
            ready: false,
            stopped: false,
            jibri_starts: vec![],
            jibri_stops: vec![],
            dials: vec![],
        };
        h.drain();
        h
    }

    fn drain(&mut self) {
        for o in self.c.take_output() {
            match o {
                Output::Send(e) => self.sent.push(e),
                Output::Colibri { req, modify } => self.colibri.push((req, modify)),
                Output::Ready => self.ready = true,
                Output::Failed(_) => {}
                Output::Stopped => self.stopped = true,
                Output::JibriStart(r) => self.jibri_starts.push(r),
                Output::JibriStop { jibri, session_id } => {
                    self.jibri_stops.push((jibri, session_id));
                }
                Output::JigasiDial(iq) => self.dials.push(iq),
            }
        }
    }

    fn input(&mut self, i: Input) {
        self.c.handle(i, self.now);
        self.drain();
    }

    fn stanza(&mut self, s: &str) {
        self.input(Input::Stanza(parse(s)));
    }

    fn take_sent(&mut self) -> Vec<Element> {
        std::mem::take(&mut self.sent)
    }

    /// Join the room and answer the room disco, as the MUC does.
    fn start(&mut self) {
        let join = self.take_sent();
        assert_eq!(join[0].name(), "presence");
        assert_eq!(join[0].attr("to"), Some(&*format!("{ROOM}/focus")));
        assert!(join[0].has_child("conference-properties", NS_FOCUS));
        self.stanza(&format!("<presence xmlns='jabber:client' from='{ROOM}/focus' to='{FOCUS}'><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='owner' role='moderator' jid='{FOCUS}'/><status code='110'/></x></presence>"));
        let disco = self.take_sent();
        let id = disco[0].attr("id").unwrap().to_string();
        self.stanza(&format!("<iq xmlns='jabber:client' type='result' id='{id}' from='{ROOM}' to='{FOCUS}'><query xmlns='http://jabber.org/protocol/disco#info'><x xmlns='jabber:x:data' type='result'><field var='muc#roominfo_meetingId'><value>meeting-1</value></field></x></query></iq>"));
        assert!(self.ready);
    }

    /// A participant joins and answers disco#info with the stock client's features.
    fn join(&mut self, nick: &str, n: u32) {
        self.join_with(nick, &format!("<stats-id>s{n}</stats-id><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='participant' jid='u{n}@meet.jitsi/r{n}'/></x>"));
    }

    /// A participant joins with `inner` in its presence (its MUC item too) and answers
    /// disco#info with the stock client's features; what else the focus sent stays in `sent`.
    fn join_with(&mut self, nick: &str, inner: &str) {
        self.stanza(&format!(
            "<presence xmlns='jabber:client' from='{ROOM}/{nick}' to='{FOCUS}'>{inner}</presence>"
        ));
        let sent = self.take_sent();
        let disco = sent
            .iter()
            .find(|e| e.attr("to") == Some(&*format!("{ROOM}/{nick}")))
            .expect("disco");
        let id = disco.attr("id").unwrap().to_string();
        self.sent
            .extend(sent.into_iter().filter(|e| e.attr("id") != Some(&*id)));
        let f: String = crate::offer::WEB_CLIENT_FEATURES
            .iter()
            .map(|v| format!("<feature var='{v}'/>"))
            .collect();
        self.stanza(&format!("<iq xmlns='jabber:client' type='result' id='{id}' from='{ROOM}/{nick}' to='{FOCUS}'><query xmlns='http://jabber.org/protocol/disco#info'>{f}</query></iq>"));
    }

    /// Answer bridge requests until none is left; the endpoints they created.
    fn created_endpoints(&mut self) -> Vec<meetd_colibri::colibri2::Endpoint> {
        let mut created = Vec::new();
        while !self.colibri.is_empty() {
            created.extend(
                self.colibri
                    .iter()
                    .flat_map(|(_, m)| &m.endpoints)
                    .filter(|e| e.create)
                    .cloned(),
            );
            self.bridge();
        }
        created
    }

    /// Answer every pending bridge request as a bridge would.
    fn bridge(&mut self) {
        while !self.colibri.is_empty() {
            let reqs = std::mem::take(&mut self.colibri);
            for (req, m) in reqs {
                let mut resp = ConferenceModified::default();
                for ep in &m.endpoints {
                    if ep.create {
                        let mut e = Endpoint::new(ep.id.clone());
                        e.transport = Some(Transport {
                            ice: Some(IceUdpTransport {
                                ufrag: Some("ufrg".into()),
                                pwd: Some("pwdpwdpwdpwdpwdpwdpwdpwd".into()),
                                fingerprints: vec![Fingerprint {
                                    hash: "sha-256".into(),
                                    setup: Some(DtlsSetup::Actpass),
                                    cryptex: None,
                                    value: "AA:BB".into(),
                                }],
                                web_sockets: vec![WebSocket {
                                    url: Some(format!(
                                        "ws://127.0.0.1/colibri-ws/jvb1/c/{}?pwd=x",
                                        ep.id
                                    )),
                                    active: None,
                                }],
                                rtcp_mux: true,
                                candidates: vec![Candidate {
                                    component: 1,
                                    foundation: "1".into(),
                                    generation: 0,
                                    id: "c1".into(),
                                    ip: "127.0.0.1".into(),
                                    port: 10000,
                                    priority: 2130706431,
                                    protocol: "udp".into(),
                                    type_: CandidateType::Host,
                                    network: Some(0),
                                    rel_addr: None,
                                    rel_port: None,
                                    tcptype: None,
                                }],
                                ..IceUdpTransport::default()
                            }),
                            sctp: Some(Sctp {
                                port: Some(5000),
                                role: None,
                            }),
                            ..Transport::default()
                        });
                        resp.endpoints.push(e);
                    }
                }
                if m.create {
                    let mut a = MediaSource {
                        kind: MediaType::Audio,
                        id: "jvb-a0".into(),
                        synthetic: None,
                        sources: vec![],
                        ssrc_groups: vec![],
                    };
                    a.sources.push(colibri2::Source::new(411312308));
                    let mut v = MediaSource {
                        kind: MediaType::Video,
                        id: "jvb-v0".into(),
                        synthetic: None,
                        sources: vec![],
                        ssrc_groups: vec![],
                    };
                    v.sources.push(colibri2::Source::new(3929652146));
                    resp.sources = Some(Sources {
                        media_sources: vec![a, v],
                    });
                }
                self.input(Input::Colibri {
                    req,
                    result: Ok(resp),
                });
            }
        }
    }

    fn jingle_to(&mut self, nick: &str) -> Vec<Element> {
        let to = format!("{ROOM}/{nick}");
        let (mine, rest): (Vec<_>, Vec<_>) = self
            .take_sent()
            .into_iter()
            .partition(|e| e.attr("to") == Some(&*to) && e.has_child("jingle", NS_JINGLE));
        self.sent = rest;
        mine
    }

    fn accept(&mut self, nick: &str, sid: &str, base: u32) -> Element {
        self.stanza(&accept_xml(nick, sid, base));
        let sent = self.take_sent();
        let reply = sent
            .iter()
            .find(|e| e.attr("id") == Some("acc"))
            .cloned()
            .expect("reply to accept");
        self.sent = sent
            .into_iter()
            .filter(|e| e.attr("id") != Some("acc"))
            .collect();
        reply
    }
}

fn accept_xml(nick: &str, sid: &str, b: u32) -> String {
    format!(
        "<iq xmlns='jabber:client' type='set' id='acc' from='{ROOM}/{nick}' to='{FOCUS}'><jingle xmlns='urn:xmpp:jingle:1' action='session-accept' sid='{sid}'>
          <content name='audio'><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'>
            <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='{a}' name='{nick}-a0'><parameter name='msid' value='{nick}-audio x'/></source></description>
            <transport xmlns='urn:xmpp:jingle:transports:ice-udp:1' ufrag='cu' pwd='cpwdcpwdcpwdcpwdcpwdcpwd'><fingerprint xmlns='urn:xmpp:jingle:apps:dtls:0' hash='sha-256' setup='active'>CC:DD</fingerprint></transport></content>
          <content name='video'><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='video'>
            <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='{v1}' name='{nick}-v0' videoType='camera'><parameter name='msid' value='{nick}-video y'/></source>
            <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='{v2}' name='{nick}-v0' videoType='camera'><parameter name='msid' value='{nick}-video y'/></source>
            <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='{r1}' name='{nick}-v0' videoType='camera'><parameter name='msid' value='{nick}-video y'/></source>
            <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='{r2}' name='{nick}-v0' videoType='camera'><parameter name='msid' value='{nick}-video y'/></source>
            <ssrc-group xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' semantics='SIM'><source ssrc='{v1}'/><source ssrc='{v2}'/></ssrc-group>
            <ssrc-group xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' semantics='FID'><source ssrc='{v1}'/><source ssrc='{r1}'/></ssrc-group>
            <ssrc-group xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' semantics='FID'><source ssrc='{v2}'/><source ssrc='{r2}'/></ssrc-group>
          </description></content></jingle></iq>",
        a = b, v1 = b + 1, v2 = b + 2, r1 = b + 3, r2 = b + 4
    )
}

fn sid_of(iq: &Element) -> String {
    iq.get_child("jingle", NS_JINGLE)
        .unwrap()
        .attr("sid")
        .unwrap()
        .to_string()
}

fn json_of(iq: &Element) -> serde_json::Value {
    let t = iq
        .get_child("jingle", NS_JINGLE)
        .unwrap()
        .get_child("json-message", NS_JITMEET)
        .unwrap()
        .text();
    serde_json::from_str(&t).unwrap()
}

#[test]
fn lone_participant_gets_no_session_then_both_are_invited() {
    let mut h = Harness::new();
    h.start();
    h.join("aaaa", 1);
    // The first participant is made owner (Jicofo's auto-owner).
    let grant = h.take_sent();
    assert!(
        grant
            .iter()
            .any(|e| meetd_xmpp::xml::to_string(e)
                .contains("affiliation='owner' jid='u1@meet.jitsi'")),
        "{grant:?}"
    );
    assert!(h.colibri.is_empty(), "no media for a lone participant");
    h.join("bbbb", 2);
    // One create request; the second allocation waits for it.
    assert_eq!(h.colibri.len(), 1);
    let (_, create) = &h.colibri[0];
    assert!(create.create);
    assert_eq!(create.meeting_id, "meeting-1");
    assert_eq!(create.name.as_deref(), Some(ROOM));
    let ep = &create.endpoints[0];
    assert!(ep.create && ep.capabilities.contains(&"source-names".to_string()));
    assert_eq!(ep.transport.as_ref().unwrap().ice_controlling, Some(true));
    h.bridge();
    let a = h.jingle_to("aaaa");
    let b = h.jingle_to("bbbb");
    assert_eq!(a.len(), 1);
    assert_eq!(b.len(), 1);
    let j = a[0].get_child("jingle", NS_JINGLE).unwrap();
    assert_eq!(j.attr("action"), Some("session-initiate"));
    assert_eq!(a[0].attr("from"), Some(FOCUS));
    let names: Vec<&str> = j
        .children()
        .filter(|c| c.name() == "content")
        .filter_map(|c| c.attr("name"))
        .collect();
    // No data content: the bridge channel is the WebSocket (lib-jitsi-meet would pick SCTP).
    assert_eq!(names, vec!["audio", "video"]);
    let s = meetd_xmpp::xml::to_string(&a[0]);
    assert!(
        s.contains("bridge-session")
            && s.contains("web-socket")
            && !s.contains("sctpmap")
            && s.contains("ufrag='ufrg'"),
        "{s}"
    );
    // JSON sources with the bridge's feedback sources.
    let js = json_of(&a[0]);
    assert_eq!(js["sources"]["jvb"][0][0]["s"], 3929652146u64);
    assert_eq!(
        js["sources"]["jvb"][2][0]["m"],
        "mixedmslabel mixedlabelaudio0"
    );
}

/// `<c/>` announcing the caps of a disco#info answer with these features.
fn caps_of(features: &[&str]) -> String {
    let f: String = features
        .iter()
        .map(|v| format!("<feature var='{v}'/>"))
        .collect();
    let q = parse(&format!(
        "<query xmlns='http://jabber.org/protocol/disco#info'>{f}</query>"
    ));
    let ver = meetd_xmpp::caps::ver_of(&meetd_xmpp::caps::verification_string(&q).unwrap());
    format!(
        "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://jitsi.org/jitsi-meet' ver='{ver}'/>"
    )
}

fn disco_to(sent: &[Element], nick: &str) -> bool {
    sent.iter().any(|e| {
        e.attr("to") == Some(&*format!("{ROOM}/{nick}"))
            && e.has_child("query", "http://jabber.org/protocol/disco#info")
    })
}

#[test]
fn known_caps_spare_the_disco_round_trip() {
    let mut h = Harness::new();
    h.start();
    let caps = caps_of(crate::offer::WEB_CLIENT_FEATURES);
    let item = |n: u32| {
        format!(
            "<x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='participant' jid='u{n}@meet.jitsi/r{n}'/></x>"
        )
    };
    // The first one announcing them is asked; its answer matches, so it is learned.
    h.join_with("aaaa", &format!("{caps}{}", item(1)));
    h.take_sent();
    // The next one announcing the same caps is invited at once: no disco#info, and the
    // bridge is asked for both endpoints, with the features the answer had (ssrc-rewriting).
    h.stanza(&format!(
        "<presence xmlns='jabber:client' from='{ROOM}/bbbb' to='{FOCUS}'>{caps}{}</presence>",
        item(2)
    ));
    assert!(!disco_to(&h.take_sent(), "bbbb"));
    h.bridge();
    // Offered with the features of the learned answer: JSON sources.
    let b = h.jingle_to("bbbb");
    assert_eq!(b.len(), 1);
    assert!(json_of(&b[0])["sources"].is_object(), "{:?}", b[0]);
}

#[test]
fn caps_whose_answer_does_not_match_are_not_learned() {
    let mut h = Harness::new();
    h.start();
    // It announces the stock client's caps but answers with fewer features.
    let caps = caps_of(crate::offer::WEB_CLIENT_FEATURES);
    let fewer = &crate::offer::WEB_CLIENT_FEATURES[1..];
    let presence = |nick: &str, n: u32| {
        format!(
            "<presence xmlns='jabber:client' from='{ROOM}/{nick}' to='{FOCUS}'>{caps}<x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='participant' jid='u{n}@meet.jitsi/r{n}'/></x></presence>"
        )
    };
    h.stanza(&presence("aaaa", 1));
    let sent = h.take_sent();
    let id = sent
        .iter()
        .find(|e| disco_to(std::slice::from_ref(*e), "aaaa"))
        .and_then(|e| e.attr("id"))
        .expect("disco")
        .to_string();
    let f: String = fewer
        .iter()
        .map(|v| format!("<feature var='{v}'/>"))
        .collect();
    h.stanza(&format!("<iq xmlns='jabber:client' type='result' id='{id}' from='{ROOM}/aaaa' to='{FOCUS}'><query xmlns='http://jabber.org/protocol/disco#info'>{f}</query></iq>"));
    // So the next one with those caps is asked too.
    h.stanza(&presence("bbbb", 2));
    assert!(disco_to(&h.take_sent(), "bbbb"));
}

fn two_in_session() -> (Harness, String, String) {
    let mut h = Harness::new();
    h.start();
    h.join("aaaa", 1);
    h.join("bbbb", 2);
    h.take_sent();
    h.bridge();
    let sa = sid_of(&h.jingle_to("aaaa")[0]);
    let sb = sid_of(&h.jingle_to("bbbb")[0]);
    (h, sa, sb)
}

#[test]
fn accept_updates_bridge_and_signals_sources_to_the_other() {
    let (mut h, sa, sb) = two_in_session();
    let r = h.accept("aaaa", &sa, 100);
    assert_eq!(r.attr("type"), Some("result"));
    assert_eq!(r.attr("to"), Some(&*format!("{ROOM}/aaaa")));
    // The bridge learns a's transport and its full source set.
    let (_, upd) = h.colibri.last().unwrap();
    let ep = &upd.endpoints[0];
    assert_eq!(ep.id, "aaaa");
    assert_eq!(
        ep.transport
            .as_ref()
            .unwrap()
            .ice
            .as_ref()
            .unwrap()
            .ufrag
            .as_deref(),
        Some("cu")
    );
    assert_eq!(ep.sources.as_ref().unwrap().media_sources.len(), 2);
    h.bridge();
    // b has not accepted yet: nothing is sent to it until it does.
    assert!(h.jingle_to("bbbb").is_empty());
    let r = h.accept("bbbb", &sb, 200);
    assert_eq!(r.attr("type"), Some("result"));
    // Now each gets the other's sources, simulcast stripped.
    let to_a = h.jingle_to("aaaa");
    let to_b = h.jingle_to("bbbb");
    assert_eq!(to_a.len(), 1);
    assert_eq!(to_b.len(), 1);
    assert_eq!(
        to_a[0]
            .get_child("jingle", NS_JINGLE)
            .unwrap()
            .attr("action"),
        Some("source-add")
    );
    let js = json_of(&to_a[0]);
    let video = js["sources"]["bbbb"][0].as_array().unwrap();
    let ssrcs: Vec<u64> = video.iter().map(|s| s["s"].as_u64().unwrap()).collect();
    assert_eq!(ssrcs, vec![201, 203], "first layer and its RTX only");
    assert_eq!(json_of(&to_b[0])["sources"]["aaaa"][2][0]["s"], 100);
}

#[test]
fn sources_named_after_another_participant_are_left_out() {
    let (mut h, sa, sb) = two_in_session();
    h.accept("aaaa", &sa, 100);
    h.bridge();
    // b's accept carries a's source names (the app's stale conference in a's tab does this).
    let xml = accept_xml("bbbb", &sb, 200)
        .replace("bbbb-a0", "aaaa-a0")
        .replace("bbbb-v0", "aaaa-v0");
    h.stanza(&xml);
    let r = h
        .take_sent()
        .into_iter()
        .find(|e| e.attr("id") == Some("acc"))
        .unwrap();
    assert_eq!(
        r.attr("type"),
        Some("result"),
        "accepted, the session goes on"
    );
    assert!(h.c.sources.get("bbbb").is_none_or(|s| s.sources.is_empty()));
    assert_eq!(h.c.sources.get("aaaa").unwrap().sources.len(), 5);
}

#[test]
fn invalid_sources_are_rejected_and_leave_the_conference_intact() {
    let (mut h, sa, sb) = two_in_session();
    h.accept("aaaa", &sa, 100);
    h.bridge();
    // b reuses a's SSRCs.
    let r = h.accept("bbbb", &sb, 100);
    assert_eq!(r.attr("type"), Some("error"));
    assert!(meetd_xmpp::xml::to_string(&r).contains("SSRC is already used"));
    // a's sources are still there; a source-add with 21 SSRCs is refused too.
    let many: String = (1000..1021).map(|s| format!("<source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='{s}'><parameter name='msid' value='m{s}'/></source>")).collect();
    h.stanza(&format!("<iq xmlns='jabber:client' type='set' id='sa' from='{ROOM}/aaaa' to='{FOCUS}'><jingle xmlns='urn:xmpp:jingle:1' action='source-add' sid='{sa}'><content name='audio'><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'>{many}</description></content></jingle></iq>"));
    let r = h
        .take_sent()
        .into_iter()
        .find(|e| e.attr("id") == Some("sa"))
        .unwrap();
    assert_eq!(r.attr("type"), Some("error"));
    assert!(meetd_xmpp::xml::to_string(&r).contains("limit"));
    assert_eq!(h.c.sources.get("aaaa").unwrap().sources.len(), 5);
    // A Jingle IQ for an unknown session.
    h.stanza(&format!("<iq xmlns='jabber:client' type='set' id='x' from='{ROOM}/aaaa' to='{FOCUS}'><jingle xmlns='urn:xmpp:jingle:1' action='source-add' sid='nope'/></iq>"));
    let r = h
        .take_sent()
        .into_iter()
        .find(|e| e.attr("id") == Some("x"))
        .unwrap();
    assert_eq!(r.attr("type"), Some("error"));
}

#[test]
fn source_remove_and_terminate_with_restart() {
    let (mut h, sa, sb) = two_in_session();
    h.accept("aaaa", &sa, 100);
    h.accept("bbbb", &sb, 200);
    h.bridge();
    h.take_sent();
    // a removes its audio.
    h.stanza(&format!("<iq xmlns='jabber:client' type='set' id='rm' from='{ROOM}/aaaa' to='{FOCUS}'><jingle xmlns='urn:xmpp:jingle:1' action='source-remove' sid='{sa}'><content name='audio'><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'><source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='100'/></description></content></jingle></iq>"));
    let to_b = h.jingle_to("bbbb");
    assert_eq!(
        to_b[0]
            .get_child("jingle", NS_JINGLE)
            .unwrap()
            .attr("action"),
        Some("source-remove")
    );
    // b's ICE failed: terminate with restart → source-remove to a, endpoint expired, new offer.
    let bsid = h.c.bridge_session_id.clone();
    h.colibri.clear();
    h.stanza(&format!("<iq xmlns='jabber:client' type='set' id='t' from='{ROOM}/bbbb' to='{FOCUS}'><jingle xmlns='urn:xmpp:jingle:1' action='session-terminate' sid='{sb}'><reason><connectivity-error/><text>ICE FAILED</text></reason><bridge-session xmlns='http://jitsi.org/protocol/focus' id='{bsid}' restart='true'/></jingle></iq>"));
    let sent = h.take_sent();
    assert!(
        sent.iter()
            .any(|e| e.attr("id") == Some("t") && e.attr("type") == Some("result"))
    );
    assert!(
        sent.iter()
            .any(|e| e.attr("to") == Some(&*format!("{ROOM}/aaaa"))
                && meetd_xmpp::xml::to_string(e).contains("source-remove"))
    );
    assert!(
        h.colibri
            .iter()
            .any(|(_, m)| m.endpoints.iter().any(|e| e.id == "bbbb" && e.expire))
    );
    h.bridge();
    let re = h.jingle_to("bbbb");
    assert_eq!(re.len(), 1);
    let new_sid = sid_of(&re[0]);
    assert_ne!(new_sid, sb);
    // The re-offer carries a's current sources (video only now).
    assert_eq!(
        json_of(&re[0])["sources"]["aaaa"][0]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // An immediate second restart is rate-limited.
    h.stanza(&format!("<iq xmlns='jabber:client' type='set' id='t2' from='{ROOM}/bbbb' to='{FOCUS}'><jingle xmlns='urn:xmpp:jingle:1' action='session-terminate' sid='{new_sid}'><bridge-session xmlns='http://jitsi.org/protocol/focus' id='{bsid}' restart='true'/></jingle></iq>"));
    let r = h
        .take_sent()
        .into_iter()
        .find(|e| e.attr("id") == Some("t2"))
        .unwrap();
    assert!(meetd_xmpp::xml::to_string(&r).contains("resource-constraint"));
}

#[test]
fn leaving_expires_endpoint_and_single_participant_times_out() {
    let (mut h, sa, sb) = two_in_session();
    h.accept("aaaa", &sa, 100);
    h.accept("bbbb", &sb, 200);
    h.bridge();
    h.take_sent();
    h.stanza(&format!("<presence xmlns='jabber:client' type='unavailable' from='{ROOM}/bbbb' to='{FOCUS}'><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='none'/></x></presence>"));
    assert!(
        h.colibri
            .iter()
            .any(|(_, m)| m.endpoints.iter().any(|e| e.id == "bbbb" && e.expire))
    );
    // No source-remove on a plain leave.
    assert!(h.jingle_to("aaaa").is_empty());
    let deadline = h.c.poll_timeout().expect("single participant timer");
    assert_eq!(deadline, h.now + Duration::from_secs(20));
    h.now = deadline;
    h.colibri.clear();
    h.input(Input::Timeout);
    let t = h.jingle_to("aaaa");
    assert!(meetd_xmpp::xml::to_string(&t[0]).contains("Idle session timeout"));
    assert!(h.colibri.iter().any(|(_, m)| m.expire));
    // The last one leaves: the focus leaves and the conference stops.
    h.stanza(&format!(
        "<presence xmlns='jabber:client' type='unavailable' from='{ROOM}/aaaa' to='{FOCUS}'/>"
    ));
    assert!(h.stopped);
    assert!(
        h.take_sent()
            .iter()
            .any(|e| e.name() == "presence" && e.attr("type") == Some("unavailable"))
    );
}

#[test]
fn owner_succession_and_mute() {
    let (mut h, sa, sb) = two_in_session();
    h.accept("aaaa", &sa, 100);
    h.accept("bbbb", &sb, 200);
    h.bridge();
    h.take_sent();
    // b (not a moderator) may not mute a.
    h.stanza(&format!("<iq xmlns='jabber:client' type='set' id='m1' from='{ROOM}/bbbb' to='{FOCUS}'><mute xmlns='http://jitsi.org/jitmeet/audio' jid='{ROOM}/aaaa'>true</mute></iq>"));
    let r = h
        .take_sent()
        .into_iter()
        .find(|e| e.attr("id") == Some("m1"))
        .unwrap();
    assert!(meetd_xmpp::xml::to_string(&r).contains("not-allowed"));
    // a (owner) mutes b: force-mute at the bridge and a notice to b with the actor.
    h.stanza(&format!("<iq xmlns='jabber:client' type='set' id='m2' from='{ROOM}/aaaa' to='{FOCUS}'><mute xmlns='http://jitsi.org/jitmeet/audio' jid='{ROOM}/bbbb'>true</mute></iq>"));
    let sent = h.take_sent();
    assert!(
        sent.iter()
            .any(|e| e.attr("id") == Some("m2") && e.attr("type") == Some("result"))
    );
    let notice = sent
        .iter()
        .find(|e| e.attr("to") == Some(&*format!("{ROOM}/bbbb")))
        .unwrap();
    assert!(meetd_xmpp::xml::to_string(notice).contains(&format!("actor='{ROOM}/aaaa'")));
    assert!(h.colibri.iter().any(|(_, m)| {
        m.endpoints
            .iter()
            .any(|e| e.force_mute.as_ref().is_some_and(|f| f.audio == Some(true)))
    }));
    // The owner leaves: b is made owner.
    h.stanza(&format!(
        "<presence xmlns='jabber:client' type='unavailable' from='{ROOM}/aaaa' to='{FOCUS}'/>"
    ));
    assert!(h.take_sent().iter().any(|e| {
        meetd_xmpp::xml::to_string(e).contains("affiliation='owner' jid='u2@meet.jitsi'")
    }));
}

#[test]
fn sender_limits_are_published_and_enforced() {
    let mut cfg = FocusConfig::new(FOCUS);
    cfg.max_audio_senders = 1;
    let mut h = Harness::with(cfg);
    h.start();
    h.join("aaaa", 1);
    h.join("bbbb", 2);
    h.bridge();
    let sa = sid_of(&h.jingle_to("aaaa")[0]);
    let sb = sid_of(&h.jingle_to("bbbb")[0]);
    h.accept("aaaa", &sa, 100);
    h.take_sent();
    // a unmutes its microphone: the limit (1) is reached and the focus says so.
    h.stanza(&format!("<presence xmlns='jabber:client' from='{ROOM}/aaaa' to='{FOCUS}'><SourceInfo>{{\"aaaa-a0\":{{\"muted\":false}}}}</SourceInfo><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='owner' role='moderator' jid='u1@meet.jitsi/r1'/></x></presence>"));
    let p = h
        .take_sent()
        .into_iter()
        .find(|e| e.name() == "presence")
        .expect("focus presence update");
    assert!(meetd_xmpp::xml::to_string(&p).contains("key='audio-limit-reached' value='true'"));
    // b's accept carries audio: refused with resource-constraint? No: accept is not source-add;
    // Jicofo limits source-add. b accepts with video only, then tries to add audio.
    h.accept("bbbb", &sb, 200);
    h.take_sent();
    h.stanza(&format!("<iq xmlns='jabber:client' type='set' id='add' from='{ROOM}/bbbb' to='{FOCUS}'><jingle xmlns='urn:xmpp:jingle:1' action='source-add' sid='{sb}'><content name='audio'><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'><source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='777'><parameter name='msid' value='bbbb-audio-2 z'/></source></description></content></jingle></iq>"));
    let r = h
        .take_sent()
        .into_iter()
        .find(|e| e.attr("id") == Some("add"))
        .unwrap();
    assert!(
        meetd_xmpp::xml::to_string(&r).contains("resource-constraint"),
        "{r:?}"
    );
}

#[test]
fn start_muted_from_the_conference_request() {
    let mut h = Harness::new();
    let req = parse(
        "<conference xmlns='http://jitsi.org/protocol/focus' room='r'><property name='startAudioMuted' value='1'/><property name='startVideoMuted' value='5'/></conference>",
    );
    h.c.request_properties(&req);
    h.start();
    h.join("aaaa", 1);
    h.join("bbbb", 2);
    h.bridge();
    // Two participants > 1: audio starts muted, video not (5).
    let si = h.jingle_to("bbbb");
    let sm = si[0]
        .get_child("jingle", NS_JINGLE)
        .unwrap()
        .get_child("startmuted", "http://jitsi.org/jitmeet/start-muted")
        .expect("startmuted");
    assert_eq!(sm.attr("audio"), Some("true"));
    assert_eq!(sm.attr("video"), Some("false"));
}

#[test]
fn bridge_failures_reinvite_or_end_sessions_cleanly() {
    let (mut h, sa, _sb) = two_in_session();
    h.accept("aaaa", &sa, 100);
    // The bridge forgot a's endpoint: a gets a fresh session.
    let (req, _) = h.colibri.pop().unwrap();
    h.colibri.clear();
    h.input(Input::Colibri {
        req,
        result: Err(colibri2::Colibri2Error::UnknownEndpoint { id: "aaaa".into() }),
    });
    let to_a = h.jingle_to("aaaa");
    assert!(
        to_a.iter()
            .any(|e| meetd_xmpp::xml::to_string(e).contains("session-terminate"))
    );
    h.bridge();
    let again = h.jingle_to("aaaa");
    assert!(
        again
            .iter()
            .any(|e| e.get_child("jingle", NS_JINGLE).unwrap().attr("action")
                == Some("session-initiate"))
    );
    // The bridge lost the whole conference on an update: everyone ends cleanly and the
    // focus announces bridgeNotAvailable until a new allocation works.
    let bsid = sid_of(
        again
            .iter()
            .find(|e| meetd_xmpp::xml::to_string(e).contains("session-initiate"))
            .unwrap(),
    );
    h.take_sent();
    h.accept("aaaa", &bsid, 300);
    let (req, _) = h.colibri.pop().unwrap();
    h.colibri.clear();
    h.input(Input::Colibri {
        req,
        result: Err(colibri2::Colibri2Error::ConferenceNotFound {
            meeting_id: "meeting-1".into(),
        }),
    });
    let sent = h.take_sent();
    assert!(
        sent.iter()
            .any(|e| meetd_xmpp::xml::to_string(e).contains("general-error"))
    );
    assert!(
        sent.iter()
            .any(|e| e.name() == "presence" && e.has_child("bridgeNotAvailable", NS_FOCUS))
    );
    // A new allocation follows at once (create again) and clears the flag.
    assert!(h.colibri.iter().any(|(_, m)| m.create));
    h.bridge();
    let sent = h.take_sent();
    assert!(
        sent.iter()
            .any(|e| e.name() == "presence" && !e.has_child("bridgeNotAvailable", NS_FOCUS))
    );
}

/// The bridge pool lost the conference's bridge (docs/colibri2.md §4a): everyone's session
/// ends and a new allocation (a create, on the bridge the pool picks) follows at once, without
/// the bridgeNotAvailable presence that would make the apps give up.
#[test]
fn a_lost_bridge_moves_everyone_to_a_new_one_at_once() {
    let (mut h, sa, sb) = two_in_session();
    h.accept("aaaa", &sa, 100);
    h.accept("bbbb", &sb, 200);
    h.take_sent();
    h.colibri.clear();
    h.input(Input::BridgeLost);
    let sent = h.take_sent();
    let terminated = sent
        .iter()
        .filter(|e| meetd_xmpp::xml::to_string(e).contains("session-terminate"))
        .count();
    assert_eq!(terminated, 2, "both sessions end");
    assert!(
        !sent
            .iter()
            .any(|e| e.name() == "presence" && e.has_child("bridgeNotAvailable", NS_FOCUS)),
        "no bridgeNotAvailable"
    );
    assert!(
        h.colibri.iter().any(|(_, m)| m.create),
        "allocated again at once"
    );
    h.bridge();
    for nick in ["aaaa", "bbbb"] {
        assert!(
            h.jingle_to(nick).iter().any(|e| e
                .get_child("jingle", NS_JINGLE)
                .unwrap()
                .attr("action")
                == Some("session-initiate")),
            "{nick} is invited anew"
        );
    }
    // Without a bridge (before any allocation) it is nothing to do.
    let mut idle = Harness::new();
    idle.start();
    idle.input(Input::BridgeLost);
    assert!(idle.colibri.is_empty());
}

/// A bridge of a conference spread over several is lost (docs/colibri2.md §4b): only its
/// participants get new sessions; the others keep theirs.
#[test]
fn a_lost_bridge_of_a_spread_conference_moves_only_its_participants() {
    let (mut h, sa, sb) = two_in_session();
    h.accept("aaaa", &sa, 100);
    h.accept("bbbb", &sb, 200);
    h.take_sent();
    h.colibri.clear();
    h.input(Input::EndpointsLost(vec!["bbbb".into(), "nobody".into()]));
    let sent = h.take_sent();
    let terminated: Vec<String> = sent
        .iter()
        .filter(|e| meetd_xmpp::xml::to_string(e).contains("session-terminate"))
        .filter_map(|e| e.attr("to").map(str::to_string))
        .collect();
    assert_eq!(
        terminated,
        vec![format!("{ROOM}/bbbb")],
        "only bbbb's session ends"
    );
    assert!(
        !h.colibri.iter().any(|(_, m)| m.create),
        "the conference goes on"
    );
    assert!(
        h.colibri
            .iter()
            .any(|(_, m)| m.endpoints.iter().any(|e| e.id == "bbbb" && e.create)),
        "bbbb is allocated again"
    );
    assert!(
        !h.colibri
            .iter()
            .any(|(_, m)| m.endpoints.iter().any(|e| e.id == "aaaa")),
        "aaaa is left alone"
    );
}

/// A stanza recorded from lib-jitsi-meet (jingle/tests/fixtures, copied from the shared
/// fixtures), re-addressed to this harness: from the participant's occupant JID, with the
/// session's sid.
fn recorded(xml: &str, nick: &str, sid: &str) -> Element {
    let mut iq = parse(xml);
    meetd_xmpp::stanza::set_attr(&mut iq, "from", &format!("{ROOM}/{nick}"));
    meetd_xmpp::stanza::set_attr(&mut iq, "to", FOCUS);
    if let Some(j) = iq.get_child_mut("jingle", NS_JINGLE) {
        meetd_xmpp::stanza::set_attr(j, "sid", sid);
    }
    iq
}

fn reply_to(h: &mut Harness, id: &str) -> Element {
    let sent = h.take_sent();
    let (mine, rest): (Vec<_>, Vec<_>) = sent.into_iter().partition(|e| e.attr("id") == Some(id));
    h.sent = rest;
    mine.into_iter().next().expect("a reply")
}

#[test]
fn recorded_client_stanzas_are_accepted() {
    let (mut h, sa, sb) = two_in_session();
    // a: camera (3 simulcast layers + RTX) and microphone, as lib-jitsi-meet sent it.
    let acc = recorded(
        include_str!("../../tests/fixtures/session-accept-camera-mic.xml"),
        "aaaa",
        &sa,
    );
    let id = acc.attr("id").unwrap().to_string();
    h.input(Input::Stanza(acc));
    assert_eq!(reply_to(&mut h, &id).attr("type"), Some("result"));
    assert_eq!(h.c.sources.get("aaaa").unwrap().sources.len(), 7);
    // b: microphone only, then adds its camera and a screen share.
    let acc = recorded(
        include_str!("../../tests/fixtures/session-accept-mic-only.xml"),
        "bbbb",
        &sb,
    );
    let id = acc.attr("id").unwrap().to_string();
    h.input(Input::Stanza(acc));
    assert_eq!(reply_to(&mut h, &id).attr("type"), Some("result"));
    h.bridge();
    h.take_sent();
    for f in [
        include_str!("../../tests/fixtures/source-add-camera.xml"),
        include_str!("../../tests/fixtures/source-add-desktop.xml"),
    ] {
        let add = recorded(f, "bbbb", &sb);
        let id = add.attr("id").unwrap().to_string();
        h.input(Input::Stanza(add));
        assert_eq!(reply_to(&mut h, &id).attr("type"), Some("result"), "{f}");
        // a hears about it.
        let to_a = h.jingle_to("aaaa");
        assert_eq!(to_a.len(), 1);
        assert_eq!(
            to_a[0]
                .get_child("jingle", NS_JINGLE)
                .unwrap()
                .attr("action"),
            Some("source-add")
        );
    }
    let b = h.c.sources.get("bbbb").unwrap();
    assert!(
        b.sources
            .iter()
            .any(|s| s.video_type == Some(crate::sources::VideoType::Desktop))
    );
    // a's ICE failed: the recorded terminate with restart (its bridge-session id rewritten).
    let mut t = recorded(
        include_str!("../../tests/fixtures/session-terminate-restart.xml"),
        "aaaa",
        &sa,
    );
    let bsid = h.c.bridge_session_id.clone();
    if let Some(bs) = t
        .get_child_mut("jingle", NS_JINGLE)
        .and_then(|j| j.get_child_mut("bridge-session", NS_FOCUS))
    {
        meetd_xmpp::stanza::set_attr(bs, "id", &bsid);
    }
    let id = t.attr("id").unwrap().to_string();
    h.input(Input::Stanza(t));
    assert_eq!(reply_to(&mut h, &id).attr("type"), Some("result"));
    h.bridge();
    let re = h.jingle_to("aaaa");
    assert!(
        re.iter()
            .any(|e| e.get_child("jingle", NS_JINGLE).unwrap().attr("action")
                == Some("session-initiate"))
    );
}

#[test]
fn start_muted_from_room_metadata() {
    let mut h = Harness::new();
    h.start();
    h.stanza(&format!("<message xmlns='jabber:client' from='metadata.meet.jitsi' to='{FOCUS}'><json-message xmlns='http://jitsi.org/jitmeet'>{{\"type\":\"room_metadata\",\"room\":\"{ROOM}\",\"metadata\":{{\"startMuted\":{{\"audio\":false,\"video\":true}}}}}}</json-message></message>"));
    h.join("aaaa", 1);
    h.join("bbbb", 2);
    h.bridge();
    let si = h.jingle_to("aaaa");
    let sm = si[0]
        .get_child("jingle", NS_JINGLE)
        .unwrap()
        .get_child("startmuted", "http://jitsi.org/jitmeet/start-muted")
        .expect("startmuted");
    assert_eq!(sm.attr("audio"), Some("false"));
    assert_eq!(sm.attr("video"), Some("true"));
}

#[test]
fn av_moderation_mutes_others_and_refuses_their_unmute_until_approved() {
    let (mut h, sa, sb) = two_in_session();
    h.accept("aaaa", &sa, 100);
    h.accept("bbbb", &sb, 200);
    h.bridge();
    h.take_sent();
    h.colibri.clear();
    let av = |json: &str| {
        format!(
            "<message xmlns='jabber:client' from='avmoderation.meet.jitsi' to='{FOCUS}'><json-message xmlns='http://jitsi.org/jitmeet'>{json}</json-message></message>"
        )
    };
    // a (the owner) turned audio moderation on: b is muted at the bridge and told; a is not.
    h.stanza(&av(&format!(r#"{{"type":"av_moderation","enabled":true,"room":"{ROOM}","actor":"{ROOM}/aaaa","mediaType":"audio"}}"#)));
    let sent = h.take_sent();
    assert!(sent.iter().any(|e| {
        e.attr("to") == Some(&*format!("{ROOM}/bbbb"))
            && e.get_child("mute", "http://jitsi.org/jitmeet/audio")
                .is_some()
    }));
    assert!(
        !sent
            .iter()
            .any(|e| e.attr("to") == Some(&*format!("{ROOM}/aaaa")))
    );
    let muted: Vec<&str> = h
        .colibri
        .iter()
        .flat_map(|(_, m)| m.endpoints.iter())
        .filter(|e| e.force_mute.as_ref().is_some_and(|f| f.audio == Some(true)))
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(muted, ["bbbb"]);
    let unmute = |id: &str| {
        format!(
            "<iq xmlns='jabber:client' type='set' id='{id}' from='{ROOM}/bbbb' to='{FOCUS}'><mute xmlns='http://jitsi.org/jitmeet/audio' jid='{ROOM}/bbbb'>false</mute></iq>"
        )
    };
    // b tries to unmute: refused.
    h.stanza(&unmute("u1"));
    let r = h
        .take_sent()
        .into_iter()
        .find(|e| e.attr("id") == Some("u1"))
        .unwrap();
    assert!(
        meetd_xmpp::xml::to_string(&r).contains("not-allowed"),
        "{r:?}"
    );
    // a approves b (the whitelist): b's unmute goes through and the bridge lets its audio pass.
    h.stanza(&av(&format!(r#"{{"type":"av_moderation","room":"{ROOM}","whitelists":{{"audio":["{ROOM}/bbbb"]}},"mediaType":"audio"}}"#)));
    h.colibri.clear();
    h.stanza(&unmute("u2"));
    let r = h
        .take_sent()
        .into_iter()
        .find(|e| e.attr("id") == Some("u2"))
        .unwrap();
    assert_eq!(r.attr("type"), Some("result"));
    assert!(h.colibri.iter().any(|(_, m)| m.endpoints.iter().any(|e| {
        e.id == "bbbb"
            && e.force_mute
                .as_ref()
                .is_some_and(|f| f.audio == Some(false))
    })));
}

#[test]
fn a_moderator_starts_and_stops_a_live_stream_through_a_jibri() {
    let (mut h, sa, sb) = two_in_session();
    h.accept("aaaa", &sa, 100);
    h.accept("bbbb", &sb, 200);
    h.bridge();
    h.take_sent();
    let start = |from: &str, id: &str| {
        format!(
            "<iq xmlns='jabber:client' type='set' id='{id}' from='{ROOM}/{from}' to='{ROOM}/focus'><jibri xmlns='http://jitsi.org/protocol/jibri' action='start' recording_mode='stream' streamid='lecture-1'/></iq>"
        )
    };
    // bbbb is no moderator.
    h.stanza(&start("bbbb", "j0"));
    let r = reply_to(&mut h, "j0");
    assert!(meetd_xmpp::xml::to_string(&r).contains("not-allowed"));
    assert!(h.jibri_starts.is_empty());
    // aaaa (owner): handed to a Jibri; the answer waits for it.
    h.stanza(&start("aaaa", "j1"));
    assert!(!h.take_sent().iter().any(|e| e.attr("id") == Some("j1")));
    let req = h.jibri_starts.pop().expect("a start for the Jibri");
    assert_eq!(req.room, ROOM);
    assert_eq!(req.streamid.as_deref(), Some("lecture-1"));
    h.input(Input::JibriStarted {
        session_id: req.session_id.clone(),
        result: Ok("jibribrewery@internal-muc.meet.jitsi/jibri-1".into()),
    });
    let r = reply_to(&mut h, "j1");
    assert_eq!(r.attr("type"), Some("result"));
    assert_eq!(r.attr("from"), Some(FOCUS));
    assert!(h.c.has_jibri("jibribrewery@internal-muc.meet.jitsi/jibri-1"));
    // The Jibri is on: the focus's presence says so, with who started it.
    h.input(Input::JibriStatus {
        jibri: "jibribrewery@internal-muc.meet.jitsi/jibri-1".into(),
        status: jibri::Status {
            status: Some("on".into()),
            ..Default::default()
        },
    });
    let p = h
        .take_sent()
        .into_iter()
        .find(|e| e.name() == "presence")
        .expect("focus presence");
    let st = p
        .get_child("jibri-recording-status", NS_JIBRI)
        .expect("recording status");
    assert_eq!(st.attr("status"), Some("on"));
    assert_eq!(st.attr("session_id"), Some(req.session_id.as_str()));
    assert_eq!(st.attr("initiator"), Some(&*format!("{ROOM}/aaaa")));
    assert!(p.has_child("conference-properties", NS_FOCUS));
    // The owner stops it: the Jibri is told, the room sees off.
    h.stanza(&format!("<iq xmlns='jabber:client' type='set' id='j2' from='{ROOM}/aaaa' to='{ROOM}/focus'><jibri xmlns='http://jitsi.org/protocol/jibri' action='stop' recording_mode='stream'/></iq>"));
    let sent = h.take_sent();
    assert!(
        sent.iter()
            .any(|e| e.attr("id") == Some("j2") && e.attr("type") == Some("result"))
    );
    assert!(sent.iter().any(|e| {
        e.get_child("jibri-recording-status", NS_JIBRI)
            .is_some_and(|s| s.attr("status") == Some("off"))
    }));
    assert_eq!(h.jibri_stops.len(), 1);
}

#[test]
fn a_jibri_browser_is_never_made_owner() {
    let mut cfg = FocusConfig::new(FOCUS);
    cfg.trusted_domains = vec!["hidden.meet.jitsi".into()];
    let mut h = Harness::with(cfg);
    h.start();
    h.take_sent();
    // The recorder joins first (a room being recorded before anyone else came back).
    h.stanza(&format!("<presence xmlns='jabber:client' from='{ROOM}/rec1' to='{FOCUS}'><features><feature var='http://jitsi.org/protocol/jibri'/></features><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='participant' jid='recorder@hidden.meet.jitsi/r'/></x></presence>"));
    let sent = h.take_sent();
    assert!(
        !sent
            .iter()
            .any(|e| meetd_xmpp::xml::to_string(e).contains("affiliation='owner'"))
    );
    // A person joins: they are made owner.
    h.stanza(&format!("<presence xmlns='jabber:client' from='{ROOM}/aaaa' to='{FOCUS}'><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='participant' jid='u1@meet.jitsi/r1'/></x></presence>"));
    assert!(h.take_sent().iter().any(|e| {
        meetd_xmpp::xml::to_string(e).contains("affiliation='owner' jid='u1@meet.jitsi'")
    }));
    // The same feature from an untrusted domain is just a participant.
    let mut h = Harness::with(FocusConfig::new(FOCUS));
    h.start();
    h.take_sent();
    h.stanza(&format!("<presence xmlns='jabber:client' from='{ROOM}/fake' to='{FOCUS}'><features><feature var='http://jitsi.org/protocol/jibri'/></features><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='participant' jid='x@meet.jitsi/r'/></x></presence>"));
    assert!(h.take_sent().iter().any(|e| {
        meetd_xmpp::xml::to_string(e).contains("affiliation='owner' jid='x@meet.jitsi'")
    }));
}

#[test]
fn a_moderators_dial_goes_to_a_jigasi_and_others_are_refused() {
    let (mut h, _, _) = two_in_session();
    h.take_sent();
    let dial = |from: &str, id: &str, room: &str| {
        format!(
            "<iq xmlns='jabber:client' type='set' id='{id}' from='{ROOM}/{from}' to='{ROOM}/focus'><dial xmlns='urn:xmpp:rayo:1' to='+4930123' from='fromnumber'><header name='JvbRoomName' value='{room}'/></dial></iq>"
        )
    };
    h.stanza(&dial("bbbb", "d1", ROOM));
    assert!(meetd_xmpp::xml::to_string(&reply_to(&mut h, "d1")).contains("forbidden"));
    h.stanza(&dial("aaaa", "d2", "elsewhere@muc.meet.jitsi"));
    assert!(meetd_xmpp::xml::to_string(&reply_to(&mut h, "d2")).contains("forbidden"));
    assert!(h.dials.is_empty());
    h.stanza(&dial("aaaa", "d3", ROOM));
    assert_eq!(h.dials.len(), 1);
    assert_eq!(h.dials[0].attr("id"), Some("d3"));
}

#[test]
fn a_native_live_stream_brings_the_streamer_in_and_puts_a_lone_teacher_on_the_bridge() {
    const STREAMER: &str = "live-stream@hidden.meet.jitsi/meetd";
    let mut cfg = FocusConfig::new(FOCUS);
    cfg.streamer_jid = Some(STREAMER.into());
    let mut h = Harness::with(cfg);
    h.start();
    h.join("aaaa", 1);
    h.take_sent();
    assert!(h.jingle_to("aaaa").is_empty(), "alone: no session yet");
    h.stanza(&format!(
        "<iq xmlns='jabber:client' type='set' id='j1' from='{ROOM}/aaaa' to='{ROOM}/focus'><jibri xmlns='http://jitsi.org/protocol/jibri' action='start' recording_mode='stream' streamid='lecture-1'/></iq>"
    ));
    let req = h.jibri_starts.pop().expect("a start");
    h.input(Input::JibriStarted {
        session_id: req.session_id.clone(),
        result: Ok(crate::live_stream::NATIVE.into()),
    });
    let sent = h.take_sent();
    assert!(
        sent.iter()
            .any(|e| e.attr("id") == Some("j1") && e.attr("type") == Some("result"))
    );
    assert!(
        !sent.iter().any(|e| e.attr("from") == Some(STREAMER)),
        "not before it is on"
    );
    // The lone teacher goes on the bridge at once: the bridge feeds the encoder, whose first
    // output turns the session on.
    h.bridge();
    assert_eq!(h.jingle_to("aaaa").len(), 1, "the teacher is invited");
    // The encoder runs: the streamer joins with the session, as a Jibri's browser would.
    h.input(Input::JibriStatus {
        jibri: crate::live_stream::NATIVE.into(),
        status: jibri::Status {
            status: Some("on".into()),
            ..Default::default()
        },
    });
    let sent = h.take_sent();
    let join = sent
        .iter()
        .find(|e| e.name() == "presence" && e.attr("from") == Some(STREAMER))
        .expect("the streamer joins");
    assert_eq!(join.attr("type"), None);
    // lib-jitsi-meet needs a hidden occupant's features when it leaves.
    assert!(join.get_child("features", NS_CLIENT).is_some());
    assert_eq!(
        join.get_child("session_id", NS_CLIENT).map(|e| e.text()),
        Some(req.session_id.clone())
    );
    assert_eq!(
        join.get_child("mode", NS_CLIENT)
            .map(|e| e.text())
            .as_deref(),
        Some("stream")
    );
    assert!(
        sent.iter().any(|e| e
            .get_child("jibri-recording-status", NS_JIBRI)
            .is_some_and(|s| s.attr("status") == Some("on"))),
        "{sent:?}"
    );
    // The streamer's own presence in the room is no participant: nobody invites it.
    h.stanza(&format!(
        "<presence xmlns='jabber:client' from='{ROOM}/meetd-live-stream' to='{FOCUS}'><x xmlns='http://jabber.org/protocol/muc#user'><item jid='{STREAMER}' affiliation='owner' role='moderator'/></x></presence>"
    ));
    assert!(h.jingle_to("meetd-live-stream").is_empty());
    // Stopped: the encoder is told, the streamer leaves.
    h.stanza(&format!("<iq xmlns='jabber:client' type='set' id='j2' from='{ROOM}/aaaa' to='{ROOM}/focus'><jibri xmlns='http://jitsi.org/protocol/jibri' action='stop' recording_mode='stream'/></iq>"));
    assert_eq!(h.jibri_stops.len(), 1);
    assert!(
        h.take_sent()
            .iter()
            .any(|e| e.attr("from") == Some(STREAMER) && e.attr("type") == Some("unavailable"))
    );
}

/// docs/visitors.md: an occupant of the visitors' domain is invited to receive only (its
/// endpoint marked `muc-role='visitor'`), never made owner, its sources refused, and counted
/// in the focus's `visitor-count`.
#[test]
fn a_visitor_receives_only_and_is_counted() {
    let mut cfg = FocusConfig::new(FOCUS);
    cfg.visitor_domain = Some("v1.meet.jitsi".into());
    cfg.visitor_vnode = Some("v1".into());
    let mut h = Harness::with(cfg);
    h.start();
    // The visitor comes first: it does not become the owner.
    h.join_with("vvvv", "<x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='visitor' jid='anon@v1.meet.jitsi/x'/></x>");
    let sent = h.take_sent();
    let count = |sent: &[Element]| {
        sent.iter()
            .filter_map(|e| e.get_child("conference-properties", NS_FOCUS))
            .flat_map(|c| c.children())
            .filter(|p| p.attr("key") == Some("visitor-count"))
            .filter_map(|p| p.attr("value").map(str::to_string))
            .last()
    };
    assert_eq!(count(&sent).as_deref(), Some("1"));
    assert!(
        !sent.iter().any(
            |e| meetd_xmpp::xml::to_string(e).contains("affiliation='owner'")
                || meetd_xmpp::xml::to_string(e).contains("affiliation=\"owner\"")
        ),
        "no owner for a visitor"
    );
    h.join("aaaa", 1);
    h.take_sent();
    let roles: Vec<_> = h
        .created_endpoints()
        .into_iter()
        .map(|e| (e.id, e.muc_role))
        .collect();
    assert!(
        roles.contains(&("vvvv".to_string(), Some("visitor".to_string()))),
        "{roles:?}"
    );
    let sv = sid_of(&h.jingle_to("vvvv")[0]);
    // Its session-accept with sources: refused.
    h.stanza(&accept_xml("vvvv", &sv, 300));
    let reply = h
        .take_sent()
        .into_iter()
        .find(|e| e.attr("id") == Some("acc"))
        .expect("reply");
    assert_eq!(reply.attr("type"), Some("error"));
}

/// docs/visitors.md §1: with `visitors_after`, the meeting is full of participants (and
/// newcomers go to the visitors' node) once it has that many, visitors not counted.
#[test]
fn a_meeting_is_full_of_participants_at_visitors_after() {
    let mut cfg = FocusConfig::new(FOCUS);
    cfg.visitor_domain = Some("v1.meet.jitsi".into());
    cfg.visitor_vnode = Some("v1".into());
    cfg.visitors_after = 2;
    let mut h = Harness::with(cfg);
    h.start();
    h.join("aaaa", 1);
    assert!(!h.c.full_of_participants());
    h.stanza(&format!("<presence xmlns='jabber:client' from='{ROOM}/vvvv' to='{FOCUS}'><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='visitor' jid='anon@v1.meet.jitsi/x'/></x></presence>"));
    assert!(!h.c.full_of_participants(), "a visitor does not count");
    h.join("bbbb", 2);
    assert!(h.c.full_of_participants());
    // Off by default.
    let mut h = Harness::new();
    h.start();
    h.join("aaaa", 1);
    h.join("bbbb", 2);
    assert!(!h.c.full_of_participants());
}

/// docs/colibri2.md §4c: the region a participant's app says it is in (config.js
/// `deploymentInfo.userRegion`, in its presence) goes with its endpoint to the bridge pool.
#[test]
fn a_participants_region_goes_with_its_endpoint() {
    let mut h = Harness::new();
    h.start();
    h.join_with("cccc", "<jitsi_participant_region>campus-b</jitsi_participant_region><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='participant' jid='u3@meet.jitsi/r3'/></x>");
    h.join("aaaa", 1);
    let regions: Vec<_> = h
        .created_endpoints()
        .into_iter()
        .map(|e| (e.id, e.region))
        .collect();
    assert!(
        regions.contains(&("cccc".to_string(), Some("campus-b".to_string())))
            && regions.iter().all(|(id, r)| id == "cccc" || r.is_none()),
        "{regions:?}"
    );
}
