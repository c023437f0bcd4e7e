//! A throwaway TLS-only head-end around the engine, to check the engine against the real
//! openconnect client (no TUN, no DTLS): authentication, the CONNECT head, CSTP DPD/keepalive,
//! and the logout at the end. Run inside a network namespace (see README "Checked against
//! openconnect 9.01"):
//!
//!     oc_probe ADDR:PORT PINFILE SECONDS
//!
//! Writes the server key's `pin-sha256:` for `openconnect --servercert` to PINFILE, serves for
//! SECONDS, prints every engine event and transmit summary, and exits non-zero if no session
//! came up and ended cleanly.

#![allow(clippy::disallowed_methods)] // this example is its own daemon: it reads the clock

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyconnect::{Channel, ConnInfo, Event, HttpOutcome, Server, TlsVersion};
use openssl::asn1::Asn1Time;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{SslAcceptor, SslMethod, SslStream, SslVersion};
use openssl::x509::{X509NameBuilder, X509};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:8443".into());
    let pinfile = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "/tmp/oc_probe.pin".into());
    let secs: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(30);

    let key = PKey::from_ec_key(
        EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
    )
    .unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "holdfast-probe").unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = b.build();
    let spki = key.public_key_to_der().unwrap();
    let pin = format!(
        "pin-sha256:{}",
        openssl::base64::encode_block(&openssl::sha::sha256(&spki))
    );
    std::fs::write(&pinfile, &pin).unwrap();

    let mut acc = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
    acc.set_private_key(&key).unwrap();
    acc.set_certificate(&cert).unwrap();
    let acc = Arc::new(acc.build());

    let mut cfg = anyconnect::Config::default();
    cfg.users.push(anyconnect::User {
        name: "vpn".into(),
        password_hash: "plain:secret".into(),
    });
    cfg.verifier = anyconnect::plain_verifier();
    let mut pol = anyconnect::GroupPolicy::default();
    pol.split_include.push(anyconnect::Ipv4Net {
        addr: "10.1.0.0".parse().unwrap(),
        prefix: 24,
    });
    pol.dpd_client = Some(Duration::from_secs(5));
    pol.dpd_gateway = Some(Duration::from_secs(3));
    cfg.group_policies.insert("ac_users_group".into(), pol);
    cfg.pools.insert(
        "VPNPOOL".into(),
        anyconnect::AddressPool {
            first: "10.99.0.100".parse().unwrap(),
            last: "10.99.0.199".parse().unwrap(),
            mask: "255.255.255.0".parse().unwrap(),
        },
    );
    for (name, alias) in [("RA", "RA"), ("OTHER", "Other")] {
        cfg.tunnel_groups.push(anyconnect::TunnelGroup {
            name: name.into(),
            aliases: vec![alias.into()],
            default_group_policy: "ac_users_group".into(),
            address_pools: vec!["VPNPOOL".into()],
            authentication: anyconnect::AuthMethod::Aaa,
        });
    }
    let start = Instant::now();
    let srv = Arc::new(Mutex::new(Server::new(
        start,
        cfg,
        Box::new(crypto::OsRandom::new()),
    )));
    let outcome = Arc::new(Mutex::new((0u32, 0u32))); // (sessions up, sessions down by logout)

    let listener = TcpListener::bind(&addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    println!("listening on {addr}, {pin}");
    while start.elapsed() < Duration::from_secs(secs) {
        match listener.accept() {
            Ok((tcp, _)) => {
                let (acc, srv, outcome) = (acc.clone(), srv.clone(), outcome.clone());
                std::thread::spawn(move || serve(&acc, tcp, &srv, &outcome));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
        let mut s = srv.lock().unwrap();
        if s.poll_timeout().is_some_and(|(t, _)| t <= Instant::now()) {
            s.handle_timeout(Instant::now());
        }
        drain(&mut s, None, &outcome);
    }
    let s = srv.lock().unwrap();
    print!(
        "{}",
        s.show_vpn_sessiondb_anyconnect(Instant::now(), SystemTime::now())
    );
    println!("stats: {:?}", s.stats());
    let (up, down) = *outcome.lock().unwrap();
    println!("sessions up {up}, ended by logout {down}");
    std::process::exit(if up >= 1 && down >= 1 { 0 } else { 1 });
}

fn serve(acc: &SslAcceptor, tcp: TcpStream, srv: &Mutex<Server>, outcome: &Mutex<(u32, u32)>) {
    let Ok(mut tls) = acc.accept(tcp) else { return };
    let ssl = tls.ssl();
    let conn = ConnInfo {
        peer: tls.get_ref().peer_addr().unwrap(),
        tls_version: if ssl.version2() == Some(SslVersion::TLS1_3) {
            TlsVersion::Tls13
        } else {
            TlsVersion::Tls12
        },
        tls_cipher: ssl
            .current_cipher()
            .map(|c| c.name().to_string())
            .unwrap_or_default(),
        client_cert: None,
    };
    println!(
        "TLS from {} {:?} {}",
        conn.peer, conn.tls_version, conn.tls_cipher
    );
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let session = loop {
        let out = srv.lock().unwrap().handle_http(Instant::now(), &conn, &buf);
        match out {
            Ok(HttpOutcome::NeedMore) => match tls.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            },
            Ok(HttpOutcome::Respond {
                consumed,
                bytes,
                close,
            }) => {
                println!(
                    "<- {}",
                    String::from_utf8_lossy(&buf[..consumed])
                        .lines()
                        .next()
                        .unwrap_or("")
                );
                println!(
                    "-> {}",
                    String::from_utf8_lossy(&bytes).lines().next().unwrap_or("")
                );
                let _ = tls.write_all(&bytes);
                buf.drain(..consumed);
                drain(&mut srv.lock().unwrap(), None, outcome);
                if close {
                    return;
                }
            }
            Ok(HttpOutcome::Tunnel {
                consumed,
                bytes,
                session,
                dtls,
            }) => {
                println!(
                    "-> tunnel {session:?} dtls {dtls:?}\n{}",
                    String::from_utf8_lossy(&bytes)
                );
                let _ = tls.write_all(&bytes);
                buf.drain(..consumed);
                break session;
            }
            Err(r) => {
                println!("reject: {}", r.error);
                let _ = tls.write_all(&r.response);
                return;
            }
        }
    };
    tls.get_ref()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut pending = buf;
    loop {
        {
            let mut s = srv.lock().unwrap();
            if !pending.is_empty() {
                if let Err(e) = s.handle_tls_data(Instant::now(), session, &pending) {
                    println!("tunnel error {e}");
                    s.handle_tls_closed(Instant::now(), session);
                    drain(&mut s, Some(&mut tls), outcome);
                    return;
                }
                pending.clear();
            }
            if s.poll_timeout().is_some_and(|(t, _)| t <= Instant::now()) {
                s.handle_timeout(Instant::now());
            }
            if drain(&mut s, Some(&mut tls), outcome) {
                return;
            }
        }
        match tls.read(&mut chunk) {
            Ok(0) => {
                let mut s = srv.lock().unwrap();
                s.handle_tls_closed(Instant::now(), session);
                drain(&mut s, None, outcome);
                return;
            }
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                let mut s = srv.lock().unwrap();
                s.handle_tls_closed(Instant::now(), session);
                drain(&mut s, None, outcome);
                return;
            }
        }
    }
}

