//! Storage: a slab of cache-line-sized entries in fixed-size chunks, indexed by an
//! open-addressing table of 8-byte buckets, plus a hashed timer wheel whose links sit in a
//! parallel array.
//!
//! Why this shape: an entry is exactly one 64-byte cache line (aligned), its wheel links are
//! 8 bytes elsewhere, and the index costs 8 bytes per bucket at a load factor between 3/8 and
//! 3/4, so a flow costs 83-94 bytes including the table, against 128 targeted (DESIGN.md
//! §Habits 6). A packet of an existing conn touches two cache lines: the bucket line (a probe run
//! rarely crosses into the next one) and the entry line; the links are only read when a timer is
//! re-armed (setup, teardown, a shorter timeout). Random-conn lookups on a big table are bound by
//! memory latency, so `Table::prefetch_home`/`prefetch_entry` let a batch issue its misses ahead
//! of processing (see `Engine::handle_batch`), and the big arrays ask for transparent huge pages
//! (a TLB miss on every random access otherwise: the table is far larger than the TLB reach of
//! 4 KiB pages).
//!
//! Chunks of 32768 entries (2 MiB, one huge page) bound the slack of slab growth to one chunk
//! instead of the 2x of a doubling `Vec`, and entries never move, so a slab index is a stable
//! handle. Arming a timer never allocates.

pub(crate) const NIL: u32 = u32::MAX;
const CHUNK_BITS: u32 = 15;
const CHUNK: usize = 1 << CHUNK_BITS;

/// The 5-tuple plus interface pair, normalised so both directions of a flow share one key:
/// "out" is the endpoint on the lower-security (outside) interface of the pair, "in" the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct Key {
    pub out_ip: u32,
    pub in_ip: u32,
    pub out_port: u16,
    pub in_port: u16,
    pub proto: u8,
    pub ifc_out: u8,
    pub ifc_in: u8,
}

impl Key {
    fn words(&self) -> (u64, u64) {
        let a = (u64::from(self.out_ip) << 32) | u64::from(self.in_ip);
        let b = (u64::from(self.out_port) << 48)
            | (u64::from(self.in_port) << 32)
            | (u64::from(self.proto) << 16)
            | (u64::from(self.ifc_out) << 8)
            | u64::from(self.ifc_in);
        (a, b)
    }
}

/// One connection, one cache line. Times are engine milliseconds (see `Engine::ms`).
#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
pub(crate) struct Entry {
    pub key: Key,
    pub id: u64,
    pub bytes: u64,
    pub last_ms: u64,
    /// Engine seconds at build time (uptime/duration need no finer grain).
    pub created_s: u32,
    /// Wheel tick the entry is armed for; `NIL` = not in the wheel (no timeout).
    pub armed: u32,
    /// Sequence number of the FIN sent by [inside, outside] (valid once `f`/`F` is set).
    pub fin_seq: [u32; 2],
    pub flags: u16,
    /// Interned tunnel id, 0 = built in clear.
    pub tunnel: u16,
    pub live: bool,
    pub icmp_type: u8,
    pub icmp_code: u8,
}

// One entry = one cache line: the layout above uses 63 of its 64 bytes.
const _: () = assert!(std::mem::size_of::<Entry>() == 64);

impl Entry {
    pub const FREE: Entry = Entry {
        key: Key { out_ip: 0, in_ip: 0, out_port: 0, in_port: 0, proto: 0, ifc_out: 0, ifc_in: 0 },
        id: 0,
        bytes: 0,
        last_ms: 0,
        created_s: 0,
        armed: NIL,
        fin_seq: [0; 2],
        flags: 0,
        tunnel: 0,
        live: false,
        icmp_type: 0,
        icmp_code: 0,
    };
}

/// Timer wheel links of an entry; `next` doubles as the free-list link of a free slot. Kept out
/// of the entry so that the entry fits one cache line: only timer (re-)arming reads them.
#[derive(Debug, Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
}

const NO_LINK: Link = Link { prev: NIL, next: NIL };

