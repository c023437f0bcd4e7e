//! `holdfast demo`: the seed scenario on one screen.
//!
//! Builds two offices in network namespaces (`host-a — gw-a — wan — gw-b — host-b`, the lab's
//! topology), runs this very binary as `holdfast run` on both gateways, starts a long paced HTTP
//! download from host-a to host-b on one TCP connection, breaks the tunnel (office A's wan link
//! goes down and gw-a's SAs are cleared), brings it back and narrates what the gateways say.
//! Then it does the same with `no sysopt connection preserve-vpn-flows` (the ASA default).
//!
//! Everything it makes is removed on the way out: by `Drop` on success, error and panic; on
//! SIGINT/SIGTERM the main thread is told to stop and unwinds the same way, and a watchdog
//! removes the namespaces (killing what runs in them, by PID) and temp dirs itself if that
//! takes too long or a second signal comes.

// The demo is the outside world of the engines: it times outages on the wall clock, like the lab.
#![allow(clippy::disallowed_methods)]

use lab::demo::{svg_chart, ChartRun, Download, End};
use lab::topo::{GW_A_WAN_IP, GW_B_WAN_IP, HOST_A_IP, HOST_B_IP};
use lab::{Holdfast, HoldfastParams, Suite, Topology};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `holdfast demo` options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Smaller and faster (CI): the whole demo in well under a minute.
    pub quick: bool,
    /// Write the throughput-over-time chart of both runs here (SVG).
    pub chart: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
enum DemoError {
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    Lab(#[from] lab::LabError),
    #[error("{0}")]
    Failed(String),
}

type R<T> = Result<T, DemoError>;

/// Sizes and times of one demo flavour.
#[derive(Debug, Clone, Copy)]
struct Plan {
    bytes: u64,
    rate_mbit: f64,
    /// From the download's start to the break.
    break_after: Duration,
    /// How long office A's wan link stays down.
    outage: Duration,
    /// Preserve off: how long the download must stay dead after the tunnel is back.
    dead_for: Duration,
}

const FULL: Plan = Plan {
    bytes: 96 << 20,
    rate_mbit: 60.0,
    break_after: Duration::from_secs(5),
    outage: Duration::from_secs(8),
    dead_for: Duration::from_secs(8),
};
const QUICK: Plan = Plan {
    bytes: 24 << 20,
    rate_mbit: 48.0,
    break_after: Duration::from_millis(2000),
    outage: Duration::from_secs(3),
    dead_for: Duration::from_secs(4),
};

/// Set by the signal thread; every wait loop of the demo looks at it.
static CANCEL: AtomicBool = AtomicBool::new(false);
/// The terminal's stderr (fd 2 itself goes to the demo log while the demo runs).
static TERM_ERR: Mutex<Option<File>> = Mutex::new(None);

pub fn run(opts: Options) -> ExitCode {
    let started = Instant::now();
    if !lab::is_root() {
        eprintln!("holdfast demo: needs root (it creates network namespaces, veth links and TUN devices)");
        return ExitCode::FAILURE;
    }
    if let Err(e) = lab::cmd::run(std::process::Command::new("ip").arg("-V"), Duration::from_secs(5)) {
        eprintln!("holdfast demo: needs iproute2 (`ip`): {e}");
        return ExitCode::FAILURE;
    }
    // The lab starts the gateways from $HOLDFAST_BIN: this very binary. Set before any thread.
    match std::env::current_exe() {
        Ok(me) => std::env::set_var("HOLDFAST_BIN", me),
        Err(e) => {
            eprintln!("holdfast demo: cannot find my own executable: {e}");
            return ExitCode::FAILURE;
        }
    }
    install_signal_thread();
    let work = std::env::temp_dir().join(format!("holdfast-demo-{}", std::process::id()));
    let log = work.join("demo.log");
    if let Err(e) = std::fs::create_dir_all(&work).and_then(|()| redirect_stderr(&log)) {
        eprintln!("holdfast demo: cannot set up {}: {e}", work.display());
        return ExitCode::FAILURE;
    }
    let mut screen = Screen::new(started);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| demo(&opts, &mut screen)));
    screen.bar_off();
    let code = match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(DemoError::Interrupted)) => {
            term_err("holdfast demo: interrupted; lab removed");
            ExitCode::from(130)
        }
        Ok(Err(e)) => {
            term_err(&format!("holdfast demo: {e}"));
            term_err(&format!("----- last lines of the demo log -----\n{}", lab::cmd::tail(&log, 40)));
            ExitCode::FAILURE
        }
        Err(_) => {
            term_err("holdfast demo: internal error (panic); lab removed");
            term_err(&format!("----- last lines of the demo log -----\n{}", lab::cmd::tail(&log, 40)));
            ExitCode::from(101)
        }
    };
    // The topology removes its run dir except after a panic; the demo leaves nothing.
    remove_leftovers();
    let _ = std::fs::remove_dir_all(&work);
    println!("total wall time {:.1} s", started.elapsed().as_secs_f64());
    code
}

