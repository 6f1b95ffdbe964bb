//! The embedded TURN server (RFC 5766 relaying, coturn's time-limited credentials), so that a
//! deployment needs no separate coturn. The protocol is the `turn` crate's; this module gives
//! it its sockets and limits:
//!
//! - UDP and TCP on `[turn] port` (3478), and TLS on the HTTPS port through the demultiplexer
//!   (`src/shared_port.rs`): a TLS connection whose first bytes are STUN is TURN, not HTTPS.
//! - Credentials: the username is an expiry time, the password the base64 HMAC-SHA1 of it
//!   with `[turn] secret` (what the XEP-0215 answer hands out; docs/bridge.md B.12).
//! - Relayed addresses on `relay_min_port..=relay_max_port` of the first advertised address,
//!   `max_allocations` at most. Peers on private, loopback and link-local addresses other
//!   than meetd's own are refused unless `relay_private_peers`: a TURN server must not become
//!   a way into the network it stands in.
//!
//! Over TCP and TLS, STUN messages follow each other on the stream, and ChannelData messages
//! are padded to four bytes (RFC 5766 §11.5); each connection gets its own `turn::Server`
//! (allocations belong to their connection and end with it).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::UdpSocket;
use tokio::sync::{Mutex, Notify};
use turn::auth::LongTermAuthHandler;
use turn::relay::RelayAddressGenerator;
use turn::server::Server;
use turn::server::config::{ConnConfig, ServerConfig};
use webrtc_util::Conn;

use crate::config::{Config, TurnService};

/// The embedded server as XEP-0215 announces it: TURN over UDP and TCP on its port, TURN
/// over TLS on the HTTPS port (as clients reach it). The host: the public URL's, else the
/// first advertised media address, else the domain.
pub fn announced(cfg: &Config) -> Vec<TurnService> {
    let public = cfg
        .server
        .public_url
        .split("://")
        .nth(1)
        .map(|r| r.split(['/', ':']).next().unwrap_or(""))
        .filter(|h| !h.is_empty());
    let host = match (public, cfg.media.advertise_ips.first()) {
        (Some(h), _) => h.to_string(),
        // lib-jitsi-meet writes `turn:<host>:<port>`: an IPv6 address needs its brackets.
        (None, Some(IpAddr::V6(v6))) => format!("[{v6}]"),
        (None, Some(ip)) => ip.to_string(),
        (None, None) => cfg.server.domain.clone(),
    };
    let mut v = Vec::new();
    if cfg.turn.port != 0 {
        for transport in ["udp", "tcp"] {
            v.push(TurnService {
                kind: "turn".into(),
                host: host.clone(),
                port: cfg.turn.port,
                transport: transport.into(),
            });
        }
    }
    if cfg.turn.on_https
        && let Some(a) = cfg.listen.https.addr()
    {
        let port = match cfg.media.tcp_https_public_port {
            0 => a.port(),
            p => p,
        };
        v.push(TurnService {
            kind: "turns".into(),
            host,
            port,
            transport: "tcp".into(),
        });
    }
    v
}

/// The server's setup from the configuration and the announced media addresses.
pub fn setup(cfg: &Config, media_ips: &[IpAddr]) -> TurnSetup {
    let relay_ip = media_ips
        .first()
        .copied()
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    let bind_ip = if relay_ip.is_ipv6() {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    };
    TurnSetup {
        port: cfg.turn.port,
        bind_ip,
        relay_ip,
        own_ips: media_ips.to_vec(),
        secret: cfg.turn.secret.clone(),
        realm: cfg.server.domain.clone(),
        relay_ports: (cfg.turn.relay_min_port, cfg.turn.relay_max_port),
        max_allocations: cfg.turn.max_allocations,
        max_connections: cfg.turn.max_connections,
        relay_private_peers: cfg.turn.relay_private_peers,
        relay_socket_buffer: cfg.turn.relay_socket_buffer_bytes,
    }
}

/// What the embedded TURN server needs.
#[derive(Debug, Clone)]
pub struct TurnSetup {
    /// UDP and TCP port (0: neither; TLS through the HTTPS port may still be on).
    pub port: u16,
    /// Where the listeners and relay sockets bind (the unspecified address of the family).
    pub bind_ip: IpAddr,
    /// The address clients and peers reach relayed addresses on.
    pub relay_ip: IpAddr,
    /// meetd's own addresses (the bridge's media): always allowed as peers.
    pub own_ips: Vec<IpAddr>,
    pub secret: String,
    pub realm: String,
    pub relay_ports: (u16, u16),
    pub max_allocations: usize,
    pub max_connections: usize,
    pub relay_private_peers: bool,
    /// SO_RCVBUF / SO_SNDBUF of each relayed address's socket.
    pub relay_socket_buffer: usize,
}

