//! meetd-colibri: the videobridge (JVB's job). Not built yet; see issue 5.
#![forbid(unsafe_code)]

pub mod channel;
pub mod colibri2;
pub mod service;

pub use colibri2::{
    Candidate, CandidateType, Colibri2Error, ConferenceModified, ConferenceModify, DtlsSetup,
    Endpoint, Fingerprint, ForceMute, IceUdpTransport, Media, MediaSource, MediaType, PayloadType,
    Reason, Relay, RtcpFb, RtpHdrext, Sctp, SctpMap, SctpRole, Source, Sources, SsrcGroup,
    Transport, WebSocket,
};
