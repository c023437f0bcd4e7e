//! The issue 3 seed scenario as reusable machinery: a paced HTTP download from host-a (head
//! office, behind holdfast on gw-a) to host-b (branch, behind holdfast or strongSwan on gw-b),
//! a tunnel break of a chosen kind in the middle of it, and the analysis of the stall.
//!
//! ```no_run
//! # fn demo() -> lab::Result<()> {
//! use lab::scenario::{Break, PeerKind, Scenario, ScenarioOpts};
//! use std::time::Duration;
//! let mut s = Scenario::new(ScenarioOpts::new(PeerKind::StrongSwan, true))?; // preserve on
//! let dl = s.start_download("dl")?;                 // lab::http::Download, progress samples
//! dl.wait_bytes(24 << 20, Duration::from_secs(30))?;
//! s.start_probe()?;                                 // ping -D host-a -> host-b, 10 per second
//! let brk = Break::WanBlock(Duration::from_secs(30));
//! let began = s.break_tunnel(&brk)?;                // unix time the break began
//! let restored = s.restore(&brk)?;                  // unix time the break ended (block lifted)
//! let back = s.wait_tunnel_back(restored, Duration::from_secs(60))?; // first ping reply after it
//! let res = dl.wait(Duration::from_secs(120))?;     // lab::http::DownloadResult
//! let st = lab::scenario::analyse(&res.samples, began, back);
//! println!("stall {:.2} s, resumed {:?} s after the tunnel was back", st.stall, st.resumed_after_back);
//! # Ok(()) }
//! ```
//!
//! Layout and choices:
//! - gw-a always runs holdfast with `--state-dir` (so [`Break::KillRestart`] restores its
//!   connection table) and a default route over the wan, so anything it let through in clear
//!   would show up in the wan capture; gw-b runs holdfast (same treatment) or strongSwan 5.9.8 as
//!   a responder that never initiates (holdfast at the head office re-establishes the tunnel;
//!   strongSwan gets no default route: its own behaviour without SAs is not under test).
//! - `sysopt connection preserve-vpn-flows` on every holdfast when `preserve` is set; the ASA
//!   default (off) otherwise. Every holdfast sends syslog (`logging trap informational`) to a
//!   [`SyslogSink`] on the host behind it (gw-a -> host-a, gw-b -> host-b).
//! - The wan bridge is captured with a 256-byte snap length for the cleartext check.
//! - All times are Unix seconds (`f64`), the time base of the download's samples and of
//!   `ping -D`.

use crate::cmd::{in_ns, wait_for, Proc};
use crate::http::{unix_now, Blob, Download, HttpServer, SyslogSink};
use crate::topo::{HOST_B_IP, NET_A, NET_B};
use crate::{check_capture, Capture, CaptureReport, Holdfast, HoldfastParams, LabError, Result, StrongSwan, Suite, SwanParams, Topology};
use std::time::Duration;

/// What runs on gw-b (gw-a is always holdfast).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    Holdfast,
    StrongSwan,
}

/// How the tunnel is broken. Sides are `'a'` (gw-a, next to the server) or `'b'`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Break {
    /// `clear crypto ipsec sa` on that side's holdfast (strongSwan: `swanctl --terminate
    /// --child net-net`).
    ClearIpsec(char),
    /// `clear crypto ikev2 sa` on that side's holdfast (strongSwan: `swanctl --terminate --ike l2l`).
    ClearIke(char),
    /// Drop every frame between the gateways on the wan bridge (nftables, bridge family, no
    /// answer of any kind) for this long; [`Scenario::restore`] waits out the rest and lifts it.
    WanBlock(Duration),
    /// SIGKILL holdfast on gw-a; [`Scenario::restore`] starts it again with the same state dir.
    KillRestart,
}

impl Break {
    pub fn label(&self) -> String {
        match self {
            Break::ClearIpsec(s) => format!("clear crypto ipsec sa on gw-{s}"),
            Break::ClearIke(s) => format!("clear crypto ikev2 sa on gw-{s}"),
            Break::WanBlock(d) => format!("{} s silent wan block", d.as_secs()),
            Break::KillRestart => "SIGKILL + restart of gw-a".into(),
        }
    }
}

