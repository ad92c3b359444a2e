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
