//! [`ChannelLog`] on sled and segment files. The unit of storage is a *record*: every message
//! of one append (one sequencer batch) together, so a burst of publishes costs one index
//! insert and one removal at retention, not one per message. The record's bytes go to the
//! append-only segment files of [`Segments`]; sled holds an index entry per record, keyed by
//! the channel name, a 0xFF byte (never part of UTF-8) and the record's first serial
//! big-endian, so each channel is one contiguous, serial-ordered key range and the record
//! holding serial `s` is the last key at or before `key(channel, s)`. Retention that cuts a
//! record in two writes the kept part as a new record under its new first serial. A second
//! tree keeps each channel's head (its newest serial ever), so serials are never reused after
//! retention has emptied a channel.
//!
//! This file opens the two logs of a data directory and implements the trait. The rest is
//! split by role: `record` (the bytes of a record and of its index entry), `wal` (the segments
//! as the index's write-ahead log: ops, the edits that write them, replay after an unclean
//! stop), `checkpoint` (the thread that makes sled's copy of the index durable) and `migrate`
//! (older layouts).

mod checkpoint;
mod migrate;
mod record;
mod wal;

use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use protocol::Message;

use super::database::Database;
use super::indexer::{Change, Indexer};
use super::segments::{Position, Segments};
use super::{
    Bounds, ChannelLog, CheckpointHealth, Direction, Query, Retained, StoreError, UNCLEAN_STOP_SKIP,
};
use checkpoint::{checkpoint, Checkpoints, Health, CHECKPOINT, CHECKPOINT_EVERY};
use migrate::OLD_TREES;
use record::{
    be_u64, key, split_key, Entry, Header, Index, Record, RecordBuilder, RECORD_BYTES, SEPARATOR,
};
use wal::{count_live, replay, Op};

/// The meta key present while a broker runs on the database; found at start, it means the
/// last run did not stop cleanly.
const RUNNING: &str = "running";
/// The on-disk layout: index entries in sled, records in segment files that are also the
/// index's write-ahead log.
const FORMAT: &str = "records-3";
/// The index trees of the two logs.
const MESSAGE_INDEX: &str = "message-index";
const PRESENCE_INDEX: &str = "presence-index";

/// A channel log on sled and segment files: one index tree and one heads tree of one database,
/// and the segments it shares with the other log of the same data directory.
pub struct SledLog {
    db: sled::Db,
    /// Which log this is in the frames' tags ([`LogId`]).
    log: LogId,
    index: sled::Tree,
    heads: sled::Tree,
    segments: Arc<Segments>,
    /// Held (shared) from writing an op's frame until its change is in sled; the checkpoint
    /// takes it alone to read a position that no half-done op straddles.
    gate: Arc<RwLock<()>>,
    /// The checkpoint thread, stopped when the last log of the database goes.
    checkpoints: Arc<Checkpoints>,
    /// Index changes written as frames but not yet given to sled; shared by both logs.
    indexer: Arc<Indexer>,
    epoch: String,
}

/// The two logs of a data directory, as named in frame tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LogId {
    Messages = 0,
    Presence = 1,
}

impl LogId {
    fn from_byte(byte: u8) -> Option<LogId> {
        match byte {
            0 => Some(LogId::Messages),
            1 => Some(LogId::Presence),
            _ => None,
        }
    }

    fn trees(self) -> (&'static str, &'static str) {
        match self {
            LogId::Messages => (MESSAGE_INDEX, "messages-heads"),
            LogId::Presence => (PRESENCE_INDEX, "presence-heads"),
        }
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Engine(e.to_string())
    }
}

