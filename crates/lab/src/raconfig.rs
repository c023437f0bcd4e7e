//! The ASA configuration of the remote-access lab, built in one place.
//!
//! Every remote-access lab test (and the remote-access benchmarks) runs `holdfast run` from the
//! issue-5 configuration with a few knobs turned: another pool, more users, a certificate
//! tunnel group, no `anyconnect mtu`, the ASA's split MTUs, a syslog host, more split-tunnel
//! networks. [`RaConfigText`] starts from the issue's policy and changes only what a caller
//! asks for, so the tests differ exactly where they mean to. Tests that assert a diagnostic's
//! `FILE:LINE:COL` ask the builder for the line of a statement ([`RaConfigText::line_of`])
//! instead of counting lines of a text they did not write.
//!
//! ocserv's configuration is another syntax; what the two servers really share in a
//! benchmark — the pool, the split-include network, the MTU and DPD — comes from
//! [`RaPool`], [`SPLIT`] and [`crate::ocserv::RaTuning`].

use crate::openconnect::{ServerCert, GW_INSIDE_IP, GW_OUTSIDE_IP};
use crate::{io_err, Result};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The split-include network of the issue's `access-list SPLIT` (the server's network).
pub const SPLIT: &str = "10.1.0.0/24";

/// An `ip local pool NAME FIRST-LAST mask MASK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaPool {
    pub name: String,
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    pub mask: Ipv4Addr,
}

impl RaPool {
    /// The issue's `ip local pool VPNPOOL 10.99.0.100-10.99.0.199 mask 255.255.255.0`.
    pub fn issue() -> RaPool {
        RaPool::new("VPNPOOL", "10.99.0.100", "10.99.0.199", "255.255.255.0")
    }

    /// # Panics
    /// When an address is not dotted-quad IPv4 (a typo in a test).
    pub fn new(name: &str, first: &str, last: &str, mask: &str) -> RaPool {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap_or_else(|_| panic!("pool {name}: {s:?} is not an IPv4 address"));
        RaPool { name: name.to_string(), first: ip(first), last: ip(last), mask: ip(mask) }
    }

    /// The network the pool's mask makes of its first address, and the mask.
    pub fn network(&self) -> (Ipv4Addr, Ipv4Addr) {
        (Ipv4Addr::from(u32::from(self.first) & u32::from(self.mask)), self.mask)
    }

    /// `NET/LEN` as `ip route` prints the route the daemon adds for this pool.
    pub fn prefix(&self) -> String {
        let (net, mask) = self.network();
        format!("{net}/{}", u32::from(mask).count_ones())
    }

    /// The statement as it stands in the configuration.
    pub fn statement(&self) -> String {
        format!("ip local pool {} {}-{} mask {}", self.name, self.first, self.last, self.mask)
    }
}

/// How a user of the local database is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSecret {
    /// `username NAME password CLEAR` (hashed by holdfast at load).
    Password(String),
    /// `username NAME password $pbkdf2-sha256$... pbkdf2`.
    Pbkdf2(String),
}

/// A `tunnel-group NAME type remote-access` with its general and webvpn attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaTunnelGroup {
    pub name: String,
    /// `address-pool`.
    pub pool: String,
    /// `authentication certificate` (needs [`RaConfigText::client_ca`]).
    pub certificate: bool,
}

/// The remote-access lab's ASA configuration: the issue's policy unless told otherwise.
///
/// Defaults (issue 5): `hostname ra-gw`, outside 203.0.113.1/24, inside 10.1.0.1/24,
/// `logging enable` + `logging buffered informational`, `access-list SPLIT` 10.1.0.0/24,
/// pool VPNPOOL 10.99.0.100-10.99.0.199/24, `webvpn` on outside with `dtls port 443`,
/// group-policy `ac_users_group` (ssl-client, tunnelspecified, `anyconnect mtu 1300`, DTLS on,
/// df-bit-ignore on, DPD 30 both ways), tunnel-group `RA` (VPNPOOL, alias RA), user `vpn`,
/// `sysopt connection tcpmss 1380`, trustpoint VPN-TP with the server certificate and key.
#[derive(Debug, Clone)]
pub struct RaConfigText {
    hostname: String,
    cert_file: PathBuf,
    key_file: PathBuf,
    ca_file: Option<PathBuf>,
    logging_host: Option<String>,
    split: Vec<String>,
    pools: Vec<RaPool>,
    groups: Vec<RaTunnelGroup>,
    users: Vec<(String, UserSecret)>,
    dtls_port: u16,
    tunnel_group_list: bool,
    mtu: Option<u16>,
    mtu_policy_split: bool,
    dtls: bool,
    df_bit_ignore: bool,
    dpd: Option<u32>,
    tcpmss: Option<u16>,
    gp_webvpn: Vec<String>,
    extra: String,
}

