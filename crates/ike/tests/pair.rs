//! Two endpoints (holdfast <-> holdfast) exchanging datagrams in memory with a virtual clock.

use ike::{ChildSaUp, Command, DownReason, Endpoint, Event, Path, Transmit};
use policy::*;
use std::collections::BTreeMap as HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

mod common;
use common::*;

fn globals() -> Ikev2Globals {
    Ikev2Globals { retransmit_base: Duration::from_millis(500), retransmit_tries: 3, ..Default::default() }
}

struct Net {
    now: Instant,
    eps: HashMap<IpAddr, Endpoint>,
    events: HashMap<IpAddr, Vec<Event>>,
    /// Packets from this address are dropped (a dead or partitioned peer).
    down: Vec<IpAddr>,
    log: Vec<(IpAddr, Transmit)>,
    seed: u64,
    /// Random loss in per mille, from a deterministic generator.
    loss: u64,
    lfsr: u64,
    /// Drop every response (requests still arrive): half-open SAs pile up.
    drop_responses: bool,
    /// A NAT in front of B rewrites B's source port to this.
    b_nat_port: Option<u16>,
    encap_changes: Vec<(IpAddr, ike::EncapChange)>,
}

impl Net {
    fn new(ta: TunnelPolicy, tb: TunnelPolicy, ga: Ikev2Globals, gb: Ikev2Globals) -> Self {
        Self::multi(vec![ta], vec![tb], ga, gb)
    }

    fn multi(ta: Vec<TunnelPolicy>, tb: Vec<TunnelPolicy>, ga: Ikev2Globals, gb: Ikev2Globals) -> Self {
        let mut eps = HashMap::new();
        eps.insert(ip(A), Endpoint::new(ta, ga, Box::new(crypto::SeededRandom::new(1))));
        eps.insert(ip(B), Endpoint::new(tb, gb, Box::new(crypto::SeededRandom::new(2))));
        #[allow(clippy::disallowed_methods)] // the virtual clock needs some starting Instant
        let start = Instant::now();
        Self { now: start, eps, events: HashMap::new(), down: vec![], log: vec![], seed: 3, loss: 0, lfsr: 0x9e3779b97f4a7c15, drop_responses: false, b_nat_port: None, encap_changes: vec![] }
    }

    fn pair(a: &Algs) -> Self {
        Self::new(tunnel(A, B, "10.1.0.0", "10.2.0.0", a), tunnel(B, A, "10.2.0.0", "10.1.0.0", a), globals(), globals())
    }

    fn restart(&mut self, who: &str, t: TunnelPolicy) {
        self.seed += 1;
        self.eps.insert(ip(who), Endpoint::new(vec![t], globals(), Box::new(crypto::SeededRandom::new(self.seed))));
    }

    fn cmd(&mut self, who: &str, c: Command) {
        let now = self.now;
        self.eps.get_mut(&ip(who)).unwrap().handle_command(now, c);
        self.run();
    }

    /// Delivers everything in flight until quiet.
    fn run(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            let keys: Vec<IpAddr> = self.eps.keys().copied().collect();
            for k in keys {
                let ep = self.eps.get_mut(&k).unwrap();
                let mut out = Vec::new();
                while let Some(t) = ep.poll_transmit() {
                    out.push(t);
                }
                while let Some(e) = ep.poll_event() {
                    self.events.entry(k).or_default().push(e);
                }
                while let Some(c) = ep.poll_encap_change() {
                    self.encap_changes.push((k, c));
                }
                for t in out {
                    moved = true;
                    self.log.push((k, t.clone()));
                    if self.down.contains(&k) || self.down.contains(&t.path.remote.ip()) {
                        continue;
                    }
                    if self.drop_responses && wire::ike::Header::parse(&t.data).is_ok_and(|h| h.is_response()) {
                        continue;
                    }
                    if self.loss > 0 {
                        self.lfsr ^= self.lfsr << 13;
                        self.lfsr ^= self.lfsr >> 7;
                        self.lfsr ^= self.lfsr << 17;
                        if self.lfsr % 1000 < self.loss {
                            continue;
                        }
                    }
                    assert_eq!(t.path.local.ip(), k, "sent from the tunnel's address");
                    if let Some(dst) = self.eps.get_mut(&t.path.remote.ip()) {
                        let mut p = Path { local: t.path.remote, remote: t.path.local };
                        if let (Some(port), true) = (self.b_nat_port, k == ip(B)) {
                            p.remote.set_port(port);
                        }
                        let _ = dst.handle_datagram(self.now, p, &t.data);
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("no quiescence");
    }

    /// Advances the virtual clock, firing timers on the way.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = self.eps.values().filter_map(|e| e.poll_timeout()).map(|(t, _)| t).min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    for e in self.eps.values_mut() {
                        if e.poll_timeout().is_some_and(|(t, _)| t <= now) {
                            e.handle_timeout(now);
                        }
                    }
                    self.run();
                }
                _ => break,
            }
        }
        self.now = end;
        self.run();
    }

    fn ev(&self, who: &str) -> Vec<Event> {
        self.events.get(&ip(who)).cloned().unwrap_or_default()
    }

    fn ups(&self, who: &str) -> Vec<ChildSaUp> {
        self.ev(who)
            .into_iter()
            .filter_map(|e| match e {
                Event::ChildSaUp(u) => Some(u),
                _ => None,
            })
            .collect()
    }

    fn downs(&self, who: &str) -> Vec<(u32, DownReason)> {
        self.ev(who)
            .into_iter()
            .filter_map(|e| match e {
                Event::ChildSaDown { spi_in, reason, .. } => Some((spi_in, reason)),
                _ => None,
            })
            .collect()
    }

    /// Child SAs that were announced up and not down.
    fn live(&self, who: &str) -> Vec<ChildSaUp> {
        let downs: Vec<u32> = self.downs(who).into_iter().map(|d| d.0).collect();
        self.ups(who).into_iter().filter(|u| !downs.contains(&u.inbound.spi)).collect()
    }

    fn clear_events(&mut self) {
        self.events.clear();
    }
}

fn assert_matching(n: &Net) {
    let a = n.live(A);
    let b = n.live(B);
    assert!(!a.is_empty(), "A has a CHILD_SA: {:?}", n.ev(A));
    for x in &a {
        let peer = b.iter().find(|y| y.inbound.spi == x.outbound.spi).expect("peer has the matching inbound SA");
        assert_eq!(x.outbound, peer.inbound, "A->B keys");
        assert_eq!(x.inbound, peer.outbound, "B->A keys");
        assert_eq!(x.local_ts, peer.remote_ts);
        assert_eq!(x.remote_ts, peer.local_ts);
        assert_eq!(x.encap, peer.encap);
    }
}