fn demo(opts: &Options, sc: &mut Screen) -> R<()> {
    let plan = if opts.quick { QUICK } else { FULL };
    sc.say("holdfast demo: a long download between two offices survives a tunnel outage");
    let topo = Topology::new()?;
    sc.note(&format!(
        "lab: host-a {HOST_A_IP} — gw-a {GW_A_WAN_IP} ═ wan ═ {GW_B_WAN_IP} gw-b — host-b {HOST_B_IP} (network namespaces {}-*)",
        topo.id
    ));
    sc.note("gateways: this binary as `holdfast run` in gw-a and gw-b (IKEv2 PSK, AES-GCM-256, X25519)");
    let mut runs = Vec::new();
    for preserve in [true, false] {
        check_cancel()?;
        let r = one_run(&topo, plan, preserve, sc)?;
        runs.push(r);
    }
    let (on, off) = (&runs[0], &runs[1]);
    sc.blank();
    sc.say("summary");
    sc.note(&format!(
        "preserve-vpn-flows on : outage {:.1} s, resumed {}, {}",
        on.chart.outage.1 - on.chart.outage.0,
        on.resumed_ms.map_or("never".to_string(), |m| format!("in {} ms", fmt_ms(m))),
        if on.complete { "download complete, SHA-256 match" } else { "download FAILED" }
    ));
    sc.note(&format!(
        "preserve-vpn-flows off: outage {:.1} s, {}",
        off.chart.outage.1 - off.chart.outage.0,
        if off.complete { "download complete (unexpected)" } else { "connection torn down (302014), download failed" }
    ));
    if let Some(path) = &opts.chart {
        let svg = svg_chart(
            "holdfast: one HTTP download through an IPsec tunnel outage",
            &[on.chart.clone(), off.chart.clone()],
            0.25,
        );
        std::fs::write(path, svg).map_err(|e| DemoError::Failed(format!("writing {}: {e}", path.display())))?;
        sc.note(&format!("chart written to {}", path.display()));
    }
    drop(topo);
    if !on.complete || off.complete {
        return Err(DemoError::Failed("the demo did not show the expected outcome (see above)".into()));
    }
    Ok(())
}

/// What one run produced.
struct RunResult {
    chart: ChartRun,
    resumed_ms: Option<f64>,
    complete: bool,
}

