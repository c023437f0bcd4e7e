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
use std::path::Path;

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
    if old.ikev2_client_services != new.ikev2_client_services {
        out.push("crypto ikev2 enable ... client-services".into());
    }
    // Remote access: users, group policies, tunnel groups, pools and the certificate apply
    // live (`remote_access`); only the listeners themselves are fixed at start.
    if let Some(what) = listener_change(old, new) {
        out.push(what.into());
    }
    if old.metrics != new.metrics {
        out.push("metrics prometheus listen".into());
    }
    out
}

/// The remote-access listeners as they are bound at start: interface, address, TLS and DTLS
/// port. The certificate a listener presents is not part of it (replaced live).
fn listeners(c: &Config) -> Vec<(String, Ipv4Addr, u16, u16)> {
    c.anyconnect_listeners().unwrap_or_default().into_iter().map(|l| (l.nameif, l.addr, l.tls_port, l.dtls_port)).collect()
}

/// Why the remote-access listeners of `new` differ from the running ones (restart only).
fn listener_change(old: &Config, new: &Config) -> Option<&'static str> {
    let (o, n) = (listeners(old), listeners(new));
    if o == n {
        return None;
    }
    Some(if o.is_empty() {
        "remote access enabled (webvpn enable / anyconnect enable: the TLS and DTLS listeners are bound at start)"
    } else if n.is_empty() {
        "remote access disabled (webvpn enable / anyconnect enable: the service is built at start)"
    } else if o.iter().zip(&n).any(|(a, b)| a.3 != b.3) && o.len() == n.len() {
        "webvpn dtls port (the DTLS listener is bound at start)"
    } else if o.iter().zip(&n).any(|(a, b)| a.2 != b.2) && o.len() == n.len() {
        "webvpn port (the TLS listener is bound at start)"
    } else {
        "webvpn enable (the interfaces remote access listens on are bound at start)"
    })
}

/// The answer's lines for [`restart_required`], each with `FILE:LINE:COL` and the line when
/// the change is a line of the new file the operator can point at (the `webvpn` lines).
pub fn restart_lines(path: &Path, items: &[String]) -> String {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (ast, _) = config::parse_ast(&shown, &text);
    let webvpn_span = |want: fn(&config::ast::WebVpnCmd) -> bool| {
        ast.items.iter().find_map(|i| match &i.kind {
            config::ast::ItemKind::WebVpn { body } => Some(body.iter().find(|c| want(&c.node)).map_or(i.span, |c| c.span)),
            _ => None,
        })
    };
    let mut out = String::new();
    for r in items {
        let span = if r.starts_with("webvpn dtls port") {
            webvpn_span(|c| matches!(c, config::ast::WebVpnCmd::DtlsPort(_)))
        } else if r.starts_with("webvpn port") {
            webvpn_span(|c| matches!(c, config::ast::WebVpnCmd::Port(_)))
        } else if r.starts_with("webvpn enable") || r.starts_with("remote access enabled") {
            webvpn_span(|c| matches!(c, config::ast::WebVpnCmd::Enable(_)))
        } else {
            None
        };
        match span {
            Some(sp) => out.push_str(&format!("{}\n", located(&shown, &text, sp, format!("requires restart: {r}")))),
            None => out.push_str(&format!("requires restart: {r}\n")),
        }
    }
    out
}

/// A `FILE:LINE:COL: error: MESSAGE` diagnostic with the line and a caret under `span`.
fn located(file: &str, text: &str, span: config::Span, message: String) -> config::Diagnostic {
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = text.get(line_start..line_end).unwrap_or("").trim_end_matches('\r');
    let caret_len = text.get(start..span.end.clamp(start, line_end)).map_or(1, |s| s.chars().count().max(1));
    config::Diagnostic {
        severity: config::Severity::Error,
        file: file.to_string(),
        span: Some(span),
        message,
        source_line: Some(line.replace('\t', " ")),
        caret_len,
    }
}

