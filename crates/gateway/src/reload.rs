//! `holdfast reload` and SIGHUP: what a new configuration changes, in plain data, so that the
//! daemon can refuse what it cannot apply live and apply the rest without touching anything the
//! change does not concern (docs/reload.md).
//!
//! The daemon re-reads and fully validates the file first (parse, tunnel resolution,
//! certificate files: what `holdfast check` does). Then:
//! - [`restart_required`] lists changes that cannot be applied to a running daemon. If it is not
//!   empty the reload is refused as a whole: nothing changes, and the answer names each item.
//!   An operator never ends up with half of a configuration applied.
//! - Otherwise tunnels are reconfigured through `ike::Endpoint::reconfigure` (unchanged ones keep
//!   their SAs), routes and the fail-closed rules follow [`routes`] / [`blackholes`], and the
//!   global settings [`global_changes`] lists are applied live.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use policy::{Config, TrafficSelector, TunnelPolicy};

use crate::daemon::range_to_prefixes;
use crate::syslog::Message;

/// Changes a running daemon cannot apply, in the operator's words ("requires restart: ...").
/// `bound` are the outside addresses the daemon has IKE/ESP sockets on; `has_tun` whether it
/// created the site-to-site TUN (a configuration without tunnels has none).
pub fn restart_required(old: &Config, new: &Config, new_tunnels: &[TunnelPolicy], bound: &[Ipv4Addr], has_tun: bool) -> Vec<String> {
    let mut out = Vec::new();
    for (o, n) in pair_by(&old.interfaces, &new.interfaces, |i| i.name.clone()) {
        match (o, n) {
            (Some(o), Some(n)) if o != n => out.push(format!("interface {} (nameif, ip address, security-level or shutdown changed)", n.name)),
            (Some(o), None) => out.push(format!("interface {} (removed)", o.name)),
            (None, Some(n)) => out.push(format!("interface {} (added)", n.name)),
            _ => {}
        }
    }
    let mut locals: Vec<Ipv4Addr> = Vec::new();
    for t in new_tunnels {
        if let IpAddr::V4(a) = t.local_addr {
            if !bound.contains(&a) && !locals.contains(&a) {
                locals.push(a);
                out.push(format!("crypto map {} on local address {a} (no IKE/ESP socket bound there)", t.name));
            }
        }
    }
    if !has_tun && !new_tunnels.is_empty() {
        out.push("the first site-to-site tunnel (the daemon started without a site-to-site TUN)".into());
    }
    if old.sysopt.tcpmss != new.sysopt.tcpmss || old.sysopt.tcpmss_minimum != new.sysopt.tcpmss_minimum {
        out.push("sysopt connection tcpmss (the data path's MSS clamp is fixed at start)".into());
    }
    if old.remote_access != new.remote_access || old.ikev2_client_services != new.ikev2_client_services {
        out.push("webvpn / remote access (group-policy, tunnel-group, pool, username, ssl)".into());
    } else if new.remote_access.is_some() && old.trustpoints != new.trustpoints {
        out.push("crypto ca trustpoint (the remote-access listener's certificate)".into());
    }
    if old.metrics != new.metrics {
        out.push("metrics prometheus listen".into());
    }
    out
}

/// Global settings that differ and are applied live, by the command word the operator knows.
pub fn global_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    if old.timeouts != new.timeouts {
        v.push("timeout");
    }
    if old.sysopt != new.sysopt {
        v.push("sysopt");
    }
    if old.logging != new.logging {
        v.push("logging");
    }
    if old.ikev2 != new.ikev2 {
        v.push("crypto ikev2 (globals)");
    }
    if old.hostname != new.hostname {
        v.push("hostname");
    }
    v
}

/// Routes into the TUN for the remote protected networks: prefix -> source address (an inside
/// interface address within the tunnel's local networks, see `daemon::inside_source`).
pub fn routes(cfg: &Config, tunnels: &[TunnelPolicy]) -> BTreeMap<(Ipv4Addr, u8), Option<Ipv4Addr>> {
    let mut m = BTreeMap::new();
    for t in tunnels {
        let src = crate::daemon::inside_source(cfg, &t.local_ts);
        for p in prefixes(&t.remote_ts) {
            m.entry(p).or_insert(src);
        }
    }
    m
}

