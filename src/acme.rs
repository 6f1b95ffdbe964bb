//! Automatic certificates (`[tls] acme`, docs/operations.md "Certificates"): an ACME account
//! and certificate for `server.public_url`'s host, HTTP-01 answered on meetd's own HTTP
//! listener, renewed before expiry and swapped in without a restart. The ACME protocol is
//! the `instant-acme` crate's; this file is the glue.
//!
//! Files in `<data_dir>/acme/`: `account.json` (the account's key), `fullchain.pem` and
//! `key.pem` (what HTTPS and XMPP serve). Until the first certificate arrives those two hold
//! a self-signed placeholder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use crate::config::Config;
use crate::tls::TlsFiles;

/// HTTP-01 answers waiting to be fetched: token → key authorization.
#[derive(Default)]
pub struct Challenges(parking_lot::Mutex<HashMap<String, String>>);

impl Challenges {
    /// The answer for `/.well-known/acme-challenge/<token>`.
    pub fn answer(&self, token: &str) -> Option<String> {
        self.0.lock().get(token).cloned()
    }
    fn set(&self, token: &str, key_auth: String) {
        let mut m = self.0.lock();
        // Only the tokens of the order in flight: a handful at most.
        if m.len() >= 64 {
            m.clear();
        }
        m.insert(token.to_string(), key_auth);
    }
    fn clear(&self) {
        self.0.lock().clear();
    }
}

fn dir(cfg: &Config) -> PathBuf {
    cfg.server.data_dir.join("acme")
}

/// The host the certificate is for.
pub fn host(cfg: &Config) -> Option<String> {
    crate::tls::public_host(&cfg.server.public_url).map(|h| h.to_ascii_lowercase())
}

/// The files HTTPS and XMPP serve with ACME on; a self-signed placeholder is written there
/// until the first certificate arrives.
pub fn files(cfg: &Config) -> anyhow::Result<TlsFiles> {
    let d = dir(cfg);
    std::fs::create_dir_all(&d)?;
    let cert = d.join("fullchain.pem");
    let key = d.join("key.pem");
    if !cert.exists() || !key.exists() {
        let names = vec![host(cfg).unwrap_or_else(|| "localhost".into())];
        let ck = rcgen::generate_simple_self_signed(names)?;
        crate::tls::write_private(&key, ck.signing_key.serialize_pem().as_bytes())?;
        std::fs::write(&cert, ck.cert.pem())?;
    }
    Ok(TlsFiles {
        cert,
        key,
        self_signed: false,
    })
}

/// Whether the certificate at `cert` must be (re)ordered: unreadable, the placeholder
/// (self-signed), not for `host`, or expiring within `renew_days`.
pub fn due(cert: &Path, host: &str, renew_days: u32) -> bool {
    use rustls::pki_types::pem::PemObject;
    let Some(der) = rustls::pki_types::CertificateDer::pem_file_iter(cert)
        .ok()
        .and_then(|mut it| it.next())
        .and_then(Result::ok)
    else {
        return true;
    };
    let Ok((_, x)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return true;
    };
    if x.issuer() == x.subject() {
        return true;
    }
    let names = crate::tls::leaf_facts(cert)
        .map(|(n, _)| n)
        .unwrap_or_default();
    if !names.iter().any(|n| n.eq_ignore_ascii_case(host)) {
        return true;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    x.validity().not_after.timestamp() - now < i64::from(renew_days) * 86_400
}

/// Keeps the certificate current for as long as meetd runs: orders one when it is due,
/// checks again every `[tls] acme_check_secs`, retries a failed order after a tenth of
/// that (at least a minute), and wakes the certificate watcher after each new one.
pub async fn run(
    cfg: Config,
    files: TlsFiles,
    challenges: Arc<Challenges>,
    reload: Arc<tokio::sync::Notify>,
) {
    let Some(host) = host(&cfg) else { return };
    let every = Duration::from_secs(cfg.tls.acme_check_secs.max(1));
    let retry = (every / 10).max(Duration::from_secs(60)).min(every);
    loop {
        let wait = if due(&files.cert, &host, cfg.tls.acme_renew_days) {
            match order(&cfg, &host, &challenges).await {
                Ok((chain, key)) => match store(&files, &chain, &key) {
                    Ok(()) => {
                        tracing::info!(%host, "ACME: new certificate stored; serving it now");
                        reload.notify_one();
                        every
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "ACME: storing the certificate failed");
                        retry
                    }
                },
                Err(e) => {
                    tracing::error!(%host, error = %format!("{e:#}"), "ACME: ordering a certificate failed; trying again later");
                    retry
                }
            }
        } else {
            every
        };
        challenges.clear();
        tokio::time::sleep(wait).await;
    }
}

