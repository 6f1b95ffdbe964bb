//! The HTTP(S) front door: what nginx does in a stock install, plus the XMPP transports.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use meetd_xmpp::Server;
use meetd_xmpp::http_bind::{self, Bosh};
use serde_json::json;

use crate::config::Config;
use crate::web;

/// Shared by every HTTP listener.
pub struct Front {
    pub cfg: Arc<Config>,
    pub server: Arc<Server>,
    pub bosh: Arc<Bosh>,
    pub focus: Option<meetd_jingle::focus::FocusHandle>,
    pub bridge: Arc<meetd_colibri::service::ColibriService>,
    pub channels: Arc<meetd_colibri::channel::ChannelHub>,
    pub engine: meetd_colibri::driver::EngineHandle,
    /// An unpacked Jitsi Meet web build, when configured.
    pub web_root: Option<crate::webroot::WebRoot>,
    /// The embedded TURN server, when it runs.
    pub turn: Option<Arc<crate::turn::Turn>>,
    /// The database (dial-in PINs).
    pub storage: crate::storage::Storage,
    /// Set once every listener is bound.
    pub ready: AtomicBool,
    /// This process's shard name (config.js `deploymentInfo.shard`, the `x-jitsi-shard`
    /// header): a restarted meetd has another one, which tells the web app to reconnect
    /// in place (docs/operations.md "Restarts").
    pub shard: String,
    /// HTTP-01 answers of an ACME order in flight (src/acme.rs).
    pub acme: Arc<crate::acme::Challenges>,
    /// The stock HTTP APIs (src/http_api.rs).
    pub api: Arc<crate::http_api::HttpApi>,
    /// HLS of meetd's own live streams, when `[streaming] hls` is on (src/hls.rs).
    pub hls: Option<Arc<crate::hls::Hls>>,
}

/// One call of the stock HTTP APIs (src/http_api.rs): who asks, the query, the headers and
/// the body (at most [`API_MAX_BODY`]).
struct ApiCall {
    st: St,
    client: IpAddr,
    headers: HeaderMap,
    query: std::collections::HashMap<String, String>,
    body: axum::body::Bytes,
}

/// Bodies the API reads: small JSON objects.
const API_MAX_BODY: usize = 64 * 1024;

impl axum::extract::FromRequest<St> for ApiCall {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, st: &St) -> Result<Self, Response> {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (parts, body) = req.into_parts();
        let query = parts.uri.query().and_then(query_pairs).unwrap_or_default();
        let body = axum::body::to_bytes(body, API_MAX_BODY)
            .await
            .map_err(|_| StatusCode::PAYLOAD_TOO_LARGE.into_response())?;
        Ok(ApiCall {
            st: st.clone(),
            client: client_ip(peer, &parts.headers),
            headers: parts.headers,
            query,
            body,
        })
    }
}

/// `a=1&b=2` as a map (percent-decoded).
fn query_pairs(q: &str) -> Option<std::collections::HashMap<String, String>> {
    axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(
        &format!("/?{q}").parse().ok()?,
    )
    .ok()
    .map(|axum::extract::Query(m)| m)
}

impl ApiCall {
    fn api(&self) -> &crate::http_api::HttpApi {
        &self.st.front.api
    }

    /// Refused with 404: the API is off, or (for what stock leaves open) the caller is not
    /// local and the API is not public.
    fn closed(&self, open_endpoint: bool) -> bool {
        let api = self.api();
        !api.cfg.enabled || (open_endpoint && !api.open_to(self.client))
    }
}

async fn api_room_size(c: ApiCall) -> Response {
    if c.closed(true) {
        return not_found().await;
    }
    c.api().room_size(&c.st.front.server, &c.query, false).await
}

async fn api_room(c: ApiCall) -> Response {
    if c.closed(true) {
        return not_found().await;
    }
    c.api().room_size(&c.st.front.server, &c.query, true).await
}

async fn api_sessions(c: ApiCall) -> Response {
    if c.closed(true) {
        return not_found().await;
    }
    (
        StatusCode::OK,
        c.st.front.server.router.session_count().to_string(),
    )
        .into_response()
}

async fn api_census(c: ApiCall) -> Response {
    if c.closed(true) {
        return not_found().await;
    }
    let router = c.st.front.server.router.clone();
    c.api().census(|jid| router.is_bound(jid))
}

