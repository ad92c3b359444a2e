//! Presence across the cluster (`../shared/cluster.md` §3.6, mode A): every member lives in
//! the KV bucket `<PREFIX>_PRES` under `c<hex channel>.<connectionId>.c<hex clientId>`, and
//! every node mirrors the whole bucket in memory (per shard, beside the channels' feeds).
//!
//! A node that changes a member writes the event it broadcast: an enter or update as the
//! member's value, a leave as a tombstone value that it then deletes if nothing has replaced
//! it (a delete conditioned on the tombstone's revision), so a leave reaches every node with
//! its id and data, and a member entered again meanwhile is never removed. Each value names
//! the node that wrote it. The watcher applies every value to the mirror, in the bucket's
//! order, and hands the events of other nodes to that channel's stream on this node, if it
//! has one; a node's own events are already in its streams. A stream opened on a channel
//! starts from the mirror's members, taken under the same lock as its feed registration.

use std::sync::Arc;

use async_nats::jetstream::kv;
use protocol::{PresenceAction, PresenceMessage};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{subject, Delivery, JetStreamBackend, Owner};
use crate::backend::local::Retention;

/// A value of the presence bucket: the event a node broadcast for the member.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Written {
    /// The node that wrote it.
    pub(super) origin: String,
    /// The event: enter, update or leave, with the member's fields.
    pub(super) event: PresenceMessage,
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(token: &str) -> Option<String> {
    let bytes = token.strip_prefix('c')?.as_bytes();
    if bytes.len() % 2 != 0 {
        return None;
    }
    let decoded: Option<Vec<u8>> = bytes
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect();
    String::from_utf8(decoded?).ok()
}

/// The bucket key of `event`'s member on `channel`, if its connectionId can be one.
pub(super) fn key(channel: &str, event: &PresenceMessage) -> Option<String> {
    let connection = event.connection_id.as_deref()?;
    if connection.is_empty() || !connection.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let client = event.client_id.as_deref().unwrap_or("");
    Some(format!("c{}.{connection}.c{}", hex(channel), hex(client)))
}

/// The channel a bucket key belongs to.
fn channel_of(key: &str) -> Option<String> {
    unhex(key.split('.').next()?)
}

/// Writes the events `node` broadcast for `channel` to the presence bucket. A failure is
/// logged: the members stand on this node, and other nodes learn of them with the member's
/// next change.
pub(super) async fn share(
    bucket: &kv::Store,
    seen: &mut watch::Receiver<u64>,
    node: &str,
    channel: &str,
    events: &[PresenceMessage],
) {
    let mut written_up_to = 0;
    for event in events {
        let Some(key) = key(channel, event) else {
            continue;
        };
        let written = Written {
            origin: node.to_owned(),
            event: event.clone(),
        };
        let value = serde_json::to_vec(&written).expect("presence value serializes");
        let revision = match bucket.put(&key, value.into()).await {
            Ok(revision) => revision,
            Err(e) => {
                tracing::warn!(%channel, error = %e, "presence write to the cluster failed");
                continue;
            }
        };
        written_up_to = revision;
        if event.action == PresenceAction::Leave {
            // Only the tombstone goes: a member entered again since stays.
            let _ = bucket.delete_expect_revision(&key, Some(revision)).await;
        }
    }
    // The operation is answered once this node's mirror has the events, so its presence
    // history (recorded by the mirror) has them too.
    if written_up_to > 0 {
        let wait = seen.wait_for(|applied| *applied >= written_up_to);
        let _ = tokio::time::timeout(SEEN_WAIT, wait).await;
    }
}

/// How long a presence operation waits for this node's mirror to apply its writes.
const SEEN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl JetStreamBackend {
    /// Mirrors the presence bucket until `stop`, handing other nodes' events to the streams;
    /// `caught_up` turns true once the values present at start are applied.
    pub(super) async fn watch_presence(
        self: Arc<Self>,
        caught_up: watch::Sender<bool>,
        stop: watch::Receiver<bool>,
    ) {
        let bucket = self.presence.clone();
        super::follow_bucket(&bucket, "presence", ">", stop, |entry| {
            let backend = self.clone();
            let caught_up = caught_up.clone();
            async move {
                if entry.operation == kv::Operation::Put {
                    backend
                        .mirror_presence(&entry.key, entry.revision, &entry.value)
                        .await;
                }
                backend.presence_seen.send_replace(entry.revision);
                if entry.delta == 0 {
                    caught_up.send_replace(true);
                }
            }
        })
        .await;
    }

    /// Applies one value to the mirror and, for another node's event, to the channel's stream.
    async fn mirror_presence(&self, key: &str, revision: u64, value: &[u8]) {
        let (Some(channel), Ok(written)) =
            (channel_of(key), serde_json::from_slice::<Written>(value))
        else {
            tracing::warn!(%key, "unreadable presence value skipped");
            return;
        };
        let shard = &self.shards[subject::shard_of(&channel, self.settings.shards) as usize];
        let sender = {
            let mut state = shard.state.lock().expect("shard state");
            let members = state.members.entry(channel.clone()).or_default();
            members.apply(written.event.clone());
            if members.is_empty() {
                state.members.remove(&channel);
            }
            if written.event.action == PresenceAction::Leave {
                state.owners.remove(key);
            } else {
                let owner = Owner {
                    node: written.origin.clone(),
                    revision,
                    channel: channel.clone(),
                    event: written.event.clone(),
                };
                state.owners.insert(key.to_owned(), owner);
            }
            let remote = written.origin != self.node;
            state
                .feeds
                .get(&channel)
                .filter(|_| remote)
                .map(|feed| feed.sender.clone())
        };
        self.record_presence(&channel, revision, &written.event);
        if let Some(sender) = sender {
            let _ = sender.send(Delivery::Presence(written.event)).await;
        }
    }
}

