//! A small SA database with its security policy (SPD) for the daemon and the simulator.
//!
//! Tunnels are the stable unit (flow state and routing are keyed to them, not to SAs, because
//! rekeys replace SAs underneath — shared/reference/ipsec-peer.md §2). Each tunnel has
//! selectors, at most one current outbound SA and any number of inbound SAs (the current one
//! plus old ones kept alive during a rekey handover). Outbound selection is a linear scan, which
//! is the right structure for the handful of LAN-to-LAN tunnels a head-end has; nothing on the
//! per-packet paths allocates.
//!
//! Rekey handover (RFC 7296 §2.8 with the make-before-break order from the reference):
//! [`Sad::install_inbound`] for the new SA, then [`Sad::switch_outbound`], and later — the
//! daemon picks the delay — [`Sad::remove_inbound`] for the old one.

use crate::sa::{InboundCounters, InboundSa, Opened, OutboundSa, NEXT_HEADER_IPV4, NEXT_HEADER_NONE};
use crate::{Encap, EspError};
use policy::{Encryption, Integrity, TrafficSelector};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use wire::ip::{proto, Ipv4Packet};

/// Index of a tunnel in a [`Sad`]; stays valid until that tunnel is removed.
pub type TunnelId = usize;

/// The fields traffic selectors look at. `ports` is `None` when the packet has no ports
/// (non-TCP/UDP, or a non-first fragment: RFC 4301 §4.4.1.3 "OPAQUE").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub ports: Option<(u16, u16)>,
}

impl Flow {
    /// Extracts the flow of an IPv4 packet; `None` if it is not a well-formed IPv4 packet.
    pub fn from_ipv4(packet: &[u8]) -> Option<Flow> {
        let ip = Ipv4Packet::new_checked(packet).ok()?;
        let protocol = ip.protocol();
        let ports = match protocol {
            proto::TCP | proto::UDP if ip.frag_offset() == 0 => {
                let p = ip.payload();
                (p.len() >= 4).then(|| (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]])))
            }
            _ => None,
        };
        Some(Flow { src: ip.src(), dst: ip.dst(), protocol, ports })
    }

    /// The same flow seen from the other direction.
    pub fn reversed(&self) -> Flow {
        Flow { src: self.dst, dst: self.src, protocol: self.protocol, ports: self.ports.map(|(a, b)| (b, a)) }
    }
}

fn ts_covers(ts: &TrafficSelector, addr: Ipv4Addr, protocol: u8, port: Option<u16>) -> bool {
    if !ts.contains_addr(addr) || (ts.protocol != 0 && ts.protocol != protocol) {
        return false;
    }
    let any_port = ts.start_port == 0 && ts.end_port == u16::MAX;
    match port {
        _ if any_port => true,
        Some(p) => ts.start_port <= p && p <= ts.end_port,
        // A port-specific selector cannot match a packet whose ports are unknown.
        None => false,
    }
}

/// True if `flow` (src on the local side) is covered by (local, remote) selectors.
pub fn selectors_cover(local: &[TrafficSelector], remote: &[TrafficSelector], flow: &Flow) -> bool {
    let (sp, dp) = match flow.ports {
        Some((s, d)) => (Some(s), Some(d)),
        None => (None, None),
    };
    local.iter().any(|t| ts_covers(t, flow.src, flow.protocol, sp))
        && remote.iter().any(|t| ts_covers(t, flow.dst, flow.protocol, dp))
}

/// Outcome of an outbound policy lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selected {
    /// Protected by this tunnel, and it has an outbound SA.
    Sa(TunnelId),
    /// Protected by this tunnel, but no SA is up: drop (never send in clear) and ask IKE.
    NoSa(TunnelId),
}

struct Tunnel {
    name: String,
    local_ts: Vec<TrafficSelector>,
    remote_ts: Vec<TrafficSelector>,
    outbound: Option<Outbound>,
}

struct Outbound {
    sa: OutboundSa,
    encap: Encap,
    peer: IpAddr,
}

struct InboundEntry {
    tunnel: TunnelId,
    sa: InboundSa,
}

/// A snapshot of one SA for `show crypto ipsec sa`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaStats {
    pub tunnel: String,
    pub spi: u32,
    pub inbound: bool,
    pub encryption: Encryption,
    pub integrity: Integrity,
    pub esn: bool,
    pub packets: u64,
    pub bytes: u64,
    /// Inbound only (zero for outbound).
    pub replay_drops: u64,
    pub auth_failures: u64,
    pub other_errors: u64,
    /// Outbound: last sequence number sent; inbound: highest accepted.
    pub seq: u64,
}

