//! SIGHUP (docs/operations.md "Reloading"): meetd reads its configuration again and applies
//! what can change under running meetings: the log level, the TLS certificate, `[limits]`
//! (for sessions that start from now on) and the `[auth.jwt]` keys and secrets (for the
//! next sign-in). Every other change is named in one log line as needing a restart.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::Config;
use crate::logging::LogHandle;

/// What a reload can apply in place.
pub struct Live {
    pub log: LogHandle,
    /// Wakes the certificate watcher to load the files now.
    pub tls: Arc<tokio::sync::Notify>,
    pub server: Arc<meetd_xmpp::Server>,
}

/// The keys ("section.key") whose values differ between `old` and `new`, in order.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let flat = |c: &Config| {
        let mut m = BTreeMap::new();
        if let Ok(v) = toml::Value::try_from(c) {
            flatten("", &v, &mut m);
        }
        m
    };
    let (a, b) = (flat(old), flat(new));
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// Whether a changed key takes effect on reload.
pub fn applies_live(key: &str) -> bool {
    key == "log.level"
        || key == "log.retention_days"
        || key.starts_with("limits.")
        || (key.starts_with("auth.jwt.") && key != "auth.jwt.key_cache_size")
}

/// What one reload did: the keys applied, those that wait for a restart.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub applied: Vec<String>,
    pub restart: Vec<String>,
}

/// Applies `new` over the running `old` where it can; `old` becomes what now runs.
pub fn apply(live: &Live, old: &mut Config, new: &Config) -> Outcome {
    let mut out = Outcome::default();
    for key in changed_keys(old, new) {
        if applies_live(&key) {
            out.applied.push(key);
        } else {
            out.restart.push(key);
        }
    }
    if out.applied.iter().any(|k| k == "log.level") {
        match live.log.set_level(&new.log.level) {
            Ok(()) => old.log.level = new.log.level.clone(),
            Err(e) => {
                tracing::error!(error = %e, "log.level not applied");
                out.applied.retain(|k| k != "log.level");
            }
        }
    }
    if out.applied.iter().any(|k| k == "log.retention_days") {
        live.log.set_retention_days(new.log.retention_days);
        old.log.retention_days = new.log.retention_days;
    }
    if out.applied.iter().any(|k| k.starts_with("limits.")) {
        live.server.set_limits(new.xmpp().limits);
        old.limits = new.limits.clone();
    }
    if out.applied.iter().any(|k| k.starts_with("auth.jwt.")) {
        match token_authority(live, new) {
            Ok(t) => {
                live.server.set_token_authority(Arc::new(t));
                old.auth.jwt = new.auth.jwt.clone();
            }
            Err(e) => {
                tracing::error!(error = %e, "auth.jwt not applied");
                let (jwt, rest) = std::mem::take(&mut out.applied)
                    .into_iter()
                    .partition(|k| k.starts_with("auth.jwt."));
                out.applied = rest;
                out.restart.extend::<Vec<String>>(jwt);
            }
        }
    }
    // The certificate files are read again whatever changed: a renewal keeps their names.
    live.tls.notify_one();
    out
}

fn token_authority(live: &Live, new: &Config) -> Result<meetd_xmpp::token::TokenAuthority, String> {
    if live.server.token_authority().is_none() || new.auth.mode != "jwt" {
        return Err("auth.mode \"jwt\" starts and stops with a restart".into());
    }
    let c = new.token_config().map_err(|e| e.to_string())?;
    meetd_xmpp::token::TokenAuthority::new(c).map_err(|e| e.to_string())
}

/// Logs what a reload did.
pub fn report(out: &Outcome) {
    tracing::info!(
        applied = ?out.applied,
        "configuration reloaded (SIGHUP); TLS certificate files read again"
    );
    if !out.restart.is_empty() {
        tracing::warn!(
            keys = ?out.restart,
            "these changes take effect after a restart"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_changed() {
        let a = Config::default();
        let mut b = Config::default();
        assert!(changed_keys(&a, &b).is_empty());
        b.log.level = "debug".into();
        b.limits.max_sessions_per_ip = 5;
        b.media.port = 10001;
        b.auth.jwt.app_secret = "s".into();
        assert_eq!(
            changed_keys(&a, &b),
            [
                "auth.jwt.app_secret",
                "limits.max_sessions_per_ip",
                "log.level",
                "media.port"
            ]
        );
        let live: Vec<bool> = changed_keys(&a, &b)
            .iter()
            .map(|k| applies_live(k))
            .collect();
        assert_eq!(live, [true, true, true, false]);
        assert!(!applies_live("log.dir"));
        assert!(!applies_live("tls.cert"));
    }
}