/// Knobs of [`Scenario::new`].
#[derive(Debug, Clone)]
pub struct ScenarioOpts {
    pub peer: PeerKind,
    /// `sysopt connection preserve-vpn-flows` on the holdfast gateways.
    pub preserve: bool,
    pub suite: Suite,
    /// Size of the served file (bytes).
    pub blob_len: u64,
    /// Server pace (Mbit/s average); `None` = as fast as TCP goes.
    pub rate_mbit: Option<f64>,
    /// After a stall the server sends what is overdue at full speed (`true`) or keeps the pace.
    pub catchup: bool,
    /// Capture the wan link (needed for [`Scenario::finish_capture`]).
    pub capture: bool,
    /// Extra configuration lines for gw-a / gw-b's holdfast.
    pub extra_a: Vec<String>,
    pub extra_b: Vec<String>,
}

impl ScenarioOpts {
    /// 200 MiB paced at 100 Mbit/s (about 17 s of transfer), AES-GCM/X25519, capture on.
    pub fn new(peer: PeerKind, preserve: bool) -> ScenarioOpts {
        ScenarioOpts {
            peer,
            preserve,
            suite: Suite::GcmX25519,
            blob_len: 200 * 1024 * 1024,
            rate_mbit: Some(100.0),
            catchup: true,
            capture: true,
            extra_a: Vec::new(),
            extra_b: Vec::new(),
        }
    }
}

/// A running seed-scenario lab. Fields drop in order: processes first, the topology last.
#[derive(Debug)]
pub struct Scenario {
    pub opts: ScenarioOpts,
    pub server: HttpServer,
    pub gw_a: Holdfast,
    pub gw_b: Option<Holdfast>,
    pub swan_b: Option<StrongSwan>,
    pub syslog_a: SyslogSink,
    pub syslog_b: Option<SyslogSink>,
    pub blob: Blob,
    probe: Option<Proc>,
    capture: Option<Capture>,
    block_began: Option<std::time::Instant>,
    pub topo: Topology,
}

/// Configuration lines every holdfast of the scenario gets: preserve (or not) and syslog to the
/// host behind it.
pub fn scenario_lines(side: char, preserve: bool) -> Vec<String> {
    let host = if side == 'a' { crate::topo::HOST_A_IP } else { HOST_B_IP };
    let mut v = vec!["logging enable".to_string(), "logging trap informational".into(), format!("logging host inside {host}")];
    if preserve {
        v.push("sysopt connection preserve-vpn-flows".into());
    }
    v
}

impl Scenario {
    /// Builds the topology, starts the capture, the syslog receivers and both gateways, waits
    /// until ping crosses the tunnel (30 s at most), writes the blob and starts the server.
    pub fn new(opts: ScenarioOpts) -> Result<Scenario> {
        let topo = Topology::new()?;
        topo.add_wan_default_route('a')?;
        if opts.peer == PeerKind::Holdfast {
            topo.add_wan_default_route('b')?;
        }
        let capture = if opts.capture { Some(Capture::start_snaplen(&topo, "wan", Some(256))?) } else { None };
        let syslog_a = SyslogSink::start(&topo, &topo.host_a, "gw-a")?;
        let mut pa = HoldfastParams::side('a', opts.suite);
        pa.extra = scenario_lines('a', opts.preserve);
        pa.extra.extend(opts.extra_a.iter().cloned());
        let (gw_b, swan_b, syslog_b) = match opts.peer {
            PeerKind::Holdfast => {
                let sink = SyslogSink::start(&topo, &topo.host_b, "gw-b")?;
                let mut pb = HoldfastParams::side('b', opts.suite);
                pb.extra = scenario_lines('b', opts.preserve);
                pb.extra.extend(opts.extra_b.iter().cloned());
                (Some(Holdfast::start(&topo, &topo.gw_b, "hf-b", &pb)?), None, Some(sink))
            }
            PeerKind::StrongSwan => {
                let (ike, esp) = opts.suite.swan(false);
                let sp = SwanParams::side('b', &ike, &esp, false);
                (None, Some(StrongSwan::start(&topo, &topo.gw_b, "swan-b", sp)?), None)
            }
        };
        let state = topo.path("state-a");
        let state = if crate::holdfast::supports_state_dir() {
            Some(state.as_path())
        } else {
            eprintln!("lab: WARNING: this holdfast has no `run --state-dir`; gw-a runs without one");
            None
        };
        let gw_a = Holdfast::start_with_state(&topo, &topo.gw_a, "hf-a", &pa, state)?;
        let up = crate::wait_ping(&topo.host_a, HOST_B_IP, Duration::from_secs(30))?;
        eprintln!("lab: scenario tunnel up (first ping after {up:?})");
        let blob = Blob::create(&topo, opts.blob_len, 7)?;
        let server = HttpServer::start_opts(&topo, &topo.host_a, &blob, opts.rate_mbit, opts.catchup)?;
        Ok(Scenario { opts, server, gw_a, gw_b, swan_b, syslog_a, syslog_b, blob, probe: None, capture, block_began: None, topo })
    }

