//! meetd's own XMPP client connection (RFC 7395, XMPP over WebSocket): a bridge-only meetd
//! logs in to the XMPP server of its focus — another meetd, or Prosody — with a service
//! account, as JVB does (docs/colibri2.md §4). SCRAM-SHA-256 or SCRAM-SHA-1 (PLAIN over
//! `wss://` only), resource binding, then stanzas both ways on two bounded queues.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::{SinkExt, StreamExt};
use meetd_xmpp::Element;
use meetd_xmpp::sasl::{ScramClient, ScramHash};
use meetd_xmpp::xml::{XmlLimits, parse_document};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// The login must be done by then.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// A WebSocket ping this often keeps idle proxies from closing the link.
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// Stanzas queued each way.
const QUEUE: usize = 256;

#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// `ws://host:port/xmpp-websocket` or `wss://…`.
    pub url: String,
    /// The domain of the account (meetd's and Prosody's service accounts live on
    /// `auth.<domain>`).
    pub domain: String,
    pub username: String,
    pub password: String,
    pub resource: String,
}

/// A logged-in connection: its full JID, and its stanzas in and out. Dropping `tx` or the
/// server closing ends it (`rx` then yields `None`).
pub struct Link {
    pub jid: String,
    pub rx: mpsc::Receiver<Box<Element>>,
    pub tx: mpsc::Sender<Element>,
}

fn limits() -> XmlLimits {
    XmlLimits::default()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_element(ws: &mut Ws) -> anyhow::Result<Element> {
    loop {
        let m = ws
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("the server closed the connection"))??;
        match m {
            Message::Text(t) => {
                let el = parse_document(t.as_bytes(), &limits())
                    .map_err(|e| anyhow::anyhow!("unparsable frame from the server: {e}"))?;
                if el.name() == "close" {
                    anyhow::bail!("the server closed the stream");
                }
                return Ok(el);
            }
            Message::Close(_) => anyhow::bail!("the server closed the connection"),
            _ => {}
        }
    }
}

async fn send(ws: &mut Ws, s: String) -> anyhow::Result<()> {
    ws.send(Message::text(s)).await?;
    Ok(())
}

/// The next element that is not `<open/>`.
async fn next_after_open(ws: &mut Ws) -> anyhow::Result<Element> {
    loop {
        let el = next_element(ws).await?;
        if el.name() != "open" {
            return Ok(el);
        }
    }
}

fn open(domain: &str) -> String {
    format!("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='{domain}' version='1.0'/>")
}

/// Log in and bind; then the link runs on tasks of its own.
pub async fn connect(cfg: &LinkConfig) -> anyhow::Result<Link> {
    tokio::time::timeout(LOGIN_TIMEOUT, login(cfg))
        .await
        .map_err(|_| anyhow::anyhow!("XMPP login to {} timed out", cfg.url))?
}