async fn api_room_info(c: ApiCall) -> Response {
    if c.closed(false) {
        return not_found().await;
    }
    c.api()
        .room_info(&c.st.front.server, &c.headers, &c.query, None)
        .await
}

async fn api_room_info_put(c: ApiCall) -> Response {
    if c.closed(false) {
        return not_found().await;
    }
    let api = c.api();
    api.room_info(&c.st.front.server, &c.headers, &c.query, Some(&c.body))
        .await
}

async fn api_kick(c: ApiCall) -> Response {
    if c.closed(false) {
        return not_found().await;
    }
    let router = &c.st.front.server.router;
    c.api().kick(router, &c.headers, &c.query, &c.body).await
}

async fn api_end_meeting(c: ApiCall) -> Response {
    if c.closed(false) {
        return not_found().await;
    }
    c.api()
        .end_meeting(&c.st.front.server.router, &c.headers, &c.query)
        .await
}

async fn api_system_chat(c: ApiCall) -> Response {
    if c.closed(false) {
        return not_found().await;
    }
    c.api()
        .system_chat(&c.st.front.server.router, &c.headers, &c.body)
        .await
}

async fn api_invite_jigasi(c: ApiCall) -> Response {
    if c.closed(false) {
        return not_found().await;
    }
    c.api()
        .invite_jigasi(c.st.front.focus.as_ref(), &c.headers, &c.body)
        .await
}

async fn api_turn_credentials(c: ApiCall) -> Response {
    if c.closed(true) {
        return not_found().await;
    }
    c.api().turn_credentials(&c.st.front.server)
}

