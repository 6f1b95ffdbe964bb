//! An audience of simulated visitors for a real meeting (issue 17, docs/visitors.md, Measured): N
//! receive-only str0m clients that a Jicofo-like service account adds to a running conference
//! of a bridge over XMPP (Colibri2 `conference-modify` with `muc-role='visitor'`), as the
//! focus adds the app's viewers. Each visitor does ICE and DTLS with the bridge, opens its
//! bridge channel and asks for the speakers at `--height`, then only counts the RTP the bridge
//! forwards (no decryption, as `bridge_load`'s receivers).
//!
//! ```text
//! cargo run --example audience -- --ws ws://127.0.0.1:5280/xmpp-websocket \
//!     --user audience --password secret --bridge jvb@auth.meet.jitsi/jvb2 \
//!     --meeting-id <the meeting's id> --visitors 200
//! ```
//!
//! Prints one JSON line a second (`connected`, `with_audio`, `with_video`, `receiving`,
//! `packets`, `bytes`, `channels`) until stdin closes or `--seconds` pass; then expires its
//! endpoints and exits. `tests/app/audience.test.mjs` runs it next to two viewers of the app.

#[path = "../src/xmpp_link.rs"]
#[allow(dead_code)]
mod xmpp_link;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use meetd_colibri::codecs::{Features, default_media};
use meetd_colibri::colibri2::{
    ConferenceModified, ConferenceModify, Endpoint, IceUdpTransport, Transport,
};
use meetd_colibri::testkit;
use meetd_xmpp::stanza;
use str0m::config::Fingerprint;
use str0m::ice::IceCreds;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Input, Output, Rtc};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

/// Endpoints per Colibri2 request.
const BATCH: usize = 10;
/// How long one Colibri2 request may take.
const IQ_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Parser, Debug)]
struct Opts {
    /// meetd's XMPP WebSocket (`ws://host:port/xmpp-websocket`).
    #[arg(long)]
    ws: String,
    /// The service accounts' domain.
    #[arg(long, default_value = "auth.meet.jitsi")]
    domain: String,
    #[arg(long)]
    user: String,
    #[arg(long)]
    password: String,
    /// The bridge's full JID (`jvb@auth.<domain>/<bridge id>`).
    #[arg(long)]
    bridge: String,
    /// The conference's meeting id (the app's `getMeetingUniqueId()`).
    #[arg(long)]
    meeting_id: String,
    #[arg(long, default_value_t = 200)]
    visitors: usize,
    /// The height each visitor asks for (the speaker on stage).
    #[arg(long, default_value_t = 720)]
    height: u32,
    /// Stop after this long even if stdin stays open.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
}

/// What one visitor received.
#[derive(Default)]
struct Counts {
    audio: AtomicU64,
    video: AtomicU64,
    bytes: AtomicU64,
    connected: AtomicBool,
    channel: AtomicBool,
}

struct Visitor {
    id: String,
    sock: std::net::UdpSocket,
    local: SocketAddr,
    rtc: Rtc,
    counts: Arc<Counts>,
}

fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio::task::LocalSet::new().block_on(&rt, run(opts))
}

/// One Colibri2 request and its answer.
async fn request(
    link: &mut xmpp_link::Link,
    to: &str,
    id: &str,
    m: &ConferenceModify,
) -> anyhow::Result<ConferenceModified> {
    let mut iq = stanza::el(
        "iq",
        "jabber:client",
        &[("type", "get"), ("to", to), ("id", id)],
    );
    iq.append_child(m.to_element());
    link.tx.send(iq).await?;
    let answer = tokio::time::timeout(IQ_TIMEOUT, async {
        while let Some(st) = link.rx.recv().await {
            if st.name() == "iq" && st.attr("id") == Some(id) {
                return Some(st);
            }
        }
        None
    })
    .await
    .map_err(|_| anyhow::anyhow!("no answer to {id} in {IQ_TIMEOUT:?}"))?
    .ok_or_else(|| anyhow::anyhow!("the XMPP link closed"))?;
    if answer.attr("type") != Some("result") {
        anyhow::bail!("{id} refused: {}", String::from(&*answer));
    }
    let modified = answer
        .children()
        .find(|c| c.name() == "conference-modified")
        .ok_or_else(|| anyhow::anyhow!("{id}: no conference-modified"))?;
    Ok(ConferenceModified::parse(modified)?)
}

fn new_visitor(i: usize, now: Instant) -> anyhow::Result<Visitor> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    sock.set_nonblocking(true)?;
    let local = sock.local_addr()?;
    let mut rtc = testkit::client_rtc(now, |c| c.set_stats_interval(None));
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    rtc.direct_api().set_ice_controlling(false);
    Ok(Visitor {
        id: format!("audience-{i:04}"),
        sock,
        local,
        rtc,
        counts: Arc::default(),
    })
}

