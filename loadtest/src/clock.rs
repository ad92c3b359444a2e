//! One clock for the whole process and the payload that carries it. Every publish carries its
//! *scheduled* send time (not the moment it actually left), so a stalled publisher shows up as
//! latency instead of silently sending less: the coordinated-omission-safe measurement. (A
//! publisher that was on time carries the moment its timer woke it; see `rate`.)

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

/// The process's reference point: an `Instant` and the wall-clock microseconds it stands for.
fn base() -> &'static (Instant, u64) {
    static BASE: OnceLock<(Instant, u64)> = OnceLock::new();
    BASE.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        (Instant::now(), wall)
    })
}

/// Microseconds since the Unix epoch of `at`, on the monotonic clock of this process.
pub fn micros_at(at: Instant) -> u64 {
    let (start, wall) = *base();
    wall + at.saturating_duration_since(start).as_micros() as u64
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> u64 {
    micros_at(Instant::now())
}

/// Smallest payload: the scheduled time and a sequence number, 8 bytes each.
pub const HEADER_LEN: usize = 16;

/// A payload of `size` bytes (at least [`HEADER_LEN`]) stamped with `scheduled` and `seq`.
pub fn payload(scheduled: Instant, seq: u64, size: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(size.max(HEADER_LEN));
    buf.put_u64(micros_at(scheduled));
    buf.put_u64(seq);
    buf.resize(size.max(HEADER_LEN), b'x');
    buf.freeze()
}

/// The scheduled time (µs since the epoch) and sequence number of a payload, if it is one.
pub fn read_payload(data: &[u8]) -> Option<(u64, u64)> {
    if data.len() < HEADER_LEN {
        return None;
    }
    let ts = u64::from_be_bytes(data[0..8].try_into().ok()?);
    let seq = u64::from_be_bytes(data[8..16].try_into().ok()?);
    Some((ts, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips() {
        let at = Instant::now();
        let p = payload(at, 42, 64);
        assert_eq!(p.len(), 64);
        assert_eq!(read_payload(&p), Some((micros_at(at), 42)));
        assert_eq!(read_payload(b"short"), None);
    }
}