    /// Starts host-b's download of the blob (one request, one connection).
    pub fn start_download(&self, tag: &str) -> Result<Download> {
        Download::start(&self.topo, &self.topo.host_b, &self.server.url(), tag)
    }

    /// Starts `ping -D -i 0.1` host-a -> host-b in the background; [`Self::tunnel_back_after`]
    /// reads its replies. Replaces a running probe.
    pub fn start_probe(&mut self) -> Result<()> {
        let log = self.topo.path("probe.log");
        let _ = std::fs::remove_file(&log);
        self.probe = None;
        let cmd = in_ns(&self.topo.host_a, &["stdbuf", "-oL", "ping", "-n", "-D", "-i", "0.1", "-W", "1", HOST_B_IP]);
        self.probe = Some(Proc::spawn("ping probe", cmd, &log)?);
        Ok(())
    }

    /// Unix time of the first probe reply received after `t`.
    pub fn tunnel_back_after(&self, t: f64) -> Option<f64> {
        let text = std::fs::read_to_string(self.topo.path("probe.log")).unwrap_or_default();
        probe_replies(&text).into_iter().find(|r| *r > t)
    }

    /// Waits until a probe reply arrives after `t` (the tunnel carries traffic again).
    pub fn wait_tunnel_back(&self, t: f64, timeout: Duration) -> Result<f64> {
        wait_for("the tunnel to carry ping again", timeout, Duration::from_millis(50), || self.tunnel_back_after(t))
    }

    /// Breaks the tunnel; returns the Unix time just before the action.
    pub fn break_tunnel(&mut self, b: &Break) -> Result<f64> {
        let t = unix_now();
        eprintln!("lab: break: {}", b.label());
        match *b {
            Break::ClearIpsec(side) => self.clear(side, "crypto ipsec sa", &["--terminate", "--child", "net-net", "--force"])?,
            Break::ClearIke(side) => self.clear(side, "crypto ikev2 sa", &["--terminate", "--ike", "l2l", "--force"])?,
            Break::WanBlock(_) => {
                self.topo.wan_nft(
                    "table bridge lab_block {\n  chain cut {\n    type filter hook forward priority -200; policy accept;\n    drop\n  }\n}\n",
                )?;
                self.block_began = Some(std::time::Instant::now());
            }
            Break::KillRestart => self.gw_a.kill_hard(),
        }
        Ok(t)
    }

    /// Ends the break (waiting out the rest of a wan block, restarting a killed gw-a); returns
    /// the Unix time at which the path or the daemon was back.
    pub fn restore(&mut self, b: &Break) -> Result<f64> {
        match *b {
            Break::ClearIpsec(_) | Break::ClearIke(_) => {}
            Break::WanBlock(d) => {
                // The block began at most a few ms before this call for a caller that restores
                // at once; callers that did something in between get a shorter block.
                let elapsed = self.block_began.take().map(|b| b.elapsed()).unwrap_or(Duration::ZERO);
                std::thread::sleep(d.saturating_sub(elapsed));
                self.topo.wan_nft_flush()?;
                eprintln!("lab: wan block lifted");
            }
            Break::KillRestart => {
                self.gw_a.restart()?;
                eprintln!("lab: gw-a restarted");
            }
        }
        Ok(unix_now())
    }

    fn clear(&self, side: char, what: &str, swanctl: &[&str]) -> Result<()> {
        let hf = if side == 'a' { Some(&self.gw_a) } else { self.gw_b.as_ref() };
        match (hf, &self.swan_b) {
            (Some(h), _) => {
                h.clear(what)?;
            }
            (None, Some(s)) => {
                s.swanctl(swanctl)?;
            }
            (None, None) => return Err(LabError::Check(format!("no gateway on side {side}"))),
        }
        Ok(())
    }

    /// Every holdfast gateway of the scenario.
    pub fn holdfasts(&self) -> Vec<&Holdfast> {
        std::iter::once(&self.gw_a).chain(self.gw_b.as_ref()).collect()
    }

    /// Syslog lines received from any holdfast that contain every one of `needles`.
    pub fn syslog_matching(&self, needles: &[&str]) -> Vec<String> {
        let mut v = self.syslog_a.matching(needles);
        if let Some(s) = &self.syslog_b {
            v.extend(s.matching(needles));
        }
        v
    }

