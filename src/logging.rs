//! Logging (docs/operations.md "Logs"): where log lines go (standard output or daily files),
//! how long files are kept, and the IP addresses they must not show in full.
//!
//! Every line, whichever crate wrote it, passes through [`Scrub`] on its way out, so an
//! address in a dependency's message is masked as well as one in meetd's own.

use std::borrow::Cow;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::Config;

/// What a log line may say of an IP address (`[privacy] log_ips`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpMode {
    /// As it is.
    Full,
    /// IPv4 without its last octet (`192.0.2.x`), IPv6 with only its first 48 bits
    /// (`2001:db8:1::x`).
    Masked,
    /// Nothing of it (`x.x.x.x`, `x::x`).
    None,
}

impl IpMode {
    pub fn parse(s: &str) -> Option<IpMode> {
        match s {
            "full" => Some(IpMode::Full),
            "masked" => Some(IpMode::Masked),
            "none" => Some(IpMode::None),
            _ => None,
        }
    }
}

/// meetd's own addresses (its listeners, its announced media addresses, this host's
/// interfaces): log lines show them in full, so that an admin can check where meetd listens
/// and what it announces. They say nothing about the people in meetings.
static OWN: std::sync::RwLock<Vec<IpAddr>> = std::sync::RwLock::new(Vec::new());

/// Records meetd's own addresses for [`scrub_ips`]: the configured listeners and announced
/// media addresses (loopback ones too: an admin named them), and this host's non-loopback
/// interface addresses.
pub fn set_own_addresses(cfg: &Config) {
    let l = &cfg.listen;
    let own = [&l.http, &l.https, &l.c2s, &l.c2s_tls, &l.component]
        .into_iter()
        .filter_map(|l| l.addr())
        .map(|a| a.ip())
        .chain(cfg.media.advertise_ips.iter().copied())
        .chain(crate::bridge::interface_addresses());
    set_own(own.collect());
}

fn set_own(mut own: Vec<IpAddr>) {
    own.retain(|ip| !ip.is_unspecified());
    own.sort();
    own.dedup();
    if let Ok(mut g) = OWN.write() {
        *g = own;
    }
}

fn is_own(ip: IpAddr) -> bool {
    OWN.read().map(|g| g.contains(&ip)).unwrap_or(false)
}

/// `line` with every IPv4 and IPv6 address in it masked as `mode` says. The unspecified
/// addresses (`0.0.0.0`, `::`) and meetd's own ([`set_own_addresses`]) stay.
pub fn scrub_ips(line: &str, mode: IpMode) -> Cow<'_, str> {
    if mode == IpMode::Full {
        return Cow::Borrowed(line);
    }
    let v6 = replace_tokens(line, is_v6_char, |tok| mask_v6(tok, mode));
    let v4 = match replace_tokens(&v6, is_v4_char, |tok| mask_v4(tok, mode)) {
        Cow::Borrowed(_) => None,
        Cow::Owned(s) => Some(s),
    };
    match (v4, v6) {
        (Some(s), _) | (None, Cow::Owned(s)) => Cow::Owned(s),
        (None, Cow::Borrowed(_)) => Cow::Borrowed(line),
    }
}

fn is_v6_char(c: char) -> bool {
    c.is_ascii_hexdigit() || c == ':' || c == '.'
}

fn is_v4_char(c: char) -> bool {
    c.is_ascii_digit() || c == '.'
}

/// Each maximal run of `class` characters that is a word of its own (not glued to a letter,
/// a digit or an underscore on either side) goes through `f`; `f` answers the replacement.
fn replace_tokens(
    s: &str,
    class: fn(char) -> bool,
    f: impl Fn(&str) -> Option<String>,
) -> Cow<'_, str> {
    let mut out: Option<String> = None;
    let mut done = 0; // bytes of `s` already copied to `out`
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !class(b[i] as char) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && class(b[i] as char) {
            i += 1;
        }
        if (start > 0 && is_word(b[start - 1])) || (i < b.len() && is_word(b[i])) {
            continue;
        }
        // A sentence's full stop or a port's colon is not part of the address.
        let mut end = i;
        while end > start && matches!(b[end - 1], b'.' | b':') {
            end -= 1;
        }
        let tok = &s[start..end];
        if let Some(rep) = f(tok).or_else(|| v4_with_port(tok, &f)) {
            let o = out.get_or_insert_with(|| String::with_capacity(s.len()));
            o.push_str(&s[done..start]);
            o.push_str(&rep);
            done = end;
        }
    }
    match out {
        None => Cow::Borrowed(s),
        Some(mut o) => {
            o.push_str(&s[done..]);
            Cow::Owned(o)
        }
    }
}

