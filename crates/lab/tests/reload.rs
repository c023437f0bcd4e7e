//! Issue 4, "Reload without loss": `holdfast reload` and SIGHUP apply a changed configuration
//! while a download runs through the tunnel, and what the change does not touch keeps running.
//!
//! holdfast on both gateways, `sysopt connection preserve-vpn-flows`, host-b downloads a paced
//! file from host-a (one request, one TCP connection). gw-b knows a second protected network
//! (10.3.0.0/24 behind it, crypto map entry 20, answer-only) from the start and accepts two ESP
//! proposals for entry 10. In the middle of the download, on gw-a:
//! 1. `holdfast reload` of its own file, now with crypto map entry 20 (a second tunnel to the
//!    same peer), other timeouts and other logging: tunnel 1 keeps its SPIs, tunnel 2 comes up
//!    (ping to 10.3.0.10), `show running-config timeout` / `show logging` show the new values;
//! 2. `holdfast reload --config BROKEN`: refused with FILE:LINE:COL, exit status 1, running
//!    configuration and SPIs unchanged;
//! 3. SIGHUP after changing tunnel 1's ESP proposal in the file: tunnel 1 gets new SPIs and the
//!    new suite, tunnel 2 keeps its SPIs;
//! 4. after the download, `holdfast reload` with entry 20 gone: its SAs are deleted at both
//!    ends, its routes and blackhole route are removed, tunnel 1 keeps its SPIs.
//!
//! The download completes with the right SHA-256 as the single request the server saw.
//! The download never stalls 5 s or more. The wan capture holds no cleartext between the
//! protected networks. Wall time ~40 s.
#![allow(clippy::disallowed_methods)] // the lab measures wall-clock times

use lab::cmd::{run, sh, wait_for};
use lab::scenario::{PeerKind, Scenario, ScenarioOpts};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

const NET3_HOST: &str = "10.3.0.10";
const T: Duration = Duration::from_secs(10);

/// The second protected network on gw-b (answer-only: gw-a's reload brings it up).
fn gw_b_extra() -> Vec<String> {
    [
        "access-list L2L3 extended permit ip 10.3.0.0 255.255.255.0 10.1.0.0 255.255.255.0",
        "crypto map MAP 20 match address L2L3",
        "crypto map MAP 20 set peer 192.0.2.1",
        "crypto map MAP 20 set ikev2 ipsec-proposal P1",
        "crypto map MAP 20 set connection-type answer-only",
        // Entry 10 accepts a second suite (gw-a switches to it in step 3).
        "crypto ipsec ikev2 ipsec-proposal P2",
        " protocol esp encryption aes-gcm",
        " protocol esp integrity null",
        "crypto map MAP 10 set ikev2 ipsec-proposal P1 P2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// gw-a's file for step 1: entry 20, new timeouts, other logging; tunnel 1 untouched.
fn step1(base: &str) -> String {
    format!(
        "{base}access-list L2L3 extended permit ip 10.1.0.0 255.255.255.0 10.3.0.0 255.255.255.0\n\
         crypto map MAP 20 match address L2L3\n\
         crypto map MAP 20 set peer 192.0.2.2\n\
         crypto map MAP 20 set ikev2 ipsec-proposal P1\n\
         timeout conn 2:00:00 udp 0:03:00\n\
         logging buffered debugging\n\
         logging trap notifications\n"
    )
}

/// SPIs (outbound, inbound) of one crypto map entry in `show crypto ipsec sa` (draining SAs
/// included: they are listed until their inbound half is removed).
fn spis(show: &str, seq: u32) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut in_entry = false;
    let mut outbound = None;
    for line in show.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Crypto map tag:") {
            in_entry = rest.contains(&format!("seq num: {seq},"));
        } else if let Some(v) = line.strip_prefix("current outbound spi:") {
            outbound = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("current inbound spi :") {
            if let (true, Some(o)) = (in_entry, outbound.take()) {
                out.insert((o, v.trim().to_string()));
            }
        }
    }
    out
}

