//! XMPP-over-WebSocket load benchmark: meetd against Debian's Prosody.
//!
//! `cargo bench --bench xmpp_load [-- --sessions N --pairs P --seconds S --window W --no-prosody
//!  --prosody-gc incremental|generational]`
//!
//! For each server (run one after the other, alone on the machine, on a free loopback port):
//! 1. open N WebSocket sessions (RFC 7395), SASL ANONYMOUS login and resource bind, 200 at a
//!    time; read the server's VmRSS before and after (sessions idle for 2 s): KB per session;
//! 2. routing throughput: P pairs of those sessions, each side keeping W one-to-one chat
//!    messages in flight to its partner (every message received is answered with one more),
//!    1 s warm-up then S s measured: messages received by the clients per second.
//!
//! Prosody runs only if `prosody` is on PATH (this bench never installs it). All traffic goes
//! to 127.0.0.1; every loop is bounded in count and time; both servers are killed on exit,
//! error or panic.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

const DOMAIN: &str = "meet.jitsi";
const LOGIN_BATCH: usize = 200;
const LOGIN_TIMEOUT: Duration = Duration::from_secs(20);
const START_TIMEOUT: Duration = Duration::from_secs(20);
const IDLE_SETTLE: Duration = Duration::from_secs(2);
const WARMUP: Duration = Duration::from_secs(1);
const PROSODY_TEMPLATE: &str = include_str!("prosody.cfg.lua.in");
const MEETD_CONFIG: &str = "\
[limits]
max_sessions_per_ip = 100000
max_sessions = 100000
stanza_rate_per_second = 1000000
stanza_burst = 1000000
";

type Ws = WebSocketStream<tokio::net::TcpStream>;

