//! What keeps `/_nixmesh/why/<hash>` from costing the node and its peers more than a person
//! asking needs. A report asks up to [`crate::why::MAX_HOLDERS`] peers for their narinfo;
//! unbounded, 1,000 local connections asking for reports sent one holder 3,100 narinfo
//! requests a second and slowed the node's own narinfos for Nix from 1.5 ms to 300 ms.
//!
//! - at most [`REPORTS_AT_ONCE`] reports are under way at once;
//! - one client (by address) gets at most [`CLIENT_REPORTS_PER_SEC`] reports a second, after
//!   a burst of [`CLIENT_BURST`];
//! - all reports together ask peers at most [`QUESTIONS_PER_SEC`] narinfos a second, after a
//!   burst of [`QUESTIONS_BURST`] (two reports of every holder shown).
//!
//! A request past any of these is answered `429 Too Many Requests` at once with a
//! `Retry-After`, having asked nothing (`nixmesh why` waits and asks again). `why` is for
//! people and the CLI: Nix's own routes never wait for any of this, and never see a `429`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Reports under way at once.
pub const REPORTS_AT_ONCE: usize = 4;
/// Reports one client may ask for a second, on average.
pub const CLIENT_REPORTS_PER_SEC: f64 = 4.0;
/// Reports one client may ask for at once, before its rate applies.
pub const CLIENT_BURST: f64 = 8.0;
/// Narinfo questions all reports together may ask peers a second, on average.
pub const QUESTIONS_PER_SEC: f64 = 32.0;
/// Narinfo questions all reports together may ask at once, before that rate applies.
pub const QUESTIONS_BURST: f64 = 32.0;
/// The clients whose rate is kept. Past it, those that have not asked for a while are
/// forgotten; while none can be, a new client is held to the limits for all alone.
const CLIENTS_KEPT: usize = 1024;

/// Why a report was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WhyRefusal {
    #[error("this client asked for more than {CLIENT_REPORTS_PER_SEC} reports a second")]
    ClientRate,
    #[error("{REPORTS_AT_ONCE} reports are under way already")]
    Busy,
    #[error("reports have asked peers for {QUESTIONS_PER_SEC} narinfos a second already")]
    Questions,
}

/// The limits in the module docs, for one router.
pub struct WhyLimits {
    reports: Arc<Semaphore>,
    questions: Mutex<Bucket>,
    clients: Mutex<HashMap<IpAddr, Bucket>>,
}

impl Default for WhyLimits {
    fn default() -> Self {
        WhyLimits {
            reports: Arc::new(Semaphore::new(REPORTS_AT_ONCE)),
            questions: Mutex::new(Bucket::full(QUESTIONS_BURST)),
            clients: Mutex::new(HashMap::new()),
        }
    }
}

impl WhyLimits {
    /// A turn for one report for `client` (unknown: only the limits for all apply), held
    /// until the report is done; refused at once when the client is past its rate or every
    /// turn is taken.
    pub fn turn(&self, client: Option<IpAddr>) -> Result<OwnedSemaphorePermit, WhyRefusal> {
        if let Some(client) = client
            && !self.client_may_ask(client)
        {
            return Err(WhyRefusal::ClientRate);
        }
        self.reports.clone().try_acquire_owned().map_err(|_| WhyRefusal::Busy)
    }

    /// Leave to ask `peers` peers for a narinfo, taken from the rate for all reports; refused
    /// (taking nothing) when the rate does not have that many left.
    pub fn ask(&self, peers: usize) -> Result<(), WhyRefusal> {
        let mut questions = self.questions.lock();
        let taken =
            questions.take(peers as f64, QUESTIONS_PER_SEC, QUESTIONS_BURST, Instant::now());
        if taken { Ok(()) } else { Err(WhyRefusal::Questions) }
    }

