//! Traffic selectors: wire <-> policy, and responder narrowing (RFC 7296 §2.9).

use policy::TrafficSelector;
use std::net::Ipv4Addr;
use wire::ike::{Selector, TsType};

/// Converts received selectors; IPv6 and unknown types are skipped (we only protect IPv4).
pub(crate) fn from_wire(sels: &[Selector<'_>]) -> Vec<TrafficSelector> {
    sels.iter()
        .filter(|s| s.ty == TsType::Ipv4AddrRange)
        .filter_map(|s| {
            let a: [u8; 4] = s.start_addr.try_into().ok()?;
            let b: [u8; 4] = s.end_addr.try_into().ok()?;
            Some(TrafficSelector {
                protocol: s.ip_protocol,
                start_port: s.start_port,
                end_port: s.end_port,
                start_addr: Ipv4Addr::from(a),
                end_addr: Ipv4Addr::from(b),
            })
        })
        .collect()
}

/// Address bytes for emitting: selectors are stored in `buf` so the wire views can borrow them.
pub(crate) fn addr_bytes(ts: &[TrafficSelector]) -> Vec<[u8; 8]> {
    ts.iter()
        .map(|t| {
            let mut b = [0u8; 8];
            b[..4].copy_from_slice(&t.start_addr.octets());
            b[4..].copy_from_slice(&t.end_addr.octets());
            b
        })
        .collect()
}

pub(crate) fn to_wire<'a>(ts: &[TrafficSelector], bytes: &'a [[u8; 8]]) -> Vec<Selector<'a>> {
    ts.iter()
        .zip(bytes)
        .map(|(t, b)| Selector {
            ty: TsType::Ipv4AddrRange,
            ip_protocol: t.protocol,
            start_port: t.start_port,
            end_port: t.end_port,
            start_addr: &b[..4],
            end_addr: &b[4..],
        })
        .collect()
}

/// The intersection of two selectors, if not empty. Protocol 0 means "any".
pub(crate) fn intersect(a: &TrafficSelector, b: &TrafficSelector) -> Option<TrafficSelector> {
    let protocol = match (a.protocol, b.protocol) {
        (0, p) | (p, 0) => p,
        (x, y) if x == y => x,
        _ => return None,
    };
    let start_port = a.start_port.max(b.start_port);
    let end_port = a.end_port.min(b.end_port);
    let start_addr = a.start_addr.max(b.start_addr);
    let end_addr = a.end_addr.min(b.end_addr);
    (start_port <= end_port && start_addr <= end_addr).then_some(TrafficSelector { protocol, start_port, end_port, start_addr, end_addr })
}

/// Narrows the peer's proposed selectors to our policy: for every (local, remote) pair of the
/// policy, intersect. Returns (narrowed TSi, narrowed TSr) from the initiator's point of view, or
/// None when nothing overlaps (TS_UNACCEPTABLE).
pub(crate) fn narrow(
    peer_tsi: &[TrafficSelector],
    peer_tsr: &[TrafficSelector],
    our_local: &[TrafficSelector],
    our_remote: &[TrafficSelector],
) -> Option<(Vec<TrafficSelector>, Vec<TrafficSelector>)> {
    let mut tsi = Vec::new();
    let mut tsr = Vec::new();
    for (l, r) in our_local.iter().zip(our_remote) {
        let i: Vec<_> = peer_tsi.iter().filter_map(|p| intersect(p, r)).collect();
        let rr: Vec<_> = peer_tsr.iter().filter_map(|p| intersect(p, l)).collect();
        if i.is_empty() || rr.is_empty() {
            continue;
        }
        for x in i {
            if !tsi.contains(&x) {
                tsi.push(x);
            }
        }
        for x in rr {
            if !tsr.contains(&x) {
                tsr.push(x);
            }
        }
    }
    (!tsi.is_empty() && !tsr.is_empty()).then_some((tsi, tsr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::Ipv4Net;

    fn net(s: &str, len: u8) -> TrafficSelector {
        TrafficSelector::from_net(Ipv4Net::new(s.parse().unwrap(), len), None)
    }

    #[test]
    fn narrows_wider_proposal() {
        let (i, r) = narrow(&[net("10.2.0.0", 16)], &[net("0.0.0.0", 0)], &[net("10.1.0.0", 24)], &[net("10.2.0.0", 24)]).unwrap();
        assert_eq!(i, vec![net("10.2.0.0", 24)]);
        assert_eq!(r, vec![net("10.1.0.0", 24)]);
    }

    #[test]
    fn disjoint_is_unacceptable() {
        assert!(narrow(&[net("10.9.0.0", 24)], &[net("10.1.0.0", 24)], &[net("10.1.0.0", 24)], &[net("10.2.0.0", 24)]).is_none());
    }

    #[test]
    fn protocol_and_ports() {
        let mut a = net("10.0.0.0", 8);
        a.protocol = 6;
        a.start_port = 80;
        a.end_port = 80;
        let b = net("10.1.0.0", 24);
        let x = intersect(&a, &b).unwrap();
        assert_eq!((x.protocol, x.start_port, x.end_port), (6, 80, 80));
        let mut c = b;
        c.protocol = 17;
        assert!(intersect(&a, &c).is_none());
    }
}
