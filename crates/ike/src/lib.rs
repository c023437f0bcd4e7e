//! IKEv2 (RFC 7296) as a sans-IO engine.
//!
//! The daemon feeds datagrams, commands and timeouts in, and drains transmits and events out:
//!
//! ```text
//! endpoint.handle_datagram(now, path, data)?;   // or handle_command / handle_timeout
//! while let Some(t) = endpoint.poll_transmit() { send(t) }
//! while let Some(e) = endpoint.poll_event() { install/remove SAs, log }
//! let next_wakeup = endpoint.poll_timeout();
//! ```
//!
//! Time is always a parameter; randomness comes from the `crypto::Random` passed in, so a whole
//! negotiation can be replayed from a seed.
//!
//! Coverage (RFC 7296 unless noted): IKE_SA_INIT with NAT detection (§2.23, float to 4500),
//! cookies under load (§2.6), INVALID_KE_PAYLOAD retry, IKEV2_FRAGMENTATION (RFC 7383, both
//! directions); IKE_AUTH with pre-shared keys (§2.15), ID_IPV4_ADDR/ID_IPV6_ADDR identities and
//! INITIAL_CONTACT (§2.4); CHILD_SAs from the tunnel's selectors with responder narrowing (§2.9);
//! AES-GCM-16 (RFC 5282) and AES-CBC with HMAC-SHA1/SHA2 for IKE and ESP; CREATE_CHILD_SA rekey of
//! CHILD_SAs (with PFS) and of the IKE SA (§1.3, §2.18), simultaneous rekeys (§2.8.1, §2.25);
//! INFORMATIONAL liveness checks and Delete; retransmission with a window of one (§2.1-§2.3).
//! Several tunnels (crypto map entries) to one peer share that peer's IKE SA, one CHILD_SA each.
//! Certificate signatures (RSA, ECDSA, RFC 7427) per direction when the daemon hands over the
//! tunnel's [`cert_auth::CertAuth`] (`Endpoint::set_cert_auth`) and a wall clock
//! (`Endpoint::set_wall_clock`); otherwise pre-shared keys.
//! Not covered: EAP, MOBIKE, configuration payloads, transport mode.

pub mod cert_auth;
mod endpoint;
mod error;
mod keys;
mod proposal;
mod ts;

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use endpoint::{Endpoint, Reconfigured, KNOCK_INTERVAL};
pub use error::Drop;
pub use proposal::{EspSuite, IkeSuite};

