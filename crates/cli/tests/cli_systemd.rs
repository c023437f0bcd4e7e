//! packaging/holdfast.service: its capability set is exactly what the daemon needs. The real
//! daemon runs in network namespaces as an unprivileged user with only the unit's capabilities
//! (util-linux `setpriv`, the same ambient/bounding sets and no_new_privs as the unit): two such
//! gateways bring a tunnel up over native ESP and carry a ping; without CAP_NET_ADMIN or
//! CAP_NET_BIND_SERVICE it refuses to start with a clear error; without CAP_NET_RAW it runs
//! with native ESP disabled. The unit's directories match the daemon's flags, and
//! `systemd-analyze verify` accepts the unit when it is installed (skipped, with the reason,
//! when not).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{cli, examples, is_root, sh, wait_control, Netns, BIN};

/// An unprivileged uid/gid with no passwd entry, like a DynamicUser.
const UID: u32 = 64123;

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/holdfast.service")
}

/// `Key=value` lines of the [Service] section (keys may repeat).
fn service() -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(unit_path()).unwrap();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut in_service = false;
    for l in text.lines() {
        let l = l.trim();
        if l.starts_with('[') {
            in_service = l == "[Service]";
            continue;
        }
        if !in_service || l.is_empty() || l.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = l.split_once('=') {
            out.entry(k.trim().to_string()).or_default().push(v.trim().to_string());
        }
    }
    out
}

fn one(s: &BTreeMap<String, Vec<String>>, key: &str) -> String {
    let v = s.get(key).unwrap_or_else(|| panic!("holdfast.service has no {key}="));
    assert_eq!(v.len(), 1, "{key}= given more than once");
    v[0].clone()
}

/// The unit's capabilities as setpriv names them (`net_admin`, ...).
fn unit_caps() -> Vec<String> {
    let s = service();
    let ambient: Vec<String> = one(&s, "AmbientCapabilities").split_whitespace().map(|c| c.to_ascii_lowercase().trim_start_matches("cap_").to_string()).collect();
    let bounding: Vec<String> = one(&s, "CapabilityBoundingSet").split_whitespace().map(|c| c.to_ascii_lowercase().trim_start_matches("cap_").to_string()).collect();
    assert_eq!(ambient, bounding, "ambient and bounding sets differ");
    ambient
}

#[test]
fn unit_directories_match_the_daemon_flags() {
    let s = service();
    let start = one(&s, "ExecStart");
    let words: Vec<&str> = start.split_whitespace().collect();
    let flag = |f: &str| words.iter().position(|w| *w == f).map(|i| words[i + 1].to_string()).unwrap_or_else(|| panic!("ExecStart lacks {f}"));
    assert!(words[0].ends_with("/holdfast") && words[1] == "run", "{start}");
    // The control socket lives in RuntimeDirectory, the state in StateDirectory, the
    // configuration in ConfigurationDirectory: systemd creates them with the right owner.
    assert_eq!(flag("--control"), format!("/run/{}/holdfast.sock", one(&s, "RuntimeDirectory")));
    assert_eq!(flag("--state-dir"), format!("/var/lib/{}", one(&s, "StateDirectory")));
    assert!(flag("--config").starts_with(&format!("/etc/{}/", one(&s, "ConfigurationDirectory"))));
    // ... which are also the daemon's defaults, so `holdfast show` finds the socket as is.
    let (_, help) = run(&["run", "--help"]);
    assert!(help.contains("/run/holdfast/holdfast.sock") && help.contains("/var/lib/holdfast"), "{help}");
    assert_eq!(one(&s, "ExecReload"), "/bin/kill -HUP $MAINPID");
    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("DeviceAllow", "/dev/net/tun rw"),
        ("SystemCallFilter", "@system-service"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"),
    ] {
        assert_eq!(one(&s, k), v, "{k}");
    }
    assert!(!s.contains_key("ProtectKernelTunables"), "the daemon writes net.ipv4.ip_forward");
    assert!(!s.contains_key("PrivateDevices"), "it would hide /dev/net/tun");
    assert_eq!(unit_caps(), ["net_admin", "net_bind_service", "net_raw"]);
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let Ok(o) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    assert!(o.status.success());
    // verify checks that the executables exist: point them at the binary under test.
    let dir = std::env::temp_dir().join(format!("holdfast-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(unit_path()).unwrap().replace("/usr/local/bin/holdfast", BIN);
    let unit = dir.join("holdfast.service");
    std::fs::write(&unit, text).unwrap();
    // --man=no: the Documentation= man pages are not installed on a build machine.
    let o = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&unit).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    // Lines about other units on this machine (a container's own units) are not ours.
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("holdfast")).collect();
    assert!(o.status.success() && ours.is_empty(), "systemd-analyze verify:\n{err}");
}

