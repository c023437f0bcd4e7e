//! Storage: a slab of small fixed-size entries in fixed-size chunks, indexed by a raw hashbrown
//! table of `u32` slab indices, plus a hashed timer wheel threaded through the entries.
//!
//! Why this shape: an entry is 72 bytes and the index costs 5 bytes per bucket (one control byte
//! plus a `u32`) at a load factor of at most 7/8, so a flow costs about 80-85 bytes including the
//! table, against 128 targeted (DESIGN.md §Habits 6). Chunks of 16384 entries bound the slack of
//! slab growth to one chunk instead of the 2x of a doubling `Vec`, and entries never move, so a
//! slab index is a stable handle. The wheel's links live inside the entries: arming a timer never
//! allocates.

use hashbrown::HashTable;

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

pub(crate) struct Table {
    index: HashTable<u32>,
    chunks: Vec<Box<[Entry]>>,
    free: u32,
    /// Slots handed out at least once (the high-water mark of the slab).
    hi: u32,
    len: usize,
    seed: [u64; 4],
}

fn slot(chunks: &[Box<[Entry]>], i: u32) -> &Entry {
    &chunks[(i >> CHUNK_BITS) as usize][(i as usize) & (CHUNK - 1)]
}

impl Table {
    pub fn new(seed: u64) -> Self {
        Self { index: HashTable::new(), chunks: Vec::new(), free: NIL, hi: 0, len: 0, seed: expand_seed(seed) }
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

    pub fn find(&self, k: &Key) -> Option<u32> {
        let h = hash_key(&self.seed, k);
        let chunks = &self.chunks;
        self.index.find(h, |&i| slot(chunks, i).key == *k).copied()
    }

    /// Stores a new live entry whose key is not present (the caller looked it up first).
    pub fn insert(&mut self, mut e: Entry) -> u32 {
        e.live = true;
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
        let h = hash_key(&self.seed, &e.key);
        let (chunks, seed) = (&self.chunks, &self.seed);
        self.index.insert_unique(h, i, |&j| hash_key(seed, &slot(chunks, j).key));
        self.len += 1;
        i
    }

    /// Removes a live entry (already unlinked from the wheel) and returns its last state.
    pub fn remove(&mut self, i: u32) -> Entry {
        let e = *self.get(i);
        debug_assert!(e.live);
        let h = hash_key(&self.seed, &e.key);
        if let Ok(occ) = self.index.find_entry(h, |&j| j == i) {
            occ.remove();
        }
        let free = self.free;
        let s = self.get_mut(i);
        *s = Entry::FREE;
        s.next = free;
        self.free = i;
        self.len -= 1;
        e
    }

    /// Every live slab index, in slab order.
    pub fn live(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.hi).filter(move |&i| self.get(i).live)
    }

    /// Index entries (for the invariant checks in tests).
    #[cfg(test)]
    pub fn index_len(&self) -> usize {
        self.index.len()
    }

    /// Heap bytes held by the table (slab chunks + index), for `show` and the benchmark.
    pub fn heap_bytes(&self) -> usize {
        self.chunks.len() * CHUNK * std::mem::size_of::<Entry>()
            + self.chunks.capacity() * std::mem::size_of::<Box<[Entry]>>()
            + self.index.allocation_size()
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

    /// The first tick after the cursor whose slot is non-empty, within one revolution.
    pub fn next_busy_tick(&self) -> Option<u64> {
        let start = ((self.cursor + 1) as usize) % WHEEL_SLOTS;
        for step in 0..WHEEL_SLOTS {
            let s = (start + step) % WHEEL_SLOTS;
            let word = self.bitmap[s / 64];
            if word == 0 {
                // Skip the rest of this empty word quickly.
                continue;
            }
            if word & (1 << (s % 64)) != 0 {
                return Some(self.cursor + 1 + step as u64);
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
