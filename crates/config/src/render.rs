//! `show running-config`: canonical ASA text for a `policy::Config`, in the ASA's section order,
//! with secrets masked as the ASA masks them. The output parses back to the same `Config`
//! (the unmasked form exactly; the masked form is refused by the parser on purpose).

use crate::lower::{enc_name, split_kw, DEFAULT_SA_KILOBYTES, DEFAULT_SA_SECONDS};
use crate::parser::{fmt_hms, LEVELS, NO_REKEY_ACK};
use policy::{AclAction, Config, ConnectionType, Dpd, Integrity, Ipv4Net, Prf, TunnelGroupKind};
use std::fmt::Write as _;

/// What to print, like the arguments of `show running-config [all] [COMMAND...]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShowOptions {
    /// `all`: also print settings that have their default value (so far: sysopt).
    pub all: bool,
    /// Keep only top-level commands that start with these words (`["crypto", "map"]`), as
    /// `show running-config crypto map` does. Empty = everything.
    pub filter: Vec<String>,
    /// Print keys in clear (never for display; for saving and round-trip tests).
    pub unmasked: bool,
}

/// A top-level command with its sub-mode lines.
struct Block {
    head: String,
    children: Vec<String>,
    /// Print a `!` line after the block (the ASA does after interfaces and some modes).
    bang: bool,
}

impl Block {
    fn line(head: String) -> Self {
        Block { head, children: Vec::new(), bang: false }
    }
}

pub fn show_running_config(cfg: &Config, opts: &ShowOptions) -> String {
    let blocks = blocks(cfg, opts);
    let filter: Vec<String> = opts.filter.iter().map(|w| w.to_ascii_lowercase()).collect();
    let mut out = String::new();
    for b in blocks {
        if !filter.is_empty() && !matches_filter(&b.head, &filter) {
            continue;
        }
        out.push_str(&b.head);
        out.push('\n');
        for c in &b.children {
            out.push(' ');
            out.push_str(c);
            out.push('\n');
        }
        if b.bang && filter.is_empty() {
            out.push_str("!\n");
        }
    }
    out
}

/// `no sysopt ...` matches the filter `sysopt` too, as on the ASA.
fn matches_filter(head: &str, filter: &[String]) -> bool {
    let words: Vec<String> = head.split_whitespace().map(|w| w.to_ascii_lowercase()).collect();
    let words = if words.first().map(String::as_str) == Some("no") { &words[1..] } else { &words[..] };
    words.len() >= filter.len() && words.iter().zip(filter).all(|(w, f)| w == f)
}

