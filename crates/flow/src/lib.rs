//! `flow`: the connection table with ASA semantics, as a sans-IO engine.
//!
//! One [`Engine`] holds every TCP, UDP, ICMP (echo) and other-protocol flow crossing the gateway,
//! keyed by the 5-tuple and interface pair, with ASA flag letters, byte counters, idle timers
//! (`timeout conn|half-closed|udp|icmp`, 30 s SYN timeout) and the ASA teardown reasons. It knows
//! which tunnel each flow uses — the tunnel *name* interned to a [`TunnelId`], never an SA — so
//! that `sysopt connection preserve-vpn-flows` can keep flows across a tunnel drop and resume them
//! on the next SA.
//!
//! Driving it (DESIGN.md): after any `handle_*` call, drain [`Engine::poll_transmit`] (held
//! segments to replay into a tunnel that came back), then [`Engine::poll_event`] (Built/Teardown,
//! for syslog 302013-302021), then ask [`Engine::poll_timeout`] and call
//! [`Engine::handle_timeout`] at that instant. Time is always a parameter.
//!
//! Inputs: [`Engine::handle_packet`] (or [`Engine::handle_batch`]) per inner IPv4 packet,
//! [`Engine::tunnel_up`] / [`Engine::tunnel_down`] per tunnel (not per SA), operator commands
//! ([`Engine::clear_conn`], [`Engine::set_policy`]), and restart survival
//! ([`Engine::snapshot`], [`Engine::restore`], [`Engine::allow_pickup_until`]). Text for
//! `show conn`, `show asp drop` and syslog lives in [`text`]. See the crate README for wiring.

mod table;
pub mod text;

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use table::{Entry, Key, Table, Wheel, NIL, TICK_MS, WHEEL_SLOTS};
use wire::ip::{proto, tcp_flags, IcmpPacket, Ipv4Packet, TcpPacket, UdpPacket, WireError};

pub use policy::{Sysopt, Timeouts, TrafficSelector};

/// ASA connection id (shown by `show conn`, logged by 302013..302021).
pub type ConnId = u64;

/// A tunnel, by stable name (`MAP:SEQ`), interned by [`Engine::tunnel`]. Flows keep this id
/// across rekeys, reauthentication, tunnel drops and daemon restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TunnelId(u16);

impl TunnelId {
    pub fn index(self) -> u16 {
        self.0
    }
}

/// An interface (by `nameif`), interned by [`Engine::interface`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IfcId(u8);

/// The two interfaces a flow crosses: `outside` is the lower-security one (ASA "outside"/
/// foreign side, where the tunnels terminate), `inside` the higher-security one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IfcPair {
    pub outside: IfcId,
    pub inside: IfcId,
}

/// Which way a packet travels across the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dir {
    /// Arrived on `outside`, leaves by `inside` (e.g. decrypted from a tunnel).
    Inbound,
    /// Arrived on `inside`, leaves by `outside` (e.g. about to be encrypted).
    Outbound,
}

/// How the packet is carried on the outside, as the daemon's SPD says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// No tunnel policy covers it.
    Clear,
    /// Decrypted from this tunnel's SA.
    FromTunnel(TunnelId),
    /// Covered by this tunnel's policy: to be encrypted into it (whether or not an SA exists:
    /// the engine knows from `tunnel_up`/`tunnel_down` whether the tunnel is up).
    ToTunnel(TunnelId),
}

impl Route {
    fn tunnel(self) -> u16 {
        match self {
            Route::Clear => 0,
            Route::FromTunnel(t) | Route::ToTunnel(t) => t.0,
        }
    }
}

/// What the daemon does with the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    Drop(DropReason),
    /// A preserved, established TCP flow whose tunnel is down: the engine kept a copy of the
    /// segment for replay when the tunnel returns (if it fit the caps). When `icmp` is set the
    /// daemon sends ICMP host unreachable back to the sender (build it with
    /// [`icmp_host_unreachable`]): RFC 6069 makes the sender undo one RTO backoff step per such
    /// ICMP, so it keeps retransmitting at its base RTO and notices the tunnel's return at once.
    Hold { icmp: bool },
}

/// `show asp drop` reasons (frame drops), with the ASA keywords.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DropReason {
    InvalidIpHeader,
    InvalidIpLength,
    InvalidTcpHdrLength,
    InvalidUdpLength,
    /// First packet of a TCP flow is not a SYN.
    TcpNotSyn,
    /// ICMP echo reply with no echo request conn (stateful ICMP, as `inspect icmp`).
    InspectIcmpSeqNumNotMatched,
    /// ICMP error about no existing conn.
    InspectIcmpErrorNoExistingConn,
    /// The tunnel the packet needs is down (never forwarded in clear).
    IpsecTunDown,
    /// The packet's tunnel context does not match the conn's (e.g. a tunnelled flow's packet
    /// arriving or leaving in clear).
    VpnHandleMismatch,
    /// The table is full (`Config::max_flows`).
    ConnLimit,
}

impl DropReason {
    pub const ALL: [DropReason; 10] = [
        DropReason::InvalidIpHeader,
        DropReason::InvalidIpLength,
        DropReason::InvalidTcpHdrLength,
        DropReason::InvalidUdpLength,
        DropReason::TcpNotSyn,
        DropReason::InspectIcmpSeqNumNotMatched,
        DropReason::InspectIcmpErrorNoExistingConn,
        DropReason::IpsecTunDown,
        DropReason::VpnHandleMismatch,
        DropReason::ConnLimit,
    ];

    /// The `show asp drop` / `capture asp-drop` keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            DropReason::InvalidIpHeader => "invalid-ip-header",
            DropReason::InvalidIpLength => "invalid-ip-length",
            DropReason::InvalidTcpHdrLength => "invalid-tcp-hdr-length",
            DropReason::InvalidUdpLength => "invalid-udp-length",
            DropReason::TcpNotSyn => "tcp-not-syn",
            DropReason::InspectIcmpSeqNumNotMatched => "inspect-icmp-seq-num-not-matched",
            DropReason::InspectIcmpErrorNoExistingConn => "inspect-icmp-error-no-existing-conn",
            DropReason::IpsecTunDown => "ipsec-tun-down",
            DropReason::VpnHandleMismatch => "vpn-handle-mismatch",
            DropReason::ConnLimit => "conn-limit",
        }
    }

    /// The description `show asp drop` prints before the keyword.
    pub fn description(self) -> &'static str {
        match self {
            DropReason::InvalidIpHeader => "Invalid IP header",
            DropReason::InvalidIpLength => "Invalid IP Length",
            DropReason::InvalidTcpHdrLength => "Invalid TCP Length",
            DropReason::InvalidUdpLength => "Invalid UDP Length",
            DropReason::TcpNotSyn => "First TCP packet not SYN",
            DropReason::InspectIcmpSeqNumNotMatched => "ICMP Inspect seq num not matched",
            DropReason::InspectIcmpErrorNoExistingConn => "ICMP Error Inspect no existing conn",
            DropReason::IpsecTunDown => "IPSec tunnel is down",
            DropReason::VpnHandleMismatch => "VPN Handle Mismatch",
            DropReason::ConnLimit => "Connection limit reached",
        }
    }

    fn idx(self) -> usize {
        Self::ALL.iter().position(|&r| r == self).unwrap_or(0)
    }
}

/// Why a connection ended (the last field of 302014/302016).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TeardownReason {
    TcpFins,
    /// RST from the inside (higher-security) side.
    TcpResetI,
    /// RST from the outside side.
    TcpResetO,
    ConnTimeout,
    SynTimeout,
    FinTimeout,
    TunnelTornDown,
    VpnReclassifyFailed,
    /// `clear conn`. Our reference does not give the ASA's text for this; "Unknown" is one of
    /// the documented reasons and makes no false claim.
    Cleared,
}

impl TeardownReason {
    pub fn text(self) -> &'static str {
        match self {
            TeardownReason::TcpFins => "TCP FINs",
            TeardownReason::TcpResetI => "TCP Reset-I",
            TeardownReason::TcpResetO => "TCP Reset-O",
            TeardownReason::ConnTimeout => "Conn-timeout",
            TeardownReason::SynTimeout => "SYN Timeout",
            TeardownReason::FinTimeout => "FIN Timeout",
            TeardownReason::TunnelTornDown => "Tunnel has been torn down",
            TeardownReason::VpnReclassifyFailed => "VPN reclassify failed",
            TeardownReason::Cleared => "Unknown",
        }
    }
}

/// One end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub ifc: IfcId,
    pub addr: Ipv4Addr,
    /// TCP/UDP port; for ICMP the echo identifier on the initiator's side and 0 on the
    /// responder's (the ASA's `faddr ip/id ... laddr ip/id`).
    pub port: u16,
}

/// Everything the syslog lines and `show conn` need about one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnInfo {
    pub id: ConnId,
    /// IP protocol number.
    pub protocol: u8,
    /// The initiator is on the outside (ASA "inbound" connection).
    pub inbound: bool,
    pub outside: Endpoint,
    pub inside: Endpoint,
    /// ICMP type/code of the packet that built an ICMP conn.
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub tunnel: Option<TunnelId>,
}

impl ConnInfo {
    pub fn initiator(&self) -> &Endpoint {
        if self.inbound {
            &self.outside
        } else {
            &self.inside
        }
    }
    pub fn responder(&self) -> &Endpoint {
        if self.inbound {
            &self.inside
        } else {
            &self.outside
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// 302013 (TCP), 302015 (UDP), 302020 (ICMP).
    Built(ConnInfo),
    /// 302014 (TCP), 302016 (UDP), 302021 (ICMP).
    Teardown { conn: ConnInfo, duration: Duration, bytes: u64, reason: TeardownReason },
    /// A clear flow that a tunnel's selectors now cover was moved into that tunnel
    /// (`sysopt connection reclassify-vpn`).
    Reclassified { conn: ConnInfo, tunnel: TunnelId },
}

/// A held segment to send into a tunnel that came back (ordinary IPv4 packet, encrypt it with
/// the tunnel's current outbound SA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub tunnel: TunnelId,
    pub packet: Vec<u8>,
}

/// Why the engine wants to be woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerReason {
    /// Idle/SYN/half-closed timers of connections.
    ConnTimeouts,
}

/// Engine knobs. `timeouts` and `sysopt` come from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub timeouts: Timeouts,
    pub sysopt: Sysopt,
    /// Connection limit (further flows are dropped with `conn-limit`).
    pub max_flows: usize,
    /// Largest segment held per preserved flow while its tunnel is down (one segment per flow).
    pub hold_max_bytes_per_flow: usize,
    /// Bound on all held segments together.
    pub hold_max_bytes_total: usize,
    /// Minimum gap between two ICMP unreachables for the same flow.
    pub icmp_min_interval: Duration,
    /// Global ICMP unreachable budget per second (token bucket, burst = one second's worth).
    pub icmp_per_second: u32,
    /// Seed of the keyed flow hash (take it from the system RNG in the daemon).
    pub hash_seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            timeouts: Timeouts::default(),
            sysopt: Sysopt::default(),
            max_flows: 16 << 20,
            hold_max_bytes_per_flow: 4096,
            hold_max_bytes_total: 16 << 20,
            icmp_min_interval: Duration::from_millis(200),
            icmp_per_second: 1000,
            hash_seed: 0x686f_6c64_6661_7374,
        }
    }
}

