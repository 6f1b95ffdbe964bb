//! meetd.toml: every setting with its default. Flags override the file.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A listener address, or `off`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Listen {
    Off,
    At(SocketAddr),
}

impl TryFrom<String> for Listen {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Listen::parse(&s)
    }
}

impl From<Listen> for String {
    fn from(l: Listen) -> String {
        match l {
            Listen::Off => "off".into(),
            Listen::At(a) => a.to_string(),
        }
    }
}

impl Listen {
    pub fn parse(s: &str) -> Result<Listen, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") || s.is_empty() {
            return Ok(Listen::Off);
        }
        s.parse::<SocketAddr>()
            .map(Listen::At)
            .map_err(|_| format!("'{s}' is not an address like 127.0.0.1:8080, [::]:8443 or off"))
    }
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Listen::Off => None,
            Listen::At(a) => Some(*a),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerSection,
    pub log: LogSection,
    pub privacy: PrivacySection,
    pub listen: ListenSection,
    pub tls: TlsSection,
    pub auth: AuthSection,
    pub domains: DomainsSection,
    pub media: MediaSection,
    pub web: WebSection,
    pub xmpp: XmppSection,
    pub limits: LimitsSection,
    pub muc: MucSection,
    pub focus: FocusSection,
    pub bridge: BridgeSection,
    pub turn: TurnSection,
    pub jibri: JibriSection,
    pub streaming: StreamingSection,
    pub dialin: DialInSection,
    pub sip: SipSection,
    pub jigasi: JigasiSection,
    pub lobby: LobbySection,
    pub breakout_rooms: BreakoutRoomsSection,
    pub polls: PollsSection,
    pub visitors: VisitorsSection,
    pub end_conference: EndConferenceSection,
    pub av_moderation: AvModerationSection,
    pub speaker_stats: SpeakerStatsSection,
    pub metrics: MetricsSection,
    pub http_api: HttpApiSection,
    pub components: Vec<ComponentEntry>,
    pub database: DatabaseSection,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub domain: String,
    pub data_dir: PathBuf,
    pub public_url: String,
    /// On SIGTERM: wait up to this long for running conferences to end (taking no new
    /// ones) before stopping. 0: stop at once; clients resume on the next meetd.
    pub drain_timeout_secs: u64,
    /// "all": everything in one process. "bridge": only the media engine and its bridge
    /// channel, driven over XMPP ([bridge] xmpp_url) by another meetd or a stock Jicofo.
    pub role: String,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            domain: "meet.jitsi".into(),
            data_dir: PathBuf::from("./meetd-data"),
            public_url: String::new(),
            drain_timeout_secs: 0,
            role: "all".into(),
        }
    }
}

/// `[log]`: where log lines go and how long log files are kept (docs/operations.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// A level or a tracing filter ("info", "info,meetd_xmpp=debug").
    pub level: String,
    /// "text" or "json".
    pub format: String,
    /// Empty: standard output (journald). Otherwise a directory for daily files.
    pub dir: String,
    /// Log files older than this many days are deleted (at start and every hour).
    pub retention_days: u32,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: "info".into(),
            format: "text".into(),
            dir: String::new(),
            retention_days: 7,
        }
    }
}

/// `[privacy]`: what log lines may say about the people in meetings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacySection {
    /// "full", "masked" (IPv4 without its last octet, IPv6 without its last 80 bits) or "none".
    pub log_ips: String,
}

