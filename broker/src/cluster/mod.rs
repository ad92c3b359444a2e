//! This node's part in a cluster beyond the channels and presence (which `backend::jetstream`
//! serves): the connection registry that lets a client resume its connection on another node
//! (`../shared/cluster.md` §3.5), the heartbeats that let the others leave a dead node's
//! presence members, and what every node must share: the token-signing key, `revokeTokens`
//! records, the Auth0 user table ([`users`]) and the development login's names. Each is a KV
//! bucket named `<PREFIX>_<WHAT>`.
//!
//! Every bind of a connection (connect, resume) puts `{owner, hash of the connection key,
//! clientId}` under the connectionId in the KV bucket `<PREFIX>_CONN`. A node asked to resume a
//! connection it does not hold reads that entry; the key must match; it takes the connection
//! over with a compare-and-set on the entry's revision, so of two nodes racing only one wins,
//! and asks the old owner to let go (`<prefix>.node.<owner>.evict`). An owner that answers
//! "gone" had already expired the connection, so the resume fails with 80008, as it would on
//! one node; an owner that does not answer is taken for dead, and the connection moves. A
//! CLOSE deletes the entry. The connection's resent publishes need nothing from here:
//! their message ids come from the connectionId and msgSerial, and JetStream stores a message
//! id once.
//!
//! Entries expire an hour after their last bind, so the registry does not keep the
//! connections of nodes that died; a connection bound for longer than that cannot move to
//! another node, and gets a new connectionId there (its channels still resume by serial).

pub mod users;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use protocol::error::codes;
use protocol::ErrorInfo;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::backend::jetstream::{follow_bucket, open_bucket, retry_at_start, JetStreamBackend};
use crate::channel::{Channels, Occupancy};
use crate::connection::session::{Session, Sessions};
use crate::revocation::{disconnect_revoked, Revocation, Revocations, RECORD_LIFETIME_MS};
use users::KvTable;

/// How long a connection's entry outlives its last bind.
const ENTRY_MAX_AGE: Duration = Duration::from_secs(3600);
/// How long a resume waits for the old owner's answer before taking it for dead.
const EVICT_TIMEOUT: Duration = Duration::from_millis(1500);
/// How often a node says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// A node silent this long is taken for dead.
const SILENT: Duration = Duration::from_secs(10);
/// How long a dead node's heartbeat entry stays; past this it is forgotten.
const NODE_MAX_AGE: Duration = Duration::from_secs(600);
/// The old owner's answer when it held the connection and let it go.
const EVICTED: &[u8] = b"evicted";
/// The old owner's answer when it no longer knew the connection (it expired there).
const GONE: &[u8] = b"gone";
/// How long a channel status waits for the other nodes' counts.
const OCCUPANCY_TIMEOUT: Duration = Duration::from_millis(500);

/// What the registry keeps of a connection.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    /// The node serving it.
    owner: String,
    /// SHA-256 of its current connection key, hex.
    key_hash: String,
    /// The clientId it reported, which a resume must present again.
    client_id: Option<String>,
    /// Its `echo` setting.
    echo: bool,
}

/// A connection another node held, now claimed by this one.
pub struct Claimed {
    /// The channels where it has presence members, now this node's.
    pub presence_channels: Vec<String>,
    /// Its connectionId.
    pub id: String,
    /// The clientId it reported.
    pub client_id: Option<String>,
    /// Its `echo` setting.
    pub echo: bool,
}

/// This node in the cluster.
pub struct ClusterNode {
    node: String,
    backend: Arc<JetStreamBackend>,
    /// Secrets every node must share (`<PREFIX>_SECRETS`).
    secrets: kv::Store,
    /// Token revocations, which every node enforces (`<PREFIX>_REVOKED`).
    revoked: kv::Store,
    /// The Auth0 user table and the development login's usernames, one for every node
    /// (`<PREFIX>_USERS`).
    users: kv::Store,
    /// Heartbeats of every node (`<PREFIX>_NODE`).
    nodes: kv::Store,
    prefix: String,
    client: async_nats::Client,
    connections: kv::Store,
    /// How many other nodes were heard from within `SILENT`, at the last heartbeat.
    others_alive: AtomicUsize,
}

