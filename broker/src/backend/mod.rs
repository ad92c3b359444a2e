//! The backend seam: where a channel's messages get their positions and are kept. A channel's
//! actor (`channel/sequencer.rs`) orders its commands and hands each batch of publishes to the
//! backend's [`Stream`] for that channel; the backend gives every new message its serial and
//! timestamp, answers a message whose app-set id it has seen with the earlier serial, stores
//! the rest, and says when the batch is durable. The actor then fans the stored messages out
//! and acknowledges the publishers. Readers (resume, rewind, REST history) read the committed
//! messages back through [`Backend::read`]. The stream also keeps the channel's presence: the
//! actor hands it each change ([`Stream::presence`]), the stream applies it to the member set
//! and records the events in the presence history (read with [`Backend::read_presence`]), and
//! the actor broadcasts the events it gets back.
//!
//! What crosses the seam is plain data: messages, presence changes and events, serials,
//! positions and errors, never a future of another task. Three backends:
//! - [`local`]: today's single node, the segment log indexed in sled with group commit; an
//!   ACK means the message was fsynced;
//! - [`memory`]: everything in memory, durable at once, for unit tests of the channel core;
//! - [`jetstream`]: cluster mode, NATS JetStream as the replicated log and each node a replica
//!   (`../shared/cluster.md`); an ACK means a quorum of the stream's replicas has the message,
//!   and every message, the node's own included, is delivered through [`Stream::committed`].
//!
//! All pass the same conformance suite (`conformance/`): order, idempotent publish, history
//! both ways with pagination, resume positions, epochs, retention, the member set and presence
//! history, and failure answers (local and memory; a JetStream publish that fails may still be
//! stored). Local and memory run it as unit tests, JetStream from the integration tests.

pub mod jetstream;
pub mod local;
pub mod memory;
pub mod presence;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

use futures_util::future::BoxFuture;
use protocol::{Message, PresenceMessage};

use self::presence::PresenceSet;

pub use crate::store::{Direction, Query, StoreError};

/// One publish's messages as the channel service hands them over: validated, with ids,
/// clientIds and connectionIds set, but no serial or timestamp yet.
#[derive(Debug, Default)]
pub struct Draft {
    /// The messages, in order.
    pub messages: Vec<Message>,
    /// The ids are the app's own (idempotent publishing, §7.3): a message whose id was
    /// stored recently is not stored again.
    pub app_ids: bool,
}

/// What the backend did with one [`Draft`].
#[derive(Debug, Default)]
pub struct Stored {
    /// The messages stored, each with its serial and timestamp, in order.
    pub fresh: Vec<Message>,
    /// The serial of each message of the draft, in the draft's order: a message answered
    /// from an earlier publish with the same id has that publish's serial.
    pub serials: Vec<Option<String>>,
}

/// The result of one append: one [`Stored`] per draft, in order.
#[derive(Debug, Default)]
pub struct Appended {
    /// Per draft.
    pub stored: Vec<Stored>,
    /// The timestamp given to the batch's new messages.
    pub timestamp: i64,
    /// How many messages the batch stored.
    pub count: u64,
}

/// Where a channel's stream is: its epoch and the serials it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The identity of the backend's serials (§5.5): a serial of another epoch is never taken
    /// as a position in this one.
    pub epoch: String,
    /// The oldest serial retained (`last + 1` when nothing is).
    pub first: u64,
    /// The newest serial given out.
    pub last: u64,
}

/// A change to a channel's member set, as the channel's actor hands it to the stream.
#[derive(Debug)]
pub enum PresenceChange {
    /// A client's enter, update and leave items (§6.3), with clientId, connectionId, id and
    /// timestamp set.
    Apply(Vec<PresenceMessage>),
    /// Every member of `connection_id` leaves, with leaves made by the server at `at`
    /// (§6.5, §6.6).
    LeaveConnection {
        /// The connection whose members leave.
        connection_id: String,
        /// The leaves' timestamp (ms since the epoch).
        at: i64,
    },
}

/// What [`Stream::committed`] hands the channel's actor to deliver.
#[derive(Debug)]
pub enum Committed {
    /// Messages committed to the channel, with their positions, in order.
    Messages(Vec<(u64, Message)>),
    /// Presence events from other nodes, to broadcast.
    Presence(Vec<PresenceMessage>),
    /// Ephemeral messages other nodes' publishers sent (`extras.ephemeral`,
    /// `../shared/ably-chat.md` §5.9): delivered, never stored.
    Ephemeral(Vec<Message>),
}

