//! The segments as the write-ahead log of the index. Every change to an index entry is first
//! written as a tagged frame ([`Op`]): a record appended, a range of records removed, a record
//! replaced by its kept part. The edits here write an op's frame and make its change in sled
//! under the gate. An ACK waits only for the segments' `fdatasync`; sled catches up at each
//! checkpoint (see `checkpoint`). After an unclean stop, opening replays every frame from the
//! last checkpoint on, so nothing acknowledged is lost with the index's unflushed tail.
//! Replaying is idempotent (each op sets or removes keys outright); then the index is checked
//! against the files' lengths (`count_live`).

use std::collections::HashMap;
use std::path::Path;

use super::record::{
    be_u64, index_value, key, split_key, Entry, Finished, Header, Index, Record, RecordBuilder,
    HEADER_LEN,
};
use super::{LogId, SledLog, MESSAGE_INDEX, PRESENCE_INDEX};

/// Most index entries one removal op takes out under the gate (see
/// [`SledLog::remove_oldest`]).
const REMOVAL_CHUNK: usize = 64;
use crate::store::segments::{tagged_frame, Position, Segments, FRAME_HEADER};
use crate::store::StoreError;

/// What a frame does to the index, as its tag says: the op's code, the log, its serials
/// (big-endian u64s), then the channel name to the end of the tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    /// The frame's record is indexed under its first serial.
    Append,
    /// The records keyed `from..=to` are removed; the frame has no record.
    Remove { from: u64, to: u64 },
    /// The record keyed `old` is removed and the frame's record indexed instead.
    Replace { old: u64 },
}

impl Op {
    pub(super) fn tag(self, log: LogId, channel: &str) -> Vec<u8> {
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

impl SledLog {
    /// Writes a finished record to the segments and returns its index key and value.
    pub(super) fn store(
        &self,
        channel: &str,
        mut record: Finished,
    ) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        let at = self.segments.write(&mut record.frame, true)?;
        Ok((
            key(channel, record.first),
            index_value(&record.frame, record.record_at, at),
        ))
    }

    /// Writes the [`Op::Remove`] frame of the entries keyed `from..=to`; call it under the
    /// gate, before removing them from sled.
    pub(super) fn log_removal(&self, channel: &str, from: u64, to: u64) -> Result<(), StoreError> {
        let tag = Op::Remove { from, to }.tag(self.log, channel);
        let (mut frame, _) = tagged_frame(&tag, 0)?;
        self.segments.write(&mut frame, false)?;
        Ok(())
    }

    /// Shares the gate: from an op's frame until its change is in sled.
    pub(super) fn gate(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes the index entries keyed `from..=to` of `channel` (`keys`, with the segment
    /// each points into) in one batch, logged as one [`Op::Remove`], then releases their
    /// segments.
    pub(super) fn remove_all(
        &self,
        channel: &str,
        (from, to): (u64, u64),
        keys: &[(sled::IVec, u64)],
    ) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (k, _) in keys {
            batch.remove(k);
        }
        {
            let _gate = self.gate();
            self.log_removal(channel, from, to)?;
            self.index.apply_batch(batch)?;
        }
        for (_, segment) in keys {
            self.segments.release(*segment);
        }
        Ok(())
    }

    /// Removes `keys`, every index entry of `channel` at or below serial `to` in ascending
    /// order, as [`SledLog::remove_all`] does, but at most [`REMOVAL_CHUNK`] per op. Each op
    /// removes everything from 0 up to just before the next chunk's first key, so the ops
    /// replay to the same result, and a stop between two leaves only the oldest gone.
    ///
    /// Holding the gate for a whole trim (a thousand removals) made the checkpoint thread,
    /// which waits for the gate, hold up every other channel's append behind it.
    pub(super) fn remove_oldest(
        &self,
        channel: &str,
        to: u64,
        keys: &[(sled::IVec, u64)],
    ) -> Result<(), StoreError> {
        for (i, chunk) in keys.chunks(REMOVAL_CHUNK).enumerate() {
            let next = keys.get((i + 1) * REMOVAL_CHUNK);
            let chunk_to = next
                .and_then(|(k, _)| split_key(k))
                .map_or(to, |(_, serial)| serial.saturating_sub(1).min(to));
            self.remove_all(channel, (0, chunk_to), chunk)?;
        }
        Ok(())
    }

    /// Keeps only the entries of the record at `key_bytes` that `keep` picks: removes its
    /// index entry and indexes the kept entries as a new record under their first serial.
    /// Returns how many went.
    pub(super) fn rewrite(
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
}

/// Redoes every index change logged from `from` on (after an unclean stop). Returns how many
/// frames it applied.
pub(super) fn replay(
    db: &sled::Db,
    segments_dir: &Path,
    from: Position,
) -> Result<u64, StoreError> {
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

/// Counts the index entries per segment over both logs, and removes entries whose record lies
/// past the end of its segment or in a segment that is gone: after a power loss, records
/// that were never synced (so never acknowledged) whose index entry sled kept.
pub(super) fn count_live(
    db: &sled::Db,
    segments_dir: &Path,
) -> Result<HashMap<u64, u64>, StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::segments::PREALLOCATE;
    use crate::store::sled_log::tests::{message, query, reopen};
    use crate::store::{ChannelLog, Database, Direction};

    /// A trim of more records than one removal op takes is logged as several ops; replayed
    /// after an unclean stop they remove exactly what the trim did.
    #[test]
    fn a_trim_in_several_removal_ops_replays_to_the_same_log() {
        let dir = tempfile::tempdir().unwrap();
        let records = 3 * REMOVAL_CHUNK as u64 + 10;
        let first_kept = 2 * REMOVAL_CHUNK as u64 + 5;
        {
            let log = SledLog::open(dir.path(), 1 << 20).unwrap();
            for serial in 1..=records {
                log.append("t", &[(serial, &message(serial as i64, "m"))])
                    .unwrap();
            }
            log.trim_before("t", first_kept).unwrap();
            log.sync().unwrap();
            let kept = log.read("t", &query(Direction::Forwards, 1000)).unwrap();
            assert_eq!(kept.first().map(|(s, _)| *s), Some(first_kept));
        }
        let log = reopen(dir.path());
        let kept = log.read("t", &query(Direction::Forwards, 1000)).unwrap();
        let serials: Vec<u64> = kept.iter().map(|(s, _)| *s).collect();
        assert_eq!(serials, (first_kept..=records).collect::<Vec<_>>());
        assert_eq!(log.bounds("t").unwrap().unwrap().first, first_kept);
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
}
