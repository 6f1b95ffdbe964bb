//! TURN relay benchmark: meetd's embedded TURN server against Debian's coturn, the same load in
//! the same run (issue 14: calibrate the embedded server against coturn).
//!
//! `cargo bench --bench turn_relay [-- --clients N --rate R --secs S --size B --no-coturn]`
//!
//! For each server (one after the other, alone on the machine, on free loopback ports, with the
//! REST credential scheme both take): N TURN clients (webrtc-rs's `turn` client, over UDP)
//! allocate a relayed address each, and a plain UDP peer per client exchanges packets with it
//! through the server: R packets of B bytes per second in each direction, for S seconds.
//! Reported per server: packets relayed, lost, the server's CPU time per relayed packet (from
//! /proc, user + system) and its resident memory. coturn runs only if `turnserver` is on PATH
//! (`apt-get install coturn`; this bench never installs it). Every wait is bounded; the servers
//! are killed on exit.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

use common::{Server, clock_ticks_per_sec, cpu_ticks, find_in_path, rss_kb};

const BENCH: &str = "turn_relay";
const SECRET: &str = "turn-bench-secret";
const STEP: Duration = Duration::from_secs(10);

struct Args {
    clients: usize,
    rate: u64,
    secs: u64,
    size: usize,
    coturn: bool,
}

fn args() -> Args {
    let mut a = Args {
        clients: 8,
        rate: 200,
        secs: 10,
        size: 1000,
        coturn: true,
    };
    let v: Vec<String> = std::env::args().collect();
    let num = |i: usize| v.get(i + 1).and_then(|x| x.parse::<u64>().ok());
    for (i, arg) in v.iter().enumerate() {
        match arg.as_str() {
            "--clients" => a.clients = num(i).unwrap_or(8) as usize,
            "--rate" => a.rate = num(i).unwrap_or(200),
            "--secs" => a.secs = num(i).unwrap_or(10),
            "--size" => a.size = num(i).unwrap_or(1000) as usize,
            "--no-coturn" => a.coturn = false,
            _ => {}
        }
    }
    a
}

/// One client's relayed address and its peer.
struct Pair {
    client: Client,
    relay: Arc<dyn Conn + Send + Sync>,
    peer: Arc<UdpSocket>,
    relayed: SocketAddr,
}

