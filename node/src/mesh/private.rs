//! The private mesh on the wire: libp2p's pnet over TCP, before TLS or noise, with a key check.
//!
//! pnet exchanges 24-byte nonces and from then on encrypts every byte both ways with XSalsa20
//! under the mesh key. It never checks that the peer used the same key: a peer with another
//! key (or none) would fail only later, in the negotiation of TLS or noise, with an error that
//! says nothing about keys, or hang there until the connection time-out. So right after the
//! nonces each side sends a fixed check through the encrypted stream and reads the other's:
//! equal means the same key. A peer with no key at all is told apart at once: what it sends
//! first is multistream-select's header in the clear, read by pnet as its nonce.
//!
//! A refused connection fails in the transport, before any peer id is known, so nothing of the
//! node (adverts, fetches, identify) ever reaches it. [`Refusal`] is the reason, found again in
//! the swarm's connection errors by [`refusal_in`] so that the log can say it plainly.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::upgrade::Version;
use libp2p::core::{Transport, transport::Boxed};
use libp2p::pnet::{PnetConfig, PnetOutput, PreSharedKey};
use libp2p::{PeerId, tcp, yamux};
use parking_lot::Mutex;
use thiserror::Error;

use super::read_ahead::ReadAhead;
use super::security::Security;

/// How long the nonces and the key check may take.
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(5);
/// What each side sends once pnet encrypts: the other reads it back only with the same key.
const KEY_CHECK: &[u8; 16] = b"/nixmesh/pnet/1\n";
/// What a libp2p node without pnet sends first: multistream-select's header.
const CLEAR_LIBP2P: &[u8] = b"\x13/multistream/1.0.0\n";
/// The length of pnet's nonce: the first bytes read from the peer.
const NONCE_LEN: usize = 24;

/// Why a connection failed the private mesh's handshake.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    #[error("the peer has no mesh key (it spoke libp2p in the clear)")]
    NoKey,
    #[error("the peer has another mesh key")]
    OtherKey,
    #[error("the peer broke off the handshake ({0}): it has no mesh key, or another one")]
    BrokenOff(io::ErrorKind),
    #[error("the handshake did not finish in time: the peer has no mesh key, or another one")]
    TimedOut,
}

