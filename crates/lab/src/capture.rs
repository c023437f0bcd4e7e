//! Capture of the outside (wan) link with dumpcap, and a tshark-based checker: every packet must
//! dissect without "Malformed Packet", and no packet between the protected networks may cross the
//! wan in clear.

use crate::cmd::{in_ns, run, wait_for, Proc};
use crate::{LabError, Result, Topology};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A running dumpcap on the wan bridge. [`Capture::finish`] stops it and returns the file.
#[derive(Debug)]
pub struct Capture {
    pub file: PathBuf,
    proc: Option<Proc>,
}

impl Capture {
    /// Starts capturing `br0` in the wan namespace into `<run dir>/<name>.pcapng`.
    pub fn start(topo: &Topology, name: &str) -> Result<Capture> {
        Self::start_snaplen(topo, name, None)
    }

    /// Like [`Self::start`], keeping only the first `snaplen` bytes of each frame (when given):
    /// enough for every header a cleartext check needs, and long transfers stay cheap to store
    /// and dissect. tshark reports cut frames as "Packet size limited during capture", never as
    /// "Malformed Packet".
    pub fn start_snaplen(topo: &Topology, name: &str, snaplen: Option<u32>) -> Result<Capture> {
        let file = topo.path(&format!("{name}.pcapng"));
        let f = file.to_string_lossy().into_owned();
        let snap = snaplen.map(|s| s.to_string());
        let mut argv = vec!["dumpcap", "-q", "-i", "br0", "-B", "64"];
        if let Some(s) = &snap {
            argv.extend(["-s", s.as_str()]);
        }
        argv.extend(["-w", &f]);
        let cmd = in_ns(&topo.wan, &argv);
        let proc = Proc::spawn("dumpcap", cmd, &topo.path(&format!("{name}-dumpcap.log")))?;
        let cap = Capture { file, proc: Some(proc) };
        // dumpcap writes the pcapng section header as soon as the interface is open.
        wait_for("dumpcap to open br0", Duration::from_secs(10), Duration::from_millis(20), || {
            std::fs::metadata(&cap.file).ok().filter(|m| m.len() > 0).map(|_| ())
        })?;
        // ... and is capturing a moment after; give it that moment.
        std::thread::sleep(Duration::from_millis(300));
        Ok(cap)
    }

    /// Stops dumpcap (SIGTERM flushes the file) and returns the capture path.
    pub fn finish(mut self) -> PathBuf {
        // libpcap hands packets over in blocks with a timeout (TPACKET_V3); a block that is
        // still open at SIGTERM is lost, so let the last one time out first.
        std::thread::sleep(Duration::from_millis(1500));
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
        self.file.clone()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }
}

/// What tshark found in a capture.
#[derive(Debug, Default, Clone)]
pub struct CaptureReport {
    pub frames: u64,
    /// Summary lines that tshark marked "Malformed Packet".
    pub malformed: Vec<String>,
    /// Frames with any IPv4 layer between `net_a` and `net_b` visible in clear.
    pub cleartext: Vec<String>,
    /// ESP directly over IP (protocol 50).
    pub esp_native: u64,
    /// ESP inside UDP (RFC 3948).
    pub esp_udp: u64,
    /// IKE messages (UDP 500, or 4500 with the non-ESP marker).
    pub ike: u64,
    /// Distinct ESP SPIs seen (a CHILD_SA rekey adds two).
    pub esp_spis: BTreeSet<String>,
    /// Distinct IKE SA SPI pairs with a non-zero responder SPI (an IKE rekey adds one).
    pub ike_sas: BTreeSet<(String, String)>,
    /// Seconds from the start of the capture at which each ESP SPI was first seen.
    pub esp_spi_first_seen: BTreeMap<String, f64>,
}

impl CaptureReport {
    /// ESP SPIs first seen more than `secs` after the first ESP packet of the capture: the
    /// initial CHILD_SAs are all in use within a second, so these come from rekeys (two each).
    pub fn esp_spis_new_after_first(&self, secs: f64) -> usize {
        let Some(first) = self.esp_spi_first_seen.values().copied().reduce(f64::min) else { return 0 };
        self.esp_spi_first_seen.values().filter(|t| **t > first + secs).count()
    }

    /// The issue-2 assertions: no malformed packet, nothing in clear, and the capture is not
    /// trivially empty (at least one IKE and one ESP packet), so the check cannot pass vacuously.
    pub fn check_clean(&self) -> Result<()> {
        let mut problems = Vec::new();
        if !self.malformed.is_empty() {
            problems.push(format!("{} malformed packet(s), e.g.:\n  {}", self.malformed.len(), self.malformed.iter().take(5).cloned().collect::<Vec<_>>().join("\n  ")));
        }
        if !self.cleartext.is_empty() {
            problems.push(format!("{} cleartext packet(s) between protected networks on the wan, e.g.:\n  {}", self.cleartext.len(), self.cleartext.iter().take(5).cloned().collect::<Vec<_>>().join("\n  ")));
        }
        if self.ike == 0 || self.esp_native + self.esp_udp == 0 {
            problems.push(format!("capture has {} IKE and {} ESP packets; expected both", self.ike, self.esp_native + self.esp_udp));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(LabError::Check(format!("capture check failed: {}", problems.join("; "))))
        }
    }
}

