//! Attacker-controlled input never panics the engine and never disturbs other sessions; many
//! sessions at once keep their state.

#![allow(clippy::disallowed_methods)] // the virtual clock needs some starting Instant

mod common;

use std::time::{Duration, Instant};

use anyconnect::*;
use common::{between, conn_at, pool, respond, set_cookie, tunnel_group, user};
use proptest::prelude::*;

fn config(pool_last: &str) -> Config {
    Config {
        limits: Limits {
            pending_auth_per_peer: 1000,
            ..Limits::default()
        },
        ..common::config_of(
            vec![user("u", "pw")],
            vec![tunnel_group("G", "G", "p", "pool", AuthMethod::Aaa)],
            vec![("p", GroupPolicy::default())],
            vec![("pool", AddressPool { mask: "255.255.0.0".parse().unwrap(), ..pool("10.99.0.1", pool_last) })],
        )
    }
}

fn conn(i: u32) -> ConnInfo {
    ConnInfo {
        tls_cipher: "ECDHE-RSA-AES128-GCM-SHA256".into(),
        ..conn_at(std::net::SocketAddr::new(
            std::net::IpAddr::V4((0xc633_6400 + (i % 200)).into()),
            (1024 + i % 60000) as u16,
        ))
    }
}

fn post(body: &str, cookie: Option<&str>) -> Vec<u8> {
    let c = cookie
        .map(|c| format!("Cookie: webvpncontext={c}\r\n"))
        .unwrap_or_default();
    format!(
        "POST / HTTP/1.1\r\n{c}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Logs in and connects; returns the session.
fn tunnel(s: &mut Server, now: Instant, i: u32) -> SessionId {
    let c = conn(i);
    let init = "<config-auth client=\"vpn\" type=\"init\"></config-auth>";
    let (form, _) = respond(s.handle_http(now, &c, &post(init, None)));
    let h = between(&form, "<aggauth-handle>", "<").unwrap().to_string();
    let reply = "<config-auth client=\"vpn\" type=\"auth-reply\"><auth><username>u</username><password>pw</password></auth></config-auth>";
    let (done, _) = respond(s.handle_http(now, &c, &post(reply, Some(&h))));
    let cookie = set_cookie(&done, "webvpn").unwrap();
    let req = format!("CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nCookie: webvpn={cookie}\r\nX-DTLS-CipherSuite: PSK-NEGOTIATE\r\n\r\n");
    match s.handle_http(now, &c, req.as_bytes()) {
        Ok(HttpOutcome::Tunnel { session, .. }) => session,
        o => panic!("{o:?}"),
    }
}

fn drain(s: &mut Server) -> usize {
    let mut n = 0;
    while s.poll_transmit().is_some() {
        n += 1;
    }
    while s.poll_packet().is_some() {
        n += 1;
    }
    while s.poll_event().is_some() {
        n += 1;
    }
    n
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random bytes on every input of the engine, in any order: no panic, and the bystander
    /// session keeps its address, state and working data path.
    #[test]
    fn attacker_input_never_panics(inputs in prop::collection::vec((0u8..5, prop::collection::vec(any::<u8>(), 0..400)), 1..40)) {
        let t0 = Instant::now();
        let mut s = Server::new(t0, config("10.99.0.50"), Box::new(crypto::SeededRandom::new(3)));
        let bystander = tunnel(&mut s, t0, 1);
        let victim = tunnel(&mut s, t0, 2);
        s.handle_dtls_up(t0, victim);
        drain(&mut s);
        let mut now = t0;
        for (kind, data) in &inputs {
            now += Duration::from_millis(37);
            match kind {
                0 => { let _ = s.handle_http(now, &conn(9), data); }
                1 => { let _ = s.handle_tls_data(now, victim, data); }
                2 => { let _ = s.handle_dtls_record(now, victim, data); }
                3 => { let mut d = data.clone(); let _ = s.handle_tun_packet(now, &mut d); }
                _ => {
                    // Shape-aware junk: a syntactically valid POST with a random body.
                    let b = String::from_utf8_lossy(data).into_owned();
                    let _ = s.handle_http(now, &conn(9), &post(&b, None));
                }
            }
            drain(&mut s);
            s.handle_timeout(now);
            drain(&mut s);
        }
        let info = s.sessions(now).into_iter().find(|i| i.index == bystander).expect("bystander alive");
        prop_assert_eq!(info.assigned_ip, "10.99.0.1".parse::<std::net::Ipv4Addr>().unwrap());
        prop_assert!(info.tls_up);
        let mut pkt = vec![0u8; 100];
        wire::ip::Ipv4Repr { src: "10.1.0.1".parse().unwrap(), dst: info.assigned_ip, protocol: 17, ttl: 9, ident: 0, dont_frag: false, dscp_ecn: 0, payload_len: 80 }.emit(&mut pkt).unwrap();
        prop_assert!(s.handle_tun_packet(now, &mut pkt).is_ok());
        let t = s.poll_transmit().expect("bystander gets its packet");
        prop_assert_eq!(t.session, bystander);
    }
}

#[test]
fn five_hundred_sessions_with_dtls_churn() {
    let t0 = Instant::now();
    let mut s = Server::new(
        t0,
        config("10.99.3.255"),
        Box::new(crypto::SeededRandom::new(4)),
    );
    let ids: Vec<SessionId> = (0..500).map(|i| tunnel(&mut s, t0, i)).collect();
    for id in &ids {
        s.handle_dtls_up(t0, *id);
    }
    drain(&mut s);
    let addrs: std::collections::HashSet<_> =
        s.sessions(t0).iter().map(|i| i.assigned_ip).collect();
    assert_eq!(addrs.len(), 500);
    // 60 s of traffic at 10 packets/s per session toward the clients; every 5th session's
    // DTLS is dead (no records, no DPD answers); the others answer every probe.
    let mut now = t0;
    let dead = |id: &SessionId| id.0 % 5 < 1;
    let mut pkt = vec![0u8; 200];
    let started = std::time::Instant::now();
    while now < t0 + Duration::from_secs(60) {
        now += Duration::from_millis(100);
        for info in s.sessions(now) {
            wire::ip::Ipv4Repr {
                src: "10.1.0.1".parse().unwrap(),
                dst: info.assigned_ip,
                protocol: 17,
                ttl: 9,
                ident: 0,
                dont_frag: false,
                dscp_ecn: 0,
                payload_len: 180,
            }
            .emit(&mut pkt)
            .unwrap();
            s.handle_tun_packet(now, &mut pkt).unwrap();
            if !dead(&info.index) {
                // The client sends a keepalive-ish data packet back every 100 ms on DTLS.
                s.handle_dtls_record(now, info.index, &[0x07]).unwrap();
            }
        }
        if s.poll_timeout().is_some_and(|(t, _)| t <= now) {
            s.handle_timeout(now);
        }
        let mut answers = Vec::new();
        while let Some(t) = s.poll_transmit() {
            if t.channel == Channel::Dtls && t.data[0] == 0x03 && !dead(&t.session) {
                let mut r = t.data.to_vec();
                r[0] = 0x04;
                answers.push((t.session, r));
            }
        }
        for (id, r) in answers {
            s.handle_dtls_record(now, id, &r).unwrap();
        }
        drain(&mut s);
        // Keep TLS alive for the gateway DPD.
        if (now - t0).as_millis() % 10_000 < 1 {
            for id in &ids {
                s.handle_tls_data(now, *id, b"STF\x01\x00\x00\x07\x00")
                    .unwrap();
            }
        }
    }
    let infos = s.sessions(now);
    assert_eq!(infos.len(), 500, "no session dropped");
    for i in &infos {
        let want = if dead(&i.index) {
            Channel::Tls
        } else {
            Channel::Dtls
        };
        assert_eq!(i.tx_channel, Some(want), "session {:?}", i.index);
        assert_eq!(i.fallbacks, u32::from(dead(&i.index)));
    }
    eprintln!("500 sessions x 600 ticks: {:?} wall", started.elapsed());
}
