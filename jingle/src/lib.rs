//! meetd-jingle: the conference focus (Jicofo's job). Not built yet; see issue 4.
#![forbid(unsafe_code)]
