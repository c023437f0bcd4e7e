//! The spanned syntax tree: one [`Item`] per supported command (with its sub-mode lines), values
//! already typed, each piece that a later check may point at carrying its [`Span`].
//! Lowering ([`crate::lower`]) resolves references and defaults into a `policy::Config`.

use crate::diag::Span;
use policy::{AclAction, MtuPolicy, RaAuthentication, RekeyMethod, SplitTunnelPolicy, VpnTunnelProtocol, ConnectionType, DhGroup, Dpd, Encryption, Integrity, Ipv4Net, Prf, Secret, TunnelGroupKind};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spanned<T> {
    pub node: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    pub fn new(node: T, span: Span) -> Self {
        Spanned { node, span }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Ast {
    pub items: Vec<Item>,
    /// Lines for features outside holdfast's scope.
    pub ignored: Vec<Ignored>,
    /// Words of head lines whose block had an error: references to these names are not reported
    /// again as undefined (one mistake, one message).
    pub failed_names: std::collections::BTreeSet<String>,
    /// Line numbers of head lines whose block had an error: their completeness is not checked.
    pub failed_lines: std::collections::BTreeSet<u32>,
    /// First words the parser handled that are missing from its table of top-level commands
    /// (a development mistake: the documentation test requires this to be empty).
    pub unlisted: Vec<String>,
}

/// A line for a feature outside holdfast's scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// The token that names the feature.
    pub span: Span,
    /// The command words up to that token, quoted: "`logging asdm`".
    pub what: String,
}

#[derive(Debug, Clone)]
pub struct Item {
    /// The command's (unindented) line.
    pub span: Span,
    pub kind: ItemKind,
}

#[derive(Debug, Clone)]
pub enum ItemKind {
    Hostname(Spanned<String>),
    Interface { name: Spanned<String>, body: Vec<Spanned<IfaceCmd>> },
    AccessList { name: Spanned<String>, entry: AclLine },
    /// `access-list NAME remark ...`: accepted, not kept.
    AccessListRemark { name: Spanned<String> },
    Logging(LoggingCmd),
    /// holdfast extension `metrics prometheus listen <ip> [port <n>]`.
    Metrics { listen: std::net::SocketAddr },
    Timeout(Vec<TimeoutSetting>),
    Sysopt { no: bool, opt: SysoptCmd },
    Ikev2Policy { priority: Spanned<u32>, body: Vec<Spanned<IkePolicyCmd>> },
    Ikev2Enable { nameif: Spanned<String>, client_services: Option<Spanned<u16>> },
    Ikev2CookieChallenge(Spanned<u32>),
    Ikev2MaxInNegotiation(Spanned<u32>),
    /// `crypto ikev2 fragmentation [mtu N]` (enabled) / `no crypto ikev2 fragmentation`.
    Ikev2Fragmentation { enabled: bool, mtu: Option<Spanned<u16>> },
    /// holdfast extension `crypto ikev2 retransmit <base-ms> <tries>`.
    Ikev2Retransmit { base_ms: Spanned<u32>, tries: Spanned<u32> },
    IpsecProposal { name: Spanned<String>, body: Vec<Spanned<ProposalCmd>> },
    /// `crypto ipsec security-association lifetime ...`: default for crypto map entries.
    IpsecGlobalLifetime(Lifetime),
    CryptoMap { map: Spanned<String>, seq: Spanned<u32>, cmd: CryptoMapCmd },
    CryptoMapInterface { map: Spanned<String>, nameif: Spanned<String> },
    TunnelGroupType { name: Spanned<String>, kind: Spanned<TunnelGroupKind> },
    TunnelGroupIpsec { name: Spanned<String>, body: Vec<Spanned<TgIpsecCmd>> },
    /// `tunnel-group X general-attributes`. Used for remote-access groups; for `ipsec-l2l`
    /// groups the lines are outside holdfast's scope and `raw` says how to report them.
    TunnelGroupGeneral { name: Spanned<String>, body: Vec<Spanned<TgGeneralCmd>>, raw: Vec<Ignored> },
    /// `tunnel-group X webvpn-attributes` (remote access).
    TunnelGroupWebvpn { name: Spanned<String>, body: Vec<Spanned<TgWebvpnCmd>> },
    /// `ip local pool NAME START-END mask MASK`.
    IpLocalPool { name: Spanned<String>, start: Ipv4Addr, end: Ipv4Addr, range: Span, prefix_len: u8, mask_span: Span },
    /// The global `webvpn` mode.
    WebVpn { body: Vec<Spanned<WebVpnCmd>> },
    /// `group-policy NAME internal`.
    GroupPolicyInternal { name: Spanned<String> },
    /// `group-policy NAME attributes` with its lines (the nested `webvpn` mode flattened).
    GroupPolicyAttributes { name: Spanned<String>, body: Vec<Spanned<GpCmd>> },
    /// `username NAME password ... [privilege N]` / `username NAME nopassword`. A clear password
    /// is already hashed here.
    Username { name: Spanned<String>, password: UserPassword, privilege: Option<u8> },
    /// `ssl trust-point TP [NAMEIF]`.
    SslTrustpoint { trustpoint: Spanned<String>, nameif: Option<Spanned<String>> },
    /// `crypto ca trustpoint NAME` with its holdfast file lines.
    Trustpoint { name: Spanned<String>, body: Vec<Spanned<TrustpointCmd>> },
}

/// holdfast extension lines of `crypto ca trustpoint` (the ASA imports certificates instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustpointCmd {
    CertificateFile(Spanned<String>),
    KeyFile(Spanned<String>),
    CaFile(Spanned<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfaceCmd {
    /// `nameif X` / `no nameif`.
    Nameif(Option<Spanned<String>>),
    /// `ip address A M` / `no ip address`.
    IpAddress(Option<Ipv4Net>),
    SecurityLevel(Option<u8>),
    /// `shutdown` = true, `no shutdown` = false.
    Shutdown(bool),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclLine {
    pub standard: bool,
    pub action: AclAction,
    /// `Err` when the line uses a form holdfast cannot represent (ports, service objects,
    /// IPv6): harmless in an ACL that no crypto map uses, an error otherwise. Network object
    /// groups expand one line into several bodies.
    pub body: Result<Vec<AclBody>, Unsupported>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclBody {
    pub protocol: Option<u8>,
    pub source: Ipv4Net,
    pub destination: Ipv4Net,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub span: Span,
    pub what: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoggingCmd {
    Enable(bool),
    Timestamp(bool),
    Trap(u8),
    Buffered(u8),
    Host { nameif: Spanned<String>, addr: IpAddr, port: u16 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    Conn,
    HalfClosed,
    Udp,
    Icmp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeoutSetting {
    pub kind: TimeoutKind,
    /// Zero means "never" (where the ASA allows it).
    pub value: Duration,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SysoptCmd {
    Timewait,
    Tcpmss(u16),
    TcpmssMinimum(u16),
    PermitVpn,
    ReclassifyVpn,
    PreserveVpnFlows,
    /// holdfast extension `sysopt connection preserve-vpn-flows udp`.
    PreserveVpnFlowsUdp,
    NodnsaliasInbound,
    NodnsaliasOutbound,
    RadiusIgnoreSecret,
    Noproxyarp(Spanned<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IkePolicyCmd {
    Encryption(Vec<Encryption>),
    Integrity(Vec<Integrity>),
    Group(Vec<DhGroup>),
    Prf(Vec<Prf>),
    /// `lifetime seconds N` = `Some`, `lifetime none` = `None`.
    Lifetime(Option<Duration>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposalCmd {
    Encryption(Vec<Encryption>),
    Integrity(Vec<Integrity>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lifetime {
    pub seconds: Option<u64>,
    /// `Some(None)` = `kilobytes unlimited`.
    pub kilobytes: Option<Option<u64>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CryptoMapCmd {
    MatchAddress(Spanned<String>),
    Peer(Vec<Spanned<IpAddr>>),
    Ikev2Proposals(Vec<Spanned<String>>),
    Pfs(DhGroup),
    Lifetime(Lifetime),
    ConnectionType(ConnectionType),
    NatTDisable,
    /// holdfast extension `set udp-encapsulation force`.
    ForceUdpEncap,
    /// `set trustpoint TP [chain]`.
    Trustpoint(Spanned<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TgIpsecCmd {
    RemotePsk(Secret),
    LocalPsk(Secret),
    /// `ikev2 remote-authentication certificate`.
    RemoteCert,
    /// `ikev2 local-authentication certificate TP`.
    LocalCert(Spanned<String>),
    /// `isakmp keepalive threshold T retry R` = `Some`, `isakmp keepalive disable` = `None`.
    Keepalive(Option<Dpd>),
}

/// `webvpn` (global) lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebVpnCmd {
    Enable(Spanned<String>),
    Port(u16),
    DtlsPort(u16),
    AnyconnectEnable,
    TunnelGroupList(bool),
}

/// `group-policy NAME attributes` lines, and its nested `webvpn` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpCmd {
    VpnTunnelProtocol(Vec<VpnTunnelProtocol>),
    SplitTunnelPolicy(SplitTunnelPolicy),
    /// `value ACL` = `Some`, `none` = `None`.
    SplitTunnelNetworkList(Option<Spanned<String>>),
    DnsServers(Vec<Ipv4Addr>),
    DefaultDomain(Option<String>),
    /// `None` = `none`.
    IdleTimeout(Option<Duration>),
    SessionTimeout(Option<Duration>),
    /// `address-pools value P...`; empty = `address-pools none`.
    AddressPools(Vec<Spanned<String>>),
    Mtu(u16),
    /// holdfast extension `anyconnect mtu-policy common|split`.
    MtuPolicy(MtuPolicy),
    Dtls(bool),
    DfBitIgnore(bool),
    DpdClient(Option<Duration>),
    DpdGateway(Option<Duration>),
    Keepalive(Option<Duration>),
    RekeyTime(Option<Duration>),
    RekeyMethod(RekeyMethod),
}

/// `tunnel-group NAME general-attributes` lines holdfast uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TgGeneralCmd {
    AddressPools(Vec<Spanned<String>>),
    DefaultGroupPolicy(Spanned<String>),
}

/// `tunnel-group NAME webvpn-attributes` lines holdfast uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TgWebvpnCmd {
    GroupAlias { alias: Spanned<String>, enabled: bool },
    Authentication(RaAuthentication),
}

/// A user's password as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserPassword {
    /// A `$pbkdf2-sha256$` hash: made at load from a clear password, or given with `pbkdf2`.
    Hash(Secret),
    /// `nopassword`.
    None,
    /// Masked (`*****`) or an ASA hash holdfast cannot verify: the user is not loaded (the
    /// parser has said so in a warning).
    Unusable,
}
