//! Resume and recover (§4.6, §5.6, checklist 12e): a dropped socket comes back with the same
//! connectionId, resent publishes are de-duplicated, and each channel replays from the
//! client's channelSerial without loss or duplicates.

use protocol::{flags, Action, PresenceAction, ProtocolMessage};
use tests::{publish_message, texts, urlencode, TestBroker, KEY};

async fn resume(broker: &TestBroker, key: &str) -> tests::Client {
    broker
        .connect(&format!(
            "key={}&format=json&resume={}",
            urlencode(KEY),
            urlencode(key)
        ))
        .await
}

#[tokio::test]
async fn a_dropped_subscriber_resumes_and_misses_nothing() {
    let broker = TestBroker::start().await;
    let (mut sub, connected) = broker.connect_key("json").await;
    let key = connected.connection_details.unwrap().connection_key;
    sub.attach("feed").await;
    let (mut publisher, _) = broker.connect_key("msgpack").await;
    for i in 0..10 {
        publisher.publish("feed", i, &format!("m{i}")).await;
    }
    let mut seen = Vec::new();
    let mut last_serial = None;
    while seen.len() < 4 {
        let m = sub.expect(Action::Message).await;
        last_serial = m.channel_serial.clone();
        seen.extend(texts(&m));
    }
    sub.drop_abruptly();
    for i in 10..20 {
        publisher.publish("feed", i, &format!("m{i}")).await;
    }
    publisher.expect_acks(20).await;

    let mut back = resume(&broker, &key).await;
    let connected_again = back.expect(Action::Connected).await;
    assert_eq!(connected_again.connection_id, connected.connection_id);
    assert!(connected_again.error.is_none());
    let mut attach = ProtocolMessage::for_channel(Action::Attach, "feed");
    attach.channel_serial = last_serial;
    back.send(&attach).await;
    let attached = back.expect(Action::Attached).await;
    assert!(attached.has_flag(flags::RESUMED));
    while seen.len() < 20 {
        seen.extend(texts(&back.expect(Action::Message).await));
    }
    let expected: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn resent_msg_serials_are_acked_again_not_published_twice() {
    let broker = TestBroker::start().await;
    let (mut watcher, _) = broker.connect_key("json").await;
    watcher.attach("dedup").await;
    let (mut client, connected) = broker.connect_key("json").await;
    let key = connected.connection_details.unwrap().connection_key;
    client.publish("dedup", 0, "once").await;
    let first_ack = client.expect(Action::Ack).await;
    client.drop_abruptly();

    let mut back = resume(&broker, &key).await;
    back.expect(Action::Connected).await;
    back.send(&publish_message("dedup", 0, "once")).await;
    let again = back.expect(Action::Ack).await;
    assert_eq!(again.res, first_ack.res, "same serials on the re-ACK");
    back.publish("dedup", 1, "twice").await;
    back.expect(Action::Ack).await;
    assert_eq!(texts(&watcher.expect(Action::Message).await), ["once"]);
    assert_eq!(texts(&watcher.expect(Action::Message).await), ["twice"]);
}

#[tokio::test]
async fn an_unknown_key_gets_a_new_connection_and_80008() {
    let broker = TestBroker::start().await;
    let mut client = resume(&broker, "nothing!here").await;
    let connected = client.expect(Action::Connected).await;
    let error = connected.error.expect("resume error");
    assert_eq!((error.code, error.status_code), (80008, 400));
    let mut malformed = resume(&broker, "no-separator").await;
    assert_eq!(
        malformed
            .expect(Action::Connected)
            .await
            .error
            .unwrap()
            .code,
        80018
    );
}

#[tokio::test]
async fn a_serial_from_another_epoch_attaches_without_resumed() {
    let broker = TestBroker::start().await;
    let (mut client, _) = broker.connect_key("json").await;
    let mut attach = ProtocolMessage::for_channel(Action::Attach, "c");
    attach.channel_serial = Some("deadbeef-0000000000000007".into());
    client.send(&attach).await;
    let attached = client.expect(Action::Attached).await;
    assert!(!attached.has_flag(flags::RESUMED));
    assert_eq!(attached.error.unwrap().code, 90003);
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_cut_off_and_others_are_not() {
    let broker = TestBroker::start_with(|c| {
        c.limits.max_message_size = 16 * 1024;
        c.limits.max_frame_size = 16 * 1024;
        c.limits.outbox_bytes = 64 * 1024;
    })
    .await;
    let (mut stalled, _) = broker.connect_key("json").await;
    stalled.attach("firehose").await;
    let (mut reader, _) = broker.connect_key("json").await;
    reader.attach("firehose").await;
    let (mut publisher, _) = broker.connect_key("json").await;
    let payload = "x".repeat(10 * 1024);
    let http = tests::http();
    let mut sent = 0u64;
    // Publish until the broker reports the stalled subscriber disconnected; the kernel's socket
    // buffers absorb the first few megabytes, so the count is not known in advance.
    loop {
        publisher.publish("firehose", sent, &payload).await;
        publisher.expect(Action::Ack).await;
        assert_eq!(texts(&reader.expect(Action::Message).await).len(), 1);
        sent += 1;
        if sent.is_multiple_of(50) {
            let metrics = http
                .get(broker.url("/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if metrics.contains("broker_slow_consumer_disconnects_total 1") {
                break;
            }
        }
        assert!(
            sent < 5_000,
            "the stalled subscriber was never disconnected"
        );
    }
    // The stalled client finds DISCONNECTED (resumable) at the end of what it was sent.
    let mut last = None;
    while let Some(m) = stalled.next().await {
        last = Some(m);
    }
    let last = last.expect("some frames");
    assert_eq!(last.action, Action::Disconnected);
    assert_eq!(last.error.unwrap().code, 80003);
}

/// A replay that would not fit the subscriber's outbox is not attempted: the attach reports
/// lost continuity instead of overflowing the client into a resume loop (§5.6 case 2).
#[tokio::test]
async fn a_backlog_larger_than_the_outbox_attaches_without_resumed() {
    let broker = TestBroker::start_with(|c| {
        c.limits.max_message_size = 16 * 1024;
        c.limits.max_frame_size = 16 * 1024;
        c.limits.outbox_bytes = 64 * 1024;
    })
    .await;
    let (mut sub, _) = broker.connect_key("json").await;
    let attached = sub.attach("bulk").await;
    sub.drop_abruptly();
    let (mut publisher, _) = broker.connect_key("json").await;
    let payload = "y".repeat(10 * 1024);
    for i in 0..10 {
        publisher.publish("bulk", i, &payload).await;
        publisher.expect(Action::Ack).await;
    }
    let (mut again, _) = broker.connect_key("json").await;
    let mut attach = ProtocolMessage::for_channel(Action::Attach, "bulk");
    attach.channel_serial = attached.channel_serial;
    again.send(&attach).await;
    let reply = again.expect(Action::Attached).await;
    assert!(!reply.has_flag(flags::RESUMED));
    assert_eq!(reply.error.unwrap().code, 90003);
}

/// A peer that stops answering pings is dropped; its presence members then leave.
#[tokio::test]
async fn a_silent_peer_is_dropped_and_its_members_leave() {
    let broker = TestBroker::start_with(|c| {
        c.connection.max_idle_interval_ms = 200;
        c.presence.leave_grace_ms = 100;
    })
    .await;
    let (mut watcher, _) = broker.connect_key("json").await;
    watcher.attach("quiet").await;
    let (mut silent, _) = broker.connect_key("json").await;
    silent.attach("quiet").await;
    let enter = ProtocolMessage {
        msg_serial: Some(0),
        presence: Some(vec![protocol::PresenceMessage {
            action: PresenceAction::Enter,
            client_id: Some("mute".into()),
            ..Default::default()
        }]),
        ..ProtocolMessage::for_channel(Action::Presence, "quiet")
    };
    silent.send(&enter).await;
    silent.expect(Action::Presence).await;
    silent.expect(Action::Ack).await;
    // From here on `silent` is never read, so it answers no ping.
    loop {
        let m = watcher.next().await.expect("watcher stays connected");
        if m.action == Action::Presence
            && m.presence.as_ref().unwrap()[0].action == PresenceAction::Leave
        {
            assert_eq!(m.presence.unwrap()[0].client_id.as_deref(), Some("mute"));
            break;
        }
    }
    drop(silent);
}
