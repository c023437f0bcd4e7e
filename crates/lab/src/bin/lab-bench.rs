//! IPsec throughput benchmark (not a test): iperf3 single-stream TCP, 10 s each way, between the
//! lab's host namespaces through strongSwan <-> strongSwan (the anchor) and holdfast <-> holdfast
//! (native ESP and forced UDP encapsulation), all on the same topology in the same run. For every
//! gateway it reports CPU time per Gbit/s (utime+stime from /proc/<pid>/stat) and UDP receive
//! buffer drops (`Udp: RcvbufErrors` delta from /proc/net/snmp inside the gateway namespace).
//!
//! Usage (root): `lab-bench [--seconds N] [--only strongswan|holdfast]`; `scripts/bench-ipsec`
//! builds and runs it.

use lab::cmd::{in_ns, run, run_ok, Proc};
use lab::topo::HOST_B_IP;
use lab::{Holdfast, HoldfastParams, StrongSwan, Suite, SwanParams, Topology};
use std::time::Duration;

#[derive(Debug, Clone)]
struct Dir {
    label: &'static str,
    gbps: f64,
    retransmits: u64,
    /// Per gateway: (name, cpu seconds during the run, udp datagrams in, rcvbuf errors).
    gw: Vec<(String, f64, u64, u64)>,
    /// Per gateway: raw-socket drops (native ESP arrives on a raw socket, not UDP).
    raw_drops: Vec<u64>,
}

#[derive(Debug)]
struct Row {
    name: String,
    dirs: Result<Vec<Dir>, String>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = args.iter().position(|a| a == "--seconds").and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(10);
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let t = match Topology::new() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("lab-bench: {e}");
            std::process::exit(2);
        }
    };
    let mut rows = Vec::new();
    if only.as_deref() != Some("holdfast") {
        rows.push(Row { name: "strongSwan 5.9.8 <-> strongSwan (libipsec, ESP-in-UDP, aes256gcm16)".into(), dirs: bench_swan(&t, secs) });
    }
    if only.as_deref() != Some("strongswan") {
        rows.push(Row { name: "holdfast <-> holdfast (native ESP, aes-gcm-256)".into(), dirs: bench_holdfast(&t, secs, false) });
        rows.push(Row { name: "holdfast <-> holdfast (forced UDP 4500, aes-gcm-256)".into(), dirs: bench_holdfast(&t, secs, true) });
    }
    report(&rows, secs);
    drop(t);
    if rows.iter().any(|r| r.dirs.is_err()) {
        std::process::exit(1);
    }
}

fn bench_swan(t: &Topology, secs: u64) -> Result<Vec<Dir>, String> {
    let b = StrongSwan::start(t, &t.gw_b, "swan-b", SwanParams::side('b', "aes256gcm16-prfsha256-x25519", "aes256gcm16", false)).map_err(|e| e.to_string())?;
    let a = StrongSwan::start(t, &t.gw_a, "swan-a", SwanParams::side('a', "aes256gcm16-prfsha256-x25519", "aes256gcm16", true)).map_err(|e| e.to_string())?;
    a.wait_child_up(Duration::from_secs(30)).map_err(|e| e.to_string())?;
    lab::wait_ping(&t.host_a, HOST_B_IP, Duration::from_secs(30)).map_err(|e| e.to_string())?;
    let gws = [(t.gw_a.clone(), a.pid().unwrap_or(0)), (t.gw_b.clone(), b.pid().unwrap_or(0))];
    let r = both_ways(t, secs, &gws);
    drop(a);
    drop(b);
    r
}

fn bench_holdfast(t: &Topology, secs: u64, udp: bool) -> Result<Vec<Dir>, String> {
    let mut pa = HoldfastParams::side('a', Suite::GcmX25519);
    let mut pb = HoldfastParams::side('b', Suite::GcmX25519);
    pa.force_udp_encap = udp;
    pb.force_udp_encap = udp;
    let name = if udp { "hf-udp" } else { "hf-esp" };
    let hb = Holdfast::start(t, &t.gw_b, &format!("{name}-b"), &pb).map_err(|e| e.to_string())?;
    let ha = Holdfast::start(t, &t.gw_a, &format!("{name}-a"), &pa).map_err(|e| e.to_string())?;
    lab::wait_ping(&t.host_a, HOST_B_IP, Duration::from_secs(30)).map_err(|e| format!("tunnel did not come up: {e}"))?;
    let gws = [(t.gw_a.clone(), ha.pid().unwrap_or(0)), (t.gw_b.clone(), hb.pid().unwrap_or(0))];
    let r = both_ways(t, secs, &gws);
    drop(ha);
    drop(hb);
    r
}

fn both_ways(t: &Topology, secs: u64, gws: &[(String, u32)]) -> Result<Vec<Dir>, String> {
    Ok(vec![iperf(t, secs, false, gws)?, iperf(t, secs, true, gws)?])
}