#[derive(Clone)]
struct Opts {
    sessions: usize,
    pairs: usize,
    seconds: u64,
    window: usize,
    prosody: bool,
    /// Prosody's `gc` mode (e.g. generational); None keeps Prosody's default (incremental).
    prosody_gc: Option<String>,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        sessions: 2000,
        pairs: 100,
        seconds: 10,
        window: 16,
        prosody: true,
        prosody_gc: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--sessions" => o.sessions = num("--sessions")? as usize,
            "--pairs" => o.pairs = num("--pairs")? as usize,
            "--seconds" => o.seconds = num("--seconds")?,
            "--window" => o.window = num("--window")? as usize,
            "--no-prosody" => o.prosody = false,
            "--prosody-gc" => match args.next().as_deref() {
                Some(m @ ("incremental" | "generational")) => o.prosody_gc = Some(m.to_string()),
                _ => return Err("--prosody-gc needs incremental or generational".into()),
            },
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            other => eprintln!("xmpp_load: ignoring argument {other:?}"),
        }
    }
    if o.sessions == 0 || o.pairs == 0 || o.window == 0 || o.seconds == 0 {
        return Err("--sessions, --pairs, --window and --seconds must be positive".into());
    }
    if o.pairs * 2 > o.sessions {
        return Err(format!(
            "--pairs {} needs {} sessions, only {} requested",
            o.pairs,
            o.pairs * 2,
            o.sessions
        ));
    }
    if o.seconds > 600 || o.sessions > 100_000 || o.window > 10_000 {
        return Err("limits: --seconds <= 600, --sessions <= 100000, --window <= 10000".into());
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// Server processes

/// A server child process and its temporary directory; killed and removed on drop (also when
/// unwinding from a panic).
struct Server {
    name: &'static str,
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
    port: u16,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Polls `path` until it answers 200, the process exits, or START_TIMEOUT passes.
    fn wait_ready(&mut self, path: &str) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if !self.alive() {
                return Err(format!(
                    "{} exited during start-up; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail(30)
                ));
            }
            if http_status(self.port, path) == Some(200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "{} not ready after {:?}; log:\n{}",
            self.name,
            START_TIMEOUT,
            self.log_tail(30)
        ))
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("XMPP_LOAD_KEEP").is_some() {
            eprintln!("{}: kept {}", self.name, self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn temp_dir(tag: &str) -> Result<PathBuf, String> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("xmpp_load-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn log_file(path: &Path) -> Result<(Stdio, Stdio), String> {
    let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let g = f.try_clone().map_err(|e| e.to_string())?;
    Ok((Stdio::from(f), Stdio::from(g)))
}

fn meetd_binary() -> PathBuf {
    option_env!("CARGO_BIN_EXE_meetd")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CARGO_BIN_EXE_meetd").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target/release/meetd"))
}

fn start_meetd() -> Result<Server, String> {
    let dir = temp_dir("meetd")?;
    let port = free_port()?;
    let cfg = dir.join("meetd.toml");
    std::fs::write(&cfg, MEETD_CONFIG).map_err(|e| e.to_string())?;
    let log = dir.join("meetd.log");
    let (out, err) = log_file(&log)?;
    let bin = meetd_binary();
    let child = Command::new(&bin)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--http", &format!("127.0.0.1:{port}")])
        .args(["--https", "off", "--c2s", "off", "--component", "off"])
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    let mut s = Server {
        name: "meetd",
        child: Some(child),
        dir,
        log,
        port,
    };
    s.wait_ready("/about/health")?;
    Ok(s)
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn start_prosody(bin: &Path, gc: Option<&str>) -> Result<Server, String> {
    let dir = temp_dir("prosody")?;
    let port = free_port()?;
    for sub in ["data", "certs"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
    }
    let dir_str = dir.to_str().ok_or("temp dir is not UTF-8")?;
    if dir_str.contains('"') || dir_str.contains('\\') {
        return Err(format!("unsuitable temp dir {dir_str}"));
    }
    let cfg_text = PROSODY_TEMPLATE
        .replace("@DIR@", dir_str)
        .replace("@HTTP_PORT@", &port.to_string())
        .replace(
            "@GC@",
            &gc.map(|m| format!("gc = {{ mode = \"{m}\" }}"))
                .unwrap_or_else(|| "-- gc: Prosody's default (incremental)".into()),
        );
    let cfg = dir.join("prosody.cfg.lua");
    std::fs::write(&cfg, cfg_text).map_err(|e| e.to_string())?;
    let log = dir.join("prosody.log");
    let (out, err) = log_file(&dir.join("prosody.stdout"))?;
    // /usr/bin/prosody is a Lua script: the interpreter keeps the child's pid.
    let child = Command::new(bin)
        .arg("-F")
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    let mut s = Server {
        name: "prosody",
        child: Some(child),
        dir,
        log,
        port,
    };
    s.wait_ready("/xmpp-websocket")?;
    Ok(s)
}

/// Status code of a plain HTTP/1.0 GET on 127.0.0.1:port.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

/// VmRSS of a process in KB.
fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of a process (all threads) in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat; rest starts at field 3.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

// ---------------------------------------------------------------------------------------------
// Client

async fn expect(ws: &mut Ws, needle: &str, step: &str) -> Result<String, String> {
    for _ in 0..16 {
        let m = match ws.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(format!("{step}: {e}")),
            None => return Err(format!("{step}: connection closed")),
        };
        let t = match m {
            Message::Text(t) => t,
            Message::Close(c) => return Err(format!("{step}: websocket close {c:?}")),
            _ => continue,
        };
        if t.contains(needle) {
            return Ok(t.to_string());
        }
        if t.contains("<failure") || t.contains("<close") || t.contains("stream:error") {
            return Err(format!("{step}: {}", t.as_str()));
        }
    }
    Err(format!("{step}: no {needle} in 16 frames"))
}

async fn send(ws: &mut Ws, s: String) -> Result<(), String> {
    ws.send(Message::text(s))
        .await
        .map_err(|e| format!("send: {e}"))
}

async fn login(port: u16) -> Result<(Ws, String), String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut req = format!("ws://127.0.0.1:{port}/xmpp-websocket")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("xmpp"));
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp)
        .await
        .map_err(|e| format!("websocket handshake: {e}"))?;
    let open =
        format!("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='{DOMAIN}' version='1.0'/>");
    send(&mut ws, open.clone()).await?;
    expect(&mut ws, "ANONYMOUS", "features (sasl)").await?;
    send(
        &mut ws,
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'/>".into(),
    )
    .await?;
    expect(&mut ws, "<success", "sasl").await?;
    send(&mut ws, open).await?;
    expect(
        &mut ws,
        "urn:ietf:params:xml:ns:xmpp-bind",
        "features (bind)",
    )
    .await?;
    send(
        &mut ws,
        "<iq xmlns='jabber:client' id='b' type='set'>\
         <bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>"
            .into(),
    )
    .await?;
    let r = expect(&mut ws, "<jid>", "bind").await?;
    let jid = r
        .split_once("<jid>")
        .and_then(|(_, rest)| rest.split_once("</jid>"))
        .map(|(j, _)| j.to_string())
        .ok_or_else(|| format!("bind: no jid in {r}"))?;
    Ok((ws, jid))
}

