//! The TLS side of remote access: the server context (certificate, key, optional client
//! certificate request against a CA file, TLS 1.2 and 1.3) and the admission of new
//! connections, which is bounded before any expensive work: a semaphore caps concurrent
//! handshakes and each handshake has a deadline, so a flood of half-done handshakes can
//! neither exhaust memory nor take the CPU from established sessions.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyconnect::{ClientCert, ConnInfo, TlsVersion};
use openssl::nid::Nid;
use openssl::ssl::{Ssl, SslAcceptor, SslContext, SslFiletype, SslMethod, SslRef, SslVerifyMode, SslVersion};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_openssl::SslStream;

/// Why a TLS context could not be built (a configuration error, reported at start).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{what} {path}: {source}")]
    File { what: &'static str, path: String, source: openssl::error::ErrorStack },
    #[error("OpenSSL: {0}")]
    Ssl(#[from] openssl::error::ErrorStack),
}

/// The CSTP server context.
pub fn server_context(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<SslContext, TlsSetupError> {
    let file_err = |what, path: &Path| {
        let path = path.display().to_string();
        move |source| TlsSetupError::File { what, path, source }
    };
    // Mozilla "intermediate": TLS 1.2 + 1.3 with AEAD suites (what openconnect and Cisco
    // Secure Client negotiate).
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    b.set_certificate_chain_file(cert).map_err(file_err("certificate-file", cert))?;
    b.set_private_key_file(key, SslFiletype::PEM).map_err(file_err("key-file", key))?;
    b.check_private_key().map_err(file_err("key-file does not match certificate-file", key))?;
    if let Some(ca) = ca {
        b.set_ca_file(ca).map_err(file_err("ca-file", ca))?;
        let names = openssl::x509::X509Name::load_client_ca_file(ca).map_err(file_err("ca-file", ca))?;
        b.set_client_ca_list(names);
        // Ask for a certificate but do not require one: password users have none. A
        // certificate that is presented must verify, or the handshake fails.
        b.set_verify(SslVerifyMode::PEER);
    } else {
        b.set_verify(SslVerifyMode::NONE);
    }
    Ok(b.build().into_context())
}

/// The transport under TLS: a write buffer batches the records of one flush into few TCP
/// writes (frames go out one record each, see `write_frames` in mod.rs). OpenSSL flushes it
/// after every handshake flight; the connection code flushes after every batch.
pub type Tcp = tokio::io::BufWriter<TcpStream>;

/// Bounds on pre-authentication TLS work.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    /// Handshakes in progress at once; further connections wait (in the kernel's accept
    /// queue and then here) for a slot.
    pub concurrent: usize,
    /// A handshake that has not finished by then is dropped.
    pub timeout: Duration,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self { concurrent: 64, timeout: Duration::from_secs(10) }
    }
}

/// Admission of new TLS connections.
pub struct Admission {
    ctx: SslContext,
    slots: Arc<Semaphore>,
    limits: HandshakeLimits,
}

/// Why a handshake did not complete (logged by the caller).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake timed out after {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Failed(String),
}

impl Admission {
    pub fn new(ctx: SslContext, limits: HandshakeLimits) -> Self {
        Self { ctx, slots: Arc::new(Semaphore::new(limits.concurrent.max(1))), limits }
    }

    /// Waits for a free handshake slot (`None` once the service is shutting down).
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }

    /// Runs the server handshake on `tcp` within the deadline, holding `slot` (from
    /// [`Admission::slot`]) until it ends.
    pub async fn handshake(
        &self,
        slot: OwnedSemaphorePermit,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Result<(SslStream<Tcp>, ConnInfo), HandshakeError> {
        let _slot = slot;
        let ssl = Ssl::new(&self.ctx).map_err(|e| HandshakeError::Failed(e.to_string()))?;
        let mut stream = SslStream::new(ssl, tokio::io::BufWriter::with_capacity(256 * 1024, tcp)).map_err(|e| HandshakeError::Failed(e.to_string()))?;
        match tokio::time::timeout(self.limits.timeout, Pin::new(&mut stream).accept()).await {
            Err(_) => Err(HandshakeError::Timeout(self.limits.timeout)),
            Ok(Err(e)) => Err(HandshakeError::Failed(match e.ssl_error() {
                Some(s) => s.to_string(),
                None => e.to_string(),
            })),
            Ok(Ok(())) => {
                let info = conn_info(stream.ssl(), peer);
                Ok((stream, info))
            }
        }
    }
}

/// What the engine needs to know about an established connection.
pub fn conn_info(ssl: &SslRef, peer: SocketAddr) -> ConnInfo {
    let tls_version = if ssl.version2() == Some(SslVersion::TLS1_3) { TlsVersion::Tls13 } else { TlsVersion::Tls12 };
    let tls_cipher = ssl.current_cipher().map(|c| c.name().to_string()).unwrap_or_default();
    // With SslVerifyMode::PEER a presented certificate that fails verification ends the
    // handshake, so a certificate here has been verified against the CA file.
    let client_cert = ssl.peer_certificate().and_then(|c| {
        let cn = c.subject_name().entries_by_nid(Nid::COMMONNAME).next()?;
        // Raw bytes of a UTF8String/PrintableString CN; anything that is not clean UTF-8
        // (BMPString, an embedded NUL that could make "admin\0.evil" look like "admin")
        // is no username.
        let cn = std::str::from_utf8(cn.data().as_slice()).ok()?;
        if cn.is_empty() || cn.contains('\0') {
            return None;
        }
        let cn = cn.to_string();
        Some(ClientCert { common_name: cn })
    });
    ConnInfo { peer, tls_version, tls_cipher, client_cert }
}

/// The 32-byte PSK of PSK-NEGOTIATE DTLS: the RFC 5705 exporter of this TLS connection with
/// label `EXPORTER-openconnect-psk` and no context (anyconnect.md §4; for TLS 1.3, RFC 8446
/// §7.5 treats "no context" as an empty one, which is what OpenSSL does too).
pub fn dtls_psk(ssl: &SslRef) -> Result<[u8; 32], openssl::error::ErrorStack> {
    let mut out = [0u8; 32];
    ssl.export_keying_material(&mut out, super::dtls::PSK_EXPORTER_LABEL, None)?;
    Ok(out)
}
