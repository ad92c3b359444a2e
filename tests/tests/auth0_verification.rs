//! The token matrix of `../shared/auth0.md` §4.5 against the auth plugin, with a local issuer
//! serving a real JWKS over HTTP and RSA keys generated here. Each case asserts the Ably code a
//! client would see: 40142 expired, 40144 invalid, 40140 keys unavailable.

use std::sync::Arc;
use std::time::Duration;

use auth_plugin::{Auth0Config, AuthPlugin};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tests::issuer::{forge, sign, Behaviour, Issuer, AUDIENCE, CLIENT_ID, KEYS, WEAK};
use tests::now_secs;

struct Setup {
    issuer: Issuer,
    plugin: Arc<AuthPlugin>,
    _dir: tempfile::TempDir,
}

async fn setup(adjust: impl FnOnce(&mut Auth0Config)) -> Setup {
    let issuer = Issuer::start(&[&KEYS[0]]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let mut config = issuer.config();
    adjust(&mut config);
    let plugin = AuthPlugin::start(config, &db).unwrap();
    Setup {
        issuer,
        plugin,
        _dir: dir,
    }
}

async fn code(plugin: &AuthPlugin, token: &str) -> u32 {
    plugin
        .authenticate(token)
        .await
        .expect_err("token must be refused")
        .code
}

#[tokio::test]
async fn valid_tokens_map_to_a_user_and_a_capability() {
    let s = setup(|_| {}).await;
    let claims = s.issuer.claims(
        "auth0|alice",
        json!({"permissions": ["publish:chat:*", "subscribe:*", "admin:users"], "nickname": "alice"}),
    );
    let principal = s
        .plugin
        .authenticate(&sign(&KEYS[0], &claims))
        .await
        .unwrap();
    let user = s
        .plugin
        .users()
        .by_sub("auth0|alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(principal.client_id, user.id);
    assert_eq!(user.username, "alice");
    assert!(principal.admin);
    let cap = &principal.capability;
    assert!(cap.allows("chat:1", protocol::Operation::Publish));
    assert!(!cap.allows("news", protocol::Operation::Publish));
    // `aud` as a plain string works too.
    let single = s.issuer.claims("auth0|alice", json!({"aud": AUDIENCE}));
    assert!(s
        .plugin
        .authenticate(&sign(&KEYS[0], &single))
        .await
        .is_ok());
}

#[tokio::test]
async fn time_claims_are_checked_with_a_small_leeway() {
    let s = setup(|_| {}).await;
    let now = now_secs();
    let token = |extra| sign(&KEYS[0], &s.issuer.claims("auth0|t", extra));
    assert_eq!(
        code(&s.plugin, &token(json!({"exp": now - 120}))).await,
        40142
    );
    assert!(
        s.plugin
            .authenticate(&token(json!({"exp": now - 5})))
            .await
            .is_ok(),
        "inside the leeway"
    );
    assert_eq!(
        code(&s.plugin, &token(json!({"nbf": now + 600}))).await,
        40144
    );
    assert_eq!(code(&s.plugin, &token(json!({"nbf": "soon"}))).await, 40144);
    assert_eq!(
        code(&s.plugin, &token(json!({"iat": now + 3600}))).await,
        40144
    );
    assert_eq!(code(&s.plugin, &token(json!({"exp": null}))).await, 40144);
}

#[tokio::test]
async fn issuer_audience_and_subject_must_be_right() {
    let s = setup(|_| {}).await;
    let token = |extra| sign(&KEYS[0], &s.issuer.claims("auth0|x", extra));
    let iss = s.issuer.iss();
    assert_eq!(
        code(&s.plugin, &token(json!({"iss": "https://evil.example/"}))).await,
        40144
    );
    assert_eq!(
        code(&s.plugin, &token(json!({"iss": iss.trim_end_matches('/')}))).await,
        40144
    );
    assert_eq!(
        code(&s.plugin, &token(json!({"aud": "https://other-api"}))).await,
        40144
    );
    assert_eq!(code(&s.plugin, &token(json!({"aud": null}))).await, 40144);
    assert_eq!(
        code(&s.plugin, &token(json!({"aud": CLIENT_ID}))).await,
        40144,
        "ID tokens are off"
    );
    assert_eq!(code(&s.plugin, &token(json!({"sub": null}))).await, 40144);
    assert_eq!(code(&s.plugin, &token(json!({"sub": ""}))).await, 40144);
}

#[tokio::test]
async fn id_tokens_only_when_enabled_and_for_this_client() {
    let s = setup(|c| c.accept_id_tokens = true).await;
    let id_token = |azp: &str| {
        sign(
            &KEYS[0],
            &s.issuer.claims(
                "auth0|id",
                json!({"aud": CLIENT_ID, "azp": azp, "given_name": "Ida"}),
            ),
        )
    };
    let principal = s.plugin.authenticate(&id_token(CLIENT_ID)).await.unwrap();
    let user = s
        .plugin
        .users()
        .get(&principal.client_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.first_name.as_deref(), Some("Ida"));
    assert_eq!(code(&s.plugin, &id_token("another-client")).await, 40144);
}

#[tokio::test]
async fn machine_tokens_get_no_user_row() {
    let s = setup(|_| {}).await;
    let claims = s
        .issuer
        .claims("svc@clients", json!({"gty": "client-credentials"}));
    let principal = s
        .plugin
        .authenticate(&sign(&KEYS[0], &claims))
        .await
        .unwrap();
    assert_eq!(principal.client_id, "svc@clients");
    assert!(s
        .plugin
        .users()
        .list(None, None, 10)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn forged_and_malformed_tokens_are_refused() {
    let s = setup(|_| {}).await;
    let claims = s.issuer.claims("auth0|eve", json!({}));
    let good = sign(&KEYS[0], &claims);
    // alg none with an empty signature.
    let none = forge(&json!({"alg": "none", "kid": "k1"}), &claims, b"");
    assert_eq!(code(&s.plugin, &none).await, 40144);
    assert_eq!(
        code(&s.plugin, &format!("{}.", none.trim_end_matches('.'))).await,
        40144
    );
    // HS256 keyed with the public key (algorithm confusion).
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let confused = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(KEYS[0].public_pem.as_bytes()),
    )
    .unwrap();
    assert_eq!(code(&s.plugin, &confused).await, 40144);
    // RS384 when only RS256 is allowed.
    let mut rs384 = Header::new(Algorithm::RS384);
    rs384.kid = Some("k1".into());
    let other_alg = jsonwebtoken::encode(&rs384, &claims, &KEYS[0].encoding).unwrap();
    assert_eq!(code(&s.plugin, &other_alg).await, 40144);
    // Payload swapped, signature kept.
    let parts: Vec<&str> = good.split('.').collect();
    let evil = s
        .issuer
        .claims("auth0|admin", json!({"permissions": ["admin:users"]}));
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            evil.to_string()
        ),
        parts[2]
    );
    assert_eq!(code(&s.plugin, &tampered).await, 40144);
    // Signature stripped or truncated.
    assert_eq!(
        code(&s.plugin, &format!("{}.{}.", parts[0], parts[1])).await,
        40144
    );
    assert_eq!(
        code(
            &s.plugin,
            &format!("{}.{}.{}", parts[0], parts[1], &parts[2][..20])
        )
        .await,
        40144
    );
    // Right kid, attacker's key.
    assert_eq!(code(&s.plugin, &sign(&KEYS[2], &claims)).await, 40144);
    // No kid; a crit header.
    let no_kid =
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &KEYS[0].encoding).unwrap();
    assert_eq!(code(&s.plugin, &no_kid).await, 40144);
    let mut crit = Header::new(Algorithm::RS256);
    crit.kid = Some("k1".into());
    crit.crit = Some(vec!["exp".into()]);
    assert_eq!(
        code(
            &s.plugin,
            &jsonwebtoken::encode(&crit, &claims, &KEYS[0].encoding).unwrap()
        )
        .await,
        40144
    );
    // Shapes.
    for bad in ["a.b", "a.b.c.d", "!!!.???.***", "", "....."] {
        assert_eq!(code(&s.plugin, bad).await, 40144, "{bad:?}");
    }
    // The genuine token still works after all that.
    assert!(s.plugin.authenticate(&good).await.is_ok());
}

