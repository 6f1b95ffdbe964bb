//! Fuzz targets for meetd's parsers (docs/fuzzing.md).
//!
//! Each target is a plain function over arbitrary bytes that drives the real parser (and,
//! where it is sans-IO, the state machine behind it) the way the server does. It must not
//! panic on any input: parse errors are expected and ignored. The only panics are the
//! assertions below on what must hold for *every* input (for instance: what the server
//! serialises from parsed input parses again); such a panic is a bug in meetd.
//!
//! `src/bin/<target>.rs` wraps each function for afl (`fuzz/run.sh`); `tests/corpus.rs`
//! replays `corpus/<target>/*` through the same functions under plain `cargo test`.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use meetd_colibri::channel::{ChannelHub, Effect};
use meetd_colibri::colibri2::{ConferenceModified, ConferenceModify, Reason};
use meetd_colibri::media::srtp::{MasterKeys, Srtp};
use meetd_colibri::rtp::payload::{self, VideoCodec};
use meetd_colibri::rtp::{self, ExtIds, ExtOut, RtpOut, rtcp};
use meetd_colibri::service::{BridgeConfig, ColibriService};
use meetd_jingle::sources::{ConferenceSourceMap, EndpointSourceSet, NS_JINGLE, SourceLimits};
use meetd_xmpp::Element;
use meetd_xmpp::bosh::{self, Action, BoshConfig, BoshSession, CreateRequest};
use meetd_xmpp::sasl::{self, Mechanism, SaslServer, ScramHash, Step, StoredCredentials};
use meetd_xmpp::xml::{self, StreamEvent, StreamParser, XmlLimits};
use minidom::Node;
use str0m::crypto::dtls::SrtpProfile;

mod focus;

/// Inputs longer than this are ignored, so that every run stays short.
pub const MAX_INPUT: usize = 64 * 1024;

/// A fuzz target: any bytes in, nothing out, never a panic.
pub type Target = fn(&[u8]);

/// Every target by name: the name of its `src/bin` harness and of its `corpus/` directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("xml_stream", xml_stream),
    ("bosh_body", bosh_body),
    ("sasl", sasl),
    ("jingle", jingle),
    ("colibri2", colibri2),
    ("bridge_channel", bridge_channel),
    ("stun", stun),
    ("rtp_packet", rtp_packet),
    ("rtcp", rtcp),
    ("srtp", srtp),
];

/// Splits off the first byte, which the targets use as flags; `None` for empty or oversized
/// input.
fn control(data: &[u8]) -> Option<(u8, &[u8])> {
    if data.len() > MAX_INPUT {
        return None;
    }
    let (&ctl, rest) = data.split_first()?;
    Some((ctl, rest))
}

/// Limits generous enough for anything the server itself serialised.
const REPARSE: XmlLimits = XmlLimits {
    max_stanza_bytes: 16 * 1024 * 1024,
    max_depth: 256,
};

/// What meetd writes out must be XML that parses again into the same tree (names,
/// namespaces, attributes, text); prefixes and the order of declarations may differ.
///
/// Not checked for a root in no namespace (`<x xmlns=''/>`): minidom writes it without the
/// `xmlns=''` and refuses to parse an element without a namespace, so such a root never
/// round-trips. meetd sends none: a stanza it routes is in `jabber:client`.
fn assert_reparses(el: &Element) -> Element {
    if el.ns().is_empty() {
        return el.clone();
    }
    let text = xml::to_string(el);
    let again = match xml::parse_document(text.as_bytes(), &REPARSE) {
        Ok(e) => e,
        Err(e) => panic!("serialised element does not parse ({e}): {text}"),
    };
    assert!(
        same_tree(el, &again),
        "serialise-and-parse changed the element: {el:?} became {again:?} via {text}"
    );
    again
}

/// One piece of an element's content, with adjacent text joined and empty text dropped
/// (the serialisation cannot tell those apart).
enum Content<'a> {
    Text(String),
    Element(&'a Element),
}

fn content(el: &Element) -> Vec<Content<'_>> {
    let mut out = Vec::new();
    for node in el.nodes() {
        match node {
            Node::Element(e) => out.push(Content::Element(e)),
            Node::Text(t) if t.is_empty() => {}
            Node::Text(t) => match out.last_mut() {
                Some(Content::Text(prev)) => prev.push_str(t),
                _ => out.push(Content::Text(t.clone())),
            },
        }
    }
    out
}

