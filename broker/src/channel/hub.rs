//! One channel's attachers and its fan-out: who is attached with which modes, and the
//! delivery of each outgoing ProtocolMessage, encoded at most once per wire format, to the
//! attachers it is for. The sequencer decides what to send and in which order; the hub
//! decides to whom, from an [`Audience`] that is plain data. Frames for one attacher always
//! leave in the order the sequencer produced them: an attach is joined here (ATTACHED, the
//! presence SYNC, the backlog) before the attacher is registered, so live traffic follows.
//!
//! Today the hub runs inside the channel's task. It is the place where a hot channel's
//! delivery is to be spread over the runtime's workers (attachers in shards, each shard handed
//! the encoded frame once); see "What is not there yet" in `docs/architecture.md`.

use std::collections::HashMap;
use std::sync::Arc;

use protocol::{flags, Format, ProtocolMessage};

use super::Subscriber;
use crate::outbox::{encode_frame, Frame, PushError};

/// Who a broadcast is for.
#[derive(Clone, Debug)]
pub enum Audience {
    /// Messages: attachers with the SUBSCRIBE mode, except the publishing connection when it
    /// does not want its own messages echoed.
    Subscribers {
        /// The publishing connection, if any.
        origin: Option<Arc<str>>,
    },
    /// Annotations: attachers with the ANNOTATION_SUBSCRIBE mode, except the annotating
    /// connection when it does not want its own messages echoed.
    AnnotationSubscribers {
        /// The annotating connection, if any.
        origin: Option<Arc<str>>,
    },
    /// Presence events: attachers with the PRESENCE_SUBSCRIBE mode, and always the connection
    /// that made the change (RTP17a: ably-js fills its own-member map from that echo).
    PresenceSubscribers {
        /// The connection that made the change, if any.
        origin: Option<Arc<str>>,
    },
    /// Occupancy events (`[meta]occupancy`): attachers that asked for them and may have them,
    /// except those that already hold these counts from their first event.
    OccupancyListeners {
        /// Connections left out.
        except: Vec<Arc<str>>,
    },
}

impl Audience {
    fn includes(&self, attacher: &Subscriber) -> bool {
        let is_origin =
            |origin: &Option<Arc<str>>| origin.as_deref() == Some(attacher.connection_id.as_ref());
        match self {
            Audience::Subscribers { origin } => {
                attacher.modes & flags::MODE_SUBSCRIBE != 0 && (attacher.echo || !is_origin(origin))
            }
            Audience::AnnotationSubscribers { origin } => {
                attacher.modes & flags::MODE_ANNOTATION_SUBSCRIBE != 0
                    && (attacher.echo || !is_origin(origin))
            }
            Audience::PresenceSubscribers { origin } => {
                attacher.modes & flags::MODE_PRESENCE_SUBSCRIBE != 0 || is_origin(origin)
            }
            Audience::OccupancyListeners { except } => {
                attacher.occupancy && !except.contains(&attacher.connection_id)
            }
        }
    }
}

/// How a hub spreads a broadcast over the runtime's worker threads.
#[derive(Clone, Copy, Debug)]
pub struct Parallelism {
    /// Shards a large channel's attachers are split into (1: never split).
    pub shards: usize,
    /// Attachers from which a broadcast is split.
    pub min_attachers: usize,
}

impl Default for Parallelism {
    fn default() -> Self {
        Parallelism {
            shards: 1,
            min_attachers: usize::MAX,
        }
    }
}

/// One frame per wire format, encoded once and shared by every shard.
struct Frames {
    json: Frame,
    msgpack: Frame,
}

impl Frames {
    fn for_format(&self, format: Format) -> &Frame {
        match format {
            Format::Json => &self.json,
            Format::Msgpack => &self.msgpack,
        }
    }
}

/// Pushes the frame to each attacher of `audience` in `shard`; returns how many got it and
/// the attachers whose outbox refused it.
fn push_all(shard: &[Subscriber], frames: &Frames, audience: &Audience) -> (u64, Vec<Arc<str>>) {
    let mut delivered = 0;
    let mut gone = Vec::new();
    for attacher in shard.iter().filter(|a| audience.includes(a)) {
        match attacher
            .outbox
            .try_push(frames.for_format(attacher.outbox.format()).clone())
        {
            Ok(()) => delivered += 1,
            Err(PushError::Overflow | PushError::Closed) => {
                gone.push(attacher.connection_id.clone())
            }
        }
    }
    (delivered, gone)
}