#[tokio::test]
async fn oversized_tokens_are_refused_before_any_key_lookup() {
    let s = setup(|c| c.max_token_bytes = 4096).await;
    assert!(s
        .plugin
        .authenticate(&sign(&KEYS[0], &s.issuer.claims("auth0|w", json!({}))))
        .await
        .is_ok());
    let hits = s.issuer.hits();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("never-seen".into());
    let big = jsonwebtoken::encode(
        &header,
        &s.issuer.claims("auth0|w", json!({"pad": "x".repeat(5000)})),
        &KEYS[0].encoding,
    )
    .unwrap();
    assert_eq!(code(&s.plugin, &big).await, 40144);
    assert_eq!(
        s.issuer.hits(),
        hits,
        "no JWKS fetch for an oversized token"
    );
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_and_a_revoked_one_drops_out() {
    let s = setup(|c| c.jwks_cooldown_secs = 0).await;
    let k1 = sign(&KEYS[0], &s.issuer.claims("auth0|r", json!({})));
    assert!(s.plugin.authenticate(&k1).await.is_ok());
    let before = s.issuer.hits();
    s.issuer
        .set(Behaviour::Body(Issuer::jwks(&[&KEYS[0], &KEYS[1]])));
    let k2 = sign(&KEYS[1], &s.issuer.claims("auth0|r", json!({"n": 1})));
    assert!(s.plugin.authenticate(&k2).await.is_ok());
    assert_eq!(
        s.issuer.hits(),
        before + 1,
        "exactly one fetch for the new kid"
    );
    // Revocation: k1 leaves the set; after the next refresh its tokens fail.
    s.issuer.set(Behaviour::Body(Issuer::jwks(&[&KEYS[1]])));
    s.plugin.jwks().refresh().await;
    let k1_again = sign(&KEYS[0], &s.issuer.claims("auth0|r", json!({"n": 2})));
    assert_eq!(code(&s.plugin, &k1_again).await, 40144);
}

#[tokio::test]
async fn a_burst_of_unknown_kids_costs_at_most_one_fetch_and_blocks_no_one() {
    let s = setup(|c| c.jwks_cooldown_secs = 3600).await;
    let legit = s.issuer.claims("auth0|l", json!({}));
    assert!(s.plugin.authenticate(&sign(&KEYS[0], &legit)).await.is_ok());
    let hits = s.issuer.hits();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let plugin = s.plugin.clone();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(format!("random-{i}"));
        let token = jsonwebtoken::encode(
            &header,
            &s.issuer.claims("auth0|m", json!({})),
            &KEYS[2].encoding,
        )
        .unwrap();
        tasks.push(tokio::spawn(async move {
            plugin.authenticate(&token).await.map(|_| ())
        }));
    }
    let legit_again = s.issuer.claims("auth0|l", json!({"during": "burst"}));
    assert!(s
        .plugin
        .authenticate(&sign(&KEYS[0], &legit_again))
        .await
        .is_ok());
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap_err().code, 40144);
    }
    assert!(
        s.issuer.hits() <= hits + 1,
        "fetches: {} after {hits}",
        s.issuer.hits()
    );
}

