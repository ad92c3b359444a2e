//! The `@ably/chat` REST API (`../shared/ably-chat.md` §5.4, R1–R6 and R10): send, get, list
//! with `fromSerial` and paging, edit, delete and versions of chat messages in the
//! `RestMessage` shape, with JSON and msgpack bodies; edits are held to the `-own` rights; the
//! room's occupancy.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use protocol::{Action, Data};
use serde_json::{json, Value};
use tests::{ably_jwt, basic_auth, http, now_secs, send, urlencode, TestBroker, KEY};

/// What a chat user gets by default (§5.1): no `-any` rights.
const USER_CAPABILITY: &str = r#"{"*":["publish","subscribe","presence","history","channel-metadata","message-update-own","message-delete-own"]}"#;

/// An Ably JWT for `client_id` with [`USER_CAPABILITY`], valid for a minute.
fn user(client_id: &str) -> String {
    let token = ably_jwt(
        KEY,
        json!({
            "iat": now_secs(),
            "exp": now_secs() + 60,
            "x-ably-clientId": client_id,
            "x-ably-capability": USER_CAPABILITY,
        }),
    );
    format!("Bearer {}", STANDARD.encode(token))
}

/// Request and answer bodies in JSON or msgpack.
#[derive(Clone, Copy)]
enum Wire {
    Json,
    Msgpack,
}

/// A chat REST call: `method` on `/chat/v4/rooms/{room}{path}` as `auth`, with `body` in
/// `wire`; the HTTP status, the `Link` header and the answer as JSON.
async fn call(
    broker: &TestBroker,
    wire: Wire,
    auth: &str,
    method: reqwest::Method,
    room: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Option<String>, Value) {
    let url = broker.url(&format!("/chat/v4/rooms/{}{path}", urlencode(room)));
    let mut request = http()
        .request(method, url)
        .header("authorization", auth)
        .header("x-ably-version", "4");
    request = match wire {
        Wire::Json => request.header("accept", "application/json"),
        Wire::Msgpack => request.header("accept", "application/x-msgpack"),
    };
    if let Some(body) = body {
        request = match wire {
            Wire::Json => request.json(&body),
            Wire::Msgpack => request
                .header("content-type", "application/x-msgpack")
                .body(rmp_serde::to_vec_named(&body).expect("msgpack body")),
        };
    }
    let response = send(request).await;
    let status = response.status().as_u16();
    let link = response
        .headers()
        .get("link")
        .map(|l| l.to_str().expect("ASCII link").to_owned());
    let bytes = response.bytes().await.expect("a body");
    let answer = match wire {
        Wire::Json => serde_json::from_slice(&bytes).expect("a JSON answer"),
        Wire::Msgpack => rmp_serde::from_slice(&bytes).expect("a msgpack answer"),
    };
    (status, link, answer)
}