fn up_pair(a: &Algs) -> Net {
    let mut n = Net::pair(a);
    n.cmd(A, Command::Initiate { tunnel: format!("MAP:{B}") });
    n
}

#[test]
fn gcm_x25519_comes_up_with_matching_keys() {
    let n = up_pair(&gcm_x25519());
    assert_matching(&n);
    let u = &n.live(A)[0];
    assert_eq!(u.outbound.encryption, Encryption::AesGcm256);
    assert_eq!(u.outbound.enc_key.len(), 36, "GCM key || 4-byte salt");
    assert!(u.initiator);
    assert_eq!(u.encap, esp::Encap::Native, "no NAT, not forced");
    assert!(n.ev(A).iter().any(|e| matches!(e, Event::IkeSaUp { initiator: true, .. })));
    assert!(n.ev(B).iter().any(|e| matches!(e, Event::IkeSaUp { initiator: false, .. })));
    let sas = n.eps[&ip(A)].ike_sas();
    assert_eq!(sas.len(), 1);
    assert_eq!(sas[0].status, ike::IkeStatus::Ready);
    assert_eq!(sas[0].suite.unwrap().dh, DhGroup::Curve25519);
    assert_eq!(n.eps[&ip(B)].child_sas().len(), 1);
}

#[test]
fn cbc_sha256_modp2048_comes_up_with_matching_keys() {
    let n = up_pair(&cbc_modp());
    assert_matching(&n);
    let u = &n.live(A)[0];
    assert_eq!((u.outbound.encryption, u.outbound.integrity), (Encryption::AesCbc256, Integrity::Sha256));
    assert_eq!((u.outbound.enc_key.len(), u.outbound.integ_key.len()), (32, 32));
    assert_ne!(u.outbound.enc_key, u.inbound.enc_key);
}

#[test]
fn forced_udp_encap_floats_to_4500() {
    let mut ta = tunnel(A, B, "10.1.0.0", "10.2.0.0", &gcm_x25519());
    ta.force_udp_encap = true;
    let tb = tunnel(B, A, "10.2.0.0", "10.1.0.0", &gcm_x25519());
    let mut n = Net::new(ta, tb, globals(), globals());
    n.cmd(A, Command::Initiate { tunnel: format!("MAP:{B}") });
    assert_matching(&n);
    // IKE_SA_INIT on 500, IKE_AUTH on 4500.
    assert_eq!(n.log[0].1.path.local.port(), 500);
    assert!(n.log.iter().skip(2).all(|(_, t)| t.path.local.port() == 4500 && t.path.remote.port() == 4500));
    let u = &n.live(A)[0];
    assert_eq!(u.encap, esp::Encap::Udp { local_port: 4500, remote_port: 4500 });
    // The responder follows the initiator to 4500 (RFC 7296 §2.23).
    assert_eq!(n.live(B)[0].encap, esp::Encap::Udp { local_port: 4500, remote_port: 4500 });
}

#[test]
fn invalid_ke_retry_with_requested_group() {
    let mut aa = gcm_x25519();
    aa.groups = vec![DhGroup::Ecp256, DhGroup::Curve25519];
    let ta = tunnel(A, B, "10.1.0.0", "10.2.0.0", &aa);
    let tb = tunnel(B, A, "10.2.0.0", "10.1.0.0", &gcm_x25519());
    let mut n = Net::new(ta, tb, globals(), globals());
    n.cmd(A, Command::Initiate { tunnel: format!("MAP:{B}") });
    assert_matching(&n);
    assert_eq!(n.eps[&ip(A)].ike_sas()[0].suite.unwrap().dh, DhGroup::Curve25519);
    let first = wire::ike::Message::parse(&n.log[1].1.data).unwrap();
    assert!(first.notifies().any(|x| x.ty == wire::ike::NotifyType::InvalidKePayload));
}

#[test]
fn no_proposal_chosen_fails_and_retries() {
    let ta = tunnel(A, B, "10.1.0.0", "10.2.0.0", &gcm_x25519());
    let tb = tunnel(B, A, "10.2.0.0", "10.1.0.0", &cbc_modp());
    let mut n = Net::new(ta, tb, globals(), globals());
    n.cmd(A, Command::Initiate { tunnel: format!("MAP:{B}") });
    assert!(n.ev(A).iter().any(|e| matches!(e, Event::IkeNegotiationFailed { .. })));
    assert!(n.ups(A).is_empty());
    let resp = wire::ike::Message::parse(&n.log[1].1.data).unwrap();
    assert!(resp.notifies().any(|x| x.ty == wire::ike::NotifyType::NoProposalChosen));
    // The initiator tries again after a short backoff.
    let sent = n.log.len();
    n.advance(Duration::from_secs(2));
    assert!(n.log.len() > sent);
}

#[test]
fn psk_mismatch_fails_authentication() {
    let ta = tunnel(A, B, "10.1.0.0", "10.2.0.0", &gcm_x25519());
    let mut tb = tunnel(B, A, "10.2.0.0", "10.1.0.0", &gcm_x25519());
    tb.remote_psk = Secret("other".into());
    let mut n = Net::new(ta, tb, globals(), globals());
    n.cmd(A, Command::Initiate { tunnel: format!("MAP:{B}") });
    assert!(n.ups(A).is_empty() && n.ups(B).is_empty());
    assert!(n.ev(A).iter().any(|e| matches!(e, Event::IkeNegotiationFailed { .. })));
    assert!(n.eps[&ip(B)].ike_sas().is_empty(), "responder dropped the half-open SA");
}

#[test]
fn empty_psk_never_authenticates() {
    // A direction meant for certificates whose validator was never installed carries an empty
    // key; both sides computing the same MAC under it must still not authenticate.
    let mut ta = tunnel(A, B, "10.1.0.0", "10.2.0.0", &gcm_x25519());
    let mut tb = tunnel(B, A, "10.2.0.0", "10.1.0.0", &gcm_x25519());
    for t in [&mut ta, &mut tb] {
        t.local_psk = Secret(String::new());
        t.remote_psk = Secret(String::new());
    }
    let mut n = Net::new(ta, tb, globals(), globals());
    n.cmd(A, Command::Initiate { tunnel: format!("MAP:{B}") });
    assert!(n.ups(A).is_empty() && n.ups(B).is_empty());
    assert!(n.ev(A).iter().any(|e| matches!(e, Event::IkeNegotiationFailed { .. })));
}