/// Letters and digits glue a token to a word ("v1.2.3.4"); an underscore does not
/// ("UDP_192.0.2.1:3478").
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// `192.0.2.1:5000` seen as one IPv6-alphabet token: the address before the port.
fn v4_with_port(tok: &str, f: &impl Fn(&str) -> Option<String>) -> Option<String> {
    let (addr, port) = tok.rsplit_once(':')?;
    if addr.contains(':') || !port.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    addr.parse::<Ipv4Addr>().ok()?;
    Some(format!("{}:{port}", f(addr)?))
}

fn mask_v4(tok: &str, mode: IpMode) -> Option<String> {
    let a: Ipv4Addr = tok.parse().ok()?;
    if a.is_unspecified() || is_own(IpAddr::V4(a)) {
        return None;
    }
    let o = a.octets();
    Some(match mode {
        IpMode::Full => return None,
        IpMode::Masked => format!("{}.{}.{}.x", o[0], o[1], o[2]),
        IpMode::None => "x.x.x.x".into(),
    })
}

fn mask_v6(tok: &str, mode: IpMode) -> Option<String> {
    if tok.bytes().filter(|&c| c == b':').count() < 2 {
        return None;
    }
    let a: Ipv6Addr = tok.parse().ok()?;
    if a.is_unspecified() || is_own(IpAddr::V6(a)) {
        return None;
    }
    if let Some(v4) = a.to_ipv4_mapped() {
        return Some(format!("::ffff:{}", mask_v4(&v4.to_string(), mode)?));
    }
    let s = a.segments();
    Some(match mode {
        IpMode::Full => return None,
        IpMode::Masked => {
            let prefix = Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0).to_string();
            // "2001:db8:1::" or "::": the masked part is the "x" after the "::".
            format!("{prefix}x")
        }
        IpMode::None => "x::x".into(),
    })
}

/// A `MakeWriter` whose writers pass each line through [`scrub_ips`].
pub struct Scrub<M> {
    inner: M,
    mode: IpMode,
}

impl<M> Scrub<M> {
    pub fn new(inner: M, mode: IpMode) -> Self {
        Scrub { inner, mode }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Scrub<M> {
    type Writer = ScrubWriter<M::Writer>;
    fn make_writer(&'a self) -> Self::Writer {
        ScrubWriter {
            inner: self.inner.make_writer(),
            mode: self.mode,
        }
    }
}

/// The formatter writes one whole event per `write` call; a line is scrubbed as a whole.
pub struct ScrubWriter<W> {
    inner: W,
    mode: IpMode,
}

impl<W: Write> Write for ScrubWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(s) => self
                .inner
                .write_all(scrub_ips(s, self.mode).as_bytes())
                .map(|()| buf.len()),
            Err(_) => {
                let s = String::from_utf8_lossy(buf);
                self.inner
                    .write_all(scrub_ips(&s, self.mode).as_bytes())
                    .map(|()| buf.len())
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// File names of the daily log files: `meetd.YYYY-MM-DD.log`.
const PREFIX: &str = "meetd";
const SUFFIX: &str = "log";

/// Changes the level filter and the retention of the running process (SIGHUP).
#[derive(Clone)]
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, tracing_subscriber::Registry>,
    /// `[log] retention_days`, as the sweeper reads it.
    pub retention_days: Arc<AtomicU32>,
}

impl LogHandle {
    pub fn set_retention_days(&self, days: u32) {
        self.retention_days.store(days, Ordering::Relaxed);
    }

    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let f = effective_filter(level)
            .and_then(|f| EnvFilter::try_new(f).map_err(|e| e.to_string()))
            .map_err(|e| format!("log.level: {e}"))?;
        self.filter.reload(f).map_err(|e| e.to_string())
    }
}

/// The log directory of `cfg`, if logs go to files.
pub fn log_dir(cfg: &Config) -> Option<PathBuf> {
    (!cfg.log.dir.is_empty()).then(|| PathBuf::from(&cfg.log.dir))
}

/// meetd's own crates: they follow `[log] level` all the way down to trace.
const OWN_CRATES: [&str; 4] = ["meetd", "meetd_xmpp", "meetd_jingle", "meetd_colibri"];

/// The filter meetd installs for the `[log] level` an admin asked for. meetd's own crates
/// log at that level; every other crate at most at `info`, whatever the filter says, because
/// their debug and trace lines carry what must never be logged: WebSocket frames with chat
/// and tokens, ICE credentials, DTLS and SCTP payloads, per-packet TURN relaying.
pub fn effective_filter(level: &str) -> Result<String, String> {
    use tracing_subscriber::filter::LevelFilter;
    EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    let cap = LevelFilter::INFO;
    let mut default: Option<LevelFilter> = None;
    let mut out: Vec<String> = Vec::new();
    let mut own_named = Vec::new();
    for part in level.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.rsplit_once('=') {
            None => match part.parse::<LevelFilter>() {
                Ok(l) => default = Some(l),
                // A bare target ("meetd_xmpp") means that target at trace.
                Err(_) => out.push(clamp_directive(
                    part,
                    LevelFilter::TRACE,
                    cap,
                    &mut own_named,
                )),
            },
            Some((target, l)) => {
                let l = l.parse::<LevelFilter>().map_err(|e| e.to_string())?;
                out.push(clamp_directive(target, l, cap, &mut own_named));
            }
        }
    }
    let default = default.unwrap_or(LevelFilter::ERROR);
    let mut all = vec![default.min(cap).to_string().to_lowercase()];
    if default > cap {
        for c in OWN_CRATES {
            if !own_named.contains(&c) {
                all.push(format!("{c}={}", default.to_string().to_lowercase()));
            }
        }
    }
    all.extend(out);
    Ok(all.join(","))
}

