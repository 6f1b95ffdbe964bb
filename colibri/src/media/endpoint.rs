//! One endpoint of the engine: its str0m `Rtc` (Direct API, RTP mode), what it sends and what
//! is forwarded to it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::SmallRng;

use str0m::bwe::Bitrate;
use str0m::channel::ChannelId;
use str0m::config::DtlsCert;
use str0m::format::{Codec, FormatParams};
use str0m::ice::IceCreds;
use str0m::media::{Frequency, MediaKind, Mid, Pt};
use str0m::net::TcpType;
use str0m::rtp::{Extension, ExtensionSerializer, ExtensionValues, Ssrc};
use str0m::{Candidate, Rtc, RtcConfig};

use super::datachannel::MAX_CHANNEL_MESSAGE;
use super::egress::{RtxRing, SendStats};
use super::events::MappedSource;
use super::forward::{Offsets, Projection, SilenceFilter, default_height};
use super::ingress::{RxStream, TwccRecorder};
use super::srtp::{KeySlot, Srtp, crypto_provider, with_key_capture};
use super::svc::{SvcFilter, SvcStream};
use super::{FastMap, Path, ReceiverConstraints};
use crate::colibri2::{self, MediaType};
use crate::rtp::ExtIds;
use crate::rtp::payload::VideoCodec;

/// What str0m's bandwidth estimator probes towards (bridge → endpoint), when enabled.
const BWE_DESIRED_BPS: u64 = 10_000_000;

/// The mids of the receive side: every SSRC the endpoint sends is declared on one of these.
pub(super) const MID_RX_AUDIO: &str = "ra";
pub(super) const MID_RX_VIDEO: &str = "rv";

/// A layer not heard from for this long is not selected.
const LAYER_IDLE: Duration = Duration::from_millis(1000);
/// How long a starting source waits for layers it has not seen yet.
const LAYER_STARTUP: Duration = Duration::from_millis(500);

/// The AV1 dependency descriptor: passed through byte for byte (AV1 does not decode without it).
pub(super) const DEPENDENCY_DESCRIPTOR_URI: &str =
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DependencyDescriptor(pub Vec<u8>);

#[derive(Debug)]
pub(super) struct DependencyDescriptorSerializer;

impl ExtensionSerializer for DependencyDescriptorSerializer {
    fn write_to(&self, buf: &mut [u8], ev: &ExtensionValues) -> usize {
        match ev.user_values.get::<DependencyDescriptor>() {
            Some(d) if d.0.len() <= buf.len() => {
                buf[..d.0.len()].copy_from_slice(&d.0);
                d.0.len()
            }
            _ => 0,
        }
    }
    fn parse_value(&self, buf: &[u8], ev: &mut ExtensionValues) -> bool {
        ev.user_values.set(DependencyDescriptor(buf.to_vec()));
        true
    }
    fn is_video(&self) -> bool {
        true
    }
    fn is_audio(&self) -> bool {
        false
    }
    fn requires_two_byte_form(&self, ev: &ExtensionValues) -> bool {
        ev.user_values
            .get::<DependencyDescriptor>()
            .is_some_and(|d| d.0.len() > 16 || d.0.is_empty())
    }
}

/// The header extensions the engine understands, by URI. `sdes:mid` is deliberately absent:
/// with it mapped str0m stamps its own mids on forwarded packets and Chromium drops them.
fn extension_for_uri(uri: &str) -> Option<Extension> {
    Some(match uri {
        "urn:ietf:params:rtp-hdrext:ssrc-audio-level" => Extension::AudioLevel,
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time" => Extension::AbsoluteSendTime,
        "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01" => {
            Extension::TransportSequenceNumber
        }
        "urn:3gpp:video-orientation" => Extension::VideoOrientation,
        DEPENDENCY_DESCRIPTOR_URI => {
            Extension::with_serializer(DEPENDENCY_DESCRIPTOR_URI, DependencyDescriptorSerializer)
        }
        _ => return None,
    })
}

fn codec_for_name(name: &str) -> Option<Codec> {
    Some(match name.to_ascii_lowercase().as_str() {
        "opus" => Codec::Opus,
        "pcmu" => Codec::PCMU,
        "pcma" => Codec::PCMA,
        "g722" => Codec::G722,
        "telephone-event" => Codec::Tele,
        "vp8" => Codec::Vp8,
        "vp9" => Codec::Vp9,
        "h264" => Codec::H264,
        "av1" => Codec::Av1,
        _ => return None,
    })
}

pub(super) fn video_codec(c: Codec) -> VideoCodec {
    match c {
        Codec::Vp8 => VideoCodec::Vp8,
        Codec::Vp9 => VideoCodec::Vp9,
        Codec::H264 => VideoCodec::H264,
        Codec::Av1 => VideoCodec::Av1,
        _ => VideoCodec::Other,
    }
}

/// The Jitsi offer, used until the focus tells us the real one.
pub(super) fn jitsi_default_medias() -> Vec<colibri2::Media> {
    crate::codecs::default_media(&crate::codecs::Features::all())
}

/// The payload types of an offer as str0m codec configs: `(pt, rtx pt, codec, clock, channels,
/// fmtp)`. RTX entries are folded into their `apt`; unknown codecs are skipped.
type CodecEntry = (u8, Option<u8>, Codec, u32, Option<u8>, FormatParams);

