//! Certificates and signatures for IKEv2 public-key authentication, over `openssl`.
//!
//! What lives here:
//! - [`Credential`]: our certificate chain and private key (RSA >= 2048 bits, ECDSA P-256/384/521),
//!   loaded from PEM files with errors that name the file;
//! - [`SignatureScheme`]: the IKEv2 AUTH methods 1 (RSA with SHA-1, RFC 7296 §3.8), 9/10/11
//!   (ECDSA with raw `r || s`, RFC 4754) and 14 (Digital Signature, RFC 7427, with the ASN.1
//!   AlgorithmIdentifier in front of the signature);
//! - [`Certificate`]: a peer's X.509 certificate; verify an AUTH payload with its public key and
//!   match an IKE identity against its subjectAltName / subject;
//! - [`TrustAnchors`]: the CA(s) of a trustpoint's `ca-file`; path validation with an
//!   `X509Store` at a wall-clock time the caller passes in (this crate never reads the clock),
//!   and the CERTREQ content (RFC 7296 §3.7);
//! - SIGNATURE_HASH_ALGORITHMS notify data (RFC 7427 §4).
//!
//! No primitive is implemented here: hashing, RSA, ECDSA and X.509 all come from OpenSSL.

use crate::HashAlg;
use openssl::bn::BigNum;
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, PKeyRef, Private};
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Signer, Verifier};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::{X509VerifyFlags, X509VerifyParam};
use openssl::x509::{X509KeyUsage, X509Name, X509StoreContext, X509};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Smallest RSA modulus accepted for our key and for a peer's (RFC 8247 §3.2, NIST SP 800-131A).
pub const MIN_RSA_BITS: u32 = 2048;

/// IKEv2 AUTH method numbers (IANA "IKEv2 Authentication Method").
pub const AUTH_RSA_SIG: u8 = 1;
pub const AUTH_ECDSA_256: u8 = 9;
pub const AUTH_ECDSA_384: u8 = 10;
pub const AUTH_ECDSA_521: u8 = 11;
pub const AUTH_DIGITAL_SIGNATURE: u8 = 14;

/// CERT/CERTREQ encoding "X.509 Certificate - Signature" (RFC 7296 §3.6).
pub const CERT_ENCODING_X509_SIGNATURE: u8 = 4;

/// Errors from loading credentials, validating certificates and checking signatures.
///
/// `File` is a configuration problem (ours); `Untrusted`, `IdentityMismatch`, `BadSignature`,
/// `MalformedSignature`, `BadCertificate` and `WeakKey` describe what a peer sent (map them to
/// AUTHENTICATION_FAILED); `KeyMismatch` and `Backend` are our bug or an impossible request.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SigError {
    /// A certificate, key or CA file could not be used; the message names the file.
    #[error("{path}: {why}")]
    File { path: String, why: String },
    /// The peer's certificate does not chain to the configured CA at the given time.
    #[error("peer certificate is not trusted: {0}")]
    Untrusted(String),
    /// Bytes that should be a DER X.509 certificate are not one.
    #[error("malformed certificate: {0}")]
    BadCertificate(String),
    /// The IKE identity the peer claims is not in its certificate.
    #[error("identity {id} does not match the certificate (subject {subject}; alt names: {alt_names})")]
    IdentityMismatch { id: String, subject: String, alt_names: String },
    /// The signature is well-formed but wrong (tampered data, wrong key).
    #[error("signature does not verify")]
    BadSignature,
    /// The AUTH data cannot be a signature of the announced kind.
    #[error("malformed signature: {0}")]
    MalformedSignature(String),
    /// A signature algorithm or AUTH method we do not accept.
    #[error("unsupported signature algorithm: {0}")]
    Unsupported(String),
    /// A key too weak or of a kind we refuse.
    #[error("unacceptable public key: {0}")]
    WeakKey(String),
    /// The key cannot produce or check this kind of signature.
    #[error("a {key} key cannot be used with {scheme}")]
    KeyMismatch { key: String, scheme: String },
    #[error("crypto backend error: {0}")]
    Backend(String),
}

impl From<openssl::error::ErrorStack> for SigError {
    fn from(e: openssl::error::ErrorStack) -> Self {
        SigError::Backend(e.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Signature schemes

/// Elliptic curves allowed for ECDSA keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    /// Length in bytes of one of `r`, `s` in the RFC 4754 encoding.
    pub fn scalar_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }
    /// The hash RFC 4754 pairs with the curve (and the one we prefer with RFC 7427).
    pub fn natural_hash(self) -> HashAlg {
        match self {
            Curve::P256 => HashAlg::Sha256,
            Curve::P384 => HashAlg::Sha384,
            Curve::P521 => HashAlg::Sha512,
        }
    }
    fn from_nid(nid: Nid) -> Option<Curve> {
        match nid {
            Nid::X9_62_PRIME256V1 => Some(Curve::P256),
            Nid::SECP384R1 => Some(Curve::P384),
            Nid::SECP521R1 => Some(Curve::P521),
            _ => None,
        }
    }
}

/// The kind of a public or private key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Rsa { bits: u32 },
    Ecdsa(Curve),
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::Rsa { bits } => write!(f, "RSA-{bits}"),
            KeyKind::Ecdsa(c) => write!(f, "ECDSA {c:?}"),
        }
    }
}

