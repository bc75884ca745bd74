//! Time: the [`Clock`] every TTL computation goes through, so tests can move
//! time, and the two timing rules every retry and renewal follows: [`Backoff`]
//! (capped doubling with equal jitter) and [`refresh_at`] (renew at a fraction
//! of the lifetime measured from notBefore).
//!
//! Uses nothing else in the crate. Waiting itself is tokio's
//! (`tokio::time::sleep`, `tokio::time::Instant`), so tests pause it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

/// A source of "now". Production uses [`SystemClock`]; tests use [`TestClock`].
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time, UTC.
    fn now(&self) -> OffsetDateTime;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Clone)]
pub struct TestClock {
    now: Arc<Mutex<OffsetDateTime>>,
}

impl TestClock {
    /// A clock frozen at `start`.
    pub fn new(start: OffsetDateTime) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// Moves the clock forward (or backward, with a negative duration).
    pub fn advance(&self, by: time::Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: OffsetDateTime) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }
}

impl Clock for TestClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The clock type components hold.
pub type SharedClock = Arc<dyn Clock>;

/// The system clock, shared.
pub fn system_clock() -> SharedClock {
    Arc::new(SystemClock)
}

/// Capped exponential backoff with "equal jitter": retry `n` (0 for the
/// first retry) waits `initial × 2ⁿ`, at most `max`, of which half is fixed
/// and half scaled by a jitter in `[0, 1]`, so clients that failed together
/// do not all come back at once, and none waits less than half the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first step.
    pub initial: Duration,
    /// The longest step.
    pub max: Duration,
}

impl Backoff {
    /// Steps from `initial`, doubling up to `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The wait before retry `retry` (0-based), with `jitter` in `[0, 1]`
    /// (clamped).
    pub fn delay(&self, retry: u32, jitter: f64) -> Duration {
        let full = self
            .initial
            .saturating_mul(1u32 << retry.min(20))
            .min(self.max);
        full / 2 + (full / 2).mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// [`delay`](Self::delay) with a fresh [`jitter`].
    pub fn jittered(&self, retry: u32) -> Duration {
        self.delay(retry, jitter())
    }
}

/// A uniform value in `[0, 1)` from the system's random generator (0.5 if it
/// fails), for spreading retries and renewals.
pub fn jitter() -> f64 {
    let mut bytes = [0u8; 4];
    match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

/// When a certificate valid from `not_before` to `not_after` is renewed: at
/// `fraction` of its lifetime measured from notBefore (as ztunnel and Envoy
/// measure it), moved by `jitter` × lifetime (`jitter` may be negative),
/// never before notBefore nor after notAfter.
pub fn refresh_at(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    fraction: f64,
    jitter: f64,
) -> OffsetDateTime {
    let lifetime = (not_after - not_before).as_seconds_f64().max(0.0);
    not_before + time::Duration::seconds_f64(lifetime * (fraction + jitter).clamp(0.0, 1.0))
}

/// How long from `now` until `at`; zero when `at` has passed.
pub fn until(at: OffsetDateTime, now: OffsetDateTime) -> Duration {
    Duration::try_from(at - now).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_clock_moves_only_when_told() {
        let start = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let clock = TestClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(time::Duration::seconds(90));
        assert_eq!(clock.now(), start + time::Duration::seconds(90));
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_equal_jitter() {
        let b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(250));
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(500));
        assert_eq!(b.delay(1, 1.0), Duration::from_secs(1));
        assert_eq!(b.delay(3, 1.0), Duration::from_secs(4));
        for retry in [6, 7, 20, 1000, u32::MAX] {
            assert_eq!(b.delay(retry, 1.0), Duration::from_secs(30));
            assert_eq!(b.delay(retry, 0.0), Duration::from_secs(15));
        }
        // Out-of-range jitter is clamped, never stretches past the step.
        assert_eq!(b.delay(2, 7.0), b.delay(2, 1.0));
        assert_eq!(b.delay(2, -3.0), b.delay(2, 0.0));
    }

    #[test]
    fn jitter_stays_in_the_unit_interval_and_varies() {
        let samples: Vec<f64> = (0..64).map(|_| jitter()).collect();
        assert!(samples.iter().all(|j| (0.0..1.0).contains(j)));
        assert!(samples.iter().any(|&j| j != samples[0]));
    }

    #[test]
    fn refresh_is_a_fraction_of_the_whole_lifetime_from_not_before() {
        let nb = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let na = nb + time::Duration::seconds(100);
        assert_eq!(
            refresh_at(nb, na, 0.5, 0.0),
            nb + time::Duration::seconds(50)
        );
        assert_eq!(
            refresh_at(nb, na, 0.5, 0.05),
            nb + time::Duration::seconds(55)
        );
        assert_eq!(
            refresh_at(nb, na, 0.5, -0.05),
            nb + time::Duration::seconds(45)
        );
        // Clamped to the certificate's own lifetime.
        assert_eq!(refresh_at(nb, na, 0.5, 0.9), na);
        assert_eq!(refresh_at(nb, na, 0.0, -1.0), nb);
        // A certificate already past its refresh time is renewed now.
        assert_eq!(until(refresh_at(nb, na, 0.5, 0.0), na), Duration::ZERO);
        assert_eq!(
            until(
                refresh_at(nb, na, 0.5, 0.0),
                nb + time::Duration::seconds(10)
            ),
            Duration::from_secs(40)
        );
    }
}
