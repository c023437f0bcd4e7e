//! Certificate authentication for IKE_AUTH: the pieces the engine calls, as pure functions over
//! loaded credentials and parsed payloads (RFC 7296 §2.15, §3.6-§3.8; RFC 4754; RFC 7427).
//!
//! Flow (see `docs`/the PKI note for where each call sits in the exchange):
//! - IKE_SA_INIT: both sides add a SIGNATURE_HASH_ALGORITHMS notify
//!   ([`signature_hash_algorithms_data`]) and remember the peer's ([`peer_signature_hashes`]);
//!   the responder adds a CERTREQ ([`PeerValidator::certreq_payload`]) when it wants the
//!   initiator's certificate.
//! - IKE_AUTH, sending: [`signed_octets`] over our first message, the peer's nonce and our ID,
//!   then [`LocalSigner::auth_payloads`] gives the CERT payloads and the AUTH payload.
//! - IKE_AUTH, receiving: [`PeerValidator::verify`] checks the peer's CERT chain against the
//!   trust anchors at a wall-clock time, its identity and its AUTH signature. Any error is
//!   answered with AUTHENTICATION_FAILED ([`CertAuthError::notify`]).
//!
//! Nothing here reads the clock; file reading happens only in [`CertAuth::load`], which the
//! daemon calls when it (re)loads the configuration.

use crypto::sig::{self, Certificate, Credential, Identity, SigError, SignatureScheme, TrustAnchors, CERT_ENCODING_X509_SIGNATURE};
use crypto::HashAlg;
use policy::{LocalAuth, Prf, RemoteAuth, TunnelAuth};
use std::path::Path;
use std::time::SystemTime;
use wire::ike::{AuthMethod, Identification, NotifyType, Payload};

/// CERT encoding "Hash and URL of X.509 certificate" (RFC 7296 §3.6), which we never fetch.
const CERT_ENCODING_HASH_AND_URL: u8 = 12;
/// At most this many CERT payloads are looked at (leaf + intermediates); real chains are 1-3.
const MAX_CERTS: usize = 8;

/// Why certificate authentication failed, and whose fault it is.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CertAuthError {
    /// A trustpoint file is missing or unusable: a configuration error, reported at load time.
    #[error("crypto ca trustpoint {trustpoint}: {source}")]
    Config { trustpoint: String, source: SigError },
    /// The peer did not prove its identity. Answer (or end the exchange) with
    /// AUTHENTICATION_FAILED; log the reason, never send it.
    #[error("peer authentication failed: {0}")]
    Peer(String),
    /// Signing with our own key failed: our bug (the key was checked at load time).
    #[error("signing failed: {0}")]
    Sign(SigError),
    /// [`install`] was given a tunnel the engine was not built with (our bug).
    #[error("tunnel {0} is not known to the IKE engine")]
    UnknownTunnel(String),
}

impl CertAuthError {
    /// The notify for the peer: AUTHENTICATION_FAILED for anything the peer sent (RFC 7296
    /// §2.21.2); `None` for our own problems (the exchange just fails locally).
    pub fn notify(&self) -> Option<NotifyType> {
        match self {
            CertAuthError::Peer(_) => Some(NotifyType::AuthenticationFailed),
            CertAuthError::Config { .. } | CertAuthError::Sign(_) | CertAuthError::UnknownTunnel(_) => None,
        }
    }

    fn peer(what: impl Into<String>) -> Self {
        CertAuthError::Peer(what.into())
    }
}

// ---------------------------------------------------------------------------------------------
// Loaded material per tunnel

/// The certificate material of one tunnel: a signer when we authenticate with a certificate,
/// a validator when the peer does. Cheap to clone (OpenSSL objects are reference-counted).
#[derive(Debug, Clone, Default)]
pub struct CertAuth {
    pub local: Option<LocalSigner>,
    pub remote: Option<PeerValidator>,
}

