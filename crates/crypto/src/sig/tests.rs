//! Certificates are made at test time with the openssl crate: a CA, an intermediate, leaves with
//! IP/DNS alt names, expired ones, a second unrelated CA.

use super::*;
use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::ec::{EcGroup, EcKey};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509Builder, X509NameBuilder};
use std::time::Duration;

/// 2026-01-01T00:00:00Z: the "now" of these tests.
const NOW: i64 = 1_767_225_600;
const DAY: i64 = 86_400;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW as u64)
}

#[derive(Clone, Copy)]
enum K {
    Rsa(u32),
    Ec(Nid),
}

fn key(k: K) -> PKey<Private> {
    match k {
        K::Rsa(bits) => PKey::from_rsa(Rsa::generate(bits).unwrap()).unwrap(),
        K::Ec(nid) => PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(nid).unwrap()).unwrap()).unwrap(),
    }
}

fn name(cn: &str) -> X509Name {
    let mut b = X509NameBuilder::new().unwrap();
    b.append_entry_by_text("O", "holdfast test").unwrap();
    b.append_entry_by_text("CN", cn).unwrap();
    b.build()
}

struct Spec<'a> {
    cn: &'a str,
    ca: bool,
    sans: &'a [&'a str],
    from: i64,
    to: i64,
    key_usage: Option<KeyUsage>,
}

impl<'a> Spec<'a> {
    fn leaf(cn: &'a str, sans: &'a [&'a str]) -> Self {
        Spec { cn, ca: false, sans, from: NOW - DAY, to: NOW + 365 * DAY, key_usage: None }
    }
    fn ca(cn: &'a str) -> Self {
        Spec { cn, ca: true, sans: &[], from: NOW - DAY, to: NOW + 3650 * DAY, key_usage: None }
    }
}

static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// Builds a certificate for `key`, signed by `issuer` (or self-signed).
fn cert(spec: Spec<'_>, key: &PKey<Private>, issuer: Option<(&X509, &PKey<Private>)>) -> X509 {
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    b.set_serial_number(&Asn1Integer::from_bn(&BigNum::from_u32(serial).unwrap()).unwrap()).unwrap();
    let subject = name(spec.cn);
    b.set_subject_name(&subject).unwrap();
    b.set_issuer_name(issuer.map_or(&subject, |(c, _)| c.subject_name())).unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(spec.from).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::from_unix(spec.to).unwrap()).unwrap();
    if spec.ca {
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap()).unwrap();
        b.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build().unwrap()).unwrap();
    } else {
        b.append_extension(BasicConstraints::new().build().unwrap()).unwrap();
    }
    if let Some(ku) = spec.key_usage {
        b.append_extension(ku.build().unwrap()).unwrap();
    }
    if !spec.sans.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for s in spec.sans {
            if let Some(ip) = s.strip_prefix("IP:") {
                san.ip(ip);
            } else if let Some(d) = s.strip_prefix("DNS:") {
                san.dns(d);
            } else if let Some(e) = s.strip_prefix("email:") {
                san.email(e);
            }
        }
        let ext = san.build(&b.x509v3_context(issuer.map(|(c, _)| &**c), None)).unwrap();
        b.append_extension(ext).unwrap();
    }
    let signer = issuer.map_or(key, |(_, k)| k);
    b.sign(signer, MessageDigest::sha256()).unwrap();
    b.build()
}

fn pem(certs: &[&X509]) -> Vec<u8> {
    certs.iter().flat_map(|c| c.to_pem().unwrap()).collect()
}

fn credential(c: &X509, k: &PKey<Private>) -> Credential {
    Credential::from_pem(&c.to_pem().unwrap(), "leaf.pem", &k.private_key_to_pem_pkcs8().unwrap(), "leaf.key").unwrap()
}

fn peer(c: &X509) -> Certificate {
    Certificate::from_der(&c.to_der().unwrap()).unwrap()
}

/// A CA and a leaf for 192.0.2.1 with a key of kind `k`.
fn pki(k: K) -> (X509, PKey<Private>, X509, PKey<Private>) {
    let ca_key = key(K::Ec(Nid::X9_62_PRIME256V1));
    let ca = cert(Spec::ca("Test CA"), &ca_key, None);
    let leaf_key = key(k);
    let leaf = cert(Spec::leaf("gw-a", &["IP:192.0.2.1", "DNS:gw-a.example.net"]), &leaf_key, Some((&ca, &ca_key)));
    (ca, ca_key, leaf, leaf_key)
}

const OCTETS: &[u8] = b"RealMessage1 | NonceR | prf(SK_pi, IDi')";

