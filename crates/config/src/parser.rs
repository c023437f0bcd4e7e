//! Lines -> spanned AST. One function per command family; each reports its own errors and goes
//! on with the next line, so a file with several mistakes gets all of them in one run.
//!
//! Keywords are matched case-insensitively (as the ASA does); names (interfaces, ACLs, maps,
//! proposals, tunnel groups) and keys are case-sensitive and kept as written.

use crate::ast::*;
use crate::diag::{Issue, Span};
use crate::lexer::{self, Block, Line, Token};
use policy::{AclAction, MtuPolicy, RaAuthentication, RekeyMethod, SplitTunnelPolicy, VpnTunnelProtocol, ConnectionType, DhGroup, Dpd, Encryption, Integrity, Ipv4Net, Prf, Secret, TunnelGroupKind};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// ASA limit for `timeout` values: 1193:00:00.
const MAX_TIMEOUT_SECS: u64 = 1193 * 3600;
/// ASA limit for IPsec SA lifetimes and IKEv2 SA lifetimes.
const MAX_LIFETIME_SECS: u64 = 2_147_483_647;

pub(crate) fn parse(text: &str) -> (Ast, Vec<Issue>) {
    let (blocks, orphans) = lexer::blocks(lexer::lines(text));
    let names = collect_names(&blocks);
    let objects = collect_objects(&blocks);
    let mut p = Parser { ast: Ast::default(), issues: Vec::new(), names: &names, objects: &objects };
    for line in &orphans {
        p.issues.push(Issue::error(line.span(), "indented line outside any configuration mode"));
    }
    for b in &blocks {
        p.block(b);
    }
    (p.ast, p.issues)
}

/// `name A.B.C.D NAME` aliases: the ASA prints NAME instead of the address in access lists,
/// `set peer`, `logging host` and other commands once `names` is on.
type Names = std::collections::BTreeMap<String, Ipv4Addr>;