/// A signature algorithm inside RFC 7427 Digital Signature authentication (method 14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigAlg {
    /// RSASSA-PKCS1-v1_5.
    RsaPkcs1(HashAlg),
    /// RSASSA-PSS with MGF1 over the same hash and a salt as long as the hash (RFC 7427 A.4.3).
    RsaPss(HashAlg),
    /// ECDSA; the signature is the DER `Ecdsa-Sig-Value` (RFC 7427 §3, RFC 3279).
    Ecdsa(HashAlg),
}

impl SigAlg {
    pub fn hash(self) -> HashAlg {
        match self {
            SigAlg::RsaPkcs1(h) | SigAlg::RsaPss(h) | SigAlg::Ecdsa(h) => h,
        }
    }

    /// The DER AlgorithmIdentifier that precedes the signature (RFC 7427 §3, Appendix A).
    /// `None` for combinations this crate refuses (SHA-1 in method 14: RFC 8247 §3.2).
    pub fn algorithm_identifier(self) -> Option<Vec<u8>> {
        let h = hash_oid(self.hash())?;
        Some(match self {
            SigAlg::RsaPkcs1(hash) => {
                let last = match hash {
                    HashAlg::Sha256 => 0x0b,
                    HashAlg::Sha384 => 0x0c,
                    HashAlg::Sha512 => 0x0d,
                    HashAlg::Sha1 => return None,
                };
                // SEQUENCE { sha*WithRSAEncryption, NULL } (RFC 4055 §5 requires the NULL).
                der_seq(&[&der_oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, last]), &[0x05, 0x00]])
            }
            SigAlg::Ecdsa(hash) => {
                let last = match hash {
                    HashAlg::Sha256 => 0x02,
                    HashAlg::Sha384 => 0x03,
                    HashAlg::Sha512 => 0x04,
                    HashAlg::Sha1 => return None,
                };
                // SEQUENCE { ecdsa-with-SHA*, parameters absent } (RFC 5758 §3.2).
                der_seq(&[&der_oid(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, last])])
            }
            SigAlg::RsaPss(hash) => pss_identifier(h, hash.output_len(), true, true),
        })
    }

    /// Recognises an AlgorithmIdentifier received in an AUTH payload.
    pub fn from_algorithm_identifier(der: &[u8]) -> Option<SigAlg> {
        for hash in [HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512] {
            for alg in [SigAlg::RsaPkcs1(hash), SigAlg::Ecdsa(hash), SigAlg::RsaPss(hash)] {
                if alg.algorithm_identifier().as_deref() == Some(der) {
                    return Some(alg);
                }
            }
            // RFC 4055 §2.1: the hash AlgorithmIdentifiers inside PSS parameters may omit
            // the NULL, and the default trailerField may be present or not.
            let oid = hash_oid(hash)?;
            for (null, trailer) in [(false, true), (true, false), (false, false)] {
                if pss_identifier(oid, hash.output_len(), null, trailer) == der {
                    return Some(SigAlg::RsaPss(hash));
                }
            }
        }
        None
    }

    fn name(self) -> String {
        match self {
            SigAlg::RsaPkcs1(h) => format!("RSASSA-PKCS1-v1_5 with {h:?}"),
            SigAlg::RsaPss(h) => format!("RSASSA-PSS with {h:?}"),
            SigAlg::Ecdsa(h) => format!("ECDSA with {h:?}"),
        }
    }
}

/// How an AUTH payload is signed: the AUTH method and, for method 14, the algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureScheme {
    /// Method 1: RSASSA-PKCS1-v1_5 with SHA-1 (RFC 7296 §3.8; the only hash method 1 allows).
    RsaSha1,
    /// Method 9: ECDSA P-256 with SHA-256, `r || s` (RFC 4754).
    EcdsaP256Sha256,
    /// Method 10: ECDSA P-384 with SHA-384.
    EcdsaP384Sha384,
    /// Method 11: ECDSA P-521 with SHA-512.
    EcdsaP521Sha512,
    /// Method 14: Digital Signature (RFC 7427).
    DigitalSignature(SigAlg),
}

impl SignatureScheme {
    pub fn auth_method(self) -> u8 {
        match self {
            SignatureScheme::RsaSha1 => AUTH_RSA_SIG,
            SignatureScheme::EcdsaP256Sha256 => AUTH_ECDSA_256,
            SignatureScheme::EcdsaP384Sha384 => AUTH_ECDSA_384,
            SignatureScheme::EcdsaP521Sha512 => AUTH_ECDSA_521,
            SignatureScheme::DigitalSignature(_) => AUTH_DIGITAL_SIGNATURE,
        }
    }

    pub fn hash(self) -> HashAlg {
        match self {
            SignatureScheme::RsaSha1 => HashAlg::Sha1,
            SignatureScheme::EcdsaP256Sha256 => HashAlg::Sha256,
            SignatureScheme::EcdsaP384Sha384 => HashAlg::Sha384,
            SignatureScheme::EcdsaP521Sha512 => HashAlg::Sha512,
            SignatureScheme::DigitalSignature(a) => a.hash(),
        }
    }