/// One node's answer to an occupancy request.
#[derive(Serialize, Deserialize)]
struct Attachers {
    node: String,
    occupancy: Occupancy,
}

fn key_hash(connection_key: &str) -> String {
    Sha256::digest(connection_key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A connectionId as a KV key: the ids this broker makes are letters and digits; anything
/// else is not one of ours.
fn kv_key(id: &str) -> Option<&str> {
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(id)
}

fn failed(detail: &str) -> ErrorInfo {
    ErrorInfo::new(
        codes::RESUME_FAILED,
        format!("Unable to recover connection ({detail})"),
    )
}

impl ClusterNode {
    /// Opens (or creates) the registry bucket with `replicas` copies, beside `backend`.
    pub async fn join(
        backend: Arc<JetStreamBackend>,
        node: String,
        prefix: &str,
        replicas: usize,
    ) -> Result<Arc<ClusterNode>, String> {
        let js = backend.context().clone();
        let bucket = |name: &'static str, description: &'static str, max_age: Duration| {
            let config = kv::Config {
                bucket: format!("{}_{name}", prefix.to_ascii_uppercase()),
                description: description.to_owned(),
                history: 1,
                max_age,
                num_replicas: replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            };
            let js = js.clone();
            async move {
                retry_at_start(description, || open_bucket(&js, config.clone()))
                    .await
                    .map_err(|e| format!("{description}: {e}"))
            }
        };
        let forever = Duration::ZERO;
        let connections = bucket("CONN", "connection registry", ENTRY_MAX_AGE).await?;
        let nodes = bucket("NODE", "node heartbeats", NODE_MAX_AGE).await?;
        let secrets = bucket("SECRETS", "shared secrets", forever).await?;
        // A record outlives every token it reaches by this much (revocation.rs).
        let lifetime = Duration::from_millis(2 * RECORD_LIFETIME_MS as u64);
        let revoked = bucket("REVOKED", "token revocations", lifetime).await?;
        let users = bucket("USERS", "users", forever).await?;
        Ok(Arc::new(ClusterNode {
            node,
            backend,
            secrets,
            revoked,
            users,
            nodes,
            prefix: prefix.to_owned(),
            client: js.client(),
            connections,
            others_alive: AtomicUsize::new(0),
        }))
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The cluster's value of secret `name`: the one stored first, by whichever node started
    /// first with its `local` value; every later node takes that one.
    pub async fn shared_secret(&self, name: &str, local: &str) -> Result<String, String> {
        // The bucket may have been created a moment ago, its stream leader not elected yet.
        retry_at_start(name, || async {
            if self
                .secrets
                .create(name, local.to_owned().into())
                .await
                .is_ok()
            {
                return Ok(local.to_owned());
            }
            let stored = self
                .secrets
                .get(name)
                .await
                .map_err(|e| format!("reading the shared {name}: {e}"))?
                .ok_or_else(|| format!("the shared {name} is missing"))?;
            String::from_utf8(stored.to_vec()).map_err(|_| format!("the shared {name} is not text"))
        })
        .await
    }

    /// Whether the node can serve: connected to a NATS server, with every applier running.
    /// For `/health`, with the details.
    pub fn health(&self) -> (bool, serde_json::Value) {
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        let info = self.client.server_info();
        let appliers = self.backend.is_ready();
        let ready = connected && appliers;
        let detail = serde_json::json!({
            "node": self.node,
            "ready": ready,
            "nats": {
                "connected": connected,
                "server": info.server_name,
                "address": format!("{}:{}", info.host, info.port),
            },
            "appliersRunning": appliers,
            "applied": self.backend.applied(),
        });
        (ready, detail)
    }

    fn evict_subject(&self, node: &str) -> String {
        format!(
            "{}.node.{}.evict",
            self.prefix,
            crate::backend::jetstream::subject::token(node)
        )
    }

    /// Records that this node now serves `session` under its current key. A failure is
    /// logged: the connection works, but cannot move to another node until its next bind.
    pub async fn record(&self, session: &Session) {
        let Some(key) = kv_key(&session.id) else {
            return;
        };
        let entry = Entry {
            owner: self.node.clone(),
            key_hash: key_hash(&session.connection_key()),
            client_id: session.authority().identity.reported,
            echo: session.echo,
        };
        let value = serde_json::to_vec(&entry).expect("entry serializes");
        if let Err(e) = self.connections.put(key, value.into()).await {
            tracing::warn!(connection = %session.id, error = %e, "connection registry put failed");
        }
    }

    /// Forgets a closed connection, so that no node resumes it.
    pub async fn forget(&self, id: &str) {
        if let Some(key) = kv_key(id) {
            if let Err(e) = self.connections.delete(key).await {
                tracing::warn!(connection = %id, error = %e, "connection registry delete failed");
            }
        }
    }

    /// Takes over the connection `connection_key` names from the node that served it, or
    /// says why it cannot be resumed (80008, or 80018 for a malformed key).
    /// `client_id` is the clientId the resuming client reports, which must be the
    /// connection's.
    pub async fn claim(
        &self,
        connection_key: &str,
        client_id: Option<&str>,
    ) -> Result<Claimed, ErrorInfo> {
        let Some((id, _)) = connection_key.split_once('!') else {
            return Err(ErrorInfo::new(
                codes::INVALID_CONNECTION_KEY,
                "Invalid connection key",
            ));
        };
        let key = kv_key(id).ok_or_else(|| failed("unknown connection"))?;
        let entry = self
            .connections
            .entry(key)
            .await
            .map_err(|e| {
                tracing::warn!(connection = %id, error = %e, "connection registry read failed");
                failed("the cluster's connection registry is unavailable")
            })?
            .filter(|e| e.operation == kv::Operation::Put)
            .ok_or_else(|| failed("connection expired"))?;
        let held: Entry =
            serde_json::from_slice(&entry.value).map_err(|_| failed("connection expired"))?;
        let matches: bool = held
            .key_hash
            .as_bytes()
            .ct_eq(key_hash(connection_key).as_bytes())
            .into();
        if !matches || held.owner == self.node {
            // A stale key, or one this node served and has already expired.
            return Err(failed("connection expired"));
        }
        if held.client_id.as_deref() != client_id {
            return Err(ErrorInfo::new(
                codes::RESUME_FAILED,
                "Unable to recover connection: credentials are for another clientId",
            ));
        }
        let previous = held.owner.clone();
        let claimed = Entry {
            owner: self.node.clone(),
            ..held
        };
        let value = serde_json::to_vec(&claimed).expect("entry serializes");
        self.connections
            .update(key, value.into(), entry.revision)
            .await
            .map_err(|_| failed("connection resumed elsewhere"))?;
        let request = self
            .client
            .request(self.evict_subject(&previous), id.to_owned().into());
        match tokio::time::timeout(EVICT_TIMEOUT, request).await {
            Ok(Ok(reply)) if reply.payload.as_ref() == GONE => {
                self.forget(id).await;
                return Err(failed("connection expired"));
            }
            // Let go, or the owner is dead (no responders, or silence).
            _ => {}
        }
        Ok(Claimed {
            presence_channels: self.backend.adopt_members(id).await,
            id: id.to_owned(),
            client_id: claimed.client_id,
            echo: claimed.echo,
        })
    }

    /// Says every `HEARTBEAT` (2 s) that this node is alive, and leaves the presence members of
    /// any node silent for `SILENT` (10 s) plus `grace` (the presence leave grace, §6.6), unless
    /// their connections resumed elsewhere meanwhile (`cluster.md` §3.6), until `stop`.
    pub fn keep_alive(self: &Arc<Self>, grace: Duration, mut stop: watch::Receiver<bool>) {
        let node = self.clone();
        tokio::spawn(async move {
            let mut heard: std::collections::HashMap<String, i64> = Default::default();
            let mut beats = tokio::time::interval(HEARTBEAT);
            let mut watch = None;
            loop {
                tokio::select! {
                    _ = beats.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let me = heartbeat_key(&node.node);
                if let Err(e) = node.nodes.put(&me, node.node.clone().into()).await {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
                // A watch just opened is read up to its last entry (this node's heartbeat is
                // one), so that the node knows the others from its first tick.
                let mut catching_up = false;
                if watch.is_none() {
                    watch = node.nodes.watch_with_history(">").await.ok();
                    catching_up = true;
                }
                // Take in every heartbeat that arrived since the last tick.
                while let Some(entries) = watch.as_mut() {
                    let next = if catching_up {
                        tokio::time::timeout(HEARTBEAT, entries.next()).await.ok()
                    } else {
                        futures_util::FutureExt::now_or_never(entries.next())
                    };
                    match next {
                        Some(Some(Ok(entry))) if entry.operation == kv::Operation::Put => {
                            catching_up &= entry.delta > 0;
                            let name = String::from_utf8_lossy(&entry.value).into_owned();
                            let at = (entry.created.unix_timestamp_nanos() / 1_000_000) as i64;
                            heard.insert(name, at);
                        }
                        Some(Some(Ok(entry))) => catching_up &= entry.delta > 0,
                        Some(Some(Err(_))) | Some(None) => watch = None,
                        None => break,
                    }
                }
                let now = crate::auth::now_ms();
                let alive = heard
                    .iter()
                    .filter(|(other, at)| {
                        **other != node.node && now - **at <= SILENT.as_millis() as i64
                    })
                    .count();
                node.others_alive.store(alive, Ordering::Relaxed);
                let dead_after = (SILENT + grace).as_millis() as i64;
                for (other, at) in &heard {
                    if *other != node.node && now - at > dead_after {
                        let reaped = node.backend.reap(other).await;
                        if reaped > 0 {
                            tracing::info!(node = %other, members = reaped, "a silent node's presence members left");
                        }
                    }
                }
            }
        });
    }

    /// The Auth0 user table every node shares.
    pub fn user_store(&self) -> Result<auth_plugin::UserStore, String> {
        let bucket = &self.users;
        auth_plugin::UserStore::on(&|name| Ok(Arc::new(KvTable::new(bucket.clone(), name))))
            .map_err(|e| e.to_string())
    }

    /// Ends, on this node, the connections of every user deleted on any node, until `stop`:
    /// the deleting node ends its own, and the others learn of it from the ban tombstone.
    pub fn enforce_bans(
        self: &Arc<Self>,
        sessions: Arc<Sessions>,
        channels: Arc<Channels>,
        stop: watch::Receiver<bool>,
    ) {
        let bucket = self.users.clone();
        tokio::spawn(async move {
            let filter = format!("{}>", users::BANNED);
            follow_bucket(&bucket, "user bans", &filter, stop, |entry| {
                let (sessions, channels) = (sessions.clone(), channels.clone());
                async move {
                    let banned = users::row_key(users::BANNED, &entry.key);
                    if let (kv::Operation::Put, Some(user)) = (entry.operation, banned) {
                        crate::revocation::evict_user(&sessions, &channels, &user).await;
                    }
                }
            })
            .await;
        });
    }

    /// Tells every node that the development login issued a token for `username`.
    pub async fn share_dev_user(&self, username: &str) -> Result<(), String> {
        self.users
            .put(dev_user_key(username), Vec::new().into())
            .await
            .map(|_| ())
            .map_err(|e| format!("sharing the user with the other nodes failed: {e}"))
    }

    /// Whether any node's development login issued a token for `username`.
    pub async fn knows_dev_user(&self, username: &str) -> Result<bool, String> {
        match self.users.entry(dev_user_key(username)).await {
            Ok(entry) => Ok(entry.is_some_and(|e| e.operation == kv::Operation::Put)),
            Err(e) => Err(format!("reading the shared users failed: {e}")),
        }
    }

    /// Tells every node of a revocation this node recorded (`revokeTokens`). A failure is
    /// logged and returned: the revocation holds on this node only.
    pub async fn share_revocation(
        &self,
        key_name: Option<&str>,
        client_id: &str,
        record: Revocation,
    ) -> Result<(), String> {
        let shared = SharedRevocation {
            key_name: key_name.map(str::to_owned),
            client_id: client_id.to_owned(),
            record,
        };
        let value = serde_json::to_vec(&shared).expect("revocation serializes");
        let key = format!(
            "r{}",
            Sha256::digest(&value)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        self.revoked
            .put(key, value.into())
            .await
            .map(|_| ())
            .map_err(|e| {
                tracing::warn!(error = %e, "sharing a token revocation failed");
                format!("sharing the revocation with the other nodes failed: {e}")
            })
    }

    /// Enforces every node's revocations on this one, until `stop`: records them (one this
    /// node already holds changes nothing) and closes the connections they reach, at once or
    /// when they apply.
    pub fn enforce_revocations(
        self: &Arc<Self>,
        revocations: Arc<Revocations>,
        sessions: Arc<Sessions>,
        stop: watch::Receiver<bool>,
    ) {
        let bucket = self.revoked.clone();
        tokio::spawn(async move {
            let watching = stop.clone();
            follow_bucket(&bucket, "token revocations", ">", watching, |entry| {
                if entry.operation == kv::Operation::Put {
                    if let Ok(shared) = serde_json::from_slice::<SharedRevocation>(&entry.value) {
                        enforce(&revocations, &sessions, &shared, &stop);
                    }
                }
                std::future::ready(())
            })
            .await;
        });
    }

    fn occupancy_subject(&self) -> String {
        format!("{}.occupancy", self.prefix)
    }

    /// Adds to `here` (this node's occupancy of `channel`) the attachers of every other live
    /// node: each is asked at once (`<prefix>.occupancy`), and those that have not answered
    /// within `OCCUPANCY_TIMEOUT` are left out of the count.
    pub async fn occupancy(&self, channel: &str, mut here: Occupancy) -> Occupancy {
        let expected = self.others_alive.load(Ordering::Relaxed);
        if expected == 0 {
            return here;
        }
        let inbox = self.client.new_inbox();
        let Ok(mut answers) = self.client.subscribe(inbox.clone()).await else {
            return here;
        };
        let asked = self
            .client
            .publish_with_reply(self.occupancy_subject(), inbox, channel.to_owned().into())
            .await;
        if asked.is_err() {
            return here;
        }
        let deadline = tokio::time::sleep(OCCUPANCY_TIMEOUT);
        tokio::pin!(deadline);
        let mut heard = 0;
        while heard < expected {
            let answer = tokio::select! {
                answer = answers.next() => answer,
                _ = &mut deadline => break,
            };
            let Some(answer) = answer else { break };
            match serde_json::from_slice::<Attachers>(&answer.payload) {
                Ok(other) if other.node != self.node => {
                    here.add_attachers(&other.occupancy);
                    heard += 1;
                }
                _ => {}
            }
        }
        if heard < expected {
            tracing::debug!(
                channel,
                heard,
                expected,
                "occupancy without some nodes' counts"
            );
        }
        here
    }

    /// Answers other nodes' occupancy requests with this node's attachers, until `stop`.
    pub fn serve_occupancy(self: &Arc<Self>, channels: Arc<Channels>, stop: watch::Receiver<bool>) {
        let node = self.clone();
        self.serve(
            self.occupancy_subject(),
            "occupancy",
            stop,
            move |request| {
                let (node, channels) = (node.clone(), channels.clone());
                if let (Some(reply), Ok(channel)) =
                    (request.reply, String::from_utf8(request.payload.to_vec()))
                {
                    // Each in a task of its own: a busy channel does not hold up the others.
                    tokio::spawn(async move {
                        let answer = Attachers {
                            node: node.node.clone(),
                            occupancy: channels.attachers_here(&channel).await,
                        };
                        let payload = serde_json::to_vec(&answer).expect("occupancy serializes");
                        let _ = node.client.publish(reply, payload.into()).await;
                    });
                }
                std::future::ready(())
            },
        );
    }

    /// Answers other nodes' requests to let go of a connection they resumed, until `stop`.
    pub fn serve_evictions(self: &Arc<Self>, sessions: Arc<Sessions>, stop: watch::Receiver<bool>) {
        let node = self.clone();
        self.serve(
            self.evict_subject(&self.node),
            "eviction",
            stop,
            move |request| {
                let node = node.clone();
                let id = String::from_utf8_lossy(&request.payload).into_owned();
                let answer = match sessions.take_over(&id) {
                    true => EVICTED,
                    false => GONE,
                };
                async move {
                    if let Some(reply) = request.reply {
                        let _ = node.client.publish(reply, answer.into()).await;
                    }
                }
            },
        );
    }

    /// Hands every request on `subject` to `handle`, one after the other, until `stop`;
    /// `what` names the requests in the log.
    fn serve<F, Fut>(
        &self,
        subject: String,
        what: &'static str,
        mut stop: watch::Receiver<bool>,
        mut handle: F,
    ) where
        F: FnMut(async_nats::Message) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let client = self.client.clone();
        tokio::spawn(async move {
            let mut requests = match client.subscribe(subject).await {
                Ok(requests) => requests,
                Err(e) => {
                    tracing::error!(error = %e, "cannot serve {what} requests");
                    return;
                }
            };
            loop {
                let request = tokio::select! {
                    request = requests.next() => request,
                    _ = stop.wait_for(|s| *s) => return,
                };
                let Some(request) = request else { return };
                handle(request).await;
            }
        });
    }
}

/// A node's key in the heartbeat bucket.
fn heartbeat_key(node: &str) -> String {
    let hex: String = node.bytes().map(|b| format!("{b:02x}")).collect();
    format!("n{hex}")
}

/// A revocation as the nodes share it.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SharedRevocation {
    key_name: Option<String>,
    client_id: String,
    record: Revocation,
}

/// Records `shared` on this node and closes the connections it reaches, now or when it
/// applies.
fn enforce(
    revocations: &Arc<Revocations>,
    sessions: &Arc<Sessions>,
    shared: &SharedRevocation,
    stop: &watch::Receiver<bool>,
) {
    let now = crate::auth::now_ms();
    if shared.record.issued_before + RECORD_LIFETIME_MS < now {
        return;
    }
    let recorded = revocations
        .revoke(shared.key_name.as_deref(), &shared.client_id, shared.record)
        .and_then(|()| revocations.flush());
    if let Err(e) = recorded {
        tracing::error!(error = %e, "recording another node's token revocation failed");
        return;
    }
    let wait = shared.record.applies_at - now;
    if wait <= 0 {
        disconnect_revoked(sessions, revocations, now);
        return;
    }
    let (sessions, revocations, mut stop) = (sessions.clone(), revocations.clone(), stop.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {
                disconnect_revoked(&sessions, &revocations, crate::auth::now_ms());
            }
            _ = stop.wait_for(|s| *s) => {}
        }
    });
}

/// A development user's key in the users bucket.
fn dev_user_key(username: &str) -> String {
    let hex: String = username.bytes().map(|b| format!("{b:02x}")).collect();
    format!("dev.u{hex}")
}
