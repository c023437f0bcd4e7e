//! The TLS side of remote access: the server context (certificate, key, optional client
//! certificate request against a CA file, TLS 1.2 and 1.3) and the admission of new
//! connections, which is bounded before any expensive work: a semaphore caps concurrent
//! handshakes, one source address may hold only a share of them, a connection that sends
//! nothing loses its slot after a short deadline and every handshake has an overall one, so a
//! flood of half-done handshakes can neither exhaust memory, nor take the CPU from established
//! sessions, nor (from one address) lock other clients out.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyconnect::{ClientCert, ConnInfo, TlsVersion};
use foreign_types::ForeignTypeRef;
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
    // RELEASE_BUFFERS (set by the Mozilla profile) stays on the context: a connection that
    // never logs in holds no idle record buffers. A connection that enters the tunnel clears
    // it on its own SSL ([`keep_record_buffers`]).
    // Read-ahead stays off: OpenSSL 3.0 moves the unread rest of its read buffer to the
    // aligned start before each record, so with read-ahead a buffer holding many records is
    // copied again for every one of them (memmove's share rose in the profile); the BufStream
    // under the TLS stream already serves the two small reads per record from memory.
    Ok(b.build().into_context())
}

/// Clears `SSL_MODE_RELEASE_BUFFERS` on a connection entering the tunnel (the openssl crate
/// can only add modes). With the mode set OpenSSL frees its record buffers whenever they run
/// empty, which on a tunnel is after every record: a malloc/free pair per packet each way
/// (measured on the TLS client->inside row: malloc+free fell from ~3.3 % to ~1.4 % of the
/// daemon's samples without it). Keeping them costs ~34 KiB per tunnel; connections that
/// never log in keep the mode and hold nothing while idle.
pub fn keep_record_buffers(ssl: &SslRef) {
    // ssl.h: `SSL_clear_mode(ssl, op)` is `SSL_ctrl(ssl, SSL_CTRL_CLEAR_MODE, op, NULL)`.
    const SSL_CTRL_CLEAR_MODE: libc::c_int = 78;
    // SAFETY: `ssl` is a live SSL owned by the caller's stream for the duration of the call
    // (a shared reference to it cannot outlive it); this control only clears mode bits on it,
    // reads no pointer argument (NULL is passed) and keeps no reference.
    unsafe {
        openssl_sys::SSL_ctrl(ssl.as_ptr(), SSL_CTRL_CLEAR_MODE, openssl_sys::SSL_MODE_RELEASE_BUFFERS as libc::c_long, std::ptr::null_mut());
    }
}

/// The transport under TLS: a write buffer batches the records of one flush into few TCP
/// writes (frames go out one record each, see `write_frames` in mod.rs). OpenSSL flushes it
/// after every handshake flight; the connection code flushes after every batch. A read buffer
/// lets OpenSSL take record after record from memory: without it every record costs two
/// `recv` calls (its 5-byte header, then its body), and openconnect sends one record per
/// packet.
pub type Tcp = tokio::io::BufStream<TcpStream>;

/// Read buffer of [`Tcp`]: a few dozen full-size CSTP records per `recv`.
const TCP_READ_BUFFER: usize = 128 * 1024;
/// Write buffer of [`Tcp`].
const TCP_WRITE_BUFFER: usize = 256 * 1024;

/// Bounds on pre-authentication TLS work.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    /// Handshakes in progress at once; further connections wait (in the kernel's accept
    /// queue and then here) for a slot.
    pub concurrent: usize,
    /// Once half the slots are taken, how many one source address may hold; its further
    /// connections are then closed at once (they would otherwise queue ahead of everybody
    /// else's). While half the slots are free nobody is limited, so many clients behind one
    /// NAT address can still log in together.
    pub per_address: usize,
    /// A connection that has not sent its first bytes (the ClientHello) by then is dropped:
    /// a real client sends it right after the TCP handshake.
    pub first_bytes_timeout: Duration,
    /// A handshake that has not finished by then (counted from the accept) is dropped.
    pub timeout: Duration,
}

