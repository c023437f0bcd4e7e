//! Storage: a slab of small fixed-size entries in fixed-size chunks, indexed by an
//! open-addressing table of 8-byte buckets, plus a hashed timer wheel threaded through the entries.
//!
//! Why this shape: an entry is 72 bytes and the index costs 8 bytes per bucket at a load factor
//! between 3/8 and 3/4, so a flow costs 83-93 bytes including the table, against 128 targeted
//! (DESIGN.md §Habits 6). A lookup touches two cache lines (bucket, entry) and nothing else. Chunks of 16384 entries bound the slack of
//! slab growth to one chunk instead of the 2x of a doubling `Vec`, and entries never move, so a
//! slab index is a stable handle. The wheel's links live inside the entries: arming a timer never
//! allocates.

pub(crate) const NIL: u32 = u32::MAX;
const CHUNK_BITS: u32 = 14;
const CHUNK: usize = 1 << CHUNK_BITS;

/// The 5-tuple plus interface pair, normalised so both directions of a flow share one key:
/// "out" is the endpoint on the lower-security (outside) interface of the pair, "in" the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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

/// One connection. Times are engine milliseconds (see `Engine::ms`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub key: Key,
    pub id: u64,
    pub bytes: u64,
    pub last_ms: u64,
    /// Engine seconds at build time (uptime/duration need no finer grain).
    pub created_s: u32,
    /// Timer wheel links; `next` doubles as the free-list link of a free slot.
    pub prev: u32,
    pub next: u32,
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

impl Entry {
    pub const FREE: Entry = Entry {
        key: Key { out_ip: 0, in_ip: 0, out_port: 0, in_port: 0, proto: 0, ifc_out: 0, ifc_in: 0 },
        id: 0,
        bytes: 0,
        last_ms: 0,
        created_s: 0,
        prev: NIL,
        next: NIL,
        armed: NIL,
        fin_seq: [0; 2],
        flags: 0,
        tunnel: 0,
        live: false,
        icmp_type: 0,
        icmp_code: 0,
    };
}

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

/// Open-addressing index over the slab: linear probing, no tombstones (backward-shift deletion,
/// Knuth vol. 3 §6.4 Algorithm R). A bucket is one `u64`: the low 32 bits of the key's hash
/// (the tag) above the slab index + 1 (0 = empty). The home bucket is `tag & mask`, so growth
/// and deletion never touch the slab; a full tag compare filters almost every foreign key before
/// the slab is read (keys sharing a home bucket still differ in 32 - log2(buckets) tag bits).
/// Maximum load 3/4 keeps probe runs short (Knuth: ~2.5 probes per hit, ~8.5 per miss, in
/// adjacent words).
pub(crate) struct Table {
    buckets: Vec<u64>,
    mask: usize,
    chunks: Vec<Box<[Entry]>>,
    free: u32,
    /// Slots handed out at least once (the high-water mark of the slab).
    hi: u32,
    len: usize,
    seed: [u64; 4],
}

const MIN_BUCKETS: usize = 64;

fn slot(chunks: &[Box<[Entry]>], i: u32) -> &Entry {
    &chunks[(i >> CHUNK_BITS) as usize][(i as usize) & (CHUNK - 1)]
}

fn bucket_of(tag: u32, i: u32) -> u64 {
    (u64::from(tag) << 32) | (u64::from(i) + 1)
}

impl Table {
    pub fn new(seed: u64) -> Self {
        Self {
            buckets: vec![0; MIN_BUCKETS],
            mask: MIN_BUCKETS - 1,
            chunks: Vec::new(),
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

    /// The bucket word at the key's home position: reading it for a batch of packets before
    /// processing them lets their cache misses overlap.
    pub fn home_word(&self, h: u64) -> u64 {
        self.buckets[(h as u32 as usize) & self.mask]
    }

    /// Reads the first and last word of the entry a bucket word names (0 if none), to pull
    /// both cache lines it may straddle into the cache.
    pub fn touch(&self, b: u64) -> u64 {
        match (b as u32).checked_sub(1) {
            Some(i) if i < self.hi => {
                let e = self.get(i);
                u64::from(e.key.out_ip) ^ u64::from(e.icmp_code)
            }
            _ => 0,
        }
    }

    /// Stores a new live entry whose key is not present (the caller looked it up first).
    pub fn insert(&mut self, mut e: Entry) -> u32 {
        e.live = true;
        if (self.len + 1) * 4 > self.buckets.len() * 3 {
            self.grow();
        }
        let i = if self.free != NIL {
            let i = self.free;
            self.free = self.get(i).next;
            i
        } else {
            let i = self.hi;
            if (i as usize) >> CHUNK_BITS >= self.chunks.len() {
                self.chunks.push(vec![Entry::FREE; CHUNK].into_boxed_slice());
            }
            self.hi += 1;
            i
        };
        *self.get_mut(i) = e;
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
        let doubled = vec![0; self.buckets.len() * 2];
        let old = std::mem::replace(&mut self.buckets, doubled);
        self.mask = self.buckets.len() - 1;
        for b in old {
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
        let free = self.free;
        let s = self.get_mut(i);
        *s = Entry::FREE;
        s.next = free;
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

    /// Every live slab index, in slab order.
    pub fn live(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.hi).filter(move |&i| self.get(i).live)
    }

    /// Index entries (for the invariant checks in tests).
    #[cfg(test)]
    pub fn index_len(&self) -> usize {
        self.buckets.iter().filter(|&&b| b != 0).count()
    }

    /// Heap bytes held by the table (slab chunks + index), for `show` and the benchmark.
    pub fn heap_bytes(&self) -> usize {
        self.chunks.len() * CHUNK * std::mem::size_of::<Entry>()
            + self.chunks.capacity() * std::mem::size_of::<Box<[Entry]>>()
            + self.buckets.capacity() * 8
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
        {
            let e = t.get_mut(i);
            e.armed = u32::try_from(tick).unwrap_or(u32::MAX - 1);
            e.prev = NIL;
            e.next = head;
        }
        if head != NIL {
            t.get_mut(head).prev = i;
        }
        self.heads[s] = i;
        self.bitmap[s / 64] |= 1 << (s % 64);
    }

    pub fn unlink(&mut self, t: &mut Table, i: u32) {
        let (prev, next, armed) = {
            let e = t.get(i);
            (e.prev, e.next, e.armed)
        };
        if armed == NIL {
            return;
        }
        let s = (armed as usize) % WHEEL_SLOTS;
        if prev == NIL {
            self.heads[s] = next;
            if next == NIL {
                self.bitmap[s / 64] &= !(1 << (s % 64));
            }
        } else {
            t.get_mut(prev).next = next;
        }
        if next != NIL {
            t.get_mut(next).prev = prev;
        }
        let e = t.get_mut(i);
        e.prev = NIL;
        e.next = NIL;
        e.armed = NIL;
    }

    /// Detaches and returns the list of slot `s` (its members keep stale links; the caller
    /// walks `next` first and re-arms or frees every member).
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
                i = t.get(i).next;
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
