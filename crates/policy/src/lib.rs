//! Plain data the engines consume: interfaces, tunnels, proposals, ACLs, lifetimes, logging.
//!
//! `config` turns ASA syntax into a [`Config`]; `ike`, `esp` and `gateway` read it. Nothing here
//! does I/O or knows about syntax. Every type is serializable so that state built from it can be
//! replicated (failover, scale-out) without a second representation.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// The whole gateway configuration after parsing and validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Config {
    pub hostname: Option<String>,
    pub interfaces: Vec<Interface>,
    pub access_lists: Vec<AccessList>,
    /// `crypto ikev2 policy N`, ordered by priority (lowest number first).
    pub ikev2_policies: Vec<Ikev2Policy>,
    /// `crypto ikev2 enable <nameif>`.
    pub ikev2_enabled_on: Vec<String>,
    /// `crypto ikev2 enable <nameif> client-services [port N]` (remote access; default port 443).
    pub ikev2_client_services: Vec<ClientServices>,
    pub ikev2: Ikev2Globals,
    /// `crypto ipsec ikev2 ipsec-proposal NAME`.
    pub ipsec_proposals: Vec<IpsecProposal>,
    /// `crypto map NAME SEQ ...` entries, ordered by (map name, sequence).
    pub crypto_maps: Vec<CryptoMapEntry>,
    /// `crypto map NAME interface <nameif>`.
    pub crypto_map_bindings: Vec<CryptoMapBinding>,
    pub tunnel_groups: Vec<TunnelGroup>,
    /// `crypto ca trustpoint NAME` (with the holdfast file extensions).
    #[serde(default)]
    pub trustpoints: Vec<Trustpoint>,
    pub logging: Logging,
    pub sysopt: Sysopt,
    pub timeouts: Timeouts,
    /// AnyConnect / SSL VPN remote access (`webvpn`, `ip local pool`, `group-policy`,
    /// remote-access `tunnel-group` attributes, `username`, `ssl trust-point`). `None` when the
    /// configuration has none of these lines. See [`RemoteAccess`] and
    /// [`Config::anyconnect_group`] for the resolved, engine-facing view.
    #[serde(default)]
    pub remote_access: Option<RemoteAccess>,
    /// holdfast extension `metrics prometheus listen <ip> [port <n>]`: where the daemon serves
    /// `GET /metrics` in the Prometheus text format. `None`: no metrics listener.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
}

/// The Prometheus metrics listener (holdfast extension; the ASA has SNMP instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsConfig {
    pub listen: std::net::SocketAddr,
}

impl MetricsConfig {
    /// The port used when `port` is omitted (the OpenTelemetry/Prometheus exporter convention).
    pub const DEFAULT_PORT: u16 = 9464;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// The Linux interface name (`interface eth-out`).
    pub name: String,
    /// `nameif outside`.
    pub nameif: Option<String>,
    /// `ip address A M`.
    pub address: Option<Ipv4Net>,
    pub security_level: Option<u8>,
    pub shutdown: bool,
}

/// An IPv4 prefix; `addr` is stored as written (host bits allowed for interface addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Net {
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Self {
        Self { addr, prefix_len: prefix_len.min(32) }
    }
    pub fn host(addr: Ipv4Addr) -> Self {
        Self::new(addr, 32)
    }
    pub fn mask(&self) -> Ipv4Addr {
        let bits = if self.prefix_len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix_len)) };
        Ipv4Addr::from(bits)
    }
    /// First address of the prefix (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & u32::from(self.mask()))
    }
    /// Last address of the prefix.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) | !u32::from(self.mask()))
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & u32::from(self.mask()) == u32::from(self.network())
    }
    /// Converts a dotted netmask to a prefix length; `None` if the mask is not contiguous.
    pub fn prefix_from_mask(mask: Ipv4Addr) -> Option<u8> {
        let m = u32::from(mask);
        let len = m.leading_ones();
        (m.checked_shl(len).unwrap_or(0) == 0).then_some(len as u8)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessList {
    pub name: String,
    pub entries: Vec<AclEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclEntry {
    pub action: AclAction,
    /// IP protocol number; `None` means `ip` (any protocol).
    pub protocol: Option<u8>,
    pub source: Ipv4Net,
    pub destination: Ipv4Net,
    /// `standard` access lists have only a destination-style network; kept as `source` = any.
    pub standard: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AclAction {
    Permit,
    Deny,
}

// ---------------------------------------------------------------------------------------------
// Algorithms. Names follow the ASA keywords; `ike` maps them to IANA transform IDs.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Encryption {
    AesCbc128,
    AesCbc192,
    AesCbc256,
    AesGcm128,
    AesGcm192,
    AesGcm256,
}

impl Encryption {
    pub fn is_aead(self) -> bool {
        matches!(self, Self::AesGcm128 | Self::AesGcm192 | Self::AesGcm256)
    }
    /// Key length in bits (without the 4-byte GCM salt).
    pub fn key_bits(self) -> u16 {
        match self {
            Self::AesCbc128 | Self::AesGcm128 => 128,
            Self::AesCbc192 | Self::AesGcm192 => 192,
            Self::AesCbc256 | Self::AesGcm256 => 256,
        }
    }
}

/// Integrity algorithm (IKE `integrity`, ESP `protocol esp integrity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Integrity {
    /// Only valid with AEAD encryption.
    Null,
    /// HMAC-SHA1-96.
    Sha1,
    /// HMAC-SHA2-256-128.
    Sha256,
    /// HMAC-SHA2-384-192.
    Sha384,
    /// HMAC-SHA2-512-256.
    Sha512,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Prf {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

/// Diffie-Hellman groups (IANA numbers). Groups below 14 are refused by `config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DhGroup {
    Modp2048 = 14,
    Modp3072 = 15,
    Modp4096 = 16,
    Ecp256 = 19,
    Ecp384 = 20,
    Ecp521 = 21,
    Curve25519 = 31,
}

impl DhGroup {
    pub fn number(self) -> u16 {
        self as u16
    }
    pub fn from_number(n: u16) -> Option<Self> {
        Some(match n {
            14 => Self::Modp2048,
            15 => Self::Modp3072,
            16 => Self::Modp4096,
            19 => Self::Ecp256,
            20 => Self::Ecp384,
            21 => Self::Ecp521,
            31 => Self::Curve25519,
            _ => return None,
        })
    }
}

/// `crypto ikev2 policy N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ikev2Policy {
    pub priority: u32,
    pub encryption: Vec<Encryption>,
    pub integrity: Vec<Integrity>,
    pub groups: Vec<DhGroup>,
    pub prf: Vec<Prf>,
    /// `lifetime seconds N` (ASA default 86400). `None` = `lifetime none` (never rekey).
    pub lifetime: Option<Duration>,
}

/// Global IKEv2 knobs (`crypto ikev2 ...`), with holdfast extensions for liveness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ikev2Globals {
    /// `crypto ikev2 cookie-challenge N`: percentage of the half-open limit at which cookies
    /// are demanded (ASA default 50).
    pub cookie_challenge_percent: u32,
    /// `crypto ikev2 limit max-in-negotiation-sa N` (half-open SAs admitted).
    pub max_in_negotiation: u32,
    /// `crypto ikev2 fragmentation mtu N` (ASA default 576), `None` when `no crypto ikev2 fragmentation`.
    pub fragmentation_mtu: Option<u16>,
    /// Retransmission: first timeout, backoff multiplier (x1000), tries. holdfast extension
    /// `crypto ikev2 retransmit <base-ms> <tries>`.
    pub retransmit_base: Duration,
    pub retransmit_tries: u32,
}