async fn acme_challenge(
    State(st): State<St>,
    axum::extract::Path(token): axum::extract::Path<String>,
) -> Response {
    match st.front.acme.answer(&token) {
        Some(a) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            a,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[derive(Clone)]
struct St {
    front: Arc<Front>,
    /// This listener is HTTPS.
    tls: bool,
}

pub fn router(front: Arc<Front>, tls: bool) -> Router {
    if front.cfg.server.role == "bridge" {
        // A bridge-only meetd (docs/colibri2.md §4): the bridge channel, health, metrics and
        // certificates; its XMPP, web app and APIs belong to the focus's meetd.
        return Router::new()
            .route("/about/health", get(health))
            .route("/.well-known/acme-challenge/{token}", get(acme_challenge))
            .route("/metrics", get(metrics))
            .route("/colibri-ws/{bridge}/{conf}/{endpoint}", get(colibri_ws))
            .route(
                "/colibri-relay-ws/{bridge}/{conf}/{relay}",
                get(colibri_relay_ws),
            )
            .with_state(St { front, tls });
    }
    Router::new()
        .route("/xmpp-websocket", get(websocket))
        .route(
            "/http-bind",
            get(bosh_get).post(bosh_post).options(bosh_get),
        )
        .route("/config.js", get(config_js))
        .route(
            "/conference-request/v1",
            axum::routing::post(conference_request).options(cors_ok),
        )
        .route("/about/health", get(health))
        .route("/.well-known/acme-challenge/{token}", get(acme_challenge))
        .route("/room-size", get(api_room_size))
        .route("/room", get(api_room))
        .route("/sessions", get(api_sessions))
        .route("/room-census", get(api_census))
        .route("/room-info", get(api_room_info).put(api_room_info_put))
        .route("/kick-participant", axum::routing::put(api_kick))
        .route("/end-meeting", axum::routing::post(api_end_meeting))
        .route(
            "/send-system-chat-message",
            axum::routing::post(api_system_chat),
        )
        .route("/invite-jigasi", axum::routing::post(api_invite_jigasi))
        .route("/turn-credentials", get(api_turn_credentials))
        .route("/dialin/numbers", get(dialin_numbers))
        .route("/dialin/conference-code", get(dialin_code))
        .route("/metrics", get(metrics))
        .route("/colibri-ws/{bridge}/{conf}/{endpoint}", get(colibri_ws))
        .route(
            "/colibri-relay-ws/{bridge}/{conf}/{relay}",
            get(colibri_relay_ws),
        )
        .route("/live/", get(live))
        .route("/live/{*rest}", get(live))
        .route("/", get(index))
        .fallback(web_fallback)
        .with_state(St { front, tls })
}

/// The client's address: a local reverse proxy's X-Forwarded-For is believed, nobody else's.
fn client_ip(peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    if peer.ip().is_loopback()
        && let Some(ip) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        return ip;
    }
    peer.ip()
}

/// Whether the client reached us over TLS (directly, or through a local proxy that says so).
fn is_secure(st: &St, peer: SocketAddr, headers: &HeaderMap) -> bool {
    st.tls
        || (peer.ip().is_loopback()
            && headers
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https")))
}

async fn websocket(
    State(st): State<St>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => meetd_xmpp::ws::upgrade(
            st.front.server.clone(),
            ws,
            client_ip(peer, &headers),
            uri.query(),
            is_secure(&st, peer, &headers),
        ),
        // lib-jitsi-meet's keep-alive is a plain GET of the WebSocket URL; it compares the
        // shard header with the one it connected to.
        Err(_) => {
            let mut r = (
                StatusCode::OK,
                [(header::CACHE_CONTROL, "no-cache")],
                "meetd XMPP over WebSocket\n",
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&st.front.shard) {
                r.headers_mut().insert("x-jitsi-shard", v);
            }
            r
        }
    }
}

async fn bosh_get() -> Response {
    http_bind::preflight()
}

async fn bosh_post(
    State(st): State<St>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let secure = is_secure(&st, peer, &headers);
    st.front
        .bosh
        .post(client_ip(peer, &headers), uri.query(), secure, &body)
        .await
}

async fn config_js(
    State(st): State<St>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let base = base_url(&st, peer, &uri, &headers);
    let body = page_config(&st, peer, &headers, &base);
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/javascript; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

/// `dialInNumbersUrl` (docs/dialin.md): the configured numbers.
async fn dialin_numbers(State(st): State<St>) -> Response {
    let cfg = &st.front.cfg.dialin;
    if cfg.numbers.is_empty() {
        return dialin_json(404, json!({ "message": "dial-in is not configured" }));
    }
    dialin_json(200, crate::dialin::numbers(cfg))
}

/// `dialInConfCodeUrl` (docs/dialin.md): `?conference=<room JID>` gives the room's PIN (made
/// on first use), `?id=<PIN>` the room.
async fn dialin_code(
    State(st): State<St>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    use crate::dialin;
    let f = &st.front;
    if f.cfg.dialin.numbers.is_empty() {
        return dialin_json(404, json!({ "message": "dial-in is not configured" }));
    }
    if let Some(id) = q.get("id") {
        let Ok(pin) = id.trim().trim_end_matches('#').parse::<u64>() else {
            return dialin_json(400, json!({ "message": "id must be a number" }));
        };
        return match f.storage.dialin_room(pin).await {
            Ok(Some(room)) => dialin_json(200, dialin::mapping(pin, &room)),
            Ok(None) => dialin_json(404, json!({ "message": "No conference mapping was found" })),
            Err(e) => {
                tracing::warn!(error = %e, "dial-in PIN lookup failed");
                dialin_json(503, json!({ "message": "try again later" }))
            }
        };
    }
    let x = &f.server.config;
    let breakout = f.cfg.breakout_domain();
    let domains = [x.muc_domain.as_str(), breakout.as_str()];
    let room = match q.get("conference").map(|c| dialin::room_of(c, &domains)) {
        Some(Ok(r)) => r,
        Some(Err(r)) => return dialin_json(r.status, json!({ "message": r.message })),
        None => return dialin_json(400, json!({ "message": "conference or id is required" })),
    };
    let digits = f.cfg.dialin.pin_digits;
    match f
        .storage
        .dialin_pin(&room, || dialin::random_pin(digits, &mut rand::rng()))
        .await
    {
        Ok(pin) => dialin_json(200, dialin::mapping(pin, &room)),
        Err(e) => {
            tracing::warn!(error = %e, %room, "dial-in PIN not made");
            dialin_json(503, json!({ "message": "try again later" }))
        }
    }
}

fn dialin_json(status: u16, v: serde_json::Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (status, v.to_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `https://host[:port]` as the client sees us: the configured public URL, else the
/// request's Host header (HTTP/2: its `:authority`) and scheme.
fn base_url(st: &St, peer: SocketAddr, uri: &Uri, headers: &HeaderMap) -> String {
    let public = st.front.cfg.server.public_url.trim_end_matches('/');
    if !public.is_empty() {
        return public.to_string();
    }
    let scheme = if is_secure(st, peer, headers) {
        "https"
    } else {
        "http"
    };
    let forwarded_host = peer
        .ip()
        .is_loopback()
        .then(|| headers.get("x-forwarded-host"))
        .flatten();
    let host = forwarded_host
        .or_else(|| headers.get(header::HOST))
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .filter(|h| web::valid_host(h))
        .map(str::to_string)
        .unwrap_or_else(|| st.front.cfg.server.domain.clone());
    format!("{scheme}://{host}")
}

async fn health(State(st): State<St>) -> Response {
    if st.front.ready.load(Ordering::Acquire) {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"status\":\"ok\"}\n",
        )
            .into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn index(
    State(st): State<St>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let base = base_url(&st, peer, &uri, &headers);
    match &st.front.web_root {
        Some(w) => {
            let config = page_config(&st, peer, &headers, &base);
            w.index(None, host_of(&base), &config)
        }
        None => Html(web::index_page(&st.front.cfg, &base)).into_response(),
    }
}

/// config.js for one request: with the person's region (docs/colibri2.md §4c) from a local
/// proxy's `X-Proxy-Region` header, else from `[web] regions` by the client's address.
fn page_config(st: &St, peer: SocketAddr, headers: &HeaderMap, base: &str) -> String {
    let from_proxy = peer
        .ip()
        .is_loopback()
        .then(|| headers.get("x-proxy-region").and_then(|v| v.to_str().ok()))
        .flatten()
        .map(str::trim)
        .filter(|r| {
            !r.is_empty()
                && r.len() <= 64
                && r.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    let web = &st.front.cfg.web;
    let region = from_proxy.or_else(|| web.region_of(client_ip(peer, headers)));
    web::config_js(
        &st.front.cfg,
        &st.front.server.config,
        base,
        &st.front.shard,
        region,
    )
}

fn host_of(base: &str) -> &str {
    base.split_once("://").map(|(_, h)| h).unwrap_or(base)
}

/// Everything else: the web app's files and room URLs, as the stock nginx site serves them.
async fn web_fallback(
    State(st): State<St>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
) -> Response {
    let Some(w) = &st.front.web_root else {
        return not_found().await;
    };
    if req.method() != axum::http::Method::GET && req.method() != axum::http::Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "").into_response();
    }
    let path = req.uri().path().to_string();
    let base = base_url(&st, peer, req.uri(), req.headers());
    // /<tenant>/config.js is the same generated file.
    if path.ends_with("/config.js") && path.matches('/').count() == 2 {
        return config_js(
            State(st.clone()),
            ConnectInfo(peer),
            req.uri().clone(),
            req.headers().clone(),
        )
        .await;
    }
    match w.route(&path) {
        crate::webroot::Target::Index(tenant) => {
            let config = page_config(&st, peer, req.headers(), &base);
            w.index(tenant.as_deref(), host_of(&base), &config)
        }
        crate::webroot::Target::File(p) if p.ends_with(".html") => {
            let config = page_config(&st, peer, req.headers(), &base);
            w.page(&p, None, host_of(&base), &config)
        }
        crate::webroot::Target::File(p) => w.file(&p, req).await,
        crate::webroot::Target::NotFound => w.not_found(),
    }
}

/// `/live/…`: meetd's own live streams as HLS (src/hls.rs).
/// Without HLS, `/live/…` is the web app's as any path (a tenant named "live").
async fn live(
    State(st): State<St>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
) -> Response {
    if st.front.hls.is_none() {
        return web_fallback(State(st), ConnectInfo(peer), req).await;
    }
    let secure = is_secure(&st, peer, req.headers());
    crate::hls::serve(&st.front, secure, req.uri(), req.headers()).await
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

async fn cors_ok() -> Response {
    http_bind::preflight()
}

/// `POST /conference-request/v1`: the HTTP form of the conference IQ (docs/focus.md §1.3).
async fn conference_request(State(st): State<St>, body: Bytes) -> Response {
    let json = |status: StatusCode, v: serde_json::Value| {
        let mut r = (status, v.to_string()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        http_bind::add_cors(r.headers_mut());
        r
    };
    let Some(focus) = &st.front.focus else {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "no focus"}),
        );
    };
    let req: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "invalid JSON"}),
            );
        }
    };
    let Some(room) = req.get("room").and_then(|r| r.as_str()) else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "No 'room' specified."}),
        );
    };
    let room = room.to_string();
    let focus_jid = format!("focus@{}", st.front.server.config.auth_domain);
    match tokio::time::timeout(
        std::time::Duration::from_secs(15),
        focus.request(room.clone()),
    )
    .await
    {
        Ok(Ok(())) => json(
            StatusCode::OK,
            serde_json::json!({"room": room, "ready": true, "focusJid": focus_jid, "properties": {"authentication": "false"}}),
        ),
        Ok(Err(e)) => json(StatusCode::BAD_REQUEST, serde_json::json!({"error": e})),
        Err(_) => json(
            StatusCode::OK,
            serde_json::json!({"room": room, "ready": false, "focusJid": focus_jid}),
        ),
    }
}

