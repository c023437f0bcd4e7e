//! The connection table in the running daemon (issue 3), with real Linux TCP between two hosts
//! behind a holdfast <-> holdfast tunnel in network namespaces (root):
//!
//! * a paced transfer shows in `show conn` with the ASA flags and byte counts; without
//!   preserve-vpn-flows, `clear crypto ipsec sa` logs `302014 ... Tunnel has been torn down` and
//!   the flow's later packets are dropped `tcp-not-syn`, so the transfer stalls;
//! * with `sysopt connection preserve-vpn-flows` the conn is kept (flag `V`) while the tunnel is
//!   down and the transfer completes once it is back;
//! * a SIGKILL and restart of a gateway keeps the conn (restored from `--state-dir`).
//!
//! The TCP endpoints are this test binary itself, re-executed inside the host namespaces
//! (`endpoint_helper`), so no tool beyond `ip` and `nft` is needed.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{cli, ipsec_sa_up, sh, skip_without_root, wait_for, Netns};

const SERVER: &str = "10.1.0.10:5001";

/// host-a -- gw-a == gw-b -- host-b; dropping it kills every process it started (by PID) and
/// deletes the namespaces ([`Netns`], which it derefs to).
struct Lab {
    net: Netns,
    cfgs: Vec<PathBuf>,
}

impl std::ops::Deref for Lab {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.net
    }
}

impl std::ops::DerefMut for Lab {
    fn deref_mut(&mut self) -> &mut Netns {
        &mut self.net
    }
}

impl Lab {
    fn new(extra: &str) -> Lab {
        // The endpoints and gateways are killed outright at the end, as before.
        let mut net = Netns::numbered("gwflow");
        net.two_gateways();
        let cfgs = net.example_configs(|_| extra.to_string());
        let mut lab = Lab { net, cfgs };
        lab.start_gw("a");
        lab.start_gw("b");
        let up = wait_for(Duration::from_secs(15), || ipsec_sa_up(&lab.sock("a")) && ipsec_sa_up(&lab.sock("b")));
        assert!(up, "tunnel did not come up");
        lab
    }

    fn sock(&self, side: &str) -> PathBuf {
        self.dir.join(format!("{side}.sock"))
    }

    fn log(&self, side: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("gw-{side}.log"))).unwrap_or_default()
    }

    /// Starts gateway `side` ("a"/"b"); its stderr goes to gw-SIDE.log (appended across restarts).
    fn start_gw(&mut self, side: &str) -> usize {
        let ns = self.name(side);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("gw-{side}.log"))).unwrap();
        let cfg = self.cfgs[if side == "a" { 0 } else { 1 }].clone();
        let (sock, state) = (self.sock(side), self.dir.join(format!("state-{side}")));
        let idx = self.net.spawn_daemon(&ns, &cfg, &sock, &state, log);
        assert!(
            wait_for(Duration::from_secs(5), || show_ok(&sock, "show version")),
            "gateway {side} did not come up: {}",
            self.log(side)
        );
        idx
    }

    /// Runs this test binary's `endpoint_helper` in host namespace `role` with `env`.
    fn endpoint(&mut self, role: &str, env: &[(&str, String)]) -> usize {
        let exe = std::env::current_exe().unwrap();
        let out = std::fs::File::create(self.dir.join(format!("{role}.out"))).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name(role)])
            .arg(exe)
            .args(["--ignored", "--exact", "endpoint_helper", "--nocapture", "--test-threads", "1"])
            .stdout(out)
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        self.push(child)
    }

    /// The server on host-a (10.1.0.10:5001) and the client on host-b: `total` bytes at
    /// `rate` bytes/s. Returns the client's process index.
    fn transfer(&mut self, total: u64, rate: u64) -> usize {
        let progress = self.dir.join("progress");
        let ready = self.dir.join("server-ready");
        self.endpoint(
            "ha",
            &[
                ("HF_ROLE", "server".into()),
                ("HF_TOTAL", total.to_string()),
                ("HF_RATE", rate.to_string()),
                ("HF_READY", ready.display().to_string()),
            ],
        );
        // The client must not race the server's bind (a SYN answered by RST is a conn of its own).
        assert!(wait_for(Duration::from_secs(10), || ready.exists()), "server did not start");
        self.endpoint(
            "hb",
            &[("HF_ROLE", "client".into()), ("HF_TOTAL", total.to_string()), ("HF_PROGRESS", progress.display().to_string())],
        )
    }

    /// Bytes the client has received so far.
    fn progress(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("progress")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
    }

    /// Waits for process `idx` to exit; its success, or None on timeout.
    fn wait(&mut self, idx: usize, limit: Duration) -> Option<bool> {
        self.net.wait_exit(idx, limit).map(|st| st.success())
    }

    /// Silently drops everything on gw-a's wan link (both directions), or lifts that.
    fn block_wan(&self, on: bool) {
        let a = self.name("a");
        if on {
            sh(&format!(
                "ip netns exec {a} nft -f - <<'EOF'\ntable inet gwflow_block {{\n chain in {{ type filter hook input priority -10; policy accept; iifname \"wan-a\" drop; }}\n chain out {{ type filter hook output priority -10; policy accept; oifname \"wan-a\" drop; }}\n}}\nEOF"
            ));
        } else {
            sh(&format!("ip netns exec {a} nft delete table inet gwflow_block"));
        }
    }
}

