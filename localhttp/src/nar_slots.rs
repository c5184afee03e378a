//! NAR downloads under way at once, and what becomes of one whose client stops reading.
//!
//! A download holds a slot (one of `max_concurrent_nars`) until its body ends; more wait.
//! Clients that stop reading cannot hold the substituter or the mesh with them:
//! - a download whose client has taken nothing for [`PARK_AFTER`] lets go of its peer's
//!   stream ([`Parker`]), so it holds no stream, turn or NAR slot of the holder's; it picks up
//!   from the byte reached when the client reads again;
//! - a request that finds every slot taken cuts off the download whose client has taken
//!   nothing longest (at least [`STALLED_AFTER`]) and takes its slot: a stalled client holds
//!   a slot only while nobody else needs it;
//! - a download's client that takes nothing for `nar_client_stall_timeout` is cut off anyway
//!   ([`ClientConnection::limit_writes`]).
//!
//! A download whose client is not known (served without [`crate::serve`]) is never cut off
//! or parked here; it still ends by the other limits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use nixmesh_telemetry::RateLimitedLog;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use crate::connection::{ClientConnection, WriteLimit};
use crate::verified_nar::Parker;

/// A download whose client has taken nothing for this long lets go of its peer's stream.
pub const PARK_AFTER: Duration = Duration::from_secs(1);
/// A download whose client has taken nothing for this long gives its slot to a request that
/// finds none free.
pub const STALLED_AFTER: Duration = Duration::from_secs(1);
/// How often the downloads are looked over (parking), and a waiting request tries again to
/// make room.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// The slots, and the downloads holding them.
pub struct NarSlots {
    permits: Arc<Semaphore>,
    max: usize,
    held: Mutex<HashMap<u64, Held>>,
    next_id: AtomicU64,
    /// The client's write limit while a download is under way.
    write_limit: Duration,
    looking: AtomicBool,
    log: RateLimitedLog,
}

#[derive(Default)]
struct Held {
    client: Option<ClientConnection>,
    parker: Option<Parker>,
}

/// One download's slot; given back on drop.
pub struct NarSlot {
    id: u64,
    slots: Arc<NarSlots>,
    _permit: OwnedSemaphorePermit,
    _write_limit: Option<WriteLimit>,
}

impl NarSlot {
    /// The transfer, parked while its client does not read.
    pub fn parks(&self, parker: Parker) {
        let mut held = self.slots.held.lock();
        if let Some(held) = held.get_mut(&self.id) {
            held.parker = Some(parker);
        }
    }
}

impl Drop for NarSlot {
    fn drop(&mut self) {
        self.slots.held.lock().remove(&self.id);
    }
}

impl NarSlots {
    /// `max` slots; a download's client may take nothing for at most `write_limit`.
    pub fn new(max: usize, write_limit: Duration) -> Arc<Self> {
        Arc::new(NarSlots {
            permits: Arc::new(Semaphore::new(max)),
            max,
            held: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            write_limit,
            looking: AtomicBool::new(false),
            log: RateLimitedLog::default(),
        })
    }

    /// Downloads holding a slot now.
    pub fn in_use(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// A slot for a download to `client`: a free one, or one taken from a stalled download
    /// (see the module docs); else waits its turn.
    pub async fn acquire(self: &Arc<Self>, client: Option<ClientConnection>) -> NarSlot {
        self.look_over_downloads();
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.cut_longest_stalled();
                let acquire = self.permits.clone().acquire_owned();
                tokio::pin!(acquire);
                loop {
                    tokio::select! {
                        permit = &mut acquire => {
                            break permit.expect("the NAR slots are never closed");
                        }
                        () = tokio::time::sleep(LOOK_EVERY) => self.cut_longest_stalled(),
                    }
                }
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let write_limit = client.as_ref().map(|c| c.limit_writes(self.write_limit));
        let held = Held { client, ..Held::default() };
        self.held.lock().insert(id, held);
        NarSlot { id, slots: self.clone(), _permit: permit, _write_limit: write_limit }
    }

    /// Cuts off the download whose client has taken nothing longest, if for at least
    /// [`STALLED_AFTER`]; its slot comes back once its connection has closed.
    fn cut_longest_stalled(&self) {
        let longest = {
            let held = self.held.lock();
            held.values()
                .filter_map(|h| h.client.as_ref())
                .filter(|c| !c.is_cut())
                .filter_map(|c| Some((c.waiting_on_client()?, c.clone())))
                .filter(|(stalled, _)| *stalled >= STALLED_AFTER)
                .max_by_key(|(stalled, _)| *stalled)
        };
        let Some((stalled, client)) = longest else {
            return;
        };
        client.cut("its NAR slot went to a waiting download");
        if let Some(held_back) = self.log.admit() {
            warn!(remote = %client.remote(), ?stalled, max = self.max, held_back,
                "all NAR slots busy: cut off the download whose client took nothing longest");
        }
    }

    /// Starts looking over the downloads every [`LOOK_EVERY`], parking those whose client
    /// has stopped reading, for as long as the slots exist (once).
    fn look_over_downloads(self: &Arc<Self>) {
        if self.looking.swap(true, Ordering::SeqCst) {
            return;
        }
        let slots: Weak<NarSlots> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LOOK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(slots) = slots.upgrade() else { return };
                slots.park_stalled();
            }
        });
    }

    fn park_stalled(&self) {
        // Parking one already parked finds no stream and does nothing; one that the client
        // woke up since and that stalled again is parked again.
        let to_park: Vec<Parker> = {
            let held = self.held.lock();
            held.values()
                .filter(|h| {
                    let stalled = h.client.as_ref().and_then(|c| c.waiting_on_client());
                    stalled.is_some_and(|s| s >= PARK_AFTER)
                })
                .filter_map(|h| h.parker.clone())
                .collect()
        };
        for parker in to_park {
            if parker.park() {
                debug!("parked a NAR download whose client stopped reading");
            }
        }
    }
}
