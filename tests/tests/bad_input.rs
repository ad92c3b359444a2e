//! Bad input (§11, §2): malformed frames, wrong field types, unknown actions, oversize
//! messages and frames, invalid channel names. Each gets an Ably error, the connection stays
//! usable where the protocol allows, and acknowledged messages are never lost.

use protocol::{Action, ProtocolMessage};
use tests::{texts, TestBroker};
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test]
async fn a_publish_with_wrong_field_types_is_nacked_and_the_connection_goes_on() {
    let broker = TestBroker::start().await;
    let (mut client, _) = broker.connect_key("json").await;
    client.attach("ok").await;
    client
        .send_raw(WsMessage::Text(
            r#"{"action":15,"msgSerial":0,"channel":"ok","messages":"oops"}"#.into(),
        ))
        .await;
    let nack = client.expect(Action::Nack).await;
    assert_eq!(
        (nack.msg_serial, nack.error.unwrap().code),
        (Some(0), 40000)
    );
    client.publish("ok", 1, "after").await;
    assert_eq!(texts(&client.expect(Action::Message).await), ["after"]);
    assert_eq!(client.expect(Action::Ack).await.msg_serial, Some(1));
}

#[tokio::test]
async fn oversize_messages_bad_names_and_bad_data_get_precise_codes() {
    let broker = TestBroker::start_with(|c| c.limits.max_message_size = 1000).await;
    let (mut client, _) = broker.connect_key("json").await;
    client.publish("big", 0, &"x".repeat(1001)).await;
    assert_eq!(client.expect(Action::Nack).await.error.unwrap().code, 40009);
    client.publish("[meta]x", 1, "hi").await;
    assert_eq!(client.expect(Action::Nack).await.error.unwrap().code, 40010);
    client
        .send_raw(WsMessage::Text(
            r#"{"action":15,"msgSerial":2,"channel":"c","messages":[{"data":"%%","encoding":"base64"}]}"#.into(),
        ))
        .await;
    assert_eq!(client.expect(Action::Nack).await.error.unwrap().code, 40013);
    client
        .send(&ProtocolMessage::for_channel(
            Action::Attach,
            "n".repeat(300),
        ))
        .await;
    assert_eq!(
        client.expect(Action::Error).await.error.unwrap().code,
        40010
    );
    client.publish("fine", 3, "still works").await;
    assert_eq!(client.expect(Action::Ack).await.msg_serial, Some(3));
}

#[tokio::test]
async fn unknown_actions_are_refused_without_dropping_the_connection() {
    let broker = TestBroker::start().await;
    let (mut client, _) = broker.connect_key("msgpack").await;
    client
        .send(&ProtocolMessage {
            msg_serial: Some(0),
            ..ProtocolMessage::new(Action::Unknown(21))
        })
        .await;
    assert_eq!(client.expect(Action::Nack).await.error.unwrap().code, 40000);
    client
        .send(&ProtocolMessage {
            channel: Some("c".into()),
            ..ProtocolMessage::new(Action::Unknown(99))
        })
        .await;
    assert_eq!(
        client.expect(Action::Error).await.channel.as_deref(),
        Some("c")
    );
    client.publish("c", 1, "alive").await;
    assert_eq!(client.expect(Action::Ack).await.msg_serial, Some(1));
}

#[tokio::test]
async fn garbage_frames_and_oversize_frames_fail_only_that_connection() {
    let broker = TestBroker::start_with(|c| {
        c.limits.max_message_size = 4096;
        c.limits.max_frame_size = 8192;
    })
    .await;
    let (mut bystander, _) = broker.connect_key("json").await;
    bystander.attach("calm").await;

    let (mut garbage, _) = broker.connect_key("json").await;
    garbage
        .send_raw(WsMessage::Text("this is not json".into()))
        .await;
    assert_eq!(
        garbage.expect(Action::Error).await.error.unwrap().code,
        40000
    );
    assert!(garbage.next().await.is_none());

    let (mut packed, _) = broker.connect_key("msgpack").await;
    packed
        .send_raw(WsMessage::Binary(vec![0xc1, 0xff, 0x00].into()))
        .await;
    assert_eq!(
        packed.expect(Action::Error).await.error.unwrap().code,
        40000
    );

    let (mut huge, _) = broker.connect_key("json").await;
    huge.send_raw(WsMessage::Text("x".repeat(20_000).into()))
        .await;
    assert_eq!(huge.expect(Action::Error).await.error.unwrap().code, 40009);

    let (mut publisher, _) = broker.connect_key("json").await;
    publisher.publish("calm", 0, "unaffected").await;
    assert_eq!(
        texts(&bystander.expect(Action::Message).await),
        ["unaffected"]
    );
}

#[tokio::test]
async fn a_flood_of_publishes_is_absorbed_with_every_one_acked() {
    let broker = TestBroker::start_with(|c| c.limits.max_pending_publishes = 8).await;
    let (mut client, _) = broker.connect_key("msgpack").await;
    for i in 0..2000 {
        client.publish("flood", i, "f").await;
    }
    // Every msgSerial acknowledged once, in order (an ACK may cover a run of them, §7.3).
    let mut next = 0;
    while next < 2000 {
        let ack = client.expect(Action::Ack).await;
        assert_eq!(ack.msg_serial, Some(next));
        next += tests::acked_by(&ack);
    }
    assert_eq!(next, 2000);
}

/// A client that opens a socket and never finishes its HTTP request is dropped once the
/// handshake timeout passes, without holding anything else up.
#[tokio::test]
async fn a_handshake_that_never_completes_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = TestBroker::start_with(|c| c.limits.handshake_timeout_ms = 200).await;
    let mut slow = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    slow.write_all(b"GET /?format=json HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (_client, connected) = broker.connect_key("json").await;
    assert!(
        connected.connection_id.is_some(),
        "others connect meanwhile"
    );
    let mut rest = Vec::new();
    tokio::time::timeout(tests::SAFETY, slow.read_to_end(&mut rest))
        .await
        .expect("the broker closes the half-open handshake")
        .ok();
}
