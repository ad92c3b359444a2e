//! Chat features on plain channels (issue 18, `../shared/ably-chat.md`), with real brokers on
//! 127.0.0.1:0: ephemeral messages (§5.9) are delivered and never stored.

use protocol::{Action, Data, Message, ProtocolMessage};
use tests::{history, TestBroker};

/// A MESSAGE with one message per `(data, ephemeral)`.
fn publish(channel: &str, msg_serial: u64, items: &[(&str, bool)]) -> ProtocolMessage {
    let messages = items
        .iter()
        .map(|(data, ephemeral)| Message {
            name: Some("typing.started".into()),
            data: Some(Data::String((*data).into())),
            extras: ephemeral.then(|| serde_json::json!({"ephemeral": true, "headers": {"a": 1}})),
            ..Message::default()
        })
        .collect();
    ProtocolMessage {
        msg_serial: Some(msg_serial),
        messages: Some(messages),
        ..ProtocolMessage::for_channel(Action::Message, channel)
    }
}

/// An ephemeral message reaches subscribers at once, without serial or channelSerial; its
/// ACK has a null serial where a stored message has its serial; history, rewind and resume
/// never return it.
#[tokio::test]
async fn ephemeral_messages_are_delivered_and_never_stored() {
    let broker = TestBroker::start().await;
    let (mut subscriber, _) = broker.connect_key("msgpack").await;
    subscriber.attach("room").await;
    let (mut publisher, _) = broker.connect_key("json").await;
    publisher
        .send(&publish("room", 0, &[("typing", true)]))
        .await;
    let ack = publisher.expect(Action::Ack).await;
    assert_eq!(ack.res.unwrap()[0].serials, [None]);
    let typing = subscriber.expect(Action::Message).await;
    assert_eq!(typing.channel_serial, None);
    let item = &typing.messages.as_ref().unwrap()[0];
    assert_eq!(
        (item.serial.as_deref(), item.data.as_ref()),
        (None, Some(&Data::String("typing".into())))
    );
    assert_eq!(
        item.extras.as_ref().unwrap()["headers"]["a"],
        1,
        "extras kept"
    );
    assert!(item.timestamp.is_some() && item.id.is_some());

    publisher
        .send(&publish("room", 1, &[("stored", false), ("gone", true)]))
        .await;
    let ack = publisher.expect(Action::Ack).await;
    let serials = &ack.res.unwrap()[0].serials;
    assert!(serials[0].is_some() && serials[1].is_none(), "{serials:?}");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let frame = subscriber.expect(Action::Message).await;
        for m in frame.messages.unwrap() {
            let text = match &m.data {
                Some(Data::String(text)) => text.clone(),
                other => panic!("string data expected, got {other:?}"),
            };
            seen.push((text, m.serial.is_some(), frame.channel_serial.is_some()));
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [("gone".into(), false, false), ("stored".into(), true, true)]
    );

    let stored: Vec<_> = history(&broker, "room", "")
        .await
        .iter()
        .map(|m| m["data"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stored, ["stored"]);
    let (mut rewinder, _) = broker.connect_key("json").await;
    rewinder
        .send(&ProtocolMessage {
            params: Some([("rewind".to_owned(), "10".to_owned())].into()),
            ..ProtocolMessage::for_channel(Action::Attach, "room")
        })
        .await;
    rewinder.expect(Action::Attached).await;
    let replayed = rewinder.expect(Action::Message).await;
    assert_eq!(tests::texts(&replayed), ["stored"]);
}

/// A change (`action` 1 update, 2 delete, 5 append) to the message `serial`.
fn change(
    channel: &str,
    msg_serial: u64,
    action: u64,
    serial: &str,
    data: Option<&str>,
) -> ProtocolMessage {
    ProtocolMessage {
        msg_serial: Some(msg_serial),
        messages: Some(vec![Message {
            action: Some(action),
            serial: Some(serial.into()),
            data: data.map(|d| Data::String(d.into())),
            version: Some(protocol::MessageVersion {
                description: Some(format!("change {msg_serial}")),
                metadata: Some(serde_json::json!({"reason": "test"})),
                ..Default::default()
            }),
            ..Message::default()
        }]),
        ..ProtocolMessage::for_channel(Action::Message, channel)
    }
}

/// The one message of the next MESSAGE frame.
async fn next_message(client: &mut tests::Client) -> (ProtocolMessage, Message) {
    let mut frame = client.expect(Action::Message).await;
    let message = frame.messages.take().unwrap().remove(0);
    (frame, message)
}

fn data_of(message: &Message) -> &str {
    match &message.data {
        Some(Data::String(text)) => text,
        other => panic!("string data expected, got {other:?}"),
    }
}

/// Mutable messages (ably-chat.md §2, §5.3, §5.8): an update, an append and a delete reach
/// subscribers with the original's serial and a version serial that sorts after every
/// earlier one (also the ACK's serial and the frame's channelSerial); an append reaches them
/// as the increment; history, `GET …/messages/{serial}` show the message once, at its place,
/// in its latest version; `…/versions` lists every version oldest first; rewind replays each
/// change at its position.
#[tokio::test]
async fn a_message_changes_in_place() {
    let broker = TestBroker::start().await;
    let (mut subscriber, _) = broker.connect_key("msgpack").await;
    subscriber.attach("edits").await;
    let (mut author, _) = broker.connect_key("json").await;
    author.publish("edits", 0, "hello").await;
    author.expect_acks(1).await;
    let (_, original) = next_message(&mut subscriber).await;
    let serial = original.serial.clone().unwrap();
    let created_at = original.timestamp;

    let mut last_version = serial.clone();
    for (msg_serial, action, data, seen) in [
        (1, Message::UPDATE, Some("hi"), "hi"),
        (2, Message::APPEND, Some(" world"), " world"),
        (3, Message::DELETE, None, "hi world"),
    ] {
        author
            .send(&change("edits", msg_serial, action, &serial, data))
            .await;
        let ack = author.expect(Action::Ack).await;
        let version_serial = ack.res.unwrap()[0].serials[0].clone().unwrap();
        let (frame, changed) = next_message(&mut subscriber).await;
        assert_eq!(changed.action, Some(action));
        assert_eq!(
            changed.serial.as_deref(),
            Some(serial.as_str()),
            "the original's serial"
        );
        assert_eq!(data_of(&changed), seen);
        let version = changed.version.clone().unwrap();
        assert_eq!(version.serial.as_deref(), Some(version_serial.as_str()));
        assert_eq!(
            frame.channel_serial.as_deref(),
            Some(version_serial.as_str())
        );
        assert!(
            version_serial > last_version,
            "{version_serial} after {last_version}"
        );
        assert_eq!(version.description, Some(format!("change {msg_serial}")));
        assert_eq!(version.metadata.unwrap()["reason"], "test");
        last_version = version_serial;
    }
    author.publish("edits", 4, "next").await;
    author.expect_acks(1).await;

    let stored = history(&broker, "edits", "direction=forwards").await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(
        (
            &stored[0]["serial"],
            &stored[0]["data"],
            &stored[0]["action"]
        ),
        (
            &serde_json::json!(serial),
            &serde_json::json!("hi world"),
            &serde_json::json!(2)
        )
    );
    assert_eq!(
        stored[0]["timestamp"],
        serde_json::json!(created_at),
        "created at"
    );
    assert_eq!(
        stored[0]["version"]["serial"],
        serde_json::json!(last_version)
    );
    assert_eq!(stored[1]["data"], "next");
    let backwards = history(&broker, "edits", "limit=1").await;
    assert_eq!(
        backwards[0]["data"], "next",
        "newest first, changes left out"
    );

    let url = |tail: &str| {
        broker.url(&format!(
            "/channels/edits/messages/{}{tail}",
            tests::urlencode(&serial)
        ))
    };
    let one = tests::json(
        tests::http()
            .get(url(""))
            .header("authorization", tests::basic_auth()),
    )
    .await;
    assert_eq!(
        (&one["data"], &one["action"]),
        (&serde_json::json!("hi world"), &serde_json::json!(2))
    );
    let all = tests::json(
        tests::http()
            .get(url("/versions"))
            .header("authorization", tests::basic_auth()),
    )
    .await;
    let texts: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["hello", "hi", "hi world", "hi world"]);
    let unknown = tests::send(
        tests::http()
            .get(broker.url("/channels/edits/messages/nope-1"))
            .header("authorization", tests::basic_auth()),
    )
    .await;
    assert_eq!(unknown.status(), 404);

    let (mut rewinder, _) = broker.connect_key("json").await;
    rewinder
        .send(&ProtocolMessage {
            params: Some([("rewind".to_owned(), "10".to_owned())].into()),
            ..ProtocolMessage::for_channel(Action::Attach, "edits")
        })
        .await;
    rewinder.expect(Action::Attached).await;
    let mut replayed = Vec::new();
    while replayed.len() < 5 {
        let (_, m) = next_message(&mut rewinder).await;
        replayed.push((m.action.unwrap(), data_of(&m).to_owned()));
    }
    assert_eq!(
        replayed,
        [
            (0, "hello".into()),
            (1, "hi".into()),
            (1, "hi world".into()),
            (2, "hi world".into()),
            (0, "next".into())
        ]
    );
}

