//! Proposals: from `policy` to SA payload transforms and back, and proposal selection
//! (RFC 7296 §2.7, §3.3).

use policy::{DhGroup, Encryption, Integrity, Prf};
use serde::{Deserialize, Serialize};
use wire::ike::{EncrId, EsnId, IntegId, PrfId, Proposal, ProtocolId, Transform, TransformType};

/// The algorithms of an IKE SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IkeSuite {
    pub encryption: Encryption,
    /// `Integrity::Null` with AES-GCM.
    pub integrity: Integrity,
    pub prf: Prf,
    pub dh: DhGroup,
}

/// The algorithms of a CHILD_SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EspSuite {
    pub encryption: Encryption,
    pub integrity: Integrity,
    pub esn: bool,
    /// PFS group used when the SA was created (CREATE_CHILD_SA with KE).
    pub dh: Option<DhGroup>,
}

/// One proposal in policy terms; `integrity` is empty for AEAD proposals (RFC 5282 §8: no
/// integrity transform with a combined-mode cipher).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Offer {
    pub encryption: Vec<Encryption>,
    pub integrity: Vec<Integrity>,
    pub prf: Vec<Prf>,
    pub dh: Vec<DhGroup>,
    pub esn: Vec<bool>,
    /// IKE SA lifetime of the policy this offer came from.
    pub lifetime: Option<std::time::Duration>,
}

/// ASA semantics: each `crypto ikev2 policy` becomes an AEAD proposal (its GCM ciphers, no
/// integrity) and/or a non-AEAD proposal (its CBC ciphers with its non-null integrity list).
pub(crate) fn ike_offers(policies: &[policy::Ikev2Policy]) -> Vec<Offer> {
    let mut out = Vec::new();
    for p in policies {
        let aead: Vec<_> = p.encryption.iter().copied().filter(|e| e.is_aead()).collect();
        let plain: Vec<_> = p.encryption.iter().copied().filter(|e| !e.is_aead()).collect();
        let integ: Vec<_> = p.integrity.iter().copied().filter(|i| *i != Integrity::Null).collect();
        let prf = if p.prf.is_empty() { integ.iter().filter_map(|i| prf_for_integ(*i)).collect() } else { p.prf.clone() };
        if !aead.is_empty() {
            out.push(Offer { encryption: aead, integrity: Vec::new(), prf: prf.clone(), dh: p.groups.clone(), esn: Vec::new(), lifetime: p.lifetime });
        }
        if !plain.is_empty() && !integ.is_empty() {
            out.push(Offer { encryption: plain, integrity: integ, prf, dh: p.groups.clone(), esn: Vec::new(), lifetime: p.lifetime });
        }
    }
    out
}

fn prf_for_integ(i: Integrity) -> Option<Prf> {
    Some(match i {
        Integrity::Null => return None,
        Integrity::Sha1 => Prf::Sha1,
        Integrity::Sha256 => Prf::Sha256,
        Integrity::Sha384 => Prf::Sha384,
        Integrity::Sha512 => Prf::Sha512,
    })
}

/// ESP proposals from `ipsec-proposal`s. ESN: we offer both (with ESN first) so a peer without
/// ESN support — strongSwan's libipsec — can pick "no".
pub(crate) fn esp_offers(proposals: &[policy::IpsecProposal], pfs: Option<DhGroup>) -> Vec<Offer> {
    let mut out = Vec::new();
    let dh: Vec<DhGroup> = pfs.into_iter().collect();
    for p in proposals {
        let aead: Vec<_> = p.encryption.iter().copied().filter(|e| e.is_aead()).collect();
        let plain: Vec<_> = p.encryption.iter().copied().filter(|e| !e.is_aead()).collect();
        let integ: Vec<_> = p.integrity.iter().copied().filter(|i| *i != Integrity::Null).collect();
        if !aead.is_empty() {
            out.push(Offer { encryption: aead, integrity: Vec::new(), prf: Vec::new(), dh: dh.clone(), esn: vec![true, false], lifetime: None });
        }
        if !plain.is_empty() && !integ.is_empty() {
            out.push(Offer { encryption: plain, integrity: integ, prf: Vec::new(), dh: dh.clone(), esn: vec![true, false], lifetime: None });
        }
    }
    out
}

pub(crate) fn encr_to_wire(e: Encryption) -> (EncrId, u16) {
    let id = if e.is_aead() { EncrId::AesGcm16 } else { EncrId::AesCbc };
    (id, e.key_bits())
}

