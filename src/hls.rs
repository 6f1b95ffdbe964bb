//! HLS from meetd's own listener (docs/streaming.md §6): a live stream with `[streaming] hls`
//! on is also written by its encoder as an HLS playlist and segments under
//! `<data_dir>/live/`, and served here at `/live/<name>.m3u8`, with a player page at
//! `/live/<name>.html` and an index of the running streams at `/live/`. Names starting with
//! `X` are unlisted (not in the index); names starting with `U` need a signed-in account
//! (HTTP Basic with a meetd account, or `?jwt=` where tokens are in use), remembered in a
//! signed cookie. Only running streams are served; a stream's files go when it ends.
//!
//! The decisions have no I/O (the paths, who may see what, the cookie, the pages) and are
//! unit-tested; [`serve`] at the end answers the requests that `src/http.rs` routes here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use aws_lc_rs::hmac;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use parking_lot::Mutex;

use crate::http::Front;

/// The cookie that remembers a sign-in for `U` streams.
pub const COOKIE: &str = "meetd_live";
/// How long a sign-in is remembered (at most; a token's own expiry comes first).
pub const SIGN_IN_SECS: u64 = 4 * 3600;

/// One request under `/live/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// `/live/`: the running, listed streams.
    Index,
    /// `/live/<name>.html`: the player.
    Page(&'a str),
    /// `/live/<name>.m3u8`.
    Playlist(&'a str),
    /// `/live/<name>-<n>.ts`: the stream's name and the file's.
    Segment(&'a str, &'a str),
    /// `/live/hls.min.js`: hls.js, where configured, for browsers without native HLS.
    Script,
}

/// Stream names (stream keys): letters, digits and `-_.`, not starting with `.`.
pub fn valid_name(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 128
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !k.starts_with('.')
}

/// The player page links of a separate streaming server (`…/stream5.html?s=<name>.m3u8`)
/// keep working against meetd's: `/live/stream5.html?s=<name>.m3u8` (or `?s=<name>`) is the
/// player of `<name>`.
pub const SEED_PLAYER: &str = "stream5.html";

/// `rest`: the path after `/live/`; `query`: the URL's query.
pub fn parse<'a>(rest: &'a str, query: Option<&'a str>) -> Option<Request<'a>> {
    if rest == SEED_PLAYER
        && let Some(s) = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix("s="))
    {
        let n = s.strip_suffix(".m3u8").unwrap_or(s);
        return valid_name(n).then_some(Request::Page(n));
    }
    if rest.is_empty() || rest == "index.html" {
        return Some(Request::Index);
    }
    if rest == "hls.min.js" {
        return Some(Request::Script);
    }
    if let Some(n) = rest.strip_suffix(".html") {
        return valid_name(n).then_some(Request::Page(n));
    }
    if let Some(n) = rest.strip_suffix(".m3u8") {
        return valid_name(n).then_some(Request::Playlist(n));
    }
    let (name, n) = rest.strip_suffix(".ts")?.rsplit_once('-')?;
    (valid_name(name) && !n.is_empty() && n.len() <= 12 && n.bytes().all(|b| b.is_ascii_digit()))
        .then_some(Request::Segment(name, rest))
}

/// In the index: every name but those starting with `X`.
pub fn listed(name: &str) -> bool {
    !name.starts_with('X')
}

/// Names starting with `U` need a signed-in account.
pub fn needs_sign_in(name: &str) -> bool {
    name.starts_with('U')
}

/// The streams being written, and the key that signs sign-in cookies.
pub struct Hls {
    dir: PathBuf,
    script: Option<PathBuf>,
    running: Mutex<BTreeSet<String>>,
    key: hmac::Key,
}

