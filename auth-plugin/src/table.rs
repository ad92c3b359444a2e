//! The key-value tables the user table is built on. [`crate::UserStore`] needs five of them
//! (users, linked `sub`s, usernames, and the two ban tombstone tables) and only these
//! operations: read, write, delete, compare-and-swap, and a scan in key order. One broker keeps
//! them in its sled database ([`SledTable`]); in cluster mode the broker hands in tables on a
//! NATS JetStream KV bucket, so every node reads and writes one user table and a username is
//! given out once across the cluster.
//!
//! The calls are futures so that a table may live across the network; boxed, so that the
//! store holds tables of any kind behind one type.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::users::UserError;

/// What a table operation returns.
pub type TableFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, UserError>> + Send + 'a>>;

/// What a scan hands each row to: the key and the value; it returns false to stop the scan.
pub type Visitor<'a> = &'a mut (dyn FnMut(&str, &[u8]) -> bool + Send);

/// A table of string keys and byte values with compare-and-swap.
pub trait Table: Send + Sync {
    /// The value under `key`.
    fn get<'a>(&'a self, key: &'a str) -> TableFuture<'a, Option<Vec<u8>>>;

    /// Writes `value` under `key`, whatever was there.
    fn insert<'a>(&'a self, key: &'a str, value: Vec<u8>) -> TableFuture<'a, ()>;

    /// Deletes `key`, if it is there.
    fn remove<'a>(&'a self, key: &'a str) -> TableFuture<'a, ()>;

    /// Sets `key` to `new` (`None` deletes it) only while it holds `old` (`None`: absent).
    /// True when it did; false when the key held something else.
    fn swap<'a>(
        &'a self,
        key: &'a str,
        old: Option<&'a [u8]>,
        new: Option<Vec<u8>>,
    ) -> TableFuture<'a, bool>;

    /// Hands `visit` the rows whose keys sort after `after` (all of them when `None`), in key
    /// order, until it returns false or the rows run out.
    fn scan<'a>(&'a self, after: Option<&'a str>, visit: Visitor<'a>) -> TableFuture<'a, ()>;

    /// Makes the writes so far durable (a no-op where every write already is).
    fn flush(&self) -> TableFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Opens the table of a given name (`users`, `subs`, `usernames`, `banned`, `banned-subs`).
pub type OpenTable<'a> = &'a dyn Fn(&str) -> Result<Arc<dyn Table>, UserError>;

/// A table in a sled tree: the single-node user table.
pub struct SledTable(sled::Tree);

impl SledTable {
    /// The table in `db`'s tree `name`.
    pub fn open(db: &sled::Db, name: &str) -> Result<SledTable, UserError> {
        Ok(SledTable(db.open_tree(name)?))
    }
}

fn ready<'a, T: Send + 'a>(result: Result<T, UserError>) -> TableFuture<'a, T> {
    Box::pin(std::future::ready(result))
}

impl Table for SledTable {
    fn get<'a>(&'a self, key: &'a str) -> TableFuture<'a, Option<Vec<u8>>> {
        ready(
            self.0
                .get(key)
                .map(|v| v.map(|v| v.to_vec()))
                .map_err(UserError::from),
        )
    }

    fn insert<'a>(&'a self, key: &'a str, value: Vec<u8>) -> TableFuture<'a, ()> {
        ready(
            self.0
                .insert(key, value)
                .map(|_| ())
                .map_err(UserError::from),
        )
    }

    fn remove<'a>(&'a self, key: &'a str) -> TableFuture<'a, ()> {
        ready(self.0.remove(key).map(|_| ()).map_err(UserError::from))
    }

    fn swap<'a>(
        &'a self,
        key: &'a str,
        old: Option<&'a [u8]>,
        new: Option<Vec<u8>>,
    ) -> TableFuture<'a, bool> {
        ready(
            self.0
                .compare_and_swap(key, old, new)
                .map(|outcome| outcome.is_ok())
                .map_err(UserError::from),
        )
    }

    fn scan<'a>(&'a self, after: Option<&'a str>, visit: Visitor<'a>) -> TableFuture<'a, ()> {
        let start = match after {
            Some(a) => std::ops::Bound::Excluded(a.as_bytes().to_vec()),
            None => std::ops::Bound::Unbounded,
        };
        let scanned = || -> Result<(), UserError> {
            for row in self
                .0
                .range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded))
            {
                let (key, value) = row?;
                if !visit(&String::from_utf8_lossy(&key), &value) {
                    break;
                }
            }
            Ok(())
        };
        ready(scanned())
    }

    fn flush(&self) -> TableFuture<'_, ()> {
        ready(self.0.flush().map(|_| ()).map_err(UserError::from))
    }
}