#[tokio::test]
async fn a_dead_idp_at_start_delays_logins_until_it_is_back() {
    let issuer = Issuer::start(&[&KEYS[0]]).await;
    issuer.set(Behaviour::Status(500));
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let mut config = issuer.config();
    config.jwks_cooldown_secs = 0;
    let plugin = AuthPlugin::start(config, &db).unwrap();
    let token = sign(&KEYS[0], &issuer.claims("auth0|d", json!({})));
    assert_eq!(
        code(&plugin, &token).await,
        40140,
        "keys unavailable is a retryable token error"
    );
    issuer.set(Behaviour::Body(Issuer::jwks(&[&KEYS[0]])));
    assert!(plugin.authenticate(&token).await.is_ok());
}

#[tokio::test]
async fn slow_or_garbage_jwks_keep_the_last_good_keys() {
    let s = setup(|c| {
        c.jwks_cooldown_secs = 0;
        c.jwks_timeout_ms = 300;
    })
    .await;
    assert!(s
        .plugin
        .authenticate(&sign(&KEYS[0], &s.issuer.claims("auth0|g", json!({}))))
        .await
        .is_ok());
    let huge = format!(r#"{{"keys":[],"pad":"{}"}}"#, "x".repeat(200_000));
    let oct = json!({"keys": [{"kty": "oct", "kid": "k9", "k": "c2VjcmV0"}]}).to_string();
    let weak = Issuer::jwks(&[&WEAK]);
    let bad_n = json!({"keys": [{"kty": "RSA", "kid": "k8", "n": "!!", "e": "AQAB"}]}).to_string();
    let behaviours = vec![
        Behaviour::Status(500),
        Behaviour::Body("<html>busy</html>".into()),
        Behaviour::Body("{}".into()),
        Behaviour::Body(r#"{"keys":[]}"#.into()),
        Behaviour::Body(huge),
        Behaviour::Body(oct),
        Behaviour::Body(weak),
        Behaviour::Body(bad_n),
        Behaviour::Slow(Duration::from_secs(5), Issuer::jwks(&[&KEYS[1]])),
    ];
    for (i, behaviour) in behaviours.into_iter().enumerate() {
        s.issuer.set(behaviour);
        s.plugin.jwks().refresh().await;
        assert_eq!(s.plugin.jwks().kids(), ["k1"], "case {i}");
        let fresh = sign(&KEYS[0], &s.issuer.claims("auth0|g", json!({"case": i})));
        assert!(s.plugin.authenticate(&fresh).await.is_ok(), "case {i}");
    }
    // A weak key is never trusted, even when it is all there is.
    let w = sign(&WEAK, &s.issuer.claims("auth0|g", json!({})));
    assert_eq!(code(&s.plugin, &w).await, 40144);
}

#[tokio::test]
async fn roles_map_through_the_configured_claim() {
    let s = setup(|c| {
        c.roles_claim = Some("https://chat.example/roles".into());
        c.roles
            .insert("moderator".into(), r#"{"mod:*":["*"]}"#.into());
        c.default_capability = r#"{"lobby":["subscribe"]}"#.into();
    })
    .await;
    let token = |extra| sign(&KEYS[0], &s.issuer.claims("auth0|role", extra));
    let m = s
        .plugin
        .authenticate(&token(json!({"https://chat.example/roles": ["moderator"]})))
        .await
        .unwrap();
    assert_eq!(m.capability.as_json(), r#"{"mod:*":["*"]}"#);
    let plain = s
        .plugin
        .authenticate(&token(json!({"x": 1})))
        .await
        .unwrap();
    assert_eq!(plain.capability.as_json(), r#"{"lobby":["subscribe"]}"#);
    assert!(!plain.admin);
}
