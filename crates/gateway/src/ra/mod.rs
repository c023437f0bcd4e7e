//! Remote access (AnyConnect / openconnect, issue 5): the I/O around the sans-IO
//! [`anyconnect::Server`] engine.
//!
//! ```text
//!   tcp/443 ─► accept (handshake slots + deadline) ─► per-connection task:
//!                HTTP phase: buffered bytes ─► Server::handle_http
//!                tunnel phase: TLS reader ─► Server::handle_tls_data;  writer task ◄─ frames
//!   udp/443 ─► rx thread: ClientHello session_id / source address ─► per-session DTLS Ssl
//!                ─► Server::handle_dtls_record
//!   TUN (hfra0) ─► rx thread ─► connection table ─► Server::handle_tun_packet
//!   after every handle_*: poll_transmit (TLS writer / DTLS Ssl ─► udp), poll_packet
//!                         (─► connection table ─► TUN), poll_event (syslog, closes, the
//!                         sessions' flow-table tunnels); a timer task drives handle_timeout
//!                         and saves the sessions to the state directory
//! ```
//!
//! The connection table is the daemon's (`flows`), shared with site-to-site: see
//! [`conntrack`] for how sessions map onto its tunnels, [`persist`] for the sessions file.
//!
//! The engine and every session's I/O handles sit behind one mutex ([`Core`]). Each input is
//! one short critical section (engine call + drain, including DTLS encryption). No syscall
//! happens under it: the drain queues TUN packets and DTLS datagrams, the connection table
//! judges the queued TUN packets in one batch, and the thread that held the lock writes both
//! queues after releasing it ([`CoreGuard`]'s drop) — TUN writes as TCP GRO batches (one
//! write per coalesced train), UDP as GSO trains. TLS encryption and socket writes happen in
//! the per-connection writer task. Lock order: state, then a queue or the connection table;
//! a sender holds its sender lock, then briefly the queue.
//!
//! [`spawn`] starts everything on its own threads and tokio runtime and returns a [`RaHandle`]
//! whose [`RaHandle::shutdown`] stops it and removes the routes it added.

pub mod conntrack;
pub mod dtls;
mod legacy;
pub mod persist;
pub mod tls;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::io::IoSliceMut;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyconnect::{Channel, DtlsKeying, Event, HttpOutcome, HttpStep, SessionId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::clock;
use crate::net::{self, SystemGuard};
use crate::syslog::{Message, Syslog};

use conntrack::{FlowsConfig, RaFlows, ToClient};
use dtls::{DgramQueue, DtlsConn, DtlsKey, DtlsServer};
use persist::SessionsFile;
use tls::{Admission, HandshakeLimits};

/// Everything the remote-access service needs.
pub struct RaConfig {
    /// Address of the TLS listener; DTLS listens on the same address with UDP port
    /// `engine.dtls_port` (anyconnect.md §4: the same port by default).
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA for client certificates (`ca-file`); `None` = no certificate request.
    pub ca_file: Option<PathBuf>,
    /// The remote-access TUN (kept apart from the site-to-site one).
    pub tun_name: String,
    pub engine: anyconnect::Config,
    pub handshake: HandshakeLimits,
    /// How long a connection may stay in the HTTP (pre-tunnel) phase without sending a
    /// byte.
    pub http_idle: Duration,
    pub syslog: Arc<Syslog>,
    /// The daemon's connection table: remote-access traffic goes through it (`show conn`,
    /// preserved flows across reconnects). `None`: not tracked (the standalone service).
    pub flows: Option<FlowsConfig>,
    /// Where sessions are saved so that they survive a restart (`--state-dir`); `None`: not
    /// saved.
    pub state_dir: Option<PathBuf>,
}

/// Errors at start (configuration or system); nothing at run time is fatal.
#[derive(Debug, thiserror::Error)]
pub enum RaError {
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
    #[error(transparent)]
    Dtls(#[from] dtls::DtlsError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> RaError {
    let what = what.into();
    move |source| RaError::Io { what, source }
}

/// A running remote-access service.
pub struct RaHandle {
    core: Arc<Core>,
    runtime: Option<tokio::runtime::Runtime>,
    threads: Vec<JoinHandle<()>>,
    guard: SystemGuard,
    tls_local: SocketAddr,
    /// The TLS acceptor's admission (holds the certificate a reload may replace).
    admission: Arc<Admission>,
}

impl RaHandle {
    /// The bound TLS address (the port is useful when `listen` asked for port 0).
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls_local
    }

    /// Runs `f` on the engine (for `show vpn-sessiondb`, logoff, ...), then drains what it
    /// produced.
    pub fn with_engine<T>(&self, f: impl FnOnce(&mut anyconnect::Server, Instant) -> T) -> T {
        let mut g = self.core.lock();
        let now = clock::now();
        let r = f(&mut g.server, now);
        self.core.drain(&mut g);
        r
    }

