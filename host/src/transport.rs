//! QUIC transport: TLS identities pinned by fingerprint, and frames.
//!
//! A frame is `[u32 length, big-endian][u16 protocol version][postcard]`,
//! where the length counts the version and the payload. [`encode`] and
//! [`decode`] are pure (tested and fuzzed without sockets); [`Channel`]
//! reads and writes frames on one QUIC bidirectional stream. A malformed,
//! oversize or wrong-version frame is a typed [`FrameError`]: the stream is
//! closed with that error, the peer keeps running.
//!
//! TLS is always on. The coordinator has a self-signed certificate (rcgen)
//! and clients and workers pin it by its SHA-256 fingerprint: the handshake
//! still proves possession of the key (the TLS 1.3 signature is verified);
//! only the CA chain is replaced by the pin.
//!
//! Mutual TLS for workers (optional): a worker started with `--identity DIR`
//! presents its own self-signed certificate; a coordinator whose state
//! directory holds `worker-fingerprints` (`wmr tenant allow-worker
//! FINGERPRINT`) asks every peer for one (optionally, so that tenants
//! connect without). The handshake signature proves the peer holds
//! the key; which fingerprints may act as a worker is decided per stream by
//! the coordinator ([`peer_fingerprint`], [`load_fingerprints`]).

use anyhow::{Context as _, anyhow, bail};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The QUIC application protocol name.
pub const ALPN: &[u8] = b"wmr/1";
/// Raised when a message changes incompatibly (2: shuffle capabilities,
/// `ModuleReply::Refused`; 3: a job request and an assignment carry the
/// output format; 6: a worker's durable identity, `Announce`/`Release`, map
/// output digests in reports; `speculate` in a job request; 7: an
/// assignment's shuffle may be `Shuffle::Object`, `--shuffle-store`).
pub const PROTOCOL_VERSION: u16 = 7;
/// The largest frame accepted: a module plus headroom.
pub const MAX_FRAME_BYTES: usize = 64 << 20;
/// The name the coordinator's certificate is issued for.
const SERVER_NAME: &str = "wmr-coordinator";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversize { len: usize, max: usize },
    #[error("frame speaks protocol version {got}, this wmr speaks {want}")]
    WrongVersion { got: u16, want: u16 },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("connection: {0}")]
    Io(String),
}

/// Encode a message as one frame.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let payload = postcard::to_stdvec(message).expect("messages always serialize");
    let len = (payload.len() + 2) as u32;
    let mut frame = Vec::with_capacity(payload.len() + 6);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    frame.extend_from_slice(&payload);
    frame
}

/// Check a frame's length prefix before reading the body.
pub fn check_length(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::Oversize {
            len,
            max: MAX_FRAME_BYTES,
        });
    }
    if len < 2 {
        return Err(FrameError::Malformed(format!(
            "length {len} has no room for a version"
        )));
    }
    Ok(len)
}

/// Decode a frame body (everything after the length prefix).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let Some((version, payload)) = body.split_first_chunk::<2>() else {
        return Err(FrameError::Truncated);
    };
    let got = u16::from_be_bytes(*version);
    if got != PROTOCOL_VERSION {
        return Err(FrameError::WrongVersion {
            got,
            want: PROTOCOL_VERSION,
        });
    }
    let (message, rest) =
        postcard::take_from_bytes(payload).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(message)
}

/// Frames over one QUIC bidirectional stream.
pub struct Channel {
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

impl Channel {
    pub async fn open(connection: &quinn::Connection) -> anyhow::Result<Self> {
        let (send, recv) = connection.open_bi().await.context("opening a stream")?;
        Ok(Channel { send, recv })
    }

    pub async fn write<T: Serialize>(&mut self, message: &T) -> Result<(), FrameError> {
        self.send
            .write_all(&encode(message))
            .await
            .map_err(|e| FrameError::Io(e.to_string()))
    }

    /// The next message, or `None` when the peer finished the stream
    /// cleanly between frames.
    pub async fn read<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        read_frame(&mut self.recv).await
    }