fn clamp_directive(
    target: &str,
    level: tracing_subscriber::filter::LevelFilter,
    cap: tracing_subscriber::filter::LevelFilter,
    own_named: &mut Vec<&'static str>,
) -> String {
    let krate = target.split(['[', ':']).next().unwrap_or(target);
    let own = OWN_CRATES.iter().find(|c| **c == krate);
    if let Some(c) = own {
        own_named.push(c);
    }
    let level = if own.is_some() { level } else { level.min(cap) };
    format!("{target}={}", level.to_string().to_lowercase())
}

/// Installs the global subscriber: `[log]` level and format, to standard output or daily
/// files in `[log] dir`, IPs as `[privacy] log_ips` says.
pub fn init(cfg: &Config) -> std::io::Result<LogHandle> {
    let filter = effective_filter(&cfg.log.level)
        .and_then(|f| EnvFilter::try_new(f).map_err(|e| e.to_string()))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let mode = IpMode::parse(&cfg.privacy.log_ips).unwrap_or(IpMode::Masked);
    let json = cfg.log.format == "json";
    let registry = tracing_subscriber::registry().with(filter);
    match log_dir(cfg) {
        None => {
            let w = Scrub::new(std::io::stdout, mode);
            let layer = tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_writer(w);
            if json {
                registry.with(layer.json()).init();
            } else {
                registry.with(layer).init();
            }
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            let files = tracing_appender::rolling::Builder::new()
                .rotation(tracing_appender::rolling::Rotation::DAILY)
                .filename_prefix(PREFIX)
                .filename_suffix(SUFFIX)
                .build(&dir)
                .map_err(std::io::Error::other)?;
            let layer = tracing_subscriber::fmt::layer()
                .with_target(true)
                .with_ansi(false)
                .with_writer(Scrub::new(files, mode));
            if json {
                registry.with(layer.json()).init();
            } else {
                registry.with(layer).init();
            }
        }
    }
    Ok(LogHandle {
        filter: handle,
        retention_days: Arc::new(AtomicU32::new(cfg.log.retention_days)),
    })
}

/// Deletes meetd's log files in `dir` last written more than `retention` before `now`.
/// Answers the names of the files deleted. Other files in the directory are left alone.
pub fn sweep(dir: &Path, retention: Duration, now: SystemTime) -> Vec<PathBuf> {
    let mut gone = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return gone;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with(&format!("{PREFIX}.")) && name.ends_with(&format!(".{SUFFIX}"))) {
            continue;
        }
        let Ok(modified) = e.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        if now.duration_since(modified).unwrap_or_default() > retention {
            let p = e.path();
            match std::fs::remove_file(&p) {
                Ok(()) => gone.push(p),
                Err(err) => {
                    tracing::warn!(file = %p.display(), error = %err, "could not delete an old log file")
                }
            }
        }
    }
    gone
}

