//! Log lines about what is refused, dropped or cut off, at most one per interval, each saying
//! how many like it were held back since the last: a flood of refusals (a host opening
//! thousands of connections, a hostile peer) must not become a flood of logs. Used by the
//! substituter and by the node (mesh refusals, the index's bound).

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A line at most once an interval (a second by default), counting those held back.
pub struct RateLimitedLog {
    every: Duration,
    last: Mutex<Option<(Instant, u64)>>,
}

impl Default for RateLimitedLog {
    fn default() -> Self {
        RateLimitedLog::every(Duration::from_secs(1))
    }
}

impl RateLimitedLog {
    /// At most one line each `every`.
    pub fn every(every: Duration) -> Self {
        RateLimitedLog { every, last: Mutex::new(None) }
    }

    /// `Some(held back since the last line)` when a line may be logged now.
    pub fn admit(&self) -> Option<u64> {
        let mut last = self.last.lock();
        let now = Instant::now();
        match &mut *last {
            Some((at, held)) if now.duration_since(*at) < self.every => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let n = *held;
                (*at, *held) = (now, 0);
                Some(n)
            }
            None => {
                *last = Some((now, 0));
                Some(0)
            }
        }
    }

    /// Logs `message` at `warn`, with how many were held back, if a line may be logged now.
    pub fn warn(&self, message: impl FnOnce() -> String) {
        match self.admit() {
            Some(0) => tracing::warn!("{}", message()),
            Some(held_back) => {
                tracing::warn!("{} ({held_back} more like it since the last line)", message())
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_an_interval_counting_the_rest() {
        let log = RateLimitedLog::every(Duration::from_millis(200));
        assert_eq!(log.admit(), Some(0));
        assert_eq!(log.admit(), None);
        assert_eq!(log.admit(), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(log.admit(), Some(2));
    }
}
