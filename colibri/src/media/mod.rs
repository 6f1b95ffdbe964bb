//! The media engine: every endpoint of every conference on one UDP port, sans-IO.
//!
//! Datagrams and the current time go in ([`MediaEngine::handle_datagram`],
//! [`MediaEngine::handle_timeout`]); datagrams to send, events and the next timeout come out of
//! [`MediaEngine::poll_output`], which is drained until it returns a timeout. Each endpoint is
//! one str0m `Rtc` (Direct API) doing ICE (bridge controlling) and DTLS (bridge server, one
//! certificate per process); the engine demultiplexes the port (STUN USERNAME, then remote
//! address), forwards audio to everyone and one simulcast layer of each video source per
//! receiver, rewritten onto the SSRC the receiver knows (docs/bridge.md Part B,
//! docs/bridge.md Part C). It also drops sender-signalled silence with gap-free sequence
//! numbers (B.6), identifies each conference's dominant speaker from ssrc-audio-level (B.7,
//! `speech.rs`), monitors per-endpoint packet flow (B.10), and, for receivers created with
//! `ssrc-rewriting`, maps forwarded sources onto a bounded pool of bridge SSRCs announced as
//! source maps (B.9).
//!
//! Media does not go through str0m (unless bandwidth estimation is on, which needs str0m's
//! send path): with each endpoint's SRTP keys (`srtp.rs`, captured from its DTLS session) the
//! engine decrypts what senders send and answers them with receiver reports, NACKs, PLIs and
//! transport-cc feedback (`ingress.rs`); it writes and encrypts what receivers get, answers
//! their NACKs from a retransmission cache per sender layer, turns their PLI/FIR into keyframe
//! requests, sends sender reports (`egress.rs`) and estimates their downlink from their
//! transport-cc feedback (`bwe.rs`).
//!
//! The files: `conference.rs` (a conference's members and speech detector), `endpoint.rs`
//! (an endpoint's transport, receive side and send side), `forward.rs` (layer choice,
//! per-receiver rewriting, bandwidth shares), `speech.rs`, `ingress.rs`, `egress.rs`,
//! `bwe.rs`, `srtp.rs`, `timers.rs` (the bridge-wide timer table), `events.rs` (what the
//! engine reports), `buf.rs` (shared payload buffers), `constraints.rs` (a receiver's video
//! wishes). Packet formats are in `crate::rtp`; the engine reads no clock and draws no
//! randomness itself (`MediaEngine::new` takes both).

mod buf;
mod bwe;
mod conference;
mod constraints;
mod egress;
mod endpoint;
mod events;
mod forward;
mod ingress;
mod speech;
pub mod srtp;
#[cfg(test)]
mod tests;
mod timers;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use str0m::bwe::BweKind;
use str0m::config::DtlsCert;
use str0m::media::{KeyframeRequestKind, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, Ssrc, Vp8Descriptor};
use str0m::{Event, IceConnectionState, Input, Output};

use crate::colibri2::{self, MediaType};
use crate::rtp::payload::{VideoCodec, patch_vp8, starts_keyframe, vp8_keyframe_height};
pub use crate::rtp::rtcp::sr::Clock;
use crate::rtp::rtcp::{Feedback, parse_feedback};
use crate::rtp::stun::stun_request_local_ufrag;
use crate::rtp::{ExtOut, RtpOut, is_rtcp, is_rtp, write_header};
use buf::{Buf, Payload};
use conference::Conference;
pub use constraints::ReceiverConstraints;
use egress::Sent;
use endpoint::{
    DependencyDescriptor, Endpoint, EpId, Forward, RtcSetup, RxSide, SenderSource, SourceId,
    Transport, TxSide, build_rtc, jitsi_default_medias, video_codec,
};
pub use events::{EngineEvent, MappedSource};
use forward::{BandwidthCandidate, InPacket, LayerView, allocate_bandwidth, select_layer};
use srtp::Srtp;
use timers::{Timer, TimerTable};

/// maxHeight for sources a receiver has not constrained yet (docs/bridge.md A.3).
const DEFAULT_MAX_HEIGHT: u32 = 180;
/// At most one keyframe request per sender layer per this interval (docs/bridge.md B.4).
const PLI_INTERVAL: Duration = Duration::from_millis(200);
/// How far a receiver's str0m clock may lag before a forwarded packet advances it.
const RECEIVER_CLOCK_STEP: Duration = Duration::from_millis(1);
/// Timeout reported when no endpoint has anything scheduled.
const IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// The connectivity monitor runs this often (docs/bridge.md B.10).
const STATUS_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// An endpoint that sent nothing for this long is announced inactive.
const INACTIVE_AFTER: Duration = Duration::from_secs(8);
/// An endpoint that never became active is announced inactive after this long.
const NEVER_ACTIVE_AFTER: Duration = Duration::from_secs(15);
/// `SenderSourceConstraints` for a source some receiver wants unlimited (maxHeight −1):
/// lib-jitsi-meet's own maximum (`MAX_LOCAL_RESOLUTION`).
const UNLIMITED_SENDER_HEIGHT: u32 = 2160;
/// Sender reports for forwarded streams go out this often (fast path).
const SR_INTERVAL: Duration = Duration::from_secs(1);
/// A forwarded stream silent for this long gets no more sender reports.
const SR_IDLE: Duration = Duration::from_secs(5);
/// The fast path's NACKs to senders go out this often, transport-cc feedback every other
/// time (100 ms, as browsers send theirs)…
const FEEDBACK_INTERVAL: Duration = Duration::from_millis(50);
/// …and its receiver reports this often.
const RR_INTERVAL: Duration = Duration::from_secs(1);
/// NACKed sequence numbers handled per RTCP packet.
const MAX_NACKS_PER_PACKET: usize = 256;
/// The engine's hot maps: a fast hasher with a per-process random seed.
pub(super) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Simulcast layers looked at per source (lib-jitsi-meet sends at most 3).
const MAX_LAYERS: usize = 8;
/// Losses towards a receiver are not counted this long after a video stream starts on it (it
/// drops the packets of an SSRC its signalling has not caught up with).
const NEW_SOURCE_GRACE: Duration = Duration::from_secs(2);
/// Switches remembered per forwarded stream to map NACKed sequence numbers back.
const SLOT_HISTORY: usize = 8;
/// Resent sequence numbers remembered per forwarded stream.
const RECENT_RESENDS: usize = 64;
/// Send buffers kept for reuse.
const BUFFER_POOL: usize = 1024;
/// The estimate towards a receiver before its first transport-cc feedback (JVB: 2.5 Mbit/s).
const INITIAL_BWE_BPS: u64 = 2_500_000;
/// How often layer rates are measured and every receiver's allocation is redone; an
/// estimate that moved by more than `REALLOCATE_CHANGE` redoes it at once.
const RATE_INTERVAL: Duration = Duration::from_secs(1);
const REALLOCATE_CHANGE: f64 = 0.15;
/// Padding goes out this often while a receiver probes (JVB: 15 ms) ...
const PROBE_INTERVAL: Duration = Duration::from_millis(15);
/// ... at most this many packets per receiver each time, each this much padding (the most an
/// RTP padding count can say).
const PROBE_PACKETS_PER_ROUND: usize = 16;
const PROBE_PADDING: usize = 255;
/// Retransmissions to a receiver take at most this share of its estimate (so that repairs
/// of losses on a congested path do not add to the congestion), with bursts of up to
/// `RTX_BURST` of it.
const RTX_SHARE: f64 = 0.5;
const RTX_BURST: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Host candidates: the addresses (ip + media port) the bridge advertises and receives on.
    pub local_addrs: Vec<SocketAddr>,
    pub max_endpoints: usize,
    /// Forwarded packets kept per sender video stream (simulcast layer) to answer receivers'
    /// NACKs (JVB: 500).
    pub rtx_cache_packets: usize,
    /// How long forwarded video packets are kept for retransmission.
    pub rtx_cache_age: Duration,
    /// Sources (media-source elements) accepted per endpoint.
    pub max_sources_per_endpoint: usize,
    /// SSRC rewriting: video / audio slots per receiver (JVB `ssrc-limit`: 50 each).
    pub rewrite_video_slots: usize,
    pub rewrite_audio_slots: usize,
    /// An endpoint whose ICE + DTLS did not come up this long after creation is expired
    /// (docs/bridge.md B.10; `Duration::ZERO`: never).
    pub expire_unconnected_after: Duration,
    /// A connected endpoint from which nothing (not even STUN) arrived for this long is
    /// expired (JVB `entity-expiration.timeout`, 1 min; `Duration::ZERO`: never).
    pub expire_inactive_after: Duration,
    /// str0m's transport-cc bandwidth estimation towards each endpoint, starting from this
    /// estimate (bps); `None`: off. Feeds `ConnectionStats`. With it on, all media goes
    /// through str0m (the fast path is off: str0m must see what it sends), which paces
    /// everything sent to the endpoint at 1.1 × the estimate (and probes with padding), while
    /// layer selection does not yet follow the estimate: hence off by default.
    pub bwe_initial_bps: Option<u64>,
    /// How often each endpoint gets its downlink estimate (`ConnectionStats`, JVB: 10 s).
    pub connection_stats_interval: Duration,
    /// Engine threads (shards): conferences are spread over them by name, one more thread
    /// receives and hands datagrams over. 1: one thread does everything (the default).
    pub threads: usize,
    /// Video layers follow each receiver's bandwidth estimate (docs/bridge.md B.8; JVB
    /// `cc.trust-bwe`), and padding probes for more when the estimate holds layers back. Off:
    /// only the receivers' constraints and lastN count.
    pub trust_bwe: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            local_addrs: Vec::new(),
            max_endpoints: 1000,
            rtx_cache_packets: 500,
            rtx_cache_age: Duration::from_secs(1),
            max_sources_per_endpoint: 20,
            rewrite_video_slots: 50,
            rewrite_audio_slots: 50,
            expire_unconnected_after: Duration::from_secs(30),
            expire_inactive_after: Duration::from_secs(60),
            bwe_initial_bps: None,
            connection_stats_interval: Duration::from_secs(10),
            trust_bwe: true,
            threads: 1,
        }
    }
}

impl EngineStats {
    /// Add another shard's counters (the CPU share: the busiest shard's).
    pub fn add(&mut self, o: &EngineStats) {
        self.endpoints += o.endpoints;
        self.conferences += o.conferences;
        self.packets_in += o.packets_in;
        self.bytes_in += o.bytes_in;
        self.packets_out += o.packets_out;
        self.bytes_out += o.bytes_out;
        self.dropped_datagrams += o.dropped_datagrams;
        self.rtp_forwarded += o.rtp_forwarded;
        self.rtp_unknown_ssrc += o.rtp_unknown_ssrc;
        self.rtp_duplicates += o.rtp_duplicates;
        self.keyframe_requests += o.keyframe_requests;
        self.force_muted_dropped += o.force_muted_dropped;
        self.layer_switches += o.layer_switches;
        self.rtc_errors += o.rtc_errors;
        self.silence_dropped += o.silence_dropped;
        self.dominant_speaker_changes += o.dominant_speaker_changes;
        self.retransmissions += o.retransmissions;
        self.retransmissions_limited += o.retransmissions_limited;
        self.receiver_keyframe_requests += o.receiver_keyframe_requests;
        self.send_dropped += o.send_dropped;
        self.gso_datagrams += o.gso_datagrams;
        self.probe_packets += o.probe_packets;
        self.engine_cpu_permille = self.engine_cpu_permille.max(o.engine_cpu_permille);
        self.bwe_suspensions += o.bwe_suspensions;
    }
}

/// One datagram to send from the media port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

#[derive(Debug)]
pub enum EngineOutput {
    Transmit(Transmit),
    Event(EngineEvent),
    /// Call [`MediaEngine::handle_timeout`] at this time (or earlier on a datagram).
    Timeout(Instant),
}

