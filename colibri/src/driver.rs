//! The media engine's driver: the threads that own the sans-IO [`MediaEngine`] shards, the
//! receive thread that hands datagrams to them, and the two queues to the rest of the bridge:
//! commands in ([`EngineHandle`]) and events out ([`Event`], consumed by one bridge task,
//! `channel::events::run`). It reads the clock and the socket and feeds both to the engine.
//! No lock on the packet path: each engine shard is owned by its thread alone.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use crate::colibri2::{IceUdpTransport, Media, Sources};
use crate::media::Protocol;
use crate::media::ReceiverConstraints;
use crate::media::{Clock, EngineConfig, EngineEvent, EngineOutput, EngineStats, MediaEngine};
use crate::socket::{
    RecvBatch, SEND_BATCH, SOCKET_BUFFER_BYTES, SendBatch, SendOwner, canonical, destination,
    local_for,
};
use crate::tcp::{TcpFrame, TcpLimits, TcpMedia};

/// What the engine threads report to the bridge, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An endpoint was (re)created: what the bridge channel kept for an older endpoint of the
    /// same id (source maps, constraints) is stale.
    EndpointAdded {
        conference: String,
        endpoint: String,
        /// A visitor's (Colibri2 `muc-role='visitor'`): its bridge-channel messages to others
        /// are dropped.
        visitor: bool,
    },
    /// The focus removed an endpoint; `conference_gone`: it was the conference's last.
    EndpointRemoved {
        conference: String,
        endpoint: String,
        conference_gone: bool,
    },
    /// The focus removed a whole conference.
    ConferenceRemoved { conference: String },
    /// What the engine itself reported.
    Engine(EngineEvent),
}

/// The engine threads' end of the event queue. A full queue keeps events in a backlog (in
/// order) that is retried every turn; beyond `limit` of them they are dropped and counted.
#[derive(Debug)]
struct EventSink {
    tx: mpsc::Sender<Event>,
    backlog: VecDeque<Event>,
    limit: usize,
    dropped: u64,
}

impl EventSink {
    fn new(tx: mpsc::Sender<Event>, limit: usize) -> EventSink {
        EventSink {
            tx,
            backlog: VecDeque::new(),
            limit,
            dropped: 0,
        }
    }

    fn push(&mut self, e: Event) {
        self.flush();
        if self.backlog.is_empty() {
            match self.tx.try_send(e) {
                Ok(()) | Err(TrySendError::Closed(_)) => return,
                Err(TrySendError::Full(e)) => {
                    self.backlog.push_back(e);
                    return;
                }
            }
        }
        if self.backlog.len() < self.limit {
            self.backlog.push_back(e);
        } else {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.dropped,
                    limit = self.limit,
                    "media event queue and backlog full: events dropped"
                );
            }
        }
    }

    /// Hand over what waits in the backlog, as far as the queue takes it.
    fn flush(&mut self) {
        while let Some(e) = self.backlog.pop_front() {
            match self.tx.try_send(e) {
                Ok(()) => {}
                Err(TrySendError::Full(e)) => {
                    self.backlog.push_front(e);
                    return;
                }
                Err(TrySendError::Closed(_)) => {
                    self.backlog.clear();
                    return;
                }
            }
        }
    }
}

impl SendOwner for MediaEngine {
    fn recycle(&mut self, buf: Vec<u8>) {
        MediaEngine::recycle(self, buf);
    }
    fn count_gso(&mut self, segments: u64) {
        MediaEngine::count_gso(self, segments);
    }
    fn count_send_dropped(&mut self, n: u64) {
        MediaEngine::count_send_dropped(self, n);
    }
}

/// What the signalling side asks of the engine.
#[derive(Debug)]
pub enum Command {
    AddEndpoint {
        conf: String,
        ep: String,
        ufrag: String,
        pwd: String,
        medias: Vec<Media>,
        /// Created with the `ssrc-rewriting` capability.
        ssrc_rewriting: bool,
        /// The focus asked for SCTP (the bridge channel may be a data channel).
        sctp: bool,
        /// A visitor (`muc-role='visitor'`, docs/visitors.md).
        visitor: bool,
    },
    /// A relay to another bridge (docs/bridge.md B.15); its remote side comes as `SetRemote`,
    /// its removal as `RemoveEndpoint`.
    AddRelay {
        conf: String,
        relay: String,
        ufrag: String,
        pwd: String,
        ice_controlling: bool,
        medias: Vec<Media>,
        /// The relay's own UDP socket (its port tells relays to the same bridge apart);
        /// `None`: the media port.
        socket: Option<std::net::UdpSocket>,
    },
    /// A participant of the bridge behind `relay`, or its new sources; removed with
    /// `RemoveEndpoint`.
    SetRelayed {
        conf: String,
        relay: String,
        ep: String,
        sources: Option<Sources>,
    },
    SetRemote {
        conf: String,
        ep: String,
        transport: IceUdpTransport,
    },
    SetSources {
        conf: String,
        ep: String,
        sources: Sources,
    },
    RemoveEndpoint {
        conf: String,
        ep: String,
    },
    RemoveConference {
        conf: String,
    },
    Constraints {
        conf: String,
        ep: String,
        constraints: ReceiverConstraints,
    },
    /// The bridge behind relay `relay` wants `source` (of a sender here) at most this high
    /// (its `AddReceiver`; 0: not at all; `u32::MAX`: no limit).
    RelayWants {
        conf: String,
        relay: String,
        source: String,
        max_height: u32,
    },
    /// The sender's bridge channel said what one of its sources is (`SourceVideoTypeMessage`).
    SourceVideoType {
        conf: String,
        ep: String,
        source: String,
        video_type: String,
    },
    /// A bridge-channel message for an endpoint whose channel is an SCTP data channel.
    ChannelSend {
        conf: String,
        ep: String,
        text: String,
    },
    /// Colibri2 `force-mute` from the focus.
    ForceMute {
        conf: String,
        ep: String,
        audio: Option<bool>,
        video: Option<bool>,
    },
    /// Start (`Some`) or stop a conference's live-stream feed (docs/streaming.md).
    Broadcast {
        conf: String,
        target: Option<crate::media::BroadcastTarget>,
    },
    /// Attach an endpoint to an in-process peer (`media/local.rs`); sent to every shard,
    /// the one with the endpoint takes it.
    AttachLocal {
        ufrag: String,
        local: SocketAddr,
        remote: SocketAddr,
        keys: crate::media::srtp::MasterKeys,
    },
    Stats(oneshot::Sender<EngineStats>),
}