fn same_tree(a: &Element, b: &Element) -> bool {
    if a.name() != b.name() || a.ns() != b.ns() || !a.attrs().eq(b.attrs()) {
        return false;
    }
    let (x, y) = (content(a), content(b));
    x.len() == y.len()
        && x.iter().zip(&y).all(|pair| match pair {
            (Content::Text(s), Content::Text(t)) => s == t,
            (Content::Element(e), Content::Element(f)) => same_tree(e, f),
            _ => false,
        })
}

/// `text` must be one well-formed document (a BOSH response body).
fn assert_document(text: &str) -> Element {
    match xml::parse_document(text.as_bytes(), &REPARSE) {
        Ok(e) => e,
        Err(e) => panic!("generated document does not parse ({e}): {text}"),
    }
}

/// Work a process does once, done before afl's fork server starts (each `src/bin` harness
/// calls it before `afl::fuzz!`), so that no input is charged for it: the first use of the
/// system random generator costs aws-lc about 50 ms of entropy gathering, which made afl
/// save an ordinary SCRAM exchange as a hang (20 ms limit).
pub fn warm_up() {
    use aws_lc_rs::rand::{SecureRandom, SystemRandom};
    let mut b = [0u8; 16];
    let _ = SystemRandom::new().fill(&mut b);
    sasl::set_unknown_user_secret(b"meetd-fuzz");
}

// ---------------------------------------------------------------------------------------
// xml_stream

/// The XMPP XML framing (xmpp/src/xml.rs): the input as one document (WebSocket frame) and
/// as a TCP stream fed to [`StreamParser`] in chunks.
///
/// First byte: bits 0-5 the chunk size (0: everything at once), bit 6 tight limits
/// (512-byte stanzas, depth 4), bit 7 restart the stream after an `<auth/>` stanza as the
/// session does after SASL success.
pub fn xml_stream(data: &[u8]) {
    let Some((ctl, data)) = control(data) else {
        return;
    };
    let limits = if ctl & 0x40 != 0 {
        XmlLimits {
            max_stanza_bytes: 512,
            max_depth: 4,
        }
    } else {
        XmlLimits::default()
    };
    if let Ok(el) = xml::parse_document(data, &limits) {
        assert_reparses(&el);
    }

    let chunk = match usize::from(ctl & 0x3f) {
        0 => data.len().max(1),
        n => n,
    };
    let mut parser = StreamParser::new(limits);
    let mut out = Vec::new();
    for piece in data.chunks(chunk) {
        // On error the stream is dead: the session closes it.
        if parser.feed(piece, &mut out).is_err() {
            break;
        }
        let mut restart = false;
        for ev in out.drain(..) {
            match ev {
                StreamEvent::Stanza(el) => {
                    assert_reparses(&el);
                    restart |= ctl & 0x80 != 0 && el.name() == "auth";
                }
                StreamEvent::Open(header) => {
                    let _ = header.to.as_deref().map(str::len);
                }
                StreamEvent::Close => {}
            }
        }
        if restart {
            parser.reset();
        }
        parser.shrink();
    }
}

// ---------------------------------------------------------------------------------------
// bosh_body

/// The HTTP glue's limits for a BOSH body (xmpp/src/http_bind.rs with default limits).
const BOSH_LIMITS: XmlLimits = XmlLimits {
    max_stanza_bytes: 512 * 1024,
    max_depth: 33,
};

