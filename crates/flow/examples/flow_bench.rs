//! Flow-table benchmark (issue 3): bytes per flow at 1 M and 10 M entries, measured with a
//! counting global allocator; packet lookups per second on one core; setups+teardowns per second.
//!
//!     CARGO_TARGET_DIR=/work/target-flow cargo run --release -p holdfast-flow --example flow_bench
//!     (optional argument: a comma-separated list of table sizes, default 1000000,10000000)
//!
//! Every operation goes through `Engine::handle_packet` with a real IPv4/TCP packet (parse, keyed
//! hash, lookup, state update, timer bookkeeping, events drained), not a bare hash-table probe.

// A benchmark harness measures wall time and stands in for the daemon's clock.
#![allow(clippy::disallowed_methods, clippy::field_reassign_with_default)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use flow::{Config, Dir, Engine, IfcPair, Route};

/// Counts live heap bytes and their peak, so "bytes per flow" is what the process really holds.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so all of
// GlobalAlloc's contracts are those of `System`; the counters are plain atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        let n = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        PEAK.fetch_max(n, Ordering::Relaxed);
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` was allocated by `System` with layout `l` (see `alloc`).
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        let n = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        PEAK.fetch_max(n, Ordering::Relaxed);
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        if new >= l.size() {
            let n = LIVE.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
            PEAK.fetch_max(n, Ordering::Relaxed);
        } else {
            LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
        }
        // SAFETY: `p`/`l` come from `System` via this allocator; `new` is the caller's.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// A reusable IPv4+TCP packet whose source address/port and flags are rewritten in place
/// (the engine does not verify checksums: the daemon's TUN/offload path does).
struct Pkt([u8; 40]);

impl Pkt {
    fn new() -> Self {
        let mut p = [0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[16..20].copy_from_slice(&[192, 0, 2, 1]);
        p[22..24].copy_from_slice(&443u16.to_be_bytes());
        p[32] = 5 << 4;
        Pkt(p)
    }
    /// Flow `k`: source 10.x.y.z (k / 64) port 1024 + k % 64.
    fn set(&mut self, k: u64, flags: u8) -> &[u8] {
        let host = 0x0a00_0000u32 + (k / 64) as u32;
        self.0[12..16].copy_from_slice(&host.to_be_bytes());
        self.0[20..22].copy_from_slice(&(1024 + (k % 64) as u16).to_be_bytes());
        self.0[33] = flags;
        &self.0
    }
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    let sizes: Vec<u64> = std::env::args()
        .nth(1)
        .map(|a| a.split(',').map(|x| x.parse().expect("size")).collect())
        .unwrap_or_else(|| vec![1_000_000, 10_000_000]);
    println!("flow_bench: entry-path benchmark of holdfast-flow (one thread)");
    println!(
        "machine: {} logical CPUs, load average {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split(' ').take(3).collect::<Vec<_>>().join(" ")
    );
    for &n in &sizes {
        anchor(n);
        run(n);
    }
}

/// The machine's own numbers for comparison, on an array as large as the table: a dependent
/// random load (latency: the floor for one unbatched cache-missing lookup) and independent random
/// loads (what overlapping misses can reach).
fn anchor(n: u64) {
    let words = (n as usize * 88) / 8;
    let mut v: Vec<u64> = (0..words as u64).collect();
    let mut s = 0x2545_f491_4f6c_dd1du64;
    for i in (1..words).rev() {
        let j = (xorshift(&mut s) % i as u64) as usize;
        v.swap(i, j);
    }
    let iters = 2_000_000u64;
    let start = Instant::now();
    let mut p = 0usize;
    for _ in 0..iters {
        p = v[p] as usize;
    }
    let dep = start.elapsed();
    let start = Instant::now();
    let mut acc = 0u64;
    for _ in 0..iters {
        acc = acc.wrapping_add(v[(xorshift(&mut s) % words as u64) as usize]);
    }
    let ind = start.elapsed();
    println!(
        "\nanchor ({} MB array): dependent random load {:.0} ns, independent random loads {:.1} ns each ({})",
        (words * 8) >> 20,
        dep.as_nanos() as f64 / iters as f64,
        ind.as_nanos() as f64 / iters as f64,
        (p as u64) ^ acc & 1
    );
}

fn run(n: u64) {
    let t0 = Instant::now();
    let mut cfg = Config::default();
    cfg.max_flows = usize::MAX;
    let mut e = Engine::new(t0, cfg);
    let ifc = IfcPair { outside: e.interface("outside").unwrap(), inside: e.interface("inside").unwrap() };
    let mut pkt = Pkt::new();
    let now = t0 + Duration::from_secs(1);

    // --- Memory: n conns built by SYNs from the inside.
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let start = Instant::now();
    for k in 0..n {
        e.handle_packet(now, Dir::Outbound, ifc, Route::Clear, pkt.set(k, SYN));
        while e.poll_event().is_some() {}
    }
    let build = start.elapsed();
    assert_eq!(e.len() as u64, n);
    let held = LIVE.load(Ordering::Relaxed) - base;
    let peak = PEAK.load(Ordering::Relaxed) - base;
    println!("== {n} flows ==");
    println!(
        "memory: {:.1} bytes/flow allocated (table's own count {:.1}); peak during growth {:.1} bytes/flow",
        held as f64 / n as f64,
        e.table_heap_bytes() as f64 / n as f64,
        peak as f64 / n as f64
    );
    println!("build:  {:.2} M setups/s while growing from empty", rate(n, build) / 1e6);

    // --- Lookups: packets of existing conns in random order (cache-cold, the worst case).
    let iters = n.max(5_000_000);
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let calls = CALLS.load(Ordering::Relaxed);
    let start = Instant::now();
    for _ in 0..iters {
        let k = xorshift(&mut s) % n;
        let v = e.handle_packet(now, Dir::Outbound, ifc, Route::Clear, pkt.set(k, ACK));
        debug_assert_eq!(v, flow::Verdict::Forward);
    }
    let look = start.elapsed();
    let allocs = CALLS.load(Ordering::Relaxed) - calls;
    println!(
        "lookup: {:.2} M packets/s (random conn each packet, full handle_packet path; {allocs} heap allocations in {iters} packets)",
        rate(iters, look) / 1e6
    );

    // Random conns again, but handed over in batches of 32 (one TUN/GRO read) via handle_batch.
    let mut bufs: Vec<Pkt> = (0..32).map(|_| Pkt::new()).collect();
    let mut verdicts = vec![flow::Verdict::Forward; 32];
    let start = Instant::now();
    let mut done = 0u64;
    while done < iters {
        for b in bufs.iter_mut() {
            let k = xorshift(&mut s) % n;
            b.set(k, ACK);
        }
        let batch: Vec<flow::Packet<'_>> =
            bufs.iter().map(|b| flow::Packet { dir: Dir::Outbound, ifcs: ifc, route: Route::Clear, data: &b.0 }).collect();
        e.handle_batch(now, &batch, &mut verdicts);
        done += 32;
    }
    let batched = start.elapsed();
    println!("lookup: {:.2} M packets/s (random conn each packet, handle_batch of 32)", rate(done, batched) / 1e6);

    // Same, in bursts of 32 packets per conn (what a GRO/TUN batch of one flow looks like).
    let start = Instant::now();
    let mut done = 0u64;
    while done < iters {
        let k = xorshift(&mut s) % n;
        for _ in 0..32 {
            e.handle_packet(now, Dir::Outbound, ifc, Route::Clear, pkt.set(k, ACK));
        }
        done += 32;
    }
    let burst = start.elapsed();
    println!("lookup: {:.2} M packets/s (bursts of 32 packets per conn)", rate(done, burst) / 1e6);

    // --- Setup + teardown at this table size: SYN builds a conn, RST from the inside ends it.
    let pairs = 2_000_000u64;
    // Warm the event queue to its working size first, then count heap allocations.
    e.handle_packet(now, Dir::Outbound, ifc, Route::Clear, pkt.set(n, SYN));
    e.handle_packet(now, Dir::Outbound, ifc, Route::Clear, pkt.set(n, RST));
    while e.poll_event().is_some() {}
    let calls = CALLS.load(Ordering::Relaxed);
    let start = Instant::now();
    for j in 0..pairs {
        let k = n + (j % (1 << 20));
        e.handle_packet(now, Dir::Outbound, ifc, Route::Clear, pkt.set(k, SYN));
        e.handle_packet(now, Dir::Outbound, ifc, Route::Clear, pkt.set(k, RST));
        while e.poll_event().is_some() {}
    }
    let churn = start.elapsed();
    let allocs = CALLS.load(Ordering::Relaxed) - calls;
    assert_eq!(e.len() as u64, n);
    println!(
        "churn:  {:.2} M setups+teardowns/s ({:.2} M conns set up and torn down per second; {allocs} heap allocations)",
        rate(2 * pairs, churn) / 1e6,
        rate(pairs, churn) / 1e6
    );

    // --- Expiry of everything through the wheel (Conn/SYN timeouts).
    let start = Instant::now();
    let mut t = now;
    let end = now + Duration::from_secs(40);
    while let Some((w, _)) = e.poll_timeout() {
        if w > end {
            break;
        }
        t = w;
        e.handle_timeout(t);
        while e.poll_event().is_some() {}
    }
    let expire = start.elapsed();
    println!("expiry: {:.2} M SYN-timeout teardowns/s (wheel) -> {} left at {:?}", rate(n, expire) / 1e6, e.len(), t - t0);
    drop(e);
}