pub(crate) fn encr_from_wire(id: u16, key_len: Option<u16>) -> Option<Encryption> {
    Some(match (EncrId::from(id), key_len?) {
        (EncrId::AesCbc, 128) => Encryption::AesCbc128,
        (EncrId::AesCbc, 192) => Encryption::AesCbc192,
        (EncrId::AesCbc, 256) => Encryption::AesCbc256,
        (EncrId::AesGcm16, 128) => Encryption::AesGcm128,
        (EncrId::AesGcm16, 192) => Encryption::AesGcm192,
        (EncrId::AesGcm16, 256) => Encryption::AesGcm256,
        _ => return None,
    })
}

pub(crate) fn integ_to_wire(i: Integrity) -> IntegId {
    match i {
        Integrity::Null => IntegId::None,
        Integrity::Sha1 => IntegId::HmacSha1_96,
        Integrity::Sha256 => IntegId::HmacSha2_256_128,
        Integrity::Sha384 => IntegId::HmacSha2_384_192,
        Integrity::Sha512 => IntegId::HmacSha2_512_256,
    }
}

pub(crate) fn integ_from_wire(id: u16) -> Option<Integrity> {
    Some(match IntegId::from(id) {
        IntegId::None => Integrity::Null,
        IntegId::HmacSha1_96 => Integrity::Sha1,
        IntegId::HmacSha2_256_128 => Integrity::Sha256,
        IntegId::HmacSha2_384_192 => Integrity::Sha384,
        IntegId::HmacSha2_512_256 => Integrity::Sha512,
        _ => return None,
    })
}

pub(crate) fn prf_to_wire(p: Prf) -> PrfId {
    match p {
        Prf::Sha1 => PrfId::HmacSha1,
        Prf::Sha256 => PrfId::HmacSha2_256,
        Prf::Sha384 => PrfId::HmacSha2_384,
        Prf::Sha512 => PrfId::HmacSha2_512,
    }
}

pub(crate) fn prf_from_wire(id: u16) -> Option<Prf> {
    Some(match PrfId::from(id) {
        PrfId::HmacSha1 => Prf::Sha1,
        PrfId::HmacSha2_256 => Prf::Sha256,
        PrfId::HmacSha2_384 => Prf::Sha384,
        PrfId::HmacSha2_512 => Prf::Sha512,
        _ => return None,
    })
}

/// Transforms of one offer. `dh_first` moves a group to the front (the group of our KE).
pub(crate) fn offer_transforms(o: &Offer, dh_first: Option<DhGroup>) -> Vec<Transform<'static>> {
    let mut t = Vec::new();
    for e in &o.encryption {
        let (id, bits) = encr_to_wire(*e);
        t.push(Transform::with_key_length(TransformType::Encr, id.value(), bits));
    }
    for p in &o.prf {
        t.push(Transform::new(TransformType::Prf, prf_to_wire(*p).value()));
    }
    for i in &o.integrity {
        t.push(Transform::new(TransformType::Integ, integ_to_wire(*i).value()));
    }
    let mut groups = o.dh.clone();
    if let Some(g) = dh_first {
        if let Some(pos) = groups.iter().position(|x| *x == g) {
            groups.remove(pos);
            groups.insert(0, g);
        }
    }
    for g in groups {
        t.push(Transform::new(TransformType::Dh, g.number()));
    }
    for e in &o.esn {
        t.push(Transform::new(TransformType::Esn, if *e { EsnId::Yes.value() } else { EsnId::No.value() }));
    }
    t
}

pub(crate) fn offers_to_wire<'a>(offers: &[Offer], protocol: ProtocolId, spi: &'a [u8], dh_first: Option<DhGroup>) -> Vec<Proposal<'a>> {
    offers
        .iter()
        .enumerate()
        .map(|(i, o)| Proposal { number: (i + 1) as u8, protocol, spi, transforms: offer_transforms(o, dh_first) })
        .collect()
}

/// What was chosen from one peer proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chosen {
    pub number: u8,
    pub encryption: Encryption,
    pub integrity: Integrity,
    pub prf: Option<Prf>,
    pub dh: Option<DhGroup>,
    pub esn: bool,
}

