//! AnyConnect / OpenConnect remote access as a sans-IO engine (issue 5).
//!
//! The engine never touches a socket, a TLS library, a TUN device or the clock: the daemon
//! (crates/gateway) terminates TLS and DTLS, hands the engine the decrypted bytes with the
//! current time, and drains what the engine wants sent. See README.md for the wiring guide.
//!
//! Phases of one client:
//! 1. HTTPS: [`Server::handle_http`] on the buffered plaintext of a TLS connection answers the
//!    aggregate-auth XML exchange, issues the `webvpn` session cookie, and finally accepts
//!    `CONNECT /CSCOSSLC/tunnel` ([`HttpOutcome::Tunnel`]).
//! 2. Tunnel: CSTP frames over that TLS connection ([`Server::handle_tls_data`]) and DTLS records
//!    ([`Server::handle_dtls_record`]) carry IP packets; packets for the client come from the TUN
//!    ([`Server::handle_tun_packet`]). Output is drained with [`Server::poll_transmit`] (to the
//!    client), [`Server::poll_packet`] (to the TUN) and [`Server::poll_event`].

#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod connect;
pub mod cstp;
pub mod frag;
mod from_policy;
pub mod housekeeping;
pub mod http;
pub mod mtu;
mod server;
mod session;
pub mod text;

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

pub use config::{
    pbkdf2_verifier, plain_verifier, AddressPool, AuthMethod, Config, FallbackTiming, GroupPolicy,
    Ipv4Net, Limits, MtuPolicy, PasswordVerifier, TunnelGroup, User,
};
pub use connect::{DtlsKeying, LegacyCipher};
pub use cstp::{CstpDecoder, CstpError, FrameType};
pub use from_policy::config_from_policy;
pub use http::HttpError;
pub use server::{Server, Snapshot, Stats};
pub use text::{DisconnectReason, SessionInfo, SyslogLine};

/// A session, stable across reconnects; also the ASA's `Index` in `show vpn-sessiondb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub u32);

/// TLS protocol version of the CSTP connection (decides the record overhead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// A client certificate the TLS layer has already verified against the configured CA
/// (`ca-file`). The engine only decides whether the tunnel group accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// Subject CN: the username of a certificate login.
    pub common_name: String,
}

/// What the engine needs to know about the TLS connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls_version: TlsVersion,
    /// The negotiated cipher by its OpenSSL name (`SSL_CIPHER_get_name`), e.g.
    /// `ECDHE-RSA-AES256-GCM-SHA384` or `TLS_AES_256_GCM_SHA384`.
    pub tls_cipher: String,
    /// `Some` only when the TLS layer verified a client certificate.
    pub client_cert: Option<ClientCert>,
}

/// The result of feeding buffered request bytes to [`Server::handle_http`].
#[derive(Debug)]
pub enum HttpOutcome {
    /// The buffer does not yet hold a complete request; read more and call again with the
    /// whole buffer (nothing was consumed).
    NeedMore,
    /// Write `bytes` to the TLS connection and drop `consumed` bytes from the input buffer;
    /// then close the connection if `close`, else wait for the next request.
    Respond {
        consumed: usize,
        bytes: Vec<u8>,
        close: bool,
    },
    /// Write `bytes` (the `200 CONNECTED` head); from here on the connection carries CSTP for
    /// `session`: pass any bytes after `consumed` (and all later ones) to
    /// [`Server::handle_tls_data`]. If you already hold a TLS connection for `session` (a
    /// reconnect), close the old one WITHOUT calling [`Server::handle_tls_closed`] for it.
    /// `dtls` says how to key the DTLS channel (None: DTLS not offered).
    Tunnel {
        consumed: usize,
        bytes: Vec<u8>,
        session: SessionId,
        dtls: Option<DtlsKeying>,
    },
}

/// The result of [`Server::handle_http_deferred`]: an answer, or a password to verify first.
#[derive(Debug)]
pub enum HttpStep {
    Done(HttpOutcome),
    /// Run [`PasswordCheck::verify`] (CPU-bound, tens of milliseconds: off the thread that
    /// serves sessions, bounded in parallelism) and pass its result with
    /// [`PasswordCheck::ticket`] to [`Server::handle_password_verdict`]; its `HttpOutcome`
    /// (with the request's `consumed`) is the answer.
    VerifyPassword(PasswordCheck),
}

impl From<HttpOutcome> for HttpStep {
    fn from(o: HttpOutcome) -> Self {
        HttpStep::Done(o)
    }
}

/// Names one password verification the engine is waiting for. Only the caller sees it (it
/// never goes to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PasswordTicket(pub u64);

/// A password verification to run outside the engine: the stored hash, the offered password
/// and the configured verifier. Holds no reference into the engine, so it can move to another
/// thread.
pub struct PasswordCheck {
    ticket: PasswordTicket,
    hash: String,
    password: String,
    verifier: PasswordVerifier,
}

