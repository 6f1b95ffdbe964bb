//! The media engine's thread: one UDP socket, the sans-IO [`MediaEngine`], commands from the
//! Colibri2 service and the bridge channel in, events out. No lock on the packet path: the
//! engine is owned by this thread alone.

use std::collections::HashMap;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use parking_lot::Mutex;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::channel::ChannelHub;
use crate::colibri2::{IceUdpTransport, Media, Sources};
use crate::media::ReceiverConstraints;
use crate::media::{EngineConfig, EngineEvent, EngineOutput, EngineStats, MediaEngine};
use crate::service::ColibriService;

/// Receive and send buffer requested for the media socket.
pub const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

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
    /// The sender's bridge channel said what one of its sources is (`SourceVideoTypeMessage`).
    SourceVideoType {
        conf: String,
        ep: String,
        source: String,
        video_type: String,
    },
    /// Colibri2 `force-mute` from the focus.
    ForceMute {
        conf: String,
        ep: String,
        audio: Option<bool>,
        video: Option<bool>,
    },
    Stats(oneshot::Sender<EngineStats>),
}

/// The Colibri2 service the engine thread tells about endpoints it expires.
#[derive(Default)]
struct ServiceLink(Mutex<Option<Weak<ColibriService>>>);

impl std::fmt::Debug for ServiceLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceLink")
    }
}

impl ServiceLink {
    fn get(&self) -> Option<Arc<ColibriService>> {
        self.0.lock().as_ref().and_then(Weak::upgrade)
    }
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
        Command::RemoveEndpoint { conf, ep } => Some(Route::Remove {
            conf: conf.clone(),
            ep: ep.clone(),
        }),
        Command::RemoveConference { conf } => Some(Route::RemoveConference { conf: conf.clone() }),
        _ => None,
    }
}

/// Sends commands to the engine thread(s). [`EngineHandle::submit`] takes all of a request's
/// commands or none (the caller answers "busy"); [`EngineHandle::send`], for the bridge
/// channel's hints, drops and logs when the queue is full.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    /// One command queue per engine shard.
    txs: Vec<mpsc::Sender<Command>>,
    /// With several shards: the receive thread's routing updates, and what it dropped.
    router: Option<(mpsc::Sender<Route>, Arc<AtomicU64>)>,
    service: Arc<ServiceLink>,
}

impl EngineHandle {
    /// Endpoints the engine expires (docs/bridge.md B.10) are removed from this service too
    /// ([`ColibriService::with_engine`] attaches itself).
    pub fn attach_service(&self, service: &Arc<ColibriService>) {
        *self.service.0.lock() = Some(Arc::downgrade(service));
    }

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
        (
            EngineHandle {
                txs,
                router,
                service: Arc::new(ServiceLink::default()),
            },
            rxs,
            rrx,
        )
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