fn codec_entries(medias: &[colibri2::Media]) -> Vec<CodecEntry> {
    let mut out: Vec<CodecEntry> = Vec::new();
    let mut rtx: Vec<(u8, u8)> = Vec::new();
    for m in medias {
        for p in &m.payload_types {
            if p.name.eq_ignore_ascii_case("rtx") {
                if let Some(apt) = p
                    .parameters
                    .iter()
                    .find(|(k, _)| k == "apt")
                    .and_then(|(_, v)| v.parse().ok())
                {
                    rtx.push((p.id, apt));
                }
                continue;
            }
            let Some(codec) = codec_for_name(&p.name) else {
                continue;
            };
            if p.clockrate == 0 || out.iter().any(|e| e.0 == p.id) {
                continue;
            }
            let line = p
                .parameters
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(";");
            out.push((
                p.id,
                None,
                codec,
                p.clockrate,
                p.channels,
                FormatParams::parse_line(&line),
            ));
        }
    }
    for (id, apt) in rtx {
        if out.iter().any(|e| e.0 == id) {
            continue;
        }
        if let Some(e) = out.iter_mut().find(|e| e.0 == apt && e.2.is_video()) {
            e.1 = Some(id);
        }
    }
    out
}

/// Everything needed to build an endpoint's `Rtc`.
pub(super) struct RtcSetup<'a> {
    pub cert: &'a DtlsCert,
    pub ufrag: &'a str,
    pub pwd: &'a str,
    pub medias: &'a [colibri2::Media],
    pub local_addrs: &'a [SocketAddr],
    pub tcp_local_addrs: &'a [SocketAddr],
    pub rtx_cache_packets: usize,
    /// How long forwarded video packets stay in the RTX cache.
    pub rtx_cache_age: Duration,
    /// Enable str0m's bandwidth estimation from this estimate (bps).
    pub bwe_initial_bps: Option<u64>,
    /// Forwarded media bypasses str0m (see `srtp.rs`): its streams are not declared in it.
    pub fast_egress: bool,
    /// ICE role: the bridge controls towards clients; of two bridges, the one told so.
    pub ice_controlling: bool,
}

/// What the endpoint's `Rtc` was configured with, for validating writes into it.
#[derive(Debug, Default, Clone)]
pub(super) struct RtcCaps {
    /// Main payload types → (codec, has RTX).
    pub pts: FastMap<u8, (Codec, bool)>,
    /// RTX cache of outgoing video streams: (packets, age).
    pub rtx_cache: Option<(usize, Duration)>,
    /// Main payload type → its RTX payload type.
    pub rtx_pts: FastMap<u8, u8>,
    /// Header extension ids the forwarding fast path writes.
    pub ext_ids: ExtIds,
    /// Where the `Rtc`'s DTLS session leaves its SRTP keying material.
    pub keys: KeySlot,
    pub fast_egress: bool,
    /// The RED payload type the endpoint negotiated (audio redundancy, RFC 2198): without
    /// one, RED packets reach it as their primary encoding.
    pub red_pt: Option<u8>,
}

pub(super) fn build_rtc(s: &RtcSetup<'_>, now: Instant) -> (Rtc, RtcCaps) {
    let mut cfg = RtcConfig::new()
        .set_rtp_mode(true)
        .set_dtls_cert(s.cert.clone())
        .set_local_ice_credentials(IceCreds {
            ufrag: s.ufrag.to_string(),
            pass: s.pwd.to_string(),
        })
        .clear_codecs()
        .clear_extension_map()
        .set_send_buffer_video(s.rtx_cache_packets.max(1))
        .set_stats_interval(None)
        .set_sctp_max_message_size(MAX_CHANNEL_MESSAGE as u32)
        .set_crypto_provider(crypto_provider());
    if let Some(bps) = s.bwe_initial_bps {
        cfg = cfg.enable_bwe(Some(Bitrate::bps(bps)));
    }
    let mut caps = RtcCaps {
        rtx_cache: Some((s.rtx_cache_packets.max(1), s.rtx_cache_age)),
        fast_egress: s.fast_egress,
        ..RtcCaps::default()
    };
    for (pt, rtx, codec, clock, channels, fmtp) in codec_entries(s.medias) {
        let Some(freq) = Frequency::new(clock) else {
            continue;
        };
        cfg.codec_config()
            .add_config(pt.into(), rtx.map(Pt::from), codec, freq, channels, fmtp);
        caps.pts.insert(pt, (codec, rtx.is_some()));
        if let Some(r) = rtx {
            caps.rtx_pts.insert(pt, r);
        }
    }
    caps.red_pt = s
        .medias
        .iter()
        .filter(|m| m.kind == colibri2::MediaType::Audio)
        .flat_map(|m| &m.payload_types)
        .find(|p| p.name.eq_ignore_ascii_case("red"))
        .map(|p| p.id);
    let mut twcc = false;
    let mut used_ids = HashSet::new();
    for m in s.medias {
        for e in &m.rtp_hdrexts {
            let Ok(id) = u8::try_from(e.id) else {
                continue;
            };
            if !(1..=14).contains(&id) || !used_ids.insert(id) {
                continue;
            }
            match e.uri.as_str() {
                "urn:ietf:params:rtp-hdrext:ssrc-audio-level" => caps.ext_ids.audio_level = id,
                "urn:3gpp:video-orientation" => caps.ext_ids.video_orientation = id,
                DEPENDENCY_DESCRIPTOR_URI => caps.ext_ids.dependency_descriptor = id,
                "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01" => {
                    caps.ext_ids.transport_cc = id
                }
                _ => {}
            }
            if let Some(ext) = extension_for_uri(&e.uri) {
                twcc |= ext == Extension::TransportSequenceNumber;
                cfg = cfg.set_extension(id, ext);
            }
        }
    }
    let mut rtc = with_key_capture(caps.keys.clone(), || cfg.build(now));
    if s.bwe_initial_bps.is_some() {
        // No padding floor of our own; probe up to what a few HD streams need.
        rtc.bwe()
            .set_bitrate(Bitrate::ZERO, Bitrate::bps(BWE_DESIRED_BPS));
    }
    for addr in s.local_addrs {
        if let Ok(c) = Candidate::host(*addr, "udp") {
            rtc.add_local_candidate(c);
        }
    }
    for addr in s.tcp_local_addrs {
        if let Ok(c) = Candidate::builder()
            .tcp()
            .host(*addr)
            .tcptype(TcpType::Passive)
            .build()
        {
            rtc.add_local_candidate(c);
        }
    }
    let mut api = rtc.direct_api();
    api.set_ice_controlling(s.ice_controlling);
    if twcc && !s.fast_egress {
        api.enable_twcc_feedback();
    }
    api.declare_media(Mid::from(MID_RX_AUDIO), MediaKind::Audio);
    api.declare_media(Mid::from(MID_RX_VIDEO), MediaKind::Video);
    (rtc, caps)
}