    /// A configuration reload (docs/reload.md "Remote access"): the engine takes the new
    /// users, groups, policies and pools ([`anyconnect::Server::reconfigure`], refused as a
    /// whole on a lease conflict), routes into the TUN follow the pools, and new TLS
    /// handshakes use `tls` (established connections are untouched). Returns what changed and
    /// notes for the operator.
    pub fn reconfigure(
        &mut self,
        engine: anyconnect::Config,
        tls: openssl::ssl::SslContext,
    ) -> Result<(anyconnect::config::Changes, Vec<String>), Vec<anyconnect::config::LeaseConflict>> {
        let prefixes = |s: &anyconnect::Server| {
            let mut v: Vec<(Ipv4Addr, u8)> = s.config().pools.values().map(pool_prefix).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let old = self.with_engine(|s, _| prefixes(s));
        let changes = self.with_engine(|s, now| s.reconfigure(now, engine))?;
        let new = self.with_engine(|s, _| prefixes(s));
        let mut notes = Vec::new();
        let dev = self.core.tun.name().unwrap_or_default();
        for &(n, l) in new.iter().filter(|p| !old.contains(p)) {
            if let Err(e) = self.guard.add_route(n, l, &dev, None) {
                notes.push(format!("route {n}/{l} via {dev} not added: {e}"));
            }
        }
        for &(n, l) in old.iter().filter(|p| !new.contains(p)) {
            if let Err(e) = self.guard.remove_route(n, l, &dev) {
                notes.push(format!("route {n}/{l} via {dev} not removed: {e}"));
            }
        }
        self.admission.set_context(tls);
        Ok((changes, notes))
    }

    /// Stops the service for a planned restart (SIGQUIT, docs/remote-access.md): the sessions
    /// are saved as they are and the clients are NOT told (no TERMINATE); their connections
    /// just close, so they reconnect with their cookies to the restarted daemon, which
    /// restores the sessions from the state directory (same address, flows kept). Returns how
    /// many sessions were saved. When they cannot be saved (no state directory, a failed
    /// write) keeping them silently would strand every client on a cookie the next start does
    /// not know: the service then shuts down as [`RaHandle::shutdown`] does (clients told,
    /// sessions ended) and the error says why.
    pub fn shutdown_keeping_sessions(mut self) -> Result<usize, String> {
        self.core.stop.store(true, Ordering::SeqCst);
        let n = self.core.lock().server.session_count();
        if let Err(e) = self.core.save_sessions(true) {
            self.stop();
            return Err(e);
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.guard.cleanup();
        Ok(n)
    }

    /// Transport counters.
    pub fn io_stats(&self) -> IoStats {
        self.core.stats.snapshot()
    }

    /// Stops every task and thread, closes the sessions' connections and removes the routes.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.core.stop.store(true, Ordering::SeqCst);
        {
            let mut g = self.core.lock();
            let now = clock::now();
            // TERMINATE to every client (they do not reconnect), then close the channels.
            g.server.shutdown(now);
            self.core.drain(&mut g);
            for (_, io) in g.io.iter_mut() {
                if let Some(c) = io.dtls.as_mut() {
                    c.close();
                }
                io.tls = None;
            }
        }
        // The sessions just ended (the clients were told): the next start has none to wait for.
        // (A failure is logged as 725014; nothing else to do on the way out.)
        let _ = self.core.save_sessions(true);
        // Let the writers put the TERMINATE frames on the wire before the tasks stop.
        std::thread::sleep(Duration::from_millis(300));
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.guard.cleanup();
    }
}

impl Drop for RaHandle {
    fn drop(&mut self) {
        if !self.core.stop.load(Ordering::SeqCst) || !self.threads.is_empty() {
            self.stop();
        }
    }
}

/// Counters of the I/O layer (the engine keeps its own).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IoStats {
    pub tls_accepted: u64,
    pub tls_handshake_failures: u64,
    /// Connections closed at accept because their address held its share of the handshake
    /// slots already.
    pub tls_refused_per_address: u64,
    pub dtls_associations: u64,
    pub dtls_handshake_failures: u64,
    pub udp_unmatched: u64,
    pub tls_send_overflow: u64,
}

#[derive(Default)]
struct Stats {
    tls_accepted: AtomicU64,
    tls_handshake_failures: AtomicU64,
    tls_refused_per_address: AtomicU64,
    dtls_associations: AtomicU64,
    dtls_handshake_failures: AtomicU64,
    udp_unmatched: AtomicU64,
    tls_send_overflow: AtomicU64,
}

impl Stats {
    fn snapshot(&self) -> IoStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        IoStats {
            tls_accepted: l(&self.tls_accepted),
            tls_handshake_failures: l(&self.tls_handshake_failures),
            tls_refused_per_address: l(&self.tls_refused_per_address),
            dtls_associations: l(&self.dtls_associations),
            dtls_handshake_failures: l(&self.dtls_handshake_failures),
            udp_unmatched: l(&self.udp_unmatched),
            tls_send_overflow: l(&self.tls_send_overflow),
        }
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// Starts the service: TUN + pool routes, TCP and UDP listeners, threads and tasks.
pub fn spawn(cfg: RaConfig) -> Result<RaHandle, RaError> {
    let tls_ctx = tls::server_context(&cfg.cert_file, &cfg.key_file, cfg.ca_file.as_deref())?;
    let dtls_server = DtlsServer::new(&cfg.cert_file, &cfg.key_file)?;

    let udp_addr = SocketAddr::new(cfg.listen.ip(), cfg.engine.dtls_port);
    let udp = net::udp_socket(udp_addr).map_err(io_err(format!("binding udp {udp_addr}")))?;
    // Nonblocking: the receive thread polls, then drains what is queued in one batch.
    udp.set_nonblocking(true).map_err(io_err("udp nonblocking"))?;
    // quinn-udp: recvmmsg with UDP GRO on receive, UDP GSO on send (DTLS records of one
    // session are equal-size trains under bulk traffic).
    let udp_state = quinn_udp::UdpSocketState::new((&udp).into()).map_err(io_err("udp socket state"))?;
    // After quinn-udp (which sets DF for QUIC): DTLS datagrams may be fragmented on a narrow
    // path, as before.
    net::allow_fragmentation(&udp);
    let udp = Arc::new(udp);

    let tcp = std::net::TcpListener::bind(cfg.listen).map_err(io_err(format!("binding tcp {}", cfg.listen)))?;
    tcp.set_nonblocking(true).map_err(io_err("tcp nonblocking"))?;
    let tls_local = tcp.local_addr().map_err(io_err("tcp local address"))?;

    // The TUN carries at most the largest packet a client may send (X-CSTP-MTU is at most
    // the link MTU minus overheads); the engine enforces the per-session MTU.
    // With offloads the kernel hands us TSO super-packets (split by tun-rs) and takes
    // GRO-coalesced client trains: one syscall and one trip through the stack per train.
    let (tun, _) = net::create_tun(&cfg.tun_name, cfg.engine.link_mtu, true)
        .map_err(io_err(format!("creating TUN {}", cfg.tun_name)))?;
    let tun_offset = if tun.tcp_gso() { tun_rs::VIRTIO_NET_HDR_LEN } else { 0 };
    let tun_mtu = usize::from(cfg.engine.link_mtu);
    let mut guard = SystemGuard::default();
    for pool in cfg.engine.pools.values() {
        let (netw, len) = pool_prefix(pool);
        guard.add_route(netw, len, &cfg.tun_name, None).map_err(io_err(format!("route {netw}/{len}")))?;
    }
    guard.enable_ip_forward().map_err(io_err("ip_forward"))?;

    let now = clock::now();
    let sessions_file = match cfg.state_dir.as_deref().map(SessionsFile::open) {
        None => None,
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => {
            eprintln!("holdfast: warning: remote-access state directory: {e}; sessions will not survive a restart");
            None
        }
    };
    let rng = Box::new(crypto::OsRandom::new());
    let server = match sessions_file.as_ref().map(|f| f.load(unix_ms())) {
        None | Some(Ok(None)) => anyconnect::Server::new(now, cfg.engine, rng),
        Some(Ok(Some((snap, down)))) => {
            let srv = anyconnect::Server::restore(now, cfg.engine, rng, &snap);
            eprintln!(
                "holdfast: remote access: {} session(s) restored, saved {:.1} s ago; clients reconnect with their cookies",
                srv.session_count(),
                down.as_secs_f64()
            );
            srv
        }
        Some(Err(e)) => {
            eprintln!("holdfast: warning: remote-access sessions file unusable ({e}); starting without sessions");
            anyconnect::Server::new(now, cfg.engine, rng)
        }
    };
    let flows = match &cfg.flows {
        None => None,
        Some(fc) => {
            let mut f = RaFlows::new(fc).map_err(|e| RaError::Io { what: "connection table".into(), source: io::Error::other(e.to_string()) })?;
            let leased: Vec<(SessionId, Ipv4Addr)> = server
                .sessions(now)
                .iter()
                .filter(|s| s.assigned_ip != Ipv4Addr::UNSPECIFIED)
                .map(|s| (s.index, s.assigned_ip))
                .collect();
            f.adopt(now, &leased, &cfg.syslog);
            Some(f)
        }
    };
    let core = Arc::new(Core {
        state: Mutex::new(State {
            server,
            io: HashMap::new(),
            by_addr: HashMap::new(),
            next_conn: 1,
            touched: Vec::new(),
            flows,
            sessions_dirty: true,
            last_save: None,
            to_tun: TunBatch::new(tun_offset),
        }),
        sessions_file,
        dtls: dtls_server,
        udp: udp.clone(),
        udp_state,
        udp_q: Arc::default(),
        udp_tx: Mutex::default(),
        tun: Arc::new(tun),
        tun_offset,
        tun_mtu,
        tun_q: Mutex::new(TunBatch::new(tun_offset)),
        tun_tx: Mutex::new(TunSender { batch: TunBatch::new(tun_offset), gro: tun_rs::GROTable::default() }),
        outside: cfg.flows.as_ref().map_or_else(|| "outside".to_string(), |f| f.outside.clone()),
        syslog: cfg.syslog.clone(),
        stop: AtomicBool::new(false),
        stats: Stats::default(),
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hf-ra")
        .enable_all()
        .build()
        .map_err(io_err("tokio runtime"))?;
    let admission = Arc::new(Admission::new(tls_ctx, cfg.handshake));
    let kept_admission = admission.clone();
    {
        let core = core.clone();
        let http_idle = cfg.http_idle;
        runtime.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(tcp) {
                Ok(l) => l,
                Err(e) => {
                    core.log(3, 725014, format!("SSL lib error. Function: TCP listener Reason: {e}"));
                    return;
                }
            };
            accept_loop(core, listener, admission, http_idle).await;
        });
    }
    {
        let core = core.clone();
        runtime.spawn(async move { timer_loop(core).await });
    }
    let mut threads = Vec::new();
    {
        let core = core.clone();
        threads.push(
            std::thread::Builder::new()
                .name("hf-ra-udp".into())
                .spawn(move || udp_loop(core))
                .map_err(io_err("udp thread"))?,
        );
    }
    {
        let core = core.clone();
        threads.push(
            std::thread::Builder::new()
                .name("hf-ra-tun".into())
                .spawn(move || tun_loop(core))
                .map_err(io_err("tun thread"))?,
        );
    }
    Ok(RaHandle { core, runtime: Some(runtime), threads, guard, tls_local, admission: kept_admission })
}

/// Network and prefix length of a pool's subnet (the pool's mask applied to its first
/// address).
fn pool_prefix(pool: &anyconnect::AddressPool) -> (Ipv4Addr, u8) {
    let mask = u32::from(pool.mask);
    (Ipv4Addr::from(u32::from(pool.first) & mask), mask.count_ones() as u8)
}

/// How often blocking threads look at the stop flag, and the longest the timer sleeps.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// Largest TLS batch handed to one connection's writer before it is sent.
const TLS_BATCH: usize = 64 * 1024;

/// Bytes of CSTP frames queued towards one connection's writer. Beyond this the client (or
/// the path to it) is not keeping up and arriving frames are dropped one by one, newest
/// first, as a router's tail drop does: the inner TCP flows see single losses they repair
/// with fast retransmit, not a 64 KiB hole that stalls them into a timeout (the burst a
/// fallback from DTLS moves onto a TLS connection whose congestion window is still small).
/// 1 MiB is ~8 ms at 1 Gbit/s: enough to ride out a scheduling hiccup, small enough not to
/// add seconds of queueing delay (and retransmission timeout) to the flows behind it. The
/// bound covers everything not yet handed to TLS: the queued frames and those the writer
/// has taken but not written ([`LinkQueue::in_flight`]).
const TLS_QUEUE_BYTES: usize = 1024 * 1024;

/// The engine, the I/O handles of its sessions, and the shared sockets.
struct Core {
    state: Mutex<State>,
    sessions_file: Option<SessionsFile>,
    dtls: DtlsServer,
    udp: Arc<UdpSocket>,
    udp_state: quinn_udp::UdpSocketState,
    /// DTLS datagrams written under the state lock, sent after it ([`Core::flush_udp`]).
    udp_q: Arc<Mutex<DgramQueue>>,
    /// The sender's side: held while sending, so that queues go out in the order taken.
    udp_tx: Mutex<DgramQueue>,
    tun: Arc<tun_rs::SyncDevice>,
    /// Virtio-net header room in front of every TUN packet (offloads on), else 0.
    tun_offset: usize,
    tun_mtu: usize,
    /// Judged TUN packets waiting for a writer ([`Core::flush_tun`]).
    tun_q: Mutex<TunBatch>,
    tun_tx: Mutex<TunSender>,
    /// `nameif` the clients connect on (syslog lines).
    outside: String,
    syslog: Arc<Syslog>,
    stop: AtomicBool,
    stats: Stats,
}

struct State {
    server: anyconnect::Server,
    io: HashMap<SessionId, SessionIo>,
    /// DTLS source address -> session.
    by_addr: HashMap<SocketAddr, SessionId>,
    next_conn: u64,
    /// Sessions with TLS bytes batched during the current drain.
    touched: Vec<SessionId>,
    /// Remote-access traffic in the daemon's connection table.
    flows: Option<RaFlows>,
    /// Sessions changed since they were last saved.
    sessions_dirty: bool,
    last_save: Option<Instant>,
    /// Packets for the TUN produced under this lock, judged by the connection table and
    /// handed to [`Core::tun_q`] when the lock is released.
    to_tun: TunBatch,
}

#[derive(Default)]
struct SessionIo {
    tls: Option<TlsLink>,
    /// How this session's DTLS is keyed (from its latest CONNECT).
    dtls_key: Option<DtlsKey>,
    dtls: Option<DtlsConn>,
}

/// The writer side of a session's current TLS connection. Dropping it closes the connection
/// once the writer has sent what is queued.
struct TlsLink {
    conn: u64,
    q: Arc<LinkQueue>,
    /// Frames produced during the current drain, handed to `q` by [`flush_link`].
    batch: Vec<u8>,
}

impl Drop for TlsLink {
    fn drop(&mut self) {
        lock(&self.q.buf).closed = true;
        self.q.ready.notify_one();
    }
}

/// What the engine hands one connection's writer task: whole CSTP frames, at most
/// [`TLS_QUEUE_BYTES`] of them counting those the writer has taken and not yet written. Buffers circulate between the link, the queue and the writer
/// (swapped, not copied, when the queue is empty), so a busy connection allocates nothing.
#[derive(Default)]
struct LinkQueue {
    buf: Mutex<LinkBuf>,
    /// Bytes the writer took from `buf` and has not yet handed to TLS: part of the bound,
    /// or the queue would hold up to twice [`TLS_QUEUE_BYTES`] (one taken, one refilled).
    /// Set by the writer under `buf`'s lock when it takes frames, lowered as it writes them.
    in_flight: std::sync::atomic::AtomicUsize,
    /// Data queued or the link closed (one stored permit: a wake-up is never lost).
    ready: tokio::sync::Notify,
}

#[derive(Default)]
struct LinkBuf {
    /// The `200 CONNECTED` answer (raw HTTP), written before any frame.
    head: Option<Vec<u8>>,
    frames: Vec<u8>,
    /// No more frames will come (link dropped) or none can go (the writer failed).
    closed: bool,
}

/// The state lock; on release the TUN packets queued under it are judged by the connection
/// table (one lock of it for the whole batch), and the TUN and UDP queues are written out by
/// this thread, after the state lock is gone.
struct CoreGuard<'a> {
    core: &'a Core,
    g: Option<MutexGuard<'a, State>>,
}

impl std::ops::Deref for CoreGuard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.g.as_deref().expect("guard held until drop")
    }
}

