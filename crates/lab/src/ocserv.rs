//! Remote-access benchmarks and load (issue 5): ocserv 1.1.6 as the anchor, `holdfast run`
//! from an ASA configuration, openconnect clients in any namespace, extra client namespaces
//! hung off the gateway of a [`RaLab`], per-process CPU accounting and threads that live in a
//! lab namespace.
//!
//! Everything here runs in the [`crate::openconnect`] topology (client — gateway — server);
//! both servers listen on the gateway's outside address, so a benchmark compares them on the
//! same links.

use crate::cmd::{in_ns, run, sh, wait_for, Proc};
use crate::openconnect::{RaLab, ServerCert, GW_OUTSIDE_IP};
use crate::raconfig::{cidr_mask, RaConfigText, RaPool, SPLIT};
use crate::{io_err, LabError, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// ocserv 1.1.6 (Debian package) in the gateway namespace, configured in the lab's run
/// directory with a plain password file and the lab's self-signed certificate.
pub struct Ocserv {
    pub proc: Proc,
    pub conf: PathBuf,
}

/// Settings both servers get in a benchmark.
#[derive(Debug, Clone, Copy)]
pub struct RaTuning {
    /// DPD (client and gateway) and keepalive, seconds.
    pub dpd: u32,
    /// Tunnel MTU the server is asked to use.
    pub mtu: u32,
}

impl Ocserv {
    /// Writes `ocserv.conf` + `ocpasswd` (user/password) and runs `ocserv -f -c CONF` in the
    /// gateway namespace; waits until it listens on tcp/443.
    pub fn start(lab: &RaLab, cert: &ServerCert, user: &str, password: &str, tuning: RaTuning) -> Result<Ocserv> {
        let passwd = lab.path("ocpasswd");
        let _ = std::fs::remove_file(&passwd);
        // ocpasswd reads the password twice from its terminal or, without one, from stdin.
        let out = run(
            std::process::Command::new("sh").args([
                "-c",
                &format!("printf '%s\\n%s\\n' '{password}' '{password}' | ocpasswd -c {} {user}", passwd.display()),
            ]),
            T,
        )?;
        if !out.success() || !passwd.exists() {
            return Err(LabError::Check(format!("ocpasswd failed: {}{}", out.stdout, out.stderr)));
        }
        // What ocserv shares with holdfast's configuration: the issue's pool (ocserv takes a
        // network, not a range) and split-include network; MTU and DPD come from `tuning`.
        let (pool_net, pool_mask) = RaPool::issue().network();
        let (net, route_mask) = cidr_mask(SPLIT);
        let conf = lab.path("ocserv.conf");
        let text = format!(
            "# ocserv 1.1.6 anchor for the holdfast remote-access benchmark (generated)
auth = \"plain[passwd={passwd}]\"
listen-host = {GW_OUTSIDE_IP}
tcp-port = 443
udp-port = 443
run-as-user = nobody
run-as-group = nogroup
socket-file = {dir}/ocserv.sock
server-cert = {cert}
server-key = {key}
isolate-workers = false
max-clients = 0
max-same-clients = 0
rate-limit-ms = 0
keepalive = {dpd}
dpd = {dpd}
mobile-dpd = {dpd}
switch-to-tcp-timeout = 25
try-mtu-discovery = false
tls-priorities = \"NORMAL:%SERVER_PRECEDENCE:%COMPAT:-VERS-SSL3.0:-VERS-TLS1.0:-VERS-TLS1.1\"
auth-timeout = 240
min-reauth-time = 0
max-ban-score = 0
cookie-timeout = 300
deny-roaming = false
rekey-time = 172800
rekey-method = ssl
use-occtl = false
pid-file = {dir}/ocserv.pid
log-level = 1
device = vpns
predictable-ips = true
ipv4-network = {pool_net}
ipv4-netmask = {pool_mask}
mtu = {mtu}
route = {net}/{route_mask}
ping-leases = false
cisco-client-compat = true
dtls-legacy = true
",
            passwd = passwd.display(),
            dir = lab.dir.display(),
            cert = cert.cert.display(),
            key = cert.key.display(),
            dpd = tuning.dpd,
            mtu = tuning.mtu,
        );
        std::fs::write(&conf, text).map_err(io_err("writing ocserv.conf"))?;
        // The run directory must be reachable by the unprivileged workers (nobody).
        let _ = sh(None, &["chmod", "755", &lab.dir.to_string_lossy()], T);
        sh(Some(&lab.gw), &["sysctl", "-qw", "net.ipv4.ip_forward=1"], T)?;
        let log = lab.path("ocserv.log");
        let c = conf.to_string_lossy().into_owned();
        let mut proc = Proc::spawn("ocserv", in_ns(&lab.gw, &["ocserv", "-f", "-c", &c]), &log)?;
        proc.grace = Duration::from_secs(5);
        let gw = lab.gw.clone();
        wait_for("ocserv listening on tcp/443", Duration::from_secs(20), Duration::from_millis(50), || {
            let ss = sh(Some(&gw), &["ss", "-ltn"], T).ok()?;
            ss.stdout.contains(&format!("{GW_OUTSIDE_IP}:443")).then_some(())
        })
        .map_err(|e| LabError::Check(format!("{e}; ocserv log:\n{}", proc.log_tail(30))))?;
        Ok(Ocserv { proc, conf })
    }

    /// Every ocserv process in the namespace: main, sec-mod and one worker per client.
    pub fn pids(&self, ns: &str) -> Vec<u32> {
        ns_pids(ns).into_iter().filter(|p| comm(*p).is_some_and(|c| c.starts_with("ocserv"))).collect()
    }
}

/// PIDs of the processes in network namespace `ns` (`ip netns pids`).
pub fn ns_pids(ns: &str) -> Vec<u32> {
    run(std::process::Command::new("ip").args(["netns", "pids", ns]), T)
        .map(|o| o.stdout.split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// `/proc/PID/comm` (the executable's short name), `None` once the process is gone.
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_string())
}

/// utime + stime of `pid` (all its threads) in clock ticks; 0 if it is gone.
pub fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // proc(5): the command name is in parentheses and may contain spaces; fields after it
    // start with field 3 (state); utime and stime are fields 14 and 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    num(11) + num(12)
}

