//! One conference: the focus's occupant in a room, its participants' Jingle sessions, the
//! source map and the bridge allocation. Sans-IO: feed [`Input`]s with the time, drain
//! [`Output`]s, call [`Conference::poll_timeout`] for the next deadline.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use meetd_colibri::colibri2::{
    self, ConferenceModified, ConferenceModify, Endpoint, ForceMute, IceUdpTransport, MediaType,
    Sctp, Transport,
};
use meetd_xmpp::Element;
use meetd_xmpp::caps::{Caps, CapsCache};
use meetd_xmpp::stanza::{self, StanzaError, el, rxml_name as n};

use crate::jibri::{self, NS_JIBRI};
use crate::live_stream::NATIVE;

/// The nick of meetd's own live-stream occupant.
const STREAMER_NICK: &str = "meetd-live-stream";
use crate::offer::{self, BridgeTransport, Features, NS_FOCUS};
use crate::sources::{
    ConferenceSourceMap, EndpointSourceSet, NS_JINGLE, NS_JITMEET, Source, SourceLimits,
};

const NS_CLIENT: &str = "jabber:client";
const NS_MUC: &str = "http://jabber.org/protocol/muc";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const NS_MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const NS_DATA: &str = "jabber:x:data";

#[derive(Debug, Clone)]
pub struct FocusConfig {
    /// The focus's full JID (`focus@auth.<domain>/focus`).
    pub focus_jid: String,
    pub min_participants: usize,
    pub single_participant_timeout: Duration,
    pub initial_timeout: Duration,
    pub disco_timeout: Duration,
    pub source_limits: SourceLimits,
    pub use_json_sources: bool,
    pub use_ssrc_rewriting: bool,
    pub restart_min_interval: Duration,
    pub restart_max_per_minute: usize,
    pub region: String,
    pub auto_owner: bool,
    /// Unmuted audio / video senders allowed at once (Jicofo's max-audio-senders).
    pub max_audio_senders: usize,
    pub max_video_senders: usize,
    /// Offer the `data` content (SCTP bridge channel). The bridge speaks the bridge channel
    /// over WebSocket only, and lib-jitsi-meet prefers SCTP when it is offered, so off.
    pub sctp: bool,
    /// Recording and live streaming through Jibri (`[jibri]`).
    pub recorder: jibri::RecorderConfig,
    /// Domains whose occupants may say they are a Jibri (the hidden domain, Jicofo's
    /// `trusted-domains`): such a recorder is never made the room's owner.
    pub trusted_domains: Vec<String>,
    /// Offer Opus with RED (RFC 2198) to participants that say they support it (Jicofo's
    /// `codec.audio.opus.red.enabled`, off by default as there).
    pub opus_red: bool,
    /// The full JID of meetd's own live-stream occupant (docs/streaming.md): in the room
    /// while a native stream runs, never a participant.
    pub streamer_jid: Option<String>,
    /// Visitors' login domain (docs/visitors.md): its occupants are visitors — invited to
    /// receive only, never owners, counted in `visitor-count`.
    pub visitor_domain: Option<String>,
    /// The app's vnode id for visitors: a conference request asking to be a visitor is sent
    /// there.
    pub visitor_vnode: Option<String>,
    /// Participants (not visitors) from which newcomers join as visitors; 0: never.
    pub visitors_after: usize,
    /// Verified disco#info answers by the caps a presence announces (XEP-0115), shared by
    /// every conference: a participant whose app announces known caps is invited at once,
    /// without a disco#info round trip (as Jicofo does through Smack's caps cache).
    pub caps: CapsCache,
}

impl FocusConfig {
    pub fn new(focus_jid: &str) -> FocusConfig {
        FocusConfig {
            focus_jid: focus_jid.to_string(),
            min_participants: 2,
            single_participant_timeout: Duration::from_secs(20),
            initial_timeout: Duration::from_secs(15),
            disco_timeout: Duration::from_secs(5),
            source_limits: SourceLimits::default(),
            use_json_sources: true,
            use_ssrc_rewriting: true,
            restart_min_interval: Duration::from_secs(5),
            restart_max_per_minute: 5,
            region: "meetd".into(),
            auto_owner: true,
            max_audio_senders: 999_999,
            max_video_senders: 999_999,
            sctp: false,
            recorder: jibri::RecorderConfig::default(),
            trusted_domains: Vec::new(),
            opus_red: false,
            streamer_jid: None,
            visitor_domain: None,
            visitor_vnode: None,
            visitors_after: 0,
            caps: CapsCache::new(64),
        }
    }

    pub fn focus_bare(&self) -> &str {
        self.focus_jid.split('/').next().unwrap_or(&self.focus_jid)
    }
}

#[derive(Debug)]
pub enum Input {
    /// A stanza the MUC delivered to the focus for this room.
    Stanza(Element),
    /// The answer to [`Output::Colibri`].
    Colibri {
        req: u64,
        result: Result<ConferenceModified, colibri2::Colibri2Error>,
    },
    /// The deadline from [`Conference::poll_timeout`] passed.
    Timeout,
    /// The answer to [`Output::JibriStart`]: the Jibri that took the session, or why none.
    JibriStarted {
        session_id: String,
        result: Result<String, (StanzaError, String)>,
    },
    /// A status IQ from the Jibri (brewery occupant JID) of this conference's session.
    JibriStatus {
        jibri: String,
        status: jibri::Status,
    },
    /// That Jibri left the brewery.
    JibriGone { jibri: String },
    /// The conference's bridge left the bridge pool: start it again on another (everyone
    /// is invited anew).
    BridgeLost,
    /// A bridge of a conference spread over several left the pool: these participants (its
    /// endpoints) are invited anew; the others keep their sessions.
    EndpointsLost(Vec<String>),
}

