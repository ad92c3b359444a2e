//! When a scenario is done: a fixed measuring window shown as a progress bar, then a drain
//! that waits for in-flight deliveries until the expected count arrives or nothing has moved
//! for a while. The drain is what turns "not delivered" into a loss count rather than a race.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::recorder::Recorder;

/// The window and the progress bar of one scenario run.
pub struct Finish {
    bar: ProgressBar,
    start: Instant,
    window: Duration,
}

impl Finish {
    /// A window of `window` starting now, labelled `label`.
    pub fn start(label: &str, window: Duration) -> Finish {
        let bar = ProgressBar::new(window.as_secs().max(1));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>28} [{bar:30}] {pos}/{len}s {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_owned());
        Finish {
            bar,
            start: Instant::now(),
            window,
        }
    }

    /// When the window ends.
    pub fn deadline(&self) -> Instant {
        self.start + self.window
    }

    /// Shows a status line on the bar.
    pub fn say(&self, message: impl Into<String>) {
        self.bar.set_message(message.into());
    }

    /// Ticks the bar with the delivery rate until the window ends.
    pub async fn wait_window(&self, recorder: &Recorder) {
        let mut last = recorder.delivered.load(Ordering::Relaxed);
        let mut last_t = Instant::now();
        while Instant::now() < self.deadline() {
            let step = self
                .deadline()
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(500));
            tokio::time::sleep(step).await;
            let now = Instant::now();
            let delivered = recorder.delivered.load(Ordering::Relaxed);
            let rate = (delivered - last) as f64 / now.duration_since(last_t).as_secs_f64();
            self.bar
                .set_position(now.duration_since(self.start).as_secs());
            self.bar.set_message(format!(
                "{rate:>10.0} deliveries/s, {} errors",
                recorder.errors.load(Ordering::Relaxed)
            ));
            last = delivered;
            last_t = now;
        }
    }

    /// Waits until `recorder` has `expected` deliveries, or none arrived for `stall`.
    pub async fn drain(&self, recorder: &Recorder, expected: u64, stall: Duration) {
        drain(recorder, expected, stall).await;
    }

    /// Removes the bar.
    pub fn done(self) {
        self.bar.finish_and_clear();
    }
}

/// Waits until `recorder` has `expected` deliveries, or none arrived for `stall`; for a
/// scenario that reports its own progress instead of showing a bar.
pub async fn drain(recorder: &Recorder, expected: u64, stall: Duration) {
    let mut last = recorder.delivered.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    while last < expected && last_change.elapsed() < stall {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = recorder.delivered.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_change = Instant::now();
        }
    }
}
