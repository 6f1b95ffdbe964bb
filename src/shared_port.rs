//! The HTTPS port shared with ICE-TCP and TURN over TLS (docs/bridge.md B.1): university
//! guest networks often let only 443 through, so the bridge offers a passive TCP candidate
//! there and the embedded TURN server listens there too. Each new connection's first bytes
//! tell a TLS ClientHello from an RFC 4571-framed STUN binding request
//! (`meetd_colibri::tcp::sniff`): ICE connections go to the media engine's TCP side
//! ([`IceTcpOrTls`], under TLS). After the TLS handshake the first decrypted bytes tell STUN
//! (a first byte below 0x40) from HTTP (a method name, or the HTTP/2 preface): TURN
//! connections go to the TURN server, the rest to HTTP ([`TurnOrHttps`], over TLS).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use meetd_colibri::tcp::{SNIFF_BYTES, Sniff, TcpMedia, sniff};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::turn::Turn;

/// How long a new connection may take to send enough bytes to be told apart.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTPS listener's acceptor (under TLS): no Nagle delay, and ICE-TCP connections handed
/// to the media engine when `media` is set.
#[derive(Clone, Debug)]
pub struct IceTcpOrTls {
    media: Option<Arc<TcpMedia>>,
}

impl IceTcpOrTls {
    pub fn new(media: Option<Arc<TcpMedia>>) -> IceTcpOrTls {
        IceTcpOrTls { media }
    }
}

/// What a connection is, from the bytes it sent first (waiting for more while undecided).
async fn classify(stream: &TcpStream) -> io::Result<Sniff> {
    let mut buf = [0u8; SNIFF_BYTES];
    loop {
        let n = match stream.peek(&mut buf).await? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => n,
        };
        match sniff(&buf[..n]) {
            Sniff::NeedMore if n < SNIFF_BYTES => {
                // Peeking returns at once while the bytes are there: wait a moment for more.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Sniff::NeedMore => return Ok(Sniff::Tls),
            s => return Ok(s),
        }
    }
}

impl<S: Send + 'static> axum_server::accept::Accept<TcpStream, S> for IceTcpOrTls {
    type Stream = TcpStream;
    type Service = S;
    type Future = Pin<Box<dyn Future<Output = io::Result<(TcpStream, S)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let media = self.media.clone();
        Box::pin(async move {
            stream.set_nodelay(true)?;
            let Some(media) = media else {
                return Ok((stream, service));
            };
            match tokio::time::timeout(SNIFF_TIMEOUT, classify(&stream)).await {
                Ok(Ok(Sniff::IceTcp)) => {
                    tokio::spawn(media.serve(stream));
                    // Not an HTTPS connection: the server lets it go without a log line.
                    Err(io::Error::other(
                        "ICE-TCP connection handed to the media engine",
                    ))
                }
                Ok(Ok(_)) => Ok((stream, service)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(io::ErrorKind::TimedOut.into()),
            }
        })
    }
}

/// The HTTPS listener's outer acceptor: TLS (and ICE-TCP) by `inner`, then TURN connections
/// to `turn` when it is set.
#[derive(Clone, Debug)]
pub struct TurnOrHttps<A> {
    inner: A,
    turn: Option<Arc<Turn>>,
}

impl<A> TurnOrHttps<A> {
    pub fn new(inner: A, turn: Option<Arc<Turn>>) -> TurnOrHttps<A> {
        TurnOrHttps { inner, turn }
    }
}

/// How long a TLS connection may take to send its first bytes before it is taken for HTTP.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

impl<A, S> axum_server::accept::Accept<TcpStream, S> for TurnOrHttps<A>
where
    A: axum_server::accept::Accept<TcpStream, S, Stream = TlsStream<TcpStream>>
        + Clone
        + Send
        + Sync
        + 'static,
    A::Future: Send,
    A::Service: Send + 'static,
    S: Send + 'static,
{
    type Stream = Rewind<TlsStream<TcpStream>>;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let (inner, turn) = (self.inner.clone(), self.turn.clone());
        Box::pin(async move {
            let (mut tls, service) = inner.accept(stream, service).await?;
            let Some(turn) = turn else {
                return Ok((Rewind::new(Vec::new(), tls), service));
            };
            let mut first = vec![0u8; 1];
            let n = match tokio::time::timeout(FIRST_BYTES_TIMEOUT, tls.read(&mut first)).await {
                Ok(r) => r?,
                Err(_) => 0,
            };
            first.truncate(n);
            if first.first().is_some_and(|b| *b < 0x40) {
                let (peer, local) = {
                    let tcp = tls.get_ref().0;
                    (tcp.peer_addr()?, tcp.local_addr()?)
                };
                tracing::debug!(%peer, "TURN over TLS");
                tokio::spawn(async move {
                    turn.serve_stream(Rewind::new(first, tls), peer, local)
                        .await;
                });
                return Err(io::Error::other("TURN over TLS handed to the TURN server"));
            }
            Ok((Rewind::new(first, tls), service))
        })
    }
}

/// A stream whose first bytes were already read: they are read again first.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Rewind<S> {
        Rewind {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return std::task::Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn rewound_bytes_come_first() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"ET / HTTP/1.1").await.unwrap();
        drop(a);
        let mut r = Rewind::new(b"G".to_vec(), b);
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "GET / HTTP/1.1");
    }
}
