//! The IKEv2 endpoint: every IKE SA and CHILD_SA of the gateway, driven by datagrams, commands
//! and timeouts (RFC 7296).
//!
//! Each IKE SA is taken out of the table while a message for it is processed and put back
//! afterwards, so handlers can borrow the SA and the endpoint's output queues at once.

use crate::error::{Drop, ReqError};
use crate::keys::{child_keymat, ct_eq, psk_auth, IkeKeys};
use crate::proposal::{esp_offers, ike_offers, offers_to_wire, select, select_with_ke, Chosen, EspSuite, IkeSuite};
use crate::{ts, ChildSaInfo, ChildSaUp, Command, DownReason, Event, IkeSaInfo, IkeStatus, Path, Role, TimerReason, Transmit};
use crypto::{DhPrivate, HashAlg, Random};
use policy::{ConnectionType, DhGroup, Ikev2Globals, TrafficSelector, TunnelPolicy};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};
use wire::ike::{
    emit_chain, flags, parse_chain, AuthMethod, Delete, ExchangeType, Header, IdType, Identification, Message, Notify,
    NotifyType, Payload, PayloadType, Proposal, ProtocolId,
};

/// Cap of the re-initiation backoff, so a tunnel comes back within seconds after a peer restart.
const REINIT_BACKOFF_MAX: Duration = Duration::from_secs(4);
const REINIT_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// How long a half-open SA may wait for IKE_AUTH.
const HALF_OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a replaced CHILD_SA waits for the peer's Delete before we drop it ourselves.
const REKEYED_GRACE: Duration = Duration::from_secs(20);
/// Our Vendor ID (RFC 7296 §3.12): the first 16 bytes of SHA-1("holdfast IKEv2 1").
const HOLDFAST_VID: &[u8] = &[0x09, 0x50, 0x76, 0xfa, 0xab, 0xc7, 0x0c, 0x6d, 0x5e, 0x07, 0x3e, 0x2e, 0xa9, 0x95, 0x65, 0x83];
/// How long we leave a duplicate IKE SA we initiated before deleting it ourselves.
const REDUNDANT_DELAY: Duration = Duration::from_secs(3);
/// Longest a rekey responder keeps sending on the replaced CHILD_SA.
const OUTBOUND_SWITCH_DELAY: Duration = Duration::from_secs(2);
/// Re-check of a rekey that did not complete.
const REKEY_WATCHDOG: Duration = Duration::from_secs(30);
const NONCE_LEN: usize = 32;
const MAX_FRAGMENTS: u16 = 64;

pub struct Endpoint {
    tunnels: Vec<TunnelPolicy>,
    globals: Ikev2Globals,
    rng: Box<dyn Random>,
    /// IKE SAs by our own SPI.
    sas: HashMap<u64, IkeSa>,
    /// Responder: (peer IP, initiator SPI) -> our SPI, to answer retransmitted IKE_SA_INIT.
    init_index: HashMap<(IpAddr, u64), u64>,
    tstate: Vec<TunnelState>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    encap_changes: VecDeque<crate::EncapChange>,
    cookie_secret: [u8; 32],
    last_now: Option<Instant>,
    /// Certificate material per tunnel (same index as `tunnels`); `None` = PSK both ways.
    cert: Vec<Option<crate::cert_auth::CertAuth>>,
    /// Wall-clock reference for certificate validity: (instant, real time at that instant).
    wall: Option<(Instant, SystemTime)>,
    /// Same index as `tunnels`: true for an entry a reconfiguration removed or replaced, kept
    /// only so that SAs still being deleted under it have a valid index (`reconfigure`).
    retired: Vec<bool>,
}

#[path = "reconfigure.rs"]
mod reconfigure;
pub use reconfigure::Reconfigured;

