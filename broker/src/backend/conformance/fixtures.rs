//! The conformance suite run on the memory backend and on the local backend over a real
//! sled directory, each check as its own test.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protocol::Message;

use super::*;
use crate::backend::local::LocalBackend;
use crate::backend::memory::MemoryBackend;
use crate::metrics::Metrics;
use crate::store::commit::Committer;
use crate::store::sled_log::SledLog;
use crate::store::{Bounds, ChannelLog, Retained, StoreError};

struct Memory(Arc<MemoryBackend>);

impl Memory {
    fn new() -> Self {
        Memory(Arc::new(MemoryBackend::new("mem", KEEP as usize)))
    }
}

impl Fixture for Memory {
    fn backend(&self) -> Arc<dyn Backend> {
        self.0.clone()
    }
    fn fail_appends(&self, failing: bool) {
        self.0.fail_appends(failing);
    }
}

/// The local backend on a real sled directory with real group commit (fsync on).
struct Local {
    backend: Arc<LocalBackend>,
    failing: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl Local {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let failing = Arc::new(AtomicBool::new(false));
        let (messages, presence) = SledLog::open_logs(dir.path(), 1 << 20).unwrap();
        let log: Arc<dyn ChannelLog> = Arc::new(Faulty {
            log: messages,
            failing: failing.clone(),
        });
        let synced = log.clone();
        let (committer, _threads) = Committer::start(
            move || synced.sync(),
            Some(Duration::ZERO),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let presence = Arc::new(Faulty {
            log: presence,
            failing: failing.clone(),
        });
        let backend = LocalBackend::new(log, presence, committer, false, KEEP, Default::default());
        Local {
            backend: Arc::new(backend),
            failing,
            _dir: dir,
        }
    }
}

impl Fixture for Local {
    fn backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }
    fn fail_appends(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }
}

/// The real log, whose appends fail while `failing` is set (a full disk, say).
struct Faulty {
    log: SledLog,
    failing: Arc<AtomicBool>,
}

impl ChannelLog for Faulty {
    fn epoch(&self) -> &str {
        self.log.epoch()
    }
    fn bounds(&self, channel: &str) -> Result<Option<Bounds>, StoreError> {
        self.log.bounds(channel)
    }
    fn append(&self, channel: &str, messages: &[(u64, &Message)]) -> Result<(), StoreError> {
        if self.failing.load(Ordering::Relaxed) {
            return Err(StoreError::Engine("the disk is full".to_owned()));
        }
        self.log.append(channel, messages)
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.log.sync()
    }
    fn read(&self, channel: &str, query: &Query) -> Result<Vec<(u64, Message)>, StoreError> {
        self.log.read(channel, query)
    }
    fn trim_before(&self, channel: &str, first_kept: u64) -> Result<(), StoreError> {
        self.log.trim_before(channel, first_kept)
    }
    fn retain_newest(&self, channel: &str, keep: u64) -> Result<Retained, StoreError> {
        self.log.retain_newest(channel, keep)
    }
    fn drop_oldest(&self, channel: &str, count: u64) -> Result<Option<u64>, StoreError> {
        self.log.drop_oldest(channel, count)
    }
    fn truncate_after(&self, channel: &str, last_kept: u64) -> Result<(), StoreError> {
        self.log.truncate_after(channel, last_kept)
    }
    fn expire_before(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        self.log.expire_before(cutoff_ms)
    }
    fn close_cleanly(&self) -> Result<(), StoreError> {
        self.log.close_cleanly()
    }
}

/// Runs every check for one backend, as its own test.
macro_rules! conformance {
    ($backend:ident, $fixture:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test]
            async fn messages_come_back_in_order_with_increasing_serials() {
                super::messages_come_back_in_order_with_increasing_serials($fixture).await;
            }

            #[tokio::test]
            async fn an_app_id_is_stored_once_and_answered_with_its_first_serial() {
                super::an_app_id_is_stored_once_and_answered_with_its_first_serial($fixture).await;
            }

            #[tokio::test]
            async fn history_pages_both_ways() {
                super::history_pages_both_ways($fixture).await;
            }

            #[tokio::test]
            async fn a_reopened_stream_resumes_where_it_was() {
                super::a_reopened_stream_resumes_where_it_was($fixture).await;
            }

            #[tokio::test]
            async fn channels_are_independent() {
                super::channels_are_independent($fixture).await;
            }

            #[tokio::test]
            async fn presence_history_is_kept_apart_in_order_and_to_retention() {
                super::presence_history_is_kept_apart_in_order_and_to_retention($fixture).await;
            }

            #[tokio::test]
            async fn the_member_set_follows_presence_changes() {
                super::the_member_set_follows_presence_changes($fixture).await;
            }

            #[tokio::test]
            async fn a_failing_store_keeps_presence_changes() {
                super::a_failing_store_keeps_presence_changes($fixture).await;
            }

            #[tokio::test]
            async fn a_failed_append_stores_nothing_and_reuses_no_serial() {
                super::a_failed_append_stores_nothing_and_reuses_no_serial($fixture).await;
            }
        }
    };
}

conformance!(memory, Memory::new());
conformance!(local, Local::new());
