//! kube's default watcher backoff, made to keep growing while a watch keeps failing.
//!
//! The watcher yields `Event::Init` before every (re)list, and kube's
//! `StreamBackoff` resets its backoff on every item that is not an error. So a
//! list that fails every time (API server down, a PeerAuthentication version
//! not served) is retried at the shortest delay, about once a second, forever
//! — from every CA replica and every node agent at once. [`SteadyBackoff`]
//! ignores a reset that comes within [`STEADY`] of the last error: only a
//! watch that has stayed healthy that long starts again from the shortest delay.

use std::time::Duration;

use tokio::time::Instant;

use ::kube::runtime::utils::Backoff;
use ::kube::runtime::watcher::DefaultBackoff;

/// How long a watch must go without an error before its backoff resets.
pub(crate) const STEADY: Duration = Duration::from_secs(10);

/// [`DefaultBackoff`] (0.8 s doubling to 30 s, with jitter) that only resets
/// after [`STEADY`] without an error.
pub(crate) struct SteadyBackoff<B = DefaultBackoff> {
    inner: B,
    last_error: Option<Instant>,
}

impl Default for SteadyBackoff {
    fn default() -> Self {
        Self::new(DefaultBackoff::default())
    }
}

impl<B: Backoff> SteadyBackoff<B> {
    fn new(inner: B) -> Self {
        Self {
            inner,
            last_error: None,
        }
    }
}

impl<B: Backoff> Iterator for SteadyBackoff<B> {
    type Item = Duration;

    /// Called by `StreamBackoff` on each error.
    fn next(&mut self) -> Option<Duration> {
        self.last_error = Some(Instant::now());
        self.inner.next()
    }
}

impl<B: Backoff> Backoff for SteadyBackoff<B> {
    fn reset(&mut self) {
        if self.last_error.is_none_or(|t| t.elapsed() >= STEADY) {
            self.inner.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1, 2, 3, … seconds; reset starts over.
    struct Linear(u64);

    impl Iterator for Linear {
        type Item = Duration;
        fn next(&mut self) -> Option<Duration> {
            self.0 += 1;
            Some(Duration::from_secs(self.0))
        }
    }

    impl Backoff for Linear {
        fn reset(&mut self) {
            self.0 = 0;
        }
    }

    #[test]
    fn reset_right_after_an_error_does_not_shorten_the_next_delay() {
        let mut backoff = SteadyBackoff::new(Linear(0));
        backoff.reset(); // no error yet: resets
        assert_eq!(backoff.next(), Some(Duration::from_secs(1)));
        backoff.reset(); // the watcher's `Init` before the retried list
        assert_eq!(backoff.next(), Some(Duration::from_secs(2)));
        backoff.last_error = Instant::now().checked_sub(STEADY);
        backoff.reset(); // healthy for long enough
        assert_eq!(backoff.next(), Some(Duration::from_secs(1)));
    }
}