#[derive(Debug)]
pub enum Output {
    /// A stanza to route (from the focus's full JID).
    Send(Element),
    /// A request to the bridge.
    Colibri { req: u64, modify: ConferenceModify },
    /// The focus is in the room as owner: conference requests may be answered `ready`.
    Ready,
    /// The room could not be joined; answer conference requests with an error.
    Failed(String),
    /// The conference is over; drop the actor.
    Stopped,
    /// Hand a recording / live-streaming session to a Jibri; answer with
    /// [`Input::JibriStarted`].
    JibriStart(jibri::StartRequest),
    /// Tell a Jibri to stop a session (no answer needed).
    JibriStop { jibri: String, session_id: String },
    /// A moderator's Rayo `dial` (its IQ, from the moderator's occupant JID) for a Jigasi; the
    /// glue answers the moderator.
    JigasiDial(Element),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SessionState {
    /// Waiting for disco#info or the member threshold.
    Idle,
    /// Bridge allocation under way.
    Allocating,
    /// session-initiate sent; waiting for session-accept.
    Offered {
        sid: String,
    },
    Active {
        sid: String,
    },
}

struct Participant {
    nick: String,
    real_jid: String,
    stats_id: Option<String>,
    features: Option<Features>,
    disco_deadline: Instant,
    state: SessionState,
    /// The endpoint exists on the bridge.
    allocated: bool,
    /// Sources of others this participant has been told about (per owner).
    told: BTreeMap<String, EndpointSourceSet>,
    restarts: VecDeque<Instant>,
    affiliation: String,
    audio_muted_by_focus: bool,
    video_muted_by_focus: bool,
    /// From the presence `<SourceInfo>`: sending unmuted audio / video.
    sending_audio: bool,
    sending_video: bool,
    /// A Jibri's browser (from a trusted domain, with the Jibri feature in its presence).
    jibri: bool,
    /// A visitor (docs/visitors.md): receives only.
    visitor: bool,
    /// Where the app says it is (`jitsi_participant_region`, from config.js
    /// `deploymentInfo.userRegion`): for the bridge choice.
    region: Option<String>,
}

impl Participant {
    fn features(&self) -> Features {
        self.features.unwrap_or_default()
    }
    fn sid(&self) -> Option<&str> {
        match &self.state {
            SessionState::Offered { sid } | SessionState::Active { sid } => Some(sid),
            _ => None,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Joining,
    /// Joined; waiting for the room's meeting id.
    Disco,
    Running,
    Stopped,
}

#[derive(Debug, PartialEq, Eq)]
enum BridgeConf {
    None,
    Creating,
    Created,
}

/// What an outstanding request was for.
enum Pending {
    /// A participant's disco#info, and the caps its presence announced (to learn the answer
    /// for the next one announcing them).
    Disco(String, Option<Caps>),
    RoomDisco,
    Ignore,
}

/// A bridge request in flight.
enum ColibriPending {
    Allocate { nick: String, create: bool },
    Update,
    Expire,
}

pub struct Conference {
    /// Seeded: the Jingle sids it makes up.
    rng: SmallRng,
    pub room: String,
    cfg: FocusConfig,
    phase: Phase,
    meeting_id: String,
    bridge_session_id: String,
    participants: Vec<Participant>,
    sources: ConferenceSourceMap,
    /// The bridge's own feedback sources (owner `jvb`).
    feedback: EndpointSourceSet,
    bridge: BridgeConf,
    allocation_queue: VecDeque<String>,
    next_id: u64,
    pending: HashMap<String, Pending>,
    colibri: HashMap<u64, ColibriPending>,
    out: Vec<Output>,
    created: Instant,
    single_since: Option<Instant>,
    pub rtcstats_enabled: bool,
    /// Conference-request properties: participants beyond this count start muted.
    pub start_audio_muted: Option<usize>,
    pub start_video_muted: Option<usize>,
    /// What the focus's presence currently says (to publish changes only).
    published: (bool, bool, bool),
    /// `startMuted` from the room metadata: (audio, video).
    metadata_start_muted: (bool, bool),
    /// A/V moderation (the av_moderation component's notices): per media (audio, video), when
    /// on, the nicks allowed to unmute besides moderators.
    av_moderation: [Option<HashSet<String>>; 2],
    /// Recording / live streaming (docs/jibri.md).
    recorder: jibri::Recorder,
    /// The `jibri-recording-status` the focus's presence carries, once there was a session.
    recording_status: Option<Element>,
    /// meetd's own live-stream occupant is in the room (docs/streaming.md).
    streamer_in: bool,
    /// A native session (pending or on) counts as a participant.
    streamer_counted: bool,
}

fn focus_presence(room: &str, focus_jid: &str) -> Element {
    focus_presence_with(room, focus_jid, (false, false, false))
}

/// The focus's presence: (audio limit reached, video limit reached, bridge not available).
fn focus_presence_with(room: &str, focus_jid: &str, flags: (bool, bool, bool)) -> Element {
    let mut p = el(
        "presence",
        NS_CLIENT,
        &[("to", &format!("{room}/focus")), ("from", focus_jid)],
    );
    p.append_child(Element::bare("x", NS_MUC));
    p.append_child(
        Element::builder("etherpad", "http://jitsi.org/jitmeet/etherpad")
            .append(room.split('@').next().unwrap_or("").to_string())
            .build(),
    );
    p.append_child(
        Element::builder("versions", NS_JITMEET)
            .append(
                Element::builder("component", NS_JITMEET)
                    .attr(n("name"), "focus")
                    .append(format!("meetd-{}", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build(),
    );
    p.append_child(
        Element::builder("conference-properties", NS_FOCUS)
            .append(el(
                "property",
                NS_FOCUS,
                &[("key", "support-terminate-restart"), ("value", "true")],
            ))
            .append(el(
                "property",
                NS_FOCUS,
                &[("key", "bridge-count"), ("value", "1")],
            ))
            .append(el(
                "property",
                NS_FOCUS,
                &[
                    ("key", "audio-limit-reached"),
                    ("value", if flags.0 { "true" } else { "false" }),
                ],
            ))
            .append(el(
                "property",
                NS_FOCUS,
                &[
                    ("key", "video-limit-reached"),
                    ("value", if flags.1 { "true" } else { "false" }),
                ],
            ))
            .build(),
    );
    if flags.2 {
        p.append_child(Element::bare("bridgeNotAvailable", NS_FOCUS));
    }
    p
}

impl Conference {
    /// A conference for `room`, created at `now`. `seed` seeds every identifier it makes up
    /// (meeting id, bridge session, Jingle sids): the conference reads no clock and draws no
    /// randomness of its own, so a test replays.
    pub fn new(room: &str, cfg: FocusConfig, now: Instant, seed: u64) -> Conference {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut uuid = || {
            uuid::Builder::from_random_bytes(rng.random())
                .into_uuid()
                .to_string()
        };
        let (meeting_id, bridge_session_id) = (uuid(), uuid());
        let mut c = Conference {
            room: room.to_string(),
            phase: Phase::Joining,
            meeting_id,
            bridge_session_id,
            rng,
            participants: Vec::new(),
            sources: ConferenceSourceMap::new(cfg.source_limits),
            feedback: EndpointSourceSet::default(),
            bridge: BridgeConf::None,
            allocation_queue: VecDeque::new(),
            next_id: 1,
            pending: HashMap::new(),
            colibri: HashMap::new(),
            out: Vec::new(),
            created: now,
            single_since: None,
            rtcstats_enabled: true,
            start_audio_muted: None,
            start_video_muted: None,
            published: (false, false, false),
            metadata_start_muted: (false, false),
            av_moderation: [None, None],
            recorder: jibri::Recorder::new(cfg.recorder),
            recording_status: None,
            streamer_in: false,
            streamer_counted: false,
            cfg,
        };
        let p = focus_presence(room, &c.cfg.focus_jid);
        c.out.push(Output::Send(p));
        c
    }

    pub fn take_output(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Running
    }

    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped
    }

    pub fn focus_bare(&self) -> &str {
        self.cfg.focus_bare()
    }

    /// The focus's full JID.
    /// The bridge's meeting id of this conference.
    /// The meeting has `visitors_after` participants (not visitors) or more: newcomers are
    /// visitors (docs/visitors.md).
    pub fn full_of_participants(&self) -> bool {
        self.cfg.visitors_after > 0
            && self
                .participants
                .iter()
                .filter(|p| !p.visitor && !p.jibri)
                .count()
                >= self.cfg.visitors_after
    }

    /// Visitors' vnode id, when visitors are on (docs/visitors.md).
    pub fn visitor_vnode(&self) -> Option<&str> {
        self.cfg.visitor_vnode.as_deref()
    }

    pub fn meeting_id(&self) -> &str {
        &self.meeting_id
    }

    pub fn focus_jid(&self) -> &str {
        &self.cfg.focus_jid
    }

    /// Options from a conference request (the first one that sets them wins):
    /// `startAudioMuted`, `startVideoMuted`, `rtcstatsEnabled`.
    pub fn request_properties(&mut self, conference: &Element) {
        for p in conference.children().filter(|c| c.name() == "property") {
            let (Some(name), Some(value)) = (p.attr("name"), p.attr("value")) else {
                continue;
            };
            match name {
                "startAudioMuted" if self.start_audio_muted.is_none() => {
                    self.start_audio_muted = value.parse().ok()
                }
                "startVideoMuted" if self.start_video_muted.is_none() => {
                    self.start_video_muted = value.parse().ok()
                }
                "rtcstatsEnabled" => self.rtcstats_enabled = value != "false",
                _ => {}
            }
        }
    }

    /// JSON notices from the room components: room metadata and A/V moderation.
    fn component_message(&mut self, m: &Element) {
        let Some(j) = m.get_child("json-message", NS_JITMEET) else {
            return;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&j.text()) else {
            return;
        };
        match v.get("type").and_then(|t| t.as_str()) {
            Some("room_metadata") => self.metadata(&v),
            Some("av_moderation") => self.av_moderation(&v),
            _ => {}
        }
    }

    /// Room metadata (docs/rooms.md ("Room metadata")): `startMuted {audio, video}` set by a moderator makes
    /// participants invited from now on start muted (Jicofo's `policy.audio && justJoined`).
    fn metadata(&mut self, v: &serde_json::Value) {
        let sm = &v["metadata"]["startMuted"];
        self.metadata_start_muted = (
            sm.get("audio").and_then(|x| x.as_bool()).unwrap_or(false),
            sm.get("video").and_then(|x| x.as_bool()).unwrap_or(false),
        );
    }

    /// A/V moderation (docs/rooms.md): turned on for a media, everyone but the moderators is
    /// muted at the bridge; from then on only moderators and those on the whitelist may unmute.
    fn av_moderation(&mut self, v: &serde_json::Value) {
        let media = |m: Option<&serde_json::Value>| match m.and_then(|m| m.as_str()) {
            Some("audio") => Some(0),
            Some("video") => Some(1),
            _ => None,
        };
        if let Some(enabled) = v.get("enabled").and_then(|e| e.as_bool()) {
            let Some(i) = media(v.get("mediaType")) else {
                return;
            };
            let was = self.av_moderation[i].is_some();
            if !enabled {
                self.av_moderation[i] = None;
                return;
            }
            if !was {
                self.av_moderation[i] = Some(HashSet::new());
                let targets: Vec<String> = self
                    .participants
                    .iter()
                    .filter(|p| !is_moderator(&p.affiliation))
                    .map(|p| p.nick.clone())
                    .collect();
                // Muted by the moderator who turned it on: the app then shows who muted it and
                // offers "Unmute" once it is approved.
                let actor = v
                    .get("actor")
                    .and_then(|a| a.as_str())
                    .filter(|a| a.starts_with(&format!("{}/", self.room)))
                    .map_or_else(|| format!("{}/focus", self.room), str::to_string);
                for t in targets {
                    let (a, vid) = if i == 0 {
                        (Some(true), None)
                    } else {
                        (None, Some(true))
                    };
                    self.force_mute(&t, a, vid, Some(&actor));
                }
            }
        } else if let Some(lists) = v.get("whitelists").and_then(|w| w.as_object()) {
            for (k, list) in lists {
                let Some(i) = media(Some(&serde_json::Value::String(k.clone()))) else {
                    continue;
                };
                if let Some(wl) = self.av_moderation[i].as_mut() {
                    wl.clear();
                    for j in list
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|x| x.as_str())
                    {
                        if let Some((_, nick)) = j.rsplit_once('/') {
                            wl.insert(nick.to_string());
                        }
                    }
                }
            }
        }
    }

    /// May `nick` unmute this media (index 0 audio, 1 video) under A/V moderation?
    fn may_unmute(&self, nick: &str, i: usize) -> bool {
        match &self.av_moderation[i] {
            None => true,
            Some(wl) => {
                wl.contains(nick)
                    || self
                        .participant(nick)
                        .is_some_and(|p| is_moderator(&p.affiliation))
            }
        }
    }

    /// Endpoints whose sources the focus has accepted.
    pub fn endpoints_with_sources(&self) -> usize {
        self.sources.map.len()
    }

    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("focus{}", self.next_id)
    }

    fn send(&mut self, e: Element) {
        self.out.push(Output::Send(e));
    }

    fn iq(&mut self, to: &str, ty: &str, payload: Element, pending: Pending) -> String {
        let id = self.id();
        let mut iq = el(
            "iq",
            NS_CLIENT,
            &[
                ("type", ty),
                ("id", &id),
                ("to", to),
                ("from", &self.cfg.focus_jid),
            ],
        );
        iq.append_child(payload);
        self.pending.insert(id.clone(), pending);
        self.send(iq);
        id
    }

    fn colibri(&mut self, modify: ConferenceModify, what: ColibriPending) {
        self.next_id += 1;
        let req = self.next_id;
        self.colibri.insert(req, what);
        self.out.push(Output::Colibri { req, modify });
    }

    /// The next instant [`Input::Timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut min = |x: Instant| t = Some(t.map_or(x, |y| y.min(x)));
        match self.phase {
            Phase::Stopped => return None,
            Phase::Running if self.participants.is_empty() => {
                min(self.created + self.cfg.initial_timeout)
            }
            _ => {}
        }
        if let Some(s) = self.single_since {
            min(s + self.cfg.single_participant_timeout);
        }
        if let Some(d) = self.recorder.deadline() {
            min(d);
        }
        for p in &self.participants {
            if p.features.is_none() {
                min(p.disco_deadline);
            }
        }
        t
    }

    pub fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::Stanza(s) => match s.name() {
                "presence" => self.presence(&s, now),
                "iq" => self.iq_in(&s, now),
                "message" => self.component_message(&s),
                _ => {}
            },
            Input::Colibri { req, result } => self.colibri_result(req, result, now),
            Input::Timeout => self.timeout(now),
            Input::JibriStarted { session_id, result } => {
                let a = self.recorder.started(&session_id, result, now);
                self.recorder_actions(a);
            }
            Input::JibriStatus { jibri, status } => {
                let a = self.recorder.status(&jibri, &status);
                self.recorder_actions(a);
            }
            Input::BridgeLost => {
                if self.bridge != BridgeConf::None {
                    tracing::warn!(room = %self.room, "the conference's bridge is gone; moving everyone to another");
                    self.restart_on_new_bridge();
                    self.maybe_invite(now);
                }
            }
            Input::EndpointsLost(nicks) => {
                for nick in nicks {
                    let Some(p) = self.participant_mut(&nick) else {
                        continue;
                    };
                    if !p.allocated {
                        continue;
                    }
                    p.allocated = false;
                    tracing::warn!(room = %self.room, endpoint = %nick, "its bridge is gone; re-inviting");
                    self.reinvite(&nick);
                }
            }
            Input::JibriGone { jibri } => {
                let a = self.recorder.jibri_gone(&jibri);
                self.recorder_actions(a);
            }
        }
        self.sync_streamer(now);
    }

