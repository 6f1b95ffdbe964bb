//! ICE-TCP: media over TCP for clients whose UDP is blocked (docs/bridge.md B.1). The bridge
//! offers passive TCP host candidates (RFC 6544) on its ICE-TCP port and, optionally, on the
//! HTTPS port, where [`sniff`] tells ICE from TLS by the first bytes. The client connects and
//! sends RFC 4571 frames (a 2-byte length, then one STUN, DTLS, RTP or RTCP packet); each
//! frame goes to the engine as a datagram of that connection, and what the engine sends to
//! the connection's address is framed back onto it.
//!
//! [`TcpMedia`] holds the connections (bounded in number, each with a bounded send queue) and
//! the queue of frames to the engine threads; [`TcpMedia::serve`] is one connection's task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::socket::canonical;

/// One frame from a connection, for the engine.
#[derive(Debug)]
pub struct TcpFrame {
    pub at: Instant,
    /// The client's end of the connection.
    pub from: SocketAddr,
    /// The bridge's end (the local candidate it arrived on).
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

/// How many connections, and how much in flight on each.
#[derive(Debug, Clone)]
pub struct TcpLimits {
    /// Open connections at most; more are closed at once.
    pub max_connections: usize,
    /// Packets waiting to be written to one connection at most; more are dropped (the
    /// connection is slower than the media).
    pub send_queue: usize,
    /// A connection must send its first frame (a STUN binding request) within this.
    pub first_frame_timeout: Duration,
    /// A connection that sent nothing this long is closed (browsers send consent checks
    /// every few seconds).
    pub idle_timeout: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_connections: 1000,
            send_queue: 512,
            first_frame_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Counters of the ICE-TCP side.
#[derive(Debug, Default)]
pub struct TcpStats {
    pub connections: AtomicU64,
    /// Connections closed for a bad first frame, a timeout or the connection limit.
    pub refused: AtomicU64,
    /// Frames the engine's queue or a connection's send queue had no room for.
    pub dropped: AtomicU64,
}

/// What the first bytes of a connection on a shared port say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// A TLS record (ClientHello): HTTPS.
    Tls,
    /// An RFC 4571-framed STUN binding request: ICE-TCP.
    IceTcp,
    /// Not enough bytes yet.
    NeedMore,
}

/// Bytes [`sniff`] needs at most.
pub const SNIFF_BYTES: usize = 10;

/// Tell ICE-TCP from TLS by a connection's first bytes: a TLS handshake record starts with
/// 0x16; a framed STUN binding request with its length, then type 0x0001 and, after its own
/// length, the magic cookie 0x2112A442. Anything else is left to TLS (which refuses it).
pub fn sniff(prefix: &[u8]) -> Sniff {
    match prefix.first() {
        None => return Sniff::NeedMore,
        Some(0x16) => return Sniff::Tls,
        _ => {}
    }
    if prefix.get(2..4).is_some_and(|t| t != [0x00, 0x01]) {
        return Sniff::Tls;
    }
    if prefix.len() < SNIFF_BYTES {
        return Sniff::NeedMore;
    }
    if prefix[6..10] == [0x21, 0x12, 0xA4, 0x42] {
        Sniff::IceTcp
    } else {
        Sniff::Tls
    }
}

/// One open connection: its number (a newer one from the same address replaces it) and its
/// send queue.
struct Conn {
    id: u64,
    tx: mpsc::Sender<Vec<u8>>,
}

/// The bridge's ICE-TCP connections and the queue of their frames to the engine.
pub struct TcpMedia {
    /// By the client's address: where the engine's datagrams for it go.
    conns: Mutex<HashMap<SocketAddr, Conn>>,
    inbound: mpsc::Sender<TcpFrame>,
    limits: TcpLimits,
    next: AtomicU64,
    pub stats: TcpStats,
}

impl std::fmt::Debug for TcpMedia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpMedia")
            .field("connections", &self.conns.lock().len())
            .finish()
    }
}

