//! A holdfast peer in a gateway namespace: `holdfast run --config FILE --control SOCK`, with the
//! configuration generated in ASA syntax from a few parameters, and `holdfast show/clear ...`
//! over the control socket.

use crate::cmd::{in_ns, run, wait_for, Proc};
use crate::{io_err, LabError, Result, Topology};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Pre-shared key used by every lab tunnel (lab only; never reused outside namespaces).
pub const LAB_PSK: &str = "lab-only-psk-5f2c9d81e7";

/// Algorithm suites tested against strongSwan, named the way both sides spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// IKE aes256gcm16-prfsha256-x25519, ESP aes256gcm16.
    GcmX25519,
    /// IKE aes256-sha256-modp2048, ESP aes256-sha256.
    CbcSha256Modp2048,
}

impl Suite {
    /// (IKE proposal, ESP proposal) in swanctl.conf syntax. `pfs` adds the DH group to the ESP
    /// proposal so CHILD_SA rekeys carry a KE payload, matching `set pfs` on the holdfast side.
    pub fn swan(self, pfs: bool) -> (String, String) {
        match self {
            Suite::GcmX25519 => ("aes256gcm16-prfsha256-x25519".into(), if pfs { "aes256gcm16-x25519" } else { "aes256gcm16" }.into()),
            Suite::CbcSha256Modp2048 => {
                ("aes256-sha256-modp2048".into(), if pfs { "aes256-sha256-modp2048" } else { "aes256-sha256" }.into())
            }
        }
    }
}

/// Parameters of one holdfast gateway of the lab topology.
#[derive(Debug, Clone)]
pub struct HoldfastParams {
    pub outside_if: String,
    pub inside_if: String,
    pub outside_addr: String,
    pub inside_addr: String,
    pub peer_addr: String,
    /// Protected networks as `(address, netmask)`.
    pub local_net: (String, String),
    pub remote_net: (String, String),
    /// `crypto ikev2 policy 10` lines.
    pub ike_encryption: String,
    pub ike_integrity: String,
    pub ike_group: String,
    pub ike_prf: String,
    pub ike_lifetime_seconds: u64,
    /// `crypto ipsec ikev2 ipsec-proposal P1` lines.
    pub esp_encryption: String,
    pub esp_integrity: String,
    /// `crypto map MAP 10 set pfs groupN` when `Some(N)`.
    pub pfs_group: Option<u16>,
    pub child_lifetime_seconds: u64,
    pub child_lifetime_kilobytes: Option<u64>,
    /// `crypto map MAP 10 set udp-encapsulation force` (holdfast extension).
    pub force_udp_encap: bool,
    /// `crypto map MAP 10 set connection-type ...`.
    pub connection_type: Option<String>,
    pub psk: String,
    /// Extra lines appended verbatim (e.g. liveness settings in the tunnel-group).
    pub extra: Vec<String>,
}

impl HoldfastParams {
    /// Side `a` or `b` of the lab topology with the given suite and ASA-default lifetimes.
    pub fn side(side: char, suite: Suite) -> HoldfastParams {
        use crate::topo::*;
        let (oi, ii, oa, ia, peer, ln, rn) = if side == 'a' {
            ("wan-a", "lan-a", GW_A_WAN_IP, GW_A_LAN_IP, GW_B_WAN_IP, "10.1.0.0", "10.2.0.0")
        } else {
            ("wan-b", "lan-b", GW_B_WAN_IP, GW_B_LAN_IP, GW_A_WAN_IP, "10.2.0.0", "10.1.0.0")
        };
        let (ie, ig, grp, ee, eg) = match suite {
            Suite::GcmX25519 => ("aes-gcm-256", "null", "31", "aes-gcm-256", "null"),
            Suite::CbcSha256Modp2048 => ("aes-256", "sha256", "14", "aes-256", "sha-256"),
        };
        HoldfastParams {
            outside_if: oi.into(),
            inside_if: ii.into(),
            outside_addr: oa.into(),
            inside_addr: ia.into(),
            peer_addr: peer.into(),
            local_net: (ln.into(), "255.255.255.0".into()),
            remote_net: (rn.into(), "255.255.255.0".into()),
            ike_encryption: ie.into(),
            ike_integrity: ig.into(),
            ike_group: grp.into(),
            ike_prf: "sha256".into(),
            ike_lifetime_seconds: 86400,
            esp_encryption: ee.into(),
            esp_integrity: eg.into(),
            pfs_group: None,
            child_lifetime_seconds: 28800,
            child_lifetime_kilobytes: None,
            force_udp_encap: false,
            connection_type: None,
            psk: LAB_PSK.into(),
            extra: Vec::new(),
        }
    }

