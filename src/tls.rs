//! TLS material: the configured chain, or a self-signed certificate made on first run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub self_signed: bool,
}

/// The certificate and key to serve: configured files, or `<data_dir>/tls/` (created if missing).
pub fn ensure(cfg: &Config) -> anyhow::Result<TlsFiles> {
    if !cfg.tls.cert.is_empty() {
        return Ok(TlsFiles {
            cert: PathBuf::from(&cfg.tls.cert),
            key: PathBuf::from(&cfg.tls.key),
            self_signed: false,
        });
    }
    let dir = cfg.server.data_dir.join("tls");
    let cert = dir.join("self-signed.crt");
    let key = dir.join("self-signed.key");
    if !cert.exists() || !key.exists() {
        std::fs::create_dir_all(&dir)?;
        let mut names = vec![
            cfg.server.domain.clone(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        if let Some(host) = public_host(&cfg.server.public_url) {
            names.push(host);
        }
        names.sort();
        names.dedup();
        let ck = rcgen::generate_simple_self_signed(names)?;
        std::fs::write(&cert, ck.cert.pem())?;
        write_private(&key, ck.signing_key.serialize_pem().as_bytes())?;
        tracing::info!(cert = %cert.display(), "generated a self-signed certificate");
    }
    Ok(TlsFiles {
        cert,
        key,
        self_signed: true,
    })
}

pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(data)
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, data)
    }
}

/// The host of a `scheme://host[:port]/…` URL.
pub fn public_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let host = rest.split(['/', ':']).next()?;
    (!host.is_empty()).then(|| host.to_string())
}

/// A rustls server configuration for the c2s listener.
pub fn server_config(files: &TlsFiles) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| anyhow::anyhow!("{}: {e}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate found", files.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| anyhow::anyhow!("{}: {e}", files.key.display()))?;
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(cfg))
}

