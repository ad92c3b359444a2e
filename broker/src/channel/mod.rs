//! Channels: a sharded registry ([`Channels`]) of per-channel sequencer tasks. Every command
//! for a channel (publish, attach, detach) goes through its one sequencer, which has the
//! backend (`crate::backend`) store each batch and its hub (`hub.rs`) fan it out in log order
//! (habit 8 of `../shared/style.md`); the ACKs wait until the backend says it is durable. A sequencer idle with no subscribers retires; commands that race its
//! retirement wait for it to finish and go to its successor, so there is never more than one
//! sequencer per channel.

pub mod annotations;
#[cfg(test)]
mod core_tests;
pub mod hub;
mod sequencer;
pub mod service;
pub mod versions;

pub(crate) use sequencer::is_ephemeral;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use protocol::error::codes;
use protocol::{ErrorInfo, Message};
use tokio::sync::{mpsc, oneshot, watch};

use crate::backend::Backend;
use crate::lifecycle::Tasks;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use hub::Parallelism;

/// The result of one publish: a serial per message, or why it was refused.
pub type PublishOutcome = Result<Vec<Option<String>>, ErrorInfo>;

/// Commands a sequencer queues before senders wait.
const QUEUE_DEPTH: usize = 1024;

/// What a sequencer needs from the broker.
pub struct ChannelContext {
    /// Where messages get their serials and are kept.
    pub backend: Arc<dyn Backend>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Longest channel name, in bytes.
    pub max_channel_name_length: usize,
    /// Largest publish, counted as §7.5 does.
    pub max_message_size: usize,
    /// Most messages a rewind delivers.
    pub max_rewind: usize,
    /// Most messages replayed on a resumed attach.
    pub max_resume_replay: usize,
    /// Most presence members per channel.
    pub max_presence_members: usize,
    /// How a channel with many attachers splits its broadcasts.
    pub fanout: Parallelism,
    /// Members per SYNC page.
    pub presence_sync_page_size: usize,
    /// Least time between two occupancy events of a channel, for changes that cross no zero.
    pub occupancy_interval: std::time::Duration,
    /// Most clientIds an annotation summary lists per name.
    pub summary_clip: usize,
    /// Becomes true when the broker shuts down; sequencers then finish and stop.
    pub shutdown: watch::Receiver<bool>,
    /// Shutdown waits for every sequencer.
    pub tasks: Tasks,
    /// How many retention sweeps have removed messages by age. A log's count retention counts
    /// again after one, since its own count no longer holds (`backend::local::Retention`).
    pub age_sweeps: Arc<AtomicU64>,
}

/// Where the outcome of a publish or a presence operation goes: to the publisher awaiting it
/// and, first, to whoever keeps it as data (a connection's msgSerial ledger, so that a resend
/// on another socket gets the same answer). A reply dropped unanswered answers 50001, so
/// neither the publisher nor the ledger waits forever for a channel that stopped.
pub struct Reply {
    sender: Option<oneshot::Sender<PublishOutcome>>,
    keep: Option<Keep>,
}

/// What keeps an outcome as data before the publisher sees it.
type Keep = Box<dyn FnOnce(&PublishOutcome) + Send>;

impl Reply {
    /// A reply, and the receiver the publisher awaits (see [`service::outcome_of`]).
    pub fn new() -> (Reply, oneshot::Receiver<PublishOutcome>) {
        let (sender, receiver) = oneshot::channel();
        let reply = Reply {
            sender: Some(sender),
            keep: None,
        };
        (reply, receiver)
    }

    /// Has `keep` see the outcome before the publisher does.
    pub fn keeping(mut self, keep: impl FnOnce(&PublishOutcome) + Send + 'static) -> Self {
        self.keep = Some(Box::new(keep));
        self
    }

    /// Answers the publish.
    pub fn send(mut self, outcome: PublishOutcome) {
        self.answer(outcome);
    }

