//! Mutable messages (issue 18; `../shared/ably-chat.md` §2, §5.3, §5.8): updates, deletes and
//! appends of a published message. Each change is an entry of the channel's log like any
//! message, at a position of its own: its `serial` is the original's, its `version.serial` that
//! position, so every version sorts after the earlier ones. Live subscribers, resume and rewind
//! get the entries as they come; history shows each message once, at the original's place, in
//! its latest version ([`fold`]). The latest version is found by reading the log after the
//! original for changes to it: a cost that grows with the messages retained after it, bounded
//! by retention. The channel's sequencer is the one writer, so changes to one message apply
//! in one order: it keeps the latest versions it has seen ([`Latest`]).

use std::collections::{BTreeSet, HashMap};

use protocol::error::codes;
use protocol::{Annotation, Data, ErrorInfo, Message, MessageVersion};
use serde_json::json;

use super::annotations::Aggregate;

use crate::store::{Direction, Query, StoreError};

/// How many entries one read of a scan for versions takes.
const SCAN_CHUNK: usize = 1000;
/// Latest versions a sequencer remembers before it forgets them all.
const MAX_REMEMBERED: usize = 1024;

/// Reads a channel's log.
pub type Reader<'a> = &'a dyn Fn(&Query) -> Result<Vec<(u64, Message)>, StoreError>;

/// What a publisher may change, from its capability on the channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rights {
    /// `message-update-any`.
    pub update_any: bool,
    /// `message-update-own`.
    pub update_own: bool,
    /// `message-delete-any`.
    pub delete_any: bool,
    /// `message-delete-own`.
    pub delete_own: bool,
}

impl Rights {
    /// Whether `caller` may make a change of `action` to a message `author` published: the
    /// `-any` right, or the `-own` right on their own message (40166 for a caller without a
    /// clientId, 40160 otherwise). An append is an update.
    pub fn check(
        &self,
        action: u64,
        caller: Option<&str>,
        author: Option<&str>,
    ) -> Result<(), ErrorInfo> {
        let (any, own, what) = match action {
            Message::DELETE => (self.delete_any, self.delete_own, "delete"),
            _ => (self.update_any, self.update_own, "update"),
        };
        if any {
            return Ok(());
        }
        if !own {
            return Err(ErrorInfo::new(
                codes::CAPABILITY_DENIED,
                format!("Unable to {what} the message: no message-{what}-own or message-{what}-any capability"),
            ));
        }
        match (caller, author) {
            (Some(caller), Some(author)) if caller == author => Ok(()),
            (None, _) => Err(ErrorInfo::new(
                codes::UNIDENTIFIED_OWN_OPERATION,
                format!("Unable to {what} the message: message-{what}-own needs an identified client"),
            )),
            _ => Err(ErrorInfo::new(
                codes::CAPABILITY_DENIED,
                format!("Unable to {what} the message: message-{what}-own allows only your own messages"),
            )),
        }
    }
}

/// 40400 for a change to a message the channel does not hold.
pub fn unknown_message(serial: &str) -> ErrorInfo {
    ErrorInfo::new(
        codes::NOT_FOUND,
        format!("no message with serial {serial} on this channel"),
    )
}

