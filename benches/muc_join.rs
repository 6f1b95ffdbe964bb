//! MUC join and presence fan-out benchmark: meetd against Debian's Prosody.
//!
//! `cargo bench --bench muc_join [-- --occupants N --updates U --no-prosody]`
//!
//! For each server (run one after the other, alone on the machine, on a free loopback port):
//! 1. log in N anonymous WebSocket sessions (not timed);
//! 2. joins: the N sessions join one room on `muc.meet.jitsi` one after another, each with a
//!    Jitsi-like join presence; a join is done when the joiner receives its self-presence
//!    (status 110), then the next one starts. Reported: total time (first join sent -> last
//!    self-presence received), per-join p50/p99/max, whether every joiner held the full roster
//!    (the presences of all earlier occupants before its self-presence), and every presence
//!    stanza the clients received (N^2 expected: joiner i gets i + 1, the i others get one);
//!    fan-out rate = those presences / (first join sent -> last presence received);
//! 3. updates: with all N in the room, one occupant sends U presence updates (a changing
//!    `<SourceInfo>`) back to back; time until each of the N - 1 others received all U;
//!    fan-out rate = U * N (the sender's echoes included) / that time.
//!
//! Prosody runs only if `prosody` is on PATH (this bench never installs it). All traffic goes
//! to 127.0.0.1; every wait is bounded; both servers are killed on exit, error or panic.

mod common;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use common::{
    Server, Ws, clock_ticks_per_sec, cpu_ticks, login_all, rss_kb, run_meetd_and_prosody,
};

const BENCH: &str = "muc_join";
const MUC: &str = "muc.meet.jitsi";
const ROOM: &str = "benchroom";
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
const UPDATES_TIMEOUT: Duration = Duration::from_secs(60);
/// Quiet time after which no more stanzas of a phase are expected.
const SETTLE_QUIET: Duration = Duration::from_millis(300);
const SETTLE_MAX: Duration = Duration::from_secs(10);
const GOAL_JOIN_ALL: Duration = Duration::from_secs(2);
const MEETD_CONFIG: &str = "\
[muc]
room_creation = \"anyone\"
max_presence_bytes = 16384
message_rate_per_second = 1000
message_burst = 1000

[limits]
max_sessions_per_ip = 100000
max_sessions = 100000
stanza_rate_per_second = 1000000
stanza_burst = 1000000
";
/// Prosody 0.12 option names from /usr/lib/prosody/modules/muc/*.lua.
const PROSODY_MUC: &str = "\
Component \"muc.meet.jitsi\" \"muc\"
    restrict_room_creation = false
    muc_room_locking = false
    muc_room_default_public_jids = true
    muc_tombstones = false
    muc_room_default_history_length = 0
    max_history_messages = 0
";

type Sink = SplitSink<Ws, Message>;