#[test]
fn responder_narrows_traffic_selectors() {
    let ta = tunnel(A, B, "10.1.0.0", "10.2.0.0", &gcm_x25519());
    let mut tb = tunnel(B, A, "10.2.0.0", "10.1.0.0", &gcm_x25519());
    // A proposes /24s; B only allows a /25 of each side.
    tb.local_ts = vec![TrafficSelector::from_net(Ipv4Net::new("10.2.0.0".parse().unwrap(), 25), None)];
    tb.remote_ts = vec![TrafficSelector::from_net(Ipv4Net::new("10.1.0.128".parse().unwrap(), 25), None)];
    let mut n = Net::new(ta, tb, globals(), globals());
    n.cmd(A, Command::Initiate { tunnel: format!("MAP:{B}") });
    assert_matching(&n);
    let u = &n.live(A)[0];
    assert_eq!(u.local_ts[0].start_addr, "10.1.0.128".parse::<std::net::Ipv4Addr>().unwrap());
    assert_eq!(u.remote_ts[0].end_addr, "10.2.0.127".parse::<std::net::Ipv4Addr>().unwrap());
}

#[test]
fn disjoint_selectors_give_ts_unacceptable() {
    let ta = tunnel(A, B, "10.1.0.0", "10.2.0.0", &gcm_x25519());
    let tb = tunnel(B, A, "10.9.0.0", "10.1.0.0", &gcm_x25519());
    let mut n = Net::new(ta, tb, globals(), globals());
    n.cmd(A, Command::Initiate { tunnel: format!("MAP:{B}") });
    assert!(n.ev(A).iter().any(|e| matches!(e, Event::IkeSaUp { .. })), "IKE SA still comes up");
    assert!(n.ev(A).iter().any(|e| matches!(e, Event::ChildSaFailed { reason, .. } if reason.contains("TsUnacceptable"))));
    assert!(n.ups(A).is_empty());
}

#[test]
fn cookies_demanded_over_threshold() {
    let g = Ikev2Globals { cookie_challenge_percent: 0, ..globals() };
    let mut n = Net::new(tunnel(A, B, "10.1.0.0", "10.2.0.0", &gcm_x25519()), tunnel(B, A, "10.2.0.0", "10.1.0.0", &gcm_x25519()), globals(), g);
    n.cmd(A, Command::Initiate { tunnel: format!("MAP:{B}") });
    // The cookie'd retry leaves after ike::KNOCK_INTERVAL (a real answer to another copy of
    // the plain request may still be on its way).
    n.advance(Duration::from_secs(1));
    assert_matching(&n);
    let second = wire::ike::Message::parse(&n.log[1].1.data).unwrap();
    assert!(second.notifies().any(|x| x.ty == wire::ike::NotifyType::Cookie));
    let third = wire::ike::Message::parse(&n.log[2].1.data).unwrap();
    assert!(matches!(&third.payloads[0], wire::ike::Payload::Notify(x) if x.ty == wire::ike::NotifyType::Cookie));
}

#[test]
fn fragmentation_when_over_mtu() {
    let g = Ikev2Globals { fragmentation_mtu: Some(200), ..globals() };
    let mut n = Net::new(tunnel(A, B, "10.1.0.0", "10.2.0.0", &cbc_modp()), tunnel(B, A, "10.2.0.0", "10.1.0.0", &cbc_modp()), g.clone(), g);
    n.cmd(A, Command::Initiate { tunnel: format!("MAP:{B}") });
    assert_matching(&n);
    let frags = n
        .log
        .iter()
        .filter(|(_, t)| wire::ike::Message::parse(&t.data).is_ok_and(|m| m.header.next_payload == wire::ike::PayloadType::Skf))
        .count();
    assert!(frags >= 2, "IKE_AUTH went out in fragments");
    assert!(n.log.iter().skip(2).all(|(_, t)| t.data.len() + 28 <= 200));
}

#[test]
fn retransmission_and_duplicate_request_gets_cached_response() {
    let mut n = up_pair(&gcm_x25519());
    // Replay B's view: send A's last request again; B must answer with the identical response.
    let (idx, req) = n.log.iter().enumerate().find(|(_, (from, t))| *from == ip(A) && wire::ike::Message::parse(&t.data).is_ok_and(|m| m.header.exchange == wire::ike::ExchangeType::IkeAuth)).map(|(i, x)| (i, x.1.clone())).unwrap();
    let resp = n.log[idx + 1].1.clone();
    let now = n.now;
    let p = Path { local: req.path.remote, remote: req.path.local };
    n.eps.get_mut(&ip(B)).unwrap().handle_datagram(now, p, &req.data).unwrap();
    let again = n.eps.get_mut(&ip(B)).unwrap().poll_transmit().unwrap();
    assert_eq!(again.data, resp.data);
    // No new SA was created by the duplicate.
    assert_eq!(n.eps[&ip(B)].child_sas().len(), 1);
}

#[test]
fn dead_peer_detected_and_reinitiated() {
    let mut n = up_pair(&gcm_x25519());
    n.down.push(ip(B));
    n.clear_events();
    // threshold 10 s, then retries every 2 s, 3 tries.
    n.advance(Duration::from_secs(30));
    assert!(n.ev(A).iter().any(|e| matches!(e, Event::IkeSaDown { reason: DownReason::PeerDead, .. })), "{:?}", n.ev(A));
    assert!(n.downs(A).iter().any(|d| d.1 == DownReason::PeerDead));
    // B comes back with its state intact; A re-initiates on its own.
    n.down.clear();
    n.advance(Duration::from_secs(10));
    assert!(n.live(A).len() == 1, "{:?}", n.ev(A));
}

#[test]
fn peer_restart_initial_contact_replaces_old_sas() {
    let mut n = up_pair(&gcm_x25519());
    let old_spi = n.live(A)[0].inbound.spi;
    n.clear_events();
    n.restart(B, tunnel(B, A, "10.2.0.0", "10.1.0.0", &gcm_x25519()));
    let t0 = n.now;
    n.cmd(B, Command::Initiate { tunnel: format!("MAP:{A}") });
    n.advance(Duration::from_secs(1));
    assert!(n.downs(A).iter().any(|d| d.0 == old_spi && d.1 == DownReason::PeerRestarted), "{:?}", n.ev(A));
    assert_matching(&n);
    assert!(n.now - t0 < Duration::from_secs(10));
    assert_eq!(n.eps[&ip(A)].ike_sas().len(), 1);
}

