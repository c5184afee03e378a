//! TLS 1.3 for the mesh: libp2p's `/tls/1.0.0`, byte for byte on the wire, with AES-GCM
//! offered first on a CPU that has AES instructions.
//!
//! libp2p-tls 0.6 offers ChaCha20-Poly1305 first whatever the CPU, and a rustls server follows
//! the client's order, so two stock nodes settle on ChaCha20, the cipher the transport bench
//! puts at the floor of a large NAR's cost. Its configs and its verifier are private, so this
//! module builds the same configs with another order of cipher suites: AES-128-GCM,
//! AES-256-GCM, ChaCha20 when the CPU has AES and carry-less multiplication, else libp2p's
//! order. The server follows the client's order (rustls' default): each dialer asks for what
//! its own CPU does fast.
//!
//! The certificate is libp2p-tls' own (`libp2p_tls::certificate::generate`, a fresh P-256 key
//! signed by the node's identity in the libp2p extension) and the verifier is a port of
//! libp2p-tls 0.6.2's `src/verifier.rs` (MIT, Copyright 2021 Parity Technologies (UK) Ltd.,
//! Copyright 2022 Protocol Labs), step for step: TLS 1.3 only, exactly one certificate, checked
//! by `libp2p_tls::certificate::parse` (self-signature and extension), handshake signatures
//! checked against it, client authentication mandatory. The one step left out is the
//! dialer's check of the peer id it meant to reach: the upgrade is not told it (libp2p's is
//! not either, its `Config::new` passes `None`); the swarm compares the id this upgrade yields
//! with the dialled `/p2p/` id and closes the connection on a mismatch.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite, FutureExt};
use libp2p::core::UpgradeInfo;
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};
use libp2p::tls::certificate;
use libp2p::{PeerId, identity};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::ring::cipher_suite::{
    TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, CommonState, DigitallySignedStruct, DistinguishedName, OtherError,
    SignatureScheme, SupportedCipherSuite, SupportedProtocolVersion,
};
use thiserror::Error;

pub use futures_rustls::TlsStream;

/// The protocol name, libp2p's.
pub const PROTOCOL: &str = "/tls/1.0.0";
/// The ALPN both sides name (libp2p's spec).
const P2P_ALPN: &[u8] = b"libp2p";
/// "The libp2p handshake uses TLS 1.3 (and higher). Endpoints MUST NOT negotiate lower TLS
/// versions."
static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
/// AES-GCM first: with AES-NI (or ARMv8's AES) it costs a fraction of ChaCha20's cycles.
const AES_FIRST: &[SupportedCipherSuite] =
    &[TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256];
/// libp2p-tls' order, for a CPU without AES instructions (software AES is slower than
/// ChaCha20 there, and not constant-time in every implementation).
const CHACHA_FIRST: &[SupportedCipherSuite] =
    &[TLS13_CHACHA20_POLY1305_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_AES_128_GCM_SHA256];

/// Why a TLS upgrade failed.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot make the TLS certificate: {0}")]
    Certificate(#[from] certificate::GenError),
    #[error("cannot use the TLS certificate's key: {0}")]
    Key(#[source] rustls::Error),
    #[error("TLS handshake as {side} failed: {source}")]
    Handshake { side: &'static str, source: std::io::Error },
    #[error("the peer's TLS certificate is not a libp2p one: {0}")]
    BadCertificate(#[from] certificate::ParseError),
}

/// Which cipher suites to offer, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherOrder {
    /// AES-GCM, then ChaCha20: for a CPU with AES instructions.
    AesFirst,
    /// ChaCha20, then AES-GCM: libp2p-tls' own order.
    ChaChaFirst,
}

impl CipherOrder {
    /// AES-GCM first when this CPU has AES and carry-less multiplication instructions.
    pub fn for_this_cpu() -> Self {
        if cpu_has_aes() { CipherOrder::AesFirst } else { CipherOrder::ChaChaFirst }
    }

    fn suites(self) -> &'static [SupportedCipherSuite] {
        match self {
            CipherOrder::AesFirst => AES_FIRST,
            CipherOrder::ChaChaFirst => CHACHA_FIRST,
        }
    }
}

/// Whether AES-GCM runs in hardware here (what ring's fast paths need).
pub fn cpu_has_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The `/tls/1.0.0` upgrade of one identity: both configs made once (the certificate too).
#[derive(Clone)]
pub struct Config {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl Config {
    /// `keypair`'s upgrade, offering the suites in the order this CPU runs fastest.
    pub fn new(keypair: &identity::Keypair) -> Result<Self, TlsError> {
        Config::with_order(keypair, CipherOrder::for_this_cpu())
    }

    /// `keypair`'s upgrade offering the suites in `order`.
    pub fn with_order(keypair: &identity::Keypair, order: CipherOrder) -> Result<Self, TlsError> {
        let (certificate, key) = certificate::generate(keypair)?;
        let resolver = Arc::new(AlwaysResolvesCert::new(certificate, &key)?);
        let provider = || {
            let mut provider = rustls::crypto::ring::default_provider();
            provider.cipher_suites = order.suites().to_vec();
            Arc::new(provider)
        };
        let verifier = Arc::new(Libp2pCertificateVerifier);
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .expect("ring's provider has TLS 1.3 suites and key exchanges")
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = vec![P2P_ALPN.to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .expect("ring's provider has TLS 1.3 suites and key exchanges")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(resolver);
        client.alpn_protocols = vec![P2P_ALPN.to_vec()];
        Ok(Config { server: Arc::new(server), client: Arc::new(client) })
    }
}

/// The cipher suite a TLS connection runs on, as rustls names it (`TLS13_AES_128_GCM_SHA256`).
pub fn cipher_suite<C>(stream: &TlsStream<C>) -> Option<String> {
    stream.get_ref().1.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite()))
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = std::iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once(PROTOCOL)
    }
}

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<C>);
    type Error = TlsError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            let stream = futures_rustls::TlsAcceptor::from(self.server)
                .accept(socket)
                .await
                .map_err(|source| TlsError::Handshake { side: "server", source })?;
            let peer = peer_of(stream.get_ref().1)?;
            Ok((peer, stream.into()))
        }
        .boxed()
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<C>);
    type Error = TlsError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            // The spec: a client MUST NOT send a Server Name Indication; an unspecified
            // address turns rustls' SNI off.
            let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
            let stream = futures_rustls::TlsConnector::from(self.client)
                .connect(name, socket)
                .await
                .map_err(|source| TlsError::Handshake { side: "client", source })?;
            let peer = peer_of(stream.get_ref().1)?;
            Ok((peer, stream.into()))
        }
        .boxed()
    }
}

