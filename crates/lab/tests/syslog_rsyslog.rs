//! Issue 4, observability: ASA syslog over UDP to `logging host`, received by a real rsyslog
//! daemon (Debian's rsyslogd, our own configuration and PID file, one per host namespace, on
//! 514/udp of the host's address, writing each datagram as received to a file).
//!
//! gw-a: `logging trap informational` + `logging timestamp` to host-a (10.1.0.10).
//! gw-b: `logging trap warnings` without timestamp to host-b (10.2.0.10).
//!
//! Checked at the receivers: the ASA shapes (`<PRI>[timestamp: ]%ASA-<sev>-<id>: text`) of
//! 602303/602304 (SA created/deleted), 713119 (phase 1), 302013/302014 (TCP conn built/torn
//! down); PRI = local4 * 8 + severity; the timestamp (`Mon DD YYYY HH:MM:SS`, close to now)
//! only where `logging timestamp` is set; trap level filtering (gw-b sends its 402114 warning
//! and none of its notification/informational messages).
#![allow(clippy::disallowed_methods)] // the lab compares the syslog timestamp with the wall clock

mod common;

use common::*;
use lab::cmd::{in_ns, sh, wait_for, Proc};
use lab::topo::{GW_A_WAN_IP, GW_B_WAN_IP, HOST_A_IP, HOST_B_IP};
use lab::{transfer, HoldfastParams, Suite, Topology, XferOpts};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// rsyslogd in `ns`, listening on `ip`:514/udp, writing raw messages to the returned file.
fn rsyslog(t: &Topology, ns: &str, ip: &str, name: &str) -> (Proc, PathBuf) {
    let dir = t.path(name);
    std::fs::create_dir_all(&dir).expect("rsyslog dir");
    let out = dir.join("received.log");
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{d}\")\n\
             module(load=\"imudp\")\n\
             input(type=\"imudp\" address=\"{ip}\" port=\"514\")\n\
             template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n\
             *.* action(type=\"omfile\" file=\"{o}\" template=\"raw\")\n",
            d = dir.display(),
            o = out.display()
        ),
    )
    .expect("rsyslog.conf");
    let conf_s = conf.to_string_lossy().into_owned();
    let pid_s = dir.join("rsyslogd.pid").to_string_lossy().into_owned();
    let p = Proc::spawn(name, in_ns(ns, &["rsyslogd", "-n", "-f", &conf_s, "-i", &pid_s]), &dir.join("rsyslogd.log")).expect("rsyslogd starts");
    wait_for(&format!("{name} bound to {ip}:514"), Duration::from_secs(10), Duration::from_millis(100), || {
        let o = sh(Some(ns), &["ss", "-uln"], Duration::from_secs(5)).ok()?;
        o.stdout.contains(&format!("{ip}:514")).then_some(())
    })
    .expect("rsyslogd listening");
    (p, out)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

/// Waits until the receiver's file has a line containing `needle`; returns that line.
fn received(path: &Path, needle: &str, within: Duration) -> String {
    wait_for(&format!("`{needle}` at the syslog host"), within, Duration::from_millis(100), || {
        lines(path).into_iter().find(|l| l.contains(needle))
    })
    .unwrap_or_else(|e| panic!("{e}; received so far:\n{}", lines(path).join("\n")))
}

/// Splits `<PRI>rest` into (PRI, rest).
fn pri(line: &str) -> (u16, &str) {
    let rest = line.strip_prefix('<').unwrap_or_else(|| panic!("no PRI: {line}"));
    let (n, rest) = rest.split_once('>').unwrap_or_else(|| panic!("no PRI: {line}"));
    (n.parse().unwrap_or_else(|_| panic!("bad PRI: {line}")), rest)
}

/// `Mon DD YYYY HH:MM:SS` -> Unix seconds (UTC, as the daemon writes it).
fn parse_stamp(s: &str) -> Option<u64> {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let mut w = s.split(' ');
    let mon = w.next()?;
    let m = MONTHS.iter().position(|x| *x == mon)? as u32 + 1;
    let d_s = w.next()?;
    let y_s = w.next()?;
    let hms = w.next()?;
    if w.next().is_some() || d_s.len() != 2 || y_s.len() != 4 || hms.len() != 8 {
        return None;
    }
    let (d, y): (u32, i64) = (d_s.parse().ok()?, y_s.parse().ok()?);
    let mut t = hms.split(':').map(|x| x.parse::<u64>().ok());
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    // Days from civil (proleptic Gregorian), H. Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp as i64 + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as u64 * 86_400 + h * 3600 + mi * 60 + se)
}

#[test]
fn stamp_parser() {
    assert_eq!(parse_stamp("Jan 01 1970 00:00:00"), Some(0));
    assert_eq!(parse_stamp("Nov 23 2026 17:38:19"), Some(1_795_455_499));
    assert_eq!(parse_stamp("Nov 3 2026 17:38:19"), None);
    assert_eq!(parse_stamp("Foo 23 2026 17:38:19"), None);
}

