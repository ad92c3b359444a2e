//! Shutdown bookkeeping: long-running tasks (connections, channel sequencers, the retention
//! sweeper) hold a [`TaskGuard`]; shutdown closes the [`Tasks`] and waits until every guard is
//! gone, so the log is synced and closed only after nothing can write to it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

/// Hands out guards until closed.
#[derive(Clone)]
pub struct Tasks {
    sender: Arc<Mutex<Option<mpsc::Sender<()>>>>,
}

/// Held by a running task; dropping it tells shutdown the task is done.
pub struct TaskGuard {
    _sender: mpsc::Sender<()>,
}

/// Waits for every guard once [`Tasks::close`] has been called.
pub struct TasksDone {
    receiver: mpsc::Receiver<()>,
}

impl Tasks {
    /// A new tracker and the handle that waits for its tasks.
    pub fn new() -> (Tasks, TasksDone) {
        let (sender, receiver) = mpsc::channel(1);
        (
            Tasks {
                sender: Arc::new(Mutex::new(Some(sender))),
            },
            TasksDone { receiver },
        )
    }

    /// A guard for a new task, or `None` once shutting down.
    pub fn guard(&self) -> Option<TaskGuard> {
        let sender = self.sender.lock().expect("tasks lock");
        sender.as_ref().map(|s| TaskGuard { _sender: s.clone() })
    }

    /// Stops handing out guards.
    pub fn close(&self) {
        self.sender.lock().expect("tasks lock").take();
    }
}

impl TasksDone {
    /// Resolves when every guard is dropped, or after `limit`; true if all finished.
    pub async fn wait(mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.receiver.recv())
            .await
            .is_ok()
    }
}
