//! Token revocation: what `POST /keys/{keyName}/revokeTokens` records (revoke by clientId), and
//! what deleting a user records for every key. A record says "tokens of this key (or of any
//! key) for this clientId issued before T are refused from `appliesAt` on" (40141). Records
//! live in the sled tree `token-revocations` of the broker's database, so they survive a
//! restart, and in memory, so checking one costs a map lookup per token authentication. A
//! record is dropped 24 h after its `issuedBefore`, when every token the broker issued before
//! it has expired (an Ably JWT an app signs itself with a longer life outlives the record).
//! The HTTP route is in `http/rest.rs`; closing live connections is [`disconnect_revoked`] and
//! [`evict_user`], and [`lapsed`] catches a connection that registered while either ran.

use std::sync::Arc;

use auth_plugin::UserStore;
use dashmap::DashMap;
use protocol::error::codes;
use protocol::{Action, ErrorInfo, ProtocolMessage};
use serde::{Deserialize, Serialize};

use crate::auth::{now_ms, TokenStamp};
use crate::channel::Channels;
use crate::connection::session::{Authority, Sessions};

/// How long a record is kept after its `issuedBefore`: the longest lifetime of a token the
/// broker issues (§8.3), after which every token it could reach has expired.
pub const RECORD_LIFETIME_MS: i64 = 86_400_000;

/// One revocation of a clientId's tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revocation {
    /// Tokens issued before this time (ms) are revoked.
    pub issued_before: i64,
    /// From this time (ms) on they are refused.
    pub applies_at: i64,
}

/// The revocations of one clientId, each for the key that signed the token or, with `None`,
/// for every key.
type ByKey = Vec<(Option<String>, Revocation)>;

/// Every revocation in force, in memory and in sled.
pub struct Revocations {
    tree: sled::Tree,
    by_client: DashMap<String, ByKey>,
}

fn tree_key(key_name: Option<&str>, client_id: &str, record: &Revocation) -> Vec<u8> {
    // Key names have no whitespace and the numbers none either, so the first three newlines
    // end them and the clientId may hold any character; "" is every key.
    format!(
        "{}\n{}\n{}\n{client_id}",
        key_name.unwrap_or(""),
        record.issued_before,
        record.applies_at
    )
    .into_bytes()
}

impl Revocations {
    /// Opens the records in `db`, dropping those whose tokens have all expired by `now`.
    pub fn open(db: &sled::Db, now: i64) -> Result<Revocations, sled::Error> {
        let revocations = Revocations {
            tree: db.open_tree("token-revocations")?,
            by_client: DashMap::new(),
        };
        for item in revocations.tree.iter() {
            let (key, value) = item?;
            let text = String::from_utf8_lossy(&key);
            let mut parts = text.splitn(4, '\n');
            let (Some(key_name), Some(_), Some(_), Some(client_id)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<Revocation>(&value) else {
                continue;
            };
            let key_name = (!key_name.is_empty()).then(|| key_name.to_owned());
            revocations
                .by_client
                .entry(client_id.to_owned())
                .or_default()
                .push((key_name, record));
        }
        revocations.prune(now)?;
        Ok(revocations)
    }

    /// Revokes the tokens of `key_name` (every key when `None`) for `client_id` issued before
    /// `record.issued_before`, from `record.applies_at` on. Earlier records stay as they are
    /// (a later one may apply later); one that an existing record covers is not stored.
    pub fn revoke(
        &self,
        key_name: Option<&str>,
        client_id: &str,
        record: Revocation,
    ) -> Result<(), sled::Error> {
        {
            let mut records = self.by_client.entry(client_id.to_owned()).or_default();
            let covered = records.iter().any(|(k, old)| {
                k.as_deref() == key_name
                    && old.issued_before >= record.issued_before
                    && old.applies_at <= record.applies_at
            });
            if covered {
                return Ok(());
            }
            records.push((key_name.map(str::to_owned), record));
        }
        self.tree.insert(
            tree_key(key_name, client_id, &record),
            serde_json::to_vec(&record).expect("record serializes"),
        )?;
        Ok(())
    }

    /// 40141 when a revocation in force at `now` reaches the token `stamp` describes. A token
    /// without an issue time (an Ably JWT without `iat`) counts as issued before any.
    pub fn check(&self, stamp: &TokenStamp, now: i64) -> Result<(), ErrorInfo> {
        if self.reaches(stamp, now) {
            return Err(ErrorInfo::new(codes::TOKEN_REVOKED, "Token revoked"));
        }
        Ok(())
    }

    /// True when a revocation in force at `now` reaches the token `stamp` describes.
    pub fn reaches(&self, stamp: &TokenStamp, now: i64) -> bool {
        let Some(client_id) = stamp.client_id.as_deref() else {
            return false;
        };
        let Some(records) = self.by_client.get(client_id) else {
            return false;
        };
        records.iter().any(|(key_name, record)| {
            key_name.as_deref().is_none_or(|k| k == stamp.key_name)
                && record.applies_at <= now
                && stamp.issued_at.is_none_or(|at| at < record.issued_before)
        })
    }

    /// Makes the records written so far durable now rather than at the next checkpoint.
    pub fn flush(&self) -> Result<(), sled::Error> {
        self.tree.flush().map(|_| ())
    }

    /// Drops records whose tokens have all expired by `now` (call after revoking: it walks
    /// every record).
    pub fn prune(&self, now: i64) -> Result<(), sled::Error> {
        let stale = |r: &Revocation| r.issued_before + RECORD_LIFETIME_MS <= now;
        let mut gone = Vec::new();
        self.by_client.retain(|client_id, records| {
            records.retain(|(key_name, record)| {
                if stale(record) {
                    gone.push(tree_key(key_name.as_deref(), client_id, record));
                }
                !stale(record)
            });
            !records.is_empty()
        });
        for key in gone {
            self.tree.remove(key)?;
        }
        Ok(())
    }
}

/// Ends every connection of deleted user `user`: ERROR 40300, not a token error, so ably-js
/// goes FAILED instead of fetching a new token; no resume; and their presence members leave
/// at once (§6.6).
pub async fn evict_user(sessions: &Sessions, channels: &Arc<Channels>, user: &str) {
    for session in sessions.of_client(user) {
        session.evict(ProtocolMessage {
            error: Some(ErrorInfo::new(codes::FORBIDDEN, "the user was deleted")),
            ..ProtocolMessage::new(Action::Error)
        });
        sessions.remove(&session.id);
        let connection_id: Arc<str> = Arc::from(session.id.as_str());
        channels
            .leave_everywhere(&connection_id, session.presence_channels())
            .await;
    }
}

/// Why a credential accepted a moment ago no longer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lapsed {
    /// Its token has been revoked since (40141).
    Revoked,
    /// Its user has been deleted since (40300).
    Deleted,
}

