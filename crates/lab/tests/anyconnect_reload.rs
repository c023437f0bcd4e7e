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
//! A second test stops the daemon with SIGQUIT (planned restart) during a transfer and starts
//! it again: the client was not terminated, reconnects with its cookie to the same address,
//! the transfer completes with matching SHA-256 and no 113019 is logged.
//!
//! The daemon binary is `$HOLDFAST_BIN` if set, else `lab::holdfast_bin()` (release build in
//! `$CARGO_TARGET_DIR`).
#![allow(clippy::disallowed_methods)] // the lab measures wall-clock times

use lab::cmd::{in_ns, run, wait_for, Proc};
use lab::openconnect::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const PASSWORD: &str = "lab-secret-5";
const CAROL_PASSWORD: &str = "carol-pw-9";

fn bin() -> PathBuf {
    lab::holdfast_bin()
}

/// The issue-5 configuration; `extra_users` / `extra_split` are appended to the user list and
/// the split-tunnel access list, `dtls_port` and `pool` replace theirs.
fn config_text(cert: &Path, key: &Path, extra_users: &str, extra_split: &str, dtls_port: u16, pool: &str) -> String {
    format!(
        "hostname ra-gw
interface out
 nameif outside
 security-level 0
 ip address {GW_OUTSIDE_IP} 255.255.255.0
interface in
 nameif inside
 security-level 100
 ip address {GW_INSIDE_IP} 255.255.255.0
logging enable
logging buffered informational
access-list SPLIT standard permit 10.1.0.0 255.255.255.0
{extra_split}ip local pool VPNPOOL {pool} mask 255.255.255.0
webvpn
 enable outside
 anyconnect enable
 dtls port {dtls_port}
group-policy ac_users_group internal
group-policy ac_users_group attributes
 vpn-tunnel-protocol ssl-client
 split-tunnel-policy tunnelspecified
 split-tunnel-network-list value SPLIT
 webvpn
  anyconnect ssl dtls enable
  anyconnect ssl df-bit-ignore enable
  anyconnect dpd-interval client 30
  anyconnect dpd-interval gateway 30
tunnel-group RA type remote-access
tunnel-group RA general-attributes
 address-pool VPNPOOL
 default-group-policy ac_users_group
tunnel-group RA webvpn-attributes
 group-alias RA enable
username vpn password {PASSWORD}
{extra_users}crypto ca trustpoint VPN-TP
 certificate-file {}
 key-file {}
ssl trust-point VPN-TP outside
",
        cert.display(),
        key.display()
    )
}

const POOL_RANGE: &str = "10.99.0.100-10.99.0.199";

/// `holdfast WORDS... --control SOCK` inside the gateway namespace: (success, stdout+stderr).
fn cli(lab: &RaLab, sock: &Path, words: &[&str]) -> (bool, String) {
    let b = bin().to_string_lossy().into_owned();
    let s = sock.to_string_lossy().into_owned();
    let mut argv = vec![b.as_str()];
    argv.extend_from_slice(words);
    argv.extend(["--control", &s]);
    let out = run(&mut in_ns(&lab.gw, &argv), Duration::from_secs(30)).expect("holdfast cli runs");
    (out.success(), format!("{}{}", out.stdout, out.stderr))
}

fn start_daemon(lab: &RaLab, cfg: &Path, sock: &Path) -> Proc {
    start_daemon_logged(lab, cfg, sock, "holdfast.log")
}

