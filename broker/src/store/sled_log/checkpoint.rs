//! The checkpoint thread. Once a second it makes every index change logged so far durable in
//! sled and records the position up to which it is, where replay after an unclean stop
//! starts; a segment is deleted only once a durable checkpoint lies past it. What it records
//! of its runs is what `ChannelLog::checkpoint_health` reports.

use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::store::indexer::Indexer;
use crate::store::segments::{Position, Segments};
use crate::store::StoreError;

/// The meta key of the durable checkpoint: the [`Position`] before which every index change
/// is in sled and flushed.
pub(super) const CHECKPOINT: &str = "checkpoint";
/// How often the checkpoint thread flushes sled.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The checkpoint thread: once a second it reads the segments' position (under the gate),
/// syncs the segments, flushes sled, and records that position as durable; then segments
/// older than it that nothing points into may go.
pub(super) struct Checkpoints {
    pub(super) stop: Option<mpsc::Sender<()>>,
    pub(super) thread: Option<JoinHandle<()>>,
    pub(super) health: Arc<Mutex<Health>>,
}

/// What [`CheckpointHealth`] is made from.
pub(super) struct Health {
    pub(super) last_success: Instant,
    pub(super) last_duration: Duration,
    pub(super) failures_in_a_row: u64,
}

impl Health {
    pub(super) fn new(last_duration: Duration) -> Health {
        Health {
            last_success: Instant::now(),
            last_duration,
            failures_in_a_row: 0,
        }
    }
}

impl Checkpoints {
    pub(super) fn start(
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
pub(super) fn checkpoint(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sled_log::record::{be_u64, key};
    use crate::store::sled_log::tests::{message, query, reopen};
    use crate::store::sled_log::SledLog;
    use crate::store::{ChannelLog, Database, Direction};

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
}
