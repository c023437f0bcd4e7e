//! Fixtures shared by the ike integration tests: addresses, selectors and the tunnel policy
//! both ends of an in-memory pair use.
#![allow(dead_code)] // each test crate uses a different subset

use policy::*;
use std::net::IpAddr;
use std::time::Duration;

pub const A: &str = "192.0.2.1";
pub const B: &str = "192.0.2.2";

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn net(s: &str, l: u8) -> TrafficSelector {
    TrafficSelector::from_net(Ipv4Net::new(s.parse().unwrap(), l), None)
}

#[derive(Clone)]
pub struct Algs {
    pub ike_enc: Vec<Encryption>,
    pub ike_integ: Vec<Integrity>,
    pub groups: Vec<DhGroup>,
    pub esp_enc: Vec<Encryption>,
    pub esp_integ: Vec<Integrity>,
}

pub fn gcm_x25519() -> Algs {
    Algs {
        ike_enc: vec![Encryption::AesGcm256],
        ike_integ: vec![Integrity::Null],
        groups: vec![DhGroup::Curve25519],
        esp_enc: vec![Encryption::AesGcm256],
        esp_integ: vec![],
    }
}

pub fn cbc_modp() -> Algs {
    Algs {
        ike_enc: vec![Encryption::AesCbc256],
        ike_integ: vec![Integrity::Sha256],
        groups: vec![DhGroup::Modp2048],
        esp_enc: vec![Encryption::AesCbc256],
        esp_integ: vec![Integrity::Sha256],
    }
}

pub fn tunnel(local: &str, peer: &str, lnet: &str, rnet: &str, a: &Algs) -> TunnelPolicy {
    TunnelPolicy {
        name: format!("MAP:{peer}"),
        local_addr: ip(local),
        peer_addr: ip(peer),
        outside_ifname: "out".into(),
        local_ts: vec![net(lnet, 24)],
        remote_ts: vec![net(rnet, 24)],
        ike_policies: vec![Ikev2Policy {
            priority: 10,
            encryption: a.ike_enc.clone(),
            integrity: a.ike_integ.clone(),
            groups: a.groups.clone(),
            prf: vec![Prf::Sha256],
            lifetime: Some(Duration::from_secs(86400)),
        }],
        esp_proposals: vec![IpsecProposal { name: "P1".into(), encryption: a.esp_enc.clone(), integrity: a.esp_integ.clone() }],
        pfs: None,
        child_lifetime: Duration::from_secs(3600),
        child_lifetime_kilobytes: None,
        local_psk: Secret("s3cret".into()),
        remote_psk: Secret("s3cret".into()),
        dpd: Some(Dpd { threshold: Duration::from_secs(10), retry: Duration::from_secs(2) }),
        nat_t_disable: false,
        force_udp_encap: false,
        connection_type: ConnectionType::Bidirectional,
    }
}