/// A channel's attachers, by connectionId.
#[derive(Default)]
pub struct Hub {
    attachers: HashMap<Arc<str>, Subscriber>,
    parallelism: Parallelism,
    /// The attachers split into shards for a parallel broadcast; `None` once they changed.
    shards: Option<Vec<Arc<[Subscriber]>>>,
    /// Counts every change of the attachers or their modes, so the sequencer sees at a glance
    /// whether the occupancy may have changed.
    generation: u64,
    /// Attachers that get occupancy events, kept as they join and leave so that a channel
    /// without any does no occupancy work at all.
    occupancy_listeners: usize,
}

impl Hub {
    /// A hub that splits the broadcasts of a large channel as `parallelism` says.
    pub fn new(parallelism: Parallelism) -> Self {
        Hub {
            parallelism,
            ..Hub::default()
        }
    }

    /// True when nothing is attached.
    pub fn is_empty(&self) -> bool {
        self.attachers.is_empty()
    }

    /// How many connections are attached.
    pub fn len(&self) -> usize {
        self.attachers.len()
    }

    /// A number that changes whenever an attacher joins or leaves or its modes change.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How many attachers get occupancy events.
    pub fn occupancy_listeners(&self) -> usize {
        self.occupancy_listeners
    }

    /// How many attachers were granted `mode`.
    pub fn count_with(&self, mode: u64) -> usize {
        self.attachers
            .values()
            .filter(|a| a.modes & mode != 0)
            .count()
    }

    /// Joins `subscriber` to live traffic after `attached`, the presence `sync` pages and the
    /// `backlog`, all in that order through its outbox (§5.5). A subscriber whose outbox
    /// refuses any of them is not registered.
    pub fn join(
        &mut self,
        subscriber: Subscriber,
        attached: &ProtocolMessage,
        sync: &[ProtocolMessage],
        backlog: Vec<Frame>,
    ) {
        if subscriber.outbox.push(attached).is_err() {
            return;
        }
        for page in sync {
            if subscriber.outbox.push(page).is_err() {
                return;
            }
        }
        for frame in backlog {
            if subscriber.outbox.try_push(frame).is_err() {
                return;
            }
        }
        self.occupancy_listeners += usize::from(subscriber.occupancy);
        if let Some(replaced) = self
            .attachers
            .insert(subscriber.connection_id.clone(), subscriber)
        {
            self.occupancy_listeners -= usize::from(replaced.occupancy);
        }
        self.changed();
    }

    /// Removes `connection_id`'s attachment if socket `socket_id` still holds it.
    pub fn leave(&mut self, connection_id: &str, socket_id: u64) {
        if self.attached(connection_id, socket_id).is_some() {
            self.remove(connection_id);
        }
    }

    /// Changes the modes of `connection_id`'s attachment through socket `socket_id`, and
    /// stops its occupancy events unless `occupancy_allowed`.
    pub fn update_modes(
        &mut self,
        connection_id: &str,
        socket_id: u64,
        modes: u64,
        occupancy_allowed: bool,
    ) {
        let Some(attacher) = self.attached(connection_id, socket_id) else {
            return;
        };
        attacher.modes = modes;
        let stops = attacher.occupancy && !occupancy_allowed;
        attacher.occupancy &= occupancy_allowed;
        if stops {
            self.occupancy_listeners -= 1;
        }
        self.changed();
    }

    fn remove(&mut self, connection_id: &str) {
        if let Some(gone) = self.attachers.remove(connection_id) {
            self.occupancy_listeners -= usize::from(gone.occupancy);
            self.changed();
        }
    }

    fn changed(&mut self) {
        self.shards = None;
        self.generation += 1;
    }