struct Opts {
    occupants: usize,
    updates: u64,
    prosody: bool,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        occupants: 200,
        updates: 50,
        prosody: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--occupants" => o.occupants = num("--occupants")? as usize,
            "--updates" => o.updates = num("--updates")?,
            "--no-prosody" => o.prosody = false,
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            other => eprintln!("muc_join: ignoring argument {other:?}"),
        }
    }
    if !(2..=5000).contains(&o.occupants) || !(1..=1000).contains(&o.updates) {
        return Err("limits: 2 <= --occupants <= 5000, 1 <= --updates <= 1000".into());
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// Stanzas

fn nick(i: usize) -> String {
    format!("ep{i:06x}")
}

/// A Jitsi Meet join presence (as lib-jitsi-meet sends it, minus the features it negotiates).
/// `seq` None: the join (with the MUC `<x/>`); Some(k): presence update k.
fn presence(i: usize, seq: Option<u64>) -> String {
    let n = nick(i);
    let (x, video_muted, marker) = match seq {
        None => (
            "<x xmlns='http://jabber.org/protocol/muc'/>".to_string(),
            true,
            String::new(),
        ),
        Some(k) => (
            String::new(),
            k % 2 == 0,
            format!("<bench-upd>{k}</bench-upd>"),
        ),
    };
    format!(
        "<presence xmlns='jabber:client' to='{ROOM}@{MUC}/{n}'>{x}\
         <stats-id>Bench-{i}</stats-id>\
         <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' \
         node='https://jitsi.org/jitsi-meet' ver='MRxtEsp8G6YNyfV6RwQ5q9qdZAo='/>\
         <SourceInfo>{{\"{n}-a0\":{{\"muted\":true}},\"{n}-v0\":{{\"muted\":{video_muted}}}}}\
         </SourceInfo>\
         <jitsi_participant_codecList>av1,vp9,vp8,h264</jitsi_participant_codecList>\
         <nick xmlns='http://jabber.org/protocol/nick'>User {i}</nick>{marker}</presence>"
    )
}

fn is_error(t: &str) -> bool {
    t.contains("type='error'") || t.contains("type=\"error\"")
}

fn is_self_presence(t: &str) -> bool {
    t.contains("code='110'") || t.contains("code=\"110\"")
}

// ---------------------------------------------------------------------------------------------
// Readers: one task per session, counting what arrives

enum Event {
    /// The self-presence arrived after `roster` presences of other occupants.
    Joined {
        idx: usize,
        at: Instant,
        roster: u64,
    },
    /// All `updates` presence updates arrived.
    UpdatesDone {
        idx: usize,
        at: Instant,
    },
    Error {
        idx: usize,
        text: String,
    },
    Closed {
        idx: usize,
        why: String,
    },
}

struct Shared {
    base: Instant,
    presences: AtomicU64,
    messages: AtomicU64,
    other_frames: AtomicU64,
    error_stanzas: AtomicU64,
    /// When the latest presence arrived, in ns since `base`.
    last_presence_ns: AtomicU64,
    /// Updates each session waits for.
    updates: u64,
    tx: mpsc::UnboundedSender<Event>,
}

impl Shared {
    fn since_base(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }
}

async fn reader(idx: usize, mut rx: SplitStream<Ws>, sh: Arc<Shared>) {
    let mut joined = false;
    let mut roster = 0u64;
    let mut updates = 0u64;
    let why = loop {
        let t = match rx.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(c))) => break format!("websocket close {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e.to_string(),
            None => break "connection closed".to_string(),
        };
        let now = Instant::now();
        if t.starts_with("<presence") {
            sh.presences.fetch_add(1, Ordering::Relaxed);
            sh.last_presence_ns
                .fetch_max(sh.since_base(now), Ordering::Relaxed);
            if is_error(&t) {
                sh.error_stanzas.fetch_add(1, Ordering::Relaxed);
                let text = t.to_string();
                let _ = sh.tx.send(Event::Error { idx, text });
            } else if !joined {
                if is_self_presence(&t) {
                    joined = true;
                    let _ = sh.tx.send(Event::Joined {
                        idx,
                        at: now,
                        roster,
                    });
                } else {
                    roster += 1;
                }
            } else if t.contains("<bench-upd") {
                updates += 1;
                if updates == sh.updates {
                    let _ = sh.tx.send(Event::UpdatesDone { idx, at: now });
                }
            }
        } else if t.starts_with("<message") {
            sh.messages.fetch_add(1, Ordering::Relaxed);
            if is_error(&t) {
                sh.error_stanzas.fetch_add(1, Ordering::Relaxed);
                let text = t.to_string();
                let _ = sh.tx.send(Event::Error { idx, text });
            }
        } else if t.starts_with("<close") || t.contains("stream:error") {
            break t.to_string();
        } else {
            sh.other_frames.fetch_add(1, Ordering::Relaxed);
        }
    };
    let _ = sh.tx.send(Event::Closed { idx, why });
}

