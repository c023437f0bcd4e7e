//! Issue 2: "While no SA exists for protected traffic, nothing leaves the outside interface in
//! clear." The gateways get default routes over the wan (so the kernel *would* forward protected
//! traffic in clear without holdfast), then the SAs are deleted under a steady ping while holdfast
//! keeps running; the capture of the wan must show no cleartext 10.1/24 <-> 10.2/24 packet.

mod common;

use common::*;
use lab::cmd::{in_ns, Proc};
use lab::topo::HOST_B_IP;
use lab::{Capture, HoldfastParams, Suite, Topology};
use std::time::Duration;

#[test]
fn nothing_in_clear_while_sas_are_deleted_and_renegotiated() {
    require_root();
    let t = Topology::new().expect("topology");
    t.add_wan_default_routes().unwrap();
    // Proof that the check can fail: without holdfast, protected traffic crosses in clear.
    assert_eq!(lab::ping(&t.host_a, HOST_B_IP, 2).unwrap(), 2, "clear forwarding over the default routes");
    let (ha, hb) = holdfast_pair(&t, &HoldfastParams::side('a', Suite::GcmX25519), &HoldfastParams::side('b', Suite::GcmX25519));
    // Capture from the moment both daemons answer on their control sockets.
    let cap = Capture::start(&t, "wan").unwrap();
    ping_through(&t);
    let mut pinger = Proc::spawn(
        "ping -i 0.05",
        in_ns(&t.host_a, &["ping", "-n", "-q", "-i", "0.05", "-w", "12", HOST_B_IP]),
        &t.path("pinger.log"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    ha.clear("crypto ipsec sa").expect("clear crypto ipsec sa on gw-a");
    std::thread::sleep(Duration::from_secs(3));
    hb.clear("crypto ikev2 sa").expect("clear crypto ikev2 sa on gw-b");
    std::thread::sleep(Duration::from_secs(3));
    let back = lab::wait_ping(&t.host_a, HOST_B_IP, UP);
    pinger.wait_exit(Duration::from_secs(15));
    drop(pinger);
    eprintln!("pinger: {}", lab::cmd::tail(&t.path("pinger.log"), 3));
    let rep = capture_clean(cap);
    assert!(rep.cleartext.is_empty());
    back.expect("tunnel renegotiated after the SAs were cleared");
}

/// A crashed daemon must not turn the gateway into a cleartext router for the protected
/// networks (an ASA that loses its SAs drops crypto-ACL traffic; it never sends it in clear).
#[test]
fn nothing_in_clear_after_holdfast_is_sigkilled() {
    require_root();
    let t = Topology::new().expect("topology");
    t.add_wan_default_routes().unwrap();
    let (mut ha, _hb) = holdfast_pair(&t, &HoldfastParams::side('a', Suite::GcmX25519), &HoldfastParams::side('b', Suite::GcmX25519));
    ping_through(&t);
    let cap = Capture::start(&t, "wan").unwrap();
    ha.kill_hard();
    // Protected traffic while gw-a's daemon is down (and then back up).
    let _ = lab::ping(&t.host_a, HOST_B_IP, 5).unwrap();
    ha.restart().expect("holdfast restarts");
    lab::wait_ping(&t.host_a, HOST_B_IP, UP).expect("tunnel back");
    let rep = capture_clean(cap);
    assert!(rep.cleartext.is_empty());
}