    /// meetd's own live-stream occupant is in the room exactly while a native session is on
    /// (docs/streaming.md), as a Jibri's browser is: its presence names the session, which is
    /// what turns the session "on" in the apps.
    fn sync_streamer(&mut self, now: Instant) {
        let Some(jid) = self.cfg.streamer_jid.clone() else {
            return;
        };
        // A native session counts as a participant from its start, pending included: a
        // teacher alone goes on the bridge, which feeds the encoder, whose first output
        // turns the session on.
        let counted = self.recorder.has_jibri(NATIVE);
        if counted != self.streamer_counted {
            self.streamer_counted = counted;
            self.maybe_invite(now);
            self.update_single(now);
        }
        let on = (self.phase == Phase::Running)
            .then(|| self.recorder.on_with(NATIVE))
            .flatten()
            .map(|(id, mode)| (id.to_string(), mode));
        if on.is_some() == self.streamer_in {
            return;
        }
        self.streamer_in = on.is_some();
        let to = format!("{}/{}", self.room, STREAMER_NICK);
        let mut p = stanza::el("presence", NS_CLIENT, &[("from", &jid), ("to", &to)]);
        match on {
            Some((session_id, mode)) => {
                p.append_child(stanza::el("x", NS_MUC, &[]));
                let mut n = stanza::el("nick", "http://jabber.org/protocol/nick", &[]);
                n.append_text_node("Live stream");
                p.append_child(n);
                let mut s = stanza::el("session_id", NS_CLIENT, &[]);
                s.append_text_node(session_id);
                p.append_child(s);
                let mut m = stanza::el("mode", NS_CLIENT, &[]);
                m.append_text_node(mode.as_str());
                p.append_child(m);
                // The feed takes VP8 (the encoder's RTP input): while the stream runs, the
                // clients pick the codec every participant decodes, as for any participant.
                let mut c = stanza::el("jitsi_participant_codecList", NS_CLIENT, &[]);
                c.append_text_node("vp8");
                p.append_child(c);
                // lib-jitsi-meet reads a hidden occupant's features when it leaves; without
                // the element its presence handler throws there, and Strophe drops the
                // handler: that app would see nobody leave any more.
                p.append_child(stanza::el("features", NS_CLIENT, &[]));
            }
            None => stanza::set_attr(&mut p, "type", "unavailable"),
        }
        self.out.push(Output::Send(p));
        self.maybe_invite(now);
        self.update_single(now);
    }

    /// Whether meetd's own live-stream occupant is in the room.
    pub fn streamer_in(&self) -> bool {
        self.streamer_in
    }

    /// Whether this conference's recording session runs on `jibri`.
    pub fn has_jibri(&self, jibri: &str) -> bool {
        self.recorder.has_jibri(jibri)
    }

    /// A moderator's `jibri` IQ (start or stop recording / live streaming).
    fn jibri_request(&mut self, iq: &Element, nick: &str) {
        let moderator = self.participant(nick).map(|p| is_moderator(&p.affiliation));
        let from = format!("{}/{nick}", self.room);
        let room = self.room.clone();
        let id = self.uuid();
        let a = self.recorder.request(iq, &from, moderator, &room, || id);
        self.recorder_actions(a);
    }

    fn recorder_actions(&mut self, actions: Vec<jibri::Action>) {
        for a in actions {
            match a {
                jibri::Action::Reply(e) => {
                    let e = from_focus(e, &self.cfg.focus_jid);
                    self.send(e);
                }
                jibri::Action::Start(req) => self.out.push(Output::JibriStart(req)),
                jibri::Action::Stop { jibri, session_id } => {
                    self.out.push(Output::JibriStop { jibri, session_id });
                }
                jibri::Action::Publish(e) => {
                    self.recording_status = Some(e);
                    self.send_presence();
                }
            }
        }
    }

    fn uuid(&mut self) -> String {
        uuid::Builder::from_random_bytes(self.rng.random())
            .into_uuid()
            .to_string()
    }

