//! Remote-access settings changed by `holdfast reload` without dropping users (docs/reload.md
//! "Remote access"), with the real openconnect 9.01 client against `holdfast run`:
//!
//! ```text
//!  client 203.0.113.10 ── out 203.0.113.1 [holdfast run] in 10.1.0.1 ── server 10.1.0.10
//! ```
//!
//! One connected session carries a 30 MB server->client transfer while a reload adds a user,
//! adds a network to the split-tunnel list and replaces the server certificate (another
//! file). The transfer completes with matching SHA-256, the session never reconnects (same
//! address, no 113019), the new user logs in (a second openconnect, pinned to the NEW
//! certificate) and gets the new split route. Then two reloads are refused and change
//! nothing: a changed `dtls port` (restart only) and a pool shrunk under the leased
//! addresses, each answered with `FILE:LINE:COL` at the line concerned and 111004.
//!
//! Another test adds a tunnel group with its own `ip local pool` by reload: the pool's route
//! into `hfra0` appears in the daemon's namespace, a client of the new group gets an address
//! from it and pings the server through it; a reload removing the pool is refused while that
//! session holds a lease (the route stays), and after the client logged out it is applied and
//! the route is gone.
//!
//! A third test stops the daemon with SIGQUIT (planned restart) during a transfer and starts
//! it again: the client was not terminated, reconnects with its cookie to the same address,
//! the transfer completes with matching SHA-256 and no 113019 is logged.
//!
//! The daemon binary is `$HOLDFAST_BIN` if set, else `lab::holdfast_bin()` (release build in
//! `$CARGO_TARGET_DIR`).
#![allow(clippy::disallowed_methods)] // the lab measures wall-clock times

use lab::cmd::{in_ns, run, wait_for, Proc};
use lab::openconnect::*;
use lab::raconfig::{RaConfigText, RaPool};
use std::path::Path;
use std::time::{Duration, Instant};

const PASSWORD: &str = "lab-secret-5";
const CAROL_PASSWORD: &str = "carol-pw-9";

/// The issue's configuration without `anyconnect mtu` and without `sysopt connection tcpmss`.
fn config(cert: &ServerCert) -> RaConfigText {
    RaConfigText::issue(cert, PASSWORD).mtu(None).tcpmss(None)
}

fn start_daemon(lab: &RaLab, cfg: &Path, sock: &Path) -> Proc {
    start_daemon_logged(lab, cfg, sock, "holdfast.log")
}

/// [`start_daemon`] with its own log file (a restarted daemon must not find the first one's
/// "listening" line).
fn start_daemon_logged(lab: &RaLab, cfg: &Path, sock: &Path, log_name: &str) -> Proc {
    spawn_holdfast_run(lab, "holdfast", cfg, sock, &lab.path("state"), log_name).unwrap_or_else(|e| panic!("holdfast run: {e}"))
}

/// The lines of the shared openconnect script output for one client's tun device.
fn script_lines(c: &OpenConnect, tundev: &str) -> Vec<String> {
    let text = std::fs::read_to_string(&c.script_out).unwrap_or_default();
    text.lines().filter(|l| l.contains(&format!("tundev={tundev} ")) || l.ends_with(&format!("dev {tundev}"))).map(str::to_string).collect()
}

