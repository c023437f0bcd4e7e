#![allow(clippy::disallowed_methods)] // wall-clock measurement is the point of this tool
//! Remote-access benchmark of issue 5 (root; not a test): holdfast (`holdfast run` from the
//! issue's ASA configuration) against ocserv 1.1.6 in the same run, on the same namespaces
//! (client — gateway with the server — inside host), with DPD 30 and tunnel MTU 1400
//! configured on both:
//!
//! (a) iperf3 TCP through one session, client->inside and inside->client, over DTLS and over
//!     TLS, with the real openconnect 9.01 client (`--no-dtls` for TLS) and — unless
//!     `--client openconnect` — lab-acload's benchmark client (`lab-acload --tunnel`: the same
//!     AnyConnect exchange, a multi-queue TUN, one worker per channel direction; over TLS
//!     one CSTP frame per record, the records of a batch handed to TCP in one buffered write);
//! (b) CPU over each iperf3 interval: the server (utime+stime from /proc: the holdfast process,
//!     or every ocserv process in the namespace — main, sec-mod, workers), the client process,
//!     both iperf3 ends (iperf3's own accounting) and the whole machine from /proc/stat (busy
//!     and softirq), so a table row shows who was saturated;
//! (c) DTLS blocked by nftables mid-session (dropped where it arrives, see `block_path`): time
//!     from the block to the first probe (UDP, inside host -> client tunnel address every
//!     10 ms) that was sent after the block and still reached the client (necessarily over
//!     TLS); measured once per server with openconnect.
//!
//! Every throughput row is measured `--repeat` times; the servers alternate order between
//! rounds (holdfast first in even rounds, ocserv first in odd ones) so a drift in machine load
//! hits both; the table shows the median and the range.
//!
//! ```text
//! lab-acbench [--secs 8] [--repeat 3] [--only holdfast|ocserv] [--client both|openconnect|fast]
//!             [--chan both|tls|dtls] [--dir both|up|down] [--fallback-timeout 120] [--mtu 1400]
//!             [--no-fallback] [--pin CLIENT_CPU,SERVER_CPU]
//! ```
//! `--no-fallback` skips (c) (it costs ~30 s per server; throughput-only runs). `--pin` implies
//! it: the processes would still be pinned, so the time would not compare with unpinned runs.
//!
//! `--pin C,S` (measurement knob, off by default; e.g. `--pin 1,0`): before every iperf3 run,
//! every thread of the client process (openconnect or lab-acload) is pinned to CPU C, and every
//! thread of the server (the holdfast daemon, or every ocserv process in the gateway namespace:
//! main, sec-mod, workers) plus both iperf3 ends (the inside `iperf3 -s`, and the client-side
//! `iperf3 -c`, started under `taskset -c S`) to CPU S, with `taskset -a -p`, identically for
//! both servers; the affinity of every thread is read back from /proc and a mismatch fails the
//! row. An ACBENCH_PROBE command then runs on CPU S too, so the client's CPU is its own. The
//! point: give the client a whole CPU to itself and see its ceiling (with `client` ~1.00 cores
//! the client is CPU-bound there). The kernel's packet work in softirq still runs on whichever
//! CPU raised it (for veth and TUN mostly the sender's), so the client's CPU also carries some
//! of the receive path of what it sends. The CPU table then adds the client's threads' time on
//! CPU and runnable-but-waiting from schedstat (`cl-run`, `cl-wt`, cores; cl-run near 1 with
//! little sleep left = the client is CPU-bound) and the busy share of the two CPUs (`cpuC`,
//! `cpuS`, from /proc/stat: 1.00 = never idle, other engineers' niced builds included).
//! `ACBENCH_PROBE='shell command'` runs that command alongside every iperf3 (measurement: `ss`,
//! `perf`), with CLIENT_NS, GW_NS, INSIDE_NS, SERVER_PIDS, CLIENT_PIDS, SECS and ROW (up/down)
//! in its environment; the row's CPU figures then include what the probe costs.
//! `scripts/bench-anyconnect` builds and runs it; results go to docs/benchmarks.md by hand.