/// Applies the remote-access part of a reload to the running service, before anything else
/// of the reload (so that a refusal here still leaves everything unchanged): the engine takes
/// the new users, tunnel groups, group policies and pools, the TLS listener the certificate
/// and key read again from their files. Refused, with `FILE:LINE:COL` for each, when a live
/// session's leased address would leave the pools of its tunnel group. Returns the lines for
/// the answer. Without a running service there is nothing to do (a change that would start
/// one was refused by [`restart_required`]).
pub(crate) fn remote_access(ra: Option<&mut crate::ra::RaHandle>, path: &Path, new: &Config, running_text: &str) -> Result<Vec<String>, String> {
    let shown = path.display().to_string();
    let Some(ra) = ra else { return Ok(Vec::new()) };
    let fail = |e: String| format!("{shown}: error: {e}\n");
    let Some(plan) = crate::daemon::plan_remote_access(new).map_err(|e| fail(e.to_string()))? else {
        return Ok(Vec::new());
    };
    let ctx = crate::ra::tls::server_context(&plan.cert_file, &plan.key_file, plan.ca_file.as_deref()).map_err(|e| fail(e.to_string()))?;
    let mut plan = plan;
    let running = ra.with_engine(|s, _| s.config().users.clone());
    keep_unchanged_passwords(&mut plan.engine, &running, &std::fs::read_to_string(path).unwrap_or_default());
    let (changes, mut notes) = match ra.reconfigure(plan.engine, ctx) {
        Ok(x) => x,
        Err(conflicts) => return Err(lease_refusal(path, &conflicts, running_text)),
    };
    let sessions = ra.with_engine(|s, now| s.sessions(now));
    let mut lines = describe(&changes);
    for u in changes.users_removed.iter().chain(&changes.users_password_changed) {
        let n = sessions.iter().filter(|s| &s.username == u).count();
        if n > 0 {
            lines.push(format!("remote access: {n} session(s) of user {u} kept until logoff (vpn-sessiondb logoff name {u} ends them)"));
        }
    }
    lines.push(format!(
        "remote access: certificate {} and key {} read again; new TLS handshakes use them, established connections keep theirs",
        plan.cert_file.display(),
        plan.key_file.display()
    ));
    lines.append(&mut notes);
    Ok(lines)
}

/// A clear-text password in the file is hashed with a fresh salt at every load, so its hash
/// never equals the running one. For each such user the running hash is kept when the clear
/// text still verifies against it (one PBKDF2 per user): the password did not change, and
/// the user's in-flight logins and the reload's answer must not say it did. A `pbkdf2` hash
/// in the file is compared as it is.
fn keep_unchanged_passwords(new: &mut anyconnect::Config, running: &[anyconnect::User], text: &str) {
    for u in &mut new.users {
        let Some(old) = running.iter().find(|o| o.name == u.name) else { continue };
        if old.password_hash == u.password_hash {
            continue;
        }
        let clear = text.lines().find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let is_hash = w.get(4).is_some_and(|f| ["pbkdf2", "encrypted", "nt-encrypted"].contains(&f.to_ascii_lowercase().as_str()));
            (w.len() >= 4 && w[0] == "username" && w[1] == u.name && w[2] == "password" && !is_hash).then(|| w[3])
        });
        if clear.is_some_and(|p| crypto::password::verify(&old.password_hash, p).unwrap_or(false)) {
            u.password_hash = old.password_hash.clone();
        }
    }
}

/// The changes in the operator's words, one line per kind that changed.
pub fn describe(c: &anyconnect::config::Changes) -> Vec<String> {
    let mut v = Vec::new();
    let mut put = |what: &str, names: &[String]| {
        if !names.is_empty() {
            v.push(format!("remote access: {what}: {}", names.join(", ")));
        }
    };
    put("users added", &c.users_added);
    put("users removed", &c.users_removed);
    put("user passwords changed", &c.users_password_changed);
    put("tunnel-groups added", &c.tunnel_groups_added);
    put("tunnel-groups removed", &c.tunnel_groups_removed);
    put("tunnel-groups changed", &c.tunnel_groups_changed);
    put("group-policies added", &c.group_policies_added);
    put("group-policies removed", &c.group_policies_removed);
    put("group-policies changed (new logins; connected sessions keep theirs)", &c.group_policies_changed);
    put("pools added", &c.pools_added);
    put("pools removed", &c.pools_removed);
    put("pools changed", &c.pools_changed);
    if c.group_list_changed {
        v.push("remote access: tunnel-group-list changed".into());
    }
    if v.is_empty() {
        v.push("remote access: settings unchanged".into());
    }
    v
}