/// Point the visitor's str0m at the bridge's side of its transport; returns the bridge
/// channel's URL.
fn connect_to(v: &mut Visitor, bridge: &IceUdpTransport) -> anyhow::Result<Option<String>> {
    let (Some(ufrag), Some(pass)) = (bridge.ufrag.clone(), bridge.pwd.clone()) else {
        anyhow::bail!("{}: the bridge's transport has no ICE credentials", v.id);
    };
    let fp = bridge
        .fingerprints
        .first()
        .ok_or_else(|| anyhow::anyhow!("{}: no DTLS fingerprint", v.id))?;
    let fp: Fingerprint = format!("{} {}", fp.hash, fp.value)
        .parse()
        .map_err(|e| anyhow::anyhow!("fingerprint: {e:?}"))?;
    let cand = bridge
        .candidates
        .iter()
        .find(|c| c.protocol == "udp" && c.ip.parse::<std::net::Ipv4Addr>().is_ok())
        .ok_or_else(|| anyhow::anyhow!("{}: no IPv4 UDP candidate", v.id))?;
    let addr: SocketAddr = format!("{}:{}", cand.ip, cand.port).parse()?;
    v.rtc.add_remote_candidate(Candidate::host(addr, "udp")?);
    let mut api = v.rtc.direct_api();
    api.set_remote_fingerprint(fp);
    api.set_remote_ice_credentials(IceCreds { ufrag, pass });
    api.start_dtls(true)?;
    Ok(bridge.web_sockets.iter().find_map(|w| w.url.clone()))
}

/// The visitor's media loop: ICE, DTLS and RTCP through str0m, forwarded RTP counted.
async fn run_visitor(mut v: Visitor, stop: Rc<AtomicBool>) {
    let counts = v.counts.clone();
    let Ok(sock) = tokio::net::UdpSocket::from_std(v.sock) else {
        return;
    };
    let mut buf = vec![0u8; 2048];
    let mut next;
    while !stop.load(Ordering::Relaxed) {
        loop {
            match v.rtc.poll_output() {
                Ok(Output::Transmit(t)) => {
                    let _ = sock.try_send_to(&t.contents, t.destination);
                }
                Ok(Output::Event(str0m::Event::Connected)) => {
                    counts.connected.store(true, Ordering::Relaxed);
                }
                Ok(Output::Event(_)) => {}
                Ok(Output::Timeout(t)) => {
                    next = t;
                    break;
                }
                Err(_) => {
                    next = Instant::now() + Duration::from_millis(50);
                    break;
                }
            }
        }
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let data = &buf[..n];
                // RTP (not RTCP, RFC 5761): count by payload type and drop.
                if n >= 12 && (128..192).contains(&data[0]) && !(192..224).contains(&data[1]) {
                    let pt = data[1] & 0x7f;
                    let c = if pt == 111 || pt == 112 { &counts.audio } else { &counts.video };
                    c.fetch_add(1, Ordering::Relaxed);
                    counts.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    continue;
                }
                if let Ok(r) = Receive::new(Protocol::Udp, from, v.local, data) {
                    let _ = v.rtc.handle_input(Input::Receive(Instant::now(), r));
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {}
        }
        let now = Instant::now();
        if now >= next {
            let _ = v.rtc.handle_input(Input::Timeout(now));
        }
    }
}

/// The visitor's bridge channel: asks for everyone at `height`, reads and drops the rest.
async fn run_channel(url: String, height: u32, counts: Arc<Counts>, stop: Rc<AtomicBool>) {
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
        return;
    };
    let hello = serde_json::json!({
        "colibriClass": "ReceiverVideoConstraints",
        "lastN": -1,
        "defaultConstraints": { "maxHeight": height },
        "constraints": {},
    });
    if ws.send(Message::text(hello.to_string())).await.is_err() {
        return;
    }
    counts.channel.store(true, Ordering::Relaxed);
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
            Ok(Some(Ok(_))) | Err(_) => {}
            Ok(_) => break,
        }
    }
    counts.channel.store(false, Ordering::Relaxed);
    let _ = ws.close(None).await;
}