    /// For display (`show crypto ikev2 sa detail`, logs).
    pub fn name(self) -> String {
        match self {
            SignatureScheme::RsaSha1 => "RSA signature (SHA-1)".into(),
            SignatureScheme::EcdsaP256Sha256 => "ECDSA P-256 SHA-256".into(),
            SignatureScheme::EcdsaP384Sha384 => "ECDSA P-384 SHA-384".into(),
            SignatureScheme::EcdsaP521Sha512 => "ECDSA P-521 SHA-512".into(),
            SignatureScheme::DigitalSignature(a) => format!("Digital Signature ({})", a.name()),
        }
    }

    /// Checks that a key of `kind` can make or check this signature.
    fn check_key(self, kind: KeyKind) -> Result<(), SigError> {
        let ok = match (self, kind) {
            (SignatureScheme::RsaSha1, KeyKind::Rsa { .. }) => true,
            // RFC 4754 ties each method to one curve.
            (SignatureScheme::EcdsaP256Sha256, KeyKind::Ecdsa(Curve::P256)) => true,
            (SignatureScheme::EcdsaP384Sha384, KeyKind::Ecdsa(Curve::P384)) => true,
            (SignatureScheme::EcdsaP521Sha512, KeyKind::Ecdsa(Curve::P521)) => true,
            // RFC 7427 decouples hash and curve.
            (SignatureScheme::DigitalSignature(SigAlg::Ecdsa(_)), KeyKind::Ecdsa(_)) => true,
            (SignatureScheme::DigitalSignature(SigAlg::RsaPkcs1(_) | SigAlg::RsaPss(_)), KeyKind::Rsa { .. }) => true,
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(SigError::KeyMismatch { key: kind.to_string(), scheme: self.name() })
        }
    }
}

/// Encodes the AUTH payload's "Authentication Data" for `scheme` around a raw signature
/// (RFC 7427 §3: one length octet, the AlgorithmIdentifier, then the signature).
fn auth_data(scheme: SignatureScheme, signature: Vec<u8>) -> Result<Vec<u8>, SigError> {
    match scheme {
        SignatureScheme::DigitalSignature(alg) => {
            let id = alg.algorithm_identifier().ok_or_else(|| SigError::Unsupported(alg.name()))?;
            let len = u8::try_from(id.len()).map_err(|_| SigError::Backend("AlgorithmIdentifier longer than 255".into()))?;
            let mut out = Vec::with_capacity(1 + id.len() + signature.len());
            out.push(len);
            out.extend_from_slice(&id);
            out.extend_from_slice(&signature);
            Ok(out)
        }
        _ => Ok(signature),
    }
}

/// Splits received AUTH data into (scheme, signature) for `method`.
pub fn parse_auth_data(method: u8, data: &[u8]) -> Result<(SignatureScheme, &[u8]), SigError> {
    let scheme = match method {
        AUTH_RSA_SIG => SignatureScheme::RsaSha1,
        AUTH_ECDSA_256 => SignatureScheme::EcdsaP256Sha256,
        AUTH_ECDSA_384 => SignatureScheme::EcdsaP384Sha384,
        AUTH_ECDSA_521 => SignatureScheme::EcdsaP521Sha512,
        AUTH_DIGITAL_SIGNATURE => {
            let (&len, rest) = data.split_first().ok_or_else(|| SigError::MalformedSignature("empty AUTH data".into()))?;
            let len = usize::from(len);
            if rest.len() <= len {
                return Err(SigError::MalformedSignature("AlgorithmIdentifier length beyond the AUTH data".into()));
            }
            let (id, sig) = rest.split_at(len);
            let alg = SigAlg::from_algorithm_identifier(id).ok_or_else(|| SigError::Unsupported(format!("AlgorithmIdentifier {}", hex_short(id))))?;
            return Ok((SignatureScheme::DigitalSignature(alg), sig));
        }
        other => return Err(SigError::Unsupported(format!("AUTH method {other}"))),
    };
    Ok((scheme, data))
}

// ---------------------------------------------------------------------------------------------
// SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4)

/// IANA "IKEv2 Hash Algorithms" numbers.
pub fn hash_algorithm_number(h: HashAlg) -> u16 {
    match h {
        HashAlg::Sha1 => 1,
        HashAlg::Sha256 => 2,
        HashAlg::Sha384 => 3,
        HashAlg::Sha512 => 4,
    }
}

/// The hashes we announce in SIGNATURE_HASH_ALGORITHMS. SHA-1 is left out: we never sign with
/// it in method 14 (RFC 8247 §3.2) and announcing it would invite the peer to.
pub const SUPPORTED_SIGNATURE_HASHES: [HashAlg; 3] = [HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512];

/// Notification data for SIGNATURE_HASH_ALGORITHMS: 2-octet numbers, in preference order.
pub fn encode_signature_hash_algorithms(hashes: &[HashAlg]) -> Vec<u8> {
    hashes.iter().flat_map(|h| hash_algorithm_number(*h).to_be_bytes()).collect()
}

