//! Criterion benchmarks live in `benches/benches/`, one file per area; this library is empty.
