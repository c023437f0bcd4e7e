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

/// dumpcap on one interface of a network namespace (e.g. a VPN client's tun), headers only.
/// [`IfCapture::finish`] stops it and returns the file.
#[derive(Debug)]
pub struct IfCapture {
    pub file: PathBuf,
    proc: Option<Proc>,
}

impl IfCapture {
    /// Captures `iface` in `ns` into `file`, keeping the first `snaplen` bytes of each packet
    /// (enough for the IPv4 + TCP/ICMP headers; sizes come from the IP header, not the cut).
    pub fn start(ns: &str, iface: &str, file: PathBuf, snaplen: u32) -> Result<IfCapture> {
        let f = file.to_string_lossy().into_owned();
        let snap = snaplen.to_string();
        let log = file.with_extension("dumpcap.log");
        let cmd = in_ns(ns, &["dumpcap", "-q", "-i", iface, "-B", "64", "-s", &snap, "-w", &f]);
        let proc = Proc::spawn(&format!("dumpcap {iface}"), cmd, &log)?;
        let cap = IfCapture { file, proc: Some(proc) };
        wait_for(&format!("dumpcap to open {iface}"), Duration::from_secs(10), Duration::from_millis(20), || {
            std::fs::metadata(&cap.file).ok().filter(|m| m.len() > 0).map(|_| ())
        })?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(cap)
    }

    /// Stops dumpcap after its last block is handed over (see [`Capture::finish`]).
    pub fn finish(mut self) -> PathBuf {
        std::thread::sleep(Duration::from_millis(1500));
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
        self.file.clone()
    }
}

impl Drop for IfCapture {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }
}

/// One IPv4 packet of a capture, as tshark dissected it.
#[derive(Debug, Clone, PartialEq)]
pub struct IpPacket {
    /// Seconds since the epoch (captures in different namespaces share the host clock).
    pub time: f64,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// IPv4 total length: the packet's size on the wire of that interface.
    pub len: u16,
    /// A fragment (MF set or non-zero offset).
    pub fragment: bool,
    pub proto: u8,
    /// TCP: absolute sequence number, payload length, and tshark's retransmission flag.
    pub tcp: Option<(u32, u16, bool)>,
    /// ICMP type and code.
    pub icmp: Option<(u8, u8)>,
}

/// The outer IPv4 packets of `file` (the first IP header of each frame).
pub fn ip_packets(file: &std::path::Path) -> Result<Vec<IpPacket>> {
    let f = file.to_string_lossy().into_owned();
    let out = run(
        Command::new("tshark").args([
            "-n", "-r", &f, "-Y", "ip", "-T", "fields", "-E", "separator=;", "-E", "occurrence=f",
            "-e", "frame.time_epoch", "-e", "ip.src", "-e", "ip.dst", "-e", "ip.len", "-e", "ip.flags.mf",
            "-e", "ip.frag_offset", "-e", "ip.proto", "-e", "tcp.seq_raw", "-e", "tcp.len",
            "-e", "tcp.analysis.retransmission", "-e", "icmp.type", "-e", "icmp.code",
        ]),
        Duration::from_secs(300),
    )?;
    if !out.success() {
        return Err(LabError::Check(format!("tshark -T fields on {f} failed: {}", out.stderr)));
    }
    Ok(out.stdout.lines().filter_map(parse_ip_fields).collect())
}

fn parse_ip_fields(line: &str) -> Option<IpPacket> {
    let c: Vec<&str> = line.split(';').collect();
    if c.len() < 12 {
        return None;
    }
    let flag = |s: &str| matches!(s, "1" | "True" | "true");
    let tcp = match (c[7].parse::<u32>(), c[8].parse::<u16>()) {
        (Ok(seq), Ok(len)) => Some((seq, len, !c[9].is_empty())),
        _ => None,
    };
    let icmp = match (c[10].parse::<u8>(), c[11].parse::<u8>()) {
        (Ok(t), Ok(k)) => Some((t, k)),
        _ => None,
    };
    Some(IpPacket {
        time: c[0].parse().ok()?,
        src: c[1].parse().ok()?,
        dst: c[2].parse().ok()?,
        len: c[3].parse().ok()?,
        fragment: flag(c[4]) || c[5].parse::<u32>().is_ok_and(|o| o != 0),
        proto: c[6].parse().ok()?,
        tcp,
        icmp,
    })
}