/// BOSH (xmpp/src/bosh.rs): a sequence of POST bodies, separated by 0xff bytes (never in
/// UTF-8, so never inside a body that parses). The first one creates the session as
/// `http_bind` does; later ones go to [`BoshSession::request`]. Each body starts with one byte
/// of flags for what happens before it (ignored on the first): bit 0 time passes (beyond `wait`), bit 1 the previous HTTP request goes away, bit 2
/// the XMPP session pushes a stanza, bit 3 the session is closed after it, bits 4-7 how far
/// the clock moves (seconds).
///
/// Every response body must be a well-formed `<body/>`.
pub fn bosh_body(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let mut bodies = data.split(|&b| b == 0xff);
    let Some(first) = bodies.next() else {
        return;
    };
    let first = first.get(1..).unwrap_or_default();
    let Ok(el) = xml::parse_document(first, &BOSH_LIMITS) else {
        return;
    };
    if el.attr("sid").is_some() {
        // An unknown sid: the glue answers item-not-found without a session.
        assert_document(&bosh::terminal_body("item-not-found"));
        return;
    }
    let create = match CreateRequest::parse(&el) {
        Ok(c) => c,
        Err(e) => {
            assert_document(&bosh::terminal_body(e.condition()));
            let _ = bosh::legacy_status(e.condition());
            return;
        }
    };
    let start = Instant::now();
    let mut now = start;
    let cfg = BoshConfig::default();
    let (mut session, acts) = BoshSession::create(
        &cfg,
        "sid-1".into(),
        create.to.clone(),
        false,
        0,
        &create,
        now,
    );
    check_bosh(&acts);
    // The XMPP session answers the stream open with its features.
    let acts = session.push(
        "<stream:features xmlns='jabber:client'><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>ANONYMOUS</mechanism></mechanisms></stream:features>".into(),
        now,
    );
    check_bosh(&acts);

    let mut req = 0u64;
    for body in bodies {
        let Some((&ops, body)) = body.split_first() else {
            continue;
        };
        let mut acts = Vec::new();
        now += Duration::from_secs(u64::from(ops >> 4));
        if ops & 1 != 0 {
            now += cfg.max_wait + Duration::from_secs(1);
        }
        if session.poll_timeout().is_some_and(|t| t <= now) {
            acts.extend(session.handle_timeout(now));
        }
        if ops & 2 != 0 {
            acts.extend(session.request_gone(req, now));
        }
        if ops & 4 != 0 {
            acts.extend(session.push(
                "<message xmlns='jabber:client'><body>hi &amp; bye</body></message>".into(),
                now,
            ));
        }
        req += 1;
        match xml::parse_document(body, &BOSH_LIMITS) {
            Ok(el) => acts.extend(session.request(req, &el, now)),
            Err(_) => {
                assert_document(&bosh::terminal_body("bad-request"));
            }
        }
        if ops & 8 != 0 {
            acts.extend(session.close(
                Some("remote-stream-error"),
                Some("<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>".into()),
                now,
            ));
        }
        // What the XMPP session does with what it was handed.
        let mut replies = Vec::new();
        for a in &acts {
            match a {
                Action::Deliver(els) => {
                    for e in els {
                        assert_reparses(e);
                    }
                    replies.push("<iq xmlns='jabber:client' type='result' id='x'/>");
                }
                Action::Restart => replies.push("<stream:features xmlns='jabber:client'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"),
                _ => {}
            }
        }
        for r in replies {
            acts.extend(session.push(r.into(), now));
        }
        check_bosh(&acts);
        let _ = session.is_closed();
    }
    // Let every deadline pass, as the timer task would.
    for _ in 0..4 {
        match session.poll_timeout() {
            Some(t) => check_bosh(&session.handle_timeout(t.max(now))),
            None => break,
        }
    }
}