fn store(files: &TlsFiles, chain: &str, key: &str) -> std::io::Result<()> {
    let tmp_key = files.key.with_extension("pem.new");
    let tmp_cert = files.cert.with_extension("pem.new");
    crate::tls::write_private(&tmp_key, key.as_bytes())?;
    std::fs::write(&tmp_cert, chain)?;
    std::fs::rename(&tmp_key, &files.key)?;
    std::fs::rename(&tmp_cert, &files.cert)
}

async fn account(cfg: &Config) -> anyhow::Result<Account> {
    let builder = || -> anyhow::Result<_> {
        Ok(if cfg.tls.acme_ca_root.is_empty() {
            Account::builder()?
        } else {
            Account::builder_with_root(&cfg.tls.acme_ca_root)?
        })
    };
    let path = dir(cfg).join("account.json");
    if let Ok(data) = std::fs::read(&path) {
        let creds: AccountCredentials = serde_json::from_slice(&data)?;
        return Ok(builder()?.from_credentials(creds).await?);
    }
    let contact =
        (!cfg.tls.acme_email.is_empty()).then(|| format!("mailto:{}", cfg.tls.acme_email));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.tls.acme_directory.clone(),
            None,
        )
        .await?;
    crate::tls::write_private(&path, &serde_json::to_vec(&creds)?)?;
    tracing::info!(directory = %cfg.tls.acme_directory, "ACME: account created");
    Ok(account)
}

/// One order for `host` through HTTP-01: the full chain and its private key, as PEM.
async fn order(
    cfg: &Config,
    host: &str,
    challenges: &Challenges,
) -> anyhow::Result<(String, String)> {
    let account = account(cfg).await?;
    let ids = [Identifier::Dns(host.to_string())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a?;
        match a.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            s => anyhow::bail!("authorization for {host} is {s:?}"),
        }
        let mut ch = a
            .challenge(ChallengeType::Http01)
            .ok_or_else(|| anyhow::anyhow!("the ACME server offers no HTTP-01 challenge"))?;
        challenges.set(&ch.token, ch.key_authorization().as_str().to_string());
        ch.set_ready().await?;
    }
    let retries = RetryPolicy::default().timeout(Duration::from_secs(90));
    let status = order.poll_ready(&retries).await?;
    if status != OrderStatus::Ready {
        anyhow::bail!(
            "the order is {status:?}, not ready (could the ACME server fetch http://{host}/.well-known/acme-challenge/ from meetd's HTTP listener?)"
        );
    }
    let key = order.finalize().await?;
    let chain = order.poll_certificate(&retries).await?;
    Ok((chain, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_and_foreign_names_are_due() {
        let d = std::env::temp_dir().join(format!("meetd-acme-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let mut cfg = Config::default();
        cfg.server.data_dir = d.clone();
        cfg.server.public_url = "https://meet.example.org".into();
        assert_eq!(host(&cfg).as_deref(), Some("meet.example.org"));
        let f = files(&cfg).unwrap();
        // The placeholder is self-signed: due at once.
        assert!(due(&f.cert, "meet.example.org", 30));
        assert!(due(&d.join("missing.pem"), "meet.example.org", 30));
        // A CA-issued certificate for the host, valid for years: not due unless the renewal
        // window is longer than that, or the host changed.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(vec![]).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "Test CA");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["meet.example.org".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        store(&f, &leaf.pem(), &key.serialize_pem()).unwrap();
        assert!(!due(&f.cert, "meet.example.org", 30));
        assert!(due(&f.cert, "other.example.org", 30));
        // (rcgen certificates run to the year 4096.)
        assert!(due(&f.cert, "meet.example.org", 1_000_000));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