impl CertAuth {
    /// Reads the trustpoint files named by `auth`. PSK directions stay `None`.
    pub fn load(auth: &TunnelAuth) -> Result<CertAuth, CertAuthError> {
        let local = match &auth.local {
            LocalAuth::Psk(_) => None,
            LocalAuth::Certificate { trustpoint, certificate_file, key_file } => {
                let cred = Credential::load(Path::new(certificate_file), Path::new(key_file))
                    .map_err(|source| CertAuthError::Config { trustpoint: trustpoint.clone(), source })?;
                Some(LocalSigner::new(trustpoint, cred)?)
            }
        };
        let remote = match &auth.remote {
            RemoteAuth::Psk(_) => None,
            RemoteAuth::Certificate { cas } => {
                let mut pem = Vec::new();
                let mut names = Vec::new();
                for (tp, file) in cas {
                    let one = std::fs::read(file).map_err(|e| CertAuthError::Config {
                        trustpoint: tp.clone(),
                        source: SigError::File { path: file.clone(), why: e.to_string() },
                    })?;
                    // Parse each file on its own so an error names the right file.
                    TrustAnchors::from_pem(&one, file).map_err(|source| CertAuthError::Config { trustpoint: tp.clone(), source })?;
                    pem.extend_from_slice(&one);
                    pem.push(b'\n');
                    names.push(file.as_str());
                }
                let anchors = TrustAnchors::from_pem(&pem, &names.join(", "))
                    .map_err(|source| CertAuthError::Config { trustpoint: cas.first().map(|c| c.0.clone()).unwrap_or_default(), source })?;
                Some(PeerValidator::new(anchors)?)
            }
        };
        Ok(CertAuth { local, remote })
    }
}

/// The daemon's one call for certificates: loads the trustpoint files of every tunnel that
/// uses a certificate in either direction and hands them to the engine
/// ([`crate::Endpoint::set_cert_auth`]). `tunnels` is what `Config::tunnels_with_auth` returned
/// and the engine must have been built from their `policy` values. Returns how many tunnels
/// got certificate material.
///
/// Call it before the first `handle_*`, together with `Endpoint::set_wall_clock`: for a
/// certificate direction, `ResolvedTunnel::policy` carries an empty pre-shared key, and an
/// engine without the tunnel's `CertAuth` would fall back to that key.
pub fn install(endpoint: &mut crate::Endpoint, tunnels: &[policy::ResolvedTunnel]) -> Result<usize, CertAuthError> {
    let mut n = 0;
    for t in tunnels.iter().filter(|t| t.auth.uses_certificates()) {
        let material = CertAuth::load(&t.auth)?;
        if !endpoint.set_cert_auth(&t.policy.name, material) {
            return Err(CertAuthError::UnknownTunnel(t.policy.name.clone()));
        }
        n += 1;
    }
    Ok(n)
}

/// Our certificate and key, ready to sign AUTH payloads.
#[derive(Debug, Clone)]
pub struct LocalSigner {
    trustpoint: String,
    credential: Credential,
    /// DER: our certificate, then intermediates (one CERT payload each, RFC 7296 §3.6).
    certs: Vec<Vec<u8>>,
}

impl LocalSigner {
    pub fn new(trustpoint: &str, credential: Credential) -> Result<LocalSigner, CertAuthError> {
        let cfg = |source| CertAuthError::Config { trustpoint: trustpoint.to_string(), source };
        let mut certs = vec![credential.certificate_der().map_err(cfg)?];
        certs.extend(credential.intermediates_der().map_err(cfg)?);
        Ok(LocalSigner { trustpoint: trustpoint.to_string(), credential, certs })
    }

    pub fn trustpoint(&self) -> &str {
        &self.trustpoint
    }

    pub fn subject(&self) -> String {
        self.credential.subject()
    }

    /// Whether our certificate names the identity we send (e.g. our outside address as
    /// ID_IPV4_ADDR). A peer such as strongSwan refuses us otherwise; the daemon should warn at
    /// start, naming the trustpoint.
    pub fn check_own_identity(&self, id: &Identity) -> Result<(), CertAuthError> {
        self.credential
            .certificate()
            .check_identity(id)
            .map_err(|source| CertAuthError::Config { trustpoint: self.trustpoint.clone(), source })
    }

    /// The CERT payloads and the AUTH payload for our IKE_AUTH message, in that order
    /// (RFC 7296 §1.2: CERT after ID, AUTH after CERT). `peer_hashes` is the peer's
    /// SIGNATURE_HASH_ALGORITHMS from IKE_SA_INIT (`None` if it sent none); `octets` comes from
    /// [`signed_octets`].
    pub fn auth_payloads(&self, peer_hashes: Option<&[HashAlg]>, octets: &[u8]) -> Result<OwnAuth, CertAuthError> {
        let scheme = self.credential.preferred_scheme(peer_hashes);
        let data = self.credential.sign_auth(scheme, octets).map_err(CertAuthError::Sign)?;
        Ok(OwnAuth { method: AuthMethod::from(scheme.auth_method()), data, scheme, certs: self.certs.clone() })
    }
}