#[test]
fn every_scheme_round_trips_and_detects_tampering() {
    let p256 = K::Ec(Nid::X9_62_PRIME256V1);
    let p384 = K::Ec(Nid::SECP384R1);
    let p521 = K::Ec(Nid::SECP521R1);
    let rsa = K::Rsa(2048);
    let cases: Vec<(K, SignatureScheme)> = vec![
        (rsa, SignatureScheme::RsaSha1),
        (rsa, SignatureScheme::DigitalSignature(SigAlg::RsaPkcs1(HashAlg::Sha256))),
        (rsa, SignatureScheme::DigitalSignature(SigAlg::RsaPkcs1(HashAlg::Sha384))),
        (rsa, SignatureScheme::DigitalSignature(SigAlg::RsaPkcs1(HashAlg::Sha512))),
        (rsa, SignatureScheme::DigitalSignature(SigAlg::RsaPss(HashAlg::Sha256))),
        (rsa, SignatureScheme::DigitalSignature(SigAlg::RsaPss(HashAlg::Sha512))),
        (p256, SignatureScheme::EcdsaP256Sha256),
        (p384, SignatureScheme::EcdsaP384Sha384),
        (p521, SignatureScheme::EcdsaP521Sha512),
        (p256, SignatureScheme::DigitalSignature(SigAlg::Ecdsa(HashAlg::Sha256))),
        (p256, SignatureScheme::DigitalSignature(SigAlg::Ecdsa(HashAlg::Sha512))),
        (p384, SignatureScheme::DigitalSignature(SigAlg::Ecdsa(HashAlg::Sha384))),
        (p521, SignatureScheme::DigitalSignature(SigAlg::Ecdsa(HashAlg::Sha512))),
    ];
    let (_, _, other, _) = pki(K::Rsa(2048));
    let (_, _, other_ec, _) = pki(p256);
    for (k, scheme) in cases {
        let (_, _, leaf, leaf_key) = pki(k);
        let cred = credential(&leaf, &leaf_key);
        let data = cred.sign_auth(scheme, OCTETS).unwrap();
        let cert = peer(&leaf);
        assert_eq!(cert.verify_auth(scheme.auth_method(), &data, OCTETS), Ok(scheme), "{scheme:?}");
        match scheme {
            SignatureScheme::EcdsaP256Sha256 => assert_eq!(data.len(), 64),
            SignatureScheme::EcdsaP384Sha384 => assert_eq!(data.len(), 96),
            SignatureScheme::EcdsaP521Sha512 => assert_eq!(data.len(), 132),
            SignatureScheme::RsaSha1 => assert_eq!(data.len(), 256),
            SignatureScheme::DigitalSignature(alg) => {
                let id = alg.algorithm_identifier().unwrap();
                assert_eq!(usize::from(data[0]), id.len());
                assert_eq!(&data[1..1 + id.len()], &id[..]);
            }
        }
        // Different signed octets.
        let mut other_octets = OCTETS.to_vec();
        other_octets[3] ^= 1;
        assert_eq!(cert.verify_auth(scheme.auth_method(), &data, &other_octets), Err(SigError::BadSignature), "{scheme:?}");
        // A flipped bit in the signature itself (last byte: inside r||s, the DER or RSA value).
        let mut bad = data.clone();
        *bad.last_mut().unwrap() ^= 0x01;
        assert_eq!(cert.verify_auth(scheme.auth_method(), &bad, OCTETS), Err(SigError::BadSignature), "{scheme:?}");
        // A different certificate of a compatible kind.
        let wrong = if matches!(k, K::Rsa(_)) { peer(&other) } else { peer(&other_ec) };
        if !matches!(scheme, SignatureScheme::EcdsaP384Sha384 | SignatureScheme::EcdsaP521Sha512) {
            assert_eq!(wrong.verify_auth(scheme.auth_method(), &data, OCTETS), Err(SigError::BadSignature), "{scheme:?}");
        }
    }
}

#[test]
fn ecdsa_signatures_are_randomised_but_all_verify() {
    let (_, _, leaf, k) = pki(K::Ec(Nid::X9_62_PRIME256V1));
    let cred = credential(&leaf, &k);
    let a = cred.sign_auth(SignatureScheme::EcdsaP256Sha256, OCTETS).unwrap();
    let b = cred.sign_auth(SignatureScheme::EcdsaP256Sha256, OCTETS).unwrap();
    assert_ne!(a, b);
    assert!(peer(&leaf).verify_auth(AUTH_ECDSA_256, &b, OCTETS).is_ok());
}

