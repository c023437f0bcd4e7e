//! The lab PKI made by `scripts/lab-certs` (openssl command line) loads into holdfast's
//! credential and trust-anchor types: keys from `openssl genpkey`, IP subjectAltNames, the rogue
//! CA refused. The certificates are dated "now" by the script; the test takes its wall-clock
//! time from the files' modification time so that the crate never reads the clock.

use crypto::sig::{Certificate, Credential, Identity, SigError, TrustAnchors, AUTH_DIGITAL_SIGNATURE};
use crypto::{HashAlg, SigAlg, SignatureScheme};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[test]
fn lab_certs_script_output_is_usable() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/lab-certs");
    let dir: PathBuf = std::env::temp_dir().join(format!("holdfast-lab-certs-{}", std::process::id()));
    let out = match Command::new("sh").arg(&script).arg(&dir).env_remove("DAYS").env_remove("A_IP").env_remove("B_IP").output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("cannot run {}: {e}; skipping", script.display());
            return;
        }
    };
    if !out.status.success() && Command::new("openssl").arg("version").output().is_err() {
        eprintln!("no openssl command line tool; skipping");
        return;
    }
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let f = |n: &str| dir.join(n);
    let now = std::fs::metadata(f("ca.crt")).and_then(|m| m.modified()).expect("mtime") + Duration::from_secs(60);

    let anchors = TrustAnchors::load(&f("ca.crt")).unwrap();
    for (gw, ip, other_ip) in [("gw-a", [192, 0, 2, 1], [192, 0, 2, 2]), ("gw-b", [192, 0, 2, 2], [192, 0, 2, 1])] {
        for kind in ["ecdsa", "rsa"] {
            let name = format!("{gw}-{kind}");
            let cred = Credential::load(&f(&format!("{name}.crt")), &f(&format!("{name}.key"))).unwrap_or_else(|e| panic!("{name}: {e}"));
            let cert = Certificate::from_der(&cred.certificate_der().unwrap()).unwrap();
            anchors.validate(&cert, &[], now).unwrap_or_else(|e| panic!("{name}: {e}"));
            cert.check_identity(&Identity::Ipv4(ip.into())).unwrap();
            assert!(cert.check_identity(&Identity::Ipv4(other_ip.into())).is_err());
            let scheme = cred.preferred_scheme(Some(&[HashAlg::Sha256]));
            let alg = if kind == "rsa" { SigAlg::RsaPkcs1(HashAlg::Sha256) } else { SigAlg::Ecdsa(HashAlg::Sha256) };
            assert_eq!(scheme, SignatureScheme::DigitalSignature(alg));
            let data = cred.sign_auth(scheme, b"signed octets").unwrap();
            assert_eq!(cert.verify_auth(AUTH_DIGITAL_SIGNATURE, &data, b"signed octets"), Ok(scheme));
            // Not valid 31 days later (DAYS=30 by default).
            assert!(matches!(anchors.validate(&cert, &[], now + Duration::from_secs(31 * 86_400)), Err(SigError::Untrusted(_))));
        }
    }
    let rogue = Credential::load(&f("gw-b-rogue-ecdsa.crt"), &f("gw-b-rogue-ecdsa.key")).unwrap();
    let rogue = Certificate::from_der(&rogue.certificate_der().unwrap()).unwrap();
    assert!(matches!(anchors.validate(&rogue, &[], now), Err(SigError::Untrusted(_))));
    // A key file given as the certificate, and the other way round: errors name the file.
    let e = Credential::load(&f("gw-a-ecdsa.key"), &f("gw-a-ecdsa.key")).unwrap_err();
    assert!(matches!(&e, SigError::File { path, .. } if path.ends_with("gw-a-ecdsa.key")), "{e}");
    let e = Credential::load(&f("gw-a-ecdsa.crt"), &f("gw-b-ecdsa.key")).unwrap_err();
    assert!(e.to_string().contains("does not belong"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
