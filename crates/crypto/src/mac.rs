//! Hashes and HMAC (ring).

use ring::{digest as rd, hmac as rh};

/// Hash functions used as IKE PRF / integrity and ESP integrity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlg {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    /// Full digest / HMAC output length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// The hash behind an integrity transform; `None` for `Integrity::Null` (AEAD).
    pub fn from_integrity(i: policy::Integrity) -> Option<HashAlg> {
        Some(match i {
            policy::Integrity::Null => return None,
            policy::Integrity::Sha1 => HashAlg::Sha1,
            policy::Integrity::Sha256 => HashAlg::Sha256,
            policy::Integrity::Sha384 => HashAlg::Sha384,
            policy::Integrity::Sha512 => HashAlg::Sha512,
        })
    }

    /// Truncated ICV length for an integrity transform: HMAC-SHA1-96 (RFC 2404),
    /// HMAC-SHA2-N-N/2 (RFC 4868 §2.3); 0 for `Null`.
    pub fn integrity_icv_len(i: policy::Integrity) -> usize {
        match i {
            policy::Integrity::Null => 0,
            policy::Integrity::Sha1 => 12,
            policy::Integrity::Sha256 => 16,
            policy::Integrity::Sha384 => 24,
            policy::Integrity::Sha512 => 32,
        }
    }

    fn hmac_alg(self) -> rh::Algorithm {
        match self {
            // SHA-1 is still mandatory in HMAC-SHA1-96 (RFC 8221 keeps it as MUST-) and as
            // PRF_HMAC_SHA1; HMAC does not depend on SHA-1's collision resistance.
            HashAlg::Sha1 => rh::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            HashAlg::Sha256 => rh::HMAC_SHA256,
            HashAlg::Sha384 => rh::HMAC_SHA384,
            HashAlg::Sha512 => rh::HMAC_SHA512,
        }
    }

    fn digest_alg(self) -> &'static rd::Algorithm {
        match self {
            HashAlg::Sha1 => &rd::SHA1_FOR_LEGACY_USE_ONLY,
            HashAlg::Sha256 => &rd::SHA256,
            HashAlg::Sha384 => &rd::SHA384,
            HashAlg::Sha512 => &rd::SHA512,
        }
    }
}

impl From<policy::Prf> for HashAlg {
    fn from(p: policy::Prf) -> Self {
        match p {
            policy::Prf::Sha1 => HashAlg::Sha1,
            policy::Prf::Sha256 => HashAlg::Sha256,
            policy::Prf::Sha384 => HashAlg::Sha384,
            policy::Prf::Sha512 => HashAlg::Sha512,
        }
    }
}

/// Plain hash of the concatenation of `data` (e.g. NAT detection, RFC 7296 §2.23, uses SHA-1).
pub fn digest(alg: HashAlg, data: &[&[u8]]) -> Vec<u8> {
    let mut ctx = rd::Context::new(alg.digest_alg());
    for d in data {
        ctx.update(d);
    }
    ctx.finish().as_ref().to_vec()
}

/// Full-length HMAC of the concatenation of `data`.
pub fn hmac(alg: HashAlg, key: &[u8], data: &[&[u8]]) -> Vec<u8> {
    Hmac::new(alg, key).sign(data)
}

/// A keyed HMAC, precomputed once per key (the inner/outer pads are hashed at construction),
/// so per-packet use costs only the message blocks.
#[derive(Clone)]
pub struct Hmac {
    alg: HashAlg,
    key: rh::Key,
}

impl std::fmt::Debug for Hmac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hmac").field("alg", &self.alg).finish_non_exhaustive()
    }
}

/// Shortest truncated tag accepted by [`Hmac::verify_truncated`]: 96 bits, the HMAC-SHA1-96
/// length; RFC 2104 §5 advises not less than 80 bits. Guards against a caller accidentally
/// verifying an empty tag, which would always succeed.
pub const MIN_TRUNCATED_TAG: usize = 12;

impl Hmac {
    pub fn new(alg: HashAlg, key: &[u8]) -> Self {
        Self { alg, key: rh::Key::new(alg.hmac_alg(), key) }
    }

    pub fn alg(&self) -> HashAlg {
        self.alg
    }

    fn tag(&self, data: &[&[u8]]) -> rh::Tag {
        let mut ctx = rh::Context::with_key(&self.key);
        for d in data {
            ctx.update(d);
        }
        ctx.sign()
    }

    /// Full-length tag.
    pub fn sign(&self, data: &[&[u8]]) -> Vec<u8> {
        self.tag(data).as_ref().to_vec()
    }

