//! Unit and property tests of the engine (white-box: they check the table's invariants).
// The rig stands in for the daemon: it reads the clock once for an origin.
#![allow(clippy::disallowed_methods, clippy::field_reassign_with_default)]

use super::*;
use crate::text::ConnView;
use proptest::prelude::*;
use wire::ip::{checksum, Ipv4Repr, IPV4_HEADER_LEN};

pub(crate) const SYN: u8 = tcp_flags::SYN;
pub(crate) const ACK: u8 = tcp_flags::ACK;
pub(crate) const FIN: u8 = tcp_flags::FIN;
pub(crate) const RST: u8 = tcp_flags::RST;
pub(crate) const PSH: u8 = tcp_flags::PSH;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn ipv4(src: &str, dst: &str, protocol: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; IPV4_HEADER_LEN + l4.len()];
    Ipv4Repr { src: ip(src), dst: ip(dst), protocol, ttl: 64, ident: 1, dont_frag: true, dscp_ecn: 0, payload_len: l4.len() }
        .emit(&mut p)
        .unwrap();
    p[IPV4_HEADER_LEN..].copy_from_slice(l4);
    p
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn tcp(src: &str, sp: u16, dst: &str, dp: u16, flags: u8, seq: u32, ack: u32, data: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20 + data.len()];
    t[0..2].copy_from_slice(&sp.to_be_bytes());
    t[2..4].copy_from_slice(&dp.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    t[20..].copy_from_slice(data);
    let mut p = ipv4(src, dst, proto::TCP, &t);
    let mut v = TcpPacket::new_checked(&mut p[IPV4_HEADER_LEN..]).unwrap();
    v.fill_checksum(ip(src), ip(dst)).unwrap();
    p
}

pub(crate) fn udp(src: &str, sp: u16, dst: &str, dp: u16, data: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8 + data.len()];
    wire::ip::emit_udp_header(&mut u, sp, dp, data.len()).unwrap();
    u[8..].copy_from_slice(data);
    ipv4(src, dst, proto::UDP, &u)
}

pub(crate) fn icmp_echo(src: &str, dst: &str, ty: u8, ident: u16, data: &[u8]) -> Vec<u8> {
    let mut c = vec![0u8; 8 + data.len()];
    c[0] = ty;
    c[4..6].copy_from_slice(&ident.to_be_bytes());
    c[6..8].copy_from_slice(&1u16.to_be_bytes());
    c[8..].copy_from_slice(data);
    let s = checksum::checksum(&c);
    c[2..4].copy_from_slice(&s.to_be_bytes());
    ipv4(src, dst, proto::ICMP, &c)
}

struct Rig {
    e: Engine,
    ifc: IfcPair,
    t0: Instant,
    tun: TunnelId,
}

impl Rig {
    fn new(cfg: Config) -> Self {
        let t0 = Instant::now();
        let mut e = Engine::new(t0, cfg);
        let outside = e.interface("outside").unwrap();
        let inside = e.interface("inside").unwrap();
        let tun = e.tunnel("outside_map:10").unwrap();
        Rig { e, ifc: IfcPair { outside, inside }, t0, tun }
    }
    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }
    /// Outbound (inside -> outside) packet at `ms`.
    fn out(&mut self, ms: u64, route: Route, p: &[u8]) -> Verdict {
        let v = self.e.handle_packet(self.at(ms), Dir::Outbound, self.ifc, route, p);
        self.e.check_invariants();
        v
    }
    fn inb(&mut self, ms: u64, route: Route, p: &[u8]) -> Verdict {
        let v = self.e.handle_packet(self.at(ms), Dir::Inbound, self.ifc, route, p);
        self.e.check_invariants();
        v
    }
    fn tick(&mut self, ms: u64) {
        self.e.handle_timeout(self.at(ms));
        self.e.check_invariants();
    }
    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.e.poll_event()).collect()
    }
    fn flags(&self, ms: u64) -> Vec<String> {
        self.e.conns(self.at(ms)).into_iter().map(|r| r.flags).collect()
    }
    fn up(&mut self, ms: u64) {
        let local = [TrafficSelector::from_net(policy::Ipv4Net::new(ip("10.1.0.0"), 16), None)];
        let remote = [TrafficSelector::from_net(policy::Ipv4Net::new(ip("10.2.0.0"), 16), None)];
        self.e.tunnel_up(self.at(ms), self.tun, &local, &remote);
        self.e.check_invariants();
    }
    fn down(&mut self, ms: u64) {
        self.e.tunnel_down(self.at(ms), self.tun);
        self.e.check_invariants();
    }
    /// Outbound handshake inside 10.1.0.5:40000 -> outside 10.2.0.9:80 through the tunnel.
    fn handshake(&mut self, ms: u64) {
        let to = Route::ToTunnel(self.tun);
        let from = Route::FromTunnel(self.tun);
        assert_eq!(self.out(ms, to, &tcp("10.1.0.5", 40000, "10.2.0.9", 80, SYN, 100, 0, b"")), Verdict::Forward);
        assert_eq!(self.inb(ms + 1, from, &tcp("10.2.0.9", 80, "10.1.0.5", 40000, SYN | ACK, 500, 101, b"")), Verdict::Forward);
        assert_eq!(self.out(ms + 2, to, &tcp("10.1.0.5", 40000, "10.2.0.9", 80, ACK, 101, 501, b"")), Verdict::Forward);
    }
}

fn preserve_cfg(udp: bool) -> Config {
    let mut c = Config::default();
    c.sysopt.preserve_vpn_flows = true;
    c.sysopt.preserve_vpn_flows_udp = udp;
    c
}

#[test]
fn outbound_tcp_build_up_flags() {
    let mut r = Rig::new(Config::default());
    r.up(0);
    let to = Route::ToTunnel(r.tun);
    let from = Route::FromTunnel(r.tun);
    r.out(0, to, &tcp("10.1.0.5", 40000, "10.2.0.9", 80, SYN, 100, 0, b""));
    assert_eq!(r.flags(0), ["saA"]);
    r.inb(1, from, &tcp("10.2.0.9", 80, "10.1.0.5", 40000, SYN | ACK, 500, 101, b""));
    assert_eq!(r.flags(1), ["A"]);
    r.out(2, to, &tcp("10.1.0.5", 40000, "10.2.0.9", 80, ACK, 101, 501, b""));
    assert_eq!(r.flags(2), ["U"]);
    r.inb(3, from, &tcp("10.2.0.9", 80, "10.1.0.5", 40000, ACK | PSH, 501, 101, b"hello"));
    assert_eq!(r.flags(3), ["UI"]);
    r.out(4, to, &tcp("10.1.0.5", 40000, "10.2.0.9", 80, ACK | PSH, 101, 506, b"GET /"));
    assert_eq!(r.flags(4), ["UIO"]);
    let ev = r.events();
    assert_eq!(ev.len(), 1);
    let Event::Built(c) = &ev[0] else { panic!("{ev:?}") };
    assert!(!c.inbound);
    assert_eq!(c.protocol, proto::TCP);
    assert_eq!((c.outside.addr, c.outside.port, c.inside.addr, c.inside.port), (ip("10.2.0.9"), 80, ip("10.1.0.5"), 40000));
    assert_eq!(c.tunnel, Some(r.tun));
    assert_eq!(r.e.conns(r.at(4))[0].bytes, 10);
}

