//! Deterministic simulation of holdfast gateways' IKEv2 control planes (test-only).
//!
//! Each simulated gateway is a real [`ike::Endpoint`] driven exactly as the daemon drives it
//! (after every `handle_*`: drain `poll_transmit`, then `poll_event`; sleep until
//! `poll_timeout`), plus a model of the daemon's SA database built from the events alone
//! ([`sad`]). Between the gateways an in-memory network drops, duplicates, delays, reorders
//! and partitions datagrams according to a seeded fault schedule. Time is virtual
//! (`Instant` base + offset): the world jumps to the next timer, delivery or scheduled action.
//!
//! Determinism: the engines get `crypto::SeededRandom` streams and the network its own
//! [`rng::SimRng`], all forked from the scenario seed, so a seed replays the same run
//! (`SIM_SEED=<n> cargo test -p holdfast-sim <scenario>`). Only Diffie-Hellman private
//! values come from the OS (crates/crypto has no seeded DH); they change key bytes, never
//! message sizes, SPIs, nonces, timers or control flow.
//!
//! # Invariants (checked after every step)
//! 1. Decryptability: whenever both sides have a CHILD_SA for a tunnel, each side's current
//!    outbound SA (keys, SPI, algorithms, ESN, selectors) is installed inbound at the other
//!    side, except for at most [`Limits::handover`]. The window exists because a
//!    CREATE_CHILD_SA responder installs (and the daemon switches outbound) before its
//!    response reaches the initiator, and a Delete may be retransmitted after the deleter's
//!    inbound linger ended; both end when the exchange completes or the engine gives up on
//!    it, so the bound is the retransmission span `base * (2^(tries+1) - 1)` plus two
//!    one-way delays.
//! 2. Convergence: once faults stop (end of loss/partitions, last crash/boot/clear), every
//!    tunnel is up (invariant 1 holds in both directions with SAs on both sides) within
//!    [`Limits::converge`] = `max(DPD detection, retransmission span)` (a side notices that
//!    its state is stale) + reinitiation backoff cap with jitter (4.8 s) + one more
//!    retransmission span (the new negotiation may start in the last lossy moment) + 5 s
//!    for clean round trips and collision resolution. DPD detection is
//!    `threshold + retry * (tries + 1)`.
//! 3. Bounded state: per gateway and tunnel at most [`Limits::max_ike_sas`] IKE SAs,
//!    [`Limits::max_child_sas`] CHILD_SAs in the engine, [`Limits::max_installed`] inbound
//!    SAs in the SA database, at every step of runs with hundreds of rekeys.
//!
//!    Derivation: IKE SAs = current + rekey successor (until the old one's Delete
//!    completes) + a duplicate from simultaneous initiation (kept up to 20 s); CHILD_SAs per
//!    IKE SA = current + the one being replaced (grace period) + one more from a §2.8.1
//!    collision, times the two IKE SAs that coexist while a duplicate is resolved; installed
//!    inbound SAs = those plus the ones lingering 5 s after replacement. IKE SAs in
//!    negotiation are bounded separately by the 30 s half-open timeout divided by the
//!    retransmission span.
//! 4. After settling: exactly one ready IKE SA per tunnel, the engine's CHILD_SAs equal the
//!    SAs its events left installed, and every live SA has its live counterpart.
//! 5. Nothing panics; ESP sealed with one side's outbound SA and received on an installed
//!    inbound SA of the same SPI always authenticates; no livelock at one instant; no
//!    `ChildSaUp` on an IKE SA that is being deleted (it would never be reported down).
//! 6. End to end: with data traffic on, once faults stopped (plus [`Limits::esp_recover`])
//!    and a tunnel has been up for a few traffic intervals, each side's ESP (sealed and
//!    opened with the real `esp` code, routed by the SA's encapsulation through the NAT
//!    model) reaches the other.
//!
//! A mismatch whose SA belongs to an IKE SA the receiver no longer has (the receiver
//! abandoned an exchange the sender completed as responder, or deleted the IKE SA) is an
//! *orphan*: the sender only learns it from a liveness check, so it is allowed
//! [`Limits::orphan`] = retransmission span + DPD detection + two delays instead of the
//! handover bound.
//!
//! With the test settings (retransmit base 0.5 s, 3 tries; DPD 10 s / 2 s; delays <= 150 ms)
//! the bounds are: retransmission span 7.5 s; handover 7.9 s; orphan 25.9 s; DPD detection
//! 18 s; convergence 18 + 4.8 + 7.5 + 5 = 35.3 s.
//!
//! The network can put one gateway behind a NAPT ([`Nat`]) whose mappings can be lost
//! ([`Action::NatRebind`]). Data traffic drives `InboundActivity` and `ChildSaBytes` like the
//! daemon's periodic report, and a tunnel without an outbound SA sends the engine an
//! `Initiate` at most once a second (the datapath's acquire).
//!
//! Replay aids: `SIM_SEED=<n>` / `<a>..<b>`, `SIM_SEEDS=<count>`, `SIM_TRACE=<lines>` (trace
//! kept for the failure report, default 60), `SIM_DUMP=1` (print the trace of passing runs),
//! `SIM_EXTRA_SECS=<n>` (run longer).

