//! The channel log in sled (`log/append`, `log/read`): appending one message per call against
//! a batch of 100 (what the sequencer's group commit does), with and without the fsync that
//! precedes every ACK, and reading a page of 100 from a channel of 10,000.

use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use protocol::{Data, Message};

use broker::store::sled_log::SledLog;
use broker::store::{ChannelLog, Direction, Query};

fn message(i: u64) -> Message {
    Message {
        id: Some(format!("conn:{i}:0")),
        name: Some("message".into()),
        data: Some(Data::String("x".repeat(200))),
        client_id: Some("alice".into()),
        timestamp: Some(1_760_000_000_000 + i as i64),
        ..Default::default()
    }
}

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = SledLog::open(dir.path(), 64 << 20).expect("log opens");
    let mut group = c.benchmark_group("log/append");
    let mut next = 0u64;
    for (batch, sync) in [(1usize, false), (100, false), (1, true), (100, true)] {
        let messages: Vec<Message> = (0..batch as u64).map(message).collect();
        group.throughput(Throughput::Elements(batch as u64));
        let label = format!(
            "{}{}",
            if batch == 1 { "single" } else { "batch100" },
            if sync { "+fsync" } else { "" }
        );
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| {
                let refs: Vec<(u64, &Message)> = messages
                    .iter()
                    .map(|m| {
                        next += 1;
                        (next, m)
                    })
                    .collect();
                log.append("bench", &refs).expect("append");
                if sync {
                    log.sync().expect("sync");
                }
            })
        });
    }
    group.finish();
}

fn read(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = SledLog::open(dir.path(), 64 << 20).expect("log opens");
    let messages: Vec<Message> = (1..=10_000).map(message).collect();
    let refs: Vec<(u64, &Message)> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| (i as u64 + 1, m))
        .collect();
    log.append("history", &refs).expect("append");
    let mut group = c.benchmark_group("log/read");
    group.throughput(Throughput::Elements(100));
    for direction in [Direction::Backwards, Direction::Forwards] {
        let query = Query {
            from: 0,
            to: u64::MAX,
            start_ms: None,
            end_ms: None,
            direction,
            limit: 100,
        };
        group.bench_function(format!("page100/{direction:?}"), |b| {
            b.iter(|| log.read("history", &query).expect("read"))
        });
    }
    group.finish();
}

mod entry {
    //! Criterion's generated entry points.
    #![allow(missing_docs)]
    use super::{append, read};
    criterion::criterion_group!(benches, append, read);
}

criterion_main!(entry::benches);
