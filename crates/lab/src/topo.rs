//! The five-namespace topology:
//!
//! ```text
//!  host-a eth0 10.1.0.10/24 ── lan-a 10.1.0.1/24 [gw-a] wan-a 192.0.2.1/24 ── to-a ┐
//!                                                                           [wan] br0
//!  host-b eth0 10.2.0.10/24 ── lan-b 10.2.0.1/24 [gw-b] wan-b 192.0.2.2/24 ── to-b ┘
//! ```
//!
//! The wan namespace is a plain bridge so that the outside link can be captured and filtered
//! (nftables `bridge` family) without touching either gateway. Namespace names carry the PID of
//! the process that made them and a per-process sequence number, so parallel runs never share a
//! name, and a later run can tell an aborted run's leftovers (owner PID dead) from a live one.

use crate::cmd::{run, sh, tail};
use crate::{io_err, LabError, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::{Duration, SystemTime};

/// All lab namespaces start with this; the PID of the creating process follows.
pub const PREFIX: &str = "hfl";

pub const HOST_A_IP: &str = "10.1.0.10";
pub const HOST_B_IP: &str = "10.2.0.10";
pub const GW_A_LAN_IP: &str = "10.1.0.1";
pub const GW_B_LAN_IP: &str = "10.2.0.1";
pub const GW_A_WAN_IP: &str = "192.0.2.1";
pub const GW_B_WAN_IP: &str = "192.0.2.2";
pub const NET_A: &str = "10.1.0.0/24";
pub const NET_B: &str = "10.2.0.0/24";

const T: Duration = Duration::from_secs(10);

static SEQ: AtomicU32 = AtomicU32::new(0);
static CLEAN: Once = Once::new();

/// A built topology. Dropping it kills every process still running in its namespaces (by PID),
/// deletes the namespaces and, when the test passed, its run directory.
#[derive(Debug)]
pub struct Topology {
    /// `hfl<pid>n<seq>`; every namespace is `<id>-<role>`.
    pub id: String,
    pub host_a: String,
    pub gw_a: String,
    pub wan: String,
    pub gw_b: String,
    pub host_b: String,
    /// Run directory for configs, logs, sockets and captures (short: unix socket paths are
    /// limited to 107 bytes).
    pub dir: PathBuf,
    created: Vec<String>,
}

impl Topology {
    /// Builds the topology. Fails (and cleans up what it made) if any step fails.
    pub fn new() -> Result<Topology> {
        if !crate::is_root() {
            return Err(LabError::Check("the lab needs root (network namespaces, veth, TUN)".into()));
        }
        CLEAN.call_once(|| {
            if let Err(e) = cleanup_stale() {
                eprintln!("lab: stale cleanup failed: {e}");
            }
        });
        let id = format!("{PREFIX}{}n{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
        let dir = std::env::temp_dir().join(&id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let mut t = Topology {
            host_a: format!("{id}-ha"),
            gw_a: format!("{id}-ga"),
            wan: format!("{id}-wan"),
            gw_b: format!("{id}-gb"),
            host_b: format!("{id}-hb"),
            id,
            dir,
            created: Vec::new(),
        };
        t.build()?;
        eprintln!("lab: topology {} up (run dir {})", t.id, t.dir.display());
        Ok(t)
    }

    fn build(&mut self) -> Result<()> {
        let all = [&self.host_a, &self.gw_a, &self.wan, &self.gw_b, &self.host_b].map(|s| s.clone());
        for ns in &all {
            sh(None, &["ip", "netns", "add", ns], T)?;
            self.created.push(ns.clone());
            // No IPv6: keeps router solicitations and DAD out of captures; the lab is IPv4 only.
            sh(Some(ns), &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"], T)?;
            sh(Some(ns), &["ip", "link", "set", "lo", "up"], T)?;
        }
        let (ha, ga, w, gb, hb) = (&self.host_a, &self.gw_a, &self.wan, &self.gw_b, &self.host_b);
        // veth pairs are created directly inside the namespaces, never in the root namespace,
        // so interface names cannot collide with the host or with another run.
        veth(ha, "eth0", ga, "lan-a")?;
        veth(ga, "wan-a", w, "to-a")?;
        veth(gb, "wan-b", w, "to-b")?;
        veth(hb, "eth0", gb, "lan-b")?;
        sh(Some(w), &["ip", "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"], T)?;
        for p in ["to-a", "to-b"] {
            sh(Some(w), &["ip", "link", "set", p, "master", "br0"], T)?;
            sh(Some(w), &["ip", "link", "set", p, "up"], T)?;
        }
        sh(Some(w), &["ip", "link", "set", "br0", "up"], T)?;
        addr_up(ha, "eth0", "10.1.0.10/24")?;
        addr_up(ga, "lan-a", "10.1.0.1/24")?;
        addr_up(ga, "wan-a", "192.0.2.1/24")?;
        addr_up(gb, "wan-b", "192.0.2.2/24")?;
        addr_up(gb, "lan-b", "10.2.0.1/24")?;
        addr_up(hb, "eth0", "10.2.0.10/24")?;
        sh(Some(ha), &["ip", "route", "add", "default", "via", GW_A_LAN_IP], T)?;
        sh(Some(hb), &["ip", "route", "add", "default", "via", GW_B_LAN_IP], T)?;
        for g in [ga, gb] {
            sh(Some(g), &["sysctl", "-qw", "net.ipv4.ip_forward=1"], T)?;
        }
        Ok(())
    }

    /// The gateway namespace on side `a` (`'a'`) or `b` (`'b'`).
    pub fn gw(&self, side: char) -> &str {
        if side == 'a' {
            &self.gw_a
        } else {
            &self.gw_b
        }
    }

    /// Loads an nftables ruleset into the wan namespace (e.g. a `bridge` table that drops
    /// UDP 500/4500 to cut the tunnel).
    pub fn wan_nft(&self, ruleset: &str) -> Result<()> {
        let f = self.dir.join("wan.nft");
        std::fs::write(&f, ruleset).map_err(io_err("writing wan.nft"))?;
        sh(Some(&self.wan), &["nft", "-f", &f.to_string_lossy()], T)?;
        Ok(())
    }

    /// Removes every nftables rule in the wan namespace.
    pub fn wan_nft_flush(&self) -> Result<()> {
        sh(Some(&self.wan), &["nft", "flush", "ruleset"], T)?;
        Ok(())
    }

    /// Gives each gateway a default route to the other over the wan, as real gateways have a
    /// default route to the Internet: without IPsec the kernel would then forward protected
    /// traffic in clear, so a capture shows whether the VPN lets anything slip out unencrypted.
    pub fn add_wan_default_routes(&self) -> Result<()> {
        sh(Some(&self.gw_a), &["ip", "route", "add", "default", "via", GW_B_WAN_IP], T)?;
        sh(Some(&self.gw_b), &["ip", "route", "add", "default", "via", GW_A_WAN_IP], T)?;
        Ok(())
    }

    /// [`Self::add_wan_default_routes`] for one gateway only (`'a'` or `'b'`), e.g. only where
    /// holdfast runs, when the other gateway is a peer whose own leaks are not under test.
    pub fn add_wan_default_route(&self, side: char) -> Result<()> {
        let via = if side == 'a' { GW_B_WAN_IP } else { GW_A_WAN_IP };
        sh(Some(self.gw(side)), &["ip", "route", "add", "default", "via", via], T)?;
        Ok(())
    }

    /// A path in the run directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            dump_logs(&self.dir);
        }
        for ns in self.created.iter().rev() {
            kill_ns_pids(ns);
            if let Err(e) = sh(None, &["ip", "netns", "del", ns], T) {
                eprintln!("lab: deleting namespace {ns}: {e}");
            }
        }
        if failed {
            eprintln!("lab: test failed; run directory kept: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn veth(ns1: &str, if1: &str, ns2: &str, if2: &str) -> Result<()> {
    sh(Some(ns1), &["ip", "link", "add", if1, "type", "veth", "peer", "name", if2, "netns", ns2], T)?;
    Ok(())
}

fn addr_up(ns: &str, ifname: &str, cidr: &str) -> Result<()> {
    sh(Some(ns), &["ip", "addr", "add", cidr, "dev", ifname], T)?;
    sh(Some(ns), &["ip", "link", "set", ifname, "up"], T)?;
    Ok(())
}

/// SIGKILLs every process whose network namespace is `ns` (processes this lab run started).
fn kill_ns_pids(ns: &str) {
    let Ok(out) = run(&mut std::process::Command::new("ip").args(["netns", "pids", ns]), T) else { return };
    for pid in out.stdout.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
        if pid > 1 && pid != std::process::id() as i32 {
            eprintln!("lab: killing leftover pid {pid} in {ns}");
            // SAFETY: plain kill(2) of a PID that `ip netns pids` just reported inside a namespace
            // that only this lab creates; at worst the process is already gone (ESRCH).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

fn dump_logs(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut logs: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    for l in logs {
        eprintln!("----- last lines of {} -----\n{}", l.display(), tail(&l, 40));
    }
}

/// Deletes namespaces (and kills processes in them) left by lab runs whose process is gone, or
/// whose PID has since been reused by a process started after the namespace was made.
pub fn cleanup_stale() -> Result<()> {
    let me = std::process::id();
    let rd = match std::fs::read_dir("/run/netns") {
        Ok(rd) => rd,
        Err(_) => return Ok(()), // no namespaces at all
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(owner) = owner_pid(&name) else { continue };
        if owner == me {
            continue;
        }
        let ns_made = e.metadata().ok().and_then(|m| m.modified().ok());
        if owner_alive_since(owner, ns_made) {
            continue;
        }
        eprintln!("lab: removing stale namespace {name} (owner pid {owner} is gone)");
        kill_ns_pids(&name);
        let _ = sh(None, &["ip", "netns", "del", &name], T);
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(name.split('-').next().unwrap_or("")));
    }
    Ok(())
}

/// `hfl<pid>n<seq>-<role>` -> pid.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (id, _) = rest.split_once('-')?;
    let (pid, seq) = id.split_once('n')?;
    seq.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// True when `pid` runs and was started before the namespace was made (so it is plausibly the
/// process that made it, not a later process that happens to have the same PID).
fn owner_alive_since(pid: u32, ns_made: Option<SystemTime>) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let (Some(ns_made), Some(started)) = (ns_made, process_start(&stat)) else { return true };
    started <= ns_made + Duration::from_secs(2)
}

fn process_start(stat: &str) -> Option<SystemTime> {
    // Field 22 (starttime, clock ticks since boot) counted after the parenthesised comm, which
    // may itself contain spaces.
    let after = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse().ok()))?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|h| *h > 0)?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(btime) + Duration::from_millis(ticks * 1000 / hz))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_our_names() {
        assert_eq!(owner_pid("hfl1234n0-ga"), Some(1234));
        assert_eq!(owner_pid("hfl1234n17-wan"), Some(1234));
        assert_eq!(owner_pid("hflx-ga"), None);
        assert_eq!(owner_pid("other-ns"), None);
        assert_eq!(owner_pid("hfl12n-ga"), None);
    }

    #[test]
    fn own_process_start_is_in_the_past() {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let started = process_start(&stat).expect("parse /proc/self/stat");
        assert!(started <= SystemTime::now());
        assert!(owner_alive_since(std::process::id(), Some(SystemTime::now())));
        assert!(!owner_alive_since(std::process::id(), Some(SystemTime::UNIX_EPOCH)));
    }
}
