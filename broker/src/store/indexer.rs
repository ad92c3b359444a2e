//! The index changes that are already in the segments (the write-ahead log) but not yet in
//! sled. An append queues its index entry here instead of inserting it, so the sequencer
//! fans a message out without waiting for sled: two inserts per append took about a tenth of
//! the broker's CPU in chat-rooms, all of it on the path to delivery, and an insert could
//! stall behind sled's flush at each checkpoint.
//!
//! Sled is only a cache of the segments' tagged frames, so nothing is lost if the queue is:
//! opening after an unclean stop replays the frames since the last checkpoint. What must hold
//! is that nobody sees sled without the queue's changes:
//! - a read, a removal and a rewrite apply the queue first ([`Indexer::catch_up`]);
//! - the checkpoint applies it after reading its position and before flushing sled, so the
//!   position it records never covers a change sled lacks;
//! - the `log-index` thread applies it a moment after it fills, so it stays short.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::StoreError;

/// How long the thread lets changes gather before it applies them: fewer wake-ups, and a
/// reader that catches up meanwhile has little to do.
const LINGER: Duration = Duration::from_millis(2);
/// A queue this long is applied by the appender itself: the thread is not keeping up.
const MOST_QUEUED: usize = 65_536;
/// How long the thread waits before trying again after sled refused a change.
const RETRY: Duration = Duration::from_millis(100);

/// One queued change to one of the logs' trees (a log is an index in the trees array).
pub(super) enum Change {
    /// Index a record: its key and index entry.
    Insert {
        log: usize,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// The channel's newest serial is now `last`.
    Head {
        log: usize,
        channel: Vec<u8>,
        last: u64,
    },
}

/// The queue of one database, shared by its logs; applies it in a thread of its own when
/// started with [`Indexer::start`].
pub(super) struct Indexer {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    /// Each log's index tree and heads tree.
    trees: Vec<(sled::Tree, sled::Tree)>,
    queue: Mutex<Queue>,
    /// The queue became non-empty, or the thread should stop.
    woken: Condvar,
    /// Held while applying, so changes reach sled in the order they were queued.
    applying: Mutex<()>,
}

struct Queue {
    changes: Vec<Change>,
    stopping: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Indexer {
    /// A queue for the logs whose (index, heads) trees are `trees`, applied only by
    /// [`Indexer::catch_up`] calls (tests, and the time before [`Indexer::start`]).
    pub(super) fn new(trees: Vec<(sled::Tree, sled::Tree)>) -> Indexer {
        Indexer {
            shared: Arc::new(Shared {
                trees,
                queue: Mutex::new(Queue {
                    changes: Vec::new(),
                    stopping: false,
                }),
                woken: Condvar::new(),
                applying: Mutex::new(()),
            }),
            thread: Mutex::new(None),
        }
    }

    /// From now on a `log-index` thread applies the queue too, until this is dropped.
    pub(super) fn start(&self) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        let thread = std::thread::Builder::new()
            .name("log-index".into())
            .spawn(move || run(&shared))
            .map_err(|e| StoreError::Engine(format!("starting the index thread: {e}")))?;
        *lock(&self.thread) = Some(thread);
        Ok(())
    }

    /// Queues changes whose frames are written. Call it under the gate, so the checkpoint
    /// cannot read a position past the frames without finding their changes queued. Returns
    /// true when the queue is so long that the caller should [`Indexer::catch_up`] itself
    /// (after leaving the gate).
    pub(super) fn queue(&self, changes: impl IntoIterator<Item = Change>) -> bool {
        let mut queue = lock(&self.shared.queue);
        let was_empty = queue.changes.is_empty();
        queue.changes.extend(changes);
        if was_empty {
            self.shared.woken.notify_one();
        }
        queue.changes.len() >= MOST_QUEUED
    }