/// A client connected with `capability` as `client_id`.
async fn client_with(
    broker: &TestBroker,
    client_id: Option<&str>,
    capability: &str,
) -> tests::Client {
    let mut claims =
        serde_json::json!({"exp": tests::now_secs() + 600, "x-ably-capability": capability});
    if let Some(id) = client_id {
        claims["x-ably-clientId"] = id.into();
    }
    let token = tests::ably_jwt(tests::KEY, claims);
    let mut client = broker
        .connect(&format!("access_token={token}&format=json"))
        .await;
    client.expect(Action::Connected).await;
    client
}

/// `message-update-own`/`message-delete-own` allow changing one's own messages only: another
/// user's is refused (40160), a client without a clientId cannot be the author (40166), and
/// a serial the channel does not hold is 40400. Nothing refused is stored.
#[tokio::test]
async fn own_rights_cover_own_messages_only() {
    let broker = TestBroker::start().await;
    let cap =
        r#"{"room":["publish","subscribe","history","message-update-own","message-delete-own"]}"#;
    let mut alice = client_with(&broker, Some("alice"), cap).await;
    let mut bob = client_with(&broker, Some("bob"), cap).await;
    let mut nobody = client_with(&broker, None, cap).await;
    alice.publish("room", 0, "mine").await;
    let ack = alice.expect(Action::Ack).await;
    let serial = ack.res.unwrap()[0].serials[0].clone().unwrap();
    for (client, code) in [(&mut bob, 40160), (&mut nobody, 40166)] {
        client
            .send(&change("room", 0, Message::UPDATE, &serial, Some("theirs")))
            .await;
        assert_eq!(client.expect(Action::Nack).await.error.unwrap().code, code);
    }
    bob.send(&change(
        "room",
        1,
        Message::DELETE,
        "x-0000000000000001",
        None,
    ))
    .await;
    assert_eq!(bob.expect(Action::Nack).await.error.unwrap().code, 40400);
    alice
        .send(&change(
            "room",
            1,
            Message::UPDATE,
            &serial,
            Some("still mine"),
        ))
        .await;
    assert_eq!(alice.expect(Action::Ack).await.msg_serial, Some(1));
    let stored = history(&broker, "room", "").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["data"], "still mine");
    let no_rights = client_with(&broker, Some("carol"), r#"{"room":["publish"]}"#).await;
    let mut carol = no_rights;
    carol
        .send(&change("room", 0, Message::DELETE, &serial, None))
        .await;
    assert_eq!(carol.expect(Action::Nack).await.error.unwrap().code, 40160);
}

