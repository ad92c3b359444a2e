//! The channel log seam: an ordered, durable list of messages per channel, addressed by
//! serial. [`ChannelLog`] is the trait the rest of the broker sees; [`sled_log::SledLog`] is
//! the implementation, and [`commit::Committer`] batches the fsyncs of many appends into one
//! (group commit) so that an ACK always means "on disk" without one fsync per message.
//! [`database::Database`] owns the data directory's sled database, which the logs share with
//! the other trees kept there (users, revocations); each gets its own handle from it.

pub mod commit;
pub mod database;
mod indexer;
pub mod segments;
pub mod sled_log;

pub use database::Database;

use protocol::Message;

/// Why the log failed. Cloneable so one failed group commit can answer every waiter.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine reported an error.
    #[error("storage: {0}")]
    Engine(String),
    /// A write whose outcome is unknown: the store did not confirm it in time, and it may
    /// still be stored (cluster mode; a resend with the same ids is stored once).
    #[error("{0}")]
    Unconfirmed(String),
    /// A stored record did not decode (disk corruption or a format change).
    #[error("corrupt record in channel {channel} at serial {serial}")]
    Corrupt {
        /// The channel of the record.
        channel: String,
        /// The record's serial.
        serial: u64,
    },
}

/// Read order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Oldest first.
    Forwards,
    /// Newest first.
    Backwards,
}

/// A range read of one channel: serials `from..=to`, optionally only messages whose timestamp
/// lies in `start_ms..=end_ms`, in `direction`, at most `limit`.
#[derive(Clone, Debug)]
pub struct Query {
    /// Lowest serial to return.
    pub from: u64,
    /// Highest serial to return.
    pub to: u64,
    /// Earliest timestamp to return (ms).
    pub start_ms: Option<i64>,
    /// Latest timestamp to return (ms).
    pub end_ms: Option<i64>,
    /// Read order.
    pub direction: Direction,
    /// Most messages to return.
    pub limit: usize,
}

/// What [`ChannelLog::retain_newest`] left of a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retained {
    /// The oldest serial kept, if any message is left.
    pub first: Option<u64>,
    /// How many messages are left.
    pub held: u64,
}

/// The serials a channel's log holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Oldest retained serial.
    pub first: u64,
    /// Newest serial.
    pub last: u64,
    /// Timestamp of the newest message.
    pub last_timestamp: i64,
}

/// An ordered per-channel message log. Appends become durable only after [`ChannelLog::sync`].
pub trait ChannelLog: Send + Sync + 'static {
    /// The log's identity. Serials from another epoch (a wiped data directory) are never
    /// taken as positions in this one (§5.5).
    fn epoch(&self) -> &str;
    /// The retained range of `channel`, or `None` when nothing was ever appended. When every
    /// message has been removed by retention, `first` is `last + 1`: serials are never reused.
    fn bounds(&self, channel: &str) -> Result<Option<Bounds>, StoreError>;
    /// Appends messages that already carry their serials (in ascending order) and timestamps.
    fn append(&self, channel: &str, messages: &[(u64, &Message)]) -> Result<(), StoreError>;
    /// Makes every append so far durable. Blocking: call it off the async runtime.
    fn sync(&self) -> Result<(), StoreError>;
    /// Reads messages with their serials.
    fn read(&self, channel: &str, query: &Query) -> Result<Vec<(u64, Message)>, StoreError>;
    /// Removes every message of `channel` with a serial below `first_kept`.
    fn trim_before(&self, channel: &str, first_kept: u64) -> Result<(), StoreError>;
    /// Keeps only the newest `keep` messages of `channel`, counting messages, not serials
    /// (serials have gaps after an unclean stop). Returns what is left.
    fn retain_newest(&self, channel: &str, keep: u64) -> Result<Retained, StoreError>;
    /// Removes the oldest `count` messages of `channel`, counting messages, not serials, and
    /// reading only what it removes (where [`ChannelLog::retain_newest`] reads what it keeps).
    /// Returns the oldest serial left, `None` when nothing is.
    fn drop_oldest(&self, channel: &str, count: u64) -> Result<Option<u64>, StoreError>;
    /// Removes every message of `channel` with a serial above `last_kept` (undoing an append
    /// that could not be made durable). The channel's head stays where the append put it:
    /// subscribers may have seen those serials, so they are never given out again.
    fn truncate_after(&self, channel: &str, last_kept: u64) -> Result<(), StoreError>;
    /// Removes messages older than `cutoff_ms` from every channel; returns how many.
    fn expire_before(&self, cutoff_ms: i64) -> Result<u64, StoreError>;
    /// Syncs and records that the broker stopped cleanly, so the next start trusts the
    /// channels' heads as they are (see [`UNCLEAN_STOP_SKIP`]).
    fn close_cleanly(&self) -> Result<(), StoreError>;
    /// How the log's background checkpoints are doing, for `/metrics`; `None` for a log
    /// without them.
    fn checkpoint_health(&self) -> Option<CheckpointHealth> {
        None
    }
}

/// How a log's checkpoints are doing (see "Storage layout" in `architecture.md`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CheckpointHealth {
    /// Time since the last checkpoint that succeeded. It grows past the interval only while
    /// checkpoints fail: then a start after a crash replays more, and no segment is deleted.
    pub age: std::time::Duration,
    /// How long the last successful checkpoint took.
    pub last_duration: std::time::Duration,
    /// Checkpoints failed since the last that succeeded.
    pub failures_in_a_row: u64,
}

/// How far every channel's serials jump after an unclean stop. Subscribers may receive a
/// message before its fsync (only its ACK waits), so a crash can lose serials that clients
/// have seen; skipping past them means no serial is ever given to two different messages.
/// The sequencer never lets more than half of this run ahead of the last sync.
pub const UNCLEAN_STOP_SKIP: u64 = 1 << 20;

/// Formats a channel position as the opaque `channelSerial` / message `serial` clients see:
/// `<epoch>-<serial>` with the serial zero-padded so that serials compare as strings.
pub fn format_serial(epoch: &str, serial: u64) -> String {
    // Once per published message: written out by hand, as `format!` costs several times more.
    let mut text = String::with_capacity(epoch.len() + 1 + 20);
    text.push_str(epoch);
    text.push('-');
    push_decimal(&mut text, serial, 16);
    text
}

/// Appends `n` in decimal, zero-padded to at least `width` digits.
pub fn push_decimal(out: &mut String, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = at.min(digits.len().saturating_sub(width));
    out.extend(digits[start..].iter().map(|&d| char::from(d)));
}

/// Parses a `channelSerial` into (epoch, serial); `None` when it is not one of ours.
pub fn parse_serial(text: &str) -> Option<(&str, u64)> {
    let (epoch, serial) = text.rsplit_once('-')?;
    Some((epoch, serial.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_round_trip_and_sort_as_strings() {
        let a = format_serial("e1", 9);
        let b = format_serial("e1", 10);
        assert!(a < b);
        assert_eq!(parse_serial(&b), Some(("e1", 10)));
        assert_eq!(b, "e1-0000000000000010");
        assert_eq!(format_serial("e", u64::MAX), format!("e-{}", u64::MAX));
        let mut text = String::new();
        push_decimal(&mut text, 0, 0);
        push_decimal(&mut text, 7, 3);
        push_decimal(&mut text, 1234, 2);
        assert_eq!(text, "00071234");
        assert_eq!(parse_serial("garbage"), None);
        assert_eq!(parse_serial("e1-x"), None);
    }
}