impl std::ops::DerefMut for CoreGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.g.as_deref_mut().expect("guard held until drop")
    }
}

impl Drop for CoreGuard<'_> {
    fn drop(&mut self) {
        let Some(mut g) = self.g.take() else { return };
        let core = self.core;
        let st = &mut *g;
        let tun = st.to_tun.n > 0;
        if tun {
            if let Some(f) = st.flows.as_mut() {
                st.to_tun.judge(f, &core.syslog);
            }
            let mut q = lock(&core.tun_q);
            q.take_from(&mut st.to_tun);
        }
        drop(g);
        if tun {
            core.flush_tun();
        }
        let udp = !lock(&core.udp_q).is_empty();
        if udp {
            core.flush_udp();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock is our bug; the data is still the best there is.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Core {
    fn lock(&self) -> CoreGuard<'_> {
        CoreGuard { core: self, g: Some(lock(&self.state)) }
    }

    /// Writes the judged TUN packets: with offloads one `send_multiple` (TCP GRO coalescing:
    /// a train of a flow's segments becomes one write and one trip through the stack), else
    /// one write each. The TUN queue is large; a full one drops like any router would.
    fn flush_tun(&self) {
        let mut tx = lock(&self.tun_tx);
        {
            let mut q = lock(&self.tun_q);
            if q.n == 0 {
                return;
            }
            std::mem::swap(&mut tx.batch, &mut *q);
        }
        let TunSender { batch, gro } = &mut *tx;
        let n = batch.n;
        if batch.offset > 0 {
            let _ = self.tun.send_multiple(gro, &mut batch.bufs[..n], batch.offset);
        } else {
            for b in &batch.bufs[..n] {
                let _ = self.tun.send(b);
            }
        }
        batch.clear();
    }

    /// Sends the queued DTLS datagrams, as UDP GSO trains where the kernel supports it.
    fn flush_udp(&self) {
        let mut tx = lock(&self.udp_tx);
        {
            let mut q = lock(&self.udp_q);
            if q.is_empty() {
                return;
            }
            std::mem::swap(&mut *tx, &mut *q);
        }
        send_dgrams(&self.udp, &self.udp_state, &tx);
        tx.clear();
    }

    fn log(&self, severity: u8, id: u32, text: String) {
        self.syslog.log(Message { severity, id, text });
    }

    /// Drains everything the engine produced after an input (DESIGN: transmits, then
    /// events; the timer task asks for the next deadline on its own).
    fn drain(&self, st: &mut State) {
        self.drain_held(st);
        self.flush_touched(st);
    }

    /// Hands the TLS frames batched during the drains since the last call to their writers.
    fn flush_touched(&self, st: &mut State) {
        let State { io, touched, .. } = st;
        for s in touched.drain(..) {
            if let Some(link) = io.get_mut(&s).and_then(|x| x.tls.as_mut()) {
                flush_link(link, &self.stats);
            }
        }
    }

    /// [`Core::drain`] that leaves the TLS frames batched: a caller feeding the engine many
    /// packets under one lock (the TUN reader) hands each connection one batch at the end,
    /// one wake-up of its writer, instead of one per packet. The caller must
    /// [`Core::flush_touched`] before it releases the lock.
    fn drain_held(&self, st: &mut State) {
        loop {
            let replay = self.drain_once(st);
            if replay.is_empty() {
                return;
            }
            // Segments the connection table held for a session that just came back: to the
            // client first thing (tcp-resume.md: the receiver's answer restarts the sender).
            let now = clock::now();
            for mut p in replay {
                let _ = st.server.handle_tun_packet(now, &mut p);
            }
        }
    }

    /// One pass of [`Core::drain`]; returns held segments to deliver (sessions that came up).
    fn drain_once(&self, st: &mut State) -> Vec<Vec<u8>> {
        let mut replay = Vec::new();
        let State { server, io, by_addr, touched, flows, sessions_dirty, to_tun, .. } = st;
        while let Some(t) = server.poll_transmit() {
            let Some(sio) = io.get_mut(&t.session) else { continue };
            match t.channel {
                Channel::Tls => {
                    if let Some(link) = sio.tls.as_mut() {
                        if link.batch.is_empty() {
                            touched.push(t.session);
                        }
                        link.batch.extend_from_slice(t.data);
                        if link.batch.len() >= TLS_BATCH {
                            flush_link(link, &self.stats);
                        }
                    }
                }
                Channel::Dtls => {
                    if let Some(c) = sio.dtls.as_mut() {
                        // A write error leaves the association for the engine's liveness
                        // logic to judge (it falls back to TLS when DTLS stops delivering).
                        let _ = c.send(t.data);
                    }
                }
            }
        }
        let now = clock::now();
        // Judged by the connection table and written when the lock is released.
        while let Some(p) = server.poll_packet() {
            to_tun.push(Some(p.session), p.data);
        }
        while let Some(ev) = server.poll_event() {
            match ev {
                Event::Syslog(line) => {
                    // Session lines mark logins and state changes worth saving.
                    *sessions_dirty = true;
                    self.log(line.severity, line.id, line.text)
                }
                Event::SessionUp { session, address, .. } => {
                    *sessions_dirty = true;
                    if let Some(f) = flows.as_mut() {
                        replay.extend(f.session_up(now, session, address, &self.syslog));
                    }
                }
                Event::SessionDisconnected { session, .. } => {
                    *sessions_dirty = true;
                    if let Some(f) = flows.as_mut() {
                        f.session_disconnected(now, session, &self.syslog);
                    }
                }
                Event::SessionDown { session, .. } => {
                    *sessions_dirty = true;
                    if let Some(f) = flows.as_mut() {
                        f.session_down(now, session, &self.syslog);
                    }
                    if let Some(mut sio) = io.remove(&session) {
                        if let Some(mut c) = sio.dtls.take() {
                            by_addr.remove(&c.peer());
                            c.close();
                        }
                        if let Some(mut link) = sio.tls.take() {
                            flush_link(&mut link, &self.stats);
                        }
                    }
                }
                Event::CloseTls { session } => {
                    if let Some(sio) = io.get_mut(&session) {
                        if let Some(mut link) = sio.tls.take() {
                            // Dropping the sender ends the writer after what is queued,
                            // which then closes the connection.
                            flush_link(&mut link, &self.stats);
                        }
                    }
                }
                Event::CloseDtls { session } => {
                    if let Some(sio) = io.get_mut(&session) {
                        if let Some(mut c) = sio.dtls.take() {
                            by_addr.remove(&c.peer());
                            c.close();
                        }
                    }
                }
                Event::Refused { peer, reason } => self.log(
                    4,
                    716039,
                    format!("IP <{}> Authentication: rejected, Session Type: AnyConnect. Reason: {reason}", peer.ip()),
                ),
                Event::ChannelChange { .. } => {}
            }
        }
        replay
    }

    /// Writes the sessions file when sessions changed (at most every
    /// [`persist::SAVE_MIN_INTERVAL`]), at least every [`persist::SAVE_MAX_INTERVAL`] while
    /// there are sessions, or now when `force`. Serializes and writes outside the lock.
    /// `Err` says why nothing could be written: no state directory, or the write failed (also
    /// logged as 725014). Not being due is `Ok`.
    fn save_sessions(&self, force: bool) -> Result<(), String> {
        let Some(file) = &self.sessions_file else {
            return Err("no state directory is in use (the sessions file could not be opened at start)".into());
        };
        let snap = {
            let mut g = self.lock();
            let now = clock::now();
            let since = g.last_save.map(|t| now.saturating_duration_since(t));
            let due = force
                || match since {
                    None => true,
                    Some(d) => {
                        (g.sessions_dirty && d >= persist::SAVE_MIN_INTERVAL)
                            || (d >= persist::SAVE_MAX_INTERVAL && g.server.session_count() > 0)
                    }
                };
            if !due {
                return Ok(());
            }
            g.sessions_dirty = false;
            g.last_save = Some(now);
            g.server.snapshot(now)
        };
        let r = SessionsFile::encode(snap, unix_ms()).and_then(|b| file.write(&b));
        r.map_err(|e| {
            let why = format!("Remote-access sessions could not be saved to {}: {e}", file.path().display());
            self.log(3, 725014, why.clone());
            why
        })
    }
}

/// Hands the link's batch to its writer: whole when it fits under [`TLS_QUEUE_BYTES`],
/// otherwise frame by frame, dropping (and counting) each frame that does not fit.
fn flush_link(link: &mut TlsLink, stats: &Stats) {
    if link.batch.is_empty() {
        return;
    }
    let mut dropped = 0u64;
    {
        let mut q = lock(&link.q.buf);
        if q.closed {
            // The writer is gone; the reader will see the connection end.
            link.batch.clear();
            return;
        }
        // The writer's unwritten bytes count too: the bound is on everything not yet sent.
        let in_flight = link.q.in_flight.load(Ordering::Relaxed);
        if in_flight + q.frames.len() + link.batch.len() <= TLS_QUEUE_BYTES {
            if q.frames.is_empty() {
                std::mem::swap(&mut q.frames, &mut link.batch);
            } else {
                q.frames.extend_from_slice(&link.batch);
            }
        } else {
            let mut rest = &link.batch[..];
            while !rest.is_empty() {
                let (frame, r) = rest.split_at(cstp_frame_len(rest).min(rest.len()));
                // Only DATA is dropped: a control frame (DPD-RESP, DISCONNECT, TERMINATE;
                // a few bytes each) lost here would make a congested but live client declare
                // the tunnel dead, or miss its logout and retry a dead cookie.
                if in_flight + q.frames.len() + frame.len() <= TLS_QUEUE_BYTES || !is_cstp_data(frame) {
                    q.frames.extend_from_slice(frame);
                } else {
                    dropped += 1;
                }
                rest = r;
            }
        }
    }
    link.batch.clear();
    if dropped > 0 {
        stats.tls_send_overflow.fetch_add(dropped, Ordering::Relaxed);
    }
    link.q.ready.notify_one();
}

/// Length of the longest run of whole frames at the start of `data` within `max` bytes (at
/// least one frame, so that progress is always made).
fn frames_prefix(data: &[u8], max: usize) -> usize {
    let mut n = 0;
    while n < data.len() {
        let l = cstp_frame_len(&data[n..]).min(data.len() - n);
        if n > 0 && n + l > max {
            break;
        }
        n += l;
    }
    n
}

/// True for a CSTP DATA frame (type byte 0 at offset 6, anyconnect.md §3).
fn is_cstp_data(frame: &[u8]) -> bool {
    frame.get(6) == Some(&0)
}

/// Length of the CSTP frame at the start of `data` (anyconnect.md §3: 8-byte header 'S' 'T'
/// 'F' 1, payload length u16 big endian, type, 0). The engine only queues whole frames; a
/// short remainder counts as one frame.
fn cstp_frame_len(data: &[u8]) -> usize {
    match data.get(4..6) {
        Some(l) => 8 + usize::from(u16::from_be_bytes([l[0], l[1]])),
        None => data.len(),
    }
}

// ---------------------------------------------------------------------------------------
// TLS

async fn accept_loop(core: Arc<Core>, listener: tokio::net::TcpListener, admission: Arc<Admission>, http_idle: Duration) {
    let mut last_refused_log: Option<Instant> = None;
    loop {
        if core.stop.load(Ordering::Relaxed) {
            return;
        }
        // Take a handshake slot before accepting: while all slots are busy, new connections
        // wait in the kernel's accept queue instead of costing memory or CPU here.
        let slot = match admission.slot().await {
            Some(s) => s,
            None => return,
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => continue,
        };
        let accepted = clock::now();
        // Once the slots are contested, one address gets only its share of them: closing its
        // extra connections at once keeps them from queueing ahead of everybody else's (the
        // global slot taken above goes back with `slot`).
        let Some(share) = admission.address_slot(peer.ip()) else {
            bump(&core.stats.tls_refused_per_address);
            // One line a second at most, whatever the flood's rate (the counter has them all).
            if rate_ok(&mut last_refused_log, accepted) {
                let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
                core.log(
                    3,
                    201011,
                    format!(
                        "Connection limit exceeded for inbound TCP packet from {}/{} to {} on interface {}: the address holds its share of the SSL handshake slots ({} refused so far)",
                        peer.ip(),
                        peer.port(),
                        local.replace(':', "/"),
                        core.outside,
                        core.stats.tls_refused_per_address.load(Ordering::Relaxed)
                    ),
                );
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let core = core.clone();
        let admission = admission.clone();
        tokio::spawn(async move {
            match admission.handshake(slot, share, accepted, tcp, peer).await {
                Ok((stream, info)) => {
                    bump(&core.stats.tls_accepted);
                    serve_connection(core, stream, info, http_idle).await;
                }
                Err(e) => {
                    bump(&core.stats.tls_handshake_failures);
                    // 725006-style: the ASA logs failed SSL handshakes with the peer.
                    core.log(6, 725006, format!("Device failed SSL handshake with client outside:{}/{} ({e})", peer.ip(), peer.port()));
                }
            }
        });
    }
}

/// Largest pre-tunnel request buffer; the engine refuses oversized requests itself, this is
/// only the backstop against a client that never finishes a request.
const HTTP_BUFFER_MAX: usize = 64 * 1024;

async fn serve_connection(core: Arc<Core>, mut stream: tokio_openssl::SslStream<tls::Tcp>, info: anyconnect::ConnInfo, http_idle: Duration) {
    let peer = info.peer;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    // HTTP phase: requests until the engine accepts a CONNECT.
    let (session, rest, conn, rx) = 'http: loop {
        let n = match tokio::time::timeout(http_idle, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
            Err(_) => {
                let _ = stream.shutdown().await;
                return;
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let step = {
                let mut g = core.lock();
                let step = g.server.handle_http_deferred(clock::now(), &info, &buf);
                match step {
                    Ok(HttpStep::Done(out)) => Step::Apply(http_outcome(&core, &mut g, Ok(out), &mut buf, stream.ssl())),
                    Err(reject) => Step::Apply(http_outcome(&core, &mut g, Err(reject), &mut buf, stream.ssl())),
                    Ok(HttpStep::VerifyPassword(check)) => {
                        core.drain(&mut g);
                        Step::Verify(check)
                    }
                }
            };
            let (reply, close, tunnel) = match step {
                Step::Apply(r) => r,
                Step::Verify(check) => {
                    // PBKDF2 runs off the runtime threads and outside the engine lock, so
                    // sessions keep moving while it runs; at most PASSWORD_CHECKS at once, so a
                    // login flood cannot take every core.
                    let ticket = check.ticket();
                    let ok = verify_password(&core, check).await;
                    let mut g = core.lock();
                    let out = g.server.handle_password_verdict(clock::now(), &info, ticket, ok);
                    http_outcome(&core, &mut g, Ok(out), &mut buf, stream.ssl())
                }
            };
            if let Some(t) = tunnel {
                break 'http t;
            }
            if let Some(bytes) = &reply {
                if stream.write_all(bytes).await.is_err() {
                    return;
                }
                let _ = stream.flush().await;
            }
            if close {
                let _ = stream.shutdown().await;
                return;
            }
            if reply.is_none() || buf.is_empty() {
                break;
            }
        }
    };
    run_tunnel(core, stream, peer, session, rest, conn, rx).await;
}

/// What one HTTP step leaves the connection to do.
enum Step {
    Apply(HttpReply),
    Verify(anyconnect::PasswordCheck),
}

/// (bytes to write, close afterwards, tunnel to enter).
type HttpReply = (Option<Vec<u8>>, bool, Option<(SessionId, Vec<u8>, u64, Arc<LinkQueue>)>);

/// Password verifications running at once (each a PBKDF2 run of tens of milliseconds on a
/// blocking thread). Two leave the machine's other cores to the sessions whatever the login
/// rate; further logins wait their turn here, before any hashing.
const PASSWORD_CHECKS: usize = 2;

fn password_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| tokio::sync::Semaphore::new(PASSWORD_CHECKS))
}

/// Runs `check` on the blocking pool within the concurrency bound. A verification that
/// could not run (shutdown) counts as a mismatch.
async fn verify_password(core: &Core, check: anyconnect::PasswordCheck) -> bool {
    let Ok(_slot) = password_slots().acquire().await else {
        return false;
    };
    match tokio::task::spawn_blocking(move || check.verify()).await {
        Ok(ok) => ok,
        Err(e) => {
            core.log(3, 725014, format!("password verification did not complete: {e}"));
            false
        }
    }
}

/// Applies an engine answer to the connection under the lock (the tunnel's link must be in
/// place before the drain routes the session's first frames), then drains.
fn http_outcome(
    core: &Core,
    g: &mut State,
    out: Result<HttpOutcome, anyconnect::HttpReject>,
    buf: &mut Vec<u8>,
    ssl: &openssl::ssl::SslRef,
) -> HttpReply {
    let r = match out {
        Ok(HttpOutcome::NeedMore) => {
            if buf.len() > HTTP_BUFFER_MAX {
                (None, true, None)
            } else {
                (None, false, None)
            }
        }
        Ok(HttpOutcome::Respond { consumed, bytes, close }) => {
            buf.drain(..consumed.min(buf.len()));
            (Some(bytes), close, None)
        }
        Ok(HttpOutcome::Tunnel { consumed, bytes, session, dtls }) => {
            let rest = buf.split_off(consumed.min(buf.len()));
            let key = dtls.map(|k| dtls_key(&k, ssl));
            let q = Arc::new(LinkQueue::default());
            let conn = g.next_conn;
            g.next_conn += 1;
            // The CONNECT answer is the first thing the writer sends; frames the engine
            // queues from now on follow it.
            lock(&q.buf).head = Some(bytes);
            let rx = q.clone();
            let sio = g.io.entry(session).or_default();
            // A reconnect replaces the old connection: dropping its link closes it, and its
            // reader sees it is no longer current.
            sio.tls = Some(TlsLink { conn, q, batch: Vec::with_capacity(4096) });
            match key {
                Some(Ok(k)) => sio.dtls_key = Some(k),
                Some(Err(e)) => {
                    sio.dtls_key = None;
                    core.log(3, 725014, format!("SSL lib error. Function: DTLS keying of session {} Reason: {e}", session.0));
                }
                None => sio.dtls_key = None,
            }
            (None, false, Some((session, rest, conn, rx)))
        }
        // The engine reports the refusal as an Event::Refused (logged in drain).
        Err(reject) => (Some(reject.response), true, None),
    };
    core.drain(g);
    r
}

fn dtls_key(k: &DtlsKeying, ssl: &openssl::ssl::SslRef) -> Result<DtlsKey, openssl::error::ErrorStack> {
    Ok(match k {
        DtlsKeying::Psk { .. } => DtlsKey::Psk(tls::dtls_psk(ssl)?),
        DtlsKeying::Legacy { session_id, master_secret, cipher } => {
            DtlsKey::Legacy { session_id: *session_id, master_secret: *master_secret, cipher: *cipher }
        }
    })
}

/// A tunnel connection's writer: takes the frames [`flush_link`] queued (counting them in
/// [`LinkQueue::in_flight`] until they are handed to TLS), writes them, and ends when the link
/// closes or a write fails.
async fn link_writer<W: tokio::io::AsyncWrite + Unpin>(q: Arc<LinkQueue>, mut wr: W) {
    let mut frames: Vec<u8> = Vec::new();
    loop {
        let (head, closed) = {
            let mut b = lock(&q.buf);
            // The emptied buffer goes back to the queue for the next frames.
            frames.clear();
            std::mem::swap(&mut frames, &mut b.frames);
            // Still counted against the queue's bound until written (flush_link).
            q.in_flight.store(frames.len(), Ordering::Relaxed);
            (b.head.take(), b.closed)
        };
        // The `200 CONNECTED` head, raw HTTP, before the first frame.
        if let Some(h) = head {
            if wr.write_all(&h).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
        if frames.is_empty() {
            if closed {
                let _ = wr.shutdown().await;
                break;
            }
            q.ready.notified().await;
            continue;
        }
        // Everything queued, then one flush: the frames go out one TLS record each, the
        // TCP writes are batched by the buffer under the TLS stream. The bytes leave the
        // queue's count chunk by chunk as they are handed to TLS, so the engine can queue
        // behind them while a large batch is being written.
        let mut rest = &frames[..];
        let mut failed = false;
        while !rest.is_empty() {
            let (chunk, r) = rest.split_at(frames_prefix(rest, TLS_BATCH));
            if write_frames(&mut wr, chunk).await.is_err() {
                failed = true;
                break;
            }
            q.in_flight.fetch_sub(chunk.len(), Ordering::Relaxed);
            rest = r;
        }
        if failed || wr.flush().await.is_err() {
            break;
        }
        // A burst's buffer is not kept for an idle connection.
        if frames.capacity() > 4 * TLS_BATCH && frames.len() < TLS_BATCH {
            frames = Vec::new();
        }
    }
    // Nothing more can be sent: later frames are discarded, not counted as overflow.
    let mut b = lock(&q.buf);
    b.closed = true;
    b.frames = Vec::new();
    q.in_flight.store(0, Ordering::Relaxed);
}

async fn run_tunnel(
    core: Arc<Core>,
    stream: tokio_openssl::SslStream<tls::Tcp>,
    peer: SocketAddr,
    session: SessionId,
    rest: Vec<u8>,
    conn: u64,
    q: Arc<LinkQueue>,
) {
    // From here on every record is a packet: keep OpenSSL's record buffers.
    tls::keep_record_buffers(stream.ssl());
    let (mut rd, wr) = tokio::io::split(stream);
    let writer = tokio::spawn(link_writer(q, wr));
    let mut closed_by_engine = false;
    if !rest.is_empty() {
        closed_by_engine = !feed_tls(&core, peer, session, conn, &rest);
    }
    let mut buf = vec![0u8; TLS_READ];
    while !closed_by_engine {
        let n = match read_records(&mut rd, &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !feed_tls(&core, peer, session, conn, &buf[..n]) {
            closed_by_engine = true;
        }
    }
    {
        let mut g = core.lock();
        let current = g.io.get(&session).and_then(|s| s.tls.as_ref()).map(|l| l.conn) == Some(conn);
        if current {
            if let Some(sio) = g.io.get_mut(&session) {
                sio.tls = None;
            }
            let now = clock::now();
            g.server.handle_tls_closed(now, session);
            core.drain(&mut g);
        }
    }
    let _ = writer.await;
}

/// Plaintext bytes handed to the engine per lock (up to this much of what is readable now).
const TLS_READ: usize = 64 * 1024;

/// Reads what the TLS connection has ready now, record after record (OpenSSL returns one
/// record per read, and openconnect sends one packet per record), until `buf` is nearly full
/// or nothing more is ready; waits only while nothing was read. One call then feeds the
/// engine a whole batch of packets under one lock, judged by the connection table at once and
/// written to the TUN as GRO trains.
async fn read_records<R: tokio::io::AsyncRead + Unpin>(rd: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    use std::task::Poll;
    // A full TLS record's plaintext (RFC 8446 §5.1: at most 2^14 bytes).
    const RECORD_MAX: usize = 16 * 1024;
    std::future::poll_fn(|cx| {
        let mut filled = 0;
        loop {
            let mut rb = tokio::io::ReadBuf::new(&mut buf[filled..]);
            match std::pin::Pin::new(&mut *rd).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let k = rb.filled().len();
                    filled += k;
                    // EOF (k == 0) ends the batch; the next call reports it.
                    if k == 0 || buf.len() - filled < RECORD_MAX {
                        return Poll::Ready(Ok(filled));
                    }
                }
                Poll::Ready(Err(e)) if filled == 0 => return Poll::Ready(Err(e)),
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(filled)),
                Poll::Pending if filled == 0 => return Poll::Pending,
                Poll::Pending => return Poll::Ready(Ok(filled)),
            }
        }
    })
    .await
}