/// What [`LocalSigner::auth_payloads`] produced; borrow payloads from it with [`OwnAuth::cert_payloads`]
/// and [`OwnAuth::auth_payload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnAuth {
    pub method: AuthMethod,
    pub data: Vec<u8>,
    pub scheme: SignatureScheme,
    pub certs: Vec<Vec<u8>>,
}

impl OwnAuth {
    pub fn cert_payloads(&self) -> Vec<Payload<'_>> {
        self.certs.iter().map(|c| Payload::Cert { encoding: CERT_ENCODING_X509_SIGNATURE, data: c }).collect()
    }

    pub fn auth_payload(&self) -> Payload<'_> {
        Payload::Auth { method: self.method, data: &self.data }
    }
}

/// The trust anchors a peer's certificate must chain to.
#[derive(Debug, Clone)]
pub struct PeerValidator {
    anchors: TrustAnchors,
    certreq: Vec<u8>,
}

/// A peer that proved its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPeer {
    /// The identity from its ID payload, now backed by its certificate.
    pub identity: Identity,
    pub subject: String,
    pub issuer: String,
    pub scheme: SignatureScheme,
    /// Subjects from the peer's certificate up to our anchor (for `show ... detail` and logs).
    pub chain: Vec<String>,
}

impl PeerValidator {
    pub fn new(anchors: TrustAnchors) -> Result<PeerValidator, CertAuthError> {
        let certreq = anchors.certreq_data().map_err(|source| CertAuthError::Config { trustpoint: String::new(), source })?;
        Ok(PeerValidator { anchors, certreq })
    }

    /// CERTREQ for our anchors (RFC 7296 §3.7): encoding 4 and the SHA-1 hashes of their
    /// SubjectPublicKeyInfo. Responder: in the IKE_SA_INIT response; initiator: in the
    /// IKE_AUTH request. strongSwan sends its certificate only when asked (`send_cert = ifasked`).
    pub fn certreq_payload(&self) -> Payload<'_> {
        Payload::CertReq { encoding: CERT_ENCODING_X509_SIGNATURE, data: &self.certreq }
    }

    /// Checks the peer's IKE_AUTH: its ID payload `id`, its CERT payloads and its AUTH payload
    /// (all from `payloads`, the decrypted inner payloads) against `octets` (the peer's signed
    /// octets, [`signed_octets`] with the peer's message, our nonce and the peer's SK_p).
    ///
    /// `required` pins the identity the peer must claim (for a LAN-to-LAN tunnel, its address
    /// as ID_IPV4_ADDR); `None` accepts any identity its certificate proves. `now` is the
    /// wall-clock time for the certificates' validity periods.
    pub fn verify(&self, payloads: &[Payload<'_>], id: &Identification<'_>, required: Option<&Identity>, octets: &[u8], now: SystemTime) -> Result<VerifiedPeer, CertAuthError> {
        let (method, auth) = payloads
            .iter()
            .find_map(|p| match p {
                Payload::Auth { method, data } => Some((*method, *data)),
                _ => None,
            })
            .ok_or_else(|| CertAuthError::peer("no AUTH payload"))?;
        if !is_signature_method(method) {
            return Err(CertAuthError::peer(format!("peer used AUTH method {} but certificate authentication is configured", method.value())));
        }
        let identity = Identity::from_payload(id.ty.value(), id.data)
            .ok_or_else(|| CertAuthError::peer(format!("identity of type {} cannot be checked against a certificate", id.ty.value())))?;
        if let Some(req) = required {
            if !same_identity(req, &identity) {
                return Err(CertAuthError::peer(format!("peer claims identity {identity}, expected {req}")));
            }
        }
        let mut certs = Vec::new();
        let mut hash_and_url = false;
        for p in payloads {
            match p {
                Payload::Cert { encoding: CERT_ENCODING_X509_SIGNATURE, data } if certs.len() < MAX_CERTS => {
                    certs.push(Certificate::from_der(data).map_err(|e| CertAuthError::peer(e.to_string()))?);
                }
                Payload::Cert { encoding: CERT_ENCODING_HASH_AND_URL, .. } => hash_and_url = true,
                _ => {}
            }
        }
        if certs.is_empty() {
            return Err(CertAuthError::peer(if hash_and_url {
                "peer sent its certificate as Hash and URL, which holdfast does not fetch"
            } else {
                "peer sent no X.509 certificate (CERT payload, encoding 4)"
            }));
        }
        // RFC 7296 §3.6: the first certificate holds the key that signed AUTH.
        let leaf = certs.remove(0);
        leaf.check_identity(&identity).map_err(|e| CertAuthError::peer(e.to_string()))?;
        let scheme = leaf.verify_auth(method.value(), auth, octets).map_err(|e| CertAuthError::peer(format!("AUTH: {e}")))?;
        let validated = self.anchors.validate(&leaf, &certs, now).map_err(|e| CertAuthError::peer(e.to_string()))?;
        Ok(VerifiedPeer { identity, subject: leaf.subject(), issuer: leaf.issuer(), scheme, chain: validated.chain_subjects })
    }

    /// Whether a CERTREQ from the peer names one of our anchors (informational: we send our
    /// certificate whatever the peer asks for, as strongSwan and the ASA do).
    pub fn anchors(&self) -> &TrustAnchors {
        &self.anchors
    }
}