/// ably-js REST `updateMessage()` sends `PATCH /channels/{c}/messages/{serial}` (RSL15) with
/// the change: it answers `{versionSerial}`, and subscribers and history see the update.
#[tokio::test]
async fn rest_patch_updates_a_message() {
    let broker = TestBroker::start().await;
    let (mut subscriber, _) = broker.connect_key("json").await;
    subscriber.attach("patched").await;
    let (mut author, _) = broker.connect_key("json").await;
    author.publish("patched", 0, "draft").await;
    let serial = author.expect(Action::Ack).await.res.unwrap()[0].serials[0]
        .clone()
        .unwrap();
    next_message(&mut subscriber).await;
    let answer = tests::json(
        tests::http()
            .patch(broker.url(&format!("/channels/patched/messages/{}", tests::urlencode(&serial))))
            .header("authorization", tests::basic_auth())
            .json(&serde_json::json!({"action": 1, "data": "final", "version": {"description": "done"}})),
    )
    .await;
    let version_serial = answer["versionSerial"].as_str().expect("a version serial");
    let (_, update) = next_message(&mut subscriber).await;
    assert_eq!(
        update.version.as_ref().unwrap().serial.as_deref(),
        Some(version_serial)
    );
    assert_eq!(data_of(&update), "final");
    assert_eq!(history(&broker, "patched", "").await[0]["data"], "final");
}