/// Writes whole CSTP frames, one TLS record (one `SSL_write`) per frame: openconnect reads
/// CSTP record by record and drops a record that holds more or less than exactly one frame
/// ("Unexpected packet length"; seen with openconnect 9.01 in the lab), so frames must not
/// share records even though the stream framing would allow it.
async fn write_frames<W: tokio::io::AsyncWrite + Unpin>(wr: &mut W, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let (frame, rest) = data.split_at(cstp_frame_len(data).min(data.len()));
        wr.write_all(frame).await?;
        data = rest;
    }
    Ok(())
}

/// Feeds TLS bytes of `session`'s connection `conn` to the engine; false when the
/// connection must close (framing error, or it is no longer the session's connection).
fn feed_tls(core: &Core, peer: SocketAddr, session: SessionId, conn: u64, data: &[u8]) -> bool {
    let mut g = core.lock();
    let current = g.io.get(&session).and_then(|s| s.tls.as_ref()).map(|l| l.conn) == Some(conn);
    if !current {
        return false;
    }
    let now = clock::now();
    let ok = match g.server.handle_tls_data(now, session, data) {
        Ok(()) => true,
        Err(e) => {
            core.log(4, 722037, format!("Session {} IP <{}> SVC closing connection: {e}.", session.0, peer.ip()));
            false
        }
    };
    core.drain(&mut g);
    ok
}

