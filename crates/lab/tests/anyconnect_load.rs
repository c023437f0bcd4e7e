//! Issue 5, many users at once: 500 concurrent AnyConnect sessions against the real daemon
//! (`holdfast run` from an ASA configuration) with none dropped, while two real openconnect
//! 9.01 clients transfer data and a flood of 300 stalled TLS handshakes hits the listener.
//!
//! ```text
//!  client (openconnect a) 203.0.113.10 ──┐
//!  c2     (openconnect b) 198.51.100.10 ─┼─ [gw: holdfast run] ── server 10.1.0.10 (ping target,
//!  ld     (lab-acload)    192.0.2.10 ────┘                          lab-xfer ends)
//! ```
//!
//! lab-acload logs 500 sessions in (496 by client certificate through the `CERT` tunnel group,
//! 4 by password through `RA`: aggregate-auth XML, cookie, CONNECT, CSTP; 50 of the certificate
//! sessions also bring up PSK-NEGOTIATE DTLS and probe over it), holds them for
//! 25 s with one ICMP echo per session and second to the server (each reply must come back
//! through the same session), answers DPD, and after setup keeps 300 TCP connections open to
//! the listener without sending a byte (from a second address) and one more login is timed
//! inside that flood. Checked: every session up, `show vpn-sessiondb
//! anyconnect` lists 502 sessions (the 500 and the two real clients), every probe answered
//! (at least half of the DTLS sessions' replies over DTLS), no session dropped, the login
//! inside the flood completes, both real clients' transfers complete with matching SHA-256
//! and neither client reconnects. Prints the setup rate and the daemon's RSS per session.
#![allow(clippy::disallowed_methods)] // the lab measures wall-clock times

use lab::cmd::{in_ns, wait_for, Proc};
use lab::ocserv::{holdfast_ra_config, ExtraNs, HoldfastRa, OcClient, RaTuning};
use lab::openconnect::*;
use std::time::{Duration, Instant};

const PASSWORD: &str = "load-secret-5";
const SESSIONS: usize = 500;
const PASSWORD_SESSIONS: usize = 4;
const FLOOD: usize = 300;
/// Certificate sessions that also bring up PSK-NEGOTIATE DTLS and probe over it.
const DTLS_SESSIONS: usize = 50;
const HOLD_SECS: u64 = 25;
const MB: u64 = 1024 * 1024;