/// The refusal for lease conflicts: one diagnostic per leased address, at the new file's
/// `ip local pool` line of the pool it came from (its range), or at the tunnel group's
/// `address-pool` line when that pool is gone, or the tunnel group's line; when the new file
/// has none of them, at the pool's line in `running` (the running configuration's text).
fn lease_refusal(path: &Path, conflicts: &[anyconnect::config::LeaseConflict], running: &str) -> String {
    use config::ast::{ItemKind, TgGeneralCmd};
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (ast, _) = config::parse_ast(&shown, &text);
    let (running_ast, _) = config::parse_ast(RUNNING_CONFIG, running);
    let mut out = String::new();
    for c in conflicts {
        let pool_span = c.pool.as_deref().and_then(|p| {
            ast.items.iter().find_map(|i| match &i.kind {
                ItemKind::IpLocalPool { name, range, .. } if name.node == p => Some(*range),
                _ => None,
            })
        });
        let group_span = || {
            ast.items.iter().find_map(|i| match &i.kind {
                ItemKind::TunnelGroupGeneral { name, body, .. } if name.node == c.tunnel_group => {
                    Some(body.iter().find(|b| matches!(b.node, TgGeneralCmd::AddressPools(_))).map_or(name.span, |b| b.span))
                }
                _ => None,
            })
        };
        let msg = format!(
            "address {} is leased to user '{}' (tunnel-group {}{}): {}; log the session off first (vpn-sessiondb logoff name {}) or keep the address in the pool",
            c.address,
            c.user,
            c.tunnel_group,
            c.pool.as_deref().map(|p| format!(", pool {p}")).unwrap_or_default(),
            c.why,
            c.user
        );
        match pool_span.or_else(group_span) {
            Some(sp) => out.push_str(&format!("{}\n", located(&shown, &text, sp, msg))),
            // Neither the pool nor the tunnel group is in the new file (both removed): point
            // at the pool's range as it runs now, in `show running-config`'s text, the only
            // place that line still exists (the file was usually edited in place).
            None => match c.pool.as_deref().and_then(|p| running_pool_span(&running_ast, p)) {
                Some(sp) => {
                    let msg = format!("{msg} ({shown} no longer configures pool {})", c.pool.as_deref().unwrap_or_default());
                    out.push_str(&format!("{}\n", located(RUNNING_CONFIG, running, sp, msg)));
                }
                None => out.push_str(&format!("{shown}: error: {msg}\n")),
            },
        }
    }
    out
}

/// The name diagnostics use for the running configuration's text (`show running-config`).
const RUNNING_CONFIG: &str = "running-config";

