//! The broker: a self-hosted realtime messaging server that speaks Ably's realtime protocol v6
//! over WebSocket and REST on one port, with durable, ordered per-channel logs in sled.
//! Start it with [`run`]; `docs/architecture.md` walks one message through these modules.

pub mod actions;
pub mod auth;
pub mod auth0;
pub mod backend;
pub mod broker;
pub mod channel;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod dev_users;
pub mod error;
pub mod http;
pub mod lifecycle;
pub mod metrics;
pub mod moderation;
pub mod outbox;
pub mod revocation;
pub mod server;
pub mod store;

pub use broker::Broker;
pub use config::Config;
pub use server::{run, run_then};
