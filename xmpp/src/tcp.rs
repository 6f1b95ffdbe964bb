//! XMPP over TCP (RFC 6120): c2s with STARTTLS or direct TLS.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::link::{Link, LinkEvent, Out, TransportKind, escape, features_xml, stream_error_xml};
use crate::ns;
use crate::server::{BoxFuture, Server};
use crate::session::{self, ConnInfo, QueryParams};
use crate::xml::{StreamEvent, StreamParser, XmlLimits};

/// A plain or TLS byte stream.
pub enum Socket {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Transient state during the TLS handshake.
    Upgrading,
}

impl Socket {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Socket::Plain(s) => s.read(buf).await,
            Socket::Tls(s) => s.read(buf).await,
            Socket::Upgrading => Ok(0),
        }
    }
    async fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Socket::Plain(s) => s.write_all(b).await,
            Socket::Tls(s) => s.write_all(b).await,
            Socket::Upgrading => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Socket::Plain(s) => s.flush().await,
            Socket::Tls(s) => s.flush().await,
            Socket::Upgrading => Ok(()),
        }
    }
    async fn shutdown(&mut self) {
        let _ = match self {
            Socket::Plain(s) => s.shutdown().await,
            Socket::Tls(s) => s.shutdown().await,
            Socket::Upgrading => Ok(()),
        };
    }
}

/// After our side closed: discard what the peer still sends until it closes too, for at most
/// `LINGER` and `LINGER_BYTES`, then drop the socket.
async fn linger(mut sock: Socket) {
    let mut buf = [0u8; 4096];
    let mut total = 0usize;
    let _ = tokio::time::timeout(LINGER, async {
        while total < LINGER_BYTES {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

/// How long and how much a closed connection's late input is read and discarded.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

/// Reads an XML stream from a socket, `events` buffered between calls (cancel-safe).
pub struct StreamReader {
    pub socket: Socket,
    pub parser: StreamParser,
    events: std::collections::VecDeque<StreamEvent>,
    buf: Box<[u8]>,
    failed: Option<crate::xml::XmlError>,
    eof: bool,
}

impl StreamReader {
    pub fn new(socket: Socket, limits: XmlLimits) -> Self {
        StreamReader {
            socket,
            parser: StreamParser::new(limits),
            events: Default::default(),
            buf: vec![0u8; 4096].into_boxed_slice(),
            failed: None,
            eof: false,
        }
    }

    /// Next stream event; `Err(None)` on EOF, `Err(Some(e))` on bad XML.
    pub async fn next(&mut self) -> Result<StreamEvent, Option<crate::xml::XmlError>> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            if let Some(e) = self.failed.take() {
                return Err(Some(e));
            }
            if self.eof {
                return Err(None);
            }
            let n = match self.socket.read(&mut self.buf).await {
                Ok(0) | Err(_) => {
                    self.eof = true;
                    continue;
                }
                Ok(n) => n,
            };
            let mut out = Vec::new();
            if let Err(e) = self.parser.feed(&self.buf[..n], &mut out) {
                self.failed = Some(e);
            }
            self.events.extend(out);
        }
    }
}

pub struct TcpLink {
    reader: StreamReader,
    tls: Option<TlsAcceptor>,
    secure: bool,
    closed: bool,
}

impl Link for TcpLink {
    fn recv(&mut self) -> BoxFuture<'_, LinkEvent> {
        Box::pin(async move {
            if self.closed {
                return std::future::pending().await;
            }
            match self.reader.next().await {
                Ok(StreamEvent::Open(h)) => LinkEvent::Open(h),
                Ok(StreamEvent::Stanza(e)) => LinkEvent::Element(e),
                Ok(StreamEvent::Close) => LinkEvent::Close,
                Err(Some(e)) => LinkEvent::Error(e),
                Err(None) => {
                    self.closed = true;
                    LinkEvent::Gone
                }
            }
        })
    }

    fn send<'a>(&'a mut self, items: &'a [Out]) -> BoxFuture<'a, Result<(), ()>> {
        Box::pin(async move {
            if self.closed {
                return Err(());
            }
            let mut buf = String::new();
            let mut close = false;
            for o in items {
                match o {
                    Out::Open { id, from } => buf.push_str(&format!(
                        "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' id='{}' from='{}' version='1.0' xml:lang='en'>",
                        ns::CLIENT,
                        ns::STREAM,
                        escape(id),
                        escape(from)
                    )),
                    Out::Features(f) => buf.push_str(&features_xml(f)),
                    Out::Element(e) => buf.push_str(&crate::xml::to_string(e)),
                    Out::Reset => self.reader.parser.reset(),
                    Out::StartTls => {
                        buf.push_str(&format!("<proceed xmlns='{}'/>", ns::TLS));
                        if self.write(&buf).await.is_err() {
                            return Err(());
                        }
                        buf.clear();
                        if self.starttls().await.is_err() {
                            self.closed = true;
                            return Err(());
                        }
                    }
                    Out::StreamError { condition, text } => {
                        buf.push_str(&stream_error_xml(condition, text.as_deref()));
                        buf.push_str("</stream:stream>");
                        close = true;
                        break;
                    }
                    Out::Close => {
                        buf.push_str("</stream:stream>");
                        close = true;
                        break;
                    }
                }
            }
            let r = self.write(&buf).await;
            if close {
                self.reader.socket.shutdown().await;
                self.closed = true;
                // Closing a socket with unread input makes the kernel send a reset, which
                // can destroy the stream error before the peer reads it (a client that
                // floods does have input in flight): read and discard for a moment first.
                let sock = std::mem::replace(&mut self.reader.socket, Socket::Upgrading);
                tokio::spawn(linger(sock));
            }
            r
        })
    }

    fn kind(&self) -> TransportKind {
        TransportKind::Tcp
    }

    fn secure(&self) -> bool {
        self.secure
    }
}

impl TcpLink {
    async fn write(&mut self, s: &str) -> Result<(), ()> {
        if s.is_empty() {
            return Ok(());
        }
        let r = async {
            self.reader.socket.write_all(s.as_bytes()).await?;
            self.reader.socket.flush().await
        }
        .await;
        r.map_err(|_| {
            self.closed = true;
        })
    }

    async fn starttls(&mut self) -> Result<(), ()> {
        let acceptor = self.tls.clone().ok_or(())?;
        let sock = std::mem::replace(&mut self.reader.socket, Socket::Upgrading);
        let Socket::Plain(tcp) = sock else {
            return Err(());
        };
        let tls = acceptor.accept(tcp).await.map_err(|e| {
            tracing::debug!(error = %e, "TLS handshake failed");
        })?;
        self.reader.socket = Socket::Tls(Box::new(tls));
        self.reader.parser.reset();
        self.secure = true;
        Ok(())
    }
}

/// The current TLS configuration; replaced in place when the certificate files change.
pub type TlsSource = Arc<parking_lot::RwLock<TlsAcceptor>>;

/// Accept c2s connections. `direct_tls`: TLS from the first byte (XEP-0368).
pub async fn serve_c2s(
    server: Arc<Server>,
    listener: TcpListener,
    tls: Option<TlsSource>,
    direct_tls: bool,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "c2s accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let server = server.clone();
        let tls = tls.as_ref().map(|t| t.read().clone());
        tokio::spawn(async move {
            handle(server, tcp, peer, tls, direct_tls).await;
        });
    }
}

