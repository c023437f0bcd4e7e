//! Issue 5, "what must be shown" item 4, against the daemon (`holdfast run` from the issue's ASA
//! configuration) with a real openconnect 9.01 session connected and pinging the server
//! behind the gateway the whole time, while a probe client (`lab::acprobe`) does what a real
//! client never does:
//!
//! - logs in naming a group that does not exist (`<group-select>`, and a `<group-access>` URL
//!   whose path names no group);
//! - presents a forged cookie (random, and a genuine one with bytes flipped) to
//!   `CONNECT /CSCOSSLC/tunnel`;
//! - presents the cookie of a session an operator ended (`vpn-sessiondb logoff name probe`);
//! - after a good CONNECT, breaks the CSTP framing: bad magic, an oversize length, a
//!   non-zero reserved byte, and a header announcing more bytes than follow before the
//!   connection closes.
//!
//! Each must get a clear refusal and a log line (asserted by message id and content from the
//! daemon's log), and afterwards the openconnect session must still be the same one: never
//! reconnected (its log and its script), at most two pings lost, listed by
//! `show vpn-sessiondb anyconnect`, and the daemon still running.
//!
//! The daemon binary is `lab::holdfast_bin()`: `$HOLDFAST_BIN`, else
//! `$CARGO_TARGET_DIR/release/holdfast`.
#![allow(clippy::disallowed_methods)] // the lab measures wall-clock times

use lab::acprobe::{self, cstp_frame, Probe};
use lab::cmd::{in_ns, run, Proc};
use lab::openconnect::*;
use lab::raconfig::RaConfigText;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const PASSWORD: &str = "lab-secret-5";
const PROBE_USER: &str = "probe";
const PROBE_PASSWORD: &str = "probe-secret-5";

/// Lines of the daemon's log carrying `%ASA-<sev>-<id>:` that contain every one of `words`.
fn lines_with(log: &str, id: u32, words: &[&str]) -> Vec<String> {
    let tag = format!("-{id}: ");
    log.lines().filter(|l| l.contains("%ASA-") && l.contains(&tag) && words.iter().all(|w| l.contains(w))).map(str::to_string).collect()
}

