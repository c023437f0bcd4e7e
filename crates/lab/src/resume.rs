//! Resume-time benchmark of issue 3 (not a test): how fast a long TCP transfer through the
//! tunnel delivers new data after an outage, holdfast pair vs strongSwan pair in the same run.
//!
//! Two kinds of outage, each of a chosen length, applied identically to both implementations:
//!
//! * **Tunnel outage** (metric A): the wan bridge drops every IPv4 frame (nftables, bridge
//!   prerouting) and, right after, both gateways delete all their IKE and CHILD SAs (holdfast
//!   `clear crypto ikev2 sa`; strongSwan `swanctl --terminate --ike l2l --force`). The DELETEs die
//!   in the block, so each side is alone with no SA: the tunnel is really down. Each side then
//!   brings it back its own way (holdfast re-initiates by itself; strongSwan 5.9.8 has no working
//!   trap policies with kernel-libipsec, so the harness asks its initiator for the tunnel at once
//!   and again whenever charon gives up, as an always-up tunnel would be configured). The tunnel
//!   can only return once the block ends. Measured: from the moment the tunnel is back — the
//!   first IKE_AUTH (or CREATE_CHILD_SA) response on the wan link after the block, capture time:
//!   from then on the new CHILD_SA is installed on both sides — to the first new in-order byte
//!   read by the receiver on host-b. The same interval from the first ESP packet on a new SPI is
//!   reported too, but it is no measure of the tunnel: that packet is usually the sender's own
//!   (late) retransmission, so it reads near zero whatever happened before.
//! * **Silent path outage** (metric B): the same block, nothing cleared. Measured: from the
//!   moment the block is removed (time taken just before `nft` runs, so never in holdfast's
//!   favour) to the first new in-order byte at the receiver.
//!
//! Only IPv4 is dropped, ARP passes: the gateways' neighbour entries stay valid, so neither
//! implementation pays an ARP resolution after the outage and the figure is about IPsec and TCP.
//!
//! Traffic: `lab-resume send` on host-a writes a seeded stream paced to a fixed rate (no
//! catching up after a stall, so the path is never saturated); `lab-resume recv` on host-b logs
//! `<CLOCK_REALTIME ns> <cumulative bytes>` for every read. Packet captures (dumpcap) give kernel
//! timestamps on the same clock: the wan bridge (ESP/IKE, headers only) and host-a's link (clear
//! TCP and ICMP, headers only) for the reading of what happened between tunnel return and the
//! first byte (retransmissions, ICMP unreachables, IKE).

use crate::cmd::{in_ns, run, sh, wait_for, Proc};
use crate::topo::HOST_B_IP;
use crate::{io_err, Holdfast, HoldfastParams, LabError, Result, StrongSwan, Suite, SwanParams, Topology};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch on CLOCK_REALTIME: the clock of pcap timestamps.
pub fn epoch_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

// ------------------------------------------------------------------------------------------
// Traffic: the paced sender and the logging receiver (run inside the host namespaces).

const CHUNK: usize = 16 * 1024;

/// Pacing without catch-up: the next write is due when the bytes written so far would have
/// taken at `rate_mbit`; after a stall longer than `MAX_LAG` the schedule restarts from now, so
/// the sender never bursts to make up for an outage.
#[derive(Debug, Clone)]
pub struct Pacer {
    bytes_per_sec: f64,
    base: Instant,
    sent: u64,
}

/// Lag beyond which the pacer forgets the missed schedule.
pub const MAX_LAG: Duration = Duration::from_millis(50);

impl Pacer {
    pub fn new(rate_mbit: f64, now: Instant) -> Pacer {
        Pacer { bytes_per_sec: rate_mbit * 1e6 / 8.0, base: now, sent: 0 }
    }

    /// Records `n` bytes written at `now` and returns how long to sleep before the next write.
    pub fn wrote(&mut self, n: usize, now: Instant) -> Duration {
        self.sent += n as u64;
        let due = self.base + Duration::from_secs_f64(self.sent as f64 / self.bytes_per_sec);
        if now > due + MAX_LAG {
            // Behind (the socket blocked during an outage): restart the schedule here.
            self.base = now;
            self.sent = 0;
            return Duration::ZERO;
        }
        due.saturating_duration_since(now)
    }
}