/// A remote candidate from colibri2, if usable: UDP, a literal address, generation 0.
pub(super) fn remote_candidate(c: &colibri2::Candidate) -> Option<Candidate> {
    if !c.protocol.eq_ignore_ascii_case("udp") || c.generation != 0 {
        return None;
    }
    let ip: IpAddr = c.ip.parse().ok()?;
    Candidate::host(SocketAddr::new(ip, c.port), "udp").ok()
}

/// `hash` + hex text of a Jingle/colibri2 fingerprint as str0m's.
pub(super) fn remote_fingerprint(f: &colibri2::Fingerprint) -> Option<str0m::config::Fingerprint> {
    let bytes = f
        .value
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    if bytes.is_empty() {
        return None;
    }
    Some(str0m::config::Fingerprint {
        hash_func: f.hash.to_ascii_lowercase(),
        bytes,
    })
}

/// A source id unique in the engine (sources are keyed by it on the receive side).
pub(super) type SourceId = u64;
pub(super) type EpId = u64;

/// One simulcast layer (or the only stream) of a sending source.
#[derive(Debug, Clone)]
pub(super) struct Layer {
    pub ssrc: u32,
    pub rtx: Option<u32>,
    pub last_seen: Option<Instant>,
    /// From the VP8 keyframe header when seen.
    pub height: Option<u32>,
    pub last_pli: Option<Instant>,
    /// Fast path: reception statistics and losses of the layer's stream.
    pub rx: RxStream,
    /// Fast path: its packets forwarded lately, to answer receivers' NACKs.
    pub cache: RtxRing,
    /// Bytes received since the last rate update, and the measured rate (bps) the bandwidth
    /// allocation works with.
    pub bytes: u64,
    pub bps: u64,
    /// The layers inside the stream (SVC), when it has any.
    pub svc: SvcStream,
}

impl Layer {
    pub fn active(&self, now: Instant) -> bool {
        self.last_seen
            .is_some_and(|t| now.saturating_duration_since(t) < LAYER_IDLE)
    }
}

/// A source the endpoint sends (from its colibri2 `<sources>`).
#[derive(Debug, Clone)]
pub(super) struct SenderSource {
    pub id: SourceId,
    pub name: String,
    pub kind: MediaType,
    /// SIM order (lowest first); a single entry without simulcast.
    pub layers: Vec<Layer>,
    /// SSRCs signalled but neither a layer nor a layer's RTX (declared for transport-cc only).
    pub other_ssrcs: Vec<u32>,
    /// First packet of any layer.
    pub first_seen: Option<Instant>,
    /// Silence suppression (audio only).
    pub silence: SilenceFilter,
    /// The signalled `videoType`, upper-case (`CAMERA` when absent), or the one the sender's
    /// bridge channel declared.
    pub video_type: String,
    /// The last `SenderSourceConstraints` maxHeight announced for it (video only).
    pub announced_max_height: Option<u32>,
    /// The layer (SSRC) that carries all of the source's spatial layers as one SVC stream,
    /// while it does (the app signals three simulcast SSRCs and sends on the first).
    pub svc_layer: Option<usize>,
}