fn check_bosh(acts: &[Action]) {
    for a in acts {
        match a {
            Action::Respond { body, .. } | Action::Fail { body, .. } => {
                let el = assert_document(body);
                assert!(el.is("body", bosh::NS_HTTPBIND), "not a <body/>: {body}");
            }
            Action::Deliver(_) | Action::Restart | Action::Terminated | Action::Expired => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// sasl

const SCRAM_PASSWORD: &str = "pencil";
/// Few iterations: the harness derives the client proof on every run.
const SCRAM_ITERATIONS: u32 = 2;

/// The fixed account the SCRAM and PLAIN exchanges authenticate against.
fn account(broken: bool) -> StoredCredentials {
    let mut c = StoredCredentials {
        sha1: sasl::derive_scram(
            ScramHash::Sha1,
            SCRAM_PASSWORD,
            b"salt-of-sha1",
            SCRAM_ITERATIONS,
        ),
        sha256: sasl::derive_scram(
            ScramHash::Sha256,
            SCRAM_PASSWORD,
            b"salt-of-sha256",
            SCRAM_ITERATIONS,
        ),
    };
    if broken {
        // A damaged database row: must fail cleanly, never panic.
        c.sha1.iterations = 0;
        c.sha256.salt.clear();
    }
    c
}

/// The server side of SASL (xmpp/src/sasl.rs). Messages are separated by 0xff bytes (never
/// in UTF-8): the initial response, then one `<response/>` per challenge. First byte: bits
/// 0-1 the mechanism, bit 2 the messages are base64 `<auth/>`/`<response/>` text (otherwise
/// raw payloads), bit 3 the user does not exist, bit 4 the stored credentials are unusable,
/// bit 5 no initial response, bit 6 abort at the end.
///
/// In raw client-final messages the harness fills in, like a real client: `%r` the server
/// nonce, `%c` the base64 GS2 header, and a final `p=%p` the correct proof for the password
/// "pencil", so that the whole SCRAM exchange can succeed.
pub fn sasl(data: &[u8]) {
    let Some((ctl, rest)) = control(data) else {
        return;
    };
    // A fixed secret for fake credentials (first call wins; later ones change nothing).
    sasl::set_unknown_user_secret(b"meetd-fuzz");

    let mut parts = rest.split(|&b| b == 0xff);
    for p in parts.clone() {
        if let Ok(t) = std::str::from_utf8(p) {
            let _ = sasl::decode_auth_payload(t);
            let _ = sasl::decode_response_payload(t);
        }
    }
    let mech = Mechanism::ALL[usize::from(ctl & 3)];
    let _ = Mechanism::from_name(mech.name());
    let encoded = ctl & 4 != 0;
    let known = ctl & 8 == 0;
    let broken = ctl & 16 != 0;

    let initial = if ctl & 32 != 0 {
        None
    } else {
        let p = parts.next().unwrap_or_default();
        if encoded {
            let Ok(t) = std::str::from_utf8(p) else {
                return;
            };
            match sasl::decode_auth_payload(t) {
                Ok(v) => v,
                Err(f) => {
                    let _ = f.condition();
                    return;
                }
            }
        } else {
            Some(p.to_vec())
        }
    };
    let client_first = initial.clone();
    let (mut server, mut step) = SaslServer::start(mech, initial.as_deref());
    let mut first = client_first;
    let mut server_first: Option<String> = None;
    // Each state moves on or ends; a handful of steps covers every exchange.
    for _ in 0..8 {
        let next = match &step {
            Step::Challenge(c) => {
                if !c.is_empty() {
                    server_first = String::from_utf8(c.clone()).ok();
                }
                let Some(p) = parts.next() else {
                    break;
                };
                let msg = if encoded {
                    let Ok(t) = std::str::from_utf8(p) else {
                        break;
                    };
                    match sasl::decode_response_payload(t) {
                        Ok(v) => v,
                        Err(_) => break,
                    }
                } else {
                    let hash = mech.scram_hash();
                    match (hash, &first, &server_first) {
                        (Some(h), Some(f), Some(sf)) => fill_client_final(h, f, sf, p),
                        _ => p.to_vec(),
                    }
                };
                if server_first.is_none() {
                    first = Some(msg.clone());
                }
                server.response(&msg)
            }
            Step::NeedCredentials { username } => {
                assert!(!username.is_empty() && username.len() <= 1023);
                server.credentials(known.then(|| account(broken)))
            }
            Step::Success { .. } | Step::Failure(_) => {
                assert!(server.is_done());
                break;
            }
        };
        step = next;
    }
    if let Step::Failure(f) = &step {
        let _ = f.condition();
    }
    if ctl & 64 != 0 {
        assert_eq!(server.abort(), Step::Failure(sasl::SaslFailure::Aborted));
    }
    let _ = server.mechanism();
}

/// A client-final message with the `%r`, `%c` and `%p` placeholders filled in.
fn fill_client_final(
    hash: ScramHash,
    client_first: &[u8],
    server_first: &str,
    msg: &[u8],
) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(msg) else {
        return msg.to_vec();
    };
    let Ok(first) = std::str::from_utf8(client_first) else {
        return msg.to_vec();
    };
    let attr = |name: &str| {
        server_first
            .split(',')
            .find_map(|a| a.strip_prefix(name))
            .unwrap_or("")
    };
    // GS2 header: everything up to the second comma of client-first.
    let gs2_len = first
        .match_indices(',')
        .nth(1)
        .map_or(first.len(), |(i, _)| i + 1);
    let bare = &first[gs2_len..];
    let text = text
        .replace("%r", attr("r="))
        .replace("%c", &B64.encode(&first.as_bytes()[..gs2_len]));
    let Some(without_proof) = text.strip_suffix(",p=%p") else {
        return text.into_bytes();
    };
    let proof = client_proof(
        hash,
        attr("s="),
        attr("i="),
        &format!("{bare},{server_first},{without_proof}"),
    );
    match proof {
        Some(p) => format!("{without_proof},p={p}").into_bytes(),
        None => text.into_bytes(),
    }
}

/// RFC 5802 ClientProof for [`SCRAM_PASSWORD`]; for the expensive fake challenges of
/// unknown users (where any proof fails) a wrong one of the right length.
fn client_proof(
    hash: ScramHash,
    salt: &str,
    iterations: &str,
    auth_message: &str,
) -> Option<String> {
    use aws_lc_rs::{digest, hmac, pbkdf2};
    let salt = B64.decode(salt).ok()?;
    let iterations: u32 = iterations.parse().ok()?;
    let len = hash.output_len();
    if iterations > 16 {
        // A well-formed proof that is wrong.
        return Some(B64.encode(vec![0u8; len]));
    }
    let iterations = NonZeroU32::new(iterations)?;
    let (pbkdf, mac, dig) = match hash {
        ScramHash::Sha1 => (
            pbkdf2::PBKDF2_HMAC_SHA1,
            hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            &digest::SHA1_FOR_LEGACY_USE_ONLY,
        ),
        ScramHash::Sha256 => (
            pbkdf2::PBKDF2_HMAC_SHA256,
            hmac::HMAC_SHA256,
            &digest::SHA256,
        ),
    };
    let mut salted = vec![0u8; len];
    pbkdf2::derive(
        pbkdf,
        iterations,
        &salt,
        SCRAM_PASSWORD.as_bytes(),
        &mut salted,
    );
    let client_key = hmac::sign(&hmac::Key::new(mac, &salted), b"Client Key");
    let stored_key = digest::digest(dig, client_key.as_ref());
    let signature = hmac::sign(
        &hmac::Key::new(mac, stored_key.as_ref()),
        auth_message.as_bytes(),
    );
    let proof: Vec<u8> = client_key
        .as_ref()
        .iter()
        .zip(signature.as_ref())
        .map(|(k, s)| k ^ s)
        .collect();
    Some(B64.encode(proof))
}

// ---------------------------------------------------------------------------------------
// jingle

/// Jingle from a participant to the focus (jingle/): the input is parsed with the server's
/// XML parser; its `<jingle/>` elements (the root, the root's children, or those inside
/// `<iq/>`s) go through the source parsers and then, as IQs from a participant in session,
/// through the focus's conference state machine (session-accept, source-add/-remove,
/// transport-info, session-terminate, ...).
///
/// First byte: bit 0 the IQs come from the second participant, bit 1 both participants
/// accepted their sessions first, bit 2 keep the input's `sid` (otherwise the session's),
/// bit 3 the bridge answers with errors, bit 4 run the conference's timeouts at the end.
/// `<presence/>`, `<message/>` and `<conference/>` elements are handed over too.
///
/// Every stanza the focus sends must serialise to XML that parses again.
pub fn jingle(data: &[u8]) {
    let Some((ctl, rest)) = control(data) else {
        return;
    };
    let Ok(root) = xml::parse_document(rest, &XmlLimits::default()) else {
        return;
    };
    let stanza = matches!(
        root.name(),
        "jingle" | "iq" | "presence" | "message" | "conference"
    );
    let jingles: Vec<Element> = if stanza {
        vec![root]
    } else {
        root.children().cloned().collect()
    };
    for el in &jingles {
        let j = if el.name() == "iq" {
            el.get_child("jingle", NS_JINGLE)
        } else {
            Some(el)
        };
        if let Some(j) = j {
            sources(j);
        }
    }
    let Some(mut f) = focus::Focus::in_session(ctl & 8 != 0) else {
        panic!("the focus harness could not set up a conference");
    };
    if ctl & 2 != 0 {
        f.accept_both();
    }
    let nick = if ctl & 1 != 0 { "bbbb" } else { "aaaa" };
    for el in jingles {
        f.participant_sends(nick, el, ctl & 4 != 0);
    }
    if ctl & 16 != 0 {
        f.timeouts();
    }
}

/// The pure source-map functions on one `<jingle/>`.
fn sources(j: &Element) {
    let Ok(set) = EndpointSourceSet::from_jingle(j) else {
        return;
    };
    let _ = set.compact_json().to_string();
    let _ = set.to_colibri("ep1").to_element();
    let stripped = set.strip_simulcast();
    let mut contents = Default::default();
    stripped.to_jingle_contents("ep1", &mut contents);
    let _ = set.without_names(|n| n.starts_with("ep2"));
    let mut map = ConferenceSourceMap::new(SourceLimits::default());
    if let Ok(added) = map.try_add("ep1", &set) {
        let _ = map.json_message(&[], |_| true, true);
        let _ = map.try_add("ep2", &set);
        let _ = map.try_remove("ep1", &added);
    }
}

// ---------------------------------------------------------------------------------------
// colibri2

fn bridge_config() -> BridgeConfig {
    BridgeConfig {
        id: "jvb1".into(),
        media_port: 10000,
        tcp_ports: vec![4443],
        advertise_ips: vec![std::net::Ipv4Addr::LOCALHOST.into()],
        ws_base: "wss://meet.example".into(),
        dtls_fingerprint: "AA:BB".into(),
        max_conferences: 4,
        max_endpoints_per_conference: 8,
    }
}

/// Colibri2 (colibri/src/colibri2.rs): every `<conference-modify/>` in the input (the
/// root, the root's children or their children, so an `<iq/>` or a batch of IQs) is
/// parsed and handled by a bridge ([`ColibriService`], without a media engine) in order;
/// every `<conference-modified/>` is parsed as the focus would. Errors become error IQs.
///
/// Parsed requests and the bridge's answers must survive serialise-and-parse unchanged.
pub fn colibri2(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let Ok(root) = xml::parse_document(data, &XmlLimits::default()) else {
        return;
    };
    let service = ColibriService::new(bridge_config());
    let mut candidates = vec![&root];
    for c in root.children() {
        candidates.push(c);
        candidates.extend(c.children());
    }
    for el in candidates {
        match el.name() {
            "conference-modify" => match ConferenceModify::parse(el) {
                Ok(cm) => {
                    let again = ConferenceModify::parse(&assert_reparses(&cm.to_element()));
                    assert_eq!(again.as_ref(), Ok(&cm), "conference-modify round trip");
                    match service.handle(&cm) {
                        Ok(resp) => {
                            let again =
                                ConferenceModified::parse(&assert_reparses(&resp.to_element()));
                            assert_eq!(again.as_ref(), Ok(&resp), "conference-modified round trip");
                        }
                        Err(e) => colibri_error(&e, &root),
                    }
                }
                Err(e) => colibri_error(&e, &root),
            },
            "conference-modified" => match ConferenceModified::parse(el) {
                Ok(cm) => {
                    let again = ConferenceModified::parse(&assert_reparses(&cm.to_element()));
                    assert_eq!(again.as_ref(), Ok(&cm), "conference-modified round trip");
                }
                Err(e) => colibri_error(&e, &root),
            },
            "error" => {
                let _ = Reason::from_stanza_error(el);
            }
            _ => {}
        }
    }
    let _ = (service.conference_count(), service.endpoint_count());
}

fn colibri_error(e: &meetd_colibri::Colibri2Error, request: &Element) {
    let _ = (e.condition(), e.error_type(), e.reason());
    let error = assert_reparses(&e.to_error_element());
    let _ = Reason::from_stanza_error(&error);
    if request.name() == "iq" {
        assert_reparses(&e.to_error_iq(request));
    }
}

// ---------------------------------------------------------------------------------------
// bridge_channel

/// The bridge channel (colibri/src/channel.rs): text messages from clients, one per line, go
/// through [`ChannelHub::client_message`] as the WebSocket glue hands them over. First byte:
/// which of two endpoints sends the first message; each later line alternates.
///
/// Every message the hub would relay must be a JSON object.
pub fn bridge_channel(data: &[u8]) {
    let Some((ctl, rest)) = control(data) else {
        return;
    };
    let hub = ChannelHub::new(8);
    let text = String::from_utf8_lossy(rest);
    let eps = ["a0a0a0a0", "b1b1b1b1"];
    let messages: Vec<&str> = if ctl & 2 != 0 {
        vec![&text]
    } else {
        text.split('\n').collect()
    };
    for (i, msg) in messages.into_iter().enumerate() {
        let from = eps[(i + usize::from(ctl & 1)) % 2];
        for e in hub.client_message("conf", from, msg) {
            match e {
                Effect::Send { to, text } => {
                    assert!(!to.is_empty(), "relayed to nobody: {text}");
                    let msg = match serde_json::from_str::<serde_json::Value>(&text) {
                        Ok(serde_json::Value::Object(m)) => m,
                        other => panic!("relayed message is not a JSON object: {other:?}: {text}"),
                    };
                    // Clients cannot speak for others: the bridge sets `from`.
                    if matches!(
                        msg.get("colibriClass").and_then(|c| c.as_str()),
                        Some("EndpointMessage" | "EndpointStats")
                    ) {
                        assert_eq!(msg.get("from").and_then(|f| f.as_str()), Some(from));
                    }
                }
                Effect::Constraints(c) => {
                    assert_eq!(hub.constraints("conf", from).as_ref(), Some(&c));
                }
                Effect::RelayWants { .. } => {
                    panic!("a client's message spoke for another bridge: {msg}")
                }
                Effect::VideoType { .. } | Effect::None => {}
            }
        }
        // The same line from another bridge, on a relay's channel.
        for e in hub.relay_message("conf", "relay", msg) {
            match e {
                Effect::Send { to, .. } => assert!(eps.contains(&to.as_str()), "to {to}"),
                Effect::RelayWants { source, .. } => assert!(!source.is_empty()),
                Effect::None => {}
                other => panic!("a relay's message did {other:?}"),
            }
        }
    }
    for ep in eps {
        let _ = hub.on_connect_messages("conf", ep);
        hub.reset_endpoint("conf", ep);
    }
    hub.forget_conference("conf");
}

// ---------------------------------------------------------------------------------------------
// The media path (colibri/src/rtp, colibri/src/media/srtp.rs): every datagram on the media
// port is untrusted.

/// A remote address for the control byte's low bit (IPv4 or IPv6).
fn remote(ctl: u8) -> std::net::SocketAddr {
    if ctl & 1 == 0 {
        std::net::SocketAddr::from(([192, 0, 2, 1], 5000))
    } else {
        std::net::SocketAddr::from((
            std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
            5000,
        ))
    }
}

/// STUN on the media port: the USERNAME peek that routes a datagram to its endpoint, the
/// demultiplexing tests, and the answer to a plain Binding request (which must be STUN).
pub fn stun(data: &[u8]) {
    let Some((ctl, rest)) = control(data) else {
        return;
    };
    let _ = rtp::stun::stun_request_local_ufrag(rest);
    let _ = (
        rtp::is_rtp(rest),
        rtp::is_rtcp(rest),
        rtp::stun::is_stun(rest),
    );
    if let Some(answer) = rtp::stun::plain_binding_response(rest, remote(ctl)) {
        assert!(rtp::stun::is_stun(&answer), "a Binding answer is STUN");
        assert!(rtp::stun::stun_request_local_ufrag(&answer).is_none());
    }
}

/// RTP: the header and its extensions (ids from the control byte), the video payload
/// descriptors, the AV1 dependency descriptor, and the header the bridge writes from what it read, which must read back.
pub fn rtp_packet(data: &[u8]) {
    let Some((ctl, rest)) = control(data) else {
        return;
    };
    // Ids 1..=14 or 0 (not negotiated), varied by the control byte.
    let id = |shift: u32| (ctl.rotate_left(shift) & 0x0f) % 15;
    let ids = ExtIds {
        audio_level: id(0),
        video_orientation: id(2),
        dependency_descriptor: id(4),
        transport_cc: id(6),
    };
    let Some(v) = rtp::parse_rtp(rest, &ids) else {
        return;
    };
    assert!(
        v.hdr_len >= 12 && v.hdr_len <= rest.len(),
        "header within the packet"
    );
    let dd = v.dependency_descriptor.map(|(a, b)| {
        assert!(a <= b && b <= rest.len(), "descriptor within the packet");
        std::sync::Arc::<[u8]>::from(&rest[a..b])
    });
    let payload = &rest[v.hdr_len..];
    for codec in [
        VideoCodec::Vp8,
        VideoCodec::Vp9,
        VideoCodec::H264,
        VideoCodec::Av1,
    ] {
        let _ = payload::starts_keyframe(codec, payload);
    }
    let _ = payload::vp8_keyframe_height(payload);
    let _ = payload::vp9_layers(payload);
    // RED audio: the primary block lies within the payload.
    if let Some((_, primary)) = meetd_colibri::rtp::red::primary(payload) {
        assert!(primary.len() <= payload.len());
    }
    // The dependency descriptor: alone, and against the structure it carries.
    if let Some(d) = &dd
        && let Ok(first) = rtp::dd::parse(d, None)
        && let Some(s) = &first.structure
    {
        let again = rtp::dd::parse(d, Some(s)).expect("a descriptor reads with its own structure");
        assert_eq!(again.frame_number, first.frame_number);
    }
    let mut copy = payload.to_vec();
    payload::patch_vp8(&mut copy, Some(u16::from(ctl) << 7 | 0x55), Some(ctl));
    assert_eq!(copy.len(), payload.len(), "patched in place");
    // What the bridge writes for a receiver from this packet reads back the same.
    let out = RtpOut {
        pt: v.pt,
        marker: v.marker,
        seq: v.seq,
        ts: v.ts,
        ssrc: v.ssrc,
    };
    let ext = ExtOut {
        audio_level: v.audio_level,
        video_orientation: v.video_orientation,
        dependency_descriptor: dd.clone(),
    };
    let mut hdr = Vec::new();
    rtp::write_header(&mut hdr, &out, &ids, &ext, v.transport_seq);
    let back = rtp::parse_rtp(&hdr, &ids).expect("our header parses");
    assert_eq!(back.hdr_len, hdr.len());
    assert_eq!(
        (back.pt, back.marker, back.seq, back.ts, back.ssrc),
        (v.pt, v.marker, v.seq, v.ts, v.ssrc)
    );
    if ids.audio_level != 0 {
        assert_eq!(back.audio_level, v.audio_level);
    }
    if ids.transport_cc != 0 {
        assert_eq!(back.transport_seq, v.transport_seq);
    }
    if ids.dependency_descriptor != 0
        && let Some(d) = &dd
        && !d.is_empty()
        && d.len() <= 255
        && ids.dependency_descriptor != ids.audio_level
        && ids.dependency_descriptor != ids.video_orientation
        && ids.dependency_descriptor != ids.transport_cc
    {
        let (a, b) = back.dependency_descriptor.expect("descriptor written");
        assert_eq!(&hdr[a..b], &d[..]);
    }
}

/// RTCP from a receiver: the compound walk with every feedback type the bridge acts on (the
/// NACK budget from the control byte), each per-type parser on its own, and NACKs the bridge
/// writes for the sequence numbers found, which must read back.
pub fn rtcp(data: &[u8]) {
    let Some((ctl, rest)) = control(data) else {
        return;
    };
    let mut out = Vec::new();
    rtcp::parse_feedback(rest, usize::from(ctl) * 4, &mut out);
    let mut budget = 1000;
    let _ = rtcp::nack::parse(rest, &mut budget);
    let _ = rtcp::twcc::parse(rest);
    let _ = rtcp::sr::parse(rest);
    let _ = rtcp::pli::parse(rest);
    let _ = rtcp::fir::requested(rest).count();
    for fb in &out {
        if let rtcp::Feedback::Nack { ssrc, seqs } = fb {
            let mut sorted = seqs.clone();
            sorted.sort_unstable();
            sorted.dedup();
            let mut b = Vec::new();
            rtcp::nack::write(&mut b, 1, *ssrc, &sorted);
            let mut budget = usize::MAX;
            let (media, mut again) = rtcp::nack::parse(&b, &mut budget).expect("our NACK parses");
            again.sort_unstable();
            again.dedup();
            assert_eq!(media, *ssrc);
            assert_eq!(again, sorted, "our NACK asks for what it was given");
        }
    }
}

/// The three SRTP profiles the bridge negotiates, by the control byte.
fn srtp_keys(ctl: u8, active: bool) -> MasterKeys {
    let (profile, len) = match ctl % 3 {
        0 => (SrtpProfile::AES128_CM_SHA1_80, 2 * 16 + 2 * 14),
        1 => (SrtpProfile::AEAD_AES_128_GCM, 2 * 16 + 2 * 12),
        _ => (SrtpProfile::AEAD_AES_256_GCM, 2 * 32 + 2 * 12),
    };
    MasterKeys {
        profile,
        material: (0..len).map(|i| i as u8 ^ 0xa5).collect(),
        active,
    }
}

/// SRTP and SRTCP from an endpoint: unprotecting arbitrary bytes (fails at the tag, never
/// panics), and what a peer with the same keys protects unprotects to what it protected
/// (so the parsing behind the tag is reached too).
pub fn srtp(data: &[u8]) {
    let Some((ctl, rest)) = control(data) else {
        return;
    };
    let (Some(mut bridge), Some(mut peer)) = (
        Srtp::new(&srtp_keys(ctl, false)),
        Srtp::new(&srtp_keys(ctl, true)),
    ) else {
        return;
    };
    let mut out = Vec::new();
    if let Some(v) = rtp::parse_rtp(rest, &ExtIds::default()) {
        let _ = bridge.unprotect_rtp(rest, v.hdr_len, v.ssrc, v.seq, &mut out);
        // The same packet as the peer would send it.
        let mut wire = Vec::new();
        let index = u64::from(ctl >> 2) << 16 | u64::from(v.seq);
        if peer
            .protect_rtp(
                &rest[..v.hdr_len],
                &rest[v.hdr_len..],
                v.ssrc,
                index,
                &mut wire,
            )
            .is_ok()
        {
            let mut fresh = Srtp::new(&srtp_keys(ctl, false)).expect("keys");
            if index >> 16 == 0 {
                let (_, len) = fresh
                    .unprotect_rtp(&wire, v.hdr_len, v.ssrc, v.seq, &mut out)
                    .expect("the peer's packet unprotects");
                assert_eq!(&out[..len], &rest[v.hdr_len..], "the payload survives");
            } else {
                let _ = fresh.unprotect_rtp(&wire, v.hdr_len, v.ssrc, v.seq, &mut out);
            }
        }
    }
    let _ = bridge.unprotect_rtcp(rest, &mut out);
    let mut wire = Vec::new();
    if rtp::is_rtcp(rest) && peer.protect_rtcp(rest, &mut wire).is_ok() {
        let mut fresh = Srtp::new(&srtp_keys(ctl, false)).expect("keys");
        fresh
            .unprotect_rtcp(&wire, &mut out)
            .expect("the peer's SRTCP unprotects");
        assert_eq!(out, rest, "the RTCP survives");
    }
}
