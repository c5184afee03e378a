//! Parking: a client that stops reading must not hold a peer's stream (and with it the peer's
//! turns and NAR slots) while it does. The transfer keeps its holder's stream in a
//! [`PeerStream`]; a [`Parker`] takes it away from outside (`nar_slots` does so once the
//! client has taken nothing for a second), and the transfer, finding it gone when the client
//! reads again, asks the same holder for the rest. A parked transfer is no fault of the peer's.

use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;

use crate::source::{NarStream, SourceError};

/// The stream of the holder sending now, which a [`Parker`] may take away.
pub(super) struct PeerStream(Arc<Mutex<Option<NarStream>>>);

impl PeerStream {
    pub(super) fn new(stream: NarStream) -> Self {
        PeerStream(Arc::new(Mutex::new(Some(stream))))
    }

    /// Polls the holder's stream; `None` when it was parked (taken away).
    pub(super) fn poll_next(
        &self,
        cx: &mut Context<'_>,
    ) -> Option<Poll<Option<Result<Bytes, SourceError>>>> {
        let mut stream = self.0.lock();
        stream.as_mut().map(|s| s.poll_next_unpin(cx))
    }

    /// Sends from `stream` from now on (a holder that answered a resumption).
    pub(super) fn replace(&self, stream: NarStream) {
        *self.0.lock() = Some(stream);
    }

    pub(super) fn parker(&self) -> Parker {
        Parker { stream: Arc::downgrade(&self.0) }
    }
}

/// Lets a transfer's peer stream go while its client does not read (see the module docs).
#[derive(Clone)]
pub struct Parker {
    stream: Weak<Mutex<Option<NarStream>>>,
}

impl Parker {
    /// Drops the peer's stream, if the transfer still has one; whether it did.
    pub fn park(&self) -> bool {
        let Some(shared) = self.stream.upgrade() else {
            return false;
        };
        let stream = shared.lock().take();
        // Dropped outside the lock: closing a stream may take a little work.
        stream.is_some()
    }
}