/// The fail-closed blackhole routes (one per remote protected prefix).
pub fn blackholes(tunnels: &[TunnelPolicy]) -> Vec<(Ipv4Addr, u8)> {
    let mut v: Vec<(Ipv4Addr, u8)> = tunnels.iter().flat_map(|t| prefixes(&t.remote_ts)).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// (remote prefixes, local prefixes) per tunnel, as `SystemGuard::install_inbound_drop` takes them.
pub fn inbound_drop_pairs(tunnels: &[TunnelPolicy]) -> Vec<(Vec<String>, Vec<String>)> {
    let fmt = |v: Vec<(Ipv4Addr, u8)>| v.into_iter().map(|(a, l)| format!("{a}/{l}")).collect::<Vec<_>>();
    tunnels.iter().map(|t| (fmt(prefixes(&t.remote_ts)), fmt(prefixes(&t.local_ts)))).collect()
}

fn prefixes(v: &[TrafficSelector]) -> Vec<(Ipv4Addr, u8)> {
    v.iter().flat_map(|ts| range_to_prefixes(ts.start_addr, ts.end_addr)).collect()
}

/// Items of two lists matched by a key, in the new list's order, then the removed ones.
fn pair_by<'a, T, K: PartialEq>(old: &'a [T], new: &'a [T], key: impl Fn(&T) -> K) -> Vec<(Option<&'a T>, Option<&'a T>)> {
    let mut out: Vec<(Option<&T>, Option<&T>)> = new.iter().map(|n| (old.iter().find(|o| key(o) == key(n)), Some(n))).collect();
    out.extend(old.iter().filter(|o| !new.iter().any(|n| key(n) == key(o))).map(|o| (Some(o), None)));
    out
}

/// Where a reload came from, for the answer and syslog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `holdfast reload` (the control socket's `reload` command).
    Control,
    /// SIGHUP (`systemctl reload`, `kill -HUP`).
    Sighup,
}

impl Source {
    fn who(self) -> &'static str {
        match self {
            Source::Control => "control",
            Source::Sighup => "SIGHUP",
        }
    }
}

/// `%ASA-5-111008: User 'USER' executed the 'COMMAND' command.` — the ASA logs every
/// configuration command an operator runs with this id; holdfast logs the reload itself.
pub fn executed(source: Source, file: &str) -> Message {
    Message { severity: 5, id: 111008, text: format!("User '{}' executed the 'reload config {file}' command.", source.who()) }
}

/// `%ASA-5-111005: SOURCE end configuration: OK` — the ASA's line when a configuration load
/// (copy to running-config, `configure net`) completed; holdfast names the file it read.
pub fn end_ok(file: &str) -> Message {
    Message { severity: 5, id: 111005, text: format!("{file} end configuration: OK") }
}

/// `%ASA-2-111004: SOURCE end configuration: FAILED` — the load was refused; nothing changed.
pub fn end_failed(file: &str) -> Message {
    Message { severity: 2, id: 111004, text: format!("{file} end configuration: FAILED") }
}

/// What a reload did, for the operator (`holdfast reload` prints it; SIGHUP writes it to stderr).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub file: String,
    pub tunnels: ike::Reconfigured,
    pub globals: Vec<&'static str>,
    /// Things applied only to what comes next (e.g. certificate files for new negotiations).
    pub notes: Vec<String>,
}

impl Outcome {
    pub fn text(&self) -> String {
        let mut s = format!("Reload of {}: applied.\n", self.file);
        let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
        s.push_str(&format!("  tunnels unchanged (SAs and flows kept): {}\n", list(&self.tunnels.kept)));
        s.push_str(&format!("  tunnels changed (re-established): {}\n", list(&self.tunnels.changed)));
        s.push_str(&format!("  tunnels added: {}\n", list(&self.tunnels.added)));
        s.push_str(&format!("  tunnels removed: {}\n", list(&self.tunnels.removed)));
        let g: Vec<String> = self.globals.iter().map(|x| x.to_string()).collect();
        s.push_str(&format!("  global settings applied: {}\n", list(&g)));
        for n in &self.notes {
            s.push_str(&format!("  note: {n}\n"));
        }
        s
    }
}

