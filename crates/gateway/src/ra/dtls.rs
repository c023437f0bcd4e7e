//! The DTLS data channel of AnyConnect (anyconnect.md §4): one OpenSSL DTLS 1.2 server `Ssl`
//! per session, over a datagram adapter that feeds it one UDP datagram at a time and queues its
//! output in a [`DgramQueue`] shared by all associations; the caller sends that queue after
//! releasing the engine lock (batched: UDP GSO trains, see `super::send_dgrams`).
//!
//! Clients are told apart before any cryptography: the first datagram of an association is a
//! ClientHello whose session_id is the X-DTLS-App-ID (PSK-NEGOTIATE) or X-DTLS-Session-ID
//! (legacy) the CONNECT response announced ([`client_hello_session_id`]). Later datagrams are
//! matched by source address.
//!
//! Keying:
//! * PSK-NEGOTIATE: the PSK is the 32-byte RFC 5705 exporter of the session's CSTP TLS
//!   connection (label `EXPORTER-openconnect-psk`, no context), handed to OpenSSL by a server
//!   PSK callback that reads it from the `Ssl`'s ex-data.
//! * Legacy: the client resumes a session it never negotiated; the server makes that session
//!   exist by building an `SSL_SESSION` from the client's X-DTLS-Master-Secret, the announced
//!   session id and the chosen cipher, and adding it to the legacy context's session cache
//!   ([`super::legacy::install_session`]).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyconnect::LegacyCipher;
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslFiletype, SslMethod, SslOptions, SslSessionCacheMode, SslStream,
    SslVersion,
};

/// Length of the DTLS record header (RFC 6347 §4.1): type, version, epoch, sequence, length.
const RECORD_HEADER: usize = 13;
/// Handshake header (RFC 6347 §4.2.2): type, length, message_seq, fragment offset/length.
const HANDSHAKE_HEADER: usize = 12;
/// ClientHello: client_version (2) + random (32) precede session_id (RFC 5246 §7.4.1.2).
const SESSION_ID_OFFSET: usize = RECORD_HEADER + HANDSHAKE_HEADER + 2 + 32;

/// Datagram size OpenSSL may use for its own handshake flights. The PSK and resumption
/// handshakes carry no certificates, so every flight fits well below this.
const HANDSHAKE_MTU: u32 = 1400;

/// The PSK label of openconnect's PSK-NEGOTIATE (anyconnect.md §4).
pub const PSK_EXPORTER_LABEL: &str = "EXPORTER-openconnect-psk";

/// The session_id of a DTLS ClientHello that starts a new association, or `None` when `d` is
/// anything else (application data, a later handshake fragment, garbage). Only reads bytes
/// after checking the length, so any datagram an attacker sends is safe here.
pub fn client_hello_session_id(d: &[u8]) -> Option<&[u8]> {
    // RFC 6347 §4.1: content type 22 = handshake; epoch 0 = no cipher state yet.
    if d.len() < SESSION_ID_OFFSET + 1 || d[0] != 22 || d[3] != 0 || d[4] != 0 {
        return None;
    }
    // The record's version must be a DTLS one (0xfeff DTLS 1.0, 0xfefd DTLS 1.2, 0x0100 DTLS 0.9).
    let ver = u16::from_be_bytes([d[1], d[2]]);
    if ver != 0xfeff && ver != 0xfefd && ver != 0x0100 {
        return None;
    }
    let hs = &d[RECORD_HEADER..];
    // msg_type 1 = ClientHello, starting at fragment offset 0.
    if hs[0] != 1 || hs[6..9] != [0, 0, 0] {
        return None;
    }
    let len = usize::from(d[SESSION_ID_OFFSET]);
    if len == 0 || len > 32 {
        return None;
    }
    d.get(SESSION_ID_OFFSET + 1..SESSION_ID_OFFSET + 1 + len)
}

/// How one association is keyed (what the CONNECT exchange decided, with the PSK already
/// derived from the TLS connection).
#[derive(Clone)]
pub enum DtlsKey {
    Psk([u8; 32]),
    Legacy { session_id: [u8; 32], master_secret: [u8; 48], cipher: LegacyCipher },
}