#[test]
fn inbound_tcp_build_up_flags() {
    let mut r = Rig::new(Config::default());
    r.up(0);
    let to = Route::ToTunnel(r.tun);
    let from = Route::FromTunnel(r.tun);
    r.inb(0, from, &tcp("10.2.0.9", 5000, "10.1.0.5", 22, SYN, 1, 0, b""));
    assert_eq!(r.flags(0), ["SaAB"]);
    r.out(1, to, &tcp("10.1.0.5", 22, "10.2.0.9", 5000, SYN | ACK, 900, 2, b""));
    assert_eq!(r.flags(1), ["aB"]);
    r.inb(2, from, &tcp("10.2.0.9", 5000, "10.1.0.5", 22, ACK, 2, 901, b""));
    assert_eq!(r.flags(2), ["UB"]);
    let Event::Built(c) = &r.events()[0] else { panic!() };
    assert!(c.inbound);
    assert_eq!(c.initiator().addr, ip("10.2.0.9"));
}

#[test]
fn fins_tear_down_after_both_are_acknowledged() {
    let mut r = Rig::new(Config::default());
    r.up(0);
    r.handshake(0);
    let to = Route::ToTunnel(r.tun);
    let from = Route::FromTunnel(r.tun);
    r.out(10, to, &tcp("10.1.0.5", 40000, "10.2.0.9", 80, FIN | ACK, 101, 501, b""));
    assert_eq!(r.flags(10), ["Uf"]);
    r.inb(11, from, &tcp("10.2.0.9", 80, "10.1.0.5", 40000, ACK, 501, 102, b""));
    assert_eq!(r.flags(11), ["UfR"]);
    r.inb(12, from, &tcp("10.2.0.9", 80, "10.1.0.5", 40000, FIN | ACK | PSH, 501, 102, b"bye"));
    assert_eq!(r.flags(12), ["UfFRI"]);
    // An ACK that does not cover the FIN (it acks the data only) is not the FIN's ack.
    r.out(13, to, &tcp("10.1.0.5", 40000, "10.2.0.9", 80, ACK, 102, 504, b""));
    assert_eq!(r.flags(13), ["UfFRI"]);
    r.out(14, to, &tcp("10.1.0.5", 40000, "10.2.0.9", 80, ACK, 102, 505, b""));
    assert!(r.e.is_empty());
    let ev = r.events();
    let Event::Teardown { reason, bytes, .. } = ev.last().unwrap() else { panic!() };
    assert_eq!(*reason, TeardownReason::TcpFins);
    assert_eq!(*bytes, 3);
}

#[test]
fn timewait_keeps_a_closed_conn_15_seconds() {
    let mut cfg = Config::default();
    cfg.sysopt.timewait = true;
    let mut r = Rig::new(cfg);
    r.up(0);
    r.handshake(0);
    let to = Route::ToTunnel(r.tun);
    let from = Route::FromTunnel(r.tun);
    r.out(10, to, &tcp("10.1.0.5", 40000, "10.2.0.9", 80, FIN | ACK, 101, 501, b""));
    r.inb(11, from, &tcp("10.2.0.9", 80, "10.1.0.5", 40000, FIN | ACK, 501, 102, b""));
    r.out(12, to, &tcp("10.1.0.5", 40000, "10.2.0.9", 80, ACK, 102, 502, b""));
    assert_eq!(r.flags(12), ["UfFrR"]);
    r.events();
    // A retransmitted last ACK still finds the conn.
    assert_eq!(r.out(5_000, to, &tcp("10.1.0.5", 40000, "10.2.0.9", 80, ACK, 102, 502, b"")), Verdict::Forward);
    r.tick(19_000);
    assert_eq!(r.e.len(), 1);
    r.tick(20_250);
    assert!(r.e.is_empty());
    assert!(matches!(r.events()[..], [Event::Teardown { reason: TeardownReason::TcpFins, .. }]));
}

#[test]
fn pickup_window_after_restart() {
    let mut r = Rig::new(Config::default());
    r.up(0);
    r.e.allow_pickup_until(r.at(60_000));
    let to = Route::ToTunnel(r.tun);
    let from = Route::FromTunnel(r.tun);
    // A download's data segment from the far side, mid-stream.
    let v = r.inb(1_000, from, &tcp("10.2.0.9", 80, "10.1.0.5", 40000, ACK | PSH, 9000, 500, b"data"));
    assert_eq!(v, Verdict::Forward);
    assert_eq!(r.flags(1_000), ["UI"]);
    let Event::Built(c) = &r.events()[0] else { panic!() };
    assert!(!c.inbound, "the side with the higher port is taken as the client");
    assert_eq!(r.out(1_001, to, &tcp("10.1.0.5", 40000, "10.2.0.9", 80, ACK, 500, 9004, b"")), Verdict::Forward);
    // Never for clear traffic, never a RST, and not after the window.
    let v = r.out(2_000, Route::Clear, &tcp("10.1.0.5", 40001, "192.0.2.9", 80, ACK, 1, 1, b""));
    assert_eq!(v, Verdict::Drop(DropReason::TcpNotSyn));
    let v = r.out(2_000, to, &tcp("10.1.0.5", 40002, "10.2.0.9", 80, RST | ACK, 1, 1, b""));
    assert_eq!(v, Verdict::Drop(DropReason::TcpNotSyn));
    let v = r.out(60_001, to, &tcp("10.1.0.5", 40003, "10.2.0.9", 80, ACK, 1, 1, b""));
    assert_eq!(v, Verdict::Drop(DropReason::TcpNotSyn));
    assert_eq!(r.e.stats().picked_up, 1);
}

#[test]
fn resets_name_their_side() {
    for (from_inside, want) in [(true, TeardownReason::TcpResetI), (false, TeardownReason::TcpResetO)] {
        let mut r = Rig::new(Config::default());
        r.up(0);
        r.handshake(0);
        if from_inside {
            r.out(5, Route::ToTunnel(r.tun), &tcp("10.1.0.5", 40000, "10.2.0.9", 80, RST, 101, 0, b""));
        } else {
            r.inb(5, Route::FromTunnel(r.tun), &tcp("10.2.0.9", 80, "10.1.0.5", 40000, RST | ACK, 501, 101, b""));
        }
        let ev = r.events();
        assert!(matches!(ev.last(), Some(Event::Teardown { reason, .. }) if *reason == want), "{ev:?}");
        assert!(r.e.is_empty());
    }
}