    /// Read one message, failing on a clean end of stream too.
    pub async fn expect<T: DeserializeOwned>(&mut self) -> anyhow::Result<T> {
        match self.read().await? {
            Some(message) => Ok(message),
            None => bail!("the peer closed the stream"),
        }
    }

    /// Refuse the rest of this stream after a bad frame.
    pub fn reject(&mut self, error: &FrameError) {
        tracing::warn!(%error, "closing a stream after a bad frame");
        let _ = self.recv.stop(quinn::VarInt::from_u32(1));
        let _ = self.send.reset(quinn::VarInt::from_u32(1));
    }
}

/// Read the next frame from a receive stream; `None` on a clean end of
/// stream between frames. Not cancel-safe: read from one task only.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<Option<T>, FrameError> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(FrameError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(FrameError::Io(e.to_string())),
    }
    let len = check_length(prefix)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => FrameError::Truncated,
        quinn::ReadExactError::ReadError(e) => FrameError::Io(e.to_string()),
    })?;
    decode(&body).map(Some)
}

/// The coordinator's TLS identity, kept in its state directory.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Identity {
    /// Load `cert.der`/`key.der` from `dir`, or create and save them.
    pub fn load_or_generate(dir: &Path) -> anyhow::Result<Self> {
        let (cert_path, key_path) = (dir.join("cert.der"), dir.join("key.der"));
        if cert_path.exists() && key_path.exists() {
            let cert =
                std::fs::read(&cert_path).with_context(|| format!("{}", cert_path.display()))?;
            let key =
                std::fs::read(&key_path).with_context(|| format!("{}", key_path.display()))?;
            return Ok(Identity {
                cert: CertificateDer::from(cert),
                key: PrivatePkcs8KeyDer::from(key),
            });
        }
        let identity = Identity::ephemeral()?;
        std::fs::create_dir_all(dir)?;
        write_private(&key_path, identity.key.secret_pkcs8_der())?;
        std::fs::write(&cert_path, identity.cert.as_ref())?;
        Ok(identity)
    }

    /// A fresh identity kept only in memory (a worker's shuffle endpoint).
    pub fn ephemeral() -> anyhow::Result<Self> {
        let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
            .context("generating a certificate")?;
        Ok(Identity {
            cert: certified.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()),
        })
    }

    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.cert)
    }
}

/// The SHA-256 fingerprint of the certificate the peer of `connection`
/// presented in the handshake (and proved it holds the key of), if any.
pub fn peer_fingerprint(connection: &quinn::Connection) -> Option<String> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().map(|cert| fingerprint_of(cert))
}

