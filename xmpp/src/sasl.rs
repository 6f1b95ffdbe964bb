//! Server side of SASL for XMPP (RFC 6120 §6): ANONYMOUS, PLAIN and SCRAM-SHA-1/-256
//! (RFC 5802, RFC 7677) without channel binding, as a sans-IO state machine.
//! The caller feeds base64-decoded payloads in, acts on each [`Step`] and looks accounts up
//! when asked; only SCRAM credentials are ever stored, never passwords.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::OnceLock;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::{digest, hmac, pbkdf2};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// Largest SASL payload (after base64 decoding) we accept from a peer.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Iteration count for new credentials and for the fake challenges of unknown users.
pub const DEFAULT_ITERATIONS: u32 = 10_000;
/// Salt length for new credentials and fake challenges, so both look alike.
pub const SALT_LEN: usize = 16;
/// Random bytes appended (base64-encoded) to the client nonce.
const NONCE_RANDOM_BYTES: usize = 24;
/// RFC 7622 caps a localpart at 1023 bytes.
const MAX_USERNAME_BYTES: usize = 1023;

/// A SASL mechanism this module implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Anonymous,
    Plain,
    ScramSha1,
    ScramSha256,
}

impl Mechanism {
    /// All mechanisms, strongest first (the order to advertise them in).
    pub const ALL: [Mechanism; 4] = [
        Mechanism::ScramSha256,
        Mechanism::ScramSha1,
        Mechanism::Plain,
        Mechanism::Anonymous,
    ];

    /// The IANA-registered mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Anonymous => "ANONYMOUS",
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
        }
    }

    /// Parses a mechanism name; exact match, since RFC 4422 names are upper case.
    pub fn from_name(s: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == s)
    }

    /// The SCRAM hash of this mechanism, if it is a SCRAM mechanism.
    pub fn scram_hash(self) -> Option<ScramHash> {
        match self {
            Mechanism::ScramSha1 => Some(ScramHash::Sha1),
            Mechanism::ScramSha256 => Some(ScramHash::Sha256),
            Mechanism::Anonymous | Mechanism::Plain => None,
        }
    }
}

/// Decodes the text of an `<auth>` element (RFC 6120 §6.4.2): empty text means no
/// initial response (`None`), "=" a zero-length one (`Some(vec![])`). Surrounding
/// whitespace is ignored; bad base64 is `IncorrectEncoding`, oversize `MalformedRequest`.
pub fn decode_auth_payload(text: &str) -> Result<Option<Vec<u8>>, SaslFailure> {
    match text.trim() {
        "" => Ok(None),
        t => decode_payload(t).map(Some),
    }
}

/// Decodes the text of a `<response>` element: empty text and "=" are both empty data.
pub fn decode_response_payload(text: &str) -> Result<Vec<u8>, SaslFailure> {
    match text.trim() {
        "" => Ok(Vec::new()),
        t => decode_payload(t),
    }
}

fn decode_payload(text: &str) -> Result<Vec<u8>, SaslFailure> {
    if text == "=" {
        return Ok(Vec::new());
    }
    // Refuse before decoding so an oversized payload never gets buffered twice.
    if text.len() > MAX_MESSAGE_BYTES.div_ceil(3) * 4 {
        return Err(SaslFailure::MalformedRequest);
    }
    B64.decode(text).map_err(|_| SaslFailure::IncorrectEncoding)
}

/// Encodes `<challenge>` data. Empty data gives empty text (an empty element); we never
/// produce zero-length `<success>` data, which RFC 6120 §6.4.6 would want as "=".
pub fn encode_payload(data: &[u8]) -> String {
    B64.encode(data)
}

/// Hash function underlying a SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramHash {
    Sha1,
    Sha256,
}

impl ScramHash {
    /// Output length in bytes of the hash (and thus of keys, proofs and signatures).
    pub fn output_len(self) -> usize {
        match self {
            ScramHash::Sha1 => digest::SHA1_OUTPUT_LEN,
            ScramHash::Sha256 => digest::SHA256_OUTPUT_LEN,
        }
    }

    fn digest_alg(self) -> &'static digest::Algorithm {
        match self {
            ScramHash::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            ScramHash::Sha256 => &digest::SHA256,
        }
    }

    fn hmac_alg(self) -> hmac::Algorithm {
        match self {
            ScramHash::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            ScramHash::Sha256 => hmac::HMAC_SHA256,
        }
    }

    fn pbkdf2_alg(self) -> pbkdf2::Algorithm {
        match self {
            ScramHash::Sha1 => pbkdf2::PBKDF2_HMAC_SHA1,
            ScramHash::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        digest::digest(self.digest_alg(), data).as_ref().to_vec()
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        let key = hmac::Key::new(self.hmac_alg(), key);
        hmac::sign(&key, data).as_ref().to_vec()
    }

    /// SaltedPassword := Hi(password, salt, i), wiped by the caller's `Secret`.
    fn salted_password(self, password: &[u8], salt: &[u8], iterations: NonZeroU32) -> Secret {
        let mut out = vec![0u8; self.output_len()];
        pbkdf2::derive(self.pbkdf2_alg(), iterations, salt, password, &mut out);
        Secret(out)
    }

    /// StoredKey := H(HMAC(SaltedPassword, "Client Key")).
    fn stored_key(self, salted: &Secret) -> Vec<u8> {
        let client_key = Secret(self.hmac(&salted.0, b"Client Key"));
        self.hash(&client_key.0)
    }
}

/// What the database stores per account and hash: never the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramCredentials {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl ScramCredentials {
    /// Whether these can be used with `hash`; a bad database row must not panic or
    /// produce a challenge no client could answer.
    fn is_usable(&self, hash: ScramHash) -> bool {
        self.iterations > 0
            && !self.salt.is_empty()
            && self.stored_key.len() == hash.output_len()
            && self.server_key.len() == hash.output_len()
    }
}

/// Both SCRAM credential sets of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCredentials {
    pub sha1: ScramCredentials,
    pub sha256: ScramCredentials,
}

impl StoredCredentials {
    /// The set for `hash`.
    pub fn for_hash(&self, hash: ScramHash) -> &ScramCredentials {
        match hash {
            ScramHash::Sha1 => &self.sha1,
            ScramHash::Sha256 => &self.sha256,
        }
    }
}

/// Derives both SCRAM credential sets from a password, each with a fresh random
/// [`SALT_LEN`]-byte salt. The password is used as its UTF-8 bytes (no SASLprep).
pub fn derive_credentials(password: &str, iterations: u32) -> StoredCredentials {
    StoredCredentials {
        sha1: derive_scram(ScramHash::Sha1, password, &random_salt(), iterations),
        sha256: derive_scram(ScramHash::Sha256, password, &random_salt(), iterations),
    }
}