fn run(args: &[&str]) -> (bool, String) {
    let o = Command::new(BIN).args(args).output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned())
}

/// `sh -c CMD`: (success, stdout and stderr together).
fn sh_out(cmd: &str) -> (bool, String) {
    let (ok, out, err) = common::sh_out(cmd);
    (ok, out + &err)
}

/// The guard of one test: namespaces `sdtest-<pid>-<tag>-<role>`, a run directory the
/// unprivileged daemons can traverse.
fn new_lab(tag: &str) -> Netns {
    let mut lab = Netns::new(format!("sdtest-{}-{tag}", std::process::id()));
    lab.term_grace = Duration::from_secs(5);
    sh(&format!("chmod 755 {}", lab.dir.display()));
    lab
}

/// Starts `holdfast run` in `ns` as UID with exactly `caps` (setpriv names), the way the
/// unit does: ambient = inheritable = bounding = caps, no_new_privs, no supplementary groups.
/// The socket and state directories belong to UID, as RuntimeDirectory/StateDirectory make
/// them. Returns (socket, log file).
fn start(lab: &mut Netns, ns: &str, side: &str, caps: &[String]) -> (PathBuf, PathBuf) {
    let run_dir = lab.dir.join(format!("{side}-run"));
    let state = lab.dir.join(format!("{side}-state"));
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    sh(&format!("chown {UID}:{UID} {} {} && chmod 0750 {} && chmod 0700 {}", run_dir.display(), state.display(), run_dir.display(), state.display()));
    let cfg = examples().join(format!("gw-{side}.cfg"));
    let cfg_copy = lab.dir.join(format!("gw-{side}.cfg"));
    std::fs::copy(&cfg, &cfg_copy).unwrap();
    sh(&format!("chmod 0644 {}", cfg_copy.display()));
    let list = if caps.is_empty() { String::new() } else { caps.iter().map(|c| format!(",+{c}")).collect::<String>() };
    let sock = run_dir.join("holdfast.sock");
    let log = lab.dir.join(format!("{side}.log"));
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "setpriv"])
        .arg(format!("--reuid={UID}"))
        .arg(format!("--regid={UID}"))
        .args(["--clear-groups", "--no-new-privs"])
        .arg(format!("--inh-caps=-all{list}"))
        .arg(format!("--ambient-caps=-all{list}"))
        .arg(format!("--bounding-set=-all{list}"))
        .args([BIN, "run", "--config"])
        .arg(&cfg_copy)
        .arg("--control")
        .arg(&sock)
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    lab.push(child);
    (sock, log)
}

fn show(sock: &Path, words: &str) -> (bool, String) {
    cli(sock, &format!("show {words}"))
}

/// gw-a and gw-b (examples/gw-*.cfg) on a veth pair, each with its LAN address.
fn two_gateways(lab: &mut Netns) -> (String, String) {
    let (a, b) = (lab.ns("a"), lab.ns("b"));
    sh(&format!(
        "ip link add wan-a netns {a} type veth peer name wan-b netns {b} && \
         ip -n {a} addr add 192.0.2.1/24 dev wan-a && ip -n {a} link set wan-a up && \
         ip -n {b} addr add 192.0.2.2/24 dev wan-b && ip -n {b} link set wan-b up && \
         ip -n {a} link add lan-a type veth peer name lan-x && ip -n {a} addr add 10.1.0.1/24 dev lan-a && \
         ip -n {a} link set lan-a up && ip -n {a} link set lan-x up && \
         ip -n {b} link add lan-b type veth peer name lan-x && ip -n {b} addr add 10.2.0.1/24 dev lan-b && \
         ip -n {b} link set lan-b up && ip -n {b} link set lan-x up"
    ));
    (a, b)
}

