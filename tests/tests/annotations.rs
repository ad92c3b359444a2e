//! Annotations and their summaries (issue 18, `../shared/ably-chat.md` §4, §5.6), with real
//! brokers on 127.0.0.1:0: the realtime ANNOTATION action (RTAN1–4) both ways, the
//! `message.summary` entries every subscriber gets, summaries on history and `getMessage`,
//! the REST annotation routes (RSAN1, RSAN3), rewind without raw annotations, the refusals,
//! and the chat API's message reactions (R7–R9).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use protocol::{flags, Action, Annotation, ErrorInfo, Message, ProtocolMessage};
use serde_json::{json, Value};
use tests::{
    ably_jwt, basic_auth, history, http, json, now_secs, send, urlencode, Client, TestBroker, KEY,
};

const DISTINCT: &str = "reaction:distinct.v1";
const MULTIPLE: &str = "reaction:multiple.v1";

/// A connection with the test key as `client_id`, in `format`.
async fn connect_as(broker: &TestBroker, client_id: &str, format: &str) -> Client {
    let mut client = broker
        .connect(&format!(
            "key={}&format={format}&clientId={client_id}",
            urlencode(KEY)
        ))
        .await;
    client.expect(Action::Connected).await;
    client
}

/// Attaches `channel` asking for `modes` (none: the default ones).
async fn attach_with(client: &mut Client, channel: &str, modes: u64) {
    client
        .send(&ProtocolMessage {
            flags: (modes != 0).then_some(modes),
            ..ProtocolMessage::for_channel(Action::Attach, channel)
        })
        .await;
    client.expect(Action::Attached).await;
}

/// An annotation of `serial` of type `kind`, named `name`.
fn note(serial: &str, kind: &str, name: &str) -> Annotation {
    Annotation {
        message_serial: Some(serial.to_owned()),
        kind: Some(kind.to_owned()),
        name: Some(name.to_owned()),
        ..Annotation::default()
    }
}

/// An ANNOTATION frame with `annotations`.
fn annotate(channel: &str, msg_serial: u64, annotations: Vec<Annotation>) -> ProtocolMessage {
    ProtocolMessage {
        msg_serial: Some(msg_serial),
        annotations: Some(annotations),
        ..ProtocolMessage::for_channel(Action::Annotation, channel)
    }
}

/// Publishes one message and returns its serial.
async fn publish_one(client: &mut Client, channel: &str, msg_serial: u64, data: &str) -> String {
    client.publish(channel, msg_serial, data).await;
    let ack = client.expect(Action::Ack).await;
    ack.res.unwrap()[0].serials[0].clone().expect("a serial")
}

/// The NACK error of the next answer.
async fn nack(client: &mut Client) -> ErrorInfo {
    client.expect(Action::Nack).await.error.expect("an error")
}

/// The summary a `message.summary` frame carries.
fn summary_of(frame: &ProtocolMessage) -> (String, Value) {
    let m: &Message = &frame.messages.as_ref().expect("messages")[0];
    assert_eq!(m.action, Some(Message::SUMMARY), "{frame:?}");
    assert!(frame.channel_serial.is_some(), "summaries are positions");
    (
        m.serial.clone().expect("the message's serial"),
        m.annotations.as_ref().expect("annotations")["summary"].clone(),
    )
}

