//! The engine's own configuration: plain data, filled by the daemon from `policy`/`config`
//! (tunnel groups, group policies, pools, users). Nothing here parses ASA text.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything the remote-access engine needs. `Default` is a usable empty configuration
/// (no users, no groups: every login fails) with ASA defaults for the knobs.
#[derive(Clone, Serialize, Deserialize)]
pub struct Config {
    /// Local user database (`username NAME password ...`).
    pub users: Vec<User>,
    /// `tunnel-group NAME type remote-access` with its general- and webvpn-attributes.
    pub tunnel_groups: Vec<TunnelGroup>,
    /// `group-policy NAME internal` + attributes, by name.
    pub group_policies: BTreeMap<String, GroupPolicy>,
    /// `ip local pool NAME FIRST-LAST mask M`, by name.
    pub pools: BTreeMap<String, AddressPool>,
    /// `sysopt connection tcpmss N` (ASA default 1380; 0 = no clamp). Also the base of the
    /// ASA's TLS MTU arithmetic (asa.md §6).
    pub tcpmss: u16,
    /// How the advertised MTU is chosen (see [`MtuPolicy`]) when the group policy does not
    /// say (`GroupPolicy::mtu_policy`).
    pub mtu_policy: MtuPolicy,
    /// Show the `group_list` select in the login form (`webvpn / tunnel-group-list enable`)
    /// when two or more aliases exist.
    pub group_list: bool,
    /// `webvpn / dtls port N`: announced as X-DTLS-Port.
    pub dtls_port: u16,
    /// The MTU of the outside interface, caps the client's X-CSTP-Base-MTU (default 1500).
    pub link_mtu: u16,
    /// How long a session (and its address lease) survives after its TLS connection dropped,
    /// waiting for a reconnect with the same cookie (ocserv's cookie-timeout; default 300 s).
    pub reconnect_grace: Duration,
    /// How long a cookie issued by a completed login stays usable before the first CONNECT.
    pub cookie_unused_lifetime: Duration,
    /// Legacy DTLS ciphers the I/O layer can key (order = server preference).
    pub legacy_dtls_ciphers: Vec<crate::connect::LegacyCipher>,
    /// Source address of the ICMP fragmentation-needed we send toward inside hosts (the
    /// ASA uses its inside interface address). `None`: the client's tunnel address, i.e.
    /// the error appears to come from the last hop, which PMTUD accepts as well.
    pub icmp_source: Option<Ipv4Addr>,
    /// holdfast: the longest X-DTLS-DPD told to clients (default 3 s; `None` = the ASA's
    /// behaviour, the group policy's `dpd-interval client` for both channels). openconnect
    /// gives up on DTLS after 2 x X-DTLS-DPD of silence and only then sends over TLS; with 30 s
    /// that is a minute of lost client->server traffic when UDP is blocked mid-session, with
    /// 3 s it is about 6 s. Costs one tiny DTLS DPD per idle client every few seconds.
    pub dtls_dpd_max: Option<Duration>,
    /// Upper-case hex SHA-1 of the server (leaf) certificate's DER, filled by the daemon from
    /// the trustpoint at start and on reload. Sent in the `complete` document
    /// (`<vpn-base-config><server-cert-hash>`) and the `webvpnc` cookie as the ASA does: Cisco
    /// clients pin the gateway certificate by it when they open their tunnel connection.
    /// Empty: not known (both are then omitted).
    #[serde(default)]
    pub server_cert_sha1: String,
    /// Pre-authentication bounds.
    pub limits: Limits,
    /// Server->client channel choice timing (see README "Fallback").
    pub fallback: FallbackTiming,
    /// Verifies a password against the stored hash: [`pbkdf2_verifier`] by default
    /// (`crypto::password`); tests may use [`plain_verifier`].
    #[serde(skip, default = "default_verifier")]
    pub verifier: PasswordVerifier,
}

/// Checks `password` against a stored `hash` string. Must be constant-time in the secret
/// (PBKDF2 verification is). Returns `true` only for a match.
pub type PasswordVerifier = Arc<dyn Fn(&str, &[u8]) -> bool + Send + Sync>;

/// The real verifier: `crypto::password` PBKDF2-HMAC-SHA256 hashes (`$pbkdf2-sha256$...`),
/// constant-time comparison. A malformed hash never matches.
pub fn pbkdf2_verifier() -> PasswordVerifier {
    Arc::new(|hash: &str, pw: &[u8]| crypto::password::verify_bytes(hash, pw).unwrap_or(false))
}

fn default_verifier() -> PasswordVerifier {
    pbkdf2_verifier()
}