impl Default for Ikev2Globals {
    fn default() -> Self {
        Self {
            cookie_challenge_percent: 50,
            max_in_negotiation: 100,
            fragmentation_mtu: Some(576),
            retransmit_base: Duration::from_millis(1000),
            retransmit_tries: 5,
        }
    }
}

/// `crypto ipsec ikev2 ipsec-proposal NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpsecProposal {
    pub name: String,
    pub encryption: Vec<Encryption>,
    /// `protocol esp integrity sha-256 sha-1`; empty or `null` with GCM.
    pub integrity: Vec<Integrity>,
}

/// One `crypto map NAME SEQ` entry: a LAN-to-LAN tunnel definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CryptoMapEntry {
    pub map: String,
    pub seq: u32,
    /// `match address ACL`.
    pub match_address: String,
    /// `set peer A [B ...]` (first reachable is used).
    pub peers: Vec<IpAddr>,
    /// `set ikev2 ipsec-proposal P1 [P2 ...]`.
    pub ikev2_proposals: Vec<String>,
    /// `set pfs [groupN]` (`set pfs` alone = group 14 here, since group 2 is refused).
    pub pfs: Option<DhGroup>,
    /// `set security-association lifetime seconds S kilobytes K` (ASA defaults 28800 / 4608000).
    pub lifetime_seconds: u64,
    /// `None` = `kilobytes unlimited`.
    pub lifetime_kilobytes: Option<u64>,
    /// `set nat-t-disable` — never UDP-encapsulate even if NAT is detected (native ESP only).
    pub nat_t_disable: bool,
    /// holdfast extension `set udp-encapsulation force`: always UDP 4500 even with no NAT.
    pub force_udp_encap: bool,
    /// `set connection-type {bidirectional|originate-only|answer-only}`.
    pub connection_type: ConnectionType,
    /// `set trustpoint TP`: the trustpoint whose certificate this entry sends when the tunnel
    /// group authenticates us with a certificate (overrides the tunnel group's trustpoint).
    #[serde(default)]
    pub trustpoint: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ConnectionType {
    #[default]
    Bidirectional,
    OriginateOnly,
    AnswerOnly,
}

/// `crypto ikev2 enable <nameif> client-services port <port>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientServices {
    pub nameif: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CryptoMapBinding {
    pub map: String,
    pub nameif: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelGroup {
    /// The peer IP for `ipsec-l2l`, or a group name for remote access.
    pub name: String,
    pub kind: TunnelGroupKind,
    pub ikev2_local_psk: Option<Secret>,
    pub ikev2_remote_psk: Option<Secret>,
    /// `isakmp keepalive threshold T retry R` (ASA defaults 10 / 2); `None` = `disable`.
    pub dpd: Option<Dpd>,
    /// `ikev2 local-authentication certificate TP`: we authenticate with TP's certificate.
    /// Mutually exclusive with `ikev2_local_psk` (the last line written wins, as on the ASA).
    #[serde(default)]
    pub ikev2_local_cert_trustpoint: Option<String>,
    /// `ikev2 remote-authentication certificate`: the peer authenticates with a certificate
    /// that must chain to a trustpoint's `ca-file`. Mutually exclusive with `ikev2_remote_psk`.
    #[serde(default)]
    pub ikev2_remote_cert: bool,
}

/// `crypto ca trustpoint NAME`. The ASA imports certificates into the trustpoint; holdfast reads
/// PEM files instead (holdfast extension lines `certificate-file`, `key-file`, `ca-file`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trustpoint {
    pub name: String,
    /// PEM: our certificate first, then any intermediates to send with it.
    pub certificate_file: Option<String>,
    /// PEM private key (RSA or ECDSA P-256/384/521, unencrypted) of that certificate.
    pub key_file: Option<String>,
    /// PEM CA certificate(s) that a peer's certificate must chain to.
    pub ca_file: Option<String>,
}

/// How we prove who we are to the peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LocalAuth {
    Psk(Secret),
    /// Sign the AUTH payload with the trustpoint's key and send its certificate chain.
    Certificate { trustpoint: String, certificate_file: String, key_file: String },
}

/// How the peer must prove who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteAuth {
    Psk(Secret),
    /// A signature with a certificate that chains to one of these CA files and names the
    /// peer's IKE identity. `(trustpoint, ca_file)` pairs, never empty.
    Certificate { cas: Vec<(String, String)> },
}

/// The authentication of one tunnel, each direction on its own (RFC 7296 §2.15 allows PSK one
/// way and a signature the other, and so does the ASA).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelAuth {
    pub local: LocalAuth,
    pub remote: RemoteAuth,
}

impl TunnelAuth {
    pub fn uses_certificates(&self) -> bool {
        matches!(self.local, LocalAuth::Certificate { .. }) || matches!(self.remote, RemoteAuth::Certificate { .. })
    }
}

/// A tunnel with its authentication, from [`Config::tunnels_with_auth`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedTunnel {
    /// For a direction that uses a certificate, the matching `local_psk` / `remote_psk` is an
    /// empty secret that must not be used: the engine must follow `auth`.
    pub policy: TunnelPolicy,
    pub auth: TunnelAuth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TunnelGroupKind {
    IpsecL2l,
    RemoteAccess,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dpd {
    /// Idle time after which a liveness check is sent.
    pub threshold: Duration,
    /// Interval between retries once a check is outstanding.
    pub retry: Duration,
}

impl Default for Dpd {
    fn default() -> Self {
        Self { threshold: Duration::from_secs(10), retry: Duration::from_secs(2) }
    }
}

/// A key or password. `Debug` never prints it; `show running-config` masks it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(*****)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logging {
    pub enabled: bool,
    /// `logging host <nameif> <ip> [udp/port]`.
    pub hosts: Vec<LoggingHost>,
    /// `logging trap <level>` (0..=7), default 6 (informational) when hosts are configured.
    pub trap_level: u8,
    /// `logging buffered <level>` for `show logging`; default 7 here so `show logging` is useful.
    pub buffered_level: u8,
    pub timestamp: bool,
}

