//! The `holdfast` binary with remote access in a network namespace (root): the last syslog line
//! of a start that fails after the data path is running reaches stderr and the syslog host, and
//! `holdfast stop [--keep-sessions]` over the control socket.
//!
//! Namespaces are named `hfra-<pid>-<n>-<role>` and removed by a guard, also on failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{examples, in_netns, sh, skip_without_root, Netns, BIN};

/// examples/gw-a.cfg plus remote access on its outside address (192.0.2.1), with a fresh
/// self-signed trustpoint in `dir` and `extra` lines (logging) appended.
fn ra_config(dir: &Path, extra: &str) -> PathBuf {
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    sh(&format!(
        "openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=gw-a -days 2 -keyout {} -out {} 2>/dev/null",
        key.display(),
        cert.display()
    ));
    let mut text = std::fs::read_to_string(examples().join("gw-a.cfg")).unwrap();
    text += &format!(
        "ip local pool VPNPOOL 10.99.0.100-10.99.0.199 mask 255.255.255.0
webvpn
 enable outside
 anyconnect enable
group-policy ac_users_group internal
group-policy ac_users_group attributes
 vpn-tunnel-protocol ssl-client
tunnel-group RA type remote-access
tunnel-group RA general-attributes
 address-pool VPNPOOL
 default-group-policy ac_users_group
username vpn password s3cret-Pw
crypto ca trustpoint VPN-TP
 certificate-file {}
 key-file {}
ssl trust-point VPN-TP outside
{extra}",
        cert.display(),
        key.display()
    );
    let p = dir.join("gw-a-ra.cfg");
    std::fs::write(&p, text).unwrap();
    p
}

/// Waits (at most `limit`) for process `idx` of `lab` to exit; its exit code.
fn wait_exit(lab: &mut Netns, idx: usize, limit: Duration) -> Option<i32> {
    let status = lab.wait_exit(idx, limit).unwrap_or_else(|| panic!("holdfast did not exit within {limit:?}"));
    status.code()
}

/// A start that fails after the site-to-site data-path threads (which hold the logger) are
/// running: the remote-access TUN cannot be created because `--ra-tun` names an existing veth.
/// The daemon's last syslog line says why it stopped (199900), and it reaches both stderr and
/// the syslog host although other owners of the logger are still alive when `run` returns.
#[test]
fn failing_start_flushes_its_last_syslog_line() {
    if skip_without_root() {
        return;
    }
    let mut lab = Netns::numbered("hfra");
    let ns = lab.gateway_alone("gw");
    // The syslog host: a UDP socket on the namespace's loopback.
    let rx = in_netns(&ns, || std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).join().unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = rx.local_addr().unwrap().port();
    let cfg = ra_config(&lab.dir, &format!("logging trap informational\nlogging host inside 127.0.0.1 udp/{port}\n"));
    let log = lab.dir.join("run.log");
    let (sock, state) = (lab.dir.join("gw.sock"), lab.dir.join("state"));
    let idx = lab.spawn_daemon_args(&ns, &cfg, &sock, &state, std::fs::File::create(&log).unwrap(), &["--ra-tun", "wan-x"]);
    assert_eq!(wait_exit(&mut lab, idx, Duration::from_secs(20)), Some(1));
    let err = std::fs::read_to_string(&log).unwrap();
    // The data path was up (the failure is not an early configuration refusal).
    assert!(!err.contains("configuration"), "{err}");
    let want = "%ASA-2-199900: holdfast stopped: remote access: creating TUN wan-x:";
    let last_syslog = err.lines().rfind(|l| l.contains("%ASA-")).unwrap_or_default();
    assert!(last_syslog.contains(want), "last syslog line on stderr: {last_syslog:?}\n{err}");
    // The CLI's own error line comes after it: the queue was written before `run` returned.
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("holdfast: remote access: creating TUN wan-x:"), "{err}");
    let mut datagrams = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = rx.recv(&mut buf) {
        let d = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = d.contains("199900");
        datagrams.push(d);
        if done {
            break;
        }
    }
    let last = datagrams.last().cloned().unwrap_or_default();
    // RFC 3164 PRI: local4 (20) * 8 + critical (2) = 162.
    assert!(last.starts_with("<162>") && last.contains(want), "datagrams: {datagrams:?}");
}

