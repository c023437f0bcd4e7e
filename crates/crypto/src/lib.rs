//! Cryptographic primitives for holdfast, as thin wrappers over `ring` and `openssl`.
//!
//! Nothing here implements a primitive: AES-GCM, HMAC and SHA come from `ring` (fastest here,
//! see shared/reference/ipsec-peer.md §3); AES-GCM-192 (absent from `ring`), AES-CBC and all
//! Diffie-Hellman groups come from `openssl`. What this crate adds is the IKEv2/ESP-facing
//! shape: the wire encodings of public values and shared secrets (RFC 7296 §3.4, RFC 5903 §7,
//! RFC 8031 §2), validation of a peer's public value, and in-place, allocation-free cipher
//! calls for the ESP data path. [`sig`] adds certificates and IKEv2 AUTH signatures (RSA and
//! ECDSA over OpenSSL, RFC 7296 §2.15, RFC 4754, RFC 7427).

mod cipher;
mod dh;
mod mac;
mod random;
pub mod sig;
pub mod password;

pub use cipher::{AesCbc, AesGcm, GCM_NONCE_LEN, GCM_TAG_LEN};
pub use dh::{public_value_len, shared_secret_len, DhPrivate};
pub use mac::{digest, hmac, HashAlg, Hmac};
pub use random::{OsRandom, Random, SeededRandom};
pub use sig::{Certificate, Credential, Identity, SigAlg, SigError, SignatureScheme, TrustAnchors};

/// Errors from this crate. None of them carries key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// A key of a length the algorithm does not take (our bug or a bad KEYMAT split).
    #[error("invalid key length {got} (expected one of {expected:?})")]
    InvalidKeyLength { got: usize, expected: &'static [usize] },
    /// Input of a length the operation cannot process (e.g. CBC data not a block multiple).
    #[error("invalid input length {0}")]
    InvalidLength(usize),
    /// The peer's Diffie-Hellman public value is malformed or outside the group.
    #[error("invalid peer public value for DH group {group}: {why}")]
    InvalidPeerPublic { group: u16, why: &'static str },
    /// The AEAD tag did not verify (tampered or wrong key).
    #[error("authentication tag mismatch")]
    AuthFailed,
    /// The backend library failed (should not happen with valid input).
    #[error("crypto backend error: {0}")]
    Backend(String),
}

impl From<openssl::error::ErrorStack> for CryptoError {
    fn from(e: openssl::error::ErrorStack) -> Self {
        CryptoError::Backend(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    /// SA and IKE state moves between threads in the daemon; keep the wrappers Send + Sync.
    #[test]
    fn wrappers_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<super::AesGcm>();
        check::<super::AesCbc>();
        check::<super::Hmac>();
        check::<super::DhPrivate>();
        fn send<T: Send>() {}
        send::<Box<dyn super::Random>>();
    }
}
