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
//! The files. The engine's own steps, each an `impl MediaEngine` block: `receive.rs` (what
//! arrives: demultiplexing, fast-path RTP, receivers' RTCP), `relay.rs` (one packet to every
//! receiver), `allocation.rs` (who gets which layer, bandwidth shares, probes),
//! `feedback.rs` (the RTCP the bridge sends, retransmissions, keyframe requests), `rtc.rs`
//! (each endpoint's str0m outputs and events); this file keeps the configuration, endpoint
//! management, the connectivity monitor, timers and `poll_output`. Their state:
//! `conference.rs`, `endpoint.rs` (an endpoint's transport, receive side and send side),
//! `timers.rs`, `events.rs` (what the engine reports), `buf.rs` (shared payload buffers),
//! `constraints.rs` (a receiver's video wishes). Pure algorithms: `forward.rs` (layer
//! choice, per-receiver rewriting, bandwidth shares, silence), `speech.rs`, `ingress.rs`,
//! `egress.rs`, `bwe.rs`, `srtp.rs`. Packet formats are in `crate::rtp`; the engine reads no
//! clock and draws no randomness itself (`MediaEngine::new` takes both).

mod allocation;
mod broadcast;
mod buf;
mod bwe;
mod cascade;
mod conference;
mod constraints;
mod datachannel;
mod egress;
mod endpoint;
mod events;
mod feedback;
mod forward;
mod ingress;
mod local;
mod receive;
mod relay;
mod rtc;
mod speech;
pub mod srtp;
mod svc;
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
pub use str0m::net::Protocol;
use str0m::net::Receive;
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, Ssrc, Vp8Descriptor};
use str0m::{Event, IceConnectionState, Input, Output};

use crate::colibri2::{self, MediaType};
use crate::rtp::payload::{VideoCodec, patch_vp8, starts_keyframe, vp8_keyframe_height};
pub use crate::rtp::rtcp::sr::Clock;
use crate::rtp::rtcp::{Feedback, parse_feedback};
use crate::rtp::stun::stun_request_local_ufrag;
use crate::rtp::{ExtOut, RtpOut, is_rtcp, is_rtp, write_header};
pub use broadcast::{AUDIO_PT, BroadcastStats, BroadcastTarget, VIDEO_PT};
use buf::Buf;
use conference::Conference;
pub use constraints::ReceiverConstraints;
pub use datachannel::MAX_CHANNEL_MESSAGE;
use egress::Sent;
use endpoint::{
    DependencyDescriptor, Endpoint, EpId, Forward, RtcSetup, RxSide, SenderSource, SourceId,
    Transport, TxSide, build_rtc, jitsi_default_medias, video_codec,
};
pub use events::{EngineEvent, MappedSource};
use forward::{BandwidthCandidate, InPacket, LayerView, allocate_bandwidth, select_layer};
use relay::SendBufs;
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
const MAX_LAYERS: usize = svc::MAX_VIEWS;
/// Losses towards a receiver are not counted this long after a video stream starts on it (it
/// drops the packets of an SSRC its signalling has not caught up with).
const NEW_SOURCE_GRACE: Duration = Duration::from_secs(2);
/// Switches remembered per forwarded stream to map NACKed sequence numbers back.
const SLOT_HISTORY: usize = 64;
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
    /// ICE-TCP passive host candidates (RFC 6544): the addresses (ip + TCP port) where the
    /// bridge accepts TCP connections carrying RFC 4571-framed media. Empty: no ICE-TCP.
    pub tcp_local_addrs: Vec<SocketAddr>,
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
            tcp_local_addrs: Vec::new(),
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
        self.svc_skipped += o.svc_skipped;
        self.rtc_errors += o.rtc_errors;
        self.silence_dropped += o.silence_dropped;
        self.dominant_speaker_changes += o.dominant_speaker_changes;
        self.broadcast_packets += o.broadcast_packets;
        self.broadcast_switches += o.broadcast_switches;
        self.retransmissions += o.retransmissions;
        self.retransmissions_limited += o.retransmissions_limited;
        self.receiver_keyframe_requests += o.receiver_keyframe_requests;
        self.send_dropped += o.send_dropped;
        self.gso_datagrams += o.gso_datagrams;
        self.probe_packets += o.probe_packets;
        self.engine_cpu_permille = self.engine_cpu_permille.max(o.engine_cpu_permille);
        self.bwe_suspensions += o.bwe_suspensions;
        self.channel_messages_in += o.channel_messages_in;
        self.channel_messages_out += o.channel_messages_out;
        self.channel_messages_dropped += o.channel_messages_dropped;
        self.connected_udp += o.connected_udp;
        self.connected_tcp += o.connected_tcp;
        for (a, b) in self.connect_ms_buckets.iter_mut().zip(o.connect_ms_buckets) {
            *a += b;
        }
        self.connect_ms_sum += o.connect_ms_sum;
        self.ice_never_connected += o.ice_never_connected;
        self.ice_inactive += o.ice_inactive;
        self.ice_failed += o.ice_failed;
        self.red_stripped += o.red_stripped;
    }
}