/// Test/simulation verifier: a hash string of the form `plain:<password>` matches that
/// password (compared in constant time). Never use with a real user database.
pub fn plain_verifier() -> PasswordVerifier {
    Arc::new(|hash: &str, pw: &[u8]| match hash.strip_prefix("plain:") {
        Some(p) => ring_eq(p.as_bytes(), pw),
        None => false,
    })
}

fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    crate::ct_eq(a, b)
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("users", &self.users.len())
            .field("tunnel_groups", &self.tunnel_groups)
            .field("group_policies", &self.group_policies)
            .field("pools", &self.pools)
            .field("tcpmss", &self.tcpmss)
            .field("mtu_policy", &self.mtu_policy)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            users: Vec::new(),
            tunnel_groups: Vec::new(),
            group_policies: BTreeMap::new(),
            pools: BTreeMap::new(),
            tcpmss: 1380,
            mtu_policy: MtuPolicy::Common,
            group_list: true,
            dtls_port: 443,
            link_mtu: 1500,
            reconnect_grace: Duration::from_secs(300),
            cookie_unused_lifetime: Duration::from_secs(300),
            legacy_dtls_ciphers: crate::connect::LegacyCipher::DEFAULT_PREFERENCE.to_vec(),
            icmp_source: None,
            dtls_dpd_max: Some(Duration::from_secs(3)),
            server_cert_sha1: String::new(),
            limits: Limits::default(),
            fallback: FallbackTiming::default(),
            verifier: default_verifier(),
        }
    }
}

/// A local user. `password_hash` is whatever the verifier understands (PBKDF2 string).
#[derive(Clone, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub password_hash: String,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// How a tunnel group authenticates (`authentication aaa | certificate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthMethod {
    /// Username/password against the local database.
    Aaa,
    /// A client certificate verified by the TLS layer; the username is its subject CN.
    Certificate,
    /// Both: a verified client certificate is required, then username/password.
    AaaCertificate,
}

/// `tunnel-group NAME type remote-access`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelGroup {
    pub name: String,
    /// `group-alias ALIAS enable` — the names shown in the group list (empty: not listed,
    /// but still selectable by name).
    pub aliases: Vec<String>,
    /// `default-group-policy NAME`.
    pub default_group_policy: String,
    /// `address-pool NAME` (first pool with a free address wins).
    pub address_pools: Vec<String>,
    pub authentication: AuthMethod,
}

/// `group-policy NAME attributes` (+ its `webvpn` sub-mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPolicy {
    /// `split-tunnel-policy tunnelspecified` + network list: networks to tunnel.
    pub split_include: Vec<Ipv4Net>,
    /// `split-tunnel-policy excludespecified` + network list: networks to keep local.
    pub split_exclude: Vec<Ipv4Net>,
    /// `dns-server value ...`.
    pub dns: Vec<Ipv4Addr>,
    /// `default-domain value ...`.
    pub default_domain: Option<String>,
    /// `anyconnect mtu N` (ASA range 576-1462). `None` = computed only.
    pub mtu: Option<u16>,
    /// `anyconnect ssl dtls enable|none`.
    pub dtls: bool,
    /// `anyconnect ssl df-bit-ignore enable`.
    pub df_bit_ignore: bool,
    /// `anyconnect dpd-interval client N` (`None` = none).
    pub dpd_client: Option<Duration>,
    /// `anyconnect dpd-interval gateway N` (`None` = none).
    pub dpd_gateway: Option<Duration>,
    /// `anyconnect ssl keepalive N` (`None` = none).
    pub keepalive: Option<Duration>,
    /// `vpn-idle-timeout N` minutes (`None` = none). ASA default 30 min.
    pub idle_timeout: Option<Duration>,
    /// `vpn-session-timeout N` minutes (`None` = none).
    pub session_timeout: Option<Duration>,
    /// holdfast `anyconnect mtu-policy common|split` (`None`: `Config::mtu_policy`).
    pub mtu_policy: Option<MtuPolicy>,
    /// `vpn-tunnel-protocol` includes `ssl-client`; logins to a policy without it are refused.
    pub ssl_client: bool,
    /// `anyconnect ssl rekey time` (X-CSTP-Rekey-Time; `None` = none).
    pub rekey_time: Option<Duration>,
    /// `anyconnect ssl rekey method` as the header value: `none`, `ssl` or `new-tunnel`.
    pub rekey_method: String,
}

