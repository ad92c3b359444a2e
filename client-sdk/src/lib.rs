//! A Rust realtime client for the broker — and for any server speaking Ably's realtime
//! protocol v6 — shaped like the React `useChannel` hook our users' chat apps already use.
//!
//! ```no_run
//! # async fn demo() -> Result<(), client_sdk::Error> {
//! use client_sdk::{Client, HistoryQuery};
//!
//! let client = Client::builder("http://127.0.0.1:8080").key("app.key:secret").connect().await?;
//! let channel = client
//!     .use_channel("chat:lobby", |message| println!("{:?}: {:?}", message.name, message.data))
//!     .await?;
//! channel.publish("message", "hello").await?;          // resolves once the broker stored it
//! channel.presence().enter("online").await?;
//! let members = channel.presence().get().await?;
//! let page = channel.history(HistoryQuery::default()).await?;
//! client.close().await;
//! # let _ = (members, page); Ok(()) }
//! ```
//!
//! # How it works
//! One task owns the WebSocket ([`Client`] handles are cheap clones that send it commands).
//! Publishes resolve on the broker's ACK, in order; a NACK is an [`Error::Ably`] with the Ably
//! code. When the socket drops, the task reconnects (at once, then with backoff and jitter),
//! resumes the connection with its key, sends unacknowledged publishes again with their
//! msgSerials (the broker de-duplicates them), re-attaches every channel from its last serial so
//! nothing is missed or repeated, and re-enters its presence members. Tokens are renewed when
//! the broker asks (AUTH) or refuses one (40140–40149), from [`ClientBuilder::auth_url`] or
//! [`ClientBuilder::auth_callback`].
//!
//! # When the app does not keep up
//! Each [`Subscription`] buffers [`ClientBuilder::subscription_buffer`] items (default 1024).
//! When it is full, further items for that subscription are dropped and counted in
//! [`Subscription::lagged`]; the connection and other subscriptions are unaffected. Use
//! [`Channel::history`] to fill a gap.
//!
//! Section numbers (§) refer to `../shared/ably-protocol.md`.

mod auth;
mod channel;
mod client;
pub mod data;
mod driver;
pub mod error;
pub mod options;

pub use channel::{Channel, HistoryPage, HistoryQuery, Presence, Subscription};
pub use client::{Client, ClientBuilder};
pub use data::Payload;
pub use error::Error;
/// Presence actions as they appear in [`PresenceMessage::action`] (§6.1): the protocol's own
/// type, so a member from [`Presence::get`] or a presence subscription is matched on
/// `PresenceAction::Enter`, `PresenceAction::Leave` and so on.
pub use protocol::PresenceAction;
pub use protocol::{Data, Format, Message, PresenceMessage};

/// Where the connection is (the states of ably-js's `connection.state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// Not started.
    Initialized,
    /// Opening a socket.
    Connecting,
    /// Connected; publishes flow.
    Connected,
    /// The socket dropped; retrying, publishes queue.
    Disconnected,
    /// Down for longer than the server keeps state; queued publishes failed; retrying slowly.
    Suspended,
    /// Closing on request.
    Closing,
    /// Closed on request.
    Closed,
    /// Failed for good (e.g. invalid credentials).
    Failed,
}
