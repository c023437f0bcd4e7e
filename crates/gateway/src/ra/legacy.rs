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