    /// A command for the shard of its conference (and, with several shards, the routing
    /// update the receive thread needs for it). A full queue drops it with a log line.
    pub fn send(&self, c: Command) {
        let conf = match &c {
            Command::AddEndpoint { conf, .. }
            | Command::SetRemote { conf, .. }
            | Command::SetSources { conf, .. }
            | Command::RemoveEndpoint { conf, .. }
            | Command::RemoveConference { conf }
            | Command::Constraints { conf, .. }
            | Command::SourceVideoType { conf, .. }
            | Command::ForceMute { conf, .. } => conf.as_str(),
            Command::Stats(_) => "",
        };
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
}

/// A STUN Binding request without USERNAME (a plain STUN client, e.g. for P2P) gets a
/// Binding success response with XOR-MAPPED-ADDRESS (RFC 5389). ICE checks carry USERNAME
/// and go to the engine instead.
pub fn plain_stun_response(req: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
    const MAGIC: u32 = 0x2112_A442;
    if req.len() < 20 || req[0] != 0x00 || req[1] != 0x01 {
        return None;
    }
    if u32::from_be_bytes([req[4], req[5], req[6], req[7]]) != MAGIC {
        return None;
    }
    let len = u16::from_be_bytes([req[2], req[3]]) as usize;
    if req.len() < 20 + len {
        return None;
    }
    let mut i = 20;
    while i + 4 <= 20 + len {
        let ty = u16::from_be_bytes([req[i], req[i + 1]]);
        let alen = u16::from_be_bytes([req[i + 2], req[i + 3]]) as usize;
        if ty == 0x0006 {
            return None; // USERNAME: an ICE check.
        }
        i += 4 + alen.div_ceil(4) * 4;
    }
    let tid = &req[8..20];
    let mut attr = Vec::with_capacity(24);
    let port = from.port() ^ (MAGIC >> 16) as u16;
    match from {
        SocketAddr::V4(a) => {
            attr.extend_from_slice(&[0x00, 0x01]);
            attr.extend_from_slice(&port.to_be_bytes());
            let ip = u32::from(*a.ip()) ^ MAGIC;
            attr.extend_from_slice(&ip.to_be_bytes());
        }
        SocketAddr::V6(a) => {
            attr.extend_from_slice(&[0x00, 0x02]);
            attr.extend_from_slice(&port.to_be_bytes());
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC.to_be_bytes());
            key[4..].copy_from_slice(tid);
            for (b, k) in a.ip().octets().iter().zip(key) {
                attr.push(b ^ k);
            }
        }
    }
    let mut out = Vec::with_capacity(20 + 4 + attr.len());
    out.extend_from_slice(&[0x01, 0x01]);
    out.extend_from_slice(&((4 + attr.len()) as u16).to_be_bytes());
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(tid);
    out.extend_from_slice(&[0x00, 0x20]);
    out.extend_from_slice(&(attr.len() as u16).to_be_bytes());
    out.extend_from_slice(&attr);
    Some(out)
}

/// Start the engine on its own thread, bound to `bind`. Returns the command handle and the
/// DTLS fingerprint to put in offers.
pub fn spawn(
    cfg: EngineConfig,
    bind: SocketAddr,
    hub: Arc<ChannelHub>,
    queue: usize,
) -> std::io::Result<(EngineHandle, String)> {
    spawn_with_buffers(cfg, bind, hub, queue, SOCKET_BUFFER_BYTES)
}