/// Stamps a message as every backend stores it: its timestamp (and its version's, for an entry
/// about an earlier message: a change, summary or annotation), action 0 for a new message, and, when known, its position (see
/// [`Message::place`]).
pub fn settle(message: &mut Message, position: Option<String>, timestamp: i64) {
    message.timestamp = Some(timestamp);
    if message.refers() {
        message
            .version
            .get_or_insert_with(Default::default)
            .timestamp = Some(timestamp);
    } else {
        message.action = Some(Message::CREATE);
    }
    if let Some(position) = position {
        message.place(position);
    }
}

/// Called once with whether a batch became durable.
pub type WhenDurable = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A backend: opens channel streams and reads any channel.
pub trait Backend: Send + Sync + 'static {
    /// The identity of `channel`'s serials: a serial of another epoch is never taken as a
    /// position (§5.5).
    fn epoch(&self, channel: &str) -> &str;
    /// Opens `channel`'s stream, for the one actor that orders that channel. Blocking: it may
    /// read the store.
    fn open(&self, channel: &str) -> Result<Box<dyn Stream>, StoreError>;
    /// Reads committed messages of `channel` with their positions. Blocking.
    fn read(&self, channel: &str, query: &Query) -> Result<Vec<(u64, Message)>, StoreError>;
    /// Reads `channel`'s presence history (the records of [`Stream::presence`]) with
    /// their positions. Blocking.
    fn read_presence(
        &self,
        channel: &str,
        query: &Query,
    ) -> Result<Vec<(u64, Message)>, StoreError>;
}

/// One channel's stream, owned by the channel's actor: the only writer of that channel.
pub trait Stream: Send {
    /// The stream's epoch and the serials it holds, as of the last append or
    /// [`Stream::refresh`].
    fn head(&self) -> &Head;
    /// Stamps and stores a batch of publishes (§7.3). The returned future resolves once the
    /// messages may be delivered to subscribers; acknowledging them waits for
    /// [`Stream::when_durable`]. On an error nothing of the batch is stored and no id of it is
    /// remembered; serials given out are not reused.
    fn append(&mut self, drafts: Vec<Draft>) -> BoxFuture<'_, Result<Appended, StoreError>>;
    /// Resolves with the next change to the channel that did not come through this stream:
    /// messages its appends did not hand back in [`Stored::fresh`] (with their positions, in
    /// order and each once; the head moves past them), or presence events of other nodes
    /// (already applied to [`Stream::members`] and recorded). A backend whose streams are the
    /// channel's only writers (local, memory) has none and never resolves; a shared backend
    /// (cluster mode) delivers every message through here, its own writers' included, in the
    /// order all nodes share.
    fn committed(&mut self) -> BoxFuture<'_, Committed>;
    /// Hands ephemeral messages (`extras.ephemeral`, never stored) that this node's
    /// publishers sent to the channel's other writers, which deliver them through
    /// [`Stream::committed`]. A backend whose streams are the channels' only writers has no
    /// one to tell.
    fn relay(&mut self, messages: &[Message]) -> BoxFuture<'_, ()> {
        let _ = messages;
        Box::pin(std::future::ready(()))
    }
    /// Whether the head may lag serials other writers gave out (cluster mode: another node
    /// may be further along), so that an attach with a serial ahead of the head should wait
    /// for [`Stream::committed`] to reach it rather than lose continuity.
    fn catches_up(&self) -> bool {
        false
    }
    /// Calls `then` once everything appended so far is durable (or could not be made so).
    fn when_durable(&mut self, count: u64, then: WhenDurable);
    /// Reads what retention left since the head was last read (`first` moves up). Blocking.
    fn refresh(&mut self) -> Result<(), StoreError>;
    /// Reads committed messages with their positions. Blocking.
    fn read(&self, query: &Query) -> Result<Vec<(u64, Message)>, StoreError>;
    /// The channel's members, as of the last change.
    fn members(&self) -> &PresenceSet;
    /// Whether the stream is where the members are kept, so its actor must not retire while
    /// there are any. Cluster mode keeps them on the node beside the streams.
    fn holds_members(&self) -> bool {
        !self.members().is_empty()
    }
    /// Applies a presence change to the member set and records the events it causes in the
    /// channel's presence history (as `presence::to_record` records, numbered after the last,
    /// kept to the backend's retention); resolves to those events, in order, for the actor to
    /// broadcast. A re-enter with unchanged data causes none (§6.3 item 4). On an error the
    /// member set is unchanged. The history is not waited for: it becomes durable with the
    /// next commit, and a failure to record it is logged, not returned.
    fn presence(
        &mut self,
        change: PresenceChange,
    ) -> BoxFuture<'_, Result<Vec<PresenceMessage>, StoreError>>;
}