impl SenderSource {
    pub fn from_colibri(id: SourceId, ms: &colibri2::MediaSource) -> Option<SenderSource> {
        let fid: HashMap<u32, u32> = ms
            .ssrc_groups
            .iter()
            .filter(|g| g.semantics.eq_ignore_ascii_case("FID") && g.ssrcs.len() == 2)
            .map(|g| (g.ssrcs[0], g.ssrcs[1]))
            .collect();
        let rtx_ssrcs: HashSet<u32> = fid.values().copied().collect();
        let sim = ms
            .ssrc_groups
            .iter()
            .find(|g| g.semantics.eq_ignore_ascii_case("SIM") && !g.ssrcs.is_empty());
        let primaries: Vec<u32> = match sim {
            Some(g) => g.ssrcs.clone(),
            None => ms
                .sources
                .iter()
                .map(|s| s.ssrc)
                .filter(|s| !rtx_ssrcs.contains(s))
                .take(1)
                .collect(),
        };
        if primaries.is_empty() || primaries.contains(&0) {
            return None;
        }
        let layers: Vec<Layer> = primaries
            .iter()
            .map(|&ssrc| Layer {
                ssrc,
                rtx: fid.get(&ssrc).copied().filter(|r| *r != 0),
                last_seen: None,
                height: None,
                last_pli: None,
                rx: RxStream::default(),
                cache: RtxRing::default(),
                bytes: 0,
                bps: 0,
                svc: SvcStream::default(),
            })
            .collect();
        let used: HashSet<u32> = layers
            .iter()
            .flat_map(|l| std::iter::once(l.ssrc).chain(l.rtx))
            .collect();
        let other_ssrcs = ms
            .sources
            .iter()
            .map(|s| s.ssrc)
            .filter(|s| *s != 0 && !used.contains(s))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        Some(SenderSource {
            id,
            name: ms.id.clone(),
            kind: ms.kind,
            layers,
            other_ssrcs,
            first_seen: None,
            silence: SilenceFilter::default(),
            video_type: ms
                .sources
                .iter()
                .find_map(|s| s.video_type.as_deref())
                .unwrap_or("camera")
                .to_ascii_uppercase(),
            announced_max_height: None,
            svc_layer: None,
        })
    }

    /// Whether layer `i` can be selected: sending now, or not heard from yet while the source
    /// is just starting (layers do not start in order; waiting briefly avoids starting on the
    /// top layer and switching down at once).
    pub fn layer_selectable(&self, i: usize, now: Instant) -> bool {
        let l = &self.layers[i];
        l.active(now)
            || l.last_seen.is_none()
                && self
                    .first_seen
                    .is_some_and(|t| now.saturating_duration_since(t) < LAYER_STARTUP)
    }

    pub fn layer_height(&self, i: usize) -> u32 {
        self.layers[i]
            .height
            .unwrap_or_else(|| default_height(i, self.layers.len()))
    }

    /// The spatial layers of the source's SVC stream, while it sends one with two or more.
    pub fn svc(&self) -> Option<&SvcStream> {
        let l = &self.layers.get(self.svc_layer?)?.svc;
        l.layout
            .as_ref()
            .filter(|x| x.spatial_layers > 1)
            .map(|_| l)
    }

    /// What receivers choose from (docs/bridge.md B.8, B.13): the simulcast layers, or the
    /// spatial layers of one SVC stream.
    /// The layers as layer selection sees them now (the first `.1` of `.0`).
    pub fn layer_views(
        &self,
        now: Instant,
    ) -> ([super::forward::LayerView; super::MAX_LAYERS], usize) {
        let mut views = [super::forward::LayerView {
            height: 0,
            active: false,
        }; super::MAX_LAYERS];
        let n = self.view_count().min(super::MAX_LAYERS);
        for (i, v) in views.iter_mut().enumerate().take(n) {
            *v = super::forward::LayerView {
                height: self.view_height(i),
                active: self.view_selectable(i, now),
            };
        }
        (views, n)
    }

    pub fn view_count(&self) -> usize {
        match self.svc().and_then(|s| s.layout.as_ref()) {
            Some(l) => l.views(),
            None => self.layers.len(),
        }
    }

    pub fn view_height(&self, i: usize) -> u32 {
        match self.svc().and_then(|s| s.layout.as_ref()) {
            Some(l) => l
                .heights
                .get(i)
                .copied()
                .flatten()
                .unwrap_or_else(|| default_height(l.view_spatial(i), l.spatial_layers)),
            None => self.layer_height(i),
        }
    }

    pub fn view_selectable(&self, i: usize, now: Instant) -> bool {
        match self.svc() {
            Some(s) => s
                .views
                .get(i)
                .and_then(|v| v.last_seen)
                .is_some_and(|t| now.saturating_duration_since(t) < LAYER_IDLE),
            None => self.layer_selectable(i, now),
        }
    }

    /// Whether the bandwidth allocation may choose view `i`: as JVB for cameras, below the
    /// on-stage preferred height at any frame rate, above it only at the full frame rate.
    pub fn view_allocatable(&self, i: usize) -> bool {
        match self.svc().and_then(|s| s.layout.as_ref()) {
            Some(l) => {
                l.full_rate(i)
                    || l.view_spatial(i) == 0
                    || self.view_height(i) < super::forward::ONSTAGE_PREFERRED_HEIGHT
            }
            None => true,
        }
    }

    pub fn view_bps(&self, i: usize) -> u64 {
        match self.svc() {
            Some(s) => s.views.get(i).map_or(0, |v| v.bps),
            None => self.layers[i].bps,
        }
    }
}