impl PasswordCheck {
    pub fn ticket(&self) -> PasswordTicket {
        self.ticket
    }

    /// Runs the verifier (constant time in the secret; PBKDF2 with the configured
    /// iterations for real user databases).
    pub fn verify(&self) -> bool {
        (self.verifier)(&self.hash, self.password.as_bytes())
    }
}

impl std::fmt::Debug for PasswordCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the password nor the hash belongs in a log.
        f.debug_struct("PasswordCheck").field("ticket", &self.ticket).finish_non_exhaustive()
    }
}

/// A request the engine refuses at the HTTP level: write `response`, then close.
#[derive(Debug)]
pub struct HttpReject {
    pub error: HttpError,
    pub response: Vec<u8>,
}

/// The two channels of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Channel {
    /// CSTP over the TLS connection: `data` is whole CSTP frames, write them to the stream.
    Tls,
    /// DTLS: `data` is one record's plaintext (type byte + packet), send it as one record.
    Dtls,
}

/// Bytes for a client, borrowed from the engine until the next `poll_transmit`/`handle_*`.
#[derive(Debug)]
pub struct Transmit<'a> {
    pub session: SessionId,
    pub channel: Channel,
    pub data: &'a [u8],
}

/// An IP packet from a client, for the TUN device (borrowed like [`Transmit`]).
#[derive(Debug)]
pub struct TunPacket<'a> {
    pub session: SessionId,
    pub data: &'a [u8],
}

/// Things the daemon must act on or log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A tunnel is established (first CONNECT, or a reconnect when `reconnect`): route
    /// `address` to the TUN for this session.
    SessionUp {
        session: SessionId,
        user: String,
        tunnel_group: String,
        group_policy: String,
        address: Ipv4Addr,
        reconnect: bool,
    },
    /// The session is gone (logout, logoff, timeout, grace expired): remove the route, close
    /// any remaining connection.
    SessionDown {
        session: SessionId,
        address: Option<Ipv4Addr>,
        reason: DisconnectReason,
    },
    /// The session lost its TLS connection and waits (its reconnect grace) for its client
    /// to come back with the cookie: its lease and its flows are kept.
    SessionDisconnected {
        session: SessionId,
        address: Option<Ipv4Addr>,
    },
    /// Server->client traffic now goes on `channel`.
    ChannelChange {
        session: SessionId,
        channel: Channel,
    },
    /// Close this session's TLS connection once the pending transmits are written. Do not call
    /// [`Server::handle_tls_closed`] for it (the engine already knows).
    CloseTls { session: SessionId },
    /// Close this session's DTLS association (do not call [`Server::handle_dtls_closed`]).
    CloseDtls { session: SessionId },
    /// An ASA-format syslog line.
    Syslog(SyslogLine),
    /// A request was refused (malformed HTTP, bad XML, wrong password, unknown group,
    /// forged/expired cookie, pre-auth limits, ...): log it (WARN: the peer's fault).
    Refused { peer: SocketAddr, reason: String },
}

/// Why the engine wants to be woken (every wake-up has a reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerReason {
    /// A session deadline: DTLS probe, DPD, idle/session timeout, reconnect grace.
    Session(SessionId),
    /// Half-open logins expire.
    PendingAuth,
}

/// Why a tunnel-phase input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    /// The session does not exist (any more): close the connection.
    #[error("unknown session {0:?}")]
    UnknownSession(SessionId),
    /// Malformed CSTP on the TLS stream: the stream cannot be resynchronised, close it and
    /// call [`Server::handle_tls_closed`].
    #[error("CSTP framing: {0}")]
    Cstp(#[from] CstpError),
    /// A DTLS record that is empty or of an unknown type (dropped; the association stays).
    #[error("bad DTLS record")]
    BadDtlsRecord,
}

/// Why a packet from the TUN was not forwarded (the engine counts these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TunDrop {
    #[error("not an IPv4 packet for a session address")]
    NoSession,
    #[error("malformed IPv4 packet")]
    Malformed,
    #[error("session has no live channel")]
    NoChannel,
    #[error("larger than the channel MTU with DF set (ICMP sent)")]
    TooBig,
}

/// `show vpn-sessiondb anyconnect filter ...` selections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShowFilter {
    /// `filter name USER`
    Name(String),
    /// `filter ipaddress IP`: the assigned or the public address.
    IpAddress(Ipv4Addr),
    /// The session index.
    Index(u32),
}

/// `vpn-sessiondb logoff ...` targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Logoff {
    Name(String),
    Index(u32),
    All,
}

/// Equality whose timing does not depend on where the inputs differ: both sides go through
/// ring's HMAC and ring's constant-time tag check (no hand-written comparison).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use ring::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, b"holdfast-anyconnect-ct-eq");
    let tag = hmac::sign(&key, b);
    hmac::verify(&key, a, tag.as_ref()).is_ok()
}