// ---------------------------------------------------------------------------------------
// Timer

async fn timer_loop(core: Arc<Core>) {
    loop {
        if core.stop.load(Ordering::Relaxed) {
            return;
        }
        let deadline = {
            let g = core.lock();
            g.server.poll_timeout().map(|(t, _)| t)
        };
        let now = clock::now();
        let wake = match deadline {
            Some(t) if t <= now => now,
            Some(t) => t.min(now + POLL_EVERY),
            None => now + POLL_EVERY,
        };
        if wake > now {
            tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
        }
        {
            let mut g = core.lock();
            let now = clock::now();
            if matches!(g.server.poll_timeout(), Some((t, _)) if t <= now) {
                g.server.handle_timeout(now);
                core.drain(&mut g);
            }
        }
        let _ = core.save_sessions(false);
    }
}

// ---------------------------------------------------------------------------------------
// UDP / DTLS

fn udp_loop(core: Arc<Core>) {
    // recvmmsg into RX_BUFS buffers; with UDP GRO one buffer holds a train of equal-size
    // datagrams from one sender (`stride` apart).
    let mut bufs = vec![vec![0u8; RX_BUF_LEN]; RX_BUFS];
    let mut meta = vec![quinn_udp::RecvMeta::default(); RX_BUFS];
    let mut scratch = vec![0u8; 65536];
    let mut last_unmatched_log: Option<Instant> = None;
    let fd = core.udp.as_raw_fd();
    // poll only once the socket ran dry: under load every recvmmsg finds datagrams.
    let mut dry = true;
    while !core.stop.load(Ordering::Relaxed) {
        if dry && !wait_readable(fd) {
            continue;
        }
        dry = false;
        for _ in 0..4 {
            let got = {
                let mut it = bufs.iter_mut();
                let mut iov: [IoSliceMut<'_>; RX_BUFS] =
                    std::array::from_fn(|_| IoSliceMut::new(it.next().map(|b| b.as_mut_slice()).unwrap_or(&mut [])));
                core.udp_state.recv((&*core.udp).into(), &mut iov, &mut meta)
            };
            let n = match got {
                Ok(n) => n,
                Err(_) => {
                    dry = true;
                    break;
                }
            };
            // One lock per receive batch.
            let mut g = core.lock();
            let now = clock::now();
            for (m, buf) in meta.iter().zip(bufs.iter()).take(n) {
                let stride = if m.stride == 0 { m.len } else { m.stride };
                let len = m.len.min(buf.len());
                let mut off = 0;
                while off < len {
                    let end = (off + stride).min(len);
                    handle_datagram(&core, &mut g, &buf[off..end], m.addr, now, &mut scratch, &mut last_unmatched_log);
                    core.drain(&mut g);
                    off = end;
                }
            }
            drop(g);
            if n < RX_BUFS {
                dry = true;
                break;
            }
        }
    }
}

/// Receive buffers per `recvmmsg`; each holds one datagram or one GRO train (up to 64 KiB).
const RX_BUFS: usize = 32;
const RX_BUF_LEN: usize = 64 * 1024;

/// Largest payload of one UDP GSO send: the whole train is one IPv4 datagram to the kernel.
const MAX_GSO_BYTES: usize = 65_507;
/// Most segments in one UDP GSO send (the kernel's UDP_MAX_SEGMENTS).
const MAX_GSO_SEGS: usize = 64;

/// Sends the datagrams of `q` in order: trains of equal-size datagrams to one client as one
/// UDP GSO `sendmsg` each. A full socket buffer is waited on briefly, then the datagram is
/// dropped (UDP is lossy; the client's TCP recovers).
fn send_dgrams(sock: &UdpSocket, state: &quinn_udp::UdpSocketState, q: &DgramQueue) {
    let max = state.max_gso_segments().clamp(1, MAX_GSO_SEGS);
    q.trains(max, MAX_GSO_BYTES, |i, j, seg| {
        let Some((to, _)) = q.get(i) else { return };
        let contents = q.span(i, j);
        let segment_size = (j - i > 1).then_some(seg);
        let t = quinn_udp::Transmit { destination: to, ecn: None, contents, segment_size, src_ip: None };
        let mut tries = 0;
        loop {
            match state.try_send(sock.into(), &t) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && tries < 20 => {
                    tries += 1;
                    wait_fd(sock.as_raw_fd(), libc::POLLOUT, 5);
                }
                Err(_) if segment_size.is_some() => {
                    // GSO refused (quinn-udp then stops offering it): one by one.
                    for k in i..j {
                        if let Some((to, d)) = q.get(k) {
                            let _ = sock.send_to(d, to);
                        }
                    }
                    return;
                }
                Err(_) => return,
            }
        }
    });
}