/// The peer id in the one certificate the handshake verified.
fn peer_of(state: &CommonState) -> Result<PeerId, TlsError> {
    let Some([certificate]) = state.peer_certificates() else {
        // Both verifiers refuse anything but one certificate, and client auth is mandatory.
        unreachable!("the verifiers admit exactly one certificate");
    };
    Ok(certificate::parse(certificate)?.peer_id())
}

/// The one certificate each side presents (libp2p-tls' `AlwaysResolvesCert`, private there).
#[derive(Debug)]
struct AlwaysResolvesCert(Arc<CertifiedKey>);

impl AlwaysResolvesCert {
    fn new(cert: CertificateDer<'static>, key: &PrivateKeyDer<'_>) -> Result<Self, TlsError> {
        let key = rustls::crypto::ring::sign::any_ecdsa_type(key).map_err(TlsError::Key)?;
        Ok(AlwaysResolvesCert(Arc::new(CertifiedKey::new(vec![cert], key))))
    }
}

impl rustls::client::ResolvesClientCert for AlwaysResolvesCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for AlwaysResolvesCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// libp2p's rules for the certificates of both sides: exactly one, self-signed, carrying a
/// valid libp2p extension (the node's key signing the certificate's key). Only TLS 1.3: the
/// configs allow no other version.
#[derive(Debug)]
struct Libp2pCertificateVerifier;

impl Libp2pCertificateVerifier {
    /// The schemes checked, most preferred first (libp2p-tls' list: ring has no P-521 or
    /// Ed448; RSA only when no elliptic curve will do).
    fn verification_schemes() -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA512,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA512,
            SignatureScheme::RSA_PKCS1_SHA384,
            SignatureScheme::RSA_PKCS1_SHA256,
        ]
    }
}

impl ServerCertVerifier for Libp2pCertificateVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer,
        intermediates: &[CertificateDer],
        _server_name: &ServerName,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_presented_certs(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(cert, dss.scheme, message, dss.signature())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::verification_schemes()
    }
}

impl ClientCertVerifier for Libp2pCertificateVerifier {
    /// Client authentication is mandatory in libp2p.
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer,
        intermediates: &[CertificateDer],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_presented_certs(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(cert, dss.scheme, message, dss.signature())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::verification_schemes()
    }
}

/// libp2p-tls panics here (`unreachable!`: its configs allow only TLS 1.3, as ours); an error
/// is as final and cannot take the node down.
fn tls12_refused() -> rustls::Error {
    rustls::Error::General("libp2p's TLS is TLS 1.3 only".into())
}

/// "Endpoints MUST abort the connection attempt if more than one certificate is received, or
/// if the certificate's self-signature is not valid."
fn verify_presented_certs(
    end_entity: &CertificateDer,
    intermediates: &[CertificateDer],
) -> Result<PeerId, rustls::Error> {
    if !intermediates.is_empty() {
        return Err(rustls::Error::General("libp2p-tls requires exactly one certificate".into()));
    }
    let certificate = certificate::parse(end_entity).map_err(bad_certificate)?;
    Ok(certificate.peer_id())
}