/// The aliases of the whole file, so that a use before its `name` line resolves too.
fn collect_names(blocks: &[Block<'_>]) -> Names {
    let mut names = Names::new();
    for b in blocks {
        let t = &b.head.tokens;
        if t.len() >= 3 && t[0].text.eq_ignore_ascii_case("name") {
            if let Ok(a) = t[1].text.parse::<Ipv4Addr>() {
                names.insert(t[2].text.to_string(), a);
            }
        }
    }
    names
}

/// One member of a network object or object group.
#[derive(Debug, Clone)]
enum Member {
    Net(Ipv4Net),
    Object(String),
    Group(String),
    /// A member holdfast cannot turn into an IPv4 prefix (range, FQDN, IPv6): what it is.
    Unsupported(&'static str),
}

/// `object network NAME` (one member) and `object-group network NAME` definitions, so that
/// access lists written with them (as ASDM writes crypto ACLs) resolve to prefixes.
#[derive(Debug, Default)]
struct Objects {
    /// (name, is a group) -> members.
    defs: std::collections::BTreeMap<(String, bool), Vec<Member>>,
}

/// Nesting limit for `group-object` (the ASA allows a few levels; a loop must not hang us).
const MAX_GROUP_DEPTH: u32 = 8;

impl Objects {
    /// The prefixes of `object NAME` (`group` false) or `object-group NAME` (`group` true).
    fn resolve(&self, name: &str, group: bool, depth: u32) -> Result<Vec<Ipv4Net>, String> {
        let kind = if group { "object-group" } else { "object" };
        if depth > MAX_GROUP_DEPTH {
            return Err(format!("`{kind} {name}` (object groups nested deeper than {MAX_GROUP_DEPTH})"));
        }
        let Some(members) = self.defs.get(&(name.to_string(), group)) else {
            return Err(format!("`{kind} {name}` (not defined as a network {kind})"));
        };
        let mut out = Vec::new();
        for m in members {
            match m {
                Member::Net(n) => out.push(*n),
                Member::Object(o) => out.extend(self.resolve(o, false, depth + 1)?),
                Member::Group(g) => out.extend(self.resolve(g, true, depth + 1)?),
                Member::Unsupported(what) => return Err(format!("`{kind} {name}` ({what})")),
            }
        }
        if out.is_empty() {
            return Err(format!("`{kind} {name}` (no address in it)"));
        }
        Ok(out)
    }

    fn is_network_group(&self, name: &str) -> bool {
        self.defs.contains_key(&(name.to_string(), true))
    }
}

fn collect_objects(blocks: &[Block<'_>]) -> Objects {
    let mut o = Objects::default();
    for b in blocks {
        let t = &b.head.tokens;
        if t.len() != 3 || !t[1].text.eq_ignore_ascii_case("network") {
            continue;
        }
        let group = match lower(t[0].text).as_str() {
            "object" => false,
            "object-group" => true,
            _ => continue,
        };
        let members = o.defs.entry((t[2].text.to_string(), group)).or_default();
        for l in &b.children {
            if let Some(m) = object_member(&l.tokens, group) {
                members.push(m);
            }
        }
    }
    o
}

/// A member line of a network object (`host A`, `subnet A M`, `range`, `fqdn`) or object group
/// (`network-object host A|A M|object N`, `group-object G`); `None` for other lines
/// (`description`, `nat`).
fn object_member(t: &[Token<'_>], group: bool) -> Option<Member> {
    let w = |i: usize| t.get(i).map_or(String::new(), |x| lower(x.text));
    let (kind, rest) = if group {
        match w(0).as_str() {
            "network-object" => (w(1), 2),
            "group-object" => return t.get(1).map(|g| Member::Group(g.text.to_string())),
            _ => return None,
        }
    } else {
        (w(0), 1)
    };
    let ip = |i: usize| t.get(i).and_then(|x| x.text.parse::<Ipv4Addr>().ok());
    Some(match kind.as_str() {
        "host" => match ip(rest) {
            Some(a) => Member::Net(Ipv4Net::host(a)),
            None => Member::Unsupported("IPv6"),
        },
        "object" if group => Member::Object(t.get(rest)?.text.to_string()),
        "subnet" if !group => net_member(ip(rest), ip(rest + 1)),
        "range" => Member::Unsupported("address ranges"),
        "fqdn" => Member::Unsupported("FQDN objects"),
        // `network-object A M`
        _ if group => net_member(ip(rest - 1), ip(rest)),
        _ => return None,
    })
}

fn net_member(a: Option<Ipv4Addr>, m: Option<Ipv4Addr>) -> Member {
    match (a, m.and_then(Ipv4Net::prefix_from_mask)) {
        (Some(a), Some(p)) if Ipv4Net::new(a, p).network() == a => Member::Net(Ipv4Net::new(a, p)),
        (Some(_), _) => Member::Unsupported("an invalid netmask"),
        _ => Member::Unsupported("IPv6"),
    }
}

struct Parser<'n> {
    ast: Ast,
    issues: Vec<Issue>,
    names: &'n Names,
    objects: &'n Objects,
}

type R<T> = Result<T, Issue>;

impl Parser<'_> {
    fn block(&mut self, b: &Block<'_>) {
        let errors = |issues: &[Issue]| issues.iter().filter(|i| i.severity == crate::diag::Severity::Error).count();
        let before = errors(&self.issues);
        self.block_inner(b);
        if errors(&self.issues) > before {
            self.ast.failed_lines.insert(b.head.number);
            self.ast.failed_names.extend(b.head.tokens.iter().map(|t| t.text.to_string()));
        }
    }

    fn block_inner(&mut self, b: &Block<'_>) {
        let head = &b.head;
        let mut c = Cur::new(head);
        c.names = Some(self.names);
        c.objects = Some(self.objects);
        let Some(first) = c.next() else { return };
        let word = lower(first.text);
        // Set by the arms that do not parse the command (file furniture, unknown words): every
        // other word must be listed in `TOP_LEVEL`, which the documentation test reads, so a
        // new command cannot go undocumented (`Ast::unlisted` reports a forgotten one).
        let mut parsed = true;
        let res = match word.as_str() {
            "hostname" => self.no_children(b).and_then(|_| hostname(&mut c)).map(Some),
            "interface" => self.interface(b, &mut c).map(Some),
            "access-list" => self.no_children(b).and_then(|_| self.access_list(head, &mut c)),
            "logging" => self.no_children(b).and_then(|_| self.logging(head, &mut c, false)),
            "metrics" => self.no_children(b).and_then(|_| metrics(&mut c)).map(Some),
            "timeout" => self.no_children(b).and_then(|_| self.timeout(head, &mut c)),
            "sysopt" => self.no_children(b).and_then(|_| self.sysopt(head, &mut c, false)),
            "crypto" => self.crypto(b, &mut c, false),
            "tunnel-group" => self.tunnel_group(b, &mut c),
            "ip" => self.ip(b, &mut c),
            "webvpn" => self.webvpn(b, &mut c).map(Some),
            "group-policy" => self.group_policy(b, &mut c),
            "username" => self.username(b, &mut c),
            "ssl" => self.ssl(b, &mut c),
            "object" | "object-group" => self.object_block(b, &mut c),
            "names" => self.no_children(b).and_then(|_| c.end()).map(|_| None),
            "name" => self.no_children(b).and_then(|_| name_alias(&mut c)).map(|_| None),
            "no" => self.no_command(b, &mut c),
            // File furniture written by `show running-config` / `write net`, not configuration.
            "asa" | "end" | "cryptochecksum" => {
                parsed = false;
                Ok(None)
            }
            t if t.starts_with("cryptochecksum:") => {
                parsed = false;
                Ok(None)
            }
            t => match near_miss(t) {
                // Unknown words are normally ASA features holdfast lacks; one letter away from
                // a supported command it is a typo, and ignoring it would drop configuration.
                Some(kw) => {
                    parsed = false;
                    Err(Issue::error(first.span, format!("unknown command `{}`; did you mean `{kw}`?", first.text)))
                }
                None => {
                    parsed = false;
                    self.ignore_block(b, c.pos.saturating_sub(1));
                    Ok(None)
                }
            },
        };
        if parsed && !TOP_LEVEL.contains(&word.as_str()) && !self.ast.unlisted.contains(&word) {
            self.ast.unlisted.push(word);
        }
        match res {
            Ok(Some(kind)) => self.ast.items.push(Item { span: head.span(), kind }),
            Ok(None) => {}
            Err(e) => self.issues.push(e),
        }
    }

    /// `object network NAME` / `object-group network NAME`: their addresses are collected by
    /// [`collect_objects`] for access lists; here their lines are checked. Other object types
    /// (service, protocol, ICMP, user) and the `nat`, `range`, `fqdn` and IPv6 lines are
    /// outside holdfast's scope.
    fn object_block(&mut self, b: &Block<'_>, c: &mut Cur<'_, '_>) -> R<Option<ItemKind>> {
        let group = b.head.tokens.first().is_some_and(|t| t.text.eq_ignore_ascii_case("object-group"));
        if !c.peek().is_some_and(|t| t.text.eq_ignore_ascii_case("network")) {
            self.ignore_block(b, c.pos);
            return Ok(None);
        }
        c.next();
        c.name("an object name")?;
        c.end()?;
        for l in &b.children {
            if l.tokens.first().is_some_and(|t| t.text.eq_ignore_ascii_case("description")) {
                continue;
            }
            match object_member(&l.tokens, group) {
                Some(Member::Net(_) | Member::Object(_) | Member::Group(_)) => {}
                Some(Member::Unsupported("an invalid netmask")) => {
                    self.issues.push(Issue::error(l.span(), "expected an address and a contiguous netmask with no address bits outside it"));
                }
                _ => self.ignore_line(l, 0),
            }
        }
        Ok(None)
    }

    /// The block is outside holdfast's scope; token `at` of its head names the feature.
    fn ignore_block(&mut self, b: &Block<'_>, at: usize) {
        self.ignore_line(&b.head, at);
        for l in &b.children {
            self.ignore_line(l, 0);
        }
    }

    /// The line is outside holdfast's scope; token `at` names the feature.
    fn ignore_line(&mut self, l: &Line<'_>, at: usize) {
        let at = at.min(l.tokens.len().saturating_sub(1));
        let Some(tok) = l.tokens.get(at) else { return };
        let what = l.tokens[..=at].iter().map(|t| t.text).collect::<Vec<_>>().join(" ");
        self.ast.ignored.push(Ignored { span: tok.span, what: format!("`{what}`") });
    }

    /// A command that opens no mode may not be followed by indented lines.
    fn no_children(&mut self, b: &Block<'_>) -> R<()> {
        for l in &b.children {
            let name = b.head.tokens.first().map_or("", |t| t.text);
            self.issues.push(Issue::error(l.span(), format!("indented line, but `{name}` has no sub-commands")));
        }
        Ok(())
    }

    fn no_command(&mut self, b: &Block<'_>, c: &mut Cur<'_, '_>) -> R<Option<ItemKind>> {
        let head = &b.head;
        let Some(t) = c.peek() else { return Err(c.missing("a command after `no`")) };
        match lower(t.text).as_str() {
            "sysopt" => {
                c.next();
                self.no_children(b)?;
                self.sysopt(head, c, true)
            }
            "logging" => {
                c.next();
                self.no_children(b)?;
                self.logging(head, c, true)
            }
            "crypto" => {
                c.next();
                self.crypto(b, c, true)
            }
            _ => {
                self.ignore_block(b, c.pos);
                Ok(None)
            }
        }
    }

    // --- interface -----------------------------------------------------------------------

    fn interface(&mut self, b: &Block<'_>, c: &mut Cur<'_, '_>) -> R<ItemKind> {
        let name = c.name("an interface name")?;
        c.end()?;
        let mut body = Vec::new();
        for l in &b.children {
            let mut c = Cur::new(l);
            match self.interface_cmd(l, &mut c) {
                Ok(Some(cmd)) => body.push(Spanned::new(cmd, l.span())),
                Ok(None) => {}
                Err(e) => self.issues.push(e),
            }
        }
        Ok(ItemKind::Interface { name, body })
    }

    fn interface_cmd(&mut self, l: &Line<'_>, c: &mut Cur<'_, '_>) -> R<Option<IfaceCmd>> {
        let Some(first) = c.next() else { return Ok(None) };
        let no = first.text.eq_ignore_ascii_case("no");
        let kw_tok = if no { c.next().ok_or_else(|| c.missing("a command after `no`"))? } else { first };
        let cmd = match lower(kw_tok.text).as_str() {
            "nameif" if no => IfaceCmd::Nameif(None),
            "nameif" => {
                let n = c.name("an interface name (nameif)")?;
                IfaceCmd::Nameif(Some(n))
            }
            "security-level" if no => {
                c.skip_rest();
                IfaceCmd::SecurityLevel(None)
            }
            "security-level" => IfaceCmd::SecurityLevel(Some(c.number::<u8>("a security level", 0, 100)?.node)),
            "shutdown" => IfaceCmd::Shutdown(!no),
            "ip" => {
                c.keyword(&["address"])?;
                if no {
                    c.skip_rest();
                    IfaceCmd::IpAddress(None)
                } else {
                    if c.peek().is_some_and(|t| t.text.eq_ignore_ascii_case("dhcp") || t.text.eq_ignore_ascii_case("pppoe")) {
                        // A dynamic address is outside holdfast's scope; if the interface
                        // carries a tunnel, lowering reports the missing address there.
                        self.ignore_line(l, c.pos);
                        return Ok(None);
                    }
                    let addr = c.ipv4("an IP address")?;
                    let mask = c.ipv4("a netmask")?;
                    let prefix = Ipv4Net::prefix_from_mask(mask.node)
                        .ok_or_else(|| Issue::error(mask.span, format!("netmask {} is not contiguous", mask.node)))?;
                    if c.peek().is_some_and(|t| t.text.eq_ignore_ascii_case("standby")) {
                        // Failover standby address: accepted, not used (no failover in holdfast).
                        c.next();
                        c.ipv4("a standby IP address")?;
                    }
                    IfaceCmd::IpAddress(Some(Ipv4Net::new(addr.node, prefix)))
                }
            }
            // Free text, no effect on the data path.
            "description" => return Ok(None),
            _ => {
                self.ignore_line(l, c.pos.saturating_sub(1));
                return Ok(None);
            }
        };
        c.end()?;
        Ok(Some(cmd))
    }

    // --- access-list ---------------------------------------------------------------------

    fn access_list(&mut self, head: &Line<'_>, c: &mut Cur<'_, '_>) -> R<Option<ItemKind>> {
        let name = c.name("an access-list name")?;
        if c.peek().is_some_and(|t| t.text.eq_ignore_ascii_case("line")) {
            c.next();
            c.number::<u32>("a line number", 1, u64::from(u32::MAX))?;
        }
        let Some(t) = c.peek() else { return Err(c.missing("`extended`, `standard` or `remark`")) };
        let kind = lower(t.text);
        let standard = match kind.as_str() {
            "extended" => {
                c.next();
                false
            }
            // Old syntax without the `extended` keyword.
            "permit" | "deny" => false,
            "standard" => {
                c.next();
                true
            }
            "remark" => return Ok(Some(ItemKind::AccessListRemark { name })),
            "webtype" | "ethertype" => {
                self.ignore_line(head, c.pos);
                return Ok(None);
            }
            _ => return Err(Issue::error(t.span, format!("expected `extended`, `standard` or `remark`, found `{}`", t.text))),
        };
        let action = match c.keyword(&["permit", "deny"])?.0 {
            0 => AclAction::Permit,
            _ => AclAction::Deny,
        };
        let body = if standard {
            match c.address("an address (`host A`, `A M` or `any4`)")? {
                Ok(dests) => {
                    c.end()?;
                    let any = Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0);
                    Ok(dests.into_iter().map(|destination| AclBody { protocol: None, source: any, destination }).collect())
                }
                Err(u) => Err(u),
            }
        } else {
            acl_extended(c)?
        };
        Ok(Some(ItemKind::AccessList { name, entry: AclLine { standard, action, body } }))
    }

    // --- logging -------------------------------------------------------------------------

    fn logging(&mut self, head: &Line<'_>, c: &mut Cur<'_, '_>, no: bool) -> R<Option<ItemKind>> {
        let Some(t) = c.next() else { return Err(c.missing("a logging command")) };
        let cmd = match lower(t.text).as_str() {
            "enable" => LoggingCmd::Enable(!no),
            "timestamp" => LoggingCmd::Timestamp(!no),
            "trap" | "buffered" if no => {
                c.skip_rest();
                if lower(t.text) == "trap" {
                    LoggingCmd::Trap(policy::Logging::default().trap_level)
                } else {
                    LoggingCmd::Buffered(policy::Logging::default().buffered_level)
                }
            }
            "trap" => LoggingCmd::Trap(log_level(c)?),
            "buffered" => LoggingCmd::Buffered(log_level(c)?),
            "host" if !no => {
                let nameif = c.name("an interface name (nameif)")?;
                let addr = c.ipv4("the syslog server's IP address")?;
                let mut port = 514u16;
                if let Some(p) = c.peek() {
                    let lp = lower(p.text);
                    if let Some((proto, num)) = lp.split_once('/') {
                        c.next();
                        if proto != "udp" && proto != "17" {
                            return Err(Issue::error(p.span, format!("syslog over `{proto}` is not supported; use udp/PORT")));
                        }
                        port = num
                            .parse::<u16>()
                            .ok()
                            .filter(|n| *n >= 1025 || *n == 514)
                            .ok_or_else(|| Issue::error(p.span, format!("bad syslog port `{num}`: use 514 or 1025 to 65535")))?;
                    }
                }
                if c.peek().is_some_and(|t| t.text.eq_ignore_ascii_case("format")) {
                    // `format emblem` changes the message layout; holdfast always sends RFC 3164
                    // lines in the ASA format, so refuse rather than silently differ.
                    let t = c.next().map(|t| t.span).unwrap_or(head.end_span());
                    return Err(Issue::error(t, "`format emblem` is not supported (holdfast sends RFC 3164 lines in the ASA format); delete `format emblem`"));
                }
                LoggingCmd::Host { nameif, addr: IpAddr::V4(addr.node), port }
            }
            _ => {
                self.ignore_line(head, c.pos.saturating_sub(1));
                return Ok(None);
            }
        };
        c.end()?;
        Ok(Some(ItemKind::Logging(cmd)))
    }

    // --- timeout -------------------------------------------------------------------------

    fn timeout(&mut self, head: &Line<'_>, c: &mut Cur<'_, '_>) -> R<Option<ItemKind>> {
        let mut out = Vec::new();
        let mut any = false;
        while let Some(k) = c.next() {
            any = true;
            let kind = match lower(k.text).as_str() {
                "conn" => Some(TimeoutKind::Conn),
                "half-closed" => Some(TimeoutKind::HalfClosed),
                "udp" => Some(TimeoutKind::Udp),
                "icmp" => Some(TimeoutKind::Icmp),
                _ => None,
            };
            let Some(kind) = kind else {
                // Timers of features holdfast lacks (xlate, sunrpc, h323, uauth, `igp
                // stale-route`, ...): skipped, with their value and qualifiers. Some names are
                // two words, so skip to the first token that reads as a time.
                while c.peek().is_some_and(|t| hms(t).is_err()) {
                    c.next();
                }
                if c.next().is_none() {
                    return Err(c.missing("a time (hh:mm:ss)"));
                }
                while c.peek().is_some_and(|t| matches!(lower(t.text).as_str(), "absolute" | "inactivity")) {
                    c.next();
                }
                continue;
            };
            let v = c.next().ok_or_else(|| c.missing("a time (hh:mm:ss)"))?;
            let d = hms(v)?;
            let (min, zero_ok, default) = match kind {
                TimeoutKind::Conn => (300, true, "1:00:00"),
                TimeoutKind::HalfClosed => (30, true, "0:10:00"),
                TimeoutKind::Udp => (60, true, "0:02:00"),
                TimeoutKind::Icmp => (2, false, "0:00:02"),
            };
            let secs = d.as_secs();
            if (secs == 0 && !zero_ok) || (secs != 0 && secs < min) || secs > MAX_TIMEOUT_SECS {
                let zero = if zero_ok { "0:00:00 (never) or " } else { "" };
                return Err(Issue::error(
                    v.span,
                    format!("timeout {} {} is out of range: use {zero}{} to 1193:00:00 (default {default})", k.text, v.text, fmt_hms(min)),
                ));
            }
            out.push(TimeoutSetting { kind, value: d, span: k.span.to(v.span) });
        }
        if !any {
            return Err(c.missing("a timer name and value"));
        }
        if out.is_empty() {
            self.ignore_line(head, 1);
            return Ok(None);
        }
        Ok(Some(ItemKind::Timeout(out)))
    }

    // --- sysopt --------------------------------------------------------------------------

    fn sysopt(&mut self, head: &Line<'_>, c: &mut Cur<'_, '_>, no: bool) -> R<Option<ItemKind>> {
        let Some(t) = c.next() else { return Err(c.missing("a sysopt command")) };
        let opt = match lower(t.text).as_str() {
            "connection" | "conn" => {
                let Some(k) = c.next() else { return Err(c.missing("a `sysopt connection` option")) };
                match lower(k.text).as_str() {
                    "timewait" => SysoptCmd::Timewait,
                    "permit-vpn" => SysoptCmd::PermitVpn,
                    "reclassify-vpn" => SysoptCmd::ReclassifyVpn,
                    "preserve-vpn-flows" => {
                        // holdfast extension: `sysopt connection preserve-vpn-flows udp` keeps UDP
                        // entries too (the ASA preserves TCP only).
                        if c.peek().is_some_and(|t| t.text.eq_ignore_ascii_case("udp")) {
                            c.next();
                            SysoptCmd::PreserveVpnFlowsUdp
                        } else {
                            SysoptCmd::PreserveVpnFlows
                        }
                    }
                    "tcpmss" => {
                        let minimum = c.peek().is_some_and(|t| t.text.eq_ignore_ascii_case("minimum"));
                        if minimum {
                            c.next();
                        }
                        let v = if no {
                            c.skip_rest();
                            if minimum { 0 } else { policy::Sysopt::default().tcpmss }
                        } else {
                            let n = c.number::<u16>("a segment size in bytes", 0, 65535)?;
                            if n.node != 0 && n.node < 48 {
                                return Err(Issue::error(n.span, "tcpmss must be 0 (disabled) or 48 to 65535 bytes"));
                            }
                            n.node
                        };
                        if minimum { SysoptCmd::TcpmssMinimum(v) } else { SysoptCmd::Tcpmss(v) }
                    }
                    _ => {
                        self.ignore_line(head, c.pos.saturating_sub(1));
                        return Ok(None);
                    }
                }
            }
            "nodnsalias" => match c.keyword(&["inbound", "outbound"])?.0 {
                0 => SysoptCmd::NodnsaliasInbound,
                _ => SysoptCmd::NodnsaliasOutbound,
            },
            "radius" => {
                c.keyword(&["ignore-secret"])?;
                SysoptCmd::RadiusIgnoreSecret
            }
            "noproxyarp" => SysoptCmd::Noproxyarp(c.name("an interface name (nameif)")?),
            _ => {
                self.ignore_line(head, c.pos.saturating_sub(1));
                return Ok(None);
            }
        };
        c.end()?;
        Ok(Some(ItemKind::Sysopt { no, opt }))
    }

    // --- crypto --------------------------------------------------------------------------

    fn crypto(&mut self, b: &Block<'_>, c: &mut Cur<'_, '_>, no: bool) -> R<Option<ItemKind>> {
        let Some(t) = c.next() else { return Err(c.missing("a crypto command")) };
        match lower(t.text).as_str() {
            "ikev2" => self.crypto_ikev2(b, c, no),
            "ipsec" if !no => self.crypto_ipsec(b, c),
            "ca" if !no && c.peek().is_some_and(|t| t.text.eq_ignore_ascii_case("trustpoint")) => {
                c.next();
                self.trustpoint(b, c)
            }
            "map" if !no => {
                self.no_children(b)?;
                crypto_map(self, &b.head, c)
            }
            // IKEv1 (`crypto isakmp`, `crypto ikev1`), PKI (`crypto ca`), dynamic maps, ...
            _ => {
                self.refuse_weak_ikev1(b);
                self.ignore_block(b, c.pos.saturating_sub(1));
                Ok(None)
            }
        }
    }

    /// holdfast does not run IKEv1, but a pasted configuration that still carries DES, 3DES, MD5
    /// or DH group 1/2/5 in its IKEv1 policies or transform sets is refused, not silently
    /// ignored: the operator should see that the peer side is (or was) configured insecurely.
    fn refuse_weak_ikev1(&mut self, b: &Block<'_>) {
        let words: Vec<String> = b.head.tokens.iter().take(4).map(|t| lower(t.text)).collect();
        let w = |i: usize| words.get(i).map_or("", String::as_str);
        let note = "; holdfast runs IKEv2 only, so delete this IKEv1 line";
        if matches!(w(1), "ikev1" | "isakmp") && w(2) == "policy" {
            // Sub-mode lines, and the one-line form `crypto isakmp policy 10 lifetime 0`.
            let mut settings: Vec<(&Line<'_>, usize)> = b.children.iter().map(|l| (l, 0)).collect();
            if b.head.tokens.len() > 4 {
                settings.push((&b.head, 4));
            }
            for (l, at) in settings {
                let Some(first) = l.tokens.get(at) else { continue };
                let args = &l.tokens[at + 1..];
                let kw = lower(first.text);
                if kw == "lifetime" {
                    let Some(v) = args.first() else { continue };
                    let lv = lower(v.text);
                    if lv == "0" || lv == "none" {
                        let ack = args.get(1).is_some_and(|t| t.text.eq_ignore_ascii_case(NO_REKEY_ACK));
                        if !ack {
                            let written = format!("lifetime {}", v.text);
                            self.issues.push(never_rekey(v.span, &written, "lifetime 86400", &written));
                        }
                    }
                    continue;
                }
                for t in args {
                    let e = match (kw.as_str(), lower(t.text).as_str()) {
                        ("encryption", "des") => Some(refuse_des(t)),
                        ("encryption", "3des") => Some(refuse_3des(t)),
                        ("hash", "md5") => Some(Issue::error(t.span, "MD5 is refused as insecure; use sha256")),
                        ("group", n @ ("1" | "2" | "5")) => dh_group(n, t.span, "group 19 or group 14").err(),
                        _ => None,
                    };
                    if let Some(mut e) = e {
                        e.message.push_str(note);
                        self.issues.push(e);
                    }
                }
            }
        }
        // `crypto dynamic-map DYN 10 set pfs group2`: dynamic maps are not used, but a weak
        // PFS group is still a mistake the operator should see.
        if w(1) == "dynamic-map" {
            let toks = &b.head.tokens;
            for (i, t) in toks.iter().enumerate() {
                if t.text.eq_ignore_ascii_case("pfs") && i >= 1 && toks[i - 1].text.eq_ignore_ascii_case("set") {
                    if let Some(g) = toks.get(i + 1) {
                        if let Some(n) = lower(g.text).strip_prefix("group") {
                            if let Err(mut e) = dh_group(n, g.span, "group19 or group14") {
                                if matches!(n, "1" | "2" | "5") {
                                    e.message.push_str("; holdfast does not use dynamic crypto maps, so delete this line or fix the group");
                                    self.issues.push(e);
                                }
                            }
                        }
                    }
                }
            }
        }
        let ts_at = match (w(1), w(2), w(3)) {
            ("ipsec", "ikev1", "transform-set") => Some(5),
            ("ipsec", "transform-set", _) => Some(4),
            _ => None,
        };
        if let Some(start) = ts_at {
            for t in b.head.tokens.iter().skip(start) {
                let e = match lower(t.text).as_str() {
                    "esp-des" => Some(refuse_des(t)),
                    "esp-3des" => Some(refuse_3des(t)),
                    "esp-md5-hmac" => Some(Issue::error(t.span, "MD5 is refused as insecure; use sha-256")),
                    "esp-null" => Some(Issue::error(t.span, "ESP null encryption sends traffic in clear and is refused; use aes-gcm-256 or aes-256")),
                    _ => None,
                };
                if let Some(mut e) = e {
                    e.message.push_str(note);
                    self.issues.push(e);
                }
            }
        }
    }

    fn crypto_ikev2(&mut self, b: &Block<'_>, c: &mut Cur<'_, '_>, no: bool) -> R<Option<ItemKind>> {
        let Some(t) = c.next() else { return Err(c.missing("an ikev2 command")) };
        let sub = lower(t.text);
        if sub != "policy" {
            self.no_children(b)?;
        }
        let kind = match sub.as_str() {
            "fragmentation" if no => {
                c.end()?;
                ItemKind::Ikev2Fragmentation { enabled: false, mtu: None }
            }
            _ if no => {
                self.ignore_block(b, c.pos.saturating_sub(1));
                return Ok(None);
            }
            "policy" => {
                let priority = c.number::<u32>("a policy priority", 1, 65535)?;
                c.end()?;
                let mut body = Vec::new();
                for l in &b.children {
                    match ike_policy_cmd(self, l) {
                        Ok(Some(cmd)) => body.push(Spanned::new(cmd, l.span())),
                        Ok(None) => {}
                        Err(e) => self.issues.push(e),
                    }
                }
                return Ok(Some(ItemKind::Ikev2Policy { priority, body }));
            }
            "enable" => {
                let nameif = c.name("an interface name (nameif)")?;
                let mut client_services = None;
                if let Some(cs) = c.peek().filter(|t| t.text.eq_ignore_ascii_case("client-services")) {
                    c.next();
                    let mut port = Spanned::new(443u16, cs.span);
                    if c.peek().is_some_and(|t| t.text.eq_ignore_ascii_case("port")) {
                        c.next();
                        port = c.number::<u16>("a port", 1, 65535)?;
                    }
                    client_services = Some(port);
                }
                ItemKind::Ikev2Enable { nameif, client_services }
            }
            "cookie-challenge" => ItemKind::Ikev2CookieChallenge(c.number::<u32>("a percentage", 0, 100)?),
            "limit" => {
                let Some(k) = c.next() else { return Err(c.missing("`max-in-negotiation-sa`")) };
                if !k.text.eq_ignore_ascii_case("max-in-negotiation-sa") {
                    // `limit max-sa` etc.: session caps holdfast does not enforce yet.
                    self.ignore_line(&b.head, c.pos.saturating_sub(1));
                    return Ok(None);
                }
                ItemKind::Ikev2MaxInNegotiation(c.number::<u32>("a number of half-open SAs", 1, 100_000)?)
            }
            "fragmentation" => {
                let mut mtu = None;
                if let Some(k) = c.peek() {
                    if k.text.eq_ignore_ascii_case("mtu") {
                        c.next();
                        mtu = Some(c.number::<u16>("an MTU in bytes", 68, 1500)?);
                    } else {
                        // `preferred-method ietf|cisco`: holdfast always speaks RFC 7383.
                        self.ignore_line(&b.head, c.pos);
                        return Ok(None);
                    }
                }
                ItemKind::Ikev2Fragmentation { enabled: true, mtu }
            }
            // holdfast extension: retransmission timing (RFC 7296 §2.1 leaves it to the
            // implementation): first timeout in milliseconds and number of tries.
            "retransmit" => {
                let base_ms = c.number::<u32>("the first retransmission timeout in milliseconds", 100, 60_000)?;
                let tries = c.number::<u32>("the number of tries", 1, 20)?;
                ItemKind::Ikev2Retransmit { base_ms, tries }
            }
            _ => {
                self.ignore_block(b, c.pos.saturating_sub(1));
                return Ok(None);
            }
        };
        c.end()?;
        Ok(Some(kind))
    }

    fn crypto_ipsec(&mut self, b: &Block<'_>, c: &mut Cur<'_, '_>) -> R<Option<ItemKind>> {
        let Some(t) = c.peek() else { return Err(c.missing("an ipsec command")) };
        match lower(t.text).as_str() {
            "ikev2" => {
                c.next();
                c.keyword(&["ipsec-proposal"])?;
                let name = c.name("a proposal name")?;
                c.end()?;
                let mut body = Vec::new();
                for l in &b.children {
                    match proposal_cmd(self, l) {
                        Ok(Some(cmd)) => body.push(Spanned::new(cmd, l.span())),
                        Ok(None) => {}
                        Err(e) => self.issues.push(e),
                    }
                }
                Ok(Some(ItemKind::IpsecProposal { name, body }))
            }
            "security-association" => {
                c.next();
                self.no_children(b)?;
                if !c.peek().is_some_and(|t| t.text.eq_ignore_ascii_case("lifetime")) {
                    self.ignore_block(b, c.pos); // pmtu-aging, replay window-size: not modelled
                    return Ok(None);
                }
                c.next();
                let lt = lifetime(c)?;
                c.end()?;
                Ok(Some(ItemKind::IpsecGlobalLifetime(lt)))
            }
            _ => {
                self.refuse_weak_ikev1(b);
                self.ignore_block(b, c.pos);
                Ok(None)
            }
        }
    }

    // --- crypto ca trustpoint -----------------------------------------------------------

    /// `crypto ca trustpoint NAME`. holdfast extensions `certificate-file`, `key-file` and
    /// `ca-file` name PEM files; the ASA's enrollment lines (`enrollment terminal`,
    /// `subject-name`, `keypair`, `crl configure`, ...) are outside holdfast's scope.
    fn trustpoint(&mut self, b: &Block<'_>, c: &mut Cur<'_, '_>) -> R<Option<ItemKind>> {
        let name = c.name("a trustpoint name")?;
        c.end()?;
        let mut body = Vec::new();
        for l in &b.children {
            let mut c = Cur::new(l);
            let Some(t) = c.next() else { continue };
            let make: fn(Spanned<String>) -> TrustpointCmd = match lower(t.text).as_str() {
                "certificate-file" => TrustpointCmd::CertificateFile,
                "key-file" => TrustpointCmd::KeyFile,
                "ca-file" => TrustpointCmd::CaFile,
                _ => {
                    self.ignore_line(l, 0);
                    continue;
                }
            };
            let res = c.name("a file path").and_then(|path| c.end().map(|_| path));
            match res {
                Ok(path) => body.push(Spanned::new(make(path), l.span())),
                Err(e) => self.issues.push(e),
            }
        }
        Ok(Some(ItemKind::Trustpoint { name, body }))
    }

    // --- tunnel-group --------------------------------------------------------------------

    fn tunnel_group(&mut self, b: &Block<'_>, c: &mut Cur<'_, '_>) -> R<Option<ItemKind>> {
        let name = c.name("a tunnel-group name")?;
        if name.node == "DefaultL2LGroup" {
            // The ASA's built-in group for LAN-to-LAN peers no tunnel group names (dynamic
            // crypto maps): holdfast has no such peers, and the group has no `type` line.
            self.ignore_block(b, 1);
            return Ok(None);
        }
        let Some(t) = c.next() else { return Err(c.missing("`type`, `ipsec-attributes` or `general-attributes`")) };
        match lower(t.text).as_str() {
            "type" => {
                self.no_children(b)?;
                let (i, tok) = c.keyword(&["ipsec-l2l", "remote-access", "webvpn"])?;
                let kind = match i {
                    0 => TunnelGroupKind::IpsecL2l,
                    1 => TunnelGroupKind::RemoteAccess,
                    _ => {
                        self.ignore_block(b, c.pos.saturating_sub(1));
                        return Ok(None);
                    }
                };
                c.end()?;
                Ok(Some(ItemKind::TunnelGroupType { name, kind: Spanned::new(kind, tok.span) }))
            }
            "ipsec-attributes" => {
                c.end()?;
                let mut body = Vec::new();
                for l in &b.children {
                    match tg_ipsec_cmd(self, l) {
                        Ok(Some(cmd)) => body.push(Spanned::new(cmd, l.span())),
                        Ok(None) => {}
                        Err(e) => self.issues.push(e),
                    }
                }
                Ok(Some(ItemKind::TunnelGroupIpsec { name, body }))
            }
            "general-attributes" => {
                c.end()?;
                let mut body = Vec::new();
                let mut raw = Vec::new();
                for l in &b.children {
                    let ignored_before = self.ast.ignored.len();
                    match tg_general_cmd(self, l) {
                        Ok(Some(cmd)) => {
                            // Kept for a remote-access group; outside scope for ipsec-l2l.
                            if let Some(tok) = l.tokens.first() {
                                raw.push(Ignored { span: tok.span, what: format!("`{}`", tok.text) });
                            }
                            body.push(Spanned::new(cmd, l.span()));
                        }
                        Ok(None) if self.ast.ignored.len() == ignored_before => {
                            if let Some(tok) = l.tokens.first() {
                                raw.push(Ignored { span: tok.span, what: format!("`{}`", tok.text) });
                            }
                        }
                        Ok(None) => {}
                        Err(e) => self.issues.push(e),
                    }
                }
                Ok(Some(ItemKind::TunnelGroupGeneral { name, body, raw }))
            }
            "webvpn-attributes" => {
                c.end()?;
                let mut body = Vec::new();
                for l in &b.children {
                    match tg_webvpn_cmd(self, l) {
                        Ok(Some(cmd)) => body.push(Spanned::new(cmd, l.span())),
                        Ok(None) => {}
                        Err(e) => self.issues.push(e),
                    }
                }
                Ok(Some(ItemKind::TunnelGroupWebvpn { name, body }))
            }
            _ => {
                self.ignore_block(b, c.pos.saturating_sub(1));
                Ok(None)
            }
        }
    }
}

// --- crypto map ------------------------------------------------------------------------------

fn crypto_map(p: &mut Parser<'_>, head: &Line<'_>, c: &mut Cur<'_, '_>) -> R<Option<ItemKind>> {
    let map = c.name("a crypto map name")?;
    let Some(t) = c.peek() else { return Err(c.missing("a sequence number or `interface`")) };
    if t.text.eq_ignore_ascii_case("interface") {
        c.next();
        let nameif = c.name("an interface name (nameif)")?;
        c.end()?;
        return Ok(Some(ItemKind::CryptoMapInterface { map, nameif }));
    }
    if !t.text.bytes().all(|b| b.is_ascii_digit()) {
        // `crypto map M client ...`, `redundancy`, ...: not modelled.
        p.ignore_line(head, c.pos);
        return Ok(None);
    }
    let seq = c.number::<u32>("a sequence number", 1, 65535)?;
    let Some(k) = c.next() else { return Err(c.missing("`match address` or `set ...`")) };
    let cmd = match lower(k.text).as_str() {
        "match" => {
            c.keyword(&["address"])?;
            CryptoMapCmd::MatchAddress(c.name("an access-list name")?)
        }
        "set" => {
            let Some(s) = c.next() else { return Err(c.missing("what to set")) };
            match lower(s.text).as_str() {
                "peer" => {
                    let mut peers = Vec::new();
                    while c.peek().is_some() {
                        let a = c.ipv4("a peer IP address")?;
                        peers.push(Spanned::new(IpAddr::V4(a.node), a.span));
                    }
                    if peers.is_empty() {
                        return Err(c.missing("a peer IP address"));
                    }
                    CryptoMapCmd::Peer(peers)
                }
                "ikev2" => {
                    let Some(x) = c.next() else { return Err(c.missing("`ipsec-proposal`")) };
                    if !x.text.eq_ignore_ascii_case("ipsec-proposal") {
                        p.ignore_line(head, c.pos.saturating_sub(1)); // `set ikev2 pre-shared-key`, `phase1-mode`, ...
                        return Ok(None);
                    }
                    let mut names = Vec::new();
                    while c.peek().is_some() {
                        names.push(c.name("a proposal name")?);
                    }
                    if names.is_empty() {
                        return Err(c.missing("an ipsec-proposal name"));
                    }
                    CryptoMapCmd::Ikev2Proposals(names)
                }
                "pfs" => match c.next() {
                    // `set pfs` alone: the ASA means group 2, which holdfast refuses; group 14 is
                    // the smallest MODP group it accepts (see policy::CryptoMapEntry::pfs).
                    None => {
                        p.issues.push(Issue::warning(
                            s.span,
                            "bare `set pfs` means DH group 2 on the ASA, which holdfast refuses; group 14 is used: write the group (`set pfs group19`) and make the peer match",
                        ));
                        CryptoMapCmd::Pfs(DhGroup::Modp2048)
                    }
                    Some(g) => {
                        let l = lower(g.text);
                        let Some(n) = l.strip_prefix("group") else {
                            return Err(Issue::error(g.span, format!("expected `groupN` (for example `group19`), found `{}`", g.text)));
                        };
                        CryptoMapCmd::Pfs(dh_group(n, g.span, "group19 or group14")?)
                    }
                },
                "security-association" => {
                    let Some(x) = c.next() else { return Err(c.missing("`lifetime`")) };
                    if !x.text.eq_ignore_ascii_case("lifetime") {
                        p.ignore_line(head, c.pos.saturating_sub(1)); // `replay window-size`
                        return Ok(None);
                    }
                    CryptoMapCmd::Lifetime(lifetime(c)?)
                }
                "connection-type" => match c.keyword(&["bidirectional", "originate-only", "answer-only"])?.0 {
                    0 => CryptoMapCmd::ConnectionType(ConnectionType::Bidirectional),
                    1 => CryptoMapCmd::ConnectionType(ConnectionType::OriginateOnly),
                    _ => CryptoMapCmd::ConnectionType(ConnectionType::AnswerOnly),
                },
                "nat-t-disable" => CryptoMapCmd::NatTDisable,
                // holdfast extension: always encapsulate ESP in UDP 4500 (RFC 3948) even when
                // NAT detection finds no NAT, for paths that drop IP protocol 50.
                "udp-encapsulation" => {
                    c.keyword(&["force"])?;
                    CryptoMapCmd::ForceUdpEncap
                }
                "trustpoint" => {
                    let tp = c.name("a trustpoint name")?;
                    // `chain`: send the intermediates too. holdfast always sends every
                    // certificate after the first in the trustpoint's certificate-file.
                    if c.peek().is_some_and(|t| t.text.eq_ignore_ascii_case("chain")) {
                        c.next();
                    }
                    CryptoMapCmd::Trustpoint(tp)
                }
                "ikev1" | "reverse-route" | "inheritance" | "phase1-mode" | "validation-usage" | "transform-set" => {
                    p.ignore_line(head, c.pos.saturating_sub(1));
                    return Ok(None);
                }
                other => return Err(Issue::error(s.span, format!("unknown crypto map setting `{other}`"))),
            }
        }
        "ipsec-isakmp" => {
            p.ignore_line(head, c.pos.saturating_sub(1)); // `ipsec-isakmp dynamic DYN`: dynamic maps are remote access
            return Ok(None);
        }
        other => return Err(Issue::error(k.span, format!("expected `match address` or `set`, found `{other}`"))),
    };
    c.end()?;
    Ok(Some(ItemKind::CryptoMap { map, seq, cmd }))
}

/// `lifetime seconds S [kilobytes K|unlimited]` or `lifetime kilobytes K|unlimited` (cursor after `lifetime`).
fn lifetime(c: &mut Cur<'_, '_>) -> R<Lifetime> {
    let mut lt = Lifetime::default();
    while let Some(t) = c.peek() {
        match lower(t.text).as_str() {
            "seconds" if lt.seconds.is_none() => {
                c.next();
                lt.seconds = Some(c.number::<u64>("a lifetime in seconds", 120, MAX_LIFETIME_SECS)?.node);
            }
            "kilobytes" if lt.kilobytes.is_none() => {
                c.next();
                if c.peek().is_some_and(|t| t.text.eq_ignore_ascii_case("unlimited")) {
                    c.next();
                    lt.kilobytes = Some(None);
                } else {
                    lt.kilobytes = Some(Some(c.number::<u64>("a lifetime in kilobytes", 10, MAX_LIFETIME_SECS)?.node));
                }
            }
            _ => return Err(Issue::error(t.span, format!("expected `seconds` or `kilobytes`, found `{}`", t.text))),
        }
    }
    if lt.seconds.is_none() && lt.kilobytes.is_none() {
        return Err(c.missing("`seconds N` or `kilobytes N`"));
    }
    Ok(lt)
}

// --- sub-mode commands -----------------------------------------------------------------------

fn ike_policy_cmd(p: &mut Parser<'_>, l: &Line<'_>) -> R<Option<IkePolicyCmd>> {
    let mut c = Cur::new(l);
    let Some(t) = c.next() else { return Ok(None) };
    let cmd = match lower(t.text).as_str() {
        "encryption" => IkePolicyCmd::Encryption(list(p, &mut c, "an encryption algorithm", ike_encryption)?),
        "integrity" => IkePolicyCmd::Integrity(list(p, &mut c, "an integrity algorithm", ike_integrity)?),
        "prf" => IkePolicyCmd::Prf(list(p, &mut c, "a PRF algorithm", ike_prf)?),
        "group" => IkePolicyCmd::Group(list(p, &mut c, "a DH group number", |t| dh_group(t.text, t.span, "group 19 or group 14"))?),
        "lifetime" => {
            let (i, kw) = c.keyword(&["seconds", "none"])?;
            if i == 0 {
                if let Some(z) = c.peek().filter(|t| t.text == "0") {
                    return Err(never_rekey(z.span, "lifetime seconds 0", "lifetime seconds 86400", "lifetime none"));
                }
                let s = c.number::<u64>("a lifetime in seconds", 120, MAX_LIFETIME_SECS)?;
                IkePolicyCmd::Lifetime(Some(Duration::from_secs(s.node)))
            } else {
                // asa.md §1: a never-expiring IKE SA is Cisco's workaround for flow loss, at
                // the cost of never renewing the IKE keys. holdfast keeps flows without it
                // (preserve-vpn-flows), so it takes an explicit acknowledgement.
                acknowledged_no_rekey(&mut c, kw.span, "lifetime none", "lifetime seconds 86400", "lifetime none")?;
                IkePolicyCmd::Lifetime(None)
            }
        }
        other => return Err(Issue::error(t.span, format!("unknown `crypto ikev2 policy` command `{other}` (expected encryption, integrity, group, prf or lifetime)"))),
    };
    c.end()?;
    Ok(Some(cmd))
}

/// holdfast extension: the word that acknowledges an IKE SA that is never re-keyed
/// (`lifetime none acknowledge-no-rekey` in `crypto ikev2 policy`, `lifetime 0
/// acknowledge-no-rekey` in an IKEv1 policy).
pub(crate) const NO_REKEY_ACK: &str = "acknowledge-no-rekey";

/// After a never-rekey lifetime (`written`): accepts the acknowledgement, refuses anything else.
fn acknowledged_no_rekey(c: &mut Cur<'_, '_>, at: Span, written: &str, replacement: &str, keep: &str) -> R<()> {
    match c.next() {
        Some(t) if t.text.eq_ignore_ascii_case(NO_REKEY_ACK) => Ok(()),
        Some(t) => Err(Issue::error(t.span, format!("expected `{NO_REKEY_ACK}` or the end of the line, found `{}`", t.text))),
        None => Err(never_rekey(at, written, replacement, keep)),
    }
}

fn never_rekey(span: Span, written: &str, replacement: &str, keep: &str) -> Issue {
    Issue::error(
        span,
        format!(
            "`{written}` never re-keys the IKE SA, so its keys are never renewed, and is refused as insecure; use `{replacement}` (flows survive re-keys and tunnel drops with `sysopt connection preserve-vpn-flows`), or accept the risk explicitly with `{keep} {NO_REKEY_ACK}` (holdfast extension)"
        ),
    )
}

fn proposal_cmd(p: &mut Parser<'_>, l: &Line<'_>) -> R<Option<ProposalCmd>> {
    let mut c = Cur::new(l);
    let Some(t) = c.next() else { return Ok(None) };
    if !t.text.eq_ignore_ascii_case("protocol") {
        return Err(Issue::error(t.span, format!("unknown ipsec-proposal command `{}` (expected `protocol esp ...`)", t.text)));
    }
    let (_, proto) = c.keyword(&["esp", "ah"])?;
    if proto.text.eq_ignore_ascii_case("ah") {
        return Err(Issue::error(proto.span, "AH is not supported; use `protocol esp`"));
    }
    let (i, _) = c.keyword(&["encryption", "integrity"])?;
    let cmd = if i == 0 {
        ProposalCmd::Encryption(list(p, &mut c, "an encryption algorithm", esp_encryption)?)
    } else {
        ProposalCmd::Integrity(list(p, &mut c, "an integrity algorithm", esp_integrity)?)
    };
    c.end()?;
    Ok(Some(cmd))
}

fn tg_ipsec_cmd(p: &mut Parser<'_>, l: &Line<'_>) -> R<Option<TgIpsecCmd>> {
    let mut c = Cur::new(l);
    let Some(t) = c.next() else { return Ok(None) };
    let cmd = match lower(t.text).as_str() {
        "ikev2" => {
            let Some(dir) = c.next() else { return Err(c.missing("`remote-authentication` or `local-authentication`")) };
            let remote = match lower(dir.text).as_str() {
                "remote-authentication" => true,
                "local-authentication" => false,
                _ => {
                    p.ignore_line(l, c.pos.saturating_sub(1));
                    return Ok(None);
                }
            };
            let (i, m) = c.keyword(&["pre-shared-key", "certificate", "eap"])?;
            match (i, remote) {
                (0, _) => {
                    let key = psk(&mut c)?;
                    if remote { TgIpsecCmd::RemotePsk(key) } else { TgIpsecCmd::LocalPsk(key) }
                }
                // The peer's certificate is checked against the trustpoints' CAs.
                (1, true) => TgIpsecCmd::RemoteCert,
                (1, false) => TgIpsecCmd::LocalCert(c.name("a trustpoint name (`crypto ca trustpoint NAME`)")?),
                _ => return Err(Issue::error(m.span, "`eap` authentication is not supported; use pre-shared-key or certificate")),
            }
        }
        "isakmp" => {
            c.keyword(&["keepalive"])?;
            let (i, _) = c.keyword(&["threshold", "disable"])?;
            if i == 1 {
                TgIpsecCmd::Keepalive(None)
            } else if c.peek().is_some_and(|t| t.text.eq_ignore_ascii_case("infinite")) {
                // `threshold infinite`: never send checks (only answer them).
                c.next();
                TgIpsecCmd::Keepalive(None)
            } else {
                let th = c.number::<u64>("a threshold in seconds", 10, 3600)?;
                let mut retry = Dpd::default().retry;
                if c.peek().is_some() {
                    c.keyword(&["retry"])?;
                    retry = Duration::from_secs(c.number::<u64>("a retry interval in seconds", 2, 10)?.node);
                }
                TgIpsecCmd::Keepalive(Some(Dpd { threshold: Duration::from_secs(th.node), retry }))
            }
        }
        _ => {
            // ikev1 pre-shared-key, peer-id-validate, chain, ...
            p.ignore_line(l, c.pos.saturating_sub(1));
            return Ok(None);
        }
    };
    c.end()?;
    Ok(Some(cmd))
}

fn psk(c: &mut Cur<'_, '_>) -> R<Secret> {
    let mut k = c.next().ok_or_else(|| c.missing("a pre-shared key"))?;
    if k.text == "0" && c.peek().is_some() {
        k = c.next().ok_or_else(|| c.missing("a pre-shared key"))?;
    } else if k.text == "8" && c.peek().is_some() {
        return Err(Issue::error(k.span, "encrypted keys (`8 ...`) need the ASA's master passphrase; write the key in clear"));
    }
    if k.text.chars().all(|ch| ch == '*') {
        return Err(Issue::error(k.span, "this key is masked (`show running-config` output); write the real key (on the ASA, `more system:running-config` prints the configuration with its keys)"));
    }
    if k.text.chars().count() > 128 {
        return Err(Issue::error(k.span, "pre-shared key longer than 128 characters"));
    }
    Ok(Secret(k.text.to_string()))
}

/// Parses the rest of the line as a list. A refused or unknown item is reported and the rest
/// are still checked, so one line shows every problem it has.
fn list<T: PartialEq>(p: &mut Parser<'_>, c: &mut Cur<'_, '_>, what: &str, f: impl Fn(&Token<'_>) -> R<T>) -> R<Vec<T>> {
    let mut out = Vec::new();
    let mut failed = false;
    while let Some(t) = c.next() {
        match f(t) {
            Ok(v) if !out.contains(&v) => out.push(v),
            Ok(_) => {}
            Err(e) => {
                p.issues.push(e);
                failed = true;
            }
        }
    }
    if out.is_empty() && !failed {
        return Err(c.missing(what));
    }
    Ok(out)
}

fn ike_encryption(t: &Token<'_>) -> R<Encryption> {
    Ok(match lower(t.text).as_str() {
        "aes" => Encryption::AesCbc128,
        "aes-192" => Encryption::AesCbc192,
        "aes-256" => Encryption::AesCbc256,
        "aes-gcm" => Encryption::AesGcm128,
        "aes-gcm-192" => Encryption::AesGcm192,
        "aes-gcm-256" => Encryption::AesGcm256,
        "des" => return Err(refuse_des(t)),
        "3des" => return Err(refuse_3des(t)),
        "null" => return Err(Issue::error(t.span, "IKE without encryption is refused; use aes-gcm-256 or aes-256")),
        other => return Err(Issue::error(t.span, format!("unknown encryption `{other}` (expected aes, aes-192, aes-256, aes-gcm, aes-gcm-192 or aes-gcm-256)"))),
    })
}

fn esp_encryption(t: &Token<'_>) -> R<Encryption> {
    Ok(match lower(t.text).as_str() {
        "aes" => Encryption::AesCbc128,
        "aes-192" => Encryption::AesCbc192,
        "aes-256" => Encryption::AesCbc256,
        "aes-gcm" => Encryption::AesGcm128,
        "aes-gcm-192" => Encryption::AesGcm192,
        "aes-gcm-256" => Encryption::AesGcm256,
        "des" => return Err(refuse_des(t)),
        "3des" => return Err(refuse_3des(t)),
        "null" => return Err(Issue::error(t.span, "ESP null encryption sends traffic in clear and is refused; use aes-gcm-256 or aes-256")),
        "aes-gmac" | "aes-gmac-192" | "aes-gmac-256" => {
            return Err(Issue::error(t.span, format!("`{}` (authentication without encryption) is not supported; use aes-gcm-256", t.text)))
        }
        other => return Err(Issue::error(t.span, format!("unknown encryption `{other}` (expected aes, aes-192, aes-256, aes-gcm, aes-gcm-192 or aes-gcm-256)"))),
    })
}

fn refuse_des(t: &Token<'_>) -> Issue {
    Issue::error(t.span, "DES (56-bit key) is refused as insecure; use aes-gcm-256 or aes-256")
}

fn refuse_3des(t: &Token<'_>) -> Issue {
    Issue::error(t.span, "3DES (64-bit block, sweet32) is refused as insecure; use aes-gcm-256 or aes-256")
}

fn ike_integrity(t: &Token<'_>) -> R<Integrity> {
    Ok(match lower(t.text).as_str() {
        "sha" => Integrity::Sha1,
        "sha256" => Integrity::Sha256,
        "sha384" => Integrity::Sha384,
        "sha512" => Integrity::Sha512,
        "null" => Integrity::Null,
        "md5" => return Err(Issue::error(t.span, "MD5 is refused as insecure; use sha256")),
        s @ ("sha-1" | "sha-256" | "sha-384" | "sha-512") => {
            return Err(Issue::error(t.span, format!("`{s}` is the ESP spelling; in `crypto ikev2 policy` write `{}`", ike_spelling(s))))
        }
        other => return Err(Issue::error(t.span, format!("unknown integrity `{other}` (expected sha, sha256, sha384, sha512 or null)"))),
    })
}

fn ike_spelling(s: &str) -> &'static str {
    match s {
        "sha-1" => "sha",
        "sha-256" => "sha256",
        "sha-384" => "sha384",
        _ => "sha512",
    }
}

