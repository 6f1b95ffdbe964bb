//! meetd-jingle: the conference focus (Jicofo's job): conference requests, one conference
//! actor per room, Jingle sessions with participants, the source map, Colibri2 requests to
//! a bridge.
#![forbid(unsafe_code)]

pub mod conference;
pub mod focus;
pub mod jibri;
pub mod jigasi;
pub mod live_stream;
pub mod offer;
pub mod sources;
