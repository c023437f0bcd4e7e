//! Key derivation (RFC 7296 §2.13-§2.18) and the Encrypted payload (§3.14, RFC 5282 for
//! AES-GCM, RFC 7383 for fragments). The primitives come from `crypto`; the constructions
//! (prf+, key split, IV/padding/ICV layout) are here.

use crate::error::Drop;
use crate::proposal::{EspSuite, IkeSuite};
use crypto::{HashAlg, Random};
use policy::{Encryption, Integrity, Prf};
use wire::ike::{emit_generic_header, Header, PayloadType};

/// RFC 7296 §2.13: prf+ (K,S) = T1 | T2 | ..., T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n).
pub(crate) fn prf_plus(alg: Prf, key: &[u8], seed: &[&[u8]], len: usize) -> Vec<u8> {
    let h = crypto::Hmac::new(HashAlg::from(alg), key);
    let mut out = Vec::with_capacity(len + 64);
    let mut t: Vec<u8> = Vec::new();
    let mut n: u8 = 1;
    while out.len() < len {
        let counter = [n];
        let mut parts: Vec<&[u8]> = Vec::with_capacity(seed.len() + 2);
        parts.push(&t);
        parts.extend_from_slice(seed);
        parts.push(&counter);
        t = h.sign(&parts);
        out.extend_from_slice(&t);
        // 255 iterations are the maximum (§2.13); our key material is far below that.
        n = n.wrapping_add(1);
    }
    out.truncate(len);
    out
}

pub(crate) fn prf(alg: Prf, key: &[u8], data: &[&[u8]]) -> Vec<u8> {
    crypto::hmac(HashAlg::from(alg), key, data)
}

/// Encryption key length in bytes, including the 4-byte salt for AES-GCM (RFC 5282 §7.1,
/// RFC 4106 §8.1).
pub(crate) fn enc_key_len(e: Encryption) -> usize {
    usize::from(e.key_bits() / 8) + if e.is_aead() { 4 } else { 0 }
}

/// Integrity key length: the HMAC's output length (RFC 4868 §2.1.1, RFC 2404).
pub(crate) fn integ_key_len(i: Integrity) -> usize {
    HashAlg::from_integrity(i).map(|h| h.output_len()).unwrap_or(0)
}

fn icv_len(s: &IkeSuite) -> usize {
    if s.encryption.is_aead() {
        crypto::GCM_TAG_LEN
    } else {
        HashAlg::integrity_icv_len(s.integrity)
    }
}

fn iv_len(e: Encryption) -> usize {
    // RFC 5282 §3.1: 8-byte explicit IV for GCM; a full block for CBC (RFC 3602).
    if e.is_aead() { 8 } else { 16 }
}

/// The seven IKE SA keys (RFC 7296 §2.14).
#[derive(Clone)]
pub(crate) struct IkeKeys {
    pub suite: IkeSuite,
    pub sk_d: Vec<u8>,
    pub sk_ai: Vec<u8>,
    pub sk_ar: Vec<u8>,
    pub sk_ei: Vec<u8>,
    pub sk_er: Vec<u8>,
    pub sk_pi: Vec<u8>,
    pub sk_pr: Vec<u8>,
}

impl std::fmt::Debug for IkeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IkeKeys").field("suite", &self.suite).finish_non_exhaustive()
    }
}

impl IkeKeys {
    /// `skeyseed` is prf(Ni | Nr, g^ir) for a new SA, prf(SK_d (old), g^ir (new) | Ni | Nr) for
    /// a rekey (§2.18).
    pub fn derive(suite: IkeSuite, skeyseed: &[u8], ni: &[u8], nr: &[u8], spi_i: u64, spi_r: u64) -> Self {
        let prf_len = HashAlg::from(suite.prf).output_len();
        let a = integ_key_len(suite.integrity);
        let e = enc_key_len(suite.encryption);
        let total = 3 * prf_len + 2 * a + 2 * e;
        let km = prf_plus(suite.prf, skeyseed, &[ni, nr, &spi_i.to_be_bytes(), &spi_r.to_be_bytes()], total);
        let mut off = 0;
        let mut take = |n: usize| {
            let v = km[off..off + n].to_vec();
            off += n;
            v
        };
        Self {
            suite,
            sk_d: take(prf_len),
            sk_ai: take(a),
            sk_ar: take(a),
            sk_ei: take(e),
            sk_er: take(e),
            sk_pi: take(prf_len),
            sk_pr: take(prf_len),
        }
    }