/// Default share of the handshake slots one source address may hold.
pub const HANDSHAKES_PER_ADDRESS: usize = 8;

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self {
            concurrent: 64,
            per_address: HANDSHAKES_PER_ADDRESS,
            first_bytes_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Handshake slots held per source address (pure bookkeeping; the admission holds it under a
/// mutex, taken only at accept and at the end of a handshake).
///
/// Policy: the first half of the slots are open to anybody; once half are in use, an address
/// gets another one only while it holds fewer than `per_address`. So one address (a flood
/// from one host) can hold at most half the slots plus nothing, and the other half stays for
/// everyone else, at most `per_address` each.
#[derive(Debug)]
pub struct AddressShares {
    per_address: usize,
    /// Slots in use below which nobody is limited.
    open: usize,
    total: usize,
    held: HashMap<IpAddr, usize>,
}

impl AddressShares {
    /// For `concurrent` slots in all, `per_address` of them per address under pressure.
    pub fn new(concurrent: usize, per_address: usize) -> Self {
        Self { per_address: per_address.max(1), open: concurrent / 2, total: 0, held: HashMap::new() }
    }

    /// Takes a slot for `ip`; false when slots are contested and `ip` holds its share.
    pub fn try_take(&mut self, ip: IpAddr) -> bool {
        if self.held(ip) >= self.per_address && self.total >= self.open {
            return false;
        }
        *self.held.entry(ip).or_insert(0) += 1;
        self.total += 1;
        true
    }

    /// Gives back one of `ip`'s slots. An address holding none is forgotten, so the map is
    /// never larger than the number of handshakes in progress.
    pub fn release(&mut self, ip: IpAddr) {
        if let Some(n) = self.held.get_mut(&ip) {
            *n = n.saturating_sub(1);
            self.total = self.total.saturating_sub(1);
            if *n == 0 {
                self.held.remove(&ip);
            }
        }
    }

    pub fn held(&self, ip: IpAddr) -> usize {
        self.held.get(&ip).copied().unwrap_or(0)
    }

    /// Addresses holding at least one slot.
    pub fn addresses(&self) -> usize {
        self.held.len()
    }
}

/// One address's handshake slot; given back when dropped.
pub struct AddressSlot {
    shares: Arc<Mutex<AddressShares>>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        lock_shares(&self.shares).release(self.ip);
    }
}

fn lock_shares(m: &Mutex<AddressShares>) -> std::sync::MutexGuard<'_, AddressShares> {
    // Plain counters: still right after a panic elsewhere.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Admission of new TLS connections.
pub struct Admission {
    /// Behind a lock so that a reload can put a new certificate in place
    /// ([`Admission::set_context`]); each handshake takes the context current at its start.
    ctx: std::sync::RwLock<SslContext>,
    slots: Arc<Semaphore>,
    shares: Arc<Mutex<AddressShares>>,
    limits: HandshakeLimits,
}

/// Why a handshake did not complete (logged by the caller).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake timed out after {0:?}")]
    Timeout(Duration),
    #[error("no ClientHello within {0:?}")]
    Silent(Duration),
    #[error("TLS handshake failed: {0}")]
    Failed(String),
}

impl Admission {
    pub fn new(ctx: SslContext, limits: HandshakeLimits) -> Self {
        Self {
            ctx: std::sync::RwLock::new(ctx),
            slots: Arc::new(Semaphore::new(limits.concurrent.max(1))),
            shares: Arc::new(Mutex::new(AddressShares::new(limits.concurrent.max(1), limits.per_address))),
            limits,
        }
    }

    /// The context (certificate, key, client CA) for handshakes that start from now on;
    /// established connections keep the one they were made with.
    pub fn set_context(&self, ctx: SslContext) {
        *self.ctx.write().unwrap_or_else(|p| p.into_inner()) = ctx;
    }