impl std::fmt::Debug for DtlsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key material never reaches a log.
        match self {
            Self::Psk(_) => f.write_str("Psk(..)"),
            Self::Legacy { cipher, .. } => write!(f, "Legacy({cipher:?})"),
        }
    }
}

/// Errors of the DTLS layer (all caused by a peer or the configuration, never fatal to the
/// listener).
#[derive(Debug, thiserror::Error)]
pub enum DtlsError {
    #[error("OpenSSL: {0}")]
    Ssl(#[from] ErrorStack),
    #[error("DTLS handshake failed: {0}")]
    Handshake(String),
    #[error("legacy DTLS cipher {0:?} is not available")]
    Cipher(LegacyCipher),
    #[error("association not established")]
    NotEstablished,
    #[error("DTLS write failed: {0}")]
    Write(String),
}

/// The two server contexts (PSK and legacy resumption), built once.
pub struct DtlsServer {
    psk: SslContext,
    legacy: SslContext,
    psk_index: Index<Ssl, [u8; 32]>,
}

impl DtlsServer {
    /// `cert`/`key`: the server certificate (loaded into the legacy context so that OpenSSL
    /// considers the RSA suites usable; a resumption never sends it).
    pub fn new(cert: &Path, key: &Path) -> Result<Self, DtlsError> {
        let psk_index = Ssl::new_ex_index::<[u8; 32]>()?;

        let mut b = base_context()?;
        // anyconnect.md §4: openconnect 9.01 offers the PSK suites led by AES-256-GCM. The
        // engine computes X-DTLS-MTU from the same list before the handshake picks one, so
        // only those suites are accepted (one list: the two cannot drift apart).
        b.set_cipher_list(&anyconnect::mtu::PSK_DTLS_SUITES.join(":"))?;
        b.set_session_cache_mode(SslSessionCacheMode::OFF);
        let idx = psk_index;
        b.set_psk_server_callback(move |ssl, _identity, out| {
            // The identity is always "psk" (anyconnect.md §4) and carries no information.
            match ssl.ex_data(idx) {
                Some(k) if out.len() >= k.len() => {
                    out[..k.len()].copy_from_slice(k);
                    Ok(k.len())
                }
                // No key: 0 = unknown identity, the handshake fails with an alert.
                _ => Ok(0),
            }
        });
        let psk = b.build();

        let mut b = base_context()?;
        b.set_certificate_chain_file(cert)?;
        b.set_private_key_file(key, SslFiletype::PEM)?;
        b.set_cipher_list(
            "AES256-GCM-SHA384:AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256",
        )?;
        // Resumption looks the session up in this context's cache, and the session's id
        // context must equal the context's.
        b.set_session_cache_mode(SslSessionCacheMode::SERVER);
        b.set_session_id_context(super::legacy::SID_CTX)?;
        // OpenSSL >= 1.1.0 clients offer extended_master_secret (RFC 7627) even when resuming,
        // and an OpenSSL server never resumes a session made without EMS for an EMS
        // ClientHello: it would start a full handshake the AnyConnect client cannot follow
        // (openssl/openssl#3910). The installed session is never EMS, so the extension is
        // ignored here (as anylink's DTLS listener does); the PSK context keeps it.
        b.set_options(super::legacy::NO_EXTENDED_MASTER_SECRET);
        let legacy = b.build();
        Ok(Self { psk, legacy, psk_index })
    }

