//! Client connections that cannot hold the substituter: each accepted socket is wrapped so
//! that a read or a write that makes no progress for its limit fails, and hyper then closes
//! the connection, giving back its request permit, its NAR slot and its descriptor; and the
//! open connections are counted, so that more clients than the node has descriptors for make
//! room by closing the one quiet longest instead of locking everyone out.
//!
//! Deadlines, each a failure of the read or write that waits past it:
//! - nothing moved either way for the stall limit (`client_stall_timeout`, 60 s): an idle
//!   keep-alive, a client that stopped reading (a client trickling a request's head keeps
//!   bytes moving; that head's own deadline, the same limit counted from when the connection
//!   began to wait for it, is hyper's, set in [`crate::http1`]);
//! - a NAR response the client takes nothing of for the NAR write limit
//!   ([`ClientConnection::limit_writes`], `nar_client_stall_timeout`, 20 s);
//! - cut at once ([`ClientConnection::cut`]) to make room: for a new client when
//!   [`Connections`] is at its cap or the process out of descriptors (the connection without
//!   a request in flight that has been quiet longest, for at least [`QUIET_BEFORE_CUT`]), or
//!   for a waiting NAR download (see `nar_slots`).
//!
//! "Progress" is any byte moving: a request being answered is not stalled, since its request
//! bytes just moved, and the stall limit is longer than any response takes to start (the
//! narinfo and NAR start deadlines). Refusals and cuts are logged, at most a line a second.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::task::AtomicWaker;
use nixmesh_telemetry::RateLimitedLog;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tracing::{debug, warn};

/// How long accepting pauses after an error such as running out of file descriptors with no
/// connection to close (which would otherwise fail again at once, in a busy loop).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(250);
/// A connection without a request in flight is closed to make room for a new client only
/// once it has been quiet this long: a client between two requests is not.
pub const QUIET_BEFORE_CUT: Duration = Duration::from_secs(1);
/// Descriptors kept for everything but client connections (peers, the daemon, the index,
/// the NARs read from the store), out of the open-file limit.
const DESCRIPTORS_KEPT: usize = 256;
/// The fewest client connections allowed, however low the open-file limit.
const MIN_CONNECTIONS: usize = 32;

/// Milliseconds since the first call, on tokio's clock; 0 is never returned, so it can mean
/// "not set" in the atomics below.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| Instant::now() - Duration::from_millis(1));
    Instant::now().duration_since(epoch).as_millis() as u64
}

/// The client connections the open-file limit leaves room for: the soft limit less
/// [`DESCRIPTORS_KEPT`] (at least [`MIN_CONNECTIONS`]).
pub fn connections_for_open_file_limit() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct handed to it.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let soft = if known { limit.rlim_cur.min(usize::MAX as libc::rlim_t) as usize } else { 1024 };
    soft.saturating_sub(DESCRIPTORS_KEPT).max(MIN_CONNECTIONS)
}

/// One client connection as requests see it (axum's `ConnectInfo`, which [`crate::http1`]
/// puts in every request): what it is doing, and
/// the means to cut it off or to tighten its write limit.
#[derive(Clone)]
pub struct ClientConnection {
    state: Arc<ConnectionState>,
}

struct ConnectionState {
    remote: SocketAddr,
    /// Requests arrived and not yet answered to their last byte.
    requests: AtomicUsize,
    /// Requests arrived since it was accepted.
    arrived: AtomicU64,
    /// When it last had no request in flight (accepted, or its last response ended).
    quiet_since: AtomicU64,
    /// Since when a write has been waiting on the client, taking nothing; 0: not waiting.
    blocked_since: AtomicU64,
    /// The write limit in milliseconds while a NAR response is under way; 0: none.
    write_limit: AtomicU64,
    /// Why it was cut off, once it was; read by the socket's next read or write.
    cut: OnceLock<&'static str>,
    /// The connection task's waker, so that cutting it off takes effect while it waits.
    waker: AtomicWaker,
}

impl ClientConnection {
    fn new(remote: SocketAddr) -> Self {
        let state = ConnectionState {
            remote,
            requests: AtomicUsize::new(0),
            arrived: AtomicU64::new(0),
            quiet_since: AtomicU64::new(now_ms()),
            blocked_since: AtomicU64::new(0),
            write_limit: AtomicU64::new(0),
            cut: OnceLock::new(),
            waker: AtomicWaker::new(),
        };
        ClientConnection { state: Arc::new(state) }
    }

    /// The client's address.
    pub fn remote(&self) -> SocketAddr {
        self.state.remote
    }

