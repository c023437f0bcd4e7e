//! Issue 2, lab item 3: CHILD_SA and IKE SA rekeys forced by short lifetimes during a transfer:
//! no byte lost (SHA-256 match), no gap longer than 1 s at the receiver. The capture proves the
//! rekeys happened (new ESP SPIs, a new IKE SA SPI pair) and stays clean.
//!
//! holdfast's configuration follows the ASA ranges (lifetime seconds >= 120, kilobytes >= 10), so
//! holdfast-initiated CHILD_SA rekeys are forced by a kilobyte lifetime and its IKE rekey by a
//! 120 s IKE lifetime; strongSwan accepts any `rekey_time`, so the strongSwan test makes the peer
//! initiate both kinds within seconds.

mod common;

use common::*;
use lab::{Capture, Holdfast, HoldfastParams, StrongSwan, Suite, SwanParams, Topology};

use std::time::Duration;

#[test]
fn child_rekey_by_kilobytes_holdfast_pair() {
    require_root();
    let t = Topology::new().expect("topology");
    let cap = Capture::start(&t, "wan").unwrap();
    let mut a = HoldfastParams::side('a', Suite::GcmX25519);
    let mut b = HoldfastParams::side('b', Suite::GcmX25519);
    a.pfs_group = Some(19);
    b.pfs_group = Some(19);
    // 20 MB per CHILD_SA: a 100 MB transfer crosses several rekeys.
    a.child_lifetime_kilobytes = Some(20_000);
    let (_ha, _hb) = holdfast_pair(&t, &a, &b);
    ping_through(&t);
    // Paced over ~25 s so the rekeys happen while data is in flight, not in a burst at the end.
    paced_transfer_no_stall(&t, 100 * MB, 25.0);
    let rep = capture_clean(cap);
    let new = rep.esp_spis_new_after_first(2.0);
    assert!(new >= 4, "at least two CHILD_SA rekeys during the transfer ({new} new SPIs): {:?}", rep.esp_spi_first_seen);
}

#[test]
fn ike_and_child_rekeys_initiated_by_strongswan() {
    require_root();
    let t = Topology::new().expect("topology");
    let cap = Capture::start(&t, "wan").unwrap();
    let (ike, esp) = Suite::GcmX25519.swan(true);
    let mut sp = SwanParams::side('b', &ike, &esp, false);
    sp.ike_rekey = Some(Duration::from_secs(15));
    sp.child_rekey = Some(Duration::from_secs(8));
    let swan = StrongSwan::start(&t, &t.gw_b, "swan-b", sp).unwrap();
    let mut p = HoldfastParams::side('a', Suite::GcmX25519);
    p.pfs_group = Some(31);
    let _hf = Holdfast::start(&t, &t.gw_a, "hf-a", &p).unwrap();
    swan.wait_child_up(UP).unwrap();
    ping_through(&t);
    let ids_before = swan.ike_sa_ids().unwrap();
    paced_transfer_no_stall(&t, 48 * MB, 40.0);
    let ids_after = swan.ike_sa_ids().unwrap();
    let rep = capture_clean(cap);
    assert!(
        ids_after.iter().max() > ids_before.iter().max(),
        "strongSwan's IKE SA was replaced during the transfer: {ids_before:?} -> {ids_after:?}\n{}",
        swan.list_sas().unwrap_or_default()
    );
    let new = rep.esp_spis_new_after_first(2.0);
    assert!(new >= 4, "at least two CHILD_SA rekeys during the transfer ({new} new SPIs): {:?}", rep.esp_spi_first_seen);
}

#[test]
fn ike_rekey_by_lifetime_holdfast_pair() {
    require_root();
    let t = Topology::new().expect("topology");
    let cap = Capture::start(&t, "wan").unwrap();
    let mut a = HoldfastParams::side('a', Suite::CbcSha256Modp2048);
    let mut b = HoldfastParams::side('b', Suite::CbcSha256Modp2048);
    // ASA minimum IKE lifetime; rekeyed before it runs out.
    a.ike_lifetime_seconds = 120;
    b.ike_lifetime_seconds = 120;
    let (ha, hb) = holdfast_pair(&t, &a, &b);
    ping_through(&t);
    let before: Vec<_> = ha.ike_sas().unwrap().into_iter().map(|s| s.local_spi).collect();
    assert!(!before.is_empty(), "gw-a lists its IKE SA");
    paced_transfer_no_stall(&t, 100 * MB, 150.0);
    capture_clean(cap);
    // After 150 s with a 120 s lifetime: every IKE SA on both sides is younger than its
    // lifetime, and gw-a's is a new one.
    for h in [&ha, &hb] {
        let now = h.ike_sas().unwrap();
        assert!(!now.is_empty(), "{} still has an IKE SA", h.name);
        for s in &now {
            assert!(s.active_secs <= 120, "{}: IKE SA {} active {} s past its 120 s lifetime", h.name, s.local_spi, s.active_secs);
        }
        if h.name == "hf-a" {
            assert!(now.iter().any(|s| !before.contains(&s.local_spi)), "gw-a's IKE SA was rekeyed: {before:?} -> {now:?}");
        }
    }
}
