//! The daemon's side of the connection table (`flow::Engine`, issue 3): building the engine from
//! the configuration, naming the interfaces a tunnel's flows cross, turning engine events into
//! ASA syslog, the state file that carries the table across a restart, and the text of
//! `show asp table vpn-context`.
//!
//! One engine per daemon sits behind a mutex shared by the TX thread, the RX thread and the
//! control task; each locks it once per batch and never does socket I/O while holding it
//! (events are collected under the lock and logged after it). Whole-table reads (`show conn`,
//! `show --json conn`, the state-file snapshot, the preserved-conn gauge) never hold it for the
//! whole table: they copy it a bounded slice per hold ([`Shared::copy_table`]).

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use policy::TrafficSelector;
use serde::{Deserialize, Serialize};

use crate::syslog::Message;

/// The engine as the threads share it.
pub type SharedEngine = Arc<Shared>;

/// Locks the engine (see [`Shared::lock`]).
pub fn lock(e: &SharedEngine) -> MutexGuard<'_, flow::Engine> {
    e.lock()
}

/// Default `--state-dir` of `holdfast run`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/holdfast";
/// File name of the connection-table snapshot inside the state directory.
pub const STATE_FILE: &str = "flows.json";
/// How often the table is written while it changes.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(2);
/// After a start, how long a mid-stream TCP segment carried by a tunnel may rebuild a conn the
/// last snapshot missed (only with `sysopt connection preserve-vpn-flows`).
pub const PICKUP_WINDOW: Duration = Duration::from_secs(180);
/// A tunnel without any outbound CHILD_SA is declared down only after this long: a rekey or a
/// break-before-make reauthentication leaves it without an SA for a moment and is not a drop.
pub const TUNNEL_DOWN_GRACE: Duration = Duration::from_secs(1);

/// The engine's knobs from the configuration, in one place so that a configuration reload can
/// hand the same values to `flow::Engine::set_policy`.
pub fn engine_config(cfg: &policy::Config, hash_seed: u64) -> flow::Config {
    flow::Config { timeouts: cfg.timeouts.clone(), sysopt: cfg.sysopt.clone(), hash_seed, ..Default::default() }
}

/// A fresh hash seed from the system RNG, so that nobody outside can aim flows at one bucket.
pub fn random_seed() -> u64 {
    use crypto::Random as _;
    let mut b = [0u8; 8];
    crypto::OsRandom::default().fill(&mut b);
    u64::from_le_bytes(b)
}

/// The `nameif` a tunnel's packets leave by: the interface its crypto map is bound to
/// (`crypto map NAME interface <nameif>`), `outside` when unbound.
pub fn outside_nameif(cfg: &policy::Config, tunnel: &str) -> String {
    let map = tunnel.rsplit_once(':').map(|(m, _)| m).unwrap_or(tunnel);
    cfg.crypto_map_bindings.iter().find(|b| b.map == map).map(|b| b.nameif.clone()).unwrap_or_else(|| "outside".into())
}

/// The `nameif` of the protected side: the interface whose address lies in the tunnel's local
/// selectors, else one named `inside`, else the highest-security interface that is not the
/// outside one, else `inside`.
pub fn inside_nameif(cfg: &policy::Config, local_ts: &[TrafficSelector], outside: &str) -> String {
    let named = |i: &policy::Interface| i.nameif.clone().filter(|n| n != outside);
    if let Some(n) = cfg
        .interfaces
        .iter()
        .filter(|i| i.address.is_some_and(|a| local_ts.iter().any(|t| t.contains_addr(a.addr))))
        .find_map(named)
    {
        return n;
    }
    if cfg.interfaces.iter().any(|i| i.nameif.as_deref() == Some("inside")) {
        return "inside".into();
    }
    cfg.interfaces
        .iter()
        .filter(|i| named(i).is_some())
        .max_by_key(|i| i.security_level.unwrap_or(0))
        .and_then(named)
        .unwrap_or_else(|| "inside".into())
}

/// Drains the engine's events into syslog messages (302013-302021). Call with the lock held,
/// log the messages after releasing it (see [`Shared::log_in_order`]).
pub fn collect_events(eng: &mut flow::Engine, out: &mut Vec<Message>) {
    while let Some(ev) = eng.poll_event() {
        if let Some(l) = eng.syslog(&ev) {
            out.push(Message { severity: l.severity, id: l.id, text: l.text });
        }
    }
}

/// The engine and the order its events are logged in, shared by the threads.
pub struct Shared {
    pub engine: Mutex<flow::Engine>,
    /// Taken before the engine lock is released by a thread that has events to log, and held
    /// while it logs them: events reach syslog in the order the engine produced them (a conn's
    /// Built before its Teardown, even when two threads saw its packets). Held only briefly:
    /// `Syslog::log` queues the stderr/UDP copies for its logger thread and never waits for I/O.
    order: Mutex<()>,
}

impl Shared {
    pub fn new(engine: flow::Engine) -> Self {
        Self { engine: Mutex::new(engine), order: Mutex::new(()) }
    }

