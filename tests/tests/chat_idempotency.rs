//! Chat REST idempotency keys (`../shared/ably-chat.md` §5.4, "Idempotency") with a real
//! broker on 127.0.0.1:0: a send (R1), edit (R4) or delete (R5) repeated with the same
//! `idempotencyKey` answers with the first one's message and version, stores nothing more and
//! broadcasts nothing more; another key, another client or another operation is new; a key
//! that is empty or too long is refused.

use protocol::{Action, Message};
use serde_json::{json, Value};
use tests::{ably_jwt, http, now_secs, send, urlencode, Client, TestBroker, KEY};

const ROOM: &str = "idem";
const CHANNEL: &str = "idem::$chat";

/// An Ably JWT for `client_id` with every right.
fn token(client_id: &str) -> String {
    ably_jwt(
        KEY,
        json!({
            "iat": now_secs(),
            "exp": now_secs() + 60,
            "x-ably-clientId": client_id,
            "x-ably-capability": r#"{"*":["*"]}"#,
        }),
    )
}

/// A chat REST call on the room as `token` (with no body when `body` is null); the status
/// and the answer.
async fn chat(
    broker: &TestBroker,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let url = broker.url(&format!("/chat/v4/rooms/{}{path}", urlencode(ROOM)));
    let mut request = http().request(method, url).bearer_auth(token);
    if !body.is_null() {
        request = request.json(&body);
    }
    let response = send(request).await;
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

/// R1 with idempotency `key` as `token`.
async fn send_keyed(broker: &TestBroker, token: &str, key: &str, text: &str) -> (u16, Value) {
    let path = format!("/messages?idempotencyKey={}", urlencode(key));
    chat(
        broker,
        token,
        reqwest::Method::POST,
        &path,
        json!({"text": text}),
    )
    .await
}

/// The next MESSAGE's only message.
async fn next_message(watcher: &mut Client) -> Message {
    let frame = watcher.expect(Action::Message).await;
    let mut messages = frame.messages.expect("messages");
    assert_eq!(messages.len(), 1);
    messages.remove(0)
}

/// A marker publish on the room: once the watcher sees it, anything broadcast before it has
/// been seen too (the channel delivers in log order), so no second copy is on its way.
async fn marker(broker: &TestBroker, watcher: &mut Client, text: &str) {
    let (status, _) = chat(
        broker,
        &token("marker"),
        reqwest::Method::POST,
        "/messages",
        json!({"text": text}),
    )
    .await;
    assert_eq!(status, 201);
    let m = next_message(watcher).await;
    assert_eq!(m.client_id.as_deref(), Some("marker"), "no repeat: {m:?}");
}

#[tokio::test]
async fn repeats_with_the_same_key_answer_the_first_response_once() {
    let broker = TestBroker::start().await;
    let alice = token("alice");
    let (mut watcher, _) = broker.connect_key("json").await;
    watcher.attach(CHANNEL).await;

    // R1: the repeat answers the same message; one broadcast, one history item.
    let (status, first) = send_keyed(&broker, &alice, "k1", "hello").await;
    assert_eq!(status, 201, "{first}");
    next_message(&mut watcher).await;
    let (status, again) = send_keyed(&broker, &alice, "k1", "hello").await;
    assert_eq!((status, &again), (201, &first));
    marker(&broker, &mut watcher, "m1").await;

    // The same key from another client, or a new key, is a new message.
    let (_, bobs) = send_keyed(&broker, &token("bob"), "k1", "hello").await;
    assert_ne!(bobs["serial"], first["serial"]);
    next_message(&mut watcher).await;
    let (_, other) = send_keyed(&broker, &alice, "k2", "hello").await;
    assert_ne!(other["serial"], first["serial"]);
    next_message(&mut watcher).await;

    // R4: the repeat answers the same version; one more version, one broadcast.
    let serial = urlencode(first["serial"].as_str().expect("serial"));
    let edit = |key: &str| format!("/messages/{serial}?idempotencyKey={key}");
    let body = json!({"message": {"text": "edited"}, "description": "typo"});
    let (status, edited) = chat(
        &broker,
        &alice,
        reqwest::Method::PUT,
        &edit("e1"),
        body.clone(),
    )
    .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(
        next_message(&mut watcher).await.action,
        Some(Message::UPDATE)
    );
    let (status, again) = chat(
        &broker,
        &alice,
        reqwest::Method::PUT,
        &edit("e1"),
        body.clone(),
    )
    .await;
    assert_eq!((status, &again), (200, &edited));
    marker(&broker, &mut watcher, "m2").await;

    // R5 likewise; the key of the edit names another operation, so it deletes.
    let delete = |key: &str| format!("/messages/{serial}/delete?idempotencyKey={key}");
    let (status, deleted) = chat(
        &broker,
        &alice,
        reqwest::Method::POST,
        &delete("d1"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["action"], "message.delete");
    assert_eq!(
        next_message(&mut watcher).await.action,
        Some(Message::DELETE)
    );
    let (status, again) = chat(
        &broker,
        &alice,
        reqwest::Method::POST,
        &delete("d1"),
        json!({}),
    )
    .await;
    assert_eq!((status, &again), (200, &deleted));
    let (status, by_edit_key) = chat(
        &broker,
        &alice,
        reqwest::Method::POST,
        &delete("e1"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    assert_ne!(
        by_edit_key["version"]["serial"],
        deleted["version"]["serial"]
    );
    next_message(&mut watcher).await;
    marker(&broker, &mut watcher, "m3").await;

    // One create, one edit and two deletes stored.
    let (status, versions) = chat(
        &broker,
        &alice,
        reqwest::Method::GET,
        &format!("/messages/{serial}/versions"),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{versions}");
    let actions: Vec<&str> = versions
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| v["action"].as_str().expect("action"))
        .collect();
    assert_eq!(
        actions,
        [
            "message.create",
            "message.update",
            "message.delete",
            "message.delete"
        ]
    );
    // History: alice's two, bob's one and the three markers.
    let (status, listed) = chat(
        &broker,
        &alice,
        reqwest::Method::GET,
        "/messages",
        Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().expect("an array").len(), 6, "{listed}");
}

#[tokio::test]
async fn bad_keys_are_refused() {
    let broker = TestBroker::start().await;
    let alice = token("alice");
    for key in [String::new(), "x".repeat(257)] {
        let (status, error) = send_keyed(&broker, &alice, &key, "hi").await;
        assert_eq!(status, 400, "{error}");
        assert_eq!(error["error"]["code"], 40003);
        let message = error["error"]["message"].as_str().expect("a message");
        assert!(message.contains("idempotencyKey"), "{message}");
    }
    let (status, _) = send_keyed(&broker, &alice, &"é".repeat(256), "hi").await;
    assert_eq!(status, 201, "256 characters are fine");
}
