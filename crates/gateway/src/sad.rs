//! The SA database shared by the control task (writer) and the data-path threads (readers).
//!
//! Readers keep an `Arc<Sad>` snapshot and re-load it only when the generation counter moves, so
//! the per-packet cost is one relaxed atomic load; each SA's cipher state sits behind its own
//! mutex, which in practice is uncontended (one thread per direction). The writer builds a new
//! snapshot (cloning `Arc`s, not SAs) and publishes it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use policy::TrafficSelector;

/// Per-direction counters read by `show crypto ipsec sa`.
#[derive(Debug, Default)]
pub struct Counters {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// Outbound: send errors. Inbound: packets failing the inner-selector check or padding.
    pub errors: AtomicU64,
    pub replay: AtomicU64,
    pub auth: AtomicU64,
}

impl Counters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    pub fn add(c: &AtomicU64, v: u64) {
        c.fetch_add(v, Ordering::Relaxed);
    }
}

/// An inbound CHILD_SA, found by SPI.
pub struct InboundEntry {
    pub spi: u32,
    pub sa: Mutex<esp::InboundSa>,
    pub tunnel: Arc<str>,
    /// The tunnel as the connection table knows it (interned once, so the data path never
    /// hashes names).
    pub flow_tunnel: flow::TunnelId,
    pub ifcs: flow::IfcPair,
    pub peer: IpAddr,
    /// RFC 4301 §5.2: a decrypted packet must match the SA's selectors (source in the peer's
    /// networks, destination in ours) or it is dropped.
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    pub counters: Counters,
}

/// Where an outbound SA's packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// RFC 3948 ESP-in-UDP through outside socket set `outside`.
    Udp { outside: usize, to: SocketAddr },
    /// IP protocol 50 through the raw socket of outside socket set `outside`.
    Native { outside: usize, to: IpAddr },
}

pub struct OutboundEntry {
    pub spi: u32,
    pub sa: Mutex<esp::OutboundSa>,
    /// Behind a lock because a NAT rebinding (ike `EncapChange`) moves a live SA to the peer's
    /// new address or port without resetting its sequence numbers.
    pub dest: RwLock<Dest>,
    pub counters: Counters,
}

impl OutboundEntry {
    pub fn dest(&self) -> Dest {
        *self.dest.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_dest(&self, dest: Dest) {
        *self.dest.write().unwrap_or_else(|p| p.into_inner()) = dest;
    }
}

/// A negotiated CHILD_SA usable for outbound traffic of a tunnel.
#[derive(Clone)]
pub struct ChildOut {
    pub spi_in: u32,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    pub out: Arc<OutboundEntry>,
}

/// One configured tunnel: its ACL selectors (what must be protected) and its live CHILD_SAs.
#[derive(Clone)]
pub struct SpdEntry {
    pub tunnel: Arc<str>,
    /// See [`InboundEntry::flow_tunnel`].
    pub flow_tunnel: flow::TunnelId,
    pub ifcs: flow::IfcPair,
    /// Source of the ICMP unreachables answering held segments (RFC 6069): the gateway's
    /// inside address within the protected networks, else its outside address.
    pub icmp_from: std::net::Ipv4Addr,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    /// Newest first.
    pub children: Vec<ChildOut>,
    /// Millisecond tick of the last acquire (initiate-on-traffic), for rate limiting.
    pub last_acquire: Arc<AtomicU64>,
}

#[derive(Clone, Default)]
pub struct Sad {
    pub inbound: HashMap<u32, Arc<InboundEntry>>,
    pub spd: Vec<SpdEntry>,
}

/// What the data path decides for an inner packet.
pub enum Lookup<'a> {
    /// Protected by tunnel `.0`, with an SA to use.
    Sa(&'a SpdEntry, &'a Arc<OutboundEntry>),
    /// Protected by tunnel `.0`, but no SA is up: drop, and ask IKE to bring it up.
    NoSa(&'a SpdEntry),
    /// Not covered by any tunnel: drop (it only reached the TUN through a stale route).
    Unprotected,
}

/// The 5-tuple fields selectors look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub src: std::net::Ipv4Addr,
    pub dst: std::net::Ipv4Addr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

pub fn ts_matches(ts: &TrafficSelector, addr: std::net::Ipv4Addr, proto: u8, port: u16) -> bool {
    ts.contains_addr(addr)
        && (ts.protocol == 0 || ts.protocol == proto)
        && (ts.start_port == 0 && ts.end_port == 65535 || (ts.start_port <= port && port <= ts.end_port))
}

pub fn flow_matches(local: &[TrafficSelector], remote: &[TrafficSelector], f: &Flow) -> bool {
    local.iter().any(|t| ts_matches(t, f.src, f.proto, f.sport)) && remote.iter().any(|t| ts_matches(t, f.dst, f.proto, f.dport))
}

impl Sad {
    /// Outbound policy lookup for a packet leaving through the TUN (src = our side).
    pub fn lookup_out(&self, f: &Flow) -> Lookup<'_> {
        match self.lookup_out_index(f) {
            None => Lookup::Unprotected,
            Some((e, c)) => {
                let entry = &self.spd[e];
                match c.and_then(|c| entry.children.get(c)) {
                    Some(c) => Lookup::Sa(entry, &c.out),
                    None => Lookup::NoSa(entry),
                }
            }
        }
    }