impl Hls {
    /// `dir` is emptied of what an earlier run left (no content stays stored).
    /// `secret` signs the sign-in cookies (kept in the database, so they outlive restarts).
    pub fn new(dir: PathBuf, script: Option<PathBuf>, secret: &[u8]) -> std::io::Result<Hls> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Hls {
            dir,
            script,
            running: Mutex::default(),
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    pub fn playlist(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.m3u8"))
    }

    /// The encoder's segment file pattern (`%d`: the segment number).
    pub fn segment_pattern(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-%d.ts"))
    }

    /// A file of the stream directory (a name from [`parse`]).
    pub fn file(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn script(&self) -> Option<&Path> {
        self.script.as_deref()
    }

    /// Claims `name` for a new stream; false when one with that name runs already.
    pub fn begin(&self, name: &str) -> bool {
        self.running.lock().insert(name.to_string())
    }

    /// The stream `name` ended: it is no longer served and its files are deleted.
    /// The files go first, so that a stream seen gone has no files left.
    pub fn end(&self, name: &str) {
        let mut removed = 0usize;
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let f = e.file_name();
                let Some(f) = f.to_str() else { continue };
                if owned_by(f, name) && std::fs::remove_file(e.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        self.running.lock().remove(name);
        tracing::info!(stream = %name, files = removed, "HLS: the stream ended; its files are deleted");
    }

    pub fn is_running(&self, name: &str) -> bool {
        self.running.lock().contains(name)
    }

    /// The running streams the index shows.
    pub fn listed_names(&self) -> Vec<String> {
        self.running
            .lock()
            .iter()
            .filter(|n| listed(n))
            .cloned()
            .collect()
    }

    /// A cookie value good until `until` (seconds since the epoch).
    pub fn cookie(&self, until: u64) -> String {
        let tag = hmac::sign(&self.key, format!("live:{until}").as_bytes());
        format!("{until}.{}", B64.encode(tag.as_ref()))
    }

    /// Whether a cookie value is one of ours and not expired at `now`.
    pub fn cookie_ok(&self, value: &str, now: u64) -> bool {
        let Some((until, tag)) = value.split_once('.') else {
            return false;
        };
        let Ok(t) = until.parse::<u64>() else {
            return false;
        };
        let Ok(tag) = B64.decode(tag) else {
            return false;
        };
        now <= t && hmac::verify(&self.key, format!("live:{t}").as_bytes(), &tag).is_ok()
    }
}

/// Whether `file` in the stream directory belongs to stream `name`: its playlist, a segment
/// or a segment being written (`.tmp`).
fn owned_by(file: &str, name: &str) -> bool {
    let Some(rest) = file.strip_prefix(name) else {
        return false;
    };
    if rest == ".m3u8" || rest == ".m3u8.tmp" {
        return true;
    }
    let Some(n) = rest
        .strip_prefix('-')
        .and_then(|r| r.strip_suffix(".tmp").or(Some(r)))
        .and_then(|r| r.strip_suffix(".ts"))
    else {
        return false;
    };
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
}

/// How a request proves a sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Our cookie, valid.
    Cookie,
    /// HTTP Basic: a meetd account.
    Basic {
        user: String,
        password: String,
    },
    /// `?jwt=`: a token as the meeting links carry.
    Token(String),
    None,
}

/// What a request carries: `cookie_header` (the `Cookie` header), `authorization`, and the
/// query string. A valid cookie wins; then Basic; then a token.
pub fn credentials(
    hls: &Hls,
    cookie_header: Option<&str>,
    authorization: Option<&str>,
    query: Option<&str>,
    now: u64,
) -> Credentials {
    let cookie = cookie_header
        .into_iter()
        .flat_map(|h| h.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .any(|(k, v)| k == COOKIE && hls.cookie_ok(v, now));
    if cookie {
        return Credentials::Cookie;
    }
    if let Some(b) = authorization.and_then(|a| {
        a.strip_prefix("Basic ")
            .or_else(|| a.strip_prefix("basic "))
    }) && let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b.trim())
        && let Ok(s) = String::from_utf8(raw)
        && let Some((user, password)) = s.split_once(':')
    {
        return Credentials::Basic {
            user: user.to_string(),
            password: password.to_string(),
        };
    }
    if let Some(t) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("jwt="))
        .filter(|t| !t.is_empty())
    {
        return Credentials::Token(t.to_string());
    }
    Credentials::None
}

/// A Basic user name as the account table has it: `alice` or `alice@<domain>`, lower case;
/// None for another domain.
pub fn account_user(user: &str, domain: &str) -> Option<String> {
    let u = user.trim().to_lowercase();
    match u.split_once('@') {
        Some((local, d)) if d == domain.to_lowercase() && !local.is_empty() => {
            Some(local.to_string())
        }
        Some(_) => None,
        None if !u.is_empty() => Some(u),
        None => None,
    }
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>body{{font-family:sans-serif;margin:2em auto;max-width:60em;\
         padding:0 1em;background:#111;color:#eee}}a{{color:#8cf}}video{{width:100%;background:#000}}\
         </style></head><body>{body}</body></html>\n"
    )
}

/// The index: the running streams that are listed.
pub fn index_html(names: &[String]) -> String {
    let items: String = names
        .iter()
        .map(|n| {
            let lock = if needs_sign_in(n) { " (sign-in)" } else { "" };
            format!("<li><a href=\"{n}.html\">{n}</a>{lock}</li>")
        })
        .collect();
    let list = if items.is_empty() {
        "<p>No live stream is running.</p>".to_string()
    } else {
        format!("<ul>{items}</ul>")
    };
    page("Live streams", &format!("<h1>Live streams</h1>{list}"))
}

/// The player: hls.js where it is served (and the browser has Media Source Extensions),
/// else the browser's own HLS (Safari, iOS). `window.meetdPlayer` is the hls.js instance.
/// It plays three segments behind the live edge and jumps back there when it fell eight
/// behind (a busy device), rather than ask for segments that are gone.
pub fn player_html(name: &str) -> String {
    page(
        name,
        &format!(
            "<h1>{name}</h1><video id=\"v\" controls autoplay muted playsinline></video>\
             <p id=\"msg\"></p><script src=\"hls.min.js\"></script><script>\
             (function(){{var v=document.getElementById('v'),src='{name}.m3u8';\
             if(window.Hls&&Hls.isSupported()){{var h=new Hls({{liveSyncDurationCount:3,liveMaxLatencyDurationCount:8}});h.loadSource(src);h.attachMedia(v);\
             window.meetdPlayer=h;h.on(Hls.Events.ERROR,function(e,d){{if(d.fatal){{\
             document.getElementById('msg').textContent='The stream stopped: '+d.details;}}}});}}\
             else if(v.canPlayType('application/vnd.apple.mpegurl')){{v.src=src;}}\
             else{{document.getElementById('msg').textContent='This browser cannot play the stream.';}}\
             }})();</script>"
        ),
    )
}

// ---- The HTTP side (called from src/http.rs) ----

/// Password checks (PBKDF2) running at once; more get 503.
static SIGN_IN_CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn text(status: StatusCode, t: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        t,
    )
        .into_response()
}

/// One request under `/live/`; `secure`: it came over HTTPS.
pub async fn serve(front: &Front, secure: bool, uri: &Uri, headers: &HeaderMap) -> Response {
    let not_found = || text(StatusCode::NOT_FOUND, "no such live stream\n");
    let Some(h) = &front.hls else {
        return not_found();
    };
    let Some(req) = parse(uri.path().strip_prefix("/live/").unwrap_or(""), uri.query()) else {
        return not_found();
    };
    let name = match req {
        Request::Index => return no_store(Html(index_html(&h.listed_names())).into_response()),
        Request::Script => {
            let Some(p) = h.script() else {
                return not_found();
            };
            return match tokio::fs::read(p).await {
                Ok(b) => (
                    [
                        (header::CONTENT_TYPE, "text/javascript"),
                        (header::CACHE_CONTROL, "max-age=3600"),
                    ],
                    b,
                )
                    .into_response(),
                Err(_) => not_found(),
            };
        }
        Request::Page(n) | Request::Playlist(n) | Request::Segment(n, _) => n,
    };
    if !h.is_running(name) {
        return not_found();
    }
    let mut signed_in_until = None;
    if needs_sign_in(name) {
        match sign_in(front, h, headers, uri.query()).await {
            Ok(until) => signed_in_until = until,
            Err(r) => return r,
        }
    }
    let mut resp = match req {
        Request::Page(n) => no_store(Html(player_html(n)).into_response()),
        Request::Playlist(n) => match tokio::fs::read(h.playlist(n)).await {
            Ok(b) => no_store(
                ([(header::CONTENT_TYPE, "application/vnd.apple.mpegurl")], b).into_response(),
            ),
            // Running, but the encoder has not written its first segment yet.
            Err(_) => not_found(),
        },
        Request::Segment(_, file) => match tokio::fs::read(h.file(file)).await {
            Ok(b) => (
                [
                    (header::CONTENT_TYPE, "video/mp2t"),
                    (header::CACHE_CONTROL, "private, max-age=60"),
                ],
                b,
            )
                .into_response(),
            Err(_) => not_found(),
        },
        Request::Index | Request::Script => not_found(),
    };
    if let Some(until) = signed_in_until {
        let max_age = until.saturating_sub(unix_now());
        let c = format!(
            "{COOKIE}={}; Path=/live/; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
            h.cookie(until),
            if secure { "; Secure" } else { "" }
        );
        if let Ok(v) = HeaderValue::from_str(&c) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    resp
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A `U` stream's request: signed in already (Ok(None)), signed in now (Ok(until): set the
/// cookie), or the answer that asks for a sign-in.
async fn sign_in(
    front: &Front,
    h: &Hls,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Option<u64>, Response> {
    let header_str = |n: header::HeaderName| headers.get(n).and_then(|v| v.to_str().ok());
    let now = unix_now();
    let domain = &front.server.config.domain;
    let challenge = || {
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "this live stream is for signed-in accounts\n",
        );
        if let Ok(v) = HeaderValue::from_str(&format!(
            "Basic realm=\"{domain} live streams\", charset=\"UTF-8\""
        )) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        r
    };
    match credentials(
        h,
        header_str(header::COOKIE),
        header_str(header::AUTHORIZATION),
        query,
        now,
    ) {
        Credentials::Cookie => Ok(None),
        Credentials::None => Err(challenge()),
        Credentials::Basic { user, password } => {
            let Some(local) = account_user(&user, domain) else {
                return Err(challenge());
            };
            let Ok(_permit) = SIGN_IN_CHECKS.try_acquire() else {
                return Err(text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many sign-ins at once; try again\n",
                ));
            };
            let creds = match front.storage.credentials(&local, domain).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "live stream sign-in: database");
                    return Err(text(StatusCode::SERVICE_UNAVAILABLE, "try again\n"));
                }
            };
            let ok = match creds {
                Some(c) => tokio::task::spawn_blocking(move || {
                    meetd_xmpp::sasl::password_matches(&c, &password)
                })
                .await
                .unwrap_or(false),
                None => false,
            };
            if ok {
                Ok(Some(now + SIGN_IN_SECS))
            } else {
                tracing::info!(user = %local, "live stream sign-in refused");
                Err(challenge())
            }
        }
        Credentials::Token(t) => {
            let Some(tokens) = front.server.token_authority() else {
                return Err(challenge());
            };
            match tokens.verify(&t, None).await {
                Ok(id) => Ok(Some(id.expires.unwrap_or(u64::MAX).min(now + SIGN_IN_SECS))),
                Err(e) => {
                    tracing::info!(error = %e, "live stream sign-in: token refused");
                    Err(text(StatusCode::FORBIDDEN, "the token was refused\n"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hls() -> (Hls, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "meetd-hls-test-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        (Hls::new(dir.clone(), None, b"secret").expect("dir"), dir)
    }

    #[test]
    fn paths_name_the_stream_and_nothing_outside() {
        assert_eq!(parse("", None), Some(Request::Index));
        assert_eq!(
            parse("lecture.m3u8", None),
            Some(Request::Playlist("lecture"))
        );
        assert_eq!(parse("lecture.html", None), Some(Request::Page("lecture")));
        assert_eq!(
            parse("my-talk-12.ts", None),
            Some(Request::Segment("my-talk", "my-talk-12.ts"))
        );
        assert_eq!(parse("hls.min.js", None), Some(Request::Script));
        // The seed's player links.
        for q in ["s=lecture.m3u8", "s=lecture", "x=1&s=lecture.m3u8&jwt=abc"] {
            assert_eq!(
                parse("stream5.html", Some(q)),
                Some(Request::Page("lecture")),
                "{q}"
            );
        }
        assert_eq!(parse("stream5.html", Some("s=../etc.m3u8")), None);
        // Without `s=`, a stream named stream5.
        assert_eq!(parse("stream5.html", None), Some(Request::Page("stream5")));
        for bad in [
            "../x.m3u8",
            "a/b.m3u8",
            ".hidden.m3u8",
            "x.ts",
            "x-.ts",
            "x-1a.ts",
            "x-1.ts.tmp",
            "x.mp4",
            "%2e%2e.m3u8",
        ] {
            assert_eq!(parse(bad, None), None, "{bad}");
        }
    }

    #[test]
    fn x_names_are_unlisted_and_u_names_need_a_sign_in() {
        let (h, dir) = hls();
        for n in ["lecture", "Xsecret", "Ustaff"] {
            assert!(h.begin(n));
        }
        assert!(!h.begin("lecture"), "one stream per name");
        assert_eq!(h.listed_names(), ["Ustaff", "lecture"]);
        assert!(needs_sign_in("Ustaff") && !needs_sign_in("lecture") && !needs_sign_in("u1"));
        assert!(!listed("Xsecret") && listed("xsmall"));
        let index = index_html(&h.listed_names());
        assert!(index.contains("lecture.html") && !index.contains("Xsecret"));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn an_ended_stream_leaves_no_files_and_others_keep_theirs() {
        let (h, dir) = hls();
        h.begin("a");
        h.begin("a-b");
        for f in [
            "a.m3u8",
            "a-0.ts",
            "a-1.ts",
            "a-2.ts.tmp",
            "a-b.m3u8",
            "a-b-0.ts",
        ] {
            std::fs::write(dir.join(f), b"x").expect("write");
        }
        h.end("a");
        assert!(!h.is_running("a") && h.is_running("a-b"));
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["a-b-0.ts", "a-b.m3u8"]);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn the_cookie_is_signed_and_expires() {
        let (h, dir) = hls();
        let c = h.cookie(1000);
        assert!(h.cookie_ok(&c, 999) && h.cookie_ok(&c, 1000));
        assert!(!h.cookie_ok(&c, 1001), "expired");
        assert!(
            !h.cookie_ok(&c.replace("1000.", "9999."), 999),
            "forged expiry"
        );
        assert!(!h.cookie_ok("1000.AAAA", 10) && !h.cookie_ok("junk", 0));
        let dir2 =
            std::env::temp_dir().join(format!("meetd-hls-test-other-{}", std::process::id()));
        let other = Hls::new(dir2.clone(), None, b"another secret").expect("dir");
        assert!(!other.cookie_ok(&c, 10), "another key");
        std::fs::remove_dir_all(dir).ok();
        std::fs::remove_dir_all(dir2).ok();
    }

    #[test]
    fn credentials_from_cookie_basic_or_token() {
        let (h, dir) = hls();
        let c = h.cookie(100);
        let cookie = format!("a=b; {COOKIE}={c}");
        assert_eq!(
            credentials(&h, Some(&cookie), None, None, 50),
            Credentials::Cookie
        );
        // alice:pw
        assert_eq!(
            credentials(&h, Some(&cookie), Some("Basic YWxpY2U6cHc="), None, 200),
            Credentials::Basic {
                user: "alice".into(),
                password: "pw".into()
            }
        );
        assert_eq!(
            credentials(&h, None, None, Some("x=1&jwt=abc.def.ghi"), 0),
            Credentials::Token("abc.def.ghi".into())
        );
        assert_eq!(
            credentials(&h, None, Some("Basic !!!"), Some("jwt="), 0),
            Credentials::None
        );
        assert_eq!(
            account_user("Alice", "meet.jitsi").as_deref(),
            Some("alice")
        );
        assert_eq!(
            account_user("alice@Meet.Jitsi", "meet.jitsi").as_deref(),
            Some("alice")
        );
        assert_eq!(account_user("alice@evil.org", "meet.jitsi"), None);
        assert_eq!(account_user("@meet.jitsi", "meet.jitsi"), None);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn the_player_plays_the_streams_playlist() {
        let p = player_html("lecture");
        assert!(p.contains("src='lecture.m3u8'") && p.contains("hls.min.js"));
    }
}
