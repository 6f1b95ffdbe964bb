//! XEP-0114 external components: a remote service (Jicofo's focus component, a stock
//! JVB in component mode, ...) connects, proves the shared secret and then owns a domain.

use std::collections::HashMap;
use std::sync::Arc;

use minidom::Element;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::link::{escape, stream_error_xml};
use crate::ns;
use crate::router::ServiceHandle;
use crate::server::Server;
use crate::tcp::{Socket, StreamReader};
use crate::xml::StreamEvent;

/// Recursively move elements from one default namespace to another
/// (`jabber:component:accept` on the wire, `jabber:client` inside meetd).
pub fn rename_ns(e: &Element, from: &str, to: &str) -> Element {
    if e.ns() != from {
        return e.clone();
    }
    let mut b = Element::builder(e.name(), to);
    for ((ans, name), v) in e.attrs().iter() {
        b = b.attr_ns(ans.clone(), name.clone(), v.clone());
    }
    let mut out = b.build();
    for n in e.nodes() {
        match n {
            minidom::Node::Element(c) => {
                out.append_child(rename_ns(c, from, to));
            }
            minidom::Node::Text(t) => out.append_text(t.clone()),
        }
    }
    out
}

fn handshake_digest(stream_id: &str, secret: &str) -> String {
    let d = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{stream_id}{secret}").as_bytes(),
    );
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

pub async fn serve(server: Arc<Server>, listener: TcpListener) {
    let secrets: Arc<HashMap<String, String>> =
        Arc::new(server.config.components.iter().cloned().collect());
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "component accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let server = server.clone();
        let secrets = secrets.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(server, tcp, &secrets).await {
                tracing::info!(%peer, error = %e, "component connection ended");
            }
        });
    }
}

async fn write(reader: &mut StreamReader, s: &str) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    match &mut reader.socket {
        Socket::Plain(t) => {
            t.write_all(s.as_bytes()).await?;
            t.flush().await
        }
        Socket::Tls(t) => {
            t.write_all(s.as_bytes()).await?;
            t.flush().await
        }
        Socket::Upgrading => Err(std::io::ErrorKind::NotConnected.into()),
    }
}

async fn fail(reader: &mut StreamReader, cond: &str, text: &str) -> std::io::Result<()> {
    write(
        reader,
        &format!("{}</stream:stream>", stream_error_xml(cond, Some(text))),
    )
    .await
}

async fn handle(
    server: Arc<Server>,
    tcp: TcpStream,
    secrets: &HashMap<String, String>,
) -> std::io::Result<()> {
    let _ = tcp.set_nodelay(true);
    let mut reader = StreamReader::new(Socket::Plain(tcp), server.xml_limits());
    let id = uuid::Uuid::new_v4().simple().to_string();
    let header = match reader.next().await {
        Ok(StreamEvent::Open(h)) => h,
        _ => return Ok(()),
    };
    let domain = header.to.unwrap_or_default();
    write(
        &mut reader,
        &format!(
            "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' id='{}' from='{}'>",
            ns::COMPONENT,
            ns::STREAM,
            id,
            escape(&domain)
        ),
    )
    .await?;
    let Some(secret) = secrets.get(&domain) else {
        return fail(&mut reader, "host-unknown", "no such component").await;
    };
    let hs = match reader.next().await {
        Ok(StreamEvent::Stanza(e)) if e.name() == "handshake" => e.text(),
        _ => return fail(&mut reader, "not-authorized", "handshake expected").await,
    };
    let expected = handshake_digest(&id, secret);
    if aws_lc_rs::constant_time::verify_slices_are_equal(hs.trim().as_bytes(), expected.as_bytes())
        .is_err()
    {
        return fail(&mut reader, "not-authorized", "bad handshake").await;
    }
    let (tx, mut rx) = mpsc::channel::<Box<Element>>(server.limits().session_queue.max(1));
    if !server
        .router
        .register_service(&domain, ServiceHandle { tx })
    {
        return fail(&mut reader, "conflict", "component already connected").await;
    }
    write(
        &mut reader,
        &format!("<handshake xmlns='{}'/>", ns::COMPONENT),
    )
    .await?;
    tracing::info!(%domain, "component connected");
    let result = pump(&server, &mut reader, &mut rx, &domain).await;
    server.router.unregister_service(&domain);
    tracing::info!(%domain, "component disconnected");
    result
}

async fn pump(
    server: &Arc<Server>,
    reader: &mut StreamReader,
    rx: &mut mpsc::Receiver<Box<Element>>,
    domain: &str,
) -> std::io::Result<()> {
    loop {
        tokio::select! {
            ev = reader.next() => match ev {
                Ok(StreamEvent::Stanza(e)) => {
                    let e = rename_ns(&e, ns::COMPONENT, ns::CLIENT);
                    if !crate::stanza::is_stanza(&e) {
                        return fail(reader, "unsupported-stanza-type", e.name()).await;
                    }
                    let from_ok = e
                        .attr("from")
                        .and_then(|f| jid::Jid::new(f).ok())
                        .is_some_and(|j| j.domain().as_str() == domain || j.domain().as_str().ends_with(&format!(".{domain}")));
                    if !from_ok {
                        return fail(reader, "invalid-from", "from must be on the component's domain").await;
                    }
                    server.router.route(e);
                }
                Ok(StreamEvent::Close) => {
                    return write(reader, "</stream:stream>").await;
                }
                Ok(StreamEvent::Open(_)) => {}
                Err(Some(e)) => return fail(reader, e.stream_condition(), &e.to_string()).await,
                Err(None) => return Ok(()),
            },
            Some(e) = rx.recv() => {
                let e = rename_ns(&e, ns::CLIENT, ns::COMPONENT);
                write(reader, &crate::xml::to_string(&e)).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_is_sha1_hex_of_id_and_secret() {
        // XEP-0114 §3 example stream id and secret.
        assert_eq!(
            handshake_digest("3BF96D32", "sNBQ7QHMMnfHaYtN"),
            "93c33fddbd6268b2805fc5fc562d8abe916d2fbb"
        );
        assert_eq!(handshake_digest("a", "b").len(), 40);
    }

    #[test]
    fn rename_keeps_foreign_children() {
        let e = crate::xml::parse_document(
            b"<message xmlns='jabber:component:accept' to='a@b'><body>x</body><x xmlns='y'/></message>",
            &Default::default(),
        )
        .unwrap();
        let r = rename_ns(&e, ns::COMPONENT, ns::CLIENT);
        assert_eq!(r.ns(), ns::CLIENT);
        assert_eq!(r.get_child("body", ns::CLIENT).unwrap().text(), "x");
        assert!(r.has_child("x", "y"));
        assert_eq!(r.attr("to"), Some("a@b"));
    }
}
