//! The channel log survives restarts: every acknowledged message is in history afterwards, in
//! order, once; and a client's channelSerial from before the restart still resumes. (The
//! `kill -9` variant runs in the ably-js suite against the real binary.)

use protocol::{flags, Action, ProtocolMessage};
use tests::{acked_by, history, texts, TestBroker};

#[tokio::test]
async fn acknowledged_messages_survive_a_restart_and_channel_serials_stay_valid() {
    let broker = TestBroker::start().await;
    let dir = broker.dir().to_owned();
    let (mut client, _) = broker.connect_key("json").await;
    let attached = client.attach("durable").await;
    assert!(attached.channel_serial.is_some());
    for i in 0..50 {
        client.publish("durable", i, &format!("d{i}")).await;
    }
    let mut last_serial = None;
    let mut acks = 0;
    while acks < 50 {
        let m = client.next().await.unwrap();
        match m.action {
            Action::Ack => acks += acked_by(&m),
            Action::Message if texts(&m) == ["d9"] => last_serial = m.channel_serial,
            _ => {}
        }
    }
    drop(client);
    let keep = broker.stop().await;

    let broker = TestBroker::start_in(&dir, |_| {}).await;
    let history = history(&broker, "durable", "direction=forwards&limit=1000").await;
    let data: Vec<&str> = history
        .iter()
        .map(|m| m["data"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..50).map(|i| format!("d{i}")).collect();
    assert_eq!(data, expected);

    let (mut again, _) = broker.connect_key("json").await;
    let mut attach = ProtocolMessage::for_channel(Action::Attach, "durable");
    attach.channel_serial = last_serial;
    again.send(&attach).await;
    assert!(again
        .expect(Action::Attached)
        .await
        .has_flag(flags::RESUMED));
    assert_eq!(texts(&again.expect(Action::Message).await), ["d10"]);
    broker.stop().await;
    drop(keep);
}

#[tokio::test]
async fn count_retention_keeps_the_newest_messages() {
    let broker = TestBroker::start_with(|c| c.retention.max_messages_per_channel = 10).await;
    let (mut client, _) = broker.connect_key("json").await;
    for i in 0..100 {
        client.publish("short", i, &format!("s{i}")).await;
        client.expect(Action::Ack).await;
    }
    let history = history(&broker, "short", "limit=1000").await;
    assert!((10..=11).contains(&history.len()), "kept {}", history.len());
    assert_eq!(history[0]["data"], "s99");
}

/// A channel trims by its own count of the messages it holds; when the age sweep has removed
/// some behind its back, it counts again instead of trimming messages that are within both
/// limits.
#[tokio::test]
async fn count_retention_after_an_age_sweep_keeps_the_newest_messages() {
    let broker = TestBroker::start_with(|c| {
        c.retention.max_messages_per_channel = 10;
        c.retention.max_age_secs = 2;
        c.retention.sweep_interval_secs = 1;
    })
    .await;
    let (mut client, _) = broker.connect_key("json").await;
    for i in 0..10 {
        client.publish("aged", i, &format!("old{i}")).await;
        client.expect(Action::Ack).await;
    }
    // The sweep runs once a second and takes messages older than two seconds.
    let deadline = tokio::time::Instant::now() + tests::SAFETY;
    while !history(&broker, "aged", "limit=100").await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sweep never took the old messages"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for i in 10..20 {
        client.publish("aged", i, &format!("new{i}")).await;
        client.expect(Action::Ack).await;
    }
    let kept: Vec<String> = history(&broker, "aged", "direction=forwards&limit=100")
        .await
        .iter()
        .map(|m| m["data"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (10..20).map(|i| format!("new{i}")).collect();
    assert_eq!(kept, expected);
}

/// §4.5: on shutdown every client is told DISCONNECTED (resumable, not CLOSED), and the data
/// directory is released so the broker can start on it again at once.
#[tokio::test]
async fn shutdown_tells_clients_to_resume_later() {
    let broker = TestBroker::start().await;
    let dir = broker.dir().to_owned();
    let (mut client, _) = broker.connect_key("msgpack").await;
    client.attach("bye").await;
    let keep = broker.stop().await;
    let goodbye = client.expect(Action::Disconnected).await;
    assert_eq!(goodbye.error.unwrap().code, 50300);
    let again = TestBroker::start_in(&dir, |_| {}).await;
    let (_c, connected) = again.connect_key("json").await;
    assert!(connected.connection_id.is_some());
    again.stop().await;
    drop(keep);
}

/// The value of an unlabelled metric in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test]
async fn metrics_show_the_log_checkpointing() {
    let broker = TestBroker::start().await;
    let read = || async {
        tests::send(tests::http().get(broker.url("/metrics")))
            .await
            .text()
            .await
            .unwrap()
    };
    let first = read().await;
    assert_eq!(metric(&first, "broker_log_checkpoint_failures"), 0.0);
    assert!(metric(&first, "broker_log_checkpoint_duration_seconds") >= 0.0);
    // The age is read at each scrape and falls back when the next checkpoint (once a second)
    // lands: the thread runs and the gauge follows it.
    let mut age = metric(&first, "broker_log_checkpoint_age_seconds");
    let deadline = tokio::time::Instant::now() + tests::SAFETY;
    loop {
        let now = metric(&read().await, "broker_log_checkpoint_age_seconds");
        if now < age {
            break;
        }
        age = now;
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint landed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
