use super::*;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

const NOW: u64 = 1_800_000_000;
const SECRET: &str = "moodle-shared-secret";

fn cfg() -> TokenConfig {
    TokenConfig {
        app_secret: Some(SECRET.into()),
        accepted_issuers: vec!["moodle".into()],
        accepted_audiences: vec!["jitsi".into()],
        accepted_subjects: vec!["meet.example.org".into()],
        clock_skew: Duration::from_secs(60),
        require_room: true,
        key_cache_size: 2,
        key_cache_ttl: Duration::from_secs(3600),
        ..TokenConfig::default()
    }
}

/// The token mod_jitsi signs for a user of a session.
fn moodle_claims(room: &str, moderator: bool) -> Value {
    json!({
        "context": {
            "user": {
                "affiliation": if moderator { "owner" } else { "member" },
                "avatar": "https://moodle.example.org/pic.png",
                "name": "Ada Lovelace",
                "email": "ada@example.org",
                "id": "",
                "moderator": moderator,
            },
            "group": "",
        },
        "aud": "jitsi",
        "iss": "moodle",
        "sub": "meet.example.org",
        "room": room,
        "exp": NOW + 3600,
        "moderator": moderator,
    })
}

fn hs256(claims: &Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("jitsi/custom_key_name".into());
    encode(
        &h,
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn check(v: &TokenVerifier, token: &str) -> Result<TokenIdentity, TokenError> {
    match v.key_for(token)? {
        KeyNeed::Have(k) => v.verify(token, k, NOW, None),
        KeyNeed::Fetch(kid) => Err(TokenError::UnknownKey(kid)),
    }
}

#[test]
fn a_moodle_token_gives_name_avatar_and_role() {
    let v = TokenVerifier::new(cfg()).unwrap();
    let t = check(&v, &hs256(&moodle_claims("Physics%20101", true))).unwrap();
    assert!(t.moderator);
    assert_eq!(t.user.name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(
        t.user.avatar.as_deref(),
        Some("https://moodle.example.org/pic.png")
    );
    assert_eq!(t.user.id, None);
    assert_eq!(t.group, None);
    assert!(t.allows_room("physics%20101"));
    assert!(t.allows_room("PHYSICS 101"));
    assert!(!t.allows_room("physics102"));
    let s = check(&v, &hs256(&moodle_claims("physics", false))).unwrap();
    assert!(!s.moderator);
    assert_eq!(s.feature("recording"), None);
}

#[test]
fn moderator_from_any_of_the_stock_claims() {
    let v = TokenVerifier::new(cfg()).unwrap();
    let base = |user: Value, top: Option<Value>| {
        let mut c = moodle_claims("r", false);
        c["context"]["user"] = user;
        match top {
            Some(t) => c["moderator"] = t,
            None => {
                c.as_object_mut().unwrap().remove("moderator");
            }
        }
        check(&v, &hs256(&c)).unwrap().moderator
    };
    assert!(base(json!({"moderator": "true"}), None));
    assert!(base(json!({"moderator": true}), None));
    assert!(base(json!({"affiliation": "moderator"}), None));
    assert!(base(json!({"affiliation": "Owner"}), None));
    assert!(base(json!({}), Some(json!(true))));
    assert!(!base(json!({"affiliation": "member"}), None));
    assert!(!base(json!({"moderator": "yes"}), Some(json!(false))));
}

#[test]
fn features_grant_only_what_they_name() {
    let v = TokenVerifier::new(cfg()).unwrap();
    let mut c = moodle_claims("*", false);
    c["context"]["features"] = json!({"recording": "true", "livestreaming": false});
    let t = check(&v, &hs256(&c)).unwrap();
    assert_eq!(t.feature("recording"), Some(true));
    assert_eq!(t.feature("livestreaming"), Some(false));
    assert_eq!(t.feature("outbound-call"), Some(false));
    assert!(t.allows_room("anything"));
}

#[test]
fn bad_tokens_are_refused_with_their_reason() {
    let v = TokenVerifier::new(cfg()).unwrap();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = moodle_claims("r", false);
        f(&mut c);
        check(&v, &hs256(&c)).unwrap_err()
    };
    assert_eq!(with(&|c| c["exp"] = json!(NOW - 61)), TokenError::Expired);
    // Within the clock skew.
    let mut c = moodle_claims("r", false);
    c["exp"] = json!(NOW - 30);
    assert!(check(&v, &hs256(&c)).is_ok());
    assert_eq!(
        with(&|c| {
            c.as_object_mut().unwrap().remove("exp");
        }),
        TokenError::Expired
    );
    assert_eq!(
        with(&|c| c["nbf"] = json!(NOW + 120)),
        TokenError::NotYetValid
    );
    assert_eq!(
        with(&|c| c["aud"] = json!("other")),
        TokenError::WrongAudience
    );
    assert_eq!(
        with(&|c| c["iss"] = json!("mallory")),
        TokenError::WrongIssuer
    );
    assert_eq!(
        with(&|c| {
            c.as_object_mut().unwrap().remove("iss");
        }),
        TokenError::WrongIssuer
    );
    assert_eq!(
        with(&|c| c["sub"] = json!("evil.example")),
        TokenError::WrongSubject
    );
    assert_eq!(with(&|c| c["room"] = json!("")), TokenError::NoRoom);
    // Audience lists, subject wildcard and the session's tenant.
    let mut c = moodle_claims("r", false);
    c["aud"] = json!(["x", "jitsi"]);
    c["sub"] = json!("*");
    assert!(check(&v, &hs256(&c)).is_ok());
    c["sub"] = json!("Faculty");
    let t = hs256(&c);
    let KeyNeed::Have(k) = v.key_for(&t).unwrap() else {
        panic!()
    };
    assert!(v.verify(&t, k, NOW, Some("faculty")).is_ok());
    assert_eq!(v.verify(&t, k, NOW, None), Err(TokenError::WrongSubject));

    // Signed with another secret.
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &moodle_claims("r", true),
        &EncodingKey::from_secret(b"guess").unwrap(),
    )
    .unwrap();
    assert_eq!(check(&v, &forged), Err(TokenError::BadSignature));
    // Payload swapped under a valid signature.
    let good = hs256(&moodle_claims("r", false));
    let evil = hs256(&moodle_claims("r", true));
    let parts: Vec<&str> = good.split('.').collect();
    let evil_payload = evil.split('.').nth(1).unwrap();
    let spliced = format!("{}.{}.{}", parts[0], evil_payload, parts[2]);
    assert_eq!(check(&v, &spliced), Err(TokenError::BadSignature));
}

#[test]
fn unsigned_and_garbage_tokens_are_refused() {
    use base64::Engine;
    let v = TokenVerifier::new(cfg()).unwrap();
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&moodle_claims("r", true).to_string())
    );
    assert_eq!(check(&v, &none), Err(TokenError::Algorithm("none".into())));
    for junk in [
        "",
        "abc",
        "a.b.c",
        "....",
        "eyJhbGciOiJIUzI1NiJ9..",
        "\u{0}.\u{1}.\u{2}",
    ] {
        assert!(check(&v, junk).is_err(), "{junk:?}");
    }
    // An HS256 token when no secret is configured.
    let v = TokenVerifier::new(TokenConfig {
        app_secret: None,
        ..cfg()
    })
    .unwrap();
    assert!(matches!(
        check(&v, &hs256(&moodle_claims("r", false))),
        Err(TokenError::Algorithm(_))
    ));
}