fn blocks(cfg: &Config, opts: &ShowOptions) -> Vec<Block> {
    let mut v = Vec::new();
    if let Some(h) = &cfg.hostname {
        v.push(Block::line(format!("hostname {h}")));
    }
    for i in &cfg.interfaces {
        let mut b = Block { head: format!("interface {}", i.name), children: Vec::new(), bang: true };
        if i.shutdown {
            b.children.push("shutdown".into());
        }
        b.children.push(match &i.nameif {
            Some(n) => format!("nameif {n}"),
            None => "no nameif".into(),
        });
        match i.security_level {
            Some(l) => b.children.push(format!("security-level {l}")),
            None => b.children.push("no security-level".into()),
        }
        b.children.push(match i.address {
            Some(a) => format!("ip address {} {}", a.addr, a.mask()),
            None => "no ip address".into(),
        });
        v.push(b);
    }
    for acl in &cfg.access_lists {
        for e in &acl.entries {
            let action = match e.action {
                AclAction::Permit => "permit",
                AclAction::Deny => "deny",
            };
            let line = if e.standard {
                format!("access-list {} standard {action} {}", acl.name, addr(e.destination))
            } else {
                format!("access-list {} extended {action} {} {} {}", acl.name, proto(e.protocol), addr(e.source), addr(e.destination))
            };
            v.push(Block::line(line));
        }
    }
    let lg = &cfg.logging;
    let dl = policy::Logging::default();
    if lg.enabled {
        v.push(Block::line("logging enable".into()));
    }
    if lg.timestamp {
        v.push(Block::line("logging timestamp".into()));
    }
    if lg.buffered_level != dl.buffered_level {
        v.push(Block::line(format!("logging buffered {}", level(lg.buffered_level))));
    }
    if lg.trap_level != dl.trap_level || !lg.hosts.is_empty() {
        v.push(Block::line(format!("logging trap {}", level(lg.trap_level))));
    }
    for h in &lg.hosts {
        let port = if h.port == 514 { String::new() } else { format!(" udp/{}", h.port) };
        v.push(Block::line(format!("logging host {} {}{port}", h.nameif, h.addr)));
    }
    if let Some(m) = &cfg.metrics {
        let port = if m.listen.port() == policy::MetricsConfig::DEFAULT_PORT { String::new() } else { format!(" port {}", m.listen.port()) };
        v.push(Block::line(format!("metrics prometheus listen {}{port}", m.listen.ip())));
    }
    pool_lines(cfg, &mut v);
    let t = &cfg.timeouts;
    let secs = |d: Option<std::time::Duration>| fmt_hms(d.map_or(0, |d| d.as_secs()));
    v.push(Block::line(format!(
        "timeout conn {} half-closed {} udp {} icmp {}",
        secs(t.conn),
        secs(t.half_closed),
        secs(t.udp),
        fmt_hms(t.icmp.as_secs())
    )));
    for l in sysopt_lines(cfg, opts.all) {
        v.push(Block::line(l));
    }
    for p in &cfg.ipsec_proposals {
        let mut b = Block::line(format!("crypto ipsec ikev2 ipsec-proposal {}", p.name));
        b.children.push(format!("protocol esp encryption {}", join(p.encryption.iter().map(|e| enc_name(*e, true)))));
        if !p.integrity.is_empty() {
            b.children.push(format!("protocol esp integrity {}", join(p.integrity.iter().map(|i| esp_integrity(*i)))));
        }
        v.push(b);
    }
    let mut maps: Vec<&str> = Vec::new();
    for e in &cfg.crypto_maps {
        if !maps.contains(&e.map.as_str()) {
            maps.push(&e.map);
        }
    }
    for m in maps {
        for e in cfg.crypto_maps.iter().filter(|e| e.map == m) {
            let p = format!("crypto map {} {}", e.map, e.seq);
            v.push(Block::line(format!("{p} match address {}", e.match_address)));
            if let Some(g) = e.pfs {
                v.push(Block::line(format!("{p} set pfs group{}", g.number())));
            }
            match e.connection_type {
                ConnectionType::Bidirectional => {}
                ConnectionType::OriginateOnly => v.push(Block::line(format!("{p} set connection-type originate-only"))),
                ConnectionType::AnswerOnly => v.push(Block::line(format!("{p} set connection-type answer-only"))),
            }
            v.push(Block::line(format!("{p} set peer {}", join(e.peers.iter().map(|a| a.to_string())))));
            v.push(Block::line(format!("{p} set ikev2 ipsec-proposal {}", e.ikev2_proposals.join(" "))));
            if e.lifetime_seconds != DEFAULT_SA_SECONDS {
                v.push(Block::line(format!("{p} set security-association lifetime seconds {}", e.lifetime_seconds)));
            }
            match e.lifetime_kilobytes {
                Some(DEFAULT_SA_KILOBYTES) => {}
                Some(k) => v.push(Block::line(format!("{p} set security-association lifetime kilobytes {k}"))),
                None => v.push(Block::line(format!("{p} set security-association lifetime kilobytes unlimited"))),
            }
            if e.nat_t_disable {
                v.push(Block::line(format!("{p} set nat-t-disable")));
            }
            if e.force_udp_encap {
                v.push(Block::line(format!("{p} set udp-encapsulation force")));
            }
            if let Some(tp) = &e.trustpoint {
                v.push(Block::line(format!("{p} set trustpoint {tp}")));
            }
        }
        for b in cfg.crypto_map_bindings.iter().filter(|b| b.map == m) {
            v.push(Block::line(format!("crypto map {} interface {}", b.map, b.nameif)));
        }
    }
    // Bindings of maps without entries cannot come out of the parser, but keep them visible.
    for b in cfg.crypto_map_bindings.iter().filter(|b| !cfg.crypto_maps.iter().any(|e| e.map == b.map)) {
        v.push(Block::line(format!("crypto map {} interface {}", b.map, b.nameif)));
    }
    for tp in &cfg.trustpoints {
        let mut b = Block { head: format!("crypto ca trustpoint {}", tp.name), children: Vec::new(), bang: false };
        // holdfast extensions (the ASA shows `enrollment ...` and the imported certificates).
        if let Some(f) = &tp.certificate_file {
            b.children.push(format!("certificate-file {f}"));
        }
        if let Some(f) = &tp.key_file {
            b.children.push(format!("key-file {f}"));
        }
        if let Some(f) = &tp.ca_file {
            b.children.push(format!("ca-file {f}"));
        }
        v.push(b);
    }
    for p in &cfg.ikev2_policies {
        let mut b = Block::line(format!("crypto ikev2 policy {}", p.priority));
        b.children.push(format!("encryption {}", join(p.encryption.iter().map(|e| enc_name(*e, false)))));
        if !p.integrity.is_empty() {
            b.children.push(format!("integrity {}", join(p.integrity.iter().map(|i| ike_integrity(*i)))));
        }
        b.children.push(format!("group {}", join(p.groups.iter().map(|g| g.number().to_string()))));
        b.children.push(format!("prf {}", join(p.prf.iter().map(|p| prf(*p)))));
        b.children.push(match p.lifetime {
            Some(d) => format!("lifetime seconds {}", d.as_secs()),
            None => format!("lifetime none {NO_REKEY_ACK}"),
        });
        v.push(b);
    }
    for n in &cfg.ikev2_enabled_on {
        let cs = match cfg.ikev2_client_services.iter().find(|c| c.nameif == *n) {
            Some(c) => format!(" client-services port {}", c.port),
            None => String::new(),
        };
        v.push(Block::line(format!("crypto ikev2 enable {n}{cs}")));
    }
    let g = &cfg.ikev2;
    let dg = policy::Ikev2Globals::default();
    if g.cookie_challenge_percent != dg.cookie_challenge_percent {
        v.push(Block::line(format!("crypto ikev2 cookie-challenge {}", g.cookie_challenge_percent)));
    }
    if g.max_in_negotiation != dg.max_in_negotiation {
        v.push(Block::line(format!("crypto ikev2 limit max-in-negotiation-sa {}", g.max_in_negotiation)));
    }
    match g.fragmentation_mtu {
        None => v.push(Block::line("no crypto ikev2 fragmentation".into())),
        Some(m) if Some(m) != dg.fragmentation_mtu => v.push(Block::line(format!("crypto ikev2 fragmentation mtu {m}"))),
        Some(_) => {}
    }
    if g.retransmit_base != dg.retransmit_base || g.retransmit_tries != dg.retransmit_tries {
        v.push(Block::line(format!("crypto ikev2 retransmit {} {}", g.retransmit_base.as_millis(), g.retransmit_tries)));
    }
    remote_access_blocks(cfg, opts, &mut v);
    for tg in &cfg.tunnel_groups {
        let kind = match tg.kind {
            TunnelGroupKind::IpsecL2l => "ipsec-l2l",
            TunnelGroupKind::RemoteAccess => "remote-access",
        };
        // The ASA's built-in groups have no `type` line.
        let builtin = tg.kind == TunnelGroupKind::RemoteAccess && policy::BUILTIN_RA_TUNNEL_GROUPS.contains(&tg.name.as_str());
        if !builtin {
            v.push(Block::line(format!("tunnel-group {} type {kind}", tg.name)));
        }
        let (general, webvpn) = ra_tunnel_group_blocks(cfg, &tg.name);
        let printed_general = general.is_some();
        v.extend(general);
        let mut b = Block::line(format!("tunnel-group {} ipsec-attributes", tg.name));
        match tg.dpd {
            None => b.children.push("isakmp keepalive disable".into()),
            Some(d) if d != Dpd::default() => {
                b.children.push(format!("isakmp keepalive threshold {} retry {}", d.threshold.as_secs(), d.retry.as_secs()))
            }
            Some(_) => {}
        }
        let mask = |k: &policy::Secret| if opts.unmasked { k.0.clone() } else { "*****".to_string() };
        if tg.ikev2_remote_cert {
            b.children.push("ikev2 remote-authentication certificate".into());
        } else if let Some(k) = &tg.ikev2_remote_psk {
            b.children.push(format!("ikev2 remote-authentication pre-shared-key {}", mask(k)));
        }
        if let Some(tp) = &tg.ikev2_local_cert_trustpoint {
            b.children.push(format!("ikev2 local-authentication certificate {tp}"));
        } else if let Some(k) = &tg.ikev2_local_psk {
            b.children.push(format!("ikev2 local-authentication pre-shared-key {}", mask(k)));
        }
        let before = v.len();
        if !b.children.is_empty() {
            v.push(b);
        }
        v.extend(webvpn);
        // A built-in group the configuration mentioned but left at its defaults still has to
        // print something, or the rendered text would not parse back to the same model
        // (the group would vanish from it).
        if v.len() == before && !printed_general && builtin {
            v.push(Block::line(format!("tunnel-group {} general-attributes", tg.name)));
        }
    }
    v
}