    /// Locks the engine; a thread that panicked while holding it left a consistent table (every
    /// engine call completes or panics before mutating), so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, flow::Engine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Collects the engine's events, releases the engine, then logs them in order.
    pub fn release_and_log(&self, mut eng: MutexGuard<'_, flow::Engine>, buf: &mut Vec<Message>, syslog: &crate::syslog::Syslog) {
        collect_events(&mut eng, buf);
        if buf.is_empty() {
            return;
        }
        let order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        drop(eng);
        for m in buf.drain(..) {
            syslog.log(m);
        }
        drop(order);
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the whole table without stopping the data path

/// Slab slots visited per engine-lock hold when the table is copied out (`show conn`, the
/// state-file snapshot, the preserved-conn gauge). A slice copies at most this many 64-byte
/// entries (256 KiB): about 0.05 ms on the 2-core development machine at 1 M conns (0.15 ms
/// for 16384 slots; `lock_hold_at_scale` below), so the TX/RX threads wait about that long
/// whatever the table size, and a walk of 1 M conns takes ~250 holds.
pub const COPY_SLICE_SLOTS: usize = 4_096;

/// A copy of the connection table taken a slice at a time ([`Shared::copy_table`]).
pub struct TableCopy {
    pub conns: Vec<flow::RawConn>,
    /// Taken with the last slice: every name a copied conn refers to is in it.
    pub meta: flow::TableMeta,
    /// The longest single hold of the engine lock while copying, and how many holds there were.
    pub longest_hold: Duration,
    pub holds: usize,
}

impl Shared {
    /// Copies the table out `slice_slots` slots per lock hold, releasing the lock in between
    /// (see `flow::Engine::copy_conns`: conns built or torn down meanwhile may or may not be
    /// in the copy). No conn is copied twice; a conn closed and rebuilt on the same 5-tuple
    /// during the walk can be copied in both lives, and the dead one (the lower id) is removed
    /// here (`flow::ConnCursor::dedupe_by_key`), so every consumer of the copy (`show conn`,
    /// `show --json conn`, the state file) sees each tuple once, as the live conn.
    ///
    /// Under the lock a slice is copied into one reusable buffer whose pages were touched
    /// before (growing the whole copy there would reallocate it and fault in fresh pages while
    /// the data path waits); it is appended to the copy after the lock is released. The thread
    /// then yields: `std::sync::Mutex` is not fair, and without it this loop takes the lock
    /// again before a woken data-path thread has run, so the data path could wait for many
    /// slices in a row.
    pub fn copy_table(&self, slice_slots: usize) -> TableCopy {
        self.copy_table_between(slice_slots, |_| {})
    }

    /// [`Shared::copy_table`], calling `between` with the lock released after every hold but
    /// the last: the tests change the table there, where the data path can.
    fn copy_table_between(&self, slice_slots: usize, mut between: impl FnMut(&Self)) -> TableCopy {
        let slice_slots = slice_slots.max(1);
        let mut cursor = flow::ConnCursor::new();
        let mut slice = vec![flow::RawConn::default(); slice_slots];
        let mut conns = Vec::with_capacity(self.lock().len());
        let mut longest_hold = Duration::ZERO;
        let mut holds = 0;
        loop {
            slice.clear();
            let eng = self.lock();
            let start = crate::clock::now();
            let done = eng.copy_conns(&mut cursor, slice_slots, &mut slice);
            let meta = done.then(|| eng.table_meta());
            drop(eng);
            longest_hold = longest_hold.max(crate::clock::now().saturating_duration_since(start));
            holds += 1;
            conns.extend_from_slice(&slice);
            if let Some(meta) = meta {
                cursor.dedupe_by_key(&mut conns);
                return TableCopy { conns, meta, longest_hold, holds };
            }
            between(self);
            std::thread::yield_now();
        }
    }

    /// Conns preserved while their tunnel is down (`V`), counted a slice per lock hold, by the
    /// rule [`Shared::copy_table`]'s listing follows: a 5-tuple closed and rebuilt during the
    /// walk is counted once, as its live (higher-id) conn, so the gauge and `show conn` agree on
    /// the same walk. The walk keeps 16 bytes (the key) per preserved conn and more only for
    /// conns built during it (`flow::PreservedTally`), not a 64-byte copy of each conn.
    pub fn count_preserved(&self, slice_slots: usize) -> u64 {
        self.count_preserved_between(slice_slots, |_| {})
    }

    /// [`Shared::count_preserved`], calling `between` as [`Shared::copy_table_between`] does.
    fn count_preserved_between(&self, slice_slots: usize, mut between: impl FnMut(&Self)) -> u64 {
        let slice_slots = slice_slots.max(1);
        let mut cursor = flow::ConnCursor::new();
        let mut buf = vec![flow::RawConn::default(); slice_slots];
        let mut tally = flow::PreservedTally::default();
        loop {
            buf.clear();
            let done = self.lock().copy_conns(&mut cursor, slice_slots, &mut buf);
            cursor.tally_preserved(&buf, &mut tally);
            if done {
                return tally.count();
            }
            between(self);
            std::thread::yield_now();
        }
    }
}

/// `show conn [address IP] [long|detail|count]`: `count` reads the counters (O(1)); the other
/// views copy the table a slice per lock hold and format with the lock released.
pub fn show_conn(shared: &Shared, now: Instant, view: flow::text::ConnView, address: Option<Ipv4Addr>) -> String {
    if view == flow::text::ConnView::Count {
        return shared.lock().show_conn(now, view);
    }
    let mut copy = shared.copy_table(COPY_SLICE_SLOTS);
    copy.meta.show_conn(now, view, address, &mut copy.conns)
}

// ---------------------------------------------------------------------------------------------
// State file

/// What the state file holds: the engine's snapshot and the wall-clock time it was taken, so a
/// restart can age the flows by the time the daemon was away.
#[derive(Debug, Serialize, Deserialize)]
struct StateFileV1 {
    saved_unix_ms: u64,
    flows: flow::Snapshot,
}

/// The connection table's file in the state directory.
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Creates the directory if missing, mode 0700 (the table names every host talking
    /// through us). An existing directory keeps its mode: it may be shared (`--state-dir /tmp`
    /// must not lock everybody else out); the file itself is written 0600.
    pub fn open(dir: &Path) -> io::Result<StateDir> {
        if !dir.is_dir() {
            std::fs::create_dir_all(dir)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(StateDir { dir: dir.to_path_buf() })
    }

    pub fn file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Writes a snapshot: to a temporary file first, then renamed over the old one, so a crash at
    /// any point leaves either the previous snapshot or the new one, never half of one.
    pub fn save(&self, snap: flow::Snapshot, saved_unix_ms: u64) -> io::Result<()> {
        let body = serde_json::to_vec(&StateFileV1 { saved_unix_ms, flows: snap }).map_err(io::Error::other)?;
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        {
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(&body)?;
        }
        std::fs::rename(&tmp, self.file())
    }

    /// The saved snapshot and how long ago (wall clock) it was taken; `Ok(None)` when there is
    /// none. A clock that went backwards counts as no downtime.
    pub fn load(&self, now_unix_ms: u64) -> Result<Option<(flow::Snapshot, Duration)>, String> {
        let path = self.file();
        let body = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let f: StateFileV1 = serde_json::from_slice(&body).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Some((f.flows, Duration::from_millis(now_unix_ms.saturating_sub(f.saved_unix_ms)))))
    }
}

/// Writes snapshots on its own thread, so that serializing a large table never stalls the
/// control task (IKE). One writer, in submission order; a writer that falls behind skips to
/// the newest snapshot (older ones are superseded anyway).
pub struct SnapshotWriter {
    tx: Option<std::sync::mpsc::Sender<(SnapshotJob, u64)>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

/// What the writer thread is handed: a built snapshot, or a copy of the table to convert
/// there (O(table), off both the engine lock and the control task).
enum SnapshotJob {
    Built(flow::Snapshot),
    Copy { copy: Box<TableCopy>, now: Instant },
}

impl SnapshotWriter {
    pub fn spawn(dir: StateDir) -> io::Result<SnapshotWriter> {
        let (tx, rx) = std::sync::mpsc::channel::<(SnapshotJob, u64)>();
        let handle = std::thread::Builder::new().name("hf-state".into()).spawn(move || {
            while let Ok(mut job) = rx.recv() {
                while let Ok(newer) = rx.try_recv() {
                    job = newer;
                }
                let snap = match job.0 {
                    SnapshotJob::Built(s) => s,
                    SnapshotJob::Copy { copy, now } => copy.meta.snapshot(now, &copy.conns),
                };
                if let Err(e) = dir.save(snap, job.1) {
                    eprintln!("holdfast: warning: cannot save the connection table to {}: {e}", dir.file().display());
                }
            }
        })?;
        Ok(SnapshotWriter { tx: Some(tx), handle: Some(handle) })
    }

    /// Queues a snapshot taken at wall-clock `saved_unix_ms`.
    pub fn submit(&self, snap: flow::Snapshot, saved_unix_ms: u64) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((SnapshotJob::Built(snap), saved_unix_ms));
        }
    }

    /// Queues a copy of the table ([`Shared::copy_table`]) taken at `now` (monotonic) and
    /// wall-clock `saved_unix_ms`; the writer converts it to the state file's snapshot (the
    /// same `flows.json` format as [`flow::Engine::snapshot`]).
    pub fn submit_copy(&self, copy: TableCopy, now: Instant, saved_unix_ms: u64) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((SnapshotJob::Copy { copy: Box::new(copy), now }, saved_unix_ms));
        }
    }

    /// Waits until everything submitted is on disk (shutdown).
    pub fn finish(mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// How the engine was started, for the daemon's start-up message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    Fresh,
    Restored { flows: usize, downtime: Duration },
    /// The state file could not be used; the table starts empty.
    Unreadable(String),
}

