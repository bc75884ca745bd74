//! Cancellation and task tracking for every long-running part.
//!
//! A [`Shutdown`] is a cancellation token plus a task tracker: components stop
//! accepting work when it is cancelled, and [`Shutdown::drain`] gives in-flight
//! work a deadline (the second stage). SIGINT and SIGTERM both trigger it.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Cancellation plus the tasks that must finish before the process exits.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// A fresh, not-cancelled shutdown handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cancellation token (cancelled when shutdown starts).
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Starts shutdown: every component stops accepting new work.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether shutdown has started.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when shutdown starts.
    pub async fn triggered(&self) {
        self.token.cancelled().await;
    }

    /// Resolves when shutdown starts; owns what it needs (for `'static` futures).
    pub fn triggered_owned(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }

    /// Spawns a tracked task inside the current tracing span.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut.in_current_span())
    }

    /// Second stage: waits up to `deadline` for tracked tasks. Returns false
    /// when some were still running at the deadline.
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.token.cancel();
        self.tracker.close();
        tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Triggers shutdown on the first SIGINT or SIGTERM.
    pub fn trigger_on_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let token = self.token.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
                _ = token.cancelled() => return,
            }
            token.cancel();
        });
        Ok(())
    }
}

/// How long open connections may finish after shutdown begins.
pub const CONNECTION_GRACE: Duration = Duration::from_secs(1);

impl Shutdown {
    /// Runs a server future (which stops accepting when shutdown triggers)
    /// in a tracked task. Second stage of the drain: connections still open
    /// [`CONNECTION_GRACE`] after shutdown began (clients that never read the
    /// end of their stream) are cut by dropping the server. A server error
    /// triggers shutdown of the whole process.
    pub fn spawn_server<F, E>(&self, what: &'static str, serve: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let stop = self.clone();
        self.spawn(async move {
            let result = tokio::select! {
                r = serve => r,
                _ = async {
                    stop.triggered().await;
                    tokio::time::sleep(CONNECTION_GRACE).await;
                } => {
                    tracing::info!(server = what, "closing connections still open after the grace period");
                    Ok(())
                }
            };
            if let Err(e) = result {
                tracing::error!(server = what, error = %e, "server stopped with an error");
                stop.trigger();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_tracked_tasks_and_reports_stragglers() {
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        shutdown.spawn(async move { s.triggered().await });
        assert!(shutdown.drain(Duration::from_secs(5)).await);

        let stuck = Shutdown::new();
        stuck.spawn(std::future::pending::<()>());
        assert!(!stuck.drain(Duration::from_millis(20)).await);
    }
}
