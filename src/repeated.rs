//! Repeated warnings without flooding the log: the first occurrence is logged, then at most one
//! line per period, carrying how many occurrences were not logged since the last line.
//!
//! An unreachable broker reports the same failure dozens of times a second; a log that repeats
//! it hides everything else and costs disk, while one line every few seconds with a count says
//! the same.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One kind of repeated event.
#[derive(Debug)]
pub struct Repeated {
    every: Duration,
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl Repeated {
    pub fn new(every: Duration) -> Repeated {
        Repeated {
            every,
            last_logged: None,
            suppressed: 0,
        }
    }

    /// Counts an occurrence; `Some(n)` when this one is to be logged, `n` being how many were
    /// not logged before it.
    pub fn occurred(&mut self) -> Option<u64> {
        self.occurred_at(Instant::now())
    }

    pub fn occurred_at(&mut self, now: Instant) -> Option<u64> {
        match self.last_logged {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.suppressed = self.suppressed.saturating_add(1);
                None
            }
            _ => {
                self.last_logged = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Several kinds at once, keyed by a short fixed text (an error code, a log facility), shared
/// between threads: librdkafka's callbacks come from whichever thread polls.
#[derive(Debug)]
pub struct RepeatedByKey {
    every: Duration,
    kinds: Mutex<HashMap<String, Repeated>>,
}

/// Keys beyond this many are not tracked separately; librdkafka's error codes and facilities
/// are a few dozen, so this only guards against an unexpected source of keys.
const MAX_KEYS: usize = 256;

impl RepeatedByKey {
    pub fn new(every: Duration) -> RepeatedByKey {
        RepeatedByKey {
            every,
            kinds: Mutex::new(HashMap::new()),
        }
    }

    /// As [`Repeated::occurred`], for the kind `key`.
    pub fn occurred(&self, key: &str) -> Option<u64> {
        let now = Instant::now();
        let mut kinds = self
            .kinds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !kinds.contains_key(key) && kinds.len() >= MAX_KEYS {
            return kinds
                .entry(String::from("(other)"))
                .or_insert_with(|| Repeated::new(self.every))
                .occurred_at(now);
        }
        kinds
            .entry(key.to_owned())
            .or_insert_with(|| Repeated::new(self.every))
            .occurred_at(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_is_logged_then_one_summary_per_period_with_the_count() {
        let start = Instant::now();
        let mut repeated = Repeated::new(Duration::from_secs(10));
        let logged: Vec<(u64, Option<u64>)> = (0..=25)
            .map(|s| (s, repeated.occurred_at(start + Duration::from_secs(s))))
            .filter(|(_, logged)| logged.is_some())
            .collect();
        assert_eq!(logged, [(0, Some(0)), (10, Some(9)), (20, Some(9))]);
    }

    #[test]
    fn keys_are_limited_separately() {
        let repeated = RepeatedByKey::new(Duration::from_secs(3600));
        assert_eq!(repeated.occurred("a"), Some(0));
        assert_eq!(repeated.occurred("b"), Some(0));
        assert_eq!(repeated.occurred("a"), None);
        assert_eq!(repeated.occurred("b"), None);
    }

    #[test]
    fn unexpected_keys_share_one_budget() {
        let repeated = RepeatedByKey::new(Duration::from_secs(3600));
        for key in 0..MAX_KEYS {
            assert_eq!(repeated.occurred(&key.to_string()), Some(0));
        }
        assert_eq!(repeated.occurred("new-1"), Some(0));
        assert_eq!(repeated.occurred("new-2"), None);
    }
}
