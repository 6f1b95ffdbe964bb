//! Shared by the benches (`xmpp_load`, `muc_join`, `turn_relay`, …): starting and stopping
//! meetd, Debian's Prosody and coturn on free loopback ports, anonymous WebSocket logins,
//! /proc readings.
//!
//! Each bench uses only part of this module.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

pub const DOMAIN: &str = "meet.jitsi";
pub const LOGIN_BATCH: usize = 200;
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(20);
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
const PROSODY_TEMPLATE: &str = include_str!("../prosody.cfg.lua.in");

pub type Ws = WebSocketStream<tokio::net::TcpStream>;

// ---------------------------------------------------------------------------------------------
// Server processes

/// A server child process and its temporary directory; killed and removed on drop (also when
/// unwinding from a panic). `XMPP_LOAD_KEEP=1` keeps the directory (config and logs).
pub struct Server {
    pub name: &'static str,
    child: Option<Child>,
    dir: PathBuf,
    pub log: PathBuf,
    pub port: u16,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Log lines containing any of `needles` (at most `max`, the last ones).
    pub fn log_grep(&self, needles: &[&str], max: usize) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let hits: Vec<String> = text
            .lines()
            .filter(|l| needles.iter().any(|n| l.contains(n)))
            .map(str::to_string)
            .collect();
        hits[hits.len().saturating_sub(max)..].to_vec()
    }

    pub fn alive(&mut self) -> bool {
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

    pub fn stop(&mut self) {
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

/// A fresh directory under $TMPDIR named after the bench and the server.
fn temp_dir(bench: &str, tag: &str) -> Result<PathBuf, String> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("{bench}-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

pub fn free_port() -> Result<u16, String> {
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

/// Starts the release meetd with `config` (TOML) on a free loopback port, HTTP/WebSocket only.
pub fn start_meetd(bench: &str, config: &str) -> Result<Server, String> {
    let dir = temp_dir(bench, "meetd")?;
    let port = free_port()?;
    let cfg = dir.join("meetd.toml");
    std::fs::write(&cfg, config).map_err(|e| e.to_string())?;
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

pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Starts Prosody from `benches/prosody.cfg.lua.in` on a free loopback port. `gc` is Prosody's
/// gc mode (None: its default); `components` is appended to the config (Component sections).
pub fn start_prosody(
    bench: &str,
    bin: &Path,
    gc: Option<&str>,
    components: &str,
) -> Result<Server, String> {
    let dir = temp_dir(bench, "prosody")?;
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
        )
        .replace("@COMPONENTS@", components);
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

/// Starts Debian's coturn (`turnserver`) on a free loopback port with the REST credential
/// scheme (`secret`) and relayed addresses on 127.0.0.1 (loopback peers allowed), UDP only,
/// no TLS; ready once it answers a STUN binding request. `Server::port` is its UDP port.
pub fn start_coturn(bench: &str, bin: &Path, secret: &str) -> Result<Server, String> {
    let dir = temp_dir(bench, "coturn")?;
    let port = free_port()?;
    let log = dir.join("coturn.log");
    let (out, err) = log_file(&log)?;
    let child = Command::new(bin)
        .args([
            "-n",
            "--listening-ip",
            "127.0.0.1",
            "--relay-ip",
            "127.0.0.1",
        ])
        .args(["--listening-port", &port.to_string()])
        .args(["--min-port", "40000", "--max-port", "44999"])
        .args(["--use-auth-secret", "--static-auth-secret", secret])
        .args([
            "--realm",
            DOMAIN,
            "--allow-loopback-peers",
            "--no-tcp",
            "--no-tls",
        ])
        .args([
            "--no-dtls",
            "--no-cli",
            "--log-file",
            "stdout",
            "--simple-log",
        ])
        .arg("--pidfile")
        .arg(dir.join("coturn.pid"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    let s = Server {
        name: "coturn",
        child: Some(child),
        dir,
        log,
        port,
    };
    // A STUN binding request (RFC 5389 §6): type 0x0001, length 0, the magic cookie, an id.
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    probe
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let mut req = vec![0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42];
    req.extend_from_slice(&[7; 12]);
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        let _ = probe.send_to(&req, ("127.0.0.1", port));
        let mut buf = [0u8; 512];
        if probe
            .recv(&mut buf)
            .is_ok_and(|n| n >= 20 && buf[0..2] == [1, 1])
        {
            return Ok(s);
        }
    }
    Err(format!(
        "coturn did not answer STUN on {port}: {}",
        s.log_tail(20)
    ))
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
/// Run `run_one` against meetd and, when `prosody` is set and Prosody is installed, against
/// Prosody (`prosody` = (gc setting, extra config)) as the baseline in the same run.
/// Returns the reports and whether any run failed.
pub fn run_meetd_and_prosody<R>(
    bench: &str,
    meetd_config: &str,
    prosody: Option<(Option<&str>, &str)>,
    mut run_one: impl FnMut(Server) -> Result<R, String>,
) -> (Vec<R>, bool) {
    let mut reports = Vec::new();
    let mut failed = false;
    let mut record = |name: &str, started: Result<Server, String>| match started {
        Ok(s) => match run_one(s) {
            Ok(r) => reports.push(r),
            Err(_) => failed = true,
        },
        Err(e) => {
            eprintln!("{name}: {e}");
            failed = true;
        }
    };
    record("meetd", start_meetd(bench, meetd_config));
    if let Some((gc, extra)) = prosody {
        match find_in_path("prosody") {
            None => println!("prosody not installed, skipping baseline"),
            Some(bin) => record("prosody", start_prosody(bench, &bin, gc, extra)),
        }
    }
    (reports, failed)
}

pub fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of a process (all threads) in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat; rest starts at field 3.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub fn clock_ticks_per_sec() -> u64 {
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

pub async fn expect(ws: &mut Ws, needle: &str, step: &str) -> Result<String, String> {
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

pub async fn send(ws: &mut Ws, s: String) -> Result<(), String> {
    ws.send(Message::text(s))
        .await
        .map_err(|e| format!("send: {e}"))
}

/// WebSocket (RFC 7395) session on 127.0.0.1:port: SASL ANONYMOUS and resource bind.
/// Returns the stream and the bound full JID.
pub async fn login(port: u16) -> Result<(Ws, String), String> {
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

pub struct Logins {
    pub sessions: Vec<(Ws, String)>,
    pub failures: usize,
    pub errors: Vec<String>,
    pub elapsed: Duration,
}

/// `n` logins, LOGIN_BATCH at a time, each bounded by LOGIN_TIMEOUT.
pub async fn login_all(port: u16, n: usize) -> Logins {
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
