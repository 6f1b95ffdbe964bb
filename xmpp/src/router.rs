//! The router: delivers a stanza to the local session or the service its `to` names.
//!
//! Sessions and services each own a bounded mailbox; routing is a map lookup and a
//! `try_send`, so a slow receiver never blocks the sender — a full mailbox answers
//! the sender with `resource-constraint` (for requests) or drops the stanza.

use std::collections::HashMap;
use std::sync::Arc;

use jid::Jid;
use minidom::Element;
use parking_lot::RwLock;
use tokio::sync::mpsc;

use crate::stanza::{self, StanzaError};

/// Where a service (MUC, focus, bridge, a remote XEP-0114 component) receives stanzas.
#[derive(Clone, Debug)]
pub struct ServiceHandle {
    pub tx: Mailbox,
}

/// A bounded mailbox of a session or service. Stanzas travel boxed so that an idle
/// channel's preallocated block stays small (tokio allocates 32 slots up front).
pub type Mailbox = mpsc::Sender<Box<Element>>;

/// Answers stanzas addressed to a host domain itself (disco, ping, ...). Returns the replies.
pub trait DomainHandler: Send + Sync {
    fn handle(&self, stanza: &Element) -> Vec<Element>;
}

#[derive(Default)]
struct Tables {
    /// Full JID → mailbox of the session.
    sessions: HashMap<String, Mailbox>,
    /// Bare JID → bound resources (full JIDs).
    resources: HashMap<String, Vec<String>>,
    /// Domain → service.
    services: HashMap<String, ServiceHandle>,
}

pub struct Router {
    tables: RwLock<Tables>,
    /// Domains answered by the server itself.
    hosts: Vec<String>,
    handler: RwLock<Option<Arc<dyn DomainHandler>>>,
}

/// Why a stanza was not delivered (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    Bounced,
    Dropped,
}

impl Router {
    pub fn new(hosts: Vec<String>) -> Arc<Router> {
        Arc::new(Router {
            tables: RwLock::new(Tables::default()),
            hosts,
            handler: RwLock::new(None),
        })
    }

    pub fn set_domain_handler(&self, h: Arc<dyn DomainHandler>) {
        *self.handler.write() = Some(h);
    }

    pub fn is_host(&self, domain: &str) -> bool {
        self.hosts.iter().any(|h| h == domain)
    }

    /// Register a bound session. Returns the mailbox it replaced (resource conflict), if any.
    pub fn bind(&self, full: &str, tx: Mailbox) -> Option<Mailbox> {
        let bare = bare_of(full).to_string();
        let mut t = self.tables.write();
        let old = t.sessions.insert(full.to_string(), tx);
        if old.is_none() {
            t.resources.entry(bare).or_default().push(full.to_string());
        }
        old
    }

    /// Remove a session, but only if `tx` is still the registered mailbox.
    pub fn unbind(&self, full: &str, tx: &Mailbox) {
        let mut t = self.tables.write();
        if t.sessions.get(full).is_some_and(|cur| cur.same_channel(tx)) {
            t.sessions.remove(full);
            let bare = bare_of(full);
            if let Some(v) = t.resources.get_mut(bare) {
                v.retain(|r| r != full);
                if v.is_empty() {
                    t.resources.remove(bare);
                }
            }
        }
    }

    pub fn is_bound(&self, full: &str) -> bool {
        self.tables.read().sessions.contains_key(full)
    }

    pub fn session_count(&self) -> usize {
        self.tables.read().sessions.len()
    }

    pub fn register_service(&self, domain: &str, h: ServiceHandle) -> bool {
        let mut t = self.tables.write();
        if t.services.contains_key(domain) {
            return false;
        }
        t.services.insert(domain.to_string(), h);
        true
    }

    pub fn unregister_service(&self, domain: &str) {
        self.tables.write().services.remove(domain);
    }

