//! A call counter that tests wait on instead of the clock: a fake counts each
//! call it serves, the test awaits the count it needs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Calls served so far, with a wake-up on each.
#[derive(Debug, Default)]
pub struct Calls {
    count: AtomicUsize,
    called: Notify,
}

impl Calls {
    /// Counts one call and wakes the waiters.
    pub fn hit(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.called.notify_waiters();
    }

    /// Calls so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits (at most 10 s, then panics naming `what`) until at least `n`
    /// calls were made.
    pub async fn reach(&self, n: usize, what: &str) {
        let wait = async {
            loop {
                let called = self.called.notified();
                if self.count() >= n {
                    return;
                }
                called.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .is_err()
        {
            panic!("{what}: {} calls of the {n} awaited", self.count());
        }
    }
}