    /// Initial SKEYSEED = prf(Ni | Nr, g^ir) (§2.14).
    pub fn skeyseed(prf_alg: Prf, ni: &[u8], nr: &[u8], shared: &[u8]) -> Vec<u8> {
        let key = [ni, nr].concat();
        prf(prf_alg, &key, &[shared])
    }

    fn out_keys(&self, initiator: bool) -> (&[u8], &[u8]) {
        if initiator { (&self.sk_ei, &self.sk_ai) } else { (&self.sk_er, &self.sk_ar) }
    }
    fn in_keys(&self, initiator: bool) -> (&[u8], &[u8]) {
        if initiator { (&self.sk_er, &self.sk_ar) } else { (&self.sk_ei, &self.sk_ai) }
    }

    /// Bytes added around `n` bytes of inner payloads by one SK payload (header excluded).
    pub fn sk_overhead(&self, n: usize) -> usize {
        let iv = iv_len(self.suite.encryption);
        let body = if self.suite.encryption.is_aead() { n + 1 } else { (n + 1).div_ceil(16) * 16 };
        GEN + iv + body + icv_len(&self.suite) - n
    }

    /// Builds a complete message whose only payload is SK (or SKF when `fragment` is
    /// Some((number, total))), encrypting `inner` (a payload chain starting with `first_inner`).
    /// `initiator` is our role in the IKE SA (which key set we send with).
    pub fn protect(
        &self,
        initiator: bool,
        header: &Header,
        first_inner: PayloadType,
        inner: &[u8],
        fragment: Option<(u16, u16)>,
        rng: &mut dyn Random,
    ) -> Result<Vec<u8>, crypto::CryptoError> {
        let (ek, ak) = self.out_keys(initiator);
        let enc = self.suite.encryption;
        let iv_n = iv_len(enc);
        let icv = icv_len(&self.suite);
        let frag_hdr = if fragment.is_some() { 4 } else { 0 };
        // Plaintext = payloads | padding | pad length (§3.14). GCM needs no block alignment, so
        // no padding; CBC pads to the block size with zero bytes.
        let pt_len = if enc.is_aead() { inner.len() + 1 } else { (inner.len() + 1).div_ceil(16) * 16 };
        let pad = pt_len - inner.len() - 1;
        let payload_len = GEN + frag_hdr + iv_n + pt_len + icv;
        let total = wire::ike::HEADER_LEN + payload_len;
        let mut out = Vec::with_capacity(total);
        let ptype = if fragment.is_some() { PayloadType::Skf } else { PayloadType::Sk };
        header.emit(ptype, total as u32, &mut out);
        emit_generic_header(first_inner, false, payload_len as u16, &mut out);
        if let Some((num, tot)) = fragment {
            out.extend_from_slice(&num.to_be_bytes());
            out.extend_from_slice(&tot.to_be_bytes());
        }
        let aad_end = out.len();
        let mut iv = [0u8; 16];
        rng.fill(&mut iv[..iv_n]);
        out.extend_from_slice(&iv[..iv_n]);
        let pt_start = out.len();
        out.extend_from_slice(inner);
        out.resize(out.len() + pad, 0);
        out.push(pad as u8);
        if enc.is_aead() {
            let (key, salt) = ek.split_at(ek.len() - 4);
            let gcm = crypto::AesGcm::new(key)?;
            let mut nonce = [0u8; 12];
            nonce[..4].copy_from_slice(salt);
            nonce[4..].copy_from_slice(&iv[..8]);
            // RFC 5282 §5.1: AAD = IKE header through the Encrypted payload header (and, for
            // SKF, the fragment fields, RFC 7383 §2.5.3), without the IV.
            let (head, body) = out.split_at_mut(pt_start);
            let tag = gcm.seal_in_place(nonce, &head[..aad_end], body)?;
            out.extend_from_slice(&tag);
        } else {
            let cbc = crypto::AesCbc::new(ek)?;
            cbc.encrypt_in_place(&iv, &mut out[pt_start..])?;
            // §3.14: the checksum covers the whole message from the IKE header to the end of
            // the encrypted data.
            let mut tag = vec![0u8; icv];
            crypto::Hmac::new(HashAlg::from_integrity(self.suite.integrity).ok_or(crypto::CryptoError::InvalidLength(0))?, ak)
                .sign_truncated_into(&[&out], &mut tag);
            out.extend_from_slice(&tag);
        }
        debug_assert_eq!(out.len(), total);
        Ok(out)
    }

