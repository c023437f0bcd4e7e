//! AST -> `policy::Config`: merges repeated mode entries the way the ASA does (re-entering
//! `interface X` or `crypto ikev2 policy 10` modifies it), fills ASA defaults, and checks every
//! cross-reference with the span of the word that refers.

use crate::ast::*;
use crate::diag::{Issue, Span};
use policy::{
    AccessList, AclAction, AclEntry, ClientServices, Config, CryptoMapBinding, CryptoMapEntry, Dpd, Encryption, Ikev2Policy,
    Integrity, Interface, IpsecProposal, LoggingHost, Prf, Secret, TunnelGroup, TunnelGroupKind,
};
use policy::{
    AddressPool, GroupAlias, GroupPolicy, GroupPolicyAttributes, Ipv4Net, LocalUser, RaAuthentication, RaTunnelGroup, RemoteAccess,
    SplitTunnelPolicy, SslTrustpoint, WebVpn, DEFAULT_GROUP_POLICY,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// ASA default IPsec SA lifetime (`crypto ipsec security-association lifetime`).
pub(crate) const DEFAULT_SA_SECONDS: u64 = 28_800;
pub(crate) const DEFAULT_SA_KILOBYTES: u64 = 4_608_000;
/// ASA default IKEv2 SA lifetime (`crypto ikev2 policy` / `lifetime seconds`).
pub(crate) const DEFAULT_IKE_LIFETIME: Duration = Duration::from_secs(86_400);
/// Linux IFNAMSIZ - 1.
const MAX_IFNAME: usize = 15;

pub(crate) struct Lowered {
    pub config: Config,
    pub issues: Vec<Issue>,
    /// ACL lines holdfast cannot represent, in ACLs no crypto map uses: outside holdfast's scope.
    pub ignored: Vec<Ignored>,
}

pub(crate) fn lower(ast: &Ast) -> Lowered {
    let mut l = Lowerer {
        ast,
        cfg: Config::default(),
        issues: Vec::new(),
        ignored: Vec::new(),
        iface_spans: Vec::new(),
        nameif_refs: Vec::new(),
        acl_unsupported: Vec::new(),
        acl_seen: Default::default(),
        acl_denies: Vec::new(),
        ike: BTreeMap::new(),
        proposals: Vec::new(),
        global_lifetime: Lifetime::default(),
        maps: BTreeMap::new(),
        bindings: Vec::new(),
        tgs: Vec::new(),
        trustpoints: Vec::new(),
        ra: RaAcc::default(),
        ra_webvpn_span: None,
    };
    l.run();
    Lowered { config: l.cfg, issues: l.issues, ignored: l.ignored }
}

#[derive(Default)]
struct IkePolicyAcc {
    span: Span,
    encryption: Option<(Vec<Encryption>, Span)>,
    integrity: Option<(Vec<Integrity>, Span)>,
    groups: Option<Vec<policy::DhGroup>>,
    prf: Option<Vec<Prf>>,
    lifetime: Option<(Option<Duration>, Span)>,
}

#[derive(Default)]
struct ProposalAcc {
    span: Span,
    encryption: Option<Vec<Encryption>>,
    integrity: Option<(Vec<Integrity>, Span)>,
}

#[derive(Default)]
struct MapEntryAcc {
    span: Span,
    match_address: Option<Spanned<String>>,
    peers: Vec<Spanned<std::net::IpAddr>>,
    proposals: Vec<Spanned<String>>,
    pfs: Option<policy::DhGroup>,
    lifetime: Lifetime,
    connection_type: policy::ConnectionType,
    nat_t_disable: bool,
    force_udp_encap: bool,
    trustpoint: Option<Spanned<String>>,
}

struct TgAcc {
    span: Span,
    kind: Option<TunnelGroupKind>,
    attr_span: Option<Span>,
    local: Option<Secret>,
    remote: Option<Secret>,
    dpd: Option<Dpd>,
    /// `ikev2 local-authentication certificate TP` (replaces a local PSK and vice versa).
    local_cert: Option<Spanned<String>>,
    /// Span of `ikev2 remote-authentication certificate` (replaces a remote PSK and vice versa).
    remote_cert: Option<Span>,
}

#[derive(Default)]
struct TrustpointAcc {
    span: Span,
    certificate_file: Option<String>,
    key_file: Option<String>,
    ca_file: Option<String>,
}

struct Lowerer<'a> {
    ast: &'a Ast,
    cfg: Config,
    issues: Vec<Issue>,
    ignored: Vec<Ignored>,
    iface_spans: Vec<Span>,
    /// nameif references to check once all interfaces are known.
    nameif_refs: Vec<Spanned<String>>,
    acl_unsupported: Vec<(String, Unsupported)>,
    /// Every ACL name written, even if none of its lines could be kept.
    acl_seen: std::collections::BTreeSet<String>,
    /// Deny lines (ACL name, line span), reported if the ACL is a crypto ACL.
    acl_denies: Vec<(String, Span)>,
    ike: BTreeMap<u32, IkePolicyAcc>,
    proposals: Vec<(String, ProposalAcc)>,
    global_lifetime: Lifetime,
    maps: BTreeMap<(String, u32), MapEntryAcc>,
    bindings: Vec<(Spanned<String>, Spanned<String>)>,
    tgs: Vec<(String, TgAcc)>,
    trustpoints: Vec<(String, TrustpointAcc)>,
    ra: RaAcc,
    /// First `webvpn` `enable NAMEIF`, where a listener problem is reported.
    ra_webvpn_span: Option<Span>,
}

impl<'a> Lowerer<'a> {
    fn run(&mut self) {
        for item in &self.ast.items {
            self.item(item);
        }
        self.finish_acls();
        self.finish_ike_policies();
        self.finish_proposals();
        self.finish_trustpoints();
        self.finish_tunnel_groups();
        self.finish_crypto_maps();
        self.finish_remote_access();
        self.check_nameifs();
        self.check_tunnels();
    }

    fn failed(&self, name: &str) -> bool {
        self.ast.failed_names.contains(name)
    }