#[test]
fn clear_ike_sa_deletes_on_both_sides_and_comes_back() {
    let mut n = up_pair(&gcm_x25519());
    n.clear_events();
    n.cmd(A, Command::ClearIkeSa { peer: Some(ip(B)) });
    assert!(n.ev(A).iter().any(|e| matches!(e, Event::IkeSaDown { reason: DownReason::Cleared, .. })));
    assert!(n.ev(B).iter().any(|e| matches!(e, Event::IkeSaDown { reason: DownReason::PeerDeleted, .. })));
    assert!(n.downs(B).iter().any(|d| d.1 == DownReason::PeerDeleted));
    n.advance(Duration::from_secs(5));
    assert_matching(&n);
}

#[test]
fn clear_child_sas_deletes_and_recreates() {
    let mut n = up_pair(&cbc_modp());
    let old = n.live(A)[0].inbound.spi;
    n.cmd(A, Command::ClearChildSas { peer: None });
    assert!(n.downs(A).iter().any(|d| d.0 == old && d.1 == DownReason::Cleared));
    assert!(n.downs(B).iter().any(|d| d.1 == DownReason::PeerDeleted));
    assert_matching(&n);
    assert_eq!(n.live(A).len(), 1);
    assert_ne!(n.live(A)[0].inbound.spi, old);
}

fn short_lifetimes(pfs: Option<DhGroup>) -> Net {
    let mut ta = tunnel(A, B, "10.1.0.0", "10.2.0.0", &gcm_x25519());
    let mut tb = tunnel(B, A, "10.2.0.0", "10.1.0.0", &gcm_x25519());
    for t in [&mut ta, &mut tb] {
        t.child_lifetime = Duration::from_secs(60);
        t.pfs = pfs;
        t.ike_policies[0].groups = vec![DhGroup::Curve25519, DhGroup::Ecp256];
        t.ike_policies[0].lifetime = Some(Duration::from_secs(100));
    }
    let mut n = Net::new(ta, tb, globals(), globals());
    n.cmd(A, Command::Initiate { tunnel: format!("MAP:{B}") });
    n
}

#[test]
fn child_rekey_with_pfs_replaces_sa_without_gap() {
    let mut n = short_lifetimes(Some(DhGroup::Ecp256));
    let first = n.live(A)[0].clone();
    n.advance(Duration::from_secs(58));
    let ups = n.ups(A);
    let rekeyed: Vec<_> = ups.iter().filter(|u| u.replaces_spi_in == Some(first.inbound.spi)).collect();
    assert_eq!(rekeyed.len(), 1, "{:?}", n.ev(A));
    assert!(n.downs(A).iter().any(|d| d.0 == first.inbound.spi && d.1 == DownReason::Rekeyed));
    assert_matching(&n);
    // Up for the new SA comes before Down for the old one.
    let ev = n.ev(A);
    let up_pos = ev.iter().position(|e| matches!(e, Event::ChildSaUp(u) if u.replaces_spi_in == Some(first.inbound.spi))).unwrap();
    let down_pos = ev.iter().position(|e| matches!(e, Event::ChildSaDown { spi_in, .. } if *spi_in == first.inbound.spi)).unwrap();
    assert!(up_pos < down_pos);
    assert_ne!(rekeyed[0].outbound.enc_key, first.outbound.enc_key);
}

#[test]
fn many_rekeys_keep_one_live_child() {
    let mut n = short_lifetimes(None);
    n.advance(Duration::from_secs(600));
    assert_matching(&n);
    assert_eq!(n.live(A).len(), 1, "{:?}", n.live(A).iter().map(|u| u.inbound.spi).collect::<Vec<_>>());
    assert_eq!(n.live(B).len(), 1);
    // IKE SA rekeyed several times, never went down.
    assert!(n.ev(A).iter().filter(|e| matches!(e, Event::IkeSaRekeyed { .. })).count() >= 3);
    assert!(!n.ev(A).iter().any(|e| matches!(e, Event::IkeSaDown { .. })));
    assert_eq!(n.eps[&ip(A)].ike_sas().len(), 1);
    assert_eq!(n.eps[&ip(B)].ike_sas().len(), 1);
}

#[test]
fn kilobyte_lifetime_triggers_rekey() {
    let mut ta = tunnel(A, B, "10.1.0.0", "10.2.0.0", &gcm_x25519());
    ta.child_lifetime_kilobytes = Some(1000);
    let tb = tunnel(B, A, "10.2.0.0", "10.1.0.0", &gcm_x25519());
    let mut n = Net::new(ta, tb, globals(), globals());
    n.cmd(A, Command::Initiate { tunnel: format!("MAP:{B}") });
    let spi = n.live(A)[0].inbound.spi;
    n.cmd(A, Command::ChildSaBytes { spi_in: spi, bytes: 950 * 1024 });
    assert!(n.ups(A).iter().any(|u| u.replaces_spi_in == Some(spi)));
    assert_matching(&n);
}

#[test]
fn simultaneous_child_rekey_leaves_one_sa() {
    // Both sides cross their kilobyte soft limit at once and rekey before seeing the other's request.
    let mut ta = tunnel(A, B, "10.1.0.0", "10.2.0.0", &gcm_x25519());
    let mut tb = tunnel(B, A, "10.2.0.0", "10.1.0.0", &gcm_x25519());
    ta.child_lifetime_kilobytes = Some(10);
    tb.child_lifetime_kilobytes = Some(10);
    let mut n = Net::new(ta, tb, globals(), globals());
    n.cmd(A, Command::Initiate { tunnel: format!("MAP:{B}") });
    let a_spi = n.live(A)[0].inbound.spi;
    let b_spi = n.live(B)[0].inbound.spi;
    let now = n.now;
    n.eps.get_mut(&ip(A)).unwrap().handle_command(now, Command::ChildSaBytes { spi_in: a_spi, bytes: 20 * 1024 });
    n.eps.get_mut(&ip(B)).unwrap().handle_command(now, Command::ChildSaBytes { spi_in: b_spi, bytes: 20 * 1024 });
    n.run();
    n.advance(Duration::from_secs(30));
    assert_matching(&n);
    assert_eq!(n.live(A).len(), 1, "A: {:?}", n.ev(A));
    assert_eq!(n.live(B).len(), 1, "B: {:?}", n.ev(B));
    assert_eq!(n.eps[&ip(A)].child_sas().len(), 1);
    assert_eq!(n.eps[&ip(B)].child_sas().len(), 1);
}