fn one_run(topo: &Topology, plan: Plan, preserve: bool, sc: &mut Screen) -> R<RunResult> {
    let sysopt = if preserve { "sysopt connection preserve-vpn-flows" } else { "no sysopt connection preserve-vpn-flows" };
    sc.blank();
    sc.say(&format!(
        "run {}: `{sysopt}`{}",
        if preserve { 1 } else { 2 },
        if preserve { "" } else { " (the ASA default)" }
    ));
    let (gw_a, gw_b) = start_gateways(topo, sysopt)?;
    wait_tunnel(topo)?;
    let sa = ipsec_sa(&gw_a);
    sc.event(&format!(
        "tunnel up: gw-a {GW_A_WAN_IP} <-> peer {}, ESP SPIs in 0x{} / out 0x{}",
        sa.peer.as_deref().unwrap_or("?"),
        sa.inbound.first().map_or("?", String::as_str),
        sa.outbound.first().map_or("?", String::as_str)
    ));
    let old_spis: Vec<String> = sa.outbound.iter().chain(&sa.inbound).chain(&ipsec_sa(&gw_b).outbound).cloned().collect();

    let dl = Download::start(&topo.host_a, HOST_A_IP, &topo.host_b, plan.bytes, plan.rate_mbit)?;
    let t0 = Instant::now();
    sc.event(&format!(
        "download: host-b GET http://{HOST_A_IP}:{}/demo.bin — {} MiB paced at {} Mbit/s, one TCP connection",
        lab::demo::DEMO_HTTP_PORT,
        plan.bytes >> 20,
        plan.rate_mbit
    ));
    sc.bar_on(plan.bytes);
    wait(sc, &dl, Duration::from_secs(15), "the download to start", |dl| (dl.bytes() > 0).then_some(()))?;
    let port = dl.progress.local.lock().ok().and_then(|l| *l).map(|a| a.port()).unwrap_or(0);
    let conn = wait(sc, &dl, Duration::from_secs(5), "the flow in `show conn`", |_| conn_line(&gw_a, port))?;
    sc.event(&format!("flow on gw-a (show conn): {conn}"));

    // The break.
    wait_until(sc, &dl, t0 + plan.break_after)?;
    sc.event("break: office A's wan link goes down (`ip link set to-a down` on the wan router)");
    let t_break = Instant::now();
    lab::cmd::sh(Some(&topo.wan), &["ip", "link", "set", "to-a", "down"], Duration::from_secs(10))?;
    // With the link down the DELETE never reaches gw-b: each side is left to find its way back,
    // as after a real outage. gw-a initiates a new IKE SA, which gets through once the link is up.
    let cleared = ctl(&gw_a, "clear crypto ikev2 sa");
    sc.event(&format!("       and gw-a's operator clears the tunnel: `clear crypto ikev2 sa`{}", first_line_note(&cleared)));
    let gone = wait(sc, &dl, Duration::from_secs(5), "gw-a to drop its SAs", |_| {
        let s = ipsec_sa(&gw_a);
        s.outbound.is_empty().then_some(s)
    })?;
    sc.event(&format!(
        "tunnel down: gw-a `show crypto ipsec sa`: no active SA{}",
        if gone.draining > 0 { " (the cleared ones linger 5 s as `draining` for late packets)" } else { "" }
    ));
    if preserve {
        let v = wait(sc, &dl, Duration::from_secs(10), "the flow to be flagged V (preserved)", |_| {
            conn_line(&gw_a, port).filter(|l| flags(l).contains('V'))
        })?;
        sc.event(&format!("preserved flow waiting (flag V): {v}"));
    } else {
        let needle = format!("/{port} ");
        let line = wait(sc, &dl, Duration::from_secs(10), "302014 for the download's connection", |_| {
            ctl(&gw_a, "show logging")
                .lines()
                .find(|l| l.contains("302014") && l.contains("Tunnel has been torn down") && l.contains(&needle))
                .map(str::to_string)
        })?;
        sc.event(&format!("gw-a syslog: {}", line.trim()));
        if conn_line(&gw_a, port).is_none() {
            sc.event("gw-a `show conn`: the download's connection is gone");
        }
    }
    sc.event(&format!("download stalled at {:.1} MiB", dl.bytes() as f64 / 1048576.0));

    // The way back.
    wait_until(sc, &dl, t_break + plan.outage)?;
    lab::cmd::sh(Some(&topo.wan), &["ip", "link", "set", "to-a", "up"], Duration::from_secs(10))?;
    let t_link = Instant::now();
    sc.event("wan link back up (`ip link set to-a up`)");
    let (t_back, new_in, new_out) = wait_tunnel_back(sc, &dl, &gw_a, &gw_b, &old_spis)?;
    sc.event(&format!(
        "tunnel back {:.0} ms after the link: new ESP SPIs in 0x{new_in} / out 0x{new_out}",
        t_back.saturating_duration_since(t_link).as_secs_f64() * 1000.0
    ));

    let mut resumed_ms = None;
    let complete;
    if preserve {
        let first = wait(sc, &dl, Duration::from_secs(60), "the download to move again", |dl| {
            dl.progress.first_new_byte_after(t_back)
        })?;
        let ms = first.0.saturating_duration_since(t_back).as_secs_f64() * 1000.0;
        resumed_ms = Some(ms);
        sc.event(&format!(
            "resumed in {} ms (first new in-order byte read on host-b after the tunnel was back; outage {:.1} s)",
            fmt_ms(ms),
            t_back.saturating_duration_since(t_break).as_secs_f64()
        ));
        let left = plan.bytes.saturating_sub(dl.bytes()) as f64 * 8.0 / (plan.rate_mbit * 1e6);
        wait(sc, &dl, Duration::from_secs_f64(left * 2.0 + 30.0), "the download to finish", |dl| dl.client_done().then_some(()))?;
        let t_end = Instant::now();
        let samples = dl.progress.samples();
        let (server, client) = dl.finish();
        sc.bar_off();
        complete = match (&server, &client) {
            (End::Complete { sha256: a, bytes }, End::Complete { sha256: b, .. }) if a == b => {
                sc.event(&format!(
                    "download complete: {:.1} MiB in {:.1} s, SHA-256 {}… sent by host-a = {}… received by host-b",
                    *bytes as f64 / 1048576.0,
                    t_end.saturating_duration_since(t0).as_secs_f64(),
                    &a[..16],
                    &b[..16]
                ));
                true
            }
            _ => {
                sc.event(&format!("download FAILED: host-a {server:?}, host-b {client:?}"));
                false
            }
        };
        return Ok(RunResult { chart: chart_run(preserve, &samples, t0, t_break, t_back, t_end), resumed_ms, complete });
    }

    // Preserve off: the connection is gone on gw-a; whatever host-a retransmits is dropped.
    let at_back = dl.bytes();
    let dead_until = t_back + plan.dead_for;
    let moved = wait(sc, &dl, plan.dead_for + Duration::from_secs(1), "", |dl| {
        if dl.bytes() > at_back {
            Some(true)
        } else {
            (Instant::now() >= dead_until).then_some(false)
        }
    })?;
    let t_end = Instant::now();
    let samples = dl.progress.samples();
    let (_, client) = dl.finish();
    sc.bar_off();
    let got = match &client {
        End::Complete { bytes, .. } | End::Failed { bytes, .. } => *bytes,
    };
    complete = matches!(client, End::Complete { .. });
    if moved || complete {
        sc.event(&format!("unexpected: the download moved again after the tunnel was back ({client:?})"));
    } else {
        sc.event(&format!(
            "download failed: no byte for {:.0} s since the tunnel came back; {:.1} of {:.1} MiB received, SHA-256 never computed",
            plan.dead_for.as_secs_f64(),
            got as f64 / 1048576.0,
            plan.bytes as f64 / 1048576.0
        ));
        sc.note("(gw-a tore the connection down with the tunnel, so it drops host-a's retransmissions;");
        sc.note(" Linux would retry for ~15 minutes before the application sees the error — the demo stops here)");
    }
    Ok(RunResult { chart: chart_run(preserve, &samples, t0, t_break, t_back, t_end), resumed_ms, complete })
}

