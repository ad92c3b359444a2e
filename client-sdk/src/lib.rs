//! A Rust realtime client for the broker with a `use_channel`-style API. Not yet implemented;
//! the wire types it will speak live in the `protocol` crate.
