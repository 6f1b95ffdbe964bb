//! meetd-colibri: the videobridge (JVB's job). Not built yet; see issue 5.
#![forbid(unsafe_code)]