// ---------------------------------------------------------------------------------------------
// Free functions

/// The octets a signature covers (RFC 7296 §2.15):
/// `RealMessage | Nonce(peer) | prf(SK_p, IDx')`, where `IDx'` is the ID payload body (type,
/// three reserved octets, data). Initiator: its IKE_SA_INIT request, Nr, SK_pi, IDi'.
/// Responder: its IKE_SA_INIT response, Ni, SK_pr, IDr'. The same octets are checked on receipt
/// with the peer's values.
pub fn signed_octets(prf: Prf, real_message: &[u8], peer_nonce: &[u8], sk_p: &[u8], id: &Identification<'_>) -> Vec<u8> {
    let id_body = [&[id.ty.value(), 0, 0, 0][..], id.data].concat();
    let maced_id = crypto::hmac(HashAlg::from(prf), sk_p, &[&id_body]);
    [real_message, peer_nonce, &maced_id].concat()
}

/// SIGNATURE_HASH_ALGORITHMS notify data we send in IKE_SA_INIT (RFC 7427 §4).
pub fn signature_hash_algorithms_data() -> Vec<u8> {
    sig::encode_signature_hash_algorithms(&sig::SUPPORTED_SIGNATURE_HASHES)
}

/// The peer's SIGNATURE_HASH_ALGORITHMS from its IKE_SA_INIT message, `None` if it sent none
/// (or a malformed one): then RFC 7427 Digital Signature must not be used towards it.
pub fn peer_signature_hashes(payloads: &[Payload<'_>]) -> Option<Vec<HashAlg>> {
    payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.ty == NotifyType::SignatureHashAlgorithms => sig::parse_signature_hash_algorithms(n.data).ok(),
        _ => None,
    })
}