    pub fn has_service(&self, domain: &str) -> bool {
        self.tables.read().services.contains_key(domain)
    }

    /// Route a stanza whose `from` the caller has already set and vouches for.
    pub fn route(&self, el: Element) -> Delivery {
        let Some(to) = el.attr("to").map(str::to_string) else {
            // Sessions answer to-less stanzas themselves; anything else reaching here is a bug
            // in a service, so drop it rather than loop.
            return Delivery::Dropped;
        };
        let to = match Jid::new(&to) {
            Ok(j) => j,
            Err(_) => return self.bounce(&el, StanzaError::JID_MALFORMED),
        };
        let domain = to.domain().as_str();

        // Services own their whole domain (conference.<d>, focus.<d>, components).
        let service = self.tables.read().services.get(domain).cloned();
        if let Some(s) = service {
            return self.deliver(&s.tx, el);
        }
        if !self.is_host(domain) {
            return self.bounce(&el, StanzaError::REMOTE_SERVER_NOT_FOUND);
        }
        if to.node().is_none() {
            return self.to_host(el);
        }
        match to.resource() {
            Some(_) => {
                let tx = self.tables.read().sessions.get(to.as_str()).cloned();
                match tx {
                    Some(tx) => self.deliver(&tx, el),
                    None => self.to_missing_resource(el, &to),
                }
            }
            None => self.to_bare(el, to.as_str()),
        }
    }

    fn deliver(&self, tx: &Mailbox, el: Element) -> Delivery {
        match tx.try_send(Box::new(el)) {
            Ok(()) => Delivery::Delivered,
            Err(mpsc::error::TrySendError::Full(el)) => {
                tracing::warn!(to = el.attr("to"), "mailbox full, refusing stanza");
                self.bounce(&el, StanzaError::RESOURCE_CONSTRAINT)
            }
            Err(mpsc::error::TrySendError::Closed(el)) => {
                self.bounce(&el, StanzaError::SERVICE_UNAVAILABLE)
            }
        }
    }

    fn to_host(&self, el: Element) -> Delivery {
        let handler = self.handler.read().clone();
        let replies = match handler {
            Some(h) => h.handle(&el),
            None => Vec::new(),
        };
        if replies.is_empty() {
            return Delivery::Dropped;
        }
        for r in replies {
            self.route(r);
        }
        Delivery::Delivered
    }

    /// RFC 6121 §8.5.3: no such resource.
    fn to_missing_resource(&self, el: Element, to: &Jid) -> Delivery {
        match el.name() {
            "message" => {
                let ty = el.attr("type").unwrap_or("normal");
                if ty == "groupchat" || ty == "error" || ty == "headline" {
                    return Delivery::Dropped;
                }
                // chat/normal falls back to the bare JID's sessions.
                let bare = bare_of(to.as_str()).to_string();
                self.to_bare(el, &bare)
            }
            "presence" => Delivery::Dropped,
            _ => self.bounce(&el, StanzaError::SERVICE_UNAVAILABLE),
        }
    }

    /// RFC 6121 §8.5.2: a bare JID of a local account.
    fn to_bare(&self, el: Element, bare: &str) -> Delivery {
        let targets: Vec<Mailbox> = {
            let t = self.tables.read();
            t.resources
                .get(bare)
                .map(|v| {
                    v.iter()
                        .filter_map(|f| t.sessions.get(f).cloned())
                        .collect()
                })
                .unwrap_or_default()
        };
        match el.name() {
            "message" | "presence" => {
                if targets.is_empty() {
                    if el.name() == "message" && el.attr("type") != Some("groupchat") {
                        return self.bounce(&el, StanzaError::SERVICE_UNAVAILABLE);
                    }
                    return Delivery::Dropped;
                }
                let n = targets.len();
                for (i, tx) in targets.iter().enumerate() {
                    if i + 1 == n {
                        return self.deliver(tx, el);
                    }
                    self.deliver(tx, el.clone());
                }
                Delivery::Delivered
            }
            // The server answers IQs to a bare JID on the account's behalf.
            _ => self.to_host(el),
        }
    }

