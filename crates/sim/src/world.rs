//! The simulated world: gateways (engine + SA database), an in-memory network with seeded
//! faults, a virtual clock and the invariant checks.

use crate::rng::SimRng;
use crate::sad::{EventFault, Sad};
use ike::{Command, Endpoint, Event, Path, TimerReason};
use policy::{Ikev2Globals, TunnelPolicy};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Faults applied to every datagram (IKE and ESP) while `t < faults_until`.
#[derive(Debug, Clone)]
pub struct Faults {
    /// Loss per direction, per mille: `[a->b, b->a]` for a datagram from the lower-indexed
    /// gateway to the higher one and back.
    pub loss: [u32; 2],
    pub duplicate: u32,
    /// One-way delay, uniform; a spread larger than the send spacing reorders.
    pub delay: (Duration, Duration),
}

impl Faults {
    pub fn none() -> Self {
        Self { loss: [0, 0], duplicate: 0, delay: (Duration::from_millis(1), Duration::from_millis(3)) }
    }
}

/// Everything between gateways `a` and `b` is dropped in `[from, until)` (only `a -> b` when
/// `one_way`).
#[derive(Debug, Clone)]
pub struct Partition {
    pub a: usize,
    pub b: usize,
    pub from: Duration,
    pub until: Duration,
    pub one_way: bool,
}

/// Data traffic each gateway sends through its current outbound SA, sealed and opened with
/// the real ESP code, so liveness suppression (`InboundActivity`) and kilobyte lifetimes
/// (`ChildSaBytes`) are driven as the daemon drives them.
#[derive(Debug, Clone)]
pub struct Traffic {
    pub interval: Duration,
    pub size: usize,
    /// The daemon's traffic report period.
    pub report_every: Duration,
}

#[derive(Debug, Clone)]
pub enum Action {
    Command { gw: usize, cmd: Command },
    /// The daemon dies: engine and SA database gone, datagrams to it vanish.
    Crash { gw: usize },
    /// The daemon starts (again) with a fresh engine and an empty SA database; like the daemon
    /// it initiates every tunnel that is not answer-only.
    Boot { gw: usize, tunnels: Option<Vec<TunnelPolicy>> },
    /// The NAT in front of a gateway loses its mappings.
    NatRebind,
    /// Arms `cmd` on `gw` to run `delay` after the next CREATE_CHILD_SA request that `gw` (or,
    /// with `any_sender`, any gateway) sends: a clear in the middle of a rekey for sure.
    OnNextCreateChild { gw: usize, cmd: Command, any_sender: bool, delay: Duration },
    /// Harness self-test only: corrupts the encryption key of every inbound SA installed at
    /// `gw`, as a daemon bug would. The invariants must catch it.
    CorruptInbound { gw: usize },
}

/// A NAPT in front of gateway `inside`: its datagrams leave from `public` with a mapped
/// source port; datagrams to `public` reach it only through a live mapping. A rebinding
/// (the NAT forgot its mappings, e.g. after an idle timeout or a reboot) gives the next
/// datagrams new public ports and drops whatever is sent to the old ones.
#[derive(Debug, Clone)]
pub struct Nat {
    pub inside: usize,
    pub public: IpAddr,
    next_port: u16,
    /// private source port -> public port, and back.
    map: BTreeMap<u16, u16>,
    rev: BTreeMap<u16, u16>,
}

impl Nat {
    pub fn new(inside: usize, public: IpAddr) -> Self {
        Self { inside, public, next_port: 40000, map: BTreeMap::new(), rev: BTreeMap::new() }
    }

    fn outbound(&mut self, private_port: u16) -> u16 {
        if let Some(p) = self.map.get(&private_port) {
            return *p;
        }
        let p = self.next_port;
        self.next_port = self.next_port.wrapping_add(1).max(1024);
        self.map.insert(private_port, p);
        self.rev.insert(p, private_port);
        p
    }

    fn inbound(&self, public_port: u16) -> Option<u16> {
        self.rev.get(&public_port).copied()
    }

    fn rebind(&mut self) {
        self.map.clear();
        self.rev.clear();
    }
}

/// Bounds the invariants are checked against.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest time one side may send on an SA the other side cannot decrypt, while both
    /// sides have a CHILD_SA for the tunnel.
    pub handover: Duration,
    /// The same for an orphan: an SA whose IKE SA the receiver does not have (it abandoned
    /// the exchange after the sender had completed it as responder, or it deleted the IKE SA
    /// on INITIAL_CONTACT). The sender learns it only from a failed liveness check.
    pub orphan: Duration,
    /// Longest time a tunnel may stay down once faults stopped.
    pub converge: Duration,
    /// Per gateway and tunnel: IKE SAs (`ike_sas()`), CHILD_SAs (`child_sas()`), installed
    /// inbound SAs in the SA database (live + lingering).
    pub max_ike_sas: usize,
    /// After faults stop, how long data may still not get through a tunnel that is up
    /// (zero: at once; a NAT rebinding needs the peer's next IKE message to be noticed).
    pub esp_recover: Duration,
    /// IKE SAs in negotiation: a responder keeps a half-open SA for 30 s
    /// (`HALF_OPEN_TIMEOUT`) and a peer whose responses are lost starts a new one at most
    /// once per retransmission span, plus our own attempt.
    pub max_half_open: usize,
    pub max_child_sas: usize,
    pub max_installed: usize,
}

impl Limits {
    /// Bounds derived from the settings (see the crate docs for the reasoning).
    pub fn derive(globals: &Ikev2Globals, t: &TunnelPolicy, max_delay: Duration) -> Self {
        let rt = retransmit_span(globals);
        let dpd = t.dpd.map(|d| d.threshold + d.retry * (globals.retransmit_tries + 1)).unwrap_or(Duration::ZERO);
        Self {
            handover: rt + 2 * max_delay + Duration::from_millis(100),
            orphan: rt + dpd + 2 * max_delay + Duration::from_millis(100),
            converge: dpd.max(rt) + REINIT_BACKOFF_MAX_JITTERED + rt + CONVERGE_SLACK,
            max_ike_sas: 3,
            esp_recover: Duration::ZERO,
            max_half_open: (HALF_OPEN_TIMEOUT.as_millis() / rt.as_millis().max(1)) as usize + 2,
            max_child_sas: 6,
            max_installed: 12,
        }
    }
}

/// How long the engine keeps a replaced CHILD_SA before deleting it (`REKEYED_GRACE`).
pub const REKEYED_GRACE: Duration = Duration::from_secs(20);
/// The engine's lifetime of a half-open responder SA.
pub const HALF_OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// The engine's reinitiation backoff cap (4 s) with its +20 % jitter.
pub const REINIT_BACKOFF_MAX_JITTERED: Duration = Duration::from_millis(4800);
/// Time for one clean negotiation (a few round trips of at most 10 ms here) plus a
/// possible IKE_SA_INIT collision resolution, rounded up generously.
pub const CONVERGE_SLACK: Duration = Duration::from_secs(5);