#[derive(Default)]
pub struct Sad {
    tunnels: Vec<Option<Tunnel>>,
    inbound: HashMap<u32, InboundEntry>,
}

impl std::fmt::Debug for Sad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sad")
            .field("tunnels", &self.tunnels.iter().flatten().map(|t| &t.name).collect::<Vec<_>>())
            .field("inbound_spis", &self.inbound.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Sad {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tunnel (or replaces the selectors of an existing one with that name) and
    /// returns its id. Selectors are the ones traffic must match to be protected.
    pub fn add_tunnel(&mut self, name: &str, local_ts: Vec<TrafficSelector>, remote_ts: Vec<TrafficSelector>) -> TunnelId {
        if let Some(id) = self.tunnel_id(name) {
            self.set_selectors(id, local_ts, remote_ts);
            return id;
        }
        let t = Tunnel { name: name.to_string(), local_ts, remote_ts, outbound: None };
        if let Some(free) = self.tunnels.iter().position(Option::is_none) {
            self.tunnels[free] = Some(t);
            free
        } else {
            self.tunnels.push(Some(t));
            self.tunnels.len() - 1
        }
    }

    pub fn tunnel_id(&self, name: &str) -> Option<TunnelId> {
        self.tunnels.iter().position(|t| t.as_ref().is_some_and(|t| t.name == name))
    }

    pub fn tunnel_name(&self, id: TunnelId) -> Option<&str> {
        self.tunnel(id).map(|t| t.name.as_str())
    }

    /// Replaces a tunnel's selectors (e.g. after IKE narrowed them, RFC 7296 §2.9).
    pub fn set_selectors(&mut self, id: TunnelId, local_ts: Vec<TrafficSelector>, remote_ts: Vec<TrafficSelector>) {
        if let Some(t) = self.tunnel_mut(id) {
            t.local_ts = local_ts;
            t.remote_ts = remote_ts;
        }
    }

    /// Removes a tunnel with all its SAs.
    pub fn remove_tunnel(&mut self, id: TunnelId) {
        if let Some(slot) = self.tunnels.get_mut(id) {
            *slot = None;
        }
        self.inbound.retain(|_, e| e.tunnel != id);
    }

    /// Installs an inbound SA for a tunnel. Fails if the SPI is taken: SPIs we allocate must be
    /// unique (RFC 4301 §4.1), so a clash is a bug upstream.
    pub fn install_inbound(&mut self, id: TunnelId, sa: InboundSa) -> Result<(), EspError> {
        if self.tunnel(id).is_none() {
            return Err(EspError::InvalidParams("unknown tunnel"));
        }
        if self.inbound.contains_key(&sa.spi()) {
            return Err(EspError::InvalidParams("inbound SPI already installed"));
        }
        self.inbound.insert(sa.spi(), InboundEntry { tunnel: id, sa });
        Ok(())
    }

    /// Makes `sa` the tunnel's outbound SA and returns the one it replaces.
    pub fn switch_outbound(&mut self, id: TunnelId, sa: OutboundSa, encap: Encap, peer: IpAddr) -> Option<OutboundSa> {
        let t = self.tunnel_mut(id)?;
        t.outbound.replace(Outbound { sa, encap, peer }).map(|o| o.sa)
    }

    /// Removes the tunnel's outbound SA only if it is still `spi`: a delete of an SA that a
    /// rekey already replaced must not take down its successor.
    pub fn remove_outbound(&mut self, id: TunnelId, spi: u32) -> Option<OutboundSa> {
        let t = self.tunnel_mut(id)?;
        if t.outbound.as_ref().is_some_and(|o| o.sa.spi() == spi) {
            t.outbound.take().map(|o| o.sa)
        } else {
            None
        }
    }

    pub fn remove_inbound(&mut self, spi: u32) -> Option<InboundSa> {
        self.inbound.remove(&spi).map(|e| e.sa)
    }

    pub fn outbound(&self, id: TunnelId) -> Option<&OutboundSa> {
        self.tunnel(id)?.outbound.as_ref().map(|o| &o.sa)
    }

    pub fn inbound(&self, spi: u32) -> Option<&InboundSa> {
        self.inbound.get(&spi).map(|e| &e.sa)
    }

    /// Outbound policy lookup: the first tunnel (in insertion order) whose selectors cover
    /// the flow. `None` means unprotected traffic.
    pub fn select(&self, flow: &Flow) -> Option<Selected> {
        self.tunnels.iter().enumerate().find_map(|(id, t)| {
            let t = t.as_ref()?;
            selectors_cover(&t.local_ts, &t.remote_ts, flow)
                .then(|| if t.outbound.is_some() { Selected::Sa(id) } else { Selected::NoSa(id) })
        })
    }

    /// Seals an inner IPv4 packet with the tunnel's outbound SA into `out`. Returns the ESP
    /// length and where to send it.
    pub fn seal(&mut self, id: TunnelId, inner: &[u8], out: &mut [u8]) -> Result<(usize, Encap, IpAddr), EspError> {
        let o = self.tunnel_mut(id).and_then(|t| t.outbound.as_mut()).ok_or(EspError::NoOutboundSa)?;
        let n = o.sa.seal(inner, NEXT_HEADER_IPV4, out)?;
        Ok((n, o.encap, o.peer))
    }

    /// Opens an ESP packet received from the network: finds the SA by SPI, opens it, and
    /// enforces the inbound policy check of RFC 4301 §5.2 (the inner packet's source must be
    /// in the peer's selectors and its destination in ours). Dummy packets (next header 59)
    /// are returned as they are for the caller to discard.
    pub fn open<'a>(&mut self, esp_packet: &'a mut [u8]) -> Result<(TunnelId, Opened<'a>), EspError> {
        let spi = crate::esp_spi(esp_packet).ok_or(EspError::Truncated)?;
        let entry = self.inbound.get_mut(&spi).ok_or(EspError::UnknownSpi(spi))?;
        let id = entry.tunnel;
        let opened = entry.sa.open(esp_packet)?;
        if opened.next_header == NEXT_HEADER_NONE {
            return Ok((id, opened));
        }
        let t = self.tunnels.get(id).and_then(Option::as_ref).ok_or(EspError::PolicyMismatch)?;
        let ok = opened.next_header == NEXT_HEADER_IPV4
            && Flow::from_ipv4(opened.inner)
                .is_some_and(|f| selectors_cover(&t.remote_ts, &t.local_ts, &f));
        if !ok {
            return Err(EspError::PolicyMismatch);
        }
        Ok((id, opened))
    }

    /// Per-SA counters of every SA, inbound and outbound, for `show crypto ipsec sa`.
    pub fn sa_stats(&self) -> Vec<SaStats> {
        let mut out = Vec::new();
        for t in self.tunnels.iter().flatten() {
            if let Some(o) = &t.outbound {
                out.push(SaStats {
                    tunnel: t.name.clone(),
                    spi: o.sa.spi(),
                    inbound: false,
                    encryption: o.sa.encryption(),
                    integrity: o.sa.integrity(),
                    esn: o.sa.esn(),
                    packets: o.sa.packets(),
                    bytes: o.sa.bytes(),
                    replay_drops: 0,
                    auth_failures: 0,
                    other_errors: 0,
                    seq: o.sa.seq(),
                });
            }
        }
        let mut ins: Vec<_> = self.inbound.values().collect();
        ins.sort_by_key(|e| (e.tunnel, e.sa.spi()));
        for e in ins {
            let c: InboundCounters = e.sa.counters();
            out.push(SaStats {
                tunnel: self.tunnel_name(e.tunnel).unwrap_or("").to_string(),
                spi: e.sa.spi(),
                inbound: true,
                encryption: e.sa.encryption(),
                integrity: e.sa.integrity(),
                esn: e.sa.esn(),
                packets: c.packets,
                bytes: c.bytes,
                replay_drops: c.replay_drops,
                auth_failures: c.auth_failures,
                other_errors: c.pad_errors + c.malformed,
                seq: e.sa.highest_seq(),
            });
        }
        out
    }

    fn tunnel(&self, id: TunnelId) -> Option<&Tunnel> {
        self.tunnels.get(id).and_then(Option::as_ref)
    }

    fn tunnel_mut(&mut self, id: TunnelId) -> Option<&mut Tunnel> {
        self.tunnels.get_mut(id).and_then(Option::as_mut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sa::tests::params;
    use crate::SaParams;
    use policy::Ipv4Net;
    use wire::ip::Ipv4Repr;

    fn ts(s: &str, len: u8) -> TrafficSelector {
        TrafficSelector::from_net(Ipv4Net::new(s.parse().unwrap(), len), None)
    }

    fn udp_packet(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 28 + 4];
        Ipv4Repr { src: src.parse().unwrap(), dst: dst.parse().unwrap(), protocol: proto::UDP, ttl: 64, ident: 1, dont_frag: false, dscp_ecn: 0, payload_len: 12 }
            .emit(&mut p)
            .unwrap();
        wire::ip::emit_udp_header(&mut p[20..], sport, dport, 4).unwrap();
        p
    }

    fn gcm(spi: u32) -> SaParams {
        params(Encryption::AesGcm256, Integrity::Null, false, spi)
    }

    /// Two gateways A (10.1.0.0/24) and B (10.2.0.0/24): A's outbound SA is B's inbound.
    fn gateways() -> (Sad, TunnelId, Sad, TunnelId) {
        let mut a = Sad::new();
        let ta = a.add_tunnel("MAP:10", vec![ts("10.1.0.0", 24)], vec![ts("10.2.0.0", 24)]);
        let mut b = Sad::new();
        let tb = b.add_tunnel("MAP:10", vec![ts("10.2.0.0", 24)], vec![ts("10.1.0.0", 24)]);
        (a, ta, b, tb)
    }

    fn peer() -> IpAddr {
        "192.0.2.2".parse().unwrap()
    }

    #[test]
    fn select_and_seal_open_through_two_sads() {
        let (mut a, ta, mut b, tb) = gateways();
        let pkt = udp_packet("10.1.0.5", "10.2.0.9", 5000, 53);
        let flow = Flow::from_ipv4(&pkt).unwrap();
        assert_eq!(a.select(&flow), Some(Selected::NoSa(ta)));
        assert_eq!(a.select(&Flow::from_ipv4(&udp_packet("10.1.0.5", "10.3.0.9", 1, 2)).unwrap()), None);
        assert_eq!(a.seal(ta, &pkt, &mut [0u8; 128]), Err(EspError::NoOutboundSa));

        b.install_inbound(tb, InboundSa::new(&gcm(0x100)).unwrap()).unwrap();
        a.switch_outbound(ta, OutboundSa::new(&gcm(0x100)).unwrap(), Encap::Native, peer());
        assert_eq!(a.select(&flow), Some(Selected::Sa(ta)));
        let mut buf = [0u8; 256];
        let (n, encap, to) = a.seal(ta, &pkt, &mut buf).unwrap();
        assert_eq!((encap, to), (Encap::Native, peer()));
        let (id, opened) = b.open(&mut buf[..n]).unwrap();
        assert_eq!(id, tb);
        assert_eq!(opened.inner, &pkt[..]);

        // unknown SPI
        let mut junk = [0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1, 0, 0];
        assert_eq!(b.open(&mut junk), Err(EspError::UnknownSpi(0xdeadbeef)));
        assert_eq!(b.open(&mut [1, 2]), Err(EspError::Truncated));

        let stats = b.sa_stats();
        assert_eq!(stats.len(), 1);
        assert!(stats[0].inbound && stats[0].packets == 1 && stats[0].bytes == pkt.len() as u64);
        let stats = a.sa_stats();
        assert!(!stats[0].inbound && stats[0].packets == 1 && stats[0].tunnel == "MAP:10");
    }

    #[test]
    fn inbound_policy_check() {
        let (mut a, ta, mut b, tb) = gateways();
        b.install_inbound(tb, InboundSa::new(&gcm(0x200)).unwrap()).unwrap();
        a.switch_outbound(ta, OutboundSa::new(&gcm(0x200)).unwrap(), Encap::Native, peer());
        // authentic ESP, but the inner source is outside the peer's selectors (spoofing
        // through the tunnel): RFC 4301 §5.2 says drop
        let spoofed = udp_packet("10.9.9.9", "10.2.0.9", 1, 2);
        let mut buf = [0u8; 256];
        let (n, ..) = a.seal(ta, &spoofed, &mut buf).unwrap();
        assert_eq!(b.open(&mut buf[..n]), Err(EspError::PolicyMismatch));
        // garbage inner
        let (n, ..) = a.seal(ta, &[1, 2, 3], &mut buf).unwrap();
        assert_eq!(b.open(&mut buf[..n]), Err(EspError::PolicyMismatch));
    }

    /// install new inbound -> switch outbound -> remove old inbound: nothing in flight is lost.
    #[test]
    fn rekey_handover_loses_nothing() {
        let (mut a, ta, mut b, tb) = gateways();
        b.install_inbound(tb, InboundSa::new(&gcm(0x300)).unwrap()).unwrap();
        a.switch_outbound(ta, OutboundSa::new(&gcm(0x300)).unwrap(), Encap::Udp { local_port: 4500, remote_port: 4500 }, peer());
        let pkt = udp_packet("10.1.0.5", "10.2.0.9", 5000, 53);
        let mut in_flight = Vec::new();
        for _ in 0..3 {
            let mut buf = vec![0u8; 256];
            let (n, ..) = a.seal(ta, &pkt, &mut buf).unwrap();
            buf.truncate(n);
            in_flight.push(buf);
        }
        // rekey: new inbound first
        b.install_inbound(tb, InboundSa::new(&gcm(0x301)).unwrap()).unwrap();
        assert!(b.install_inbound(tb, InboundSa::new(&gcm(0x301)).unwrap()).is_err(), "duplicate SPI");
        let old = a.switch_outbound(ta, OutboundSa::new(&gcm(0x301)).unwrap(), Encap::Native, peer()).unwrap();
        assert_eq!(old.spi(), 0x300);
        // a late delete for the old SA must not remove the new outbound SA
        assert!(a.remove_outbound(ta, 0x300).is_none());
        assert_eq!(a.outbound(ta).unwrap().spi(), 0x301);
        let mut buf = [0u8; 256];
        let (n, ..) = a.seal(ta, &pkt, &mut buf).unwrap();
        assert_eq!(crate::esp_spi(&buf), Some(0x301));
        assert!(b.open(&mut buf[..n]).is_ok());
        // old packets still arrive on the old inbound SA
        for mut p in in_flight.clone() {
            assert!(b.open(&mut p).is_ok());
        }
        // later: old inbound removed
        assert!(b.remove_inbound(0x300).is_some());
        let mut p = in_flight[0].clone();
        assert_eq!(b.open(&mut p), Err(EspError::UnknownSpi(0x300)));
        // removing the current outbound works with the right SPI
        assert_eq!(a.remove_outbound(ta, 0x301).map(|s| s.spi()), Some(0x301));
        assert_eq!(a.select(&Flow::from_ipv4(&pkt).unwrap()), Some(Selected::NoSa(ta)));
    }

    #[test]
    fn selectors_with_ports_and_protocols() {
        let mut dns = ts("10.2.0.0", 24);
        dns.protocol = proto::UDP;
        dns.start_port = 53;
        dns.end_port = 53;
        let mut s = Sad::new();
        let t_dns = s.add_tunnel("DNS", vec![ts("10.1.0.0", 24)], vec![dns]);
        let t_all = s.add_tunnel("ALL", vec![ts("10.1.0.0", 16)], vec![ts("10.2.0.0", 16)]);
        let f = |src: &str, dst: &str, sp, dp| Flow::from_ipv4(&udp_packet(src, dst, sp, dp)).unwrap();
        assert_eq!(s.select(&f("10.1.0.5", "10.2.0.9", 999, 53)), Some(Selected::NoSa(t_dns)));
        assert_eq!(s.select(&f("10.1.0.5", "10.2.0.9", 999, 54)), Some(Selected::NoSa(t_all)));
        assert_eq!(s.select(&f("10.1.7.5", "10.2.0.9", 999, 53)), Some(Selected::NoSa(t_all)));
        // a non-first fragment has no ports: only port-agnostic selectors match
        let mut frag = udp_packet("10.1.0.5", "10.2.0.9", 999, 53);
        frag[6..8].copy_from_slice(&0x0010u16.to_be_bytes());
        let ff = Flow::from_ipv4(&frag).unwrap();
        assert_eq!(ff.ports, None);
        assert_eq!(s.select(&ff), Some(Selected::NoSa(t_all)));
        assert_eq!(ff.reversed().src, ff.dst);
        // removal frees the slot and drops its SAs
        s.install_inbound(t_dns, InboundSa::new(&gcm(0x400)).unwrap()).unwrap();
        s.remove_tunnel(t_dns);
        assert!(s.inbound(0x400).is_none());
        assert_eq!(s.tunnel_id("DNS"), None);
        assert_eq!(s.add_tunnel("NEW", vec![], vec![]), t_dns);
        assert_eq!(s.add_tunnel("ALL", vec![], vec![]), t_all, "same name updates selectors");
    }
}