/// The ASA's embryonic (SYN) timeout (asa.md §4).
pub const SYN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `sysopt connection timewait` keeps a conn after its closing FINs were acknowledged
/// (the ASA's documented 15 s).
pub const TIMEWAIT: Duration = Duration::from_secs(15);

/// `show conn`'s header: `N in use, M most used`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnCounts {
    pub in_use: u64,
    pub most_used: u64,
}

impl From<&Stats> for ConnCounts {
    /// The engine's own counters (an answer built under one lock hold).
    fn from(s: &Stats) -> Self {
        ConnCounts { in_use: s.in_use, most_used: s.most_used }
    }
}

/// Counters. `built - torn_down == in_use` always holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub in_use: u64,
    pub most_used: u64,
    pub built: u64,
    pub torn_down: u64,
    /// Indexed like [`DropReason::ALL`].
    pub drops: [u64; 10],
    pub packets: u64,
    pub held: u64,
    /// Segments that could not be held (caps).
    pub hold_overflow: u64,
    pub replayed: u64,
    pub icmp_unreachable: u64,
    pub icmp_rate_limited: u64,
    pub reclassified: u64,
    /// TCP conns built mid-stream in the pickup window after a restart.
    pub picked_up: u64,
    /// Conns torn down because their tunnel went away (`show asp drop` flow drop
    /// `tunnel-torn-down`).
    pub flows_tunnel_torn_down: u64,
    /// Non-first fragments carry no ports; they are passed through uncounted.
    pub untracked_fragments: u64,
    /// Segments held while their tunnel was suspended ([`Engine::tunnel_suspend`]).
    pub held_suspended: u64,
}

impl Stats {
    pub fn drops(&self, r: DropReason) -> u64 {
        self.drops[r.idx()]
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlowError {
    #[error("too many interfaces (at most 255)")]
    TooManyInterfaces,
    #[error("too many tunnels (at most 65535)")]
    TooManyTunnels,
    #[error("unsupported snapshot version {0}")]
    SnapshotVersion(u32),
    #[error("snapshot refers to unknown interface or tunnel index {0}")]
    SnapshotIndex(u32),
}

/// Builds the ICMP destination unreachable (host unreachable, RFC 792 code 1) that answers a
/// held segment, from `from` (the gateway's address toward the sender) into `out`; returns its
/// length. `None` where RFC 1122/1812 forbid an error or `out` is too small (576 bytes suffice).
pub fn icmp_host_unreachable(offending: &[u8], from: Ipv4Addr, out: &mut [u8]) -> Option<usize> {
    wire::ip::build_dest_unreachable(offending, wire::ip::unreach_code::HOST, 0, from, out)
}

// ---------------------------------------------------------------------------------------------
// ASA flag bits. Letters (asa.md §3), in the order `show conn` prints them.

pub(crate) mod fl {
    pub const U: u16 = 1 << 0;
    /// inside FIN
    pub const LF: u16 = 1 << 1;
    /// outside FIN
    pub const UF: u16 = 1 << 2;
    /// inside acknowledged (the outside's) FIN
    pub const LR: u16 = 1 << 3;
    /// outside acknowledged (the inside's) FIN
    pub const UR: u16 = 1 << 4;
    /// awaiting outside SYN
    pub const LS: u16 = 1 << 5;
    /// awaiting inside SYN
    pub const US: u16 = 1 << 6;
    /// awaiting outside ACK to SYN
    pub const LA: u16 = 1 << 7;
    /// awaiting inside ACK to SYN
    pub const UA: u16 = 1 << 8;
    pub const I: u16 = 1 << 9;
    pub const O: u16 = 1 << 10;
    /// initial SYN from outside
    pub const B: u16 = 1 << 11;
    /// preserved entry whose tunnel is gone
    pub const V: u16 = 1 << 12;
    /// internal: the initiator is on the outside (all protocols)
    pub const INBOUND: u16 = 1 << 13;
    /// internal: closed by FINs, held for `sysopt connection timewait`
    pub const TIMEWAIT: u16 = 1 << 14;

    pub const HANDSHAKE: u16 = LS | US | LA | UA;
    pub const LETTERS: [(u16, char); 13] = [
        (U, 'U'),
        (LF, 'f'),
        (UF, 'F'),
        (LR, 'r'),
        (UR, 'R'),
        (LS, 's'),
        (US, 'S'),
        (LA, 'a'),
        (UA, 'A'),
        (I, 'I'),
        (O, 'O'),
        (B, 'B'),
        (V, 'V'),
    ];
}

/// ASA flag letters for a flag word ("-" when none, as the ASA prints for UDP).
pub fn flag_letters(flags: u16) -> String {
    let s: String = fl::LETTERS.iter().filter(|(b, _)| flags & b != 0).map(|&(_, c)| c).collect();
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// One connection as `show conn` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnRecord {
    pub info: ConnInfo,
    pub flags: String,
    pub bytes: u64,
    pub idle: Duration,
    pub uptime: Duration,
    /// The idle timeout now applying (`None` = never).
    pub timeout: Option<Duration>,
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct TunnelState {
    name: String,
    up: bool,
    /// Preserve TCP / UDP when this tunnel drops: fixed when the tunnel came up, because on the
    /// ASA enabling preserve-vpn-flows affects only tunnels established afterwards (asa.md §1).
    preserve_tcp: bool,
    preserve_udp: bool,
    /// The tunnel still has its SAs but its path looks broken ([`Engine::tunnel_suspend`]).
    suspended: bool,
}

#[derive(Debug)]
struct Held {
    id: ConnId,
    /// Checked by the invariant tests.
    #[cfg_attr(not(test), allow(dead_code))]
    tunnel: u16,
    packet: Vec<u8>,
    last_icmp_ms: Option<u64>,
}

/// Internal times are milliseconds since `epoch` plus this bias, so that a restored flow's
/// past (up to ~2 years) is representable without ever subtracting from an `Instant`.
const TIME_BIAS_MS: u64 = 1 << 36;

pub struct Engine {
    cfg: Config,
    epoch: Instant,
    table: Table,
    wheel: Wheel,
    next_id: ConnId,
    ifcs: Vec<String>,
    tunnels: Vec<TunnelState>,
    events: VecDeque<Event>,
    transmits: VecDeque<Transmit>,
    held: HashMap<u32, Held>,
    held_bytes: usize,
    icmp_tokens_milli: u64,
    icmp_refill_ms: u64,
    stats: Stats,
    /// Scratch buffer of `handle_timeout`: (deadline, conn id, slab index).
    expired: Vec<(u64, ConnId, u32)>,
    /// End of the mid-stream pickup window (engine ms; 0 = none).
    pickup_until_ms: u64,
    asp_last_clearing: Option<String>,
}

/// See [`Engine::tunnel_info`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelInfo {
    pub name: String,
    pub up: bool,
    pub preserve_tcp: bool,
    pub preserve_udp: bool,
}

/// One packet of a batch for [`Engine::handle_batch`].
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    pub dir: Dir,
    pub ifcs: IfcPair,
    pub route: Route,
    pub data: &'a [u8],
}

/// What a packet says about itself once parsed.
#[derive(Clone, Copy)]
struct Parsed {
    key: Key,
    from_outside: bool,
    /// L4 payload bytes (what the ASA's byte counter counts).
    payload: u64,
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    Tcp { flags: u8, seq: u32, ack: u32 },
    Udp,
    IcmpEchoRequest { ty: u8, code: u8 },
    IcmpEchoReply,
    /// An ICMP error quoting a packet of the flow `key` (already normalised).
    IcmpError,
    Other,
    /// A non-first fragment: no ports, not tracked.
    Fragment,
}

impl Engine {
    pub fn new(now: Instant, cfg: Config) -> Self {
        let table = Table::new(cfg.hash_seed);
        let wheel = Wheel::new(TIME_BIAS_MS);
        let tokens = u64::from(cfg.icmp_per_second) * 1000;
        Self {
            cfg,
            epoch: now,
            table,
            wheel,
            next_id: 1,
            ifcs: Vec::new(),
            tunnels: Vec::new(),
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            held: HashMap::new(),
            held_bytes: 0,
            icmp_tokens_milli: tokens,
            icmp_refill_ms: TIME_BIAS_MS,
            stats: Stats::default(),
            expired: Vec::new(),
            pickup_until_ms: 0,
            asp_last_clearing: None,
        }
    }

    /// Interns an interface `nameif` (idempotent).
    pub fn interface(&mut self, nameif: &str) -> Result<IfcId, FlowError> {
        if let Some(i) = self.ifcs.iter().position(|n| n == nameif) {
            return Ok(IfcId(i as u8));
        }
        if self.ifcs.len() >= 255 {
            return Err(FlowError::TooManyInterfaces);
        }
        self.ifcs.push(nameif.to_string());
        Ok(IfcId((self.ifcs.len() - 1) as u8))
    }

    pub fn interface_name(&self, ifc: IfcId) -> &str {
        self.ifcs.get(usize::from(ifc.0)).map(String::as_str).unwrap_or("?")
    }

    /// Interns a tunnel name (`MAP:SEQ`, idempotent). A new tunnel starts down.
    pub fn tunnel(&mut self, name: &str) -> Result<TunnelId, FlowError> {
        if let Some(i) = self.tunnels.iter().position(|t| t.name == name) {
            return Ok(TunnelId(i as u16 + 1));
        }
        if self.tunnels.len() >= usize::from(u16::MAX) {
            return Err(FlowError::TooManyTunnels);
        }
        self.tunnels.push(TunnelState {
            name: name.to_string(),
            up: false,
            preserve_tcp: self.cfg.sysopt.preserve_vpn_flows,
            preserve_udp: self.cfg.sysopt.preserve_vpn_flows && self.cfg.sysopt.preserve_vpn_flows_udp,
            suspended: false,
        });
        Ok(TunnelId(self.tunnels.len() as u16))
    }

    pub fn tunnel_name(&self, t: TunnelId) -> &str {
        self.tunnel_state(t.0).map(|s| s.name.as_str()).unwrap_or("?")
    }

    /// State of a tunnel as the engine sees it (for `show asp table vpn-context`: `PRESERVE`
    /// belongs to a tunnel established while preserve-vpn-flows was on).
    pub fn tunnel_info(&self, t: TunnelId) -> Option<TunnelInfo> {
        self.tunnel_state(t.0).map(|s| TunnelInfo {
            name: s.name.clone(),
            up: s.up,
            preserve_tcp: s.preserve_tcp,
            preserve_udp: s.preserve_udp,
        })
    }