#[test]
fn non_syn_without_conn_is_dropped_and_counted() {
    let mut r = Rig::new(Config::default());
    for f in [ACK, SYN | ACK, FIN | ACK, RST, SYN | RST, ACK | PSH] {
        let v = r.out(0, Route::Clear, &tcp("10.1.0.5", 40000, "10.2.0.9", 80, f, 1, 1, b"x"));
        assert_eq!(v, Verdict::Drop(DropReason::TcpNotSyn));
    }
    assert_eq!(r.e.stats().drops(DropReason::TcpNotSyn), 6);
    assert!(r.e.is_empty());
    assert!(r.e.show_asp_drop().contains("First TCP packet not SYN (tcp-not-syn)"));
}

#[test]
fn syn_timeout_after_30_seconds() {
    let mut r = Rig::new(Config::default());
    r.out(0, Route::Clear, &tcp("10.1.0.5", 40000, "10.2.0.9", 80, SYN, 1, 0, b""));
    r.events();
    let (when, _) = r.e.poll_timeout().unwrap();
    assert!(when <= r.at(30_000 + TICK_MS), "wake-up {:?} after the deadline", when - r.t0);
    r.tick(29_900);
    assert_eq!(r.e.len(), 1);
    r.tick(30_250);
    assert!(r.e.is_empty());
    let ev = r.events();
    assert!(matches!(ev[..], [Event::Teardown { reason: TeardownReason::SynTimeout, .. }]), "{ev:?}");
}

#[test]
fn idle_timers_follow_policy_and_activity() {
    let mut cfg = Config::default();
    cfg.timeouts.conn = Some(Duration::from_secs(300));
    cfg.timeouts.half_closed = Some(Duration::from_secs(30));
    let mut r = Rig::new(cfg);
    r.up(0);
    r.handshake(0);
    // Activity at 200 s pushes the deadline to 500 s (lazy re-arm on the wheel visit at 300 s).
    r.out(200_000, Route::ToTunnel(r.tun), &tcp("10.1.0.5", 40000, "10.2.0.9", 80, ACK, 101, 501, b"x"));
    r.tick(300_500);
    assert_eq!(r.e.len(), 1);
    r.tick(499_000);
    assert_eq!(r.e.len(), 1);
    // A FIN shortens the timeout to half-closed (30 s): the entry must move earlier at once.
    r.out(499_500, Route::ToTunnel(r.tun), &tcp("10.1.0.5", 40000, "10.2.0.9", 80, FIN | ACK, 102, 501, b""));
    r.tick(529_000);
    assert_eq!(r.e.len(), 1);
    r.events();
    r.tick(530_000);
    assert!(r.e.is_empty());
    assert!(matches!(r.events()[..], [Event::Teardown { reason: TeardownReason::FinTimeout, .. }]));

    // Conn-timeout of an established, idle conn.
    r.handshake(600_000);
    r.events();
    r.tick(900_002 + 250);
    assert!(matches!(r.events()[..], [Event::Teardown { reason: TeardownReason::ConnTimeout, .. }]));
}

#[test]
fn conn_timeout_zero_means_never() {
    let mut cfg = Config::default();
    cfg.timeouts.conn = None;
    let mut r = Rig::new(cfg);
    r.up(0);
    r.handshake(0);
    r.tick(10 * 24 * 3_600_000);
    assert_eq!(r.e.len(), 1);
    assert_eq!(r.e.conns(r.at(0))[0].timeout, None);
}

#[test]
fn udp_and_icmp_conns() {
    let mut r = Rig::new(Config::default());
    assert_eq!(r.out(0, Route::Clear, &udp("10.1.0.5", 5353, "10.2.0.53", 53, b"query")), Verdict::Forward);
    assert_eq!(r.inb(5, Route::Clear, &udp("10.2.0.53", 53, "10.1.0.5", 5353, b"answer!")), Verdict::Forward);
    assert_eq!(r.out(10, Route::Clear, &icmp_echo("10.1.0.5", "10.2.0.9", 8, 77, b"ping")), Verdict::Forward);
    assert_eq!(r.inb(11, Route::Clear, &icmp_echo("10.2.0.9", "10.1.0.5", 0, 77, b"ping")), Verdict::Forward);
    // An unsolicited echo reply has no conn.
    assert_eq!(
        r.inb(12, Route::Clear, &icmp_echo("10.2.0.9", "10.1.0.5", 0, 78, b"ping")),
        Verdict::Drop(DropReason::InspectIcmpSeqNumNotMatched)
    );
    let recs = r.e.conns(r.at(20));
    assert_eq!(recs.len(), 2);
    assert_eq!((recs[0].bytes, recs[0].flags.as_str()), (12, "-"));
    assert_eq!((recs[1].info.inside.port, recs[1].info.outside.port, recs[1].bytes), (77, 0, 8));
    // ICMP 2 s, UDP 2 min.
    r.tick(2_500);
    assert_eq!(r.e.len(), 1);
    r.tick(125_500);
    assert!(r.e.is_empty());
}

#[test]
fn icmp_errors_follow_their_conn() {
    let mut r = Rig::new(Config::default());
    let syn = tcp("10.1.0.5", 40000, "10.2.0.9", 80, SYN, 1, 0, b"");
    r.out(0, Route::Clear, &syn);
    // A router on the outside says the SYN could not be delivered.
    let mut buf = [0u8; 600];
    let n = wire::ip::build_dest_unreachable(&syn, 1, 0, ip("10.2.0.1"), &mut buf).unwrap();
    assert_eq!(r.inb(1, Route::Clear, &buf[..n]), Verdict::Forward);
    // One about a flow we never saw is dropped.
    let other = tcp("10.1.0.6", 1, "10.2.0.9", 80, SYN, 1, 0, b"");
    let n = wire::ip::build_dest_unreachable(&other, 1, 0, ip("10.2.0.1"), &mut buf).unwrap();
    assert_eq!(r.inb(2, Route::Clear, &buf[..n]), Verdict::Drop(DropReason::InspectIcmpErrorNoExistingConn));
}

#[test]
fn tunnel_down_without_preserve_tears_down_tcp_and_udp() {
    let mut r = Rig::new(Config::default());
    r.up(0);
    r.handshake(0);
    r.out(5, Route::ToTunnel(r.tun), &udp("10.1.0.5", 5000, "10.2.0.9", 5001, b"x"));
    r.out(6, Route::ToTunnel(r.tun), &icmp_echo("10.1.0.5", "10.2.0.9", 8, 1, b"x"));
    r.out(7, Route::Clear, &udp("10.1.0.5", 5000, "192.0.2.1", 53, b"x"));
    r.events();
    r.down(1000);
    let ev = r.events();
    assert_eq!(ev.len(), 2, "{ev:?}");
    for e in &ev {
        assert!(matches!(e, Event::Teardown { reason: TeardownReason::TunnelTornDown, .. }));
    }
    // ICMP times out normally; the clear flow is untouched.
    assert_eq!(r.e.len(), 2);
    // Later segments of the download find no conn.
    let v = r.out(2000, Route::ToTunnel(r.tun), &tcp("10.1.0.5", 40000, "10.2.0.9", 80, ACK, 101, 501, b"x"));
    assert_eq!(v, Verdict::Drop(DropReason::TcpNotSyn));
    r.up(3000);
    let v = r.out(3001, Route::ToTunnel(r.tun), &tcp("10.1.0.5", 40000, "10.2.0.9", 80, ACK, 101, 501, b"x"));
    assert_eq!(v, Verdict::Drop(DropReason::TcpNotSyn));
    assert!(r.e.show_asp_drop().contains("Tunnel has been torn down (tunnel-torn-down)"));
}