/// `lab-resume send --connect ADDR:PORT --rate-mbit R [--seconds S]`: streams until killed (or
/// S seconds), paced to R Mbit/s.
pub fn run_sender(to: std::net::SocketAddr, rate_mbit: f64, seconds: Option<f64>) -> std::result::Result<(), String> {
    let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(10)).map_err(|e| format!("connect {to}: {e}"))?;
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; CHUNK];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let start = Instant::now();
    let mut pacer = Pacer::new(rate_mbit, start);
    let mut total: u64 = 0;
    println!("connected {to}");
    let _ = std::io::stdout().flush();
    loop {
        if seconds.is_some_and(|l| start.elapsed().as_secs_f64() >= l) {
            break;
        }
        // xorshift: incompressible, reproducible filler.
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        s.write_all(&buf).map_err(|e| format!("write after {total} bytes: {e}"))?;
        total += buf.len() as u64;
        let wait = pacer.wrote(buf.len(), Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    println!("sent bytes={total}");
    Ok(())
}

/// `lab-resume recv --listen ADDR:PORT --log FILE`: accepts one connection and appends
/// `<realtime ns> <cumulative bytes>` for every read to FILE (flushed at least every 20 ms, so
/// the harness can follow it live), until EOF.
pub fn run_receiver(listen: std::net::SocketAddr, log: &Path) -> std::result::Result<(), String> {
    let l = std::net::TcpListener::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    let f = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, f);
    println!("listening {listen}");
    let _ = std::io::stdout().flush();
    let (mut s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut total: u64 = 0;
    let mut flushed = Instant::now();
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = out.flush();
                return Err(format!("read after {total} bytes: {e}"));
            }
        };
        let ns = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        total += n as u64;
        writeln!(out, "{ns} {total}").map_err(|e| e.to_string())?;
        if flushed.elapsed() >= Duration::from_millis(20) {
            out.flush().map_err(|e| e.to_string())?;
            flushed = Instant::now();
        }
    }
    out.flush().map_err(|e| e.to_string())?;
    println!("recv bytes={total}");
    Ok(())
}

/// One receiver log line: (epoch seconds, cumulative bytes).
pub fn parse_recv_line(line: &str) -> Option<(f64, u64)> {
    let mut it = line.split_whitespace();
    let ns: u128 = it.next()?.parse().ok()?;
    let cum: u64 = it.next()?.parse().ok()?;
    Some(((ns / 1000) as f64 / 1e6, cum))
}

/// What the receiver log says around an outage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecvAround {
    /// Last read before `t_ref`: (time, cumulative bytes).
    pub last_before: Option<(f64, u64)>,
    /// First read at or after `t_ref` that carries bytes beyond `last_before`.
    pub first_after: Option<(f64, u64)>,
}

/// Scans a receiver log for the first new byte at or after `t_ref`.
pub fn recv_around(log: &str, t_ref: f64) -> RecvAround {
    let mut r = RecvAround { last_before: None, first_after: None };
    for (t, cum) in log.lines().filter_map(parse_recv_line) {
        if t < t_ref {
            r.last_before = Some((t, cum));
        } else if cum > r.last_before.map_or(0, |b| b.1) {
            r.first_after = Some((t, cum));
            break;
        }
    }
    r
}

// ------------------------------------------------------------------------------------------
// Capture analysis.

/// One packet of the wan capture, as far as the benchmark cares.
#[derive(Debug, Clone, PartialEq)]
pub struct WanPkt {
    pub t: f64,
    pub spis: Vec<u32>,
    pub ike: bool,
    /// A response of an exchange that creates a CHILD_SA (IKE_AUTH 35 or CREATE_CHILD_SA 36,
    /// RFC 7296 §3.1: exchange type and the R flag 0x20 are in the clear header).
    pub child_resp: bool,
}

/// tshark `-T fields -e frame.time_epoch -e esp.spi -e isakmp.ispi -e isakmp.exchangetype -e
/// isakmp.flags` (separator `;`, all occurrences joined with `,`).
pub fn parse_wan_fields(text: &str) -> Vec<WanPkt> {
    text.lines()
        .filter_map(|l| {
            let c: Vec<&str> = l.split(';').map(str::trim).collect();
            if c.len() < 5 {
                return None;
            }
            let t = c[0].parse().ok()?;
            let spis = c[1].split(',').filter(|s| !s.is_empty()).filter_map(parse_spi).collect();
            let exch: Option<u32> = c[3].split(',').next().and_then(|v| v.parse().ok());
            let flags = c[4].split(',').next().and_then(parse_spi).unwrap_or(0);
            let child_resp = matches!(exch, Some(35) | Some(36)) && flags & 0x20 != 0;
            Some(WanPkt { t, spis, ike: !c[2].is_empty(), child_resp })
        })
        .collect()
}