impl Chosen {
    pub fn ike_suite(&self) -> Option<IkeSuite> {
        Some(IkeSuite { encryption: self.encryption, integrity: self.integrity, prf: self.prf?, dh: self.dh? })
    }
    pub fn esp_suite(&self) -> EspSuite {
        EspSuite { encryption: self.encryption, integrity: self.integrity, esn: self.esn, dh: self.dh }
    }
    /// The single-proposal answer (RFC 7296 §3.3: one transform of each type).
    pub fn to_wire(self, protocol: ProtocolId, spi: &[u8]) -> Proposal<'_> {
        let mut t = Vec::new();
        let (id, bits) = encr_to_wire(self.encryption);
        t.push(Transform::with_key_length(TransformType::Encr, id.value(), bits));
        if let Some(p) = self.prf {
            t.push(Transform::new(TransformType::Prf, prf_to_wire(p).value()));
        }
        if self.integrity != Integrity::Null {
            t.push(Transform::new(TransformType::Integ, integ_to_wire(self.integrity).value()));
        }
        if let Some(g) = self.dh {
            t.push(Transform::new(TransformType::Dh, g.number()));
        }
        if protocol == ProtocolId::Esp {
            t.push(Transform::new(TransformType::Esn, if self.esn { 1 } else { 0 }));
        }
        Proposal { number: self.number, protocol, spi, transforms: t }
    }
}