    /// Applies every change queued so far. On an error the changes stay queued, in order, to
    /// be applied again (inserting the same entry twice is harmless).
    pub(super) fn catch_up(&self) -> Result<(), StoreError> {
        catch_up(&self.shared)
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        lock(&self.shared.queue).stopping = true;
        self.shared.woken.notify_all();
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

fn catch_up(shared: &Shared) -> Result<(), StoreError> {
    let _applying = lock(&shared.applying);
    let changes = std::mem::take(&mut lock(&shared.queue).changes);
    if changes.is_empty() {
        return Ok(());
    }
    let applied = apply(&shared.trees, &changes);
    if applied.is_err() {
        let mut queue = lock(&shared.queue);
        let later = std::mem::replace(&mut queue.changes, changes);
        queue.changes.extend(later);
    }
    applied
}

/// Inserts the entries in order, and each channel's newest head once.
fn apply(trees: &[(sled::Tree, sled::Tree)], changes: &[Change]) -> Result<(), StoreError> {
    let mut heads: HashMap<(usize, &[u8]), u64> = HashMap::new();
    for change in changes {
        match change {
            Change::Insert { log, key, value } => {
                trees[*log].0.insert(key.as_slice(), value.as_slice())?;
            }
            Change::Head { log, channel, last } => {
                let head = heads.entry((*log, channel.as_slice())).or_insert(*last);
                *head = (*head).max(*last);
            }
        }
    }
    for ((log, channel), last) in heads {
        trees[log].1.insert(channel, &last.to_be_bytes())?;
    }
    Ok(())
}

fn run(shared: &Shared) {
    loop {
        {
            let mut queue = lock(&shared.queue);
            while queue.changes.is_empty() && !queue.stopping {
                queue = shared.woken.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
            if queue.stopping {
                // What is left is applied by the clean stop's checkpoint, or replayed.
                return;
            }
        }
        std::thread::sleep(LINGER);
        if let Err(e) = catch_up(shared) {
            tracing::warn!(error = %e, "applying queued log index changes failed; retrying");
            std::thread::sleep(RETRY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trees() -> (sled::Db, Vec<(sled::Tree, sled::Tree)>) {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let trees = vec![(db.open_tree("i").unwrap(), db.open_tree("h").unwrap())];
        (db, trees)
    }

    fn insert(key: &str, value: &str) -> Change {
        Change::Insert {
            log: 0,
            key: key.into(),
            value: value.into(),
        }
    }

    fn head(last: u64) -> Change {
        Change::Head {
            log: 0,
            channel: b"c".to_vec(),
            last,
        }
    }

    #[test]
    fn queued_changes_reach_sled_only_when_applied_and_in_order() {
        let (_db, trees) = trees();
        let indexer = Indexer::new(trees.clone());
        indexer.queue([insert("k", "first"), head(3), head(7), head(5)]);
        indexer.queue([insert("k", "second")]);
        assert!(trees[0].0.get("k").unwrap().is_none());
        indexer.catch_up().unwrap();
        assert_eq!(trees[0].0.get("k").unwrap().unwrap(), "second".as_bytes());
        let head = trees[0].1.get("c").unwrap().unwrap();
        assert_eq!(head.as_ref(), 7u64.to_be_bytes());
    }

    #[test]
    fn the_thread_applies_the_queue_without_being_asked() {
        let (_db, trees) = trees();
        let indexer = Indexer::new(trees.clone());
        indexer.start().unwrap();
        let mut watch = trees[0].0.watch_prefix("k");
        indexer.queue([insert("k", "v")]);
        // The subscriber's next event is the thread's insert: no catch_up was called.
        let event = watch.next().unwrap();
        assert!(matches!(event, sled::Event::Insert { .. }));
        assert_eq!(trees[0].0.get("k").unwrap().unwrap(), "v".as_bytes());
    }

    #[test]
    fn a_long_queue_asks_the_appender_to_apply_it() {
        let (_db, trees) = trees();
        let indexer = Indexer::new(trees);
        let long = (0..MOST_QUEUED - 1).map(|i| insert(&i.to_string(), "v"));
        assert!(!indexer.queue(long));
        assert!(indexer.queue([insert("last", "v")]));
        indexer.catch_up().unwrap();
        assert!(!indexer.queue([insert("next", "v")]));
    }
}