/// The new version `change` makes of `latest` (the message's current version), as the log
/// keeps it, and for an append the increment live subscribers get. Update and delete replace
/// the fields the change carries (`name`, `data` with its `encoding`, `extras`); a delete keeps
/// the content it does not replace. An append adds its string or binary data to the end of the
/// latest version's (40003 when the two cannot be joined), and is kept as an update of the
/// whole text. The author, `serial`, `clientId`, the author's `extras.userClaim` and the
/// original `timestamp` stay; `version` says who changed it (`clientId`), why, and where (the
/// backend gives it its position).
pub fn apply(latest: &Message, change: Message) -> Result<(Message, Option<Message>), ErrorInfo> {
    let action = change.action.unwrap_or(Message::UPDATE);
    let operation = change.version.clone().unwrap_or_default();
    let mut next = Message {
        id: change.id.clone(),
        connection_id: change.connection_id.clone(),
        action: Some(action),
        version: Some(MessageVersion {
            serial: None,
            timestamp: None,
            client_id: change.client_id.clone(),
            description: operation.description,
            metadata: operation.metadata,
        }),
        ..latest.clone()
    };
    let mut increment = None;
    if action == Message::APPEND {
        let joined = match (&latest.data, &change.data, &latest.encoding, &change.encoding) {
            (_, None, _, _) => latest.data.clone(),
            (None, Some(tail), None, None) => Some(tail.clone()),
            (Some(Data::String(head)), Some(Data::String(tail)), None, None) => {
                Some(Data::String(format!("{head}{tail}")))
            }
            (Some(Data::Binary(head)), Some(Data::Binary(tail)), None, None) => {
                let mut joined = head.to_vec();
                joined.extend_from_slice(tail);
                Some(Data::Binary(joined.into()))
            }
            _ => {
                return Err(ErrorInfo::new(
                    codes::INVALID_PARAMETER,
                    "an append's data must be of the message's type (string or binary), without encoding",
                ))
            }
        };
        increment = Some(Message {
            data: change.data,
            ..next.clone()
        });
        next.data = joined;
        // History and rewind see the whole text: an update.
        next.action = Some(Message::UPDATE);
    } else {
        if change.name.is_some() {
            next.name = change.name;
        }
        if change.data.is_some() {
            next.data = change.data;
            next.encoding = change.encoding;
        }
        if change.extras.is_some() {
            next.extras = change.extras;
            // The claim is the author's (§5.10), whoever edits: never the editor's.
            let author = latest.extras.as_ref().and_then(|e| e.get("userClaim"));
            super::service::strip_server_fields(&mut next.extras);
            super::service::set_user_claim(&mut next.extras, author.and_then(|c| c.as_str()));
        }
    }
    Ok((next, increment))
}

/// Reads `channel`'s entries `from..=to` forwards in chunks, handing each to `visit`.
pub(super) fn scan(
    read: Reader<'_>,
    from: u64,
    to: u64,
    mut visit: impl FnMut(u64, Message),
) -> Result<(), StoreError> {
    let mut from = from;
    while from <= to {
        let rows = read(&Query {
            from,
            to,
            start_ms: None,
            end_ms: None,
            direction: Direction::Forwards,
            limit: SCAN_CHUNK,
        })?;
        let Some(&(last, _)) = rows.last() else {
            break;
        };
        let full = rows.len() == SCAN_CHUNK;
        for (seq, message) in rows {
            visit(seq, message);
        }
        if !full {
            break;
        }
        from = last + 1;
    }
    Ok(())
}

/// The message at position `seq` (a new message, not a change) with every version of it, the
/// original first; `None` when the log does not hold it. `last` is the channel's newest
/// position.
pub fn versions(read: Reader<'_>, seq: u64, last: u64) -> Result<Option<Vec<Message>>, StoreError> {
    let original = read(&Query {
        from: seq,
        to: seq,
        start_ms: None,
        end_ms: None,
        direction: Direction::Forwards,
        limit: 1,
    })?;
    let Some((_, original)) = original
        .into_iter()
        .next()
        .filter(|(s, m)| *s == seq && !m.refers())
    else {
        return Ok(None);
    };
    let serial = original.serial.clone();
    let mut all = vec![original];
    scan(read, seq + 1, last, |_, m| {
        if m.is_version() && m.serial == serial {
            all.push(m);
        }
    })?;
    Ok(Some(all))
}

/// The latest version of `versions` (as [`versions`] lists them) at the original's place:
/// its content and `version`, the original's `timestamp`.
pub fn latest_of(mut versions: Vec<Message>) -> Message {
    let created = versions.first().and_then(|m| m.timestamp);
    let mut latest = versions.pop().expect("the original is always there");
    latest.timestamp = created;
    latest
}