/// One datagram to send from the media port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub from: SocketAddr,
    pub to: SocketAddr,
    /// UDP, or TCP (ICE-TCP: the driver frames it onto the connection from `to`).
    pub proto: Protocol,
    pub data: Vec<u8>,
}

/// Where an endpoint's datagrams go: the local candidate, the remote address, and whether the
/// pair is UDP or TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Path {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub proto: Protocol,
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
    /// Simulcast layer switches and SVC decode target switches.
    pub layer_switches: u64,
    /// Packets of SVC layers a receiver does not get (docs/bridge.md B.13), per receiver.
    pub svc_skipped: u64,
    /// Errors reported by str0m (the endpoint is marked failed when its `Rtc` dies).
    pub rtc_errors: u64,
    /// Silent audio packets dropped (docs/bridge.md B.6).
    pub silence_dropped: u64,
    /// Changes of a conference's dominant speaker.
    pub dominant_speaker_changes: u64,
    /// RTP packets sent to live-stream encoders (docs/streaming.md).
    pub broadcast_packets: u64,
    /// On-stage video switches in live streams.
    pub broadcast_switches: u64,
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
    /// Bridge-channel messages received / sent over SCTP data channels.
    pub channel_messages_in: u64,
    pub channel_messages_out: u64,
    /// Bridge-channel messages not sent or not taken over SCTP (buffer full, too large, not
    /// text, no channel).
    pub channel_messages_dropped: u64,
    /// Endpoints whose ICE and DTLS came up, by the transport of their pair.
    pub connected_udp: u64,
    pub connected_tcp: u64,
    /// How long endpoints took from their allocation to ICE and DTLS up (join latency on the
    /// media side), counted per upper bound in [`CONNECT_BUCKETS_MS`] (the last: above all).
    pub connect_ms_buckets: [u64; CONNECT_BUCKETS_MS.len() + 1],
    pub connect_ms_sum: u64,
    /// Endpoints that ended without media, by reason: never connected within
    /// `expire_unconnected_after`; connected once, then silent for `expire_inactive_after`;
    /// their ICE/DTLS state failed.
    pub ice_never_connected: u64,
    pub ice_inactive: u64,
    pub ice_failed: u64,
    /// Opus-with-RED packets sent as plain Opus to receivers without RED.
    pub red_stripped: u64,
}

/// Upper bounds (ms) of the join-latency histogram.
pub const CONNECT_BUCKETS_MS: [u64; 8] = [100, 250, 500, 1000, 2000, 5000, 10_000, 30_000];

impl EngineStats {
    /// Counts one endpoint that connected `ms` after its allocation.
    pub fn record_connect(&mut self, ms: u64) {
        let i = CONNECT_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(CONNECT_BUCKETS_MS.len());
        self.connect_ms_buckets[i] += 1;
        self.connect_ms_sum += ms;
    }
}

