//! Failover: which holder sends the NAR, and asking the next one for the rest when it fails
//! mid-transfer (or the same one, when a parked transfer goes on). The bytes' check is not
//! here: the verifier runs on across holders, from the offset reached.

use std::hash::Hash;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use thiserror::Error;

use super::TransferError;
use super::pace::Idle;
use crate::health::PeerHealth;
use crate::source::{NarStream, SourceError};

/// Asks `peer` for the NAR from byte `offset` on: how a transfer goes on at another holder.
pub type Reopen<P> =
    Arc<dyn Fn(P, u64) -> BoxFuture<'static, Result<Option<NarStream>, SourceError>> + Send + Sync>;

/// The holders after the first, and what a transfer that fails over needs.
pub struct Others<P> {
    /// Holders not asked yet, best first.
    pub remaining: Vec<P>,
    /// How to ask one of them; `None`: no failover.
    pub reopen: Option<Reopen<P>>,
    /// Where a peer's faults are counted.
    pub health: Option<Arc<PeerHealth<P>>>,
}

impl<P> Others<P> {
    /// No failover and no health record: only `remaining` is kept, for the logs.
    pub fn none(remaining: Vec<P>) -> Self {
        Others { remaining, reopen: None, health: None }
    }
}

/// Why a holder asked for the rest of a NAR did not send it.
#[derive(Debug, Error)]
pub enum ResumeError {
    #[error("it says it has no NAR for it")]
    NotHeld,
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
}

/// A request to a holder for the rest, under way.
struct Resuming<P> {
    peer: P,
    answer: BoxFuture<'static, Result<Option<NarStream>, SourceError>>,
}

/// The holder sending, the ones left, and the request for the rest when one is under way.
pub(super) struct Holders<P> {
    /// The holder the bytes come from now (or came from last, while another is asked).
    pub(super) peer: P,
    /// Holders not tried yet, best first.
    remaining: Vec<P>,
    reopen: Option<Reopen<P>>,
    health: Option<Arc<PeerHealth<P>>>,
    resuming: Option<Resuming<P>>,
}

impl<P: std::fmt::Display + Clone + Eq + Hash> Holders<P> {
    pub(super) fn new(peer: P, others: Others<P>) -> Self {
        let Others { remaining, reopen, health } = others;
        Holders { peer, remaining, reopen, health, resuming: None }
    }

    /// How many holders are left to go on at.
    pub(super) fn left(&self) -> usize {
        self.remaining.len()
    }

    /// Whether a holder can be asked for the rest at all (parking needs it).
    pub(super) fn can_resume(&self) -> bool {
        self.reopen.is_some()
    }

    /// Whether there is a next holder to go on at.
    pub(super) fn can_fail_over(&self) -> bool {
        self.reopen.is_some() && !self.remaining.is_empty()
    }

    /// Asks the next holder for the NAR from `offset` on; the one asked, if there was one.
    pub(super) fn fail_over(&mut self, offset: u64) -> Option<&P> {
        let reopen = self.reopen.as_ref().filter(|_| !self.remaining.is_empty())?;
        let next = self.remaining.remove(0);
        let answer = reopen(next.clone(), offset);
        Some(&self.resuming.insert(Resuming { peer: next, answer }).peer)
    }

    /// Asks the holder that was sending for the NAR from `offset` on (after parking).
    ///
    /// Panics without a `reopen`: only a transfer that can resume is parked.
    pub(super) fn ask_again(&mut self, offset: u64) {
        let reopen = self.reopen.as_ref().expect("only a transfer with a reopen is parked");
        let answer = reopen(self.peer.clone(), offset);
        self.resuming = Some(Resuming { peer: self.peer.clone(), answer });
    }

    pub(super) fn is_resuming(&self) -> bool {
        self.resuming.is_some()
    }

    /// The answer of the holder asked for the rest, within `idle`'s timeout. Once ready,
    /// that holder is [`Holders::peer`], whether it sends or failed.
    pub(super) fn poll_answer(
        &mut self,
        cx: &mut Context<'_>,
        idle: &mut Idle,
    ) -> Poll<Result<NarStream, ResumeError>> {
        let resuming = self.resuming.as_mut().expect("polled only while resuming");
        let answer = match resuming.answer.as_mut().poll(cx) {
            Poll::Ready(Ok(Some(stream))) => Ok(stream),
            Poll::Ready(Ok(None)) => Err(ResumeError::NotHeld),
            Poll::Ready(Err(e)) => Err(ResumeError::Source(e)),
            Poll::Pending if !idle.expired(cx) => return Poll::Pending,
            Poll::Pending => Err(ResumeError::NoAnswer(idle.timeout)),
        };
        self.peer = self.resuming.take().expect("polled just now").peer;
        Poll::Ready(answer)
    }

    /// Counts `e` against the holder sending if it is that peer's doing
    /// ([`TransferError::is_peers_fault`]).
    pub(super) fn count_against_peer(&self, e: &TransferError) {
        if let Some(health) = self.health.as_ref().filter(|_| e.is_peers_fault()) {
            health.fault(&self.peer, e.to_string());
        }
    }
}
