//! Shared server state and what the host domains answer themselves.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use minidom::Element;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::config::XmppConfig;
use crate::router::{DomainHandler, Router};
use crate::sasl::StoredCredentials;
use crate::session::Handover;
use crate::stanza::{self, StanzaError};
use crate::token::{Identities, TokenAuthority};
use crate::{ns, stanza::el};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where SASL finds accounts. `src/` implements it over SQLite.
pub trait AccountStore: Send + Sync {
    fn credentials<'a>(
        &'a self,
        user: &'a str,
        domain: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCredentials>, String>>;
}

/// A session waiting for (or able to accept) XEP-0198 resumption.
pub struct ResumeEntry {
    pub full_jid: String,
    pub handover: mpsc::Sender<Box<Handover>>,
    /// The session's XEP-0198 `h` (client stanzas handled), kept current by its task.
    pub inbound: Arc<std::sync::atomic::AtomicU32>,
}

/// Everything sessions and transports share.
pub struct Server {
    pub config: XmppConfig,
    pub router: Arc<Router>,
    pub accounts: Arc<dyn AccountStore>,
    resumable: Mutex<HashMap<String, ResumeEntry>>,
    /// Sessions of the meetd that ran before this one, which their clients may resume here
    /// until the deadline (crate::handoff).
    adoptable: Mutex<(
        HashMap<String, crate::handoff::Record>,
        Option<std::time::Instant>,
    )>,
    /// Set when meetd stops: sessions take no more input from their clients, so that the
    /// `h` handed to the next meetd stays what the clients were last told.
    stopping: std::sync::atomic::AtomicBool,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    total: Mutex<usize>,
    /// Extra disco identities on the main domain: (category, type, name).
    identities: Mutex<Vec<(String, String, String)>>,
    /// Token sign-in (`AuthMode::Token`); replaced when the configuration is reloaded.
    tokens: parking_lot::RwLock<Option<Arc<TokenAuthority>>>,
    /// The limits new sessions get (`config.limits` until a reload changes them).
    limits: parking_lot::RwLock<crate::config::Limits>,
    /// What signed-in users' tokens say, by full JID; the rooms read it.
    pub token_identities: Arc<Identities>,
}

/// Holds one connection slot of an IP address; released on drop.
pub struct ConnectionSlot {
    server: Arc<Server>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut m = self.server.per_ip.lock();
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
        *self.server.total.lock() -= 1;
    }
}

impl Server {
    pub fn new(config: XmppConfig, accounts: Arc<dyn AccountStore>) -> Arc<Server> {
        let mut hosts = vec![config.domain.clone(), config.auth_domain.clone()];
        hosts.push(config.recorder_domain.clone());
        if let Some(g) = &config.guest_domain {
            hosts.push(g.clone());
        }
        if let Some(v) = &config.visitor_domain {
            hosts.push(v.clone());
        }
        let router = Router::new(hosts);
        let limits = parking_lot::RwLock::new(config.limits);
        let server = Arc::new(Server {
            limits,
            config,
            router: router.clone(),
            accounts,
            resumable: Mutex::new(HashMap::new()),
            adoptable: Mutex::new((HashMap::new(), None)),
            stopping: std::sync::atomic::AtomicBool::new(false),
            per_ip: Mutex::new(HashMap::new()),
            total: Mutex::new(0),
            identities: Mutex::new(Vec::new()),
            tokens: parking_lot::RwLock::new(None),
            token_identities: Arc::new(Identities::default()),
        });
        router.set_domain_handler(Arc::new(HostHandler {
            server: Arc::downgrade(&server),
        }));
        server
    }

    /// Verify tokens with `authority` from now on (at start, and on a configuration reload:
    /// new keys and secrets apply to the next sign-in).
    pub fn set_token_authority(&self, authority: Arc<TokenAuthority>) {
        *self.tokens.write() = Some(authority);
    }

    pub fn token_authority(&self) -> Option<Arc<TokenAuthority>> {
        self.tokens.read().clone()
    }

    /// The limits a new session or request gets.
    pub fn limits(&self) -> crate::config::Limits {
        *self.limits.read()
    }

    /// New limits for the sessions and requests that start from now on; running sessions
    /// keep theirs.
    pub fn set_limits(&self, limits: crate::config::Limits) {
        *self.limits.write() = limits;
    }

    /// The XML parser limits for a new stream.
    pub fn xml_limits(&self) -> crate::xml::XmlLimits {
        let l = self.limits();
        crate::xml::XmlLimits {
            max_stanza_bytes: l.max_stanza_bytes,
            max_depth: l.max_xml_depth,
        }
    }

    /// Advertise a component on the main domain (XEP-0030 identity the Jitsi client reads).
    pub fn add_identity(&self, category: &str, ty: &str, name: &str) {
        self.identities
            .lock()
            .push((category.into(), ty.into(), name.into()));
    }