async fn pair(server: u16) -> Result<Pair, String> {
    let (username, password) =
        turn::auth::generate_long_term_credentials(SECRET, Duration::from_secs(3600))
            .map_err(|e| e.to_string())?;
    let sock = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let client = Client::new(ClientConfig {
        stun_serv_addr: format!("127.0.0.1:{server}"),
        turn_serv_addr: format!("127.0.0.1:{server}"),
        username,
        password,
        realm: common::DOMAIN.into(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(sock),
        vnet: None,
    })
    .await
    .map_err(|e| e.to_string())?;
    client.listen().await.map_err(|e| e.to_string())?;
    let relay: Arc<dyn Conn + Send + Sync> = Arc::new(
        tokio::time::timeout(STEP, client.allocate())
            .await
            .map_err(|_| "allocate: no answer".to_string())?
            .map_err(|e| format!("allocate: {e}"))?,
    );
    let peer = Arc::new(
        UdpSocket::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?,
    );
    let peer_addr = peer.local_addr().map_err(|e| e.to_string())?;
    // The first packet to the peer makes the permission; its source is the relayed address.
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + STEP;
    loop {
        relay
            .send_to(b"hello", peer_addr)
            .await
            .map_err(|e| format!("send through the relay: {e}"))?;
        if let Ok(Ok((_, from))) =
            tokio::time::timeout(Duration::from_millis(300), peer.recv_from(&mut buf)).await
        {
            return Ok(Pair {
                client,
                relay,
                peer,
                relayed: from,
            });
        }
        if Instant::now() > deadline {
            return Err("nothing reached the peer through the relay".into());
        }
    }
}

/// Sends `payload` from `from` to `to` every `interval` until `end`, counting what went out.
fn send_for(
    from: Arc<dyn Conn + Send + Sync>,
    to: SocketAddr,
    payload: Arc<[u8]>,
    interval: Duration,
    end: Instant,
    sent: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        while Instant::now() < end {
            tick.tick().await;
            if from.send_to(&payload, to).await.is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

/// Counts the datagrams `on` receives until `until`.
fn count_until(
    on: Arc<dyn Conn + Send + Sync>,
    until: Instant,
    received: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok(Ok(_)) = tokio::time::timeout_at(until.into(), on.recv_from(&mut buf)).await {
            received.fetch_add(1, Ordering::Relaxed);
        }
    })
}

struct Report {
    server: &'static str,
    sent: u64,
    received: u64,
    cpu_us_per_packet: f64,
    cpu_percent: f64,
    rss_kb: u64,
}

async fn run(server: &Server, a: &Args) -> Result<Report, String> {
    let mut pairs = Vec::new();
    for _ in 0..a.clients {
        pairs.push(pair(server.port).await?);
    }
    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let c0 = cpu_ticks(server.pid()).unwrap_or(0);
    let end = t0 + Duration::from_secs(a.secs);
    let mut tasks = Vec::new();
    let interval = Duration::from_micros(1_000_000 / a.rate.max(1));
    let payload: Arc<[u8]> = vec![0x5a_u8; a.size].into();
    for p in &pairs {
        let peer: Arc<dyn Conn + Send + Sync> = p.peer.clone();
        let peer_addr = p.peer.local_addr().map_err(|e| e.to_string())?;
        // Client → peer through the relay, and peer → client through the relayed address;
        // both ends count what arrives, until a second after the end.
        for (from, to) in [(p.relay.clone(), peer_addr), (peer.clone(), p.relayed)] {
            tasks.push(send_for(
                from,
                to,
                payload.clone(),
                interval,
                end,
                sent.clone(),
            ));
        }
        for on in [peer, p.relay.clone()] {
            tasks.push(count_until(
                on,
                end + Duration::from_secs(1),
                received.clone(),
            ));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let ticks = cpu_ticks(server.pid()).unwrap_or(0).saturating_sub(c0);
    let cpu_s = ticks as f64 / clock_ticks_per_sec() as f64;
    let rss = rss_kb(server.pid()).unwrap_or(0);
    for p in pairs {
        let _ = p.relay.close().await;
        let _ = p.client.close().await;
    }
    let (sent, received) = (
        sent.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed),
    );
    Ok(Report {
        server: server.name,
        sent,
        received,
        cpu_us_per_packet: cpu_s * 1e6 / received.max(1) as f64,
        cpu_percent: cpu_s / secs * 100.0,
        rss_kb: rss,
    })
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let meetd_turn = common::free_port().expect("a free port");
    let config = format!(
        "[turn]\nsecret = \"{SECRET}\"\nport = {meetd_turn}\non_https = false\n\
         relay_private_peers = true\nrelay_min_port = 45000\nrelay_max_port = 49999\n"
    );
    println!(
        "{BENCH}: {} clients, {} packets/s of {} bytes each way per client, {} s",
        a.clients, a.rate, a.size, a.secs
    );
    // One server: started, measured, stopped (on drop).
    let measure = |started: Result<Server, String>| -> Result<Report, String> {
        let s = started.map_err(|e| format!("did not start: {e}"))?;
        rt.block_on(run(&s, &a))
            .map_err(|e| format!("{}: {e}\n{}", s.name, s.log_tail(20)))
    };
    let mut results = vec![measure(common::start_meetd(BENCH, &config).map(|mut s| {
        s.port = meetd_turn;
        s
    }))];
    match (a.coturn, find_in_path("turnserver")) {
        (true, Some(bin)) => results.push(measure(common::start_coturn(BENCH, &bin, SECRET))),
        (true, None) => println!("{BENCH}: coturn not installed (apt-get install coturn): skipped"),
        (false, _) => {}
    }
    let mut failed = false;
    let mut reports = Vec::new();
    for r in results {
        match r {
            Ok(r) => reports.push(r),
            Err(e) => {
                failed = true;
                eprintln!("{BENCH}: {e}");
            }
        }
    }
    for r in &reports {
        let lost = r.sent.saturating_sub(r.received);
        println!(
            "{BENCH}: {:7} relayed {:>7} of {:>7} packets (lost {:.2} %), server CPU {:.1} µs per packet ({:.1} % of one core), RSS {} KiB",
            r.server,
            r.received,
            r.sent,
            lost as f64 * 100.0 / r.sent.max(1) as f64,
            r.cpu_us_per_packet,
            r.cpu_percent,
            r.rss_kb
        );
    }
    if failed {
        std::process::exit(1);
    }
}
