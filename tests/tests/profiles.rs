//! `GET /api/users/{id}/profile`: how the chat shows other users. Anyone with a credential the
//! broker accepts — an Auth0 token, a broker token, an API key — reads another user's public
//! fields from the user table (never their `sub`); unknown ids are 404 and callers without
//! credentials 401. With the development login instead of Auth0, the profile is the name the
//! login issued a token for.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::json;
use tests::issuer::{sign, Issuer, KEYS};
use tests::{basic_auth, http, json, send, TestBroker};

fn token(issuer: &Issuer, sub: &str, extra: serde_json::Value) -> String {
    sign(&KEYS[0], &issuer.claims(sub, extra))
}

/// The id of the user `jwt` belongs to; their first login when the token is new.
async fn login(broker: &TestBroker, jwt: &str) -> String {
    let me = json(http().get(broker.url("/api/users/me")).bearer_auth(jwt)).await;
    me["id"].as_str().expect("the user has an id").to_owned()
}

fn profile_url(broker: &TestBroker, id: &str) -> String {
    broker.url(&format!("/api/users/{}/profile", tests::urlencode(id)))
}

/// Asserts an Ably-style error with `status` and `code`.
async fn assert_error(response: reqwest::Response, status: u16, code: u32) {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["x-ably-errorcode"], code.to_string());
    let body: serde_json::Value = response.json().await.expect("a JSON error body");
    assert_eq!(body["error"]["code"], code);
    assert_eq!(body["error"]["statusCode"], status);
}

#[tokio::test]
async fn any_signed_in_caller_reads_another_users_public_profile() {
    let issuer = Issuer::start(&[&KEYS[0]]).await;
    let config = issuer.config();
    let broker = TestBroker::start_with(move |c| c.auth0 = config).await;
    let ada = token(&issuer, "auth0|ada", json!({"nickname": "ada"}));
    let bea = token(
        &issuer,
        "google-oauth2|1234",
        json!({"nickname": "bea", "given_name": "Bea", "family_name": "Bauer",
               "picture": "https://img.example/bea.png", "email": "bea@example.com"}),
    );
    login(&broker, &ada).await;
    let bea_id = login(&broker, &bea).await;

    let expected = json!({
        "id": bea_id, "username": "bea", "firstName": "Bea", "lastName": "Bauer",
        "profileImgUrl": "https://img.example/bea.png",
    });
    // Exactly the public fields: no sub, identities, e-mail or login times.
    let by_auth0_token = json(http().get(profile_url(&broker, &bea_id)).bearer_auth(&ada)).await;
    assert_eq!(by_auth0_token, expected);

    // A broker token, sent the way ably-js sends it (base64) and raw.
    let details = json(http().get(broker.url("/api/auth/token")).bearer_auth(&ada)).await;
    let broker_token = details["token"].as_str().expect("a broker token");
    for bearer in [STANDARD.encode(broker_token), broker_token.to_owned()] {
        let response = send(
            http()
                .get(profile_url(&broker, &bea_id))
                .bearer_auth(&bearer),
        )
        .await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(
            response.json::<serde_json::Value>().await.unwrap(),
            expected
        );
    }

    let by_key = json(
        http()
            .get(profile_url(&broker, &bea_id))
            .header("authorization", basic_auth()),
    )
    .await;
    assert_eq!(by_key, expected);

    // What Bea changes about herself is what others see.
    send(
        http()
            .patch(broker.url("/api/users/me"))
            .bearer_auth(&bea)
            .json(&json!({"username": "bea.b", "profileImgUrl": "https://img.example/b2.png"})),
    )
    .await;
    let edited = json(http().get(profile_url(&broker, &bea_id)).bearer_auth(&ada)).await;
    assert_eq!(
        (&edited["username"], &edited["profileImgUrl"]),
        (&json!("bea.b"), &json!("https://img.example/b2.png"))
    );
}