    /// A fresh association for `peer`, keyed by `key`, ready for the ClientHello.
    pub fn new_conn(&self, key: &DtlsKey, out: Arc<Mutex<DgramQueue>>, peer: SocketAddr) -> Result<DtlsConn, DtlsError> {
        let mut ssl = match key {
            DtlsKey::Psk(k) => {
                let mut ssl = Ssl::new(&self.psk)?;
                ssl.set_ex_data(self.psk_index, *k);
                ssl
            }
            DtlsKey::Legacy { session_id, master_secret, cipher } => {
                let ssl = Ssl::new(&self.legacy)?;
                super::legacy::install_session(&self.legacy, &ssl, *cipher, session_id, master_secret)?;
                ssl
            }
        };
        ssl.set_mtu(HANDSHAKE_MTU)?;
        let stream = SslStream::new(ssl, Dgram { pending: Vec::with_capacity(2048), has_pending: false, out, peer })?;
        Ok(DtlsConn { stream, established: false, legacy: matches!(key, DtlsKey::Legacy { .. }) })
    }
}

fn base_context() -> Result<SslContextBuilder, ErrorStack> {
    let mut b = SslContextBuilder::new(SslMethod::dtls())?;
    b.set_min_proto_version(Some(SslVersion::DTLS1_2))?;
    b.set_max_proto_version(Some(SslVersion::DTLS1_2))?;
    // NO_QUERY_MTU: the adapter is not a kernel socket; the MTU is set per Ssl. NO_TICKET: a
    // new association is always keyed from the CSTP session, never from a ticket.
    b.set_options(SslOptions::NO_QUERY_MTU | SslOptions::NO_TICKET);
    Ok(b)
}

/// What one datagram produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The handshake completed with this datagram.
    pub established_now: bool,
    /// The peer sent close_notify (or the association failed): drop it.
    pub closed: bool,
}

/// One DTLS association.
pub struct DtlsConn {
    stream: SslStream<Dgram>,
    established: bool,
    legacy: bool,
}

impl DtlsConn {
    pub fn peer(&self) -> SocketAddr {
        self.stream.get_ref().peer
    }

    pub fn is_established(&self) -> bool {
        self.established
    }

    pub fn is_legacy(&self) -> bool {
        self.legacy
    }

    /// The negotiated cipher's OpenSSL name (after the handshake).
    pub fn cipher_name(&self) -> Option<&'static str> {
        self.stream.ssl().current_cipher().map(|c| c.name())
    }

    /// Feeds one datagram; every application record it carried is passed to `on_record`.
    /// A handshake failure is an error (drop the association); a record that fails to
    /// authenticate is silently discarded by OpenSSL (RFC 6347 §4.1.2.7).
    pub fn handle_datagram(
        &mut self,
        datagram: &[u8],
        scratch: &mut [u8],
        mut on_record: impl FnMut(&[u8]),
    ) -> Result<Progress, DtlsError> {
        let mut progress = Progress::default();
        {
            let a = self.stream.get_mut();
            a.pending.clear();
            a.pending.extend_from_slice(datagram);
            a.has_pending = true;
        }
        if !self.established {
            match self.stream.accept() {
                Ok(()) => {
                    self.established = true;
                    progress.established_now = true;
                }
                Err(e) if e.code() == ErrorCode::WANT_READ => return Ok(progress),
                Err(e) => return Err(DtlsError::Handshake(describe(&e))),
            }
        }
        loop {
            match self.stream.ssl_read(scratch) {
                Ok(0) => break,
                Ok(n) => on_record(&scratch[..n]),
                Err(e) if e.code() == ErrorCode::WANT_READ => break,
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                    progress.closed = true;
                    break;
                }
                Err(e) => return Err(DtlsError::Handshake(describe(&e))),
            }
        }
        self.stream.get_mut().has_pending = false;
        Ok(progress)
    }

    /// Sends `record` (type byte + payload) as one DTLS application-data record.
    pub fn send(&mut self, record: &[u8]) -> Result<(), DtlsError> {
        if !self.established {
            return Err(DtlsError::NotEstablished);
        }
        match self.stream.ssl_write(record) {
            Ok(_) => Ok(()),
            Err(e) => Err(DtlsError::Write(describe(&e))),
        }
    }

    /// Sends close_notify (best effort).
    pub fn close(&mut self) {
        if self.established {
            let _ = self.stream.shutdown();
        }
    }

}

