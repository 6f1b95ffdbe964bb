//! meetd-xmpp: the XMPP server that the Jitsi clients log in to.
//!
//! Layers, bottom up: [`xml`] (framing with limits), [`sasl`] and [`bosh`] (sans-IO
//! protocol logic), [`session`] (the c2s stream state machine, sans-IO, plus the thin
//! task that drives it over a [`link::Link`]), [`router`] (delivery to sessions and to
//! services registered for a domain), [`server`] (what the host domains answer
//! themselves: disco, ping, external services) and the transports ([`ws`], [`tcp`],
//! [`http_bind`], [`component`]).
#![forbid(unsafe_code)]

pub mod bosh;
pub mod caps;
pub mod component;
pub mod config;
pub mod handoff;
pub mod http_bind;
pub mod link;
pub mod muc;
pub mod ns;
pub mod router;
pub mod sasl;
pub mod server;
pub mod session;
pub mod stanza;
pub mod tcp;
pub mod token;
pub mod ws;
pub mod xml;

pub use config::{AuthMode, ExternalService, Limits, XmppConfig};
pub use router::{Router, ServiceHandle};
pub use server::{AccountStore, Server};
pub use xml::{XmlError, XmlLimits};

pub use jid;
pub use minidom::Element;
