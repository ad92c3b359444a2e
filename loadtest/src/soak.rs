//! The soak scenario: the chat-rooms load held for the whole `--duration`, reported one line
//! per interval (deliveries/s, that interval's latency percentiles, its longest delivery gap,
//! the broker's CPU and RSS), then every connection closed and the broker's RSS read while it
//! sits idle. It answers "does memory level off under steady load, does it come back when the
//! clients leave, and does delivery ever stall", which a 15-second run cannot. Broker only, and
//! never part of `all`: it is meant to run for many minutes.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::actor::{close_all, open_many, Client};
use crate::finish;
use crate::recorder::{Recorder, Sample};
use crate::report::RunReport;
use crate::scenarios::{spawn_staggered, Context, Scale};

/// One interval of the load phase.
#[derive(Clone, Debug, Serialize)]
pub struct SoakInterval {
    /// Seconds since the load started, at the interval's end.
    pub t_s: f64,
    /// Deliveries per second during the interval.
    pub delivered_per_s: f64,
    /// Median delivery latency of the interval.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// The longest time in the interval during which no subscriber received anything.
    pub longest_gap_ms: f64,
    /// The broker's CPU use during the interval, in percent of one core.
    pub server_cpu_pct: Option<f64>,
    /// The broker's resident memory at the interval's end.
    pub server_rss_mib: Option<f64>,
}

/// One reading of the broker's memory after every connection closed.
#[derive(Clone, Debug, Serialize)]
pub struct IdleSample {
    /// Seconds since the last connection closed.
    pub t_s: f64,
    /// The broker's resident memory.
    pub server_rss_mib: Option<f64>,
}

/// What a soak run adds to its [`RunReport`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct SoakReport {
    /// Length of one interval, seconds.
    pub interval_s: f64,
    /// The load phase, one row per interval.
    pub intervals: Vec<SoakInterval>,
    /// The idle phase after closing every connection.
    pub idle: Vec<IdleSample>,
    /// Broker RSS before the scenario opened its connections.
    pub rss_before_connect_mib: Option<f64>,
    /// Broker RSS with every connection open and attached, before the load started.
    pub rss_connected_mib: Option<f64>,
    /// Broker RSS when the load stopped and in-flight deliveries had arrived.
    pub rss_end_of_load_mib: Option<f64>,
    /// Broker RSS at the end of the idle phase.
    pub rss_after_idle_mib: Option<f64>,
    /// The longest time over the load phase during which no subscriber received anything.
    pub longest_gap_ms: f64,
    /// The largest of the intervals' maximum latencies.
    pub worst_interval_max_ms: f64,
    /// The mean time between two publishes by the schedule (all rooms together): the gap to
    /// expect when nothing stalls.
    pub publish_gap_ms: f64,
}

/// The ends of the intervals that split `span` into steps of `step`, as offsets from its start;
/// the last one is shorter when `step` does not divide `span`. Empty for an empty span.
pub fn interval_ends(span: Duration, step: Duration) -> Vec<Duration> {
    let step = step.max(Duration::from_millis(1));
    let mut ends = Vec::new();
    let mut end = step;
    while end < span {
        ends.push(end);
        end += step;
    }
    if !span.is_zero() {
        ends.push(span);
    }
    ends
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

fn show_mib(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.1}"))
}

impl SoakInterval {
    /// The column headings of [`SoakInterval::line`].
    pub fn header() -> String {
        format!(
            "{:>8} {:>10} {:>8} {:>8} {:>9} {:>8} {:>8} {:>6} {:>8}",
            "t s",
            "deliv/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "gap ms",
            "cpu %",
            "rss MiB"
        )
    }

    /// The interval as one line of the table.
    pub fn line(&self) -> String {
        format!(
            "{:>8.1} {:>10.0} {:>8.2} {:>8.2} {:>9.2} {:>8.2} {:>8.2} {:>6} {:>8}",
            self.t_s,
            self.delivered_per_s,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms,
            self.longest_gap_ms,
            self.server_cpu_pct
                .map_or_else(|| "—".to_owned(), |c| format!("{c:.0}")),
            show_mib(self.server_rss_mib)
        )
    }

    /// The same numbers as a point of the plot.
    fn sample(&self) -> Sample {
        Sample {
            t_s: self.t_s,
            delivered_per_s: self.delivered_per_s,
            p50_ms: self.p50_ms,
            p99_ms: self.p99_ms,
            server_cpu_pct: self.server_cpu_pct,
            server_rss_mib: self.server_rss_mib,
        }
    }
}

impl IdleSample {
    /// The reading as one line.
    pub fn line(&self) -> String {
        format!(
            "  idle {:>6.1} s   rss {:>8} MiB",
            self.t_s,
            show_mib(self.server_rss_mib)
        )
    }
}

impl SoakReport {
    /// The interval with the largest maximum latency, if any.
    pub fn worst_interval(&self) -> Option<&SoakInterval> {
        self.intervals
            .iter()
            .max_by(|a, b| a.max_ms.total_cmp(&b.max_ms))
    }

