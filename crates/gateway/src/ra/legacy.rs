//! Legacy (Cisco) DTLS keying: the client "resumes" a DTLS 1.2 session that was never
//! negotiated. Its master secret is the X-DTLS-Master-Secret the client sent in the CONNECT
//! request, its id the X-DTLS-Session-ID we answered, its cipher the one we chose
//! (anyconnect.md §4). OpenSSL offers no safe API to build such a session, so this file holds
//! the few raw libssl calls, all in [`install_session`].

use std::os::raw::{c_int, c_long, c_uchar, c_uint};

use anyconnect::LegacyCipher;
use openssl::error::ErrorStack;
use foreign_types::{ForeignType, ForeignTypeRef};
use openssl::ssl::{SslContext, SslRef};

use super::dtls::DtlsError;

/// Session id context of the legacy DTLS context; a cached session must carry the same one or
/// OpenSSL refuses to resume it.
pub const SID_CTX: &[u8] = b"holdfast-anyconnect-dtls";

/// `SSL_OP_NO_EXTENDED_MASTER_SECRET` (OpenSSL 3 ssl.h: `SSL_OP_BIT(0)`), which the openssl
/// crate does not name: the server then ignores the client's extended_master_secret extension.
/// The bit means that only from OpenSSL 3.0 on: in 1.1.1 bit 0 is the no-op
/// `SSL_OP_MICROSOFT_SESS_ID_BUG` and there is no way to turn EMS off, so a resumption of an
/// installed (non-EMS) session by an EMS-offering client would become a full handshake the
/// client cannot follow. Hence the guard: `ossl300` is set by build.rs from the version of the
/// OpenSSL headers openssl-sys built against, and building against anything older fails here
/// instead of silently setting the wrong option.
#[cfg(ossl300)]
pub const NO_EXTENDED_MASTER_SECRET: openssl::ssl::SslOptions = openssl::ssl::SslOptions::from_bits_retain(1);
#[cfg(not(ossl300))]
compile_error!(
    "holdfast's legacy DTLS needs OpenSSL >= 3.0 (SSL_OP_NO_EXTENDED_MASTER_SECRET); openssl-sys found an older OpenSSL or LibreSSL"
);

/// `OPENSSL_VERSION_NUMBER` of 3.0.0 (0xMNN00PP0).
const OPENSSL_3: u64 = 0x3000_0000;

/// The libssl loaded at run time must be 3.0 or later too: the option bit is interpreted by
/// the library, not by the headers we built against.
pub fn openssl_3_at_run_time() -> Result<(), String> {
    // `number()` is a c_long (i64 here); a negative value cannot be a real version.
    let n = u64::try_from(openssl::version::number()).unwrap_or(0);
    if n >= OPENSSL_3 {
        Ok(())
    } else {
        Err(format!(
            "legacy DTLS needs OpenSSL >= 3.0 at run time (loaded: {}): before 3.0 extended master secret cannot be turned off",
            openssl::version::version()
        ))
    }
}

/// `DTLS1_2_VERSION` (RFC 6347 §4.1: {254, 253}).
const DTLS1_2_VERSION: c_int = 0xfefd;

/// Lifetime of an installed session in the cache. A fresh one is installed for every new
/// association (each DTLS (re)try of the client), so this only needs to cover one handshake.
const SESSION_TIMEOUT_SECS: c_long = 300;

