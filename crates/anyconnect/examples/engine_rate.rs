//! Engine cost per packet on the data path (no crypto, no I/O): TUN -> client framing on TLS
//! and DTLS, and client -> TUN CSTP decoding, 1400-byte packets, one session.
//!
//!     cargo run --release -p holdfast-anyconnect --example engine_rate

#![allow(clippy::disallowed_methods)] // a measurement: reads the wall clock for its own timing

use std::time::{Duration, Instant};

use anyconnect::*;

fn main() {
    let t0 = Instant::now();
    let mut cfg = Config::default();
    cfg.users.push(User {
        name: "u".into(),
        password_hash: "plain:pw".into(),
    });
    cfg.verifier = plain_verifier();
    cfg.group_policies
        .insert("p".into(), GroupPolicy::default());
    cfg.pools.insert(
        "pool".into(),
        AddressPool {
            first: "10.99.0.1".parse().unwrap(),
            last: "10.99.0.9".parse().unwrap(),
            mask: "255.255.255.0".parse().unwrap(),
        },
    );
    cfg.tunnel_groups.push(TunnelGroup {
        name: "G".into(),
        aliases: vec![],
        default_group_policy: "p".into(),
        address_pools: vec!["pool".into()],
        authentication: AuthMethod::Aaa,
    });
    let mut s = Server::new(t0, cfg, Box::new(crypto::SeededRandom::new(1)));
    let c = ConnInfo {
        peer: "192.0.2.9:1000".parse().unwrap(),
        tls_version: TlsVersion::Tls13,
        tls_cipher: "TLS_AES_256_GCM_SHA384".into(),
        client_cert: None,
    };
    let post = |b: &str, ck: &str| {
        format!(
            "POST / HTTP/1.1\r\nCookie: webvpncontext={ck}\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )
        .into_bytes()
    };
    let text = |o: Result<HttpOutcome, HttpReject>| match o {
        Ok(HttpOutcome::Respond { bytes, .. }) => String::from_utf8(bytes).unwrap(),
        o => panic!("{o:?}"),
    };
    let form = text(s.handle_http(t0, &c, &post("<config-auth type=\"init\"/>", "")));
    let h = form
        .split("<aggauth-handle>")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_string();
    let done = text(s.handle_http(
        t0,
        &c,
        &post("<config-auth type=\"auth-reply\"><auth><username>u</username><password>pw</password></auth></config-auth>", &h),
    ));
    let cookie = done
        .split("webvpn=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    let req = format!("CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nCookie: webvpn={cookie}\r\nX-DTLS-CipherSuite: PSK-NEGOTIATE\r\n\r\n");
    let id = match s.handle_http(t0, &c, req.as_bytes()) {
        Ok(HttpOutcome::Tunnel { session, .. }) => session,
        o => panic!("{o:?}"),
    };
    let mut pkt = vec![0u8; 1300];
    wire::ip::Ipv4Repr {
        src: "10.1.0.1".parse().unwrap(),
        dst: "10.99.0.1".parse().unwrap(),
        protocol: 17,
        ttl: 64,
        ident: 0,
        dont_frag: true,
        dscp_ecn: 0,
        payload_len: 1280,
    }
    .emit(&mut pkt)
    .unwrap();
    const N: u32 = 2_000_000;
    let mut now = t0;
    let mut bytes = 0usize;

    let mut buf = pkt.clone();
    let mut run =
        |s: &mut Server, now: &mut Instant, bytes: &mut usize, dtls: bool, label: &str| {
            let start = Instant::now();
            for i in 0..N {
                if i % 1024 == 0 {
                    *now += Duration::from_millis(1);
                    if dtls {
                        // The client's DTLS traffic keeps the channel confirmed (steady state).
                        s.handle_dtls_record(*now, id, &[0x07]).unwrap();
                    }
                }
                buf.copy_from_slice(&pkt);
                s.handle_tun_packet(*now, &mut buf).unwrap();
                while let Some(t) = s.poll_transmit() {
                    *bytes += t.data.len();
                }
            }
            let el = start.elapsed();
            println!(
                "{label}: {:.0} ns/packet ({:.2} Mpps, {:.1} Gbit/s of 1300-byte packets)",
                el.as_nanos() as f64 / f64::from(N),
                f64::from(N) / el.as_secs_f64() / 1e6,
                f64::from(N) * 1300.0 * 8.0 / el.as_secs_f64() / 1e9
            );
        };
    run(
        &mut s,
        &mut now,
        &mut bytes,
        false,
        "TUN->client on TLS  (incl. a 1300-byte copy per packet)",
    );
    s.handle_dtls_up(now, id);
    while s.poll_event().is_some() {}
    run(
        &mut s,
        &mut now,
        &mut bytes,
        true,
        "TUN->client on DTLS (incl. a 1300-byte copy per packet)",
    );
    assert_eq!(s.sessions(now)[0].tx_channel, Some(Channel::Dtls));

    // Client -> TUN: 64 KiB TLS reads carrying back-to-back CSTP frames.
    let mut stream = Vec::new();
    while stream.len() < 64 * 1024 {
        stream.extend_from_slice(b"STF\x01");
        stream.extend_from_slice(&(pkt.len() as u16).to_be_bytes());
        stream.extend_from_slice(&[0, 0]);
        stream.extend_from_slice(&pkt);
    }
    let frames = stream.len() / (pkt.len() + 8);
    let reads = N as usize / frames;
    let start = Instant::now();
    let mut n = 0usize;
    for (k, chunk) in std::iter::repeat_n(&stream, reads).enumerate() {
        // Odd split points: frames straddle reads like TLS records do.
        let cut = 1 + (k * 7919) % (chunk.len() - 1);
        s.handle_tls_data(now, id, &chunk[..cut]).unwrap();
        while let Some(p) = s.poll_packet() {
            n += p.data.len();
        }
        s.handle_tls_data(now, id, &chunk[cut..]).unwrap();
        while let Some(p) = s.poll_packet() {
            n += p.data.len();
        }
    }
    let el = start.elapsed();
    let pk = n / pkt.len();
    println!(
        "client->TUN CSTP decode: {:.0} ns/packet ({:.1} Gbit/s), {pk} packets",
        el.as_nanos() as f64 / pk as f64,
        n as f64 * 8.0 / el.as_secs_f64() / 1e9
    );
    let _ = bytes;
}