/// Whether the peer asked for a certificate (any CERTREQ with X.509 encoding).
pub fn peer_requested_certificate(payloads: &[Payload<'_>]) -> bool {
    payloads.iter().any(|p| matches!(p, Payload::CertReq { encoding: CERT_ENCODING_X509_SIGNATURE, .. }))
}

fn is_signature_method(m: AuthMethod) -> bool {
    matches!(m, AuthMethod::RsaSig | AuthMethod::Ecdsa256 | AuthMethod::Ecdsa384 | AuthMethod::Ecdsa521 | AuthMethod::DigitalSignature)
}

/// Identities compared by meaning: FQDNs case-insensitively, DNs as names.
fn same_identity(a: &Identity, b: &Identity) -> bool {
    match (a, b) {
        (Identity::Fqdn(x), Identity::Fqdn(y)) | (Identity::Rfc822(x), Identity::Rfc822(y)) => x.trim_end_matches('.').eq_ignore_ascii_case(y.trim_end_matches('.')),
        (Identity::DerDn(x), Identity::DerDn(y)) => x == y || {
            match (openssl_name(x), openssl_name(y)) {
                (Some(x), Some(y)) => x == y,
                _ => false,
            }
        },
        _ => a == b,
    }
}

/// A DN's one-line text form for comparison (through `Identity`'s Display, which parses it).
fn openssl_name(der: &[u8]) -> Option<String> {
    let s = Identity::DerDn(der.to_vec()).to_string();
    (!s.starts_with("DN ")).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto::sig::testpki::{Issued, TestCa, TestKey, Validity};
    use std::net::Ipv4Addr;
    use std::time::{Duration, UNIX_EPOCH};
    use wire::ike::IdType;

    const NOW: i64 = 1_767_225_600; // 2026-01-01
    const DAY: i64 = 86_400;
    const VALID: Validity = Validity { not_before: NOW - DAY, not_after: NOW + 365 * DAY };

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW as u64)
    }

    fn signer(tp: &str, issued: &Issued) -> LocalSigner {
        let cred = Credential::from_pem(&issued.cert_pem, "c", &issued.key_pem, "k").unwrap();
        LocalSigner::new(tp, cred).unwrap()
    }

    fn validator(ca: &TestCa) -> PeerValidator {
        PeerValidator::new(TrustAnchors::from_pem(&ca.cert_pem(), "ca.pem").unwrap()).unwrap()
    }

    fn v4(a: [u8; 4]) -> Vec<u8> {
        a.to_vec()
    }

    /// One side's IKE_AUTH as the engine would build it, run through the wire codec, and the
    /// other side's check.
    struct Side {
        msg: Vec<u8>,
        nonce: Vec<u8>,
        sk_p: Vec<u8>,
    }

    fn exchange(signer: &LocalSigner, peer_hashes: Option<&[HashAlg]>, id: &[u8], side: &Side, other_nonce: &[u8]) -> Vec<u8> {
        let idp = Identification { ty: IdType::Ipv4Addr, data: id };
        let octets = signed_octets(Prf::Sha256, &side.msg, other_nonce, &side.sk_p, &idp);
        let own = signer.auth_payloads(peer_hashes, &octets).unwrap();
        let mut payloads = vec![Payload::IdI(idp)];
        payloads.extend(own.cert_payloads());
        payloads.push(own.auth_payload());
        let (_, bytes) = wire::ike::emit_chain(&payloads);
        bytes
    }

    fn check(v: &PeerValidator, bytes: &[u8], side: &Side, other_nonce: &[u8], required: Option<&Identity>, at: SystemTime) -> Result<VerifiedPeer, CertAuthError> {
        let ps = wire::ike::parse_chain(wire::ike::PayloadType::IdI, bytes).unwrap();
        let Some(Payload::IdI(id)) = ps.first().cloned() else { panic!("no IDi") };
        let octets = signed_octets(Prf::Sha256, &side.msg, other_nonce, &side.sk_p, &id);
        v.verify(&ps, &id, required, &octets, at)
    }

    fn fixture() -> (TestCa, Issued, Issued, Side, Vec<u8>) {
        let ca = TestCa::new("Lab CA", TestKey::P256, Validity { not_before: NOW - DAY, not_after: NOW + 3650 * DAY }).unwrap();
        let a = ca.issue("gw-a", TestKey::P256, &["IP:192.0.2.1"], VALID).unwrap();
        let b = ca.issue("gw-b", TestKey::Rsa(2048), &["IP:192.0.2.2"], VALID).unwrap();
        let side_a = Side { msg: b"IKE_SA_INIT request bytes".to_vec(), nonce: vec![0xa5; 32], sk_p: vec![7; 32] };
        let nonce_b = vec![0x5a; 32];
        (ca, a, b, side_a, nonce_b)
    }

    #[test]
    fn both_directions_with_and_without_rfc7427() {
        let (ca, a, b, side_a, nonce_b) = fixture();
        let v = validator(&ca);
        let required = Identity::Ipv4(Ipv4Addr::new(192, 0, 2, 1));
        // Initiator A (ECDSA) to responder B that announced SHA-2 hashes: method 14.
        let all = sig::SUPPORTED_SIGNATURE_HASHES;
        let bytes = exchange(&signer("A", &a), Some(&all), &v4([192, 0, 2, 1]), &side_a, &nonce_b);
        let ok = check(&v, &bytes, &side_a, &nonce_b, Some(&required), now()).unwrap();
        assert_eq!(ok.identity, required);
        assert_eq!(ok.scheme, SignatureScheme::DigitalSignature(sig::SigAlg::Ecdsa(HashAlg::Sha256)));
        assert_eq!(ok.chain.len(), 2);
        // Without the notify: classic ECDSA method 9.
        let bytes = exchange(&signer("A", &a), None, &v4([192, 0, 2, 1]), &side_a, &nonce_b);
        assert_eq!(check(&v, &bytes, &side_a, &nonce_b, None, now()).unwrap().scheme, SignatureScheme::EcdsaP256Sha256);
        // Responder B (RSA): method 14 with sha256WithRSAEncryption, or method 1 (SHA-1).
        let side_b = Side { msg: b"IKE_SA_INIT response bytes".to_vec(), nonce: nonce_b.clone(), sk_p: vec![9; 48] };
        for (hashes, scheme) in [
            (Some(&all[..]), SignatureScheme::DigitalSignature(sig::SigAlg::RsaPkcs1(HashAlg::Sha256))),
            (None, SignatureScheme::RsaSha1),
        ] {
            let bytes = exchange(&signer("B", &b), hashes, &v4([192, 0, 2, 2]), &side_b, &side_a.nonce);
            let ok = check(&v, &bytes, &side_b, &side_a.nonce, Some(&Identity::Ipv4(Ipv4Addr::new(192, 0, 2, 2))), now()).unwrap();
            assert_eq!(ok.scheme, scheme);
        }
    }

    #[test]
    fn failures_are_authentication_failed() {
        let (ca, a, _, side_a, nonce_b) = fixture();
        let v = validator(&ca);
        let s = signer("A", &a);
        let good = exchange(&s, None, &v4([192, 0, 2, 1]), &side_a, &nonce_b);
        let expect_fail = |r: Result<VerifiedPeer, CertAuthError>, needle: &str| {
            let e = r.unwrap_err();
            assert_eq!(e.notify(), Some(NotifyType::AuthenticationFailed), "{e}");
            assert!(e.to_string().contains(needle), "{e} (wanted {needle})");
        };
        // Signed octets differ (another nonce, another SK_p, another message).
        expect_fail(check(&v, &good, &side_a, &[0; 32], None, now()), "signature");
        let other = Side { msg: side_a.msg.clone(), nonce: side_a.nonce.clone(), sk_p: vec![8; 32] };
        expect_fail(check(&v, &good, &other, &nonce_b, None, now()), "signature");
        // Tampered signature byte (the last byte of the chain is inside AUTH).
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        expect_fail(check(&v, &bad, &side_a, &nonce_b, None, now()), "signature");
        // A CA we do not trust.
        let other_ca = TestCa::new("Lab CA", TestKey::P256, VALID).unwrap();
        expect_fail(check(&validator(&other_ca), &good, &side_a, &nonce_b, None, now()), "not trusted");
        // Expired at the time given.
        expect_fail(check(&v, &good, &side_a, &nonce_b, None, now() + Duration::from_secs(400 * DAY as u64)), "expired");
        // An identity the certificate does not carry.
        let wrong_id = exchange(&s, None, &v4([192, 0, 2, 9]), &side_a, &nonce_b);
        expect_fail(check(&v, &wrong_id, &side_a, &nonce_b, None, now()), "does not match the certificate");
        // A valid certificate for another gateway than the tunnel's peer.
        let pinned = Identity::Ipv4(Ipv4Addr::new(192, 0, 2, 2));
        expect_fail(check(&v, &good, &side_a, &nonce_b, Some(&pinned), now()), "expected 192.0.2.2");
    }

    #[test]
    fn missing_or_wrong_payloads() {
        let (ca, a, _, side_a, nonce_b) = fixture();
        let v = validator(&ca);
        let id = Identification { ty: IdType::Ipv4Addr, data: &[192, 0, 2, 1] };
        let octets = signed_octets(Prf::Sha256, &side_a.msg, &nonce_b, &side_a.sk_p, &id);
        let own = signer("A", &a).auth_payloads(None, &octets).unwrap();
        let fail = |ps: &[Payload<'_>], needle: &str| {
            let e = v.verify(ps, &id, None, &octets, now()).unwrap_err();
            assert_eq!(e.notify(), Some(NotifyType::AuthenticationFailed));
            assert!(e.to_string().contains(needle), "{e}");
        };
        fail(&[own.auth_payload()], "no X.509 certificate");
        fail(&[Payload::Cert { encoding: 12, data: b"http://x" }, own.auth_payload()], "Hash and URL");
        fail(&own.cert_payloads(), "no AUTH");
        fail(&[own.cert_payloads()[0].clone(), Payload::Auth { method: AuthMethod::SharedKeyMic, data: &[0; 32] }], "AUTH method 2");
        fail(&[Payload::Cert { encoding: 4, data: &[0x30, 0x03, 1, 2, 3] }, own.auth_payload()], "malformed certificate");
        // The CA's certificate first: it is not the key that signed.
        let ca_der = ca.cert_der();
        let mut ps = vec![Payload::Cert { encoding: 4, data: &ca_der }];
        ps.extend(own.cert_payloads());
        ps.push(own.auth_payload());
        assert!(v.verify(&ps, &id, None, &octets, now()).is_err());
        let key_id = Identification { ty: IdType::KeyId, data: b"abc" };
        let mut ps = own.cert_payloads();
        ps.push(own.auth_payload());
        assert!(matches!(v.verify(&ps, &key_id, None, &octets, now()), Err(CertAuthError::Peer(m)) if m.contains("type 11")));
        // And the happy path with the same pieces.
        assert!(v.verify(&ps, &id, None, &octets, now()).is_ok());
    }

    #[test]
    fn intermediates_travel_in_cert_payloads() {
        let root = TestCa::new("Root", TestKey::Rsa(2048), Validity { not_before: NOW - DAY, not_after: NOW + 3650 * DAY }).unwrap();
        let int = root.intermediate("Intermediate", TestKey::P384, Validity { not_before: NOW - DAY, not_after: NOW + 3650 * DAY }).unwrap();
        let leaf = int.issue("gw-a", TestKey::P384, &["IP:192.0.2.1", "DNS:gw-a.example.net"], VALID).unwrap();
        let chain_pem = [leaf.cert_pem.clone(), int.cert_pem()].concat();
        let cred = Credential::from_pem(&chain_pem, "chain.pem", &leaf.key_pem, "k").unwrap();
        let s = LocalSigner::new("A", cred).unwrap();
        let (_, _, _, side_a, nonce_b) = fixture();
        let bytes = exchange(&s, Some(&[HashAlg::Sha384]), &v4([192, 0, 2, 1]), &side_a, &nonce_b);
        let ps = wire::ike::parse_chain(wire::ike::PayloadType::IdI, &bytes).unwrap();
        assert_eq!(ps.iter().filter(|p| matches!(p, Payload::Cert { .. })).count(), 2);
        let ok = check(&validator(&root), &bytes, &side_a, &nonce_b, None, now()).unwrap();
        assert_eq!(ok.chain.len(), 3);
        assert_eq!(ok.scheme, SignatureScheme::DigitalSignature(sig::SigAlg::Ecdsa(HashAlg::Sha384)));
        // The FQDN identity works the same way.
        assert!(s.check_own_identity(&Identity::Fqdn("GW-A.example.net".into())).is_ok());
        assert!(matches!(s.check_own_identity(&Identity::Ipv4(Ipv4Addr::new(192, 0, 2, 2))), Err(CertAuthError::Config { .. })));
    }

    #[test]
    fn signed_octets_follow_rfc7296_2_15() {
        let id = Identification { ty: IdType::Ipv4Addr, data: &[192, 0, 2, 1] };
        let got = signed_octets(Prf::Sha384, b"MSG", b"NONCE", b"skp", &id);
        let mac = crypto::hmac(HashAlg::Sha384, b"skp", &[&[1, 0, 0, 0, 192, 0, 2, 1]]);
        assert_eq!(got, [&b"MSGNONCE"[..], &mac].concat());
        assert_eq!(mac.len(), 48);
    }

    #[test]
    fn ike_sa_init_helpers() {
        let (ca, ..) = fixture();
        let v = validator(&ca);
        let Payload::CertReq { encoding, data } = v.certreq_payload() else { panic!() };
        assert_eq!(encoding, 4);
        assert_eq!(data.len(), 20);
        assert!(v.anchors().certreq_matches(data));
        let shd = signature_hash_algorithms_data();
        let ps = [Payload::notify(NotifyType::SignatureHashAlgorithms, &shd), v.certreq_payload()];
        assert_eq!(peer_signature_hashes(&ps), Some(vec![HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512]));
        assert!(peer_requested_certificate(&ps));
        assert_eq!(peer_signature_hashes(&ps[1..]), None);
        assert_eq!(peer_signature_hashes(&[Payload::notify(NotifyType::SignatureHashAlgorithms, &[0, 2, 0])]), None);
        assert!(!peer_requested_certificate(&[]));
    }

    fn tunnel_policy(name: &str) -> policy::TunnelPolicy {
        use policy::*;
        TunnelPolicy {
            name: name.into(),
            local_addr: "192.0.2.1".parse().unwrap(),
            peer_addr: "192.0.2.2".parse().unwrap(),
            outside_ifname: "o".into(),
            local_ts: vec![TrafficSelector::from_net(Ipv4Net::new(Ipv4Addr::new(10, 1, 0, 0), 24), None)],
            remote_ts: vec![TrafficSelector::from_net(Ipv4Net::new(Ipv4Addr::new(10, 2, 0, 0), 24), None)],
            ike_policies: vec![Ikev2Policy {
                priority: 1,
                encryption: vec![Encryption::AesGcm256],
                integrity: vec![Integrity::Null],
                groups: vec![DhGroup::Ecp256],
                prf: vec![Prf::Sha256],
                lifetime: Some(Duration::from_secs(600)),
            }],
            esp_proposals: vec![IpsecProposal { name: "P".into(), encryption: vec![Encryption::AesGcm256], integrity: vec![] }],
            pfs: None,
            child_lifetime: Duration::from_secs(300),
            child_lifetime_kilobytes: None,
            local_psk: Secret(String::new()),
            remote_psk: Secret(String::new()),
            dpd: None,
            nat_t_disable: false,
            force_udp_encap: false,
            connection_type: ConnectionType::Bidirectional,
        }
    }

    #[test]
    fn install_hands_material_to_the_engine() {
        let (ca, a, ..) = fixture();
        let dir = std::env::temp_dir().join(format!("holdfast-cert-install-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = |n: &str| dir.join(n).display().to_string();
        std::fs::write(f("a.crt"), &a.cert_pem).unwrap();
        std::fs::write(f("a.key"), &a.key_pem).unwrap();
        std::fs::write(f("ca.crt"), ca.cert_pem()).unwrap();
        let cert = TunnelAuth {
            local: LocalAuth::Certificate { trustpoint: "GW-A".into(), certificate_file: f("a.crt"), key_file: f("a.key") },
            remote: RemoteAuth::Certificate { cas: vec![("GW-A".into(), f("ca.crt"))] },
        };
        let psk = TunnelAuth { local: LocalAuth::Psk(policy::Secret("k".into())), remote: RemoteAuth::Psk(policy::Secret("k".into())) };
        let resolved = vec![
            policy::ResolvedTunnel { policy: tunnel_policy("MAP:10"), auth: cert.clone() },
            policy::ResolvedTunnel { policy: tunnel_policy("MAP:20"), auth: psk },
        ];
        let policies = resolved.iter().map(|t| t.policy.clone()).collect();
        let mut ep = crate::Endpoint::new(policies, policy::Ikev2Globals::default(), Box::new(crypto::SeededRandom::new(1)));
        assert_eq!(install(&mut ep, &resolved), Ok(1));
        let stranger = [policy::ResolvedTunnel { policy: tunnel_policy("OTHER:1"), auth: cert.clone() }];
        assert_eq!(install(&mut ep, &stranger), Err(CertAuthError::UnknownTunnel("OTHER:1".into())));
        let missing = [policy::ResolvedTunnel {
            policy: tunnel_policy("MAP:10"),
            auth: TunnelAuth { remote: RemoteAuth::Certificate { cas: vec![("GW-A".into(), f("gone.crt"))] }, ..cert },
        }];
        assert!(matches!(install(&mut ep, &missing), Err(CertAuthError::Config { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn load_from_trustpoint_files() {
        let (ca, a, _, side_a, nonce_b) = fixture();
        let dir = std::env::temp_dir().join(format!("holdfast-cert-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = |n: &str| dir.join(n).display().to_string();
        std::fs::write(f("a.crt"), &a.cert_pem).unwrap();
        std::fs::write(f("a.key"), &a.key_pem).unwrap();
        std::fs::write(f("ca.crt"), ca.cert_pem()).unwrap();
        let auth = TunnelAuth {
            local: LocalAuth::Certificate { trustpoint: "GW-A".into(), certificate_file: f("a.crt"), key_file: f("a.key") },
            remote: RemoteAuth::Certificate { cas: vec![("GW-A".into(), f("ca.crt"))] },
        };
        let loaded = CertAuth::load(&auth).unwrap();
        let (s, v) = (loaded.local.unwrap(), loaded.remote.unwrap());
        assert_eq!(s.trustpoint(), "GW-A");
        let bytes = exchange(&s, None, &v4([192, 0, 2, 1]), &side_a, &nonce_b);
        assert!(check(&v, &bytes, &side_a, &nonce_b, None, now()).is_ok());
        // Errors name the trustpoint and the file.
        let bad = TunnelAuth { local: LocalAuth::Certificate { trustpoint: "GW-A".into(), certificate_file: f("nope.crt"), key_file: f("a.key") }, ..auth.clone() };
        let e = CertAuth::load(&bad).unwrap_err().to_string();
        assert!(e.contains("trustpoint GW-A") && e.contains("nope.crt") && e.contains("no such file"), "{e}");
        let bad = TunnelAuth { remote: RemoteAuth::Certificate { cas: vec![("CA".into(), f("a.key"))] }, ..auth.clone() };
        let e = CertAuth::load(&bad).unwrap_err().to_string();
        assert!(e.contains("trustpoint CA") && e.contains("a.key"), "{e}");
        let psk = TunnelAuth { local: LocalAuth::Psk(policy::Secret("k".into())), remote: RemoteAuth::Psk(policy::Secret("k".into())) };
        let none = CertAuth::load(&psk).unwrap();
        assert!(none.local.is_none() && none.remote.is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