    fn timeout(&mut self, now: Instant) {
        let a = self.recorder.timeout(now);
        self.recorder_actions(a);
        if self.phase == Phase::Running
            && self.participants.is_empty()
            && now >= self.created + self.cfg.initial_timeout
        {
            tracing::debug!(room = %self.room, "nobody joined in time");
            self.stop();
            return;
        }
        if let Some(s) = self.single_since
            && now >= s + self.cfg.single_participant_timeout
        {
            self.single_since = None;
            // The lone participant's session ends; the bridge conference goes too.
            let nicks: Vec<String> = self
                .participants
                .iter()
                .filter(|p| p.sid().is_some())
                .map(|p| p.nick.clone())
                .collect();
            for nick in nicks {
                self.terminate(&nick, "expired", "Idle session timeout");
            }
            self.expire_bridge_conference();
        }
        let late: Vec<String> = self
            .participants
            .iter()
            .filter(|p| p.features.is_none() && now >= p.disco_deadline)
            .map(|p| p.nick.clone())
            .collect();
        for nick in late {
            if let Some(p) = self.participant_mut(&nick) {
                p.features = Some(Features::default());
            }
        }
        self.maybe_invite(now);
    }

    fn participant_mut(&mut self, nick: &str) -> Option<&mut Participant> {
        self.participants.iter_mut().find(|p| p.nick == nick)
    }

    fn participant(&self, nick: &str) -> Option<&Participant> {
        self.participants.iter().find(|p| p.nick == nick)
    }

    fn presence(&mut self, p: &Element, now: Instant) {
        let from = p.attr("from").unwrap_or("");
        let Some((room, nick)) = from.split_once('/') else {
            return;
        };
        if room != self.room {
            return;
        }
        let item = p
            .get_child("x", NS_MUC_USER)
            .and_then(|x| x.get_child("item", NS_MUC_USER));
        let statuses = stanza::muc_statuses(p);
        if nick == "focus" {
            match p.attr("type") {
                Some("error") if self.phase == Phase::Joining => {
                    let text = p
                        .get_child("error", NS_CLIENT)
                        .map(meetd_xmpp::xml::to_string)
                        .unwrap_or_default();
                    self.out.push(Output::Failed(text));
                    self.phase = Phase::Stopped;
                    self.out.push(Output::Stopped);
                }
                Some("unavailable") if self.phase != Phase::Stopped => {
                    // Kicked or the room was destroyed.
                    self.expire_bridge_conference();
                    self.phase = Phase::Stopped;
                    self.out.push(Output::Stopped);
                }
                None if self.phase == Phase::Joining && statuses.contains(&"110") => {
                    if item.and_then(|i| i.attr("affiliation")) != Some("owner") {
                        self.out.push(Output::Failed("focus is not owner".into()));
                        self.leave_room();
                        return;
                    }
                    self.phase = Phase::Disco;
                    let q = Element::bare("query", NS_DISCO_INFO);
                    let room = self.room.clone();
                    self.iq(&room, "get", q, Pending::RoomDisco);
                }
                _ => {}
            }
            return;
        }
        let real = item.and_then(|i| i.attr("jid")).unwrap_or("").to_string();
        if self.cfg.streamer_jid.as_deref() == Some(real.as_str()) {
            // meetd's own live-stream occupant: no Jingle session, no owner.
            return;
        }
        let affiliation = item
            .and_then(|i| i.attr("affiliation"))
            .unwrap_or("none")
            .to_string();
        match p.attr("type") {
            Some("unavailable") => self.member_left(nick, now),
            None => {
                if let Some(m) = self.participant_mut(nick) {
                    m.affiliation = affiliation;
                    self.source_info(nick, p);
                    return;
                }
                let stats_id = p.get_child("stats-id", NS_CLIENT).map(|s| s.text());
                let region = p
                    .get_child("jitsi_participant_region", NS_CLIENT)
                    .map(|s| s.text().trim().to_string())
                    .filter(|r| !r.is_empty() && r.len() <= 64);
                let jibri = self.is_jibri(&real, p);
                let visitor = self.is_visitor(&real);
                self.participants.push(Participant {
                    nick: nick.to_string(),
                    real_jid: real,
                    stats_id,
                    features: None,
                    disco_deadline: now + self.cfg.disco_timeout,
                    state: SessionState::Idle,
                    allocated: false,
                    told: BTreeMap::new(),
                    restarts: VecDeque::new(),
                    affiliation,
                    audio_muted_by_focus: false,
                    video_muted_by_focus: false,
                    sending_audio: false,
                    sending_video: false,
                    jibri,
                    visitor,
                    region,
                });
                if visitor {
                    self.send_presence();
                }
                self.source_info(nick, p);
                let caps = Caps::of_presence(p);
                let known = caps.as_ref().and_then(|c| self.cfg.caps.get(c));
                if let Some(features) = known {
                    tracing::debug!(room = %self.room, %nick, "features from the caps cache");
                    let v: Vec<&str> = features.iter().map(String::as_str).collect();
                    if let Some(m) = self.participant_mut(nick) {
                        m.features = Some(Features::from_disco(&v));
                    }
                } else {
                    let to = format!("{}/{}", self.room, nick);
                    self.iq(
                        &to,
                        "get",
                        Element::bare("query", NS_DISCO_INFO),
                        Pending::Disco(nick.to_string(), caps),
                    );
                }
                self.elect_owner();
                self.maybe_invite(now);
                self.update_single(now);
            }
            _ => {}
        }
    }

    /// Read `<SourceInfo>` (the client's mute state per source) from a presence.
    fn source_info(&mut self, nick: &str, p: &Element) {
        let Some(si) = p.get_child("SourceInfo", NS_CLIENT) else {
            return;
        };
        let Ok(serde_json::Value::Object(m)) =
            serde_json::from_str::<serde_json::Value>(&si.text())
        else {
            return;
        };
        let unmuted = |suffix: char| {
            m.iter().any(|(name, v)| {
                name.rsplit('-')
                    .next()
                    .is_some_and(|t| t.starts_with(suffix))
                    && v.get("muted").and_then(|x| x.as_bool()) == Some(false)
            })
        };
        let (a, v) = (unmuted('a'), unmuted('v'));
        if let Some(part) = self.participant_mut(nick) {
            part.sending_audio = a;
            part.sending_video = v;
        }
        self.publish_limits();
    }

    fn senders(&self) -> (usize, usize) {
        (
            self.participants.iter().filter(|p| p.sending_audio).count(),
            self.participants.iter().filter(|p| p.sending_video).count(),
        )
    }

    /// Update `audio-limit-reached` / `video-limit-reached` / `bridgeNotAvailable` in the
    /// focus's presence when they change.
    fn publish_limits(&mut self) {
        let (a, v) = self.senders();
        let bridge_down = self.published.2;
        let flags = (
            a >= self.cfg.max_audio_senders,
            v >= self.cfg.max_video_senders,
            bridge_down,
        );
        self.publish(flags);
    }

    fn publish(&mut self, flags: (bool, bool, bool)) {
        if flags == self.published || matches!(self.phase, Phase::Joining | Phase::Stopped) {
            return;
        }
        self.published = flags;
        self.send_presence();
    }

    /// The focus's presence as it stands (limits, bridge, recording), to the room.
    fn send_presence(&mut self) {
        if matches!(self.phase, Phase::Joining | Phase::Stopped) {
            return;
        }
        let mut p = focus_presence_with(&self.room, &self.cfg.focus_jid, self.published);
        p.remove_child("x", NS_MUC);
        if self.cfg.visitor_domain.is_some()
            && let Some(props) = p.get_child_mut("conference-properties", NS_FOCUS)
        {
            // docs/visitors.md: the app shows the count, and its clients leave P2P for the
            // bridge while there are visitors (who get media from the bridge only).
            let count = self.participants.iter().filter(|p| p.visitor).count();
            props.append_child(el(
                "property",
                NS_FOCUS,
                &[("key", "visitor-count"), ("value", &count.to_string())],
            ));
            props.append_child(el(
                "property",
                NS_FOCUS,
                &[("key", "visitors-enabled"), ("value", "true")],
            ));
        }
        if let Some(r) = &self.recording_status {
            p.append_child(r.clone());
        }
        self.send(p);
    }

    /// The bridge failed us: end every session cleanly and say so in presence. The clients
    /// get a fresh session when the next allocation succeeds.
    fn bridge_failed(&mut self) {
        self.restart_on_new_bridge();
        let (a, v, _) = self.published;
        self.publish((a, v, true));
    }

    /// Everyone's session ends and the conference starts again on a bridge to be chosen
    /// (the focus's presence says nothing: another bridge is expected to take it).
    fn restart_on_new_bridge(&mut self) {
        let nicks: Vec<String> = self
            .participants
            .iter()
            .filter(|p| p.sid().is_some() || p.state == SessionState::Allocating)
            .map(|p| p.nick.clone())
            .collect();
        for nick in &nicks {
            self.terminate(nick, "general-error", "bridge failure");
        }
        self.bridge = BridgeConf::None;
        self.allocation_queue.clear();
        for p in self.participants.iter_mut() {
            p.state = SessionState::Idle;
            p.allocated = false;
            p.told.clear();
        }
        self.feedback = EndpointSourceSet::default();
        self.bridge_session_id = uuid::Uuid::new_v4().to_string();
    }

