//! The single-node backend: serials, idempotency and timestamps kept by the channel's stream,
//! messages in the segment log indexed in sled (`store/`), durability by group commit
//! (`store/commit.rs`). Serials are `<epoch>-<position>` with the log's epoch; a stream's
//! position comes from the log's heads when it is opened.
//!
//! Subscribers get a batch as soon as it is appended and only the ACKs wait for the fsync,
//! unless `storage.deliver_after_sync` is set or delivery has run more than
//! [`MAX_UNSYNCED`] serials ahead of the disk: an unclean stop skips
//! [`UNCLEAN_STOP_SKIP`] serials, and delivered serials must stay inside that skip so that
//! no serial is ever given to two messages.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use protocol::{Message, PresenceMessage};

use super::presence::{self, PresenceSet};
use super::{
    Appended, Backend, Committed, Draft, Head, PresenceChange, Query, Stored, Stream, WhenDurable,
};
use crate::auth::now_ms;
use crate::store::commit::Committer;
use crate::store::{format_serial, ChannelLog, Direction, Retained, StoreError, UNCLEAN_STOP_SKIP};

/// How long app-set message ids are remembered for idempotent publishing (Ably: 2 min).
const IDEMPOTENCY_WINDOW_MS: i64 = 120_000;
/// Most app-set ids remembered per channel.
const IDEMPOTENCY_MAX_IDS: usize = 10_000;
/// Most serials delivered to subscribers ahead of the last completed sync.
pub const MAX_UNSYNCED: u64 = UNCLEAN_STOP_SKIP / 2;

/// The single-node backend over one [`ChannelLog`] for messages and one for presence history.
pub struct LocalBackend {
    log: Arc<dyn ChannelLog>,
    presence_log: Arc<dyn ChannelLog>,
    committer: Committer,
    deliver_after_sync: bool,
    max_messages: u64,
    age_sweeps: Arc<AtomicU64>,
}

impl LocalBackend {
    /// A backend storing messages in `log` and presence history in `presence_log`, made
    /// durable by `committer`, keeping `max_messages` of each per channel. `age_sweeps` counts
    /// the retention sweeps that removed messages by age (see [`Retention`]).
    pub fn new(
        log: Arc<dyn ChannelLog>,
        presence_log: Arc<dyn ChannelLog>,
        committer: Committer,
        deliver_after_sync: bool,
        max_messages: u64,
        age_sweeps: Arc<AtomicU64>,
    ) -> Self {
        LocalBackend {
            log,
            presence_log,
            committer,
            deliver_after_sync,
            max_messages,
            age_sweeps,
        }
    }
}

impl Backend for LocalBackend {
    fn epoch(&self, _channel: &str) -> &str {
        self.log.epoch()
    }

    fn open(&self, channel: &str) -> Result<Box<dyn Stream>, StoreError> {
        let bounds = self.log.bounds(channel)?;
        let last = bounds.map_or(0, |b| b.last);
        let mut stream = LocalStream {
            name: channel.to_owned(),
            log: self.log.clone(),
            committer: self.committer.clone(),
            deliver_after_sync: self.deliver_after_sync,
            head: Head {
                epoch: self.log.epoch().to_owned(),
                first: bounds.map_or(1, |b| b.first),
                last,
            },
            synced: Arc::new(AtomicU64::new(last)),
            last_timestamp: bounds.map_or(0, |b| b.last_timestamp),
            ids: RecentIds::default(),
            retention: Retention::new(channel, self.max_messages, self.age_sweeps.clone()),
            presence: PresenceHistory::open(
                self.presence_log.clone(),
                channel,
                Retention::new(channel, self.max_messages, self.age_sweeps.clone()),
            )?,
        };
        // Idempotent publishing must hold across restarts: remember recent ids from the log.
        let recent = self.log.read(
            channel,
            &Query {
                from: 0,
                to: u64::MAX,
                start_ms: Some(now_ms() - IDEMPOTENCY_WINDOW_MS),
                end_ms: None,
                direction: Direction::Backwards,
                limit: IDEMPOTENCY_MAX_IDS,
            },
        )?;
        for (_, m) in recent.into_iter().rev() {
            if let (Some(serial), Some(id)) = (m.position().cloned(), m.id) {
                stream.ids.remember(id, serial, m.timestamp.unwrap_or(0));
            }
        }
        Ok(Box::new(stream))
    }

