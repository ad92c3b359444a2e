//! In-process fan-out (`fanout/outboxes`): the channel's real hub (`broker::channel::hub`)
//! broadcasting one published ProtocolMessage to 1, 100 and 10,000 attached subscribers, half
//! JSON and half msgpack: encoded once per wire format, the same frame pushed to every outbox.
//! The outboxes are drained before the timer stops, so queueing is counted.

use std::sync::Arc;

use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use protocol::{flags, Action, Data, Format, Message, ProtocolMessage};

use broker::channel::hub::{Audience, Hub};
use broker::channel::Subscriber;
use broker::metrics::Metrics;
use broker::outbox::Outbox;

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
        let mut hub = Hub::default();
        let attached = ProtocolMessage::for_channel(Action::Attached, "chat:room");
        let mut receivers: Vec<_> = (0..subscribers)
            .map(|i| {
                let format = if i % 2 == 0 {
                    Format::Json
                } else {
                    Format::Msgpack
                };
                let (outbox, receiver) = Outbox::new(format, 1 << 20, metrics.clone());
                let subscriber = Subscriber {
                    connection_id: Arc::from(format!("conn{i}")),
                    socket_id: 1,
                    outbox,
                    modes: flags::MODE_SUBSCRIBE,
                    echo: true,
                    occupancy: false,
                    last_client_sync: None,
                };
                hub.join(subscriber, &attached, &[], Vec::new());
                receiver
            })
            .collect();
        for receiver in &mut receivers {
            while receiver.try_recv().is_some() {}
        }
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(subscribers),
            &subscribers,
            |b, _| {
                b.iter(|| {
                    let delivered = hub.broadcast(&message, Audience::Subscribers { origin: None });
                    assert_eq!(delivered, subscribers as u64, "every outbox has room");
                    for receiver in &mut receivers {
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
