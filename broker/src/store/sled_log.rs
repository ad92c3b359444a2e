//! [`ChannelLog`] on sled. The unit of storage is a *record*: every message of one append
//! (one sequencer batch) in one sled value, so a burst of publishes costs one tree insert and
//! one remove at retention, not one per message. The key is the channel name, a 0xFF byte
//! (never part of UTF-8) and the record's first serial big-endian, so each channel is one
//! contiguous, serial-ordered key range and the record holding serial `s` is the last key at
//! or before `key(channel, s)`.
//!
//! An append of more than 32 KiB is cut into several records. A record is a header — entry
//! count (u32), last serial (u64), last timestamp (i64) — then its entries, each serial (u64),
//! timestamp (i64), length (u32) and the message in msgpack, all big-endian. Time filters, bounds and expiry read headers and entry prefixes; only the
//! messages returned are decoded. Retention that cuts a record in two rewrites the kept part
//! under its new first serial. A second tree keeps each channel's head (its newest serial
//! ever), so serials are never reused after retention has emptied a channel.

use std::ops::Bound;
use std::path::Path;

use protocol::Message;

use super::{Bounds, ChannelLog, Direction, Query, Retained, StoreError, UNCLEAN_STOP_SKIP};

const SEPARATOR: u8 = 0xFF;
const HEADER_LEN: usize = 4 + 8 + 8;
const ENTRY_PREFIX_LEN: usize = 8 + 8 + 4;
/// A record is closed once its entries reach this many bytes.
const RECORD_BYTES: usize = 32 * 1024;
/// The meta key present while a broker runs on the database; found at start, it means the
/// last run did not stop cleanly.
const RUNNING: &str = "running";
/// How long opening waits for another process (or a just-dropped database) to release the
/// data directory's lock.
const LOCK_WAIT_MS: u64 = 2000;
/// Bumped when the on-disk layout changes; see [`SledLog::open_logs`].
const FORMAT: &str = "records-1";

/// A sled-backed channel log: one tree of one database.
pub struct SledLog {
    db: sled::Db,
    messages: sled::Tree,
    heads: sled::Tree,
    epoch: String,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Engine(e.to_string())
    }
}