type ChannelPath = axum::extract::Path<(String, String, String)>;
type Upgrade = Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>;

/// The bridge channel WebSocket.
async fn colibri_ws(
    State(st): State<St>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    path: ChannelPath,
    ws: Upgrade,
) -> Response {
    bridge_channel(
        st,
        peer,
        &headers,
        &uri,
        path,
        ws,
        meetd_colibri::channel::serve,
    )
    .await
}

/// A relay's channel from another bridge (docs/bridge.md B.15).
async fn colibri_relay_ws(
    State(st): State<St>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    path: ChannelPath,
    ws: Upgrade,
) -> Response {
    bridge_channel(
        st,
        peer,
        &headers,
        &uri,
        path,
        ws,
        meetd_colibri::channel::serve_relay,
    )
    .await
}

type ServeChannel = fn(
    Arc<meetd_colibri::channel::ChannelHub>,
    Arc<meetd_colibri::service::ColibriService>,
    WebSocketUpgrade,
    String,
    String,
    Option<&str>,
    std::net::IpAddr,
) -> Response;

/// `/colibri-ws/<bridge>/<conf>/<endpoint>` or `/colibri-relay-ws/<bridge>/<conf>/<relay>`:
/// this bridge's, upgraded, handed to `serve`.
async fn bridge_channel(
    st: St,
    peer: SocketAddr,
    headers: &HeaderMap,
    uri: &Uri,
    axum::extract::Path((bridge, conf, id)): ChannelPath,
    ws: Upgrade,
    serve: ServeChannel,
) -> Response {
    if bridge != st.front.cfg.bridge.id {
        return not_found().await;
    }
    let Ok(ws) = ws else {
        return (StatusCode::BAD_REQUEST, "WebSocket upgrade expected\n").into_response();
    };
    serve(
        st.front.channels.clone(),
        st.front.bridge.clone(),
        ws,
        conf,
        id,
        uri.query(),
        client_ip(peer, headers),
    )
}