    fn item(&mut self, item: &Item) {
        let cfg = &mut self.cfg;
        match &item.kind {
            ItemKind::Hostname(h) => cfg.hostname = Some(h.node.clone()),
            ItemKind::Interface { name, body } => {
                let idx = match cfg.interfaces.iter().position(|i| i.name == name.node) {
                    Some(i) => i,
                    None => {
                        cfg.interfaces.push(Interface { name: name.node.clone(), nameif: None, address: None, security_level: None, shutdown: false });
                        self.iface_spans.push(name.span);
                        cfg.interfaces.len() - 1
                    }
                };
                for cmd in body {
                    match &cmd.node {
                        IfaceCmd::Nameif(n) => {
                            // ASA: naming an interface sets its security level unless one is
                            // configured: 100 for `inside`, 0 for any other name.
                            if let Some(n) = n {
                                if cfg.interfaces[idx].security_level.is_none() && !dup_nameif(&cfg.interfaces, idx, &n.node) {
                                    cfg.interfaces[idx].security_level = Some(if n.node == "inside" { 100 } else { 0 });
                                }
                            }
                            if let Some(n) = n {
                                let dup = cfg.interfaces.iter().enumerate().find(|(i, x)| *i != idx && x.nameif.as_deref() == Some(n.node.as_str()));
                                if let Some((_, other)) = dup {
                                    let msg = format!("nameif {} is already used by interface {}", n.node, other.name);
                                    self.issues.push(Issue::error(n.span, msg));
                                    continue;
                                }
                            }
                            cfg.interfaces[idx].nameif = n.as_ref().map(|n| n.node.clone());
                        }
                        IfaceCmd::IpAddress(a) => cfg.interfaces[idx].address = *a,
                        IfaceCmd::SecurityLevel(s) => cfg.interfaces[idx].security_level = *s,
                        IfaceCmd::Shutdown(s) => cfg.interfaces[idx].shutdown = *s,
                    }
                }
            }
            ItemKind::AccessList { name, entry } => {
                self.acl_seen.insert(name.node.clone());
                match &entry.body {
                    Ok(bodies) => {
                        let idx = match cfg.access_lists.iter().position(|a| a.name == name.node) {
                            Some(i) => i,
                            None => {
                                cfg.access_lists.push(AccessList { name: name.node.clone(), entries: Vec::new() });
                                cfg.access_lists.len() - 1
                            }
                        };
                        if entry.action == AclAction::Deny {
                            self.acl_denies.push((name.node.clone(), item.span));
                        }
                        for b in bodies {
                            cfg.access_lists[idx].entries.push(AclEntry {
                                action: entry.action,
                                protocol: b.protocol,
                                source: b.source,
                                destination: b.destination,
                                standard: entry.standard,
                            });
                        }
                    }
                    Err(u) => self.acl_unsupported.push((name.node.clone(), u.clone())),
                }
            }
            ItemKind::AccessListRemark { name } => {
                self.acl_seen.insert(name.node.clone());
            }
            ItemKind::Logging(cmd) => match cmd {
                LoggingCmd::Enable(b) => cfg.logging.enabled = *b,
                LoggingCmd::Timestamp(b) => cfg.logging.timestamp = *b,
                LoggingCmd::Trap(l) => cfg.logging.trap_level = *l,
                LoggingCmd::Buffered(l) => cfg.logging.buffered_level = *l,
                LoggingCmd::Host { nameif, addr, port } => {
                    self.nameif_refs.push(nameif.clone());
                    cfg.logging.hosts.retain(|h| !(h.nameif == nameif.node && h.addr == *addr));
                    cfg.logging.hosts.push(LoggingHost { nameif: nameif.node.clone(), addr: *addr, port: *port });
                }
            },
            ItemKind::Metrics { listen } => cfg.metrics = Some(policy::MetricsConfig { listen: *listen }),
            ItemKind::Timeout(settings) => {
                for s in settings {
                    let v = (!s.value.is_zero()).then_some(s.value);
                    match s.kind {
                        TimeoutKind::Conn => cfg.timeouts.conn = v,
                        TimeoutKind::HalfClosed => cfg.timeouts.half_closed = v,
                        TimeoutKind::Udp => cfg.timeouts.udp = v,
                        TimeoutKind::Icmp => cfg.timeouts.icmp = s.value,
                    }
                }
            }
            ItemKind::Sysopt { no, opt } => {
                let on = !no;
                let s = &mut cfg.sysopt;
                match opt {
                    SysoptCmd::Timewait => s.timewait = on,
                    SysoptCmd::Tcpmss(v) => s.tcpmss = *v,
                    SysoptCmd::TcpmssMinimum(v) => s.tcpmss_minimum = *v,
                    SysoptCmd::PermitVpn => s.permit_vpn = on,
                    SysoptCmd::ReclassifyVpn => s.reclassify_vpn = on,
                    SysoptCmd::PreserveVpnFlows => {
                        s.preserve_vpn_flows = on;
                        if !on {
                            s.preserve_vpn_flows_udp = false;
                        }
                    }
                    SysoptCmd::PreserveVpnFlowsUdp => {
                        s.preserve_vpn_flows_udp = on;
                        if on {
                            s.preserve_vpn_flows = true;
                        }
                    }
                    SysoptCmd::NodnsaliasInbound => s.nodnsalias_inbound = on,
                    SysoptCmd::NodnsaliasOutbound => s.nodnsalias_outbound = on,
                    SysoptCmd::RadiusIgnoreSecret => s.radius_ignore_secret = on,
                    SysoptCmd::Noproxyarp(n) => {
                        self.nameif_refs.push(n.clone());
                        s.noproxyarp.retain(|x| *x != n.node);
                        if on {
                            s.noproxyarp.push(n.node.clone());
                        }
                    }
                }
            }
            ItemKind::Ikev2Policy { priority, body } => {
                let acc = self.ike.entry(priority.node).or_insert_with(|| IkePolicyAcc { span: item.span, ..Default::default() });
                for cmd in body {
                    match &cmd.node {
                        IkePolicyCmd::Encryption(v) if !v.is_empty() => acc.encryption = Some((v.clone(), cmd.span)),
                        IkePolicyCmd::Integrity(v) if !v.is_empty() => acc.integrity = Some((v.clone(), cmd.span)),
                        IkePolicyCmd::Group(v) if !v.is_empty() => acc.groups = Some(v.clone()),
                        IkePolicyCmd::Prf(v) if !v.is_empty() => acc.prf = Some(v.clone()),
                        IkePolicyCmd::Lifetime(v) => acc.lifetime = Some((*v, cmd.span)),
                        IkePolicyCmd::Encryption(_) | IkePolicyCmd::Integrity(_) | IkePolicyCmd::Group(_) | IkePolicyCmd::Prf(_) => {}
                    }
                }
            }
            ItemKind::Ikev2Enable { nameif, client_services } => {
                self.nameif_refs.push(nameif.clone());
                if !cfg.ikev2_enabled_on.contains(&nameif.node) {
                    cfg.ikev2_enabled_on.push(nameif.node.clone());
                }
                cfg.ikev2_client_services.retain(|c| c.nameif != nameif.node);
                if let Some(p) = client_services {
                    cfg.ikev2_client_services.push(ClientServices { nameif: nameif.node.clone(), port: p.node });
                }
            }
            ItemKind::Ikev2CookieChallenge(n) => cfg.ikev2.cookie_challenge_percent = n.node,
            ItemKind::Ikev2MaxInNegotiation(n) => cfg.ikev2.max_in_negotiation = n.node,
            ItemKind::Ikev2Fragmentation { enabled, mtu } => {
                cfg.ikev2.fragmentation_mtu = match (enabled, mtu) {
                    (false, _) => None,
                    (true, Some(m)) => Some(m.node),
                    (true, None) => Some(cfg.ikev2.fragmentation_mtu.unwrap_or(policy::Ikev2Globals::default().fragmentation_mtu.unwrap_or(576))),
                }
            }
            ItemKind::Ikev2Retransmit { base_ms, tries } => {
                cfg.ikev2.retransmit_base = Duration::from_millis(u64::from(base_ms.node));
                cfg.ikev2.retransmit_tries = tries.node;
            }
            ItemKind::IpsecProposal { name, body } => {
                let idx = match self.proposals.iter().position(|(n, _)| *n == name.node) {
                    Some(i) => i,
                    None => {
                        self.proposals.push((name.node.clone(), ProposalAcc { span: name.span, ..Default::default() }));
                        self.proposals.len() - 1
                    }
                };
                let acc = &mut self.proposals[idx].1;
                for cmd in body {
                    match &cmd.node {
                        ProposalCmd::Encryption(v) if !v.is_empty() => acc.encryption = Some(v.clone()),
                        ProposalCmd::Integrity(v) if !v.is_empty() => acc.integrity = Some((v.clone(), cmd.span)),
                        ProposalCmd::Encryption(_) | ProposalCmd::Integrity(_) => {}
                    }
                }
            }
            ItemKind::IpsecGlobalLifetime(lt) => {
                if lt.seconds.is_some() {
                    self.global_lifetime.seconds = lt.seconds;
                }
                if lt.kilobytes.is_some() {
                    self.global_lifetime.kilobytes = lt.kilobytes;
                }
            }
            ItemKind::CryptoMap { map, seq, cmd } => {
                let acc = self
                    .maps
                    .entry((map.node.clone(), seq.node))
                    .or_insert_with(|| MapEntryAcc { span: item.span, ..Default::default() });
                match cmd {
                    CryptoMapCmd::MatchAddress(a) => acc.match_address = Some(a.clone()),
                    CryptoMapCmd::Peer(p) => acc.peers = p.clone(),
                    CryptoMapCmd::Ikev2Proposals(p) => acc.proposals = p.clone(),
                    CryptoMapCmd::Pfs(g) => acc.pfs = Some(*g),
                    CryptoMapCmd::Lifetime(lt) => {
                        if lt.seconds.is_some() {
                            acc.lifetime.seconds = lt.seconds;
                        }
                        if lt.kilobytes.is_some() {
                            acc.lifetime.kilobytes = lt.kilobytes;
                        }
                    }
                    CryptoMapCmd::ConnectionType(t) => acc.connection_type = *t,
                    CryptoMapCmd::NatTDisable => acc.nat_t_disable = true,
                    CryptoMapCmd::ForceUdpEncap => acc.force_udp_encap = true,
                    CryptoMapCmd::Trustpoint(tp) => acc.trustpoint = Some(tp.clone()),
                }
            }
            ItemKind::CryptoMapInterface { map, nameif } => {
                self.nameif_refs.push(nameif.clone());
                // An interface carries one crypto map; binding another replaces it (ASA).
                self.bindings.retain(|(_, n)| n.node != nameif.node);
                self.bindings.push((map.clone(), nameif.clone()));
            }
            ItemKind::TunnelGroupType { name, kind } => {
                let acc = self.tg(name);
                acc.kind = Some(kind.node);
            }
            ItemKind::TunnelGroupIpsec { name, body } => {
                let acc = self.tg(name);
                acc.attr_span.get_or_insert(name.span);
                for cmd in body {
                    match &cmd.node {
                        // One method per direction: the last line written wins (ASA).
                        TgIpsecCmd::LocalPsk(k) => {
                            acc.local = Some(k.clone());
                            acc.local_cert = None;
                        }
                        TgIpsecCmd::RemotePsk(k) => {
                            acc.remote = Some(k.clone());
                            acc.remote_cert = None;
                        }
                        TgIpsecCmd::LocalCert(tp) => {
                            acc.local_cert = Some(tp.clone());
                            acc.local = None;
                        }
                        TgIpsecCmd::RemoteCert => {
                            acc.remote_cert = Some(cmd.span);
                            acc.remote = None;
                        }
                        TgIpsecCmd::Keepalive(d) => acc.dpd = *d,
                    }
                }
            }
            ItemKind::TunnelGroupGeneral { .. }
            | ItemKind::TunnelGroupWebvpn { .. }
            | ItemKind::IpLocalPool { .. }
            | ItemKind::WebVpn { .. }
            | ItemKind::GroupPolicyInternal { .. }
            | ItemKind::GroupPolicyAttributes { .. }
            | ItemKind::Username { .. }
            | ItemKind::SslTrustpoint { .. } => {
                self.ra_item(item);
            }
            ItemKind::Trustpoint { name, body } => {
                // Re-entering `crypto ca trustpoint X` modifies it.
                let idx = match self.trustpoints.iter().position(|(n, _)| *n == name.node) {
                    Some(i) => i,
                    None => {
                        self.trustpoints.push((name.node.clone(), TrustpointAcc { span: name.span, ..Default::default() }));
                        self.trustpoints.len() - 1
                    }
                };
                let acc = &mut self.trustpoints[idx].1;
                for cmd in body {
                    match &cmd.node {
                        TrustpointCmd::CertificateFile(p) => acc.certificate_file = Some(p.node.clone()),
                        TrustpointCmd::KeyFile(p) => acc.key_file = Some(p.node.clone()),
                        TrustpointCmd::CaFile(p) => acc.ca_file = Some(p.node.clone()),
                    }
                }
            }
        }
    }