fn esp_integrity(t: &Token<'_>) -> R<Integrity> {
    Ok(match lower(t.text).as_str() {
        "sha-1" => Integrity::Sha1,
        "sha-256" => Integrity::Sha256,
        "sha-384" => Integrity::Sha384,
        "sha-512" => Integrity::Sha512,
        "null" => Integrity::Null,
        "md5" => return Err(Issue::error(t.span, "MD5 is refused as insecure; use sha-256")),
        s @ ("sha" | "sha256" | "sha384" | "sha512") => {
            let esp = match s {
                "sha" => "sha-1",
                "sha256" => "sha-256",
                "sha384" => "sha-384",
                _ => "sha-512",
            };
            return Err(Issue::error(t.span, format!("`{s}` is the IKE spelling; in `protocol esp integrity` write `{esp}`")));
        }
        other => return Err(Issue::error(t.span, format!("unknown integrity `{other}` (expected sha-1, sha-256, sha-384, sha-512 or null)"))),
    })
}

fn ike_prf(t: &Token<'_>) -> R<Prf> {
    Ok(match lower(t.text).as_str() {
        "sha" => Prf::Sha1,
        "sha256" => Prf::Sha256,
        "sha384" => Prf::Sha384,
        "sha512" => Prf::Sha512,
        "md5" => return Err(Issue::error(t.span, "MD5 is refused as insecure; use sha256")),
        other => return Err(Issue::error(t.span, format!("unknown prf `{other}` (expected sha, sha256, sha384 or sha512)"))),
    })
}

