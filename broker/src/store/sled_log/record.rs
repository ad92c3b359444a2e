//! The bytes of a record and of its index entry. A record is a header — entry count (u32),
//! last serial (u64), last timestamp (i64) — then its entries, each serial (u64), timestamp
//! (i64), length (u32) and the message in msgpack, all big-endian. An index entry is the same
//! header followed by the record's [`Location`], so bounds, retention counts and expiry read
//! only the index; only the records a read returns are fetched and only their returned
//! messages decoded. An append of more than 32 KiB is cut into several records. An index key
//! is the channel name, a 0xFF byte and the record's first serial big-endian.

use crate::store::segments::{tagged_frame, Location};
use crate::store::StoreError;

/// Ends the channel name in an index key; never part of UTF-8.
pub(super) const SEPARATOR: u8 = 0xFF;
/// Bytes of a record's header.
pub(super) const HEADER_LEN: usize = 4 + 8 + 8;
const ENTRY_PREFIX_LEN: usize = 8 + 8 + 4;
/// Bytes of an index entry: the record's header and where the record is.
const INDEX_LEN: usize = HEADER_LEN + Location::LEN;
/// A record is closed once its entries reach this many bytes.
pub(super) const RECORD_BYTES: usize = 32 * 1024;

/// The index key of the record starting at `serial` in `channel`.
pub(super) fn key(channel: &str, serial: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(channel.len() + 9);
    key.extend_from_slice(channel.as_bytes());
    key.push(SEPARATOR);
    key.extend_from_slice(&serial.to_be_bytes());
    key
}

/// The channel name and first serial of an index key.
pub(super) fn split_key(key: &[u8]) -> Option<(&[u8], u64)> {
    let (prefix, serial) = key.split_at(key.len().checked_sub(8)?);
    let (name, sep) = prefix.split_at(prefix.len().checked_sub(1)?);
    (sep == [SEPARATOR]).then(|| (name, be_u64(serial)))
}

/// The big-endian `u64` at the start of `bytes`; 0 when there are fewer than 8.
pub(super) fn be_u64(bytes: &[u8]) -> u64 {
    bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// The index entry of the record at `record_at` in `frame` (a frame written at `at`): the
/// record's header, then `at`.
pub(super) fn index_value(frame: &[u8], record_at: usize, at: Location) -> Vec<u8> {
    let mut value = Vec::with_capacity(INDEX_LEN);
    value.extend_from_slice(&frame[record_at..record_at + HEADER_LEN]);
    at.encode(&mut value);
    value
}

/// A record's header: what bounds, retention and expiry need without reading the record.
pub(super) struct Header {
    pub(super) count: u64,
    pub(super) last_serial: u64,
    pub(super) last_timestamp: i64,
}

impl Header {
    pub(super) fn parse(bytes: &[u8]) -> Option<Header> {
        (bytes.len() >= HEADER_LEN).then(|| Header {
            count: u64::from(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])),
            last_serial: be_u64(&bytes[4..12]),
            last_timestamp: be_u64(&bytes[12..20]) as i64,
        })
    }
}

/// An index entry: a record's header and location.
pub(super) struct Index {
    pub(super) header: Header,
    pub(super) at: Location,
}

impl Index {
    pub(super) fn parse(value: &[u8]) -> Option<Index> {
        Some(Index {
            header: Header::parse(value)?,
            at: Location::decode(value.get(HEADER_LEN..)?)?,
        })
    }
}

/// One stored message, still encoded.
pub(super) struct Entry<'a> {
    pub(super) serial: u64,
    pub(super) timestamp: i64,
    pub(super) body: &'a [u8],
}

/// The entries of a record read back from its segment.
pub(super) struct Record<'a> {
    entries: &'a [u8],
}

impl<'a> Record<'a> {
    pub(super) fn parse(record: &'a [u8]) -> Option<Record<'a>> {
        Some(Record {
            entries: record.get(HEADER_LEN..)?,
        })
    }

    /// The entries oldest first; a truncated tail ends the iteration.
    pub(super) fn entries(&self) -> impl DoubleEndedIterator<Item = Entry<'a>> {
        let mut entries = Vec::new();
        let mut rest = self.entries;
        while rest.len() >= ENTRY_PREFIX_LEN {
            let len = u32::from_be_bytes([rest[16], rest[17], rest[18], rest[19]]) as usize;
            let Some(body) = rest.get(ENTRY_PREFIX_LEN..ENTRY_PREFIX_LEN + len) else {
                break;
            };
            entries.push(Entry {
                serial: be_u64(rest),
                timestamp: be_u64(&rest[8..]) as i64,
                body,
            });
            rest = &rest[ENTRY_PREFIX_LEN + len..];
        }
        entries.into_iter()
    }
}

/// Builds one record, entry by entry, in serial order, in a tagged frame
/// ([`tagged_frame`]).
pub(super) struct RecordBuilder {
    frame: Vec<u8>,
    record_at: usize,
    first: Option<u64>,
    count: u32,
    last_serial: u64,
    last_timestamp: i64,
}

/// A record ready for [`Segments::write`](crate::store::segments::Segments::write): its first serial (its key), its frame, and where
/// in the frame the record starts.
pub(super) struct Finished {
    pub(super) first: u64,
    pub(super) frame: Vec<u8>,
    pub(super) record_at: usize,
}

impl RecordBuilder {
    pub(super) fn new(tag: &[u8]) -> Result<RecordBuilder, StoreError> {
        let (mut frame, record_at) = tagged_frame(tag, HEADER_LEN + 256)?;
        frame.resize(record_at + HEADER_LEN, 0);
        Ok(RecordBuilder {
            frame,
            record_at,
            first: None,
            count: 0,
            last_serial: 0,
            last_timestamp: 0,
        })
    }

    /// Adds an entry whose message `write_body` appends to the record in place.
    pub(super) fn push(
        &mut self,
        serial: u64,
        timestamp: i64,
        write_body: impl FnOnce(&mut Vec<u8>),
    ) {
        self.frame.extend_from_slice(&serial.to_be_bytes());
        self.frame.extend_from_slice(&timestamp.to_be_bytes());
        let len_at = self.frame.len();
        self.frame.extend_from_slice(&[0; 4]);
        write_body(&mut self.frame);
        let len = (self.frame.len() - len_at - 4) as u32;
        self.frame[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        self.first.get_or_insert(serial);
        self.count += 1;
        self.last_serial = serial;
        self.last_timestamp = timestamp;
    }

    /// Bytes of entries so far.
    pub(super) fn entry_bytes(&self) -> usize {
        self.frame.len() - self.record_at - HEADER_LEN
    }

    /// The finished record; `None` when it has no entry.
    pub(super) fn finish(mut self) -> Option<Finished> {
        let first = self.first?;
        let header = &mut self.frame[self.record_at..self.record_at + HEADER_LEN];
        header[..4].copy_from_slice(&self.count.to_be_bytes());
        header[4..12].copy_from_slice(&self.last_serial.to_be_bytes());
        header[12..20].copy_from_slice(&self.last_timestamp.to_be_bytes());
        Some(Finished {
            first,
            frame: self.frame,
            record_at: self.record_at,
        })
    }
}