    /// Waits for a free handshake slot (`None` once the service is shutting down).
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }

    /// Takes one of `peer`'s share of the slots, right after the accept; `None`: that
    /// address holds its share already, close the connection.
    pub fn address_slot(&self, peer: IpAddr) -> Option<AddressSlot> {
        if !lock_shares(&self.shares).try_take(peer) {
            return None;
        }
        Some(AddressSlot { shares: self.shares.clone(), ip: peer })
    }

    /// Runs the server handshake on `tcp`, holding `slot` (from [`Admission::slot`]) and the
    /// address's `share` until it ends: the first bytes must arrive within
    /// `first_bytes_timeout`, the whole handshake within `timeout` of `accepted`.
    pub async fn handshake(
        &self,
        slot: OwnedSemaphorePermit,
        share: AddressSlot,
        accepted: Instant,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Result<(SslStream<Tcp>, ConnInfo), HandshakeError> {
        let _slot = slot;
        let _share = share;
        // Waiting for readability costs no TLS state; a silent connection gives its slot
        // back after the short deadline instead of the full handshake one.
        // (A peek, not readiness: readiness may be reported spuriously.)
        let mut first = [0u8; 1];
        match tokio::time::timeout(self.limits.first_bytes_timeout, tcp.peek(&mut first)).await {
            Err(_) => return Err(HandshakeError::Silent(self.limits.first_bytes_timeout)),
            Ok(Err(e)) => return Err(HandshakeError::Failed(e.to_string())),
            Ok(Ok(0)) => return Err(HandshakeError::Failed("connection closed before the ClientHello".into())),
            Ok(Ok(_)) => {}
        }
        let left = self.limits.timeout.saturating_sub(crate::clock::now().saturating_duration_since(accepted));
        let ssl = {
            let ctx = self.ctx.read().unwrap_or_else(|p| p.into_inner());
            Ssl::new(&ctx).map_err(|e| HandshakeError::Failed(e.to_string()))?
        };
        let mut stream = SslStream::new(ssl, tokio::io::BufStream::with_capacity(TCP_READ_BUFFER, TCP_WRITE_BUFFER, tcp)).map_err(|e| HandshakeError::Failed(e.to_string()))?;
        match tokio::time::timeout(left, Pin::new(&mut stream).accept()).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ssl_mode(ssl: &SslRef) -> libc::c_long {
        // ssl.h: `SSL_get_mode(ssl)` is `SSL_ctrl(ssl, SSL_CTRL_MODE, 0, NULL)`.
        const SSL_CTRL_MODE: libc::c_int = 33;
        // SAFETY: `ssl` is live for the call; with 0 this control only returns the mode bits.
        unsafe { openssl_sys::SSL_ctrl(ssl.as_ptr(), SSL_CTRL_MODE, 0, std::ptr::null_mut()) }
    }

    /// Connections start with RELEASE_BUFFERS (the server profile's setting: nothing held
    /// while idle before login); only a connection entering the tunnel clears it, and only
    /// on itself.
    #[test]
    fn only_tunnel_connections_keep_record_buffers() {
        let release = openssl_sys::SSL_MODE_RELEASE_BUFFERS as libc::c_long;
        let ctx = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap().build().into_context();
        let tunnel = Ssl::new(&ctx).unwrap();
        let other = Ssl::new(&ctx).unwrap();
        assert_ne!(ssl_mode(&tunnel) & release, 0, "the profile releases buffers");
        keep_record_buffers(&tunnel);
        assert_eq!(ssl_mode(&tunnel) & release, 0);
        assert_ne!(ssl_mode(&other) & release, 0, "other connections keep the context's mode");
        assert_ne!(ssl_mode(&Ssl::new(&ctx).unwrap()) & release, 0);
    }

    #[test]
    fn nobody_is_limited_while_half_the_slots_are_free() {
        // 16 slots, 3 per address under pressure: one address may take 8 freely (a NAT with
        // many users logging in together), then no more.
        let mut s = AddressShares::new(16, 3);
        let nat = ip("192.0.2.7");
        for i in 0..8 {
            assert!(s.try_take(nat), "slot {i} while half are free");
        }
        assert!(!s.try_take(nat), "ninth slot for one address with half the slots in use");
        assert_eq!(s.held(nat), 8);
    }

    #[test]
    fn under_pressure_each_address_gets_only_its_share() {
        let mut s = AddressShares::new(16, 3);
        let flood = ip("192.0.2.7");
        let b = ip("198.51.100.9");
        let c = ip("203.0.113.5");
        while s.try_take(flood) {}
        assert_eq!(s.held(flood), 8);
        // The other half stays for everyone else, `per_address` each.
        for _ in 0..3 {
            assert!(s.try_take(b));
        }
        assert!(!s.try_take(b), "fourth slot for b under pressure");
        assert!(s.try_take(c));
        assert_eq!(s.addresses(), 3);
        // A slot given back can be taken again, once.
        s.release(b);
        assert!(s.try_take(b));
        assert!(!s.try_take(b));
        // The flood's slots going back below half lifts the limit again.
        for _ in 0..8 {
            s.release(flood);
        }
        assert_eq!(s.held(flood), 0);
        assert!(s.try_take(b), "b beyond its share once slots are free again");
        // Releasing everything forgets the addresses (the map stays as small as the work).
        for _ in 0..5 {
            s.release(b);
        }
        s.release(b);
        s.release(c);
        assert_eq!(s.addresses(), 0);
        assert_eq!(s.total, 0);
    }

    fn admission(tag: &str, limits: HandshakeLimits) -> (Admission, std::path::PathBuf) {
        let (dir, cert, key) = super::super::dtls::tests::test_cert(tag);
        (Admission::new(server_context(&cert, &key, None).unwrap(), limits), dir)
    }

    #[test]
    fn address_slots_come_back_when_dropped() {
        let limits = HandshakeLimits { concurrent: 4, per_address: 1, ..HandshakeLimits::default() };
        let (adm, dir) = admission("tls-slots", limits);
        let a = ip("192.0.2.7");
        let s1 = adm.address_slot(a).unwrap();
        let _s2 = adm.address_slot(a).unwrap();
        assert!(adm.address_slot(a).is_none());
        assert!(adm.address_slot(ip("192.0.2.8")).is_some());
        drop(s1);
        assert!(adm.address_slot(a).is_some());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Real sockets on loopback: a connection that never sends loses its slot after the short
    /// first-bytes deadline, not the full handshake one; a real TLS client within the limits
    /// completes.
    #[test]
    fn silent_connection_is_dropped_early_and_a_client_still_gets_through() {
        let limits = HandshakeLimits {
            concurrent: 4,
            per_address: 2,
            first_bytes_timeout: Duration::from_millis(300),
            timeout: Duration::from_secs(5),
        };
        let (adm, dir) = admission("tls-silent", limits);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            // Silent client: connects, sends nothing.
            let _silent = TcpStream::connect(addr).await.unwrap();
            let (tcp, peer) = listener.accept().await.unwrap();
            let slot = adm.slot().await.unwrap();
            let share = adm.address_slot(peer.ip()).unwrap();
            let t0 = crate::clock::now();
            match adm.handshake(slot, share, t0, tcp, peer).await {
                Err(HandshakeError::Silent(d)) => assert_eq!(d, limits.first_bytes_timeout),
                Err(e) => panic!("expected the first-bytes deadline, got {e}"),
                Ok(_) => panic!("a silent connection completed a handshake"),
            }
            let took = crate::clock::now().saturating_duration_since(t0);
            assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(2), "{took:?}");
            // Its address share is back.
            assert_eq!(lock_shares(&adm.shares).held(peer.ip()), 0);

            // A real client (OpenSSL's client side) completes within the same admission.
            let client = tokio::spawn(async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let mut cb = openssl::ssl::SslConnector::builder(SslMethod::tls_client()).unwrap();
                cb.set_verify(SslVerifyMode::NONE);
                let ssl = cb.build().configure().unwrap().into_ssl("gw.example").unwrap();
                let mut s = SslStream::new(ssl, tcp).unwrap();
                Pin::new(&mut s).connect().await.map(|_| ()).map_err(|e| e.to_string())
            });
            let (tcp, peer) = listener.accept().await.unwrap();
            let slot = adm.slot().await.unwrap();
            let share = adm.address_slot(peer.ip()).unwrap();
            let (_stream, info) = adm.handshake(slot, share, crate::clock::now(), tcp, peer).await.unwrap();
            assert_eq!(info.peer, peer);
            client.await.unwrap().unwrap();
        });
        let _ = std::fs::remove_dir_all(dir);
    }
}