/// The engine's command queue has no room for a request's commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("media engine busy: command queue full")]
pub struct EngineBusy;

/// The receive thread's routing update a command needs (several shards only).
fn route_of(c: &Command, shard: usize) -> Option<Route> {
    match c {
        Command::AddEndpoint {
            conf, ep, ufrag, ..
        } => Some(Route::Add {
            conf: conf.clone(),
            ep: ep.clone(),
            ufrag: ufrag.clone(),
            shard,
        }),
        Command::AddRelay {
            conf, relay, ufrag, ..
        } => Some(Route::Add {
            conf: conf.clone(),
            ep: relay.clone(),
            ufrag: ufrag.clone(),
            shard,
        }),
        Command::RemoveEndpoint { conf, ep } => Some(Route::Remove {
            conf: conf.clone(),
            ep: ep.clone(),
        }),
        Command::RemoveConference { conf } => Some(Route::RemoveConference { conf: conf.clone() }),
        _ => None,
    }
}

/// Sends commands to the engine thread(s). [`EngineHandle::submit`] takes all of a request's
/// commands or none (the caller answers "busy"); [`EngineHandle::send_hint`], for the bridge
/// channel's hints, waits for room a while, then fails with a log line;
/// [`EngineHandle::send`] (benchmarks, tools) drops and logs when the queue is full.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    /// One command queue per engine shard.
    txs: Vec<mpsc::Sender<Command>>,
    /// With several shards: the receive thread's routing updates, and what it dropped.
    router: Option<(mpsc::Sender<Route>, Arc<AtomicU64>)>,
}

impl EngineHandle {
    /// A handle on queues no engine reads (tests fill them): `shards` command queues of
    /// `queue` places, and with several shards a routing queue of `queue` places.
    #[cfg(test)]
    pub(crate) fn detached(
        shards: usize,
        queue: usize,
    ) -> (
        EngineHandle,
        Vec<mpsc::Receiver<Command>>,
        Option<mpsc::Receiver<Route>>,
    ) {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..shards).map(|_| mpsc::channel(queue)).unzip();
        let (router, rrx) = if shards > 1 {
            let (t, r) = mpsc::channel(queue);
            (Some((t, Arc::new(AtomicU64::new(0)))), Some(r))
        } else {
            (None, None)
        };
        (EngineHandle { txs, router }, rxs, rrx)
    }

    /// All of one request's commands for conference `conf`, with their routing updates:
    /// room for every one is reserved first, so either all are queued, in order, or none is
    /// and the caller gets [`EngineBusy`].
    pub fn submit(&self, conf: &str, cmds: Vec<Command>) -> Result<(), EngineBusy> {
        if cmds.is_empty() {
            return Ok(());
        }
        let k = shard_of(conf, self.txs.len());
        let routes: Vec<Route> = match &self.router {
            Some(_) => cmds.iter().filter_map(|c| route_of(c, k)).collect(),
            None => Vec::new(),
        };
        let mut cmd_permits = self.txs[k]
            .try_reserve_many(cmds.len())
            .map_err(|_| EngineBusy)?;
        if let (Some((router, _)), false) = (&self.router, routes.is_empty()) {
            let permits = router
                .try_reserve_many(routes.len())
                .map_err(|_| EngineBusy)?;
            // Routes first: the receive thread knows the endpoint before its shard does.
            for (p, r) in permits.zip(routes) {
                p.send(r);
            }
        }
        for c in cmds {
            if let Some(p) = cmd_permits.next() {
                p.send(c);
            }
        }
        Ok(())
    }

    /// A bridge channel's hint (constraints, video type) for the shard of its conference. A
    /// full queue makes the caller (the channel's reader, so the client's socket) wait, up to
    /// [`HINT_WAIT`]; after that the hint is dropped with a log line and `EngineBusy`.
    pub async fn send_hint(&self, c: Command) -> Result<(), EngineBusy> {
        let k = shard_of(conf_of(&c), self.txs.len());
        match self.txs[k].send_timeout(c, HINT_WAIT).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "media engine command queue full; bridge-channel hint dropped");
                Err(EngineBusy)
            }
        }
    }

    /// A command for the shard of its conference (and, with several shards, the routing
    /// update the receive thread needs for it). A full queue drops it with a log line.
    pub fn send(&self, c: Command) {
        let conf = conf_of(&c);
        let k = shard_of(conf, self.txs.len());
        if let Some((router, _)) = &self.router
            && let Some(r) = route_of(&c, k)
            && let Err(e) = router.try_send(r)
        {
            tracing::warn!(error = %e, "media routing queue full; update dropped");
        }
        if let Err(e) = self.txs[k].try_send(c) {
            tracing::warn!(error = %e, "media engine command queue full; command dropped");
        }
    }

    /// Attach the endpoint with local ufrag `ufrag` to an in-process peer at `remote`
    /// (`media/local.rs`): every shard is asked (the caller does not know the conference's
    /// shard), and with several shards the receive thread learns to route `remote` to the
    /// shard of that ufrag. A full queue: [`EngineBusy`], nothing sent.
    pub fn attach_local(
        &self,
        ufrag: &str,
        local: SocketAddr,
        remote: SocketAddr,
        keys: crate::media::srtp::MasterKeys,
    ) -> Result<(), EngineBusy> {
        let mut permits = Vec::with_capacity(self.txs.len());
        for tx in &self.txs {
            permits.push(tx.try_reserve().map_err(|_| EngineBusy)?);
        }
        if let Some((router, _)) = &self.router {
            router
                .try_send(Route::Bind {
                    addr: remote,
                    ufrag: ufrag.to_string(),
                })
                .map_err(|_| EngineBusy)?;
        }
        for p in permits {
            p.send(Command::AttachLocal {
                ufrag: ufrag.to_string(),
                local,
                remote,
                keys: keys.clone(),
            });
        }
        Ok(())
    }

    /// [`EngineHandle::stats`] from a thread that is not running async code.
    pub fn stats_blocking(&self) -> Option<EngineStats> {
        let mut parts = Vec::with_capacity(self.txs.len());
        for tx in &self.txs {
            let (otx, orx) = oneshot::channel();
            tx.blocking_send(Command::Stats(otx)).ok()?;
            parts.push(orx.blocking_recv().ok()?);
        }
        self.summed(parts)
    }

    /// The counters of all shards, summed (a `Command::Stats` sent with [`EngineHandle::send`]
    /// reaches one shard only).
    pub async fn stats(&self) -> Option<EngineStats> {
        let mut parts = Vec::with_capacity(self.txs.len());
        for tx in &self.txs {
            let (otx, orx) = oneshot::channel();
            tx.send(Command::Stats(otx)).await.ok()?;
            parts.push(orx.await.ok()?);
        }
        self.summed(parts)
    }

    /// The shards' counters added up, with what the receive thread dropped.
    fn summed(&self, parts: Vec<EngineStats>) -> Option<EngineStats> {
        let mut parts = parts.into_iter();
        let mut sum = parts.next()?;
        for p in parts {
            sum.add(&p);
        }
        if let Some((_, dropped)) = &self.router {
            sum.dropped_datagrams += dropped.load(Ordering::Relaxed);
        }
        Some(sum)
    }
}