impl RaConfigText {
    /// The issue's configuration with `cert`'s certificate and key and user `vpn` / `password`.
    pub fn issue(cert: &ServerCert, password: &str) -> RaConfigText {
        RaConfigText {
            hostname: "ra-gw".into(),
            cert_file: cert.cert.clone(),
            key_file: cert.key.clone(),
            ca_file: None,
            logging_host: None,
            split: vec![SPLIT.into()],
            pools: vec![RaPool::issue()],
            groups: vec![RaTunnelGroup { name: "RA".into(), pool: "VPNPOOL".into(), certificate: false }],
            users: vec![("vpn".into(), UserSecret::Password(password.into()))],
            dtls_port: 443,
            tunnel_group_list: false,
            mtu: Some(1300),
            mtu_policy_split: false,
            dtls: true,
            df_bit_ignore: true,
            dpd: Some(30),
            tcpmss: Some(1380),
            gp_webvpn: Vec::new(),
            extra: String::new(),
        }
    }

    pub fn hostname(mut self, name: &str) -> Self {
        self.hostname = name.into();
        self
    }

    /// The trustpoint's `certificate-file` and `key-file` (e.g. a key of another certificate).
    pub fn server_files(mut self, cert_file: &Path, key_file: &Path) -> Self {
        self.cert_file = cert_file.into();
        self.key_file = key_file.into();
        self
    }

    /// `ca-file` in the trustpoint: the CA that issues client certificates.
    pub fn client_ca(mut self, ca_file: &Path) -> Self {
        self.ca_file = Some(ca_file.into());
        self
    }

    /// `logging trap informational` + `logging host inside IP`.
    pub fn logging_host(mut self, ip: &str) -> Self {
        self.logging_host = Some(ip.into());
        self
    }

    /// One more network (`NET/LEN`) in the split-include list `SPLIT`.
    pub fn add_split(mut self, cidr: &str) -> Self {
        self.split.push(cidr.into());
        self
    }

    /// Replaces the range and mask of pool `VPNPOOL`.
    pub fn pool(mut self, first: &str, last: &str, mask: &str) -> Self {
        self.pools[0] = RaPool::new("VPNPOOL", first, last, mask);
        self
    }

    /// Another pool (after the others).
    pub fn add_pool(mut self, pool: RaPool) -> Self {
        self.pools.push(pool);
        self
    }

    /// Another remote-access tunnel group (alias = its name, the shared group policy) taking
    /// its addresses from `pool`; `certificate` = `authentication certificate`.
    pub fn add_tunnel_group(mut self, name: &str, pool: &str, certificate: bool) -> Self {
        self.groups.push(RaTunnelGroup { name: name.into(), pool: pool.into(), certificate });
        self
    }

