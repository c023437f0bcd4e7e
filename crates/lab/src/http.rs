//! The seed scenario's download (issue 3): host-a serves a large pseudo-random file over HTTP,
//! host-b downloads it with one request on one TCP connection, and the test watches the
//! progress. Plus a UDP syslog receiver for the gateways' ASA messages.
//!
//! ```no_run
//! # fn demo(topo: &lab::Topology) -> lab::Result<()> {
//! use lab::http::{Blob, HttpServer, Download};
//! let blob = Blob::create(topo, 200 * 1024 * 1024, 7)?;             // file + its SHA-256
//! let server = HttpServer::start(topo, &topo.host_a, &blob, Some(100.0))?; // paced, Mbit/s
//! let dl = Download::start(topo, &topo.host_b, &server.url(), "dl")?;
//! dl.wait_bytes(10 << 20, std::time::Duration::from_secs(30))?;    // ... break the tunnel ...
//! let done = dl.wait(std::time::Duration::from_secs(120))?;         // or dl.stop()
//! done.check_intact(&blob)?;
//! server.check_one_request(&done)?;                                 // same TCP connection
//! # Ok(()) }
//! ```
//!
//! The processes are `lab-http serve|get|syslog` (src/bin/lab-http.rs) in the host namespaces;
//! progress samples carry Unix time so they line up with the test's own clock
//! ([`unix_now`]) and with `ping -D`.

use crate::cmd::{in_ns, wait_for, Proc};
use crate::{io_err, LabError, Result, Topology};
use ring::digest::{Context, SHA256};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Port of the lab's HTTP server on host-a.
pub const HTTP_PORT: u16 = 8080;
/// Port of the lab's syslog receivers.
pub const SYSLOG_PORT: u16 = 514;

/// Seconds since the Unix epoch (the time base of every sample in this module).
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Path of the `lab-http` binary: `$LAB_HTTP_BIN`, else next to the running test's `deps/`.
pub fn http_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LAB_HTTP_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe.parent().and_then(|d| if d.ends_with("deps") { d.parent() } else { Some(d) });
    profile_dir.map(|d| d.join("lab-http")).unwrap_or_else(|| PathBuf::from("lab-http"))
}

/// A file of pseudo-random bytes in the run directory, with its length and SHA-256.
#[derive(Debug, Clone)]
pub struct Blob {
    pub path: PathBuf,
    pub len: u64,
    pub sha256: String,
}

impl Blob {
    /// Writes `len` bytes of a seeded xorshift stream (incompressible, reproducible) to
    /// `<run dir>/blob-<seed>.bin` and hashes them on the way.
    pub fn create(topo: &Topology, len: u64, seed: u64) -> Result<Blob> {
        let path = topo.path(&format!("blob-{seed}.bin"));
        let f = std::fs::File::create(&path).map_err(io_err(format!("creating {}", path.display())))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let mut ctx = Context::new(&SHA256);
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            for c in buf[..n].chunks_mut(8) {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
                c.copy_from_slice(&v[..c.len()]);
            }
            ctx.update(&buf[..n]);
            w.write_all(&buf[..n]).map_err(io_err("writing the blob"))?;
            left -= n as u64;
        }
        w.flush().map_err(io_err("writing the blob"))?;
        let sha256 = hex(ctx.finish().as_ref());
        Ok(Blob { path, len, sha256 })
    }

    /// The file name the server answers for (`GET /<name>`).
    pub fn name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

/// `lab-http serve` in a namespace. Stopped (by PID) when dropped.
#[derive(Debug)]
pub struct HttpServer {
    pub ip: String,
    pub port: u16,
    pub name: String,
    pub log: PathBuf,
    _proc: Proc,
}

/// One line of the server log: `request n=.. peer=IP:PORT method=.. path=.. range=..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSeen {
    pub peer: String,
    pub range: bool,
}

impl HttpServer {
    /// Serves `blob` on `0.0.0.0:8080` in `ns` (host-a's address is what clients use), paced to
    /// `rate_mbit` on average (catching up after a stall).
    pub fn start(topo: &Topology, ns: &str, blob: &Blob, rate_mbit: Option<f64>) -> Result<HttpServer> {
        Self::start_opts(topo, ns, blob, rate_mbit, true)
    }