/// Waits (bounded) until the daemon logged a line with `id` and all `words` after byte
/// `from` of its log; returns it.
fn expect_line(d: &RaDaemon, from: usize, id: u32, words: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = d.log();
        let fresh = log.get(from..).unwrap_or_default();
        if let Some(l) = lines_with(fresh, id, words).into_iter().next() {
            eprintln!("lab: daemon logged: {l}");
            return l;
        }
        assert!(Instant::now() < deadline, "no %ASA-x-{id} line with {words:?} in the daemon's log; last lines:\n{}", d.proc.log_tail(25));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// After the probe's TLS connection broke (from byte `from` of the log): 722037 with `why`,
/// 722023, and 716058 — the session survives and waits for its client, so the next step's
/// marks start after these lines. Returns the 722037 line.
fn expect_connection_lost(d: &RaDaemon, from: usize, why: &[&str]) -> String {
    let user = format!("User <{PROBE_USER}>");
    let mut words = vec![user.as_str()];
    words.extend_from_slice(why);
    let l = expect_line(d, from, 722037, &words);
    expect_line(d, from, 722023, &[&user, "TCP SVC connection terminated"]);
    expect_line(d, from, 716058, &[&user, "lost connection. Waiting to resume"]);
    l
}

fn log_len(d: &RaDaemon) -> usize {
    d.log().len()
}

/// Flips bits in the middle and at the end of a hex cookie (still valid hex, same length).
fn flipped(cookie: &str) -> String {
    let mut b: Vec<u8> = cookie.bytes().collect();
    for i in [b.len() / 2, b.len() - 1] {
        b[i] = if b[i] == b'0' { b'F' } else { b'0' };
    }
    String::from_utf8(b).unwrap()
}

#[test]
fn unknown_group_forged_and_expired_cookies_and_broken_cstp_are_refused() {
    let started = Instant::now();
    assert!(lab::is_root(), "lab tests need root (network namespaces)");
    let oc = run(std::process::Command::new("openconnect").arg("--version"), Duration::from_secs(10));
    assert!(oc.as_ref().is_ok_and(|o| o.stdout.contains("OpenConnect version")), "openconnect is not installed");
    let lab = RaLab::new().expect("lab");
    let cert = make_server_cert(&lab.dir).expect("certificate");
    let config = RaConfigText::issue(&cert, PASSWORD).user(PROBE_USER, PROBE_PASSWORD);
    let d = RaDaemon::start(&lab, "holdfast", &config.text()).expect("holdfast run");
    let gw: SocketAddr = format!("{GW_OUTSIDE_IP}:443").parse().unwrap();

    // The bystander: a real openconnect session with DTLS, pinging all along.
    let mut client = OpenConnect::start(&lab, &cert, "vpn", PASSWORD, "", &[]).expect("openconnect starts");
    let address = client
        .wait_connected(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("openconnect did not connect: {e}\n{}\n--- daemon ---\n{}", client.proc.log_tail(30), d.proc.log_tail(30)));
    client.wait_dtls(Duration::from_secs(20)).expect("DTLS up");
    let deadline = Instant::now() + Duration::from_secs(15);
    while ping(&lab.client, SERVER_IP, 1, None).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no ping reply through the tunnel");
    }
    let ping_started = Instant::now();
    let mut pinger = Proc::spawn("ping", in_ns(&lab.client, &["ping", "-n", "-i", "0.2", SERVER_IP]), &lab.path("ping.log")).expect("ping");

    // --- 1. Unknown group -------------------------------------------------------------------
    // <group-select> naming no group: the login form again with an error, never a cookie,
    // also when the right password for that non-group is posted.
    let mark = log_len(&d);
    let mut p = Probe::connect(&lab.client, gw, &cert.cert).expect("probe TLS to the gateway (verified certificate)");
    eprintln!("lab: probe TLS {}", p.tls_params());
    let login = p.login(PROBE_USER, PROBE_PASSWORD, Some("NOSUCH"), None).expect("login exchange");
    eprintln!("lab: unknown group -> {} {} / {:?}", login.form.status, login.form.reason, login.form.xml_text("error"));
    assert_eq!(login.form.config_auth_type().as_deref(), Some("auth-request"), "a login form, not a session: {}", login.form.body);
    assert!(
        login.form.xml_text("error").is_some_and(|e| e.contains("NOSUCH") && e.contains("not a valid group")),
        "the form says the group is not valid: {}",
        login.form.body
    );
    let reply = login.reply.as_ref().expect("the probe answered the form");
    assert!(login.cookie.is_none(), "no session for a group that does not exist: {reply:?}");
    assert_ne!(reply.config_auth_type().as_deref(), Some("complete"), "{}", reply.body);
    expect_line(&d, mark, 716039, &["IP <203.0.113.10>", "unknown group 'NOSUCH'"]);
    // <group-access> whose path names no group: the ASA falls back to the default group's
    // login page (a group-url that matches nothing selects nothing); holdfast does the same and
    // the form it shows is the default group's, not a group called NOSUCH2.
    let mut p = Probe::connect(&lab.client, gw, &cert.cert).expect("probe");
    let form = p.post_xml(&acprobe::init_xml(GW_OUTSIDE_IP, None, Some(&format!("https://{GW_OUTSIDE_IP}/NOSUCH2"))), None).expect("init");
    assert_eq!(form.config_auth_type().as_deref(), Some("auth-request"), "{}", form.body);
    assert_eq!(form.xml_text("tunnel-group").as_deref(), Some("RA"), "the default group's form: {}", form.body);
    assert!(form.set_cookie("webvpn").is_none(), "no session from an init");

    // --- 2. Forged cookies --------------------------------------------------------------------
    let mark = log_len(&d);
    let random: String = {
        let mut b = [0u8; 32];
        std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).unwrap();
        b.iter().map(|x| format!("{x:02X}")).collect()
    };
    let mut p = Probe::connect(&lab.client, gw, &cert.cert).expect("probe");
    let a = p.tunnel(&random).expect("CONNECT with a random cookie");
    eprintln!("lab: random cookie -> {} {}", a.status, a.reason);
    assert_eq!(a.status, 401, "random cookie refused: {a:?}");
    assert!(p.wait_closed(Duration::from_secs(5)).closed, "the refused connection is closed");
    expect_line(&d, mark, 716039, &["IP <203.0.113.10>", "tunnel refused: invalid or expired session cookie"]);

    // A genuine cookie (the probe user's), then the same with bytes flipped.
    let mut p = Probe::connect(&lab.client, gw, &cert.cert).expect("probe");
    let login = p.login(PROBE_USER, PROBE_PASSWORD, None, None).expect("probe login");
    let cookie = login.cookie.clone().unwrap_or_else(|| panic!("probe login completes: {login:?}"));
    assert_eq!(login.reply.as_ref().and_then(|r| r.config_auth_type()).as_deref(), Some("complete"));
    let mark = log_len(&d);
    let bad = flipped(&cookie);
    let mut p = Probe::connect(&lab.client, gw, &cert.cert).expect("probe");
    let a = p.tunnel(&bad).expect("CONNECT with a flipped cookie");
    eprintln!("lab: flipped cookie -> {} {}", a.status, a.reason);
    assert_eq!(a.status, 401, "flipped cookie refused: {a:?}");
    assert!(a.header("X-CSTP-Address").is_none());
    expect_line(&d, mark, 716039, &["IP <203.0.113.10>", "tunnel refused: invalid or expired session cookie"]);
    // Control: the genuine cookie is accepted (so the refusals above are about the cookie).
    let mut t = Probe::connect(&lab.client, gw, &cert.cert).expect("probe");
    let a = t.tunnel(&cookie).expect("CONNECT with the genuine cookie");
    assert_eq!(a.status, 200, "the genuine cookie gets a tunnel: {a:?}");
    let probe_ip = a.header("X-CSTP-Address").expect("X-CSTP-Address").to_string();
    assert_ne!(probe_ip, address, "the probe has its own address");
    eprintln!("lab: probe tunnel up with {probe_ip}");

    // --- 3. Broken CSTP framing on a live tunnel ----------------------------------------------
    // Each variant on a fresh CONNECT of the probe session (its cookie stays valid while the
    // session waits to resume); the gateway must close that TLS connection and log why.
    let variants: [(&str, Vec<u8>, &str); 3] = [
        ("bad magic", b"XTF\x01\x00\x04\x00\x00abcd".to_vec(), "bad frame magic"),
        ("oversize length", cstp_frame(acprobe::CSTP_DATA, 0xffff, &[0u8; 64]), "exceeds"),
        ("non-zero reserved byte", {
            let mut f = cstp_frame(acprobe::CSTP_KEEPALIVE, 0, &[]);
            f[7] = 0x5a;
            f
        }, "reserved"),
    ];
    let mut tunnel = Some(t);
    for (name, bytes, why) in variants {
        let mut t = match tunnel.take() {
            Some(t) => t,
            None => {
                let mut t = Probe::connect(&lab.client, gw, &cert.cert).expect("probe");
                let a = t.tunnel(&cookie).expect("CONNECT again");
                assert_eq!(a.status, 200, "the session resumes with its cookie: {a:?}");
                assert_eq!(a.header("X-CSTP-Address"), Some(probe_ip.as_str()), "same address on resume");
                t
            }
        };
        let mark = log_len(&d);
        t.send_raw(&bytes).expect("send the broken frame");
        let end = t.wait_closed(Duration::from_secs(10));
        eprintln!("lab: {name} -> closed {} (frames seen {:?})", end.closed, end.frames);
        assert!(end.closed, "{name}: the gateway closes the TLS connection");
        let l = expect_connection_lost(&d, mark, &["SVC closing connection: CSTP framing error", why]);
        assert!(l.contains("%ASA-4-722037"), "{l}");
    }
    // Truncated: a DATA header announcing 1000 bytes, 10 of them, then the connection closes.
    let mut t = Probe::connect(&lab.client, gw, &cert.cert).expect("probe");
    let a = t.tunnel(&cookie).expect("CONNECT again");
    assert_eq!(a.status, 200, "{a:?}");
    let mark = log_len(&d);
    t.send_raw(&cstp_frame(acprobe::CSTP_DATA, 1000, &[0x45; 10])).expect("send a truncated frame");
    std::thread::sleep(Duration::from_millis(300));
    t.close();
    expect_connection_lost(&d, mark, &["closed inside a CSTP frame", "truncated frame discarded"]);

    // --- 4. Expired cookie: the operator ends the probe's session --------------------------------
    let mut t = Probe::connect(&lab.client, gw, &cert.cert).expect("probe");
    let a = t.tunnel(&cookie).expect("CONNECT again");
    assert_eq!(a.status, 200, "{a:?}");
    let mark = log_len(&d);
    let (ok, out) = d.cli(&lab, &["vpn-sessiondb", "logoff", "name", PROBE_USER]);
    assert!(ok && out.contains(&format!("Number of sessions with name \"{PROBE_USER}\" logged off : 1")), "{out}");
    let end = t.wait_closed(Duration::from_secs(10));
    eprintln!("lab: logoff -> probe tunnel closed {} with frames {:?}", end.closed, end.frames);
    assert!(end.closed, "the logged-off session's connection is closed");
    assert!(
        end.frames.contains(&acprobe::CSTP_DISCONNECT) || end.frames.contains(&acprobe::CSTP_TERMINATE),
        "the gateway told the probe why (DISCONNECT/TERMINATE frame): {:?}",
        end.frames
    );
    expect_line(&d, mark, 113019, &[&format!("Username = {PROBE_USER}"), "Session disconnected"]);
    let mark = log_len(&d);
    let mut p = Probe::connect(&lab.client, gw, &cert.cert).expect("probe");
    let a = p.tunnel(&cookie).expect("CONNECT with the ended session's cookie");
    eprintln!("lab: expired cookie -> {} {}", a.status, a.reason);
    assert_eq!(a.status, 401, "a cookie of an ended session is refused: {a:?}");
    expect_line(&d, mark, 716039, &["IP <203.0.113.10>", "tunnel refused: invalid or expired session cookie"]);

    // --- 5. The bystander never noticed -------------------------------------------------------
    // At least 5 s of pings (about 25) so that "at most two lost" means something.
    std::thread::sleep(Duration::from_secs(5).saturating_sub(ping_started.elapsed()).max(Duration::from_secs(1)));
    pinger.signal(libc::SIGINT);
    assert!(pinger.wait_exit(Duration::from_secs(5)).is_some(), "ping stops");
    let pl = std::fs::read_to_string(&pinger.log).unwrap_or_default();
    let stats = pl.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("ping summary: {pl}")).to_string();
    let nums: Vec<u64> = stats.split(',').filter_map(|f| f.split_whitespace().next()?.parse().ok()).collect();
    let (sent, got) = (nums[0], nums[1]);
    eprintln!("lab: bystander pings during the probes: {stats}");
    assert!(sent >= 15, "pinged all along ({sent})");
    assert!(sent - got <= 2, "at most two pings lost: {stats}");
    let oc_log = client.log();
    assert!(!oc_log.to_lowercase().contains("reconnect"), "openconnect never reconnected:\n{}", client.proc.log_tail(30));
    assert_eq!(oc_log.matches("Established DTLS connection").count(), 1, "one DTLS handshake only");
    let script = std::fs::read_to_string(&client.script_out).unwrap_or_default();
    assert_eq!(script.matches("reason=connect ").count(), 1, "the script ran connect once: {script}");
    assert!(!script.contains("reason=reconnect") && !script.contains("reason=disconnect"), "{script}");
    assert!(client.proc.exited().is_none(), "openconnect still running");
    let (ok, show) = d.cli(&lab, &["show", "vpn-sessiondb", "anyconnect"]);
    assert!(ok, "{show}");
    assert!(show.lines().any(|l| l.starts_with("Username") && l.contains(": vpn ")), "vpn listed: {show}");
    assert!(show.lines().any(|l| l.starts_with("Assigned IP") && l.contains(&address)), "its address: {show}");
    assert!(!show.contains(&format!(": {PROBE_USER} ")), "the probe's session is gone: {show}");
    let mut d = d;
    assert!(d.proc.exited().is_none(), "the daemon is alive");
    assert!(!d.log().contains("panicked"), "no panic in the daemon");
    assert_eq!(ping(&lab.client, SERVER_IP, 3, None).unwrap(), 3, "the tunnel still carries traffic");
    client.proc.signal(libc::SIGINT);
    let _ = client.proc.wait_exit(Duration::from_secs(5));
    eprintln!("lab: refusals test passed in {:.1} s", started.elapsed().as_secs_f64());
}
