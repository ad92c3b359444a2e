//! The peer: NATS over its WebSocket listener via `async-nats`, and JetStream with file storage
//! for durable publishing. Subjects reuse our channel names (`fanout-0`), which NATS accepts as
//! single-token subjects.

use std::sync::Arc;

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use crate::clock;
use crate::recorder::Recorder;

/// Connects to `url` (`ws://127.0.0.1:PORT`).
pub async fn connect(url: &str) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 16)
        .connect(url)
        .await
        .map_err(|e| format!("nats connect {url}: {e}"))
}

/// Subscribes `client` to `subject` and records every delivery until aborted.
pub async fn subscribe(
    client: &async_nats::Client,
    subject: &str,
    recorder: Arc<Recorder>,
) -> Result<JoinHandle<()>, String> {
    let mut sub = client
        .subscribe(subject.to_owned())
        .await
        .map_err(|e| format!("nats subscribe: {e}"))?;
    // The SUB must reach the server before the publisher starts, or early messages are lost.
    client
        .flush()
        .await
        .map_err(|e| format!("nats flush: {e}"))?;
    Ok(tokio::spawn(async move {
        while let Some(message) = sub.next().await {
            if let Some((scheduled, _)) = clock::read_payload(&message.payload) {
                recorder.delivery(scheduled);
            }
        }
    }))
}

/// Publishes without waiting for anything (core NATS has no ACK).
pub async fn publish(
    client: &async_nats::Client,
    subject: &str,
    data: Bytes,
) -> Result<(), String> {
    client
        .publish(subject.to_owned(), data)
        .await
        .map_err(|e| format!("nats publish: {e}"))
}

/// The JetStream stream durable-publish writes to: file storage, subjects `durable.>`,
/// recreated empty.
pub async fn durable_stream(client: &async_nats::Client) -> Result<jetstream::Context, String> {
    let js = jetstream::new(client.clone());
    let _ = js.delete_stream("DURABLE").await;
    js.create_stream(jetstream::stream::Config {
        name: "DURABLE".to_owned(),
        subjects: vec!["durable.>".to_owned()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("create JetStream stream: {e}"))?;
    Ok(js)
}
