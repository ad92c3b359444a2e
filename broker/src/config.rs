//! Broker configuration: one serde struct tree with every default in its `Default` impl, read
//! from a TOML file, overridden by environment variables and flags (see `docs/configuration.md`),
//! and checked once by [`Config::validate`] at start-up. Secrets never appear in `Debug` output.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::Capability;
use serde::Deserialize;

/// Everything the broker needs to run.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the one port serving WebSocket and REST. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Directory of the sled database (and the development key). Default `./data`.
    pub data_dir: PathBuf,
    /// API keys. With none configured, a development key is created on first start.
    pub keys: Vec<KeyConfig>,
    /// Limits on what clients may send and hold.
    pub limits: Limits,
    /// How long channel logs keep messages.
    pub retention: Retention,
    /// Connection timing advertised to clients.
    pub connection: ConnectionSettings,
    /// Durability of the channel log.
    pub storage: Storage,
    /// Presence behaviour.
    pub presence: PresenceSettings,
    /// How a hot channel's deliveries spread over the worker threads.
    pub fanout: FanoutSettings,
    /// Channel behaviour: occupancy events.
    pub channels: ChannelSettings,
    /// Cluster mode on NATS JetStream; off unless NATS servers are listed.
    pub cluster: ClusterSettings,
    /// Auth0 / OIDC logins (the auth plugin); off unless `domain` is set.
    pub auth0: auth_plugin::Auth0Config,
    /// The before-publish moderation hook; off unless `url` is set.
    pub moderation: ModerationSettings,
    /// Name of this node in `connectionDetails.serverId`. Default `broker-1`.
    pub server_id: String,
    /// A directory of static files (a built web app) served at `/`. Default: none.
    pub web_root: Option<PathBuf>,
    /// Let anyone get a token for a username of their choice at `/api/dev/login`, for trying
    /// the app on a fresh machine. Never on while Auth0 is configured. Default: on only when
    /// the broker runs on its generated development key.
    pub dev_login: Option<bool>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            keys: Vec::new(),
            limits: Limits::default(),
            retention: Retention::default(),
            connection: ConnectionSettings::default(),
            storage: Storage::default(),
            presence: PresenceSettings::default(),
            fanout: FanoutSettings::default(),
            channels: ChannelSettings::default(),
            cluster: ClusterSettings::default(),
            auth0: auth_plugin::Auth0Config::default(),
            moderation: ModerationSettings::default(),
            server_id: "broker-1".to_owned(),
            web_root: None,
            dev_login: None,
        }
    }
}

/// One API key: `name:secret` with a capability.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key name, e.g. `app.key`; no `:`.
    pub name: String,
    /// The secret; no `.`, `:` or whitespace (ably-js checks the key's shape, §1).
    pub secret: String,
    /// The capability as Ably JSON text. Default: everything, `{"*":["*"]}`.
    #[serde(default = "all_capability")]
    pub capability: String,
}

fn all_capability() -> String {
    r#"{"*":["*"]}"#.to_owned()
}

impl KeyConfig {
    /// Parses `name:secret` as given to `--key`, with full capability.
    pub fn parse(full: &str) -> Result<KeyConfig, String> {
        let (name, secret) = full
            .split_once(':')
            .ok_or_else(|| format!("key {full:?} is not of the form name:secret"))?;
        Ok(KeyConfig {
            name: name.to_owned(),
            secret: secret.to_owned(),
            capability: all_capability(),
        })
    }
}

impl std::fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyConfig")
            .field("name", &self.name)
            .field("secret", &"<hidden>")
            .field("capability", &self.capability)
            .finish()
    }
}