/// Builds the engine: restored from the state directory's snapshot when there is a usable one,
/// fresh otherwise (a corrupt or foreign file is reported, never fatal). With
/// `sysopt connection preserve-vpn-flows` it also opens the mid-stream pickup window; without it
/// a restarted gateway must not adopt TCP connections it has no entry for (ASA default).
pub fn start_engine(now: Instant, cfg: &policy::Config, hash_seed: u64, state: Option<&StateDir>, now_unix_ms: u64) -> (flow::Engine, Start) {
    let fcfg = engine_config(cfg, hash_seed);
    let (mut eng, start) = match state.map(|s| s.load(now_unix_ms)) {
        None | Some(Ok(None)) => (flow::Engine::new(now, fcfg), Start::Fresh),
        Some(Err(e)) => (flow::Engine::new(now, fcfg), Start::Unreadable(e)),
        Some(Ok(Some((snap, downtime)))) => match restore_keeping_remote_access(now, &fcfg, &snap, downtime) {
            Ok(e) => {
                let n = snap.flows.len();
                (e, Start::Restored { flows: n, downtime })
            }
            Err(e) => (flow::Engine::new(now, fcfg), Start::Unreadable(e.to_string())),
        },
    };
    if cfg.sysopt.preserve_vpn_flows {
        eng.allow_pickup_until(now + PICKUP_WINDOW);
    }
    (eng, start)
}

/// `flow::Engine::restore` with the site-to-site tunnels' flows handled by the sysopts (torn
/// down unless preserved) and the remote-access sessions' flows kept (`V`) whatever the sysopts
/// say: their sessions come back from the remote-access state file and decide
/// (`ra::conntrack`: a session that did not survive tears its flows down).
fn restore_keeping_remote_access(now: Instant, fcfg: &flow::Config, snap: &flow::Snapshot, downtime: Duration) -> Result<flow::Engine, flow::FlowError> {
    let mut keep = fcfg.clone();
    keep.sysopt.preserve_vpn_flows = true;
    keep.sysopt.preserve_vpn_flows_udp = true;
    let mut eng = flow::Engine::restore(now, keep, snap, downtime)?;
    eng.set_policy(now, fcfg.timeouts.clone(), fcfg.sysopt.clone());
    let ptcp = fcfg.sysopt.preserve_vpn_flows;
    let pudp = ptcp && fcfg.sysopt.preserve_vpn_flows_udp;
    for name in &snap.tunnels {
        if crate::ra::conntrack::is_ra_tunnel(name) {
            continue;
        }
        let t = eng.tunnel(name)?;
        eng.set_tunnel_preserve(t, ptcp, pudp);
        eng.tunnel_down(now, t);
    }
    Ok(eng)
}