async fn run(o: Opts) -> anyhow::Result<()> {
    let mut link = xmpp_link::connect(&xmpp_link::LinkConfig {
        url: o.ws.clone(),
        domain: o.domain.clone(),
        username: o.user.clone(),
        password: o.password.clone(),
        resource: "audience".into(),
    })
    .await?;
    let features = Features {
        sctp: false,
        rtx: true,
        ..Features::default()
    };
    let stop = Rc::new(AtomicBool::new(false));
    let now = Instant::now();
    let mut visitors: Vec<Visitor> = (0..o.visitors)
        .map(|i| new_visitor(i, now))
        .collect::<anyhow::Result<_>>()?;
    let all: Vec<Arc<Counts>> = visitors.iter().map(|v| v.counts.clone()).collect();
    let ids: Vec<String> = visitors.iter().map(|v| v.id.clone()).collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (b, batch) in visitors.chunks_mut(BATCH).enumerate() {
        // Create the endpoints (the bridge answers with its transport for each) …
        let mut m = ConferenceModify::new(o.meeting_id.clone());
        for v in batch.iter() {
            let mut ep = Endpoint::new(v.id.clone());
            ep.create = true;
            ep.stats_id = Some(v.id.clone());
            ep.muc_role = Some("visitor".into());
            ep.capabilities.push("source-names".into());
            ep.medias = default_media(&features);
            ep.transport = Some(Transport {
                ice_controlling: Some(true),
                ..Transport::default()
            });
            m.endpoints.push(ep);
        }
        let answer = request(&mut link, &o.bridge, &format!("create-{b}"), &m).await?;
        // … then hand it each visitor's own, as the focus does with a session-accept.
        let mut update = ConferenceModify::new(o.meeting_id.clone());
        for v in batch.iter_mut() {
            let bridge = answer
                .endpoints
                .iter()
                .find(|e| e.id == v.id)
                .and_then(|e| e.transport.as_ref()?.ice.as_ref())
                .ok_or_else(|| anyhow::anyhow!("{}: no transport in the answer", v.id))?;
            if let Some(url) = connect_to(v, bridge)? {
                tasks.push(tokio::task::spawn_local(run_channel(
                    url,
                    o.height,
                    v.counts.clone(),
                    stop.clone(),
                )));
            }
            let fp = v.rtc.direct_api().local_dtls_fingerprint().clone();
            let creds = v.rtc.direct_api().local_ice_credentials();
            let mut ep = Endpoint::new(v.id.clone());
            ep.transport = Some(Transport {
                ice: Some(IceUdpTransport::client_answer(
                    &creds.ufrag,
                    &creds.pass,
                    &fp.bytes,
                )),
                ..Transport::default()
            });
            update.endpoints.push(ep);
        }
        request(&mut link, &o.bridge, &format!("update-{b}"), &update).await?;
    }
    eprintln!(
        "audience: {} visitors allocated in {} ms",
        ids.len(),
        started.elapsed().as_millis()
    );
    for v in visitors {
        tasks.push(tokio::task::spawn_local(run_visitor(v, stop.clone())));
    }

    // Report once a second until stdin closes (or says "stop") or time is up.
    let stdin_closed = Rc::new(AtomicBool::new(false));
    {
        let closed = stdin_closed.clone();
        tokio::task::spawn_local(async move {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if l.trim() == "stop" {
                    break;
                }
            }
            closed.store(true, Ordering::Relaxed);
        });
    }
    let deadline = Instant::now() + Duration::from_secs(o.seconds);
    let last_video = AtomicUsize::new(0);
    let mut before: Vec<u64> = vec![0; all.len()];
    while !stdin_closed.load(Ordering::Relaxed) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut receiving = 0;
        for (c, b) in all.iter().zip(before.iter_mut()) {
            let v = c.video.load(Ordering::Relaxed);
            if v > *b {
                receiving += 1;
            }
            *b = v;
        }
        last_video.store(receiving, Ordering::Relaxed);
        let sum = |f: &dyn Fn(&Counts) -> u64| all.iter().map(|c| f(c)).sum::<u64>();
        let report = serde_json::json!({
            "t": started.elapsed().as_secs_f64(),
            "visitors": all.len(),
            "connected": sum(&|c| u64::from(c.connected.load(Ordering::Relaxed))),
            "channels": sum(&|c| u64::from(c.channel.load(Ordering::Relaxed))),
            "with_audio": sum(&|c| u64::from(c.audio.load(Ordering::Relaxed) > 0)),
            "with_video": sum(&|c| u64::from(c.video.load(Ordering::Relaxed) > 0)),
            "receiving": receiving,
            "packets": sum(&|c| c.audio.load(Ordering::Relaxed) + c.video.load(Ordering::Relaxed)),
            "bytes": sum(&|c| c.bytes.load(Ordering::Relaxed)),
        });
        println!("{report}");
    }
    stop.store(true, Ordering::Relaxed);
    // The endpoints leave, as Jicofo expires a departed viewer's.
    for (b, batch) in ids.chunks(BATCH).enumerate() {
        let mut m = ConferenceModify::new(o.meeting_id.clone());
        for id in batch {
            let mut ep = Endpoint::new(id.clone());
            ep.expire = true;
            m.endpoints.push(ep);
        }
        if let Err(e) = request(&mut link, &o.bridge, &format!("expire-{b}"), &m).await {
            eprintln!("audience: expire: {e}");
        }
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    Ok(())
}
