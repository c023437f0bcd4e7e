//! Errors, whose fault they are, and the one place that maps them to wire notify codes.

use wire::ike::{NotifyType, ParseError};

/// Why a datagram was not processed. Returned by `Endpoint::handle_datagram`; the daemon only
/// counts these (a peer's mistake is not our error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Drop {
    #[error("malformed IKE message: {0}")]
    Malformed(#[from] ParseError),
    #[error("no IKE SA with this SPI")]
    UnknownSa,
    #[error("no tunnel is configured for peer {0}")]
    UnknownPeer(std::net::IpAddr),
    #[error("integrity check or decryption failed")]
    Unauthenticated,
    #[error("message ID {0} outside the window")]
    BadMessageId(u32),
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
    #[error("half-open limit reached")]
    Overloaded,
    #[error("fragment stored, message incomplete")]
    FragmentPending,
    #[error("the peer rejected our request: {0}")]
    Rejected(String),
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// A failure while processing a request that must be answered with an error notify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReqError {
    #[error("invalid syntax: {0}")]
    Syntax(&'static str),
    #[error("no acceptable proposal")]
    NoProposal,
    #[error("wrong DH group, want {0}")]
    InvalidKe(u16),
    #[error("authentication failed")]
    Auth,
    #[error("traffic selectors unacceptable")]
    Ts,
    #[error("CHILD_SA not found")]
    ChildNotFound,
    #[error("temporary failure")]
    Temporary,
    #[error("unsupported critical payload {0}")]
    Critical(u8),
    #[error("crypto: {0}")]
    Crypto(String),
}

impl ReqError {
    /// RFC 7296 §3.10.1: the error notify each failure is reported with.
    pub(crate) fn notify(&self) -> (NotifyType, Vec<u8>) {
        match self {
            ReqError::Syntax(_) => (NotifyType::InvalidSyntax, Vec::new()),
            ReqError::NoProposal => (NotifyType::NoProposalChosen, Vec::new()),
            ReqError::InvalidKe(g) => (NotifyType::InvalidKePayload, g.to_be_bytes().to_vec()),
            ReqError::Auth => (NotifyType::AuthenticationFailed, Vec::new()),
            ReqError::Ts => (NotifyType::TsUnacceptable, Vec::new()),
            ReqError::ChildNotFound => (NotifyType::ChildSaNotFound, Vec::new()),
            ReqError::Temporary => (NotifyType::TemporaryFailure, Vec::new()),
            ReqError::Critical(t) => (NotifyType::UnsupportedCriticalPayload, vec![*t]),
            // Do not tell an attacker which computation failed.
            ReqError::Crypto(_) => (NotifyType::InvalidSyntax, Vec::new()),
        }
    }
}

impl From<crypto::CryptoError> for ReqError {
    fn from(e: crypto::CryptoError) -> Self {
        ReqError::Crypto(e.to_string())
    }
}