/// How long a bridge-channel hint waits for room in a full command queue.
pub const HINT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The conference a command is about ("" for stats).
fn conf_of(c: &Command) -> &str {
    match c {
        Command::AddEndpoint { conf, .. }
        | Command::AddRelay { conf, .. }
        | Command::SetRelayed { conf, .. }
        | Command::SetRemote { conf, .. }
        | Command::SetSources { conf, .. }
        | Command::RemoveEndpoint { conf, .. }
        | Command::RemoveConference { conf }
        | Command::Constraints { conf, .. }
        | Command::SourceVideoType { conf, .. }
        | Command::RelayWants { conf, .. }
        | Command::ChannelSend { conf, .. }
        | Command::ForceMute { conf, .. }
        | Command::Broadcast { conf, .. } => conf,
        Command::Stats(_) | Command::AttachLocal { .. } => "",
    }
}

/// The engine shard of a conference (a fixed hash of its name).
fn shard_of(conf: &str, shards: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    if shards <= 1 {
        return 0;
    }
    let mut h = foldhash::fast::FixedState::with_seed(0x006d_6565_7464).build_hasher();
    h.write(conf.as_bytes());
    (h.finish() % shards as u64) as usize
}

/// What the receive thread needs to know to hand datagrams to shards.
#[derive(Debug)]
pub enum Route {
    Add {
        conf: String,
        ep: String,
        ufrag: String,
        shard: usize,
    },
    Remove {
        conf: String,
        ep: String,
    },
    RemoveConference {
        conf: String,
    },
    /// The engine expired the endpoint with this ufrag (a newer one of the same id keeps its
    /// route).
    Forget {
        ufrag: String,
    },
    /// Datagrams from `addr` go to the shard of `ufrag` (an in-process peer, which sends no
    /// ICE checks).
    Bind {
        addr: SocketAddr,
        ufrag: String,
    },
}

/// A started engine: its command handle, the DTLS fingerprint to put in offers, and the
/// queue of its events (one task must consume it: `channel::events::run`).
#[derive(Debug)]
pub struct Spawned {
    pub handle: EngineHandle,
    pub fingerprint: String,
    pub events: mpsc::Receiver<Event>,
    /// The ICE-TCP side: accepted connections are handed to [`TcpMedia::serve`].
    pub tcp: Arc<TcpMedia>,
}

/// Start the engine on its own thread(s), bound to `bind`; `queue` places in each command
/// queue and in the event queue.
pub fn spawn(cfg: EngineConfig, bind: SocketAddr, queue: usize) -> std::io::Result<Spawned> {
    spawn_with_buffers(cfg, bind, queue, SOCKET_BUFFER_BYTES, TcpLimits::default())
}