/// Parses a received SIGNATURE_HASH_ALGORITHMS list. Unknown numbers (e.g. 5 = Identity,
/// RFC 8420) are skipped; an odd length is malformed.
pub fn parse_signature_hash_algorithms(data: &[u8]) -> Result<Vec<HashAlg>, SigError> {
    if data.len() & 1 == 1 {
        return Err(SigError::MalformedSignature("SIGNATURE_HASH_ALGORITHMS data has an odd length".into()));
    }
    Ok(data
        .chunks_exact(2)
        .filter_map(|c| match u16::from_be_bytes([c[0], c[1]]) {
            1 => Some(HashAlg::Sha1),
            2 => Some(HashAlg::Sha256),
            3 => Some(HashAlg::Sha384),
            4 => Some(HashAlg::Sha512),
            _ => None,
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Our credential

/// Our certificate chain and private key.
#[derive(Clone)]
pub struct Credential {
    /// Leaf first, then intermediates as they appear in the certificate file.
    chain: Vec<X509>,
    key: PKey<Private>,
    kind: KeyKind,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("Credential").field("subject", &self.subject()).field("key", &self.kind).finish()
    }
}

impl Credential {
    /// Loads a PEM certificate file (leaf first, optionally followed by intermediates) and a
    /// PEM private key file (PKCS#8, or traditional RSA/EC). Every error names the file.
    pub fn load(certificate_file: &Path, key_file: &Path) -> Result<Credential, SigError> {
        let cert_pem = read_file(certificate_file)?;
        let key_pem = read_file(key_file)?;
        Credential::from_pem(&cert_pem, &certificate_file.display().to_string(), &key_pem, &key_file.display().to_string())
    }

    /// Like [`Credential::load`], from PEM text; the names are only used in messages.
    pub fn from_pem(cert_pem: &[u8], cert_name: &str, key_pem: &[u8], key_name: &str) -> Result<Credential, SigError> {
        let file_err = |path: &str, why: String| SigError::File { path: path.to_string(), why };
        let chain = X509::stack_from_pem(cert_pem).map_err(|e| file_err(cert_name, format!("not a PEM certificate file ({})", first_reason(&e))))?;
        if chain.is_empty() {
            return Err(file_err(cert_name, "contains no `-----BEGIN CERTIFICATE-----` block".into()));
        }
        if looks_encrypted(key_pem) {
            return Err(file_err(key_name, "the private key is encrypted; holdfast needs an unencrypted key (protect the file with permissions, e.g. 0600)".into()));
        }
        // The callback answers any passphrase prompt with nothing, so OpenSSL never falls back
        // to reading a passphrase from the terminal.
        let key = PKey::private_key_from_pem_callback(key_pem, |_| Ok(0))
            .map_err(|e| file_err(key_name, format!("not a PEM private key ({})", first_reason(&e))))?;
        let kind = key_kind(&key).map_err(|why| file_err(key_name, why))?;
        let leaf_key = chain[0].public_key().map_err(|e| file_err(cert_name, format!("unreadable public key ({})", first_reason(&e))))?;
        if !leaf_key.public_eq(&key) {
            return Err(file_err(key_name, format!("this private key does not belong to the first certificate in {cert_name}")));
        }
        Ok(Credential { chain, key, kind })
    }

    pub fn key_kind(&self) -> KeyKind {
        self.kind
    }

    /// DER of our certificate, for the first CERT payload.
    pub fn certificate_der(&self) -> Result<Vec<u8>, SigError> {
        Ok(self.chain[0].to_der()?)
    }

    /// DER of the intermediates from the certificate file, for further CERT payloads.
    pub fn intermediates_der(&self) -> Result<Vec<Vec<u8>>, SigError> {
        self.chain[1..].iter().map(|c| c.to_der().map_err(SigError::from)).collect()
    }

    /// The certificate's subject, one-line (`CN=gw-a, O=Example`).
    pub fn subject(&self) -> String {
        name_to_string(self.chain[0].subject_name())
    }

    /// The certificate as a [`Certificate`] (e.g. to check it carries our own identity).
    pub fn certificate(&self) -> Certificate {
        Certificate { x509: self.chain[0].clone() }
    }

    /// The scheme to sign with. `peer_hashes` is the peer's SIGNATURE_HASH_ALGORITHMS list, or
    /// `None` if it sent none. With a usable list we use RFC 7427 (the curve's own hash for
    /// ECDSA, SHA-256 first for RSA); otherwise the classic method for the key (RFC 7427 §4:
    /// method 14 only when the peer announced support).
    pub fn preferred_scheme(&self, peer_hashes: Option<&[HashAlg]>) -> SignatureScheme {
        let pick = |order: &[HashAlg]| peer_hashes.and_then(|p| order.iter().copied().find(|h| p.contains(h)));
        match self.kind {
            KeyKind::Ecdsa(curve) => {
                let natural = curve.natural_hash();
                let order = [natural, HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512];
                match pick(&order) {
                    Some(h) => SignatureScheme::DigitalSignature(SigAlg::Ecdsa(h)),
                    None => match curve {
                        Curve::P256 => SignatureScheme::EcdsaP256Sha256,
                        Curve::P384 => SignatureScheme::EcdsaP384Sha384,
                        Curve::P521 => SignatureScheme::EcdsaP521Sha512,
                    },
                }
            }
            KeyKind::Rsa { .. } => match pick(&[HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512]) {
                Some(h) => SignatureScheme::DigitalSignature(SigAlg::RsaPkcs1(h)),
                None => SignatureScheme::RsaSha1,
            },
        }
    }

    /// Signs `data` (the AUTH signed octets, RFC 7296 §2.15) and returns the AUTH payload's
    /// Authentication Data for `scheme` (method = `scheme.auth_method()`).
    pub fn sign_auth(&self, scheme: SignatureScheme, data: &[u8]) -> Result<Vec<u8>, SigError> {
        scheme.check_key(self.kind)?;
        let sig = self.sign_raw(scheme, data)?;
        auth_data(scheme, sig)
    }

    fn sign_raw(&self, scheme: SignatureScheme, data: &[u8]) -> Result<Vec<u8>, SigError> {
        let md = message_digest(scheme.hash());
        let mut signer = Signer::new(md, &self.key)?;
        if let SignatureScheme::DigitalSignature(SigAlg::RsaPss(_)) = scheme {
            signer.set_rsa_padding(Padding::PKCS1_PSS)?;
            signer.set_rsa_mgf1_md(md)?;
            signer.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
        } else if matches!(self.kind, KeyKind::Rsa { .. }) {
            signer.set_rsa_padding(Padding::PKCS1)?;
        }
        let der_or_raw = signer.sign_oneshot_to_vec(data)?;
        match (scheme, self.kind) {
            (SignatureScheme::EcdsaP256Sha256 | SignatureScheme::EcdsaP384Sha384 | SignatureScheme::EcdsaP521Sha512, KeyKind::Ecdsa(curve)) => {
                // RFC 4754 §7: r and s as fixed-length big-endian integers, concatenated.
                let sig = EcdsaSig::from_der(&der_or_raw)?;
                let n = curve.scalar_len() as i32;
                let mut out = sig.r().to_vec_padded(n)?;
                out.extend_from_slice(&sig.s().to_vec_padded(n)?);
                Ok(out)
            }
            _ => Ok(der_or_raw),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A peer's certificate

/// An X.509 certificate received from a peer (or ours, for self-checks).
#[derive(Clone)]
pub struct Certificate {
    x509: X509,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate").field("subject", &self.subject()).finish()
    }
}

/// An IKE identity (ID payload) to match against a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
    Fqdn(String),
    Rfc822(String),
    /// DER of an X.500 distinguished name (ID_DER_ASN1_DN).
    DerDn(Vec<u8>),
}

/// ID payload types (RFC 7296 §3.5).
pub const ID_IPV4_ADDR: u8 = 1;
pub const ID_FQDN: u8 = 2;
pub const ID_RFC822_ADDR: u8 = 3;
pub const ID_IPV6_ADDR: u8 = 5;
pub const ID_DER_ASN1_DN: u8 = 9;

impl Identity {
    /// From an ID payload's type and data. `None` for types that cannot name a certificate
    /// holder here (ID_KEY_ID, ID_DER_ASN1_GN) or data of the wrong length.
    pub fn from_payload(id_type: u8, data: &[u8]) -> Option<Identity> {
        match id_type {
            ID_IPV4_ADDR => <[u8; 4]>::try_from(data).ok().map(|a| Identity::Ipv4(Ipv4Addr::from(a))),
            ID_IPV6_ADDR => <[u8; 16]>::try_from(data).ok().map(|a| Identity::Ipv6(Ipv6Addr::from(a))),
            ID_FQDN => std::str::from_utf8(data).ok().filter(|s| !s.is_empty()).map(|s| Identity::Fqdn(s.to_string())),
            ID_RFC822_ADDR => std::str::from_utf8(data).ok().filter(|s| !s.is_empty()).map(|s| Identity::Rfc822(s.to_string())),
            ID_DER_ASN1_DN => (!data.is_empty()).then(|| Identity::DerDn(data.to_vec())),
            _ => None,
        }
    }

    /// (ID type, data) for an ID payload.
    pub fn to_payload(&self) -> (u8, Vec<u8>) {
        match self {
            Identity::Ipv4(a) => (ID_IPV4_ADDR, a.octets().to_vec()),
            Identity::Ipv6(a) => (ID_IPV6_ADDR, a.octets().to_vec()),
            Identity::Fqdn(s) => (ID_FQDN, s.as_bytes().to_vec()),
            Identity::Rfc822(s) => (ID_RFC822_ADDR, s.as_bytes().to_vec()),
            Identity::DerDn(d) => (ID_DER_ASN1_DN, d.clone()),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Ipv4(a) => write!(f, "{a}"),
            Identity::Ipv6(a) => write!(f, "{a}"),
            Identity::Fqdn(s) | Identity::Rfc822(s) => f.write_str(&s.escape_debug().to_string()),
            Identity::DerDn(d) => match X509Name::from_der(d) {
                Ok(n) => f.write_str(&name_to_string(&n)),
                Err(_) => write!(f, "DN {}", hex_short(d)),
            },
        }
    }
}

impl Certificate {
    /// Parses a DER certificate (the data of a CERT payload with encoding 4). Trailing bytes
    /// after the certificate are refused.
    pub fn from_der(der: &[u8]) -> Result<Certificate, SigError> {
        let x509 = X509::from_der(der).map_err(|e| SigError::BadCertificate(first_reason(&e)))?;
        // `from_der` stops at the end of the first structure; a re-encoding of a different
        // length means extra bytes were appended.
        if x509.to_der().map(|d| d.len()).ok() != Some(der.len()) {
            return Err(SigError::BadCertificate("trailing bytes after the certificate".into()));
        }
        Ok(Certificate { x509 })
    }

    pub fn to_der(&self) -> Result<Vec<u8>, SigError> {
        Ok(self.x509.to_der()?)
    }

    pub fn subject(&self) -> String {
        name_to_string(self.x509.subject_name())
    }

    pub fn issuer(&self) -> String {
        name_to_string(self.x509.issuer_name())
    }

    pub fn key_kind(&self) -> Result<KeyKind, SigError> {
        let key = self.x509.public_key().map_err(|e| SigError::BadCertificate(first_reason(&e)))?;
        key_kind(&key).map_err(SigError::WeakKey)
    }

    /// Checks that `auth_data` (AUTH payload data for `method`) is a valid signature over
    /// `signed_octets` by this certificate's key. Returns the scheme the peer used.
    pub fn verify_auth(&self, method: u8, auth_data: &[u8], signed_octets: &[u8]) -> Result<SignatureScheme, SigError> {
        let (scheme, sig) = parse_auth_data(method, auth_data)?;
        let key = self.x509.public_key().map_err(|e| SigError::BadCertificate(first_reason(&e)))?;
        let kind = key_kind(&key).map_err(SigError::WeakKey)?;
        scheme.check_key(kind)?;
        if !key_usage_allows_signing(&self.x509) {
            return Err(SigError::Untrusted("the certificate's keyUsage does not allow digitalSignature".into()));
        }
        let md = message_digest(scheme.hash());
        let der_sig;
        let sig = match (scheme, kind) {
            (SignatureScheme::EcdsaP256Sha256 | SignatureScheme::EcdsaP384Sha384 | SignatureScheme::EcdsaP521Sha512, KeyKind::Ecdsa(curve)) => {
                let n = curve.scalar_len();
                if sig.len() != 2 * n {
                    return Err(SigError::MalformedSignature(format!("ECDSA r||s of {} bytes (expected {})", sig.len(), 2 * n)));
                }
                let (r, s) = sig.split_at(n);
                let es = EcdsaSig::from_private_components(BigNum::from_slice(r)?, BigNum::from_slice(s)?)?;
                der_sig = es.to_der()?;
                &der_sig[..]
            }
            _ => sig,
        };
        if sig.is_empty() {
            return Err(SigError::MalformedSignature("empty signature".into()));
        }
        let mut verifier = Verifier::new(md, &key)?;
        if let SignatureScheme::DigitalSignature(SigAlg::RsaPss(_)) = scheme {
            verifier.set_rsa_padding(Padding::PKCS1_PSS)?;
            verifier.set_rsa_mgf1_md(md)?;
            verifier.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
        } else if matches!(kind, KeyKind::Rsa { .. }) {
            verifier.set_rsa_padding(Padding::PKCS1)?;
        }
        // OpenSSL reports a malformed DER ECDSA signature or a wrong-length RSA signature as
        // an error rather than `false`; either way the peer's signature is not valid.
        match verifier.verify_oneshot(sig, signed_octets) {
            Ok(true) => Ok(scheme),
            Ok(false) | Err(_) => Err(SigError::BadSignature),
        }
    }

    /// Checks that the certificate names `id`: an IP address or FQDN/RFC822 must be a
    /// subjectAltName of that type (RFC 4945 §3.1: no matching against the subject CN), a DN
    /// must equal the subject (compared as names, not bytes).
    pub fn check_identity(&self, id: &Identity) -> Result<(), SigError> {
        let sans = self.x509.subject_alt_names();
        let sans = sans.as_ref();
        let found = match id {
            Identity::Ipv4(a) => sans.is_some_and(|s| s.iter().any(|g| g.ipaddress() == Some(&a.octets()[..]))),
            Identity::Ipv6(a) => sans.is_some_and(|s| s.iter().any(|g| g.ipaddress() == Some(&a.octets()[..]))),
            Identity::Fqdn(n) => {
                let n = n.trim_end_matches('.');
                sans.is_some_and(|s| s.iter().any(|g| g.dnsname().is_some_and(|d| d.trim_end_matches('.').eq_ignore_ascii_case(n))))
            }
            Identity::Rfc822(m) => sans.is_some_and(|s| s.iter().any(|g| g.email().is_some_and(|e| e.eq_ignore_ascii_case(m)))),
            Identity::DerDn(d) => match X509Name::from_der(d) {
                Ok(name) => name.try_cmp(self.x509.subject_name()).map(|o| o.is_eq()).unwrap_or(false),
                Err(_) => false,
            },
        };
        if found {
            return Ok(());
        }
        Err(SigError::IdentityMismatch { id: id.to_string(), subject: self.subject(), alt_names: self.alt_names() })
    }

    /// subjectAltName entries, one line (for messages).
    pub fn alt_names(&self) -> String {
        let Some(sans) = self.x509.subject_alt_names() else { return "none".into() };
        let v: Vec<String> = sans
            .iter()
            .filter_map(|g| {
                if let Some(ip) = g.ipaddress() {
                    match ip.len() {
                        4 => <[u8; 4]>::try_from(ip).ok().map(|a| format!("IP:{}", Ipv4Addr::from(a))),
                        16 => <[u8; 16]>::try_from(ip).ok().map(|a| format!("IP:{}", Ipv6Addr::from(a))),
                        _ => None,
                    }
                } else if let Some(d) = g.dnsname() {
                    Some(format!("DNS:{d}"))
                } else {
                    g.email().map(|e| format!("email:{e}"))
                }
            })
            .collect();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    }
}

/// RFC 4945 §5.1.3.2: a keyUsage extension without digitalSignature (or nonRepudiation) means
/// the key is not for signing IKE AUTH; no extension means unrestricted.
fn key_usage_allows_signing(x: &X509) -> bool {
    match x.key_usage() {
        Some(ku) => ku.intersects(X509KeyUsage::DIGITAL_SIGNATURE | X509KeyUsage::NON_REPUDIATION),
        None => true,
    }
}

// ---------------------------------------------------------------------------------------------
// Trust anchors

/// The CA certificate(s) of a trustpoint's `ca-file`.
#[derive(Clone)]
pub struct TrustAnchors {
    cas: Vec<X509>,
    name: String,
}

impl fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subjects: Vec<String> = self.cas.iter().map(|c| name_to_string(c.subject_name())).collect();
        f.debug_struct("TrustAnchors").field("file", &self.name).field("cas", &subjects).finish()
    }
}

/// A peer certificate that chained to a trust anchor at the given time.
#[derive(Debug, Clone)]
pub struct Validated {
    pub certificate: Certificate,
    /// Subjects from the leaf up to the anchor, for logs.
    pub chain_subjects: Vec<String>,
}

impl TrustAnchors {
    /// Loads one or more PEM CA certificates.
    pub fn load(ca_file: &Path) -> Result<TrustAnchors, SigError> {
        let pem = read_file(ca_file)?;
        TrustAnchors::from_pem(&pem, &ca_file.display().to_string())
    }

    pub fn from_pem(pem: &[u8], name: &str) -> Result<TrustAnchors, SigError> {
        let cas = X509::stack_from_pem(pem)
            .map_err(|e| SigError::File { path: name.to_string(), why: format!("not a PEM certificate file ({})", first_reason(&e)) })?;
        if cas.is_empty() {
            return Err(SigError::File { path: name.to_string(), why: "contains no `-----BEGIN CERTIFICATE-----` block".into() });
        }
        Ok(TrustAnchors { cas, name: name.to_string() })
    }

    /// Validates `leaf` (with the peer's `intermediates`, any order) up to one of our CAs at
    /// wall-clock time `now`: signatures, validity periods, basicConstraints of the issuers.
    /// An anchor may itself be an intermediate CA (partial chain), as an ASA trustpoint may.
    /// Revocation is not checked (no CRL/OCSP source is configured).
    pub fn validate(&self, leaf: &Certificate, intermediates: &[Certificate], now: SystemTime) -> Result<Validated, SigError> {
        let secs = now.duration_since(UNIX_EPOCH).map_err(|_| SigError::Backend("wall-clock time before 1970".into()))?.as_secs();
        let t = openssl_sys_time(secs)?;
        let mut builder = X509StoreBuilder::new()?;
        for ca in &self.cas {
            builder.add_cert(ca.clone())?;
        }
        let mut param = X509VerifyParam::new()?;
        // Not X509_STRICT: it refuses certificates without an Authority Key Identifier, which
        // CAs made with a plain `openssl x509 -req` lack.
        param.set_flags(X509VerifyFlags::PARTIAL_CHAIN)?;
        // Setting a time also makes OpenSSL use it instead of reading the clock itself.
        param.set_time(t);
        builder.set_param(&param)?;
        let store = builder.build();
        let mut chain = Stack::new()?;
        for c in intermediates {
            chain.push(c.x509.clone())?;
        }
        let mut ctx = X509StoreContext::new()?;
        let result = ctx.init(&store, &leaf.x509, &chain, |c| {
            let ok = c.verify_cert()?;
            let subjects = c.chain().map(|ch| ch.iter().map(|x| name_to_string(x.subject_name())).collect()).unwrap_or_default();
            Ok((ok, c.error(), c.error_depth(), subjects))
        })?;
        let (ok, err, depth, chain_subjects) = result;
        if !ok {
            return Err(SigError::Untrusted(format!("{} (at depth {depth}; subject {}, issuer {}; trust anchors from {})", err.error_string(), leaf.subject(), leaf.issuer(), self.name)));
        }
        Ok(Validated { certificate: leaf.clone(), chain_subjects })
    }

    /// CERTREQ Certification Authority data (RFC 7296 §3.7): the concatenated SHA-1 hashes of
    /// each anchor's DER SubjectPublicKeyInfo.
    pub fn certreq_data(&self) -> Result<Vec<u8>, SigError> {
        let mut out = Vec::with_capacity(20 * self.cas.len());
        for ca in &self.cas {
            out.extend_from_slice(&spki_sha1(ca)?);
        }
        Ok(out)
    }

    /// Whether a received CERTREQ (list of SHA-1 SPKI hashes) names one of our anchors.
    pub fn certreq_matches(&self, certreq: &[u8]) -> bool {
        let Ok(ours) = self.certreq_data() else { return false };
        certreq.chunks_exact(20).any(|h| ours.chunks_exact(20).any(|o| o == h))
    }

    pub fn subjects(&self) -> Vec<String> {
        self.cas.iter().map(|c| name_to_string(c.subject_name())).collect()
    }
}

/// SHA-1 of a certificate's DER SubjectPublicKeyInfo (RFC 7296 §3.7 CERTREQ encoding).
pub fn spki_sha1(cert: &X509) -> Result<[u8; 20], SigError> {
    let spki = cert.public_key()?.public_key_to_der()?;
    let d = crate::digest(HashAlg::Sha1, &[&spki]);
    <[u8; 20]>::try_from(d.as_slice()).map_err(|_| SigError::Backend("SHA-1 length".into()))
}

impl Certificate {
    /// SHA-1 of this certificate's SubjectPublicKeyInfo (to match a peer's CERTREQ).
    pub fn spki_sha1(&self) -> Result<[u8; 20], SigError> {
        spki_sha1(&self.x509)
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn openssl_sys_time(secs: u64) -> Result<TimeT, SigError> {
    TimeT::try_from(secs).map_err(|_| SigError::Backend("time out of range".into()))
}

/// `time_t` as the openssl crate's `set_time` takes it (64-bit on every target we build for).
type TimeT = i64;

fn read_file(path: &Path) -> Result<Vec<u8>, SigError> {
    std::fs::read(path).map_err(|e| SigError::File {
        path: path.display().to_string(),
        why: match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".into(),
            std::io::ErrorKind::PermissionDenied => "permission denied".into(),
            _ => e.to_string(),
        },
    })
}

fn looks_encrypted(pem: &[u8]) -> bool {
    let find = |needle: &[u8]| pem.windows(needle.len()).any(|w| w == needle);
    find(b"BEGIN ENCRYPTED PRIVATE KEY") || find(b"Proc-Type: 4,ENCRYPTED")
}

fn key_kind<T: openssl::pkey::HasPublic>(key: &PKeyRef<T>) -> Result<KeyKind, String> {
    match key.id() {
        Id::RSA => {
            let bits = key.bits();
            if bits < MIN_RSA_BITS {
                return Err(format!("RSA key of {bits} bits is too weak (at least {MIN_RSA_BITS})"));
            }
            Ok(KeyKind::Rsa { bits })
        }
        Id::EC => {
            let ec = key.ec_key().map_err(|e| first_reason(&e))?;
            let nid = ec.group().curve_name();
            nid.and_then(Curve::from_nid)
                .map(KeyKind::Ecdsa)
                .ok_or_else(|| format!("EC key on curve {} is not supported (use P-256, P-384 or P-521)", nid.and_then(|n| n.short_name().ok()).unwrap_or("unnamed")))
        }
        other => Err(format!("key type {other:?} is not supported (use RSA or ECDSA P-256/P-384/P-521)")),
    }
}

fn message_digest(h: HashAlg) -> MessageDigest {
    match h {
        HashAlg::Sha1 => MessageDigest::sha1(),
        HashAlg::Sha256 => MessageDigest::sha256(),
        HashAlg::Sha384 => MessageDigest::sha384(),
        HashAlg::Sha512 => MessageDigest::sha512(),
    }
}

/// DER contents of the hash OIDs (id-sha256/384/512, NIST 2.16.840.1.101.3.4.2.x).
fn hash_oid(h: HashAlg) -> Option<[u8; 9]> {
    let last = match h {
        HashAlg::Sha256 => 1,
        HashAlg::Sha384 => 2,
        HashAlg::Sha512 => 3,
        HashAlg::Sha1 => return None,
    };
    Some([0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, last])
}

/// RSASSA-PSS AlgorithmIdentifier with explicit parameters (RFC 4055 §3.1): hash, MGF1 with
/// the same hash, salt length = hash length, and (as in RFC 7427 Appendix A.4.3, although DER
/// would omit a default) trailerField 1. Peers may send any of the variants with or without the
/// hash NULLs and the trailer; `from_algorithm_identifier` accepts all four.
fn pss_identifier(hash_oid: [u8; 9], salt_len: usize, with_null: bool, with_trailer: bool) -> Vec<u8> {
    let hash_alg = if with_null { der_seq(&[&der_oid(&hash_oid), &[0x05, 0x00]]) } else { der_seq(&[&der_oid(&hash_oid)]) };
    let mgf1 = der_seq(&[&der_oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08]), &hash_alg]);
    let salt = [0x02, 0x01, salt_len as u8];
    let mut fields = vec![der_tlv(0xa0, &hash_alg), der_tlv(0xa1, &mgf1), der_tlv(0xa2, &salt)];
    if with_trailer {
        fields.push(der_tlv(0xa3, &[0x02, 0x01, 0x01]));
    }
    let refs: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
    let params = der_seq(&refs);
    der_seq(&[&der_oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a]), &params])
}

fn der_oid(content: &[u8]) -> Vec<u8> {
    der_tlv(0x06, content)
}

fn der_seq(parts: &[&[u8]]) -> Vec<u8> {
    der_tlv(0x30, &parts.concat())
}

/// Short-form DER TLV; every structure built here is shorter than 128 bytes.
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    debug_assert!(content.len() < 128);
    let mut v = Vec::with_capacity(2 + content.len());
    v.push(tag);
    v.push(content.len() as u8);
    v.extend_from_slice(content);
    v
}

fn name_to_string(n: &openssl::x509::X509NameRef) -> String {
    let parts: Vec<String> = n
        .entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let val = e.data().to_string().unwrap_or_else(|_| "?".into());
            format!("{key}={val}")
        })
        .collect();
    parts.join(", ")
}

fn first_reason(e: &openssl::error::ErrorStack) -> String {
    e.errors().first().and_then(|x| x.reason().map(str::to_string)).unwrap_or_else(|| "unrecognised data".into())
}

fn hex_short(b: &[u8]) -> String {
    let mut s: String = b.iter().take(24).map(|x| format!("{x:02x}")).collect();
    if b.len() > 24 {
        s.push_str("...");
    }
    s
}

pub mod testpki;

#[cfg(test)]
mod tests;