    fn tg(&mut self, name: &Spanned<String>) -> &mut TgAcc {
        let idx = match self.tgs.iter().position(|(n, _)| *n == name.node) {
            Some(i) => i,
            None => {
                let acc = TgAcc {
                    span: name.span,
                    kind: None,
                    attr_span: None,
                    local: None,
                    remote: None,
                    dpd: Some(Dpd::default()),
                    local_cert: None,
                    remote_cert: None,
                };
                self.tgs.push((name.node.clone(), acc));
                self.tgs.len() - 1
            }
        };
        &mut self.tgs[idx].1
    }

    fn finish_acls(&mut self) {
        let used: Vec<String> = self.maps.values().filter_map(|m| m.match_address.as_ref().map(|a| a.node.clone())).collect();
        for (acl, span) in std::mem::take(&mut self.acl_denies) {
            if used.contains(&acl) {
                // RFC 7296 traffic selectors can only say what to protect; an ASA deny line
                // (exempt from encryption) has no equivalent, so say that it has no effect.
                self.issues.push(Issue::warning(span, format!(
                    "deny lines in crypto access-list {acl} are not used: holdfast negotiates the permit lines as traffic selectors"
                )));
            }
        }
        let split_lists: Vec<&str> = self
            .ast
            .items
            .iter()
            .filter_map(|i| match &i.kind {
                ItemKind::GroupPolicyAttributes { body, .. } => Some(body),
                _ => None,
            })
            .flatten()
            .filter_map(|c| match &c.node {
                GpCmd::SplitTunnelNetworkList(Some(n)) => Some(n.node.as_str()),
                _ => None,
            })
            .collect();
        let mut dropped: Vec<String> = Vec::new();
        // The unrepresentable lines of dropped lists keep their precise span and reason.
        let mut dropped_lines: Vec<(u32, Ignored)> = Vec::new();
        for (acl, u) in std::mem::take(&mut self.acl_unsupported) {
            let ignored = Ignored { span: u.span, what: format!("{} in access-list {acl}", u.what) };
            if used.contains(&acl) {
                let msg = format!("access-list {acl} is a crypto ACL, and holdfast cannot turn {} into traffic selectors", u.what);
                self.issues.push(Issue::error(u.span, msg));
            } else if split_lists.contains(&acl.as_str()) {
                self.ignored.push(ignored);
            } else {
                dropped_lines.push((u.span.line, ignored));
                if !dropped.contains(&acl) {
                    dropped.push(acl);
                }
            }
        }
        // An access list nothing in holdfast uses (an interface ACL of a pasted ASA
        // configuration) with lines holdfast cannot represent: keeping only the representable
        // lines would show an ACL with another meaning (a final `deny ip any any` without the
        // permits before it), so the whole list is outside scope.
        for acl in dropped {
            self.cfg.access_lists.retain(|a| a.name != acl);
            for i in &self.ast.items {
                if let ItemKind::AccessList { name, .. } | ItemKind::AccessListRemark { name } = &i.kind {
                    if name.node == acl {
                        let precise = dropped_lines.iter().find(|(l, _)| *l == name.span.line).map(|(_, i)| i.clone());
                        self.ignored.push(precise.unwrap_or_else(|| Ignored { span: name.span, what: format!("`access-list {acl}`") }));
                    }
                }
            }
        }
    }

    fn finish_ike_policies(&mut self) {
        let mut out = Vec::new();
        for (prio, acc) in &self.ike {
            let skip = self.ast.failed_lines.contains(&acc.span.line);
            let head = acc.span;
            let Some((encryption, _)) = acc.encryption.clone() else {
                if !skip {
                    self.issues.push(Issue::error(head, format!("crypto ikev2 policy {prio} has no `encryption` (for example `encryption aes-gcm-256`)")));
                }
                continue;
            };
            let all_aead = encryption.iter().all(|e| e.is_aead());
            let cbc = encryption.iter().find(|e| !e.is_aead()).copied();
            let integrity = match &acc.integrity {
                None if all_aead => vec![Integrity::Null],
                None => {
                    if !skip {
                        self.issues.push(Issue::error(head, format!(
                            "crypto ikev2 policy {prio} has no `integrity`; {} needs one (for example `integrity sha256`)",
                            enc_name(cbc.unwrap_or(Encryption::AesCbc256), false)
                        )));
                    }
                    continue;
                }
                Some((v, span)) => {
                    if let Some(c) = cbc {
                        if v.iter().all(|i| *i == Integrity::Null) {
                            self.issues.push(Issue::error(*span, format!(
                                "integrity null is only valid with AES-GCM; {} needs sha256 (or sha, sha384, sha512)",
                                enc_name(c, false)
                            )));
                            continue;
                        }
                    }
                    v.clone()
                }
            };
            let Some(groups) = acc.groups.clone() else {
                if !skip {
                    self.issues.push(Issue::error(head, format!("crypto ikev2 policy {prio} has no `group` (for example `group 19 14`)")));
                }
                continue;
            };
            let prf = match &acc.prf {
                Some(p) => p.clone(),
                // ASA: without `prf`, the integrity algorithm's hash is the PRF.
                None => {
                    let p: Vec<Prf> = integrity.iter().filter_map(|i| prf_of(*i)).collect();
                    if p.is_empty() {
                        if !skip {
                            self.issues.push(Issue::error(head, format!("crypto ikev2 policy {prio} needs `prf` (for example `prf sha256`) when integrity is null")));
                        }
                        continue;
                    }
                    p
                }
            };
            out.push(Ikev2Policy {
                priority: *prio,
                encryption,
                integrity,
                groups,
                prf,
                lifetime: acc.lifetime.map_or(Some(DEFAULT_IKE_LIFETIME), |(l, _)| l),
            });
        }
        self.cfg.ikev2_policies = out;
    }