/// Checks a connection's credential again once the connection is registered with it (after
/// the handshake, after an in-band AUTH); `users` is the Auth0 user table, when there is one. A revocation or a user deletion records itself and
/// then walks the registered connections, so one that was authenticated before the record
/// and registered after the walk is caught here instead.
pub async fn lapsed(
    revocations: &Revocations,
    users: Option<&UserStore>,
    authority: &Authority,
) -> Option<Lapsed> {
    if let Some(stamp) = &authority.token {
        if revocations.reaches(stamp, now_ms()) {
            return Some(Lapsed::Revoked);
        }
    }
    let (users, user) = (users?, authority.identity.reported.as_deref()?);
    match users.is_deleted(user).await {
        Ok(true) => Some(Lapsed::Deleted),
        Ok(false) => None,
        Err(e) => {
            tracing::warn!(error = %e, "user table unavailable for the deletion check");
            None
        }
    }
}

/// Sends DISCONNECTED 40141 to every live connection whose token a revocation in force at
/// `now` reaches, and closes its socket. The connection stays resumable: a client that can
/// renew (authCallback, authUrl, key) fetches a new token and resumes with it (§4.5, §8.5).
pub fn disconnect_revoked(sessions: &Sessions, revocations: &Arc<Revocations>, now: i64) {
    let reached = sessions.matching(|authority| {
        authority
            .token
            .as_ref()
            .is_some_and(|stamp| revocations.reaches(stamp, now))
    });
    for session in reached {
        session.disconnect(ProtocolMessage {
            error: Some(ErrorInfo::new(codes::TOKEN_REVOKED, "Token revoked")),
            ..ProtocolMessage::new(Action::Disconnected)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(key: &str, client: &str, issued_at: i64) -> TokenStamp {
        TokenStamp {
            key_name: key.to_owned(),
            client_id: Some(client.to_owned()),
            issued_at: Some(issued_at),
        }
    }

    #[test]
    fn a_revocation_reaches_older_tokens_of_its_key_from_applies_at_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let revocations = Revocations::open(&db, 1_000).unwrap();
        let record = Revocation {
            issued_before: 1_000,
            applies_at: 1_500,
        };
        revocations.revoke(Some("app.a"), "alice", record).unwrap();
        assert!(!revocations.reaches(&stamp("app.a", "alice", 999), 1_499));
        assert!(revocations.reaches(&stamp("app.a", "alice", 999), 1_500));
        assert!(!revocations.reaches(&stamp("app.a", "alice", 1_000), 2_000));
        assert!(!revocations.reaches(&stamp("app.b", "alice", 999), 2_000));
        assert!(!revocations.reaches(&stamp("app.a", "bob", 999), 2_000));
        revocations.revoke(None, "bob", record).unwrap();
        assert!(revocations.reaches(&stamp("app.b", "bob", 999), 2_000));
        assert_eq!(
            revocations
                .check(&stamp("app.a", "alice", 1), 2_000)
                .unwrap_err()
                .code,
            40141
        );

        drop(revocations);
        let reopened = Revocations::open(&db, 2_000).unwrap();
        assert!(reopened.reaches(&stamp("app.a", "alice", 999), 2_000));
        let later = 1_000 + RECORD_LIFETIME_MS;
        let pruned = Revocations::open(&db, later).unwrap();
        assert!(!pruned.reaches(&stamp("app.a", "alice", 999), later));
        assert!(db.open_tree("token-revocations").unwrap().is_empty());
    }
}