    fn read(&self, channel: &str, query: &Query) -> Result<Vec<(u64, Message)>, StoreError> {
        self.log.read(channel, query)
    }

    fn read_presence(
        &self,
        channel: &str,
        query: &Query,
    ) -> Result<Vec<(u64, Message)>, StoreError> {
        self.presence_log.read(channel, query)
    }
}

/// One channel's presence on one node: the member set in memory, and the history in its own
/// log, numbered from 1, with its own retention.
pub(super) struct PresenceHistory {
    members: PresenceSet,
    log: Arc<dyn ChannelLog>,
    last: u64,
    retention: Retention,
}

impl PresenceHistory {
    /// The presence of `channel`, with an empty member set, its history in `log`. Blocking.
    pub(super) fn open(
        log: Arc<dyn ChannelLog>,
        channel: &str,
        retention: Retention,
    ) -> Result<Self, StoreError> {
        Ok(PresenceHistory {
            members: PresenceSet::default(),
            last: log.bounds(channel)?.map_or(0, |b| b.last),
            log,
            retention,
        })
    }

    /// The members.
    pub(super) fn members(&self) -> &PresenceSet {
        &self.members
    }

    /// Applies `change` and appends its events to the history (not synced here: the next
    /// group commit or checkpoint makes the records durable; a failed append is logged).
    pub(super) fn change(&mut self, channel: &str, change: PresenceChange) -> Vec<PresenceMessage> {
        let events = self.members.change(change);
        if let Err(e) = self.record(channel, &events) {
            tracing::warn!(%channel, error = %e, "presence history append failed");
        }
        events
    }

    fn record(&mut self, channel: &str, events: &[PresenceMessage]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let records: Vec<Message> = events.iter().map(presence::to_record).collect();
        let numbered: Vec<(u64, &Message)> = records
            .iter()
            .enumerate()
            .map(|(i, r)| (self.last + 1 + i as u64, r))
            .collect();
        self.log.append(channel, &numbered)?;
        self.last += records.len() as u64;
        self.retention
            .after_append(self.log.as_ref(), channel, records.len() as u64);
        Ok(())
    }
}

/// One channel's stream on the local log.
struct LocalStream {
    name: String,
    log: Arc<dyn ChannelLog>,
    committer: Committer,
    deliver_after_sync: bool,
    head: Head,
    /// The newest serial known to be on disk; ACKs wait until it reaches theirs.
    synced: Arc<AtomicU64>,
    last_timestamp: i64,
    ids: RecentIds,
    retention: Retention,
    presence: PresenceHistory,
}

impl LocalStream {
    /// Gives the batch its serials and timestamp, de-duplicating app-set ids; returns what
    /// to store and the ids remembered on the way (forgotten again if the append fails).
    fn stamp(&mut self, drafts: Vec<Draft>, timestamp: i64) -> (Vec<Stored>, Vec<String>) {
        let mut stored = Vec::with_capacity(drafts.len());
        let mut remembered = Vec::new();
        for draft in drafts {
            let mut fresh = Vec::with_capacity(draft.messages.len());
            let mut serials = Vec::with_capacity(draft.messages.len());
            // The messages move into the log and fan-out: stamped in place, never copied.
            for mut m in draft.messages {
                if draft.app_ids {
                    if let Some(existing) = m.id.as_ref().and_then(|id| self.ids.get(id)) {
                        serials.push(Some(existing.to_owned()));
                        continue;
                    }
                }
                self.head.last += 1;
                let serial = format_serial(&self.head.epoch, self.head.last);
                super::settle(&mut m, Some(serial.clone()), timestamp);
                if draft.app_ids {
                    if let Some(id) = &m.id {
                        self.ids.remember(id.clone(), serial.clone(), timestamp);
                        remembered.push(id.clone());
                    }
                }
                serials.push(Some(serial));
                fresh.push(m);
            }
            stored.push(Stored { fresh, serials });
        }
        (stored, remembered)
    }