#[test]
fn garbage_never_panics_the_engine() {
    let mut n = up_pair(&gcm_x25519());
    let mut rng = 12345u64;
    let msgs: Vec<Vec<u8>> = n.log.iter().map(|(_, t)| t.data.clone()).collect();
    let ep = n.eps.get_mut(&ip(B)).unwrap();
    let p = Path { local: SocketAddr::new(ip(B), 4500), remote: SocketAddr::new(ip(A), 4500) };
    for i in 0..20000 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut m = msgs[i % msgs.len()].clone();
        let flips = 1 + (rng % 4) as usize;
        for k in 0..flips {
            let pos = ((rng >> (8 * k)) as usize) % m.len();
            m[pos] ^= (rng >> 32) as u8 | 1;
        }
        if rng.is_multiple_of(7) {
            m.truncate((rng as usize >> 5) % (m.len() + 1));
        }
        let _ = ep.handle_datagram(n.now, p, &m);
        while ep.poll_transmit().is_some() {}
    }
    let _ = ep.handle_datagram(n.now, p, &[]);
}

/// Hours of rekeys (CHILD every ~20 s, IKE every ~30 s, with PFS) over a lossy network: the
/// tunnel never goes down and both sides end with exactly one matching CHILD_SA.
#[test]
fn rekey_soak_with_loss() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    for (seed, loss) in std::env::var("SOAK_ONLY").map(|v| vec![(v.parse::<u64>().unwrap(), 100u64)]).unwrap_or(vec![(11u64, 0u64), (12, 50), (13, 150), (14, 0), (15, 100), (16, 200), (17, 0), (18, 300), (19, 100), (20, 0)]) {
        let mut ta = tunnel(A, B, "10.1.0.0", "10.2.0.0", &cbc_modp());
        let mut tb = tunnel(B, A, "10.2.0.0", "10.1.0.0", &cbc_modp());
        for t in [&mut ta, &mut tb] {
            t.child_lifetime = Duration::from_secs(20);
            t.pfs = Some(DhGroup::Curve25519);
            t.ike_policies[0].groups = vec![DhGroup::Curve25519];
            t.ike_policies[0].lifetime = Some(Duration::from_secs(30));
            t.dpd = Some(Dpd { threshold: Duration::from_secs(10), retry: Duration::from_secs(1) });
        }
        let g = Ikev2Globals { retransmit_base: Duration::from_millis(300), retransmit_tries: 6, ..Default::default() };
        let mut n = Net::new(ta, tb, g.clone(), g);
        n.seed = seed;
        n.lfsr ^= seed;
        n.cmd(A, Command::Initiate { tunnel: format!("MAP:{B}") });
        n.loss = loss;
        #[allow(clippy::disallowed_methods)] // wall time of the soak, for the log only
        let t0 = std::time::Instant::now();
        n.advance(Duration::from_secs(2 * 3600));
        eprintln!("seed {seed} loss {loss}: {:?} wall, {} datagrams", t0.elapsed(), n.log.len());
        if std::env::var("SOAK_HIST").is_ok() {
            let mut h: std::collections::BTreeMap<String, usize> = Default::default();
            for (from, t) in &n.log {
                let k = match wire::ike::Message::parse(&t.data) {
                    Ok(m) => format!("{from} {} resp={} next={:?}", m.header.exchange, m.header.is_response(), m.header.next_payload),
                    Err(e) => format!("{from} err {e}"),
                };
                *h.entry(k).or_default() += 1;
            }
            eprintln!("{h:#?}");
            let ev: std::collections::BTreeMap<String, usize> = n.ev(A).iter().map(|e| format!("{e:?}").split([' ', '(']).next().unwrap().to_string()).fold(Default::default(), |mut m, k| { *m.entry(k).or_default() += 1; m });
            eprintln!("A events {ev:?}");
        }
        n.loss = 0;
        // Let in-flight exchanges and grace timers settle.
        n.advance(Duration::from_secs(25));
        let (a, b) = (n.eps[&ip(A)].child_sas(), n.eps[&ip(B)].child_sas());
        if a.is_empty() || b.is_empty() { let ev: Vec<_> = n.ev(A).into_iter().filter(|e| !matches!(e, Event::IkeSaUp{..} | Event::IkeSaRekeyed{..})).collect(); let k = ev.len().saturating_sub(12); for e in &ev[k..] { eprintln!("A {e:?}"); } let ev: Vec<_> = n.ev(B).into_iter().filter(|e| !matches!(e, Event::IkeSaUp{..} | Event::IkeSaRekeyed{..})).collect(); let k = ev.len().saturating_sub(12); for e in &ev[k..] { eprintln!("B {e:?}"); } eprintln!("{:?}\n{:?}", n.eps[&ip(A)].ike_sas(), n.eps[&ip(B)].ike_sas()); }
        assert!(!a.is_empty() && !b.is_empty(), "seed {seed}: children {a:?} {b:?}");
        assert_matching(&n);
        if loss == 0 {
            assert!(!n.ev(A).iter().any(|e| matches!(e, Event::IkeSaDown { .. })), "seed {seed}: {:?}", n.ev(A).iter().filter(|e| matches!(e, Event::IkeSaDown { .. })).collect::<Vec<_>>());
            assert_eq!(a.len(), 1, "seed {seed}");
            assert_eq!(b.len(), 1, "seed {seed}");
            assert_eq!(n.live(A).len(), 1);
        }
        assert_eq!(n.eps[&ip(A)].ike_sas().iter().filter(|s| s.status == ike::IkeStatus::Ready).count(), 1, "seed {seed} loss {loss}: {:?}", n.eps[&ip(A)].ike_sas());
        // Every SA announced up was eventually announced down, except the live ones.
        for who in [A, B] {
            let live: Vec<u32> = n.eps[&ip(who)].child_sas().iter().map(|c| c.spi_in).collect();
            let mut announced: Vec<u32> = n.live(who).iter().map(|u| u.inbound.spi).collect();
            announced.sort();
            let mut l = live.clone();
            l.sort();
            assert_eq!(announced, l, "seed {seed} loss {loss} {who}: events and state agree");
        }
    }
}