fn wait_fd(fd: std::os::fd::RawFd, events: libc::c_short, timeout_ms: libc::c_int) {
    let mut p = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: one valid pollfd on the stack, count 1; the caller keeps `fd` open.
    unsafe {
        libc::poll(&mut p, 1, timeout_ms);
    }
}

/// Waits up to [`POLL_EVERY`] for `fd` to become readable.
fn wait_readable(fd: std::os::fd::RawFd) -> bool {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: `pfd` is one valid pollfd on the stack; the caller keeps `fd` open.
    let rc = unsafe { libc::poll(&mut pfd, 1, POLL_EVERY.as_millis() as libc::c_int) };
    rc > 0
}

/// One UDP datagram from `peer`: demultiplexed to its session's association (by source
/// address, or for a ClientHello by its session_id), decrypted, records to the engine.
fn handle_datagram(
    core: &Core,
    g: &mut State,
    d: &[u8],
    peer: SocketAddr,
    now: Instant,
    scratch: &mut [u8],
    last_unmatched_log: &mut Option<Instant>,
) {
    let n = d.len();
    let known = g.by_addr.get(&peer).copied();
    let hello_sid = dtls::client_hello_session_id(d);
    // A retransmitted ClientHello (our first flight was lost or is late) belongs to the
    // association still in its handshake; OpenSSL answers it there.
    let handshaking = known.and_then(|s| g.io.get(&s)).and_then(|x| x.dtls.as_ref()).is_some_and(|c| !c.is_established());
    let session = match (known, hello_sid) {
        (Some(s), Some(sid))
            if handshaking
                && g.server.session_by_app_id(sid).or_else(|| g.server.session_by_dtls_session_id(sid)) == Some(s) =>
        {
            s
        }
        // Otherwise a ClientHello starts a new association, also from a known address
        // (the client retrying DTLS from the same port).
        (_, Some(sid)) => match new_association(core, g, sid, peer) {
            Some(s) => s,
            None => {
                bump(&core.stats.udp_unmatched);
                if rate_ok(last_unmatched_log, now) {
                    core.log(4, 710005, format!("UDP request discarded from {}/{} to outside: DTLS ClientHello names no session", peer.ip(), peer.port()));
                }
                return;
            }
        },
        (Some(s), None) => s,
        (None, None) => {
            bump(&core.stats.udp_unmatched);
            if rate_ok(last_unmatched_log, now) {
                core.log(4, 710005, format!("UDP request discarded from {}/{} to outside: {n} bytes, not DTLS of any session", peer.ip(), peer.port()));
            }
            return;
        }
    };
    let st = g;
    let Some(conn) = st.io.get_mut(&session).and_then(|s| s.dtls.as_mut()) else { return };
    let server = &mut st.server;
    let result = conn.handle_datagram(d, scratch, |rec| {
        let _ = server.handle_dtls_record(now, session, rec);
    });
    let (legacy, cipher) = (conn.is_legacy(), conn.cipher_name());
    match result {
        Ok(p) => {
            if p.established_now {
                st.server.handle_dtls_up(now, session);
                let cipher = cipher.unwrap_or("?");
                let mode = if legacy { "legacy" } else { "PSK" };
                core.log(6, 725002, format!("Device completed DTLS handshake with client outside:{}/{} for session {} ({mode} keying, cipher {cipher})", peer.ip(), peer.port(), session.0));
            }
            if p.closed {
                drop_association(st, session, peer);
                st.server.handle_dtls_closed(now, session);
            }
        }
        Err(e) => {
            bump(&core.stats.dtls_handshake_failures);
            core.log(6, 725006, format!("Device failed DTLS handshake with client outside:{}/{} for session {} ({e})", peer.ip(), peer.port(), session.0));
            drop_association(st, session, peer);
            st.server.handle_dtls_closed(now, session);
        }
    }
}

fn rate_ok(last: &mut Option<Instant>, now: Instant) -> bool {
    match last {
        Some(t) if now.duration_since(*t) < Duration::from_secs(1) => false,
        _ => {
            *last = Some(now);
            true
        }
    }
}

/// Creates the association a ClientHello with session id `sid` asks for, replacing the
/// session's previous one. `None` when no session announced that id.
fn new_association(core: &Core, st: &mut State, sid: &[u8], peer: SocketAddr) -> Option<SessionId> {
    let session = st.server.session_by_app_id(sid).or_else(|| st.server.session_by_dtls_session_id(sid))?;
    let key = st.io.get(&session)?.dtls_key.clone()?;
    let conn = match core.dtls.new_conn(&key, core.udp_q.clone(), peer) {
        Ok(c) => c,
        Err(e) => {
            core.log(3, 725014, format!("SSL lib error. Function: DTLS association for session {} Reason: {e}", session.0));
            return None;
        }
    };
    bump(&core.stats.dtls_associations);
    let sio = st.io.get_mut(&session)?;
    if let Some(old) = sio.dtls.replace(conn) {
        st.by_addr.remove(&old.peer());
    }
    st.by_addr.insert(peer, session);
    Some(session)
}

fn drop_association(st: &mut State, session: SessionId, peer: SocketAddr) {
    st.by_addr.remove(&peer);
    if let Some(sio) = st.io.get_mut(&session) {
        sio.dtls = None;
    }
}

// ---------------------------------------------------------------------------------------
// TUN

