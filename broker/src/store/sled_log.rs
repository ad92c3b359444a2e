//! [`ChannelLog`] on sled and segment files. The unit of storage is a *record*: every message
//! of one append (one sequencer batch) together, so a burst of publishes costs one index
//! insert and one removal at retention, not one per message. The record's bytes go to the
//! append-only segment files of [`Segments`]; sled holds an index entry per record, keyed by
//! the channel name, a 0xFF byte (never part of UTF-8) and the record's first serial
//! big-endian, so each channel is one contiguous, serial-ordered key range and the record
//! holding serial `s` is the last key at or before `key(channel, s)`.
//!
//! A record is a header — entry count (u32), last serial (u64), last timestamp (i64) — then
//! its entries, each serial (u64), timestamp (i64), length (u32) and the message in msgpack,
//! all big-endian. An index entry is the same header followed by the record's [`Location`],
//! so bounds, retention counts and expiry read only the index; only the records a read returns
//! are fetched and only their returned messages decoded. An append of more than 32 KiB is cut
//! into several records. Retention that cuts a record in two writes the kept part as a new
//! record under its new first serial. A second tree keeps each channel's head (its newest
//! serial ever), so serials are never reused after retention has emptied a channel.
//!
//! The segments are also the write-ahead log of the index. Every change to an index entry
//! is first written as a tagged frame ([`Op`]): a record appended, a range of records
//! removed, a record replaced by its kept part. An ACK waits only for the segments'
//! `fdatasync`; sled is flushed once a second by a checkpoint thread, which then records
//! the position up to which the index is durable. After an unclean stop, opening replays
//! every frame from that position on, so nothing acknowledged is lost with the index's
//! unflushed tail. Replaying is idempotent (each op sets or removes keys outright), and a
//! segment is deleted only once a durable checkpoint lies past it.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protocol::Message;

use super::database::Database;
use super::indexer::{Change, Indexer};
use super::segments::{tagged_frame, Location, Position, Segments, FRAME_HEADER};
use super::{
    Bounds, ChannelLog, CheckpointHealth, Direction, Query, Retained, StoreError, UNCLEAN_STOP_SKIP,
};

const SEPARATOR: u8 = 0xFF;
const HEADER_LEN: usize = 4 + 8 + 8;
const ENTRY_PREFIX_LEN: usize = 8 + 8 + 4;
/// Bytes of an index entry: the record's header and where the record is.
const INDEX_LEN: usize = HEADER_LEN + Location::LEN;
/// A record is closed once its entries reach this many bytes.
const RECORD_BYTES: usize = 32 * 1024;
/// The meta key present while a broker runs on the database; found at start, it means the
/// last run did not stop cleanly.
const RUNNING: &str = "running";
/// The on-disk layout: index entries in sled, records in segment files that are also the
/// index's write-ahead log.
const FORMAT: &str = "records-3";
/// The layout before, the same without the write-ahead log: sled was flushed at every sync,
/// so there is nothing to replay, and opening only records the new format.
const FORMAT_UNLOGGED: &str = "records-2";
/// The layout before that, whole records as sled values, which opening converts.
const FORMAT_RECORDS_IN_SLED: &str = "records-1";
/// The meta key of the durable checkpoint: the [`Position`] before which every index change
/// is in sled and flushed.
const CHECKPOINT: &str = "checkpoint";
/// How often the checkpoint thread flushes sled.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// The index trees of the two logs, and the trees that held whole records before.
const MESSAGE_INDEX: &str = "message-index";
const PRESENCE_INDEX: &str = "presence-index";
const OLD_TREES: [(&str, &str); 2] = [("messages", MESSAGE_INDEX), ("presence", PRESENCE_INDEX)];

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

/// What a frame does to the index, as its tag says: the op's code, the log, its serials
/// (big-endian u64s), then the channel name to the end of the tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// The frame's record is indexed under its first serial.
    Append,
    /// The records keyed `from..=to` are removed; the frame has no record.
    Remove { from: u64, to: u64 },
    /// The record keyed `old` is removed and the frame's record indexed instead.
    Replace { old: u64 },
}

