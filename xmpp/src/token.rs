//! Sign-in with a JSON Web Token, as a stock install's token authentication does (the
//! learning platform signs a token per user; `docs/auth.md` has the claims).
//!
//! The web app passes the page's `?jwt=` to the XMPP transports as the `token` query
//! parameter; the session asks [`TokenAuthority::verify`] before SASL ANONYMOUS succeeds.
//! Checking a token is sans-IO ([`TokenVerifier::verify`], with the time as input); only
//! fetching a public key from a key server is not ([`TokenAuthority`]). What a verified token
//! says about its holder ([`TokenIdentity`]) is kept in [`Identities`] under the session's
//! full JID, where the rooms look it up (`muc::token`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde_json::Value;

/// How tokens are checked; `src/config.rs` fills it from `[auth.jwt]`.
#[derive(Debug, Clone, Default)]
pub struct TokenConfig {
    /// Shared secret for HS256/HS384/HS512 (stock `app_secret`).
    pub app_secret: Option<String>,
    /// Public keys (PEM) for RS256/ES256 tokens, by the `kid` in the token's header.
    pub public_keys: Vec<(String, Vec<u8>)>,
    /// Base URL of a key server: the key of `kid` is `<url>/<sha256-hex(kid)>.pem` (stock ASAP).
    pub key_server: Option<String>,
    /// Accepted `iss` values; `*` accepts any.
    pub accepted_issuers: Vec<String>,
    /// Accepted `aud` values; `*` accepts any.
    pub accepted_audiences: Vec<String>,
    /// Accepted `sub` values besides a session's tenant; empty = `sub` is not checked.
    pub accepted_subjects: Vec<String>,
    /// Leeway for `exp` and `nbf`.
    pub clock_skew: Duration,
    /// A token must name its room (`room`, or `*` for any).
    pub require_room: bool,
    /// Fetched keys kept at most.
    pub key_cache_size: usize,
    /// How long a fetched key is trusted before it is fetched again.
    pub key_cache_ttl: Duration,
    pub key_fetch_timeout: Duration,
}

/// Why a token was refused. The text is what the log line and the SASL failure say; it never
/// contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token required")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("algorithm {0} not accepted")]
    Algorithm(String),
    #[error("token has no key id (kid)")]
    NoKeyId,
    #[error("no key for key id {0:?}")]
    UnknownKey(String),
    #[error("key server: {0}")]
    KeyServer(String),
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("wrong subject")]
    WrongSubject,
    #[error("token names no room")]
    NoRoom,
    #[error("token is for another room")]
    WrongRoom,
}

/// The user a token describes (`context.user`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenUser {
    pub id: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub avatar: Option<String>,
}

/// What a verified token says about its holder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenIdentity {
    /// The room the token is for, URL-decoded and lower-cased; `*` = any room; None = any
    /// room (only when rooms are not required).
    pub room: Option<String>,
    pub user: TokenUser,
    pub group: Option<String>,
    /// Moderator in every room it may join.
    pub moderator: bool,
    /// `context.features`, when the token has them.
    pub features: Option<BTreeMap<String, bool>>,
    /// `exp`, seconds since the epoch.
    pub expires: Option<u64>,
}

impl TokenIdentity {
    /// May the holder join the room whose node (the local part of its JID, as the web app
    /// makes it) is `node`? Compared URL-decoded and case-insensitively.
    pub fn allows_room(&self, node: &str) -> bool {
        match self.room.as_deref() {
            None | Some("*") => true,
            Some(r) => normalize_room(r) == normalize_room(node),
        }
    }

    /// Whether a feature (`recording`, `livestreaming`, `transcription`, `outbound-call`) is
    /// granted: as a stock install, a token without `context.features` grants what its role
    /// allows (None), one with them grants only those set to true.
    pub fn feature(&self, name: &str) -> Option<bool> {
        self.features
            .as_ref()
            .map(|f| f.get(name).copied().unwrap_or(false))
    }
}

/// Room names compared: URL-decoded, lower-cased.
pub fn normalize_room(s: &str) -> String {
    crate::session::percent_decode(s).to_lowercase()
}