/// The text of one crypto map entry's blocks in `show crypto ipsec sa`.
fn entry(show: &str, seq: u32) -> String {
    let mut out = String::new();
    let mut in_entry = false;
    for line in show.lines() {
        if let Some(rest) = line.trim().strip_prefix("Crypto map tag:") {
            in_entry = rest.contains(&format!("seq num: {seq},"));
        }
        if in_entry {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn reload_cmd(s: &Scenario, file: Option<&std::path::Path>) -> lab::cmd::Output {
    let mut c = Command::new(&s.gw_a.bin);
    c.arg("reload").arg("--control").arg(&s.gw_a.control);
    if let Some(f) = file {
        c.arg("--config").arg(f);
    }
    run(&mut c, Duration::from_secs(20)).expect("holdfast reload runs")
}

#[test]
fn reload_keeps_untouched_tunnels_and_flows() {
    assert!(lab::is_root(), "lab tests need root; run them via `sudo bash scripts/test`");
    let t0 = Instant::now();
    let mut o = ScenarioOpts::new(PeerKind::Holdfast, true);
    // 16 MiB at 8 Mbit/s: ~17 s, long enough to hold all three reloads.
    o.blob_len = 16 * 1024 * 1024;
    o.rate_mbit = Some(8.0);
    o.extra_b = gw_b_extra();
    let mut s = Scenario::new(o).expect("scenario lab starts");
    // 10.3.0.10 lives on host-b; gw-b routes that network to it.
    sh(Some(&s.topo.host_b), &["ip", "addr", "add", &format!("{NET3_HOST}/32"), "dev", "eth0"], T).expect("address on host-b");
    sh(Some(&s.topo.gw_b), &["ip", "route", "add", "10.3.0.0/24", "via", lab::topo::HOST_B_IP], T).expect("route on gw-b");
    // Before the reload gw-a has no policy for it: the packets must not leave anywhere.
    assert_eq!(lab::ping(&s.topo.host_a, NET3_HOST, 2).expect("ping"), 0, "10.3.0.10 reachable before the reload?");

    // Both sides initiate at start: the duplicate IKE SA and its CHILD_SA go away within a few
    // seconds (then the replaced inbound SA lingers 5 s). Start from one SA per tunnel.
    let t1 = wait_for("tunnel 1 settled on one CHILD_SA", Duration::from_secs(20), Duration::from_millis(200), || {
        let v = spis(&s.gw_a.show("crypto ipsec sa").ok()?, 10);
        (v.len() == 1).then_some(v)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics()));
    let dl = s.start_download("dl").expect("download starts");
    dl.wait_bytes(1024 * 1024, Duration::from_secs(20)).unwrap_or_else(|e| panic!("download never got going: {e}\n{}", s.diagnostics()));
    let before = s.gw_a.show("crypto ipsec sa").expect("show");
    assert_eq!(spis(&before, 10), t1, "tunnel 1 changed SAs on its own:\n{before}");

    // 1. A second tunnel, timeouts and logging; tunnel 1 untouched.
    let base = std::fs::read_to_string(&s.gw_a.config).expect("read gw-a config");
    std::fs::write(&s.gw_a.config, step1(&base)).expect("write gw-a config");
    let r = reload_cmd(&s, None);
    eprintln!("lab: reload 1:\n{}{}", r.stdout, r.stderr);
    assert!(r.success(), "reload 1 refused:\n{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("tunnels unchanged (SAs and flows kept): MAP:10"), "{}", r.stdout);
    assert!(r.stdout.contains("tunnels added: MAP:20"), "{}", r.stdout);
    assert!(r.stdout.contains("timeout") && r.stdout.contains("logging"), "{}", r.stdout);
    let took = lab::wait_ping(&s.topo.host_a, NET3_HOST, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("tunnel 2 did not come up: {e}\n{}", s.diagnostics()));
    eprintln!("lab: tunnel 2 carries ping {took:?} after the reload");
    let after1 = s.gw_a.show("crypto ipsec sa").expect("show");
    assert_eq!(spis(&after1, 10), t1, "tunnel 1's SPIs changed by a reload that did not touch it:\n{after1}");
    let t2 = spis(&after1, 20);
    assert_eq!(t2.len(), 1, "tunnel 2 has one SA:\n{after1}");
    let run_timeout = s.gw_a.show("running-config timeout").expect("show run timeout");
    assert!(run_timeout.contains("conn 2:00:00") && run_timeout.contains("udp 0:03:00"), "{run_timeout}");
    let logging = s.gw_a.show("logging").expect("show logging");
    assert!(logging.contains("notifications"), "trap level not applied:\n{}", &logging[..logging.len().min(600)]);
    assert!(logging.contains("%ASA-5-111005:"), "no 111005 for the reload");
    assert!(dl.bytes() < s.blob.len, "the download finished before the reloads were done: make it longer");

    // 2. A broken file: refused with FILE:LINE:COL, nothing changes.
    let good_run = s.gw_a.show("running-config").expect("show run");
    let broken = s.topo.path("hf-a-broken.conf");
    let good = std::fs::read_to_string(&s.gw_a.config).expect("read");
    let bad_line = good.lines().count() + 1;
    std::fs::write(&broken, format!("{good}crypto map MAP 20 set peer not-an-address\n")).expect("write broken");
    let r = reload_cmd(&s, Some(&broken));
    eprintln!("lab: reload 2 (broken):\n{}{}", r.stdout, r.stderr);
    assert!(!r.success(), "a broken configuration was accepted");
    let loc = format!("{}:{bad_line}:", broken.display());
    assert!(r.stdout.contains(&loc) && r.stdout.contains(": error:"), "no FILE:LINE:COL diagnostic ({loc}) in:\n{}", r.stdout);
    assert!(r.stdout.contains("refused; the running configuration is unchanged"), "{}", r.stdout);
    assert_eq!(s.gw_a.show("running-config").expect("show run"), good_run, "running-config changed by a refused reload");
    let after2 = s.gw_a.show("crypto ipsec sa").expect("show");
    assert_eq!((spis(&after2, 10), spis(&after2, 20)), (t1.clone(), t2.clone()), "SAs changed by a refused reload");
    assert!(s.gw_a.show("logging").expect("show logging").contains("%ASA-2-111004:"), "no 111004 for the refusal");

    // 3. Tunnel 1's proposal changes; SIGHUP (what systemd's ExecReload sends).
    let changed = good
        .replace("crypto map MAP 10 set ikev2 ipsec-proposal P1\n", "crypto map MAP 10 set ikev2 ipsec-proposal P2\n")
        + "crypto ipsec ikev2 ipsec-proposal P2\n protocol esp encryption aes-gcm\n protocol esp integrity null\n";
    assert_ne!(changed, good);
    std::fs::write(&s.gw_a.config, &changed).expect("write gw-a config");
    let pid = s.gw_a.pid().expect("gw-a pid").to_string();
    let bytes_at_rekey = dl.bytes();
    run(Command::new("kill").args(["-HUP", &pid]), T).expect("kill -HUP");
    let fresh = wait_for("tunnel 1 re-established with new SPIs", Duration::from_secs(15), Duration::from_millis(100), || {
        let now = spis(&s.gw_a.show("crypto ipsec sa").ok()?, 10);
        let new: BTreeSet<_> = now.difference(&t1).cloned().collect();
        (!new.is_empty()).then_some(new)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics()));
    eprintln!("lab: tunnel 1 new SPIs {fresh:?} (were {t1:?})");
    let after3 = s.gw_a.show("crypto ipsec sa").expect("show");
    assert_eq!(spis(&after3, 20), t2, "tunnel 2 was not touched by the proposal change:\n{after3}");
    // The new suite (P2 = AES-GCM-128) is in use for tunnel 1, the old one still for tunnel 2.
    assert!(entry(&after3, 10).contains("transform: esp-aes-gcm esp-null-hmac"), "tunnel 1 not on P2:\n{after3}");
    assert!(entry(&after3, 20).contains("transform: esp-aes-gcm-256 esp-null-hmac"), "{after3}");
    assert!(bytes_at_rekey < s.blob.len, "the download ended before the re-key: make it longer");

    let res = dl.wait(Duration::from_secs(60)).unwrap_or_else(|e| panic!("download did not finish: {e}\n{}", s.diagnostics()));
    res.check_intact(&s.blob).unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics()));
    s.server.check_one_request(&res).unwrap_or_else(|e| panic!("{e}"));
    let longest = res.samples.windows(2).map(|w| w[1].0 - w[0].0).fold(0.0, f64::max);
    eprintln!("lab: download intact, one request; longest gap between progress samples {longest:.2} s");
    // Re-establishing tunnel 1 is a Delete and one CREATE_CHILD_SA exchange; the preserved
    // connection waits for it, it does not start over.
    assert!(longest < 5.0, "the download stalled {longest:.2} s");
    let logging = s.gw_a.show("logging").expect("show logging");
    assert!(logging.contains("User 'SIGHUP' executed the 'reload config"), "no 111008 for SIGHUP");
    assert!(logging.matches("%ASA-5-111005:").count() >= 2, "SIGHUP reload did not complete");

    // 4. Entry 20 removed again: its SAs are deleted and its network is no longer reachable;
    // tunnel 1 is not touched.
    let t1_now = spis(&s.gw_a.show("crypto ipsec sa").expect("show"), 10);
    // The file as in step 3, without step 1's additions.
    let without_20 = base.replace("crypto map MAP 10 set ikev2 ipsec-proposal P1\n", "crypto map MAP 10 set ikev2 ipsec-proposal P2\n")
        + "crypto ipsec ikev2 ipsec-proposal P2\n protocol esp encryption aes-gcm\n protocol esp integrity null\n";
    std::fs::write(&s.gw_a.config, without_20).expect("write gw-a config");
    let r = reload_cmd(&s, None);
    eprintln!("lab: reload 4:\n{}{}", r.stdout, r.stderr);
    assert!(r.success() && r.stdout.contains("tunnels removed: MAP:20"), "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("tunnels unchanged (SAs and flows kept): MAP:10"), "{}", r.stdout);
    assert_eq!(lab::ping(&s.topo.host_a, NET3_HOST, 2).expect("ping"), 0, "10.3.0.10 still reachable after its tunnel was removed");
    let routes = sh(Some(&s.topo.gw_a), &["ip", "route", "show", "10.3.0.0/24"], T).expect("ip route").stdout;
    assert!(routes.trim().is_empty(), "routes for the removed network left behind: {routes}");
    assert!(!routes.contains("dev hf0"), "route into the TUN left behind: {routes}");
    wait_for("the peer drops tunnel 2", Duration::from_secs(10), Duration::from_millis(200), || {
        let b = s.gw_b.as_ref()?.show("crypto ipsec sa").ok()?;
        spis(&b, 20).is_empty().then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics()));
    let after4 = spis(&s.gw_a.show("crypto ipsec sa").expect("show"), 10);
    assert!(after4.is_subset(&t1_now) && !after4.is_empty(), "tunnel 1 touched by removing tunnel 2: {after4:?} vs {t1_now:?}");

    let rep = s.finish_capture().expect("tshark dissects the wan capture");
    rep.check_clean().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("lab: reload: passed in {:.1} s", t0.elapsed().as_secs_f64());
}
