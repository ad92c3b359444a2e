//! The cluster backend: several broker nodes serve the same channels through NATS JetStream,
//! which orders, replicates and keeps every channel's messages (`../shared/cluster.md` §3,
//! delivery mode A). Every node is a replica of JetStream:
//!
//! - a channel belongs to one of the cluster's streams (`subject.rs`) and its serials are that
//!   stream's sequences, `<epoch>-<seq>`, where the epoch names the stream's instance (shard
//!   and creation time), so a recreated stream never continues an old one's serials (§5.5);
//! - a publish goes to JetStream with a `Nats-Msg-Id` made of the channel and the message id
//!   (`<connectionId>:<msgSerial>:<index>`, or the app's own id) and is acknowledged once
//!   JetStream's PubAck says a quorum stored it. JetStream stores a resent message once and
//!   answers it with the first serial, so a publish resent after a resume, on any node, is
//!   stored once. A failed publish is retried in order with the same ids until
//!   `publish_deadline_ms`, which outlasts a leader election;
//! - nothing is delivered from the publish path: each node runs an applier per stream
//!   (`applier.rs`) that writes every committed message into the node's view (a segment log
//!   like the single node's, under `<data_dir>/cluster`) and then hands it to that channel's
//!   sequencer on this node, if there is one ([`Stream::committed`]). Every node therefore
//!   delivers each channel in the stream's order, which is also the order of history and
//!   resume, read from the view.
//!
//! Presence is shared through a KV bucket mirrored on every node (`presence.rs`); the
//! connections' msgSerial ledgers are still kept per node.

mod applier;
mod presence;
pub mod subject;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_nats::HeaderMap;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use protocol::{Message, PresenceMessage};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::local::Retention;
use super::presence::PresenceSet;
use super::{
    Appended, Backend, Committed, Draft, Head, PresenceChange, Query, Stored, Stream, WhenDurable,
};
use crate::auth::now_ms;
use crate::config::ClusterSettings;
use crate::metrics::Metrics;
use crate::store::{format_serial, ChannelLog, StoreError};

/// Batches of committed messages queued for one channel's sequencer before the applier waits.
const FEED_DEPTH: usize = 256;
/// How long start-up waits for the NATS servers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the cluster backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No NATS server answered.
    #[error("cannot reach NATS at {urls}: {reason}")]
    Connect {
        /// The servers tried.
        urls: String,
        /// What the client said.
        reason: String,
    },
    /// JetStream refused a stream.
    #[error("JetStream stream {stream}: {reason}")]
    Stream {
        /// The stream.
        stream: String,
        /// What the server said.
        reason: String,
    },
    /// The node's view could not be opened or read.
    #[error("cluster view: {0}")]
    View(String),
}

/// One of the cluster's streams, as this node sees it.
pub(crate) struct Shard {
    index: u32,
    /// The stream's name.
    stream: String,
    /// The stream's identity: its shard and creation time.
    epoch: String,
    /// Its channels' feeds and presence on this node.
    state: Mutex<ShardState>,
    /// The last stream sequence written to the view.
    applied: watch::Sender<u64>,
}

/// What one shard's channels have on this node, under one lock so that a stream opens
/// between two deliveries, never across one.
#[derive(Default)]
struct ShardState {
    /// The channels that have a sequencer on this node.
    feeds: HashMap<String, Feed>,
    /// Every channel's presence members in the cluster, mirrored from the bucket.
    members: HashMap<String, PresenceSet>,
    /// Per member (its bucket key): the node that last wrote it, the revision, the channel
    /// and the member's event, for taking over and reaping a dead node's members.
    owners: HashMap<String, Owner>,
}

/// Who last wrote a member to the presence bucket.
#[derive(Clone)]
struct Owner {
    node: String,
    revision: u64,
    channel: String,
    event: PresenceMessage,
}

/// Where the applier and the presence watcher hand one channel's changes.
struct Feed {
    /// Tells a stream's own registration from a successor's.
    id: u64,
    sender: mpsc::Sender<Delivery>,
}

/// A change for one channel's stream.
enum Delivery {
    /// Committed messages, in stream order.
    Messages(Vec<(u64, Message)>),
    /// Another node's presence event.
    Presence(PresenceMessage),
    /// Another node's ephemeral messages.
    Ephemeral(Vec<Message>),
}