/// A list of allowed certificate fingerprints: one hex SHA-256 per line;
/// blank lines and `#` comments are ignored. Every entry must be 64 hex
/// digits (a typo must not silently allow nothing, or anything).
pub fn load_fingerprints(path: &Path) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut allowed = std::collections::BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or_default().trim();
        if entry.is_empty() {
            continue;
        }
        let entry = entry.to_ascii_lowercase();
        if entry.len() != 64 || !entry.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!(
                "{}:{}: {entry:?} is not a SHA-256 fingerprint (64 hex digits)",
                path.display(),
                n + 1
            );
        }
        allowed.insert(entry);
    }
    Ok(allowed)
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("{}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}

/// Hex SHA-256 of a DER certificate.
pub fn fingerprint_of(cert: &[u8]) -> String {
    crate::model::sha256_hex(cert)
}

fn install_crypto_provider() {
    // Fails only if one is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn transport_config(idle: Duration) -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(idle.try_into().expect("idle timeout fits")));
    transport.keep_alive_interval(Some(idle / 4));
    Arc::new(transport)
}

/// A QUIC server endpoint with `identity`. A peer silent for `idle` is
/// disconnected (keep-alives flow every idle/4 while it is alive).
pub fn server_endpoint(
    identity: &Identity,
    addr: SocketAddr,
    idle: Duration,
) -> anyhow::Result<quinn::Endpoint> {
    server_endpoint_with(identity, addr, idle, false)
}

/// [`server_endpoint`], asking peers for a client certificate when
/// `client_certs`: optional, so peers without one still connect; one that
/// is presented must be proven by the handshake signature. Which
/// certificates are allowed for what is the application's decision.
pub fn server_endpoint_with(
    identity: &Identity,
    addr: SocketAddr,
    idle: Duration,
    client_certs: bool,
) -> anyhow::Result<quinn::Endpoint> {
    install_crypto_provider();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS server configuration")?;
    let builder = if client_certs {
        builder.with_client_cert_verifier(Arc::new(OptionalClientCertificate { provider }))
    } else {
        builder.with_no_client_auth()
    };
    let mut crypto = builder
        .with_single_cert(
            vec![identity.cert.clone()],
            PrivateKeyDer::Pkcs8(identity.key.clone_key()),
        )
        .context("TLS server configuration")?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
        .map_err(|e| anyhow!("QUIC server configuration: {e}"))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_config(idle));
    let socket = std::net::UdpSocket::bind(addr).with_context(|| format!("listening on {addr}"))?;
    quinn::Endpoint::new(
        endpoint_config(identity),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .with_context(|| format!("listening on {addr}"))
}

/// The endpoint's stateless-reset key, derived from the identity's private
/// key: a coordinator restarted with the same state answers packets of its
/// predecessor's connections with a reset the peers can verify, so workers
/// notice the restart at their next heartbeat rather than after the
/// session's idle timeout (three leases), and re-announce their outputs.
fn endpoint_config(identity: &Identity) -> quinn::EndpointConfig {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(b"wmr stateless-reset key v1\0");
    hasher.update(identity.key.secret_pkcs8_der());
    let secret = hasher.finalize();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    let mut config = quinn::EndpointConfig::new(Arc::new(key));
    // quinn's default generator drops packets whose connection ids another
    // endpoint issued (a keyed hash) without answering: the reset above
    // needs ids it does not validate.
    config.cid_generator(|| Box::new(RandomConnectionIds));
    config
}

/// Random 8-byte connection ids, not checked on receipt (as quinn's
/// `RandomConnectionIdGenerator`, which it does not re-export), so a
/// packet of a predecessor's connection is answered with a stateless reset.
struct RandomConnectionIds;

impl quinn::ConnectionIdGenerator for RandomConnectionIds {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&rand::random::<[u8; 8]>())
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// Connect to a coordinator whose certificate has `fingerprint`.
pub async fn connect(
    addr: SocketAddr,
    fingerprint: &str,
    idle: Duration,
) -> anyhow::Result<(quinn::Endpoint, quinn::Connection)> {
    connect_as(addr, fingerprint, idle, None).await
}

/// [`connect`], presenting `identity` as a client certificate when the
/// server asks for one (a worker under mutual TLS).
pub async fn connect_as(
    addr: SocketAddr,
    fingerprint: &str,
    idle: Duration,
    identity: Option<&Identity>,
) -> anyhow::Result<(quinn::Endpoint, quinn::Connection)> {
    let fingerprint = check_fingerprint(fingerprint)?;
    install_crypto_provider();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCertificate {
        fingerprint,
        provider: provider.clone(),
    });
    let crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS client configuration")?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut crypto = match identity {
        Some(identity) => crypto
            .with_client_auth_cert(
                vec![identity.cert.clone()],
                PrivateKeyDer::Pkcs8(identity.key.clone_key()),
            )
            .context("TLS client certificate")?,
        None => crypto.with_no_client_auth(),
    };
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        .map_err(|e| anyhow!("QUIC client configuration: {e}"))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config(idle));
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .expect("valid address");
    let mut endpoint = quinn::Endpoint::client(bind).context("opening a UDP socket")?;
    endpoint.set_default_client_config(config);
    let connecting = endpoint
        .connect(addr, SERVER_NAME)
        .with_context(|| format!("connecting to {addr}"))?;
    let connection = connecting
        .await
        .map_err(|e| anyhow!("connecting to {addr}: {e}"))?;
    Ok((endpoint, connection))
}

/// A certificate fingerprint as `--fingerprint` takes it: 64 hex digits
/// (SHA-256), refused before any connection is tried.
pub fn check_fingerprint(fingerprint: &str) -> anyhow::Result<String> {
    let clean = fingerprint.trim().to_ascii_lowercase();
    if clean.len() != 64 || !clean.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!(
            "the fingerprint {fingerprint:?} is not 64 hex digits (SHA-256; the coordinator writes its own to STATE/fingerprint)"
        );
    }
    Ok(clean)
}

