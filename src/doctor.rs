//! `meetd doctor` (docs/operations.md "Doctor"): checks a deployment the way an admin would
//! when the third participant has no video, and says what to fix. It reads the same
//! configuration as `meetd serve`, changes nothing, and works whether meetd runs or not
//! (some checks need it running: they say so).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Info,
    Warn,
    Error,
}

/// One finding: what was checked, what was found, and for problems, what to do.
#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    pub check: &'static str,
    pub text: String,
    pub fix: Option<String>,
}

impl Finding {
    fn new(level: Level, check: &'static str, text: impl Into<String>) -> Finding {
        Finding {
            level,
            check,
            text: text.into(),
            fix: None,
        }
    }
    fn fix(mut self, fix: impl Into<String>) -> Finding {
        self.fix = Some(fix.into());
        self
    }
}

/// Runs every check.
pub async fn run(cfg: &Config) -> Vec<Finding> {
    let mut out = vec![Finding::new(
        Level::Ok,
        "configuration",
        format!(
            "valid; domain {}, data_dir {}, auth {}",
            cfg.server.domain,
            cfg.server.data_dir.display(),
            cfg.auth.mode
        ),
    )];
    let running = meetd_running(cfg).await;
    out.push(match running {
        Some(at) => Finding::new(
            Level::Info,
            "meetd",
            format!("running (health check on {at})"),
        ),
        None => Finding::new(
            Level::Info,
            "meetd",
            "not running: listeners are checked for being free, the media round trip is skipped",
        ),
    });
    out.extend(listeners(cfg, running.is_some()));
    out.extend(media(cfg, running.is_some()));
    out.extend(tls(cfg));
    out.extend(public_url(cfg).await);
    out.push(clock());
    out.push(database(cfg).await);
    if cfg.server.role == "bridge" {
        out.push(bridge_login(cfg).await);
    } else {
        out.push(web_root(&cfg.web.root));
    }
    out
}

/// A bridge-only meetd (docs/colibri2.md §4): can it log in to its focus's XMPP server?
async fn bridge_login(cfg: &Config) -> Finding {
    let b = &cfg.bridge;
    let auth = cfg.xmpp().auth_domain;
    let link = crate::xmpp_link::LinkConfig {
        url: b.xmpp_url.clone(),
        domain: auth.clone(),
        username: b.xmpp_user.clone(),
        password: b.xmpp_password.clone(),
        // Not the bridge's own resource: a running bridge keeps its session.
        resource: format!("{}-doctor", b.id),
    };
    match crate::xmpp_link::connect(&link).await {
        Ok(l) => Finding::new(
            Level::Ok,
            "bridge.xmpp_url",
            format!("logged in to {} as {}", b.xmpp_url, l.jid),
        ),
        Err(e) => Finding::new(
            Level::Error,
            "bridge.xmpp_url",
            format!("cannot log in to {}: {e}", b.xmpp_url),
        )
        .fix(format!(
            "check the URL, and make the account on the focus's meetd: meetd user add {}@{auth}",
            b.xmpp_user
        )),
    }
}

/// Prints the findings; answers whether any is an error.
pub fn print(findings: &[Finding]) -> bool {
    for f in findings {
        let tag = match f.level {
            Level::Ok => "ok   ",
            Level::Info => "info ",
            Level::Warn => "WARN ",
            Level::Error => "ERROR",
        };
        println!("{tag} {}: {}", f.check, f.text);
        if let Some(fix) = &f.fix {
            println!("      fix: {fix}");
        }
    }
    let errors = findings.iter().filter(|f| f.level == Level::Error).count();
    let warnings = findings.iter().filter(|f| f.level == Level::Warn).count();
    println!("{errors} error(s), {warnings} warning(s)");
    errors > 0
}

/// Where a client on this host reaches a listener bound to `a`.
fn local_target(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(v) if v.is_unspecified() => (Ipv4Addr::LOCALHOST, a.port()).into(),
        IpAddr::V6(v) if v.is_unspecified() => (Ipv6Addr::LOCALHOST, a.port()).into(),
        _ => a,
    }
}