/// Ephemeral messages as one node relays them to the others, on the core NATS subject
/// `<prefix>.ephemeral` (never stored in JetStream).
#[derive(Serialize, Deserialize)]
struct Relayed {
    node: String,
    channel: String,
    messages: Vec<Message>,
}

/// What a node remembers of its view between clean runs (`<data_dir>/cluster/applied.json`).
#[derive(Default, Serialize, Deserialize)]
struct Applied {
    /// Per stream: its epoch and the last sequence in the view.
    streams: HashMap<String, (String, u64)>,
}

/// How long start-up retries JetStream requests: servers started together answer them only
/// once their stream leaders are elected.
const START_RETRIES_FOR: Duration = Duration::from_secs(30);

/// Runs a JetStream request at start-up until it succeeds, retrying with back-off for
/// `START_RETRIES_FOR` (30 s); returns the last error after that.
pub async fn retry_at_start<T, F, Fut>(what: &str, mut request: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let until = tokio::time::Instant::now() + START_RETRIES_FOR;
    let mut backoff = Duration::from_millis(100);
    loop {
        match request().await {
            Ok(value) => return Ok(value),
            Err(e) if tokio::time::Instant::now() + backoff < until => {
                tracing::info!(%what, error = %e, "JetStream not ready yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Brings an existing stream's retention, duplicate window and replica count to this node's
/// settings (`wanted`), so that an operator changes them by restarting the nodes with the new
/// ones. A change JetStream refuses (more replicas than servers) is logged, and the stream
/// keeps what it had.
async fn follow_settings(
    js: &jetstream::Context,
    current: &stream::Config,
    wanted: &stream::Config,
) {
    let same = current.max_age == wanted.max_age
        && current.max_messages_per_subject == wanted.max_messages_per_subject
        && current.duplicate_window == wanted.duplicate_window
        && current.num_replicas == wanted.num_replicas;
    if same {
        return;
    }
    let updated = stream::Config {
        max_age: wanted.max_age,
        max_messages_per_subject: wanted.max_messages_per_subject,
        duplicate_window: wanted.duplicate_window,
        num_replicas: wanted.num_replicas,
        ..current.clone()
    };
    match js.update_stream(&updated).await {
        Ok(_) => tracing::info!(
            stream = %current.name,
            max_age_secs = wanted.max_age.as_secs(),
            max_messages_per_channel = wanted.max_messages_per_subject,
            duplicate_window_secs = wanted.duplicate_window.as_secs(),
            replicas = wanted.num_replicas,
            "stream settings changed to this node's"
        ),
        Err(e) => tracing::warn!(stream = %current.name, error = %e, "stream settings not changed"),
    }
}

/// Hands every entry of `bucket` under `filter` (`>` for all) to `apply`, in order: its current
/// values first, then each change, until `stop`. A watch that fails is opened again after the last revision seen, with
/// backoff while it cannot be, so no entry is skipped or seen twice. `what` names the bucket
/// in the logs.
pub async fn follow_bucket<F, Fut>(
    bucket: &kv::Store,
    what: &str,
    filter: &str,
    mut stop: watch::Receiver<bool>,
    mut apply: F,
) where
    F: FnMut(kv::Entry) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut last = 0;
    let mut backoff = Duration::from_millis(100);
    loop {
        let opened = if last == 0 {
            bucket.watch_with_history(filter).await
        } else {
            bucket.watch_from_revision(filter, last + 1).await
        };
        let mut entries = match opened {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(bucket = %what, error = %e, "cannot watch the bucket; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        loop {
            let next = tokio::select! {
                next = futures_util::StreamExt::next(&mut entries) => next,
                _ = stop.wait_for(|s| *s) => return,
            };
            match next {
                Some(Ok(entry)) => {
                    last = entry.revision;
                    apply(entry).await;
                }
                Some(Err(e)) => {
                    tracing::warn!(bucket = %what, error = %e, "bucket watch failed; opening it again");
                    break;
                }
                None => break,
            }
        }
    }
}

/// Opens a KV bucket, creating it with `config` when it does not exist. An existing bucket is
/// left as it is: a node started with other settings (fewer servers listed, so one replica)
/// must not change what the cluster shares.
pub async fn open_bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, String> {
    if let Ok(store) = js.get_key_value(&config.bucket).await {
        return Ok(store);
    }
    js.create_key_value(config).await.map_err(|e| e.to_string())
}

/// The node's view of the streams: its directory ([`prepare_view`]) and the logs opened on it.
pub struct View {
    /// `<data_dir>/cluster`.
    pub dir: PathBuf,
    /// Every channel's messages, at their stream sequences.
    pub messages: Arc<dyn ChannelLog>,
    /// Presence history, kept per node for now.
    pub presence: Arc<dyn ChannelLog>,
}

/// The cluster backend of one node.
pub struct JetStreamBackend {
    settings: ClusterSettings,
    /// This node's name.
    node: String,
    /// The presence bucket.
    presence: kv::Store,
    js: jetstream::Context,
    shards: Vec<Arc<Shard>>,
    view: Arc<dyn ChannelLog>,
    presence_log: Arc<dyn ChannelLog>,
    max_messages: u64,
    age_sweeps: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    /// Count retention of each channel's presence history, as the mirror records it.
    presence_retention: Mutex<HashMap<String, Retention>>,
    /// The last revision of the presence bucket the mirror has applied.
    presence_seen: watch::Sender<u64>,
    next_feed: AtomicU64,
    dir: PathBuf,
    stop: watch::Sender<bool>,
    appliers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The node's view directory under the data directory, and whether the last run left it
/// consistent: `RUNNING` is there while a node runs and removed after a clean stop.
pub fn prepare_view(data_dir: &Path) -> Result<PathBuf, StartError> {
    let dir = data_dir.join("cluster");
    let running = dir.join("RUNNING");
    let view = |e: std::io::Error| StartError::View(e.to_string());
    if running.exists() || !dir.join("applied.json").exists() {
        // An unclean stop (or a first start): the view may hold messages after what was
        // recorded as applied, so it is rebuilt from the streams.
        if dir.exists() {
            tracing::warn!(dir = %dir.display(), "cluster view not closed cleanly: rebuilding it from JetStream");
            std::fs::remove_dir_all(&dir).map_err(view)?;
        }
    }
    std::fs::create_dir_all(&dir).map_err(view)?;
    std::fs::write(&running, b"").map_err(view)?;
    Ok(dir)
}

impl JetStreamBackend {
    /// Connects to NATS, creates or opens the cluster's streams, and starts an applier per
    /// stream from where the view stands (`view` and `presence_log` are opened on the
    /// directory [`prepare_view`] returned). Returns once every applier has caught up with
    /// its stream as it was at start, so the node serves history as complete as any other.
    pub async fn start(
        settings: ClusterSettings,
        view: View,
        retention: &crate::config::Retention,
        age_sweeps: Arc<AtomicU64>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<JetStreamBackend>, StartError> {
        let View {
            dir: view_dir,
            messages: view,
            presence: presence_log,
        } = view;
        let max_messages = retention.max_messages_per_channel;
        let max_age = Duration::from_secs(retention.max_age_secs);
        let urls = settings.nats.join(",");
        let connect = async_nats::ConnectOptions::new()
            .name(settings.node_id.clone().unwrap_or_default())
            // A frozen server is noticed in seconds, not the client's default minutes.
            .ping_interval(Duration::from_secs(2))
            .retry_on_initial_connect()
            .connect(settings.nats.clone());
        let client = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                return Err(StartError::Connect {
                    urls,
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                return Err(StartError::Connect {
                    urls,
                    reason: format!("no answer in {} s", CONNECT_TIMEOUT.as_secs()),
                })
            }
        };
        let js = jetstream::new(client);
        let applied_path = view_dir.join("applied.json");
        let mut applied: Applied = std::fs::read(&applied_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let mut shards = Vec::new();
        let mut ends = Vec::new();
        for index in 0..settings.shards {
            let name = subject::stream_name(&settings.prefix, index);
            let config = stream::Config {
                name: name.clone(),
                subjects: vec![subject::stream_subjects(&settings.prefix, index)],
                num_replicas: settings.replicas(),
                storage: stream::StorageType::File,
                max_age,
                max_messages_per_subject: max_messages.try_into().unwrap_or(i64::MAX),
                discard: stream::DiscardPolicy::Old,
                duplicate_window: Duration::from_secs(settings.duplicate_window_secs),
                allow_direct: true,
                ..Default::default()
            };
            let fail = |e: &dyn std::fmt::Display| StartError::Stream {
                stream: name.clone(),
                reason: e.to_string(),
            };
            let info = retry_at_start(&name, || async {
                let mut handle = js
                    .get_or_create_stream(config.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                handle.info().await.cloned().map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| fail(&e))?;
            follow_settings(&js, &info.config, &config).await;
            let epoch = format!(
                "j{index}x{:x}",
                info.created.unix_timestamp_nanos() / 1_000_000
            );
            // Nothing to catch up with when the stream holds nothing (its messages expired).
            let last = if info.state.messages == 0 {
                0
            } else {
                info.state.last_sequence
            };
            let from = match applied.streams.remove(&name) {
                Some((seen, seq)) if seen == epoch => seq,
                Some(_) => {
                    return Err(StartError::View(format!(
                        "stream {name} was recreated since this node's view was written; remove {} to rebuild it",
                        view_dir.display()
                    )))
                }
                None => 0,
            };
            let (applied_tx, _) = watch::channel(from);
            shards.push(Arc::new(Shard {
                index,
                stream: name,
                epoch,
                state: Mutex::new(ShardState::default()),
                applied: applied_tx,
            }));
            ends.push(last);
        }
        let presence_config = kv::Config {
            bucket: format!("{}_PRES", settings.prefix.to_ascii_uppercase()),
            description: "presence members, by channel, connection and clientId".to_owned(),
            history: 1,
            num_replicas: settings.replicas(),
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let presence = retry_at_start("presence bucket", || {
            open_bucket(&js, presence_config.clone())
        })
        .await
        .map_err(|e| StartError::Stream {
            stream: "presence bucket".to_owned(),
            reason: e.to_string(),
        })?;
        let (stop, _) = watch::channel(false);
        let node = settings.node_id.clone().unwrap_or_default();
        let backend = Arc::new(JetStreamBackend {
            node,
            presence,
            settings,
            js,
            shards,
            view,
            presence_log,
            max_messages,
            age_sweeps,
            metrics,
            presence_retention: Mutex::new(HashMap::new()),
            presence_seen: watch::Sender::new(0),
            next_feed: AtomicU64::new(1),
            dir: view_dir,
            stop,
            appliers: Mutex::new(Vec::new()),
        });
        for shard in &backend.shards {
            let task = applier::Applier {
                shard: shard.clone(),
                js: backend.js.clone(),
                view: backend.view.clone(),
                max_messages: backend.max_messages,
                age_sweeps: backend.age_sweeps.clone(),
                metrics: backend.metrics.clone(),
            };
            let handle = tokio::spawn(task.run(backend.stop.subscribe()));
            backend.appliers.lock().expect("appliers").push(handle);
        }
        let (caught_up, mut presence_ready) = watch::channel(false);
        let watcher = tokio::spawn(
            backend
                .clone()
                .watch_presence(caught_up, backend.stop.subscribe()),
        );
        backend.appliers.lock().expect("appliers").push(watcher);
        let ephemeral = backend
            .js
            .client()
            .subscribe(backend.ephemeral_subject())
            .await
            .map_err(|e| StartError::Connect {
                urls: backend.settings.nats.join(","),
                reason: format!("subscribing to ephemeral messages: {e}"),
            })?;
        let relay = tokio::spawn(
            backend
                .clone()
                .deliver_relayed(ephemeral, backend.stop.subscribe()),
        );
        backend.appliers.lock().expect("appliers").push(relay);
        let members = backend.presence.status().await.map_or(0, |s| s.values());
        if members > 0 {
            let _ = presence_ready.wait_for(|ready| *ready).await;
        }
        for (shard, end) in backend.shards.iter().zip(ends) {
            let mut applied = shard.applied.subscribe();
            let _ = applied.wait_for(|seq| *seq >= end).await;
        }
        tracing::info!(
            shards = backend.shards.len(),
            "cluster view caught up with JetStream"
        );
        Ok(backend)
    }

    /// Stops the appliers and records where the view stands, after the view was closed
    /// cleanly (the caller's `close_cleanly`), so the next start continues from there.
    pub async fn stop(&self) {
        self.stop.send_replace(true);
        let handles: Vec<_> = std::mem::take(&mut *self.appliers.lock().expect("appliers"));
        for handle in handles {
            let _ = handle.await;
        }
    }

    /// Records the applied positions and removes the `RUNNING` mark; call after the view's
    /// clean close.
    pub fn record_clean_stop(&self) -> std::io::Result<()> {
        let applied = Applied {
            streams: self
                .shards
                .iter()
                .map(|s| (s.stream.clone(), (s.epoch.clone(), *s.applied.borrow())))
                .collect(),
        };
        let path = self.dir.join("applied.json");
        let partial = self.dir.join("applied.json.partial");
        std::fs::write(&partial, serde_json::to_vec(&applied)?)?;
        std::fs::rename(&partial, &path)?;
        std::fs::remove_file(self.dir.join("RUNNING"))
    }

    /// The JetStream context the backend uses, for the node's other cluster state.
    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    /// The last sequence applied to this node's view, per stream.
    pub fn applied(&self) -> std::collections::BTreeMap<String, u64> {
        self.shards
            .iter()
            .map(|s| (s.stream.clone(), *s.applied.borrow()))
            .collect()
    }

    /// Whether every applier is running (its consumer open).
    pub fn is_ready(&self) -> bool {
        !self
            .appliers
            .lock()
            .expect("appliers")
            .iter()
            .any(|h| h.is_finished())
    }

    fn ephemeral_subject(&self) -> String {
        format!("{}.ephemeral", self.settings.prefix)
    }

    /// Hands the ephemeral messages other nodes relay to the channels' feeds here, until
    /// `stop`. A channel with no sequencer on this node has no one to deliver them to.
    async fn deliver_relayed(
        self: Arc<Self>,
        mut relayed: async_nats::Subscriber,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let message = tokio::select! {
                message = futures_util::StreamExt::next(&mut relayed) => message,
                _ = stop.wait_for(|s| *s) => return,
            };
            let Some(message) = message else { return };
            let decoded =
                protocol::codec::decode_value(protocol::codec::Format::Msgpack, &message.payload);
            let Ok(relayed): Result<Relayed, _> = decoded else {
                continue;
            };
            if relayed.node == self.node {
                continue;
            }
            let sender = {
                let state = self
                    .shard(&relayed.channel)
                    .state
                    .lock()
                    .expect("shard state");
                state.feeds.get(&relayed.channel).map(|f| f.sender.clone())
            };
            if let Some(sender) = sender {
                // Dropped rather than waited for when the channel is behind: ephemeral.
                let _ = sender.try_send(Delivery::Ephemeral(relayed.messages));
            }
        }
    }

    fn shard(&self, channel: &str) -> &Arc<Shard> {
        &self.shards[subject::shard_of(channel, self.settings.shards) as usize]
    }
}

impl Backend for JetStreamBackend {
    fn epoch(&self, channel: &str) -> &str {
        &self.shard(channel).epoch
    }

    fn open(&self, channel: &str) -> Result<Box<dyn Stream>, StoreError> {
        let shard = self.shard(channel).clone();
        let id = self.next_feed.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel(FEED_DEPTH);
        // Under the feed lock, so the applier either wrote a message before the bounds are
        // read (and it is in them) or hands it to this feed (and the stream skips what the
        // bounds already cover): nothing falls between the two.
        let (bounds, members) = {
            let mut state = shard.state.lock().expect("shard state");
            let bounds = self.view.bounds(channel)?;
            state.feeds.insert(channel.to_owned(), Feed { id, sender });
            (
                bounds,
                state.members.get(channel).cloned().unwrap_or_default(),
            )
        };
        Ok(Box::new(JetStreamStream {
            name: channel.to_owned(),
            subject: subject::subject(&self.settings.prefix, shard.index, channel),
            head: Head {
                epoch: shard.epoch.clone(),
                first: bounds.map_or(1, |b| b.first),
                last: bounds.map_or(0, |b| b.last),
            },
            shard,
            feed_id: id,
            feed: receiver,
            js: self.js.clone(),
            view: self.view.clone(),
            deadline: Duration::from_millis(self.settings.publish_deadline_ms),
            metrics: self.metrics.clone(),
            members,
            presence_seen: self.presence_seen.subscribe(),
            node: self.node.clone(),
            presence_kv: self.presence.clone(),
            ephemeral_subject: self.ephemeral_subject(),
        }))
    }

    fn read(&self, channel: &str, query: &Query) -> Result<Vec<(u64, Message)>, StoreError> {
        self.view.read(channel, query)
    }

    fn read_presence(
        &self,
        channel: &str,
        query: &Query,
    ) -> Result<Vec<(u64, Message)>, StoreError> {
        self.presence_log.read(channel, query)
    }
}

/// One channel's stream on this node.
struct JetStreamStream {
    name: String,
    subject: String,
    head: Head,
    shard: Arc<Shard>,
    feed_id: u64,
    feed: mpsc::Receiver<Delivery>,
    js: jetstream::Context,
    view: Arc<dyn ChannelLog>,
    deadline: Duration,
    metrics: Arc<Metrics>,
    /// The channel's members: the mirror's when the stream opened, then its own changes and
    /// other nodes' events. Presence history is recorded by the mirror (`presence.rs`).
    members: PresenceSet,
    /// How far this node's mirror has applied the presence bucket.
    presence_seen: watch::Receiver<u64>,
    node: String,
    presence_kv: kv::Store,
    /// Where ephemeral messages go to the other nodes.
    ephemeral_subject: String,
}

impl Drop for JetStreamStream {
    fn drop(&mut self) {
        let mut state = self.shard.state.lock().expect("shard state");
        if state
            .feeds
            .get(&self.name)
            .is_some_and(|f| f.id == self.feed_id)
        {
            state.feeds.remove(&self.name);
        }
    }
}

/// What JetStream answered for one message.
#[derive(Clone, Copy)]
struct Acked {
    sequence: u64,
    duplicate: bool,
}

impl JetStreamStream {
    /// Publishes `payloads` in order and returns JetStream's answer for each. They are sent
    /// pipelined; after a failure the failed one and every later one are sent again, one at a
    /// time and in order, with the same ids, until the deadline, so the channel keeps one
    /// publisher's order through a leader election.
    async fn publish(
        &self,
        payloads: Vec<(HeaderMap, bytes::Bytes)>,
    ) -> Result<Vec<Acked>, StoreError> {
        let mut pending = Vec::with_capacity(payloads.len());
        for (headers, payload) in &payloads {
            let sent = self
                .js
                .publish_with_headers(self.subject.clone(), headers.clone(), payload.clone())
                .await;
            pending.push(sent);
        }
        let mut acked = Vec::with_capacity(payloads.len());
        let mut failed_at = None;
        for (i, sent) in pending.into_iter().enumerate() {
            let answer = match sent {
                Ok(future) => future.await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match answer {
                Ok(ack) => acked.push(Acked {
                    sequence: ack.sequence,
                    duplicate: ack.duplicate,
                }),
                Err(e) => {
                    self.metrics.cluster_publish_errors.inc();
                    tracing::warn!(channel = %self.name, error = %e, "JetStream publish failed; retrying");
                    failed_at = Some(i);
                    break;
                }
            }
        }
        let Some(from) = failed_at else {
            return Ok(acked);
        };
        let until = tokio::time::Instant::now() + self.deadline;
        let mut backoff = Duration::from_millis(50);
        for (headers, payload) in &payloads[from..] {
            loop {
                let answer = match self
                    .js
                    .publish_with_headers(self.subject.clone(), headers.clone(), payload.clone())
                    .await
                {
                    Ok(future) => future.await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match answer {
                    Ok(ack) => {
                        acked.push(Acked {
                            sequence: ack.sequence,
                            duplicate: ack.duplicate,
                        });
                        break;
                    }
                    Err(e) if tokio::time::Instant::now() + backoff < until => {
                        self.metrics.cluster_publish_errors.inc();
                        tracing::debug!(channel = %self.name, error = %e, "JetStream publish retry");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                    Err(e) => {
                        return Err(StoreError::Unconfirmed(format!(
                            "the cluster's store did not confirm the message within {} ms; it may or may not be stored ({e})",
                            self.deadline.as_millis()
                        )))
                    }
                }
            }
        }
        Ok(acked)
    }

    async fn append_batch(&mut self, drafts: Vec<Draft>) -> Result<Appended, StoreError> {
        let timestamp = now_ms();
        let token = subject::token(&self.name);
        let mut payloads = Vec::new();
        let mut sizes = Vec::with_capacity(drafts.len());
        for draft in &drafts {
            sizes.push(draft.messages.len());
            for m in &draft.messages {
                let mut headers = HeaderMap::new();
                if let Some(id) = &m.id {
                    // Ids are unique per channel, and a stream holds many channels; an
                    // app's ids and the broker's own never stand for each other.
                    let kind = if draft.app_ids { "app" } else { "srv" };
                    headers.insert("Nats-Msg-Id", format!("{token}/{kind}/{id}").as_str());
                }
                let mut stamped = m.clone();
                // Its position is the stream sequence, which the applier gives it.
                crate::backend::settle(&mut stamped, None, timestamp);
                let payload = rmp_serde::to_vec_named(&stamped)
                    .map_err(|e| StoreError::Engine(format!("encoding a message: {e}")))?;
                payloads.push((headers, bytes::Bytes::from(payload)));
            }
        }
        let sent = std::time::Instant::now();
        let acked = self.publish(payloads).await?;
        self.metrics
            .cluster_publish_latency
            .observe(sent.elapsed().as_secs_f64());
        let mut answers = acked.into_iter();
        let mut appended = Appended {
            timestamp,
            ..Default::default()
        };
        for size in sizes {
            let mut serials = Vec::with_capacity(size);
            for ack in answers.by_ref().take(size) {
                if !ack.duplicate {
                    appended.count += 1;
                }
                serials.push(Some(format_serial(&self.head.epoch, ack.sequence)));
            }
            // Delivered by the applier, in the stream's order, like every node's messages.
            appended.stored.push(Stored {
                fresh: Vec::new(),
                serials,
            });
        }
        Ok(appended)
    }
}

impl Stream for JetStreamStream {
    fn head(&self) -> &Head {
        &self.head
    }

    fn append(&mut self, drafts: Vec<Draft>) -> BoxFuture<'_, Result<Appended, StoreError>> {
        self.append_batch(drafts).boxed()
    }

    fn committed(&mut self) -> BoxFuture<'_, Committed> {
        async move {
            loop {
                let Some(delivery) = self.feed.recv().await else {
                    // The backend stopped: nothing more will come.
                    return std::future::pending().await;
                };
                match delivery {
                    Delivery::Messages(mut rows) => {
                        // The view may already have held these when the stream was opened.
                        rows.retain(|(seq, _)| *seq > self.head.last);
                        if let Some((last, _)) = rows.last() {
                            self.head.last = *last;
                            return Committed::Messages(rows);
                        }
                    }
                    Delivery::Ephemeral(messages) => return Committed::Ephemeral(messages),
                    Delivery::Presence(event) => {
                        // As the other node announced it, if it changes the members here.
                        if self.members.apply(event.clone()).is_some() {
                            return Committed::Presence(vec![event]);
                        }
                    }
                }
            }
        }
        .boxed()
    }

    fn relay(&mut self, messages: &[Message]) -> BoxFuture<'_, ()> {
        let relayed = Relayed {
            node: self.node.clone(),
            channel: self.name.clone(),
            messages: messages.to_vec(),
        };
        // msgpack keeps binary data as it is.
        let payload = protocol::codec::encode_value(protocol::codec::Format::Msgpack, &relayed);
        async move {
            // Best effort, as ephemeral messages are: a node that misses one never gets it.
            let subject = self.ephemeral_subject.clone();
            if let Err(e) = self.js.client().publish(subject, payload).await {
                tracing::debug!(error = %e, "ephemeral messages not relayed");
            }
        }
        .boxed()
    }

    fn when_durable(&mut self, _count: u64, then: WhenDurable) {
        // A PubAck means a quorum of the stream's replicas has the message.
        then(Ok(()))
    }

    fn refresh(&mut self) -> Result<(), StoreError> {
        if let Some(bounds) = self.view.bounds(&self.name)? {
            self.head.first = bounds.first.min(self.head.last + 1);
        }
        Ok(())
    }

    fn read(&self, query: &Query) -> Result<Vec<(u64, Message)>, StoreError> {
        let query = Query {
            to: query.to.min(self.head.last),
            ..query.clone()
        };
        self.view.read(&self.name, &query)
    }

    fn members(&self) -> &PresenceSet {
        &self.members
    }

    fn catches_up(&self) -> bool {
        true
    }

    fn holds_members(&self) -> bool {
        // The node's mirror keeps them; a stream opened again starts from it.
        false
    }

    fn presence(
        &mut self,
        change: PresenceChange,
    ) -> BoxFuture<'_, Result<Vec<PresenceMessage>, StoreError>> {
        async move {
            let events = self.members.change(change);
            presence::share(
                &self.presence_kv,
                &mut self.presence_seen,
                &self.node,
                &self.name,
                &events,
            )
            .await;
            Ok(events)
        }
        .boxed()
    }
}