impl SledLog {
    /// Opens (or creates) the message log in `dir` with a page cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<SledLog, StoreError> {
        Ok(SledLog::open_logs(dir, cache_bytes)?.0)
    }

    /// Opens the database of `dir` and both logs on it ([`SledLog::open_logs_on`]), for a
    /// caller that needs no other tree of the database.
    pub fn open_logs(dir: &Path, cache_bytes: u64) -> Result<(SledLog, SledLog), StoreError> {
        SledLog::open_logs_on(&Database::open(dir, cache_bytes)?)
    }

    /// Opens the message log and the presence history log, which share one database (the
    /// data directory's, `dir/log`), one set of segments (`dir/segments`), one epoch and one
    /// fsync. A log in the layout before segments is converted; an older one is refused rather
    /// than misread. When the previous run did not stop cleanly, every channel's head skips
    /// [`UNCLEAN_STOP_SKIP`] serials ahead.
    pub fn open_logs_on(database: &Database) -> Result<(SledLog, SledLog), StoreError> {
        SledLog::open_with_checkpoints(database, Some(CHECKPOINT_EVERY))
    }

    /// [`SledLog::open_logs_on`], checkpointing every `every` (`None`: only at opening and at
    /// a clean stop, which tests use to keep changes out of sled's flushed state).
    fn open_with_checkpoints(
        database: &Database,
        every: Option<Duration>,
    ) -> Result<(SledLog, SledLog), StoreError> {
        let db = database.handle();
        let dir = database.data_dir();
        let segments_dir = dir.join("segments");
        let meta = db.open_tree("meta")?;
        let mut convert = false;
        let epoch = match meta.get("epoch")? {
            Some(bytes) => {
                convert = migrate::needs_conversion(&meta, dir)?;
                String::from_utf8_lossy(&bytes).into_owned()
            }
            None => {
                let epoch = format!("{:08x}", rand::random::<u32>());
                meta.insert("epoch", epoch.as_bytes())?;
                meta.insert("format", FORMAT)?;
                db.flush()?;
                epoch
            }
        };
        let unclean = meta.get(RUNNING)?.is_some();
        if convert {
            // An interrupted conversion starts over: its index trees and segments are redone.
            for (_, index) in OLD_TREES {
                db.drop_tree(index)?;
            }
        } else if let Some(from) = meta.get(CHECKPOINT)?.and_then(|p| Position::decode(&p)) {
            if unclean {
                let applied = replay(&db, &segments_dir, from)?;
                db.flush()?;
                tracing::info!(
                    applied,
                    "replayed the log index's changes since its checkpoint"
                );
            }
        }
        let live = count_live(&db, &segments_dir)?;
        let segments = Arc::new(Segments::open(&segments_dir, live)?);
        let gate = Arc::new(RwLock::new(()));
        let trees = [LogId::Messages, LogId::Presence].map(|log| {
            let (index, heads) = log.trees();
            Ok::<_, StoreError>((db.open_tree(index)?, db.open_tree(heads)?))
        });
        let [messages, presence] = trees;
        let indexer = Arc::new(Indexer::new(vec![messages?, presence?]));
        // Not yet running: opening makes its own checkpoint first, below.
        let checkpoints = Arc::new(Checkpoints {
            stop: None,
            thread: None,
            health: Arc::new(Mutex::new(Health::new(Duration::ZERO))),
        });
        let mut logs = (
            SledLog {
                db: db.clone(),
                log: LogId::Messages,
                index: db.open_tree(MESSAGE_INDEX)?,
                heads: db.open_tree(LogId::Messages.trees().1)?,
                segments: segments.clone(),
                gate: gate.clone(),
                checkpoints: checkpoints.clone(),
                indexer: indexer.clone(),
                epoch: epoch.clone(),
            },
            SledLog {
                index: db.open_tree(PRESENCE_INDEX)?,
                heads: db.open_tree(LogId::Presence.trees().1)?,
                db: db.clone(),
                log: LogId::Presence,
                segments: segments.clone(),
                gate: gate.clone(),
                checkpoints,
                indexer: indexer.clone(),
                epoch,
            },
        );
        if convert {
            migrate::convert(&logs, &db, &meta)?;
        }
        meta.insert(RUNNING, "1")?;
        if unclean {
            let channels = logs.0.skip_heads(UNCLEAN_STOP_SKIP)?;
            logs.1.skip_heads(UNCLEAN_STOP_SKIP)?;
            tracing::warn!(
                channels,
                skip = UNCLEAN_STOP_SKIP,
                "the last run did not stop cleanly: serials continue past any it may have lost"
            );
        }
        meta.insert("format", FORMAT)?;
        let started = Instant::now();
        checkpoint(&db, &segments, &gate, &indexer)?;
        let health = Arc::new(Mutex::new(Health::new(started.elapsed())));
        if let Some(every) = every {
            indexer.start()?;
            let checkpoints = Arc::new(Checkpoints::start(
                db, segments, gate, indexer, every, health,
            )?);
            logs.0.checkpoints = checkpoints.clone();
            logs.1.checkpoints = checkpoints;
        }
        Ok(logs)
    }

    /// Skips every channel's head `gap` serials ahead. Called after an unclean stop: serials
    /// handed to subscribers before their fsync may be gone from the log, and must not be
    /// given to different messages.
    pub fn skip_heads(&self, gap: u64) -> Result<usize, StoreError> {
        let mut skipped = 0;
        for item in self.heads.iter() {
            let (channel, value) = item?;
            let head = value
                .as_ref()
                .try_into()
                .map_or(0, u64::from_be_bytes)
                .saturating_add(gap);
            self.heads.insert(channel, &head.to_be_bytes())?;
            skipped += 1;
        }
        Ok(skipped)
    }
}