    fn bounce(&self, el: &Element, err: StanzaError) -> Delivery {
        match stanza::error_reply(el, err, None) {
            Some(reply) => {
                // The reply goes back to a sender we know; if that fails too, stop there.
                if reply.attr("to").is_some() {
                    let to = reply.attr("to").unwrap_or_default().to_string();
                    let tx = self.tables.read().sessions.get(&to).cloned();
                    if let Some(tx) = tx {
                        let _ = tx.try_send(Box::new(reply));
                    } else if let Ok(j) = Jid::new(&to) {
                        let s = self
                            .tables
                            .read()
                            .services
                            .get(j.domain().as_str())
                            .cloned();
                        if let Some(s) = s {
                            let _ = s.tx.try_send(Box::new(reply));
                        }
                    }
                }
                Delivery::Bounced
            }
            None => Delivery::Dropped,
        }
    }
}

/// The bare part of a JID string (everything before the first '/').
pub fn bare_of(full: &str) -> &str {
    full.split_once('/').map(|(b, _)| b).unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Element {
        crate::xml::parse_document(s.as_bytes(), &Default::default()).unwrap()
    }

    #[tokio::test]
    async fn routes_full_and_bounces_missing() {
        let r = Router::new(vec!["d".into()]);
        let (atx, mut arx) = mpsc::channel(4);
        let (btx, mut brx) = mpsc::channel(4);
        r.bind("a@d/1", atx);
        r.bind("b@d/2", btx);
        let m = parse(
            "<message xmlns='jabber:client' from='a@d/1' to='b@d/2'><body>x</body></message>",
        );
        assert_eq!(r.route(m), Delivery::Delivered);
        assert_eq!(brx.recv().await.unwrap().attr("from"), Some("a@d/1"));
        let iq = parse(
            "<iq xmlns='jabber:client' type='get' id='q' from='a@d/1' to='b@d/9'><x xmlns='y'/></iq>",
        );
        assert_eq!(r.route(iq), Delivery::Bounced);
        let err = arx.recv().await.unwrap();
        assert_eq!(err.attr("type"), Some("error"));
        assert_eq!(err.attr("from"), Some("b@d/9"));
        // A message to a missing resource falls back to the bare JID.
        let m = parse("<message xmlns='jabber:client' type='chat' from='a@d/1' to='b@d/9'/>");
        assert_eq!(r.route(m), Delivery::Delivered);
        assert!(brx.recv().await.is_some());
    }

    #[tokio::test]
    async fn full_mailbox_bounces_with_resource_constraint() {
        let r = Router::new(vec!["d".into()]);
        let (atx, mut arx) = mpsc::channel(4);
        let (btx, _brx) = mpsc::channel(1);
        r.bind("a@d/1", atx);
        r.bind("b@d/2", btx);
        let iq = "<iq xmlns='jabber:client' type='get' id='q' from='a@d/1' to='b@d/2'><x xmlns='y'/></iq>";
        assert_eq!(r.route(parse(iq)), Delivery::Delivered);
        assert_eq!(r.route(parse(iq)), Delivery::Bounced);
        let err = arx.recv().await.unwrap();
        assert!(crate::xml::to_string(&err).contains("resource-constraint"));
    }

    #[tokio::test]
    async fn unbind_only_removes_own_mailbox() {
        let r = Router::new(vec!["d".into()]);
        let (t1, _r1) = mpsc::channel(1);
        let (t2, _r2) = mpsc::channel(1);
        r.bind("a@d/1", t1.clone());
        r.bind("a@d/1", t2.clone());
        r.unbind("a@d/1", &t1);
        assert!(r.is_bound("a@d/1"));
        r.unbind("a@d/1", &t2);
        assert!(!r.is_bound("a@d/1"));
    }
}