impl Default for GroupPolicy {
    /// The ASA's DfltGrpPolicy values: DTLS on, DPD 30 s both ways, keepalive 20 s,
    /// idle 30 min, no session timeout.
    fn default() -> Self {
        Self {
            split_include: Vec::new(),
            split_exclude: Vec::new(),
            dns: Vec::new(),
            default_domain: None,
            mtu: None,
            dtls: true,
            df_bit_ignore: false,
            dpd_client: Some(Duration::from_secs(30)),
            dpd_gateway: Some(Duration::from_secs(30)),
            keepalive: Some(Duration::from_secs(20)),
            idle_timeout: Some(Duration::from_secs(30 * 60)),
            session_timeout: None,
            mtu_policy: None,
            ssl_client: true,
            rekey_time: None,
            rekey_method: "none".to_string(),
        }
    }
}

/// An IPv4 network (address + prefix length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub fn netmask(&self) -> Ipv4Addr {
        let p = u32::from(self.prefix.min(32));
        Ipv4Addr::from(if p == 0 { 0 } else { u32::MAX << (32 - p) })
    }
}

/// `ip local pool NAME FIRST-LAST mask MASK`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPool {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    pub mask: Ipv4Addr,
}

/// Which MTU the client is told to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MtuPolicy {
    /// holdfast default: X-CSTP-MTU = X-DTLS-MTU = the smaller of the two channel MTUs, so
    /// whatever channel carries the traffic, the client's adapter never sends a packet the
    /// channel cannot carry (no 1418-vs-1347 black hole, no MTU reconnect).
    Common,
    /// The ASA's behaviour: each channel's own MTU is advertised (X-CSTP-MTU = TLS MTU,
    /// X-DTLS-MTU = DTLS MTU); the client applies the DTLS one.
    Split,
}

/// Pre-authentication work bounds (DESIGN habit 5: decide before allocating).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Limits {
    /// Half-open logins (auth context issued, not yet complete) per client IP.
    pub pending_auth_per_peer: usize,
    /// Half-open logins in total.
    pub pending_auth_total: usize,
    /// A half-open login expires this long after its last step.
    pub pending_auth_lifetime: Duration,
    /// Wrong passwords in one login before it is refused outright.
    pub max_auth_failures: u32,
    /// Failed logins allowed per client address within `auth_failure_window`; beyond it,
    /// replies get 429 without any password hashing.
    pub auth_failures_per_peer: u32,
    pub auth_failure_window: Duration,
    /// Sessions in total (0 = unlimited).
    pub max_sessions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            pending_auth_per_peer: 16,
            pending_auth_total: 4096,
            pending_auth_lifetime: Duration::from_secs(120),
            max_auth_failures: 3,
            auth_failures_per_peer: 10,
            auth_failure_window: Duration::from_secs(60),
            max_sessions: 0,
        }
    }
}

/// Timing of the server->client channel choice (README "Fallback to TLS").
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FallbackTiming {
    /// Data sent on DTLS and nothing received on DTLS for this long -> DTLS DPD probe.
    pub probe_after: Duration,
    /// No DTLS answer this long after the probe -> send on TLS. Once probe answers were
    /// timed, the wait is 4 x their smoothed RTT within `[probe_timeout, probe_timeout_max]`.
    pub probe_timeout: Duration,
    pub probe_timeout_max: Duration,
    /// While on TLS with DTLS still open: first re-probe interval (doubles up to `reprobe_max`).
    pub reprobe_min: Duration,
    pub reprobe_max: Duration,
    /// While sending on DTLS and receiving on it too, still require a DPD answer at least this
    /// often (catches a path that drops only server->client datagrams).
    pub verify_interval: Duration,
}

impl Default for FallbackTiming {
    fn default() -> Self {
        Self {
            probe_after: Duration::from_millis(1000),
            probe_timeout: Duration::from_millis(700),
            probe_timeout_max: Duration::from_millis(1000),
            reprobe_min: Duration::from_millis(1000),
            reprobe_max: Duration::from_secs(8),
            verify_interval: Duration::from_secs(10),
        }
    }
}

impl Config {
    pub(crate) fn group(&self, name: &str) -> Option<&TunnelGroup> {
        // Exact name first, then alias (case-insensitive as the ASA matches aliases).
        self.tunnel_groups
            .iter()
            .find(|g| g.name == name)
            .or_else(|| {
                self.tunnel_groups
                    .iter()
                    .find(|g| g.aliases.iter().any(|a| a.eq_ignore_ascii_case(name)))
            })
    }

    /// Group names shown in the login form's group list: every alias, in configuration order.
    pub(crate) fn group_list(&self) -> Vec<(&str, &TunnelGroup)> {
        let mut v = Vec::new();
        for g in &self.tunnel_groups {
            for a in &g.aliases {
                v.push((a.as_str(), g));
            }
        }
        v
    }

