//! The load generator: runs open-loop scenarios against the broker and, side by side, against
//! nats-server over WebSocket (JetStream for durable publishing), then prints a table, writes a
//! JSON report, a Markdown section for `docs/performance.md`, and an SVG plot per scenario.
//! `scripts/perf.sh` drives it; see `docs/performance.md` for the scenarios and targets.

mod ably;
mod actor;
mod clock;
mod finish;
mod nats;
mod rate;
mod recorder;
mod report;
mod scenarios;
mod soak;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::actor::Target;
use crate::recorder::ProcessProbe;
use crate::report::Report;
use crate::scenarios::{Context, Scale};

/// Every scenario, in the order `all` runs them.
const SCENARIOS: [&str; 7] = [
    "fanout",
    "chat-rooms",
    "many-channels",
    "connect-storm",
    "resume-storm",
    "presence-churn",
    "durable-publish",
];

/// Scenarios that run only when named: too long for `all`.
const ON_REQUEST: [&str; 1] = ["soak"];

/// Load-test the broker, optionally side by side with NATS.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Comma-separated scenarios, or `all`: fanout, chat-rooms, many-channels, connect-storm,
    /// resume-storm, presence-churn, durable-publish. `soak` (broker only, minutes long) runs
    /// only when named.
    #[arg(long, default_value = "all", value_delimiter = ',')]
    scenarios: Vec<String>,
    /// The broker's address, `ws://127.0.0.1:PORT`; for a cluster, every node's,
    /// comma-separated: clients spread over them in turn.
    #[arg(long)]
    broker: Option<String>,
    /// The API key `name:secret` for the broker.
    #[arg(long, default_value = "")]
    key: String,
    /// The broker's pid, for CPU and RSS from /proc.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// nats-server's WebSocket address, `ws://127.0.0.1:PORT`; enables the side-by-side runs.
    #[arg(long)]
    nats: Option<String>,
    /// nats-server's pid.
    #[arg(long)]
    nats_pid: Option<u32>,
    /// Measuring window of each scenario, seconds (soak: how long the load is held).
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Payload bytes (at least 16: the timestamp and sequence number).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Connections opened at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Pause between runs so the servers settle, seconds.
    #[arg(long, default_value_t = 2)]
    settle: u64,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the Markdown results here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Write one `<scenario>.svg` per scenario into this directory.
    #[arg(long)]
    svg_dir: Option<PathBuf>,
    /// Publish every message with `extras.ephemeral = true` (broker only; NATS runs ignore it):
    /// fanned out, never stored or fsynced, ACKed with a null serial. Compare a run with and
    /// without it to see what an ephemeral (typing) event costs against a stored message;
    /// `scripts/perf-ephemeral.sh` does.
    #[arg(long)]
    ephemeral: bool,
    /// Worker threads of the load generator's tokio runtime [default: the number of CPUs].
    /// Raise it on a many-core machine so the generator is not what limits a run.
    #[arg(long)]
    workers: Option<usize>,
    #[command(flatten)]
    scale: Scale,
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1048576.0);
    format!("{cpus} CPUs ({model}), {mem_gib:.0} GiB RAM")
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(run(args, workers))
}

/// Runs the chosen scenarios against every target and writes the results.
async fn run(args: Args, workers: usize) -> Result<(), String> {
    // One descriptor per client connection: raise the soft limit to the hard one.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => eprintln!("loadtest: open-file limit {n}"),
        Err(e) => eprintln!("loadtest: could not raise the open-file limit: {e}"),
    }
    let scenarios: Vec<String> = if args.scenarios.iter().any(|s| s == "all") {
        SCENARIOS.iter().map(|s| (*s).to_owned()).collect()
    } else {
        args.scenarios.clone()
    };
    let known = |s: &str| SCENARIOS.contains(&s) || ON_REQUEST.contains(&s);
    if let Some(bad) = scenarios.iter().find(|s| !known(s)) {
        return Err(format!(
            "unknown scenario {bad:?}; known: {SCENARIOS:?}, and on request {ON_REQUEST:?}"
        ));
    }
    let mut targets = Vec::new();
    if let Some(url) = &args.broker {
        let mut endpoint = ably::Endpoint::parse(url, &args.key)?;
        endpoint.ephemeral = args.ephemeral;
        targets.push((
            Target::Broker(endpoint),
            args.broker_pid.map(ProcessProbe::new),
        ));
    }
    if let Some(url) = &args.nats {
        targets.push((
            Target::Nats(url.clone()),
            args.nats_pid.map(ProcessProbe::new),
        ));
    }
    if targets.is_empty() {
        return Err("give --broker and/or --nats".to_owned());
    }
    let mut report = Report {
        machine: machine(),
        workers,
        runs: Vec::new(),
    };
    for scenario in &scenarios {
        for (target, probe) in &targets {
            let broker_only = matches!(
                scenario.as_str(),
                "resume-storm" | "presence-churn" | "soak"
            );
            if broker_only && !matches!(target, Target::Broker(_)) {
                eprintln!(
                    "{scenario} runs against the broker only; skipping {}",
                    target.name()
                );
                continue;
            }
            let ctx = Context {
                target: target.clone(),
                probe: *probe,
                window: Duration::from_secs(args.duration),
                payload: args.payload.max(clock::HEADER_LEN),
                connect_concurrency: args.connect_concurrency,
            };
            let mut run = match scenario.as_str() {
                "fanout" => scenarios::fanout(&ctx, &args.scale).await,
                "chat-rooms" => scenarios::chat_rooms(&ctx, &args.scale).await,
                "many-channels" => scenarios::many_channels(&ctx, &args.scale).await,
                "connect-storm" => scenarios::connect_storm(&ctx, &args.scale).await,
                "resume-storm" => scenarios::resume_storm(&ctx, &args.scale).await,
                "presence-churn" => scenarios::presence_churn(&ctx, &args.scale).await,
                "soak" => soak::soak(&ctx, &args.scale).await,
                _ => scenarios::durable_publish(&ctx, &args.scale).await,
            };
            if args.ephemeral && matches!(target, Target::Broker(_)) {
                run.notes.push(
                    "--ephemeral: every publish carried extras.ephemeral = true (not stored)"
                        .into(),
                );
            }
            eprintln!(
                "{scenario} / {}: {:.0} deliveries/s, p99 {:.2} ms, lost {:?}, errors {}",
                run.target, run.delivered_per_s, run.latency.p99_ms, run.lost, run.errors
            );
            report.runs.push(run);
            tokio::time::sleep(Duration::from_secs(args.settle)).await;
        }
    }
    println!("{}", report.table());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, report.markdown()).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(dir) = &args.svg_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for scenario in &scenarios {
            if let Some(svg) = report.svg(scenario) {
                let path = dir.join(format!("{scenario}.svg"));
                std::fs::write(&path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_is_off_unless_asked() {
        let args = Args::try_parse_from(["loadtest", "--broker", "127.0.0.1:1"]).expect("parses");
        assert!(!args.ephemeral);
        let args = Args::try_parse_from([
            "loadtest",
            "--broker",
            "127.0.0.1:1",
            "--scenarios",
            "chat-rooms,durable-publish",
            "--ephemeral",
        ])
        .expect("parses");
        assert!(args.ephemeral);
        assert_eq!(args.scenarios, ["chat-rooms", "durable-publish"]);
    }

    #[test]
    fn ephemeral_takes_no_value() {
        assert!(Args::try_parse_from(["loadtest", "--ephemeral=yes"]).is_err());
    }
}