/// Sweeps the log directory now and then every hour, for as long as meetd runs, with the
/// retention in `days` (which a reload may change).
pub fn spawn_sweeper(cfg: &Config, days: Arc<AtomicU32>) {
    let Some(dir) = log_dir(cfg) else { return };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let d = dir.clone();
            let retention =
                Duration::from_secs(u64::from(days.load(Ordering::Relaxed).max(1)) * 86_400);
            let gone = tokio::task::spawn_blocking(move || sweep(&d, retention, SystemTime::now()))
                .await
                .unwrap_or_default();
            for p in gone {
                tracing::info!(file = %p.display(), "old log file deleted (log.retention_days)");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> String {
        scrub_ips(s, IpMode::Masked).into_owned()
    }

    #[test]
    fn masks_ipv4_in_every_shape() {
        assert_eq!(m("peer=192.0.2.17"), "peer=192.0.2.x");
        assert_eq!(m("from 192.0.2.17:5000."), "from 192.0.2.x:5000.");
        assert_eq!(m("[10.1.2.3:443]"), "[10.1.2.x:443]");
        assert_eq!(m("a 127.0.0.1, b 8.8.8.8."), "a 127.0.0.x, b 8.8.8.x.");
        assert_eq!(
            m("UDP_127.0.0.1:32776_127.0.0.1:33153"),
            "UDP_127.0.0.x:32776_127.0.0.x:33153"
        );
        assert_eq!(
            m(r#"{"peer":"198.51.100.200:3478"}"#),
            r#"{"peer":"198.51.100.x:3478"}"#
        );
        assert_eq!(
            m("candidate:1 1 udp 2122260223 203.0.113.9 54321 typ host"),
            "candidate:1 1 udp 2122260223 203.0.113.x 54321 typ host"
        );
    }

    #[test]
    fn masks_ipv6_to_48_bits() {
        assert_eq!(m("peer=2001:db8:1:2::5"), "peer=2001:db8:1::x");
        assert_eq!(
            m("[2001:db8:aa:bb:cc:dd:ee:ff]:443"),
            "[2001:db8:aa::x]:443"
        );
        assert_eq!(m("from ::1."), "from ::x.");
        assert_eq!(m("fe80::1%eth0"), "fe80::x%eth0");
        assert_eq!(m("::ffff:192.0.2.1"), "::ffff:192.0.2.x");
    }

    #[test]
    fn leaves_what_is_not_an_address() {
        for s in [
            "2026-12-05T05:38:52.123456Z  INFO joined",
            "version 0.3.23",
            "fingerprint sha-256 AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89",
            "mac aa:bb:cc:dd:ee:ff",
            "listening on 0.0.0.0:8443 and [::]:5222",
            "v1.2.3.4 x1.2.3.4 1.2.3.4a 1.2.3.4.5 x1.2.3.4.5",
            "ssrc 1234567890 seq 1.5",
            "deadbeef::cafe::1",
        ] {
            assert_eq!(m(s), s);
        }
    }

    #[test]
    fn own_addresses_stay() {
        // The only test that sets them: nothing else here uses 203.0.113.0/24.
        set_own(vec!["203.0.113.5".parse().unwrap()]);
        assert_eq!(
            m("candidates=[203.0.113.5] peer=203.0.113.6:5000"),
            "candidates=[203.0.113.5] peer=203.0.113.x:5000"
        );
    }

    #[test]
    fn none_and_full() {
        let s = "192.0.2.1 and 2001:db8::1";
        assert_eq!(scrub_ips(s, IpMode::None), "x.x.x.x and x::x");
        assert_eq!(scrub_ips(s, IpMode::Full), s);
    }

    #[test]
    fn other_crates_log_at_most_info() {
        let f = |s: &str| effective_filter(s).unwrap();
        assert_eq!(f("info"), "info");
        assert_eq!(f("warn"), "warn");
        assert_eq!(
            f("trace"),
            "info,meetd=trace,meetd_xmpp=trace,meetd_jingle=trace,meetd_colibri=trace"
        );
        assert_eq!(
            f("debug,meetd_xmpp=trace,str0m=trace,tungstenite=warn"),
            "info,meetd=debug,meetd_jingle=debug,meetd_colibri=debug,meetd_xmpp=trace,str0m=info,tungstenite=warn"
        );
        assert_eq!(
            f("meetd_colibri::media=trace"),
            "error,meetd_colibri::media=trace"
        );
        assert_eq!(f("info,str0m"), "info,str0m=info");
        assert!(effective_filter("info,=nonsense").is_err());
    }

    #[test]
    fn writer_scrubs_each_line() {
        let mut out = Vec::new();
        {
            let mut w = ScrubWriter {
                inner: &mut out,
                mode: IpMode::Masked,
            };
            w.write_all(b"peer 192.0.2.44 joined\n").unwrap();
        }
        assert_eq!(out, b"peer 192.0.2.x joined\n");
    }

    #[test]
    fn sweep_deletes_only_old_log_files() {
        let dir = std::env::temp_dir().join(format!("meetd-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let age = |name: &str, days: u32| {
            let p = dir.join(name);
            let f = std::fs::File::create(&p).unwrap();
            f.set_modified(now - day * days).unwrap();
        };
        age("meetd.2026-11-20.log", 15);
        age("meetd.2026-11-28.log", 8);
        age("meetd.2026-11-29.log", 6);
        age("meetd.2026-12-05.log", 0);
        age("notes.txt", 30);
        let mut gone: Vec<String> = sweep(&dir, day * 7, now)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        gone.sort();
        assert_eq!(gone, ["meetd.2026-11-20.log", "meetd.2026-11-28.log"]);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["meetd.2026-11-29.log", "meetd.2026-12-05.log", "notes.txt"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
