//! Starting and stopping the broker. [`run`] takes a bound listener and a shutdown future
//! (habit 1 of `../shared/style.md`), so tests and the load generator run it in-process on
//! port 0. Shutdown: stop accepting, tell every client DISCONNECTED so it resumes later or
//! elsewhere, wait for the connection tasks, and sync the log.

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::{now_ms, KeyAuthenticator};
use crate::auth0::{ChainAuthenticator, TOKEN_KEY_PREFIX};
use crate::backend::jetstream::{self, JetStreamBackend};
use crate::backend::local::LocalBackend;
use crate::backend::Backend;
use crate::broker::Broker;
use crate::channel::hub::Parallelism;
use crate::channel::{ChannelContext, Channels};
use crate::cluster::ClusterNode;
use crate::config::Config;
use crate::config::KeyConfig;
use crate::connection::session::Sessions;
use crate::dev_users::DevUsers;
use crate::error::Error;
use crate::lifecycle::Tasks;
use crate::metrics::Metrics;
use crate::moderation::Moderation;
use crate::revocation::Revocations;
use crate::store::commit::Committer;
use crate::store::sled_log::SledLog;
use crate::store::{ChannelLog, Database, StoreError};
use auth_plugin::AuthPlugin;

/// Runs the broker on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    run_then(listener, config, shutdown, || {}).await
}