/// Dissects `file` with tshark. `net_a`/`net_b` are the protected networks (`10.1.0.0/24`).
pub fn check_capture(file: &std::path::Path, net_a: &str, net_b: &str) -> Result<CaptureReport> {
    let a = parse_net(net_a)?;
    let b = parse_net(net_b)?;
    let f = file.to_string_lossy().into_owned();
    let t = Duration::from_secs(300);
    let mut rep = CaptureReport::default();

    // Pass 1: the plain one-line dissection, exactly what a person would read.
    let plain = run(Command::new("tshark").args(["-n", "-r", &f]), t)?;
    if !plain.success() {
        return Err(LabError::Check(format!("tshark -r {f} failed: {}", plain.stderr)));
    }
    for line in plain.stdout.lines() {
        rep.frames += 1;
        if line.contains("Malformed") {
            rep.malformed.push(line.trim().to_string());
        }
    }

    // Pass 2: fields, every occurrence (outer and any dissected inner IP header).
    let fields = run(
        Command::new("tshark").args([
            "-n", "-r", &f, "-T", "fields", "-E", "separator=;", "-E", "occurrence=a", "-E", "aggregator=,",
            "-e", "frame.number", "-e", "frame.time_relative", "-e", "ip.src", "-e", "ip.dst", "-e", "ip.proto", "-e", "esp.spi",
            "-e", "isakmp.ispi", "-e", "isakmp.rspi",
        ]),
        t,
    )?;
    if !fields.success() {
        return Err(LabError::Check(format!("tshark -T fields on {f} failed: {}", fields.stderr)));
    }
    for line in fields.stdout.lines() {
        let col: Vec<&str> = line.split(';').collect();
        if col.len() < 8 {
            continue;
        }
        let when: f64 = col[1].parse().unwrap_or(0.0);
        let col = [col[0], col[2], col[3], col[4], col[5], col[6], col[7]];
        let srcs: Vec<&str> = col[1].split(',').collect();
        let dsts: Vec<&str> = col[2].split(',').collect();
        for (s, d) in srcs.iter().zip(dsts.iter()) {
            let (Ok(s), Ok(d)) = (s.parse::<Ipv4Addr>(), d.parse::<Ipv4Addr>()) else { continue };
            if (in_net(s, a) && in_net(d, b)) || (in_net(s, b) && in_net(d, a)) {
                rep.cleartext.push(format!("frame {}: {s} -> {d} (ip.proto {})", col[0], col[3]));
            }
        }
        let outer_proto = col[3].split(',').next().unwrap_or("");
        if !col[4].is_empty() {
            match outer_proto {
                "50" => rep.esp_native += 1,
                "17" => rep.esp_udp += 1,
                _ => {}
            }
            for spi in col[4].split(',') {
                rep.esp_spis.insert(spi.to_string());
                rep.esp_spi_first_seen.entry(spi.to_string()).or_insert(when);
            }
        }
        if !col[5].is_empty() {
            rep.ike += 1;
            let r = col[6].split(',').next().unwrap_or("");
            if !r.is_empty() && r.chars().any(|c| c != '0') {
                rep.ike_sas.insert((col[5].split(',').next().unwrap_or("").to_string(), r.to_string()));
            }
        }
    }
    eprintln!(
        "lab: capture {}: {} frames, {} IKE, {} ESP (native) + {} ESP-in-UDP, {} ESP SPIs, {} IKE SAs, {} malformed, {} cleartext",
        file.display(),
        rep.frames,
        rep.ike,
        rep.esp_native,
        rep.esp_udp,
        rep.esp_spis.len(),
        rep.ike_sas.len(),
        rep.malformed.len(),
        rep.cleartext.len()
    );
    Ok(rep)
}

fn parse_net(s: &str) -> Result<(u32, u32)> {
    let bad = || LabError::Check(format!("bad network {s}"));
    let (addr, len) = s.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u32 = len.parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ok((u32::from(addr) & mask, mask))
}

fn in_net(ip: Ipv4Addr, (net, mask): (u32, u32)) -> bool {
    u32::from(ip) & mask == net
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_membership() {
        let a = parse_net("10.1.0.0/24").unwrap();
        assert!(in_net("10.1.0.10".parse().unwrap(), a));
        assert!(!in_net("10.2.0.10".parse().unwrap(), a));
        assert!(parse_net("10.1.0.0/33").is_err());
    }

    #[test]
    fn empty_report_is_not_clean() {
        assert!(CaptureReport::default().check_clean().is_err());
        let ok = CaptureReport { ike: 4, esp_udp: 10, ..Default::default() };
        assert!(ok.check_clean().is_ok());
        let leak = CaptureReport { ike: 4, esp_udp: 10, cleartext: vec!["x".into()], ..Default::default() };
        assert!(leak.check_clean().is_err());
    }
}
