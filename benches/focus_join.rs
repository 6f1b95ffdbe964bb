//! Focus cost per join: N participants join one conference one after another (presence,
//! disco#info answer, bridge allocation, session-initiate, session-accept with a simulcast
//! camera and a microphone, source propagation to everyone already there), all through the
//! sans-IO conference actor with an instant in-process bridge. Reports CPU time per join and
//! joins per second, next to the floor of merely parsing the same stanzas.
//!
//! `cargo bench --bench focus_join [-- --participants 50 --rounds 20]`

use std::time::{Duration, Instant};

use meetd_colibri::service::{BridgeConfig, ColibriService};
use meetd_jingle::conference::{Conference, FocusConfig, Input, Output};
use meetd_xmpp::Element;

const ROOM: &str = "bench@muc.meet.jitsi";
const FOCUS: &str = "focus@auth.meet.jitsi/focus";

fn parse(s: &str) -> Element {
    meetd_xmpp::xml::parse_document(s.as_bytes(), &Default::default()).expect("bench XML")
}

use meetd_jingle::offer::WEB_CLIENT_FEATURES as FEATURES;

fn presence(nick: &str, n: usize) -> String {
    format!(
        "<presence xmlns='jabber:client' from='{ROOM}/{nick}' to='{FOCUS}'><stats-id>s{n}</stats-id><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='participant' jid='u{n}@meet.jitsi/r{n}'/></x></presence>"
    )
}

fn disco_result(nick: &str, id: &str) -> String {
    let f: String = FEATURES
        .iter()
        .map(|v| format!("<feature var='{v}'/>"))
        .collect();
    format!(
        "<iq xmlns='jabber:client' type='result' id='{id}' from='{ROOM}/{nick}' to='{FOCUS}'><query xmlns='http://jabber.org/protocol/disco#info'>{f}</query></iq>"
    )
}

fn accept(nick: &str, sid: &str, b: u32) -> String {
    let src = |ssrc: u32, name: &str, msid: &str| {
        format!(
            "<source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='{ssrc}' name='{name}' videoType='camera'><parameter name='msid' value='{msid}'/></source>"
        )
    };
    let vm = format!("{nick}-video-1 v");
    let v = format!("{nick}-v0");
    let video: String = (1..=6).map(|i| src(b + i, &v, &vm)).collect();
    format!(
        "<iq xmlns='jabber:client' type='set' id='acc' from='{ROOM}/{nick}' to='{FOCUS}'><jingle xmlns='urn:xmpp:jingle:1' action='session-accept' sid='{sid}'>\
         <content name='audio'><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'><source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='{b}' name='{nick}-a0'><parameter name='msid' value='{nick}-audio-1 a'/></source></description>\
         <transport xmlns='urn:xmpp:jingle:transports:ice-udp:1' ufrag='cu' pwd='cpwdcpwdcpwdcpwdcpwdcpwd'><fingerprint xmlns='urn:xmpp:jingle:apps:dtls:0' hash='sha-256' setup='active'>CC:DD</fingerprint></transport></content>\
         <content name='video'><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='video'>{video}\
         <ssrc-group xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' semantics='SIM'><source ssrc='{v1}'/><source ssrc='{v2}'/><source ssrc='{v3}'/></ssrc-group>\
         <ssrc-group xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' semantics='FID'><source ssrc='{v1}'/><source ssrc='{r1}'/></ssrc-group>\
         <ssrc-group xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' semantics='FID'><source ssrc='{v2}'/><source ssrc='{r2}'/></ssrc-group>\
         <ssrc-group xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' semantics='FID'><source ssrc='{v3}'/><source ssrc='{r3}'/></ssrc-group>\
         </description></content></jingle></iq>",
        v1 = b + 1,
        v2 = b + 2,
        v3 = b + 3,
        r1 = b + 4,
        r2 = b + 5,
        r3 = b + 6
    )
}

struct Run {
    conf: Conference,
    bridge: std::sync::Arc<ColibriService>,
    sent: Vec<Element>,
    stanzas_out: usize,
}

impl Run {
    fn pump(&mut self, now: Instant) {
        loop {
            let out = self.conf.take_output();
            if out.is_empty() {
                return;
            }
            for o in out {
                match o {
                    Output::Send(e) => {
                        self.stanzas_out += 1;
                        self.sent.push(e);
                    }
                    Output::Colibri { req, modify } => {
                        let result = self.bridge.handle(&modify);
                        self.conf.handle(Input::Colibri { req, result }, now);
                    }
                    _ => {}
                }
            }
        }
    }

    fn feed(&mut self, s: &str, now: Instant) {
        self.conf.handle(Input::Stanza(parse(s)), now);
        self.pump(now);
    }