    fn finish_proposals(&mut self) {
        for (name, acc) in &self.proposals {
            let skip = self.ast.failed_lines.contains(&acc.span.line) || self.failed(name);
            let Some(encryption) = acc.encryption.clone() else {
                if !skip {
                    self.issues.push(Issue::error(acc.span, format!("ipsec-proposal {name} has no `protocol esp encryption`")));
                }
                continue;
            };
            let integrity = acc.integrity.as_ref().map(|(v, _)| v.clone()).unwrap_or_default();
            // ASA semantics: `protocol esp integrity` applies to the non-AEAD ciphers only, so an
            // AES-GCM-only proposal with a hash listed is accepted (the hash is simply unused).
            if let Some(c) = encryption.iter().find(|e| !e.is_aead()) {
                if !integrity.iter().any(|i| *i != Integrity::Null) {
                    let span = acc.integrity.as_ref().map_or(acc.span, |(_, s)| *s);
                    if !skip {
                        self.issues.push(Issue::error(span, format!(
                            "ipsec-proposal {name}: {} needs an integrity algorithm; add `protocol esp integrity sha-256`",
                            enc_name(*c, true)
                        )));
                    }
                    continue;
                }
            }
            self.cfg.ipsec_proposals.push(IpsecProposal { name: name.clone(), encryption, integrity });
        }
    }

    fn finish_trustpoints(&mut self) {
        for (name, acc) in &self.trustpoints {
            for f in [&acc.certificate_file, &acc.key_file, &acc.ca_file].into_iter().flatten() {
                if !f.starts_with('/') {
                    self.issues.push(Issue::warning(
                        acc.span,
                        format!("crypto ca trustpoint {name}: `{f}` is a relative path, resolved against the daemon's working directory; write an absolute path"),
                    ));
                }
            }
            // An ASA-enrolled trustpoint nothing in holdfast's scope uses (Smart Call Home,
            // ASDM launcher, ...): the whole block is outside scope, like its enrollment lines
            // the parser already counted. A referenced one is kept: the command that uses it
            // says what is missing and what follows.
            let no_files = acc.certificate_file.is_none() && acc.key_file.is_none() && acc.ca_file.is_none();
            if no_files && !self.trustpoint_referenced(name) {
                self.ignored.push(Ignored { span: acc.span, what: format!("`crypto ca trustpoint {name}`") });
                continue;
            }
            self.cfg.trustpoints.push(policy::Trustpoint {
                name: name.clone(),
                certificate_file: acc.certificate_file.clone(),
                key_file: acc.key_file.clone(),
                ca_file: acc.ca_file.clone(),
            });
        }
    }

    /// Whether a supported command names trustpoint `name` (`ssl trust-point`, `set trustpoint`,
    /// `ikev2 local-authentication certificate`).
    fn trustpoint_referenced(&self, name: &str) -> bool {
        self.ast.items.iter().any(|i| match &i.kind {
            ItemKind::SslTrustpoint { trustpoint, .. } => trustpoint.node == name,
            ItemKind::CryptoMap { cmd: CryptoMapCmd::Trustpoint(t), .. } => t.node == name,
            ItemKind::TunnelGroupIpsec { body, .. } => body.iter().any(|c| matches!(&c.node, TgIpsecCmd::LocalCert(t) if t.node == name)),
            _ => false,
        })
    }

    /// A trustpoint that signs for us must exist and name its certificate and key files.
    fn check_signing_trustpoint(&mut self, tp: &Spanned<String>) {
        if self.failed(&tp.node) {
            return;
        }
        if let Some(msg) = signing_trustpoint_problem(&self.cfg, &tp.node) {
            self.issues.push(Issue::error(tp.span, msg));
        }
    }

    fn finish_tunnel_groups(&mut self) {
        let mut signing: Vec<Spanned<String>> = Vec::new();
        for (name, acc) in &self.tgs {
            if let Some(tp) = &acc.local_cert {
                signing.push(tp.clone());
            }
            if let Some(span) = acc.remote_cert {
                // A trustpoint block with an error may have lost its `ca-file` line: that error
                // was reported already.
                let tp_failed = self.trustpoints.iter().any(|(n, _)| self.failed(n));
                if !tp_failed && !self.cfg.trustpoints.iter().any(|t| t.ca_file.is_some()) {
                    self.issues.push(Issue::error(
                        span,
                        format!("tunnel-group {name}: `ikev2 remote-authentication certificate` needs a `crypto ca trustpoint` with a `ca-file` (the CA that issued the peer's certificate)"),
                    ));
                }
            }
            // The ASA's built-in remote-access groups exist without a `type` line.
            let builtin = policy::BUILTIN_RA_TUNNEL_GROUPS.contains(&name.as_str());
            let Some(kind) = acc.kind.or(builtin.then_some(TunnelGroupKind::RemoteAccess)) else {
                if !self.failed(name) {
                    let span = acc.attr_span.unwrap_or(acc.span);
                    let ra_attrs = self.ra.tgs.iter().any(|(n, t)| n == name && (t.webvpn_span.is_some() || !t.pools.is_empty() || t.default_gp.is_some()));
                    let kind = if ra_attrs { "remote-access" } else { "ipsec-l2l" };
                    self.issues.push(Issue::error(span, format!("tunnel-group {name} has no `tunnel-group {name} type {kind}`")));
                }
                continue;
            };
            self.cfg.tunnel_groups.push(TunnelGroup {
                name: name.clone(),
                kind,
                ikev2_local_psk: acc.local.clone(),
                ikev2_remote_psk: acc.remote.clone(),
                dpd: acc.dpd,
                ikev2_local_cert_trustpoint: acc.local_cert.as_ref().map(|t| t.node.clone()),
                ikev2_remote_cert: acc.remote_cert.is_some(),
            });
        }
        for tp in signing {
            self.check_signing_trustpoint(&tp);
        }
    }