/// The sysopt lines in the ASA's order; with `all`, every setting with its value exactly as
/// `show run all sysopt` prints it (reference: asa.md §1).
fn sysopt_lines(cfg: &Config, all: bool) -> Vec<String> {
    let s = &cfg.sysopt;
    let d = policy::Sysopt::default();
    let mut out = Vec::new();
    let flag = |out: &mut Vec<String>, on: bool, default: bool, text: &str| {
        if all || on != default {
            out.push(if on { text.to_string() } else { format!("no {text}") });
        }
    };
    flag(&mut out, s.timewait, d.timewait, "sysopt connection timewait");
    if all || s.tcpmss != d.tcpmss {
        out.push(format!("sysopt connection tcpmss {}", s.tcpmss));
    }
    if all || s.tcpmss_minimum != d.tcpmss_minimum {
        out.push(format!("sysopt connection tcpmss minimum {}", s.tcpmss_minimum));
    }
    flag(&mut out, s.permit_vpn, d.permit_vpn, "sysopt connection permit-vpn");
    flag(&mut out, s.reclassify_vpn, d.reclassify_vpn, "sysopt connection reclassify-vpn");
    flag(&mut out, s.preserve_vpn_flows, d.preserve_vpn_flows, "sysopt connection preserve-vpn-flows");
    // holdfast extension: printed only when on, so an ASA-compatible configuration shows
    // exactly what an ASA shows.
    if s.preserve_vpn_flows_udp {
        out.push("sysopt connection preserve-vpn-flows udp".into());
    }
    flag(&mut out, s.nodnsalias_inbound, d.nodnsalias_inbound, "sysopt nodnsalias inbound");
    flag(&mut out, s.nodnsalias_outbound, d.nodnsalias_outbound, "sysopt nodnsalias outbound");
    flag(&mut out, s.radius_ignore_secret, d.radius_ignore_secret, "sysopt radius ignore-secret");
    let mut names: Vec<&str> = cfg.interfaces.iter().filter_map(|i| i.nameif.as_deref()).collect();
    for n in &s.noproxyarp {
        if !names.contains(&n.as_str()) {
            names.push(n);
        }
    }
    for n in names {
        let on = s.noproxyarp.iter().any(|x| x == n);
        flag(&mut out, on, false, &format!("sysopt noproxyarp {n}"));
    }
    out
}

