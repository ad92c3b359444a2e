//! The Auth0 user table of a cluster: the plugin's five tables ([`auth_plugin::table`]) as
//! key ranges of the KV bucket `<PREFIX>_USERS`, so every node reads and writes one table.
//! A table's rows are the keys `auth.<table>.<hex of the row key>`: hex keeps any `sub` a
//! valid KV key and sorts as the row keys do. Compare-and-swap is JetStream's: the row's
//! value is read with its revision, and the write expects that revision, so of two nodes
//! racing for one username only one gets it.
//!
//! A scan reads the last value of every row of the table through one ordered consumer, then
//! hands them over in key order: listing users costs one pass over the table, which the
//! admin routes can afford.

use async_nats::jetstream::{self, consumer, kv};
use auth_plugin::table::{Table, TableFuture, Visitor};
use auth_plugin::users::UserError;
use futures_util::StreamExt;

/// One table of the user table, in the users bucket.
pub struct KvTable {
    bucket: kv::Store,
    /// `auth.<table>.`
    prefix: String,
}

/// Where the ban tombstones of deleted users are (`banned` rows: user id → the user).
pub const BANNED: &str = "auth.banned.";

/// The header JetStream KV marks a delete or purge with.
const KV_OPERATION: &str = "KV-Operation";

fn store_error(e: impl std::fmt::Display) -> UserError {
    UserError::Store(e.to_string())
}

impl KvTable {
    /// The table `name` in `bucket`.
    pub fn new(bucket: kv::Store, name: &str) -> KvTable {
        KvTable {
            bucket,
            prefix: format!("auth.{name}."),
        }
    }

    fn key(&self, row: &str) -> String {
        bucket_key(&self.prefix, row)
    }

    /// The row's value and the revision a conditional write must expect (0: never written).
    async fn current(&self, key: &str) -> Result<(Option<bytes::Bytes>, u64), UserError> {
        Ok(match self.bucket.entry(key).await.map_err(store_error)? {
            Some(entry) if entry.operation == kv::Operation::Put => {
                (Some(entry.value), entry.revision)
            }
            Some(entry) => (None, entry.revision),
            None => (None, 0),
        })
    }

    /// Every live row of the table, in key order.
    async fn rows(&self) -> Result<Vec<(String, bytes::Bytes)>, UserError> {
        let consumer = self
            .bucket
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("{}{}>", self.bucket.prefix, self.prefix),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(store_error)?;
        let mut pending = consumer.cached_info().num_pending;
        let mut messages = consumer.messages().await.map_err(store_error)?;
        let mut rows = Vec::new();
        while pending > 0 {
            let Some(message) = messages.next().await else {
                return Err(store_error("the table scan ended early"));
            };
            let message: jetstream::Message = message.map_err(store_error)?;
            pending = message.info().map_err(store_error)?.pending;
            let deleted = message
                .headers
                .as_ref()
                .is_some_and(|h| h.get(KV_OPERATION).is_some());
            let key = message.subject.strip_prefix(self.bucket.prefix.as_str());
            if let (false, Some(row)) = (deleted, key.and_then(|k| row_key(&self.prefix, k))) {
                rows.push((row, message.payload.clone()));
            }
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(rows)
    }
}

/// The bucket key of `row` in the table under `prefix`.
fn bucket_key(prefix: &str, row: &str) -> String {
    let hex: String = row.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

/// The row key of a bucket key of the table under `prefix`; `None` for another table's.
pub fn row_key(prefix: &str, key: &str) -> Option<String> {
    let hex = key.strip_prefix(prefix)?;
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

impl Table for KvTable {
    fn get<'a>(&'a self, row: &'a str) -> TableFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let (value, _) = self.current(&self.key(row)).await?;
            Ok(value.map(|v| v.to_vec()))
        })
    }

    fn insert<'a>(&'a self, row: &'a str, value: Vec<u8>) -> TableFuture<'a, ()> {
        Box::pin(async move {
            self.bucket
                .put(self.key(row), value.into())
                .await
                .map(|_| ())
                .map_err(store_error)
        })
    }

    fn remove<'a>(&'a self, row: &'a str) -> TableFuture<'a, ()> {
        Box::pin(async move {
            let key = self.key(row);
            if self.current(&key).await?.0.is_none() {
                return Ok(());
            }
            self.bucket.delete(key).await.map_err(store_error)
        })
    }

    fn swap<'a>(
        &'a self,
        row: &'a str,
        old: Option<&'a [u8]>,
        new: Option<Vec<u8>>,
    ) -> TableFuture<'a, bool> {
        Box::pin(async move {
            let key = self.key(row);
            let (value, revision) = self.current(&key).await?;
            if value.as_deref() != old {
                return Ok(false);
            }
            let written = match new {
                Some(new) => self
                    .bucket
                    .update(&key, new.into(), revision)
                    .await
                    .map(|_| ()),
                None if value.is_none() => return Ok(true),
                None => {
                    self.bucket
                        .delete_expect_revision(&key, Some(revision))
                        .await
                }
            };
            match written {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                Err(e) => Err(store_error(e)),
            }
        })
    }

    fn scan<'a>(&'a self, after: Option<&'a str>, visit: Visitor<'a>) -> TableFuture<'a, ()> {
        Box::pin(async move {
            for (row, value) in self.rows().await? {
                if after.is_some_and(|a| row.as_str() <= a) {
                    continue;
                }
                if !visit(&row, &value) {
                    break;
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_keys_survive_the_bucket_key_and_keep_their_order() {
        let prefix = "auth.subs.";
        for row in ["auth0|1", "google-oauth2|9", "a b/c.d", "ü"] {
            let key = bucket_key(prefix, row);
            assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'));
            assert_eq!(row_key(prefix, &key).as_deref(), Some(row));
        }
        let key = |row| bucket_key(prefix, row);
        assert!(key("a") < key("b") && key("ab") < key("b"));
        assert_eq!(
            row_key(prefix, "auth.users.41"),
            None,
            "another table's key"
        );
        assert_eq!(row_key(prefix, "auth.subs.4"), None, "odd hex");
    }
}