#[test]
fn unit_capabilities_bring_a_tunnel_up_as_an_unprivileged_user() {
    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: needs root and util-linux setpriv");
        return;
    }
    let caps = unit_caps();
    let mut lab = new_lab("up");
    let (a, b) = two_gateways(&mut lab);
    let (sa, la) = start(&mut lab, &a, "a", &caps);
    let (sb, lb) = start(&mut lab, &b, "b", &caps);
    wait_control(&sa, &la);
    wait_control(&sb, &lb);
    // It really runs as the unprivileged user, with only those capabilities.
    let pid = lab.procs[0].id();
    let (_, status) = sh_out(&format!("cat /proc/$(pgrep -P {pid} -x holdfast || echo {pid})/status"));
    assert!(status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(&UID.to_string())), "{status}");
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).map(|v| u64::from_str_radix(v.trim(), 16).unwrap()).unwrap();
    // CAP_NET_BIND_SERVICE 10, CAP_NET_ADMIN 12, CAP_NET_RAW 13.
    assert_eq!(eff, (1 << 10) | (1 << 12) | (1 << 13), "{status}");

    let mut up = false;
    for _ in 0..100 {
        if show(&sa, "crypto ipsec sa").1.contains("inbound esp sas") && show(&sb, "crypto ipsec sa").1.contains("inbound esp sas") {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(up, "tunnel did not come up:\n{}\n{}", std::fs::read_to_string(&la).unwrap_or_default(), std::fs::read_to_string(&lb).unwrap_or_default());
    // Native ESP (the raw socket CAP_NET_RAW allows), not UDP encapsulation.
    let (_, text) = show(&sa, "crypto ipsec sa");
    assert!(!text.contains("NAT-T"), "{text}");
    // Traffic between the protected networks crosses the tunnel.
    let (ok, out) = sh_out(&format!("ip netns exec {a} ping -c 3 -i 0.2 -W 2 -I 10.1.0.1 10.2.0.1"));
    assert!(ok, "ping through the tunnel failed: {out}");
    let log = std::fs::read_to_string(&la).unwrap_or_default();
    assert!(!log.contains("native ESP disabled") && !log.contains("not permitted"), "{log}");
    // ExecReload (SIGHUP = `holdfast reload`) under the same capabilities: the daemon re-reads
    // its file as the unprivileged user, keeps running and keeps the tunnel.
    sh(&format!("kill -HUP {}", lab.procs[0].id()));
    std::thread::sleep(Duration::from_millis(1000));
    assert!(matches!(lab.procs[0].try_wait(), Ok(None)), "SIGHUP ended the daemon: {}", std::fs::read_to_string(&la).unwrap_or_default());
    let (_, text) = show(&sa, "crypto ipsec sa");
    assert!(text.contains("inbound esp sas"), "{text}");
    let (_, logging) = show(&sa, "logging");
    let log = std::fs::read_to_string(&la).unwrap_or_default();
    assert!(!logging.contains("%ASA-2-111004") && !log.contains("not permitted"), "{logging}\n{log}");
    if !log.contains("without a configuration file") {
        assert!(logging.contains("%ASA-5-111005"), "no reload completed after SIGHUP:\n{logging}\n{log}");
    }
    // SIGTERM: a clean exit that removes the TUN (CAP_NET_ADMIN is still there for cleanup).
    let d = lab.procs.last_mut().unwrap();
    sh(&format!("kill -TERM {}", d.id()));
    let mut exited = None;
    for _ in 0..100 {
        if let Ok(Some(st)) = d.try_wait() {
            exited = Some(st);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(exited.is_some_and(|s| s.success()), "gw-b did not exit cleanly: {}", std::fs::read_to_string(&lb).unwrap_or_default());
    let (has_tun, _) = sh_out(&format!("ip -n {b} link show hf0"));
    assert!(!has_tun, "TUN left behind");
}

/// Runs one gateway with `caps` and returns (exited, its stderr) after it exits or 3 s.
fn start_with(caps: &[String], tag: &str) -> (bool, String, Netns, String) {
    let mut lab = new_lab(tag);
    let (a, _b) = two_gateways(&mut lab);
    let (sock, log) = start(&mut lab, &a, "a", caps);
    let mut exited = false;
    for _ in 0..60 {
        if let Ok(Some(_)) = lab.procs.last_mut().unwrap().try_wait() {
            exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !exited {
        wait_control(&sock, &log);
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    (exited, text, lab, a)
}

#[test]
fn each_capability_is_needed() {
    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: needs root and util-linux setpriv");
        return;
    }
    let all = unit_caps();
    let without = |c: &str| all.iter().filter(|x| *x != c).cloned().collect::<Vec<_>>();

    // No CAP_NET_ADMIN: refused before any tunnel, with the failing operation and the fix.
    let (exited, log, lab, a) = start_with(&without("net_admin"), "noadmin");
    assert!(exited, "started without CAP_NET_ADMIN: {log}");
    assert!(lab.procs[0].id() > 0);
    assert!(log.contains("Operation not permitted") && log.contains("CAP_NET_ADMIN"), "{log}");
    let (has_tun, _) = sh_out(&format!("ip -n {a} link show hf0"));
    assert!(!has_tun);
    drop(lab);

    // No CAP_NET_BIND_SERVICE: IKE's port 500 cannot be bound.
    let (exited, log, lab, _) = start_with(&without("net_bind_service"), "nobind");
    assert!(exited, "started without CAP_NET_BIND_SERVICE: {log}");
    assert!(log.contains(":500: Permission denied") && log.contains("CAP_NET_BIND_SERVICE"), "{log}");
    drop(lab);

    // No CAP_NET_RAW: runs, says native ESP is off (UDP-encapsulated ESP still works).
    let (exited, log, lab, _) = start_with(&without("net_raw"), "noraw");
    assert!(!exited, "exited without CAP_NET_RAW: {log}");
    assert!(log.contains("native ESP disabled"), "{log}");
    drop(lab);
}