fn verify_tls13_signature(
    cert: &CertificateDer,
    scheme: SignatureScheme,
    message: &[u8],
    signature: &[u8],
) -> Result<HandshakeSignatureValid, rustls::Error> {
    certificate::parse(cert)
        .map_err(bad_certificate)?
        .verify_signature(scheme, message, signature)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
    Ok(HandshakeSignatureValid::assertion())
}

/// A certificate that is not a valid libp2p one. (libp2p-tls tells bad DER apart as
/// `BadEncoding`; the error's kind is private to it, so every such certificate is `Other`.)
fn bad_certificate(e: certificate::ParseError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

#[cfg(test)]
mod tests {
    use futures::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

    use super::*;

    fn pipe() -> (Compat<tokio::io::DuplexStream>, Compat<tokio::io::DuplexStream>) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        (a.compat(), b.compat())
    }

    type Pipe = Compat<tokio::io::DuplexStream>;

    async fn handshake(
        client: Config,
        server: Config,
    ) -> (Result<(PeerId, TlsStream<Pipe>), TlsError>, Result<(PeerId, TlsStream<Pipe>), TlsError>)
    {
        let (a, b) = pipe();
        tokio::join!(client.upgrade_outbound(a, PROTOCOL), server.upgrade_inbound(b, PROTOCOL))
    }

    #[tokio::test]
    async fn each_side_learns_the_others_peer_id_and_bytes_pass() {
        let (ka, kb) =
            (identity::Keypair::generate_ed25519(), identity::Keypair::generate_ed25519());
        let (a, b) = handshake(Config::new(&ka).unwrap(), Config::new(&kb).unwrap()).await;
        let ((a_saw, mut a), (b_saw, mut b)) = (a.unwrap(), b.unwrap());
        assert_eq!(a_saw, kb.public().to_peer_id());
        assert_eq!(b_saw, ka.public().to_peer_id());
        a.write_all(b"hello").await.unwrap();
        a.flush().await.unwrap();
        let mut got = [0u8; 5];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }

    #[tokio::test]
    async fn the_server_follows_the_clients_order() {
        let (ka, kb) =
            (identity::Keypair::generate_ed25519(), identity::Keypair::generate_ed25519());
        for (order, suite) in [
            (CipherOrder::AesFirst, "TLS13_AES_128_GCM_SHA256"),
            (CipherOrder::ChaChaFirst, "TLS13_CHACHA20_POLY1305_SHA256"),
        ] {
            let client = Config::with_order(&ka, order).unwrap();
            let server = Config::with_order(&kb, CipherOrder::ChaChaFirst).unwrap();
            let (a, b) = handshake(client, server).await;
            assert_eq!(cipher_suite(&a.unwrap().1).as_deref(), Some(suite));
            assert_eq!(cipher_suite(&b.unwrap().1).as_deref(), Some(suite));
        }
    }

    #[tokio::test]
    async fn a_client_with_a_stock_libp2p_config_is_served_and_sees_our_id() {
        let (ka, kb) =
            (identity::Keypair::generate_ed25519(), identity::Keypair::generate_ed25519());
        let stock = libp2p::tls::Config::new(&ka).unwrap();
        let ours = Config::new(&kb).unwrap();
        let (a, b) = pipe();
        let (theirs, ours) =
            tokio::join!(stock.upgrade_outbound(a, PROTOCOL), ours.upgrade_inbound(b, PROTOCOL));
        assert_eq!(theirs.unwrap().0, kb.public().to_peer_id());
        let (peer, stream) = ours.unwrap();
        assert_eq!(peer, ka.public().to_peer_id());
        // Stock libp2p-tls asks for ChaCha20 first, and the server follows.
        assert_eq!(cipher_suite(&stream).as_deref(), Some("TLS13_CHACHA20_POLY1305_SHA256"));
    }

    #[test]
    fn a_certificate_that_is_not_a_libp2p_one_is_refused() {
        let refused = verify_presented_certs(&certificate_without_the_extension(), &[]);
        assert!(matches!(refused, Err(rustls::Error::InvalidCertificate(_))), "{refused:?}");
        // More than one certificate is refused even when the first is good.
        let (good, _) = certificate::generate(&identity::Keypair::generate_ed25519()).unwrap();
        assert!(verify_presented_certs(&good, std::slice::from_ref(&good)).is_err());
        assert!(verify_presented_certs(&good, &[]).is_ok());
    }

    /// A DER certificate that parses as X.509 but carries no libp2p extension: a libp2p one
    /// with the extension's OID bytes changed (1.3.6.1.4.1.53594.1.1 → another arc).
    fn certificate_without_the_extension() -> CertificateDer<'static> {
        let (good, _) = certificate::generate(&identity::Keypair::generate_ed25519()).unwrap();
        let mut der = good.as_ref().to_vec();
        // The OID's last arcs, `.1.1`, are encoded as `01 01` after 53594's `83 A2 5A`.
        let at = der.windows(5).position(|w| w == [0x83, 0xA2, 0x5A, 0x01, 0x01]).unwrap();
        der[at + 4] = 0x02;
        CertificateDer::from(der)
    }
}
