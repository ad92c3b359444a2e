//! One channel's sequencer: the single task that orders the channel. It hands each batch of
//! accepted publishes to the channel's stream in the backend (`backend/`), which gives every
//! new message its serial and timestamp and stores it; the sequencer fans the stored messages
//! out at once and answers the publishers when the backend says the batch is durable — so an
//! ACK means "on disk" and every subscriber sees the log's order (the local backend may make
//! delivery wait for the sync too, see `backend/local.rs`). Each outgoing ProtocolMessage is
//! encoded once per wire format and the same frame is handed to every subscriber (habit 6).
//! Attaches are ordered with publishes here too, so a replay joins live traffic without a gap
//! or a duplicate (§5.6). Presence is ordered here as well: each change goes to the stream,
//! which applies it to the member set and records its history; the sequencer broadcasts the
//! events that come back and makes the SYNC pages from the stream's members.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::error::codes;
use protocol::{
    flags, Action, Annotation, ErrorInfo, Message, PresenceAction, PresenceMessage, ProtocolMessage,
};
use tokio::sync::{mpsc, watch};

use super::annotations::{self, Aggregates};
use super::hub::{Audience, Hub};
use super::versions::{self, Latest};
use super::{
    Attach, ChannelContext, Channels, Command, Occupancy, PresenceOp, Publish, StartFrom,
    Subscriber,
};
use crate::auth::now_ms;
use crate::backend::{Committed, Draft, PresenceChange, Stored, Stream};
use crate::lifecycle::TaskGuard;
use crate::outbox::{encode_frame, Frame};
use crate::store::{format_serial, parse_serial, Direction, Query, StoreError};

/// Publishes taken into one log append and one commit at most.
const MAX_BATCH: usize = 256;
/// How long a sequencer with no attachers waits for work before it retires.
const IDLE_RETIRE: Duration = Duration::from_secs(30);
/// How long an attach whose serial is ahead of this node's view waits for the view to reach
/// it (cluster mode) before it is answered without continuity.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);
/// At most one client SYNC per attacher is answered in this time; ably-js sends one only in
/// rare recoveries, and each costs an encoding of the whole presence set.
const CLIENT_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// What an attach sends between ATTACHED and live traffic.
enum Backlog {
    /// Continuity holds: ATTACHED with RESUMED and this serial, then these messages.
    Resumed { serial: String, frames: Vec<Frame> },
    /// A rewind: ATTACHED with HAS_BACKLOG, then these messages.
    Rewound {
        frames: Vec<Frame>,
        truncated: Option<ErrorInfo>,
    },
    /// Nothing to replay; `lost` says when continuity could not be kept.
    None { lost: Option<ErrorInfo> },
}

pub(super) struct Sequencer {
    name: String,
    context: Arc<ChannelContext>,
    /// The channel's stream in the backend: its serials, idempotency and log.
    stream: Box<dyn Stream>,
    /// The channel's attachers and its fan-out.
    hub: Hub,
    syncs: u64,
    /// Attaches waiting for the stream to reach their serial, with their deadlines.
    waiting: Vec<(Attach, u64, Instant)>,
    /// The latest versions of messages changed lately.
    latest: Latest,
    /// The annotations of messages annotated lately, folded.
    aggregates: Aggregates,
    /// Occupancy events: what the listeners were last told, and when the next may go.
    occupancy: OccupancyFeed,
}

/// The state of a channel's occupancy events (ably-chat.md §5.7); all empty while no attacher
/// listens.
#[derive(Default)]
struct OccupancyFeed {
    /// The counts the listeners were last sent.
    sent: Option<Occupancy>,
    /// The hub's generation and the member count the counts were last computed from.
    seen: Option<(u64, usize)>,
    /// When the last event went to every listener.
    sent_at: Option<Instant>,
    /// When a debounced change is to go out.
    due: Option<Instant>,
    /// Listeners whose first event, since the last broadcast, carried these counts.
    fresh: Vec<(Arc<str>, Occupancy)>,
    /// Events sent, for their ids.
    events: u64,
}

impl Sequencer {
    /// Opens the channel's stream in the backend.
    pub(super) fn load(name: &str, context: Arc<ChannelContext>) -> Result<Sequencer, StoreError> {
        let stream = context.backend.open(name)?;
        Ok(Sequencer {
            name: name.to_owned(),
            stream,
            hub: Hub::new(context.fanout),
            waiting: Vec::new(),
            syncs: 0,
            latest: Latest::default(),
            aggregates: Aggregates::default(),
            occupancy: OccupancyFeed::default(),
            context,
        })
    }

    pub(super) async fn run(
        mut self,
        id: u64,
        mut commands: mpsc::Receiver<Command>,
        channels: Arc<Channels>,
        retired: watch::Sender<bool>,
        guard: TaskGuard,
    ) {
        self.context.metrics.active_channels.inc();
        let mut shutdown = self.context.shutdown.clone();
        let mut leftover_attaches = Vec::new();
        loop {
            self.occupancy_update(Instant::now());
            let occupancy_due = self.occupancy.due;
            let idle =
                self.hub.is_empty() && !self.stream.holds_members() && self.waiting.is_empty();
            let give_up = self.waiting.iter().map(|(_, _, until)| *until).min();
            let first = tokio::select! {
                command = commands.recv() => command,
                committed = self.stream.committed() => {
                    self.take_committed(committed).await;
                    continue;
                }
                _ = sleep_until(give_up), if give_up.is_some() => {
                    self.attach_caught_up(false);
                    continue;
                }
                _ = sleep_until(occupancy_due), if occupancy_due.is_some() => continue,
                _ = tokio::time::sleep(IDLE_RETIRE), if idle => None,
                _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => None,
            };
            let Some(first) = first else {
                // Retire (idle, or the broker stops): refuse new commands, finish the queued
                // ones, then make way for a successor.
                commands.close();
                let mut rest = Vec::new();
                while let Some(c) = commands.recv().await {
                    match c {
                        Command::Attach(a) => leftover_attaches.push(a),
                        other => rest.push(other),
                    }
                }
                self.execute(rest).await;
                self.attach_caught_up(true);
                break;
            };
            // Take what queued meanwhile: consecutive publishes share one append and commit.
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match commands.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            self.execute(batch).await;
        }
        channels.forget(&self.name, id);
        self.context.metrics.active_channels.dec();
        let _ = retired.send(true);
        let stopping = *self.context.shutdown.borrow();
        for attach in leftover_attaches.into_iter().filter(|_| !stopping) {
            let channels = channels.clone();
            let name = self.name.clone();
            tokio::spawn(async move {
                let _ = channels.send(&name, Command::Attach(attach)).await;
            });
        }
        drop(guard);
    }