/// One iperf3 run host-a -> host-b (`reverse`: host-b -> host-a), measuring the gateways meanwhile.
fn iperf(t: &Topology, secs: u64, reverse: bool, gws: &[(String, u32)]) -> Result<Dir, String> {
    let e = |e: lab::LabError| e.to_string();
    let log = t.path("iperf3-server.log");
    let mut server = Proc::spawn("iperf3 -s", in_ns(&t.host_b, &["iperf3", "-s", "-1", "-B", HOST_B_IP]), &log).map_err(e)?;
    std::thread::sleep(Duration::from_millis(500));
    let before: Vec<_> = gws.iter().map(|(ns, pid)| (cpu_secs(*pid), udp_snmp(ns))).collect();
    let raw_before: Vec<u64> = gws.iter().map(|(ns, _)| raw_drops(ns)).collect();
    let s = secs.to_string();
    let mut argv = vec!["iperf3", "-c", HOST_B_IP, "-t", &s, "-J"];
    if reverse {
        argv.push("-R");
    }
    let out = run_ok(&mut in_ns(&t.host_a, &argv), Duration::from_secs(secs + 30)).map_err(e)?;
    let after: Vec<_> = gws.iter().map(|(ns, pid)| (cpu_secs(*pid), udp_snmp(ns))).collect();
    let raw_drops: Vec<u64> = gws.iter().zip(raw_before).map(|((ns, _), b)| raw_drops(ns).saturating_sub(b)).collect();
    server.wait_exit(Duration::from_secs(5));
    let j: serde_json::Value = serde_json::from_str(&out.stdout).map_err(|x| format!("iperf3 JSON: {x}"))?;
    let bps = j["end"]["sum_received"]["bits_per_second"].as_f64().ok_or("iperf3: no end.sum_received")?;
    let retransmits = j["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    let gw = gws
        .iter()
        .zip(before.iter().zip(after.iter()))
        .map(|((ns, _), ((c0, (in0, err0)), (c1, (in1, err1))))| (ns.rsplit('-').next().unwrap_or(ns).to_string(), c1 - c0, in1 - in0, err1 - err0))
        .collect();
    Ok(Dir { label: if reverse { "b->a" } else { "a->b" }, gbps: bps / 1e9, retransmits, gw, raw_drops })
}

/// utime + stime of a process (all its threads), in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some(close) = stat.rfind(')') else { return 0.0 };
    let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After the comm field: state is index 0, utime is field 14 overall -> index 11, stime 12.
    let ticks: u64 = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// (`Udp: InDatagrams`, `Udp: RcvbufErrors`) inside namespace `ns`.
fn udp_snmp(ns: &str) -> (u64, u64) {
    let Ok(out) = run(&mut in_ns(ns, &["cat", "/proc/net/snmp"]), Duration::from_secs(5)) else { return (0, 0) };
    let udp: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("Udp:")).collect();
    if udp.len() < 2 {
        return (0, 0);
    }
    let names: Vec<&str> = udp[0].split_whitespace().collect();
    let vals: Vec<&str> = udp[1].split_whitespace().collect();
    let get = |k: &str| names.iter().position(|n| *n == k).and_then(|i| vals.get(i)).and_then(|v| v.parse().ok()).unwrap_or(0);
    (get("InDatagrams"), get("RcvbufErrors"))
}

/// Sum of the `drops` column of /proc/net/raw inside namespace `ns` (sockets still open).
fn raw_drops(ns: &str) -> u64 {
    let Ok(out) = run(&mut in_ns(ns, &["cat", "/proc/net/raw"]), Duration::from_secs(5)) else { return 0 };
    out.stdout.lines().skip(1).filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok()).sum()
}

fn report(rows: &[Row], secs: u64) {
    println!();
    println!("iperf3 single-stream TCP, {secs} s per direction, host-a <-> host-b through the gateways");
    println!();
    println!("| setup | dir | Gbit/s | TCP retransmits | gw-a cores per Gbit/s (CPU) | gw-b cores per Gbit/s (CPU) | UDP rcvbuf drops gw-a / gw-b | raw-socket drops gw-a / gw-b |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        match &r.dirs {
            Err(e) => println!("| {} | - | FAILED: {} | | | | | |", r.name, e.lines().next().unwrap_or("")),
            Ok(dirs) => {
                for d in dirs {
                    let per = |i: usize| d.gw.get(i).map(|g| format!("{:.2} ({:.0} % of a core)", if d.gbps > 0.0 { g.1 / secs as f64 / d.gbps } else { 0.0 }, g.1 / secs as f64 * 100.0)).unwrap_or_default();
                    let drops = |i: usize| d.gw.get(i).map(|g| format!("{} of {} ({:.3} %)", g.3, g.2 + g.3, if g.2 + g.3 > 0 { g.3 as f64 * 100.0 / (g.2 + g.3) as f64 } else { 0.0 })).unwrap_or_default();
                    let raw = |i: usize| d.raw_drops.get(i).copied().unwrap_or(0);
                    println!(
                        "| {} | {} | {:.3} | {} | {} | {} | {} / {} | {} / {} |",
                        r.name, d.label, d.gbps, d.retransmits, per(0), per(1), drops(0), drops(1), raw(0), raw(1)
                    );
                }
            }
        }
    }
    println!();
    println!("CPU per Gbit/s = process CPU seconds / (seconds x Gbit/s), i.e. cores busy per Gbit/s.");
    println!("UDP datagram counts are after GRO, so one counted datagram may carry many ESP packets.");
    let anchor = rows.first().and_then(|r| r.dirs.as_ref().ok()).cloned();
    for r in rows.iter().skip(1) {
        if let (Some(a), Ok(h)) = (&anchor, &r.dirs) {
            for (da, dh) in a.iter().zip(h.iter()) {
                if da.gbps > 0.0 {
                    println!("ratio {} {}: {:.2}x strongSwan ({:.3} vs {:.3} Gbit/s)", r.name, dh.label, dh.gbps / da.gbps, dh.gbps, da.gbps);
                }
            }
        } else if r.dirs.is_err() {
            println!("ratio {}: not measured (holdfast run failed)", r.name);
        }
    }
}