/// Annotations reach the attachers with ANNOTATION_SUBSCRIBE as ANNOTATION frames; every
/// subscriber gets each changed summary, one per publish, and none for an annotation that
/// changes nothing; history, `getMessage` and the annotation list read back what happened;
/// a rewind replays the summaries but never raw annotations to those who did not ask.
#[tokio::test]
async fn annotations_are_delivered_summarised_and_read_back() {
    let broker = TestBroker::start().await;
    let (mut publisher, _) = broker.connect_key("json").await;
    let serial = publish_one(&mut publisher, "photos", 0, "pic").await;

    let mut watcher = broker.connect_key("msgpack").await.0;
    let modes = flags::MODE_SUBSCRIBE | flags::MODE_ANNOTATION_SUBSCRIBE;
    attach_with(&mut watcher, "photos", modes).await;
    let mut plain = broker.connect_key("json").await.0;
    plain.attach("photos").await;
    let mut alice = connect_as(&broker, "alice", "json").await;
    let mut bob = connect_as(&broker, "bob", "msgpack").await;

    alice
        .send(&annotate("photos", 0, vec![note(&serial, DISTINCT, "👍")]))
        .await;
    alice.expect(Action::Ack).await;
    let raw = watcher.expect(Action::Annotation).await;
    let a = &raw.annotations.as_ref().unwrap()[0];
    assert_eq!(
        (
            a.kind.as_deref(),
            a.name.as_deref(),
            a.client_id.as_deref(),
            a.message_serial.as_deref(),
            a.action
        ),
        (
            Some(DISTINCT),
            Some("👍"),
            Some("alice"),
            Some(serial.as_str()),
            Some(0)
        )
    );
    assert!(a.serial.is_some(), "the annotation's own position");
    assert_eq!(a.serial, raw.channel_serial);
    assert!(a.id.is_some() && a.timestamp.is_some() && a.connection_id.is_some());
    let expected =
        json!({DISTINCT: {"👍": {"total": 1, "clientIds": ["alice"], "clipped": false}}});
    assert_eq!(
        summary_of(&watcher.expect(Action::Message).await),
        (serial.clone(), expected.clone())
    );
    assert_eq!(
        summary_of(&plain.expect(Action::Message).await).1,
        expected,
        "no ANNOTATION frame for an attacher without ANNOTATION_SUBSCRIBE"
    );

    // Two annotations in one frame make one summary.
    let mut three = note(&serial, MULTIPLE, "🎉");
    three.count = Some(3);
    bob.send(&annotate(
        "photos",
        0,
        vec![note(&serial, DISTINCT, "👍"), three],
    ))
    .await;
    bob.expect(Action::Ack).await;
    let raw = watcher.expect(Action::Annotation).await;
    assert_eq!(raw.annotations.unwrap().len(), 2);
    let (_, summary) = summary_of(&watcher.expect(Action::Message).await);
    assert_eq!(
        summary[DISTINCT]["👍"]["clientIds"],
        json!(["alice", "bob"])
    );
    assert_eq!(
        summary[MULTIPLE]["🎉"],
        json!({"total": 3, "clientIds": {"bob": 3}, "totalUnidentified": 0, "clipped": false, "totalClientIds": 1})
    );
    assert_eq!(summary_of(&plain.expect(Action::Message).await).1, summary);

    // The same distinct reaction again changes nothing: raw annotation, no summary.
    alice
        .send(&annotate("photos", 1, vec![note(&serial, DISTINCT, "👍")]))
        .await;
    alice.expect(Action::Ack).await;
    watcher.expect(Action::Annotation).await;
    let mut delete = note(&serial, DISTINCT, "👍");
    delete.action = Some(Annotation::DELETE);
    alice.send(&annotate("photos", 2, vec![delete])).await;
    alice.expect(Action::Ack).await;
    let raw = watcher.expect(Action::Annotation).await;
    assert_eq!(raw.annotations.unwrap()[0].action, Some(Annotation::DELETE));
    let (_, summary) = summary_of(&watcher.expect(Action::Message).await);
    assert_eq!(summary[DISTINCT]["👍"]["clientIds"], json!(["bob"]));
    // The plain subscriber's next frame is that summary: the no-op made none.
    assert_eq!(summary_of(&plain.expect(Action::Message).await).1, summary);

    // History: the message once, with its summary; getMessage the same.
    let items = history(&broker, "photos", "").await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["data"], "pic");
    assert_eq!(items[0]["annotations"]["summary"], summary);
    let one = json(
        http()
            .get(broker.url(&format!("/channels/photos/messages/{}", urlencode(&serial))))
            .header("authorization", basic_auth()),
    )
    .await;
    assert_eq!(one["annotations"]["summary"], summary);

    // The annotation list, oldest first, a page at a time.
    let list = |query: String| {
        http()
            .get(broker.url(&format!(
                "/channels/photos/messages/{}/annotations?{query}",
                urlencode(&serial)
            )))
            .header("authorization", basic_auth())
    };
    let page = send(list("limit=3".into())).await;
    let link = page.headers()["link"].to_str().unwrap().to_owned();
    let first: Vec<Value> = page.json().await.unwrap();
    let names: Vec<(&str, &str)> = first
        .iter()
        .map(|a| (a["clientId"].as_str().unwrap(), a["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [("alice", DISTINCT), ("bob", DISTINCT), ("bob", MULTIPLE)]
    );
    let cursor = link
        .split("cursor=")
        .nth(1)
        .unwrap()
        .split('>')
        .next()
        .unwrap();
    let rest = json(list(format!("limit=3&cursor={cursor}"))).await;
    let actions: Vec<i64> = rest
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_i64().unwrap())
        .collect();
    assert_eq!(actions, [0, 1], "the no-op and the delete");

    // A rewind replays the message and its summaries, never the raw annotations.
    let (mut rewinder, _) = broker.connect_key("json").await;
    rewinder
        .send(&ProtocolMessage {
            params: Some([("rewind".to_owned(), "20".to_owned())].into()),
            ..ProtocolMessage::for_channel(Action::Attach, "photos")
        })
        .await;
    rewinder.expect(Action::Attached).await;
    publish_one(&mut publisher, "photos", 1, "marker").await;
    let mut replayed = Vec::new();
    loop {
        let frame = rewinder.next().await.expect("open");
        assert_ne!(frame.action, Action::Annotation, "no raw annotations");
        let m = &frame.messages.expect("messages")[0];
        if m.action == Some(Message::SUMMARY) {
            replayed.push("summary".to_owned());
            continue;
        }
        replayed.push(format!("{:?}", m.data.as_ref().unwrap()));
        if replayed.last().unwrap().contains("marker") {
            break;
        }
    }
    assert_eq!(
        replayed.len(),
        5,
        "pic, three summaries, marker: {replayed:?}"
    );
}

