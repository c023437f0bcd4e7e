//! A strongSwan 5.9.8 peer in a gateway namespace, started exactly as described in
//! shared/reference/ipsec-peer.md: its own run directory, strongswan.conf and swanctl.conf, charon
//! under `unshare -m` with the directory's `run/` bind-mounted over /run (so several charons can
//! coexist), userspace ESP through `kernel-libipsec`, control over a private vici socket.

use crate::cmd::{in_ns, run, run_ok, wait_for, Proc};
use crate::{io_err, LabError, Result, Topology};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Everything that varies between lab scenarios; the rest is the reference recipe.
#[derive(Debug, Clone)]
pub struct SwanParams {
    pub local_addr: String,
    pub remote_addr: String,
    pub local_ts: String,
    pub remote_ts: String,
    /// IKE proposal, e.g. `aes256gcm16-prfsha256-x25519`.
    pub proposals: String,
    /// ESP proposal, e.g. `aes256gcm16` or `aes256-sha256`.
    pub esp_proposals: String,
    pub psk: String,
    /// `true`: `start_action = start` (initiates at load, restarts on DPD/close, as in the
    /// recipe). `false`: a pure responder that never initiates on its own.
    pub initiate: bool,
    /// IKE SA `rekey_time` (strongSwan default 4 h).
    pub ike_rekey: Option<Duration>,
    /// CHILD_SA `rekey_time` (strongSwan default 1 h).
    pub child_rekey: Option<Duration>,
    /// CHILD_SA `rekey_bytes`.
    pub child_rekey_bytes: Option<u64>,
    pub dpd_delay: Duration,
}

impl SwanParams {
    /// The side-`a` or side-`b` gateway of the lab topology, with the recipe's defaults.
    pub fn side(side: char, proposals: &str, esp_proposals: &str, initiate: bool) -> SwanParams {
        let (l, r, lts, rts) = if side == 'a' {
            (crate::topo::GW_A_WAN_IP, crate::topo::GW_B_WAN_IP, crate::topo::NET_A, crate::topo::NET_B)
        } else {
            (crate::topo::GW_B_WAN_IP, crate::topo::GW_A_WAN_IP, crate::topo::NET_B, crate::topo::NET_A)
        };
        SwanParams {
            local_addr: l.into(),
            remote_addr: r.into(),
            local_ts: lts.into(),
            remote_ts: rts.into(),
            proposals: proposals.into(),
            esp_proposals: esp_proposals.into(),
            psk: crate::holdfast::LAB_PSK.into(),
            initiate,
            ike_rekey: None,
            child_rekey: None,
            child_rekey_bytes: None,
            dpd_delay: Duration::from_secs(5),
        }
    }

    pub fn strongswan_conf(&self, dir: &std::path::Path) -> String {
        let d = dir.display();
        format!(
            "charon {{
  load_modular = no
  load = random nonce openssl aes gcm sha1 sha2 hmac kdf pem pkcs1 x509 curve25519 kernel-libipsec kernel-netlink socket-default vici updown
  install_routes = yes
  filelog {{
    lab {{
      path = {d}/charon.log
      time_format = %H:%M:%S
      ike_name = yes
      flush_line = yes
      default = 1
      ike = 2
    }}
  }}
  plugins {{
    vici {{
      socket = unix://{d}/charon.vici
    }}
  }}
}}
"
        )
    }

    pub fn swanctl_conf(&self) -> String {
        let mut ike_extra = String::new();
        if let Some(t) = self.ike_rekey {
            ike_extra.push_str(&format!("    rekey_time = {}s\n", t.as_secs().max(1)));
        }
        let mut child_extra = String::new();
        if let Some(t) = self.child_rekey {
            child_extra.push_str(&format!("        rekey_time = {}s\n", t.as_secs().max(1)));
        }
        if let Some(b) = self.child_rekey_bytes {
            child_extra.push_str(&format!("        rekey_bytes = {b}\n"));
        }
        let (start, dpd, close) = if self.initiate { ("start", "restart", "start") } else { ("none", "clear", "none") };
        format!(
            "connections {{
  l2l {{
    version = 2
    local_addrs = {la}
    remote_addrs = {ra}
    proposals = {prop}
    dpd_delay = {dpd_delay}s
{ike_extra}    local {{
      auth = psk
      id = {la}
    }}
    remote {{
      auth = psk
      id = {ra}
    }}
    children {{
      net-net {{
        local_ts = {lts}
        remote_ts = {rts}
        esp_proposals = {esp}
        start_action = {start}
        dpd_action = {dpd}
        close_action = {close}
{child_extra}      }}
    }}
  }}
}}
secrets {{
  ike-l2l {{
    id-a = {la}
    id-b = {ra}
    secret = \"{psk}\"
  }}
}}
",
            la = self.local_addr,
            ra = self.remote_addr,
            prop = self.proposals,
            dpd_delay = self.dpd_delay.as_secs(),
            lts = self.local_ts,
            rts = self.remote_ts,
            esp = self.esp_proposals,
            psk = self.psk,
        )
    }
}

/// A running charon. Dropping it stops charon (SIGTERM, then SIGKILL) by PID.
#[derive(Debug)]
pub struct StrongSwan {
    pub name: String,
    pub ns: String,
    pub dir: PathBuf,
    pub params: SwanParams,
    proc: Option<Proc>,
}