/// One direction of a TCP transfer through a VPN tunnel, seen in two captures: where packets
/// enter the tunnel (`sent`, e.g. the client's tun for client-to-server) and where they leave
/// it (`received`, the gateway's tun).
#[derive(Debug, Clone, Default)]
pub struct TunnelDirection {
    pub name: String,
    /// Largest IPv4 packet of the flow at each end.
    pub largest_sent: u16,
    pub largest_received: u16,
    /// Packets of exactly the tunnel MTU at each end.
    pub full_sent: usize,
    pub full_received: usize,
    /// Full-size segments (by TCP sequence number) that entered the tunnel and never left it,
    /// outside the excused time window.
    pub full_lost: Vec<u32>,
    /// Full-size segments lost inside the excused window (e.g. when UDP was cut).
    pub full_lost_excused: usize,
    /// Copies of full-size segments that entered the tunnel and did not come out (a segment
    /// lost once and delivered by its retransmission counts here, not in `full_lost`),
    /// outside and inside the excused window.
    pub copies_lost: usize,
    pub copies_lost_excused: usize,
    /// Entry time of the last lost copy (epoch seconds).
    pub last_copy_lost_at: Option<f64>,
    /// Full-size segments sent again at the sending end (tshark's flag, or a sequence number
    /// seen before).
    pub full_retransmitted: usize,
    /// Fragments of the flow at either end.
    pub fragments: usize,
    /// Flow packets larger than the MTU at either end.
    pub oversize: usize,
}

/// Measures one direction (`from` -> `to`, TCP) of a transfer through a tunnel whose adapter
/// MTU is `mtu`. Full-size segments entering the tunnel during `excused` (start, end in epoch
/// seconds) may be lost without counting against the tunnel.
pub fn tunnel_direction(
    name: &str,
    sent: &[IpPacket],
    received: &[IpPacket],
    from: Ipv4Addr,
    to: Ipv4Addr,
    mtu: u16,
    excused: Option<(f64, f64)>,
) -> TunnelDirection {
    let flow = |p: &&IpPacket| p.src == from && p.dst == to && (p.proto == 6 || p.fragment);
    let s: Vec<&IpPacket> = sent.iter().filter(flow).collect();
    let r: Vec<&IpPacket> = received.iter().filter(flow).collect();
    let full = |v: &[&IpPacket]| v.iter().filter(|p| p.len == mtu && !p.fragment).count();
    let arrived: BTreeSet<u32> = r.iter().filter(|p| p.len == mtu).filter_map(|p| p.tcp.map(|t| t.0)).collect();
    let mut d = TunnelDirection {
        name: name.to_string(),
        largest_sent: s.iter().map(|p| p.len).max().unwrap_or(0),
        largest_received: r.iter().map(|p| p.len).max().unwrap_or(0),
        full_sent: full(&s),
        full_received: full(&r),
        fragments: s.iter().chain(r.iter()).filter(|p| p.fragment).count(),
        oversize: s.iter().chain(r.iter()).filter(|p| p.len > mtu).count(),
        ..Default::default()
    };
    let mut copies_out: BTreeMap<u32, usize> = BTreeMap::new();
    for p in r.iter().filter(|p| p.len == mtu) {
        if let Some((seq, _, _)) = p.tcp {
            *copies_out.entry(seq).or_default() += 1;
        }
    }
    let in_window = |t: f64| excused.is_some_and(|(a, b)| t >= a && t <= b);
    let mut seen = BTreeSet::new();
    for p in s.iter().filter(|p| p.len == mtu) {
        let Some((seq, _, retrans)) = p.tcp else { continue };
        // A retransmission: tshark says so, or the same sequence number went in before.
        d.full_retransmitted += usize::from(retrans || !seen.insert(seq));
        // Copies come out in the order they went in (one TCP flow in one tunnel).
        match copies_out.get_mut(&seq) {
            Some(n) if *n > 0 => *n -= 1,
            _ => {
                if in_window(p.time) {
                    d.copies_lost_excused += 1;
                } else {
                    d.copies_lost += 1;
                }
                d.last_copy_lost_at = Some(p.time);
            }
        }
        if arrived.contains(&seq) {
            continue;
        }
        if in_window(p.time) {
            d.full_lost_excused += 1;
        } else {
            d.full_lost.push(seq);
        }
    }
    d
}