use lab::cmd::{in_ns, run, sh, wait_for, Proc};
use lab::ocserv::{
    clk_tck, cpu_ticks, holdfast_ra_config, loadavg, ns_pids_named, spawn_in_netns, HoldfastRa, MachineCpu, OcClient, Ocserv, RaTuning,
};
use lab::openconnect::{make_server_cert, RaLab, ServerCert, GW_OUTSIDE_IP, SERVER_IP};
use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PASSWORD: &str = "bench-secret-5";
const PROBE_PORT: u16 = 7777;

/// An `ACBENCH_PROBE` command running in its own process group: reaped when dropped (also
/// when the row fails early), waited for until `deadline` (the iperf3 run plus 10 s), then
/// killed with everything it started, so a probe that never ends cannot hang the bench.
struct Probe {
    child: std::process::Child,
    deadline: Instant,
}

impl Drop for Probe {
    fn drop(&mut self) {
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() < self.deadline => std::thread::sleep(Duration::from_millis(50)),
                Ok(None) => {
                    // The group id is the child's pid (`process_group(0)`).
                    let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
                    let _ = self.child.wait();
                    return;
                }
            }
        }
    }
}

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

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum ClientKind {
    Openconnect,
    Fast,
}

impl ClientKind {
    fn name(self) -> &'static str {
        match self {
            ClientKind::Openconnect => "openconnect",
            ClientKind::Fast => "fast",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Chan {
    Dtls,
    Tls,
}

/// One table row: which client, which channel, which direction.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct Row {
    client: ClientKind,
    chan: Chan,
    /// inside -> client (iperf3 -R).
    down: bool,
}

impl Row {
    fn label(&self) -> String {
        format!(
            "{} {} {}",
            match self.client {
                ClientKind::Openconnect => "oc  ",
                ClientKind::Fast => "fast",
            },
            match self.chan {
                Chan::Dtls => "DTLS",
                Chan::Tls => "TLS ",
            },
            if self.down { "down" } else { "up  " }
        )
    }
}

/// One iperf3 run and everything's CPU over the same interval. CPU figures are cores:
/// CPU-seconds per wall second (1.0 = one CPU busy).
#[derive(Debug, Clone, Copy)]
struct Sample {
    mbit: f64,
    server: f64,
    client: f64,
    /// iperf3 in the client namespace.
    ip3_client: f64,
    /// iperf3 on the inside host.
    ip3_inside: f64,
    machine: f64,
    softirq: f64,
    /// With `--pin`: busy share of the client's CPU and of the server's CPU (NaN otherwise).
    cpu_pinned: [f64; 2],
    /// The client's threads from schedstat, summed, in cores: [on CPU, runnable but waiting
    /// for a CPU] (in the table only with `--pin`; always in the per-sample line). 1 - both = the share the client slept (waited
    /// for I/O or for work): near 0 with on-CPU near 1 = the client is CPU-bound on its CPU.
    client_sched: [f64; 2],
}

impl Sample {
    /// Whole-machine busy time not charged to the four processes above: other work on the
    /// machine, ksoftirqd, and packet processing that ran in no process's context.
    fn rest(&self) -> f64 {
        self.machine - self.server - self.client - self.ip3_client - self.ip3_inside
    }