impl Op {
    fn tag(self, log: LogId, channel: &str) -> Vec<u8> {
        let mut tag = Vec::with_capacity(2 + 16 + channel.len());
        match self {
            Op::Append => tag.extend_from_slice(&[1, log as u8]),
            Op::Remove { from, to } => {
                tag.extend_from_slice(&[2, log as u8]);
                tag.extend_from_slice(&from.to_be_bytes());
                tag.extend_from_slice(&to.to_be_bytes());
            }
            Op::Replace { old } => {
                tag.extend_from_slice(&[3, log as u8]);
                tag.extend_from_slice(&old.to_be_bytes());
            }
        }
        tag.extend_from_slice(channel.as_bytes());
        tag
    }

    /// The op, log and channel of a tag; `None` for one this version does not know.
    fn parse(tag: &[u8]) -> Option<(Op, LogId, &[u8])> {
        let log = LogId::from_byte(*tag.get(1)?)?;
        let serial = |at: usize| tag.get(at..at + 8).map(be_u64);
        match tag.first()? {
            1 => Some((Op::Append, log, tag.get(2..)?)),
            2 => Some((
                Op::Remove {
                    from: serial(2)?,
                    to: serial(10)?,
                },
                log,
                tag.get(18..)?,
            )),
            3 => Some((Op::Replace { old: serial(2)? }, log, tag.get(10..)?)),
            _ => None,
        }
    }
}

/// The checkpoint thread: once a second it reads the segments' position (under the gate),
/// syncs the segments, flushes sled, and records that position as durable; then segments
/// older than it that nothing points into may go.
struct Checkpoints {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    health: Arc<Mutex<Health>>,
}

/// What [`CheckpointHealth`] is made from.
struct Health {
    last_success: Instant,
    last_duration: Duration,
    failures_in_a_row: u64,
}

impl Health {
    fn new(last_duration: Duration) -> Health {
        Health {
            last_success: Instant::now(),
            last_duration,
            failures_in_a_row: 0,
        }
    }
}

impl Checkpoints {
    fn start(
        db: sled::Db,
        segments: Arc<Segments>,
        gate: Arc<RwLock<()>>,
        indexer: Arc<Indexer>,
        every: Duration,
        health: Arc<Mutex<Health>>,
    ) -> Result<Checkpoints, StoreError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let kept = health.clone();
        let thread = std::thread::Builder::new()
            .name("log-checkpoint".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    let started = Instant::now();
                    let result = checkpoint(&db, &segments, &gate, &indexer);
                    let mut health = kept.lock().unwrap_or_else(|e| e.into_inner());
                    match result {
                        Ok(_) => *health = Health::new(started.elapsed()),
                        Err(e) => {
                            health.failures_in_a_row += 1;
                            tracing::warn!(error = %e, "log checkpoint failed; retrying");
                        }
                    }
                }
            })
            .map_err(|e| StoreError::Engine(format!("starting the checkpoint thread: {e}")))?;
        Ok(Checkpoints {
            stop: Some(stop),
            thread: Some(thread),
            health,
        })
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Makes every index change so far durable and records where replay would start.
fn checkpoint(
    db: &sled::Db,
    segments: &Segments,
    gate: &RwLock<()>,
    indexer: &Indexer,
) -> Result<Position, StoreError> {
    let position = {
        let _alone = gate.write().unwrap_or_else(|e| e.into_inner());
        segments.position()
    };
    // Every frame before `position` has its change in sled or queued: apply the queue.
    indexer.catch_up()?;
    // Syncing the segments too bounds what `fsync = false` can lose to about this interval.
    segments.sync()?;
    db.flush()?;
    db.open_tree("meta")?
        .insert(CHECKPOINT, &position.encode())?;
    db.flush()?;
    segments.collect(position.segment);
    Ok(position)
}