/// `n` is the group number text (`"19"`); `replacement` is phrased for the calling command.
fn dh_group(n: &str, span: Span, replacement: &str) -> R<DhGroup> {
    let weak = |bits: &str| {
        Issue::error(span, format!("DH group {n} ({bits}) is refused as insecure; use {replacement}"))
    };
    match n {
        "1" => Err(weak("768-bit MODP")),
        "2" => Err(weak("1024-bit MODP")),
        "5" => Err(weak("1536-bit MODP")),
        "24" => Err(Issue::error(span, format!("DH group 24 (2048-bit MODP, 256-bit subgroup) is not supported; use {replacement}"))),
        _ => n
            .parse::<u16>()
            .ok()
            .and_then(DhGroup::from_number)
            .ok_or_else(|| Issue::error(span, format!("unknown DH group `{n}` (supported: 14, 15, 16, 19, 20, 21, 31)"))),
    }
}

fn log_level(c: &mut Cur<'_, '_>) -> R<u8> {
    let t = c.next().ok_or_else(|| c.missing("a logging level (0-7 or a name such as informational)"))?;
    let l = lower(t.text);
    if let Ok(n) = l.parse::<u8>() {
        if n <= 7 {
            return Ok(n);
        }
    }
    LEVELS
        .iter()
        .position(|x| *x == l)
        .map(|i| i as u8)
        .ok_or_else(|| Issue::error(t.span, format!("unknown logging level `{}` (0-7 or {})", t.text, LEVELS.join(", "))))
}