/// The address of a running meetd's health check, if one answers.
async fn meetd_running(cfg: &Config) -> Option<SocketAddr> {
    let at = local_target(cfg.listen.http.addr()?);
    tokio::task::spawn_blocking(move || health(at).then_some(at))
        .await
        .ok()
        .flatten()
}

/// `GET /about/health` answers 200.
fn health(at: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect_timeout(&at, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /about/health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

fn listeners(cfg: &Config, running: bool) -> Vec<Finding> {
    let l = &cfg.listen;
    let mut tcp: Vec<(&'static str, SocketAddr)> = [
        ("listen.http", &l.http),
        ("listen.https", &l.https),
        ("listen.c2s", &l.c2s),
        ("listen.c2s_tls", &l.c2s_tls),
        ("listen.component", &l.component),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.addr().map(|a| (k, a)))
    .collect();
    // As the bridge binds it: every address, IPv6 too when an announced address is IPv6.
    let announced = if cfg.media.advertise_ips.is_empty() {
        crate::bridge::interface_addresses()
    } else {
        cfg.media.advertise_ips.clone()
    };
    let media_ip: IpAddr = if announced.iter().any(IpAddr::is_ipv6) {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    if cfg.media.tcp_port != 0 {
        tcp.push(("media.tcp_port", (media_ip, cfg.media.tcp_port).into()));
    }
    let mut out: Vec<Finding> = tcp
        .into_iter()
        .map(|(key, a)| tcp_listener(key, a, running))
        .collect();
    out.push(udp_port(
        "media.port",
        (media_ip, cfg.media.port).into(),
        running,
    ));
    out
}

fn tcp_listener(key: &'static str, a: SocketAddr, running: bool) -> Finding {
    match TcpListener::bind(a) {
        Ok(_) => {
            if running {
                Finding::new(Level::Error, "listener", format!("{key} {a}: nothing listens there although meetd runs"))
                    .fix("meetd started with other settings than this file: restart it, or check --config and the flags")
            } else {
                Finding::new(Level::Ok, "listener", format!("{key} {a}: free"))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let reachable = TcpStream::connect_timeout(&local_target(a), Duration::from_secs(2)).is_ok();
            if running && reachable {
                Finding::new(Level::Ok, "listener", format!("{key} {a}: meetd listens"))
            } else {
                Finding::new(Level::Error, "listener", format!("{key} {a}: the port is taken by another program"))
                    .fix(format!("stop that program (ss -ltnp 'sport = :{}' names it) or choose another port for {key}", a.port()))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Finding::new(Level::Error, "listener", format!("{key} {a}: binding needs privileges ({e})"))
                .fix("ports below 1024 need CAP_NET_BIND_SERVICE: use conf/meetd.service (AmbientCapabilities), or setcap cap_net_bind_service=+ep on the binary")
        }
        Err(e) => Finding::new(Level::Error, "listener", format!("{key} {a}: {e}"))
            .fix(format!("{} must be an address of this host", key)),
    }
}

fn udp_port(key: &'static str, a: SocketAddr, running: bool) -> Finding {
    match UdpSocket::bind(a) {
        Ok(_) if running => Finding::new(
            Level::Error,
            "listener",
            format!("{key} {a}: UDP port free although meetd runs"),
        )
        .fix("meetd started with other settings than this file: restart it"),
        Ok(_) => Finding::new(Level::Ok, "listener", format!("{key} {a}/udp: free")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && running => Finding::new(
            Level::Ok,
            "listener",
            format!("{key} {a}/udp: in use (meetd's media port)"),
        ),
        Err(e) => {
            Finding::new(Level::Error, "listener", format!("{key} {a}/udp: {e}")).fix(format!(
                "stop what holds UDP {} (ss -lunp 'sport = :{}'), or choose another media.port",
                a.port(),
                a.port()
            ))
        }
    }
}

/// The advertised media addresses against this host's interfaces, and a STUN round trip to
/// each through the address clients are told.
fn media(cfg: &Config, running: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    let local = crate::bridge::interface_addresses();
    let ips = if cfg.media.advertise_ips.is_empty() {
        out.push(
            Finding::new(Level::Warn, "media", format!("media.advertise_ips is empty: meetd announces this host's addresses {local:?}"))
                .fix("behind NAT set media.advertise_ips (or --advertise-ip) to the public address clients reach, and forward the UDP port"),
        );
        local.clone()
    } else {
        cfg.media.advertise_ips.clone()
    };
    for ip in ips {
        let on_host = local.contains(&ip) || ip.is_loopback();
        if !on_host {
            out.push(
                Finding::new(Level::Warn, "media", format!("advertised {ip} is not an address of this host (interfaces: {local:?})"))
                    .fix(format!("right only behind NAT that forwards UDP {} to this host; otherwise set media.advertise_ips to one of this host's addresses", cfg.media.port)),
            );
        }
        if !running {
            continue;
        }
        let target = SocketAddr::new(ip, cfg.media.port);
        match stun_round_trip(target, Duration::from_secs(2)) {
            Ok(rtt) => out.push(Finding::new(Level::Ok, "media", format!("STUN round trip to {target}: {} ms", rtt.as_millis()))),
            Err(e) if on_host => out.push(
                Finding::new(Level::Error, "media", format!("no STUN answer from {target} ({e}): clients get no media there"))
                    .fix(format!("check the firewall for UDP {} and that meetd's media socket is bound", cfg.media.port)),
            ),
            Err(e) => out.push(
                Finding::new(Level::Error, "media", format!("no STUN answer from {target} ({e}): clients that are told this address get no media"))
                    .fix(format!("if {ip} is wrong, set media.advertise_ips to the address clients reach; if it is the NAT's public address, forward UDP {} to this host (some NATs do not let a host reach itself through its public address: test from outside)", cfg.media.port)),
            ),
        }
    }
    out
}

/// Sends a plain STUN Binding request (RFC 5389) and waits for the matching answer.
pub fn stun_round_trip(to: SocketAddr, wait: Duration) -> std::io::Result<Duration> {
    let bind: SocketAddr = if to.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(bind)?;
    s.set_read_timeout(Some(wait))?;
    let txid: [u8; 12] = rand::random();
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    req.extend_from_slice(&txid);
    let start = std::time::Instant::now();
    s.send_to(&req, to)?;
    let mut buf = [0u8; 1500];
    let timed_out = || {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {} s", wait.as_secs()),
        )
    };
    loop {
        let (n, _) = s.recv_from(&mut buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => timed_out(),
            _ => e,
        })?;
        if n >= 20 && buf[0..2] == [0x01, 0x01] && buf[8..20] == txid {
            return Ok(start.elapsed());
        }
        if start.elapsed() > wait {
            return Err(timed_out());
        }
    }
}

fn tls(cfg: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    if cfg.tls.acme {
        let cert = cfg.server.data_dir.join("acme").join("fullchain.pem");
        let host = crate::acme::host(cfg).unwrap_or_default();
        if crate::acme::due(&cert, &host, 0) {
            out.push(
                Finding::new(Level::Warn, "tls", format!("ACME: no certificate for {host} yet ({})", cert.display()))
                    .fix(format!("meetd orders it when running; the ACME server must reach http://{host}/.well-known/acme-challenge/ on port 80 (forward it to listen.http); see meetd's log lines \"ACME:\""))
            );
            return out;
        }
    }
    if cfg.tls.cert.is_empty() && !cfg.tls.acme {
        if cfg.listen.https.addr().is_some() {
            out.push(
                Finding::new(Level::Warn, "tls", "a self-signed certificate (made in data_dir): browsers warn and the iOS and Android apps refuse it")
                    .fix("set [tls] cert and key to a publicly trusted full chain (e.g. Let's Encrypt's fullchain.pem), or put a TLS proxy in front and set server.public_url"),
            );
        }
        return out;
    }
    let files = if cfg.tls.acme {
        let d = cfg.server.data_dir.join("acme");
        crate::tls::TlsFiles {
            cert: d.join("fullchain.pem"),
            key: d.join("key.pem"),
            self_signed: false,
        }
    } else {
        crate::tls::TlsFiles {
            cert: cfg.tls.cert.clone().into(),
            key: cfg.tls.key.clone().into(),
            self_signed: false,
        }
    };
    if let Err(e) = crate::tls::server_config(&files) {
        out.push(
            Finding::new(
                Level::Error,
                "tls",
                format!("the certificate does not load: {e:#}"),
            )
            .fix("tls.cert must be PEM certificates (server first), tls.key its PEM private key"),
        );
        return out;
    }
    for w in crate::tls::chain_warnings(&files) {
        let level = if w.contains("expires within") {
            Level::Warn
        } else {
            Level::Error
        };
        out.push(Finding::new(level, "tls", w).fix(
            "serve the full chain in order: the server certificate, then each issuer (fullchain.pem)",
        ));
    }
    match crate::tls::leaf_facts(&files.cert) {
        Some((names, days)) => {
            let host = public_host(&cfg.server.public_url);
            match &host {
                Some(h) if !names.iter().any(|n| name_matches(n, h)) => out.push(
                    Finding::new(
                        Level::Error,
                        "tls",
                        format!("the certificate names {names:?}, not {h} (server.public_url)"),
                    )
                    .fix(format!("get a certificate for {h}")),
                ),
                _ => {}
            }
            let level = if days < 0 {
                Level::Error
            } else if days < 14 {
                Level::Warn
            } else {
                Level::Ok
            };
            out.push(Finding::new(
                level,
                "tls",
                format!("certificate for {names:?}, {days} days to expiry"),
            ));
        }
        None => out.push(Finding::new(
            Level::Error,
            "tls",
            "the first certificate cannot be read",
        )),
    }
    out
}

fn name_matches(pattern: &str, host: &str) -> bool {
    let (p, h) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    match p.strip_prefix("*.") {
        Some(rest) => h
            .split_once('.')
            .is_some_and(|(first, tail)| !first.is_empty() && tail == rest),
        None => p == h,
    }
}

fn public_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let hostport = rest.split('/').next()?;
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        hostport.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_string())
}

async fn public_url(cfg: &Config) -> Vec<Finding> {
    let Some(host) = public_host(&cfg.server.public_url) else {
        return vec![Finding::new(
            Level::Info,
            "public_url",
            "server.public_url is empty: links and config.js follow each request's Host header",
        )];
    };
    let addrs: Vec<IpAddr> = match tokio::net::lookup_host((host.as_str(), 443)).await {
        Ok(it) => it.map(|a| a.ip()).collect(),
        Err(e) => {
            return vec![
                Finding::new(
                    Level::Error,
                    "public_url",
                    format!("{host} does not resolve: {e}"),
                )
                .fix(format!("add a DNS A/AAAA record for {host}")),
            ];
        }
    };
    let ours: Vec<IpAddr> = if cfg.media.advertise_ips.is_empty() {
        crate::bridge::interface_addresses()
    } else {
        cfg.media.advertise_ips.clone()
    };
    if addrs.iter().any(|a| ours.contains(a) || a.is_loopback()) {
        vec![Finding::new(
            Level::Ok,
            "public_url",
            format!("{host} resolves to {addrs:?}"),
        )]
    } else {
        vec![Finding::new(Level::Warn, "public_url", format!("{host} resolves to {addrs:?}, none of them an advertised media address {ours:?}"))
            .fix("fine behind a reverse proxy or with separate addresses for web and media; otherwise fix the DNS record or media.advertise_ips")]
    }
}

fn clock() -> Finding {
    // Tokens (exp, nbf), TURN credentials and certificates all depend on the clock.
    let synced = std::process::Command::new("timedatectl")
        .args(["show", "-p", "NTPSynchronized", "--value"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "yes");
    match synced {
        Some(true) => Finding::new(Level::Ok, "clock", "synchronized (NTP)"),
        Some(false) => Finding::new(
            Level::Warn,
            "clock",
            "not synchronized: tokens (exp, nbf), TURN credentials and certificates depend on it",
        )
        .fix("enable time synchronisation: timedatectl set-ntp true (systemd-timesyncd or chrony)"),
        None => Finding::new(
            Level::Info,
            "clock",
            "synchronization unknown here (no timedatectl); tokens and TURN credentials depend on an accurate clock",
        ),
    }
}

async fn database(cfg: &Config) -> Finding {
    if !cfg.database.url.is_empty() {
        // The URL may hold a password: named by its host part only.
        let url = &cfg.database.url;
        let host = url.rsplit_once('@').map_or(url.as_str(), |(_, h)| h);
        return match crate::storage::Storage::connect(url).await {
            Ok(s) => match s.list_accounts().await {
                Ok(a) => Finding::new(
                    Level::Ok,
                    "database",
                    format!("PostgreSQL at {host}: {} account(s)", a.len()),
                ),
                Err(e) => Finding::new(
                    Level::Error,
                    "database",
                    format!("PostgreSQL at {host}: {e}"),
                ),
            },
            Err(e) => Finding::new(
                Level::Error,
                "database",
                format!("PostgreSQL at {host}: {e}"),
            )
            .fix("check database.url, that the server runs, and that the user may create tables"),
        };
    }
    let path = cfg.sqlite_path();
    if !path.exists() {
        return Finding::new(
            Level::Info,
            "database",
            format!(
                "{} does not exist yet: meetd creates it on first start",
                path.display()
            ),
        );
    }
    match crate::storage::Storage::open(&path).await {
        Ok(s) => match s.list_accounts().await {
            Ok(a) => Finding::new(
                Level::Ok,
                "database",
                format!("{}: {} account(s)", path.display(), a.len()),
            ),
            Err(e) => Finding::new(Level::Error, "database", format!("{}: {e}", path.display()))
                .fix("restore the database from a backup, or move it away to start empty"),
        },
        Err(e) => Finding::new(Level::Error, "database", format!("{}: {e}", path.display()))
            .fix("check the file's owner and permissions (the meetd user must write data_dir)"),
    }
}

/// The web root: an unpacked Jitsi Meet build whose index.html has the SSI lines meetd fills.
pub fn web_root(root: &str) -> Finding {
    if root.is_empty() {
        return Finding::new(
            Level::Info,
            "web",
            "web.root is empty: meetd serves its own small page, not the Jitsi Meet web app",
        );
    }
    let index = Path::new(root).join("index.html");
    match std::fs::read_to_string(&index) {
        Err(e) => Finding::new(Level::Error, "web", format!("{}: {e}", index.display()))
            .fix("unpack a Jitsi Meet web build (the jitsi-meet-web package's /usr/share/jitsi-meet) and point web.root at it"),
        Ok(html) if !html.contains("<!--#include virtual=") => Finding::new(Level::Warn, "web", format!("{} has no SSI lines (<!--#include virtual=...-->): not a Jitsi Meet web build?", index.display()))
            .fix("point web.root at an unpacked Jitsi Meet web build"),
        Ok(_) => Finding::new(Level::Ok, "web", format!("{root}: a Jitsi Meet web build")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_names() {
        assert!(name_matches("meet.example.com", "MEET.example.com"));
        assert!(name_matches("*.example.com", "meet.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert_eq!(
            public_host("https://meet.example.com:8443/x").as_deref(),
            Some("meet.example.com")
        );
        assert_eq!(
            public_host("https://[2001:db8::1]/").as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(public_host(""), None);
    }
}