// libssl functions that openssl-sys does not declare. They are part of OpenSSL's public API
// since 1.1.0/1.1.1 and live in the libssl that openssl-sys links.
extern "C" {
    fn SSL_SESSION_new() -> *mut openssl_sys::SSL_SESSION;
    fn SSL_SESSION_set1_master_key(s: *mut openssl_sys::SSL_SESSION, key: *const c_uchar, len: usize) -> c_int;
    fn SSL_SESSION_set_cipher(s: *mut openssl_sys::SSL_SESSION, cipher: *const openssl_sys::SSL_CIPHER) -> c_int;
    fn SSL_SESSION_set1_id(s: *mut openssl_sys::SSL_SESSION, sid: *const c_uchar, len: c_uint) -> c_int;
    fn SSL_SESSION_set1_id_context(s: *mut openssl_sys::SSL_SESSION, ctx: *const c_uchar, len: c_uint) -> c_int;
    fn SSL_SESSION_set_protocol_version(s: *mut openssl_sys::SSL_SESSION, version: c_int) -> c_int;
    fn SSL_SESSION_set_timeout(s: *mut openssl_sys::SSL_SESSION, t: c_long) -> c_long;
    fn SSL_CIPHER_find(ssl: *mut openssl_sys::SSL, ptr: *const c_uchar) -> *const openssl_sys::SSL_CIPHER;
}

/// The IANA cipher suite value of a legacy cipher (RFC 5288 for the RSA GCM suites, RFC 5289
/// for ECDHE-RSA GCM, RFC 5246 Appendix A.5 for the CBC ones).
fn suite_id(c: LegacyCipher) -> [u8; 2] {
    match c {
        LegacyCipher::OcDtls12Aes256Gcm => [0x00, 0x9d],
        LegacyCipher::OcDtls12Aes128Gcm => [0x00, 0x9c],
        LegacyCipher::Dtls12EcdheRsaAes256Gcm => [0xc0, 0x30],
        LegacyCipher::Dtls12EcdheRsaAes128Gcm => [0xc0, 0x2f],
        LegacyCipher::Aes256Sha => [0x00, 0x35],
        LegacyCipher::Aes128Sha => [0x00, 0x2f],
    }
}

