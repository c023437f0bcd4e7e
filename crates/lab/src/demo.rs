//! Pieces of `holdfast demo` that belong to the lab: an HTTP download between the two office
//! hosts run as threads of the calling process (each thread enters its host's network
//! namespace first, so the demo needs no helper binary), and the throughput chart.
//!
//! The server on host-a answers one `GET` with a seeded pseudo-random body paced to a fixed
//! rate (no catching up after a stall: the chart then shows the path, not a burst) and hashes
//! what it writes; the client on host-b makes that one request on one TCP connection, hashes
//! what it reads and records `(instant, bytes so far)` after every read, so the resumption after
//! an outage is measured at the receiver to the read.

use crate::resume::Pacer;
use crate::{io_err, LabError, Result};
use ring::digest::{Context, SHA256};
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Port of the demo's HTTP server on host-a.
pub const DEMO_HTTP_PORT: u16 = 8080;

/// Moves the calling thread into the network namespace `/run/netns/<ns>` (made by
/// `ip netns add`). Sockets the thread creates afterwards live in that namespace; the rest of
/// the process is not affected.
pub fn enter_netns(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let f = std::fs::File::open(&path).map_err(io_err(format!("opening {path}")))?;
    // SAFETY: setns(2) on a file descriptor we own and keep open for the call; CLONE_NEWNET
    // changes only this thread's network namespace (no memory is touched).
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(LabError::Io { what: format!("setns into {ns}"), source: std::io::Error::last_os_error() });
    }
    Ok(())
}

/// Progress of one download, shared between the client thread and the narrator.
#[derive(Debug, Default)]
pub struct Progress {
    /// Body bytes received so far.
    pub bytes: AtomicU64,
    /// `(when, body bytes so far)` after every read.
    pub samples: Mutex<Vec<(Instant, u64)>>,
    /// The client's local `IP:PORT` once connected.
    pub local: Mutex<Option<SocketAddr>>,
}

impl Progress {
    pub fn samples(&self) -> Vec<(Instant, u64)> {
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The first read after `t` that brought bytes beyond what had arrived by `t`.
    pub fn first_new_byte_after(&self, t: Instant) -> Option<(Instant, u64)> {
        first_new_after(&self.samples(), t)
    }
}

/// See [`Progress::first_new_byte_after`].
pub fn first_new_after(samples: &[(Instant, u64)], t: Instant) -> Option<(Instant, u64)> {
    let before = samples.iter().take_while(|s| s.0 <= t).last().map_or(0, |s| s.1);
    samples.iter().find(|s| s.0 > t && s.1 > before).copied()
}

/// How a side of the transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Every byte moved; SHA-256 (hex) of the body as this side saw it.
    Complete { bytes: u64, sha256: String },
    /// Stopped or broken after `bytes`.
    Failed { bytes: u64, error: String },
}

/// A running download host-a -> host-b.
pub struct Download {
    pub len: u64,
    pub progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<End>>,
    client: Option<JoinHandle<End>>,
}

