//! The open-loop rate limiter: send number `n` is due at `start + n / rate`, whatever happened
//! to the sends before it. A late publisher does not skip or re-space its sends; it catches up
//! in a burst, and the lateness counts as latency because payloads carry the due time.

use std::time::{Duration, Instant};

/// Hands out the due times of a fixed-rate schedule and sleeps until each.
#[derive(Debug)]
pub struct Pacer {
    start: Instant,
    interval: Duration,
    sent: u64,
}

impl Pacer {
    /// A schedule of `rate` sends per second starting at `start` (a rate of 0 is treated as 1).
    pub fn new(rate: f64, start: Instant) -> Self {
        let rate = if rate > 0.0 { rate } else { 1.0 };
        Pacer {
            start,
            interval: Duration::from_secs_f64(1.0 / rate),
            sent: 0,
        }
    }

    /// The due time of the next send, without waiting.
    pub fn next_due(&self) -> Instant {
        self.start + self.interval.mul_f64(self.sent as f64)
    }

    /// Waits until the next send is due and returns its due time. Cancel-safe: a tick
    /// dropped before it completes is handed out again.
    pub async fn tick(&mut self) -> Instant {
        let due = self.next_due();
        tokio::time::sleep_until(due.into()).await;
        self.sent += 1;
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_evenly_spaced_from_start() {
        let start = Instant::now();
        let mut p = Pacer::new(100.0, start);
        assert_eq!(p.next_due(), start);
        p.sent = 10;
        assert_eq!(p.next_due(), start + Duration::from_millis(100));
    }
}