/// Prometheus text exposition of meetd's counters. Only for loopback clients unless
/// `metrics.public` is set (a scraper usually runs next to the server).
/// Bridge conferences by their number of endpoints, as labelled gauges.
fn conference_sizes(sizes: &[usize]) -> String {
    const BANDS: [(&str, usize, usize); 7] = [
        ("1", 1, 1),
        ("2", 2, 2),
        ("3-4", 3, 4),
        ("5-9", 5, 9),
        ("10-19", 10, 19),
        ("20-49", 20, 49),
        ("50+", 50, usize::MAX),
    ];
    let mut out = String::from(
        "# HELP meetd_conferences_by_size Bridge conferences by their number of endpoints.\n\
         # TYPE meetd_conferences_by_size gauge\n",
    );
    for (label, lo, hi) in BANDS {
        let n = sizes.iter().filter(|s| (lo..=hi).contains(*s)).count();
        out.push_str(&format!(
            "meetd_conferences_by_size{{size=\"{label}\"}} {n}\n"
        ));
    }
    out
}

/// Join latency (allocation to ICE and DTLS up) as a histogram, and how endpoints connected
/// or failed to.
fn media_setup(s: &meetd_colibri::media::EngineStats) -> String {
    use meetd_colibri::media::CONNECT_BUCKETS_MS;
    let mut out = String::from(
        "# HELP meetd_media_connect_seconds Time from an endpoint's allocation until its ICE and DTLS were up.\n\
         # TYPE meetd_media_connect_seconds histogram\n",
    );
    let mut cumulative = 0;
    for (i, le) in CONNECT_BUCKETS_MS.iter().enumerate() {
        cumulative += s.connect_ms_buckets[i];
        out.push_str(&format!(
            "meetd_media_connect_seconds_bucket{{le=\"{}\"}} {cumulative}\n",
            *le as f64 / 1000.0
        ));
    }
    cumulative += s.connect_ms_buckets[CONNECT_BUCKETS_MS.len()];
    out.push_str(&format!(
        "meetd_media_connect_seconds_bucket{{le=\"+Inf\"}} {cumulative}\n\
         meetd_media_connect_seconds_sum {}\nmeetd_media_connect_seconds_count {cumulative}\n",
        s.connect_ms_sum as f64 / 1000.0
    ));
    out.push_str(&format!(
        "# HELP meetd_media_connections_total Endpoints whose ICE and DTLS came up, by transport (tcp: ICE-TCP, also on 443).\n\
         # TYPE meetd_media_connections_total counter\n\
         meetd_media_connections_total{{transport=\"udp\"}} {}\n\
         meetd_media_connections_total{{transport=\"tcp\"}} {}\n",
        s.connected_udp, s.connected_tcp
    ));
    out.push_str(&format!(
        "# HELP meetd_media_ice_failures_total Endpoints that ended without media, by reason.\n\
         # TYPE meetd_media_ice_failures_total counter\n\
         meetd_media_ice_failures_total{{reason=\"never_connected\"}} {}\n\
         meetd_media_ice_failures_total{{reason=\"inactive\"}} {}\n\
         meetd_media_ice_failures_total{{reason=\"failed\"}} {}\n",
        s.ice_never_connected, s.ice_inactive, s.ice_failed
    ));
    out
}

