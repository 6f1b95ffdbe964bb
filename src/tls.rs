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

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
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

fn public_host(url: &str) -> Option<String> {
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
