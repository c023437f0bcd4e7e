//! ESP (RFC 4303) tunnel mode: SA database, seal/open in place, anti-replay with ESN,
//! and the framings that carry ESP (native IP protocol 50, UDP 4500 per RFC 3948).
//!
//! The contract with `ike` is [`SaParams`]: everything needed to build one direction of a
//! CHILD_SA. It is plain, serializable data so SA state can be replicated.
//!
//! - [`OutboundSa`] / [`InboundSa`]: seal and open in place (no per-packet allocation),
//!   AES-GCM-16 (RFC 4106) and AES-CBC with HMAC-SHA1-96 / HMAC-SHA2 (RFC 3602, 2404, 4868),
//!   32-bit or extended sequence numbers.
//! - [`ReplayWindow`]: the anti-replay window ([`REPLAY_WINDOW`] packets, RFC 4303 §3.4.3, A2).
//! - [`Sad`]: tunnels with selectors (the SPD), their outbound SA and inbound SAs by SPI, with
//!   the make-before-break rekey handover and per-SA counters.
//! - [`classify_udp4500`]: RFC 3948 demultiplexing of UDP port 4500.

use serde::{Deserialize, Serialize};

pub use policy::{Encryption, Integrity};

mod replay;
mod sa;
mod sad;

pub use replay::{ReplayWindow, WINDOW_SIZE as REPLAY_WINDOW};
pub use sa::{
    InboundCounters, InboundSa, Opened, OpenedRange, OutboundSa, ESP_HEADER_LEN, NEXT_HEADER_IPV4, NEXT_HEADER_NONE,
};
pub use sad::{Flow, Sad, SaStats, Selected, TunnelId};
pub use wire::esp::{classify_udp4500, Udp4500, NAT_KEEPALIVE, NON_ESP_MARKER};

/// The SPI of an ESP packet: its first four bytes (`None` if shorter than an ESP header).
pub fn esp_spi(packet: &[u8]) -> Option<u32> {
    wire::esp::esp_spi(packet)
}

/// Why an ESP packet could not be sealed or opened. Inbound variants are the peer's (or an
/// attacker's) doing and are counted, never logged at error level.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EspError {
    /// Too short, or a ciphertext length the transform cannot produce.
    #[error("ESP packet truncated or of invalid length")]
    Truncated,
    /// RFC 4303 §3.4.3: duplicate, or left of the anti-replay window.
    #[error("replayed or too old sequence number {seq}")]
    ReplayedOrTooOld { seq: u64 },
    /// ICV verification failed.
    #[error("integrity check failed (sequence number {seq})")]
    AuthFailed { seq: u64 },
    /// Authenticated, but the trailer is inconsistent (RFC 4303 §2.4).
    #[error("invalid ESP padding")]
    BadPadding,
    /// RFC 4303 §3.3.3: the sequence counter would cycle; rekey the SA.
    #[error("sequence number space exhausted; the SA must be rekeyed")]
    SequenceExhausted,
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
    /// The packet's SPI is not this SA's (a dispatch bug in the caller).
    #[error("SPI {got:#010x} does not belong to this SA ({expected:#010x})")]
    WrongSpi { expected: u32, got: u32 },
    /// No inbound SA with that SPI ([`Sad::open`]).
    #[error("no inbound SA for SPI {0:#010x}")]
    UnknownSpi(u32),
    /// The output buffer cannot hold the sealed packet.
    #[error("output buffer too small: {need} bytes needed")]
    BufferTooSmall { need: usize },
    /// The negotiated parameters do not make a usable SA (a bug in KEYMAT handling).
    #[error("invalid SA parameters: {0}")]
    InvalidParams(&'static str),
    /// [`Sad::seal`]: the tunnel has no outbound SA (yet); the packet must not leave in clear.
    #[error("no outbound SA for the tunnel")]
    NoOutboundSa,
    /// RFC 4301 §5.2: the decrypted packet is not covered by the SA's traffic selectors.
    #[error("inner packet does not match the SA's traffic selectors")]
    PolicyMismatch,
}

/// One direction of a CHILD_SA, as negotiated by IKE.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaParams {
    pub spi: u32,
    pub encryption: Encryption,
    /// `Integrity::Null` with AES-GCM.
    pub integrity: Integrity,
    /// Encryption key; for AES-GCM the 4-byte salt is appended (RFC 4106 §8.1 KEYMAT order).
    pub enc_key: Vec<u8>,
    /// Integrity key (empty for AES-GCM).
    pub integ_key: Vec<u8>,
    /// Extended sequence numbers negotiated (RFC 4303 §2.2.1).
    pub esn: bool,
}

impl std::fmt::Debug for SaParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaParams")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("encryption", &self.encryption)
            .field("integrity", &self.integrity)
            .field("esn", &self.esn)
            .finish_non_exhaustive()
    }
}

/// How ESP packets of a CHILD_SA travel between the gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Encap {
    /// IP protocol 50.
    Native,
    /// RFC 3948 UDP encapsulation (normally 4500 <-> 4500, the remote port may be NAT-mapped).
    Udp { local_port: u16, remote_port: u16 },
}
