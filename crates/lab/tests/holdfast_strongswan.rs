//! Issue 2, lab item 1: holdfast <-> strongSwan 5.9.8, holdfast as IKE initiator and as responder,
//! with aes256gcm16/x25519 and aes256-sha256/modp2048: ping, a 100 MB transfer whose SHA-256
//! matches at both ends, and a clean capture of the wan (item 5).
//! strongSwan's libipsec always uses UDP 4500, so these tunnels are ESP-in-UDP.

mod common;

use common::*;
use lab::topo::GW_B_WAN_IP;
use lab::{Capture, Holdfast, HoldfastParams, StrongSwan, Suite, SwanParams, Topology};

/// holdfast on gw-a, strongSwan on gw-b. `hf_initiates`: holdfast bidirectional and strongSwan a
/// pure responder; otherwise holdfast `answer-only` and strongSwan `start_action = start`.
fn run(suite: Suite, hf_initiates: bool) {
    require_root();
    let t = Topology::new().expect("topology");
    let cap = Capture::start(&t, "wan").unwrap();
    let (ike, esp) = suite.swan(false);
    let swan = StrongSwan::start(&t, &t.gw_b, "swan-b", SwanParams::side('b', &ike, &esp, !hf_initiates)).unwrap();
    let mut p = HoldfastParams::side('a', suite);
    if !hf_initiates {
        p.connection_type = Some("answer-only".into());
    }
    let hf = Holdfast::start(&t, &t.gw_a, "hf-a", &p).unwrap();
    swan.wait_child_up(UP).unwrap();
    assert_eq!(swan.is_ike_initiator().unwrap(), !hf_initiates, "IKE roles as configured");
    ping_through(&t);
    transfer_100mb(&t);
    assert_show_has_peer(&hf, GW_B_WAN_IP);
    let rep = capture_clean(cap);
    assert!(rep.esp_udp > 1000, "ESP-in-UDP with libipsec: {rep:?}");
}

#[test]
fn holdfast_initiator_strongswan_aes256gcm16_x25519() {
    run(Suite::GcmX25519, true);
}

#[test]
fn holdfast_initiator_strongswan_aes256_sha256_modp2048() {
    run(Suite::CbcSha256Modp2048, true);
}

#[test]
fn holdfast_responder_strongswan_aes256gcm16_x25519() {
    run(Suite::GcmX25519, false);
}

#[test]
fn holdfast_responder_strongswan_aes256_sha256_modp2048() {
    run(Suite::CbcSha256Modp2048, false);
}