    /// The readable table: every interval, the idle readings, and the summary lines an
    /// operator reads first.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", SoakInterval::header());
        for row in &self.intervals {
            let _ = writeln!(out, "{}", row.line());
        }
        let _ = writeln!(out, "after closing every connection:");
        for sample in &self.idle {
            let _ = writeln!(out, "{}", sample.line());
        }
        let idle_s = self.idle.last().map_or(0.0, |s| s.t_s);
        let _ = writeln!(
            out,
            "broker RSS, MiB: {} before connecting, {} connected, {} at the end of the load, {} after {idle_s:.0} s idle",
            show_mib(self.rss_before_connect_mib),
            show_mib(self.rss_connected_mib),
            show_mib(self.rss_end_of_load_mib),
            show_mib(self.rss_after_idle_mib),
        );
        let _ = writeln!(
            out,
            "longest stall (no subscriber received anything): {:.2} ms; a publish was due every {:.2} ms on average",
            self.longest_gap_ms, self.publish_gap_ms
        );
        match self.worst_interval() {
            Some(w) => {
                let _ = writeln!(
                    out,
                    "worst interval's max latency: {:.2} ms (the interval ending at {:.0} s)",
                    w.max_ms, w.t_s
                );
            }
            None => {
                let _ = writeln!(out, "worst interval's max latency: no interval");
            }
        }
        out
    }
}