/// The processes in namespace `ns` whose `comm` is one of `names`.
pub fn ns_pids_named(ns: &str, names: &[&str]) -> Vec<u32> {
    ns_pids(ns).into_iter().filter(|p| comm(*p).is_some_and(|c| names.contains(&c.as_str()))).collect()
}

/// Whole-machine CPU time from the first line of `/proc/stat`, in clock ticks summed over all
/// CPUs: busy = user + nice + system + irq + softirq + steal (guest time is already inside
/// user), total = busy + idle + iowait. Softirq is where the kernel's packet work (veth, TUN,
/// UDP/TCP receive) runs when it is not charged to a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    pub busy: u64,
    pub softirq: u64,
    pub total: u64,
}

impl MachineCpu {
    pub fn sample() -> MachineCpu {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else { return MachineCpu::default() };
        // proc(5): user nice system idle iowait irq softirq steal guest guest_nice
        let f: Vec<u64> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0)).collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
        MachineCpu { busy, softirq: at(6), total: busy + at(3) + at(4) }
    }

    /// (busy cores, softirq cores) between `earlier` and `self`: 1.0 = one CPU's worth.
    pub fn cores_since(&self, earlier: &MachineCpu, ncpu: usize) -> (f64, f64) {
        let total = self.total.saturating_sub(earlier.total) as f64;
        if total <= 0.0 {
            return (f64::NAN, f64::NAN);
        }
        let n = ncpu as f64;
        (self.busy.saturating_sub(earlier.busy) as f64 / total * n, self.softirq.saturating_sub(earlier.softirq) as f64 / total * n)
    }
}

/// Ticks per second of [`cpu_ticks`].
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Resident set size of `pid` in KiB (VmRSS), 0 if unknown.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// `/proc/loadavg` as "1m 5m 15m".
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

/// Runs `f` on a new thread whose network namespace is `ns` (setns(2) affects the calling
/// thread only), so sockets it opens live in the lab namespace while the process keeps one
/// clock for send and receive times.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(&path).map_err(io_err(format!("opening {path}")))?;
        // SAFETY: setns(2) on an open namespace file descriptor that outlives the call; it
        // changes only this thread's network namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(LabError::Io { what: format!("setns into {path}"), source: std::io::Error::last_os_error() });
        }
        Ok(f())
    })
}

/// The holdfast configuration both RA benchmarks and the load test use: the issue's ASA
/// block ([`RaConfigText::issue`], `hostname ra-bench`), user `vpn` with `password`, DPD
/// `tuning.dpd` both ways, `anyconnect mtu tuning.mtu`, the pool `pool_first`-`pool_last`
/// with `pool_mask`, and — when `client_ca` is given — a certificate-only tunnel group `CERT`
/// whose clients must hold a certificate from that CA.
pub fn holdfast_ra_config(
    cert: &ServerCert,
    password: &str,
    tuning: RaTuning,
    pool: (&str, &str, &str),
    client_ca: Option<&Path>,
) -> String {
    let (first, last, mask) = pool;
    let mtu = u16::try_from(tuning.mtu).unwrap_or(u16::MAX);
    let mut c = RaConfigText::issue(cert, password).hostname("ra-bench").mtu(Some(mtu)).dpd(Some(tuning.dpd)).pool(first, last, mask);
    if let Some(ca) = client_ca {
        c = c.client_ca(ca).add_tunnel_group("CERT", "VPNPOOL", true);
    }
    c.text()
}