/// Syslog severities as the ASA names them, indexed by level.
pub(crate) const LEVELS: [&str; 8] =
    ["emergencies", "alerts", "critical", "errors", "warnings", "notifications", "informational", "debugging"];

fn hostname(c: &mut Cur<'_, '_>) -> R<ItemKind> {
    let n = c.name("a host name")?;
    c.end()?;
    if n.node.chars().count() > 63 || !n.node.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' || ch == '.') {
        return Err(Issue::error(n.span, "host name must be up to 63 letters, digits, `-`, `_` or `.`"));
    }
    Ok(ItemKind::Hostname(n))
}

/// `ip|tcp|udp|icmp|N SRC [ports] DST [ports] [log ...]` after `permit|deny`.
/// One ACL line; object groups expand it into one body per (source, destination) pair, as
/// the ASA expands them into access-list elements.
fn acl_extended(c: &mut Cur<'_, '_>) -> R<Result<Vec<AclBody>, Unsupported>> {
    let t = c.next().ok_or_else(|| c.missing("a protocol (ip, tcp, udp, icmp or a number)"))?;
    let l = lower(t.text);
    let protocol = match l.as_str() {
        "ip" => None,
        "icmp" => Some(1),
        "tcp" => Some(6),
        "udp" => Some(17),
        "gre" => Some(47),
        "esp" => Some(50),
        "ah" => Some(51),
        "sctp" => Some(132),
        "object" | "object-group" => {
            return Ok(Err(Unsupported { span: t.span, what: "protocol objects".into() }));
        }
        _ => match l.parse::<u8>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => return Err(Issue::error(t.span, format!("unknown protocol `{}` (expected ip, tcp, udp, icmp or 0-255)", t.text))),
        },
    };
    let source = match c.address("a source (`host A`, `A M` or `any4`)")? {
        Ok(n) => n,
        Err(u) => return Ok(Err(u)),
    };
    if let Some(u) = port_op(c, protocol)? {
        return Ok(Err(u));
    }
    let destination = match c.address("a destination (`host A`, `A M` or `any4`)")? {
        Ok(n) => n,
        Err(u) => return Ok(Err(u)),
    };
    if let Some(u) = port_op(c, protocol)? {
        return Ok(Err(u));
    }
    if let Some(t) = c.peek() {
        match lower(t.text).as_str() {
            // Per-entry logging: accepted, holdfast logs tunnel events instead.
            "log" => c.skip_rest(),
            "inactive" | "time-range" => {
                return Ok(Err(Unsupported { span: t.span, what: format!("`{}` entries", t.text) }));
            }
            _ if protocol == Some(1) => {
                return Ok(Err(Unsupported { span: t.span, what: "ICMP type matching".into() }));
            }
            _ => {}
        }
    }
    c.end()?;
    let mut out = Vec::with_capacity(source.len() * destination.len());
    for s in &source {
        for d in &destination {
            out.push(AclBody { protocol, source: *s, destination: *d });
        }
    }
    Ok(Ok(out))
}

