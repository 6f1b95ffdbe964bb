//! A simulated Jitsi Meet client's media setup, shared by the engine's tests and the
//! `bridge_load` benchmark: the str0m configuration lib-jitsi-meet's offer amounts to (Opus
//! 111, VP8 100 with RTX 96, audio level, abs-send-time and transport-cc on ids 1/3/5) and
//! its sending streams (one microphone, a three-layer simulcast camera with RTX).

use std::time::Instant;

use crate::colibri2::{MediaSource, MediaType, Source, Sources, SsrcGroup};

use str0m::format::{Codec, FormatParams};
use str0m::media::{Frequency, MediaKind, Mid, Rid};
use str0m::rtp::Extension;
use str0m::{Rtc, RtcConfig};

/// The mid of the client's audio and video m-lines.
pub const MID_A: &str = "a";
pub const MID_V: &str = "v";

/// The client's str0m configuration (RTP mode: the caller writes packets itself).
pub fn client_config() -> RtcConfig {
    let mut cfg = Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .clear_extension_map()
        .set_extension(1, Extension::AudioLevel)
        .set_extension(3, Extension::AbsoluteSendTime)
        .set_extension(5, Extension::TransportSequenceNumber);
    cfg.codec_config().add_config(
        111.into(),
        None,
        Codec::Opus,
        Frequency::FORTY_EIGHT_KHZ,
        Some(2),
        FormatParams::default(),
    );
    cfg.codec_config().add_config(
        100.into(),
        Some(96.into()),
        Codec::Vp8,
        Frequency::NINETY_KHZ,
        None,
        FormatParams::default(),
    );
    cfg
}

/// Declare the client's sending streams on `rtc` (ICE controlled, transport-cc feedback on):
/// `audio` on mid "a", and simulcast layers `l0`, `l1`, … as (SSRC, RTX SSRC) on mid "v".
pub fn declare_client_streams(rtc: &mut Rtc, audio: u32, layers: &[(u32, u32)]) {
    let mut api = rtc.direct_api();
    api.set_ice_controlling(false);
    api.enable_twcc_feedback();
    api.declare_media(Mid::from(MID_A), MediaKind::Audio);
    api.declare_media(Mid::from(MID_V), MediaKind::Video);
    api.declare_stream_tx(audio.into(), None, Mid::from(MID_A), None);
    for (i, (s, r)) in layers.iter().enumerate() {
        let rid = Rid::from(format!("l{i}").as_str());
        api.declare_stream_tx((*s).into(), Some((*r).into()), Mid::from(MID_V), Some(rid));
    }
}

/// A client `Rtc` built at `now` with [`client_config`] changed by `tune`.
pub fn client_rtc(now: Instant, tune: impl FnOnce(RtcConfig) -> RtcConfig) -> Rtc {
    tune(client_config()).build(now)
}

/// The sources the client of endpoint `name` declares in its session-accept: the microphone
/// `<name>-a0` and the camera `<name>-v0` with its SIM group and one FID group per layer.
pub fn client_sources(name: &str, audio: u32, layers: &[(u32, u32)]) -> Sources {
    let mut video = Vec::new();
    let mut groups = vec![SsrcGroup {
        semantics: "SIM".into(),
        ssrcs: layers.iter().map(|l| l.0).collect(),
    }];
    for &(s, r) in layers {
        video.push(Source::new(s));
        video.push(Source::new(r));
        groups.push(SsrcGroup {
            semantics: "FID".into(),
            ssrcs: vec![s, r],
        });
    }
    Sources {
        media_sources: vec![
            MediaSource {
                kind: MediaType::Audio,
                id: format!("{name}-a0"),
                synthetic: None,
                sources: vec![Source::new(audio)],
                ssrc_groups: Vec::new(),
            },
            MediaSource {
                kind: MediaType::Video,
                id: format!("{name}-v0"),
                synthetic: None,
                sources: video,
                ssrc_groups: groups,
            },
        ],
    }
}
