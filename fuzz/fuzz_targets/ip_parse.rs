//! The IPv4/TCP/UDP/ICMP views and the packet rewrites on the data path must survive arbitrary
//! input: no panic, and rewrites keep a valid checksum valid.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;
use wire::ip::{build_dest_unreachable, proto, IcmpPacket, Ipv4Packet, TcpPacket, UdpPacket};

fuzz_target!(|data: &[u8]| {
    let _ = esp::Flow::from_ipv4(data);
    let mut owned = data.to_vec();
    let Ok(mut ip) = Ipv4Packet::new_checked(&mut owned[..]) else { return };
    let (src, dst) = (ip.src(), ip.dst());
    let _ = (ip.ttl(), ip.dont_frag(), ip.frag_offset(), ip.options(), ip.ident());
    let header_ok = ip.verify_checksum();
    if ip.decrement_ttl() && header_ok {
        assert!(ip.verify_checksum(), "TTL update broke the header checksum");
    }
    ip.set_dont_frag(true);
    if header_ok {
        assert!(ip.verify_checksum(), "DF update broke the header checksum");
    }
    let protocol = ip.protocol();
    let payload = ip.payload_mut();
    match protocol {
        proto::TCP => {
            if let Ok(mut t) = TcpPacket::new_checked(&mut payload[..]) {
                let before = t.verify_checksum(src, dst);
                let _ = (t.mss(), t.seq(), t.ack(), t.flags(), t.payload());
                if t.clamp_mss(1200).is_some() && before {
                    assert!(t.verify_checksum(src, dst), "MSS clamp broke the TCP checksum");
                }
            }
        }
        proto::UDP => {
            if let Ok(u) = UdpPacket::new_checked(&payload[..]) {
                let _ = (u.payload(), u.verify_checksum(src, dst));
            }
        }
        proto::ICMP => {
            if let Ok(i) = IcmpPacket::new_checked(&payload[..]) {
                let _ = (i.data(), i.verify_checksum(), i.is_error(), i.next_hop_mtu());
            }
        }
        _ => {}
    }
    let mut out = [0u8; 600];
    if let Some(n) = build_dest_unreachable(data, 4, 1400, Ipv4Addr::new(10, 0, 0, 1), &mut out) {
        let reply = Ipv4Packet::new_checked(&out[..n]).expect("we built a valid packet");
        assert!(reply.verify_checksum());
        let icmp = IcmpPacket::new_checked(reply.payload()).expect("ICMP header present");
        assert!(icmp.verify_checksum());
    }
});
