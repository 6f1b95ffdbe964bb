//! The XMPP side of meetd's configuration. `src/config.rs` fills this from meetd.toml.

use std::time::Duration;

/// How users log in on the main domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// SASL ANONYMOUS: everyone gets a random username (stock Jitsi default).
    Anonymous,
    /// Internal accounts (SCRAM-SHA-1, SCRAM-SHA-256, PLAIN over TLS).
    Internal,
    /// SASL ANONYMOUS with a JSON Web Token in the `token` query parameter (`token.rs`).
    Token,
}

/// A STUN/TURN server announced through XEP-0215.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalService {
    /// `stun`, `turn` or `turns`.
    pub kind: String,
    pub host: String,
    pub port: u16,
    /// `udp` or `tcp`; None for STUN.
    pub transport: Option<String>,
}

/// Limits against misbehaving peers; each one has a key in meetd.toml.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_stanza_bytes: usize,
    pub max_xml_depth: usize,
    pub max_sessions_per_ip: usize,
    pub max_sessions: usize,
    pub stanza_rate_per_second: u32,
    pub stanza_burst: u32,
    pub bosh_max_body_bytes: usize,
    /// Stanzas waiting for one session before further ones are refused.
    pub session_queue: usize,
    /// Directed-presence targets remembered per session (for unavailable on disconnect).
    pub max_directed_presences: usize,
    /// A connection must have authenticated and bound a resource within this time.
    pub bind_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 256 * 1024,
            max_xml_depth: 32,
            max_sessions_per_ip: 200,
            max_sessions: 20_000,
            stanza_rate_per_second: 200,
            stanza_burst: 400,
            bosh_max_body_bytes: 512 * 1024,
            session_queue: 1024,
            max_directed_presences: 256,
            bind_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct XmppConfig {
    /// Main login domain (`hosts.domain`), e.g. `meet.jitsi`.
    pub domain: String,
    pub main_auth: AuthMode,
    /// Anonymous guests' domain (`hosts.anonymousdomain`) when the main domain needs accounts.
    pub guest_domain: Option<String>,
    /// Token sign-in: users without a token get in as guests (stock `allow_empty_token`).
    pub allow_empty_token: bool,
    /// Service accounts (focus, jvb, jibri, jigasi).
    pub auth_domain: String,
    pub muc_domain: String,
    pub internal_muc_domain: String,
    pub focus_domain: String,
    /// Domain Jibri/transcribers log in on (`hiddenDomain`).
    pub recorder_domain: String,
    /// Visitors' login domain (`v1.meet.jitsi`, the app's vnode domain), when visitors are on
    /// (docs/visitors.md): anonymous, and everyone on it is a visitor.
    pub visitor_domain: Option<String>,
    pub limits: Limits,
    /// How long a session with stream management waits for a resumption.
    pub sm_resume_timeout: Duration,
    /// Unacknowledged outbound stanzas kept per session for resumption.
    pub sm_max_unacked: usize,
    /// Request an ack (`<r/>`) every this many unacknowledged stanzas.
    pub sm_request_every: usize,
    /// Inactivity timeout of a BOSH session.
    pub bosh_inactivity: Duration,
    pub bosh_max_wait: Duration,
    pub external_services: Vec<ExternalService>,
    /// coturn `static-auth-secret`; TURN entries get time-limited credentials when set.
    pub turn_secret: Option<String>,
    pub turn_ttl: Duration,
    /// Shared secrets of XEP-0114 components, by component domain.
    pub components: Vec<(String, String)>,
    /// Treat plain-HTTP WebSocket/BOSH as secure (TLS terminated by a proxy in front).
    pub consider_http_secure: bool,
}

impl XmppConfig {
    /// The docker-jitsi-meet layout for a domain: `muc.`, `auth.`, `internal-muc.`,
    /// `focus.`, `hidden.` (and `guest.` when guests are enabled).
    pub fn for_domain(domain: &str) -> XmppConfig {
        XmppConfig {
            domain: domain.to_string(),
            main_auth: AuthMode::Anonymous,
            guest_domain: None,
            allow_empty_token: false,
            auth_domain: format!("auth.{domain}"),
            muc_domain: format!("muc.{domain}"),
            internal_muc_domain: format!("internal-muc.{domain}"),
            focus_domain: format!("focus.{domain}"),
            recorder_domain: format!("hidden.{domain}"),
            visitor_domain: None,
            limits: Limits::default(),
            sm_resume_timeout: Duration::from_secs(60),
            sm_max_unacked: 500,
            sm_request_every: 5,
            bosh_inactivity: Duration::from_secs(60),
            bosh_max_wait: Duration::from_secs(60),
            external_services: Vec::new(),
            turn_secret: None,
            turn_ttl: Duration::from_secs(86400),
            components: Vec::new(),
            consider_http_secure: false,
        }
    }

    /// Domains users log in on, with the SASL mechanisms each offers.
    pub fn login_domain(&self, name: &str) -> Option<AuthMode> {
        if name == self.domain {
            Some(self.main_auth)
        } else if Some(name) == self.guest_domain.as_deref()
            || Some(name) == self.visitor_domain.as_deref()
        {
            Some(AuthMode::Anonymous)
        } else if name == self.auth_domain || name == self.recorder_domain {
            Some(AuthMode::Internal)
        } else {
            None
        }
    }

    pub fn xml_limits(&self) -> crate::xml::XmlLimits {
        crate::xml::XmlLimits {
            max_stanza_bytes: self.limits.max_stanza_bytes,
            max_depth: self.limits.max_xml_depth,
        }
    }
}