    /// The configuration file, in the ASA syntax of issue 2.
    pub fn config_text(&self) -> String {
        let mut c = String::new();
        let mut l = |s: String| {
            c.push_str(&s);
            c.push('\n');
        };
        l(format!("hostname lab-{}", self.outside_if));
        l(format!("interface {}", self.outside_if));
        l(" nameif outside".into());
        l(format!(" ip address {} 255.255.255.0", self.outside_addr));
        l(format!("interface {}", self.inside_if));
        l(" nameif inside".into());
        l(format!(" ip address {} 255.255.255.0", self.inside_addr));
        l(format!(
            "access-list L2L extended permit ip {} {} {} {}",
            self.local_net.0, self.local_net.1, self.remote_net.0, self.remote_net.1
        ));
        l("crypto ikev2 policy 10".into());
        l(format!(" encryption {}", self.ike_encryption));
        l(format!(" integrity {}", self.ike_integrity));
        l(format!(" group {}", self.ike_group));
        l(format!(" prf {}", self.ike_prf));
        l(format!(" lifetime seconds {}", self.ike_lifetime_seconds));
        l("crypto ikev2 enable outside".into());
        l("crypto ipsec ikev2 ipsec-proposal P1".into());
        l(format!(" protocol esp encryption {}", self.esp_encryption));
        l(format!(" protocol esp integrity {}", self.esp_integrity));
        l("crypto map MAP 10 match address L2L".into());
        l(format!("crypto map MAP 10 set peer {}", self.peer_addr));
        l("crypto map MAP 10 set ikev2 ipsec-proposal P1".into());
        if let Some(g) = self.pfs_group {
            l(format!("crypto map MAP 10 set pfs group{g}"));
        }
        match self.child_lifetime_kilobytes {
            Some(kb) => l(format!(
                "crypto map MAP 10 set security-association lifetime seconds {} kilobytes {kb}",
                self.child_lifetime_seconds
            )),
            None => l(format!("crypto map MAP 10 set security-association lifetime seconds {}", self.child_lifetime_seconds)),
        }
        if self.force_udp_encap {
            l("crypto map MAP 10 set udp-encapsulation force".into());
        }
        if let Some(ct) = &self.connection_type {
            l(format!("crypto map MAP 10 set connection-type {ct}"));
        }
        l("crypto map MAP interface outside".into());
        l(format!("tunnel-group {} type ipsec-l2l", self.peer_addr));
        l(format!("tunnel-group {} ipsec-attributes", self.peer_addr));
        l(format!(" ikev2 remote-authentication pre-shared-key {}", self.psk));
        l(format!(" ikev2 local-authentication pre-shared-key {}", self.psk));
        for e in &self.extra {
            l(e.clone());
        }
        c
    }
}

/// A running `holdfast run`. Dropping it sends SIGTERM (so the daemon removes its TUN routes),
/// then SIGKILL after a grace period, by PID.
#[derive(Debug)]
pub struct Holdfast {
    pub name: String,
    pub ns: String,
    pub config: PathBuf,
    pub control: PathBuf,
    pub bin: PathBuf,
    /// `--state-dir` (the daemon snapshots its connection table there and restores it after a
    /// restart); `None` runs without one.
    pub state_dir: Option<PathBuf>,
    proc: Option<Proc>,
    log: PathBuf,
}

impl Holdfast {
    /// Writes `<run dir>/<name>.conf`, validates it with `holdfast check`, starts the daemon in
    /// `ns` and waits until its control socket answers `show running-config`.
    pub fn start(topo: &Topology, ns: &str, name: &str, params: &HoldfastParams) -> Result<Holdfast> {
        Self::start_with_state(topo, ns, name, params, None)
    }