impl SledLog {
    /// The database, for other trees that share its fsync (the auth plugin's user table).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Opens (or creates) the message log in `dir` with a page cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<SledLog, StoreError> {
        Ok(SledLog::open_logs(dir, cache_bytes)?.0)
    }

    /// Opens the message log and the presence history log, two trees of one database that
    /// share its epoch and its fsync. A database written in an older layout is refused
    /// rather than misread. When the previous run did not stop cleanly, every channel's
    /// head skips [`UNCLEAN_STOP_SKIP`] serials ahead.
    pub fn open_logs(dir: &Path, cache_bytes: u64) -> Result<(SledLog, SledLog), StoreError> {
        let config = sled::Config::new()
            .path(dir.join("log"))
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(1000));
        // A broker that just stopped (a supervisor's quick restart, or a test restarting in
        // one process) may hold the file lock a moment longer; wait for it, briefly.
        let mut waited = 0;
        let db = loop {
            match config.open() {
                // sled reports a held lock only in its message.
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && waited < LOCK_WAIT_MS =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    waited += 10;
                }
                other => break other?,
            }
        };
        let meta = db.open_tree("meta")?;
        let epoch = match meta.get("epoch")? {
            Some(bytes) => {
                let format = meta.get("format")?;
                if format.as_deref() != Some(FORMAT.as_bytes()) {
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
        let logs = (
            SledLog {
                db: db.clone(),
                messages: db.open_tree("messages")?,
                heads: db.open_tree("messages-heads")?,
                epoch: epoch.clone(),
            },
            SledLog {
                messages: db.open_tree("presence")?,
                heads: db.open_tree("presence-heads")?,
                db: db.clone(),
                epoch,
            },
        );
        if meta.insert(RUNNING, "1")?.is_some() {
            let channels = logs.0.skip_heads(UNCLEAN_STOP_SKIP)?;
            logs.1.skip_heads(UNCLEAN_STOP_SKIP)?;
            tracing::warn!(
                channels,
                skip = UNCLEAN_STOP_SKIP,
                "the last run did not stop cleanly: serials continue past any it may have lost"
            );
        }
        db.flush()?;
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

/// One stored message, still encoded.
struct Entry<'a> {
    serial: u64,
    timestamp: i64,
    body: &'a [u8],
}

/// A stored record, parsed lazily from its value.
struct Record<'a> {
    count: u64,
    last_serial: u64,
    last_timestamp: i64,
    entries: &'a [u8],
}

impl<'a> Record<'a> {
    fn parse(value: &'a [u8]) -> Option<Record<'a>> {
        (value.len() >= HEADER_LEN).then(|| Record {
            count: u64::from(u32::from_be_bytes([value[0], value[1], value[2], value[3]])),
            last_serial: be_u64(&value[4..12]),
            last_timestamp: be_u64(&value[12..20]) as i64,
            entries: &value[HEADER_LEN..],
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

/// Builds one record value, entry by entry, in serial order.
struct RecordBuilder {
    value: Vec<u8>,
    first: Option<u64>,
    count: u32,
    last_serial: u64,
    last_timestamp: i64,
}

impl RecordBuilder {
    fn new() -> RecordBuilder {
        RecordBuilder {
            value: vec![0; HEADER_LEN],
            first: None,
            count: 0,
            last_serial: 0,
            last_timestamp: 0,
        }
    }

    /// Adds an entry whose message `write_body` appends to the value in place.
    fn push(&mut self, serial: u64, timestamp: i64, write_body: impl FnOnce(&mut Vec<u8>)) {
        self.value.extend_from_slice(&serial.to_be_bytes());
        self.value.extend_from_slice(&timestamp.to_be_bytes());
        let len_at = self.value.len();
        self.value.extend_from_slice(&[0; 4]);
        write_body(&mut self.value);
        let len = (self.value.len() - len_at - 4) as u32;
        self.value[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        self.first.get_or_insert(serial);
        self.count += 1;
        self.last_serial = serial;
        self.last_timestamp = timestamp;
    }

    /// Bytes of entries so far.
    fn entry_bytes(&self) -> usize {
        self.value.len() - HEADER_LEN
    }

    /// The record's first serial (its key) and its value; `None` when it has no entry.
    fn finish(mut self) -> Option<(u64, Vec<u8>)> {
        let first = self.first?;
        self.value[..4].copy_from_slice(&self.count.to_be_bytes());
        self.value[4..12].copy_from_slice(&self.last_serial.to_be_bytes());
        self.value[12..20].copy_from_slice(&self.last_timestamp.to_be_bytes());
        Some((first, self.value))
    }
}

impl SledLog {
    /// Keeps only the entries of the record at `key` that `keep` picks: removes the record,
    /// and writes the kept entries back under their first serial. Returns how many went.
    fn rewrite(
        &self,
        channel: &str,
        key_bytes: &[u8],
        value: &[u8],
        keep: impl Fn(&Entry) -> bool,
    ) -> Result<u64, StoreError> {
        let Some(record) = Record::parse(value) else {
            self.messages.remove(key_bytes)?;
            return Ok(0);
        };
        let (kept, gone): (Vec<Entry>, Vec<Entry>) = record.entries().partition(|e| keep(e));
        if gone.is_empty() {
            return Ok(0);
        }
        let mut batch = sled::Batch::default();
        batch.remove(key_bytes);
        let mut record = RecordBuilder::new();
        for e in &kept {
            record.push(e.serial, e.timestamp, |v| v.extend_from_slice(e.body));
        }
        if let Some((first, value)) = record.finish() {
            batch.insert(key(channel, first), value);
        }
        self.messages.apply_batch(batch)?;
        Ok(gone.len() as u64)
    }

    /// The key of the record that holds `serial`, if any: the last record starting at or
    /// before it.
    fn record_at(&self, channel: &str, serial: u64) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self
            .messages
            .range(key(channel, 0)..=key(channel, serial))
            .next_back()
            .transpose()?
            .map(|(k, _)| k))
    }
}

impl ChannelLog for SledLog {
    fn epoch(&self) -> &str {
        &self.epoch
    }

    fn bounds(&self, channel: &str) -> Result<Option<Bounds>, StoreError> {
        let range = key(channel, 0)..=key(channel, u64::MAX);
        let head = self.heads.get(channel)?.map(|v| be_u64(&v));
        let first = self.messages.range(range.clone()).next().transpose()?;
        let last = self.messages.range(range).next_back().transpose()?;
        Ok(match (first, last, head) {
            (Some((first_key, _)), Some((_, last_value)), head) => {
                let record = Record::parse(&last_value);
                Some(Bounds {
                    first: split_key(&first_key).map_or(0, |(_, s)| s),
                    last: record
                        .as_ref()
                        .map_or(0, |r| r.last_serial)
                        .max(head.unwrap_or(0)),
                    last_timestamp: record.map_or(0, |r| r.last_timestamp),
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
        let mut records = Vec::new();
        let mut record = RecordBuilder::new();
        for (serial, m) in messages {
            record.push(*serial, m.timestamp.unwrap_or(0), |value| {
                // Our own plain data types always serialize (as in protocol::codec).
                rmp_serde::encode::write_named(value, *m).expect("messages serialize to msgpack")
            });
            if record.entry_bytes() >= RECORD_BYTES {
                records.extend(std::mem::replace(&mut record, RecordBuilder::new()).finish());
            }
        }
        records.extend(record.finish());
        if let [(first, value)] = records.as_slice() {
            // The common case, one record: a plain insert. A batch would take sled's
            // tree-wide write lock, which stalls every other channel's append and read.
            self.messages.insert(key(channel, *first), value.as_slice())?;
        } else {
            let mut batch = sled::Batch::default();
            for (first, value) in records {
                batch.insert(key(channel, first), value);
            }
            self.messages.apply_batch(batch)?;
        }
        self.heads.insert(channel, &last.to_be_bytes())?;
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn close_cleanly(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        self.db.open_tree("meta")?.remove(RUNNING)?;
        self.db.flush()?;
        Ok(())
    }

    fn read(&self, channel: &str, query: &Query) -> Result<Vec<(u64, Message)>, StoreError> {
        if query.from > query.to || query.limit == 0 {
            return Ok(Vec::new());
        }
        // Start at the record that holds `from`, which may begin before it.
        let start = self
            .record_at(channel, query.from)?
            .map_or_else(|| key(channel, query.from), |k| k.to_vec());
        let range = self.messages.range(start..=key(channel, query.to));
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
            let record = Record::parse(&v).ok_or_else(corrupt)?;
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
        let mut batch = sled::Batch::default();
        let mut straddling = None;
        for item in self
            .messages
            .range(key(channel, 0)..key(channel, first_kept))
        {
            let (k, v) = item?;
            match Record::parse(&v) {
                Some(r) if r.last_serial >= first_kept => straddling = Some((k, v)),
                _ => batch.remove(k),
            }
        }
        self.messages.apply_batch(batch)?;
        if let Some((k, v)) = straddling {
            self.rewrite(channel, &k, &v, |e| e.serial >= first_kept)?;
        }
        Ok(())
    }

    fn retain_newest(&self, channel: &str, keep: u64) -> Result<Retained, StoreError> {
        let mut held = 0;
        let mut first = None;
        let mut cut = None;
        for item in self
            .messages
            .range(key(channel, 0)..=key(channel, u64::MAX))
            .rev()
        {
            let (k, v) = item?;
            let Some(record) = Record::parse(&v) else {
                continue;
            };
            if held + record.count >= keep {
                // The oldest message kept is in this record.
                let need = (keep - held) as usize;
                let serials: Vec<u64> = record.entries().map(|e| e.serial).collect();
                let first_kept = serials[serials.len().saturating_sub(need)..]
                    .first()
                    .copied();
                held += need as u64;
                first = first_kept;
                cut = first_kept;
                break;
            }
            held += record.count;
            first = split_key(&k).map(|(_, s)| s);
        }
        if let Some(first_kept) = cut {
            self.trim_before(channel, first_kept)?;
        }
        Ok(Retained { first, held })
    }

    fn truncate_after(&self, channel: &str, last_kept: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for item in self
            .messages
            .range(key(channel, last_kept.saturating_add(1))..=key(channel, u64::MAX))
        {
            batch.remove(item?.0);
        }
        self.messages.apply_batch(batch)?;
        if let Some(k) = self.record_at(channel, last_kept)? {
            if let Some(v) = self.messages.get(&k)? {
                self.rewrite(channel, &k, &v, |e| e.serial <= last_kept)?;
            }
        }
        Ok(())
    }

    fn expire_before(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        let mut removed = 0;
        let mut cursor: Bound<Vec<u8>> = Bound::Unbounded;
        loop {
            let next = self
                .messages
                .range::<Vec<u8>, _>((cursor.clone(), Bound::Unbounded))
                .next()
                .transpose()?;
            let Some((k, v)) = next else { break };
            let Some((name, _)) = split_key(&k) else {
                cursor = Bound::Excluded(k.to_vec());
                continue;
            };
            let name_text = String::from_utf8_lossy(name).into_owned();
            let record = Record::parse(&v);
            if record
                .as_ref()
                .is_some_and(|r| r.last_timestamp < cutoff_ms)
            {
                removed += record.map_or(0, |r| r.entries().count() as u64);
                self.messages.remove(&k)?;
                cursor = Bound::Excluded(k.to_vec());
                continue;
            }
            // A record cut by the cutoff keeps its newer part; the rest of this channel is
            // newer still, so jump past its last possible key.
            removed += self.rewrite(&name_text, &k, &v, |e| e.timestamp >= cutoff_ms)?;
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

    /// Opens the log in `dir` again; `open_logs` waits for the lock the dropped one may still
    /// hold for a moment.
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
            // Through open_logs, which waits for the lock, then the raw database.
            let db = reopen(dir.path()).db().clone();
            db.open_tree("meta").unwrap().remove("format").unwrap();
            db.flush().unwrap();
        }
        let error = SledLog::open(dir.path(), 1 << 20).err().expect("refused");
        assert!(error.to_string().contains("older layout"), "{error}");
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
        assert!(log.messages.len() > 1, "160 KB in more than one record");
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
}