#[test]
fn simultaneous_initiation_converges_to_one_sa() {
    let mut n = Net::pair(&gcm_x25519());
    let now = n.now;
    // Both daemons start at once and initiate before seeing the other's IKE_SA_INIT.
    n.eps.get_mut(&ip(A)).unwrap().handle_command(now, Command::Initiate { tunnel: format!("MAP:{B}") });
    n.eps.get_mut(&ip(B)).unwrap().handle_command(now, Command::Initiate { tunnel: format!("MAP:{A}") });
    n.run();
    n.advance(Duration::from_secs(30));
    for who in [A, B] {
        let sas = n.eps[&ip(who)].ike_sas();
        assert_eq!(sas.iter().filter(|s| s.status == ike::IkeStatus::Ready).count(), 1, "{who}: {sas:?}");
        assert_eq!(n.eps[&ip(who)].child_sas().len(), 1, "{who}");
        assert_eq!(n.live(who).len(), 1, "{who}: events agree with state");
    }
    assert_matching(&n);
    // The survivor is the SA initiated by the lower address (A).
    assert_eq!(n.eps[&ip(A)].ike_sas()[0].role, ike::Role::Initiator);
}

#[test]
fn long_outage_then_back_within_seconds() {
    let mut ta = tunnel(A, B, "10.1.0.0", "10.2.0.0", &gcm_x25519());
    ta.connection_type = ConnectionType::Bidirectional;
    let mut tb = tunnel(B, A, "10.2.0.0", "10.1.0.0", &gcm_x25519());
    tb.connection_type = ConnectionType::AnswerOnly;
    let mut n = Net::new(ta, tb.clone(), globals(), globals());
    n.cmd(A, Command::Initiate { tunnel: format!("MAP:{B}") });
    assert_matching(&n);
    // B loses power for two minutes and comes back without state; it never initiates.
    n.down.push(ip(B));
    n.advance(Duration::from_secs(120));
    assert!(n.ev(A).iter().any(|e| matches!(e, Event::IkeSaDown { reason: DownReason::PeerDead, .. })));
    n.restart(B, tb);
    n.down.clear();
    n.clear_events();
    n.advance(Duration::from_secs(5));
    assert_eq!(n.live(A).len(), 1, "A re-initiated within 5 s of B's return: {:?}", n.ev(A));
    assert_matching(&n);
}

/// Two crypto map entries to the same peer share one IKE SA, each with its own CHILD_SA and
/// selectors; the responder maps each CHILD_SA request to the entry whose selectors match.
#[test]
fn two_tunnels_to_one_peer_share_the_ike_sa() {
    let two = |local: &str, peer: &str, l: [&str; 2], r: [&str; 2]| {
        (0..2)
            .map(|i| {
                let mut t = tunnel(local, peer, l[i], r[i], &gcm_x25519());
                t.name = format!("MAP:{}", 10 * (i + 1));
                t
            })
            .collect::<Vec<_>>()
    };
    let ta = two(A, B, ["10.1.0.0", "10.1.1.0"], ["10.2.0.0", "10.2.1.0"]);
    let tb = two(B, A, ["10.2.0.0", "10.2.1.0"], ["10.1.0.0", "10.1.1.0"]);
    let mut n = Net::multi(ta, tb, globals(), globals());
    let now = n.now;
    // Both gateways bring up both tunnels at start.
    for (who, names) in [(A, ["MAP:10", "MAP:20"]), (B, ["MAP:10", "MAP:20"])] {
        for t in names {
            n.eps.get_mut(&ip(who)).unwrap().handle_command(now, Command::Initiate { tunnel: t.into() });
        }
    }
    n.run();
    n.advance(Duration::from_secs(40));
    for who in [A, B] {
        let ike: Vec<_> = n.eps[&ip(who)].ike_sas().into_iter().filter(|s| s.status == ike::IkeStatus::Ready).collect();
        assert_eq!(ike.len(), 1, "{who}: one IKE SA for the peer: {ike:?}");
        let children = n.eps[&ip(who)].child_sas();
        assert_eq!(children.len(), 2, "{who}: {children:?}");
        let mut names: Vec<_> = children.iter().map(|c| c.tunnel.clone()).collect();
        names.sort();
        assert_eq!(names, ["MAP:10", "MAP:20"]);
    }
    assert_matching(&n);
    for u in n.live(A) {
        let third = u.remote_ts[0].start_addr.octets()[2];
        assert_eq!(u.tunnel, if third == 0 { "MAP:10" } else { "MAP:20" }, "selectors belong to the tunnel");
    }
}

#[test]
fn rekey_responder_switches_outbound_only_when_the_initiator_has_the_sa() {
    let mut ta = tunnel(A, B, "10.1.0.0", "10.2.0.0", &gcm_x25519());
    ta.child_lifetime_kilobytes = Some(100);
    let tb = tunnel(B, A, "10.2.0.0", "10.1.0.0", &gcm_x25519());
    let mut n = Net::new(ta, tb, globals(), globals());
    n.cmd(A, Command::Initiate { tunnel: format!("MAP:{B}") });
    let old_a = n.live(A)[0].inbound.spi;
    let old_b = n.live(B)[0].inbound.spi;
    n.clear_events();
    n.cmd(A, Command::ChildSaBytes { spi_in: old_a, bytes: 95 * 1024 });
    // The initiator may send at once; the responder waits.
    let up_a = n.ups(A).into_iter().find(|u| u.replaces_spi_in == Some(old_a)).unwrap();
    assert!(up_a.outbound_now);
    let ev = n.ev(B);
    let up_pos = ev.iter().position(|e| matches!(e, Event::ChildSaUp(u) if u.replaces_spi_in == Some(old_b) && !u.outbound_now)).expect("responder's ChildSaUp with outbound_now false");
    let Event::ChildSaUp(up_b) = &ev[up_pos] else { unreachable!() };
    let switch = ev.iter().position(|e| matches!(e, Event::ChildSaOutbound { spi_in, .. } if *spi_in == up_b.inbound.spi)).expect("switch after the initiator's Delete");
    let down = ev.iter().position(|e| matches!(e, Event::ChildSaDown { spi_in, .. } if *spi_in == old_b)).unwrap();
    assert!(up_pos < switch && switch < down, "{ev:?}");
    assert_matching(&n);
}