    /// Like [`Self::start`], with `holdfast run --state-dir DIR` (created if missing) so that a
    /// [`Self::restart`] restores the connection table.
    pub fn start_with_state(
        topo: &Topology,
        ns: &str,
        name: &str,
        params: &HoldfastParams,
        state_dir: Option<&std::path::Path>,
    ) -> Result<Holdfast> {
        if let Some(d) = state_dir {
            std::fs::create_dir_all(d).map_err(io_err(format!("creating state dir {}", d.display())))?;
        }
        let bin = crate::holdfast_bin();
        if !bin.exists() {
            return Err(LabError::Check(format!("{} does not exist (run `cargo build --release`)", bin.display())));
        }
        let config = topo.path(&format!("{name}.conf"));
        std::fs::write(&config, params.config_text()).map_err(io_err("writing holdfast config"))?;
        let mut h = Holdfast {
            name: name.into(),
            ns: ns.into(),
            control: topo.path(&format!("{name}.sock")),
            log: topo.path(&format!("{name}.log")),
            config,
            bin,
            state_dir: state_dir.map(|d| d.to_path_buf()),
            proc: None,
        };
        let check = run(
            Command::new(&h.bin).args(["check", "--config"]).arg(&h.config),
            Duration::from_secs(20),
        )?;
        if !check.success() {
            return Err(LabError::Check(format!(
                "holdfast check rejected the lab config {}:\n{}{}",
                h.config.display(),
                check.stdout,
                check.stderr
            )));
        }
        h.launch()?;
        Ok(h)
    }

    fn launch(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(&self.control);
        let bin = self.bin.to_string_lossy().into_owned();
        let cfg = self.config.to_string_lossy().into_owned();
        let sock = self.control.to_string_lossy().into_owned();
        // Without a state dir of its own the daemon would use the machine-wide default
        // (/var/lib/holdfast) and restore whatever an earlier test or run left there; a
        // fresh, empty directory per launch keeps "no state" meaning no state.
        let state_dir = match &self.state_dir {
            Some(d) => d.clone(),
            None => {
                let d = self.config.with_file_name(format!("{}-nostate", self.name));
                let _ = std::fs::remove_dir_all(&d);
                std::fs::create_dir_all(&d).map_err(io_err(format!("creating state dir {}", d.display())))?;
                d
            }
        };
        let state = state_dir.to_string_lossy().into_owned();
        let argv = vec![bin.as_str(), "run", "--config", &cfg, "--control", &sock, "--state-dir", state.as_str()];
        let mut cmd = in_ns(&self.ns, &argv);
        cmd.env("RUST_BACKTRACE", "1");
        let mut p = Proc::spawn(&self.name, cmd, &self.log)?;
        p.grace = Duration::from_secs(5);
        self.proc = Some(p);
        let r = wait_for(&format!("{}: control socket answers", self.name), Duration::from_secs(15), Duration::from_millis(100), || {
            if let Some(code) = self.proc.as_mut().and_then(|p| p.exited()) {
                return Some(Err(code));
            }
            (self.control.exists() && self.show("running-config").is_ok()).then_some(Ok(()))
        })?;
        if let Err(code) = r {
            return Err(LabError::Check(format!(
                "{} exited with {code} at start:\n{}",
                self.name,
                crate::cmd::tail(&self.log, 40)
            )));
        }
        Ok(())
    }

    /// `holdfast show WORDS --control SOCK` (e.g. `show("crypto ipsec sa")`).
    pub fn show(&self, what: &str) -> Result<String> {
        self.ctl("show", what)
    }

    /// `holdfast clear WORDS --control SOCK`.
    pub fn clear(&self, what: &str) -> Result<String> {
        self.ctl("clear", what)
    }

    fn ctl(&self, verb: &str, what: &str) -> Result<String> {
        let mut c = Command::new(&self.bin);
        c.arg(verb).args(what.split_whitespace()).arg("--control").arg(&self.control);
        Ok(crate::cmd::run_ok(&mut c, Duration::from_secs(10))?.stdout)
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(|p| p.pid())
    }

    /// IKE SAs from `show crypto ikev2 sa detail`: (local SPI, active seconds, lifetime seconds).
    pub fn ike_sas(&self) -> Result<Vec<IkeSaSeen>> {
        Ok(parse_ikev2_detail(&self.show("crypto ikev2 sa detail")?))
    }

    /// `Some(code)` if the daemon has exited.
    pub fn exited(&mut self) -> Option<i32> {
        self.proc.as_mut().and_then(|p| p.exited())
    }

