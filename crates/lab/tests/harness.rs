//! Tests of the lab harness itself: topology, teardown (also on panic), transfer tool, and that
//! the capture checker does catch cleartext between the protected networks.

mod common;

use common::*;
use lab::cmd::{in_ns, Proc};
use lab::topo::{GW_A_WAN_IP, GW_B_WAN_IP, HOST_B_IP, NET_A, NET_B};
use lab::{check_capture, transfer, Capture, Topology, XferOpts};
use std::time::Duration;

fn ns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

#[test]
fn topology_routes_wan_but_not_protected_networks() {
    require_root();
    let names;
    {
        let t = Topology::new().expect("topology");
        names = [t.host_a.clone(), t.gw_a.clone(), t.wan.clone(), t.gw_b.clone(), t.host_b.clone()];
        assert!(names.iter().all(|n| ns_exists(n)));
        assert_eq!(lab::ping(&t.gw_a, GW_B_WAN_IP, 2).unwrap(), 2, "gw-a reaches gw-b over the wan bridge");
        assert_eq!(lab::ping(&t.host_a, "10.1.0.1", 2).unwrap(), 2, "host-a reaches its gateway");
        assert_eq!(lab::ping(&t.host_b, "10.2.0.1", 2).unwrap(), 2, "host-b reaches its gateway");
        // Without a tunnel there is no route between the protected networks.
        assert_eq!(lab::ping(&t.host_a, HOST_B_IP, 2).unwrap(), 0);
    }
    assert!(names.iter().all(|n| !ns_exists(n)), "namespaces deleted on drop");
}

#[test]
fn teardown_happens_when_a_test_panics() {
    require_root();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let t = Topology::new().expect("topology");
        let p = Proc::spawn("sleeper", in_ns(&t.gw_a, &["sleep", "600"]), &t.path("sleeper.log")).unwrap();
        tx.send((t.gw_a.clone(), t.dir.clone(), p.pid().unwrap())).unwrap();
        // Keep `p` alive until the panic so that Drop (not normal flow) must kill it.
        let _keep = p;
        panic!("deliberate panic inside a lab test");
    });
    assert!(h.join().is_err(), "the thread panicked");
    let (ns, dir, pid) = rx.recv().unwrap();
    assert!(!ns_exists(&ns), "namespace {ns} removed after panic");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "background pid {pid} killed");
    // The run directory is kept for post-mortem after a failure; remove it here.
    assert!(dir.exists());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn transfer_tool_checks_bytes_and_digest() {
    require_root();
    let t = Topology::new().expect("topology");
    let opts = XferOpts { timeout: Duration::from_secs(60), ..Default::default() };
    let r = transfer(&t, &t.gw_a, &t.gw_b, GW_B_WAN_IP, 20 * MB, &opts).unwrap();
    r.check_intact(20 * MB).unwrap();
    assert_eq!(r.sha_sent.len(), 64);
    assert!(r.check_intact(20 * MB + 1).is_err(), "a wrong byte count is caught");
    // Another seed gives another stream (the digest covers content, not just length).
    let opts2 = XferOpts { seed: 2, port: 5002, ..opts };
    let r2 = transfer(&t, &t.gw_b, &t.gw_a, GW_A_WAN_IP, 20 * MB, &opts2).unwrap();
    r2.check_intact(20 * MB).unwrap();
    assert_ne!(r.sha_sent, r2.sha_sent);
    // Paced sending works (used to stretch a transfer across a rekey): 2 MB at 16 Mbit/s ~ 1 s.
    let opts3 = XferOpts { rate_mbit: Some(16.0), port: 5003, ..Default::default() };
    let r3 = transfer(&t, &t.gw_a, &t.gw_b, GW_B_WAN_IP, 2 * MB, &opts3).unwrap();
    r3.check_intact(2 * MB).unwrap();
    assert!(r3.secs > 0.7, "paced transfer took {} s", r3.secs);
}

/// The checker must fail when protected traffic crosses the wan unencrypted: route the two
/// protected networks over the wan in clear and look.
#[test]
fn capture_check_catches_cleartext() {
    require_root();
    let t = Topology::new().expect("topology");
    let cap = Capture::start(&t, "clear").unwrap();
    lab::cmd::sh(Some(&t.gw_a), &["ip", "route", "add", NET_B, "via", GW_B_WAN_IP], Duration::from_secs(5)).unwrap();
    lab::cmd::sh(Some(&t.gw_b), &["ip", "route", "add", NET_A, "via", GW_A_WAN_IP], Duration::from_secs(5)).unwrap();
    assert_eq!(lab::ping(&t.host_a, HOST_B_IP, 3).unwrap(), 3);
    let file = cap.finish();
    let rep = check_capture(&file, NET_A, NET_B).unwrap();
    assert!(rep.cleartext.len() >= 6, "3 echo requests + 3 replies seen in clear: {rep:?}");
    assert!(rep.check_clean().is_err());
}

/// nftables in the wan namespace (bridge family) can cut the path and restore it.
#[test]
fn wan_nftables_fault_cuts_and_restores_the_path() {
    require_root();
    let t = Topology::new().expect("topology");
    assert_eq!(lab::ping(&t.gw_a, GW_B_WAN_IP, 2).unwrap(), 2);
    t.wan_nft("table bridge lab {\n  chain cut {\n    type filter hook forward priority 0; policy accept;\n    ip protocol icmp drop\n  }\n}\n").unwrap();
    assert_eq!(lab::ping(&t.gw_a, GW_B_WAN_IP, 2).unwrap(), 0, "icmp dropped on the wan bridge");
    t.wan_nft_flush().unwrap();
    assert_eq!(lab::ping(&t.gw_a, GW_B_WAN_IP, 2).unwrap(), 2, "path restored");
}