impl Download {
    /// Starts the server thread in `server_ns` (listening on `server_ip`), then the client
    /// thread in `client_ns`; returns once the server listens (the client connects at once).
    pub fn start(server_ns: &str, server_ip: &str, client_ns: &str, len: u64, rate_mbit: f64) -> Result<Download> {
        let addr: SocketAddr = format!("{server_ip}:{DEMO_HTTP_PORT}")
            .parse()
            .map_err(|_| LabError::Check(format!("bad server address {server_ip}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::result::Result<(), String>>();
        let ns = server_ns.to_string();
        let st = stop.clone();
        let server = std::thread::Builder::new()
            .name("demo-http-server".into())
            .spawn(move || {
                let l = enter_netns(&ns).map_err(|e| e.to_string()).and_then(|()| {
                    TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))
                });
                let l = match l {
                    Ok(l) => {
                        let _ = ready_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.clone()));
                        return End::Failed { bytes: 0, error: e };
                    }
                };
                serve_one(&l, len, rate_mbit, &st)
            })
            .map_err(io_err("spawning the server thread"))?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(LabError::Check(format!("demo HTTP server: {e}"))),
            Err(_) => return Err(LabError::Check("demo HTTP server did not start".into())),
        }
        let progress = Arc::new(Progress::default());
        let (p, st, ns) = (progress.clone(), stop.clone(), client_ns.to_string());
        let client = std::thread::Builder::new()
            .name("demo-http-client".into())
            .spawn(move || match enter_netns(&ns) {
                Ok(()) => fetch(addr, &p, &st),
                Err(e) => End::Failed { bytes: 0, error: e.to_string() },
            })
            .map_err(io_err("spawning the client thread"))?;
        Ok(Download { len, progress, stop, server: Some(server), client: Some(client) })
    }

    pub fn bytes(&self) -> u64 {
        self.progress.bytes.load(Ordering::Relaxed)
    }

    /// True once the client thread has ended (complete or failed).
    pub fn client_done(&self) -> bool {
        match &self.client {
            Some(c) => c.is_finished(),
            None => true,
        }
    }

    /// Asks both threads to stop (they check every 100 ms) and returns (server, client) ends.
    pub fn finish(mut self) -> (End, End) {
        self.stop.store(true, Ordering::SeqCst);
        let join = |h: Option<JoinHandle<End>>| {
            h.map(|h| h.join().unwrap_or_else(|_| End::Failed { bytes: 0, error: "thread panicked".into() }))
                .unwrap_or(End::Failed { bytes: 0, error: "not started".into() })
        };
        (join(self.server.take()), join(self.client.take()))
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// How long a blocked read or write waits before looking at the stop flag.
const POLL: Duration = Duration::from_millis(100);
const CHUNK: usize = 64 * 1024;

fn serve_one(l: &TcpListener, len: u64, rate_mbit: f64, stop: &AtomicBool) -> End {
    let fail = |bytes, error: String| End::Failed { bytes, error };
    if let Err(e) = l.set_nonblocking(true) {
        return fail(0, e.to_string());
    }
    let s = loop {
        match l.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if stop.load(Ordering::Relaxed) {
                    return fail(0, "stopped before a client connected".into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return fail(0, format!("accept: {e}")),
        }
    };
    let mut s = s;
    if let Err(e) = s.set_nonblocking(false).and_then(|()| s.set_read_timeout(Some(POLL))).and_then(|()| s.set_write_timeout(Some(POLL))) {
        return fail(0, e.to_string());
    }
    // The request head: everything up to the empty line. One GET is all the demo makes.
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(0) => return fail(0, "client closed before its request".into()),
            Ok(n) => head.extend_from_slice(&b[..n]),
            Err(e) if is_timeout(&e) && !stop.load(Ordering::Relaxed) => {}
            Err(e) => return fail(0, format!("reading the request: {e}")),
        }
        if head.len() > 16 * 1024 {
            return fail(0, "request head too long".into());
        }
    }
    if !head.starts_with(b"GET ") {
        let _ = s.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return fail(0, "not a GET".into());
    }
    let resp = format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
    if let Err(e) = write_all_polling(&mut s, resp.as_bytes(), stop) {
        return fail(0, e);
    }
    let mut ctx = Context::new(&SHA256);
    let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15);
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    let mut pacer = Pacer::new(rate_mbit, Instant::now());
    while sent < len {
        let n = (len - sent).min(CHUNK as u64) as usize;
        rng.fill(&mut buf[..n]);
        if let Err(e) = write_all_polling(&mut s, &buf[..n], stop) {
            return fail(sent, e);
        }
        ctx.update(&buf[..n]);
        sent += n as u64;
        let wait = pacer.wrote(n, Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
    let _ = s.shutdown(Shutdown::Write);
    End::Complete { bytes: sent, sha256: hex(ctx.finish().as_ref()) }
}

fn write_all_polling(s: &mut TcpStream, mut data: &[u8], stop: &AtomicBool) -> std::result::Result<(), String> {
    while !data.is_empty() {
        match s.write(data) {
            Ok(0) => return Err("connection closed".into()),
            Ok(n) => data = &data[n..],
            Err(e) if is_timeout(&e) => {
                if stop.load(Ordering::Relaxed) {
                    return Err("stopped".into());
                }
            }
            Err(e) => return Err(format!("write: {e}")),
        }
    }
    Ok(())
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted)
}

