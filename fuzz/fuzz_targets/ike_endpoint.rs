//! The IKEv2 state machine fed arbitrary datagrams (split from the input by a 1-byte length
//! prefix) on both ports, with timers firing in between: nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let tunnel = policy::TunnelPolicy {
        name: "M:1".into(),
        local_addr: "192.0.2.1".parse().unwrap(),
        peer_addr: "192.0.2.2".parse().unwrap(),
        outside_ifname: "o".into(),
        local_ts: vec![policy::TrafficSelector::from_net(policy::Ipv4Net::new("10.1.0.0".parse().unwrap(), 24), None)],
        remote_ts: vec![policy::TrafficSelector::from_net(policy::Ipv4Net::new("10.2.0.0".parse().unwrap(), 24), None)],
        ike_policies: vec![policy::Ikev2Policy {
            priority: 1,
            encryption: vec![policy::Encryption::AesGcm256, policy::Encryption::AesCbc128],
            integrity: vec![policy::Integrity::Sha256],
            groups: vec![policy::DhGroup::Curve25519, policy::DhGroup::Ecp256],
            prf: vec![policy::Prf::Sha256],
            lifetime: Some(Duration::from_secs(60)),
        }],
        esp_proposals: vec![policy::IpsecProposal { name: "P".into(), encryption: vec![policy::Encryption::AesGcm128], integrity: vec![] }],
        pfs: None,
        child_lifetime: Duration::from_secs(30),
        child_lifetime_kilobytes: Some(10),
        local_psk: policy::Secret("k".into()),
        remote_psk: policy::Secret("k".into()),
        dpd: Some(policy::Dpd::default()),
        nat_t_disable: false,
        force_udp_encap: false,
        connection_type: policy::ConnectionType::Bidirectional,
    };
    let mut ep = ike::Endpoint::new(vec![tunnel], policy::Ikev2Globals::default(), Box::new(crypto::SeededRandom::new(7)));
    let mut now = Instant::now();
    ep.handle_command(now, ike::Command::Initiate { tunnel: "M:1".into() });
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (msg, tail) = tail.split_at(n);
        rest = tail;
        let port = if len & 1 == 0 { 500 } else { 4500 };
        let path = ike::Path { local: SocketAddr::new("192.0.2.1".parse().unwrap(), port), remote: SocketAddr::new("192.0.2.2".parse().unwrap(), port) };
        let _ = ep.handle_datagram(now, path, msg);
        now += Duration::from_millis(u64::from(len) * 37);
        ep.handle_timeout(now);
        while ep.poll_transmit().is_some() {}
        while ep.poll_event().is_some() {}
        let _ = (ep.ike_sas(), ep.child_sas(), ep.poll_timeout());
    }
});