    async fn append_batch(&mut self, drafts: Vec<Draft>) -> Result<Appended, StoreError> {
        let now = now_ms();
        self.ids.forget_older_than(now - IDEMPOTENCY_WINDOW_MS);
        let timestamp = now.max(self.last_timestamp);
        let before = self.head.last;
        let (stored, remembered) = self.stamp(drafts, timestamp);
        let appended: Vec<(u64, &Message)> = stored
            .iter()
            .flat_map(|s| s.fresh.iter())
            .enumerate()
            .map(|(i, m)| (before + 1 + i as u64, m))
            .collect();
        let count = appended.len() as u64;
        let mut result = if appended.is_empty() {
            Ok(())
        } else {
            self.log.append(&self.name, &appended)
        };
        drop(appended);
        let wait = self.deliver_after_sync
            || self.head.last - self.synced.load(Ordering::Acquire) > MAX_UNSYNCED;
        if result.is_ok() && wait {
            result = self.committer.durable().await;
            if result.is_ok() {
                self.synced.fetch_max(self.head.last, Ordering::AcqRel);
            }
        }
        if let Err(e) = result {
            // Nothing of this batch was acknowledged: take it back out of the log and forget
            // its ids, so a retry is stored afresh rather than answered with phantom serials.
            // Serials are never reused: a subscriber may have seen them already.
            for id in remembered {
                self.ids.forget(&id);
            }
            if let Err(e) = self.log.truncate_after(&self.name, before) {
                tracing::error!(channel = %self.name, error = %e, "cannot undo failed append");
            }
            return Err(e);
        }
        if self.head.first > before {
            self.head.first = self.head.first.min(before + 1);
        }
        self.last_timestamp = timestamp;
        if let Some(first) = self
            .retention
            .after_append(self.log.as_ref(), &self.name, count)
        {
            self.head.first = first.unwrap_or(self.head.last + 1);
        }
        Ok(Appended {
            stored,
            timestamp,
            count,
        })
    }
}

impl Stream for LocalStream {
    fn head(&self) -> &Head {
        &self.head
    }

    fn append(&mut self, drafts: Vec<Draft>) -> BoxFuture<'_, Result<Appended, StoreError>> {
        self.append_batch(drafts).boxed()
    }

    fn committed(&mut self) -> BoxFuture<'_, Committed> {
        // Appends are the only writes, and they hand back what they stored.
        Box::pin(std::future::pending())
    }

    fn when_durable(&mut self, count: u64, then: WhenDurable) {
        let (synced, last) = (self.synced.clone(), self.head.last);
        if synced.load(Ordering::Acquire) >= last {
            return then(Ok(()));
        }
        self.committer
            .when_durable(count.max(1) as usize, move |result| {
                if result.is_ok() {
                    synced.fetch_max(last, Ordering::AcqRel);
                }
                then(result)
            });
    }

    fn refresh(&mut self) -> Result<(), StoreError> {
        if let Some(bounds) = self.log.bounds(&self.name)? {
            self.head.first = bounds.first;
        }
        Ok(())
    }

    fn read(&self, query: &Query) -> Result<Vec<(u64, Message)>, StoreError> {
        self.log.read(&self.name, query)
    }

    fn members(&self) -> &PresenceSet {
        self.presence.members()
    }

    fn presence(
        &mut self,
        change: PresenceChange,
    ) -> BoxFuture<'_, Result<Vec<PresenceMessage>, StoreError>> {
        let events = self.presence.change(&self.name, change);
        std::future::ready(Ok(events)).boxed()
    }
}

