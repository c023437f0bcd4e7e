//! Issue 2, lab item 2: holdfast <-> holdfast with native ESP (no NAT, so IP protocol 50) and with
//! forced UDP encapsulation (`crypto map MAP 10 set udp-encapsulation force`): ping, 100 MB with
//! matching SHA-256, and a clean capture that shows the expected encapsulation.

mod common;

use common::*;
use lab::topo::{GW_A_WAN_IP, GW_B_WAN_IP};
use lab::{Capture, HoldfastParams, Suite, Topology};

fn run(force_udp: bool) {
    require_root();
    let t = Topology::new().expect("topology");
    let cap = Capture::start(&t, "wan").unwrap();
    let mut a = HoldfastParams::side('a', Suite::GcmX25519);
    let mut b = HoldfastParams::side('b', Suite::GcmX25519);
    a.force_udp_encap = force_udp;
    b.force_udp_encap = force_udp;
    a.pfs_group = Some(19);
    b.pfs_group = Some(19);
    let (ha, hb) = holdfast_pair(&t, &a, &b);
    ping_through(&t);
    transfer_100mb(&t);
    assert_show_has_peer(&ha, GW_B_WAN_IP);
    assert_show_has_peer(&hb, GW_A_WAN_IP);
    let rep = capture_clean(cap);
    if force_udp {
        assert!(rep.esp_udp > 1000 && rep.esp_native == 0, "forced UDP encapsulation only: {rep:?}");
    } else {
        assert!(rep.esp_native > 1000 && rep.esp_udp == 0, "native ESP only (no NAT on the path): {rep:?}");
    }
}

#[test]
fn holdfast_pair_native_esp() {
    run(false);
}

#[test]
fn holdfast_pair_forced_udp_encapsulation() {
    run(true);
}