fn port_op(c: &mut Cur<'_, '_>, protocol: Option<u8>) -> R<Option<Unsupported>> {
    let Some(t) = c.peek() else { return Ok(None) };
    let l = lower(t.text);
    // `object-group G` after an address is a service group, unless G is a network group (then
    // it is the destination).
    let service_group = l == "object-group"
        && matches!(protocol, Some(6 | 17))
        && !c.line.tokens.get(c.pos + 1).is_some_and(|g| c.objects.is_some_and(|o| o.is_network_group(g.text)));
    if matches!(l.as_str(), "eq" | "neq" | "lt" | "gt" | "range") || service_group {
        if !matches!(protocol, Some(6 | 17 | 132)) {
            return Err(Issue::error(t.span, format!("`{}` needs protocol tcp, udp or sctp", t.text)));
        }
        return Ok(Some(Unsupported { span: t.span, what: "port matching".into() }));
    }
    Ok(None)
}

// --- remote access ---------------------------------------------------------------------------

/// ASA limit for `vpn-idle-timeout` / `vpn-session-timeout` (minutes).
const MAX_VPN_MINUTES: u64 = 35_791_394;
/// ASA range for `anyconnect mtu`.
pub(crate) const AC_MTU_MIN: u64 = 576;
pub(crate) const AC_MTU_MAX: u64 = 1462;