/// Keyed hash of a flow key. Attackers choose ports and (spoofed) addresses, so the hash is
/// keyed with a per-engine seed to keep them from aiming many flows at one probe sequence.
/// Two rounds of a 64x64->128 folded multiply; this is a hash-table hash, not a MAC.
fn hash_key(seed: &[u64; 4], k: &Key) -> u64 {
    let (a, b) = k.words();
    let h = fold_mul(a ^ seed[0], b ^ seed[1]);
    fold_mul(h ^ seed[2], seed[3] | 1)
}

fn fold_mul(x: u64, y: u64) -> u64 {
    let p = u128::from(x) * u128::from(y);
    (p as u64) ^ ((p >> 64) as u64)
}

fn expand_seed(seed: u64) -> [u64; 4] {
    // splitmix64 steps: spread one seed into four independent-looking words.
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    [next(), next(), next(), next()]
}

/// Asks the CPU to start loading the cache line holding `p` (a hint: no fault, no stall, no
/// architectural effect). Elsewhere than x86_64 it does nothing: lookups stay correct, only the
/// overlap of a batch's misses is lost.
#[inline(always)]
fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 never faults and changes no architectural state, whatever the address
    // (here: a live reference); SSE, which provides it, is part of the x86_64 baseline.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>((p as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Fixed-length arrays for the big tables, allocated 2 MiB-aligned when they are at least 2 MiB
/// and offered to the kernel's transparent huge pages before their first touch (see `mem`).
mod mem {
    use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
    use std::ops::{Deref, DerefMut};
    use std::ptr::NonNull;

    pub const HUGE_PAGE: usize = 2 << 20;

    /// Owns `len` initialised `T`s (like `Box<[T]>`, which cannot carry a larger alignment than
    /// `T`'s own: its deallocation would use the wrong layout).
    pub struct Buf<T: Copy> {
        ptr: NonNull<T>,
        len: usize,
        layout: Layout,
    }

    // SAFETY: `Buf` owns its memory exclusively, exactly like `Box<[T]>`; it is Send/Sync when
    // `T` is.
    unsafe impl<T: Copy + Send> Send for Buf<T> {}
    // SAFETY: as above; shared access only hands out `&[T]`.
    unsafe impl<T: Copy + Sync> Sync for Buf<T> {}

    impl<T: Copy> Buf<T> {
        pub fn filled(len: usize, value: T) -> Self {
            let size = std::mem::size_of::<T>().checked_mul(len.max(1)).expect("table size overflow");
            let align = if size >= HUGE_PAGE { HUGE_PAGE } else { std::mem::align_of::<T>() };
            let layout = Layout::from_size_align(size, align).expect("table size overflow");
            // SAFETY: `layout` has a non-zero size (len.max(1) elements of a non-ZST; the
            // table's element types are all non-zero-sized).
            let raw = unsafe { alloc(layout) };
            let Some(ptr) = NonNull::new(raw.cast::<T>()) else { handle_alloc_error(layout) };
            if size >= HUGE_PAGE {
                advise_huge(raw, size);
            }
            for k in 0..len {
                // SAFETY: `k < len` and the allocation holds `len` properly aligned `T`s.
                unsafe { ptr.as_ptr().add(k).write(value) };
            }
            Buf { ptr, len, layout }
        }
    }

    impl<T: Copy> Deref for Buf<T> {
        type Target = [T];
        fn deref(&self) -> &[T] {
            // SAFETY: `ptr` points to `len` initialised `T`s owned by `self` (see `filled`).
            unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
        }
    }

    impl<T: Copy> DerefMut for Buf<T> {
        fn deref_mut(&mut self) -> &mut [T] {
            // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
            unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
        }
    }

    impl<T: Copy> Drop for Buf<T> {
        fn drop(&mut self) {
            // SAFETY: allocated in `filled` with exactly this layout; `T: Copy` needs no drop.
            unsafe { dealloc(self.ptr.as_ptr().cast(), self.layout) }
        }
    }

