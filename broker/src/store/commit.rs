//! Group commit: appenders ask [`Committer::durable`] to wait until their appends are on disk;
//! one background task runs a single `sync` for everyone who asked while the previous one was
//! running. Throughput then grows with load instead of being one fsync per message. A
//! sequencer that does not want to wait registers a callback with [`Committer::when_durable`]
//! instead and goes on with its next batch while the sync runs (pipelining).

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{ChannelLog, StoreError};
use crate::metrics::Metrics;

/// Called once with the outcome of the sync that covers everything appended before it asked.
type Waiter = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A running sync: its waiters and, once joined, its outcome.
type Running = JoinHandle<(Vec<Waiter>, Result<(), StoreError>)>;

/// Most syncs running at once.
const SYNCS_IN_FLIGHT: usize = 2;

/// Answers the waiters of a finished sync. Syncs finish in the order they started (each is
/// awaited from the front of the queue), so a later sync never answers before an earlier.
fn finish(done: Result<(Vec<Waiter>, Result<(), StoreError>), tokio::task::JoinError>) {
    match done {
        Ok((waiters, result)) => {
            for waiter in waiters {
                waiter(result.clone());
            }
        }
        Err(e) => tracing::error!(error = %e, "sync task failed"),
    }
}

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
            // Up to SYNCS_IN_FLIGHT syncs overlap: a waiter that arrives while one runs starts
            // the next at once instead of waiting for it to finish, so its wait is about one
            // sync, not one and a half. Callbacks still run in registration order.
            let mut running: VecDeque<Running> = VecDeque::new();
            let mut open = true;
            while open || !running.is_empty() {
                let started = running.len() < SYNCS_IN_FLIGHT && open;
                let first = if started {
                    tokio::select! {
                        biased;
                        done = async { running.front_mut().expect("non-empty").await },
                            if !running.is_empty() =>
                        {
                            running.pop_front();
                            finish(done);
                            continue;
                        }
                        first = rx.recv() => first,
                    }
                } else {
                    if let Some(oldest) = running.pop_front() {
                        finish(oldest.await);
                    }
                    continue;
                };
                let Some(first) = first else {
                    open = false;
                    continue;
                };
                let mut waiters = vec![first];
                while let Ok(more) = rx.try_recv() {
                    waiters.push(more);
                }
                metrics.log_commit_batch.observe(waiters.len() as f64);
                let log = log.clone();
                let metrics = metrics.clone();
                running.push_back(tokio::task::spawn_blocking(move || {
                    let started = std::time::Instant::now();
                    let result = log.sync();
                    metrics
                        .log_sync_duration
                        .observe(started.elapsed().as_secs_f64());
                    (waiters, result)
                }));
            }
        });
        (Committer { requests: Some(tx) }, Some(task))
    }

    /// Resolves once everything appended before the call is durable.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.when_durable(move |result| {
            let _ = tx.send(result);
        });
        rx.await
            .unwrap_or_else(|_| Err(StoreError::Engine("committer stopped".to_owned())))
    }

    /// Calls `then` once everything appended before the call is durable (at once when fsync
    /// is off). Callbacks run in the order they were registered, on the committer's task, so
    /// they must be quick: answering a publisher, not more IO.
    pub fn when_durable(&self, then: impl FnOnce(Result<(), StoreError>) + Send + 'static) {
        let Some(requests) = &self.requests else {
            return then(Ok(()));
        };
        if let Err(refused) = requests.send(Box::new(then)) {
            (refused.0)(Err(StoreError::Engine("committer stopped".to_owned())));
        }
    }
}