/// Counters of the media engine (summed over its shards).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub endpoints: usize,
    pub conferences: usize,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Datagrams that matched no endpoint or did not parse.
    pub dropped_datagrams: u64,
    /// RTP packets written to receivers.
    pub rtp_forwarded: u64,
    /// Incoming RTP packets from unsignalled SSRCs.
    pub rtp_unknown_ssrc: u64,
    /// Incoming video packets (or RTX) whose sequence number was received already: not
    /// forwarded.
    pub rtp_duplicates: u64,
    pub keyframe_requests: u64,
    /// Packets dropped because the focus force-muted their sender.
    pub force_muted_dropped: u64,
    pub layer_switches: u64,
    /// Errors reported by str0m (the endpoint is marked failed when its `Rtc` dies).
    pub rtc_errors: u64,
    /// Silent audio packets dropped (docs/bridge.md B.6).
    pub silence_dropped: u64,
    /// Changes of a conference's dominant speaker.
    pub dominant_speaker_changes: u64,
    /// Packets resent (as RTX) for receivers' NACKs.
    pub retransmissions: u64,
    /// NACKed packets not resent because the receiver's retransmissions used their share of
    /// its estimate.
    pub retransmissions_limited: u64,
    /// Keyframe requests (PLI/FIR) received from receivers about forwarded streams.
    pub receiver_keyframe_requests: u64,
    /// Datagrams the socket did not take (send buffer full, no route).
    pub send_dropped: u64,
    /// Datagrams that left in UDP GSO sends (runs of equal size to one receiver).
    pub gso_datagrams: u64,
    /// Padding packets sent to probe receivers' bandwidth.
    pub probe_packets: u64,
    /// CPU use of the engine's thread over the last few seconds, per mille of one core (set
    /// by the I/O loop; the stress level is this over 900, JVB's 0.9 CPU threshold).
    pub engine_cpu_permille: u64,
    /// Forwarded video sources held back (not sent) because a receiver's estimate had no room
    /// for them, counted per allocation that changed to that.
    pub bwe_suspensions: u64,
}

/// One incoming RTP packet, from the fast path or from str0m.
#[derive(Debug)]
/// What forwarding one packet needs from its sender's side ([`MediaEngine::ingest`]).
struct Ingested {
    /// The sender's source and layer the packet belongs to.
    si: usize,
    li: usize,
    kind: MediaType,
    source_id: SourceId,
    /// The source's layers as layer selection sees them (the first `nviews`).
    views: [LayerView; MAX_LAYERS],
    nviews: usize,
    input: InPacket,
    vp8: Option<Vp8Descriptor>,
}

struct Incoming {
    ssrc: u32,
    /// Extended sequence number.
    seq: u64,
    ts: u32,
    pt: u8,
    marker: bool,
    payload: Payload,
    ext: ExtOut,
    arrival: Instant,
}

impl Incoming {
    fn from_str0m(p: RtpPacket) -> Incoming {
        let e = &p.header.ext_vals;
        Incoming {
            ssrc: *p.header.ssrc,
            seq: *p.seq_no,
            ts: p.header.timestamp,
            pt: *p.header.payload_type,
            marker: p.header.marker,
            ext: ExtOut {
                audio_level: e.audio_level.map(|l| {
                    let v = if e.voice_activity == Some(true) {
                        0x80
                    } else {
                        0
                    };
                    v | (l.unsigned_abs() & 0x7f)
                }),
                video_orientation: e.video_orientation.map(|o| o as u8),
                dependency_descriptor: e
                    .user_values
                    .get::<DependencyDescriptor>()
                    .map(|d| Arc::from(d.0.as_slice())),
            },
            arrival: p.timestamp,
            payload: Buf::payload(&p.payload),
        }
    }
}

impl ExtOut {
    /// The same values for str0m's send path.
    fn to_str0m(&self) -> ExtensionValues {
        let mut ext = ExtensionValues {
            audio_level: self.audio_level.map(|b| -((b & 0x7f) as i8)),
            voice_activity: self.audio_level.map(|b| b & 0x80 != 0),
            video_orientation: self
                .video_orientation
                .map(|b| str0m::rtp::VideoOrientation::from(b & 3)),
            ..Default::default()
        };
        if let Some(dd) = &self.dependency_descriptor {
            ext.user_values.set(DependencyDescriptor(dd.to_vec()));
        }
        ext
    }
}

/// All media of the bridge. See the module docs.
pub struct MediaEngine {
    cfg: EngineConfig,
    cert: DtlsCert,
    fingerprint: String,
    now: Option<Instant>,
    endpoints: FastMap<EpId, Endpoint>,
    by_name: HashMap<(String, String), EpId>,
    by_ufrag: HashMap<String, EpId>,
    by_addr: FastMap<SocketAddr, EpId>,
    /// The conferences, by name.
    conferences: FastMap<String, Conference>,
    next_id: u64,
    out: VecDeque<EngineOutput>,
    dirty: Vec<EpId>,
    stats: EngineStats,
    /// The bridge-wide timers (feedback, reports, rates, probes, monitor, stats).
    timers: TimerTable,
    /// Conferences whose `SenderSourceConstraints` may have changed.
    pending_sender_constraints: HashSet<String>,
    /// Earliest `next_timeout` of all endpoints, when known (`None`: scan again). Only ever
    /// too early, never too late: an early wake-up just rescans.
    ep_deadline: Option<Instant>,
    /// When the next feedback round also sends receiver reports (unset: the first one does).
    next_rr: Option<Instant>,
    /// When layer rates were last measured.
    rates_at: Option<Instant>,
    /// Counts feedback rounds (transport-cc goes out every other one).
    feedback_rounds: u64,
    /// Scratch: NACKed sequence numbers.
    nacks: Vec<u16>,
    /// Wall clock reference for sender reports; its instant stands for "now" before the first
    /// input.
    clock: Clock,
    /// Seeded: SSRCs and sequence numbers the engine picks (and each endpoint's own generator).
    rng: SmallRng,
    /// Send buffers given back by the I/O side ([`MediaEngine::recycle`]), and scratch space
    /// for an RTP header and a payload.
    bufs: SendBufs,
    /// Scratch space: an RTCP packet, parsed feedback.
    rtcp: Vec<u8>,
    feedback: Vec<Feedback>,
}

impl MediaEngine {
    /// A new engine with a fresh ECDSA P-256 certificate shared by all endpoints. The engine
    /// reads no clock and draws no randomness of its own: `start` is the wall clock against
    /// the monotonic one when it starts (time then comes with every input), `seed` seeds its
    /// SSRCs and sequence numbers (the DTLS keys and str0m's ICE credentials excepted).
    pub fn new(cfg: EngineConfig, start: Clock, seed: u64) -> MediaEngine {
        let provider = str0m::crypto::from_feature_flags();
        // Only fails if the platform's crypto cannot make a key pair: nothing can run then.
        let cert = provider
            .dtls_provider
            .generate_certificate()
            .expect("generate the DTLS certificate");
        MediaEngine::with_cert(cfg, cert, start, seed)
    }

    /// Another engine of the same bridge (a shard): the same DTLS certificate, so the one
    /// fingerprint in the offers holds for all.
    pub fn sibling(&self, cfg: EngineConfig, seed: u64) -> MediaEngine {
        MediaEngine::with_cert(cfg, self.cert.clone(), self.clock, seed)
    }

    fn with_cert(cfg: EngineConfig, cert: DtlsCert, start: Clock, seed: u64) -> MediaEngine {
        let provider = str0m::crypto::from_feature_flags();
        let digest = provider.sha256_provider.sha256(&cert.certificate);
        let fingerprint = digest
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        MediaEngine {
            ep_deadline: None,
            timers: TimerTable::default(),
            next_rr: None,
            rates_at: None,
            feedback_rounds: 0,

            nacks: Vec::new(),
            clock: start,
            rng: SmallRng::seed_from_u64(seed),
            bufs: SendBufs {
                pool: Vec::new(),
                hdr: Vec::with_capacity(64),
                scratch: Vec::with_capacity(1500),
            },
            rtcp: Vec::with_capacity(1500),
            feedback: Vec::new(),
            cfg,
            cert,
            fingerprint,
            now: None,
            endpoints: FastMap::default(),
            by_name: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: FastMap::default(),
            conferences: FastMap::default(),
            next_id: 1,
            out: VecDeque::new(),
            dirty: Vec::new(),
            stats: EngineStats::default(),
            pending_sender_constraints: HashSet::new(),
        }
    }

    /// SHA-256 fingerprint of the certificate, `AA:BB:...`, for the offer.
    pub fn dtls_fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    fn tick(&mut self, now: Instant) -> Instant {
        let now = self.now.map_or(now, |n| n.max(now));
        self.now = Some(now);
        now
    }

    fn id_of(&self, endpoint: (&str, &str)) -> Option<EpId> {
        self.by_name
            .get(&(endpoint.0.to_string(), endpoint.1.to_string()))
            .copied()
    }

    fn mark_dirty(&mut self, id: EpId) {
        if let Some(ep) = self.endpoints.get_mut(&id)
            && !ep.dirty
        {
            ep.dirty = true;
            self.dirty.push(id);
        }
    }

    /// A new endpoint with the ICE credentials the Colibri2 service handed out. Replaces an
    /// endpoint of the same name. Ignored (and logged) past `max_endpoints` or when the ufrag
    /// is taken. `ssrc_rewriting`: the focus created it with that capability (docs/bridge.md B.9).
    /// `medias`: the payload types and header extensions offered (empty: Jitsi's defaults).
    /// Building with them at once matters: a rebuild drops the receiver's SSRC-rewriting
    /// slots, and a client that got the first slots' mappings shows their tracks as well.
    #[allow(clippy::too_many_arguments)]
    pub fn add_endpoint(
        &mut self,
        conference: &str,
        endpoint: &str,
        local_ufrag: &str,
        local_pwd: &str,
        ssrc_rewriting: bool,
        medias: &[colibri2::Media],
        now: Instant,
    ) {
        let now = self.tick(now);
        if self.id_of((conference, endpoint)).is_some() {
            self.remove_endpoint((conference, endpoint));
        }
        if self.endpoints.len() >= self.cfg.max_endpoints {
            tracing::warn!(
                conference,
                endpoint,
                "media engine full, endpoint not added"
            );
            return;
        }
        if local_ufrag.is_empty() || self.by_ufrag.contains_key(local_ufrag) {
            tracing::warn!(conference, endpoint, "ICE ufrag empty or in use");
            return;
        }
        let offered = (!medias.is_empty()).then(|| medias.to_vec());
        let medias = offered.clone().unwrap_or_else(jitsi_default_medias);
        let (rtc, caps) = build_rtc(
            &RtcSetup {
                cert: &self.cert,
                ufrag: local_ufrag,
                pwd: local_pwd,
                medias: &medias,
                local_addrs: &self.cfg.local_addrs,
                rtx_cache_packets: self.cfg.rtx_cache_packets,
                rtx_cache_age: self.cfg.rtx_cache_age,
                bwe_initial_bps: self.cfg.bwe_initial_bps,
                fast_egress: self.cfg.bwe_initial_bps.is_none(),
            },
            now,
        );
        let id = self.next_id;
        self.next_id += 1;
        self.ep_deadline = None;
        self.endpoints.insert(
            id,
            Endpoint {
                rng: SmallRng::seed_from_u64(self.rng.random()),
                conference: conference.to_string(),
                id: endpoint.to_string(),
                caps,
                dirty: false,
                medias: offered,
                created: now,
                transport: Transport {
                    ufrag: local_ufrag.to_string(),
                    pwd: local_pwd.to_string(),
                    rtc,
                    rtc_now: now,
                    next_timeout: now,
                    connected: false,
                    failed: false,
                    remote: None,
                    dtls_started: false,
                    addrs: Vec::new(),
                    last_rx: None,
                    status: None,
                    connected_once: false,
                    srtp: None,
                    send_path: None,
                },
                rx: RxSide {
                    sources: Vec::new(),
                    ssrc_index: FastMap::default(),
                    rtx_index: FastMap::default(),
                    other_ssrcs: HashSet::new(),
                    twcc: Default::default(),
                    declared_rx: Default::default(),
                    video_types: HashMap::new(),
                    force_mute: (false, false),
                },
                tx: TxSide {
                    sendside: bwe::SendSide::with_initial(INITIAL_BWE_BPS),
                    fb_ssrc: self.rng.random_range(1..=u32::MAX),
                    constraints: ReceiverConstraints::default(),
                    forwards: FastMap::default(),
                    slots: FastMap::default(),
                    by_mid: HashMap::new(),
                    next_mid: 0,
                    ssrc_rewriting,
                    announced: Vec::new(),
                    bwe_bps: None,
                    alloc_budget: None,
                    probe_bps: 0,
                    probe_at: None,
                    rtx_tokens: 0.0,
                    rtx_at: None,
                },
            },
        );
        self.timers
            .start(Timer::StatusCheck, now + STATUS_CHECK_INTERVAL);
        self.timers.start(Timer::SenderReports, now + SR_INTERVAL);
        self.timers.start(Timer::Feedback, now + FEEDBACK_INTERVAL);
        self.timers.start(Timer::Rates, now + RATE_INTERVAL);
        self.timers.start(
            Timer::ConnectionStats,
            now + self.cfg.connection_stats_interval,
        );
        self.by_name
            .insert((conference.to_string(), endpoint.to_string()), id);
        self.by_ufrag.insert(local_ufrag.to_string(), id);
        self.conferences
            .entry(conference.to_string())
            .or_default()
            .members
            .push(id);
        self.mark_dirty(id);
        self.sync_conference(conference);
    }