    fn answer(&mut self, outcome: PublishOutcome) {
        if let Some(keep) = self.keep.take() {
            keep(&outcome);
        }
        if let Some(sender) = self.sender.take() {
            // The publisher may be gone (its socket closed); the outcome is kept regardless.
            let _ = sender.send(outcome);
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if self.sender.is_some() || self.keep.is_some() {
            self.answer(Err(service::stopped_before_storing()));
        }
    }
}

/// A publish of one ProtocolMessage's messages, already validated, with ids, clientIds and
/// connectionIds set. The sequencer adds serials and timestamps.
pub struct Publish {
    /// The messages, in order.
    pub messages: Vec<Message>,
    /// The publishing connection and ProtocolMessage id, for realtime publishes.
    pub origin: Option<Origin>,
    /// Whether the app set message ids, which are then checked against recent ones
    /// (idempotent publishing).
    pub app_ids: bool,
    /// What the publisher may change of earlier messages (updates, deletes, appends).
    pub rights: versions::Rights,
    /// When the broker received it, for the latency metric.
    pub received: Instant,
    /// Where the outcome goes once the messages are durable.
    pub reply: Reply,
}

/// The realtime publisher of a [`Publish`].
#[derive(Clone)]
pub struct Origin {
    /// The publisher's connectionId.
    pub connection_id: Arc<str>,
    /// `<connectionId>:<msgSerial>`.
    pub pm_id: String,
}

/// A connection's socket attached to a channel.
#[derive(Clone)]
pub struct Subscriber {
    /// The connectionId.
    pub connection_id: Arc<str>,
    /// The socket, so a stale detach from a replaced socket removes nothing.
    pub socket_id: u64,
    /// Where frames go.
    pub outbox: Outbox,
    /// Granted modes (§8.8).
    pub modes: u64,
    /// Whether the connection's own messages are delivered back to it.
    pub echo: bool,
    /// Whether it gets occupancy events: it asked with the `occupancy` param and its
    /// capability has `channel-metadata` (ably-chat.md §5.7).
    pub occupancy: bool,
    /// When the sequencer last answered a client SYNC of this attacher (`None` at attach),
    /// so a client repeating SYNC cannot keep the channel busy encoding its presence set.
    pub last_client_sync: Option<Instant>,
}

/// Where an attach starts delivering from (§5.4, §5.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartFrom {
    /// Only new messages.
    Live,
    /// After this `channelSerial` (a re-attach), RESUMED when continuity holds.
    Serial(String),
    /// The last N messages first.
    Rewind(usize),
    /// Messages of the last so many ms first.
    RewindFor(i64),
}

/// An attach request.
pub struct Attach {
    /// Who attaches.
    pub subscriber: Subscriber,
    /// Where delivery starts.
    pub from: StartFrom,
    /// The params to confirm on ATTACHED.
    pub params: BTreeMap<String, String>,
}

/// Commands a sequencer executes in order.
pub enum Command {
    /// Append and fan out.
    Publish(Publish),
    /// Send ATTACHED (and any backlog), then deliver live.
    Attach(Attach),
    /// Stop delivering to a socket; send DETACHED when `reply` is set.
    Detach {
        /// The connectionId.
        connection_id: Arc<str>,
        /// The socket that detaches.
        socket_id: u64,
        /// Send DETACHED here afterwards (a client DETACH), or nothing (socket gone).
        reply: Option<Outbox>,
        /// Also remove the connection's presence members at once (DETACH, CLOSE), rather
        /// than after the grace period of an abrupt drop.
        leave_presence: bool,
    },
    /// Enter, update or leave presence.
    Presence(PresenceOp),
    /// The connection's capability changed (in-band AUTH): deliver by these modes from now on.
    UpdateModes {
        /// The connectionId.
        connection_id: Arc<str>,
        /// The socket whose attachment changes.
        socket_id: u64,
        /// The newly granted modes.
        modes: u64,
        /// Whether the capability still has `channel-metadata`; occupancy events stop
        /// without it.
        metadata: bool,
    },
    /// Send the presence set afresh to a socket that asked with SYNC (RTP19).
    SyncPresence {
        /// The connectionId.
        connection_id: Arc<str>,
        /// The socket that asked.
        socket_id: u64,
    },
    /// A connection is gone for good: its members leave (§6.6).
    LeaveConnection {
        /// The connectionId.
        connection_id: Arc<str>,
    },
    /// List presence members (REST).
    ListPresence(ListPresence),
    /// Report occupancy (REST channel status).
    Occupancy {
        /// Where the answer goes.
        reply: oneshot::Sender<Occupancy>,
    },
    /// Answer once this node holds the channel up to `position` (`Channels::caught_up`).
    CatchUp {
        /// The position waited for.
        position: u64,
        /// Answered when the node holds it, or after the catch-up wait.
        reply: oneshot::Sender<()>,
    },
}