impl Default for Logging {
    fn default() -> Self {
        Self { enabled: false, hosts: Vec::new(), trap_level: 6, buffered_level: 7, timestamp: false }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggingHost {
    pub nameif: String,
    pub addr: IpAddr,
    pub port: u16,
}

/// `sysopt connection ...` with ASA defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sysopt {
    pub timewait: bool,
    pub tcpmss: u16,
    pub tcpmss_minimum: u16,
    pub permit_vpn: bool,
    pub reclassify_vpn: bool,
    pub preserve_vpn_flows: bool,
    /// holdfast extension: also preserve UDP flows.
    pub preserve_vpn_flows_udp: bool,
    /// `sysopt nodnsalias inbound` / `outbound` (default off). Accepted and shown, no effect.
    pub nodnsalias_inbound: bool,
    pub nodnsalias_outbound: bool,
    /// `sysopt radius ignore-secret` (default off). Accepted and shown, no effect.
    pub radius_ignore_secret: bool,
    /// `sysopt noproxyarp <nameif>`: interfaces on which proxy ARP is disabled.
    pub noproxyarp: Vec<String>,
}

impl Default for Sysopt {
    fn default() -> Self {
        Self {
            timewait: false,
            tcpmss: 1380,
            tcpmss_minimum: 0,
            permit_vpn: true,
            reclassify_vpn: true,
            preserve_vpn_flows: false,
            preserve_vpn_flows_udp: false,
            nodnsalias_inbound: false,
            nodnsalias_outbound: false,
            radius_ignore_secret: false,
            noproxyarp: Vec::new(),
        }
    }
}

/// `timeout conn ... half-closed ... udp ... icmp ...`; `None` = 0 = never.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    pub conn: Option<Duration>,
    pub half_closed: Option<Duration>,
    pub udp: Option<Duration>,
    pub icmp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            conn: Some(Duration::from_secs(3600)),
            half_closed: Some(Duration::from_secs(600)),
            udp: Some(Duration::from_secs(120)),
            icmp: Duration::from_secs(2),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The engines' view: one resolved LAN-to-LAN tunnel per crypto map entry.

/// Traffic selector range (IPv4 only for now), as carried in TSi/TSr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TrafficSelector {
    pub protocol: u8,
    pub start_port: u16,
    pub end_port: u16,
    pub start_addr: Ipv4Addr,
    pub end_addr: Ipv4Addr,
}

impl TrafficSelector {
    pub fn from_net(net: Ipv4Net, protocol: Option<u8>) -> Self {
        Self {
            protocol: protocol.unwrap_or(0),
            start_port: 0,
            end_port: 65535,
            start_addr: net.network(),
            end_addr: net.broadcast(),
        }
    }
    pub fn contains_addr(&self, ip: Ipv4Addr) -> bool {
        self.start_addr <= ip && ip <= self.end_addr
    }
}

/// Everything `ike` and the daemon need to run one LAN-to-LAN tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelPolicy {
    /// Stable name, `MAP:SEQ`. Flow state is keyed to this, not to an SA.
    pub name: String,
    pub local_addr: IpAddr,
    pub peer_addr: IpAddr,
    /// Linux interface the peer is reached through (the crypto map's interface).
    pub outside_ifname: String,
    /// One (local, remote) selector pair per permit line of the crypto ACL.
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    /// IKE proposals from all `crypto ikev2 policy` entries, in priority order.
    pub ike_policies: Vec<Ikev2Policy>,
    pub esp_proposals: Vec<IpsecProposal>,
    pub pfs: Option<DhGroup>,
    pub child_lifetime: Duration,
    pub child_lifetime_kilobytes: Option<u64>,
    pub local_psk: Secret,
    pub remote_psk: Secret,
    pub dpd: Option<Dpd>,
    pub nat_t_disable: bool,
    pub force_udp_encap: bool,
    pub connection_type: ConnectionType,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("crypto map {map} {seq}: {what}")]
    CryptoMap { map: String, seq: u32, what: String },
    /// Remote access cannot be started as configured (e.g. no certificate for an interface).
    #[error("remote access: {what}")]
    RemoteAccess { what: String },
}

impl Config {
    pub fn interface_by_nameif(&self, nameif: &str) -> Option<&Interface> {
        self.interfaces.iter().find(|i| i.nameif.as_deref() == Some(nameif))
    }

    pub fn access_list(&self, name: &str) -> Option<&AccessList> {
        self.access_lists.iter().find(|a| a.name == name)
    }

    pub fn tunnel_group(&self, name: &str) -> Option<&TunnelGroup> {
        self.tunnel_groups.iter().find(|t| t.name == name)
    }

    pub fn trustpoint(&self, name: &str) -> Option<&Trustpoint> {
        self.trustpoints.iter().find(|t| t.name == name)
    }

    /// Resolves every crypto map entry bound to an interface into a [`TunnelPolicy`].
    /// `config` validates references with spans first; this is the engine-facing view.
    ///
    /// A tunnel that uses certificate authentication in either direction is refused here: a
    /// `TunnelPolicy` can only carry pre-shared keys, and a caller that reads only this must
    /// never run such a tunnel with PSKs. Callers that load certificates read
    /// [`Config::tunnels_with_auth`] (and hand the material to the engine with
    /// `ike::cert_auth::install`).
    pub fn tunnels(&self) -> Result<Vec<TunnelPolicy>, ResolveError> {
        let mut out = Vec::new();
        for t in self.tunnels_with_auth()? {
            if t.auth.uses_certificates() {
                let (map, seq) = t.policy.name.rsplit_once(':').unwrap_or((&t.policy.name, "0"));
                return Err(ResolveError::CryptoMap {
                    map: map.to_string(),
                    seq: seq.parse().unwrap_or(0),
                    what: format!(
                        "tunnel-group {} uses certificate authentication, which a pre-shared-key-only view cannot carry (read it with Config::tunnels_with_auth)",
                        t.policy.peer_addr
                    ),
                });
            }
            out.push(t.policy);
        }
        Ok(out)
    }