    /// Payload types and header extension ids exactly as offered. Rebuilds the endpoint's
    /// `Rtc` while it is not connected (str0m fixes codecs and extensions at build time);
    /// later changes are ignored (the focus offers the same numbers to everyone).
    pub fn set_medias(&mut self, endpoint: (&str, &str), medias: &[colibri2::Media]) {
        let Some(id) = self.id_of(endpoint) else {
            return;
        };
        let now = self.now.unwrap_or(self.clock.instant);
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        if ep.medias.as_deref() == Some(medias) {
            return;
        }
        if ep.transport.connected || ep.transport.rtc.is_connected() {
            tracing::warn!(
                conference = endpoint.0,
                endpoint = endpoint.1,
                "medias changed after connect; ignored"
            );
            return;
        }
        ep.medias = Some(medias.to_vec());
        let (rtc, caps) = build_rtc(
            &RtcSetup {
                cert: &self.cert,
                ufrag: &ep.transport.ufrag,
                pwd: &ep.transport.pwd,
                medias,
                local_addrs: &self.cfg.local_addrs,
                rtx_cache_packets: self.cfg.rtx_cache_packets,
                rtx_cache_age: self.cfg.rtx_cache_age,
                bwe_initial_bps: self.cfg.bwe_initial_bps,
                fast_egress: self.cfg.bwe_initial_bps.is_none(),
            },
            now.max(ep.transport.rtc_now),
        );
        ep.transport.rtc = rtc;
        ep.caps = caps;
        ep.transport.rtc_now = now.max(ep.transport.rtc_now);
        ep.transport.dtls_started = false;
        ep.rx.declared_rx.clear();
        ep.tx.forwards.clear();
        ep.tx.slots.clear();
        ep.tx.by_mid.clear();
        if let Err(e) = ep.apply_remote() {
            tracing::warn!(error = %e, "applying remote transport");
            self.stats.rtc_errors += 1;
        }
        ep.declare_rx();
        let conf = ep.conference.clone();
        self.mark_dirty(id);
        self.sync_conference(&conf);
    }

    /// The client's transport: ICE ufrag/pwd, candidates (often none: the bridge learns the
    /// client's address peer-reflexively) and DTLS fingerprint. The bridge is ICE-controlling
    /// and the DTLS server unless the client says `setup=passive`.
    pub fn set_remote_transport(
        &mut self,
        endpoint: (&str, &str),
        t: &colibri2::IceUdpTransport,
        now: Instant,
    ) {
        let now = self.tick(now);
        let Some(id) = self.id_of(endpoint) else {
            return;
        };
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        if ep.transport.connected {
            // docs/bridge.md B.1: a transport update after ICE completed is ignored.
            return;
        }
        ep.transport.remote = Some(t.clone());
        if ep.transport.rtc_now < now {
            ep.transport.rtc_now = now;
            let _ = ep.transport.rtc.handle_input(Input::Timeout(now));
        }
        if let Err(e) = ep.apply_remote() {
            tracing::warn!(error = %e, "applying remote transport");
            self.stats.rtc_errors += 1;
        }
        self.mark_dirty(id);
    }

    /// The sources the endpoint sends. Every SSRC (all layers and RTX) is declared as an
    /// incoming stream; the other endpoints of the conference get them forwarded.
    pub fn set_sources(&mut self, endpoint: (&str, &str), s: &colibri2::Sources) {
        let Some(id) = self.id_of(endpoint) else {
            return;
        };
        let max = self.cfg.max_sources_per_endpoint;
        let mut next_id = self.next_id;
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        let mut sources: Vec<SenderSource> = Vec::new();
        for ms in s.media_sources.iter().take(max) {
            if sources.iter().any(|x| x.name == ms.id) {
                continue;
            }
            // Keep the id (and layer state) of a source whose name and SSRCs did not change.
            let old = ep.rx.sources.iter().find(|x| x.name == ms.id);
            let sid = old.map_or_else(
                || {
                    next_id += 1;
                    next_id
                },
                |o| o.id,
            );
            let Some(mut new) = SenderSource::from_colibri(sid, ms) else {
                continue;
            };
            // The bridge channel's SourceVideoTypeMessage wins over the signalled type.
            if let Some(t) = ep.rx.video_types.get(&new.name) {
                new.video_type.clone_from(t);
            }
            if let Some(o) = old {
                new.announced_max_height = o.announced_max_height;
                if o.kind != new.kind
                    || o.layers
                        .iter()
                        .map(|l| l.ssrc)
                        .ne(new.layers.iter().map(|l| l.ssrc))
                {
                    next_id += 1;
                    new.id = next_id;
                } else {
                    new.layers = o.layers.clone();
                    new.first_seen = o.first_seen;
                    new.silence = o.silence.clone();
                }
            }
            sources.push(new);
        }
        ep.rx.sources = sources;
        ep.reindex();
        ep.declare_rx();
        let conf = ep.conference.clone();
        self.next_id = next_id + 1;
        self.mark_dirty(id);
        self.sync_conference(&conf);
    }

    /// Remove one endpoint (its streams disappear from everyone else).
    pub fn remove_endpoint(&mut self, endpoint: (&str, &str)) {
        let Some(id) = self.id_of(endpoint) else {
            return;
        };
        self.by_name
            .remove(&(endpoint.0.to_string(), endpoint.1.to_string()));
        let Some(ep) = self.endpoints.remove(&id) else {
            return;
        };
        self.by_ufrag.remove(&ep.transport.ufrag);
        for a in &ep.transport.addrs {
            if self.by_addr.get(a) == Some(&id) {
                self.by_addr.remove(a);
            }
        }
        let mut was_speaker = false;
        if let Some(c) = self.conferences.get_mut(&ep.conference) {
            was_speaker = c.remove(id);
            if c.members.is_empty() {
                self.conferences.remove(&ep.conference);
            }
        }
        self.dirty.retain(|x| *x != id);
        if self.endpoints.is_empty() {
            self.timers.stop_all();
        }
        // The others drop its sources (and their slots) before anything is reallocated.
        self.sync_conference(&ep.conference);
        if was_speaker
            && self
                .conferences
                .get(&ep.conference)
                .is_some_and(|c| c.speech.is_some())
        {
            self.speakers_changed(&ep.conference);
        }
    }

    /// Colibri2 `force-mute`: drop (or stop dropping) an endpoint's audio / video.
    pub fn set_force_mute(
        &mut self,
        endpoint: (&str, &str),
        audio: Option<bool>,
        video: Option<bool>,
    ) {
        let Some(id) = self.id_of(endpoint) else {
            return;
        };
        if let Some(ep) = self.endpoints.get_mut(&id) {
            ep.rx.set_muted(audio, video);
        }
    }

    /// Whether the engine has endpoints in `conference`.
    pub fn has_conference(&self, conference: &str) -> bool {
        self.conferences.contains_key(conference)
    }

