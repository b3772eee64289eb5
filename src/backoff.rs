//! Exponential backoff with jitter, shared by every retry loop (the poll loop's batch retries,
//! the code store's reconnects, resumable transactional calls).
//!
//! Each wait is drawn at random from the upper half of the current step, `[step / 2, step]`,
//! and the step doubles up to a ceiling. Without the jitter, workers that failed together (a
//! broker or Redis outage) would retry together, in lockstep, and hit the recovering service in
//! waves; the lower bound keeps every wait a real backoff.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    start: Duration,
    max: Duration,
    step: Duration,
    /// xorshift64 state; seeded per instance from the standard library's random hasher keys, so
    /// no two processes (or loops) share a sequence.
    rng: u64,
}

impl Backoff {
    /// Steps from `start`, doubling up to `max` (`max` below `start` is raised to it).
    pub fn new(start: Duration, max: Duration) -> Backoff {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(u64::from(std::process::id()));
        Backoff {
            start,
            max: max.max(start),
            step: start,
            // xorshift never leaves 0, so 0 is replaced.
            rng: hasher.finish().max(1),
        }
    }

    /// The next wait, in `[step / 2, step]`; then the step doubles (to the ceiling).
    pub fn next_wait(&mut self) -> Duration {
        let step = self.step;
        self.step = step.saturating_mul(2).min(self.max);
        let half = step / 2;
        let spread = u64::try_from((step - half).as_nanos()).unwrap_or(u64::MAX);
        let jitter = if spread == 0 {
            0
        } else {
            self.random() % (spread + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    /// After a success: the next failure waits little again.
    pub fn reset(&mut self) {
        self.step = self.start;
    }

    fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn waits_stay_within_the_upper_half_of_a_step_that_doubles_to_the_ceiling() {
        for _ in 0..200 {
            let mut backoff = Backoff::new(50 * MS, 300 * MS);
            for step in [50, 100, 200, 300, 300, 300] {
                let wait = backoff.next_wait();
                assert!(
                    wait >= step * MS / 2 && wait <= step * MS,
                    "{wait:?} outside [{}, {step}] ms",
                    step / 2
                );
            }
        }
    }

    #[test]
    fn reset_starts_from_the_first_step_again() {
        let mut backoff = Backoff::new(50 * MS, 5000 * MS);
        for _ in 0..10 {
            backoff.next_wait();
        }
        backoff.reset();
        assert!(backoff.next_wait() <= 50 * MS);
    }

    #[test]
    fn loops_that_fail_together_do_not_retry_together() {
        let waits = |mut b: Backoff| (0..8).map(|_| b.next_wait()).collect::<Vec<_>>();
        let a = waits(Backoff::new(100 * MS, 5000 * MS));
        let b = waits(Backoff::new(100 * MS, 5000 * MS));
        assert_ne!(a, b, "two workers drew the same waits");
        // Within one loop the waits are spread too, not pinned to one end of the range.
        let mut many = Backoff::new(1000 * MS, 1000 * MS);
        let draws: Vec<Duration> = (0..100).map(|_| many.next_wait()).collect();
        assert!(draws.iter().any(|w| *w < 750 * MS) && draws.iter().any(|w| *w > 750 * MS));
    }

    #[test]
    fn a_zero_or_inverted_range_is_safe() {
        assert_eq!(
            Backoff::new(Duration::ZERO, Duration::ZERO).next_wait(),
            Duration::ZERO
        );
        let mut inverted = Backoff::new(100 * MS, MS);
        assert!(inverted.next_wait() <= 100 * MS);
    }
}