impl Default for PrivacySection {
    fn default() -> Self {
        PrivacySection {
            log_ips: "masked".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenSection {
    pub http: Listen,
    pub https: Listen,
    pub c2s: Listen,
    pub c2s_tls: Listen,
    pub component: Listen,
}

impl Default for ListenSection {
    fn default() -> Self {
        let at = |s: &str| Listen::parse(s).unwrap_or(Listen::Off);
        ListenSection {
            http: at("127.0.0.1:8080"),
            https: at("0.0.0.0:8443"),
            c2s: at("0.0.0.0:5222"),
            c2s_tls: Listen::Off,
            component: at("127.0.0.1:5347"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    pub cert: String,
    pub key: String,
    /// Get and renew the certificate for `server.public_url`'s host automatically (ACME,
    /// HTTP-01 on the HTTP listener, which must be reachable on port 80 of that host).
    pub acme: bool,
    pub acme_directory: String,
    /// Contact address given to the ACME server (optional).
    pub acme_email: String,
    /// PEM file of the CA that signs the ACME server's own HTTPS certificate, for a private
    /// or test ACME server (pebble). Empty: the public web PKI.
    pub acme_ca_root: String,
    /// Renew when the certificate has fewer days left than this.
    pub acme_renew_days: u32,
    /// How often the certificate's age is checked.
    pub acme_check_secs: u64,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            cert: String::new(),
            key: String::new(),
            acme: false,
            acme_directory: "https://acme-v02.api.letsencrypt.org/directory".into(),
            acme_email: String::new(),
            acme_ca_root: String::new(),
            acme_renew_days: 30,
            acme_check_secs: 43_200,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    pub mode: String,
    pub guest_domain: String,
    pub scram_iterations: u32,
    pub wait_for_host: bool,
    pub jwt: JwtSection,
}

/// `[auth.jwt]`: sign-in with tokens (mode "jwt"), as a learning platform signs them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtSection {
    pub app_id: String,
    pub app_secret: String,
    pub app_secret_file: String,
    pub accepted_issuers: Vec<String>,
    pub accepted_audiences: Vec<String>,
    pub public_keys: std::collections::BTreeMap<String, PathBuf>,
    pub key_server: String,
    pub check_subject: bool,
    pub require_room: bool,
    pub allow_empty: bool,
    pub first_joiner_moderator: bool,
    pub clock_skew_secs: u64,
    pub key_cache_size: usize,
    pub key_cache_secs: u64,
    pub key_fetch_timeout_secs: u64,
}

impl Default for JwtSection {
    fn default() -> Self {
        JwtSection {
            app_id: String::new(),
            app_secret: String::new(),
            app_secret_file: String::new(),
            accepted_issuers: Vec::new(),
            accepted_audiences: vec!["jitsi".into()],
            public_keys: Default::default(),
            key_server: String::new(),
            check_subject: true,
            require_room: true,
            allow_empty: false,
            first_joiner_moderator: false,
            clock_skew_secs: 60,
            key_cache_size: 64,
            key_cache_secs: 3600,
            key_fetch_timeout_secs: 5,
        }
    }
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            mode: "anonymous".into(),
            guest_domain: String::new(),
            scram_iterations: 10_000,
            wait_for_host: false,
            jwt: JwtSection::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DomainsSection {
    pub auth: String,
    pub muc: String,
    pub internal_muc: String,
    pub focus: String,
    pub hidden: String,
    pub lobby: String,
    pub breakout: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LobbySection {
    pub enabled: bool,
    pub max_waiting: usize,
    pub whitelist: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollsSection {
    pub enabled: bool,
    pub max_per_room: usize,
    pub max_options: usize,
}

impl Default for PollsSection {
    fn default() -> Self {
        PollsSection {
            enabled: true,
            max_per_room: 128,
            max_options: 32,
        }
    }
}

/// Visitors (docs/visitors.md): an audience that watches without being in the participant
/// list, as the app's visitor mode shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VisitorsSection {
    pub enabled: bool,
    /// The app's vnode id: visitors log in on `<vnode>.meet.jitsi` (the app fixes the
    /// `.meet.jitsi` suffix) and see the rooms under the MUC domain with that domain.
    pub vnode: String,
    /// Participants above which newcomers join as visitors (0: only those who ask, with
    /// `preferVisitor`).
    pub max_participants: usize,
}

impl Default for VisitorsSection {
    fn default() -> Self {
        VisitorsSection {
            enabled: false,
            vnode: "v1".into(),
            max_participants: 0,
        }
    }
}

impl VisitorsSection {
    /// Visitors' login domain, when on.
    pub fn domain(&self) -> Option<String> {
        self.enabled.then(|| format!("{}.meet.jitsi", self.vnode))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndConferenceSection {
    pub enabled: bool,
}

impl Default for EndConferenceSection {
    fn default() -> Self {
        EndConferenceSection { enabled: true }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpeakerStatsSection {
    pub enabled: bool,
    pub max_per_room: usize,
}

impl Default for SpeakerStatsSection {
    fn default() -> Self {
        SpeakerStatsSection {
            enabled: true,
            max_per_room: 1000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AvModerationSection {
    pub enabled: bool,
}

impl Default for AvModerationSection {
    fn default() -> Self {
        AvModerationSection { enabled: true }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakoutRoomsSection {
    pub enabled: bool,
    pub max_rooms: usize,
}

impl Default for BreakoutRoomsSection {
    fn default() -> Self {
        BreakoutRoomsSection {
            enabled: true,
            max_rooms: 100,
        }
    }
}

impl Default for LobbySection {
    fn default() -> Self {
        LobbySection {
            enabled: true,
            max_waiting: 100,
            whitelist: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaSection {
    pub port: u16,
    pub advertise_ips: Vec<IpAddr>,
    pub rtx_cache_packets: usize,
    pub rtx_cache_ms: u64,
    pub max_sources_per_endpoint: usize,
    pub rewrite_video_slots: usize,
    pub rewrite_audio_slots: usize,
    pub expire_unconnected_secs: u64,
    pub expire_inactive_secs: u64,
    pub bandwidth_estimation: bool,
    pub trust_bwe: bool,
    pub threads: usize,
    pub socket_buffer_bytes: usize,
    /// Places in each engine thread's command queue and in the engine's event queue.
    pub engine_queue: usize,
    /// ICE-TCP port (0: off).
    pub tcp_port: u16,
    /// ICE-TCP also on the HTTPS listener.
    pub tcp_on_https: bool,
    /// The HTTPS port as clients reach it (0: the listener's).
    pub tcp_https_public_port: u16,
    pub tcp_max_connections: usize,
    pub tcp_send_queue: usize,
}

impl Default for MediaSection {
    fn default() -> Self {
        let e = meetd_colibri::media::EngineConfig::default();
        MediaSection {
            port: 10000,
            advertise_ips: Vec::new(),
            rtx_cache_packets: e.rtx_cache_packets,
            rtx_cache_ms: e.rtx_cache_age.as_millis() as u64,
            max_sources_per_endpoint: e.max_sources_per_endpoint,
            rewrite_video_slots: e.rewrite_video_slots,
            rewrite_audio_slots: e.rewrite_audio_slots,
            expire_unconnected_secs: e.expire_unconnected_after.as_secs(),
            expire_inactive_secs: e.expire_inactive_after.as_secs(),
            bandwidth_estimation: e.bwe_initial_bps.is_some(),
            trust_bwe: e.trust_bwe,
            threads: e.threads,
            socket_buffer_bytes: meetd_colibri::socket::SOCKET_BUFFER_BYTES,
            engine_queue: 4096,
            tcp_port: 4443,
            tcp_on_https: true,
            tcp_https_public_port: 0,
            tcp_max_connections: 1000,
            tcp_send_queue: 512,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSection {
    pub root: String,
    /// config.js: the app's "Record" offers recording in the browser, to the person's own disk.
    pub local_recording: bool,
    /// config.js `disableThirdPartyRequests` is the negation: off by default (privacy).
    pub third_party_requests: bool,
    /// config.js `sharedVideoAllowedURLDomains`: hosts whose videos play for everyone unasked.
    pub shared_video_domains: Vec<String>,
    /// config.js `whiteboard.collabServerBaseUrl`: an Excalidraw collaboration server; empty
    /// turns the whiteboard off.
    pub whiteboard_url: String,
    /// The people's regions, by the networks they come from (region → CIDRs, e.g.
    /// `{ "campus-a" = ["10.1.0.0/16"] }`): config.js `deploymentInfo.userRegion`, which the
    /// app puts in its presence and the focus's "region" bridge selection reads
    /// (docs/colibri2.md §4c). A local proxy's `X-Proxy-Region` header (stock's) wins.
    pub regions: std::collections::BTreeMap<String, Vec<String>>,
}

impl Default for WebSection {
    fn default() -> Self {
        WebSection {
            root: String::new(),
            local_recording: true,
            third_party_requests: false,
            shared_video_domains: Vec::new(),
            whiteboard_url: String::new(),
            regions: std::collections::BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XmppSection {
    pub sm_resume_timeout_secs: u64,
    pub sm_max_unacked: usize,
    pub bosh_inactivity_secs: u64,
    pub bosh_max_wait_secs: u64,
    pub consider_http_secure: bool,
}

impl Default for XmppSection {
    fn default() -> Self {
        XmppSection {
            sm_resume_timeout_secs: 60,
            sm_max_unacked: 500,
            bosh_inactivity_secs: 60,
            bosh_max_wait_secs: 60,
            consider_http_secure: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub max_stanza_bytes: usize,
    pub max_xml_depth: usize,
    pub max_sessions_per_ip: usize,
    pub max_sessions: usize,
    pub stanza_rate_per_second: u32,
    pub stanza_burst: u32,
    pub bosh_max_body_bytes: usize,
    pub session_queue: usize,
    pub max_directed_presences: usize,
    pub bind_timeout_secs: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let d = meetd_xmpp::Limits::default();
        LimitsSection {
            max_stanza_bytes: d.max_stanza_bytes,
            max_xml_depth: d.max_xml_depth,
            max_sessions_per_ip: d.max_sessions_per_ip,
            max_sessions: d.max_sessions,
            stanza_rate_per_second: d.stanza_rate_per_second,
            stanza_burst: d.stanza_burst,
            bosh_max_body_bytes: d.bosh_max_body_bytes,
            session_queue: d.session_queue,
            max_directed_presences: d.max_directed_presences,
            bind_timeout_secs: d.bind_timeout.as_secs(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MucSection {
    pub room_creation: String,
    pub max_rooms: usize,
    pub max_occupants: usize,
    pub max_presence_bytes: usize,
    pub message_rate_per_second: u32,
    pub message_burst: u32,
    pub admins: Vec<String>,
    /// Domains or bare JIDs that pass room passwords and size limits (stock's
    /// `muc_access_whitelist` / `muc_password_whitelist`).
    pub allow_list: Vec<String>,
    /// Nicks must be letters, digits and `_` as the web app makes them (stock's
    /// `muc_resource_validate`).
    pub validate_nicknames: bool,
    /// Chat messages a room carries before its chat closes (stock's
    /// `muc_limit_messages_count`); 0: no limit.
    pub max_chat_messages: u32,
}

impl Default for MucSection {
    fn default() -> Self {
        let d = meetd_xmpp::muc::MucConfig::new("");
        MucSection {
            room_creation: "focus".into(),
            max_rooms: d.max_rooms,
            max_occupants: d.max_occupants,
            max_presence_bytes: d.max_presence_bytes,
            message_rate_per_second: d.message_rate,
            message_burst: d.message_burst,
            admins: Vec::new(),
            allow_list: Vec::new(),
            validate_nicknames: true,
            max_chat_messages: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FocusSection {
    pub enabled: bool,
    pub min_participants: usize,
    pub single_participant_timeout_secs: u64,
    pub max_conferences: usize,
    pub max_ssrcs_per_endpoint: usize,
    pub max_ssrc_groups_per_endpoint: usize,
    pub max_audio_senders: usize,
    pub max_video_senders: usize,
    pub sctp: bool,
    /// Opus with RED redundancy for clients that support it (config.js `enableOpusRed`).
    pub opus_red: bool,
    /// The bridge brewery the focus takes bridges from (a room on internal-muc.<domain>,
    /// e.g. "jvbbrewery": bridge-only meetds, stock JVBs); "": only the in-process bridge
    /// (docs/colibri2.md §4a).
    pub bridge_brewery: String,
    /// With a brewery: the in-process bridge takes conferences too.
    pub use_local_bridge: bool,
    /// The focus's region: bridges of this region first ("": any).
    pub region: String,
    /// With a brewery: "single" (a conference on one bridge, the default), "region" (a
    /// conference grows onto another bridge when its own is overloaded, joined by relays;
    /// docs/colibri2.md §4c) or "split" (its participants spread over the pool's bridges;
    /// docs/colibri2.md §4b).
    pub bridge_selection: String,
    /// With "region": a bridge holding this many of a conference's participants (viewers
    /// included) counts as overloaded for it (Jicofo's `max-bridge-participants`; 0: no
    /// limit).
    pub max_bridge_participants: usize,
    /// Verified disco#info answers kept by the caps clients announce (XEP-0115): a client
    /// whose caps are known is invited without a disco#info round trip. 0: always ask.
    pub caps_cache: usize,
}

impl Default for FocusSection {
    fn default() -> Self {
        FocusSection {
            enabled: true,
            min_participants: 2,
            single_participant_timeout_secs: 20,
            max_conferences: 1000,
            max_ssrcs_per_endpoint: 20,
            max_ssrc_groups_per_endpoint: 20,
            max_audio_senders: 999_999,
            max_video_senders: 999_999,
            sctp: true,
            opus_red: false,
            bridge_brewery: String::new(),
            use_local_bridge: true,
            region: String::new(),
            bridge_selection: "single".into(),
            max_bridge_participants: 0,
            caps_cache: 64,
        }
    }
}

/// Phone dial-out through stock Jigasi instances (docs/dialin.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JigasiSection {
    /// Offer dial-out (the app's invite dialog takes phone numbers) and hand calls to Jigasis.
    pub dial_out: bool,
    /// The brewery room on the internal MUC domain that Jigasis join.
    pub brewery: String,
}

impl Default for JigasiSection {
    fn default() -> Self {
        JigasiSection {
            dial_out: false,
            brewery: "jigasibrewery".into(),
        }
    }
}

/// meetd's own SIP gateway: phone calls from a trunk or PBX into meetings (docs/sip.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipSection {
    pub enabled: bool,
    /// Where SIP listens, over UDP and (with `tcp`) TCP.
    pub listen: String,
    pub tcp: bool,
    /// SIP over TLS (SIPS) with meetd's certificate ([tls]), e.g. "0.0.0.0:5061"; "": off.
    pub tls_listen: String,
    /// The address callers reach meetd at, named in Contact and in the session
    /// descriptions; empty: the listen address (or loopback when listening on any).
    pub public_ip: String,
    /// Calls at once; one more gets 486 Busy Here.
    pub max_calls: usize,
    /// Wrong PINs before meetd hangs up.
    pub pin_tries: u32,
    /// A caller who has not got in after this long is hung up on.
    pub pin_timeout_secs: u64,
    /// Digest credentials a trunk must give (both empty: none asked for).
    pub auth_user: String,
    pub auth_password: String,
    pub realm: String,
    /// Speakers of the room mixed for the caller at once.
    pub mix_speakers: usize,
    /// Audio held per speaker before the mix (a bound on delay and memory).
    pub mix_buffer_ms: u64,
    /// What the room sees as the caller's name when the number is hidden.
    pub hidden_caller_name: String,
}

impl Default for SipSection {
    fn default() -> Self {
        SipSection {
            enabled: false,
            listen: "0.0.0.0:5060".into(),
            tcp: true,
            tls_listen: String::new(),
            public_ip: String::new(),
            max_calls: 50,
            pin_tries: 3,
            pin_timeout_secs: 90,
            auth_user: String::new(),
            auth_password: String::new(),
            realm: "meetd".into(),
            mix_speakers: 4,
            mix_buffer_ms: 200,
            hidden_caller_name: "Phone user".into(),
        }
    }
}

/// Phone dial-in numbers and PINs for the web app (docs/dialin.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DialInSection {
    /// The numbers the app shows; none: no dial-in.
    pub numbers: Vec<DialInNumber>,
    /// Digits of each room's PIN.
    pub pin_digits: u32,
}

impl Default for DialInSection {
    fn default() -> Self {
        DialInSection {
            numbers: Vec::new(),
            pin_digits: 9,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialInNumber {
    /// ISO country code (the app shows its flag).
    pub country: String,
    /// As the app shows it, e.g. "+49 30 1234567".
    pub number: String,
    #[serde(default)]
    pub toll_free: bool,
}

/// Recording and live streaming through stock Jibri instances (docs/jibri.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JibriSection {
    /// The brewery room on the internal MUC domain that Jibris join ("" : none).
    pub brewery: String,
    /// Show the app's "Start live stream" / "Start recording" (config.js).
    pub live_streaming: bool,
    pub recording: bool,
    pub reply_timeout_secs: u64,
    pub pending_timeout_secs: u64,
    pub retries: usize,
}

impl Default for JibriSection {
    fn default() -> Self {
        JibriSection {
            brewery: "jibribrewery".into(),
            live_streaming: false,
            recording: false,
            reply_timeout_secs: 15,
            pending_timeout_secs: 90,
            retries: 5,
        }
    }
}

/// Live streaming and recording done by meetd itself, with Debian's ffmpeg as the encoder
/// (docs/streaming.md). Used when no Jibri is registered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingSection {
    /// Off: meetd never streams itself (only Jibris do).
    pub enabled: bool,
    /// The RTMP server streams go to; the stream key the moderator enters is appended
    /// ("rtmp://stream.example.org/live" + "/" + key). "": live streaming is unavailable.
    pub rtmp_url: String,
    /// Where file recordings go. "": recording is unavailable (no content is stored).
    pub recording_dir: String,
    /// Streams and recordings running at once, all conferences together.
    pub max_concurrent: usize,
    /// The encoder: ffmpeg, as a path or a name on PATH.
    pub ffmpeg: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub video_kbps: u32,
    pub audio_kbps: u32,
    /// x264's speed preset (ultrafast … veryslow): faster costs less CPU per stream.
    pub preset: String,
    /// Speakers heard at once in the mix.
    pub audio_mix: usize,
    /// Audio each speaker's slot of the mix may hold, in milliseconds (20 ms frames); what
    /// comes on top drops the oldest, so a slot never lags.
    pub audio_mix_buffer_ms: u32,
    /// Also write each live stream as HLS, served by meetd at `/live/<key>.m3u8` (keys
    /// starting with "X" unlisted, "U" for signed-in accounts only); with `rtmp_url` empty,
    /// live streams go to HLS alone.
    pub hls: bool,
    /// HLS segment length in seconds (the viewers' delay is about three of them).
    pub hls_segment_secs: u32,
    /// Segments in the HLS playlist (older ones are deleted as the stream goes on).
    pub hls_list_size: u32,
    /// A copy of hls.js (`hls.min.js` from npm's hls.js) for the player page at
    /// `/live/<key>.html`, served as `/live/hls.min.js`. "": the page uses the browser's
    /// own HLS (Safari, iOS).
    pub hls_js: String,
}

impl Default for StreamingSection {
    fn default() -> Self {
        StreamingSection {
            enabled: true,
            rtmp_url: String::new(),
            recording_dir: String::new(),
            max_concurrent: 6,
            ffmpeg: "ffmpeg".into(),
            width: 1280,
            height: 720,
            fps: 30,
            video_kbps: 2500,
            audio_kbps: 128,
            preset: "veryfast".into(),
            audio_mix: 3,
            audio_mix_buffer_ms: 200,
            hls: false,
            hls_segment_secs: 2,
            hls_list_size: 6,
            hls_js: String::new(),
        }
    }
}

impl StreamingSection {
    /// The app shows "Start live stream".
    pub fn live_streaming(&self) -> bool {
        self.enabled && (!self.rtmp_url.is_empty() || self.hls)
    }

    /// The app shows "Start recording".
    pub fn recording(&self) -> bool {
        self.enabled && !self.recording_dir.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeSection {
    pub id: String,
    pub max_conferences: usize,
    pub max_endpoints_per_conference: usize,
    pub channel_queue: usize,
    /// The bridge brewery room on the internal MUC domain (JVB's `jvbbrewery`): the bridge
    /// sits there with JVB's stats and answers Colibri2 over XMPP, so that a stock Jicofo
    /// logged in to meetd can use it (docs/colibri2.md §4). "": not on XMPP.
    pub brewery: String,
    /// The bridge's region in its stats ("": none).
    pub region: String,
    /// With `[server] role = "bridge"`: the focus's XMPP server (`ws://…/xmpp-websocket` or
    /// `wss://…`), and the service account of its auth domain the bridge logs in with.
    pub xmpp_url: String,
    pub xmpp_user: String,
    pub xmpp_password: String,
}

impl Default for BridgeSection {
    fn default() -> Self {
        BridgeSection {
            id: "jvb1".into(),
            max_conferences: 1000,
            max_endpoints_per_conference: 500,
            channel_queue: 256,
            brewery: String::new(),
            region: String::new(),
            xmpp_url: String::new(),
            xmpp_user: "jvb".into(),
            xmpp_password: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnSection {
    pub secret: String,
    pub ttl_secs: u64,
    pub services: Vec<TurnService>,
    /// The embedded TURN server's UDP and TCP port (0: off).
    pub port: u16,
    /// TURN over TLS on the HTTPS port as well.
    pub on_https: bool,
    pub relay_min_port: u16,
    pub relay_max_port: u16,
    pub max_allocations: usize,
    pub max_connections: usize,
    pub relay_private_peers: bool,
    /// Receive and send buffer of each relayed address's UDP socket (the kernel caps it at
    /// net.core.rmem_max / wmem_max).
    pub relay_socket_buffer_bytes: usize,
}

impl Default for TurnSection {
    fn default() -> Self {
        TurnSection {
            secret: String::new(),
            ttl_secs: 86400,
            services: Vec::new(),
            port: 3478,
            on_https: true,
            relay_min_port: 49152,
            relay_max_port: 65535,
            max_allocations: 1000,
            max_connections: 1000,
            relay_private_peers: false,
            relay_socket_buffer_bytes: 1 << 20,
        }
    }
}

impl TurnSection {
    /// The embedded server runs (on its port, or through the HTTPS port).
    pub fn embedded(&self, https: bool) -> bool {
        self.port != 0 || (self.on_https && https)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TurnService {
    #[serde(rename = "type")]
    pub kind: String,
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub transport: String,
}

/// `[http_api]`: the HTTP APIs of a stock install's Prosody modules (docs/http-api.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpApiSection {
    pub enabled: bool,
    /// /room-size, /room, /sessions, /room-census and /turn-credentials have no token in
    /// stock (its proxy does not publish them): loopback only unless this is true.
    pub public: bool,
    /// /room-size and /room want a sign-in token (`?token=`) for the room.
    pub room_size_token: bool,
    /// /room-info wants a sign-in token (`Authorization: Bearer`).
    pub room_info_token: bool,
    /// Keys of system tokens (kick-participant, end-meeting, send-system-chat-message,
    /// invite-jigasi): PEM public keys by `kid`, and/or a key server serving
    /// `<url>/<sha256-hex(kid)>.pem` (stock `prosody_password_public_key_repo_url`).
    pub system_public_keys: std::collections::BTreeMap<String, PathBuf>,
    pub system_key_server: String,
    /// Accepted `iss` and `aud` of system tokens ("*": any).
    pub system_issuers: Vec<String>,
    pub system_audiences: Vec<String>,
}

impl Default for HttpApiSection {
    fn default() -> Self {
        HttpApiSection {
            enabled: true,
            public: false,
            room_size_token: false,
            room_info_token: true,
            system_public_keys: Default::default(),
            system_key_server: String::new(),
            system_issuers: vec!["jitsi".into()],
            system_audiences: vec!["*".into()],
        }
    }
}

impl Config {
    /// How system tokens are checked: None when no key is configured.
    pub fn system_token_config(
        &self,
    ) -> Result<Option<meetd_xmpp::token::TokenConfig>, ConfigError> {
        let a = &self.http_api;
        if a.system_public_keys.is_empty() && a.system_key_server.is_empty() {
            return Ok(None);
        }
        let mut public_keys = Vec::new();
        for (kid, path) in &a.system_public_keys {
            let pem = std::fs::read(path).map_err(|e| {
                ConfigError(format!(
                    "http_api.system_public_keys {}: {e}",
                    path.display()
                ))
            })?;
            public_keys.push((kid.clone(), pem));
        }
        let j = &self.auth.jwt;
        Ok(Some(meetd_xmpp::token::TokenConfig {
            app_secret: None,
            public_keys,
            key_server: (!a.system_key_server.is_empty()).then(|| a.system_key_server.clone()),
            accepted_issuers: a.system_issuers.clone(),
            accepted_audiences: a.system_audiences.clone(),
            accepted_subjects: Vec::new(),
            clock_skew: std::time::Duration::from_secs(j.clock_skew_secs),
            require_room: false,
            key_cache_size: j.key_cache_size,
            key_cache_ttl: std::time::Duration::from_secs(j.key_cache_secs),
            key_fetch_timeout: std::time::Duration::from_secs(j.key_fetch_timeout_secs),
        }))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    pub enabled: bool,
    pub public: bool,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            enabled: true,
            public: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentEntry {
    pub domain: String,
    pub secret: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSection {
    /// Empty: SQLite at `<data_dir>/meetd.db`. `postgres://user:password@host:port/database`:
    /// PostgreSQL, shared by several meetd (accounts, room PINs, secrets).
    pub url: String,
}

/// A configuration error: the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Config::parse(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].lines().count().max(1);
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            ConfigError(format!("{msg}{at}"))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// `[server] role = "bridge"`: the focus, the SIP gateway and the XMPP listeners are off
    /// (the focus is elsewhere); the bridge joins the brewery (`jvbbrewery` unless set).
    pub fn apply_role(&mut self) {
        if self.server.role != "bridge" {
            return;
        }
        self.focus.enabled = false;
        self.sip.enabled = false;
        self.listen.c2s = Listen::Off;
        self.listen.c2s_tls = Listen::Off;
        self.listen.component = Listen::Off;
        if self.bridge.brewery.is_empty() {
            self.bridge.brewery = "jvbbrewery".into();
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |k: &str, m: &str| Err(ConfigError(format!("{k}: {m}")));
        for (region, nets) in &self.web.regions {
            if let Some(bad) = nets.iter().find(|n| Cidr::parse(n).is_none()) {
                return err(
                    &format!("web.regions.{region}"),
                    &format!("{bad:?} is no network (address/prefix, e.g. \"10.1.0.0/16\")"),
                );
            }
        }
        match self.server.role.as_str() {
            "all" => {}
            "bridge" => {
                let b = &self.bridge;
                if !(b.xmpp_url.starts_with("ws://") || b.xmpp_url.starts_with("wss://")) {
                    return err(
                        "bridge.xmpp_url",
                        "role \"bridge\" needs the focus's XMPP WebSocket URL (ws://… or wss://…/xmpp-websocket)",
                    );
                }
                if b.xmpp_user.is_empty() || b.xmpp_password.is_empty() {
                    return err(
                        "bridge.xmpp_user/xmpp_password",
                        "role \"bridge\" needs the service account it logs in with",
                    );
                }
            }
            _ => return err("server.role", "must be \"all\" or \"bridge\""),
        }
        if self.visitors.enabled
            && (self.visitors.vnode.is_empty()
                || !self
                    .visitors
                    .vnode
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric()))
        {
            return err("visitors.vnode", "must be letters and digits, e.g. \"v1\"");
        }
        if !matches!(
            self.focus.bridge_selection.as_str(),
            "single" | "region" | "split"
        ) {
            return err(
                "focus.bridge_selection",
                "must be \"single\", \"region\" or \"split\"",
            );
        }
        if meetd_xmpp::jid::BareJid::new(&self.server.domain).is_err()
            || self.server.domain.contains('@')
        {
            return err("server.domain", "not a valid domain name");
        }
        let db = &self.database.url;
        if !db.is_empty() && !db.starts_with("postgres://") && !db.starts_with("postgresql://") {
            return err(
                "database.url",
                "a PostgreSQL URL (postgres://user:password@host:port/database), or empty for SQLite",
            );
        }
        match self.auth.mode.as_str() {
            "anonymous" | "internal" => {}
            "jwt" => {
                let j = &self.auth.jwt;
                if j.app_secret.is_empty()
                    && j.app_secret_file.is_empty()
                    && j.public_keys.is_empty()
                    && j.key_server.is_empty()
                {
                    return err(
                        "auth.jwt",
                        "mode \"jwt\" needs app_secret, app_secret_file, public_keys or key_server",
                    );
                }
                if j.app_id.is_empty() && j.accepted_issuers.is_empty() {
                    return err(
                        "auth.jwt.app_id",
                        "set the issuer (app_id) tokens must carry",
                    );
                }
                if !(j.key_server.is_empty()
                    || j.key_server.starts_with("https://")
                    || j.key_server.starts_with("http://"))
                {
                    return err("auth.jwt.key_server", "must start with https:// or http://");
                }
            }
            _ => {
                return err(
                    "auth.mode",
                    "must be \"anonymous\", \"internal\" or \"jwt\"",
                );
            }
        }
        match self.log.format.as_str() {
            "text" | "json" => {}
            _ => return err("log.format", "must be \"text\" or \"json\""),
        }
        if let Err(e) = crate::logging::effective_filter(&self.log.level) {
            return err("log.level", &format!("not a level or tracing filter: {e}"));
        }
        if self.log.retention_days == 0 {
            return err("log.retention_days", "must be at least 1");
        }
        if crate::logging::IpMode::parse(&self.privacy.log_ips).is_none() {
            return err(
                "privacy.log_ips",
                "must be \"full\", \"masked\" or \"none\"",
            );
        }
        let url = &self.server.public_url;
        if !(url.is_empty() || url.starts_with("https://") || url.starts_with("http://")) {
            return err("server.public_url", "must start with https:// or http://");
        }
        if self.tls.cert.is_empty() != self.tls.key.is_empty() {
            return err("tls.cert", "tls.cert and tls.key go together");
        }
        if self.tls.acme {
            if !self.tls.cert.is_empty() {
                return err("tls.acme", "either tls.acme or tls.cert/key, not both");
            }
            if crate::acme::host(self).is_none() {
                return err(
                    "tls.acme",
                    "needs server.public_url (https://<the host to certify>)",
                );
            }
            if !self.tls.acme_directory.starts_with("https://") {
                return err("tls.acme_directory", "must start with https://");
            }
        }
        let l = &self.limits;
        for (k, v) in [
            ("limits.max_stanza_bytes", l.max_stanza_bytes),
            ("limits.max_xml_depth", l.max_xml_depth),
            ("limits.max_sessions_per_ip", l.max_sessions_per_ip),
            ("limits.max_sessions", l.max_sessions),
            (
                "limits.stanza_rate_per_second",
                l.stanza_rate_per_second as usize,
            ),
            ("limits.stanza_burst", l.stanza_burst as usize),
            ("limits.bosh_max_body_bytes", l.bosh_max_body_bytes),
            ("limits.session_queue", l.session_queue),
            ("limits.bind_timeout_secs", l.bind_timeout_secs as usize),
        ] {
            if v == 0 {
                return err(k, "must be greater than 0");
            }
        }
        match self.muc.room_creation.as_str() {
            "anyone" | "focus" => {}
            _ => return err("muc.room_creation", "must be \"anyone\" or \"focus\""),
        }
        for (k, v) in [
            ("muc.max_rooms", self.muc.max_rooms),
            ("muc.max_presence_bytes", self.muc.max_presence_bytes),
            (
                "muc.message_rate_per_second",
                self.muc.message_rate_per_second as usize,
            ),
            ("muc.message_burst", self.muc.message_burst as usize),
        ] {
            if v == 0 {
                return err(k, "must be greater than 0");
            }
        }
        for (k, v) in [
            ("focus.min_participants", self.focus.min_participants),
            ("focus.max_conferences", self.focus.max_conferences),
            (
                "focus.max_ssrcs_per_endpoint",
                self.focus.max_ssrcs_per_endpoint,
            ),
            ("bridge.max_conferences", self.bridge.max_conferences),
            (
                "bridge.max_endpoints_per_conference",
                self.bridge.max_endpoints_per_conference,
            ),
            ("bridge.channel_queue", self.bridge.channel_queue),
            ("media.rtx_cache_packets", self.media.rtx_cache_packets),
            ("media.rtx_cache_ms", self.media.rtx_cache_ms as usize),
            (
                "media.max_sources_per_endpoint",
                self.media.max_sources_per_endpoint,
            ),
            ("media.rewrite_video_slots", self.media.rewrite_video_slots),
            ("media.rewrite_audio_slots", self.media.rewrite_audio_slots),
            ("media.socket_buffer_bytes", self.media.socket_buffer_bytes),
            ("media.engine_queue", self.media.engine_queue),
            ("media.tcp_max_connections", self.media.tcp_max_connections),
            ("media.tcp_send_queue", self.media.tcp_send_queue),
            ("turn.max_allocations", self.turn.max_allocations),
            ("turn.max_connections", self.turn.max_connections),
            (
                "turn.relay_socket_buffer_bytes",
                self.turn.relay_socket_buffer_bytes,
            ),
        ] {
            if v == 0 {
                return err(k, "must be greater than 0");
            }
        }
        if self.bridge.id.is_empty()
            || !self
                .bridge
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return err("bridge.id", "letters, digits, - and _ only");
        }
        if self.turn.relay_min_port == 0 || self.turn.relay_min_port > self.turn.relay_max_port {
            return err(
                "turn.relay_min_port",
                "must be between 1 and turn.relay_max_port",
            );
        }
        for (i, s) in self.turn.services.iter().enumerate() {
            if !matches!(s.kind.as_str(), "stun" | "turn" | "turns") {
                return err(
                    &format!("turn.services[{i}].type"),
                    "must be stun, turn or turns",
                );
            }
        }
        for (i, c) in self.components.iter().enumerate() {
            if c.secret.is_empty() {
                return err(&format!("components[{i}].secret"), "must not be empty");
            }
        }
        let sip = &self.sip;
        if sip.listen.parse::<SocketAddr>().is_err() {
            return err("sip.listen", "an address like 0.0.0.0:5060 or [::]:5060");
        }
        if !sip.tls_listen.is_empty() && sip.tls_listen.parse::<SocketAddr>().is_err() {
            return err("sip.tls_listen", "an address like 0.0.0.0:5061, or empty");
        }
        if !sip.public_ip.is_empty() && sip.public_ip.parse::<std::net::IpAddr>().is_err() {
            return err("sip.public_ip", "an IP address, or empty");
        }
        if sip.auth_user.is_empty() != sip.auth_password.is_empty() {
            return err("sip.auth_user/auth_password", "set both or neither");
        }
        if !(1..=16).contains(&sip.mix_speakers) {
            return err("sip.mix_speakers", "must be 1..16");
        }
        if !(40..=2000).contains(&sip.mix_buffer_ms) {
            return err("sip.mix_buffer_ms", "must be 40..2000");
        }
        if sip.max_calls == 0 || sip.pin_tries == 0 || sip.pin_timeout_secs == 0 {
            return err(
                "sip.max_calls/pin_tries/pin_timeout_secs",
                "must be greater than 0",
            );
        }
        let st = &self.streaming;
        if !(st.rtmp_url.is_empty()
            || st.rtmp_url.starts_with("rtmp://")
            || st.rtmp_url.starts_with("rtmps://"))
        {
            return err("streaming.rtmp_url", "must start with rtmp:// or rtmps://");
        }
        if !crate::live_stream::tee_safe(&st.rtmp_url) {
            return err(
                "streaming.rtmp_url",
                "must not hold spaces, quotes, backslashes, '|', '[' or ']'",
            );
        }
        if !(16..=3840).contains(&st.width)
            || !(16..=2160).contains(&st.height)
            || !st.width.is_multiple_of(2)
            || !st.height.is_multiple_of(2)
        {
            return err(
                "streaming.width/height",
                "must be even, 16..3840 wide and 16..2160 high",
            );
        }
        if !(1..=60).contains(&st.fps) {
            return err("streaming.fps", "must be 1..60");
        }
        if !(1..=8).contains(&st.audio_mix) {
            return err("streaming.audio_mix", "must be 1..8");
        }
        if !(40..=2000).contains(&st.audio_mix_buffer_ms) {
            return err("streaming.audio_mix_buffer_ms", "must be 40..2000");
        }
        if !(1..=64).contains(&st.max_concurrent) {
            return err("streaming.max_concurrent", "must be 1..64");
        }
        if st.video_kbps == 0 || st.audio_kbps == 0 {
            return err("streaming.video_kbps/audio_kbps", "must not be 0");
        }
        if !(1..=10).contains(&st.hls_segment_secs) {
            return err("streaming.hls_segment_secs", "must be 1..10");
        }
        if !(3..=30).contains(&st.hls_list_size) {
            return err("streaming.hls_list_size", "must be 3..30");
        }
        const PRESETS: [&str; 9] = [
            "ultrafast",
            "superfast",
            "veryfast",
            "faster",
            "fast",
            "medium",
            "slow",
            "slower",
            "veryslow",
        ];
        if !PRESETS.contains(&st.preset.as_str()) {
            return err(
                "streaming.preset",
                "must be an x264 preset (ultrafast … veryslow)",
            );
        }
        Ok(())
    }

    fn domain_or(&self, v: &str, prefix: &str) -> String {
        if v.is_empty() {
            format!("{prefix}.{}", self.server.domain)
        } else {
            v.to_string()
        }
    }

    /// The conference rooms' MUC service.
    pub fn muc(&self, x: &meetd_xmpp::XmppConfig) -> meetd_xmpp::muc::MucConfig {
        use meetd_xmpp::muc::{Creation, MucConfig};
        let mut m = MucConfig::new(&x.muc_domain);
        m.creation = if self.muc.room_creation == "focus" {
            Creation::Admins
        } else {
            Creation::Anyone
        };
        m.admins = vec![format!("focus@{}", x.auth_domain)];
        if self.streaming.enabled {
            // meetd's own live-stream occupant passes passwords, lobbies and limits.
            m.admins.push(self.streamer_bare(x));
        }
        m.admins.extend(self.muc.admins.iter().cloned());
        m.max_rooms = self.muc.max_rooms;
        m.max_occupants = self.muc.max_occupants;
        m.max_presence_bytes = self.muc.max_presence_bytes;
        m.message_rate = self.muc.message_rate_per_second;
        m.message_burst = self.muc.message_burst;
        m.queue = self.limits.session_queue.max(1024);
        m.allow_list = self.muc.allow_list.clone();
        if self.sip.enabled {
            // A caller with the meeting's PIN passes its password (docs/sip.md §3).
            m.allow_list.push(self.sip_gateway_bare(x));
        }
        m.validate_nicknames = self.muc.validate_nicknames;
        m.max_chat_messages = self.muc.max_chat_messages;
        // The app's view for visitors: config.js's hosts.muc with hosts.domain replaced by the
        // vnode domain.
        m.visitors = self
            .visitors
            .domain()
            .map(|d| meetd_xmpp::muc::VisitorView {
                muc_domain: x.muc_domain.replacen(&x.domain, &d, 1),
                login_domain: d,
            });
        m
    }

    /// The bare JID meetd's SIP gateway joins rooms with (one resource per call).
    pub fn sip_gateway_bare(&self, x: &meetd_xmpp::XmppConfig) -> String {
        format!("sip-gateway@{}", x.auth_domain)
    }

    /// The breakout rooms' MUC domain (`breakout.<domain>`).
    pub fn breakout_domain(&self) -> String {
        self.domain_or(&self.domains.breakout, "breakout")
    }

    /// The lobby rooms' MUC domain (`lobby.<domain>`).
    pub fn lobby_domain(&self) -> String {
        self.domain_or(&self.domains.lobby, "lobby")
    }

    /// The A/V moderation component (`avmoderation.<domain>`).
    pub fn av_moderation_domain(&self, x: &meetd_xmpp::XmppConfig) -> String {
        format!("avmoderation.{}", x.domain)
    }

    /// The room-metadata component (`metadata.<domain>`).
    pub fn metadata_domain(&self, x: &meetd_xmpp::XmppConfig) -> String {
        format!("metadata.{}", x.domain)
    }

    /// The brewery: service accounts only.
    pub fn brewery(&self, x: &meetd_xmpp::XmppConfig) -> meetd_xmpp::muc::MucConfig {
        let mut m = meetd_xmpp::muc::MucConfig::new(&x.internal_muc_domain);
        m.allowed_domains = vec![x.auth_domain.clone()];
        m.max_presence_bytes = self.muc.max_presence_bytes;
        m.shards = 1;
        m
    }

    /// The focus (Jicofo's job).
    pub fn focus(&self, x: &meetd_xmpp::XmppConfig) -> meetd_jingle::focus::FocusOptions {
        use meetd_jingle::conference::FocusConfig;
        let mut c = FocusConfig::new(&format!("focus@{}/focus", x.auth_domain));
        c.min_participants = self.focus.min_participants;
        // Waiting for the host: hosts are the moderators, not whoever came first.
        // With tokens, the tokens say who moderates.
        c.auto_owner = !self.auth.wait_for_host
            && (self.auth.mode != "jwt" || self.auth.jwt.first_joiner_moderator);
        c.single_participant_timeout =
            std::time::Duration::from_secs(self.focus.single_participant_timeout_secs);
        c.source_limits = meetd_jingle::sources::SourceLimits {
            max_ssrcs: self.focus.max_ssrcs_per_endpoint,
            max_groups: self.focus.max_ssrc_groups_per_endpoint,
        };
        c.max_audio_senders = self.focus.max_audio_senders;
        c.sctp = self.focus.sctp;
        c.opus_red = self.focus.opus_red;
        c.max_video_senders = self.focus.max_video_senders;
        c.trusted_domains = vec![x.recorder_domain.clone()];
        c.streamer_jid = self
            .streaming
            .enabled
            .then(|| format!("{}/meetd", self.streamer_bare(x)));
        c.visitor_domain = self.visitors.domain();
        c.visitor_vnode = self.visitors.enabled.then(|| self.visitors.vnode.clone());
        c.visitors_after = self.visitors.max_participants;
        c.caps = meetd_xmpp::caps::CapsCache::new(self.focus.caps_cache);
        c.recorder = meetd_jingle::jibri::RecorderConfig {
            pending_timeout: std::time::Duration::from_secs(self.jibri.pending_timeout_secs),
            retries: self.jibri.retries,
        };
        meetd_jingle::focus::FocusOptions {
            cfg: c,
            service_domain: x.focus_domain.clone(),
            muc_domains: if self.breakout_rooms.enabled {
                vec![x.muc_domain.clone(), self.breakout_domain()]
            } else {
                vec![x.muc_domain.clone()]
            },
            max_conferences: self.focus.max_conferences,
            queue: self.limits.session_queue,
            component_domains: vec![self.metadata_domain(x), self.av_moderation_domain(x)],
            jibri_brewery: (!self.jibri.brewery.is_empty())
                .then(|| format!("{}@{}", self.jibri.brewery, x.internal_muc_domain)),
            jibri_reply_timeout: std::time::Duration::from_secs(self.jibri.reply_timeout_secs),
            jigasi_brewery: (self.jigasi.dial_out && !self.jigasi.brewery.is_empty())
                .then(|| format!("{}@{}", self.jigasi.brewery, x.internal_muc_domain)),
            draining: Default::default(),
            live_streams: None,
            bridge_lost: None,
            rooms: None,
        }
    }

    /// The bare JID of meetd's own live-stream occupant (docs/streaming.md): on the hidden
    /// domain, so that the clients treat it as a recorder, and a service admin of the rooms.
    pub fn streamer_bare(&self, x: &meetd_xmpp::XmppConfig) -> String {
        format!("live-stream@{}", x.recorder_domain)
    }

    /// How tokens are checked (mode "jwt"); reads the secret and key files.
    pub fn token_config(&self) -> Result<meetd_xmpp::token::TokenConfig, ConfigError> {
        use std::time::Duration;
        let j = &self.auth.jwt;
        let read = |what: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| ConfigError(format!("{what} {}: {e}", p.display())))
        };
        let app_secret = if !j.app_secret_file.is_empty() {
            let b = read(
                "auth.jwt.app_secret_file",
                std::path::Path::new(&j.app_secret_file),
            )?;
            Some(String::from_utf8_lossy(&b).trim().to_string())
        } else {
            (!j.app_secret.is_empty()).then(|| j.app_secret.clone())
        };
        let mut public_keys = Vec::new();
        for (kid, path) in &j.public_keys {
            public_keys.push((kid.clone(), read("auth.jwt.public_keys", path)?));
        }
        let mut subjects = Vec::new();
        if j.check_subject {
            subjects.push(self.server.domain.clone());
            // The public host, with and without its port (Moodle's "domain" setting).
            if let Some(authority) = self
                .server
                .public_url
                .split("://")
                .nth(1)
                .and_then(|r| r.split('/').next())
                .filter(|h| !h.is_empty())
            {
                for h in [authority, authority.split(':').next().unwrap_or(authority)] {
                    if !subjects.iter().any(|s| s == h) {
                        subjects.push(h.to_string());
                    }
                }
            }
        }
        Ok(meetd_xmpp::token::TokenConfig {
            app_secret,
            public_keys,
            key_server: (!j.key_server.is_empty()).then(|| j.key_server.clone()),
            accepted_issuers: if j.accepted_issuers.is_empty() {
                vec![j.app_id.clone()]
            } else {
                j.accepted_issuers.clone()
            },
            accepted_audiences: j.accepted_audiences.clone(),
            accepted_subjects: subjects,
            clock_skew: Duration::from_secs(j.clock_skew_secs),
            require_room: j.require_room,
            key_cache_size: j.key_cache_size,
            key_cache_ttl: Duration::from_secs(j.key_cache_secs),
            key_fetch_timeout: Duration::from_secs(j.key_fetch_timeout_secs),
        })
    }

    pub fn sqlite_path(&self) -> PathBuf {
        self.server.data_dir.join("meetd.db")
    }

    /// The XMPP crate's view of this configuration.
    pub fn xmpp(&self) -> meetd_xmpp::XmppConfig {
        use std::time::Duration;
        let mut x = meetd_xmpp::XmppConfig::for_domain(&self.server.domain);
        x.main_auth = match self.auth.mode.as_str() {
            "internal" => meetd_xmpp::AuthMode::Internal,
            "jwt" => meetd_xmpp::AuthMode::Token,
            _ => meetd_xmpp::AuthMode::Anonymous,
        };
        x.allow_empty_token = self.auth.jwt.allow_empty;
        x.guest_domain =
            (!self.auth.guest_domain.is_empty()).then(|| self.auth.guest_domain.clone());
        x.auth_domain = self.domain_or(&self.domains.auth, "auth");
        x.muc_domain = self.domain_or(&self.domains.muc, "muc");
        x.internal_muc_domain = self.domain_or(&self.domains.internal_muc, "internal-muc");
        x.focus_domain = self.domain_or(&self.domains.focus, "focus");
        x.recorder_domain = self.domain_or(&self.domains.hidden, "hidden");
        x.visitor_domain = self.visitors.domain();
        let l = &self.limits;
        x.limits = meetd_xmpp::Limits {
            max_stanza_bytes: l.max_stanza_bytes,
            max_xml_depth: l.max_xml_depth,
            max_sessions_per_ip: l.max_sessions_per_ip,
            max_sessions: l.max_sessions,
            stanza_rate_per_second: l.stanza_rate_per_second,
            stanza_burst: l.stanza_burst,
            bosh_max_body_bytes: l.bosh_max_body_bytes,
            session_queue: l.session_queue,
            max_directed_presences: l.max_directed_presences,
            bind_timeout: Duration::from_secs(l.bind_timeout_secs),
        };
        x.sm_resume_timeout = Duration::from_secs(self.xmpp.sm_resume_timeout_secs);
        x.sm_max_unacked = self.xmpp.sm_max_unacked;
        x.bosh_inactivity = Duration::from_secs(self.xmpp.bosh_inactivity_secs);
        x.bosh_max_wait = Duration::from_secs(self.xmpp.bosh_max_wait_secs);
        x.consider_http_secure = self.xmpp.consider_http_secure;
        x.external_services = self
            .turn
            .services
            .iter()
            .map(|s| meetd_xmpp::ExternalService {
                kind: s.kind.clone(),
                host: s.host.clone(),
                port: s.port,
                transport: (!s.transport.is_empty()).then(|| s.transport.clone()),
            })
            .collect();
        x.turn_secret = (!self.turn.secret.is_empty()).then(|| self.turn.secret.clone());
        x.turn_ttl = Duration::from_secs(self.turn.ttl_secs);
        x.components = self
            .components
            .iter()
            .map(|c| (c.domain.clone(), c.secret.clone()))
            .collect();
        x
    }
}

/// A network, `address/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = s.trim().split_once('/')?;
        let addr: IpAddr = a.parse().ok()?;
        let prefix: u8 = p.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client may come as an IPv4-mapped IPv6 address.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (net, ip, bits) = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (
                u128::from(u32::from(n)) << 96,
                u128::from(u32::from(i)) << 96,
                self.prefix,
            ),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), self.prefix),
            _ => return false,
        };
        let mask = if bits == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(bits))
        };
        net & mask == ip & mask
    }
}

impl WebSection {
    /// The region of a client at `ip` (`[web] regions`), if any.
    pub fn region_of(&self, ip: IpAddr) -> Option<&str> {
        self.regions
            .iter()
            .find(|(_, nets)| {
                nets.iter()
                    .filter_map(|n| Cidr::parse(n))
                    .any(|c| c.contains(ip))
            })
            .map(|(r, _)| r.as_str())
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_by_network() {
        let mut w = WebSection::default();
        w.regions.insert(
            "campus-a".into(),
            vec!["10.1.0.0/16".into(), "2001:db8:1::/48".into()],
        );
        w.regions
            .insert("campus-b".into(), vec!["10.2.0.0/16".into()]);
        let at = |ip: &str| w.region_of(ip.parse().unwrap());
        assert_eq!(at("10.1.200.3"), Some("campus-a"));
        assert_eq!(at("::ffff:10.2.0.9"), Some("campus-b"), "IPv4-mapped");
        assert_eq!(at("2001:db8:1:ff::1"), Some("campus-a"));
        assert_eq!(at("10.3.0.1"), None);
        assert!(Cidr::parse("10.0.0.0/33").is_none() && Cidr::parse("10.0.0.0").is_none());
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("192.0.2.1".parse().unwrap())
        );
        let mut c = Config::default();
        c.web.regions.insert("x".into(), vec!["nonsense".into()]);
        assert!(c.validate().unwrap_err().0.contains("web.regions.x"));
    }

    #[test]
    fn shipped_file_matches_defaults() {
        let text = include_str!("../conf/meetd.toml");
        let parsed = Config::parse(text).expect("conf/meetd.toml parses");
        let d = Config::default();
        assert_eq!(
            toml::to_string(&parsed).unwrap(),
            toml::to_string(&d).unwrap(),
            "conf/meetd.toml must show the built-in defaults"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("[limits]\nmax_stanza_byte = 5\n").unwrap_err();
        assert!(e.0.contains("max_stanza_byte"), "{}", e.0);
    }

    #[test]
    fn bad_value_is_named() {
        let e = Config::parse("[limits]\nmax_stanza_bytes = 0\n").unwrap_err();
        assert!(e.0.contains("limits.max_stanza_bytes"), "{}", e.0);
        let e = Config::parse("[listen]\nhttp = \"nowhere\"\n").unwrap_err();
        assert!(e.0.contains("nowhere"), "{}", e.0);
    }
}