/// `ip local pool` lines (printed after logging, where the ASA prints them).
fn pool_lines(cfg: &Config, v: &mut Vec<Block>) {
    let Some(ra) = &cfg.remote_access else { return };
    for p in &ra.pools {
        v.push(Block::line(format!("ip local pool {} {}-{} mask {}", p.name, p.start, p.end, p.mask())));
    }
}

/// `ssl trust-point`, `webvpn`, `group-policy` and `username`, in the ASA's order (after the
/// crypto section, before the tunnel groups).
fn remote_access_blocks(cfg: &Config, opts: &ShowOptions, v: &mut Vec<Block>) {
    let Some(ra) = &cfg.remote_access else { return };
    for t in &ra.ssl_trustpoints {
        match &t.nameif {
            Some(n) => v.push(Block::line(format!("ssl trust-point {} {n}", t.trustpoint))),
            None => v.push(Block::line(format!("ssl trust-point {}", t.trustpoint))),
        }
    }
    let w = &ra.webvpn;
    let dw = policy::WebVpn::default();
    let mut b = Block { head: "webvpn".into(), children: Vec::new(), bang: false };
    if w.port != dw.port {
        b.children.push(format!("port {}", w.port));
    }
    for n in &w.enabled_on {
        b.children.push(format!("enable {n}"));
    }
    if w.dtls_port != dw.dtls_port {
        b.children.push(format!("dtls port {}", w.dtls_port));
    }
    if w.anyconnect_enable {
        b.children.push("anyconnect enable".into());
    }
    if w.tunnel_group_list {
        b.children.push("tunnel-group-list enable".into());
    }
    if !b.children.is_empty() {
        v.push(b);
    }
    for gp in &ra.group_policies {
        if gp.name != policy::DEFAULT_GROUP_POLICY {
            v.push(Block::line(format!("group-policy {} internal", gp.name)));
        }
        let children = group_policy_lines(&gp.attributes);
        if !children.is_empty() {
            v.push(Block { head: format!("group-policy {} attributes", gp.name), children, bang: false });
        }
    }
    for u in &ra.users {
        let pw = match &u.password_hash {
            Some(h) if opts.unmasked => format!("password {} pbkdf2", h.0),
            Some(_) => "password ***** pbkdf2".to_string(),
            None => "nopassword".to_string(),
        };
        let privilege = if u.privilege == policy::DEFAULT_USER_PRIVILEGE { String::new() } else { format!(" privilege {}", u.privilege) };
        v.push(Block::line(format!("username {} {pw}{privilege}", u.name)));
    }
}

