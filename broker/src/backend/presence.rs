//! A channel's presence set (§6): members keyed by (clientId, connectionId), each holding its
//! last PresenceMessage. Applying a client's enter/update/leave returns what, if anything, to
//! broadcast: a re-enter of a member with the same data changes nothing and says nothing
//! (§6.3 item 4), so an automatic re-enter after a resume is silent. Pure data: a backend's
//! stream keeps one per channel and applies [`PresenceChange`]s to it in the channel's order
//! (`Stream::presence`); the records of the presence history are made here too.

use std::collections::BTreeMap;

use protocol::{Message, PresenceAction, PresenceMessage};

use super::PresenceChange;

/// The members of one channel.
#[derive(Clone, Default)]
pub struct PresenceSet {
    members: BTreeMap<(String, String), PresenceMessage>,
}

impl PresenceSet {
    /// How many members there are.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when nobody is present.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// True when (clientId, connectionId) is a member.
    pub fn contains(&self, client_id: &str, connection_id: &str) -> bool {
        self.members
            .contains_key(&(client_id.to_owned(), connection_id.to_owned()))
    }

    /// Applies one item from a client (it carries clientId, connectionId, id and timestamp).
    /// Returns the event to broadcast, if any.
    pub fn apply(&mut self, item: PresenceMessage) -> Option<PresenceMessage> {
        let key = (
            item.client_id.clone().unwrap_or_default(),
            item.connection_id.clone().unwrap_or_default(),
        );
        match item.action {
            PresenceAction::Leave => self.members.remove(&key).map(|_| item),
            PresenceAction::Enter | PresenceAction::Update | PresenceAction::Present => {
                let previous = self.members.get(&key);
                let event = match previous {
                    // §6.3 item 4: a re-enter with unchanged data is not announced again.
                    Some(p)
                        if p.data == item.data
                            && p.encoding == item.encoding
                            && p.extras == item.extras =>
                    {
                        None
                    }
                    Some(_) => Some(PresenceMessage {
                        action: PresenceAction::Update,
                        ..item.clone()
                    }),
                    None => Some(PresenceMessage {
                        action: if item.action == PresenceAction::Update {
                            PresenceAction::Update
                        } else {
                            PresenceAction::Enter
                        },
                        ..item.clone()
                    }),
                };
                if event.is_some() || previous.is_none() {
                    self.members.insert(
                        key,
                        PresenceMessage {
                            action: PresenceAction::Present,
                            ..item
                        },
                    );
                }
                event
            }
            _ => None,
        }
    }

    /// Applies one change in order and returns the events it causes, to broadcast and to
    /// record in the presence history.
    pub fn change(&mut self, change: PresenceChange) -> Vec<PresenceMessage> {
        match change {
            PresenceChange::Apply(items) => items
                .into_iter()
                .filter_map(|item| self.apply(item))
                .collect(),
            PresenceChange::LeaveConnection { connection_id, at } => {
                self.leave_connection(&connection_id, at)
            }
        }
    }

    /// Removes every member of `connection_id` and returns server-made leaves for them: no
    /// `id`, so ably-js compares by timestamp and accepts them (§6.5).
    pub fn leave_connection(&mut self, connection_id: &str, now: i64) -> Vec<PresenceMessage> {
        let keys: Vec<(String, String)> = self
            .members
            .keys()
            .filter(|(_, conn)| conn == connection_id)
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|key| self.members.remove(&key))
            .map(|m| PresenceMessage {
                action: PresenceAction::Leave,
                id: None,
                timestamp: Some(now),
                ..m
            })
            .collect()
    }

    /// Members in key order, starting after `after`, filtered, at most `limit`.
    pub fn list(
        &self,
        after: Option<&(String, String)>,
        client_id: Option<&str>,
        connection_id: Option<&str>,
        limit: usize,
    ) -> Vec<PresenceMessage> {
        let range = match after {
            Some(key) => self.members.range((
                std::ops::Bound::Excluded(key.clone()),
                std::ops::Bound::Unbounded,
            )),
            None => self.members.range(..),
        };
        range
            .filter(|((client, conn), _)| {
                client_id.is_none_or(|c| c == client) && connection_id.is_none_or(|c| c == conn)
            })
            .take(limit)
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Every member, in key order.
    pub fn all(&self) -> impl Iterator<Item = &PresenceMessage> {
        self.members.values()
    }
}