#[test]
fn preserved_flow_holds_answers_icmp_and_replays() {
    let mut r = Rig::new(preserve_cfg(false));
    r.up(0);
    r.handshake(0);
    // A second conn still in its handshake.
    r.out(5, Route::ToTunnel(r.tun), &tcp("10.1.0.5", 40001, "10.2.0.9", 80, SYN, 7, 0, b""));
    r.out(6, Route::ToTunnel(r.tun), &udp("10.1.0.5", 5000, "10.2.0.9", 5001, b"x"));
    r.events();
    r.down(1000);
    // UDP is not preserved without the holdfast extension.
    let ev = r.events();
    assert!(matches!(&ev[..], [Event::Teardown { conn, reason: TeardownReason::TunnelTornDown, .. }] if conn.protocol == proto::UDP));
    assert_eq!(r.flags(1000), ["UV", "saAV"]);

    let to = Route::ToTunnel(r.tun);
    let seg1 = tcp("10.1.0.5", 40000, "10.2.0.9", 80, ACK | PSH, 101, 501, b"first");
    let seg2 = tcp("10.1.0.5", 40000, "10.2.0.9", 80, ACK | PSH, 101, 501, b"first+more");
    assert_eq!(r.out(1500, to, &seg1), Verdict::Hold { icmp: true });
    // Rate limit: the same flow again within 200 ms gets no second ICMP.
    assert_eq!(r.out(1600, to, &seg2), Verdict::Hold { icmp: false });
    // The handshake conn: no ICMP (it would make connect() fail), no hold.
    let v = r.out(1700, to, &tcp("10.1.0.5", 40001, "10.2.0.9", 80, SYN, 7, 0, b""));
    assert_eq!(v, Verdict::Drop(DropReason::IpsecTunDown));
    // Nothing from a preserved conn may go out in clear.
    assert_eq!(r.out(1800, Route::Clear, &seg1), Verdict::Drop(DropReason::VpnHandleMismatch));
    assert_eq!(r.e.stats().icmp_unreachable, 1);

    // The ICMP the daemon sends for it.
    let mut buf = [0u8; 600];
    let n = icmp_host_unreachable(&seg1, ip("10.1.0.1"), &mut buf).unwrap();
    let reply = Ipv4Packet::new_checked(&buf[..n]).unwrap();
    assert_eq!((reply.src(), reply.dst(), reply.protocol()), (ip("10.1.0.1"), ip("10.1.0.5"), proto::ICMP));
    let c = IcmpPacket::new_checked(reply.payload()).unwrap();
    assert_eq!((c.msg_type(), c.code()), (3, 1));
    assert!(c.verify_checksum());

    r.up(30_000);
    assert_eq!(r.flags(30_000), ["U", "saA"]);
    let t = r.e.poll_transmit().expect("held segment replayed");
    assert_eq!(t.tunnel, r.tun);
    assert_eq!(t.packet, seg2, "the latest segment is replayed");
    assert!(r.e.poll_transmit().is_none());
    assert_eq!(r.out(30_001, to, &seg2), Verdict::Forward);
    assert!(r.events().is_empty(), "no conn was torn down or rebuilt");
    // A second tunnel_up (rekey) changes nothing.
    r.up(31_000);
    assert!(r.e.poll_transmit().is_none());
}

#[test]
fn suspended_tunnel_holds_established_tcp_without_tearing_anything_down() {
    let to_cfg = |preserve: bool| if preserve { preserve_cfg(false) } else { Config::default() };
    // Without preserve-vpn-flows a suspension is refused and changes nothing.
    let mut off = Rig::new(to_cfg(false));
    off.up(0);
    off.handshake(0);
    assert!(!off.e.tunnel_suspend(off.at(100), off.tun));
    let seg = tcp("10.1.0.5", 40000, "10.2.0.9", 80, ACK | PSH, 101, 501, b"data");
    let to = Route::ToTunnel(off.tun);
    assert_eq!(off.out(200, to, &seg), Verdict::Forward);

    let mut r = Rig::new(to_cfg(true));
    r.up(0);
    r.handshake(0);
    r.out(5, to, &udp("10.1.0.5", 5000, "10.2.0.9", 5001, b"x"));
    r.out(6, to, &tcp("10.1.0.5", 40001, "10.2.0.9", 80, SYN, 7, 0, b""));
    r.events();
    assert!(r.e.tunnel_suspend(r.at(1000), r.tun));
    assert!(r.e.tunnel_is_suspended(r.tun));
    let to = Route::ToTunnel(r.tun);
    let seg1 = tcp("10.1.0.5", 40000, "10.2.0.9", 80, ACK | PSH, 101, 501, b"first");
    let seg2 = tcp("10.1.0.5", 40000, "10.2.0.9", 80, ACK | PSH, 101, 501, b"first+more");
    assert_eq!(r.out(1100, to, &seg1), Verdict::Hold { icmp: true });
    assert_eq!(r.out(1150, to, &seg2), Verdict::Hold { icmp: false });
    // UDP and a conn still in its handshake are not held.
    assert_eq!(r.out(1200, to, &udp("10.1.0.5", 5000, "10.2.0.9", 5001, b"y")), Verdict::Forward);
    assert_eq!(r.out(1250, to, &tcp("10.1.0.5", 40001, "10.2.0.9", 80, SYN, 7, 0, b"")), Verdict::Forward);
    // Nothing torn down, no V flag: the tunnel has not dropped.
    assert!(r.events().is_empty());
    assert!(r.flags(1300).iter().all(|f| !f.contains('V')), "{:?}", r.flags(1300));
    assert!(r.e.poll_transmit().is_none());
    assert_eq!(r.e.held_for(r.tun), 1);
    r.e.tunnel_resume(r.at(2000), r.tun);
    assert_eq!(r.e.held_for(r.tun), 0);
    assert!(!r.e.tunnel_is_suspended(r.tun));
    let t = r.e.poll_transmit().expect("held segment replayed on resume");
    assert_eq!((t.tunnel, &t.packet), (r.tun, &seg2));
    assert!(r.e.poll_transmit().is_none());
    assert_eq!(r.out(2001, to, &seg2), Verdict::Forward);
    assert_eq!(r.e.stats().held_suspended, 2);
    // A suspension that ends in a real drop: held segments wait for the new tunnel.
    assert!(r.e.tunnel_suspend(r.at(3000), r.tun));
    assert_eq!(r.out(3100, to, &seg1), Verdict::Hold { icmp: true });
    r.down(3500);
    assert!(!r.e.tunnel_is_suspended(r.tun));
    assert!(r.e.poll_transmit().is_none());
    r.up(9000);
    assert_eq!(r.e.poll_transmit().map(|t| t.packet), Some(seg1));
}