/// One source of another endpoint as seen by this (receiving) endpoint.
#[derive(Debug)]
pub(super) struct Forward {
    pub sender: EpId,
    /// The sender's endpoint id (`owner` in the source maps).
    pub owner: String,
    pub name: String,
    pub kind: MediaType,
    /// Upper-case video type for `VideoSourcesMap` (`CAMERA` unless signalled).
    pub video_type: String,
    /// The outgoing stream it rides on: fixed (the sender's SSRC) without SSRC rewriting; bound
    /// on demand, and possibly taken away, with it.
    pub slot: Option<SlotId>,
    /// Effective maxHeight after lastN (0: not forwarded).
    pub max_height: u32,
    /// The height of the layer the bandwidth allocation gave it (0: suspended; `u32::MAX`: no
    /// estimate to follow).
    pub bwe_height: u32,
    /// The highest view (layer) the allocation gave it: below `bwe_height`'s best when an SVC
    /// stream's lower frame rate was all that fit (`usize::MAX`: no limit).
    pub bwe_view: usize,
}

pub(super) type SlotId = u64;

/// One outgoing stream (one str0m mid + SSRC, + RTX) towards this endpoint.
#[derive(Debug)]
pub(super) struct Slot {
    pub kind: MediaType,
    pub mid: Mid,
    pub ssrc: u32,
    /// The RTX SSRC, when the receiver can take RTX.
    pub rtx: Option<u32>,
    /// Rewriting state: continuous across layer switches and, with SSRC rewriting, across
    /// changes of the source riding on the slot.
    pub proj: Projection,
    /// The decode target of an SVC source riding on it.
    pub svc: SvcFilter,
    pub source: Option<SourceId>,
    pub last_used: Option<Instant>,
    /// Fast path: which sender stream, with which offsets, produced the sequence numbers from
    /// `first_out` on (newest last; a few switches back), to find NACKed packets.
    pub history: VecDeque<SlotMap>,
    /// The projection epoch `history` last recorded.
    pub map_epoch: Option<u32>,
    /// Fast path: sequence numbers resent lately (to resend each at most once per interval).
    pub recent: VecDeque<(u64, Instant)>,
    /// Fast path: the next RTX sequence number.
    pub rtx_seq: u64,
    /// Fast path: for sender reports.
    pub sent: SendStats,
    /// Fast path: the payload type of the last packet forwarded on it (probing pads on its
    /// RTX).
    pub pt: Option<u8>,
}

/// Where a forwarded stream's packets came from, from one sequence number on.
#[derive(Debug, Clone, Copy)]
pub(super) struct SlotMap {
    pub first_out: u64,
    pub sender: EpId,
    pub source: SourceId,
    pub off: Offsets,
    /// SVC: the spatial layer whose frame ends carried the marker.
    pub mark_spatial: Option<u8>,
}

/// One endpoint: who it is, what was negotiated, and its three parts.
/// What an endpoint of the engine is (docs/bridge.md B.15).
#[derive(Debug, Clone)]
pub(super) enum Link {
    /// A participant's client on this bridge.
    Client,
    /// A Colibri2 relay: the ICE/DTLS link to another bridge of the conference. It gets every
    /// local sender's packets as they came (all layers, their own SSRCs and numbering); what
    /// arrives on it belongs to the relayed endpoints, found by SSRC.
    Relay { owners: FastMap<u32, EpId> },
    /// A participant of another bridge: its sources, no transport of its own; its media
    /// arrives through `relay`.
    Relayed { relay: EpId },
}

pub(super) struct Endpoint {
    /// Seeded by the engine: this endpoint's SSRCs and sequence number starts.
    pub rng: SmallRng,
    pub link: Link,
    pub conference: String,
    pub id: String,
    pub caps: RtcCaps,
    pub dirty: bool,
    pub medias: Option<Vec<colibri2::Media>>,
    pub created: Instant,
    /// ICE, DTLS and SRTP: how datagrams reach and leave it.
    pub transport: Transport,
    /// What it sends the bridge: its sources and their streams (per sender stream).
    pub rx: RxSide,
    /// What the bridge sends it: forwarded sources, slots, bandwidth (per receiver stream).
    pub tx: TxSide,
}

/// An endpoint's connection: str0m's `Rtc` (ICE, DTLS), the fast path's SRTP session, and
/// whether media flows.
pub(super) struct Transport {
    pub ufrag: String,
    pub pwd: String,
    /// Boxed: str0m's state is most of an endpoint's size, and the fast path, which walks
    /// every receiver of a packet, never touches it; inline it spread the fields the fast
    /// path does touch over ~12 KB per endpoint.
    pub rtc: Box<Rtc>,
    /// The last time given to `rtc`.
    pub rtc_now: Instant,
    pub next_timeout: Instant,
    pub connected: bool,
    pub failed: bool,
    pub remote: Option<colibri2::IceUdpTransport>,
    pub dtls_started: bool,
    /// Remote addresses bound to this endpoint in the demultiplexer.
    pub addrs: Vec<SocketAddr>,
    /// The last datagram from the endpoint that reached its `Rtc`.
    pub last_rx: Option<Instant>,
    /// Last announced connectivity (`Connected`/`Disconnected`), `None` before the first.
    pub status: Option<bool>,
    /// ICE and DTLS came up at least once.
    pub connected_once: bool,
    /// The fast path's SRTP session, once DTLS is up.
    pub srtp: Option<Srtp>,
    /// ICE role (docs/bridge.md B.15 for relays).
    pub ice_controlling: bool,
    /// Where str0m last sent DTLS or RTCP: the selected pair.
    pub send_path: Option<Path>,
    /// The focus asked for an SCTP association (the offer has a `data` content): the bridge
    /// channel may run over a data channel (docs/bridge.md A.1).
    pub sctp: bool,
    /// The data channel the client opened for the bridge channel.
    pub channel: Option<ChannelId>,
}