/// Picks the first peer proposal (in the peer's order) that one of our offers accepts. For IKE,
/// PRF and DH are required; for ESP, DH is required only if our offer has PFS groups and the
/// peer offers a group (a peer that offers no KE is accepted without PFS).
pub(crate) fn select(peer: &[Proposal<'_>], ours: &[Offer], protocol: ProtocolId) -> Option<(Chosen, Vec<u8>, usize)> {
    select_with_ke(peer, ours, protocol, None)
}

/// Like [`select`], preferring the DH group of the KE payload the peer sent when the chosen
/// proposal allows it (saves an INVALID_KE_PAYLOAD round trip when the peer's KE is not for
/// its first-listed group).
pub(crate) fn select_with_ke(peer: &[Proposal<'_>], ours: &[Offer], protocol: ProtocolId, ke: Option<u16>) -> Option<(Chosen, Vec<u8>, usize)> {
    for p in peer.iter().filter(|p| p.protocol == protocol) {
        for (i, o) in ours.iter().enumerate() {
            if let Some(mut c) = match_one(p, o, protocol) {
                if let Some(g) = ke.and_then(DhGroup::from_number) {
                    let offered = p.transforms.iter().any(|t| t.ty == TransformType::Dh && t.id == g.number());
                    if c.dh.is_some() && offered && (o.dh.contains(&g) || protocol == ProtocolId::Esp && o.dh.is_empty()) {
                        c.dh = Some(g);
                    }
                }
                return Some((c, p.spi.to_vec(), i));
            }
        }
    }
    None
}

fn match_one(p: &Proposal<'_>, o: &Offer, protocol: ProtocolId) -> Option<Chosen> {
    let of = |ty: TransformType| p.transforms.iter().filter(move |t| t.ty == ty);
    // A transform type we do not know makes the whole proposal unacceptable (RFC 7296 §3.3.6).
    if p.transforms.iter().any(|t| matches!(t.ty, TransformType::Unknown(_))) {
        return None;
    }
    let encryption = of(TransformType::Encr).find_map(|t| encr_from_wire(t.id, t.key_length()).filter(|e| o.encryption.contains(e)))?;
    let integrity = if encryption.is_aead() {
        if of(TransformType::Integ).any(|t| t.id != IntegId::None.value()) && of(TransformType::Integ).all(|t| t.id != IntegId::None.value()) {
            return None;
        }
        Integrity::Null
    } else {
        of(TransformType::Integ).find_map(|t| integ_from_wire(t.id).filter(|i| *i != Integrity::Null && o.integrity.contains(i)))?
    };
    let prf = if protocol == ProtocolId::Ike { Some(of(TransformType::Prf).find_map(|t| prf_from_wire(t.id).filter(|x| o.prf.contains(x)))?) } else { None };
    let peer_groups: Vec<u16> = of(TransformType::Dh).map(|t| t.id).collect();
    let dh = if protocol == ProtocolId::Ike {
        Some(peer_groups.iter().find_map(|g| DhGroup::from_number(*g).filter(|x| o.dh.contains(x)))?)
    } else if peer_groups.is_empty() || peer_groups.contains(&0) && o.dh.is_empty() {
        None
    } else if o.dh.is_empty() {
        // No PFS configured: go along with a peer that wants it, if we know the group.
        Some(peer_groups.iter().find_map(|g| DhGroup::from_number(*g))?)
    } else {
        let g = peer_groups.iter().find_map(|g| DhGroup::from_number(*g).filter(|x| o.dh.contains(x)));
        match g {
            Some(g) => Some(g),
            None if peer_groups.contains(&0) => None,
            None => return None,
        }
    };
    let esn = if protocol == ProtocolId::Esp {
        let peer_esn: Vec<u16> = of(TransformType::Esn).map(|t| t.id).collect();
        if peer_esn.is_empty() {
            false
        } else {
            *peer_esn.iter().find_map(|v| match *v {
                1 => Some(true),
                0 => Some(false),
                _ => None,
            })
            .as_ref()
            .filter(|e| o.esn.is_empty() || o.esn.contains(e))?
        }
    } else {
        false
    };
    Some(Chosen { number: p.number, encryption, integrity, prf, dh, esn })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn asa_policy() -> policy::Ikev2Policy {
        policy::Ikev2Policy {
            priority: 10,
            encryption: vec![Encryption::AesGcm256, Encryption::AesCbc256],
            integrity: vec![Integrity::Null, Integrity::Sha256],
            groups: vec![DhGroup::Ecp256, DhGroup::Modp2048, DhGroup::Curve25519],
            prf: vec![Prf::Sha256],
            lifetime: Some(Duration::from_secs(86400)),
        }
    }

    #[test]
    fn asa_policy_expands_to_aead_and_plain() {
        let o = ike_offers(&[asa_policy()]);
        assert_eq!(o.len(), 2);
        assert!(o[0].integrity.is_empty());
        assert_eq!(o[1].integrity, vec![Integrity::Sha256]);
    }

    #[test]
    fn select_strongswan_style_proposal() {
        // aes256-sha256-modp2048 as strongSwan sends it.
        let peer = vec![Proposal {
            number: 1,
            protocol: ProtocolId::Ike,
            spi: &[],
            transforms: vec![
                Transform::with_key_length(TransformType::Encr, 12, 256),
                Transform::new(TransformType::Integ, 12),
                Transform::new(TransformType::Prf, 5),
                Transform::new(TransformType::Dh, 14),
            ],
        }];
        let (c, _, _) = select(&peer, &ike_offers(&[asa_policy()]), ProtocolId::Ike).unwrap();
        assert_eq!(c.ike_suite().unwrap(), IkeSuite { encryption: Encryption::AesCbc256, integrity: Integrity::Sha256, prf: Prf::Sha256, dh: DhGroup::Modp2048 });
        // aes128 is not in our policy.
        let mut peer2 = peer.clone();
        peer2[0].transforms[0] = Transform::with_key_length(TransformType::Encr, 12, 128);
        assert!(select(&peer2, &ike_offers(&[asa_policy()]), ProtocolId::Ike).is_none());
    }

    #[test]
    fn prefers_group_of_received_ke() {
        let peer = vec![Proposal {
            number: 1,
            protocol: ProtocolId::Ike,
            spi: &[],
            transforms: vec![
                Transform::with_key_length(TransformType::Encr, 20, 256),
                Transform::new(TransformType::Prf, 5),
                Transform::new(TransformType::Dh, 19),
                Transform::new(TransformType::Dh, 31),
            ],
        }];
        let offers = ike_offers(&[asa_policy()]);
        assert_eq!(select(&peer, &offers, ProtocolId::Ike).unwrap().0.dh, Some(DhGroup::Ecp256));
        assert_eq!(select_with_ke(&peer, &offers, ProtocolId::Ike, Some(31)).unwrap().0.dh, Some(DhGroup::Curve25519));
        // A KE group outside the proposal does not change the choice.
        assert_eq!(select_with_ke(&peer, &offers, ProtocolId::Ike, Some(14)).unwrap().0.dh, Some(DhGroup::Ecp256));
    }

    #[test]
    fn esp_selection_accepts_no_esn() {
        let props = [policy::IpsecProposal { name: "P".into(), encryption: vec![Encryption::AesGcm256], integrity: vec![] }];
        let peer = vec![Proposal {
            number: 3,
            protocol: ProtocolId::Esp,
            spi: &[1, 2, 3, 4],
            transforms: vec![Transform::with_key_length(TransformType::Encr, 20, 256), Transform::new(TransformType::Esn, 0)],
        }];
        let (c, spi, _) = select(&peer, &esp_offers(&props, None), ProtocolId::Esp).unwrap();
        assert_eq!(spi, vec![1, 2, 3, 4]);
        assert!(!c.esn);
        assert_eq!(c.number, 3);
        assert_eq!(c.dh, None);
    }
}