    /// Marks a request in flight until the guard is dropped (with its response's body).
    pub fn request(&self) -> InFlight {
        self.state.arrived.fetch_add(1, Ordering::SeqCst);
        self.state.requests.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// How many requests have arrived on it, and whether one is in flight.
    pub fn requests_seen(&self) -> (u64, bool) {
        let arrived = self.state.arrived.load(Ordering::SeqCst);
        (arrived, self.state.requests.load(Ordering::SeqCst) > 0)
    }

    /// How long a write has been waiting on the client with nothing taken, if one is.
    pub fn waiting_on_client(&self) -> Option<Duration> {
        match self.state.blocked_since.load(Ordering::SeqCst) {
            0 => None,
            since => Some(Duration::from_millis(now_ms().saturating_sub(since))),
        }
    }

    /// How long it has been without a request in flight, if it has none.
    fn quiet_for(&self, now: u64) -> Option<Duration> {
        if self.state.requests.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = self.state.quiet_since.load(Ordering::SeqCst);
        Some(Duration::from_millis(now.saturating_sub(since)))
    }

    /// Fails writes that take nothing for `limit` (besides the stall limit) until the guard
    /// is dropped.
    pub fn limit_writes(&self, limit: Duration) -> WriteLimit {
        let ms = (limit.as_millis() as u64).max(1);
        self.state.write_limit.store(ms, Ordering::SeqCst);
        WriteLimit(self.clone())
    }

    /// Cuts the connection off: its next read or write fails, and it is woken to find out.
    pub fn cut(&self, why: &'static str) {
        if self.state.cut.set(why).is_ok() {
            self.state.waker.wake();
        }
    }

    /// Whether it has been cut off.
    pub fn is_cut(&self) -> bool {
        self.state.cut.get().is_some()
    }
}

/// A request in flight on a connection; see [`ClientConnection::request`].
pub struct InFlight(ClientConnection);

impl Drop for InFlight {
    fn drop(&mut self) {
        let state = &self.0.state;
        state.quiet_since.store(now_ms(), Ordering::SeqCst);
        state.requests.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A write limit in force; see [`ClientConnection::limit_writes`].
pub struct WriteLimit(ClientConnection);

impl Drop for WriteLimit {
    fn drop(&mut self) {
        self.0.state.write_limit.store(0, Ordering::SeqCst);
    }
}

/// The open client connections, at most `max` of them.
pub struct Connections {
    open: Mutex<HashMap<u64, Weak<ConnectionState>>>,
    next_id: AtomicU64,
    closed: AtomicU64,
    max: usize,
    log: RateLimitedLog,
}

impl Connections {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Connections {
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            max,
            log: RateLimitedLog::default(),
        })
    }

    /// How many have closed since the listener began.
    pub fn closed(&self) -> u64 {
        self.closed.load(Ordering::Relaxed)
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.open.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn add(&self, connection: &ClientConnection) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut open = self.open.lock();
        open.insert(id, Arc::downgrade(&connection.state));
        id
    }

    fn remove(&self, id: u64) {
        self.open.lock().remove(&id);
        self.closed.fetch_add(1, Ordering::Relaxed);
    }

    /// Cuts off the connection without a request in flight that has been quiet longest (at
    /// least [`QUIET_BEFORE_CUT`]); whether there was one.
    fn cut_longest_quiet(&self, why: &'static str) -> bool {
        let now = now_ms();
        let longest = {
            let open = self.open.lock();
            open.values()
                .filter_map(|weak| weak.upgrade().map(|state| ClientConnection { state }))
                .filter(|c| !c.is_cut())
                .filter_map(|c| Some((c.quiet_for(now)?, c)))
                .filter(|(quiet, _)| *quiet >= QUIET_BEFORE_CUT)
                .max_by_key(|(quiet, _)| *quiet)
        };
        let Some((quiet, connection)) = longest else {
            return false;
        };
        connection.cut(why);
        if let Some(held_back) = self.log.admit() {
            warn!(remote = %connection.remote(), ?quiet, held_back, max = self.max,
                "closing the client connection quiet longest: {why}");
        }
        true
    }
}

/// A listener whose connections have stall limits (and TCP_NODELAY), at most
/// [`Connections`]' cap of them open.
pub struct StallLimitedListener {
    inner: TcpListener,
    stall: Duration,
    connections: Arc<Connections>,
    /// Refusals logged once a second, not once a connection.
    refused: RateLimitedLog,
}

impl StallLimitedListener {
    /// Connections on `inner`, each closed when nothing moves on it for `stall`, at most
    /// `max` open at once.
    pub fn new(inner: TcpListener, stall: Duration, max: usize) -> Self {
        let connections = Connections::new(max);
        StallLimitedListener { inner, stall, connections, refused: RateLimitedLog::default() }
    }

