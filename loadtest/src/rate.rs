//! The open-loop rate limiter: send number `n` is due at `start + n / rate`, whatever happened
//! to the sends before it. A late publisher does not skip or re-space its sends; it catches up
//! in a burst, and the lateness counts as latency because payloads carry the due time.
//!
//! One lateness is the load generator's own, not the server's: a publisher that is on time
//! sleeps until its send is due, and tokio's timer wakes it up to a millisecond after that.
//! Every due time of one run lies at the same fraction of a millisecond, so that overshoot is
//! nearly the same for all of a run's sends and differs between runs: it moved one server's
//! median by 0.6 ms from run to run. So a send that had to wait is stamped with the moment it
//! woke, and only a send already due when its publisher got to it (a publisher held up by the
//! sends before it) is stamped with its due time.

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

    /// Waits until the next send is due and returns the time to stamp it with: its due time
    /// when the publisher is behind schedule, otherwise the moment the timer woke it (see the
    /// module's header). Cancel-safe: a tick dropped before it completes is handed out again.
    pub async fn tick(&mut self) -> Instant {
        let due = self.next_due();
        let behind = Instant::now() >= due;
        tokio::time::sleep_until(due.into()).await;
        self.sent += 1;
        if behind {
            due
        } else {
            Instant::now().max(due)
        }
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

    #[tokio::test]
    async fn a_publisher_behind_schedule_is_stamped_with_the_due_time() {
        let start = Instant::now() - Duration::from_secs(1);
        let mut p = Pacer::new(10.0, start);
        assert_eq!(p.tick().await, start);
        assert_eq!(p.tick().await, start + Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_publisher_that_waited_is_stamped_when_it_woke() {
        let due = Instant::now() + Duration::from_millis(20);
        let mut p = Pacer::new(10.0, due);
        let stamp = p.tick().await;
        assert!(stamp >= due);
        assert!(stamp <= Instant::now());
    }
}