    /// The conference's recent speakers, dominant first.
    pub fn recent_speakers(&self, conference: &str) -> Vec<String> {
        self.conferences
            .get(conference)
            .map(|c| {
                c.recent_speakers()
                    .iter()
                    .filter_map(|id| self.endpoints.get(id).map(|e| e.id.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Announce the conference's recent-speakers list and re-run allocation (the list orders
    /// the sources for lastN).
    fn speakers_changed(&mut self, conference: &str) {
        let names = self.recent_speakers(conference);
        let ev = match names.split_first() {
            Some((first, rest)) => EngineEvent::DominantSpeaker {
                conference: conference.to_string(),
                endpoint: first.clone(),
                previous: rest.to_vec(),
                silence: false,
            },
            None => EngineEvent::SpeakersCleared {
                conference: conference.to_string(),
            },
        };
        self.out.push_back(EngineOutput::Event(ev));
        let members = self
            .conferences
            .get(conference)
            .map(|c| c.members.clone())
            .unwrap_or_default();
        for id in members {
            self.allocate(id);
        }
    }

    /// The connectivity monitor for one endpoint (docs/bridge.md B.10): announce a change of
    /// "media flowing".
    fn update_status(&mut self, id: EpId) {
        let Some(now) = self.now else {
            return;
        };
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        let recent = ep
            .transport
            .last_rx
            .is_some_and(|t| now.saturating_duration_since(t) < INACTIVE_AFTER);
        let active = ep.transport.is_up() && recent;
        let announce = match (ep.transport.status, active) {
            (Some(was), is) if was == is => return,
            (_, true) => true,
            (Some(_), false) => false,
            (None, false)
                if ep.transport.failed
                    || now.saturating_duration_since(ep.created) >= NEVER_ACTIVE_AFTER =>
            {
                false
            }
            (None, false) => return,
        };
        ep.transport.status = Some(announce);
        let (conference, endpoint) = (ep.conference.clone(), ep.id.clone());
        let ev = if announce {
            EngineEvent::Connected {
                conference,
                endpoint,
            }
        } else {
            EngineEvent::Disconnected {
                conference,
                endpoint,
            }
        };
        self.out.push_back(EngineOutput::Event(ev));
    }

    /// Remove every endpoint of a conference.
    pub fn remove_conference(&mut self, conference: &str) {
        let names: Vec<String> = self
            .conferences
            .get(conference)
            .into_iter()
            .flat_map(|c| &c.members)
            .filter_map(|id| self.endpoints.get(id).map(|e| e.id.clone()))
            .collect();
        for n in names {
            self.remove_endpoint((conference, &n));
        }
        self.conferences.remove(conference);
    }

    /// The receiver's video wishes from the bridge channel: re-select what it gets.
    pub fn set_receiver_constraints(&mut self, endpoint: (&str, &str), c: ReceiverConstraints) {
        let Some(id) = self.id_of(endpoint) else {
            return;
        };
        if let Some(ep) = self.endpoints.get_mut(&id) {
            ep.tx.constraints = c;
            self.allocate(id);
        }
    }

    /// The sender's bridge channel declared what one of its sources is (`SourceVideoTypeMessage`:
    /// `camera`, `desktop`, `desktop_high_fps`, `none`, `disabled`; docs/bridge.md A.3). Kept for
    /// the endpoint (the source may be signalled later) and used in the receivers' source maps
    /// and allocation: `none`/`disabled` sources are not forwarded and do not count for lastN,
    /// a desktop source on stage or selected comes before cameras of the same rank.
    pub fn set_source_video_type(
        &mut self,
        endpoint: (&str, &str),
        source: &str,
        video_type: &str,
    ) {
        let Some(id) = self.id_of(endpoint) else {
            return;
        };
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        let t = video_type.to_ascii_uppercase();
        if ep.rx.video_types.get(source) == Some(&t) {
            return;
        }
        // Bounded like the sources themselves.
        if !ep.rx.video_types.contains_key(source)
            && ep.rx.video_types.len() >= self.cfg.max_sources_per_endpoint.max(1) * 2
        {
            return;
        }
        ep.rx.video_types.insert(source.to_string(), t.clone());
        let Some(src) = ep
            .rx
            .sources
            .iter_mut()
            .find(|s| s.name == source && s.kind == MediaType::Video)
        else {
            return;
        };
        if src.video_type == t {
            return;
        }
        src.video_type = t;
        let sid = src.id;
        let conf = ep.conference.clone();
        self.sync_conference(&conf);
        // Receivers with SSRC rewriting learn the type from the video map.
        let members = self
            .conferences
            .get(&conf)
            .map(|c| c.members.clone())
            .unwrap_or_default();
        for rid in members {
            let Some(r) = self.endpoints.get(&rid) else {
                continue;
            };
            if r.tx.ssrc_rewriting && r.tx.forwards.get(&sid).is_some_and(|f| f.slot.is_some()) {
                let ev = r.sources_map_event(MediaType::Video, &[sid]);
                self.out.push_back(EngineOutput::Event(ev));
            }
        }
    }

    /// The current `SenderSourceConstraints` of every video source the endpoint sends, as
    /// last announced (`None` before the first).
    pub fn sender_source_constraints(&self, endpoint: (&str, &str)) -> Vec<(String, Option<u32>)> {
        self.id_of(endpoint)
            .and_then(|id| self.endpoints.get(&id))
            .map(|ep| {
                ep.rx
                    .sources
                    .iter()
                    .filter(|s| s.kind == MediaType::Video)
                    .map(|s| (s.name.clone(), s.announced_max_height))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Recompute the conferences' `SenderSourceConstraints`: per video source, the largest
    /// effective maxHeight any receiver has for it (after lastN; docs/bridge.md B.8 step 2).
    fn flush_sender_constraints(&mut self) {
        let confs: Vec<String> = self.pending_sender_constraints.drain().collect();
        for conf in confs {
            let Some(members) = self.conferences.get(&conf).map(|c| &c.members) else {
                continue;
            };
            let mut wanted: HashMap<SourceId, u32> = HashMap::new();
            for rid in members {
                let Some(r) = self.endpoints.get(rid) else {
                    continue;
                };
                for (sid, f) in &r.tx.forwards {
                    if f.kind == MediaType::Video {
                        let w = wanted.entry(*sid).or_insert(0);
                        *w = (*w).max(f.max_height);
                    }
                }
            }
            for sid in members {
                let Some(s) = self.endpoints.get_mut(sid) else {
                    continue;
                };
                for src in
                    s.rx.sources
                        .iter_mut()
                        .filter(|x| x.kind == MediaType::Video)
                {
                    let h = wanted
                        .get(&src.id)
                        .copied()
                        .unwrap_or(0)
                        .min(UNLIMITED_SENDER_HEIGHT);
                    if src.announced_max_height == Some(h) {
                        continue;
                    }
                    src.announced_max_height = Some(h);
                    self.out
                        .push_back(EngineOutput::Event(EngineEvent::SenderSourceConstraints {
                            conference: s.conference.clone(),
                            endpoint: s.id.clone(),
                            source: src.name.clone(),
                            max_height: h,
                        }));
                }
            }
        }
    }

    /// Expire endpoints that never connected or went silent for too long (docs/bridge.md B.10).
    fn expire_endpoints(&mut self, now: Instant) {
        let (unconnected, inactive) = (
            self.cfg.expire_unconnected_after,
            self.cfg.expire_inactive_after,
        );
        let expired: Vec<(String, String, String)> = self
            .endpoints
            .values()
            .filter(|ep| {
                if ep.transport.connected_once {
                    let last = ep.transport.last_rx.unwrap_or(ep.created);
                    !inactive.is_zero() && now.saturating_duration_since(last) >= inactive
                } else {
                    !unconnected.is_zero()
                        && now.saturating_duration_since(ep.created) >= unconnected
                }
            })
            .map(|ep| {
                (
                    ep.conference.clone(),
                    ep.id.clone(),
                    ep.transport.ufrag.clone(),
                )
            })
            .collect();
        for (conference, endpoint, ufrag) in expired {
            tracing::info!(%conference, %endpoint, "endpoint expired (inactivity)");
            self.remove_endpoint((&conference, &endpoint));
            self.out
                .push_back(EngineOutput::Event(EngineEvent::Expired {
                    conference,
                    endpoint,
                    ufrag,
                }));
        }
    }

    /// One datagram received on the media port. Never panics on any input.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        let now = self.tick(now);
        self.stats.packets_in += 1;
        self.stats.bytes_in += data.len() as u64;
        // The socket may see another local address than the one advertised (NAT, wildcard
        // bind): str0m needs one of its own candidates as destination.
        let to = if self.cfg.local_addrs.contains(&to) {
            to
        } else {
            match self
                .cfg
                .local_addrs
                .iter()
                .find(|a| a.is_ipv4() == to.is_ipv4())
            {
                Some(a) => *a,
                None => {
                    self.stats.dropped_datagrams += 1;
                    return;
                }
            }
        };
        let stun_user = stun_request_local_ufrag(data);
        let id = match stun_user.and_then(|u| self.by_ufrag.get(u)) {
            Some(id) => *id,
            None if stun_user.is_some() => {
                self.stats.dropped_datagrams += 1;
                return;
            }
            None => match self.by_addr.get(&from) {
                Some(id) => *id,
                None => {
                    self.stats.dropped_datagrams += 1;
                    return;
                }
            },
        };
        // The fast path: the endpoint's RTP and RTCP are handled here, without str0m (which
        // has no streams to apply RTCP to in this mode).
        let rtcp = is_rtcp(data);
        if stun_user.is_none()
            && (rtcp || is_rtp(data))
            && let Some(ep) = self.endpoints.get_mut(&id)
            && ep.transport.srtp.is_some()
            && !ep.transport.failed
        {
            ep.transport.last_rx = Some(now);
            if ep.transport.status != Some(true) && ep.transport.connected {
                self.update_status(id);
            }
            if rtcp {
                self.receiver_feedback(id, data);
            } else {
                self.fast_rtp(id, now, data);
            }
            return;
        }
        let Ok(recv) = Receive::new(Protocol::Udp, from, to, data) else {
            self.stats.dropped_datagrams += 1;
            return;
        };
        let Some(ep) = self.endpoints.get_mut(&id) else {
            self.stats.dropped_datagrams += 1;
            return;
        };
        if ep.transport.failed {
            self.stats.dropped_datagrams += 1;
            return;
        }
        let input = Input::Receive(now.max(ep.transport.rtc_now), recv);
        if stun_user.is_some() {
            if !ep.transport.rtc.accepts(&input) {
                self.stats.dropped_datagrams += 1;
                return;
            }
            // A verified check binds the address to this endpoint (it may move endpoints).
            if self.by_addr.insert(from, id) != Some(id) {
                ep.transport.addrs.push(from);
            }
        }
        ep.transport.rtc_now = now.max(ep.transport.rtc_now);
        ep.transport.last_rx = Some(now);
        if let Err(e) = ep.transport.rtc.handle_input(input) {
            tracing::debug!(error = %e, "endpoint input");
            self.stats.rtc_errors += 1;
        }
        if ep.transport.status != Some(true) && ep.transport.connected {
            self.update_status(id);
        }
        // In RTP mode str0m holds one received packet until the next poll: take it now, or a
        // second datagram before `poll_output` would overwrite it. The rest of the endpoint's
        // output waits for `poll_output` (one full drain per batch of datagrams).
        self.drain_until_packet(id);
    }

    /// Advance time: every endpoint whose timer expired runs.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.tick(now);
        // Rescan at the next poll: due endpoints get new deadlines, removed ones none.
        self.ep_deadline = None;
        let due: Vec<EpId> = self
            .endpoints
            .iter()
            .filter(|(_, e)| e.transport.next_timeout <= now && !e.transport.failed)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(ep) = self.endpoints.get_mut(&id) {
                ep.transport.rtc_now = now.max(ep.transport.rtc_now);
                if let Err(e) = ep
                    .transport
                    .rtc
                    .handle_input(Input::Timeout(ep.transport.rtc_now))
                {
                    tracing::debug!(error = %e, "endpoint timeout");
                    self.stats.rtc_errors += 1;
                }
            }
            self.mark_dirty(id);
        }
        let due: Vec<String> = self
            .conferences
            .iter()
            .filter(|(_, c)| c.next_timeout().is_some_and(|t| t <= now))
            .map(|(name, _)| name.clone())
            .collect();
        for conf in due {
            if let Some(sa) = self
                .conferences
                .get_mut(&conf)
                .and_then(|c| c.speech.as_mut())
                && sa.poll(now)
            {
                self.stats.dominant_speaker_changes += 1;
                self.speakers_changed(&conf);
            }
        }
        for timer in Timer::ALL {
            if self.timers.is_due(timer, now) {
                self.on_timer(timer, now);
            }
        }
    }

    /// Run one due bridge-wide timer (and set it again, if it repeats).
    fn on_timer(&mut self, timer: Timer, now: Instant) {
        match timer {
            Timer::Feedback => {
                self.timers.set(timer, now + FEEDBACK_INTERVAL);
                self.feedback_round(now);
            }
            Timer::SenderReports => {
                self.timers.set(timer, now + SR_INTERVAL);
                self.sender_reports(now);
            }
            Timer::Rates => {
                self.timers.set(timer, now + RATE_INTERVAL);
                self.measure_rates(now);
                let ids: Vec<EpId> = self.endpoints.keys().copied().collect();
                for id in ids {
                    self.allocate(id);
                }
            }
            Timer::Probe => {
                self.timers.stop(timer);
                self.probe(now);
            }
            Timer::StatusCheck => {
                self.timers.set(timer, now + STATUS_CHECK_INTERVAL);
                let ids: Vec<EpId> = self.endpoints.keys().copied().collect();
                for id in ids {
                    self.update_status(id);
                }
                self.expire_endpoints(now);
            }
            Timer::ConnectionStats => {
                self.timers
                    .set(timer, now + self.cfg.connection_stats_interval);
                self.connection_stats();
            }
        }
    }

    /// `ConnectionStats` for every connected endpoint with an estimate, in a stable order.
    fn connection_stats(&mut self) {
        let mut eps: Vec<&Endpoint> = self
            .endpoints
            .values()
            .filter(|e| e.transport.is_up())
            .collect();
        eps.sort_by(|a, b| (&a.conference, &a.id).cmp(&(&b.conference, &b.id)));
        for ep in eps {
            if let Some(bps) = ep.tx.estimate() {
                self.out
                    .push_back(EngineOutput::Event(EngineEvent::ConnectionStats {
                        conference: ep.conference.clone(),
                        endpoint: ep.id.clone(),
                        estimated_downlink_bps: bps,
                    }));
            }
        }
    }

    /// The next output. Drain until it returns [`EngineOutput::Timeout`].
    pub fn poll_output(&mut self) -> EngineOutput {
        if !self.pending_sender_constraints.is_empty() {
            self.flush_sender_constraints();
        }
        loop {
            if let Some(o) = self.out.pop_front() {
                return o;
            }
            let Some(id) = self.dirty.pop() else {
                break;
            };
            self.drain(id);
        }
        let ep_min = match self.ep_deadline {
            Some(d) => Some(d),
            None => {
                let m = self
                    .endpoints
                    .values()
                    .filter(|e| !e.transport.failed)
                    .map(|e| e.transport.next_timeout)
                    .min();
                self.ep_deadline = m;
                m
            }
        };
        let next = ep_min
            .into_iter()
            .chain(
                self.conferences
                    .values()
                    .filter_map(Conference::next_timeout),
            )
            .chain(self.timers.next())
            .min();
        let idle = self.now.unwrap_or(self.clock.instant) + IDLE_TIMEOUT;
        EngineOutput::Timeout(next.map_or(idle, |n| n.min(idle)))
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            endpoints: self.endpoints.len(),
            conferences: self.conferences.len(),
            ..self.stats.clone()
        }
    }

    /// Poll one endpoint's `Rtc` until it wants a timeout.
    fn drain(&mut self, id: EpId) {
        self.drain_inner(id, false);
    }

    /// Poll one endpoint's `Rtc` until it hands over a received RTP packet (then leave the
    /// endpoint for the next full drain) or wants a timeout.
    fn drain_until_packet(&mut self, id: EpId) {
        self.drain_inner(id, true);
    }

    fn drain_inner(&mut self, id: EpId, stop_after_packet: bool) {
        loop {
            let Some(ep) = self.endpoints.get_mut(&id) else {
                return;
            };
            ep.dirty = false;
            if ep.transport.failed {
                return;
            }
            let polled = ep.transport.rtc.poll_output();
            match polled {
                Ok(Output::Timeout(t)) => {
                    ep.transport.next_timeout = t;
                    if let Some(d) = self.ep_deadline {
                        self.ep_deadline = Some(d.min(t));
                    }
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    // Responses to our own checks come from where we sent them.
                    if let std::collections::hash_map::Entry::Vacant(v) =
                        self.by_addr.entry(t.destination)
                    {
                        v.insert(id);
                        ep.transport.addrs.push(t.destination);
                    }
                    // DTLS and RTCP (not STUN checks) go over the selected pair.
                    if t.contents.first().is_some_and(|b| *b >= 20) {
                        ep.transport.send_path = Some((t.source, t.destination));
                    }
                    let mut data = self.bufs.pool.pop().unwrap_or_default();
                    data.clear();
                    data.extend_from_slice(&t.contents);
                    queue_transmit(
                        &mut self.out,
                        &mut self.stats,
                        t.source,
                        t.destination,
                        data,
                    );
                }
                Ok(Output::Event(e)) => {
                    let packet = matches!(e, Event::RtpPacket(_));
                    self.on_event(id, e);
                    if packet && stop_after_packet {
                        self.mark_dirty(id);
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, conference = %ep.conference, endpoint = %ep.id, "endpoint failed");
                    self.stats.rtc_errors += 1;
                    if !ep.transport.rtc.is_alive() {
                        ep.transport.failed = true;
                        self.update_status(id);
                    }
                    return;
                }
            }
        }
    }

    fn on_event(&mut self, id: EpId, e: Event) {
        match e {
            Event::Connected => {
                let Some(ep) = self.endpoints.get_mut(&id) else {
                    return;
                };
                ep.transport.connected = true;
                ep.transport.connected_once = true;
                if ep.caps.fast_egress && ep.transport.srtp.is_none() {
                    ep.transport.srtp = ep.caps.keys.get().and_then(Srtp::new);
                    if ep.transport.srtp.is_none() {
                        tracing::debug!(conference = %ep.conference, endpoint = %ep.id, "SRTP keys not known yet");
                    }
                }
                self.update_status(id);
            }
            Event::EgressBitrateEstimate(
                BweKind::Twcc { estimate, .. } | BweKind::Remb { estimate, .. },
            ) => {
                if let Some(ep) = self.endpoints.get_mut(&id) {
                    ep.tx.bwe_bps = Some(estimate.as_u64());
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                let Some(ep) = self.endpoints.get_mut(&id) else {
                    return;
                };
                ep.transport.connected = false;
                self.update_status(id);
            }
            Event::IceConnectionStateChange(IceConnectionState::Connected)
            | Event::IceConnectionStateChange(IceConnectionState::Completed) => {
                // Back after a disconnect: DTLS is still up.
                if let Some(ep) = self.endpoints.get_mut(&id)
                    && !ep.transport.connected
                    && ep.transport.rtc.is_connected()
                {
                    ep.transport.connected = true;
                    self.update_status(id);
                }
            }
            Event::RtpPacket(p) => self.forward(id, Incoming::from_str0m(p)),
            Event::KeyframeRequest(r) => {
                let slot = self
                    .endpoints
                    .get(&id)
                    .and_then(|ep| ep.tx.by_mid.get(&r.mid).copied());
                if let Some(slot) = slot {
                    self.receiver_wants_keyframe(id, slot);
                }
            }
            _ => {}
        }
    }

    /// The I/O side could not send `n` datagrams.
    pub fn count_send_dropped(&mut self, n: u64) {
        self.stats.send_dropped += n;
    }

    /// The I/O side sent `n` datagrams as one UDP GSO send.
    pub fn count_gso(&mut self, n: u64) {
        self.stats.gso_datagrams += n;
    }

    /// Give a send buffer back once it is on the wire: the engine reuses it.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.bufs.pool.len() < BUFFER_POOL && buf.capacity() >= 1500 {
            buf.clear();
            self.bufs.pool.push(buf);
        }
    }

    /// Fast path: the endpoint's RTCP — feedback about the streams forwarded to it, sender
    /// reports about its own.
    fn receiver_feedback(&mut self, id: EpId, data: &[u8]) {
        let Some(srtp) = self
            .endpoints
            .get_mut(&id)
            .and_then(|e| e.transport.srtp.as_mut())
        else {
            return;
        };
        if srtp.unprotect_rtcp(data, &mut self.rtcp).is_err() {
            self.stats.dropped_datagrams += 1;
            return;
        }
        let mut fb = std::mem::take(&mut self.feedback);
        fb.clear();
        parse_feedback(&self.rtcp, MAX_NACKS_PER_PACKET, &mut fb);
        for f in fb.drain(..) {
            match f {
                Feedback::Nack { ssrc, seqs } => self.resend(id, ssrc, &seqs),
                Feedback::TransportCc(fb) => {
                    let now = self.now.unwrap_or(self.clock.instant);
                    if let Some(ep) = self.endpoints.get_mut(&id)
                        && let Some((rate, loss, queued)) = ep.tx.sendside.on_feedback(&fb, now)
                    {
                        tracing::trace!(
                            endpoint = %ep.id,
                            statuses = fb.arrivals.len(),
                            delivered_bps = rate as u64,
                            loss,
                            queued,
                            estimate = ?ep.tx.sendside.estimate(),
                            "transport-cc feedback"
                        );
                        let moved = match (ep.tx.alloc_budget, ep.tx.sendside.estimate()) {
                            (Some(a), Some(e)) => {
                                (e as f64 - a as f64).abs() > REALLOCATE_CHANGE * a as f64
                            }
                            _ => false,
                        };
                        if moved {
                            tracing::debug!(
                                endpoint = %ep.id,
                                delivered_bps = rate as u64,
                                loss,
                                queued,
                                from = ?ep.tx.alloc_budget,
                                to = ?ep.tx.sendside.estimate(),
                                "bandwidth estimate moved: reallocating"
                            );
                            self.allocate(id);
                        }
                    }
                }
                Feedback::SenderReport { ssrc, ntp_mid } => {
                    let now = self.now.unwrap_or(self.clock.instant);
                    if let Some(ep) = self.endpoints.get_mut(&id)
                        && let Some(&(si, li)) = ep.rx.ssrc_index.get(&ssrc)
                        && let Some(l) =
                            ep.rx.sources.get_mut(si).and_then(|s| s.layers.get_mut(li))
                    {
                        l.rx.last_sr = Some((ntp_mid, now));
                    }
                }
                Feedback::Keyframe { ssrc } => {
                    self.stats.receiver_keyframe_requests += 1;
                    let slot = self.endpoints.get(&id).and_then(|ep| {
                        ep.tx
                            .slots
                            .iter()
                            .find(|(_, s)| s.ssrc == ssrc)
                            .map(|(k, _)| *k)
                    });
                    if let Some(slot) = slot {
                        self.receiver_wants_keyframe(id, slot);
                    }
                }
            }
        }
        self.feedback = fb;
    }

    /// Fast path: one RTP packet from an endpoint whose SRTP keys are known.
    fn fast_rtp(&mut self, id: EpId, now: Instant, data: &[u8]) {
        enum Which {
            Main(usize, usize),
            Rtx(usize, usize),
            Other,
        }
        let epoch = self.clock.instant;
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        let Some(h) = crate::rtp::parse_rtp(data, &ep.caps.ext_ids) else {
            self.stats.dropped_datagrams += 1;
            return;
        };
        let which = if let Some(((si, li), rtx)) = ep.rx.stream_of(h.ssrc) {
            if rtx {
                Which::Rtx(si, li)
            } else {
                Which::Main(si, li)
            }
        } else if ep.rx.other_ssrcs.contains(&h.ssrc) {
            Which::Other
        } else {
            self.stats.rtp_unknown_ssrc += 1;
            return;
        };
        let Some(srtp) = ep.transport.srtp.as_mut() else {
            return;
        };
        // Decrypted straight into a payload buffer that receivers and the cache will share.
        let mut plain = Buf::scratch();
        let Ok((index, mut len)) = srtp.unprotect_rtp(data, h.hdr_len, h.ssrc, h.seq, &mut plain)
        else {
            drop(Buf::from_vec(plain, 0..0));
            self.stats.dropped_datagrams += 1;
            return;
        };
        let plain = Buf::from_vec(plain, 0..len);
        if let Some(t) = h.transport_seq {
            ep.rx.twcc.record(t, now, epoch);
            ep.rx.twcc.media_ssrc = h.ssrc;
        }
        if h.padding {
            let pad = usize::from(plain.last().copied().unwrap_or(0));
            if pad == 0 || pad > len {
                self.stats.dropped_datagrams += 1;
                return;
            }
            len -= pad;
        }
        let (si, li, seq, start, pt) = match which {
            Which::Other => return,
            Which::Main(si, li) => (si, li, index, 0, h.pt),
            Which::Rtx(si, li) => {
                // Padding-only RTX packets probe the bandwidth: nothing to forward.
                if len < 2 {
                    return;
                }
                let osn = u16::from_be_bytes([plain[0], plain[1]]);
                let near = ep
                    .rx
                    .sources
                    .get(si)
                    .and_then(|s| s.layers.get(li))
                    .and_then(|l| l.rx.max())
                    .unwrap_or(u64::from(osn));
                let Some((&apt, _)) = ep.caps.rtx_pts.iter().find(|(_, r)| **r == h.pt) else {
                    return;
                };
                (si, li, crate::rtp::extend_seq(near, osn), 2, apt)
            }
        };
        if len <= start {
            return;
        }
        let Some(source) = ep.rx.sources.get_mut(si) else {
            return;
        };
        let kind = source.kind;
        let Some(layer) = source.layers.get_mut(li) else {
            return;
        };
        let clock_rate = match kind {
            MediaType::Audio => 48_000,
            MediaType::Video => 90_000,
        };
        if !layer
            .rx
            .on_packet(seq, h.ts, now, epoch, clock_rate, kind == MediaType::Video)
        {
            self.stats.rtp_duplicates += 1;
            return;
        }
        let incoming = Incoming {
            ssrc: layer.ssrc,
            seq,
            ts: h.ts,
            pt,
            marker: h.marker,
            payload: Arc::new(Buf::from_vec(plain.into_vec(), start..len)),
            ext: ExtOut {
                audio_level: h.audio_level,
                video_orientation: h.video_orientation,
                dependency_descriptor: h
                    .dependency_descriptor
                    .and_then(|(a, b)| data.get(a..b))
                    .map(Arc::from),
            },
            arrival: now,
        };
        self.forward(id, incoming);
    }

    /// Fast path: transport-cc feedback and NACKs to every sender, receiver reports once a
    /// second.
    fn feedback_round(&mut self, now: Instant) {
        let rr_due = self.next_rr.is_none_or(|t| t <= now);
        if rr_due {
            self.next_rr = Some(now + RR_INTERVAL);
        }
        self.feedback_rounds += 1;
        let twcc_due = self.feedback_rounds.is_multiple_of(2);
        for ep in self.endpoints.values_mut() {
            let (Some(srtp), Some((from, to))) =
                (ep.transport.srtp.as_mut(), ep.transport.send_path)
            else {
                continue;
            };
            if !ep.transport.connected {
                continue;
            }
            self.rtcp.clear();
            crate::rtp::rtcp::rr::write_header(&mut self.rtcp, ep.tx.fb_ssrc, 0);
            let mut blocks: u8 = 0;
            if rr_due {
                for l in ep.rx.sources.iter_mut().flat_map(|s| s.layers.iter_mut()) {
                    if blocks < 31 && l.rx.write_report_block(l.ssrc, now, &mut self.rtcp) {
                        blocks += 1;
                    }
                }
                self.rtcp[0] = 0x80 | blocks;
                self.rtcp[2..4].copy_from_slice(&(1 + 6 * u16::from(blocks)).to_be_bytes());
            }
            let bare = self.rtcp.len() == 8;
            let had = self.rtcp.len();
            if twcc_due {
                ep.rx.twcc.write_feedback(&mut self.rtcp, ep.tx.fb_ssrc);
            }
            for s in ep
                .rx
                .sources
                .iter_mut()
                .filter(|s| s.kind == MediaType::Video)
            {
                for l in &mut s.layers {
                    self.nacks.clear();
                    l.rx.due_nacks(now, &mut self.nacks);
                    self.nacks.sort_unstable();
                    crate::rtp::rtcp::nack::write(
                        &mut self.rtcp,
                        ep.tx.fb_ssrc,
                        l.ssrc,
                        &self.nacks,
                    );
                }
            }
            if bare && self.rtcp.len() == had {
                continue;
            }
            let mut data = self.bufs.pool.pop().unwrap_or_default();
            if srtp.protect_rtcp(&self.rtcp, &mut data).is_err() {
                continue;
            }
            queue_transmit(&mut self.out, &mut self.stats, from, to, data);
        }
    }

    /// Fast path: resend NACKed packets of one forwarded stream as RTX (RFC 4588), from the
    /// sender's cache with this receiver's offsets.
    fn resend(&mut self, id: EpId, ssrc: u32, seqs: &[u16]) {
        let Some(now) = self.now else {
            return;
        };
        // Which sender packets: through the slot's history of offsets.
        let mut todo: Vec<(u64, endpoint::SlotMap)> = Vec::new();
        {
            let Some(slot) = self
                .endpoints
                .get_mut(&id)
                .and_then(|ep| ep.tx.slots.values_mut().find(|s| s.ssrc == ssrc))
            else {
                return;
            };
            let (Some(_), Some(last)) = (slot.rtx, slot.proj.last_seq()) else {
                return;
            };
            for &seq in seqs {
                let out = crate::rtp::extend_seq(last, seq);
                if out > last
                    || slot.recent.iter().any(|(s, t)| {
                        *s == out && now.saturating_duration_since(*t) < egress::RESEND_INTERVAL
                    })
                {
                    continue;
                }
                let Some(m) = slot.history.iter().rev().find(|m| m.first_out <= out) else {
                    continue;
                };
                if slot.recent.len() >= RECENT_RESENDS {
                    slot.recent.pop_front();
                }
                slot.recent.push_back((out, now));
                todo.push((out, *m));
            }
        }
        let mut packets: Vec<(u64, Sent, forward::Offsets)> = Vec::new();
        for (out, m) in todo {
            let Ok(in_seq) = u64::try_from(out as i64 - m.off.seq) else {
                continue;
            };
            let cached = self
                .endpoints
                .get(&m.sender)
                .and_then(|e| e.rx.sources.iter().find(|s| s.id == m.source))
                .and_then(|s| s.layers.get(m.off.layer))
                .and_then(|l| l.cache.get(in_seq));
            if let Some(c) = cached {
                packets.push((out, c.clone(), m.off));
            }
        }
        if packets.is_empty() {
            return;
        }
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        let (Some(srtp), Some((from, to))) = (ep.transport.srtp.as_mut(), ep.transport.send_path)
        else {
            return;
        };
        let Some(slot) = ep.tx.slots.values_mut().find(|s| s.ssrc == ssrc) else {
            return;
        };
        let Some(rtx_ssrc) = slot.rtx else {
            return;
        };
        // Bytes per second retransmissions may take now (`None`: no estimate, no limit).
        let rtx_rate = ep
            .tx
            .sendside
            .estimate()
            .map(|e| e as f64 * RTX_SHARE / 8.0);
        if let Some(rate) = rtx_rate {
            let cap = rate * RTX_BURST.as_secs_f64();
            ep.tx.rtx_tokens = match ep.tx.rtx_at {
                Some(t) => ep.tx.rtx_tokens + rate * now.saturating_duration_since(t).as_secs_f64(),
                None => cap,
            }
            .min(cap);
            ep.tx.rtx_at = Some(now);
        }
        for (out, s, off) in packets {
            if rtx_rate.is_some() {
                let size = (s.payload.len() + 40) as f64;
                if ep.tx.rtx_tokens < size {
                    self.stats.retransmissions_limited += 1;
                    continue;
                }
                ep.tx.rtx_tokens -= size;
            }
            let Some(&rtx_pt) = ep.caps.rtx_pts.get(&s.pt) else {
                continue;
            };
            self.bufs.scratch.clear();
            self.bufs
                .scratch
                .extend_from_slice(&(out as u16).to_be_bytes());
            self.bufs.scratch.extend_from_slice(&s.payload);
            patch_vp8(
                &mut self.bufs.scratch[2..],
                s.picture_id.map(|p| p.wrapping_add(off.pid) & 0x7fff),
                s.tl0.map(|t| t.wrapping_add(off.tl0)),
            );
            let rtx_seq = slot.rtx_seq;
            slot.rtx_seq += 1;
            self.bufs.hdr.clear();
            let tseq = (ep.caps.ext_ids.transport_cc != 0)
                .then(|| ep.tx.sendside.on_send(now, self.bufs.scratch.len() + 40));
            write_header(
                &mut self.bufs.hdr,
                &RtpOut {
                    pt: rtx_pt,
                    marker: s.marker,
                    seq: rtx_seq as u16,
                    ts: s.ts.wrapping_add(off.ts),
                    ssrc: rtx_ssrc,
                },
                &ep.caps.ext_ids,
                &s.ext,
                tseq,
            );
            let mut data = self.bufs.pool.pop().unwrap_or_default();
            if srtp
                .protect_rtp(
                    &self.bufs.hdr,
                    &self.bufs.scratch,
                    rtx_ssrc,
                    rtx_seq,
                    &mut data,
                )
                .is_err()
            {
                self.stats.rtc_errors += 1;
                continue;
            }
            self.stats.retransmissions += 1;
            queue_transmit(&mut self.out, &mut self.stats, from, to, data);
        }
    }

    /// Fast path: a sender report for every stream forwarded to each endpoint lately (RFC 3550
    /// §6.4.1; the receivers' lip sync and round-trip times rest on them).
    fn sender_reports(&mut self, now: Instant) {
        let clock = self.clock;
        for ep in self.endpoints.values_mut() {
            let (Some(srtp), Some((from, to))) =
                (ep.transport.srtp.as_mut(), ep.transport.send_path)
            else {
                continue;
            };
            if !ep.transport.connected {
                continue;
            }
            let mut slots: Vec<&endpoint::Slot> = ep
                .tx
                .slots
                .values()
                .filter(|s| {
                    s.sent
                        .last
                        .is_some_and(|(_, at)| now.saturating_duration_since(at) < SR_IDLE)
                })
                .collect();
            slots.sort_by_key(|s| s.ssrc);
            // Compound packets of up to 40 reports (28 bytes each).
            for chunk in slots.chunks(40) {
                self.rtcp.clear();
                for s in chunk {
                    let rate = match s.kind {
                        MediaType::Audio => 48_000,
                        MediaType::Video => 90_000,
                    };
                    egress::write_sr(&mut self.rtcp, s.ssrc, &s.sent, rate, now, &clock);
                }
                let mut data = self.bufs.pool.pop().unwrap_or_default();
                if srtp.protect_rtcp(&self.rtcp, &mut data).is_err() {
                    continue;
                }
                queue_transmit(&mut self.out, &mut self.stats, from, to, data);
            }
        }
    }

    /// A receiver asked for a keyframe on one of its streams: ask the sender of the source on
    /// it for one on the layer it gets.
    fn receiver_wants_keyframe(&mut self, id: EpId, slot: endpoint::SlotId) {
        let Some(ep) = self.endpoints.get(&id) else {
            return;
        };
        let Some(slot) = ep.tx.slots.get(&slot) else {
            return;
        };
        let Some(f) = slot.source.and_then(|s| ep.tx.forwards.get(&s)) else {
            return;
        };
        let (sender, name, layer) = (f.sender, f.name.clone(), slot.proj.layer());
        if let Some(layer) = layer {
            self.request_keyframe(sender, &name, layer);
        }
    }

    /// Ask `sender` for a keyframe on one layer of a source, rate-limited.
    fn request_keyframe(&mut self, sender: EpId, source: &str, layer: usize) {
        let Some(now) = self.now else {
            return;
        };
        let Some(ep) = self.endpoints.get_mut(&sender) else {
            return;
        };
        let Some(l) = ep
            .rx
            .sources
            .iter_mut()
            .find(|s| s.name == source && s.kind == MediaType::Video)
            .and_then(|s| s.layers.get_mut(layer))
        else {
            return;
        };
        if l.last_pli
            .is_some_and(|t| now.saturating_duration_since(t) < PLI_INTERVAL)
        {
            return;
        }
        l.last_pli = Some(now);
        let media = l.ssrc;
        if let (Some(srtp), Some((from, to))) = (ep.transport.srtp.as_mut(), ep.transport.send_path)
        {
            self.rtcp.clear();
            crate::rtp::rtcp::rr::write_header(&mut self.rtcp, ep.tx.fb_ssrc, 0);
            crate::rtp::rtcp::pli::write(&mut self.rtcp, ep.tx.fb_ssrc, media);
            let mut data = self.bufs.pool.pop().unwrap_or_default();
            if srtp.protect_rtcp(&self.rtcp, &mut data).is_ok() {
                self.stats.keyframe_requests += 1;
                queue_transmit(&mut self.out, &mut self.stats, from, to, data);
            }
            return;
        }
        let ssrc = Ssrc::from(media);
        if let Some(s) = ep.transport.rtc.direct_api().stream_rx(&ssrc) {
            s.request_keyframe(KeyframeRequestKind::Pli);
            self.stats.keyframe_requests += 1;
            self.mark_dirty(sender);
        }
    }

    /// Forward one incoming RTP packet of `sender` to the other endpoints of its conference.
    /// The sender's side of forwarding `p` (docs/bridge.md B.6–B.8): which source and layer it
    /// is, force-mute, silence suppression and the speech detector for audio, the layer's rate
    /// and keyframe height for video. `None`: not forwarded (counted).
    fn ingest(&mut self, sender: EpId, p: &Incoming, now: Instant) -> Option<Ingested> {
        let s = self.endpoints.get_mut(&sender)?;
        let ssrc = p.ssrc;
        let Some(&(si, li)) = s.rx.ssrc_index.get(&ssrc) else {
            self.stats.rtp_unknown_ssrc += 1;
            return None;
        };
        let pt = p.pt;
        let codec = s.caps.pts.get(&pt).map(|(c, _)| *c);
        let muted = s.rx.muted(s.rx.sources[si].kind);
        let source = &mut s.rx.sources[si];
        let kind = source.kind;
        if muted {
            self.stats.force_muted_dropped += 1;
            return None;
        }
        let vcodec = match (kind, codec) {
            (MediaType::Video, Some(c)) => video_codec(c),
            _ => VideoCodec::Other,
        };
        let keyframe = kind == MediaType::Video && starts_keyframe(vcodec, &p.payload);
        let mut seq = p.seq;
        if kind == MediaType::Audio {
            // docs/bridge.md B.6: silence suppression; B.7: what is forwarded feeds the dominant
            // speaker identification (level 0 = silence … 127 = loud).
            let level = p.ext.audio_level.map(|b| -((b & 0x7f) as i8));
            match source.silence.filter(seq, level == Some(-127)) {
                Some(out) => seq = out,
                None => {
                    self.stats.silence_dropped += 1;
                    return None;
                }
            }
            if let Some(l) = level {
                let level = (127 + i16::from(l)).clamp(0, 127) as u8;
                if let Some(c) = self.conferences.get_mut(&s.conference) {
                    c.level(sender, level, now);
                }
            }
        }
        source.first_seen.get_or_insert(now);
        {
            let layer = &mut source.layers[li];
            layer.last_seen = Some(now);
            layer.bytes += p.payload.len() as u64 + 12;
            if keyframe
                && vcodec == VideoCodec::Vp8
                && let Some(h) = vp8_keyframe_height(&p.payload)
            {
                layer.height = Some(h);
            }
        }
        let single_layer = source.layers.len() == 1;
        let mut view_buf = [LayerView {
            height: 0,
            active: false,
        }; MAX_LAYERS];
        let nviews = source.layers.len().min(MAX_LAYERS);
        for (i, v) in view_buf.iter_mut().enumerate().take(nviews) {
            *v = LayerView {
                height: source.layer_height(i),
                active: source.layer_selectable(i, now),
            };
        }
        let source_id: SourceId = source.id;
        let vp8 = if vcodec == VideoCodec::Vp8 {
            Vp8Descriptor::parse(&p.payload).ok()
        } else {
            None
        };
        let input = InPacket {
            layer: li,
            seq,
            ts: p.ts,
            // A single stream starts anywhere (the receiver asks for a keyframe itself).
            keyframe: keyframe || single_layer || kind == MediaType::Audio,
            picture_id: vp8.and_then(|d| d.picture_id()),
            tl0: vp8.and_then(|d| d.tl0_pic_idx()),
            at: now,
            clock_rate: if kind == MediaType::Video {
                90_000
            } else {
                48_000
            },
        };
        Some(Ingested {
            si,
            li,
            kind,
            source_id,
            views: view_buf,
            nviews,
            input,
            vp8,
        })
    }

    fn forward(&mut self, sender: EpId, p: Incoming) {
        let now = self.now.unwrap_or(p.arrival);
        let Some(Ingested {
            si,
            li,
            kind,
            source_id,
            views: view_buf,
            nviews,
            input,
            vp8,
        }) = self.ingest(sender, &p, now)
        else {
            return;
        };
        let views = &view_buf[..nviews];
        let seq = input.seq;
        let pt = p.pt;
        let Incoming {
            payload,
            ext: ext_out,
            marker,
            arrival,
            ..
        } = p;
        let pt_u8 = pt;
        let Some(members) = self
            .endpoints
            .get(&sender)
            .and_then(|s| self.conferences.get(&s.conference))
            .map(|c| &c.members)
        else {
            return;
        };
        let mut want_keyframe = false;
        let mut cache_it = false;
        for rid in members {
            if *rid == sender {
                continue;
            }
            let Some(r) = self.endpoints.get_mut(rid) else {
                continue;
            };
            if !r.transport.connected || r.transport.failed {
                continue;
            }
            let Some(f) = r.tx.forwards.get_mut(&source_id) else {
                continue;
            };
            let target = if kind == MediaType::Audio {
                Some(0)
            } else {
                select_layer(views, f.max_height.min(f.bwe_height))
            };
            let Some(target) = target else {
                continue;
            };
            let slot_id = match f.slot {
                Some(s) => s,
                None if r.tx.ssrc_rewriting => {
                    let limit = match kind {
                        MediaType::Audio => self.cfg.rewrite_audio_slots,
                        MediaType::Video => self.cfg.rewrite_video_slots,
                    };
                    let Some(s) = r.bind_slot(source_id, limit, now, &[]) else {
                        continue;
                    };
                    let ev = r.sources_map_event(kind, &[source_id]);
                    self.out.push_back(EngineOutput::Event(ev));
                    s
                }
                None => continue,
            };
            let Some(slot) = r.tx.slots.get_mut(&slot_id) else {
                continue;
            };
            slot.last_used = Some(now);
            if slot.proj.layer() != Some(target) && li == target && !input.keyframe {
                want_keyframe = true;
            }
            let before = slot.proj.layer();
            let Some(out) = slot.proj.project(&input, target) else {
                continue;
            };
            if out.switched && before.is_some() {
                self.stats.layer_switches += 1;
            }
            if before.is_none() && kind == MediaType::Video {
                // A stream starts: the receiver may drop its packets until its signalling
                // caught up (an SSRC it does not know yet); not congestion.
                r.tx.sendside.ignore_losses_until(now + NEW_SOURCE_GRACE);
            }
            let Some((_, has_rtx)) = r.caps.pts.get(&pt).copied() else {
                continue;
            };
            if r.caps.fast_egress {
                let fwd = Forwarded {
                    sender,
                    source_id,
                    kind,
                    pt: pt_u8,
                    marker,
                    payload: &payload,
                    ext: &ext_out,
                    input: &input,
                    now,
                };
                let sent = send_fast(
                    r,
                    slot_id,
                    &fwd,
                    &out,
                    has_rtx,
                    &mut self.bufs,
                    &mut self.out,
                    &mut self.stats,
                );
                cache_it |= sent == Some(true);
                continue;
            }
            let mut w = RtpWrite::new(
                Pt::from(pt_u8),
                out.seq.into(),
                out.ts,
                arrival,
                Arc::<[u8]>::from(&payload[..]),
            )
            .marker(marker)
            .ext_vals(ext_out.to_str0m())
            .nackable(kind == MediaType::Video && has_rtx && slot.rtx.is_some());
            if let Some(d) = vp8 {
                let mut b = d.patch();
                if let Some(pid) = out.picture_id {
                    let pid = if pid > 0x7f && d.picture_id().is_some_and(|x| x <= 0x7f) {
                        pid & 0x7f
                    } else {
                        pid
                    };
                    b = b.picture_id(pid);
                }
                if let Some(t) = out.tl0 {
                    b = b.tl0_pic_idx(t);
                }
                if let Ok(patch) = b.build() {
                    w = w.vp8_patch(patch);
                }
            }
            let out_ssrc = Ssrc::from(slot.ssrc);
            // Advancing a receiver's clock walks all its streams: do it at most once per
            // millisecond, not for every forwarded packet.
            if now.saturating_duration_since(r.transport.rtc_now) >= RECEIVER_CLOCK_STEP {
                r.transport.rtc_now = now;
                if r.transport.rtc.handle_input(Input::Timeout(now)).is_err() {
                    self.stats.rtc_errors += 1;
                }
            }
            if let Some(stream) = r.transport.rtc.direct_api().stream_tx(&out_ssrc) {
                stream.write_rtp(w);
                self.stats.rtp_forwarded += 1;
                if !r.dirty {
                    r.dirty = true;
                    self.dirty.push(*rid);
                }
            }
        }
        if cache_it
            && let Some(layer) = self
                .endpoints
                .get_mut(&sender)
                .and_then(|e| e.rx.sources.get_mut(si))
                .and_then(|s| s.layers.get_mut(li))
        {
            layer.cache.push(
                Sent {
                    seq,
                    ts: input.ts,
                    pt: pt_u8,
                    marker,
                    picture_id: input.picture_id,
                    tl0: input.tl0,
                    at: now,
                    payload,
                    ext: ext_out,
                },
                self.cfg.rtx_cache_packets,
                self.cfg.rtx_cache_age,
            );
        }
        if want_keyframe {
            // Rare (a receiver waits for a layer switch): the name is only cloned here.
            let name = self
                .endpoints
                .get(&sender)
                .and_then(|e| e.rx.sources.get(si))
                .map(|s| s.name.clone());
            if let Some(name) = name {
                self.request_keyframe(sender, &name, li);
            }
        }
    }

    /// Make every endpoint of the conference have exactly one outgoing stream (and mid) per
    /// source of every other endpoint, then re-select.
    fn sync_conference(&mut self, conference: &str) {
        let members: Vec<EpId> = self
            .conferences
            .get(conference)
            .map(|c| c.members.clone())
            .unwrap_or_default();
        struct Src {
            sender: EpId,
            owner: String,
            id: SourceId,
            name: String,
            kind: MediaType,
            video_type: String,
            ssrc: u32,
            rtx: Option<u32>,
        }
        let mut all: Vec<Src> = Vec::new();
        for id in &members {
            if let Some(ep) = self.endpoints.get(id) {
                for s in &ep.rx.sources {
                    let l0 = &s.layers[0];
                    all.push(Src {
                        sender: *id,
                        owner: ep.id.clone(),
                        id: s.id,
                        name: s.name.clone(),
                        kind: s.kind,
                        video_type: s.video_type.clone(),
                        ssrc: l0.ssrc,
                        rtx: l0.rtx,
                    });
                }
            }
        }
        for rid in &members {
            let Some(r) = self.endpoints.get_mut(rid) else {
                continue;
            };
            let wanted: Vec<&Src> = all.iter().filter(|x| x.sender != *rid).collect();
            // Drop what is gone with its slot. With SSRC rewriting too, as JVB does: the next
            // source gets a new SSRC (a new remote track in the client) while there are fewer
            // than the slot limit; lib-jitsi-meet handles an SSRC re-mapped to a new owner as a
            // track of the old one that changed hands, which it never removes when the call
            // moves to P2P (a stale track the app keeps showing).
            let gone: Vec<SourceId> =
                r.tx.forwards
                    .keys()
                    .filter(|k| !wanted.iter().any(|w| w.id == **k))
                    .copied()
                    .collect();
            for k in gone {
                if let Some(slot) = r.tx.forwards.remove(&k).and_then(|f| f.slot) {
                    r.remove_slot(slot);
                }
            }
            let video_rtx = r.video_rtx();
            for w in wanted {
                if let Some(f) = r.tx.forwards.get_mut(&w.id) {
                    f.video_type.clone_from(&w.video_type);
                    continue;
                }
                let mut slot = None;
                if !r.tx.ssrc_rewriting {
                    let rtx = w.rtx.filter(|_| w.kind == MediaType::Video && video_rtx);
                    // An SSRC the receiver itself sends, or one already forwarded: skip (str0m
                    // keys streams by SSRC).
                    if r.ssrc_taken(w.ssrc) || rtx.is_some_and(|x| r.ssrc_taken(x)) {
                        tracing::warn!(source = %w.name, "SSRC clash; source not forwarded");
                        continue;
                    }
                    let id = r.new_slot(w.kind, w.ssrc, rtx);
                    if let Some(s) = r.tx.slots.get_mut(&id) {
                        s.source = Some(w.id);
                    }
                    slot = Some(id);
                }
                r.tx.forwards.insert(
                    w.id,
                    Forward {
                        sender: w.sender,
                        owner: w.owner.clone(),
                        name: w.name.clone(),
                        kind: w.kind,
                        video_type: w.video_type.clone(),
                        slot,
                        max_height: 0,
                        bwe_height: u32::MAX,
                    },
                );
            }
            r.dirty = true;
        }
        self.pending_sender_constraints
            .insert(conference.to_string());
        for rid in members {
            if let Some(ep) = self.endpoints.get_mut(&rid)
                && ep.dirty
            {
                ep.dirty = false;
                self.mark_dirty(rid);
            }
            self.allocate(rid);
        }
    }

    /// docs/bridge.md B.8 step 1: the video sources forwarded to `r`, on-stage first, then
    /// selected, then by speaker order (join order after); a screenshare before a camera of the
    /// same rank on stage or selected; sources that send nothing last.
    fn allocation_order(&self, r: &Endpoint) -> Option<Vec<VideoCandidate>> {
        let conf = self.conferences.get(&r.conference)?;
        let (members, recent) = (&conf.members, conf.recent_speakers());
        let c = &r.tx.constraints;
        let mut order: Vec<VideoCandidate> = Vec::new();
        for sid in members {
            if let Some(s) = self.endpoints.get(sid) {
                let speaker = recent.iter().position(|x| x == sid).unwrap_or(usize::MAX);
                for src in s.rx.sources.iter().filter(|x| x.kind == MediaType::Video) {
                    if r.tx.forwards.contains_key(&src.id) {
                        order.push(VideoCandidate {
                            id: src.id,
                            rank: c.rank(&src.name),
                            name: src.name.clone(),
                            speaker,
                            desktop: src.video_type.starts_with("DESKTOP"),
                            off: matches!(src.video_type.as_str(), "NONE" | "DISABLED"),
                        });
                    }
                }
            }
        }
        order.sort_by_key(|x| (x.off, x.rank, !(x.desktop && x.rank < 2), x.speaker));
        Some(order)
    }

    /// docs/bridge.md B.8 step 3: share the receiver's estimate `budget` among what lastN and
    /// the constraints leave (`heights`), in priority order. Per source, the height of the
    /// layer it got (0: none), and the padding to probe with for more.
    fn share_bandwidth(
        &self,
        r: &Endpoint,
        order: &[VideoCandidate],
        heights: &[(SourceId, u32)],
        budget: u64,
        now: Instant,
    ) -> (Vec<u32>, u64) {
        let mut bwe = vec![u32::MAX; order.len()];
        let mut cands: Vec<BandwidthCandidate> = Vec::new();
        let mut at: Vec<usize> = Vec::new();
        for (k, x) in order.iter().enumerate() {
            let h = heights[k].1;
            let Some(src) =
                r.tx.forwards
                    .get(&x.id)
                    .and_then(|f| self.endpoints.get(&f.sender))
                    .and_then(|s| s.rx.sources.iter().find(|s| s.id == x.id))
            else {
                continue;
            };
            let mut layers: Vec<(u32, u64)> = (0..src.layers.len())
                .filter(|&i| src.layer_selectable(i, now))
                .map(|i| (src.layer_height(i), src.layers[i].bps))
                .collect();
            // Nothing flowing yet: nothing to share (the next round sees it).
            if h == 0 || layers.is_empty() {
                continue;
            }
            // Constraints are soft: the lowest active layer when none is within them.
            let within = layers.iter().rposition(|l| l.0 <= h).map_or(1, |p| p + 1);
            layers.truncate(within);
            cands.push(BandwidthCandidate {
                layers,
                on_stage: x.rank == 0,
                desktop: x.desktop,
            });
            at.push(k);
        }
        let a = allocate_bandwidth(&cands, budget);
        for (j, k) in at.into_iter().enumerate() {
            bwe[k] = a.chosen[j].map_or(0, |i| cands[j].layers[i].0);
        }
        let mut probe_bps = 0;
        if r.caps.fast_egress && a.ideal_bps > a.target_bps {
            probe_bps = (a.ideal_bps - a.target_bps).min(budget.saturating_sub(a.target_bps));
        }
        (bwe, probe_bps)
    }

    /// Decide each forwarded video source's effective maxHeight for one receiver `rid`
    /// (docs/bridge.md B.8: the order of the sources it may get, the height lastN and its
    /// constraints allow each, the share of its bandwidth estimate each gets) and announce the
    /// forwarded set; the forwarders, slots and announcements follow.
    fn allocate(&mut self, rid: EpId) {
        let Some(r) = self.endpoints.get(&rid) else {
            return;
        };
        let Some(order) = self.allocation_order(r) else {
            return;
        };
        let c = &r.tx.constraints;
        let heights = constrained_heights(c, &order);
        let budget = self.budget(r);
        let (bwe, probe_bps) = match (budget, self.now) {
            (Some(budget), Some(now)) => self.share_bandwidth(r, &order, &heights, budget, now),
            _ => (vec![u32::MAX; order.len()], 0),
        };
        let mut forwarded: Vec<String> = order
            .iter()
            .zip(&heights)
            .zip(&bwe)
            .filter(|((_, h), b)| h.1 > 0 && **b > 0)
            .map(|((x, _), _)| x.name.clone())
            .collect();
        let Some(r) = self.endpoints.get_mut(&rid) else {
            return;
        };
        r.tx.alloc_budget = budget;
        r.tx.probe_bps = probe_bps;
        if probe_bps > 0
            && self.timers.get(Timer::Probe).is_none()
            && let Some(n) = self.now
        {
            self.timers.set(Timer::Probe, n + PROBE_INTERVAL);
        }
        let mut changed = false;
        for (&(sid, h), &b) in heights.iter().zip(&bwe) {
            if let Some(f) = r.tx.forwards.get_mut(&sid) {
                if f.max_height != h {
                    f.max_height = h;
                    changed = true;
                }
                if f.bwe_height != b {
                    if b == 0 && h > 0 {
                        self.stats.bwe_suspensions += 1;
                    }
                    f.bwe_height = b;
                }
            }
        }
        if changed && !self.pending_sender_constraints.contains(&r.conference) {
            self.pending_sender_constraints.insert(r.conference.clone());
        }
        if r.tx.ssrc_rewriting
            && let Some(now) = self.now
        {
            // As JVB: what lastN and the constraints let through (with video on), then the
            // rest with video on while slots remain, so the client has a track for everyone
            // and shows who is outside last-N.
            let limit = self.cfg.rewrite_video_slots;
            let on = || order.iter().zip(&heights).filter(|(x, _)| !x.off);
            let active: Vec<SourceId> = on()
                .filter(|(_, h)| h.1 > 0)
                .chain(on().filter(|(_, h)| h.1 == 0))
                .map(|(x, _)| x.id)
                .take(limit)
                .collect();
            let bound = r.activate_slots(&active, limit, now);
            if !bound.is_empty() {
                let ev = r.sources_map_event(MediaType::Video, &bound);
                self.out.push_back(EngineOutput::Event(ev));
            }
        }
        forwarded.sort();
        if forwarded != r.tx.announced {
            r.tx.announced = forwarded.clone();
            let ev = EngineEvent::ForwardedSources {
                conference: r.conference.clone(),
                endpoint: r.id.clone(),
                sources: forwarded,
            };
            self.out.push_back(EngineOutput::Event(ev));
        }
    }
}

impl MediaEngine {
    /// The bandwidth a receiver's video may take (bps), if the allocation follows one: str0m's
    /// estimate on its path; on the fast path ours, or the initial one until feedback comes
    /// (only receivers that send transport-cc feedback have one).
    fn budget(&self, r: &Endpoint) -> Option<u64> {
        if !self.cfg.trust_bwe {
            return None;
        }
        if r.tx.bwe_bps.is_some() {
            return r.tx.bwe_bps;
        }
        (r.caps.fast_egress && r.caps.ext_ids.transport_cc != 0)
            .then(|| r.tx.sendside.estimate().unwrap_or(INITIAL_BWE_BPS))
    }

    /// Measure every sender layer's rate (bps) over the time since the last measurement.
    fn measure_rates(&mut self, now: Instant) {
        let elapsed = self
            .rates_at
            .map_or(RATE_INTERVAL, |t| now.saturating_duration_since(t))
            .as_secs_f64()
            .max(0.001);
        self.rates_at = Some(now);
        for l in self
            .endpoints
            .values_mut()
            .flat_map(|e| e.rx.sources.iter_mut())
            .flat_map(|s| s.layers.iter_mut())
        {
            let bps = (std::mem::take(&mut l.bytes) as f64 * 8.0 / elapsed) as u64;
            // Smoothed over about two intervals: keyframes come and go.
            l.bps = if l.bps == 0 { bps } else { (l.bps + bps) / 2 };
        }
    }

    /// Padding towards every receiver whose allocation wants more than its estimate allows
    /// (docs/bridge.md B.4 probing): padding-only RTX packets on one of its video streams, numbered
    /// for transport-cc, so the estimate can grow.
    fn probe(&mut self, now: Instant) {
        let mut any = false;
        for ep in self.endpoints.values_mut() {
            if ep.tx.probe_bps == 0 || !ep.transport.connected || ep.caps.ext_ids.transport_cc == 0
            {
                ep.tx.probe_at = None;
                continue;
            }
            any = true;
            if ep.tx.sendside.losing(now) {
                ep.tx.probe_at = None;
                continue;
            }
            let (Some(srtp), Some((from, to))) =
                (ep.transport.srtp.as_mut(), ep.transport.send_path)
            else {
                continue;
            };
            let elapsed = ep.tx.probe_at.map_or(PROBE_INTERVAL, |t| {
                now.saturating_duration_since(t).min(4 * PROBE_INTERVAL)
            });
            ep.tx.probe_at = Some(now);
            let Some(slot) = ep
                .tx
                .slots
                .values_mut()
                .filter(|s| s.kind == MediaType::Video && s.rtx.is_some())
                .max_by_key(|s| s.last_used)
            else {
                continue;
            };
            // The payload type of what it carried; before any video, the lowest with RTX.
            let pt = slot.pt.or_else(|| ep.caps.rtx_pts.keys().min().copied());
            let (Some(rtx), Some(rtx_pt)) = (
                slot.rtx,
                pt.and_then(|pt| ep.caps.rtx_pts.get(&pt).copied()),
            ) else {
                continue;
            };
            let ts = slot.sent.last.map_or(0, |l| l.0);
            let mut bytes = (ep.tx.probe_bps as f64 * elapsed.as_secs_f64() / 8.0) as usize;
            self.bufs.scratch.clear();
            self.bufs.scratch.resize(PROBE_PADDING, 0);
            self.bufs.scratch[PROBE_PADDING - 1] = PROBE_PADDING as u8;
            for _ in 0..PROBE_PACKETS_PER_ROUND {
                if bytes == 0 {
                    break;
                }
                let seq = slot.rtx_seq;
                slot.rtx_seq += 1;
                let tseq = ep.tx.sendside.on_send(now, PROBE_PADDING + 40);
                self.bufs.hdr.clear();
                write_header(
                    &mut self.bufs.hdr,
                    &RtpOut {
                        pt: rtx_pt,
                        marker: false,
                        seq: seq as u16,
                        ts,
                        ssrc: rtx,
                    },
                    &ep.caps.ext_ids,
                    &ExtOut::default(),
                    Some(tseq),
                );
                // The padding bit: the payload is all padding (RFC 3550 §5.1).
                self.bufs.hdr[0] |= 0x20;
                let mut data = self.bufs.pool.pop().unwrap_or_default();
                if srtp
                    .protect_rtp(&self.bufs.hdr, &self.bufs.scratch, rtx, seq, &mut data)
                    .is_err()
                {
                    self.stats.rtc_errors += 1;
                    break;
                }
                self.stats.probe_packets += 1;
                queue_transmit(&mut self.out, &mut self.stats, from, to, data);
                bytes = bytes.saturating_sub(PROBE_PADDING + 40);
            }
        }
        if any {
            self.timers.set(Timer::Probe, now + PROBE_INTERVAL);
        }
    }
}

/// A maxHeight from the bridge channel: −1 (any negative) is unlimited.
fn wire_height(h: i64) -> u32 {
    if h < 0 {
        u32::MAX
    } else {
        h.min(i64::from(u32::MAX)) as u32
    }
}

/// A video source a receiver may get, as bandwidth allocation ranks it.
struct VideoCandidate {
    id: SourceId,
    name: String,
    /// 0 on stage, 1 selected, 2 neither.
    rank: u8,
    /// Position in the recent-speakers list (`usize::MAX`: not in it).
    speaker: usize,
    desktop: bool,
    /// Declared `none`/`disabled`: not sending.
    off: bool,
}

/// docs/bridge.md B.8 step 2: the height each source in `order` may have under lastN and the
/// receiver's constraints (0: not forwarded).
fn constrained_heights(c: &ReceiverConstraints, order: &[VideoCandidate]) -> Vec<(SourceId, u32)> {
    let last_n = match c.last_n {
        Some(n) if n >= 0 => n as usize,
        _ => usize::MAX,
    };
    let default = c.default_max_height.map_or(DEFAULT_MAX_HEIGHT, wire_height);
    let mut counted = 0usize;
    order
        .iter()
        .map(|x| {
            let h = if x.off || counted >= last_n {
                0
            } else {
                counted += 1;
                c.constraints
                    .get(&x.name)
                    .map_or(default, |h| wire_height(*h))
            };
            (x.id, h)
        })
        .collect()
}

/// Reusable buffers of the fast path: send buffers given back by the I/O side, an RTP header,
/// a payload copy.
struct SendBufs {
    pool: Vec<Vec<u8>>,
    hdr: Vec<u8>,
    scratch: Vec<u8>,
}

/// One forwarded packet as every receiver gets it, before each receiver's own rewriting.
struct Forwarded<'a> {
    sender: EpId,
    source_id: SourceId,
    kind: MediaType,
    pt: u8,
    marker: bool,
    payload: &'a [u8],
    ext: &'a ExtOut,
    input: &'a InPacket,
    now: Instant,
}

/// The fast path to receiver `r` on its slot `slot_id`: our own RTP header (rewritten as
/// `out` says), SRTP, and the slot's counts and retransmission history; the datagram goes on
/// `queue`. `Some(keep)`: sent, and whether the packet is to be kept for retransmissions.
#[allow(clippy::too_many_arguments)]
fn send_fast(
    r: &mut Endpoint,
    slot_id: endpoint::SlotId,
    f: &Forwarded<'_>,
    out: &forward::OutPacket,
    has_rtx: bool,
    bufs: &mut SendBufs,
    queue: &mut VecDeque<EngineOutput>,
    stats: &mut EngineStats,
) -> Option<bool> {
    let now = f.now;
    if r.transport.srtp.is_none() {
        r.transport.srtp = r.caps.keys.get().and_then(Srtp::new);
    }
    let (Some(srtp), Some((from, to))) = (r.transport.srtp.as_mut(), r.transport.send_path) else {
        return None;
    };
    let slot = r.tx.slots.get_mut(&slot_id)?;
    // Only a stream whose offsets moved (a switch) needs its descriptor patched, and a copy
    // of the payload for it.
    let patch = out.picture_id != f.input.picture_id || out.tl0 != f.input.tl0;
    let body: &[u8] = if patch {
        bufs.scratch.clear();
        bufs.scratch.extend_from_slice(f.payload);
        patch_vp8(&mut bufs.scratch, out.picture_id, out.tl0);
        &bufs.scratch
    } else {
        f.payload
    };
    bufs.hdr.clear();
    // Video only, as JVB: a receiver that did not negotiate transport-cc on its audio m-line
    // would report every audio packet lost.
    let tseq = (r.caps.ext_ids.transport_cc != 0 && f.kind == MediaType::Video)
        .then(|| r.tx.sendside.on_send(now, body.len() + 40));
    write_header(
        &mut bufs.hdr,
        &RtpOut {
            pt: f.pt,
            marker: f.marker,
            seq: out.seq as u16,
            ts: out.ts,
            ssrc: slot.ssrc,
        },
        &r.caps.ext_ids,
        f.ext,
        tseq,
    );
    let mut data = bufs.pool.pop().unwrap_or_default();
    if srtp
        .protect_rtp(&bufs.hdr, body, slot.ssrc, out.seq, &mut data)
        .is_err()
    {
        stats.rtc_errors += 1;
        return None;
    }
    slot.sent.packets = slot.sent.packets.wrapping_add(1);
    slot.sent.octets = slot.sent.octets.wrapping_add(body.len() as u32);
    slot.sent.last = Some((out.ts, now));
    let keep = f.kind == MediaType::Video && has_rtx && slot.rtx.is_some();
    if keep {
        slot.pt = Some(f.pt);
        if slot.map_epoch != Some(slot.proj.epoch())
            && let Some(off) = slot.proj.offsets()
        {
            slot.map_epoch = Some(slot.proj.epoch());
            if slot.history.len() >= SLOT_HISTORY {
                slot.history.pop_front();
            }
            slot.history.push_back(endpoint::SlotMap {
                first_out: out.seq,
                sender: f.sender,
                source: f.source_id,
                off,
            });
        }
    }
    stats.rtp_forwarded += 1;
    queue_transmit(queue, stats, from, to, data);
    Some(keep)
}

/// Queue one datagram for the media socket, counted.
fn queue_transmit(
    out: &mut VecDeque<EngineOutput>,
    stats: &mut EngineStats,
    from: SocketAddr,
    to: SocketAddr,
    data: Vec<u8>,
) {
    stats.packets_out += 1;
    stats.bytes_out += data.len() as u64;
    out.push_back(EngineOutput::Transmit(Transmit { from, to, data }));
}