fn parse_spi(s: &str) -> Option<u32> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// What the wan capture says: the SPIs in use before the break, and after `t_unblock` the first
/// IKE packet and the first ESP packet on an SPI not seen before the break.
#[derive(Debug, Clone, PartialEq)]
pub struct WanSummary {
    pub old_spis: BTreeSet<u32>,
    pub first_ike_after: Option<f64>,
    /// First IKE_AUTH / CREATE_CHILD_SA response after `t_unblock`: the new CHILD_SA exists on
    /// both sides from then on (the responder installed it before answering, the initiator
    /// installs it on receipt).
    pub first_child_resp: Option<f64>,
    pub first_new_spi: Option<(f64, u32)>,
    /// First ESP packet after `t_unblock`, whatever its SPI.
    pub first_esp_after: Option<f64>,
}

pub fn wan_summary(pkts: &[WanPkt], t_break: f64, t_unblock: f64) -> WanSummary {
    let old_spis: BTreeSet<u32> = pkts.iter().filter(|p| p.t < t_break).flat_map(|p| p.spis.iter().copied()).collect();
    let after = || pkts.iter().filter(|p| p.t >= t_unblock);
    WanSummary {
        first_ike_after: after().find(|p| p.ike).map(|p| p.t),
        first_child_resp: after().find(|p| p.child_resp).map(|p| p.t),
        first_new_spi: after().find_map(|p| p.spis.iter().find(|s| !old_spis.contains(s)).map(|s| (p.t, *s))),
        first_esp_after: after().find(|p| !p.spis.is_empty()).map(|p| p.t),
        old_spis,
    }
}

/// One packet on host-a's link: TCP from host-a (data length) or ICMP to host-a.
#[derive(Debug, Clone, PartialEq)]
pub enum HostPkt {
    /// Data segment sent by host-a.
    Data { t: f64, seq: u64, len: u32 },
    /// ICMP destination unreachable received by host-a.
    Unreach { t: f64, code: u8 },
}

/// tshark `-T fields -E occurrence=f -e frame.time_epoch -e ip.src -e tcp.seq_raw -e tcp.len
/// -e icmp.type -e icmp.code` on host-a's link.
pub fn parse_host_fields(text: &str, host_a: &str) -> Vec<HostPkt> {
    text.lines()
        .filter_map(|l| {
            let c: Vec<&str> = l.split(';').map(str::trim).collect();
            if c.len() < 6 {
                return None;
            }
            let t: f64 = c[0].parse().ok()?;
            if !c[4].is_empty() {
                let ty: u8 = c[4].parse().ok()?;
                return (ty == 3).then(|| HostPkt::Unreach { t, code: c[5].parse().unwrap_or(255) });
            }
            let len: u32 = c[3].parse().ok()?;
            (c[1] == host_a && len > 0).then(|| HostPkt::Data { t, seq: c[2].parse().unwrap_or(0), len })
        })
        .collect()
}

/// The sender's side of an outage, read from host-a's link.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SenderSummary {
    /// Data segments host-a sent between the break and `t_unblock` (all retransmissions: nothing
    /// can be acknowledged then).
    pub sent_during: usize,
    /// ICMP unreachables host-a received between the break and the first new byte.
    pub unreach: usize,
    /// Gap between the last two segments sent before `t_unblock` (the sender's RTO then).
    pub last_gap: Option<f64>,
    /// First data segment host-a sent at or after `t_ref`.
    pub first_sent_after_ref: Option<f64>,
}

pub fn sender_summary(pkts: &[HostPkt], t_break: f64, t_unblock: f64, t_ref: f64, t_end: f64) -> SenderSummary {
    let data: Vec<f64> = pkts.iter().filter_map(|p| if let HostPkt::Data { t, .. } = p { Some(*t) } else { None }).collect();
    let during: Vec<f64> = data.iter().copied().filter(|t| *t >= t_break && *t < t_unblock).collect();
    SenderSummary {
        sent_during: during.len(),
        unreach: pkts.iter().filter(|p| matches!(p, HostPkt::Unreach { t, .. } if *t >= t_break && *t <= t_end)).count(),
        last_gap: (during.len() >= 2).then(|| during[during.len() - 1] - during[during.len() - 2]),
        first_sent_after_ref: data.iter().copied().find(|t| *t >= t_ref),
    }
}