fn fetch(addr: SocketAddr, p: &Progress, stop: &AtomicBool) -> End {
    let fail = |bytes, error: String| End::Failed { bytes, error };
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
        Ok(s) => s,
        Err(e) => return fail(0, format!("connect {addr}: {e}")),
    };
    if let Ok(mut l) = p.local.lock() {
        *l = s.local_addr().ok();
    }
    if let Err(e) = s.set_read_timeout(Some(POLL)).and_then(|()| s.set_write_timeout(Some(POLL))) {
        return fail(0, e.to_string());
    }
    let req = format!("GET /demo.bin HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: holdfast-demo\r\nConnection: close\r\n\r\n");
    if let Err(e) = write_all_polling(&mut s, req.as_bytes(), stop) {
        return fail(0, e);
    }
    let mut buf = vec![0u8; CHUNK];
    let mut head = Vec::new();
    let mut ctx = Context::new(&SHA256);
    let mut body_len: Option<u64> = None;
    let mut got = 0u64;
    loop {
        if body_len.is_some_and(|l| got >= l) {
            break;
        }
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if is_timeout(&e) => {
                if stop.load(Ordering::Relaxed) {
                    return fail(got, "stopped".into());
                }
                continue;
            }
            Err(e) => return fail(got, format!("read: {e}")),
        };
        let now = Instant::now();
        let body: &[u8] = if body_len.is_none() {
            head.extend_from_slice(&buf[..n]);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                if head.len() > 16 * 1024 {
                    return fail(0, "response head too long".into());
                }
                continue;
            };
            let text = String::from_utf8_lossy(&head[..end]).into_owned();
            if !text.starts_with("HTTP/1.1 200") {
                return fail(0, format!("server answered {}", text.lines().next().unwrap_or("")));
            }
            let Some(len) = text.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<u64>().ok()).flatten()
            }) else {
                return fail(0, "no Content-Length".into());
            };
            body_len = Some(len);
            head.drain(..end + 4);
            &head
        } else {
            &buf[..n]
        };
        if !body.is_empty() {
            ctx.update(body);
            got += body.len() as u64;
            p.bytes.store(got, Ordering::Relaxed);
            if let Ok(mut v) = p.samples.lock() {
                v.push((now, got));
            }
        }
    }
    match body_len {
        Some(l) if got == l => End::Complete { bytes: got, sha256: hex(ctx.finish().as_ref()) },
        Some(l) => fail(got, format!("connection closed after {got} of {l} bytes")),
        None => fail(0, "connection closed before the response".into()),
    }
}

/// xorshift64: incompressible, reproducible filler (not cryptographic, nor meant to be).
struct Xorshift(u64);