/// The answer to a refused reload: `ERROR: ` first (the CLI exits non-zero on it), then the
/// reason or diagnostics as they are.
pub fn refusal(file: &str, why: &str) -> String {
    let mut s = format!("ERROR: % Reload of {file} refused; the running configuration is unchanged.\n");
    s.push_str(why);
    if !why.ends_with('\n') {
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        config::parse("t.cfg", text).unwrap_or_else(|d| panic!("{d}")).config
    }

    const BASE: &str = "\
interface eth-out
 nameif outside
 ip address 198.51.100.1 255.255.255.0
interface eth-in
 nameif inside
 ip address 10.1.0.1 255.255.255.0
access-list A extended permit ip 10.1.0.0 255.255.255.0 10.2.0.0 255.255.255.0
crypto ipsec ikev2 ipsec-proposal P
 protocol esp encryption aes-gcm-256
 protocol esp integrity null
crypto map M 10 match address A
crypto map M 10 set peer 198.51.100.2
crypto map M 10 set ikev2 ipsec-proposal P
crypto map M interface outside
crypto ikev2 policy 10
 encryption aes-gcm-256
 integrity null
 group 19
 prf sha256
crypto ikev2 enable outside
tunnel-group 198.51.100.2 type ipsec-l2l
tunnel-group 198.51.100.2 ipsec-attributes
 ikev2 remote-authentication pre-shared-key k
 ikev2 local-authentication pre-shared-key k
";

    fn tunnels(c: &Config) -> Vec<TunnelPolicy> {
        c.tunnels_with_auth().unwrap().into_iter().map(|t| t.policy).collect()
    }

    const BOUND: &[Ipv4Addr] = &[Ipv4Addr::new(198, 51, 100, 1)];

    #[test]
    fn same_configuration_needs_nothing() {
        let a = cfg(BASE);
        assert!(restart_required(&a, &a, &tunnels(&a), BOUND, true).is_empty());
        assert!(global_changes(&a, &a).is_empty());
    }

    #[test]
    fn timeouts_sysopt_and_logging_apply_live() {
        let a = cfg(BASE);
        let b = cfg(&format!(
            "{BASE}timeout conn 2:00:00 udp 0:05:00\nsysopt connection preserve-vpn-flows\nlogging enable\nlogging host outside 198.51.100.9\nlogging trap informational\n"
        ));
        assert!(restart_required(&a, &b, &tunnels(&b), BOUND, true).is_empty());
        assert_eq!(global_changes(&a, &b), vec!["timeout", "sysopt", "logging"]);
    }

    #[test]
    fn interface_address_tcpmss_and_new_local_address_require_restart() {
        let a = cfg(BASE);
        let b = cfg(&BASE.replace("ip address 10.1.0.1 255.255.255.0", "ip address 10.1.0.2 255.255.255.0"));
        let r = restart_required(&a, &b, &tunnels(&b), BOUND, true);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].starts_with("interface eth-in"), "{r:?}");

        let c = cfg(&format!("{BASE}sysopt connection tcpmss 1300\n"));
        let r = restart_required(&a, &c, &tunnels(&c), BOUND, true);
        assert!(r.iter().any(|x| x.contains("tcpmss")), "{r:?}");

        // The outside address moves: the tunnel needs a socket on an address not bound.
        let d = cfg(&BASE.replace("ip address 198.51.100.1 255.255.255.0", "ip address 198.51.100.7 255.255.255.0"));
        let r = restart_required(&a, &d, &tunnels(&d), BOUND, true);
        assert!(r.iter().any(|x| x.contains("local address 198.51.100.7")), "{r:?}");
        assert!(r.iter().any(|x| x.starts_with("interface eth-out")), "{r:?}");

        // Without a TUN the first tunnel cannot be added live.
        let r = restart_required(&a, &a, &tunnels(&a), BOUND, false);
        assert!(r.iter().any(|x| x.contains("TUN")), "{r:?}");
    }

    #[test]
    fn a_second_protected_network_adds_routes_and_blackholes_and_keeps_the_first() {
        let a = cfg(BASE);
        let b = cfg(&BASE.replace(
            "access-list A extended permit ip 10.1.0.0 255.255.255.0 10.2.0.0 255.255.255.0\n",
            "access-list A extended permit ip 10.1.0.0 255.255.255.0 10.2.0.0 255.255.255.0\n\
             access-list B extended permit ip 10.1.0.0 255.255.255.0 10.3.0.0 255.255.0.0\n\
             crypto map M 20 match address B\ncrypto map M 20 set peer 198.51.100.2\ncrypto map M 20 set ikev2 ipsec-proposal P\n",
        ));
        let (ra, rb) = (routes(&a, &tunnels(&a)), routes(&b, &tunnels(&b)));
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(ra.len(), 1);
        assert_eq!(rb.len(), 2);
        assert_eq!(rb.get(&(ip("10.2.0.0"), 24)), Some(&Some(ip("10.1.0.1"))));
        assert_eq!(rb.get(&(ip("10.3.0.0"), 16)), Some(&Some(ip("10.1.0.1"))));
        assert_eq!(blackholes(&tunnels(&b)), vec![(ip("10.2.0.0"), 24), (ip("10.3.0.0"), 16)]);
        let pairs = inbound_drop_pairs(&tunnels(&b));
        assert_eq!(pairs[1], (vec!["10.3.0.0/16".to_string()], vec!["10.1.0.0/24".to_string()]));
        assert!(restart_required(&a, &b, &tunnels(&b), BOUND, true).is_empty());
        // Tunnel 1's policy is byte-for-byte the same: the engine keeps its SAs.
        assert_eq!(tunnels(&a)[0], tunnels(&b)[0]);
    }

    #[test]
    fn answers_and_syslog_lines() {
        let r = refusal("/etc/x.cfg", "x.cfg:3:1: error: unknown command\n");
        assert!(r.starts_with("ERROR: % Reload of /etc/x.cfg refused"));
        assert!(crate::control::is_error(&r));
        let o = Outcome { file: "f".into(), globals: vec!["timeout"], ..Default::default() };
        assert!(!crate::control::is_error(&o.text()));
        assert!(o.text().contains("global settings applied: timeout"));
        assert_eq!(executed(Source::Sighup, "/etc/h.cfg").asa(), "%ASA-5-111008: User 'SIGHUP' executed the 'reload config /etc/h.cfg' command.");
        assert_eq!(end_ok("/etc/h.cfg").asa(), "%ASA-5-111005: /etc/h.cfg end configuration: OK");
        assert_eq!(end_failed("/etc/h.cfg").asa(), "%ASA-2-111004: /etc/h.cfg end configuration: FAILED");
    }
}