/// Redoes every index change logged from `from` on (after an unclean stop). Returns how many
/// frames it applied.
fn replay(db: &sled::Db, segments_dir: &Path, from: Position) -> Result<u64, StoreError> {
    let trees = |log: LogId| -> Result<(sled::Tree, sled::Tree), StoreError> {
        let (index, heads) = log.trees();
        Ok((db.open_tree(index)?, db.open_tree(heads)?))
    };
    let (messages, presence) = (trees(LogId::Messages)?, trees(LogId::Presence)?);
    let mut applied = 0;
    let ends = Segments::scan(segments_dir, from, |at, tag, record| {
        let Some((op, log, channel)) = Op::parse(tag) else {
            return Ok(());
        };
        let (index, heads) = match log {
            LogId::Messages => &messages,
            LogId::Presence => &presence,
        };
        let channel = String::from_utf8_lossy(channel);
        let removed = match op {
            Op::Append => None,
            Op::Remove { from, to } => Some((from, to)),
            Op::Replace { old } => Some((old, old)),
        };
        if let Some((from, to)) = removed {
            for item in index.range(key(&channel, from)..=key(&channel, to)) {
                index.remove(item?.0)?;
            }
        }
        let header = Header::parse(record);
        let first = record.get(HEADER_LEN..HEADER_LEN + 8).map(be_u64);
        if let (Some(header), Some(first)) = (header, first) {
            index.insert(key(&channel, first), index_value(record, 0, at))?;
            let head = heads.get(channel.as_bytes())?.map_or(0, |v| be_u64(&v));
            if header.last_serial > head {
                heads.insert(channel.as_bytes(), &header.last_serial.to_be_bytes())?;
            }
        }
        applied += 1;
        Ok(())
    })?;
    // Past the intact frames lies only what was never acknowledged, or allocated ahead; the
    // index is checked against the files' lengths next (`count_live`).
    Segments::cut(segments_dir, &ends)?;
    Ok(applied)
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
                let format = meta.get("format")?;
                convert = format.as_deref() == Some(FORMAT_RECORDS_IN_SLED.as_bytes());
                let known = [FORMAT, FORMAT_UNLOGGED].map(str::as_bytes);
                if !convert && !format.is_some_and(|f| known.contains(&f.as_ref())) {
                    return Err(StoreError::Engine(format!(
                        "{} holds a message log in an older layout than {FORMAT}; \
                         move it aside to start afresh",
                        dir.display()
                    )));
                }
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
            logs.0.convert_from(&db.open_tree(OLD_TREES[0].0)?)?;
            logs.1.convert_from(&db.open_tree(OLD_TREES[1].0)?)?;
            logs.0.sync()?;
            meta.insert("format", FORMAT)?;
            db.flush()?;
            for (old, _) in OLD_TREES {
                db.drop_tree(old)?;
            }
            tracing::info!("converted the message log to {FORMAT} (records in segment files)");
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

    /// Moves the whole records of a `records-1` tree into segments, indexing each.
    fn convert_from(&self, old: &sled::Tree) -> Result<(), StoreError> {
        for item in old.iter() {
            let (key, record) = item?;
            let Some((channel, _)) = split_key(&key) else {
                continue;
            };
            let tag = Op::Append.tag(self.log, &String::from_utf8_lossy(channel));
            let (mut frame, record_at) = tagged_frame(&tag, record.len())?;
            frame.extend_from_slice(&record);
            let at = self.segments.write(&mut frame, true)?;
            self.index.insert(key, index_value(&frame, record_at, at))?;
        }
        Ok(())
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

/// Counts the index entries per segment over both logs, and removes entries whose record lies
/// past the end of its segment or in a segment that is gone: after a power loss, records
/// that were never synced (so never acknowledged) whose index entry sled kept.
fn count_live(db: &sled::Db, segments_dir: &Path) -> Result<HashMap<u64, u64>, StoreError> {
    let lengths = Segments::lengths(segments_dir)?;
    let mut live = HashMap::new();
    for name in [MESSAGE_INDEX, PRESENCE_INDEX] {
        let tree = db.open_tree(name)?;
        for item in tree.iter() {
            let (key, value) = item?;
            let at = Index::parse(&value).map(|i| i.at);
            let stored = at.is_some_and(|at| {
                lengths.get(&at.segment).is_some_and(|&len| {
                    at.offset + (FRAME_HEADER as u64) + u64::from(at.len) <= len
                })
            });
            match at {
                Some(at) if stored => *live.entry(at.segment).or_insert(0) += 1,
                _ => {
                    tracing::warn!("a log index entry points past its segment; removed");
                    tree.remove(key)?;
                }
            }
        }
    }
    Ok(live)
}

fn key(channel: &str, serial: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(channel.len() + 9);
    key.extend_from_slice(channel.as_bytes());
    key.push(SEPARATOR);
    key.extend_from_slice(&serial.to_be_bytes());
    key
}

fn split_key(key: &[u8]) -> Option<(&[u8], u64)> {
    let (prefix, serial) = key.split_at(key.len().checked_sub(8)?);
    let (name, sep) = prefix.split_at(prefix.len().checked_sub(1)?);
    (sep == [SEPARATOR]).then(|| (name, be_u64(serial)))
}

fn be_u64(bytes: &[u8]) -> u64 {
    bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// The index entry of the record at `record_at` in `frame` (a frame written at `at`): the
/// record's header, then `at`.
fn index_value(frame: &[u8], record_at: usize, at: Location) -> Vec<u8> {
    let mut value = Vec::with_capacity(INDEX_LEN);
    value.extend_from_slice(&frame[record_at..record_at + HEADER_LEN]);
    at.encode(&mut value);
    value
}

/// A record's header: what bounds, retention and expiry need without reading the record.
struct Header {
    count: u64,
    last_serial: u64,
    last_timestamp: i64,
}

impl Header {
    fn parse(bytes: &[u8]) -> Option<Header> {
        (bytes.len() >= HEADER_LEN).then(|| Header {
            count: u64::from(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])),
            last_serial: be_u64(&bytes[4..12]),
            last_timestamp: be_u64(&bytes[12..20]) as i64,
        })
    }
}

/// An index entry: a record's header and location.
struct Index {
    header: Header,
    at: Location,
}

impl Index {
    fn parse(value: &[u8]) -> Option<Index> {
        Some(Index {
            header: Header::parse(value)?,
            at: Location::decode(value.get(HEADER_LEN..)?)?,
        })
    }
}

/// One stored message, still encoded.
struct Entry<'a> {
    serial: u64,
    timestamp: i64,
    body: &'a [u8],
}

