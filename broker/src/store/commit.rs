//! Group commit: appenders ask [`Committer::durable`] to wait until their appends are on disk;
//! a sync thread runs a single `sync` for everyone who asked while the previous one was
//! running. Throughput then grows with load instead of being one fsync per message. A
//! sequencer that does not want to wait registers a callback with [`Committer::when_durable`]
//! instead and goes on with its next batch while the sync runs (pipelining).
//!
//! A sync for a small backlog (under 64 messages) lingers first: it waits up to the configured
//! `storage.commit_linger_us` after the first waiter queued, so that light traffic spread over
//! many channels shares one `fdatasync` instead of paying one per message. In chat-rooms (a
//! thousand lone publishes a second over a hundred channels) a 1 ms linger cut the syncs from
//! about 1,000 to about 400 a second, and the broker's CPU and its p99 delivery latency each by
//! about a tenth (delivery does not wait for syncs, but shares the two cores with them). A
//! larger backlog syncs at once, so heavy traffic is not slowed.
//!
//! The syncs run on two dedicated threads rather than on the runtime's blocking pool: a
//! request then wakes the thread that syncs, and nothing else. Through a task and the
//! blocking pool every sync took three wake-ups, which at a thousand lone publishes a second
//! cost more CPU than the `fdatasync` itself.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::StoreError;
use crate::metrics::Metrics;

/// Someone waiting for a sync: how many messages it covers, and what to call once with the
/// outcome of the sync that covers everything appended before it asked.
struct Waiter {
    messages: usize,
    then: Box<dyn FnOnce(Result<(), StoreError>) + Send>,
}

/// Most syncs running at once: one thread each.
const SYNCS_IN_FLIGHT: usize = 2;
/// Messages waiting before a sync starts without lingering, or a second one overlaps a
/// running one.
const OVERLAP_MESSAGES: usize = 64;

/// What makes the log durable; `SledLog::sync` in the broker.
type SyncFn = dyn Fn() -> Result<(), StoreError> + Send + Sync;

/// A sync that started, with its waiters, and its outcome once it has one.
struct Started {
    number: u64,
    waiters: Vec<Waiter>,
    outcome: Option<Result<(), StoreError>>,
}

struct State {
    queued: Vec<Waiter>,
    queued_messages: usize,
    /// When the oldest queued waiter asked.
    oldest: Option<Instant>,
    /// How long a small backlog waits for more before its sync starts.
    linger: Duration,
    /// Syncs in the order they started; the front ones are answered once they are done.
    started: VecDeque<Started>,
    running: usize,
    /// The number of the next sync to start.
    next: u64,
    /// False once the last [`Committer`] is gone: the threads finish what is queued and end.
    open: bool,
}

impl State {
    /// A sync starts when none runs and its backlog has lingered long enough, or is big
    /// enough (OVERLAP_MESSAGES) not to wait. A second one overlaps the first only for such a
    /// backlog: each sync costs CPU and a disk round trip, and delivery does not wait for it,
    /// only the ACKs do. Once the committer is closing, nothing lingers.
    fn may_start(&self, now: Instant) -> bool {
        if self.queued.is_empty() {
            return false;
        }
        let big = self.queued_messages >= OVERLAP_MESSAGES || !self.open;
        let lingered = self.oldest.is_some_and(|t| now >= t + self.linger);
        (self.running == 0 && (big || lingered)) || (self.running < SYNCS_IN_FLIGHT && big)
    }