    /// Like [`Self::start`]; `catchup = false` keeps the pace after a stall instead of sending
    /// what is overdue at full speed (for measurements that want a steady rate).
    pub fn start_opts(topo: &Topology, ns: &str, blob: &Blob, rate_mbit: Option<f64>, catchup: bool) -> Result<HttpServer> {
        let bin = http_bin().to_string_lossy().into_owned();
        let listen = format!("0.0.0.0:{HTTP_PORT}");
        let file = blob.path.to_string_lossy().into_owned();
        let mut argv = vec![bin, "serve".into(), "--listen".into(), listen, "--file".into(), file];
        if let Some(r) = rate_mbit {
            argv.extend(["--rate-mbit".into(), r.to_string()]);
        }
        if !catchup {
            argv.push("--no-catchup".into());
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let log = topo.path("http-server.log");
        let _ = std::fs::remove_file(&log);
        let proc = Proc::spawn("lab-http serve", in_ns(ns, &argv), &log)?;
        wait_for("lab-http server listening", Duration::from_secs(10), Duration::from_millis(20), || {
            std::fs::read_to_string(&log).ok().filter(|s| s.contains("listening")).map(|_| ())
        })?;
        let ip = if ns == topo.host_a { crate::topo::HOST_A_IP } else { crate::topo::HOST_B_IP };
        Ok(HttpServer { ip: ip.into(), port: HTTP_PORT, name: blob.name(), log, _proc: proc })
    }

    pub fn url(&self) -> String {
        format!("http://{}:{}/{}", self.ip, self.port, self.name)
    }

    /// Every request the server has seen so far.
    pub fn requests(&self) -> Vec<RequestSeen> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("request "))
            .map(|l| RequestSeen {
                peer: kv(l, "peer").unwrap_or_default(),
                range: kv(l, "range").as_deref() == Some("yes"),
            })
            .collect()
    }

    /// The download was exactly one request, without a Range header, from the client's one TCP
    /// connection (the client's local address as it reported it).
    pub fn check_one_request(&self, d: &DownloadResult) -> Result<()> {
        let reqs = self.requests();
        let ok = reqs.len() == 1 && !reqs[0].range && d.local.as_deref() == Some(reqs[0].peer.as_str());
        if ok {
            Ok(())
        } else {
            Err(LabError::Check(format!(
                "expected exactly one request from {:?} without Range; server saw {reqs:?}",
                d.local
            )))
        }
    }
}

/// A running `lab-http get`. [`Download::samples`] reads its progress while it runs.
#[derive(Debug)]
pub struct Download {
    pub progress: PathBuf,
    proc: Proc,
}

/// What a finished or stopped download reports.
#[derive(Debug, Clone)]
pub struct DownloadResult {
    /// The client's local `IP:PORT` (its one TCP connection).
    pub local: Option<String>,
    /// Body bytes received.
    pub bytes: u64,
    /// SHA-256 of the body when the client finished it, `None` when it failed or was stopped.
    pub sha256: Option<String>,
    /// The client's error line, if it ended with one.
    pub error: Option<String>,
    /// `(unix time, bytes so far)`.
    pub samples: Vec<(f64, u64)>,
}

impl DownloadResult {
    /// The whole file arrived and hashes right.
    pub fn check_intact(&self, blob: &Blob) -> Result<()> {
        if self.bytes == blob.len && self.sha256.as_deref() == Some(blob.sha256.as_str()) {
            Ok(())
        } else {
            Err(LabError::Check(format!(
                "download damaged or incomplete: {} of {} bytes, sha256 {:?} (expected {}), error {:?}",
                self.bytes, blob.len, self.sha256, blob.sha256, self.error
            )))
        }
    }
}

impl Download {
    /// Starts `lab-http get URL` in `ns`; the progress file is `<run dir>/<tag>.progress`.
    pub fn start(topo: &Topology, ns: &str, url: &str, tag: &str) -> Result<Download> {
        let bin = http_bin().to_string_lossy().into_owned();
        let progress = topo.path(&format!("{tag}.progress"));
        let _ = std::fs::remove_file(&progress);
        let p = progress.to_string_lossy().into_owned();
        let argv = [bin.as_str(), "get", "--url", url, "--progress", &p];
        let proc = Proc::spawn("lab-http get", in_ns(ns, &argv), &topo.path(&format!("{tag}.log")))?;
        Ok(Download { progress, proc })
    }

    /// Progress samples so far, `(unix time, bytes)`.
    pub fn samples(&self) -> Vec<(f64, u64)> {
        parse_progress(&std::fs::read_to_string(&self.progress).unwrap_or_default()).samples
    }

