//! meetd's own SIP gateway (docs/sip.md): phone calls from a trunk or PBX, the meeting PIN
//! asked by keypad, and the caller in the room as a participant who hears the room's
//! speakers mixed and is heard as one audio source.
//!
//! * `ua.rs` — the SIP user agent (sans-IO), `sdp.rs` — offers and answers;
//! * `pin.rs` — the PIN dialogue, `audio.rs` — G.711, resampling, prompts, keys;
//! * `occupant.rs` — the caller in the MUC and the Jingle session with the focus;
//! * `media.rs` — the phone's RTP and the room's, `call.rs` — one call's task;
//! * this file — the sockets (UDP and TCP) and the user agent's task.

pub mod audio;
pub mod call;
pub mod media;
pub mod occupant;
pub mod pin;
pub mod sdp;
pub mod ua;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meetd_colibri::driver::EngineHandle;
use meetd_xmpp::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::config::SipSection;
use crate::storage::Storage;
use call::{CallMsg, ToUa};
use ua::{Event, Peer, Transport, Ua, UaConfig};

/// The largest SIP message taken (UDP datagram or TCP-framed).
const MAX_MESSAGE: usize = 65_535;
/// Messages queued towards one TCP connection, and events towards one call.
const QUEUE: usize = 64;
/// TCP and TLS connections at once.
const MAX_TCP: usize = 256;
/// A TLS client has this long for its handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// What every call needs.
pub struct Shared {
    pub cfg: SipSection,
    pub storage: Storage,
    pub router: Arc<Router>,
    pub engine: Option<EngineHandle>,
    /// The bare JID calls join rooms with (`sip-gateway@<auth domain>`).
    pub gateway_bare: String,
    pub focus_domain: String,
    /// meetd's TLS configuration, for `[sip] tls_listen`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

enum Inbound {
    Message(Peer, Vec<u8>),
    TcpOpen(SocketAddr, mpsc::Sender<Vec<u8>>),
    TcpClosed(SocketAddr),
}

/// Bind the SIP ports and start the gateway. Returns the UDP address (the TCP one is the
/// same).
pub async fn start(shared: Shared) -> anyhow::Result<SocketAddr> {
    let listen: SocketAddr = shared.cfg.listen.parse()?;
    let udp = UdpSocket::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("sip.listen {listen} (UDP): {e}"))?;
    let bound = udp.local_addr()?;
    let tcp = if shared.cfg.tcp {
        Some(
            TcpListener::bind(bound)
                .await
                .map_err(|e| anyhow::anyhow!("sip.listen {bound} (TCP): {e}"))?,
        )
    } else {
        None
    };
    let tls = match (shared.cfg.tls_listen.as_str(), shared.tls.clone()) {
        ("", _) => None,
        (addr, Some(cfg)) => {
            let addr: SocketAddr = addr.parse()?;
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("sip.tls_listen {addr}: {e}"))?;
            tracing::info!(%addr, "SIP over TLS listening");
            Some((l, tokio_rustls::TlsAcceptor::from(cfg)))
        }
        (_, None) => anyhow::bail!("sip.tls_listen needs meetd's TLS certificate"),
    };
    let public: IpAddr = match shared.cfg.public_ip.parse() {
        Ok(ip) => ip,
        Err(_) if bound.ip().is_unspecified() => {
            if bound.is_ipv6() {
                IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
            } else {
                IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            }
        }
        Err(_) => bound.ip(),
    };
    let host = match public {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    let auth = (!shared.cfg.auth_user.is_empty()).then(|| {
        (
            shared.cfg.realm.clone(),
            shared.cfg.auth_user.clone(),
            shared.cfg.auth_password.clone(),
        )
    });
    let ua = Ua::new(
        UaConfig {
            contact: format!("{host}:{}", bound.port()),
            max_calls: shared.cfg.max_calls,
            auth,
        },
        rand::random(),
    );
    tracing::info!(
        %bound,
        tcp = shared.cfg.tcp,
        "SIP gateway listening (docs/sip.md)"
    );
    tokio::spawn(run(ua, udp, tcp, tls, Arc::new(shared), public));
    Ok(bound)
}

