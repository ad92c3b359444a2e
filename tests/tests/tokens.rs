//! Tokens the broker issues and revokes (§8.3, §8.5, §8.7): a token carries no more than its
//! key (the returned TokenDetails and what the token can actually do), expiry to the
//! millisecond, 400 for malformed requests and 40160 for a capability with nothing in common
//! with the key's; `POST /keys/{keyName}/revokeTokens` closes the live connections of a
//! clientId's older tokens and refuses those tokens on connect, in-band AUTH and REST, also
//! after a restart, while newer tokens work.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use broker::config::KeyConfig;
use protocol::{flags, Action, AuthDetails, ProtocolMessage};
use serde_json::{json, Value};
use tests::{
    basic_auth, basic_auth_for, clock_passes, http, json, send, token_issued_at, urlencode, Client,
    TestBroker, KEY,
};

const CHAT_KEY: &str = "test.chat:chatsecret";

async fn broker_with_chat_key() -> TestBroker {
    TestBroker::start_with(|c| {
        c.keys.push(KeyConfig {
            name: "test.chat".into(),
            secret: "chatsecret".into(),
            capability: r#"{"chat:*":["subscribe","publish"]}"#.into(),
        })
    })
    .await
}

/// An unsigned token request for `key`, authenticated with that key (§8.3).
async fn request_token(broker: &TestBroker, key: &str, body: Value) -> reqwest::Response {
    let name = key.split_once(':').unwrap().0;
    send(
        http()
            .post(broker.url(&format!("/keys/{name}/requestToken")))
            .header("authorization", basic_auth_for(key))
            .json(&body),
    )
    .await
}

async fn token_for(broker: &TestBroker, client_id: &str) -> String {
    let response = request_token(broker, KEY, json!({"clientId": client_id})).await;
    assert_eq!(response.status(), 200);
    let details: Value = response.json().await.unwrap();
    details["token"].as_str().unwrap().to_owned()
}

async fn connect_token(broker: &TestBroker, token: &str) -> Client {
    broker
        .connect(&format!("access_token={}&format=json", urlencode(token)))
        .await
}

fn claims(token: &str) -> Value {
    let middle = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(middle).unwrap()).unwrap()
}

/// The Ably error body of a refused request, after checking its status.
async fn refusal(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["statusCode"], status, "{body}");
    body["error"].clone()
}