    /// `clear asp drop`: zeroes the drop counters; `when` is the daemon's text for the
    /// `Last clearing:` lines (e.g. `10:43:33 UTC Nov 23 2026 by admin`).
    pub fn clear_asp_drop(&mut self, when: &str) {
        self.stats.drops = [0; 10];
        self.stats.flows_tunnel_torn_down = 0;
        self.asp_last_clearing = Some(when.to_string());
    }

    pub fn tunnel_is_up(&self, t: TunnelId) -> bool {
        self.tunnel_state(t.0).is_some_and(|s| s.up)
    }

    /// New timeouts/sysopts (configuration reload). Timers of existing flows follow the new
    /// timeouts from their next wheel visit; a preserve change applies to tunnels that come up
    /// afterwards, as on the ASA.
    pub fn set_policy(&mut self, now: Instant, timeouts: Timeouts, sysopt: Sysopt) {
        self.cfg.timeouts = timeouts;
        self.cfg.sysopt = sysopt;
        // Re-arm everything: a shorter timeout must fire on time, and flows that had none
        // ("0 = never") may have one now. Rare (config change), O(n).
        let now_ms = self.ms(now);
        let live: Vec<u32> = self.table.live().collect();
        for i in live {
            self.wheel.unlink(&mut self.table, i);
            self.arm(i, now_ms);
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub(crate) fn asp_last_clearing(&self) -> &str {
        self.asp_last_clearing.as_deref().unwrap_or("Never")
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    /// Heap bytes of the table proper (slab + index), excluding held segments.
    pub fn table_heap_bytes(&self) -> usize {
        self.table.heap_bytes()
    }

    // -----------------------------------------------------------------------------------------
    // Data path

    /// Classifies one IPv4 packet (`data` starts at the IPv4 header) travelling `dir` across
    /// `ifcs`, carried on the outside as `route` says.
    pub fn handle_packet(&mut self, now: Instant, dir: Dir, ifcs: IfcPair, route: Route, data: &[u8]) -> Verdict {
        let now_ms = self.ms(now);
        match parse(dir, ifcs, data) {
            Ok(p) => {
                let found = if matches!(p.kind, Kind::Fragment) { None } else { self.table.find(&p.key) };
                self.process(now_ms, route, &p, found, data)
            }
            Err(r) => {
                self.stats.packets += 1;
                self.drop(r)
            }
        }
    }

    /// The same as calling [`Engine::handle_packet`] for each packet in order (same verdicts,
    /// events and state), writing `out[k]` for `packets[k]` (up to the shorter length). Faster
    /// for a batch from one TUN/GRO read: the batch's table lookups run as a software pipeline,
    /// so their cache misses overlap instead of queueing one by one.
    pub fn handle_batch(&mut self, now: Instant, packets: &[Packet<'_>], out: &mut [Verdict]) {
        // Pipeline distance, in packets: packet k's home bucket line is requested while packet
        // k - 2*AHEAD is processed, its entry line (found through the then-cached bucket) while
        // k - AHEAD is. A random-conn lookup on a big table waits ~0.2-0.5 us per miss on the
        // 2-core VM the figures come from, and one packet's processing takes ~50-75 ns, so a
        // distance of about 8 hides most of it (4 measured worse, 16 the same: README).
        const AHEAD: usize = 8;
        const RING: usize = 32; // a power of two > 2 * AHEAD
        let now_ms = self.ms(now);
        let n = packets.len().min(out.len());
        let mut parsed: [Result<Parsed, DropReason>; RING] = [Err(DropReason::InvalidIpHeader); RING];
        let mut hashes = [0u64; RING];
        let mut hints = [NIL; RING];
        for step in 0..n + 2 * AHEAD {
            if step < n {
                let pk = &packets[step];
                let r = parse(pk.dir, pk.ifcs, pk.data);
                if let Ok(p) = &r {
                    let h = self.table.hash(&p.key);
                    self.table.prefetch_home(h);
                    hashes[step % RING] = h;
                }
                parsed[step % RING] = r;
            }
            if let Some(k) = step.checked_sub(AHEAD).filter(|&k| k < n) {
                if parsed[k % RING].is_ok() {
                    hints[k % RING] = self.table.prefetch_entry(hashes[k % RING]);
                }
            }
            if let Some(k) = step.checked_sub(2 * AHEAD).filter(|&k| k < n) {
                out[k] = match &parsed[k % RING] {
                    Err(r) => {
                        self.stats.packets += 1;
                        self.drop(*r)
                    }
                    Ok(p) => {
                        let f = if matches!(p.kind, Kind::Fragment) {
                            None
                        } else {
                            self.table.find_hinted(&p.key, hashes[k % RING], hints[k % RING])
                        };
                        self.process(now_ms, packets[k].route, p, f, packets[k].data)
                    }
                };
            }
        }
    }

    /// Everything after parsing and lookup (`found` = the conn's slab index, if any).
    fn process(&mut self, now_ms: u64, route: Route, p: &Parsed, found: Option<u32>, data: &[u8]) -> Verdict {
        self.stats.packets += 1;
        let p = *p;
        let rt = route.tunnel();
        let into_tunnel = matches!(route, Route::ToTunnel(_));
        let tunnel_down = into_tunnel && !self.tunnel_state(rt).is_some_and(|s| s.up);

        if let Kind::Fragment = p.kind {
            if tunnel_down {
                return self.drop(DropReason::IpsecTunDown);
            }
            self.stats.untracked_fragments += 1;
            return Verdict::Forward;
        }

        let Some(i) = found else {
            return self.new_flow(now_ms, &p, route, tunnel_down);
        };

        // Tunnel context of an existing conn.
        let et = self.table.get(i).tunnel;
        if et != rt {
            if rt == 0 {
                // A tunnelled flow's packet in clear: never let it out (or in) unprotected.
                return self.drop(DropReason::VpnHandleMismatch);
            }
            if et == 0 && !self.cfg.sysopt.reclassify_vpn {
                // Built in clear, now covered by a tunnel, and reclassification is off: the conn
                // cannot move into the tunnel. Tear it down; this packet may rebuild it.
                self.teardown(i, now_ms, TeardownReason::VpnReclassifyFailed);
                return self.new_flow(now_ms, &p, route, tunnel_down);
            }
            // Moved to another tunnel (or reclassified lazily): follow it. A segment held for
            // the old tunnel is not replayed into the new one: the sender retransmits anyway.
            if let Some(h) = self.held.remove(&i) {
                self.held_bytes -= h.packet.capacity();
            }
            let e = self.table.get_mut(i);
            e.tunnel = rt;
            if !tunnel_down {
                e.flags &= !fl::V;
            }
            if et == 0 {
                self.stats.reclassified += 1;
                let conn = self.info(i);
                self.events.push_back(Event::Reclassified { conn, tunnel: TunnelId(rt) });
            }
        }

        if tunnel_down {
            return self.tunnel_down_packet(i, now_ms, &p, data);
        }
        if into_tunnel && self.tunnel_state(rt).is_some_and(|s| s.suspended) {
            if let Some(v) = self.suspended_packet(i, now_ms, &p, data) {
                return v;
            }
        }

        if let Kind::IcmpError = p.kind {
            // Relates to the conn; does not refresh it.
            return Verdict::Forward;
        }

        let e = self.table.get_mut(i);
        // A conn's timeout depends only on its protocol and flags: keep the flags to tell
        // whether it may have changed (rare: handshake, FIN) without computing it per packet.
        let flags_before = e.flags;
        e.last_ms = now_ms;
        e.bytes += p.payload;
        let mut end = None;
        if let Kind::Tcp { flags, seq, ack } = p.kind {
            end = tcp_update(e, p.from_outside, flags, seq, ack, p.payload as u32);
        }
        if let Some(reason) = end {
            if reason == TeardownReason::TcpFins && self.cfg.sysopt.timewait {
                // `sysopt connection timewait`: keep the closed conn a little while so that a
                // late last ACK or FIN retransmission still finds it.
                self.table.get_mut(i).flags |= fl::TIMEWAIT;
            } else {
                self.teardown(i, now_ms, reason);
                return Verdict::Forward;
            }
        }
        // Lazy timers: only a *shorter* timeout needs the entry moved now.
        if self.table.get(i).flags == flags_before {
            return Verdict::Forward;
        }
        let old_timeout = self.timeout_ms(&Entry { flags: flags_before, ..*self.table.get(i) });
        let new_timeout = self.timeout_ms(self.table.get(i));
        if new_timeout != old_timeout {
            let e = self.table.get(i);
            let due_tick = new_timeout.map(|t| (now_ms + t).div_ceil(TICK_MS));
            let armed = if e.armed == NIL { None } else { Some(u64::from(e.armed)) };
            let earlier = match (due_tick, armed) {
                (Some(d), Some(a)) => d < a,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if earlier {
                self.wheel.unlink(&mut self.table, i);
                self.arm(i, now_ms);
            }
        }
        Verdict::Forward
    }

    /// Processes every timer due at `now`: idle/SYN/half-closed expiry (Teardown events).
    pub fn handle_timeout(&mut self, now: Instant) {
        let now_ms = self.ms(now);
        let target = now_ms / TICK_MS;
        if target <= self.wheel.cursor {
            return;
        }
        // After a long gap every slot needs one visit, no more.
        if target - self.wheel.cursor > WHEEL_SLOTS as u64 {
            self.wheel.cursor = target - WHEEL_SLOTS as u64;
        }
        while self.wheel.cursor < target {
            self.wheel.cursor += 1;
            let cur = self.wheel.cursor;
            let mut i = self.wheel.take_slot((cur as usize) % WHEEL_SLOTS);
            while i != NIL {
                let (next, armed) = self.wheel.release(&mut self.table, i);
                if armed > cur {
                    // A later revolution: put it back where it was.
                    self.wheel.arm(&mut self.table, i, armed * TICK_MS);
                } else {
                    let e = self.table.get(i);
                    match self.timeout_ms(e) {
                        Some(t) if e.last_ms + t <= now_ms => self.expired.push((e.last_ms + t, e.id, i)),
                        _ => self.arm(i, now_ms),
                    }
                }
                i = next;
            }
            // Slot lists are LIFO; tear down in deadline order (then conn id) so the log reads
            // naturally. `expired` is a reused buffer.
            self.expired.sort_unstable();
            for k in 0..self.expired.len() {
                let (deadline, _, i) = self.expired[k];
                // Log the conn as ending at its deadline, not when we noticed.
                let reason = self.expiry_reason(self.table.get(i));
                self.teardown(i, deadline, reason);
            }
            self.expired.clear();
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Takes the queued transmits of `tunnel` only (oldest first), leaving every other
    /// tunnel's queued for whoever drains them: a caller that brings up one tunnel gets its
    /// replays without depending on the queue holding nothing else.
    pub fn take_transmits_for(&mut self, tunnel: TunnelId) -> Vec<Vec<u8>> {
        let mut mine = Vec::new();
        self.transmits.retain_mut(|t| {
            if t.tunnel == tunnel {
                mine.push(std::mem::take(&mut t.packet));
                false
            } else {
                true
            }
        });
        mine
    }

    /// The next instant at which [`Engine::handle_timeout`] has work (possibly a lazy re-arm).
    pub fn poll_timeout(&self) -> Option<(Instant, TimerReason)> {
        let tick = self.wheel.next_busy_tick()?;
        let ms = (tick * TICK_MS).saturating_sub(TIME_BIAS_MS);
        Some((self.epoch + Duration::from_millis(ms), TimerReason::ConnTimeouts))
    }

    // -----------------------------------------------------------------------------------------
    // Tunnel events

    /// The tunnel has no SA left (after the daemon's grace period: a rekey or reauthentication
    /// is not a drop). Without preserve-vpn-flows every TCP and UDP conn of the tunnel is torn
    /// down with `Tunnel has been torn down`; with it, TCP conns (and UDP ones with the holdfast
    /// extension `preserve_vpn_flows_udp`) stay, flagged `V`, and their idle timers keep running.
    pub fn tunnel_down(&mut self, now: Instant, tunnel: TunnelId) {
        let now_ms = self.ms(now);
        let Some(ts) = self.tunnel_state_mut(tunnel.0) else { return };
        ts.up = false;
        ts.suspended = false;
        let (ptcp, pudp) = (ts.preserve_tcp, ts.preserve_udp);
        let mut members: Vec<u32> = self.table.live().filter(|&i| self.table.get(i).tunnel == tunnel.0).collect();
        members.sort_unstable_by_key(|&i| self.table.get(i).id);
        for i in members {
            let p = self.table.get(i).key.proto;
            let keep = match p {
                proto::TCP => ptcp,
                proto::UDP => pudp,
                // ICMP and other protocols time out normally (asa.md §1).
                _ => true,
            };
            if keep {
                if p == proto::TCP || p == proto::UDP {
                    self.table.get_mut(i).flags |= fl::V;
                }
            } else {
                self.teardown(i, now_ms, TeardownReason::TunnelTornDown);
            }
        }
    }

    /// A CHILD_SA of the tunnel is installed (idempotent: a rekey calls it again harmlessly).
    /// `local_ts`/`remote_ts` are the negotiated selectors (inside/outside sides).
    ///
    /// Preserved conns of the tunnel lose `V` and their held segments are queued for replay
    /// ([`Engine::poll_transmit`]): the receiver answers a replayed segment with an (often
    /// duplicate) ACK, which restarts the sender at once instead of at its next backed-off
    /// retransmission. With `reclassify-vpn`, conns built in clear that the selectors cover are
    /// moved into the tunnel (`Reclassified` events).
    pub fn tunnel_up(&mut self, _now: Instant, tunnel: TunnelId, local_ts: &[TrafficSelector], remote_ts: &[TrafficSelector]) {
        let (ptcp, pudp) =
            (self.cfg.sysopt.preserve_vpn_flows, self.cfg.sysopt.preserve_vpn_flows && self.cfg.sysopt.preserve_vpn_flows_udp);
        let Some(ts) = self.tunnel_state_mut(tunnel.0) else { return };
        let was_up = ts.up;
        let was_suspended = std::mem::take(&mut ts.suspended);
        ts.up = true;
        if !was_up {
            // Fixed for this tunnel's lifetime: a rekey does not re-establish it.
            ts.preserve_tcp = ptcp;
            ts.preserve_udp = pudp;
        }
        let reclassify = self.cfg.sysopt.reclassify_vpn && !local_ts.is_empty() && !remote_ts.is_empty();
        if was_up {
            // A rekey or a second CHILD_SA: nothing was orphaned, and clear conns the
            // selectors cover were already moved when the tunnel came up (a full scan per rekey
            // would cost O(conns) for nothing).
            if was_suspended {
                self.replay_held(tunnel);
            }
            return;
        }
        let live: Vec<u32> = self.table.live().collect();
        for i in live {
            let e = self.table.get_mut(i);
            if e.tunnel == tunnel.0 {
                if e.flags & fl::V != 0 {
                    e.flags &= !fl::V;
                }
            } else if reclassify && e.tunnel == 0 && covers(&e.key, local_ts, remote_ts) {
                e.tunnel = tunnel.0;
                self.stats.reclassified += 1;
                let conn = self.info(i);
                self.events.push_back(Event::Reclassified { conn, tunnel });
            }
        }
        self.replay_held(tunnel);
    }

    /// holdfast extension for fast resumption after a *silent* path outage: the tunnel keeps
    /// its SAs, but traffic goes out and nothing comes back (the daemon's liveness check is
    /// unanswered). Until [`Engine::tunnel_resume`] (or `tunnel_up`/`tunnel_down`), segments of
    /// the tunnel's established TCP conns are held and answered with rate-limited ICMP
    /// unreachable, as while a preserved tunnel is down (RFC 6069 keeps the sender's RTO near
    /// its base), so the latest one can be replayed the moment the path is back. Nothing is torn
    /// down and no flag changes: the tunnel has not dropped. Only for tunnels that came up with
    /// `preserve-vpn-flows` (otherwise a no-op, returning false): holding traffic is part of
    /// preserving it.
    pub fn tunnel_suspend(&mut self, _now: Instant, tunnel: TunnelId) -> bool {
        let Some(ts) = self.tunnel_state_mut(tunnel.0) else { return false };
        if !ts.up || !ts.preserve_tcp {
            return false;
        }
        ts.suspended = true;
        true
    }

    /// The suspended tunnel's path answers again: replay the held segments
    /// ([`Engine::poll_transmit`]). A no-op for a tunnel that is not suspended.
    pub fn tunnel_resume(&mut self, _now: Instant, tunnel: TunnelId) {
        let Some(ts) = self.tunnel_state_mut(tunnel.0) else { return };
        if std::mem::take(&mut ts.suspended) {
            self.replay_held(tunnel);
        }
    }

    /// Sets whether the tunnel's TCP and UDP conns survive its next [`Engine::tunnel_down`]
    /// (and a restore), whatever `sysopt connection preserve-vpn-flows` says. holdfast
    /// extension for remote access: an AnyConnect session that lost its connection keeps its
    /// flows for its reconnect grace, and the session's end tears them down (call this with
    /// `false` first). [`Engine::tunnel_up`] of a tunnel that was down resets both to the
    /// sysopts, so call it after each such `tunnel_up`.
    pub fn set_tunnel_preserve(&mut self, tunnel: TunnelId, tcp: bool, udp: bool) {
        if let Some(ts) = self.tunnel_state_mut(tunnel.0) {
            ts.preserve_tcp = tcp;
            ts.preserve_udp = udp;
        }
    }

    /// How many segments are held for the tunnel's conns (waiting for it to come back).
    pub fn held_for(&self, t: TunnelId) -> usize {
        self.held.iter().filter(|(&i, h)| !h.packet.is_empty() && self.table.get(i).tunnel == t.0).count()
    }

    /// Whether [`Engine::tunnel_suspend`] is in effect for the tunnel.
    pub fn tunnel_is_suspended(&self, t: TunnelId) -> bool {
        self.tunnel_state(t.0).is_some_and(|s| s.suspended)
    }

    /// Queues the held segments of the tunnel's conns for replay, oldest conn first (by id,
    /// for determinism).
    fn replay_held(&mut self, tunnel: TunnelId) {
        let mut replay: Vec<(ConnId, u32)> = self
            .held
            .iter()
            .filter(|(&i, _)| self.table.get(i).tunnel == tunnel.0)
            .map(|(&i, h)| (h.id, i))
            .collect();
        replay.sort_unstable();
        for (_, i) in replay {
            if let Some(h) = self.held.remove(&i) {
                self.held_bytes -= h.packet.capacity();
                if !h.packet.is_empty() {
                    self.stats.replayed += 1;
                    self.transmits.push_back(Transmit { tunnel, packet: h.packet });
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Operator commands

    /// `clear conn [address IP]`: tears down every conn (with one endpoint at `address`).
    pub fn clear_conn(&mut self, now: Instant, address: Option<Ipv4Addr>) -> usize {
        let now_ms = self.ms(now);
        let a = address.map(u32::from);
        let victims: Vec<u32> = self
            .table
            .live()
            .filter(|&i| {
                let k = self.table.get(i).key;
                a.is_none_or(|a| k.out_ip == a || k.in_ip == a)
            })
            .collect();
        let n = victims.len();
        for i in victims {
            self.teardown(i, now_ms, TeardownReason::Cleared);
        }
        n
    }

    /// Every conn, oldest first, for `show conn` (see [`text`]).
    pub fn conns(&self, now: Instant) -> Vec<ConnRecord> {
        let now_ms = self.ms(now);
        let mut v: Vec<ConnRecord> = self.table.live().map(|i| self.record(i, now_ms)).collect();
        v.sort_by_key(|r| r.info.id);
        v
    }

    /// Looks up the conn a packet belongs to, without changing anything.
    pub fn lookup(&self, now: Instant, dir: Dir, ifcs: IfcPair, data: &[u8]) -> Option<ConnRecord> {
        let p = parse(dir, ifcs, data).ok()?;
        let i = self.table.find(&p.key)?;
        Some(self.record(i, self.ms(now)))
    }

    // -----------------------------------------------------------------------------------------
    // Restart survival

    /// Serializable state: every conn with its age and idle time (no `Instant`s), interfaces and
    /// tunnels by name. Held segments are not kept (they are a few retransmissions old).
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let now_ms = self.ms(now);
        let flows = self.table.live().map(|i| entry_flow_record(self.table.get(i), now_ms)).collect();
        Snapshot {
            version: SNAPSHOT_VERSION,
            next_id: self.next_id,
            most_used: self.stats.most_used,
            interfaces: self.ifcs.clone(),
            tunnels: self.tunnels.iter().map(|t| t.name.clone()).collect(),
            flows,
        }
    }

    /// Rebuilds an engine from a snapshot taken `downtime` ago (the daemon measures it with the
    /// wall clock). Every tunnel starts down, so tunnelled conns are handled as by
    /// [`Engine::tunnel_down`] with the *current* sysopts: kept with `V` when preserved (until
    /// the tunnel comes back), torn down otherwise. Conns whose idle timeout passed during the
    /// downtime expire at the first [`Engine::handle_timeout`], with their ordinary reason.
    pub fn restore(now: Instant, cfg: Config, snap: &Snapshot, downtime: Duration) -> Result<Self, FlowError> {
        if snap.version != SNAPSHOT_VERSION {
            return Err(FlowError::SnapshotVersion(snap.version));
        }
        let mut eng = Engine::new(now, cfg);
        for n in &snap.interfaces {
            eng.interface(n)?;
        }
        for n in &snap.tunnels {
            eng.tunnel(n)?;
        }
        let now_ms = eng.ms(now);
        let gap = downtime.as_millis().min(u128::from(TIME_BIAS_MS / 2)) as u64;
        for f in &snap.flows {
            if usize::from(f.ifc_out) >= eng.ifcs.len() || usize::from(f.ifc_in) >= eng.ifcs.len() {
                return Err(FlowError::SnapshotIndex(u32::from(f.ifc_out.max(f.ifc_in))));
            }
            if usize::from(f.tunnel) > eng.tunnels.len() {
                return Err(FlowError::SnapshotIndex(u32::from(f.tunnel)));
            }
            let key = Key {
                out_ip: u32::from(f.out_addr),
                in_ip: u32::from(f.in_addr),
                out_port: f.out_port,
                in_port: f.in_port,
                proto: f.protocol,
                ifc_out: f.ifc_out,
                ifc_in: f.ifc_in,
            };
            // Two flows on one key: a snapshot copied in slices can hold a conn torn down
            // during the copy and the one built on the same tuple after it. Ids only grow, so
            // the higher id is the live one, whichever comes first in the file.
            if let Some(i) = eng.table.find(&key) {
                if eng.table.get(i).id >= f.id {
                    continue;
                }
                eng.wheel.unlink(&mut eng.table, i);
                eng.table.remove(i);
                eng.stats.built -= 1;
            }
            if eng.table.len() >= eng.cfg.max_flows {
                continue;
            }
            let clamp = |d: u64| d.saturating_add(gap).min(TIME_BIAS_MS / 2);
            let e = Entry {
                key,
                id: f.id,
                bytes: f.bytes,
                last_ms: now_ms - clamp(f.idle_ms),
                created_s: ((now_ms - clamp(f.age_ms)) / 1000) as u32,
                fin_seq: f.fin_seq,
                flags: f.flags,
                tunnel: f.tunnel,
                icmp_type: f.icmp_type,
                icmp_code: f.icmp_code,
                ..Entry::FREE
            };
            let i = eng.table.insert(e);
            eng.stats.built += 1;
            eng.arm(i, now_ms);
        }
        eng.next_id = snap.next_id.max(snap.flows.iter().map(|f| f.id.saturating_add(1)).max().unwrap_or(1));
        eng.stats.in_use = eng.table.len() as u64;
        eng.stats.most_used = snap.most_used.max(eng.stats.in_use);
        for t in 1..=eng.tunnels.len() as u16 {
            eng.tunnel_down(now, TunnelId(t));
        }
        Ok(eng)
    }

    /// holdfast extension for restarts: until `until`, a non-SYN TCP segment carried by a
    /// tunnel (`FromTunnel`/`ToTunnel`, never `Clear`) may build an established conn instead of
    /// being dropped `tcp-not-syn` — the ASA's loose mode after failover. It covers conns the
    /// last snapshot missed (a SIGKILL loses everything since the last periodic snapshot, or
    /// there is no snapshot at all). Call it right after `new`/`restore` with a short window
    /// (e.g. 2-5 minutes): long enough for senders' backed-off retransmissions to arrive.
    pub fn allow_pickup_until(&mut self, until: Instant) {
        self.pickup_until_ms = self.ms(until);
    }

    // -----------------------------------------------------------------------------------------
    // Copying the table out in bounded pieces
    //
    // `show conn` and the state-file snapshot are O(table). The daemon must not stop its data
    // path for that long (at 1 M conns, formatting took 0.6-1.1 s), so it copies the raw entries
    // a bounded slice of slots per lock hold ([`Engine::copy_conns`]), takes the small metadata
    // ([`Engine::table_meta`]) with the last slice, and formats or converts with the lock
    // released. The engine itself takes no lock (DESIGN.md): the caller decides where to release.

    /// Appends copies of the live entries among the next `max_slots` slab slots after `cursor`
    /// to `out` and advances `cursor`; returns `true` once the walk has passed the last slot.
    ///
    /// The work per call is bounded by `max_slots` (a slot is visited whether live or not), not
    /// by the table size. Between two calls the table may change: a conn never moves slot, so
    /// none is copied twice, but one built meanwhile in an already-visited slot is missed and
    /// one torn down after its slot was visited is still in the copy — the walk is not an
    /// atomic picture, as the ASA's `show conn` is not. So the raw copy can hold two conns
    /// with the same 5-tuple: one copied, then torn down, and the one built on the same tuple
    /// afterwards in a slot the walk had not reached. [`ConnCursor::dedupe_by_key`] removes
    /// the dead one (the lower id); call it once the walk is done, before listing or
    /// converting the copy ([`Engine::restore`] also keeps the higher id of a tuple). With no
    /// change in between, the copies are exactly [`Engine::conns`] / [`Engine::snapshot`]'s
    /// entries, in slab order.
    pub fn copy_conns(&self, cursor: &mut ConnCursor, max_slots: usize, out: &mut Vec<RawConn>) -> bool {
        cursor.first_new_id.get_or_insert(self.next_id);
        let end_slot = self.table.slots();
        let from = cursor.next.min(end_slot);
        let to = from.saturating_add(u32::try_from(max_slots.max(1)).unwrap_or(u32::MAX)).min(end_slot);
        out.extend((from..to).map(|i| self.table.get(i)).filter(|e| e.live).map(|e| RawConn(*e)));
        cursor.next = to;
        to >= end_slot
    }

    /// What converting [`RawConn`]s needs besides the entries: the clock origin, timeouts,
    /// interface and tunnel names, counters. Small (no per-conn data); take it under the same
    /// lock as the last [`Engine::copy_conns`] slice, so every name an entry refers to exists.
    pub fn table_meta(&self) -> TableMeta {
        TableMeta {
            epoch: self.epoch,
            timeouts: self.cfg.timeouts.clone(),
            ifcs: self.ifcs.clone(),
            tunnels: self.tunnels.iter().map(|t| t.name.clone()).collect(),
            stats: self.stats.clone(),
            next_id: self.next_id,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Internals

    fn ms(&self, now: Instant) -> u64 {
        engine_ms(self.epoch, now)
    }

    fn tunnel_state(&self, t: u16) -> Option<&TunnelState> {
        usize::from(t).checked_sub(1).and_then(|i| self.tunnels.get(i))
    }

    fn tunnel_state_mut(&mut self, t: u16) -> Option<&mut TunnelState> {
        usize::from(t).checked_sub(1).and_then(|i| self.tunnels.get_mut(i))
    }

    fn drop(&mut self, r: DropReason) -> Verdict {
        self.stats.drops[r.idx()] += 1;
        Verdict::Drop(r)
    }

    /// Mid-stream pickup: only inside the window, only for an ACK (no SYN, no RST) of a packet
    /// that a tunnel carries (authenticated by its SA), never for clear traffic.
    fn pickup_allowed(&self, now_ms: u64, tf: u8, route: Route) -> bool {
        now_ms < self.pickup_until_ms
            && tf & tcp_flags::ACK != 0
            && tf & (tcp_flags::SYN | tcp_flags::RST) == 0
            && route != Route::Clear
    }

    fn new_flow(&mut self, now_ms: u64, p: &Parsed, route: Route, tunnel_down: bool) -> Verdict {
        let mut flags = if p.from_outside { fl::INBOUND } else { 0 };
        let (mut ity, mut icode) = (0, 0);
        match p.kind {
            Kind::Tcp { flags: tf, .. } => {
                // Only a bare SYN may create a TCP conn (asa.md §5: the normalizer expects a SYN)...
                if tf & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST | tcp_flags::FIN) == tcp_flags::SYN {
                    flags |= if p.from_outside { fl::US | fl::LA | fl::UA | fl::B } else { fl::LS | fl::LA | fl::UA };
                } else if self.pickup_allowed(now_ms, tf, route) {
                    // ...except in the pickup window after a restart (the ASA's "loose mode after
                    // failover"): an established conn of a tunnel resumes mid-stream. Who opened
                    // it is unknown; the side with the higher port is taken as the client.
                    flags = fl::U;
                    if p.key.out_port > p.key.in_port {
                        flags |= fl::INBOUND;
                    }
                    if p.payload > 0 {
                        flags |= if p.from_outside { fl::I } else { fl::O };
                    }
                    self.stats.picked_up += 1;
                } else {
                    return self.drop(DropReason::TcpNotSyn);
                }
            }
            Kind::IcmpEchoReply => return self.drop(DropReason::InspectIcmpSeqNumNotMatched),
            Kind::IcmpError => return self.drop(DropReason::InspectIcmpErrorNoExistingConn),
            Kind::IcmpEchoRequest { ty, code } => {
                ity = ty;
                icode = code;
            }
            Kind::Udp | Kind::Other | Kind::Fragment => {}
        }
        if tunnel_down {
            // No SA: nothing leaves in clear, and no conn is built for it (the daemon's SPD
            // miss triggers IKE).
            return self.drop(DropReason::IpsecTunDown);
        }
        if self.table.len() >= self.cfg.max_flows {
            return self.drop(DropReason::ConnLimit);
        }
        let id = self.next_id;
        self.next_id += 1;
        let e = Entry {
            key: p.key,
            id,
            bytes: p.payload,
            last_ms: now_ms,
            created_s: (now_ms / 1000) as u32,
            flags,
            tunnel: route.tunnel(),
            icmp_type: ity,
            icmp_code: icode,
            ..Entry::FREE
        };
        let i = self.table.insert(e);
        self.arm(i, now_ms);
        self.stats.built += 1;
        self.stats.in_use += 1;
        self.stats.most_used = self.stats.most_used.max(self.stats.in_use);
        let info = self.info(i);
        self.events.push_back(Event::Built(info));
        Verdict::Forward
    }

    /// A packet of an existing conn that must go into a tunnel that is down.
    fn tunnel_down_packet(&mut self, i: u32, now_ms: u64, p: &Parsed, data: &[u8]) -> Verdict {
        let e = *self.table.get(i);
        if let Kind::Tcp { flags, .. } = p.kind {
            if flags & tcp_flags::RST != 0 {
                // The endpoint gave up: the conn is over even though the RST cannot be delivered.
                let reason = if p.from_outside { TeardownReason::TcpResetO } else { TeardownReason::TcpResetI };
                self.teardown(i, now_ms, reason);
                return self.drop(DropReason::IpsecTunDown);
            }
            // RFC 6069 applies to established connections only; ICMP during the handshake would
            // make connect() fail (tcp-resume.md).
            let established = e.flags & fl::U != 0 && e.flags & fl::HANDSHAKE == 0;
            if e.flags & fl::V != 0 && established {
                return self.hold(i, e.id, e.tunnel, now_ms, data);
            }
        }
        self.drop(DropReason::IpsecTunDown)
    }

    /// A packet into a suspended tunnel: an established TCP conn's data or ACK is held (and
    /// answered with rate-limited ICMP) exactly as while the tunnel is down, but nothing is
    /// torn down or flagged; everything else goes on as usual (`None`).
    fn suspended_packet(&mut self, i: u32, now_ms: u64, p: &Parsed, data: &[u8]) -> Option<Verdict> {
        let Kind::Tcp { flags, .. } = p.kind else { return None };
        let e = *self.table.get(i);
        let established = e.flags & fl::U != 0 && e.flags & fl::HANDSHAKE == 0;
        if !established || flags & (tcp_flags::RST | tcp_flags::SYN | tcp_flags::FIN) != 0 {
            return None;
        }
        self.stats.held_suspended += 1;
        Some(self.hold(i, e.id, e.tunnel, now_ms, data))
    }

    fn hold(&mut self, i: u32, id: ConnId, tunnel: u16, now_ms: u64, data: &[u8]) -> Verdict {
        let cap_flow = self.cfg.hold_max_bytes_per_flow;
        let cap_total = self.cfg.hold_max_bytes_total;
        let h = self.held.entry(i).or_insert_with(|| Held { id, tunnel, packet: Vec::new(), last_icmp_ms: None });
        if h.id != id {
            // Stale record of a reused slot (should not happen: teardown removes it).
            self.held_bytes -= h.packet.capacity();
            *h = Held { id, tunnel, packet: Vec::new(), last_icmp_ms: None };
        }
        // Keep the latest segment: it is the most useful one to replay (tcp-resume.md).
        let old_cap = h.packet.capacity();
        let fits_flow = data.len() <= cap_flow;
        let fits_total = self.held_bytes - old_cap + data.len().max(old_cap) <= cap_total;
        if fits_flow && fits_total {
            h.packet.clear();
            h.packet.reserve_exact(data.len());
            h.packet.extend_from_slice(data);
            self.held_bytes = self.held_bytes - old_cap + h.packet.capacity();
            self.stats.held += 1;
        } else {
            self.stats.hold_overflow += 1;
        }
        // ICMP rate limit: per flow, then global token bucket.
        let min_gap = self.cfg.icmp_min_interval.as_millis() as u64;
        let per_flow_ok = h.last_icmp_ms.is_none_or(|t| now_ms.saturating_sub(t) >= min_gap);
        let mut icmp = false;
        if per_flow_ok {
            let rate = u64::from(self.cfg.icmp_per_second);
            let elapsed = now_ms.saturating_sub(self.icmp_refill_ms);
            self.icmp_refill_ms = now_ms;
            self.icmp_tokens_milli = (self.icmp_tokens_milli + elapsed.saturating_mul(rate)).min(rate * 1000);
            if self.icmp_tokens_milli >= 1000 {
                self.icmp_tokens_milli -= 1000;
                icmp = true;
            }
        }
        if icmp {
            if let Some(h) = self.held.get_mut(&i) {
                h.last_icmp_ms = Some(now_ms);
            }
            self.stats.icmp_unreachable += 1;
        } else {
            self.stats.icmp_rate_limited += 1;
        }
        Verdict::Hold { icmp }
    }

    fn arm(&mut self, i: u32, now_ms: u64) {
        let e = self.table.get(i);
        if let Some(t) = self.timeout_ms(e) {
            // The wheel never arms at a processed tick, so an overdue deadline fires next tick.
            let _ = now_ms;
            let deadline = e.last_ms + t;
            self.wheel.arm(&mut self.table, i, deadline);
        }
    }

    fn timeout_ms(&self, e: &Entry) -> Option<u64> {
        entry_timeout_ms(&self.cfg.timeouts, e)
    }

    fn expiry_reason(&self, e: &Entry) -> TeardownReason {
        if e.key.proto == proto::TCP {
            if e.flags & fl::TIMEWAIT != 0 {
                return TeardownReason::TcpFins;
            }
            if e.flags & fl::HANDSHAKE != 0 {
                return TeardownReason::SynTimeout;
            }
            if e.flags & (fl::LF | fl::UF) != 0 {
                return TeardownReason::FinTimeout;
            }
        }
        TeardownReason::ConnTimeout
    }

    fn teardown(&mut self, i: u32, now_ms: u64, reason: TeardownReason) {
        self.wheel.unlink(&mut self.table, i);
        let conn = self.info(i);
        let e = self.table.remove(i);
        if let Some(h) = self.held.remove(&i) {
            self.held_bytes -= h.packet.capacity();
        }
        self.stats.torn_down += 1;
        self.stats.in_use -= 1;
        if reason == TeardownReason::TunnelTornDown {
            self.stats.flows_tunnel_torn_down += 1;
        }
        let secs = (now_ms / 1000).saturating_sub(u64::from(e.created_s));
        self.events.push_back(Event::Teardown { conn, duration: Duration::from_secs(secs), bytes: e.bytes, reason });
    }

    fn info(&self, i: u32) -> ConnInfo {
        entry_info(self.table.get(i))
    }

    fn record(&self, i: u32, now_ms: u64) -> ConnRecord {
        entry_record(&self.cfg.timeouts, self.table.get(i), now_ms)
    }

    /// Checks the table's internal invariants (tests and debug builds).
    #[cfg(test)]
    fn check_invariants(&self) {
        let live: Vec<u32> = self.table.live().collect();
        assert_eq!(live.len(), self.table.len());
        assert_eq!(self.table.index_len(), self.table.len());
        assert_eq!(self.stats.in_use as usize, self.table.len());
        assert_eq!(self.stats.built - self.stats.torn_down, self.stats.in_use);
        assert!(self.stats.most_used >= self.stats.in_use);
        let mut ids = std::collections::HashSet::new();
        let mut armed = 0;
        for &i in &live {
            let e = self.table.get(i);
            assert_eq!(self.table.find(&e.key), Some(i));
            assert!(ids.insert(e.id), "duplicate conn id");
            if e.armed != NIL {
                armed += 1;
            } else {
                assert!(self.timeout_ms(e).is_none(), "flow with a timeout is not in the wheel");
            }
            if e.flags & fl::V != 0 {
                assert!(!self.tunnel_is_up(TunnelId(e.tunnel)), "V on a flow whose tunnel is up");
            }
        }
        assert_eq!(self.wheel.count(&self.table), armed);
        let held: usize = self.held.values().map(|h| h.packet.capacity()).sum();
        assert_eq!(held, self.held_bytes);
        assert!(self.held_bytes <= self.cfg.hold_max_bytes_total.max(self.cfg.hold_max_bytes_per_flow));
        for (i, h) in &self.held {
            let e = self.table.get(*i);
            assert!(e.live && e.id == h.id && e.tunnel == h.tunnel);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Entry conversions, shared by the engine and by copies of its table (`TableMeta`)

/// Engine milliseconds of `now` (see [`TIME_BIAS_MS`]).
fn engine_ms(epoch: Instant, now: Instant) -> u64 {
    let d = now.saturating_duration_since(epoch);
    TIME_BIAS_MS + u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

fn entry_timeout_ms(t: &Timeouts, e: &Entry) -> Option<u64> {
    let d = match e.key.proto {
        proto::TCP => {
            if e.flags & fl::TIMEWAIT != 0 {
                Some(TIMEWAIT)
            } else if e.flags & fl::HANDSHAKE != 0 {
                Some(SYN_TIMEOUT)
            } else if e.flags & (fl::LF | fl::UF) != 0 {
                t.half_closed
            } else {
                t.conn
            }
        }
        proto::UDP => t.udp,
        proto::ICMP => Some(t.icmp),
        _ => t.conn,
    };
    d.map(|d| d.as_millis() as u64)
}

fn entry_info(e: &Entry) -> ConnInfo {
    let k = e.key;
    ConnInfo {
        id: e.id,
        protocol: k.proto,
        inbound: e.flags & fl::INBOUND != 0,
        outside: Endpoint { ifc: IfcId(k.ifc_out), addr: Ipv4Addr::from(k.out_ip), port: k.out_port },
        inside: Endpoint { ifc: IfcId(k.ifc_in), addr: Ipv4Addr::from(k.in_ip), port: k.in_port },
        icmp_type: e.icmp_type,
        icmp_code: e.icmp_code,
        tunnel: (e.tunnel != 0).then_some(TunnelId(e.tunnel)),
    }
}

fn entry_record(t: &Timeouts, e: &Entry, now_ms: u64) -> ConnRecord {
    ConnRecord {
        info: entry_info(e),
        flags: flag_letters(e.flags & !fl::INBOUND),
        bytes: e.bytes,
        idle: Duration::from_millis(now_ms.saturating_sub(e.last_ms)),
        uptime: Duration::from_secs((now_ms / 1000).saturating_sub(u64::from(e.created_s))),
        timeout: entry_timeout_ms(t, e).map(Duration::from_millis),
    }
}

fn entry_flow_record(e: &Entry, now_ms: u64) -> FlowRecord {
    let k = e.key;
    FlowRecord {
        id: e.id,
        protocol: k.proto,
        ifc_out: k.ifc_out,
        ifc_in: k.ifc_in,
        out_addr: Ipv4Addr::from(k.out_ip),
        out_port: k.out_port,
        in_addr: Ipv4Addr::from(k.in_ip),
        in_port: k.in_port,
        bytes: e.bytes,
        age_ms: now_ms.saturating_sub(u64::from(e.created_s) * 1000),
        idle_ms: now_ms.saturating_sub(e.last_ms),
        flags: e.flags,
        tunnel: e.tunnel,
        fin_seq: e.fin_seq,
        icmp_type: e.icmp_type,
        icmp_code: e.icmp_code,
    }
}

/// Updates a TCP conn's flags for one forwarded segment; returns a teardown reason if the
/// segment ends the conn.
fn tcp_update(e: &mut Entry, from_outside: bool, flags: u8, seq: u32, ack: u32, payload: u32) -> Option<TeardownReason> {
    if flags & tcp_flags::RST != 0 {
        return Some(if from_outside { TeardownReason::TcpResetO } else { TeardownReason::TcpResetI });
    }
    let syn = flags & tcp_flags::SYN != 0;
    let ackf = flags & tcp_flags::ACK != 0;
    let inbound = e.flags & fl::INBOUND != 0;
    let initiator = from_outside == inbound;
    if e.flags & fl::HANDSHAKE != 0 {
        if syn && ackf && !initiator {
            // The responder's SYN/ACK: its SYN is seen and it acknowledges the initiator's SYN.
            e.flags &= if from_outside { !(fl::LS | fl::LA) } else { !(fl::US | fl::UA) };
        } else if !syn && ackf && initiator && e.flags & (fl::LS | fl::US) == 0 {
            // The initiator acknowledges the responder's SYN.
            e.flags &= if from_outside { !fl::LA } else { !fl::UA };
        }
        if e.flags & fl::HANDSHAKE == 0 {
            e.flags |= fl::U;
        }
    }
    if payload > 0 {
        e.flags |= if from_outside { fl::I } else { fl::O };
    }
    // FINs and their acknowledgements (a FIN occupies sequence number seq + payload).
    // Index 0 = inside, 1 = outside; `f`/`F` = that side's FIN, `r`/`R` = that side acked the
    // other side's FIN.
    let (me, peer, my_fin, peer_fin, my_ack_of_fin) =
        if from_outside { (1, 0, fl::UF, fl::LF, fl::UR) } else { (0, 1, fl::LF, fl::UF, fl::LR) };
    if flags & tcp_flags::FIN != 0 && e.flags & my_fin == 0 {
        e.flags |= my_fin;
        e.fin_seq[me] = seq.wrapping_add(payload);
    }
    if ackf && e.flags & peer_fin != 0 && e.flags & my_ack_of_fin == 0 && seq_ge(ack, e.fin_seq[peer].wrapping_add(1)) {
        e.flags |= my_ack_of_fin;
    }
    if e.flags & (fl::LF | fl::UF | fl::LR | fl::UR) == (fl::LF | fl::UF | fl::LR | fl::UR) {
        return Some(TeardownReason::TcpFins);
    }
    None
}

fn seq_ge(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

/// Does a tunnel with these selectors cover the conn (inside endpoint local, outside remote)?
fn covers(k: &Key, local: &[TrafficSelector], remote: &[TrafficSelector]) -> bool {
    let m = |ts: &TrafficSelector, ip: u32, port: u16| {
        (ts.protocol == 0 || ts.protocol == k.proto)
            && ts.contains_addr(Ipv4Addr::from(ip))
            && (k.proto == proto::ICMP || (ts.start_port <= port && port <= ts.end_port))
    };
    local.iter().any(|l| m(l, k.in_ip, k.in_port)) && remote.iter().any(|r| m(r, k.out_ip, k.out_port))
}

#[inline(always)]
fn parse(dir: Dir, ifcs: IfcPair, data: &[u8]) -> Result<Parsed, DropReason> {
    let ip = Ipv4Packet::new_checked(data).map_err(|e| match e {
        WireError::BadTotalLen | WireError::Truncated => DropReason::InvalidIpLength,
        _ => DropReason::InvalidIpHeader,
    })?;
    let from_outside = dir == Dir::Inbound;
    let (src, dst) = (u32::from(ip.src()), u32::from(ip.dst()));
    let protocol = ip.protocol();
    let mut key = Key { proto: protocol, ifc_out: ifcs.outside.0, ifc_in: ifcs.inside.0, ..Key::default() };
    // (src port, dst port) placed by direction.
    let place = |key: &mut Key, sp: u16, dp: u16| {
        if from_outside {
            (key.out_ip, key.out_port, key.in_ip, key.in_port) = (src, sp, dst, dp);
        } else {
            (key.in_ip, key.in_port, key.out_ip, key.out_port) = (src, sp, dst, dp);
        }
    };
    if ip.frag_offset() != 0 {
        place(&mut key, 0, 0);
        return Ok(Parsed { key, from_outside, payload: 0, kind: Kind::Fragment });
    }
    let l4 = ip.payload();
    let (payload, kind) = match protocol {
        proto::TCP => {
            let t = TcpPacket::new_checked(l4).map_err(|_| DropReason::InvalidTcpHdrLength)?;
            place(&mut key, t.src_port(), t.dst_port());
            (t.payload().len(), Kind::Tcp { flags: t.flags(), seq: t.seq(), ack: t.ack() })
        }
        proto::UDP => {
            let u = UdpPacket::new_checked(l4).map_err(|_| DropReason::InvalidUdpLength)?;
            place(&mut key, u.src_port(), u.dst_port());
            (u.payload().len(), Kind::Udp)
        }
        proto::ICMP => {
            let c = IcmpPacket::new_checked(l4).map_err(|_| DropReason::InvalidIpLength)?;
            let body = c.data().len();
            match c.msg_type() {
                // Echo (RFC 792): the requester's side carries the identifier, the other 0.
                8 => {
                    place(&mut key, c.echo_ident(), 0);
                    (body, Kind::IcmpEchoRequest { ty: 8, code: c.code() })
                }
                0 => {
                    place(&mut key, 0, c.echo_ident());
                    (body, Kind::IcmpEchoReply)
                }
                t if c.is_error() || t == 4 => {
                    // The quoted packet travelled the other way; its conn is ours.
                    let back = if from_outside { Dir::Outbound } else { Dir::Inbound };
                    let inner = quoted_key(back, ifcs, c.data()).ok_or(DropReason::InspectIcmpErrorNoExistingConn)?;
                    return Ok(Parsed { key: inner, from_outside, payload: 0, kind: Kind::IcmpError });
                }
                t => {
                    // Other informational ICMP: one conn per address pair and type.
                    place(&mut key, u16::from(t), 0);
                    (body, Kind::IcmpEchoRequest { ty: t, code: c.code() })
                }
            }
        }
        _ => {
            place(&mut key, 0, 0);
            (l4.len(), Kind::Other)
        }
    };
    Ok(Parsed { key, from_outside, payload: payload as u64, kind })
}

/// Key of the packet quoted in an ICMP error: its IPv4 header plus the first 8 bytes of L4
/// (RFC 792), which hold the ports or the echo identifier.
fn quoted_key(dir: Dir, ifcs: IfcPair, q: &[u8]) -> Option<Key> {
    let b0 = *q.first()?;
    if b0 >> 4 != 4 {
        return None;
    }
    let hl = usize::from(b0 & 0x0f) * 4;
    if hl < 20 {
        return None;
    }
    let h = q.get(..hl)?;
    let l4 = q.get(hl..hl + 8)?;
    let protocol = h[9];
    let src = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
    let dst = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
    let (sp, dp) = match protocol {
        proto::TCP | proto::UDP => (u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]])),
        proto::ICMP => {
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            match l4[0] {
                8 => (id, 0),
                0 => (0, id),
                _ => return None,
            }
        }
        _ => (0, 0),
    };
    let mut k = Key { proto: protocol, ifc_out: ifcs.outside.0, ifc_in: ifcs.inside.0, ..Key::default() };
    if dir == Dir::Inbound {
        (k.out_ip, k.out_port, k.in_ip, k.in_port) = (src, sp, dst, dp);
    } else {
        (k.in_ip, k.in_port, k.out_ip, k.out_port) = (src, sp, dst, dp);
    }
    Some(k)
}

// ---------------------------------------------------------------------------------------------
// Copies of the table (see `Engine::copy_conns`)

/// Where a chunked walk of the table ([`Engine::copy_conns`]) resumes: a slab position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnCursor {
    next: u32,
    /// The engine's next conn id when the walk took its first slice: every conn with a lower
    /// id existed before the walk began (ids only grow).
    first_new_id: Option<ConnId>,
}

impl ConnCursor {
    /// A walk from the first slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Removes from `conns`, a copy taken with this cursor, every conn whose 5-tuple (and
    /// interface pair) appears again with a higher id, keeping the order of the rest. A walk
    /// can copy a conn, and then, after it is torn down and built again on the same tuple in a
    /// slot not yet visited, copy its successor too; ids only grow, so the higher id is the
    /// live one. Only a conn built during the walk (id at or above the engine's next id when
    /// the walk began) can be such a successor, so the work beyond one pass over `conns` is a
    /// map of those conns' keys; a cursor that never walked treats every conn as one.
    pub fn dedupe_by_key(&self, conns: &mut Vec<RawConn>) {
        let from = self.first_new_id.unwrap_or(0);
        let mut newest: HashMap<Key, ConnId> = HashMap::new();
        for c in conns.iter().filter(|c| c.0.id >= from) {
            let id = newest.entry(c.0.key).or_insert(c.0.id);
            *id = (*id).max(c.0.id);
        }
        if !newest.is_empty() {
            conns.retain(|c| newest.get(&c.0.key).is_none_or(|&id| c.0.id >= id));
        }
    }

    /// Whether `c`, copied with this cursor, was built after the walk took its first slice (a
    /// cursor that never walked counts every conn as one, as [`ConnCursor::dedupe_by_key`]).
    pub fn built_during_walk(&self, c: &RawConn) -> bool {
        c.0.id >= self.first_new_id.unwrap_or(0)
    }

    /// Adds to `tally` the conns of `slice`, just copied with this cursor, that the count of
    /// preserved conns needs (see [`PreservedTally`]). Call it after each
    /// [`Engine::copy_conns`] with the lock released: it only filters and copies keys.
    pub fn tally_preserved(&self, slice: &[RawConn], tally: &mut PreservedTally) {
        let old_preserved = |c: &&RawConn| c.is_preserved() && !self.built_during_walk(c);
        let n = slice.iter().filter(old_preserved).count();
        if n > 0 {
            // Sized exactly (`into_boxed_slice` then does not reallocate): the keys of a 1 M
            // flow table cost 16 B each, with no doubling growth of one big vector.
            let mut keys = Vec::with_capacity(n);
            keys.extend(slice.iter().filter(old_preserved).map(|c| c.0.key));
            tally.old_keys.push(keys.into_boxed_slice());
            tally.old += n as u64;
        }
        tally.built.extend(slice.iter().filter(|c| self.built_during_walk(c)).map(|c| (c.0.key, c.0.id, c.is_preserved())));
    }
}

// The memory claim of `PreservedTally` (16 B per preserved conn) rests on this size.
const _: () = assert!(std::mem::size_of::<Key>() == 16);

/// The number of preserved conns (`V`) over a walk of the table in slices
/// ([`ConnCursor::tally_preserved`] after each slice, [`PreservedTally::count`] at the end),
/// by the rule the listings follow ([`ConnCursor::dedupe_by_key`]): a 5-tuple closed and
/// rebuilt during the walk is counted once, as its live (higher-id) conn, and not at all if
/// that conn is not preserved.
///
/// Why this keeps so little: only a conn built during the walk can be the successor of
/// another on its tuple (ids only grow), and any such conn has a higher id than every conn
/// that existed before the walk. So a pre-walk preserved conn drops out of the count exactly
/// when a conn built during the walk has its key, whatever that conn's id, and the check needs
/// only the pre-walk conn's key (16 B, compared exactly: no hash, so no collision can change
/// the count), not its 64-byte entry. Conns built during the walk (few: those the traffic
/// builds while the walk runs, in slots ahead of the cursor) keep key, id and flag.
#[derive(Debug, Default)]
pub struct PreservedTally {
    /// Keys of the preserved conns that existed before the walk, one exactly-sized block per
    /// slice.
    old_keys: Vec<Box<[Key]>>,
    /// How many keys `old_keys` holds: the count when no conn was built during the walk.
    old: u64,
    /// Every conn built during the walk: key, id, preserved.
    built: Vec<(Key, ConnId, bool)>,
}

impl PreservedTally {
    /// The preserved conns of the finished walk, each 5-tuple counted once.
    pub fn count(&self) -> u64 {
        if self.built.is_empty() {
            return self.old;
        }
        let mut newest: HashMap<Key, ConnId> = HashMap::with_capacity(self.built.len());
        for &(key, id, _) in &self.built {
            let n = newest.entry(key).or_insert(id);
            *n = (*n).max(id);
        }
        // A built conn counts if it is its tuple's newest and preserved; a pre-walk one if no
        // conn built during the walk took its tuple.
        let built = self.built.iter().filter(|&&(key, id, v)| v && newest.get(&key) == Some(&id)).count() as u64;
        let superseded = self.old_keys.iter().flat_map(|b| b.iter()).filter(|k| newest.contains_key(k)).count() as u64;
        self.old - superseded + built
    }
}

/// One conn exactly as the table held it when copied (a 64-byte memcpy of its entry). Convert it
/// with [`TableMeta::record`] (`show conn`) or [`TableMeta::snapshot`] (state file).
#[derive(Debug, Clone, Copy)]
pub struct RawConn(Entry);

/// A free slot's contents (not a conn): lets a caller fill a reusable buffer before taking the
/// lock, so that the copy under the lock writes to memory already faulted in.
impl Default for RawConn {
    fn default() -> Self {
        RawConn(Entry::FREE)
    }
}

impl RawConn {
    pub fn id(&self) -> ConnId {
        self.0.id
    }

    /// Whether one endpoint is `addr` (`show conn address IP`).
    pub fn involves(&self, addr: Ipv4Addr) -> bool {
        let a = u32::from(addr);
        self.0.key.out_ip == a || self.0.key.in_ip == a
    }

    /// Preserved while its tunnel is down (the `V` flag).
    pub fn is_preserved(&self) -> bool {
        self.0.flags & fl::V != 0
    }
}

/// The engine's small state that goes with a copy of its entries (see [`Engine::table_meta`]).
#[derive(Debug, Clone)]
pub struct TableMeta {
    epoch: Instant,
    timeouts: Timeouts,
    ifcs: Vec<String>,
    tunnels: Vec<String>,
    stats: Stats,
    next_id: ConnId,
}

impl TableMeta {
    /// The counters when the meta was taken (with the walk's last slice).
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// `show conn`'s header for a listing of `conns`, the whole copy taken with this meta
    /// (deduplicated, before any address filter): `in use` is the number of conns in the copy.
    ///
    /// Why not the engine's counter: the ASA prints its header and rows from one moment, but a
    /// copy taken in slices has no such moment. A conn built in a slot the walk had passed is
    /// not in the copy and one torn down after its slot was copied still is, so a counter read
    /// at the walk's end (or at its start) can disagree with the rows by as many conns as
    /// changed meanwhile (the end read said `3 in use` over 4 rows). Counting the copy keeps
    /// the header and the unfiltered listing's rows equal, and it is the engine's counter
    /// whenever nothing changed during the walk. `most used` is the engine's high-water mark at
    /// the last slice. The copy can hold conns that never existed at once (one torn down after
    /// it was copied, another built ahead of the cursor), but not more than the slab's slots
    /// (one conn per slot visited), and the slab only grows past its end when every slot is
    /// live, so the count never exceeds the mark; the `max` keeps the header from saying more
    /// are in use than most used should the slab's allocation ever change.
    pub fn listed_counts(&self, conns: &[RawConn]) -> ConnCounts {
        let in_use = conns.len() as u64;
        ConnCounts { in_use, most_used: self.stats.most_used.max(in_use) }
    }

    /// As [`Engine::interface_name`].
    pub fn interface_name(&self, ifc: IfcId) -> &str {
        self.ifcs.get(usize::from(ifc.0)).map(String::as_str).unwrap_or("?")
    }

    /// As [`Engine::tunnel_name`].
    pub fn tunnel_name(&self, t: TunnelId) -> &str {
        usize::from(t.0).checked_sub(1).and_then(|i| self.tunnels.get(i)).map(String::as_str).unwrap_or("?")
    }

    /// The `show conn` record of a copied conn at `now`, as [`Engine::conns`] gives it (with the
    /// timeouts in force when the meta was taken).
    pub fn record(&self, now: Instant, c: &RawConn) -> ConnRecord {
        entry_record(&self.timeouts, &c.0, engine_ms(self.epoch, now))
    }

    /// The snapshot of copied conns at `now`, as [`Engine::snapshot`] builds it: same format,
    /// same order for the same entries, so [`Engine::restore`] reads it (and old files) alike.
    /// The tunnel and interface lists were taken after every entry was copied, and the engine
    /// only ever appends to them, so each flow's indices are in range.
    pub fn snapshot(&self, now: Instant, conns: &[RawConn]) -> Snapshot {
        let now_ms = engine_ms(self.epoch, now);
        Snapshot {
            version: SNAPSHOT_VERSION,
            next_id: self.next_id,
            most_used: self.stats.most_used,
            interfaces: self.ifcs.clone(),
            tunnels: self.tunnels.clone(),
            flows: conns.iter().map(|c| entry_flow_record(&c.0, now_ms)).collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshot format

pub const SNAPSHOT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub next_id: ConnId,
    pub most_used: u64,
    pub interfaces: Vec<String>,
    /// Tunnel names; a flow's `tunnel` is 1 + an index here (0 = clear).
    pub tunnels: Vec<String>,
    pub flows: Vec<FlowRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    pub id: ConnId,
    pub protocol: u8,
    pub ifc_out: u8,
    pub ifc_in: u8,
    pub out_addr: Ipv4Addr,
    pub out_port: u16,
    pub in_addr: Ipv4Addr,
    pub in_port: u16,
    pub bytes: u64,
    pub age_ms: u64,
    pub idle_ms: u64,
    pub flags: u16,
    pub tunnel: u16,
    pub fin_seq: [u32; 2],
    pub icmp_type: u8,
    pub icmp_code: u8,
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod preserved_tally_tests {
    // A test's clock origin; the engine still takes every `now` as a parameter.
    #![allow(clippy::disallowed_methods)]
    use super::*;
    use crate::tests::{tcp, SYN};

    /// Builds the SYN of inside 10.1.`host / 256`.`host % 256`:40000 -> 10.2.0.9:80 through
    /// `route` (a conn preserved when its tunnel drops).
    fn syn(e: &mut Engine, now: Instant, ifcs: IfcPair, route: Route, host: u16) {
        let src = format!("10.1.{}.{}", host / 256, host % 256);
        let v = e.handle_packet(now, Dir::Outbound, ifcs, route, &tcp(&src, 40000, "10.2.0.9", 80, SYN, 1, 0, b""));
        assert_eq!(v, Verdict::Forward);
    }

    /// The tally counts what the deduplicated copy of the same walk holds preserved, under
    /// churn between slices: conns cleared and rebuilt on their tuple ahead of the cursor, in
    /// clear (not preserved: the pre-walk one must drop out of the count) or through the
    /// tunnel and preserved again (counted once), rebuilt twice, new tuples, the tunnel
    /// coming up (flags cleared) and down. Both counts come from one walk's slices, so they
    /// must agree exactly; the explicit cases pin the rule itself.
    #[test]
    fn tally_matches_the_deduplicated_copy() {
        let now = Instant::now();
        let mut cfg = Config::default();
        cfg.sysopt.preserve_vpn_flows = true;
        let setup = || {
            let mut e = Engine::new(now, cfg.clone());
            let ifcs = IfcPair { outside: e.interface("outside").unwrap(), inside: e.interface("inside").unwrap() };
            let t = e.tunnel("MAP:20").unwrap();
            e.tunnel_up(now, t, &[], &[]);
            for host in 1..=40u16 {
                syn(&mut e, now, ifcs, Route::ToTunnel(t), host);
            }
            e.tunnel_down(now, t);
            while e.poll_event().is_some() {}
            (e, ifcs, t)
        };
        let walk = |e: &mut Engine, slots: usize, between: &mut dyn FnMut(&mut Engine, usize)| {
            let mut cur = ConnCursor::new();
            let mut tally = PreservedTally::default();
            let mut copy = Vec::new();
            let mut slice = Vec::new();
            let mut step = 0;
            loop {
                slice.clear();
                let done = e.copy_conns(&mut cur, slots, &mut slice);
                cur.tally_preserved(&slice, &mut tally);
                copy.extend_from_slice(&slice);
                if done {
                    break;
                }
                between(e, step);
                step += 1;
            }
            cur.dedupe_by_key(&mut copy);
            (tally.count(), copy.iter().filter(|c| c.is_preserved()).count() as u64, copy.len())
        };
        let clear = |e: &mut Engine, host: u16| {
            assert_eq!(e.clear_conn(now, Some(Ipv4Addr::new(10, 1, (host / 256) as u8, (host % 256) as u8))), 1);
        };

        // Nothing changes: every conn is preserved and counted.
        let (mut e, _, _) = setup();
        assert_eq!(walk(&mut e, 7, &mut |_, _| {}), (40, 40, 40));

        // Host 1 (slot 0, copied by the first slice) rebuilt in clear beyond the cursor (a
        // filler takes slot 0): its live conn is not preserved, so 39.
        let (mut e, ifcs, _) = setup();
        let (n, listed, _) = walk(&mut e, 1, &mut |e, step| {
            if step == 0 {
                clear(e, 1);
                syn(e, now, ifcs, Route::Clear, 500);
                syn(e, now, ifcs, Route::Clear, 1);
            }
        });
        assert_eq!((n, listed), (39, 39));

        // Rebuilt through the tunnel and preserved again: counted once, 40.
        let (mut e, ifcs, t) = setup();
        let (n, listed, _) = walk(&mut e, 1, &mut |e, step| {
            if step == 0 {
                clear(e, 1);
                syn(e, now, ifcs, Route::Clear, 500);
                e.tunnel_up(now, t, &[], &[]);
                syn(e, now, ifcs, Route::ToTunnel(t), 1);
                e.tunnel_down(now, t);
                while e.poll_event().is_some() {}
            }
        });
        assert_eq!((n, listed), (40, 40));

        // Pseudo-random churn, many seeds and slice sizes.
        for seed in 1..=40u64 {
            for slots in [1, 3, 16] {
                let (mut e, ifcs, t) = setup();
                let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let mut next = move |m: u64| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x % m
                };
                let (n, listed, len) = walk(&mut e, slots, &mut |e, _| {
                    for _ in 0..next(3) {
                        let host = 1 + next(60) as u16;
                        let ip = Ipv4Addr::new(10, 1, (host / 256) as u8, (host % 256) as u8);
                        if e.clear_conn(now, Some(ip)) == 0 || next(2) == 0 {
                            // Filler first (sometimes) so the rebuild lands ahead of the cursor.
                            if next(2) == 0 {
                                syn(e, now, ifcs, Route::Clear, 300 + next(200) as u16);
                            }
                            if next(2) == 0 {
                                syn(e, now, ifcs, Route::Clear, host);
                            } else {
                                e.tunnel_up(now, t, &[], &[]);
                                syn(e, now, ifcs, Route::ToTunnel(t), host);
                                e.tunnel_down(now, t);
                                while e.poll_event().is_some() {}
                            }
                        }
                    }
                });
                assert_eq!(n, listed, "seed {seed}, {slots} slots, {len} listed");
            }
        }
    }
}
