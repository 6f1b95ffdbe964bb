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

mod common;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use common::{
    Server, Ws, clock_ticks_per_sec, cpu_ticks, login_all, rss_kb, run_meetd_and_prosody,
};

const BENCH: &str = "xmpp_load";
const IDLE_SETTLE: Duration = Duration::from_secs(2);
const WARMUP: Duration = Duration::from_secs(1);
const MEETD_CONFIG: &str = "\
[limits]
max_sessions_per_ip = 100000
max_sessions = 100000
stanza_rate_per_second = 1000000
stanza_burst = 1000000
";

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
// Client

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

    let (reports, failed) = run_meetd_and_prosody(
        BENCH,
        MEETD_CONFIG,
        o.prosody.then_some((o.prosody_gc.as_deref(), "")),
        |s| run_one(&rt, s, &o),
    );
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