    pub(crate) fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    pub(crate) fn policy_of(&self, g: &TunnelGroup) -> GroupPolicy {
        self.group_policies
            .get(&g.default_group_policy)
            .cloned()
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------
// Reconfiguration (reload)

/// What a new configuration changes in the remote-access settings, by name, in the
/// operator's terms (`holdfast reload` prints it). Computed by [`Config::changes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub users_added: Vec<String>,
    pub users_removed: Vec<String>,
    /// Same name, another password hash.
    pub users_password_changed: Vec<String>,
    pub tunnel_groups_added: Vec<String>,
    pub tunnel_groups_removed: Vec<String>,
    /// Aliases, default group policy, pools or authentication changed.
    pub tunnel_groups_changed: Vec<String>,
    pub group_policies_added: Vec<String>,
    pub group_policies_removed: Vec<String>,
    pub group_policies_changed: Vec<String>,
    pub pools_added: Vec<String>,
    pub pools_removed: Vec<String>,
    /// Range or mask changed (growing; shrinking past a leased address is refused before).
    pub pools_changed: Vec<String>,
    /// `webvpn / tunnel-group-list enable` toggled.
    pub group_list_changed: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

/// A reconfiguration that would take a live session's address out of the pools of its
/// tunnel group (or change the mask it was given). Such a reload is refused: the session
/// keeps its lease across reconnects, and a lease outside every configured pool could later
/// be handed out twice or be given a different netmask on the client's next CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConflict {
    pub user: String,
    pub address: Ipv4Addr,
    pub tunnel_group: String,
    /// The pool the address was leased from in the running configuration, if still known.
    pub pool: Option<String>,
    /// Why, in the operator's words.
    pub why: String,
}

impl Config {
    /// The remote-access settings `new` changes compared with `self` (only what comes from
    /// the configuration file: users, tunnel groups, group policies, pools, the group list).
    pub fn changes(&self, new: &Config) -> Changes {
        let mut c = Changes::default();
        for u in &new.users {
            match self.user(&u.name) {
                None => c.users_added.push(u.name.clone()),
                Some(o) if !crate::ct_eq(o.password_hash.as_bytes(), u.password_hash.as_bytes()) => {
                    c.users_password_changed.push(u.name.clone())
                }
                Some(_) => {}
            }
        }
        c.users_removed = self
            .users
            .iter()
            .filter(|o| new.user(&o.name).is_none())
            .map(|o| o.name.clone())
            .collect();
        for g in &new.tunnel_groups {
            match self.tunnel_groups.iter().find(|o| o.name == g.name) {
                None => c.tunnel_groups_added.push(g.name.clone()),
                Some(o) if o != g => c.tunnel_groups_changed.push(g.name.clone()),
                Some(_) => {}
            }
        }
        c.tunnel_groups_removed = self
            .tunnel_groups
            .iter()
            .filter(|o| !new.tunnel_groups.iter().any(|g| g.name == o.name))
            .map(|o| o.name.clone())
            .collect();
        let (a, r, ch) = map_diff(&self.group_policies, &new.group_policies);
        (c.group_policies_added, c.group_policies_removed, c.group_policies_changed) = (a, r, ch);
        let (a, r, ch) = map_diff(&self.pools, &new.pools);
        (c.pools_added, c.pools_removed, c.pools_changed) = (a, r, ch);
        c.group_list_changed = self.group_list != new.group_list;
        c
    }

    /// The pool of `group` that holds `addr`, by name.
    pub(crate) fn pool_holding(&self, group: &str, addr: Ipv4Addr) -> Option<(&str, &AddressPool)> {
        let g = self.tunnel_groups.iter().find(|g| g.name == group)?;
        g.address_pools.iter().find_map(|name| {
            let p = self.pools.get(name)?;
            (u32::from(p.first) <= u32::from(addr) && u32::from(addr) <= u32::from(p.last)).then_some((name.as_str(), p))
        })
    }
}

fn map_diff<V: PartialEq>(old: &BTreeMap<String, V>, new: &BTreeMap<String, V>) -> (Vec<String>, Vec<String>, Vec<String>) {
    let added = new.keys().filter(|k| !old.contains_key(*k)).cloned().collect();
    let removed = old.keys().filter(|k| !new.contains_key(*k)).cloned().collect();
    let changed = new.iter().filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v)).map(|(k, _)| k.clone()).collect();
    (added, removed, changed)
}