/// From sending a request until the engine gives up on it: `base * (2^(tries+1) - 1)`
/// (first timeout `base`, doubling, `tries` retransmissions, RFC 7296 §2.1).
pub fn retransmit_span(g: &Ikev2Globals) -> Duration {
    let base = g.retransmit_base.max(Duration::from_millis(50));
    (0..=g.retransmit_tries).map(|k| base * 2u32.saturating_pow(k.min(16))).sum()
}

pub struct GatewaySpec {
    pub name: String,
    pub addr: IpAddr,
    pub tunnels: Vec<TunnelPolicy>,
    pub globals: Ikev2Globals,
}

pub struct Gateway {
    pub name: String,
    pub addr: IpAddr,
    pub tunnels: Vec<TunnelPolicy>,
    pub globals: Ikev2Globals,
    /// `None` while crashed.
    pub ep: Option<Endpoint>,
    pub sad: Sad,
    pub incarnation: u32,
    /// Every event, with its virtual time (seconds since start).
    pub events: Vec<(f64, Event)>,
    last_acquire: BTreeMap<String, Instant>,
    /// When each replaced inbound SPI was replaced (ChildSaUp with `replaces_spi_in`).
    pub replaced_at: BTreeMap<u32, Instant>,
    esp_rng: crypto::SeededRandom,
}

/// A tunnel configured on both ends: `(gateway, tunnel name)` twice.
#[derive(Debug, Clone)]
pub struct Pair {
    pub a: (usize, String),
    pub b: (usize, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ike,
    Esp,
}

struct InFlight {
    to: usize,
    /// As seen by the receiver (after NAT).
    path: Path,
    kind: Kind,
    data: Vec<u8>,
    from: usize,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub ike_sent: u64,
    pub ike_dropped: u64,
    pub ike_duplicated: u64,
    pub esp_sent: u64,
    pub esp_dropped: u64,
    pub esp_ok: u64,
    pub esp_no_sa: u64,
    pub esp_replay: u64,
    /// ESP the network could not deliver (no NAT mapping for its destination port).
    pub esp_unroutable: u64,
    pub child_ups: u64,
    pub child_rekeys: u64,
    /// `ChildSaOutbound` events (delayed outbound switches of rekey responders).
    pub outbound_switches: u64,
    /// Commands fired right after a CREATE_CHILD_SA request ([`Action::OnNextCreateChild`]).
    pub mid_rekey_commands: u64,
    /// `poll_encap_change` reports (NAT rebindings followed).
    pub encap_changes: u64,
    pub ike_rekeys: u64,
    pub ike_ups: u64,
    /// CREATE_CHILD_SA requests of both sides in flight at once (a rekey collision candidate).
    pub crossing_create_child: u64,
    /// IKE rekeys started while the peer's own IKE rekey was still unfinished (§2.8.2).
    pub crossing_ike_rekeys: u64,
    pub steps: u64,
    /// Longest mismatch (handover) window seen, in seconds.
    pub longest_handover: f64,
    pub longest_orphan: f64,
    /// Longest time from a `ChildSaUp` replacing an SA to that SA's `ChildSaDown`.
    pub max_replaced_lifetime: f64,
    /// `IkeSaDown` reasons seen, e.g. "PeerRestarted" (INITIAL_CONTACT) or "PeerDead" (DPD).
    pub ike_down_reasons: BTreeMap<String, u64>,
    /// SAs one side sends UDP-encapsulated and the other installed as native (or vice versa).
    pub encap_disagreements: u64,
    pub notes: Vec<String>,
    /// Time from the end of faults until every tunnel was up, in seconds.
    pub converged_after: Option<f64>,
}

pub struct World {
    pub scenario: String,
    pub seed: u64,
    base: Instant,
    pub now: Instant,
    pub gws: Vec<Gateway>,
    pub pairs: Vec<Pair>,
    rng: SimRng,
    faults: Faults,
    faults_until: Duration,
    partitions: Vec<Partition>,
    traffic: Option<Traffic>,
    next_traffic: Instant,
    next_report: Instant,
    queue: BTreeMap<(Instant, u64), InFlight>,
    actions: BTreeMap<(Instant, u64), Action>,
    seq: u64,
    pub limits: Limits,
    /// Per pair and direction (0: a->b, 1: b->a): since when the sender's outbound does not
    /// decrypt at the receiver while both have a CHILD_SA.
    mismatch_since: Vec<[Option<Instant>; 2]>,
    /// Per pair: since when it is not up.
    down_since: Vec<Option<Instant>>,
    /// Last disruptive moment: end of faults, partitions, crashes, boots, clear commands.
    quiet_from: Instant,
    /// Last CREATE_CHILD_SA request sent, per gateway, for collision statistics.
    last_create_child: Vec<Option<Instant>>,
    /// Per gateway: an IKE rekey timer fired and no IkeSaRekeyed/IkeSaDown followed yet.
    ike_rekey_pending: Vec<Option<Instant>>,
    pub stats: Stats,
    trace: VecDeque<String>,
    failure: Option<String>,
    pub check_settled: bool,
    encap_noted: Vec<u32>,
    engine_touched: bool,
    pub nat: Option<Nat>,
    armed: Vec<(usize, Command, bool, Duration)>,
    /// Per pair and receiving direction (0: at b, sent by a; 1: at a, sent by b): last ESP
    /// packet that decrypted.
    last_esp_ok: Vec<[Option<Instant>; 2]>,
    up_since: Vec<Option<Instant>>,
    /// Trace lines kept for a failure report (`SIM_TRACE=<n>` when replaying a seed).
    trace_lines: usize,
}

/// The daemon's rate limit for acquires from the datapath.
pub const ACQUIRE_INTERVAL: Duration = Duration::from_secs(1);
const TRACE_LINES: usize = 60;
const MAX_STEPS_AT_ONE_INSTANT: u32 = 20_000;

impl World {
    pub fn new(scenario: &str, seed: u64, specs: Vec<GatewaySpec>, limits: Limits) -> Self {
        let mut rng = SimRng::new(seed);
        // The virtual clock's origin: the engines only ever compare and subtract instants, so
        // any origin gives the same run. It is the one real clock read of the simulation.
        #[allow(clippy::disallowed_methods)]
        let base = Instant::now();
        let mut gws = Vec::new();
        for s in specs {
            let engine_seed = rng.fork();
            let esp_seed = rng.fork();
            gws.push(Gateway {
                ep: Some(Endpoint::new(s.tunnels.clone(), s.globals.clone(), Box::new(crypto::SeededRandom::new(engine_seed)))),
                name: s.name,
                addr: s.addr,
                tunnels: s.tunnels,
                globals: s.globals,
                sad: Sad::default(),
                incarnation: 0,
                events: Vec::new(),
                last_acquire: BTreeMap::new(),
                replaced_at: BTreeMap::new(),
                esp_rng: crypto::SeededRandom::new(esp_seed),
            });
        }
        let pairs = pairs_of(&gws, None);
        let n = gws.len();
        let np = pairs.len();
        Self {
            scenario: scenario.to_string(),
            seed,
            base,
            now: base,
            gws,
            pairs,
            rng,
            faults: Faults::none(),
            faults_until: Duration::ZERO,
            partitions: Vec::new(),
            traffic: None,
            next_traffic: base,
            next_report: base,
            queue: BTreeMap::new(),
            actions: BTreeMap::new(),
            seq: 0,
            limits,
            mismatch_since: vec![[None, None]; np],
            down_since: vec![Some(base); np],
            quiet_from: base,
            last_create_child: vec![None; n],
            ike_rekey_pending: vec![None; n],
            stats: Stats::default(),
            trace: VecDeque::new(),
            failure: None,
            check_settled: true,
            encap_noted: Vec::new(),
            engine_touched: true,
            nat: None,
            armed: Vec::new(),
            last_esp_ok: vec![[None, None]; np],
            up_since: vec![None; np],
            trace_lines: std::env::var("SIM_TRACE").ok().and_then(|v| v.parse().ok()).unwrap_or(TRACE_LINES),
        }
    }