    /// Executes commands in order, grouping runs of publishes into one append.
    async fn execute(&mut self, commands: Vec<Command>) {
        let mut publishes = Vec::new();
        for command in commands {
            match command {
                Command::Publish(p) => publishes.push(p),
                other => {
                    if !publishes.is_empty() {
                        self.publish(std::mem::take(&mut publishes)).await;
                    }
                    self.execute_other(other).await;
                }
            }
        }
        if !publishes.is_empty() {
            self.publish(publishes).await;
        }
    }

    async fn execute_other(&mut self, command: Command) {
        match command {
            Command::Publish(_) => unreachable!("publishes are batched by execute"),
            Command::Attach(a) => self.attach(a),
            Command::Detach {
                connection_id,
                socket_id,
                reply,
                leave_presence,
            } => {
                self.hub.leave(&connection_id, socket_id);
                if leave_presence {
                    self.leave_connection(&connection_id).await;
                }
                if let Some(outbox) = reply {
                    let _ =
                        outbox.push(&ProtocolMessage::for_channel(Action::Detached, &self.name));
                }
            }
            Command::Presence(op) => self.presence(op).await,
            Command::UpdateModes {
                connection_id,
                socket_id,
                modes,
                metadata,
            } => self
                .hub
                .update_modes(&connection_id, socket_id, modes, metadata),
            Command::SyncPresence {
                connection_id,
                socket_id,
            } => {
                let now = Instant::now();
                let Some(asker) = self.hub.attached(&connection_id, socket_id) else {
                    return;
                };
                if asker
                    .last_client_sync
                    .is_some_and(|at| now.duration_since(at) < CLIENT_SYNC_INTERVAL)
                {
                    tracing::debug!(channel = %self.name, "client SYNC within the interval ignored");
                    return;
                }
                asker.last_client_sync = Some(now);
                let outbox = asker.outbox.clone();
                // A full outbox closes the socket on its own; the client resumes.
                for page in self.sync_pages() {
                    if outbox.push(&page).is_err() {
                        break;
                    }
                }
            }
            Command::LeaveConnection { connection_id } => {
                self.leave_connection(&connection_id).await
            }
            Command::ListPresence(list) => {
                let members = self.stream.members().list(
                    list.after.as_ref(),
                    list.client_id.as_deref(),
                    list.connection_id.as_deref(),
                    list.limit,
                );
                let _ = list.reply.send(members);
            }
            Command::Occupancy { reply } => {
                let _ = reply.send(self.count_occupancy());
            }
            Command::CatchUp { position, reply } => {
                if self.stream.catches_up() {
                    self.catch_up_to(position).await;
                }
                let _ = reply.send(());
            }
        }
    }

    /// Who is on the channel, as this node sees it.
    fn count_occupancy(&self) -> Occupancy {
        let count = |mode: u64| self.hub.count_with(mode);
        Occupancy {
            connections: self.hub.len(),
            presence_connections: count(flags::MODE_PRESENCE),
            presence_members: self.stream.members().len(),
            presence_subscribers: count(flags::MODE_PRESENCE_SUBSCRIBE),
            publishers: count(flags::MODE_PUBLISH),
            subscribers: count(flags::MODE_SUBSCRIBE),
        }
    }

    /// Sends the occupancy listeners the counts when they changed (ably-chat.md §5.7): at
    /// once when a count went to or from zero, otherwise at most once per
    /// `occupancy_interval`, with the counts as they are then. Runs after every piece of
    /// work; a channel without listeners only reads a counter, and the counts are computed
    /// only when the attachers, their modes or the member count changed.
    fn occupancy_update(&mut self, now: Instant) {
        if self.hub.occupancy_listeners() == 0 {
            if self.occupancy.sent.is_some() {
                self.occupancy = OccupancyFeed::default();
            }
            return;
        }
        let seen = (self.hub.generation(), self.stream.members().len());
        let is_due = self.occupancy.due.is_some_and(|due| due <= now);
        if self.occupancy.seen == Some(seen) && !is_due {
            return;
        }
        self.occupancy.seen = Some(seen);
        let counts = self.count_occupancy();
        let Some(sent) = self.occupancy.sent else {
            self.broadcast_occupancy(counts, now);
            return;
        };
        if counts == sent {
            self.occupancy.due = None;
            return;
        }
        let next = self
            .occupancy
            .sent_at
            .map_or(now, |at| at + self.context.occupancy_interval);
        if crosses_zero(&sent, &counts) || next <= now {
            self.broadcast_occupancy(counts, now);
        } else {
            self.occupancy.due = Some(next);
        }
    }

    fn broadcast_occupancy(&mut self, counts: Occupancy, now: Instant) {
        let except = std::mem::take(&mut self.occupancy.fresh)
            .into_iter()
            .filter(|(_, told)| *told == counts)
            .map(|(id, _)| id)
            .collect();
        let message = self.occupancy_message(&counts);
        self.hub
            .broadcast(&message, Audience::OccupancyListeners { except });
        self.occupancy.sent = Some(counts);
        self.occupancy.sent_at = Some(now);
        self.occupancy.due = None;
    }