/// Milliseconds with a decimal below 10 ms (a replayed segment arrives within a fraction of one).
fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

fn chart_run(preserve: bool, samples: &[(Instant, u64)], t0: Instant, t_break: Instant, t_back: Instant, t_end: Instant) -> ChartRun {
    let rel = |t: Instant| t.saturating_duration_since(t0).as_secs_f64();
    ChartRun {
        label: if preserve {
            "sysopt connection preserve-vpn-flows: the download resumes and completes".into()
        } else {
            "no sysopt connection preserve-vpn-flows (ASA default): torn down, download fails".into()
        },
        color: if preserve { "#1f6fb4".into() } else { "#d62728".into() },
        samples: samples.iter().map(|(t, b)| (rel(*t), *b)).collect(),
        outage: (rel(t_break), rel(t_back)),
        end: rel(t_end),
    }
}

/// Starts gw-b, then gw-a (so gw-a's first IKE_SA_INIT finds a listener), with the demo's
/// configuration plus `sysopt`; state dirs live in the topology's run directory.
fn start_gateways(topo: &Topology, sysopt: &str) -> R<(Holdfast, Holdfast)> {
    let params = |side: char| {
        let mut p = HoldfastParams::side(side, Suite::GcmX25519);
        p.extra = vec!["logging timestamp".into(), "logging buffered informational".into(), sysopt.to_string()];
        p
    };
    let sb = topo.path("state-b");
    let gw_b = Holdfast::start_with_state(topo, &topo.gw_b, "gw-b", &params('b'), Some(&sb))?;
    check_cancel()?;
    let sa = topo.path("state-a");
    let gw_a = Holdfast::start_with_state(topo, &topo.gw_a, "gw-a", &params('a'), Some(&sa))?;
    Ok((gw_a, gw_b))
}

