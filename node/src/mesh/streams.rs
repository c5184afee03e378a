//! Streams of the node's protocols over the mesh's connections: opened from any task
//! ([`Control::open_stream`]) and taken by one accept loop per protocol
//! ([`Control::accept`]).
//!
//! This replaces libp2p-stream (0.4, alpha), whose two limits made the tail of Nix's bursts:
//! - it handed inbound streams to the accept loop through a channel that holds one, and
//!   dropped a stream that arrived before the loop had taken the last. Under 25 narinfo and
//!   16 NAR requests at once a holder dropped a few of the streams an asker opened together,
//!   and each cost the asker a pause of 5 ms or more before it asked again (the small-NAR
//!   p99);
//! - it negotiated one outbound stream per connection at a time, so streams opened together
//!   waited for each other's round trips.
//!
//! Here inbound streams wait in a queue of [`ACCEPT_QUEUE`] per protocol (beyond it one is
//! closed at once, so its asker asks again, and a line is logged), and every outbound stream
//! is negotiated as soon as it is asked for.
//!
//! A stream to a peer with no connection fails at once with an I/O error of kind
//! `NotConnected`: the mesh dials the peers it wants itself. With two connections to a peer
//! (both ends dialled at once), new streams go over the newer.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::{InboundUpgrade, OutboundUpgrade, UpgradeInfo};
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId,
    FromSwarm, NetworkBehaviour, StreamUpgradeError, SubstreamProtocol, THandler, THandlerInEvent,
    ToSwarm,
};
use libp2p::{PeerId, Stream, StreamProtocol};
use nixmesh_telemetry::RateLimitedLog;
use parking_lot::{Mutex, MutexGuard};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// Inbound streams of one protocol that may wait for its accept loop.
pub const ACCEPT_QUEUE: usize = 256;

/// Why a stream could not be opened.
#[derive(Debug, Error)]
pub enum OpenStreamError {
    #[error("the peer does not speak {0}")]
    Unsupported(StreamProtocol),
    #[error("opening a stream: {0}")]
    Io(#[from] io::Error),
}

/// A protocol is accepted by one loop at a time.
#[derive(Debug, Error)]
#[error("{0}'s streams are already accepted elsewhere")]
pub struct AlreadyAccepted(StreamProtocol);

/// An inbound stream: the peer it came from, and the protocol agreed on it.
type Inbound = (PeerId, Stream, StreamProtocol);

/// The inbound streams of one protocol, with the peer each came from.
pub struct Incoming(mpsc::Receiver<Inbound>);

impl futures::Stream for Incoming {
    type Item = (PeerId, Stream);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|next| next.map(|(peer, stream, _)| (peer, stream)))
    }
}

/// The inbound streams of several versions of a protocol, each with its peer and the
/// version agreed.
pub struct IncomingVersions(mpsc::Receiver<Inbound>);

impl futures::Stream for IncomingVersions {
    type Item = Inbound;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// What an opening hands back: the stream and the protocol agreed on it.
type Opened = Result<(Stream, StreamProtocol), OpenStreamError>;

/// A stream asked for, with the protocols offered (preferred first), and where its outcome
/// goes.
struct Opening {
    protocols: Vec<StreamProtocol>,
    answer: oneshot::Sender<Opened>,
}

#[derive(Default)]
struct Shared {
    accepting: HashMap<StreamProtocol, mpsc::Sender<Inbound>>,
    /// Each connection's queue of streams to open, oldest connection first.
    connections: HashMap<PeerId, Vec<(ConnectionId, mpsc::UnboundedSender<Opening>)>>,
    overflow: RateLimitedLog,
}

impl Shared {
    /// The protocols some loop accepts.
    fn accepted(&mut self) -> Vec<StreamProtocol> {
        self.accepting.retain(|_, queue| !queue.is_closed());
        self.accepting.keys().cloned().collect()
    }

    fn deliver(&mut self, peer: PeerId, stream: Stream, protocol: StreamProtocol) {
        let Some(queue) = self.accepting.get(&protocol) else { return };
        match queue.try_send((peer, stream, protocol.clone())) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if let Some(held_back) = self.overflow.admit() {
                    warn!(%peer, %protocol, held_back, "{ACCEPT_QUEUE} streams waiting: closed one");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.accepting.remove(&protocol);
            }
        }
    }

    /// The queue of the newest open connection to `peer`.
    fn connection(&mut self, peer: &PeerId) -> Option<mpsc::UnboundedSender<Opening>> {
        let list = self.connections.get_mut(peer)?;
        list.retain(|(_, queue)| !queue.is_closed());
        let newest = list.last().map(|(_, queue)| queue.clone());
        if list.is_empty() {
            self.connections.remove(peer);
        }
        newest
    }
}

/// The handle the node's tasks use. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    shared: Arc<Mutex<Shared>>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // Every change to `Shared` is whole before anything can panic.
    shared.lock()
}

