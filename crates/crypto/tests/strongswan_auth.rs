//! AUTH payloads signed by real strongSwan 5.9.8 verify with holdfast's code, and holdfast
//! encodes RFC 7427 AlgorithmIdentifiers byte for byte as strongSwan does.
//!
//! The vectors in tests/data were recorded with `VECTORS=crates/crypto/tests/data
//! [RFC7427=no] scripts/lab-certs-strongswan ecdsa|rsa` (two charons authenticating each other
//! with the lab certificates; `scripts/strongswan-auth-vectors.py` reads the responder's
//! `ike = 4`/`enc = 4` log): for each side, the AUTH method and data, the octets the signature
//! covers (RFC 7296 §2.15) and the SK_p that keyed `prf(SK_p, IDx')`, plus its certificate.
//! Lab-only, throw-away keys and sessions.

use crypto::sig::{Certificate, SigError};
use crypto::{HashAlg, SigAlg, SignatureScheme};
use std::path::Path;

struct Vector {
    name: String,
    method: u8,
    auth: Vec<u8>,
    octets: Vec<u8>,
    skp: Vec<u8>,
    cert: Certificate,
}

fn load(tag: &str, side: &str) -> Vector {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let name = format!("strongswan-{tag}-{side}");
    let text = std::fs::read_to_string(dir.join(format!("{name}.txt"))).unwrap();
    let field = |k: &str| -> String {
        text.lines().find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string())).unwrap_or_else(|| panic!("{name}: no {k}"))
    };
    let pem = std::fs::read(dir.join(format!("{name}.crt"))).unwrap();
    let der = openssl::x509::X509::from_pem(&pem).unwrap().to_der().unwrap();
    Vector {
        method: field("method ").parse().unwrap(),
        auth: hex::decode(field("auth ")).unwrap(),
        octets: hex::decode(field("octets ")).unwrap(),
        skp: hex::decode(field("skp ")).unwrap(),
        cert: Certificate::from_der(&der).unwrap(),
        name,
    }
}

#[test]
fn strongswan_signatures_verify() {
    let cases = [
        ("ecdsa-rfc7427", SignatureScheme::DigitalSignature(SigAlg::Ecdsa(HashAlg::Sha256))),
        ("ecdsa-classic", SignatureScheme::EcdsaP256Sha256),
        ("rsa-rfc7427", SignatureScheme::DigitalSignature(SigAlg::RsaPkcs1(HashAlg::Sha256))),
        ("rsa-classic", SignatureScheme::RsaSha1),
    ];
    for (tag, scheme) in cases {
        let init = load(tag, "initiator");
        let resp = load(tag, "responder");
        for (v, other) in [(&init, &resp), (&resp, &init)] {
            assert_eq!(v.method, scheme.auth_method(), "{}", v.name);
            assert_eq!(v.cert.verify_auth(v.method, &v.auth, &v.octets), Ok(scheme), "{}", v.name);
            if let SignatureScheme::DigitalSignature(alg) = scheme {
                // strongSwan's AlgorithmIdentifier is exactly the one we send.
                let id = alg.algorithm_identifier().unwrap();
                assert_eq!(usize::from(v.auth[0]), id.len(), "{}", v.name);
                assert_eq!(&v.auth[1..1 + id.len()], &id[..], "{}", v.name);
            }
            // Any other octets, or the other gateway's certificate, fail.
            let mut octets = v.octets.clone();
            octets[40] ^= 0x80;
            assert_eq!(v.cert.verify_auth(v.method, &v.auth, &octets), Err(SigError::BadSignature), "{}", v.name);
            assert_eq!(other.cert.verify_auth(v.method, &v.auth, &v.octets), Err(SigError::BadSignature), "{}", v.name);
        }
    }
}

/// The octets strongSwan signs have the layout of RFC 7296 §2.15 as `ike::cert_auth::signed_octets`
/// builds it: the signer's IKE_SA_INIT message (its header's length field), the peer's nonce,
/// then prf(SK_p, IDx') with IDx' = ID_IPV4_ADDR of the signer (PRF HMAC-SHA-256 here).
#[test]
fn strongswan_signed_octets_layout() {
    for tag in ["ecdsa-rfc7427", "rsa-classic"] {
        for (side, ip, responder_spi_zero) in [("initiator", [192u8, 0, 2, 1], true), ("responder", [192, 0, 2, 2], false)] {
            let v = load(tag, side);
            let msg_len = u32::from_be_bytes(v.octets[24..28].try_into().unwrap()) as usize;
            assert_eq!(v.octets.len(), msg_len + 32 + 32, "{}: message + 32-byte nonce + PRF output", v.name);
            assert_eq!(v.octets[8..16] == [0; 8], responder_spi_zero, "{}: IKE_SA_INIT request has SPIr = 0", v.name);
            let id_body = [&[1u8, 0, 0, 0][..], &ip].concat();
            let maced = crypto::hmac(HashAlg::Sha256, &v.skp, &[&id_body]);
            assert_eq!(&v.octets[msg_len + 32..], &maced[..], "{}", v.name);
        }
    }
}

/// holdfast signing the same octets with the same key: RSASSA-PKCS1-v1_5 is deterministic, so
/// our AUTH data must equal strongSwan's byte for byte (what strongSwan accepts from itself it
/// accepts from us); ECDSA is randomised, so ours must have the same shape and verify.
#[test]
fn holdfast_signs_what_strongswan_signs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let cases = [
        ("rsa-rfc7427", SignatureScheme::DigitalSignature(SigAlg::RsaPkcs1(HashAlg::Sha256))),
        ("rsa-classic", SignatureScheme::RsaSha1),
        ("ecdsa-rfc7427", SignatureScheme::DigitalSignature(SigAlg::Ecdsa(HashAlg::Sha256))),
        ("ecdsa-classic", SignatureScheme::EcdsaP256Sha256),
    ];
    for (tag, scheme) in cases {
        for side in ["initiator", "responder"] {
            let v = load(tag, side);
            let base = dir.join(format!("strongswan-{tag}-{side}"));
            let cred = crypto::Credential::load(&base.with_extension("crt"), &base.with_extension("key")).unwrap();
            // What the engine would pick: SHA-256 was announced by strongSwan (rfc7427 runs).
            let picked = cred.preferred_scheme(if tag.ends_with("rfc7427") { Some(&[HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512]) } else { None });
            assert_eq!(picked, scheme, "{}", v.name);
            let ours = cred.sign_auth(scheme, &v.octets).unwrap();
            if tag.starts_with("rsa") {
                assert_eq!(ours, v.auth, "{}: RSA signature differs from strongSwan's", v.name);
            } else {
                assert_eq!(v.cert.verify_auth(scheme.auth_method(), &ours, &v.octets), Ok(scheme), "{}", v.name);
                let prefix = if tag.ends_with("rfc7427") { 1 + usize::from(v.auth[0]) } else { 0 };
                assert_eq!(ours[..prefix], v.auth[..prefix], "{}", v.name);
                if prefix == 0 {
                    assert_eq!((ours.len(), v.auth.len()), (64, 64), "{}: RFC 4754 r||s", v.name);
                }
            }
        }
    }
}