    /// Asks Linux for transparent huge pages on a fresh, untouched, 2 MiB-aligned allocation
    /// (THP in `madvise` mode does nothing otherwise). Best effort: if the kernel says no, the
    /// memory simply stays on 4 KiB pages.
    #[cfg(target_os = "linux")]
    fn advise_huge(p: *mut u8, size: usize) {
        // SAFETY: [p, p + size) is one allocation we own and have not handed out; MADV_HUGEPAGE
        // changes only how the kernel backs it, never its contents or validity.
        let _ = unsafe { libc::madvise(p.cast(), size, libc::MADV_HUGEPAGE) };
    }

    #[cfg(not(target_os = "linux"))]
    fn advise_huge(_p: *mut u8, _size: usize) {}
}

use mem::Buf;

/// Open-addressing index over the slab: linear probing, no tombstones (backward-shift deletion,
/// Knuth vol. 3 §6.4 Algorithm R). A bucket is one `u64`: the low 32 bits of the key's hash
/// (the tag) above the slab index + 1 (0 = empty). The home bucket is `tag & mask`, so growth
/// and deletion never touch the slab; a full tag compare filters almost every foreign key before
/// the slab is read (keys sharing a home bucket still differ in 32 - log2(buckets) tag bits).
/// Maximum load 3/4 keeps probe runs short (Knuth: ~2.5 probes per hit, ~8.5 per miss, in
/// adjacent words: eight buckets share a cache line).
pub(crate) struct Table {
    buckets: Buf<u64>,
    mask: usize,
    chunks: Vec<Buf<Entry>>,
    links: Vec<Box<[Link]>>,
    free: u32,
    /// Slots handed out at least once (the high-water mark of the slab).
    hi: u32,
    len: usize,
    seed: [u64; 4],
}

const MIN_BUCKETS: usize = 64;

fn slot(chunks: &[Buf<Entry>], i: u32) -> &Entry {
    &chunks[(i >> CHUNK_BITS) as usize][(i as usize) & (CHUNK - 1)]
}

fn bucket_of(tag: u32, i: u32) -> u64 {
    (u64::from(tag) << 32) | (u64::from(i) + 1)
}