/// Limits on client input. Every one is advertised or documented; exceeding one gets an Ably
/// error, never a panic.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest publish (sum of name, clientId, extras and data, §7.5). Default 65536.
    pub max_message_size: usize,
    /// Largest WebSocket frame or REST body. Default 524288.
    pub max_frame_size: usize,
    /// Bytes queued for one connection before it counts as a slow consumer and is
    /// disconnected (resumably). Default 8 MiB.
    pub outbox_bytes: usize,
    /// Publishes of one connection awaiting their ACK before the broker stops reading its
    /// socket. Default 512.
    pub max_pending_publishes: usize,
    /// Channels one connection may have attached. Default 1000.
    pub max_channels_per_connection: usize,
    /// Longest channel name in bytes. Default 256.
    pub max_channel_name_length: usize,
    /// Concurrent WebSocket connections. Default 100000.
    pub max_connections: usize,
    /// Most messages a rewind delivers (Ably caps at 100). Default 100.
    pub max_rewind: usize,
    /// Most messages replayed on a resumed attach; beyond it the attach is not resumed and
    /// the client reads history instead. Default 10000.
    pub max_resume_replay: usize,
    /// Time allowed for the HTTP request of a connection. Default 10 s.
    pub handshake_timeout_ms: u64,
    /// Read buffer of each WebSocket, allocated up front: the main per-connection memory cost
    /// of an idle connection. Larger helps connections that publish a lot. Default 1024.
    pub socket_read_buffer_bytes: usize,
    /// How many bytes of outgoing frames a WebSocket gathers before it writes them (it also
    /// writes whenever its queue runs empty). Its buffer keeps the largest size it reached, so
    /// this bounds a busy connection's writer memory. Default 16384.
    pub socket_write_buffer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 65_536,
            max_frame_size: 524_288,
            outbox_bytes: 8 << 20,
            max_pending_publishes: 512,
            max_channels_per_connection: 1000,
            max_channel_name_length: 256,
            max_connections: 100_000,
            max_rewind: 100,
            max_resume_replay: 10_000,
            handshake_timeout_ms: 10_000,
            socket_read_buffer_bytes: 1024,
            socket_write_buffer_bytes: 16 * 1024,
        }
    }
}

/// How long a channel's log keeps messages: whichever limit is reached first.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Age after which messages are removed, in seconds. Default 86400 (24 h).
    pub max_age_secs: u64,
    /// Messages kept per channel. Default 10000.
    pub max_messages_per_channel: u64,
    /// How often expired messages are swept, in seconds. Default 60.
    pub sweep_interval_secs: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age_secs: 86_400,
            max_messages_per_channel: 10_000,
            sweep_interval_secs: 60,
        }
    }
}

/// Cluster mode (`docs/operations.md`, "Cluster mode"): several broker nodes serve the same
/// channels through NATS JetStream, which orders, replicates and keeps every channel's
/// messages (`../shared/cluster.md`). Every node must be given the same values, keys and Auth0
/// settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// NATS server URLs (`nats://host:port`). Empty, the default: one node on its embedded
    /// store.
    pub nats: Vec<String>,
    /// This node's name, unique in the cluster. Default: the host name and the listen port.
    pub node_id: Option<String>,
    /// How many JetStream streams the channels are spread over, by a hash of their names.
    /// Fixed when the cluster is first started. Default 8.
    pub shards: u32,
    /// Copies of each stream on the NATS servers (1, 3 or 5). Default: 3 when three or more
    /// servers are listed, else 1.
    pub replicas: Option<usize>,
    /// Prefix of the streams' names and subjects. Default `ably`.
    pub prefix: String,
    /// How long JetStream remembers message ids to store a resent publish once, in seconds;
    /// at least the resume window (`connection_state_ttl_ms`). Default 300.
    pub duplicate_window_secs: u64,
    /// How long a publish is retried through a JetStream leader election before it is
    /// NACKed, in ms. Default 12000 (an election takes 4–9 s).
    pub publish_deadline_ms: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            nats: Vec::new(),
            node_id: None,
            shards: 8,
            replicas: None,
            prefix: "ably".to_owned(),
            duplicate_window_secs: 300,
            publish_deadline_ms: 12_000,
        }
    }
}

impl ClusterSettings {
    /// Whether cluster mode is on.
    pub fn enabled(&self) -> bool {
        !self.nats.is_empty()
    }

    /// This node's name: as configured, else `<host name>-<listen port>`, which stays the
    /// same across restarts of the same node.
    pub fn node_name(&self, listen: SocketAddr) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "node".to_owned());
        format!("{host}-{}", listen.port())
    }

    /// Stream replicas: as configured, or 3 with three or more servers, else 1.
    pub fn replicas(&self) -> usize {
        self.replicas
            .unwrap_or(if self.nats.len() >= 3 { 3 } else { 1 })
    }
}

/// Connection timing, sent to clients in `connectionDetails` (§4.3).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionSettings {
    /// Longest server silence before a HEARTBEAT, in ms. Default 15000.
    pub max_idle_interval_ms: u64,
    /// How long the state of a dropped connection is kept for resume, in ms. Default 120000.
    pub connection_state_ttl_ms: u64,
    /// How long before a token expires the broker asks for a new one (AUTH), in ms.
    /// Default 30000.
    pub token_renewal_lead_ms: u64,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            max_idle_interval_ms: 15_000,
            connection_state_ttl_ms: 120_000,
            token_renewal_lead_ms: 30_000,
        }
    }
}