/// The entries of a record read back from its segment.
struct Record<'a> {
    entries: &'a [u8],
}

impl<'a> Record<'a> {
    fn parse(record: &'a [u8]) -> Option<Record<'a>> {
        Some(Record {
            entries: record.get(HEADER_LEN..)?,
        })
    }

    /// The entries oldest first; a truncated tail ends the iteration.
    fn entries(&self) -> impl DoubleEndedIterator<Item = Entry<'a>> {
        let mut entries = Vec::new();
        let mut rest = self.entries;
        while rest.len() >= ENTRY_PREFIX_LEN {
            let len = u32::from_be_bytes([rest[16], rest[17], rest[18], rest[19]]) as usize;
            let Some(body) = rest.get(ENTRY_PREFIX_LEN..ENTRY_PREFIX_LEN + len) else {
                break;
            };
            entries.push(Entry {
                serial: be_u64(rest),
                timestamp: be_u64(&rest[8..]) as i64,
                body,
            });
            rest = &rest[ENTRY_PREFIX_LEN + len..];
        }
        entries.into_iter()
    }
}

/// Builds one record, entry by entry, in serial order, in a tagged frame
/// ([`tagged_frame`]).
struct RecordBuilder {
    frame: Vec<u8>,
    record_at: usize,
    first: Option<u64>,
    count: u32,
    last_serial: u64,
    last_timestamp: i64,
}