impl Control {
    /// Opens a stream of `protocol` to `peer`, over a connection it has now.
    pub async fn open_stream(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<Stream, OpenStreamError> {
        Ok(self.open_stream_of(peer, vec![protocol]).await?.0)
    }

    /// Opens a stream to `peer` of the first of `protocols` (preferred first) it speaks, over
    /// a connection it has now; says which was agreed. `Unsupported` names the last offered.
    pub async fn open_stream_of(
        &self,
        peer: PeerId,
        protocols: Vec<StreamProtocol>,
    ) -> Result<(Stream, StreamProtocol), OpenStreamError> {
        let not_connected = || io::Error::new(io::ErrorKind::NotConnected, "not connected");
        let connection = lock(&self.shared).connection(&peer).ok_or_else(not_connected)?;
        let (answer, outcome) = oneshot::channel();
        connection.send(Opening { protocols, answer }).map_err(|_| not_connected())?;
        let closed = || io::Error::new(io::ErrorKind::ConnectionReset, "the connection closed");
        outcome.await.map_err(|_| closed())?
    }

    /// The inbound streams of `protocol` from now on.
    pub fn accept(&self, protocol: StreamProtocol) -> Result<Incoming, AlreadyAccepted> {
        Ok(Incoming(self.accept_queue(&[protocol])?))
    }

    /// The inbound streams of each of `protocols` (versions of one conversation) from now
    /// on, in one queue, each with the version agreed.
    pub fn accept_versions(
        &self,
        protocols: &[StreamProtocol],
    ) -> Result<IncomingVersions, AlreadyAccepted> {
        Ok(IncomingVersions(self.accept_queue(protocols)?))
    }

    fn accept_queue(
        &self,
        protocols: &[StreamProtocol],
    ) -> Result<mpsc::Receiver<Inbound>, AlreadyAccepted> {
        let mut shared = lock(&self.shared);
        let accepted = shared.accepted();
        if let Some(taken) = protocols.iter().find(|p| accepted.contains(p)) {
            return Err(AlreadyAccepted(taken.clone()));
        }
        let (queue, incoming) = mpsc::channel(ACCEPT_QUEUE);
        for protocol in protocols {
            shared.accepting.insert(protocol.clone(), queue.clone());
        }
        Ok(incoming)
    }
}

/// See the module docs.
#[derive(Default)]
pub struct Behaviour {
    shared: Arc<Mutex<Shared>>,
}

impl Behaviour {
    pub fn new_control(&self) -> Control {
        Control { shared: self.shared.clone() }
    }

    fn handler(&self, peer: PeerId, connection: ConnectionId) -> Handler {
        let (queue, openings) = mpsc::unbounded_channel();
        lock(&self.shared).connections.entry(peer).or_default().push((connection, queue));
        Handler { peer, shared: self.shared.clone(), openings }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, connection))
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, connection))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        // A connection refused by another behaviour after this one made its handler never
        // closes; its queue is found closed (the handler dropped) and pruned when next looked at.
        if let FromSwarm::ConnectionClosed(ConnectionClosed { peer_id, connection_id, .. }) = event
        {
            let mut shared = lock(&self.shared);
            if let Some(list) = shared.connections.get_mut(&peer_id) {
                list.retain(|(id, _)| *id != connection_id);
                if list.is_empty() {
                    shared.connections.remove(&peer_id);
                }
            }
        }
    }

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: Infallible) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// One connection's side: its inbound streams to the queues, its openings negotiated at once,
/// each answered on its own channel.
pub struct Handler {
    peer: PeerId,
    shared: Arc<Mutex<Shared>>,
    openings: mpsc::UnboundedReceiver<Opening>,
}

/// Negotiates one of a list of protocols and hands over the stream with the one agreed.
pub struct Protocols(Vec<StreamProtocol>);

impl UpgradeInfo for Protocols {
    type Info = StreamProtocol;
    type InfoIter = std::vec::IntoIter<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.clone().into_iter()
    }
}

impl InboundUpgrade<Stream> for Protocols {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_inbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}

impl OutboundUpgrade<Stream> for Protocols {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_outbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}

/// The protocols offered on an outbound stream (the last named when none is agreed), and
/// where the outcome goes.
type Answer = (StreamProtocol, oneshot::Sender<Opened>);

impl ConnectionHandler for Handler {
    type FromBehaviour = Infallible;
    type ToBehaviour = Infallible;
    type InboundProtocol = Protocols;
    type OutboundProtocol = Protocols;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = Answer;

    fn listen_protocol(&self) -> SubstreamProtocol<Protocols, ()> {
        SubstreamProtocol::new(Protocols(lock(&self.shared).accepted()), ())
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Protocols, Answer, Infallible>> {
        // Bounded by the openings queued: each is taken once.
        loop {
            match self.openings.poll_recv(cx) {
                Poll::Ready(Some(Opening { protocols, answer })) => {
                    let Some(last) = protocols.last().cloned() else {
                        let none = io::Error::new(io::ErrorKind::InvalidInput, "none offered");
                        let _ = answer.send(Err(OpenStreamError::Io(none)));
                        continue;
                    };
                    let upgrade = Protocols(protocols);
                    return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                        protocol: SubstreamProtocol::new(upgrade, (last, answer)),
                    });
                }
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn on_behaviour_event(&mut self, event: Infallible) {
        match event {}
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<Protocols, Protocols, (), Answer>) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (stream, protocol),
                ..
            }) => lock(&self.shared).deliver(self.peer, stream, protocol),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: (stream, protocol),
                info: (_, answer),
            }) => {
                let _ = answer.send(Ok((stream, protocol)));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError {
                info: (protocol, answer),
                error,
            }) => {
                let error = match error {
                    StreamUpgradeError::Timeout => {
                        OpenStreamError::Io(io::Error::from(io::ErrorKind::TimedOut))
                    }
                    StreamUpgradeError::NegotiationFailed => OpenStreamError::Unsupported(protocol),
                    StreamUpgradeError::Io(e) => OpenStreamError::Io(e),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                let _ = answer.send(Err(error));
            }
            _ => {}
        }
    }
}
