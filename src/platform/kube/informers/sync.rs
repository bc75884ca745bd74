//! Sync state of each watch, and readiness derived from it.
//!
//! Owns the readiness rule: ready once every watch completed a first list
//! (a PeerAuthentication version the API server does not serve, `404`,
//! counts as done: a cluster may serve only v1 or only v1beta1), and ready
//! from then on while the API server is away — unless a staleness bound is
//! set and some watch has been failing for longer than it. Also owns logging
//! watch trouble once per outage (warn), and its end (info).
//!
//! A watch that comes back says nothing until its next event (kube's watcher
//! swallows bookmarks), so a quiet watch's outage is taken as over once no
//! error has been seen for [`RETRY_WINDOW`]: longer than kube's longest
//! backoff (30 s, up to twice that with jitter), so a watch still failing
//! would have failed again by then.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use ::kube::runtime::watcher;

/// See the module documentation.
pub(crate) const RETRY_WINDOW: Duration = Duration::from_secs(65);

/// One watch of the informers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Feed {
    Pods,
    Namespaces,
    PoliciesV1,
    PoliciesV1Beta1,
}

impl Feed {
    const ALL: [Feed; 4] = [
        Feed::Pods,
        Feed::Namespaces,
        Feed::PoliciesV1,
        Feed::PoliciesV1Beta1,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Feed::Pods => "pods",
            Feed::Namespaces => "namespaces",
            Feed::PoliciesV1 => "peerauthentications.security.istio.io/v1",
            Feed::PoliciesV1Beta1 => "peerauthentications.security.istio.io/v1beta1",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Phase {
    /// No list has completed yet.
    #[default]
    Pending,
    /// A list completed; the store holds a complete view.
    Synced,
    /// The resource is not served (`404` on list): nothing to sync.
    Absent,
}

#[derive(Debug, Default, Clone, Copy)]
struct FeedState {
    phase: Phase,
    /// Since when the watch has been failing (cleared by the next good event).
    failing_since: Option<Instant>,
    /// The latest error of the current streak.
    last_error: Option<Instant>,
}

/// What happened to a feed on an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorOutcome {
    /// Still failing, or failing for the first time.
    Failing,
    /// The resource turned out not to be served (just now).
    BecameAbsent,
}

/// Sync state of every feed.
#[derive(Debug)]
pub(crate) struct SyncStatus {
    feeds: Mutex<[FeedState; 4]>,
    retry_window: Duration,
}

impl Default for SyncStatus {
    fn default() -> Self {
        Self::with_retry_window(RETRY_WINDOW)
    }
}

impl SyncStatus {
    fn with_retry_window(retry_window: Duration) -> Self {
        Self {
            feeds: Mutex::new([FeedState::default(); 4]),
            retry_window,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut [FeedState; 4]) -> T) -> T {
        f(&mut self.feeds.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn phase(&self, feed: Feed) -> Phase {
        self.with(|s| s[feed.slot()].phase)
    }

    /// A good event arrived (an object or the end of a list).
    pub(crate) fn on_progress(&self, feed: Feed) {
        let was_failing = self.with(|s| {
            let state = &mut s[feed.slot()];
            state.last_error = None;
            state.failing_since.take()
        });
        if let Some(since) = was_failing {
            tracing::info!(
                watch = feed.name(),
                outage = ?since.elapsed(),
                "watch is back; caches are current again"
            );
        }
    }

    /// A (re)list completed.
    pub(crate) fn on_synced(&self, feed: Feed) {
        self.on_progress(feed);
        let before = self.with(|s| std::mem::replace(&mut s[feed.slot()].phase, Phase::Synced));
        if before != Phase::Synced {
            tracing::info!(watch = feed.name(), "first sync complete");
        }
    }

    /// The watch failed; kube's backoff retries it.
    pub(crate) fn on_error(&self, feed: Feed, error: &watcher::Error) -> ErrorOutcome {
        let not_served = matches!(feed, Feed::PoliciesV1 | Feed::PoliciesV1Beta1)
            && matches!(error, watcher::Error::InitialListFailed(::kube::Error::Api(s)) if s.code == 404);
        if not_served {
            let before = self.with(|s| {
                let state = &mut s[feed.slot()];
                state.failing_since = None;
                state.last_error = None;
                std::mem::replace(&mut state.phase, Phase::Absent)
            });
            if before == Phase::Absent {
                return ErrorOutcome::Failing;
            }
            tracing::info!(
                watch = feed.name(),
                "not served by this API server (404); policies come from the other version"
            );
            return ErrorOutcome::BecameAbsent;
        }
        let gone = matches!(error, watcher::Error::WatchError(s) if s.code == 410);
        let first = self.with(|s| {
            let state = &mut s[feed.slot()];
            let now = Instant::now();
            let first = state.failing_since.is_none();
            state.failing_since.get_or_insert(now);
            state.last_error = Some(now);
            first
        });
        if gone {
            // Routine: the watch fell behind the API server's history. The
            // watcher relists; the store keeps serving until the list is in.
            tracing::info!(watch = feed.name(), "watch expired (410 Gone); relisting");
        } else if first {
            tracing::warn!(
                watch = feed.name(),
                error = %error,
                "watch failed; serving from the cache and retrying with backoff"
            );
        } else {
            tracing::debug!(watch = feed.name(), error = %error, "watch still failing");
        }
        ErrorOutcome::Failing
    }

    /// Every feed synced (or not served), and — with `max_staleness` — none
    /// failing for longer than that (and still failing: see [`RETRY_WINDOW`]).
    pub(crate) fn is_ready(&self, max_staleness: Option<Duration>) -> bool {
        self.with(|s| {
            Feed::ALL.iter().all(|feed| {
                let state = s[feed.slot()];
                let synced = state.phase != Phase::Pending;
                let stale = match (max_staleness, state.failing_since, state.last_error) {
                    (Some(max), Some(since), Some(last)) => {
                        since.elapsed() > max && last.elapsed() <= self.retry_window
                    }
                    _ => false,
                };
                synced && !stale
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> ::kube::Error {
        ::kube::Error::Api(Box::new(::kube::core::Status {
            code,
            ..Default::default()
        }))
    }

    fn sync_all(status: &SyncStatus) {
        for feed in Feed::ALL {
            status.on_synced(feed);
        }
    }

    #[test]
    fn ready_only_when_every_feed_synced_or_absent() {
        let status = SyncStatus::default();
        assert!(!status.is_ready(None));
        status.on_synced(Feed::Pods);
        status.on_synced(Feed::Namespaces);
        status.on_synced(Feed::PoliciesV1Beta1);
        assert!(!status.is_ready(None));
        let outcome = status.on_error(
            Feed::PoliciesV1,
            &watcher::Error::InitialListFailed(api_error(404)),
        );
        assert_eq!(outcome, ErrorOutcome::BecameAbsent);
        assert!(status.is_ready(None));
    }

    #[test]
    fn a_404_on_pods_is_a_failure_not_absence() {
        let status = SyncStatus::default();
        let outcome = status.on_error(
            Feed::Pods,
            &watcher::Error::InitialListFailed(api_error(404)),
        );
        assert_eq!(outcome, ErrorOutcome::Failing);
        assert_eq!(status.phase(Feed::Pods), Phase::Pending);
    }

    #[tokio::test(start_paused = true)]
    async fn failing_watch_keeps_readiness_unless_stale_for_too_long() {
        let status = SyncStatus::default();
        sync_all(&status);
        status.on_error(Feed::Pods, &watcher::Error::WatchFailed(api_error(500)));
        assert!(status.is_ready(None));
        assert!(status.is_ready(Some(Duration::from_secs(60))));
        tokio::time::advance(Duration::from_millis(20)).await;
        assert!(!status.is_ready(Some(Duration::from_millis(10))));
        status.on_progress(Feed::Pods);
        assert!(status.is_ready(Some(Duration::from_millis(10))));
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_watch_counts_as_recovered_once_errors_stop() {
        let status = SyncStatus::with_retry_window(Duration::from_millis(50));
        sync_all(&status);
        status.on_error(
            Feed::Namespaces,
            &watcher::Error::WatchFailed(api_error(500)),
        );
        tokio::time::advance(Duration::from_millis(20)).await;
        assert!(
            !status.is_ready(Some(Duration::from_millis(10))),
            "stale, still failing"
        );
        tokio::time::advance(Duration::from_millis(60)).await;
        assert!(
            status.is_ready(Some(Duration::from_millis(10))),
            "no error for a whole window"
        );
    }
}