    /// Like [`Config::tunnels`], with each tunnel's authentication (pre-shared keys or
    /// certificates) resolved to the trustpoint files it needs.
    pub fn tunnels_with_auth(&self) -> Result<Vec<ResolvedTunnel>, ResolveError> {
        let mut out = Vec::new();
        for entry in &self.crypto_maps {
            let err = |what: String| ResolveError::CryptoMap { map: entry.map.clone(), seq: entry.seq, what };
            let Some(binding) = self.crypto_map_bindings.iter().find(|b| b.map == entry.map) else {
                continue; // an unbound map is inert, as on the ASA
            };
            let iface = self
                .interface_by_nameif(&binding.nameif)
                .ok_or_else(|| err(format!("interface {} has no nameif", binding.nameif)))?;
            let local = iface
                .address
                .ok_or_else(|| err(format!("interface {} has no ip address", iface.name)))?;
            let peer = *entry.peers.first().ok_or_else(|| err("no `set peer`".into()))?;
            let acl = self
                .access_list(&entry.match_address)
                .ok_or_else(|| err(format!("access-list {} is not defined", entry.match_address)))?;
            let (mut local_ts, mut remote_ts) = (Vec::new(), Vec::new());
            for e in acl.entries.iter().filter(|e| e.action == AclAction::Permit) {
                local_ts.push(TrafficSelector::from_net(e.source, e.protocol));
                remote_ts.push(TrafficSelector::from_net(e.destination, e.protocol));
            }
            if local_ts.is_empty() {
                return Err(err(format!("access-list {} has no permit entry", acl.name)));
            }
            let group = self
                .tunnel_group(&peer.to_string())
                .ok_or_else(|| err(format!("no tunnel-group {peer}")))?;
            let auth = self.tunnel_auth(entry, group).map_err(err)?;
            let local_psk = match &auth.local {
                LocalAuth::Psk(k) => k.clone(),
                LocalAuth::Certificate { .. } => Secret(String::new()),
            };
            let remote_psk = match &auth.remote {
                RemoteAuth::Psk(k) => k.clone(),
                RemoteAuth::Certificate { .. } => Secret(String::new()),
            };
            let mut esp_proposals = Vec::new();
            for p in &entry.ikev2_proposals {
                let prop = self
                    .ipsec_proposals
                    .iter()
                    .find(|x| &x.name == p)
                    .ok_or_else(|| err(format!("ipsec-proposal {p} is not defined")))?;
                esp_proposals.push(prop.clone());
            }
            if esp_proposals.is_empty() {
                return Err(err("no `set ikev2 ipsec-proposal`".into()));
            }
            let mut ike_policies = self.ikev2_policies.clone();
            ike_policies.sort_by_key(|p| p.priority);
            if ike_policies.is_empty() {
                return Err(err("no `crypto ikev2 policy` is configured".into()));
            }
            let policy = TunnelPolicy {
                name: format!("{}:{}", entry.map, entry.seq),
                local_addr: IpAddr::V4(local.addr),
                peer_addr: peer,
                outside_ifname: iface.name.clone(),
                local_ts,
                remote_ts,
                ike_policies,
                esp_proposals,
                pfs: entry.pfs,
                child_lifetime: Duration::from_secs(entry.lifetime_seconds),
                child_lifetime_kilobytes: entry.lifetime_kilobytes,
                local_psk,
                remote_psk,
                dpd: group.dpd,
                nat_t_disable: entry.nat_t_disable,
                force_udp_encap: entry.force_udp_encap,
                connection_type: entry.connection_type,
            };
            out.push(ResolvedTunnel { policy, auth });
        }
        Ok(out)
    }

    /// One crypto map entry's authentication. The local certificate comes from the entry's
    /// `set trustpoint` or else the tunnel group's `ikev2 local-authentication certificate TP`.
    /// A peer certificate is checked against the CA of that trustpoint when it has a
    /// `ca-file`, else against every trustpoint's `ca-file` (the ASA accepts any trusted CA).
    fn tunnel_auth(&self, entry: &CryptoMapEntry, group: &TunnelGroup) -> Result<TunnelAuth, String> {
        let peer = &group.name;
        let local = match (&group.ikev2_local_cert_trustpoint, &group.ikev2_local_psk) {
            (Some(tg_tp), _) => {
                let name = entry.trustpoint.as_ref().unwrap_or(tg_tp);
                let tp = self.trustpoint(name).ok_or_else(|| format!("crypto ca trustpoint {name} is not defined"))?;
                let certificate_file = tp.certificate_file.clone().ok_or_else(|| format!("crypto ca trustpoint {name} has no `certificate-file`"))?;
                let key_file = tp.key_file.clone().ok_or_else(|| format!("crypto ca trustpoint {name} has no `key-file`"))?;
                LocalAuth::Certificate { trustpoint: name.clone(), certificate_file, key_file }
            }
            (None, Some(k)) => LocalAuth::Psk(k.clone()),
            (None, None) => return Err(format!("tunnel-group {peer} has no ikev2 local-authentication (pre-shared-key or certificate)")),
        };
        let remote = if group.ikev2_remote_cert {
            let own = match &local {
                LocalAuth::Certificate { trustpoint, .. } => self.trustpoint(trustpoint).filter(|t| t.ca_file.is_some()),
                LocalAuth::Psk(_) => None,
            };
            let cas: Vec<(String, String)> = match own {
                Some(t) => t.ca_file.iter().map(|f| (t.name.clone(), f.clone())).collect(),
                None => self.trustpoints.iter().filter_map(|t| t.ca_file.as_ref().map(|f| (t.name.clone(), f.clone()))).collect(),
            };
            if cas.is_empty() {
                return Err(format!("tunnel-group {peer} uses `ikev2 remote-authentication certificate` but no `crypto ca trustpoint` has a `ca-file`"));
            }
            RemoteAuth::Certificate { cas }
        } else {
            match &group.ikev2_remote_psk {
                Some(k) => RemoteAuth::Psk(k.clone()),
                None => return Err(format!("tunnel-group {peer} has no ikev2 remote-authentication (pre-shared-key or certificate)")),
            }
        };
        Ok(TunnelAuth { local, remote })
    }
}

// ---------------------------------------------------------------------------------------------
// Remote access (AnyConnect / SSL VPN). Raw settings as configured (`None` = not written, so
// inherited), then resolved views with ASA defaults for the gateway and the AnyConnect engine.
// ASA references: asa.md §6 and the ASA `group-policy` / `tunnel-group` / `webvpn` commands.

/// Everything remote-access, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RemoteAccess {
    /// The global `webvpn` mode.
    pub webvpn: WebVpn,
    /// `ip local pool NAME A-B mask M`, in configuration order.
    pub pools: Vec<AddressPool>,
    /// `group-policy NAME internal` + `group-policy NAME attributes`. `DfltGrpPolicy` appears
    /// here only when its attributes were changed; its built-in values are
    /// [`GroupPolicyAttributes::asa_defaults`].
    pub group_policies: Vec<GroupPolicy>,
    /// Attributes of every `tunnel-group NAME type remote-access` (the `type` line itself is
    /// also in [`Config::tunnel_groups`], as before). The ASA's built-in `DefaultWEBVPNGroup`
    /// and `DefaultRAGroup` appear only when configured.
    pub tunnel_groups: Vec<RaTunnelGroup>,
    /// The local user database (`username NAME password ...`).
    pub users: Vec<LocalUser>,
    /// `ssl trust-point TP [NAMEIF]`: the certificate TLS (and DTLS) present on an interface.
    /// `nameif: None` is the fallback for interfaces without their own line.
    pub ssl_trustpoints: Vec<SslTrustpoint>,
}

