//! In-process fan-out (`fanout/outboxes`): one published ProtocolMessage encoded once per wire
//! format and the same frame pushed to 1, 100 and 10,000 subscriber outboxes, as the
//! sequencer does; the outboxes are drained before the timer stops, so queueing is counted.

use std::sync::Arc;

use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use protocol::{Action, Data, Format, Message, ProtocolMessage};

use broker::connection::outbox::{encode_frame, Outbox};
use broker::metrics::Metrics;

fn fanout(c: &mut Criterion) {
    let message = ProtocolMessage {
        channel: Some("chat:room".into()),
        id: Some("conn:1".into()),
        connection_id: Some("conn".into()),
        timestamp: Some(1_760_000_000_000),
        channel_serial: Some("e-0000000000000001".into()),
        messages: Some(vec![Message {
            name: Some("message".into()),
            data: Some(Data::String("hello there".into())),
            ..Default::default()
        }]),
        ..ProtocolMessage::new(Action::Message)
    };
    let metrics = Arc::new(Metrics::new());
    let mut group = c.benchmark_group("fanout/outboxes");
    for subscribers in [1usize, 100, 10_000] {
        let mut outboxes: Vec<_> = (0..subscribers)
            .map(|i| {
                let format = if i % 2 == 0 {
                    Format::Json
                } else {
                    Format::Msgpack
                };
                Outbox::new(format, 1 << 20, metrics.clone())
            })
            .collect();
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(subscribers),
            &subscribers,
            |b, _| {
                b.iter(|| {
                    let json = encode_frame(Format::Json, &message);
                    let msgpack = encode_frame(Format::Msgpack, &message);
                    for (outbox, _) in &outboxes {
                        let frame = match outbox.format() {
                            Format::Json => json.clone(),
                            Format::Msgpack => msgpack.clone(),
                        };
                        outbox.try_push(frame).expect("outbox has room");
                    }
                    for (_, receiver) in &mut outboxes {
                        while receiver.try_recv().is_some() {}
                    }
                })
            },
        );
    }
    group.finish();
}

mod entry {
    //! Criterion's generated entry points.
    #![allow(missing_docs)]
    use super::fanout;
    criterion::criterion_group!(benches, fanout);
}

criterion_main!(entry::benches);
