//! The issue's ASA configuration, parsed by crates/config, drives the engine: real PBKDF2
//! password check, `anyconnect mtu 1300`, split include, df-bit-ignore, pool.

#![allow(clippy::disallowed_methods)] // the virtual clock needs some starting Instant

mod common;

use std::time::Instant;

use anyconnect::*;
use common::{between, issue_asa_config, set_cookie};

fn body(kind: &str, extra: &str) -> String {
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<config-auth client=\"vpn\" type=\"{kind}\" aggregate-auth-version=\"2\">\n<version who=\"vpn\">v9.01-3</version>\n{extra}</config-auth>\n")
}

fn post(b: &str) -> Vec<u8> {
    format!(
        "POST / HTTP/1.1\r\nHost: gw\r\nX-Aggregate-Auth: 1\r\nContent-Length: {}\r\n\r\n{b}",
        b.len()
    )
    .into_bytes()
}

fn text(o: Result<HttpOutcome, HttpReject>) -> String {
    match o {
        Ok(HttpOutcome::Respond { bytes, .. }) | Ok(HttpOutcome::Tunnel { bytes, .. }) => {
            String::from_utf8(bytes).unwrap()
        }
        o => panic!("{o:?}"),
    }
}

#[test]
fn issue_configuration_end_to_end() {
    let loaded = ::config::parse("issue5.cfg", &issue_asa_config("s3cret-Pw")).unwrap_or_else(|d| panic!("{d}"));
    let cfg = config_from_policy(&loaded.config);
    assert_eq!(cfg.tcpmss, 1380);
    assert_eq!(cfg.users.len(), 1);
    assert!(
        cfg.users[0].password_hash.starts_with("$pbkdf2-sha256$"),
        "hashed at load"
    );
    let gp = &cfg.group_policies["ac_users_group"];
    assert_eq!(
        (gp.mtu, gp.dtls, gp.df_bit_ignore, gp.ssl_client),
        (Some(1300), true, true, true)
    );
    assert_eq!(
        gp.split_include,
        vec![Ipv4Net {
            addr: "10.1.0.0".parse().unwrap(),
            prefix: 24
        }]
    );

    let t0 = Instant::now();
    let mut s = Server::new(t0, cfg, Box::new(crypto::SeededRandom::new(1)));
    let c = ConnInfo {
        peer: "198.51.100.20:50000".parse().unwrap(),
        tls_version: TlsVersion::Tls13,
        tls_cipher: "TLS_AES_256_GCM_SHA384".into(),
        client_cert: None,
    };
    let form = text(s.handle_http(t0, &c, &post(&body("init", ""))));
    let handle = between(&form, "<aggauth-handle>", "<").unwrap().to_string();
    let bad = body("auth-reply", &format!("<opaque is-for=\"sg\"><aggauth-handle>{handle}</aggauth-handle></opaque>\n<auth><username>vpn</username><password>wrong</password></auth>\n"));
    assert!(text(s.handle_http(t0, &c, &post(&bad))).contains("Login failed."));
    let good = bad.replace(">wrong<", ">s3cret-Pw<");
    let done = text(s.handle_http(t0, &c, &post(&good)));
    assert!(done.contains("type=\"complete\""), "{done}");
    let cookie = set_cookie(&done, "webvpn").unwrap();
    let req = format!("CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nCookie: webvpn={cookie}\r\nX-CSTP-Base-MTU: 1500\r\nX-DTLS-CipherSuite: PSK-NEGOTIATE:OC-DTLS1_2-AES256-GCM\r\n\r\n");
    let head = text(s.handle_http(t0, &c, req.as_bytes()));
    for h in [
        "X-CSTP-Address: 10.99.0.100",
        "X-CSTP-Netmask: 255.255.255.0",
        "X-CSTP-Split-Include: 10.1.0.0/255.255.255.0",
        "X-CSTP-MTU: 1300",
        "X-DTLS-MTU: 1300",
        "X-CSTP-DPD: 30",
        "X-DTLS-DPD: 3",
        "X-CSTP-Keepalive: 20",
        "X-CSTP-Idle-Timeout: 1800",
        "X-DTLS-CipherSuite: PSK-NEGOTIATE",
    ] {
        assert!(head.contains(&format!("{h}\r\n")), "{h} missing in\n{head}");
    }
    // df-bit-ignore: a 1400-byte DF packet is fragmented to fit 1300, not refused.
    let mut p = vec![0u8; 1400];
    wire::ip::Ipv4Repr {
        src: "10.1.0.5".parse().unwrap(),
        dst: "10.99.0.100".parse().unwrap(),
        protocol: 17,
        ttl: 64,
        ident: 5,
        dont_frag: true,
        dscp_ecn: 0,
        payload_len: 1380,
    }
    .emit(&mut p)
    .unwrap();
    s.handle_tun_packet(t0, &mut p).unwrap();
    let mut n = 0;
    while let Some(t) = s.poll_transmit() {
        assert!(t.data.len() - 8 <= 1300);
        n += 1;
    }
    assert_eq!(n, 2);
}