async fn run(
    mut ua: Ua,
    udp: UdpSocket,
    tcp: Option<TcpListener>,
    tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    shared: Arc<Shared>,
    rtp_ip: IpAddr,
) {
    let (in_tx, mut in_rx) = mpsc::channel::<Inbound>(1024);
    let (ua_tx, mut ua_rx) = mpsc::channel::<ToUa>(1024);
    let mut conns: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut calls: HashMap<ua::CallKey, mpsc::Sender<CallMsg>> = HashMap::new();
    let mut buf = vec![0u8; MAX_MESSAGE];
    let tls_listener = tls.as_ref().map(|t| &t.0);
    loop {
        let wake = ua
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            r = udp.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    let peer = Peer { transport: Transport::Udp, addr: from };
                    ua.handle(Instant::now(), peer, &buf[..n]);
                }
            }
            c = accept(&tcp) => {
                if let Some((stream, from)) = c {
                    if conns.len() >= MAX_TCP {
                        tracing::warn!(max = MAX_TCP, "SIP: TCP connection refused, too many");
                    } else {
                        tokio::spawn(stream_conn(stream, from, Transport::Tcp, in_tx.clone()));
                    }
                }
            }
            c = accept(&tls_listener) => {
                if let (Some((stream, from)), Some((_, acceptor))) = (c, tls.as_ref()) {
                    if conns.len() >= MAX_TCP {
                        tracing::warn!(max = MAX_TCP, "SIP: TLS connection refused, too many");
                    } else {
                        let (acceptor, tx) = (acceptor.clone(), in_tx.clone());
                        tokio::spawn(async move {
                            let hs = tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await;
                            match hs {
                                Ok(Ok(s)) => stream_conn(s, from, Transport::Tls, tx).await,
                                _ => tracing::debug!("SIP: TLS handshake failed"),
                            }
                        });
                    }
                }
            }
            Some(m) = in_rx.recv() => match m {
                Inbound::Message(peer, data) => ua.handle(Instant::now(), peer, &data),
                Inbound::TcpOpen(addr, tx) => {
                    conns.insert(addr, tx);
                }
                Inbound::TcpClosed(addr) => {
                    conns.remove(&addr);
                }
            },
            Some(m) = ua_rx.recv() => match m {
                ToUa::Answer(call, sdp) => ua.answer(Instant::now(), call, &sdp),
                ToUa::Hangup(call) => {
                    calls.remove(&call);
                    ua.hangup(Instant::now(), call);
                }
            },
            _ = tokio::time::sleep_until(wake.into()) => ua.handle_timeout(Instant::now()),
        }
        while let Some((peer, data)) = ua.poll_transmit() {
            match peer.transport {
                Transport::Udp => {
                    if let Err(e) = udp.send_to(&data, peer.addr).await {
                        tracing::debug!(error = %e, "SIP: send failed");
                    }
                }
                Transport::Tcp | Transport::Tls => {
                    if let Some(tx) = conns.get(&peer.addr)
                        && tx.try_send(data).is_err()
                    {
                        tracing::debug!("SIP: TCP connection busy or gone; message dropped");
                    }
                }
            }
        }
        while let Some(ev) = ua.poll_event() {
            match ev {
                Event::Incoming {
                    call,
                    caller,
                    offer,
                    dialled,
                } => {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    calls.insert(call, tx);
                    let new = call::NewCall {
                        key: call,
                        caller,
                        offer,
                        dialled,
                    };
                    tokio::spawn(call::run(new, shared.clone(), rtp_ip, ua_tx.clone(), rx));
                }
                Event::Key { call, key } => {
                    if let Some(tx) = calls.get(&call) {
                        let _ = tx.try_send(CallMsg::Key(key));
                    }
                }
                Event::Ended { call, .. } => {
                    if let Some(tx) = calls.remove(&call) {
                        let _ = tx.try_send(CallMsg::Ended);
                    }
                }
            }
        }
    }
}

async fn accept<L: std::borrow::Borrow<TcpListener>>(
    l: &Option<L>,
) -> Option<(TcpStream, SocketAddr)> {
    match l.as_ref().map(|l| l.borrow()) {
        Some(l) => l.accept().await.ok(),
        None => std::future::pending().await,
    }
}

/// One SIP message off the front of a TCP stream's buffer (RFC 3261 §18.3: the headers,
/// then Content-Length bytes). `Ok(None)`: not complete yet; `Err`: not SIP, or too big.
pub fn take_message(buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, &'static str> {
    // Keep-alive CRLFs between messages.
    let lead = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    buf.drain(..lead);
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_MESSAGE {
            return Err("headers too long");
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "headers not UTF-8")?;
    let mut len = None;
    for line in head.split("\r\n") {
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim();
            if k.eq_ignore_ascii_case("content-length") || k == "l" {
                len = Some(
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| "bad Content-Length")?,
                );
            }
        }
    }
    let len = len.ok_or("no Content-Length")?;
    let total = end + 4 + len;
    if total > MAX_MESSAGE {
        return Err("message too big");
    }
    if buf.len() < total {
        return Ok(None);
    }
    let rest = buf.split_off(total);
    Ok(Some(std::mem::replace(buf, rest)))
}

/// One TCP or TLS connection: messages framed off it to the user agent, its answers back.
async fn stream_conn<S>(
    stream: S,
    from: SocketAddr,
    transport: Transport,
    to_ua: mpsc::Sender<Inbound>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    if to_ua.send(Inbound::TcpOpen(from, tx)).await.is_err() {
        return;
    }
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if w.write_all(&m).await.is_err() {
                break;
            }
        }
    });
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 8192];
    'read: loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match take_message(&mut buf) {
                Ok(Some(m)) => {
                    let peer = Peer {
                        transport,
                        addr: from,
                    };
                    if to_ua.send(Inbound::Message(peer, m)).await.is_err() {
                        break 'read;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(error = e, "SIP: TCP connection closed on a bad message");
                    break 'read;
                }
            }
        }
    }
    writer.abort();
    let _ = to_ua.send(Inbound::TcpClosed(from)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_framing_by_content_length() {
        let mut b = b"\r\n\r\nOPTIONS sip:x SIP/2.0\r\nContent-Length: 4\r\n\r\nbodyINVITE sip:y SIP/2.0\r\nl: 0\r\n".to_vec();
        let m = take_message(&mut b).unwrap().unwrap();
        assert!(m.starts_with(b"OPTIONS") && m.ends_with(b"body"));
        assert_eq!(take_message(&mut b), Ok(None));
        b.extend_from_slice(b"\r\n");
        let m = take_message(&mut b).unwrap().unwrap();
        assert!(m.starts_with(b"INVITE"));
        assert!(b.is_empty());
        let mut bad = b"X\r\nContent-Length: x\r\n\r\n".to_vec();
        assert!(take_message(&mut bad).is_err());
        let mut none = b"X\r\n\r\n".to_vec();
        assert!(take_message(&mut none).is_err());
        let mut huge = format!("X\r\nContent-Length: {}\r\n\r\n", MAX_MESSAGE).into_bytes();
        assert!(take_message(&mut huge).is_err());
    }
}