/// Presence (§6).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceSettings {
    /// How long the members of an abruptly dropped connection stay present, waiting for it to
    /// resume, before they leave, in ms. Default 15000 (Ably's).
    pub leave_grace_ms: u64,
    /// Members per SYNC page sent on attach. Default 100.
    pub sync_page_size: usize,
    /// Most members one channel may hold; more enters are refused with 91003. Default 20000.
    pub max_members_per_channel: usize,
}

impl Default for PresenceSettings {
    fn default() -> Self {
        PresenceSettings {
            leave_grace_ms: 15_000,
            sync_page_size: 100,
            max_members_per_channel: 20_000,
        }
    }
}

/// Fan-out of a channel with many attachers (`channel/hub.rs`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FanoutSettings {
    /// Shards a large channel's attachers are split into, each pushed by a task of its own;
    /// 0 means one per worker thread of the runtime, 1 never splits. Default 0.
    pub shards: usize,
    /// Attachers from which a channel's broadcasts are split. Default 512.
    pub min_attachers: usize,
}

impl Default for FanoutSettings {
    fn default() -> Self {
        FanoutSettings {
            shards: 0,
            min_attachers: 512,
        }
    }
}

/// Channel behaviour beyond messages and presence.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelSettings {
    /// Least time between two occupancy events (`[meta]occupancy`) of one channel, in ms,
    /// for changes that take no count to or from zero; those go at once. Default 15000
    /// (Ably's).
    pub occupancy_interval_ms: u64,
    /// Most clientIds an annotation summary lists per name (`message.summary`, history,
    /// `getMessage`); beyond them the entry says `clipped: true` and `total` stays exact.
    /// Default 100.
    pub summary_client_ids: usize,
}

impl Default for ChannelSettings {
    fn default() -> Self {
        ChannelSettings {
            occupancy_interval_ms: 15_000,
            summary_client_ids: 100,
        }
    }
}

/// The before-publish moderation hook (`docs/configuration.md`, "Moderation"): an HTTP
/// endpoint of the operator's that sees each message before it is stored and may reject it.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModerationSettings {
    /// Where the broker POSTs each publish for review (`http://` or `https://`). Default:
    /// none, moderation off.
    pub url: Option<String>,
    /// How long the broker waits for the endpoint's answer, in ms. Default 2000.
    pub timeout_ms: u64,
    /// What a publish gets when the endpoint times out, cannot be reached or answers other
    /// than a 2xx verdict. Default `reject` (fail closed).
    pub on_failure: OnFailure,
    /// Only channels matching one of these patterns are moderated: a name, or a prefix ending
    /// in `*` (`chat:*`, `*::$chat`… a `*` matches any run of characters). Default: none
    /// given, every channel.
    pub channels: Vec<String>,
    /// Sent as `Authorization: Bearer <secret>`, so the endpoint knows the broker is calling.
    /// Default: none.
    pub secret: Option<String>,
}

/// What a publish gets when the moderation endpoint gives no verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Refuse the publish (fail closed): nothing unreviewed is stored.
    #[default]
    Reject,
    /// Store the publish unreviewed (fail open): the endpoint being down stops no one.
    Accept,
}

impl Default for ModerationSettings {
    fn default() -> Self {
        ModerationSettings {
            url: None,
            timeout_ms: 2_000,
            on_failure: OnFailure::Reject,
            channels: Vec::new(),
            secret: None,
        }
    }
}

impl ModerationSettings {
    /// Whether moderation is on.
    pub fn enabled(&self) -> bool {
        self.url.is_some()
    }

    fn validate(&self) -> Result<(), String> {
        let Some(url) = &self.url else {
            return Ok(());
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err("moderation: url must start with http:// or https://".to_owned());
        }
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            return Err("moderation: timeout_ms must be between 1 and 60000".to_owned());
        }
        if self.channels.iter().any(String::is_empty) {
            return Err("moderation: a channels pattern must not be empty".to_owned());
        }
        if self
            .secret
            .as_ref()
            .is_some_and(|s| s.is_empty() || s.chars().any(|c| c.is_control() || c.is_whitespace()))
        {
            return Err("moderation: secret must be non-empty with no spaces".to_owned());
        }
        Ok(())
    }
}