    fn finish_crypto_maps(&mut self) {
        let bound: Vec<String> = self.bindings.iter().map(|(m, _)| m.node.clone()).collect();
        for ((map, seq), acc) in &self.maps {
            let mut ok = true;
            let head_failed = self.ast.failed_names.contains(map);
            let mut err = |issues: &mut Vec<Issue>, span: Span, msg: String, suppress: bool| {
                ok = false;
                if !suppress {
                    issues.push(Issue::error(span, msg));
                }
            };
            let label = format!("crypto map {map} {seq}");
            match &acc.match_address {
                None => err(&mut self.issues, acc.span, format!("{label} has no `match address` (the crypto ACL)"), head_failed),
                Some(a) => match self.cfg.access_list(&a.node) {
                    None if !self.acl_seen.contains(&a.node) => {
                        err(&mut self.issues, a.span, format!("access-list {} is not defined", a.node), self.ast.failed_names.contains(&a.node))
                    }
                    None => {
                        let failed = self.ast.failed_names.contains(&a.node) || self.issues.iter().any(|i| i.message.contains(&format!("access-list {} is a crypto ACL", a.node)));
                        err(&mut self.issues, a.span, format!("access-list {} has no usable permit entry for the tunnel", a.node), failed)
                    }
                    Some(acl) if !acl.entries.iter().any(|e| e.action == AclAction::Permit) => {
                        let failed = self.ast.failed_names.contains(&a.node) || self.issues.iter().any(|i| i.message.contains(&format!("access-list {} is a crypto ACL", a.node)));
                        err(&mut self.issues, a.span, format!("access-list {} has no usable permit entry for the tunnel", a.node), failed)
                    }
                    Some(_) => {}
                },
            }
            if acc.peers.is_empty() {
                err(&mut self.issues, acc.span, format!("{label} has no `set peer`"), head_failed);
            }
            for p in &acc.peers {
                let pname = p.node.to_string();
                match self.cfg.tunnel_group(&pname) {
                    None => err(
                        &mut self.issues,
                        p.span,
                        format!("no tunnel-group for peer {pname} (add `tunnel-group {pname} type ipsec-l2l` and its ipsec-attributes)"),
                        self.ast.failed_names.contains(&pname),
                    ),
                    Some(tg) => {
                        let suppress = self.ast.failed_names.contains(&pname);
                        if tg.ikev2_remote_psk.is_none() && !tg.ikev2_remote_cert {
                            err(&mut self.issues, p.span, format!("tunnel-group {pname} has no `ikev2 remote-authentication pre-shared-key` (or `certificate`)"), suppress);
                        }
                        if tg.ikev2_local_psk.is_none() && tg.ikev2_local_cert_trustpoint.is_none() {
                            err(&mut self.issues, p.span, format!("tunnel-group {pname} has no `ikev2 local-authentication pre-shared-key` (or `certificate TRUSTPOINT`)"), suppress);
                        }
                    }
                }
            }
            if acc.proposals.is_empty() {
                err(&mut self.issues, acc.span, format!("{label} has no `set ikev2 ipsec-proposal`"), head_failed);
            }
            for p in &acc.proposals {
                if !self.cfg.ipsec_proposals.iter().any(|x| x.name == p.node) {
                    let known = self.proposals.iter().any(|(n, _)| *n == p.node);
                    // A proposal that exists but failed validation was reported already.
                    let suppress = known || self.ast.failed_names.contains(&p.node);
                    err(&mut self.issues, p.span, format!("ipsec-proposal {} is not defined", p.node), suppress);
                }
            }
            if let Some(tp) = &acc.trustpoint {
                let tg = acc.peers.first().and_then(|p| self.cfg.tunnel_group(&p.node.to_string()));
                let psk_only = tg.is_some_and(|g| g.ikev2_local_cert_trustpoint.is_none() && g.ikev2_local_psk.is_some());
                let suppress = self.ast.failed_names.contains(&tp.node);
                if self.cfg.trustpoint(&tp.node).is_none() {
                    err(&mut self.issues, tp.span, format!("crypto ca trustpoint {} is not defined", tp.node), suppress);
                } else if psk_only {
                    // The entry's certificate is only used when the tunnel group signs for us.
                    let g = tg.map_or("", |g| g.name.as_str());
                    self.issues.push(Issue::warning(
                        tp.span,
                        format!("`set trustpoint {}` has no effect: tunnel-group {g} authenticates us with a pre-shared key (`ikev2 local-authentication certificate TRUSTPOINT` would use it)", tp.node),
                    ));
                } else if let Some(msg) = signing_trustpoint_problem(&self.cfg, &tp.node) {
                    err(&mut self.issues, tp.span, msg, suppress);
                }
            }
            if !ok {
                continue;
            }
            if !bound.contains(map) && !self.issues.iter().any(|i| i.message.contains(&format!("crypto map {map} is not applied"))) {
                self.issues.push(Issue::warning(acc.span, format!("crypto map {map} is not applied to an interface (`crypto map {map} interface outside`); its entries are inactive")));
            }
            let (Some(match_address), Some(first_peer)) = (&acc.match_address, acc.peers.first()) else { continue };
            let _ = first_peer;
            self.cfg.crypto_maps.push(CryptoMapEntry {
                map: map.clone(),
                seq: *seq,
                match_address: match_address.node.clone(),
                peers: acc.peers.iter().map(|p| p.node).collect(),
                ikev2_proposals: acc.proposals.iter().map(|p| p.node.clone()).collect(),
                pfs: acc.pfs,
                lifetime_seconds: acc.lifetime.seconds.or(self.global_lifetime.seconds).unwrap_or(DEFAULT_SA_SECONDS),
                lifetime_kilobytes: acc.lifetime.kilobytes.or(self.global_lifetime.kilobytes).unwrap_or(Some(DEFAULT_SA_KILOBYTES)),
                nat_t_disable: acc.nat_t_disable,
                force_udp_encap: acc.force_udp_encap,
                connection_type: acc.connection_type,
                trustpoint: acc.trustpoint.as_ref().map(|t| t.node.clone()),
            });
        }
        let any_bound_entry = self.maps.keys().any(|(m, _)| bound.contains(m));
        for (map, nameif) in &self.bindings {
            if !self.maps.keys().any(|(m, _)| *m == map.node) {
                if !self.failed(&map.node) {
                    self.issues.push(Issue::error(map.span, format!("crypto map {} has no entries (`crypto map {} 10 match address ...`)", map.node, map.node)));
                }
                continue;
            }
            if let Some(iface) = self.cfg.interface_by_nameif(&nameif.node) {
                let idx = self.cfg.interfaces.iter().position(|i| i.name == iface.name).unwrap_or(0);
                let name_span = self.iface_spans.get(idx).copied().unwrap_or(nameif.span);
                if iface.address.is_none() {
                    self.issues.push(Issue::error(nameif.span, format!("interface {} (nameif {}) has no `ip address`; a crypto map needs a static address", iface.name, nameif.node)));
                }
                if iface.name.len() > MAX_IFNAME || iface.name.contains('/') {
                    // A pasted ASA configuration names ASA ports. holdfast binds to the
                    // nameif's address and never opens the interface by name, so this is not
                    // fatal; the name only appears in `show` output.
                    self.issues.push(Issue::warning(
                        name_span,
                        format!("`{}` is not a Linux interface name (at most {MAX_IFNAME} bytes, no `/`): holdfast uses the address of nameif {} and not the name; write the Linux interface (for example `interface eth0`) so `show` output names the real port", iface.name, nameif.node),
                    ));
                }
                if !self.cfg.ikev2_enabled_on.contains(&nameif.node) {
                    self.issues.push(Issue::error(nameif.span, format!("IKEv2 is not enabled on {} (add `crypto ikev2 enable {}`)", nameif.node, nameif.node)));
                }
            }
            self.cfg.crypto_map_bindings.push(CryptoMapBinding { map: map.node.clone(), nameif: nameif.node.clone() });
        }
        if any_bound_entry && self.cfg.ikev2_policies.is_empty() && self.ike.is_empty() {
            if let Some((_, acc)) = self.maps.iter().find(|((m, _), _)| bound.contains(m)) {
                self.issues.push(Issue::error(acc.span, "no `crypto ikev2 policy` is configured (for example `crypto ikev2 policy 10` with `encryption aes-gcm-256`, `integrity null`, `group 19`, `prf sha256`)"));
            }
        }
    }

    fn check_nameifs(&mut self) {
        for r in &self.nameif_refs {
            if self.cfg.interface_by_nameif(&r.node).is_none() && !self.failed(&r.node) {
                let known: Vec<&str> = self.cfg.interfaces.iter().filter_map(|i| i.nameif.as_deref()).collect();
                let hint = if known.is_empty() { "no interface has a nameif".to_string() } else { format!("known: {}", known.join(", ")) };
                self.issues.push(Issue::error(r.span, format!("no interface has `nameif {}` ({hint})", r.node)));
            }
        }
    }

    /// The engines read `Config::tunnels()`; if it still fails after the checks above, say so at
    /// the crypto map entry instead of letting the daemon find out.
    fn check_tunnels(&mut self) {
        if self.issues.iter().any(|i| i.severity == crate::diag::Severity::Error) {
            return;
        }
        // `tunnels_with_auth`, not `tunnels`: the configuration is valid with certificates even
        // while an engine that reads only PSK tunnels refuses them.
        if let Err(policy::ResolveError::CryptoMap { map, seq, what }) = self.cfg.tunnels_with_auth() {
            let span = self.maps.get(&(map.clone(), seq)).map_or(Span { start: 0, end: 0, line: 1, col: 1 }, |m| m.span);
            self.issues.push(Issue::error(span, format!("crypto map {map} {seq}: {what}")));
        }
        // Same for the remote-access listeners the gateway starts.
        if let Err(e) = self.cfg.anyconnect_listeners() {
            let span = self.ra_webvpn_span.unwrap_or(Span { start: 0, end: 0, line: 1, col: 1 });
            self.issues.push(Issue::error(span, e.to_string()));
        }
    }
}

// --- remote access ---------------------------------------------------------------------------

