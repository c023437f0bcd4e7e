//! Shared steps of the lab tests. Every step is bounded in time.
#![allow(dead_code)]
#![allow(clippy::disallowed_methods)] // the lab measures wall-clock recovery times

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

use lab::{Holdfast, HoldfastParams};

/// Starts holdfast on gw-b, then on gw-a (b first so a's first IKE_SA_INIT finds a listener).
pub fn holdfast_pair(t: &Topology, a: &HoldfastParams, b: &HoldfastParams) -> (Holdfast, Holdfast) {
    let hb = Holdfast::start(t, &t.gw_b, "hf-b", b).expect("holdfast on gw-b starts");
    let ha = Holdfast::start(t, &t.gw_a, "hf-a", a).expect("holdfast on gw-a starts");
    (ha, hb)
}

/// `show crypto ipsec sa` names the peer once a CHILD_SA is up (ASA layout `current_peer: IP`).
pub fn assert_show_has_peer(h: &Holdfast, peer: &str) {
    let s = h.show("crypto ipsec sa").expect("show crypto ipsec sa");
    assert!(s.contains(&format!("current_peer: {peer}")), "{}: show crypto ipsec sa lacks peer {peer}:\n{s}", h.name);
}

/// A transfer paced to last about `secs`, checked intact and without a stall longer than 1 s.
pub fn paced_transfer_no_stall(t: &Topology, bytes: u64, secs: f64) -> XferResult {
    let rate = bytes as f64 * 8.0 / secs / 1e6;
    let opts = XferOpts { rate_mbit: Some(rate), timeout: Duration::from_secs_f64(secs * 1.5 + 60.0), ..Default::default() };
    let r = transfer(t, &t.host_a, &t.host_b, HOST_B_IP, bytes, &opts).expect("transfer runs");
    r.check_intact(bytes).expect("no byte lost across the rekeys");
    assert!(r.max_stall < Duration::from_secs(1), "longest stall {:?} must stay under 1 s", r.max_stall);
    r
}