/// The global `webvpn` mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebVpn {
    /// `enable NAMEIF`: interfaces that accept TLS (and DTLS) connections.
    pub enabled_on: Vec<String>,
    /// `port N`: TCP port for HTTPS / CSTP (ASA default 443).
    pub port: u16,
    /// `dtls port N`: UDP port for DTLS (ASA default 443).
    pub dtls_port: u16,
    /// `anyconnect enable`: full-tunnel clients are accepted (without it only the clientless
    /// portal would run, which holdfast does not offer: no tunnels are built).
    pub anyconnect_enable: bool,
    /// `tunnel-group-list enable`: offer the group-alias list (`<select name="group_list">`)
    /// in the authentication form.
    pub tunnel_group_list: bool,
}

impl Default for WebVpn {
    fn default() -> Self {
        Self { enabled_on: Vec::new(), port: 443, dtls_port: 443, anyconnect_enable: false, tunnel_group_list: false }
    }
}

/// `ip local pool NAME START-END mask MASK`: addresses leased to remote-access clients. The
/// client is told `MASK` (X-CSTP-Netmask); `config` checks that START and END lie in one
/// MASK-sized subnet and that pools do not overlap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPool {
    pub name: String,
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    /// Prefix length of `mask` (contiguous masks only).
    pub prefix_len: u8,
}

impl AddressPool {
    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Net::new(self.start, self.prefix_len).mask()
    }
    /// Number of addresses in the range (inclusive).
    pub fn len(&self) -> u32 {
        u32::from(self.end).saturating_sub(u32::from(self.start)).saturating_add(1)
    }
    pub fn is_empty(&self) -> bool {
        u32::from(self.end) < u32::from(self.start)
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.start <= ip && ip <= self.end
    }
    /// The `index`-th address of the range, if there is one.
    pub fn nth(&self, index: u32) -> Option<Ipv4Addr> {
        (index < self.len()).then(|| Ipv4Addr::from(u32::from(self.start).wrapping_add(index)))
    }
    pub fn overlaps(&self, other: &AddressPool) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

/// A group policy: the per-session settings a tunnel group hands its users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPolicy {
    pub name: String,
    pub attributes: GroupPolicyAttributes,
}

/// Name of the ASA's built-in default group policy, which every other policy inherits from.
pub const DEFAULT_GROUP_POLICY: &str = "DfltGrpPolicy";
/// The ASA's built-in tunnel groups that exist without a `type` line.
pub const BUILTIN_RA_TUNNEL_GROUPS: [&str; 2] = ["DefaultWEBVPNGroup", "DefaultRAGroup"];

/// `group-policy NAME attributes`. Each field is `None` when not written: the value is then
/// inherited from `DfltGrpPolicy`, and from the ASA default if that does not set it either
/// (resolved by [`Config::effective_group_policy`]). `Some(None)` is an explicit `none`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GroupPolicyAttributes {
    /// `vpn-tunnel-protocol ssl-client ikev2 ...`: AnyConnect needs `ssl-client`.
    pub vpn_tunnel_protocols: Option<Vec<VpnTunnelProtocol>>,
    /// `split-tunnel-policy tunnelall|tunnelspecified|excludespecified`.
    pub split_tunnel_policy: Option<SplitTunnelPolicy>,
    /// `split-tunnel-network-list value ACL` / `split-tunnel-network-list none`: a standard ACL
    /// whose permit lines are the split networks.
    pub split_tunnel_network_list: Option<Option<String>>,
    /// `dns-server value A [B]` / `dns-server none`.
    pub dns_servers: Option<Vec<Ipv4Addr>>,
    /// `default-domain value NAME` / `default-domain none`.
    pub default_domain: Option<Option<String>>,
    /// `vpn-idle-timeout MINUTES|none` (ASA default 30 minutes).
    pub vpn_idle_timeout: Option<Option<Duration>>,
    /// `vpn-session-timeout MINUTES|none` (ASA default none).
    pub vpn_session_timeout: Option<Option<Duration>>,
    /// `address-pools value POOL [POOL...]` / `address-pools none`: overrides the tunnel
    /// group's `address-pool` (ASA precedence: group policy pools win).
    pub address_pools: Option<Vec<String>>,
    /// The nested `webvpn` mode (`anyconnect ...` lines).
    pub anyconnect: AnyConnectAttributes,
}

/// `group-policy NAME attributes` / `webvpn` / `anyconnect ...`. `None` = inherited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AnyConnectAttributes {
    /// `anyconnect mtu 576-1462` (ASA default 1406): the largest inner packet the client is
    /// told to send, on either channel.
    pub mtu: Option<u16>,
    /// holdfast extension `anyconnect mtu-policy common|split` (default `common`).
    pub mtu_policy: Option<MtuPolicy>,
    /// `anyconnect ssl dtls enable|none` (ASA default enable).
    pub dtls: Option<bool>,
    /// `anyconnect ssl df-bit-ignore enable|disable` (ASA default disable): fragment packets
    /// too large for the channel instead of dropping them with ICMP fragmentation-needed.
    pub df_bit_ignore: Option<bool>,
    /// `anyconnect dpd-interval client SECONDS|none` (ASA default 30): X-CSTP-DPD / X-DTLS-DPD
    /// told to the client.
    pub dpd_client: Option<Option<Duration>>,
    /// `anyconnect dpd-interval gateway SECONDS|none` (ASA default 30): the gateway's own DPD.
    pub dpd_gateway: Option<Option<Duration>>,
    /// `anyconnect ssl keepalive SECONDS|none` (ASA default 20; `anyconnect keepalive N` is
    /// accepted as a spelling of the same): X-CSTP-Keepalive.
    pub keepalive: Option<Option<Duration>>,
    /// `anyconnect ssl rekey time MINUTES|none` (ASA default none): X-CSTP-Rekey-Time.
    pub rekey_time: Option<Option<Duration>>,
    /// `anyconnect ssl rekey method ssl|new-tunnel|none` (ASA default none).
    pub rekey_method: Option<RekeyMethod>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VpnTunnelProtocol {
    /// `ssl-client`: AnyConnect / openconnect full tunnel (CSTP + DTLS).
    SslClient,
    /// `ssl-clientless`: the web portal (not offered by holdfast; accepted and shown).
    SslClientless,
    Ikev1,
    Ikev2,
    L2tpIpsec,
}

impl VpnTunnelProtocol {
    /// The ASA keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            Self::SslClient => "ssl-client",
            Self::SslClientless => "ssl-clientless",
            Self::Ikev1 => "ikev1",
            Self::Ikev2 => "ikev2",
            Self::L2tpIpsec => "l2tp-ipsec",
        }
    }
}