/// `holdfast run` in the gateway namespace with a control socket, started with a high open
/// file limit (hundreds of sessions).
pub struct HoldfastRa {
    pub proc: Proc,
    pub sock: PathBuf,
    ns: String,
}

impl HoldfastRa {
    pub fn start(lab: &RaLab, config: &str) -> Result<HoldfastRa> {
        let bin = crate::holdfast_bin();
        if !bin.exists() {
            return Err(LabError::Check(format!("{} not found: cargo build --release -p holdfast (or set HOLDFAST_BIN)", bin.display())));
        }
        let cfg = lab.path("holdfast-ra.cfg");
        std::fs::write(&cfg, config).map_err(io_err("writing the holdfast configuration"))?;
        let sock = lab.path("holdfast.sock");
        let log = lab.path("holdfast.log");
        // A state dir of its own: the machine-wide default may hold an earlier run's sessions.
        let state = lab.path("holdfast-ra-state");
        let _ = std::fs::remove_dir_all(&state);
        let cmdline = format!(
            "ulimit -n 65536; exec {} run --config {} --control {} --state-dir {}",
            bin.display(),
            cfg.display(),
            sock.display(),
            state.display()
        );
        let mut proc = Proc::spawn("holdfast run", in_ns(&lab.gw, &["sh", "-c", &cmdline]), &log)?;
        proc.grace = Duration::from_secs(10);
        let r = wait_for("holdfast remote access listening", Duration::from_secs(30), Duration::from_millis(50), || {
            if proc.exited().is_some() {
                return Some(false);
            }
            std::fs::read_to_string(&log).ok().filter(|t| t.contains("remote access listening")).map(|_| true)
        });
        match r {
            Ok(true) => Ok(HoldfastRa { proc, sock, ns: lab.gw.clone() }),
            _ => Err(LabError::Check(format!("holdfast run did not start remote access:\n{}", proc.log_tail(30)))),
        }
    }

