//! Remote-access lab: the real openconnect 9.01 client against holdfast's remote-access
//! service (`holdfast-ra`), in three namespaces:
//!
//! ```text
//!  client eth0 203.0.113.10/24 ── out 203.0.113.1/24 [gw] in 10.1.0.1/24 ── eth0 10.1.0.10/24 server
//!   openconnect (tun: pool address)        holdfast-ra (hfra0)                lab-xfer, ping target
//! ```
//!
//! The client-gateway link stands for the internet (a documentation range); the server sits
//! behind the gateway on the split-include network 10.1.0.0/24. openconnect runs with this
//! module's own `-s` script (never the packaged vpnc-script, which rewrites the host's
//! resolv.conf): it configures the tun and the split-include routes inside the client
//! namespace and logs what it was told. Namespaces follow [`crate::topo`]'s naming, so an
//! aborted run's leftovers are removed by the next run's stale cleanup.

use crate::cmd::{in_ns, run, sh, tail, wait_for, Proc};
use crate::topo::PREFIX;
use crate::{io_err, LabError, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const CLIENT_IP: &str = "203.0.113.10";
pub const GW_OUTSIDE_IP: &str = "203.0.113.1";
pub const GW_INSIDE_IP: &str = "10.1.0.1";
pub const SERVER_IP: &str = "10.1.0.10";
pub const SPLIT_NET: &str = crate::raconfig::SPLIT;
pub const POOL: &str = "10.99.0.100-10.99.0.199/24";
pub const FIRST_POOL_IP: &str = "10.99.0.100";

const T: Duration = Duration::from_secs(10);
static SEQ: AtomicU32 = AtomicU32::new(1000);

/// Path of `holdfast-ra`: `$HOLDFAST_RA_BIN`, else `$CARGO_TARGET_DIR/{release,debug}/holdfast-ra`,
/// else `<workspace>/target/{release,debug}/holdfast-ra` (the first that exists).
pub fn ra_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HOLDFAST_RA_BIN") {
        return p.into();
    }
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let release = base.join("release/holdfast-ra");
    if release.exists() {
        return release;
    }
    base.join("debug/holdfast-ra")
}

/// The three namespaces and a run directory. Dropping it kills what runs in them (by PID),
/// deletes them and, when the test passed, the run directory.
#[derive(Debug)]
pub struct RaLab {
    pub id: String,
    pub client: String,
    pub gw: String,
    pub server: String,
    pub dir: PathBuf,
    created: Vec<String>,
}

