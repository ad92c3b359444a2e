//! Auth0 logins end to end through the broker: an Auth0 token straight on the WebSocket, the
//! `/api/auth/token` exchange for a broker token, the login page's config, the user's own
//! profile routes, the admin routes (an admin API key or `admin:users`), and deleting a user
//! as a ban that an admin can lift, with a local issuer.

use broker::config::KeyConfig;
use protocol::{Action, ProtocolMessage};
use serde_json::json;
use tests::issuer::{sign, Issuer, KEYS};
use tests::{
    basic_auth, basic_auth_for, clock_passes, http, json, send, token_issued_at, urlencode,
    TestBroker,
};

async fn broker_with(issuer: &Issuer) -> TestBroker {
    let config = issuer.config();
    TestBroker::start_with(move |c| {
        c.auth0 = config;
        for (name, secret, capability) in [
            ("test.chat", "chatsecret", r#"{"chat:*":["subscribe"]}"#),
            ("test.admin", "adminsecret", r#"{"[admin]users":["*"]}"#),
            ("test.star", "starsecret", r#"{"*":["*"]}"#),
        ] {
            c.keys.push(KeyConfig {
                name: name.into(),
                secret: secret.into(),
                capability: capability.into(),
            });
        }
    })
    .await
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
    assert_eq!(live.expect(Action::Error).await.error.unwrap().code, 40300);
    let gone = send(
        http()
            .get(broker.url(&format!("/api/users/{dog_id}")))
            .header("authorization", basic_auth()),
    )
    .await;
    assert_eq!(gone.status(), 404);
}

/// The id of the user behind an Auth0 token (logging them in).
async fn user_id(broker: &TestBroker, auth0_token: &str) -> String {
    let me = json(
        http()
            .get(broker.url("/api/users/me"))
            .bearer_auth(auth0_token),
    )
    .await;
    me["id"].as_str().unwrap().to_owned()
}

/// Status and Ably error code of a refused request, after checking the error body.
async fn refused(response: reqwest::Response) -> (u16, u64) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["statusCode"], status, "{body}");
    (status, body["error"]["code"].as_u64().unwrap())
}

#[tokio::test]
async fn only_admin_keys_administer_users() {
    let issuer = Issuer::start(&[&KEYS[0]]).await;
    let broker = broker_with(&issuer).await;
    let eve = token(&issuer, "auth0|eve", json!({"nickname": "eve"}));
    let id = user_id(&broker, &eve).await;
    let user_url = broker.url(&format!("/api/users/{id}"));

    let restricted = basic_auth_for("test.chat:chatsecret");
    let attempts = [
        http().get(broker.url("/api/users")),
        http().get(&user_url),
        http()
            .patch(&user_url)
            .json(&json!({"firstName": "Mallory"})),
        http().delete(&user_url),
        http().post(format!("{user_url}/restore")),
    ];
    for attempt in attempts {
        let response = send(attempt.header("authorization", &restricted)).await;
        assert_eq!(refused(response).await, (403, 40160));
    }
    let untouched = json(http().get(&user_url).header("authorization", basic_auth())).await;
    assert_eq!(untouched["username"], "eve");
    assert!(untouched["firstName"].is_null());

    for admin in [
        basic_auth_for("test.admin:adminsecret"),
        basic_auth_for("test.star:starsecret"),
        basic_auth(),
    ] {
        let listed = json(
            http()
                .get(broker.url("/api/users"))
                .header("authorization", &admin),
        )
        .await;
        assert_eq!(listed["users"].as_array().unwrap().len(), 1);
        let patched = json(
            http()
                .patch(&user_url)
                .header("authorization", &admin)
                .json(&json!({"lastName": "Admin-set"})),
        )
        .await;
        assert_eq!(patched["lastName"], "Admin-set");
    }
    let deleted = send(
        http()
            .delete(&user_url)
            .header("authorization", basic_auth_for("test.admin:adminsecret")),
    )
    .await;
    assert_eq!(deleted.status(), 200);
}

#[tokio::test]
async fn a_deleted_user_is_banned_until_an_admin_restores_them() {
    let issuer = Issuer::start(&[&KEYS[0]]).await;
    let broker = broker_with(&issuer).await;
    let fay = token(&issuer, "auth0|fay", json!({"nickname": "fay"}));
    let id = user_id(&broker, &fay).await;
    let minted = json(http().get(broker.url("/api/auth/token")).bearer_auth(&fay)).await;
    let old_token = minted["token"].as_str().unwrap().to_owned();
    clock_passes(&broker, token_issued_at(&old_token)).await;
    let mut with_auth0 = broker
        .connect(&format!("access_token={fay}&format=json"))
        .await;
    with_auth0.expect(Action::Connected).await;
    let mut with_broker_token = broker
        .connect(&format!(
            "access_token={}&format=json",
            urlencode(&old_token)
        ))
        .await;
    with_broker_token.expect(Action::Connected).await;

    let deleted = send(
        http()
            .delete(broker.url(&format!("/api/users/{id}")))
            .header("authorization", basic_auth()),
    )
    .await;
    assert_eq!(deleted.status(), 200);
    let deleted_at = json(http().get(broker.url("/time"))).await[0]
        .as_i64()
        .unwrap();
    // Not a token error: ably-js goes FAILED instead of fetching another token (§4.5).
    for live in [&mut with_auth0, &mut with_broker_token] {
        let error = live.expect(Action::Error).await.error.unwrap();
        assert_eq!((error.code, error.status_code), (40300, 403));
    }

    let mut old = broker
        .connect(&format!(
            "access_token={}&format=json",
            urlencode(&old_token)
        ))
        .await;
    assert_eq!(old.expect(Action::Error).await.error.unwrap().code, 40141);
    // Whatever the credential, a connection that reports a deleted user's id is ended as it
    // connects: the check a connection racing the deletion would meet.
    let mut as_deleted = broker
        .connect(&format!(
            "key={}&clientId={}&format=json",
            urlencode(tests::KEY),
            urlencode(&id)
        ))
        .await;
    // The ERROR goes ahead of anything still queued, CONNECTED included.
    let mut ended = as_deleted.next().await.expect("an answer");
    if ended.action == Action::Connected {
        ended = as_deleted.expect(Action::Error).await;
    }
    assert_eq!(ended.action, Action::Error);
    let error = ended.error.unwrap();
    assert_eq!((error.code, error.status_code), (40300, 403));
    let rest_with_old = send(
        http()
            .get(broker.url("/channels/room/messages"))
            .bearer_auth(&old_token),
    )
    .await;
    assert_eq!(refused(rest_with_old).await, (401, 40141));
    // The same Auth0 token (verified before, so cached) and a fresh one are both refused.
    let fresh = token(&issuer, "auth0|fay", json!({"nickname": "fay", "n": 2}));
    for auth0_token in [&fay, &fresh] {
        let mut login = broker
            .connect(&format!("access_token={auth0_token}&format=json"))
            .await;
        let error = login.expect(Action::Error).await.error.unwrap();
        assert_eq!((error.code, error.status_code), (40300, 403));
        let exchange = send(
            http()
                .get(broker.url("/api/auth/token"))
                .bearer_auth(auth0_token),
        )
        .await;
        assert_eq!(refused(exchange).await, (403, 40300));
    }

    let restore_url = broker.url(&format!("/api/users/{id}/restore"));
    let restored = send(
        http()
            .post(&restore_url)
            .header("authorization", basic_auth()),
    )
    .await;
    assert_eq!(restored.status(), 200);
    let restored: serde_json::Value = restored.json().await.unwrap();
    assert_eq!(
        (restored["id"].as_str(), restored["username"].as_str()),
        (Some(id.as_str()), Some("fay"))
    );
    let again = send(
        http()
            .post(&restore_url)
            .header("authorization", basic_auth()),
    )
    .await;
    assert_eq!(refused(again).await, (404, 40400));

    clock_passes(&broker, deleted_at).await;
    let minted = json(
        http()
            .get(broker.url("/api/auth/token"))
            .bearer_auth(&fresh),
    )
    .await;
    assert_eq!(minted["clientId"].as_str(), Some(id.as_str()));
    let mut back = broker
        .connect(&format!(
            "access_token={}&format=json",
            urlencode(minted["token"].as_str().unwrap())
        ))
        .await;
    back.expect(Action::Connected).await;
    let mut still_old = broker
        .connect(&format!(
            "access_token={}&format=json",
            urlencode(&old_token)
        ))
        .await;
    assert_eq!(
        still_old.expect(Action::Error).await.error.unwrap().code,
        40141,
        "the tokens issued before the ban stay revoked"
    );
}