    /// A `[meta]occupancy` MESSAGE (ably-chat.md §5.7): no channelSerial, never stored.
    fn occupancy_message(&mut self, counts: &Occupancy) -> ProtocolMessage {
        self.occupancy.events += 1;
        let now = now_ms();
        let metrics = serde_json::json!({
            "metrics": {
                "connections": counts.connections,
                "publishers": counts.publishers,
                "subscribers": counts.subscribers,
                "presenceConnections": counts.presence_connections,
                "presenceMembers": counts.presence_members,
                "presenceSubscribers": counts.presence_subscribers,
                "objectPublishers": 0,
                "objectSubscribers": 0,
            }
        });
        let message = Message {
            id: Some(format!(
                "meta-occupancy:{now}:{}:{}",
                self.occupancy.events,
                short_hash(&self.name)
            )),
            name: Some("[meta]occupancy".to_owned()),
            action: Some(Message::META),
            timestamp: Some(now),
            data: Some(protocol::message::Data::String(metrics.to_string())),
            encoding: Some("json".to_owned()),
            ..Message::default()
        };
        ProtocolMessage {
            timestamp: Some(now),
            messages: Some(vec![message]),
            ..ProtocolMessage::for_channel(Action::Message, &self.name)
        }
    }

    /// Hands a client's presence operations (§6.3) to the stream, which applies them and
    /// records the events in the presence history, and broadcasts the events to presence
    /// subscribers and always to the originator (RTP17a), which fills its own-member map only
    /// from that echo.
    async fn presence(&mut self, op: PresenceOp) {
        let PresenceOp {
            items,
            origin,
            reply,
        } = op;
        let count = items.len();
        let members = self.stream.members();
        let joining = items
            .iter()
            .filter(|i| i.action != PresenceAction::Leave)
            .filter(|i| {
                !members.contains(
                    i.client_id.as_deref().unwrap_or(""),
                    i.connection_id.as_deref().unwrap_or(""),
                )
            })
            .count();
        if members.len() + joining > self.context.max_presence_members {
            reply.send(Err(ErrorInfo::new(
                codes::PRESENCE_LIMIT,
                format!(
                    "channel {} already has the maximum of {} presence members",
                    self.name, self.context.max_presence_members
                ),
            )));
            return;
        }
        let Some(events) = self.change_presence(PresenceChange::Apply(items)).await else {
            reply.send(Err(ErrorInfo::new(
                codes::INTERNAL_CHANNEL,
                "presence could not be updated",
            )));
            return;
        };
        if events.is_empty() {
            reply.send(Ok(vec![None; count]));
            return;
        }
        let timestamp = events.iter().filter_map(|e| e.timestamp).max();
        let message = ProtocolMessage {
            id: Some(origin.pm_id),
            connection_id: Some(origin.connection_id.to_string()),
            timestamp,
            presence: Some(events),
            ..ProtocolMessage::for_channel(Action::Presence, &self.name)
        };
        self.announce_presence(&message, Some(&origin.connection_id));
        // Only now the ACK: ably-js records its own members from the echo, so the echo must
        // reach the originator's outbox before the ACK does.
        reply.send(Ok(vec![None; count]));
    }

    /// Removes a connection's members and broadcasts server-made leaves (§6.5, §6.6).
    async fn leave_connection(&mut self, connection_id: &str) {
        let change = PresenceChange::LeaveConnection {
            connection_id: connection_id.to_owned(),
            at: now_ms(),
        };
        let Some(leaves) = self.change_presence(change).await else {
            return;
        };
        if leaves.is_empty() {
            return;
        }
        // No `id` on the ProtocolMessage either, or ably-js would derive one from it (§6.5).
        let message = ProtocolMessage {
            timestamp: leaves.first().and_then(|l| l.timestamp),
            presence: Some(leaves),
            ..ProtocolMessage::for_channel(Action::Presence, &self.name)
        };
        self.announce_presence(&message, None);
    }

