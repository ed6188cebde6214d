//! Retry delays for everything that talks to a server: doubling from an
//! initial delay to a cap, each drawn at random from a band below its
//! nominal value, so that the agents of a whole cluster do not retry in
//! step after a backend restart.

use std::time::Duration;

/// Exponential backoff with jitter: the n-th delay is uniform in
/// `[floor * d, d]` where `d = min(max, initial * 2^n)`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    /// The lowest fraction of the nominal delay drawn: 0 for full jitter.
    floor: f64,
    failures: u32,
}

impl Backoff {
    /// Full jitter: delays anywhere between zero and the nominal value.
    pub(crate) fn full_jitter(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            floor: 0.0,
            failures: 0,
        }
    }

    /// Equal jitter: delays between half and all of the nominal value.
    pub(crate) fn equal_jitter(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            floor: 0.5,
            ..Backoff::full_jitter(initial, max)
        }
    }

    /// The delay after one more failure.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let nominal = self.initial.saturating_mul(1 << self.failures.min(20)).min(self.max);
        self.failures = self.failures.saturating_add(1);
        let floor = nominal.mul_f64(self.floor);
        floor + (nominal - floor).mul_f64(fastrand::f64())
    }

    /// Starts again from the initial delay, after a success.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_honours_retry_after() {
        let mut backoff = Backoff::full_jitter(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..20 {
            assert!(backoff.next_delay() <= Duration::from_secs(1));
        }
        let retry_after = Duration::from_secs(5);
        assert_eq!(backoff.next_delay().max(retry_after), retry_after);
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let (initial, max) = (Duration::from_millis(500), Duration::from_secs(30));
        let mut backoff = Backoff::equal_jitter(initial, max);
        let mut nominal = initial;
        for _ in 0..20 {
            let delay = backoff.next_delay();
            assert!(delay >= nominal / 2 && delay <= nominal, "{delay:?} vs {nominal:?}");
            nominal = (nominal * 2).min(max);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= initial);
    }
}