    /// Body bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.samples().last().map(|s| s.1).unwrap_or(0)
    }

    /// Waits until at least `bytes` body bytes arrived.
    pub fn wait_bytes(&self, bytes: u64, timeout: Duration) -> Result<()> {
        wait_for(&format!("download to reach {bytes} bytes"), timeout, Duration::from_millis(20), || {
            (self.bytes() >= bytes).then_some(())
        })
        .map_err(|e| LabError::Check(format!("{e} (have {})", self.bytes())))
    }

    /// True while the client runs.
    pub fn running(&mut self) -> bool {
        self.proc.exited().is_none()
    }

    /// Waits for the client to finish by itself (complete or failed) and returns its report.
    pub fn wait(mut self, timeout: Duration) -> Result<DownloadResult> {
        if self.proc.wait_exit(timeout).is_none() {
            let got = self.bytes();
            self.proc.stop();
            return Err(LabError::Timeout { what: format!("download to finish (had {got} bytes)"), after: timeout });
        }
        Ok(self.result())
    }

    /// Stops the client (by PID) and returns what it had.
    pub fn stop(mut self) -> DownloadResult {
        self.proc.stop();
        self.result()
    }

    fn result(&self) -> DownloadResult {
        parse_progress(&std::fs::read_to_string(&self.progress).unwrap_or_default())
    }
}

/// Reads a progress file (format in src/bin/lab-http.rs).
pub fn parse_progress(text: &str) -> DownloadResult {
    let mut r = DownloadResult { local: None, bytes: 0, sha256: None, error: None, samples: Vec::new() };
    for l in text.lines() {
        if let Some(a) = l.strip_prefix("local ") {
            r.local = Some(a.trim().to_string());
        } else if let Some(rest) = l.strip_prefix("done ") {
            r.bytes = kv(rest, "bytes").and_then(|b| b.parse().ok()).unwrap_or(r.bytes);
            r.sha256 = kv(rest, "sha256");
        } else if let Some(rest) = l.strip_prefix("error ") {
            r.error = Some(rest.to_string());
        } else if let Some((t, b)) = l.split_once(' ') {
            if let (Ok(t), Ok(b)) = (t.parse::<f64>(), b.parse::<u64>()) {
                r.samples.push((t, b));
                r.bytes = r.bytes.max(b);
            }
        }
    }
    r
}

fn kv(line: &str, key: &str) -> Option<String> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=').map(|v| v.trim_end_matches(':').to_string()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A UDP syslog receiver (`lab-http syslog`) on port 514 in a namespace; every datagram is one
/// line of `<run dir>/<tag>.syslog`: `UNIXTIME SENDER:PORT MESSAGE`.
#[derive(Debug)]
pub struct SyslogSink {
    pub out: PathBuf,
    _proc: Proc,
}

impl SyslogSink {
    pub fn start(topo: &Topology, ns: &str, tag: &str) -> Result<SyslogSink> {
        let bin = http_bin().to_string_lossy().into_owned();
        let out = topo.path(&format!("{tag}.syslog"));
        let o = out.to_string_lossy().into_owned();
        let listen = format!("0.0.0.0:{SYSLOG_PORT}");
        let log = topo.path(&format!("{tag}-syslog.log"));
        let proc = Proc::spawn("lab-http syslog", in_ns(ns, &[&bin, "syslog", "--listen", &listen, "--out", &o]), &log)?;
        wait_for("syslog receiver listening", Duration::from_secs(10), Duration::from_millis(20), || {
            std::fs::read_to_string(&log).ok().filter(|s| s.contains("listening")).map(|_| ())
        })?;
        Ok(SyslogSink { out, _proc: proc })
    }

    /// Every line received so far.
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out).unwrap_or_default().lines().map(str::to_string).collect()
    }

    /// Lines containing every one of `needles`.
    pub fn matching(&self, needles: &[&str]) -> Vec<String> {
        self.lines().into_iter().filter(|l| needles.iter().all(|n| l.contains(n))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_parses() {
        let t = "local 10.2.0.10:40000\n1700000000.000001 65536\n1700000000.5 131072\ndone bytes=131072 sha256=ab\n";
        let r = parse_progress(t);
        assert_eq!(r.local.as_deref(), Some("10.2.0.10:40000"));
        assert_eq!(r.samples, vec![(1700000000.000001, 65536), (1700000000.5, 131072)]);
        assert_eq!(r.bytes, 131072);
        assert_eq!(r.sha256.as_deref(), Some("ab"));
        let e = parse_progress("local 10.2.0.10:1\n1.0 10\nerror bytes=10: connection reset\n");
        assert_eq!(e.sha256, None);
        assert_eq!(e.bytes, 10);
        assert!(e.error.unwrap().contains("reset"));
    }

    #[test]
    fn kv_reads_fields() {
        assert_eq!(kv("request n=1 peer=10.2.0.10:4 range=no", "peer").as_deref(), Some("10.2.0.10:4"));
        assert_eq!(kv("bytes=10: x", "bytes").as_deref(), Some("10"));
        assert_eq!(kv("a=1", "b"), None);
    }
}
