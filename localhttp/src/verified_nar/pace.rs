//! How a holder paces its bytes, judged only over the time spent waiting on it (a client that
//! reads slowly does not count against the peer): [`Idle`], nothing at all for a while (a
//! stall), and [`Pace`], too few bytes a second over a window (a trickle).

use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep, sleep};

/// The idle timeout on the holder sending, or on the holder asked to go on: armed when it
/// first makes the transfer wait, stopped when it delivers.
pub(super) struct Idle {
    timer: Pin<Box<Sleep>>,
    pub(super) timeout: Duration,
    waiting: bool,
}

impl Idle {
    pub(super) fn new(timeout: Duration) -> Self {
        Idle { timer: Box::pin(sleep(timeout)), timeout, waiting: false }
    }

    /// The holder makes us wait from now: the timeout starts over.
    pub(super) fn arm(&mut self) {
        self.waiting = true;
        let deadline = Instant::now() + self.timeout;
        self.timer.as_mut().reset(deadline);
    }

    /// The holder makes us wait: the timeout starts unless it already runs.
    pub(super) fn arm_unless_waiting(&mut self) {
        if !self.waiting {
            self.arm();
        }
    }

    /// The holder delivered: the next wait starts a new timeout.
    pub(super) fn stop(&mut self) {
        self.waiting = false;
    }

    /// Whether the timeout has run out; if not, `cx` is woken when it does.
    pub(super) fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.timer.as_mut().poll(cx).is_ready()
    }
}

/// The rate a holder sends at, over the time spent waiting on it: below [`Pace::min_rate`]
/// over a window of [`Pace::window`] of waiting, it is too slow.
#[derive(Debug, Clone)]
pub(super) struct Pace {
    pub(super) min_rate: u64,
    window: Duration,
    waited: Duration,
    bytes: u64,
    since: Option<Instant>,
}

impl Pace {
    /// `min_rate` 0: never too slow.
    pub(super) fn new(min_rate: u64, window: Duration) -> Self {
        Pace { min_rate, window, waited: Duration::ZERO, bytes: 0, since: None }
    }

    /// Starts over, for a new holder or a new stream of the same one.
    pub(super) fn reset(&mut self) {
        *self = Pace::new(self.min_rate, self.window);
    }

    /// The holder makes us wait from now (if it was not already).
    pub(super) fn waiting(&mut self) {
        self.since.get_or_insert_with(Instant::now);
    }

    /// The holder delivered `len` bytes, ending the wait.
    pub(super) fn chunk(&mut self, len: usize) {
        if let Some(since) = self.since.take() {
            self.waited += since.elapsed();
        }
        self.bytes += len as u64;
    }

    /// The rate over the window just completed, if it was under the minimum.
    pub(super) fn too_slow(&mut self) -> Option<u64> {
        if self.min_rate == 0 || self.waited < self.window {
            return None;
        }
        let rate = (self.bytes as f64 / self.waited.as_secs_f64()) as u64;
        self.reset();
        (rate < self.min_rate).then_some(rate)
    }
}
