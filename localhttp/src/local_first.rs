//! The machine's own Nix first: while it fetches through the localhost substituter, the LAN
//! listener's clients wait their turn.
//!
//! Both listeners share one [`LocalFirst`] (it travels in [`crate::Config`], the LAN
//! listener's config being a clone of the localhost one with [`Role::Lan`]). The localhost
//! listener marks each of Nix's requests active ([`LocalFirst::local_request`]: a narinfo
//! until it is answered, a NAR until its body ends); the machine is *busy* while any is active
//! and for [`Limits::linger`] after the last one ended, since Nix asks for a closure level by
//! level with gaps between the levels. While it is busy, LAN work waits
//! ([`LocalFirst::lan_turn`]): a request before its handler runs, a NAR body before each chunk
//! ([`Yielding`]). The waiting go one at a time, at most one every [`Limits::pace`] (a trickle
//! that keeps LAN clients moving), all of them as soon as the machine is idle, and none waits
//! longer than [`Limits::bound`]: a LAN client is slowed, never starved, and never gets an
//! error or a miss for having waited (the wait comes before the request's own time limits
//! start; see `server.rs`).
//!
//! Invariant: with no local activity, a LAN request's check is one atomic load (two in the
//! first moments after local activity, until one check has seen the linger pass).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use http_body::{Frame, SizeHint};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::metrics::{Metrics, kind};

/// Which listener a router serves: the machine's own (localhost), or the LAN's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    /// The localhost substituter: its requests are the machine's own Nix, which goes first.
    #[default]
    Local,
    /// The listener open to the LAN (`lan_listen`): its requests wait while the machine is busy.
    Lan,
}

/// How long the machine counts as busy, and how LAN work waits meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long the machine stays busy after its last request ended.
    pub linger: Duration,
    /// The longest one LAN request (or one chunk of a LAN NAR) waits; then it goes regardless.
    pub bound: Duration,
    /// While the machine is busy, the waiting LAN work goes one piece at a time, at most one
    /// a `pace` (counted from when the machine became busy or the last piece went).
    pub pace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            linger: Duration::from_millis(100),
            bound: Duration::from_secs(1),
            pace: Duration::from_millis(20),
        }
    }
}

/// The shared handle: cheap to clone, every clone the same state.
#[derive(Clone, Default)]
pub struct LocalFirst {
    inner: Arc<Inner>,
}

struct Inner {
    limits: Limits,
    /// What the times below count from.
    base: Instant,
    /// The machine's own requests under way.
    active: AtomicUsize,
    /// When the linger after the last local request ends (see [`Inner::at`]); 0: none.
    linger_until: AtomicU64,
    /// When the machine last became busy, or a waiting piece of LAN work last went.
    last_went: AtomicU64,
    /// LAN work waiting for its turn (so a local request ending wakes it only if there is).
    waiting: AtomicUsize,
    /// Told when the last local request ends.
    idle: Notify,
    /// The one turn the waiting LAN work queues for (fair: first come, first served).
    turn: Semaphore,
}

impl Default for Inner {
    fn default() -> Self {
        Inner::new(Limits::default())
    }
}

impl Inner {
    fn new(limits: Limits) -> Self {
        Inner {
            limits,
            base: Instant::now(),
            active: AtomicUsize::new(0),
            linger_until: AtomicU64::new(0),
            last_went: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            idle: Notify::new(),
            turn: Semaphore::new(1),
        }
    }

    /// `t` as stored: nanoseconds since `base`, plus one so that 0 means "none".
    fn at(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX) + 1
    }

    fn instant(&self, at: u64) -> Instant {
        self.base + Duration::from_nanos(at.saturating_sub(1))
    }

    fn lingering(&self, now: u64) -> bool {
        let until = self.linger_until.load(SeqCst);
        if until == 0 {
            return false;
        }
        if now < until {
            return true;
        }
        // Past: later checks are one load again (a newer linger is left alone).
        let _ = self.linger_until.compare_exchange(until, 0, SeqCst, SeqCst);
        false
    }
}

impl fmt::Debug for LocalFirst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalFirst")
            .field("limits", &self.inner.limits)
            .field("active", &self.inner.active.load(SeqCst))
            .finish()
    }
}

/// One of the machine's own requests, active until dropped.
pub struct LocalRequest {
    inner: Arc<Inner>,
}

