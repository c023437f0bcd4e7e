//! Per-session state: identity, lease, channels, liveness and the server->client channel
//! choice. Pure data + small helpers; the server drives it.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{FallbackTiming, GroupPolicy};
use crate::connect::DtlsKeying;
use crate::cstp::CstpDecoder;
use crate::mtu::MtuPlan;
use crate::{Channel, SessionId, TlsVersion};

#[derive(Debug)]
pub(crate) enum Phase {
    /// Logged in, cookie issued, no CONNECT yet; forgotten at `expires`.
    AwaitingConnect { expires: Instant },
    /// A TLS connection carries CSTP.
    Connected,
    /// The TLS connection dropped at `since`; the session and its lease wait for a reconnect
    /// with the cookie until `since + reconnect_grace`.
    Disconnected { since: Instant },
}

#[derive(Debug)]
pub(crate) struct TlsChannel {
    pub decoder: CstpDecoder,
    #[allow(dead_code)] // kept for `show` detail and future rekey decisions
    pub version: TlsVersion,
    pub cipher: String,
    pub last_rx: Instant,
    /// Gateway DPD sent and not yet answered.
    pub dpd_sent: Option<Instant>,
}

#[derive(Debug, Default)]
pub(crate) struct DtlsChannel {
    pub keying: Option<DtlsKeying>,
    pub up: bool,
    pub last_rx: Option<Instant>,
}

/// The server->client channel choice (README "Fallback to TLS").
#[derive(Debug)]
pub(crate) struct Fallback {
    /// First DTLS send since the last DTLS record received (None: nothing unanswered).
    pub unconfirmed_since: Option<Instant>,
    /// An outstanding DTLS DPD probe must be answered by this time.
    pub probe_deadline: Option<Instant>,
    /// Last DPD-RESP received on DTLS.
    pub last_confirmed: Option<Instant>,
    /// Last data sent on DTLS.
    pub last_tx: Option<Instant>,
    /// While on TLS with DTLS open: when to probe DTLS again, and the current backoff.
    pub next_reprobe: Option<Instant>,
    pub reprobe_interval: Duration,
    pub probe_seq: u32,
    /// When the outstanding probe was sent, and the smoothed probe round-trip time.
    pub probe_sent: Option<Instant>,
    pub srtt: Option<Duration>,
}

impl Fallback {
    /// When a DPD answer is next required although DTLS records keep arriving: only while we
    /// are sending on DTLS and have not had an answer since (catches one-way loss).
    pub fn verify_due(&self, ft: &FallbackTiming) -> Option<Instant> {
        let tx = self.last_tx?;
        match self.last_confirmed {
            Some(c) if c >= tx => None,
            Some(c) => Some(c + ft.verify_interval),
            None => Some(tx),
        }
    }

    pub fn new(t: &FallbackTiming) -> Self {
        Self {
            unconfirmed_since: None,
            probe_deadline: None,
            last_confirmed: None,
            last_tx: None,
            next_reprobe: None,
            reprobe_interval: t.reprobe_min,
            probe_seq: 0,
            probe_sent: None,
            srtt: None,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Session {
    pub id: SessionId,
    /// First 8 bytes of `cookie_tag`: the key of the server's cookie index.
    pub cookie_prefix: [u8; 8],
    /// HMAC-SHA256(server cookie key, cookie): the cookie itself is never stored.
    pub cookie_tag: [u8; 32],
    pub user: String,
    pub tunnel_group: String,
    pub group_policy: String,
    pub policy: GroupPolicy,
    pub peer: SocketAddr,
    pub address: Option<Ipv4Addr>,
    pub netmask: Ipv4Addr,
    pub created: Instant,
    /// Last DATA in either direction (vpn-idle-timeout).
    pub last_data: Instant,
    pub phase: Phase,
    pub tls: Option<TlsChannel>,
    pub dtls: DtlsChannel,
    pub tx: Channel,
    pub fallback: Fallback,
    pub mtu: Option<MtuPlan>,
    pub bytes_tx: u64,
    pub bytes_rx: u64,
    pub reconnects: u32,
    pub fallbacks: u32,
    pub ever_connected: bool,
    /// The key this session currently has in the server's timer set.
    pub wake: Option<Instant>,
    /// Last ICMP fragmentation-needed / last 722036 log for this session (rate limits).
    pub too_big_icmp: Option<Instant>,
    pub too_big_log: Option<Instant>,
    /// What the first CONNECT advertised; reconnects repeat it.
    pub advertised: Option<crate::mtu::Advertised>,
}

impl Session {
    /// The earliest instant at which something must happen to this session.
    pub fn next_deadline(&self, grace: Duration, ft: &FallbackTiming) -> Option<Instant> {
        let mut d: Option<Instant> = None;
        let mut at = |t: Instant| d = Some(d.map_or(t, |x| x.min(t)));
        match self.phase {
            Phase::AwaitingConnect { expires } => at(expires),
            Phase::Disconnected { since } => at(since + grace),
            Phase::Connected => {
                if let Some(i) = self.policy.idle_timeout {
                    at(self.last_data + i);
                }
                if let Some(s) = self.policy.session_timeout {
                    at(self.created + s);
                }
                if let (Some(tls), Some(dpd)) = (&self.tls, self.policy.dpd_gateway) {
                    match tls.dpd_sent {
                        None => at(tls.last_rx + dpd),
                        // Declared dead after three intervals of silence.
                        Some(_) => at(tls.last_rx + dpd * 3),
                    }
                }
                if self.dtls.up {
                    let f = &self.fallback;
                    if let Some(p) = f.probe_deadline {
                        at(p);
                    } else if self.tx == Channel::Dtls {
                        if let Some(u) = f.unconfirmed_since {
                            at(u + ft.probe_after);
                        }
                        if let Some(v) = f.verify_due(ft) {
                            at(v);
                        }
                    } else if let Some(r) = f.next_reprobe {
                        at(r);
                    }
                }
            }
        }
        d
    }
}

/// A session as carried across a restart or failover (serde). Instants become ages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSnapshot {
    pub index: u32,
    /// HMAC-SHA256(cookie key, cookie): enough to check a cookie, useless to forge one.
    pub cookie_tag: [u8; 32],
    pub user: String,
    pub tunnel_group: String,
    pub group_policy: String,
    pub policy: GroupPolicy,
    pub peer: SocketAddr,
    pub address: Option<Ipv4Addr>,
    pub netmask: Ipv4Addr,
    /// Time since login when the snapshot was taken.
    pub age: Duration,
    pub bytes_tx: u64,
    pub bytes_rx: u64,
    pub reconnects: u32,
    pub ever_connected: bool,
    /// The MTUs the client was told at its first CONNECT (kept across reconnects).
    #[serde(default)]
    pub advertised: Option<crate::mtu::Advertised>,
    /// How long the session had been waiting for a reconnect (None: it was connected, or
    /// never connected).
    #[serde(default)]
    pub disconnected_for: Option<Duration>,
}
