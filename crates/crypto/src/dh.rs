//! Diffie-Hellman for IKEv2 key exchange: MODP groups 14/15/16 (RFC 3526), ECP groups
//! 19/20/21 (RFC 5903) and Curve25519 (RFC 8031), all through openssl.
//!
//! Encodings follow the IKEv2 KE payload: MODP public values and secrets are big-endian,
//! left-padded to the prime length (RFC 7296 §3.4); ECP public values are x || y, each padded
//! to the field size, with no point-format byte, and the shared secret is x alone (RFC 5903
//! §7, §9); X25519 values are the raw 32 bytes (RFC 8031 §2).

use crate::CryptoError;
use openssl::bn::{BigNum, BigNumContext};
use openssl::derive::Deriver;
use openssl::dh::Dh;
use openssl::ec::{EcGroup, EcKey, EcPoint, PointConversionForm};
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private};
use policy::DhGroup;

/// Length of a public value in the KE payload for `group`.
pub fn public_value_len(group: DhGroup) -> usize {
    match group {
        DhGroup::Modp2048 => 256,
        DhGroup::Modp3072 => 384,
        DhGroup::Modp4096 => 512,
        DhGroup::Ecp256 => 64,
        DhGroup::Ecp384 => 96,
        DhGroup::Ecp521 => 132,
        DhGroup::Curve25519 => 32,
    }
}

/// Length of the shared secret `g^ir` for `group`.
pub fn shared_secret_len(group: DhGroup) -> usize {
    match group {
        DhGroup::Modp2048 | DhGroup::Modp3072 | DhGroup::Modp4096 | DhGroup::Curve25519 => {
            public_value_len(group)
        }
        DhGroup::Ecp256 | DhGroup::Ecp384 | DhGroup::Ecp521 => public_value_len(group) / 2,
    }
}

/// Our ephemeral private key for one exchange. Consumed by [`DhPrivate::agree`], so a key is
/// never reused across exchanges by accident.
pub struct DhPrivate {
    group: DhGroup,
    key: PKey<Private>,
}

impl std::fmt::Debug for DhPrivate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhPrivate").field("group", &self.group).finish_non_exhaustive()
    }
}