/// The TCP transport's errors with a refusal among them, findable by [`refusal_in`].
#[derive(Debug, Error)]
enum PrivateTcpError {
    #[error(transparent)]
    Tcp(io::Error),
    #[error("private mesh: {0}")]
    Refused(#[source] Refusal),
}

/// TCP, pnet with the key check, `security` (TLS or noise), yamux: what the swarm runs on in
/// a private mesh. The key check comes first, so a peer without the key is refused before
/// either security protocol is negotiated.
pub fn transport(
    security: Security,
    key: PreSharedKey,
    tcp_config: tcp::Config,
) -> Boxed<(PeerId, StreamMuxerBox)> {
    tcp::tokio::Transport::new(tcp_config)
        .and_then(move |socket, _| handshake(key, ReadAhead::new(socket), HANDSHAKE_LIMIT))
        .map_err(|e| e.either(PrivateTcpError::Tcp, PrivateTcpError::Refused))
        .upgrade(Version::V1Lazy)
        .authenticate(security)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed()
}

/// The refusal behind a connection error of the swarm, if it is one.
pub fn refusal_in(error: &io::Error) -> Option<&Refusal> {
    // An `io::Error`'s own `source` skips what it wraps; start from that.
    let mut level: Option<&(dyn std::error::Error + 'static)> =
        error.get_ref().map(|e| e as &(dyn std::error::Error + 'static));
    // The wrappers between are few (time-out, upgrade); bounded all the same.
    for _ in 0..16 {
        let e = level?;
        if let Some(refusal) = e.downcast_ref::<Refusal>() {
            return Some(refusal);
        }
        level = e.source();
    }
    None
}

/// pnet's handshake, then the key check, within `limit`.
async fn handshake<S>(
    key: PreSharedKey,
    socket: S,
    limit: Duration,
) -> Result<PrivateStream<S>, Refusal>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (socket, first) = FirstBytes::new(socket);
    let exchange = async move {
        let pnet = PnetConfig::new(key).handshake(socket).await;
        if first.lock().starts_with(CLEAR_LIBP2P) {
            return Err(Refusal::NoKey);
        }
        let broken = |e: io::Error| Refusal::BrokenOff(e.kind());
        let mut stream = pnet.map_err(|e| match e {
            libp2p::pnet::PnetError::HandshakeError(e) | libp2p::pnet::PnetError::IoError(e) => {
                broken(e)
            }
        })?;
        stream.write_all(KEY_CHECK).await.map_err(broken)?;
        stream.flush().await.map_err(broken)?;
        let mut theirs = [0u8; KEY_CHECK.len()];
        stream.read_exact(&mut theirs).await.map_err(broken)?;
        if &theirs != KEY_CHECK {
            return Err(Refusal::OtherKey);
        }
        Ok(stream)
    };
    tokio::time::timeout(limit, exchange).await.map_err(|_| Refusal::TimedOut)?
}

/// The stream a private mesh's handshake leaves: pnet's encryption over the TCP stream.
pub type PrivateStream<S> = PnetOutput<FirstBytes<S>>;

/// A stream that keeps a copy of the first [`NONCE_LEN`] bytes read from it (pnet owns the
/// stream once handed it, so the copy is shared).
pub struct FirstBytes<S> {
    inner: S,
    first: Arc<Mutex<Vec<u8>>>,
    recording: bool,
}

impl<S> FirstBytes<S> {
    fn new(inner: S) -> (Self, Arc<Mutex<Vec<u8>>>) {
        let first = Arc::new(Mutex::new(Vec::with_capacity(NONCE_LEN)));
        (FirstBytes { inner, first: first.clone(), recording: true }, first)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstBytes<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.recording
            && let Poll::Ready(Ok(n)) = &read
        {
            let mut first = this.first.lock();
            let wanted = (NONCE_LEN - first.len()).min(*n);
            first.extend_from_slice(&buf[..wanted]);
            this.recording = first.len() < NONCE_LEN && *n > 0;
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstBytes<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

    use super::*;
    use crate::mesh::key::MeshKey;

    const LIMIT: Duration = Duration::from_secs(5);

    fn pipe() -> (Compat<tokio::io::DuplexStream>, Compat<tokio::io::DuplexStream>) {
        let (a, b) = tokio::io::duplex(4096);
        (a.compat(), b.compat())
    }

    #[tokio::test]
    async fn the_same_key_connects_and_carries_bytes() {
        let key = MeshKey::generate().pre_shared_key();
        let (a, b) = pipe();
        let (a, b) = tokio::join!(handshake(key, a, LIMIT), handshake(key, b, LIMIT));
        let (mut a, mut b) = (a.unwrap(), b.unwrap());
        a.write_all(b"hello").await.unwrap();
        a.flush().await.unwrap();
        let mut got = [0u8; 5];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }

    #[tokio::test]
    async fn another_key_is_refused_on_both_sides() {
        let (a, b) = pipe();
        let (ka, kb) = (MeshKey::generate(), MeshKey::generate());
        let (a, b) = tokio::join!(
            handshake(ka.pre_shared_key(), a, LIMIT),
            handshake(kb.pre_shared_key(), b, LIMIT)
        );
        assert_eq!(a.err(), Some(Refusal::OtherKey));
        assert_eq!(b.err(), Some(Refusal::OtherKey));
    }

    #[tokio::test]
    async fn a_peer_speaking_libp2p_in_the_clear_is_refused_at_once() {
        let (ours, mut theirs) = pipe();
        // What a keyless dialer sends first: the header and its proposal of noise.
        theirs.write_all(CLEAR_LIBP2P).await.unwrap();
        theirs.write_all(b"\x07/noise\n").await.unwrap();
        theirs.flush().await.unwrap();
        let refused = handshake(MeshKey::generate().pre_shared_key(), ours, LIMIT).await;
        assert_eq!(refused.err(), Some(Refusal::NoKey));
    }

    #[tokio::test]
    async fn a_peer_that_closes_or_stays_silent_is_refused() {
        let (ours, theirs) = pipe();
        drop(theirs);
        let refused = handshake(MeshKey::generate().pre_shared_key(), ours, LIMIT).await;
        assert!(matches!(refused, Err(Refusal::BrokenOff(_))), "{:?}", refused.err());

        let (ours, _theirs) = pipe();
        let short = Duration::from_millis(50);
        let refused = handshake(MeshKey::generate().pre_shared_key(), ours, short).await;
        assert_eq!(refused.err(), Some(Refusal::TimedOut));
    }

    #[test]
    fn a_refusal_is_found_through_the_transports_wrappers() {
        let wrapped = io::Error::other(libp2p::core::transport::TransportError::Other(
            PrivateTcpError::Refused(Refusal::OtherKey),
        ));
        assert_eq!(refusal_in(&wrapped), Some(&Refusal::OtherKey));
        let plain = io::Error::other(PrivateTcpError::Tcp(io::ErrorKind::ConnectionRefused.into()));
        assert_eq!(refusal_in(&plain), None);
    }
}
