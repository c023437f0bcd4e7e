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
}