/// Remote-access lines as written, with the spans later checks point at.
#[derive(Default)]
pub(crate) struct RaAcc {
    /// Any remote-access line was seen.
    seen: bool,
    pools: Vec<(Spanned<String>, AddressPool, Span, Span)>,
    webvpn: WebVpn,
    webvpn_enable: Vec<Spanned<String>>,
    anyconnect_enable: Option<Span>,
    gp_internal: Vec<Spanned<String>>,
    gp_attrs: Vec<(Spanned<String>, GroupPolicyAttributes, GpRefs)>,
    tgs: Vec<(String, RaTgAcc)>,
    users: Vec<LocalUser>,
    ssl_tps: Vec<(Spanned<String>, Option<Spanned<String>>)>,
}

#[derive(Default, Clone)]
struct GpRefs {
    split_list: Option<Spanned<String>>,
    pools: Vec<Spanned<String>>,
    split_policy: Option<Span>,
}

#[derive(Default)]
struct RaTgAcc {
    pools: Vec<Spanned<String>>,
    default_gp: Option<Spanned<String>>,
    authentication: RaAuthentication,
    auth_span: Option<Span>,
    aliases: Vec<(Spanned<String>, bool)>,
    /// general-attributes lines, reported as ignored if the group is ipsec-l2l.
    raw_general: Vec<Ignored>,
    webvpn_span: Option<Span>,
}

impl RaAcc {
    fn tg(&mut self, name: &str) -> &mut RaTgAcc {
        let idx = match self.tgs.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.tgs.push((name.to_string(), RaTgAcc::default()));
                self.tgs.len() - 1
            }
        };
        &mut self.tgs[idx].1
    }
    fn gp(&mut self, name: &Spanned<String>) -> (&mut GroupPolicyAttributes, &mut GpRefs) {
        let idx = match self.gp_attrs.iter().position(|(n, _, _)| n.node == name.node) {
            Some(i) => i,
            None => {
                self.gp_attrs.push((name.clone(), GroupPolicyAttributes::default(), GpRefs::default()));
                self.gp_attrs.len() - 1
            }
        };
        let (_, a, r) = &mut self.gp_attrs[idx];
        (a, r)
    }
}

impl<'a> Lowerer<'a> {
    /// One remote-access item (re-entered modes modify, as on the ASA). Returns false for items
    /// that are not remote access.
    fn ra_item(&mut self, item: &Item) -> bool {
        let ra = &mut self.ra;
        match &item.kind {
            ItemKind::IpLocalPool { name, start, end, range, prefix_len, mask_span } => {
                let pool = AddressPool { name: name.node.clone(), start: *start, end: *end, prefix_len: *prefix_len };
                ra.pools.push((name.clone(), pool, *range, *mask_span));
            }
            ItemKind::WebVpn { body } => {
                for cmd in body {
                    match &cmd.node {
                        WebVpnCmd::Enable(n) => {
                            if !ra.webvpn.enabled_on.contains(&n.node) {
                                ra.webvpn.enabled_on.push(n.node.clone());
                                ra.webvpn_enable.push(n.clone());
                            }
                        }
                        WebVpnCmd::Port(p) => ra.webvpn.port = *p,
                        WebVpnCmd::DtlsPort(p) => ra.webvpn.dtls_port = *p,
                        WebVpnCmd::AnyconnectEnable => {
                            ra.webvpn.anyconnect_enable = true;
                            ra.anyconnect_enable = Some(cmd.span);
                        }
                        WebVpnCmd::TunnelGroupList(b) => ra.webvpn.tunnel_group_list = *b,
                    }
                }
            }
            ItemKind::GroupPolicyInternal { name } => {
                if !ra.gp_internal.iter().any(|n| n.node == name.node) {
                    ra.gp_internal.push(name.clone());
                }
            }
            ItemKind::GroupPolicyAttributes { name, body } => {
                let (a, r) = ra.gp(name);
                for cmd in body {
                    let ac = &mut a.anyconnect;
                    match &cmd.node {
                        GpCmd::VpnTunnelProtocol(v) => a.vpn_tunnel_protocols = Some(v.clone()),
                        GpCmd::SplitTunnelPolicy(p) => {
                            a.split_tunnel_policy = Some(*p);
                            r.split_policy = Some(cmd.span);
                        }
                        GpCmd::SplitTunnelNetworkList(l) => {
                            a.split_tunnel_network_list = Some(l.as_ref().map(|l| l.node.clone()));
                            r.split_list = l.clone();
                        }
                        GpCmd::DnsServers(v) => a.dns_servers = Some(v.clone()),
                        GpCmd::DefaultDomain(d) => a.default_domain = Some(d.clone()),
                        GpCmd::IdleTimeout(t) => a.vpn_idle_timeout = Some(*t),
                        GpCmd::SessionTimeout(t) => a.vpn_session_timeout = Some(*t),
                        GpCmd::AddressPools(v) => {
                            a.address_pools = Some(v.iter().map(|p| p.node.clone()).collect());
                            r.pools = v.clone();
                        }
                        GpCmd::Mtu(m) => ac.mtu = Some(*m),
                        GpCmd::MtuPolicy(p) => ac.mtu_policy = Some(*p),
                        GpCmd::Dtls(b) => ac.dtls = Some(*b),
                        GpCmd::DfBitIgnore(b) => ac.df_bit_ignore = Some(*b),
                        GpCmd::DpdClient(d) => ac.dpd_client = Some(*d),
                        GpCmd::DpdGateway(d) => ac.dpd_gateway = Some(*d),
                        GpCmd::Keepalive(d) => ac.keepalive = Some(*d),
                        GpCmd::RekeyTime(d) => ac.rekey_time = Some(*d),
                        GpCmd::RekeyMethod(m) => ac.rekey_method = Some(*m),
                    }
                }
            }
            ItemKind::TunnelGroupGeneral { name, body, raw } => {
                let t = ra.tg(&name.node);
                t.raw_general.extend(raw.iter().cloned());
                for cmd in body {
                    match &cmd.node {
                        TgGeneralCmd::AddressPools(v) => t.pools = v.clone(),
                        TgGeneralCmd::DefaultGroupPolicy(g) => t.default_gp = Some(g.clone()),
                    }
                }
                self.tg(name).attr_span.get_or_insert(name.span);
                // `seen` is decided once the group's type is known (ipsec-l2l groups have
                // general-attributes too).
                return true;
            }
            ItemKind::TunnelGroupWebvpn { name, body } => {
                let t = ra.tg(&name.node);
                t.webvpn_span.get_or_insert(name.span);
                for cmd in body {
                    match &cmd.node {
                        TgWebvpnCmd::GroupAlias { alias, enabled } => {
                            t.aliases.retain(|(a, _)| a.node != alias.node);
                            t.aliases.push((alias.clone(), *enabled));
                        }
                        TgWebvpnCmd::Authentication(m) => {
                            t.authentication = *m;
                            t.auth_span = Some(cmd.span);
                        }
                    }
                }
                self.tg(name).attr_span.get_or_insert(name.span);
            }
            ItemKind::Username { name, password, privilege } => {
                let password_hash = match password {
                    UserPassword::Hash(h) => Some(h.clone()),
                    UserPassword::None => None,
                    UserPassword::Unusable => {
                        // Warned in the parser; a user nobody can log in as is not kept.
                        ra.users.retain(|u| u.name != name.node);
                        return true;
                    }
                };
                let privilege = privilege.unwrap_or(policy::DEFAULT_USER_PRIVILEGE);
                match ra.users.iter_mut().find(|u| u.name == name.node) {
                    Some(u) => {
                        u.password_hash = password_hash;
                        u.privilege = privilege;
                    }
                    None => ra.users.push(LocalUser { name: name.node.clone(), password_hash, privilege }),
                }
            }
            ItemKind::SslTrustpoint { trustpoint, nameif } => {
                let key = nameif.as_ref().map(|n| n.node.clone());
                ra.ssl_tps.retain(|(_, n)| n.as_ref().map(|n| n.node.clone()) != key);
                ra.ssl_tps.push((trustpoint.clone(), nameif.clone()));
            }
            _ => return false,
        }
        self.ra.seen = true;
        true
    }