    /// Jicofo's auto-owner: the first participant, and a successor when the owner leaves.
    fn elect_owner(&mut self) {
        if !self.cfg.auto_owner || self.participants.iter().any(|p| p.affiliation == "owner") {
            return;
        }
        let Some(first) = self.participants.iter().find(|p| !p.jibri && !p.visitor) else {
            return;
        };
        let bare = first.real_jid.split('/').next().unwrap_or("").to_string();
        if bare.is_empty() {
            return;
        }
        let nick = first.nick.clone();
        if let Some(p) = self.participant_mut(&nick) {
            p.affiliation = "owner".into();
        }
        let q = Element::builder("query", NS_MUC_ADMIN)
            .append(el(
                "item",
                NS_MUC_ADMIN,
                &[("affiliation", "owner"), ("jid", &bare)],
            ))
            .build();
        let room = self.room.clone();
        self.iq(&room, "set", q, Pending::Ignore);
    }

    /// Whether an occupant with real JID `real` and presence `p` is a Jibri's browser.
    /// Whether `real` (an occupant's real JID) is a visitor's (docs/visitors.md).
    fn is_visitor(&self, real: &str) -> bool {
        self.cfg.visitor_domain.as_deref().is_some_and(|d| {
            let bare = real.split('/').next().unwrap_or("");
            bare.rsplit_once('@').map(|(_, dom)| dom) == Some(d)
        })
    }

    fn is_jibri(&self, real: &str, p: &Element) -> bool {
        let domain = real
            .split('/')
            .next()
            .and_then(|b| b.rsplit_once('@').map(|(_, d)| d).or(Some(b)))
            .unwrap_or("");
        self.cfg.trusted_domains.iter().any(|d| d == domain)
            && p.get_child("features", NS_CLIENT).is_some_and(|f| {
                f.children()
                    .any(|c| c.name() == "feature" && c.attr("var") == Some(NS_JIBRI))
            })
    }

    fn update_single(&mut self, now: Instant) {
        let active = self.participants.len() + usize::from(self.streamer_counted);
        if active == 1 && self.participants.iter().any(|p| p.sid().is_some()) {
            self.single_since.get_or_insert(now);
        } else {
            self.single_since = None;
        }
    }

    fn member_left(&mut self, nick: &str, now: Instant) {
        let Some(i) = self.participants.iter().position(|p| p.nick == nick) else {
            return;
        };
        let p = self.participants.remove(i);
        if p.visitor {
            // One visitor fewer in `visitor-count`.
            self.send_presence();
        }
        // No source-remove: the others drop its sources on the unavailable presence.
        self.sources.remove_endpoint(nick);
        for other in self.participants.iter_mut() {
            other.told.remove(nick);
        }
        if p.allocated && self.bridge == BridgeConf::Created {
            let mut m = ConferenceModify::new(self.meeting_id.clone());
            let mut ep = Endpoint::new(nick);
            ep.expire = true;
            m.endpoints.push(ep);
            self.colibri(m, ColibriPending::Expire);
        }
        self.allocation_queue.retain(|n| n != nick);
        if p.affiliation == "owner" {
            self.elect_owner();
        }
        if self.participants.is_empty() {
            self.expire_bridge_conference();
            self.leave_room();
            return;
        }
        self.update_single(now);
    }

    fn leave_room(&mut self) {
        if self.phase == Phase::Stopped {
            return;
        }
        let p = el(
            "presence",
            NS_CLIENT,
            &[
                ("to", &format!("{}/focus", self.room)),
                ("from", &self.cfg.focus_jid),
                ("type", "unavailable"),
            ],
        );
        self.send(p);
        self.phase = Phase::Stopped;
        self.out.push(Output::Stopped);
    }

    fn stop(&mut self) {
        let a = self.recorder.end();
        self.recorder_actions(a);
        self.expire_bridge_conference();
        self.leave_room();
    }

    fn expire_bridge_conference(&mut self) {
        if self.bridge == BridgeConf::None {
            return;
        }
        let mut m = ConferenceModify::new(self.meeting_id.clone());
        m.expire = true;
        self.colibri(m, ColibriPending::Expire);
        self.bridge = BridgeConf::None;
        for p in self.participants.iter_mut() {
            p.allocated = false;
            p.state = SessionState::Idle;
            p.told.clear();
        }
        self.feedback = EndpointSourceSet::default();
        // A new bridge conference gets a new session id (clients echo it back).
        self.bridge_session_id = uuid::Uuid::new_v4().to_string();
    }

    fn maybe_invite(&mut self, now: Instant) {
        // A native live stream counts as a participant (a Jibri's browser would be one).
        let streaming = usize::from(self.streamer_counted);
        if self.phase != Phase::Running
            || self.participants.len() + streaming < self.cfg.min_participants
        {
            return;
        }
        let ready: Vec<String> = self
            .participants
            .iter()
            .filter(|p| p.state == SessionState::Idle && p.features.is_some())
            .map(|p| p.nick.clone())
            .collect();
        for nick in ready {
            self.invite(&nick);
        }
        self.update_single(now);
    }

    fn invite(&mut self, nick: &str) {
        let Some(p) = self.participant_mut(nick) else {
            return;
        };
        p.state = SessionState::Allocating;
        match self.bridge {
            BridgeConf::Creating => self.allocation_queue.push_back(nick.to_string()),
            BridgeConf::None => {
                self.bridge = BridgeConf::Creating;
                self.allocate(nick, true);
            }
            BridgeConf::Created => self.allocate(nick, false),
        }
    }

    fn allocate(&mut self, nick: &str, create: bool) {
        let Some(p) = self.participant(nick) else {
            return;
        };
        let f = p.features();
        let f = Features {
            opus_red: f.opus_red && self.cfg.opus_red,
            ..f
        };
        let mut ep = Endpoint::new(nick);
        ep.create = true;
        ep.stats_id = p.stats_id.clone();
        ep.region = p.region.clone();
        if p.visitor {
            ep.muc_role = Some("visitor".into());
        }
        ep.capabilities.push("source-names".into());
        if f.ssrc_rewriting && self.cfg.use_ssrc_rewriting {
            ep.capabilities.push("ssrc-rewriting".into());
        }
        ep.medias = offer::default_media(&f);
        ep.transport = Some(Transport {
            ice_controlling: Some(true),
            sctp: (f.sctp && self.cfg.sctp).then(Sctp::default),
            ..Transport::default()
        });
        ep.sources = Some(
            self.sources
                .get(nick)
                .cloned()
                .unwrap_or_default()
                .to_colibri(nick),
        );
        // Under A/V moderation a newcomer's media is dropped until it may unmute.
        let (ma, mv) = (!self.may_unmute(nick, 0), !self.may_unmute(nick, 1));
        if ma || mv {
            ep.force_mute = Some(ForceMute {
                audio: ma.then_some(true),
                video: mv.then_some(true),
            });
            if let Some(p) = self.participant_mut(nick) {
                p.audio_muted_by_focus |= ma;
                p.video_muted_by_focus |= mv;
            }
        }
        let mut m = ConferenceModify::new(self.meeting_id.clone());
        if create {
            m.create = true;
            m.name = Some(self.room.clone());
            m.rtcstats_enabled = Some(self.rtcstats_enabled);
        }
        m.endpoints.push(ep);
        self.colibri(
            m,
            ColibriPending::Allocate {
                nick: nick.to_string(),
                create,
            },
        );
    }