struct Logins {
    sessions: Vec<(Ws, String)>,
    failures: usize,
    errors: Vec<String>,
    elapsed: Duration,
}

async fn login_all(port: u16, n: usize) -> Logins {
    let start = Instant::now();
    let mut results = futures_util::stream::iter(0..n)
        .map(|_| tokio::spawn(tokio::time::timeout(LOGIN_TIMEOUT, login(port))))
        .buffer_unordered(LOGIN_BATCH);
    let mut out = Logins {
        sessions: Vec::with_capacity(n),
        failures: 0,
        errors: Vec::new(),
        elapsed: Duration::ZERO,
    };
    while let Some(r) = results.next().await {
        let err = match r {
            Ok(Ok(Ok(s))) => {
                out.sessions.push(s);
                continue;
            }
            Ok(Ok(Err(e))) => e,
            Ok(Err(_)) => format!("login timed out after {LOGIN_TIMEOUT:?}"),
            Err(e) => format!("task: {e}"),
        };
        out.failures += 1;
        if out.errors.len() < 5 && !out.errors.contains(&err) {
            out.errors.push(err);
        }
    }
    out.elapsed = start.elapsed();
    out
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    error_stanzas: AtomicU64,
    disconnects: AtomicU64,
    sessions_done: AtomicU64,
}

