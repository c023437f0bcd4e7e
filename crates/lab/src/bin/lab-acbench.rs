#![allow(clippy::disallowed_methods)] // wall-clock measurement is the point of this tool
//! Remote-access benchmark of issue 5 (root; not a test): holdfast (`holdfast run` from the
//! issue's ASA configuration) against ocserv 1.1.6 in the same run, on the same namespaces
//! (client with openconnect 9.01 — gateway with the server — inside host), with DPD 30 and
//! tunnel MTU 1400 configured on both:
//!
//! (a) iperf3 TCP through one session, client->inside and inside->client, over DTLS and over
//!     TLS (`openconnect --no-dtls`);
//! (b) server CPU (utime+stime from /proc over each iperf3 interval: the holdfast process, or
//!     every ocserv process in the namespace — main, sec-mod, workers) per Gbit/s;
//! (c) DTLS blocked by nftables mid-session (dropped where it arrives, see `block_path`): time from the block to the first probe (UDP,
//!     inside host -> client tunnel address every 10 ms) that was sent after the block and
//!     still reached the client (necessarily over TLS).
//!
//! ```text
//! lab-acbench [--secs 10] [--only holdfast|ocserv] [--fallback-timeout 120] [--mtu 1400]
//! ```
//! `scripts/bench-anyconnect` builds and runs it; results go to docs/benchmarks.md by hand.

use lab::cmd::{in_ns, run, sh, wait_for, Proc};
use lab::ocserv::{clk_tck, cpu_ticks, holdfast_ra_config, loadavg, spawn_in_netns, HoldfastRa, OcClient, Ocserv, RaTuning};
use lab::openconnect::{make_server_cert, RaLab, ServerCert, SERVER_IP};
use std::net::UdpSocket;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PASSWORD: &str = "bench-secret-5";
const PROBE_PORT: u16 = 7777;

fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Imp {
    Holdfast,
    Ocserv,
}

impl Imp {
    fn name(self) -> &'static str {
        match self {
            Imp::Holdfast => "holdfast",
            Imp::Ocserv => "ocserv",
        }
    }
}

/// One iperf3 run: throughput and the server's CPU over the same interval.
#[derive(Debug, Clone, Default)]
struct Tput {
    mbit: f64,
    /// Server CPU seconds / wall seconds (1.0 = one core busy).
    cores: f64,
}

impl Tput {
    /// Cores per Gbit/s.
    fn cpu_per_gbit(&self) -> f64 {
        if self.mbit > 0.0 {
            self.cores / (self.mbit / 1000.0)
        } else {
            f64::NAN
        }
    }
}

#[derive(Debug, Default)]
struct Results {
    dtls_up: Option<Tput>,
    dtls_down: Option<Tput>,
    tls_up: Option<Tput>,
    tls_down: Option<Tput>,
    fallback: Option<Fallback>,
    notes: Vec<String>,
}

#[derive(Debug, Clone)]
struct Fallback {
    /// Block to the first probe sent after the block that arrived.
    secs: f64,
    lost: u64,
    reconnects: usize,
    /// UDP/443 packets the gateway sent to the client in the 2 s of probes before the block
    /// (about 200 when the probes rode DTLS).
    dtls_before: u64,
    /// Packets the block dropped.
    blocked: u64,
}

/// The running server, whichever it is.
enum Server {
    Holdfast(HoldfastRa),
    Ocserv(Ocserv),
}