impl DhPrivate {
    /// Generates a fresh key pair; returns it with our public value in KE encoding.
    pub fn generate(group: DhGroup) -> Result<(DhPrivate, Vec<u8>), CryptoError> {
        let len = public_value_len(group);
        let (key, public) = match group {
            DhGroup::Modp2048 | DhGroup::Modp3072 | DhGroup::Modp4096 => {
                let dh = modp_params(group)?.generate_key()?;
                let public = dh.public_key().to_vec_padded(len as i32)?;
                (PKey::from_dh(dh)?, public)
            }
            DhGroup::Ecp256 | DhGroup::Ecp384 | DhGroup::Ecp521 => {
                let ec_group = ec_group(group)?;
                let ec = EcKey::generate(&ec_group)?;
                let mut ctx = BigNumContext::new()?;
                let sec1 = ec.public_key().to_bytes(&ec_group, PointConversionForm::UNCOMPRESSED, &mut ctx)?;
                // SEC1 uncompressed is 0x04 || x || y with fixed-width coordinates; IKE drops
                // the 0x04 (RFC 5903 §7).
                if sec1.len() != len + 1 || sec1[0] != 0x04 {
                    return Err(CryptoError::Backend("unexpected EC point encoding".into()));
                }
                (PKey::from_ec_key(ec)?, sec1[1..].to_vec())
            }
            DhGroup::Curve25519 => {
                let key = PKey::generate_x25519()?;
                let public = key.raw_public_key()?;
                (key, public)
            }
        };
        if public.len() != len {
            return Err(CryptoError::Backend("public value has the wrong length".into()));
        }
        Ok((DhPrivate { group, key }, public))
    }

    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// Computes the shared secret with the peer's KE public value, after validating it.
    pub fn agree(self, peer_public: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let group = self.group;
        let bad = |why: &'static str| CryptoError::InvalidPeerPublic { group: group.number(), why };
        if peer_public.len() != public_value_len(group) {
            return Err(bad("wrong length"));
        }
        let peer = match group {
            DhGroup::Modp2048 | DhGroup::Modp3072 | DhGroup::Modp4096 => {
                let y = BigNum::from_slice(peer_public)?;
                let params = modp_params(group)?;
                // RFC 7296 §5 / SP 800-56A §5.6.2.3.1: reject y outside [2, p-2]. With a safe
                // prime the only small subgroup is {1, p-1}, so this range check is enough to
                // keep the secret out of a subgroup an attacker could enumerate.
                let one = BigNum::from_u32(1)?;
                let mut p_minus_1 = BigNum::new()?;
                p_minus_1.checked_sub(params.prime_p(), &one)?;
                if y <= one || y >= p_minus_1 {
                    return Err(bad("outside 2..p-2"));
                }
                PKey::from_dh(params.set_public_key(y)?)?
            }
            DhGroup::Ecp256 | DhGroup::Ecp384 | DhGroup::Ecp521 => {
                let ec_group = ec_group(group)?;
                let mut ctx = BigNumContext::new()?;
                let mut sec1 = Vec::with_capacity(peer_public.len() + 1);
                sec1.push(0x04);
                sec1.extend_from_slice(peer_public);
                // oct2point rejects coordinates >= p and points not on the curve (RFC 5903 §9
                // requires this check); check_key additionally rejects the point at infinity
                // and verifies the point's order.
                let point = EcPoint::from_bytes(&ec_group, &sec1, &mut ctx).map_err(|_| bad("point not on curve"))?;
                let ec = EcKey::from_public_key(&ec_group, &point).map_err(|_| bad("invalid point"))?;
                ec.check_key().map_err(|_| bad("invalid point"))?;
                PKey::from_ec_key(ec)?
            }
            DhGroup::Curve25519 => PKey::public_key_from_raw_bytes(peer_public, Id::X25519)?,
        };
        let mut deriver = Deriver::new(&self.key)?;
        deriver.set_peer(&peer).map_err(|_| bad("rejected by key check"))?;
        let raw = match deriver.derive_to_vec() {
            Ok(v) => v,
            // For X25519, OpenSSL fails the derivation exactly when the result is all zeros,
            // i.e. the peer sent a low-order point (RFC 7748 §6.1, RFC 8031 §2.3).
            Err(_) if group == DhGroup::Curve25519 => return Err(bad("low-order point")),
            Err(e) => return Err(e.into()),
        };
        let want = shared_secret_len(group);
        if raw.len() > want {
            return Err(CryptoError::Backend("shared secret longer than the group allows".into()));
        }
        if group == DhGroup::Curve25519 && raw.iter().all(|&b| b == 0) {
            return Err(bad("low-order point"));
        }
        // MODP derivation in OpenSSL strips leading zero bytes; IKE wants the fixed-width value
        // (RFC 7296 §2.14: g^ir is padded to the prime's length), so pad back on the left.
        let mut out = vec![0u8; want - raw.len()];
        out.extend_from_slice(&raw);
        Ok(out)
    }
}

/// RFC 3526 MODP group parameters (generator 2).
fn modp_params(group: DhGroup) -> Result<Dh<openssl::pkey::Params>, CryptoError> {
    let p = match group {
        DhGroup::Modp2048 => BigNum::get_rfc3526_prime_2048()?,
        DhGroup::Modp3072 => BigNum::get_rfc3526_prime_3072()?,
        DhGroup::Modp4096 => BigNum::get_rfc3526_prime_4096()?,
        _ => return Err(CryptoError::Backend("not a MODP group".into())),
    };
    Ok(Dh::from_pqg(p, None, BigNum::from_u32(2)?)?)
}