impl Parser<'_> {
    /// `ip local pool NAME A-B mask M`; every other `ip ...` command is outside holdfast's scope.
    fn ip(&mut self, b: &Block<'_>, c: &mut Cur<'_, '_>) -> R<Option<ItemKind>> {
        let is_pool = c.peek().is_some_and(|t| t.text.eq_ignore_ascii_case("local"))
            && b.head.tokens.get(2).is_some_and(|t| t.text.eq_ignore_ascii_case("pool"));
        if !is_pool {
            self.ignore_block(b, c.pos.min(1));
            return Ok(None);
        }
        self.no_children(b)?;
        c.next();
        c.next();
        let name = c.name("a pool name")?;
        let r = c.next().ok_or_else(|| c.missing("an address range (`START-END`)"))?;
        let (start, end) = match r.text.split_once('-') {
            Some((a, z)) => (a.parse::<Ipv4Addr>().ok(), z.parse::<Ipv4Addr>().ok()),
            None => (r.text.parse::<Ipv4Addr>().ok(), None),
        };
        let (Some(start), Some(end)) = (start, end) else {
            return Err(Issue::error(r.span, format!("expected an IPv4 range `START-END` (for example 10.99.0.100-10.99.0.199), found `{}`", r.text)));
        };
        if u32::from(start) > u32::from(end) {
            return Err(Issue::error(r.span, format!("pool range starts at {start}, after its end {end}")));
        }
        if c.peek().is_none() {
            return Err(c.missing("`mask M` (the netmask clients are given)"));
        }
        c.keyword(&["mask"])?;
        let mask = c.ipv4("a netmask")?;
        let prefix_len = Ipv4Net::prefix_from_mask(mask.node)
            .ok_or_else(|| Issue::error(mask.span, format!("netmask {} is not contiguous", mask.node)))?;
        c.end()?;
        Ok(Some(ItemKind::IpLocalPool { name, start, end, range: r.span, prefix_len, mask_span: mask.span }))
    }

    /// The global `webvpn` mode. Cosmetic and portal lines (`anyconnect image`, `anyconnect
    /// profiles`, `cache`, `hsts`, ...) are outside holdfast's scope.
    fn webvpn(&mut self, b: &Block<'_>, c: &mut Cur<'_, '_>) -> R<ItemKind> {
        c.end()?;
        let mut body = Vec::new();
        let base = b.children.iter().map(|l| l.indent).min().unwrap_or(0);
        for l in &b.children {
            if l.indent > base {
                // Sub-mode of an ignored webvpn line (`cache` / ` disable`, ...).
                self.ignore_line(l, 0);
                continue;
            }
            let mut c = Cur::new(l);
            match self.webvpn_cmd(l, &mut c) {
                Ok(Some(cmd)) => body.push(Spanned::new(cmd, l.span())),
                Ok(None) => {}
                Err(e) => self.issues.push(e),
            }
        }
        Ok(ItemKind::WebVpn { body })
    }

    fn webvpn_cmd(&mut self, l: &Line<'_>, c: &mut Cur<'_, '_>) -> R<Option<WebVpnCmd>> {
        let Some(t) = c.next() else { return Ok(None) };
        let cmd = match lower(t.text).as_str() {
            "enable" => WebVpnCmd::Enable(c.name("an interface name (nameif)")?),
            "port" => WebVpnCmd::Port(c.number::<u16>("a TCP port", 1, 65535)?.node),
            "dtls" => {
                if !c.peek().is_some_and(|t| t.text.eq_ignore_ascii_case("port")) {
                    self.ignore_line(l, 1);
                    return Ok(None);
                }
                c.next();
                WebVpnCmd::DtlsPort(c.number::<u16>("a UDP port", 1, 65535)?.node)
            }
            "anyconnect" | "svc" => {
                if !c.peek().is_some_and(|t| t.text.eq_ignore_ascii_case("enable")) {
                    // `anyconnect image`, `anyconnect profiles`: client packages, not served by holdfast.
                    self.ignore_line(l, 1);
                    return Ok(None);
                }
                c.next();
                WebVpnCmd::AnyconnectEnable
            }
            "tunnel-group-list" => {
                c.keyword(&["enable"])?;
                WebVpnCmd::TunnelGroupList(true)
            }
            "no" if c.peek().is_some_and(|t| t.text.eq_ignore_ascii_case("tunnel-group-list")) => {
                c.next();
                c.keyword(&["enable"])?;
                WebVpnCmd::TunnelGroupList(false)
            }
            _ => {
                self.ignore_line(l, 0);
                return Ok(None);
            }
        };
        c.end()?;
        Ok(Some(cmd))
    }

    /// `group-policy NAME internal|attributes`.
    fn group_policy(&mut self, b: &Block<'_>, c: &mut Cur<'_, '_>) -> R<Option<ItemKind>> {
        let name = c.name("a group-policy name")?;
        let (i, k) = c.keyword(&["internal", "attributes", "external"])?;
        match i {
            0 => {
                self.no_children(b)?;
                // `internal [from OTHER]` copies another policy; holdfast has no such copy.
                if let Some(t) = c.peek() {
                    return Err(Issue::error(t.span, "`group-policy NAME internal` takes no further words in holdfast (write the attributes instead of `from`)"));
                }
                Ok(Some(ItemKind::GroupPolicyInternal { name }))
            }
            1 => {
                c.end()?;
                let mut body = Vec::new();
                let base = b.children.iter().map(|l| l.indent).min().unwrap_or(0);
                // Indent of the open nested `webvpn` line, if any.
                let mut webvpn: Option<usize> = None;
                let mut other_mode: Option<usize> = None;
                for l in &b.children {
                    if webvpn.is_some_and(|i| l.indent <= i) {
                        webvpn = None;
                    }
                    if other_mode.is_some_and(|i| l.indent <= i) {
                        other_mode = None;
                    }
                    let res = if webvpn.is_some() {
                        self.gp_webvpn_cmd(l)
                    } else if other_mode.is_some() || l.indent > base {
                        self.ignore_line(l, 0);
                        Ok(None)
                    } else if l.tokens.len() == 1 && l.tokens[0].text.eq_ignore_ascii_case("webvpn") {
                        webvpn = Some(l.indent);
                        Ok(None)
                    } else {
                        let r = self.gp_cmd(l);
                        if matches!(r, Ok(None)) {
                            // An ignored line may open its own sub-mode.
                            other_mode = Some(l.indent);
                        }
                        r
                    };
                    match res {
                        Ok(Some(cmd)) => body.push(Spanned::new(cmd, l.span())),
                        Ok(None) => {}
                        Err(e) => self.issues.push(e),
                    }
                }
                Ok(Some(ItemKind::GroupPolicyAttributes { name, body }))
            }
            _ => Err(Issue::error(k.span, "external group policies (RADIUS/LDAP server groups) are not supported; use `group-policy NAME internal`")),
        }
    }

    fn gp_cmd(&mut self, l: &Line<'_>) -> R<Option<GpCmd>> {
        let mut c = Cur::new(l);
        let Some(t) = c.next() else { return Ok(None) };
        let cmd = match lower(t.text).as_str() {
            "vpn-tunnel-protocol" => {
                let mut v = Vec::new();
                while let Some(p) = c.next() {
                    let proto = match lower(p.text).as_str() {
                        "ssl-client" | "svc" => VpnTunnelProtocol::SslClient,
                        "ssl-clientless" | "webvpn" => VpnTunnelProtocol::SslClientless,
                        "ikev1" | "ipsec" => VpnTunnelProtocol::Ikev1,
                        "ikev2" => VpnTunnelProtocol::Ikev2,
                        "l2tp-ipsec" => VpnTunnelProtocol::L2tpIpsec,
                        other => {
                            return Err(Issue::error(p.span, format!("unknown vpn-tunnel-protocol `{other}` (expected ssl-client, ssl-clientless, ikev1, ikev2 or l2tp-ipsec)")))
                        }
                    };
                    if !v.contains(&proto) {
                        v.push(proto);
                    }
                }
                if v.is_empty() {
                    return Err(c.missing("a protocol (for example `ssl-client`)"));
                }
                GpCmd::VpnTunnelProtocol(v)
            }
            "split-tunnel-policy" => match c.keyword(&["tunnelall", "tunnelspecified", "excludespecified"])?.0 {
                0 => GpCmd::SplitTunnelPolicy(SplitTunnelPolicy::TunnelAll),
                1 => GpCmd::SplitTunnelPolicy(SplitTunnelPolicy::TunnelSpecified),
                _ => GpCmd::SplitTunnelPolicy(SplitTunnelPolicy::ExcludeSpecified),
            },
            "split-tunnel-network-list" => match c.keyword(&["value", "none"])?.0 {
                0 => GpCmd::SplitTunnelNetworkList(Some(c.name("an access-list name")?)),
                _ => GpCmd::SplitTunnelNetworkList(None),
            },
            "dns-server" => match c.keyword(&["value", "none"])?.0 {
                0 => {
                    let mut v = Vec::new();
                    while c.peek().is_some() {
                        v.push(c.ipv4("a DNS server IPv4 address")?.node);
                    }
                    if v.is_empty() {
                        return Err(c.missing("a DNS server address"));
                    }
                    if v.len() > 2 {
                        // ASA: a primary and a secondary server.
                        return Err(Issue::error(l.span(), "at most two DNS servers (`dns-server value A B`)"));
                    }
                    GpCmd::DnsServers(v)
                }
                _ => GpCmd::DnsServers(Vec::new()),
            },
            "default-domain" => match c.keyword(&["value", "none"])?.0 {
                0 => {
                    let d = c.name("a domain name")?;
                    if d.node.len() > 63 || !d.node.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.') {
                        return Err(Issue::error(d.span, "domain name must be up to 63 letters, digits, `-` or `.`"));
                    }
                    GpCmd::DefaultDomain(Some(d.node))
                }
                _ => GpCmd::DefaultDomain(None),
            },
            kw @ ("vpn-idle-timeout" | "vpn-session-timeout") => {
                if c.peek().is_some_and(|t| t.text.eq_ignore_ascii_case("alert-interval")) {
                    self.ignore_line(l, 1);
                    return Ok(None);
                }
                let v = minutes_or_none(&mut c, "a time in minutes", 1, MAX_VPN_MINUTES)?;
                if kw == "vpn-idle-timeout" { GpCmd::IdleTimeout(v) } else { GpCmd::SessionTimeout(v) }
            }
            "address-pools" => match c.keyword(&["value", "none"])?.0 {
                0 => {
                    let mut v = Vec::new();
                    while c.peek().is_some() {
                        v.push(c.name("a pool name")?);
                    }
                    if v.is_empty() {
                        return Err(c.missing("a pool name"));
                    }
                    GpCmd::AddressPools(v)
                }
                _ => GpCmd::AddressPools(Vec::new()),
            },
            "anyconnect" | "svc" => {
                return Err(Issue::error(t.span, format!("`{}` lines belong in the group policy's `webvpn` sub-mode (indent them under ` webvpn`)", t.text)));
            }
            _ => {
                // banner, wins-server, vpn-filter, split-dns, vpn-simultaneous-logins, ...
                self.ignore_line(l, 0);
                return Ok(None);
            }
        };
        c.end()?;
        Ok(Some(cmd))
    }

    /// A line of the group policy's nested `webvpn` mode.
    fn gp_webvpn_cmd(&mut self, l: &Line<'_>) -> R<Option<GpCmd>> {
        let mut c = Cur::new(l);
        let Some(t) = c.next() else { return Ok(None) };
        if !matches!(lower(t.text).as_str(), "anyconnect" | "svc") {
            // customization, url-list, homepage, ...: clientless portal settings.
            self.ignore_line(l, 0);
            return Ok(None);
        }
        let Some(k) = c.next() else { return Err(c.missing("an anyconnect setting")) };
        let cmd = match lower(k.text).as_str() {
            "mtu" => GpCmd::Mtu(c.number::<u16>("an MTU in bytes", AC_MTU_MIN, AC_MTU_MAX)?.node),
            // holdfast extension (see README): one MTU for both channels, or the ASA's split.
            "mtu-policy" => match c.keyword(&["common", "split"])?.0 {
                0 => GpCmd::MtuPolicy(MtuPolicy::Common),
                _ => GpCmd::MtuPolicy(MtuPolicy::Split),
            },
            "keepalive" => GpCmd::Keepalive(seconds_or_none(&mut c, "a keepalive interval in seconds", 15, 600)?),
            "dpd-interval" => {
                let (i, _) = c.keyword(&["client", "gateway"])?;
                let v = seconds_or_none(&mut c, "a DPD interval in seconds", 5, 3600)?;
                if i == 0 { GpCmd::DpdClient(v) } else { GpCmd::DpdGateway(v) }
            }
            "ssl" => {
                let Some(s) = c.next() else { return Err(c.missing("an `anyconnect ssl` setting")) };
                match lower(s.text).as_str() {
                    "dtls" => GpCmd::Dtls(c.keyword(&["enable", "none"])?.0 == 0),
                    "df-bit-ignore" => GpCmd::DfBitIgnore(c.keyword(&["enable", "disable"])?.0 == 0),
                    "keepalive" => GpCmd::Keepalive(seconds_or_none(&mut c, "a keepalive interval in seconds", 15, 600)?),
                    "rekey" => match c.keyword(&["time", "method"])?.0 {
                        0 => GpCmd::RekeyTime(minutes_or_none(&mut c, "a rekey time in minutes", 4, 10_080)?),
                        _ => match c.keyword(&["ssl", "new-tunnel", "none"])?.0 {
                            0 => GpCmd::RekeyMethod(RekeyMethod::Ssl),
                            1 => GpCmd::RekeyMethod(RekeyMethod::NewTunnel),
                            _ => GpCmd::RekeyMethod(RekeyMethod::None),
                        },
                    },
                    // `anyconnect ssl compression`: CSTP compression is never negotiated by holdfast.
                    _ => {
                        self.ignore_line(l, 2);
                        return Ok(None);
                    }
                }
            }
            // keep-installer, profiles, modules, ask, firewall-rule, dtls compression, ...
            _ => {
                self.ignore_line(l, 1);
                return Ok(None);
            }
        };
        c.end()?;
        Ok(Some(cmd))
    }

    /// `username NAME password P [pbkdf2|encrypted|nt-encrypted] [privilege N]`,
    /// `username NAME nopassword [privilege N]`; `username NAME attributes` is outside scope.
    fn username(&mut self, b: &Block<'_>, c: &mut Cur<'_, '_>) -> R<Option<ItemKind>> {
        let name = c.name("a user name")?;
        let Some(k) = c.next() else { return Err(c.missing("`password` or `nopassword`")) };
        let password = match lower(k.text).as_str() {
            "attributes" => {
                self.ignore_block(b, c.pos.saturating_sub(1));
                return Ok(None);
            }
            "nopassword" => UserPassword::None,
            "password" => {
                let p = c.next().ok_or_else(|| c.missing("a password"))?;
                let form = c.peek().filter(|t| matches!(lower(t.text).as_str(), "pbkdf2" | "encrypted" | "nt-encrypted"));
                if form.is_some() {
                    c.next();
                }
                let masked = p.text.chars().all(|ch| ch == '*');
                match form.map(|t| lower(t.text)) {
                    _ if masked => {
                        self.issues.push(Issue::warning(
                            p.span,
                            format!("user {}: the password is masked (`show running-config` output), so the user is not loaded; write the password or its `$pbkdf2-sha256$` hash with `pbkdf2`", name.node),
                        ));
                        UserPassword::Unusable
                    }
                    Some(f) if f == "pbkdf2" && p.text.starts_with(crypto::password::PREFIX) => {
                        crypto::password::PasswordHash::parse(p.text)
                            .map_err(|e| Issue::error(p.span, format!("user {}: {e}", name.node)))?;
                        UserPassword::Hash(Secret(p.text.to_string()))
                    }
                    Some(f) => {
                        let kind = if f == "pbkdf2" { "an ASA PBKDF2 hash" } else { "an ASA legacy hash" };
                        self.issues.push(Issue::warning(
                            p.span,
                            format!("user {}: the password is {kind}, which holdfast cannot verify, so the user is not loaded; write the password in clear once (holdfast stores it as a salted `$pbkdf2-sha256$` hash)", name.node),
                        ));
                        UserPassword::Unusable
                    }
                    None => {
                        if p.text.starts_with(crypto::password::PREFIX) {
                            return Err(Issue::error(p.span, format!("user {}: this looks like a password hash; add `pbkdf2` after it (`password HASH pbkdf2`), or write the password itself", name.node)));
                        }
                        let n = p.text.chars().count();
                        if !(3..=127).contains(&n) {
                            return Err(Issue::error(p.span, format!("user {}: a password must be 3 to 127 characters", name.node)));
                        }
                        // The clear text is hashed here and dropped: only the salted hash is kept.
                        let h = crypto::password::hash(p.text, &mut crypto::OsRandom::default());
                        UserPassword::Hash(Secret(h.encode()))
                    }
                }
            }
            _ => return Err(Issue::error(k.span, format!("expected `password`, `nopassword` or `attributes`, found `{}`", k.text))),
        };
        self.no_children(b)?;
        let mut privilege = None;
        if c.peek().is_some() {
            c.keyword(&["privilege"])?;
            privilege = Some(c.number::<u8>("a privilege level", 0, 15)?.node);
        }
        c.end()?;
        Ok(Some(ItemKind::Username { name, password, privilege }))
    }

    /// `ssl trust-point TP [NAMEIF]`; other `ssl` settings (ciphers, versions) are outside scope.
    fn ssl(&mut self, b: &Block<'_>, c: &mut Cur<'_, '_>) -> R<Option<ItemKind>> {
        if !c.peek().is_some_and(|t| t.text.eq_ignore_ascii_case("trust-point")) {
            self.ignore_block(b, c.pos);
            return Ok(None);
        }
        self.no_children(b)?;
        c.next();
        let trustpoint = c.name("a trustpoint name")?;
        let nameif = match c.peek() {
            Some(_) => Some(c.name("an interface name (nameif)")?),
            None => None,
        };
        c.end()?;
        Ok(Some(ItemKind::SslTrustpoint { trustpoint, nameif }))
    }
}

fn tg_general_cmd(p: &mut Parser<'_>, l: &Line<'_>) -> R<Option<TgGeneralCmd>> {
    let mut c = Cur::new(l);
    let Some(t) = c.next() else { return Ok(None) };
    let cmd = match lower(t.text).as_str() {
        "address-pool" => {
            // `address-pool (nameif) POOL...`: the interface restriction is not modelled.
            if c.peek().is_some_and(|t| t.text.starts_with('(')) {
                c.next();
            }
            let mut v = Vec::new();
            while c.peek().is_some() {
                v.push(c.name("a pool name")?);
            }
            if v.is_empty() {
                return Err(c.missing("a pool name"));
            }
            if v.len() > 6 {
                return Err(Issue::error(l.span(), "at most 6 address pools per tunnel group"));
            }
            TgGeneralCmd::AddressPools(v)
        }
        "default-group-policy" => TgGeneralCmd::DefaultGroupPolicy(c.name("a group-policy name")?),
        "authentication-server-group" => {
            let g = c.next().ok_or_else(|| c.missing("a server group"))?;
            if !g.text.eq_ignore_ascii_case("LOCAL") {
                return Err(Issue::error(g.span, format!("authentication server group `{}` is not supported: holdfast authenticates against the local user database; use `authentication-server-group LOCAL` and `username` lines", g.text)));
            }
            c.end()?;
            // LOCAL is the default: nothing to keep.
            return Ok(None);
        }
        _ => {
            p.ignore_line(l, 0);
            return Ok(None);
        }
    };
    c.end()?;
    Ok(Some(cmd))
}