fn tun_loop(core: Arc<Core>) {
    let offload = core.tun_offset > 0;
    // With offloads a read may be a TSO super-packet, split by tun-rs into `bufs`.
    let mut original = vec![0u8; tun_rs::VIRTIO_NET_HDR_LEN + 65536];
    let slot = core.tun_mtu.max(1500) + 256;
    let mut bufs = vec![vec![0u8; slot]; TUN_BATCH];
    let mut sizes = vec![0usize; TUN_BATCH];
    let mut dests: Vec<Option<SessionId>> = vec![None; TUN_BATCH];
    let mut verdicts = vec![ToClient::Forward; TUN_BATCH];
    let mut icmp = [0u8; 576];
    let fd = core.tun.as_raw_fd();
    // Nonblocking, so that a batch ends when the queue is empty.
    let _ = core.tun.set_nonblocking(true);
    // poll only once the device ran dry: under load every read finds packets.
    let mut dry = true;
    while !core.stop.load(Ordering::Relaxed) {
        if dry && !wait_readable(fd) {
            continue;
        }
        dry = false;
        // Read what is queued (up to a batch) outside the lock.
        let mut n = 0;
        while n < TUN_BATCH {
            let got = if offload {
                // Room for a whole split super-packet (tun-rs fails a read with too few
                // buffers): stop when fewer than a full split's worth is left.
                if TUN_BATCH - n < tun_rs::IDEAL_BATCH_SIZE && n > 0 {
                    break;
                }
                core.tun.recv_multiple(&mut original, &mut bufs[n..], &mut sizes[n..], 0)
            } else {
                core.tun.recv(&mut bufs[n]).map(|k| {
                    sizes[n] = k;
                    1
                })
            };
            match got {
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    dry = true;
                    break;
                }
                // A malformed offload packet is skipped; poll before the next read, so that
                // a persistent error cannot spin.
                Err(_) => {
                    dry = true;
                    break;
                }
            }
        }
        if n == 0 {
            continue;
        }
        let mut g = core.lock();
        let now = clock::now();
        let st = &mut *g;
        // The connection table judges the whole batch under one lock.
        if let Some(f) = st.flows.as_mut() {
            for i in 0..n {
                let len = sizes[i].min(bufs[i].len());
                dests[i] = ipv4_destination(&bufs[i][..len]).and_then(|a| st.server.session_by_address(a));
            }
            f.to_client_batch(now, n, |i| dests[i], |i| &bufs[i][..sizes[i].min(bufs[i].len())], &mut verdicts[..n], &core.syslog);
        } else {
            verdicts[..n].fill(ToClient::Forward);
        }
        for i in 0..n {
            let len = sizes[i].min(bufs[i].len());
            let pkt = &mut bufs[i][..len];
            match verdicts[i] {
                ToClient::Forward => {
                    let _ = st.server.handle_tun_packet(now, pkt);
                }
                ToClient::Hold { icmp: true } => {
                    // RFC 6069: the sender undoes an RTO backoff step per ICMP unreachable, so
                    // it keeps retransmitting at its base RTO while the client reconnects.
                    if let Some(m) = st.flows.as_ref().and_then(|f| f.icmp_for(pkt, &mut icmp)) {
                        st.to_tun.push(None, &icmp[..m]);
                    }
                }
                ToClient::Hold { icmp: false } | ToClient::Drop => {}
            }
            core.drain_held(st);
        }
        core.flush_touched(st);
    }
}

/// Packets read from the TUN per lock acquisition (two full TSO splits).
const TUN_BATCH: usize = 2 * tun_rs::IDEAL_BATCH_SIZE;

/// Packets for the TUN, each in its own buffer behind `offset` bytes of virtio-net header
/// room, with the session each came from (`None`: generated here, not judged).
#[derive(Default)]
struct TunBatch {
    bufs: Vec<Vec<u8>>,
    sessions: Vec<Option<SessionId>>,
    keep: Vec<bool>,
    n: usize,
    offset: usize,
}

/// Buffers hold up to a GRO-coalesced train (tun-rs coalesces only into buffers with room).
const TUN_BUF_CAPACITY: usize = 65536;

/// Most packets one batch holds (a bound; batches are written after every lock).
const TUN_BATCH_MAX: usize = 4096;

impl TunBatch {
    fn new(offset: usize) -> Self {
        Self { offset, ..Self::default() }
    }

    fn push(&mut self, session: Option<SessionId>, pkt: &[u8]) {
        if self.n >= TUN_BATCH_MAX {
            return;
        }
        if self.n == self.bufs.len() {
            self.bufs.push(Vec::with_capacity(self.offset + TUN_BUF_CAPACITY));
        }
        let b = &mut self.bufs[self.n];
        b.clear();
        // All-zero virtio-net header: no GSO, checksums complete (the client computed them).
        b.resize(self.offset, 0);
        b.extend_from_slice(pkt);
        self.sessions.truncate(self.n);
        self.sessions.push(session);
        self.n += 1;
    }

    fn packet(&self, i: usize) -> &[u8] {
        self.bufs.get(i).and_then(|b| b.get(self.offset..)).unwrap_or(&[])
    }

    /// Runs the packets from clients through the connection table (one lock) and keeps, in
    /// order, those it forwards.
    fn judge(&mut self, f: &mut RaFlows, syslog: &Syslog) {
        let n = self.n;
        self.keep.clear();
        self.keep.resize(n, true);
        let mut keep = std::mem::take(&mut self.keep);
        {
            let this = &*self;
            f.from_client_batch(clock::now(), n, |i| this.sessions[i], |i| this.packet(i), &mut keep, syslog);
        }
        let mut kept = 0;
        for (i, &k) in keep.iter().enumerate().take(n) {
            if k {
                self.bufs.swap(kept, i);
                self.sessions.swap(kept, i);
                kept += 1;
            }
        }
        self.n = kept;
        self.sessions.truncate(kept);
        self.keep = keep;
    }

    /// Moves `other`'s packets to the end of this batch (whole when this one is empty).
    fn take_from(&mut self, other: &mut TunBatch) {
        if self.n == 0 && self.offset == other.offset {
            std::mem::swap(self, other);
        } else {
            for i in 0..other.n {
                let s = other.sessions.get(i).copied().flatten();
                let p = std::mem::take(&mut other.bufs[i]);
                self.push(s, p.get(other.offset..).unwrap_or(&[]));
                other.bufs[i] = p;
            }
        }
        other.clear();
    }

    fn clear(&mut self) {
        self.n = 0;
        self.sessions.clear();
    }
}

/// The TUN writer's side: the batch being written and tun-rs's GRO scratch.
struct TunSender {
    batch: TunBatch,
    gro: tun_rs::GROTable,
}