#[tokio::test]
async fn a_token_carries_only_what_its_key_grants() {
    let broker = broker_with_chat_key().await;
    let asked = r#"{"*":["publish","presence","subscribe"],"news":["subscribe"]}"#;
    let response = request_token(
        &broker,
        CHAT_KEY,
        json!({"capability": asked, "clientId": "ann"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let details: Value = response.json().await.unwrap();
    let granted = r#"{"chat:*":["publish","subscribe"]}"#;
    assert_eq!(details["capability"], granted);
    let token = details["token"].as_str().unwrap();
    assert_eq!(claims(token)["x-ably-capability"], granted);

    let mut client = connect_token(&broker, token).await;
    client.expect(Action::Connected).await;
    let mut attach = ProtocolMessage::for_channel(Action::Attach, "chat:1");
    attach.flags = Some(flags::MODE_PRESENCE | flags::MODE_PUBLISH | flags::MODE_SUBSCRIBE);
    client.send(&attach).await;
    let attached = client.expect(Action::Attached).await;
    let modes = attached.flags.unwrap_or(0);
    assert_ne!(modes & flags::MODE_PUBLISH, 0);
    assert_eq!(
        modes & flags::MODE_PRESENCE,
        0,
        "presence was not the key's"
    );
    client
        .send(&ProtocolMessage::for_channel(Action::Attach, "news"))
        .await;
    assert_eq!(
        client.expect(Action::Error).await.error.unwrap().code,
        40160
    );
}

#[tokio::test]
async fn token_details_expire_to_the_millisecond_and_keep_the_order_granted() {
    let broker = broker_with_chat_key().await;
    let asked = r#"{"chat:b":["subscribe","publish"],"chat:a":["publish"]}"#;
    let response = request_token(&broker, CHAT_KEY, json!({"ttl": 500, "capability": asked})).await;
    assert_eq!(response.status(), 200);
    let details: Value = response.json().await.unwrap();
    let (issued, expires) = (
        details["issued"].as_i64().unwrap(),
        details["expires"].as_i64().unwrap(),
    );
    assert_eq!(expires - issued, 500);
    assert_eq!(details["capability"], asked, "not re-sorted");
    let claims = claims(details["token"].as_str().unwrap());
    assert_eq!(
        (claims["iat"].as_f64().unwrap() * 1000.0).round() as i64,
        issued
    );
    assert_eq!(
        (claims["exp"].as_f64().unwrap() * 1000.0).round() as i64,
        expires
    );
}

#[tokio::test]
async fn malformed_token_requests_are_400_and_an_empty_intersection_is_40160() {
    let broker = broker_with_chat_key().await;
    for ttl in [json!("abc"), json!(true), json!(0), json!(86_400_001)] {
        let error = refusal(
            request_token(&broker, CHAT_KEY, json!({"ttl": ttl})).await,
            400,
        )
        .await;
        assert_eq!(error["code"], 40003, "ttl {ttl}");
    }
    for capability in [json!(r#"["*","publish"]"#), json!(["*", "publish"])] {
        let response = request_token(&broker, CHAT_KEY, json!({"capability": capability})).await;
        let error = refusal(response, 400).await;
        assert!(
            [40000, 40003].contains(&error["code"].as_u64().unwrap()),
            "{error}"
        );
    }
    let elsewhere = json!({"capability": r#"{"news":["subscribe"]}"#});
    let error = refusal(
        request_token(&broker, CHAT_KEY, elsewhere.clone()).await,
        401,
    )
    .await;
    assert_eq!(error["code"], 40160);
    // Without the key, the same request learns nothing about the key's capability.
    let anonymous = send(
        http()
            .post(broker.url("/keys/test.chat/requestToken"))
            .json(&elsewhere),
    )
    .await;
    assert_eq!(refusal(anonymous, 401).await["code"], 40101);
    let no_common_operation = json!({"capability": r#"{"chat:1":["history"]}"#});
    let error = refusal(
        request_token(&broker, CHAT_KEY, no_common_operation).await,
        401,
    )
    .await;
    assert_eq!(error["code"], 40160);
}

async fn revoke(broker: &TestBroker, key: &str, body: Value) -> reqwest::Response {
    let name = key.split_once(':').unwrap().0;
    send(
        http()
            .post(broker.url(&format!("/keys/{name}/revokeTokens")))
            .header("authorization", basic_auth_for(key))
            .json(&body),
    )
    .await
}

/// A `ping()`: the broker echoes a HEARTBEAT with the id while the connection is live.
async fn still_live(client: &mut Client) {
    client
        .send(&ProtocolMessage {
            id: Some("ping".into()),
            ..ProtocolMessage::new(Action::Heartbeat)
        })
        .await;
    assert_eq!(
        client.expect(Action::Heartbeat).await.id.as_deref(),
        Some("ping")
    );
}

async fn history_with(broker: &TestBroker, token: &str) -> reqwest::Response {
    send(http().get(broker.url("/channels/room/messages")).header(
        "authorization",
        format!("Bearer {}", STANDARD.encode(token)),
    ))
    .await
}

#[tokio::test]
async fn revoking_a_client_id_closes_its_connections_and_refuses_its_older_tokens() {
    let broker = broker_with_chat_key().await;
    let old = token_for(&broker, "alice").await;
    let spare = token_for(&broker, "alice").await;
    let bob = token_for(&broker, "bob").await;
    let mut alice_live = connect_token(&broker, &old).await;
    alice_live.expect(Action::Connected).await;
    let mut bob_live = connect_token(&broker, &bob).await;
    bob_live.expect(Action::Connected).await;
    clock_passes(&broker, token_issued_at(&spare)).await;

    let response = revoke(
        &broker,
        KEY,
        json!({"targets": ["clientId:alice", "channel:room"]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let result: Value = response.json().await.unwrap();
    assert_eq!(
        (
            result["successCount"].as_u64(),
            result["failureCount"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let done = &result["results"][0];
    assert_eq!(done["target"], "clientId:alice");
    assert!(done["issuedBefore"].as_i64().unwrap() <= done["appliesAt"].as_i64().unwrap());
    assert!(done.get("error").is_none());
    assert_eq!(result["results"][1]["target"], "channel:room");
    assert_eq!(result["results"][1]["error"]["statusCode"], 400);

    // §4.5: a token error on DISCONNECTED makes a client that can renew fetch a new token.
    let farewell = alice_live.expect(Action::Disconnected).await;
    assert_eq!(farewell.error.unwrap().code, 40141);
    assert!(alice_live.next().await.is_none(), "the socket closes");
    still_live(&mut bob_live).await;

    let mut again = connect_token(&broker, &old).await;
    assert_eq!(again.expect(Action::Error).await.error.unwrap().code, 40141);
    let error = refusal(history_with(&broker, &old).await, 401).await;
    assert_eq!(error["code"], 40141);
    assert_eq!(history_with(&broker, &bob).await.status(), 200);

    clock_passes(&broker, done["issuedBefore"].as_i64().unwrap()).await;
    let fresh = token_for(&broker, "alice").await;
    let mut renewed = connect_token(&broker, &fresh).await;
    renewed.expect(Action::Connected).await;
    assert_eq!(history_with(&broker, &fresh).await.status(), 200);
    // In-band AUTH (§4.7) with a token issued before the revocation is refused too.
    renewed
        .send(&ProtocolMessage {
            auth: Some(AuthDetails {
                access_token: spare,
            }),
            ..ProtocolMessage::new(Action::Auth)
        })
        .await;
    let refused = renewed.expect(Action::Disconnected).await;
    assert_eq!(refused.error.unwrap().code, 40141);
}

#[tokio::test]
async fn only_the_key_itself_may_revoke_its_tokens() {
    let broker = broker_with_chat_key().await;
    let body = json!({"targets": ["clientId:alice"]});
    let other_key = send(
        http()
            .post(broker.url("/keys/test.full/revokeTokens"))
            .header("authorization", basic_auth_for(CHAT_KEY))
            .json(&body),
    )
    .await;
    assert_eq!(refusal(other_key, 401).await["code"], 40160);
    let token = token_for(&broker, "alice").await;
    let with_token = send(
        http()
            .post(broker.url("/keys/test.full/revokeTokens"))
            .header(
                "authorization",
                format!("Bearer {}", STANDARD.encode(&token)),
            )
            .json(&body),
    )
    .await;
    assert_eq!(refusal(with_token, 401).await["code"], 40101);
    let future = json!({"targets": ["clientId:alice"], "issuedBefore": tests::now_secs() * 1000 + 3_600_000});
    assert_eq!(
        refusal(revoke(&broker, KEY, future).await, 400).await["code"],
        40003
    );
    // Nothing was revoked by any of these.
    connect_token(&broker, &token)
        .await
        .expect(Action::Connected)
        .await;
}

#[tokio::test]
async fn revocations_survive_a_restart() {
    let broker = TestBroker::start().await;
    let old = token_for(&broker, "carol").await;
    clock_passes(&broker, token_issued_at(&old)).await;
    let response = revoke(&broker, KEY, json!({"targets": ["clientId:carol"]})).await;
    assert_eq!(response.status(), 200);
    let result: Value = response.json().await.unwrap();
    let issued_before = result["results"][0]["issuedBefore"].as_i64().unwrap();
    let dir = broker.dir().to_owned();
    let _data = broker.stop().await;

    let broker = TestBroker::start_in(&dir, |_| {}).await;
    let mut refused = connect_token(&broker, &old).await;
    assert_eq!(
        refused.expect(Action::Error).await.error.unwrap().code,
        40141
    );
    clock_passes(&broker, issued_before).await;
    let fresh = token_for(&broker, "carol").await;
    connect_token(&broker, &fresh)
        .await
        .expect(Action::Connected)
        .await;
    let check = json(
        http()
            .get(broker.url("/channels/room/messages"))
            .header("authorization", basic_auth()),
    )
    .await;
    assert!(check.is_array(), "the key itself is never revoked");
}

#[tokio::test]
async fn a_reauth_margin_asks_live_connections_to_renew_first() {
    let broker = TestBroker::start().await;
    let old = token_for(&broker, "dan").await;
    let mut live = connect_token(&broker, &old).await;
    live.expect(Action::Connected).await;
    clock_passes(&broker, token_issued_at(&old)).await;
    let body = json!({"targets": ["clientId:dan"], "allowReauthMargin": true});
    let response = revoke(&broker, KEY, body).await;
    assert_eq!(response.status(), 200);
    let result: Value = response.json().await.unwrap();
    let done = &result["results"][0];
    let issued_before = done["issuedBefore"].as_i64().unwrap();
    assert!(done["appliesAt"].as_i64().unwrap() >= issued_before + 30_000);

    // §4.7: AUTH asks the client for a new token, which it sends in-band.
    live.expect(Action::Auth).await;
    clock_passes(&broker, issued_before).await;
    let fresh = token_for(&broker, "dan").await;
    live.send(&ProtocolMessage {
        auth: Some(AuthDetails {
            access_token: fresh,
        }),
        ..ProtocolMessage::new(Action::Auth)
    })
    .await;
    live.expect(Action::Connected).await;
    still_live(&mut live).await;
}