/// `split-tunnel-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum SplitTunnelPolicy {
    /// Everything through the tunnel (ASA default); no split headers are sent.
    #[default]
    TunnelAll,
    /// Only the split networks through the tunnel (X-CSTP-Split-Include).
    TunnelSpecified,
    /// Everything except the split networks (X-CSTP-Split-Exclude).
    ExcludeSpecified,
}

/// holdfast extension `anyconnect mtu-policy` (group-policy `webvpn` mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum MtuPolicy {
    /// Advertise one MTU that both the TLS and the DTLS channel can carry, so losing DTLS never
    /// leaves the client with packets the TLS channel cannot take (holdfast default).
    #[default]
    Common,
    /// The ASA's behaviour: X-CSTP-MTU from the TLS overhead and X-DTLS-MTU from the DTLS
    /// overhead, separately (asa.md §6; the source of the 1418-vs-1347 black hole).
    Split,
}

/// `anyconnect ssl rekey method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum RekeyMethod {
    #[default]
    None,
    Ssl,
    NewTunnel,
}

impl RekeyMethod {
    pub fn keyword(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Ssl => "ssl",
            Self::NewTunnel => "new-tunnel",
        }
    }
}

/// `tunnel-group NAME general-attributes` and `webvpn-attributes` of a remote-access group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaTunnelGroup {
    pub name: String,
    /// `address-pool POOL [POOL...]` (general-attributes), tried in order.
    pub address_pools: Vec<String>,
    /// `default-group-policy NAME`; `None` = `DfltGrpPolicy`.
    pub default_group_policy: Option<String>,
    /// `authentication aaa|certificate|aaa certificate` (webvpn-attributes; ASA default aaa).
    /// With `LOCAL` (the only server group holdfast has), aaa = the local user database.
    pub authentication: RaAuthentication,
    /// `group-alias NAME enable|disable` (webvpn-attributes): names shown in the group list.
    pub group_aliases: Vec<GroupAlias>,
}

impl RaTunnelGroup {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            address_pools: Vec::new(),
            default_group_policy: None,
            authentication: RaAuthentication::default(),
            group_aliases: Vec::new(),
        }
    }
}

/// How a remote-access user proves who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum RaAuthentication {
    /// Username and password against the local user database.
    #[default]
    Aaa,
    /// A client certificate that chains to a trustpoint's `ca-file`; no password.
    Certificate,
    /// Both: a valid client certificate and then username/password.
    AaaCertificate,
}

impl RaAuthentication {
    pub fn needs_password(self) -> bool {
        matches!(self, Self::Aaa | Self::AaaCertificate)
    }
    pub fn needs_certificate(self) -> bool {
        matches!(self, Self::Certificate | Self::AaaCertificate)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupAlias {
    pub alias: String,
    pub enabled: bool,
}

/// `username NAME password ...` / `username NAME nopassword`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalUser {
    pub name: String,
    /// The salted hash in `crypto::password` form (`$pbkdf2-sha256$ITER$SALT$HASH`); a clear
    /// password in the configuration is hashed at load and never kept. Verify with
    /// `crypto::password::verify(hash.0.as_str(), typed)`. `None` = `nopassword`: password
    /// login is refused for this user (certificate login may still map to it).
    pub password_hash: Option<Secret>,
    /// `privilege 0-15` (ASA default 2). Not used for remote access; kept and shown.
    pub privilege: u8,
}

/// ASA default user privilege level.
pub const DEFAULT_USER_PRIVILEGE: u8 = 2;

/// `ssl trust-point TRUSTPOINT [NAMEIF]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SslTrustpoint {
    pub trustpoint: String,
    /// `None`: every interface without its own `ssl trust-point ... NAMEIF` line.
    pub nameif: Option<String>,
}

/// A group policy with inheritance and ASA defaults applied: what one session gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveGroupPolicy {
    pub name: String,
    /// `vpn-tunnel-protocol` includes `ssl-client`: AnyConnect sessions may use this policy.
    pub ssl_client: bool,
    pub split_tunnel_policy: SplitTunnelPolicy,
    /// The permit lines of the split-tunnel ACL (empty with `tunnelall`).
    pub split_networks: Vec<Ipv4Net>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub default_domain: Option<String>,
    /// `None` = no limit.
    pub idle_timeout: Option<Duration>,
    pub session_timeout: Option<Duration>,
    /// Pools from the policy's `address-pools`, if it sets any (they override the tunnel
    /// group's).
    pub address_pools: Option<Vec<String>>,
    pub mtu: u16,
    pub mtu_policy: MtuPolicy,
    pub dtls: bool,
    pub df_bit_ignore: bool,
    pub dpd_client: Option<Duration>,
    pub dpd_gateway: Option<Duration>,
    pub keepalive: Option<Duration>,
    pub rekey_time: Option<Duration>,
    pub rekey_method: RekeyMethod,
}

impl GroupPolicyAttributes {
    /// The ASA's built-in `DfltGrpPolicy` values (`show run all group-policy DfltGrpPolicy`).
    /// *(inferred)* `vpn-tunnel-protocol ikev1 ikev2 l2tp-ipsec`: as on ASA 9.x, a policy must
    /// list `ssl-client` (or inherit it from a changed DfltGrpPolicy) to admit AnyConnect.
    pub fn asa_defaults() -> Self {
        let min = |m: u64| Some(Some(Duration::from_secs(m * 60)));
        let sec = |s: u64| Some(Some(Duration::from_secs(s)));
        Self {
            vpn_tunnel_protocols: Some(vec![VpnTunnelProtocol::Ikev1, VpnTunnelProtocol::Ikev2, VpnTunnelProtocol::L2tpIpsec]),
            split_tunnel_policy: Some(SplitTunnelPolicy::TunnelAll),
            split_tunnel_network_list: Some(None),
            dns_servers: Some(Vec::new()),
            default_domain: Some(None),
            vpn_idle_timeout: min(30),
            vpn_session_timeout: Some(None),
            address_pools: None,
            anyconnect: AnyConnectAttributes {
                mtu: Some(1406),
                mtu_policy: Some(MtuPolicy::Common),
                dtls: Some(true),
                df_bit_ignore: Some(false),
                dpd_client: sec(30),
                dpd_gateway: sec(30),
                keepalive: sec(20),
                rekey_time: Some(None),
                rekey_method: Some(RekeyMethod::None),
            },
        }
    }

