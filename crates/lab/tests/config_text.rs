//! The ASA-syntax configurations the lab generates are accepted by holdfast's own parser and
//! resolve to the tunnel the test meant (no root needed).

use lab::{HoldfastParams, Suite};

fn tunnels(p: &HoldfastParams) -> Vec<policy_view::Tunnel> {
    let text = p.config_text();
    let loaded = config::parse("lab.conf", &text).unwrap_or_else(|d| panic!("lab config rejected:\n{d}\n---\n{text}"));
    let t = loaded.config.tunnels().expect("tunnels resolve");
    t.into_iter()
        .map(|t| policy_view::Tunnel {
            peer: t.peer_addr.to_string(),
            force_udp: t.force_udp_encap,
            kb: t.child_lifetime_kilobytes,
            secs: t.child_lifetime.as_secs(),
            answer_only: format!("{:?}", t.connection_type) == "AnswerOnly",
            pfs: t.pfs.map(|g| g.number()),
            ike_lifetime: t.ike_policies.first().and_then(|p| p.lifetime).map(|d| d.as_secs()),
        })
        .collect()
}

mod policy_view {
    #[derive(Debug, PartialEq)]
    pub struct Tunnel {
        pub peer: String,
        pub force_udp: bool,
        pub kb: Option<u64>,
        pub secs: u64,
        pub answer_only: bool,
        pub pfs: Option<u16>,
        pub ike_lifetime: Option<u64>,
    }
}

#[test]
fn every_lab_variant_parses() {
    for suite in [Suite::GcmX25519, Suite::CbcSha256Modp2048] {
        for side in ['a', 'b'] {
            let p = HoldfastParams::side(side, suite);
            let t = tunnels(&p);
            assert_eq!(t.len(), 1);
            assert_eq!(t[0].peer, if side == 'a' { "192.0.2.2" } else { "192.0.2.1" });
            assert!(!t[0].force_udp && !t[0].answer_only);
        }
    }
    let mut p = HoldfastParams::side('a', Suite::GcmX25519);
    p.force_udp_encap = true;
    p.connection_type = Some("answer-only".into());
    p.pfs_group = Some(31);
    p.child_lifetime_kilobytes = Some(20_000);
    p.ike_lifetime_seconds = 120;
    let t = tunnels(&p);
    assert!(t[0].force_udp && t[0].answer_only);
    assert_eq!(t[0].pfs, Some(31));
    assert_eq!(t[0].kb, Some(20_000));
    assert_eq!(t[0].ike_lifetime, Some(120));
    p.pfs_group = Some(19);
    assert_eq!(tunnels(&p)[0].pfs, Some(19));
}
