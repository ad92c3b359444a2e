//! One origin for the app: the broker serves a built web app from `web_root` at `/` next to
//! REST and WebSocket, and — on a fresh machine without Auth0 — a development login that
//! issues a token for a chosen username.

use protocol::Action;
use tests::issuer::{Issuer, KEYS};
use tests::{http, json, send, TestBroker};

#[tokio::test]
async fn the_app_is_served_beside_rest_and_websocket() {
    let app = tempfile::tempdir().unwrap();
    std::fs::write(
        app.path().join("index.html"),
        "<!doctype html><title>chat</title>",
    )
    .unwrap();
    std::fs::create_dir(app.path().join("assets")).unwrap();
    std::fs::write(app.path().join("assets/app-1234.js"), "console.log(1)").unwrap();
    let root = app.path().to_owned();
    let broker = TestBroker::start_with(move |c| c.web_root = Some(root)).await;

    let index = send(http().get(broker.url("/"))).await;
    assert_eq!(index.headers()["content-type"], "text/html; charset=utf-8");
    assert!(index.text().await.unwrap().contains("<title>chat</title>"));
    let script = send(http().get(broker.url("/assets/app-1234.js"))).await;
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let route = send(http().get(broker.url("/auth0-landing"))).await;
    assert!(
        route.text().await.unwrap().contains("<title>chat</title>"),
        "client-side routes get the app"
    );
    let escape = send(http().get(broker.url("/..%2f..%2fetc%2fpasswd"))).await;
    assert_eq!(escape.status(), 404);
    let missing = send(http().get(broker.url("/nope.js"))).await;
    assert_eq!(missing.status(), 404);

    let time: Vec<i64> = send(http().get(broker.url("/time")))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(time.len(), 1);
    let (_client, connected) = broker.connect_key("json").await;
    assert!(
        connected.connection_id.is_some(),
        "the WebSocket on / still works"
    );
}

#[tokio::test]
async fn the_development_login_issues_tokens_for_a_username() {
    let broker = TestBroker::start_with(|c| c.dev_login = Some(true)).await;
    let config = json(http().get(broker.url("/api/oauth/config"))).await;
    assert_eq!(config["devLogin"], true);
    let details = json(
        http()
            .post(broker.url("/api/dev/login"))
            .json(&serde_json::json!({"username": "Alice"})),
    )
    .await;
    assert_eq!(details["clientId"], "alice");
    let mut client = broker
        .connect(&format!(
            "access_token={}&format=json",
            details["token"].as_str().unwrap()
        ))
        .await;
    let connected = client.expect(Action::Connected).await;
    assert_eq!(
        connected.connection_details.unwrap().client_id.as_deref(),
        Some("alice")
    );
    let bad = send(http().get(broker.url("/api/dev/login?username=a!"))).await;
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn the_development_login_is_off_unless_asked_for_and_always_with_auth0() {
    let plain = TestBroker::start().await;
    let off = send(http().get(plain.url("/api/dev/login?username=bob"))).await;
    assert_eq!(off.status(), 404);
    let config = json(http().get(plain.url("/api/oauth/config"))).await;
    assert_eq!(config["devLogin"], false);

    let issuer = Issuer::start(&[&KEYS[0]]).await;
    let auth0 = issuer.config();
    let with_auth0 = TestBroker::start_with(move |c| {
        c.auth0 = auth0;
        c.dev_login = Some(true);
    })
    .await;
    let refused = send(http().get(with_auth0.url("/api/dev/login?username=bob"))).await;
    assert_eq!(refused.status(), 404);
}
