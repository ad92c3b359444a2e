//! Realtime behaviour a client relies on, over real sockets (sections of
//! `../shared/ably-protocol.md` in each test's comment).

use protocol::{flags, Action, Data, ProtocolMessage};
use tests::{ably_jwt, now_secs, publish_message, texts, urlencode, TestBroker, KEY};

/// §4.3: CONNECTED carries connectionDetails with a key, and a connectionId without ':'.
#[tokio::test]
async fn connected_carries_full_connection_details() {
    let broker = TestBroker::start().await;
    for format in ["json", "msgpack"] {
        let (_client, connected) = broker.connect_key(format).await;
        let id = connected.connection_id.expect("connectionId");
        assert!(!id.contains(':'));
        let details = connected.connection_details.expect("connectionDetails");
        assert!(details.connection_key.starts_with(&id));
        assert_eq!(details.max_message_size, Some(65_536));
        assert_eq!(details.connection_state_ttl, Some(120_000));
        assert!(details.max_idle_interval.is_some());
    }
}

/// §4.2, §8: a wrong secret is refused with ERROR 40101; a JWT's clientId is reported.
#[tokio::test]
async fn keys_and_jwts_are_checked() {
    let broker = TestBroker::start().await;
    let mut bad = broker.connect("key=test.full%3Awrong&format=json").await;
    let error = bad.expect(Action::Error).await.error.expect("error");
    assert_eq!((error.code, error.status_code), (40101, 401));
    assert!(bad.next().await.is_none(), "socket closes after ERROR");

    let token = ably_jwt(
        KEY,
        serde_json::json!({"iat": now_secs(), "exp": now_secs() + 60, "x-ably-clientId": "alice"}),
    );
    let mut good = broker
        .connect(&format!("access_token={token}&format=json"))
        .await;
    let connected = good.expect(Action::Connected).await;
    assert_eq!(
        connected.connection_details.unwrap().client_id.as_deref(),
        Some("alice")
    );

    let expired = ably_jwt(KEY, serde_json::json!({"exp": now_secs() - 5}));
    let mut late = broker
        .connect(&format!("access_token={expired}&format=json"))
        .await;
    assert_eq!(late.expect(Action::Error).await.error.unwrap().code, 40142);

    let forged = ably_jwt(
        "test.full:notthesecret",
        serde_json::json!({"exp": now_secs() + 60}),
    );
    let mut forged_client = broker
        .connect(&format!("access_token={forged}&format=json"))
        .await;
    assert_eq!(
        forged_client
            .expect(Action::Error)
            .await
            .error
            .unwrap()
            .code,
        40144
    );
}

/// §7.3, §7.4, §5.5: ACKs in msgSerial order with serials; subscribers get every message in
/// order, after ATTACHED; echo reaches the publisher.
/// §7.3: ACKs in msgSerial order, subscribers in log order — whether subscribers get a
/// message before its fsync (the default) or only after it (`storage.deliver_after_sync`).
#[tokio::test]
async fn publishes_are_acked_in_order_and_delivered_in_log_order() {
    acked_and_delivered_in_order(false).await;
}

#[tokio::test]
async fn delivery_after_sync_keeps_the_same_order() {
    acked_and_delivered_in_order(true).await;
}