    /// When a lingering backlog is due, if one is (only when no sync runs: a running sync's
    /// thread looks at the backlog when it is done).
    fn due(&self) -> Option<Instant> {
        let oldest = self
            .oldest
            .filter(|_| self.running == 0 && !self.queued.is_empty())?;
        Some(oldest + self.linger)
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Closes the queue when the last [`Committer`] handle goes.
struct Requests {
    shared: Arc<Shared>,
}

impl Drop for Requests {
    fn drop(&mut self) {
        self.shared.lock().open = false;
        self.shared.wake.notify_all();
    }
}

/// A handle to the group-commit threads.
#[derive(Clone)]
pub struct Committer {
    requests: Option<Arc<Requests>>,
}

/// The sync threads, to wait for once every [`Committer`] handle is dropped.
pub struct SyncThreads(Vec<JoinHandle<()>>);

impl SyncThreads {
    /// Blocks until the threads have answered every waiter and ended.
    pub fn join(self) {
        for thread in self.0 {
            let _ = thread.join();
        }
    }
}

impl Committer {
    /// Starts the sync threads, which call `sync` for backlogs that lingered up to `linger`;
    /// they end when the last handle is dropped. With `linger` `None` (fsync off),
    /// [`Committer::durable`] returns at once and there are no threads.
    pub fn start(
        sync: impl Fn() -> Result<(), StoreError> + Send + Sync + 'static,
        linger: Option<Duration>,
        metrics: Arc<Metrics>,
    ) -> Result<(Committer, Option<SyncThreads>), std::io::Error> {
        let Some(linger) = linger else {
            return Ok((Committer { requests: None }, None));
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queued: Vec::new(),
                queued_messages: 0,
                oldest: None,
                linger,
                started: VecDeque::new(),
                running: 0,
                next: 0,
                open: true,
            }),
            wake: Condvar::new(),
        });
        let sync: Arc<SyncFn> = Arc::new(sync);
        let mut threads = Vec::with_capacity(SYNCS_IN_FLIGHT);
        for i in 0..SYNCS_IN_FLIGHT {
            let (ours, sync, metrics) = (shared.clone(), sync.clone(), metrics.clone());
            let thread = std::thread::Builder::new()
                .name(format!("log-sync-{i}"))
                .spawn(move || run(&ours, sync.as_ref(), &metrics));
            match thread {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    drop(Requests { shared });
                    SyncThreads(threads).join();
                    return Err(e);
                }
            }
        }
        let requests = Some(Arc::new(Requests { shared }));
        Ok((Committer { requests }, Some(SyncThreads(threads))))
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
    /// sync is worth starting. Callbacks run in the order they were registered, on a sync
    /// thread, so they must be quick: answering a publisher, not more IO.
    pub fn when_durable(
        &self,
        messages: usize,
        then: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) {
        let Some(requests) = &self.requests else {
            return then(Ok(()));
        };
        let now = Instant::now();
        let mut state = requests.shared.lock();
        if state.queued.is_empty() {
            state.oldest = Some(now);
        }
        state.queued_messages += messages;
        state.queued.push(Waiter {
            messages,
            then: Box::new(then),
        });
        // Wake a thread when a sync may start now, or to time the linger of a new backlog
        // (a running sync's thread takes the backlog over when it is done).
        let first = state.queued.len() == 1 && state.running == 0;
        if first || state.may_start(now) {
            drop(state);
            requests.shared.wake.notify_one();
        }
    }
}