    /// Hands one change to the stream and keeps the member gauge; `None` when the backend
    /// failed (the member set is then unchanged).
    async fn change_presence(&mut self, change: PresenceChange) -> Option<Vec<PresenceMessage>> {
        let before = self.stream.members().len();
        let events = match self.stream.presence(change).await {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(channel = %self.name, error = %e, "presence change failed");
                return None;
            }
        };
        let after = self.stream.members().len();
        self.context
            .metrics
            .presence_members
            .add(after as i64 - before as i64);
        Some(events)
    }

    /// Broadcasts presence events that other nodes' members caused (cluster mode): leaves
    /// and enters arrive as the stream learnt of them, with no originator on this node.
    fn announce_remote_presence(&mut self, events: Vec<PresenceMessage>) {
        let message = ProtocolMessage {
            timestamp: events.iter().filter_map(|e| e.timestamp).max(),
            presence: Some(events),
            ..ProtocolMessage::for_channel(Action::Presence, &self.name)
        };
        self.announce_presence(&message, None);
    }

    /// Counts presence events and broadcasts them (the stream has recorded their history).
    fn announce_presence(&mut self, message: &ProtocolMessage, origin: Option<&str>) {
        let events = message.presence.as_deref().unwrap_or_default();
        for event in events {
            let name = match event.action {
                PresenceAction::Enter => "enter",
                PresenceAction::Leave => "leave",
                _ => "update",
            };
            self.context
                .metrics
                .presence_events
                .with_label_values(&[name])
                .inc();
        }
        self.hub.broadcast(
            message,
            Audience::PresenceSubscribers {
                origin: origin.map(Arc::from),
            },
        );
    }

    async fn publish(&mut self, mut batch: Vec<Publish>) {
        debug_assert!(batch.len() <= MAX_BATCH);
        // Which messages of each publish were ephemeral: they go out now and are never stored.
        let shapes = self.send_ephemeral(&mut batch).await;
        // A publish of ephemeral messages only is answered at once: nothing to wait for.
        let (mut kept, mut kept_shapes) = (Vec::with_capacity(batch.len()), Vec::new());
        for (p, shape) in batch.into_iter().zip(shapes) {
            if p.messages.is_empty() && !shape.is_empty() {
                p.reply.send(Ok(vec![None; shape.len()]));
            } else {
                kept.push(p);
                kept_shapes.push(shape);
            }
        }
        // Changes to earlier messages become their new versions; a publish with a change
        // that cannot be made is refused whole.
        if let Some(newest) = self.newest_change(&kept) {
            self.catch_up_to(newest).await;
        }
        let (mut batch, mut shapes, mut increments) = (Vec::new(), Vec::new(), Vec::new());
        // How many of each publish's entries are its own: the summaries its annotations make
        // follow them, and are not answered to the publisher.
        let mut own = Vec::new();
        for (mut p, shape) in kept.into_iter().zip(kept_shapes) {
            let count = p.messages.len();
            match self.prepare_changes(&mut p) {
                Ok(appended) => {
                    batch.push(p);
                    shapes.push(shape);
                    increments.push(appended);
                    own.push(count);
                }
                Err(e) => {
                    // What was prepared of it before the refusal is not stored.
                    self.latest.clear();
                    self.aggregates.clear();
                    p.reply.send(Err(e));
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        let drafts = batch
            .iter_mut()
            .map(|p| Draft {
                // The messages move into the log and fan-out: stamped in place, never copied.
                messages: std::mem::take(&mut p.messages),
                app_ids: p.app_ids,
            })
            .collect();
        let appended = match self.stream.append(drafts).await {
            Ok(appended) => appended,
            Err(e) => {
                // Versions and annotations prepared for this batch were never stored.
                self.latest.clear();
                self.aggregates.clear();
                tracing::error!(channel = %self.name, error = %e, "append failed");
                // In cluster mode a publish JetStream did not confirm may still be stored,
                // and the client is told so; a resend with the same ids is stored once.
                let text = match &e {
                    StoreError::Unconfirmed(why) => why.clone(),
                    _ => "message could not be stored".to_owned(),
                };
                let error = ErrorInfo::new(codes::INTERNAL_CHANNEL, text);
                for p in batch {
                    p.reply.send(Err(error.clone()));
                }
                return;
            }
        };
        self.context.metrics.messages_in.inc_by(appended.count);
        let fanout_start = std::time::Instant::now();
        let mut acks = Vec::with_capacity(batch.len());
        let mut outgoing = Vec::with_capacity(batch.len());
        for ((((p, stored), shape), mut appends), own) in batch
            .into_iter()
            .zip(appended.stored)
            .zip(shapes)
            .zip(increments)
            .zip(own)
        {
            let Stored {
                mut fresh,
                mut serials,
            } = stored;
            let annotated = serials.len() > own;
            // Some entry was answered from an earlier publish with the same id: not stored.
            let repeated = fresh.len() < serials.len();
            if annotated && repeated {
                // An annotation the log already held (a resend with the same id) was counted
                // again here; the next ones count afresh from the log.
                self.aggregates.clear();
            }
            if repeated && !self.stream.catches_up() {
                // So was a change it held (an idempotent edit sent again): the latest versions
                // come from the log again. (In cluster mode `fresh` is always empty; the
                // versions the stream commits replace what was prepared.)
                self.latest.clear();
            }
            serials.truncate(own);
            let serials = with_ephemeral(serials, &shape);
            self.remember_versions(&fresh);
            // Live subscribers get an append as the increment, history the whole text.
            for m in fresh.iter_mut().filter(|m| m.is_version()) {
                if let Some(increment) = m.id.as_ref().and_then(|id| appends.remove(id)) {
                    m.action = Some(Message::APPEND);
                    m.data = increment.data;
                    m.encoding = increment.encoding;
                }
            }
            outgoing.extend(frames_for(&self.name, fresh, p.origin.as_ref()));
            acks.push((p.reply, p.received, serials));
        }
        let delivered = self.hub.broadcast_parallel(&outgoing).await;
        self.context.metrics.messages_out.inc_by(delivered);
        self.context
            .metrics
            .fanout_latency
            .observe(fanout_start.elapsed().as_secs_f64());
        // The ACKs go once the batch is on disk; meanwhile this sequencer takes its next batch.
        let metrics = self.context.metrics.clone();
        let channel = self.name.clone();
        let answer = move |result: Result<(), StoreError>| {
            if let Err(e) = &result {
                tracing::error!(%channel, error = %e, "sync failed; publishes NACKed");
            }
            for (reply, received, serials) in acks {
                metrics
                    .publish_ack_latency
                    .observe(received.elapsed().as_secs_f64());
                reply.send(match &result {
                    Ok(()) => Ok(serials),
                    Err(_) => Err(ErrorInfo::new(
                        codes::INTERNAL_CHANNEL,
                        "message could not be made durable",
                    )),
                });
            }
        };
        self.stream.when_durable(appended.count, Box::new(answer));
    }

    /// Takes the ephemeral messages (`extras.ephemeral: true`, `../shared/ably-chat.md` §5.9)
    /// out of each publish and delivers them at once, with their publisher's echo rule, no
    /// serial and no channelSerial, to subscribers here and (through the stream) on other
    /// nodes. Returns, per publish, which of its messages were ephemeral (empty when none).
    async fn send_ephemeral(&mut self, batch: &mut [Publish]) -> Vec<Vec<bool>> {
        let mut shapes = Vec::with_capacity(batch.len());
        let mut outgoing = Vec::new();
        let now = now_ms();
        for p in batch.iter_mut() {
            if !p.messages.iter().any(is_ephemeral) {
                shapes.push(Vec::new());
                continue;
            }
            let shape: Vec<bool> = p.messages.iter().map(is_ephemeral).collect();
            let (mut ephemeral, kept): (Vec<Message>, Vec<Message>) =
                std::mem::take(&mut p.messages)
                    .into_iter()
                    .partition(is_ephemeral);
            p.messages = kept;
            for m in &mut ephemeral {
                m.timestamp = Some(now);
            }
            self.stream.relay(&ephemeral).await;
            let frame = ProtocolMessage {
                id: p.origin.as_ref().map(|o| o.pm_id.clone()),
                connection_id: p.origin.as_ref().map(|o| o.connection_id.to_string()),
                timestamp: Some(now),
                messages: Some(ephemeral),
                ..ProtocolMessage::for_channel(Action::Message, &self.name)
            };
            let origin = p.origin.as_ref().map(|o| o.connection_id.clone());
            outgoing.push((frame, Audience::Subscribers { origin }));
            shapes.push(shape);
        }
        if !outgoing.is_empty() {
            let delivered = self.hub.broadcast_parallel(&outgoing).await;
            self.context.metrics.messages_out.inc_by(delivered);
        }
        shapes
    }

    /// Delivers a change that reached the stream from elsewhere (see [`Stream::committed`]).
    async fn take_committed(&mut self, committed: Committed) {
        match committed {
            Committed::Messages(rows) => {
                self.deliver_committed(rows).await;
                self.attach_caught_up(false);
            }
            Committed::Presence(events) => self.announce_remote_presence(events),
            Committed::Ephemeral(messages) => self.deliver_ephemeral(messages).await,
        }
    }

    /// The position of the newest message a change of `batch` names, when the stream's head
    /// is behind it and may catch up (cluster mode: a message this node published comes back
    /// through [`Stream::committed`] after its ACK), so that [`Sequencer::catch_up_to`] waits
    /// for it and a client editing the message it was just ACKed for finds it.
    fn newest_change(&self, batch: &[Publish]) -> Option<u64> {
        if !self.stream.catches_up() {
            return None;
        }
        let epoch = &self.stream.head().epoch;
        let newest = batch
            .iter()
            .flat_map(|p| p.messages.iter().filter(|m| m.refers()))
            .filter_map(|m| m.serial.as_deref().and_then(parse_serial))
            .filter(|(e, _)| e == epoch)
            .map(|(_, seq)| seq)
            .max();
        newest.filter(|seq| *seq > self.stream.head().last)
    }

    /// Delivers what the stream commits until its head reaches `newest`, or `CATCH_UP_WAIT`.
    async fn catch_up_to(&mut self, newest: u64) {
        let until = tokio::time::Instant::now() + CATCH_UP_WAIT;
        while self.stream.head().last < newest {
            match tokio::time::timeout_at(until, self.stream.committed()).await {
                Ok(committed) => self.take_committed(committed).await,
                Err(_) => return,
            }
        }
    }

    /// Turns each change (update, delete, append) of `publish` into the message's new version
    /// (see [`versions::apply`]), after checking that the message exists here (40400) and that
    /// the publisher may change it (40160, 40166). Returns the increments of its appends, by
    /// message id, which live subscribers get instead of the whole text.
    fn prepare_changes(
        &mut self,
        publish: &mut Publish,
    ) -> Result<std::collections::HashMap<String, Message>, ErrorInfo> {
        let mut increments = std::collections::HashMap::new();
        if !publish.messages.iter().any(Message::refers) {
            return Ok(increments);
        }
        let head = self.stream.head().clone();
        for m in publish.messages.iter_mut().filter(|m| m.is_version()) {
            let serial = m.serial.clone().unwrap_or_default();
            let seq = held_position(&head, &serial)?;
            let stream = &self.stream;
            let read = |q: &Query| stream.read(q);
            let latest = self
                .latest
                .get(&read, seq, head.last)
                .map_err(|e| {
                    tracing::error!(channel = %self.name, error = %e, "reading a message to change failed");
                    ErrorInfo::new(codes::INTERNAL_CHANNEL, "the message could not be read")
                })?
                .ok_or_else(|| versions::unknown_message(&serial))?;
            let action = m.action.unwrap_or(Message::UPDATE);
            publish
                .rights
                .check(action, m.client_id.as_deref(), latest.client_id.as_deref())?;
            let (next, increment) = versions::apply(&latest, std::mem::take(m))?;
            if let (Some(increment), Some(id)) = (increment, next.id.clone()) {
                increments.insert(id, increment);
            }
            self.latest.set(seq, next.clone());
            *m = next;
        }
        self.prepare_annotations(publish, &head)?;
        Ok(increments)
    }

    /// Folds each annotation of `publish` into its message's aggregate, after checking that
    /// the message exists here (40400), and adds one `message.summary` entry per message whose
    /// summary changed (`../shared/ably-chat.md` §5.6): several annotations of one publish
    /// make one summary, and one that changes nothing (a second identical `distinct.v1`
    /// reaction) makes none.
    fn prepare_annotations(
        &mut self,
        publish: &mut Publish,
        head: &crate::backend::Head,
    ) -> Result<(), ErrorInfo> {
        // Each message whose summary changed, with the id of its last annotation here.
        let mut changed: Vec<(u64, String, Option<String>)> = Vec::new();
        let failed = |e: StoreError| {
            tracing::error!(channel = %self.name, error = %e, "reading annotations failed");
            ErrorInfo::new(codes::INTERNAL_CHANNEL, "the message could not be read")
        };
        for m in &publish.messages {
            let Some(annotation) = Annotation::from_entry(m) else {
                continue;
            };
            let serial = m.serial.clone().unwrap_or_default();
            let seq = held_position(head, &serial)?;
            let stream = &self.stream;
            let read = |q: &Query| stream.read(q);
            if self
                .latest
                .get(&read, seq, head.last)
                .map_err(failed)?
                .is_none()
            {
                return Err(versions::unknown_message(&serial));
            }
            let aggregate = self
                .aggregates
                .get(&read, seq, &serial, head.last)
                .map_err(failed)?;
            if aggregate.apply(&annotation) {
                match changed.iter_mut().find(|(s, _, _)| *s == seq) {
                    Some(known) => known.2 = m.id.clone(),
                    None => changed.push((seq, serial, m.id.clone())),
                }
            }
        }
        let stream = &self.stream;
        let read = |q: &Query| stream.read(q);
        for (seq, serial, last_id) in changed {
            let aggregate = self
                .aggregates
                .get(&read, seq, &serial, head.last)
                .map_err(failed)?;
            let summary = aggregate.summary(self.context.summary_clip);
            let mut entry = annotations::summary_entry(&serial, summary);
            if publish.app_ids {
                // A resend of app-id'd annotations (idempotent REST publishing) is stored
                // once; so is its summary, which would count the resent annotations twice.
                entry.id = last_id.map(|id| id + ":summary");
            }
            publish.messages.push(entry);
        }
        Ok(())
    }

    /// Remembers the new versions among `messages` (stored here, or committed by another
    /// node) as their messages' latest.
    fn remember_versions(&mut self, messages: &[Message]) {
        for m in messages.iter().filter(|m| m.is_version()) {
            let Some((_, seq)) = m.serial.as_deref().and_then(parse_serial) else {
                continue;
            };
            self.latest.set(seq, m.clone());
        }
    }

    /// Delivers other nodes' ephemeral messages, one MESSAGE per run from one connection.
    async fn deliver_ephemeral(&mut self, messages: Vec<Message>) {
        let mut outgoing: Vec<(ProtocolMessage, Audience)> = Vec::new();
        for message in messages {
            if let Some((last, _)) = outgoing.last_mut() {
                if last.connection_id == message.connection_id {
                    last.messages.get_or_insert_with(Vec::new).push(message);
                    continue;
                }
            }
            let origin = message.connection_id.as_deref().map(Arc::from);
            let frame = ProtocolMessage {
                connection_id: message.connection_id.clone(),
                timestamp: message.timestamp,
                messages: Some(vec![message]),
                ..ProtocolMessage::for_channel(Action::Message, &self.name)
            };
            outgoing.push((frame, Audience::Subscribers { origin }));
        }
        let delivered = self.hub.broadcast_parallel(&outgoing).await;
        self.context.metrics.messages_out.inc_by(delivered);
    }

    /// Fans out messages that reached the channel's stream other than through this
    /// sequencer's appends (another node's publishes, in cluster mode), in the stream's order:
    /// one MESSAGE per run of messages from the same connection, so a subscriber with echo
    /// off is spared its own.
    async fn deliver_committed(&mut self, rows: Vec<(u64, Message)>) {
        let committed: Vec<Message> = rows
            .iter()
            .filter(|(_, m)| m.is_version())
            .map(|(_, m)| m.clone())
            .collect();
        self.remember_versions(&committed);
        for (_, m) in rows
            .iter()
            .filter(|(_, m)| m.action == Some(Message::ANNOTATION))
        {
            // Another node folded it in; this one folds afresh from the log when asked.
            if let Some((_, seq)) = m.serial.as_deref().and_then(parse_serial) {
                self.aggregates.forget(seq);
            }
        }
        let entries = rows.into_iter().map(|(_, m)| m).collect();
        let outgoing = frames_for(&self.name, entries, None);
        let delivered = self.hub.broadcast_parallel(&outgoing).await;
        self.context.metrics.messages_out.inc_by(delivered);
    }

    /// Attaches the waiting attaches the stream has caught up with, and those past their
    /// deadline (or all, with `all`) as they stand.
    fn attach_caught_up(&mut self, all: bool) {
        let now = Instant::now();
        let last = self.stream.head().last;
        let (ready, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(_, seq, until)| all || *seq <= last || *until <= now);
        self.waiting = still;
        for (attach, _, _) in ready {
            self.attach_now(attach);
        }
    }

    /// §5.6 in cluster mode: an attach with a serial of this epoch that is ahead of the
    /// stream (the client saw it on a node further along) waits for the stream to get there.
    fn attach(&mut self, attach: Attach) {
        if let StartFrom::Serial(serial) = &attach.from {
            let head = self.stream.head();
            let ahead = parse_serial(serial)
                .filter(|(epoch, seq)| *epoch == head.epoch && *seq > head.last)
                .map(|(_, seq)| seq);
            if let Some(seq) = ahead.filter(|_| self.stream.catches_up()) {
                let until = Instant::now() + CATCH_UP_WAIT;
                self.waiting.push((attach, seq, until));
                return;
            }
        }
        self.attach_now(attach);
    }

    fn attach_now(&mut self, attach: Attach) {
        let Attach {
            subscriber,
            from,
            params,
        } = attach;
        let mut flags = subscriber.modes;
        let mut error = None;
        let head = self.stream.head();
        let mut channel_serial = format_serial(&head.epoch, head.last);
        let backlog = match self.backlog(&subscriber, &from) {
            Ok(Backlog::Resumed { serial, frames }) => {
                flags |= flags::RESUMED;
                channel_serial = serial;
                frames
            }
            Ok(Backlog::Rewound { frames, truncated }) => {
                if !frames.is_empty() {
                    flags |= flags::HAS_BACKLOG;
                }
                error = truncated;
                frames
            }
            Ok(Backlog::None { lost }) => {
                error = lost;
                Vec::new()
            }
            Err(e) => {
                tracing::error!(channel = %self.name, error = %e, "attach read failed");
                // §5.3: DETACHED with an error is transient; the client retries the attach.
                let _ = subscriber.outbox.push(&ProtocolMessage {
                    error: Some(ErrorInfo::new(
                        codes::INTERNAL_CHANNEL,
                        "channel log unavailable",
                    )),
                    ..ProtocolMessage::for_channel(Action::Detached, &self.name)
                });
                return;
            }
        };
        let syncs_presence = subscriber.modes & flags::MODE_PRESENCE_SUBSCRIBE != 0
            && !self.stream.members().is_empty();
        if syncs_presence {
            flags |= flags::HAS_PRESENCE;
        }
        let attached = ProtocolMessage {
            flags: Some(flags),
            channel_serial: Some(channel_serial),
            params: (!params.is_empty()).then_some(params),
            error,
            ..ProtocolMessage::for_channel(Action::Attached, &self.name)
        };
        // §5.5: ATTACHED first, then the presence SYNC, then backlog, then live — all through
        // the one outbox, so nothing can overtake.
        let sync = if syncs_presence {
            self.sync_pages()
        } else {
            Vec::new()
        };
        let listener = subscriber
            .occupancy
            .then(|| (subscriber.connection_id.clone(), subscriber.outbox.clone()));
        self.hub.join(subscriber, &attached, &sync, backlog);
        // §5.7: a listener's first event follows its ATTACHED (and backlog); the counts
        // include it. The others hear of it with the next broadcast.
        if let Some((id, outbox)) = listener {
            let counts = self.count_occupancy();
            let message = self.occupancy_message(&counts);
            if outbox.push(&message).is_ok() {
                self.occupancy.fresh.push((id, counts));
            }
        }
    }

    /// Works out what an attach replays (§5.4, §5.6), already encoded for the subscriber and
    /// within half its outbox, so a replay can never overflow it and loop through resumes.
    fn backlog(
        &mut self,
        subscriber: &Subscriber,
        from: &StartFrom,
    ) -> Result<Backlog, StoreError> {
        let subscribes = subscriber.modes & flags::MODE_SUBSCRIBE != 0;
        let budget = subscriber.outbox.limit() / 2;
        let lost = || {
            Some(ErrorInfo::new(
                codes::CONTINUITY_LOST,
                "Channel continuity not guaranteed: messages since the last attach may be missing; use history to fill the gap",
            ))
        };
        let (rows, resume_from) = match from {
            StartFrom::Live => return Ok(Backlog::None { lost: None }),
            StartFrom::Serial(serial) => {
                // Retention may have removed messages since the stream last looked.
                self.stream.refresh()?;
                let head = self.stream.head();
                let Some((epoch, seq)) = parse_serial(serial) else {
                    return Ok(Backlog::None { lost: lost() });
                };
                let resumable = epoch == head.epoch && seq <= head.last && seq + 1 >= head.first;
                let last = head.last;
                if !resumable {
                    return Ok(Backlog::None { lost: lost() });
                }
                if !subscribes {
                    return Ok(Backlog::Resumed {
                        serial: serial.clone(),
                        frames: Vec::new(),
                    });
                }
                // Counted, not computed from serials, which have a gap after an unclean stop.
                let max = self.context.max_resume_replay;
                let rows = self.stream.read(&Query {
                    from: seq + 1,
                    to: last,
                    start_ms: None,
                    end_ms: None,
                    direction: Direction::Forwards,
                    limit: max.saturating_add(1),
                })?;
                if rows.len() > max {
                    return Ok(Backlog::None { lost: lost() });
                }
                (rows, Some(serial.clone()))
            }
            StartFrom::Rewind(_) | StartFrom::RewindFor(_) if !subscribes => {
                return Ok(Backlog::None { lost: None })
            }
            StartFrom::Rewind(_) | StartFrom::RewindFor(_) => {
                let (limit, start_ms) = match from {
                    StartFrom::Rewind(n) => (*n, None),
                    StartFrom::RewindFor(ms) => (usize::MAX, Some(now_ms() - ms)),
                    _ => unreachable!("matched above"),
                };
                let mut rows = self.stream.read(&Query {
                    from: 0,
                    to: self.stream.head().last,
                    start_ms,
                    end_ms: None,
                    direction: Direction::Backwards,
                    limit: limit.min(self.context.max_rewind + 1),
                })?;
                rows.reverse();
                (rows, None)
            }
        };
        let mut frames = Vec::with_capacity(rows.len());
        let mut bytes = 0;
        let mut skipped = 0;
        let wanted = rows.len();
        // A rewind keeps the newest messages that fit, so encode from the end.
        let ordered: Box<dyn Iterator<Item = (u64, Message)>> = if resume_from.is_some() {
            Box::new(rows.into_iter())
        } else {
            Box::new(rows.into_iter().rev())
        };
        let annotations = subscriber.modes & flags::MODE_ANNOTATION_SUBSCRIBE != 0;
        for (_, m) in ordered {
            let own = m.connection_id.as_deref() == Some(subscriber.connection_id.as_ref());
            let annotation = m.action == Some(Message::ANNOTATION);
            if (!subscriber.echo && own) || (annotation && !annotations) {
                skipped += 1;
                continue;
            }
            let Some((message, _)) = frames_for(&self.name, vec![m], None).pop() else {
                continue;
            };
            let frame = encode_frame(subscriber.outbox.format(), &message);
            bytes += frame.len();
            if bytes > budget || (resume_from.is_none() && frames.len() >= self.context.max_rewind)
            {
                if resume_from.is_some() {
                    // Too much to replay safely: attach without continuity; history fills in.
                    return Ok(Backlog::None { lost: lost() });
                }
                break;
            }
            frames.push(frame);
        }
        Ok(match resume_from {
            Some(serial) => Backlog::Resumed { serial, frames },
            None => {
                let truncated = (frames.len() + skipped < wanted).then(|| {
                    ErrorInfo::new(
                        codes::INVALID_PARAMETER,
                        format!("rewind truncated to the last {} messages", frames.len()),
                    )
                });
                frames.reverse();
                Backlog::Rewound { frames, truncated }
            }
        })
    }

    /// The whole presence set as SYNC pages (§6.4): members as `present` with their original
    /// ids, `channelSerial` `<syncId>:<cursor>`, the last page with an empty cursor.
    fn sync_pages(&mut self) -> Vec<ProtocolMessage> {
        self.syncs += 1;
        let sync_id = format!("s{}", self.syncs);
        let page_size = self.context.presence_sync_page_size.max(1);
        let members: Vec<PresenceMessage> = self.stream.members().all().cloned().collect();
        let pages = members.len().div_ceil(page_size).max(1);
        let mut chunks = members.chunks(page_size);
        self.context.metrics.sync_pages.inc_by(pages as u64);
        (1..=pages)
            .map(|page| {
                let cursor = if page == pages {
                    String::new()
                } else {
                    page.to_string()
                };
                ProtocolMessage {
                    channel_serial: Some(format!("{sync_id}:{cursor}")),
                    presence: Some(chunks.next().unwrap_or_default().to_vec()),
                    ..ProtocolMessage::for_channel(Action::Sync, &self.name)
                }
            })
            .collect()
    }
}

/// Whether any occupancy count went from zero or to zero: such a change goes out at once.
fn crosses_zero(before: &Occupancy, after: &Occupancy) -> bool {
    let zeros = |o: &Occupancy| {
        [
            o.connections,
            o.publishers,
            o.subscribers,
            o.presence_connections,
            o.presence_members,
            o.presence_subscribers,
        ]
        .map(|n| n == 0)
    };
    zeros(before) != zeros(after)
}

/// A short tag of a channel name, so that event ids differ between channels.
fn short_hash(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut hasher);
    hasher.finish() & 0xffff_ffff
}

/// The frames that carry `entries` of the log (in the log's order) to subscribers: one
/// MESSAGE per run of messages from one connection (so a subscriber with echo off is spared
/// its own), one ANNOTATION per run of annotations from one connection for those attached
/// with ANNOTATION_SUBSCRIBE, and one MESSAGE per run of summaries, from no connection, for
/// every subscriber (the annotator too: it learns the new counts from it). `origin` is the
/// realtime publisher, when the entries are one publish: its connection and ProtocolMessage
/// id go on the frames of its own entries.
fn frames_for(
    channel: &str,
    entries: Vec<Message>,
    origin: Option<&super::Origin>,
) -> Vec<(ProtocolMessage, Audience)> {
    let mut out: Vec<(ProtocolMessage, Audience)> = Vec::new();
    for m in entries {
        let annotation = m.action == Some(Message::ANNOTATION);
        let summary = m.action == Some(Message::SUMMARY);
        let (connection_id, pm_id) = match origin {
            _ if summary => (None, None),
            Some(o) => (Some(o.connection_id.to_string()), Some(o.pm_id.clone())),
            None => (m.connection_id.clone(), None),
        };
        if let Some((last, _)) = out.last_mut() {
            let same = last.connection_id == connection_id
                && (last.action == Action::Annotation) == annotation;
            if same {
                last.channel_serial = m.position().cloned();
                last.timestamp = m.timestamp;
                match Annotation::from_entry(&m) {
                    Some(a) => last.annotations.get_or_insert_with(Vec::new).push(a),
                    None => last.messages.get_or_insert_with(Vec::new).push(m),
                }
                continue;
            }
        }
        let origin = connection_id.as_deref().map(Arc::from);
        let mut frame = ProtocolMessage {
            id: pm_id,
            connection_id,
            timestamp: m.timestamp,
            channel_serial: m.position().cloned(),
            ..ProtocolMessage::for_channel(Action::Message, channel)
        };
        let audience = match Annotation::from_entry(&m) {
            Some(a) => {
                frame.action = Action::Annotation;
                frame.annotations = Some(vec![a]);
                Audience::AnnotationSubscribers { origin }
            }
            None => {
                frame.messages = Some(vec![m]);
                Audience::Subscribers { origin }
            }
        };
        out.push((frame, audience));
    }
    out
}

/// Whether a message is ephemeral: `extras.ephemeral` is `true` (§5.9 of
/// `../shared/ably-chat.md`).
pub(crate) fn is_ephemeral(message: &Message) -> bool {
    message.action != Some(Message::ANNOTATION)
        && message
            .extras
            .as_ref()
            .and_then(|extras| extras.get("ephemeral"))
            .and_then(serde_json::Value::as_bool)
            == Some(true)
}

/// A publish's serials in its messages' order: the stored ones' `serials`, and `None` where
/// `shape` says a message was ephemeral (never stored, so it has no serial).
fn with_ephemeral(serials: Vec<Option<String>>, shape: &[bool]) -> Vec<Option<String>> {
    if shape.is_empty() {
        return serials;
    }
    let mut stored = serials.into_iter();
    shape
        .iter()
        .map(|ephemeral| {
            if *ephemeral {
                None
            } else {
                stored.next().flatten()
            }
        })
        .collect()
}

/// The position `serial` names in a stream whose head is `head`; 40400 when the stream does
/// not hold it (another epoch, removed by retention, or not yet given out).
fn held_position(head: &crate::backend::Head, serial: &str) -> Result<u64, ErrorInfo> {
    parse_serial(serial)
        .filter(|(epoch, seq)| *epoch == head.epoch && *seq >= head.first && *seq <= head.last)
        .map(|(_, seq)| seq)
        .ok_or_else(|| versions::unknown_message(serial))
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