pub mod rng;
pub mod sad;
pub mod world;

pub use world::{Action, Faults, GatewaySpec, Limits, Nat, Partition, Traffic, World};

use policy::*;
use std::net::IpAddr;
use std::time::Duration;

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("literal address")
}

pub fn net(s: &str, len: u8) -> TrafficSelector {
    TrafficSelector::from_net(Ipv4Net::new(s.parse().expect("literal address"), len), None)
}

/// A LAN-to-LAN tunnel in the shape the config crate produces for the example
/// (AES-GCM-256 / X25519 keeps the simulation fast; CBC/MODP is covered by a scenario).
pub fn tunnel(local: &str, peer: &str, lnet: &str, rnet: &str) -> TunnelPolicy {
    TunnelPolicy {
        name: format!("MAP:{peer}"),
        local_addr: ip(local),
        peer_addr: ip(peer),
        outside_ifname: "outside".into(),
        local_ts: vec![net(lnet, 24)],
        remote_ts: vec![net(rnet, 24)],
        ike_policies: vec![Ikev2Policy {
            priority: 10,
            encryption: vec![Encryption::AesGcm256],
            integrity: vec![Integrity::Null],
            groups: vec![DhGroup::Curve25519],
            prf: vec![Prf::Sha256],
            lifetime: Some(Duration::from_secs(86400)),
        }],
        esp_proposals: vec![IpsecProposal { name: "P1".into(), encryption: vec![Encryption::AesGcm256], integrity: vec![] }],
        pfs: None,
        child_lifetime: Duration::from_secs(3600),
        child_lifetime_kilobytes: None,
        local_psk: Secret("sim-psk".into()),
        remote_psk: Secret("sim-psk".into()),
        dpd: Some(Dpd { threshold: Duration::from_secs(10), retry: Duration::from_secs(2) }),
        nat_t_disable: false,
        force_udp_encap: false,
        connection_type: ConnectionType::Bidirectional,
    }
}

pub fn globals() -> Ikev2Globals {
    Ikev2Globals { retransmit_base: Duration::from_millis(500), retransmit_tries: 3, ..Default::default() }
}

pub const A: &str = "192.0.2.1";
pub const B: &str = "192.0.2.2";
pub const C: &str = "192.0.2.3";

/// Gateway A (10.1.0.0/24) and B (10.2.0.0/24), one tunnel, after `tweak` ran on both
/// tunnel policies (A's first).
pub fn two_gateways(tweak: impl Fn(&mut TunnelPolicy, &mut Ikev2Globals)) -> Vec<GatewaySpec> {
    let (mut ta, mut tb) = (tunnel(A, B, "10.1.0.0", "10.2.0.0"), tunnel(B, A, "10.2.0.0", "10.1.0.0"));
    let (mut ga, mut gb) = (globals(), globals());
    tweak(&mut ta, &mut ga);
    tweak(&mut tb, &mut gb);
    vec![
        GatewaySpec { name: "A".into(), addr: ip(A), tunnels: vec![ta], globals: ga },
        GatewaySpec { name: "B".into(), addr: ip(B), tunnels: vec![tb], globals: gb },
    ]
}

/// Bounds for a world built from `specs` with faults `f` (the loosest gateway decides).
pub fn limits_for(specs: &[GatewaySpec], f: &Faults) -> Limits {
    let md = World::max_delay(f);
    let mut out: Option<Limits> = None;
    for s in specs {
        for t in &s.tunnels {
            let l = Limits::derive(&s.globals, t, md);
            out = Some(match out {
                None => l,
                Some(o) => Limits { handover: o.handover.max(l.handover), orphan: o.orphan.max(l.orphan), converge: o.converge.max(l.converge), ..o },
            });
        }
    }
    out.expect("at least one tunnel")
}