/// One side of a pair: sends `window` messages, then answers every message with one more,
/// until `stop`. Reads whatever is already buffered before writing the replies in one flush.
async fn pump(
    mut ws: Ws,
    msg: Utf8Bytes,
    window: usize,
    c: Arc<Counters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Ws {
    let mut failed = false;
    for _ in 0..window {
        if ws.feed(Message::Text(msg.clone())).await.is_err() {
            failed = true;
            break;
        }
    }
    if failed || ws.flush().await.is_err() {
        c.disconnects.fetch_add(1, Ordering::Relaxed);
        return ws;
    }
    // Returns Some(replies) for a frame, None when the connection is gone.
    let classify = |m: Option<Result<Message, _>>, c: &Counters| -> Option<usize> {
        match m {
            Some(Ok(Message::Text(t))) => {
                if t.starts_with("<message") {
                    if t.contains("type='error'") || t.contains("type=\"error\"") {
                        c.error_stanzas.fetch_add(1, Ordering::Relaxed);
                    }
                    // An error bounce is answered too, keeping the window full.
                    Some(1)
                } else {
                    Some(0)
                }
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => None,
            Some(Ok(_)) => Some(0),
        }
    };
    'outer: loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            m = ws.next() => {
                let mut replies = match classify(m, &c) {
                    Some(r) => r,
                    None => { c.disconnects.fetch_add(1, Ordering::Relaxed); break; }
                };
                let mut received = replies as u64;
                // Drain frames that are already here (bounded), then answer them all.
                for _ in 0..256 {
                    match ws.next().now_or_never() {
                        None => break,
                        Some(m) => match classify(m, &c) {
                            Some(r) => { replies += r; received += r as u64; }
                            None => {
                                c.disconnects.fetch_add(1, Ordering::Relaxed);
                                break 'outer;
                            }
                        },
                    }
                }
                c.received.fetch_add(received, Ordering::Relaxed);
                for _ in 0..replies {
                    if ws.feed(Message::Text(msg.clone())).await.is_err() {
                        c.disconnects.fetch_add(1, Ordering::Relaxed);
                        break 'outer;
                    }
                }
                if ws.flush().await.is_err() {
                    c.disconnects.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
    c.sessions_done.fetch_add(1, Ordering::Relaxed);
    ws
}

fn chat(to: &str) -> Utf8Bytes {
    Utf8Bytes::from(format!(
        "<message xmlns='jabber:client' to='{to}' type='chat'><body>x</body></message>"
    ))
}

// ---------------------------------------------------------------------------------------------
// Measurement

struct Report {
    name: &'static str,
    ok: usize,
    failed: usize,
    login_secs: f64,
    rss_before: u64,
    rss_after: u64,
    kb_per_session: f64,
    rate: f64,
    cpu_pct: f64,
    error_stanzas: u64,
    disconnects: u64,
    alive_after: bool,
}

async fn measure(server: &mut Server, o: &Opts) -> Result<Report, String> {
    let pid = server.pid();
    // Let start-up settle, then take the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_kb(pid).ok_or("cannot read VmRSS")?;
    eprintln!(
        "[{}] pid {pid}: logging in {} sessions",
        server.name, o.sessions
    );
    let logins = login_all(server.port, o.sessions).await;
    eprintln!(
        "[{}] {} bound, {} failed in {:.1} s",
        server.name,
        logins.sessions.len(),
        logins.failures,
        logins.elapsed.as_secs_f64()
    );
    for e in &logins.errors {
        eprintln!("[{}]   login error: {e}", server.name);
    }
    tokio::time::sleep(IDLE_SETTLE).await;
    let rss_after = rss_kb(pid).ok_or_else(|| {
        format!(
            "{} is gone after logins; log:\n{}",
            server.name,
            server.log_tail(30)
        )
    })?;
    let ok = logins.sessions.len();
    let kb_per_session = if ok > 0 {
        (rss_after as f64 - rss_before as f64) / ok as f64
    } else {
        f64::NAN
    };

    let mut sessions = logins.sessions;
    if sessions.len() < o.pairs * 2 {
        return Err(format!(
            "{}: only {} sessions bound, {} pairs need {}",
            server.name,
            sessions.len(),
            o.pairs,
            o.pairs * 2
        ));
    }
    // The pairs come from the end; the rest stay open (idle) during the routing test.
    let mut active = sessions.split_off(sessions.len() - o.pairs * 2);
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    eprintln!(
        "[{}] routing: {} pairs, window {}, {} s (+{} s warm-up)",
        server.name,
        o.pairs,
        o.window,
        o.seconds,
        WARMUP.as_secs()
    );
    while active.len() >= 2 {
        let (wb, jb) = active.pop().unwrap();
        let (wa, ja) = active.pop().unwrap();
        tasks.spawn(pump(
            wa,
            chat(&jb),
            o.window,
            counters.clone(),
            stop_rx.clone(),
        ));
        tasks.spawn(pump(
            wb,
            chat(&ja),
            o.window,
            counters.clone(),
            stop_rx.clone(),
        ));
    }
    tokio::time::sleep(WARMUP).await;
    let (c0, t0, k0) = (
        counters.received.load(Ordering::Relaxed),
        Instant::now(),
        cpu_ticks(pid).unwrap_or(0),
    );
    tokio::time::sleep(Duration::from_secs(o.seconds)).await;
    let (c1, t1, k1) = (
        counters.received.load(Ordering::Relaxed),
        Instant::now(),
        cpu_ticks(pid).unwrap_or(0),
    );
    let _ = stop_tx.send(true);
    let secs = (t1 - t0).as_secs_f64();
    let rate = (c1 - c0) as f64 / secs;
    let cpu_pct = 100.0 * (k1.saturating_sub(k0)) as f64 / clock_ticks_per_sec() as f64 / secs;
    // Collect the pumps (bounded), keeping their sockets until the end.
    let mut kept = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(r) = tasks.join_next().await {
            if let Ok(ws) = r {
                kept.push(ws);
            }
        }
    })
    .await;
    tasks.abort_all();
    let alive_after = server.alive();
    let report = Report {
        name: server.name,
        ok,
        failed: logins.failures,
        login_secs: logins.elapsed.as_secs_f64(),
        rss_before,
        rss_after,
        kb_per_session,
        rate,
        cpu_pct,
        error_stanzas: counters.error_stanzas.load(Ordering::Relaxed),
        disconnects: counters.disconnects.load(Ordering::Relaxed),
        alive_after,
    };
    // Close everything quickly: dropping the sockets resets the connections.
    drop(kept);
    drop(sessions);
    Ok(report)
}

fn run_one(rt: &tokio::runtime::Runtime, mut server: Server, o: &Opts) -> Result<Report, String> {
    let r = rt.block_on(measure(&mut server, o));
    if let Err(e) = &r {
        eprintln!(
            "[{}] failed: {e}\n[{}] log tail:\n{}",
            server.name,
            server.name,
            server.log_tail(20)
        );
    } else if let Ok(r) = &r
        && (r.failed > 0 || r.disconnects > 0 || r.error_stanzas > 0 || !r.alive_after)
    {
        eprintln!(
            "[{}] problems seen; log tail ({}):\n{}",
            server.name,
            server.log.display(),
            server.log_tail(20)
        );
    }
    server.stop();
    r
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("xmpp_load: {e}");
            std::process::exit(2);
        }
    };
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    let mut reports = Vec::new();
    let mut failed = false;

    match start_meetd() {
        Ok(s) => match run_one(&rt, s, &o) {
            Ok(r) => reports.push(r),
            Err(_) => failed = true,
        },
        Err(e) => {
            eprintln!("meetd: {e}");
            failed = true;
        }
    }

    if o.prosody {
        match find_in_path("prosody") {
            None => println!("prosody not installed, skipping baseline"),
            Some(bin) => match start_prosody(&bin, o.prosody_gc.as_deref()) {
                Ok(s) => match run_one(&rt, s, &o) {
                    Ok(r) => reports.push(r),
                    Err(_) => failed = true,
                },
                Err(e) => {
                    eprintln!("prosody: {e}");
                    failed = true;
                }
            },
        }
    }
    rt.shutdown_timeout(Duration::from_secs(2));

    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nxmpp_load: nproc {nproc}, sessions {}, pairs {}, window {}, {} s measured, prosody gc {}",
        o.sessions,
        o.pairs,
        o.window,
        o.seconds,
        o.prosody_gc.as_deref().unwrap_or("default")
    );
    let _ = writeln!(
        t,
        "{:<8} {:>9} {:>6} {:>8} {:>12} {:>12} {:>11} {:>12} {:>8} {:>6} {:>6} {:>5}",
        "server",
        "sessions",
        "failed",
        "login s",
        "RSS before",
        "RSS after",
        "KB/session",
        "stanzas/s",
        "srv CPU",
        "errors",
        "disc",
        "alive"
    );
    for r in &reports {
        let _ = writeln!(
            t,
            "{:<8} {:>9} {:>6} {:>8.1} {:>9} KB {:>9} KB {:>11.2} {:>12.0} {:>7.0}% {:>6} {:>6} {:>5}",
            r.name,
            r.ok,
            r.failed,
            r.login_secs,
            r.rss_before,
            r.rss_after,
            r.kb_per_session,
            r.rate,
            r.cpu_pct,
            r.error_stanzas,
            r.disconnects,
            if r.alive_after { "yes" } else { "NO" }
        );
    }
    let m = reports.iter().find(|r| r.name == "meetd");
    let p = reports.iter().find(|r| r.name == "prosody");
    if let Some(m) = m {
        let _ = writeln!(
            t,
            "goals (meetd): memory {:.2} KB/session (< 16: {}), routing {:.0} stanzas/s (>= 100000: {})",
            m.kb_per_session,
            if m.kb_per_session < 16.0 {
                "met"
            } else {
                "NOT met"
            },
            m.rate,
            if m.rate >= 100_000.0 {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    if let (Some(m), Some(p)) = (m, p) {
        let _ = writeln!(
            t,
            "ratios: memory prosody/meetd = {:.2}x   throughput meetd/prosody = {:.2}x",
            p.kb_per_session / m.kb_per_session,
            m.rate / p.rate
        );
    }
    print!("{t}");
    if failed {
        std::process::exit(1);
    }
}