/// Drains the engine; returns true when the TLS connection must close.
fn drain(
    s: &mut Server,
    mut tls: Option<&mut SslStream<TcpStream>>,
    outcome: &Mutex<(u32, u32)>,
) -> bool {
    while let Some(t) = s.poll_transmit() {
        let ty = if t.channel == Channel::Tls {
            t.data.get(6).copied()
        } else {
            t.data.first().copied()
        };
        println!(
            "transmit {:?} {:?} type {:?} {} bytes",
            t.session,
            t.channel,
            ty,
            t.data.len()
        );
        if let (Some(tls), Channel::Tls) = (tls.as_deref_mut(), t.channel) {
            let _ = tls.write_all(t.data);
        }
    }
    while let Some(p) = s.poll_packet() {
        println!("packet from {:?}: {} bytes", p.session, p.data.len());
    }
    let mut close = false;
    while let Some(e) = s.poll_event() {
        match &e {
            Event::Syslog(l) => println!("{}", l.asa()),
            Event::SessionUp { .. } => {
                outcome.lock().unwrap().0 += 1;
                println!("{e:?}");
            }
            Event::SessionDown { reason, .. } => {
                if *reason == anyconnect::DisconnectReason::UserRequested {
                    outcome.lock().unwrap().1 += 1;
                }
                println!("{e:?}");
            }
            Event::CloseTls { .. } => {
                close = true;
                println!("{e:?}");
            }
            _ => println!("{e:?}"),
        }
    }
    close
}
