//! The NATS harness (`tests/src/nats.rs`) against real nats-server processes: an R3 stream on
//! a 3-server cluster keeps every acknowledged message exactly once and in order across a
//! kill -9 of its leader (`../shared/cluster.md` §3.9, scenario 2), and a single server keeps
//! a stream across a restart. No broker is involved.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use tests::nats::NatsCluster;
use tests::SAFETY;
use tokio::time::Instant;

/// How long one publish may wait for its PubAck before it is retried.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// A JetStream context on a new client connected to `urls`.
async fn jetstream(urls: Vec<String>) -> jetstream::Context {
    let client = tokio::time::timeout(SAFETY, async_nats::connect(urls))
        .await
        .expect("connects to NATS in time")
        .expect("connects to NATS");
    let mut js = jetstream::new(client);
    js.set_timeout(ACK_TIMEOUT);
    js
}

/// Creates a file stream named `name` on `subject` with `replicas` replicas.
async fn create_stream(js: &jetstream::Context, name: &str, subject: &str, replicas: usize) {
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec![subject.into()],
        num_replicas: replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("create stream {name}: {e}"));
}

/// Publishes message `k` (payload and `Nats-Msg-Id` both `m<k>`) until it is acknowledged,
/// retrying with the same id and a growing backoff: the stream's duplicate window makes the
/// retries safe. Panics if no attempt is acknowledged before `deadline`.
async fn publish_acked(
    js: &jetstream::Context,
    subject: &str,
    k: u64,
    deadline: Instant,
) -> jetstream::publish::PublishAck {
    let id = format!("m{k}");
    let mut backoff = Duration::from_millis(20);
    loop {
        let publish = PublishMessage::build()
            .payload(id.clone().into())
            .message_id(&id);
        let error = match js.send_publish(subject.to_owned(), publish).await {
            Ok(ack) => match ack.await {
                Ok(ack) => return ack,
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "message {id} not acknowledged in time; last error: {error}"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

/// The `Nats-Msg-Id` of every message in `name`, in stream order, read from the stream
/// leader one sequence at a time; asserts the stream holds sequences 1..=n without gaps.
async fn stored_ids(js: &jetstream::Context, name: &str) -> Vec<String> {
    let mut stream = js.get_stream(name).await.expect("get stream");
    let state = stream.info().await.expect("stream info").state.clone();
    assert_eq!(state.first_sequence, 1, "{state:?}");
    assert_eq!(state.messages, state.last_sequence, "a gap: {state:?}");
    let mut ids = Vec::new();
    for seq in 1..=state.last_sequence {
        let message = stream
            .get_raw_message(seq)
            .await
            .unwrap_or_else(|e| panic!("get {name} #{seq}: {e}"));
        let id = message
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .expect("every message has a Nats-Msg-Id")
            .to_string();
        assert_eq!(message.payload, id.as_bytes(), "payload of #{seq}");
        ids.push(id);
    }
    ids
}

fn expected_ids(n: u64) -> Vec<String> {
    (0..n).map(|k| format!("m{k}")).collect()
}

#[tokio::test]
async fn r3_stream_keeps_every_acked_message_across_a_leader_kill() {
    const BEFORE: u64 = 200;
    const AFTER: u64 = 20;
    let mut cluster = NatsCluster::start(3).await;
    let js = jetstream(cluster.urls()).await;
    create_stream(&js, "HARNESS", "h.>", 3).await;

    let deadline = Instant::now() + SAFETY;
    for k in 0..BEFORE {
        let ack = publish_acked(&js, "h.a", k, deadline).await;
        assert_eq!((ack.sequence, ack.duplicate), (k + 1, false), "ack of m{k}");
    }

    let leader = cluster.wait_stream_leader("HARNESS").await;
    cluster.kill(leader).await;
    assert_ne!(cluster.stream_leader("HARNESS").await, Some(leader));

    // The first of these waits out the election (5–9 s); a retried publish whose first ack
    // was lost comes back `duplicate` with its original sequence.
    let deadline = Instant::now() + SAFETY;
    for k in BEFORE..BEFORE + AFTER {
        let ack = publish_acked(&js, "h.b", k, deadline).await;
        assert_eq!(ack.sequence, k + 1, "ack of m{k}: {ack:?}");
    }
    let new_leader = cluster.wait_stream_leader("HARNESS").await;
    assert_ne!(new_leader, leader);

    assert_eq!(
        stored_ids(&js, "HARNESS").await,
        expected_ids(BEFORE + AFTER)
    );

    // The killed server rejoins and catches up (restart waits until the leader counts it
    // current), and the stream goes on taking writes.
    cluster.restart(leader).await;
    assert!(cluster.pid(leader).is_some());
    let k = BEFORE + AFTER;
    let ack = publish_acked(&js, "h.c", k, Instant::now() + SAFETY).await;
    assert_eq!(ack.sequence, k + 1, "ack of m{k}: {ack:?}");
}

#[tokio::test]
async fn single_server_keeps_a_stream_across_a_restart() {
    const N: u64 = 20;
    let mut cluster = NatsCluster::start(1).await;
    assert_eq!(cluster.urls(), vec![cluster.url(0)]);
    let js = jetstream(cluster.urls()).await;
    create_stream(&js, "SOLO", "s.>", 1).await;
    assert_eq!(cluster.stream_leader("SOLO").await, Some(0));
    assert_eq!(cluster.meta_leader().await, Some(0));

    let deadline = Instant::now() + SAFETY;
    for k in 0..N {
        let ack = publish_acked(&js, "s.a", k, deadline).await;
        assert_eq!((ack.sequence, ack.duplicate), (k + 1, false), "ack of m{k}");
    }

    cluster.restart(0).await;
    // A fresh client: the old one would reconnect on its own, but when is not ours to wait for.
    let js = jetstream(cluster.urls()).await;
    assert_eq!(stored_ids(&js, "SOLO").await, expected_ids(N));
    assert_eq!(cluster.stream_leader("SOLO").await, Some(0));
}