async fn handle(
    server: Arc<Server>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    direct_tls: bool,
) {
    let _ = tcp.set_nodelay(true);
    let Some(slot) = server.admit(peer.ip()) else {
        tracing::warn!(%peer, "too many sessions, refusing c2s");
        let mut tcp = tcp;
        let msg = format!(
            "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' version='1.0'>{}</stream:stream>",
            ns::CLIENT,
            ns::STREAM,
            stream_error_xml("policy-violation", Some("too many sessions"))
        );
        let _ = tcp.write_all(msg.as_bytes()).await;
        return;
    };
    let limits = server.xml_limits();
    let (socket, secure) = if direct_tls {
        let Some(acc) = tls.clone() else { return };
        match acc.accept(tcp).await {
            Ok(s) => (Socket::Tls(Box::new(s)), true),
            Err(_) => return,
        }
    } else {
        (Socket::Plain(tcp), false)
    };
    let info = ConnInfo {
        kind: TransportKind::Tcp,
        secure,
        tls_available: tls.is_some(),
        ip: peer.ip(),
        query: QueryParams::default(),
        resume_username: None,
    };
    let link = TcpLink {
        reader: StreamReader::new(socket, limits),
        tls,
        secure,
        closed: false,
    };
    session::run(server, Box::new(link), info, slot).await;
}

#[allow(dead_code)]
fn _bounds<T: AsyncRead + AsyncWrite>() {}