/// Problems with a configured chain that would make the mobile apps refuse it.
pub fn chain_warnings(files: &TlsFiles) -> Vec<String> {
    let mut out = Vec::new();
    let certs: Vec<CertificateDer<'static>> = match CertificateDer::pem_file_iter(&files.cert) {
        Ok(it) => it.filter_map(Result::ok).collect(),
        Err(e) => return vec![format!("{}: {e}", files.cert.display())],
    };
    let parsed: Vec<_> = certs
        .iter()
        .filter_map(|c| {
            x509_parser::parse_x509_certificate(c.as_ref())
                .ok()
                .map(|(_, x)| x)
        })
        .collect();
    let Some(leaf) = parsed.first() else {
        return vec![format!("{}: no readable certificate", files.cert.display())];
    };
    if parsed.len() == 1 && leaf.issuer() != leaf.subject() {
        out.push(format!(
            "{}: the certificate chain is incomplete (only the server certificate, issued by {}); \
             the iOS and Android apps reject such chains: configure the full chain (e.g. fullchain.pem)",
            files.cert.display(),
            leaf.issuer()
        ));
    }
    for pair in parsed.windows(2) {
        if pair[0].issuer() != pair[1].subject() {
            out.push(format!(
                "{}: certificate issued by {} is followed by {}, not by its issuer; the chain is out of order or incomplete",
                files.cert.display(),
                pair[0].issuer(),
                pair[1].subject()
            ));
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let not_after = leaf.validity().not_after.timestamp();
    if not_after < now {
        out.push(format!(
            "{}: the certificate has expired",
            files.cert.display()
        ));
    } else if not_after < now + 14 * 86400 {
        out.push(format!(
            "{}: the certificate expires within 14 days",
            files.cert.display()
        ));
    }
    out
}

/// The names the first certificate of `cert` (a PEM file) covers (DNS and IP subject
/// alternative names, else its common name) and the days until it expires (negative once
/// expired).
pub fn leaf_facts(cert: &Path) -> Option<(Vec<String>, i64)> {
    let der = CertificateDer::pem_file_iter(cert).ok()?.next()?.ok()?;
    let (_, x) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => names
                        .push(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                    16 => names
                        .push(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    if names.is_empty() {
        names.extend(
            x.subject()
                .iter_common_name()
                .filter_map(|c| c.as_str().ok())
                .map(str::to_string),
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = (x.validity().not_after.timestamp() - now).div_euclid(86_400);
    Some((names, days))
}

fn mtimes(files: &TlsFiles) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(&files.cert)?, m(&files.key)?))
}

/// Reload the certificate when its files change (renewals), or when `reload_now` is notified
/// (SIGHUP), for HTTPS and XMPP alike.
pub async fn watch(
    files: TlsFiles,
    c2s: meetd_xmpp::tcp::TlsSource,
    https: Option<axum_server::tls_rustls::RustlsConfig>,
    every: std::time::Duration,
    reload_now: Arc<tokio::sync::Notify>,
) {
    let mut last = mtimes(&files);
    loop {
        let forced = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = reload_now.notified() => true,
        };
        let now = mtimes(&files);
        if now.is_none() || (now == last && !forced) {
            continue;
        }
        match server_config(&files) {
            Ok(cfg) => {
                *c2s.write() = tokio_rustls::TlsAcceptor::from(cfg);
                if let Some(h) = &https
                    && let Err(e) = h.reload_from_pem_file(&files.cert, &files.key).await
                {
                    tracing::error!(error = %e, "reloading the HTTPS certificate failed");
                    continue;
                }
                last = now;
                tracing::info!(cert = %files.cert.display(), "certificate reloaded");
                for w in chain_warnings(&files) {
                    tracing::warn!("{w}");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the new certificate files do not load; keeping the old ones")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changed_certificate_files_are_reloaded() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = std::env::temp_dir().join(format!("meetd-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str| {
            let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
            std::fs::write(dir.join("c.pem"), ck.cert.pem()).unwrap();
            std::fs::write(dir.join("k.pem"), ck.signing_key.serialize_pem()).unwrap();
        };
        write("one.example");
        let files = || TlsFiles {
            cert: dir.join("c.pem"),
            key: dir.join("k.pem"),
            self_signed: false,
        };
        let source: meetd_xmpp::tcp::TlsSource = Arc::new(parking_lot::RwLock::new(
            tokio_rustls::TlsAcceptor::from(server_config(&files()).unwrap()),
        ));
        let before = source.read().config().clone();
        let task = tokio::spawn(watch(
            files(),
            source.clone(),
            None,
            std::time::Duration::from_millis(20),
            Arc::new(tokio::sync::Notify::new()),
        ));
        // A renewal: new files with a later modification time.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        write("two.example");
        let mut reloaded = false;
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if !Arc::ptr_eq(&before, source.read().config()) {
                reloaded = true;
                break;
            }
        }
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(reloaded, "the acceptor was not replaced");
    }

    #[test]
    fn leaf_only_chain_is_reported() {
        let dir = std::env::temp_dir().join(format!("meetd-chain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A CA and a leaf it signs; the file holds the leaf alone.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(vec![]).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut lp = rcgen::CertificateParams::new(vec!["meet.example.com".into()]).unwrap();
        lp.distinguished_name
            .push(rcgen::DnType::CommonName, "meet.example.com");
        let leaf = lp.signed_by(&leaf_key, &issuer).unwrap();
        let files = TlsFiles {
            cert: dir.join("leaf.pem"),
            key: dir.join("leaf.key"),
            self_signed: false,
        };
        std::fs::write(&files.cert, leaf.pem()).unwrap();
        std::fs::write(&files.key, leaf_key.serialize_pem()).unwrap();
        let w = chain_warnings(&files);
        assert!(w.iter().any(|w| w.contains("incomplete")), "{w:?}");
        // With the CA appended the chain is complete.
        std::fs::write(&files.cert, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
        let w = chain_warnings(&files);
        assert!(
            !w.iter()
                .any(|w| w.contains("incomplete") || w.contains("out of order")),
            "{w:?}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
