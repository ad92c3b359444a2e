//! The actors a scenario is built from: a [`Client`] is one connection to either target with
//! the same three verbs (subscribe, publish, close), so a scenario is written once and run
//! against the broker and NATS alike.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use tokio::task::JoinHandle;

use crate::ably;
use crate::nats;
use crate::recorder::Recorder;

/// The system under test.
#[derive(Clone, Debug)]
pub enum Target {
    /// Our broker.
    Broker(ably::Endpoint),
    /// nats-server over its WebSocket listener.
    Nats(String),
}

impl Target {
    /// `broker` or `nats`.
    pub fn name(&self) -> &'static str {
        match self {
            Target::Broker(_) => "broker",
            Target::Nats(_) => "nats",
        }
    }
}

/// One connection to a target.
pub enum Client {
    /// A raw realtime-protocol connection.
    Ably(ably::Connection),
    /// A NATS connection and its subscription readers.
    Nats(async_nats::Client, Vec<JoinHandle<()>>),
}

impl Client {
    /// Opens client number `index`, reporting into `recorder`.
    pub async fn open(
        target: &Target,
        index: usize,
        recorder: &Arc<Recorder>,
        track_sequences: bool,
    ) -> Result<Client, String> {
        match target {
            Target::Broker(endpoint) => {
                let session = ably::Session::new(recorder.clone(), track_sequences);
                Ok(Client::Ably(
                    ably::Connection::open(endpoint, index, session, None).await?,
                ))
            }
            Target::Nats(url) => Ok(Client::Nats(nats::connect(url).await?, Vec::new())),
        }
    }

    /// Subscribes to `channel`, recording deliveries into `recorder`.
    pub async fn subscribe(
        &mut self,
        channel: &str,
        recorder: &Arc<Recorder>,
    ) -> Result<(), String> {
        match self {
            Client::Ably(c) => c.attach(channel).await.map(|_| ()),
            Client::Nats(c, readers) => {
                readers.push(nats::subscribe(c, channel, recorder.clone()).await?);
                Ok(())
            }
        }
    }

    /// Publishes `data` on `channel` without waiting for an acknowledgement.
    pub async fn publish(&self, channel: &str, data: Bytes) -> Result<(), String> {
        match self {
            Client::Ably(c) => c.publish(channel, data),
            Client::Nats(c, _) => nats::publish(c, channel, data).await,
        }
    }

    /// Closes the connection.
    pub async fn close(self) {
        match self {
            Client::Ably(c) => c.close().await,
            Client::Nats(c, readers) => {
                for r in readers {
                    r.abort();
                }
                drop(c);
            }
        }
    }
}

/// Opens `count` clients, `concurrency` at a time, numbered from `first`; each subscribes to
/// the channels `channels(index)` returns. Returns each client with its index; failures are
/// counted, not fatal.
pub async fn open_many(
    target: &Target,
    first: usize,
    count: usize,
    concurrency: usize,
    recorder: &Arc<Recorder>,
    track_sequences: bool,
    channels: impl Fn(usize) -> Vec<String>,
) -> Vec<(usize, Client)> {
    let opened: Vec<Result<(usize, Client), String>> = stream::iter(first..first + count)
        .map(|i| {
            let names = channels(i);
            async move {
                let mut client = Client::open(target, i, recorder, track_sequences).await?;
                for name in &names {
                    client.subscribe(name, recorder).await?;
                }
                Ok((i, client))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut clients = Vec::with_capacity(count);
    for result in opened {
        match result {
            Ok(c) => clients.push(c),
            Err(e) => recorder.error(e),
        }
    }
    clients
}

/// Closes every client, `concurrency` at a time.
pub async fn close_all(clients: impl IntoIterator<Item = Client>) {
    stream::iter(clients)
        .for_each_concurrent(256, |c| c.close())
        .await;
}