/// The running server: its allocation and connection counts, and TCP/TLS connections to serve.
pub struct Turn {
    setup: TurnSetup,
    allocations: Arc<AtomicUsize>,
    /// Allocations made since start (`meetd_turn_allocations_total`).
    allocated: Arc<std::sync::atomic::AtomicU64>,
    connections: AtomicUsize,
    /// The UDP listener's server (dropping it stops it).
    _udp: Option<Server>,
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn")
            .field("allocations", &self.allocations.load(Ordering::Relaxed))
            .finish()
    }
}

impl Turn {
    /// Bind UDP and TCP on the TURN port and start serving.
    pub async fn start(setup: TurnSetup) -> anyhow::Result<Arc<Turn>> {
        let allocations = Arc::new(AtomicUsize::new(0));
        let allocated = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut udp = None;
        if setup.port != 0 {
            let addr = SocketAddr::new(setup.bind_ip, setup.port);
            let sock = UdpSocket::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("turn.port {addr} (UDP): {e}"))?;
            udp = Some(server(&setup, Arc::new(sock), &allocations, &allocated).await?);
        }
        let turn = Arc::new(Turn {
            setup: setup.clone(),
            allocations,
            allocated,
            connections: AtomicUsize::new(0),
            _udp: udp,
        });
        if setup.port != 0 {
            let addr = SocketAddr::new(setup.bind_ip, setup.port);
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("turn.port {addr} (TCP): {e}"))?;
            tracing::info!("TURN listening on {addr} (UDP and TCP)");
            let t = turn.clone();
            tokio::spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((s, peer)) => {
                            let _ = s.set_nodelay(true);
                            let local = s.local_addr().unwrap_or(addr);
                            let t = t.clone();
                            tokio::spawn(async move { t.serve_stream(s, peer, local).await });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "TURN accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                    }
                }
            });
        }
        Ok(turn)
    }

    /// Allocations open now.
    pub fn allocations_total(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    pub fn allocations(&self) -> usize {
        self.allocations.load(Ordering::Relaxed)
    }

    /// Serve TURN on one TCP or TLS connection until it closes.
    pub async fn serve_stream<S>(&self, stream: S, peer: SocketAddr, local: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        if self.connections.fetch_add(1, Ordering::Relaxed) >= self.setup.max_connections {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(%peer, "TURN connection limit reached; connection closed");
            return;
        }
        let conn = Arc::new(StreamConn::new(stream, peer, local));
        match server(
            &self.setup,
            conn.clone(),
            &self.allocations,
            &self.allocated,
        )
        .await
        {
            Ok(s) => {
                conn.closed.notified().await;
                let _ = s.close().await;
            }
            Err(e) => tracing::warn!(error = %e, "TURN over TCP"),
        }
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn server(
    setup: &TurnSetup,
    conn: Arc<dyn Conn + Send + Sync>,
    allocations: &Arc<AtomicUsize>,
    allocated: &Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<Server> {
    let relays = Relays {
        setup: setup.clone(),
        allocations: allocations.clone(),
        allocated: allocated.clone(),
    };
    Ok(Server::new(ServerConfig {
        conn_configs: vec![ConnConfig {
            conn,
            relay_addr_generator: Box::new(relays),
        }],
        realm: setup.realm.clone(),
        auth_handler: Arc::new(LongTermAuthHandler::new(setup.secret.clone())),
        channel_bind_timeout: std::time::Duration::ZERO,
        alloc_close_notify: None,
    })
    .await?)
}

/// Whether a peer may be relayed to: public addresses, and meetd's own; private, loopback,
/// link-local and unspecified ones only with `relay_private_peers`.
pub fn peer_allowed(ip: IpAddr, own: &[IpAddr], private_ok: bool) -> bool {
    if own.contains(&ip) {
        return true;
    }
    if ip.is_multicast() || ip.is_unspecified() {
        return false;
    }
    let private = match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_loopback() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| !peer_allowed(IpAddr::V4(v4), own, private_ok))
        }
    };
    private_ok || !private
}

/// Relayed-address sockets within the port range and the allocation limit.
struct Relays {
    setup: TurnSetup,
    allocations: Arc<AtomicUsize>,
    allocated: Arc<std::sync::atomic::AtomicU64>,
}

#[async_trait]
impl RelayAddressGenerator for Relays {
    fn validate(&self) -> Result<(), turn::Error> {
        Ok(())
    }