impl RaLab {
    pub fn new() -> Result<RaLab> {
        if !crate::is_root() {
            return Err(LabError::Check("the lab needs root (network namespaces, TUN)".into()));
        }
        let _ = crate::topo::cleanup_stale();
        let id = format!("{PREFIX}{}n{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
        let dir = std::env::temp_dir().join(&id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let mut lab = RaLab {
            client: format!("{id}-cl"),
            gw: format!("{id}-gw"),
            server: format!("{id}-sv"),
            id,
            dir,
            created: Vec::new(),
        };
        lab.build()?;
        eprintln!("lab: remote-access topology {} up (run dir {})", lab.id, lab.dir.display());
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        for ns in [self.client.clone(), self.gw.clone(), self.server.clone()] {
            sh(None, &["ip", "netns", "add", &ns], T)?;
            self.created.push(ns.clone());
            sh(Some(&ns), &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"], T)?;
            sh(Some(&ns), &["ip", "link", "set", "lo", "up"], T)?;
        }
        let (c, g, s) = (&self.client, &self.gw, &self.server);
        sh(Some(c), &["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "out", "netns", g], T)?;
        sh(Some(s), &["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "in", "netns", g], T)?;
        for (ns, ifname, cidr) in [
            (c, "eth0", format!("{CLIENT_IP}/24")),
            (g, "out", format!("{GW_OUTSIDE_IP}/24")),
            (g, "in", format!("{GW_INSIDE_IP}/24")),
            (s, "eth0", format!("{SERVER_IP}/24")),
        ] {
            sh(Some(ns), &["ip", "addr", "add", &cidr, "dev", ifname], T)?;
            sh(Some(ns), &["ip", "link", "set", ifname, "up"], T)?;
        }
        sh(Some(s), &["ip", "route", "add", "default", "via", GW_INSIDE_IP], T)?;
        Ok(())
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Drops UDP to and from port 443 at the gateway's outside interface (DTLS blocked by a
    /// firewall in the path; TLS on TCP is untouched).
    pub fn block_udp(&self) -> Result<()> {
        let rules = "table inet hfra_block {\n  chain input { type filter hook input priority -50; policy accept;\n    iifname \"out\" udp dport 443 counter drop\n  }\n  chain output { type filter hook output priority -50; policy accept;\n    oifname \"out\" udp sport 443 counter drop\n  }\n}\n";
        let f = self.path("block-udp.nft");
        std::fs::write(&f, rules).map_err(io_err("writing nft rules"))?;
        sh(Some(&self.gw), &["nft", "-f", &f.to_string_lossy()], T)?;
        Ok(())
    }

    pub fn unblock_udp(&self) -> Result<()> {
        sh(Some(&self.gw), &["nft", "delete", "table", "inet", "hfra_block"], T)?;
        Ok(())
    }

    /// Packets dropped by [`RaLab::block_udp`] so far.
    pub fn udp_blocked_packets(&self) -> u64 {
        let Ok(out) = sh(Some(&self.gw), &["nft", "list", "table", "inet", "hfra_block"], T) else { return 0 };
        out.stdout
            .lines()
            .filter_map(|l| l.split("packets ").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for RaLab {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            if let Ok(rd) = std::fs::read_dir(&self.dir) {
                let mut logs: Vec<PathBuf> =
                    rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "log")).collect();
                logs.sort();
                for l in logs {
                    eprintln!("----- last lines of {} -----\n{}", l.display(), tail(&l, 60));
                }
            }
        }
        for ns in self.created.iter().rev() {
            if let Ok(out) = run(std::process::Command::new("ip").args(["netns", "pids", ns]), T) {
                for pid in out.stdout.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                    if pid > 1 && pid != std::process::id() as i32 {
                        // SAFETY: kill(2) of a PID that `ip netns pids` just reported inside a
                        // namespace only this lab run created.
                        unsafe {
                            libc::kill(pid, libc::SIGKILL);
                        }
                    }
                }
            }
            let _ = sh(None, &["ip", "netns", "del", ns], T);
        }
        // LAB_KEEP=1 keeps the run directory (logs) of passing tests too.
        if !failed && std::env::var_os("LAB_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A server certificate made with the `openssl` tool, and openconnect's pin for it.
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `pin-sha256:<base64 of SHA-256 of the SubjectPublicKeyInfo>`.
    pub pin: String,
}

pub fn make_server_cert(dir: &Path) -> Result<ServerCert> {
    let cert = dir.join("server.pem");
    let key = dir.join("server.key");
    let (c, k) = (cert.to_string_lossy().into_owned(), key.to_string_lossy().into_owned());
    sh(
        None,
        &["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &k, "-out", &c, "-days", "2", "-subj", "/CN=vpn.example"],
        Duration::from_secs(60),
    )?;
    let spki = dir.join("server.spki");
    let s = spki.to_string_lossy().into_owned();
    sh(None, &["openssl", "pkey", "-in", &k, "-pubout", "-outform", "DER", "-out", &s], T)?;
    let der = std::fs::read(&spki).map_err(io_err("reading the public key"))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &der);
    Ok(ServerCert { cert, key, pin: format!("pin-sha256:{}", base64(digest.as_ref())) })
}

/// A client-certificate PKI made with the `openssl` tool: a CA the gateway trusts, a client
/// certificate it issued (CN `certuser`), and a look-alike (same CN) from an untrusted CA.
#[derive(Debug, Clone)]
pub struct ClientPki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
}

pub fn make_client_pki(dir: &Path) -> Result<ClientPki> {
    let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let t = Duration::from_secs(60);
    for ca in ["ca", "rogue-ca"] {
        sh(
            None,
            &["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &p(&format!("{ca}.key")), "-out",
              &p(&format!("{ca}.pem")), "-days", "2", "-subj", &format!("/CN=lab {ca}")],
            t,
        )?;
    }
    for (name, ca) in [("client", "ca"), ("rogue", "rogue-ca")] {
        sh(
            None,
            &["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &p(&format!("{name}.key")), "-out",
              &p(&format!("{name}.csr")), "-subj", "/CN=certuser"],
            t,
        )?;
        sh(
            None,
            &["openssl", "x509", "-req", "-in", &p(&format!("{name}.csr")), "-CA", &p(&format!("{ca}.pem")), "-CAkey",
              &p(&format!("{ca}.key")), "-CAcreateserial", "-out", &p(&format!("{name}.pem")), "-days", "2"],
            t,
        )?;
    }
    Ok(ClientPki {
        ca: dir.join("ca.pem"),
        cert: dir.join("client.pem"),
        key: dir.join("client.key"),
        rogue_cert: dir.join("rogue.pem"),
        rogue_key: dir.join("rogue.key"),
    })
}

/// RFC 4648 §4 base64 with padding.
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `holdfast-ra` running in the gateway namespace.
pub struct RaServer {
    pub proc: Proc,
}

impl RaServer {
    /// Starts the service on `GW_OUTSIDE_IP:443` with user `vpn`/`password`, the lab pool and
    /// split-include network, plus `extra` arguments; waits for its `ready` line.
    pub fn start(lab: &RaLab, cert: &ServerCert, password: &str, extra: &[&str]) -> Result<RaServer> {
        let bin = ra_bin();
        if !bin.exists() {
            return Err(LabError::Check(format!(
                "{} not found: build it first (cargo build --release -p holdfast-gateway --bin holdfast-ra) or set HOLDFAST_RA_BIN",
                bin.display()
            )));
        }
        let log = lab.path("holdfast-ra.log");
        let listen = format!("{GW_OUTSIDE_IP}:443");
        let user = format!("vpn:{password}");
        let (c, k) = (cert.cert.to_string_lossy().into_owned(), cert.key.to_string_lossy().into_owned());
        let b = bin.to_string_lossy().into_owned();
        let mut argv = vec![
            b.as_str(), "--listen", &listen, "--cert", &c, "--key", &k, "--tun", "hfra0", "--user", &user, "--pool", POOL,
            "--split", SPLIT_NET,
        ];
        argv.extend_from_slice(extra);
        let proc = Proc::spawn("holdfast-ra", in_ns(&lab.gw, &argv), &log)?;
        let mut s = RaServer { proc };
        wait_for("holdfast-ra ready", Duration::from_secs(20), Duration::from_millis(50), || {
            std::fs::read_to_string(&log).ok().filter(|t| t.contains("ready ")).map(|_| ())
        })
        .map_err(|e| LabError::Check(format!("{e}; log:\n{}", s.proc.log_tail(30))))?;
        if let Some(code) = s.proc.exited() {
            return Err(LabError::Check(format!("holdfast-ra exited with {code}: {}", s.proc.log_tail(30))));
        }
        Ok(s)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }
}

/// The script openconnect runs (`-s`): sets up the tun and the split-include routes in the
/// client namespace and logs every call as one line to `script.out`.
fn write_script(dir: &Path) -> Result<PathBuf> {
    let out = dir.join("script.out");
    let script = dir.join("oc-script.sh");
    let text = format!(
        r#"#!/bin/sh
# openconnect -s script for the holdfast lab (no resolv.conf changes).
echo "reason=$reason tundev=$TUNDEV ip4=$INTERNAL_IP4_ADDRESS mask=$INTERNAL_IP4_NETMASK mtu=$INTERNAL_IP4_MTU splits=${{CISCO_SPLIT_INC:-0}}" >> {out}
case "$reason" in
connect)
    ip link set dev "$TUNDEV" up mtu "$INTERNAL_IP4_MTU"
    ip addr add "$INTERNAL_IP4_ADDRESS/32" dev "$TUNDEV"
    i=0
    while [ "$i" -lt "${{CISCO_SPLIT_INC:-0}}" ]; do
        eval a=\$CISCO_SPLIT_INC_${{i}}_ADDR
        eval l=\$CISCO_SPLIT_INC_${{i}}_MASKLEN
        ip route replace "$a/$l" dev "$TUNDEV"
        echo "route $a/$l dev $TUNDEV" >> {out}
        i=$((i + 1))
    done
    ;;
esac
exit 0
"#,
        out = out.display()
    );
    std::fs::write(&script, text).map_err(io_err("writing the openconnect script"))?;
    sh(None, &["chmod", "755", &script.to_string_lossy()], T)?;
    Ok(script)
}

/// The real openconnect client in the client namespace.
pub struct OpenConnect {
    pub proc: Proc,
    pub script_out: PathBuf,
}

impl OpenConnect {
    /// `openconnect --non-inter --passwd-on-stdin -u USER --servercert PIN -s SCRIPT
    /// [extra...] https://GW/` with the password on stdin; its log is `openconnect<tag>.log`.
    pub fn start(lab: &RaLab, cert: &ServerCert, user: &str, password: &str, tag: &str, extra: &[&str]) -> Result<OpenConnect> {
        let script = write_script(&lab.dir)?;
        let pw = lab.path(&format!("password{tag}"));
        std::fs::write(&pw, format!("{password}\n")).map_err(io_err("writing the password file"))?;
        let mut cmdline = format!(
            "exec stdbuf -oL -eL openconnect --timestamp --non-inter --passwd-on-stdin -v -u {user} --servercert {} -s {} -i octun0",
            cert.pin,
            script.display()
        );
        for e in extra {
            cmdline.push(' ');
            cmdline.push_str(e);
        }
        cmdline.push_str(&format!(" https://{GW_OUTSIDE_IP}/ < {}", pw.display()));
        let log = lab.path(&format!("openconnect{tag}.log"));
        let proc = Proc::spawn("openconnect", in_ns(&lab.client, &["sh", "-c", &cmdline]), &log)?;
        Ok(OpenConnect { proc, script_out: lab.dir.join("script.out") })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }

    /// Waits until the script configured the tun (reason=connect); returns the address.
    pub fn wait_connected(&mut self, timeout: Duration) -> Result<String> {
        let out = self.script_out.clone();
        let r = wait_for("openconnect connected", timeout, Duration::from_millis(50), || {
            if self.proc.exited().is_some() {
                return Some(None);
            }
            let text = std::fs::read_to_string(&out).ok()?;
            let line = text.lines().find(|l| l.starts_with("reason=connect "))?;
            // The routes are written right after; give the script a moment to finish them.
            let ip = line.split_whitespace().find_map(|kv| kv.strip_prefix("ip4="))?.to_string();
            text.contains("route ").then_some(Some(ip))
        })?;
        r.ok_or_else(|| LabError::Check(format!("openconnect exited: {}", self.proc.log_tail(40))))
    }

    /// Waits until openconnect's log says the DTLS channel is up.
    pub fn wait_dtls(&self, timeout: Duration) -> Result<String> {
        let log = self.proc.log.clone();
        wait_for("openconnect DTLS up", timeout, Duration::from_millis(50), || {
            let text = std::fs::read_to_string(&log).ok()?;
            text.lines().find(|l| l.contains("Established DTLS connection")).map(str::to_string)
        })
    }
}

/// `ping -c count` from `ns`; returns the number of replies.
pub fn ping(ns: &str, dst: &str, count: u32, size: Option<u32>) -> Result<u32> {
    let c = count.to_string();
    let s = size.map(|s| s.to_string());
    let mut argv = vec!["ping", "-n", "-q", "-c", &c, "-i", "0.2", "-W", "2"];
    if let Some(s) = &s {
        argv.extend(["-s", s, "-M", "do"]);
    }
    argv.push(dst);
    let out = run(&mut in_ns(ns, &argv), Duration::from_secs(u64::from(count) + 10))?;
    Ok(out
        .stdout
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// Result of a `lab-xfer` transfer.
#[derive(Debug, Clone)]
pub struct Xfer {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub sha_sent: String,
    pub sha_received: String,
    pub secs: f64,
    pub mbit: f64,
    pub max_stall_ms: f64,
}

impl Xfer {
    pub fn intact(&self, expected: u64) -> bool {
        self.bytes_sent == expected && self.bytes_received == expected && !self.sha_sent.is_empty() && self.sha_sent == self.sha_received
    }
}

/// A background `lab-xfer` receiver, started before the sender so that a caller can act
/// (block UDP, signal the client) while the data flows.
pub struct XferRecv {
    proc: Proc,
}

impl XferRecv {
    /// Waits up to `timeout` for the receiver to finish; the bytes it received (0 when it
    /// failed or is still running).
    pub fn wait_bytes(&mut self, timeout: Duration) -> u64 {
        self.wait_result(timeout).map_or(0, |(b, _, _)| b)
    }

    /// Waits up to `timeout` for the receiver to finish: (bytes, sha256, max stall in ms).
    pub fn wait_result(&mut self, timeout: Duration) -> Option<(u64, String, f64)> {
        if self.proc.wait_exit(timeout) != Some(0) {
            return None;
        }
        let rl = std::fs::read_to_string(&self.proc.log).unwrap_or_default();
        let l = rl.lines().find(|l| l.starts_with("recv "))?;
        Some((field(l, "bytes")?, field(l, "sha256")?, field(l, "max_stall_ms").unwrap_or(0.0)))
    }
}

/// The `sha256=` of a `lab-xfer send` output.
pub fn sent_sha(stdout: &str) -> Option<String> {
    stdout.lines().find(|l| l.starts_with("sent ")).and_then(|l| field(l, "sha256"))
}

pub fn xfer_listen(lab: &RaLab, ns: &str, port: u16, idle: Duration) -> Result<XferRecv> {
    let bin = crate::xfer::xfer_bin().to_string_lossy().into_owned();
    let log = lab.path(&format!("xfer-recv-{port}.log"));
    let _ = std::fs::remove_file(&log);
    let listen = format!("0.0.0.0:{port}");
    let idle = idle.as_secs().max(1).to_string();
    let proc = Proc::spawn("lab-xfer recv", in_ns(ns, &[&bin, "recv", "--listen", &listen, "--idle-timeout", &idle]), &log)?;
    wait_for("lab-xfer receiver listening", Duration::from_secs(10), Duration::from_millis(20), || {
        std::fs::read_to_string(&log).ok().filter(|s| s.contains("listening")).map(|_| ())
    })?;
    Ok(XferRecv { proc })
}

/// Sends `bytes` from `ns` to `dst` (a receiver from [`xfer_listen`]) and reports both ends.
pub fn xfer_send(recv: &mut XferRecv, ns: &str, dst: &str, bytes: u64, timeout: Duration) -> Result<Xfer> {
    let bin = crate::xfer::xfer_bin().to_string_lossy().into_owned();
    let start = Instant::now();
    let n = bytes.to_string();
    let out = run(&mut in_ns(ns, &[&bin, "send", "--connect", dst, "--bytes", &n, "--seed", "7"]), timeout)?;
    if !out.success() {
        return Err(LabError::Check(format!(
            "lab-xfer send failed after {:?} ({:?}): {}{}",
            start.elapsed(),
            out.status,
            out.stdout,
            out.stderr
        )));
    }
    let left = timeout.saturating_sub(start.elapsed()).max(Duration::from_secs(5));
    if recv.proc.wait_exit(left) != Some(0) {
        return Err(LabError::Check(format!("lab-xfer recv did not finish: {}", recv.proc.log_tail(5))));
    }
    let rl = std::fs::read_to_string(&recv.proc.log).unwrap_or_default();
    let rl = rl.lines().find(|l| l.starts_with("recv ")).unwrap_or("").to_string();
    let sl = out.stdout.lines().find(|l| l.starts_with("sent ")).unwrap_or("").to_string();
    Ok(Xfer {
        bytes_sent: field(&sl, "bytes").unwrap_or(0),
        sha_sent: field(&sl, "sha256").unwrap_or_default(),
        bytes_received: field(&rl, "bytes").unwrap_or(0),
        sha_received: field(&rl, "sha256").unwrap_or_default(),
        secs: field(&rl, "secs").unwrap_or(0.0),
        mbit: field(&rl, "mbit").unwrap_or(0.0),
        max_stall_ms: field(&rl, "max_stall_ms").unwrap_or(0.0),
    })
}

/// A paced server->client stream, the direction the gateway holds and replays while a client
/// is away: `lab-xfer send` of `bytes` at `rate_mbit` Mbit/s with payload seed `seed` from the
/// server namespace to `to` (`ADDRESS:PORT`, a receiver from [`xfer_listen`] in the client),
/// on a thread; returns its output.
///
/// # Panics
/// The thread panics when `lab-xfer` cannot be run within `timeout`.
pub fn xfer_send_paced(lab: &RaLab, to: &str, bytes: u64, seed: u32, rate_mbit: u32, timeout: Duration) -> std::thread::JoinHandle<crate::Output> {
    let bin = crate::xfer::xfer_bin().to_string_lossy().into_owned();
    let (server, to) = (lab.server.clone(), to.to_string());
    let (n, seed, rate) = (bytes.to_string(), seed.to_string(), rate_mbit.to_string());
    std::thread::spawn(move || {
        run(&mut in_ns(&server, &[&bin, "send", "--connect", &to, "--bytes", &n, "--seed", &seed, "--rate-mbit", &rate]), timeout)
            .expect("lab-xfer send runs")
    })
}

fn field<T: std::str::FromStr>(line: &str, key: &str) -> Option<T> {
    line.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// `holdfast run` (the daemon, [`crate::holdfast_bin`]) in the gateway namespace of a
/// [`RaLab`], with its control socket in the run directory.
/// `holdfast run --config CFG --control SOCK --state-dir STATE` in the gateway namespace,
/// logging to `<lab>/<log_name>` (a restarted daemon needs a fresh log name so the first
/// one's line does not count); waits for its "remote access listening" line.
pub fn spawn_holdfast_run(lab: &RaLab, name: &str, cfg: &Path, sock: &Path, state: &Path, log_name: &str) -> Result<Proc> {
    let b = crate::holdfast_bin().to_string_lossy().into_owned();
    let log = lab.path(log_name);
    let (c, s, st) = (cfg.to_string_lossy(), sock.to_string_lossy(), state.to_string_lossy());
    let mut proc = Proc::spawn(name, in_ns(&lab.gw, &[&b, "run", "--config", &c, "--control", &s, "--state-dir", &st]), &log)?;
    proc.grace = Duration::from_secs(10);
    wait_for("holdfast remote access listening", Duration::from_secs(20), Duration::from_millis(50), || {
        std::fs::read_to_string(&log).ok().filter(|t| t.contains("remote access listening")).map(|_| ())
    })
    .map_err(|e| LabError::Check(format!("{e}\n{}", proc.log_tail(30))))?;
    Ok(proc)
}

/// The start of a `holdfast run` lab test: root and the release binary checked, the
/// namespaces, a server certificate, and where the control socket and the configuration go
/// (`holdfast.sock`, `daemon.cfg` in the run directory).
pub struct DaemonLab {
    pub lab: RaLab,
    pub cert: ServerCert,
    pub sock: PathBuf,
    pub cfg: PathBuf,
}

impl DaemonLab {
    /// # Panics
    /// Without root, without the `holdfast` binary, or when the lab cannot be built.
    pub fn setup() -> DaemonLab {
        assert!(crate::is_root(), "lab tests need root (network namespaces)");
        crate::require_holdfast_bin();
        let lab = RaLab::new().expect("lab");
        let cert = make_server_cert(&lab.dir).expect("certificate");
        let (sock, cfg) = (lab.path("holdfast.sock"), lab.path("daemon.cfg"));
        DaemonLab { lab, cert, sock, cfg }
    }
}

pub struct RaDaemon {
    pub proc: Proc,
    pub sock: PathBuf,
    pub config: PathBuf,
}

impl RaDaemon {
    /// Writes `text` as `<name>.cfg`, checks it with `holdfast check`, starts `holdfast run` and
    /// waits for its "remote access listening" line. The log is `<name>.log`.
    pub fn start(lab: &RaLab, name: &str, text: &str) -> Result<RaDaemon> {
        let bin = crate::holdfast_bin();
        if !bin.exists() {
            return Err(LabError::Check(format!("{} not found: cargo build --release -p holdfast (or set HOLDFAST_BIN)", bin.display())));
        }
        let b = bin.to_string_lossy().into_owned();
        let config = lab.path(&format!("{name}.cfg"));
        std::fs::write(&config, text).map_err(io_err("writing the daemon configuration"))?;
        let c = config.to_string_lossy().into_owned();
        let check = run(std::process::Command::new(&b).args(["check", "--config", &c]), Duration::from_secs(30))?;
        if !check.success() {
            return Err(LabError::Check(format!("holdfast check refused {c}:\n{}{}", check.stdout, check.stderr)));
        }
        let sock = lab.path(&format!("{name}.sock"));
        let proc = spawn_holdfast_run(lab, name, &config, &sock, &lab.path(&format!("{name}-state")), &format!("{name}.log"))?;
        Ok(RaDaemon { proc, sock, config })
    }

    /// `holdfast WORDS... --control SOCK` in the gateway namespace: (success, stdout + stderr).
    pub fn cli(&self, lab: &RaLab, words: &[&str]) -> (bool, String) {
        holdfast_cli(&lab.gw, &self.sock, words)
    }

    /// Everything the daemon wrote (its ASA syslog lines go to stderr too).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }
}

/// `holdfast WORDS... --control SOCK` in namespace `ns`: (success, stdout + stderr).
///
/// # Panics
/// When the command cannot be run at all (no binary, a hung control socket past 30 s): a
/// test that ignores the success flag and looks for the absence of a line must not pass on
/// an empty answer.
pub fn holdfast_cli(ns: &str, sock: &Path, words: &[&str]) -> (bool, String) {
    let b = crate::holdfast_bin().to_string_lossy().into_owned();
    let s = sock.to_string_lossy().into_owned();
    let mut argv = vec![b.as_str()];
    argv.extend_from_slice(words);
    argv.extend(["--control", &s]);
    let out = run(&mut in_ns(ns, &argv), Duration::from_secs(30)).unwrap_or_else(|e| panic!("holdfast {}: {e}", words.join(" ")));
    (out.success(), format!("{}{}", out.stdout, out.stderr))
}

/// `ip -o link` in namespace `ns` (empty when it cannot be listed).
pub fn ip_links(ns: &str) -> String {
    sh(Some(ns), &["ip", "-o", "link"], Duration::from_secs(5)).map(|o| o.stdout).unwrap_or_default()
}

/// `ip route` in namespace `ns` (empty when it cannot be listed).
pub fn ip_routes(ns: &str) -> String {
    sh(Some(ns), &["ip", "route"], Duration::from_secs(5)).map(|o| o.stdout).unwrap_or_default()
}

/// The MTU of interface `ifname` in namespace `ns` (`/sys/class/net/IF/mtu`).
pub fn link_mtu(ns: &str, ifname: &str) -> Result<u16> {
    let out = sh(Some(ns), &["cat", &format!("/sys/class/net/{ifname}/mtu")], T)?;
    out.stdout.trim().parse().map_err(|_| LabError::Check(format!("mtu of {ifname} in {ns}: {:?}", out.stdout)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648_vectors() {
        // RFC 4648 §10.
        for (i, o) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")] {
            assert_eq!(super::base64(i.as_bytes()), o);
        }
    }
}