/// The algorithm and key id a token's header names; the first step of verifying it.
pub fn header(token: &str) -> Result<(Algorithm, Option<String>), TokenError> {
    match jsonwebtoken::decode_header(token) {
        Ok(h) => Ok((h.alg, h.kid)),
        Err(e) => Err(match e.kind() {
            // `alg: none` and unknown algorithms do not parse as a header.
            jsonwebtoken::errors::ErrorKind::Json(_) => match raw_alg(token) {
                Some(a) => TokenError::Algorithm(a),
                None => TokenError::Malformed,
            },
            _ => TokenError::Malformed,
        }),
    }
}

/// The `alg` of a header that did not parse, for the log line.
fn raw_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let h = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let a = v.get("alg")?.as_str()?;
    Some(a.chars().take(16).collect())
}

fn is_symmetric(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

fn accepted_asymmetric(alg: Algorithm) -> bool {
    matches!(
        alg,
        Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::ES256
            | Algorithm::ES384
    )
}

/// Checks tokens against the configured keys and claims; no I/O.
pub struct TokenVerifier {
    cfg: TokenConfig,
    secret: Option<DecodingKey>,
    keys: HashMap<String, DecodingKey>,
}

/// Which key a token needs.
pub enum KeyNeed<'a> {
    /// A configured key.
    Have(&'a DecodingKey),
    /// A key to fetch from the key server, by key id.
    Fetch(String),
}

impl TokenVerifier {
    /// Fails when a configured public key is not a PEM RSA or EC public key.
    pub fn new(cfg: TokenConfig) -> Result<TokenVerifier, String> {
        let secret = match &cfg.app_secret {
            Some(s) if !s.is_empty() => {
                Some(DecodingKey::from_secret(s.as_bytes()).map_err(|e| e.to_string())?)
            }
            _ => None,
        };
        let mut keys = HashMap::new();
        for (kid, pem) in &cfg.public_keys {
            keys.insert(
                kid.clone(),
                public_key(pem)
                    .ok_or_else(|| format!("key {kid:?}: not a PEM RSA or EC public key"))?,
            );
        }
        Ok(TokenVerifier { cfg, secret, keys })
    }

    /// The key `token` is to be checked with.
    pub fn key_for(&self, token: &str) -> Result<KeyNeed<'_>, TokenError> {
        let (alg, kid) = header(token)?;
        if is_symmetric(alg) {
            return self
                .secret
                .as_ref()
                .map(KeyNeed::Have)
                .ok_or_else(|| TokenError::Algorithm(format!("{alg:?}")));
        }
        if !accepted_asymmetric(alg) {
            return Err(TokenError::Algorithm(format!("{alg:?}")));
        }
        let kid = kid.ok_or(TokenError::NoKeyId)?;
        if let Some(k) = self.keys.get(&kid) {
            return Ok(KeyNeed::Have(k));
        }
        if self.cfg.key_server.is_some() {
            return Ok(KeyNeed::Fetch(kid));
        }
        Err(TokenError::UnknownKey(kid))
    }

    /// Check the signature with `key` and the claims at `now` (seconds since the epoch).
    /// `tenant`: the session's tenant (`/<tenant>/<room>` URLs), also accepted as `sub`.
    pub fn verify(
        &self,
        token: &str,
        key: &DecodingKey,
        now: u64,
        tenant: Option<&str>,
    ) -> Result<TokenIdentity, TokenError> {
        let (alg, _) = header(token)?;
        let mut v = Validation::new(alg);
        // The claims are checked below, with the time as input.
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        let data = jsonwebtoken::decode::<Value>(token, key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature
                | K::InvalidEcdsaKey
                | K::InvalidRsaKey(_)
                | K::InvalidKeyFormat => TokenError::BadSignature,
                K::InvalidAlgorithm => TokenError::Algorithm(format!("{alg:?}")),
                _ => TokenError::Malformed,
            }
        })?;
        self.check_claims(&data.claims, now, tenant)
    }

    fn check_claims(
        &self,
        c: &Value,
        now: u64,
        tenant: Option<&str>,
    ) -> Result<TokenIdentity, TokenError> {
        let skew = self.cfg.clock_skew.as_secs();
        let exp = c.get("exp").and_then(Value::as_u64);
        match exp {
            Some(exp) if now > exp.saturating_add(skew) => return Err(TokenError::Expired),
            Some(_) => {}
            None => return Err(TokenError::Expired),
        }
        if let Some(nbf) = c.get("nbf").and_then(Value::as_u64)
            && now.saturating_add(skew) < nbf
        {
            return Err(TokenError::NotYetValid);
        }
        let iss = c.get("iss").and_then(Value::as_str);
        if !accepts(&self.cfg.accepted_issuers, iss) {
            return Err(TokenError::WrongIssuer);
        }
        let aud_ok = match c.get("aud") {
            Some(Value::Array(a)) => a
                .iter()
                .any(|x| accepts(&self.cfg.accepted_audiences, x.as_str())),
            other => accepts(&self.cfg.accepted_audiences, other.and_then(Value::as_str)),
        };
        if !aud_ok {
            return Err(TokenError::WrongAudience);
        }
        if !self.cfg.accepted_subjects.is_empty() {
            let sub = c.get("sub").and_then(Value::as_str).map(str::to_lowercase);
            let ok = match sub.as_deref() {
                Some("*") => true,
                Some(s) => {
                    self.cfg
                        .accepted_subjects
                        .iter()
                        .any(|a| a.eq_ignore_ascii_case(s))
                        || tenant.is_some_and(|t| t.eq_ignore_ascii_case(s))
                }
                None => false,
            };
            if !ok {
                return Err(TokenError::WrongSubject);
            }
        }
        let room = c.get("room").and_then(Value::as_str).map(normalize_room);
        if self.cfg.require_room && room.as_deref().is_none_or(str::is_empty) {
            return Err(TokenError::NoRoom);
        }
        let context = c.get("context");
        let user = context.and_then(|x| x.get("user"));
        let text = |v: Option<&Value>, k: &str| {
            v.and_then(|v| v.get(k))
                .and_then(|s| match s {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .filter(|s| !s.is_empty())
                .map(|s| s.chars().take(MAX_FIELD_CHARS).collect::<String>())
        };
        let truthy = |v: Option<&Value>| {
            matches!(v, Some(Value::Bool(true))) || v.and_then(Value::as_str) == Some("true")
        };
        let affiliation = user
            .and_then(|u| u.get("affiliation"))
            .and_then(Value::as_str)
            .map(str::to_lowercase);
        let moderator = truthy(c.get("moderator"))
            || truthy(user.and_then(|u| u.get("moderator")))
            || matches!(
                affiliation.as_deref(),
                Some("owner" | "moderator" | "teacher")
            );
        let features = context
            .and_then(|x| x.get("features"))
            .and_then(Value::as_object)
            .map(|f| {
                f.iter()
                    .take(MAX_FEATURES)
                    .map(|(k, v)| (k.clone(), truthy(Some(v))))
                    .collect()
            });
        Ok(TokenIdentity {
            room,
            user: TokenUser {
                id: text(user, "id"),
                name: text(user, "name"),
                email: text(user, "email"),
                avatar: text(user, "avatar"),
            },
            group: text(context, "group"),
            moderator,
            features,
            expires: exp,
        })
    }
}

/// Longest name, e-mail, avatar URL kept from a token.
const MAX_FIELD_CHARS: usize = 512;
const MAX_FEATURES: usize = 32;

fn accepts(allowed: &[String], v: Option<&str>) -> bool {
    allowed.iter().any(|a| a == "*") || v.is_some_and(|v| allowed.iter().any(|a| a == v))
}

/// An RSA or EC public key from PEM (the crate tells the two apart by the key's OID).
fn public_key(pem: &[u8]) -> Option<DecodingKey> {
    DecodingKey::from_rsa_pem(pem)
        .or_else(|_| DecodingKey::from_ec_pem(pem))
        .ok()
}

/// The key server's address of a key id: `<base>/<sha256-hex(kid)>.pem`.
pub fn key_url(base: &str, kid: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, kid.as_bytes());
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{}/{hex}.pem", base.trim_end_matches('/'))
}