/// Splits TCP offload trains back into the segments they stand for. A TUN with offloads
/// (virtio-net header) hands over, and the capture shows, TSO super-packets and GRO trains
/// far larger than any link MTU; each is a run of segments of `seg_len` bytes of IP packet
/// (the headers of the train, TCP options included, plus as much payload as fits; the last may
/// be shorter) with consecutive sequence numbers. Packets of at most `above` bytes (the TUN's
/// own MTU: nothing larger can be a single packet there) are kept as they are. Returns the
/// packets and how many trains were split.
pub fn split_offload_trains(packets: &[IpPacket], above: u16, seg_len: u16) -> (Vec<IpPacket>, usize) {
    let mut out = Vec::with_capacity(packets.len());
    let mut trains = 0;
    for p in packets {
        let Some((seq, tcp_len, retrans)) = p.tcp else {
            out.push(p.clone());
            continue;
        };
        let headers = p.len.saturating_sub(tcp_len);
        let mss = seg_len.saturating_sub(headers);
        if p.len <= above || mss == 0 || p.fragment {
            out.push(p.clone());
            continue;
        }
        trains += 1;
        let mut off: u16 = 0;
        while off < tcp_len {
            let n = mss.min(tcp_len - off);
            let mut q = p.clone();
            q.len = headers + n;
            q.tcp = Some((seq.wrapping_add(u32::from(off)), n, retrans));
            out.push(q);
            off += n;
        }
    }
    (out, trains)
}