    async fn allocate_conn(
        &self,
        _use_ipv4: bool,
        _requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        if self.allocations.fetch_add(1, Ordering::Relaxed) >= self.setup.max_allocations {
            self.allocations.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!("TURN allocation limit reached");
            return Err(turn::Error::Other("allocation quota reached".into()));
        }
        self.allocated.fetch_add(1, Ordering::Relaxed);
        let guard = AllocationGuard(self.allocations.clone());
        let (lo, hi) = self.setup.relay_ports;
        let span = u32::from(hi.saturating_sub(lo)) + 1;
        let start = rand::random::<u32>() % span;
        for i in 0..span.min(64) {
            let port = lo + ((start + i) % span) as u16;
            if let Ok(sock) = UdpSocket::bind(SocketAddr::new(self.setup.bind_ip, port)).await {
                // The default buffer (about 200 KiB) overflows in a burst (a keyframe to a
                // client on TURN/TCP while its connection drains): give it room.
                let s = socket2::SockRef::from(&sock);
                let _ = s.set_recv_buffer_size(self.setup.relay_socket_buffer);
                let _ = s.set_send_buffer_size(self.setup.relay_socket_buffer);
                let conn = RelayConn {
                    sock,
                    own: self.setup.own_ips.clone(),
                    private_ok: self.setup.relay_private_peers,
                    _guard: guard,
                };
                return Ok((Arc::new(conn), SocketAddr::new(self.setup.relay_ip, port)));
            }
        }
        Err(turn::Error::Other("no free relay port".into()))
    }
}

/// Counts one allocation while it lives.
struct AllocationGuard(Arc<AtomicUsize>);

impl Drop for AllocationGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A relayed address: its UDP socket, refusing peers that [`peer_allowed`] refuses.
struct RelayConn {
    sock: UdpSocket,
    own: Vec<IpAddr>,
    private_ok: bool,
    _guard: AllocationGuard,
}

#[async_trait]
impl Conn for RelayConn {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(self.sock.connect(addr).await?)
    }
    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.sock.recv(buf).await?)
    }
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.sock.recv_from(buf).await?;
            if peer_allowed(from.ip(), &self.own, self.private_ok) {
                return Ok((n, from));
            }
        }
    }
    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.sock.send(buf).await?)
    }
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if !peer_allowed(target.ip(), &self.own, self.private_ok) {
            tracing::debug!(%target, "TURN peer refused");
            return Ok(buf.len());
        }
        Ok(self.sock.send_to(buf, target).await?)
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.sock.local_addr()?)
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }
    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// A byte stream that carries any AsyncRead + AsyncWrite (TCP, or TLS over it).
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A TURN client's TCP or TLS connection as the `turn` crate's datagram connection: one STUN
/// or ChannelData message per `recv_from`, all from the one client address.
struct StreamConn {
    rd: Mutex<ReadHalf<Box<dyn Stream>>>,
    wr: Mutex<WriteHalf<Box<dyn Stream>>>,
    peer: SocketAddr,
    local: SocketAddr,
    /// Told once reading ends (the connection is gone).
    closed: Notify,
    /// A write failed: the connection is gone, and what the allocation still relays to it
    /// is dropped quietly (the `turn` crate logs every failed send as an error).
    gone: AtomicBool,
}

impl StreamConn {
    fn new<S: Stream + 'static>(s: S, peer: SocketAddr, local: SocketAddr) -> StreamConn {
        let boxed: Box<dyn Stream> = Box::new(s);
        let (rd, wr) = tokio::io::split(boxed);
        StreamConn {
            rd: Mutex::new(rd),
            wr: Mutex::new(wr),
            peer,
            local,
            closed: Notify::new(),
            gone: AtomicBool::new(false),
        }
    }

    async fn read_message(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut rd = self.rd.lock().await;
        let mut head = [0u8; 4];
        rd.read_exact(&mut head).await?;
        let (len, total, padded) = message_size(head)?;
        if total > buf.len() {
            return Err(std::io::Error::other("TURN message larger than the buffer"));
        }
        buf[..4].copy_from_slice(&head);
        rd.read_exact(&mut buf[4..total]).await?;
        let mut pad = [0u8; 3];
        rd.read_exact(&mut pad[..padded - len]).await?;
        Ok(total)
    }
}

/// From a message's first four bytes: its length field, its size as returned (header
/// included), and for ChannelData its length padded to four bytes as TCP carries it.
fn message_size(head: [u8; 4]) -> std::io::Result<(usize, usize, usize)> {
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    match head[0] >> 6 {
        // STUN: a 20-byte header; the length excludes it and is a multiple of four.
        0 => Ok((len, 20 + len, len)),
        // ChannelData: channel numbers 0x4000..0x7FFF, then the length of the data.
        1 => Ok((len, 4 + len, len.div_ceil(4) * 4)),
        _ => Err(std::io::Error::other("neither STUN nor ChannelData")),
    }
}