/// Accepts exactly the certificate with the pinned fingerprint, and checks
/// the handshake signature with it.
#[derive(Debug)]
struct PinnedCertificate {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let seen = fingerprint_of(end_entity);
        if seen == self.fingerprint {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the peer's certificate did not match the pinned fingerprint: it is {seen}, not {}",
                self.fingerprint
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

// Both pinned verifiers (server and optional client certificates) check
// handshake signatures the same way: TLS 1.3 only, with the provider's
// algorithms.

fn refuse_tls12() -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General("TLS 1.2 is not used by wmr".into()))
}

fn verify_tls13(
    provider: &rustls::crypto::CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &rustls::DigitallySignedStruct,
) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

/// Asks for a client certificate without requiring one, and accepts any
/// certificate whose holder signs the handshake with its key: the
/// certificate is then an identity (its fingerprint), which the
/// coordinator checks against its allowed list for worker streams.
#[derive(Debug)]
struct OptionalClientCertificate {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::server::danger::ClientCertVerifier for OptionalClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        // Pinned, not chained: the fingerprint is checked per stream.
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let message = (7u32, "seven".to_string(), vec![1u8, 2, 3]);
        let frame = encode(&message);
        let len = check_length(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode::<(u32, String, Vec<u8>)>(&frame[4..]), Ok(message));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        /// Fuzz: the decoder never panics; it returns a message or a typed
        /// error, whatever bytes a peer sends.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = decode::<crate::wire::Open>(&body);
            let _ = decode::<crate::wire::FromWorker>(&body);
            let _ = decode::<crate::wire::ClientRequest>(&body);
            if body.len() >= 4 {
                let _ = check_length(body[..4].try_into().unwrap());
            }
        }

        /// Fuzz: every frame a peer can build round-trips exactly.
        #[test]
        fn client_frames_round_trip(job in ".{0,40}", tenant in "[a-z]{0,12}", token in ".{0,64}") {
            let message = crate::wire::Open::Client {
                tenant: crate::model::TenantId(tenant),
                token,
                request: crate::wire::ClientRequest::Cancel(job),
            };
            let frame = encode(&message);
            let decoded: crate::wire::Open = decode(&frame[4..]).unwrap();
            proptest::prop_assert_eq!(encode(&decoded), frame);
        }
    }

    #[test]
    fn fingerprint_lists_skip_comments_and_refuse_typos() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker-fingerprints");
        let a = "ab".repeat(32);
        let b = "CD".repeat(32);
        std::fs::write(&path, format!("# workers\n{a}\n\n  {b}  # rack 2\n")).unwrap();
        let allowed = load_fingerprints(&path).unwrap();
        assert_eq!(
            allowed.into_iter().collect::<Vec<_>>(),
            vec![a.clone(), b.to_ascii_lowercase()]
        );
        std::fs::write(&path, format!("{a}\n{}\n", &a[..63])).unwrap();
        let error = format!("{:#}", load_fingerprints(&path).unwrap_err());
        assert!(
            error.ends_with(&format!(
                ":2: \"{}\" is not a SHA-256 fingerprint (64 hex digits)",
                &a[..63]
            )),
            "{error}"
        );
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        assert_eq!(
            check_length((MAX_FRAME_BYTES as u32 + 1).to_be_bytes()),
            Err(FrameError::Oversize {
                len: MAX_FRAME_BYTES + 1,
                max: MAX_FRAME_BYTES
            })
        );
        assert_eq!(
            decode::<u32>(&[0, 9, 1]),
            Err(FrameError::WrongVersion {
                got: 9,
                want: PROTOCOL_VERSION
            })
        );
        let [v0, v1] = PROTOCOL_VERSION.to_be_bytes();
        assert!(matches!(
            decode::<String>(&[v0, v1, 0xff, 0xff]),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            decode::<u8>(&[v0, v1, 1, 2]),
            Err(FrameError::Malformed(_))
        ));
        assert_eq!(decode::<u8>(&[0]), Err(FrameError::Truncated));
    }
}