#[test]
fn preserved_udp_with_holdfast_extension() {
    let mut r = Rig::new(preserve_cfg(true));
    r.up(0);
    r.out(1, Route::ToTunnel(r.tun), &udp("10.1.0.5", 5000, "10.2.0.9", 5001, b"x"));
    r.events();
    r.down(10);
    assert!(r.events().is_empty());
    assert_eq!(r.flags(10), ["V"]);
    let v = r.out(20, Route::ToTunnel(r.tun), &udp("10.1.0.5", 5000, "10.2.0.9", 5001, b"x"));
    assert_eq!(v, Verdict::Drop(DropReason::IpsecTunDown));
    r.up(30);
    assert_eq!(r.flags(30), ["-"]);
}

#[test]
fn preserve_applies_to_tunnels_established_afterwards() {
    let mut r = Rig::new(Config::default());
    r.up(0);
    r.handshake(0);
    r.e.set_policy(r.at(1), Timeouts::default(), preserve_cfg(false).sysopt);
    r.up(5); // a rekey is not a re-establishment
    r.down(10);
    assert!(r.e.is_empty(), "the tunnel came up before preserve was enabled");
    assert!(!r.e.tunnel_info(r.tun).unwrap().preserve_tcp);
    r.up(20);
    let info = r.e.tunnel_info(r.tun).unwrap();
    assert!(info.up && info.preserve_tcp && !info.preserve_udp && info.name == "outside_map:10");
    r.handshake(30);
    r.down(40);
    assert_eq!(r.flags(40), ["UV"]);
}

#[test]
fn preserved_flow_idle_timeout_still_runs() {
    let mut cfg = preserve_cfg(false);
    cfg.timeouts.conn = Some(Duration::from_secs(300));
    let mut r = Rig::new(cfg);
    r.up(0);
    r.handshake(0);
    r.down(1000);
    // Held retransmissions do not count as activity.
    for s in 1..100 {
        r.out(s * 2000, Route::ToTunnel(r.tun), &tcp("10.1.0.5", 40000, "10.2.0.9", 80, ACK, 101, 501, b"x"));
    }
    r.events();
    r.tick(300_500);
    assert!(r.e.is_empty());
    assert!(matches!(r.events()[..], [Event::Teardown { reason: TeardownReason::ConnTimeout, .. }]));
    assert_eq!(r.e.held_bytes, 0);
}

#[test]
fn hold_caps_bound_memory() {
    let mut cfg = preserve_cfg(false);
    cfg.hold_max_bytes_per_flow = 100;
    cfg.hold_max_bytes_total = 250;
    let mut r = Rig::new(cfg);
    r.up(0);
    for port in 0..5u16 {
        let to = Route::ToTunnel(r.tun);
        r.out(0, to, &tcp("10.1.0.5", 1000 + port, "10.2.0.9", 80, SYN, 1, 0, b""));
        r.inb(1, Route::FromTunnel(r.tun), &tcp("10.2.0.9", 80, "10.1.0.5", 1000 + port, SYN | ACK, 1, 2, b""));
        r.out(2, to, &tcp("10.1.0.5", 1000 + port, "10.2.0.9", 80, ACK, 2, 2, b""));
    }
    r.down(10);
    for port in 0..5u16 {
        r.out(20, Route::ToTunnel(r.tun), &tcp("10.1.0.5", 1000 + port, "10.2.0.9", 80, ACK, 2, 2, &[0; 20]));
    }
    // 60-byte segments: four would need 240 <= 250, the fifth does not fit.
    assert_eq!(r.e.stats().held, 4);
    assert_eq!(r.e.stats().hold_overflow, 1);
    // Too large for one flow.
    r.out(30, Route::ToTunnel(r.tun), &tcp("10.1.0.5", 1000, "10.2.0.9", 80, ACK, 2, 2, &[0; 200]));
    assert_eq!(r.e.stats().hold_overflow, 2);
    assert!(r.e.held_bytes <= 250);
    r.up(40);
    assert_eq!(std::iter::from_fn(|| r.e.poll_transmit()).count(), 4);
}

#[test]
fn global_icmp_budget() {
    let mut cfg = preserve_cfg(false);
    cfg.icmp_per_second = 3;
    let mut r = Rig::new(cfg);
    r.up(0);
    for port in 0..10u16 {
        let to = Route::ToTunnel(r.tun);
        r.out(0, to, &tcp("10.1.0.5", 1000 + port, "10.2.0.9", 80, SYN, 1, 0, b""));
        r.inb(1, Route::FromTunnel(r.tun), &tcp("10.2.0.9", 80, "10.1.0.5", 1000 + port, SYN | ACK, 1, 2, b""));
        r.out(2, to, &tcp("10.1.0.5", 1000 + port, "10.2.0.9", 80, ACK, 2, 2, b""));
    }
    r.down(10);
    let mut sent = 0;
    for port in 0..10u16 {
        if r.out(20, Route::ToTunnel(r.tun), &tcp("10.1.0.5", 1000 + port, "10.2.0.9", 80, ACK, 2, 2, b"x"))
            == (Verdict::Hold { icmp: true })
        {
            sent += 1;
        }
    }
    assert_eq!(sent, 3);
    // One second later the bucket is full again.
    let v = r.out(1020, Route::ToTunnel(r.tun), &tcp("10.1.0.5", 1009, "10.2.0.9", 80, ACK, 2, 2, b"x"));
    assert_eq!(v, Verdict::Hold { icmp: true });
}

#[test]
fn reclassify_moves_clear_flows_into_a_new_tunnel() {
    let mut r = Rig::new(Config::default());
    r.out(0, Route::Clear, &udp("10.1.0.5", 5000, "10.2.0.9", 5001, b"x"));
    r.out(0, Route::Clear, &udp("10.1.0.5", 5000, "192.0.2.9", 5001, b"x"));
    r.events();
    r.up(10);
    let ev = r.events();
    assert!(matches!(&ev[..], [Event::Reclassified { conn, tunnel }] if conn.outside.addr == ip("10.2.0.9") && *tunnel == r.tun));
    // Now the flow must stay in its tunnel.
    let v = r.out(20, Route::Clear, &udp("10.1.0.5", 5000, "10.2.0.9", 5001, b"x"));
    assert_eq!(v, Verdict::Drop(DropReason::VpnHandleMismatch));
    assert_eq!(r.out(21, Route::ToTunnel(r.tun), &udp("10.1.0.5", 5000, "10.2.0.9", 5001, b"x")), Verdict::Forward);
}