async fn acked_and_delivered_in_order(deliver_after_sync: bool) {
    let broker =
        TestBroker::start_with(|c| c.storage.deliver_after_sync = deliver_after_sync).await;
    let (mut subscriber, _) = broker.connect_key("msgpack").await;
    let attached = subscriber.attach("chat:order").await;
    // The full key's default modes: the basic four and ANNOTATION_PUBLISH.
    assert_eq!(
        attached.flags.unwrap() & flags::MODE_ALL,
        983_040 | flags::MODE_ANNOTATION_PUBLISH
    );
    let (mut publisher, _) = broker.connect_key("json").await;
    for i in 0..200u64 {
        publisher.publish("chat:order", i, &format!("m{i}")).await;
    }
    let mut acked = 0;
    let mut serials = Vec::new();
    while acked < 200 {
        let message = publisher.next().await.expect("open");
        match message.action {
            // One ACK may cover a run of msgSerials: `count` of them, one `res` each (§7.3).
            Action::Ack => {
                assert_eq!(message.msg_serial, Some(acked));
                let results = message.res.expect("res");
                assert_eq!(results.len() as u64, message.count.unwrap_or(1));
                for result in results {
                    serials.push(result.serials[0].clone().unwrap());
                    acked += 1;
                }
            }
            // The publisher did not attach, so it receives no MESSAGE.
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(serials.windows(2).all(|w| w[0] < w[1]), "serials increase");
    let mut received = Vec::new();
    while received.len() < 200 {
        let message = subscriber.expect(Action::Message).await;
        received.extend(texts(&message));
    }
    let expected: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
    assert_eq!(received, expected);
}

/// §8.7, §8.8, §5.7: attach and publish outside the capability are refused with 40160, and
/// requested modes are cut down to what the capability permits.
#[tokio::test]
async fn capability_limits_attach_publish_and_modes() {
    let broker = TestBroker::start_with(|c| {
        c.keys.push(broker::config::KeyConfig {
            name: "test.limited".into(),
            secret: "limited".into(),
            capability: r#"{"allowed:*":["subscribe"],"pub:*":["publish"]}"#.into(),
        })
    })
    .await;
    let mut client = broker
        .connect(&format!(
            "key={}&format=json",
            urlencode("test.limited:limited")
        ))
        .await;
    client.expect(Action::Connected).await;
    client
        .send(&ProtocolMessage::for_channel(Action::Attach, "forbidden"))
        .await;
    let error = client.expect(Action::Error).await;
    assert_eq!(error.channel.as_deref(), Some("forbidden"));
    assert_eq!(error.error.unwrap().code, 40160);

    client.publish("forbidden", 0, "x").await;
    let nack = client.expect(Action::Nack).await;
    assert_eq!(
        (nack.msg_serial, nack.error.unwrap().code),
        (Some(0), 40160)
    );

    let attached = client.attach("allowed:x").await;
    assert_eq!(
        attached.flags.unwrap() & flags::MODE_ALL,
        flags::MODE_SUBSCRIBE | flags::MODE_PRESENCE_SUBSCRIBE
    );
    client.publish("pub:x", 1, "ok").await;
    assert_eq!(client.expect(Action::Ack).await.msg_serial, Some(1));
}

/// §7.5: binary from a msgpack publisher reaches a JSON subscriber as base64, and back.
#[tokio::test]
async fn binary_crosses_wire_formats_intact() {
    let broker = TestBroker::start().await;
    let (mut json, _) = broker.connect_key("json").await;
    let (mut packed, _) = broker.connect_key("msgpack").await;
    json.attach("bin").await;
    packed.attach("bin").await;
    let bytes = bytes::Bytes::from_static(&[0, 1, 2, 254, 255]);
    let mut message = publish_message("bin", 0, "");
    message.messages.as_mut().unwrap()[0].data = Some(Data::Binary(bytes.clone()));
    packed.send(&message).await;
    let at_json = json.expect(Action::Message).await;
    let m = &at_json.messages.unwrap()[0];
    assert_eq!(m.encoding.as_deref(), Some("base64"));
    assert_eq!(m.data, Some(Data::String("AAEC/v8=".into())));
    let at_packed = packed.expect(Action::Message).await;
    assert_eq!(
        at_packed.messages.unwrap()[0].data,
        Some(Data::Binary(bytes.clone()))
    );

    let mut from_json = publish_message("bin", 0, "AAEC/v8=");
    from_json.messages.as_mut().unwrap()[0].encoding = Some("base64".into());
    json.send(&from_json).await;
    loop {
        let m = packed.next().await.unwrap();
        if m.action == Action::Message {
            assert_eq!(m.messages.unwrap()[0].data, Some(Data::Binary(bytes)));
            break;
        }
    }
}

/// §5.4: rewind=N sends ATTACHED with HAS_BACKLOG, then the last N messages, then live.
#[tokio::test]
async fn rewind_replays_the_last_messages_before_live_ones() {
    let broker = TestBroker::start().await;
    let (mut publisher, _) = broker.connect_key("json").await;
    for i in 0..5 {
        publisher.publish("rw", i, &format!("old{i}")).await;
        publisher.expect(Action::Ack).await;
    }
    let (mut late, _) = broker.connect_key("json").await;
    let mut attach = ProtocolMessage::for_channel(Action::Attach, "rw");
    attach.params = Some([("rewind".to_owned(), "3".to_owned())].into());
    late.send(&attach).await;
    let attached = late.expect(Action::Attached).await;
    assert!(attached.has_flag(flags::HAS_BACKLOG));
    assert_eq!(
        attached.params.unwrap().get("rewind").map(String::as_str),
        Some("3")
    );
    publisher.publish("rw", 5, "live").await;
    let mut seen = Vec::new();
    while seen.len() < 4 {
        seen.extend(texts(&late.expect(Action::Message).await));
    }
    assert_eq!(seen, ["old2", "old3", "old4", "live"]);
}

/// §4.4: a ping's id is echoed; §4.5: CLOSE gets CLOSED and the connection cannot resume.
#[tokio::test]
async fn ping_is_echoed_and_close_ends_the_connection() {
    let broker = TestBroker::start().await;
    let (mut client, connected) = broker.connect_key("json").await;
    client
        .send(&ProtocolMessage {
            id: Some("p1".into()),
            ..ProtocolMessage::new(Action::Heartbeat)
        })
        .await;
    assert_eq!(
        client.expect(Action::Heartbeat).await.id.as_deref(),
        Some("p1")
    );
    client.send(&ProtocolMessage::new(Action::Close)).await;
    client.expect(Action::Closed).await;
    let key = connected.connection_details.unwrap().connection_key;
    let mut again = broker
        .connect(&format!(
            "key={}&format=json&resume={}",
            urlencode(KEY),
            urlencode(&key)
        ))
        .await;
    let reconnected = again.expect(Action::Connected).await;
    assert_ne!(reconnected.connection_id, connected.connection_id);
    assert_eq!(reconnected.error.unwrap().code, 80008);
}

/// §4.7: a client AUTH with a new token gets CONNECTED on the same connection; a narrower
/// capability fails the channels it no longer allows.
#[tokio::test]
async fn in_band_auth_swaps_the_capability() {
    let broker = TestBroker::start().await;
    let token = |cap: &str| {
        ably_jwt(
            KEY,
            serde_json::json!({"exp": now_secs() + 600, "x-ably-clientId": "amy", "x-ably-capability": cap}),
        )
    };
    let mut client = broker
        .connect(&format!(
            "access_token={}&format=json",
            token(r#"{"*":["*"]}"#)
        ))
        .await;
    let connected = client.expect(Action::Connected).await;
    client.attach("a").await;
    client.attach("b").await;
    client
        .send(&ProtocolMessage {
            auth: Some(protocol::AuthDetails {
                access_token: token(r#"{"a":["subscribe"]}"#),
            }),
            ..ProtocolMessage::new(Action::Auth)
        })
        .await;
    let lost = client.expect(Action::Error).await;
    assert_eq!(
        (lost.channel.as_deref(), lost.error.unwrap().code),
        (Some("b"), 40160)
    );
    let again = client.expect(Action::Connected).await;
    assert_eq!(again.connection_id, connected.connection_id);
    assert_eq!(
        again.connection_details.unwrap().client_id.as_deref(),
        Some("amy")
    );
}

/// §4.7: a new token that keeps `publish` but drops `subscribe` on an attached channel stops
/// delivery there: the client's next publish is ACKed without its echo.
#[tokio::test]
async fn in_band_auth_narrows_the_modes_of_channels_still_allowed() {
    let broker = TestBroker::start().await;
    let token = |cap: &str| {
        ably_jwt(
            KEY,
            serde_json::json!({"exp": now_secs() + 600, "x-ably-clientId": "nia", "x-ably-capability": cap}),
        )
    };
    let mut client = broker
        .connect(&format!(
            "access_token={}&format=json",
            token(r#"{"n":["subscribe","publish"]}"#)
        ))
        .await;
    client.expect(Action::Connected).await;
    client.attach("n").await;
    client.publish("n", 0, "seen").await;
    assert_eq!(texts(&client.expect(Action::Message).await), ["seen"]);
    client.expect(Action::Ack).await;
    client
        .send(&ProtocolMessage {
            auth: Some(protocol::AuthDetails {
                access_token: token(r#"{"n":["publish"]}"#),
            }),
            ..ProtocolMessage::new(Action::Auth)
        })
        .await;
    client.expect(Action::Connected).await;
    client.publish("n", 1, "unseen").await;
    assert_eq!(client.expect(Action::Ack).await.msg_serial, Some(1));
}

/// §8.2: an Ably JWT without `exp` is refused.
#[tokio::test]
async fn a_jwt_without_expiry_is_refused() {
    let broker = TestBroker::start().await;
    let token = ably_jwt(KEY, serde_json::json!({"iat": now_secs()}));
    let mut client = broker
        .connect(&format!("access_token={token}&format=json"))
        .await;
    assert_eq!(
        client.expect(Action::Error).await.error.unwrap().code,
        40144
    );
}

/// §4.4: after maxIdleInterval of silence the broker sends a protocol HEARTBEAT (browsers
/// cannot see ping frames, so pings alone would let them time out).
#[tokio::test]
async fn an_idle_connection_gets_protocol_heartbeats() {
    let broker = TestBroker::start_with(|c| c.connection.max_idle_interval_ms = 100).await;
    let (mut client, connected) = broker.connect_key("json").await;
    assert_eq!(
        connected.connection_details.unwrap().max_idle_interval,
        Some(100)
    );
    for _ in 0..3 {
        let message = client.next_any().await.expect("still open");
        assert_eq!((message.action, message.id), (Action::Heartbeat, None));
    }
}

/// §4.7: the broker asks for a new token before expiry; a renewal that does not extend the
/// expiry is accepted but not asked for again in a loop, and at expiry the client gets
/// DISCONNECTED 40142.
#[tokio::test]
async fn token_expiry_asks_once_then_disconnects_with_40142() {
    let broker = TestBroker::start_with(|c| c.connection.token_renewal_lead_ms = 1_000).await;
    let token = ably_jwt(
        KEY,
        serde_json::json!({"exp": now_secs() + 3, "x-ably-clientId": "tim"}),
    );
    let mut client = broker
        .connect(&format!("access_token={token}&format=json"))
        .await;
    client.expect(Action::Connected).await;
    client.expect(Action::Auth).await;
    client
        .send(&ProtocolMessage {
            auth: Some(protocol::AuthDetails {
                access_token: token.clone(),
            }),
            ..ProtocolMessage::new(Action::Auth)
        })
        .await;
    client.expect(Action::Connected).await;
    let last = client.expect(Action::Disconnected).await;
    assert_eq!(last.error.unwrap().code, 40142);
}

/// Issue 15 item 11: a token that expires sooner than the renewal lead gets no AUTH (a client
/// that cannot renew would fail with 40171); it is DISCONNECTED with 40142 at expiry, which a
/// client that can renew answers with a new token and a resume.
#[tokio::test]
async fn a_token_shorter_than_the_renewal_lead_is_not_asked_to_renew() {
    let broker = TestBroker::start_with(|c| c.connection.token_renewal_lead_ms = 30_000).await;
    let token = ably_jwt(
        KEY,
        serde_json::json!({"exp": now_secs() + 2, "x-ably-clientId": "sam"}),
    );
    let mut client = broker
        .connect(&format!("access_token={token}&format=json"))
        .await;
    client.expect(Action::Connected).await;
    let next = client.expect(Action::Disconnected).await;
    assert_eq!(next.error.unwrap().code, 40142);
}