fn show(sock: &Path, line: &str) -> String {
    cli(sock, line).1
}

fn show_ok(sock: &Path, line: &str) -> bool {
    cli(sock, line).0
}

/// The `show conn` line of the conn with an endpoint at `endpoint` (`ip:port`).
fn conn_line(text: &str, endpoint: &str) -> Option<String> {
    text.lines().find(|l| l.starts_with("TCP ") && l.contains(&format!(" {endpoint}"))).map(str::to_string)
}

/// `(bytes, flags)` of a brief `show conn` line.
fn bytes_flags(line: &str) -> (u64, String) {
    let bytes = line.split(", bytes ").nth(1).and_then(|s| s.split(',').next()).and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    let flags = line.rsplit("flags ").next().unwrap_or("").trim().to_string();
    (bytes, flags)
}

/// A `show asp drop` counter by keyword.
fn asp_drop(text: &str, keyword: &str) -> u64 {
    text.lines()
        .find(|l| l.contains(&format!("({keyword})")))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn transfer_shows_in_show_conn_and_clear_without_preserve_tears_it_down() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new("");
    let (sa, sb) = (lab.sock("a"), lab.sock("b"));
    assert!(show(&sa, "show run all sysopt").contains("no sysopt connection preserve-vpn-flows\n"));
    lab.transfer(8 << 20, 400 << 10);
    assert!(wait_for(Duration::from_secs(15), || lab.progress() >= 200 << 10), "transfer did not start: {}", lab.log("a"));

    // gw-b sees an outbound conn (host-b opened it), gw-a an inbound one (initial SYN from
    // outside: B); both directions carried data (the client's request, the server's stream).
    let conns_b = show(&sb, "show conn");
    let line_b = conn_line(&conns_b, SERVER).unwrap_or_else(|| panic!("no conn on gw-b:\n{conns_b}"));
    assert!(line_b.starts_with("TCP outside 10.1.0.10:5001 inside 10.2.0.10:"), "{line_b}");
    let (bytes_b, flags_b) = bytes_flags(&line_b);
    assert_eq!(flags_b, "UIO", "{line_b}");
    let got = lab.progress();
    assert!(bytes_b >= 100 << 10 && bytes_b <= got + (512 << 10), "bytes {bytes_b} vs client {got}: {line_b}");
    assert!(conns_b.starts_with("1 in use, "), "{conns_b}");
    let conns_a = show(&sa, "show conn");
    let line_a = conn_line(&conns_a, SERVER).unwrap_or_else(|| panic!("no conn on gw-a:\n{conns_a}"));
    assert!(line_a.starts_with("TCP outside 10.2.0.10:") && line_a.contains(" inside 10.1.0.10:5001,"), "{line_a}");
    assert_eq!(bytes_flags(&line_a).1, "UIOB", "{line_a}");
    let detail = show(&sa, "show conn detail");
    assert!(detail.contains("Tunnel: MAP:10") && detail.contains("Initiator: 10.2.0.10, Responder: 10.1.0.10"), "{detail}");
    assert_eq!(show(&sa, "show conn count").lines().next().unwrap_or(""), "1 in use, 1 most used");
    // The tunnel came up without preserve: no PRESERVE flag; native ESP (no NAT): no NATT.
    let ctx = show(&sa, "show asp table vpn-context");
    assert!(ctx.contains(", DECR+ESP, UP, ") && ctx.contains(", ENCR+ESP, UP, "), "{ctx}");
    let log_b = show(&sb, "show logging");
    assert!(log_b.contains("%ASA-6-302013: Built outbound TCP connection"), "{log_b}");

    // The operator clears the SAs: the ASA default tears the tunnel's flows down at once.
    assert!(show_ok(&sa, "clear crypto ipsec sa"));
    let log_a = show(&sa, "show logging");
    let teardown = log_a
        .lines()
        .find(|l| l.contains("%ASA-6-302014: Teardown TCP connection") && l.contains("10.1.0.10/5001"))
        .unwrap_or_else(|| panic!("no 302014:\n{log_a}"));
    assert!(teardown.ends_with("Tunnel has been torn down"), "{teardown}\n{log_a}");
    // The tunnel comes back (gw-a negotiates a new CHILD_SA), but the flow's later packets find
    // no conn: dropped as the first packet of a flow that is not a SYN; the client stalls.
    std::thread::sleep(Duration::from_millis(1500));
    let p1 = lab.progress();
    std::thread::sleep(Duration::from_millis(2500));
    let p2 = lab.progress();
    assert_eq!(p1, p2, "data still flowing after the teardown");
    assert!(p2 < 8 << 20);
    let drops = show(&sa, "show asp drop");
    assert!(asp_drop(&drops, "tcp-not-syn") >= 1, "{drops}");
    assert!(conn_line(&show(&sa, "show conn"), SERVER).is_none());

    // clear asp drop / clear conn.
    assert!(show_ok(&sa, "clear asp drop"));
    assert!(show(&sa, "show asp drop").contains("by admin"));
    let (ok, out) = cli(&sb, "clear conn address 10.1.0.10");
    assert!(ok);
    assert_eq!(out, "1 connection(s) deleted.\n");
    assert!(show(&sb, "show conn").starts_with("0 in use, 1 most used"));
}