/// Seeds to run: `SIM_SEED=<n>` (or `<a>..<b>`) replays exactly those; otherwise
/// `0..default` (`SIM_SEEDS=<count>` overrides the count).
pub fn seeds(default: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("SIM_SEED") {
        let s = s.trim();
        if let Some((a, b)) = s.split_once("..") {
            if let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) {
                return (a..b).collect();
            }
        }
        if let Ok(n) = s.parse() {
            return vec![n];
        }
        panic!("SIM_SEED must be a number or a range a..b, got {s:?}");
    }
    let n = std::env::var("SIM_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    (0..n).collect()
}

/// What one seed's run produced, for aggregate assertions (e.g. that collisions happened).
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub stats: world::Stats,
}

/// Runs `f` for every seed of [`seeds`]; panics (after trying all seeds) listing every
/// failing seed with its replay command. A panic inside the engine is caught and reported
/// with its seed like any other violation.
pub fn run_seeds(scenario: &str, default: u64, f: impl Fn(u64) -> Result<Outcome, String>) -> Vec<Outcome> {
    let seeds = seeds(default);
    let mut failures = Vec::new();
    let mut outcomes = Vec::new();
    // Wall time of the seeds, for the suite's time budget; never fed to an engine.
    #[allow(clippy::disallowed_methods)]
    let started = std::time::Instant::now();
    for &seed in &seeds {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(seed)));
        match r {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(msg)) => failures.push((seed, msg)),
            Err(p) => {
                let what = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "non-string panic".into());
                failures.push((
                    seed,
                    format!("scenario {scenario} seed {seed}: PANIC: {what}\n  replay: SIM_SEED={seed} cargo test -p holdfast-sim {scenario}\n"),
                ));
            }
        }
    }
    eprintln!(
        "sim {scenario}: {} seeds, {} failed, {:.2?} wall",
        seeds.len(),
        failures.len(),
        started.elapsed()
    );
    eprintln!("sim {scenario}: {}", summary(&outcomes));
    if !failures.is_empty() {
        let list: Vec<String> = failures.iter().map(|(s, _)| s.to_string()).collect();
        let mut msg = format!("scenario {scenario}: {} of {} seeds failed: [{}]\n", failures.len(), seeds.len(), list.join(", "));
        for (_, m) in failures.iter().take(3) {
            msg.push_str(m);
        }
        panic!("{msg}");
    }
    outcomes
}

/// One line of aggregate statistics over the passing seeds.
pub fn summary(outcomes: &[Outcome]) -> String {
    let sum = |f: &dyn Fn(&world::Stats) -> u64| outcomes.iter().map(|o| f(&o.stats)).sum::<u64>();
    let max = |f: &dyn Fn(&world::Stats) -> f64| outcomes.iter().map(|o| f(&o.stats)).fold(0.0f64, f64::max);
    let mut reasons: std::collections::BTreeMap<String, u64> = Default::default();
    for o in outcomes {
        for (k, v) in &o.stats.ike_down_reasons {
            *reasons.entry(k.clone()).or_default() += v;
        }
    }
    let encap: u64 = outcomes.iter().map(|o| o.stats.encap_disagreements).sum();
    let note = outcomes.iter().flat_map(|o| o.stats.notes.first()).next().cloned().unwrap_or_default();
    format!(
        "encap disagreements {encap} ({note}), IkeSaDown reasons {reasons:?}, IKE datagrams {} (lost {}, dup {}), ESP {} ok / {} no-SA / {} lost, IKE SAs up {}, CHILD_SAs up {} (rekeys {}), IKE rekeys {}, crossing CREATE_CHILD_SA {}, crossing IKE rekeys {}, delayed outbound switches {}, longest handover {:.2} s, longest orphan {:.2} s, longest replaced-SA life {:.2} s, slowest convergence {:.2} s",
        sum(&|s| s.ike_sent),
        sum(&|s| s.ike_dropped),
        sum(&|s| s.ike_duplicated),
        sum(&|s| s.esp_ok),
        sum(&|s| s.esp_no_sa),
        sum(&|s| s.esp_dropped),
        sum(&|s| s.ike_ups),
        sum(&|s| s.child_ups),
        sum(&|s| s.child_rekeys),
        sum(&|s| s.ike_rekeys),
        sum(&|s| s.crossing_create_child),
        sum(&|s| s.crossing_ike_rekeys),
        sum(&|s| s.outbound_switches),
        max(&|s| s.longest_handover),
        max(&|s| s.longest_orphan),
        max(&|s| s.max_replaced_lifetime),
        max(&|s| s.converged_after.unwrap_or(0.0)),
    )
}