fn group_policy_lines(a: &policy::GroupPolicyAttributes) -> Vec<String> {
    let mut out = Vec::new();
    let minutes = |d: Option<std::time::Duration>| d.map_or("none".to_string(), |d| (d.as_secs() / 60).to_string());
    let seconds = |d: Option<std::time::Duration>| d.map_or("none".to_string(), |d| d.as_secs().to_string());
    if let Some(d) = &a.dns_servers {
        out.push(if d.is_empty() { "dns-server none".into() } else { format!("dns-server value {}", join(d.iter().map(|x| x.to_string()))) });
    }
    if let Some(t) = a.vpn_idle_timeout {
        out.push(format!("vpn-idle-timeout {}", minutes(t)));
    }
    if let Some(t) = a.vpn_session_timeout {
        out.push(format!("vpn-session-timeout {}", minutes(t)));
    }
    if let Some(p) = &a.vpn_tunnel_protocols {
        out.push(format!("vpn-tunnel-protocol {}", join(p.iter().map(|p| p.keyword()))));
    }
    if let Some(p) = a.split_tunnel_policy {
        out.push(format!("split-tunnel-policy {}", split_kw(p)));
    }
    if let Some(l) = &a.split_tunnel_network_list {
        out.push(match l {
            Some(acl) => format!("split-tunnel-network-list value {acl}"),
            None => "split-tunnel-network-list none".into(),
        });
    }
    if let Some(d) = &a.default_domain {
        out.push(match d {
            Some(d) => format!("default-domain value {d}"),
            None => "default-domain none".into(),
        });
    }
    if let Some(p) = &a.address_pools {
        out.push(if p.is_empty() { "address-pools none".into() } else { format!("address-pools value {}", p.join(" ")) });
    }
    let ac = &a.anyconnect;
    let mut w = Vec::new();
    if let Some(m) = ac.mtu {
        w.push(format!("anyconnect mtu {m}"));
    }
    // holdfast extension.
    if let Some(p) = ac.mtu_policy {
        w.push(format!("anyconnect mtu-policy {}", if p == policy::MtuPolicy::Split { "split" } else { "common" }));
    }
    if let Some(d) = ac.dtls {
        w.push(format!("anyconnect ssl dtls {}", if d { "enable" } else { "none" }));
    }
    if let Some(d) = ac.df_bit_ignore {
        w.push(format!("anyconnect ssl df-bit-ignore {}", if d { "enable" } else { "disable" }));
    }
    if let Some(k) = ac.keepalive {
        w.push(format!("anyconnect ssl keepalive {}", seconds(k)));
    }
    if let Some(t) = ac.rekey_time {
        w.push(format!("anyconnect ssl rekey time {}", minutes(t)));
    }
    if let Some(m) = ac.rekey_method {
        w.push(format!("anyconnect ssl rekey method {}", m.keyword()));
    }
    if let Some(d) = ac.dpd_client {
        w.push(format!("anyconnect dpd-interval client {}", seconds(d)));
    }
    if let Some(d) = ac.dpd_gateway {
        w.push(format!("anyconnect dpd-interval gateway {}", seconds(d)));
    }
    if !w.is_empty() {
        out.push("webvpn".into());
        // Block children get one space; the nested mode gets a second.
        out.extend(w.into_iter().map(|l| format!(" {l}")));
    }
    out
}