/// A public key signed tokens are checked with, as the key server or a key file has it.
fn asym(alg: &'static rcgen::SignatureAlgorithm) -> (EncodingKey, Vec<u8>) {
    let kp = rcgen::KeyPair::generate_for(alg).unwrap();
    let private = kp.serialize_pem();
    let enc = if alg == &rcgen::PKCS_RSA_SHA256 {
        EncodingKey::from_rsa_pem(private.as_bytes()).unwrap()
    } else {
        EncodingKey::from_ec_pem(private.as_bytes()).unwrap()
    };
    (enc, kp.public_key_pem().into_bytes())
}

#[test]
fn rs256_and_es256_with_configured_keys() {
    let (rsa, rsa_pub) = asym(&rcgen::PKCS_RSA_SHA256);
    let (ec, ec_pub) = asym(&rcgen::PKCS_ECDSA_P256_SHA256);
    let v = TokenVerifier::new(TokenConfig {
        public_keys: vec![("rsa-1".into(), rsa_pub), ("ec-1".into(), ec_pub)],
        ..cfg()
    })
    .unwrap();
    let sign = |alg, kid: Option<&str>, key: &EncodingKey| {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_string);
        encode(&h, &moodle_claims("r", true), key).unwrap()
    };
    assert!(
        check(&v, &sign(Algorithm::RS256, Some("rsa-1"), &rsa))
            .unwrap()
            .moderator
    );
    assert!(check(&v, &sign(Algorithm::ES256, Some("ec-1"), &ec)).is_ok());
    // The wrong key for the kid, no kid, an unknown kid.
    assert_eq!(
        check(&v, &sign(Algorithm::RS256, Some("ec-1"), &rsa)),
        Err(TokenError::BadSignature)
    );
    assert_eq!(
        check(&v, &sign(Algorithm::RS256, None, &rsa)),
        Err(TokenError::NoKeyId)
    );
    assert_eq!(
        check(&v, &sign(Algorithm::ES256, Some("nope"), &ec)),
        Err(TokenError::UnknownKey("nope".into()))
    );
    // With a key server, an unknown kid is fetched.
    let v = TokenVerifier::new(TokenConfig {
        key_server: Some("http://keys.example".into()),
        ..cfg()
    })
    .unwrap();
    assert!(matches!(
        v.key_for(&sign(Algorithm::RS256, Some("k"), &rsa)),
        Ok(KeyNeed::Fetch(k)) if k == "k"
    ));
    // An RS256 token signed with the HS256 secret as an "RSA key" is not an HMAC token.
    let confused = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("rsa-1".into());
        encode(
            &h,
            &moodle_claims("r", true),
            &EncodingKey::from_secret(b"x").unwrap(),
        )
        .unwrap()
    };
    assert_eq!(check(&v, &confused), Err(TokenError::BadSignature));
}

#[test]
fn key_server_urls_and_the_key_cache() {
    // sha256("jitsi/key1"), as `printf jitsi/key1 | sha256sum` prints it.
    let url = key_url("https://keys.example/asap/", "jitsi/key1");
    assert!(url.starts_with("https://keys.example/asap/"), "{url}");
    assert!(url.ends_with(".pem"));
    let hex = &url["https://keys.example/asap/".len()..url.len() - 4];
    assert_eq!(hex.len(), 64);
    assert_eq!(hex, SHA256_OF_KID);
    let mut c = KeyCache::default();
    let k = Arc::new(DecodingKey::from_secret(b"k").unwrap());
    let t0 = Instant::now();
    let ttl = Duration::from_secs(10);
    for kid in ["a", "b", "c"] {
        c.put(kid.into(), k.clone(), t0, 2);
    }
    assert_eq!(c.keys.len(), 2);
    assert!(c.get("a", ttl, t0).is_none());
    assert!(c.get("c", ttl, t0).is_some());
    assert!(c.get("c", ttl, t0 + Duration::from_secs(11)).is_none());
}
const SHA256_OF_KID: &str = "a4f47af805f19769643be8c47d4ffa454e6cbc53ba9e78abd4e1b8b97b4d81af";