/// The UDP 4-tuple a message travelled on. `local.port()` is 500 or 4500; the daemon prepends
/// the 4-byte non-ESP marker (RFC 3948 §2.2) when it is 4500.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Path {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// A datagram to send (without the non-ESP marker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub path: Path,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Bring up the tunnel (no-op if an IKE SA for it exists or is being negotiated).
    Initiate { tunnel: String },
    /// `clear crypto ikev2 sa [IP]`: delete IKE SAs (and their children) with an INFORMATIONAL.
    ClearIkeSa { peer: Option<IpAddr> },
    /// `clear crypto ipsec sa [peer IP]`: delete CHILD_SAs.
    ClearChildSas { peer: Option<IpAddr> },
    /// Traffic totals of a CHILD_SA (by inbound SPI), so kilobyte lifetimes trigger a rekey.
    ChildSaBytes { spi_in: u32, bytes: u64 },
    /// ESP arrived on this SA: the peer is alive, no liveness check needed.
    InboundActivity { spi_in: u32 },
    /// Traffic suggests the path to the tunnel's peer may be broken (we send, nothing comes
    /// back): check liveness now (RFC 7296 §2.4) rather than after the idle threshold. If a
    /// request is already outstanding it is sent again (at most every `KNOCK_INTERVAL`,
    /// without counting as a retransmission). `Endpoint::last_heard` tells when the peer
    /// answered.
    CheckLiveness { tunnel: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// Install inbound first, then switch outbound (unless `outbound_now` is false).
    ChildSaUp(ChildSaUp),
    /// Switch the tunnel's outbound traffic to this CHILD_SA now (follows a `ChildSaUp` with
    /// `outbound_now: false`).
    ChildSaOutbound { tunnel: String, spi_in: u32 },
    /// Drop outbound now, inbound after a few seconds.
    ChildSaDown { tunnel: String, spi_in: u32, spi_out: u32, reason: DownReason },
    IkeSaUp { tunnel: String, peer: IpAddr, initiator: bool, spi_i: u64, spi_r: u64 },
    IkeSaDown { tunnel: String, peer: IpAddr, reason: DownReason },
    /// The IKE SA was rekeyed (RFC 7296 §2.18): the children now live under the new SPIs. No
    /// `IkeSaDown` is emitted for the replaced SA. Sent after the `IkeSaUp` of the new SA.
    IkeSaRekeyed { tunnel: String, peer: IpAddr, old_spi_i: u64, old_spi_r: u64, new_spi_i: u64, new_spi_r: u64 },
    /// A negotiation we took part in failed before the IKE SA was up (for syslog).
    IkeNegotiationFailed { tunnel: String, peer: IpAddr, reason: String },
    /// The IKE SA is up but a CHILD_SA could not be created (peer refused proposal/selectors).
    ChildSaFailed { tunnel: String, peer: IpAddr, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildSaUp {
    pub tunnel: String,
    pub peer: IpAddr,
    pub local: IpAddr,
    pub inbound: esp::SaParams,
    pub outbound: esp::SaParams,
    pub encap: esp::Encap,
    pub local_ts: Vec<policy::TrafficSelector>,
    pub remote_ts: Vec<policy::TrafficSelector>,
    /// Some(old inbound SPI) when this SA replaces another one (rekey).
    pub replaces_spi_in: Option<u32>,
    pub initiator: bool,
    pub msg_id: u32,
    pub lifetime: Duration,
    pub lifetime_kilobytes: Option<u64>,
    /// Send on `outbound` at once. `false` for the responder of a CHILD_SA rekey: the initiator
    /// installs the new inbound SA only when our response reaches it, so until then (its Delete
    /// of the replaced SA, ESP arriving on the new SA, or at most ~2 s) keep sending on the
    /// replaced SA; [`Event::ChildSaOutbound`] says when to switch.
    pub outbound_now: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownReason {
    /// Deleted by an administrator command on this side.
    Cleared,
    /// The peer sent a Delete.
    PeerDeleted,
    /// Retransmissions / liveness checks went unanswered.
    PeerDead,
    /// Replaced by a rekeyed SA.
    Rekeyed,
    /// Hard lifetime reached without a successful rekey.
    Expired,
    /// The peer announced INITIAL_CONTACT: it lost its state (RFC 7296 §2.4).
    PeerRestarted,
    /// A collision left this SA redundant (RFC 7296 §2.8.1).
    Redundant,
}

/// From [`Endpoint::poll_encap_change`]: the peer moved (NAT rebinding); send the ESP of these
/// CHILD_SAs (by inbound SPI) with this encapsulation to `peer` from now on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncapChange {
    pub tunnel: String,
    pub peer: SocketAddr,
    pub spi_in: Vec<u32>,
    pub encap: esp::Encap,
}

/// Why `poll_timeout` wants a wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimerReason {
    Retransmit,
    Liveness,
    RekeyChild,
    RekeyIke,
    Expire,
    Reinitiate,
    HalfOpenTimeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IkeStatus {
    Ready,
    Negotiating,
    Deleting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Initiator,
    Responder,
}

/// What `show crypto ikev2 sa [detail]` prints about one IKE SA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IkeSaInfo {
    pub tunnel: String,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub status: IkeStatus,
    pub role: Role,
    pub spi_i: u64,
    pub spi_r: u64,
    /// `None` while IKE_SA_INIT is still in flight.
    pub suite: Option<IkeSuite>,
    /// Configured lifetime (`None` = no rekey).
    pub lifetime: Option<Duration>,
    /// Time since the SA came up (or since negotiation started while negotiating).
    pub active_time: Duration,
    /// Time left until this side rekeys the IKE SA.
    pub rekey_in: Option<Duration>,
    /// NAT detected on the local / remote side (RFC 7296 §2.23).
    pub nat_local: bool,
    pub nat_remote: bool,
    /// ESP is UDP-encapsulated (NAT-T).
    pub nat_t: bool,
    pub fragmentation: bool,
    pub child_spis_in: Vec<u32>,
    pub local_id: IpAddr,
    pub remote_id: IpAddr,
    pub auth: String,
}

/// What `show crypto ipsec sa` prints about one CHILD_SA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildSaInfo {
    pub tunnel: String,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub spi_in: u32,
    pub spi_out: u32,
    pub suite: EspSuite,
    pub encap: esp::Encap,
    pub local_ts: Vec<policy::TrafficSelector>,
    pub remote_ts: Vec<policy::TrafficSelector>,
    pub initiator: bool,
    pub lifetime: Duration,
    pub lifetime_kilobytes: Option<u64>,
    pub bytes: u64,
    /// Time left until the hard lifetime.
    pub expires_in: Duration,
    /// Time left until this side starts a rekey (None when a rekey already ran).
    pub rekey_in: Option<Duration>,
    pub ike_spi_i: u64,
    pub ike_spi_r: u64,
}