impl StrongSwan {
    /// Writes the configuration into `<run dir>/<name>/`, starts charon in `ns`, waits for the
    /// vici socket and loads the configuration.
    pub fn start(topo: &Topology, ns: &str, name: &str, params: SwanParams) -> Result<StrongSwan> {
        let dir = topo.path(name);
        std::fs::create_dir_all(dir.join("run")).map_err(io_err("creating charon run dir"))?;
        std::fs::write(dir.join("strongswan.conf"), params.strongswan_conf(&dir)).map_err(io_err("writing strongswan.conf"))?;
        std::fs::write(dir.join("swanctl.conf"), params.swanctl_conf()).map_err(io_err("writing swanctl.conf"))?;
        let mut s = StrongSwan { name: name.into(), ns: ns.into(), dir, params, proc: None };
        s.launch()?;
        Ok(s)
    }

    fn launch(&mut self) -> Result<()> {
        let d = self.dir.display().to_string();
        let _ = std::fs::remove_file(self.dir.join("charon.vici"));
        // Every link of this chain execs, so the PID we hold is charon's own.
        let script = format!("mount --bind {d}/run /run && STRONGSWAN_CONF={d}/strongswan.conf exec /usr/lib/ipsec/charon");
        let cmd = in_ns(&self.ns, &["unshare", "-m", "--propagation", "private", "sh", "-c", &script]);
        // The top-level run dir holds `<name>.log` for charon's stdout/stderr (dumped on failure);
        // charon's own file log is <dir>/charon.log.
        let log = self.dir.parent().unwrap_or(&self.dir).join(format!("{}-stdout.log", self.name));
        self.proc = Some(Proc::spawn(&self.name, cmd, &log)?);
        let vici = self.dir.join("charon.vici");
        wait_for(&format!("{}: charon vici socket", self.name), Duration::from_secs(15), Duration::from_millis(50), || {
            vici.exists().then_some(())
        })?;
        // The socket file exists slightly before charon accepts on it.
        wait_for(&format!("{}: swanctl --stats", self.name), Duration::from_secs(10), Duration::from_millis(100), || {
            self.swanctl(&["--stats"]).ok().map(|_| ())
        })?;
        let conf = self.dir.join("swanctl.conf").display().to_string();
        self.swanctl(&["--load-all", "--file", &conf])?;
        Ok(())
    }

    /// Runs `swanctl ARGS --uri <our vici>`; requires success.
    pub fn swanctl(&self, args: &[&str]) -> Result<String> {
        let uri = format!("unix://{}/charon.vici", self.dir.display());
        let mut c = Command::new("swanctl");
        c.args(args).args(["--uri", &uri]);
        Ok(run_ok(&mut c, Duration::from_secs(15))?.stdout)
    }

    /// `swanctl --list-sas` output.
    pub fn list_sas(&self) -> Result<String> {
        self.swanctl(&["--list-sas"])
    }

    /// True once an IKE SA is ESTABLISHED and a CHILD_SA INSTALLED.
    pub fn child_installed(&self) -> bool {
        self.list_sas().map(|s| s.contains("ESTABLISHED") && s.contains("INSTALLED")).unwrap_or(false)
    }

    /// Waits until [`Self::child_installed`].
    pub fn wait_child_up(&self, timeout: Duration) -> Result<()> {
        wait_for(&format!("{}: CHILD_SA installed", self.name), timeout, Duration::from_millis(200), || {
            self.child_installed().then_some(())
        })
        .map_err(|e| LabError::Check(format!("{e}\nlist-sas:\n{}", self.list_sas().unwrap_or_default())))
    }

    /// Whether the local side was the IKE initiator of the established IKE SA (`--raw` output
    /// carries `initiator=yes` only for SAs we initiated).
    pub fn is_ike_initiator(&self) -> Result<bool> {
        let raw = self.swanctl(&["--list-sas", "--raw"])?;
        Ok(raw.contains("initiator=yes"))
    }

    /// Unique ids (`l2l: #N, ...`) of the IKE SAs in `--list-sas`; a rekey makes a new, higher id.
    pub fn ike_sa_ids(&self) -> Result<Vec<u32>> {
        let s = self.list_sas()?;
        Ok(s.lines()
            .filter_map(|l| l.trim().split_once(": #").and_then(|(_, r)| r.split(',').next()).and_then(|n| n.parse().ok()))
            .collect())
    }

    /// Count of log lines in charon.log containing `needle` (e.g. "rekeyed", "CHILD_SA net-net").
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(self.dir.join("charon.log")).map(|s| s.lines().filter(|l| l.contains(needle)).count()).unwrap_or(0)
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(|p| p.pid())
    }

    /// Simulates a crash: SIGKILL, no cleanup.
    pub fn kill_hard(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill_hard();
        }
    }

    /// Starts charon again with the same configuration (after [`Self::kill_hard`]).
    pub fn restart(&mut self) -> Result<()> {
        self.kill_hard();
        // A killed charon leaves its TUN device behind only while the fd is open; it is gone now.
        let _ = run(&mut in_ns(&self.ns, &["ip", "link", "del", "ipsec0"]), Duration::from_secs(5));
        self.launch()
    }

    /// Path of charon's own log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("charon.log")
    }
}

impl Drop for StrongSwan {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- {} charon.log (tail) -----\n{}", self.name, crate::cmd::tail(&self.log_path(), 60));
            if let Ok(s) = self.list_sas() {
                eprintln!("----- {} list-sas -----\n{s}", self.name);
            }
        }
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }
}
