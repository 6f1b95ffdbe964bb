//! BOSH over HTTP: the glue between axum requests, the sans-IO [`BoshSession`] and the
//! XMPP session task. Each BOSH session is a [`Link`] whose writes answer held requests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::bosh::{self, Action, BoshConfig, BoshSession, CreateRequest, RequestId};
use crate::link::{Link, LinkEvent, Out, TransportKind, features_xml, stream_error_xml};
use crate::server::{BoxFuture, Server};
use crate::session::{self, ConnInfo, QueryParams};
use crate::xml::{self, StreamHeader};

struct Reply {
    status: u16,
    body: String,
}

/// One BOSH session as the HTTP side sees it.
struct Handle {
    state: Mutex<BoshSession>,
    waiters: Mutex<HashMap<RequestId, oneshot::Sender<Reply>>>,
    inbound: mpsc::Sender<LinkEvent>,
    /// Wakes the timer task when the deadline may have moved.
    changed: Notify,
    domain: String,
}

/// All BOSH sessions of this server.
pub struct Bosh {
    server: Arc<Server>,
    sessions: Mutex<HashMap<String, Arc<Handle>>>,
    next_req: AtomicU64,
    cfg: BoshConfig,
}

impl Bosh {
    pub fn new(server: Arc<Server>) -> Arc<Bosh> {
        let c = &server.config;
        let cfg = BoshConfig {
            max_wait: c.bosh_max_wait,
            inactivity: c.bosh_inactivity,
            max_pending_bytes: c.limits.session_queue.max(64) * 1024,
            ..BoshConfig::default()
        };
        Arc::new(Bosh {
            server,
            sessions: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
            cfg,
        })
    }

    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Handle one POST to `/http-bind`.
    pub async fn post(
        self: &Arc<Self>,
        peer: IpAddr,
        query: Option<&str>,
        secure: bool,
        body: &[u8],
    ) -> Response {
        if body.len() > self.server.limits().bosh_max_body_bytes {
            return reply(413, bosh::terminal_body("policy-violation"));
        }
        let limits = crate::xml::XmlLimits {
            max_stanza_bytes: self.server.limits().bosh_max_body_bytes,
            max_depth: self.server.limits().max_xml_depth + 1,
        };
        let el = match xml::parse_document(body, &limits) {
            Ok(e) => e,
            Err(e) => {
                tracing::info!(%peer, error = %e, "bad BOSH body");
                return reply(400, bosh::terminal_body("bad-request"));
            }
        };
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let handle = match el.attr("sid") {
            None => match self.create(peer, query, secure, &el, req, tx) {
                Ok(h) => h,
                Err(condition) => return reply(200, bosh::terminal_body(condition)),
            },
            Some(sid) => {
                let h = self.sessions.lock().get(sid).cloned();
                let Some(h) = h else {
                    return reply(200, bosh::terminal_body("item-not-found"));
                };
                h.waiters.lock().insert(req, tx);
                let actions = h.state.lock().request(req, &el, Instant::now());
                self.apply(&h, actions);
                h
            }
        };
        // If the client goes away first, tell the state machine (a guard runs on drop).
        let guard = Gone {
            bosh: self.clone(),
            handle: handle.clone(),
            req,
            done: false,
        };
        let r = rx.await;
        let mut guard = guard;
        guard.done = true;
        match r {
            Ok(Reply { status, body }) => reply(status, body),
            Err(_) => reply(200, bosh::terminal_body("remote-connection-failed")),
        }
    }

    fn create(
        self: &Arc<Self>,
        peer: IpAddr,
        query: Option<&str>,
        secure: bool,
        el: &minidom::Element,
        req: RequestId,
        tx: oneshot::Sender<Reply>,
    ) -> Result<Arc<Handle>, &'static str> {
        let create = CreateRequest::parse(el).map_err(|e| e.condition())?;
        if self.server.config.login_domain(&create.to).is_none() {
            return Err("host-unknown");
        }
        let Some(slot) = self.server.admit(peer) else {
            tracing::warn!(%peer, "too many sessions, refusing BOSH");
            return Err("policy-violation");
        };
        let secure = secure || self.server.config.consider_http_secure;
        let sid = uuid::Uuid::new_v4().to_string();
        let (state, actions) = BoshSession::create(
            &self.cfg,
            sid.clone(),
            create.to.clone(),
            secure,
            req,
            &create,
            Instant::now(),
        );
        let (itx, irx) = mpsc::channel(256);
        let handle = Arc::new(Handle {
            state: Mutex::new(state),
            waiters: Mutex::new(HashMap::from([(req, tx)])),
            inbound: itx,
            changed: Notify::new(),
            domain: create.to.clone(),
        });
        self.sessions.lock().insert(sid.clone(), handle.clone());
        self.apply(&handle, actions);