impl Xorshift {
    fn fill(&mut self, out: &mut [u8]) {
        for c in out.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            c.copy_from_slice(&self.0.to_le_bytes()[..c.len()]);
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ------------------------------------------------------------------------------------------
// Chart

/// One run of the demo as the chart shows it. Times are seconds since the download started.
#[derive(Debug, Clone)]
pub struct ChartRun {
    pub label: String,
    /// CSS colour of the line.
    pub color: String,
    /// `(seconds, body bytes so far)`.
    pub samples: Vec<(f64, u64)>,
    /// The outage: break to tunnel back.
    pub outage: (f64, f64),
    /// Time axis ends here for this run (the download completed or was given up).
    pub end: f64,
}

/// Throughput in Mbit/s per `bin` seconds from cumulative samples: `(bin start, Mbit/s)`, from
/// 0 up to `end`.
pub fn throughput(samples: &[(f64, u64)], bin: f64, end: f64) -> Vec<(f64, f64)> {
    let n = (end / bin).ceil().max(1.0) as usize;
    let mut bytes = vec![0u64; n];
    let mut prev = 0u64;
    for &(t, cum) in samples {
        let i = ((t / bin).floor().max(0.0) as usize).min(n - 1);
        bytes[i] += cum.saturating_sub(prev);
        prev = prev.max(cum);
    }
    bytes.iter().enumerate().map(|(i, b)| (i as f64 * bin, *b as f64 * 8.0 / bin / 1e6)).collect()
}

/// Throughput over time of every run as a standalone SVG: axes with ticks and labels, one line
/// per run, each run's outage shaded in its colour and labelled, a legend.
pub fn svg_chart(title: &str, runs: &[ChartRun], bin: f64) -> String {
    let (w, h) = (900.0, 420.0);
    let (left, right, top, bottom) = (70.0, 20.0, 50.0, 110.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let t_max = runs.iter().map(|r| r.end).fold(1.0f64, f64::max);
    let series: Vec<Vec<(f64, f64)>> = runs.iter().map(|r| throughput(&r.samples, bin, r.end)).collect();
    let y_top = nice_ceiling(series.iter().flatten().map(|p| p.1).fold(1.0, f64::max) * 1.1);
    let x = |t: f64| left + t / t_max * pw;
    let y = |v: f64| top + ph - v / y_top * ph;
    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="Helvetica, Arial, sans-serif" font-size="13">"#
    );
    let _ = writeln!(s, r#"<rect x="0" y="0" width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{}" y="28" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#, w / 2.0, esc(title));
    // Outages first, under everything else.
    for (i, r) in runs.iter().enumerate() {
        let (a, b) = (x(r.outage.0), x(r.outage.1.max(r.outage.0)));
        let _ = writeln!(
            s,
            r#"<rect x="{a:.1}" y="{top}" width="{:.1}" height="{ph}" fill="{}" fill-opacity="0.12" stroke="{}" stroke-opacity="0.5" stroke-dasharray="4 3"/>"#,
            (b - a).max(1.0),
            r.color,
            r.color
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11" fill="{}">outage ({:.1} s)</text>"#,
            (a + b) / 2.0,
            top + 14.0 + 14.0 * i as f64,
            r.color,
            r.outage.1 - r.outage.0
        );
    }
    // Grid and axes.
    let y_step = y_top / 5.0;
    for k in 0..=5 {
        let v = y_step * k as f64;
        let _ = writeln!(s, r##"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#ddd"/>"##, y(v), left + pw, y(v));
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#, left - 6.0, y(v) + 4.0, fmt_num(v));
    }
    let x_step = nice_step(t_max / 8.0);
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let _ = writeln!(s, r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#, x(t), top + ph, x(t), top + ph + 5.0);
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, x(t), top + ph + 19.0, fmt_num(t));
        t += x_step;
    }
    let _ = writeln!(s, r#"<line x1="{left}" y1="{top}" x2="{left}" y2="{:.1}" stroke="black"/>"#, top + ph);
    let _ = writeln!(s, r#"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#, top + ph, left + pw, top + ph);
    let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds since the download started</text>"#, left + pw / 2.0, top + ph + 38.0);
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">throughput at host-b (Mbit/s, {} ms bins)</text>"#,
        top + ph / 2.0,
        top + ph / 2.0,
        (bin * 1000.0).round()
    );
    // The runs.
    for (r, pts) in runs.iter().zip(&series) {
        let mut d = String::new();
        for (i, (t, v)) in pts.iter().enumerate() {
            // A step line: each bin's rate held over the bin.
            let _ = write!(d, "{}{:.1},{:.1} L{:.1},{:.1} ", if i == 0 { "M" } else { "L" }, x(*t), y(*v), x((t + bin).min(r.end)), y(*v));
        }
        let _ = writeln!(s, r#"<path d="{}" fill="none" stroke="{}" stroke-width="2"/>"#, d.trim_end(), r.color);
    }
    // Legend below the plot.
    for (i, r) in runs.iter().enumerate() {
        let ly = top + ph + 60.0 + 20.0 * i as f64;
        let _ = writeln!(s, r#"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="3"/>"#, ly - 4.0, left + 28.0, ly - 4.0, r.color);
        let _ = writeln!(s, r#"<text x="{:.1}" y="{ly:.1}">{}</text>"#, left + 36.0, esc(&r.label));
    }
    s.push_str("</svg>\n");
    s
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn fmt_num(v: f64) -> String {
    if (v - v.round()).abs() < 1e-6 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.1}")
    }
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_step(v: f64) -> f64 {
    let v = v.max(1e-3);
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|s| *s >= v - 1e-9).unwrap_or(10.0 * p)
}

/// Rounds up to a multiple of a nice step so that 5 grid lines land on round values.
fn nice_ceiling(v: f64) -> f64 {
    let step = nice_step(v / 5.0);
    (v / step).ceil() * step
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_bins_cumulative_samples() {
        // 1 MB in the first half second, nothing for a second, 0.5 MB after.
        let s = [(0.1, 500_000), (0.4, 1_000_000), (1.6, 1_250_000), (1.9, 1_500_000)];
        let t = throughput(&s, 0.5, 2.0);
        assert_eq!(t.len(), 4);
        assert!((t[0].1 - 16.0).abs() < 1e-9, "{t:?}");
        assert_eq!(t[1].1, 0.0);
        assert_eq!(t[2].1, 0.0);
        assert!((t[3].1 - 8.0).abs() < 1e-9, "{t:?}");
    }

    #[test]
    fn first_new_byte_is_after_the_reference() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let s = [(at(0), 10), (at(100), 20), (at(900), 20), (at(1000), 30)];
        assert_eq!(first_new_after(&s, at(500)), Some((at(1000), 30)));
        assert_eq!(first_new_after(&s, at(1000)), None);
    }

    #[test]
    fn chart_is_well_formed_and_labelled() {
        let runs = vec![
            ChartRun { label: "preserve on".into(), color: "#1f77b4".into(), samples: vec![(0.5, 1 << 20), (3.0, 4 << 20)], outage: (1.0, 2.0), end: 3.0 },
            ChartRun { label: "off & <default>".into(), color: "#d62728".into(), samples: vec![(0.5, 1 << 20)], outage: (1.0, 2.5), end: 4.0 },
        ];
        let svg = svg_chart("t", &runs, 0.25);
        assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("off &amp; &lt;default&gt;"));
        assert!(svg.contains("outage (1.0 s)") && svg.contains("outage (1.5 s)"));
        assert!(svg.contains("Mbit/s"));
        // Tags balance (the test in tests/demo.rs parses it properly).
        assert_eq!(svg.matches("<svg").count(), svg.matches("</svg>").count());
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_ceiling(88.0), 100.0);
        assert_eq!(nice_ceiling(40.0), 40.0);
    }
}