    /// `self` with every unset field taken from `parent`.
    pub fn inherit(&self, parent: &GroupPolicyAttributes) -> GroupPolicyAttributes {
        let a = &self.anyconnect;
        let p = &parent.anyconnect;
        GroupPolicyAttributes {
            vpn_tunnel_protocols: self.vpn_tunnel_protocols.clone().or_else(|| parent.vpn_tunnel_protocols.clone()),
            split_tunnel_policy: self.split_tunnel_policy.or(parent.split_tunnel_policy),
            split_tunnel_network_list: self.split_tunnel_network_list.clone().or_else(|| parent.split_tunnel_network_list.clone()),
            dns_servers: self.dns_servers.clone().or_else(|| parent.dns_servers.clone()),
            default_domain: self.default_domain.clone().or_else(|| parent.default_domain.clone()),
            vpn_idle_timeout: self.vpn_idle_timeout.or(parent.vpn_idle_timeout),
            vpn_session_timeout: self.vpn_session_timeout.or(parent.vpn_session_timeout),
            address_pools: self.address_pools.clone().or_else(|| parent.address_pools.clone()),
            anyconnect: AnyConnectAttributes {
                mtu: a.mtu.or(p.mtu),
                mtu_policy: a.mtu_policy.or(p.mtu_policy),
                dtls: a.dtls.or(p.dtls),
                df_bit_ignore: a.df_bit_ignore.or(p.df_bit_ignore),
                dpd_client: a.dpd_client.or(p.dpd_client),
                dpd_gateway: a.dpd_gateway.or(p.dpd_gateway),
                keepalive: a.keepalive.or(p.keepalive),
                rekey_time: a.rekey_time.or(p.rekey_time),
                rekey_method: a.rekey_method.or(p.rekey_method),
            },
        }
    }
}

/// One remote-access tunnel group, resolved for the AnyConnect engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnyConnectGroup {
    pub name: String,
    /// Enabled group aliases (what the client may send as its group).
    pub aliases: Vec<String>,
    pub authentication: RaAuthentication,
    /// Pools to lease from, in order (the group policy's `address-pools` if set, else the
    /// tunnel group's `address-pool`).
    pub pools: Vec<AddressPool>,
    pub policy: EffectiveGroupPolicy,
    /// PEM CA files a client certificate may chain to (every trustpoint's `ca-file`), for
    /// `authentication certificate` / `aaa certificate`.
    pub client_ca_files: Vec<String>,
}

/// Where and with which certificate TLS/DTLS listen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnyConnectListener {
    pub nameif: String,
    /// Linux interface name; `None` when no `interface` has this nameif (a configuration
    /// fragment whose interfaces are set up outside holdfast).
    pub ifname: Option<String>,
    /// The interface's address to bind; `0.0.0.0` (all addresses) when the interface is not
    /// configured or has no `ip address` (`config` warns about both).
    pub addr: Ipv4Addr,
    pub tls_port: u16,
    pub dtls_port: u16,
    pub trustpoint: String,
    pub certificate_file: String,
    pub key_file: String,
}

impl RemoteAccess {
    pub fn pool(&self, name: &str) -> Option<&AddressPool> {
        self.pools.iter().find(|p| p.name == name)
    }
    pub fn group_policy(&self, name: &str) -> Option<&GroupPolicy> {
        self.group_policies.iter().find(|p| p.name == name)
    }
    pub fn tunnel_group(&self, name: &str) -> Option<&RaTunnelGroup> {
        self.tunnel_groups.iter().find(|t| t.name == name)
    }
    pub fn user(&self, name: &str) -> Option<&LocalUser> {
        self.users.iter().find(|u| u.name == name)
    }
    /// The tunnel group a client's group selection names: an enabled `group-alias` first,
    /// then a tunnel-group name (as the ASA matches `group-url`/group-list choices).
    pub fn tunnel_group_by_alias(&self, alias: &str) -> Option<&RaTunnelGroup> {
        self.tunnel_groups
            .iter()
            .find(|t| t.group_aliases.iter().any(|a| a.enabled && a.alias == alias))
            .or_else(|| self.tunnel_group(alias))
    }
    /// The trustpoint name for TLS on `nameif`: its own `ssl trust-point` line, else the
    /// line without an interface.
    pub fn ssl_trustpoint_for(&self, nameif: &str) -> Option<&str> {
        self.ssl_trustpoints
            .iter()
            .find(|t| t.nameif.as_deref() == Some(nameif))
            .or_else(|| self.ssl_trustpoints.iter().find(|t| t.nameif.is_none()))
            .map(|t| t.trustpoint.as_str())
    }
}

