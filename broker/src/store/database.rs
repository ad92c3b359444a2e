//! The data directory's one sled database (`<data_dir>/log`). It holds the channel logs'
//! index trees and, beside them, the trees of the auth plugin's user table, the development
//! users and the token revocations, all sharing one file lock, one page cache and the log's
//! once-a-second flush. [`Database`] opens it once and hands each owner of trees its own
//! handle, so nobody reaches the database through the message log. It opens no tree itself.

use std::path::{Path, PathBuf};

use super::StoreError;

/// How long opening waits for another process (or a just-dropped database) to release the
/// data directory's lock.
const LOCK_WAIT_MS: u64 = 2000;

/// The opened database of one data directory.
pub struct Database {
    db: sled::Db,
    data_dir: PathBuf,
}

impl Database {
    /// Opens (or creates) the database in `data_dir/log` with a page cache of `cache_bytes`.
    /// sled's own periodic flush is off: the log's checkpoint thread flushes the whole
    /// database, and other trees' writers flush when they must.
    pub fn open(data_dir: &Path, cache_bytes: u64) -> Result<Database, StoreError> {
        let config = sled::Config::new()
            .path(data_dir.join("log"))
            .cache_capacity(cache_bytes)
            .flush_every_ms(None);
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
        Ok(Database {
            db,
            data_dir: data_dir.to_owned(),
        })
    }

    /// A handle on the database for an owner of its own trees (the logs, the user table, the
    /// revocations). A cheap clone: the database closes when the last handle is dropped.
    pub fn handle(&self) -> sled::Db {
        self.db.clone()
    }

    /// The data directory the database belongs to.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}
