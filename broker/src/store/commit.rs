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

/// Someone waiting for a sync: how many messages it covers, and what to call once with the
/// outcome of the sync that covers everything appended before it asked.
struct Waiter {
    messages: usize,
    then: Box<dyn FnOnce(Result<(), StoreError>) + Send>,
}

/// A running sync: its waiters and, once joined, its outcome.
type Running = JoinHandle<(Vec<Waiter>, Result<(), StoreError>)>;

/// Most syncs running at once.
const SYNCS_IN_FLIGHT: usize = 2;
/// Messages waiting before a second sync overlaps a running one.
const OVERLAP_MESSAGES: usize = 64;

/// Answers the waiters of a finished sync. Syncs finish in the order they started (each is
/// awaited from the front of the queue), so a later sync never answers before an earlier.
fn finish(done: Result<(Vec<Waiter>, Result<(), StoreError>), tokio::task::JoinError>) {
    match done {
        Ok((waiters, result)) => {
            for waiter in waiters {
                (waiter.then)(result.clone());
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
            let mut running: VecDeque<Running> = VecDeque::new();
            let mut queued: Vec<Waiter> = Vec::new();
            let mut queued_messages = 0;
            let mut open = true;
            while open || !running.is_empty() || !queued.is_empty() {
                // A sync starts at once when none runs. A second one overlaps the first only
                // for a backlog worth it (OVERLAP_MESSAGES): each sync costs CPU and a disk
                // round trip, and delivery does not wait for it, only the ACKs do.
                let start = !queued.is_empty()
                    && (running.is_empty()
                        || (running.len() < SYNCS_IN_FLIGHT
                            && queued_messages >= OVERLAP_MESSAGES));
                if start {
                    let waiters = std::mem::take(&mut queued);
                    queued_messages = 0;
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
                    continue;
                }
                tokio::select! {
                    biased;
                    done = async { running.front_mut().expect("non-empty").await },
                        if !running.is_empty() =>
                    {
                        running.pop_front();
                        finish(done);
                    }
                    next = rx.recv(), if open => match next {
                        Some(waiter) => {
                            queued_messages += waiter.messages;
                            queued.push(waiter);
                            while let Ok(more) = rx.try_recv() {
                                queued_messages += more.messages;
                                queued.push(more);
                            }
                        }
                        None => open = false,
                    },
                }
            }
        });
        (Committer { requests: Some(tx) }, Some(task))
    }

    /// Resolves once everything appended before the call is durable.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.when_durable(1, move |result| {
            let _ = tx.send(result);
        });
        rx.await
            .unwrap_or_else(|_| Err(StoreError::Engine("committer stopped".to_owned())))
    }

    /// Calls `then` once everything appended before the call is durable (at once when fsync
    /// is off); `messages` is how many messages it waits for, which decides how soon a second
    /// sync is worth starting. Callbacks run in the order they were registered, on the
    /// committer's task, so they must be quick: answering a publisher, not more IO.
    pub fn when_durable(
        &self,
        messages: usize,
        then: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) {
        let Some(requests) = &self.requests else {
            return then(Ok(()));
        };
        let waiter = Waiter {
            messages,
            then: Box::new(then),
        };
        if let Err(refused) = requests.send(waiter) {
            (refused.0.then)(Err(StoreError::Engine("committer stopped".to_owned())));
        }
    }
}