/// Deterministic credential derivation (RFC 5802 §3). An iteration count of 0 is
/// raised to 1, since SCRAM requires at least one.
pub fn derive_scram(
    hash: ScramHash,
    password: &str,
    salt: &[u8],
    iterations: u32,
) -> ScramCredentials {
    let iterations = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    let salted = hash.salted_password(password.as_bytes(), salt, iterations);
    ScramCredentials {
        iterations: iterations.get(),
        salt: salt.to_vec(),
        stored_key: hash.stored_key(&salted),
        server_key: hash.hmac(&salted.0, b"Server Key"),
    }
}

fn random_salt() -> Vec<u8> {
    let mut salt = vec![0u8; SALT_LEN];
    if SystemRandom::new().fill(&mut salt).is_err() {
        // A salt only has to be unique, not secret; a v4 UUID is 122 random bits and
        // spares us a panic or a Result in an API that cannot really fail.
        salt.copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    salt
}

/// Key for the fake challenges sent for unknown users.
static UNKNOWN_USER_KEY: OnceLock<hmac::Key> = OnceLock::new();

/// Sets the secret from which fake salts for unknown users are derived. Call it once at
/// startup with a persistent secret (e.g. from the configuration): with the default
/// per-process random secret a fake salt changes on restart while a real one does not,
/// which reveals to a patient observer that the account does not exist.
/// Returns false if a secret was already set (or already used) and was kept.
pub fn set_unknown_user_secret(secret: &[u8]) -> bool {
    let mut fresh = false;
    UNKNOWN_USER_KEY.get_or_init(|| {
        fresh = true;
        hmac::Key::new(hmac::HMAC_SHA256, secret)
    });
    fresh
}

fn unknown_user_key() -> &'static hmac::Key {
    UNKNOWN_USER_KEY.get_or_init(|| {
        let mut secret = [0u8; 32];
        if SystemRandom::new().fill(&mut secret).is_err() {
            secret[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            secret[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        }
        hmac::Key::new(hmac::HMAC_SHA256, &secret)
    })
}

/// Credentials for a nonexistent account: the same shape as real ones and stable per
/// username, so the challenge does not tell whether the account exists.
fn fake_credentials(hash: ScramHash, username: &str) -> ScramCredentials {
    let derive = |label: &str, len: usize| -> Vec<u8> {
        let mut ctx = hmac::Context::with_key(unknown_user_key());
        ctx.update(label.as_bytes());
        ctx.update(&[0]);
        ctx.update(username.as_bytes());
        let tag = ctx.sign();
        let mut out = tag.as_ref().to_vec();
        out.resize(len, 0);
        out
    };
    let prefix = match hash {
        ScramHash::Sha1 => "sha1",
        ScramHash::Sha256 => "sha256",
    };
    ScramCredentials {
        iterations: DEFAULT_ITERATIONS,
        salt: derive(&format!("{prefix} salt"), SALT_LEN),
        stored_key: derive(&format!("{prefix} stored"), hash.output_len()),
        server_key: derive(&format!("{prefix} server"), hash.output_len()),
    }
}

/// Bytes wiped on drop (best effort: passwords and salted passwords).
struct Secret(Vec<u8>);

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.fill(0);
        // Keeps the compiler from eliding the writes to memory about to be freed.
        std::hint::black_box(&self.0);
    }
}

/// RFC 6120 §6.5 failure conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslFailure {
    Aborted,
    IncorrectEncoding,
    InvalidMechanism,
    MalformedRequest,
    NotAuthorized,
    TemporaryAuthFailure,
    MechanismTooWeak,
}

impl SaslFailure {
    /// Element name of the condition inside `<failure/>`.
    pub fn condition(&self) -> &'static str {
        match self {
            SaslFailure::Aborted => "aborted",
            SaslFailure::IncorrectEncoding => "incorrect-encoding",
            SaslFailure::InvalidMechanism => "invalid-mechanism",
            SaslFailure::MalformedRequest => "malformed-request",
            SaslFailure::NotAuthorized => "not-authorized",
            SaslFailure::TemporaryAuthFailure => "temporary-auth-failure",
            SaslFailure::MechanismTooWeak => "mechanism-too-weak",
        }
    }
}

impl fmt::Display for SaslFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.condition())
    }
}

/// What the caller must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send `<challenge>` with these bytes (caller base64-encodes; empty → "=").
    Challenge(Vec<u8>),
    /// Look up the account with this localpart and call [`SaslServer::credentials`].
    /// The name is non-empty, valid UTF-8, free of control characters and at most
    /// 1023 bytes; it is not otherwise normalised (no SASLprep/nodeprep).
    NeedCredentials { username: String },
    /// Authentication done. `username` is None for ANONYMOUS. `additional_data` goes
    /// into `<success>` (SCRAM server-final "v=...").
    Success {
        username: Option<String>,
        additional_data: Option<Vec<u8>>,
    },
    /// Send `<failure>` with this condition; the exchange is over.
    Failure(SaslFailure),
}

/// Where the exchange stands.
enum State {
    /// Sent an empty challenge; waiting for the PLAIN message.
    PlainMessage,
    /// Asked for `username`'s credentials to check this password.
    PlainCredentials { username: String, password: Secret },
    /// Sent an empty challenge; waiting for client-first.
    ScramClientFirst { hash: ScramHash },
    /// Asked for `username`'s credentials to build server-first.
    ScramCredentials { hash: ScramHash, first: ClientFirst },
    /// Sent server-first; waiting for client-final.
    ScramClientFinal {
        hash: ScramHash,
        first: ClientFirst,
        server_first: String,
        nonce: String,
        creds: ScramCredentials,
        /// False when `creds` are fake: the proof must fail whatever it is.
        known: bool,
    },
    /// Success or failure was returned; everything else is out of order.
    Done,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::PlainMessage => "PlainMessage",
            State::PlainCredentials { .. } => "PlainCredentials",
            State::ScramClientFirst { .. } => "ScramClientFirst",
            State::ScramCredentials { .. } => "ScramCredentials",
            State::ScramClientFinal { .. } => "ScramClientFinal",
            State::Done => "Done",
        }
    }
}

/// Parsed SCRAM client-first message.
struct ClientFirst {
    /// "n,," / "y,," / "n,a=...," exactly as sent; echoed in client-final's "c=".
    gs2_header: String,
    /// client-first-message-bare, part of AuthMessage.
    bare: String,
    username: String,
    client_nonce: String,
}

/// One SASL exchange on the server side. Sans-IO: the caller looks up the account in its
/// database when asked.
pub struct SaslServer {
    mechanism: Mechanism,
    state: State,
    /// Replaces the random part of the server nonce; only set by test constructors.
    fixed_nonce_suffix: Option<String>,
}

impl fmt::Debug for SaslServer {
    // Manual so that passwords and keys never end up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslServer")
            .field("mechanism", &self.mechanism)
            .field("state", &self.state.name())
            .finish()
    }
}

impl SaslServer {
    /// Starts an exchange. `initial` is the decoded initial response if the `<auth>`
    /// element had one: `None` when its text was empty, `Some(b"")` when it was "=".
    /// ANONYMOUS succeeds at once (the trace payload is ignored); the caller decides
    /// whether ANONYMOUS and PLAIN are offered at all (e.g. PLAIN only over TLS).
    pub fn start(mech: Mechanism, initial: Option<&[u8]>) -> (SaslServer, Step) {
        let mut server = SaslServer {
            mechanism: mech,
            state: State::Done,
            fixed_nonce_suffix: None,
        };
        let step = server.begin(initial);
        (server, step)
    }

