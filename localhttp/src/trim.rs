//! Giving the heap's free memory back to the system after a burst of client connections.
//!
//! glibc's allocator keeps what is freed in the middle of its heaps, and in each thread's
//! arena, for later allocations rather than returning it: after 1,000 clients had each sent
//! 400 kB of headers and gone, 409 MB stayed resident. `malloc_trim(0)` returns every free
//! page of every arena. It walks the heaps (milliseconds for hundreds of megabytes), so it
//! runs on a blocking thread, and only after a burst: once at least [`BURST`] connections
//! have closed since the last trim, looked at every [`CHECK_EVERY`].

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tracing::debug;

use crate::connection::Connections;

/// Connections closed since the last trim that make a burst worth trimming after.
pub const BURST: u64 = 256;
/// How often the closed connections are counted.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Trims the heap after each burst of `connections` closing; never returns.
pub(crate) async fn after_bursts(connections: Arc<Connections>) {
    let mut trimmed_at = connections.closed();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let closed = connections.closed();
        if closed - trimmed_at < BURST {
            continue;
        }
        trimmed_at = closed;
        if tokio::task::spawn_blocking(give_back_free_memory).await.is_err() {
            debug!("trimming the heap failed");
        }
    }
}

/// Returns the allocator's free pages to the system (glibc's; elsewhere nothing to do).
fn give_back_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