fn tg_webvpn_cmd(p: &mut Parser<'_>, l: &Line<'_>) -> R<Option<TgWebvpnCmd>> {
    let mut c = Cur::new(l);
    let Some(t) = c.next() else { return Ok(None) };
    let cmd = match lower(t.text).as_str() {
        "group-alias" => {
            let alias = c.name("an alias")?;
            let enabled = c.keyword(&["enable", "disable"])?.0 == 0;
            TgWebvpnCmd::GroupAlias { alias, enabled }
        }
        "authentication" => {
            let (mut aaa, mut cert) = (false, false);
            while let Some(m) = c.next() {
                match lower(m.text).as_str() {
                    "aaa" => aaa = true,
                    "certificate" => cert = true,
                    "saml" => return Err(Issue::error(m.span, "SAML authentication is not supported; use aaa, certificate or aaa certificate")),
                    other => return Err(Issue::error(m.span, format!("unknown authentication method `{other}` (expected aaa, certificate or aaa certificate)"))),
                }
            }
            TgWebvpnCmd::Authentication(match (aaa, cert) {
                (true, true) => RaAuthentication::AaaCertificate,
                (false, true) => RaAuthentication::Certificate,
                (true, false) => RaAuthentication::Aaa,
                (false, false) => return Err(c.missing("`aaa`, `certificate` or `aaa certificate`")),
            })
        }
        _ => {
            // group-url, customization, dns-group, ...
            p.ignore_line(l, 0);
            return Ok(None);
        }
    };
    c.end()?;
    Ok(Some(cmd))
}

/// `N|none` in minutes.
fn minutes_or_none(c: &mut Cur<'_, '_>, what: &str, min: u64, max: u64) -> R<Option<Duration>> {
    if c.peek().is_some_and(|t| t.text.eq_ignore_ascii_case("none")) {
        c.next();
        return Ok(None);
    }
    if c.peek().is_none() {
        return Err(c.missing(&format!("{what} or `none`")));
    }
    Ok(Some(Duration::from_secs(c.number::<u64>(what, min, max)?.node * 60)))
}

/// `N|none` in seconds (also `seconds N`).
fn seconds_or_none(c: &mut Cur<'_, '_>, what: &str, min: u64, max: u64) -> R<Option<Duration>> {
    if c.peek().is_some_and(|t| t.text.eq_ignore_ascii_case("none")) {
        c.next();
        return Ok(None);
    }
    if c.peek().is_some_and(|t| t.text.eq_ignore_ascii_case("seconds")) {
        c.next();
    }
    if c.peek().is_none() {
        return Err(c.missing(&format!("{what} or `none`")));
    }
    Ok(Some(Duration::from_secs(c.number::<u64>(what, min, max)?.node)))
}

// --- token cursor ----------------------------------------------------------------------------

struct Cur<'l, 'a> {
    line: &'l Line<'a>,
    pos: usize,
    /// `name` aliases [`Cur::ipv4`] resolves (head lines only).
    names: Option<&'l Names>,
    /// Network objects [`Cur::address`] resolves (head lines only).
    objects: Option<&'l Objects>,
}

impl<'l, 'a> Cur<'l, 'a> {
    fn new(line: &'l Line<'a>) -> Self {
        Cur { line, pos: 0, names: None, objects: None }
    }
    fn peek(&self) -> Option<&'l Token<'a>> {
        self.line.tokens.get(self.pos)
    }
    fn next(&mut self) -> Option<&'l Token<'a>> {
        let t = self.line.tokens.get(self.pos);
        if t.is_some() {
            self.pos += 1;
        }
        t
    }
    fn skip_rest(&mut self) {
        self.pos = self.line.tokens.len();
    }
    fn missing(&self, what: &str) -> Issue {
        let after = match self.pos.checked_sub(1).and_then(|i| self.line.tokens.get(i)) {
            Some(t) => format!(" after `{}`", t.text),
            None => String::new(),
        };
        Issue::error(self.line.end_span(), format!("missing {what}{after}"))
    }
    /// No tokens may remain.
    fn end(&mut self) -> R<()> {
        match self.peek() {
            None => Ok(()),
            Some(t) => {
                let last = self.line.tokens.last().map_or(t.span, |l| l.span);
                Err(Issue::error(t.span.to(last), format!("unexpected `{}`", t.text)))
            }
        }
    }
    fn name(&mut self, what: &str) -> R<Spanned<String>> {
        let t = self.next().ok_or_else(|| self.missing(what))?;
        Ok(Spanned::new(t.text.to_string(), t.span))
    }
    fn keyword(&mut self, choices: &[&str]) -> R<(usize, &'l Token<'a>)> {
        let expected = choices.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(" or ");
        let t = self.next().ok_or_else(|| self.missing(&expected))?;
        choices
            .iter()
            .position(|c| t.text.eq_ignore_ascii_case(c))
            .map(|i| (i, t))
            .ok_or_else(|| Issue::error(t.span, format!("expected {expected}, found `{}`", t.text)))
    }
    fn number<T: TryFrom<u64> + Copy>(&mut self, what: &str, min: u64, max: u64) -> R<Spanned<T>> {
        let t = self.next().ok_or_else(|| self.missing(what))?;
        let range = || Issue::error(t.span, format!("expected {what} from {min} to {max}, found `{}`", t.text));
        if t.text.is_empty() || !t.text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(range());
        }
        let n = t.text.parse::<u64>().map_err(|_| range())?;
        if n < min || n > max {
            return Err(range());
        }
        let v = T::try_from(n).map_err(|_| range())?;
        Ok(Spanned::new(v, t.span))
    }
    fn ipv4(&mut self, what: &str) -> R<Spanned<Ipv4Addr>> {
        let t = self.next().ok_or_else(|| self.missing(what))?;
        if let Some(a) = self.names.and_then(|n| n.get(t.text)) {
            return Ok(Spanned::new(*a, t.span));
        }
        t.text
            .parse::<Ipv4Addr>()
            .map(|a| Spanned::new(a, t.span))
            .map_err(|_| Issue::error(t.span, format!("expected {what}, found `{}`", t.text)))
    }
    /// `any`/`any4` | `host A` | `A M` | `object N` | `object-group G` (network objects, resolved
    /// to their prefixes); `interface`, undefined or non-prefix objects and IPv6 come back as
    /// `Unsupported`.
    fn address(&mut self, what: &str) -> R<Result<Vec<Ipv4Net>, Unsupported>> {
        let t = self.peek().ok_or_else(|| self.missing(what))?;
        match lower(t.text).as_str() {
            "any" | "any4" => {
                self.next();
                Ok(Ok(vec![Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0)]))
            }
            "host" => {
                self.next();
                Ok(Ok(vec![Ipv4Net::host(self.ipv4("a host address")?.node)]))
            }
            kw @ ("object" | "object-group") => {
                self.next();
                let n = self.name("an object name")?;
                let group = kw == "object-group";
                match self.objects.map(|o| o.resolve(&n.node, group, 0)) {
                    Some(Ok(nets)) => Ok(Ok(nets)),
                    Some(Err(what)) => Ok(Err(Unsupported { span: t.span.to(n.span), what })),
                    None => Ok(Err(Unsupported { span: t.span, what: format!("`{}` references", t.text) })),
                }
            }
            "interface" => {
                self.next();
                Ok(Err(Unsupported { span: t.span, what: format!("`{}` references", t.text) }))
            }
            "any6" => {
                self.next();
                Ok(Err(Unsupported { span: t.span, what: "IPv6".into() }))
            }
            s if s.contains(':') => {
                self.next();
                Ok(Err(Unsupported { span: t.span, what: "IPv6".into() }))
            }
            _ => {
                let a = self.ipv4(what)?;
                let m = self.ipv4("a netmask")?;
                let prefix = Ipv4Net::prefix_from_mask(m.node)
                    .ok_or_else(|| Issue::error(m.span, format!("netmask {} is not contiguous", m.node)))?;
                let net = Ipv4Net::new(a.node, prefix);
                if net.network() != a.node {
                    return Err(Issue::error(
                        a.span.to(m.span),
                        format!("address {} has bits outside netmask {}; did you mean {}?", a.node, m.node, net.network()),
                    ));
                }
                Ok(Ok(vec![net]))
            }
        }
    }
}

/// `name A.B.C.D NAME [description TEXT]`: checked here, collected by [`collect_names`].
fn name_alias(c: &mut Cur<'_, '_>) -> R<()> {
    let t = c.next().ok_or_else(|| c.missing("an IPv4 address"))?;
    if t.text.parse::<Ipv4Addr>().is_err() {
        // `name 2001:db8::1 NAME`: IPv6 aliases are not used by anything holdfast parses.
        if t.text.contains(':') {
            c.skip_rest();
            return Ok(());
        }
        return Err(Issue::error(t.span, format!("expected an IP address, found `{}`", t.text)));
    }
    let n = c.name("a name")?;
    if n.node.parse::<Ipv4Addr>().is_ok() || n.node.len() > 63 {
        return Err(Issue::error(n.span, "a name is up to 63 characters and not an address"));
    }
    if c.peek().is_some() {
        c.keyword(&["description"])?;
        c.skip_rest();
    }
    Ok(())
}

/// holdfast extension `metrics prometheus listen <ip> [port <n>]` (no ASA equivalent).
fn metrics(c: &mut Cur<'_, '_>) -> R<ItemKind> {
    c.keyword(&["prometheus"])?;
    c.keyword(&["listen"])?;
    let ip = c.ipv4("the metrics listen address")?;
    let mut port = policy::MetricsConfig::DEFAULT_PORT;
    if c.peek().is_some() {
        c.keyword(&["port"])?;
        port = c.number::<u16>("a TCP port", 1, 65535)?.node;
    }
    c.end()?;
    Ok(ItemKind::Metrics { listen: std::net::SocketAddr::new(IpAddr::V4(ip.node), port) })
}

/// The first words of the commands holdfast parses (the rest are ignored or refused). The
/// documentation test (`tests/docs.rs`) checks that `docs/configuration.md` documents each one
/// through [`crate::commands::SUPPORTED`]; a word the dispatcher parses but that is missing
/// here shows up in `Ast::unlisted`.
pub(crate) const TOP_LEVEL: [&str; 19] = [
    "hostname", "names", "name", "interface", "object", "object-group", "access-list", "logging", "metrics", "timeout", "sysopt",
    "crypto", "tunnel-group", "ip", "webvpn", "group-policy", "username", "ssl", "no",
];

/// A supported command within edit distance 2 of `word` (only for words of 5+ letters, so short
/// ASA commands are not mistaken for typos).
fn near_miss(word: &str) -> Option<&'static str> {
    if word.chars().count() < 5 || word.chars().count() > 20 {
        return None;
    }
    TOP_LEVEL.iter().copied().filter(|kw| kw.len() >= 5).find(|kw| edit_distance(word, kw) <= 2)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

fn hms(t: &Token<'_>) -> R<Duration> {
    let bad = || Issue::error(t.span, format!("expected a time as hh:mm:ss, found `{}`", t.text));
    if t.text == "0" {
        return Ok(Duration::ZERO);
    }
    let parts: Vec<&str> = t.text.split(':').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty() || p.len() > 4 || !p.bytes().all(|b| b.is_ascii_digit())) {
        return Err(bad());
    }
    let n = |s: &str| s.parse::<u64>().map_err(|_| bad());
    let (h, m, s) = (n(parts[0])?, n(parts[1])?, n(parts[2])?);
    if m > 59 || s > 59 {
        return Err(bad());
    }
    Ok(Duration::from_secs(h * 3600 + m * 60 + s))
}

/// `h:mm:ss` as the ASA prints timeouts.
pub(crate) fn fmt_hms(secs: u64) -> String {
    format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}