/// One incoming RTP packet, from the fast path or from str0m.
#[derive(Debug)]
/// What forwarding one packet needs from its sender's side ([`MediaEngine::ingest`]).
struct Ingested {
    /// The sender is a relayed endpoint (its packet goes to no relay, docs/bridge.md B.15).
    from_relay: bool,
    /// The sender's source and layer the packet belongs to.
    si: usize,
    li: usize,
    kind: MediaType,
    source_id: SourceId,
    /// The source's layers as layer selection sees them (the first `nviews`).
    views: [LayerView; MAX_LAYERS],
    nviews: usize,
    input: InPacket,
    /// The packet starts a keyframe (`input.keyframe` also holds for any packet that may
    /// start a single-layer stream).
    keyframe: bool,
    vp8: Option<Vp8Descriptor>,
    /// An SVC stream's packet: its frame, and the views (`views` are its spatial layers).
    svc: Option<SvcPacket>,
    /// `views` are the spatial layers of the source's SVC stream.
    svc_views: bool,
}

/// One packet of an SVC stream (docs/bridge.md B.13).
#[derive(Debug)]
struct SvcPacket {
    frame: svc::FrameInfo,
    layout: Arc<svc::SvcLayout>,
    generation: u32,
}

struct Incoming {
    ssrc: u32,
    /// Extended sequence number.
    seq: u64,
    ts: u32,
    pt: u8,
    marker: bool,
    payload: Buf,
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
            payload: Buf::copy_of(&p.payload),
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

/// What [`MediaEngine::insert_endpoint`] makes.
struct NewEndpoint<'a> {
    conference: &'a str,
    endpoint: &'a str,
    ufrag: &'a str,
    pwd: &'a str,
    ssrc_rewriting: bool,
    sctp: bool,
    medias: &'a [colibri2::Media],
    link: endpoint::Link,
    ice_controlling: bool,
    /// Host candidates other than the media port's (a relay's own port).
    local_addrs: Option<Vec<SocketAddr>>,
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
    /// Relays with a UDP port of their own (docs/bridge.md B.15): local port → relay.
    relay_ports: FastMap<u16, EpId>,
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
            bufs: SendBufs::new(BUFFER_POOL),
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
            relay_ports: FastMap::default(),
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
    /// `sctp`: the offer has a `data` content, so the client may open the bridge channel as
    /// an SCTP data channel (docs/bridge.md A.1).
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
        sctp: bool,
        medias: &[colibri2::Media],
        now: Instant,
    ) {
        self.insert_endpoint(
            NewEndpoint {
                conference,
                endpoint,
                ufrag: local_ufrag,
                pwd: local_pwd,
                ssrc_rewriting,
                sctp,
                medias,
                link: endpoint::Link::Client,
                ice_controlling: true,
                local_addrs: None,
            },
            now,
        );
    }

    /// An endpoint, relay or relayed endpoint into the table (see [`MediaEngine::add_endpoint`]).
    fn insert_endpoint(&mut self, n: NewEndpoint<'_>, now: Instant) -> Option<EpId> {
        let NewEndpoint {
            conference,
            endpoint,
            ufrag: local_ufrag,
            pwd: local_pwd,
            ssrc_rewriting,
            sctp,
            medias,
            link,
            ice_controlling,
            local_addrs: own_addrs,
        } = n;
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
            return None;
        }
        if local_ufrag.is_empty() || self.by_ufrag.contains_key(local_ufrag) {
            tracing::warn!(conference, endpoint, "ICE ufrag empty or in use");
            return None;
        }
        let offered = (!medias.is_empty()).then(|| medias.to_vec());
        let medias = offered.clone().unwrap_or_else(jitsi_default_medias);
        let relay = matches!(link, endpoint::Link::Relay { .. });
        let (rtc, caps) = build_rtc(
            &RtcSetup {
                cert: &self.cert,
                ufrag: local_ufrag,
                pwd: local_pwd,
                medias: &medias,
                local_addrs: own_addrs.as_deref().unwrap_or(&self.cfg.local_addrs),
                tcp_local_addrs: if relay {
                    &[]
                } else {
                    &self.cfg.tcp_local_addrs
                },
                rtx_cache_packets: self.cfg.rtx_cache_packets,
                rtx_cache_age: self.cfg.rtx_cache_age,
                bwe_initial_bps: self.cfg.bwe_initial_bps.filter(|_| !relay),
                fast_egress: relay || self.cfg.bwe_initial_bps.is_none(),
                ice_controlling,
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
                link,
                conference: conference.to_string(),
                id: endpoint.to_string(),
                caps,
                dirty: false,
                medias: offered,
                created: now,
                transport: Transport {
                    ufrag: local_ufrag.to_string(),
                    pwd: local_pwd.to_string(),
                    rtc: Box::new(rtc),
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
                    ice_controlling,
                    sctp: sctp && !relay,
                    channel: None,
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
        Some(id)
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
        let relay = matches!(ep.link, endpoint::Link::Relay { .. });
        let (rtc, caps) = build_rtc(
            &RtcSetup {
                cert: &self.cert,
                ufrag: &ep.transport.ufrag,
                pwd: &ep.transport.pwd,
                medias,
                local_addrs: &self.cfg.local_addrs,
                tcp_local_addrs: &self.cfg.tcp_local_addrs,
                rtx_cache_packets: self.cfg.rtx_cache_packets,
                rtx_cache_age: self.cfg.rtx_cache_age,
                bwe_initial_bps: self.cfg.bwe_initial_bps.filter(|_| !relay),
                fast_egress: relay || self.cfg.bwe_initial_bps.is_none(),
                ice_controlling: ep.transport.ice_controlling,
            },
            now.max(ep.transport.rtc_now),
        );
        *ep.transport.rtc = rtc;
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
        let relay = match ep.link {
            endpoint::Link::Relayed { relay } => Some(relay),
            _ => None,
        };
        self.next_id = next_id + 1;
        self.mark_dirty(id);
        if let Some(relay) = relay {
            self.index_relay(relay);
        }
        self.sync_conference(&conf);
    }

    /// Remove one endpoint (its streams disappear from everyone else).
    pub fn remove_endpoint(&mut self, endpoint: (&str, &str)) {
        let Some(id) = self.id_of(endpoint) else {
            return;
        };
        // A relay takes the endpoints it carried with it (docs/bridge.md B.15).
        for relayed in self.relayed_by(id) {
            self.remove_endpoint((endpoint.0, &relayed));
        }
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
            if c.members.is_empty() && c.broadcast.is_none() {
                self.conferences.remove(&ep.conference);
            }
        }
        self.dirty.retain(|x| *x != id);
        self.relay_ports.retain(|_, r| *r != id);
        if let endpoint::Link::Relayed { relay } = ep.link {
            self.index_relay(relay);
        }
        // What other bridges wanted of its sources goes with it.
        if matches!(ep.link, endpoint::Link::Client)
            && let Some(c) = self.conferences.get(&ep.conference)
        {
            for rid in &c.members {
                if let Some(r) = self.endpoints.get_mut(rid)
                    && matches!(r.link, endpoint::Link::Relay { .. })
                {
                    for src in &ep.rx.sources {
                        r.tx.constraints.constraints.remove(&src.name);
                    }
                }
            }
        }
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
        tracing::debug!(%conference, speakers = ?names, "recent speakers changed");
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
        // Relays and relayed endpoints are no participants of this bridge's channel.
        if !matches!(ep.link, endpoint::Link::Client) {
            return;
        }
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
        let ev = EngineEvent::connectivity(ep.conference.clone(), ep.id.clone(), announce);
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
            // A live stream wants its on-stage source (docs/streaming.md).
            if let Some(b) = self
                .conferences
                .get(&conf)
                .and_then(|c| c.broadcast.as_ref())
                && let Some((_, sid)) = b.on_stage()
            {
                wanted.insert(sid, b.target().max_height);
            }
            // What receivers here want, and what the other bridges' relays want (their
            // `AddReceiver`s): a relayed source is wanted only for the receivers here (no
            // relay carries it on).
            let mut here = wanted.clone();
            for rid in members {
                let Some(r) = self.endpoints.get(rid) else {
                    continue;
                };
                let relay = match r.link {
                    endpoint::Link::Client => false,
                    endpoint::Link::Relay { .. } => true,
                    // Receives nothing here: its own bridge says what it wants.
                    endpoint::Link::Relayed { .. } => continue,
                };
                for (sid, f) in &r.tx.forwards {
                    if f.kind == MediaType::Video {
                        let w = wanted.entry(*sid).or_insert(0);
                        *w = (*w).max(f.max_height);
                        if !relay {
                            let w = here.entry(*sid).or_insert(0);
                            *w = (*w).max(f.max_height);
                        }
                    }
                }
            }
            let relay_names: HashMap<EpId, String> = members
                .iter()
                .filter_map(|id| {
                    let e = self.endpoints.get(id)?;
                    matches!(e.link, endpoint::Link::Relay { .. }).then(|| (*id, e.id.clone()))
                })
                .collect();
            for sid in members {
                let Some(s) = self.endpoints.get_mut(sid) else {
                    continue;
                };
                let relay = match s.link {
                    endpoint::Link::Relayed { relay } => relay_names.get(&relay).cloned(),
                    _ => None,
                };
                if matches!(s.link, endpoint::Link::Relayed { .. }) && relay.is_none() {
                    continue;
                }
                for src in
                    s.rx.sources
                        .iter_mut()
                        .filter(|x| x.kind == MediaType::Video)
                {
                    let from = if relay.is_some() { &here } else { &wanted };
                    let h = from
                        .get(&src.id)
                        .copied()
                        .unwrap_or(0)
                        .min(UNLIMITED_SENDER_HEIGHT);
                    if src.announced_max_height == Some(h) {
                        continue;
                    }
                    src.announced_max_height = Some(h);
                    let event = match &relay {
                        Some(relay) => EngineEvent::RelayWants {
                            conference: s.conference.clone(),
                            relay: relay.clone(),
                            source: src.name.clone(),
                            max_height: h,
                        },
                        None => EngineEvent::SenderSourceConstraints {
                            conference: s.conference.clone(),
                            endpoint: s.id.clone(),
                            source: src.name.clone(),
                            max_height: h,
                        },
                    };
                    self.out.push_back(EngineOutput::Event(event));
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
        let expired: Vec<(String, String, String, bool)> = self
            .endpoints
            .values()
            .filter(|ep| !matches!(ep.link, endpoint::Link::Relayed { .. }))
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
                    ep.transport.connected_once,
                )
            })
            .collect();
        for (conference, endpoint, ufrag, connected_once) in expired {
            if connected_once {
                self.stats.ice_inactive += 1;
            } else {
                self.stats.ice_never_connected += 1;
            }
            tracing::info!(%conference, %endpoint, connected_once, "endpoint expired (inactivity)");
            self.remove_endpoint((&conference, &endpoint));
            self.out
                .push_back(EngineOutput::Event(EngineEvent::Expired {
                    conference,
                    endpoint,
                    ufrag,
                }));
        }
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
            self.broadcast_tick(&conf, now);
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

    /// The I/O side could not send `n` datagrams.
    pub fn count_send_dropped(&mut self, n: u64) {
        self.stats.send_dropped += n;
    }

    /// The I/O side sent `n` datagrams as one UDP GSO send.
    pub fn count_gso(&mut self, n: u64) {
        self.stats.gso_datagrams += n;
    }

    /// Give a send buffer back once it is on the wire: the engine reuses it.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.bufs.pool.give_back(buf);
    }
}

/// Queue one datagram for the media socket, counted.
fn queue_transmit(
    out: &mut VecDeque<EngineOutput>,
    stats: &mut EngineStats,
    path: Path,
    data: Vec<u8>,
) {
    stats.packets_out += 1;
    stats.bytes_out += data.len() as u64;
    out.push_back(EngineOutput::Transmit(Transmit {
        from: path.from,
        to: path.to,
        proto: path.proto,
        data,
    }));
}