impl std::fmt::Debug for ModerationSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModerationSettings")
            .field("url", &self.url)
            .field("timeout_ms", &self.timeout_ms)
            .field("on_failure", &self.on_failure)
            .field("channels", &self.channels)
            .field("secret", &self.secret.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// Durability of the channel log.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// Sync the log to disk before acknowledging a publish. Default true; turning it off
    /// trades crash safety for latency.
    pub fsync: bool,
    /// Deliver a message to subscribers only once it is on disk. Default false: subscribers
    /// get it as soon as it is in the log and only the publisher's ACK waits for the fsync,
    /// which takes the fsync out of delivery latency. A crash can then lose a message some
    /// subscribers saw (its publisher got no ACK and will resend it); serials skip ahead
    /// after an unclean stop so none is reused.
    pub deliver_after_sync: bool,
    /// How long, in microseconds, a group commit for fewer than 64 waiting messages waits
    /// for more before it syncs. Default 1000. Light traffic (many channels, a message now
    /// and then on each) then shares one fsync per millisecond instead of paying one per
    /// message; an ACK takes up to this much longer. 0 syncs at once. At most 100,000.
    pub commit_linger_us: u64,
    /// sled page cache size in bytes: it holds the index of the logs (about 60 bytes per
    /// stored message) and everything small. Default 32 MiB.
    pub cache_bytes: u64,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            fsync: true,
            deliver_after_sync: false,
            commit_linger_us: 1_000,
            cache_bytes: 32 << 20,
        }
    }
}

impl Config {
    /// Reads a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Checks the whole configuration once, so a bad one fails at start-up with a clear reason.
    pub fn validate(&self) -> Result<(), String> {
        for key in &self.keys {
            if key.name.is_empty()
                || key.name.contains(':')
                || key.name.contains(char::is_whitespace)
            {
                return Err(format!(
                    "key name {:?} must be non-empty with no ':' or spaces",
                    key.name
                ));
            }
            if key.secret.is_empty()
                || key.secret.contains(['.', ':'])
                || key.secret.contains(char::is_whitespace)
            {
                return Err(format!(
                    "the secret of key {:?} must be non-empty with no '.', ':' or spaces",
                    key.name
                ));
            }
            Capability::parse(&key.capability)
                .map_err(|e| format!("capability of key {:?}: {}", key.name, e.message))?;
        }
        let mut names: Vec<&str> = self.keys.iter().map(|k| k.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err("two keys share a name".to_owned());
        }
        let cluster = &self.cluster;
        if cluster.enabled() {
            if cluster.shards == 0 || cluster.shards > 1024 {
                return Err("cluster: shards must be between 1 and 1024".to_owned());
            }
            if ![1, 3, 5].contains(&cluster.replicas()) {
                return Err("cluster: replicas must be 1, 3 or 5".to_owned());
            }
            let prefix_ok = !cluster.prefix.is_empty()
                && cluster
                    .prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !prefix_ok {
                return Err("cluster: prefix must be letters, digits, '_' or '-'".to_owned());
            }
            if cluster.duplicate_window_secs * 1000 < self.connection.connection_state_ttl_ms {
                return Err(
                    "cluster: duplicate_window_secs must cover connection_state_ttl_ms, or a resumed client's resend could be stored twice".to_owned(),
                );
            }
            if cluster.duplicate_window_secs > self.retention.max_age_secs {
                // JetStream refuses such a stream (error 10052) when the node starts.
                return Err(
                    "cluster: duplicate_window_secs must not exceed retention.max_age_secs (JetStream keeps no duplicate window longer than a stream's max age)".to_owned(),
                );
            }
        }
        let l = &self.limits;
        if l.max_message_size == 0 || l.max_frame_size < l.max_message_size {
            return Err("limits: max_frame_size must be at least max_message_size > 0".to_owned());
        }
        if l.outbox_bytes < l.max_frame_size {
            return Err("limits: outbox_bytes must be at least max_frame_size".to_owned());
        }
        if l.socket_read_buffer_bytes < 1024 {
            return Err("limits: socket_read_buffer_bytes must be at least 1024".to_owned());
        }
        if l.socket_write_buffer_bytes < 1024 {
            return Err("limits: socket_write_buffer_bytes must be at least 1024".to_owned());
        }
        if l.max_pending_publishes == 0 || l.max_channels_per_connection == 0 {
            return Err(
                "limits: max_pending_publishes and max_channels_per_connection must be > 0"
                    .to_owned(),
            );
        }
        if self.retention.max_messages_per_channel == 0 || self.retention.max_age_secs == 0 {
            return Err(
                "retention: max_age_secs and max_messages_per_channel must be > 0".to_owned(),
            );
        }
        if self.connection.max_idle_interval_ms == 0 || self.connection.connection_state_ttl_ms == 0
        {
            return Err("connection: intervals must be > 0".to_owned());
        }
        if self.storage.commit_linger_us > 100_000 {
            return Err("storage: commit_linger_us must be at most 100000 (100 ms)".to_owned());
        }
        self.auth0.validate()?;
        self.moderation.validate()?;
        let p = &self.presence;
        if p.sync_page_size == 0 || p.max_members_per_channel == 0 {
            return Err(
                "presence: sync_page_size and max_members_per_channel must be > 0".to_owned(),
            );
        }
        if p.leave_grace_ms > self.connection.connection_state_ttl_ms {
            return Err(
                "presence: leave_grace_ms must not exceed connection_state_ttl_ms".to_owned(),
            );
        }
        Ok(())
    }