/// [`spawn`] with the media socket's receive and send buffer size and the ICE-TCP limits.
pub fn spawn_with_buffers(
    cfg: EngineConfig,
    bind: SocketAddr,
    queue: usize,
    socket_buffer: usize,
    tcp_limits: TcpLimits,
) -> std::io::Result<Spawned> {
    let std_sock = std::net::UdpSocket::bind(bind)?;
    std_sock.set_nonblocking(true)?;
    // Media arrives in bursts (keyframes, many senders at once): the default ~200 KB buffer
    // drops them. The kernel caps the request at net.core.rmem_max / wmem_max.
    let sock2 = socket2::SockRef::from(&std_sock);
    let _ = sock2.set_recv_buffer_size(socket_buffer);
    let _ = sock2.set_send_buffer_size(socket_buffer);
    let local = std_sock.local_addr()?;
    let threads = cfg.threads.clamp(1, MAX_THREADS);
    // The driver reads the clocks and draws the seeds; the engine only takes them.
    let start = Clock {
        instant: Instant::now(),
        system: std::time::SystemTime::now(),
    };
    let first = MediaEngine::new(cfg.clone(), start, rand::random());
    let fingerprint = first.dtls_fingerprint();
    let queue = queue.max(16);
    let (event_tx, events) = mpsc::channel(queue);
    let (frame_tx, tcp_in) = mpsc::channel(queue);
    let tcp = TcpMedia::new(tcp_limits, frame_tx);
    if threads == 1 {
        let (tx, rx) = mpsc::channel(queue);
        let sink = EventSink::new(event_tx, queue);
        let out = tcp.clone();
        on_thread("meetd-media".into(), move || async move {
            match UdpSocket::from_std(std_sock) {
                Ok(sock) => {
                    run(
                        first,
                        sock,
                        local,
                        rx,
                        sink,
                        Tcp {
                            frames: Some(tcp_in),
                            out,
                        },
                    )
                    .await
                }
                Err(e) => tracing::error!(error = %e, "media socket failed"),
            }
        })?;
        return Ok(Spawned {
            handle: EngineHandle {
                txs: vec![tx],
                router: None,
            },
            fingerprint,
            events,
            tcp,
        });
    }
    tracing::info!(
        threads,
        "media engine threads (conferences spread by name), plus one receiving"
    );
    // Several shards: this thread receives and hands datagrams over by endpoint; each shard
    // owns the conferences hashed to it and sends on its own handle of the same socket.
    let mut txs = Vec::with_capacity(threads);
    let mut inboxes = Vec::with_capacity(threads);
    let (route_tx, route_rx) = mpsc::channel(queue);
    let (free_tx, free_rx) = std::sync::mpsc::sync_channel(FREE_RECEIVE_BUFFERS);
    let siblings: Vec<MediaEngine> = (1..threads)
        .map(|_| first.sibling(cfg.clone(), rand::random()))
        .collect();
    for (k, engine) in std::iter::once(first).chain(siblings).enumerate() {
        let (tx, rx) = mpsc::channel(queue);
        let (in_tx, in_rx) = mpsc::channel::<Inbound>(SHARD_INBOX);
        txs.push(tx);
        inboxes.push(in_tx);
        let send_sock = std_sock.try_clone()?;
        let (sink, router) = (EventSink::new(event_tx.clone(), queue), route_tx.clone());
        let free = free_tx.clone();
        let tcp_out = tcp.clone();
        on_thread(format!("meetd-media-{k}"), move || async move {
            let q = ShardQueues {
                commands: rx,
                inbox: in_rx,
                router,
                free,
                tcp: tcp_out,
            };
            run_shard(engine, send_sock, local, q, sink).await;
        })?;
    }
    let dropped = Arc::new(AtomicU64::new(0));
    let counter = dropped.clone();
    on_thread("meetd-media-rx".into(), move || async move {
        match UdpSocket::from_std(std_sock) {
            Ok(sock) => receive(sock, inboxes, route_rx, free_rx, counter, tcp_in).await,
            Err(e) => tracing::error!(error = %e, "media socket failed"),
        }
    })?;
    Ok(Spawned {
        handle: EngineHandle {
            txs,
            router: Some((route_tx, dropped)),
        },
        fingerprint,
        events,
        tcp,
    })
}

/// Engine threads at most.
const MAX_THREADS: usize = 64;
/// Batches of datagrams waiting for one shard at most (a full inbox drops, as a full socket
/// buffer would).
const SHARD_INBOX: usize = 256;
/// Receive buffers waiting to be reused by the receive thread at most.
const FREE_RECEIVE_BUFFERS: usize = 4096;
/// The capacity a new receive buffer gets (a datagram up to the usual MTU fits).
const RECEIVE_BUFFER: usize = 1536;
/// Remote addresses the receive thread maps at most.
const MAX_ROUTED_ADDRS: usize = 100_000;

/// Run the future `f` makes on a new thread with a current-thread runtime.
fn on_thread<F, Fut>(name: String, f: F) -> std::io::Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    std::thread::Builder::new().name(name).spawn(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(f()),
            Err(e) => tracing::error!(error = %e, "media engine runtime failed"),
        }
    })?;
    Ok(())
}

/// An engine thread's ICE-TCP queues: frames from the connections (single thread only; with
/// several, the receive thread reads them), and the connections to write to.
struct Tcp {
    frames: Option<mpsc::Receiver<TcpFrame>>,
    out: Arc<TcpMedia>,
}

/// The next frame, or never once the queue is closed.
async fn next_frame(frames: &mut Option<mpsc::Receiver<TcpFrame>>) -> TcpFrame {
    if let Some(rx) = frames {
        if let Some(f) = rx.recv().await {
            return f;
        }
        *frames = None;
    }
    std::future::pending().await
}

async fn run(
    mut engine: MediaEngine,
    sock: UdpSocket,
    local: SocketAddr,
    mut rx: mpsc::Receiver<Command>,
    sink: EventSink,
    mut tcp: Tcp,
) {
    let mut recv = RecvBatch::new();
    let mut out = Outbox {
        batch: SendBatch::default(),
        fd: sock.as_raw_fd(),
        local,
        sink,
        router: None,
        tcp: tcp.out.clone(),
        relays: RelaySockets::new(),
    };
    let mut load = Load::default();
    loop {
        load.update(Instant::now());
        let deadline = out.drain(&mut engine);
        tokio::select! {
            f = next_frame(&mut tcp.frames) => {
                engine.handle_tcp_frame(f.at, f.from, f.to, &f.data);
                engine.recycle(f.data);
            }
            r = sock.readable() => {
                if r.is_err() {
                    continue;
                }
                // Up to RECV_BATCH queued datagrams in one recvmmsg, then back to the outputs
                // and timers.
                recv.each(&sock, |now, from, data| {
                    datagram(&mut engine, &sock, local, now, from, data);
                });
            }
            c = rx.recv() => {
                let Some(c) = c else { break };
                out.relays.on_command(&c);
                on_command(&mut engine, &mut out.sink, &load, c);
            }
            Some(d) = out.relays.recv() => relay_datagram(&mut engine, d),
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                engine.handle_timeout(Instant::now());
            }
        }
    }
}

/// Where an engine thread's outputs go: its handle of the media socket (in batches), the
/// ICE-TCP connections, the event queue, and with several shards the receive thread's
/// routing (expiries).
struct Outbox {
    batch: SendBatch,
    fd: RawFd,
    local: SocketAddr,
    sink: EventSink,
    router: Option<mpsc::Sender<Route>>,
    tcp: Arc<TcpMedia>,
    relays: RelaySockets,
}