/// Largest key file read from a key server.
const MAX_KEY_BYTES: usize = 16 * 1024;

/// Verifies tokens, fetching public keys from the key server when needed; fetched keys are
/// cached (bounded, for `key_cache_ttl`).
pub struct TokenAuthority {
    verifier: TokenVerifier,
    cache: Mutex<KeyCache>,
    http: Option<reqwest::Client>,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, (Arc<DecodingKey>, Instant)>,
    order: VecDeque<String>,
}

impl KeyCache {
    fn get(&self, kid: &str, ttl: Duration, now: Instant) -> Option<Arc<DecodingKey>> {
        self.keys
            .get(kid)
            .filter(|(_, at)| now.duration_since(*at) < ttl)
            .map(|(k, _)| k.clone())
    }

    fn put(&mut self, kid: String, key: Arc<DecodingKey>, now: Instant, cap: usize) {
        if self.keys.insert(kid.clone(), (key, now)).is_none() {
            self.order.push_back(kid);
        }
        while self.keys.len() > cap.max(1) {
            match self.order.pop_front() {
                Some(old) => {
                    self.keys.remove(&old);
                }
                None => break,
            }
        }
    }
}

impl fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAuthority").finish_non_exhaustive()
    }
}

impl TokenAuthority {
    pub fn new(cfg: TokenConfig) -> Result<TokenAuthority, String> {
        let http = match &cfg.key_server {
            Some(_) => Some(
                reqwest::Client::builder()
                    .timeout(cfg.key_fetch_timeout.max(Duration::from_millis(100)))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| format!("key server client: {e}"))?,
            ),
            None => None,
        };
        Ok(TokenAuthority {
            verifier: TokenVerifier::new(cfg)?,
            cache: Mutex::new(KeyCache::default()),
            http,
        })
    }

    /// Verify `token` now; `tenant` as in [`TokenVerifier::verify`].
    pub async fn verify(
        &self,
        token: &str,
        tenant: Option<&str>,
    ) -> Result<TokenIdentity, TokenError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let kid = match self.verifier.key_for(token)? {
            KeyNeed::Have(k) => return self.verifier.verify(token, k, now, tenant),
            KeyNeed::Fetch(kid) => kid,
        };
        let key = self.fetched_key(&kid).await?;
        self.verifier.verify(token, &key, now, tenant)
    }

    async fn fetched_key(&self, kid: &str) -> Result<Arc<DecodingKey>, TokenError> {
        let cfg = &self.verifier.cfg;
        if let Some(k) = self
            .cache
            .lock()
            .get(kid, cfg.key_cache_ttl, Instant::now())
        {
            return Ok(k);
        }
        let (Some(base), Some(http)) = (&cfg.key_server, &self.http) else {
            return Err(TokenError::UnknownKey(kid.to_string()));
        };
        let url = key_url(base, kid);
        let fail = |m: String| TokenError::KeyServer(m);
        let mut resp = http
            .get(&url)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(if resp.status() == reqwest::StatusCode::NOT_FOUND {
                TokenError::UnknownKey(kid.to_string())
            } else {
                fail(format!("HTTP {}", resp.status()))
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
            if body.len() + chunk.len() > MAX_KEY_BYTES {
                return Err(fail("key too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        let key = Arc::new(public_key(&body).ok_or_else(|| fail("not a PEM public key".into()))?);
        self.cache.lock().put(
            kid.to_string(),
            key.clone(),
            Instant::now(),
            cfg.key_cache_size,
        );
        Ok(key)
    }
}

/// What verified tokens said, by the session's full JID; bounded by the sessions.
#[derive(Default)]
pub struct Identities(Mutex<HashMap<String, Arc<TokenIdentity>>>);

impl Identities {
    pub fn set(&self, full_jid: &str, id: Arc<TokenIdentity>) {
        self.0.lock().insert(full_jid.to_string(), id);
    }
    pub fn remove(&self, full_jid: &str) {
        self.0.lock().remove(full_jid);
    }
    pub fn get(&self, full_jid: &str) -> Option<Arc<TokenIdentity>> {
        self.0.lock().get(full_jid).cloned()
    }
}

#[cfg(test)]
mod tests;