fn describe(e: &openssl::ssl::Error) -> String {
    match e.ssl_error() {
        Some(stack) => stack.to_string(),
        None => e.to_string(),
    }
}

/// Datagrams produced by the associations (handshake flights, records, alerts), in the order
/// they were written, waiting to be sent. One queue serves every association: the engine lock
/// orders the writes, and whoever sends the queue sends it whole, in order.
#[derive(Debug, Default)]
pub struct DgramQueue {
    buf: Vec<u8>,
    /// (destination, start, end) in `buf`.
    items: Vec<(SocketAddr, usize, usize)>,
    /// Datagrams dropped because the queue was full (nobody sending: cannot happen while the
    /// service runs, kept as a bound).
    pub dropped: u64,
}

/// Most datagrams a [`DgramQueue`] holds before it drops (a bound, not a working limit: the
/// queue is sent after every engine lock).
const QUEUE_MAX: usize = 4096;

impl DgramQueue {
    pub fn push(&mut self, to: SocketAddr, d: &[u8]) {
        if self.items.len() >= QUEUE_MAX {
            self.dropped += 1;
            return;
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(d);
        self.items.push((to, start, self.buf.len()));
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Datagram `i`: destination and bytes.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        let &(to, a, b) = self.items.get(i)?;
        Some((to, &self.buf[a..b]))
    }

    /// The bytes of datagrams `i..j`, contiguous (they were queued in order).
    pub fn span(&self, i: usize, j: usize) -> &[u8] {
        match (self.items.get(i), j.checked_sub(1).and_then(|k| self.items.get(k))) {
            (Some(&(_, a, _)), Some(&(_, _, b))) if i < j => &self.buf[a..b],
            _ => &[],
        }
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.items.clear();
    }

    /// Trains of datagrams for one UDP GSO send each: consecutive datagrams to the same
    /// destination, all of the first one's size except possibly the last (the kernel's
    /// UDP_SEGMENT rule), at most `max_segs` and `max_bytes` in all. Calls `f(i, j, seg)` for
    /// every train `i..j` in order.
    pub fn trains(&self, max_segs: usize, max_bytes: usize, mut f: impl FnMut(usize, usize, usize)) {
        let n = self.items.len();
        let mut i = 0;
        while i < n {
            let (to, a, b) = self.items[i];
            let seg = b - a;
            let mut bytes = seg;
            let mut j = i + 1;
            while j < n && j - i < max_segs.max(1) {
                let (t2, a2, b2) = self.items[j];
                let len = b2 - a2;
                if t2 != to || len > seg || bytes + len > max_bytes {
                    break;
                }
                bytes += len;
                j += 1;
                if len < seg {
                    // A shorter datagram ends the train.
                    break;
                }
            }
            f(i, j, seg);
            i = j;
        }
    }
}

/// The datagram adapter OpenSSL's BIO reads from and writes to: reads return the one pending
/// datagram (then WouldBlock), writes are queued as one UDP datagram each.
struct Dgram {
    pending: Vec<u8>,
    has_pending: bool,
    out: Arc<Mutex<DgramQueue>>,
    peer: SocketAddr,
}

impl Read for Dgram {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.has_pending {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.has_pending = false;
        // OpenSSL reads DTLS with a buffer of at least the maximum record size; a longer
        // datagram is truncated like a kernel socket would, and then fails authentication.
        let n = self.pending.len().min(buf.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        Ok(n)
    }
}

impl Write for Dgram {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // UDP is lossy by contract: a datagram that cannot be sent later is dropped and
        // counted, never an error that would kill the association.
        self.out.lock().unwrap_or_else(|p| p.into_inner()).push(self.peer, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn hello(session_id: &[u8]) -> Vec<u8> {
        let mut d = vec![22, 0xfe, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        d.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        d.extend_from_slice(&[0xfe, 0xfd]);
        d.extend_from_slice(&[7; 32]);
        d.push(session_id.len() as u8);
        d.extend_from_slice(session_id);
        d.extend_from_slice(&[0, 0]);
        d
    }

    #[test]
    fn session_id_of_client_hello() {
        let sid = [0xab; 32];
        assert_eq!(client_hello_session_id(&hello(&sid)), Some(&sid[..]));
        assert_eq!(SESSION_ID_OFFSET, 13 + 46);
    }

    #[test]
    fn anything_else_has_no_session_id() {
        let sid = [0xab; 32];
        let good = hello(&sid);
        // Truncated anywhere.
        for n in 0..good.len() - 2 {
            assert_eq!(client_hello_session_id(&good[..n]), None, "len {n}");
        }
        // Application data, epoch 1, not a ClientHello, a later fragment, empty session id.
        let mut d = good.clone();
        d[0] = 23;
        assert_eq!(client_hello_session_id(&d), None);
        let mut d = good.clone();
        d[4] = 1;
        assert_eq!(client_hello_session_id(&d), None);
        let mut d = good.clone();
        d[13] = 2;
        assert_eq!(client_hello_session_id(&d), None);
        let mut d = good.clone();
        d[13 + 8] = 1;
        assert_eq!(client_hello_session_id(&d), None);
        let d = hello(&[]);
        assert_eq!(client_hello_session_id(&d), None);
        let mut d = good;
        d[1] = 3;
        d[2] = 3;
        assert_eq!(client_hello_session_id(&d), None);
    }

    /// A self-signed RSA certificate and key in a fresh directory (removed by the caller).
    pub(crate) fn test_cert(tag: &str) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
        use openssl::asn1::Asn1Time;
        use openssl::hash::MessageDigest;
        use openssl::pkey::PKey;
        use openssl::rsa::Rsa;
        use openssl::x509::{X509NameBuilder, X509};
        let dir = std::env::temp_dir().join(format!("hf-ra-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "gw.example").unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
        b.set_not_after(&Asn1Time::days_from_now(30).unwrap()).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        let cert = b.build();
        let cp = dir.join("server.pem");
        let kp = dir.join("server.key");
        std::fs::write(&cp, cert.to_pem().unwrap()).unwrap();
        std::fs::write(&kp, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        (dir, cp, kp)
    }

    /// The PSK path against an independent DTLS client: `openssl s_client -dtls1_2 -psk`
    /// (OpenSSL's command-line tool, not this code) completes the handshake with the key we
    /// hand the association, its line of text arrives as one record, and our reply reaches
    /// it. A wrong key must not establish anything.
    #[test]
    fn psk_association_with_openssl_s_client() {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        use std::time::Duration;
        if Command::new("openssl").arg("version").output().is_err() {
            eprintln!("openssl tool not installed; skipping");
            return;
        }
        let (dir, cert, key) = test_cert("psk");
        let server = DtlsServer::new(&cert, &key).unwrap();
        let psk = [0x5a_u8; 32];
        for (client_key, should_work) in [(psk, true), ([0x11_u8; 32], false)] {
            let sock = Arc::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
            let out: Arc<Mutex<DgramQueue>> = Arc::default();
            // What the associations queued goes out on the test socket (the service sends it
            // after releasing its lock).
            let flush = |out: &Mutex<DgramQueue>| {
                let mut q = out.lock().unwrap();
                for i in 0..q.len() {
                    let (to, d) = q.get(i).unwrap();
                    sock.send_to(d, to).unwrap();
                }
                q.clear();
            };
            sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let port = sock.local_addr().unwrap().port();
            let mut child = Command::new("openssl")
                .args(["s_client", "-dtls1_2", "-quiet", "-psk_identity", "psk", "-psk"])
                .arg(client_key.iter().map(|b| format!("{b:02x}")).collect::<String>())
                .args(["-cipher", "PSK-AES256-GCM-SHA384", "-connect"])
                .arg(format!("127.0.0.1:{port}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            let stdout = child.stdout.take().unwrap();
            let (line_tx, line_rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = line_tx.send(l);
                }
            });
            let mut conn: Option<DtlsConn> = None;
            let mut buf = [0u8; 4096];
            let mut scratch = [0u8; 4096];
            let mut got: Vec<Vec<u8>> = Vec::new();
            let mut failed = false;
            let mut sent_line = false;
            let deadline = crate::clock::now() + Duration::from_secs(if should_work { 10 } else { 3 });
            while crate::clock::now() < deadline && got.is_empty() && !failed {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    if conn.as_ref().is_some_and(|c| c.is_established()) && !sent_line {
                        writeln!(stdin, "hello from s_client").unwrap();
                        stdin.flush().unwrap();
                        sent_line = true;
                    }
                    continue;
                };
                if conn.is_none() {
                    // s_client sends no session id; the demux by session id is tested above.
                    conn = Some(server.new_conn(&DtlsKey::Psk(psk), out.clone(), peer).unwrap());
                }
                let c = conn.as_mut().unwrap();
                match c.handle_datagram(&buf[..n], &mut scratch, |r| got.push(r.to_vec())) {
                    Ok(p) => {
                        if p.established_now {
                            assert_eq!(c.cipher_name(), Some("PSK-AES256-GCM-SHA384"));
                            writeln!(stdin, "hello from s_client").unwrap();
                            stdin.flush().unwrap();
                            sent_line = true;
                        }
                    }
                    Err(_) => failed = true,
                }
                flush(&out);
            }
            if should_work {
                assert_eq!(got, vec![b"hello from s_client\n".to_vec()]);
                conn.as_mut().unwrap().send(b"reply from holdfast\n").unwrap();
                flush(&out);
                let line = line_rx.recv_timeout(Duration::from_secs(5)).unwrap();
                assert_eq!(line, "reply from holdfast");
            } else {
                // DTLS discards records that fail authentication instead of alerting (RFC
                // 6347 §4.1.2.7), so a wrong PSK shows as a handshake that never completes
                // (or one that fails outright).
                let established = conn.as_ref().is_some_and(|c| c.is_established());
                assert!(conn.is_some(), "s_client never sent a ClientHello");
                assert!(failed || !established, "a wrong PSK must not establish the association");
                assert!(got.is_empty());
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    /// Trains: same destination, equal sizes, a shorter datagram closes a train, a larger one
    /// or another destination starts a new one; the segment and byte limits hold; every
    /// datagram is in exactly one train, in order, and a train's bytes are its datagrams'.
    #[test]
    fn gso_trains_follow_the_udp_segment_rule() {
        let mut q = DgramQueue::default();
        let sizes: [(u16, usize); 9] = [(1, 100), (1, 100), (1, 100), (1, 40), (1, 100), (2, 100), (2, 120), (2, 120), (1, 120)];
        for (k, &(p, n)) in sizes.iter().enumerate() {
            q.push(a(p), &vec![k as u8; n]);
        }
        let mut trains = Vec::new();
        q.trains(64, 65_507, |i, j, seg| trains.push((i, j, seg)));
        assert_eq!(trains, vec![(0, 4, 100), (4, 5, 100), (5, 6, 100), (6, 8, 120), (8, 9, 120)]);
        for &(i, j, _) in &trains {
            let want: Vec<u8> = (i..j).flat_map(|k| q.get(k).unwrap().1.to_vec()).collect();
            assert_eq!(q.span(i, j), &want[..]);
        }
        // Limits: at most 2 segments, at most 250 bytes.
        let mut t2 = Vec::new();
        q.trains(2, 65_507, |i, j, _| t2.push((i, j)));
        assert_eq!(t2, vec![(0, 2), (2, 4), (4, 5), (5, 6), (6, 8), (8, 9)]);
        let mut t3 = Vec::new();
        q.trains(64, 250, |i, j, _| t3.push((i, j)));
        assert_eq!(t3, vec![(0, 2), (2, 4), (4, 5), (5, 6), (6, 8), (8, 9)]);
        q.clear();
        assert!(q.is_empty());
        let mut none = 0;
        q.trains(64, 65_507, |_, _, _| none += 1);
        assert_eq!(none, 0);
    }
}