impl Table {
    pub fn new(seed: u64) -> Self {
        Self {
            buckets: Buf::filled(MIN_BUCKETS, 0),
            mask: MIN_BUCKETS - 1,
            chunks: Vec::new(),
            links: Vec::new(),
            free: NIL,
            hi: 0,
            len: 0,
            seed: expand_seed(seed),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Slab indices are only produced by this table, so indexing cannot go out of bounds.
    pub fn get(&self, i: u32) -> &Entry {
        slot(&self.chunks, i)
    }

    pub fn get_mut(&mut self, i: u32) -> &mut Entry {
        &mut self.chunks[(i >> CHUNK_BITS) as usize][(i as usize) & (CHUNK - 1)]
    }

    fn link(&self, i: u32) -> &Link {
        &self.links[(i >> CHUNK_BITS) as usize][(i as usize) & (CHUNK - 1)]
    }

    fn link_mut(&mut self, i: u32) -> &mut Link {
        &mut self.links[(i >> CHUNK_BITS) as usize][(i as usize) & (CHUNK - 1)]
    }

    pub fn hash(&self, k: &Key) -> u64 {
        hash_key(&self.seed, k)
    }

    pub fn find(&self, k: &Key) -> Option<u32> {
        self.find_hashed(k, self.hash(k))
    }

    pub fn find_hashed(&self, k: &Key, h: u64) -> Option<u32> {
        let tag = h as u32;
        let mut pos = (tag as usize) & self.mask;
        loop {
            let b = self.buckets[pos];
            if b == 0 {
                return None;
            }
            if (b >> 32) as u32 == tag {
                let i = (b as u32) - 1;
                if self.get(i).key == *k {
                    return Some(i);
                }
            }
            pos = (pos + 1) & self.mask;
        }
    }

    /// Batch stage 1: starts loading the key's home bucket line, and the next line too when the
    /// home bucket sits near the end of its line (a probe run may continue there).
    pub fn prefetch_home(&self, h: u64) {
        let pos = (h as u32 as usize) & self.mask;
        prefetch(&self.buckets[pos]);
        prefetch(&self.buckets[(pos + 2) & self.mask]);
    }

    /// Batch stage 2 (once the bucket line has had time to arrive): finds the entry of the first
    /// bucket in the key's probe run whose tag matches, starts loading its line, and returns it
    /// as a hint for `find_hinted` (`NIL` if none). Only a hint: the table may change before the
    /// real lookup, which checks it.
    #[inline]
    pub fn prefetch_entry(&self, h: u64) -> u32 {
        let tag = h as u32;
        let mut pos = (tag as usize) & self.mask;
        // Bounded: a hint need not chase a rare long run.
        for _ in 0..8 {
            let b = self.buckets[pos];
            if b == 0 {
                return NIL;
            }
            if (b >> 32) as u32 == tag {
                let i = (b as u32) - 1;
                if i < self.hi {
                    prefetch(self.get(i));
                    return i;
                }
                return NIL;
            }
            pos = (pos + 1) & self.mask;
        }
        NIL
    }

    /// `find_hashed` that first tries the slab index `hint` (from `prefetch_entry`): keys are
    /// unique among live entries, so a live entry holding `k` is the one the index names, and
    /// the probe is skipped. Any other hint (stale, tag collision, `NIL`) falls back to the probe.
    #[inline]
    pub fn find_hinted(&self, k: &Key, h: u64, hint: u32) -> Option<u32> {
        if hint < self.hi {
            let e = self.get(hint);
            if e.live && e.key == *k {
                return Some(hint);
            }
        }
        self.find_hashed(k, h)
    }

    /// Stores a new live entry whose key is not present (the caller looked it up first).
    pub fn insert(&mut self, mut e: Entry) -> u32 {
        e.live = true;
        if (self.len + 1) * 4 > self.buckets.len() * 3 {
            self.grow();
        }
        let i = if self.free != NIL {
            let i = self.free;
            self.free = self.link(i).next;
            i
        } else {
            let i = self.hi;
            if (i as usize) >> CHUNK_BITS >= self.chunks.len() {
                self.chunks.push(Buf::filled(CHUNK, Entry::FREE));
                self.links.push(vec![NO_LINK; CHUNK].into_boxed_slice());
            }
            self.hi += 1;
            i
        };
        *self.get_mut(i) = e;
        *self.link_mut(i) = NO_LINK;
        let tag = self.hash(&e.key) as u32;
        self.place(bucket_of(tag, i));
        self.len += 1;
        i
    }

    fn place(&mut self, b: u64) {
        let mut pos = ((b >> 32) as usize) & self.mask;
        while self.buckets[pos] != 0 {
            pos = (pos + 1) & self.mask;
        }
        self.buckets[pos] = b;
    }

    fn grow(&mut self) {
        let doubled = Buf::filled(self.buckets.len() * 2, 0);
        let old = std::mem::replace(&mut self.buckets, doubled);
        self.mask = self.buckets.len() - 1;
        for &b in old.iter() {
            if b != 0 {
                self.place(b);
            }
        }
    }

    /// Removes a live entry (already unlinked from the wheel) and returns its last state.
    pub fn remove(&mut self, i: u32) -> Entry {
        let e = *self.get(i);
        debug_assert!(e.live);
        let want = bucket_of(self.hash(&e.key) as u32, i);
        let mut pos = ((want >> 32) as usize) & self.mask;
        // The entry is indexed (insert put it there), so the probe finds it before a hole.
        while self.buckets[pos] != want && self.buckets[pos] != 0 {
            pos = (pos + 1) & self.mask;
        }
        if self.buckets[pos] == want {
            self.delete_at(pos);
        }
        *self.get_mut(i) = Entry::FREE;
        let free = self.free;
        *self.link_mut(i) = Link { prev: NIL, next: free };
        self.free = i;
        self.len -= 1;
        e
    }

    /// Backward-shift deletion: pull later members of the probe run into the hole unless their
    /// home lies cyclically in (hole, their position].
    fn delete_at(&mut self, pos: usize) {
        let mut hole = pos;
        let mut j = pos;
        self.buckets[hole] = 0;
        loop {
            j = (j + 1) & self.mask;
            let b = self.buckets[j];
            if b == 0 {
                return;
            }
            let home = ((b >> 32) as usize) & self.mask;
            let stays = if hole <= j { hole < home && home <= j } else { hole < home || home <= j };
            if !stays {
                self.buckets[hole] = b;
                self.buckets[j] = 0;
                hole = j;
            }
        }
    }

    /// Slab slots handed out so far: every live index is below this (a chunked walk of the
    /// table stops here).
    pub fn slots(&self) -> u32 {
        self.hi
    }

    /// Every live slab index, in slab order.
    pub fn live(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.hi).filter(move |&i| self.get(i).live)
    }

    /// Index entries (for the invariant checks in tests).
    #[cfg(test)]
    pub fn index_len(&self) -> usize {
        self.buckets.iter().filter(|&&b| b != 0).count()
    }

    /// Heap bytes held by the table (slab chunks, their links, index), for `show` and the
    /// benchmark.
    pub fn heap_bytes(&self) -> usize {
        self.chunks.len() * CHUNK * (std::mem::size_of::<Entry>() + std::mem::size_of::<Link>())
            + self.chunks.capacity() * std::mem::size_of::<Buf<Entry>>()
            + self.links.capacity() * std::mem::size_of::<Box<[Link]>>()
            + self.buckets.len() * 8
    }
}

// ---------------------------------------------------------------------------------------------
// Hashed timer wheel (Varghese & Lauck scheme 4) with lazy re-arming.
//
// Each live entry with a finite timeout sits in exactly one slot list. A packet only moves
// `last_ms` forward; the entry is re-linked when its slot comes round and the deadline turns out
// to be later ("lazy"), or at once when a state change *shortens* its timeout (SYN -> FIN...).
// So the per-packet cost is a compare, and a long-lived idle entry is visited once per revolution.

pub(crate) const TICK_MS: u64 = 250;
pub(crate) const WHEEL_SLOTS: usize = 4096;

pub(crate) struct Wheel {
    heads: Vec<u32>,
    bitmap: Vec<u64>,
    /// Last tick whose slot has been processed.
    pub cursor: u64,
}

impl Wheel {
    pub fn new(now_ms: u64) -> Self {
        Self { heads: vec![NIL; WHEEL_SLOTS], bitmap: vec![0; WHEEL_SLOTS / 64], cursor: now_ms / TICK_MS }
    }