// ---------------------------------------------------------------------------------------------
// show asp table vpn-context

/// One direction of one CHILD_SA, as `show asp table vpn-context` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpnContext {
    /// Context number (the ASA's is an internal handle; ours numbers SA directions).
    pub ctx: u32,
    pub peer: IpAddr,
    /// `true` for the inbound (DECR) direction.
    pub decrypt: bool,
    pub spi: u32,
    /// UDP-encapsulated (RFC 3948): `+NATT`.
    pub natt: bool,
    /// The tunnel came up with preserve-vpn-flows on: `+PRESERVE`.
    pub preserve: bool,
    /// Tunnel index (the ASA's `Group`).
    pub group: u32,
    pub packets: u64,
    pub bad_packets: u64,
    pub bad_crypto: u64,
    pub rekeys: u64,
}

impl VpnContext {
    fn flags(&self) -> String {
        let mut f = String::from(if self.decrypt { "DECR+ESP" } else { "ENCR+ESP" });
        if self.natt {
            f.push_str("+NATT");
        }
        if self.preserve {
            f.push_str("+PRESERVE");
        }
        f
    }
}

/// `show asp table vpn-context [detail]` (asa.md §1).
pub fn format_vpn_context(ctxs: &[VpnContext], detail: bool) -> String {
    let mut out = String::new();
    for c in ctxs {
        if detail {
            let _ = writeln!(out, "VPN CTX  = 0x{:08X}", c.ctx);
            out.push('\n');
            let _ = writeln!(out, "Peer IP  = {}", c.peer);
            let _ = writeln!(out, "Pointer  = 0x{:08X}", c.spi);
            let _ = writeln!(out, "State    = UP");
            let _ = writeln!(out, "Flags    = {}", c.flags());
            let _ = writeln!(out, "SA   = 0x{:08X}", c.ctx);
            let _ = writeln!(out, "SPI  = 0x{:08X}", c.spi);
            let _ = writeln!(out, "Group    = {}", c.group);
            let _ = writeln!(out, "Pkts     = {}", c.packets);
            let _ = writeln!(out, "Bad Pkts = {}", c.bad_packets);
            let _ = writeln!(out, "Bad SPI  = 0");
            let _ = writeln!(out, "Spoof    = 0");
            let _ = writeln!(out, "Bad Crypto = {}", c.bad_crypto);
            let _ = writeln!(out, "Rekey Pkt  = {}", c.rekeys);
            let _ = writeln!(out, "Rekey Call = {}", c.rekeys);
            out.push('\n');
        } else {
            let _ = writeln!(
                out,
                "VPN CTX=0x{:08X}, Ptr=0x{:08X}, {}, UP, pk={:010}, rk={:010}, gc=0",
                c.ctx,
                c.spi,
                c.flags(),
                c.packets,
                c.rekeys
            );
        }
    }
    out
}