impl Config {
    /// `name` with `DfltGrpPolicy` and ASA defaults applied, and its split ACL resolved.
    /// `None` if no such group policy exists (`DfltGrpPolicy` always exists).
    pub fn effective_group_policy(&self, name: &str) -> Option<EffectiveGroupPolicy> {
        let ra = self.remote_access.as_ref();
        let dflt = ra.and_then(|r| r.group_policy(DEFAULT_GROUP_POLICY)).map(|g| g.attributes.clone()).unwrap_or_default();
        let base = dflt.inherit(&GroupPolicyAttributes::asa_defaults());
        let attrs = if name == DEFAULT_GROUP_POLICY {
            base
        } else {
            ra?.group_policy(name)?.attributes.inherit(&base)
        };
        let split_tunnel_policy = attrs.split_tunnel_policy.unwrap_or_default();
        let split_networks = match (&attrs.split_tunnel_network_list, split_tunnel_policy) {
            (_, SplitTunnelPolicy::TunnelAll) => Vec::new(),
            (Some(Some(acl)), _) => self
                .access_list(acl)
                .map(|a| a.entries.iter().filter(|e| e.action == AclAction::Permit).map(|e| e.destination).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let ac = &attrs.anyconnect;
        Some(EffectiveGroupPolicy {
            name: name.to_string(),
            ssl_client: attrs.vpn_tunnel_protocols.as_ref().is_some_and(|v| v.contains(&VpnTunnelProtocol::SslClient)),
            split_tunnel_policy,
            split_networks,
            dns_servers: attrs.dns_servers.clone().unwrap_or_default(),
            default_domain: attrs.default_domain.clone().flatten(),
            idle_timeout: attrs.vpn_idle_timeout.flatten(),
            session_timeout: attrs.vpn_session_timeout.flatten(),
            address_pools: attrs.address_pools.clone(),
            mtu: ac.mtu.unwrap_or(1406),
            mtu_policy: ac.mtu_policy.unwrap_or_default(),
            dtls: ac.dtls.unwrap_or(true),
            df_bit_ignore: ac.df_bit_ignore.unwrap_or(false),
            dpd_client: ac.dpd_client.flatten(),
            dpd_gateway: ac.dpd_gateway.flatten(),
            keepalive: ac.keepalive.flatten(),
            rekey_time: ac.rekey_time.flatten(),
            rekey_method: ac.rekey_method.unwrap_or_default(),
        })
    }

    /// Every group policy resolved, `DfltGrpPolicy` first (always present), then the
    /// configured ones in order: what an engine keyed by policy name needs.
    pub fn effective_group_policies(&self) -> Vec<EffectiveGroupPolicy> {
        let mut names = vec![DEFAULT_GROUP_POLICY.to_string()];
        if let Some(ra) = &self.remote_access {
            names.extend(ra.group_policies.iter().map(|g| g.name.clone()).filter(|n| n != DEFAULT_GROUP_POLICY));
        }
        names.iter().filter_map(|n| self.effective_group_policy(n)).collect()
    }

    /// A remote-access tunnel group resolved for the engine (pools, effective policy, client
    /// CAs). `config` has checked every reference; `None` only for an unknown group name.
    pub fn anyconnect_group(&self, name: &str) -> Option<AnyConnectGroup> {
        let ra = self.remote_access.as_ref()?;
        let tg = ra.tunnel_group(name)?;
        let policy = self.effective_group_policy(tg.default_group_policy.as_deref().unwrap_or(DEFAULT_GROUP_POLICY))?;
        let pool_names = policy.address_pools.clone().unwrap_or_else(|| tg.address_pools.clone());
        let pools = pool_names.iter().filter_map(|p| ra.pool(p).cloned()).collect();
        Some(AnyConnectGroup {
            name: tg.name.clone(),
            aliases: tg.group_aliases.iter().filter(|a| a.enabled).map(|a| a.alias.clone()).collect(),
            authentication: tg.authentication,
            pools,
            policy,
            client_ca_files: self.trustpoints.iter().filter_map(|t| t.ca_file.clone()).collect(),
        })
    }

    /// Every remote-access tunnel group, resolved, in configuration order.
    pub fn anyconnect_groups(&self) -> Vec<AnyConnectGroup> {
        let Some(ra) = &self.remote_access else { return Vec::new() };
        ra.tunnel_groups.iter().filter_map(|t| self.anyconnect_group(&t.name)).collect()
    }

    /// The TLS/DTLS listeners: one per `webvpn` / `enable NAMEIF`, when `anyconnect enable` is
    /// set. Errors name a missing certificate (`config` reports the same with spans first).
    pub fn anyconnect_listeners(&self) -> Result<Vec<AnyConnectListener>, ResolveError> {
        let Some(ra) = &self.remote_access else { return Ok(Vec::new()) };
        if !ra.webvpn.anyconnect_enable {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for nameif in &ra.webvpn.enabled_on {
            let iface = self.interface_by_nameif(nameif);
            let addr = iface.and_then(|i| i.address).map_or(Ipv4Addr::UNSPECIFIED, |a| a.addr);
            let err = |what: String| ResolveError::RemoteAccess { what };
            // No certificate for this interface (no `ssl trust-point`, or a pasted ASA
            // trustpoint without the holdfast `certificate-file`/`key-file` lines): the
            // configuration loads with a warning and this interface serves no remote access.
            let Some(tp_name) = ra.ssl_trustpoint_for(nameif) else { continue };
            let tp = self.trustpoint(tp_name).ok_or_else(|| err(format!("ssl trust-point: crypto ca trustpoint {tp_name} is not defined")))?;
            let (Some(certificate_file), Some(key_file)) = (tp.certificate_file.clone(), tp.key_file.clone()) else { continue };
            out.push(AnyConnectListener {
                nameif: nameif.clone(),
                ifname: iface.map(|i| i.name.clone()),
                addr,
                tls_port: ra.webvpn.port,
                dtls_port: ra.webvpn.dtls_port,
                trustpoint: tp_name.to_string(),
                certificate_file,
                key_file,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_math() {
        let n = Ipv4Net::new("10.1.0.7".parse().unwrap(), 24);
        assert_eq!(n.network(), "10.1.0.0".parse::<Ipv4Addr>().unwrap());
        assert_eq!(n.broadcast(), "10.1.0.255".parse::<Ipv4Addr>().unwrap());
        assert_eq!(n.mask(), "255.255.255.0".parse::<Ipv4Addr>().unwrap());
        assert!(n.contains("10.1.0.200".parse().unwrap()));
        assert!(!n.contains("10.1.1.1".parse().unwrap()));
        assert_eq!(Ipv4Net::prefix_from_mask("255.255.255.0".parse().unwrap()), Some(24));
        assert_eq!(Ipv4Net::prefix_from_mask("0.0.0.0".parse().unwrap()), Some(0));
        assert_eq!(Ipv4Net::prefix_from_mask("255.255.255.255".parse().unwrap()), Some(32));
        assert_eq!(Ipv4Net::prefix_from_mask("255.0.255.0".parse().unwrap()), None);
        assert_eq!(Ipv4Net::new("0.0.0.0".parse().unwrap(), 0).broadcast(), Ipv4Addr::BROADCAST);
    }

    #[test]
    fn pool_math() {
        let p = |n: &str, a: &str, b: &str| AddressPool { name: n.into(), start: a.parse().unwrap(), end: b.parse().unwrap(), prefix_len: 24 };
        let a = p("A", "10.0.0.10", "10.0.0.19");
        assert_eq!(a.len(), 10);
        assert_eq!(a.mask(), "255.255.255.0".parse::<Ipv4Addr>().unwrap());
        assert_eq!(a.nth(0), Some("10.0.0.10".parse().unwrap()));
        assert_eq!(a.nth(9), Some("10.0.0.19".parse().unwrap()));
        assert_eq!(a.nth(10), None);
        assert!(a.contains("10.0.0.15".parse().unwrap()) && !a.contains("10.0.0.20".parse().unwrap()));
        assert!(a.overlaps(&p("B", "10.0.0.19", "10.0.0.30")));
        assert!(!a.overlaps(&p("C", "10.0.0.20", "10.0.0.30")));
        assert!(!a.is_empty());
    }

    #[test]
    fn group_policy_inheritance_prefers_own_then_parent() {
        let mut own = GroupPolicyAttributes::default();
        own.anyconnect.mtu = Some(1300);
        own.vpn_idle_timeout = Some(None); // explicit `none` beats the parent's 30 minutes
        let eff = own.inherit(&GroupPolicyAttributes::asa_defaults());
        assert_eq!(eff.anyconnect.mtu, Some(1300));
        assert_eq!(eff.vpn_idle_timeout, Some(None));
        assert_eq!(eff.anyconnect.keepalive, Some(Some(Duration::from_secs(20))));
        assert_eq!(eff.split_tunnel_policy, Some(SplitTunnelPolicy::TunnelAll));
        // DfltGrpPolicy always resolves, even with no remote access configured.
        let d = Config::default().effective_group_policy(DEFAULT_GROUP_POLICY).unwrap();
        assert_eq!((d.mtu, d.dtls, d.ssl_client), (1406, true, false));
        assert!(Config::default().effective_group_policy("nope").is_none());
        assert_eq!(Config::default().effective_group_policies().len(), 1);
    }
}