    #[cfg(test)]
    fn start_with_nonce(
        mech: Mechanism,
        initial: Option<&[u8]>,
        nonce_suffix: &str,
    ) -> (SaslServer, Step) {
        let mut server = SaslServer {
            mechanism: mech,
            state: State::Done,
            fixed_nonce_suffix: Some(nonce_suffix.to_owned()),
        };
        let step = server.begin(initial);
        (server, step)
    }

    fn begin(&mut self, initial: Option<&[u8]>) -> Step {
        self.state = match (self.mechanism, self.mechanism.scram_hash()) {
            (Mechanism::Anonymous, _) => {
                return Step::Success {
                    username: None,
                    additional_data: None,
                };
            }
            (_, Some(hash)) => State::ScramClientFirst { hash },
            (_, None) => State::PlainMessage,
        };
        // Both PLAIN and SCRAM are client-first: without an initial response, an empty
        // challenge asks for it (RFC 6120 §6.4.2).
        match initial {
            Some(data) => self.response(data),
            None => Step::Challenge(Vec::new()),
        }
    }

    /// The mechanism of this exchange.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// True once a `Success` or `Failure` has been returned.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The client sent `<abort/>`: ends the exchange with `Failure(Aborted)`.
    pub fn abort(&mut self) -> Step {
        self.fail(SaslFailure::Aborted)
    }

    /// Client `<response>` payload (already base64-decoded; "=" is an empty payload).
    pub fn response(&mut self, data: &[u8]) -> Step {
        if data.len() > MAX_MESSAGE_BYTES {
            return self.fail(SaslFailure::MalformedRequest);
        }
        match std::mem::replace(&mut self.state, State::Done) {
            State::PlainMessage => match parse_plain(data) {
                Ok((username, password)) => {
                    let step = Step::NeedCredentials {
                        username: username.clone(),
                    };
                    self.state = State::PlainCredentials { username, password };
                    step
                }
                Err(f) => self.fail(f),
            },
            State::ScramClientFirst { hash } => match parse_client_first(data) {
                Ok(first) => {
                    let step = Step::NeedCredentials {
                        username: first.username.clone(),
                    };
                    self.state = State::ScramCredentials { hash, first };
                    step
                }
                Err(f) => self.fail(f),
            },
            State::ScramClientFinal {
                hash,
                first,
                server_first,
                nonce,
                creds,
                known,
            } => match verify_client_final(hash, &first, &server_first, &nonce, &creds, data) {
                Ok(server_signature) if known => {
                    let mut v = b"v=".to_vec();
                    v.extend_from_slice(B64.encode(server_signature).as_bytes());
                    Step::Success {
                        username: Some(first.username),
                        additional_data: Some(v),
                    }
                }
                Ok(_) => self.fail(SaslFailure::NotAuthorized),
                Err(f) => self.fail(f),
            },
            // Waiting for credentials, or finished: a response now is out of order.
            State::PlainCredentials { .. } | State::ScramCredentials { .. } | State::Done => {
                self.fail(SaslFailure::MalformedRequest)
            }
        }
    }

    /// Answer to `NeedCredentials`: `None` means no such user. That still fails with
    /// `NotAuthorized`, but for SCRAM only after the proof, behind a fake challenge.
    /// Unusable stored credentials (zero iterations, empty salt, wrong key lengths)
    /// give `TemporaryAuthFailure`.
    pub fn credentials(&mut self, creds: Option<StoredCredentials>) -> Step {
        match std::mem::replace(&mut self.state, State::Done) {
            State::PlainCredentials { username, password } => {
                let (set, known) = match &creds {
                    Some(c) => (c.sha256.clone(), true),
                    None => (fake_credentials(ScramHash::Sha256, &username), false),
                };
                if !set.is_usable(ScramHash::Sha256) {
                    return self.fail(SaslFailure::TemporaryAuthFailure);
                }
                // Run the key derivation for unknown users too so timing does not tell.
                let ok = verify_password(ScramHash::Sha256, &password.0, &set);
                if ok && known {
                    Step::Success {
                        username: Some(username),
                        additional_data: None,
                    }
                } else {
                    self.fail(SaslFailure::NotAuthorized)
                }
            }
            State::ScramCredentials { hash, first } => {
                let (set, known) = match creds {
                    Some(c) => (c.for_hash(hash).clone(), true),
                    None => (fake_credentials(hash, &first.username), false),
                };
                if !set.is_usable(hash) {
                    return self.fail(SaslFailure::TemporaryAuthFailure);
                }
                let suffix = match &self.fixed_nonce_suffix {
                    Some(s) => s.clone(),
                    None => match random_nonce_suffix() {
                        Some(s) => s,
                        None => return self.fail(SaslFailure::TemporaryAuthFailure),
                    },
                };
                let nonce = format!("{}{}", first.client_nonce, suffix);
                let server_first = format!(
                    "r={},s={},i={}",
                    nonce,
                    B64.encode(&set.salt),
                    set.iterations
                );
                let step = Step::Challenge(server_first.clone().into_bytes());
                self.state = State::ScramClientFinal {
                    hash,
                    first,
                    server_first,
                    nonce,
                    creds: set,
                    known,
                };
                step
            }
            _ => self.fail(SaslFailure::MalformedRequest),
        }
    }

    fn fail(&mut self, failure: SaslFailure) -> Step {
        self.state = State::Done;
        Step::Failure(failure)
    }
}

fn random_nonce_suffix() -> Option<String> {
    let mut bytes = [0u8; NONCE_RANDOM_BYTES];
    SystemRandom::new().fill(&mut bytes).ok()?;
    // Standard base64 never contains ',' so it is a valid SCRAM nonce.
    Some(B64.encode(bytes))
}

/// Whether `password` is the account's, checked against its stored SCRAM-SHA-256 keys as
/// PLAIN is (for sign-in outside XMPP, such as HTTP Basic on protected live streams).
pub fn password_matches(creds: &StoredCredentials, password: &str) -> bool {
    verify_password(ScramHash::Sha256, password.as_bytes(), &creds.sha256)
}

/// Checks a PLAIN password against stored SCRAM credentials by recomputing StoredKey.
fn verify_password(hash: ScramHash, password: &[u8], creds: &ScramCredentials) -> bool {
    let Some(iterations) = NonZeroU32::new(creds.iterations) else {
        return false;
    };
    let salted = hash.salted_password(password, &creds.salt, iterations);
    let stored_key = hash.stored_key(&salted);
    verify_slices_are_equal(&stored_key, &creds.stored_key).is_ok()
}

/// Validates a username (authcid) as the caller will look it up.
fn check_username(name: &str) -> Result<(), SaslFailure> {
    if name.is_empty() || name.len() > MAX_USERNAME_BYTES || name.chars().any(char::is_control) {
        Err(SaslFailure::MalformedRequest)
    } else {
        Ok(())
    }
}