#[test]
fn responder_forcing_udp_encapsulation_makes_the_initiator_float() {
    let ta = tunnel(A, B, "10.1.0.0", "10.2.0.0", &gcm_x25519());
    let mut tb = tunnel(B, A, "10.2.0.0", "10.1.0.0", &gcm_x25519());
    tb.force_udp_encap = true;
    let mut n = Net::new(ta, tb, globals(), globals());
    n.cmd(A, Command::Initiate { tunnel: format!("MAP:{B}") });
    assert_matching(&n);
    assert_eq!(n.live(A)[0].encap, esp::Encap::Udp { local_port: 4500, remote_port: 4500 });
    assert!(n.log.iter().skip(2).all(|(_, t)| t.path.local.port() == 4500));
}

#[test]
fn clear_during_child_rekey_installs_nothing_afterwards() {
    let mut ta = tunnel(A, B, "10.1.0.0", "10.2.0.0", &gcm_x25519());
    ta.child_lifetime_kilobytes = Some(100);
    let tb = tunnel(B, A, "10.2.0.0", "10.1.0.0", &gcm_x25519());
    let mut n = Net::new(ta, tb, globals(), globals());
    n.cmd(A, Command::Initiate { tunnel: format!("MAP:{B}") });
    let old = n.live(A)[0].inbound.spi;
    n.clear_events();
    let now = n.now;
    let ep = n.eps.get_mut(&ip(A)).unwrap();
    ep.handle_command(now, Command::ChildSaBytes { spi_in: old, bytes: 99 * 1024 });
    ep.handle_command(now, Command::ClearIkeSa { peer: None });
    n.run();
    let ev = n.ev(A);
    let down = ev.iter().position(|e| matches!(e, Event::IkeSaDown { .. })).unwrap();
    assert!(!ev[down..].iter().any(|e| matches!(e, Event::ChildSaUp(_))), "no CHILD_SA after the IKE SA went down: {ev:?}");
    assert!(n.live(A).is_empty());
    // The tunnel comes back by itself afterwards, with exactly one CHILD_SA.
    n.advance(Duration::from_secs(10));
    assert_eq!(n.live(A).len(), 1);
    assert_matching(&n);
}

mod certificates {
    //! IKE_AUTH with certificate signatures (RFC 7296 §2.15, RFC 7427), alone and mixed with a
    //! pre-shared key in the other direction, using run-time generated test certificates.
    use super::*;
    use crypto::sig::testpki::{TestCa, TestKey, Validity};
    use crypto::sig::{Credential, TrustAnchors};
    use ike::cert_auth::{CertAuth, LocalSigner, PeerValidator};
    use std::time::{SystemTime, UNIX_EPOCH};

    const NOW: i64 = 1_767_225_600; // 2026-01-01
    const VALID: Validity = Validity { not_before: NOW - 86_400, not_after: NOW + 365 * 86_400 };

    fn wall() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW as u64)
    }

    fn signer(ca: &TestCa, addr: &str, key: TestKey) -> LocalSigner {
        let issued = ca.issue(&format!("gw {addr}"), key, &[&format!("IP:{addr}")], VALID).unwrap();
        LocalSigner::new("TP", Credential::from_pem(&issued.cert_pem, "c", &issued.key_pem, "k").unwrap()).unwrap()
    }

    fn validator(ca: &TestCa) -> PeerValidator {
        PeerValidator::new(TrustAnchors::from_pem(&ca.cert_pem(), "ca.pem").unwrap()).unwrap()
    }

    fn net_with(a: CertAuth, b: CertAuth) -> Net {
        let mut n = Net::pair(&gcm_x25519());
        let now = n.now;
        for (who, auth) in [(A, a), (B, b)] {
            let ep = n.eps.get_mut(&ip(who)).unwrap();
            let peer = if who == A { B } else { A };
            assert!(ep.set_cert_auth(&format!("MAP:{peer}"), auth));
            ep.set_wall_clock(now, wall());
        }
        n
    }

    #[test]
    fn ecdsa_and_rsa_certificates_both_ways() {
        let ca = TestCa::new("holdfast test CA", TestKey::P256, VALID).unwrap();
        let a = CertAuth { local: Some(signer(&ca, A, TestKey::P256)), remote: Some(validator(&ca)) };
        let b = CertAuth { local: Some(signer(&ca, B, TestKey::Rsa(2048))), remote: Some(validator(&ca)) };
        let mut n = net_with(a, b);
        n.cmd(A, Command::Initiate { tunnel: format!("MAP:{B}") });
        assert_matching(&n);
        // The IKE_AUTH request carried a CERT and a signature AUTH (not the PSK MAC).
        let auth_bytes: usize = n
            .log
            .iter()
            .filter(|(from, t)| *from == ip(A) && wire::ike::Message::parse(&t.data).is_ok_and(|m| m.header.exchange == wire::ike::ExchangeType::IkeAuth))
            .map(|(_, t)| t.data.len())
            .sum();
        assert!(auth_bytes > 600, "certificate inside the IKE_AUTH request ({auth_bytes} bytes)");
    }

    #[test]
    fn certificate_one_way_psk_the_other() {
        let ca = TestCa::new("holdfast test CA", TestKey::P384, VALID).unwrap();
        let a = CertAuth { local: Some(signer(&ca, A, TestKey::P384)), remote: None };
        let b = CertAuth { local: None, remote: Some(validator(&ca)) };
        let mut n = net_with(a, b);
        n.cmd(A, Command::Initiate { tunnel: format!("MAP:{B}") });
        assert_matching(&n);
    }

    #[test]
    fn untrusted_or_expired_certificate_is_refused() {
        let ca = TestCa::new("holdfast test CA", TestKey::P256, VALID).unwrap();
        let rogue = TestCa::new("rogue CA", TestKey::P256, VALID).unwrap();
        let a = CertAuth { local: Some(signer(&rogue, A, TestKey::P256)), remote: Some(validator(&ca)) };
        let b = CertAuth { local: Some(signer(&ca, B, TestKey::P256)), remote: Some(validator(&ca)) };
        let mut n = net_with(a, b);
        n.cmd(A, Command::Initiate { tunnel: format!("MAP:{B}") });
        assert!(n.ups(A).is_empty() && n.ups(B).is_empty());
        assert!(n.ev(B).iter().any(|e| matches!(e, Event::IkeNegotiationFailed { .. })));

        // A valid chain, but the wall clock says it expired.
        let a = CertAuth { local: Some(signer(&ca, A, TestKey::P256)), remote: Some(validator(&ca)) };
        let b = CertAuth { local: Some(signer(&ca, B, TestKey::P256)), remote: Some(validator(&ca)) };
        let mut n = net_with(a, b);
        let later = n.now;
        n.eps.get_mut(&ip(B)).unwrap().set_wall_clock(later, wall() + Duration::from_secs(400 * 86_400));
        n.cmd(A, Command::Initiate { tunnel: format!("MAP:{B}") });
        assert!(n.ups(B).is_empty());
    }
}