impl TcpMedia {
    /// Frames go to `inbound` (the engine threads read it).
    pub fn new(limits: TcpLimits, inbound: mpsc::Sender<TcpFrame>) -> Arc<TcpMedia> {
        Arc::new(TcpMedia {
            conns: Mutex::new(HashMap::new()),
            inbound,
            limits,
            next: AtomicU64::new(0),
            stats: TcpStats::default(),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.conns.lock().len()
    }

    /// An engine datagram for the connection from `to`, framed onto it. False (counted) when
    /// there is no such connection or its send queue is full.
    pub fn send(&self, to: SocketAddr, data: Vec<u8>) -> bool {
        let tx = self.conns.lock().get(&to).map(|c| c.tx.clone());
        let sent = tx.is_some_and(|tx| tx.try_send(data).is_ok());
        if !sent {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// Serve one accepted connection until it closes: frames in to the engine, the engine's
    /// datagrams out. A connection whose first frame is not a STUN binding request, or that
    /// stays silent too long, is closed.
    pub async fn serve(self: Arc<Self>, stream: TcpStream) {
        let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
            return;
        };
        let (peer, local) = (canonical(peer), canonical(local));
        let _ = stream.set_nodelay(true);
        let (tx, rx) = mpsc::channel(self.limits.send_queue.max(1));
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        {
            let mut conns = self.conns.lock();
            if conns.len() >= self.limits.max_connections && !conns.contains_key(&peer) {
                drop(conns);
                tracing::warn!(%peer, "ICE-TCP connection limit reached; connection closed");
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // A new connection from the same address replaces the older one.
            conns.insert(peer, Conn { id, tx });
        }
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, %local, "ICE-TCP connection");
        let (rd, wr) = stream.into_split();
        tokio::select! {
            why = self.read_frames(rd, peer, local) => {
                tracing::debug!(%peer, why, "ICE-TCP connection closed");
            }
            _ = write_frames(wr, rx) => {}
        }
        let mut conns = self.conns.lock();
        if conns.get(&peer).is_some_and(|c| c.id == id) {
            conns.remove(&peer);
        }
    }

    /// Read frames until the connection ends; returns why it ended.
    async fn read_frames(
        &self,
        mut rd: tokio::net::tcp::OwnedReadHalf,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> &'static str {
        let mut first = true;
        loop {
            let wait = if first {
                self.limits.first_frame_timeout
            } else {
                self.limits.idle_timeout
            };
            let mut len = [0u8; 2];
            match tokio::time::timeout(wait, rd.read_exact(&mut len)).await {
                Err(_) => {
                    if first {
                        self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    return "timeout";
                }
                Ok(Err(_)) => return "closed by the client",
                Ok(Ok(_)) => {}
            }
            let len = usize::from(u16::from_be_bytes(len));
            let mut data = vec![0u8; len];
            match tokio::time::timeout(wait, rd.read_exact(&mut data)).await {
                Err(_) => return "timeout inside a frame",
                Ok(Err(_)) => return "closed inside a frame",
                Ok(Ok(_)) => {}
            }
            if first && crate::rtp::stun::stun_request_local_ufrag(&data).is_none() {
                tracing::info!(%peer, "ICE-TCP connection without a STUN binding request first; closed");
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                return "not ICE";
            }
            first = false;
            if len == 0 {
                continue;
            }
            let frame = TcpFrame {
                at: Instant::now(),
                from: peer,
                to: local,
                data,
            };
            if self.inbound.try_send(frame).is_err() {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Write the engine's datagrams as RFC 4571 frames, flushing when the queue runs dry.
async fn write_frames(wr: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(data) = next {
            // Nothing the engine sends exceeds a frame; anything that did would be skipped.
            if let Ok(len) = u16::try_from(data.len())
                && (wr.write_all(&len.to_be_bytes()).await.is_err()
                    || wr.write_all(&data).await.is_err())
            {
                return;
            }
            next = rx.try_recv().ok();
        }
        if wr.flush().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed_binding_request() -> Vec<u8> {
        // A STUN binding request with USERNAME "abc:def".
        let mut stun = vec![0x00, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xA4, 0x42];
        stun.extend_from_slice(&[7; 12]);
        stun.extend_from_slice(&[0x00, 0x06, 0x00, 0x07]);
        stun.extend_from_slice(b"abc:def\0");
        let mut f = (stun.len() as u16).to_be_bytes().to_vec();
        f.extend_from_slice(&stun);
        f
    }

    #[test]
    fn tls_and_ice_are_told_apart() {
        let ice = framed_binding_request();
        assert_eq!(sniff(&ice), Sniff::IceTcp);
        for n in 0..SNIFF_BYTES {
            assert_eq!(sniff(&ice[..n]), Sniff::NeedMore, "{n} bytes");
        }
        assert_eq!(sniff(&[0x16, 0x03, 0x01, 0x02, 0x00]), Sniff::Tls);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniff::Tls);
        let mut bad_cookie = ice.clone();
        bad_cookie[6] = 0;
        assert_eq!(sniff(&bad_cookie), Sniff::Tls);
        assert_eq!(
            sniff(&[0, 40, 0, 3, 0, 0, 0x21, 0x12, 0xA4, 0x42]),
            Sniff::Tls
        );
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    /// Frames in both directions; the connection is known by the client's address while it
    /// lasts.
    #[tokio::test]
    async fn frames_reach_the_engine_and_come_back() {
        let (in_tx, mut in_rx) = mpsc::channel(8);
        let media = TcpMedia::new(TcpLimits::default(), in_tx);
        let (mut client, server) = pair().await;
        let peer = canonical(client.local_addr().unwrap());
        let task = tokio::spawn(media.clone().serve(server));
        client.write_all(&framed_binding_request()).await.unwrap();
        client.write_all(&[0, 3, 0x80, 1, 2]).await.unwrap();
        let f = in_rx.recv().await.unwrap();
        assert_eq!(f.from, peer);
        assert!(crate::rtp::stun::stun_request_local_ufrag(&f.data).is_some());
        assert_eq!(in_rx.recv().await.unwrap().data, [0x80, 1, 2]);
        assert!(media.send(peer, vec![9, 9, 9, 9]));
        let mut back = [0u8; 6];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(back, [0, 4, 9, 9, 9, 9]);
        drop(client);
        task.await.unwrap();
        assert_eq!(media.open(), 0);
        assert!(!media.send(peer, vec![1]), "gone");
    }

    /// Something other than ICE, silence, and connections beyond the limit are closed.
    #[tokio::test]
    async fn what_is_not_ice_is_closed() {
        let (in_tx, mut in_rx) = mpsc::channel(8);
        let limits = TcpLimits {
            max_connections: 1,
            first_frame_timeout: Duration::from_millis(200),
            ..TcpLimits::default()
        };
        let media = TcpMedia::new(limits, in_tx);
        // Not STUN first.
        let (mut c, s) = pair().await;
        let task = tokio::spawn(media.clone().serve(s));
        c.write_all(&[0, 3, 0x80, 1, 2]).await.unwrap();
        task.await.unwrap();
        assert!(in_rx.try_recv().is_err(), "nothing reached the engine");
        // Silent.
        let (_c, s) = pair().await;
        media.clone().serve(s).await;
        // Over the limit: the second is closed while the first is open.
        let (mut c1, s1) = pair().await;
        let first = tokio::spawn(media.clone().serve(s1));
        c1.write_all(&framed_binding_request()).await.unwrap();
        in_rx.recv().await.unwrap();
        let (_c2, s2) = pair().await;
        media.clone().serve(s2).await;
        assert_eq!(media.stats.refused.load(Ordering::Relaxed), 3);
        drop(c1);
        first.await.unwrap();
    }
}