    /// The open connections.
    pub fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }

    /// Waits until a new connection may be taken: below the cap, or once the longest quiet
    /// one has been cut off to make room.
    async fn room(&self) {
        loop {
            if self.connections.len() < self.connections.max
                || self.connections.cut_longest_quiet("too many client connections")
            {
                return;
            }
            if let Some(held_back) = self.refused.admit() {
                warn!(
                    max = self.connections.max,
                    held_back, "not accepting clients: every connection has a request in flight"
                );
            }
            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
        }
    }
}

impl axum::serve::Listener for StallLimitedListener {
    type Io = StallLimited<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            self.room().await;
            match self.inner.accept().await {
                Ok((tcp, addr)) => {
                    // Without TCP_NODELAY a small NAR's body, written after its headers,
                    // waits for the client's delayed ACK (Nagle): a 40 ms stall per path.
                    if let Err(e) = tcp.set_nodelay(true) {
                        debug!("cannot set TCP_NODELAY: {e}");
                    }
                    let connection = ClientConnection::new(addr);
                    let limited = StallLimited::new(tcp, self.stall)
                        .registered(connection, self.connections.clone());
                    return (limited, addr);
                }
                Err(e) => {
                    let out_of_descriptors =
                        matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                    if out_of_descriptors
                        && self.connections.cut_longest_quiet("out of file descriptors")
                    {
                        // Give the connection's task a moment to close its socket.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    if let Some(held_back) = self.refused.admit() {
                        warn!(
                            held_back,
                            open = self.connections.len(),
                            "cannot accept a connection ({e}); clients are refused meanwhile"
                        );
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// `inner`, with reads and writes that fail once nothing has moved for `stall` (or, while a
/// write limit is in force, once a write has taken nothing for it), or once cut off.
pub struct StallLimited<T> {
    inner: T,
    stall: Duration,
    last_progress: Instant,
    /// When the write waiting now began to wait (the client taking nothing since).
    write_blocked: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    /// What requests see of it, and the table it is counted in, under its id.
    connection: Option<(ClientConnection, Arc<Connections>, u64)>,
}

impl<T> StallLimited<T> {
    pub fn new(inner: T, stall: Duration) -> Self {
        let now = Instant::now();
        StallLimited {
            inner,
            stall,
            last_progress: now,
            write_blocked: None,
            timer: Box::pin(tokio::time::sleep_until(now + stall)),
            connection: None,
        }
    }

    /// Counted in `connections` until dropped, and seen by requests as `connection`.
    fn registered(mut self, connection: ClientConnection, connections: Arc<Connections>) -> Self {
        let id = connections.add(&connection);
        self.connection = Some((connection, connections, id));
        self
    }

    /// What requests see of it, once the listener has registered it.
    pub fn client(&self) -> Option<&ClientConnection> {
        self.connection.as_ref().map(|(c, _, _)| c)
    }

    fn state(&self) -> Option<&ConnectionState> {
        self.connection.as_ref().map(|(c, _, _)| &*c.state)
    }

    fn moved(&mut self) {
        self.last_progress = Instant::now();
    }

    /// The error that ends a connection that was cut off, if it was; else the waker is left
    /// to be woken when it is.
    fn cut_off(&self, cx: &mut Context<'_>) -> Option<io::Error> {
        let state = self.state()?;
        state.waker.register(cx.waker());
        let why = state.cut.get()?;
        debug!(remote = %state.remote, "closing a client connection: {why}");
        Some(io::Error::new(io::ErrorKind::ConnectionAborted, format!("cut off: {why}")))
    }

    /// A write's outcome, with progress recorded and a stall turned into an error.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    self.moved();
                    self.unblocked();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.write_waits(cx).map(|r| r.map(|()| 0)),
        }
    }

    fn unblocked(&mut self) {
        if self.write_blocked.take().is_some()
            && let Some(state) = self.state()
        {
            state.blocked_since.store(0, Ordering::SeqCst);
        }
    }

    /// A write is waiting on the client: recorded, and failed past the stall or write limit.
    fn write_waits(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let now = Instant::now();
        let blocked = *self.write_blocked.get_or_insert(now);
        let mut deadline = self.last_progress + self.stall;
        if let Some(state) = self.state() {
            if state.blocked_since.load(Ordering::SeqCst) == 0 {
                let waited = now.duration_since(blocked).as_millis() as u64;
                state.blocked_since.store(now_ms().saturating_sub(waited).max(1), Ordering::SeqCst);
            }
            let limit = state.write_limit.load(Ordering::SeqCst);
            if limit > 0 {
                deadline = deadline.min(blocked + Duration::from_millis(limit));
            }
        }
        self.check(cx, deadline, "writing the response")
    }

    /// Called when the inner I/O is pending: an error once `deadline` has passed.
    fn check(
        &mut self,
        cx: &mut Context<'_>,
        deadline: Instant,
        doing: &str,
    ) -> Poll<io::Result<()>> {
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        ready!(self.timer.as_mut().poll(cx));
        let waited = Instant::now().duration_since(
            self.last_progress.min(self.write_blocked.unwrap_or(self.last_progress)),
        );
        debug!(?waited, "closing a client connection: {doing} made no progress");
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{doing}: nothing moved for {waited:?}"),
        )))
    }
}