/// [`start_daemon`] with its own log file (a restarted daemon must not find the first one's
/// "listening" line).
fn start_daemon_logged(lab: &RaLab, cfg: &Path, sock: &Path, log_name: &str) -> Proc {
    spawn_holdfast_run(lab, "holdfast", &cfg, sock, &lab.path("state"), log_name).unwrap_or_else(|e| panic!("holdfast run: {e}"))
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

/// 1-based line number of the first line of `text` that is `line`.
fn line_of(text: &str, line: &str) -> usize {
    text.lines().position(|l| l == line).expect("line in the configuration") + 1
}

#[test]
fn reload_adds_a_user_changes_split_and_certificate_without_dropping_the_session() {
    let started = Instant::now();
    assert!(lab::is_root(), "lab tests need root (network namespaces)");
    assert!(bin().exists(), "{} not found: build it (cargo build --release -p holdfast) or set HOLDFAST_BIN", bin().display());
    let lab = RaLab::new().expect("lab");
    let cert = make_server_cert(&lab.dir).expect("certificate");
    let dir2 = lab.path("cert2");
    std::fs::create_dir_all(&dir2).unwrap();
    let cert2 = make_server_cert(&dir2).expect("second certificate");
    assert_ne!(cert.pin, cert2.pin);
    let sock = lab.path("holdfast.sock");
    let cfg = lab.path("daemon.cfg");
    std::fs::write(&cfg, config_text(&cert.cert, &cert.key, "", "", 443, POOL_RANGE)).unwrap();
    let mut daemon = start_daemon(&lab, &cfg, &sock);

    let mut a = OpenConnect::start(&lab, &cert, "vpn", PASSWORD, "", &[]).expect("openconnect starts");
    let address = a.wait_connected(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", daemon.log_tail(30)));
    a.wait_dtls(Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}\n{}", a.proc.log_tail(30)));
    let routes_a = script_lines(&a, "octun0");
    assert!(routes_a.iter().any(|l| l == "route 10.1.0.0/24 dev octun0"), "{routes_a:?}");
    assert!(!routes_a.iter().any(|l| l.starts_with("route 10.2.0.0/")), "{routes_a:?}");

    // A transfer to the client runs across the reload (30 MB at 40 Mbit/s: ~6 s).
    let mut rx = xfer_listen(&lab, &lab.client, 5004, Duration::from_secs(60)).expect("receiver in the client");
    let xbin = lab::xfer::xfer_bin().to_string_lossy().into_owned();
    let (server, to) = (lab.server.clone(), format!("{address}:5004"));
    let sender = std::thread::spawn(move || {
        run(&mut in_ns(&server, &[&xbin, "send", "--connect", &to, "--bytes", &(30u64 << 20).to_string(), "--seed", "9", "--rate-mbit", "40"]), Duration::from_secs(90))
            .expect("lab-xfer send runs")
    });
    std::thread::sleep(Duration::from_millis(1500));

    // The reload: a user, a split network, another certificate file.
    let user_line = format!("username carol password {CAROL_PASSWORD}\n");
    let split_line = "access-list SPLIT standard permit 10.2.0.0 255.255.255.0\n";
    std::fs::write(&cfg, config_text(&cert2.cert, &cert2.key, &user_line, split_line, 443, POOL_RANGE)).unwrap();
    let t = Instant::now();
    let (ok, answer) = cli(&lab, &sock, &["reload"]);
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
    let (_, logging) = cli(&lab, &sock, &["show", "logging"]);
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
    let (_, sessions) = cli(&lab, &sock, &["show", "vpn-sessiondb", "anyconnect"]);
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
    let text_port = config_text(&cert2.cert, &cert2.key, &user_line, split_line, 4443, POOL_RANGE);
    std::fs::write(&cfg, &text_port).unwrap();
    let (ok, answer) = cli(&lab, &sock, &["reload"]);
    assert!(!ok, "a dtls port change must be refused: {answer}");
    let at = format!("{}:{}:2: error: requires restart: webvpn dtls port", cfg.display(), line_of(&text_port, " dtls port 4443"));
    assert!(answer.contains(&at), "expected {at}\n{answer}");
    assert!(answer.contains("the running configuration is unchanged"), "{answer}");

    // Refused: the pool shrinks under both leases. Each address is named at the pool's range.
    let text_pool = config_text(&cert2.cert, &cert2.key, &user_line, split_line, 443, "10.99.0.150-10.99.0.199");
    std::fs::write(&cfg, &text_pool).unwrap();
    let (ok, answer) = cli(&lab, &sock, &["reload"]);
    assert!(!ok, "shrinking the pool under a lease must be refused: {answer}");
    let pool_line = line_of(&text_pool, "ip local pool VPNPOOL 10.99.0.150-10.99.0.199 mask 255.255.255.0");
    for addr in [&address, &address_b] {
        assert!(answer.contains(&format!("{}:{pool_line}:23: error: address {addr} is leased", cfg.display())), "{addr}:\n{answer}");
    }
    let (_, logging) = cli(&lab, &sock, &["show", "logging"]);
    assert_eq!(logging.matches("end configuration: FAILED").count(), 2, "two 111004:\n{logging}");
    // Still the applied configuration: both sessions up, traffic flows, carol still known.
    let (_, sessions) = cli(&lab, &sock, &["show", "vpn-sessiondb", "anyconnect"]);
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
    assert!(lab::is_root(), "lab tests need root (network namespaces)");
    assert!(bin().exists(), "{} not found: build it (cargo build --release -p holdfast) or set HOLDFAST_BIN", bin().display());
    let lab = RaLab::new().expect("lab");
    let cert = make_server_cert(&lab.dir).expect("certificate");
    let sock = lab.path("holdfast.sock");
    let cfg = lab.path("daemon.cfg");
    std::fs::write(&cfg, config_text(&cert.cert, &cert.key, "", "", 443, POOL_RANGE)).unwrap();
    let mut daemon = start_daemon(&lab, &cfg, &sock);
    let mut a = OpenConnect::start(&lab, &cert, "vpn", PASSWORD, "", &[]).expect("openconnect starts");
    let address = a.wait_connected(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", daemon.log_tail(30)));

    // 30 MB at 30 Mbit/s (~8 s of sending) from the inside server to the client.
    let mut rx = xfer_listen(&lab, &lab.client, 5005, Duration::from_secs(90)).expect("receiver in the client");
    let xbin = lab::xfer::xfer_bin().to_string_lossy().into_owned();
    let (server, to) = (lab.server.clone(), format!("{address}:5005"));
    let sender = std::thread::spawn(move || {
        run(&mut in_ns(&server, &[&xbin, "send", "--connect", &to, "--bytes", &(30u64 << 20).to_string(), "--seed", "3", "--rate-mbit", "30"]), Duration::from_secs(120))
            .expect("lab-xfer send runs")
    });
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
    let (_, logging) = cli(&lab, &sock, &["show", "logging"]);
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
