//! [`ChannelLog`] on sled. One tree holds every channel: the key is the channel name, a 0xFF
//! byte (never part of UTF-8) and the serial big-endian, so each channel is one contiguous,
//! serial-ordered key range. The value is the timestamp big-endian followed by the message in
//! msgpack, so time filters and expiry read eight bytes instead of decoding. A second tree
//! keeps each channel's head (its newest serial ever), so serials are never reused after
//! retention has emptied a channel.

use std::ops::Bound;
use std::path::Path;

use protocol::Message;

use super::{Bounds, ChannelLog, Direction, Query, StoreError};

const SEPARATOR: u8 = 0xFF;

/// A sled-backed channel log: one tree of one database.
pub struct SledLog {
    db: sled::Db,
    messages: sled::Tree,
    heads: sled::Tree,
    epoch: String,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Engine(e.to_string())
    }
}

impl SledLog {
    /// The database, for other trees that share its fsync (the auth plugin's user table).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Opens (or creates) the message log in `dir` with a page cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<SledLog, StoreError> {
        Ok(SledLog::open_logs(dir, cache_bytes)?.0)
    }

    /// Opens the message log and the presence history log, two trees of one database that
    /// share its epoch and its fsync.
    pub fn open_logs(dir: &Path, cache_bytes: u64) -> Result<(SledLog, SledLog), StoreError> {
        let db = sled::Config::new()
            .path(dir.join("log"))
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(1000))
            .open()?;
        let meta = db.open_tree("meta")?;
        let epoch = match meta.get("epoch")? {
            Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            None => {
                let epoch = format!("{:08x}", rand::random::<u32>());
                meta.insert("epoch", epoch.as_bytes())?;
                db.flush()?;
                epoch
            }
        };
        Ok((
            SledLog {
                db: db.clone(),
                messages: db.open_tree("messages")?,
                heads: db.open_tree("messages-heads")?,
                epoch: epoch.clone(),
            },
            SledLog {
                messages: db.open_tree("presence")?,
                heads: db.open_tree("presence-heads")?,
                db,
                epoch,
            },
        ))
    }
}

fn key(channel: &str, serial: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(channel.len() + 9);
    key.extend_from_slice(channel.as_bytes());
    key.push(SEPARATOR);
    key.extend_from_slice(&serial.to_be_bytes());
    key
}

fn split_key(key: &[u8]) -> Option<(&[u8], u64)> {
    let (prefix, serial) = key.split_at(key.len().checked_sub(8)?);
    let (name, sep) = prefix.split_at(prefix.len().checked_sub(1)?);
    (sep == [SEPARATOR]).then(|| {
        (
            name,
            u64::from_be_bytes(serial.try_into().unwrap_or([0; 8])),
        )
    })
}

fn timestamp_of(value: &[u8]) -> i64 {
    value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, i64::from_be_bytes)
}

impl ChannelLog for SledLog {
    fn epoch(&self) -> &str {
        &self.epoch
    }