fn wait_tunnel(topo: &Topology) -> R<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        check_cancel()?;
        let ok = lab::cmd::run(&mut lab::cmd::in_ns(&topo.host_a, &["ping", "-n", "-q", "-c", "1", "-W", "1", HOST_B_IP]), Duration::from_secs(3))
            .map(|o| o.success())
            .unwrap_or(false);
        if ok {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DemoError::Failed("the tunnel did not come up within 30 s".into()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls both gateways' `show crypto ipsec sa` until each has an outbound SPI that did not
/// exist before the break. Returns the moment of the last poll that still saw a gateway
/// without one: the tunnel was certainly not back before it, so a resumption time measured
/// from it is never too short (it may be too long by one poll, a few ms).
fn wait_tunnel_back(sc: &mut Screen, dl: &Download, a: &Holdfast, b: &Holdfast, old: &[String]) -> R<(Instant, String, String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_negative = Instant::now();
    loop {
        check_cancel()?;
        sc.tick(dl.bytes());
        let mut all = true;
        let mut a_new = None;
        for h in [a, b] {
            let asked = Instant::now();
            let s = ipsec_sa(h);
            let new = s.outbound.iter().find(|x| !old.contains(x)).cloned();
            if new.is_none() {
                all = false;
                last_negative = asked;
            } else if std::ptr::eq(h, a) {
                let inb = s.inbound.iter().find(|x| !old.contains(x)).cloned().unwrap_or_default();
                a_new = new.map(|o| (inb, o));
            }
        }
        if all {
            let (i, o) = a_new.unwrap_or_default();
            return Ok((last_negative, i, o));
        }
        if Instant::now() >= deadline {
            return Err(DemoError::Failed("the tunnel did not come back within 60 s of the link".into()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Polls `f` (with the progress bar ticking) until it returns `Some`, for at most `timeout`.
fn wait<T>(sc: &mut Screen, dl: &Download, timeout: Duration, what: &str, mut f: impl FnMut(&Download) -> Option<T>) -> R<T> {
    let deadline = Instant::now() + timeout;
    loop {
        check_cancel()?;
        sc.tick(dl.bytes());
        if let Some(v) = f(dl) {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(DemoError::Failed(format!("timed out after {timeout:?} waiting for {what}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_until(sc: &mut Screen, dl: &Download, t: Instant) -> R<()> {
    wait(sc, dl, t.saturating_duration_since(Instant::now()) + Duration::from_secs(1), "a moment", |_| (Instant::now() >= t).then_some(()))
}

fn check_cancel() -> R<()> {
    if CANCEL.load(Ordering::SeqCst) {
        Err(DemoError::Interrupted)
    } else {
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// Talking to the gateways

/// One control-socket request (in-process, so polling costs well under a millisecond).
fn ctl(h: &Holdfast, line: &str) -> String {
    gateway::control::request(&h.control, line).unwrap_or_else(|e| format!("ERROR: {e}"))
}

fn first_line_note(answer: &str) -> String {
    match answer.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(l) if gateway::control::is_error(answer) => format!(" ({l})"),
        _ => String::new(),
    }
}

/// The `show conn` line of the connection whose host-b side uses `port`.
fn conn_line(h: &Holdfast, port: u16) -> Option<String> {
    let needle = format!("{HOST_B_IP}:{port} ");
    ctl(h, "show conn").lines().find(|l| l.contains(&needle) && l.starts_with("TCP")).map(|l| l.trim().to_string())
}

/// The letters after `, flags ` in a `show conn` line.
fn flags(line: &str) -> &str {
    line.rsplit_once(", flags ").map_or("", |x| x.1.trim())
}

/// The active CHILD_SAs of `show crypto ipsec sa` (SAs that were deleted or replaced stay
/// listed for a few seconds as `draining`/`rekeyed` so late packets still decrypt; they are
/// left out here).
#[derive(Debug, Default)]
struct IpsecSa {
    peer: Option<String>,
    outbound: Vec<String>,
    inbound: Vec<String>,
    /// SAs listed but no longer active.
    draining: usize,
}

fn ipsec_sa(h: &Holdfast) -> IpsecSa {
    parse_ipsec_sa(&ctl(h, "show crypto ipsec sa"))
}

fn parse_ipsec_sa(text: &str) -> IpsecSa {
    let mut r = IpsecSa::default();
    // (peer, outbound, inbound, every `SA State:` active) of each SA block in turn.
    let mut blocks: Vec<(Option<String>, String, String, bool)> = Vec::new();
    let mut peer = None;
    for l in text.lines().map(str::trim) {
        if let Some(p) = l.strip_prefix("current_peer:") {
            peer = Some(p.trim().to_string());
        } else if let Some(s) = l.strip_prefix("current outbound spi:") {
            blocks.push((peer.clone(), s.trim().to_string(), String::new(), true));
        } else if let Some(s) = l.strip_prefix("current inbound spi :") {
            if let Some(b) = blocks.last_mut() {
                b.2 = s.trim().to_string();
            }
        } else if let Some(st) = l.strip_prefix("SA State:") {
            if let Some(b) = blocks.last_mut() {
                b.3 &= st.trim() == "active";
            }
        }
    }
    for (p, o, i, active) in blocks {
        if active {
            if r.peer.is_none() {
                r.peer = p;
            }
            r.outbound.push(o);
            r.inbound.push(i);
        } else {
            r.draining += 1;
        }
    }
    r
}

// ------------------------------------------------------------------------------------------
// The terminal

/// Narration on stdout, with a progress bar for the download kept on the last line when stdout
/// is a terminal.
struct Screen {
    t0: Instant,
    tty: bool,
    bar: Option<Bar>,
}

struct Bar {
    total: u64,
    drawn_at: Option<Instant>,
    last_bytes: u64,
    last_change: Instant,
    rate: Vec<(Instant, u64)>,
}

impl Screen {
    fn new(t0: Instant) -> Screen {
        // SAFETY: isatty has no preconditions; fd 1 is ours.
        let tty = unsafe { libc::isatty(1) } == 1;
        Screen { t0, tty, bar: None }
    }

    fn out(&mut self, line: &str) {
        let mut o = std::io::stdout().lock();
        if self.tty && self.bar.is_some() {
            let _ = write!(o, "\r\x1b[2K");
        }
        let _ = writeln!(o, "{line}");
        let _ = o.flush();
        drop(o);
        if let Some(b) = &mut self.bar {
            b.drawn_at = None;
            let bytes = b.last_bytes;
            self.tick(bytes);
        }
    }

    fn say(&mut self, line: &str) {
        self.out(line);
    }

    fn note(&mut self, line: &str) {
        self.out(&format!("          {line}"));
    }

    fn blank(&mut self) {
        self.out("");
    }

    /// A timestamped line (seconds since the demo started).
    fn event(&mut self, line: &str) {
        let t = self.t0.elapsed().as_secs_f64();
        self.out(&format!("[{t:6.1}s] {line}"));
    }

    fn bar_on(&mut self, total: u64) {
        let now = Instant::now();
        self.bar = Some(Bar { total, drawn_at: None, last_bytes: 0, last_change: now, rate: vec![(now, 0)] });
    }

    fn bar_off(&mut self) {
        if self.bar.take().is_some() && self.tty {
            let mut o = std::io::stdout().lock();
            let _ = write!(o, "\r\x1b[2K");
            let _ = o.flush();
        }
    }

    /// Redraws the bar (at most 10 times a second).
    fn tick(&mut self, bytes: u64) {
        let tty = self.tty;
        let Some(b) = &mut self.bar else { return };
        let now = Instant::now();
        if bytes != b.last_bytes {
            b.last_bytes = bytes;
            b.last_change = now;
        }
        if b.drawn_at.is_some_and(|d| now.duration_since(d) < Duration::from_millis(100)) || !tty {
            return;
        }
        b.drawn_at = Some(now);
        b.rate.push((now, bytes));
        b.rate.retain(|(t, _)| now.duration_since(*t) <= Duration::from_secs(1));
        let (t_old, b_old) = b.rate[0];
        let span = now.duration_since(t_old).as_secs_f64();
        let mbit = if span > 0.05 { (bytes - b_old.min(bytes)) as f64 * 8.0 / span / 1e6 } else { 0.0 };
        let frac = (bytes as f64 / b.total.max(1) as f64).min(1.0);
        let width = 30;
        let full = (frac * width as f64).round() as usize;
        let stalled = now.duration_since(b.last_change);
        let state = if bytes > 0 && bytes < b.total && stalled > Duration::from_millis(500) {
            format!("  stalled {:.1} s", stalled.as_secs_f64())
        } else {
            String::new()
        };
        let mut o = std::io::stdout().lock();
        let _ = write!(
            o,
            "\r\x1b[2K          download [{}{}] {:5.1}/{:.1} MiB {:5.1} Mbit/s{state}",
            "█".repeat(full),
            "░".repeat(width - full),
            bytes as f64 / 1048576.0,
            b.total as f64 / 1048576.0,
            mbit
        );
        let _ = o.flush();
    }
}

// ------------------------------------------------------------------------------------------
// Cleanup: signals, stderr, leftovers

/// Write end of the pipe the signal handler pokes (-1 until installed).
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// SIGINT/SIGTERM handler: only async-signal-safe work (an atomic store and a write(2)).
extern "C" fn on_signal(_sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; one byte from a static buffer to our own pipe.
        unsafe {
            libc::write(fd, b"!".as_ptr().cast(), 1);
        }
    }
}

/// Handles SIGINT and SIGTERM: the handler wakes a watcher thread; the first signal asks the
/// demo to stop and unwind (which removes the lab); if that has not ended the process within
/// 20 s, or on a second signal, the watcher removes the lab itself and exits with 130. A real
/// handler rather than a blocked mask: child processes must not inherit blocked signals (the
/// gateways stop on SIGTERM), and exec resets handled signals to their default.
fn install_signal_thread() {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the two-element array we pass; O_CLOEXEC keeps it out of children.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    SIGNAL_PIPE.store(fds[1], Ordering::SeqCst);
    // SAFETY: `fds[0]` is a fresh descriptor owned by nothing else.
    let mut rx = unsafe { File::from_raw_fd(fds[0]) };
    let _ = std::thread::Builder::new().name("demo-signals".into()).spawn(move || {
        let mut b = [0u8; 1];
        loop {
            match std::io::Read::read(&mut rx, &mut b) {
                Ok(1) => {}
                Ok(_) => return,
                Err(_) => continue,
            }
            if CANCEL.swap(true, Ordering::SeqCst) {
                hard_cleanup_and_exit();
            }
            term_err("\nholdfast demo: interrupted — stopping the gateways and removing the lab ...");
            std::thread::spawn(|| {
                std::thread::sleep(Duration::from_secs(20));
                hard_cleanup_and_exit();
            });
        }
    });
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only does async-signal-safe work; SA_RESTART keeps
        // the main thread's blocking calls from failing with EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn hard_cleanup_and_exit() -> ! {
    term_err("holdfast demo: removing the lab directly");
    remove_leftovers();
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("holdfast-demo-{}", std::process::id())));
    std::process::exit(130);
}

/// Deletes every lab namespace this process made (`hfl<pid>n*`), after SIGKILLing the
/// processes in it by PID, and the lab run directories. The normal path leaves nothing for this
/// to do; it is the net under a panic or an interrupted step.
fn remove_leftovers() {
    let prefix = format!("{}{}n", lab::topo::PREFIX, std::process::id());
    let t = Duration::from_secs(10);
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&prefix) {
                continue;
            }
            if let Ok(o) = lab::cmd::run(std::process::Command::new("ip").args(["netns", "pids", &name]), t) {
                for pid in o.stdout.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                    if pid > 1 && pid != std::process::id() as i32 {
                        // SAFETY: kill(2) of a PID that `ip netns pids` reports inside a namespace
                        // only this process creates; at worst it is already gone (ESRCH).
                        unsafe {
                            libc::kill(pid, libc::SIGKILL);
                        }
                    }
                }
            }
            let _ = lab::cmd::run(std::process::Command::new("ip").args(["netns", "del", &name]), t);
        }
    }
    if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Points fd 2 at `log` (the lab reports every step on stderr; the terminal gets the
/// narration) and keeps the terminal's stderr for the demo's own errors.
fn redirect_stderr(log: &Path) -> std::io::Result<()> {
    let f = File::create(log)?;
    // SAFETY: dup of fd 2, which is open for the life of the process.
    let saved = unsafe { libc::dup(2) };
    if saved < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `saved` is a fresh descriptor that nothing else owns.
    let saved = unsafe { File::from_raw_fd(saved) };
    // SAFETY: dup2 onto fd 2 from a file we keep open for the call; fd 2 then refers to the log.
    if unsafe { libc::dup2(f.as_raw_fd(), 2) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if let Ok(mut t) = TERM_ERR.lock() {
        *t = Some(saved);
    }
    Ok(())
}

/// A line on the terminal's stderr (or fd 2 before the redirection).
fn term_err(line: &str) {
    let mut g = TERM_ERR.lock().unwrap_or_else(|p| p.into_inner());
    match g.as_mut() {
        Some(f) => {
            let _ = writeln!(f, "{line}");
        }
        None => eprintln!("{line}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipsec_sa_text_parses() {
        let active = "      current_peer: 192.0.2.2\n      current outbound spi: 4F2E1A3B\n      current inbound spi : 8A9C7D21\n    inbound esp sas:\n      spi: 0x8A9C7D21 (2325511457)\n         SA State: active\n    outbound esp sas:\n         SA State: active\n";
        let draining = active.replace("4F2E1A3B", "11111111").replace("8A9C7D21", "22222222").replace("active", "draining");
        let s = parse_ipsec_sa(&format!("interface: outside\n{draining}{active}"));
        assert_eq!(s.peer.as_deref(), Some("192.0.2.2"));
        assert_eq!(s.outbound, ["4F2E1A3B"]);
        assert_eq!(s.inbound, ["8A9C7D21"]);
        assert_eq!(s.draining, 1);
        assert!(parse_ipsec_sa("There are no ipsec sas\n").outbound.is_empty());
    }

    #[test]
    fn conn_flags() {
        assert_eq!(flags("TCP outside 10.2.0.10:40000 inside 10.1.0.10:8080, idle 0:00:00, bytes 5, flags UIOV"), "UIOV");
        assert_eq!(flags("no flags here"), "");
    }
}
