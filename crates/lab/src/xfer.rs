//! Traffic between the host namespaces: ping and the `lab-xfer` SHA-256-checked TCP transfer.

use crate::cmd::{in_ns, run, wait_for, Proc};
use crate::{LabError, Result, Topology};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Outcome of one transfer, from both ends.
#[derive(Debug, Clone)]
pub struct XferResult {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub sha_sent: String,
    pub sha_received: String,
    /// Receiver's time from first to last byte.
    pub secs: f64,
    pub mbit: f64,
    /// Longest gap between two reads at the receiver.
    pub max_stall: Duration,
}

impl XferResult {
    /// Every byte arrived, none twice, in order.
    pub fn check_intact(&self, expected: u64) -> Result<()> {
        if self.bytes_sent != expected || self.bytes_received != expected || self.sha_sent != self.sha_received {
            return Err(LabError::Check(format!("transfer damaged: expected {expected} bytes, {self:?}")));
        }
        Ok(())
    }
}

/// Options for [`transfer`].
#[derive(Debug, Clone)]
pub struct XferOpts {
    pub port: u16,
    pub seed: u64,
    /// Pace the sender to this average rate (Mbit/s).
    pub rate_mbit: Option<f64>,
    pub timeout: Duration,
}

impl Default for XferOpts {
    fn default() -> Self {
        XferOpts { port: 5001, seed: 1, rate_mbit: None, timeout: Duration::from_secs(180) }
    }
}

/// Path of the `lab-xfer` binary: `$LAB_XFER_BIN`, else next to the running test's `deps/`.
pub fn xfer_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LAB_XFER_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe.parent().and_then(|d| if d.ends_with("deps") { d.parent() } else { Some(d) });
    profile_dir.map(|d| d.join("lab-xfer")).unwrap_or_else(|| PathBuf::from("lab-xfer"))
}

/// Sends `bytes` from namespace `from` to `to_ip:port` in namespace `to` and reports both ends.
pub fn transfer(topo: &Topology, from: &str, to: &str, to_ip: &str, bytes: u64, opts: &XferOpts) -> Result<XferResult> {
    let bin = xfer_bin();
    let bin = bin.to_string_lossy().into_owned();
    let log = topo.path(&format!("xfer-recv-{}.log", opts.port));
    let _ = std::fs::remove_file(&log);
    let listen = format!("0.0.0.0:{}", opts.port);
    let idle = opts.timeout.as_secs().max(1).to_string();
    let mut rx = Proc::spawn("lab-xfer recv", in_ns(to, &[&bin, "recv", "--listen", &listen, "--idle-timeout", &idle]), &log)?;
    wait_for("lab-xfer receiver listening", Duration::from_secs(10), Duration::from_millis(20), || {
        std::fs::read_to_string(&log).ok().filter(|s| s.contains("listening")).map(|_| ())
    })?;
    let start = Instant::now();
    let dst = format!("{to_ip}:{}", opts.port);
    let mut args = vec![bin.clone(), "send".into(), "--connect".into(), dst, "--bytes".into(), bytes.to_string()];
    args.extend(["--seed".into(), opts.seed.to_string()]);
    if let Some(r) = opts.rate_mbit {
        args.extend(["--rate-mbit".into(), r.to_string()]);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&mut in_ns(from, &argv), opts.timeout)?;
    if !out.success() {
        return Err(LabError::Check(format!(
            "lab-xfer send failed after {:?} (status {:?}, timed out {}): {}{}\nreceiver: {}",
            start.elapsed(),
            out.status,
            out.timed_out,
            out.stdout,
            out.stderr,
            crate::cmd::tail(&log, 5)
        )));
    }
    let left = opts.timeout.saturating_sub(start.elapsed()).max(Duration::from_secs(5));
    if rx.wait_exit(left) != Some(0) {
        return Err(LabError::Check(format!("lab-xfer recv did not finish cleanly: {}", crate::cmd::tail(&log, 5))));
    }
    let recv_line = std::fs::read_to_string(&log).unwrap_or_default();
    let recv_line = recv_line.lines().find(|l| l.starts_with("recv ")).unwrap_or("").to_string();
    let sent_line = out.stdout.lines().find(|l| l.starts_with("sent ")).unwrap_or("").to_string();
    let r = XferResult {
        bytes_sent: field(&sent_line, "bytes").unwrap_or(0),
        sha_sent: field::<String>(&sent_line, "sha256").unwrap_or_default(),
        bytes_received: field(&recv_line, "bytes").unwrap_or(0),
        sha_received: field::<String>(&recv_line, "sha256").unwrap_or_default(),
        secs: field(&recv_line, "secs").unwrap_or(0.0),
        mbit: field(&recv_line, "mbit").unwrap_or(0.0),
        max_stall: Duration::from_secs_f64(field::<f64>(&recv_line, "max_stall_ms").unwrap_or(0.0) / 1000.0),
    };
    eprintln!(
        "lab: transfer {from} -> {to}: {} bytes in {:.2} s ({:.1} Mbit/s), max stall {:?}, sha256 {}",
        r.bytes_received,
        r.secs,
        r.mbit,
        r.max_stall,
        if r.sha_sent == r.sha_received { "match" } else { "MISMATCH" }
    );
    Ok(r)
}

fn field<T: std::str::FromStr>(line: &str, key: &str) -> Option<T> {
    line.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// `ping -c count` from namespace `ns`; returns the number of replies.
pub fn ping(ns: &str, dst: &str, count: u32) -> Result<u32> {
    let c = count.to_string();
    let out = run(
        &mut in_ns(ns, &["ping", "-n", "-q", "-c", &c, "-i", "0.2", "-W", "1", dst]),
        Duration::from_secs(u64::from(count) + 5),
    )?;
    let received = out
        .stdout
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok(received)
}

/// Pings once a few times per second until a reply arrives; returns how long that took.
pub fn wait_ping(ns: &str, dst: &str, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    wait_for(&format!("ping {dst} from {ns}"), timeout, Duration::from_millis(1), || {
        let out = run(&mut in_ns(ns, &["ping", "-n", "-q", "-c", "1", "-W", "1", dst]), Duration::from_secs(3)).ok()?;
        if out.success() {
            Some(start.elapsed())
        } else {
            // ping -W 1 already waited up to a second; when the route is missing it returns at
            // once, so do not spin.
            std::thread::sleep(Duration::from_millis(200));
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_parse() {
        let l = "recv bytes=100 sha256=abcd secs=1.500 mbit=0.5 max_stall_ms=12.5";
        assert_eq!(field::<u64>(l, "bytes"), Some(100));
        assert_eq!(field::<String>(l, "sha256").as_deref(), Some("abcd"));
        assert_eq!(field::<f64>(l, "max_stall_ms"), Some(12.5));
        assert_eq!(field::<u64>(l, "missing"), None);
    }
}