// ------------------------------------------------------------------------------------------
// The cases.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imp {
    StrongSwan,
    Holdfast,
}

impl Imp {
    pub fn label(self) -> &'static str {
        match self {
            Imp::StrongSwan => "strongSwan",
            Imp::Holdfast => "holdfast",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Tunnel outage; measured from the first ESP packet on a new SPI.
    TunnelBack,
    /// Silent path outage; measured from the removal of the block.
    PathBack,
}

impl Metric {
    pub fn label(self) -> &'static str {
        match self {
            Metric::TunnelBack => "A: after the tunnel is back",
            Metric::PathBack => "B: after a silent outage ends",
        }
    }
    /// The issue-3 targets for holdfast.
    pub fn target_secs(self) -> f64 {
        match self {
            Metric::TunnelBack => 0.3,
            Metric::PathBack => 2.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Opts {
    pub rate_mbit: f64,
    /// Warm-up of the transfer before the captures start.
    pub warmup: Duration,
    /// The `lab-resume` binary (for the recv/send roles).
    pub tool: PathBuf,
    /// Copy each case's captures, receiver log and gateway logs into `<keep>/<case>/`.
    pub keep: Option<PathBuf>,
}

/// Everything measured in one case.
#[derive(Debug, Clone, Default)]
pub struct CaseResult {
    pub t_break: f64,
    pub t_unblock: f64,
    /// How long `nft` took to remove the block (the measurement starts before it).
    pub unblock_cmd_secs: f64,
    pub wan: Option<WanSummary>,
    pub recv: Option<RecvAround>,
    pub sender: SenderSummary,
    /// The measured figure: metric A from the new SPI, metric B from `t_unblock`.
    pub resume_secs: Option<f64>,
    /// Metric A measured from the first ESP packet on a new SPI instead.
    pub from_new_spi: Option<f64>,
    /// From the end of the block to the first new byte (both metrics).
    pub total_after_unblock: Option<f64>,
    /// Bytes received in the whole case.
    pub bytes: u64,
    pub notes: Vec<String>,
}

/// The gateway pair of one implementation, started fresh for each case.
enum Pair {
    Swan(StrongSwan, StrongSwan),
    Hf(Holdfast, Holdfast),
}

const BLOCK_TABLE: &str = "hf_resume_block";

fn start_pair(t: &Topology, imp: Imp) -> Result<Pair> {
    match imp {
        Imp::StrongSwan => {
            let (ike, esp) = Suite::GcmX25519.swan(false);
            let b = StrongSwan::start(t, &t.gw_b, "swan-b", SwanParams::side('b', &ike, &esp, false))?;
            let a = StrongSwan::start(t, &t.gw_a, "swan-a", SwanParams::side('a', &ike, &esp, true))?;
            a.wait_child_up(Duration::from_secs(30))?;
            Ok(Pair::Swan(a, b))
        }
        Imp::Holdfast => {
            let mut pa = HoldfastParams::side('a', Suite::GcmX25519);
            let mut pb = HoldfastParams::side('b', Suite::GcmX25519);
            // The feature measured (issue 3): flows survive the tunnel and resume at once.
            pa.extra.push("sysopt connection preserve-vpn-flows".into());
            pb.extra.push("sysopt connection preserve-vpn-flows".into());
            // Each daemon its own state directory: the default one is shared by every daemon on
            // the machine, and a table restored from another daemon's snapshot would skew the run.
            let hb = Holdfast::start_with_state(t, &t.gw_b, "hf-b", &pb, Some(&t.path("hf-b-state")))?;
            let ha = Holdfast::start_with_state(t, &t.gw_a, "hf-a", &pa, Some(&t.path("hf-a-state")))?;
            Ok(Pair::Hf(ha, hb))
        }
    }
}

/// Deletes every SA on both sides while the wan is blocked (their DELETEs are lost).
fn clear_both(p: &Pair) -> Result<()> {
    match p {
        Pair::Swan(a, b) => {
            for s in [a, b] {
                s.swanctl(&["--terminate", "--ike", "l2l", "--force"])?;
            }
        }
        Pair::Hf(a, b) => {
            for h in [a, b] {
                h.clear("crypto ikev2 sa")?;
            }
        }
    }
    Ok(())
}

/// strongSwan's initiator is asked for the tunnel until it has one (the harness in the role of
/// an always-up configuration; see the module comment). Returns the thread's stop flag.
fn swan_keep_initiating(a: &StrongSwan) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let uri = format!("unix://{}/charon.vici", a.dir.display());
    std::thread::spawn(move || {
        while !flag.load(Ordering::SeqCst) {
            let mut c = Command::new("swanctl");
            c.args(["--initiate", "--child", "net-net", "--timeout", "200", "--uri", &uri]);
            match run(&mut c, Duration::from_secs(210)) {
                Ok(o) if o.success() => break,
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    });
    stop
}

fn block(t: &Topology) -> Result<()> {
    // Bridge prerouting: dropped frames never reach br0's capture tap, so the wan capture holds
    // only what crossed. IPv4 only (ARP passes, see the module comment).
    t.wan_nft(&format!(
        "table bridge {BLOCK_TABLE} {{\n  chain pre {{\n    type filter hook prerouting priority -300; policy accept;\n    ether type ip drop\n  }}\n}}\n"
    ))
}

fn unblock(t: &Topology) -> Result<()> {
    sh(Some(&t.wan), &["nft", "delete", "table", "bridge", BLOCK_TABLE], Duration::from_secs(10))?;
    Ok(())
}

/// dumpcap with headers only (`-s 96`) and a capture filter.
fn dumpcap(t: &Topology, ns: &str, ifname: &str, filter: &str, name: &str) -> Result<(Proc, PathBuf)> {
    let file = t.path(&format!("{name}.pcapng"));
    let _ = std::fs::remove_file(&file);
    let f = file.to_string_lossy().into_owned();
    let cmd = in_ns(ns, &["dumpcap", "-q", "-i", ifname, "-s", "96", "-B", "64", "-f", filter, "-w", &f]);
    let p = Proc::spawn(&format!("dumpcap {name}"), cmd, &t.path(&format!("{name}-dumpcap.log")))?;
    wait_for(&format!("dumpcap {name} open"), Duration::from_secs(10), Duration::from_millis(20), || {
        std::fs::metadata(&file).ok().filter(|m| m.len() > 0).map(|_| ())
    })?;
    Ok((p, file))
}

fn tshark_fields(file: &Path, occurrence: &str, fields: &[&str], filter: &str) -> Result<String> {
    let f = file.to_string_lossy().into_owned();
    let mut c = Command::new("tshark");
    c.args(["-n", "-r", &f, "-Y", filter, "-T", "fields", "-E", "separator=;", "-E", &format!("occurrence={occurrence}"), "-E", "aggregator=,"]);
    for e in fields {
        c.args(["-e", e]);
    }
    let o = run(&mut c, Duration::from_secs(300))?;
    if !o.success() {
        return Err(LabError::Check(format!("tshark on {f} failed: {}", o.stderr)));
    }
    Ok(o.stdout)
}

/// Reads what was appended to `path` since `*pos`; returns the complete lines.
fn read_new(path: &Path, pos: &mut u64, carry: &mut String) -> String {
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    use std::io::Seek;
    if f.seek(std::io::SeekFrom::Start(*pos)).is_err() {
        return String::new();
    }
    let mut s = String::new();
    let n = f.read_to_string(&mut s).unwrap_or(0);
    *pos += n as u64;
    carry.push_str(&s);
    match carry.rfind('\n') {
        Some(i) => {
            let done = carry[..=i].to_string();
            carry.drain(..=i);
            done
        }
        None => String::new(),
    }
}

/// Runs one case on a fresh topology and a fresh gateway pair.
pub fn run_case(imp: Imp, metric: Metric, outage: Duration, port: u16, o: &Opts) -> Result<CaseResult> {
    let case_name = format!("{}-{}-{}s", imp.label(), if metric == Metric::TunnelBack { "A" } else { "B" }, outage.as_secs());
    let t = Topology::new()?;
    let pair = start_pair(&t, imp)?;
    crate::wait_ping(&t.host_a, HOST_B_IP, Duration::from_secs(30))?;
    let tool = o.tool.to_string_lossy().into_owned();
    let rlog = t.path("recv.log");
    let listen = format!("0.0.0.0:{port}");
    let rl = rlog.to_string_lossy().into_owned();
    let mut rx = Proc::spawn("lab-resume recv", in_ns(&t.host_b, &[&tool, "recv", "--listen", &listen, "--log", &rl]), &t.path("recv.out.log"))?;
    wait_for("receiver listening", Duration::from_secs(10), Duration::from_millis(20), || {
        std::fs::read_to_string(t.path("recv.out.log")).ok().filter(|s| s.contains("listening")).map(|_| ())
    })?;
    let dst = format!("{HOST_B_IP}:{port}");
    let rate = o.rate_mbit.to_string();
    let mut tx = Proc::spawn("lab-resume send", in_ns(&t.host_a, &[&tool, "send", "--connect", &dst, "--rate-mbit", &rate]), &t.path("send.log"))?;
    std::thread::sleep(o.warmup);
    let mut pos = 0u64;
    let mut carry = String::new();
    let warm = read_new(&rlog, &mut pos, &mut carry);
    let warm_bytes = warm.lines().filter_map(parse_recv_line).last().map_or(0, |l| l.1);
    if warm_bytes == 0 {
        return Err(LabError::Check(format!("{}: no data reached host-b during the warm-up", imp.label())));
    }
    let (mut cap_wan, wan_file) = dumpcap(&t, &t.wan, "br0", "udp port 500 or udp port 4500 or ip proto 50", "wan")?;
    let (mut cap_host, host_file) = dumpcap(&t, &t.host_a, "eth0", "tcp or icmp", "host-a")?;
    std::thread::sleep(Duration::from_millis(1500));

    let mut r = CaseResult::default();
    r.t_break = epoch_now();
    block(&t)?;
    let mut keep: Option<Arc<AtomicBool>> = None;
    if metric == Metric::TunnelBack {
        clear_both(&pair)?;
        if let Pair::Swan(a, _) = &pair {
            keep = Some(swan_keep_initiating(a));
        }
    }
    // Halfway through the outage, note what the gateways hold (kept with --keep).
    std::thread::sleep(Duration::from_secs_f64((outage.as_secs_f64() / 2.0 - (epoch_now() - r.t_break)).max(0.0)));
    snapshot(&t, &pair, "mid-outage");
    let elapsed = epoch_now() - r.t_break;
    std::thread::sleep(Duration::from_secs_f64((outage.as_secs_f64() - elapsed).max(0.0)));
    r.t_unblock = epoch_now();
    unblock(&t)?;
    r.unblock_cmd_secs = epoch_now() - r.t_unblock;

    // Follow the receiver until a read after the block ends.
    let limit = Duration::from_secs(60).max(outage + Duration::from_secs(60));
    let deadline = Instant::now() + limit;
    let mut resumed = false;
    while Instant::now() < deadline {
        let new = read_new(&rlog, &mut pos, &mut carry);
        if new.lines().filter_map(parse_recv_line).any(|(ts, _)| ts >= r.t_unblock) {
            resumed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !resumed {
        r.notes.push(format!("no new byte within {} s after the block ended", limit.as_secs()));
    }
    std::thread::sleep(Duration::from_secs(2));
    snapshot(&t, &pair, "after");
    if let Some(k) = keep {
        k.store(true, Ordering::SeqCst);
    }
    // libpcap hands packets over in blocks with a timeout; let the last block go out.
    std::thread::sleep(Duration::from_millis(1500));
    cap_wan.stop();
    cap_host.stop();
    tx.stop();
    rx.wait_exit(Duration::from_secs(5));
    rx.stop();
    let t_end = epoch_now();

    let log = std::fs::read_to_string(&rlog).map_err(io_err("reading the receiver log"))?;
    r.bytes = log.lines().filter_map(parse_recv_line).last().map_or(0, |l| l.1);
    let wan_pkts = parse_wan_fields(&tshark_fields(&wan_file, "a", &["frame.time_epoch", "esp.spi", "isakmp.ispi", "isakmp.exchangetype", "isakmp.flags"], "esp or isakmp")?);
    let wan = wan_summary(&wan_pkts, r.t_break, r.t_unblock);
    let t_ref = match metric {
        Metric::PathBack => Some(r.t_unblock),
        Metric::TunnelBack => {
            if wan.first_new_spi.is_none() {
                r.notes.push("no ESP on a new SPI after the block ended".into());
            }
            if let Some((t_spi, _)) = wan.first_new_spi {
                r.from_new_spi = recv_around(&log, t_spi).first_after.map(|f| f.0 - t_spi);
            }
            // The tunnel is back when the exchange creating the new CHILD_SA completes; the
            // first ESP on the new SPI is often the sender's own retransmission (its arrival
            // then says when TCP tried again, not when the tunnel could carry it).
            match wan.first_child_resp {
                Some(t) => Some(t),
                None => {
                    r.notes.push("no IKE_AUTH/CREATE_CHILD_SA response seen; measured from the new SPI".into());
                    wan.first_new_spi.map(|x| x.0)
                }
            }
        }
    };
    if metric == Metric::PathBack && wan.first_new_spi.is_some() {
        r.notes.push("the SAs changed during the silent outage (new SPI after it)".into());
    }
    let host_pkts = parse_host_fields(
        &tshark_fields(&host_file, "f", &["frame.time_epoch", "ip.src", "tcp.seq_raw", "tcp.len", "icmp.type", "icmp.code"], "tcp or icmp")?,
        crate::topo::HOST_A_IP,
    );
    let after = recv_around(&log, r.t_unblock);
    r.total_after_unblock = after.first_after.map(|f| f.0 - r.t_unblock);
    if let Some(t_ref) = t_ref {
        let ra = recv_around(&log, t_ref);
        r.resume_secs = ra.first_after.map(|f| f.0 - t_ref);
        r.recv = Some(ra);
        r.sender = sender_summary(&host_pkts, r.t_break, r.t_unblock, t_ref, after.first_after.map_or(t_end, |f| f.0));
    }
    r.wan = Some(wan);
    if let Some(k) = &o.keep {
        keep_files(&t.dir, &k.join(&case_name));
    }
    drop(pair);
    drop(t);
    Ok(r)
}

/// Appends the gateways' view (`show conn detail`, `show asp drop`, SAs) to `<run dir>/show.log`.
fn snapshot(t: &Topology, p: &Pair, when: &str) {
    let mut out = format!("===== {when} at {:.6} =====\n", epoch_now());
    match p {
        Pair::Hf(a, b) => {
            for h in [a, b] {
                for what in ["conn detail", "asp drop", "crypto ipsec sa"] {
                    out.push_str(&format!("--- {} show {what}\n{}\n", h.name, h.show(what).unwrap_or_else(|e| e.to_string())));
                }
            }
        }
        Pair::Swan(a, b) => {
            for s in [a, b] {
                out.push_str(&format!("--- {} --list-sas\n{}\n", s.name, s.list_sas().unwrap_or_else(|e| e.to_string())));
            }
        }
    }
    let f = t.path("show.log");
    let old = std::fs::read_to_string(&f).unwrap_or_default();
    let _ = std::fs::write(&f, old + &out);
}

/// Copies the run directory's captures and logs (not sockets) for a later reading.
fn keep_files(from: &Path, to: &Path) {
    let _ = std::fs::create_dir_all(to);
    let walk = |d: &Path, sub: &Path| {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let ok = p.extension().is_some_and(|x| x == "pcapng" || x == "log" || x == "conf");
            if ok && p.is_file() {
                let _ = std::fs::create_dir_all(sub);
                let _ = std::fs::copy(&p, sub.join(e.file_name()));
            }
        }
    };
    walk(from, to);
    for s in ["swan-a", "swan-b"] {
        walk(&from.join(s), &to.join(s));
    }
    eprintln!("lab-resume: kept captures and logs in {}", to.display());
}

/// A compact line of the reading for one case.
pub fn describe(metric: Metric, r: &CaseResult) -> String {
    let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
    let w = r.wan.as_ref();
    let rel = |x: Option<f64>| x.map(|v| v - r.t_unblock);
    let mut s = format!(
        "unblock->IKE {} s, unblock->CHILD_SA up {} s, unblock->new SPI {} s, unblock->first byte {} s; sender: {} segments during the outage, last RTO gap {} s, {} ICMP unreachable, first segment after ref at {} s after unblock",
        f(rel(w.and_then(|w| w.first_ike_after))),
        f(rel(w.and_then(|w| w.first_child_resp))),
        f(rel(w.and_then(|w| w.first_new_spi.map(|x| x.0)))),
        f(r.total_after_unblock),
        r.sender.sent_during,
        f(r.sender.last_gap),
        r.sender.unreach,
        f(rel(r.sender.first_sent_after_ref)),
    );
    if metric == Metric::TunnelBack {
        s.push_str(&format!("; metric A {} s (from the new SPI: {} s)", f(r.resume_secs), f(r.from_new_spi)));
    }
    // A first byte that reached host-b before host-a sent anything after the reference moment
    // cannot be the sender's: the gateway replayed a segment it held.
    if let (Some((t_first, _)), Some(t_sent)) = (r.recv.and_then(|x| x.first_after), r.sender.first_sent_after_ref) {
        // A segment needs well under a millisecond from host-a's link to host-b's reader here;
        // closer than 1 ms the two clocks' readings cannot tell who delivered the byte.
        if t_first + 0.001 < t_sent {
            s.push_str(&format!("; first byte {:.3} s before the sender's next segment (replayed by the gateway)", t_sent - t_first));
        }
    } else if r.recv.and_then(|x| x.first_after).is_some() && r.sender.first_sent_after_ref.is_none() {
        s.push_str("; first byte without any sender segment after ref (replayed by the gateway)");
    }
    for n in &r.notes {
        s.push_str("; NOTE ");
        s.push_str(n);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_holds_the_rate_and_never_catches_up() {
        let t0 = Instant::now();
        let mut p = Pacer::new(80.0, t0); // 10 MB/s
        // 10 kB written at once: due 1 ms later.
        let w = p.wrote(10_000, t0);
        assert!((w.as_secs_f64() - 0.001).abs() < 1e-6, "{w:?}");
        // A 5 s stall: no burst afterwards, the schedule restarts from the stall's end.
        let late = t0 + Duration::from_secs(5);
        assert_eq!(p.wrote(10_000, late), Duration::ZERO);
        let w = p.wrote(10_000, late);
        assert!((w.as_secs_f64() - 0.001).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn receiver_log_finds_the_first_new_byte() {
        let log = "1000000000000000000 100\n1000000001000000000 200\n1000000031500000000 300\n1000000031600000000 400\n";
        let r = recv_around(log, 1_000_000_030.0);
        assert_eq!(r.last_before, Some((1_000_000_001.0, 200)));
        assert_eq!(r.first_after, Some((1_000_000_031.5, 300)));
        // Nothing after the reference: no first byte.
        assert_eq!(recv_around(log, 1_000_000_040.0).first_after, None);
        assert_eq!(parse_recv_line("garbage"), None);
    }

    #[test]
    fn wan_summary_finds_the_new_spi_after_the_block() {
        let text = "100.0;0x0000aaaa;;;\n100.1;0x0000bbbb;;;\n131.0;;1122334455667788;34;0x08\n131.1;;1122334455667788;35;0x20\n131.2;0x0000aaaa;;;\n131.3;0x0000cccc;;;\n";
        let p = parse_wan_fields(text);
        assert_eq!(p.len(), 6);
        assert!(!p[2].child_resp && p[3].child_resp);
        let s = wan_summary(&p, 101.0, 130.0);
        assert_eq!(s.old_spis, [0xaaaa, 0xbbbb].into_iter().collect());
        assert_eq!(s.first_ike_after, Some(131.0));
        assert_eq!(s.first_child_resp, Some(131.1));
        assert_eq!(s.first_new_spi, Some((131.3, 0xcccc)));
        assert_eq!(s.first_esp_after, Some(131.2));
        // Decimal SPIs (tshark BASE_HEX_DEC may print either) parse too.
        assert_eq!(parse_spi("43690"), Some(0xaaaa));
    }

    #[test]
    fn sender_summary_reads_retransmissions_and_icmp() {
        let text = "10.0;10.1.0.10;1;1400;;\n10.5;10.1.0.10;2;1400;;\n12.0;10.1.0.10;2;1400;;\n12.0;10.1.0.1;;;3;1\n16.0;10.1.0.10;2;1400;;\n20.0;10.2.0.10;5;0;;\n21.0;10.1.0.10;2;1400;;\n";
        let p = parse_host_fields(text, "10.1.0.10");
        assert_eq!(p.len(), 6);
        let s = sender_summary(&p, 11.0, 20.0, 20.5, 22.0);
        assert_eq!(s.sent_during, 2);
        assert_eq!(s.unreach, 1);
        assert_eq!(s.last_gap, Some(4.0));
        assert_eq!(s.first_sent_after_ref, Some(21.0));
    }
}