/// R rooms × M members, every member publishing at rate r and receiving the whole room, for
/// the measuring window; then every connection closes and the broker idles.
pub async fn soak(ctx: &Context, scale: &Scale) -> RunReport {
    let recorder = Recorder::shared();
    let rss = || ctx.probe.and_then(|p| p.rss_bytes()).map(mib);
    let cpu = || ctx.probe.and_then(|p| p.cpu_seconds());
    let rooms = scale.soak_rooms.max(1);
    let m = scale.soak_members.max(1);
    let rate = scale.soak_rate;
    let interval = Duration::from_secs(scale.soak_interval.max(1));
    let idle = Duration::from_secs(scale.soak_idle);
    let label = format!("soak / {}", ctx.target.name());
    if ctx.probe.is_none() {
        eprintln!("{label}: no --broker-pid, so no RSS or CPU columns");
    }

    let mut soak = SoakReport {
        interval_s: interval.as_secs_f64(),
        rss_before_connect_mib: rss(),
        publish_gap_ms: 1000.0 / (rooms as f64 * m as f64 * rate.max(1e-9)),
        ..Default::default()
    };
    eprintln!("{label}: opening {} connections", rooms * m);
    let room = move |i: usize| format!("soak-{}", i / m);
    let members = open_many(
        &ctx.target,
        0,
        rooms * m,
        ctx.connect_concurrency,
        &recorder,
        false,
        |i| vec![room(i)],
    )
    .await;
    soak.rss_connected_mib = rss();
    let publishers: Vec<(Client, Vec<String>, f64)> = members
        .into_iter()
        .map(|(i, c)| (c, vec![room(i)], rate))
        .collect();

    recorder.reset_latency();
    let start = Instant::now();
    let deadline = start + ctx.window;
    let mut tasks = spawn_staggered(publishers, start, deadline, ctx.payload, &recorder);
    eprintln!(
        "{label}: {rooms} rooms × {m} members × {rate} msg/s for {} s, a line every {} s",
        ctx.window.as_secs(),
        interval.as_secs()
    );
    eprintln!("{}", SoakInterval::header());
    let mut clients = Vec::new();
    let (mut last_t, mut last_delivered, mut last_cpu) = (start, 0, cpu());
    for end in interval_ends(ctx.window, interval) {
        if end == ctx.window {
            // The last interval also takes what was in flight when the publishers stopped.
            for t in tasks.drain(..) {
                if let Ok((client, _)) = t.await {
                    clients.push(client);
                }
            }
            let expected = recorder.sent.load(Ordering::Relaxed) * m as u64;
            finish::drain(&recorder, expected, Duration::from_secs(3)).await;
        } else {
            tokio::time::sleep_until((start + end).into()).await;
        }
        let now = Instant::now();
        let dt = now.duration_since(last_t).as_secs_f64().max(1e-6);
        let delivered = recorder.delivered.load(Ordering::Relaxed);
        let (latency, gap) = recorder.take_interval();
        let cpu_now = cpu();
        let row = SoakInterval {
            t_s: now.duration_since(start).as_secs_f64(),
            delivered_per_s: (delivered - last_delivered) as f64 / dt,
            p50_ms: latency.p50_ms,
            p99_ms: latency.p99_ms,
            p999_ms: latency.p999_ms,
            max_ms: latency.max_ms,
            longest_gap_ms: gap.as_secs_f64() * 1000.0,
            server_cpu_pct: match (cpu_now, last_cpu) {
                (Some(c), Some(l)) => Some((c - l) / dt * 100.0),
                _ => None,
            },
            server_rss_mib: rss(),
        };
        eprintln!("{}", row.line());
        soak.intervals.push(row);
        (last_t, last_delivered, last_cpu) = (now, delivered, cpu_now);
    }
    // A zero-length window has no interval, and its publishers are still to be collected.
    for t in tasks {
        if let Ok((client, _)) = t.await {
            clients.push(client);
        }
    }
    let window = start.elapsed();
    soak.rss_end_of_load_mib = rss();
    soak.longest_gap_ms = recorder.longest_gap().as_secs_f64() * 1000.0;
    soak.worst_interval_max_ms = soak.worst_interval().map_or(0.0, |w| w.max_ms);

    eprintln!("{label}: closing {} connections", clients.len());
    close_all(clients).await;
    let closed = Instant::now();
    // Waiting is the point here: the broker gets time to hand memory back.
    let step = (idle / 3).clamp(Duration::from_secs(1), interval);
    for end in interval_ends(idle, step) {
        tokio::time::sleep_until((closed + end).into()).await;
        let sample = IdleSample {
            t_s: closed.elapsed().as_secs_f64(),
            server_rss_mib: rss(),
        };
        eprintln!("{}", sample.line());
        soak.idle.push(sample);
    }
    soak.rss_after_idle_mib = soak.idle.last().map_or_else(rss, |s| s.server_rss_mib);

    let sent = recorder.sent.load(Ordering::Relaxed);
    let expected = sent * m as u64;
    let delivered = recorder.delivered.load(Ordering::Relaxed);
    let mut report = RunReport {
        scenario: "soak".to_owned(),
        target: ctx.target.name().to_owned(),
        params: [
            ("rooms", rooms as f64),
            ("members", m as f64),
            ("rate_per_member", rate),
            ("interval_s", interval.as_secs_f64()),
            ("idle_s", idle.as_secs_f64()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
        window_s: window.as_secs_f64(),
        sent,
        delivered,
        expected: Some(expected),
        lost: Some(expected.saturating_sub(delivered)),
        delivered_per_s: delivered as f64 / window.as_secs_f64().max(1e-6),
        latency: recorder.latency(),
        errors: recorder.errors.load(Ordering::Relaxed),
        first_errors: recorder.first_errors(),
        samples: soak.intervals.iter().map(SoakInterval::sample).collect(),
        ..Default::default()
    };
    report.notes.push(
        "soak: a stall is a time during which no subscriber received anything; compare it with the mean time between publishes".into(),
    );
    report.summarise_server();
    report.soak = Some(soak);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn intervals_end_at_each_step_and_at_the_end_of_the_span() {
        assert_eq!(interval_ends(s(30), s(10)), vec![s(10), s(20), s(30)]);
        assert_eq!(interval_ends(s(25), s(10)), vec![s(10), s(20), s(25)]);
        assert_eq!(interval_ends(s(5), s(10)), vec![s(5)]);
        assert_eq!(interval_ends(Duration::ZERO, s(10)), Vec::<Duration>::new());
        assert_eq!(interval_ends(s(2), Duration::ZERO).len(), 2000);
    }

    fn row(t_s: f64, max_ms: f64) -> SoakInterval {
        SoakInterval {
            t_s,
            delivered_per_s: 10_000.0,
            p50_ms: 0.2,
            p99_ms: 0.5,
            p999_ms: 1.0,
            max_ms,
            longest_gap_ms: 1.5,
            server_cpu_pct: Some(25.0),
            server_rss_mib: Some(40.0),
        }
    }

    #[test]
    fn the_worst_interval_is_the_one_with_the_largest_max() {
        let report = SoakReport {
            intervals: vec![row(10.0, 3.0), row(20.0, 9.5), row(30.0, 4.0)],
            ..Default::default()
        };
        let worst = report.worst_interval().expect("three intervals");
        assert_eq!(worst.t_s, 20.0);
        assert!(SoakReport::default().worst_interval().is_none());
    }

    #[test]
    fn the_table_has_a_line_per_interval_and_reading() {
        let report = SoakReport {
            interval_s: 10.0,
            intervals: vec![row(10.0, 3.0), row(20.0, 9.5)],
            idle: vec![IdleSample {
                t_s: 10.0,
                server_rss_mib: Some(12.5),
            }],
            rss_before_connect_mib: Some(8.0),
            rss_connected_mib: Some(30.0),
            rss_end_of_load_mib: Some(41.0),
            rss_after_idle_mib: Some(12.5),
            longest_gap_ms: 2.25,
            worst_interval_max_ms: 9.5,
            publish_gap_ms: 0.1,
        };
        let table = report.table();
        assert_eq!(table.lines().count(), 1 + 2 + 1 + 1 + 3, "{table}");
        assert!(table.contains("8.0 before connecting"), "{table}");
        assert!(table.contains("12.5 after 10 s idle"), "{table}");
        assert!(table.contains("longest stall (no subscriber received anything): 2.25 ms"));
        assert!(table.contains("9.50 ms (the interval ending at 20 s)"));
        assert!(row(10.0, 3.0).line().ends_with("40.0"));
    }
}
