//! Waiting for a condition with a deadline, the one way the harness synchronises with the
//! processes it starts: never a bare sleep, never an unbounded loop.

use std::time::{Duration, Instant};

/// The first pause between two polls; it doubles up to [`MAX_POLL_INTERVAL`].
const FIRST_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// The longest pause between two polls.
const MAX_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Polls `condition` until it holds, for at most `timeout`.
///
/// Panics with `what` (say, "host 2 to see host 1's closure") when the deadline passes, after
/// one last poll at the deadline itself.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    wait_for(timeout, what, || condition().then_some(()))
}

/// Polls `probe` until it returns `Some`, for at most `timeout`, and returns that value.
///
/// Panics with `what` when the deadline passes; see [`wait_until`].
pub fn wait_for<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut interval = FIRST_POLL_INTERVAL;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        let now = Instant::now();
        if now >= deadline {
            panic!("timed out after {:.1?} waiting for {what}", now - start);
        }
        std::thread::sleep(interval.min(deadline - now));
        interval = (interval * 2).min(MAX_POLL_INTERVAL);
    }
}

/// Polls `probe` every `step` (a fixed step, for measuring when something happens) until it
/// returns `Some`, for at most `timeout`, and returns that value with when it was seen.
///
/// Panics with `what` when the deadline passes.
pub fn poll_every<T>(
    step: Duration,
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> (T, Instant) {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        if let Some(value) = probe() {
            return (value, Instant::now());
        }
        let now = Instant::now();
        if now >= deadline {
            panic!("timed out after {:.1?} waiting for {what}", now - start);
        }
        std::thread::sleep(step.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_as_soon_as_the_condition_holds() {
        let mut polls = 0;
        let start = Instant::now();
        wait_until(Duration::from_secs(5), "the third poll", || {
            polls += 1;
            polls == 3
        });
        assert_eq!(polls, 3);
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn hands_back_the_probed_value() {
        let mut n = 0;
        let got = wait_for(Duration::from_secs(5), "n to reach 2", || {
            n += 1;
            (n >= 2).then_some(n * 10)
        });
        assert_eq!(got, 20);
    }

    #[test]
    fn poll_every_says_when_it_saw_the_value() {
        let start = Instant::now();
        let mut n = 0;
        let (got, seen) = poll_every(Duration::from_millis(5), Duration::from_secs(5), "n", || {
            n += 1;
            (n == 3).then_some("three")
        });
        assert_eq!(got, "three");
        assert!(seen >= start && seen <= Instant::now());
    }

    #[test]
    #[should_panic(expected = "timed out after")]
    fn panics_naming_what_it_waited_for() {
        wait_until(Duration::from_millis(30), "something that never happens", || false);
    }
}
