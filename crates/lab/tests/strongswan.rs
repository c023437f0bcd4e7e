//! The harness proven with two real strongSwan 5.9.8 peers (userspace ESP, always UDP 4500).
//! Also the anchor the holdfast results are compared with.

mod common;

use common::*;
use lab::{Capture, StrongSwan, SwanParams, Topology};

#[test]
fn strongswan_to_strongswan_ping_transfer_capture() {
    require_root();
    let t = Topology::new().expect("topology");
    let cap = Capture::start(&t, "wan").unwrap();
    let b = StrongSwan::start(&t, &t.gw_b, "swan-b", SwanParams::side('b', "aes256gcm16-prfsha256-x25519", "aes256gcm16", false)).unwrap();
    let a = StrongSwan::start(&t, &t.gw_a, "swan-a", SwanParams::side('a', "aes256gcm16-prfsha256-x25519", "aes256gcm16", true)).unwrap();
    a.wait_child_up(UP).unwrap();
    b.wait_child_up(UP).unwrap();
    assert!(a.is_ike_initiator().unwrap());
    assert!(!b.is_ike_initiator().unwrap());
    ping_through(&t);
    transfer_100mb(&t);
    let rep = capture_clean(cap);
    assert!(rep.esp_udp > 1000, "libipsec always UDP-encapsulates: {rep:?}");
    assert_eq!(rep.esp_native, 0);
}