#[test]
fn without_reclassify_a_clear_conn_cannot_enter_a_tunnel() {
    let mut cfg = Config::default();
    cfg.sysopt.reclassify_vpn = false;
    let mut r = Rig::new(cfg);
    r.handshake_clear();
    r.out(5, Route::Clear, &udp("10.1.0.5", 5000, "10.2.0.9", 5001, b"x"));
    r.events();
    r.up(10);
    assert!(r.events().is_empty());
    let v = r.out(20, Route::ToTunnel(r.tun), &tcp("10.1.0.5", 40000, "10.2.0.9", 80, ACK, 101, 501, b"x"));
    assert_eq!(v, Verdict::Drop(DropReason::TcpNotSyn));
    let v = r.out(21, Route::ToTunnel(r.tun), &udp("10.1.0.5", 5000, "10.2.0.9", 5001, b"x"));
    assert_eq!(v, Verdict::Forward);
    let ev = r.events();
    let reasons: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Teardown { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, [TeardownReason::VpnReclassifyFailed, TeardownReason::VpnReclassifyFailed]);
    assert!(matches!(ev.last(), Some(Event::Built(c)) if c.tunnel == Some(r.tun)));
}

impl Rig {
    fn handshake_clear(&mut self) {
        self.out(0, Route::Clear, &tcp("10.1.0.5", 40000, "10.2.0.9", 80, SYN, 100, 0, b""));
        self.inb(1, Route::Clear, &tcp("10.2.0.9", 80, "10.1.0.5", 40000, SYN | ACK, 500, 101, b""));
        self.out(2, Route::Clear, &tcp("10.1.0.5", 40000, "10.2.0.9", 80, ACK, 101, 501, b""));
    }
}

#[test]
fn snapshot_survives_a_restart() {
    let mut r = Rig::new(preserve_cfg(false));
    r.up(0);
    r.handshake(0);
    r.out(10, Route::ToTunnel(r.tun), &tcp("10.1.0.5", 40000, "10.2.0.9", 80, ACK | PSH, 101, 501, b"12345"));
    r.out(11, Route::Clear, &udp("10.1.0.5", 5000, "192.0.2.9", 53, b"x"));
    let snap = r.e.snapshot(r.at(60_000));
    let json = serde_json::to_string(&snap).unwrap();
    let back: Snapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snap);

    // The new process: its own clock origin, 20 s of downtime.
    let t1 = r.t0 + Duration::from_secs(500);
    let mut e = Engine::restore(t1, preserve_cfg(false), &back, Duration::from_secs(20)).unwrap();
    e.check_invariants();
    let recs = e.conns(t1);
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].flags, "UOV");
    assert_eq!(recs[0].bytes, 5);
    assert_eq!(recs[0].uptime.as_secs(), 80);
    assert_eq!(recs[0].idle.as_millis(), 79_990);
    assert_eq!(e.interface_name(recs[0].info.outside.ifc), "outside");
    // The UDP conn (idle 80 s of its 120 s) expires 40 s later.
    e.handle_timeout(t1 + Duration::from_secs(39));
    assert_eq!(e.len(), 2);
    e.handle_timeout(t1 + Duration::from_secs(41));
    assert_eq!(e.len(), 1);
    // The tunnel returns under the same name: the preserved conn continues.
    let tun = e.tunnel("outside_map:10").unwrap();
    e.tunnel_up(t1 + Duration::from_secs(42), tun, &[], &[]);
    let seg = tcp("10.1.0.5", 40000, "10.2.0.9", 80, ACK, 106, 501, b"x");
    let v = e.handle_packet(t1 + Duration::from_secs(43), Dir::Outbound, r.ifc, Route::ToTunnel(tun), &seg);
    assert_eq!(v, Verdict::Forward);
    // New conns get new ids.
    let v = e.handle_packet(t1 + Duration::from_secs(43), Dir::Outbound, r.ifc, Route::Clear, &udp("10.1.0.5", 1, "192.0.2.9", 1, b""));
    assert_eq!(v, Verdict::Forward);
    let ids: Vec<u64> = e.conns(t1).iter().map(|c| c.info.id).collect();
    assert_eq!(ids, [1, 3]);
    e.check_invariants();

    // Without preserve, the restart tears tunnelled conns down ("Tunnel has been torn down").
    let mut e2 = Engine::restore(t1, Config::default(), &back, Duration::ZERO).unwrap();
    let ev: Vec<Event> = std::iter::from_fn(|| e2.poll_event()).collect();
    assert!(matches!(&ev[..], [Event::Teardown { reason: TeardownReason::TunnelTornDown, .. }]));
    e2.check_invariants();
}

#[test]
fn show_conn_golden() {
    let mut r = Rig::new(preserve_cfg(false));
    r.up(0);
    r.handshake(0);
    r.inb(3, Route::FromTunnel(r.tun), &tcp("10.2.0.9", 80, "10.1.0.5", 40000, ACK | PSH, 501, 101, &[7; 100]));
    r.out(5_000, Route::Clear, &udp("10.1.0.5", 5353, "192.0.2.53", 53, b"abcd"));
    r.out(6_000, Route::ToTunnel(r.tun), &tcp("10.1.0.5", 40001, "10.2.0.9", 443, SYN, 1, 0, b""));
    r.down(7_000);
    let now = r.at(71_000);
    assert_eq!(r.e.show_conn(now, ConnView::Count), "3 in use, 3 most used\n");
    assert_eq!(
        r.e.show_conn(now, ConnView::Brief),
        "3 in use, 3 most used\n\
         TCP outside 10.2.0.9:80 inside 10.1.0.5:40000, idle 0:01:10, bytes 100, flags UIV\n\
         UDP outside 192.0.2.53:53 inside 10.1.0.5:5353, idle 0:01:06, bytes 4, flags -\n\
         TCP outside 10.2.0.9:443 inside 10.1.0.5:40001, idle 0:01:05, bytes 0, flags saAV\n"
    );
    let long = r.e.show_conn(now, ConnView::Long);
    assert!(long.starts_with("3 in use, 3 most used\n\nFlags: A - awaiting inside ACK to SYN"), "{long}");
    assert!(long.contains(
        "\nTCP outside: 10.2.0.9/80 (10.2.0.9/80) inside: 10.1.0.5/40000 (10.1.0.5/40000), flags UIV, idle 1m10s, uptime 1m11s, timeout 1h0m, bytes 100\n  Initiator: 10.1.0.5, Responder: 10.2.0.9\n"
    ), "{long}");
    assert!(long.contains("flags saAV, idle 1m5s, uptime 1m5s, timeout 30s, bytes 0\n"), "{long}");
    assert_eq!(
        r.e.show_conn_address(now, ConnView::Brief, Some(ip("192.0.2.53"))),
        "3 in use, 3 most used\nUDP outside 192.0.2.53:53 inside 10.1.0.5:5353, idle 0:01:06, bytes 4, flags -\n"
    );
    let detail = r.e.show_conn(now, ConnView::Detail);
    assert!(detail.contains(
        "\nUDP outside: 192.0.2.53/53 inside: 10.1.0.5/5353,\n    flags -, idle 1m6s, uptime 1m6s, timeout 2m0s, bytes 4\n  Initiator: 10.1.0.5, Responder: 192.0.2.53\n  Connection lookup keyid: 2\n"
    ), "{detail}");
    assert!(detail.contains("  Connection lookup keyid: 1\n  Tunnel: outside_map:10\n"), "{detail}");
}