impl Drop for LocalRequest {
    fn drop(&mut self) {
        let inner = &self.inner;
        if inner.active.fetch_sub(1, SeqCst) == 1 {
            let linger = inner.at(Instant::now() + inner.limits.linger);
            inner.linger_until.store(linger, SeqCst);
            if inner.waiting.load(SeqCst) > 0 {
                inner.idle.notify_waiters();
            }
        }
    }
}

impl LocalFirst {
    /// A handle with `limits`, the machine idle.
    pub fn new(limits: Limits) -> Self {
        LocalFirst { inner: Arc::new(Inner::new(limits)) }
    }

    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Whether the machine's own Nix is at work: a request active, or one ended less than the
    /// linger ago.
    pub fn is_busy(&self) -> bool {
        let inner = &*self.inner;
        if inner.active.load(SeqCst) > 0 {
            return true;
        }
        // No clock read unless a linger was set since the last check that saw one pass.
        inner.linger_until.load(SeqCst) != 0 && inner.lingering(inner.at(Instant::now()))
    }

    /// Marks one of the machine's own requests active until the guard is dropped.
    pub fn local_request(&self) -> LocalRequest {
        let inner = &self.inner;
        if inner.active.fetch_add(1, SeqCst) == 0 {
            let now = inner.at(Instant::now());
            if !inner.lingering(now) {
                // The machine becomes busy: the LAN's first turn is a pace from now.
                inner.last_went.store(now, SeqCst);
            }
        }
        LocalRequest { inner: inner.clone() }
    }

    /// The guard for a localhost request of `kind`, if it is Nix's own work (not a status
    /// page, not a path that names nothing).
    pub(crate) fn mark(&self, role: Role, kind: &'static str) -> Option<LocalRequest> {
        let nix_asks = !matches!(kind, kind::STATUS_PAGE | kind::OTHER);
        (role == Role::Local && nix_asks).then(|| self.local_request())
    }

    /// Waits, if the machine is busy, for a piece of LAN work's turn (see the module docs):
    /// `None` at once when it is idle; else how long it waited, at most [`Limits::bound`]
    /// (and a little scheduling).
    pub async fn lan_turn(&self) -> Option<Duration> {
        if !self.is_busy() {
            return None;
        }
        let inner = &*self.inner;
        let started = Instant::now();
        inner.waiting.fetch_add(1, SeqCst);
        let _waiting = Waiting(inner);
        // Past the bound the work goes regardless: slowed, never starved.
        let _ = tokio::time::timeout_at(started + inner.limits.bound, self.take_turn()).await;
        Some(started.elapsed())
    }

    /// Queues for the turn, then waits for the pace, unless the machine goes idle first.
    async fn take_turn(&self) {
        let inner = &*self.inner;
        let _permit = tokio::select! {
            permit = inner.turn.acquire() => permit,
            () = self.until_idle() => return,
        };
        // Each pass waits for the pace or the idle machine; the caller's bound ends it too.
        loop {
            let next = inner.last_went.load(SeqCst).saturating_add(pace_nanos(inner));
            if inner.at(Instant::now()) >= next {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep_until(inner.instant(next)) => {}
                () = self.until_idle() => break,
            }
        }
        inner.last_went.store(inner.at(Instant::now()), SeqCst);
    }

    /// Returns once the machine is idle: no local request active and the linger over.
    async fn until_idle(&self) {
        let inner = &*self.inner;
        // Each pass waits for the last local request to end or for the linger to pass; the
        // caller's bound ends it.
        loop {
            let ended = inner.idle.notified();
            tokio::pin!(ended);
            // Registered before the check, so an end between the two is not missed.
            ended.as_mut().enable();
            if inner.active.load(SeqCst) > 0 {
                ended.await;
                continue;
            }
            let until = inner.linger_until.load(SeqCst);
            if until == 0 || !inner.lingering(inner.at(Instant::now())) {
                return;
            }
            tokio::time::sleep_until(inner.instant(until)).await;
        }
    }
}

fn pace_nanos(inner: &Inner) -> u64 {
    u64::try_from(inner.limits.pace.as_nanos()).unwrap_or(u64::MAX)
}

/// Counts one piece of LAN work waiting, for as long as it does (cancelled included).
struct Waiting<'a>(&'a Inner);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, SeqCst);
    }
}

