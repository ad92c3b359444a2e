//! Occupancy events (`../shared/ably-chat.md` §5.7): an attacher asking with
//! `params.occupancy=metrics` and holding `channel-metadata` gets `[meta]occupancy` right after
//! ATTACHED and on changes — at once when a count crosses zero, else at most once per interval;
//! the events are never stored, replayed or in history, and without the capability the param
//! is ignored.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use protocol::{flags, Action, Data, Message, ProtocolMessage};
use serde_json::{json, Value};
use tests::{ably_jwt, history, now_secs, texts, Client, TestBroker, KEY};

/// An ATTACH of `channel` with `modes` (0: the default ones) asking for occupancy events.
fn attach_listening(channel: &str, modes: u64) -> ProtocolMessage {
    ProtocolMessage {
        flags: (modes != 0).then_some(modes),
        params: Some(BTreeMap::from([(
            "occupancy".to_owned(),
            "metrics".to_owned(),
        )])),
        ..ProtocolMessage::for_channel(Action::Attach, channel)
    }
}

/// The `metrics` of an occupancy event, or `None` for any other frame.
fn occupancy_of(frame: &ProtocolMessage) -> Option<Value> {
    if frame.action != Action::Message {
        return None;
    }
    let message = frame.messages.as_ref()?.first()?;
    if message.name.as_deref() != Some("[meta]occupancy") {
        return None;
    }
    assert_eq!(message.action, Some(Message::META));
    assert_eq!(message.encoding.as_deref(), Some("json"));
    assert!(message.id.is_some() && message.timestamp.is_some());
    assert!(
        frame.channel_serial.is_none(),
        "no channelSerial: {frame:?}"
    );
    assert!(message.serial.is_none());
    let Some(Data::String(text)) = &message.data else {
        panic!("occupancy data is JSON text: {message:?}");
    };
    let data: Value = serde_json::from_str(text).expect("occupancy data is JSON");
    Some(data["metrics"].clone())
}

/// The next occupancy event, skipping other frames.
async fn next_occupancy(client: &mut Client) -> Value {
    loop {
        let frame = client.next().await.expect("connection still open");
        if let Some(metrics) = occupancy_of(&frame) {
            return metrics;
        }
    }
}

async fn connect_attached(broker: &TestBroker, channel: &str, modes: u64) -> Client {
    let (mut client, _) = broker.connect_key("json").await;
    client
        .send(&ProtocolMessage {
            flags: (modes != 0).then_some(modes),
            ..ProtocolMessage::for_channel(Action::Attach, channel)
        })
        .await;
    client.expect(Action::Attached).await;
    client
}

/// The first event follows ATTACHED at once and counts the listener, in both wire formats.
#[tokio::test]
async fn the_first_event_follows_attached() {
    let broker = TestBroker::start().await;
    for format in ["json", "msgpack"] {
        let channel = format!("occ-first-{format}");
        let (mut client, _) = broker.connect_key(format).await;
        client.send(&attach_listening(&channel, 0)).await;
        let attached = client.expect(Action::Attached).await;
        assert_eq!(
            attached
                .params
                .unwrap()
                .get("occupancy")
                .map(String::as_str),
            Some("metrics")
        );
        let frame = client.expect(Action::Message).await;
        assert_eq!(frame.channel.as_deref(), Some(channel.as_str()));
        let metrics = occupancy_of(&frame).expect("an occupancy event");
        assert_eq!(
            metrics,
            json!({
                "connections": 1, "publishers": 1, "subscribers": 1,
                "presenceConnections": 1, "presenceMembers": 0, "presenceSubscribers": 1,
                "objectPublishers": 0, "objectSubscribers": 0,
            })
        );
    }
}

/// A second attacher that brings the first publisher goes out at once, long before the
/// (here one-minute) interval; so do the first presence member and the last one leaving,
/// with the counts of then.
#[tokio::test]
async fn a_count_crossing_zero_goes_out_at_once() {
    let broker = TestBroker::start_with(|c| c.channels.occupancy_interval_ms = 60_000).await;
    let (mut listener, _) = broker.connect_key("json").await;
    listener
        .send(&attach_listening(
            "occ-zero",
            flags::MODE_SUBSCRIBE | flags::MODE_PRESENCE | flags::MODE_PRESENCE_SUBSCRIBE,
        ))
        .await;
    listener.expect(Action::Attached).await;
    let first = next_occupancy(&mut listener).await;
    assert_eq!(
        (&first["connections"], &first["publishers"]),
        (&json!(1), &json!(0))
    );

    let _publisher = connect_attached(&broker, "occ-zero", flags::MODE_PUBLISH).await;
    let second = next_occupancy(&mut listener).await;
    assert_eq!(
        (
            &second["connections"],
            &second["publishers"],
            &second["subscribers"]
        ),
        (&json!(2), &json!(1), &json!(1))
    );

    let mut member = connect_attached(&broker, "occ-zero", 0).await;
    member
        .send(&tests::presence_message(
            "occ-zero",
            0,
            protocol::PresenceAction::Enter,
            Some("m"),
            "here",
        ))
        .await;
    // The third attach (all modes) alone crossed no zero; the enter did, and carries both.
    let third = next_occupancy(&mut listener).await;
    assert_eq!(
        (&third["connections"], &third["presenceMembers"]),
        (&json!(3), &json!(1))
    );
    // A DETACH takes the member away: presenceMembers back to zero.
    member
        .send(&ProtocolMessage::for_channel(Action::Detach, "occ-zero"))
        .await;
    let fourth = next_occupancy(&mut listener).await;
    assert_eq!(
        (&fourth["presenceMembers"], &fourth["connections"]),
        (&json!(0), &json!(2))
    );
}