/// A record ready for [`Segments::write`]: its first serial (its key), its frame, and where
/// in the frame the record starts.
struct Finished {
    first: u64,
    frame: Vec<u8>,
    record_at: usize,
}

impl RecordBuilder {
    fn new(tag: &[u8]) -> Result<RecordBuilder, StoreError> {
        let (mut frame, record_at) = tagged_frame(tag, HEADER_LEN + 256)?;
        frame.resize(record_at + HEADER_LEN, 0);
        Ok(RecordBuilder {
            frame,
            record_at,
            first: None,
            count: 0,
            last_serial: 0,
            last_timestamp: 0,
        })
    }

    /// Adds an entry whose message `write_body` appends to the record in place.
    fn push(&mut self, serial: u64, timestamp: i64, write_body: impl FnOnce(&mut Vec<u8>)) {
        self.frame.extend_from_slice(&serial.to_be_bytes());
        self.frame.extend_from_slice(&timestamp.to_be_bytes());
        let len_at = self.frame.len();
        self.frame.extend_from_slice(&[0; 4]);
        write_body(&mut self.frame);
        let len = (self.frame.len() - len_at - 4) as u32;
        self.frame[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        self.first.get_or_insert(serial);
        self.count += 1;
        self.last_serial = serial;
        self.last_timestamp = timestamp;
    }

    /// Bytes of entries so far.
    fn entry_bytes(&self) -> usize {
        self.frame.len() - self.record_at - HEADER_LEN
    }

    /// The finished record; `None` when it has no entry.
    fn finish(mut self) -> Option<Finished> {
        let first = self.first?;
        let header = &mut self.frame[self.record_at..self.record_at + HEADER_LEN];
        header[..4].copy_from_slice(&self.count.to_be_bytes());
        header[4..12].copy_from_slice(&self.last_serial.to_be_bytes());
        header[12..20].copy_from_slice(&self.last_timestamp.to_be_bytes());
        Some(Finished {
            first,
            frame: self.frame,
            record_at: self.record_at,
        })
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

    /// Writes a finished record to the segments and returns its index key and value.
    fn store(&self, channel: &str, mut record: Finished) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        let at = self.segments.write(&mut record.frame, true)?;
        Ok((
            key(channel, record.first),
            index_value(&record.frame, record.record_at, at),
        ))
    }

    /// Writes the [`Op::Remove`] frame of the entries keyed `from..=to`; call it under the
    /// gate, before removing them from sled.
    fn log_removal(&self, channel: &str, from: u64, to: u64) -> Result<(), StoreError> {
        let tag = Op::Remove { from, to }.tag(self.log, channel);
        let (mut frame, _) = tagged_frame(&tag, 0)?;
        self.segments.write(&mut frame, false)?;
        Ok(())
    }

    /// Shares the gate: from an op's frame until its change is in sled.
    fn gate(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes the index entries keyed `from..=to` of `channel` (`keys`, with the segment
    /// each points into) in one batch, logged as one [`Op::Remove`], then releases their
    /// segments.
    fn remove_all(
        &self,
        channel: &str,
        (from, to): (u64, u64),
        keys: Vec<(sled::IVec, u64)>,
    ) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (k, _) in &keys {
            batch.remove(k);
        }
        {
            let _gate = self.gate();
            self.log_removal(channel, from, to)?;
            self.index.apply_batch(batch)?;
        }
        for (_, segment) in keys {
            self.segments.release(segment);
        }
        Ok(())
    }

    /// Keeps only the entries of the record at `key_bytes` that `keep` picks: removes its
    /// index entry and indexes the kept entries as a new record under their first serial.
    /// Returns how many went.
    fn rewrite(
        &self,
        channel: &str,
        key_bytes: &[u8],
        index: &Index,
        keep: impl Fn(&Entry) -> bool,
    ) -> Result<u64, StoreError> {
        let Some(frame) = self.load(key_bytes, index)? else {
            return Ok(index.header.count);
        };
        let Some(record) = Record::parse(frame.body()) else {
            return Ok(0);
        };
        let (kept, gone): (Vec<Entry>, Vec<Entry>) = record.entries().partition(|e| keep(e));
        if gone.is_empty() {
            return Ok(0);
        }
        let old = split_key(key_bytes).map_or(0, |(_, s)| s);
        let mut batch = sled::Batch::default();
        batch.remove(key_bytes);
        let mut record = RecordBuilder::new(&Op::Replace { old }.tag(self.log, channel))?;
        for e in &kept {
            record.push(e.serial, e.timestamp, |v| v.extend_from_slice(e.body));
        }
        {
            let _gate = self.gate();
            match record.finish() {
                Some(finished) => {
                    let (k, v) = self.store(channel, finished)?;
                    batch.insert(k, v);
                }
                None => self.log_removal(channel, old, old)?,
            }
            self.index.apply_batch(batch)?;
        }
        self.segments.release(index.at.segment);
        Ok(gone.len() as u64)
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
        self.remove_all(channel, (0, below.saturating_sub(1)), gone)?;
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
        self.remove_all(channel, (from, u64::MAX), gone)?;
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
                    vec![(k.clone(), index.at.segment)],
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
    use crate::store::segments::PREALLOCATE;

    /// Opens the log in `dir` again; `Database::open` waits for the lock the dropped one may
    /// still hold for a moment.
    fn reopen(dir: &Path) -> SledLog {
        SledLog::open(dir, 1 << 20).unwrap()
    }

    fn message(ts: i64, name: &str) -> Message {
        Message {
            name: Some(name.into()),
            timestamp: Some(ts),
            ..Default::default()
        }
    }

    fn query(direction: Direction, limit: usize) -> Query {
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
    fn an_older_layout_is_refused_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledLog::open(dir.path(), 1 << 20).unwrap());
        {
            // Through the log, whose opening waits for the lock, then its raw database.
            let db = reopen(dir.path()).db.clone();
            db.open_tree("meta").unwrap().remove("format").unwrap();
            db.flush().unwrap();
        }
        let error = SledLog::open(dir.path(), 1 << 20).err().expect("refused");
        assert!(error.to_string().contains("older layout"), "{error}");
    }

    #[test]
    fn a_log_with_records_inside_sled_is_converted_to_segments() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The records-1 layout: whole records as the values of the "messages" tree.
            let db = sled::Config::new()
                .path(dir.path().join("log"))
                .open()
                .unwrap();
            let meta = db.open_tree("meta").unwrap();
            meta.insert("epoch", "e1").unwrap();
            meta.insert("format", FORMAT_RECORDS_IN_SLED).unwrap();
            let mut record = RecordBuilder::new(b"").unwrap();
            for (serial, m) in [(1, message(10, "old1")), (2, message(20, "old2"))] {
                record.push(serial, 10 * serial as i64, |v| {
                    rmp_serde::encode::write_named(v, &m).unwrap()
                });
            }
            let record = record.finish().unwrap();
            db.open_tree("messages")
                .unwrap()
                .insert(key("c", record.first), &record.frame[record.record_at..])
                .unwrap();
            db.flush().unwrap();
        }
        let log = reopen(dir.path());
        assert_eq!(log.epoch(), "e1");
        let names: Vec<String> = log
            .read("c", &query(Direction::Forwards, 10))
            .unwrap()
            .into_iter()
            .map(|(_, m)| m.name.unwrap())
            .collect();
        assert_eq!(names, ["old1", "old2"]);
        assert!(!log
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == b"messages"));
        log.close_cleanly().unwrap();
        drop(log);
        // Converted once: the next start reads the same from the segments.
        let log = reopen(dir.path());
        assert_eq!(log.bounds("c").unwrap().unwrap().last, 2);
    }

    #[test]
    fn records_a_power_loss_cut_from_a_segment_leave_the_index() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SledLog::open(dir.path(), 1 << 20).unwrap();
            log.append("p", &[(1, &message(1, "synced"))]).unwrap();
            log.sync().unwrap();
            log.append("p", &[(2, &message(2, "lost"))]).unwrap();
            log.sync().unwrap();
        }
        // As if the second record's last bytes never reached the disk while sled kept its
        // entry: the segment was allocated ahead, so what was never written reads as zeros.
        let segments_dir = dir.path().join("segments");
        let start = Position {
            segment: 0,
            offset: 0,
        };
        let ends = Segments::scan(&segments_dir, start, |_, _, _| Ok(())).unwrap();
        let (&segment, &end) = ends.iter().max().unwrap();
        let path = segments_dir.join(format!("{segment:016x}.seg"));
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[0; 3], end - 3).unwrap();
        drop(file);
        let log = reopen(dir.path());
        let left = log.read("p", &query(Direction::Forwards, 10)).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1.name.as_deref(), Some("synced"));
        // Serial 2 may have reached subscribers: it is never given out again.
        assert!(log.bounds("p").unwrap().unwrap().last > 2);
    }

    #[test]
    fn opening_after_an_unclean_stop_cuts_the_segment_allocated_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let segments_dir = dir.path().join("segments");
        let newest_length = || {
            let lengths = Segments::lengths(&segments_dir).unwrap();
            let newest = lengths.keys().max().copied().unwrap();
            lengths[&newest]
        };
        {
            let log = SledLog::open(dir.path(), 1 << 20).unwrap();
            log.append("u", &[(1, &message(1, "kept"))]).unwrap();
            log.sync().unwrap();
            assert!(newest_length() >= PREALLOCATE);
        }
        let log = reopen(dir.path());
        let cut = Segments::lengths(&segments_dir).unwrap();
        // The crashed run's segment now ends with its frame; the new run's is still empty.
        let crashed = cut.keys().min().copied().unwrap();
        assert!(cut[&crashed] > 0 && cut[&crashed] < 1024, "{cut:?}");
        let left = log.read("u", &query(Direction::Forwards, 10)).unwrap();
        assert_eq!(left[0].1.name.as_deref(), Some("kept"));
        let next = log.bounds("u").unwrap().unwrap().last + 1;
        log.append("u", &[(next, &message(2, "next"))]).unwrap();
        log.close_cleanly().unwrap();
        drop(log);
        let log = reopen(dir.path());
        assert_eq!(
            log.read("u", &query(Direction::Forwards, 10))
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn segments_emptied_by_retention_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path(), 1 << 20).unwrap();
        log.append("s", &[(1, &message(1, "a"))]).unwrap();
        log.close_cleanly().unwrap();
        drop(log);
        // The next run writes to a new segment; once the first one's only record is trimmed,
        // its file goes.
        let log = reopen(dir.path());
        log.append("s", &[(2, &message(2, "b"))]).unwrap();
        assert_eq!(log.segments.count(), 2);
        log.trim_before("s", 2).unwrap();
        // Not before a checkpoint lies past it: a replay may still need its frames.
        assert_eq!(log.segments.count(), 2);
        checkpoint(&log.db, &log.segments, &log.gate, &log.indexer).unwrap();
        assert_eq!(log.segments.count(), 1);
        let left = log.read("s", &query(Direction::Forwards, 10)).unwrap();
        assert_eq!(left.len(), 1);
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

    #[test]
    fn queued_index_entries_are_in_sled_before_a_checkpoint_records_their_position() {
        let dir = tempfile::tempdir().unwrap();
        // No index thread: only the checkpoint itself can apply the queue here.
        let (log, presence) =
            SledLog::open_with_checkpoints(&Database::open(dir.path(), 1 << 20).unwrap(), None)
                .unwrap();
        let (m1, p1) = (message(1, "m1"), message(1, "p1"));
        log.append("c", &[(1, &m1)]).unwrap();
        presence.append("c", &[(1, &p1)]).unwrap();
        assert!(
            log.index.get(key("c", 1)).unwrap().is_none(),
            "still queued"
        );
        checkpoint(&log.db, &log.segments, &log.gate, &log.indexer).unwrap();
        // A replay would start past both frames: sled must have them.
        assert!(log.index.get(key("c", 1)).unwrap().is_some());
        assert!(presence.index.get(key("c", 1)).unwrap().is_some());
        assert_eq!(be_u64(&log.heads.get("c").unwrap().unwrap()), 1);
    }

    #[test]
    fn acknowledged_changes_survive_a_crash_that_loses_the_index_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (m1, m2, m3, d1, p1) = (
            message(1, "m1"),
            message(2, "m2"),
            message(3, "m3"),
            message(1, "d1"),
            message(1, "p1"),
        );
        {
            let (log, presence) =
                SledLog::open_with_checkpoints(&Database::open(dir.path(), 1 << 20).unwrap(), None)
                    .unwrap();
            log.append("c", &[(1, &m1), (2, &m2)]).unwrap();
            log.indexer.catch_up().unwrap();
            let before_trim = log.index.get(key("c", 1)).unwrap().unwrap();
            log.append("c", &[(3, &m3)]).unwrap();
            log.append("d", &[(1, &d1)]).unwrap();
            // Cuts the first record: its kept part replaces it under serial 2.
            log.trim_before("c", 2).unwrap();
            presence.append("c", &[(1, &p1)]).unwrap();
            log.sync().unwrap();
            log.indexer.catch_up().unwrap();
            // sled keeps any subset of its unflushed changes after a crash. Here: the trim's
            // replacement is undone, the later appends and the heads are gone.
            log.index.remove(key("c", 2)).unwrap();
            log.index.insert(key("c", 1), before_trim).unwrap();
            log.index.remove(key("c", 3)).unwrap();
            log.index.remove(key("d", 1)).unwrap();
            log.heads.clear().unwrap();
            presence.index.clear().unwrap();
            // Dropped without a clean stop: the next start finds the run unfinished.
        }
        let (log, presence) = SledLog::open_logs(dir.path(), 1 << 20).unwrap();
        let names = |log: &SledLog, channel| -> Vec<String> {
            log.read(channel, &query(Direction::Forwards, 10))
                .unwrap()
                .into_iter()
                .map(|(_, m)| m.name.unwrap())
                .collect()
        };
        assert_eq!(names(&log, "c"), ["m2", "m3"]);
        assert_eq!(names(&log, "d"), ["d1"]);
        assert_eq!(names(&presence, "c"), ["p1"]);
        let bounds = log.bounds("c").unwrap().unwrap();
        assert_eq!(bounds.first, 2);
        assert!(
            bounds.last > 3,
            "the head skips past serials that may have been seen"
        );
        // A clean stop leaves nothing to replay, and the next start reads the same.
        log.close_cleanly().unwrap();
        drop((log, presence));
        let log = reopen(dir.path());
        assert_eq!(names(&log, "c"), ["m2", "m3"]);
    }

    #[test]
    fn a_log_in_the_layout_without_its_write_ahead_log_opens_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SledLog::open(dir.path(), 1 << 20).unwrap();
            log.append("c", &[(1, &message(1, "kept"))]).unwrap();
            log.close_cleanly().unwrap();
            let meta = log.db.open_tree("meta").unwrap();
            meta.insert("format", FORMAT_UNLOGGED).unwrap();
            meta.remove(CHECKPOINT).unwrap();
            meta.insert(RUNNING, "1").unwrap();
            log.db.flush().unwrap();
        }
        let log = reopen(dir.path());
        let kept = log.read("c", &query(Direction::Forwards, 10)).unwrap();
        assert_eq!(kept.len(), 1);
        let meta = log.db.open_tree("meta").unwrap();
        assert_eq!(
            meta.get("format").unwrap().as_deref(),
            Some(FORMAT.as_bytes())
        );
    }
}