    /// Writes the first `out.len()` bytes of the tag into `out` without allocating.
    /// If `out` is longer than the full tag, only the full tag is written (a caller bug).
    pub fn sign_truncated_into(&self, data: &[&[u8]], out: &mut [u8]) {
        let tag = self.tag(data);
        let t = tag.as_ref();
        let n = out.len().min(t.len());
        out[..n].copy_from_slice(&t[..n]);
    }

    /// Constant-time check of a (possibly truncated) tag. Tags shorter than
    /// [`MIN_TRUNCATED_TAG`] or longer than the full output are rejected.
    pub fn verify_truncated(&self, data: &[&[u8]], tag: &[u8]) -> bool {
        if tag.len() < MIN_TRUNCATED_TAG || tag.len() > self.alg.output_len() {
            return false;
        }
        let expected = self.tag(data);
        // Equal lengths are guaranteed above, which openssl's CRYPTO_memcmp wrapper requires.
        openssl::memcmp::eq(&expected.as_ref()[..tag.len()], tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// RFC 4231 §4 test cases 1, 2, 4, 6 (SHA-256/384/512) and RFC 2202 §3 (SHA-1).
    #[test]
    fn rfc4231_and_rfc2202_vectors() {
        let k1 = vec![0x0b; 20];
        let d1: &[u8] = b"Hi There";
        assert_eq!(
            hmac(HashAlg::Sha256, &k1, &[d1]),
            h("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        );
        assert_eq!(
            hmac(HashAlg::Sha384, &k1, &[d1]),
            h("afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6")
        );
        assert_eq!(
            hmac(HashAlg::Sha512, &k1, &[d1]),
            h("87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cdedaa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854")
        );
        assert_eq!(hmac(HashAlg::Sha1, &k1, &[d1]), h("b617318655057264e28bc0b6fb378c8ef146be00"));

        // Test case 2, with the data split across slices to exercise multi-part input.
        let k2 = b"Jefe";
        let d2: [&[u8]; 3] = [b"what do ya", b" want ", b"for nothing?"];
        assert_eq!(
            hmac(HashAlg::Sha256, k2, &d2),
            h("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
        assert_eq!(
            hmac(HashAlg::Sha384, k2, &d2),
            h("af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649")
        );
        assert_eq!(
            hmac(HashAlg::Sha512, k2, &d2),
            h("164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737")
        );
        assert_eq!(hmac(HashAlg::Sha1, k2, &d2), h("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"));

        // Test case 4: 25-byte key 0x01..0x19, 50 x 0xcd.
        let k4: Vec<u8> = (1u8..=25).collect();
        assert_eq!(
            hmac(HashAlg::Sha256, &k4, &[&[0xcd; 50]]),
            h("82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b")
        );

        // Test case 6: key longer than the block size is hashed first.
        assert_eq!(
            hmac(HashAlg::Sha256, &[0xaa; 131], &[b"Test Using Larger Than Block-Size Key - Hash Key First"]),
            h("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
        );
    }

    /// RFC 4231 test case 5: truncation to 128 bits.
    #[test]
    fn truncated_sign_and_verify() {
        let m = Hmac::new(HashAlg::Sha256, &[0x0c; 20]);
        let data: &[&[u8]] = &[b"Test With Truncation"];
        let mut t = [0u8; 16];
        m.sign_truncated_into(data, &mut t);
        assert_eq!(t.to_vec(), h("a3b6167473100ee06e0c796c2955552b"));
        assert!(m.verify_truncated(data, &t));
        let mut bad = t;
        bad[15] ^= 1;
        assert!(!m.verify_truncated(data, &bad));
        assert!(!m.verify_truncated(&[b"Test With Truncatiom"], &t));
        // An empty or too-short tag must never verify.
        assert!(!m.verify_truncated(data, &[]));
        assert!(!m.verify_truncated(data, &t[..8]));
        // Longer than the full output: rejected, not panicking.
        assert!(!m.verify_truncated(data, &[0u8; 33]));
        let full = m.sign(data);
        assert!(m.verify_truncated(data, &full));
    }

    #[test]
    fn digests() {
        assert_eq!(digest(HashAlg::Sha1, &[b"abc"]), h("a9993e364706816aba3e25717850c26c9cd0d89d"));
        assert_eq!(
            digest(HashAlg::Sha256, &[b"a", b"bc"]),
            h("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        for alg in [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512] {
            assert_eq!(digest(alg, &[b""]).len(), alg.output_len());
            assert_eq!(hmac(alg, b"k", &[b""]).len(), alg.output_len());
        }
    }
}