#[test]
fn method_must_fit_the_key() {
    let (_, _, leaf384, k384) = pki(K::Ec(Nid::SECP384R1));
    let (_, _, rsa_leaf, rsa_key) = pki(K::Rsa(2048));
    let cred384 = credential(&leaf384, &k384);
    // RFC 4754: method 9 is P-256 only.
    assert!(matches!(cred384.sign_auth(SignatureScheme::EcdsaP256Sha256, OCTETS), Err(SigError::KeyMismatch { .. })));
    let sig = cred384.sign_auth(SignatureScheme::EcdsaP384Sha384, OCTETS).unwrap();
    assert!(matches!(peer(&leaf384).verify_auth(AUTH_ECDSA_256, &sig, OCTETS), Err(SigError::KeyMismatch { .. })));
    // An RSA signature presented as ECDSA, and the other way round.
    let rsa_sig = credential(&rsa_leaf, &rsa_key).sign_auth(SignatureScheme::RsaSha1, OCTETS).unwrap();
    assert!(matches!(peer(&rsa_leaf).verify_auth(AUTH_ECDSA_256, &rsa_sig, OCTETS), Err(SigError::KeyMismatch { .. })));
    assert!(matches!(peer(&leaf384).verify_auth(AUTH_RSA_SIG, &sig, OCTETS), Err(SigError::KeyMismatch { .. })));
    let ds = cred384.sign_auth(SignatureScheme::DigitalSignature(SigAlg::Ecdsa(HashAlg::Sha384)), OCTETS).unwrap();
    assert!(matches!(peer(&rsa_leaf).verify_auth(AUTH_DIGITAL_SIGNATURE, &ds, OCTETS), Err(SigError::KeyMismatch { .. })));
    // Shared-key MIC and unknown methods are not signatures.
    assert!(matches!(peer(&rsa_leaf).verify_auth(2, &rsa_sig, OCTETS), Err(SigError::Unsupported(_))));
    // SHA-1 is refused inside method 14.
    assert!(matches!(
        credential(&rsa_leaf, &rsa_key).sign_auth(SignatureScheme::DigitalSignature(SigAlg::RsaPkcs1(HashAlg::Sha1)), OCTETS),
        Err(SigError::Unsupported(_))
    ));
}

#[test]
fn malformed_auth_data_is_refused_without_panicking() {
    let (_, _, leaf, _) = pki(K::Ec(Nid::X9_62_PRIME256V1));
    let c = peer(&leaf);
    for data in [&[][..], &[0x0c], &[0x0c, 0x30, 0x0a], &[0xff; 40], &[0x00, 0x01, 0x02]] {
        assert!(c.verify_auth(AUTH_DIGITAL_SIGNATURE, data, OCTETS).is_err(), "{data:?}");
    }
    // Wrong r||s lengths for method 9.
    for n in [0usize, 63, 65, 128] {
        assert!(matches!(c.verify_auth(AUTH_ECDSA_256, &vec![1; n], OCTETS), Err(SigError::MalformedSignature(_))), "{n}");
    }
    // Right length but r = s = 0 (invalid scalars).
    assert_eq!(c.verify_auth(AUTH_ECDSA_256, &[0; 64], OCTETS), Err(SigError::BadSignature));
    // A valid identifier with an unknown OID (sha224WithRSAEncryption).
    let id = [0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0e, 0x05, 0x00];
    let mut data = vec![id.len() as u8];
    data.extend_from_slice(&id);
    data.extend_from_slice(&[0; 64]);
    assert!(matches!(c.verify_auth(AUTH_DIGITAL_SIGNATURE, &data, OCTETS), Err(SigError::Unsupported(_))));
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    hex::decode(s).unwrap()
}