    /// The same decision as indices: (SPD entry, its child to use if an SA covers the flow).
    /// The data path keeps these per packet of a batch (small, `Copy`).
    pub fn lookup_out_index(&self, f: &Flow) -> Option<(usize, Option<usize>)> {
        let (i, e) = self.spd.iter().enumerate().find(|(_, e)| flow_matches(&e.local_ts, &e.remote_ts, f))?;
        Some((i, e.children.iter().position(|c| flow_matches(&c.local_ts, &c.remote_ts, f))))
    }
}

/// The published SAD.
pub struct SadCell {
    current: RwLock<Arc<Sad>>,
    generation: AtomicU64,
}

impl SadCell {
    pub fn new(sad: Sad) -> Self {
        Self { current: RwLock::new(Arc::new(sad)), generation: AtomicU64::new(0) }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn load(&self) -> Arc<Sad> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Copy-on-write update from the control task.
    pub fn update(&self, f: impl FnOnce(&mut Sad)) {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        let mut next = (**guard).clone();
        f(&mut next);
        *guard = Arc::new(next);
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// A reader's cached snapshot.
pub struct SadReader {
    cell: Arc<SadCell>,
    seen: u64,
    snap: Arc<Sad>,
}

impl SadReader {
    pub fn new(cell: Arc<SadCell>) -> Self {
        let seen = cell.generation();
        let snap = cell.load();
        Self { cell, seen, snap }
    }

    /// The current snapshot, refreshed if the writer published a newer one.
    pub fn get(&mut self) -> &Arc<Sad> {
        let g = self.cell.generation();
        if g != self.seen {
            self.seen = g;
            self.snap = self.cell.load();
        }
        &self.snap
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::Ipv4Net;

    fn ts(s: &str, len: u8) -> TrafficSelector {
        TrafficSelector::from_net(Ipv4Net::new(s.parse().unwrap(), len), None)
    }

    /// Flow-table ids for test entries.
    fn ids(name: &str) -> (flow::TunnelId, flow::IfcPair) {
        let mut e = flow::Engine::new(crate::clock::now(), flow::Config::default());
        let ifcs = flow::IfcPair { outside: e.interface("outside").unwrap(), inside: e.interface("inside").unwrap() };
        (e.tunnel(name).unwrap(), ifcs)
    }

    fn flow(src: &str, dst: &str) -> Flow {
        Flow { src: src.parse().unwrap(), dst: dst.parse().unwrap(), proto: 6, sport: 1000, dport: 80 }
    }

    #[test]
    fn spd_lookup_without_sa_asks_for_one() {
        let (flow_tunnel, ifcs) = ids("MAP:10");
        let sad = Sad {
            inbound: HashMap::new(),
            spd: vec![SpdEntry {
                tunnel: "MAP:10".into(),
                flow_tunnel,
                ifcs,
                icmp_from: "10.1.0.1".parse().unwrap(),
                local_ts: vec![ts("10.1.0.0", 24)],
                remote_ts: vec![ts("10.2.0.0", 24)],
                children: vec![],
                last_acquire: Arc::new(AtomicU64::new(0)),
            }],
        };
        assert!(matches!(sad.lookup_out(&flow("10.1.0.5", "10.2.0.9")), Lookup::NoSa(e) if &*e.tunnel == "MAP:10"));
        assert!(matches!(sad.lookup_out(&flow("10.1.0.5", "10.3.0.9")), Lookup::Unprotected));
        assert!(matches!(sad.lookup_out(&flow("10.9.0.5", "10.2.0.9")), Lookup::Unprotected));
    }

    #[test]
    fn selector_ports_and_protocols() {
        let mut t = ts("10.2.0.0", 24);
        t.protocol = 17;
        t.start_port = 53;
        t.end_port = 53;
        assert!(ts_matches(&t, "10.2.0.1".parse().unwrap(), 17, 53));
        assert!(!ts_matches(&t, "10.2.0.1".parse().unwrap(), 6, 53));
        assert!(!ts_matches(&t, "10.2.0.1".parse().unwrap(), 17, 54));
        assert!(ts_matches(&ts("10.2.0.0", 24), "10.2.0.255".parse().unwrap(), 1, 0));
    }

    #[test]
    fn reader_sees_updates() {
        let cell = Arc::new(SadCell::new(Sad::default()));
        let mut r = SadReader::new(cell.clone());
        assert!(r.get().spd.is_empty());
        let (flow_tunnel, ifcs) = ids("T");
        cell.update(|s| {
            s.spd.push(SpdEntry {
                tunnel: "T".into(),
                flow_tunnel,
                ifcs,
                icmp_from: "10.1.0.1".parse().unwrap(),
                local_ts: vec![],
                remote_ts: vec![],
                children: vec![],
                last_acquire: Arc::new(AtomicU64::new(0)),
            })
        });
        assert_eq!(r.get().spd.len(), 1);
    }
}