    fn client_may_ask(&self, client: IpAddr) -> bool {
        let now = Instant::now();
        let mut clients = self.clients.lock();
        if clients.len() >= CLIENTS_KEPT && !clients.contains_key(&client) {
            clients.retain(|_, b| !b.is_full_by(now, CLIENT_REPORTS_PER_SEC, CLIENT_BURST));
            if clients.len() >= CLIENTS_KEPT {
                return true;
            }
        }
        let bucket = clients.entry(client).or_insert_with(|| Bucket::full(CLIENT_BURST));
        bucket.take(1.0, CLIENT_REPORTS_PER_SEC, CLIENT_BURST, now)
    }
}

/// A token bucket: `tokens` as of `at`, refilled at a rate up to a burst.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64) -> Self {
        Bucket { tokens: burst, at: Instant::now() }
    }

    fn refilled(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        (self.tokens + rate * now.saturating_duration_since(self.at).as_secs_f64()).min(burst)
    }

    fn is_full_by(&self, now: Instant, rate: f64, burst: f64) -> bool {
        self.refilled(now, rate, burst) >= burst
    }

    /// Takes `n` tokens if there are that many.
    fn take(&mut self, n: f64, rate: f64, burst: f64, now: Instant) -> bool {
        self.tokens = self.refilled(now, rate, burst);
        self.at = now;
        if self.tokens < n {
            return false;
        }
        self.tokens -= n;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const LOCAL: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    #[tokio::test(start_paused = true)]
    async fn a_client_gets_its_burst_then_its_rate() {
        let limits = WhyLimits::default();
        for _ in 0..CLIENT_BURST as usize {
            drop(limits.turn(LOCAL).unwrap());
        }
        assert_eq!(limits.turn(LOCAL).unwrap_err(), WhyRefusal::ClientRate);
        let other = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)));
        assert!(limits.turn(other).is_ok(), "another client has its own rate");
        tokio::time::advance(Duration::from_secs_f64(1.0 / CLIENT_REPORTS_PER_SEC)).await;
        drop(limits.turn(LOCAL).unwrap());
        assert_eq!(limits.turn(LOCAL).unwrap_err(), WhyRefusal::ClientRate);
    }

    #[tokio::test(start_paused = true)]
    async fn reports_at_once_are_bounded_and_a_finished_one_frees_its_turn() {
        let limits = WhyLimits::default();
        let turns: Vec<_> = (0..REPORTS_AT_ONCE).map(|_| limits.turn(None).unwrap()).collect();
        assert_eq!(limits.turn(None).unwrap_err(), WhyRefusal::Busy);
        drop(turns);
        assert!(limits.turn(None).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn questions_to_peers_keep_to_their_rate_over_time() {
        let limits = WhyLimits::default();
        // Reports of 16 holders asked for every 10 ms over 10 s: what is asked stays within
        // the burst and the rate, and a report too big for what is left asks nothing.
        let mut asked = 0.0;
        for _ in 0..1_000 {
            if limits.ask(16).is_ok() {
                asked += 16.0;
            }
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert!(asked <= QUESTIONS_BURST + QUESTIONS_PER_SEC * 10.0, "{asked}");
        assert!(asked >= QUESTIONS_PER_SEC * 9.0, "the rate is given, not starved: {asked}");
        assert!(limits.ask(0).is_ok(), "a report of no connected holder asks nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn clients_beyond_those_kept_are_forgotten_once_idle() {
        let limits = WhyLimits::default();
        let client = |i: u32| Some(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
        for i in 0..CLIENTS_KEPT as u32 {
            drop(limits.turn(client(i)).unwrap());
        }
        // All of them asked just now: a new one is not kept, but may ask.
        assert!(limits.turn(client(5_000)).is_ok());
        assert_eq!(limits.clients.lock().len(), CLIENTS_KEPT);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limits.turn(client(5_001)).is_ok());
        assert_eq!(limits.clients.lock().len(), 1, "the idle ones were forgotten");
    }
}