    /// Puts gateway `nat.inside` behind a NAPT (its peers must name `nat.public` as peer).
    pub fn set_nat(&mut self, nat: Nat) {
        self.pairs = pairs_of(&self.gws, Some(&nat));
        let np = self.pairs.len();
        self.mismatch_since = vec![[None, None]; np];
        self.down_since = vec![Some(self.now); np];
        self.last_esp_ok = vec![[None, None]; np];
        self.up_since = vec![None; np];
        self.nat = Some(nat);
    }

    pub fn rng(&mut self) -> &mut SimRng {
        &mut self.rng
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    fn secs(&self) -> f64 {
        self.elapsed().as_secs_f64()
    }

    pub fn set_faults(&mut self, f: Faults, until: Duration) {
        self.faults = f;
        self.faults_until = until;
        self.quiet_from = self.quiet_from.max(self.base + until);
    }

    pub fn add_partition(&mut self, p: Partition) {
        self.quiet_from = self.quiet_from.max(self.base + p.until);
        self.partitions.push(p);
    }

    pub fn set_traffic(&mut self, t: Traffic) {
        self.traffic = Some(t);
    }

    /// Schedules an action at virtual time `at` (from the start).
    pub fn at(&mut self, at: Duration, a: Action) {
        let disruptive = match &a {
            Action::Command { cmd, .. } => matches!(cmd, Command::ClearIkeSa { .. } | Command::ClearChildSas { .. }),
            Action::Crash { .. } | Action::Boot { .. } => true,
            Action::CorruptInbound { .. } => false,
            Action::NatRebind => true,
            Action::OnNextCreateChild { .. } => false,
        };
        if disruptive {
            self.quiet_from = self.quiet_from.max(self.base + at);
        }
        self.seq += 1;
        self.actions.insert((self.base + at, self.seq), a);
    }

    /// The gateway is not running yet (until a scheduled [`Action::Boot`]).
    pub fn power_off(&mut self, gw: usize) {
        self.gws[gw].ep = None;
        self.gws[gw].sad.clear();
    }

    /// Issues `Initiate` for every tunnel that is not answer-only, as the daemon does at start.
    pub fn boot_all(&mut self) {
        for gw in 0..self.gws.len() {
            self.initiate_all(gw);
        }
    }

    fn initiate_all(&mut self, gw: usize) {
        let names: Vec<String> = self.gws[gw]
            .tunnels
            .iter()
            .filter(|t| t.connection_type != policy::ConnectionType::AnswerOnly)
            .map(|t| t.name.clone())
            .collect();
        for tunnel in names {
            self.command(gw, Command::Initiate { tunnel });
        }
    }

    pub fn command(&mut self, gw: usize, cmd: Command) {
        let now = self.now;
        let quiet = matches!(cmd, Command::InboundActivity { .. } | Command::ChildSaBytes { .. });
        if !quiet {
            let line = format!("{} cmd {cmd:?}", self.gws[gw].name);
            self.note(line);
        }
        if let Some(ep) = self.gws[gw].ep.as_mut() {
            ep.handle_command(now, cmd);
        }
        self.drain(gw);
    }

    /// Runs until virtual time `end` (from the start), or the first invariant violation.
    pub fn run_until(&mut self, end: Duration) -> Result<(), String> {
        let end = self.base + end;
        let mut same_instant = 0u32;
        let mut last = self.now;
        while self.failure.is_none() {
            let Some(t) = self.next_wakeup().filter(|t| *t <= end) else { break };
            let t = t.max(self.now);
            if t == last {
                same_instant += 1;
                if same_instant > MAX_STEPS_AT_ONE_INSTANT {
                    let who = self.gws.iter().filter_map(|g| g.ep.as_ref().and_then(|e| e.poll_timeout()).map(|x| (g.name.clone(), x.1))).collect::<Vec<_>>();
                    self.fail(format!("livelock: {MAX_STEPS_AT_ONE_INSTANT} wake-ups at one instant; timers {who:?}"));
                    break;
                }
            } else {
                same_instant = 0;
                last = t;
            }
            self.now = t;
            self.step();
        }
        if self.failure.is_none() {
            self.now = self.now.max(end);
            self.check();
        }
        match &self.failure {
            Some(f) => Err(f.clone()),
            None => Ok(()),
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut take = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        take(self.queue.keys().next().map(|k| k.0));
        take(self.actions.keys().next().map(|k| k.0));
        for g in &self.gws {
            take(g.ep.as_ref().and_then(|e| e.poll_timeout()).map(|x| x.0));
            take(g.sad.next_removal());
        }
        if let Some(tr) = &self.traffic {
            take(Some(self.next_traffic));
            take(Some(self.next_report));
            let _ = tr;
        }
        t
    }

    fn step(&mut self) {
        self.stats.steps += 1;
        let now = self.now;
        // SA database housekeeping first: an inbound SA whose linger ended is gone before
        // anything else happens at this instant.
        for g in &mut self.gws {
            g.sad.remove_due(now);
        }
        while let Some(e) = self.actions.first_entry() {
            if e.key().0 > now {
                break;
            }
            let a = e.remove();
            self.act(a);
        }
        while let Some(e) = self.queue.first_entry() {
            if e.key().0 > now {
                break;
            }
            let f = e.remove();
            self.deliver(f);
        }
        for gw in 0..self.gws.len() {
            let due = self.gws[gw].ep.as_ref().and_then(|e| e.poll_timeout()).filter(|(t, _)| *t <= now);
            if let Some((_, reason)) = due {
                if reason == TimerReason::RekeyIke {
                    // The other side started an IKE rekey that has not completed yet: both
                    // requests are (or will be) in flight at once, a §2.8.2 collision.
                    let crossing = self.ike_rekey_pending.iter().enumerate().any(|(i, t)| i != gw && t.is_some());
                    if crossing {
                        self.stats.crossing_ike_rekeys += 1;
                    }
                    self.ike_rekey_pending[gw] = Some(now);
                }
                if !matches!(reason, TimerReason::Retransmit) {
                    let line = format!("{} timer {reason:?}", self.gws[gw].name);
                    self.note(line);
                }
                if let Some(ep) = self.gws[gw].ep.as_mut() {
                    ep.handle_timeout(now);
                }
                self.drain(gw);
            }
        }
        if self.traffic.is_some() {
            if self.next_traffic <= now {
                self.send_traffic();
            }
            if self.next_report <= now {
                self.report_traffic();
            }
        }
        self.check();
    }

    fn act(&mut self, a: Action) {
        match a {
            Action::Command { gw, cmd } => self.command(gw, cmd),
            Action::Crash { gw } => {
                self.ike_rekey_pending[gw] = None;
                let line = format!("{} CRASH", self.gws[gw].name);
                self.note(line);
                let g = &mut self.gws[gw];
                g.ep = None;
                g.sad.clear();
            }
            Action::OnNextCreateChild { gw, cmd, any_sender, delay } => self.armed.push((gw, cmd, any_sender, delay)),
            Action::NatRebind => {
                self.note("NAT REBIND (all mappings lost)".into());
                if let Some(n) = self.nat.as_mut() {
                    n.rebind();
                }
            }
            Action::CorruptInbound { gw } => {
                let line = format!("{} SABOTAGE inbound keys", self.gws[gw].name);
                self.note(line);
                for c in self.gws[gw].sad.children.values_mut() {
                    if let Some(b) = c.up.inbound.enc_key.first_mut() {
                        *b ^= 0x01;
                    }
                }
            }
            Action::Boot { gw, tunnels } => {
                let seed = self.rng.fork();
                let g = &mut self.gws[gw];
                if let Some(t) = tunnels {
                    g.tunnels = t;
                }
                g.incarnation += 1;
                g.sad.clear();
                g.ep = Some(Endpoint::new(g.tunnels.clone(), g.globals.clone(), Box::new(crypto::SeededRandom::new(seed))));
                let line = format!("{} BOOT incarnation {}", g.name, g.incarnation);
                self.note(line);
                self.initiate_all(gw);
            }
        }
    }

    /// After any `handle_*`: transmits first, then events (the daemon's order).
    fn drain(&mut self, gw: usize) {
        self.engine_touched = true;
        loop {
            let Some(ep) = self.gws[gw].ep.as_mut() else { return };
            if let Some(t) = ep.poll_transmit() {
                self.send_ike(gw, t);
                continue;
            }
            if let Some(e) = ep.poll_event() {
                self.on_event(gw, e);
                continue;
            }
            match ep.poll_encap_change() {
                Some(c) => self.on_encap_change(gw, c),
                None => return,
            }
        }
    }

    fn on_event(&mut self, gw: usize, e: Event) {
        let now = self.now;
        let t = self.secs();
        let name = self.gws[gw].name.clone();
        match &e {
            Event::ChildSaUp(up) => {
                self.stats.child_ups += 1;
                if up.replaces_spi_in.is_some() {
                    self.stats.child_rekeys += 1;
                }
                self.note(format!(
                    "{name} ChildSaUp in={:08x} out={:08x} replaces={:?} init={}{}",
                    up.inbound.spi,
                    up.outbound.spi,
                    up.replaces_spi_in.map(|s| format!("{s:08x}")),
                    up.initiator,
                    if up.outbound_now { "" } else { " (inbound only)" }
                ));
                // A CHILD_SA created on an IKE SA that is being deleted is never reported down
                // (its IKE SA's children were reported when the deletion started): finding F1.
                let doomed = self.gws[gw].ep.as_ref().and_then(|ep| {
                    let c = ep.child_sas().into_iter().find(|c| c.spi_in == up.inbound.spi)?;
                    ep.ike_sas().into_iter().find(|s| (s.spi_i, s.spi_r) == (c.ike_spi_i, c.ike_spi_r) && s.status == ike::IkeStatus::Deleting)
                });
                if let Some(sa) = doomed {
                    let m = format!(
                        "[F1] {name}: ChildSaUp {:08x} on IKE SA {:016x}/{:016x} that is being deleted; it will never be reported down",
                        up.inbound.spi, sa.spi_i, sa.spi_r
                    );
                    self.fail(m);
                }
                let g = &mut self.gws[gw];
                if let Some(old) = up.replaces_spi_in {
                    g.replaced_at.insert(old, now);
                }
                if up.local != g.addr {
                    let m = format!("{name}: ChildSaUp with local address {} (gateway is {})", up.local, g.addr);
                    self.fail(m);
                } else if let Err(f) = g.sad.child_up(now, up.clone(), &mut g.esp_rng) {
                    let m = match f {
                        EventFault::DuplicateInboundSpi(s) => format!("{name}: ChildSaUp for inbound SPI {s:08x} that is already installed"),
                        EventFault::Unusable(s, why) => format!("{name}: ChildSaUp {s:08x} not installable: {why}"),
                    };
                    self.fail(m);
                }
            }
            Event::ChildSaDown { tunnel, spi_in, spi_out, reason } => {
                self.note(format!("{name} ChildSaDown in={spi_in:08x} out={spi_out:08x} {reason:?}"));
                if let Some(t) = self.gws[gw].replaced_at.get(spi_in) {
                    // How long a replaced SA stayed in the engine before its Delete completed.
                    self.stats.max_replaced_lifetime = self.stats.max_replaced_lifetime.max((now - *t).as_secs_f64());
                }
                let known = self.gws[gw].sad.child_down(now, tunnel, *spi_in);
                if !known {
                    self.note(format!("{name}   (Down for an SPI never installed)"));
                }
            }
            Event::ChildSaOutbound { tunnel, spi_in } => {
                self.stats.outbound_switches += 1;
                self.note(format!("{name} ChildSaOutbound in={spi_in:08x}"));
                if !self.gws[gw].sad.child_outbound(now, tunnel, *spi_in) {
                    self.note(format!("{name}   (not waiting for a switch)"));
                }
            }
            Event::IkeSaUp { initiator, spi_i, spi_r, .. } => {
                self.stats.ike_ups += 1;
                self.note(format!("{name} IkeSaUp {spi_i:016x}/{spi_r:016x} init={initiator}"));
            }
            Event::IkeSaDown { reason, .. } => {
                self.ike_rekey_pending[gw] = None;
                *self.stats.ike_down_reasons.entry(format!("{reason:?}")).or_default() += 1;
                self.note(format!("{name} IkeSaDown {reason:?}"));
            }
            Event::IkeSaRekeyed { new_spi_i, new_spi_r, .. } => {
                self.ike_rekey_pending[gw] = None;
                self.stats.ike_rekeys += 1;
                self.note(format!("{name} IkeSaRekeyed -> {new_spi_i:016x}/{new_spi_r:016x}"));
            }
            Event::IkeNegotiationFailed { reason, .. } => self.note(format!("{name} IkeNegotiationFailed {reason}")),
            Event::ChildSaFailed { reason, .. } => self.note(format!("{name} ChildSaFailed {reason}")),
            // An event kind added to the engine after this model was written: traced, not
            // modelled (the invariants will show if the daemon had to act on it).
            #[allow(unreachable_patterns)]
            other => self.note(format!("{name} unmodelled event {other:?}")),
        }
        self.gws[gw].events.push((t, e));
    }

    /// The peer moved (NAT rebinding): the daemon sends these SAs' ESP to the new place.
    fn on_encap_change(&mut self, gw: usize, c: ike::EncapChange) {
        let name = self.gws[gw].name.clone();
        self.stats.encap_changes += 1;
        self.note(format!("{name} EncapChange {} {:?} for {:08x?}", c.peer, c.encap, c.spi_in));
        for spi in &c.spi_in {
            if let Some(child) = self.gws[gw].sad.children.get_mut(spi) {
                child.up.encap = c.encap;
                child.up.peer = c.peer.ip();
            }
        }
    }

    fn gw_by_addr(&self, ip: IpAddr) -> Option<usize> {
        if let Some(n) = &self.nat {
            if n.public == ip {
                return Some(n.inside);
            }
        }
        self.gws.iter().position(|g| g.addr == ip)
    }

    /// Applies the NAT to a datagram from `from` sent `src -> dst`; returns the receiver and
    /// the path as the receiver sees it, or None when nobody is there or the NAT drops it.
    fn route(&mut self, from: usize, src: SocketAddr, dst: SocketAddr) -> Option<(usize, Path)> {
        let to = self.gw_by_addr(dst.ip())?;
        let mut remote = src;
        let mut local = dst;
        if let Some(n) = self.nat.as_mut() {
            if n.inside == from && n.inside != to {
                remote = SocketAddr::new(n.public, n.outbound(src.port()));
            }
            if n.inside == to && dst.ip() == n.public {
                let p = n.inbound(dst.port())?;
                local = SocketAddr::new(self.gws[to].addr, p);
            }
        }
        Some((to, Path { local, remote }))
    }

    fn send_ike(&mut self, from: usize, t: ike::Transmit) {
        self.stats.ike_sent += 1;
        let name = self.gws[from].name.clone();
        if t.path.local.ip() != self.gws[from].addr {
            let m = format!("{name} sent IKE from {} which is not its address {}", t.path.local, self.gws[from].addr);
            self.fail(m);
            return;
        }
        if ![500, 4500].contains(&t.path.local.port()) {
            let m = format!("{name} sent IKE from port {}", t.path.local.port());
            self.fail(m);
            return;
        }
        let summary = summarize(&t.data);
        if let Ok(h) = wire::ike::Header::parse(&t.data) {
            if h.exchange == wire::ike::ExchangeType::CreateChildSa && !h.is_response() {
                let now = self.now;
                let crossing = self.last_create_child.iter().enumerate().any(|(i, x)| i != from && x.is_some_and(|x| now - x < Duration::from_millis(500)));
                if crossing {
                    self.stats.crossing_create_child += 1;
                }
                self.last_create_child[from] = Some(now);
                let (fire, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.armed).into_iter().partition(|a| a.0 == from || a.2);
                self.armed = keep;
                for (gw, cmd, _, delay) in fire {
                    self.stats.mid_rekey_commands += 1;
                    // A clear is disruptive: faults "stop" only after it.
                    self.quiet_from = self.quiet_from.max(now + delay);
                    self.seq += 1;
                    self.actions.insert((now + delay, self.seq), Action::Command { gw, cmd });
                }
            }
        }
        let Some((to, path)) = self.route(from, t.path.local, t.path.remote) else {
            self.note(format!("{name} -> {} {summary} (nobody there / no NAT mapping)", t.path.remote));
            return;
        };
        let copies = self.fault_copies(from, to);
        if copies == 0 {
            self.stats.ike_dropped += 1;
        }
        if copies > 1 {
            self.stats.ike_duplicated += 1;
        }
        let peer = self.gws[to].name.clone();
        self.note(format!("{name} -> {peer} {summary}{}", match copies { 0 => " LOST", 1 => "", _ => " DUP" }));
        for _ in 0..copies {
            let d = self.delay();
            self.enqueue(d, InFlight { to, path, kind: Kind::Ike, data: t.data.clone(), from });
        }
    }

    fn enqueue(&mut self, delay: Duration, f: InFlight) {
        self.seq += 1;
        self.queue.insert((self.now + delay, self.seq), f);
    }

    /// How many copies of a datagram from `from` to `to` arrive (0 = lost).
    fn fault_copies(&mut self, from: usize, to: usize) -> u32 {
        let el = self.elapsed();
        let cut = self.partitions.iter().any(|p| {
            el >= p.from && el < p.until && ((p.a == from && p.b == to) || (!p.one_way && p.a == to && p.b == from))
        });
        if cut {
            return 0;
        }
        if el >= self.faults_until {
            return 1;
        }
        let dir = usize::from(from > to);
        if self.rng.chance(self.faults.loss[dir]) {
            return 0;
        }
        if self.rng.chance(self.faults.duplicate) {
            2
        } else {
            1
        }
    }

    fn delay(&mut self) -> Duration {
        if self.elapsed() >= self.faults_until {
            let f = Faults::none();
            self.rng.between(f.delay.0, f.delay.1)
        } else {
            let (lo, hi) = self.faults.delay;
            self.rng.between(lo, hi)
        }
    }

    pub fn max_delay(f: &Faults) -> Duration {
        f.delay.1.max(Faults::none().delay.1)
    }

    fn deliver(&mut self, f: InFlight) {
        let now = self.now;
        match f.kind {
            Kind::Ike => {
                let Some(ep) = self.gws[f.to].ep.as_mut() else { return };
                let _ = ep.handle_datagram(now, f.path, &f.data);
                self.drain(f.to);
            }
            Kind::Esp => self.receive_esp(f.to, f.from, f.data),
        }
    }

    fn send_traffic(&mut self) {
        let Some(tr) = self.traffic.clone() else { return };
        self.next_traffic = self.now + tr.interval;
        let inner = vec![0x45u8; tr.size];
        for gw in 0..self.gws.len() {
            if self.gws[gw].ep.is_none() {
                continue;
            }
            let tunnels: Vec<(String, IpAddr)> = self.gws[gw].tunnels.iter().map(|t| (t.name.clone(), t.peer_addr)).collect();
            for (tunnel, peer) in tunnels {
                let Some(spi) = self.gws[gw].sad.spd.get(&tunnel).and_then(|l| l.first()).copied() else {
                    // The daemon's datapath: protected traffic without an SA asks the engine
                    // to bring the tunnel up, at most once per ACQUIRE_INTERVAL.
                    let now = self.now;
                    let answer_only = self.gws[gw].tunnels.iter().any(|t| t.name == tunnel && t.connection_type == policy::ConnectionType::AnswerOnly);
                    let last = self.gws[gw].last_acquire.get(&tunnel).copied();
                    if !answer_only && last.is_none_or(|l| now - l >= ACQUIRE_INTERVAL) {
                        self.gws[gw].last_acquire.insert(tunnel.clone(), now);
                        self.command(gw, Command::Initiate { tunnel });
                    }
                    continue;
                };
                let Some(c) = self.gws[gw].sad.children.get_mut(&spi) else { continue };
                let mut out = vec![0u8; tr.size + 128];
                let Ok(n) = c.outbound.seal(&inner, 4, &mut out) else { continue };
                c.out_bytes += tr.size as u64;
                out.truncate(n);
                self.stats.esp_sent += 1;
                let _ = peer;
                // Where the daemon sends it: the SA's peer, native (port 0 here: a NAPT cannot
                // map it) or UDP-encapsulated to the negotiated ports.
                let (src, dst) = match c.up.encap {
                    esp::Encap::Native => (SocketAddr::new(c.up.local, 0), SocketAddr::new(c.up.peer, 0)),
                    esp::Encap::Udp { local_port, remote_port } => (SocketAddr::new(c.up.local, local_port), SocketAddr::new(c.up.peer, remote_port)),
                };
                let natted = self.nat.as_ref().is_some_and(|n| n.inside == gw || n.public == dst.ip());
                if natted && dst.port() == 0 {
                    self.stats.esp_dropped += 1;
                    continue;
                }
                let Some((to, path)) = self.route(gw, src, dst) else {
                    self.stats.esp_unroutable += 1;
                    continue;
                };
                let copies = self.fault_copies(gw, to);
                if copies == 0 {
                    self.stats.esp_dropped += 1;
                }
                for _ in 0..copies {
                    let d = self.delay();
                    self.enqueue(d, InFlight { to, path, kind: Kind::Esp, data: out.clone(), from: gw });
                }
            }
        }
    }

    fn receive_esp(&mut self, to: usize, from: usize, mut data: Vec<u8>) {
        if self.gws[to].ep.is_none() {
            return;
        }
        let Some(spi) = esp::esp_spi(&data) else { return };
        let name = self.gws[to].name.clone();
        let Some(c) = self.gws[to].sad.children.get_mut(&spi) else {
            self.stats.esp_no_sa += 1;
            let known = self.gws.iter().enumerate().filter(|(i, _)| *i != to).any(|(_, g)| g.sad.children.values().any(|c| c.up.outbound.spi == spi));
            self.note(format!("{name} ESP for SPI {spi:08x}: no inbound SA{}", if known { "" } else { " (sender no longer has it either)" }));
            return;
        };
        match c.inbound.open(&mut data) {
            Ok(o) => {
                let n = o.inner.len() as u64;
                c.in_packets += 1;
                c.in_bytes += n;
                self.stats.esp_ok += 1;
                let tunnel = c.tunnel.clone();
                let now = self.now;
                for (p, pair) in self.pairs.iter().enumerate() {
                    if pair.b == (to, tunnel.clone()) && pair.a.0 == from {
                        self.last_esp_ok[p][0] = Some(now);
                    } else if pair.a == (to, tunnel.clone()) && pair.b.0 == from {
                        self.last_esp_ok[p][1] = Some(now);
                    }
                }
            }
            Err(esp::EspError::ReplayedOrTooOld { .. }) => self.stats.esp_replay += 1,
            Err(e) => {
                let m = format!("{name}: ESP on installed SA {spi:08x} failed: {e} (sender used other keys for this SPI)");
                self.fail(m);
            }
        }
    }

    /// The daemon's periodic report: inbound activity and byte totals per live SA.
    fn report_traffic(&mut self) {
        let Some(tr) = self.traffic.clone() else { return };
        self.next_report = self.now + tr.report_every;
        for gw in 0..self.gws.len() {
            let mut cmds = Vec::new();
            for (spi, c) in self.gws[gw].sad.children.iter_mut().filter(|(_, c)| c.remove_at.is_none()) {
                if c.in_packets != c.reported_packets {
                    c.reported_packets = c.in_packets;
                    cmds.push(Command::InboundActivity { spi_in: *spi });
                }
                let bytes = c.in_bytes.max(c.out_bytes);
                if bytes != c.reported_bytes {
                    c.reported_bytes = bytes;
                    cmds.push(Command::ChildSaBytes { spi_in: *spi, bytes });
                }
            }
            for c in cmds {
                self.command(gw, c);
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Invariants

    fn check(&mut self) {
        if self.failure.is_some() {
            return;
        }
        let now = self.now;
        let mut all_up = true;
        for p in 0..self.pairs.len() {
            let pair = self.pairs[p].clone();
            let mut pair_up = true;
            for (dir, (x, y)) in [(&pair.a, &pair.b), (&pair.b, &pair.a)].into_iter().enumerate() {
                let (gx, gy) = (&self.gws[x.0], &self.gws[y.0]);
                let out = gx.sad.outbound(&x.1);
                let both = out.is_some() && gy.sad.has_child(&y.1);
                let ok = match out {
                    Some(o) => gy.sad.accepts(&o.up.outbound).is_some_and(|c| {
                        c.tunnel == y.1 && c.up.local_ts == o.up.remote_ts && c.up.remote_ts == o.up.local_ts
                    }),
                    None => false,
                };
                pair_up &= ok && both;
                // Native ESP versus UDP encapsulation: the holdfast datapath accepts either for
                // any SA, so a disagreement does not lose packets between two holdfasts, but a
                // peer that only decapsulates what it negotiated would drop them. Counted.
                if let (true, Some(o)) = (ok, out) {
                    if let Some(c) = gy.sad.accepts(&o.up.outbound) {
                        if matches!(c.up.encap, esp::Encap::Native) != matches!(o.up.encap, esp::Encap::Native) && !self.encap_noted.contains(&o.up.outbound.spi) {
                            let note = format!("{} sends SA {:08x} as {:?}, {} installed it as {:?}", gx.name, o.up.outbound.spi, o.up.encap, gy.name, c.up.encap);
                            self.encap_noted.push(o.up.outbound.spi);
                            self.stats.encap_disagreements += 1;
                            if self.stats.notes.len() < 4 {
                                self.stats.notes.push(note);
                            }
                        }
                    }
                }
                if both && !ok {
                    let since = *self.mismatch_since[p][dir].get_or_insert(now);
                    let age = now - since;
                    // An SA whose IKE SA the receiver does not have (any more) is an orphan:
                    // the receiver gave up on (or never completed) the exchange that created
                    // it, and the sender can only learn that through a liveness check.
                    let orphan = out.is_some_and(|o| {
                        let spi = o.up.inbound.spi;
                        let ike = gx.ep.as_ref().and_then(|e| e.child_sas().into_iter().find(|c| c.spi_in == spi)).map(|c| (c.ike_spi_i, c.ike_spi_r));
                        match (ike, gy.ep.as_ref()) {
                            (Some(k), Some(e)) => !e.ike_sas().iter().any(|s| (s.spi_i, s.spi_r) == k),
                            _ => true,
                        }
                    });
                    let bound = if orphan { self.limits.orphan } else { self.limits.handover };
                    if orphan {
                        self.stats.longest_orphan = self.stats.longest_orphan.max(age.as_secs_f64());
                    } else {
                        self.stats.longest_handover = self.stats.longest_handover.max(age.as_secs_f64());
                    }
                    if age > bound {
                        let o = out.map(|o| &o.up.outbound);
                        let m = format!(
                            "{} sends on SA {:08x} that {} cannot decrypt for {:.3} s (> {} bound {:.3} s); {} has inbound {:?}",
                            gx.name,
                            o.map(|o| o.spi).unwrap_or(0),
                            gy.name,
                            age.as_secs_f64(),
                            if orphan { "orphan" } else { "handover" },
                            bound.as_secs_f64(),
                            gy.name,
                            gy.sad.children.keys().map(|s| format!("{s:08x}")).collect::<Vec<_>>()
                        );
                        self.fail(m);
                        return;
                    }
                } else {
                    self.mismatch_since[p][dir] = None;
                }
            }
            if pair_up {
                self.down_since[p] = None;
                let since = *self.up_since[p].get_or_insert(now);
                // End to end: once faults stopped and the tunnel has been up for a while, the
                // data each side sends must reach the other (catches e.g. ESP sent to a stale
                // NAT mapping, which the key checks cannot see).
                if let Some(tr) = &self.traffic {
                    let window = tr.interval * 4 + Duration::from_secs(2);
                    let from = since.max(self.quiet_from + self.limits.esp_recover);
                    if now >= from + window {
                        for dir in 0..2 {
                            let ok = self.last_esp_ok[p][dir].is_some_and(|t| now - t <= window);
                            if !ok {
                                let (sx, sy) = if dir == 0 { (&pair.a, &pair.b) } else { (&pair.b, &pair.a) };
                                let m = format!(
                                    "tunnel up but no ESP from {} has reached {} for {:.1} s (last at {:?})",
                                    self.gws[sx.0].name,
                                    self.gws[sy.0].name,
                                    (now - from).as_secs_f64().min(self.last_esp_ok[p][dir].map(|t| (now - t).as_secs_f64()).unwrap_or(f64::MAX)),
                                    self.last_esp_ok[p][dir].map(|t| (t - self.base).as_secs_f64())
                                );
                                self.fail(m);
                                return;
                            }
                        }
                    }
                }
            } else {
                self.up_since[p] = None;
                all_up = false;
                let since = *self.down_since[p].get_or_insert(now);
                if now >= self.quiet_from {
                    let age = now - since.max(self.quiet_from);
                    if age > self.limits.converge {
                        let m = format!(
                            "tunnel {}<->{} still not up {:.1} s after faults stopped (bound {:.1} s)",
                            self.gws[pair.a.0].name,
                            self.gws[pair.b.0].name,
                            age.as_secs_f64(),
                            self.limits.converge.as_secs_f64()
                        );
                        self.fail(m);
                        return;
                    }
                }
            }
        }
        if all_up && now >= self.quiet_from && self.stats.converged_after.is_none() {
            self.stats.converged_after = Some((now - self.quiet_from).as_secs_f64());
        }
        // Bounded state, per gateway and tunnel (only engines change it; ESP alone does not).
        if !std::mem::take(&mut self.engine_touched) {
            return;
        }
        for g in 0..self.gws.len() {
            let gw = &self.gws[g];
            let Some(ep) = gw.ep.as_ref() else { continue };
            let n = gw.tunnels.len().max(1);
            let sas = ep.ike_sas();
            let negotiating = sas.iter().filter(|s| s.status == ike::IkeStatus::Negotiating).count();
            let ike = sas.len() - negotiating;
            let child = ep.child_sas().len();
            let installed = gw.sad.children.len();
            let m = if ike > self.limits.max_ike_sas * n {
                Some(format!("{}: {ike} established/deleting IKE SAs (bound {} per tunnel)", gw.name, self.limits.max_ike_sas))
            } else if negotiating > self.limits.max_half_open * n {
                Some(format!("{}: {negotiating} IKE SAs in negotiation (bound {} per tunnel)", gw.name, self.limits.max_half_open))
            } else if child > self.limits.max_child_sas * n {
                Some(format!("{}: {child} CHILD_SAs (bound {} per tunnel): {:?}", gw.name, self.limits.max_child_sas, ep.child_sas().iter().map(|c| format!("{:08x}", c.spi_in)).collect::<Vec<_>>()))
            } else if installed > self.limits.max_installed * n {
                Some(format!("{}: {installed} installed inbound SAs (bound {} per tunnel)", gw.name, self.limits.max_installed))
            } else {
                None
            };
            if let Some(m) = m {
                self.fail(m);
                return;
            }
        }
    }

    /// End-of-run checks once the network has been quiet for a while: one IKE SA per
    /// tunnel, the engine's CHILD_SAs are exactly the SAs the daemon has live, and both
    /// sides agree on them.
    pub fn check_settled(&mut self) -> Result<(), String> {
        if let Some(f) = &self.failure {
            return Err(f.clone());
        }
        for pair in self.pairs.clone() {
            for (gw, tunnel) in [&pair.a, &pair.b] {
                let g = &self.gws[*gw];
                let Some(ep) = g.ep.as_ref() else { continue };
                // Tunnels to the same peer share its IKE SA: one ready IKE SA per peer.
                let peer = g.tunnels.iter().find(|t| t.name == *tunnel).map(|t| t.peer_addr);
                let ready: Vec<_> = ep.ike_sas().into_iter().filter(|s| Some(s.remote.ip()) == peer && s.status == ike::IkeStatus::Ready).collect();
                let mut engine: Vec<u32> = ep.child_sas().iter().filter(|c| c.tunnel == *tunnel).map(|c| c.spi_in).collect();
                engine.sort_unstable();
                let sad = g.sad.live_spis(tunnel);
                // A replaced SA stays in the engine for its grace period (REKEYED_GRACE, 20 s)
                // until its Delete completes; the daemon already moved on.
                let grace = REKEYED_GRACE + retransmit_span(&g.globals);
                let now = self.now;
                let in_grace = |s: &u32| g.replaced_at.get(s).is_some_and(|t| now - *t <= grace);
                let engine: Vec<u32> = engine.into_iter().filter(|s| sad.contains(s) || !in_grace(s)).collect();
                let m = if ready.len() != 1 {
                    Some(format!("{}: {} ready IKE SAs for {tunnel} after settling: {:?}", g.name, ready.len(), ready.iter().map(|s| (s.spi_i, s.spi_r)).collect::<Vec<_>>()))
                } else if engine != sad {
                    Some(format!(
                        "{}: engine CHILD_SAs {:08x?} but events left the daemon with {:08x?} (events and state disagree)",
                        g.name, engine, sad
                    ))
                } else if engine.len() > 2 {
                    Some(format!("{}: {} CHILD_SAs for one tunnel after settling", g.name, engine.len()))
                } else {
                    None
                };
                if let Some(m) = m {
                    self.fail(m);
                    return Err(self.failure.clone().unwrap_or_default());
                }
            }
            // Every live SA on one side has its counterpart on the other.
            let (ga, gb) = (&self.gws[pair.a.0], &self.gws[pair.b.0]);
            let mut bad = None;
            for (x, xt, y, yt) in [(ga, &pair.a.1, gb, &pair.b.1), (gb, &pair.b.1, ga, &pair.a.1)] {
                for spi in x.sad.live_spis(xt) {
                    let Some(c) = x.sad.children.get(&spi) else { continue };
                    let mirrored = y.sad.live_spis(yt).contains(&c.up.outbound.spi);
                    if !mirrored && bad.is_none() {
                        bad = Some(format!("{}: live SA {spi:08x} (out {:08x}) has no live counterpart at {} after settling", x.name, c.up.outbound.spi, y.name));
                    }
                }
            }
            if let Some(m) = bad {
                self.fail(m);
                return Err(self.failure.clone().unwrap_or_default());
            }
        }
        Ok(())
    }

    fn note(&mut self, line: String) {
        if self.trace.len() >= self.trace_lines {
            self.trace.pop_front();
        }
        let t = self.secs();
        self.trace.push_back(format!("{t:>10.3} {line}"));
    }

    pub fn fail(&mut self, what: String) {
        if self.failure.is_some() {
            return;
        }
        let mut s = String::new();
        let _ = writeln!(s, "scenario {} seed {} at t={:.3}s: {what}", self.scenario, self.seed, self.secs());
        let _ = writeln!(s, "  replay: SIM_SEED={} cargo test -p holdfast-sim {}", self.seed, self.scenario);
        let _ = writeln!(s, "  last {} trace lines:", self.trace.len());
        for l in &self.trace {
            let _ = writeln!(s, "    {l}");
        }
        self.failure = Some(s);
    }

    pub fn failed(&self) -> bool {
        self.failure.is_some()
    }

    /// A compact fingerprint of the run (event kinds, SPIs, times) for determinism checks;
    /// key bytes are left out because DH private values come from the OS generator.
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |s: &str| {
            for b in s.bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x100_0000_01b3);
            }
        };
        for g in &self.gws {
            for (t, e) in &g.events {
                let s = match e {
                    Event::ChildSaUp(u) => format!("{t:.6} up {} {} {:?}", u.inbound.spi, u.outbound.spi, u.replaces_spi_in),
                    other => format!("{t:.6} {other:?}"),
                };
                eat(&s);
            }
        }
        eat(&format!("{:?}", (self.stats.ike_sent, self.stats.esp_sent, self.stats.esp_ok, self.stats.steps)));
        h
    }

    pub fn recent_trace(&self) -> Vec<String> {
        self.trace.iter().cloned().collect()
    }
}

/// Tunnels configured on both ends. A gateway behind the NAT is known to its peers by the
/// NAT's public address.
fn pairs_of(gws: &[Gateway], nat: Option<&Nat>) -> Vec<Pair> {
    let addr = |i: usize| match nat {
        Some(n) if n.inside == i => n.public,
        _ => gws[i].addr,
    };
    let mut pairs = Vec::new();
    for i in 0..gws.len() {
        for j in i + 1..gws.len() {
            for t in &gws[i].tunnels {
                if t.peer_addr != addr(j) {
                    continue;
                }
                // Several tunnels (crypto map entries) may lead to the same peer: the
                // counterpart is the one with the mirrored selectors.
                let to_us = |u: &&TunnelPolicy| u.peer_addr == addr(i);
                let mirrored = gws[j].tunnels.iter().filter(to_us).find(|u| u.local_ts == t.remote_ts && u.remote_ts == t.local_ts);
                if let Some(u) = mirrored.or_else(|| gws[j].tunnels.iter().find(to_us)) {
                    pairs.push(Pair { a: (i, t.name.clone()), b: (j, u.name.clone()) });
                }
            }
        }
    }
    pairs
}

fn summarize(data: &[u8]) -> String {
    match wire::ike::Header::parse(data) {
        Ok(h) => format!(
            "{} {} mid={} {:016x}/{:016x}",
            h.exchange,
            if h.is_response() { "resp" } else { "req" },
            h.message_id,
            h.spi_i,
            h.spi_r
        ),
        Err(_) => format!("{} bytes (unparsable)", data.len()),
    }
}