/// The ICMP source for held segments of a tunnel: our inside address within its protected
/// networks (the ASA answers from the interface toward the sender), else the outside address.
pub fn icmp_source(inside: Option<Ipv4Addr>, outside: IpAddr) -> Ipv4Addr {
    inside.unwrap_or(match outside {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::test_packets::tcp_syn;

    fn ctx(decrypt: bool, natt: bool, preserve: bool) -> VpnContext {
        VpnContext {
            ctx: 3,
            peer: "192.0.2.2".parse().unwrap(),
            decrypt,
            spi: 0x0F51782D,
            natt,
            preserve,
            group: 1,
            packets: 27257,
            bad_packets: 0,
            bad_crypto: 0,
            rekeys: 5,
        }
    }

    #[test]
    fn vpn_context_golden() {
        let v = [ctx(true, false, true), ctx(false, true, true), ctx(true, true, false)];
        assert_eq!(
            format_vpn_context(&v, false),
            "VPN CTX=0x00000003, Ptr=0x0F51782D, DECR+ESP+PRESERVE, UP, pk=0000027257, rk=0000000005, gc=0\n\
             VPN CTX=0x00000003, Ptr=0x0F51782D, ENCR+ESP+NATT+PRESERVE, UP, pk=0000027257, rk=0000000005, gc=0\n\
             VPN CTX=0x00000003, Ptr=0x0F51782D, DECR+ESP+NATT, UP, pk=0000027257, rk=0000000005, gc=0\n"
        );
        assert_eq!(
            format_vpn_context(&v[..1], true),
            "VPN CTX  = 0x00000003\n\nPeer IP  = 192.0.2.2\nPointer  = 0x0F51782D\nState    = UP\n\
             Flags    = DECR+ESP+PRESERVE\nSA   = 0x00000003\nSPI  = 0x0F51782D\nGroup    = 1\nPkts     = 27257\n\
             Bad Pkts = 0\nBad SPI  = 0\nSpoof    = 0\nBad Crypto = 0\nRekey Pkt  = 5\nRekey Call = 5\n\n"
        );
        assert_eq!(format_vpn_context(&[], false), "");
    }

    fn cfg(text: &str) -> policy::Config {
        config::parse("t.cfg", text).map_err(|d| d.to_string()).unwrap().config
    }

    /// examples/gw-a.cfg with the outside interface named `wan` and a `dmz` interface added.
    fn base() -> policy::Config {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/gw-a.cfg"))
            .unwrap()
            .replace("nameif outside", "nameif wan")
            .replace("crypto map MAP interface outside", "crypto map MAP interface wan")
            .replace("crypto ikev2 enable outside", "crypto ikev2 enable wan")
            .replace("nameif inside", "nameif lan")
            + "interface e2\n nameif dmz\n security-level 50\n ip address 172.16.0.1 255.255.255.0\n";
        cfg(&text)
    }

    #[test]
    fn interfaces_of_a_tunnel() {
        let c = base();
        assert_eq!(outside_nameif(&c, "MAP:10"), "wan");
        assert_eq!(outside_nameif(&c, "OTHER:1"), "outside");
        let ts = TrafficSelector::from_net(policy::Ipv4Net::new("172.16.0.0".parse().unwrap(), 24), None);
        assert_eq!(inside_nameif(&c, &[ts], "wan"), "dmz");
        // No interface inside the selectors: the highest security level wins.
        let ts = TrafficSelector::from_net(policy::Ipv4Net::new("10.9.0.0".parse().unwrap(), 24), None);
        assert_eq!(inside_nameif(&c, &[ts], "wan"), "lan");
        let mut bare = c.clone();
        bare.interfaces.clear();
        assert_eq!(inside_nameif(&bare, &[ts], "outside"), "inside");
    }

    #[test]
    fn state_file_round_trip_and_corruption() {
        let dir = std::env::temp_dir().join(format!("hf-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        StateDir::open(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        // An existing directory keeps its mode.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sd = StateDir::open(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o755);
        assert_eq!(sd.load(0), Ok(None));
        let now = crate::clock::now();
        let c = base();
        let mut e = flow::Engine::new(now, engine_config(&c, 7));
        let ifcs = flow::IfcPair { outside: e.interface("wan").unwrap(), inside: e.interface("lan").unwrap() };
        let t = e.tunnel("MAP:10").unwrap();
        e.tunnel_up(now, t, &[], &[]);
        let syn = tcp_syn();
        assert_eq!(e.handle_packet(now, flow::Dir::Outbound, ifcs, flow::Route::ToTunnel(t), &syn), flow::Verdict::Forward);
        sd.save(e.snapshot(now), 10_000).unwrap();
        assert_eq!(std::fs::metadata(sd.file()).unwrap().permissions().mode() & 0o777, 0o600);
        let (snap, down) = sd.load(12_500).unwrap().unwrap();
        assert_eq!(down, Duration::from_millis(2_500));
        assert_eq!(snap.flows.len(), 1);
        let (r, start) = start_engine(now, &c, 7, Some(&sd), 12_500);
        // preserve-vpn-flows is off: the restored tunnelled conn is torn down, with a 302014.
        assert_eq!(start, Start::Restored { flows: 1, downtime: Duration::from_millis(2_500) });
        let mut r = r;
        let mut msgs = Vec::new();
        collect_events(&mut r, &mut msgs);
        assert!(msgs.iter().any(|m| m.id == 302014 && m.text.ends_with("Tunnel has been torn down")), "{msgs:?}");
        assert_eq!(r.len(), 0);
        // The writer thread: the last submitted snapshot is on disk once `finish` returns.
        let w = SnapshotWriter::spawn(StateDir::open(&dir).unwrap()).unwrap();
        w.submit(flow::Engine::new(now, engine_config(&c, 7)).snapshot(now), 20_000);
        w.submit(e.snapshot(now), 30_000);
        w.finish();
        let (snap, down) = sd.load(30_500).unwrap().unwrap();
        assert_eq!((snap.flows.len(), down), (1, Duration::from_millis(500)));
        // A corrupt file: a fresh table and a reason, never a panic.
        std::fs::write(sd.file(), b"{not json").unwrap();
        let (e2, start) = start_engine(now, &c, 7, Some(&sd), 0);
        assert!(matches!(start, Start::Unreadable(ref m) if m.contains("flows.json")), "{start:?}");
        assert!(e2.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An engine with `n` (< 122 M) TCP conns from distinct inside ports/addresses: three in four
    /// through tunnels MAP:10 and MAP:20 (MAP:20's preserved with `V` once it drops), the rest
    /// clear.
    pub(crate) fn filled(now: Instant, n: u32) -> flow::Engine {
        let mut c = base();
        c.sysopt.preserve_vpn_flows = true;
        let mut e = flow::Engine::new(now, engine_config(&c, 7));
        let ifcs = flow::IfcPair { outside: e.interface("wan").unwrap(), inside: e.interface("lan").unwrap() };
        let a = e.tunnel("MAP:10").unwrap();
        let b = e.tunnel("MAP:20").unwrap();
        e.tunnel_up(now, a, &[], &[]);
        e.tunnel_up(now, b, &[], &[]);
        let mut p = tcp_syn();
        for i in 0..n {
            // Inside 10.H.0.L:P with L in 1..=8; H counts rounds of 8 x 60000.
            p[13..16].copy_from_slice(&[(i / 480_000) as u8, 0, (i % 8) as u8 + 1]);
            p[20..22].copy_from_slice(&(1024 + ((i / 8) % 60_000) as u16).to_be_bytes());
            let route = match i % 4 {
                0 => flow::Route::Clear,
                1 | 2 => flow::Route::ToTunnel(a),
                _ => flow::Route::ToTunnel(b),
            };
            assert_eq!(e.handle_packet(now, flow::Dir::Outbound, ifcs, route, &p), flow::Verdict::Forward);
        }
        e.tunnel_down(now + Duration::from_secs(1), b);
        while e.poll_event().is_some() {}
        assert_eq!(e.len(), n as usize);
        e
    }

    /// `show conn`, `show --json conn`, the preserved count and the snapshot from a table copied
    /// a few slots per lock hold are the engine's own answers.
    #[test]
    fn sliced_copies_answer_like_the_engine() {
        let now = crate::clock::now();
        let shared = Shared::new(filled(now, 1000));
        let later = now + Duration::from_secs(20);
        let eng_text = |v, a| shared.lock().show_conn_address(later, v, a);
        for view in [flow::text::ConnView::Brief, flow::text::ConnView::Long, flow::text::ConnView::Detail, flow::text::ConnView::Count] {
            for addr in [None, Some(Ipv4Addr::new(10, 2, 0, 9)), Some(Ipv4Addr::new(10, 0, 0, 3)), Some(Ipv4Addr::new(10, 1, 0, 5))] {
                let want = eng_text(view, addr);
                assert_eq!(show_conn(&shared, later, view, addr), want, "{view:?} {addr:?}");
            }
        }
        // The address filter picks a proper subset (inside 10.0.0.3: one conn in eight).
        assert_eq!(show_conn(&shared, later, flow::text::ConnView::Brief, Some(Ipv4Addr::new(10, 0, 0, 3))).lines().count(), 1 + 125);
        let copy = shared.copy_table(10);
        assert_eq!(copy.conns.len(), 1000);
        // 1000 slots, 10 per hold.
        assert_eq!(copy.holds, 100);
        for addr in [None, Some(Ipv4Addr::new(10, 0, 0, 8))] {
            let mut c = shared.copy_table(7);
            let eng = shared.lock();
            let mut recs = eng.conns(later);
            recs.retain(|r| addr.is_none_or(|a| r.info.inside.addr == a || r.info.outside.addr == a));
            assert_eq!(crate::show::conn_json_copy(&c.meta, later, addr, &mut c.conns), crate::show::conn_json(&eng, Some(&recs)));
        }
        assert_eq!(shared.count_preserved(64), 250);
        assert_eq!(shared.count_preserved(64), shared.lock().conns(later).iter().filter(|c| c.flags.contains('V')).count() as u64);

        // The snapshot: converted on the writer thread, the same file as the engine's own, and
        // it restores.
        let dir = std::env::temp_dir().join(format!("hf-state-copy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sd = StateDir::open(&dir).unwrap();
        let w = SnapshotWriter::spawn(StateDir::open(&dir).unwrap()).unwrap();
        w.submit_copy(shared.copy_table(33), later, 50_000);
        w.finish();
        let (snap, _) = sd.load(50_000).unwrap().unwrap();
        assert_eq!(snap, shared.lock().snapshot(later));
        let (r, start) = start_engine(later, &base(), 7, Some(&sd), 51_000);
        assert_eq!(start, Start::Restored { flows: 1000, downtime: Duration::from_secs(1) });
        // preserve-vpn-flows is off in `base`: the 750 tunnelled conns go, the clear ones stay.
        assert_eq!(r.len(), 250);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A small table for the between-slices tests: three TCP conns through MAP:20 (inside
    /// 10.1.0.1-3, one per slot in that order), preserved with `V` after it drops.
    fn three_preserved(now: Instant) -> (Shared, flow::IfcPair, flow::TunnelId) {
        let mut c = base();
        c.sysopt.preserve_vpn_flows = true;
        let mut e = flow::Engine::new(now, engine_config(&c, 7));
        let ifcs = flow::IfcPair { outside: e.interface("wan").unwrap(), inside: e.interface("lan").unwrap() };
        let b = e.tunnel("MAP:20").unwrap();
        e.tunnel_up(now, b, &[], &[]);
        for host in 1..=3u8 {
            assert_eq!(e.handle_packet(now, flow::Dir::Outbound, ifcs, flow::Route::ToTunnel(b), &syn_from(host)), flow::Verdict::Forward);
        }
        e.tunnel_down(now, b);
        while e.poll_event().is_some() {}
        (Shared::new(e), ifcs, b)
    }

    /// A SYN from inside 10.1.0.`host`:40000 to 10.2.0.9:80.
    fn syn_from(host: u8) -> Vec<u8> {
        let mut p = tcp_syn();
        p[15] = host;
        p
    }

    /// The preserved count walks the table in slices like `show conn`, and counts a 5-tuple
    /// closed and rebuilt during the walk once, as the live conn, as the listing lists it: here
    /// the preserved conn of 10.1.0.1 is copied, cleared, its slot reused, and the tuple
    /// rebuilt (and preserved again) in a slot the walk has not reached. The raw copy holds both
    /// lives; counting both said 4 where the table and the listing have 3. Rebuilt in clear
    /// instead, the tuple's live conn is not preserved and the count is 2 (was 3).
    #[test]
    fn preserved_count_dedupes_a_rebuilt_tuple() {
        let now = crate::clock::now();
        let (shared, ifcs, _) = three_preserved(now);
        assert_eq!(shared.count_preserved(1), 3);
        let mut first = true;
        let n = shared.count_preserved_between(1, |s| {
            if std::mem::take(&mut first) {
                let mut e = s.lock();
                assert_eq!(e.clear_conn(now, Some(Ipv4Addr::new(10, 1, 0, 1))), 1);
                assert_eq!(e.handle_packet(now, flow::Dir::Outbound, ifcs, flow::Route::Clear, &syn_from(9)), flow::Verdict::Forward);
                assert_eq!(e.handle_packet(now, flow::Dir::Outbound, ifcs, flow::Route::Clear, &syn_from(1)), flow::Verdict::Forward);
            }
        });
        assert_eq!(shared.lock().conns(now).iter().filter(|c| c.flags.contains('V')).count(), 2);
        assert_eq!(n, 2, "the live conn of 10.1.0.1 is not preserved");

        let (shared, ifcs, b) = three_preserved(now);
        let rebuild = |s: &Shared, first: &mut bool| {
            if !std::mem::take(first) {
                return;
            }
            let mut e = s.lock();
            assert_eq!(e.clear_conn(now, Some(Ipv4Addr::new(10, 1, 0, 1))), 1);
            // A clear conn takes the freed slot 0, so the rebuilt tuple lands beyond the cursor.
            assert_eq!(e.handle_packet(now, flow::Dir::Outbound, ifcs, flow::Route::Clear, &syn_from(9)), flow::Verdict::Forward);
            e.tunnel_up(now, b, &[], &[]);
            assert_eq!(e.handle_packet(now, flow::Dir::Outbound, ifcs, flow::Route::ToTunnel(b), &syn_from(1)), flow::Verdict::Forward);
            e.tunnel_down(now, b);
            while e.poll_event().is_some() {}
        };
        let mut first = true;
        let n = shared.count_preserved_between(1, |s| rebuild(s, &mut first));
        let live = shared.lock().conns(now).iter().filter(|c| c.flags.contains('V')).count() as u64;
        assert_eq!(live, 3);
        assert_eq!(n, live, "the preserved count must name each 5-tuple once");

        // The same walk as a listing: the raw copy held both lives of 10.1.0.1 and the listing
        // keeps one; the count agrees with what it lists.
        let (shared, _, _) = three_preserved(now);
        let mut first = true;
        let copy = shared.copy_table_between(1, |s| rebuild(s, &mut first));
        let listed_v = copy.conns.iter().filter(|c| c.is_preserved()).count() as u64;
        assert_eq!(listed_v, 3);
        assert_eq!(copy.conns.iter().filter(|c| c.involves(Ipv4Addr::new(10, 1, 0, 1))).count(), 1);
    }

    /// `show conn` and `show --json conn` from a sliced copy: the header (`N in use`, JSON
    /// `in_use`) counts the rows the copy lists. Here the conn of 10.1.0.1 is cleared after its
    /// slot was copied: it is listed, and the counter read at the walk's end (2) said one less.
    #[test]
    fn conn_header_counts_the_listed_rows() {
        let now = crate::clock::now();
        let (shared, _, _) = three_preserved(now);
        let clear_first = |s: &Shared, first: &mut bool| {
            if std::mem::take(first) {
                assert_eq!(s.lock().clear_conn(now, Some(Ipv4Addr::new(10, 1, 0, 1))), 1);
            }
        };
        let mut first = true;
        let mut copy = shared.copy_table_between(1, |s| clear_first(s, &mut first));
        assert_eq!((copy.conns.len(), shared.lock().len()), (3, 2), "the case: the copy lists a conn the table no longer has");
        let text = copy.meta.show_conn(now, flow::text::ConnView::Brief, None, &mut copy.conns.clone());
        assert_eq!(text.lines().next(), Some("3 in use, 3 most used"), "{text}");
        assert_eq!(text.lines().count(), 1 + 3, "{text}");
        let json: serde_json::Value = serde_json::from_str(&crate::show::conn_json_copy(&copy.meta, now, None, &mut copy.conns)).unwrap();
        assert_eq!(json["conns"].as_array().map(Vec::len), Some(3));
        assert_eq!((json["in_use"].as_u64(), json["most_used"].as_u64()), (Some(3), Some(3)), "{json}");
        // With nothing changing, the header is the engine's own counter.
        let (shared, _, _) = three_preserved(now);
        assert_eq!(show_conn(&shared, now, flow::text::ConnView::Brief, None).lines().next(), Some("3 in use, 3 most used"));
    }

    /// How long `show conn` (text, JSON) and the state-file snapshot hold the engine lock on a
    /// big table: before (the whole answer built under one hold, as the daemon did) and after
    /// (copied `COPY_SLICE_SLOTS` slots per hold, converted outside). A thread standing in for
    /// the data path takes the lock for one packet every ~50 us and reports its longest wait.
    /// Both ways must give the same answers. Run on a quiet machine, in release:
    ///
    ///     cargo test --release -p holdfast-gateway --lib lock_hold_at_scale -- --ignored --nocapture
    ///
    /// (`HOLDFAST_LOCK_BENCH_FLOWS=100000,1000000` by default; `HOLDFAST_LOCK_BENCH_SLICE`
    /// overrides `COPY_SLICE_SLOTS`.)
    #[test]
    #[ignore = "benchmark: run explicitly in release"]
    fn lock_hold_at_scale() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let sizes: Vec<u32> = std::env::var("HOLDFAST_LOCK_BENCH_FLOWS")
            .unwrap_or_else(|_| "100000,1000000".into())
            .split(',')
            .map(|s| s.trim().parse().expect("HOLDFAST_LOCK_BENCH_FLOWS: comma-separated counts"))
            .collect();
        let slice: usize = std::env::var("HOLDFAST_LOCK_BENCH_SLICE").ok().and_then(|s| s.parse().ok()).unwrap_or(COPY_SLICE_SLOTS);
        println!("slice: {slice} slots per lock hold");
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        for n in sizes {
            let now = crate::clock::now();
            let shared = Arc::new(Shared::new(filled(now, n)));
            let later = now + Duration::from_secs(20);
            // The data-path stand-in: one existing conn's packet per lock hold.
            let stop = Arc::new(AtomicBool::new(false));
            let worst_wait_ns = Arc::new(AtomicU64::new(0));
            let dp = {
                let (shared, stop, worst) = (shared.clone(), stop.clone(), worst_wait_ns.clone());
                std::thread::spawn(move || {
                    let mut p = tcp_syn();
                    p[20..22].copy_from_slice(&1025u16.to_be_bytes());
                    p[33] = 0x10;
                    // Interning existing names only looks them up.
                    let ifcs = {
                        let mut eng = shared.lock();
                        flow::IfcPair { outside: eng.interface("wan").unwrap(), inside: eng.interface("lan").unwrap() }
                    };
                    while !stop.load(Ordering::Relaxed) {
                        let t = crate::clock::now();
                        let mut eng = shared.lock();
                        let waited = crate::clock::now().saturating_duration_since(t);
                        let _ = eng.handle_packet(later, flow::Dir::Outbound, ifcs, flow::Route::Clear, &p);
                        drop(eng);
                        worst.fetch_max(waited.as_nanos() as u64, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_micros(50));
                    }
                })
            };
            let probe = |f: &mut dyn FnMut() -> (Duration, usize)| {
                std::thread::sleep(Duration::from_millis(20));
                worst_wait_ns.store(0, Ordering::Relaxed);
                let t = crate::clock::now();
                let (hold, holds) = f();
                let total = crate::clock::now().saturating_duration_since(t);
                std::thread::sleep(Duration::from_millis(5));
                (hold, holds, total, Duration::from_nanos(worst_wait_ns.load(Ordering::Relaxed)))
            };
            let report = |what: &str, (hold, holds, total, wait): (Duration, usize, Duration, Duration)| {
                println!(
                    "{n:>8} flows  {what:<24} longest hold {:>9.3} ms ({holds:>3} holds)  total {:>9.1} ms  data-path worst wait {:>9.3} ms",
                    ms(hold),
                    ms(total),
                    ms(wait)
                );
            };
            let timed_hold = |f: &mut dyn FnMut(&flow::Engine)| {
                let eng = shared.lock();
                let t = crate::clock::now();
                f(&eng);
                let d = crate::clock::now().saturating_duration_since(t);
                drop(eng);
                d
            };
            // Before this change `show conn count` built every record and dropped them.
            report("before show conn Count", probe(&mut || (timed_hold(&mut |e| drop(e.conns(later))), 1)));
            for view in [flow::text::ConnView::Brief, flow::text::ConnView::Detail, flow::text::ConnView::Count] {
                let mut old = String::new();
                let what = if view == flow::text::ConnView::Count { "engine show conn" } else { "before show conn" };
                report(&format!("{what} {view:?}"), probe(&mut || (timed_hold(&mut |e| old = e.show_conn(later, view)), 1)));
                let mut new = String::new();
                report(&format!("after  show conn {view:?}"), probe(&mut || {
                    if view == flow::text::ConnView::Count {
                        let hold = timed_hold(&mut |e| new = e.show_conn(later, view));
                        return (hold, 1);
                    }
                    let mut c = shared.copy_table(slice);
                    new = c.meta.show_conn(later, view, None, &mut c.conns);
                    (c.longest_hold, c.holds)
                }));
                assert_eq!(old, new);
            }
            let mut old = String::new();
            report("before show --json conn", probe(&mut || (timed_hold(&mut |e| old = crate::show::conn_json(e, Some(&e.conns(later)))), 1)));
            let mut new = String::new();
            report("after  show --json conn", probe(&mut || {
                let mut c = shared.copy_table(slice);
                new = crate::show::conn_json_copy(&c.meta, later, None, &mut c.conns);
                (c.longest_hold, c.holds)
            }));
            assert_eq!(old, new);
            let mut old = None;
            report("before snapshot", probe(&mut || (timed_hold(&mut |e| old = Some(e.snapshot(later))), 1)));
            let mut new = None;
            report("after  snapshot (copy)", probe(&mut || {
                let c = shared.copy_table(slice);
                let hold = (c.longest_hold, c.holds);
                new = Some(c);
                hold
            }));
            let c = new.take().expect("copied");
            let t = crate::clock::now();
            let snap = c.meta.snapshot(later, &c.conns);
            println!("{n:>8} flows  after  snapshot conversion (writer thread, no lock) {:>9.1} ms", ms(crate::clock::now().saturating_duration_since(t)));
            assert!(old.as_ref() == Some(&snap));
            stop.store(true, Ordering::Relaxed);
            dp.join().expect("data-path thread");
        }
    }

    /// preserve-vpn-flows off: a restart tears the site-to-site tunnel's conn down but keeps a
    /// remote-access session's (`V`) for the sessions file to decide.
    #[test]
    fn restore_keeps_remote_access_flows() {
        let dir = std::env::temp_dir().join(format!("hf-state-ra-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sd = StateDir::open(&dir).unwrap();
        let now = crate::clock::now();
        let c = base();
        let mut e = flow::Engine::new(now, engine_config(&c, 7));
        let ifcs = flow::IfcPair { outside: e.interface("wan").unwrap(), inside: e.interface("lan").unwrap() };
        let s2s = e.tunnel("MAP:10").unwrap();
        let ra = e.tunnel(&crate::ra::conntrack::tunnel_name(Ipv4Addr::new(10, 2, 0, 9))).unwrap();
        e.tunnel_up(now, s2s, &[], &[]);
        e.tunnel_up(now, ra, &[], &[]);
        let syn = tcp_syn();
        assert_eq!(e.handle_packet(now, flow::Dir::Outbound, ifcs, flow::Route::ToTunnel(s2s), &syn), flow::Verdict::Forward);
        let mut other = syn.clone();
        other[20..22].copy_from_slice(&40001u16.to_be_bytes());
        assert_eq!(e.handle_packet(now, flow::Dir::Outbound, ifcs, flow::Route::ToTunnel(ra), &other), flow::Verdict::Forward);
        sd.save(e.snapshot(now), 1_000).unwrap();
        let (mut r, start) = start_engine(now, &c, 7, Some(&sd), 2_000);
        assert_eq!(start, Start::Restored { flows: 2, downtime: Duration::from_secs(1) });
        let mut msgs = Vec::new();
        collect_events(&mut r, &mut msgs);
        assert_eq!(msgs.iter().filter(|m| m.id == 302014).count(), 1, "{msgs:?}");
        let left = r.conns(now);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].info.tunnel.map(|t| r.tunnel_name(t).to_string()), Some("ra:10.2.0.9".to_string()));
        assert!(left[0].flags.contains('V'));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