    /// The last stanza sent to `to` whose payload is `child` (with `action`, if given).
    fn take(&mut self, to: &str, child: &str, action: Option<&str>) -> Option<Element> {
        let i = self.sent.iter().rposition(|e| {
            e.attr("to") == Some(to)
                && e.children()
                    .any(|c| c.name() == child && (action.is_none() || c.attr("action") == action))
        })?;
        Some(self.sent.remove(i))
    }
}

fn bridge() -> std::sync::Arc<ColibriService> {
    ColibriService::new(BridgeConfig {
        id: "jvb1".into(),
        media_port: 10000,
        tcp_ports: Vec::new(),
        advertise_ips: vec!["127.0.0.1".parse().expect("ip")],
        ws_base: "ws://127.0.0.1:8080".into(),
        dtls_fingerprint: "AA:BB".into(),
        max_conferences: 10,
        max_endpoints_per_conference: 1000,
    })
}

/// One conference with `n` participants; returns (time for all joins, stanzas sent by the focus).
fn one_round(n: usize) -> (Duration, usize) {
    let now = Instant::now();
    let mut cfg = FocusConfig::new(FOCUS);
    cfg.source_limits.max_ssrcs = 20;
    let mut r = Run {
        conf: Conference::new(ROOM, cfg, now, 1),
        bridge: bridge(),
        sent: Vec::new(),
        stanzas_out: 0,
    };
    r.pump(now);
    r.feed(&format!("<presence xmlns='jabber:client' from='{ROOM}/focus' to='{FOCUS}'><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='owner' role='moderator' jid='{FOCUS}'/><status code='110'/></x></presence>"), now);
    let disco = r.take(ROOM, "query", None).expect("room disco");
    let id = disco.attr("id").unwrap_or_default().to_string();
    r.feed(&format!("<iq xmlns='jabber:client' type='result' id='{id}' from='{ROOM}' to='{FOCUS}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"), now);
    let start = Instant::now();
    for i in 0..n {
        let nick = format!("{i:08x}");
        let to = format!("{ROOM}/{nick}");
        r.feed(&presence(&nick, i), now);
        let d = r.take(&to, "query", None).expect("participant disco");
        let id = d.attr("id").unwrap_or_default().to_string();
        r.feed(&disco_result(&nick, &id), now);
        // From the second participant on, everyone present has an offer.
        if i == 0 {
            continue;
        }
        let starts: Vec<(String, String)> = (0..=i)
            .filter_map(|k| {
                let to = format!("{ROOM}/{k:08x}");
                let si = r.take(&to, "jingle", Some("session-initiate"))?;
                let sid = si.children().next()?.attr("sid")?.to_string();
                Some((format!("{k:08x}"), sid))
            })
            .collect();
        for (nick, sid) in starts {
            let base = 1000 + 10 * u32::from_str_radix(&nick, 16).unwrap_or(0);
            r.feed(&accept(&nick, &sid, base), now);
        }
        r.sent.clear();
    }
    let t = start.elapsed();
    assert_eq!(r.conf.endpoints_with_sources(), n, "every accept was taken");
    (t, r.stanzas_out)
}

/// The floor: parsing the same inbound stanzas, nothing else.
fn parse_floor(n: usize) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        let nick = format!("{i:08x}");
        std::hint::black_box(parse(&presence(&nick, i)));
        std::hint::black_box(parse(&disco_result(&nick, "x")));
        std::hint::black_box(parse(&accept(&nick, "sid", 1000 + 10 * i as u32)));
    }
    start.elapsed()
}

fn main() {
    let mut participants = 50usize;
    let mut rounds = 20usize;
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--participants" => {
                participants = args
                    .get(i + 1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(participants);
                i += 1;
            }
            "--rounds" => {
                rounds = args
                    .get(i + 1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(rounds);
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    // Warm up.
    one_round(participants);
    let mut total = Duration::ZERO;
    let mut stanzas = 0;
    for _ in 0..rounds {
        let (t, s) = one_round(participants);
        total += t;
        stanzas += s;
    }
    let mut floor = Duration::ZERO;
    for _ in 0..rounds {
        floor += parse_floor(participants);
    }
    let joins = (participants * rounds) as f64;
    let per_join = total.as_secs_f64() / joins;
    println!(
        "focus_join: {participants} participants per conference, {rounds} rounds, single thread"
    );
    println!(
        "  CPU per join (incl. offers to all and source-add to everyone present): {:.3} ms   (goal < 2 ms)",
        per_join * 1e3
    );
    println!("  joins per second (one core): {:.0}", 1.0 / per_join);
    println!(
        "  stanzas emitted by the focus per join: {:.1}",
        stanzas as f64 / joins
    );
    println!(
        "  floor (parsing the joiner's own stanzas only): {:.3} ms per join; ratio {:.1}x",
        floor.as_secs_f64() / joins * 1e3,
        total.as_secs_f64() / floor.as_secs_f64().max(1e-9)
    );
}