/// RFC 7427 Appendix A: the AlgorithmIdentifier octets a peer sends.
#[test]
fn algorithm_identifiers_match_rfc7427_appendix_a() {
    let cases = [
        (SigAlg::RsaPkcs1(HashAlg::Sha256), "30 0d 06 09 2a 86 48 86 f7 0d 01 01 0b 05 00"),
        (SigAlg::RsaPkcs1(HashAlg::Sha384), "30 0d 06 09 2a 86 48 86 f7 0d 01 01 0c 05 00"),
        (SigAlg::RsaPkcs1(HashAlg::Sha512), "30 0d 06 09 2a 86 48 86 f7 0d 01 01 0d 05 00"),
        (SigAlg::Ecdsa(HashAlg::Sha256), "30 0a 06 08 2a 86 48 ce 3d 04 03 02"),
        (SigAlg::Ecdsa(HashAlg::Sha384), "30 0a 06 08 2a 86 48 ce 3d 04 03 03"),
        (SigAlg::Ecdsa(HashAlg::Sha512), "30 0a 06 08 2a 86 48 ce 3d 04 03 04"),
        (
            SigAlg::RsaPss(HashAlg::Sha256),
            "30 46 06 09 2a 86 48 86 f7 0d 01 01 0a 30 39 a0 0f 30 0d 06 09 60 86 48 01 65 03 04 02 01 05 00
             a1 1c 30 1a 06 09 2a 86 48 86 f7 0d 01 01 08 30 0d 06 09 60 86 48 01 65 03 04 02 01 05 00 a2 03 02 01 20
             a3 03 02 01 01",
        ),
    ];
    for (alg, hex) in cases {
        let bytes = unhex(hex);
        assert_eq!(alg.algorithm_identifier().unwrap(), bytes, "{alg:?}");
        assert_eq!(SigAlg::from_algorithm_identifier(&bytes), Some(alg));
    }
    // The strict-DER form (no default trailerField), and hash identifiers without the NULL
    // (RFC 4055 §2.1), are accepted too.
    let der = unhex(
        "30 41 06 09 2a 86 48 86 f7 0d 01 01 0a 30 34 a0 0f 30 0d 06 09 60 86 48 01 65 03 04 02 01 05 00
         a1 1c 30 1a 06 09 2a 86 48 86 f7 0d 01 01 08 30 0d 06 09 60 86 48 01 65 03 04 02 01 05 00 a2 03 02 01 20",
    );
    assert_eq!(SigAlg::from_algorithm_identifier(&der), Some(SigAlg::RsaPss(HashAlg::Sha256)));
    let no_null = unhex(
        "30 42 06 09 2a 86 48 86 f7 0d 01 01 0a 30 35 a0 0d 30 0b 06 09 60 86 48 01 65 03 04 02 01
         a1 1a 30 18 06 09 2a 86 48 86 f7 0d 01 01 08 30 0b 06 09 60 86 48 01 65 03 04 02 01 a2 03 02 01 20
         a3 03 02 01 01",
    );
    assert_eq!(SigAlg::from_algorithm_identifier(&no_null), Some(SigAlg::RsaPss(HashAlg::Sha256)));
    assert_eq!(SigAlg::RsaPkcs1(HashAlg::Sha1).algorithm_identifier(), None);
}