    fn colibri_result(
        &mut self,
        req: u64,
        result: Result<ConferenceModified, colibri2::Colibri2Error>,
        now: Instant,
    ) {
        let Some(what) = self.colibri.remove(&req) else {
            return;
        };
        match what {
            ColibriPending::Allocate { nick, create } => {
                let modified = match result {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(room = %self.room, %nick, error = %e, "bridge allocation failed");
                        if matches!(e, colibri2::Colibri2Error::ConferenceNotFound { .. }) {
                            // The bridge lost the conference: start over with everyone.
                            self.bridge_failed();
                            return;
                        }
                        if create {
                            self.bridge = BridgeConf::None;
                            let queued: Vec<String> = self.allocation_queue.drain(..).collect();
                            for q in queued {
                                if let Some(p) = self.participant_mut(&q) {
                                    p.state = SessionState::Idle;
                                }
                            }
                        }
                        if let Some(p) = self.participant_mut(&nick) {
                            p.state = SessionState::Idle;
                        }
                        return;
                    }
                };
                if self.published.2 {
                    let (a, v, _) = self.published;
                    self.publish((a, v, false));
                }
                if create {
                    self.bridge = BridgeConf::Created;
                    if let Some(s) = &modified.sources {
                        self.feedback = feedback_sources(s);
                    }
                    let queued: Vec<String> = self.allocation_queue.drain(..).collect();
                    for q in queued {
                        self.allocate(&q, false);
                    }
                }
                self.offer(&nick, &modified);
                self.update_single(now);
            }
            ColibriPending::Update => match result {
                Err(colibri2::Colibri2Error::UnknownEndpoint { id }) => {
                    // The bridge forgot one endpoint: that participant gets a fresh session.
                    tracing::info!(room = %self.room, endpoint = %id, "bridge lost an endpoint; re-inviting");
                    if let Some(p) = self.participant_mut(&id) {
                        p.allocated = false;
                    }
                    self.reinvite(&id);
                }
                Err(colibri2::Colibri2Error::ConferenceNotFound { .. }) => {
                    tracing::warn!(room = %self.room, "bridge lost the conference; re-inviting everyone");
                    self.bridge_failed();
                    self.maybe_invite(now);
                }
                Err(e) => tracing::debug!(room = %self.room, error = %e, "bridge update failed"),
                Ok(_) => {}
            },
            ColibriPending::Expire => {
                if let Err(e) = result {
                    tracing::debug!(room = %self.room, error = %e, "bridge expire failed");
                }
            }
        }
    }

    fn offer(&mut self, nick: &str, modified: &ConferenceModified) {
        let Some(ep) = modified.endpoints.iter().find(|e| e.id == nick) else {
            return;
        };
        let Some(t) = &ep.transport else { return };
        let Some(ice) = t.ice.clone() else { return };
        let sctp_port = t.sctp.as_ref().and_then(|s| s.port);
        let Some(p) = self.participant(nick) else {
            return;
        };
        if p.state != SessionState::Allocating {
            return;
        }
        let f = p.features();
        let f = Features {
            opus_red: f.opus_red && self.cfg.opus_red,
            ..f
        };
        let rewriting = f.ssrc_rewriting && self.cfg.use_ssrc_rewriting;
        let json = f.json_sources && self.cfg.use_json_sources;
        let media = offer::default_media(&f);
        // The others' current sources (none when the bridge rewrites SSRCs).
        let mut told: BTreeMap<String, EndpointSourceSet> = BTreeMap::new();
        if !rewriting {
            for (ep, set) in &self.sources.map {
                if ep != nick && !set.is_empty() {
                    told.insert(ep.clone(), filter_media(&set.strip_simulcast(), &f));
                }
            }
        }
        let mut classic = BTreeMap::new();
        let json_text = if json {
            let mut o = serde_json::Map::new();
            o.insert("jvb".into(), self.feedback.compact_json());
            for (ep, set) in &told {
                o.insert(ep.clone(), set.compact_json());
            }
            Some(serde_json::json!({ "sources": o }).to_string())
        } else {
            self.feedback.to_jingle_contents("jvb", &mut classic);
            for (ep, set) in &told {
                set.to_jingle_contents(ep, &mut classic);
            }
            None
        };
        let sid = format!("{:x}", self.rng.random::<u64>());
        let bridge = BridgeTransport {
            ice: &ice,
            sctp_port: if f.sctp && self.cfg.sctp {
                sctp_port
            } else {
                None
            },
            session_id: &self.bridge_session_id,
            region: &self.cfg.region,
        };
        let mut jingle = offer::session_initiate(
            &sid,
            &self.cfg.focus_jid,
            &media,
            &bridge,
            &classic,
            json_text.as_deref(),
        );
        let n = self.participants.len();
        let (senders_a, senders_v) = self.senders();
        let mute_a = self.metadata_start_muted.0
            || self
                .start_audio_muted
                .is_some_and(|t| n > t.min(self.cfg.max_audio_senders))
            || senders_a >= self.cfg.max_audio_senders;
        let mute_v = self.metadata_start_muted.1
            || self
                .start_video_muted
                .is_some_and(|t| n > t.min(self.cfg.max_video_senders))
            || senders_v >= self.cfg.max_video_senders;
        if mute_a || mute_v {
            jingle.append_child(el(
                "startmuted",
                "http://jitsi.org/jitmeet/start-muted",
                &[
                    ("audio", if mute_a { "true" } else { "false" }),
                    ("video", if mute_v { "true" } else { "false" }),
                ],
            ));
        }
        let to = format!("{}/{}", self.room, nick);
        if let Some(p) = self.participant_mut(nick) {
            p.state = SessionState::Offered { sid };
            p.allocated = true;
            p.told = told;
        }
        self.iq(&to, "set", jingle, Pending::Ignore);
    }

    fn iq_in(&mut self, iq: &Element, now: Instant) {
        let ty = iq.attr("type").unwrap_or("");
        let id = iq.attr("id").unwrap_or("").to_string();
        if ty == "result" || ty == "error" {
            match self.pending.remove(&id) {
                Some(Pending::Disco(nick, caps)) => {
                    if ty == "result"
                        && let (Some(caps), Some(q)) = (&caps, stanza::payload(iq))
                        && !self.cfg.caps.learn(caps, q)
                    {
                        tracing::debug!(room = %self.room, %nick, "disco#info answer does not match the announced caps");
                    }
                    let features = if ty == "result" {
                        let vars: Vec<String> = stanza::payload(iq)
                            .map(|q| {
                                q.children()
                                    .filter(|c| c.name() == "feature")
                                    .filter_map(|f| f.attr("var").map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default();
                        let v: Vec<&str> = vars.iter().map(String::as_str).collect();
                        Features::from_disco(&v)
                    } else {
                        Features::default()
                    };
                    if let Some(p) = self.participant_mut(&nick) {
                        p.features = Some(features);
                    }
                    self.maybe_invite(now);
                }
                Some(Pending::RoomDisco) => {
                    if ty == "result"
                        && let Some(mid) = stanza::payload(iq)
                            .and_then(|q| q.get_child("x", NS_DATA))
                            .and_then(|x| {
                                x.children()
                                    .find(|f| f.attr("var") == Some("muc#roominfo_meetingId"))
                            })
                            .and_then(|f| f.children().next())
                            .map(|v| v.text())
                            .filter(|v| !v.is_empty())
                    {
                        self.meeting_id = mid;
                    }
                    self.phase = Phase::Running;
                    self.out.push(Output::Ready);
                    self.maybe_invite(now);
                }
                Some(Pending::Ignore) | None => {}
            }
            return;
        }
        let from = iq.attr("from").unwrap_or("");
        let Some((_, nick)) = from.split_once('/') else {
            return;
        };
        let nick = nick.to_string();
        if let Some(j) = iq.get_child("jingle", NS_JINGLE) {
            let r = self.jingle(&nick, j, now);
            self.reply(iq, r);
            return;
        }
        if iq.get_child("jibri", NS_JIBRI).is_some() && iq.attr("type") == Some("set") {
            self.jibri_request(iq, &nick);
            return;
        }
        if let Some(dial) = iq.get_child("dial", crate::jigasi::NS_RAYO)
            && iq.attr("type") == Some("set")
        {
            let moderator = self
                .participant(&nick)
                .is_some_and(|p| is_moderator(&p.affiliation));
            if !moderator || !crate::jigasi::names_room(dial, &self.room) {
                let e = (
                    jibri::FORBIDDEN,
                    "only moderators dial out, into this room".into(),
                );
                self.reply(iq, Err(e));
                return;
            }
            self.out.push(Output::JigasiDial(iq.clone()));
            return;
        }
        if let Some(m) = stanza::payload(iq)
            .filter(|p| p.name() == "mute" && p.ns().starts_with("http://jitsi.org/jitmeet/"))
        {
            let r = self.mute(&nick, m);
            self.reply(iq, r);
            return;
        }
        if let Some(e) = stanza::error_reply(iq, StanzaError::SERVICE_UNAVAILABLE, None) {
            self.send(from_focus(e, &self.cfg.focus_jid));
        }
    }

    fn reply(&mut self, iq: &Element, r: Result<(), (StanzaError, String)>) {
        let reply = match r {
            Ok(()) => Some(stanza::iq_result(iq, None)),
            Err((e, text)) => stanza::error_reply(iq, e, Some(&text)),
        };
        if let Some(r) = reply {
            let r = from_focus(r, &self.cfg.focus_jid);
            self.send(r);
        }
    }

    fn jingle(
        &mut self,
        nick: &str,
        j: &Element,
        now: Instant,
    ) -> Result<(), (StanzaError, String)> {
        let bad = |t: &str| (StanzaError::BAD_REQUEST, t.to_string());
        let action = j.attr("action").ok_or_else(|| bad("Missing 'action'"))?;
        let sid = j.attr("sid").unwrap_or("");
        let Some(p) = self.participant(nick) else {
            return Err((StanzaError::ITEM_NOT_FOUND, "not a participant".into()));
        };
        if p.sid() != Some(sid) {
            return Err(bad("unknown session"));
        }
        match action {
            "session-accept" | "transport-accept" => self.session_accept(nick, j),
            "transport-info" => {
                let t = first_transport(j).ok_or_else(|| bad("no transport"))?;
                self.update_endpoint(nick, Some(t), None);
                Ok(())
            }
            "source-add" | "addsource" => self.source_add(nick, j),
            "source-remove" | "removesource" => self.source_remove(nick, j),
            "session-terminate" => self.session_terminate(nick, j, now),
            "session-info" => {
                if let Some(bs) = j.get_child("bridge-session", NS_FOCUS)
                    && bs.attr("ice-restart") == Some("true")
                {
                    return Err((
                        StanzaError::FEATURE_NOT_IMPLEMENTED,
                        "ICE restart not supported".into(),
                    ));
                }
                if j.get_child("ice-state", NS_FOCUS)
                    .is_some_and(|s| s.text() == "failed")
                {
                    self.reinvite(nick);
                }
                Ok(())
            }
            "transport-reject" => Ok(()),
            _ => Err((
                StanzaError::FEATURE_NOT_IMPLEMENTED,
                format!("unsupported action {action}"),
            )),
        }
    }

    /// lib-jitsi-meet names a source `<endpoint>-<a|v><n>` and receivers take the part before
    /// the dash as its owner. Sources named after another participant are left out (logged):
    /// the web app signals such when a stale conference in the same tab still holds tracks it
    /// moved to a new one (the wait-for-host sign-in), and receivers would give that
    /// participant's video to the stale one.
    fn own_sources(&self, nick: &str, set: EndpointSourceSet) -> EndpointSourceSet {
        let foreign = |name: &str| {
            name.rsplit_once('-')
                .is_some_and(|(owner, _)| owner != nick && self.participant(owner).is_some())
        };
        if !set
            .sources
            .iter()
            .any(|s| s.name.as_deref().is_some_and(foreign))
        {
            return set;
        }
        tracing::info!(
            room = %self.room,
            endpoint = nick,
            "left out sources named after another participant"
        );
        set.without_names(foreign)
    }

    fn session_accept(&mut self, nick: &str, j: &Element) -> Result<(), (StanzaError, String)> {
        let set = EndpointSourceSet::from_jingle(j)
            .map_err(|e| (StanzaError::BAD_REQUEST, e.to_string()))?;
        if !set.is_empty() && self.participant(nick).is_some_and(|p| p.visitor) {
            return Err((
                StanzaError::FORBIDDEN,
                "sources not allowed for visitors".into(),
            ));
        }
        let set = self.own_sources(nick, set);
        self.sources
            .try_add(nick, &set)
            .map_err(|e| (StanzaError::BAD_REQUEST, e.to_string()))?;
        let sid = match self.participant(nick).map(|p| p.state.clone()) {
            Some(SessionState::Offered { sid }) | Some(SessionState::Active { sid }) => sid,
            _ => return Err((StanzaError::BAD_REQUEST, "no session".into())),
        };
        if let Some(p) = self.participant_mut(nick) {
            p.state = SessionState::Active { sid };
        }
        let transport = first_transport(j);
        let sources = self.sources.get(nick).cloned().unwrap_or_default();
        self.update_endpoint(nick, transport, Some(&sources));
        // Also flushes what others sent between the offer and this accept.
        self.propagate();
        Ok(())
    }

    fn source_add(&mut self, nick: &str, j: &Element) -> Result<(), (StanzaError, String)> {
        let set = EndpointSourceSet::from_jingle(j)
            .map_err(|e| (StanzaError::BAD_REQUEST, e.to_string()))?;
        if set.is_empty() {
            return Ok(());
        }
        if self.participant(nick).is_some_and(|p| p.visitor) {
            return Err((
                StanzaError::FORBIDDEN,
                "add-source not allowed for visitors".into(),
            ));
        }
        // Jicofo refuses new senders beyond the limits (JitsiMeetConferenceImpl.addSource).
        let (a, v) = self.senders();
        let me = self.participant(nick);
        let adds_audio = set.count(MediaType::Audio) > 0 && !me.is_some_and(|p| p.sending_audio);
        let adds_video = set.count(MediaType::Video) > 0 && !me.is_some_and(|p| p.sending_video);
        if (adds_audio && a >= self.cfg.max_audio_senders)
            || (adds_video && v >= self.cfg.max_video_senders)
        {
            return Err((
                StanzaError::RESOURCE_CONSTRAINT,
                "sender limit reached".into(),
            ));
        }
        let set = self.own_sources(nick, set);
        self.sources
            .try_add(nick, &set)
            .map_err(|e| (StanzaError::BAD_REQUEST, e.to_string()))?;
        let sources = self.sources.get(nick).cloned().unwrap_or_default();
        self.update_endpoint(nick, None, Some(&sources));
        self.propagate();
        Ok(())
    }

    fn source_remove(&mut self, nick: &str, j: &Element) -> Result<(), (StanzaError, String)> {
        let set = EndpointSourceSet::from_jingle(j)
            .map_err(|e| (StanzaError::BAD_REQUEST, e.to_string()))?;
        if set.is_empty() {
            return Ok(());
        }
        self.sources
            .try_remove(nick, &set)
            .map_err(|e| (StanzaError::BAD_REQUEST, e.to_string()))?;
        let sources = self.sources.get(nick).cloned().unwrap_or_default();
        self.update_endpoint(nick, None, Some(&sources));
        self.propagate();
        Ok(())
    }

    fn session_terminate(
        &mut self,
        nick: &str,
        j: &Element,
        now: Instant,
    ) -> Result<(), (StanzaError, String)> {
        let bs = j.get_child("bridge-session", NS_FOCUS);
        if let Some(id) = bs.and_then(|b| b.attr("id"))
            && id != self.bridge_session_id
        {
            return Err((StanzaError::ITEM_NOT_FOUND, "unknown bridge session".into()));
        }
        let restart = bs.and_then(|b| b.attr("restart")) == Some("true");
        // Its sources go away for everyone, and so does its endpoint.
        self.sources.remove_endpoint(nick);
        self.expire_endpoint(nick);
        if let Some(p) = self.participant_mut(nick) {
            p.state = SessionState::Idle;
            p.told.clear();
        }
        self.propagate();
        if restart {
            let cfg = self.cfg.clone();
            let Some(p) = self.participant_mut(nick) else {
                return Ok(());
            };
            while p
                .restarts
                .front()
                .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
            {
                p.restarts.pop_front();
            }
            let too_soon = p
                .restarts
                .back()
                .is_some_and(|t| now.duration_since(*t) < cfg.restart_min_interval);
            if too_soon || p.restarts.len() >= cfg.restart_max_per_minute {
                return Err((StanzaError::RESOURCE_CONSTRAINT, "rate-limited".into()));
            }
            p.restarts.push_back(now);
            self.invite(nick);
        }
        Ok(())
    }

    fn reinvite(&mut self, nick: &str) {
        let sid = self
            .participant(nick)
            .and_then(|p| p.sid().map(str::to_string));
        if let Some(sid) = sid {
            let to = format!("{}/{}", self.room, nick);
            let t = offer::session_terminate(&sid, "success", "moving");
            self.iq(&to, "set", t, Pending::Ignore);
        }
        self.sources.remove_endpoint(nick);
        self.expire_endpoint(nick);
        if let Some(p) = self.participant_mut(nick) {
            p.state = SessionState::Idle;
            p.told.clear();
        }
        self.propagate();
        self.invite(nick);
    }

    fn terminate(&mut self, nick: &str, reason: &str, text: &str) {
        let sid = self
            .participant(nick)
            .and_then(|p| p.sid().map(str::to_string));
        if let Some(sid) = sid {
            let to = format!("{}/{}", self.room, nick);
            let t = offer::session_terminate(&sid, reason, text);
            self.iq(&to, "set", t, Pending::Ignore);
        }
        if let Some(p) = self.participant_mut(nick) {
            p.state = SessionState::Idle;
            p.allocated = false;
            p.told.clear();
        }
        self.sources.remove_endpoint(nick);
    }

    fn expire_endpoint(&mut self, nick: &str) {
        let allocated = self.participant(nick).is_some_and(|p| p.allocated);
        if !allocated || self.bridge != BridgeConf::Created {
            return;
        }
        let mut m = ConferenceModify::new(self.meeting_id.clone());
        let mut ep = Endpoint::new(nick);
        ep.expire = true;
        m.endpoints.push(ep);
        self.colibri(m, ColibriPending::Expire);
        if let Some(p) = self.participant_mut(nick) {
            p.allocated = false;
        }
    }

    fn update_endpoint(
        &mut self,
        nick: &str,
        transport: Option<IceUdpTransport>,
        sources: Option<&EndpointSourceSet>,
    ) {
        if self.bridge != BridgeConf::Created
            || !self.participant(nick).is_some_and(|p| p.allocated)
        {
            return;
        }
        let mut ep = Endpoint::new(nick);
        if let Some(mut t) = transport {
            t.rtcp_mux = true;
            ep.transport = Some(Transport {
                ice: Some(t),
                ..Transport::default()
            });
        }
        if let Some(s) = sources {
            ep.sources = Some(s.to_colibri(nick));
        }
        let mut m = ConferenceModify::new(self.meeting_id.clone());
        m.endpoints.push(ep);
        self.colibri(m, ColibriPending::Update);
    }

    /// Bring every active receiver's view of the others' sources up to date:
    /// source-remove first, then source-add (Jicofo's `SourceSignaling.update`).
    fn propagate(&mut self) {
        let mut sends = Vec::new();
        // What receivers see of each sender: computed once, not once per receiver.
        let stripped: BTreeMap<&String, EndpointSourceSet> = self
            .sources
            .map
            .iter()
            .filter(|(_, set)| !set.is_empty())
            .map(|(ep, set)| (ep, set.strip_simulcast()))
            .collect();
        for p in self.participants.iter_mut() {
            let SessionState::Active { sid } = &p.state else {
                continue;
            };
            let f = p.features.unwrap_or_default();
            if f.ssrc_rewriting && self.cfg.use_ssrc_rewriting {
                continue;
            }
            let mut desired: BTreeMap<String, EndpointSourceSet> = BTreeMap::new();
            for (ep, set) in &stripped {
                if **ep != p.nick {
                    desired.insert((*ep).clone(), filter_media(set, &f));
                }
            }
            let mut removes: BTreeMap<String, EndpointSourceSet> = BTreeMap::new();
            let mut adds: BTreeMap<String, EndpointSourceSet> = BTreeMap::new();
            for (ep, told) in &p.told {
                let want = desired.get(ep).cloned().unwrap_or_default();
                let gone = diff(told, &want);
                if !gone.is_empty() {
                    removes.insert(ep.clone(), gone);
                }
            }
            for (ep, want) in &desired {
                let told = p.told.get(ep).cloned().unwrap_or_default();
                let new = diff(want, &told);
                if !new.is_empty() {
                    adds.insert(ep.clone(), new);
                }
            }
            let json = f.json_sources && self.cfg.use_json_sources;
            let to = format!("{}/{}", self.room, p.nick);
            for (action, sets) in [("source-remove", &removes), ("source-add", &adds)] {
                if sets.is_empty() {
                    continue;
                }
                let j = if json {
                    let mut o = serde_json::Map::new();
                    for (ep, s) in sets.iter() {
                        o.insert(ep.clone(), s.compact_json());
                    }
                    let text = serde_json::json!({ "sources": o }).to_string();
                    offer::source_change(action, sid, &BTreeMap::new(), Some(&text))
                } else {
                    let mut classic = BTreeMap::new();
                    for (ep, s) in sets.iter() {
                        s.to_jingle_contents(ep, &mut classic);
                    }
                    offer::source_change(action, sid, &classic, None)
                };
                sends.push((to.clone(), j));
            }
            p.told = desired;
        }
        for (to, j) in sends {
            self.iq(&to, "set", j, Pending::Ignore);
        }
    }

    /// `<mute xmlns='http://jitsi.org/jitmeet/audio|video|desktop' jid='room/nick'>true</mute>`.
    fn mute(&mut self, actor: &str, m: &Element) -> Result<(), (StanzaError, String)> {
        let media = m.ns().rsplit('/').next().unwrap_or("").to_string();
        let target_jid = m.attr("jid").unwrap_or("").to_string();
        let target = target_jid
            .rsplit_once('/')
            .map(|(_, n)| n.to_string())
            .unwrap_or_default();
        let mute = m.text().trim() == "true";
        let actor_is_mod = self
            .participant(actor)
            .is_some_and(|p| p.affiliation == "owner" || p.affiliation == "admin");
        if target != actor && !actor_is_mod {
            return Err((
                StanzaError::NOT_ALLOWED,
                "only moderators may mute others".into(),
            ));
        }
        if !mute && target != actor {
            return Err((StanzaError::NOT_ALLOWED, "nobody may unmute others".into()));
        }
        if self.participant(&target).is_none() {
            return Err((StanzaError::ITEM_NOT_FOUND, "no such participant".into()));
        }
        let (audio, video) = match media.as_str() {
            "audio" => (Some(mute), None),
            "video" | "desktop" => (None, Some(mute)),
            _ => return Err((StanzaError::BAD_REQUEST, "unknown media".into())),
        };
        let index = usize::from(audio.is_none());
        if !mute && !self.may_unmute(&target, index) {
            return Err((
                StanzaError::NOT_ALLOWED,
                "A/V moderation: ask a moderator to unmute".into(),
            ));
        }
        let actor = (mute && target != actor).then(|| format!("{}/{}", self.room, actor));
        self.force_mute(&target, audio, video, actor.as_deref());
        Ok(())
    }

    /// Mute (or let unmute) `target` at the bridge; `notify`: the actor's occupant JID, to tell
    /// the participant to mute its track.
    fn force_mute(
        &mut self,
        target: &str,
        audio: Option<bool>,
        video: Option<bool>,
        notify: Option<&str>,
    ) {
        if let Some(p) = self.participant_mut(target) {
            if let Some(a) = audio {
                p.audio_muted_by_focus = a;
            }
            if let Some(v) = video {
                p.video_muted_by_focus = v;
            }
        }
        if self.bridge == BridgeConf::Created
            && self.participant(target).is_some_and(|p| p.allocated)
        {
            let mut ep = Endpoint::new(target);
            ep.force_mute = Some(ForceMute { audio, video });
            let mut mm = ConferenceModify::new(self.meeting_id.clone());
            mm.endpoints.push(ep);
            self.colibri(mm, ColibriPending::Update);
        }
        if let Some(actor) = notify {
            let ns = if audio.is_some() {
                "http://jitsi.org/jitmeet/audio"
            } else {
                "http://jitsi.org/jitmeet/video"
            };
            let jid = format!("{}/{}", self.room, target);
            let notice = Element::builder("mute", ns)
                .attr(n("actor"), actor)
                .attr(n("jid"), jid.as_str())
                .append("true")
                .build();
            self.iq(&jid, "set", notice, Pending::Ignore);
        }
    }
}

fn is_moderator(affiliation: &str) -> bool {
    affiliation == "owner" || affiliation == "admin"
}

/// Keep only media the receiver can take.
fn filter_media(set: &EndpointSourceSet, f: &Features) -> EndpointSourceSet {
    let keep =
        |m: MediaType| (m == MediaType::Audio && f.audio) || (m == MediaType::Video && f.video);
    EndpointSourceSet {
        sources: set
            .sources
            .iter()
            .filter(|s| keep(s.media))
            .cloned()
            .collect(),
        groups: set
            .groups
            .iter()
            .filter(|g| keep(g.media))
            .cloned()
            .collect(),
    }
}

/// What `a` has that `b` has not (sources by SSRC, groups by value).
fn diff(a: &EndpointSourceSet, b: &EndpointSourceSet) -> EndpointSourceSet {
    EndpointSourceSet {
        sources: a
            .sources
            .iter()
            .filter(|s| !b.sources.iter().any(|x| x.ssrc == s.ssrc))
            .cloned()
            .collect(),
        groups: a
            .groups
            .iter()
            .filter(|g| !b.groups.contains(g))
            .cloned()
            .collect(),
    }
}

/// The bridge's feedback sources as the clients see them (owner `jvb`).
fn feedback_sources(s: &colibri2::Sources) -> EndpointSourceSet {
    let mut out = EndpointSourceSet::default();
    for ms in &s.media_sources {
        for src in &ms.sources {
            let label = if ms.kind == MediaType::Audio {
                "audio"
            } else {
                "video"
            };
            out.sources.push(Source {
                ssrc: src.ssrc,
                media: ms.kind,
                name: Some(src.name.clone().unwrap_or_else(|| ms.id.clone())),
                msid: Some(format!("mixedmslabel mixedlabel{label}0")),
                video_type: None,
            });
        }
    }
    out
}

/// The first ICE-UDP transport in any content.
fn first_transport(j: &Element) -> Option<IceUdpTransport> {
    j.children()
        .filter(|c| c.is("content", NS_JINGLE))
        .filter_map(|c| c.get_child("transport", "urn:xmpp:jingle:transports:ice-udp:1"))
        .find_map(|t| IceUdpTransport::parse(t).ok())
}

fn from_focus(mut e: Element, focus: &str) -> Element {
    stanza::set_attr(&mut e, "from", focus);
    e
}

#[cfg(test)]
mod tests;