/// `tunnel-group NAME general-attributes` / `webvpn-attributes` of a remote-access group.
fn ra_tunnel_group_blocks(cfg: &Config, name: &str) -> (Option<Block>, Option<Block>) {
    let Some(t) = cfg.remote_access.as_ref().and_then(|r| r.tunnel_group(name)) else { return (None, None) };
    let mut g = Block::line(format!("tunnel-group {name} general-attributes"));
    if !t.address_pools.is_empty() {
        g.children.push(format!("address-pool {}", t.address_pools.join(" ")));
    }
    if let Some(p) = &t.default_group_policy {
        g.children.push(format!("default-group-policy {p}"));
    }
    let mut w = Block::line(format!("tunnel-group {name} webvpn-attributes"));
    match t.authentication {
        policy::RaAuthentication::Aaa => {}
        policy::RaAuthentication::Certificate => w.children.push("authentication certificate".into()),
        policy::RaAuthentication::AaaCertificate => w.children.push("authentication aaa certificate".into()),
    }
    for a in &t.group_aliases {
        w.children.push(format!("group-alias {} {}", a.alias, if a.enabled { "enable" } else { "disable" }));
    }
    ((!g.children.is_empty()).then_some(g), (!w.children.is_empty()).then_some(w))
}

fn join<I: IntoIterator<Item = S>, S: AsRef<str>>(it: I) -> String {
    let mut s = String::new();
    for (i, x) in it.into_iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(x.as_ref());
    }
    s
}

fn addr(n: Ipv4Net) -> String {
    if n.prefix_len == 0 {
        "any4".into()
    } else if n.prefix_len == 32 {
        format!("host {}", n.addr)
    } else {
        let mut s = String::new();
        let _ = write!(s, "{} {}", n.network(), n.mask());
        s
    }
}

fn proto(p: Option<u8>) -> String {
    match p {
        None => "ip".into(),
        Some(1) => "icmp".into(),
        Some(6) => "tcp".into(),
        Some(17) => "udp".into(),
        Some(47) => "gre".into(),
        Some(50) => "esp".into(),
        Some(51) => "ah".into(),
        Some(132) => "sctp".into(),
        Some(n) => n.to_string(),
    }
}

fn level(l: u8) -> &'static str {
    LEVELS.get(usize::from(l)).copied().unwrap_or("debugging")
}

fn esp_integrity(i: Integrity) -> &'static str {
    match i {
        Integrity::Null => "null",
        Integrity::Sha1 => "sha-1",
        Integrity::Sha256 => "sha-256",
        Integrity::Sha384 => "sha-384",
        Integrity::Sha512 => "sha-512",
    }
}

fn ike_integrity(i: Integrity) -> &'static str {
    match i {
        Integrity::Null => "null",
        Integrity::Sha1 => "sha",
        Integrity::Sha256 => "sha256",
        Integrity::Sha384 => "sha384",
        Integrity::Sha512 => "sha512",
    }
}

fn prf(p: Prf) -> &'static str {
    match p {
        Prf::Sha1 => "sha",
        Prf::Sha256 => "sha256",
        Prf::Sha384 => "sha384",
        Prf::Sha512 => "sha512",
    }
}