/// Changes that cross no zero, made quickly one after the other, make one event with the
/// final counts, once the interval since the last event has passed.
#[tokio::test]
async fn quick_changes_make_one_later_event() {
    const INTERVAL_MS: u64 = 1_500;
    let broker = TestBroker::start_with(|c| c.channels.occupancy_interval_ms = INTERVAL_MS).await;
    let (mut listener, _) = broker.connect_key("json").await;
    listener.send(&attach_listening("occ-debounce", 0)).await;
    listener.expect(Action::Attached).await;
    assert_eq!(next_occupancy(&mut listener).await["connections"], json!(1));
    let first_at = Instant::now();
    let _b = connect_attached(&broker, "occ-debounce", 0).await;
    let _c = connect_attached(&broker, "occ-debounce", 0).await;
    let next = next_occupancy(&mut listener).await;
    assert_eq!(
        next["connections"],
        json!(3),
        "one event with the final counts"
    );
    assert!(
        first_at.elapsed() >= Duration::from_millis(INTERVAL_MS - 200),
        "debounced: {:?}",
        first_at.elapsed()
    );
}

/// Without channel-metadata the param is ignored: no error, no event; the listener's next
/// MESSAGE is an ordinary one.
#[tokio::test]
async fn no_events_without_channel_metadata() {
    let broker = TestBroker::start().await;
    let token = ably_jwt(
        KEY,
        json!({"exp": now_secs() + 600, "x-ably-clientId": "nm",
               "x-ably-capability": r#"{"*":["subscribe","publish","presence"]}"#}),
    );
    let mut client = broker
        .connect(&format!("access_token={token}&format=json"))
        .await;
    client.expect(Action::Connected).await;
    client.send(&attach_listening("occ-none", 0)).await;
    let attached = client.expect(Action::Attached).await;
    assert!(attached.error.is_none());
    assert!(!attached
        .params
        .unwrap_or_default()
        .contains_key("occupancy"));
    let mut other = connect_attached(&broker, "occ-none", 0).await;
    other.publish("occ-none", 0, "plain").await;
    other.expect_acks(1).await;
    let frame = client.expect(Action::Message).await;
    assert_eq!(texts(&frame), vec!["plain"]);
}

/// Events are never stored: history and a rewind show only the real messages, whose serials
/// the events did not take.
#[tokio::test]
async fn events_are_not_in_history_or_a_rewind() {
    let broker = TestBroker::start().await;
    let (mut listener, _) = broker.connect_key("json").await;
    listener
        .send(&attach_listening("occ-log", flags::MODE_SUBSCRIBE))
        .await;
    listener.expect(Action::Attached).await;
    next_occupancy(&mut listener).await;
    let mut publisher = connect_attached(&broker, "occ-log", flags::MODE_PUBLISH).await;
    next_occupancy(&mut listener).await;
    publisher.publish("occ-log", 0, "real").await;
    publisher.expect_acks(1).await;

    let items = history(&broker, "occ-log", "").await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["data"], json!("real"));

    let (mut late, _) = broker.connect_key("json").await;
    late.send(&ProtocolMessage {
        params: Some(BTreeMap::from([("rewind".to_owned(), "10".to_owned())])),
        ..ProtocolMessage::for_channel(Action::Attach, "occ-log")
    })
    .await;
    let attached = late.expect(Action::Attached).await;
    // The channel's position is the message's own serial: the events took none.
    assert_eq!(
        attached.channel_serial.as_deref(),
        items[0]["serial"].as_str()
    );
    let replayed = late.expect(Action::Message).await;
    assert_eq!(texts(&replayed), vec!["real"]);
    // The next frame for the rewinding client is live traffic, not an event.
    publisher.publish("occ-log", 1, "after").await;
    assert_eq!(texts(&late.expect(Action::Message).await), vec!["after"]);
}