async fn login(cfg: &LinkConfig) -> anyhow::Result<Link> {
    let mut req = cfg.url.as_str().into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("xmpp"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    send(&mut ws, open(&cfg.domain)).await?;
    let features = next_after_open(&mut ws).await?;
    let mechanisms: Vec<String> = features
        .get_child("mechanisms", NS_SASL)
        .map(|m| m.children().map(|c| c.text()).collect())
        .unwrap_or_default();
    let has = |m: &str| mechanisms.iter().any(|x| x == m);
    let secure = cfg.url.starts_with("wss://");
    let scram = if has("SCRAM-SHA-256") {
        Some((ScramHash::Sha256, "SCRAM-SHA-256"))
    } else if has("SCRAM-SHA-1") {
        Some((ScramHash::Sha1, "SCRAM-SHA-1"))
    } else {
        None
    };
    match scram {
        Some((hash, name)) => {
            let nonce: String = {
                let mut r = rand::rng();
                (0..24)
                    .map(|_| {
                        char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[r.random_range(0..36)])
                    })
                    .collect()
            };
            let mut c = ScramClient::new(hash, &cfg.username, &cfg.password, &nonce);
            send(
                &mut ws,
                format!(
                    "<auth xmlns='{NS_SASL}' mechanism='{name}'>{}</auth>",
                    B64.encode(c.first())
                ),
            )
            .await?;
            let challenge = next_element(&mut ws).await?;
            if challenge.name() != "challenge" {
                anyhow::bail!("XMPP login refused ({})", sasl_condition(&challenge));
            }
            let server_first = String::from_utf8(B64.decode(challenge.text().trim())?)?;
            let fin = c
                .answer(&server_first)
                .map_err(|e| anyhow::anyhow!("SCRAM: {e}"))?;
            send(
                &mut ws,
                format!("<response xmlns='{NS_SASL}'>{}</response>", B64.encode(fin)),
            )
            .await?;
            let outcome = next_element(&mut ws).await?;
            if outcome.name() != "success" {
                anyhow::bail!("XMPP login refused ({})", sasl_condition(&outcome));
            }
            let server_final = String::from_utf8(B64.decode(outcome.text().trim())?)?;
            if !c.verify(&server_final) {
                anyhow::bail!("the XMPP server did not prove it knows the account");
            }
        }
        None if has("PLAIN") && secure => {
            let plain = format!("\0{}\0{}", cfg.username, cfg.password);
            send(
                &mut ws,
                format!(
                    "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{}</auth>",
                    B64.encode(plain)
                ),
            )
            .await?;
            let outcome = next_element(&mut ws).await?;
            if outcome.name() != "success" {
                anyhow::bail!("XMPP login refused ({})", sasl_condition(&outcome));
            }
        }
        None => anyhow::bail!("the XMPP server offers no mechanism to log in with: {mechanisms:?}"),
    }
    send(&mut ws, open(&cfg.domain)).await?;
    let features = next_after_open(&mut ws).await?;
    if features.get_child("bind", NS_BIND).is_none() {
        anyhow::bail!("the XMPP server offers no resource binding");
    }
    send(
        &mut ws,
        format!(
            "<iq xmlns='jabber:client' type='set' id='bind1'><bind xmlns='{NS_BIND}'><resource>{}</resource></bind></iq>",
            meetd_xmpp::link::escape(&cfg.resource)
        ),
    )
    .await?;
    let bound = next_element(&mut ws).await?;
    let jid = bound
        .get_child("bind", NS_BIND)
        .and_then(|b| b.children().find(|c| c.name() == "jid"))
        .map(|j| j.text())
        .filter(|j| !j.is_empty())
        .ok_or_else(|| anyhow::anyhow!("resource binding refused"))?;
    let (in_tx, in_rx) = mpsc::channel::<Box<Element>>(QUEUE);
    let (out_tx, mut out_rx) = mpsc::channel::<Element>(QUEUE);
    let (mut sink, mut stream) = ws.split();
    tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING_INTERVAL);
        loop {
            tokio::select! {
                m = out_rx.recv() => {
                    let Some(el) = m else { break };
                    if sink.send(Message::text(meetd_xmpp::xml::to_string(&el))).await.is_err() {
                        break;
                    }
                }
                _ = ping.tick() => {
                    if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink
            .send(Message::text(
                "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>".to_string(),
            ))
            .await;
    });
    tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            let Message::Text(t) = m else {
                if matches!(m, Message::Close(_)) {
                    break;
                }
                continue;
            };
            match parse_document(t.as_bytes(), &limits()) {
                Ok(el) if el.name() == "close" => break,
                Ok(el) => {
                    if in_tx.send(Box::new(el)).await.is_err() {
                        break;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "XMPP link: unparsable frame dropped"),
            }
        }
    });
    Ok(Link {
        jid,
        rx: in_rx,
        tx: out_tx,
    })
}

fn sasl_condition(el: &Element) -> String {
    el.children()
        .next()
        .map(|c| c.name().to_string())
        .unwrap_or_else(|| el.name().to_string())
}