    /// Builds `cfg.remote_access` and checks every remote-access reference. Runs after tunnel
    /// groups, ACLs and trustpoints are final.
    fn finish_remote_access(&mut self) {
        let mut ra = std::mem::take(&mut self.ra);
        let mut out = RemoteAccess { webvpn: ra.webvpn.clone(), ..Default::default() };

        // Pools: unique names, START-END inside one MASK subnet that excludes its network and
        // broadcast addresses, no overlap with another pool or an interface address.
        for (name, pool, range, mask_span) in &ra.pools {
            if out.pools.iter().any(|p| p.name == name.node) {
                self.issues.push(Issue::error(name.span, format!("ip local pool {} is already defined", name.node)));
                continue;
            }
            let net = Ipv4Net::new(pool.start, pool.prefix_len);
            let mask = pool.mask();
            if !net.contains(pool.end) {
                self.issues.push(Issue::error(
                    *mask_span,
                    format!("ip local pool {}: {}-{} does not fit in one subnet with mask {mask} ({} is in {}/{}, {} is not)", name.node, pool.start, pool.end, pool.start, net.network(), pool.prefix_len, pool.end),
                ));
                continue;
            }
            if pool.prefix_len < 31 && (pool.contains(net.network()) || pool.contains(net.broadcast())) {
                let which = if pool.contains(net.network()) { net.network() } else { net.broadcast() };
                self.issues.push(Issue::error(
                    *range,
                    format!("ip local pool {}: range includes {which}, the network or broadcast address of {}/{}; clients cannot use it", name.node, net.network(), pool.prefix_len),
                ));
                continue;
            }
            if let Some(other) = out.pools.iter().find(|p| p.overlaps(pool)) {
                self.issues.push(Issue::error(
                    *range,
                    format!("ip local pool {} ({}-{}) overlaps pool {} ({}-{})", name.node, pool.start, pool.end, other.name, other.start, other.end),
                ));
                continue;
            }
            if let Some(i) = self.cfg.interfaces.iter().find(|i| i.address.is_some_and(|a| pool.contains(a.addr))) {
                let a = i.address.map(|a| a.addr).unwrap_or(pool.start);
                self.issues.push(Issue::error(*range, format!("ip local pool {} contains {a}, the address of interface {}", name.node, i.name)));
                continue;
            }
            out.pools.push(pool.clone());
        }
        let pool_known = |ra: &RaAcc, n: &str| ra.pools.iter().any(|(p, _, _, _)| p.node == n);

        // Group policies: DfltGrpPolicy first (as the ASA prints it), then in `internal` order.
        let known_gp = |ra: &RaAcc, n: &str| n == DEFAULT_GROUP_POLICY || ra.gp_internal.iter().any(|g| g.node == n);
        for (name, _, _) in &ra.gp_attrs {
            if !known_gp(&ra, &name.node) && !self.failed(&name.node) {
                self.issues.push(Issue::error(name.span, format!("group-policy {} is not defined (add `group-policy {} internal` before its attributes)", name.node, name.node)));
            }
        }
        let attrs_of = |ra: &RaAcc, n: &str| ra.gp_attrs.iter().find(|(g, _, _)| g.node == n).map(|(_, a, r)| (a.clone(), r.clone()));
        let mut order: Vec<String> = Vec::new();
        if ra.gp_attrs.iter().any(|(g, _, _)| g.node == DEFAULT_GROUP_POLICY) {
            order.push(DEFAULT_GROUP_POLICY.to_string());
        }
        order.extend(ra.gp_internal.iter().filter(|g| g.node != DEFAULT_GROUP_POLICY).map(|g| g.node.clone()));
        for name in order {
            let (attributes, refs) = attrs_of(&ra, &name).unwrap_or_default();
            if let Some(l) = &refs.split_list {
                self.check_split_acl(&name, l);
            }
            for p in &refs.pools {
                if !pool_known(&ra, &p.node) && !self.failed(&p.node) {
                    self.issues.push(Issue::error(p.span, format!("ip local pool {} is not defined", p.node)));
                }
            }
            out.group_policies.push(GroupPolicy { name, attributes });
        }

        // Tunnel groups: remote-access ones get their attributes; ipsec-l2l ones keep the old
        // treatment (general-attributes outside scope).
        let mut alias_owner: Vec<(String, String)> = Vec::new();
        for (name, t) in std::mem::take(&mut ra.tgs) {
            let kind = self.cfg.tunnel_group(&name).map(|g| g.kind);
            match kind {
                Some(TunnelGroupKind::RemoteAccess) => {}
                Some(TunnelGroupKind::IpsecL2l) => {
                    self.ignored.extend(t.raw_general);
                    if let Some(span) = t.webvpn_span {
                        self.issues.push(Issue::error(span, format!("tunnel-group {name} is ipsec-l2l; `webvpn-attributes` belong to remote-access groups")));
                    }
                    continue;
                }
                // No type: reported by finish_tunnel_groups.
                None => continue,
            }
            let mut g = RaTunnelGroup::new(&name);
            for p in &t.pools {
                if !pool_known(&ra, &p.node) && !self.failed(&p.node) {
                    self.issues.push(Issue::error(p.span, format!("ip local pool {} is not defined", p.node)));
                }
            }
            g.address_pools = t.pools.iter().map(|p| p.node.clone()).collect();
            if let Some(gp) = &t.default_gp {
                if !known_gp(&ra, &gp.node) && !self.failed(&gp.node) {
                    self.issues.push(Issue::error(gp.span, format!("group-policy {} is not defined (add `group-policy {} internal`)", gp.node, gp.node)));
                }
                g.default_group_policy = Some(gp.node.clone());
            }
            g.authentication = t.authentication;
            if let Some(span) = t.auth_span {
                if t.authentication.needs_certificate() && !self.cfg.trustpoints.iter().any(|tp| tp.ca_file.is_some()) {
                    self.issues.push(Issue::error(span, format!("tunnel-group {name}: certificate authentication needs a `crypto ca trustpoint` with a `ca-file` (the CA that issues client certificates)")));
                }
            }
            for (alias, enabled) in &t.aliases {
                if let Some((_, owner)) = alias_owner.iter().find(|(a, _)| *a == alias.node) {
                    self.issues.push(Issue::error(alias.span, format!("group-alias {} is already used by tunnel-group {owner}", alias.node)));
                    continue;
                }
                alias_owner.push((alias.node.clone(), name.clone()));
                g.group_aliases.push(GroupAlias { alias: alias.node.clone(), enabled: *enabled });
            }
            out.tunnel_groups.push(g);
        }
        // Remote-access groups with only a `type` line.
        for tg in self.cfg.tunnel_groups.iter().filter(|t| t.kind == TunnelGroupKind::RemoteAccess) {
            if out.tunnel_group(&tg.name).is_none() {
                out.tunnel_groups.push(RaTunnelGroup::new(&tg.name));
            }
        }
        if !out.tunnel_groups.is_empty() {
            ra.seen = true;
        }
        // Keep configuration order of the `tunnel-group` lines.
        let tg_order: Vec<&str> = self.cfg.tunnel_groups.iter().map(|t| t.name.as_str()).collect();
        out.tunnel_groups.sort_by_key(|g| tg_order.iter().position(|n| *n == g.name).unwrap_or(usize::MAX));

        // ssl trust-point: the trustpoint must sign (certificate and key files).
        let no_iface_note = "TLS and DTLS listen on all addresses (0.0.0.0) until an `interface` with this nameif and an `ip address` is configured";
        for (tp, nameif) in &ra.ssl_tps {
            if let Some(n) = nameif.as_ref().filter(|n| self.cfg.interface_by_nameif(&n.node).is_none() && !self.failed(&n.node)) {
                if !ra.webvpn_enable.iter().any(|e| e.node == n.node) {
                    self.issues.push(Issue::warning(n.span, format!("no interface has `nameif {}`, and webvpn is not enabled on it: this trust-point is unused", n.node)));
                }
            }
            if !self.failed(&tp.node) {
                match signing_trustpoint_problem(&self.cfg, &tp.node) {
                    // A pasted ASA trustpoint keeps its key in the ASA's store: accepted, and
                    // the interfaces it serves run no remote access until the PEM files are
                    // named (policy::Config::anyconnect_listeners skips them).
                    Some(msg) if self.cfg.trustpoint(&tp.node).is_some() => {
                        let on = nameif.as_ref().map_or("any interface".to_string(), |n| n.node.clone());
                        self.issues.push(Issue::warning(tp.span, format!("{msg}: remote access is not started on {on} until they are added")));
                    }
                    Some(msg) => self.issues.push(Issue::error(tp.span, msg)),
                    None => {}
                }
            }
            out.ssl_trustpoints.push(SslTrustpoint { trustpoint: tp.node.clone(), nameif: nameif.as_ref().map(|n| n.node.clone()) });
        }
        // webvpn interfaces: known nameif with an address and a certificate.
        // A configuration fragment without `interface` lines (the Linux interfaces set up
        // outside holdfast) is accepted: the listeners then bind the wildcard address
        // (policy::Config::anyconnect_listeners).
        for n in &ra.webvpn_enable {
            if !out.webvpn.anyconnect_enable {
                continue;
            }
            match self.cfg.interface_by_nameif(&n.node) {
                None if !self.failed(&n.node) => {
                    self.issues.push(Issue::warning(n.span, format!("no interface has `nameif {}`: {no_iface_note}", n.node)));
                }
                Some(iface) if iface.address.is_none() => {
                    self.issues.push(Issue::warning(n.span, format!("interface {} (nameif {}) has no `ip address`: {no_iface_note}", iface.name, n.node)));
                }
                _ => {}
            }
            if out.ssl_trustpoint_for(&n.node).is_none() {
                // The ASA would serve a self-signed certificate it makes at boot; holdfast
                // makes none, so remote access does not start here (a warning, so that a
                // pasted configuration still loads its site-to-site part).
                self.issues.push(Issue::warning(
                    n.span,
                    format!("no certificate for TLS on {0}: remote access is not started on {0} until `ssl trust-point TRUSTPOINT {0}` names a `crypto ca trustpoint` with `certificate-file` and `key-file`", n.node),
                ));
            }
        }
        if let Some(span) = ra.anyconnect_enable {
            if out.webvpn.enabled_on.is_empty() {
                self.issues.push(Issue::warning(span, "`anyconnect enable` without `enable NAMEIF` in `webvpn`: no interface accepts remote-access clients"));
            }
        }
        out.users = std::mem::take(&mut ra.users);
        self.ra_webvpn_span = ra.webvpn_enable.first().map(|n| n.span);

        let ra_tgs: Vec<(String, Span)> = self
            .tgs
            .iter()
            .filter(|(n, _)| out.tunnel_group(n).is_some())
            .map(|(n, a)| (n.clone(), a.span))
            .collect();
        let default_gp_spans: Vec<(String, Span)> = self
            .ast
            .items
            .iter()
            .filter_map(|i| match &i.kind {
                ItemKind::TunnelGroupGeneral { name, body, .. } => body.iter().find_map(|c| match &c.node {
                    TgGeneralCmd::DefaultGroupPolicy(g) => Some((name.node.clone(), g.span)),
                    TgGeneralCmd::AddressPools(_) => None,
                }),
                _ => None,
            })
            .collect();
        self.cfg.remote_access = (ra.seen && out != RemoteAccess::default()).then_some(out);

        // Advice that needs the resolved view: a group AnyConnect cannot use, or that has no
        // addresses to lease, or a split policy without networks.
        if self.issues.iter().any(|i| i.severity == crate::diag::Severity::Error) {
            return;
        }
        let Some(ra_cfg) = self.cfg.remote_access.clone() else { return };
        if !ra_cfg.webvpn.anyconnect_enable {
            return;
        }
        for (name, span) in ra_tgs {
            let Some(g) = self.cfg.anyconnect_group(&name) else { continue };
            let span = default_gp_spans.iter().rev().find(|(n, _)| *n == name).map_or(span, |(_, s)| *s);
            if !g.policy.ssl_client {
                self.issues.push(Issue::warning(
                    span,
                    format!("tunnel-group {name}: group-policy {} does not allow AnyConnect (add `vpn-tunnel-protocol ssl-client` to its attributes; the ASA default is ikev1 ikev2 l2tp-ipsec), so its logins are refused", g.policy.name),
                ));
            }
            if g.pools.is_empty() {
                self.issues.push(Issue::warning(span, format!("tunnel-group {name} has no `address-pool`: its clients cannot be given an address")));
            }
        }
        for gp in &ra_cfg.group_policies {
            let Some(e) = self.cfg.effective_group_policy(&gp.name) else { continue };
            if e.split_tunnel_policy != SplitTunnelPolicy::TunnelAll && e.split_networks.is_empty() {
                let span = ra
                    .gp_attrs
                    .iter()
                    .find(|(g, _, _)| g.node == gp.name)
                    .map(|(g, _, r)| r.split_policy.unwrap_or(g.span));
                if let Some(span) = span {
                    self.issues.push(Issue::warning(
                        span,
                        format!("group-policy {}: split-tunnel-policy {} without networks (`split-tunnel-network-list value ACL` with permit lines)", gp.name, split_kw(e.split_tunnel_policy)),
                    ));
                }
            }
        }
    }