    /// Verifies and decrypts the SK/SKF body at the end of `msg` (`body` is a suffix of `msg`,
    /// as returned by the parser). Returns the inner payload chain bytes.
    pub fn unprotect(&self, initiator: bool, msg: &[u8], body: &[u8]) -> Result<Vec<u8>, Drop> {
        let (ek, ak) = self.in_keys(initiator);
        let enc = self.suite.encryption;
        let iv_n = iv_len(enc);
        let icv = icv_len(&self.suite);
        let aad_end = msg.len().checked_sub(body.len()).ok_or(Drop::Unauthenticated)?;
        if body.len() < iv_n + icv + 1 {
            return Err(Drop::Unauthenticated);
        }
        let iv = &body[..iv_n];
        let ct_end = body.len() - icv;
        let mut pt = body[iv_n..ct_end].to_vec();
        let tag = &body[ct_end..];
        if enc.is_aead() {
            let (key, salt) = ek.split_at(ek.len() - 4);
            let gcm = crypto::AesGcm::new(key).map_err(|_| Drop::Unauthenticated)?;
            let mut nonce = [0u8; 12];
            nonce[..4].copy_from_slice(salt);
            nonce[4..].copy_from_slice(iv);
            gcm.open_in_place(nonce, &msg[..aad_end], &mut pt, tag).map_err(|_| Drop::Unauthenticated)?;
        } else {
            let alg = HashAlg::from_integrity(self.suite.integrity).ok_or(Drop::Unauthenticated)?;
            // Integrity first: never decrypt unauthenticated data.
            let signed = &msg[..aad_end + iv_n + (ct_end - iv_n)];
            if !crypto::Hmac::new(alg, ak).verify_truncated(&[signed], tag) {
                return Err(Drop::Unauthenticated);
            }
            if !pt.len().is_multiple_of(16) || pt.is_empty() {
                return Err(Drop::Unauthenticated);
            }
            let mut ivb = [0u8; 16];
            ivb.copy_from_slice(iv);
            crypto::AesCbc::new(ek).map_err(|_| Drop::Unauthenticated)?.decrypt_in_place(&ivb, &mut pt).map_err(|_| Drop::Unauthenticated)?;
        }
        let pad = usize::from(*pt.last().ok_or(Drop::Unauthenticated)?);
        let keep = pt.len().checked_sub(pad + 1).ok_or(Drop::Unauthenticated)?;
        pt.truncate(keep);
        Ok(pt)
    }
}

const GEN: usize = wire::ike::GENERIC_HEADER_LEN;

/// ESP key material for one CHILD_SA (RFC 7296 §2.17): KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr),
/// taken in the order encr(I->R), integ(I->R), encr(R->I), integ(R->I). Ni/Nr are the nonces of
/// the exchange that created the SA. Returns ((enc, integ) I->R, (enc, integ) R->I).
#[allow(clippy::type_complexity)]
pub(crate) fn child_keymat(
    prf_alg: Prf,
    sk_d: &[u8],
    suite: &EspSuite,
    shared: Option<&[u8]>,
    ni: &[u8],
    nr: &[u8],
) -> ((Vec<u8>, Vec<u8>), (Vec<u8>, Vec<u8>)) {
    let e = enc_key_len(suite.encryption);
    let a = integ_key_len(suite.integrity);
    let mut seed: Vec<&[u8]> = Vec::new();
    if let Some(s) = shared {
        seed.push(s);
    }
    seed.push(ni);
    seed.push(nr);
    let km = prf_plus(prf_alg, sk_d, &seed, 2 * (e + a));
    let ei = km[..e].to_vec();
    let ai = km[e..e + a].to_vec();
    let er = km[e + a..2 * e + a].to_vec();
    let ar = km[2 * e + a..].to_vec();
    ((ei, ai), (er, ar))
}