        let query = QueryParams::from_query(query);
        let info = ConnInfo {
            kind: TransportKind::Bosh,
            secure,
            tls_available: false,
            ip: peer,
            query,
            resume_username: None,
        };
        let link = BoshLink {
            bosh: self.clone(),
            handle: handle.clone(),
            inbound: irx,
            secure,
        };
        // The stream opens with the session: the features answer the creation request.
        let _ = handle.inbound.try_send(LinkEvent::Open(header(&create.to)));
        tokio::spawn(session::run(
            self.server.clone(),
            Box::new(link),
            info,
            slot,
        ));
        tokio::spawn(timer(self.clone(), handle.clone(), sid));
        Ok(handle)
    }

    fn apply(&self, h: &Arc<Handle>, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Respond { req, body } => {
                    if let Some(w) = h.waiters.lock().remove(&req) {
                        let _ = w.send(Reply { status: 200, body });
                    }
                }
                Action::Fail { req, status, body } => {
                    if let Some(w) = h.waiters.lock().remove(&req) {
                        let _ = w.send(Reply { status, body });
                    }
                }
                Action::Deliver(els) => {
                    for e in els {
                        if h.inbound.try_send(LinkEvent::Element(e)).is_err() {
                            let more = h.state.lock().close(
                                Some("policy-violation"),
                                None,
                                Instant::now(),
                            );
                            let _ = h.inbound.try_send(LinkEvent::Gone);
                            self.apply(h, more);
                            break;
                        }
                    }
                }
                Action::Restart => {
                    let _ = h.inbound.try_send(LinkEvent::Open(header(&h.domain)));
                }
                Action::Terminated => {
                    let _ = h.inbound.try_send(LinkEvent::Close);
                }
                Action::Expired => {
                    let sid = h.state.lock().sid().to_string();
                    self.sessions.lock().remove(&sid);
                    let _ = h.inbound.try_send(LinkEvent::Gone);
                    // Nobody will answer the rest; dropping the senders ends their waits.
                    h.waiters.lock().clear();
                }
            }
        }
        h.changed.notify_one();
    }
}

fn header(to: &str) -> StreamHeader {
    StreamHeader {
        to: Some(to.to_string()),
        version: Some("1.0".into()),
        default_ns: Some(crate::ns::CLIENT.into()),
        ..Default::default()
    }
}

/// Runs `handle_timeout` when the session's deadline passes.
async fn timer(bosh: Arc<Bosh>, h: Arc<Handle>, sid: String) {
    loop {
        let deadline = h.state.lock().poll_timeout();
        match deadline {
            Some(d) => {
                let d = tokio::time::Instant::from_std(d);
                tokio::select! {
                    _ = tokio::time::sleep_until(d) => {
                        let actions = h.state.lock().handle_timeout(Instant::now());
                        bosh.apply(&h, actions);
                    }
                    _ = h.changed.notified() => {}
                }
            }
            None => h.changed.notified().await,
        }
        if !bosh.sessions.lock().contains_key(&sid) {
            return;
        }
    }
}

struct Gone {
    bosh: Arc<Bosh>,
    handle: Arc<Handle>,
    req: RequestId,
    done: bool,
}

impl Drop for Gone {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.handle.waiters.lock().remove(&self.req).is_some() {
            let actions = self
                .handle
                .state
                .lock()
                .request_gone(self.req, Instant::now());
            self.bosh.apply(&self.handle, actions);
        }
    }
}

struct BoshLink {
    bosh: Arc<Bosh>,
    handle: Arc<Handle>,
    inbound: mpsc::Receiver<LinkEvent>,
    secure: bool,
}

impl Link for BoshLink {
    fn recv(&mut self) -> BoxFuture<'_, LinkEvent> {
        Box::pin(async move { self.inbound.recv().await.unwrap_or(LinkEvent::Gone) })
    }

    fn send<'a>(&'a mut self, items: &'a [Out]) -> BoxFuture<'a, Result<(), ()>> {
        Box::pin(async move {
            // Everything from one batch goes out in one body (one round trip).
            let mut payload = String::new();
            let mut end: Option<(Option<&'static str>, Option<String>)> = None;
            for o in items {
                match o {
                    Out::Open { .. } | Out::Reset | Out::StartTls => {}
                    Out::Features(f) => payload.push_str(&features_xml(f)),
                    Out::Element(e) => payload.push_str(&xml::to_string(e)),
                    Out::StreamError { condition, text } => {
                        end = Some((
                            Some(condition),
                            Some(stream_error_xml(condition, text.as_deref())),
                        ));
                        break;
                    }
                    Out::Close => {
                        end = Some((None, None));
                        break;
                    }
                }
            }
            let now = Instant::now();
            let mut actions = Vec::new();
            {
                let mut st = self.handle.state.lock();
                if st.is_closed() {
                    return Err(());
                }
                if !payload.is_empty() {
                    actions.extend(st.push(payload, now));
                }
                if let Some((cond, p)) = end {
                    actions.extend(st.close(cond, p, now));
                }
            }
            self.bosh.apply(&self.handle, actions);
            Ok(())
        })
    }

    fn kind(&self) -> TransportKind {
        TransportKind::Bosh
    }

    fn secure(&self) -> bool {
        self.secure
    }
}

fn reply(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    add_cors(h);
    r
}

/// CORS as Prosody's BOSH sends it, so pages on other origins (and embedders) can connect.
pub fn add_cors(h: &mut axum::http::HeaderMap) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("7200"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

/// `OPTIONS /http-bind` (CORS preflight) and `GET /http-bind`.
pub fn preflight() -> Response {
    let mut r = (StatusCode::OK, "").into_response();
    add_cors(r.headers_mut());
    r
}