/// Channels whose presence history count the mirror keeps before it forgets them all.
const MAX_COUNTED_CHANNELS: usize = 65_536;

impl JetStreamBackend {
    /// Adds `event` to `channel`'s presence history at `revision`, the bucket's position of
    /// the event: every node records every event there, so presence history and its positions
    /// are the same on every node (for the events since it started: the bucket keeps members,
    /// not past events, so a view rebuilt from it has no earlier history).
    fn record_presence(&self, channel: &str, revision: u64, event: &PresenceMessage) {
        let record = crate::backend::presence::to_record(event);
        if let Err(e) = self.presence_log.append(channel, &[(revision, &record)]) {
            tracing::warn!(%channel, error = %e, "presence history append failed");
            return;
        }
        let mut counts = self.presence_retention.lock().expect("presence retention");
        if counts.len() > MAX_COUNTED_CHANNELS {
            counts.clear();
        }
        counts
            .entry(channel.to_owned())
            .or_insert_with(|| Retention::new(channel, self.max_messages, self.age_sweeps.clone()))
            .after_append(self.presence_log.as_ref(), channel, 1);
    }

    /// The members of this node's mirror that `pick` chooses, with their keys.
    fn members_of(&self, pick: impl Fn(&Owner) -> bool) -> Vec<(String, Owner)> {
        let mut found = Vec::new();
        for shard in &self.shards {
            let state = shard.state.lock().expect("shard state");
            found.extend(
                state
                    .owners
                    .iter()
                    .filter(|(_, owner)| pick(owner))
                    .map(|(key, owner)| (key.clone(), owner.clone())),
            );
        }
        found
    }

    /// Makes this node the owner of the members of `connection_id`, a connection it took
    /// over from another node, so that the other node's death does not reap them; returns
    /// their channels. A member changed meanwhile keeps its newer value (the write is a
    /// compare-and-set on the revision seen).
    pub async fn adopt_members(&self, connection_id: &str) -> Vec<String> {
        let mut channels = Vec::new();
        let theirs = self.members_of(|o| {
            o.node != self.node && o.event.connection_id.as_deref() == Some(connection_id)
        });
        for (key, owner) in theirs {
            let written = Written {
                origin: self.node.clone(),
                event: owner.event,
            };
            let value = serde_json::to_vec(&written).expect("presence value serializes");
            let _ = self
                .presence
                .update(&key, value.into(), owner.revision)
                .await;
            channels.push(owner.channel);
        }
        channels.sort();
        channels.dedup();
        channels
    }

    /// Leaves, on behalf of dead `node`, every member it last wrote (§6.6: a member leaves
    /// when its connection is gone). Each leave is a compare-and-set on the member's
    /// revision, so of several nodes reaping only one writes it, and a member that a live
    /// node has taken over meanwhile stays.
    pub async fn reap(&self, node: &str) -> usize {
        let theirs = self.members_of(|o| o.node == node);
        let mut reaped = 0;
        for (key, owner) in theirs {
            let leave = PresenceMessage {
                action: PresenceAction::Leave,
                id: None,
                timestamp: Some(crate::auth::now_ms()),
                ..owner.event
            };
            // Written in the dead node's name, so that every node, this one included,
            // hands the leave to its streams.
            let written = Written {
                origin: node.to_owned(),
                event: leave,
            };
            let value = serde_json::to_vec(&written).expect("presence value serializes");
            if let Ok(revision) = self
                .presence
                .update(&key, value.into(), owner.revision)
                .await
            {
                let _ = self
                    .presence
                    .delete_expect_revision(&key, Some(revision))
                    .await;
                reaped += 1;
            }
        }
        reaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_channel_and_member() {
        let event = PresenceMessage {
            client_id: Some("ünï.*".into()),
            connection_id: Some("abc123".into()),
            ..Default::default()
        };
        let key = key("room.1 >", &event).unwrap();
        assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'));
        assert_eq!(channel_of(&key).as_deref(), Some("room.1 >"));
        let odd = PresenceMessage {
            connection_id: Some("a:b".into()),
            ..event
        };
        assert!(key_is_none(&odd));
    }

    fn key_is_none(event: &PresenceMessage) -> bool {
        key("c", event).is_none()
    }
}