#[tokio::test]
async fn unknown_users_are_not_found_and_callers_need_credentials() {
    let issuer = Issuer::start(&[&KEYS[0]]).await;
    let config = issuer.config();
    let broker = TestBroker::start_with(move |c| c.auth0 = config).await;
    let ada = token(&issuer, "auth0|ada", json!({"nickname": "ada"}));
    let cid = token(&issuer, "auth0|cid", json!({"nickname": "cid"}));
    login(&broker, &ada).await;
    let cid_id = login(&broker, &cid).await;

    let unknown = send(
        http()
            .get(profile_url(&broker, "no-such-id"))
            .bearer_auth(&ada),
    )
    .await;
    assert_error(unknown, 404, 40400).await;

    let anonymous = send(http().get(profile_url(&broker, &cid_id))).await;
    assert_error(anonymous, 401, 40100).await;
    let forged = send(
        http()
            .get(profile_url(&broker, &cid_id))
            .bearer_auth("not-a-token"),
    )
    .await;
    assert_error(forged, 401, 40144).await;
    let expired = token(
        &issuer,
        "auth0|ada",
        json!({"exp": tests::now_secs() - 300}),
    );
    let late = send(
        http()
            .get(profile_url(&broker, &cid_id))
            .bearer_auth(&expired),
    )
    .await;
    assert_error(late, 401, 40142).await;
    let bad_key = send(
        http()
            .get(profile_url(&broker, &cid_id))
            .basic_auth("test.full", Some("wrong")),
    )
    .await;
    assert_eq!(bad_key.status(), 401);

    let written = send(
        http()
            .patch(profile_url(&broker, &cid_id))
            .bearer_auth(&ada)
            .json(&json!({"username": "hijack"})),
    )
    .await;
    assert_error(written, 405, 40500).await;

    // A deleted user's profile is gone with them.
    let deleted = send(
        http()
            .delete(broker.url(&format!("/api/users/{cid_id}")))
            .header("authorization", basic_auth()),
    )
    .await;
    assert_eq!(deleted.status(), 200);
    let gone = send(http().get(profile_url(&broker, &cid_id)).bearer_auth(&ada)).await;
    assert_error(gone, 404, 40400).await;
}

#[tokio::test]
async fn with_the_development_login_a_profile_is_the_name_it_issued() {
    let data = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_in(data.path(), |c| c.dev_login = Some(true)).await;
    let alice = json(
        http()
            .post(broker.url("/api/dev/login"))
            .json(&json!({"username": "Alice"})),
    )
    .await;
    let alice_token = alice["token"].as_str().expect("a token").to_owned();
    let bob = json(http().get(broker.url("/api/dev/login?username=bob_e2e"))).await;
    let bob_token = bob["token"].as_str().expect("a token").to_owned();

    let expected = json!({
        "id": "alice", "username": "alice", "firstName": null, "lastName": null,
        "profileImgUrl": null,
    });
    let seen_by_bob = json(
        http()
            .get(profile_url(&broker, "alice"))
            .bearer_auth(STANDARD.encode(&bob_token)),
    )
    .await;
    assert_eq!(seen_by_bob, expected);

    // Only names the login issued a token for, and only for callers with a credential.
    let never = send(
        http()
            .get(profile_url(&broker, "carol"))
            .bearer_auth(&alice_token),
    )
    .await;
    assert_error(never, 404, 40400).await;
    let anonymous = send(http().get(profile_url(&broker, "alice"))).await;
    assert_error(anonymous, 401, 40100).await;

    // The record is on disk: after a restart, earlier senders are still known.
    let kept = broker.stop().await;
    assert!(kept.is_none(), "the test owns the data directory");
    let restarted = TestBroker::start_in(data.path(), |c| c.dev_login = Some(true)).await;
    let after = json(
        http()
            .get(profile_url(&restarted, "alice"))
            .header("authorization", basic_auth()),
    )
    .await;
    assert_eq!(after, expected);
    restarted.stop().await;
}

#[tokio::test]
async fn a_broker_without_logins_knows_no_users() {
    let broker = TestBroker::start().await;
    let response = send(
        http()
            .get(profile_url(&broker, "alice"))
            .header("authorization", basic_auth()),
    )
    .await;
    assert_error(response, 404, 40400).await;
    let anonymous = send(http().get(profile_url(&broker, "alice"))).await;
    assert_error(anonymous, 401, 40100).await;
}