/// RFC 7296 §2.15: AUTH for a shared secret = prf(prf(Shared Secret, "Key Pad for IKEv2"),
/// <SignedOctets>), SignedOctets = RealMessage | Nonce of the other side | prf(SK_p, IDx').
pub(crate) fn psk_auth(prf_alg: Prf, psk: &[u8], real_message: &[u8], other_nonce: &[u8], sk_p: &[u8], id_body: &[u8]) -> Vec<u8> {
    let maced_id = prf(prf_alg, sk_p, &[id_body]);
    let key = prf(prf_alg, psk, &[b"Key Pad for IKEv2"]);
    prf(prf_alg, &key, &[real_message, other_nonce, &maced_id])
}

/// Comparison whose time does not depend on where the inputs differ.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::DhGroup;

    #[test]
    fn prf_plus_concatenates_iterations() {
        let k = b"key";
        let s: &[u8] = b"seed";
        let out = prf_plus(Prf::Sha256, k, &[s], 80);
        let t1 = prf(Prf::Sha256, k, &[s, &[1]]);
        let t2 = prf(Prf::Sha256, k, &[&t1, s, &[2]]);
        let t3 = prf(Prf::Sha256, k, &[&t2, s, &[3]]);
        assert_eq!(out, [t1, t2, t3].concat()[..80].to_vec());
    }

    fn keys(encryption: Encryption, integrity: Integrity) -> IkeKeys {
        let suite = IkeSuite { encryption, integrity, prf: Prf::Sha256, dh: DhGroup::Curve25519 };
        IkeKeys::derive(suite, b"skeyseed", &[1; 32], &[2; 32], 7, 9)
    }

    #[test]
    fn key_lengths() {
        let k = keys(Encryption::AesGcm256, Integrity::Null);
        assert_eq!((k.sk_d.len(), k.sk_ai.len(), k.sk_ei.len(), k.sk_pr.len()), (32, 0, 36, 32));
        let k = keys(Encryption::AesCbc128, Integrity::Sha1);
        assert_eq!((k.sk_ai.len(), k.sk_ei.len()), (20, 16));
    }

    #[test]
    fn protect_unprotect_both_modes() {
        for (e, i) in [(Encryption::AesGcm256, Integrity::Null), (Encryption::AesCbc256, Integrity::Sha256), (Encryption::AesCbc128, Integrity::Sha1)] {
            let k = keys(e, i);
            let mut rng = crypto::SeededRandom::new(1);
            let h = Header::new(7, 9, wire::ike::ExchangeType::Informational, wire::ike::flags::INITIATOR, 3);
            for n in [0usize, 1, 15, 16, 17, 100] {
                let inner = vec![0x5a; n];
                let msg = k.protect(true, &h, PayloadType::Notify, &inner, None, &mut rng).unwrap();
                let parsed = wire::ike::Message::parse(&msg).unwrap();
                let wire::ike::Payload::Sk { first_inner, body } = &parsed.payloads[0] else { panic!("no SK") };
                assert_eq!(*first_inner, PayloadType::Notify);
                // The initiator's message is readable by the responder only.
                assert_eq!(k.unprotect(false, &msg, body).unwrap(), inner);
                assert!(k.unprotect(true, &msg, body).is_err());
                assert_eq!(msg.len(), wire::ike::HEADER_LEN + k.sk_overhead(n) + n);
                // Any flipped bit is detected.
                let mut bad = msg.clone();
                let last = bad.len() - 1;
                bad[last] ^= 1;
                let bp = wire::ike::Message::parse(&bad).unwrap();
                let wire::ike::Payload::Sk { body, .. } = &bp.payloads[0] else { panic!() };
                assert_eq!(k.unprotect(false, &bad, body), Err(Drop::Unauthenticated));
            }
        }
    }
}