/// Wall-clock milliseconds since the epoch (the sessions file's age).
fn unix_ms() -> u64 {
    clock::wall_now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The destination of an IPv4 packet (the client address a TUN packet is for).
fn ipv4_destination(p: &[u8]) -> Option<Ipv4Addr> {
    let d: [u8; 4] = p.get(16..20)?.try_into().ok()?;
    (p.first()? >> 4 == 4).then_some(Ipv4Addr::from(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::{self, SharedEngine};

    fn syn(src: [u8; 4], sp: u16, flags: u8, data: usize) -> Vec<u8> {
        let mut p = crate::test_packets::tcp_syn();
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&[10, 1, 0, 10]);
        p[20..22].copy_from_slice(&sp.to_be_bytes());
        p[33] = flags;
        p.resize(p.len() + data, 0xab);
        let len = p.len() as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p
    }

    fn rig() -> (RaFlows, Syslog) {
        let now = clock::now();
        let engine: SharedEngine = Arc::new(flows::Shared::new(flow::Engine::new(now, flow::Config::default())));
        let cfg = FlowsConfig { engine, outside: "outside".into(), inside: "inside".into(), icmp_from: None };
        let log = Syslog::new(crate::syslog::SyslogConfig { enabled: false, hosts: vec![], trap_level: 6, buffered_level: 7, timestamp: false, stderr: false });
        (RaFlows::new(&cfg).unwrap(), log)
    }

    /// Packets of two sessions in one batch: the connection table's drops leave, the rest stay
    /// in their order with their bytes (behind the header room) and their sessions.
    #[test]
    fn tun_batch_keeps_forwarded_packets_in_order() {
        let (mut f, log) = rig();
        let (a, b) = (SessionId(1), SessionId(2));
        let now = clock::now();
        f.session_up(now, a, Ipv4Addr::new(10, 99, 0, 100), &log);
        f.session_up(now, b, Ipv4Addr::new(10, 99, 0, 101), &log);
        let pa = syn([10, 99, 0, 100], 40000, 0x02, 0);
        // A bare ACK without a connection: dropped by the table.
        let pb_drop = syn([10, 99, 0, 101], 40001, 0x10, 20);
        let pb = syn([10, 99, 0, 101], 40002, 0x02, 0);
        let ours = vec![0x45, 0, 0, 28, 1, 2, 3, 4, 64, 1, 0, 0, 10, 1, 0, 1, 10, 1, 0, 10, 3, 4, 0, 0, 0, 0, 0, 0];
        let pa2 = syn([10, 99, 0, 100], 40003, 0x02, 0);
        let mut batch = TunBatch::new(tun_rs::VIRTIO_NET_HDR_LEN);
        for (s, p) in [(Some(a), &pa), (Some(b), &pb_drop), (Some(b), &pb), (None, &ours), (Some(a), &pa2)] {
            batch.push(s, p);
        }
        assert_eq!(batch.n, 5);
        batch.judge(&mut f, &log);
        let kept: Vec<(Option<SessionId>, Vec<u8>)> = (0..batch.n).map(|i| (batch.sessions[i], batch.packet(i).to_vec())).collect();
        assert_eq!(kept, vec![(Some(a), pa.clone()), (Some(b), pb.clone()), (None, ours.clone()), (Some(a), pa2.clone())]);
        // The header room is all zero (no GSO, checksums complete).
        assert!(batch.bufs[..batch.n].iter().all(|b| b[..tun_rs::VIRTIO_NET_HDR_LEN].iter().all(|&x| x == 0)));

        // Handing over: whole into an empty batch, appended behind a non-empty one.
        let mut q = TunBatch::new(tun_rs::VIRTIO_NET_HDR_LEN);
        q.take_from(&mut batch);
        assert_eq!((q.n, batch.n), (4, 0));
        let mut more = TunBatch::new(tun_rs::VIRTIO_NET_HDR_LEN);
        more.push(Some(b), &pb_drop);
        q.take_from(&mut more);
        assert_eq!((q.n, more.n), (5, 0));
        assert_eq!(q.packet(4), &pb_drop[..]);
        assert_eq!(q.packet(0), &pa[..]);
        assert_eq!(q.sessions, vec![Some(a), Some(b), None, Some(a), Some(b)]);
        // Reused buffers start clean.
        batch.push(None, &ours);
        assert_eq!(batch.packet(0), &ours[..]);
    }

    fn cstp_data(len: usize, fill: u8) -> Vec<u8> {
        let mut f = vec![b'S', b'T', b'F', 1, 0, 0, 0, 0];
        f[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        f.resize(8 + len, fill);
        f
    }

    /// The real writer (not a stand-in) counts the frames it took in `in_flight` while it
    /// writes them, and gives the room back chunk by chunk as TLS takes them: the queue's
    /// bound covers those bytes (flush_link drops what would exceed it) and frees them again.
    #[test]
    fn writer_counts_taken_frames_until_written() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let q: Arc<LinkQueue> = Arc::default();
            let stats = Stats::default();
            // A slow reader: the writer blocks after 4 KiB of its first chunk.
            let (wr, mut rd) = tokio::io::duplex(4096);
            let writer = tokio::spawn(link_writer(q.clone(), wr));
            let mut link = TlsLink { conn: 1, q: q.clone(), batch: Vec::new() };
            let big = cstp_data(16_000, 1);
            let n = TLS_QUEUE_BYTES / big.len();
            for _ in 0..n {
                link.batch.extend_from_slice(&big);
            }
            let mut expect = link.batch.clone();
            let total = expect.len();
            flush_link(&mut link, &stats);
            // Let the writer take the frames and start writing.
            for _ in 0..1000 {
                if lock(&q.buf).frames.is_empty() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            tokio::task::yield_now().await;
            assert!(lock(&q.buf).frames.is_empty(), "the writer took the frames");
            assert_eq!(q.in_flight.load(Ordering::Relaxed), total, "taken and not yet written: counted");
            // The queue is empty but the bound is not: two more frames do not fit.
            link.batch.extend_from_slice(&big);
            link.batch.extend_from_slice(&big);
            flush_link(&mut link, &stats);
            assert_eq!(stats.tls_send_overflow.load(Ordering::Relaxed), 2);
            assert!(lock(&q.buf).frames.is_empty());
            // The reader takes the first chunk: exactly that much room comes back.
            let first = frames_prefix(&expect, TLS_BATCH);
            let mut got = vec![0u8; first];
            rd.read_exact(&mut got).await.unwrap();
            for _ in 0..1000 {
                if q.in_flight.load(Ordering::Relaxed) != total {
                    break;
                }
                tokio::task::yield_now().await;
            }
            assert_eq!(q.in_flight.load(Ordering::Relaxed), total - first, "written chunk no longer counted");
            // Now three frames fit again (the room of the written chunk).
            for _ in 0..3 {
                link.batch.extend_from_slice(&big);
                expect.extend_from_slice(&big);
            }
            flush_link(&mut link, &stats);
            assert_eq!(stats.tls_send_overflow.load(Ordering::Relaxed), 2, "no drop once the room is back");
            // Closing: the writer sends the rest, then shuts down; nothing stays counted.
            drop(link);
            rd.read_to_end(&mut got).await.unwrap();
            writer.await.unwrap();
            assert_eq!(got.len(), expect.len());
            assert!(got == expect, "every queued frame once, in order");
            assert_eq!(q.in_flight.load(Ordering::Relaxed), 0);
        });
    }

    /// The writer's chunks are whole frames, at most the limit unless one frame is larger,
    /// and a cut frame at the end (never queued; defensive) still ends a chunk.
    #[test]
    fn frames_prefix_cuts_at_frame_boundaries() {
        let mut data = Vec::new();
        for i in 0..10u8 {
            data.extend_from_slice(&cstp_data(1000, i));
        }
        assert_eq!(frames_prefix(&data, 3500), 3 * 1008);
        assert_eq!(frames_prefix(&data, 1008), 1008);
        assert_eq!(frames_prefix(&data, 10), 1008, "one frame at least");
        assert_eq!(frames_prefix(&data, 1 << 20), data.len());
        assert_eq!(frames_prefix(&data[..2000], 1 << 20), 2000);
        assert_eq!(frames_prefix(&[], 100), 0);
    }

    /// The writer queue is bounded in bytes and overflows frame by frame: the frames that do
    /// not fit are dropped (and counted) one each, while a smaller frame arriving after them
    /// still gets in; a dropped link closes its queue.
    #[test]
    fn tls_queue_drops_single_frames_at_its_byte_bound() {
        let stats = Stats::default();
        let q = Arc::new(LinkQueue::default());
        let mut link = TlsLink { conn: 7, q: q.clone(), batch: Vec::new() };
        let big = cstp_data(1400, 0x11);
        let taken_by_writer: Vec<u8>;
        // Fill the queue to just under its bound in batches of 32 frames (the writer is not
        // taking anything).
        let mut queued = 0usize;
        while queued + 32 * big.len() <= TLS_QUEUE_BYTES {
            for _ in 0..32 {
                link.batch.extend_from_slice(&big);
            }
            flush_link(&mut link, &stats);
            queued += 32 * big.len();
        }
        assert_eq!(stats.tls_send_overflow.load(Ordering::Relaxed), 0);
        assert_eq!(lock(&q.buf).frames.len(), queued);
        // The next batch: as many whole frames as fit go in, each of the others is one drop;
        // a small frame (a DPD answer, a bare ACK) behind them still fits.
        let room = TLS_QUEUE_BYTES - queued;
        let fit = room / big.len();
        let small = cstp_data(40, 0x22);
        for _ in 0..32 {
            link.batch.extend_from_slice(&big);
        }
        link.batch.extend_from_slice(&small);
        flush_link(&mut link, &stats);
        let left = room - fit * big.len();
        let small_in = left >= small.len();
        assert_eq!(stats.tls_send_overflow.load(Ordering::Relaxed), (32 - fit + usize::from(!small_in)) as u64);
        {
            let b = lock(&q.buf);
            assert!(b.frames.len() <= TLS_QUEUE_BYTES);
            assert_eq!(b.frames.len(), queued + fit * big.len() + if small_in { small.len() } else { 0 });
            // Whole frames only: the queue parses frame by frame to its end.
            let mut rest = &b.frames[..];
            let mut n = 0;
            while !rest.is_empty() {
                let l = cstp_frame_len(rest);
                assert!(l <= rest.len(), "a cut frame in the queue");
                rest = &rest[l..];
                n += 1;
            }
            assert_eq!(n, queued / big.len() + fit + usize::from(small_in));
            assert!(!b.closed);
        }
        assert!(link.batch.is_empty());
        // Full now: a DATA frame is dropped, control frames (DPD-RESP 4, DISCONNECT 5) still go
        // in, past the bound, in order.
        let before_drops = stats.tls_send_overflow.load(Ordering::Relaxed);
        let before_len = lock(&q.buf).frames.len();
        let mut dpd_resp = cstp_data(0, 0);
        dpd_resp[6] = 4;
        let mut disconnect = cstp_data(1, 0xb0);
        disconnect[6] = 5;
        link.batch.extend_from_slice(&big);
        link.batch.extend_from_slice(&dpd_resp);
        link.batch.extend_from_slice(&disconnect);
        flush_link(&mut link, &stats);
        assert_eq!(stats.tls_send_overflow.load(Ordering::Relaxed), before_drops + 1);
        {
            let b = lock(&q.buf);
            assert_eq!(b.frames.len(), before_len + dpd_resp.len() + disconnect.len());
            assert!(b.frames.ends_with(&[&dpd_resp[..], &disconnect[..]].concat()));
        }
        // The writer takes everything: the next batch is handed over whole, by swapping.
        let taken = std::mem::take(&mut lock(&q.buf).frames);
        assert!(!taken.is_empty());
        link.batch.extend_from_slice(&big);
        flush_link(&mut link, &stats);
        assert_eq!(lock(&q.buf).frames, big);
        // What the writer took and has not written yet counts against the bound (R2: the
        // queue must not hold a second MiB behind the one being written). The writer takes a
        // full queue's worth, as it does after a burst:
        {
            let mut b = lock(&q.buf);
            b.frames.clear();
            let mut full = Vec::new();
            while full.len() + big.len() <= TLS_QUEUE_BYTES {
                full.extend_from_slice(&big);
            }
            q.in_flight.store(full.len(), Ordering::Relaxed);
            taken_by_writer = full;
        }
        let before_drops = stats.tls_send_overflow.load(Ordering::Relaxed);
        for _ in 0..32 {
            link.batch.extend_from_slice(&big);
        }
        flush_link(&mut link, &stats);
        assert_eq!(stats.tls_send_overflow.load(Ordering::Relaxed), before_drops + 32, "the writer's bytes fill the bound");
        assert!(lock(&q.buf).frames.is_empty());
        // As the writer hands chunks to TLS (whole frames, at most TLS_BATCH each) the room
        // comes back by exactly what it wrote.
        let first = frames_prefix(&taken_by_writer, TLS_BATCH);
        assert!(first <= TLS_BATCH && first.is_multiple_of(big.len()) && first > 0);
        q.in_flight.fetch_sub(first, Ordering::Relaxed);
        let fits = (TLS_QUEUE_BYTES - q.in_flight.load(Ordering::Relaxed)) / big.len();
        for _ in 0..fits + 3 {
            link.batch.extend_from_slice(&big);
        }
        flush_link(&mut link, &stats);
        assert_eq!(stats.tls_send_overflow.load(Ordering::Relaxed), before_drops + 32 + 3);
        {
            let b = lock(&q.buf);
            assert_eq!(b.frames.len(), fits * big.len());
            assert!(b.frames.len() + q.in_flight.load(Ordering::Relaxed) <= TLS_QUEUE_BYTES);
        }
        drop(link);
        assert!(lock(&q.buf).closed, "dropping the link closes the writer's queue");
    }
}