    /// Another user with a clear-text password.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.into(), UserSecret::Password(password.into())));
        self
    }

    /// Another user given by a `$pbkdf2-sha256$` hash.
    pub fn user_hash(mut self, name: &str, hash: &str) -> Self {
        self.users.push((name.into(), UserSecret::Pbkdf2(hash.into())));
        self
    }

    pub fn dtls_port(mut self, port: u16) -> Self {
        self.dtls_port = port;
        self
    }

    /// `tunnel-group-list enable` in `webvpn`: the login form lists the groups' aliases, so a
    /// client can pick one (`openconnect --authgroup NAME`).
    pub fn tunnel_group_list(mut self, on: bool) -> Self {
        self.tunnel_group_list = on;
        self
    }

    /// `anyconnect mtu N` in the group policy, or none (`None`: the channels' own MTUs).
    pub fn mtu(mut self, mtu: Option<u16>) -> Self {
        self.mtu = mtu;
        self
    }

    /// `anyconnect mtu-policy split` (the ASA's separate TLS and DTLS MTUs).
    pub fn mtu_policy_split(mut self, split: bool) -> Self {
        self.mtu_policy_split = split;
        self
    }

    /// `anyconnect ssl dtls enable` / `none`.
    pub fn dtls(mut self, on: bool) -> Self {
        self.dtls = on;
        self
    }

    /// `anyconnect ssl df-bit-ignore enable` / `disable`.
    pub fn df_bit_ignore(mut self, on: bool) -> Self {
        self.df_bit_ignore = on;
        self
    }

    /// `anyconnect dpd-interval client|gateway N`, or neither line (`None`).
    pub fn dpd(mut self, secs: Option<u32>) -> Self {
        self.dpd = secs;
        self
    }

    /// `sysopt connection tcpmss N`, or no such line (`None`).
    pub fn tcpmss(mut self, mss: Option<u16>) -> Self {
        self.tcpmss = mss;
        self
    }

    /// A line (without indentation) for the group policy's `webvpn` mode.
    pub fn gp_webvpn(mut self, line: &str) -> Self {
        self.gp_webvpn.push(line.into());
        self
    }

    /// Text appended at the end (whole lines, each ending in a newline).
    pub fn extra(mut self, text: &str) -> Self {
        self.extra.push_str(text);
        self
    }

    /// The configuration text.
    pub fn text(&self) -> String {
        let mut t = String::new();
        let mut w = |s: String| {
            t.push_str(&s);
            t.push('\n');
        };
        w(format!("hostname {}", self.hostname));
        w("interface out\n nameif outside\n security-level 0".into());
        w(format!(" ip address {GW_OUTSIDE_IP} 255.255.255.0"));
        w("interface in\n nameif inside\n security-level 100".into());
        w(format!(" ip address {GW_INSIDE_IP} 255.255.255.0"));
        w("logging enable\nlogging buffered informational".into());
        if let Some(h) = &self.logging_host {
            w(format!("logging trap informational\nlogging host inside {h}"));
        }
        for cidr in &self.split {
            let (net, mask) = cidr_mask(cidr);
            w(format!("access-list SPLIT standard permit {net} {mask}"));
        }
        for p in &self.pools {
            w(p.statement());
        }
        w(format!("webvpn\n enable outside\n anyconnect enable\n dtls port {}", self.dtls_port));
        if self.tunnel_group_list {
            w(" tunnel-group-list enable".into());
        }
        w("group-policy ac_users_group internal\ngroup-policy ac_users_group attributes".into());
        w(" vpn-tunnel-protocol ssl-client\n split-tunnel-policy tunnelspecified\n split-tunnel-network-list value SPLIT\n webvpn".into());
        if let Some(m) = self.mtu {
            w(format!("  anyconnect mtu {m}"));
        }
        w(format!("  anyconnect ssl dtls {}", if self.dtls { "enable" } else { "none" }));
        w(format!("  anyconnect ssl df-bit-ignore {}", if self.df_bit_ignore { "enable" } else { "disable" }));
        if let Some(d) = self.dpd {
            w(format!("  anyconnect dpd-interval client {d}\n  anyconnect dpd-interval gateway {d}"));
        }
        if self.mtu_policy_split {
            w("  anyconnect mtu-policy split".into());
        }
        for l in &self.gp_webvpn {
            w(format!("  {l}"));
        }
        for g in &self.groups {
            let n = &g.name;
            w(format!("tunnel-group {n} type remote-access\ntunnel-group {n} general-attributes"));
            w(format!(" address-pool {}\n default-group-policy ac_users_group", g.pool));
            w(format!("tunnel-group {n} webvpn-attributes\n group-alias {n} enable"));
            if g.certificate {
                w(" authentication certificate".into());
            }
        }
        for (name, secret) in &self.users {
            match secret {
                UserSecret::Password(p) => w(format!("username {name} password {p}")),
                UserSecret::Pbkdf2(h) => w(format!("username {name} password {h} pbkdf2")),
            }
        }
        if let Some(m) = self.tcpmss {
            w(format!("sysopt connection tcpmss {m}"));
        }
        w("crypto ca trustpoint VPN-TP".into());
        w(format!(" certificate-file {}\n key-file {}", self.cert_file.display(), self.key_file.display()));
        if let Some(ca) = &self.ca_file {
            w(format!(" ca-file {}", ca.display()));
        }
        w("ssl trust-point VPN-TP outside".into());
        let _ = write!(t, "{}", self.extra);
        t
    }

    /// 1-based number of the first line whose text, leading and trailing blanks aside, is
    /// `statement` (for `FILE:LINE:COL` diagnostics).
    ///
    /// # Panics
    /// When no line is that statement (the test asks about a line it never configured).
    pub fn line_of(&self, statement: &str) -> usize {
        let text = self.text();
        let want = statement.trim();
        text.lines().position(|l| l.trim() == want).map(|i| i + 1).unwrap_or_else(|| panic!("no line `{want}` in:\n{text}"))
    }

    /// Writes [`RaConfigText::text`] to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.text()).map_err(io_err(format!("writing {}", path.display())))
    }
}

