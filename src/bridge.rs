//! Starting meetd's bridge: the DTLS identity, the host candidates and the Colibri2 service.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use meetd_colibri::service::{BridgeConfig, ColibriService};

use crate::config::Config;

/// One ECDSA P-256 certificate per process, as JVB has; its SHA-256 fingerprint goes into
/// every offer. The media engine will use the same key.
pub struct DtlsIdentity {
    pub fingerprint: String,
}

impl DtlsIdentity {
    pub fn generate() -> anyhow::Result<DtlsIdentity> {
        let ck = rcgen::generate_simple_self_signed(vec!["meetd".to_string()])?;
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, ck.cert.der());
        let fingerprint = d
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        Ok(DtlsIdentity { fingerprint })
    }
}

/// Where clients open the bridge channel: the public URL, else the first listener.
fn ws_base(cfg: &Config, host: &str) -> String {
    let public = cfg.server.public_url.trim_end_matches('/');
    if let Some(rest) = public.strip_prefix("https://") {
        return format!("wss://{rest}");
    }
    if let Some(rest) = public.strip_prefix("http://") {
        return format!("ws://{rest}");
    }
    if let Some(a) = cfg.listen.https.addr() {
        return format!("wss://{host}:{}", a.port());
    }
    match cfg.listen.http.addr() {
        Some(a) => format!("ws://{host}:{}", a.port()),
        None => format!("wss://{}", cfg.server.domain),
    }
}

pub fn start(cfg: &Config) -> anyhow::Result<Arc<ColibriService>> {
    let mut ips = cfg.media.advertise_ips.clone();
    if ips.is_empty() {
        tracing::warn!(
            "media.advertise_ips is empty: announcing 127.0.0.1 only; set --advertise-ip to the address clients reach"
        );
        ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let host = match ips[0] {
        IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    let id = DtlsIdentity::generate()?;
    let bc = BridgeConfig {
        id: cfg.bridge.id.clone(),
        media_port: cfg.media.port,
        advertise_ips: ips,
        ws_base: ws_base(cfg, &host),
        dtls_fingerprint: id.fingerprint,
        max_conferences: cfg.bridge.max_conferences,
        max_endpoints_per_conference: cfg.bridge.max_endpoints_per_conference,
    };
    tracing::info!(
        media_port = bc.media_port,
        candidates = ?bc.advertise_ips,
        "bridge (signalling) ready; media engine not built yet"
    );
    Ok(ColibriService::new(bc))
}