/// Replies to 3 pings from the client namespace to the inside server with source `src`.
fn ping_from(lab: &RaLab, src: &str) -> usize {
    let o = run(&mut in_ns(&lab.client, &["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "-I", src, SERVER_IP]), Duration::from_secs(15)).expect("ping runs");
    o.stdout.lines().filter(|l| l.contains("bytes from")).count()
}

#[test]
fn reload_adds_a_user_changes_split_and_certificate_without_dropping_the_session() {
    let started = Instant::now();
    let DaemonLab { lab, cert, sock, cfg } = DaemonLab::setup();
    let dir2 = lab.path("cert2");
    std::fs::create_dir_all(&dir2).unwrap();
    let cert2 = make_server_cert(&dir2).expect("second certificate");
    assert_ne!(cert.pin, cert2.pin);
    config(&cert).write(&cfg).unwrap();
    let mut daemon = start_daemon(&lab, &cfg, &sock);

    let mut a = OpenConnect::start(&lab, &cert, "vpn", PASSWORD, "", &[]).expect("openconnect starts");
    let address = a.wait_connected(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", daemon.log_tail(30)));
    a.wait_dtls(Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}\n{}", a.proc.log_tail(30)));
    let routes_a = script_lines(&a, "octun0");
    assert!(routes_a.iter().any(|l| l == "route 10.1.0.0/24 dev octun0"), "{routes_a:?}");
    assert!(!routes_a.iter().any(|l| l.starts_with("route 10.2.0.0/")), "{routes_a:?}");

    // A transfer to the client runs across the reload (30 MB at 40 Mbit/s: ~6 s).
    let mut rx = xfer_listen(&lab, &lab.client, 5004, Duration::from_secs(60)).expect("receiver in the client");
    let sender = xfer_send_paced(&lab, &format!("{address}:5004"), 30 << 20, 9, 40, Duration::from_secs(90));
    std::thread::sleep(Duration::from_millis(1500));

    // The reload: a user, a split network, another certificate file.
    let reloaded = config(&cert2).user("carol", CAROL_PASSWORD).add_split("10.2.0.0/24");
    reloaded.write(&cfg).unwrap();
    let t = Instant::now();
    let (ok, answer) = holdfast_cli(&lab.gw, &sock, &["reload"]);
    eprintln!("lab: reload answered in {:.0} ms:\n{answer}", t.elapsed().as_secs_f64() * 1e3);
    assert!(ok, "reload applied: {answer}\n{}", daemon.log_tail(20));
    assert!(answer.contains("remote access: users added: carol"), "{answer}");
    // vpn's clear-text password is the same (re-hashed with a new salt): not a change.
    assert!(!answer.contains("passwords changed") && !answer.contains("kept until logoff"), "{answer}");
    assert!(answer.contains("remote access: group-policies changed"), "{answer}");
    assert!(answer.contains(&format!("certificate {}", cert2.cert.display())), "{answer}");

    let out = sender.join().unwrap();
    assert!(out.success(), "transfer across the reload: {}{}", out.stdout, out.stderr);
    let (bytes, sha, stall) = rx.wait_result(Duration::from_secs(30)).expect("receiver finished");
    assert_eq!(bytes, 30 << 20, "every byte arrived");
    assert_eq!(Some(sha), sent_sha(&out.stdout), "SHA-256 matches");
    eprintln!("lab: 30 MB across the reload, longest stall {stall:.0} ms");
    assert!(ping(&lab.client, SERVER_IP, 3, None).unwrap_or(0) >= 2, "ping through the kept session after the reload");
    // The session was never interrupted: no reconnect, no teardown.
    let a_lines = script_lines(&a, "octun0");
    assert!(!a_lines.iter().any(|l| l.starts_with("reason=reconnect")), "{a_lines:?}");
    let (_, logging) = holdfast_cli(&lab.gw, &sock, &["show", "logging"]);
    assert!(logging.contains("%ASA-5-111005: ") && logging.contains("end configuration: OK"), "111005:\n{logging}");
    assert!(logging.contains("%ASA-5-111008: User 'control' executed the 'reload config"), "111008:\n{logging}");
    assert!(!logging.contains("-113019:"), "no session ended:\n{logging}");

    // The new user logs in, pinned to the new certificate, and gets the new split route.
    let mut b = OpenConnect::start(&lab, &cert2, "carol", CAROL_PASSWORD, "-carol", &["-i", "octun1"]).expect("second openconnect");
    let address_b = b.wait_connected_on("octun1", Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}\n{}", b.proc.log_tail(30), daemon.log_tail(30)));
    assert_ne!(address_b, address);
    let routes_b = script_lines(&b, "octun1");
    assert!(routes_b.iter().any(|l| l == "route 10.2.0.0/24 dev octun1"), "new split list for a new session: {routes_b:?}");
    assert!(routes_b.iter().any(|l| l == "route 10.1.0.0/24 dev octun1"), "{routes_b:?}");
    let (_, sessions) = holdfast_cli(&lab.gw, &sock, &["show", "vpn-sessiondb", "anyconnect"]);
    assert!(sessions.contains(&address) && sessions.contains(&address_b) && sessions.contains("carol"), "{sessions}");
    // Both clients share the client namespace and the lab script points 10.1.0.0/24 at the
    // newest tun: traffic from the first session's address keeps using its own tun.
    for argv in [vec!["ip", "rule", "add", "from", address.as_str(), "lookup", "100"], vec!["ip", "route", "add", "10.1.0.0/24", "dev", "octun0", "table", "100"]] {
        let o = run(&mut in_ns(&lab.client, &argv), Duration::from_secs(5)).expect("ip runs");
        assert!(o.success(), "{argv:?}: {}", o.stderr);
    }
    assert!(ping_from(&lab, &address_b) >= 2, "the new user's session carries traffic");
    assert!(ping_from(&lab, &address) >= 2, "the first session still carries traffic");

    // Refused: a changed DTLS port needs a restart. Nothing changes.
    let text_port = reloaded.clone().dtls_port(4443);
    text_port.write(&cfg).unwrap();
    let (ok, answer) = holdfast_cli(&lab.gw, &sock, &["reload"]);
    assert!(!ok, "a dtls port change must be refused: {answer}");
    let at = format!("{}:{}:2: error: requires restart: webvpn dtls port", cfg.display(), text_port.line_of("dtls port 4443"));
    assert!(answer.contains(&at), "expected {at}\n{answer}");
    assert!(answer.contains("the running configuration is unchanged"), "{answer}");

    // Refused: the pool shrinks under both leases. Each address is named at the pool's range.
    let text_pool = reloaded.clone().pool("10.99.0.150", "10.99.0.199", "255.255.255.0");
    text_pool.write(&cfg).unwrap();
    let (ok, answer) = holdfast_cli(&lab.gw, &sock, &["reload"]);
    assert!(!ok, "shrinking the pool under a lease must be refused: {answer}");
    let pool_line = text_pool.line_of("ip local pool VPNPOOL 10.99.0.150-10.99.0.199 mask 255.255.255.0");
    for addr in [&address, &address_b] {
        assert!(answer.contains(&format!("{}:{pool_line}:23: error: address {addr} is leased", cfg.display())), "{addr}:\n{answer}");
    }
    let (_, logging) = holdfast_cli(&lab.gw, &sock, &["show", "logging"]);
    assert_eq!(logging.matches("end configuration: FAILED").count(), 2, "two 111004:\n{logging}");
    // Still the applied configuration: both sessions up, traffic flows, carol still known.
    let (_, sessions) = holdfast_cli(&lab.gw, &sock, &["show", "vpn-sessiondb", "anyconnect"]);
    assert!(sessions.contains(&address) && sessions.contains(&address_b), "{sessions}");
    assert!(ping_from(&lab, &address) >= 2 && ping_from(&lab, &address_b) >= 2, "ping on both sessions after the refused reloads");
    assert!(!script_lines(&a, "octun0").iter().any(|l| l.starts_with("reason=reconnect")));

    b.proc.signal(libc::SIGINT);
    a.proc.signal(libc::SIGINT);
    let _ = b.proc.wait_exit(Duration::from_secs(10));
    let _ = a.proc.wait_exit(Duration::from_secs(10));
    let code = daemon.stop();
    assert_eq!(code, Some(0), "holdfast exit: {}", daemon.log_tail(20));
    eprintln!("lab: remote-access reload passed in {:.1} s", started.elapsed().as_secs_f64());
}

/// A planned restart (SIGQUIT) keeps the users: the sessions are saved, the clients are not
/// sent a TERMINATE, and after the restart openconnect reconnects by itself with its cookie,
/// gets the same address, and a transfer running across it completes (SHA-256). No 113019
/// is logged for the session.
#[test]
fn sigquit_restart_keeps_sessions() {
    let started = Instant::now();
    let DaemonLab { lab, cert, sock, cfg } = DaemonLab::setup();
    config(&cert).write(&cfg).unwrap();
    let mut daemon = start_daemon(&lab, &cfg, &sock);
    let mut a = OpenConnect::start(&lab, &cert, "vpn", PASSWORD, "", &[]).expect("openconnect starts");
    let address = a.wait_connected(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", daemon.log_tail(30)));

    // 30 MB at 30 Mbit/s (~8 s of sending) from the inside server to the client.
    let mut rx = xfer_listen(&lab, &lab.client, 5005, Duration::from_secs(90)).expect("receiver in the client");
    let sender = xfer_send_paced(&lab, &format!("{address}:5005"), 30 << 20, 3, 30, Duration::from_secs(120));
    // Past the connection table's periodic snapshot (2 s) so the flow is in flows.json.
    std::thread::sleep(Duration::from_millis(2500));

    let stopped = Instant::now();
    daemon.signal(libc::SIGQUIT);
    let code = daemon.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(0), "holdfast exit after SIGQUIT: {}", daemon.log_tail(20));
    let first_log = std::fs::read_to_string(&daemon.log).unwrap_or_default();
    assert!(first_log.contains("1 remote-access session(s) saved for the next start"), "{}", daemon.log_tail(20));
    // The client was not sent away: it is still running and trying to reconnect.
    std::thread::sleep(Duration::from_millis(300));
    assert!(a.proc.exited().is_none(), "openconnect exited after SIGQUIT:\n{}", a.proc.log_tail(30));
    // openconnect's words for a CSTP TERMINATE ("received server terminate packet", "Server
    // terminated connection"); a TLS connection that just closes reads "non-properly terminated".
    let oc = a.log();
    assert!(!oc.contains("server terminate") && !oc.contains("Server terminated"), "a TERMINATE reached the client:\n{}", a.proc.log_tail(30));

    let mut daemon = start_daemon_logged(&lab, &cfg, &sock, "holdfast-2.log");
    let restarted = stopped.elapsed();
    assert!(std::fs::read_to_string(&daemon.log).unwrap_or_default().contains("1 session(s) restored"), "{}", daemon.log_tail(20));
    wait_for("openconnect reconnected after the restart", Duration::from_secs(45), Duration::from_millis(100), || {
        std::fs::read_to_string(&a.script_out).ok().filter(|t| t.contains("reason=reconnect")).map(|_| ())
    })
    .unwrap_or_else(|e| panic!("{e}\n--- openconnect ---\n{}\n--- holdfast ---\n{}", a.proc.log_tail(30), daemon.log_tail(30)));
    let back = stopped.elapsed();

    let out = sender.join().unwrap();
    assert!(out.success(), "transfer across the restart: {}{}\n--- holdfast ---\n{}", out.stdout, out.stderr, daemon.log_tail(30));
    let (bytes, sha, stall) = rx.wait_result(Duration::from_secs(30)).expect("receiver finished");
    assert_eq!(bytes, 30 << 20, "every byte arrived on the one TCP connection");
    assert_eq!(Some(sha), sent_sha(&out.stdout), "SHA-256 matches");
    let lines = script_lines(&a, "octun0");
    let addrs: Vec<&str> = lines.iter().filter_map(|l| l.split_whitespace().find_map(|kv| kv.strip_prefix("ip4="))).collect();
    assert!(addrs.len() >= 2 && addrs.iter().all(|x| *x == address), "same address after the restart: {addrs:?}");
    let (_, logging) = holdfast_cli(&lab.gw, &sock, &["show", "logging"]);
    assert!(!logging.contains("-113019:"), "the session did not end:\n{logging}");
    assert!(!first_log.contains("-113019:"), "the first daemon ended no session:\n{first_log}");
    eprintln!(
        "lab: SIGQUIT restart: daemon back after {:.1} s, client back after {:.1} s, 30 MB intact (longest stall {stall:.0} ms)",
        restarted.as_secs_f64(),
        back.as_secs_f64()
    );

    a.proc.signal(libc::SIGINT);
    let _ = a.proc.wait_exit(Duration::from_secs(10));
    assert_eq!(daemon.stop(), Some(0), "holdfast exit: {}", daemon.log_tail(20));
    eprintln!("lab: SIGQUIT keep-sessions restart passed in {:.1} s", started.elapsed().as_secs_f64());
}

/// A reload that adds a tunnel group with its own pool adds the pool's route into the
/// remote-access TUN (`hfra0`) in the daemon's namespace; a client of the new group gets an
/// address from it and reaches the server behind the gateway (whose replies need that
/// route). A reload back to the first configuration, with no session left on the pool,
/// removes the route and keeps the first pool's.
#[test]
fn reload_adds_and_removes_a_pool_route() {
    let started = Instant::now();
    let DaemonLab { lab, cert, sock, cfg } = DaemonLab::setup();
    // The login form lists the groups, so openconnect can pick one with --authgroup.
    let base = config(&cert).tunnel_group_list(true);
    base.write(&cfg).unwrap();
    let mut daemon = start_daemon(&lab, &cfg, &sock);
    let first = format!("{} dev hfra0", RaPool::issue().prefix());
    let pool2 = RaPool::new("POOL2", "10.98.0.10", "10.98.0.20", "255.255.255.0");
    let second = format!("{} dev hfra0", pool2.prefix());
    let has = |routes: &str, route: &str| routes.lines().any(|l| l.starts_with(route));
    let r = ip_routes(&lab.gw);
    assert!(has(&r, &first) && !r.contains(&pool2.prefix()), "before the reload:\n{r}");

    // Reload: pool POOL2 and tunnel group RA2 taking its addresses from it.
    let with = base.clone().add_pool(pool2.clone()).add_tunnel_group("RA2", "POOL2", false);
    with.write(&cfg).unwrap();
    let (ok, answer) = holdfast_cli(&lab.gw, &sock, &["reload"]);
    eprintln!("lab: reload adding POOL2 + RA2:\n{answer}");
    assert!(ok, "reload applied: {answer}\n{}", daemon.log_tail(20));
    let r = ip_routes(&lab.gw);
    assert!(has(&r, &second), "the new pool's route into hfra0 after the reload:\n{r}");
    assert!(has(&r, &first), "the first pool's route is kept:\n{r}");

    // A client of the new group: an address of POOL2, and ping through it.
    let mut c = OpenConnect::start(&lab, &cert, "vpn", PASSWORD, "-ra2", &["--authgroup", "RA2"]).expect("openconnect starts");
    let address = c.wait_connected(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}\n{}", c.proc.log_tail(30), daemon.log_tail(30)));
    let ip: std::net::Ipv4Addr = address.parse().expect("an IPv4 address");
    assert!((pool2.first..=pool2.last).contains(&ip), "{address} is not from POOL2 ({})", pool2.statement());
    let deadline = Instant::now() + Duration::from_secs(15);
    while ping(&lab.client, SERVER_IP, 1, None).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no ping reply from {SERVER_IP} through the RA2 session; gateway routes:\n{}", ip_routes(&lab.gw));
    }
    assert_eq!(ping(&lab.client, SERVER_IP, 5, None).unwrap(), 5, "all pings through the RA2 session answered");
    let (_, sessions) = holdfast_cli(&lab.gw, &sock, &["show", "vpn-sessiondb", "anyconnect"]);
    assert!(sessions.contains(&address), "{sessions}");

    // While the session holds a POOL2 address, a reload removing POOL2 is refused and the
    // route stays.
    base.write(&cfg).unwrap();
    let (ok, answer) = holdfast_cli(&lab.gw, &sock, &["reload"]);
    eprintln!("lab: reload removing POOL2 under a lease:\n{answer}");
    assert!(!ok && answer.contains(&format!("address {address} is leased")), "removing a pool under a lease must be refused: {answer}");
    assert!(has(&ip_routes(&lab.gw), &second), "the route stays after the refused reload:\n{}", ip_routes(&lab.gw));
    assert_eq!(ping(&lab.client, SERVER_IP, 3, None).unwrap(), 3, "the RA2 session still carries traffic");

    // The client logs out (SIGINT: openconnect ends its session); no session is left on POOL2.
    c.proc.signal(libc::SIGINT);
    assert!(c.proc.wait_exit(Duration::from_secs(10)).is_some(), "openconnect still running after SIGINT");
    wait_for("the RA2 session ended", Duration::from_secs(15), Duration::from_millis(100), || {
        let (ok, s) = holdfast_cli(&lab.gw, &sock, &["show", "vpn-sessiondb", "anyconnect"]);
        (ok && !s.contains(&address)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {}", holdfast_cli(&lab.gw, &sock, &["show", "vpn-sessiondb", "anyconnect"]).1));

    // Reload back: POOL2 and RA2 are gone, and so is the route.
    base.write(&cfg).unwrap();
    let (ok, answer) = holdfast_cli(&lab.gw, &sock, &["reload"]);
    eprintln!("lab: reload removing POOL2 + RA2:\n{answer}");
    assert!(ok, "reload applied: {answer}\n{}", daemon.log_tail(20));
    let r = ip_routes(&lab.gw);
    assert!(!r.contains(&pool2.prefix()), "the removed pool's route is gone:\n{r}");
    assert!(has(&r, &first), "the first pool's route is kept:\n{r}");

    assert_eq!(daemon.stop(), Some(0), "holdfast exit: {}", daemon.log_tail(20));
    let r = ip_routes(&lab.gw);
    assert!(!r.contains(&RaPool::issue().prefix()), "pool route removed at exit:\n{r}");
    eprintln!("lab: pool route add/remove on reload passed in {:.1} s", started.elapsed().as_secs_f64());
}

trait WaitOn {
    fn wait_connected_on(&mut self, tundev: &str, timeout: Duration) -> Result<String, String>;
}

impl WaitOn for OpenConnect {
    /// [`OpenConnect::wait_connected`] for a client on its own tun device (the script output
    /// file is shared by the clients of one lab).
    fn wait_connected_on(&mut self, tundev: &str, timeout: Duration) -> Result<String, String> {
        let out = self.script_out.clone();
        let tundev = tundev.to_string();
        let r = wait_for("openconnect connected", timeout, Duration::from_millis(50), || {
            if self.proc.exited().is_some() {
                return Some(None);
            }
            let text = std::fs::read_to_string(&out).ok()?;
            let line = text.lines().find(|l| l.starts_with("reason=connect ") && l.contains(&format!("tundev={tundev} ")))?;
            let ip = line.split_whitespace().find_map(|kv| kv.strip_prefix("ip4="))?.to_string();
            text.lines().any(|l| l.ends_with(&format!("dev {tundev}"))).then_some(Some(ip))
        })
        .map_err(|e| e.to_string())?;
        r.ok_or_else(|| format!("openconnect exited: {}", self.proc.log_tail(40)))
    }
}