/// A resend of annotations with the ids the app set (idempotent publishing, RSL1k) is stored
/// once: it makes no second summary, and later summaries count it once.
#[tokio::test]
async fn a_resent_annotation_is_counted_once() {
    let broker = TestBroker::start().await;
    let (mut publisher, _) = broker.connect_key("json").await;
    let serial = publish_one(&mut publisher, "party", 0, "cake").await;
    let mut plain = broker.connect_key("msgpack").await.0;
    plain.attach("party").await;
    let mut alice = connect_as(&broker, "alice", "json").await;
    let mut bob = connect_as(&broker, "bob", "json").await;

    let mut tagged = note(&serial, MULTIPLE, "🎉");
    tagged.id = Some("alice-party-1".to_owned());
    for msg_serial in 0..2 {
        alice
            .send(&annotate("party", msg_serial, vec![tagged.clone()]))
            .await;
        alice.expect(Action::Ack).await;
    }
    bob.send(&annotate("party", 0, vec![note(&serial, MULTIPLE, "🎉")]))
        .await;
    bob.expect(Action::Ack).await;

    let first = summary_of(&plain.expect(Action::Message).await).1;
    assert_eq!(first[MULTIPLE]["🎉"]["clientIds"], json!({"alice": 1}));
    // The next summary is bob's: the resend made none, and is not counted in his.
    let next = summary_of(&plain.expect(Action::Message).await).1;
    assert_eq!(
        next[MULTIPLE]["🎉"]["clientIds"],
        json!({"alice": 1, "bob": 1}),
        "{next}"
    );
    assert_eq!(next[MULTIPLE]["🎉"]["total"], 2);
    let items = history(&broker, "party", "").await;
    assert_eq!(items[0]["annotations"]["summary"], next);
}