    fn bounds(&self, channel: &str) -> Result<Option<Bounds>, StoreError> {
        let range = key(channel, 0)..=key(channel, u64::MAX);
        let head = self
            .heads
            .get(channel)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes));
        let first = self.messages.range(range.clone()).next().transpose()?;
        let last = self.messages.range(range).next_back().transpose()?;
        let serial = |k: &[u8]| split_key(k).map_or(0, |(_, s)| s);
        Ok(match (first, last, head) {
            (Some((first_key, _)), Some((last_key, last_value)), head) => Some(Bounds {
                first: serial(&first_key),
                last: serial(&last_key).max(head.unwrap_or(0)),
                last_timestamp: timestamp_of(&last_value),
            }),
            (_, _, Some(head)) => Some(Bounds {
                first: head + 1,
                last: head,
                last_timestamp: 0,
            }),
            _ => None,
        })
    }

    fn append(&self, channel: &str, messages: &[(u64, &Message)]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (serial, message) in messages {
            let mut value = message.timestamp.unwrap_or(0).to_be_bytes().to_vec();
            value.extend_from_slice(&protocol::codec::encode_value(
                protocol::Format::Msgpack,
                message,
            ));
            batch.insert(key(channel, *serial), value);
        }
        self.messages.apply_batch(batch)?;
        if let Some((last, _)) = messages.last() {
            self.heads.insert(channel, &last.to_be_bytes())?;
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn read(&self, channel: &str, query: &Query) -> Result<Vec<(u64, Message)>, StoreError> {
        if query.from > query.to || query.limit == 0 {
            return Ok(Vec::new());
        }
        let range = self
            .messages
            .range(key(channel, query.from)..=key(channel, query.to));
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            match query.direction {
                Direction::Forwards => Box::new(range),
                Direction::Backwards => Box::new(range.rev()),
            };
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item?;
            let ts = timestamp_of(&v);
            // Timestamps never decrease along a channel (the sequencer enforces it), so once
            // past the window in the reading direction nothing later can match.
            if query.start_ms.is_some_and(|s| ts < s) {
                if query.direction == Direction::Backwards {
                    break;
                }
                continue;
            }
            if query.end_ms.is_some_and(|e| ts > e) {
                if query.direction == Direction::Forwards {
                    break;
                }
                continue;
            }
            let serial = split_key(&k).map_or(0, |(_, s)| s);
            let message: Message =
                protocol::codec::decode_value(protocol::Format::Msgpack, &v[8..]).map_err(
                    |_| StoreError::Corrupt {
                        channel: channel.to_owned(),
                        serial,
                    },
                )?;
            out.push((serial, message));
            if out.len() >= query.limit {
                break;
            }
        }
        Ok(out)
    }

    fn trim_before(&self, channel: &str, first_kept: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for item in self
            .messages
            .range(key(channel, 0)..key(channel, first_kept))
        {
            batch.remove(item?.0);
        }
        self.messages.apply_batch(batch)?;
        Ok(())
    }

    fn truncate_after(&self, channel: &str, last_kept: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for item in self
            .messages
            .range(key(channel, last_kept.saturating_add(1))..=key(channel, u64::MAX))
        {
            batch.remove(item?.0);
        }
        self.messages.apply_batch(batch)?;
        self.heads.insert(channel, &last_kept.to_be_bytes())?;
        Ok(())
    }

    fn expire_before(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        let mut removed = 0;
        let mut cursor: Bound<Vec<u8>> = Bound::Unbounded;
        loop {
            let next = self
                .messages
                .range::<Vec<u8>, _>((cursor.clone(), Bound::Unbounded))
                .next()
                .transpose()?;
            let Some((k, v)) = next else { break };
            let Some((name, _)) = split_key(&k) else {
                cursor = Bound::Excluded(k.to_vec());
                continue;
            };
            if timestamp_of(&v) < cutoff_ms {
                self.messages.remove(&k)?;
                removed += 1;
                cursor = Bound::Excluded(k.to_vec());
            } else {
                // The rest of this channel is newer: jump past its last possible key.
                let mut end = name.to_vec();
                end.push(SEPARATOR);
                end.extend_from_slice(&u64::MAX.to_be_bytes());
                cursor = Bound::Excluded(end);
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(ts: i64, name: &str) -> Message {
        Message {
            name: Some(name.into()),
            timestamp: Some(ts),
            ..Default::default()
        }
    }

    fn query(direction: Direction, limit: usize) -> Query {
        Query {
            from: 0,
            to: u64::MAX,
            start_ms: None,
            end_ms: None,
            direction,
            limit,
        }
    }

    #[test]
    fn channels_are_separate_ordered_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let epoch;
        {
            let log = SledLog::open(dir.path(), 1 << 20).unwrap();
            epoch = log.epoch().to_owned();
            let (a1, a2, b1) = (message(10, "a1"), message(20, "a2"), message(15, "b1"));
            log.append("a", &[(1, &a1), (2, &a2)]).unwrap();
            log.append("ab", &[(1, &b1)]).unwrap();
            log.sync().unwrap();
        }
        let log = SledLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(log.epoch(), epoch);
        let names = |v: Vec<(u64, Message)>| {
            v.into_iter()
                .map(|(_, m)| m.name.unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(log.read("a", &query(Direction::Forwards, 10)).unwrap()),
            ["a1", "a2"]
        );
        assert_eq!(
            names(log.read("a", &query(Direction::Backwards, 1)).unwrap()),
            ["a2"]
        );
        assert_eq!(
            names(log.read("ab", &query(Direction::Forwards, 10)).unwrap()),
            ["b1"]
        );
        assert_eq!(
            log.bounds("a").unwrap(),
            Some(Bounds {
                first: 1,
                last: 2,
                last_timestamp: 20
            })
        );
        assert_eq!(log.bounds("none").unwrap(), None);
    }

    #[test]
    fn time_windows_trimming_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path(), 1 << 20).unwrap();
        let msgs: Vec<Message> = (1..=5)
            .map(|i| message(i * 100, &format!("m{i}")))
            .collect();
        let refs: Vec<(u64, &Message)> = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| (i as u64 + 1, m))
            .collect();
        log.append("c", &refs).unwrap();
        log.append("d", &[(1, &message(50, "d1")), (2, &message(500, "d2"))])
            .unwrap();
        let mut q = query(Direction::Forwards, 10);
        q.start_ms = Some(200);
        q.end_ms = Some(400);
        assert_eq!(
            log.read("c", &q)
                .unwrap()
                .iter()
                .map(|(s, _)| *s)
                .collect::<Vec<_>>(),
            [2, 3, 4]
        );
        q.direction = Direction::Backwards;
        assert_eq!(
            log.read("c", &q)
                .unwrap()
                .iter()
                .map(|(s, _)| *s)
                .collect::<Vec<_>>(),
            [4, 3, 2]
        );
        log.trim_before("c", 3).unwrap();
        assert_eq!(log.bounds("c").unwrap().unwrap().first, 3);
        assert_eq!(log.expire_before(400).unwrap(), 2);
        assert_eq!(log.bounds("c").unwrap().unwrap().first, 4);
        assert_eq!(log.bounds("d").unwrap().unwrap().first, 2);
        // Once retention empties a channel, its head still says where serials continue.
        assert_eq!(log.expire_before(10_000).unwrap(), 3);
        let empty = log.bounds("c").unwrap().unwrap();
        assert_eq!((empty.first, empty.last), (6, 5));
    }

    #[test]
    fn truncate_after_undoes_an_append() {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path(), 1 << 20).unwrap();
        let (a, b, c) = (message(1, "a"), message(2, "b"), message(3, "c"));
        log.append("t", &[(1, &a), (2, &b), (3, &c)]).unwrap();
        log.truncate_after("t", 1).unwrap();
        let left = log.read("t", &query(Direction::Forwards, 10)).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(log.bounds("t").unwrap().unwrap().last, 1);
    }
}