    /// Take a connection slot for `ip`, or None when the per-IP or total limit is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        let limits = self.limits();
        let mut total = self.total.lock();
        if *total >= limits.max_sessions {
            return None;
        }
        let mut m = self.per_ip.lock();
        let n = m.entry(ip).or_insert(0);
        if *n >= limits.max_sessions_per_ip {
            return None;
        }
        *n += 1;
        *total += 1;
        Some(ConnectionSlot {
            server: self.clone(),
            ip,
        })
    }

    /// Sessions currently admitted from `ip`.
    pub fn sessions_from(&self, ip: IpAddr) -> usize {
        self.per_ip.lock().get(&ip).copied().unwrap_or(0)
    }

    pub fn register_resumable(&self, id: &str, entry: ResumeEntry) {
        self.resumable.lock().insert(id.to_string(), entry);
    }

    pub fn unregister_resumable(&self, id: &str) {
        self.resumable.lock().remove(id);
    }

    /// meetd is stopping: sessions stop reading their clients. Answers the records of every
    /// resumable session, for the next meetd.
    pub fn stop_and_hand_off(&self) -> Vec<crate::handoff::Record> {
        use std::sync::atomic::Ordering;
        self.stopping.store(true, Ordering::SeqCst);
        let mut out: Vec<crate::handoff::Record> = self
            .resumable
            .lock()
            .iter()
            .filter(|(_, e)| !e.full_jid.is_empty())
            .map(|(id, e)| crate::handoff::Record {
                id: id.clone(),
                jid: e.full_jid.clone(),
                h: e.inbound.load(Ordering::SeqCst),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Offer the sessions of the previous meetd for resumption until `deadline`.
    pub fn set_adoptable(
        &self,
        records: Vec<crate::handoff::Record>,
        deadline: std::time::Instant,
    ) {
        let mut a = self.adoptable.lock();
        a.0 = records.into_iter().map(|r| (r.id.clone(), r)).collect();
        a.1 = Some(deadline);
    }

    /// The previous meetd's session `id`, if it may still be resumed here; `take` claims it.
    pub fn adoptable(&self, id: &str, take: bool) -> Option<crate::handoff::Record> {
        let mut a = self.adoptable.lock();
        if a.1.is_none_or(|d| std::time::Instant::now() > d) {
            a.0.clear();
            return None;
        }
        if take {
            a.0.remove(id)
        } else {
            a.0.get(id).cloned()
        }
    }

    pub fn resumable(&self, id: &str) -> Option<(String, mpsc::Sender<Box<Handover>>)> {
        self.resumable
            .lock()
            .get(id)
            .map(|e| (e.full_jid.clone(), e.handover.clone()))
    }

    fn disco_info(&self, iq: &Element, to: &str) -> Element {
        let mut q = Element::builder("query", ns::DISCO_INFO);
        if let Some(node) = stanza::payload(iq).and_then(|p| p.attr("node")) {
            q = q.attr(stanza::rxml_name("node"), node);
        }
        q = q.append(el(
            "identity",
            ns::DISCO_INFO,
            &[("category", "server"), ("type", "im"), ("name", "meetd")],
        ));
        if to == self.config.domain {
            for (c, t, n) in self.identities.lock().iter() {
                q = q.append(el(
                    "identity",
                    ns::DISCO_INFO,
                    &[("category", c), ("type", t), ("name", n)],
                ));
            }
        }
        for f in [
            ns::DISCO_INFO,
            ns::DISCO_ITEMS,
            ns::PING,
            ns::EXTDISCO_2,
            ns::EXTDISCO_1,
            ns::VERSION,
            "urn:xmpp:sm:3",
        ] {
            q = q.append(el("feature", ns::DISCO_INFO, &[("var", f)]));
        }
        stanza::iq_result(iq, Some(q.build()))
    }

    fn disco_items(&self, iq: &Element, to: &str) -> Element {
        let mut q = Element::builder("query", ns::DISCO_ITEMS);
        if to == self.config.domain {
            let mut items = vec![
                self.config.muc_domain.clone(),
                self.config.focus_domain.clone(),
            ];
            items.dedup();
            for jid in items {
                q = q.append(el("item", ns::DISCO_ITEMS, &[("jid", &jid)]));
            }
        }
        stanza::iq_result(iq, Some(q.build()))
    }

    /// XEP-0215 services, with coturn REST-API credentials for TURN when a secret is set.
    pub fn external_services(&self, xmlns: &str, now: SystemTime) -> Element {
        let mut q = Element::builder("services", xmlns);
        let expires = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
            + self.config.turn_ttl.as_secs();
        for s in &self.config.external_services {
            let port = s.port.to_string();
            let mut attrs: Vec<(&'static str, String)> = vec![
                ("type", s.kind.clone()),
                ("host", s.host.clone()),
                ("port", port),
            ];
            if let Some(t) = &s.transport {
                attrs.push(("transport", t.clone()));
            }
            if s.kind != "stun"
                && let Some(secret) = &self.config.turn_secret
            {
                let username = expires.to_string();
                let key = aws_lc_rs::hmac::Key::new(
                    aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                    secret.as_bytes(),
                );
                let tag = aws_lc_rs::hmac::sign(&key, username.as_bytes());
                let password = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
                attrs.push(("username", username));
                attrs.push(("password", password));
                attrs.push(("restricted", "1".into()));
                attrs.push(("expires", httpdate_iso(expires)));
            }
            let a: Vec<(&'static str, &str)> =
                attrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            q = q.append(el("service", xmlns, &a));
        }
        q.build()
    }
}

/// Seconds since the epoch as an XEP-0082 UTC timestamp.
fn httpdate_iso(secs: u64) -> String {
    let days = secs / 86400;
    let rem = secs % 86400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

struct HostHandler {
    server: std::sync::Weak<Server>,
}

impl DomainHandler for HostHandler {
    fn handle(&self, st: &Element) -> Vec<Element> {
        let Some(server) = self.server.upgrade() else {
            return Vec::new();
        };
        if st.name() != "iq" {
            // Messages and presence to a host (or an account's bare JID with no session)
            // have nowhere to go; RFC 6121 lets us drop them silently.
            return Vec::new();
        }
        let ty = st.attr("type").unwrap_or("");
        if ty != "get" && ty != "set" {
            return Vec::new();
        }
        let to = st.attr("to").unwrap_or("");
        let is_host = !to.contains('@');
        let reply = match stanza::payload(st) {
            Some(p) if p.is("ping", ns::PING) => stanza::iq_result(st, None),
            Some(p) if p.is("query", ns::DISCO_INFO) && ty == "get" => {
                if is_host {
                    server.disco_info(st, to)
                } else {
                    // An account's bare JID: RFC 6121 account identity.
                    let q = Element::builder("query", ns::DISCO_INFO)
                        .append(el(
                            "identity",
                            ns::DISCO_INFO,
                            &[("category", "account"), ("type", "registered")],
                        ))
                        .build();
                    stanza::iq_result(st, Some(q))
                }
            }
            Some(p) if p.is("query", ns::DISCO_ITEMS) && ty == "get" => {
                server.disco_items(st, if is_host { to } else { "" })
            }
            Some(p)
                if is_host
                    && ty == "get"
                    && (p.is("services", ns::EXTDISCO_2) || p.is("services", ns::EXTDISCO_1)) =>
            {
                let xmlns = p.ns();
                stanza::iq_result(
                    st,
                    Some(server.external_services(&xmlns, SystemTime::now())),
                )
            }
            Some(p) if is_host && ty == "get" && p.is("query", ns::VERSION) => {
                let q = Element::builder("query", ns::VERSION)
                    .append(
                        Element::builder("name", ns::VERSION)
                            .append("meetd")
                            .build(),
                    )
                    .append(
                        Element::builder("version", ns::VERSION)
                            .append(env!("CARGO_PKG_VERSION"))
                            .build(),
                    )
                    .build();
                stanza::iq_result(st, Some(q))
            }
            Some(p) if !is_host && p.is("query", ns::ROSTER) && ty == "get" => {
                // No rosters in a conferencing server; an empty one keeps generic clients happy.
                stanza::iq_result(st, Some(Element::bare("query", ns::ROSTER)))
            }
            _ => match stanza::error_reply(st, StanzaError::SERVICE_UNAVAILABLE, None) {
                Some(e) => e,
                None => return Vec::new(),
            },
        };
        vec![reply]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(httpdate_iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(httpdate_iso(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(httpdate_iso(951_782_400), "2000-02-29T00:00:00Z");
    }

    struct NoAccounts;
    impl AccountStore for NoAccounts {
        fn credentials<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Option<StoredCredentials>, String>> {
            Box::pin(async { Ok(None) })
        }
    }

    #[test]
    fn turn_credentials_follow_coturn_rest_scheme() {
        let mut cfg = XmppConfig::for_domain("meet.jitsi");
        cfg.turn_secret = Some("secret".into());
        cfg.external_services = vec![ExternalServiceT::turn()];
        let s = Server::new(cfg, Arc::new(NoAccounts));
        let now = UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let q = s.external_services(ns::EXTDISCO_2, now);
        let svc = q.children().next().unwrap();
        let user = svc.attr("username").unwrap();
        assert_eq!(user, (1_000_000 + 86400).to_string());
        let key =
            aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"secret");
        let tag = aws_lc_rs::hmac::sign(&key, user.as_bytes());
        assert_eq!(
            svc.attr("password").unwrap(),
            base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
        );
    }

    struct ExternalServiceT;
    impl ExternalServiceT {
        fn turn() -> crate::ExternalService {
            crate::ExternalService {
                kind: "turn".into(),
                host: "127.0.0.1".into(),
                port: 3478,
                transport: Some("udp".into()),
            }
        }
    }
}