impl<T> Drop for StallLimited<T> {
    fn drop(&mut self) {
        if let Some((_, connections, id)) = &self.connection {
            connections.remove(*id);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallLimited<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.cut_off(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending if this.write_blocked.is_some() => {
                // A write waits too: its deadline (the tighter one) governs the timer.
                let deadline = this.timer.deadline();
                this.check(cx, deadline, "writing the response")
            }
            Poll::Pending => {
                let deadline = this.last_progress + this.stall;
                this.check(cx, deadline, "reading the request")
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallLimited<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.cut_off(cx) {
            return Poll::Ready(Err(e));
        }
        let polled = Pin::new(&mut this.inner).poll_write(cx, bytes);
        this.after_write(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.cut_off(cx) {
            return Poll::Ready(Err(e));
        }
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.cut_off(cx) {
            return Poll::Ready(Err(e));
        }
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => this.write_waits(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_silent_peer_times_out_and_a_talking_one_does_not() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut limited = StallLimited::new(a, Duration::from_millis(100));
        let mut buf = [0u8; 8];
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(60)).await;
            b.write_all(b"x").await.unwrap();
            assert_eq!(limited.read(&mut buf).await.unwrap(), 1, "bytes keep it alive");
        }
        let err = limited.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_reader_that_stops_reading_fails_the_writer() {
        let (a, _b) = tokio::io::duplex(1024);
        let mut limited = StallLimited::new(a, Duration::from_millis(100));
        let started = Instant::now();
        let err = limited.write_all(&vec![0u8; 64 * 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_connection_cut_off_fails_its_waiting_read_at_once() {
        let (a, _b) = tokio::io::duplex(64);
        let connections = Connections::new(4);
        let connection = ClientConnection::new("127.0.0.1:1".parse().unwrap());
        let mut limited = StallLimited::new(a, Duration::from_secs(60))
            .registered(connection.clone(), connections.clone());
        assert_eq!(connections.len(), 1);
        let cutter = connection.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            cutter.cut("to make room");
        });
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(5), limited.read(&mut buf)).await;
        let err = read.expect("woken by the cut").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        drop(limited);
        assert!(connections.is_empty(), "a closed connection is no longer counted");
    }

    #[tokio::test]
    async fn a_write_limit_cuts_a_client_taking_nothing_before_the_stall_limit() {
        let (a, _b) = tokio::io::duplex(1024);
        let connection = ClientConnection::new("127.0.0.1:1".parse().unwrap());
        let mut limited = StallLimited::new(a, Duration::from_secs(60))
            .registered(connection.clone(), Connections::new(4));
        let _limit = connection.limit_writes(Duration::from_millis(200));
        let started = Instant::now();
        let err = limited.write_all(&vec![0u8; 64 * 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(connection.waiting_on_client().is_some());
    }

    #[tokio::test]
    async fn the_longest_quiet_connection_is_the_one_cut_to_make_room() {
        let connections = Connections::new(2);
        let old = ClientConnection::new("127.0.0.1:1".parse().unwrap());
        connections.add(&old);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let new = ClientConnection::new("127.0.0.1:2".parse().unwrap());
        connections.add(&new);
        let busy = ClientConnection::new("127.0.0.1:3".parse().unwrap());
        connections.add(&busy);
        let _request = busy.request();
        assert!(!connections.cut_longest_quiet("test"), "none quiet long enough yet");
        tokio::time::sleep(QUIET_BEFORE_CUT).await;
        assert!(connections.cut_longest_quiet("test"));
        assert!(old.is_cut() && !new.is_cut() && !busy.is_cut());
    }
}