    /// Links entry `i` so that it is examined at the first tick at or after `deadline_ms`
    /// (never at a tick already processed).
    pub fn arm(&mut self, t: &mut Table, i: u32, deadline_ms: u64) {
        let tick = deadline_ms.div_ceil(TICK_MS).max(self.cursor + 1);
        let s = (tick as usize) % WHEEL_SLOTS;
        let head = self.heads[s];
        t.get_mut(i).armed = u32::try_from(tick).unwrap_or(u32::MAX - 1);
        *t.link_mut(i) = Link { prev: NIL, next: head };
        if head != NIL {
            t.link_mut(head).prev = i;
        }
        self.heads[s] = i;
        self.bitmap[s / 64] |= 1 << (s % 64);
    }

    pub fn unlink(&mut self, t: &mut Table, i: u32) {
        let armed = t.get(i).armed;
        if armed == NIL {
            return;
        }
        let Link { prev, next } = *t.link(i);
        let s = (armed as usize) % WHEEL_SLOTS;
        if prev == NIL {
            self.heads[s] = next;
            if next == NIL {
                self.bitmap[s / 64] &= !(1 << (s % 64));
            }
        } else {
            t.link_mut(prev).next = next;
        }
        if next != NIL {
            t.link_mut(next).prev = prev;
        }
        t.get_mut(i).armed = NIL;
        *t.link_mut(i) = NO_LINK;
    }

    /// For a member of a list detached by `take_slot`: returns (the next member, the tick it
    /// was armed for) and marks it unarmed, so the caller can re-arm or free it.
    pub fn release(&mut self, t: &mut Table, i: u32) -> (u32, u64) {
        let next = t.link(i).next;
        let e = t.get_mut(i);
        let armed = u64::from(e.armed);
        e.armed = NIL;
        *t.link_mut(i) = NO_LINK;
        (next, armed)
    }

