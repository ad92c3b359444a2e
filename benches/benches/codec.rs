//! Protocol codec benchmarks: encode and decode one MESSAGE ProtocolMessage in JSON and msgpack
//! at 32 B, 1 KiB and 16 KiB of binary payload (`codec/<format>/<op>`).

use bytes::Bytes;
use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use protocol::{Action, Data, Format, Message, ProtocolMessage};

fn sample(size: usize) -> ProtocolMessage {
    ProtocolMessage {
        channel: Some("chat:room-1".into()),
        id: Some("c7Hq2a:42".into()),
        connection_id: Some("c7Hq2a".into()),
        timestamp: Some(1_760_000_000_000),
        channel_serial: Some("0badcafe-0000000000000042".into()),
        messages: Some(vec![Message {
            id: Some("c7Hq2a:42:0".into()),
            name: Some("message".into()),
            data: Some(Data::Binary(Bytes::from(vec![7u8; size]))),
            client_id: Some("alice".into()),
            ..Default::default()
        }]),
        ..ProtocolMessage::new(Action::Message)
    }
}

fn codec(c: &mut Criterion) {
    for format in [Format::Json, Format::Msgpack] {
        let name = match format {
            Format::Json => "json",
            Format::Msgpack => "msgpack",
        };
        let mut group = c.benchmark_group(format!("codec/{name}"));
        for size in [32, 1024, 16 * 1024] {
            let message = sample(size);
            let encoded = protocol::encode(format, &message);
            group.throughput(Throughput::Bytes(encoded.len() as u64));
            group.bench_with_input(BenchmarkId::new("encode", size), &message, |b, m| {
                b.iter(|| protocol::encode(format, m))
            });
            group.bench_with_input(BenchmarkId::new("decode", size), &encoded, |b, e| {
                b.iter(|| protocol::decode(format, e).expect("decodes"))
            });
        }
        group.finish();
    }
}

mod entry {
    //! Criterion's generated entry points.
    #![allow(missing_docs)]
    use super::codec;
    criterion::criterion_group!(benches, codec);
}

criterion_main!(entry::benches);
