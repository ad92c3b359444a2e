//! What a run measures: one HDR histogram of latencies for the whole run and one per sampling
//! interval (for the plot), the longest time without any delivery, counters of sends,
//! deliveries and errors, and the broker's CPU and RSS read from `/proc/<pid>` once a second.
//! Actors record into one shared [`Recorder`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::clock;

/// Latency histograms are in microseconds, from 1 µs to 10 minutes, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

struct Histograms {
    total: Histogram<u64>,
    interval: Histogram<u64>,
    /// Kept under the histograms' lock, so deliveries reach it in the order they took it.
    gaps: DeliveryGaps,
}

/// The longest time without a delivery, over the run and over the current interval. Only the
/// time *between* two deliveries counts: before the first and after the last, the scenario is
/// connecting or draining, not stalled. A delivery whose timestamp is older than the latest one
/// seen (two readers racing for the lock) counts as no gap.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeliveryGaps {
    last: Option<Instant>,
    run: Duration,
    interval: Duration,
}

impl DeliveryGaps {
    /// Notes a delivery at `at`.
    pub fn observe(&mut self, at: Instant) {
        if let Some(last) = self.last {
            let gap = at.saturating_duration_since(last);
            self.run = self.run.max(gap);
            self.interval = self.interval.max(gap);
            self.last = Some(last.max(at));
        } else {
            self.last = Some(at);
        }
    }

    /// The longest gap since the previous call (a gap counts in the interval where it ends),
    /// then starts a new interval.
    pub fn take_interval(&mut self) -> Duration {
        std::mem::take(&mut self.interval)
    }

    /// The longest gap since the start or the last reset.
    pub fn longest(&self) -> Duration {
        self.run
    }
}

/// The shared sink of every actor's measurements.
pub struct Recorder {
    histograms: Mutex<Histograms>,
    /// Messages (or operations) sent.
    pub sent: AtomicU64,
    /// Messages delivered to a subscriber, or operations acknowledged.
    pub delivered: AtomicU64,
    /// Failed operations, unexpected frames, dropped connections.
    pub errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            histograms: Mutex::new(Histograms {
                total: new_histogram(),
                interval: new_histogram(),
                gaps: DeliveryGaps::default(),
            }),
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_errors: Mutex::new(Vec::new()),
        }
    }
}

impl Recorder {
    /// A fresh recorder behind an `Arc`, ready to hand to actors.
    pub fn shared() -> Arc<Recorder> {
        Arc::new(Recorder::default())
    }

    /// Records one delivery whose payload was scheduled at `scheduled_us` (µs since the epoch).
    pub fn delivery(&self, scheduled_us: u64) {
        let now = Instant::now();
        let latency = clock::micros_at(now).saturating_sub(scheduled_us);
        let mut h = self.histograms.lock().expect("histogram lock");
        h.record(latency);
        h.gaps.observe(now);
        drop(h);
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a latency without counting a delivery.
    pub fn latency_us(&self, latency: u64) {
        self.histograms
            .lock()
            .expect("histogram lock")
            .record(latency);
    }

    /// Counts one sent message or started operation.
    pub fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an error; the first few are kept verbatim for the report.
    pub fn error(&self, what: impl Into<String>) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_errors.lock().expect("error lock");
        if first.len() < 5 {
            first.push(what.into());
        }
    }

    /// The first errors seen.
    pub fn first_errors(&self) -> Vec<String> {
        self.first_errors.lock().expect("error lock").clone()
    }

    /// Percentiles of the whole run.
    pub fn latency(&self) -> Latency {
        Latency::of(&self.histograms.lock().expect("histogram lock").total)
    }

    /// Percentiles and the longest delivery gap since the previous call, then starts a new
    /// interval.
    pub fn take_interval(&self) -> (Latency, Duration) {
        let mut h = self.histograms.lock().expect("histogram lock");
        let l = Latency::of(&h.interval);
        h.interval.reset();
        (l, h.gaps.take_interval())
    }

    /// The longest time between two deliveries since the last reset.
    pub fn longest_gap(&self) -> Duration {
        self.histograms
            .lock()
            .expect("histogram lock")
            .gaps
            .longest()
    }

    /// Forgets every latency and delivery gap recorded so far (after a warm-up).
    pub fn reset_latency(&self) {
        let mut h = self.histograms.lock().expect("histogram lock");
        h.total.reset();
        h.interval.reset();
        h.gaps = DeliveryGaps::default();
    }
}

