//! Starting meetd's bridge: the media engine, the host candidates and the Colibri2 service.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use meetd_colibri::channel::ChannelHub;
use meetd_colibri::driver::EngineHandle;
use meetd_colibri::media::EngineConfig;
use meetd_colibri::service::{BridgeConfig, ColibriService};
use meetd_colibri::tcp::{TcpLimits, TcpMedia};

use crate::config::Config;

/// The host's own addresses, as JVB announces without configuration: global and
/// private unicast, no loopback, no link-local (those need a scope and rarely route).
pub(crate) fn interface_addresses() -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified() && !ip.is_multicast())
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_link_local(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
        })
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Where clients open the bridge channel: the public URL, else the first listener — on its own
/// address when it is bound to one, on `media_host` (the first announced media address) when it
/// listens on every address.
fn ws_base(cfg: &Config, media_host: &str) -> String {
    let public = cfg.server.public_url.trim_end_matches('/');
    if let Some(rest) = public.strip_prefix("https://") {
        return format!("wss://{rest}");
    }
    if let Some(rest) = public.strip_prefix("http://") {
        return format!("ws://{rest}");
    }
    let host = |a: SocketAddr| match a.ip() {
        ip if ip.is_unspecified() => media_host.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    if let Some(a) = cfg.listen.https.addr() {
        return format!("wss://{}:{}", host(a), a.port());
    }
    match cfg.listen.http.addr() {
        Some(a) => format!("ws://{}:{}", host(a), a.port()),
        None => format!("wss://{}", cfg.server.domain),
    }
}

/// A started bridge: the Colibri2 service, the bridge channels, the engine's command handle,
/// and the ICE-TCP side when the HTTPS listener is to share it.
pub struct Started {
    pub service: Arc<ColibriService>,
    pub hub: Arc<ChannelHub>,
    pub engine: EngineHandle,
    pub tcp_on_https: Option<Arc<TcpMedia>>,
    /// The media addresses announced (configured, or this host's).
    pub media_ips: Vec<IpAddr>,
}

/// The bridge: media engine thread on the media port, ICE-TCP listener, Colibri2 service,
/// bridge channels.
pub fn start(cfg: &Config) -> anyhow::Result<Started> {
    let mut ips = cfg.media.advertise_ips.clone();
    if ips.is_empty() {
        ips = interface_addresses();
        if ips.is_empty() {
            ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        tracing::warn!(
            candidates = ?ips,
            "media.advertise_ips is empty: announcing this host's addresses; behind NAT set --advertise-ip to the address clients reach"
        );
    }
    let host = match ips[0] {
        IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    let hub = ChannelHub::new(cfg.bridge.channel_queue);
    let port = cfg.media.port;
    let bind: SocketAddr = if ips.iter().any(|ip| ip.is_ipv6()) {
        (Ipv6Addr::UNSPECIFIED, port).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, port).into()
    };
    // ICE-TCP: passive candidates on the TCP port and on the HTTPS port (docs/bridge.md B.1).
    // The engine knows them by the ports it accepts on; clients get the public ones.
    let https_port = cfg
        .listen
        .https
        .addr()
        .filter(|_| cfg.media.tcp_on_https)
        .map(|a| a.port());
    let tcp_listen_ports: Vec<u16> = [Some(cfg.media.tcp_port).filter(|p| *p != 0), https_port]
        .into_iter()
        .flatten()
        .collect();
    let tcp_public_ports: Vec<u16> = [
        Some(cfg.media.tcp_port).filter(|p| *p != 0),
        https_port.map(|p| match cfg.media.tcp_https_public_port {
            0 => p,
            public => public,
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    let engine_cfg = EngineConfig {
        local_addrs: ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect(),
        tcp_local_addrs: ips
            .iter()
            .flat_map(|ip| tcp_listen_ports.iter().map(|p| SocketAddr::new(*ip, *p)))
            .collect(),
        max_endpoints: cfg
            .bridge
            .max_conferences
            .saturating_mul(cfg.bridge.max_endpoints_per_conference)
            .min(100_000),
        rtx_cache_packets: cfg.media.rtx_cache_packets,
        rtx_cache_age: Duration::from_millis(cfg.media.rtx_cache_ms),
        max_sources_per_endpoint: cfg.media.max_sources_per_endpoint,
        rewrite_video_slots: cfg.media.rewrite_video_slots,
        rewrite_audio_slots: cfg.media.rewrite_audio_slots,
        expire_unconnected_after: Duration::from_secs(cfg.media.expire_unconnected_secs),
        expire_inactive_after: Duration::from_secs(cfg.media.expire_inactive_secs),
        bwe_initial_bps: cfg.media.bandwidth_estimation.then_some(1_000_000),
        trust_bwe: cfg.media.trust_bwe,
        threads: cfg.media.threads,
        ..EngineConfig::default()
    };
    let spawned = meetd_colibri::driver::spawn_with_buffers(
        engine_cfg,
        bind,
        cfg.media.engine_queue,
        cfg.media.socket_buffer_bytes,
        TcpLimits {
            max_connections: cfg.media.tcp_max_connections,
            send_queue: cfg.media.tcp_send_queue,
            ..TcpLimits::default()
        },
    )
    .map_err(|e| anyhow::anyhow!("media port {bind}: {e}"))?;
    if cfg.media.tcp_port != 0 {
        let tcp_bind = SocketAddr::new(bind.ip(), cfg.media.tcp_port);
        let l = std::net::TcpListener::bind(tcp_bind)
            .map_err(|e| anyhow::anyhow!("media.tcp_port {tcp_bind}: {e}"))?;
        l.set_nonblocking(true)?;
        let l = tokio::net::TcpListener::from_std(l)?;
        tracing::info!("media (ICE-TCP) listening on {tcp_bind}");
        let media = spawned.tcp.clone();
        tokio::spawn(async move {
            loop {
                match l.accept().await {
                    Ok((s, _)) => {
                        tokio::spawn(media.clone().serve(s));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "ICE-TCP accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
    let tcp_on_https = https_port.map(|_| spawned.tcp.clone());
    let (engine, fingerprint) = (spawned.handle, spawned.fingerprint);
    hub.set_engine(engine.clone());
    let bc = BridgeConfig {
        id: cfg.bridge.id.clone(),
        media_port: cfg.media.port,
        tcp_ports: tcp_public_ports,
        advertise_ips: ips.clone(),
        ws_base: ws_base(cfg, &host),
        dtls_fingerprint: fingerprint,
        max_conferences: cfg.bridge.max_conferences,
        max_endpoints_per_conference: cfg.bridge.max_endpoints_per_conference,
    };
    tracing::info!(
        candidates = ?bc.advertise_ips,
        "media (UDP) listening on {bind}"
    );
    let service = ColibriService::with_engine(bc, Some(engine.clone()));
    service.set_relay_dialer(crate::relay_channel::dialer(
        hub.clone(),
        Arc::downgrade(&service),
    ));
    // The one task that turns engine events into bridge-channel messages (and expiries).
    tokio::spawn(meetd_colibri::channel::events::run(
        hub.clone(),
        Some(service.clone()),
        spawned.events,
    ));
    Ok(Started {
        service,
        hub,
        engine,
        tcp_on_https,
        media_ips: ips,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Listen;

    #[test]
    fn bridge_channel_url_follows_the_listener() {
        let mut cfg = Config::default();
        cfg.listen.https = Listen::Off;
        cfg.listen.http = Listen::At("127.0.0.1:8080".parse().unwrap());
        assert_eq!(ws_base(&cfg, "[fd00::1]"), "ws://127.0.0.1:8080");
        cfg.listen.http = Listen::At("[::]:8080".parse().unwrap());
        assert_eq!(ws_base(&cfg, "[fd00::1]"), "ws://[fd00::1]:8080");
        cfg.listen.https = Listen::At("[2001:db8::5]:443".parse().unwrap());
        assert_eq!(ws_base(&cfg, "192.0.2.1"), "wss://[2001:db8::5]:443");
        cfg.server.public_url = "https://meet.example.org/".into();
        assert_eq!(ws_base(&cfg, "192.0.2.1"), "wss://meet.example.org");
    }
}