/// What an annotation publish is refused for: an unknown message (40400), an unknown type or
/// an unidentified client where the type counts clients (40003), no `annotation-publish`
/// capability, and an attachment without the ANNOTATION_PUBLISH mode (40160). Nothing refused
/// reaches the log.
#[tokio::test]
async fn bad_annotations_are_refused_and_lose_nothing() {
    let broker = TestBroker::start().await;
    let (mut publisher, _) = broker.connect_key("json").await;
    let serial = publish_one(&mut publisher, "refusals", 0, "m").await;
    let mut alice = connect_as(&broker, "alice", "json").await;

    let unknown = format!("{}9", serial);
    alice
        .send(&annotate(
            "refusals",
            0,
            vec![note(&unknown, DISTINCT, "x")],
        ))
        .await;
    assert_eq!(nack(&mut alice).await.code, 40400);
    alice
        .send(&annotate(
            "refusals",
            1,
            vec![note(&serial, "reaction:sum.v1", "x")],
        ))
        .await;
    assert_eq!(nack(&mut alice).await.code, 40003);
    // A good annotation beside a bad one: the whole frame is refused.
    alice
        .send(&annotate(
            "refusals",
            2,
            vec![note(&serial, DISTINCT, "ok"), note(&unknown, DISTINCT, "x")],
        ))
        .await;
    assert_eq!(nack(&mut alice).await.code, 40400);
    publisher
        .send(&annotate("refusals", 1, vec![note(&serial, DISTINCT, "x")]))
        .await;
    assert_eq!(
        nack(&mut publisher).await.code,
        40003,
        "distinct needs a clientId"
    );

    let token = ably_jwt(
        KEY,
        json!({"iat": now_secs(), "exp": now_secs() + 60, "x-ably-clientId": "carol",
               "x-ably-capability": r#"{"*":["publish","subscribe"]}"#}),
    );
    let mut carol = broker
        .connect(&format!("accessToken={}&format=json", urlencode(&token)))
        .await;
    carol.expect(Action::Connected).await;
    carol
        .send(&annotate("refusals", 0, vec![note(&serial, DISTINCT, "x")]))
        .await;
    assert_eq!(nack(&mut carol).await.code, 40160);

    attach_with(&mut alice, "refusals", flags::MODE_SUBSCRIBE).await;
    alice
        .send(&annotate("refusals", 3, vec![note(&serial, DISTINCT, "x")]))
        .await;
    assert_eq!(nack(&mut alice).await.code, 40160);

    let items = history(&broker, "refusals", "").await;
    assert_eq!(items.len(), 1);
    assert!(items[0].get("annotations").is_none(), "{items:?}");
    let listed = json(
        http()
            .get(broker.url(&format!(
                "/channels/refusals/messages/{}/annotations",
                urlencode(&serial)
            )))
            .header("authorization", basic_auth()),
    )
    .await;
    assert_eq!(listed, json!([]));
}

/// An Ably JWT for `client_id` with the chat user's capability, as a Bearer header.
fn chat_user(client_id: &str) -> String {
    let capability =
        r#"{"*":["publish","subscribe","history","annotation-publish","annotation-subscribe"]}"#;
    let token = ably_jwt(
        KEY,
        json!({"iat": now_secs(), "exp": now_secs() + 60, "x-ably-clientId": client_id,
               "x-ably-capability": capability}),
    );
    format!("Bearer {}", STANDARD.encode(token))
}

/// A chat REST call as `auth`: the status and the JSON answer.
async fn chat(
    broker: &TestBroker,
    auth: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http()
        .request(method, broker.url(&format!("/chat/v4/rooms/lobby{path}")))
        .header("authorization", auth)
        .header("x-ably-version", "4");
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = send(request).await;
    (response.status().as_u16(), response.json().await.unwrap())
}

/// The chat API's message reactions (§5.4 R7–R9): reactions of the three types add up in the
/// message's `reactions` as §5.6 says, a removal answers 200, `client-reactions` shows one
/// client's own, and bad reactions are refused.
#[tokio::test]
async fn chat_message_reactions_add_up() {
    use reqwest::Method;
    let broker = TestBroker::start().await;
    let (alice, bob) = (chat_user("alice"), chat_user("bob"));
    let (status, sent) = chat(
        &broker,
        &alice,
        Method::POST,
        "/messages",
        Some(json!({"text": "hello"})),
    )
    .await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(
        sent["reactions"],
        json!({"unique": {}, "distinct": {}, "multiple": {}})
    );
    let path = format!(
        "/messages/{}/reactions",
        urlencode(sent["serial"].as_str().unwrap())
    );
    let react = |auth: String, body: Value| {
        let (broker, path) = (&broker, path.clone());
        async move { chat(broker, &auth, Method::POST, &path, Some(body)).await }
    };
    for (auth, body) in [
        (&bob, json!({"type": "distinct", "name": "👍"})),
        (&alice, json!({"type": "distinct", "name": "👍"})),
        (&alice, json!({"type": "unique", "name": "❤️"})),
        (&bob, json!({"type": "multiple", "name": "🎉", "count": 2})),
        (&bob, json!({"type": "multiple", "name": "🎉"})),
    ] {
        let (status, answer) = react(auth.clone(), body).await;
        assert_eq!(status, 201, "{answer}");
        assert!(answer["serial"].is_string(), "{answer}");
    }
    let message_path = format!("/messages/{}", urlencode(sent["serial"].as_str().unwrap()));
    let (_, read) = chat(&broker, &alice, Method::GET, &message_path, None).await;
    let reactions = &read["reactions"];
    assert_eq!(
        reactions["distinct"]["👍"],
        json!({"total": 2, "clientIds": ["bob", "alice"], "clipped": false})
    );
    assert_eq!(reactions["unique"]["❤️"]["clientIds"], json!(["alice"]));
    assert_eq!(reactions["multiple"]["🎉"]["total"], 3);
    assert_eq!(reactions["multiple"]["🎉"]["clientIds"], json!({"bob": 3}));

    let (status, own) = chat(
        &broker,
        &alice,
        Method::GET,
        &format!("{message_path}/client-reactions?forClientId=bob"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{own}");
    assert_eq!(
        own["distinct"]["👍"],
        json!({"total": 2, "clientIds": ["bob"], "clipped": true})
    );
    assert_eq!(own["unique"], json!({}), "bob holds no unique reaction");
    assert_eq!(own["multiple"]["🎉"]["clientIds"], json!({"bob": 3}));

    let (status, removed) = chat(
        &broker,
        &bob,
        Method::DELETE,
        &format!("{path}?type=distinct&name={}", urlencode("👍")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{removed}");
    assert!(removed["serial"].is_string());
    let (_, listed) = chat(&broker, &alice, Method::GET, "/messages", None).await;
    assert_eq!(
        listed[0]["reactions"]["distinct"]["👍"]["clientIds"],
        json!(["alice"]),
        "history carries the reactions too"
    );

    for (body, code) in [
        (json!({"type": "sum", "name": "x"}), 40003),
        (json!({"type": "distinct", "name": "x", "count": 2}), 40003),
    ] {
        let (status, answer) = react(bob.clone(), body).await;
        assert_eq!(
            (status, answer["error"]["code"].as_i64()),
            (400, Some(code))
        );
    }
    let (status, answer) = chat(
        &broker,
        &bob,
        Method::POST,
        "/messages/nope/reactions",
        Some(json!({"type": "unique", "name": "x"})),
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_i64()),
        (404, Some(40400))
    );
}