impl Histograms {
    fn record(&mut self, latency_us: u64) {
        let latency = latency_us.clamp(1, 600_000_000);
        self.total.saturating_record(latency);
        self.interval.saturating_record(latency);
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    /// How many latencies were recorded.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// CPU time and resident memory of a local process, from `/proc/<pid>`.
#[derive(Clone, Copy, Debug)]
pub struct ProcessProbe {
    pid: u32,
}

/// Linux reports CPU time in clock ticks; 100 per second on every mainstream kernel config.
const TICKS_PER_SECOND: f64 = 100.0;

impl ProcessProbe {
    /// A probe of `pid`.
    pub fn new(pid: u32) -> Self {
        ProcessProbe { pid }
    }

    /// User plus system CPU seconds used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // The command name may contain spaces; fields after it are space-separated.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) / TICKS_PER_SECOND)
    }

    /// Resident set size in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
}

/// One point of the time series behind the plot.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Seconds since the scenario started.
    pub t_s: f64,
    /// Deliveries (or acknowledged operations) per second during the interval.
    pub delivered_per_s: f64,
    /// Median latency during the interval.
    pub p50_ms: f64,
    /// 99th-percentile latency during the interval.
    pub p99_ms: f64,
    /// The server's CPU use during the interval, in percent of one core.
    pub server_cpu_pct: Option<f64>,
    /// The server's resident memory.
    pub server_rss_mib: Option<f64>,
}

/// Samples a [`Recorder`] and the server process once a second until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Starts sampling `recorder` and, if given, the server process.
    pub fn start(recorder: Arc<Recorder>, probe: Option<ProcessProbe>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut samples = Vec::new();
            let mut last_t = start;
            let mut last_delivered = recorder.delivered.load(Ordering::Relaxed);
            let mut last_cpu = probe.and_then(|p| p.cpu_seconds());
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.tick().await;
            while !flag.load(Ordering::Relaxed) {
                ticker.tick().await;
                let now = Instant::now();
                let dt = now.duration_since(last_t).as_secs_f64().max(1e-6);
                let delivered = recorder.delivered.load(Ordering::Relaxed);
                let cpu = probe.and_then(|p| p.cpu_seconds());
                let (interval, _) = recorder.take_interval();
                samples.push(Sample {
                    t_s: now.duration_since(start).as_secs_f64(),
                    delivered_per_s: (delivered - last_delivered) as f64 / dt,
                    p50_ms: interval.p50_ms,
                    p99_ms: interval.p99_ms,
                    server_cpu_pct: match (cpu, last_cpu) {
                        (Some(c), Some(l)) => Some((c - l) / dt * 100.0),
                        _ => None,
                    },
                    server_rss_mib: probe
                        .and_then(|p| p.rss_bytes())
                        .map(|b| b as f64 / 1048576.0),
                });
                last_t = now;
                last_delivered = delivered;
                last_cpu = cpu;
            }
            samples
        });
        Sampler { stop, task }
    }

    /// Stops sampling and returns the series.
    pub async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn gaps_count_only_between_deliveries() {
        let t0 = Instant::now();
        let mut gaps = DeliveryGaps::default();
        assert_eq!(gaps.longest(), Duration::ZERO);
        gaps.observe(t0 + ms(1000));
        assert_eq!(
            gaps.longest(),
            Duration::ZERO,
            "the wait before the first is no gap"
        );
        gaps.observe(t0 + ms(1002));
        gaps.observe(t0 + ms(1030));
        gaps.observe(t0 + ms(1031));
        assert_eq!(gaps.longest(), ms(28));
    }

    #[test]
    fn gap_intervals_restart_and_the_run_keeps_its_longest() {
        let t0 = Instant::now();
        let mut gaps = DeliveryGaps::default();
        gaps.observe(t0);
        gaps.observe(t0 + ms(50));
        assert_eq!(gaps.take_interval(), ms(50));
        gaps.observe(t0 + ms(55));
        assert_eq!(gaps.take_interval(), ms(5));
        assert_eq!(gaps.take_interval(), Duration::ZERO, "no delivery, no gap");
        // A gap spanning an interval's end counts in the interval where it ends.
        gaps.observe(t0 + ms(75));
        assert_eq!(gaps.take_interval(), ms(20));
        assert_eq!(gaps.longest(), ms(50));
    }

    #[test]
    fn an_older_delivery_is_no_gap_and_does_not_move_the_clock_back() {
        let t0 = Instant::now();
        let mut gaps = DeliveryGaps::default();
        gaps.observe(t0 + ms(10));
        gaps.observe(t0 + ms(4));
        gaps.observe(t0 + ms(12));
        assert_eq!(gaps.longest(), ms(2));
    }

    #[test]
    fn a_reset_forgets_gaps() {
        let recorder = Recorder::default();
        recorder.delivery(clock::now_micros());
        recorder.delivery(clock::now_micros());
        recorder.reset_latency();
        assert_eq!(recorder.longest_gap(), Duration::ZERO);
        assert_eq!(recorder.take_interval().1, Duration::ZERO);
        assert_eq!(recorder.latency().count, 0);
    }
}