/// The range of `ip local pool NAME ...` in a parsed configuration.
fn running_pool_span(ast: &config::ast::Ast, pool: &str) -> Option<config::Span> {
    ast.items.iter().find_map(|i| match &i.kind {
        config::ast::ItemKind::IpLocalPool { name, range, .. } if name.node == pool => Some(*range),
        _ => None,
    })
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
    /// What the remote-access service took ([`remote_access`]).
    pub remote_access: Vec<String>,
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
        for n in &self.remote_access {
            s.push_str(&format!("  {n}\n"));
        }
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

    const RA: &str = "\
interface eth-out
 nameif outside
 ip address 198.51.100.1 255.255.255.0
access-list SPLIT standard permit 10.1.0.0 255.255.255.0
ip local pool VPNPOOL 10.99.0.100-10.99.0.199 mask 255.255.255.0
webvpn
 enable outside
 anyconnect enable
 dtls port 443
group-policy G internal
group-policy G attributes
 vpn-tunnel-protocol ssl-client
 split-tunnel-policy tunnelspecified
 split-tunnel-network-list value SPLIT
tunnel-group RA type remote-access
tunnel-group RA general-attributes
 address-pool VPNPOOL
 default-group-policy G
tunnel-group RA webvpn-attributes
 group-alias RA enable
username vpn password secret-pw
crypto ca trustpoint TP
 certificate-file /etc/holdfast/server.pem
 key-file /etc/holdfast/server.key
ssl trust-point TP outside
";

    fn ra_restart(a: &str, b: &str) -> Vec<String> {
        restart_required(&cfg(a), &cfg(b), &[], BOUND, false)
    }

    #[test]
    fn remote_access_settings_apply_live() {
        // A user, a split network, a pool, an alias, a DNS server, a new certificate file:
        // none of these needs a restart any more.
        let b = RA
            .replace("username vpn password secret-pw\n", "username vpn password secret-pw\nusername bob password other-pw\n")
            .replace("access-list SPLIT standard permit 10.1.0.0 255.255.255.0\n", "access-list SPLIT standard permit 10.1.0.0 255.255.255.0\naccess-list SPLIT standard permit 10.7.0.0 255.255.0.0\n")
            .replace("10.99.0.100-10.99.0.199", "10.99.0.100-10.99.0.250")
            .replace(" group-alias RA enable\n", " group-alias RA enable\n group-alias Staff enable\n")
            .replace(" vpn-tunnel-protocol ssl-client\n", " vpn-tunnel-protocol ssl-client\n dns-server value 10.1.0.53\n")
            .replace("/etc/holdfast/server.pem", "/etc/holdfast/server-2027.pem");
        assert!(cfg(RA) != cfg(&b));
        assert_eq!(ra_restart(RA, &b), Vec::<String>::new());
    }

    #[test]
    fn remote_access_listeners_need_a_restart_and_point_at_the_line() {
        let b = RA.replace(" dtls port 443\n", " dtls port 4443\n");
        let r = ra_restart(RA, &b);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].starts_with("webvpn dtls port"), "{r:?}");
        let dir = std::env::temp_dir().join(format!("hf-reload-ra-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("new.cfg");
        std::fs::write(&f, &b).unwrap();
        let text = restart_lines(&f, &r);
        // Line 9 is ` dtls port 4443`; the caret is under the command.
        assert!(text.starts_with(&format!("{}:9:2: error: requires restart: webvpn dtls port", f.display())), "{text}");
        assert!(text.contains("\n   dtls port 4443\n"), "{text}");

        let off = RA.replace(" anyconnect enable\n", "");
        assert!(ra_restart(RA, &off)[0].starts_with("remote access disabled"));
        assert!(ra_restart(&off, RA)[0].starts_with("remote access enabled"));
        let port = RA.replace(" dtls port 443\n", " dtls port 443\n port 8443\n");
        assert!(ra_restart(RA, &port)[0].starts_with("webvpn port"));

        // Where no line can be named (the webvpn lines are gone), the plain form.
        std::fs::write(&f, &off).unwrap();
        let text = restart_lines(&f, &ra_restart(RA, &off));
        assert!(text.starts_with("requires restart: remote access disabled"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lease_conflicts_point_at_the_pool_range() {
        let dir = std::env::temp_dir().join(format!("hf-reload-lease-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("new.cfg");
        std::fs::write(&f, RA.replace("10.99.0.100-10.99.0.199", "10.99.0.150-10.99.0.199")).unwrap();
        let c = anyconnect::config::LeaseConflict {
            user: "vpn".into(),
            address: Ipv4Addr::new(10, 99, 0, 100),
            tunnel_group: "RA".into(),
            pool: Some("VPNPOOL".into()),
            why: "no address-pool of tunnel-group RA contains it any more".into(),
        };
        let running = config::running_config(&cfg(RA));
        let text = lease_refusal(&f, std::slice::from_ref(&c), &running);
        // Line 5, column 23: the range of `ip local pool VPNPOOL ...`.
        assert!(text.starts_with(&format!("{}:5:23: error: address 10.99.0.100 is leased to user 'vpn'", f.display())), "{text}");
        assert!(text.contains(&format!("\n  {}^{}\n", " ".repeat(22), "~".repeat(22))), "{text}");
        // The pool is gone from the file: the tunnel group's address-pool line.
        std::fs::write(&f, RA.replace("ip local pool VPNPOOL 10.99.0.100-10.99.0.199 mask 255.255.255.0\n", "ip local pool P2 10.98.0.1-10.98.0.9 mask 255.255.255.0\n").replace(" address-pool VPNPOOL", " address-pool P2")).unwrap();
        let text = lease_refusal(&f, std::slice::from_ref(&c), &running);
        assert!(text.starts_with(&format!("{}:17:2: error: address 10.99.0.100", f.display())), "{text}");
        // Pool and tunnel group both gone from the new file (the lab's reload back to the
        // base file): the pool's line in the running configuration (`show running-config`),
        // since the new file has no line to point at.
        let gone = RA
            .replace("ip local pool VPNPOOL 10.99.0.100-10.99.0.199 mask 255.255.255.0\n", "")
            .replace("tunnel-group RA general-attributes\n address-pool VPNPOOL\n default-group-policy G\n", "");
        assert!(!gone.contains("VPNPOOL") && !gone.contains("RA general"), "{gone}");
        std::fs::write(&f, &gone).unwrap();
        let c = anyconnect::config::LeaseConflict { why: "tunnel-group RA is removed".into(), ..c };
        let text = lease_refusal(&f, &[c], &running);
        let (line, col) = running
            .lines()
            .enumerate()
            .find_map(|(i, l)| l.starts_with("ip local pool VPNPOOL ").then(|| (i + 1, l.find("10.99").unwrap() + 1)))
            .expect("the pool in the running configuration");
        assert!(
            text.starts_with(&format!("running-config:{line}:{col}: error: address 10.99.0.100 is leased to user 'vpn' (tunnel-group RA, pool VPNPOOL): tunnel-group RA is removed;")),
            "{text}"
        );
        assert!(text.contains(&format!("{} no longer configures pool VPNPOOL", f.display())), "{text}");
        assert!(text.contains("\n  ip local pool VPNPOOL 10.99.0.100-10.99.0.199 mask 255.255.255.0\n"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_clear_password_that_did_not_change_keeps_the_running_hash() {
        let user = |n: &str, h: &str| anyconnect::User { name: n.into(), password_hash: h.into() };
        let mut rng = crypto::SeededRandom::new(3);
        let old_hash = crypto::password::hash_with("secret-pw", &mut rng, 1000).encode();
        let running = vec![user("vpn", &old_hash), user("bob", &old_hash)];
        // As a reload parses them: fresh salts.
        let text = "username vpn password secret-pw\nusername bob password new-pw-1\n";
        let mut new = anyconnect::Config {
            users: vec![
                user("vpn", &crypto::password::hash_with("secret-pw", &mut rng, 1000).encode()),
                user("bob", &crypto::password::hash_with("new-pw-1", &mut rng, 1000).encode()),
            ],
            ..Default::default()
        };
        let before = new.users[1].password_hash.clone();
        keep_unchanged_passwords(&mut new, &running, text);
        assert_eq!(new.users[0].password_hash, old_hash, "unchanged password: running hash kept");
        assert_eq!(new.users[1].password_hash, before, "a changed password stays changed");
        let old_engine = anyconnect::Config { users: running, ..Default::default() };
        assert_eq!(old_engine.changes(&new).users_password_changed, vec!["bob"]);
    }

    #[test]
    fn remote_access_changes_are_described() {
        let c = anyconnect::config::Changes { users_added: vec!["bob".into()], pools_changed: vec!["VPNPOOL".into()], ..Default::default() };
        assert_eq!(describe(&c), vec!["remote access: users added: bob", "remote access: pools changed: VPNPOOL"]);
        assert_eq!(describe(&Default::default()), vec!["remote access: settings unchanged"]);
        let o = Outcome { file: "f".into(), remote_access: describe(&c), ..Default::default() };
        assert!(o.text().contains("\n  remote access: users added: bob\n"), "{}", o.text());
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