/// [`run`], calling `ready` once the data directory is open and connections are about to be
/// accepted, so a caller can announce the broker only when it will really serve.
pub async fn run_then(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(),
) -> Result<(), Error> {
    config.validate().map_err(Error::Config)?;
    std::fs::create_dir_all(&config.data_dir)?;
    // One database per data directory; the logs, the user table, the development users and
    // the revocations each keep their own handle on it.
    let database = Database::open(&config.data_dir, config.storage.cache_bytes)?;
    // In cluster mode the channels' messages are JetStream's; the node keeps its view of them
    // in a database of its own under `<data_dir>/cluster`, rebuilt after an unclean stop.
    let view_dir = if config.cluster.enabled() {
        Some(jetstream::prepare_view(&config.data_dir).map_err(cluster_error)?)
    } else {
        None
    };
    let (messages, presence) = match &view_dir {
        Some(dir) => SledLog::open_logs_on(&Database::open(dir, config.storage.cache_bytes)?)?,
        None => SledLog::open_logs_on(&database)?,
    };
    // The Auth0 user table lives in this database on one node, in JetStream in a cluster.
    let users_db = config.auth0.enabled().then(|| database.handle());
    let dev_users = if config.dev_login_enabled() {
        let opened = DevUsers::open(&database.handle());
        Some(opened.map_err(|e| Error::Store(StoreError::Engine(e.to_string())))?)
    } else {
        None
    };
    let revocations = Revocations::open(&database.handle(), now_ms())
        .map_err(|e| Error::Store(StoreError::Engine(e.to_string())))?;
    let revocations = Arc::new(revocations);
    // Every owner has its handle now. The database stays open until the last is dropped, as
    // before: normally the log's, after its clean stop.
    drop(database);
    let log: Arc<dyn ChannelLog> = Arc::new(messages);
    let presence_log: Arc<dyn ChannelLog> = Arc::new(presence);
    let metrics = Arc::new(Metrics::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (tasks, tasks_done) = Tasks::new();
    let age_sweeps = Arc::new(AtomicU64::new(0));
    let mut sync_threads = None;
    let mut cluster = None;
    let backend: Arc<dyn Backend> = match view_dir {
        Some(dir) => {
            let view = jetstream::View {
                dir,
                messages: log.clone(),
                presence: presence_log.clone(),
            };
            let mut settings = config.cluster.clone();
            let settings_node = settings.node_name(listener.local_addr()?);
            settings.node_id = Some(settings_node.clone());
            let backend = JetStreamBackend::start(
                settings,
                view,
                &config.retention,
                age_sweeps.clone(),
                metrics.clone(),
            )
            .await
            .map_err(cluster_error)?;
            let node = ClusterNode::join(
                backend.clone(),
                settings_node,
                &config.cluster.prefix,
                config.cluster.replicas(),
            )
            .await
            .map_err(|e| Error::Config(format!("cluster mode: {e}")))?;
            // Members this node wrote before it restarted belong to connections that died
            // with that process.
            let stale = backend.reap(node.node()).await;
            if stale > 0 {
                tracing::info!(
                    members = stale,
                    "presence members of this node's last run left"
                );
            }
            cluster = Some((backend.clone(), node));
            backend
        }
        None => {
            let synced = log.clone();
            let linger = Duration::from_micros(config.storage.commit_linger_us);
            let (committer, threads) = Committer::start(
                move || synced.sync(),
                config.storage.fsync.then_some(linger),
                metrics.clone(),
            )?;
            sync_threads = threads;
            Arc::new(LocalBackend::new(
                log.clone(),
                presence_log.clone(),
                committer,
                config.storage.deliver_after_sync,
                config.retention.max_messages_per_channel,
                age_sweeps.clone(),
            ))
        }
    };
    // Tokens minted for Auth0 users are Ably JWTs signed by a key of the broker's own, kept
    // in the data directory so they stay valid across restarts.
    let mut token_key =
        crate::cli::stored_key(&config.data_dir, "token-signing-key", TOKEN_KEY_PREFIX)
            .map_err(Error::Config)?;
    if let Some((_, node)) = &cluster {
        // Every node signs and verifies with the cluster's one key, so a token minted on one
        // node works on all: the first node's key, kept in JetStream.
        token_key = node
            .shared_secret("token-signing-key", &token_key)
            .await
            .map_err(|e| Error::Config(format!("cluster mode: {e}")))?;
    }
    let auth0 = match (users_db, &cluster) {
        (None, _) => None,
        (Some(_), Some((_, node))) => {
            let users = node
                .user_store()
                .map_err(|e| Error::Config(format!("cluster mode: {e}")))?;
            Some(AuthPlugin::start_with(config.auth0.clone(), users).map_err(Error::Config)?)
        }
        (Some(db), None) => {
            Some(AuthPlugin::start(config.auth0.clone(), &db).map_err(Error::Config)?)
        }
    };
    let mut all_keys = config.keys.clone();
    let mut internal = KeyConfig::parse(&token_key).map_err(Error::Config)?;
    internal.capability = r#"{"[*]*":["*"]}"#.to_owned();
    let token_key_name = internal.name.clone();
    all_keys.push(internal);
    let keys = Arc::new(KeyAuthenticator::new(&all_keys).map_err(Error::Config)?);
    let channels = Channels::new(ChannelContext {
        backend,
        metrics: metrics.clone(),
        max_channel_name_length: config.limits.max_channel_name_length,
        max_message_size: config.limits.max_message_size,
        max_rewind: config.limits.max_rewind,
        max_resume_replay: config.limits.max_resume_replay,
        max_presence_members: config.presence.max_members_per_channel,
        fanout: Parallelism {
            shards: match config.fanout.shards {
                0 => tokio::runtime::Handle::current().metrics().num_workers(),
                n => n,
            },
            min_attachers: config.fanout.min_attachers,
        },
        presence_sync_page_size: config.presence.sync_page_size,
        occupancy_interval: Duration::from_millis(config.channels.occupancy_interval_ms),
        summary_clip: config.channels.summary_client_ids.max(1),
        shutdown: stop_rx.clone(),
        tasks: tasks.clone(),
        age_sweeps,
    });
    let moderation = Moderation::new(&config.moderation, metrics.clone())
        .map_err(Error::Config)?
        .map(Arc::new);
    let broker = Arc::new(Broker {
        authenticator: Arc::new(ChainAuthenticator {
            keys: keys.clone(),
            plugin: auth0.clone(),
            revocations: revocations.clone(),
        }),
        keys,
        token_key: token_key_name,
        auth0,
        dev_users,
        revocations,
        channels,
        sessions: Arc::new(Sessions::default()),
        cluster: cluster.as_ref().map(|(_, node)| node.clone()),
        log: log.clone(),
        presence_log,
        metrics,
        moderation,
        shutdown: stop_rx,
        next_socket: AtomicU64::new(1),
        tasks,
        config,
    });
    if let Some(node) = &broker.cluster {
        node.serve_evictions(broker.sessions.clone(), broker.shutdown.clone());
        node.serve_occupancy(broker.channels.clone(), broker.shutdown.clone());
        let grace = Duration::from_millis(broker.config.presence.leave_grace_ms);
        node.keep_alive(grace, broker.shutdown.clone());
        node.enforce_revocations(
            broker.revocations.clone(),
            broker.sessions.clone(),
            broker.shutdown.clone(),
        );
        if broker.auth0.is_some() {
            node.enforce_bans(
                broker.sessions.clone(),
                broker.channels.clone(),
                broker.shutdown.clone(),
            );
        }
        tracing::info!(node = node.node(), "cluster mode on NATS JetStream");
    }
    spawn_retention_sweeper(broker.clone());
    tracing::info!(addr = %listener.local_addr()?, epoch = log.epoch(), "broker listening");
    ready();

    let header_timeout = Duration::from_millis(broker.config.limits.handshake_timeout_ms);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = broker.clone();
        let service = service_fn(move |request| crate::http::handle(handler.clone(), request));
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stop = broker.shutdown.clone();
        let guard = broker.track_task();
        tokio::spawn(async move {
            let _guard = guard;
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
                }
            }
        });
    }

    tracing::info!("shutting down: telling clients to resume later");
    drop(listener);
    let _ = stop_tx.send(true);
    broker.tasks.close();
    drop(broker);
    if !tasks_done.wait(Duration::from_secs(10)).await {
        tracing::warn!("some connections did not finish within 10 s");
    }
    // Every sequencer is gone, so the committer's last handle is too.
    if let Some(threads) = sync_threads {
        let joined = tokio::task::spawn_blocking(move || threads.join());
        let _ = tokio::time::timeout(Duration::from_secs(10), joined).await;
    }
    if let Some((backend, _)) = &cluster {
        backend.stop().await;
    }
    sync(log).await?;
    if let Some((backend, _)) = cluster {
        // Only once the view is closed cleanly may the next start trust it.
        backend.record_clean_stop()?;
    }
    Ok(())
}

