//! ESP (RFC 4303) tunnel mode: SA database, seal/open in place, anti-replay with ESN,
//! and the framings that carry ESP (native IP protocol 50, UDP 4500 per RFC 3948).
//!
//! The contract with `ike` is [`SaParams`]: everything needed to build one direction of a
//! CHILD_SA. It is plain, serializable data so SA state can be replicated.

use serde::{Deserialize, Serialize};

pub use policy::{Encryption, Integrity};

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