    /// The split-tunnel list must be a standard ACL (its permit lines are the networks).
    fn check_split_acl(&mut self, gp: &str, l: &Spanned<String>) {
        if self.failed(&l.node) {
            return;
        }
        match self.cfg.access_list(&l.node) {
            None if !self.acl_seen.contains(&l.node) => {
                self.issues.push(Issue::error(l.span, format!("access-list {} is not defined (group-policy {gp} split-tunnel-network-list)", l.node)));
            }
            None => {
                self.issues.push(Issue::error(l.span, format!("access-list {} has no usable line for a split-tunnel list", l.node)));
            }
            Some(acl) if acl.entries.iter().any(|e| !e.standard) => {
                self.issues.push(Issue::error(
                    l.span,
                    format!("access-list {} is an extended ACL; split-tunnel-network-list needs a standard one (`access-list {} standard permit 10.1.0.0 255.255.255.0`)", l.node, l.node),
                ));
            }
            Some(acl) if acl.entries.iter().any(|e| e.action == AclAction::Deny) => {
                self.issues.push(Issue::warning(l.span, format!("deny lines in access-list {} are not sent to clients: the split-tunnel list is its permit lines", l.node)));
            }
            Some(_) => {}
        }
    }
}

pub(crate) fn split_kw(p: SplitTunnelPolicy) -> &'static str {
    match p {
        SplitTunnelPolicy::TunnelAll => "tunnelall",
        SplitTunnelPolicy::TunnelSpecified => "tunnelspecified",
        SplitTunnelPolicy::ExcludeSpecified => "excludespecified",
    }
}

/// Why trustpoint `name` cannot sign for us, if it cannot.
fn signing_trustpoint_problem(cfg: &Config, name: &str) -> Option<String> {
    let Some(t) = cfg.trustpoint(name) else { return Some(format!("crypto ca trustpoint {name} is not defined")) };
    let mut missing = Vec::new();
    if t.certificate_file.is_none() {
        missing.push("`certificate-file PATH`");
    }
    if t.key_file.is_none() {
        missing.push("`key-file PATH`");
    }
    if missing.is_empty() {
        return None;
    }
    Some(format!("crypto ca trustpoint {name} has no {} (holdfast reads the certificate and key from PEM files)", missing.join(" or ")))
}

fn dup_nameif(ifaces: &[Interface], idx: usize, nameif: &str) -> bool {
    ifaces.iter().enumerate().any(|(i, x)| i != idx && x.nameif.as_deref() == Some(nameif))
}

fn prf_of(i: Integrity) -> Option<Prf> {
    match i {
        Integrity::Null => None,
        Integrity::Sha1 => Some(Prf::Sha1),
        Integrity::Sha256 => Some(Prf::Sha256),
        Integrity::Sha384 => Some(Prf::Sha384),
        Integrity::Sha512 => Some(Prf::Sha512),
    }
}

/// The ASA keyword for an encryption algorithm (same in IKE and ESP).
pub(crate) fn enc_name(e: Encryption, _esp: bool) -> &'static str {
    match e {
        Encryption::AesCbc128 => "aes",
        Encryption::AesCbc192 => "aes-192",
        Encryption::AesCbc256 => "aes-256",
        Encryption::AesGcm128 => "aes-gcm",
        Encryption::AesGcm192 => "aes-gcm-192",
        Encryption::AesGcm256 => "aes-gcm-256",
    }
}