fn cluster_error(e: jetstream::StartError) -> Error {
    Error::Config(format!("cluster mode: {e}"))
}

async fn sync(log: Arc<dyn ChannelLog>) -> Result<(), Error> {
    tokio::task::spawn_blocking(move || log.close_cleanly())
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))??;
    tracing::info!("log synced; bye");
    Ok(())
}

fn spawn_retention_sweeper(broker: Arc<Broker>) {
    let every = Duration::from_secs(broker.config.retention.sweep_interval_secs.max(1));
    let max_age_ms = broker.config.retention.max_age_secs.saturating_mul(1000) as i64;
    let logs = [broker.log.clone(), broker.presence_log.clone()];
    let channels = broker.channels.clone();
    let mut stop = broker.shutdown.clone();
    let guard = broker.track_task();
    drop(broker);
    tokio::spawn(async move {
        let _guard = guard;
        let mut interval = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            }
            for log in &logs {
                let log = log.clone();
                let cutoff = now_ms() - max_age_ms;
                match tokio::task::spawn_blocking(move || log.expire_before(cutoff)).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => {
                        channels.note_age_sweep();
                        tracing::info!(removed = n, "expired old messages");
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "retention sweep failed"),
                    Err(e) => tracing::warn!(error = %e, "retention sweep panicked"),
                }
            }
        }
    });
}