    /// `holdfast WORDS... --control SOCK` in the gateway namespace: (success, stdout+stderr).
    pub fn cli(&self, words: &[&str]) -> (bool, String) {
        let b = crate::holdfast_bin().to_string_lossy().into_owned();
        let s = self.sock.to_string_lossy().into_owned();
        let mut argv = vec![b.as_str()];
        argv.extend_from_slice(words);
        argv.extend(["--control", &s]);
        match run(&mut in_ns(&self.ns, &argv), Duration::from_secs(60)) {
            Ok(o) => (o.success(), format!("{}{}", o.stdout, o.stderr)),
            Err(e) => (false, e.to_string()),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }
}

/// A further client namespace hung off the lab's gateway: `NAME` with eth0 `ip`/24, the
/// gateway side `gw_if` with `gw_ip`/24, default route via the gateway. Removed on drop (its
/// processes killed by PID first); the name carries the lab prefix, so an aborted run's
/// leftover is cleaned up by the next lab.
pub struct ExtraNs {
    pub name: String,
    pub ip: String,
}

impl ExtraNs {
    pub fn new(lab: &RaLab, tag: &str, gw_if: &str, gw_ip: &str, ip: &str) -> Result<ExtraNs> {
        let name = format!("{}-{tag}", lab.id);
        sh(None, &["ip", "netns", "add", &name], T)?;
        let ns = ExtraNs { name, ip: ip.to_string() };
        let n = ns.name.as_str();
        sh(Some(n), &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"], T)?;
        sh(Some(n), &["ip", "link", "set", "lo", "up"], T)?;
        sh(Some(n), &["ip", "link", "add", "eth0", "type", "veth", "peer", "name", gw_if, "netns", &lab.gw], T)?;
        sh(Some(n), &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"], T)?;
        sh(Some(n), &["ip", "link", "set", "eth0", "up"], T)?;
        sh(Some(&lab.gw), &["ip", "addr", "add", &format!("{gw_ip}/24"), "dev", gw_if], T)?;
        sh(Some(&lab.gw), &["ip", "link", "set", gw_if, "up"], T)?;
        sh(Some(n), &["ip", "route", "add", "default", "via", gw_ip], T)?;
        Ok(ns)
    }
}

impl Drop for ExtraNs {
    fn drop(&mut self) {
        for pid in ns_pids(&self.name) {
            if pid > 1 && pid != std::process::id() {
                // SAFETY: kill(2) of a PID that `ip netns pids` reported inside a namespace
                // only this lab run created.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
        let _ = sh(None, &["ip", "netns", "del", &self.name], T);
    }
}

/// openconnect in any namespace with its own `-s` script, tun name and log (several clients
/// in one lab). The script configures the tun and split routes and writes one line per call
/// to `script-TAG.out`.
pub struct OcClient {
    pub proc: Proc,
    pub script_out: PathBuf,
    pub tun: String,
}

impl OcClient {
    pub fn start(
        dir: &Path,
        ns: &str,
        tag: &str,
        cert: &ServerCert,
        user: &str,
        password: &str,
        extra: &[&str],
    ) -> Result<OcClient> {
        let out = dir.join(format!("script-{tag}.out"));
        let _ = std::fs::remove_file(&out);
        let script = dir.join(format!("oc-script-{tag}.sh"));
        let text = format!(
            r#"#!/bin/sh
echo "reason=$reason tundev=$TUNDEV ip4=$INTERNAL_IP4_ADDRESS mtu=$INTERNAL_IP4_MTU" >> {out}
if [ "$reason" = connect ]; then
    ip link set dev "$TUNDEV" up mtu "$INTERNAL_IP4_MTU"
    ip addr add "$INTERNAL_IP4_ADDRESS/32" dev "$TUNDEV"
    i=0
    while [ "$i" -lt "${{CISCO_SPLIT_INC:-0}}" ]; do
        eval a=\$CISCO_SPLIT_INC_${{i}}_ADDR
        eval l=\$CISCO_SPLIT_INC_${{i}}_MASKLEN
        ip route replace "$a/$l" dev "$TUNDEV"
        i=$((i + 1))
    done
    echo "routes-done" >> {out}
fi
exit 0
"#,
            out = out.display()
        );
        std::fs::write(&script, text).map_err(io_err("writing the openconnect script"))?;
        sh(None, &["chmod", "755", &script.to_string_lossy()], T)?;
        let pw = dir.join(format!("password-{tag}"));
        std::fs::write(&pw, format!("{password}\n")).map_err(io_err("writing the password file"))?;
        let tun = format!("oc{tag}");
        let mut cmdline = format!(
            "exec stdbuf -oL -eL openconnect --timestamp --non-inter --passwd-on-stdin -v -u {user} --servercert {} -s {} -i {tun}",
            cert.pin,
            script.display()
        );
        for e in extra {
            cmdline.push(' ');
            cmdline.push_str(e);
        }
        cmdline.push_str(&format!(" https://{GW_OUTSIDE_IP}/ < {}", pw.display()));
        let log = dir.join(format!("openconnect-{tag}.log"));
        let _ = std::fs::remove_file(&log);
        let proc = Proc::spawn(&format!("openconnect {tag}"), in_ns(ns, &["sh", "-c", &cmdline]), &log)?;
        Ok(OcClient { proc, script_out: out, tun })
    }

    /// Waits until the script configured the tun and routes: (address, tun MTU).
    pub fn wait_connected(&mut self, timeout: Duration) -> Result<(String, u32)> {
        let out = self.script_out.clone();
        let r = wait_for("openconnect connected", timeout, Duration::from_millis(50), || {
            if self.proc.exited().is_some() {
                return Some(None);
            }
            let text = std::fs::read_to_string(&out).ok()?;
            let line = text.lines().find(|l| l.starts_with("reason=connect "))?;
            let ip = line.split_whitespace().find_map(|kv| kv.strip_prefix("ip4="))?.to_string();
            let mtu = line.split_whitespace().find_map(|kv| kv.strip_prefix("mtu="))?.parse().ok()?;
            text.contains("routes-done").then_some(Some((ip, mtu)))
        })?;
        r.ok_or_else(|| LabError::Check(format!("openconnect exited: {}", self.proc.log_tail(40))))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }

    /// Waits until openconnect's log says the DTLS channel is up.
    pub fn wait_dtls(&self, timeout: Duration) -> Result<()> {
        let log = self.proc.log.clone();
        wait_for("openconnect DTLS up", timeout, Duration::from_millis(50), || {
            std::fs::read_to_string(&log).ok()?.contains("Established DTLS connection").then_some(())
        })
    }

    /// The TLS line of the log ("Connected to HTTPS on ... with ciphersuite ...").
    pub fn tls_line(&self) -> String {
        self.log().lines().rev().find(|l| l.contains("ciphersuite")).unwrap_or("").trim().to_string()
    }

    /// The DTLS line of the log.
    pub fn dtls_line(&self) -> String {
        self.log().lines().rev().find(|l| l.contains("Established DTLS connection")).unwrap_or("").trim().to_string()
    }
}