    /// `show conn detail`, `show asp drop`, `show asp table vpn-context`, `show crypto ipsec sa`
    /// and the end of `show logging` from every holdfast, plus strongSwan's SAs: for failure
    /// messages.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for h in self.holdfasts() {
            for what in ["conn detail", "asp drop", "asp table vpn-context", "crypto ipsec sa", "logging"] {
                let text = h.show(what).unwrap_or_else(|e| format!("(failed: {e})"));
                let text = if what == "logging" { tail_lines(&text, 30) } else { tail_lines(&text, 60) };
                out.push_str(&format!("----- {} show {what} -----\n{text}\n", h.name));
            }
        }
        if let Some(s) = &self.swan_b {
            out.push_str(&format!("----- {} list-sas -----\n{}\n", s.name, s.list_sas().unwrap_or_default()));
        }
        out
    }

    /// Stops the wan capture and dissects it (no cleartext, nothing malformed, IKE and ESP seen).
    pub fn finish_capture(&mut self) -> Result<CaptureReport> {
        let cap = self.capture.take().ok_or_else(|| LabError::Check("the scenario has no capture".into()))?;
        let file = cap.finish();
        let rep = check_capture(&file, NET_A, NET_B)?;
        let _ = std::fs::remove_file(&file);
        Ok(rep)
    }
}

fn tail_lines(s: &str, n: usize) -> String {
    let l: Vec<&str> = s.lines().collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

/// Reply times from `ping -D` output (`[1700000000.123456] 64 bytes from ...`).
pub fn probe_replies(text: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| l.contains(" bytes from "))
        .filter_map(|l| l.strip_prefix('[')?.split_once(']')?.0.parse().ok())
        .collect()
}

/// The download around a break.
#[derive(Debug, Clone, PartialEq)]
pub struct StallReport {
    /// Bytes received when the break began.
    pub bytes_at_break: u64,
    /// Longest gap between progress samples that ended after the break began (for a download
    /// that never moved again: from its last sample to the end of the samples' window `now`).
    pub stall: f64,
    /// From the tunnel's return to the first new byte after it; `None` if none came.
    pub resumed_after_back: Option<f64>,
    /// Bytes received at the tunnel's return.
    pub bytes_at_back: u64,
}

/// Analyses `(unix time, bytes)` samples for a break at `began` and the tunnel back at `back`.
pub fn analyse(samples: &[(f64, u64)], began: f64, back: f64) -> StallReport {
    let at = |t: f64| samples.iter().take_while(|s| s.0 <= t).last().map(|s| s.1).unwrap_or(0);
    let bytes_at_break = at(began);
    let bytes_at_back = at(back);
    let mut stall: f64 = 0.0;
    for w in samples.windows(2) {
        if w[1].0 >= began {
            stall = stall.max(w[1].0 - w[0].0);
        }
    }
    if samples.last().is_some_and(|s| s.0 < back) {
        // Never moved after the tunnel came back: the stall lasts at least until now.
        stall = stall.max(unix_now() - samples.last().map(|s| s.0).unwrap_or(began));
    }
    let resumed_after_back = samples.iter().find(|s| s.0 > back && s.1 > bytes_at_back).map(|s| s.0 - back);
    StallReport { bytes_at_break, stall, resumed_after_back, bytes_at_back }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_lines_parse() {
        let t = "PING 10.2.0.10 (10.2.0.10) 56(84) bytes of data.\n[1700000000.100000] 64 bytes from 10.2.0.10: icmp_seq=1 ttl=62 time=0.5 ms\nno answer yet for icmp_seq=2\n[1700000001.250000] 64 bytes from 10.2.0.10: icmp_seq=3 ttl=62 time=0.4 ms\n";
        assert_eq!(probe_replies(t), vec![1700000000.1, 1700000001.25]);
    }

    #[test]
    fn stall_analysis() {
        let s = vec![(10.0, 100), (10.1, 200), (10.2, 300), (14.0, 400), (14.1, 500)];
        let r = analyse(&s, 10.15, 13.5);
        assert_eq!(r.bytes_at_break, 200);
        assert!((r.stall - 3.8).abs() < 1e-9);
        assert_eq!(r.bytes_at_back, 300);
        assert!((r.resumed_after_back.unwrap() - 0.5).abs() < 1e-9);
        let dead = analyse(&s[..3], 10.15, 13.5);
        assert_eq!(dead.resumed_after_back, None);
        assert!(dead.stall > 3.0);
    }
}