    /// Detaches and returns the list of slot `s` (its members keep stale links; the caller
    /// walks them with `release` and re-arms or frees every member).
    pub fn take_slot(&mut self, s: usize) -> u32 {
        let h = self.heads[s];
        self.heads[s] = NIL;
        self.bitmap[s / 64] &= !(1 << (s % 64));
        h
    }

    /// The first tick after the cursor whose slot is non-empty, within one revolution: a scan
    /// of at most 65 bitmap words (the daemon asks after every call, so this must be cheap even
    /// with an almost empty table).
    pub fn next_busy_tick(&self) -> Option<u64> {
        let words = self.bitmap.len();
        let start = ((self.cursor + 1) as usize) % WHEEL_SLOTS;
        let (w0, b0) = (start / 64, start % 64);
        for step in 0..=words {
            let w = (w0 + step) % words;
            let mut word = self.bitmap[w];
            if step == 0 {
                word &= u64::MAX << b0;
            } else if step == words {
                // Back in the first word: only the bits before the start remain.
                word &= !(u64::MAX << b0);
            }
            if word != 0 {
                let slot = w * 64 + word.trailing_zeros() as usize;
                let dist = (slot + WHEEL_SLOTS - start) % WHEEL_SLOTS;
                return Some(self.cursor + 1 + dist as u64);
            }
        }
        None
    }

    #[cfg(test)]
    pub fn count(&self, t: &Table) -> usize {
        let mut n = 0;
        for &h in &self.heads {
            let mut i = h;
            while i != NIL {
                n += 1;
                i = t.link(i).next;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn key(n: u16) -> Key {
        Key { out_ip: u32::from(n % 7), in_ip: 1, out_port: n, in_port: n / 3, proto: 6, ifc_out: 0, ifc_in: 1 }
    }

    proptest! {
        /// `next_busy_tick` finds the nearest non-empty slot after the cursor (model: a scan).
        #[test]
        fn next_busy_tick_matches_a_scan(cursor in 0u64..100_000, ticks in proptest::collection::vec(1u64..5000, 0..20)) {
            let mut t = Table::new(1);
            let mut w = Wheel::new(0);
            w.cursor = cursor;
            for (n, d) in ticks.iter().enumerate() {
                let i = t.insert(Entry { key: key(n as u16), ..Entry::FREE });
                w.arm(&mut t, i, (cursor + d) * TICK_MS);
            }
            let scan = (1..=WHEEL_SLOTS as u64).map(|d| cursor + d).find(|&tk| w.heads[(tk as usize) % WHEEL_SLOTS] != NIL);
            prop_assert_eq!(w.next_busy_tick(), scan);
        }

        /// The index against a model map, through growth and backward-shift deletions (a fixed,
        /// weak seed and few distinct keys give long probe runs and wrap-around).
        #[test]
        fn index_matches_a_model(ops in proptest::collection::vec((any::<bool>(), 0..600u16), 1..2000), seed: u64) {
            let mut t = Table::new(seed);
            let mut model: HashMap<u16, u32> = HashMap::new();
            for (ins, n) in ops {
                let k = key(n);
                if ins {
                    if let std::collections::hash_map::Entry::Vacant(v) = model.entry(n) {
                        prop_assert_eq!(t.find(&k), None);
                        v.insert(t.insert(Entry { key: k, id: u64::from(n), ..Entry::FREE }));
                    }
                } else if let Some(i) = model.remove(&n) {
                    let e = t.remove(i);
                    prop_assert_eq!(e.key, k);
                }
                prop_assert_eq!(t.len(), model.len());
            }
            prop_assert_eq!(t.index_len(), model.len());
            for n in 0..600u16 {
                prop_assert_eq!(t.find(&key(n)), model.get(&n).copied());
            }
            prop_assert!(t.buckets.len() * 3 >= t.len() * 4);
        }
    }
}