/// The streams an endpoint sends the bridge: its declared sources, SSRC lookups, and the
/// records behind the feedback the bridge sends about them.
pub(super) struct RxSide {
    pub sources: Vec<SenderSource>,
    /// Incoming main SSRC → (source index, layer index).
    pub ssrc_index: FastMap<u32, (usize, usize)>,
    /// Incoming RTX SSRC → (source index, layer index) of the stream it repairs.
    pub rtx_index: FastMap<u32, (usize, usize)>,
    /// Other signalled SSRCs (counted for transport-cc, not forwarded).
    pub other_ssrcs: HashSet<u32>,
    /// Fast path: transport-wide sequence numbers to report to the endpoint.
    pub twcc: TwccRecorder,
    /// SSRCs declared as incoming streams on `rtc`.
    pub declared_rx: HashSet<u32>,
    /// Source name → video type (upper-case) from the endpoint's bridge channel.
    pub video_types: HashMap<String, String>,
    /// The focus muted this endpoint's audio / video (Colibri2 `force-mute`): dropped on
    /// arrival, not forwarded and not heard by the dominant speaker identification.
    pub force_mute: (bool, bool),
}

/// What the bridge sends an endpoint: the sources forwarded to it and the slots they ride on,
/// its constraints, and the bandwidth estimate and budget towards it.
pub(super) struct TxSide {
    /// Fast path: transport-wide numbering of what the bridge sends the endpoint, and the
    /// bandwidth estimate from its feedback.
    pub sendside: super::bwe::SendSide,
    /// Fast path: the sender SSRC of the bridge's RTCP to the endpoint.
    pub fb_ssrc: u32,
    pub constraints: ReceiverConstraints,
    pub forwards: FastMap<SourceId, Forward>,
    pub slots: FastMap<SlotId, Slot>,
    pub by_mid: HashMap<Mid, SlotId>,
    pub next_mid: u64,
    /// The focus created the endpoint with the `ssrc-rewriting` capability: forwarded sources
    /// ride on a bounded pool of bridge SSRCs announced in source maps.
    pub ssrc_rewriting: bool,
    pub announced: Vec<String>,
    /// The latest bandwidth estimate towards the endpoint (bps), with BWE enabled.
    pub bwe_bps: Option<u64>,
    /// The estimate the last bandwidth allocation used (`None`: it followed none).
    pub alloc_budget: Option<u64>,
    /// Padding to send (bps) so the estimate can grow to what the allocation would like.
    pub probe_bps: u64,
    /// When padding was last sent.
    pub probe_at: Option<Instant>,
    /// Retransmissions may take part of the estimate: bytes allowed now, and when that was
    /// computed.
    pub rtx_tokens: f64,
    pub rtx_at: Option<Instant>,
}

impl Transport {
    /// The fast path's SRTP session and the selected pair, once connected.
    pub fn fast_path(&mut self) -> Option<(&mut Srtp, Path)> {
        if !self.connected {
            return None;
        }
        Some((self.srtp.as_mut()?, self.send_path?))
    }

    /// ICE and DTLS are up and did not fail since.
    pub fn is_up(&self) -> bool {
        self.connected && !self.failed
    }
}

impl RxSide {
    /// The (source, layer) an incoming SSRC belongs to, and whether it is that layer's RTX.
    pub fn stream_of(&self, ssrc: u32) -> Option<((usize, usize), bool)> {
        if let Some(&sl) = self.ssrc_index.get(&ssrc) {
            return Some((sl, false));
        }
        self.rtx_index.get(&ssrc).map(|&sl| (sl, true))
    }

    /// Whether the focus muted this kind of media (Colibri2 `force-mute`).
    pub fn muted(&self, kind: MediaType) -> bool {
        match kind {
            MediaType::Audio => self.force_mute.0,
            MediaType::Video => self.force_mute.1,
        }
    }

    /// Colibri2 `force-mute`: `Some` changes that kind, `None` leaves it.
    pub fn set_muted(&mut self, audio: Option<bool>, video: Option<bool>) {
        if let Some(a) = audio {
            self.force_mute.0 = a;
        }
        if let Some(v) = video {
            self.force_mute.1 = v;
        }
    }
}

impl TxSide {
    /// The bandwidth estimate towards the endpoint: str0m's (with its estimator) or the
    /// bridge's own from transport-cc feedback.
    pub fn estimate(&self) -> Option<u64> {
        self.bwe_bps.or(self.sendside.estimate())
    }
}

impl Endpoint {
    /// Whether `ssrc` is in use towards or from this endpoint.
    pub fn ssrc_taken(&self, ssrc: u32) -> bool {
        self.rx.declared_rx.contains(&ssrc)
            || self
                .tx
                .slots
                .values()
                .any(|s| s.ssrc == ssrc || s.rtx == Some(ssrc))
    }