impl SledLog {
    /// Reads the record an index entry points to; `None`, with the entry removed, when its
    /// bytes are gone (see [`Segments::read`]).
    fn load(
        &self,
        key_bytes: &[u8],
        index: &Index,
    ) -> Result<Option<super::segments::Frame>, StoreError> {
        let frame = self.segments.read(index.at)?;
        if frame.is_none() && self.index.remove(key_bytes)?.is_some() {
            self.segments.release(index.at.segment);
        }
        Ok(frame)
    }

    /// The key and index entry of the record that holds `serial`, if any: the last record
    /// starting at or before it.
    fn record_at(
        &self,
        channel: &str,
        serial: u64,
    ) -> Result<Option<(sled::IVec, sled::IVec)>, StoreError> {
        Ok(self
            .index
            .range(key(channel, 0)..=key(channel, serial))
            .next_back()
            .transpose()?)
    }
}
impl ChannelLog for SledLog {
    fn epoch(&self) -> &str {
        &self.epoch
    }

    fn bounds(&self, channel: &str) -> Result<Option<Bounds>, StoreError> {
        self.indexer.catch_up()?;
        let range = key(channel, 0)..=key(channel, u64::MAX);
        let head = self.heads.get(channel)?.map(|v| be_u64(&v));
        let first = self.index.range(range.clone()).next().transpose()?;
        let last = self.index.range(range).next_back().transpose()?;
        Ok(match (first, last, head) {
            (Some((first_key, _)), Some((_, last_value)), head) => {
                let header = Header::parse(&last_value);
                Some(Bounds {
                    first: split_key(&first_key).map_or(0, |(_, s)| s),
                    last: header
                        .as_ref()
                        .map_or(0, |h| h.last_serial)
                        .max(head.unwrap_or(0)),
                    last_timestamp: header.map_or(0, |h| h.last_timestamp),
                })
            }
            (_, _, Some(head)) => Some(Bounds {
                first: head + 1,
                last: head,
                last_timestamp: 0,
            }),
            _ => None,
        })
    }