/// Datagrams from relays' own sockets waiting for the engine thread at most.
const RELAY_INBOX: usize = 1024;

/// One datagram on a relay's own socket.
struct RelayDatagram {
    at: Instant,
    from: SocketAddr,
    port: u16,
    data: Vec<u8>,
}

/// Relays' own UDP sockets (docs/bridge.md B.15), each read by a task on the engine thread's
/// runtime into one queue; the engine sends from a relay's port on its socket.
struct RelaySockets {
    socks: HashMap<u16, RelaySocket>,
    tx: mpsc::Sender<RelayDatagram>,
    rx: mpsc::Receiver<RelayDatagram>,
}

struct RelaySocket {
    sock: Arc<UdpSocket>,
    local: SocketAddr,
    /// (conference, relay).
    key: (String, String),
    reader: tokio::task::JoinHandle<()>,
}

impl RelaySockets {
    fn new() -> RelaySockets {
        let (tx, rx) = mpsc::channel(RELAY_INBOX);
        RelaySockets {
            socks: HashMap::new(),
            tx,
            rx,
        }
    }

    /// Follow the commands that open and close relays.
    fn on_command(&mut self, c: &Command) {
        let gone = |k: &(String, String), conf: &str, ep: Option<&str>| {
            k.0 == conf && ep.is_none_or(|e| k.1 == e)
        };
        match c {
            Command::AddRelay {
                conf,
                relay,
                socket: Some(s),
                ..
            } => {
                let Some((sock, local)) = s
                    .try_clone()
                    .and_then(UdpSocket::from_std)
                    .and_then(|u| u.local_addr().map(|a| (u, a)))
                    .inspect_err(|e| tracing::warn!(error = %e, "relay socket unusable"))
                    .ok()
                else {
                    return;
                };
                let sock = Arc::new(sock);
                let (reader_sock, tx, port) = (sock.clone(), self.tx.clone(), local.port());
                let reader = tokio::spawn(async move {
                    let mut buf = vec![0u8; RECEIVE_BUFFER];
                    while let Ok((n, from)) = reader_sock.recv_from(&mut buf).await {
                        let d = RelayDatagram {
                            at: Instant::now(),
                            from,
                            port,
                            data: buf[..n].to_vec(),
                        };
                        if tx.send(d).await.is_err() {
                            break;
                        }
                    }
                });
                if let Some(old) = self.socks.insert(
                    port,
                    RelaySocket {
                        sock,
                        local,
                        key: (conf.clone(), relay.clone()),
                        reader,
                    },
                ) {
                    old.reader.abort();
                }
            }
            Command::RemoveEndpoint { conf, ep } => {
                self.socks.retain(|_, r| {
                    let keep = !gone(&r.key, conf, Some(ep));
                    if !keep {
                        r.reader.abort();
                    }
                    keep
                });
            }
            Command::RemoveConference { conf } => {
                self.socks.retain(|_, r| {
                    let keep = !gone(&r.key, conf, None);
                    if !keep {
                        r.reader.abort();
                    }
                    keep
                });
            }
            _ => {}
        }
    }

    /// Send `data` from relay port `port`, if that is one; whether it was.
    fn send(&self, port: u16, to: SocketAddr, data: &[u8]) -> bool {
        if self.socks.is_empty() {
            return false;
        }
        let Some(r) = self.socks.get(&port) else {
            return false;
        };
        let _ = r.sock.try_send_to(data, destination(r.local, to));
        true
    }

    async fn recv(&mut self) -> Option<RelayDatagram> {
        self.rx.recv().await
    }
}

/// A datagram from a relay's own socket into the engine.
fn relay_datagram(engine: &mut MediaEngine, d: RelayDatagram) {
    let from = canonical(d.from);
    let local = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), d.port);
    engine.handle_datagram(d.at, from, local_for(from, local), &d.data);
}

impl Outbox {
    /// Everything the engine has to send or report, sent or reported; returns its next
    /// deadline.
    fn drain(&mut self, engine: &mut MediaEngine) -> Instant {
        let deadline = loop {
            match engine.poll_output() {
                EngineOutput::Transmit(t) if t.proto == Protocol::Tcp => {
                    if !self.tcp.send(t.to, t.data) {
                        engine.count_send_dropped(1);
                    }
                }
                EngineOutput::Transmit(t) if self.relays.send(t.from.port(), t.to, &t.data) => {
                    engine.recycle(t.data);
                }
                EngineOutput::Transmit(t) => {
                    self.batch
                        .items
                        .push((destination(self.local, t.to), t.data));
                    if self.batch.items.len() >= SEND_BATCH {
                        self.batch.flush(self.fd, engine);
                    }
                }
                EngineOutput::Event(e) => {
                    if let (Some(r), EngineEvent::Expired { ufrag, .. }) = (&self.router, &e) {
                        let _ = r.try_send(Route::Forget {
                            ufrag: ufrag.clone(),
                        });
                    }
                    self.sink.push(Event::Engine(e));
                }
                EngineOutput::Timeout(t) => break t,
            }
        };
        self.batch.flush(self.fd, engine);
        self.sink.flush();
        deadline
    }
}

fn on_command(engine: &mut MediaEngine, sink: &mut EventSink, load: &Load, c: Command) {
    match c {
        Command::Stats(tx) => {
            let _ = tx.send(EngineStats {
                engine_cpu_permille: load.permille,
                ..engine.stats()
            });
        }
        c => command(engine, sink, c),
    }
}

/// Datagrams the receive thread hands to one shard: when they arrived, from where, and for
/// ICE-TCP frames the connection's local end.
#[derive(Debug)]
struct Inbound {
    at: Instant,
    items: Vec<InItem>,
}

/// One datagram for a shard: from, the ICE-TCP connection's local end (`None`: UDP), the bytes.
type InItem = (SocketAddr, Option<SocketAddr>, Vec<u8>);