    /// Whether this endpoint can take RTX for video.
    pub fn video_rtx(&self) -> bool {
        self.caps.pts.values().any(|(c, rtx)| c.is_video() && *rtx)
    }

    /// A new outgoing stream on its own mid.
    pub fn new_slot(&mut self, kind: MediaType, ssrc: u32, rtx: Option<u32>) -> SlotId {
        let id = self.tx.next_mid;
        self.tx.next_mid += 1;
        let mid = Mid::from(format!("f{id}").as_str());
        let mk = match kind {
            MediaType::Audio => MediaKind::Audio,
            MediaType::Video => MediaKind::Video,
        };
        if !self.caps.fast_egress {
            let mut api = self.transport.rtc.direct_api();
            api.declare_media(mid, mk);
            api.declare_stream_tx(ssrc.into(), rtx.map(Ssrc::from), mid, None);
            // The cache answers NACKs; a second of packets covers any sane RTT and keeps
            // per-receiver memory small (str0m's default is 1024 packets / 3 s).
            if let (Some((n, age)), true) = (self.caps.rtx_cache, rtx.is_some())
                && let Some(tx) = api.stream_tx(&Ssrc::from(ssrc))
            {
                tx.set_rtx_cache(n, age, Some(0.15));
            }
        }
        self.tx.by_mid.insert(mid, id);
        self.tx.slots.insert(
            id,
            Slot {
                kind,
                mid,
                ssrc,
                rtx,
                proj: Projection::default(),
                svc: SvcFilter::default(),
                source: None,
                last_used: None,
                history: VecDeque::new(),
                map_epoch: None,
                recent: VecDeque::new(),
                rtx_seq: u64::from(self.rng.random::<u16>()),
                sent: SendStats::default(),
                pt: None,
            },
        );
        id
    }

    /// Drop a slot and its stream (without SSRC rewriting, when its source goes).
    pub fn remove_slot(&mut self, id: SlotId) {
        if let Some(s) = self.tx.slots.remove(&id) {
            self.tx.by_mid.remove(&s.mid);
            if !self.caps.fast_egress {
                self.transport.rtc.direct_api().remove_media(s.mid);
            }
        }
    }

    fn random_ssrc(&mut self) -> u32 {
        loop {
            let s = self.rng.random_range(1..=u32::MAX);
            if !self.ssrc_taken(s) {
                return s;
            }
        }
    }

    /// SSRC rewriting: give `source` a slot of its kind — a new one while the pool has fewer
    /// than `limit`, else the least recently used one whose source is not in `keep` (that
    /// source loses it; the slot's stream continues, sequence numbers and timestamps, with the
    /// new source).
    pub fn bind_slot(
        &mut self,
        source: SourceId,
        limit: usize,
        now: Instant,
        keep: &[SourceId],
    ) -> Option<SlotId> {
        let kind = self.tx.forwards.get(&source)?.kind;
        let same_kind = || self.tx.slots.iter().filter(|(_, s)| s.kind == kind);
        let id = if same_kind().count() < limit {
            let ssrc = self.random_ssrc();
            let rtx = if kind == MediaType::Video && self.video_rtx() {
                // Reserve the primary first so the RTX differs.
                let mut r = self.random_ssrc();
                while r == ssrc {
                    r = self.random_ssrc();
                }
                Some(r)
            } else {
                None
            };
            self.new_slot(kind, ssrc, rtx)
        } else {
            same_kind()
                .filter(|(_, s)| !s.source.is_some_and(|x| keep.contains(&x)))
                .min_by_key(|(id, s)| (s.last_used, **id))
                .map(|(id, _)| *id)?
        };
        let slot = self.tx.slots.get_mut(&id)?;
        if let Some(old) = slot.source.replace(source)
            && let Some(f) = self.tx.forwards.get_mut(&old)
        {
            f.slot = None;
        }
        slot.proj.rebind();
        slot.svc.reset();
        slot.last_used = Some(now);
        if let Some(f) = self.tx.forwards.get_mut(&source) {
            f.slot = Some(id);
        }
        Some(id)
    }

    /// SSRC rewriting, as JVB activates its SSRC cache: `active` (video sources in priority
    /// order, at most `limit`) all get a slot, those that have one keep it, and the others
    /// take new or least recently used ones. Returns the sources that got a slot (the receiver
    /// needs their mappings).
    pub fn activate_slots(
        &mut self,
        active: &[SourceId],
        limit: usize,
        now: Instant,
    ) -> Vec<SourceId> {
        let mut bound = Vec::new();
        for &sid in active {
            match self.tx.forwards.get(&sid).and_then(|f| f.slot) {
                Some(slot) => {
                    if let Some(s) = self.tx.slots.get_mut(&slot) {
                        s.last_used = Some(now);
                    }
                }
                None => {
                    if self.bind_slot(sid, limit, now, active).is_some() {
                        bound.push(sid);
                    }
                }
            }
        }
        bound
    }