/// Waits until no presence arrived for SETTLE_QUIET (at most SETTLE_MAX).
async fn settle(sh: &Shared) {
    let deadline = Instant::now() + SETTLE_MAX;
    let mut last = sh.presences.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = sh.presences.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= SETTLE_QUIET {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Measurement

struct Report {
    name: &'static str,
    occupants: usize,
    join_bytes: usize,
    join_total: Duration,
    join_p50: Duration,
    join_p99: Duration,
    join_max: Duration,
    short_rosters: usize,
    join_presences: u64,
    join_messages: u64,
    join_delivered: Duration,
    join_fanout: f64,
    join_cpu_pct: f64,
    upd_others: Duration,
    upd_echo: Duration,
    upd_presences: u64,
    upd_fanout: f64,
    upd_cpu_pct: f64,
    rss_before: u64,
    rss_after: u64,
    error_stanzas: u64,
    alive_after: bool,
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Server CPU (all threads) between two tick readings over `over`, in % of one core.
fn cpu_pct(k0: u64, k1: u64, over: Duration) -> f64 {
    100.0 * k1.saturating_sub(k0) as f64 / clock_ticks_per_sec() as f64 / over.as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn measure(server: &mut Server, o: &Opts) -> Result<Report, String> {
    let n = o.occupants;
    let pid = server.pid();
    eprintln!("[{}] pid {pid}: logging in {n} sessions", server.name);
    let logins = login_all(server.port, n).await;
    for e in &logins.errors {
        eprintln!("[{}]   login error: {e}", server.name);
    }
    if logins.sessions.len() < n {
        return Err(format!(
            "only {} of {n} sessions bound",
            logins.sessions.len()
        ));
    }
    let (etx, mut ev) = mpsc::unbounded_channel();
    let sh = Arc::new(Shared {
        base: Instant::now(),
        presences: AtomicU64::new(0),
        messages: AtomicU64::new(0),
        other_frames: AtomicU64::new(0),
        error_stanzas: AtomicU64::new(0),
        last_presence_ns: AtomicU64::new(0),
        updates: o.updates,
        tx: etx,
    });
    let mut readers = tokio::task::JoinSet::new();
    let mut sinks: Vec<Sink> = Vec::with_capacity(n);
    for (idx, (ws, _jid)) in logins.sessions.into_iter().enumerate() {
        let (sink, stream) = ws.split();
        sinks.push(sink);
        readers.spawn(reader(idx, stream, sh.clone()));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_kb(pid).ok_or("cannot read VmRSS")?;

    // Phase 1: sequential joins.
    let join_bytes = presence(n - 1, None).len();
    eprintln!(
        "[{}] {n} sequential joins into {ROOM}@{MUC} ({join_bytes}-byte presence)",
        server.name
    );
    let mut latencies = Vec::with_capacity(n);
    let mut short_rosters = 0;
    let k0 = cpu_ticks(pid).unwrap_or(0);
    let t0 = Instant::now();
    let mut last_joined = t0;
    for (i, sink) in sinks.iter_mut().enumerate() {
        let sent = Instant::now();
        sink.send(Message::text(presence(i, None)))
            .await
            .map_err(|e| format!("join {i}: send: {e}"))?;
        let deadline = tokio::time::Instant::from_std(sent + JOIN_TIMEOUT);
        loop {
            match tokio::time::timeout_at(deadline, ev.recv()).await {
                Err(_) => {
                    return Err(format!("join {i}: no self-presence after {JOIN_TIMEOUT:?}"));
                }
                Ok(None) => return Err("event channel closed".into()),
                Ok(Some(Event::Joined { idx, at, roster })) if idx == i => {
                    latencies.push(at - sent);
                    last_joined = at;
                    if roster != i as u64 {
                        if short_rosters < 3 {
                            eprintln!(
                                "[{}] joiner {i} saw {roster} occupants before its \
                                 self-presence, expected {i}",
                                server.name
                            );
                        }
                        short_rosters += 1;
                    }
                    break;
                }
                Ok(Some(Event::Joined { idx, .. })) => {
                    return Err(format!("session {idx} joined while waiting for {i}"));
                }
                Ok(Some(Event::Error { idx, text })) => {
                    return Err(format!("join {i}: error stanza to {idx}: {text}"));
                }
                Ok(Some(Event::Closed { idx, why })) => {
                    return Err(format!("join {i}: session {idx} closed: {why}"));
                }
                Ok(Some(Event::UpdatesDone { .. })) => {}
            }
        }
    }
    let join_total = last_joined - t0;
    let join_cpu_pct = cpu_pct(k0, cpu_ticks(pid).unwrap_or(0), join_total);
    settle(&sh).await;
    let join_presences = sh.presences.swap(0, Ordering::Relaxed);
    let join_messages = sh.messages.swap(0, Ordering::Relaxed);
    let join_delivered = Duration::from_nanos(
        sh.last_presence_ns
            .load(Ordering::Relaxed)
            .saturating_sub(sh.since_base(t0)),
    );
    let rss_after = rss_kb(pid).unwrap_or(0);
    latencies.sort();
    eprintln!(
        "[{}] joins: {:.0} ms total, {join_presences} presences",
        server.name,
        ms(join_total)
    );

    // Phase 2: one occupant sends `updates` presence updates back to back.
    let sender = n - 1;
    eprintln!(
        "[{}] {} presence updates from occupant {sender} to {n}",
        server.name, o.updates
    );
    let k1 = cpu_ticks(pid).unwrap_or(0);
    let t1 = Instant::now();
    for k in 0..o.updates {
        sinks[sender]
            .feed(Message::text(presence(sender, Some(k))))
            .await
            .map_err(|e| format!("update {k}: send: {e}"))?;
    }
    sinks[sender]
        .flush()
        .await
        .map_err(|e| format!("updates: flush: {e}"))?;
    let deadline = tokio::time::Instant::from_std(t1 + UPDATES_TIMEOUT);
    let mut done = vec![false; n];
    let mut remaining = n;
    let (mut upd_others, mut upd_echo) = (Duration::ZERO, Duration::ZERO);
    while remaining > 0 {
        match tokio::time::timeout_at(deadline, ev.recv()).await {
            Err(_) => {
                return Err(format!(
                    "updates: {remaining} of {n} occupants still incomplete after \
                     {UPDATES_TIMEOUT:?}"
                ));
            }
            Ok(None) => return Err("event channel closed".into()),
            Ok(Some(Event::UpdatesDone { idx, at })) => {
                if !std::mem::replace(&mut done[idx], true) {
                    remaining -= 1;
                    if idx == sender {
                        upd_echo = at - t1;
                    } else {
                        upd_others = upd_others.max(at - t1);
                    }
                }
            }
            Ok(Some(Event::Error { idx, text })) => {
                return Err(format!("updates: error stanza to {idx}: {text}"));
            }
            Ok(Some(Event::Closed { idx, why })) => {
                return Err(format!("updates: session {idx} closed: {why}"));
            }
            Ok(Some(Event::Joined { .. })) => {}
        }
    }
    let upd_cpu_pct = cpu_pct(k1, cpu_ticks(pid).unwrap_or(0), upd_others.max(upd_echo));
    settle(&sh).await;
    let upd_presences = sh.presences.swap(0, Ordering::Relaxed);

    let alive_after = server.alive();
    readers.abort_all();
    drop(sinks);
    let other = sh.other_frames.load(Ordering::Relaxed);
    if other > 0 {
        eprintln!("[{}] {other} other frames received", server.name);
    }
    Ok(Report {
        name: server.name,
        occupants: n,
        join_bytes,
        join_total,
        join_p50: percentile(&latencies, 0.50),
        join_p99: percentile(&latencies, 0.99),
        join_max: latencies.last().copied().unwrap_or_default(),
        short_rosters,
        join_presences,
        join_messages,
        join_delivered,
        join_fanout: join_presences as f64 / join_delivered.as_secs_f64(),
        join_cpu_pct,
        upd_others,
        upd_echo,
        upd_presences,
        upd_fanout: (o.updates * n as u64) as f64 / upd_others.as_secs_f64(),
        upd_cpu_pct,
        rss_before,
        rss_after,
        error_stanzas: sh.error_stanzas.load(Ordering::Relaxed),
        alive_after,
    })
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
    }
    // Warnings and errors of the server (meetd: tracing levels; Prosody: tab-separated).
    let problems = server.log_grep(&[" WARN ", " ERROR ", "\twarn\t", "\terror\t"], 10);
    if !problems.is_empty() {
        eprintln!(
            "[{}] warnings/errors in {}:",
            server.name,
            server.log.display()
        );
        for l in problems {
            eprintln!("  {l}");
        }
    }
    server.stop();
    r
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("muc_join: {e}");
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
        o.prosody.then_some((None, PROSODY_MUC)),
        |s| run_one(&rt, s, &o),
    );
    rt.shutdown_timeout(Duration::from_secs(2));

    let n = o.occupants as u64;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nmuc_join: nproc {nproc}, {n} occupants join {ROOM}@{MUC} one after another, \
         then 1 occupant sends {} presence updates",
        o.updates
    );
    if let Some(r) = reports.first() {
        let _ = writeln!(t, "join presence {} bytes", r.join_bytes);
    }
    let _ = writeln!(
        t,
        "{:<8} {:>9} {:>8} {:>8} {:>8} {:>7} {:>10} {:>9} {:>10} {:>11} {:>9} {:>8} {:>9}",
        "joins",
        "total ms",
        "p50 ms",
        "p99 ms",
        "max ms",
        "roster",
        "presences",
        "expected",
        "subjects",
        "deliv. ms",
        "pres/s",
        "srv CPU",
        "RSS +KB"
    );
    for r in &reports {
        let _ = writeln!(
            t,
            "{:<8} {:>9.1} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>10} {:>9} {:>10} {:>11.1} {:>9.0} {:>7.0}% {:>9}",
            r.name,
            ms(r.join_total),
            ms(r.join_p50),
            ms(r.join_p99),
            ms(r.join_max),
            if r.short_rosters == 0 {
                "full".to_string()
            } else {
                format!("{} short", r.short_rosters)
            },
            r.join_presences,
            n * n,
            r.join_messages,
            ms(r.join_delivered),
            r.join_fanout,
            r.join_cpu_pct,
            r.rss_after as i64 - r.rss_before as i64
        );
    }
    let _ = writeln!(
        t,
        "{:<8} {:>14} {:>12} {:>10} {:>9} {:>9} {:>8} {:>7} {:>6}",
        "updates",
        "all others ms",
        "own echo ms",
        "presences",
        "expected",
        "pres/s",
        "srv CPU",
        "errors",
        "alive"
    );
    for r in &reports {
        let _ = writeln!(
            t,
            "{:<8} {:>14.1} {:>12.1} {:>10} {:>9} {:>9.0} {:>7.0}% {:>7} {:>6}",
            r.name,
            ms(r.upd_others),
            ms(r.upd_echo),
            r.upd_presences,
            o.updates * n,
            r.upd_fanout,
            r.upd_cpu_pct,
            r.error_stanzas,
            if r.alive_after { "yes" } else { "NO" }
        );
    }
    let m = reports.iter().find(|r| r.name == "meetd");
    let p = reports.iter().find(|r| r.name == "prosody");
    if let Some(m) = m {
        let _ = writeln!(
            t,
            "goal (meetd): all {} joins under {} s: {:.0} ms, {}",
            m.occupants,
            GOAL_JOIN_ALL.as_secs(),
            ms(m.join_total),
            if m.join_total < GOAL_JOIN_ALL && m.short_rosters == 0 {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    if let (Some(m), Some(p)) = (m, p) {
        let _ = writeln!(
            t,
            "ratios meetd vs prosody: join time {:.2}x faster, join fan-out {:.2}x, \
             update fan-out {:.2}x",
            p.join_total.as_secs_f64() / m.join_total.as_secs_f64(),
            m.join_fanout / p.join_fanout,
            m.upd_fanout / p.upd_fanout
        );
    }
    print!("{t}");
    if failed {
        std::process::exit(1);
    }
}