/// [`spawn`] with the media socket's receive and send buffer size.
pub fn spawn_with_buffers(
    cfg: EngineConfig,
    bind: SocketAddr,
    hub: Arc<ChannelHub>,
    queue: usize,
    socket_buffer: usize,
) -> std::io::Result<(EngineHandle, String)> {
    let std_sock = std::net::UdpSocket::bind(bind)?;
    std_sock.set_nonblocking(true)?;
    // Media arrives in bursts (keyframes, many senders at once): the default ~200 KB buffer
    // drops them. The kernel caps the request at net.core.rmem_max / wmem_max.
    let sock2 = socket2::SockRef::from(&std_sock);
    let _ = sock2.set_recv_buffer_size(socket_buffer);
    let _ = sock2.set_send_buffer_size(socket_buffer);
    let local = std_sock.local_addr()?;
    let threads = cfg.threads.clamp(1, MAX_THREADS);
    let first = MediaEngine::new(cfg.clone());
    let fingerprint = first.dtls_fingerprint();
    let service = Arc::new(ServiceLink::default());
    if threads == 1 {
        let (tx, rx) = mpsc::channel(queue.max(16));
        let link = service.clone();
        on_thread("meetd-media".into(), move || async move {
            match UdpSocket::from_std(std_sock) {
                Ok(sock) => run(first, sock, local, rx, hub, link).await,
                Err(e) => tracing::error!(error = %e, "media socket failed"),
            }
        })?;
        return Ok((
            EngineHandle {
                txs: vec![tx],
                router: None,
                service,
            },
            fingerprint,
        ));
    }
    tracing::info!(
        threads,
        "media engine threads (conferences spread by name), plus one receiving"
    );
    // Several shards: this thread receives and hands datagrams over by endpoint; each shard
    // owns the conferences hashed to it and sends on its own handle of the same socket.
    let mut txs = Vec::with_capacity(threads);
    let mut inboxes = Vec::with_capacity(threads);
    let (route_tx, route_rx) = mpsc::channel(queue.max(16));
    let siblings: Vec<MediaEngine> = (1..threads).map(|_| first.sibling(cfg.clone())).collect();
    for (k, engine) in std::iter::once(first).chain(siblings).enumerate() {
        let (tx, rx) = mpsc::channel(queue.max(16));
        let (in_tx, in_rx) = mpsc::channel::<Inbound>(SHARD_INBOX);
        txs.push(tx);
        inboxes.push(in_tx);
        let send_sock = std_sock.try_clone()?;
        let (hub, link, router) = (hub.clone(), service.clone(), route_tx.clone());
        on_thread(format!("meetd-media-{k}"), move || async move {
            let q = ShardQueues {
                commands: rx,
                inbox: in_rx,
                router,
            };
            run_shard(engine, send_sock, local, q, hub, link).await;
        })?;
    }
    let dropped = Arc::new(AtomicU64::new(0));
    let counter = dropped.clone();
    on_thread("meetd-media-rx".into(), move || async move {
        match UdpSocket::from_std(std_sock) {
            Ok(sock) => receive(sock, inboxes, route_rx, counter).await,
            Err(e) => tracing::error!(error = %e, "media socket failed"),
        }
    })?;
    Ok((
        EngineHandle {
            txs,
            router: Some((route_tx, dropped)),
            service,
        },
        fingerprint,
    ))
}

/// Engine threads at most.
const MAX_THREADS: usize = 64;
/// Batches of datagrams waiting for one shard at most (a full inbox drops, as a full socket
/// buffer would).
const SHARD_INBOX: usize = 256;
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

async fn run(
    mut engine: MediaEngine,
    sock: UdpSocket,
    local: SocketAddr,
    mut rx: mpsc::Receiver<Command>,
    hub: Arc<ChannelHub>,
    link: Arc<ServiceLink>,
) {
    let mut recv = RecvBatch::new();
    let mut batch = SendBatch::default();
    let fd = sock.as_raw_fd();
    let mut load = Load::default();
    loop {
        load.update(Instant::now());
        let deadline = drain_outputs(&mut engine, &mut batch, fd, local, &hub, &link, None);
        tokio::select! {
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
                on_command(&mut engine, &hub, &load, c);
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                engine.handle_timeout(Instant::now());
            }
        }
    }
}

/// Everything the engine has to send or report, sent or reported; returns its next deadline.
fn drain_outputs(
    engine: &mut MediaEngine,
    batch: &mut SendBatch,
    fd: RawFd,
    local: SocketAddr,
    hub: &ChannelHub,
    link: &ServiceLink,
    router: Option<&mpsc::Sender<Route>>,
) -> Instant {
    let deadline = loop {
        match engine.poll_output() {
            EngineOutput::Transmit(t) => {
                batch.items.push((destination(local, t.to), t.data));
                if batch.items.len() >= SEND_BATCH {
                    batch.flush(fd, engine);
                }
            }
            EngineOutput::Event(e) => {
                if let (Some(r), EngineEvent::Expired { ufrag, .. }) = (router, &e) {
                    let _ = r.try_send(Route::Forget {
                        ufrag: ufrag.clone(),
                    });
                }
                crate::channel::events::event(hub, link.get().as_deref(), e);
            }
            EngineOutput::Timeout(t) => break t,
        }
    };
    batch.flush(fd, engine);
    deadline
}

fn on_command(engine: &mut MediaEngine, hub: &Arc<ChannelHub>, load: &Load, c: Command) {
    match c {
        Command::Stats(tx) => {
            let _ = tx.send(EngineStats {
                engine_cpu_permille: load.permille,
                ..engine.stats()
            });
        }
        c => command(engine, hub, c),
    }
}