/// R1: sends `text` as `auth`, expecting 201; the RestMessage.
async fn send_text(broker: &TestBroker, wire: Wire, auth: &str, room: &str, body: Value) -> Value {
    let (status, _, message) = call(
        broker,
        wire,
        auth,
        reqwest::Method::POST,
        room,
        "/messages",
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{message}");
    message
}

/// R2 with `query`: the texts listed and the next page's query, if any.
async fn list(broker: &TestBroker, room: &str, query: &str) -> (Vec<String>, Option<String>) {
    let (status, link, items) = call(
        broker,
        Wire::Json,
        &user("reader"),
        reqwest::Method::GET,
        room,
        &format!("/messages?{query}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{items}");
    let texts = items
        .as_array()
        .expect("an array")
        .iter()
        .map(|m| m["text"].as_str().expect("text").to_owned())
        .collect();
    let next = link.map(|link| {
        assert!(link.ends_with("rel=\"next\""), "{link}");
        let start = link.find("<./messages?").expect("relative link") + "<./messages?".len();
        link[start..link.find(">;").expect("link end")].to_owned()
    });
    (texts, next)
}

/// Checks the RestMessage fields that do not depend on the content (§5.4).
fn assert_shape(message: &Value, action: &str) {
    assert_eq!(message["action"], action, "{message}");
    assert!(message["metadata"].is_object(), "metadata: {message}");
    assert!(message["headers"].is_object(), "headers: {message}");
    assert_eq!(
        message["reactions"],
        json!({"unique": {}, "distinct": {}, "multiple": {}})
    );
    assert!(message["timestamp"].as_i64().is_some(), "{message}");
    assert!(message["version"]["serial"].is_string(), "{message}");
    assert!(message["version"]["timestamp"].as_i64().is_some());
}

#[tokio::test]
async fn send_get_list_and_occupancy_in_json_and_msgpack() {
    let broker = TestBroker::start().await;
    let room = "lobby";
    let (mut sub, _) = broker.connect_key("json").await;
    sub.attach("lobby::$chat").await;

    let sent = send_text(
        &broker,
        Wire::Json,
        &user("alice"),
        room,
        json!({"text": "hi ✓", "metadata": {"k": [1, 2]}, "headers": {"h": "v", "n": 3}}),
    )
    .await;
    assert_shape(&sent, "message.create");
    assert_eq!(sent["text"], "hi ✓");
    assert_eq!(sent["clientId"], "alice");
    assert_eq!(sent["metadata"], json!({"k": [1, 2]}));
    assert_eq!(sent["headers"], json!({"h": "v", "n": 3}));
    assert_eq!(sent["version"]["serial"], sent["serial"]);
    assert_eq!(sent["version"]["timestamp"], sent["timestamp"]);

    // §5.3: on the channel, a chat.message with JSON text data.
    let frame = sub.expect(Action::Message).await;
    let m = &frame.messages.expect("messages")[0];
    assert_eq!(m.name.as_deref(), Some("chat.message"));
    assert_eq!(m.encoding.as_deref(), Some("json"));
    let Some(Data::String(data)) = &m.data else {
        panic!("JSON text data, got {:?}", m.data)
    };
    let data: Value = serde_json::from_str(data).expect("JSON data");
    assert_eq!(data, json!({"text": "hi ✓", "metadata": {"k": [1, 2]}}));
    assert_eq!(m.extras, Some(json!({"headers": {"h": "v", "n": 3}})));
    assert_eq!(
        m.serial.as_ref(),
        sent["serial"].as_str().map(str::to_owned).as_ref()
    );

    // msgpack in and out; omitted metadata and headers read as {}.
    let second = send_text(
        &broker,
        Wire::Msgpack,
        &user("bob"),
        room,
        json!({"text": "packed"}),
    )
    .await;
    assert_shape(&second, "message.create");
    assert_eq!(second["clientId"], "bob");
    assert_eq!(second["metadata"], json!({}));
    assert_eq!(second["headers"], json!({}));

    // R3, both formats.
    let serial = urlencode(sent["serial"].as_str().expect("serial"));
    for wire in [Wire::Json, Wire::Msgpack] {
        let (status, _, got) = call(
            &broker,
            wire,
            &user("reader"),
            reqwest::Method::GET,
            room,
            &format!("/messages/{serial}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{got}");
        assert_eq!(got, sent);
    }

    // R2: newest first by default.
    assert_eq!(list(&broker, room, "").await.0, ["packed", "hi ✓"]);
    assert_eq!(
        list(&broker, room, "direction=forwards").await.0,
        ["hi ✓", "packed"]
    );

    // R10: the realtime subscriber, no presence members.
    for wire in [Wire::Json, Wire::Msgpack] {
        let (status, _, occupancy) = call(
            &broker,
            wire,
            &user("reader"),
            reqwest::Method::GET,
            room,
            "/occupancy",
            None,
        )
        .await;
        assert_eq!(status, 200, "{occupancy}");
        assert_eq!(occupancy, json!({"connections": 1, "presenceMembers": 0}));
    }

    // A caller without a clientId cannot send (40012).
    let (status, _, error) = call(
        &broker,
        Wire::Json,
        &basic_auth(),
        reqwest::Method::POST,
        room,
        "/messages",
        Some(json!({"text": "anonymous"})),
    )
    .await;
    assert_eq!(
        (status, error["error"]["code"].as_i64()),
        (400, Some(40012))
    );
}

#[tokio::test]
async fn edit_delete_and_versions_keep_to_the_own_rights() {
    let broker = TestBroker::start().await;
    let room = "edits";
    let (mut sub, _) = broker.connect_key("json").await;
    sub.attach("edits::$chat").await;
    let sent = send_text(
        &broker,
        Wire::Json,
        &user("alice"),
        room,
        json!({"text": "teh", "metadata": {"a": 1}, "headers": {"h": "1"}}),
    )
    .await;
    sub.expect(Action::Message).await;
    let serial = urlencode(sent["serial"].as_str().expect("serial"));
    let edit =
        json!({"message": {"text": "the"}, "description": "typo", "metadata": {"why": "typo"}});

    // bob has only message-update-own: alice's message is not his (40160).
    let (status, _, error) = call(
        &broker,
        Wire::Json,
        &user("bob"),
        reqwest::Method::PUT,
        room,
        &format!("/messages/{serial}"),
        Some(edit.clone()),
    )
    .await;
    assert_eq!(
        (status, error["error"]["code"].as_i64()),
        (401, Some(40160))
    );

    // R4, PUT semantics: metadata and headers omitted become {}.
    let (status, _, edited) = call(
        &broker,
        Wire::Json,
        &user("alice"),
        reqwest::Method::PUT,
        room,
        &format!("/messages/{serial}"),
        Some(edit),
    )
    .await;
    assert_eq!(status, 200, "{edited}");
    assert_shape(&edited, "message.update");
    assert_eq!(edited["serial"], sent["serial"]);
    assert_eq!(edited["text"], "the");
    assert_eq!(edited["metadata"], json!({}));
    assert_eq!(edited["headers"], json!({}));
    assert_eq!(
        edited["timestamp"], sent["timestamp"],
        "creation time stays"
    );
    assert_eq!(edited["version"]["clientId"], "alice");
    assert_eq!(edited["version"]["description"], "typo");
    assert_eq!(edited["version"]["metadata"], json!({"why": "typo"}));
    let version = edited["version"]["serial"]
        .as_str()
        .expect("version serial");
    assert!(version > sent["serial"].as_str().expect("serial"));
    let update = sub
        .expect(Action::Message)
        .await
        .messages
        .expect("messages");
    assert_eq!(update[0].action, Some(1));

    // R5 in msgpack, with an empty body in JSON after it: each delete is a new version.
    let (status, _, deleted) = call(
        &broker,
        Wire::Msgpack,
        &user("alice"),
        reqwest::Method::POST,
        room,
        &format!("/messages/{serial}/delete"),
        Some(json!({"description": "gone"})),
    )
    .await;
    assert_eq!(status, 200, "{deleted}");
    assert_shape(&deleted, "message.delete");
    assert_eq!(deleted["text"], "the", "a delete keeps the content");
    assert_eq!(deleted["version"]["description"], "gone");
    assert!(deleted["version"]["serial"].as_str().expect("serial") > version);

    // bob cannot delete it either.
    let (status, _, error) = call(
        &broker,
        Wire::Json,
        &user("bob"),
        reqwest::Method::POST,
        room,
        &format!("/messages/{serial}/delete"),
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (status, error["error"]["code"].as_i64()),
        (401, Some(40160))
    );

    // R6: oldest first.
    for wire in [Wire::Json, Wire::Msgpack] {
        let (status, _, versions) = call(
            &broker,
            wire,
            &user("reader"),
            reqwest::Method::GET,
            room,
            &format!("/messages/{serial}/versions"),
            None,
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
            ["message.create", "message.update", "message.delete"]
        );
        assert_eq!(versions[0], sent);
        assert_eq!(versions[1], edited);
        assert_eq!(versions[2], deleted);
    }
    // R6 in pages: the Link names where the next page starts.
    let (status, link, first) = call(
        &broker,
        Wire::Json,
        &user("reader"),
        reqwest::Method::GET,
        room,
        &format!("/messages/{serial}/versions?limit=2"),
        None,
    )
    .await;
    assert_eq!((status, first.as_array().map(Vec::len)), (200, Some(2)));
    let link = link.expect("a next page");
    let next = link
        .split(['<', '>'])
        .nth(1)
        .and_then(|l| l.strip_prefix("./versions"))
        .expect("a relative link");
    let (_, link, rest) = call(
        &broker,
        Wire::Msgpack,
        &user("reader"),
        reqwest::Method::GET,
        room,
        &format!("/messages/{serial}/versions{next}"),
        None,
    )
    .await;
    assert_eq!(
        rest,
        json!([deleted]),
        "the last version on the second page"
    );
    assert_eq!(link, None, "no page after it");
    let (status, _, latest) = call(
        &broker,
        Wire::Json,
        &user("reader"),
        reqwest::Method::GET,
        room,
        &format!("/messages/{serial}"),
        None,
    )
    .await;
    assert_eq!((status, &latest), (200, &deleted));

    // Unknown messages: 404 40400, for reads and edits.
    let unknown = urlencode(&sent["serial"].as_str().expect("serial").replace('-', "-9"));
    for (method, path, body) in [
        (reqwest::Method::GET, format!("/messages/{unknown}"), None),
        (
            reqwest::Method::GET,
            format!("/messages/{unknown}/versions"),
            None,
        ),
        (
            reqwest::Method::PUT,
            format!("/messages/{unknown}"),
            Some(json!({"message": {"text": "x"}})),
        ),
    ] {
        let (status, _, error) = call(
            &broker,
            Wire::Json,
            &user("alice"),
            method,
            room,
            &path,
            body,
        )
        .await;
        assert_eq!(
            (status, error["error"]["code"].as_i64()),
            (404, Some(40400))
        );
    }
}

#[tokio::test]
async fn history_lists_latest_versions_up_to_from_serial_and_pages() {
    let broker = TestBroker::start().await;
    let room = "history room";
    let alice = user("alice");
    let mut serials = Vec::new();
    for i in 0..5 {
        let sent = send_text(
            &broker,
            Wire::Json,
            &alice,
            room,
            json!({"text": format!("m{i}")}),
        )
        .await;
        serials.push(sent["serial"].as_str().expect("serial").to_owned());
    }
    // A message of another name on the room's channel is not a chat message.
    let response = send(
        http()
            .post(broker.url(&format!(
                "/channels/{}/messages",
                urlencode("history room::$chat")
            )))
            .header("authorization", basic_auth())
            .json(&json!({"name": "other", "data": "not chat"})),
    )
    .await;
    assert_eq!(response.status(), 201);
    let (status, _, edited) = call(
        &broker,
        Wire::Json,
        &alice,
        reqwest::Method::PUT,
        room,
        &format!("/messages/{}", urlencode(&serials[1])),
        Some(json!({"message": {"text": "m1 edited"}})),
    )
    .await;
    assert_eq!(status, 200, "{edited}");
    let edit_position = edited["version"]["serial"].as_str().expect("version");

    // Each message once, at its place, in its latest version.
    let all = ["m4", "m3", "m2", "m1 edited", "m0"];
    assert_eq!(
        list(&broker, room, "").await,
        (all.map(String::from).to_vec(), None)
    );
    // Up to and including a create's position, and up to the edit's (a later position).
    let (texts, _) = list(
        &broker,
        room,
        &format!("fromSerial={}", urlencode(&serials[2])),
    )
    .await;
    assert_eq!(texts, ["m2", "m1 edited", "m0"]);
    let (texts, _) = list(
        &broker,
        room,
        &format!("fromSerial={}", urlencode(edit_position)),
    )
    .await;
    assert_eq!(texts, all);

    // Pages of two, following Link, with fromSerial kept.
    let mut query = format!("limit=2&fromSerial={}", urlencode(&serials[3]));
    let mut pages = Vec::new();
    loop {
        let (texts, next) = list(&broker, room, &query).await;
        pages.push(texts);
        match next {
            Some(next) => query = next,
            None => break,
        }
    }
    assert_eq!(
        pages,
        [vec!["m3", "m2"], vec!["m1 edited", "m0"]]
            .into_iter()
            .map(|p| p.into_iter().map(String::from).collect::<Vec<_>>())
            .collect::<Vec<_>>()[..],
    );
    let (texts, next) = list(&broker, room, "limit=3&direction=forwards").await;
    assert_eq!(texts, ["m0", "m1 edited", "m2"]);
    assert!(next.is_some());
    let (status, _, error) = call(
        &broker,
        Wire::Json,
        &alice,
        reqwest::Method::GET,
        room,
        "/messages?limit=1001",
        None,
    )
    .await;
    assert_eq!(
        (status, error["error"]["code"].as_i64()),
        (400, Some(40003))
    );
}