fn ec_group(group: DhGroup) -> Result<EcGroup, CryptoError> {
    let nid = match group {
        DhGroup::Ecp256 => Nid::X9_62_PRIME256V1,
        DhGroup::Ecp384 => Nid::SECP384R1,
        DhGroup::Ecp521 => Nid::SECP521R1,
        _ => return Err(CryptoError::Backend("not an ECP group".into())),
    };
    Ok(EcGroup::from_curve_name(nid)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [DhGroup; 7] = [
        DhGroup::Modp2048,
        DhGroup::Modp3072,
        DhGroup::Modp4096,
        DhGroup::Ecp256,
        DhGroup::Ecp384,
        DhGroup::Ecp521,
        DhGroup::Curve25519,
    ];

    #[test]
    fn two_parties_agree_in_every_group() {
        for g in ALL {
            let (a, pa) = DhPrivate::generate(g).unwrap();
            let (b, pb) = DhPrivate::generate(g).unwrap();
            assert_eq!(pa.len(), public_value_len(g));
            assert_ne!(pa, pb);
            let sa = a.agree(&pb).unwrap();
            let sb = b.agree(&pa).unwrap();
            assert_eq!(sa, sb, "group {g:?}");
            assert_eq!(sa.len(), shared_secret_len(g));
            assert!(sa.iter().any(|&x| x != 0));
        }
    }

    /// Recomputes g^xy with plain bignum arithmetic to pin down the encoding (fixed width,
    /// big-endian) independently of the EVP derivation path.
    #[test]
    fn modp_secret_matches_bignum_arithmetic() {
        for g in [DhGroup::Modp2048, DhGroup::Modp3072] {
            let (a, _pa) = DhPrivate::generate(g).unwrap();
            let (_b, pb) = DhPrivate::generate(g).unwrap();
            let x = a.key.dh().unwrap().private_key().to_owned().unwrap();
            let p = modp_params(g).unwrap().prime_p().to_owned().unwrap();
            let y = BigNum::from_slice(&pb).unwrap();
            let mut ctx = BigNumContext::new().unwrap();
            let mut s = BigNum::new().unwrap();
            s.mod_exp(&y, &x, &p, &mut ctx).unwrap();
            let expected = s.to_vec_padded(public_value_len(g) as i32).unwrap();
            assert_eq!(a.agree(&pb).unwrap(), expected);
        }
    }

    /// The ECP shared secret is the x coordinate of d_a * Q_b, padded to the field size.
    #[test]
    fn ecp_secret_is_x_coordinate() {
        for g in [DhGroup::Ecp256, DhGroup::Ecp384, DhGroup::Ecp521] {
            let (a, _) = DhPrivate::generate(g).unwrap();
            let (_b, pb) = DhPrivate::generate(g).unwrap();
            let grp = ec_group(g).unwrap();
            let mut ctx = BigNumContext::new().unwrap();
            let d = a.key.ec_key().unwrap().private_key().to_owned().unwrap();
            let mut sec1 = vec![4u8];
            sec1.extend_from_slice(&pb);
            let q = EcPoint::from_bytes(&grp, &sec1, &mut ctx).unwrap();
            let mut r = EcPoint::new(&grp).unwrap();
            r.mul2(&grp, &q, &d, &mut ctx).unwrap();
            let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
            r.affine_coordinates(&grp, &mut x, &mut y, &mut ctx).unwrap();
            let expected = x.to_vec_padded(shared_secret_len(g) as i32).unwrap();
            assert_eq!(a.agree(&pb).unwrap(), expected);
        }
    }

    fn rejects(g: DhGroup, peer: &[u8]) -> bool {
        let (a, _) = DhPrivate::generate(g).unwrap();
        matches!(a.agree(peer), Err(CryptoError::InvalidPeerPublic { .. }))
    }

    #[test]
    fn invalid_peer_values_are_rejected() {
        for g in ALL {
            let len = public_value_len(g);
            let (_, good) = DhPrivate::generate(g).unwrap();
            assert!(rejects(g, &good[1..]), "{g:?} short");
            let mut long = good.clone();
            long.push(0);
            assert!(rejects(g, &long), "{g:?} long");
            assert!(rejects(g, &[]), "{g:?} empty");
            if g != DhGroup::Curve25519 {
                assert!(rejects(g, &vec![0u8; len]), "{g:?} zero");
                assert!(rejects(g, &vec![0xffu8; len]), "{g:?} all-ones (>= p)");
            }
        }
        for g in [DhGroup::Modp2048, DhGroup::Modp3072, DhGroup::Modp4096] {
            let len = public_value_len(g) as i32;
            let p = modp_params(g).unwrap().prime_p().to_owned().unwrap();
            let mut one = vec![0u8; len as usize];
            *one.last_mut().unwrap() = 1;
            assert!(rejects(g, &one), "{g:?} y=1");
            let mut pm1 = BigNum::new().unwrap();
            pm1.checked_sub(&p, &BigNum::from_u32(1).unwrap()).unwrap();
            assert!(rejects(g, &pm1.to_vec_padded(len).unwrap()), "{g:?} y=p-1");
            assert!(rejects(g, &p.to_vec_padded(len).unwrap()), "{g:?} y=p");
            // y = 2 is a legitimate (if silly) value and must be accepted.
            let mut two = vec![0u8; len as usize];
            *two.last_mut().unwrap() = 2;
            let (a, _) = DhPrivate::generate(g).unwrap();
            assert!(a.agree(&two).is_ok());
        }
        for g in [DhGroup::Ecp256, DhGroup::Ecp384, DhGroup::Ecp521] {
            let (_, mut good) = DhPrivate::generate(g).unwrap();
            let last = good.len() - 1;
            good[last] ^= 1; // y changed: off the curve
            assert!(rejects(g, &good), "{g:?} off-curve");
        }
        // X25519 low-order points (RFC 7748 §6.1 / cr.yp.to list): 0 and 1 give an all-zero
        // shared secret.
        assert!(rejects(DhGroup::Curve25519, &[0u8; 32]));
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(rejects(DhGroup::Curve25519, &one));
    }
}