/// ICMP destination-unreachable / fragmentation-needed (RFC 792 type 3 code 4) packets.
pub fn frag_needed(packets: &[IpPacket]) -> Vec<IpPacket> {
    packets.iter().filter(|p| p.icmp == Some((3, 4))).cloned().collect()
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

    fn pkt(time: f64, src: &str, dst: &str, len: u16, seq: u32, fragment: bool) -> IpPacket {
        IpPacket {
            time,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            len,
            fragment,
            proto: 6,
            tcp: (!fragment).then_some((seq, len.saturating_sub(40), false)),
            icmp: None,
        }
    }

    #[test]
    fn tunnel_direction_counts_full_size_delivery_and_sees_black_holes() {
        let (c, s) = ("10.99.0.100", "10.1.0.10");
        let sent = vec![pkt(1.0, c, s, 1350, 1, false), pkt(2.0, c, s, 1350, 2, false), pkt(3.0, c, s, 600, 3, false)];
        // All delivered: clean.
        let d = tunnel_direction("c->s", &sent, &sent, c.parse().unwrap(), s.parse().unwrap(), 1350, None);
        assert_eq!((d.largest_sent, d.largest_received, d.full_sent, d.full_received), (1350, 1350, 2, 2));
        assert!(d.full_lost.is_empty() && d.fragments == 0 && d.oversize == 0);
        // One full-size segment never arrives: lost, unless inside the excused window.
        let got = vec![sent[0].clone(), sent[2].clone()];
        let d = tunnel_direction("c->s", &sent, &got, c.parse().unwrap(), s.parse().unwrap(), 1350, None);
        assert_eq!(d.full_lost, vec![2]);
        let d = tunnel_direction("c->s", &sent, &got, c.parse().unwrap(), s.parse().unwrap(), 1350, Some((1.5, 2.5)));
        assert!(d.full_lost.is_empty());
        assert_eq!(d.full_lost_excused, 1);
        // Lost once, delivered by the retransmission: no segment lost, one copy lost.
        let resent = vec![sent[0].clone(), sent[1].clone(), pkt(2.5, c, s, 1350, 2, false)];
        let d = tunnel_direction("c->s", &resent, &sent, c.parse().unwrap(), s.parse().unwrap(), 1350, None);
        assert!(d.full_lost.is_empty());
        assert_eq!((d.copies_lost, d.full_retransmitted, d.last_copy_lost_at), (1, 1, Some(2.5)));
        // A 1418-style adapter over a smaller channel: oversize packets in, fragments out.
        let big = vec![pkt(1.0, s, c, 1418, 9, false)];
        let frags = vec![pkt(1.1, s, c, 1348, 0, true), pkt(1.1, s, c, 90, 0, true)];
        let d = tunnel_direction("s->c", &big, &frags, s.parse().unwrap(), c.parse().unwrap(), 1350, None);
        assert_eq!((d.oversize, d.fragments, d.full_sent, d.full_received), (1, 2, 0, 0));
        assert_eq!(d.largest_sent, 1418);
    }

    #[test]
    fn offload_trains_split_into_their_segments() {
        let (c, s) = ("10.99.0.100", "10.1.0.10");
        // A 3-segment GRO train of 1310-byte segments (+40 header bytes) and one real packet.
        let train = pkt(1.0, s, c, 40 + 3 * 1310, 1000, false);
        let single = pkt(1.1, s, c, 1350, 1000 + 3 * 1310, false);
        let (v, n) = split_offload_trains(&[train, single.clone()], 1500, 1350);
        assert_eq!(n, 1);
        assert_eq!(v.iter().map(|p| (p.len, p.tcp.unwrap().0)).collect::<Vec<_>>(), vec![(1350, 1000), (1350, 2310), (1350, 3620), (1350, 4930)]);
        assert_eq!(v[3], single);
        // A packet no larger than the TUN MTU is never split, even above the adapter MTU.
        let (v, n) = split_offload_trains(&[pkt(1.0, s, c, 1420, 7, false)], 1500, 1350);
        assert_eq!((v.len(), n, v[0].len), (1, 0, 1420));
        // TCP options (timestamps: 52 header bytes) leave 1298 payload bytes per 1350 segment.
        let mut t = pkt(1.0, s, c, 52 + 2 * 1298, 50, false);
        t.tcp = Some((50, 2 * 1298, false));
        let (v, _) = split_offload_trains(&[t], 1500, 1350);
        assert_eq!(v.iter().map(|p| (p.len, p.tcp.unwrap().0)).collect::<Vec<_>>(), vec![(1350, 50), (1350, 50 + 1298)]);
    }

    #[test]
    fn tshark_field_lines_parse() {
        let l = "1763930000.5;10.1.0.10;10.99.0.100;1350;0;0;6;123456;1310;;;";
        let p = parse_ip_fields(l).unwrap();
        assert_eq!((p.len, p.fragment, p.tcp), (1350, false, Some((123456, 1310, false))));
        let f = parse_ip_fields("1.0;10.1.0.10;10.99.0.100;1348;1;0;6;;;;;").unwrap();
        assert!(f.fragment && f.tcp.is_none());
        let i = parse_ip_fields("1.0;10.1.0.1;10.1.0.10;576;0;0;1;;;;3;4").unwrap();
        assert_eq!(frag_needed(&[i.clone()]), vec![i]);
        assert!(parse_ip_fields("garbage").is_none());
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