/// One engine shard: its conferences' datagrams come from the receive thread; it sends on its
/// own handle of the media socket.
/// A shard's queues: its commands, its datagrams, and routing updates it sends (expiries).
struct ShardQueues {
    commands: mpsc::Receiver<Command>,
    inbox: mpsc::Receiver<Inbound>,
    router: mpsc::Sender<Route>,
    /// Receive buffers go back to the receive thread through this.
    free: std::sync::mpsc::SyncSender<Vec<u8>>,
    /// The ICE-TCP connections to write to.
    tcp: Arc<TcpMedia>,
}

async fn run_shard(
    mut engine: MediaEngine,
    send_sock: std::net::UdpSocket,
    local: SocketAddr,
    q: ShardQueues,
    sink: EventSink,
) {
    let ShardQueues {
        commands: mut rx,
        mut inbox,
        router,
        free,
        tcp,
    } = q;
    let mut out = Outbox {
        batch: SendBatch::default(),
        fd: send_sock.as_raw_fd(),
        local,
        sink,
        router: Some(router),
        tcp,
        relays: RelaySockets::new(),
    };
    let mut load = Load::default();
    loop {
        load.update(Instant::now());
        let deadline = out.drain(&mut engine);
        tokio::select! {
            b = inbox.recv() => {
                let Some(b) = b else { break };
                for (from, tcp_local, data) in b.items {
                    match tcp_local {
                        Some(to) => engine.handle_tcp_frame(b.at, from, to, &data),
                        None => engine.handle_datagram(b.at, from, local_for(from, local), &data),
                    }
                    // Back to the receive thread (or, if it has plenty, to the engine's
                    // send pool).
                    if let Err(
                        std::sync::mpsc::TrySendError::Full(d)
                        | std::sync::mpsc::TrySendError::Disconnected(d),
                    ) = free.try_send(data)
                    {
                        engine.recycle(d);
                    }
                }
            }
            c = rx.recv() => {
                let Some(c) = c else { break };
                out.relays.on_command(&c);
                on_command(&mut engine, &mut out.sink, &load, c);
            }
            Some(d) = out.relays.recv() => relay_datagram(&mut engine, d),
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                engine.handle_timeout(Instant::now());
            }
        }
    }
}

/// Which shard each endpoint's datagrams go to: by the ICE username of STUN checks (from the
/// AddEndpoint commands), and by remote address once a check came from it.
#[derive(Debug, Default)]
struct RouteTable {
    ufrags: HashMap<String, usize>,
    /// (conference, endpoint) → its ufrag.
    eps: HashMap<(String, String), String>,
    /// Remote address → (shard, the ufrag it was learned for).
    addrs: HashMap<SocketAddr, (usize, String)>,
}

impl RouteTable {
    fn apply(&mut self, r: Route) {
        match r {
            Route::Add {
                conf,
                ep,
                ufrag,
                shard,
            } => {
                if let Some(old) = self.eps.insert((conf, ep), ufrag.clone()) {
                    self.forget(&old);
                }
                self.ufrags.insert(ufrag, shard);
            }
            Route::Remove { conf, ep } => {
                if let Some(u) = self.eps.remove(&(conf, ep)) {
                    self.forget(&u);
                }
            }
            Route::Forget { ufrag } => {
                self.eps.retain(|_, u| *u != ufrag);
                self.forget(&ufrag);
            }
            Route::Bind { addr, ufrag } => {
                if let Some(&k) = self.ufrags.get(&ufrag)
                    && (self.addrs.len() < MAX_ROUTED_ADDRS || self.addrs.contains_key(&addr))
                {
                    self.addrs.insert(addr, (k, ufrag));
                }
            }
            Route::RemoveConference { conf } => {
                let gone: Vec<(String, String)> =
                    self.eps.keys().filter(|k| k.0 == conf).cloned().collect();
                for k in gone {
                    if let Some(u) = self.eps.remove(&k) {
                        self.forget(&u);
                    }
                }
            }
        }
    }

    fn forget(&mut self, ufrag: &str) {
        self.ufrags.remove(ufrag);
        self.addrs.retain(|_, v| v.1 != ufrag);
    }

