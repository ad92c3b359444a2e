//! Group commit: appenders ask [`Committer::durable`] to wait until their appends are on disk;
//! one background task runs a single `sync` for everyone who asked while the previous one was
//! running. Throughput then grows with load instead of being one fsync per message.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{ChannelLog, StoreError};
use crate::metrics::Metrics;

type Waiter = oneshot::Sender<Result<(), StoreError>>;

/// A handle to the group-commit task.
#[derive(Clone)]
pub struct Committer {
    requests: Option<mpsc::UnboundedSender<Waiter>>,
}

impl Committer {
    /// Starts the task; it ends when the last handle is dropped. With `fsync` off,
    /// [`Committer::durable`] returns at once and there is no task.
    pub fn start(
        log: Arc<dyn ChannelLog>,
        fsync: bool,
        metrics: Arc<Metrics>,
    ) -> (Committer, Option<JoinHandle<()>>) {
        if !fsync {
            return (Committer { requests: None }, None);
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter>();
        let task = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiters = vec![first];
                while let Ok(more) = rx.try_recv() {
                    waiters.push(more);
                }
                metrics.log_commit_batch.observe(waiters.len() as f64);
                let log = log.clone();
                let result = tokio::task::spawn_blocking(move || log.sync())
                    .await
                    .unwrap_or_else(|e| Err(StoreError::Engine(e.to_string())));
                for waiter in waiters {
                    let _ = waiter.send(result.clone());
                }
            }
        });
        (Committer { requests: Some(tx) }, Some(task))
    }

    /// Resolves once everything appended before the call is durable.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let Some(requests) = &self.requests else {
            return Ok(());
        };
        let (tx, rx) = oneshot::channel();
        requests
            .send(tx)
            .map_err(|_| StoreError::Engine("committer stopped".to_owned()))?;
        rx.await
            .unwrap_or_else(|_| Err(StoreError::Engine("committer stopped".to_owned())))
    }
}