/// Datagrams the receive thread hands to one shard: when they arrived, and from where.
#[derive(Debug)]
struct Inbound {
    at: Instant,
    items: Vec<(SocketAddr, Vec<u8>)>,
}

/// One engine shard: its conferences' datagrams come from the receive thread; it sends on its
/// own handle of the media socket.
/// A shard's queues: its commands, its datagrams, and routing updates it sends (expiries).
struct ShardQueues {
    commands: mpsc::Receiver<Command>,
    inbox: mpsc::Receiver<Inbound>,
    router: mpsc::Sender<Route>,
}

async fn run_shard(
    mut engine: MediaEngine,
    send_sock: std::net::UdpSocket,
    local: SocketAddr,
    q: ShardQueues,
    hub: Arc<ChannelHub>,
    link: Arc<ServiceLink>,
) {
    let ShardQueues {
        commands: mut rx,
        mut inbox,
        router,
    } = q;
    let mut batch = SendBatch::default();
    let fd = send_sock.as_raw_fd();
    let mut load = Load::default();
    loop {
        load.update(Instant::now());
        let deadline = drain_outputs(
            &mut engine,
            &mut batch,
            fd,
            local,
            &hub,
            &link,
            Some(&router),
        );
        tokio::select! {
            b = inbox.recv() => {
                let Some(b) = b else { break };
                for (from, data) in b.items {
                    engine.handle_datagram(b.at, from, local_for(from, local), &data);
                    engine.recycle(data);
                }
            }
            c = rx.recv() => {
                let Some(c) = c else { break };
                on_command(&mut engine, &hub, &load, c);
            }
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
            None if is_stun(data) => Target::Every,
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

/// A STUN message (RFC 5389: first two bits 0, the magic cookie).
fn is_stun(data: &[u8]) -> bool {
    data.len() >= 20 && data[0] & 0xc0 == 0 && data[4..8] == [0x21, 0x12, 0xa4, 0x42]
}

/// The receive thread of a sharded engine: `recvmmsg`, plain STUN answered here, every other
/// datagram handed to its endpoint's shard in one batch per shard and turn.
async fn receive(
    sock: UdpSocket,
    inboxes: Vec<mpsc::Sender<Inbound>>,
    mut routes: mpsc::Receiver<Route>,
    dropped: Arc<AtomicU64>,
) {
    let mut recv = RecvBatch::new();
    let mut table = RouteTable::default();
    let mut out: Vec<Vec<(SocketAddr, Vec<u8>)>> = inboxes.iter().map(|_| Vec::new()).collect();
    loop {
        tokio::select! {
            r = sock.readable() => {
                if r.is_err() {
                    continue;
                }
                let mut now = None;
                recv.each(&sock, |at, from, data| {
                    now = Some(at);
                    if let Some(resp) = plain_stun_response(data, canonical(from)) {
                        let _ = sock.try_send_to(&resp, from);
                        return;
                    }
                    let from = canonical(from);
                    match table.target(from, data) {
                        Target::Shard(k) => match out.get_mut(k) {
                            Some(o) => o.push((from, data.to_vec())),
                            None => {
                                dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        },
                        Target::Every => {
                            for o in &mut out {
                                o.push((from, data.to_vec()));
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

/// Datagrams read in one turn of the loop before outputs and timers are served.
const RECV_BATCH: usize = 32;
/// Datagrams handed to the kernel in one `sendmmsg`.
const SEND_BATCH: usize = 32;

/// Buffers for one `recvmmsg`.
struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    headers: nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>,
    /// Length and sender of each datagram received by the last call.
    got: Vec<(usize, Option<SocketAddr>)>,
}

impl RecvBatch {
    fn new() -> RecvBatch {
        RecvBatch {
            bufs: (0..RECV_BATCH).map(|_| vec![0u8; 2048]).collect(),
            headers: nix::sys::socket::MultiHeaders::preallocate(RECV_BATCH, None),
            got: Vec::with_capacity(RECV_BATCH),
        }
    }

    /// Read what is queued on `sock` (it polled readable) and call `f(now, from, data)` for each
    /// datagram; one clock reading per batch: they arrived together.
    fn each(&mut self, sock: &UdpSocket, mut f: impl FnMut(Instant, SocketAddr, &[u8])) {
        let fd = sock.as_raw_fd();
        match sock.try_io(tokio::io::Interest::READABLE, || self.receive(fd)) {
            Ok(()) => {
                let now = Instant::now();
                for (i, &(n, from)) in self.got.iter().enumerate() {
                    if let (Some(from), Some(data)) =
                        (from, self.bufs.get(i).and_then(|b| b.get(..n)))
                    {
                        f(now, from, data);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::debug!(error = %e, "media receive failed"),
        }
    }

    /// Read what is queued (at least one datagram, or `WouldBlock`).
    fn receive(&mut self, fd: RawFd) -> std::io::Result<()> {
        use nix::sys::socket::{MsgFlags, SockaddrLike, recvmmsg};
        self.got.clear();
        let mut iovs: Vec<[std::io::IoSliceMut<'_>; 1]> = self
            .bufs
            .iter_mut()
            .map(|b| [std::io::IoSliceMut::new(&mut b[..])])
            .collect();
        let res = recvmmsg(
            fd,
            &mut self.headers,
            &mut iovs,
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(std::io::Error::from)?;
        for m in res {
            let from = m.address.and_then(|a| match a.family() {
                Some(nix::sys::socket::AddressFamily::Inet) => {
                    a.as_sockaddr_in().map(|v| SocketAddr::from(*v))
                }
                Some(nix::sys::socket::AddressFamily::Inet6) => {
                    a.as_sockaddr_in6().map(|v| SocketAddr::from(*v))
                }
                _ => None,
            });
            // Larger than the buffer: truncated, useless.
            let truncated = m.flags.contains(MsgFlags::MSG_TRUNC);
            self.got
                .push((m.bytes, if truncated { None } else { from }));
        }
        if self.got.is_empty() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        Ok(())
    }
}

/// Datagrams waiting for one `sendmmsg`.
struct SendBatch {
    items: Vec<(SocketAddr, Vec<u8>)>,
    addrs: Vec<Option<nix::sys::socket::SockaddrStorage>>,
    headers: nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>,
    /// UDP GSO (Linux `UDP_SEGMENT`) works on this socket: runs of equal-sized datagrams to one
    /// destination go down the stack as one. Turned off for good at the first refusal.
    gso: bool,
    /// Scratch: item indices by destination; the ones sent singly.
    order: Vec<usize>,
    singles: Vec<(SocketAddr, Vec<u8>)>,
}

impl Default for SendBatch {
    fn default() -> SendBatch {
        SendBatch {
            items: Vec::with_capacity(SEND_BATCH),
            addrs: Vec::with_capacity(SEND_BATCH),
            headers: nix::sys::socket::MultiHeaders::preallocate(SEND_BATCH, None),
            gso: true,
            order: Vec::with_capacity(SEND_BATCH),
            singles: Vec::with_capacity(SEND_BATCH),
        }
    }
}

/// Segments in one GSO send at most (the kernel's UDP_MAX_SEGMENTS is 64 or more), and bytes.
const GSO_MAX_SEGMENTS: usize = 64;
const GSO_MAX_BYTES: usize = 60_000;

impl SendBatch {
    /// Send everything queued (what the socket buffer cannot take is dropped, as the network
    /// would) and give the buffers back to the engine.
    fn flush(&mut self, fd: RawFd, engine: &mut MediaEngine) {
        if self.gso && (2..=64).contains(&self.items.len()) {
            self.send_gso_runs(fd, engine);
        }
        self.send_each(fd, engine);
    }

    /// For each destination with a run of equal-sized datagrams (the last of a run may be
    /// shorter), send its datagrams in order: each run with one GSO `sendmsg`, the others
    /// with plain ones. Other destinations' datagrams stay in `items` for `sendmmsg`.
    fn send_gso_runs(&mut self, fd: RawFd, engine: &mut MediaEngine) {
        use nix::errno::Errno;
        use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg};
        let n = self.items.len();
        self.order.clear();
        self.order.extend(0..n);
        // Stable: each destination's datagrams keep their order.
        let items = &self.items;
        self.order.sort_by_key(|&i| items[i].0);
        // The end of the run starting at order[i] (exclusive).
        let run_end = |order: &[usize], i: usize| {
            let (to, size) = (items[order[i]].0, items[order[i]].1.len());
            let mut j = i + 1;
            let mut total = size;
            while j < n && j - i < GSO_MAX_SEGMENTS {
                let (t, d) = &items[order[j]];
                if *t != to || d.len() > size || total + d.len() > GSO_MAX_BYTES {
                    break;
                }
                total += d.len();
                j += 1;
                if d.len() < size {
                    break;
                }
            }
            j
        };
        // Bit k: item k is done with (sent, or dropped for a full buffer).
        let mut sent = 0u64;
        let mut start = 0;
        'destinations: while start < n {
            let to = items[self.order[start]].0;
            let end = (start..n)
                .find(|&k| items[self.order[k]].0 != to)
                .unwrap_or(n);
            let mut i = start;
            let has_run = (start..end).any(|k| run_end(&self.order, k) - k >= 2);
            if !has_run {
                start = end;
                continue;
            }
            let addr = SockaddrStorage::from(to);
            while i < end {
                let j = run_end(&self.order, i);
                let iovs: Vec<IoSlice<'_>> = self.order[i..j]
                    .iter()
                    .map(|&k| IoSlice::new(&items[k].1))
                    .collect();
                let seg = items[self.order[i]].1.len().min(usize::from(u16::MAX)) as u16;
                let gso = [ControlMessage::UdpGsoSegments(&seg)];
                let cmsgs: &[ControlMessage<'_>] = if j - i >= 2 { &gso } else { &[] };
                match sendmsg(fd, &iovs, cmsgs, MsgFlags::MSG_DONTWAIT, Some(&addr)) {
                    Ok(_) if j - i >= 2 => engine.count_gso((j - i) as u64),
                    Ok(_) => {}
                    Err(Errno::EAGAIN | Errno::ENOBUFS) => {
                        engine.count_send_dropped((j - i) as u64);
                    }
                    Err(Errno::EINTR) => continue,
                    // No GSO here (old kernel, no checksum offload, IPsec): the rest goes
                    // datagram by datagram (after what went, so in order).
                    Err(e) if j - i >= 2 => {
                        tracing::info!(error = %e, "UDP GSO refused: media sent datagram by datagram");
                        self.gso = false;
                        break 'destinations;
                    }
                    // This one datagram cannot go (e.g. no route): skip it.
                    Err(e) => {
                        tracing::debug!(error = %e, %to, "media send failed");
                        engine.count_send_dropped(1);
                    }
                }
                for &k in &self.order[i..j] {
                    sent |= 1 << k;
                }
                i = j;
            }
            start = end;
        }
        // Keep what is left (in its order) for sendmmsg, recycle what went.
        self.singles.clear();
        for (k, item) in self.items.drain(..).enumerate() {
            if sent & (1 << k) != 0 {
                engine.recycle(item.1);
            } else {
                self.singles.push(item);
            }
        }
        std::mem::swap(&mut self.items, &mut self.singles);
    }

    /// `sendmmsg` of everything in `items`.
    fn send_each(&mut self, fd: RawFd, engine: &mut MediaEngine) {
        use nix::errno::Errno;
        use nix::sys::socket::{MsgFlags, SockaddrStorage, sendmmsg};
        let mut at = 0;
        while at < self.items.len() {
            let rest = &self.items[at..];
            let iovs: Vec<[IoSlice<'_>; 1]> = rest.iter().map(|(_, d)| [IoSlice::new(d)]).collect();
            self.addrs.clear();
            self.addrs
                .extend(rest.iter().map(|(a, _)| Some(SockaddrStorage::from(*a))));
            match sendmmsg(
                fd,
                &mut self.headers,
                &iovs,
                &self.addrs,
                [],
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(r) => {
                    let n = r.count();
                    if n == 0 {
                        engine.count_send_dropped((self.items.len() - at) as u64);
                        break;
                    }
                    at += n;
                }
                // The socket buffer is full: drop the rest.
                Err(Errno::EAGAIN | Errno::ENOBUFS) => {
                    engine.count_send_dropped((self.items.len() - at) as u64);
                    break;
                }
                Err(Errno::EINTR) => {}
                // This one datagram cannot go (e.g. no route): skip it.
                Err(e) => {
                    tracing::debug!(error = %e, to = %rest[0].0, "media send failed");
                    engine.count_send_dropped(1);
                    at += 1;
                }
            }
        }
        for (_, data) in self.items.drain(..) {
            engine.recycle(data);
        }
    }
}

fn datagram(
    engine: &mut MediaEngine,
    sock: &UdpSocket,
    local: SocketAddr,
    now: Instant,
    from: SocketAddr,
    data: &[u8],
) {
    if let Some(resp) = plain_stun_response(data, canonical(from)) {
        let _ = sock.try_send_to(&resp, from);
        return;
    }
    // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d: the engine sees them as
    // IPv4, received on the (unspecified) local address of the same family.
    let from = canonical(from);
    engine.handle_datagram(now, from, local_for(from, local), data);
}

/// The local address the engine takes a datagram from `from` as received on: the
/// (unspecified) one of the same family, on the media port.
fn local_for(from: SocketAddr, local: SocketAddr) -> SocketAddr {
    match from {
        SocketAddr::V4(_) => SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), local.port()),
        SocketAddr::V6(_) => SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), local.port()),
    }
}

/// IPv4-mapped IPv6 addresses as plain IPv4.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The address to send to on `sock`: IPv4 destinations are mapped on an IPv6 socket.
fn destination(local: SocketAddr, to: SocketAddr) -> SocketAddr {
    match (local, to) {
        (SocketAddr::V6(_), SocketAddr::V4(v4)) => {
            SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
        }
        _ => to,
    }
}

fn command(engine: &mut MediaEngine, hub: &ChannelHub, c: Command) {
    let now = Instant::now();
    match c {
        Command::AddEndpoint {
            conf,
            ep,
            ufrag,
            pwd,
            medias,
            ssrc_rewriting,
        } => {
            hub.reset_endpoint(&conf, &ep);
            engine.add_endpoint(&conf, &ep, &ufrag, &pwd, ssrc_rewriting, &medias, now);
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
            hub.forget_endpoint(&conf, &ep);
            hub.set_conference_sticky(&conf, &crate::channel::events::connectivity_key(&ep), None);
            if !engine.has_conference(&conf) {
                hub.forget_conference(&conf);
            }
        }
        Command::RemoveConference { conf } => {
            engine.remove_conference(&conf);
            hub.forget_conference(&conf);
        }
        Command::Constraints {
            conf,
            ep,
            constraints,
        } => engine.set_receiver_constraints((&conf, &ep), constraints),
        Command::SourceVideoType {
            conf,
            ep,
            source,
            video_type,
        } => engine.set_source_video_type((&conf, &ep), &source, &video_type),
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

    /// A batch mixing runs of equal-sized datagrams (GSO) and odd ones, to two sockets on
    /// loopback: each datagram arrives once, whole, in its destination's order.
    #[test]
    fn batched_sends_arrive_once_whole_and_in_order() {
        use std::net::UdpSocket as StdSocket;
        let tx = StdSocket::bind("127.0.0.1:0").unwrap();
        let rx: Vec<StdSocket> = (0..2)
            .map(|_| {
                let s = StdSocket::bind("127.0.0.1:0").unwrap();
                s.set_read_timeout(Some(std::time::Duration::from_millis(200)))
                    .unwrap();
                s
            })
            .collect();
        let to: Vec<SocketAddr> = rx.iter().map(|s| s.local_addr().unwrap()).collect();
        // (destination, size): a run of five with a shorter last one, interleaved with
        // uneven sizes to the other, then another run.
        let plan: Vec<(usize, usize)> = vec![
            (0, 1000),
            (1, 1000),
            (0, 1000),
            (1, 900),
            (0, 1000),
            (0, 1000),
            (1, 900),
            (0, 600),
            (1, 1000),
            (0, 1000),
            (0, 1000),
            (1, 50),
        ];
        let mut engine = MediaEngine::new(EngineConfig::default());
        for gso in [true, false] {
            let mut batch = SendBatch {
                gso,
                ..SendBatch::default()
            };
            for (k, &(d, size)) in plan.iter().enumerate() {
                let mut data = vec![k as u8; size];
                data[0] = d as u8;
                batch.items.push((to[d], data));
            }
            batch.flush(tx.as_raw_fd(), &mut engine);
            assert!(batch.items.is_empty());
            for (d, sock) in rx.iter().enumerate() {
                let want: Vec<(usize, usize)> = plan
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.0 == d)
                    .map(|(k, p)| (k, p.1))
                    .collect();
                let mut got = Vec::new();
                let mut buf = [0u8; 2048];
                while let Ok(n) = sock.recv(&mut buf) {
                    assert!(buf[..n].iter().skip(1).all(|b| *b == buf[n - 1]), "whole");
                    assert_eq!(usize::from(buf[0]), d);
                    got.push((usize::from(buf[n - 1]), n));
                }
                assert_eq!(got, want, "gso={gso} destination {d}");
            }
        }
        assert_eq!(engine.stats().send_dropped, 0);
    }

    #[test]
    fn dual_stack_addresses_are_mapped_both_ways() {
        let mapped: SocketAddr = "[::ffff:10.0.0.7]:5000".parse().unwrap();
        let v4: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        assert_eq!(canonical(mapped), v4);
        assert_eq!(canonical(v6), v6);
        let any6: SocketAddr = "[::]:10000".parse().unwrap();
        let any4: SocketAddr = "0.0.0.0:10000".parse().unwrap();
        assert_eq!(destination(any6, v4), mapped);
        assert_eq!(destination(any6, v6), v6);
        assert_eq!(destination(any4, v4), v4);
    }

    #[test]
    fn plain_binding_request_gets_xor_mapped_address() {
        let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        req.extend_from_slice(&[7u8; 12]);
        let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let r = plain_stun_response(&req, from).unwrap();
        assert_eq!(&r[0..2], &[0x01, 0x01]);
        assert_eq!(&r[8..20], &[7u8; 12]);
        // XOR-MAPPED-ADDRESS port and address.
        assert_eq!(u16::from_be_bytes([r[26], r[27]]) ^ 0x2112, 40000);
        let ip = u32::from_be_bytes([r[28], r[29], r[30], r[31]]) ^ 0x2112_A442;
        assert_eq!(std::net::Ipv4Addr::from(ip), std::net::Ipv4Addr::LOCALHOST);
        // With USERNAME it is an ICE check: not ours.
        let mut ice = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42];
        ice.extend_from_slice(&[7u8; 12]);
        ice.extend_from_slice(&[0x00, 0x06, 0x00, 0x04, b'a', b':', b'b', b'c']);
        assert!(plain_stun_response(&ice, from).is_none());
        assert!(plain_stun_response(b"garbage", from).is_none());
    }
}