impl std::fmt::Display for RaConfigText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text())
    }
}

/// `NET/LEN` as (`NET`, dotted mask).
///
/// # Panics
/// On a malformed prefix (a typo in a test).
pub fn cidr_mask(cidr: &str) -> (String, Ipv4Addr) {
    let (net, len) = cidr.split_once('/').unwrap_or_else(|| panic!("{cidr:?} is not NET/LEN"));
    let len: u32 = len.parse().ok().filter(|l| *l <= 32).unwrap_or_else(|| panic!("{cidr:?}: bad prefix length"));
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    (net.to_string(), Ipv4Addr::from(mask))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> ServerCert {
        ServerCert { cert: "/x/server.pem".into(), key: "/x/server.key".into(), pin: String::new() }
    }

    #[test]
    fn defaults_are_the_issue_policy_and_knobs_change_only_their_lines() {
        let base = RaConfigText::issue(&cert(), "pw-1");
        let t = base.text();
        for l in [
            "access-list SPLIT standard permit 10.1.0.0 255.255.255.0",
            "ip local pool VPNPOOL 10.99.0.100-10.99.0.199 mask 255.255.255.0",
            " dtls port 443",
            "  anyconnect mtu 1300",
            "  anyconnect ssl dtls enable",
            "  anyconnect ssl df-bit-ignore enable",
            "  anyconnect dpd-interval client 30",
            "  anyconnect dpd-interval gateway 30",
            " address-pool VPNPOOL",
            "username vpn password pw-1",
            "sysopt connection tcpmss 1380",
            " certificate-file /x/server.pem",
            " key-file /x/server.key",
        ] {
            assert!(t.lines().any(|x| x == l), "{l:?} missing:\n{t}");
        }
        assert!(!t.contains("mtu-policy") && !t.contains("tunnel-group-list") && !t.contains("ca-file") && !t.contains("logging host"), "{t}");
        let v = base
            .clone()
            .mtu(None)
            .tcpmss(None)
            .dtls(false)
            .df_bit_ignore(false)
            .dpd(None)
            .mtu_policy_split(true)
            .add_split("10.2.0.0/16")
            .pool("10.99.0.150", "10.99.0.199", "255.255.255.0")
            .add_pool(RaPool::new("POOL2", "10.98.0.10", "10.98.0.20", "255.255.255.0"))
            .add_tunnel_group("RA2", "POOL2", false)
            .user_hash("h", "$pbkdf2-sha256$x")
            .dtls_port(4443)
            .tunnel_group_list(true)
            .text();
        for l in [
            "access-list SPLIT standard permit 10.2.0.0 255.255.0.0",
            "ip local pool VPNPOOL 10.99.0.150-10.99.0.199 mask 255.255.255.0",
            "ip local pool POOL2 10.98.0.10-10.98.0.20 mask 255.255.255.0",
            "tunnel-group RA2 general-attributes",
            " address-pool POOL2",
            "username h password $pbkdf2-sha256$x pbkdf2",
            " dtls port 4443",
            "  anyconnect ssl dtls none",
            "  anyconnect ssl df-bit-ignore disable",
            "  anyconnect mtu-policy split",
            " tunnel-group-list enable",
        ] {
            assert!(v.lines().any(|x| x == l), "{l:?} missing:\n{v}");
        }
        assert!(!v.contains("anyconnect mtu 1300") && !v.contains("tcpmss") && !v.contains("dpd-interval"), "{v}");
    }

    #[test]
    fn line_of_counts_from_one_and_pool_prefix() {
        let c = RaConfigText::issue(&cert(), "pw-1");
        assert_eq!(c.line_of("hostname ra-gw"), 1);
        let n = c.line_of("dtls port 443");
        assert_eq!(c.text().lines().nth(n - 1), Some(" dtls port 443"));
        assert_eq!(RaPool::issue().prefix(), "10.99.0.0/24");
        assert_eq!(RaPool::new("P", "10.99.0.10", "10.99.3.250", "255.255.252.0").prefix(), "10.99.0.0/22");
        assert_eq!(cidr_mask("10.1.0.0/24").1, Ipv4Addr::new(255, 255, 255, 0));
    }
}