/// Adds to `ctx`'s server session cache a resumable DTLS 1.2 session with `session_id`,
/// `master_secret` and `cipher`, so that the client's abbreviated handshake on an `Ssl` made
/// from `ctx` succeeds. `ssl` (made from `ctx`) is only used to look the cipher up.
pub fn install_session(
    ctx: &SslContext,
    ssl: &SslRef,
    cipher: LegacyCipher,
    session_id: &[u8; 32],
    master_secret: &[u8; 48],
) -> Result<(), DtlsError> {
    openssl_3_at_run_time().map_err(DtlsError::Handshake)?;
    if cipher.is_dtls09() {
        // DTLS 0.9 (DTLS1_BAD_VER) is not enabled on the context.
        return Err(DtlsError::Cipher(cipher));
    }
    let id = suite_id(cipher);
    // SAFETY: `ssl` is a live SSL owned by the caller for the duration of the call;
    // SSL_CIPHER_find reads exactly two bytes from `id` and returns a pointer to a static
    // cipher table entry (or NULL), never something we must free.
    let c = unsafe { SSL_CIPHER_find(ssl.as_ptr(), id.as_ptr()) };
    if c.is_null() {
        return Err(DtlsError::Cipher(cipher));
    }
    // SAFETY: SSL_SESSION_new returns a new session with one reference (or NULL), which this
    // function owns and releases with SSL_SESSION_free on every path below.
    let s = unsafe { SSL_SESSION_new() };
    if s.is_null() {
        return Err(DtlsError::Ssl(ErrorStack::get()));
    }
    // SAFETY: `s` is the valid session created above; each setter copies from the given
    // pointer exactly the given length (48, 32 and SID_CTX.len() bytes, all within the slices
    // passed), `c` is a static cipher from SSL_CIPHER_find. SSL_CTX_add_session takes its own
    // reference on success, so freeing ours afterwards is correct whatever it returned; `ctx`
    // is alive for the call.
    let ok = unsafe {
        let set = SSL_SESSION_set_protocol_version(s, DTLS1_2_VERSION) == 1
            && SSL_SESSION_set1_master_key(s, master_secret.as_ptr(), master_secret.len()) == 1
            && SSL_SESSION_set_cipher(s, c) == 1
            && SSL_SESSION_set1_id(s, session_id.as_ptr(), session_id.len() as c_uint) == 1
            && SSL_SESSION_set1_id_context(s, SID_CTX.as_ptr(), SID_CTX.len() as c_uint) == 1;
        if set {
            SSL_SESSION_set_timeout(s, SESSION_TIMEOUT_SECS);
        }
        // A session with the same id from an earlier attempt is replaced.
        let added = set && openssl_sys::SSL_CTX_add_session(ctx.as_ptr(), s) == 1;
        openssl_sys::SSL_SESSION_free(s);
        added
    };
    if ok {
        Ok(())
    } else {
        Err(DtlsError::Ssl(ErrorStack::get()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io::{self, Read, Write};
    use std::sync::{Arc, Mutex};

    use openssl::ssl::{ErrorCode, Ssl, SslContextBuilder, SslMethod, SslStream, SslVerifyMode, SslVersion};

    use super::*;
    use crate::ra::dtls::{DgramQueue, DtlsKey, DtlsServer};

    /// The library loaded at run time is OpenSSL 3.0 or later, as the headers were (this
    /// module only compiles when build.rs set `ossl300`): bit 0 of the options is
    /// SSL_OP_NO_EXTENDED_MASTER_SECRET only from 3.0 on (review N7).
    #[test]
    fn built_and_running_against_openssl_3() {
        assert!(u64::try_from(openssl::version::number()).unwrap() >= OPENSSL_3, "{}", openssl::version::version());
        assert_eq!(openssl_3_at_run_time(), Ok(()));
    }

    /// A client-side datagram pipe: reads hand out one queued datagram each, writes are
    /// collected one datagram each.
    #[derive(Debug, Default)]
    struct Pipe {
        inbox: VecDeque<Vec<u8>>,
        outbox: Vec<Vec<u8>>,
    }

    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let d = self.inbox.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
            let n = d.len().min(buf.len());
            buf[..n].copy_from_slice(&d[..n]);
            Ok(n)
        }
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.outbox.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A DTLS 1.2 client built the way AnyConnect clients key legacy DTLS (anyconnect.md §4;
    /// openconnect's OpenSSL back end and Cisco's clients do the same): a session that was
    /// never negotiated, made of the master secret the client sent as X-DTLS-Master-Secret,
    /// the X-DTLS-Session-ID and the cipher the server announced, set with SSL_set_session
    /// before the ClientHello. The context keeps OpenSSL's default options, so (OpenSSL >=
    /// 1.1.0) its ClientHello carries the extended_master_secret extension (RFC 7627) even
    /// though the session has no such flag.
    fn fake_resuming_client(cipher_name: &str, suite: [u8; 2], session_id: &[u8; 32], master: &[u8; 48]) -> Ssl {
        let mut b = SslContextBuilder::new(SslMethod::dtls()).unwrap();
        b.set_min_proto_version(Some(SslVersion::DTLS1_2)).unwrap();
        b.set_max_proto_version(Some(SslVersion::DTLS1_2)).unwrap();
        b.set_cipher_list(cipher_name).unwrap();
        // A full handshake (what this test must not see) would otherwise fail on the
        // self-signed certificate and hide the difference between "resumed" and "not".
        b.set_verify(SslVerifyMode::NONE);
        let ctx = b.build();
        let ssl = Ssl::new(&ctx).unwrap();
        // SAFETY: `ssl` is alive for the whole block; the session created here is owned by
        // this block (one reference), every setter copies exactly the given lengths from the
        // arrays passed, `c` is a static cipher table entry or NULL (checked), and
        // SSL_set_session takes its own reference, so freeing ours afterwards is correct.
        unsafe {
            let c = SSL_CIPHER_find(ssl.as_ptr(), suite.as_ptr());
            assert!(!c.is_null(), "cipher {cipher_name} not found");
            let s = SSL_SESSION_new();
            assert!(!s.is_null());
            assert_eq!(SSL_SESSION_set_protocol_version(s, DTLS1_2_VERSION), 1);
            assert_eq!(SSL_SESSION_set1_master_key(s, master.as_ptr(), master.len()), 1);
            assert_eq!(SSL_SESSION_set_cipher(s, c), 1);
            assert_eq!(SSL_SESSION_set1_id(s, session_id.as_ptr(), session_id.len() as c_uint), 1);
            assert_eq!(openssl_sys::SSL_set_session(ssl.as_ptr(), s), 1);
            openssl_sys::SSL_SESSION_free(s);
        }
        ssl
    }

    /// Cisco-style legacy DTLS against an OpenSSL >= 1.1.0 client, which offers Extended
    /// Master Secret on every ClientHello: the server must still resume the installed session
    /// (abbreviated handshake, `session_reused`), and both ends must then share the keys
    /// derived from X-DTLS-Master-Secret (a record goes each way). Without
    /// SSL_OP_NO_EXTENDED_MASTER_SECRET on the legacy context OpenSSL refuses to resume a
    /// non-EMS session for an EMS ClientHello and starts a full handshake instead, which
    /// AnyConnect clients cannot follow.
    #[test]
    fn legacy_resumption_with_an_ems_offering_openssl_client() {
        let (dir, cert, key) = crate::ra::dtls::tests::test_cert("legacy-ems");
        let server = DtlsServer::new(&cert, &key).unwrap();
        for (cipher, name) in [
            (LegacyCipher::Dtls12EcdheRsaAes256Gcm, "ECDHE-RSA-AES256-GCM-SHA384"),
            (LegacyCipher::OcDtls12Aes128Gcm, "AES128-GCM-SHA256"),
        ] {
            let session_id = [0x3c_u8; 32];
            let master: [u8; 48] = std::array::from_fn(|i| i as u8 ^ 0xa5);
            let peer: std::net::SocketAddr = "192.0.2.10:40000".parse().unwrap();
            let out: Arc<Mutex<DgramQueue>> = Arc::default();
            let key = DtlsKey::Legacy { session_id, master_secret: master, cipher };
            let mut conn = server.new_conn(&key, out.clone(), peer).unwrap();

            let client = fake_resuming_client(name, suite_id(cipher), &session_id, &master);
            let mut s = SslStream::new(client, Pipe::default()).unwrap();
            let mut scratch = [0u8; 4096];
            let mut got: Vec<Vec<u8>> = Vec::new();
            let mut done = false;
            for _ in 0..20 {
                match s.connect() {
                    Ok(()) => done = true,
                    Err(e) if e.code() == ErrorCode::WANT_READ => {}
                    Err(e) => panic!("{name}: client handshake: {e}"),
                }
                for d in std::mem::take(&mut s.get_mut().outbox) {
                    conn.handle_datagram(&d, &mut scratch, |r| got.push(r.to_vec()))
                        .unwrap_or_else(|e| panic!("{name}: server: {e}"));
                }
                let mut q = out.lock().unwrap();
                for i in 0..q.len() {
                    s.get_mut().inbox.push_back(q.get(i).unwrap().1.to_vec());
                }
                q.clear();
                if done {
                    break;
                }
            }
            assert!(done, "{name}: handshake did not complete");
            assert!(
                s.ssl().session_reused(),
                "{name}: the server answered the EMS ClientHello with a full handshake instead of resuming"
            );
            // The client's Finished is in its outbox; deliver it, then a record each way.
            s.write_all(b"ping").unwrap();
            for d in std::mem::take(&mut s.get_mut().outbox) {
                conn.handle_datagram(&d, &mut scratch, |r| got.push(r.to_vec())).unwrap();
            }
            assert!(conn.is_established(), "{name}: server not established");
            assert_eq!(got, vec![b"ping".to_vec()], "{name}");
            conn.send(b"pong").unwrap();
            {
                let mut q = out.lock().unwrap();
                for i in 0..q.len() {
                    s.get_mut().inbox.push_back(q.get(i).unwrap().1.to_vec());
                }
                q.clear();
            }
            let mut buf = [0u8; 64];
            let n = match s.ssl_read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.code() == ErrorCode::WANT_READ => panic!("{name}: no reply record"),
                Err(e) => panic!("{name}: client read: {e}"),
            };
            assert_eq!(&buf[..n], b"pong");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
