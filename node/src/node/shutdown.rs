//! Stopping a node's tasks together: one signal every long-lived task watches, and one
//! tracker of every task spawned, so that stopping can wait until all of them have ended.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The stop signal and the task tracker, shared by every part of a node. Cheap to clone.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// Runs `task` on the runtime, tracked, until it ends (it watches [`Shutdown::signalled`]
    /// itself).
    pub fn spawn<F>(&self, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Runs `task`, tracked, and drops it as soon as the stop signal is given.
    pub fn spawn_until_stopped<F>(&self, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.token.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = task => {}
            }
        })
    }

    /// Completes once the stop signal has been given.
    pub async fn signalled(&self) {
        self.token.cancelled().await
    }

    /// Gives the stop signal without waiting for anything.
    pub fn signal(&self) {
        self.token.cancel();
    }

    /// Gives the stop signal and waits up to `limit` for every tracked task to end. False if
    /// some were still running then.
    pub async fn stop(&self, limit: Duration) -> bool {
        self.token.cancel();
        self.tracker.close();
        tokio::time::timeout(limit, self.tracker.wait()).await.is_ok()
    }

    /// How many tracked tasks are running.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_waits_for_every_task() {
        let shutdown = Shutdown::new();
        let (watching, endless) = (shutdown.clone(), shutdown.clone());
        shutdown.spawn(async move { watching.signalled().await });
        endless.spawn_until_stopped(std::future::pending());
        assert_eq!(shutdown.running(), 2);
        assert!(shutdown.stop(Duration::from_secs(5)).await);
        assert_eq!(shutdown.running(), 0);
    }

    #[tokio::test]
    async fn stop_says_when_a_task_outlives_it() {
        let shutdown = Shutdown::new();
        shutdown.spawn(std::future::pending());
        assert!(!shutdown.stop(Duration::from_millis(20)).await);
    }
}