/// The app-set ids of a channel's recent messages and their serials, for idempotent
/// publishing: at most [`IDEMPOTENCY_MAX_IDS`], none older than the window.
#[derive(Default)]
struct RecentIds {
    serials: HashMap<String, String>,
    order: VecDeque<(i64, String)>,
}

impl RecentIds {
    fn get(&self, id: &str) -> Option<&str> {
        self.serials.get(id).map(String::as_str)
    }

    fn remember(&mut self, id: String, serial: String, timestamp: i64) {
        if self.order.len() >= IDEMPOTENCY_MAX_IDS {
            if let Some((_, old)) = self.order.pop_front() {
                self.serials.remove(&old);
            }
        }
        self.order.push_back((timestamp, id.clone()));
        self.serials.insert(id, serial);
    }

    fn forget(&mut self, id: &str) {
        self.serials.remove(id);
    }

    fn forget_older_than(&mut self, cutoff: i64) {
        while self.order.front().is_some_and(|(ts, _)| *ts < cutoff) {
            if let Some((_, id)) = self.order.pop_front() {
                self.serials.remove(&id);
            }
        }
    }
}

/// Count retention of one channel's log: keeps the newest `max` messages, counting messages,
/// not serials (serials have a gap after an unclean stop).
///
/// Counting reads what is kept, so it is done once, when the log is first trimmed after
/// opening, and again after an age sweep removed messages behind the count's back. After that
/// the log grows a slack past `max` (a 16th to an 8th of it) and a trim reads and removes only
/// those oldest messages, so the work is spread over appends and over channels. Trimming every channel by an
/// eighth at once (a thousand index removals each, after a scan of the whole channel) stalled
/// every delivery for about 2 s when many channels reached the limit together.
pub struct Retention {
    max: u64,
    /// How far past `max` the log grows before a trim: a 16th of `max`, and up to as much
    /// again chosen by the channel's name, so that channels filled at the same pace do not all
    /// trim at the same moment.
    slack: u64,
    /// Messages in the log, once counted.
    held: Option<u64>,
    age_sweeps: Arc<AtomicU64>,
    /// `age_sweeps` when `held` was counted.
    counted_after: u64,
}

impl Retention {
    /// Retention of `max` messages for `channel`; `age_sweeps` counts the sweeps that removed
    /// messages by age.
    pub fn new(channel: &str, max: u64, age_sweeps: Arc<AtomicU64>) -> Self {
        use std::hash::{Hash, Hasher};
        let step = (max / 16).max(1);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        channel.hash(&mut hasher);
        Retention {
            max,
            slack: step + hasher.finish() % step,
            held: None,
            counted_after: age_sweeps.load(Ordering::Relaxed),
            age_sweeps,
        }
    }

    /// Accounts for `appended` messages just appended to `channel` in `log`, trimming when
    /// due. Returns the oldest serial left (`None` when the log is empty) when it trimmed or
    /// counted.
    pub fn after_append(
        &mut self,
        log: &dyn ChannelLog,
        channel: &str,
        appended: u64,
    ) -> Option<Option<u64>> {
        let sweeps = self.age_sweeps.load(Ordering::Relaxed);
        if sweeps != self.counted_after {
            self.counted_after = sweeps;
            self.held = None;
        }
        let held = self.held.map(|h| h + appended);
        let trimmed = match held {
            Some(h) if h < self.max + self.slack => {
                self.held = held;
                return None;
            }
            Some(h) => log
                .drop_oldest(channel, h - self.max)
                .map(|first| Retained {
                    first,
                    held: self.max,
                }),
            None => log.retain_newest(channel, self.max),
        };
        match trimmed {
            Ok(left) => {
                self.held = Some(left.held);
                Some(left.first)
            }
            Err(e) => {
                tracing::warn!(%channel, error = %e, "trim failed");
                self.held = held;
                None
            }
        }
    }
}