impl Server {
    fn pids(&self, ns: &str) -> Vec<u32> {
        match self {
            Server::Holdfast(h) => h.pid().into_iter().collect(),
            Server::Ocserv(o) => o.pids(ns),
        }
    }
    fn log_tail(&self) -> String {
        match self {
            Server::Holdfast(h) => h.proc.log_tail(30),
            Server::Ocserv(o) => o.proc.log_tail(30),
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !lab::is_root() {
        eprintln!("lab-acbench: needs root (network namespaces)");
        return ExitCode::FAILURE;
    }
    let secs: u64 = opt(&args, "--secs").and_then(|s| s.parse().ok()).unwrap_or(10);
    let fb_timeout: u64 = opt(&args, "--fallback-timeout").and_then(|s| s.parse().ok()).unwrap_or(120);
    let mtu: u32 = opt(&args, "--mtu").and_then(|s| s.parse().ok()).unwrap_or(1400);
    let imps: Vec<Imp> = match opt(&args, "--only") {
        Some("holdfast") => vec![Imp::Holdfast],
        Some("ocserv") => vec![Imp::Ocserv],
        _ => vec![Imp::Holdfast, Imp::Ocserv],
    };
    let tuning = RaTuning { dpd: 30, mtu };
    let started = Instant::now();
    let load_start = loadavg();
    let mut all = Vec::new();
    for imp in imps {
        eprintln!("==== {} (load {}) ====", imp.name(), loadavg());
        let r = bench_one(imp, tuning, secs, fb_timeout);
        match &r {
            Ok(res) => eprintln!("{} done: {res:?}", imp.name()),
            Err(e) => eprintln!("{} FAILED: {e}", imp.name()),
        }
        all.push((imp, r, loadavg()));
    }
    print_table(&all, secs, mtu);
    println!(
        "load average (1m 5m 15m): start {load_start}, end {}; {} online CPUs; total {:.0} s",
        loadavg(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        started.elapsed().as_secs_f64()
    );
    if all.iter().any(|(_, r, _)| r.is_err()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn bench_one(imp: Imp, tuning: RaTuning, secs: u64, fb_timeout: u64) -> Result<Results, String> {
    let e = |e: lab::LabError| e.to_string();
    let lab = RaLab::new().map_err(e)?;
    let cert = make_server_cert(&lab.dir).map_err(e)?;
    let server = match imp {
        Imp::Holdfast => {
            let text = holdfast_ra_config(&cert, PASSWORD, tuning, ("10.99.0.100", "10.99.0.199", "255.255.255.0"), None);
            Server::Holdfast(HoldfastRa::start(&lab, &text).map_err(e)?)
        }
        Imp::Ocserv => Server::Ocserv(Ocserv::start(&lab, &cert, "vpn", PASSWORD, tuning).map_err(e)?),
    };
    let iperf_log = lab.path("iperf3-server.log");
    let _iperf = Proc::spawn("iperf3 -s", in_ns(&lab.server, &["iperf3", "-s", "-p", "5201"]), &iperf_log).map_err(e)?;
    let mut res = Results::default();

    // DTLS session: throughput both ways, then the DTLS block.
    {
        let mut oc = connect(&lab, &cert, "d", &[], &server)?;
        oc.wait_dtls(Duration::from_secs(30)).map_err(|err| format!("DTLS did not come up: {err}\n{}", oc.proc.log_tail(20)))?;
        res.notes.push(format!("DTLS: {}", oc.dtls_line()));
        res.dtls_up = Some(iperf(&lab, &server, secs, false)?);
        res.dtls_down = Some(iperf(&lab, &server, secs, true)?);
        if oc.log().matches("Established DTLS connection").count() != 1 {
            res.notes.push("DTLS was re-established during the iperf3 runs".into());
        }
        res.fallback = Some(fallback(&lab, &oc, fb_timeout)?);
        unblock_path(&lab);
        oc.proc.stop();
    }
    // TLS-only session.
    {
        let mut oc = connect(&lab, &cert, "t", &["--no-dtls"], &server)?;
        res.notes.push(format!("TLS: {}", oc.tls_line()));
        res.tls_up = Some(iperf(&lab, &server, secs, false)?);
        res.tls_down = Some(iperf(&lab, &server, secs, true)?);
        oc.proc.stop();
    }
    Ok(res)
}

fn connect(lab: &RaLab, cert: &ServerCert, tag: &str, extra: &[&str], server: &Server) -> Result<OcClient, String> {
    let mut oc = OcClient::start(&lab.dir, &lab.client, tag, cert, "vpn", PASSWORD, extra).map_err(|e| e.to_string())?;
    let (addr, mtu) = oc
        .wait_connected(Duration::from_secs(40))
        .map_err(|e| format!("openconnect did not connect: {e}\n{}\n--- server ---\n{}", oc.proc.log_tail(30), server.log_tail()))?;
    eprintln!("lab-acbench: openconnect {tag} connected: address {addr}, tun MTU {mtu}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = run(&mut in_ns(&lab.client, &["ping", "-n", "-c", "1", "-W", "1", SERVER_IP]), Duration::from_secs(5));
        if out.is_ok_and(|o| o.success()) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("no ping through the tunnel\n{}", server.log_tail()));
        }
    }
    Ok(oc)
}

/// iperf3 from the client namespace to the inside host (`reverse`: inside -> client), with the
/// server's CPU over the same interval.
fn iperf(lab: &RaLab, server: &Server, secs: u64, reverse: bool) -> Result<Tput, String> {
    let pids = server.pids(&lab.gw);
    let before: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
    let t0 = Instant::now();
    let s = secs.to_string();
    let mut argv = vec!["iperf3", "-c", SERVER_IP, "-p", "5201", "-t", &s, "-J"];
    if reverse {
        argv.push("-R");
    }
    let out = run(&mut in_ns(&lab.client, &argv), Duration::from_secs(secs + 40)).map_err(|e| e.to_string())?;
    let wall = t0.elapsed().as_secs_f64();
    // Processes that appeared during the run (an ocserv worker) count from zero.
    let after_pids = server.pids(&lab.gw);
    let after: u64 = after_pids.iter().map(|p| cpu_ticks(*p)).sum();
    let cores = after.saturating_sub(before) as f64 / clk_tck() as f64 / wall;
    let v: serde_json::Value = serde_json::from_str(&out.stdout).map_err(|e| format!("iperf3 output: {e}: {}{}", out.stdout, out.stderr))?;
    if let Some(err) = v.get("error") {
        return Err(format!("iperf3: {err}"));
    }
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().ok_or_else(|| format!("iperf3: no sum_received: {}", out.stdout))?;
    let t = Tput { mbit: bps / 1e6, cores };
    eprintln!(
        "lab-acbench: iperf3 {}: {:.0} Mbit/s, server CPU {:.2} cores ({} pids), load {}",
        if reverse { "inside->client" } else { "client->inside" },
        t.mbit,
        t.cores,
        after_pids.len(),
        loadavg()
    );
    Ok(t)
}

/// Probe stream inside -> client every 10 ms; DTLS blocked at the gateway after 2 s; the
/// time from the block to the first probe sent after it that reaches the client.
fn fallback(lab: &RaLab, oc: &OcClient, timeout: u64) -> Result<Fallback, String> {
    let addr = std::fs::read_to_string(&oc.script_out)
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("reason=connect "))?.split_whitespace().find_map(|kv| kv.strip_prefix("ip4=").map(str::to_string)))
        .ok_or("no client address")?;
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // (seq, sent ns, received ns) of every probe received.
    let got: Arc<Mutex<Vec<(u64, u64, u64)>>> = Arc::default();
    let rx = {
        let (stop, got) = (stop.clone(), got.clone());
        spawn_in_netns(&lab.client, move || -> std::io::Result<()> {
            let s = UdpSocket::bind(("0.0.0.0", PROBE_PORT))?;
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = s.recv(&mut buf) {
                    if n >= 16 {
                        let seq = u64::from_be_bytes(buf[..8].try_into().unwrap_or_default());
                        let sent = u64::from_be_bytes(buf[8..16].try_into().unwrap_or_default());
                        got.lock().unwrap_or_else(|p| p.into_inner()).push((seq, sent, base.elapsed().as_nanos() as u64));
                    }
                }
            }
            Ok(())
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let sent_total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tx = {
        let (stop, sent_total) = (stop.clone(), sent_total.clone());
        spawn_in_netns(&lab.server, move || -> std::io::Result<()> {
            let s = UdpSocket::bind(("0.0.0.0", 0))?;
            s.connect((addr.as_str(), PROBE_PORT))?;
            let mut seq = 0u64;
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let mut p = [0u8; 16];
                p[..8].copy_from_slice(&seq.to_be_bytes());
                p[8..].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_be_bytes());
                let _ = s.send(&p);
                seq += 1;
                sent_total.store(seq, Ordering::Relaxed);
                next += Duration::from_millis(10);
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
            Ok(())
        })
    };
    // Count what leaves the gateway toward the client over UDP/443 (DTLS) while the probes
    // run, to show they were riding DTLS when it was cut.
    let count_rules = "table inet acb_count {\n  chain output { type filter hook output priority -60; policy accept;\n    oifname \"out\" udp sport 443 counter\n  }\n}\n";
    let f = lab.path("count-udp.nft");
    std::fs::write(&f, count_rules).map_err(|e| e.to_string())?;
    let _ = sh(Some(&lab.gw), &["nft", "-f", &f.to_string_lossy()], Duration::from_secs(10));
    let udp_out = || -> u64 {
        sh(Some(&lab.gw), &["nft", "list", "table", "inet", "acb_count"], Duration::from_secs(10))
            .ok()
            .and_then(|o| o.stdout.split("packets ").nth(1)?.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let udp0 = udp_out();
    std::thread::sleep(Duration::from_secs(2));
    let dtls_before = udp_out().saturating_sub(udp0);
    let _ = sh(Some(&lab.gw), &["nft", "delete", "table", "inet", "acb_count"], Duration::from_secs(10));
    let before = got.lock().map(|g| g.len()).unwrap_or(0);
    if before < 100 {
        stop.store(true, Ordering::Relaxed);
        return Err(format!("only {before} of ~200 probes arrived before the block"));
    }
    block_path(lab)?;
    let t_block = base.elapsed().as_nanos() as u64;
    eprintln!("lab-acbench: DTLS blocked at the gateway; waiting for probes over TLS");
    let first = wait_for("a probe after the DTLS block", Duration::from_secs(timeout), Duration::from_millis(5), || {
        got.lock().ok()?.iter().filter(|(_, sent, _)| *sent >= t_block).map(|(_, _, r)| *r).min()
    });
    // A little more so the loss count covers the outage only.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let _ = rx.join();
    let _ = tx.join();
    let first = first.map_err(|e| format!("{e}: no probe reached the client over TLS"))?;
    let g = got.lock().map(|g| g.clone()).unwrap_or_default();
    let mut seqs: Vec<u64> = g.iter().map(|x| x.0).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let sent = sent_total.load(Ordering::Relaxed);
    let lost = sent.saturating_sub(seqs.len() as u64);
    let reconnects = oc.log().to_lowercase().lines().filter(|l| l.contains("reconnect")).count();
    let secs = (first - t_block) as f64 / 1e9;
    let blocked = path_blocked_packets(lab);
    eprintln!("lab-acbench: first probe over TLS {secs:.3} s after the block; {lost} of {sent} probes lost; openconnect reconnect lines {reconnects}; UDP/443 packets to the client in the 2 s before the block {dtls_before}, dropped by the block {blocked}");
    Ok(Fallback { secs, lost, reconnects, dtls_before, blocked })
}

/// DTLS blocked the way a firewall in the path blocks it: UDP/443 dropped where it arrives
/// (input hooks of the gateway and of the client), so neither sender gets an error from its
/// own kernel. (A drop in the gateway's output hook makes the server's sendto fail with
/// EPERM, which ocserv takes as an immediate signal to use TLS: not what a path firewall
/// does.)
fn block_path(lab: &RaLab) -> Result<(), String> {
    for (ns, rule) in [(&lab.gw, "iifname \"out\" udp dport 443 counter drop"), (&lab.client, "iifname \"eth0\" udp sport 443 counter drop")] {
        let text = format!("table inet acb_block {{\n  chain input {{ type filter hook input priority -50; policy accept;\n    {rule}\n  }}\n}}\n");
        let f = lab.path(&format!("block-{ns}.nft"));
        std::fs::write(&f, text).map_err(|e| e.to_string())?;
        sh(Some(ns), &["nft", "-f", &f.to_string_lossy()], Duration::from_secs(10)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn unblock_path(lab: &RaLab) {
    for ns in [&lab.gw, &lab.client] {
        let _ = sh(Some(ns), &["nft", "delete", "table", "inet", "acb_block"], Duration::from_secs(10));
    }
}

fn path_blocked_packets(lab: &RaLab) -> u64 {
    [&lab.gw, &lab.client]
        .iter()
        .filter_map(|ns| sh(Some(ns), &["nft", "list", "table", "inet", "acb_block"], Duration::from_secs(10)).ok())
        .filter_map(|o| o.stdout.split("packets ").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn fmt(v: Option<f64>, prec: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.prec$}"),
        _ => "-".into(),
    }
}

fn print_table(all: &[(Imp, Result<Results, String>, String)], secs: u64, mtu: u32) {
    let get = |imp: Imp| all.iter().find(|(i, _, _)| *i == imp).and_then(|(_, r, _)| r.as_ref().ok());
    let (h, o) = (get(Imp::Holdfast), get(Imp::Ocserv));
    type Pick = fn(&Results) -> Option<f64>;
    let rows: Vec<(&str, Pick, usize)> = vec![
        ("DTLS client->inside Mbit/s", |r| r.dtls_up.as_ref().map(|t| t.mbit), 0),
        ("DTLS inside->client Mbit/s", |r| r.dtls_down.as_ref().map(|t| t.mbit), 0),
        ("TLS  client->inside Mbit/s", |r| r.tls_up.as_ref().map(|t| t.mbit), 0),
        ("TLS  inside->client Mbit/s", |r| r.tls_down.as_ref().map(|t| t.mbit), 0),
        ("DTLS client->inside CPU cores/Gbit/s", |r| r.dtls_up.as_ref().map(Tput::cpu_per_gbit), 2),
        ("DTLS inside->client CPU cores/Gbit/s", |r| r.dtls_down.as_ref().map(Tput::cpu_per_gbit), 2),
        ("TLS  client->inside CPU cores/Gbit/s", |r| r.tls_up.as_ref().map(Tput::cpu_per_gbit), 2),
        ("TLS  inside->client CPU cores/Gbit/s", |r| r.tls_down.as_ref().map(Tput::cpu_per_gbit), 2),
        ("DTLS blocked -> first probe over TLS s", |r| r.fallback.as_ref().map(|f| f.secs), 3),
        ("  probes lost (10 ms apart)", |r| r.fallback.as_ref().map(|f| f.lost as f64), 0),
        ("  openconnect reconnect log lines", |r| r.fallback.as_ref().map(|f| f.reconnects as f64), 0),
        ("  DTLS packets to client 2 s before block", |r| r.fallback.as_ref().map(|f| f.dtls_before as f64), 0),
        ("  UDP packets dropped by the block", |r| r.fallback.as_ref().map(|f| f.blocked as f64), 0),
    ];
    println!();
    println!("Remote access, one openconnect 9.01 session, iperf3 TCP {secs} s per row, tunnel MTU {mtu} asked, DPD 30 on both");
    println!("{:<40} {:>10} {:>10} {:>16}", "", "holdfast", "ocserv", "holdfast/ocserv");
    for (name, pick, prec) in rows {
        let hv = h.and_then(pick);
        let ov = o.and_then(pick);
        let ratio = match (hv, ov) {
            (Some(a), Some(b)) if b != 0.0 => Some(a / b),
            _ => None,
        };
        println!("{name:<40} {:>10} {:>10} {:>16}", fmt(hv, prec), fmt(ov, prec), fmt(ratio, 2));
    }
    for (imp, r, load) in all {
        match r {
            Ok(r) => {
                for n in &r.notes {
                    println!("{}: {n}", imp.name());
                }
                for (what, t) in [("DTLS up", &r.dtls_up), ("DTLS down", &r.dtls_down), ("TLS up", &r.tls_up), ("TLS down", &r.tls_down)] {
                    if let Some(t) = t {
                        println!("{}: {what}: server CPU {:.2} cores at {:.0} Mbit/s", imp.name(), t.cores, t.mbit);
                    }
                }
                println!("{}: load average after: {load}", imp.name());
            }
            Err(e) => println!("{}: FAILED: {e}", imp.name()),
        }
    }
}
