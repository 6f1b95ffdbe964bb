//! meetd-colibri: the videobridge (JVB's job): the Colibri2 service, the bridge channel,
//! and the media engine on one UDP port (and ICE-TCP for clients without UDP).
#![forbid(unsafe_code)]

pub mod channel;
pub mod codecs;
pub mod colibri2;
pub mod driver;
pub mod media;
pub mod rtp;
pub mod service;
pub mod socket;
pub mod tcp;
pub mod testkit;

pub use colibri2::{
    Candidate, CandidateType, Colibri2Error, ConferenceModified, ConferenceModify, DtlsSetup,
    Endpoint, Fingerprint, ForceMute, IceUdpTransport, Media, MediaSource, MediaType, PayloadType,
    Reason, Relay, RtcpFb, RtpHdrext, Sctp, SctpMap, SctpRole, Source, Sources, SsrcGroup,
    Transport, WebSocket,
};