    /// The attachment of `connection_id` through socket `socket_id`, if it is the current one,
    /// to read or change (its modes, its last SYNC).
    pub fn attached(&mut self, connection_id: &str, socket_id: u64) -> Option<&mut Subscriber> {
        self.shards = None;
        self.attachers
            .get_mut(connection_id)
            .filter(|a| a.socket_id == socket_id)
    }

    /// Hands `message` to every attacher of `audience`, encoding it at most once per wire
    /// format; the same frame (its payload reference-counted) goes to every receiver. An
    /// attacher whose outbox is full or closed is dropped from the channel (its connection is
    /// told by the outbox). Returns how many got it.
    pub fn broadcast(&mut self, message: &ProtocolMessage, audience: Audience) -> u64 {
        let mut json: Option<Frame> = None;
        let mut msgpack: Option<Frame> = None;
        let mut gone = Vec::new();
        let mut delivered = 0;
        for (id, attacher) in &self.attachers {
            if !audience.includes(attacher) {
                continue;
            }
            let frame = match attacher.outbox.format() {
                Format::Json => json.get_or_insert_with(|| encode_frame(Format::Json, message)),
                Format::Msgpack => {
                    msgpack.get_or_insert_with(|| encode_frame(Format::Msgpack, message))
                }
            };
            match attacher.outbox.try_push(frame.clone()) {
                Ok(()) => delivered += 1,
                Err(PushError::Overflow | PushError::Closed) => gone.push(id.clone()),
            }
        }
        self.drop_gone(gone);
        delivered
    }

    /// Like [`Hub::broadcast`] for each of `messages` in order, but a channel with at least
    /// `min_attachers` attachers has its attachers split into shards, and each shard pushes
    /// the frames (encoded once per format, before the split) to its attachers on a task of
    /// its own, so the pushes and the writer wake-ups of a hot channel spread over the
    /// runtime's worker threads. It returns once every shard is done, so the channel's next
    /// frame, to any attacher, follows these.
    ///
    /// The whole batch goes in one split: the channel's task waits for its shards once per
    /// batch, not per message. Split per message, a hot channel on two cores waited each time
    /// behind the wake-ups of every writer it had just woken, and fell seconds behind a
    /// publisher of 100 msg/s to 2,000 attachers that the unsplit broadcast kept up with.
    pub async fn broadcast_parallel(&mut self, messages: &[(ProtocolMessage, Audience)]) -> u64 {
        let Parallelism {
            shards,
            min_attachers,
        } = self.parallelism;
        if shards < 2 || self.attachers.len() < min_attachers {
            return messages
                .iter()
                .map(|(message, audience)| self.broadcast(message, audience.clone()))
                .sum();
        }
        let batch: Arc<[(Frames, Audience)]> = messages
            .iter()
            .map(|(message, audience)| {
                let frames = Frames {
                    json: encode_frame(Format::Json, message),
                    msgpack: encode_frame(Format::Msgpack, message),
                };
                (frames, audience.clone())
            })
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for shard in self.shards(shards) {
            let batch = batch.clone();
            tasks.spawn(async move {
                let mut delivered = 0;
                let mut gone = Vec::new();
                for (frames, audience) in batch.iter() {
                    let (count, refused) = push_all(&shard, frames, audience);
                    delivered += count;
                    gone.extend(refused);
                }
                (delivered, gone)
            });
        }
        let mut delivered = 0;
        let mut gone = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let Ok((count, refused)) = done else {
                continue;
            };
            delivered += count;
            gone.extend(refused);
        }
        gone.sort_unstable();
        gone.dedup();
        self.drop_gone(gone);
        delivered
    }

    /// The attachers in `count` shards of equal size, split again only after a change.
    fn shards(&mut self, count: usize) -> Vec<Arc<[Subscriber]>> {
        let attachers = &self.attachers;
        self.shards
            .get_or_insert_with(|| {
                let all: Vec<Subscriber> = attachers.values().cloned().collect();
                let size = all.len().div_ceil(count).max(1);
                all.chunks(size).map(Arc::from).collect()
            })
            .clone()
    }

    fn drop_gone(&mut self, gone: Vec<Arc<str>>) {
        if gone.is_empty() {
            return;
        }
        for id in gone {
            self.remove(&id);
        }
    }
}