/// A signature made by the openssl command line tool (not by this code) verifies as RFC 7427
/// ECDSA and RSA: the DER signature format is OpenSSL's, which strongSwan's openssl plugin uses.
#[test]
fn signature_from_openssl_cli_verifies() {
    let dir = std::env::temp_dir().join(format!("holdfast-sig-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (k, alg) in [(K::Ec(Nid::X9_62_PRIME256V1), SigAlg::Ecdsa(HashAlg::Sha256)), (K::Rsa(2048), SigAlg::RsaPkcs1(HashAlg::Sha384))] {
        let (_, _, leaf, leaf_key) = pki(k);
        std::fs::write(dir.join("k.pem"), leaf_key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        std::fs::write(dir.join("data"), OCTETS).unwrap();
        let dgst = if alg.hash() == HashAlg::Sha256 { "-sha256" } else { "-sha384" };
        let out = std::process::Command::new("openssl")
            .args(["dgst", dgst, "-sign"])
            .arg(dir.join("k.pem"))
            .arg("-out")
            .arg(dir.join("sig"))
            .arg(dir.join("data"))
            .output();
        let Ok(out) = out else {
            eprintln!("openssl CLI not available; skipping the cross-check");
            return;
        };
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let sig = std::fs::read(dir.join("sig")).unwrap();
        let id = alg.algorithm_identifier().unwrap();
        let data = [&[id.len() as u8][..], &id, &sig].concat();
        assert_eq!(peer(&leaf).verify_auth(AUTH_DIGITAL_SIGNATURE, &data, OCTETS), Ok(SignatureScheme::DigitalSignature(alg)));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn preferred_scheme_follows_the_peers_hash_list() {
    let (_, _, l256, k256) = pki(K::Ec(Nid::X9_62_PRIME256V1));
    let (_, _, l384, k384) = pki(K::Ec(Nid::SECP384R1));
    let (_, _, lrsa, krsa) = pki(K::Rsa(2048));
    let (c256, c384, crsa) = (credential(&l256, &k256), credential(&l384, &k384), credential(&lrsa, &krsa));
    let all = SUPPORTED_SIGNATURE_HASHES;
    assert_eq!(c256.preferred_scheme(Some(&all)), SignatureScheme::DigitalSignature(SigAlg::Ecdsa(HashAlg::Sha256)));
    assert_eq!(c384.preferred_scheme(Some(&all)), SignatureScheme::DigitalSignature(SigAlg::Ecdsa(HashAlg::Sha384)));
    assert_eq!(c384.preferred_scheme(Some(&[HashAlg::Sha512])), SignatureScheme::DigitalSignature(SigAlg::Ecdsa(HashAlg::Sha512)));
    assert_eq!(crsa.preferred_scheme(Some(&all)), SignatureScheme::DigitalSignature(SigAlg::RsaPkcs1(HashAlg::Sha256)));
    // No notify, or only SHA-1 offered: the classic method of the key.
    assert_eq!(c256.preferred_scheme(None), SignatureScheme::EcdsaP256Sha256);
    assert_eq!(c384.preferred_scheme(Some(&[HashAlg::Sha1])), SignatureScheme::EcdsaP384Sha384);
    assert_eq!(crsa.preferred_scheme(None), SignatureScheme::RsaSha1);
}

#[test]
fn signature_hash_algorithms_notify() {
    let data = encode_signature_hash_algorithms(&SUPPORTED_SIGNATURE_HASHES);
    assert_eq!(data, [0, 2, 0, 3, 0, 4]);
    assert_eq!(parse_signature_hash_algorithms(&data).unwrap(), SUPPORTED_SIGNATURE_HASHES.to_vec());
    // strongSwan also announces Identity (5, RFC 8420); unknown values are skipped.
    assert_eq!(parse_signature_hash_algorithms(&[0, 1, 0, 5, 0, 2, 0x12, 0x34]).unwrap(), vec![HashAlg::Sha1, HashAlg::Sha256]);
    assert!(parse_signature_hash_algorithms(&[0, 2, 0]).is_err());
    assert_eq!(parse_signature_hash_algorithms(&[]).unwrap(), vec![]);
}

// --- chain validation --------------------------------------------------------------------------

#[test]
fn chain_validation() {
    let root_key = key(K::Rsa(2048));
    let root = cert(Spec::ca("Root CA"), &root_key, None);
    let int_key = key(K::Ec(Nid::SECP384R1));
    let int = cert(Spec::ca("Intermediate CA"), &int_key, Some((&root, &root_key)));
    let leaf_key = key(K::Ec(Nid::X9_62_PRIME256V1));
    let leaf = cert(Spec::leaf("gw-b", &["IP:192.0.2.2"]), &leaf_key, Some((&int, &int_key)));
    let anchors = TrustAnchors::from_pem(&pem(&[&root]), "ca.pem").unwrap();

    // With the intermediate sent by the peer.
    let v = anchors.validate(&peer(&leaf), &[peer(&int)], now()).unwrap();
    assert_eq!(v.chain_subjects.len(), 3);
    assert!(v.chain_subjects[2].contains("Root CA"), "{:?}", v.chain_subjects);
    // Without it: no path.
    let e = anchors.validate(&peer(&leaf), &[], now()).unwrap_err();
    assert!(matches!(&e, SigError::Untrusted(m) if m.contains("unable to get local issuer")), "{e}");
    // An intermediate configured as the anchor is enough (partial chain).
    let int_anchor = TrustAnchors::from_pem(&pem(&[&int]), "int.pem").unwrap();
    assert!(int_anchor.validate(&peer(&leaf), &[], now()).is_ok());

    // Wrong CA: same subject name, different key.
    let impostor_key = key(K::Rsa(2048));
    let impostor = cert(Spec::ca("Root CA"), &impostor_key, None);
    let wrong = TrustAnchors::from_pem(&pem(&[&impostor]), "other-ca.pem").unwrap();
    let e = wrong.validate(&peer(&leaf), &[peer(&int)], now()).unwrap_err();
    assert!(matches!(&e, SigError::Untrusted(m) if m.contains("other-ca.pem")), "{e}");

    // A self-signed leaf is not trusted just because it is self-signed.
    let selfsigned = cert(Spec::leaf("gw-b", &["IP:192.0.2.2"]), &leaf_key, None);
    assert!(anchors.validate(&peer(&selfsigned), &[], now()).is_err());

    // The time is the caller's: valid now, expired a year later, not yet valid a week before.
    let year = Duration::from_secs(366 * DAY as u64);
    let e = anchors.validate(&peer(&leaf), &[peer(&int)], now() + year).unwrap_err();
    assert!(matches!(&e, SigError::Untrusted(m) if m.contains("expired")), "{e}");
    let e = anchors.validate(&peer(&leaf), &[peer(&int)], now() - Duration::from_secs(7 * DAY as u64)).unwrap_err();
    assert!(matches!(&e, SigError::Untrusted(m) if m.contains("not yet valid")), "{e}");

    // A leaf (no CA flag) cannot issue.
    let sub_key = key(K::Ec(Nid::X9_62_PRIME256V1));
    let sub = cert(Spec::leaf("sneaky", &["IP:192.0.2.9"]), &sub_key, Some((&leaf, &leaf_key)));
    assert!(anchors.validate(&peer(&sub), &[peer(&leaf), peer(&int)], now()).is_err());
}

#[test]
fn expired_leaf_under_a_valid_ca() {
    let (ca, ca_key, _, _) = pki(K::Rsa(2048));
    let k = key(K::Ec(Nid::X9_62_PRIME256V1));
    let old = cert(Spec { from: NOW - 400 * DAY, to: NOW - DAY, ..Spec::leaf("gw-a", &["IP:192.0.2.1"]) }, &k, Some((&ca, &ca_key)));
    let anchors = TrustAnchors::from_pem(&pem(&[&ca]), "ca.pem").unwrap();
    let e = anchors.validate(&peer(&old), &[], now()).unwrap_err();
    assert!(matches!(&e, SigError::Untrusted(m) if m.contains("expired")), "{e}");
}

#[test]
fn certreq_hashes_name_the_anchors() {
    let (ca1, _, leaf, _) = pki(K::Rsa(2048));
    let (ca2, ..) = pki(K::Rsa(2048));
    let anchors = TrustAnchors::from_pem(&pem(&[&ca1, &ca2]), "cas.pem").unwrap();
    let data = anchors.certreq_data().unwrap();
    assert_eq!(data.len(), 40);
    // RFC 7296 §3.7: SHA-1 of the DER SubjectPublicKeyInfo; computed here with OpenSSL's own
    // SHA-1 over the key re-encoded from the certificate.
    let spki = ca1.public_key().unwrap().public_key_to_der().unwrap();
    assert_eq!(&data[..20], &openssl::sha::sha1(&spki));
    assert!(anchors.certreq_matches(&data[20..]));
    assert!(!anchors.certreq_matches(&peer(&leaf).spki_sha1().unwrap()));
    assert!(!anchors.certreq_matches(&data[..19]));
}

// --- identities --------------------------------------------------------------------------------

#[test]
fn identity_must_be_in_the_certificate() {
    let (_, _, leaf, _) = pki(K::Ec(Nid::X9_62_PRIME256V1));
    let c = peer(&leaf);
    let ok = [
        Identity::from_payload(ID_IPV4_ADDR, &[192, 0, 2, 1]).unwrap(),
        Identity::from_payload(ID_FQDN, b"GW-A.example.net").unwrap(),
        Identity::from_payload(ID_FQDN, b"gw-a.example.net.").unwrap(),
        Identity::DerDn(name("gw-a").to_der().unwrap()),
    ];
    for id in &ok {
        assert_eq!(c.check_identity(id), Ok(()), "{id}");
    }
    let bad = [
        Identity::from_payload(ID_IPV4_ADDR, &[192, 0, 2, 2]).unwrap(),
        Identity::from_payload(ID_FQDN, b"gw-b.example.net").unwrap(),
        // The CN is not a subjectAltName: RFC 4945 §3.1.
        Identity::from_payload(ID_FQDN, b"gw-a").unwrap(),
        Identity::DerDn(name("gw-b").to_der().unwrap()),
        Identity::Ipv6("2001:db8::1".parse().unwrap()),
        Identity::Rfc822("vpn@example.net".into()),
    ];
    for id in &bad {
        let e = c.check_identity(id).unwrap_err();
        assert!(matches!(&e, SigError::IdentityMismatch { alt_names, .. } if alt_names.contains("IP:192.0.2.1")), "{e}");
    }
    assert_eq!(Identity::from_payload(ID_IPV4_ADDR, &[1, 2, 3]), None);
    assert_eq!(Identity::from_payload(11, b"keyid"), None);
    assert_eq!(Identity::from_payload(ID_DER_ASN1_DN, &[]), None);
    // Garbage as a DN never matches.
    assert!(c.check_identity(&Identity::DerDn(vec![0x30, 0x03, 0xff, 0xff, 0xff])).is_err());
}

#[test]
fn key_usage_without_digital_signature_is_refused() {
    let (ca, ca_key, ..) = pki(K::Rsa(2048));
    let k = key(K::Ec(Nid::X9_62_PRIME256V1));
    let mut ku = KeyUsage::new();
    ku.key_agreement();
    let leaf = cert(Spec { key_usage: Some(ku), ..Spec::leaf("gw-a", &["IP:192.0.2.1"]) }, &k, Some((&ca, &ca_key)));
    let sig = credential(&leaf, &k).sign_auth(SignatureScheme::EcdsaP256Sha256, OCTETS).unwrap();
    assert!(matches!(peer(&leaf).verify_auth(AUTH_ECDSA_256, &sig, OCTETS), Err(SigError::Untrusted(_))));
}

// --- loading -------------------------------------------------------------------------------------

#[test]
fn credential_loading_errors_name_the_file() {
    let (ca, _, leaf, leaf_key) = pki(K::Ec(Nid::X9_62_PRIME256V1));
    let key_pem = leaf_key.private_key_to_pem_pkcs8().unwrap();
    let file_err = |r: Result<Credential, SigError>, path: &str, needle: &str| match r {
        Err(SigError::File { path: p, why }) => {
            assert_eq!(p, path);
            assert!(why.contains(needle), "{why}");
        }
        other => panic!("expected a File error, got {other:?}"),
    };
    file_err(Credential::from_pem(b"garbage", "c.pem", &key_pem, "k.pem"), "c.pem", "");
    file_err(Credential::from_pem(&leaf.to_pem().unwrap(), "c.pem", b"garbage", "k.pem"), "k.pem", "not a PEM private key");
    // Key of another certificate.
    let other = key(K::Ec(Nid::X9_62_PRIME256V1));
    file_err(Credential::from_pem(&leaf.to_pem().unwrap(), "c.pem", &other.private_key_to_pem_pkcs8().unwrap(), "k.pem"), "k.pem", "does not belong");
    // CA first in the file: the key belongs to the leaf, not the first certificate.
    file_err(Credential::from_pem(&pem(&[&ca, &leaf]), "c.pem", &key_pem, "k.pem"), "k.pem", "does not belong");
    // Encrypted key.
    let enc = leaf_key.private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_256_cbc(), b"pw").unwrap();
    file_err(Credential::from_pem(&leaf.to_pem().unwrap(), "c.pem", &enc, "k.pem"), "k.pem", "encrypted");
    // Weak RSA and an unsupported curve.
    let weak = key(K::Rsa(1024));
    let (ca2, ca2_key, ..) = pki(K::Rsa(2048));
    let weak_leaf = cert(Spec::leaf("weak", &[]), &weak, Some((&ca2, &ca2_key)));
    file_err(Credential::from_pem(&weak_leaf.to_pem().unwrap(), "c.pem", &weak.private_key_to_pem_pkcs8().unwrap(), "k.pem"), "k.pem", "too weak");
    let k1 = key(K::Ec(Nid::SECP256K1));
    let k1_leaf = cert(Spec::leaf("k1", &[]), &k1, Some((&ca2, &ca2_key)));
    file_err(Credential::from_pem(&k1_leaf.to_pem().unwrap(), "c.pem", &k1.private_key_to_pem_pkcs8().unwrap(), "k.pem"), "k.pem", "secp256k1");
    // A peer certificate with a weak key is refused at verification.
    assert!(matches!(peer(&weak_leaf).verify_auth(AUTH_RSA_SIG, &[0; 128], OCTETS), Err(SigError::WeakKey(_))));
}

#[test]
fn files_on_disk_traditional_keys_and_chains() {
    let dir = std::env::temp_dir().join(format!("holdfast-sig-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let root_key = key(K::Rsa(2048));
    let root = cert(Spec::ca("Root CA"), &root_key, None);
    let int_key = key(K::Rsa(2048));
    let int = cert(Spec::ca("Intermediate CA"), &int_key, Some((&root, &root_key)));
    let leaf_key = PKey::from_rsa(Rsa::generate(3072).unwrap()).unwrap();
    let leaf = cert(Spec::leaf("gw", &["IP:192.0.2.1"]), &leaf_key, Some((&int, &int_key)));
    std::fs::write(dir.join("chain.pem"), pem(&[&leaf, &int])).unwrap();
    // Traditional "BEGIN RSA PRIVATE KEY" form.
    std::fs::write(dir.join("key.pem"), leaf_key.rsa().unwrap().private_key_to_pem().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), root.to_pem().unwrap()).unwrap();
    let cred = Credential::load(&dir.join("chain.pem"), &dir.join("key.pem")).unwrap();
    assert_eq!(cred.key_kind(), KeyKind::Rsa { bits: 3072 });
    assert_eq!(cred.intermediates_der().unwrap().len(), 1);
    assert!(format!("{cred:?}").contains("gw") && !format!("{cred:?}").contains("PRIVATE"));
    let anchors = TrustAnchors::load(&dir.join("ca.pem")).unwrap();
    // What the peer would do with our CERT payloads.
    let leaf_cert = Certificate::from_der(&cred.certificate_der().unwrap()).unwrap();
    let ints: Vec<Certificate> = cred.intermediates_der().unwrap().iter().map(|d| Certificate::from_der(d).unwrap()).collect();
    anchors.validate(&leaf_cert, &ints, now()).unwrap();
    let missing = dir.join("nope.pem");
    assert_eq!(
        Credential::load(&missing, &dir.join("key.pem")).unwrap_err(),
        SigError::File { path: missing.display().to_string(), why: "no such file".into() }
    );
    assert!(matches!(TrustAnchors::load(&dir.join("key.pem")), Err(SigError::File { .. })));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn certificate_der_with_trailing_bytes_is_refused() {
    let (_, _, leaf, _) = pki(K::Ec(Nid::X9_62_PRIME256V1));
    let mut der = leaf.to_der().unwrap();
    der.push(0);
    assert!(matches!(Certificate::from_der(&der), Err(SigError::BadCertificate(_))));
    assert!(matches!(Certificate::from_der(&der[..10]), Err(SigError::BadCertificate(_))));
    assert!(matches!(Certificate::from_der(&[]), Err(SigError::BadCertificate(_))));
}

/// Mutated AUTH data, identifiers and certificates (bit flips, truncations, random lengths)
/// never panic and never verify. A small xorshift keeps the test deterministic.
#[test]
fn mutated_peer_input_never_panics_or_verifies() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (_, _, ec_leaf, ec_key) = pki(K::Ec(Nid::X9_62_PRIME256V1));
    let (_, _, rsa_leaf, rsa_key) = pki(K::Rsa(2048));
    let samples = [
        (peer(&ec_leaf), credential(&ec_leaf, &ec_key).sign_auth(SignatureScheme::DigitalSignature(SigAlg::Ecdsa(HashAlg::Sha256)), OCTETS).unwrap(), AUTH_DIGITAL_SIGNATURE),
        (peer(&ec_leaf), credential(&ec_leaf, &ec_key).sign_auth(SignatureScheme::EcdsaP256Sha256, OCTETS).unwrap(), AUTH_ECDSA_256),
        (peer(&rsa_leaf), credential(&rsa_leaf, &rsa_key).sign_auth(SignatureScheme::DigitalSignature(SigAlg::RsaPss(HashAlg::Sha384)), OCTETS).unwrap(), AUTH_DIGITAL_SIGNATURE),
        (peer(&rsa_leaf), credential(&rsa_leaf, &rsa_key).sign_auth(SignatureScheme::RsaSha1, OCTETS).unwrap(), AUTH_RSA_SIG),
    ];
    for (cert, good, method) in &samples {
        for _ in 0..300 {
            let mut m = good.clone();
            match rnd() % 4 {
                0 => {
                    let i = (rnd() as usize) % m.len();
                    m[i] ^= 1 << (rnd() % 8);
                }
                1 => m.truncate((rnd() as usize) % m.len()),
                2 => m[0] = rnd() as u8,
                _ => m.extend((0..rnd() % 40).map(|_| rnd() as u8)),
            }
            if m == *good {
                continue;
            }
            let r = cert.verify_auth(*method, &m, OCTETS);
            assert!(r.is_err(), "mutation verified: {m:02x?}");
            // Any method number with any data.
            let _ = cert.verify_auth(rnd() as u8, &m, OCTETS);
        }
    }
    let der = ec_leaf.to_der().unwrap();
    for _ in 0..300 {
        let mut d = der.clone();
        let i = (rnd() as usize) % d.len();
        d[i] = rnd() as u8;
        d.truncate(d.len() - (rnd() as usize) % 3);
        if let Ok(c) = Certificate::from_der(&d) {
            let _ = c.check_identity(&Identity::Ipv4(Ipv4Addr::new(192, 0, 2, 1)));
            let _ = c.verify_auth(AUTH_ECDSA_256, &samples[1].1, OCTETS);
        }
    }
    for _ in 0..300 {
        let d: Vec<u8> = (0..rnd() % 64).map(|_| rnd() as u8).collect();
        let _ = parse_signature_hash_algorithms(&d);
        let _ = Identity::from_payload(rnd() as u8, &d).map(|id| id.to_string());
        let _ = SigAlg::from_algorithm_identifier(&d);
    }
}