/// A LAN NAR's body that, while the machine is busy, waits for a turn before each chunk, so
/// a large LAN download already streaming cannot crowd out the machine's own copies. Each
/// wait is recorded in the LAN's metrics.
pub(crate) struct Yielding {
    body: Body,
    gate: LocalFirst,
    metrics: Arc<Metrics>,
    /// The turn being waited for.
    waiting: Option<Pin<Box<dyn Future<Output = Option<Duration>> + Send>>>,
    /// Whether the last chunk came out (or none was asked for yet). Only then is a turn
    /// waited for: a chunk once asked of the source is seen through, so the holder is never
    /// left mid-wait, which its idle limit would count against it.
    between_chunks: bool,
}

impl Yielding {
    pub(crate) fn new(body: Body, gate: LocalFirst, metrics: Arc<Metrics>) -> Self {
        Yielding { body, gate, metrics, waiting: None, between_chunks: true }
    }
}

impl HttpBody for Yielding {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if this.between_chunks && this.waiting.is_none() && this.gate.is_busy() {
            let gate = this.gate.clone();
            this.waiting = Some(Box::pin(async move { gate.lan_turn().await }));
        }
        if let Some(turn) = this.waiting.as_mut() {
            if let Some(waited) = ready!(turn.as_mut().poll(cx)) {
                this.metrics.lan_yielded(waited);
            }
            this.waiting = None;
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        this.between_chunks = polled.is_ready();
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(bound_ms: u64, pace_ms: u64) -> Limits {
        Limits {
            linger: Duration::from_millis(50),
            bound: Duration::from_millis(bound_ms),
            pace: Duration::from_millis(pace_ms),
        }
    }

    #[tokio::test]
    async fn an_idle_machine_never_holds_the_lan_back() {
        let gate = LocalFirst::new(limits(10_000, 10_000));
        assert!(!gate.is_busy());
        assert_eq!(gate.lan_turn().await, None);
    }

    #[tokio::test]
    async fn busy_while_a_local_request_is_active_and_for_the_linger_after() {
        let gate = LocalFirst::new(limits(10_000, 10_000));
        let request = gate.local_request();
        assert!(gate.is_busy());
        let second = gate.clone().local_request();
        drop(request);
        assert!(gate.is_busy(), "one request still active");
        drop(second);
        assert!(gate.is_busy(), "lingering");
        // Bounded: the linger is 50 ms.
        for _ in 0..100 {
            if !gate.is_busy() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!gate.is_busy(), "still busy a second after a 50 ms linger");
        assert_eq!(gate.inner.linger_until.load(SeqCst), 0, "the idle check is one load again");
    }

    #[tokio::test]
    async fn lan_work_waits_until_the_local_request_ends() {
        let gate = LocalFirst::new(limits(10_000, 10_000));
        let request = gate.local_request();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let lan = {
            let (gate, order) = (gate.clone(), order.clone());
            tokio::spawn(async move {
                let waited = gate.lan_turn().await;
                order.lock().unwrap().push("lan");
                waited
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        order.lock().unwrap().push("local ended");
        drop(request);
        let waited = lan.await.unwrap().expect("it waited");
        assert_eq!(*order.lock().unwrap(), ["local ended", "lan"]);
        assert!(waited < Duration::from_secs(10), "it went when idle, not at the bound");
    }

    #[tokio::test]
    async fn no_lan_work_waits_past_the_bound() {
        let gate = LocalFirst::new(limits(200, 10_000));
        let _busy = gate.local_request();
        let waits: Vec<_> = futures::future::join_all((0..5).map(|_| gate.lan_turn())).await;
        for waited in waits {
            let waited = waited.expect("the machine is busy");
            assert!(waited >= Duration::from_millis(200), "went before the bound: {waited:?}");
            assert!(waited < Duration::from_secs(5), "waited {waited:?} past a 200 ms bound");
        }
        assert_eq!(gate.inner.waiting.load(SeqCst), 0);
    }

    #[tokio::test]
    async fn while_busy_the_lan_goes_one_piece_a_pace() {
        let gate = LocalFirst::new(limits(10_000, 50));
        let _busy = gate.local_request();
        let started = Instant::now();
        let mut went = Vec::new();
        let mut turns: futures::stream::FuturesUnordered<_> = (0..4)
            .map(|_| {
                let gate = gate.clone();
                async move {
                    gate.lan_turn().await;
                    Instant::now()
                }
            })
            .collect();
        while let Some(at) = futures::StreamExt::next(&mut turns).await {
            went.push(at);
        }
        went.sort();
        // The first a pace after the machine became busy, each next one a pace later.
        assert!(went[0] >= started + Duration::from_millis(40));
        for pair in went.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_millis(45), "{went:?}");
        }
    }
}