/// The form a presence event takes in the channel's presence history: a [`Message`] whose
/// `action` is the presence action.
pub fn to_record(event: &PresenceMessage) -> Message {
    Message {
        id: event.id.clone(),
        client_id: event.client_id.clone(),
        connection_id: event.connection_id.clone(),
        data: event.data.clone(),
        encoding: event.encoding.clone(),
        extras: event.extras.clone(),
        timestamp: event.timestamp,
        action: Some(event.action.code()),
        ..Default::default()
    }
}

/// A presence event back from its history record.
pub fn from_record(record: Message) -> PresenceMessage {
    PresenceMessage {
        action: record
            .action
            .map_or(PresenceAction::Present, PresenceAction::from_code),
        id: record.id,
        client_id: record.client_id,
        connection_id: record.connection_id,
        data: record.data,
        encoding: record.encoding,
        extras: record.extras,
        timestamp: record.timestamp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Data;

    fn item(action: PresenceAction, client: &str, conn: &str, data: &str) -> PresenceMessage {
        PresenceMessage {
            action,
            client_id: Some(client.into()),
            connection_id: Some(conn.into()),
            data: Some(Data::String(data.into())),
            ..Default::default()
        }
    }

    #[test]
    fn enter_update_leave_and_silent_reenter() {
        let mut set = PresenceSet::default();
        assert_eq!(
            set.apply(item(PresenceAction::Enter, "a", "c1", "x"))
                .unwrap()
                .action,
            PresenceAction::Enter
        );
        assert!(
            set.apply(item(PresenceAction::Enter, "a", "c1", "x"))
                .is_none(),
            "re-enter is silent"
        );
        assert_eq!(
            set.apply(item(PresenceAction::Enter, "a", "c1", "y"))
                .unwrap()
                .action,
            PresenceAction::Update
        );
        assert_eq!(
            set.apply(item(PresenceAction::Update, "a", "c1", "z"))
                .unwrap()
                .action,
            PresenceAction::Update
        );
        assert_eq!(set.all().next().unwrap().action, PresenceAction::Present);
        assert_eq!(
            set.apply(item(PresenceAction::Leave, "a", "c1", ""))
                .unwrap()
                .action,
            PresenceAction::Leave
        );
        assert!(
            set.apply(item(PresenceAction::Leave, "a", "c1", ""))
                .is_none(),
            "leave of a non-member"
        );
        assert!(set.is_empty());
    }

    #[test]
    fn a_connection_leaves_all_its_members_with_synthesized_leaves() {
        let mut set = PresenceSet::default();
        set.apply(item(PresenceAction::Enter, "a", "c1", ""));
        set.apply(item(PresenceAction::Enter, "b", "c1", ""));
        set.apply(item(PresenceAction::Enter, "a", "c2", ""));
        let leaves = set.leave_connection("c1", 42);
        assert_eq!(leaves.len(), 2);
        assert!(leaves.iter().all(|l| l.id.is_none()
            && l.timestamp == Some(42)
            && l.action == PresenceAction::Leave));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn listing_pages_in_key_order_with_filters() {
        let mut set = PresenceSet::default();
        for i in 0..5 {
            set.apply(item(PresenceAction::Enter, &format!("u{i}"), "c", ""));
        }
        let first = set.list(None, None, None, 2);
        assert_eq!(first.len(), 2);
        let after = ("u1".to_owned(), "c".to_owned());
        let next = set.list(Some(&after), None, None, 10);
        assert_eq!(next.first().unwrap().client_id.as_deref(), Some("u2"));
        assert_eq!(set.list(None, Some("u3"), None, 10).len(), 1);
        assert_eq!(set.list(None, None, Some("other"), 10).len(), 0);
    }
}