#[test]
fn syslog_reaches_rsyslog_with_trap_levels_and_timestamps() {
    require_root();
    let t = Topology::new().expect("topology");
    let (_ra, file_a) = rsyslog(&t, &t.host_a, HOST_A_IP, "rsyslog-a");
    let (_rb, file_b) = rsyslog(&t, &t.host_b, HOST_B_IP, "rsyslog-b");
    let mut a = HoldfastParams::side('a', Suite::GcmX25519);
    let mut b = HoldfastParams::side('b', Suite::GcmX25519);
    a.extra.extend(
        ["logging enable", "logging timestamp", "logging trap informational", &format!("logging host inside {HOST_A_IP}")].map(String::from),
    );
    b.extra.extend(["logging enable", "logging trap warnings", &format!("logging host inside {HOST_B_IP}")].map(String::from));
    let (ha, hb) = holdfast_pair(&t, &a, &b);
    ping_through(&t);
    // A TCP connection opened and closed through the tunnel: 302013 then 302014 at gw-a.
    let bytes = MB;
    let opts = XferOpts { timeout: Duration::from_secs(20), ..Default::default() };
    transfer(&t, &t.host_a, &t.host_b, HOST_B_IP, bytes, &opts).expect("transfer").check_intact(bytes).expect("intact");
    // ESP with an unknown SPI sent to gw-b: 402114 (warnings) at gw-b.
    let bogus = r#"for i in 1 2 3; do printf '\xde\xad\xbe\xef\x00\x00\x00\x07%040d' 0 > /dev/udp/192.0.2.2/4500; done"#;
    sh(Some(&t.gw_a), &["bash", "-c", bogus], Duration::from_secs(5)).expect("bogus ESP sent");
    // And the tunnel torn down by the operator: 602304 at gw-a.
    ha.clear("crypto ikev2 sa").expect("clear crypto ikev2 sa");

    // gw-a, trap informational with timestamps.
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let created = received(&file_a, "%ASA-6-602303: IPSEC: An outbound LAN-to-LAN SA (SPI= 0x", Duration::from_secs(5));
    let (p, rest) = pri(&created);
    assert_eq!(p, 20 * 8 + 6, "local4.informational: {created}");
    let (stamp, msg) = rest.split_once(": %ASA-").unwrap_or_else(|| panic!("timestamp prefix missing: {created}"));
    let at = parse_stamp(stamp).unwrap_or_else(|| panic!("timestamp `{stamp}` is not `Mon DD YYYY HH:MM:SS`"));
    assert!(at <= now && now - at < 120, "timestamp {stamp} is not close to now ({now})");
    assert!(msg.ends_with(&format!("between {GW_A_WAN_IP} and {GW_B_WAN_IP} (user= {GW_B_WAN_IP}) has been created.")), "{created}");
    let inbound = received(&file_a, "%ASA-6-602303: IPSEC: An inbound LAN-to-LAN SA", Duration::from_secs(1));
    assert!(inbound.ends_with(&format!("between {GW_B_WAN_IP} and {GW_A_WAN_IP} (user= {GW_B_WAN_IP}) has been created.")), "{inbound}");
    let phase1 = received(&file_a, "%ASA-5-713119:", Duration::from_secs(1));
    assert_eq!(pri(&phase1).0, 20 * 8 + 5, "{phase1}");
    assert!(phase1.ends_with(&format!("Group = {GW_B_WAN_IP}, IP = {GW_B_WAN_IP}, PHASE 1 COMPLETED")), "{phase1}");
    let built = received(&file_a, "%ASA-6-302013: Built outbound TCP connection", Duration::from_secs(1));
    assert!(built.contains(&format!("for outside:{HOST_B_IP}/5001 ({HOST_B_IP}/5001) to inside:{HOST_A_IP}/")), "{built}");
    let torn = received(&file_a, "%ASA-6-302014: Teardown TCP connection", Duration::from_secs(5));
    assert!(torn.contains(&format!("to inside:{HOST_A_IP}/")) && torn.contains(" duration "), "{torn}");
    let bytes_field: u64 = torn.split(" bytes ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(bytes_field >= bytes, "302014 counts the transfer's bytes: {torn}");
    let deleted = received(&file_a, "%ASA-6-602304: IPSEC: An outbound LAN-to-LAN SA", Duration::from_secs(5));
    assert!(deleted.ends_with("has been deleted."), "{deleted}");
    for l in lines(&file_a) {
        let (p, rest) = pri(&l);
        assert!((160..=166).contains(&p), "trap informational passes severities 0-6 of local4 only: {l}");
        assert!(parse_stamp(rest.split(": %ASA-").next().unwrap_or("")).is_some(), "every line timestamped: {l}");
    }

    // gw-b, trap warnings without timestamps: the 402114 and nothing below warnings.
    let invalid = received(&file_b, "%ASA-4-402114:", Duration::from_secs(5));
    assert_eq!(
        invalid,
        format!("<164>%ASA-4-402114: IPSEC: Received an ESP packet (SPI= 0xDEADBEEF, sequence number= 0x7) from {GW_A_WAN_IP} to {GW_B_WAN_IP} with an invalid SPI.")
    );
    // gw-b saw the same tunnel events (its show logging has them) but did not send them.
    let log_b = hb.show("logging").expect("show logging on gw-b");
    assert!(log_b.contains("%ASA-6-602303:") && log_b.contains("%ASA-5-713119:"), "{log_b}");
    assert!(log_b.contains("Trap logging: level warnings"), "{log_b}");
    std::thread::sleep(Duration::from_millis(500));
    for l in lines(&file_b) {
        let (p, rest) = pri(&l);
        assert!((20 * 8..=20 * 8 + 4).contains(&p), "trap warnings: only severities 0-4 of local4: {l}");
        assert!(rest.starts_with("%ASA-"), "no timestamp without `logging timestamp`: {l}");
    }
}