/// History's view of a page read from the log (§5.8): changes, summaries and annotations are
/// left out, and each new message is shown in its latest version at its own place, with the
/// summary of its annotations (client lists cut at `clip`). `last` is the channel's newest
/// position, up to which the changes are looked for.
pub fn fold(
    read: Reader<'_>,
    rows: Vec<(u64, Message)>,
    last: u64,
    clip: usize,
) -> Result<Vec<(u64, Message)>, StoreError> {
    let rows: Vec<(u64, Message)> = rows.into_iter().filter(|(_, m)| !m.refers()).collect();
    let Some(first) = rows.iter().map(|(seq, _)| *seq).min() else {
        return Ok(rows);
    };
    let wanted: BTreeSet<&str> = rows
        .iter()
        .filter_map(|(_, m)| m.serial.as_deref())
        .collect();
    let mut newest: HashMap<String, Message> = HashMap::new();
    let mut annotated: HashMap<String, Aggregate> = HashMap::new();
    scan(read, first + 1, last, |_, m| {
        let Some(serial) = m.serial.as_deref().filter(|s| wanted.contains(s)) else {
            return;
        };
        if m.is_version() {
            newest.insert(serial.to_owned(), m);
        } else if let Some(annotation) = Annotation::from_entry(&m) {
            annotated
                .entry(serial.to_owned())
                .or_default()
                .apply(&annotation);
        }
    })?;
    Ok(rows
        .into_iter()
        .map(|(seq, original)| {
            let serial = original.serial.clone().unwrap_or_default();
            let mut shown = match newest.remove(&serial) {
                Some(mut latest) => {
                    latest.timestamp = original.timestamp;
                    latest
                }
                None => original,
            };
            if let Some(aggregate) = annotated.remove(&serial) {
                shown.annotations = Some(json!({ "summary": aggregate.summary(clip) }));
            }
            (seq, shown)
        })
        .collect())
}

/// The latest versions a channel's sequencer has seen or made, by the original's position.
#[derive(Default)]
pub struct Latest {
    known: HashMap<u64, Message>,
}

impl Latest {
    /// The latest version of the message at `seq`, read from the log when not known here;
    /// `None` when the log does not hold such a message.
    pub fn get(
        &mut self,
        read: Reader<'_>,
        seq: u64,
        last: u64,
    ) -> Result<Option<Message>, StoreError> {
        if let Some(known) = self.known.get(&seq) {
            return Ok(Some(known.clone()));
        }
        Ok(versions(read, seq, last)?.map(latest_of))
    }

    /// Remembers `message` as the latest version of the message at `seq`.
    pub fn set(&mut self, seq: u64, message: Message) {
        if self.known.len() >= MAX_REMEMBERED {
            self.known.clear();
        }
        self.known.insert(seq, message);
    }

    /// Forgets everything (after a failed append, whose versions were never stored).
    pub fn clear(&mut self) {
        self.known.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Message) -> &str {
        match &m.data {
            Some(Data::String(s)) => s,
            _ => "",
        }
    }

    fn message(serial: &str, client: &str, data: &str) -> Message {
        Message {
            serial: Some(serial.into()),
            client_id: Some(client.into()),
            data: Some(Data::String(data.into())),
            name: Some("chat".into()),
            extras: Some(serde_json::json!({"headers": {"a": 1}})),
            timestamp: Some(5),
            action: Some(0),
            ..Message::default()
        }
    }

    #[test]
    fn own_and_any_rights() {
        let own = Rights {
            update_own: true,
            delete_own: true,
            ..Rights::default()
        };
        assert!(own.check(Message::UPDATE, Some("a"), Some("a")).is_ok());
        assert!(own.check(Message::APPEND, Some("a"), Some("a")).is_ok());
        assert_eq!(
            own.check(Message::DELETE, Some("b"), Some("a"))
                .unwrap_err()
                .code,
            40160
        );
        assert_eq!(
            own.check(Message::UPDATE, None, Some("a"))
                .unwrap_err()
                .code,
            40166
        );
        let any = Rights {
            delete_any: true,
            ..Rights::default()
        };
        assert!(any.check(Message::DELETE, None, Some("a")).is_ok());
        assert_eq!(
            any.check(Message::UPDATE, Some("a"), Some("a"))
                .unwrap_err()
                .code,
            40160
        );
    }