#[test]
fn show_asp_drop_golden() {
    let mut r = Rig::new(Config::default());
    r.out(0, Route::Clear, &tcp("10.1.0.5", 1, "10.2.0.9", 80, ACK, 1, 1, b""));
    r.out(0, Route::Clear, &tcp("10.1.0.5", 1, "10.2.0.9", 80, ACK, 1, 1, b""));
    r.out(0, Route::Clear, &[0x45, 0, 0]);
    assert_eq!(
        r.e.show_asp_drop(),
        "\nFrame drop:\n\
         \x20 Invalid IP Length (invalid-ip-length)                                        1\n\
         \x20 First TCP packet not SYN (tcp-not-syn)                                       2\n\
         \nLast clearing: Never\n\nFlow drop:\n\nLast clearing: Never\n"
    );
    r.e.clear_asp_drop("08:00:00 UTC Nov 23 2026 by admin");
    assert_eq!(
        r.e.show_asp_drop(),
        "\nFrame drop:\n\nLast clearing: 08:00:00 UTC Nov 23 2026 by admin\n\nFlow drop:\n\nLast clearing: 08:00:00 UTC Nov 23 2026 by admin\n"
    );
}

#[test]
fn clear_conn_by_address() {
    let mut r = Rig::new(Config::default());
    r.out(0, Route::Clear, &udp("10.1.0.5", 1, "192.0.2.1", 1, b""));
    r.out(0, Route::Clear, &udp("10.1.0.6", 1, "192.0.2.1", 1, b""));
    r.out(0, Route::Clear, &udp("10.1.0.7", 1, "192.0.2.2", 1, b""));
    assert_eq!(r.e.clear_conn(r.at(1), Some(ip("10.1.0.6"))), 1);
    assert_eq!(r.e.clear_conn(r.at(1), Some(ip("192.0.2.1"))), 1);
    assert_eq!(r.e.clear_conn(r.at(1), None), 1);
    r.e.check_invariants();
    assert!(r.e.is_empty());
}

#[test]
fn conn_limit() {
    let mut cfg = Config::default();
    cfg.max_flows = 2;
    let mut r = Rig::new(cfg);
    r.out(0, Route::Clear, &udp("10.1.0.5", 1, "192.0.2.1", 1, b""));
    r.out(0, Route::Clear, &udp("10.1.0.5", 2, "192.0.2.1", 1, b""));
    assert_eq!(r.out(0, Route::Clear, &udp("10.1.0.5", 3, "192.0.2.1", 1, b"")), Verdict::Drop(DropReason::ConnLimit));
}

#[test]
fn many_flows_grow_and_shrink() {
    let mut r = Rig::new(Config::default());
    for n in 0..50_000u32 {
        let a = Ipv4Addr::from(0x0a01_0000 + n);
        let p = udp(&a.to_string(), 1000, "192.0.2.1", 53, b"");
        assert_eq!(r.e.handle_packet(r.at(0), Dir::Outbound, r.ifc, Route::Clear, &p), Verdict::Forward);
    }
    r.e.check_invariants();
    assert_eq!(r.e.len(), 50_000);
    r.tick(121_000);
    assert!(r.e.is_empty());
    r.e.check_invariants();
    assert_eq!(r.events().len(), 100_000);
}

// ---------------------------------------------------------------------------------------------
// Properties

#[derive(Debug, Clone)]
enum Op {
    Tcp { out: bool, host: u8, port: u8, flags: u8, seq: u8, ack: u8, len: u8, route: u8 },
    Udp { out: bool, host: u8, port: u8, route: u8 },
    Icmp { out: bool, host: u8, ty: u8 },
    Garbage(Vec<u8>),
    Advance(u32),
    Down,
    Up,
    Clear,
    Restart,
    Policy(bool, bool, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<bool>(), 0..3u8, 0..3u8, any::<u8>(), 0..4u8, 0..4u8, 0..3u8, 0..4u8)
            .prop_map(|(out, host, port, flags, seq, ack, len, route)| Op::Tcp { out, host, port, flags, seq, ack, len, route }),
        2 => (any::<bool>(), 0..3u8, 0..3u8, 0..3u8).prop_map(|(out, host, port, route)| Op::Udp { out, host, port, route }),
        1 => (any::<bool>(), 0..3u8, prop_oneof![Just(0u8), Just(8), Just(3), Just(13)]).prop_map(|(out, host, ty)| Op::Icmp { out, host, ty }),
        1 => proptest::collection::vec(any::<u8>(), 0..80).prop_map(Op::Garbage),
        3 => (0..200_000u32).prop_map(Op::Advance),
        1 => Just(Op::Down),
        1 => Just(Op::Up),
        1 => Just(Op::Clear),
        1 => Just(Op::Restart),
        1 => (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(a, b, c)| Op::Policy(a, b, c)),
    ]
}