impl Command {
    /// Answers the command's waiter, if it has one, with `error` instead of running it: a
    /// publish or presence operation is NACKed with why the channel refused it (50300 while
    /// the broker shuts down) rather than with a generic failure.
    fn refuse(self, error: ErrorInfo) {
        match self {
            Command::Publish(p) => p.reply.send(Err(error)),
            Command::Presence(op) => op.reply.send(Err(error)),
            _ => {}
        }
    }
}

/// A client's presence operations on one channel, already validated and stamped with
/// clientId, connectionId, id and timestamp.
pub struct PresenceOp {
    /// The items, in order.
    pub items: Vec<protocol::PresenceMessage>,
    /// Who sent them.
    pub origin: Origin,
    /// ACK or NACK.
    pub reply: Reply,
}

/// A page request over the presence set.
pub struct ListPresence {
    /// Start after this (clientId, connectionId).
    pub after: Option<(String, String)>,
    /// Only this clientId.
    pub client_id: Option<String>,
    /// Only this connectionId.
    pub connection_id: Option<String>,
    /// Page size.
    pub limit: usize,
    /// Where the page goes.
    pub reply: oneshot::Sender<Vec<protocol::PresenceMessage>>,
}

/// Who is on a channel, in the shape of Ably's occupancy metrics (§9.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Occupancy {
    /// Attached connections.
    pub connections: usize,
    /// Attached connections that may enter presence.
    pub presence_connections: usize,
    /// Presence members.
    pub presence_members: usize,
    /// Attached connections receiving presence.
    pub presence_subscribers: usize,
    /// Attached connections that may publish.
    pub publishers: usize,
    /// Attached connections receiving messages.
    pub subscribers: usize,
}

impl Occupancy {
    /// Adds the attachers another node counted. The presence members are the channel's
    /// whichever node counts them, so they are not added.
    pub fn add_attachers(&mut self, other: &Occupancy) {
        self.connections += other.connections;
        self.presence_connections += other.presence_connections;
        self.presence_subscribers += other.presence_subscribers;
        self.publishers += other.publishers;
        self.subscribers += other.subscribers;
    }
}

#[derive(Clone)]
struct Handle {
    id: u64,
    commands: mpsc::Sender<Command>,
    retired: watch::Receiver<bool>,
}

/// The sharded registry of running sequencers.
pub struct Channels {
    map: DashMap<String, Handle>,
    context: Arc<ChannelContext>,
    next_id: AtomicU64,
}

impl Channels {
    /// Notes that the retention sweep removed messages by age, so that every channel counts
    /// its log again before it next trims.
    pub fn note_age_sweep(&self) {
        self.context.age_sweeps.fetch_add(1, Ordering::Relaxed);
    }

    /// An empty registry.
    pub fn new(context: ChannelContext) -> Arc<Channels> {
        Arc::new(Channels {
            map: DashMap::new(),
            context: Arc::new(context),
            next_id: AtomicU64::new(1),
        })
    }

    /// The shared context (log, metrics…).
    pub fn context(&self) -> &Arc<ChannelContext> {
        &self.context
    }

    /// Sends `command` to the channel's sequencer, starting one if none runs. Waits while the
    /// sequencer's queue is full (backpressure on the sender, never on other channels).
    pub async fn send(
        self: &Arc<Self>,
        channel: &str,
        mut command: Command,
    ) -> Result<(), ErrorInfo> {
        loop {
            let handle = match self.handle(channel) {
                Ok(handle) => handle,
                Err(e) => {
                    command.refuse(e.clone());
                    return Err(e);
                }
            };
            if handle.commands.is_closed() {
                let mut retired = handle.retired.clone();
                let _ = retired.wait_for(|done| *done).await;
                self.map.remove_if(channel, |_, h| h.id == handle.id);
                continue;
            }
            match handle.commands.send(command).await {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => command = back,
            }
        }
    }

    /// Whether `channel` has a sequencer on this node now.
    pub fn is_running(&self, channel: &str) -> bool {
        self.map.contains_key(channel)
    }