#[derive(Debug, Default, Clone)]
struct TunnelState {
    reinit_at: Option<Instant>,
    backoff: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Initiator: IKE_SA_INIT sent.
    InitSent,
    /// Responder: IKE_SA_INIT answered, waiting for IKE_AUTH.
    InitDone,
    /// Initiator: IKE_AUTH sent.
    AuthSent,
    Established,
    /// Being deleted by us; events already emitted.
    Deleting,
    /// Replaced by a rekeyed IKE SA; waits for the Delete exchange.
    Rekeyed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildState {
    Installed,
    /// Our CREATE_CHILD_SA for it is queued or in flight.
    Rekeying,
    /// Replaced; the Delete exchange is pending (ours or the peer's).
    Rekeyed { until: Instant },
    /// Delete sent by us; the down event was already emitted.
    Deleting,
}

struct Child {
    /// The tunnel (crypto map entry) this SA belongs to; several tunnels to one peer share
    /// the peer's IKE SA.
    tunnel: usize,
    spi_in: u32,
    spi_out: u32,
    suite: EspSuite,
    local_ts: Vec<TrafficSelector>,
    remote_ts: Vec<TrafficSelector>,
    initiator: bool,
    created: Instant,
    rekey_at: Option<Instant>,
    expire_at: Instant,
    bytes: u64,
    state: ChildState,
    reported_down: bool,
    /// The inbound SPI of the SA this one replaced (rekey).
    replaces: Option<u32>,
    /// Rekey responder: when to tell the daemon to send on this SA at the latest.
    outbound_at: Option<Instant>,
}

enum Req {
    Dpd,
    DeleteIke,
    DeleteChildren(Vec<u32>),
    /// Rekey the CHILD_SA with this inbound SPI.
    Rekey(u32),
    /// Create a CHILD_SA for this tunnel.
    NewChild(usize),
    /// Delete CHILD_SAs by inbound SPI that we never installed (the peer may have them).
    DeleteRaw(Vec<u32>),
    /// Replace a CHILD_SA the peer no longer knows (CHILD_SA_NOT_FOUND on rekey) with a new
    /// one negotiated without REKEY_SA; the old one is deleted afterwards.
    Recreate(u32),
    RekeyIke,
}

enum Pending {
    /// `copies`: another IKE_SA_INIT with this KE and nonce but without this cookie has left
    /// (the request before the COOKIE answer), so a real response may answer either.
    Init { dh: Option<DhPrivate>, ke: Vec<u8>, group: DhGroup, cookie: Option<Vec<u8>>, restarts: u32, copies: bool },
    Auth { child_spi: u32 },
    Dpd,
    DeleteIke,
    DeleteChildren(Vec<u32>),
    Child { old: Option<u32>, spi_in: u32, ni: Vec<u8>, dh: Option<DhPrivate>, tunnel: usize },
    RekeyIke { new_spi: u64, ni: Vec<u8>, dh: Option<DhPrivate> },
}

impl Pending {
    fn name(&self) -> String {
        match self {
            Pending::Init { .. } => "init".into(),
            Pending::Auth { .. } => "auth".into(),
            Pending::Dpd => "dpd".into(),
            Pending::DeleteIke => "delete-ike".into(),
            Pending::DeleteChildren(s) => format!("delete-children {s:08x?}"),
            Pending::Child { old, spi_in, .. } => format!("child old={old:08x?} new={spi_in:08x}"),
            Pending::RekeyIke { new_spi, .. } => format!("rekey-ike new={new_spi:016x}"),
        }
    }
}

struct Outstanding {
    mid: u32,
    datagrams: Vec<Vec<u8>>,
    pending: Pending,
    tries: u32,
    next: Instant,
    /// When the datagrams last left (first send, timed retransmission or knock).
    sent: Instant,
}

/// Shortest gap between two traffic-driven extra transmissions of an outstanding request
/// (`Command::Initiate` on a negotiating SA, `Command::CheckLiveness`).
pub const KNOCK_INTERVAL: Duration = Duration::from_millis(500);

struct Reassembly {
    mid: u32,
    total: u16,
    first_inner: PayloadType,
    parts: Vec<Option<Vec<u8>>>,
}

struct IkeSa {
    tunnel: usize,
    /// We are the original initiator of this IKE SA (selects keys and the I flag).
    initiator: bool,
    spi_i: u64,
    spi_r: u64,
    path: Path,
    state: State,
    suite: Option<IkeSuite>,
    keys: Option<IkeKeys>,
    ni: Vec<u8>,
    nr: Vec<u8>,
    /// The IKE_SA_INIT request and response as sent (signed in AUTH, §2.15).
    msg1: Vec<u8>,
    /// `msg1` is our best guess, not known: both the plain and the cookie'd IKE_SA_INIT left,
    /// and a response does not say which one the responder answered (RFC 7296 §2.6).
    msg1_guess: bool,
    msg2: Vec<u8>,
    nat_local: bool,
    nat_remote: bool,
    peer_frag: bool,
    /// The peer sent our Vendor ID: it resolves duplicate IKE SAs the way we do.
    peer_holdfast: bool,
    /// Hashes the peer accepts for signatures (SIGNATURE_HASH_ALGORITHMS, RFC 7427 §4).
    peer_hashes: Option<Vec<HashAlg>>,
    next_mid: u32,
    peer_mid: u32,
    out: Option<Outstanding>,
    queue: VecDeque<Req>,
    last_resp: Option<(u32, Vec<Vec<u8>>)>,
    children: Vec<Child>,
    started: Instant,
    established: Option<Instant>,
    last_rx: Instant,
    lifetime: Option<Duration>,
    rekey_at: Option<Instant>,
    deadline: Option<Instant>,
    reasm: Option<Reassembly>,
    /// A duplicate IKE SA the peer is expected to delete; removed locally at this time.
    redundant_at: Option<Instant>,
    /// Since when this established SA has no CHILD_SA (and how often we tried to create one).
    childless_since: Option<Instant>,
    childless_tries: u32,
    /// Rekeys by the peer of CHILD_SAs we were rekeying ourselves: (old inbound SPI, the
    /// peer's new inbound SPI, lowest nonce of the peer's exchange), RFC 7296 §2.8.1.
    collisions: Vec<(u32, u32, Vec<u8>)>,
    /// After a rekey: our SPI of the IKE SA that replaced this one. Children and child
    /// requests that still end up here (an exchange that was in flight) move over to it.
    successor: Option<u64>,
    dead: bool,
}

impl IkeSa {
    fn our_spi(&self) -> u64 {
        if self.initiator { self.spi_i } else { self.spi_r }
    }
    fn is_up(&self) -> bool {
        self.state == State::Established
    }
    fn child_by_in(&mut self, spi: u32) -> Option<&mut Child> {
        self.children.iter_mut().find(|c| c.spi_in == spi)
    }
}

fn notify_of<'a>(ps: &'a [Payload<'a>], t: NotifyType) -> Option<&'a Notify<'a>> {
    ps.iter().find_map(|p| match p {
        Payload::Notify(n) if n.ty == t => Some(n),
        _ => None,
    })
}

fn first_error<'a>(ps: &'a [Payload<'a>]) -> Option<&'a Notify<'a>> {
    ps.iter().find_map(|p| match p {
        Payload::Notify(n) if n.ty.is_error() => Some(n),
        _ => None,
    })
}

fn sa_of<'a>(ps: &'a [Payload<'a>]) -> Option<&'a [Proposal<'a>]> {
    ps.iter().find_map(|p| match p {
        Payload::Sa(v) => Some(v.as_slice()),
        _ => None,
    })
}

fn nonce_of<'a>(ps: &'a [Payload<'a>]) -> Result<&'a [u8], ReqError> {
    let n = ps
        .iter()
        .find_map(|p| match p {
            Payload::Nonce(n) => Some(*n),
            _ => None,
        })
        .ok_or(ReqError::Syntax("missing Nonce"))?;
    // RFC 7296 §3.9: 16 to 256 octets.
    if !(16..=256).contains(&n.len()) {
        return Err(ReqError::Syntax("nonce length"));
    }
    Ok(n)
}

fn ke_of<'a>(ps: &'a [Payload<'a>]) -> Option<(u16, &'a [u8])> {
    ps.iter().find_map(|p| match p {
        Payload::Ke { group, data } => Some((*group, *data)),
        _ => None,
    })
}

fn ts_of(ps: &[Payload<'_>]) -> (Option<Vec<TrafficSelector>>, Option<Vec<TrafficSelector>>) {
    let mut i = None;
    let mut r = None;
    for p in ps {
        match p {
            Payload::TsI(s) => i = Some(ts::from_wire(s)),
            Payload::TsR(s) => r = Some(ts::from_wire(s)),
            _ => {}
        }
    }
    (i, r)
}

fn critical_unknown(ps: &[Payload<'_>]) -> Option<u8> {
    ps.iter().find_map(|p| match p {
        Payload::Unknown { ty, critical: true, .. } => Some(ty.value()),
        _ => None,
    })
}

/// RFC 7296 §2.23: SHA-1(SPIi | SPIr | IP | port).
fn nat_hash(spi_i: u64, spi_r: u64, addr: SocketAddr) -> Vec<u8> {
    let ip = match addr.ip() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    crypto::digest(HashAlg::Sha1, &[&spi_i.to_be_bytes(), &spi_r.to_be_bytes(), &ip, &addr.port().to_be_bytes()])
}

/// The body of our ID payload (ID type, 3 reserved bytes, data): ID_IPV4_ADDR/ID_IPV6_ADDR of the
/// gateway address, as the ASA does for LAN-to-LAN tunnels.
fn id_body(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => [&[IdType::Ipv4Addr.value(), 0, 0, 0][..], &a.octets()].concat(),
        IpAddr::V6(a) => [&[IdType::Ipv6Addr.value(), 0, 0, 0][..], &a.octets()].concat(),
    }
}

fn id_payload_body(id: &Identification<'_>) -> Vec<u8> {
    [&[id.ty.value(), 0, 0, 0][..], id.data].concat()
}

/// Bounds every configured time so that `Instant` arithmetic can never overflow, whatever
/// the configuration says (20 years is "never" for an SA).
fn clamp_tunnel(t: &mut TunnelPolicy) {
    const LONG: Duration = Duration::from_secs(20 * 365 * 86400);
    const DAY: Duration = Duration::from_secs(86400);
    t.child_lifetime = t.child_lifetime.min(LONG);
    for p in &mut t.ike_policies {
        p.lifetime = p.lifetime.map(|l| l.min(LONG));
    }
    if let Some(d) = t.dpd.as_mut() {
        d.threshold = d.threshold.clamp(Duration::from_millis(100), DAY);
        d.retry = d.retry.clamp(Duration::from_millis(100), DAY);
    }
}

fn clamp_globals(g: &mut Ikev2Globals) {
    g.retransmit_base = g.retransmit_base.clamp(Duration::from_millis(50), Duration::from_secs(3600));
    g.retransmit_tries = g.retransmit_tries.min(32);
}

fn with_port(addr: SocketAddr, port: u16) -> SocketAddr {
    SocketAddr::new(addr.ip(), port)
}

impl Endpoint {
    pub fn new(mut tunnels: Vec<TunnelPolicy>, mut globals: Ikev2Globals, mut rng: Box<dyn Random>) -> Self {
        tunnels.iter_mut().for_each(clamp_tunnel);
        clamp_globals(&mut globals);
        let mut cookie_secret = [0u8; 32];
        rng.fill(&mut cookie_secret);
        let tstate = vec![TunnelState { reinit_at: None, backoff: REINIT_BACKOFF_MIN }; tunnels.len()];
        let n_tunnels = tunnels.len();
        Self {
            tunnels,
            globals,
            rng,
            sas: HashMap::new(),
            init_index: HashMap::new(),
            tstate,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            encap_changes: VecDeque::new(),
            cookie_secret,
            last_now: None,
            cert: vec![None; n_tunnels],
            wall: None,
            retired: vec![false; n_tunnels],
        }
    }

    /// Certificate authentication for a tunnel (RFC 7296 §2.15 signatures): `auth` comes from
    /// [`crate::cert_auth::CertAuth::load`] on the tunnel's `policy::TunnelAuth`. A direction
    /// left `None` keeps using the tunnel's pre-shared key. Returns false for an unknown tunnel.
    /// Our ID stays the gateway address (ID_IPV4_ADDR), so our certificate needs a matching
    /// IP subjectAltName; the peer's ID must match its certificate, which must chain to a CA.
    pub fn set_cert_auth(&mut self, tunnel: &str, auth: crate::cert_auth::CertAuth) -> bool {
        match self.tunnel_index(tunnel) {
            Some(i) => {
                self.cert[i] = Some(auth);
                true
            }
            None => false,
        }
    }

    /// The real time at `at`, for certificate validity checks (the engine has no clock of its
    /// own; the daemon calls this once at start). Without it certificates are refused.
    pub fn set_wall_clock(&mut self, at: Instant, wall: SystemTime) {
        self.wall = Some((at, wall));
    }

    pub fn handle_datagram(&mut self, now: Instant, path: Path, data: &[u8]) -> Result<(), Drop> {
        self.last_now = Some(now);
        let hdr = Header::parse(data)?;
        if hdr.exchange == ExchangeType::IkeSaInit && !hdr.is_response() {
            return self.on_init_request(now, path, data, hdr);
        }
        // The I flag says whether the sender is the original initiator; our SPI is the other one.
        let our_spi = if hdr.is_initiator() { hdr.spi_r } else { hdr.spi_i };
        let mut sa = self.sas.remove(&our_spi).ok_or(Drop::UnknownSa)?;
        let r = self.on_sa_message(now, &mut sa, path, data, hdr);
        self.pump(now, &mut sa);
        self.put_back(sa);
        r
    }

    pub fn handle_command(&mut self, now: Instant, cmd: Command) {
        self.last_now = Some(now);
        match cmd {
            Command::Initiate { tunnel } => {
                if let Some(idx) = self.tunnel_index(&tunnel) {
                    self.initiate(now, idx);
                }
            }
            Command::CheckLiveness { tunnel } => {
                let Some(idx) = self.tunnel_index(&tunnel) else { return };
                for spi in self.spis() {
                    let Some(mut sa) = self.sas.remove(&spi) else { continue };
                    let carries = sa.tunnel == idx || sa.children.iter().any(|c| c.tunnel == idx && !c.reported_down);
                    if sa.is_up() && !sa.dead && carries {
                        if sa.out.is_some() {
                            // Any outstanding request proves liveness when answered.
                            self.knock(now, &mut sa);
                        } else if !sa.queue.iter().any(|r| matches!(r, Req::Dpd)) {
                            sa.queue.push_back(Req::Dpd);
                        }
                    }
                    self.pump(now, &mut sa);
                    self.put_back(sa);
                }
            }
            Command::ClearIkeSa { peer } => {
                for spi in self.spis() {
                    let Some(mut sa) = self.sas.remove(&spi) else { continue };
                    if peer.is_none_or(|p| p == sa.path.remote.ip()) {
                        if sa.is_up() {
                            self.report_down(&mut sa, DownReason::Cleared);
                            sa.state = State::Deleting;
                            sa.queue.clear();
                            sa.queue.push_back(Req::DeleteIke);
                            self.schedule_reinit(now, sa.tunnel);
                        } else if matches!(sa.state, State::InitSent | State::InitDone | State::AuthSent) {
                            // Like an established SA: a tunnel we initiate comes back.
                            self.kill(now, &mut sa, DownReason::Cleared, true);
                        }
                    }
                    self.pump(now, &mut sa);
                    self.put_back(sa);
                }
            }
            Command::ClearChildSas { peer } => {
                for spi in self.spis() {
                    let Some(mut sa) = self.sas.remove(&spi) else { continue };
                    if sa.is_up() && peer.is_none_or(|p| p == sa.path.remote.ip()) {
                        let mut spis = Vec::new();
                        let mut tunnels = Vec::new();
                        for c in sa.children.iter_mut().filter(|c| !c.reported_down) {
                            c.reported_down = true;
                            c.state = ChildState::Deleting;
                            spis.push(c.spi_in);
                            if !tunnels.contains(&c.tunnel) {
                                tunnels.push(c.tunnel);
                            }
                            let tunnel = self.tunnels[c.tunnel].name.clone();
                            self.events.push_back(Event::ChildSaDown { tunnel, spi_in: c.spi_in, spi_out: c.spi_out, reason: DownReason::Cleared });
                        }
                        if !spis.is_empty() {
                            sa.queue.push_back(Req::DeleteChildren(spis));
                            // An initiating tunnel keeps its promise of connectivity: negotiate a
                            // fresh CHILD_SA once the old ones are gone.
                            for t in tunnels {
                                if self.tunnels[t].connection_type != ConnectionType::AnswerOnly {
                                    sa.queue.push_back(Req::NewChild(t));
                                }
                            }
                        }
                    }
                    self.pump(now, &mut sa);
                    self.put_back(sa);
                }
            }
            Command::ChildSaBytes { spi_in, bytes } => {
                for spi in self.spis() {
                    let Some(mut sa) = self.sas.remove(&spi) else { continue };
                    let up = sa.is_up();
                    let mut rekey = false;
                    if let Some(c) = sa.child_by_in(spi_in) {
                        let kb = self.tunnels[c.tunnel].child_lifetime_kilobytes;
                        c.bytes = bytes;
                        // Soft limit at 90% of the kilobyte lifetime, like the time-based one.
                        if let Some(kb) = kb {
                            if up && c.state == ChildState::Installed && bytes >= kb.saturating_mul(1024) / 10 * 9 {
                                c.state = ChildState::Rekeying;
                                c.rekey_at = None;
                                rekey = true;
                            }
                        }
                    }
                    if rekey {
                        sa.queue.push_back(Req::Rekey(spi_in));
                    }
                    self.pump(now, &mut sa);
                    self.put_back(sa);
                }
            }
            Command::InboundActivity { spi_in } => {
                let mut switch = None;
                for sa in self.sas.values_mut() {
                    if let Some(c) = sa.children.iter_mut().find(|c| c.spi_in == spi_in) {
                        sa.last_rx = sa.last_rx.max(now);
                        // ESP on the new SA: the peer has it, so we can send on it too.
                        if c.outbound_at.take().is_some() && !c.reported_down {
                            switch = Some(c.tunnel);
                        }
                    }
                }
                if let Some(t) = switch {
                    self.events.push_back(Event::ChildSaOutbound { tunnel: self.tunnels[t].name.clone(), spi_in });
                }
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = Some(now);
        for idx in 0..self.tstate.len() {
            if self.tstate[idx].reinit_at.is_some_and(|t| t <= now) {
                self.tstate[idx].reinit_at = None;
                self.initiate(now, idx);
            }
        }
        for spi in self.spis() {
            let Some(mut sa) = self.sas.remove(&spi) else { continue };
            self.sa_timers(now, &mut sa);
            self.pump(now, &mut sa);
            self.put_back(sa);
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The peer's address or UDP port changed (a NAT rebinding, RFC 7296 §2.23): the ESP of
    /// these CHILD_SAs must go to the new `encap` from now on. Drain after `poll_event`.
    pub fn poll_encap_change(&mut self) -> Option<crate::EncapChange> {
        self.encap_changes.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<(Instant, TimerReason)> {
        let mut best: Option<(Instant, TimerReason)> = None;
        let mut consider = |t: Option<Instant>, r: TimerReason| {
            if let Some(t) = t {
                if best.is_none_or(|(b, _)| t < b) {
                    best = Some((t, r));
                }
            }
        };
        for ts in &self.tstate {
            consider(ts.reinit_at, TimerReason::Reinitiate);
        }
        for sa in self.sas.values() {
            consider(sa.out.as_ref().map(|o| o.next), TimerReason::Retransmit);
            consider(sa.deadline, TimerReason::HalfOpenTimeout);
            consider(sa.redundant_at, TimerReason::Expire);
            consider(self.childless_deadline(sa), TimerReason::RekeyChild);
            if sa.is_up() {
                consider(sa.rekey_at, TimerReason::RekeyIke);
                if sa.out.is_none() && sa.queue.is_empty() {
                    if let Some(d) = self.tunnels[sa.tunnel].dpd {
                        consider(Some(sa.last_rx + d.threshold), TimerReason::Liveness);
                    }
                }
                for c in &sa.children {
                    consider(c.rekey_at, TimerReason::RekeyChild);
                    consider(c.outbound_at, TimerReason::RekeyChild);
                    match c.state {
                        ChildState::Rekeyed { until } => consider(Some(until), TimerReason::Expire),
                        ChildState::Installed | ChildState::Rekeying => consider(Some(c.expire_at), TimerReason::Expire),
                        ChildState::Deleting => {}
                    }
                }
            }
        }
        best
    }

    /// When an authenticated IKE message from the peer of `tunnel` was last processed, over
    /// the established IKE SAs carrying it (None when there is none). The daemon compares it
    /// with the time it sent `Command::CheckLiveness` to learn that a silent path is back.
    pub fn last_heard(&self, tunnel: &str) -> Option<Instant> {
        let idx = self.tunnel_index(tunnel)?;
        self.sas
            .values()
            .filter(|sa| sa.is_up() && !sa.dead && (sa.tunnel == idx || sa.children.iter().any(|c| c.tunnel == idx && !c.reported_down)))
            .map(|sa| sa.last_rx)
            .max()
    }

    pub fn ike_sas(&self) -> Vec<IkeSaInfo> {
        let now = self.last_now;
        let mut v: Vec<IkeSaInfo> = self
            .sas
            .values()
            .filter(|sa| sa.state != State::Rekeyed)
            .map(|sa| {
                let t = &self.tunnels[sa.tunnel];
                let since = sa.established.unwrap_or(sa.started);
                IkeSaInfo {
                    tunnel: t.name.clone(),
                    local: sa.path.local,
                    remote: sa.path.remote,
                    status: match sa.state {
                        State::Established => IkeStatus::Ready,
                        State::Deleting | State::Rekeyed => IkeStatus::Deleting,
                        _ => IkeStatus::Negotiating,
                    },
                    role: if sa.initiator { Role::Initiator } else { Role::Responder },
                    spi_i: sa.spi_i,
                    spi_r: sa.spi_r,
                    suite: sa.suite,
                    lifetime: sa.lifetime,
                    active_time: now.map(|n| n.saturating_duration_since(since)).unwrap_or_default(),
                    rekey_in: sa.rekey_at.and_then(|r| now.map(|n| r.saturating_duration_since(n))),
                    nat_local: sa.nat_local,
                    nat_remote: sa.nat_remote,
                    nat_t: self.use_udp(sa),
                    fragmentation: sa.peer_frag && self.globals.fragmentation_mtu.is_some(),
                    child_spis_in: sa.children.iter().map(|c| c.spi_in).collect(),
                    local_id: t.local_addr,
                    remote_id: t.peer_addr,
                    auth: {
                        let c = self.cert[sa.tunnel].as_ref();
                        let l = if c.is_some_and(|c| c.local.is_some()) { "certificate" } else { "pre-shared-key" };
                        let r = if c.is_some_and(|c| c.remote.is_some()) { "certificate" } else { "pre-shared-key" };
                        format!("local {l}, remote {r}")
                    },
                }
            })
            .collect();
        v.sort_by(|a, b| a.tunnel.cmp(&b.tunnel).then(a.spi_i.cmp(&b.spi_i)));
        v
    }

    pub fn child_sas(&self) -> Vec<ChildSaInfo> {
        let now = self.last_now;
        let mut v = Vec::new();
        for sa in self.sas.values() {
            for c in sa.children.iter().filter(|c| !c.reported_down) {
                let t = &self.tunnels[c.tunnel];
                v.push(ChildSaInfo {
                    tunnel: t.name.clone(),
                    local: sa.path.local,
                    peer: sa.path.remote,
                    spi_in: c.spi_in,
                    spi_out: c.spi_out,
                    suite: c.suite,
                    encap: self.encap(sa),
                    local_ts: c.local_ts.clone(),
                    remote_ts: c.remote_ts.clone(),
                    initiator: c.initiator,
                    lifetime: t.child_lifetime,
                    lifetime_kilobytes: t.child_lifetime_kilobytes,
                    bytes: c.bytes,
                    expires_in: now.map(|n| c.expire_at.saturating_duration_since(n)).unwrap_or_default(),
                    rekey_in: c.rekey_at.and_then(|r| now.map(|n| r.saturating_duration_since(n))),
                    ike_spi_i: sa.spi_i,
                    ike_spi_r: sa.spi_r,
                });
                let _ = c.created;
            }
        }
        v.sort_by(|a, b| a.tunnel.cmp(&b.tunnel).then(a.spi_in.cmp(&b.spi_in)));
        v
    }

    // -----------------------------------------------------------------------------------------
    // Bookkeeping helpers

    /// A configured tunnel by name (never one a reconfiguration retired).
    fn tunnel_index(&self, name: &str) -> Option<usize> {
        self.tunnels.iter().enumerate().position(|(i, t)| t.name == name && !self.retired.get(i).copied().unwrap_or(false))
    }

    fn spis(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.sas.keys().copied().collect();
        v.sort_unstable();
        v
    }

    fn put_back(&mut self, mut sa: IkeSa) {
        if let (State::Rekeyed, Some(succ)) = (sa.state, sa.successor) {
            if let Some(mut new) = self.sas.remove(&succ) {
                new.children.append(&mut sa.children);
                let (keep, moved): (VecDeque<Req>, VecDeque<Req>) = sa.queue.drain(..).partition(|r| matches!(r, Req::DeleteIke));
                sa.queue = keep;
                new.queue.extend(moved);
                if let Some(now) = self.last_now {
                    self.pump(now, &mut new);
                }
                self.sas.insert(succ, new);
            }
        }
        if sa.dead {
            self.init_index.retain(|_, v| *v != sa.our_spi());
            return;
        }
        if sa.is_up() && !self.missing_children(&sa).is_empty() {
            if sa.childless_since.is_none() {
                sa.childless_since = self.last_now;
            }
        } else {
            sa.childless_since = None;
            if sa.is_up() {
                sa.childless_tries = 0;
            }
        }
        self.sas.insert(sa.our_spi(), sa);
    }

    fn random_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.rng.fill(&mut b);
        u64::from_be_bytes(b)
    }

    fn new_ike_spi(&mut self) -> u64 {
        loop {
            let s = self.random_u64();
            if s != 0 && !self.sas.contains_key(&s) {
                return s;
            }
        }
    }

    fn new_child_spi(&mut self) -> u32 {
        loop {
            let s = (self.random_u64() >> 32) as u32;
            // SPIs 1..255 are reserved by IANA (RFC 4303 §2.1).
            if s >= 256 && !self.sas.values().any(|sa| sa.children.iter().any(|c| c.spi_in == s)) {
                return s;
            }
        }
    }

    fn nonce(&mut self) -> Vec<u8> {
        let mut n = vec![0u8; NONCE_LEN];
        self.rng.fill(&mut n);
        n
    }

    /// A fraction in [lo, hi) of `d`, randomised so that both peers do not rekey at once.
    fn jitter(&mut self, d: Duration, lo: f64, hi: f64) -> Duration {
        let r = (self.random_u64() >> 11) as f64 / (1u64 << 53) as f64;
        d.mul_f64(lo + (hi - lo) * r)
    }

    /// When to rekey an SA of hard lifetime `l`: ~85-90% (the creator) or ~90-95% (the other
    /// side) of it, but leaving at least a few seconds for retransmissions on short lifetimes.
    /// The two sides use different ranges so that simultaneous rekeys (§2.8.1) stay rare.
    fn soft_lifetime(&mut self, l: Duration, creator: bool) -> Duration {
        let (lo, hi, floor, cap) = if creator { (0.10, 0.15, (8.0, 10.0), 0.33) } else { (0.05, 0.10, (5.0, 7.0), 0.22) };
        let frac = self.jitter(l, lo, hi);
        let fixed = self.jitter(Duration::from_secs(1), floor.0, floor.1).min(l.mul_f64(cap));
        l.saturating_sub(frac.max(fixed))
    }

    fn local_ip(&self, tunnel: usize, path: &Path) -> IpAddr {
        if path.local.ip().is_unspecified() { self.tunnels[tunnel].local_addr } else { path.local.ip() }
    }

    /// UDP encapsulation when NAT was detected (strongSwan 5.9.8's libipsec always fakes it) or
    /// when forced, unless NAT-T is disabled for the tunnel.
    fn use_udp(&self, sa: &IkeSa) -> bool {
        let t = &self.tunnels[sa.tunnel];
        // A peer that moved IKE to 4500 without NAT forces encapsulation on its side
        // (RFC 3948 §2.3 lets either side use it), so we follow.
        !t.nat_t_disable && (sa.nat_local || sa.nat_remote || t.force_udp_encap || sa.path.local.port() == 4500)
    }

    fn encap(&self, sa: &IkeSa) -> esp::Encap {
        if self.use_udp(sa) {
            esp::Encap::Udp { local_port: 4500, remote_port: if sa.path.remote.port() == 500 { 4500 } else { sa.path.remote.port() } }
        } else {
            esp::Encap::Native
        }
    }

    /// A tunnel we initiate must keep a CHILD_SA even when every one was lost (expired during
    /// an outage, deleted by the peer, refused). The IKE SA's initiator recreates it quickly,
    /// the responder only later, so the two sides do not both create one.
    fn childless_deadline(&self, sa: &IkeSa) -> Option<Instant> {
        let since = sa.childless_since?;
        if !sa.is_up() || self.missing_children(sa).is_empty() {
            return None;
        }
        let creating = sa.queue.iter().any(|r| matches!(r, Req::NewChild(_) | Req::Recreate(_)))
            || matches!(sa.out.as_ref().map(|o| &o.pending), Some(Pending::Child { .. }));
        if creating {
            return None;
        }
        let base = if sa.initiator { Duration::from_secs(2) } else { Duration::from_secs(12) };
        Some(since + (base * 2u32.saturating_pow(sa.childless_tries.min(5))).min(Duration::from_secs(120)))
    }

    /// Tunnels to this SA's peer that we initiate and that have no CHILD_SA in it.
    fn missing_children(&self, sa: &IkeSa) -> Vec<usize> {
        let peer = sa.path.remote.ip();
        let local = self.tunnels[sa.tunnel].local_addr;
        (0..self.tunnels.len())
            .filter(|&i| {
                let t = &self.tunnels[i];
                t.peer_addr == peer
                    && t.local_addr == local
                    && t.connection_type != ConnectionType::AnswerOnly
                    && !sa.children.iter().any(|c| c.tunnel == i && !c.reported_down)
            })
            .collect()
    }

    fn schedule_reinit(&mut self, now: Instant, tunnel: usize) {
        if self.tunnels[tunnel].connection_type == ConnectionType::AnswerOnly {
            return;
        }
        let b = self.tstate[tunnel].backoff;
        let delay = self.jitter(b, 0.8, 1.2);
        self.tstate[tunnel].reinit_at = Some(now + delay);
        self.tstate[tunnel].backoff = (b * 2).min(REINIT_BACKOFF_MAX);
    }

    /// Emits the down events of an SA that was up (once).
    fn report_down(&mut self, sa: &mut IkeSa, reason: DownReason) {
        self.report_down_children_only(sa, reason.clone());
        if sa.is_up() {
            let t = &self.tunnels[sa.tunnel];
            self.events.push_back(Event::IkeSaDown { tunnel: t.name.clone(), peer: sa.path.remote.ip(), reason });
        }
    }

    /// Removes an SA: events for what was up, failure for what was negotiating, and for tunnels
    /// we initiate a new attempt after a backoff.
    fn kill(&mut self, now: Instant, sa: &mut IkeSa, reason: DownReason, reinit: bool) {
        if sa.dead {
            return;
        }
        match sa.state {
            State::Established => self.report_down(sa, reason),
            State::InitSent | State::InitDone | State::AuthSent => {
                let t = &self.tunnels[sa.tunnel];
                self.events.push_back(Event::IkeNegotiationFailed { tunnel: t.name.clone(), peer: sa.path.remote.ip(), reason: format!("{reason:?}") });
            }
            State::Deleting | State::Rekeyed => {
                // Children (if any) moved or were reported already.
                self.report_down_children_only(sa, reason);
            }
        }
        sa.dead = true;
        sa.out = None;
        // A half-open responder SA counts too: while it existed our own attempts were held back
        // (`initiate`), so when it dies somebody has to try again.
        if reinit && (sa.initiator || matches!(sa.state, State::Established | State::InitDone)) && !matches!(sa.state, State::Rekeyed | State::Deleting) {
            // Every tunnel we initiate to this peer comes back through one new IKE SA (the first
            // attempt creates it, the others add their CHILD_SAs to it).
            let peer = sa.path.remote.ip();
            for i in 0..self.tunnels.len() {
                if i == sa.tunnel || self.tunnels[i].peer_addr == peer {
                    self.schedule_reinit(now, i);
                }
            }
        }
    }

    fn report_down_children_only(&mut self, sa: &mut IkeSa, reason: DownReason) {
        for c in sa.children.iter_mut().filter(|c| !c.reported_down) {
            c.reported_down = true;
            let tunnel = self.tunnels[c.tunnel].name.clone();
            self.events.push_back(Event::ChildSaDown { tunnel, spi_in: c.spi_in, spi_out: c.spi_out, reason: reason.clone() });
        }
    }

    // -----------------------------------------------------------------------------------------
    // Sending

    fn transmit(&mut self, path: Path, data: Vec<u8>) {
        self.transmits.push_back(Transmit { path, data });
    }

    fn header(&self, sa: &IkeSa, exchange: ExchangeType, mid: u32, response: bool) -> Header {
        let mut f = 0;
        if sa.initiator {
            f |= flags::INITIATOR;
        }
        if response {
            f |= flags::RESPONSE;
        }
        Header::new(sa.spi_i, sa.spi_r, exchange, f, mid)
    }

    /// Encrypts a payload chain into one SK message, or SKF fragments (RFC 7383 §2.5) when it
    /// would exceed the configured MTU and the peer supports fragmentation.
    fn protect(&mut self, sa: &IkeSa, header: Header, first: PayloadType, chain: &[u8]) -> Vec<Vec<u8>> {
        let Some(keys) = sa.keys.as_ref() else { return Vec::new() };
        // IP + UDP headers, plus the non-ESP marker on port 4500.
        let outer = 28 + if sa.path.local.port() == 500 { 0 } else { 4 };
        let whole = outer + wire::ike::HEADER_LEN + keys.sk_overhead(chain.len()) + chain.len();
        let mtu = self.globals.fragmentation_mtu.map(usize::from);
        match mtu {
            Some(mtu) if sa.peer_frag && whole > mtu && !chain.is_empty() && header.exchange != ExchangeType::IkeSaInit => {
                let fixed = outer + wire::ike::HEADER_LEN + 4;
                let mut n = mtu.saturating_sub(fixed + keys.sk_overhead(0)).max(64);
                while n > 64 && fixed + keys.sk_overhead(n) + n > mtu {
                    n -= 1;
                }
                let total = chain.len().div_ceil(n).clamp(1, usize::from(MAX_FRAGMENTS)) as u16;
                let n = chain.len().div_ceil(usize::from(total));
                let mut out = Vec::new();
                for (i, part) in chain.chunks(n).enumerate() {
                    // RFC 7383 §2.5: only the first fragment names the first inner payload.
                    let fi = if i == 0 { first } else { PayloadType::NoNext };
                    if let Ok(m) = keys.protect(sa.initiator, &header, fi, part, Some((i as u16 + 1, total)), self.rng.as_mut()) {
                        out.push(m);
                    }
                }
                out
            }
            _ => keys.protect(sa.initiator, &header, first, chain, None, self.rng.as_mut()).into_iter().collect(),
        }
    }

    fn send_request(&mut self, now: Instant, sa: &mut IkeSa, exchange: ExchangeType, payloads: &[Payload<'_>], pending: Pending) {
        let (first, chain) = emit_chain(payloads);
        let mid = sa.next_mid;
        tracing::debug!(spi = format_args!("{:016x}", sa.our_spi()), %exchange, mid, what = pending.name(), "request");
        sa.next_mid = sa.next_mid.wrapping_add(1);
        let header = self.header(sa, exchange, mid, false);
        let datagrams = self.protect(sa, header, first, &chain);
        for d in &datagrams {
            self.transmit(sa.path, d.clone());
        }
        let first_timeout = self.retransmit_interval(sa, &pending, 0);
        sa.out = Some(Outstanding { mid, datagrams, pending, tries: 0, next: now + first_timeout, sent: now });
    }

    /// Sends the outstanding request again if it last left at least `KNOCK_INTERVAL` ago,
    /// without touching its retransmission schedule or try count (RFC 7296 §2.1 lets the
    /// initiator retransmit at any time; the message is identical).
    fn knock(&mut self, now: Instant, sa: &mut IkeSa) {
        let Some(o) = sa.out.as_mut() else { return };
        if now.saturating_duration_since(o.sent) < KNOCK_INTERVAL {
            return;
        }
        o.sent = now;
        let datagrams = o.datagrams.clone();
        if let Pending::Init { copies, .. } = o.pending {
            // See `sa_timers`: AUTH signs the request that left last.
            sa.msg1 = datagrams.first().cloned().unwrap_or_default();
            sa.msg1_guess = copies;
        }
        for d in datagrams {
            self.transmit(sa.path, d);
        }
    }

    fn retransmit_interval(&self, sa: &IkeSa, pending: &Pending, tries: u32) -> Duration {
        if let (Pending::Dpd, Some(d)) = (pending, self.tunnels[sa.tunnel].dpd) {
            return d.retry.max(Duration::from_millis(100));
        }
        // Exponential backoff from the configured base (RFC 7296 §2.1).
        let d = self.globals.retransmit_base.max(Duration::from_millis(50)) * 2u32.saturating_pow(tries.min(16));
        if let Pending::Init { .. } = pending {
            // IKE_SA_INIT creates no state at the peer before it answers: keep knocking at a
            // steady pace, so a restarted peer is found within seconds, not minutes.
            return d.min(REINIT_BACKOFF_MAX);
        }
        d
    }

    fn send_response(&mut self, sa: &mut IkeSa, exchange: ExchangeType, mid: u32, payloads: &[Payload<'_>]) {
        let (first, chain) = emit_chain(payloads);
        let header = self.header(sa, exchange, mid, true);
        let datagrams = self.protect(sa, header, first, &chain);
        for d in &datagrams {
            self.transmit(sa.path, d.clone());
        }
        sa.last_resp = Some((mid, datagrams));
    }

    fn send_error(&mut self, sa: &mut IkeSa, exchange: ExchangeType, mid: u32, e: &ReqError) {
        let (t, data) = e.notify();
        self.send_response(sa, exchange, mid, &[Payload::notify(t, &data)]);
    }

    /// Starts queued requests while the window (size 1) is free.
    fn pump(&mut self, now: Instant, sa: &mut IkeSa) {
        // Requests that must wait for the successor of a rekeyed IKE SA (`put_back` moves them).
        let mut kept = VecDeque::new();
        while !sa.dead && sa.out.is_none() && matches!(sa.state, State::Established | State::Deleting | State::Rekeyed) {
            let Some(req) = sa.queue.pop_front() else { break };
            if sa.state != State::Established && !matches!(req, Req::DeleteIke) {
                if sa.state == State::Rekeyed {
                    kept.push_back(req);
                }
                continue;
            }
            match req {
                Req::Dpd => self.send_request(now, sa, ExchangeType::Informational, &[], Pending::Dpd),
                Req::DeleteIke => {
                    let d = Payload::Delete(Delete { protocol: ProtocolId::Ike, spi_size: 0, spis: Vec::new() });
                    self.send_request(now, sa, ExchangeType::Informational, &[d], Pending::DeleteIke);
                }
                Req::DeleteChildren(spis) => {
                    let spis: Vec<u32> = spis.into_iter().filter(|s| sa.children.iter().any(|c| c.spi_in == *s)).collect();
                    if spis.is_empty() {
                        continue;
                    }
                    let bytes: Vec<[u8; 4]> = spis.iter().map(|s| s.to_be_bytes()).collect();
                    let d = Payload::Delete(Delete { protocol: ProtocolId::Esp, spi_size: 4, spis: bytes.iter().map(|b| &b[..]).collect() });
                    self.send_request(now, sa, ExchangeType::Informational, &[d], Pending::DeleteChildren(spis));
                }
                Req::Rekey(old) => {
                    let Some(tunnel) = sa.children.iter().find(|c| c.spi_in == old && c.state == ChildState::Rekeying).map(|c| c.tunnel) else {
                        continue;
                    };
                    if let Err(e) = self.start_child(now, sa, Some(old), true, tunnel) {
                        tracing::warn!("CREATE_CHILD_SA not started: {e}");
                    }
                }
                Req::DeleteRaw(spis) => {
                    let bytes: Vec<[u8; 4]> = spis.iter().map(|s| s.to_be_bytes()).collect();
                    let d = Payload::Delete(Delete { protocol: ProtocolId::Esp, spi_size: 4, spis: bytes.iter().map(|b| &b[..]).collect() });
                    self.send_request(now, sa, ExchangeType::Informational, &[d], Pending::DeleteChildren(spis));
                }
                Req::NewChild(tunnel) => {
                    // The peer may have created one for this tunnel meanwhile (shared IKE SA).
                    if sa.children.iter().any(|c| c.tunnel == tunnel && !c.reported_down) {
                        continue;
                    }
                    if let Err(e) = self.start_child(now, sa, None, true, tunnel) {
                        tracing::warn!("CREATE_CHILD_SA not started: {e}");
                    }
                }
                Req::Recreate(old) => {
                    let Some(tunnel) = sa.children.iter().find(|c| c.spi_in == old && !c.reported_down).map(|c| c.tunnel) else {
                        continue;
                    };
                    // Another live SA of the tunnel makes the replacement unnecessary: just
                    // drop the one the peer no longer knows.
                    if sa.children.iter().any(|c| c.tunnel == tunnel && c.spi_in != old && !c.reported_down && c.state != ChildState::Deleting) {
                        if let Some(c) = sa.child_by_in(old) {
                            c.state = ChildState::Rekeyed { until: now };
                        }
                        continue;
                    }
                    if let Err(e) = self.start_child(now, sa, Some(old), false, tunnel) {
                        tracing::warn!("CREATE_CHILD_SA not started: {e}");
                    }
                }
                Req::RekeyIke => {
                    if let Err(e) = self.start_ike_rekey(now, sa) {
                        tracing::warn!("IKE rekey not started: {e}");
                    }
                }
            }
        }
        kept.append(&mut sa.queue);
        sa.queue = kept;
    }

    // -----------------------------------------------------------------------------------------
    // Timers

    fn sa_timers(&mut self, now: Instant, sa: &mut IkeSa) {
        if let Some(out) = sa.out.as_mut() {
            if out.next <= now {
                let tries = out.tries + 1;
                if tries > self.globals.retransmit_tries {
                    let dead_reason = DownReason::PeerDead;
                    match sa.state {
                        State::Deleting | State::Rekeyed => {
                            sa.dead = true;
                        }
                        State::InitSent => {
                            // Nobody answers yet: start over with fresh values at once, so the
                            // gap between attempts stays at the capped retransmit interval.
                            self.kill(now, sa, dead_reason, false);
                            if self.tunnels[sa.tunnel].connection_type != ConnectionType::AnswerOnly {
                                let d = self.jitter(Duration::from_millis(500), 0.5, 1.5);
                                self.tstate[sa.tunnel].reinit_at = Some(now + d);
                            }
                        }
                        _ => self.kill(now, sa, dead_reason, true),
                    }
                    return;
                }
                let datagrams = out.datagrams.clone();
                if let Pending::Init { copies, .. } = out.pending {
                    // AUTH signs the IKE_SA_INIT request the responder received (RFC 7296
                    // §2.15). After a COOKIE we cannot know which copy that was: take the one
                    // that left last (the responder that demanded the cookie answers that
                    // one); if it was the other, the peer refuses our AUTH and the SA is
                    // initiated again (`on_auth_response` says why).
                    sa.msg1 = datagrams.first().cloned().unwrap_or_default();
                    sa.msg1_guess = copies;
                }
                for d in datagrams {
                    self.transmit(sa.path, d);
                }
                let out = sa.out.as_ref().map(|o| &o.pending);
                let iv = out.map(|p| self.retransmit_interval(sa, p, tries)).unwrap_or_default();
                if let Some(o) = sa.out.as_mut() {
                    o.tries = tries;
                    o.next = now + iv;
                    o.sent = now;
                }
            }
        }
        if sa.deadline.is_some_and(|d| d <= now) {
            sa.deadline = None;
            if !sa.is_up() {
                self.kill(now, sa, DownReason::PeerDead, true);
                return;
            }
            if matches!(sa.state, State::Rekeyed | State::Deleting) {
                sa.dead = true;
                return;
            }
        }
        if sa.redundant_at.is_some_and(|t| t <= now) {
            sa.redundant_at = None;
            let still_duplicate = sa.is_up() && self.sas.values().any(|o| o.path.remote.ip() == sa.path.remote.ip() && o.is_up() && !o.dead);
            if still_duplicate {
                if sa.initiator {
                    self.report_down(sa, DownReason::Redundant);
                    sa.state = State::Deleting;
                    sa.queue.clear();
                    sa.queue.push_back(Req::DeleteIke);
                } else {
                    // The peer should have deleted its duplicate by now.
                    self.kill(now, sa, DownReason::Redundant, false);
                }
                return;
            }
        }
        if !sa.is_up() {
            return;
        }
        if sa.rekey_at.is_some_and(|t| t <= now) {
            sa.rekey_at = None;
            sa.queue.push_back(Req::RekeyIke);
        }
        if self.childless_deadline(sa).is_some_and(|t| t <= now) {
            sa.childless_since = Some(now);
            sa.childless_tries += 1;
            for t in self.missing_children(sa) {
                sa.queue.push_back(Req::NewChild(t));
            }
        }
        if let Some(d) = self.tunnels[sa.tunnel].dpd {
            if sa.out.is_none() && sa.queue.is_empty() && sa.last_rx + d.threshold <= now {
                sa.queue.push_back(Req::Dpd);
            }
        }
        let mut expired = Vec::new();
        for c in sa.children.iter_mut() {
            if c.outbound_at.is_some_and(|t| t <= now) {
                c.outbound_at = None;
                if !c.reported_down {
                    self.events.push_back(Event::ChildSaOutbound { tunnel: self.tunnels[c.tunnel].name.clone(), spi_in: c.spi_in });
                }
            }
            if c.rekey_at.is_some_and(|t| t <= now) {
                // Re-armed as a watchdog: a rekey whose exchange got lost (its IKE SA was
                // replaced or died) is started again.
                c.rekey_at = Some(now + REKEY_WATCHDOG);
                let spi = c.spi_in;
                tracing::debug!(spi_in = format_args!("{spi:08x}"), state = ?c.state, "child rekey timer");
                let queued = sa.queue.iter().any(|r| matches!(r, Req::Rekey(x) | Req::Recreate(x) if *x == spi));
                let in_flight = matches!(sa.out.as_ref().map(|o| &o.pending), Some(Pending::Child { old: Some(x), .. }) if *x == spi);
                match c.state {
                    ChildState::Installed => {
                        c.state = ChildState::Rekeying;
                        sa.queue.push_back(Req::Rekey(spi));
                    }
                    ChildState::Rekeying if !queued && !in_flight => sa.queue.push_back(Req::Rekey(spi)),
                    _ => c.rekey_at = None,
                }
            }
            match c.state {
                ChildState::Rekeyed { until } if until <= now => expired.push((c.spi_in, DownReason::Rekeyed)),
                ChildState::Installed | ChildState::Rekeying if c.expire_at <= now => expired.push((c.spi_in, DownReason::Expired)),
                _ => {}
            }
        }
        for (spi, reason) in expired {
            if let Some(pos) = sa.children.iter().position(|c| c.spi_in == spi) {
                let c = sa.children.remove(pos);
                tracing::debug!(spi_in = format_args!("{:08x}", c.spi_in), ?reason, "child timed out");
                if !c.reported_down {
                    let tunnel = self.tunnels[c.tunnel].name.clone();
                    self.events.push_back(Event::ChildSaDown { tunnel, spi_in: c.spi_in, spi_out: c.spi_out, reason: reason.clone() });
                }
                // Tell the peer too: it may still have it installed (a lost Delete, or a peer
                // that never deletes replaced SAs), and an SA on one side only is a black hole.
                let c2 = Child { reported_down: true, state: ChildState::Deleting, rekey_at: None, ..c };
                sa.children.push(c2);
                sa.queue.push_back(Req::DeleteChildren(vec![spi]));
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // IKE_SA_INIT, initiator

    fn initiate(&mut self, now: Instant, idx: usize) {
        let peer = self.tunnels[idx].peer_addr;
        let local = self.tunnels[idx].local_addr;
        // One IKE SA per peer: another tunnel to the same peer adds a CHILD_SA to it.
        let existing = self
            .sas
            .values()
            .find(|sa| sa.path.remote.ip() == peer && self.tunnels[sa.tunnel].local_addr == local && !sa.dead && !matches!(sa.state, State::Deleting | State::Rekeyed))
            .map(|sa| sa.our_spi());
        if let Some(spi) = existing {
            if let Some(mut sa) = self.sas.remove(&spi) {
                let has_child = sa.children.iter().any(|c| c.tunnel == idx && !c.reported_down);
                let pending = sa.queue.iter().any(|r| matches!(r, Req::NewChild(t) if *t == idx))
                    || matches!(sa.out.as_ref().map(|o| &o.pending), Some(Pending::Child { old: None, tunnel, .. }) if *tunnel == idx);
                // While the IKE SA is still negotiating, its missing children follow once it is up.
                if sa.is_up() && !has_child && !pending {
                    sa.queue.push_back(Req::NewChild(idx));
                    self.pump(now, &mut sa);
                }
                if !sa.is_up() && sa.initiator {
                    // Traffic is waiting for this tunnel: send the pending request again now
                    // instead of at its backed-off retransmission time, so a path that just
                    // came back is used within a knock interval (issue 3: resume <= 2 s after
                    // a silent outage). Extra sends do not count as retransmission tries.
                    self.knock(now, &mut sa);
                }
                if !sa.is_up() && self.tunnels[idx].connection_type != ConnectionType::AnswerOnly {
                    // Held back by a negotiation that may still fail (e.g. the peer's attempt,
                    // half-open here): look again later rather than rely on it.
                    let d = self.jitter(REINIT_BACKOFF_MAX, 0.8, 1.2);
                    self.tstate[idx].reinit_at = Some(now + d);
                }
                self.put_back(sa);
            }
            return;
        }
        let Some(group) = self.tunnels[idx].ike_policies.iter().flat_map(|p| p.groups.iter()).next().copied() else { return };
        let spi_i = self.new_ike_spi();
        let ni = self.nonce();
        let path = Path { local: SocketAddr::new(self.tunnels[idx].local_addr, 500), remote: SocketAddr::new(peer, 500) };
        let mut sa = IkeSa {
            tunnel: idx,
            initiator: true,
            spi_i,
            spi_r: 0,
            path,
            state: State::InitSent,
            suite: None,
            keys: None,
            ni,
            nr: Vec::new(),
            msg1: Vec::new(),
            msg1_guess: false,
            msg2: Vec::new(),
            nat_local: false,
            nat_remote: false,
            peer_frag: false,
            peer_holdfast: false,
            peer_hashes: None,
            next_mid: 0,
            peer_mid: 0,
            out: None,
            queue: VecDeque::new(),
            last_resp: None,
            children: Vec::new(),
            started: now,
            established: None,
            last_rx: now,
            lifetime: None,
            rekey_at: None,
            deadline: None,
            reasm: None,
            redundant_at: None,
            successor: None,
            childless_since: None,
            childless_tries: 0,
            collisions: Vec::new(),
            dead: false,
        };
        if self.send_init(now, &mut sa, group, None, 0).is_err() {
            self.schedule_reinit(now, idx);
            return;
        }
        self.put_back(sa);
    }

    fn send_init(&mut self, now: Instant, sa: &mut IkeSa, group: DhGroup, cookie: Option<Vec<u8>>, restarts: u32) -> Result<(), crypto::CryptoError> {
        let (dh, public) = DhPrivate::generate(group)?;
        let msg = self.init_request(sa, group, &public, cookie.as_deref());
        sa.msg1 = msg.clone();
        sa.msg1_guess = false;
        sa.next_mid = 1;
        self.transmit(sa.path, msg.clone());
        let pending = Pending::Init { dh: Some(dh), ke: public, group, cookie, restarts, copies: false };
        let iv = self.retransmit_interval(sa, &pending, 0);
        sa.out = Some(Outstanding { mid: 0, datagrams: vec![msg], pending, tries: 0, next: now + iv, sent: now });
        Ok(())
    }

    /// Our IKE_SA_INIT request with this KE value (and cookie, RFC 7296 §2.6: first payload).
    fn init_request(&self, sa: &IkeSa, group: DhGroup, public: &[u8], cookie: Option<&[u8]>) -> Vec<u8> {
        let t = &self.tunnels[sa.tunnel];
        let offers = ike_offers(&t.ike_policies);
        let local = SocketAddr::new(self.local_ip(sa.tunnel, &sa.path), sa.path.local.port());
        let nat_src = self.nat_source_hash(sa.tunnel, sa.spi_i, 0, local);
        let nat_dst = nat_hash(sa.spi_i, 0, sa.path.remote);
        let mut payloads = Vec::new();
        if let Some(c) = cookie {
            // RFC 7296 §2.6: the cookie notify comes first.
            payloads.push(Payload::notify(NotifyType::Cookie, c));
        }
        payloads.push(Payload::Sa(offers_to_wire(&offers, ProtocolId::Ike, &[], Some(group))));
        payloads.push(Payload::Ke { group: group.number(), data: public });
        payloads.push(Payload::Nonce(&sa.ni));
        payloads.push(Payload::notify(NotifyType::NatDetectionSourceIp, &nat_src));
        payloads.push(Payload::notify(NotifyType::NatDetectionDestinationIp, &nat_dst));
        if self.globals.fragmentation_mtu.is_some() {
            payloads.push(Payload::notify(NotifyType::Ikev2FragmentationSupported, &[]));
        }
        payloads.push(Payload::VendorId(HOLDFAST_VID));
        // RFC 7427 §4: announce the hashes we accept when signatures may be used.
        let sha = crate::cert_auth::signature_hash_algorithms_data();
        if self.cert[sa.tunnel].is_some() {
            payloads.push(Payload::notify(NotifyType::SignatureHashAlgorithms, &sha));
        }
        Message { header: Header::new(sa.spi_i, 0, ExchangeType::IkeSaInit, flags::INITIATOR, 0), payloads }.emit()
    }

    fn on_init_response(&mut self, now: Instant, sa: &mut IkeSa, data: &[u8], msg: &Message<'_>) -> Result<(), Drop> {
        let Some(Outstanding { pending: Pending::Init { dh, ke, group, cookie, restarts, .. }, .. }) = sa.out.as_mut() else {
            return Err(Drop::Unexpected("IKE_SA_INIT response without request"));
        };
        let (group, restarts) = (*group, *restarts);
        let ps = &msg.payloads;
        if let Some(c) = notify_of(ps, NotifyType::Cookie) {
            if cookie.as_deref() == Some(c.data) {
                // The same cookie for another copy of the request (a burst of retransmissions
                // reaching a responder over its threshold): what we send already carries it.
                // Counting it would spend the restart budget INVALID_KE_PAYLOAD shares.
                return Err(Drop::Unexpected("duplicate COOKIE"));
            }
            if restarts >= 3 || c.data.is_empty() || c.data.len() > 64 {
                return Err(Drop::Protocol("cookie loop".into()));
            }
            // RFC 7296 §2.6: the same request again, the cookie first and "all other payloads
            // unchanged" (same SPIi, Ni and KEi), so that whichever copy the responder answers
            // yields the keys it has. Another copy of the plain request may have been answered
            // for real (a COOKIE leaves a responder before a response that needed a DH
            // computation): the cookie'd request leaves only after KNOCK_INTERVAL, and a real
            // response arriving before that is the answer to the plain one (msg1 stays).
            let c = c.data.to_vec();
            let public = ke.clone();
            let msg = self.init_request(sa, group, &public, Some(&c));
            if let Some(Outstanding { pending: Pending::Init { cookie, restarts, copies, .. }, datagrams, next, sent, tries, .. }) = sa.out.as_mut() {
                *cookie = Some(c);
                *restarts += 1;
                *copies = true;
                *datagrams = vec![msg];
                // Its first send at `next` counts as a retransmission; harmless for
                // IKE_SA_INIT, which the tunnel initiates again when the tries run out.
                *tries = 0;
                *next = now + KNOCK_INTERVAL;
                // Keeps `knock` from sending it earlier.
                *sent = now;
            }
            return Ok(());
        }
        if let Some(n) = notify_of(ps, NotifyType::InvalidKePayload) {
            // RFC 7296 §1.2: retry with the group the responder asked for, if we allow it.
            let wanted = (n.data.len() == 2).then(|| u16::from_be_bytes([n.data[0], n.data[1]])).and_then(DhGroup::from_number);
            let allowed = self.tunnels[sa.tunnel].ike_policies.iter().any(|p| wanted.is_some_and(|w| p.groups.contains(&w)));
            if let (Some(w), true) = (wanted, allowed) {
                if w == group {
                    // A second copy of the answer that made us switch: the request in flight
                    // already carries group w.
                    return Err(Drop::Unexpected("duplicate INVALID_KE_PAYLOAD"));
                }
                if restarts < 3 {
                    let c = cookie.clone();
                    return self.send_init(now, sa, w, c, restarts + 1).map_err(|e| Drop::Protocol(e.to_string()));
                }
            }
            self.kill(now, sa, DownReason::PeerDead, true);
            return Err(Drop::Rejected("INVALID_KE_PAYLOAD with a group we do not allow".into()));
        }
        if let Some(e) = first_error(ps) {
            let reason = format!("peer answered IKE_SA_INIT with {:?}", e.ty);
            self.fail_negotiation(now, sa, &reason);
            return Err(Drop::Rejected(reason));
        }
        let fail = |why: &str| Drop::Protocol(why.to_string());
        if msg.header.spi_r == 0 {
            return Err(fail("responder SPI is zero"));
        }
        let offers = ike_offers(&self.tunnels[sa.tunnel].ike_policies);
        let props = sa_of(ps).ok_or_else(|| fail("no SA payload"))?;
        if props.len() != 1 {
            return Err(fail("responder chose more than one proposal"));
        }
        let (chosen, _, oi) = select(props, &offers, ProtocolId::Ike).ok_or_else(|| fail("responder chose a proposal we did not offer"))?;
        let suite = chosen.ike_suite().ok_or_else(|| fail("incomplete proposal"))?;
        let (kg, kd) = ke_of(ps).ok_or_else(|| fail("no KE"))?;
        if kg != group.number() || suite.dh != group {
            return Err(fail("KE group differs from the chosen group"));
        }
        let nr = nonce_of(ps).map_err(|e| fail(&e.to_string()))?.to_vec();
        let Some(dh) = dh.take() else { return Err(fail("DH already used")) };
        let shared = match dh.agree(kd) {
            Ok(s) => s,
            Err(e) => {
                self.fail_negotiation(now, sa, "invalid peer KE");
                return Err(Drop::Protocol(e.to_string()));
            }
        };
        sa.spi_r = msg.header.spi_r;
        let local = SocketAddr::new(self.local_ip(sa.tunnel, &sa.path), sa.path.local.port());
        self.detect_nat(sa, ps, msg.header.spi_i, msg.header.spi_r, local);
        sa.peer_frag = notify_of(ps, NotifyType::Ikev2FragmentationSupported).is_some();
        sa.peer_holdfast = ps.iter().any(|p| matches!(p, Payload::VendorId(v) if *v == HOLDFAST_VID));
        sa.peer_hashes = crate::cert_auth::peer_signature_hashes(ps);
        let skeyseed = IkeKeys::skeyseed(suite.prf, &sa.ni, &nr, &shared);
        sa.keys = Some(IkeKeys::derive(suite, &skeyseed, &sa.ni, &nr, sa.spi_i, sa.spi_r));
        sa.suite = Some(suite);
        sa.lifetime = offers.get(oi).and_then(|o| o.lifetime);
        sa.nr = nr;
        sa.msg2 = data.to_vec();
        sa.out = None;
        // RFC 7296 §2.23: with NAT (or forced encapsulation) move to port 4500 for IKE_AUTH on.
        if self.use_udp(sa) {
            sa.path.local = with_port(sa.path.local, 4500);
            sa.path.remote = with_port(sa.path.remote, 4500);
        }
        self.send_auth(now, sa);
        Ok(())
    }

    fn fail_negotiation(&mut self, now: Instant, sa: &mut IkeSa, reason: &str) {
        let t = &self.tunnels[sa.tunnel];
        self.events.push_back(Event::IkeNegotiationFailed { tunnel: t.name.clone(), peer: sa.path.remote.ip(), reason: reason.to_string() });
        sa.dead = true;
        sa.out = None;
        if sa.initiator {
            self.schedule_reinit(now, sa.tunnel);
        }
    }

    /// Our NAT_DETECTION_SOURCE_IP. With forced encapsulation it deliberately does not match
    /// (RFC 7296 §2.23 leaves the content to the sender; strongSwan's `encap = yes` does the
    /// same), so the peer believes we are behind a NAT and encapsulates ESP too.
    fn nat_source_hash(&self, tunnel: usize, spi_i: u64, spi_r: u64, local: SocketAddr) -> Vec<u8> {
        let t = &self.tunnels[tunnel];
        if t.force_udp_encap && !t.nat_t_disable {
            nat_hash(spi_i, spi_r, SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0))
        } else {
            nat_hash(spi_i, spi_r, local)
        }
    }

    /// RFC 7296 §2.23. The hashes in a message cover the SPIs as they appear in its header.
    fn detect_nat(&self, sa: &mut IkeSa, ps: &[Payload<'_>], spi_i: u64, spi_r: u64, local: SocketAddr) {
        let src: Vec<&[u8]> = ps.iter().filter_map(|p| match p {
            Payload::Notify(n) if n.ty == NotifyType::NatDetectionSourceIp => Some(n.data),
            _ => None,
        }).collect();
        let dst: Vec<&[u8]> = ps.iter().filter_map(|p| match p {
            Payload::Notify(n) if n.ty == NotifyType::NatDetectionDestinationIp => Some(n.data),
            _ => None,
        }).collect();
        if !src.is_empty() {
            let h = nat_hash(spi_i, spi_r, sa.path.remote);
            sa.nat_remote = !src.contains(&h.as_slice());
        }
        if !dst.is_empty() {
            let h = nat_hash(spi_i, spi_r, local);
            sa.nat_local = !dst.contains(&h.as_slice());
        }
    }

    // -----------------------------------------------------------------------------------------
    // IKE_SA_INIT, responder

    fn cookie_for(&self, ni: &[u8], peer: IpAddr, spi_i: u64) -> Vec<u8> {
        // RFC 7296 §2.6: Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>).
        let ip = match peer {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        let mut c = vec![1u8];
        c.extend(crypto::hmac(HashAlg::Sha256, &self.cookie_secret, &[ni, &ip, &spi_i.to_be_bytes()]));
        c
    }

    fn send_init_error(&mut self, path: Path, hdr: &Header, t: NotifyType, data: &[u8]) {
        let m = Message { header: Header::new(hdr.spi_i, 0, ExchangeType::IkeSaInit, flags::RESPONSE, 0), payloads: vec![Payload::notify(t, data)] };
        self.transmit(path, m.emit());
    }

    fn on_init_request(&mut self, now: Instant, path: Path, data: &[u8], hdr: Header) -> Result<(), Drop> {
        if hdr.spi_r != 0 || hdr.message_id != 0 || !hdr.is_initiator() {
            return Err(Drop::Unexpected("IKE_SA_INIT request with responder SPI or message ID"));
        }
        let peer = path.remote.ip();
        if let Some(spi) = self.init_index.get(&(peer, hdr.spi_i)).copied() {
            if let Some(sa) = self.sas.get(&spi) {
                if sa.msg1 == data {
                    if let Some((_, d)) = sa.last_resp.as_ref().filter(|(m, _)| *m == 0) {
                        for x in d.clone() {
                            self.transmit(path, x);
                        }
                    }
                    return Ok(());
                }
                return Err(Drop::Unexpected("second IKE_SA_INIT for an existing SA"));
            }
        }
        let idx = self.tunnels.iter().position(|t| t.peer_addr == peer).ok_or(Drop::UnknownPeer(peer))?;
        let msg = Message::parse(data)?;
        let ps = &msg.payloads;
        if let Some(t) = critical_unknown(ps) {
            self.send_init_error(path, &hdr, NotifyType::UnsupportedCriticalPayload, &[t]);
            return Ok(());
        }
        // RFC 7296 §2.6 and DESIGN.md: decide admission before allocating state.
        let half_open = self.sas.values().filter(|s| s.state == State::InitDone).count() as u64;
        let max = u64::from(self.globals.max_in_negotiation.max(1));
        if half_open >= max {
            return Err(Drop::Overloaded);
        }
        let ni = match nonce_of(ps) {
            Ok(n) => n,
            Err(_) => {
                self.send_init_error(path, &hdr, NotifyType::InvalidSyntax, &[]);
                return Ok(());
            }
        };
        let threshold = max * u64::from(self.globals.cookie_challenge_percent) / 100;
        if half_open >= threshold {
            let expected = self.cookie_for(ni, peer, hdr.spi_i);
            let presented = match ps.first() {
                Some(Payload::Notify(n)) if n.ty == NotifyType::Cookie => Some(n.data),
                _ => None,
            };
            if !presented.is_some_and(|c| ct_eq(c, &expected)) {
                self.send_init_error(path, &hdr, NotifyType::Cookie, &expected);
                return Ok(());
            }
        }
        let offers = ike_offers(&self.tunnels[idx].ike_policies);
        let ke_group = ke_of(ps).map(|(g, _)| g);
        let Some((chosen, _, oi)) = sa_of(ps).and_then(|p| select_with_ke(p, &offers, ProtocolId::Ike, ke_group)) else {
            self.send_init_error(path, &hdr, NotifyType::NoProposalChosen, &[]);
            self.events.push_back(Event::IkeNegotiationFailed { tunnel: self.tunnels[idx].name.clone(), peer, reason: "no acceptable IKE proposal".into() });
            return Ok(());
        };
        let Some(suite) = chosen.ike_suite() else { return Err(Drop::Protocol("incomplete proposal".into())) };
        let Some((kg, kd)) = ke_of(ps) else {
            self.send_init_error(path, &hdr, NotifyType::InvalidSyntax, &[]);
            return Ok(());
        };
        if kg != suite.dh.number() {
            self.send_init_error(path, &hdr, NotifyType::InvalidKePayload, &suite.dh.number().to_be_bytes());
            return Ok(());
        }
        let (dh, public) = DhPrivate::generate(suite.dh).map_err(|e| Drop::Protocol(e.to_string()))?;
        let Ok(shared) = dh.agree(kd) else {
            self.send_init_error(path, &hdr, NotifyType::InvalidSyntax, &[]);
            return Ok(());
        };
        let spi_r = self.new_ike_spi();
        let nr = self.nonce();
        let mut sa = IkeSa {
            tunnel: idx,
            initiator: false,
            spi_i: hdr.spi_i,
            spi_r,
            path,
            state: State::InitDone,
            suite: Some(suite),
            keys: None,
            ni: ni.to_vec(),
            nr,
            msg1: data.to_vec(),
            msg1_guess: false,
            msg2: Vec::new(),
            nat_local: false,
            nat_remote: false,
            peer_frag: notify_of(ps, NotifyType::Ikev2FragmentationSupported).is_some(),
            peer_holdfast: ps.iter().any(|p| matches!(p, Payload::VendorId(v) if *v == HOLDFAST_VID)),
            peer_hashes: crate::cert_auth::peer_signature_hashes(ps),
            next_mid: 0,
            peer_mid: 1,
            out: None,
            queue: VecDeque::new(),
            last_resp: None,
            children: Vec::new(),
            started: now,
            established: None,
            last_rx: now,
            lifetime: offers.get(oi).and_then(|o| o.lifetime),
            rekey_at: None,
            deadline: Some(now + HALF_OPEN_TIMEOUT),
            reasm: None,
            redundant_at: None,
            successor: None,
            childless_since: None,
            childless_tries: 0,
            collisions: Vec::new(),
            dead: false,
        };
        let local = SocketAddr::new(self.local_ip(idx, &path), path.local.port());
        self.detect_nat(&mut sa, ps, hdr.spi_i, 0, local);
        let skeyseed = IkeKeys::skeyseed(suite.prf, &sa.ni, &sa.nr, &shared);
        sa.keys = Some(IkeKeys::derive(suite, &skeyseed, &sa.ni, &sa.nr, sa.spi_i, sa.spi_r));
        let nat_src = self.nat_source_hash(idx, sa.spi_i, spi_r, local);
        let nat_dst = nat_hash(sa.spi_i, spi_r, path.remote);
        let mut payloads = vec![
            Payload::Sa(vec![chosen.to_wire(ProtocolId::Ike, &[])]),
            Payload::Ke { group: suite.dh.number(), data: &public },
            Payload::Nonce(&sa.nr),
            Payload::notify(NotifyType::NatDetectionSourceIp, &nat_src),
            Payload::notify(NotifyType::NatDetectionDestinationIp, &nat_dst),
        ];
        if sa.peer_frag && self.globals.fragmentation_mtu.is_some() {
            payloads.push(Payload::notify(NotifyType::Ikev2FragmentationSupported, &[]));
        } else {
            sa.peer_frag = false;
        }
        payloads.push(Payload::VendorId(HOLDFAST_VID));
        let sha = crate::cert_auth::signature_hash_algorithms_data();
        let cert = self.cert[idx].clone();
        if let Some(c) = &cert {
            payloads.push(Payload::notify(NotifyType::SignatureHashAlgorithms, &sha));
            if let Some(v) = &c.remote {
                // §3.7: ask for a certificate from our trust anchors.
                payloads.push(v.certreq_payload());
            }
        }
        let resp = Message { header: Header::new(sa.spi_i, spi_r, ExchangeType::IkeSaInit, flags::RESPONSE, 0), payloads }.emit();
        sa.msg2 = resp.clone();
        self.transmit(path, resp.clone());
        sa.last_resp = Some((0, vec![resp]));
        self.init_index.insert((peer, sa.spi_i), spi_r);
        self.put_back(sa);
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Encrypted exchanges

    fn on_sa_message(&mut self, now: Instant, sa: &mut IkeSa, path: Path, data: &[u8], hdr: Header) -> Result<(), Drop> {
        let msg = Message::parse(data)?;
        let mid = hdr.message_id;
        if hdr.is_response() {
            if sa.out.as_ref().is_none_or(|o| o.mid != mid) {
                return Err(Drop::BadMessageId(mid));
            }
            if hdr.exchange == ExchangeType::IkeSaInit {
                if sa.state != State::InitSent {
                    return Err(Drop::Unexpected("IKE_SA_INIT response in wrong state"));
                }
                return self.on_init_response(now, sa, data, &msg);
            }
        } else {
            // RFC 7296 §2.1/§2.3: a retransmitted request gets the cached response again.
            if mid.wrapping_add(1) == sa.peer_mid {
                let first_fragment = match msg.payloads.last() {
                    Some(Payload::Skf { number, .. }) => *number == 1,
                    _ => true,
                };
                if let Some((m, d)) = sa.last_resp.as_ref() {
                    if *m == mid && first_fragment {
                        for x in d.clone() {
                            self.transmit(sa.path, x);
                        }
                        return Ok(());
                    }
                }
                return Err(Drop::BadMessageId(mid));
            }
            if mid != sa.peer_mid {
                return Err(Drop::BadMessageId(mid));
            }
        }
        let Some(keys) = sa.keys.as_ref() else { return Err(Drop::Unexpected("encrypted message before keys")) };
        let (first_inner, inner) = match msg.payloads.last() {
            Some(Payload::Sk { first_inner, body }) => (*first_inner, keys.unprotect(sa.initiator, data, body)?),
            Some(Payload::Skf { first_inner, number, total, body }) => {
                let plain = keys.unprotect(sa.initiator, data, body)?;
                match self.reassemble(sa, mid, *first_inner, *number, *total, plain)? {
                    Some(x) => x,
                    None => return Ok(()),
                }
            }
            _ => return Err(Drop::Unexpected("no encrypted payload")),
        };
        sa.last_rx = now;
        let inner_ps = match parse_chain(first_inner, &inner) {
            Ok(p) => p,
            Err(e) => {
                if !hdr.is_response() {
                    sa.peer_mid = sa.peer_mid.wrapping_add(1);
                    self.send_error(sa, hdr.exchange, mid, &ReqError::Syntax("inner payloads"));
                }
                return Err(Drop::Malformed(e));
            }
        };
        tracing::debug!(spi = format_args!("{:016x}", sa.our_spi()), exchange = %hdr.exchange, mid, response = hdr.is_response(), payloads = ?inner_ps.iter().map(|p| p.kind()).collect::<Vec<_>>(), "received");
        if hdr.is_response() {
            let Some(out) = sa.out.take() else { return Err(Drop::BadMessageId(mid)) };
            self.on_response(now, sa, hdr, out.pending, &inner_ps)
        } else {
            // RFC 7296 §2.23: follow the peer to its new address/port once it authenticated.
            if path.remote != sa.path.remote || path.local.port() != sa.path.local.port() {
                let moved = sa.path.remote != path.remote && sa.is_up();
                sa.path = path;
                if moved {
                    let spi_in: Vec<u32> = sa.children.iter().filter(|c| !c.reported_down).map(|c| c.spi_in).collect();
                    if !spi_in.is_empty() {
                        let tunnel = self.tunnels[sa.tunnel].name.clone();
                        self.encap_changes.push_back(crate::EncapChange { tunnel, peer: path.remote, spi_in, encap: self.encap(sa) });
                    }
                }
            }
            sa.peer_mid = sa.peer_mid.wrapping_add(1);
            if let Some(t) = critical_unknown(&inner_ps) {
                self.send_error(sa, hdr.exchange, mid, &ReqError::Critical(t));
                return Ok(());
            }
            let r = match hdr.exchange {
                ExchangeType::IkeAuth if sa.state == State::InitDone => self.on_auth_request(now, sa, mid, &inner_ps),
                ExchangeType::Informational => self.on_info_request(now, sa, mid, &inner_ps),
                ExchangeType::CreateChildSa if sa.is_up() => self.on_create_child_request(now, sa, mid, &inner_ps),
                ExchangeType::CreateChildSa => Err(ReqError::Temporary),
                _ => Err(ReqError::Syntax("unexpected exchange")),
            };
            if let Err(e) = r {
                tracing::debug!("request {} mid {} refused: {e}", hdr.exchange, mid);
                self.send_error(sa, hdr.exchange, mid, &e);
                if sa.state == State::InitDone {
                    // A failed IKE_AUTH ends the half-open SA (RFC 7296 §2.21.2).
                    self.kill(now, sa, DownReason::PeerDead, false);
                }
            }
            Ok(())
        }
    }

    /// RFC 7383 §2.6: collects decrypted fragments; returns the whole inner chain when complete.
    #[allow(clippy::type_complexity)]
    fn reassemble(&mut self, sa: &mut IkeSa, mid: u32, first: PayloadType, number: u16, total: u16, plain: Vec<u8>) -> Result<Option<(PayloadType, Vec<u8>)>, Drop> {
        if total > MAX_FRAGMENTS {
            return Err(Drop::Protocol("too many fragments".into()));
        }
        let fresh = sa.reasm.as_ref().is_none_or(|r| r.mid != mid || r.total != total);
        if fresh {
            sa.reasm = Some(Reassembly { mid, total, first_inner: PayloadType::NoNext, parts: vec![None; usize::from(total)] });
        }
        let Some(r) = sa.reasm.as_mut() else { return Err(Drop::FragmentPending) };
        if number == 1 {
            r.first_inner = first;
        }
        if let Some(slot) = r.parts.get_mut(usize::from(number) - 1) {
            *slot = Some(plain);
        }
        if r.parts.iter().any(|p| p.is_none()) {
            return Ok(None);
        }
        let r = sa.reasm.take().ok_or(Drop::FragmentPending)?;
        let mut all = Vec::new();
        for p in r.parts.into_iter().flatten() {
            all.extend_from_slice(&p);
        }
        Ok(Some((r.first_inner, all)))
    }

    fn on_response(&mut self, now: Instant, sa: &mut IkeSa, hdr: Header, pending: Pending, ps: &[Payload<'_>]) -> Result<(), Drop> {
        match pending {
            Pending::Init { .. } => Err(Drop::Unexpected("encrypted IKE_SA_INIT response")),
            Pending::Auth { child_spi } => self.on_auth_response(now, sa, hdr, child_spi, ps),
            Pending::Dpd => Ok(()),
            Pending::DeleteIke => {
                sa.dead = true;
                Ok(())
            }
            Pending::DeleteChildren(spis) => {
                for spi in spis {
                    if let Some(pos) = sa.children.iter().position(|c| c.spi_in == spi) {
                        let c = sa.children.remove(pos);
                        if !c.reported_down {
                            let reason = if matches!(c.state, ChildState::Rekeyed { .. }) { DownReason::Rekeyed } else { DownReason::Redundant };
                            let tunnel = self.tunnels[c.tunnel].name.clone();
                            self.events.push_back(Event::ChildSaDown { tunnel, spi_in: c.spi_in, spi_out: c.spi_out, reason });
                        }
                    }
                }
                Ok(())
            }
            // The SA is being deleted and its children were reported down: whatever the peer
            // created goes away with the IKE SA's Delete, so nothing is installed.
            Pending::Child { .. } if sa.state == State::Deleting => Ok(()),
            Pending::Child { old, spi_in, ni, dh, tunnel } => self.on_child_response(now, sa, hdr, old, spi_in, ni, dh, tunnel, ps),
            Pending::RekeyIke { new_spi, ni, dh } => self.on_ike_rekey_response(now, sa, new_spi, ni, dh, ps),
        }
    }

    // -----------------------------------------------------------------------------------------
    // IKE_AUTH

    /// Checks the peer's AUTH payload (RFC 7296 §2.15): its certificate signature when the tunnel
    /// has a certificate validator for the peer, otherwise the pre-shared key MAC.
    #[allow(clippy::too_many_arguments)]
    fn verify_peer(&self, tunnel: usize, ps: &[Payload<'_>], id: &Identification<'_>, prf: policy::Prf, real_message: &[u8], nonce: &[u8], sk_p: &[u8], now: Instant) -> Result<(), String> {
        let t = &self.tunnels[tunnel];
        if let Some(v) = self.cert[tunnel].as_ref().and_then(|c| c.remote.as_ref()) {
            let wall = self.wall_now(now).ok_or("no wall clock to check the peer's certificate against")?;
            let octets = crate::cert_auth::signed_octets(prf, real_message, nonce, sk_p, id);
            return v.verify(ps, id, None, &octets, wall).map(|_| ()).map_err(|e| e.to_string());
        }
        let Some((method, data)) = ps.iter().find_map(|p| match p {
            Payload::Auth { method, data } => Some((*method, *data)),
            _ => None,
        }) else {
            return Err("no AUTH payload".into());
        };
        if method != AuthMethod::SharedKeyMic {
            return Err(format!("peer used AUTH method {} but a pre-shared key is configured", method.value()));
        }
        // Fail closed: an empty key means this direction was meant for certificates whose
        // validator was never installed; a MAC under an empty key proves nothing.
        if t.remote_psk.0.is_empty() {
            return Err("no pre-shared key and no certificate validator for the peer".into());
        }
        let expected = psk_auth(prf, t.remote_psk.0.as_bytes(), real_message, nonce, sk_p, &id_payload_body(id));
        if !ct_eq(&expected, data) {
            return Err("peer authentication failed (PSK mismatch)".into());
        }
        Ok(())
    }

    fn wall_now(&self, now: Instant) -> Option<SystemTime> {
        let (at, wall) = self.wall?;
        if now >= at { wall.checked_add(now - at) } else { wall.checked_sub(at - now) }
    }

    fn send_auth(&mut self, now: Instant, sa: &mut IkeSa) {
        let t = self.tunnels[sa.tunnel].clone();
        let Some(keys) = sa.keys.as_ref() else { return };
        let prf = keys.suite.prf;
        let idb = id_body(t.local_addr);
        let idp = Identification { ty: IdType::from(idb[0]), data: &idb[4..] };
        let cert = self.cert[sa.tunnel].clone().unwrap_or_default();
        let own = match &cert.local {
            Some(signer) => {
                let octets = crate::cert_auth::signed_octets(prf, &sa.msg1, &sa.nr, &keys.sk_pi, &idp);
                match signer.auth_payloads(sa.peer_hashes.as_deref(), &octets) {
                    Ok(o) => Some(o),
                    Err(e) => {
                        self.fail_negotiation(now, sa, &format!("cannot sign AUTH: {e}"));
                        return;
                    }
                }
            }
            None => None,
        };
        let auth = if own.is_none() { psk_auth(prf, t.local_psk.0.as_bytes(), &sa.msg1, &sa.nr, &keys.sk_pi, &idb) } else { Vec::new() };
        let child_spi = self.new_child_spi();
        let spi_bytes = child_spi.to_be_bytes();
        // No PFS group in IKE_AUTH: the CHILD_SA keys come from the IKE SA's DH (§1.2).
        let offers = esp_offers(&t.esp_proposals, None);
        // RFC 7296 §2.4: only when we hold no state at all with this peer (after a restart);
        // never while the peer is negotiating with us too, or it would drop that SA.
        let initial_contact = !self.sas.values().any(|s| s.path.remote.ip() == t.peer_addr && s.our_spi() != sa.our_spi() && !s.dead);
        let tsl = ts::addr_bytes(&t.local_ts);
        let tsr = ts::addr_bytes(&t.remote_ts);
        let mut payloads = vec![Payload::IdI(idp)];
        if let Some(o) = &own {
            payloads.extend(o.cert_payloads());
        }
        if initial_contact {
            payloads.push(Payload::notify(NotifyType::InitialContact, &[]));
        }
        if let Some(v) = &cert.remote {
            payloads.push(v.certreq_payload());
        }
        payloads.push(match &own {
            Some(o) => o.auth_payload(),
            None => Payload::Auth { method: AuthMethod::SharedKeyMic, data: &auth },
        });
        payloads.push(Payload::Sa(offers_to_wire(&offers, ProtocolId::Esp, &spi_bytes, None)));
        payloads.push(Payload::TsI(ts::to_wire(&t.local_ts, &tsl)));
        payloads.push(Payload::TsR(ts::to_wire(&t.remote_ts, &tsr)));
        sa.state = State::AuthSent;
        self.send_request(now, sa, ExchangeType::IkeAuth, &payloads, Pending::Auth { child_spi });
    }

    fn on_auth_request(&mut self, now: Instant, sa: &mut IkeSa, mid: u32, ps: &[Payload<'_>]) -> Result<(), ReqError> {
        let t = self.tunnels[sa.tunnel].clone();
        let keys = sa.keys.clone().ok_or(ReqError::Syntax("no keys"))?;
        let prf = keys.suite.prf;
        let idi = ps.iter().find_map(|p| match p {
            Payload::IdI(i) => Some(*i),
            _ => None,
        });
        let auth = ps.iter().find_map(|p| match p {
            Payload::Auth { method, data } => Some((*method, *data)),
            _ => None,
        });
        let (Some(idi), Some(_)) = (idi, auth) else { return Err(ReqError::Syntax("IKE_AUTH without IDi/AUTH")) };
        if let Err(reason) = self.verify_peer(sa.tunnel, ps, &idi, prf, &sa.msg1, &sa.nr, &keys.sk_pi, now) {
            self.events.push_back(Event::IkeNegotiationFailed { tunnel: t.name.clone(), peer: sa.path.remote.ip(), reason });
            return Err(ReqError::Auth);
        }
        // Authenticated.
        sa.state = State::Established;
        sa.established = Some(now);
        sa.deadline = None;
        sa.rekey_at = sa.lifetime.map(|l| now + self.soft_lifetime(l, false));
        if notify_of(ps, NotifyType::InitialContact).is_some() {
            // RFC 7296 §2.4: the peer lost its state; our old SAs with it are useless.
            for spi in self.spis() {
                if spi == sa.our_spi() {
                    continue;
                }
                let Some(mut old) = self.sas.remove(&spi) else { continue };
                // Spare SAs that came up after this negotiation started: they were made with
                // the restarted peer (e.g. both sides initiated at once), not before its restart.
                let before = old.established.is_none_or(|e| e <= sa.started);
                if before && old.path.remote.ip() == sa.path.remote.ip() && matches!(old.state, State::Established | State::Deleting | State::Rekeyed) {
                    self.kill(now, &mut old, DownReason::PeerRestarted, false);
                }
                self.put_back(old);
            }
        }
        self.tstate[sa.tunnel].backoff = REINIT_BACKOFF_MIN;
        self.tstate[sa.tunnel].reinit_at = None;
        self.events.push_back(Event::IkeSaUp { tunnel: t.name.clone(), peer: sa.path.remote.ip(), initiator: false, spi_i: sa.spi_i, spi_r: sa.spi_r });
        let idb = id_body(t.local_addr);
        let idp = Identification { ty: IdType::from(idb[0]), data: &idb[4..] };
        let cert = self.cert[sa.tunnel].clone().unwrap_or_default();
        let own = match &cert.local {
            Some(signer) => {
                let octets = crate::cert_auth::signed_octets(prf, &sa.msg2, &sa.ni, &keys.sk_pr, &idp);
                Some(signer.auth_payloads(sa.peer_hashes.as_deref(), &octets).map_err(|e| ReqError::Crypto(e.to_string()))?)
            }
            None => None,
        };
        let my_auth = if own.is_none() { psk_auth(prf, t.local_psk.0.as_bytes(), &sa.msg2, &sa.ni, &keys.sk_pr, &idb) } else { Vec::new() };
        let idr = Payload::IdR(idp);
        let certs: Vec<Payload<'_>> = own.as_ref().map(|o| o.cert_payloads()).unwrap_or_default();
        let authp = match &own {
            Some(o) => o.auth_payload(),
            None => Payload::Auth { method: AuthMethod::SharedKeyMic, data: &my_auth },
        };
        // The CHILD_SA; its failure does not fail the IKE SA (RFC 7296 §1.2).
        let tunnel = self.tunnel_for(sa, ps, None);
        let child = self.responder_child(now, sa, ps, None, sa.ni.clone(), sa.nr.clone(), None, false, mid, tunnel);
        match child {
            Ok((chosen, spi_in, tsi, tsr)) => {
                let spi_b = spi_in.to_be_bytes();
                let tib = ts::addr_bytes(&tsi);
                let trb = ts::addr_bytes(&tsr);
                let mut payloads = vec![idr];
                payloads.extend(certs);
                payloads.extend([authp, Payload::Sa(vec![chosen.to_wire(ProtocolId::Esp, &spi_b)]), Payload::TsI(ts::to_wire(&tsi, &tib)), Payload::TsR(ts::to_wire(&tsr, &trb))]);
                self.send_response(sa, ExchangeType::IkeAuth, mid, &payloads);
                let _ = spi_in;
            }
            Err(e) => {
                let (nt, nd) = e.notify();
                self.events.push_back(Event::ChildSaFailed { tunnel: t.name.clone(), peer: sa.path.remote.ip(), reason: e.to_string() });
                let mut payloads = vec![idr];
                payloads.extend(certs);
                payloads.extend([authp, Payload::notify(nt, &nd)]);
                self.send_response(sa, ExchangeType::IkeAuth, mid, &payloads);
            }
        }
        self.resolve_duplicates(now, sa);
        Ok(())
    }

    fn on_auth_response(&mut self, now: Instant, sa: &mut IkeSa, hdr: Header, child_spi: u32, ps: &[Payload<'_>]) -> Result<(), Drop> {
        let t = self.tunnels[sa.tunnel].clone();
        let Some(keys) = sa.keys.clone() else { return Err(Drop::Unexpected("no keys")) };
        let idr = ps.iter().find_map(|p| match p {
            Payload::IdR(i) => Some(*i),
            _ => None,
        });
        let auth = ps.iter().find_map(|p| match p {
            Payload::Auth { data, .. } => Some(*data),
            _ => None,
        });
        let (Some(idr), Some(_)) = (idr, auth) else {
            let mut reason = first_error(ps).map(|e| format!("peer refused IKE_AUTH: {:?}", e.ty)).unwrap_or_else(|| "IKE_AUTH response without AUTH".into());
            if sa.msg1_guess {
                // Not necessarily a wrong key: the peer may check our AUTH against the other
                // copy of IKE_SA_INIT (see `sa_timers`). The next attempt starts clean.
                reason.push_str(" (after a COOKIE exchange: the peer may have answered the IKE_SA_INIT sent before the cookie)");
            }
            self.fail_negotiation(now, sa, &reason);
            return Err(Drop::Rejected(reason));
        };
        if let Err(reason) = self.verify_peer(sa.tunnel, ps, &idr, keys.suite.prf, &sa.msg2, &sa.ni, &keys.sk_pr, now) {
            self.fail_negotiation(now, sa, &format!("responder authentication failed: {reason}"));
            return Err(Drop::Rejected(reason));
        }
        sa.state = State::Established;
        sa.established = Some(now);
        sa.rekey_at = sa.lifetime.map(|l| now + self.soft_lifetime(l, true));
        self.tstate[sa.tunnel].backoff = REINIT_BACKOFF_MIN;
        self.tstate[sa.tunnel].reinit_at = None;
        self.events.push_back(Event::IkeSaUp { tunnel: t.name.clone(), peer: sa.path.remote.ip(), initiator: true, spi_i: sa.spi_i, spi_r: sa.spi_r });
        let (ni, nr) = (sa.ni.clone(), sa.nr.clone());
        let tunnel = sa.tunnel;
        if let Err(reason) = self.initiator_child(now, sa, ps, None, child_spi, &ni, &nr, None, hdr.message_id, tunnel) {
            self.events.push_back(Event::ChildSaFailed { tunnel: t.name.clone(), peer: sa.path.remote.ip(), reason });
        }
        self.resolve_duplicates(now, sa);
        Ok(())
    }

    /// Both gateways initiated at once (both tunnels are bidirectional): two IKE SAs for one
    /// tunnel. Both sides keep the SA initiated by the lower address; the initiator of the other
    /// deletes it (like a §2.8.1 collision, but decided without nonces since the exchanges are
    /// independent).
    fn resolve_duplicates(&mut self, now: Instant, sa: &mut IkeSa) {
        // Only between holdfast gateways. Other implementations keep both SAs (strongSwan
        // does), and deleting one there makes a peer configured to restart closed SAs
        // (close_action = start) negotiate a new duplicate at once.
        if !sa.peer_holdfast {
            return;
        }
        let lower_is_us = self.tunnels[sa.tunnel].local_addr < sa.path.remote.ip();
        for spi in self.spis() {
            let Some(mut other) = self.sas.remove(&spi) else { continue };
            if other.path.remote.ip() == sa.path.remote.ip()
                && !other.dead
                && other.initiator != sa.initiator
                && !matches!(other.state, State::Deleting | State::Rekeyed)
            {
                // The SA we initiated survives iff we have the lower address.
                let ours_survives = lower_is_us;
                let loser_is_other = other.initiator != ours_survives;
                if loser_is_other {
                    self.drop_redundant(now, &mut other);
                } else {
                    self.drop_redundant(now, sa);
                }
            }
            self.put_back(other);
        }
    }

    fn drop_redundant(&mut self, now: Instant, x: &mut IkeSa) {
        // Not at once: a peer with its own duplicate policy (strongSwan's uniqueids replaces
        // the older IKE SA as soon as the newer one is up) may resolve it first; acting at the
        // same moment could delete both. An IKE_AUTH in flight is left to complete (the peer
        // may already consider that SA up) and judged when it does.
        match (x.initiator, x.state) {
            (true, State::Established) => x.redundant_at = Some(now + REDUNDANT_DELAY),
            (true, State::InitSent) => {
                x.dead = true;
                x.out = None;
            }
            // The peer deletes its copy after REDUNDANT_DELAY; this is only the fallback.
            (false, State::Established) => x.redundant_at = Some(now + REDUNDANT_DELAY * 3),
            _ => {}
        }
    }

    /// Responder side of a CHILD_SA (IKE_AUTH or CREATE_CHILD_SA). Returns the choice, our
    /// inbound SPI and the narrowed selectors, and stores the child.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn responder_child(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        ps: &[Payload<'_>],
        old: Option<u32>,
        ni: Vec<u8>,
        nr: Vec<u8>,
        shared: Option<(&[u8], DhGroup)>,
        create_child: bool,
        mid: u32,
        tunnel: usize,
    ) -> Result<(Chosen, u32, Vec<TrafficSelector>, Vec<TrafficSelector>), ReqError> {
        let t = self.tunnels[tunnel].clone();
        let props = sa_of(ps).ok_or(ReqError::Syntax("no SA payload"))?;
        let offers = esp_offers(&t.esp_proposals, if create_child { t.pfs } else { None });
        // In IKE_AUTH a DH transform is meaningless (RFC 7296 §1.2); ignore it there.
        let stripped: Vec<Proposal<'_>> = props
            .iter()
            .map(|p| {
                let mut p = p.clone();
                if !create_child {
                    p.transforms.retain(|t| t.ty != wire::ike::TransformType::Dh);
                }
                p
            })
            .collect();
        let (chosen, peer_spi, _) = select_with_ke(&stripped, &offers, ProtocolId::Esp, shared.map(|(_, g)| g.number())).ok_or(ReqError::NoProposal)?;
        if chosen.dh.is_some() && shared.is_none_or(|(_, g)| Some(g) != chosen.dh) {
            return Err(ReqError::InvalidKe(chosen.dh.map(|g| g.number()).unwrap_or(0)));
        }
        let spi_out = <[u8; 4]>::try_from(peer_spi.as_slice()).map(u32::from_be_bytes).map_err(|_| ReqError::Syntax("ESP SPI size"))?;
        let (tsi, tsr) = ts_of(ps);
        let (tsi, tsr) = (tsi.ok_or(ReqError::Syntax("no TSi"))?, tsr.ok_or(ReqError::Syntax("no TSr"))?);
        let (ntsi, ntsr) = ts::narrow(&tsi, &tsr, &t.local_ts, &t.remote_ts).ok_or(ReqError::Ts)?;
        let spi_in = self.new_child_spi();
        let suite = chosen.esp_suite();
        let keys = sa.keys.as_ref().ok_or(ReqError::Syntax("no keys"))?;
        let km = child_keymat(keys.suite.prf, &keys.sk_d, &suite, shared.map(|(s, _)| s), &ni, &nr);
        self.install_child(now, sa, spi_in, spi_out, suite, ntsr.clone(), ntsi.clone(), km, false, old, mid, tunnel);
        Ok((chosen, spi_in, ntsi, ntsr))
    }

    /// The tunnel a CHILD_SA request is for: the replaced SA's, or the first tunnel to this peer
    /// whose selectors overlap the proposed ones (the IKE SA's own tunnel first).
    fn tunnel_for(&self, sa: &IkeSa, ps: &[Payload<'_>], old: Option<u32>) -> usize {
        if let Some(c) = old.and_then(|o| sa.children.iter().find(|c| c.spi_in == o)) {
            return c.tunnel;
        }
        let (tsi, tsr) = ts_of(ps);
        let (Some(tsi), Some(tsr)) = (tsi, tsr) else { return sa.tunnel };
        let peer = sa.path.remote.ip();
        let local = self.tunnels[sa.tunnel].local_addr;
        std::iter::once(sa.tunnel)
            .chain((0..self.tunnels.len()).filter(|&i| i != sa.tunnel && self.tunnels[i].peer_addr == peer && self.tunnels[i].local_addr == local))
            .find(|&i| ts::narrow(&tsi, &tsr, &self.tunnels[i].local_ts, &self.tunnels[i].remote_ts).is_some())
            .unwrap_or(sa.tunnel)
    }

    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn install_child(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        spi_in: u32,
        spi_out: u32,
        suite: EspSuite,
        local_ts: Vec<TrafficSelector>,
        remote_ts: Vec<TrafficSelector>,
        km: ((Vec<u8>, Vec<u8>), (Vec<u8>, Vec<u8>)),
        exchange_initiator: bool,
        replaces: Option<u32>,
        mid: u32,
        tunnel: usize,
    ) {
        let ((ei, ai), (er, ar)) = km;
        // §2.17: the first keys protect initiator->responder traffic of this exchange.
        let ((oe, oa), (ie, ia)) = if exchange_initiator { ((ei, ai), (er, ar)) } else { ((er, ar), (ei, ai)) };
        let lifetime = self.tunnels[tunnel].child_lifetime;
        // The side that created the SA rekeys a little earlier, which makes collisions rare.
        let soft = self.soft_lifetime(lifetime, exchange_initiator);
        let t = &self.tunnels[tunnel];
        let inbound = esp::SaParams { spi: spi_in, encryption: suite.encryption, integrity: suite.integrity, enc_key: ie, integ_key: ia, esn: suite.esn };
        let outbound = esp::SaParams { spi: spi_out, encryption: suite.encryption, integrity: suite.integrity, enc_key: oe, integ_key: oa, esn: suite.esn };
        // A rekey responder's peer cannot decrypt the new SA before our response arrives.
        let outbound_now = exchange_initiator || replaces.is_none();
        let up = ChildSaUp {
            outbound_now,
            tunnel: t.name.clone(),
            peer: sa.path.remote.ip(),
            local: t.local_addr,
            inbound,
            outbound,
            encap: self.encap(sa),
            local_ts: local_ts.clone(),
            remote_ts: remote_ts.clone(),
            replaces_spi_in: replaces,
            initiator: exchange_initiator,
            msg_id: mid,
            lifetime,
            lifetime_kilobytes: t.child_lifetime_kilobytes,
        };
        tracing::debug!(spi = format_args!("{:016x}", sa.our_spi()), spi_in = format_args!("{spi_in:08x}"), spi_out = format_args!("{spi_out:08x}"), replaces = ?replaces, n = sa.children.iter().filter(|c| !c.reported_down).count(), "child up");
        sa.children.push(Child {
            tunnel,
            spi_in,
            spi_out,
            suite,
            local_ts,
            remote_ts,
            initiator: exchange_initiator,
            created: now,
            rekey_at: (!lifetime.is_zero()).then_some(now + soft),
            expire_at: now + if lifetime.is_zero() { Duration::from_secs(u32::MAX as u64) } else { lifetime },
            bytes: 0,
            state: ChildState::Installed,
            reported_down: false,
            replaces,
            outbound_at: (!outbound_now).then_some(now + OUTBOUND_SWITCH_DELAY),
        });
        self.events.push_back(Event::ChildSaUp(up));
    }

    /// Initiator side of a CHILD_SA once the response arrived (IKE_AUTH or CREATE_CHILD_SA).
    #[allow(clippy::too_many_arguments)]
    fn initiator_child(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        ps: &[Payload<'_>],
        old: Option<u32>,
        spi_in: u32,
        ni: &[u8],
        nr: &[u8],
        shared: Option<&[u8]>,
        mid: u32,
        tunnel: usize,
    ) -> Result<(), String> {
        if let Some(e) = first_error(ps) {
            return Err(format!("peer refused the CHILD_SA: {:?}", e.ty));
        }
        let t = self.tunnels[tunnel].clone();
        let offers = esp_offers(&t.esp_proposals, if shared.is_some() { t.pfs } else { None });
        let props = sa_of(ps).ok_or("no SA payload in the response")?;
        if props.len() != 1 {
            return Err("responder returned more than one proposal".into());
        }
        let (chosen, peer_spi, _) = select(props, &offers, ProtocolId::Esp).ok_or("responder chose an ESP proposal we did not offer")?;
        let spi_out = <[u8; 4]>::try_from(peer_spi.as_slice()).map(u32::from_be_bytes).map_err(|_| "ESP SPI size")?;
        let (tsi, tsr) = ts_of(ps);
        // The responder may only narrow (§2.9); what it returns must lie within what we sent.
        let tsi = tsi.filter(|v| !v.is_empty()).unwrap_or_else(|| t.local_ts.clone());
        let tsr = tsr.filter(|v| !v.is_empty()).unwrap_or_else(|| t.remote_ts.clone());
        let within = |got: &[TrafficSelector], ours: &[TrafficSelector]| got.iter().all(|g| ours.iter().any(|o| ts::intersect(g, o) == Some(*g)));
        if !within(&tsi, &t.local_ts) || !within(&tsr, &t.remote_ts) {
            return Err("responder widened the traffic selectors".into());
        }
        let keys = sa.keys.as_ref().ok_or("no keys")?;
        let mut suite = chosen.esp_suite();
        if shared.is_none() {
            suite.dh = None;
        }
        let km = child_keymat(keys.suite.prf, &keys.sk_d, &suite, shared, ni, nr);
        self.install_child(now, sa, spi_in, spi_out, suite, tsi, tsr, km, true, old, mid, tunnel);
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // INFORMATIONAL

    fn on_info_request(&mut self, now: Instant, sa: &mut IkeSa, mid: u32, ps: &[Payload<'_>]) -> Result<(), ReqError> {
        let mut delete_ike = false;
        let mut ours: Vec<[u8; 4]> = Vec::new();
        for p in ps {
            let Payload::Delete(d) = p else { continue };
            match d.protocol {
                ProtocolId::Ike => delete_ike = true,
                ProtocolId::Esp | ProtocolId::Ah => {
                    for spi in &d.spis {
                        let Ok(b) = <[u8; 4]>::try_from(*spi) else { continue };
                        let spi = u32::from_be_bytes(b);
                        // The peer names its inbound SPI = our outbound (§3.11).
                        let Some(pos) = sa.children.iter().position(|c| c.spi_out == spi) else { continue };
                        let c = sa.children.remove(pos);
                        // The rekey initiator deletes the replaced SA once it has the new one
                        // (§1.3.3): our outbound can move over now.
                        if let Some(n) = sa.children.iter_mut().find(|n| n.replaces == Some(c.spi_in) && n.outbound_at.is_some()) {
                            n.outbound_at = None;
                            if !n.reported_down {
                                self.events.push_back(Event::ChildSaOutbound { tunnel: self.tunnels[n.tunnel].name.clone(), spi_in: n.spi_in });
                            }
                        }
                        // If we are deleting it too, answer without it (§1.4.1).
                        if c.state != ChildState::Deleting {
                            ours.push(c.spi_in.to_be_bytes());
                        }
                        if !c.reported_down {
                            let reason = if matches!(c.state, ChildState::Rekeyed { .. }) { DownReason::Rekeyed } else { DownReason::PeerDeleted };
                            let tunnel = self.tunnels[c.tunnel].name.clone();
                            self.events.push_back(Event::ChildSaDown { tunnel, spi_in: c.spi_in, spi_out: c.spi_out, reason });
                        }
                    }
                }
                ProtocolId::Unknown(_) => {}
            }
        }
        if delete_ike {
            self.send_response(sa, ExchangeType::Informational, mid, &[]);
            let reinit = sa.state == State::Established;
            self.kill(now, sa, DownReason::PeerDeleted, reinit);
            return Ok(());
        }
        if ours.is_empty() {
            self.send_response(sa, ExchangeType::Informational, mid, &[]);
        } else {
            let d = Payload::Delete(Delete { protocol: ProtocolId::Esp, spi_size: 4, spis: ours.iter().map(|b| &b[..]).collect() });
            self.send_response(sa, ExchangeType::Informational, mid, &[d]);
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // CREATE_CHILD_SA

    fn start_child(&mut self, now: Instant, sa: &mut IkeSa, old: Option<u32>, notify: bool, tunnel: usize) -> Result<(), String> {
        let t = self.tunnels[tunnel].clone();
        let offers = esp_offers(&t.esp_proposals, t.pfs);
        let spi_in = self.new_child_spi();
        let spi_b = spi_in.to_be_bytes();
        let ni = self.nonce();
        let (dh, public) = match t.pfs {
            Some(g) => {
                let (d, p) = DhPrivate::generate(g).map_err(|e| e.to_string())?;
                (Some(d), p)
            }
            None => (None, Vec::new()),
        };
        let (lts, rts) = match old.and_then(|o| sa.children.iter().find(|c| c.spi_in == o)) {
            // §2.9.2: a rekey keeps the selectors of the SA it replaces.
            Some(c) => (c.local_ts.clone(), c.remote_ts.clone()),
            None => (t.local_ts.clone(), t.remote_ts.clone()),
        };
        let old_b = old.filter(|_| notify).map(|o| o.to_be_bytes());
        let tib = ts::addr_bytes(&lts);
        let trb = ts::addr_bytes(&rts);
        let mut payloads = Vec::new();
        if let Some(b) = &old_b {
            payloads.push(Payload::Notify(Notify { protocol: ProtocolId::Esp.value(), spi: b, ty: NotifyType::RekeySa, data: &[] }));
        }
        payloads.push(Payload::Sa(offers_to_wire(&offers, ProtocolId::Esp, &spi_b, None)));
        payloads.push(Payload::Nonce(&ni));
        if let Some(g) = t.pfs {
            payloads.push(Payload::Ke { group: g.number(), data: &public });
        }
        payloads.push(Payload::TsI(ts::to_wire(&lts, &tib)));
        payloads.push(Payload::TsR(ts::to_wire(&rts, &trb)));
        self.send_request(now, sa, ExchangeType::CreateChildSa, &payloads, Pending::Child { old, spi_in, ni: ni.clone(), dh, tunnel });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn on_child_response(&mut self, now: Instant, sa: &mut IkeSa, hdr: Header, old: Option<u32>, spi_in: u32, ni: Vec<u8>, dh: Option<DhPrivate>, tunnel: usize, ps: &[Payload<'_>]) -> Result<(), Drop> {
        if self.retired.get(tunnel).copied().unwrap_or(false) {
            // Requested under a policy a reconfiguration replaced or removed while the exchange
            // ran: do not install it; tell the peer to drop its half (the tunnel's new policy
            // negotiates its own SA).
            if first_error(ps).is_none() {
                sa.queue.push_back(Req::DeleteRaw(vec![spi_in]));
            }
            return Err(Drop::Unexpected("CHILD_SA of a reconfigured tunnel"));
        }
        let t = self.tunnels[tunnel].clone();
        let retry_later = |this: &mut Self, sa: &mut IkeSa| {
            let delay = this.jitter(Duration::from_secs(4), 0.5, 1.5);
            if let Some(c) = old.and_then(|o| sa.child_by_in(o)) {
                if c.state == ChildState::Rekeying {
                    c.state = ChildState::Installed;
                    c.rekey_at = Some(now + delay);
                }
            }
        };
        if let Some(e) = first_error(ps) {
            // A peer that wants another DH group says so; otherwise retry a little later
            // (TEMPORARY_FAILURE §2.25, or a collision the peer resolved differently).
            let reason = format!("peer refused CREATE_CHILD_SA: {:?}", e.ty);
            if e.ty == NotifyType::ChildSaNotFound {
                // The peer does not know the SA any more: negotiate a fresh one in its place.
                // Unless the peer replaced it itself in a collision: then its Delete follows.
                let replaced = old.is_some_and(|o| sa.collisions.iter().any(|c| c.0 == o));
                if let Some(o) = old.filter(|o| !replaced && sa.children.iter().any(|c| c.spi_in == *o)) {
                    sa.queue.push_back(Req::Recreate(o));
                }
                sa.collisions.retain(|c| Some(c.0) != old);
                if let Some(c) = old.filter(|_| replaced).and_then(|o| sa.child_by_in(o)) {
                    c.state = ChildState::Rekeyed { until: now + REKEYED_GRACE };
                    c.rekey_at = None;
                }
            } else {
                retry_later(self, sa);
            }
            if old.is_none() || e.ty != NotifyType::TemporaryFailure {
                self.events.push_back(Event::ChildSaFailed { tunnel: t.name.clone(), peer: sa.path.remote.ip(), reason: reason.clone() });
            }
            return Err(Drop::Rejected(reason));
        }
        if let Some(o) = old {
            if sa.child_by_in(o).is_none() && !sa.collisions.iter().any(|c| c.0 == o) {
                // The SA we rekeyed was deleted by the peer while this exchange ran (a clear,
                // say): its replacement is an orphan. Do not install it; tell the peer to drop
                // its half if it still has one.
                sa.queue.push_back(Req::DeleteRaw(vec![spi_in]));
                return Err(Drop::Unexpected("rekeyed CHILD_SA deleted meanwhile"));
            }
        }
        let nr = match nonce_of(ps) {
            Ok(n) => n.to_vec(),
            Err(e) => {
                retry_later(self, sa);
                return Err(Drop::Protocol(e.to_string()));
            }
        };
        let shared = match dh {
            Some(d) => {
                let Some((g, kd)) = ke_of(ps) else {
                    retry_later(self, sa);
                    return Err(Drop::Protocol("no KE in PFS response".into()));
                };
                if Some(g) != t.pfs.map(|p| p.number()) {
                    retry_later(self, sa);
                    return Err(Drop::Protocol("KE group mismatch".into()));
                }
                match d.agree(kd) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        retry_later(self, sa);
                        return Err(Drop::Protocol(e.to_string()));
                    }
                }
            }
            None => None,
        };
        if let Err(reason) = self.initiator_child(now, sa, ps, old, spi_in, &ni, &nr, shared.as_deref(), hdr.message_id, tunnel) {
            retry_later(self, sa);
            self.events.push_back(Event::ChildSaFailed { tunnel: t.name.clone(), peer: sa.path.remote.ip(), reason: reason.clone() });
            return Err(Drop::Protocol(reason));
        }
        let Some(old) = old else { return Ok(()) };
        let our_min = if ni < nr { ni } else { nr };
        let mut delete = Vec::new();
        // §2.8.1: if the peer rekeyed the same SA meanwhile, the SA created with the lowest of
        // the four nonces is redundant and its creator deletes it; the creator of the other
        // one deletes the old SA. The record survives the old SA being deleted by the peer.
        let collision = sa.collisions.iter().position(|c| c.0 == old).map(|i| sa.collisions.remove(i));
        match collision {
            Some((_, _peer_new, peer_min)) if our_min < peer_min => delete.push(spi_in),
            _ => delete.push(old),
        }
        if let Some(c) = sa.child_by_in(old) {
            c.state = ChildState::Rekeyed { until: now + REKEYED_GRACE };
            c.rekey_at = None;
        }
        if !delete.is_empty() {
            sa.queue.push_back(Req::DeleteChildren(delete));
        }
        Ok(())
    }

    fn on_create_child_request(&mut self, now: Instant, sa: &mut IkeSa, mid: u32, ps: &[Payload<'_>]) -> Result<(), ReqError> {
        let props = sa_of(ps).ok_or(ReqError::Syntax("no SA payload"))?;
        if props.iter().any(|p| p.protocol == ProtocolId::Ike) {
            return self.on_ike_rekey_request(now, sa, mid, ps);
        }
        let rekey = notify_of(ps, NotifyType::RekeySa);
        let old = match rekey {
            Some(n) => {
                let b = <[u8; 4]>::try_from(n.spi).map_err(|_| ReqError::Syntax("REKEY_SA SPI"))?;
                let spi = u32::from_be_bytes(b);
                let c = sa
                    .children
                    .iter()
                    .find(|c| (c.spi_out == spi || c.spi_in == spi) && !matches!(c.state, ChildState::Deleting))
                    .ok_or(ReqError::ChildNotFound)?;
                if matches!(c.state, ChildState::Rekeyed { .. }) {
                    // Already replaced (the peer lost a collision and retries): nothing to rekey.
                    return Err(ReqError::ChildNotFound);
                }
                Some(c.spi_in)
            }
            None => None,
        };
        let ni = nonce_of(ps)?.to_vec();
        let nr = self.nonce();
        let tunnel = self.tunnel_for(sa, ps, old);
        let t = self.tunnels[tunnel].clone();
        // PFS: a fresh DH when the peer's chosen proposal carries a group (§1.3.1).
        let mut dh_out: Option<(DhGroup, Vec<u8>, Vec<u8>)> = None;
        if let Some((g, kd)) = ke_of(ps) {
            let offers = esp_offers(&t.esp_proposals, t.pfs);
            if let Some((chosen, _, _)) = select_with_ke(props, &offers, ProtocolId::Esp, Some(g)) {
                if let Some(cg) = chosen.dh {
                    if cg.number() != g {
                        return Err(ReqError::InvalidKe(cg.number()));
                    }
                    let (d, public) = DhPrivate::generate(cg)?;
                    let shared = d.agree(kd)?;
                    dh_out = Some((cg, public, shared));
                }
            }
        }
        let shared = dh_out.as_ref().map(|(g, _, s)| (s.as_slice(), *g));
        let (chosen, spi_in, tsi, tsr) = self.responder_child(now, sa, ps, old, ni.clone(), nr.clone(), shared, true, mid, tunnel)?;
        let spi_b = spi_in.to_be_bytes();
        let tib = ts::addr_bytes(&tsi);
        let trb = ts::addr_bytes(&tsr);
        let mut payloads = vec![Payload::Sa(vec![chosen.to_wire(ProtocolId::Esp, &spi_b)]), Payload::Nonce(&nr)];
        if let Some((g, public, _)) = &dh_out {
            payloads.push(Payload::Ke { group: g.number(), data: public });
        }
        payloads.push(Payload::TsI(ts::to_wire(&tsi, &tib)));
        payloads.push(Payload::TsR(ts::to_wire(&tsr, &trb)));
        self.send_response(sa, ExchangeType::CreateChildSa, mid, &payloads);
        if let Some(o) = old {
            let min = if ni < nr { ni } else { nr };
            if let Some(c) = sa.child_by_in(o) {
                if c.state == ChildState::Rekeying {
                    sa.collisions.retain(|x| x.0 != o);
                    sa.collisions.push((o, spi_in, min));
                }
            }
            if let Some(c) = sa.child_by_in(o) {
                c.rekey_at = None;
                if c.state == ChildState::Installed {
                    // The peer deletes the old SA after this exchange (§1.3.3).
                    c.state = ChildState::Rekeyed { until: now + REKEYED_GRACE };
                }
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // IKE SA rekey (§1.3.2, §2.18)

    fn start_ike_rekey(&mut self, now: Instant, sa: &mut IkeSa) -> Result<(), String> {
        let t = self.tunnels[sa.tunnel].clone();
        let offers = ike_offers(&t.ike_policies);
        let group = sa.suite.map(|s| s.dh).ok_or("no suite")?;
        let new_spi = self.new_ike_spi();
        let spi_b = new_spi.to_be_bytes();
        let ni = self.nonce();
        let (dh, public) = DhPrivate::generate(group).map_err(|e| e.to_string())?;
        let payloads = vec![
            Payload::Sa(offers_to_wire(&offers, ProtocolId::Ike, &spi_b, Some(group))),
            Payload::Nonce(&ni),
            Payload::Ke { group: group.number(), data: &public },
        ];
        self.send_request(now, sa, ExchangeType::CreateChildSa, &payloads, Pending::RekeyIke { new_spi, ni: ni.clone(), dh: Some(dh) });
        // Reserve the SPI so no other SA takes it while the exchange runs.
        Ok(())
    }

    fn on_ike_rekey_request(&mut self, now: Instant, sa: &mut IkeSa, mid: u32, ps: &[Payload<'_>]) -> Result<(), ReqError> {
        if sa.out.is_some() || sa.state != State::Established {
            // §2.25: an exchange of ours is in flight on this SA (possibly our own rekey); if
            // the SA were replaced now its outcome would be lost. The peer retries later.
            return Err(ReqError::Temporary);
        }
        let t = self.tunnels[sa.tunnel].clone();
        let offers = ike_offers(&t.ike_policies);
        let props = sa_of(ps).ok_or(ReqError::Syntax("no SA payload"))?;
        let (chosen, peer_spi, oi) = select_with_ke(props, &offers, ProtocolId::Ike, ke_of(ps).map(|(g, _)| g)).ok_or(ReqError::NoProposal)?;
        let suite = chosen.ike_suite().ok_or(ReqError::NoProposal)?;
        let new_spi_i = <[u8; 8]>::try_from(peer_spi.as_slice()).map(u64::from_be_bytes).map_err(|_| ReqError::Syntax("IKE SPI size"))?;
        let ni = nonce_of(ps)?.to_vec();
        let (g, kd) = ke_of(ps).ok_or(ReqError::InvalidKe(suite.dh.number()))?;
        if g != suite.dh.number() {
            return Err(ReqError::InvalidKe(suite.dh.number()));
        }
        let (d, public) = DhPrivate::generate(suite.dh)?;
        let shared = d.agree(kd)?;
        let nr = self.nonce();
        let new_spi_r = self.new_ike_spi();
        let spi_b = new_spi_r.to_be_bytes();
        let payloads = vec![Payload::Sa(vec![chosen.to_wire(ProtocolId::Ike, &spi_b)]), Payload::Nonce(&nr), Payload::Ke { group: suite.dh.number(), data: &public }];
        self.send_response(sa, ExchangeType::CreateChildSa, mid, &payloads);
        let lifetime = offers.get(oi).and_then(|o| o.lifetime);
        self.finish_ike_rekey(now, sa, suite, &shared, ni, nr, new_spi_i, new_spi_r, false, lifetime, true);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn on_ike_rekey_response(&mut self, now: Instant, sa: &mut IkeSa, new_spi: u64, ni: Vec<u8>, dh: Option<DhPrivate>, ps: &[Payload<'_>]) -> Result<(), Drop> {
        let retry = |this: &mut Self, sa: &mut IkeSa| {
            let d = this.jitter(Duration::from_secs(5), 0.4, 1.6);
            sa.rekey_at = Some(now + d);
        };
        if let Some(e) = first_error(ps) {
            retry(self, sa);
            return Err(Drop::Rejected(format!("peer refused IKE rekey: {:?}", e.ty)));
        }
        let t = self.tunnels[sa.tunnel].clone();
        let offers = ike_offers(&t.ike_policies);
        let parsed = (|| {
            let props = sa_of(ps).ok_or("no SA")?;
            let (chosen, peer_spi, oi) = select(props, &offers, ProtocolId::Ike).ok_or("proposal not offered")?;
            let suite = chosen.ike_suite().ok_or("incomplete proposal")?;
            let spi_r = <[u8; 8]>::try_from(peer_spi.as_slice()).map(u64::from_be_bytes).map_err(|_| "SPI size")?;
            let nr = nonce_of(ps).map_err(|_| "nonce")?.to_vec();
            let (g, kd) = ke_of(ps).ok_or("no KE")?;
            if g != suite.dh.number() {
                return Err("KE group");
            }
            Ok((suite, spi_r, nr, kd.to_vec(), oi))
        })();
        let (suite, spi_r, nr, kd, oi) = match parsed {
            Ok(x) => x,
            Err(e) => {
                retry(self, sa);
                return Err(Drop::Protocol(e.into()));
            }
        };
        let Some(Ok(shared)) = dh.map(|d| d.agree(&kd)) else {
            retry(self, sa);
            return Err(Drop::Protocol("DH failed".into()));
        };
        let lifetime = offers.get(oi).and_then(|o| o.lifetime);
        let deleting = sa.state == State::Deleting;
        self.finish_ike_rekey(now, sa, suite, &shared, ni, nr, new_spi, spi_r, true, lifetime, !deleting);
        if deleting {
            // Cleared while the rekey was in flight: the peer now has the new SA (with the
            // children), so that one is deleted too; nothing is announced.
            if let Some(mut new) = self.sas.remove(&new_spi) {
                new.state = State::Deleting;
                new.queue.push_back(Req::DeleteIke);
                self.pump(now, &mut new);
                self.put_back(new);
            }
        }
        // §1.3.2: the initiator of the rekey deletes the old IKE SA.
        if !sa.queue.iter().any(|r| matches!(r, Req::DeleteIke)) {
            sa.queue.push_back(Req::DeleteIke);
        }
        Ok(())
    }

    /// Creates the new IKE SA from a rekey exchange and moves the children to it.
    #[allow(clippy::too_many_arguments)]
    fn finish_ike_rekey(&mut self, now: Instant, old: &mut IkeSa, suite: IkeSuite, shared: &[u8], ni: Vec<u8>, nr: Vec<u8>, spi_i: u64, spi_r: u64, initiator: bool, lifetime: Option<Duration>, announce: bool) {
        let Some(old_keys) = old.keys.as_ref() else { return };
        // §2.18: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr), with the old SA's PRF.
        let skeyseed = crate::keys::prf(old_keys.suite.prf, &old_keys.sk_d, &[shared, &ni, &nr]);
        let keys = IkeKeys::derive(suite, &skeyseed, &ni, &nr, spi_i, spi_r);
        let rekey_at = lifetime.map(|l| now + self.soft_lifetime(l, initiator));
        let mut children = std::mem::take(&mut old.children);
        // A child rekey that was only queued on the old SA is restarted on the new one; one
        // in flight finishes on the old SA and its result moves over (see `put_back`).
        let inflight = match old.out.as_ref().map(|o| &o.pending) {
            Some(Pending::Child { old: Some(s), .. }) => Some(*s),
            _ => None,
        };
        for c in children.iter_mut() {
            if c.state == ChildState::Rekeying && Some(c.spi_in) != inflight {
                c.state = ChildState::Installed;
                c.rekey_at = Some(now + Duration::from_secs(1));
            }
        }
        let new = IkeSa {
            tunnel: old.tunnel,
            initiator,
            spi_i,
            spi_r,
            path: old.path,
            state: State::Established,
            suite: Some(suite),
            keys: Some(keys),
            ni,
            nr,
            msg1: Vec::new(),
            msg1_guess: false,
            msg2: Vec::new(),
            nat_local: old.nat_local,
            nat_remote: old.nat_remote,
            peer_frag: old.peer_frag,
            peer_holdfast: old.peer_holdfast,
            peer_hashes: old.peer_hashes.clone(),
            next_mid: 0,
            peer_mid: 0,
            out: None,
            queue: VecDeque::new(),
            last_resp: None,
            children,
            started: now,
            established: Some(now),
            last_rx: now,
            lifetime,
            rekey_at,
            deadline: None,
            reasm: None,
            redundant_at: None,
            successor: None,
            childless_since: None,
            childless_tries: 0,
            collisions: Vec::new(),
            dead: false,
        };
        let t = &self.tunnels[old.tunnel];
        if announce {
            self.events.push_back(Event::IkeSaUp { tunnel: t.name.clone(), peer: new.path.remote.ip(), initiator, spi_i, spi_r });
            self.events.push_back(Event::IkeSaRekeyed { tunnel: t.name.clone(), peer: new.path.remote.ip(), old_spi_i: old.spi_i, old_spi_r: old.spi_r, new_spi_i: spi_i, new_spi_r: spi_r });
        }
        old.state = State::Rekeyed;
        old.rekey_at = None;
        old.successor = Some(new.our_spi());
        old.queue.retain(|r| matches!(r, Req::DeleteIke | Req::DeleteChildren(_) | Req::DeleteRaw(_) | Req::NewChild(_) | Req::Recreate(_)));
        old.deadline = Some(now + REKEYED_GRACE);
        self.sas.insert(new.our_spi(), new);
    }
}

#[cfg(test)]
mod tests {
    //! Authenticated garbage: payload chains that pass integrity protection (built with the
    //! real SA keys) but carry arbitrary content must never panic either side.
    use super::*;
    use policy::{Dpd, Encryption, Integrity, Ipv4Net, Ikev2Policy, IpsecProposal, Prf, Secret};
    use wire::ike::{Selector, Transform, TransformType, TsType};

    fn tunnel(local: &str, peer: &str, l: &str, r: &str) -> TunnelPolicy {
        TunnelPolicy {
            name: format!("M:{peer}"),
            local_addr: local.parse().unwrap(),
            peer_addr: peer.parse().unwrap(),
            outside_ifname: "o".into(),
            local_ts: vec![TrafficSelector::from_net(Ipv4Net::new(l.parse().unwrap(), 24), None)],
            remote_ts: vec![TrafficSelector::from_net(Ipv4Net::new(r.parse().unwrap(), 24), None)],
            ike_policies: vec![Ikev2Policy {
                priority: 1,
                encryption: vec![Encryption::AesCbc128, Encryption::AesGcm128],
                integrity: vec![Integrity::Sha1],
                groups: vec![DhGroup::Curve25519, DhGroup::Ecp256],
                prf: vec![Prf::Sha256],
                lifetime: Some(Duration::from_secs(600)),
            }],
            esp_proposals: vec![IpsecProposal { name: "P".into(), encryption: vec![Encryption::AesGcm128, Encryption::AesCbc256], integrity: vec![Integrity::Sha256] }],
            pfs: Some(DhGroup::Curve25519),
            child_lifetime: Duration::from_secs(300),
            child_lifetime_kilobytes: None,
            local_psk: Secret("k".into()),
            remote_psk: Secret("k".into()),
            dpd: Some(Dpd::default()),
            nat_t_disable: false,
            force_udp_encap: false,
            connection_type: ConnectionType::Bidirectional,
        }
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        fn bytes(&mut self, max: u64) -> Vec<u8> {
            let n = self.below(max + 1);
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn pump(a: &mut Endpoint, b: &mut Endpoint, now: Instant) {
        for _ in 0..100 {
            let mut moved = false;
            for dir in 0..2 {
                let (x, y) = if dir == 0 { (&mut *a, &mut *b) } else { (&mut *b, &mut *a) };
                while let Some(t) = x.poll_transmit() {
                    moved = true;
                    let _ = y.handle_datagram(now, Path { local: t.path.remote, remote: t.path.local }, &t.data);
                }
                while x.poll_event().is_some() {}
            }
            if !moved {
                return;
            }
        }
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // the virtual clock needs some starting Instant
    fn authenticated_garbage_never_panics() {
        let now = Instant::now();
        let mut a = Endpoint::new(vec![tunnel("192.0.2.1", "192.0.2.2", "10.1.0.0", "10.2.0.0")], Ikev2Globals::default(), Box::new(crypto::SeededRandom::new(1)));
        let mut b = Endpoint::new(vec![tunnel("192.0.2.2", "192.0.2.1", "10.2.0.0", "10.1.0.0")], Ikev2Globals::default(), Box::new(crypto::SeededRandom::new(2)));
        a.handle_command(now, Command::Initiate { tunnel: "M:192.0.2.2".into() });
        pump(&mut a, &mut b, now);
        assert_eq!(a.child_sas().len(), 1);
        let mut r = Rng(0x1234_5678_9abc_def1);
        let mut t = now;
        let mut delivered = 0;
        for i in 0..4000u32 {
            t += Duration::from_millis(r.below(3000));
            // Alternate the victim: B as responder to "A's" requests, A to "B's".
            let (victim, from_initiator) = if i % 2 == 0 { (&mut b, true) } else { (&mut a, false) };
            // The other side's SA may have been replaced by a rekey: follow the victim's role.
            let from_initiator = victim.sas.values().find(|s| s.is_up()).map(|s| !s.initiator).unwrap_or(from_initiator);
            let Some(sa) = victim.sas.values().find(|s| s.is_up()) else {
                // Garbage took the SA down (a Delete, say): let the tunnel come back.
                a.handle_timeout(t);
                b.handle_timeout(t);
                pump(&mut a, &mut b, t);
                continue;
            };
            delivered += 1;
            let keys = sa.keys.clone().unwrap();
            let mid = if r.below(8) == 0 { r.next() as u32 } else { sa.peer_mid };
            let (spi_i, spi_r, path) = (sa.spi_i, sa.spi_r, Path { local: sa.path.local, remote: sa.path.remote });
            let exchange = ExchangeType::from(34 + r.below(4) as u8);
            let spi_bytes: Vec<[u8; 4]> = victim.sas.values().flat_map(|s| s.children.iter().map(|c| c.spi_out.to_be_bytes())).collect();
            let store: Vec<Vec<u8>> = (0..12).map(|_| r.bytes(80)).collect();
            let addr: Vec<[u8; 8]> = (0..4).map(|_| (r.next()).to_be_bytes()).collect();
            let mut ps: Vec<Payload<'_>> = Vec::new();
            for k in 0..r.below(7) as usize {
                let d = &store[k % store.len()];
                ps.push(match r.below(12) {
                    0 => Payload::Sa(vec![Proposal {
                        number: r.next() as u8,
                        protocol: ProtocolId::from(1 + r.below(3) as u8),
                        spi: &d[..d.len().min(r.below(9) as usize)],
                        transforms: (0..r.below(6))
                            .map(|_| Transform::with_key_length(TransformType::from(1 + r.below(5) as u8), [12u16, 20, 2, 5, 14, 31, 19, 0, 1][r.below(9) as usize], [128u16, 256, 0, 7][r.below(4) as usize]))
                            .collect(),
                    }]),
                    1 => Payload::Ke { group: [31u16, 19, 14, 0, 99][r.below(5) as usize], data: d },
                    2 => Payload::Nonce(d),
                    3 => Payload::notify(NotifyType::from([16393u16, 16384, 17, 14, 24, 44, 16390, r.next() as u16][r.below(8) as usize]), d),
                    4 => Payload::Notify(Notify { protocol: 3, spi: spi_bytes.get(r.below(4) as usize).map(|b| &b[..]).unwrap_or(&d[..d.len().min(4)]), ty: NotifyType::RekeySa, data: &[] }),
                    5 => Payload::Delete(Delete {
                        protocol: ProtocolId::from(r.below(4) as u8),
                        spi_size: 4,
                        spis: spi_bytes.iter().take(r.below(3) as usize).map(|b| &b[..]).collect(),
                    }),
                    6 | 7 => {
                        let sel = Selector { ty: TsType::from(7 + r.below(2) as u8), ip_protocol: r.next() as u8, start_port: r.next() as u16, end_port: r.next() as u16, start_addr: &addr[k % 4][..4], end_addr: &addr[(k + 1) % 4][4..] };
                        if r.below(2) == 0 { Payload::TsI(vec![sel]) } else { Payload::TsR(vec![sel]) }
                    }
                    8 => Payload::IdI(Identification { ty: IdType::from(r.next() as u8), data: d }),
                    9 => Payload::Auth { method: AuthMethod::from(r.next() as u8), data: d },
                    10 => Payload::Unknown { ty: PayloadType::from(r.next() as u8 | 0x80), critical: r.below(2) == 0, body: d },
                    _ => Payload::VendorId(d),
                });
            }
            let (first, chain) = emit_chain(&ps);
            let chain = if r.below(10) == 0 { r.bytes(200) } else { chain };
            let flags = if from_initiator { flags::INITIATOR } else { 0 } | if r.below(6) == 0 { flags::RESPONSE } else { 0 };
            let hdr = Header::new(spi_i, spi_r, exchange, flags, mid);
            let mut rng = crypto::SeededRandom::new(r.next());
            let msg = keys.protect(from_initiator, &hdr, first, &chain, None, &mut rng).unwrap();
            let _ = victim.handle_datagram(t, path, &msg);
            victim.handle_timeout(t);
            let _ = (victim.ike_sas(), victim.child_sas(), victim.poll_timeout());
            pump(&mut a, &mut b, t);
        }
        assert!(delivered > 2000, "only {delivered} messages reached an established SA");
    }
}

#[cfg(test)]
mod collision_tests {
    use super::tests_support::*;
    use super::*;

    /// Both sides start an IKE SA rekey at the same moment (RFC 7296 §2.8.2 territory): each
    /// refuses the other with TEMPORARY_FAILURE, retries after a random delay, and the tunnel
    /// ends with one IKE SA carrying the CHILD_SA on both sides.
    #[test]
    fn simultaneous_ike_rekey() {
        let (mut a, mut b, now) = established_pair();
        let before = a.sas.values().find(|s| s.is_up()).map(|s| s.spi_i).unwrap();
        for ep in [&mut a, &mut b] {
            for sa in ep.sas.values_mut() {
                sa.rekey_at = Some(now);
            }
        }
        let mut t = now;
        a.handle_timeout(t);
        b.handle_timeout(t);
        pump(&mut a, &mut b, t);
        for _ in 0..200 {
            t += Duration::from_millis(100);
            a.handle_timeout(t);
            b.handle_timeout(t);
            pump(&mut a, &mut b, t);
        }
        for ep in [&a, &b] {
            let up: Vec<_> = ep.sas.values().filter(|s| s.is_up()).collect();
            assert_eq!(up.len(), 1);
            assert_eq!(up[0].children.iter().filter(|c| !c.reported_down).count(), 1);
            assert!(up[0].next_mid <= 3, "rekeyed SA in use");
        }
        let (sa_a, sa_b) = (a.sas.values().find(|s| s.is_up()).unwrap(), b.sas.values().find(|s| s.is_up()).unwrap());
        assert_eq!((sa_a.spi_i, sa_a.spi_r), (sa_b.spi_i, sa_b.spi_r));
        assert_ne!(sa_a.spi_i, before, "the IKE SA was rekeyed");
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use policy::{Dpd, Encryption, Integrity, Ipv4Net, Ikev2Policy, IpsecProposal, Prf, Secret};

    pub fn tunnel(local: &str, peer: &str, l: &str, r: &str) -> TunnelPolicy {
        TunnelPolicy {
            name: format!("M:{peer}"),
            local_addr: local.parse().unwrap(),
            peer_addr: peer.parse().unwrap(),
            outside_ifname: "o".into(),
            local_ts: vec![TrafficSelector::from_net(Ipv4Net::new(l.parse().unwrap(), 24), None)],
            remote_ts: vec![TrafficSelector::from_net(Ipv4Net::new(r.parse().unwrap(), 24), None)],
            ike_policies: vec![Ikev2Policy {
                priority: 1,
                encryption: vec![Encryption::AesGcm256],
                integrity: vec![Integrity::Null],
                groups: vec![DhGroup::Curve25519],
                prf: vec![Prf::Sha256],
                lifetime: Some(Duration::from_secs(3600)),
            }],
            esp_proposals: vec![IpsecProposal { name: "P".into(), encryption: vec![Encryption::AesGcm256], integrity: vec![] }],
            pfs: None,
            child_lifetime: Duration::from_secs(3600),
            child_lifetime_kilobytes: None,
            local_psk: Secret("k".into()),
            remote_psk: Secret("k".into()),
            dpd: Some(Dpd::default()),
            nat_t_disable: false,
            force_udp_encap: false,
            connection_type: ConnectionType::Bidirectional,
        }
    }

    pub fn pump(a: &mut Endpoint, b: &mut Endpoint, now: Instant) {
        for _ in 0..100 {
            let mut moved = false;
            for dir in 0..2 {
                let (x, y) = if dir == 0 { (&mut *a, &mut *b) } else { (&mut *b, &mut *a) };
                while let Some(t) = x.poll_transmit() {
                    moved = true;
                    let _ = y.handle_datagram(now, Path { local: t.path.remote, remote: t.path.local }, &t.data);
                }
                while x.poll_event().is_some() {}
            }
            if !moved {
                return;
            }
        }
    }

    #[allow(clippy::disallowed_methods)] // the virtual clock needs some starting Instant
    pub fn established_pair() -> (Endpoint, Endpoint, Instant) {
        let now = Instant::now();
        let mut a = Endpoint::new(vec![tunnel("192.0.2.1", "192.0.2.2", "10.1.0.0", "10.2.0.0")], Ikev2Globals::default(), Box::new(crypto::SeededRandom::new(5)));
        let mut b = Endpoint::new(vec![tunnel("192.0.2.2", "192.0.2.1", "10.2.0.0", "10.1.0.0")], Ikev2Globals::default(), Box::new(crypto::SeededRandom::new(6)));
        a.handle_command(now, Command::Initiate { tunnel: "M:192.0.2.2".into() });
        pump(&mut a, &mut b, now);
        assert_eq!(a.child_sas().len(), 1);
        (a, b, now)
    }
}
