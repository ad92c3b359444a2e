//! Older layouts of the log. A log in `records-2`, the layout before the write-ahead log, opens
//! as it is; one in `records-1`, whole records as sled values, is converted to segments at
//! opening; anything older is refused rather than misread.

use std::path::Path;

use super::record::{index_value, split_key};
use super::wal::Op;
use super::{SledLog, FORMAT, MESSAGE_INDEX, PRESENCE_INDEX};
use crate::store::segments::tagged_frame;
use crate::store::{ChannelLog, StoreError};

/// The layout before, the same without the write-ahead log: sled was flushed at every sync,
/// so there is nothing to replay, and opening only records the new format.
const FORMAT_UNLOGGED: &str = "records-2";
/// The layout before that, whole records as sled values, which opening converts.
const FORMAT_RECORDS_IN_SLED: &str = "records-1";
/// The trees that held whole records before, each with the index tree that replaces it.
pub(super) const OLD_TREES: [(&str, &str); 2] =
    [("messages", MESSAGE_INDEX), ("presence", PRESENCE_INDEX)];

/// Whether the log `meta` describes is in the `records-1` layout, which opening converts; an
/// error for a layout older still, whose records would be misread.
pub(super) fn needs_conversion(meta: &sled::Tree, dir: &Path) -> Result<bool, StoreError> {
    let format = meta.get("format")?;
    let convert = format.as_deref() == Some(FORMAT_RECORDS_IN_SLED.as_bytes());
    let known = [FORMAT, FORMAT_UNLOGGED].map(str::as_bytes);
    if !convert && !format.is_some_and(|f| known.contains(&f.as_ref())) {
        return Err(StoreError::Engine(format!(
            "{} holds a message log in an older layout than {FORMAT}; \
             move it aside to start afresh",
            dir.display()
        )));
    }
    Ok(convert)
}

/// Converts both logs of a `records-1` database: moves their records into segments, records
/// the new format, then drops the old trees.
pub(super) fn convert(
    logs: &(SledLog, SledLog),
    db: &sled::Db,
    meta: &sled::Tree,
) -> Result<(), StoreError> {
    logs.0.convert_from(&db.open_tree(OLD_TREES[0].0)?)?;
    logs.1.convert_from(&db.open_tree(OLD_TREES[1].0)?)?;
    logs.0.sync()?;
    meta.insert("format", FORMAT)?;
    db.flush()?;
    for (old, _) in OLD_TREES {
        db.drop_tree(old)?;
    }
    tracing::info!("converted the message log to {FORMAT} (records in segment files)");
    Ok(())
}

impl SledLog {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sled_log::checkpoint::CHECKPOINT;
    use crate::store::sled_log::record::{key, RecordBuilder};
    use crate::store::sled_log::tests::{message, query, reopen};
    use crate::store::sled_log::RUNNING;
    use crate::store::Direction;

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