#[test]
fn preserved_flow_waits_with_flag_v_and_completes() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new("sysopt connection preserve-vpn-flows\n");
    let (sa, sb) = (lab.sock("a"), lab.sock("b"));
    assert!(show(&sa, "show running-config all sysopt").contains("\nsysopt connection preserve-vpn-flows\n"));
    let total: u64 = 3 << 20;
    let client = lab.transfer(total, 300 << 10);
    assert!(wait_for(Duration::from_secs(15), || lab.progress() >= 300 << 10), "transfer did not start");
    let ctx = show(&sa, "show asp table vpn-context");
    assert!(ctx.contains(", DECR+ESP+PRESERVE, UP, ") && ctx.contains(", ENCR+ESP+PRESERVE, UP, "), "{ctx}");

    // The tunnel goes away and cannot come back at once: the wan is cut, then the SAs cleared.
    lab.block_wan(true);
    assert!(show_ok(&sa, "clear crypto ipsec sa"));
    std::thread::sleep(Duration::from_millis(500));
    let conns = show(&sa, "show conn");
    let line = conn_line(&conns, SERVER).unwrap_or_else(|| panic!("preserved conn missing:\n{conns}"));
    assert!(bytes_flags(&line).1.contains('V'), "{line}");
    std::thread::sleep(Duration::from_millis(2500));
    lab.block_wan(false);

    // The tunnel returns and the same TCP connection carries on to the end.
    let done = lab.wait(client, Duration::from_secs(45));
    let out = std::fs::read_to_string(lab.dir.join("hb.out")).unwrap_or_default();
    assert_eq!(done, Some(true), "transfer did not complete (client got {} bytes): {out}\n{}", lab.progress(), lab.log("a"));
    let log_a = show(&sa, "show logging");
    assert!(!log_a.contains("Tunnel has been torn down"), "{log_a}");
    // The conn ended with the FINs; its byte count covers the whole stream.
    let log_b = show(&sb, "show logging");
    let fins = log_b
        .lines()
        .find(|l| l.contains("302014: Teardown TCP connection") && l.contains("10.1.0.10/5001") && l.ends_with("TCP FINs"))
        .unwrap_or_else(|| panic!("no TCP FINs teardown on gw-b:\n{log_b}"));
    let bytes: u64 = fins.split(" bytes ").nth(1).and_then(|s| s.split(' ').next()).and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!(bytes >= total && bytes < total + total / 5, "{fins}");
}