fn flags_from(b: u8) -> u8 {
    // Bias toward meaningful combinations.
    match b % 8 {
        0 => SYN,
        1 => SYN | ACK,
        2 => ACK,
        3 => FIN | ACK,
        4 => RST,
        5 => ACK | PSH,
        _ => b,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Random traffic, timers, tunnel flaps, restarts and policy changes: never a panic, the
    /// table's invariants hold after every step, and Built/Teardown events account exactly for
    /// the conns in use.
    #[test]
    fn random_sequences_keep_invariants(ops in proptest::collection::vec(op(), 1..120)) {
        let mut cfg = preserve_cfg(true);
        cfg.hold_max_bytes_total = 300;
        let mut r = Rig::new(cfg);
        let mut now = 0u64;
        let mut built = 0i64;
        let mut torn = 0i64;
        let mut restarted_base = 0i64;
        for op in ops {
            let t2 = r.e.tunnel("outside_map:20").unwrap();
            let route = |x: u8, t: TunnelId| match x { 0 => Route::Clear, 1 => Route::ToTunnel(t), 2 => Route::FromTunnel(t), _ => Route::ToTunnel(t2) };
            match op {
                Op::Tcp { out, host, port, flags, seq, ack, len, route: rt } => {
                    let inside = format!("10.1.0.{}", host + 1);
                    let data = vec![0u8; usize::from(len) * 10];
                    let (s, a) = (u32::from(seq) * 10, u32::from(ack) * 10);
                    let p = if out {
                        tcp(&inside, 1000 + u16::from(port), "10.2.0.9", 80, flags_from(flags), s, a, &data)
                    } else {
                        tcp("10.2.0.9", 80, &inside, 1000 + u16::from(port), flags_from(flags), s, a, &data)
                    };
                    let rt = route(rt, r.tun);
                    if out { r.out(now, rt, &p); } else { r.inb(now, rt, &p); }
                }
                Op::Udp { out, host, port, route: rt } => {
                    let inside = format!("10.1.0.{}", host + 1);
                    let rt = route(rt, r.tun);
                    if out {
                        r.out(now, rt, &udp(&inside, 5000 + u16::from(port), "10.2.0.9", 53, b"q"));
                    } else {
                        r.inb(now, rt, &udp("10.2.0.9", 53, &inside, 5000 + u16::from(port), b"a"));
                    }
                }
                Op::Icmp { out, host, ty } => {
                    let inside = format!("10.1.0.{}", host + 1);
                    let p = if ty == 3 {
                        let orig = tcp(&inside, 1000, "10.2.0.9", 80, SYN, 0, 0, b"");
                        let mut buf = [0u8; 600];
                        let n = wire::ip::build_dest_unreachable(&orig, 1, 0, ip("10.2.0.1"), &mut buf).unwrap();
                        buf[..n].to_vec()
                    } else if out {
                        icmp_echo(&inside, "10.2.0.9", ty, 9, b"p")
                    } else {
                        icmp_echo("10.2.0.9", &inside, ty, 9, b"p")
                    };
                    if out { r.out(now, Route::Clear, &p); } else { r.inb(now, Route::Clear, &p); }
                }
                Op::Garbage(g) => { r.out(now, Route::Clear, &g); r.inb(now, Route::ToTunnel(r.tun), &g); }
                Op::Advance(ms) => { now += u64::from(ms); r.tick(now); }
                Op::Down => r.down(now),
                Op::Up => { r.up(now); while let Some(t) = r.e.poll_transmit() { prop_assert!(Ipv4Packet::new_checked(&t.packet[..]).is_ok()); } }
                Op::Clear => { r.e.clear_conn(r.at(now), None); r.e.check_invariants(); }
                Op::Restart => {
                    let snap = r.e.snapshot(r.at(now));
                    let cfg = r.e.config().clone();
                    // Drain the old engine's events first.
                    for ev in std::iter::from_fn(|| r.e.poll_event()) {
                        match ev { Event::Built(_) => built += 1, Event::Teardown { .. } => torn += 1, _ => {} }
                    }
                    r.e = Engine::restore(r.at(now), cfg, &snap, Duration::from_millis(1500)).unwrap();
                    r.e.allow_pickup_until(r.at(now + 30_000));
                    r.e.check_invariants();
                    restarted_base = built - torn - snap.flows.len() as i64;
                    built = 0; torn = 0;
                    // The restored conns count as built in the new process.
                    built += snap.flows.len() as i64;
                }
                Op::Policy(p, u, rc) => {
                    let mut s = Sysopt::default();
                    s.preserve_vpn_flows = p; s.preserve_vpn_flows_udp = u; s.reclassify_vpn = rc;
                    r.e.set_policy(r.at(now), Timeouts::default(), s);
                    r.e.check_invariants();
                }
            }
            for ev in std::iter::from_fn(|| r.e.poll_event()) {
                match ev { Event::Built(_) => built += 1, Event::Teardown { .. } => torn += 1, _ => {} }
            }
            prop_assert_eq!(built - torn, r.e.len() as i64);
            if let Some((w, _)) = r.e.poll_timeout() { prop_assert!(w >= r.t0); }
        }
        let _ = restarted_base;
    }

    /// Arbitrary bytes in either direction never panic and never build a conn out of garbage
    /// that is not a well-formed first packet.
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200), inbound: bool) {
        let mut r = Rig::new(Config::default());
        let dir = if inbound { Dir::Inbound } else { Dir::Outbound };
        let _ = r.e.handle_packet(r.at(0), dir, r.ifc, Route::Clear, &data);
        let _ = r.e.lookup(r.at(0), dir, r.ifc, &data);
        r.e.check_invariants();
        let evs: Vec<Event> = std::iter::from_fn(|| r.e.poll_event()).collect();
        for ev in evs {
            let _ = r.e.syslog(&ev);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// `handle_batch` is observably identical to `handle_packet` one by one: same verdicts,
    /// same events, same table — including batches that build, use and end the same conn.
    #[test]
    fn batch_equals_one_by_one(
        pkts in proptest::collection::vec((any::<bool>(), 0..3u8, 0..3u8, any::<u8>(), 0..3u8, 0..3u8), 1..150),
        cuts in proptest::collection::vec(1..40usize, 1..20),
    ) {
        let mut a = Rig::new(preserve_cfg(false));
        let mut b = Rig::new(preserve_cfg(false));
        a.up(0);
        b.up(0);
        let data: Vec<(Dir, Route, Vec<u8>)> = pkts
            .iter()
            .map(|&(out, host, port, flags, len, rt)| {
                let inside = format!("10.1.0.{}", host + 1);
                let payload = vec![0u8; usize::from(len) * 7];
                let f = flags_from(flags);
                let route = match rt { 0 => Route::Clear, 1 => Route::ToTunnel(a.tun), _ => Route::FromTunnel(a.tun) };
                if flags % 11 == 0 {
                    (Dir::Outbound, route, udp(&inside, 9, "10.2.0.9", 9, &payload))
                } else if out {
                    (Dir::Outbound, route, tcp(&inside, 1000 + u16::from(port), "10.2.0.9", 80, f, 0, 0, &payload))
                } else {
                    (Dir::Inbound, route, tcp("10.2.0.9", 80, &inside, 1000 + u16::from(port), f, 0, 0, &payload))
                }
            })
            .collect();
        let va: Vec<Verdict> = data.iter().map(|(d, r, p)| a.e.handle_packet(a.at(5), *d, a.ifc, *r, p)).collect();
        let batch: Vec<Packet<'_>> = data.iter().map(|(d, r, p)| Packet { dir: *d, ifcs: b.ifc, route: *r, data: p }).collect();
        let mut vb = vec![Verdict::Forward; batch.len()];
        let mut at = 0;
        for c in cuts.iter().cycle() {
            if at >= batch.len() { break; }
            let end = (at + c).min(batch.len());
            b.e.handle_batch(b.at(5), &batch[at..end], &mut vb[at..end]);
            at = end;
        }
        prop_assert_eq!(va, vb);
        prop_assert_eq!(a.events(), b.events());
        prop_assert_eq!(a.e.conns(a.at(6)), b.e.conns(b.at(6)));
        prop_assert_eq!(a.e.stats(), b.e.stats());
        b.e.check_invariants();
    }
}

#[test]
fn engine_can_move_between_threads() {
    // The daemon's TX and RX threads share one engine behind a lock.
    fn send<T: Send + 'static>() {}
    send::<Engine>();
    send::<Snapshot>();
}
