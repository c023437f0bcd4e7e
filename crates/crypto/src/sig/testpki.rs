//! A throw-away PKI for tests, simulations and lab fixtures: a CA that issues leaf certificates
//! with IP/DNS subjectAltNames and chosen validity, all made by OpenSSL at run time (no
//! certificate files in the repository, nothing that expires on its own).
//!
//! Not for production: keys are generated without any care for storage.

use super::SigError;
use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509Builder, X509NameBuilder, X509};
use std::sync::atomic::{AtomicU32, Ordering};

/// Key kinds a test certificate can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestKey {
    Rsa(u32),
    P256,
    P384,
    P521,
}

/// Validity window in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

/// A certificate authority (self-signed, or an intermediate issued by another `TestCa`).
pub struct TestCa {
    cert: X509,
    key: PKey<Private>,
}

/// A PEM certificate and its PEM (PKCS#8) private key.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub cert_der: Vec<u8>,
}

static SERIAL: AtomicU32 = AtomicU32::new(1);

impl TestCa {
    pub fn new(cn: &str, key: TestKey, validity: Validity) -> Result<TestCa, SigError> {
        let key = generate(key)?;
        let cert = build(cn, &key, None, true, &[], validity)?;
        Ok(TestCa { cert, key })
    }

    /// An intermediate CA under this one.
    pub fn intermediate(&self, cn: &str, key: TestKey, validity: Validity) -> Result<TestCa, SigError> {
        let key = generate(key)?;
        let cert = build(cn, &key, Some((&self.cert, &self.key)), true, &[], validity)?;
        Ok(TestCa { cert, key })
    }

    /// A leaf certificate. `sans` entries are `IP:a.b.c.d`, `DNS:name` or `email:addr`.
    pub fn issue(&self, cn: &str, key: TestKey, sans: &[&str], validity: Validity) -> Result<Issued, SigError> {
        let key = generate(key)?;
        let cert = build(cn, &key, Some((&self.cert, &self.key)), false, sans, validity)?;
        Ok(Issued { cert_pem: cert.to_pem()?, key_pem: key.private_key_to_pem_pkcs8()?, cert_der: cert.to_der()? })
    }

    pub fn cert_pem(&self) -> Vec<u8> {
        self.cert.to_pem().unwrap_or_default()
    }

    pub fn cert_der(&self) -> Vec<u8> {
        self.cert.to_der().unwrap_or_default()
    }
}

fn generate(k: TestKey) -> Result<PKey<Private>, SigError> {
    let ec = |nid: Nid| -> Result<PKey<Private>, SigError> {
        let group = EcGroup::from_curve_name(nid)?;
        Ok(PKey::from_ec_key(EcKey::generate(&group)?)?)
    };
    match k {
        TestKey::Rsa(bits) => Ok(PKey::from_rsa(Rsa::generate(bits)?)?),
        TestKey::P256 => ec(Nid::X9_62_PRIME256V1),
        TestKey::P384 => ec(Nid::SECP384R1),
        TestKey::P521 => ec(Nid::SECP521R1),
    }
}

fn build(cn: &str, key: &PKey<Private>, issuer: Option<(&X509, &PKey<Private>)>, ca: bool, sans: &[&str], v: Validity) -> Result<X509, SigError> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("O", "holdfast test")?;
    name.append_entry_by_text("CN", cn)?;
    let name = name.build();
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    let serial = BigNum::from_u32(serial)?;
    let serial = Asn1Integer::from_bn(&serial)?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(issuer.map_or(&*name, |(c, _)| c.subject_name()))?;
    b.set_pubkey(key)?;
    let not_before = Asn1Time::from_unix(v.not_before)?;
    let not_after = Asn1Time::from_unix(v.not_after)?;
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    if ca {
        b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
        b.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build()?)?;
    } else {
        b.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
    }
    if !sans.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for s in sans {
            if let Some(ip) = s.strip_prefix("IP:") {
                san.ip(ip);
            } else if let Some(d) = s.strip_prefix("DNS:") {
                san.dns(d);
            } else if let Some(e) = s.strip_prefix("email:") {
                san.email(e);
            }
        }
        let ext = san.build(&b.x509v3_context(issuer.map(|(c, _)| &**c), None))?;
        b.append_extension(ext)?;
    }
    b.sign(issuer.map_or(key, |(_, k)| k), MessageDigest::sha256())?;
    Ok(b.build())
}
