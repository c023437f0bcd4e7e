//! Issue 2, lab item 4: the peer daemon is SIGKILLed (no DELETE sent, stale SAs left on the
//! survivor) and restarted; the tunnel must carry traffic again within 10 s by itself.
#![allow(clippy::disallowed_methods)] // the lab measures wall-clock recovery times

mod common;

use common::*;
use lab::topo::HOST_B_IP;
use lab::{Holdfast, HoldfastParams, StrongSwan, Suite, SwanParams, Topology};
use std::time::{Duration, Instant};

const BACK_WITHIN: Duration = Duration::from_secs(10);

/// Restart happened at `since`; ping must get through before `since + 10 s`, then 5 of 5.
fn assert_back(t: &Topology, since: Instant) {
    let left = BACK_WITHIN.saturating_sub(since.elapsed());
    let r = lab::wait_ping(&t.host_a, HOST_B_IP, left);
    let took = since.elapsed();
    assert!(r.is_ok() && took <= BACK_WITHIN, "tunnel back after restart within 10 s (took {took:?}, {r:?})");
    eprintln!("lab: tunnel back {took:?} after the restart began");
    assert_eq!(lab::ping(&t.host_a, HOST_B_IP, 5).unwrap(), 5);
}

#[test]
fn holdfast_peer_sigkill_and_restart() {
    require_root();
    let t = Topology::new().expect("topology");
    let a = HoldfastParams::side('a', Suite::GcmX25519);
    let b = HoldfastParams::side('b', Suite::GcmX25519);
    let (_ha, mut hb) = holdfast_pair(&t, &a, &b);
    ping_through(&t);
    hb.kill_hard();
    let since = Instant::now();
    hb.restart().expect("holdfast on gw-b restarts");
    assert_back(&t, since);
}

#[test]
fn strongswan_peer_sigkill_and_restart() {
    require_root();
    let t = Topology::new().expect("topology");
    let (ike, esp) = Suite::GcmX25519.swan(false);
    let mut swan = StrongSwan::start(&t, &t.gw_b, "swan-b", SwanParams::side('b', &ike, &esp, true)).unwrap();
    let _hf = Holdfast::start(&t, &t.gw_a, "hf-a", &HoldfastParams::side('a', Suite::GcmX25519)).unwrap();
    swan.wait_child_up(UP).unwrap();
    ping_through(&t);
    swan.kill_hard();
    let since = Instant::now();
    swan.restart().expect("charon restarts");
    assert_back(&t, since);
}

#[test]
fn holdfast_sigkill_and_restart_against_strongswan() {
    require_root();
    let t = Topology::new().expect("topology");
    let (ike, esp) = Suite::GcmX25519.swan(false);
    let swan = StrongSwan::start(&t, &t.gw_b, "swan-b", SwanParams::side('b', &ike, &esp, false)).unwrap();
    let mut hf = Holdfast::start(&t, &t.gw_a, "hf-a", &HoldfastParams::side('a', Suite::GcmX25519)).unwrap();
    swan.wait_child_up(UP).unwrap();
    ping_through(&t);
    hf.kill_hard();
    let since = Instant::now();
    hf.restart().expect("holdfast restarts");
    assert_back(&t, since);
}
