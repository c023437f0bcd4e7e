//! Scaffolding shared by the network-namespace tests of the `holdfast` binary (daemon_netns,
//! flows_netns, json_netns, ra_netns, shell_netns, cli_systemd): shell helpers, the one-shot
//! client, and [`Netns`], the guard that owns a test's namespaces, run directory and processes
//! and starts the gateways in them.
//!
//! Each test file is its own crate and uses a different part of this module.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_holdfast");

/// The repository's `examples/` (gw-a.cfg, gw-b.cfg).
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Namespaces, nftables and the TUN need root; the tests skip themselves otherwise.
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// True, with a note on stderr, when the test has to skip itself because it is not root.
pub fn skip_without_root() -> bool {
    if is_root() {
        return false;
    }
    eprintln!("skipped: needs root for network namespaces");
    true
}

/// Runs `cmd` with `sh -c`; panics (naming it) when it fails.
pub fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(st.success(), "command failed: {cmd}");
}

/// Runs `cmd` with `sh -c`: (success, stdout, stderr).
pub fn sh_out(cmd: &str) -> (bool, String, String) {
    let o = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// `holdfast VERB WORDS... --control SOCK` (the one-shot client): (success, stdout).
pub fn cli(sock: &Path, line: &str) -> (bool, String) {
    let mut args: Vec<&str> = line.split_whitespace().collect();
    let verb = if args.is_empty() { "" } else { args.remove(0) };
    let o = Command::new(BIN).arg(verb).args(&args).arg("--control").arg(sock).output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Polls `f` every 100 ms until it is true (returns true) or `limit` has passed (false).
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = gateway::clock::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Waits (up to 5 s) for the daemon on `sock` to answer `show version`; panics with its log.
pub fn wait_control(sock: &Path, log: &Path) {
    for _ in 0..100 {
        if cli(sock, "show version").0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("daemon on {} did not come up: {}", sock.display(), std::fs::read_to_string(log).unwrap_or_default());
}

/// True when the daemon on `sock` shows an inbound ESP SA (`show crypto ipsec sa`).
pub fn ipsec_sa_up(sock: &Path) -> bool {
    cli(sock, "show crypto ipsec sa").1.contains("inbound esp sas")
}

/// Runs `f` on a thread inside network namespace `ns` (setns affects only that thread).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns file");
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd moves only the calling thread into it.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

/// Gives namespace `ns` gw-a's interfaces from examples/gw-a.cfg (wan-a 192.0.2.1/24, lan-a
/// 10.1.0.1/24) as veth pairs with nobody behind them.
pub fn gw_a_alone(ns: &str) {
    sh(&format!(
        "ip -n {ns} link add wan-a type veth peer name wan-x && ip -n {ns} addr add 192.0.2.1/24 dev wan-a && \
         ip -n {ns} link set wan-a up && ip -n {ns} link set wan-x up && \
         ip -n {ns} link add lan-a type veth peer name lan-x && ip -n {ns} addr add 10.1.0.1/24 dev lan-a && \
         ip -n {ns} link set lan-a up && ip -n {ns} link set lan-x up"
    ));
}

/// Wires host-a -- gw-a == gw-b -- host-b with the addresses of examples/gw-a.cfg and gw-b.cfg
/// (wan 192.0.2.1/.2, LANs 10.1.0.0/24 and 10.2.0.0/24, hosts .10 routed via their gateway).
pub fn wire_two_gateways(ha: &str, a: &str, b: &str, hb: &str) {
    sh(&format!(
        "ip link add wan-a netns {a} type veth peer name wan-b netns {b} && \
         ip link add lan-a netns {a} type veth peer name eth0 netns {ha} && \
         ip link add lan-b netns {b} type veth peer name eth0 netns {hb} && \
         ip -n {a} addr add 192.0.2.1/24 dev wan-a && ip -n {a} link set wan-a up && \
         ip -n {b} addr add 192.0.2.2/24 dev wan-b && ip -n {b} link set wan-b up && \
         ip -n {a} addr add 10.1.0.1/24 dev lan-a && ip -n {a} link set lan-a up && \
         ip -n {b} addr add 10.2.0.1/24 dev lan-b && ip -n {b} link set lan-b up && \
         ip -n {ha} addr add 10.1.0.10/24 dev eth0 && ip -n {ha} link set eth0 up && ip -n {ha} route add default via 10.1.0.1 && \
         ip -n {hb} addr add 10.2.0.10/24 dev eth0 && ip -n {hb} link set eth0 up && ip -n {hb} route add default via 10.2.0.1"
    ));
}

/// The namespaces, run directory and processes of one test. Dropping it stops every process it
/// started (SIGTERM by PID, SIGKILL after `term_grace`), deletes the namespaces and removes the
/// directory (kept when `HF_KEEP` is set, for a post-mortem).
pub struct Netns {
    /// `<tag>-<pid>[-...]`: namespaces are `<prefix>-<role>`.
    pub prefix: String,
    pub dir: PathBuf,
    pub namespaces: Vec<String>,
    pub procs: Vec<Child>,
    /// How long a process gets to exit on SIGTERM at drop; zero kills at once.
    pub term_grace: Duration,
}

impl Netns {
    /// A guard with namespace/directory prefix `prefix` (the directory is created now).
    pub fn new(prefix: String) -> Netns {
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).unwrap();
        Netns { prefix, dir, namespaces: Vec::new(), procs: Vec::new(), term_grace: Duration::from_secs(3) }
    }

    /// A guard named `<tag>-<pid>-<n>` (`n` counts this test binary's guards: its tests run at
    /// once) whose processes are killed outright at drop.
    pub fn numbered(tag: &str) -> Netns {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let mut net = Netns::new(format!("{tag}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        net.term_grace = Duration::ZERO;
        net
    }

    /// `<prefix>-<role>`, not created.
    pub fn name(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// Creates namespace `<prefix>-<role>` with loopback up.
    pub fn ns(&mut self, role: &str) -> String {
        let n = self.name(role);
        sh(&format!("ip netns add {n} && ip -n {n} link set lo up"));
        self.namespaces.push(n.clone());
        n
    }

    /// Namespace `<prefix>-<role>` with gw-a's interfaces and nobody behind them
    /// ([`gw_a_alone`]).
    pub fn gateway_alone(&mut self, role: &str) -> String {
        let ns = self.ns(role);
        gw_a_alone(&ns);
        ns
    }

    /// Namespaces ha, a, b, hb wired as host-a -- gw-a == gw-b -- host-b
    /// ([`wire_two_gateways`]); their names in that order.
    pub fn two_gateways(&mut self) -> (String, String, String, String) {
        let (ha, a, b, hb) = (self.ns("ha"), self.ns("a"), self.ns("b"), self.ns("hb"));
        wire_two_gateways(&ha, &a, &b, &hb);
        (ha, a, b, hb)
    }

    /// examples/gw-a.cfg and gw-b.cfg, each with `extra(side)` appended ("a", "b"), written to
    /// the run directory as gw-a.cfg and gw-b.cfg; their paths in that order.
    pub fn example_configs(&self, extra: impl Fn(&str) -> String) -> Vec<PathBuf> {
        ["a", "b"]
            .into_iter()
            .map(|side| {
                let mut text = std::fs::read_to_string(examples().join(format!("gw-{side}.cfg"))).unwrap();
                text.push_str(&extra(side));
                let p = self.dir.join(format!("gw-{side}.cfg"));
                std::fs::write(&p, text).unwrap();
                p
            })
            .collect()
    }

    /// Starts `holdfast run --config CONFIG --control SOCK --state-dir STATE` in `ns` with its
    /// stderr to `log` (each daemon its own state, never the system's /var/lib/holdfast).
    /// Returns its index in `procs`; does not wait for it.
    pub fn spawn_daemon(&mut self, ns: &str, config: &Path, sock: &Path, state: &Path, log: File) -> usize {
        self.spawn_daemon_args(ns, config, sock, state, log, &[])
    }

    /// [`Netns::spawn_daemon`] with `args` after the others.
    pub fn spawn_daemon_args(&mut self, ns: &str, config: &Path, sock: &Path, state: &Path, log: File, args: &[&str]) -> usize {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, BIN, "run", "--config"])
            .arg(config)
            .arg("--control")
            .arg(sock)
            .arg("--state-dir")
            .arg(state)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.push(child)
    }

    /// Starts `holdfast run` in `ns` (log `<ns>.log`, state directory `<ns>.state` in the run
    /// directory) and waits for its control socket; returns its index in `procs`.
    pub fn start_daemon(&mut self, ns: &str, config: &Path, sock: &Path) -> usize {
        let log = self.dir.join(format!("{ns}.log"));
        let state = self.dir.join(format!("{ns}.state"));
        let idx = self.spawn_daemon(ns, config, sock, &state, File::create(&log).unwrap());
        wait_control(sock, &log);
        idx
    }

    /// Waits (at most `limit`) for process `idx` to exit: its status, None when it did not.
    pub fn wait_exit(&mut self, idx: usize, limit: Duration) -> Option<ExitStatus> {
        let c = &mut self.procs[idx];
        let t0 = gateway::clock::now();
        while t0.elapsed() < limit {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Takes `child` into the guard; returns its index in `procs`.
    pub fn push(&mut self, child: Child) -> usize {
        self.procs.push(child);
        self.procs.len() - 1
    }

    /// SIGTERM to process `idx` and wait (5 s); returns its exit status success.
    pub fn stop(&mut self, idx: usize) -> bool {
        let c = &mut self.procs[idx];
        sh(&format!("kill -TERM {}", c.id()));
        for _ in 0..100 {
            if let Ok(Some(st)) = c.try_wait() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("process {} did not exit on SIGTERM", c.id());
    }

    /// SIGKILL to process `idx` and reap it: no chance to clean up.
    pub fn kill_hard(&mut self, idx: usize) {
        let c = &mut self.procs[idx];
        sh(&format!("kill -KILL {}", c.id()));
        let _ = c.wait();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.procs {
            if let Ok(None) = c.try_wait() {
                if !self.term_grace.is_zero() {
                    let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
                    let t0 = gateway::clock::now();
                    while t0.elapsed() < self.term_grace {
                        if let Ok(Some(_)) = c.try_wait() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for n in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        if std::env::var_os("HF_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