    fn server_per_gbit(&self) -> f64 {
        if self.mbit > 0.0 {
            self.server / (self.mbit / 1000.0)
        } else {
            f64::NAN
        }
    }
}

#[derive(Debug, Default)]
struct ImpResults {
    rows: BTreeMap<Row, Vec<Sample>>,
    fallback: Option<Fallback>,
    notes: Vec<String>,
    errors: Vec<String>,
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

struct Cfg {
    tuning: RaTuning,
    secs: u64,
    fb_timeout: u64,
    clients: Vec<ClientKind>,
    acload: PathBuf,
    chans: Vec<Chan>,
    dirs: Vec<bool>,
    pin: Option<Pin>,
    fallback: bool,
}

/// `--pin C,S`: the client on CPU `client`; the server and both iperf3 ends on CPU `server`.
#[derive(Clone, Copy, Debug)]
struct Pin {
    client: usize,
    server: usize,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !lab::is_root() {
        eprintln!("lab-acbench: needs root (network namespaces)");
        return ExitCode::FAILURE;
    }
    let secs: u64 = opt(&args, "--secs").and_then(|s| s.parse().ok()).unwrap_or(8);
    let repeat: usize = opt(&args, "--repeat").and_then(|s| s.parse().ok()).unwrap_or(3).max(1);
    let fb_timeout: u64 = opt(&args, "--fallback-timeout").and_then(|s| s.parse().ok()).unwrap_or(120);
    let mtu: u32 = opt(&args, "--mtu").and_then(|s| s.parse().ok()).unwrap_or(1400);
    let imps: Vec<Imp> = match opt(&args, "--only") {
        Some("holdfast") => vec![Imp::Holdfast],
        Some("ocserv") => vec![Imp::Ocserv],
        None => vec![Imp::Holdfast, Imp::Ocserv],
        Some(other) => {
            eprintln!("lab-acbench: --only {other}: expected holdfast or ocserv");
            return ExitCode::FAILURE;
        }
    };
    let clients = match opt(&args, "--client") {
        Some("fast") => vec![ClientKind::Fast],
        Some("both") | None => vec![ClientKind::Openconnect, ClientKind::Fast],
        Some("openconnect") => vec![ClientKind::Openconnect],
        Some(other) => {
            eprintln!("lab-acbench: --client {other}: expected openconnect, fast or both");
            return ExitCode::FAILURE;
        }
    };
    let acload = std::env::current_exe().ok().and_then(|p| Some(p.parent()?.join("lab-acload"))).unwrap_or_default();
    if clients.contains(&ClientKind::Fast) && !acload.exists() {
        eprintln!("lab-acbench: {} not found (cargo build --release -p holdfast-lab --bin lab-acload)", acload.display());
        return ExitCode::FAILURE;
    }
    // Quick iteration on one row: `--chan tls|dtls`, `--dir up|down` (default: all rows).
    let chans = match opt(&args, "--chan") {
        Some("tls") => vec![Chan::Tls],
        Some("dtls") => vec![Chan::Dtls],
        None => vec![Chan::Dtls, Chan::Tls],
        Some(other) => {
            eprintln!("lab-acbench: --chan {other}: expected tls or dtls");
            return ExitCode::FAILURE;
        }
    };
    let dirs = match opt(&args, "--dir") {
        Some("up") => vec![false],
        Some("down") => vec![true],
        None => vec![false, true],
        Some(other) => {
            eprintln!("lab-acbench: --dir {other}: expected up or down");
            return ExitCode::FAILURE;
        }
    };
    let pin = match opt(&args, "--pin") {
        None => None,
        Some(v) => {
            let n = ncpu();
            match v.split_once(',').map(|(c, s)| (c.trim().parse::<usize>(), s.trim().parse::<usize>())) {
                Some((Ok(client), Ok(server))) if client != server && client < n && server < n => Some(Pin { client, server }),
                _ => {
                    eprintln!("lab-acbench: --pin {v}: expected CLIENT_CPU,SERVER_CPU, two different CPUs below {n}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let fallback = !args.iter().any(|a| a == "--no-fallback") && pin.is_none();
    let cfg = Cfg { tuning: RaTuning { dpd: 30, mtu }, secs, fb_timeout, clients, acload, chans, dirs, pin, fallback };
    let started = Instant::now();
    let load_start = loadavg();
    let mut all: Vec<(Imp, ImpResults)> = imps.iter().map(|i| (*i, ImpResults::default())).collect();
    for round in 0..repeat {
        // Alternate the order so a drift in machine load hits both servers alike.
        let mut order = imps.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for imp in order {
            let load = loadavg();
            eprintln!("==== round {}/{repeat}: {} (load {load}) ====", round + 1, imp.name());
            let res = &mut all.iter_mut().find(|(i, _)| *i == imp).expect("every server has a slot").1;
            res.notes.push(format!("round {}: load at start {load}", round + 1));
            // The DTLS-blocked measurement is slow (ocserv waits for its 25 s timeout) and
            // does not vary much: once per server, in the first round.
            if let Err(e) = bench_round(imp, &cfg, round == 0, res) {
                eprintln!("{} round {} FAILED: {e}", imp.name(), round + 1);
                res.errors.push(format!("round {}: {e}", round + 1));
            }
        }
    }
    print_table(&all, &cfg, repeat);
    println!(
        "load average (1m 5m 15m): start {load_start}, end {}; {} online CPUs; total {:.0} s",
        loadavg(),
        ncpu(),
        started.elapsed().as_secs_f64()
    );
    if all.iter().any(|(_, r)| !r.errors.is_empty()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn ncpu() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn bench_round(imp: Imp, cfg: &Cfg, with_fallback: bool, res: &mut ImpResults) -> Result<(), String> {
    let e = |e: lab::LabError| e.to_string();
    let lab = RaLab::new().map_err(e)?;
    let cert = make_server_cert(&lab.dir).map_err(e)?;
    let server = match imp {
        Imp::Holdfast => {
            let text = holdfast_ra_config(&cert, PASSWORD, cfg.tuning, ("10.99.0.100", "10.99.0.199", "255.255.255.0"), None);
            Server::Holdfast(HoldfastRa::start(&lab, &text).map_err(e)?)
        }
        Imp::Ocserv => Server::Ocserv(Ocserv::start(&lab, &cert, "vpn", PASSWORD, cfg.tuning).map_err(e)?),
    };
    let mut port = 5200u16;
    for &client in &cfg.clients {
        for &chan in &cfg.chans {
            let tag = format!("{}{}", &client.name()[..1], if chan == Chan::Dtls { "d" } else { "t" });
            // A fresh iperf3 server (and port) per client connection: one whose previous test's
            // tunnel went away under it can stay "busy" for minutes (run of 21:53).
            port += 1;
            let iperf_log = lab.path(&format!("iperf3-server-{tag}.log"));
            let p = port.to_string();
            let _iperf = Proc::spawn("iperf3 -s", in_ns(&lab.server, &["iperf3", "-s", "-p", &p]), &iperf_log).map_err(e)?;
            let mut c = connect(&lab, &cert, &tag, client, chan, &server, cfg)?;
            res.notes.push(format!("{} {:?}: {}", client.name(), chan, c.describe()));
            for &down in &cfg.dirs {
                let row = Row { client, chan, down };
                let s = iperf(&lab, &server, port, cfg.secs, down, cfg.pin)?;
                let pinned = match cfg.pin {
                    Some(p) => format!("; pinned: cpu{} (client) busy {:.2}, cpu{} (server, iperf3) busy {:.2}", p.client, s.cpu_pinned[0], p.server, s.cpu_pinned[1]),
                    None => String::new(),
                };
                eprintln!(
                    "lab-acbench: {} {}: {:.0} Mbit/s; cores: server {:.2}, client {:.2} (schedstat on-CPU {:.2} waiting {:.2}), iperf3 client-side {:.2}, inside {:.2}, machine {:.2} (softirq {:.2}){pinned}; load {}",
                    imp.name(),
                    row.label(),
                    s.mbit,
                    s.server,
                    s.client,
                    s.client_sched[0],
                    s.client_sched[1],
                    s.ip3_client,
                    s.ip3_inside,
                    s.machine,
                    s.softirq,
                    loadavg()
                );
                res.rows.entry(row).or_default().push(s);
            }
            if let Client::Oc(oc) = &c {
                if chan == Chan::Dtls && oc.log().matches("Established DTLS connection").count() != 1 {
                    res.notes.push("openconnect: DTLS was re-established during the iperf3 runs".into());
                }
                if chan == Chan::Dtls && client == ClientKind::Openconnect && with_fallback && cfg.fallback {
                    res.fallback = Some(fallback(&lab, oc, cfg.fb_timeout)?);
                    unblock_path(&lab);
                }
            }
            c.stop();
        }
    }
    Ok(())
}

/// The tunnel client of one session.
enum Client {
    Oc(OcClient),
    Fast { proc: Proc, info: String },
}

impl Client {
    fn describe(&self) -> String {
        match self {
            Client::Oc(oc) => {
                let d = oc.dtls_line();
                if d.is_empty() {
                    oc.tls_line()
                } else {
                    d
                }
            }
            Client::Fast { info, .. } => info.clone(),
        }
    }
    fn stop(&mut self) {
        match self {
            Client::Oc(oc) => {
                oc.proc.stop();
            }
            Client::Fast { proc, .. } => {
                proc.stop();
            }
        }
    }
}

fn connect(lab: &RaLab, cert: &ServerCert, tag: &str, kind: ClientKind, chan: Chan, server: &Server, cfg: &Cfg) -> Result<Client, String> {
    let client = match kind {
        ClientKind::Openconnect => {
            let extra: &[&str] = if chan == Chan::Tls { &["--no-dtls"] } else { &[] };
            let mut oc = OcClient::start(&lab.dir, &lab.client, tag, cert, "vpn", PASSWORD, extra).map_err(|e| e.to_string())?;
            let (addr, mtu) = oc
                .wait_connected(Duration::from_secs(40))
                .map_err(|e| format!("openconnect did not connect: {e}\n{}\n--- server ---\n{}", oc.proc.log_tail(30), server.log_tail()))?;
            eprintln!("lab-acbench: openconnect {tag} connected: address {addr}, tun MTU {mtu}");
            if chan == Chan::Dtls {
                oc.wait_dtls(Duration::from_secs(30)).map_err(|err| format!("DTLS did not come up: {err}\n{}", oc.proc.log_tail(20)))?;
            }
            Client::Oc(oc)
        }
        ClientKind::Fast => {
            let ready = lab.path(&format!("fast-{tag}.ready"));
            let _ = std::fs::remove_file(&ready);
            let server_addr = format!("{GW_OUTSIDE_IP}:443");
            let bin = cfg.acload.to_string_lossy().into_owned();
            let tun = format!("fc{tag}");
            let r = ready.to_string_lossy().into_owned();
            let mut argv = vec![
                bin.as_str(),
                "--tunnel",
                "--server",
                &server_addr,
                "--servercert",
                &cert.pin,
                "--user",
                "vpn",
                "--password",
                PASSWORD,
                "--tun",
                &tun,
                "--ready-file",
                &r,
            ];
            if chan == Chan::Tls {
                argv.push("--no-dtls");
            }
            let log = lab.path(&format!("fast-{tag}.log"));
            let mut proc = Proc::spawn(&format!("lab-acload --tunnel {tag}"), in_ns(&lab.client, &argv), &log).map_err(|e| e.to_string())?;
            let info = wait_for("fast client tunnel up", Duration::from_secs(40), Duration::from_millis(50), || {
                if proc.exited().is_some() {
                    return Some(None);
                }
                std::fs::read_to_string(&ready).ok().filter(|t| t.ends_with('\n')).map(Some)
            })
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("lab-acload --tunnel exited:\n{}\n--- server ---\n{}", proc.log_tail(30), server.log_tail()))?;
            eprintln!("lab-acbench: fast client {tag} up: {}", info.trim());
            Client::Fast { proc, info: info.trim().to_string() }
        }
    };
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
    Ok(client)
}

/// The client processes in the client namespace (openconnect or lab-acload).
fn client_pids(lab: &RaLab) -> Vec<u32> {
    ns_pids_named(&lab.client, &["openconnect", "lab-acload"])
}

fn ticks(pids: &[u32]) -> u64 {
    pids.iter().map(|p| cpu_ticks(*p)).sum()
}

/// iperf3 from the client namespace to the inside host (`reverse`: inside -> client), with
/// the CPU of everything involved over the same interval.
fn iperf(lab: &RaLab, server: &Server, port: u16, secs: u64, reverse: bool, pin: Option<Pin>) -> Result<Sample, String> {
    // iperf3 -s serves one test at a time and sometimes still holds the previous one (its
    // tunnel went away under it) for a few seconds: try again then.
    let mut attempt = 0;
    loop {
        attempt += 1;
        match iperf_once(lab, server, port, secs, reverse, pin) {
            Err(e) if e.contains("server is busy") && attempt < 8 => {
                eprintln!("lab-acbench: {e}; again in 2 s");
                std::thread::sleep(Duration::from_secs(2));
            }
            r => return r,
        }
    }
}

fn iperf_once(lab: &RaLab, server: &Server, port: u16, secs: u64, reverse: bool, pin: Option<Pin>) -> Result<Sample, String> {
    let (spids, cpids) = (server.pids(&lab.gw), client_pids(lab));
    if let Some(p) = pin {
        pin_processes(lab, &spids, &cpids, p)?;
    }
    let (s0, c0, m0, pc0, cs0) = (ticks(&spids), ticks(&cpids), MachineCpu::sample(), per_cpu_ticks(), schedstat(&cpids));
    let t0 = Instant::now();
    let (s, p) = (secs.to_string(), port.to_string());
    let server_cpu = pin.map(|p| p.server.to_string()).unwrap_or_default();
    let mut argv = vec!["iperf3", "-c", SERVER_IP, "-p", &p, "-t", &s, "-J"];
    if pin.is_some() {
        // The client-side iperf3 goes with the server (the client's CPU stays its own).
        argv.splice(0..0, ["taskset", "-c", server_cpu.as_str()]);
    }
    if reverse {
        argv.push("-R");
    }
    // Measurement hook: ACBENCH_PROBE (a shell command) runs alongside iperf3 with the
    // namespaces and process ids in its environment (ss, perf, /proc sampling).
    let probe = std::env::var("ACBENCH_PROBE").ok().and_then(|cmd| {
        let ids = |v: &[u32]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" ");
        let mut c = if pin.is_some() {
            let mut c = std::process::Command::new("taskset");
            c.args(["-c", server_cpu.as_str(), "sh"]);
            c
        } else {
            std::process::Command::new("sh")
        };
        c.arg("-c")
            .arg(cmd)
            .env("CLIENT_NS", &lab.client)
            .env("GW_NS", &lab.gw)
            .env("INSIDE_NS", &lab.server)
            .env("SERVER_PIDS", ids(&spids))
            .env("CLIENT_PIDS", ids(&cpids))
            .env("SECS", secs.to_string())
            .env("ROW", if reverse { "down" } else { "up" })
            .process_group(0)
            .spawn()
            .ok()
            .map(|child| Probe { child, deadline: t0 + Duration::from_secs(secs + 10) })
    });
    let out = run(&mut in_ns(&lab.client, &argv), Duration::from_secs(secs + 40)).map_err(|e| e.to_string())?;
    let wall = t0.elapsed().as_secs_f64();
    // Processes that appeared during the run (an ocserv worker) count from zero.
    let (s1, c1, m1, pc1, cs1) = (ticks(&server.pids(&lab.gw)), ticks(&client_pids(lab)), MachineCpu::sample(), per_cpu_ticks(), schedstat(&cpids));
    drop(probe);
    let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / clk_tck() as f64 / wall;
    let (machine, softirq) = m1.cores_since(&m0, ncpu());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).map_err(|e| format!("iperf3 output: {e}: {}{}", out.stdout, out.stderr))?;
    if let Some(err) = v.get("error") {
        return Err(format!("iperf3: {err}"));
    }
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().ok_or_else(|| format!("iperf3: no sum_received: {}", out.stdout))?;
    // iperf3's own getrusage accounting over the test, in percent of one CPU.
    let util = &v["end"]["cpu_utilization_percent"];
    let pct = |k: &str| util[k].as_f64().map_or(f64::NAN, |p| p / 100.0);
    Ok(Sample {
        mbit: bps / 1e6,
        server: per_s(s0, s1),
        client: per_s(c0, c1),
        ip3_client: pct("host_total"),
        ip3_inside: pct("remote_total"),
        machine,
        softirq,
        cpu_pinned: match pin {
            Some(p) => [cpu_busy_since(&pc0, &pc1, p.client), cpu_busy_since(&pc0, &pc1, p.server)],
            None => [f64::NAN; 2],
        },
        client_sched: [(cs1.0.saturating_sub(cs0.0)) as f64 / 1e9 / wall, (cs1.1.saturating_sub(cs0.1)) as f64 / 1e9 / wall],
    })
}

/// Nanoseconds on CPU and runnable-but-waiting, summed over every thread of `pids`
/// (/proc/PID/task/TID/schedstat; threads that ended in between are lost, which is why this
/// is only used for the client, whose threads live as long as its session).
fn schedstat(pids: &[u32]) -> (u64, u64) {
    let mut sum = (0, 0);
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for t in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(t.path().join("schedstat")) else { continue };
            let mut f = text.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
            sum.0 += f.next().unwrap_or(0);
            sum.1 += f.next().unwrap_or(0);
        }
    }
    sum
}

/// `--pin`: every thread of the client processes to `pin.client`; every thread of the server
/// processes and of the inside host's iperf3 to `pin.server` (`taskset -a -p`, before every
/// iperf3 run, so an ocserv worker forked since is caught). Read back from /proc: a thread
/// left elsewhere fails the row rather than giving a mislabelled figure.
fn pin_processes(lab: &RaLab, spids: &[u32], cpids: &[u32], pin: Pin) -> Result<(), String> {
    let inside = ns_pids_named(&lab.server, &["iperf3"]);
    if cpids.is_empty() || spids.is_empty() || inside.is_empty() {
        return Err(format!("--pin: no process to pin (client {cpids:?}, server {spids:?}, inside iperf3 {inside:?})"));
    }
    let groups = [(cpids, pin.client), (spids, pin.server), (&inside[..], pin.server)];
    for (pids, cpu) in groups {
        let c = cpu.to_string();
        for pid in pids {
            // Its exit status is not checked: a process that exited meanwhile is not an
            // error, and a live one left unmoved is caught by the read-back below.
            run(std::process::Command::new("taskset").args(["-a", "-p", "-c", &c, &pid.to_string()]), Duration::from_secs(10)).map_err(|e| e.to_string())?;
        }
    }
    for (pids, cpu) in groups {
        for pid in pids {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
            for t in tasks.flatten() {
                let Ok(status) = std::fs::read_to_string(t.path().join("status")) else { continue };
                let allowed = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(str::trim).unwrap_or("?");
                if allowed != cpu.to_string() {
                    return Err(format!("--pin: pid {pid} thread {} allowed on CPUs {allowed}, wanted {cpu}", t.file_name().to_string_lossy()));
                }
            }
        }
    }
    Ok(())
}

/// (busy, total) clock ticks per CPU from the `cpuN` lines of /proc/stat (busy = user + nice +
/// system + irq + softirq + steal; total adds idle and iowait), indexed by N.
fn per_cpu_ticks() -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(idx) = f.next().and_then(|n| n.strip_prefix("cpu")).and_then(|n| n.parse::<usize>().ok()) else { continue };
        let v: Vec<u64> = f.map(|x| x.parse().unwrap_or(0)).collect();
        let g = |i: usize| v.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal
        let busy = g(0) + g(1) + g(2) + g(5) + g(6) + g(7);
        if out.len() <= idx {
            out.resize(idx + 1, (0, 0));
        }
        out[idx] = (busy, busy + g(3) + g(4));
    }
    out
}

/// Busy share (0..1) of CPU `cpu` between two [`per_cpu_ticks`] samples.
fn cpu_busy_since(a: &[(u64, u64)], b: &[(u64, u64)], cpu: usize) -> f64 {
    match (a.get(cpu), b.get(cpu)) {
        (Some(x), Some(y)) if y.1 > x.1 => y.0.saturating_sub(x.0) as f64 / (y.1 - x.1) as f64,
        _ => f64::NAN,
    }
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

/// Median (mean of the middle two for an even count), minimum and maximum of the finite values.
fn stats(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Some((med, v[0], v[n - 1]))
}

fn print_table(all: &[(Imp, ImpResults)], cfg: &Cfg, repeat: usize) {
    let get = |imp: Imp| all.iter().find(|(i, _)| *i == imp).map(|(_, r)| r);
    let (h, o) = (get(Imp::Holdfast), get(Imp::Ocserv));
    let mut rows: Vec<Row> = all.iter().flat_map(|(_, r)| r.rows.keys().copied()).collect();
    rows.sort();
    rows.dedup();
    let pick = |r: Option<&ImpResults>, row: &Row, f: fn(&Sample) -> f64| -> Option<(f64, f64, f64)> {
        stats(r?.rows.get(row)?.iter().map(f).collect())
    };
    println!();
    println!(
        "Remote access, one session per row, iperf3 TCP {} s per sample, {repeat} round(s) with the server order alternating, tunnel MTU {} asked, DPD 30 on both",
        cfg.secs, cfg.tuning.mtu
    );
    println!("oc = openconnect 9.01, fast = lab-acload --tunnel; up = client->inside, down = inside->client (iperf3 -R)");
    if let Some(p) = cfg.pin {
        println!("PINNED (--pin {},{}): client on CPU {}; server and both iperf3 ends on CPU {}", p.client, p.server, p.client, p.server);
    }
    println!();
    println!("Throughput, Mbit/s: median [min-max] (n samples)");
    println!("{:<16} {:>22} {:>22} {:>16}", "", "holdfast", "ocserv", "holdfast/ocserv");
    let cell = |s: Option<(f64, f64, f64)>, n: usize| match s {
        Some((m, lo, hi)) => format!("{m:.0} [{lo:.0}-{hi:.0}] ({n})"),
        None => "-".into(),
    };
    for row in &rows {
        let hs = pick(h, row, |s| s.mbit);
        let os = pick(o, row, |s| s.mbit);
        let n = |r: Option<&ImpResults>| r.and_then(|r| r.rows.get(row)).map_or(0, Vec::len);
        let ratio = match (hs, os) {
            (Some((a, ..)), Some((b, ..))) if b > 0.0 => Some(a / b),
            _ => None,
        };
        println!("{:<16} {:>22} {:>22} {:>16}", row.label(), cell(hs, n(h)), cell(os, n(o)), fmt(ratio, 2));
    }
    println!();
    println!(
        "CPU over the same intervals, medians, in cores (CPU-seconds per second; this machine has {} CPUs): server, server per Gbit/s, client process, iperf3 in the client namespace, iperf3 on the inside host, whole machine busy (incl. softirq; other engineers' work too), its softirq part (the kernel's packet work; with tick accounting it is also inside the process figures when it ran in their context) and the rest (machine minus the four processes)",
        ncpu()
    );
    let pin_head = cfg.pin.map_or(String::new(), |p| format!(" {:>6} {:>6} {:>6} {:>6}", "cl-run", "cl-wt", format!("cpu{}", p.client), format!("cpu{}", p.server)));
    println!(
        "{:<16} {:<9} {:>7} {:>9} {:>7} {:>7} {:>7} {:>8} {:>8} {:>6}{pin_head}",
        "", "", "server", "srv/Gbps", "client", "ip3-cl", "ip3-in", "machine", "softirq", "rest"
    );
    for row in &rows {
        for (imp, r) in [(Imp::Holdfast, h), (Imp::Ocserv, o)] {
            let Some(samples) = r.and_then(|r| r.rows.get(row)) else { continue };
            let med = |f: fn(&Sample) -> f64| fmt(stats(samples.iter().map(f).collect()).map(|s| s.0), 2);
            let pin_cols = if cfg.pin.is_some() {
                format!(" {:>6} {:>6} {:>6} {:>6}", med(|s| s.client_sched[0]), med(|s| s.client_sched[1]), med(|s| s.cpu_pinned[0]), med(|s| s.cpu_pinned[1]))
            } else {
                String::new()
            };
            println!(
                "{:<16} {:<9} {:>7} {:>9} {:>7} {:>7} {:>7} {:>8} {:>8} {:>6}{pin_cols}",
                row.label(),
                imp.name(),
                med(|s| s.server),
                med(Sample::server_per_gbit),
                med(|s| s.client),
                med(|s| s.ip3_client),
                med(|s| s.ip3_inside),
                med(|s| s.machine),
                med(|s| s.softirq),
                med(Sample::rest)
            );
        }
    }
    println!();
    println!("DTLS blocked mid-session (openconnect, first round)");
    type Pick = fn(&Fallback) -> f64;
    let fb_rows: Vec<(&str, Pick, usize)> = vec![
        ("DTLS blocked -> first probe over TLS s", |f| f.secs, 3),
        ("  probes lost (10 ms apart)", |f| f.lost as f64, 0),
        ("  openconnect reconnect log lines", |f| f.reconnects as f64, 0),
        ("  DTLS packets to client 2 s before block", |f| f.dtls_before as f64, 0),
        ("  UDP packets dropped by the block", |f| f.blocked as f64, 0),
    ];
    println!("{:<42} {:>10} {:>10} {:>16}", "", "holdfast", "ocserv", "holdfast/ocserv");
    for (name, f, prec) in fb_rows {
        let hv = h.and_then(|r| r.fallback.as_ref()).map(f);
        let ov = o.and_then(|r| r.fallback.as_ref()).map(f);
        let ratio = match (hv, ov) {
            (Some(a), Some(b)) if b != 0.0 => Some(a / b),
            _ => None,
        };
        println!("{name:<42} {:>10} {:>10} {:>16}", fmt(hv, prec), fmt(ov, prec), fmt(ratio, 2));
    }
    for (imp, r) in all {
        let mut seen = std::collections::BTreeSet::new();
        for n in &r.notes {
            // The same cipher line appears every round; show it once.
            if seen.insert(n.clone()) {
                println!("{}: {n}", imp.name());
            }
        }
        for e in &r.errors {
            println!("{}: FAILED {e}", imp.name());
        }
    }
}