#[async_trait]
impl Conn for StreamConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }
    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        match self.read_message(buf).await {
            Ok(n) => Ok((n, self.peer)),
            Err(e) => {
                self.closed.notify_one();
                Err(e.into())
            }
        }
    }
    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.send_to(buf, self.peer).await
    }
    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        if self.gone.load(Ordering::Relaxed) {
            return Ok(buf.len());
        }
        let mut wr = self.wr.lock().await;
        let written = async {
            wr.write_all(buf).await?;
            // ChannelData over a stream is padded to four bytes.
            if buf.first().is_some_and(|b| b >> 6 == 1) && !buf.len().is_multiple_of(4) {
                wr.write_all(&[0u8; 3][..4 - buf.len() % 4]).await?;
            }
            wr.flush().await
        }
        .await;
        match written {
            Ok(()) => Ok(buf.len()),
            Err(e) => {
                // Reported once; the reader ends the connection's server.
                self.gone.store(true, Ordering::Relaxed);
                self.closed.notify_one();
                Err(e.into())
            }
        }
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }
    async fn close(&self) -> webrtc_util::Result<()> {
        self.closed.notify_one();
        Ok(())
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_peers_are_refused_unless_they_are_ours() {
        let own: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap()];
        let ok = |s: &str, private_ok| peer_allowed(s.parse().unwrap(), &own, private_ok);
        assert!(ok("203.0.113.7", false));
        assert!(ok("127.0.0.1", false), "meetd itself");
        for bad in [
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "127.0.0.2",
            "169.254.1.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "0.0.0.0",
            "224.0.0.1",
        ] {
            assert!(!ok(bad, false), "{bad}");
        }
        assert!(ok("10.1.2.3", true));
        assert!(!ok("224.0.0.1", true), "never multicast");
    }

    #[test]
    fn an_ipv6_host_is_announced_in_brackets() {
        let mut cfg = Config::default();
        cfg.media.advertise_ips = vec!["fd00::1".parse().unwrap()];
        let a = announced(&cfg);
        assert!(!a.is_empty());
        assert!(a.iter().all(|s| s.host == "[fd00::1]"), "{a:?}");
        cfg.media.advertise_ips = vec!["192.0.2.1".parse().unwrap()];
        assert_eq!(announced(&cfg)[0].host, "192.0.2.1");
        cfg.server.public_url = "https://meet.example.org:8443/".into();
        assert_eq!(announced(&cfg)[0].host, "meet.example.org");
    }

    #[test]
    fn stream_framing() {
        // A binding request: 20 bytes + 8 of attributes.
        assert_eq!(message_size([0x00, 0x01, 0x00, 0x08]).unwrap(), (8, 28, 8));
        // ChannelData of 5 bytes: 3 bytes of padding on a stream.
        assert_eq!(message_size([0x40, 0x00, 0x00, 0x05]).unwrap(), (5, 9, 8));
        assert!(message_size([0x80, 0, 0, 0]).is_err());
    }

    /// A STUN message and a padded ChannelData message read back one by one from a stream.
    #[tokio::test]
    async fn messages_are_read_one_at_a_time() {
        let (a, b) = tokio::io::duplex(1024);
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let conn = StreamConn::new(b, addr, addr);
        let mut a = a;
        let mut stun = vec![0x00, 0x01, 0x00, 0x04];
        stun.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        stun.extend_from_slice(&[0; 12]);
        stun.extend_from_slice(&[0, 0, 0, 0]);
        a.write_all(&stun).await.unwrap();
        a.write_all(&[0x40, 0x01, 0x00, 0x03, 7, 8, 9, 0])
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = conn.recv_from(&mut buf).await.unwrap();
        assert_eq!((n, from), (24, addr));
        let (n, _) = conn.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &[0x40, 0x01, 0x00, 0x03, 7, 8, 9]);
        // What the server sends is padded the same way.
        conn.send_to(&[0x40, 0x01, 0x00, 0x01, 5], addr)
            .await
            .unwrap();
        let mut back = [0u8; 8];
        a.read_exact(&mut back).await.unwrap();
        assert_eq!(back, [0x40, 0x01, 0x00, 0x01, 5, 0, 0, 0]);
        drop(a);
        assert!(conn.recv_from(&mut buf).await.is_err());
    }
}