/// A silent 8 s cut of the wan (no SA is deleted): the path watch notices that nothing comes
/// back, holds the flow's segments and answers them with ICMP unreachable (so Linux keeps its
/// RTO near the base instead of backing off to ~6 s), and replays when the peer answers again.
/// Without that the sender's next retransmission would come ~4.6 s after the cut ends.
#[test]
fn silent_cut_resumes_within_two_seconds() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new("sysopt connection preserve-vpn-flows\n");
    let sa = lab.sock("a");
    lab.transfer(8 << 20, 300 << 10);
    assert!(wait_for(Duration::from_secs(15), || lab.progress() >= 300 << 10), "transfer did not start");
    lab.block_wan(true);
    std::thread::sleep(Duration::from_secs(8));
    let before = lab.progress();
    // The sender got the gateway's host unreachables (RFC 6069) while its segments were held.
    let nstat = Command::new("ip").args(["netns", "exec", &lab.name("ha"), "nstat", "-az", "IcmpInDestUnreachs"]).output().unwrap();
    let nstat = String::from_utf8_lossy(&nstat.stdout).into_owned();
    let unreach: u64 = nstat
        .lines()
        .find_map(|l| l.strip_prefix("IcmpInDestUnreachs"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(unreach >= 1, "no ICMP unreachable reached the sender: {nstat}");
    lab.block_wan(false);
    let t0 = gateway::clock::now();
    assert!(wait_for(Duration::from_secs(10), || lab.progress() > before), "transfer did not resume");
    let resumed = t0.elapsed();
    eprintln!("resumed {:.2} s after the cut ended", resumed.as_secs_f64());
    assert!(resumed <= Duration::from_millis(2000), "resumed only {resumed:?} after the cut ended");
    // Nothing was torn down: the same SAs, the same conn, no V flag.
    let conns = show(&sa, "show conn");
    let line = conn_line(&conns, SERVER).unwrap_or_else(|| panic!("conn missing:\n{conns}"));
    assert!(!bytes_flags(&line).1.contains('V'), "{line}");
    let log_a = show(&sa, "show logging");
    assert!(!log_a.contains("302014"), "{log_a}\n{}", lab.log("a"));
}

#[test]
fn conn_survives_sigkill_and_restart_of_a_gateway() {
    sigkill_and_restart(true);
}

/// The ASA default after a restart: the restored tunnelled conn is torn down (302014 `Tunnel
/// has been torn down`), no mid-stream pickup, the flow's later packets are `tcp-not-syn`.
#[test]
fn conn_dies_after_sigkill_and_restart_without_preserve() {
    sigkill_and_restart(false);
}

fn sigkill_and_restart(preserve: bool) {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(if preserve { "sysopt connection preserve-vpn-flows\n" } else { "" });
    let sa = lab.sock("a");
    let total: u64 = 3 << 20;
    let client = lab.transfer(total, 300 << 10);
    assert!(wait_for(Duration::from_secs(15), || lab.progress() >= 100 << 10), "transfer did not start");
    // Wait until gw-a's periodic snapshot holds the conn.
    let state = lab.dir.join("state-a/flows.json");
    assert!(
        wait_for(Duration::from_secs(6), || std::fs::read_to_string(&state).is_ok_and(|s| s.contains("\"in_port\":5001"))),
        "no snapshot with the conn in {}",
        state.display()
    );
    let gw_a = 0;
    lab.kill_hard(gw_a);
    std::thread::sleep(Duration::from_millis(500));
    let _ = std::fs::remove_file(&sa);
    lab.start_gw("a");
    assert!(lab.log("a").contains("holdfast: connection table restored: 1 conns"), "{}", lab.log("a"));
    if preserve {
        let conns = show(&sa, "show conn");
        assert!(conn_line(&conns, SERVER).is_some(), "restored conn missing:\n{conns}");
        let done = lab.wait(client, Duration::from_secs(45));
        let out = std::fs::read_to_string(lab.dir.join("hb.out")).unwrap_or_default();
        assert_eq!(done, Some(true), "transfer did not complete (client got {} bytes): {out}\n{}", lab.progress(), lab.log("a"));
        assert!(!show(&sa, "show logging").contains("Tunnel has been torn down"));
    } else {
        let log_a = show(&sa, "show logging");
        let teardown = log_a
            .lines()
            .find(|l| l.contains("%ASA-6-302014: Teardown TCP connection") && l.contains("10.1.0.10/5001"))
            .unwrap_or_else(|| panic!("no 302014 after the restore:\n{log_a}"));
        assert!(teardown.ends_with("Tunnel has been torn down"), "{teardown}");
        assert!(conn_line(&show(&sa, "show conn"), SERVER).is_none());
        // The senders retransmit into a table that no longer knows them.
        assert!(
            wait_for(Duration::from_secs(10), || asp_drop(&show(&sa, "show asp drop"), "tcp-not-syn") >= 1),
            "{}",
            show(&sa, "show asp drop")
        );
        let p1 = lab.progress();
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(lab.progress(), p1, "data still flowing");
        assert!(p1 < total);
        assert!(conn_line(&show(&sa, "show conn"), SERVER).is_none(), "a mid-stream segment rebuilt the conn");
    }
}

// ---------------------------------------------------------------------------------------------
// The TCP endpoints, run inside the host namespaces by `Lab::endpoint`.

/// Byte `i` of the stream (a pattern the client checks, so nothing is lost or reordered).
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

#[test]
#[ignore = "helper: the other tests run it inside a network namespace"]
fn endpoint_helper() {
    let role = std::env::var("HF_ROLE").expect("HF_ROLE");
    let total: u64 = std::env::var("HF_TOTAL").expect("HF_TOTAL").parse().unwrap();
    match role.as_str() {
        "server" => {
            let rate: u64 = std::env::var("HF_RATE").expect("HF_RATE").parse().unwrap();
            let l = TcpListener::bind(SERVER).unwrap();
            std::fs::write(std::env::var("HF_READY").expect("HF_READY"), b"").unwrap();
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 4];
            s.read_exact(&mut req).unwrap();
            assert_eq!(&req, b"GET\n");
            let t0 = gateway::clock::now();
            let mut sent = 0u64;
            let mut chunk = vec![0u8; 16 << 10];
            while sent < total {
                let n = chunk.len().min((total - sent) as usize);
                for (k, b) in chunk[..n].iter_mut().enumerate() {
                    *b = pattern(sent + k as u64);
                }
                s.write_all(&chunk[..n]).unwrap();
                sent += n as u64;
                // Paced: never ahead of `rate`.
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(w) = due.checked_sub(t0.elapsed()) {
                    std::thread::sleep(w);
                }
            }
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            println!("server sent {sent}");
        }
        _ => {
            let progress = PathBuf::from(std::env::var("HF_PROGRESS").expect("HF_PROGRESS"));
            let addr: SocketAddr = SERVER.parse().unwrap();
            let t0 = gateway::clock::now();
            let mut s = loop {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(s) => break s,
                    Err(e) if t0.elapsed() < Duration::from_secs(10) => {
                        eprintln!("connect: {e}");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => panic!("connect: {e}"),
                }
            };
            s.write_all(b"GET\n").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let mut got = 0u64;
            let mut buf = vec![0u8; 64 << 10];
            let mut last_report = gateway::clock::now();
            loop {
                let n = s.read(&mut buf).unwrap_or_else(|e| panic!("read after {got} bytes: {e}"));
                if n == 0 {
                    break;
                }
                for (k, b) in buf[..n].iter().enumerate() {
                    assert_eq!(*b, pattern(got + k as u64), "corrupt byte at {}", got + k as u64);
                }
                got += n as u64;
                if last_report.elapsed() >= Duration::from_millis(100) {
                    last_report = gateway::clock::now();
                    let tmp = progress.with_extension("tmp");
                    std::fs::write(&tmp, got.to_string()).unwrap();
                    std::fs::rename(&tmp, &progress).unwrap();
                }
            }
            std::fs::write(&progress, got.to_string()).unwrap();
            println!("client got {got}");
            assert_eq!(got, total);
        }
    }
}