    /// Whether `/api/dev/login` is open: asked for (or implied by the development key) and
    /// Auth0 off.
    pub fn dev_login_enabled(&self) -> bool {
        !self.auth0.enabled() && self.dev_login.unwrap_or(false)
    }

    /// `max_idle_interval_ms` as a duration.
    pub fn max_idle_interval(&self) -> Duration {
        Duration::from_millis(self.connection.max_idle_interval_ms)
    }

    /// `connection_state_ttl_ms` as a duration.
    pub fn connection_state_ttl(&self) -> Duration {
        Duration::from_millis(self.connection.connection_state_ttl_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_documented_file_parses_and_validates() {
        let config: Config = toml::from_str(
            r#"
            listen = "0.0.0.0:9000"
            [[keys]]
            name = "app.limited"
            secret = "s3cret"
            capability = '{"chat:*":["publish"]}'
            [limits]
            max_message_size = 1024
            [retention]
            max_age_secs = 60
            [channels]
            occupancy_interval_ms = 500
            [moderation]
            url = "http://127.0.0.1:9100/review"
            on_failure = "accept"
            channels = ["*::$chat", "support:*"]
            secret = "hooksecret"
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.channels.occupancy_interval_ms, 500);
        assert_eq!(Config::default().channels.occupancy_interval_ms, 15_000);
        assert_eq!(config.limits.max_message_size, 1024);
        assert_eq!(config.limits.max_frame_size, 524_288);
        assert!(!format!("{config:?}").contains("s3cret"));
        assert!(!format!("{config:?}").contains("hooksecret"));
        assert_eq!(config.moderation.on_failure, OnFailure::Accept);
        assert_eq!(config.moderation.timeout_ms, 2_000);
        assert!(!Config::default().moderation.enabled());
        assert_eq!(Config::default().moderation.on_failure, OnFailure::Reject);
    }

    #[test]
    fn a_bad_moderation_section_is_refused() {
        let mut config = Config::default();
        config.moderation.url = Some("ftp://x".to_owned());
        assert!(config.validate().unwrap_err().contains("moderation"));
        config.moderation.url = Some("http://127.0.0.1:1/".to_owned());
        config.validate().unwrap();
        config.moderation.timeout_ms = 0;
        assert!(config.validate().is_err());
        assert!(toml::from_str::<Config>("[moderation]\non_failure = \"maybe\"").is_err());
    }

    #[test]
    fn bad_keys_and_limits_are_refused() {
        let mut config = Config::default();
        config.keys.push(KeyConfig::parse("app.k:has.dot").unwrap());
        assert!(config.validate().is_err());
        let mut config = Config::default();
        config.limits.max_frame_size = 10;
        assert!(config.validate().is_err());
        assert!(toml::from_str::<Config>("nonsense = 1").is_err());
    }

    #[test]
    fn a_cluster_duplicate_window_fits_retention() {
        let mut config = Config::default();
        config.cluster.nats = vec!["nats://127.0.0.1:4222".to_owned()];
        config.validate().unwrap();
        // A short retention with the default 300 s window: JetStream would refuse the streams.
        config.retention.max_age_secs = 8;
        assert!(config.validate().unwrap_err().contains("max_age_secs"));
        // A window within retention must still cover the resume window.
        config.cluster.duplicate_window_secs = 8;
        assert!(config.validate().is_err());
        config.connection.connection_state_ttl_ms = 8_000;
        config.presence.leave_grace_ms = 1_000;
        config.validate().unwrap();
    }
}
