//! Shared steps of the lab tests. Every step is bounded in time.
#![allow(dead_code)]

use lab::topo::{HOST_B_IP, NET_A, NET_B};
use lab::{check_capture, transfer, Capture, CaptureReport, Topology, XferOpts, XferResult};
use std::time::Duration;

pub const MB: u64 = 1024 * 1024;

/// Time allowed for a tunnel to come up after both peers are running.
pub const UP: Duration = Duration::from_secs(30);

/// Fails fast with a clear message instead of a confusing namespace error.
pub fn require_root() {
    assert!(lab::is_root(), "lab tests need root (network namespaces); run them via `sudo bash scripts/test`");
}

/// Ping host-a -> host-b until it answers (tunnel up end to end), then 5 more must all answer.
pub fn ping_through(topo: &Topology) {
    let took = lab::wait_ping(&topo.host_a, HOST_B_IP, UP).expect("host-a reaches host-b through the tunnel");
    eprintln!("lab: first ping through the tunnel after {took:?}");
    let got = lab::ping(&topo.host_a, HOST_B_IP, 5).expect("ping");
    assert_eq!(got, 5, "all 5 pings host-a -> host-b answered");
}

/// 100 MB host-a -> host-b with matching SHA-256 at both ends.
pub fn transfer_100mb(topo: &Topology) -> XferResult {
    let opts = XferOpts { timeout: Duration::from_secs(240), ..Default::default() };
    let r = transfer(topo, &topo.host_a, &topo.host_b, HOST_B_IP, 100 * MB, &opts).expect("transfer runs");
    r.check_intact(100 * MB).expect("100 MB arrive intact");
    r
}

/// Stops the capture and applies the issue-2 capture assertions.
pub fn capture_clean(cap: Capture) -> CaptureReport {
    let file = cap.finish();
    let rep = check_capture(&file, NET_A, NET_B).expect("tshark runs");
    rep.check_clean().expect("capture of the wan is clean");
    // Large; the report above is what matters.
    let _ = std::fs::remove_file(&file);
    rep
}