    fn handle(self: &Arc<Self>, channel: &str) -> Result<Handle, ErrorInfo> {
        if let Some(h) = self.map.get(channel) {
            return Ok(h.clone());
        }
        let mut failure = None;
        let handle = self
            .map
            .entry(channel.to_owned())
            .or_insert_with(|| {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
                let (retired_tx, retired_rx) = watch::channel(false);
                let guard = self.context.tasks.guard();
                match (
                    guard,
                    sequencer::Sequencer::load(channel, self.context.clone()),
                ) {
                    (Some(guard), Ok(seq)) => {
                        tokio::spawn(seq.run(id, rx, self.clone(), retired_tx, guard));
                    }
                    (None, _) => {
                        tracing::warn!(channel, "command refused: the broker is shutting down");
                        failure = Some(ErrorInfo::new(
                            codes::UNAVAILABLE,
                            "the broker is shutting down",
                        ));
                        let _ = retired_tx.send(true);
                    }
                    (_, Err(e)) => {
                        tracing::error!(channel, error = %e, "cannot open channel log");
                        failure = Some(ErrorInfo::new(
                            codes::INTERNAL_CHANNEL,
                            "channel log unavailable",
                        ));
                        let _ = retired_tx.send(true);
                    }
                }
                Handle {
                    id,
                    commands: tx,
                    retired: retired_rx,
                }
            })
            .clone();
        if let Some(e) = failure {
            self.map.remove_if(channel, |_, h| h.id == handle.id);
            return Err(e);
        }
        Ok(handle)
    }

    fn forget(&self, channel: &str, id: u64) {
        self.map.remove_if(channel, |_, h| h.id == id);
    }

    /// How many sequencers run.
    pub fn active(&self) -> usize {
        self.map.len()
    }
}

/// Checks a channel name (§11 code 40010): non-empty, at most `max_len` bytes, no control
/// characters, no empty namespace (a leading `:`, as in `:hell` or `::`, which Ably refuses),
/// and no `[qualifier]` prefix (derived channels are not supported, §5.4).
pub fn validate_name(name: &str, max_len: usize) -> Result<(), ErrorInfo> {
    let invalid = |why: &str| {
        ErrorInfo::new(
            codes::INVALID_CHANNEL_NAME,
            format!("invalid channel name: {why}"),
        )
    };
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.len() > max_len {
        return Err(invalid(&format!("longer than {max_len} bytes")));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("contains control characters"));
    }
    if name.starts_with(':') {
        return Err(invalid("the namespace before the first ':' is empty"));
    }
    if name.starts_with('[') {
        return Err(invalid(
            "channel qualifiers such as [?rewind=1] are not supported; use channel params",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;

    /// Issue 15 item 6: a command refused because the broker shuts down is answered with
    /// 50300, the publisher's NACK included, not with a generic channel failure.
    #[tokio::test]
    async fn commands_during_shutdown_are_refused_with_50300() {
        let metrics = Arc::new(Metrics::new());
        let (tasks, _done) = Tasks::new();
        let (_stop, shutdown) = watch::channel(true);
        let channels = Channels::new(ChannelContext {
            backend: Arc::new(MemoryBackend::new("test", 100)),
            metrics,
            max_channel_name_length: 100,
            max_message_size: 1000,
            max_rewind: 100,
            max_resume_replay: 100,
            max_presence_members: 100,
            fanout: Parallelism::default(),
            presence_sync_page_size: 100,
            occupancy_interval: std::time::Duration::from_secs(15),
            summary_clip: 100,
            shutdown,
            tasks: tasks.clone(),
            age_sweeps: Default::default(),
        });
        tasks.close();
        let (reply, outcome) = Reply::new();
        let publish = Publish {
            rights: Default::default(),
            messages: vec![Message::default()],
            origin: None,
            app_ids: false,
            received: Instant::now(),
            reply,
        };
        let refused = channels.send("c", Command::Publish(publish)).await;
        assert_eq!(refused.unwrap_err().code, codes::UNAVAILABLE);
        assert_eq!(outcome.await.unwrap().unwrap_err().code, codes::UNAVAILABLE);
        assert_eq!(channels.active(), 0);
    }
}
