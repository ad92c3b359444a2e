//! Auth0 logins end to end through the broker: an Auth0 token straight on the WebSocket, the
//! `/api/auth/token` exchange for a broker token, the login page's config, the user's own
//! profile routes, and the admin routes (API key or `admin:users`), with a local issuer.

use protocol::{Action, ProtocolMessage};
use serde_json::json;
use tests::issuer::{sign, Issuer, KEYS};
use tests::{basic_auth, http, json, send, TestBroker};

async fn broker_with(issuer: &Issuer) -> TestBroker {
    let config = issuer.config();
    TestBroker::start_with(move |c| c.auth0 = config).await
}

fn token(issuer: &Issuer, sub: &str, extra: serde_json::Value) -> String {
    sign(&KEYS[0], &issuer.claims(sub, extra))
}

#[tokio::test]
async fn an_auth0_token_on_the_websocket_sets_client_id_and_capability() {
    let issuer = Issuer::start(&[&KEYS[0]]).await;
    let broker = broker_with(&issuer).await;
    let jwt = token(
        &issuer,
        "auth0|ann",
        json!({"permissions": ["subscribe:chat:*", "publish:chat:*"], "nickname": "ann"}),
    );
    let mut client = broker
        .connect(&format!("access_token={jwt}&format=json"))
        .await;
    let connected = client.expect(Action::Connected).await;
    let client_id = connected.connection_details.unwrap().client_id.unwrap();
    let me = json(http().get(broker.url("/api/users/me")).bearer_auth(&jwt)).await;
    assert_eq!(me["id"].as_str(), Some(client_id.as_str()));
    assert_eq!(me["username"], "ann");
    client.attach("chat:general").await;
    client
        .send(&ProtocolMessage::for_channel(Action::Attach, "admin:room"))
        .await;
    assert_eq!(
        client.expect(Action::Error).await.error.unwrap().code,
        40160
    );

    let expired = token(
        &issuer,
        "auth0|ann",
        json!({"exp": tests::now_secs() - 300}),
    );
    let mut late = broker
        .connect(&format!("access_token={expired}&format=json"))
        .await;
    assert_eq!(late.expect(Action::Error).await.error.unwrap().code, 40142);
}

#[tokio::test]
async fn the_token_endpoint_exchanges_an_auth0_token_for_a_broker_token() {
    let issuer = Issuer::start(&[&KEYS[0]]).await;
    let broker = broker_with(&issuer).await;
    let jwt = token(&issuer, "auth0|ben", json!({"permissions": ["*:room"]}));
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let response = send(
            http()
                .request(method, broker.url("/api/auth/token"))
                .bearer_auth(&jwt),
        )
        .await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        let details: serde_json::Value = response.json().await.unwrap();
        assert_eq!(details["capability"], r#"{"room":["*"]}"#);
        let mut client = broker
            .connect(&format!(
                "access_token={}&format=json",
                details["token"].as_str().unwrap()
            ))
            .await;
        let connected = client.expect(Action::Connected).await;
        assert_eq!(
            connected.connection_details.unwrap().client_id.as_deref(),
            details["clientId"].as_str()
        );
    }
    let refused = send(
        http()
            .get(broker.url("/api/auth/token"))
            .bearer_auth("not-a-token"),
    )
    .await;
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["x-ably-errorcode"], "40144");
    let missing = send(http().get(broker.url("/api/auth/token"))).await;
    assert_eq!(missing.status(), 401);
}

#[tokio::test]
async fn the_login_page_config_holds_only_public_values() {
    let issuer = Issuer::start(&[&KEYS[0]]).await;
    let broker = broker_with(&issuer).await;
    let config = json(http().get(broker.url("/api/oauth/config"))).await;
    assert_eq!(
        config,
        json!({"domain": "tenant.test", "clientID": "spa-client-id", "client_id": "spa-client-id",
               "clientId": "spa-client-id", "redirect_uri": "http://127.0.0.1/auth0-landing",
               "audience": "https://chat-broker"})
    );
    let plain = TestBroker::start().await;
    let off = json(http().get(plain.url("/api/oauth/config"))).await;
    assert_eq!(
        off,
        json!({"devLogin": false}),
        "without Auth0 the page learns it has no Auth0"
    );
}

#[tokio::test]
async fn users_edit_themselves_and_admins_manage_everyone() {
    let issuer = Issuer::start(&[&KEYS[0]]).await;
    let broker = broker_with(&issuer).await;
    let cat = token(
        &issuer,
        "auth0|cat",
        json!({"nickname": "cat", "given_name": "Cat"}),
    );
    let patched = json(
        http()
            .patch(broker.url("/api/users/me"))
            .bearer_auth(&cat)
            .json(&json!({"firstName": "Catherine", "username": "kitty"})),
    )
    .await;
    assert_eq!(
        (patched["firstName"].as_str(), patched["username"].as_str()),
        (Some("Catherine"), Some("kitty"))
    );
    // A later login does not undo what the user edited.
    let again = token(&issuer, "auth0|cat", json!({"given_name": "Cat", "n": 2}));
    let me = json(http().get(broker.url("/api/users/me")).bearer_auth(&again)).await;
    assert_eq!(me["firstName"], "Catherine");

    let dog = token(&issuer, "auth0|dog", json!({"nickname": "dog"}));
    let clash = send(
        http()
            .patch(broker.url("/api/users/me"))
            .bearer_auth(&dog)
            .json(&json!({"username": "KITTY"})),
    )
    .await;
    assert_eq!(clash.status(), 409);
    let forbidden = send(http().get(broker.url("/api/users")).bearer_auth(&dog)).await;
    assert_eq!(forbidden.status(), 403);
    assert_eq!(forbidden.headers()["x-ably-errorcode"], "40160");

    let admin = token(
        &issuer,
        "auth0|boss",
        json!({"permissions": ["admin:users"]}),
    );
    let listed = json(
        http()
            .get(broker.url("/api/users?query=kit"))
            .bearer_auth(&admin),
    )
    .await;
    assert_eq!(listed["users"].as_array().unwrap().len(), 1);
    let all = json(
        http()
            .get(broker.url("/api/users?limit=2"))
            .header("authorization", basic_auth()),
    )
    .await;
    assert_eq!(all["users"].as_array().unwrap().len(), 2);
    assert!(all["nextCursor"].is_string());

    // Deleting a user drops their live connections.
    let dog_id = send(http().get(broker.url("/api/users/me")).bearer_auth(&dog))
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut live = broker
        .connect(&format!("access_token={dog}&format=json"))
        .await;
    live.expect(Action::Connected).await;
    let deleted = send(
        http()
            .delete(broker.url(&format!("/api/users/{dog_id}")))
            .header("authorization", basic_auth()),
    )
    .await;
    assert_eq!(deleted.status(), 200);
    assert_eq!(live.expect(Action::Error).await.error.unwrap().code, 40101);
    let gone = send(
        http()
            .get(broker.url(&format!("/api/users/{dog_id}")))
            .header("authorization", basic_auth()),
    )
    .await;
    assert_eq!(gone.status(), 404);
}