    /// Where a datagram from `from` goes. An ICE check binds its address (the shard's engine
    /// still verifies the check; a forged one only misroutes datagrams that shard then
    /// drops). Other STUN from an address not bound yet (the answer to a check the bridge
    /// sent first) goes to every shard: the one that sent the check takes it.
    fn target(&mut self, from: SocketAddr, data: &[u8]) -> Target {
        if let Some(u) = crate::rtp::stun::stun_request_local_ufrag(data) {
            let Some(&k) = self.ufrags.get(u) else {
                return Target::Nowhere;
            };
            let known = self.addrs.get(&from).is_some_and(|v| v.0 == k && v.1 == u);
            if !known && (self.addrs.len() < MAX_ROUTED_ADDRS || self.addrs.contains_key(&from)) {
                self.addrs.insert(from, (k, u.to_string()));
            }
            return Target::Shard(k);
        }
        match self.addrs.get(&from) {
            Some(v) => Target::Shard(v.0),
            None if crate::rtp::stun::is_stun(data) => Target::Every,
            None => Target::Nowhere,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Shard(usize),
    Every,
    Nowhere,
}

/// The receive thread of a sharded engine: `recvmmsg`, plain STUN answered here, every other
/// datagram handed to its endpoint's shard in one batch per shard and turn.
async fn receive(
    sock: UdpSocket,
    inboxes: Vec<mpsc::Sender<Inbound>>,
    mut routes: mpsc::Receiver<Route>,
    free: std::sync::mpsc::Receiver<Vec<u8>>,
    dropped: Arc<AtomicU64>,
    tcp_in: mpsc::Receiver<TcpFrame>,
) {
    let mut tcp_in = Some(tcp_in);
    // A copy of a datagram in a buffer a shard gave back (a new one only while none is).
    let copy = |data: &[u8]| {
        let mut b = free
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(RECEIVE_BUFFER));
        b.clear();
        b.extend_from_slice(data);
        b
    };
    let mut recv = RecvBatch::new();
    let mut table = RouteTable::default();
    let mut out: Vec<Vec<InItem>> = inboxes.iter().map(|_| Vec::new()).collect();
    loop {
        tokio::select! {
            // An ICE-TCP frame: routed as a datagram from the connection's client address.
            f = next_frame(&mut tcp_in) => {
                let targets: Vec<usize> = match table.target(f.from, &f.data) {
                    Target::Shard(k) => vec![k],
                    Target::Every => (0..inboxes.len()).collect(),
                    Target::Nowhere => Vec::new(),
                };
                if targets.is_empty() {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
                for k in targets {
                    let items = vec![(f.from, Some(f.to), f.data.clone())];
                    if inboxes.get(k).is_none_or(|i| i.try_send(Inbound { at: f.at, items }).is_err()) {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            r = sock.readable() => {
                if r.is_err() {
                    continue;
                }
                let mut now = None;
                recv.each(&sock, |at, from, data| {
                    now = Some(at);
                    if let Some(resp) = crate::rtp::stun::plain_binding_response(data, canonical(from)) {
                        let _ = sock.try_send_to(&resp, from);
                        return;
                    }
                    let from = canonical(from);
                    match table.target(from, data) {
                        Target::Shard(k) => match out.get_mut(k) {
                            Some(o) => o.push((from, None, copy(data))),
                            None => {
                                dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        },
                        Target::Every => {
                            for o in &mut out {
                                o.push((from, None, copy(data)));
                            }
                        }
                        Target::Nowhere => {
                            dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
                let Some(now) = now else { continue };
                for (o, inbox) in out.iter_mut().zip(&inboxes) {
                    if o.is_empty() {
                        continue;
                    }
                    let n = o.len() as u64;
                    let items = std::mem::take(o);
                    if inbox.try_send(Inbound { at: now, items }).is_err() {
                        dropped.fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
            r = routes.recv() => {
                let Some(r) = r else { break };
                table.apply(r);
            }
        }
    }
}

/// How often the engine thread's CPU use is measured (JVB: stress every 5 s).
const LOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The engine thread's CPU use over the last `LOAD_INTERVAL`: the bridge's stress.
#[derive(Default)]
struct Load {
    at: Option<Instant>,
    cpu_ns: Option<u64>,
    permille: u64,
}

impl Load {
    fn update(&mut self, now: Instant) {
        if self
            .at
            .is_some_and(|t| now.saturating_duration_since(t) < LOAD_INTERVAL)
        {
            return;
        }
        let ns = thread_cpu_ns();
        if let (Some(at), Some(prev), Some(ns)) = (self.at, self.cpu_ns, ns) {
            let wall = now.saturating_duration_since(at).as_nanos().max(1);
            self.permille = (u128::from(ns.saturating_sub(prev)) * 1000 / wall) as u64;
        }
        self.at = Some(now);
        self.cpu_ns = ns;
    }
}

/// CPU time of the calling thread (Linux: the first field of its schedstat), if readable.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn datagram(
    engine: &mut MediaEngine,
    sock: &UdpSocket,
    local: SocketAddr,
    now: Instant,
    from: SocketAddr,
    data: &[u8],
) {
    if let Some(resp) = crate::rtp::stun::plain_binding_response(data, canonical(from)) {
        let _ = sock.try_send_to(&resp, from);
        return;
    }
    // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d: the engine sees them as
    // IPv4, received on the (unspecified) local address of the same family.
    let from = canonical(from);
    engine.handle_datagram(now, from, local_for(from, local), data);
}

fn command(engine: &mut MediaEngine, sink: &mut EventSink, c: Command) {
    let now = Instant::now();
    match c {
        Command::AddEndpoint {
            conf,
            ep,
            ufrag,
            pwd,
            medias,
            ssrc_rewriting,
            sctp,
            visitor,
        } => {
            sink.push(Event::EndpointAdded {
                conference: conf.clone(),
                endpoint: ep.clone(),
                visitor,
            });
            engine.add_endpoint(&conf, &ep, &ufrag, &pwd, ssrc_rewriting, sctp, &medias, now);
        }
        Command::AddRelay {
            conf,
            relay,
            ufrag,
            pwd,
            ice_controlling,
            medias,
            socket,
        } => {
            // The driver's loop took the socket (RelaySockets::take); its port stays.
            let port = socket
                .as_ref()
                .and_then(|s| s.local_addr().ok())
                .map(|a| a.port());
            engine.add_relay(
                &conf,
                &relay,
                &ufrag,
                &pwd,
                ice_controlling,
                &medias,
                port,
                now,
            )
        }
        Command::SetRelayed {
            conf,
            relay,
            ep,
            sources,
        } => engine.set_relayed_endpoint(&conf, &relay, &ep, sources.as_ref(), now),
        Command::ChannelSend { conf, ep, text } => {
            engine.channel_send((&conf, &ep), &text);
        }
        Command::SetRemote {
            conf,
            ep,
            transport,
        } => engine.set_remote_transport((&conf, &ep), &transport, now),
        Command::SetSources { conf, ep, sources } => engine.set_sources((&conf, &ep), &sources),
        Command::ForceMute {
            conf,
            ep,
            audio,
            video,
        } => engine.set_force_mute((&conf, &ep), audio, video),
        Command::RemoveEndpoint { conf, ep } => {
            engine.remove_endpoint((&conf, &ep));
            let conference_gone = !engine.has_conference(&conf);
            sink.push(Event::EndpointRemoved {
                conference: conf,
                endpoint: ep,
                conference_gone,
            });
        }
        Command::Broadcast { conf, target } => engine.set_broadcast(&conf, target),
        Command::RemoveConference { conf } => {
            engine.remove_conference(&conf);
            sink.push(Event::ConferenceRemoved { conference: conf });
        }
        Command::Constraints {
            conf,
            ep,
            constraints,
        } => engine.set_receiver_constraints((&conf, &ep), constraints),
        Command::RelayWants {
            conf,
            relay,
            source,
            max_height,
        } => engine.set_relay_wants((&conf, &relay), &source, max_height),
        Command::SourceVideoType {
            conf,
            ep,
            source,
            video_type,
        } => engine.set_source_video_type((&conf, &ep), &source, &video_type),
        Command::AttachLocal {
            ufrag,
            local,
            remote,
            keys,
        } => {
            engine.attach_local(&ufrag, local, remote, &keys, now);
        }
        Command::Stats(tx) => {
            let _ = tx.send(engine.stats());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun_check(username: &str) -> Vec<u8> {
        let mut attr = vec![0x00, 0x06];
        attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attr.extend_from_slice(username.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attr);
        m
    }

    #[test]
    fn the_receive_thread_routes_by_ice_username_then_by_address() {
        let mut t = RouteTable::default();
        let add = |conf: &str, ep: &str, ufrag: &str, shard| Route::Add {
            conf: conf.into(),
            ep: ep.into(),
            ufrag: ufrag.into(),
            shard,
        };
        t.apply(add("c1", "a", "ua", 0));
        t.apply(add("c2", "b", "ub", 1));
        let (pa, pb, px): (SocketAddr, SocketAddr, SocketAddr) = (
            "10.0.0.1:5000".parse().unwrap(),
            "10.0.0.2:5000".parse().unwrap(),
            "10.0.0.9:5000".parse().unwrap(),
        );
        let rtp = [0x80u8, 100, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xaa];
        // Media from an address no check came from: nowhere.
        assert_eq!(t.target(pa, &rtp), Target::Nowhere);
        // A check names the endpoint (local ufrag first) and binds its address.
        assert_eq!(t.target(pa, &stun_check("ua:remote")), Target::Shard(0));
        assert_eq!(t.target(pb, &stun_check("ub:remote")), Target::Shard(1));
        assert_eq!(t.target(pa, &rtp), Target::Shard(0));
        assert_eq!(t.target(pb, &rtp), Target::Shard(1));
        // Unknown username: nowhere, and nothing bound.
        assert_eq!(t.target(px, &stun_check("nobody:r")), Target::Nowhere);
        assert_eq!(t.target(px, &rtp), Target::Nowhere);
        // A STUN answer from an address not bound yet: every shard.
        let mut answer = stun_check("x:y");
        answer[0] = 0x01;
        answer[1] = 0x01;
        assert_eq!(t.target(px, &answer), Target::Every);
        assert_eq!(t.target(pa, &answer), Target::Shard(0));
        // Removing the endpoint forgets its username and addresses.
        t.apply(Route::Remove {
            conf: "c1".into(),
            ep: "a".into(),
        });
        assert_eq!(t.target(pa, &rtp), Target::Nowhere);
        assert_eq!(t.target(pa, &stun_check("ua:remote")), Target::Nowhere);
        assert_eq!(t.target(pb, &rtp), Target::Shard(1));
        // An expiry by ufrag: a newer endpoint of the same id keeps its route.
        t.apply(add("c2", "b", "ub2", 1));
        t.apply(Route::Forget { ufrag: "ub".into() });
        assert_eq!(t.target(pb, &rtp), Target::Nowhere);
        assert_eq!(t.target(pb, &stun_check("ub2:remote")), Target::Shard(1));
        t.apply(Route::Forget {
            ufrag: "ub-old".into(),
        });
        assert_eq!(t.target(pb, &rtp), Target::Shard(1));
        t.apply(Route::RemoveConference { conf: "c2".into() });
        assert_eq!(t.target(pb, &rtp), Target::Nowhere);
        assert!(t.ufrags.is_empty() && t.eps.is_empty() && t.addrs.is_empty());
        // Conferences spread over shards by name, the same way every time.
        let shards: Vec<usize> = (0..64).map(|i| shard_of(&format!("room{i}"), 4)).collect();
        assert!((0..4).all(|k| shards.contains(&k)));
        assert_eq!(shard_of("room7", 4), shards[7]);
        assert_eq!(shard_of("anything", 1), 0);
    }

    #[test]
    fn a_full_event_queue_keeps_order_in_a_bounded_backlog() {
        let (tx, mut rx) = mpsc::channel(2);
        let mut sink = EventSink::new(tx, 3);
        let ev = |i: usize| Event::ConferenceRemoved {
            conference: format!("c{i}"),
        };
        for i in 0..7 {
            sink.push(ev(i));
        }
        // Two in the queue, three waiting, two dropped and counted.
        assert_eq!((sink.backlog.len(), sink.dropped), (3, 2));
        let mut got = Vec::new();
        while let Ok(e) = rx.try_recv() {
            got.push(e);
        }
        sink.flush();
        while let Ok(e) = rx.try_recv() {
            got.push(e);
        }
        sink.flush();
        while let Ok(e) = rx.try_recv() {
            got.push(e);
        }
        assert_eq!(got, (0..5).map(ev).collect::<Vec<_>>(), "in order");
        assert!(sink.backlog.is_empty());
        // A closed queue (no bridge task): nothing piles up.
        drop(rx);
        sink.push(ev(9));
        assert!(sink.backlog.is_empty());
    }

    #[tokio::test]
    async fn a_bridge_channel_hint_waits_for_room_then_fails_loudly() {
        let (h, mut rxs, _) = EngineHandle::detached(1, 1);
        let hint = || Command::RemoveConference { conf: "c".into() };
        h.send_hint(hint()).await.expect("room");
        // Full: the hint waits until the engine takes the first command.
        let waiting = tokio::spawn({
            let h = h.clone();
            async move { h.send_hint(hint()).await }
        });
        tokio::task::yield_now().await;
        assert!(rxs[0].recv().await.is_some());
        assert_eq!(waiting.await.ok(), Some(Ok(())));
        assert!(rxs[0].recv().await.is_some(), "the hint arrived");
        // Full and nobody reading: after HINT_WAIT the caller learns it.
        h.send_hint(hint()).await.expect("room");
        assert_eq!(h.send_hint(hint()).await, Err(EngineBusy));
    }
}
