//! Capability matching (`capability/operations`): the check made on every attach, publish and
//! presence operation, for a small capability and for a token intersected with its key's.

use criterion::{criterion_main, Criterion, Throughput};
use protocol::{Capability, Operation};

fn matching(c: &mut Criterion) {
    let key = Capability::parse(
        r#"{"chat:*":["publish","subscribe","presence"],"news":["subscribe"],"admin:*:log":["history"],"[*]*":["stats"]}"#,
    )
    .expect("capability parses");
    let token = Capability::parse(r#"{"chat:*":["publish","subscribe"],"*":["history"]}"#)
        .expect("capability parses")
        .intersect(key.clone());
    let mut group = c.benchmark_group("capability/operations");
    group.throughput(Throughput::Elements(1));
    group.bench_function("key", |b| {
        b.iter(|| key.allows("chat:room:42", Operation::Publish))
    });
    group.bench_function("token∩key", |b| {
        b.iter(|| token.allows("chat:room:42", Operation::Publish))
    });
    group.bench_function("miss", |b| {
        b.iter(|| key.allows("elsewhere:x", Operation::Publish))
    });
    group.finish();
}

mod entry {
    //! Criterion's generated entry points.
    #![allow(missing_docs)]
    use super::matching;
    criterion::criterion_group!(benches, matching);
}

criterion_main!(entry::benches);