/// Both gateways initiate while every response is lost: each holds a half-open responder SA for
/// the other's attempt. Once the network is clean the tunnel must come back without traffic.
#[test]
fn crossed_attempts_with_lost_responses_recover() {
    let mut n = Net::pair(&gcm_x25519());
    n.drop_responses = true;
    let now = n.now;
    n.eps.get_mut(&ip(A)).unwrap().handle_command(now, Command::Initiate { tunnel: format!("MAP:{B}") });
    n.eps.get_mut(&ip(B)).unwrap().handle_command(now, Command::Initiate { tunnel: format!("MAP:{A}") });
    n.run();
    n.advance(Duration::from_secs(12));
    n.drop_responses = false;
    n.advance(Duration::from_secs(60));
    assert_eq!(n.live(A).len(), 1, "{:?}", n.ev(A));
    assert_matching(&n);
}

/// A NAT in front of B forgets its mapping: B's next request comes from a new port; A follows
/// (RFC 7296 §2.23) and tells the daemon where ESP must go now.
#[test]
fn nat_rebinding_moves_esp_destination() {
    let mut ta = tunnel(A, B, "10.1.0.0", "10.2.0.0", &gcm_x25519());
    ta.force_udp_encap = true;
    let tb = tunnel(B, A, "10.2.0.0", "10.1.0.0", &gcm_x25519());
    let mut n = Net::new(ta, tb, globals(), globals());
    n.cmd(A, Command::Initiate { tunnel: format!("MAP:{B}") });
    assert_matching(&n);
    n.b_nat_port = Some(61000);
    // B's liveness check goes out after its DPD threshold and arrives from the new port.
    n.advance(Duration::from_secs(12));
    let (_, c) = n.encap_changes.iter().find(|(who, _)| *who == ip(A)).expect("A reports the move");
    assert_eq!(c.encap, esp::Encap::Udp { local_port: 4500, remote_port: 61000 });
    assert_eq!(c.spi_in, vec![n.live(A)[0].inbound.spi]);
    assert_eq!(n.eps[&ip(A)].ike_sas()[0].remote.port(), 61000);
}

/// Issue 3: while traffic waits for a tunnel, `Initiate` sends the pending IKE_SA_INIT again at
/// once (at most every KNOCK_INTERVAL) instead of at its backed-off retransmission time, and
/// those extra sends do not use up retransmission tries.
#[test]
fn initiate_knocks_a_pending_negotiation_without_using_tries() {
    let mut ta = tunnel(A, B, "10.1.0.0", "10.2.0.0", &gcm_x25519());
    ta.connection_type = ConnectionType::Bidirectional;
    let mut tb = tunnel(B, A, "10.2.0.0", "10.1.0.0", &gcm_x25519());
    tb.connection_type = ConnectionType::AnswerOnly;
    let g = Ikev2Globals { retransmit_base: Duration::from_secs(4), retransmit_tries: 3, ..Default::default() };
    let mut n = Net::new(ta, tb, g.clone(), g);
    n.down.push(ip(B));
    let name = format!("MAP:{B}");
    n.cmd(A, Command::Initiate { tunnel: name.clone() });
    let sent = |n: &Net| n.log.iter().filter(|(k, _)| *k == ip(A)).count();
    assert_eq!(sent(&n), 1);
    // Too soon after the first send: no knock.
    n.advance(Duration::from_millis(200));
    n.cmd(A, Command::Initiate { tunnel: name.clone() });
    assert_eq!(sent(&n), 1, "a knock within KNOCK_INTERVAL of the last send is suppressed");
    // Five knocks 600 ms apart: each one leaves at once, the 4 s retransmission has not fired.
    for i in 0..5 {
        n.advance(Duration::from_millis(600));
        n.cmd(A, Command::Initiate { tunnel: name.clone() });
        assert_eq!(sent(&n), 2 + i, "knock {i}");
    }
    // The path comes back: the next knock completes the exchange at once.
    n.down.clear();
    n.advance(Duration::from_millis(600));
    n.cmd(A, Command::Initiate { tunnel: name });
    assert_eq!(n.live(A).len(), 1, "up right after the knock: {:?}", n.ev(A));
    assert_matching(&n);
    assert!(!n.ev(A).iter().any(|e| matches!(e, Event::IkeNegotiationFailed { .. })), "knocks did not exhaust the tries");
}

/// Issue 3: `CheckLiveness` sends a liveness check at once on a silent path, knocks it while it
/// stays unanswered, and `last_heard` moves as soon as the peer answers.
#[test]
fn check_liveness_probes_now_and_last_heard_moves_when_the_path_returns() {
    let mut n = up_pair(&gcm_x25519());
    let name = format!("MAP:{B}");
    let t0 = n.now;
    assert!(n.eps[&ip(A)].last_heard(&name).is_some_and(|t| t <= t0));
    assert!(n.eps[&ip(A)].last_heard("nope").is_none());
    n.down.push(ip(B));
    n.advance(Duration::from_secs(1));
    let before = n.log.len();
    n.cmd(A, Command::CheckLiveness { tunnel: name.clone() });
    assert_eq!(n.log.len(), before + 1, "a liveness check left at once, long before the 10 s idle threshold");
    n.advance(Duration::from_millis(700));
    n.cmd(A, Command::CheckLiveness { tunnel: name.clone() });
    assert_eq!(n.log.len(), before + 2, "the unanswered check is knocked again");
    let asked = n.now;
    n.down.clear();
    n.advance(Duration::from_millis(600));
    n.cmd(A, Command::CheckLiveness { tunnel: name.clone() });
    let heard = n.eps[&ip(A)].last_heard(&name).expect("still up");
    assert!(heard > asked, "the answer to the knock was heard");
    assert!(!n.ev(A).iter().any(|e| matches!(e, Event::IkeSaDown { .. })));
}