    /// The source map event for `changed` sources (and the full map of their kind).
    pub fn sources_map_event(
        &self,
        kind: MediaType,
        changed: &[SourceId],
    ) -> super::events::EngineEvent {
        let names: Vec<&str> = changed
            .iter()
            .filter_map(|s| self.tx.forwards.get(s).map(|f| f.name.as_str()))
            .collect();
        let sources = self.mapped_sources(kind);
        let changed = sources
            .iter()
            .filter(|m| names.contains(&m.source.as_str()))
            .cloned()
            .collect();
        super::events::EngineEvent::SourcesMap {
            conference: self.conference.clone(),
            endpoint: self.id.clone(),
            kind,
            sources,
            changed,
        }
    }

    /// The current source map of one kind (SSRC rewriting), in slot order.
    pub fn mapped_sources(&self, kind: MediaType) -> Vec<MappedSource> {
        let mut slots: Vec<(&SlotId, &Slot)> = self
            .tx
            .slots
            .iter()
            .filter(|(_, s)| s.kind == kind)
            .collect();
        slots.sort_by_key(|(id, _)| **id);
        slots
            .into_iter()
            .filter_map(|(_, s)| {
                let f = self.tx.forwards.get(&s.source?)?;
                Some(MappedSource {
                    source: f.name.clone(),
                    owner: f.owner.clone(),
                    ssrc: s.ssrc,
                    rtx: s.rtx,
                    video_type: f.video_type.clone(),
                })
            })
            .collect()
    }

    /// Rebuild the index from incoming SSRC to (source, layer).
    pub fn reindex(&mut self) {
        self.rx.ssrc_index.clear();
        self.rx.rtx_index.clear();
        self.rx.other_ssrcs.clear();
        for (si, s) in self.rx.sources.iter().enumerate() {
            for (li, l) in s.layers.iter().enumerate() {
                self.rx.ssrc_index.insert(l.ssrc, (si, li));
                if let Some(r) = l.rtx {
                    self.rx.rtx_index.insert(r, (si, li));
                }
            }
            self.rx.other_ssrcs.extend(s.other_ssrcs.iter().copied());
        }
        let (main, rtx, other) = (
            &self.rx.ssrc_index,
            &self.rx.rtx_index,
            &self.rx.other_ssrcs,
        );
        if let Some(srtp) = self.transport.srtp.as_mut() {
            srtp.retain_rx(|x| main.contains_key(&x) || rtx.contains_key(&x) || other.contains(&x));
        }
    }

    /// Declare every SSRC of every source as an incoming stream (and drop vanished ones):
    /// str0m drops unknown SSRCs before transport-cc sees them (docs/bridge.md Part C).
    pub fn declare_rx(&mut self) {
        let mut want: HashMap<u32, (Option<u32>, MediaType)> = HashMap::new();
        for s in &self.rx.sources {
            for l in &s.layers {
                want.insert(l.ssrc, (l.rtx, s.kind));
            }
            for o in &s.other_ssrcs {
                want.entry(*o).or_insert((None, s.kind));
            }
        }
        let tx: HashSet<u32> = self
            .tx
            .slots
            .values()
            .flat_map(|f| std::iter::once(f.ssrc).chain(f.rtx))
            .collect();
        // With the fast path str0m never sees the endpoint's RTP: it must not report on it.
        let fast = self.caps.fast_egress;
        let mut api = self.transport.rtc.direct_api();
        for gone in self.rx.declared_rx.iter().filter(|s| !want.contains_key(s)) {
            if !fast {
                api.remove_stream_rx(Ssrc::from(*gone));
            }
        }
        self.rx.declared_rx.clear();
        for (ssrc, (rtx, kind)) in want {
            if tx.contains(&ssrc) {
                continue;
            }
            if fast {
                self.rx.declared_rx.insert(ssrc);
                continue;
            }
            let mid = match kind {
                MediaType::Audio => MID_RX_AUDIO,
                MediaType::Video => MID_RX_VIDEO,
            };
            api.expect_stream_rx(ssrc.into(), rtx.map(Ssrc::from), Mid::from(mid), None);
            self.rx.declared_rx.insert(ssrc);
        }
    }

    /// Give the `Rtc` the remote ICE credentials, candidates and fingerprint, and start DTLS
    /// once the fingerprint is known.
    pub fn apply_remote(&mut self) -> Result<(), str0m::RtcError> {
        let Some(t) = self.transport.remote.clone() else {
            return Ok(());
        };
        if let (Some(ufrag), Some(pwd)) = (&t.ufrag, &t.pwd) {
            self.transport
                .rtc
                .direct_api()
                .set_remote_ice_credentials(IceCreds {
                    ufrag: ufrag.clone(),
                    pass: pwd.clone(),
                });
        }
        for c in t.candidates.iter().filter_map(remote_candidate) {
            self.transport.rtc.add_remote_candidate(c);
        }
        if self.transport.dtls_started {
            return Ok(());
        }
        let Some(f) = t.fingerprints.iter().find_map(|f| {
            let fp = remote_fingerprint(f)?;
            Some((fp, f.setup))
        }) else {
            return Ok(());
        };
        let (fp, setup) = f;
        // The client answers actpass with active: the bridge is the DTLS server.
        let active = setup == Some(colibri2::DtlsSetup::Passive);
        let mut api = self.transport.rtc.direct_api();
        api.set_remote_fingerprint(fp);
        api.start_dtls(active)?;
        if self.transport.sctp {
            // The client connects the association and opens the channel; the bridge listens.
            api.start_sctp(false);
        }
        self.transport.dtls_started = true;
        Ok(())
    }
}