/// An authorization identity is only allowed to name the authenticating user itself,
/// either as the bare localpart or as a JID with that localpart.
fn authzid_allowed(authzid: &str, username: &str) -> bool {
    let local = authzid.split_once('@').map_or(authzid, |(l, _)| l);
    authzid.is_empty() || authzid == username || local == username
}

/// RFC 4616: `[authzid] NUL authcid NUL passwd`.
fn parse_plain(data: &[u8]) -> Result<(String, Secret), SaslFailure> {
    let mut parts = data.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslFailure::MalformedRequest);
    };
    let password = Secret(password.to_vec());
    let authzid = std::str::from_utf8(authzid).map_err(|_| SaslFailure::MalformedRequest)?;
    let authcid = std::str::from_utf8(authcid).map_err(|_| SaslFailure::MalformedRequest)?;
    check_username(authcid)?;
    if password.0.is_empty() {
        return Err(SaslFailure::MalformedRequest);
    }
    if !authzid_allowed(authzid, authcid) {
        return Err(SaslFailure::NotAuthorized);
    }
    Ok((authcid.to_owned(), password))
}

/// Decodes a SCRAM saslname: only "=2C" (',') and "=3D" ('=') escapes exist.
fn decode_saslname(s: &str) -> Result<String, SaslFailure> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('=') {
        out.push_str(rest.get(..pos).ok_or(SaslFailure::MalformedRequest)?);
        let after = rest.get(pos..).ok_or(SaslFailure::MalformedRequest)?;
        if let Some(r) = after.strip_prefix("=2C") {
            out.push(',');
            rest = r;
        } else if let Some(r) = after.strip_prefix("=3D") {
            out.push('=');
            rest = r;
        } else {
            return Err(SaslFailure::MalformedRequest);
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Splits "x=value" into the attribute letter and the value.
fn attribute(part: &str) -> Option<(u8, &str)> {
    let value = part.get(2..)?;
    match part.as_bytes() {
        [name, b'=', ..] if name.is_ascii_alphabetic() => Some((*name, value)),
        _ => None,
    }
}

/// Extensions are `ALPHA "=" value`; we understand none, so we only check the shape.
fn check_extensions<'a>(parts: impl Iterator<Item = &'a str>) -> Result<(), SaslFailure> {
    for part in parts {
        attribute(part).ok_or(SaslFailure::MalformedRequest)?;
    }
    Ok(())
}

/// RFC 5802 nonce: printable ASCII except ','.
fn valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

fn parse_client_first(data: &[u8]) -> Result<ClientFirst, SaslFailure> {
    let msg = std::str::from_utf8(data).map_err(|_| SaslFailure::MalformedRequest)?;
    let (flag, rest) = msg.split_once(',').ok_or(SaslFailure::MalformedRequest)?;
    // "p=" would ask for channel binding, which we never offer (no -PLUS); "y" is fine
    // for the same reason: the client merely thinks we cannot do it, and it is right.
    if flag != "n" && flag != "y" {
        return Err(SaslFailure::MalformedRequest);
    }
    let (authz, bare) = rest.split_once(',').ok_or(SaslFailure::MalformedRequest)?;
    let gs2_len = flag.len() + 1 + authz.len() + 1;
    let gs2_header = msg.get(..gs2_len).ok_or(SaslFailure::MalformedRequest)?;
    let authzid = if authz.is_empty() {
        None
    } else {
        let name = authz
            .strip_prefix("a=")
            .ok_or(SaslFailure::MalformedRequest)?;
        let name = decode_saslname(name)?;
        if name.is_empty() {
            return Err(SaslFailure::MalformedRequest);
        }
        Some(name)
    };

    let mut parts = bare.split(',');
    let user_part = parts.next().ok_or(SaslFailure::MalformedRequest)?;
    // "m=" is a reserved mandatory extension: RFC 5802 says fail if we don't know it.
    let username = user_part
        .strip_prefix("n=")
        .ok_or(SaslFailure::MalformedRequest)?;
    let username = decode_saslname(username)?;
    check_username(&username)?;
    let client_nonce = parts
        .next()
        .and_then(|p| p.strip_prefix("r="))
        .ok_or(SaslFailure::MalformedRequest)?;
    if !valid_nonce(client_nonce) {
        return Err(SaslFailure::MalformedRequest);
    }
    check_extensions(parts)?;

    if let Some(authzid) = &authzid
        && !authzid_allowed(authzid, &username)
    {
        return Err(SaslFailure::NotAuthorized);
    }
    Ok(ClientFirst {
        gs2_header: gs2_header.to_owned(),
        bare: bare.to_owned(),
        username,
        client_nonce: client_nonce.to_owned(),
    })
}

/// Checks client-final and returns the ServerSignature. The proof is checked even for
/// fake credentials so an unknown user costs the same work as a wrong password.
fn verify_client_final(
    hash: ScramHash,
    first: &ClientFirst,
    server_first: &str,
    nonce: &str,
    creds: &ScramCredentials,
    data: &[u8],
) -> Result<Vec<u8>, SaslFailure> {
    let msg = std::str::from_utf8(data).map_err(|_| SaslFailure::MalformedRequest)?;
    // The proof is always the last attribute, and values never contain ','.
    let (without_proof, proof_part) = msg.rsplit_once(',').ok_or(SaslFailure::MalformedRequest)?;
    let proof = proof_part
        .strip_prefix("p=")
        .ok_or(SaslFailure::MalformedRequest)?;
    let proof = B64
        .decode(proof)
        .map_err(|_| SaslFailure::MalformedRequest)?;
    if proof.len() != hash.output_len() {
        return Err(SaslFailure::MalformedRequest);
    }

    let mut parts = without_proof.split(',');
    let binding = parts
        .next()
        .and_then(|p| p.strip_prefix("c="))
        .ok_or(SaslFailure::MalformedRequest)?;
    let client_nonce = parts
        .next()
        .and_then(|p| p.strip_prefix("r="))
        .ok_or(SaslFailure::MalformedRequest)?;
    check_extensions(parts)?;
    // Without channel binding "c=" is just the GS2 header echoed back; a mismatch means
    // the header was tampered with (e.g. a downgrade), so refuse.
    if binding != B64.encode(first.gs2_header.as_bytes()) {
        return Err(SaslFailure::NotAuthorized);
    }
    if client_nonce != nonce {
        return Err(SaslFailure::NotAuthorized);
    }

    let auth_message = format!("{},{},{}", first.bare, server_first, without_proof);
    let client_signature = hash.hmac(&creds.stored_key, auth_message.as_bytes());
    let client_key = Secret(
        proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect(),
    );
    let stored_key = hash.hash(&client_key.0);
    verify_slices_are_equal(&stored_key, &creds.stored_key)
        .map_err(|_| SaslFailure::NotAuthorized)?;
    Ok(hash.hmac(&creds.server_key, auth_message.as_bytes()))
}

/// The client side of SCRAM (RFC 5802), for meetd's own logins to an XMPP server (a
/// bridge-only meetd logging in to the XMPP server of its focus). No channel binding.
pub struct ScramClient {
    hash: ScramHash,
    password: String,
    client_first_bare: String,
    nonce: String,
    server_signature: Option<Vec<u8>>,
}

impl ScramClient {
    /// `nonce`: fresh printable randomness (no ',').
    pub fn new(hash: ScramHash, username: &str, password: &str, nonce: &str) -> ScramClient {
        let name = username.replace('=', "=3D").replace(',', "=2C");
        ScramClient {
            hash,
            password: password.to_string(),
            client_first_bare: format!("n={name},r={nonce}"),
            nonce: nonce.to_string(),
            server_signature: None,
        }
    }

    /// client-first-message.
    pub fn first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// client-final-message for the server's challenge `server_first`.
    pub fn answer(&mut self, server_first: &str) -> Result<String, SaslFailure> {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for part in server_first.split(',') {
            match part.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = B64.decode(v).ok(),
                Some(("i", v)) => iterations = v.parse::<u32>().ok().and_then(NonZeroU32::new),
                _ => {}
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err(SaslFailure::MalformedRequest);
        };
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(SaslFailure::NotAuthorized);
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let h = self.hash;
        let salted = h.salted_password(self.password.as_bytes(), &salt, iterations);
        let client_key = Secret(h.hmac(&salted.0, b"Client Key"));
        let signature = h.hmac(&h.hash(&client_key.0), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .0
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = Secret(h.hmac(&salted.0, b"Server Key"));
        self.server_signature = Some(h.hmac(&server_key.0, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Whether the server's final message proves it knew the credentials too.
    pub fn verify(&self, server_final: &str) -> bool {
        let Some(expected) = &self.server_signature else {
            return false;
        };
        server_final
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v).ok())
            .is_some_and(|v| verify_slices_are_equal(&v, expected).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> Vec<u8> {
        B64.decode(s).unwrap()
    }

    fn challenge(step: Step) -> String {
        match step {
            Step::Challenge(c) => String::from_utf8(c).unwrap(),
            other => panic!("expected challenge, got {other:?}"),
        }
    }

    fn expect_need(step: Step, user: &str) {
        assert_eq!(
            step,
            Step::NeedCredentials {
                username: user.to_owned()
            }
        );
    }

    fn creds_with(hash: ScramHash, set: ScramCredentials) -> StoredCredentials {
        let other = derive_scram(ScramHash::Sha1, "unused", b"unused-salt", 1);
        match hash {
            ScramHash::Sha1 => StoredCredentials {
                sha1: set,
                sha256: other,
            },
            ScramHash::Sha256 => StoredCredentials {
                sha1: other,
                sha256: set,
            },
        }
    }

    /// Runs an RFC test vector exchange and checks every message byte for byte.
    #[allow(clippy::too_many_arguments)]
    fn run_vector(
        mech: Mechanism,
        hash: ScramHash,
        cnonce: &str,
        suffix: &str,
        salt: &str,
        proof: &str,
        verifier: &str,
    ) {
        let creds = derive_scram(hash, "pencil", &b64(salt), 4096);
        let client_first = format!("n,,n=user,r={cnonce}");
        let (mut server, step) = SaslServer::start_with_nonce(mech, None, suffix);
        assert_eq!(challenge(step), "");
        expect_need(server.response(client_first.as_bytes()), "user");
        let server_first = challenge(server.credentials(Some(creds_with(hash, creds))));
        assert_eq!(server_first, format!("r={cnonce}{suffix},s={salt},i=4096"));
        let client_final = format!("c=biws,r={cnonce}{suffix},p={proof}");
        assert_eq!(
            server.response(client_final.as_bytes()),
            Step::Success {
                username: Some("user".into()),
                additional_data: Some(format!("v={verifier}").into_bytes()),
            }
        );
        assert!(server.is_done());
        assert_eq!(
            server.response(b"anything"),
            Step::Failure(SaslFailure::MalformedRequest)
        );
    }

    #[test]
    fn rfc5802_scram_sha1_vector() {
        run_vector(
            Mechanism::ScramSha1,
            ScramHash::Sha1,
            "fyko+d2lbbFgONRv9qkxdawL",
            "3rfcNHYJY1ZVvWVs7j",
            "QSXCR+Q6sek8bf92",
            "v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            "rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        );
    }

    #[test]
    fn rfc7677_scram_sha256_vector() {
        run_vector(
            Mechanism::ScramSha256,
            ScramHash::Sha256,
            "rOprNGfwEbeRWgbNEkqO",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            "W22ZaJ0SNY7soEsUEjb6gQ==",
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        );
    }

    /// Minimal SCRAM client, independent of the server code paths above.
    struct Client {
        hash: ScramHash,
        password: String,
        gs2: String,
        bare: String,
        cnonce: String,
    }

    impl Client {
        fn new(hash: ScramHash, user: &str, password: &str, gs2: &str) -> Client {
            let cnonce = B64.encode(uuid::Uuid::new_v4().as_bytes());
            let escaped = user.replace('=', "=3D").replace(',', "=2C");
            Client {
                hash,
                password: password.into(),
                gs2: gs2.into(),
                bare: format!("n={escaped},r={cnonce}"),
                cnonce,
            }
        }

        fn first(&self) -> Vec<u8> {
            format!("{}{}", self.gs2, self.bare).into_bytes()
        }

        /// Returns client-final and the expected server-final.
        fn last(&self, server_first: &str) -> (Vec<u8>, Vec<u8>) {
            let mut nonce = None;
            let mut salt = None;
            let mut iters = None;
            for part in server_first.split(',') {
                let (k, v) = part.split_at(2);
                match k {
                    "r=" => nonce = Some(v.to_owned()),
                    "s=" => salt = Some(b64(v)),
                    "i=" => iters = Some(v.parse::<u32>().unwrap()),
                    _ => panic!("unexpected attribute {part}"),
                }
            }
            let (nonce, salt, iters) = (nonce.unwrap(), salt.unwrap(), iters.unwrap());
            let h = self.hash;
            let mut salted = vec![0u8; h.output_len()];
            pbkdf2::derive(
                h.pbkdf2_alg(),
                NonZeroU32::new(iters).unwrap(),
                &salt,
                self.password.as_bytes(),
                &mut salted,
            );
            let client_key = h.hmac(&salted, b"Client Key");
            let stored_key = h.hash(&client_key);
            let without_proof = format!("c={},r={nonce}", B64.encode(&self.gs2));
            let auth = format!("{},{server_first},{without_proof}", self.bare);
            let sig = h.hmac(&stored_key, auth.as_bytes());
            let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
            let server_key = h.hmac(&salted, b"Server Key");
            let v = format!("v={}", B64.encode(h.hmac(&server_key, auth.as_bytes())));
            (
                format!("{without_proof},p={}", B64.encode(proof)).into_bytes(),
                v.into_bytes(),
            )
        }
    }

    fn both_hashes() -> [(Mechanism, ScramHash); 2] {
        [
            (Mechanism::ScramSha1, ScramHash::Sha1),
            (Mechanism::ScramSha256, ScramHash::Sha256),
        ]
    }

    #[test]
    fn scram_full_exchange_with_initial_response() {
        let stored = derive_credentials("correct horse", 1000);
        for (mech, hash) in both_hashes() {
            for gs2 in ["n,,", "y,,", "n,a=alice,", "y,a=alice@example.org,"] {
                let client = Client::new(hash, "alice", "correct horse", gs2);
                let (mut server, step) = SaslServer::start(mech, Some(&client.first()));
                expect_need(step, "alice");
                let server_first = challenge(server.credentials(Some(stored.clone())));
                let nonce = server_first.split(',').next().unwrap();
                let suffix = nonce.strip_prefix(&format!("r={}", client.cnonce)).unwrap();
                assert_eq!(b64(suffix).len(), NONCE_RANDOM_BYTES);
                let (client_final, expected_v) = client.last(&server_first);
                assert_eq!(
                    server.response(&client_final),
                    Step::Success {
                        username: Some("alice".into()),
                        additional_data: Some(expected_v),
                    },
                    "{mech:?} {gs2}"
                );
            }
        }
    }

    #[test]
    fn scram_escaped_username() {
        let stored = derive_credentials("pw", 1);
        let client = Client::new(ScramHash::Sha256, "a,b=c", "pw", "n,,");
        assert!(client.bare.starts_with("n=a=2Cb=3Dc,"));
        let (mut server, step) = SaslServer::start(Mechanism::ScramSha256, Some(&client.first()));
        expect_need(step, "a,b=c");
        let server_first = challenge(server.credentials(Some(stored)));
        let (client_final, _) = client.last(&server_first);
        assert!(matches!(
            server.response(&client_final),
            Step::Success { .. }
        ));
    }

    #[test]
    fn scram_wrong_password_fails() {
        let stored = derive_credentials("right", 1000);
        for (mech, hash) in both_hashes() {
            let client = Client::new(hash, "bob", "wrong", "n,,");
            let (mut server, _) = SaslServer::start(mech, Some(&client.first()));
            let server_first = challenge(server.credentials(Some(stored.clone())));
            let (client_final, _) = client.last(&server_first);
            assert_eq!(
                server.response(&client_final),
                Step::Failure(SaslFailure::NotAuthorized)
            );
            assert!(server.is_done());
        }
    }

    #[test]
    fn scram_unknown_user_fails_only_after_proof() {
        for (mech, hash) in both_hashes() {
            let client = Client::new(hash, "ghost", "whatever", "n,,");
            let (mut server, step) = SaslServer::start(mech, Some(&client.first()));
            expect_need(step, "ghost");
            let server_first = challenge(server.credentials(None));
            // Same shape as a real challenge: 16-byte salt, default iterations.
            let salt = server_first.split(",s=").nth(1).unwrap();
            let salt = salt.split(',').next().unwrap();
            assert_eq!(b64(salt).len(), SALT_LEN);
            assert!(server_first.ends_with(&format!(",i={DEFAULT_ITERATIONS}")));
            let (client_final, _) = client.last(&server_first);
            assert_eq!(
                server.response(&client_final),
                Step::Failure(SaslFailure::NotAuthorized)
            );

            // Deterministic per username, different across usernames.
            let again = Client::new(hash, "ghost", "x", "n,,");
            let (mut s2, _) = SaslServer::start(mech, Some(&again.first()));
            let first2 = challenge(s2.credentials(None));
            assert_eq!(first2.split(",s=").nth(1), server_first.split(",s=").nth(1));
            let other = Client::new(hash, "ghost2", "x", "n,,");
            let (mut s3, _) = SaslServer::start(mech, Some(&other.first()));
            let first3 = challenge(s3.credentials(None));
            assert_ne!(first3.split(",s=").nth(1), server_first.split(",s=").nth(1));
        }
    }

    #[test]
    fn scram_rejects_bad_client_first() {
        let cases: &[(&[u8], SaslFailure)] = &[
            (b"", SaslFailure::MalformedRequest),
            (b"p=tls-unique,,n=user,r=abc", SaslFailure::MalformedRequest),
            (b"x,,n=user,r=abc", SaslFailure::MalformedRequest),
            (b"n,,m=ext,n=user,r=abc", SaslFailure::MalformedRequest),
            (b"n,,n=us=2Xer,r=abc", SaslFailure::MalformedRequest),
            (b"n,,n=user=,r=abc", SaslFailure::MalformedRequest),
            (b"n,,n=,r=abc", SaslFailure::MalformedRequest),
            (b"n,,n=user,r=", SaslFailure::MalformedRequest),
            (b"n,,n=user", SaslFailure::MalformedRequest),
            (b"n,,n=user,r=abc,bogus", SaslFailure::MalformedRequest),
            (b"n,,n=us\x01er,r=abc", SaslFailure::MalformedRequest),
            (b"n,,n=\xff,r=abc", SaslFailure::MalformedRequest),
            (b"n,b=x,n=user,r=abc", SaslFailure::MalformedRequest),
            (b"n,a=,n=user,r=abc", SaslFailure::MalformedRequest),
            (b"n,a=mallory,n=user,r=abc", SaslFailure::NotAuthorized),
            (
                b"n,a=mallory@example.org,n=user,r=abc",
                SaslFailure::NotAuthorized,
            ),
        ];
        for (msg, want) in cases {
            let (server, step) = SaslServer::start(Mechanism::ScramSha256, Some(msg));
            assert_eq!(
                step,
                Step::Failure(want.clone()),
                "{:?}",
                msg.escape_ascii()
            );
            assert!(server.is_done());
        }
        // Extensions after the nonce are tolerated.
        let (_, step) = SaslServer::start(Mechanism::ScramSha1, Some(b"n,,n=user,r=abc,x=1"));
        expect_need(step, "user");
    }

    #[test]
    fn scram_rejects_tampered_client_final() {
        let stored = derive_credentials("pw", 1);
        let client = Client::new(ScramHash::Sha256, "carol", "pw", "n,,");
        let setup = || {
            let (mut server, _) = SaslServer::start(Mechanism::ScramSha256, Some(&client.first()));
            let server_first = challenge(server.credentials(Some(stored.clone())));
            (server, server_first)
        };
        let (_, server_first) = setup();
        let (good, _) = client.last(&server_first);
        let good = String::from_utf8(good).unwrap();
        let tampered = [
            (good.replace("c=biws", "c=eSws"), SaslFailure::NotAuthorized),
            (good.replace(",r=", ",r=x"), SaslFailure::NotAuthorized),
            (
                good.replace(",p=", ",p=AAAA"),
                SaslFailure::MalformedRequest,
            ),
            (good.replace(",p=", ",x="), SaslFailure::MalformedRequest),
            (good.replace(",p=", ",p=!"), SaslFailure::MalformedRequest),
            ("garbage".to_owned(), SaslFailure::MalformedRequest),
        ];
        for (msg, want) in tampered {
            let (mut server, sf) = setup();
            // Servers differ only in nonce; rebuild the message for this one.
            let msg = msg.replace(
                server_first.split(',').next().unwrap(),
                sf.split(',').next().unwrap(),
            );
            assert_eq!(
                server.response(msg.as_bytes()),
                Step::Failure(want),
                "{msg}"
            );
        }
        let (mut server, sf) = setup();
        let (good, _) = client.last(&sf);
        assert!(matches!(server.response(&good), Step::Success { .. }));
    }

    #[test]
    fn scram_bad_stored_credentials_are_temporary_failure() {
        let mut stored = derive_credentials("pw", 1);
        stored.sha256.iterations = 0;
        let (mut server, _) = SaslServer::start(Mechanism::ScramSha256, Some(b"n,,n=user,r=abc"));
        assert_eq!(
            server.credentials(Some(stored)),
            Step::Failure(SaslFailure::TemporaryAuthFailure)
        );
        let mut stored = derive_credentials("pw", 1);
        stored.sha1.stored_key.pop();
        let (mut server, _) = SaslServer::start(Mechanism::ScramSha1, Some(b"n,,n=user,r=abc"));
        assert_eq!(
            server.credentials(Some(stored)),
            Step::Failure(SaslFailure::TemporaryAuthFailure)
        );
    }

    #[test]
    fn out_of_order_steps_fail() {
        // Response while waiting for credentials.
        let (mut server, _) = SaslServer::start(Mechanism::ScramSha1, Some(b"n,,n=user,r=abc"));
        assert_eq!(
            server.response(b"c=biws,r=abc,p=AAAA"),
            Step::Failure(SaslFailure::MalformedRequest)
        );
        assert_eq!(
            server.credentials(None),
            Step::Failure(SaslFailure::MalformedRequest)
        );
        // Credentials before any client-first.
        let (mut server, _) = SaslServer::start(Mechanism::ScramSha256, None);
        assert_eq!(
            server.credentials(None),
            Step::Failure(SaslFailure::MalformedRequest)
        );
        // Anything after ANONYMOUS success.
        let (mut server, _) = SaslServer::start(Mechanism::Anonymous, None);
        assert_eq!(
            server.response(b""),
            Step::Failure(SaslFailure::MalformedRequest)
        );
        // Credentials twice for PLAIN.
        let (mut server, _) = SaslServer::start(Mechanism::Plain, Some(b"\0u\0p"));
        assert_eq!(
            server.credentials(None),
            Step::Failure(SaslFailure::NotAuthorized)
        );
        assert_eq!(
            server.credentials(None),
            Step::Failure(SaslFailure::MalformedRequest)
        );
        // Abort.
        let (mut server, _) = SaslServer::start(Mechanism::ScramSha256, None);
        assert_eq!(server.abort(), Step::Failure(SaslFailure::Aborted));
        assert!(server.is_done());
    }

    #[test]
    fn oversized_messages_rejected() {
        let big = vec![b'a'; MAX_MESSAGE_BYTES + 1];
        for mech in [
            Mechanism::Plain,
            Mechanism::ScramSha1,
            Mechanism::ScramSha256,
        ] {
            let (_, step) = SaslServer::start(mech, Some(&big));
            assert_eq!(step, Step::Failure(SaslFailure::MalformedRequest));
        }
    }

    #[test]
    fn password_matches_only_the_accounts_password() {
        let stored = derive_credentials("s3cret", 1000);
        assert!(password_matches(&stored, "s3cret"));
        assert!(!password_matches(&stored, "s3cret "));
        assert!(!password_matches(&stored, ""));
    }

    #[test]
    fn plain_good_password() {
        let stored = derive_credentials("s3cret", 1000);
        for msg in [
            &b"\0dave\0s3cret"[..],
            b"dave\0dave\0s3cret",
            b"dave@example.org\0dave\0s3cret",
            b"dave@example.org/res\0dave\0s3cret",
        ] {
            let (mut server, step) = SaslServer::start(Mechanism::Plain, Some(msg));
            expect_need(step, "dave");
            assert_eq!(
                server.credentials(Some(stored.clone())),
                Step::Success {
                    username: Some("dave".into()),
                    additional_data: None
                }
            );
        }
        // Without initial response: empty challenge first.
        let (mut server, step) = SaslServer::start(Mechanism::Plain, None);
        assert_eq!(step, Step::Challenge(Vec::new()));
        expect_need(server.response(b"\0dave\0s3cret"), "dave");
        assert!(matches!(
            server.credentials(Some(stored)),
            Step::Success { .. }
        ));
    }

    #[test]
    fn plain_bad_password_and_unknown_user() {
        let stored = derive_credentials("s3cret", 1000);
        let (mut server, _) = SaslServer::start(Mechanism::Plain, Some(b"\0dave\0wrong"));
        assert_eq!(
            server.credentials(Some(stored)),
            Step::Failure(SaslFailure::NotAuthorized)
        );
        let (mut server, _) = SaslServer::start(Mechanism::Plain, Some(b"\0nobody\0s3cret"));
        assert_eq!(
            server.credentials(None),
            Step::Failure(SaslFailure::NotAuthorized)
        );
    }

    #[test]
    fn plain_malformed() {
        let cases: &[(&[u8], SaslFailure)] = &[
            (b"", SaslFailure::MalformedRequest),
            (b"dave", SaslFailure::MalformedRequest),
            (b"\0dave", SaslFailure::MalformedRequest),
            (b"\0dave\0pw\0extra", SaslFailure::MalformedRequest),
            (b"\0\0pw", SaslFailure::MalformedRequest),
            (b"\0dave\0", SaslFailure::MalformedRequest),
            (b"\0da\xffve\0pw", SaslFailure::MalformedRequest),
            (b"\0da\nve\0pw", SaslFailure::MalformedRequest),
            (b"eve\0dave\0pw", SaslFailure::NotAuthorized),
            (b"eve@example.org\0dave\0pw", SaslFailure::NotAuthorized),
        ];
        for (msg, want) in cases {
            let (server, step) = SaslServer::start(Mechanism::Plain, Some(msg));
            assert_eq!(
                step,
                Step::Failure(want.clone()),
                "{:?}",
                msg.escape_ascii()
            );
            assert!(server.is_done());
        }
    }

    #[test]
    fn anonymous_succeeds_at_once() {
        for initial in [
            None,
            Some(&b""[..]),
            Some(b"trace@example.org"),
            Some(b"\xff\0"),
        ] {
            let (server, step) = SaslServer::start(Mechanism::Anonymous, initial);
            assert_eq!(
                step,
                Step::Success {
                    username: None,
                    additional_data: None
                }
            );
            assert!(server.is_done());
        }
    }

    #[test]
    fn mechanism_names_and_conditions() {
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(m.name()), Some(m));
        }
        assert_eq!(Mechanism::from_name("SCRAM-SHA-256-PLUS"), None);
        assert_eq!(Mechanism::from_name("plain"), None);
        assert_eq!(SaslFailure::NotAuthorized.condition(), "not-authorized");
        assert_eq!(
            SaslFailure::TemporaryAuthFailure.condition(),
            "temporary-auth-failure"
        );
    }

    #[test]
    fn xmpp_payload_encoding() {
        assert_eq!(decode_auth_payload(""), Ok(None));
        assert_eq!(decode_auth_payload(" \n"), Ok(None));
        assert_eq!(decode_auth_payload("="), Ok(Some(Vec::new())));
        assert_eq!(
            decode_auth_payload("AGRhdmUAczNjcmV0"),
            Ok(Some(b"\0dave\0s3cret".to_vec()))
        );
        assert_eq!(
            decode_auth_payload("not base64!"),
            Err(SaslFailure::IncorrectEncoding)
        );
        assert_eq!(decode_response_payload(""), Ok(Vec::new()));
        assert_eq!(decode_response_payload("="), Ok(Vec::new()));
        assert_eq!(
            decode_response_payload("YmlicA"),
            Err(SaslFailure::IncorrectEncoding)
        );
        let big = "A".repeat(MAX_MESSAGE_BYTES * 2);
        assert_eq!(
            decode_response_payload(&big),
            Err(SaslFailure::MalformedRequest)
        );
        let max = encode_payload(&[7u8; MAX_MESSAGE_BYTES]);
        assert_eq!(
            decode_response_payload(&max).map(|v| v.len()),
            Ok(MAX_MESSAGE_BYTES)
        );
        assert_eq!(encode_payload(b""), "");
        assert_eq!(encode_payload(b"r=abc"), "cj1hYmM=");
    }

    #[test]
    fn derive_credentials_uses_fresh_salts() {
        let a = derive_credentials("pw", 2);
        let b = derive_credentials("pw", 2);
        assert_eq!(a.sha1.salt.len(), SALT_LEN);
        assert_eq!(a.sha256.salt.len(), SALT_LEN);
        assert_ne!(a.sha1.salt, a.sha256.salt);
        assert_ne!(a.sha256.salt, b.sha256.salt);
        assert_eq!(a.sha256.stored_key.len(), 32);
        assert_eq!(a.sha1.server_key.len(), 20);
        // Degenerate inputs must not panic.
        assert_eq!(derive_scram(ScramHash::Sha1, "", b"", 0).iterations, 1);
    }

    /// xorshift64*: deterministic pseudo-random bytes without extra dependencies.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn bytes(&mut self, alphabet: &[u8]) -> Vec<u8> {
            let len = (self.next() % 80) as usize;
            (0..len)
                .map(|_| {
                    let r = self.next();
                    if alphabet.is_empty() {
                        r as u8
                    } else {
                        alphabet[(r % alphabet.len() as u64) as usize]
                    }
                })
                .collect()
        }
    }

    #[test]
    fn fuzzy_inputs_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let alphabets: [&[u8]; 3] = [b"", b"nyp=,ar23CD\0xcm", b"n,=ar"];
        let stored = derive_credentials("pw", 1);
        for i in 0..3000 {
            let alphabet = alphabets[i % alphabets.len()];
            let mech = Mechanism::ALL[i % 4];
            let first = rng.bytes(alphabet);
            let (mut server, step) = SaslServer::start(mech, Some(&first));
            // Drive the exchange with further random input whatever state it is in.
            let creds = if i % 2 == 0 {
                Some(stored.clone())
            } else {
                None
            };
            if matches!(step, Step::NeedCredentials { .. }) {
                let _ = server.credentials(creds.clone());
            }
            let mut fin = b"c=biws,r=".to_vec();
            fin.extend(rng.bytes(alphabet));
            let _ = server.response(&fin);
            let _ = server.response(&rng.bytes(alphabet));
            let _ = server.credentials(creds);
            assert!(server.is_done());
        }
        // Random byte flips in otherwise valid SCRAM exchanges must fail, not panic.
        for i in 0..300 {
            let (mech, hash) = both_hashes()[i % 2];
            let client = Client::new(hash, "user", "pw", "n,,");
            let mut first = client.first();
            let flip_first = i % 3 == 0;
            if flip_first {
                let at = (rng.next() % first.len() as u64) as usize;
                first[at] ^= 1 << (rng.next() % 8);
            }
            let (mut server, step) = SaslServer::start(mech, Some(&first));
            if !matches!(step, Step::NeedCredentials { .. }) {
                assert!(server.is_done());
                continue;
            }
            let Step::Challenge(sf) = server.credentials(Some(stored.clone())) else {
                panic!("no challenge");
            };
            let sf = String::from_utf8(sf).unwrap();
            let (mut fin, _) = client.last(&sf);
            if !flip_first {
                let at = (rng.next() % fin.len() as u64) as usize;
                fin[at] ^= 1 << (rng.next() % 8);
            }
            // A flipped client-first that still parses changes AuthMessage or the
            // user, so the proof cannot match either.
            assert!(matches!(server.response(&fin), Step::Failure(_)), "{i}");
        }
        // Mutations of a valid client-first, e.g. truncations at every byte.
        let valid = b"n,a=user,n=us=2Cer,r=abc,x=y";
        for cut in 0..=valid.len() {
            let _ = SaslServer::start(Mechanism::ScramSha256, Some(&valid[..cut]));
        }
    }

    #[test]
    fn the_scram_client_logs_in_to_the_scram_server() {
        for (mech, hash) in [
            (Mechanism::ScramSha1, ScramHash::Sha1),
            (Mechanism::ScramSha256, ScramHash::Sha256),
        ] {
            let creds = derive_credentials("s3cret", 4096);
            let mut client = ScramClient::new(hash, "jvb", "s3cret", "cnonce123");
            let (mut server, step) = SaslServer::start(mech, Some(client.first().as_bytes()));
            let Step::NeedCredentials { username } = step else {
                panic!("server wants {step:?}")
            };
            assert_eq!(username, "jvb");
            let Step::Challenge(challenge) = server.credentials(Some(creds.clone())) else {
                panic!("no challenge")
            };
            let fin = client
                .answer(std::str::from_utf8(&challenge).unwrap())
                .unwrap();
            let Step::Success {
                additional_data, ..
            } = server.response(fin.as_bytes())
            else {
                panic!("not logged in")
            };
            assert!(client.verify(std::str::from_utf8(&additional_data.unwrap()).unwrap()));
            // A wrong password is refused.
            let mut wrong = ScramClient::new(hash, "jvb", "guess", "cnonce456");
            let (mut server, _) = SaslServer::start(mech, Some(wrong.first().as_bytes()));
            let Step::Challenge(challenge) = server.credentials(Some(creds)) else {
                panic!()
            };
            let fin = wrong
                .answer(std::str::from_utf8(&challenge).unwrap())
                .unwrap();
            assert!(matches!(server.response(fin.as_bytes()), Step::Failure(_)));
            assert!(!wrong.verify("v=AAAA"));
        }
        let mut c = ScramClient::new(ScramHash::Sha1, "a", "b", "n1");
        assert!(
            c.answer("r=other,s=AAAA,i=1").is_err(),
            "the server must extend our nonce"
        );
        assert!(c.answer("garbage").is_err());
    }
}
