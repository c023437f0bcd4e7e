//! Drives one `ike::Endpoint` over real UDP sockets against a real peer (strongSwan charon),
//! for interop checks. Only here do we read the real clock. It prints the events the daemon
//! would act on and, to prove the negotiated keys in both directions, sends ICMP echo requests
//! 10.1.0.1 -> 10.2.0.1 through the newest CHILD_SA (ESP in UDP 4500, sealed with the `esp`
//! crate) and counts the echo replies it can decrypt.
//!
//!     ike_probe --local 198.51.100.1 --peer 198.51.100.2 --suite gcm|cbc|cbc128sha1|asa \
//!               [--responder] [--seconds 20] [--lifetime 3600] [--ike-lifetime 86400]
//!               [--pfs 19] [--clear-at S] [--frag-mtu N] [--delay-ms N]
//!               [--cert a.pem --key a.key --ca ca.pem]
//!
//! See `ike_probe_lab.sh` next to this file for the namespace setup with charon.

// The one place of the crate that reads the real clock: this is the I/O shell around the engine.
#![allow(clippy::disallowed_methods)]

use ike::{Command, Endpoint, Event, Path};
use policy::*;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let local: IpAddr = get("--local").unwrap_or("198.51.100.1".into()).parse().expect("--local");
    let peer: IpAddr = get("--peer").unwrap_or("198.51.100.2".into()).parse().expect("--peer");
    let suite = get("--suite").unwrap_or("gcm".into());
    let responder = args.iter().any(|a| a == "--responder");
    let seconds: u64 = get("--seconds").map(|s| s.parse().expect("--seconds")).unwrap_or(20);
    let lifetime: u64 = get("--lifetime").map(|s| s.parse().expect("--lifetime")).unwrap_or(3600);
    let ike_lifetime: u64 = get("--ike-lifetime").map(|s| s.parse().expect("--ike-lifetime")).unwrap_or(86400);
    let pfs = get("--pfs").map(|s| DhGroup::from_number(s.parse().expect("--pfs")).expect("group"));
    let clear_at: Option<u64> = get("--clear-at").map(|s| s.parse().expect("--clear-at"));
    let frag_mtu: Option<u16> = get("--frag-mtu").map(|s| s.parse().expect("--frag-mtu"));
    // Certificate authentication both ways: our certificate/key and the CA the peer's must
    // chain to (PEM files).
    let cert = get("--cert").map(|c| (c, get("--key").expect("--key"), get("--ca").expect("--ca")));

    let (ike_enc, ike_integ, groups, esp_enc, esp_integ) = match suite.as_str() {
        "gcm" => (vec![Encryption::AesGcm256], vec![Integrity::Null], vec![DhGroup::Curve25519], vec![Encryption::AesGcm256], vec![]),
        "cbc" => (vec![Encryption::AesCbc256], vec![Integrity::Sha256], vec![DhGroup::Modp2048], vec![Encryption::AesCbc256], vec![Integrity::Sha256]),
        "cbc128sha1" => (vec![Encryption::AesCbc128], vec![Integrity::Sha1], vec![DhGroup::Modp2048], vec![Encryption::AesCbc128], vec![Integrity::Sha1]),
        // The ASA-style policy of issue 2: everything allowed, our preference first.
        "asa" => (
            vec![Encryption::AesGcm256, Encryption::AesCbc256],
            vec![Integrity::Null, Integrity::Sha256],
            vec![DhGroup::Ecp256, DhGroup::Modp2048, DhGroup::Curve25519],
            vec![Encryption::AesGcm256, Encryption::AesCbc256],
            vec![Integrity::Sha256, Integrity::Sha1],
        ),
        other => panic!("unknown suite {other}"),
    };
    let prf = if suite == "cbc128sha1" { Prf::Sha1 } else { Prf::Sha256 };
    let tunnel = TunnelPolicy {
        name: "PROBE:10".into(),
        local_addr: local,
        peer_addr: peer,
        outside_ifname: "probe".into(),
        local_ts: vec![TrafficSelector::from_net(Ipv4Net::new("10.1.0.0".parse().unwrap(), 24), None)],
        remote_ts: vec![TrafficSelector::from_net(Ipv4Net::new("10.2.0.0".parse().unwrap(), 24), None)],
        ike_policies: vec![Ikev2Policy {
            priority: 10,
            encryption: ike_enc,
            integrity: ike_integ,
            groups,
            prf: vec![prf],
            lifetime: Some(Duration::from_secs(ike_lifetime)),
        }],
        esp_proposals: vec![IpsecProposal { name: "P1".into(), encryption: esp_enc, integrity: esp_integ }],
        pfs,
        child_lifetime: Duration::from_secs(lifetime),
        child_lifetime_kilobytes: None,
        local_psk: Secret("probe-lab-only-psk".into()),
        remote_psk: Secret("probe-lab-only-psk".into()),
        dpd: Some(Dpd { threshold: Duration::from_secs(10), retry: Duration::from_secs(2) }),
        nat_t_disable: false,
        force_udp_encap: false,
        connection_type: if responder { ConnectionType::AnswerOnly } else { ConnectionType::Bidirectional },
    };
    let globals = Ikev2Globals { fragmentation_mtu: frag_mtu.or(Some(1280)), ..Default::default() };
    let mut ep = Endpoint::new(vec![tunnel], globals, Box::new(crypto::OsRandom::new()));
    if let Some((c, k, ca)) = &cert {
        use crypto::sig::{Credential, TrustAnchors};
        use ike::cert_auth::{CertAuth, LocalSigner, PeerValidator};
        let cred = Credential::load(std::path::Path::new(c), std::path::Path::new(k)).expect("certificate/key");
        let anchors = TrustAnchors::load(std::path::Path::new(ca)).expect("CA file");
        let auth = CertAuth { local: Some(LocalSigner::new("PROBE", cred).expect("signer")), remote: Some(PeerValidator::new(anchors).expect("validator")) };
        assert!(ep.set_cert_auth("PROBE:10", auth));
        ep.set_wall_clock(Instant::now(), std::time::SystemTime::now());
    }
    let s500 = UdpSocket::bind(SocketAddr::new(local, 500)).expect("bind 500");
    let s4500 = UdpSocket::bind(SocketAddr::new(local, 4500)).expect("bind 4500");
    s500.set_nonblocking(true).unwrap();
    s4500.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let initiate_at = start + Duration::from_millis(get("--delay-ms").map(|s| s.parse().expect("--delay-ms")).unwrap_or(0));
    let mut initiated = responder;
    let mut cleared = false;
    let mut esp_packets = 0u64;
    // ESP check of the negotiated keys: ICMP echo 10.1.0.1 -> 10.2.0.1 through the CHILD_SA;
    // charon (libipsec) decrypts it, its kernel answers, and the reply comes back encrypted.
    let mut esp: Option<(esp::OutboundSa, esp::InboundSa, SocketAddr)> = None;
    let mut pings_sent = 0u16;
    let mut replies = 0u64;
    let mut esp_errors = 0u64;
    let mut last_ping = start;
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        if now - start > Duration::from_secs(seconds) {
            break;
        }
        if !initiated && now >= initiate_at {
            initiated = true;
            ep.handle_command(now, Command::Initiate { tunnel: "PROBE:10".into() });
        }
        if let Some(c) = clear_at {
            if !cleared && now - start > Duration::from_secs(c) {
                cleared = true;
                println!("[{:6.2}] clear crypto ikev2 sa", (now - start).as_secs_f64());
                ep.handle_command(now, Command::ClearIkeSa { peer: None });
            }
        }
        for (sock, port) in [(&s500, 500u16), (&s4500, 4500u16)] {
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let mut data = &buf[..n];
                if port == 4500 {
                    // RFC 3948 §2.2: IKE behind a 4-byte zero marker; anything else is ESP or a keepalive.
                    if n >= 4 && data[..4] == [0, 0, 0, 0] {
                        data = &data[4..];
                    } else {
                        esp_packets += 1;
                        if n > 1 {
                            let mut pkt = buf[..n].to_vec();
                            if let Some((_, inb, _)) = esp.as_mut() {
                                match inb.open(&mut pkt) {
                                    Ok(o) if o.inner.len() >= 28 && o.inner[9] == 1 && o.inner[20] == 0 => replies += 1,
                                    Ok(_) => {}
                                    Err(_) => esp_errors += 1,
                                }
                            }
                        }
                        continue;
                    }
                }
                let path = Path { local: SocketAddr::new(local, port), remote: from };
                if let Err(e) = ep.handle_datagram(Instant::now(), path, data) {
                    println!("[{:6.2}] drop from {from}: {e}", (Instant::now() - start).as_secs_f64());
                }
            }
        }
        if ep.poll_timeout().is_some_and(|(t, _)| t <= Instant::now()) {
            ep.handle_timeout(Instant::now());
        }
        if let Some((out, _, remote)) = esp.as_mut() {
            if now - last_ping > Duration::from_millis(500) {
                last_ping = now;
                pings_sent += 1;
                let inner = icmp_echo([10, 1, 0, 1], [10, 2, 0, 1], pings_sent);
                let mut pkt = vec![0u8; out.sealed_len(inner.len())];
                if let Ok(n) = out.seal(&inner, esp::NEXT_HEADER_IPV4, &mut pkt) {
                    let _ = s4500.send_to(&pkt[..n], *remote);
                }
            }
        }
        while let Some(t) = ep.poll_transmit() {
            let sock = if t.path.local.port() == 4500 { &s4500 } else { &s500 };
            let mut d = Vec::with_capacity(t.data.len() + 4);
            if t.path.local.port() == 4500 {
                d.extend_from_slice(&[0, 0, 0, 0]);
            }
            d.extend_from_slice(&t.data);
            if let Err(e) = sock.send_to(&d, t.path.remote) {
                println!("send to {}: {e}", t.path.remote);
            }
        }
        while let Some(e) = ep.poll_event() {
            let ts = (Instant::now() - start).as_secs_f64();
            if let Event::ChildSaUp(u) = &e {
                if let (Ok(o), Ok(i)) = (esp::OutboundSa::new(&u.outbound), esp::InboundSa::new(&u.inbound)) {
                    let remote = match u.encap {
                        esp::Encap::Udp { remote_port, .. } => SocketAddr::new(u.peer, remote_port),
                        esp::Encap::Native => SocketAddr::new(u.peer, 4500),
                    };
                    esp = Some((o, i, remote));
                }
            }
            match &e {
                Event::ChildSaUp(u) => println!(
                    "[{ts:6.2}] CHILD_SA UP tunnel={} in={:#010x} out={:#010x} {:?}/{:?} esn={} encap={:?} local_ts={:?} remote_ts={:?} replaces={:?}",
                    u.tunnel, u.inbound.spi, u.outbound.spi, u.inbound.encryption, u.inbound.integrity, u.inbound.esn, u.encap,
                    u.local_ts.iter().map(|t| format!("{}-{}", t.start_addr, t.end_addr)).collect::<Vec<_>>(),
                    u.remote_ts.iter().map(|t| format!("{}-{}", t.start_addr, t.end_addr)).collect::<Vec<_>>(),
                    u.replaces_spi_in.map(|s| format!("{s:#010x}"))
                ),
                other => println!("[{ts:6.2}] {other:?}"),
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("--- ike_sas");
    for s in ep.ike_sas() {
        println!("{s:?}");
    }
    println!("--- child_sas");
    for c in ep.child_sas() {
        println!("{c:?}");
    }
    println!("ESP: {pings_sent} echo requests sent through the CHILD_SA, {replies} echo replies decrypted, {esp_errors} ESP errors, {esp_packets} ESP packets received");
}

/// An IPv4 ICMP echo request with correct checksums.
fn icmp_echo(src: [u8; 4], dst: [u8; 4], seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; 28 + 32];
    let len = p.len() as u16;
    p[0] = 0x45;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p[8] = 64;
    p[9] = 1;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20] = 8;
    p[24..26].copy_from_slice(&0x4242u16.to_be_bytes());
    p[26..28].copy_from_slice(&seq.to_be_bytes());
    let c = checksum(&p[20..]);
    p[22..24].copy_from_slice(&c.to_be_bytes());
    p
}

fn checksum(d: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in d.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}
