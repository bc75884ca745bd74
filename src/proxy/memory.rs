//! Giving memory back after connections close.
//!
//! A proxy that held thousands of connections keeps their memory after they
//! close: the buffer pools keep buffers, and the C allocator keeps freed
//! pages mapped. Every [`CHECK_EVERY`], [`ReleasePolicy`] compares the open
//! connections with their peak since the last release; once enough of them
//! have closed it empties the buffer pools and trims the C heap (on a
//! blocking thread), so RSS returns near the idle baseline. The heap does
//! not trim itself meanwhile: a bulk transfer frees and allocates buffers
//! in a loop, and each automatic trim made the next allocation fault its
//! pages in again.

use std::time::Duration;

use crate::proxy::buffers;
use crate::proxy::metrics::ProxyMetrics;
use crate::shutdown::Shutdown;

/// How often the open connections are compared with their peak.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Fewer closed connections than this are not worth a release.
pub const MIN_CLOSED: i64 = 64;

/// An HBONE connection counts as this many proxied connections: it holds
/// a TLS session and HTTP/2 buffers, so closing a few after a burst is
/// worth a release.
pub const HBONE_WEIGHT: i64 = 16;

/// When to release: after at least [`MIN_CLOSED`], and at least a quarter
/// of the peak, of the connections have closed.
#[derive(Debug, Default)]
pub struct ReleasePolicy {
    peak: i64,
}

impl ReleasePolicy {
    /// Notes `open` connections now; whether memory should be released.
    pub fn observe(&mut self, open: i64) -> bool {
        self.peak = self.peak.max(open);
        let closed = self.peak - open;
        if closed >= MIN_CLOSED && closed * 4 >= self.peak {
            self.peak = open;
            true
        } else {
            false
        }
    }
}

/// Empties the buffer pools and trims the C heap.
pub async fn release() {
    buffers::release_pools();
    let _ = tokio::task::spawn_blocking(meshid_heap::release_free_memory).await;
}

/// Runs the policy on the proxy's open connections until shutdown; from
/// now on the C heap gives memory back only then
/// ([`meshid_heap::trim_only_on_release`]).
pub fn spawn_release(metrics: ProxyMetrics, shutdown: Shutdown) {
    if !meshid_heap::trim_only_on_release() {
        tracing::debug!("the C heap keeps its own trimming (not glibc)");
    }
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let mut policy = ReleasePolicy::default();
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.triggered() => return,
                _ = tick.tick() => {}
            }
            let open = metrics.open_connections.get() + HBONE_WEIGHT * metrics.hbone_open.get();
            if policy.observe(open) {
                tracing::debug!(open, "connections closed: giving their memory back");
                release().await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_once_enough_connections_closed() {
        let mut policy = ReleasePolicy::default();
        assert!(!policy.observe(1000));
        assert!(
            !policy.observe(990),
            "ten closed of a thousand is not worth it"
        );
        assert!(policy.observe(700));
        // The peak starts again from what is open now.
        assert!(!policy.observe(690));
        assert!(policy.observe(0));
        assert!(!policy.observe(0));
    }

    #[test]
    fn a_small_proxy_releases_after_min_closed() {
        let mut policy = ReleasePolicy::default();
        assert!(!policy.observe(MIN_CLOSED - 1));
        assert!(!policy.observe(0), "fewer than MIN_CLOSED closed");
        assert!(!policy.observe(MIN_CLOSED));
        assert!(policy.observe(0));
    }
}