    fn append(&self, channel: &str, messages: &[(u64, &Message)]) -> Result<(), StoreError> {
        let Some((last, _)) = messages.last() else {
            return Ok(());
        };
        // One record per append, cut where it would pass RECORD_BYTES, so that reading one
        // message never means fetching megabytes. Messages are encoded straight into it.
        let tag = Op::Append.tag(self.log, channel);
        let mut records = Vec::new();
        let mut record = RecordBuilder::new(&tag)?;
        for (serial, m) in messages {
            record.push(*serial, m.timestamp.unwrap_or(0), |value| {
                // Our own plain data types always serialize (as in protocol::codec).
                rmp_serde::encode::write_named(value, *m).expect("messages serialize to msgpack")
            });
            if record.entry_bytes() >= RECORD_BYTES {
                records.extend(std::mem::replace(&mut record, RecordBuilder::new(&tag)?).finish());
            }
        }
        records.extend(record.finish());
        let log = self.log as usize;
        let mut changes = Vec::with_capacity(records.len() + 1);
        let too_many = {
            let _gate = self.gate();
            for finished in records {
                let (key, value) = self.store(channel, finished)?;
                changes.push(Change::Insert { log, key, value });
            }
            changes.push(Change::Head {
                log,
                channel: channel.as_bytes().to_vec(),
                last: *last,
            });
            // Sled gets the entries later (see `store::indexer`): the fan-out need not wait.
            self.indexer.queue(changes)
        };
        if too_many {
            self.indexer.catch_up()?;
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        // The segments hold every record and every index change (the write-ahead log), so
        // they alone need syncing; sled's copy of the index catches up at each checkpoint,
        // and opening replays what it missed.
        self.segments.sync()
    }

    fn checkpoint_health(&self) -> Option<CheckpointHealth> {
        // Without the thread (tests), nothing checkpoints after opening: no health to tell.
        self.checkpoints.thread.as_ref()?;
        let health = self
            .checkpoints
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Some(CheckpointHealth {
            age: health.last_success.elapsed(),
            last_duration: health.last_duration,
            failures_in_a_row: health.failures_in_a_row,
        })
    }

    fn close_cleanly(&self) -> Result<(), StoreError> {
        // The next opening replays nothing, so sled must hold every change.
        self.indexer.catch_up()?;
        // The next opening trusts the segments' lengths, so the active one is cut to its
        // frames before the log is marked as stopped cleanly.
        self.segments.close()?;
        self.db.open_tree("meta")?.remove(RUNNING)?;
        self.db.flush()?;
        Ok(())
    }

    fn read(&self, channel: &str, query: &Query) -> Result<Vec<(u64, Message)>, StoreError> {
        if query.from > query.to || query.limit == 0 {
            return Ok(Vec::new());
        }
        self.indexer.catch_up()?;
        // Start at the record that holds `from`, which may begin before it.
        let start = self
            .record_at(channel, query.from)?
            .map_or_else(|| key(channel, query.from), |(k, _)| k.to_vec());
        let range = self.index.range(start..=key(channel, query.to));
        let records: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            match query.direction {
                Direction::Forwards => Box::new(range),
                Direction::Backwards => Box::new(range.rev()),
            };
        let mut out = Vec::new();
        for item in records {
            let (k, v) = item?;
            let corrupt = || StoreError::Corrupt {
                channel: channel.to_owned(),
                serial: split_key(&k).map_or(0, |(_, s)| s),
            };
            let index = Index::parse(&v).ok_or_else(corrupt)?;
            if index.header.last_serial < query.from {
                continue;
            }
            let Some(frame) = self.load(&k, &index)? else {
                continue;
            };
            let record = Record::parse(frame.body()).ok_or_else(corrupt)?;
            let entries: Box<dyn Iterator<Item = Entry>> = match query.direction {
                Direction::Forwards => Box::new(record.entries()),
                Direction::Backwards => Box::new(record.entries().rev()),
            };
            for entry in entries {
                if entry.serial < query.from || entry.serial > query.to {
                    continue;
                }
                // Timestamps never decrease along a channel (the sequencer enforces it), so
                // once past the window in the reading direction nothing later can match.
                if query.start_ms.is_some_and(|s| entry.timestamp < s) {
                    if query.direction == Direction::Backwards {
                        return Ok(out);
                    }
                    continue;
                }
                if query.end_ms.is_some_and(|e| entry.timestamp > e) {
                    if query.direction == Direction::Forwards {
                        return Ok(out);
                    }
                    continue;
                }
                let message: Message =
                    protocol::codec::decode_value(protocol::Format::Msgpack, entry.body).map_err(
                        |_| StoreError::Corrupt {
                            channel: channel.to_owned(),
                            serial: entry.serial,
                        },
                    )?;
                out.push((entry.serial, message));
                if out.len() >= query.limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    fn trim_before(&self, channel: &str, first_kept: u64) -> Result<(), StoreError> {
        self.indexer.catch_up()?;
        let mut gone = Vec::new();
        let mut straddling = None;
        for item in self.index.range(key(channel, 0)..key(channel, first_kept)) {
            let (k, v) = item?;
            match Index::parse(&v) {
                Some(i) if i.header.last_serial >= first_kept => straddling = Some((k, i)),
                Some(i) => gone.push((k, i.at.segment)),
                None => gone.push((k, u64::MAX)),
            }
        }
        // Only the record holding `first_kept` can straddle it, and it is the last key.
        let below = straddling
            .as_ref()
            .and_then(|(k, _)| split_key(k))
            .map_or(first_kept, |(_, s)| s);
        self.remove_oldest(channel, below.saturating_sub(1), &gone)?;
        if let Some((k, index)) = straddling {
            self.rewrite(channel, &k, &index, |e| e.serial >= first_kept)?;
        }
        Ok(())
    }

    fn retain_newest(&self, channel: &str, keep: u64) -> Result<Retained, StoreError> {
        self.indexer.catch_up()?;
        let mut held = 0;
        let mut first = None;
        let mut cut = None;
        for item in self
            .index
            .range(key(channel, 0)..=key(channel, u64::MAX))
            .rev()
        {
            let (k, v) = item?;
            let Some(index) = Index::parse(&v) else {
                continue;
            };
            if held + index.header.count >= keep {
                // The oldest message kept is in this record.
                let need = (keep - held) as usize;
                let Some(frame) = self.load(&k, &index)? else {
                    continue;
                };
                let serials: Vec<u64> = Record::parse(frame.body())
                    .map(|r| r.entries().map(|e| e.serial).collect())
                    .unwrap_or_default();
                let first_kept = serials[serials.len().saturating_sub(need)..]
                    .first()
                    .copied();
                held += need.min(serials.len()) as u64;
                first = first_kept.or(first);
                cut = first_kept;
                break;
            }
            held += index.header.count;
            first = split_key(&k).map(|(_, s)| s);
        }
        if let Some(first_kept) = cut {
            self.trim_before(channel, first_kept)?;
        }
        Ok(Retained { first, held })
    }

    fn drop_oldest(&self, channel: &str, count: u64) -> Result<Option<u64>, StoreError> {
        self.indexer.catch_up()?;
        let mut dropped = 0;
        let mut first_kept = None;
        for item in self.index.range(key(channel, 0)..=key(channel, u64::MAX)) {
            let (k, v) = item?;
            let Some(index) = Index::parse(&v) else {
                continue;
            };
            if dropped + index.header.count <= count {
                dropped += index.header.count;
                continue;
            }
            // The oldest message kept is in this record.
            let skip = (count - dropped) as usize;
            first_kept = match self.load(&k, &index)? {
                Some(frame) => Record::parse(frame.body())
                    .and_then(|r| r.entries().nth(skip).map(|e| e.serial)),
                None => None,
            }
            .or_else(|| split_key(&k).map(|(_, s)| s));
            break;
        }
        match first_kept {
            Some(first) => self.trim_before(channel, first)?,
            None => {
                if let Some(bounds) = self.bounds(channel)? {
                    self.trim_before(channel, bounds.last.saturating_add(1))?;
                }
            }
        }
        Ok(first_kept)
    }

    fn truncate_after(&self, channel: &str, last_kept: u64) -> Result<(), StoreError> {
        self.indexer.catch_up()?;
        let mut gone = Vec::new();
        let from = last_kept.saturating_add(1);
        for item in self
            .index
            .range(key(channel, from)..=key(channel, u64::MAX))
        {
            let (k, v) = item?;
            gone.push((k, Index::parse(&v).map_or(u64::MAX, |i| i.at.segment)));
        }
        self.remove_all(channel, (from, u64::MAX), &gone)?;
        if let Some((k, v)) = self.record_at(channel, last_kept)? {
            if let Some(index) = Index::parse(&v) {
                if index.header.last_serial > last_kept {
                    self.rewrite(channel, &k, &index, |e| e.serial <= last_kept)?;
                }
            }
        }
        Ok(())
    }

    fn expire_before(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        self.indexer.catch_up()?;
        let mut removed = 0;
        let mut cursor: Bound<Vec<u8>> = Bound::Unbounded;
        loop {
            let next = self
                .index
                .range::<Vec<u8>, _>((cursor.clone(), Bound::Unbounded))
                .next()
                .transpose()?;
            let Some((k, v)) = next else { break };
            let (Some((name, _)), Some(index)) = (split_key(&k), Index::parse(&v)) else {
                cursor = Bound::Excluded(k.to_vec());
                continue;
            };
            let name_text = String::from_utf8_lossy(name).into_owned();
            if index.header.last_timestamp < cutoff_ms {
                removed += index.header.count;
                let serial = split_key(&k).map_or(0, |(_, s)| s);
                self.remove_all(
                    &name_text,
                    (serial, serial),
                    &[(k.clone(), index.at.segment)],
                )?;
                cursor = Bound::Excluded(k.to_vec());
                continue;
            }
            // A record cut by the cutoff keeps its newer part; the rest of this channel is
            // newer still, so jump past its last possible key.
            removed += self.rewrite(&name_text, &k, &index, |e| e.timestamp >= cutoff_ms)?;
            let mut end = name.to_vec();
            end.push(SEPARATOR);
            end.extend_from_slice(&u64::MAX.to_be_bytes());
            cursor = Bound::Excluded(end);
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The helpers are shared with the tests of `wal`, `checkpoint` and `migrate`.

    /// Opens the log in `dir` again; `Database::open` waits for the lock the dropped one may
    /// still hold for a moment.
    pub(super) fn reopen(dir: &Path) -> SledLog {
        SledLog::open(dir, 1 << 20).unwrap()
    }

    pub(super) fn message(ts: i64, name: &str) -> Message {
        Message {
            name: Some(name.into()),
            timestamp: Some(ts),
            ..Default::default()
        }
    }

    pub(super) fn query(direction: Direction, limit: usize) -> Query {
        Query {
            from: 0,
            to: u64::MAX,
            start_ms: None,
            end_ms: None,
            direction,
            limit,
        }
    }

    #[test]
    fn channels_are_separate_ordered_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let epoch;
        {
            let log = SledLog::open(dir.path(), 1 << 20).unwrap();
            epoch = log.epoch().to_owned();
            let (a1, a2, b1) = (message(10, "a1"), message(20, "a2"), message(15, "b1"));
            log.append("a", &[(1, &a1), (2, &a2)]).unwrap();
            log.append("ab", &[(1, &b1)]).unwrap();
            log.close_cleanly().unwrap();
        }
        let log = reopen(dir.path());
        assert_eq!(log.epoch(), epoch);
        let names = |v: Vec<(u64, Message)>| {
            v.into_iter()
                .map(|(_, m)| m.name.unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(log.read("a", &query(Direction::Forwards, 10)).unwrap()),
            ["a1", "a2"]
        );
        assert_eq!(
            names(log.read("a", &query(Direction::Backwards, 1)).unwrap()),
            ["a2"]
        );
        assert_eq!(
            names(log.read("ab", &query(Direction::Forwards, 10)).unwrap()),
            ["b1"]
        );
        assert_eq!(
            log.bounds("a").unwrap(),
            Some(Bounds {
                first: 1,
                last: 2,
                last_timestamp: 20
            })
        );
        assert_eq!(log.bounds("none").unwrap(), None);
    }

    #[test]
    fn time_windows_trimming_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path(), 1 << 20).unwrap();
        let msgs: Vec<Message> = (1..=5)
            .map(|i| message(i * 100, &format!("m{i}")))
            .collect();
        let refs: Vec<(u64, &Message)> = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| (i as u64 + 1, m))
            .collect();
        log.append("c", &refs).unwrap();
        log.append("d", &[(1, &message(50, "d1")), (2, &message(500, "d2"))])
            .unwrap();
        let mut q = query(Direction::Forwards, 10);
        q.start_ms = Some(200);
        q.end_ms = Some(400);
        assert_eq!(
            log.read("c", &q)
                .unwrap()
                .iter()
                .map(|(s, _)| *s)
                .collect::<Vec<_>>(),
            [2, 3, 4]
        );
        q.direction = Direction::Backwards;
        assert_eq!(
            log.read("c", &q)
                .unwrap()
                .iter()
                .map(|(s, _)| *s)
                .collect::<Vec<_>>(),
            [4, 3, 2]
        );
        log.trim_before("c", 3).unwrap();
        assert_eq!(log.bounds("c").unwrap().unwrap().first, 3);
        assert_eq!(log.expire_before(400).unwrap(), 2);
        assert_eq!(log.bounds("c").unwrap().unwrap().first, 4);
        assert_eq!(log.bounds("d").unwrap().unwrap().first, 2);
        // Once retention empties a channel, its head still says where serials continue.
        assert_eq!(log.expire_before(10_000).unwrap(), 3);
        let empty = log.bounds("c").unwrap().unwrap();
        assert_eq!((empty.first, empty.last), (6, 5));
    }

    #[test]
    fn truncate_after_undoes_an_append() {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path(), 1 << 20).unwrap();
        let (a, b, c) = (message(1, "a"), message(2, "b"), message(3, "c"));
        log.append("t", &[(1, &a), (2, &b), (3, &c)]).unwrap();
        log.truncate_after("t", 1).unwrap();
        let left = log.read("t", &query(Direction::Forwards, 10)).unwrap();
        assert_eq!(left.len(), 1);
        // The head stays: serials 2 and 3 are not given out again.
        assert_eq!(log.bounds("t").unwrap().unwrap().last, 3);
    }

    #[test]
    fn reads_start_and_end_inside_records() {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path(), 1 << 20).unwrap();
        let msgs: Vec<Message> = (1..=9).map(|i| message(i, &format!("m{i}"))).collect();
        // Three appends, three records: 1-3, 4-6, 7-9.
        for chunk in msgs.chunks(3).enumerate() {
            let refs: Vec<(u64, &Message)> = chunk
                .1
                .iter()
                .enumerate()
                .map(|(i, m)| ((chunk.0 * 3 + i + 1) as u64, m))
                .collect();
            log.append("r", &refs).unwrap();
        }
        let serials = |q: &Query| {
            log.read("r", q)
                .unwrap()
                .iter()
                .map(|(s, _)| *s)
                .collect::<Vec<_>>()
        };
        let mut q = query(Direction::Forwards, 4);
        q.from = 2;
        q.to = 8;
        assert_eq!(serials(&q), [2, 3, 4, 5]);
        q.direction = Direction::Backwards;
        assert_eq!(serials(&q), [8, 7, 6, 5]);
        q.limit = 100;
        q.from = 5;
        q.to = 5;
        assert_eq!(serials(&q), [5]);
        // Retention that cuts the middle record keeps exactly its newer part.
        log.trim_before("r", 5).unwrap();
        assert_eq!(serials(&query(Direction::Forwards, 100)), [5, 6, 7, 8, 9]);
        assert_eq!(log.bounds("r").unwrap().unwrap().first, 5);
    }

    #[test]
    fn an_unclean_stop_skips_heads_so_serials_are_not_reissued() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SledLog::open(dir.path(), 1 << 20).unwrap();
            log.append("h", &[(1, &message(1, "a")), (2, &message(2, "b"))])
                .unwrap();
            log.sync().unwrap();
            // Dropped without close_cleanly: as after a crash.
        }
        let log = reopen(dir.path());
        let bounds = log.bounds("h").unwrap().unwrap();
        assert_eq!((bounds.first, bounds.last), (1, 2 + UNCLEAN_STOP_SKIP));
        assert_eq!(
            log.read("h", &query(Direction::Forwards, 10))
                .unwrap()
                .len(),
            2
        );
        // A clean stop keeps the heads where they are.
        log.close_cleanly().unwrap();
        drop(log);
        let log = reopen(dir.path());
        assert_eq!(
            log.bounds("h").unwrap().unwrap().last,
            2 + UNCLEAN_STOP_SKIP
        );
    }

    #[test]
    fn a_large_append_is_cut_into_records_read_as_one_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path(), 1 << 20).unwrap();
        let big = |i: i64| Message {
            data: Some(protocol::Data::String("x".repeat(4000))),
            ..message(i, &format!("b{i}"))
        };
        let msgs: Vec<Message> = (1..=40).map(big).collect();
        let refs: Vec<(u64, &Message)> = msgs.iter().zip(1..).map(|(m, s)| (s, m)).collect();
        log.append("big", &refs).unwrap();
        log.indexer.catch_up().unwrap();
        assert!(log.index.len() > 1, "160 KB in more than one record");
        let serials: Vec<u64> = log
            .read("big", &query(Direction::Forwards, 100))
            .unwrap()
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(serials, (1..=40).collect::<Vec<_>>());
        log.truncate_after("big", 20).unwrap();
        assert_eq!(log.bounds("big").unwrap().unwrap().last, 40);
        assert_eq!(
            log.read("big", &query(Direction::Backwards, 1)).unwrap()[0].0,
            20
        );
    }

    #[test]
    fn retention_counts_messages_across_the_gap_an_unclean_stop_leaves() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SledLog::open(dir.path(), 1 << 20).unwrap();
            let msgs: Vec<Message> = (1..=5).map(|i| message(i, &format!("m{i}"))).collect();
            let refs: Vec<(u64, &Message)> = msgs.iter().zip(1..).map(|(m, s)| (s, m)).collect();
            log.append("g", &refs).unwrap();
            log.sync().unwrap();
        }
        let log = reopen(dir.path());
        let next = log.bounds("g").unwrap().unwrap().last + 1;
        log.append("g", &[(next, &message(6, "after"))]).unwrap();
        // Six messages, whatever the serials say: a limit of 10 keeps them all.
        let left = log.retain_newest("g", 10).unwrap();
        assert_eq!(
            left,
            Retained {
                first: Some(1),
                held: 6
            }
        );
        assert_eq!(
            log.read("g", &query(Direction::Forwards, 100))
                .unwrap()
                .len(),
            6
        );
        // A limit of 2 keeps the newest two, cutting the first record.
        let left = log.retain_newest("g", 2).unwrap();
        assert_eq!(
            left,
            Retained {
                first: Some(5),
                held: 2
            }
        );
        let names: Vec<String> = log
            .read("g", &query(Direction::Forwards, 100))
            .unwrap()
            .into_iter()
            .map(|(_, m)| m.name.unwrap())
            .collect();
        assert_eq!(names, ["m5", "after"]);
    }

    #[test]
    fn dropping_the_oldest_counts_messages_and_cuts_a_record_in_two() {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path(), 1 << 20).unwrap();
        // Records of 3, 1 and 2 messages: serials 1-3, 4, 5-6.
        let msgs: Vec<Message> = (1..=6).map(|i| message(i, &format!("m{i}"))).collect();
        let refs: Vec<(u64, &Message)> = msgs.iter().zip(1..).map(|(m, s)| (s, m)).collect();
        log.append("d", &refs[..3]).unwrap();
        log.append("d", &refs[3..4]).unwrap();
        log.append("d", &refs[4..]).unwrap();
        let names = |log: &SledLog| -> Vec<String> {
            log.read("d", &query(Direction::Forwards, 100))
                .unwrap()
                .into_iter()
                .map(|(_, m)| m.name.unwrap())
                .collect()
        };
        assert_eq!(log.drop_oldest("d", 2).unwrap(), Some(3));
        assert_eq!(names(&log), ["m3", "m4", "m5", "m6"]);
        assert_eq!(log.drop_oldest("d", 2).unwrap(), Some(5));
        assert_eq!(names(&log), ["m5", "m6"]);
        assert_eq!(log.bounds("d").unwrap().unwrap().first, 5);
        // More than is left removes everything; serials are not reused.
        assert_eq!(log.drop_oldest("d", 10).unwrap(), None);
        assert!(names(&log).is_empty());
        assert_eq!(log.bounds("d").unwrap().unwrap().last, 6);
    }
}