/// One sync thread: waits for a sync worth starting, runs it, and answers every sync at the
/// front of the queue that is done, so waiters are answered in the order they asked even when
/// the later of two overlapping syncs finishes first.
fn run(shared: &Shared, sync: &SyncFn, metrics: &Metrics) {
    let mut state = shared.lock();
    loop {
        while !state.may_start(Instant::now()) {
            if !state.open && state.queued.is_empty() {
                return;
            }
            state = match state.due() {
                Some(due) => {
                    let left = due.saturating_duration_since(Instant::now());
                    let waited = shared.wake.wait_timeout(state, left);
                    waited.unwrap_or_else(|p| p.into_inner()).0
                }
                None => shared.wake.wait(state).unwrap_or_else(|p| p.into_inner()),
            };
        }
        let waiters = std::mem::take(&mut state.queued);
        state.queued_messages = 0;
        state.oldest = None;
        state.running += 1;
        let number = state.next;
        state.next += 1;
        state.started.push_back(Started {
            number,
            waiters: Vec::new(),
            outcome: None,
        });
        let counted: usize = waiters.iter().map(|w| w.messages).sum();
        drop(state);

        metrics.log_commit_batch.observe(waiters.len() as f64);
        let started = std::time::Instant::now();
        // A panicking sync must not leave its entry unanswered at the front of `started`,
        // where it would hold back every later answer.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(sync))
            .unwrap_or_else(|_| Err(StoreError::Engine("the log sync panicked".to_owned())));
        metrics
            .log_sync_duration
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &outcome {
            tracing::error!(error = %e, messages = counted, "log sync failed");
        }

        state = shared.lock();
        state.running -= 1;
        let slot = state
            .started
            .iter_mut()
            .find(|s| s.number == number)
            .expect("a started sync is queued until it has an outcome");
        slot.waiters = waiters;
        slot.outcome = Some(outcome);
        // Answer under the lock so that two threads never answer out of order; the callbacks
        // only hand results to publishers.
        while state.started.front().is_some_and(|s| s.outcome.is_some()) {
            let done = state.started.pop_front().expect("front checked");
            let outcome = done.outcome.expect("checked");
            for waiter in done.waiters {
                (waiter.then)(outcome.clone());
            }
        }
        // Whatever queued meanwhile is this thread's next sync: no other thread is woken.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new())
    }

    #[test]
    fn every_waiter_is_answered_after_a_sync_and_the_threads_end_with_the_last_handle() {
        let syncs = Arc::new(AtomicUsize::new(0));
        let counted = syncs.clone();
        let (committer, threads) = Committer::start(
            move || {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
            Some(Duration::ZERO),
            metrics(),
        )
        .unwrap();
        let (tx, rx) = mpsc::channel();
        for i in 0..100 {
            let tx = tx.clone();
            let seen = syncs.clone();
            committer.when_durable(1, move |r| {
                // A waiter is answered only by a sync that started after it asked.
                tx.send((i, r.is_ok(), seen.load(Ordering::SeqCst)))
                    .unwrap();
            });
        }
        let answers: Vec<_> = (0..100).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(
            answers.iter().map(|a| a.0).collect::<Vec<_>>(),
            (0..100).collect::<Vec<_>>()
        );
        assert!(answers.iter().all(|a| a.1 && a.2 >= 1));
        drop(committer);
        threads.unwrap().join();
    }

    #[test]
    fn a_failed_sync_is_reported_to_its_waiters() {
        let (committer, threads) = Committer::start(
            || Err(StoreError::Engine("disk on fire".to_owned())),
            Some(Duration::ZERO),
            metrics(),
        )
        .unwrap();
        let (tx, rx) = mpsc::channel();
        committer.when_durable(1, move |r| tx.send(r).unwrap());
        assert!(rx.recv().unwrap().is_err());
        drop(committer);
        threads.unwrap().join();
    }

    #[test]
    fn a_panicking_sync_is_a_failed_one_and_later_syncs_still_answer() {
        let calls = AtomicUsize::new(0);
        let sync = move || {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("first sync panics");
            }
            Ok(())
        };
        let (committer, threads) = Committer::start(sync, Some(Duration::ZERO), metrics()).unwrap();
        let (tx, rx) = mpsc::channel();
        let first = tx.clone();
        committer.when_durable(1, move |r| first.send(r.is_ok()).unwrap());
        assert!(!rx.recv().unwrap());
        committer.when_durable(1, move |r| tx.send(r.is_ok()).unwrap());
        assert!(rx.recv().unwrap());
        drop(committer);
        threads.unwrap().join();
    }

    #[test]
    fn overlapping_syncs_answer_in_the_order_they_started() {
        // The first sync blocks until told; a backlog then starts a second, which finishes
        // first. Its waiters must still be answered after the first sync's.
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let calls = AtomicUsize::new(0);
        let (entered_tx, entered_rx) = mpsc::channel::<usize>();
        let entered_tx = Mutex::new(entered_tx);
        let (committer, threads) = Committer::start(
            move || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                entered_tx.lock().unwrap().send(n).unwrap();
                if n == 0 {
                    release_rx.lock().unwrap().recv().unwrap();
                }
                Ok(())
            },
            Some(Duration::ZERO),
            metrics(),
        )
        .unwrap();
        let (tx, rx) = mpsc::channel();
        let first = tx.clone();
        committer.when_durable(1, move |_| first.send("first").unwrap());
        assert_eq!(entered_rx.recv().unwrap(), 0);
        let second = tx.clone();
        committer.when_durable(OVERLAP_MESSAGES, move |_| second.send("second").unwrap());
        assert_eq!(entered_rx.recv().unwrap(), 1);
        release_tx.send(()).unwrap();
        assert_eq!(rx.recv().unwrap(), "first");
        assert_eq!(rx.recv().unwrap(), "second");
        drop(committer);
        threads.unwrap().join();
    }

    /// A committer whose sync counts itself, lingering `linger`.
    fn counting(linger: Duration) -> (Committer, SyncThreads, Arc<AtomicUsize>) {
        let syncs = Arc::new(AtomicUsize::new(0));
        let counted = syncs.clone();
        let sync = move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        };
        let (committer, threads) = Committer::start(sync, Some(linger), metrics()).unwrap();
        (committer, threads.unwrap(), syncs)
    }

    #[test]
    fn a_small_backlog_lingers_and_a_big_one_takes_it_along_at_once() {
        let (committer, threads, syncs) = counting(Duration::from_secs(3600));
        let (tx, rx) = mpsc::channel();
        let small = tx.clone();
        committer.when_durable(1, move |r| small.send(("small", r.is_ok())).unwrap());
        committer.when_durable(OVERLAP_MESSAGES, move |r| {
            tx.send(("big", r.is_ok())).unwrap()
        });
        assert_eq!(rx.recv().unwrap(), ("small", true));
        assert_eq!(rx.recv().unwrap(), ("big", true));
        // One sync for both: the small one waited (its linger is an hour) for the big one.
        assert_eq!(syncs.load(Ordering::SeqCst), 1);
        drop(committer);
        threads.join();
    }

    #[test]
    fn a_lingering_backlog_is_synced_when_the_committer_closes() {
        let (committer, threads, syncs) = counting(Duration::from_secs(3600));
        let (tx, rx) = mpsc::channel();
        committer.when_durable(1, move |r| tx.send(r.is_ok()).unwrap());
        drop(committer);
        threads.join();
        assert!(rx.recv().unwrap());
        assert_eq!(syncs.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn without_fsync_a_waiter_is_answered_at_once() {
        let (committer, threads) =
            Committer::start(|| panic!("no sync without fsync"), None, metrics()).unwrap();
        assert!(threads.is_none());
        let (tx, rx) = mpsc::channel();
        committer.when_durable(1, move |r| tx.send(r).unwrap());
        assert!(rx.try_recv().unwrap().is_ok());
    }
}