/// Logs `user` in over the aggregate-auth exchange with curl inside `ns` (anyconnect.md §1):
/// the session exists from then on (the cookie is the session), tunnel or not.
fn login(ns: &str, dir: &Path, user: &str, pass: &str) {
    let jar = dir.join("cookies.txt");
    let post = |body: &str| {
        let f = dir.join("body.xml");
        std::fs::write(&f, body).unwrap();
        let o = Command::new("ip")
            .args(["netns", "exec", ns, "curl", "-sk", "--max-time", "10", "-X", "POST", "-H", "X-Aggregate-Auth: 1", "-H", "X-Transcend-Version: 1"])
            .args(["-H", "Content-Type: application/xml", "-b"])
            .arg(&jar)
            .arg("-c")
            .arg(&jar)
            .arg("--data-binary")
            .arg(format!("@{}", f.display()))
            .arg("https://192.0.2.1/")
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let head = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
    let form = post(&format!("{head}<config-auth client=\"vpn\" type=\"init\" aggregate-auth-version=\"2\">\n<version who=\"vpn\">v9.01-3</version>\n<group-access>https://192.0.2.1/</group-access>\n</config-auth>\n"));
    let handle = form.split("<aggauth-handle>").nth(1).and_then(|r| r.split('<').next()).unwrap_or_else(|| panic!("no login form: {form}"));
    let done = post(&format!("{head}<config-auth client=\"vpn\" type=\"auth-reply\" aggregate-auth-version=\"2\">\n<version who=\"vpn\">v9.01-3</version>\n<opaque is-for=\"sg\"><aggauth-handle>{handle}</aggauth-handle></opaque>\n<auth><username>{user}</username><password>{pass}</password></auth>\n</config-auth>\n"));
    assert!(done.contains("type=\"complete\""), "login of {user} failed: {done}");
}

/// The saved sessions' users, from `<state>/ra-sessions.json`.
fn saved_users(state: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(state.join("ra-sessions.json")).expect("ra-sessions.json");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["sessions"]["sessions"].as_array().expect("sessions list").iter().map(|s| s["user"].as_str().unwrap_or_default().to_string()).collect()
}

/// `holdfast stop --keep-sessions` does what SIGQUIT does and answers with the number of
/// sessions saved; the next start restores them; a plain `holdfast stop` then ends them as
/// SIGTERM does (the file is left empty).
#[test]
fn stop_keep_sessions_saves_them_and_says_how_many() {
    if skip_without_root() {
        return;
    }
    let mut lab = Netns::numbered("hfra");
    let ns = lab.gateway_alone("gw");
    let cfg = ra_config(&lab.dir, "");
    let sock = lab.dir.join("gw.sock");
    let state = lab.dir.join("state");
    let log1 = lab.dir.join("run1.log");
    let d1 = lab.spawn_daemon(&ns, &cfg, &sock, &state, std::fs::File::create(&log1).unwrap());
    common::wait_control(&sock, &log1);
    login(&ns, &lab.dir, "vpn", "s3cret-Pw");
    login(&ns, &lab.dir, "vpn", "s3cret-Pw");

    let o = Command::new(BIN).args(["stop", "--keep-sessions", "--control"]).arg(&sock).output().unwrap();
    let answer = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{answer}{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        answer,
        format!("Stopping: 2 remote-access session(s) saved in {} for the next start; clients were not told.\n", state.join("ra-sessions.json").display())
    );
    assert_eq!(wait_exit(&mut lab, d1, Duration::from_secs(15)), Some(0));
    let err = std::fs::read_to_string(&log1).unwrap();
    assert!(err.contains("holdfast: stop keep-sessions: 2 remote-access session(s) saved"), "{err}");
    assert!(!err.contains("113019"), "no session ended: {err}");
    assert_eq!(saved_users(&state), ["vpn", "vpn"]);
    assert!(!sock.exists(), "the control socket is removed on the way out");

    // The next start restores them; a plain stop ends them (clients told) and empties the file.
    let log2 = lab.dir.join("run2.log");
    let d2 = lab.spawn_daemon(&ns, &cfg, &sock, &state, std::fs::File::create(&log2).unwrap());
    common::wait_control(&sock, &log2);
    let o = Command::new(BIN).args(["stop", "--control"]).arg(&sock).output().unwrap();
    let answer = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{answer}");
    assert_eq!(answer, "Stopping: remote-access clients are told the gateway is going away; their sessions end.\n");
    assert_eq!(wait_exit(&mut lab, d2, Duration::from_secs(15)), Some(0));
    assert_eq!(saved_users(&state), Vec::<String>::new());
    let err = std::fs::read_to_string(&log2).unwrap();
    assert_eq!(err.matches("113019").count(), 2, "both restored sessions end, each with 113019:\n{err}");
    // Nothing to talk to any more: the one-shot client says so and fails.
    let o = Command::new(BIN).args(["stop", "--control"]).arg(&sock).output().unwrap();
    assert!(!o.status.success());
}