    #[test]
    fn updates_replace_what_they_carry_and_appends_join() {
        let original = message("e-1", "alice", "hello");
        let edit = Message {
            data: Some(Data::String("hi".into())),
            client_id: Some("mod".into()),
            action: Some(Message::UPDATE),
            version: Some(MessageVersion {
                description: Some("typo".into()),
                ..MessageVersion::default()
            }),
            ..Message::default()
        };
        let (edited, increment) = apply(&original, edit).unwrap();
        assert!(increment.is_none());
        assert_eq!(text(&edited), "hi");
        assert_eq!(edited.name.as_deref(), Some("chat"), "name kept");
        assert_eq!(edited.extras, original.extras, "extras kept");
        assert_eq!(
            edited.client_id.as_deref(),
            Some("alice"),
            "the author stays"
        );
        assert_eq!(edited.serial.as_deref(), Some("e-1"));
        let version = edited.version.as_ref().unwrap();
        assert_eq!(
            (version.client_id.as_deref(), version.description.as_deref()),
            (Some("mod"), Some("typo"))
        );

        let tail = Message {
            data: Some(Data::String(" world".into())),
            action: Some(Message::APPEND),
            ..Message::default()
        };
        let (whole, increment) = apply(&edited, tail).unwrap();
        assert_eq!(
            (text(&whole), whole.action),
            ("hi world", Some(Message::UPDATE))
        );
        let increment = increment.unwrap();
        assert_eq!(
            (text(&increment), increment.action),
            (" world", Some(Message::APPEND))
        );
        let binary = Message {
            data: Some(Data::Binary(vec![1].into())),
            action: Some(Message::APPEND),
            ..Message::default()
        };
        assert_eq!(apply(&whole, binary).unwrap_err().code, 40003);
    }

    #[test]
    fn changes_keep_the_authors_user_claim() {
        let mut original = message("e-1", "alice", "hello");
        original.extras = Some(serde_json::json!({"userClaim": "author"}));
        let edit = |extras| Message {
            data: Some(Data::String("hi".into())),
            client_id: Some("mod".into()),
            action: Some(Message::UPDATE),
            extras,
            ..Message::default()
        };
        let replaced = serde_json::json!({"headers": {"h": 1}, "userClaim": "editor"});
        let (edited, _) = apply(&original, edit(Some(replaced))).unwrap();
        assert_eq!(
            edited.extras,
            Some(serde_json::json!({"headers": {"h": 1}, "userClaim": "author"}))
        );
        let (kept, _) = apply(&edited, edit(None)).unwrap();
        assert_eq!(kept.extras, edited.extras);
        let unclaimed = message("e-2", "bob", "x");
        let forged = serde_json::json!({"headers": {}, "userClaim": "forged"});
        let (edited, _) = apply(&unclaimed, edit(Some(forged))).unwrap();
        assert_eq!(edited.extras, Some(serde_json::json!({"headers": {}})));
    }

    #[test]
    fn history_shows_each_message_once_in_its_latest_version() {
        let mut log: Vec<(u64, Message)> = vec![
            (1, message("e-1", "a", "one")),
            (2, message("e-2", "b", "two")),
        ];
        for (seq, data) in [(3, "one!"), (4, "one!!")] {
            let mut change = message("e-1", "a", data);
            change.action = Some(Message::UPDATE);
            change.timestamp = Some(9);
            change.version = Some(MessageVersion {
                serial: Some(format!("e-{seq}")),
                ..MessageVersion::default()
            });
            log.push((seq, change));
        }
        let read = |q: &Query| -> Result<Vec<(u64, Message)>, StoreError> {
            Ok(log
                .iter()
                .filter(|(s, _)| (q.from..=q.to).contains(s))
                .take(q.limit)
                .cloned()
                .collect())
        };
        let page = fold(&read, log.clone(), 4, 100).unwrap();
        let seen: Vec<(u64, &str, Option<i64>)> = page
            .iter()
            .map(|(s, m)| (*s, text(m), m.timestamp))
            .collect();
        assert_eq!(seen, [(1, "one!!", Some(5)), (2, "two", Some(5))]);
        let all = versions(&read, 1, 4).unwrap().unwrap();
        assert_eq!(
            all.iter().map(text).collect::<Vec<_>>(),
            ["one", "one!", "one!!"]
        );
        assert_eq!(
            versions(&read, 3, 4).unwrap(),
            None,
            "a change is no message"
        );
        let mut latest = Latest::default();
        assert_eq!(text(&latest.get(&read, 1, 4).unwrap().unwrap()), "one!!");
        assert_eq!(latest.get(&read, 9, 4).unwrap(), None);
    }
}