    /// Simulates a crash: SIGKILL, no cleanup by the daemon.
    pub fn kill_hard(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill_hard();
        }
    }

    /// Starts the daemon again with the same configuration.
    pub fn restart(&mut self) -> Result<()> {
        self.kill_hard();
        self.launch()
    }

    /// Graceful stop (SIGTERM); returns the exit code if the daemon exited by itself.
    pub fn stop(&mut self) -> Option<i32> {
        self.proc.take().and_then(|mut p| p.stop())
    }

    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }
}

impl Drop for Holdfast {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for what in ["crypto ikev2 sa detail", "crypto ipsec sa"] {
                match self.show(what) {
                    Ok(s) => eprintln!("----- {} show {what} -----\n{s}", self.name),
                    Err(e) => eprintln!("----- {} show {what} failed: {e}", self.name),
                }
            }
        }
        self.stop();
    }
}

/// Whether the holdfast binary under test knows `run --state-dir` (from its `run --help`).
pub fn supports_state_dir() -> bool {
    run(Command::new(crate::holdfast_bin()).args(["run", "--help"]), Duration::from_secs(10))
        .map(|o| o.stdout.contains("--state-dir") || o.stderr.contains("--state-dir"))
        .unwrap_or(false)
}

/// One IKE SA as `show crypto ikev2 sa detail` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IkeSaSeen {
    pub local_spi: String,
    pub lifetime_secs: u64,
    pub active_secs: u64,
}

/// Reads the ASA layout: `Life/Active Time: L/A sec` precedes `Local spi: X  Remote spi: Y`
/// within one SA's block.
pub fn parse_ikev2_detail(text: &str) -> Vec<IkeSaSeen> {
    let mut out = Vec::new();
    let mut life = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Life/Active Time:") {
            let nums: Vec<u64> = rest.replace("sec", "").split('/').filter_map(|n| n.trim().parse().ok()).collect();
            if nums.len() == 2 {
                life = Some((nums[0], nums[1]));
            }
        } else if let Some(rest) = line.strip_prefix("Local spi:") {
            let spi = rest.split_whitespace().next().unwrap_or("").to_string();
            let (lifetime_secs, active_secs) = life.take().unwrap_or((0, 0));
            out.push(IkeSaSeen { local_spi: spi, lifetime_secs, active_secs });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ikev2_detail_parses() {
        let t = "IKEv2 SAs:\n\nSession-id:1, Status:UP-ACTIVE, IKE count:1, CHILD count:1\n\nTunnel-id Local Remote Status Role\n  1 192.0.2.1/500 192.0.2.2/500 READY INITIATOR\n      Encr: AES-GCM, keysize: 256, Hash: N/A, DH Grp:31, Auth sign: PSK, Auth verify: PSK\n      Life/Active Time: 120/37 sec\n      Local spi: 1122334455667788       Remote spi: 99AABBCCDDEEFF00\n";
        let v = parse_ikev2_detail(t);
        assert_eq!(v, vec![IkeSaSeen { local_spi: "1122334455667788".into(), lifetime_secs: 120, active_secs: 37 }]);
    }

    #[test]
    fn config_text_has_the_issue_2_shape() {
        let mut p = HoldfastParams::side('a', Suite::GcmX25519);
        p.force_udp_encap = true;
        p.pfs_group = Some(19);
        p.child_lifetime_kilobytes = Some(50_000);
        let t = p.config_text();
        assert!(t.contains("interface wan-a\n nameif outside\n ip address 192.0.2.1 255.255.255.0\n"));
        assert!(t.contains("access-list L2L extended permit ip 10.1.0.0 255.255.255.0 10.2.0.0 255.255.255.0\n"));
        assert!(t.contains("crypto map MAP 10 set peer 192.0.2.2\n"));
        assert!(t.contains("crypto map MAP 10 set pfs group19\n"));
        assert!(t.contains("lifetime seconds 28800 kilobytes 50000\n"));
        assert!(t.contains("crypto map MAP 10 set udp-encapsulation force\n"));
        assert!(t.contains("tunnel-group 192.0.2.2 ipsec-attributes\n ikev2 remote-authentication pre-shared-key "));
        let b = HoldfastParams::side('b', Suite::CbcSha256Modp2048).config_text();
        assert!(b.contains("access-list L2L extended permit ip 10.2.0.0 255.255.255.0 10.1.0.0 255.255.255.0\n"));
        assert!(b.contains(" group 14\n"));
        assert!(b.contains(" protocol esp integrity sha-256\n"));
        assert!(!b.contains("udp-encapsulation"));
    }
}