async fn metrics(
    State(st): State<St>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let m = &st.front.cfg.metrics;
    if !m.enabled || (!m.public && !client_ip(peer, &headers).is_loopback()) {
        return not_found().await;
    }
    let f = &st.front;
    let mut out = String::with_capacity(2048);
    // Non-integer gauges, appended at the end.
    let mut gauges = String::new();
    let mut put = |name: &str, kind: &str, help: &str, v: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    };
    put(
        "meetd_xmpp_sessions",
        "gauge",
        "Bound XMPP sessions (all transports).",
        f.server.router.session_count() as u64,
    );
    put(
        "meetd_bosh_sessions",
        "gauge",
        "BOSH sessions.",
        f.bosh.session_count() as u64,
    );
    if let Some(t) = &f.turn {
        put(
            "meetd_turn_allocations",
            "gauge",
            "Relayed addresses the embedded TURN server holds.",
            t.allocations() as u64,
        );
        put(
            "meetd_turn_allocations_total",
            "counter",
            "Relayed addresses the embedded TURN server gave out since start.",
            t.allocations_total(),
        );
    }
    gauges.push_str(&conference_sizes(&f.bridge.conference_sizes()));
    put(
        "meetd_bridge_conferences",
        "gauge",
        "Conferences on the bridge.",
        f.bridge.conference_count() as u64,
    );
    put(
        "meetd_bridge_endpoints",
        "gauge",
        "Endpoints on the bridge.",
        f.bridge.endpoint_count() as u64,
    );
    if let Some(s) = f.engine.stats().await {
        // JVB's stress: load over its threshold (0.9 of the CPU), here the media engine's
        // thread (it uses one core); above 0.8 a stock Jicofo calls a bridge overloaded.
        let stress = s.engine_cpu_permille as f64 / 900.0;
        gauges.push_str(&format!(
            "# HELP meetd_media_stress_level Media engine thread CPU use over 0.9 of a core (JVB stress_level).\n\
             # TYPE meetd_media_stress_level gauge\nmeetd_media_stress_level {stress:.3}\n"
        ));
        put(
            "meetd_media_endpoints",
            "gauge",
            "Endpoints in the media engine.",
            s.endpoints as u64,
        );
        gauges.push_str(&media_setup(&s));
        put(
            "meetd_media_packets_received_total",
            "counter",
            "Datagrams received on the media port.",
            s.packets_in,
        );
        put(
            "meetd_media_bytes_received_total",
            "counter",
            "Bytes received on the media port.",
            s.bytes_in,
        );
        put(
            "meetd_media_packets_sent_total",
            "counter",
            "Datagrams sent from the media port.",
            s.packets_out,
        );
        put(
            "meetd_media_bytes_sent_total",
            "counter",
            "Bytes sent from the media port.",
            s.bytes_out,
        );
        put(
            "meetd_media_dropped_datagrams_total",
            "counter",
            "Datagrams that matched no endpoint or did not parse.",
            s.dropped_datagrams,
        );
        put(
            "meetd_media_rtp_forwarded_total",
            "counter",
            "RTP packets forwarded to receivers.",
            s.rtp_forwarded,
        );
        put(
            "meetd_media_rtp_unknown_ssrc_total",
            "counter",
            "RTP packets from unsignalled SSRCs.",
            s.rtp_unknown_ssrc,
        );
        put(
            "meetd_media_keyframe_requests_total",
            "counter",
            "Keyframe requests sent to senders.",
            s.keyframe_requests,
        );
        put(
            "meetd_media_force_muted_dropped_total",
            "counter",
            "RTP packets dropped because the focus force-muted their sender.",
            s.force_muted_dropped,
        );
        put(
            "meetd_media_layer_switches_total",
            "counter",
            "Simulcast layer and SVC decode target switches.",
            s.layer_switches,
        );
        put(
            "meetd_media_red_stripped_total",
            "counter",
            "Opus-with-RED packets sent as plain Opus to receivers that did not negotiate RED.",
            s.red_stripped,
        );
        put(
            "meetd_media_svc_skipped_total",
            "counter",
            "Packets of SVC layers not forwarded to a receiver that gets a lower layer.",
            s.svc_skipped,
        );
        put(
            "meetd_media_rtc_errors_total",
            "counter",
            "Errors in endpoints' WebRTC state.",
            s.rtc_errors,
        );
        put(
            "meetd_media_silence_dropped_total",
            "counter",
            "Silent audio packets not forwarded.",
            s.silence_dropped,
        );
        put(
            "meetd_media_retransmissions_total",
            "counter",
            "Packets resent as RTX for receivers' NACKs.",
            s.retransmissions,
        );
        put(
            "meetd_media_receiver_keyframe_requests_total",
            "counter",
            "PLI/FIR received from receivers about forwarded streams.",
            s.receiver_keyframe_requests,
        );
        put(
            "meetd_media_rtp_duplicates_total",
            "counter",
            "Incoming video packets received already (e.g. senders' RTX probes), not forwarded.",
            s.rtp_duplicates,
        );
        put(
            "meetd_media_retransmissions_limited_total",
            "counter",
            "NACKed packets not resent: retransmissions used their share of the receiver's estimate.",
            s.retransmissions_limited,
        );
        put(
            "meetd_media_gso_datagrams_total",
            "counter",
            "Datagrams sent in UDP GSO runs (equal-sized ones to one receiver, one send).",
            s.gso_datagrams,
        );
        put(
            "meetd_media_probe_packets_total",
            "counter",
            "Padding packets sent to probe receivers' bandwidth.",
            s.probe_packets,
        );
        put(
            "meetd_bridge_channel_sctp_messages_in_total",
            "counter",
            "Bridge-channel messages received over SCTP data channels.",
            s.channel_messages_in,
        );
        put(
            "meetd_bridge_channel_sctp_messages_out_total",
            "counter",
            "Bridge-channel messages sent over SCTP data channels.",
            s.channel_messages_out,
        );
        put(
            "meetd_bridge_channel_sctp_messages_dropped_total",
            "counter",
            "Bridge-channel messages dropped on SCTP data channels (buffer full, too large, not text).",
            s.channel_messages_dropped,
        );
        put(
            "meetd_media_bwe_suspensions_total",
            "counter",
            "Times a forwarded video source was held back for lack of a receiver's bandwidth.",
            s.bwe_suspensions,
        );
        put(
            "meetd_media_send_dropped_total",
            "counter",
            "Datagrams the media socket did not take (send buffer full, no route).",
            s.send_dropped,
        );
        put(
            "meetd_media_dominant_speaker_changes_total",
            "counter",
            "Dominant speaker changes.",
            s.dominant_speaker_changes,
        );
        put(
            "meetd_media_live_stream_packets_total",
            "counter",
            "RTP packets the bridge sent to live-stream encoders.",
            s.broadcast_packets,
        );
        put(
            "meetd_media_live_stream_switches_total",
            "counter",
            "Times a live stream's picture switched to another video source.",
            s.broadcast_switches,
        );
    }
    out.push_str(&gauges);
    let mut r = (StatusCode::OK, out).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}