#[test]
fn five_hundred_sessions_none_dropped_with_real_clients_and_a_handshake_flood() {
    let started = Instant::now();
    assert!(lab::is_root(), "lab tests need root (network namespaces); run them via `sudo bash scripts/test`");
    assert!(lab::holdfast_bin().exists(), "{} not found: cargo build --release -p holdfast", lab::holdfast_bin().display());
    let lab = RaLab::new().expect("lab");
    let cert = make_server_cert(&lab.dir).expect("server certificate");
    let pki = make_client_pki(&lab.dir).expect("client PKI");
    // A /22 pool: 500 load sessions + 2 real clients.
    let text = holdfast_ra_config(
        &cert,
        PASSWORD,
        RaTuning { dpd: 30, mtu: 1400 },
        ("10.99.0.10", "10.99.3.250", "255.255.252.0"),
        Some(&pki.ca),
    );
    let daemon = HoldfastRa::start(&lab, &text).expect("holdfast run");
    let ld = ExtraNs::new(&lab, "ld", "xld", "192.0.2.1", "192.0.2.10").expect("load generator namespace");
    // The flood comes from a second address of the load generator's namespace, so the timed
    // login inside the flood (from the first) shows whether one flooding address can lock
    // others out.
    lab::cmd::sh(Some(&ld.name), &["ip", "addr", "add", "192.0.2.11/24", "dev", "eth0"], Duration::from_secs(10)).expect("flood address");
    let c2 = ExtraNs::new(&lab, "c2", "xc2", "198.51.100.1", "198.51.100.10").expect("second client namespace");

    // The two real clients, DTLS up.
    let mut a = OcClient::start(&lab.dir, &lab.client, "a", &cert, "vpn", PASSWORD, &[]).expect("openconnect a");
    let mut b = OcClient::start(&lab.dir, &c2.name, "b", &cert, "vpn", PASSWORD, &[]).expect("openconnect b");
    let (addr_a, _) = a.wait_connected(Duration::from_secs(30)).unwrap_or_else(|e| panic!("client a: {e}\n{}", daemon.proc.log_tail(30)));
    let (addr_b, _) = b.wait_connected(Duration::from_secs(30)).unwrap_or_else(|e| panic!("client b: {e}\n{}", daemon.proc.log_tail(30)));
    a.wait_dtls(Duration::from_secs(20)).expect("client a DTLS");
    b.wait_dtls(Duration::from_secs(20)).expect("client b DTLS");
    eprintln!("lab: real clients up: a {addr_a}, b {addr_b} ({:.1} s)", started.elapsed().as_secs_f64());

    // The load.
    let ready = lab.path("acload.ready");
    let pid = daemon.pid().expect("daemon pid").to_string();
    let bin = env!("CARGO_BIN_EXE_lab-acload");
    let (cc, ck) = (pki.cert.to_string_lossy().into_owned(), pki.key.to_string_lossy().into_owned());
    let (n, np, hold, flood) = (SESSIONS.to_string(), PASSWORD_SESSIONS.to_string(), HOLD_SECS.to_string(), FLOOD.to_string());
    let nd = DTLS_SESSIONS.to_string();
    let server = format!("{GW_OUTSIDE_IP}:443");
    let r = ready.to_string_lossy().into_owned();
    let argv = [
        bin, "--server", &server, "--sessions", &n, "--password-sessions", &np, "--group", "RA", "--user", "vpn", "--password", PASSWORD,
        "--cert-group", "CERT", "--client-cert", &cc, "--client-key", &ck, "--target", SERVER_IP, "--hold", &hold, "--interval-ms",
        "1000", "--concurrency", "24", "--daemon-pid", &pid, "--flood", &flood, "--ready-file", &r, "--dtls-sessions", &nd,
        "--flood-source", "192.0.2.11", "--servercert", &cert.pin,
    ];
    let load_log = lab.path("acload.log");
    let mut load = Proc::spawn("lab-acload", in_ns(&ld.name, &argv), &load_log).expect("lab-acload");
    load.grace = Duration::from_secs(5);
    wait_for("500 sessions established", Duration::from_secs(60), Duration::from_millis(100), || {
        if load.exited().is_some() {
            return Some(());
        }
        ready.exists().then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n--- daemon ---\n{}", load.log_tail(20), daemon.proc.log_tail(20)));
    assert!(load.exited().is_none(), "lab-acload ended during setup:\n{}", load.log_tail(30));
    eprintln!("lab: {} ({:.1} s)", std::fs::read_to_string(&ready).unwrap_or_default().trim(), started.elapsed().as_secs_f64());

    // The daemon's own view while everything is up.
    let (ok, show) = daemon.cli(&["show", "vpn-sessiondb", "anyconnect"]);
    assert!(ok, "show vpn-sessiondb anyconnect failed: {show}");
    let listed = show.lines().filter(|l| l.starts_with("Username")).count();
    assert_eq!(listed, SESSIONS + 2, "show vpn-sessiondb anyconnect lists the load sessions and both real clients");
    for addr in [&addr_a, &addr_b] {
        assert!(show.contains(&format!(": {addr} ")), "real client {addr} listed");
    }

    // The real clients transfer during the hold (and the handshake flood): a -> server and
    // server -> b, 20 MB each.
    let mut rx_a = xfer_listen(&lab, &lab.server, 5101, Duration::from_secs(60)).expect("receiver on the server");
    let mut rx_b = xfer_listen(&lab, &c2.name, 5102, Duration::from_secs(60)).expect("receiver on client b");
    let client_ns = lab.client.clone();
    let server_ns = lab.server.clone();
    let to_b = format!("{addr_b}:5102");
    let up = std::thread::spawn(move || xfer_send(&mut rx_a, &client_ns, &format!("{SERVER_IP}:5101"), 20 * MB, Duration::from_secs(60)));
    let down = std::thread::spawn(move || xfer_send(&mut rx_b, &server_ns, &to_b, 20 * MB, Duration::from_secs(60)));
    let up = up.join().expect("transfer thread").expect("client a -> server transfer");
    let down = down.join().expect("transfer thread").expect("server -> client b transfer");
    eprintln!("lab: real clients during the load: a->server {:.0} Mbit/s, server->b {:.0} Mbit/s", up.mbit, down.mbit);
    assert!(up.intact(20 * MB), "client a transfer intact (SHA-256): {up:?}");
    assert!(down.intact(20 * MB), "client b transfer intact (SHA-256): {down:?}");

    let code = load.wait_exit(Duration::from_secs(HOLD_SECS + 30));
    let log = std::fs::read_to_string(&load_log).unwrap_or_default();
    eprintln!("lab-acload:\n{}", log.lines().filter(|l| !l.starts_with("lab:")).collect::<Vec<_>>().join("\n"));
    let line = log.lines().find_map(|l| l.strip_prefix("report ")).unwrap_or_else(|| panic!("no report from lab-acload (exit {code:?})"));
    let rep: serde_json::Value = serde_json::from_str(line).expect("report JSON");
    assert_eq!(rep["established"], SESSIONS, "every session came up: {rep}");
    assert_eq!(rep["dropped"], 0, "no session dropped: {rep}");
    assert_eq!(rep["dtls_sessions"], DTLS_SESSIONS, "the DTLS share came up: {rep}");
    assert!(
        rep["dtls_replies"].as_u64().unwrap_or(0) >= (DTLS_SESSIONS as u64) * HOLD_SECS / 2,
        "the DTLS sessions' replies came back over DTLS: {rep}"
    );
    assert_eq!(rep["sessions_all_probes_answered"], SESSIONS, "every session's probes answered: {rep}");
    assert!(rep["probes_sent"].as_u64().unwrap_or(0) >= (SESSIONS as u64) * (HOLD_SECS - 5), "probes were sent for the whole hold: {rep}");
    assert!(rep["flood_connects"].as_u64().unwrap_or(0) >= FLOOD as u64, "the flood made its connections: {rep}");
    assert!(
        rep["login_during_flood"].as_str().is_some_and(|r| r.starts_with("ok in")),
        "a login from another address completes during the flood: {rep}"
    );
    assert_eq!(code, Some(0), "lab-acload exit status");
    for c in [&a, &b] {
        let reconnects = c.log().to_lowercase().lines().filter(|l| l.contains("reconnect")).count();
        assert_eq!(reconnects, 0, "openconnect {} never reconnected:\n{}", c.tun, c.proc.log_tail(20));
        assert!(c.log().matches("Established DTLS connection").count() >= 1);
    }
    eprintln!(
        "lab: 500 sessions: setup {:.1} s ({:.0}/s, p50 {:.3} s, p99 {:.3} s), probes {}/{} answered, daemon RSS {} KiB -> {} KiB ({:.1} KiB per session), flood peak {} open ({} connects), login during the flood: {}; total {:.1} s",
        rep["setup_secs"].as_f64().unwrap_or(0.0),
        rep["setup_rate_per_s"].as_f64().unwrap_or(0.0),
        rep["setup_latency_p50_s"].as_f64().unwrap_or(0.0),
        rep["setup_latency_p99_s"].as_f64().unwrap_or(0.0),
        rep["probes_answered"],
        rep["probes_sent"],
        rep["daemon_rss_before_kib"],
        rep["daemon_rss_established_kib"],
        rep["daemon_rss_per_session_kib"].as_f64().unwrap_or(0.0),
        rep["flood_peak_open"],
        rep["flood_connects"],
        rep["login_during_flood"],
        started.elapsed().as_secs_f64()
    );
    drop(a);
    drop(b);
    drop(c2);
    drop(ld);
    drop(daemon);
}
