//! The HTTPS port shared with ICE-TCP (docs/bridge.md B.1): university guest networks often
//! let only 443 through, so the bridge also offers a passive TCP candidate there. Each new
//! connection's first bytes tell a TLS ClientHello from an RFC 4571-framed STUN binding
//! request (`meetd_colibri::tcp::sniff`); ICE connections go to the media engine's TCP side,
//! the rest to TLS and HTTP as before.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use meetd_colibri::tcp::{SNIFF_BYTES, Sniff, TcpMedia, sniff};
use tokio::net::TcpStream;

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
