//! [`Broker`]: the handles every connection and request handler shares (configuration,
//! authenticators, the channel registry, sessions, logs, metrics, the shutdown signal). Kept
//! apart from the accept loop in `server.rs`, so the modules that use it (http, connection,
//! actions, revocation) do not import the module that starts them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::auth::{Authenticator, KeyAuthenticator};
use crate::channel::Channels;
use crate::config::Config;
use crate::connection::session::Sessions;
use crate::dev_users::DevUsers;
use crate::lifecycle::{TaskGuard, Tasks};
use crate::metrics::Metrics;
use crate::moderation::Moderation;
use crate::revocation::Revocations;
use crate::store::ChannelLog;

/// Everything a connection or request handler needs, shared behind one `Arc`.
pub struct Broker {
    /// The validated configuration.
    pub config: Config,
    /// Verifies credentials.
    pub authenticator: Arc<dyn Authenticator>,
    /// API keys, for `requestToken` and minting tokens.
    pub keys: Arc<KeyAuthenticator>,
    /// The name of the key that signs tokens minted for Auth0 users.
    pub token_key: String,
    /// The Auth0 plugin, when configured.
    pub auth0: Option<Arc<auth_plugin::AuthPlugin>>,
    /// The development login's users, while the development login is on.
    pub dev_users: Option<DevUsers>,
    /// Revoked tokens (revokeTokens, deleted users).
    pub revocations: Arc<Revocations>,
    /// Running channel sequencers.
    pub channels: Arc<Channels>,
    /// Live and resumable connections.
    pub sessions: Arc<Sessions>,
    /// This node's part in the cluster, in cluster mode.
    pub cluster: Option<Arc<crate::cluster::ClusterNode>>,
    /// The message log.
    pub log: Arc<dyn ChannelLog>,
    /// The presence history log.
    pub presence_log: Arc<dyn ChannelLog>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The before-publish moderation hook, when `[moderation] url` is set.
    pub moderation: Option<Arc<Moderation>>,
    /// Becomes true when the broker shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// The source of socket ids (see [`Broker::next_socket_id`]).
    pub(crate) next_socket: AtomicU64,
    /// Long-running tasks, which shutdown waits for.
    pub(crate) tasks: Tasks,
}

impl Broker {
    /// A fresh socket id.
    pub fn next_socket_id(&self) -> u64 {
        self.next_socket.fetch_add(1, Ordering::Relaxed)
    }

    /// Open WebSocket connections.
    pub fn connection_count(&self) -> usize {
        self.metrics.connections.get().max(0) as usize
    }

    /// Registers a long-running task that shutdown waits for (`None` once shutting down).
    pub fn track_task(&self) -> Option<TaskGuard> {
        self.tasks.guard()
    }
}
