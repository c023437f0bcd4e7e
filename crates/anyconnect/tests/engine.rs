//! End-to-end exercises of the engine with a virtual clock: auth exchanges in the shape
//! openconnect 9.01 sends (anyconnect.md §1-2), tunnel data, fallback timing, reconnects,
//! timeouts, operator text.

// The virtual clock needs some starting Instant; everything after it is computed.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyconnect::*;
use wire::ip::{Ipv4Packet, Ipv4Repr, TcpPacket};

use common::{
    between, conn, drain_events, login, net, oc_reply, open_tunnel, pool, post, respond, set_cookie, start_login,
    syslog, tunnel_group, user, Tunnel, OC_INIT,
};

// ---------------------------------------------------------------------------------------------
// Fixtures

fn config() -> Config {
    common::config_of(
        vec![user("vpn", "secret"), user("alice", "wonder")],
        vec![
            tunnel_group("RA", "RA", "ac_users_group", "VPNPOOL", AuthMethod::Aaa),
            tunnel_group("CERT", "Certificates", "ac_users_group", "VPNPOOL", AuthMethod::Certificate),
        ],
        vec![("ac_users_group", GroupPolicy { split_include: vec![net("10.1.0.0", 24)], ..GroupPolicy::default() })],
        vec![("VPNPOOL", pool("10.99.0.100", "10.99.0.102"))],
    )
}

fn server(now: Instant, cfg: Config) -> Server {
    Server::new(now, cfg, Box::new(crypto::SeededRandom::new(7)))
}

fn transmits(s: &mut Server) -> Vec<(SessionId, Channel, Vec<u8>)> {
    let mut v = Vec::new();
    while let Some(t) = s.poll_transmit() {
        v.push((t.session, t.channel, t.data.to_vec()));
    }
    v
}

fn packets(s: &mut Server) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    while let Some(p) = s.poll_packet() {
        v.push(p.data.to_vec());
    }
    v
}

const CONNECT_TAIL: &str = "X-CSTP-Version: 1\r\nX-CSTP-Hostname: client\r\nX-CSTP-Base-MTU: 1500\r\nX-CSTP-MTU: 1390\r\nX-CSTP-Address-Type: IPv6,IPv4\r\n\
X-DTLS-Master-Secret: 0102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F202122232425262728292A2B2C2D2E2F30\r\n";
const PSK_SUITES: &str = "X-DTLS-CipherSuite: PSK-NEGOTIATE:OC-DTLS1_2-AES256-GCM:OC2-DTLS1_2-CHACHA20-POLY1305:OC-DTLS1_2-AES128-GCM:DHE-RSA-AES256-SHA:DHE-RSA-AES128-SHA:AES256-SHA:AES128-SHA\r\n\
X-DTLS12-CipherSuite: ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-GCM-SHA256\r\n";
const LEGACY_SUITES: &str = "X-DTLS-CipherSuite: OC-DTLS1_2-AES256-GCM\r\n";

fn connect_req(cookie: &str, suites: &str, extra: &str) -> Vec<u8> {
    format!(
        "CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: 192.0.2.1\r\nUser-Agent: Open AnyConnect VPN Agent v9.01-3\r\nCookie: webvpn={cookie}\r\n{CONNECT_TAIL}{suites}{extra}X-CSTP-Accept-Encoding: oc-lz4,lzs\r\n\r\n"
    )
    .into_bytes()
}

fn connect(s: &mut Server, now: Instant, cookie: &str, suites: &str, extra: &str) -> Tunnel {
    open_tunnel(s, now, &connect_req(cookie, suites, extra))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

fn ip_packet(src: &str, dst: &str, len: usize, df: bool) -> Vec<u8> {
    let mut p = vec![0u8; len];
    Ipv4Repr {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        protocol: 17,
        ttl: 64,
        ident: 0x1234,
        dont_frag: df,
        dscp_ecn: 0,
        payload_len: len - 20,
    }
    .emit(&mut p)
    .unwrap();
    p
}

fn syn(src: &str, dst: &str, mss: u16) -> Vec<u8> {
    let mut p = vec![0u8; 44];
    Ipv4Repr {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        protocol: 6,
        ttl: 64,
        ident: 1,
        dont_frag: true,
        dscp_ecn: 0,
        payload_len: 24,
    }
    .emit(&mut p)
    .unwrap();
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&443u16.to_be_bytes());
    t[12] = 6 << 4;
    t[13] = 0x02;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t[20..24].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
    TcpPacket::new_unchecked(&mut p[20..])
        .fill_checksum(src.parse().unwrap(), dst.parse().unwrap())
        .unwrap();
    p
}

fn cstp(ty: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = b"STF\x01".to_vec();
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.extend_from_slice(&[ty, 0]);
    v.extend_from_slice(payload);
    v
}

const CLIENT: &str = "10.99.0.100";

// ---------------------------------------------------------------------------------------------
// Authentication

#[test]
fn password_login_then_psk_tunnel() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let c = conn(40000);
    let (form, close) = respond(s.handle_http(t0, &c, &post(OC_INIT, &[])));
    assert!(!close);
    assert!(form.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(form.contains("type=\"auth-request\""));
    assert!(form.contains("<input type=\"password\" name=\"password\""));
    // Two aliases -> a group list with the default selected.
    assert!(form.contains("<select name=\"group_list\" label=\"GROUP:\">\n<option selected=\"true\">RA</option>\n<option>Certificates</option>"));
    let handle = set_cookie(&form, "webvpncontext").unwrap();
    assert_eq!(
        between(&form, "<aggauth-handle>", "<"),
        Some(handle.as_str())
    );

    // openconnect echoes the opaque handle even without the context cookie.
    let (done, _) = respond(s.handle_http(
        t0,
        &c,
        &post(&oc_reply("vpn", "secret", Some("RA"), &handle), &[]),
    ));
    let cookie = set_cookie(&done, "webvpn").unwrap();
    assert_eq!(cookie.len(), 64);
    assert!(cookie.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        between(&done, "<session-token>", "<"),
        Some(cookie.as_str())
    );
    let ev = syslog(&drain_events(&mut s));
    assert_eq!(
        ev,
        [
            "%ASA-6-113012: AAA user authentication Successful : local database : user = vpn",
            "%ASA-6-716001: Group <ac_users_group> User <vpn> IP <203.0.113.10> WebVPN session started.",
            "%ASA-6-113039: Group <ac_users_group> User <vpn> IP <203.0.113.10> AnyConnect parent session started.",
        ]
    );

    let t = connect(&mut s, t0, &cookie, PSK_SUITES, "");
    let h = &t.head;
    assert!(h.starts_with("HTTP/1.1 200 CONNECTED\r\n"), "{h}");
    assert!(!h.contains("Content-Length"));
    assert!(h.ends_with("\r\n\r\n"));
    assert_eq!(header(h, "X-CSTP-Address"), Some(CLIENT));
    assert_eq!(header(h, "X-CSTP-Netmask"), Some("255.255.255.0"));
    assert_eq!(
        header(h, "X-CSTP-Split-Include"),
        Some("10.1.0.0/255.255.255.0")
    );
    assert_eq!(header(h, "X-CSTP-DPD"), Some("30"));
    // DTLS DPD capped at 3 s so openconnect leaves a dead DTLS channel within ~6 s.
    assert_eq!(header(h, "X-DTLS-DPD"), Some("3"));
    assert_eq!(header(h, "X-CSTP-Disconnected-Timeout"), Some("300"));
    // Common policy: TLS 1380-5-8-8-16 = 1343 < DTLS 1434 -> both 1343.
    assert_eq!(header(h, "X-CSTP-MTU"), Some("1343"));
    assert_eq!(header(h, "X-DTLS-MTU"), Some("1343"));
    assert_eq!(header(h, "X-CSTP-Base-MTU"), Some("1500"));
    assert_eq!(header(h, "X-DTLS-CipherSuite"), Some("PSK-NEGOTIATE"));
    assert_eq!(header(h, "X-DTLS-Port"), Some("443"));
    let app_id = header(h, "X-DTLS-App-ID").unwrap();
    assert_eq!(app_id.len(), 64);
    let Some(DtlsKeying::Psk { app_id: raw }) = &t.dtls else {
        panic!("{:?}", t.dtls)
    };
    assert_eq!(hex::encode(raw), app_id);
    assert_eq!(s.session_by_app_id(raw), Some(t.session));
    assert_eq!(s.session_by_dtls_session_id(raw), None);
    assert_eq!(
        s.session_by_address(CLIENT.parse().unwrap()),
        Some(t.session)
    );

    let ev = drain_events(&mut s);
    assert_eq!(
        syslog(&ev),
        [
            "%ASA-4-722051: Group <ac_users_group> User <vpn> IP <203.0.113.10> IPv4 Address <10.99.0.100> IPv6 address <::> assigned to session",
            "%ASA-5-722033: Group <ac_users_group> User <vpn> IP <203.0.113.10> First TCP SVC connection established for SVC session.",
            "%ASA-6-722022: Group <ac_users_group> User <vpn> IP <203.0.113.10> TCP SVC connection established without compression",
        ]
    );
    assert!(ev.contains(&Event::SessionUp {
        session: t.session,
        user: "vpn".into(),
        tunnel_group: "RA".into(),
        group_policy: "ac_users_group".into(),
        address: CLIENT.parse().unwrap(),
        reconnect: false,
    }));
}

#[test]
fn wrong_password_counts_then_refuses() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let c = conn(40000);
    let (form, _) = respond(s.handle_http(t0, &c, &post(OC_INIT, &[])));
    let h = set_cookie(&form, "webvpncontext").unwrap();
    drain_events(&mut s);
    for attempt in 1..=3 {
        let (r, close) = respond(s.handle_http(
            t0,
            &c,
            &post(&oc_reply("vpn", "nope", None, &h), &[("webvpncontext", &h)]),
        ));
        let ev = drain_events(&mut s);
        assert!(syslog(&ev).contains(
            &"%ASA-6-113015: AAA user authentication Rejected : reason = Invalid password : local database : user = vpn : user IP = 203.0.113.10".to_string()
        ));
        assert!(ev.iter().any(|e| matches!(e, Event::Refused { reason, .. } if reason.contains("login failed for user 'vpn'"))));
        if attempt < 3 {
            assert!(
                r.contains("<error id=\"88\" param1=\"\" param2=\"\">Login failed.</error>"),
                "{r}"
            );
            assert!(r.contains("type=\"auth-request\""));
            assert!(!close);
        } else {
            assert!(r.starts_with("HTTP/1.1 401 Unauthorized"), "{r}");
            assert!(close);
        }
    }
    assert_eq!(s.stats().auth_failures, 3);
    // The context is gone: the correct password now only gets a fresh form, not a session.
    let (r, _) = respond(s.handle_http(
        t0,
        &c,
        &post(
            &oc_reply("vpn", "secret", None, &h),
            &[("webvpncontext", &h)],
        ),
    ));
    assert!(r.contains("type=\"complete\"") || r.contains("type=\"auth-request\""));
    // Unknown user: same refusal shape, different reason text.
    let h = start_login(&mut s, t0, &c);
    drain_events(&mut s);
    respond(s.handle_http(
        t0,
        &c,
        &post(
            &oc_reply("mallory", "x", None, &h),
            &[("webvpncontext", &h)],
        ),
    ));
    assert!(syslog(&drain_events(&mut s))[0]
        .contains("reason = Invalid username : local database : user = mallory"));
}

#[test]
fn unknown_group_gets_form_with_error() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let init = OC_INIT.replace(
        "<group-access>",
        "<group-select>Nope&amp;Co</group-select>\n<group-access>",
    );
    let (r, _) = respond(s.handle_http(t0, &conn(1), &post(&init, &[])));
    assert!(r.contains("<error id=\"88\" param1=\"\" param2=\"\">Group &apos;Nope&amp;Co&apos; is not a valid group.</error>"), "{r}");
    assert!(drain_events(&mut s).iter().any(
        |e| matches!(e, Event::Refused { reason, .. } if reason == "login: unknown group 'Nope&Co'")
    ));
    assert_eq!(s.stats().auth_unknown_group, 1);
    // A reply naming an unknown group never authenticates.
    let h = set_cookie(&r, "webvpncontext").unwrap();
    let (r, _) = respond(s.handle_http(
        t0,
        &conn(1),
        &post(&oc_reply("vpn", "secret", Some("Nope"), &h), &[]),
    ));
    assert!(!r.contains("complete"));
    // Group from the URL path (https://gw/Certificates) selects the certificate group.
    let init = OC_INIT.replace("https://192.0.2.1/", "https://192.0.2.1/Certificates");
    let (r, close) = respond(s.handle_http(t0, &conn(1), &post(&init, &[])));
    assert!(r.starts_with("HTTP/1.1 401") && close, "{r}");
}

#[test]
fn certificate_login() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let init = OC_INIT.replace(
        "<group-access>",
        "<group-select>Certificates</group-select>\n<group-access>",
    );
    let mut c = conn(2);
    let (r, close) = respond(s.handle_http(t0, &c, &post(&init, &[])));
    assert!(r.starts_with("HTTP/1.1 401 Unauthorized") && close);
    assert!(drain_events(&mut s).iter().any(|e| matches!(e, Event::Refused { reason, .. } if reason.contains("needs a client certificate"))));
    c.client_cert = Some(ClientCert {
        common_name: "carol".into(),
    });
    let (r, _) = respond(s.handle_http(t0, &c, &post(&init, &[])));
    assert!(r.contains("type=\"complete\""), "{r}");
    let cookie = set_cookie(&r, "webvpn").unwrap();
    let t = connect(&mut s, t0, &cookie, PSK_SUITES, "");
    let info = &s.sessions(t0)[0];
    assert_eq!(
        (
            info.index,
            info.username.as_str(),
            info.tunnel_group.as_str()
        ),
        (t.session, "carol", "CERT")
    );
}

#[test]
fn forged_expired_and_missing_cookies_get_401() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let good = login(&mut s, t0, "vpn", "secret");
    drain_events(&mut s);
    // Same 8-byte lookup prefix, different tail: found by prefix, refused by the HMAC check.
    let mut forged = good.clone();
    forged.replace_range(
        60..64,
        if &good[60..64] == "0000" {
            "1111"
        } else {
            "0000"
        },
    );
    for bad in [forged.as_str(), "zz", "00", &"A".repeat(64)] {
        let o = s.handle_http(t0, &conn(3), &connect_req(bad, PSK_SUITES, ""));
        let (r, close) = respond(o);
        assert!(r.starts_with("HTTP/1.1 401 Unauthorized") && close, "{r}");
    }
    let ev = drain_events(&mut s);
    assert_eq!(ev.iter().filter(|e| matches!(e, Event::Refused { reason, .. } if reason.contains("invalid or expired session cookie"))).count(), 4);
    let nocookie = b"CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: x\r\n\r\n";
    assert!(respond(s.handle_http(t0, &conn(3), nocookie))
        .0
        .starts_with("HTTP/1.1 401"));
    // Unused cookie expires after cookie_unused_lifetime (300 s).
    let t1 = t0 + Duration::from_secs(301);
    assert!(s.poll_timeout().unwrap().0 <= t1);
    s.handle_timeout(t1);
    let (r, _) = respond(s.handle_http(t1, &conn(3), &connect_req(&good, PSK_SUITES, "")));
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    assert_eq!(s.stats().cookie_rejected, 6);
}

#[test]
fn pending_logins_are_bounded_per_peer() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    for _ in 0..16 {
        let (r, _) = respond(s.handle_http(t0, &conn(5), &post(OC_INIT, &[])));
        assert!(r.contains("auth-request"));
    }
    let (r, close) = respond(s.handle_http(t0, &conn(5), &post(OC_INIT, &[])));
    assert!(r.starts_with("HTTP/1.1 503") && close, "{r}");
    // Another client is not affected, and the limit frees up when contexts expire.
    let other = ConnInfo {
        peer: "198.51.100.7:1".parse().unwrap(),
        ..conn(5)
    };
    assert!(respond(s.handle_http(t0, &other, &post(OC_INIT, &[])))
        .0
        .contains("auth-request"));
    let t1 = t0 + Duration::from_secs(121);
    assert!(respond(s.handle_http(t1, &conn(5), &post(OC_INIT, &[])))
        .0
        .contains("auth-request"));
}

#[test]
fn garbage_before_the_tunnel_is_refused() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    match s.handle_http(t0, &conn(6), b"\x16\x03\x01\x00\xa5\x01\x00") {
        Err(HttpReject { error, response }) => {
            assert_eq!(error, HttpError::ControlChar);
            assert!(response.starts_with(b"HTTP/1.1 400 Bad Request"));
        }
        other => panic!("{other:?}"),
    }
    let (r, close) = respond(s.handle_http(
        t0,
        &conn(6),
        &post("<config-auth><unclosed></config-auth>", &[]),
    ));
    assert!(r.starts_with("HTTP/1.1 400") && close);
    let (r, _) = respond(s.handle_http(
        t0,
        &conn(6),
        b"GET /+CSCOE+/logon.html HTTP/1.1\r\nHost: x\r\n\r\n",
    ));
    assert!(r.starts_with("HTTP/1.1 404"));
    // HEAD / answers as GET / does, without the content (since cbf6c34; all of it in
    // tests/http_edges.rs head_mirrors_get); HEAD of an unserved path is GET's 404, no content.
    let (r, _) = respond(s.handle_http(t0, &conn(6), b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\n"), "{r}");
    let (r, _) = respond(s.handle_http(t0, &conn(6), b"HEAD /+CSCOE+/logon.html HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(r.starts_with("HTTP/1.1 404") && r.ends_with("\r\n\r\n"), "{r}");
    let (r, _) = respond(s.handle_http(t0, &conn(6), b"CONNECT /other HTTP/1.1\r\n\r\n"));
    assert!(r.starts_with("HTTP/1.1 404"));
    assert!(matches!(
        s.handle_http(
            t0,
            &conn(6),
            b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"
        ),
        Ok(HttpOutcome::NeedMore)
    ));
}

// ---------------------------------------------------------------------------------------------
// Tunnel data path

#[test]
fn legacy_dtls_and_split_mtu() {
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.mtu_policy = MtuPolicy::Split;
    let mut s = server(t0, cfg);
    let cookie = login(&mut s, t0, "vpn", "secret");
    let t = connect(&mut s, t0, &cookie, LEGACY_SUITES, "");
    let Some(DtlsKeying::Legacy {
        session_id,
        master_secret,
        cipher,
    }) = &t.dtls
    else {
        panic!()
    };
    assert_eq!(*cipher, LegacyCipher::OcDtls12Aes256Gcm);
    assert_eq!(cipher.openssl_name(), "AES256-GCM-SHA384");
    assert_eq!(master_secret[0], 1);
    assert_eq!(master_secret[47], 0x30);
    assert_eq!(
        header(&t.head, "X-DTLS-Session-ID").map(str::to_ascii_lowercase),
        Some(hex::encode(session_id))
    );
    assert_eq!(
        header(&t.head, "X-DTLS-CipherSuite"),
        Some("OC-DTLS1_2-AES256-GCM")
    );
    assert_eq!(header(&t.head, "X-DTLS-App-ID"), None);
    // The ASA's split behaviour: each channel its own MTU.
    assert_eq!(header(&t.head, "X-CSTP-MTU"), Some("1343"));
    assert_eq!(header(&t.head, "X-DTLS-MTU"), Some("1434"));
    assert_eq!(s.session_by_dtls_session_id(session_id), Some(t.session));
    assert_eq!(s.session_by_app_id(session_id), None);
}

#[test]
fn dtls_dpd_cap_can_be_turned_off() {
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.dtls_dpd_max = None; // the ASA: X-DTLS-DPD = dpd-interval client
    let mut s = server(t0, cfg);
    let cookie = login(&mut s, t0, "vpn", "secret");
    let t = connect(&mut s, t0, &cookie, PSK_SUITES, "");
    assert_eq!(header(&t.head, "X-DTLS-DPD"), Some("30"));
    let mut cfg = config();
    cfg.group_policies
        .get_mut("ac_users_group")
        .unwrap()
        .dpd_client = None;
    let mut s = server(t0, cfg);
    let cookie = login(&mut s, t0, "vpn", "secret");
    let t = connect(&mut s, t0, &cookie, PSK_SUITES, "");
    assert_eq!(
        header(&t.head, "X-DTLS-DPD"),
        Some("0"),
        "disabled stays disabled"
    );
    assert_eq!(header(&t.head, "X-CSTP-DPD"), Some("0"));
}

#[test]
fn dtls_disabled_or_not_offered() {
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.group_policies.get_mut("ac_users_group").unwrap().dtls = false;
    cfg.group_policies.get_mut("ac_users_group").unwrap().mtu = Some(1300);
    let mut s = server(t0, cfg);
    let cookie = login(&mut s, t0, "vpn", "secret");
    let t = connect(&mut s, t0, &cookie, PSK_SUITES, "");
    assert!(t.dtls.is_none());
    assert_eq!(header(&t.head, "X-DTLS-Port"), None);
    assert_eq!(header(&t.head, "X-CSTP-MTU"), Some("1300"));
}

#[test]
fn cstp_data_and_dpd_over_tls_with_any_split() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let cookie = login(&mut s, t0, "vpn", "secret");
    let t = connect(&mut s, t0, &cookie, PSK_SUITES, "");
    let pkt = ip_packet(CLIENT, "10.1.0.5", 600, true);
    let mut stream = cstp(0x00, &pkt);
    stream.extend(cstp(0x07, b""));
    stream.extend(cstp(0x03, b"probe-1"));
    stream.extend(cstp(0x00, &pkt));
    for cut in [1usize, 7, 8, 9, 300, 608, 609, 615, 616, 630] {
        s.handle_tls_data(t0, t.session, &stream[..cut]).unwrap();
        s.handle_tls_data(t0, t.session, &stream[cut..]).unwrap();
        let p = packets(&mut s);
        assert_eq!(p, vec![pkt.clone(), pkt.clone()], "cut {cut}");
        let tx = transmits(&mut s);
        assert_eq!(
            tx,
            vec![(t.session, Channel::Tls, cstp(0x04, b"probe-1"))],
            "cut {cut}"
        );
    }
    let info = &s.sessions(t0)[0];
    assert_eq!(info.bytes_rx, 20 * 600);
    // A packet for the client rides TLS (DTLS not up yet) as one CSTP frame.
    let mut down = ip_packet("10.1.0.5", CLIENT, 1000, true);
    s.handle_tun_packet(t0, &mut down).unwrap();
    assert_eq!(
        transmits(&mut s),
        vec![(t.session, Channel::Tls, cstp(0, &down))]
    );
    // Garbage on the CSTP stream: this session's stream is refused, another session is untouched.
    let cookie2 = login(&mut s, t0, "alice", "wonder");
    let t2 = connect(&mut s, t0, &cookie2, PSK_SUITES, "");
    assert_eq!(
        s.handle_tls_data(t0, t.session, b"STF\x02junk"),
        Err(TunnelError::Cstp(CstpError::BadMagic(*b"STF\x02")))
    );
    assert!(syslog(&drain_events(&mut s))
        .iter()
        .any(|l| l.contains("SVC closing connection: CSTP framing error")));
    s.handle_tls_closed(t0, t.session);
    s.handle_tls_data(
        t0,
        t2.session,
        &cstp(0, &ip_packet("10.99.0.101", "10.1.0.5", 100, false)),
    )
    .unwrap();
    assert_eq!(packets(&mut s).len(), 1);
    // A truncated frame just waits; nothing is delivered.
    s.handle_tls_data(t0, t2.session, &cstp(0, &pkt)[..50])
        .unwrap();
    assert!(packets(&mut s).is_empty());
    // ... and when the connection closes inside it, the discarded bytes are logged.
    drain_events(&mut s);
    s.handle_tls_closed(t0, t2.session);
    let lines = syslog(&drain_events(&mut s));
    assert!(
        lines.iter().any(|l| l.contains("722037")
            && l.contains("closed inside a CSTP frame, 50 byte(s) of a truncated frame discarded")),
        "{lines:?}"
    );
    // A connection closed between frames says nothing of the kind.
    let cookie3 = login(&mut s, t0, "alice", "wonder");
    let t3 = connect(&mut s, t0, &cookie3, PSK_SUITES, "");
    drain_events(&mut s);
    s.handle_tls_closed(t0, t3.session);
    assert!(!syslog(&drain_events(&mut s)).iter().any(|l| l.contains("truncated frame")));
}

#[test]
fn mss_clamp_both_directions() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let cookie = login(&mut s, t0, "vpn", "secret");
    let t = connect(&mut s, t0, &cookie, PSK_SUITES, "");
    // From the client: 1460 -> min(tcpmss 1380, 1343 - 40) = 1303.
    s.handle_tls_data(t0, t.session, &cstp(0, &syn(CLIENT, "10.1.0.5", 1460)))
        .unwrap();
    let p = packets(&mut s).remove(0);
    let tcp = TcpPacket::new_checked(&p[20..]).unwrap();
    assert_eq!(tcp.mss(), Some(1303));
    assert!(tcp.verify_checksum(CLIENT.parse().unwrap(), "10.1.0.5".parse().unwrap()));
    // Toward the client.
    let mut down = syn("10.1.0.5", CLIENT, 1460);
    s.handle_tun_packet(t0, &mut down).unwrap();
    let (_, _, f) = transmits(&mut s).remove(0);
    let tcp = TcpPacket::new_checked(&f[28..]).unwrap();
    assert_eq!(tcp.mss(), Some(1303));
    assert!(tcp.verify_checksum("10.1.0.5".parse().unwrap(), CLIENT.parse().unwrap()));
}

#[test]
fn oversize_df_packet_gets_icmp_and_asa_logs() {
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.tcpmss = 1380;
    let mut s = server(t0, cfg);
    let cookie = login(&mut s, t0, "vpn", "secret");
    let mut c = conn(40001);
    c.tls_cipher = "RC4-SHA".into(); // the ASA's example: 1380 - 5 - 8 - 0 - 20 = 1347
    let t = match s.handle_http(t0, &c, &connect_req(&cookie, PSK_SUITES, "")) {
        Ok(HttpOutcome::Tunnel { session, .. }) => session,
        o => panic!("{o:?}"),
    };
    drain_events(&mut s);
    let mut big = ip_packet("10.10.10.1", CLIENT, 1418, true);
    big[9] = 6; // TCP, as in asa.md's example
    assert_eq!(s.handle_tun_packet(t0, &mut big), Err(TunDrop::TooBig));
    assert!(transmits(&mut s).is_empty());
    let icmp = packets(&mut s).remove(0);
    let ip = Ipv4Packet::new_checked(&icmp[..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!(ip.dst(), "10.10.10.1".parse::<Ipv4Addr>().unwrap());
    let ic = wire::ip::IcmpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!((ic.msg_type(), ic.code(), ic.next_hop_mtu()), (3, 4, 1347));
    assert!(ic.verify_checksum());
    assert_eq!(
        syslog(&drain_events(&mut s)),
        [
            "%ASA-6-722036: Group <ac_users_group> User <vpn> IP <203.0.113.10> Transmitting large packet 1418 (threshold 1347).",
            "%ASA-6-602101: PMTU-D packet 1418 bytes greater than effective mtu 1347, dest_addr=10.10.10.1, src_addr=10.99.0.100, prot=TCP",
        ]
    );
    let _ = t;
    // DF clear: fragmented into the tunnel instead, every CSTP frame within the threshold.
    let mut big = ip_packet("10.10.10.1", CLIENT, 1418, false);
    s.handle_tun_packet(t0, &mut big).unwrap();
    let tx = transmits(&mut s);
    assert_eq!(tx.len(), 2);
    assert!(tx
        .iter()
        .all(|(_, ch, f)| *ch == Channel::Tls && f.len() - 8 <= 1347));
    assert_eq!(s.stats().fragmented, 1);
}

#[test]
fn df_bit_ignore_fragments_df_packets() {
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.group_policies
        .get_mut("ac_users_group")
        .unwrap()
        .df_bit_ignore = true;
    let mut s = server(t0, cfg);
    let cookie = login(&mut s, t0, "vpn", "secret");
    connect(&mut s, t0, &cookie, PSK_SUITES, "");
    let mut big = ip_packet("10.10.10.1", CLIENT, 1418, true);
    s.handle_tun_packet(t0, &mut big).unwrap();
    let tx = transmits(&mut s);
    let mut payload = Vec::new();
    for (_, _, f) in &tx {
        let ip = Ipv4Packet::new_checked(&f[8..]).unwrap();
        assert!(ip.verify_checksum() && !ip.dont_frag() && ip.total_len() <= 1343);
        payload.extend_from_slice(ip.payload());
    }
    assert_eq!(payload, big[20..]);
}

// ---------------------------------------------------------------------------------------------
// Channel choice and fallback (virtual clock)

fn dtls_session(s: &mut Server, t0: Instant) -> SessionId {
    let cookie = login(s, t0, "vpn", "secret");
    let t = connect(s, t0, &cookie, PSK_SUITES, "");
    s.handle_dtls_up(t0, t.session);
    let ev = drain_events(s);
    assert!(ev.contains(&Event::ChannelChange {
        session: t.session,
        channel: Channel::Dtls
    }));
    assert!(syslog(&ev)
        .iter()
        .any(|l| l.contains("UDP SVC connection established")));
    t.session
}

fn send_down(s: &mut Server, now: Instant, len: usize) -> Vec<(SessionId, Channel, Vec<u8>)> {
    let mut p = ip_packet("10.1.0.5", CLIENT, len, true);
    s.handle_tun_packet(now, &mut p).unwrap();
    transmits(s)
}

/// Runs timers up to `until` in 10 ms steps like a daemon would, collecting transmits/events.
type Timed<T> = Vec<(Instant, T)>;

fn run(s: &mut Server, from: Instant, until: Instant) -> (Timed<(Channel, Vec<u8>)>, Timed<Event>) {
    let (mut tx, mut ev) = (Vec::new(), Vec::new());
    let mut now = from;
    while now <= until {
        if s.poll_timeout().is_some_and(|(t, _)| t <= now) {
            s.handle_timeout(now);
        }
        while let Some(t) = s.poll_transmit() {
            tx.push((now, (t.channel, t.data.to_vec())));
        }
        while let Some(e) = s.poll_event() {
            ev.push((now, e));
        }
        now += Duration::from_millis(10);
    }
    (tx, ev)
}

#[test]
fn dtls_loss_moves_traffic_to_tls_within_two_seconds_and_back() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let id = dtls_session(&mut s, t0);
    // Healthy DTLS: traffic both ways, no probe, no fallback.
    let mut now = t0;
    for _ in 0..50 {
        now += Duration::from_millis(100);
        let tx = send_down(&mut s, now, 500);
        assert_eq!(tx[0].1, Channel::Dtls);
        s.handle_dtls_record(
            now,
            id,
            &[0x00]
                .iter()
                .chain(ip_packet(CLIENT, "10.1.0.5", 60, false).iter())
                .copied()
                .collect::<Vec<u8>>(),
        )
        .unwrap();
        packets(&mut s);
        s.handle_timeout(now);
        assert!(transmits(&mut s).is_empty(), "no probe while DTLS answers");
        assert!(drain_events(&mut s)
            .iter()
            .all(|e| !matches!(e, Event::ChannelChange { .. })));
    }
    // UDP blocked: the last DTLS record from the client was at `now`; we keep sending.
    let blocked = now;
    let mut moved_at = None;
    let mut probes = 0;
    let mut t = blocked;
    while t < blocked + Duration::from_secs(3) {
        t += Duration::from_millis(50);
        let tx = send_down(&mut s, t, 500);
        if moved_at.is_none() && tx[0].1 == Channel::Tls {
            moved_at = Some(t);
        }
        let (ptx, ev) = run(&mut s, t, t);
        probes += ptx
            .iter()
            .filter(|(_, (ch, d))| *ch == Channel::Dtls && d[0] == 0x03)
            .count();
        if ev.iter().any(|(_, e)| {
            *e == Event::ChannelChange {
                session: id,
                channel: Channel::Tls,
            }
        }) {
            moved_at.get_or_insert(t);
        }
    }
    let moved = moved_at.expect("fell back to TLS") - blocked;
    assert!(moved <= Duration::from_secs(2), "fallback took {moved:?}");
    assert!(
        moved >= Duration::from_millis(1500),
        "no premature fallback: {moved:?}"
    );
    assert!(probes >= 1);
    assert_eq!(s.sessions(t)[0].tx_channel, Some(Channel::Tls));
    assert_eq!(s.stats().fallbacks_to_tls, 1);
    // Data from the client is still accepted on both channels.
    s.handle_tls_data(t, id, &cstp(0, &ip_packet(CLIENT, "10.1.0.5", 60, false)))
        .unwrap();
    assert_eq!(packets(&mut s).len(), 1);
    // UDP unblocked: the next re-probe is answered and traffic returns to DTLS.
    let (ptx, _) = run(&mut s, t, t + Duration::from_secs(9));
    let probe = ptx
        .iter()
        .rev()
        .find(|(_, (ch, d))| *ch == Channel::Dtls && d[0] == 0x03)
        .expect("re-probe")
        .1
         .1
        .clone();
    let back = t + Duration::from_secs(9);
    let mut resp = probe.clone();
    resp[0] = 0x04;
    s.handle_dtls_record(back, id, &resp).unwrap();
    assert!(drain_events(&mut s).contains(&Event::ChannelChange {
        session: id,
        channel: Channel::Dtls
    }));
    assert_eq!(send_down(&mut s, back, 500)[0].1, Channel::Dtls);
    assert_eq!(s.stats().returns_to_dtls, 1);
}

#[test]
fn client_dtls_dpd_answered_and_dtls_close_falls_back() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let id = dtls_session(&mut s, t0);
    // openconnect's MTU probe: a padded DPD-REQ right after the handshake.
    let mut dpd = vec![0x03];
    dpd.extend(std::iter::repeat_n(0xaa, 1434));
    s.handle_dtls_record(t0, id, &dpd).unwrap();
    let tx = transmits(&mut s);
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0].1, Channel::Dtls);
    assert_eq!(tx[0].2[0], 0x04);
    assert_eq!(&tx[0].2[1..], &dpd[1..]);
    assert_eq!(
        s.handle_dtls_record(t0, id, &[]),
        Err(TunnelError::BadDtlsRecord)
    );
    assert_eq!(
        s.handle_dtls_record(t0, id, &[0x08, 1, 2]),
        Err(TunnelError::BadDtlsRecord)
    );
    s.handle_dtls_closed(t0, id);
    let ev = drain_events(&mut s);
    assert!(ev.contains(&Event::ChannelChange {
        session: id,
        channel: Channel::Tls
    }));
    assert!(syslog(&ev)
        .iter()
        .any(|l| l.contains("UDP SVC connection terminated without compression")));
    assert_eq!(send_down(&mut s, t0, 500)[0].1, Channel::Tls);
    assert_eq!(
        s.handle_dtls_record(t0, id, &[0x00, 0x45]),
        Err(TunnelError::UnknownSession(id))
    );
    // openconnect retries DTLS with the same App-ID while its CSTP connection lives.
    let Some(DtlsKeying::Psk { app_id }) = s.dtls_keying(id).cloned() else {
        panic!("keying kept")
    };
    assert_eq!(s.session_by_app_id(&app_id), Some(id));
    let t1 = t0 + Duration::from_secs(60);
    s.handle_dtls_up(t1, id);
    assert!(drain_events(&mut s).contains(&Event::ChannelChange {
        session: id,
        channel: Channel::Dtls
    }));
    assert_eq!(send_down(&mut s, t1, 500)[0].1, Channel::Dtls);
    // A CSTP reconnect forgets it (DTLS is never resumed across one, anyconnect.md §5).
    s.handle_tls_closed(t1, id);
    assert_eq!(s.session_by_app_id(&app_id), None);
    assert!(drain_events(&mut s).contains(&Event::CloseDtls { session: id }));
}

#[test]
fn too_big_for_dtls_goes_on_tls() {
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.tcpmss = 1460; // TLS 1423
    cfg.mtu_policy = MtuPolicy::Split;
    let mut s = server(t0, cfg);
    let cookie = login(&mut s, t0, "vpn", "secret");
    let req = String::from_utf8(connect_req(&cookie, PSK_SUITES, ""))
        .unwrap()
        .replace("X-CSTP-Base-MTU: 1500", "X-CSTP-Base-MTU: 1400");
    let id = match s.handle_http(t0, &conn(1), req.as_bytes()) {
        Ok(HttpOutcome::Tunnel { session, bytes, .. }) => {
            let h = String::from_utf8(bytes).unwrap();
            assert_eq!(header(&h, "X-DTLS-MTU"), Some("1334"));
            assert_eq!(header(&h, "X-CSTP-MTU"), Some("1423"));
            session
        }
        o => panic!("{o:?}"),
    };
    s.handle_dtls_up(t0, id);
    assert_eq!(send_down(&mut s, t0, 1334)[0].1, Channel::Dtls);
    assert_eq!(send_down(&mut s, t0, 1380)[0].1, Channel::Tls);
    assert_eq!(s.stats().sent_on_tls_too_big_for_dtls, 1);
}

// ---------------------------------------------------------------------------------------------
// Reconnects, disconnects, timeouts, operator commands

#[test]
fn reconnect_keeps_address_and_refuses_another() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let cookie = login(&mut s, t0, "vpn", "secret");
    let first = connect(&mut s, t0, &cookie, PSK_SUITES, "");
    // A second user takes the next address.
    let c2 = login(&mut s, t0, "alice", "wonder");
    let t2 = connect(&mut s, t0, &c2, PSK_SUITES, "");
    assert_eq!(header(&t2.head, "X-CSTP-Address"), Some("10.99.0.101"));
    drain_events(&mut s);
    // TLS drops; openconnect reconnects 10 s later with X-CSTP-Address.
    let t1 = t0 + Duration::from_secs(10);
    s.handle_tls_closed(t0, first.session);
    assert!(
        s.handle_tun_packet(t0, &mut ip_packet("10.1.0.5", CLIENT, 100, true))
            == Err(TunDrop::NoChannel)
    );
    let again = connect(
        &mut s,
        t1,
        &cookie,
        PSK_SUITES,
        &format!("X-CSTP-Address: {CLIENT}\r\n"),
    );
    assert_eq!(again.session, first.session);
    assert_eq!(header(&again.head, "X-CSTP-Address"), Some(CLIENT));
    assert_ne!(again.dtls, first.dtls, "new App-ID on reconnect");
    let Some(DtlsKeying::Psk { app_id: old }) = &first.dtls else {
        panic!()
    };
    assert_eq!(s.session_by_app_id(old), None);
    let ev = drain_events(&mut s);
    assert_eq!(
        syslog(&ev),
        [
            "%ASA-6-722023: Group <ac_users_group> User <vpn> IP <203.0.113.10> TCP SVC connection terminated without compression",
            "%ASA-6-716058: Group <ac_users_group> User <vpn> IP <203.0.113.10> AnyConnect session lost connection. Waiting to resume.",
            "%ASA-6-716059: Group <ac_users_group> User <vpn> IP <203.0.113.10> AnyConnect session resumed connection from IP <203.0.113.10>.",
            "%ASA-5-722034: Group <ac_users_group> User <vpn> IP <203.0.113.10> New TCP SVC connection, no existing connection.",
            "%ASA-6-722022: Group <ac_users_group> User <vpn> IP <203.0.113.10> TCP SVC connection established without compression",
        ]
    );
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::SessionUp {
            reconnect: true,
            ..
        }
    )));
    // Reconnect while the old connection is still open (client noticed first).
    connect(&mut s, t1, &cookie, PSK_SUITES, "");
    let l = syslog(&drain_events(&mut s));
    assert!(
        l[0].contains("722032")
            && l[0].ends_with("New TCP SVC connection replacing old connection.")
    );
    assert!(l[1].contains("722028") && l[1].ends_with("Stale SVC connection closed."));
    // Asking for someone else's address is refused, the session stays.
    let (r, close) = respond(s.handle_http(
        t1,
        &conn(9),
        &connect_req(&cookie, PSK_SUITES, "X-CSTP-Address: 10.99.0.101\r\n"),
    ));
    assert!(r.starts_with("HTTP/1.1 409 Conflict") && close, "{r}");
    assert_eq!(s.sessions(t1).len(), 2);
    assert_eq!(s.sessions(t1)[0].reconnects, 2);
}

#[test]
fn grace_expiry_ends_session_and_frees_address() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let cookie = login(&mut s, t0, "vpn", "secret");
    let t = connect(&mut s, t0, &cookie, PSK_SUITES, "");
    s.handle_tls_data(
        t0,
        t.session,
        &cstp(0, &ip_packet(CLIENT, "10.1.0.5", 100, false)),
    )
    .unwrap();
    packets(&mut s);
    s.handle_tls_closed(t0 + Duration::from_secs(5), t.session);
    drain_events(&mut s);
    // Drive the timers like the daemon: the session ends exactly at the grace deadline.
    let mut ev = Vec::new();
    let mut when = t0;
    while ev.is_empty() {
        let (at, reason) = s.poll_timeout().expect("a pending deadline");
        assert_eq!(reason, TimerReason::Session(t.session));
        when = at;
        s.handle_timeout(at);
        ev = drain_events(&mut s);
    }
    assert_eq!(when, t0 + Duration::from_secs(305));
    assert_eq!(
        syslog(&ev),
        [
            "%ASA-6-716002: Group <ac_users_group> User <vpn> IP <203.0.113.10> WebVPN session terminated: Idle Timeout.",
            "%ASA-4-113019: Group = ac_users_group, Username = vpn, IP = 203.0.113.10, Session disconnected. Session Type: SSL, Duration: 0h:05m:05s, Bytes xmt: 0, Bytes rcv: 100, Reason: Idle Timeout",
        ]
    );
    assert!(ev.contains(&Event::SessionDown {
        session: t.session,
        address: Some(CLIENT.parse().unwrap()),
        reason: DisconnectReason::IdleTimeout
    }));
    assert_eq!(s.session_by_address(CLIENT.parse().unwrap()), None);
    assert!(
        respond(s.handle_http(when, &conn(1), &connect_req(&cookie, PSK_SUITES, "")))
            .0
            .starts_with("HTTP/1.1 401")
    );
    // The address is free again for the next user.
    let c2 = login(&mut s, when, "alice", "wonder");
    assert_eq!(
        header(
            &connect(&mut s, when, &c2, PSK_SUITES, "").head,
            "X-CSTP-Address"
        ),
        Some(CLIENT)
    );
}

#[test]
fn client_disconnect_logout_vs_reconnect_intent() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let cookie = login(&mut s, t0, "vpn", "secret");
    let t = connect(&mut s, t0, &cookie, PSK_SUITES, "");
    drain_events(&mut s);
    // Non-logout DISCONNECT: the session waits for the reconnect.
    s.handle_tls_data(t0, t.session, &cstp(0x05, &[0x00]))
        .unwrap();
    let ev = drain_events(&mut s);
    assert!(ev.contains(&Event::CloseTls { session: t.session }));
    assert!(!ev.iter().any(|e| matches!(e, Event::SessionDown { .. })));
    let t = connect(&mut s, t0, &cookie, PSK_SUITES, "");
    drain_events(&mut s);
    // Logout (0xb0): the session ends, cookie dead.
    s.handle_tls_data(
        t0 + Duration::from_secs(61),
        t.session,
        &cstp(0x05, &[0xb0]),
    )
    .unwrap();
    let ev = drain_events(&mut s);
    assert!(ev.contains(&Event::SessionDown {
        session: t.session,
        address: Some(CLIENT.parse().unwrap()),
        reason: DisconnectReason::UserRequested
    }));
    assert!(ev.contains(&Event::CloseTls { session: t.session }));
    assert!(syslog(&ev)
        .last()
        .unwrap()
        .ends_with("Duration: 0h:01m:01s, Bytes xmt: 0, Bytes rcv: 0, Reason: User Requested"));
    assert!(s.sessions(t0).is_empty());
    assert!(
        respond(s.handle_http(t0, &conn(1), &connect_req(&cookie, PSK_SUITES, "")))
            .0
            .starts_with("HTTP/1.1 401")
    );
}

#[test]
fn logoff_sends_disconnect_and_logs() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let c1 = login(&mut s, t0, "vpn", "secret");
    let t1 = connect(&mut s, t0, &c1, PSK_SUITES, "");
    let c2 = login(&mut s, t0, "alice", "wonder");
    let t2 = connect(&mut s, t0, &c2, PSK_SUITES, "");
    s.handle_dtls_up(t0, t1.session);
    drain_events(&mut s);
    assert_eq!(s.logoff(t0, Logoff::Name("nobody".into())), 0);
    assert_eq!(
        s.logoff(t0 + Duration::from_secs(3), Logoff::Name("vpn".into())),
        1
    );
    let tx = transmits(&mut s);
    let mut disc = vec![0x00];
    disc.extend_from_slice(b"Administrator Reset");
    assert_eq!(tx, vec![(t1.session, Channel::Tls, cstp(0x05, &disc))]);
    let ev = drain_events(&mut s);
    assert!(ev.contains(&Event::CloseTls {
        session: t1.session
    }));
    assert!(ev.contains(&Event::CloseDtls {
        session: t1.session
    }));
    let l = syslog(&ev);
    assert_eq!(l[0], "%ASA-4-722037: Group <ac_users_group> User <vpn> IP <203.0.113.10> SVC closing connection: Administrator Reset.");
    assert!(l.last().unwrap().ends_with("Reason: Administrator Reset"));
    assert_eq!(s.logoff(t0, Logoff::Index(t2.session.0)), 1);
    assert!(s.sessions(t0).is_empty());
    // Shutdown sends TERMINATE.
    let c3 = login(&mut s, t0, "vpn", "secret");
    let t3 = connect(&mut s, t0, &c3, PSK_SUITES, "");
    transmits(&mut s);
    s.shutdown(t0);
    assert_eq!(
        transmits(&mut s),
        vec![(t3.session, Channel::Tls, cstp(0x09, b""))]
    );
}

#[test]
fn gateway_dpd_and_idle_timeout() {
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.group_policies
        .get_mut("ac_users_group")
        .unwrap()
        .idle_timeout = Some(Duration::from_secs(300));
    let mut s = server(t0, cfg);
    let cookie = login(&mut s, t0, "vpn", "secret");
    let t = connect(&mut s, t0, &cookie, PSK_SUITES, "");
    drain_events(&mut s);
    // Silence for 30 s -> gateway DPD-REQ on TLS; the client answers.
    let (tx, _) = run(&mut s, t0, t0 + Duration::from_secs(31));
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0].1 .1, cstp(0x03, b""));
    assert_eq!(tx[0].0, t0 + Duration::from_secs(30));
    // Keepalives keep the connection alive but are not "data": idle timeout still fires.
    let mut now = t0 + Duration::from_secs(31);
    s.handle_tls_data(now, t.session, &cstp(0x04, b"")).unwrap();
    while now < t0 + Duration::from_secs(310) {
        now += Duration::from_secs(20);
        s.handle_tls_data(now, t.session, &cstp(0x07, b"")).unwrap();
        s.handle_timeout(now);
        transmits(&mut s);
    }
    let ev = drain_events(&mut s);
    assert!(
        ev.iter().any(|e| matches!(
            e,
            Event::SessionDown {
                reason: DisconnectReason::IdleTimeout,
                ..
            }
        )),
        "{ev:?}"
    );
    // Dead TLS (no answer to DPD for 3 intervals): session kept for a reconnect.
    let cookie = login(&mut s, now, "vpn", "secret");
    let t = connect(&mut s, now, &cookie, PSK_SUITES, "");
    drain_events(&mut s);
    let (_, ev) = run(&mut s, now, now + Duration::from_secs(91));
    let ev: Vec<Event> = ev.into_iter().map(|(_, e)| e).collect();
    assert!(ev.contains(&Event::CloseTls { session: t.session }));
    assert!(syslog(&ev)[0].ends_with("SVC closing connection: DPD failure."));
    assert_eq!(s.sessions(now).len(), 1);
}

#[test]
fn show_vpn_sessiondb_golden() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let cookie = login(&mut s, t0, "vpn", "secret");
    let t = connect(&mut s, t0, &cookie, LEGACY_SUITES, "");
    s.handle_dtls_up(t0, t.session);
    s.handle_tls_data(
        t0,
        t.session,
        &cstp(0, &ip_packet(CLIENT, "10.1.0.5", 1000, false)),
    )
    .unwrap();
    s.handle_tun_packet(t0, &mut ip_packet("10.1.0.5", CLIENT, 1200, false))
        .unwrap();
    let now = t0 + Duration::from_secs(312);
    let wall = UNIX_EPOCH + Duration::from_secs(1_795_432_083 + 312); // login 11:08:03 UTC
    let got = s.show_vpn_sessiondb_anyconnect(now, wall);
    let want = "
Session Type: AnyConnect

Username     : vpn                    Index        : 1
Assigned IP  : 10.99.0.100            Public IP    : 203.0.113.10
Protocol     : AnyConnect-Parent SSL-Tunnel DTLS-Tunnel
License      : AnyConnect Premium
Encryption   : AnyConnect-Parent: (1)none  SSL-Tunnel: (1)AES-GCM-256  DTLS-Tunnel: (1)AES-GCM-256
Hashing      : AnyConnect-Parent: (1)none  SSL-Tunnel: (1)SHA384  DTLS-Tunnel: (1)SHA384
Bytes Tx     : 1200                   Bytes Rx     : 1000
Group Policy : ac_users_group         Tunnel Group : RA
Login Time   : 11:08:03 UTC Mon Nov 23 2026
Duration     : 0h:05m:12s
Inactivity   : 0h:00m:00s
VLAN Mapping : N/A                    VLAN         : none
Audit Sess ID: 0a630064000000016b041e93
Security Grp : none

";
    assert_eq!(got, want);
    assert_eq!(
        s.show_vpn_sessiondb_anyconnect_filter(now, wall, &ShowFilter::Name("vpn".into())),
        want
    );
    assert_eq!(
        s.show_vpn_sessiondb_anyconnect_filter(
            now,
            wall,
            &ShowFilter::IpAddress(CLIENT.parse().unwrap())
        ),
        want
    );
    assert_eq!(
        s.show_vpn_sessiondb_anyconnect_filter(
            now,
            wall,
            &ShowFilter::IpAddress("203.0.113.10".parse().unwrap())
        ),
        want
    );
    let none = s.show_vpn_sessiondb_anyconnect_filter(now, wall, &ShowFilter::Name("alice".into()));
    assert!(none.ends_with("INFO: There are presently no active sessions\n"));
    let empty = server(t0, config()).show_vpn_sessiondb_anyconnect(now, wall);
    assert_eq!(
        empty,
        "\nSession Type: AnyConnect\n\nINFO: There are presently no active sessions\n"
    );
}

#[test]
fn snapshot_restore_keeps_cookie_and_address() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let cookie = login(&mut s, t0, "vpn", "secret");
    let t = connect(&mut s, t0, &cookie, PSK_SUITES, "");
    let c2 = login(&mut s, t0, "alice", "wonder"); // logged in, never connected
    let snap = s.snapshot(t0 + Duration::from_secs(60));
    let json = serde_json::to_string(&snap).unwrap();
    assert!(!json.contains(&cookie), "the cookie itself is never stored");
    let back: Snapshot = serde_json::from_str(&json).unwrap();
    let t1 = t0 + Duration::from_secs(70);
    let mut r = Server::restore(t1, config(), Box::new(crypto::SeededRandom::new(8)), &back);
    assert_eq!(r.sessions(t1).len(), 2);
    assert_eq!(r.sessions(t1)[0].duration, Duration::from_secs(60));
    let again = connect(
        &mut r,
        t1,
        &cookie,
        PSK_SUITES,
        &format!("X-CSTP-Address: {CLIENT}\r\n"),
    );
    assert_eq!(again.session, t.session);
    assert_eq!(header(&again.head, "X-CSTP-Address"), Some(CLIENT));
    assert_eq!(
        header(
            &connect(&mut r, t1, &c2, PSK_SUITES, "").head,
            "X-CSTP-Address"
        ),
        Some("10.99.0.101")
    );
    // New logins do not reuse indexes.
    let c3 = login(&mut r, t1, "vpn", "secret");
    let t3 = connect(&mut r, t1, &c3, PSK_SUITES, "");
    assert!(t3.session.0 > t.session.0.max(2));
}

#[test]
fn pool_exhaustion_is_refused() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    for _ in 0..3 {
        let c = login(&mut s, t0, "vpn", "secret");
        connect(&mut s, t0, &c, PSK_SUITES, "");
    }
    let c = login(&mut s, t0, "vpn", "secret");
    drain_events(&mut s);
    let (r, close) = respond(s.handle_http(t0, &conn(1), &connect_req(&c, PSK_SUITES, "")));
    assert!(r.starts_with("HTTP/1.1 503") && close);
    assert!(syslog(&drain_events(&mut s))[0].ends_with("Error responding to SVC connect request."));
}

#[test]
fn one_way_dtls_loss_detected_by_periodic_verification() {
    // Server->client datagrams vanish while the client's still arrive: no silence to notice,
    // but the DPD answer required every verify_interval (10 s) never comes.
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let id = dtls_session(&mut s, t0);
    let up = ip_packet(CLIENT, "10.1.0.5", 60, false);
    let mut rec = vec![0x00];
    rec.extend_from_slice(&up);
    let mut now = t0;
    let mut moved = None;
    let mut probes = 0;
    while now < t0 + Duration::from_secs(15) && moved.is_none() {
        now += Duration::from_millis(100);
        let tx = send_down(&mut s, now, 500);
        if tx[0].1 == Channel::Tls {
            moved = Some(now);
        }
        s.handle_dtls_record(now, id, &rec).unwrap();
        packets(&mut s);
        if s.poll_timeout().is_some_and(|(t, _)| t <= now) {
            s.handle_timeout(now);
        }
        probes += transmits(&mut s)
            .iter()
            .filter(|(_, ch, d)| *ch == Channel::Dtls && d[0] == 0x03)
            .count();
        drain_events(&mut s);
    }
    let moved = moved.expect("fell back") - t0;
    assert!(
        moved >= Duration::from_secs(10) && moved <= Duration::from_millis(11_000),
        "{moved:?}"
    );
    // The verification probe, plus at most the way-back probe triggered by client DTLS data.
    assert!((1..=2).contains(&probes), "{probes}");
}

#[test]
fn verification_answered_keeps_dtls() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let id = dtls_session(&mut s, t0);
    let mut now = t0;
    let mut probes = 0;
    while now < t0 + Duration::from_secs(35) {
        now += Duration::from_millis(100);
        assert_eq!(
            send_down(&mut s, now, 500)[0].1,
            Channel::Dtls,
            "at {:?}",
            now - t0
        );
        if s.poll_timeout().is_some_and(|(t, _)| t <= now) {
            s.handle_timeout(now);
        }
        for (_, ch, d) in transmits(&mut s) {
            if ch == Channel::Dtls && d[0] == 0x03 {
                probes += 1;
                let mut r = d.clone();
                r[0] = 0x04;
                s.handle_dtls_record(now, id, &r).unwrap();
            }
        }
        assert!(drain_events(&mut s)
            .iter()
            .all(|e| !matches!(e, Event::ChannelChange { .. })));
    }
    // Download-only traffic: silence triggers probes after 1 s of unanswered sending, each
    // answered; no fallback.
    assert!(probes >= 3, "{probes}");
}

#[test]
fn policy_without_ssl_client_and_aaa_certificate_groups() {
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.group_policies
        .get_mut("ac_users_group")
        .unwrap()
        .ssl_client = false;
    let mut s = server(t0, cfg);
    let (r, close) = respond(s.handle_http(t0, &conn(1), &post(OC_INIT, &[])));
    assert!(r.starts_with("HTTP/1.1 403") && close, "{r}");
    assert!(drain_events(&mut s)
        .iter()
        .any(|e| matches!(e, Event::Refused { reason, .. } if reason.contains("ssl-client"))));

    let mut cfg = config();
    cfg.tunnel_groups[0].authentication = AuthMethod::AaaCertificate;
    cfg.group_list = false;
    let mut s = server(t0, cfg);
    let (r, close) = respond(s.handle_http(t0, &conn(1), &post(OC_INIT, &[])));
    assert!(r.starts_with("HTTP/1.1 401") && close, "{r}");
    let mut c = conn(1);
    c.client_cert = Some(ClientCert {
        common_name: "vpn".into(),
    });
    let (form, _) = respond(s.handle_http(t0, &c, &post(OC_INIT, &[])));
    assert!(
        form.contains("name=\"password\"") && !form.contains("<select"),
        "{form}"
    );
    let h = set_cookie(&form, "webvpncontext").unwrap();
    let (done, _) =
        respond(s.handle_http(t0, &c, &post(&oc_reply("vpn", "secret", None, &h), &[])));
    assert!(done.contains("type=\"complete\""));
}

#[test]
fn too_big_answers_are_rate_limited() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let cookie = login(&mut s, t0, "vpn", "secret");
    connect(&mut s, t0, &cookie, PSK_SUITES, "");
    drain_events(&mut s);
    let mut icmp = 0;
    let mut logs = 0;
    // 1000 oversize DF packets within one second (1 ms apart).
    for k in 0..1000u64 {
        let now = t0 + Duration::from_millis(k);
        let mut big = ip_packet("10.10.10.1", CLIENT, 1418, true);
        assert_eq!(s.handle_tun_packet(now, &mut big), Err(TunDrop::TooBig));
        icmp += packets(&mut s).len();
        logs += syslog(&drain_events(&mut s))
            .iter()
            .filter(|l| l.contains("722036"))
            .count();
    }
    assert_eq!(icmp, 100);
    assert_eq!(logs, 10);
    assert_eq!(s.stats().too_big_dropped, 1000);
    assert_eq!(s.stats().icmp_suppressed, 900);
}

/// The three POST bodies exactly as openconnect 9.01 sent them to this engine (captured with
/// `--dump-http-traffic`, `--authgroup RA`, README "Checked against openconnect 9.01"): init,
/// init again with the group selection, then the reply echoing our opaque block.
#[test]
fn captured_openconnect_901_exchange() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let c = conn(46676);
    let hdr = |len: usize, cookie: Option<&str>| {
        let ck = cookie
            .map(|v| format!("Cookie: webvpncontext={v}\r\n"))
            .unwrap_or_default();
        format!("POST / HTTP/1.1\r\nHost: 127.0.0.1:8443\r\nUser-Agent: Open AnyConnect VPN Agent v9.01-3\r\n{ck}Accept: */*\r\nAccept-Encoding: identity\r\nX-Transcend-Version: 1\r\nX-Aggregate-Auth: 1\r\nX-Support-HTTP-Auth: true\r\nX-AnyConnect-STRAP-Pubkey: MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\r\nContent-Type: application/xml; charset=utf-8\r\nContent-Length: {len}\r\n\r\n")
    };
    let init = r#"<?xml version="1.0" encoding="UTF-8"?>
<config-auth client="vpn" type="init" aggregate-auth-version="2"><version who="vpn">v9.01-3</version><device-id>linux-64</device-id><capabilities><auth-method>single-sign-on-v2</auth-method><auth-method>single-sign-on-external-browser</auth-method></capabilities><group-access>https://127.0.0.1:8443/</group-access></config-auth>"#;
    let req = [hdr(init.len(), None).as_bytes(), init.as_bytes()].concat();
    let (form, _) = respond(s.handle_http(t0, &c, &req));
    let h = set_cookie(&form, "webvpncontext").unwrap();
    let init2 = init.replace(
        "</group-access></config-auth>",
        "</group-access><group-select>RA</group-select></config-auth>",
    );
    let req = [hdr(init2.len(), Some(&h)).as_bytes(), init2.as_bytes()].concat();
    let (form2, _) = respond(s.handle_http(t0, &c, &req));
    assert_eq!(
        set_cookie(&form2, "webvpncontext").as_deref(),
        Some(h.as_str()),
        "same login context"
    );
    assert!(form2.contains("<option selected=\"true\">RA</option>"));
    let reply = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<config-auth client=\"vpn\" type=\"auth-reply\" aggregate-auth-version=\"2\"><version who=\"vpn\">v9.01-3</version><device-id>linux-64</device-id><capabilities><auth-method>single-sign-on-v2</auth-method><auth-method>single-sign-on-external-browser</auth-method></capabilities><opaque is-for=\"sg\">\n<tunnel-group>RA</tunnel-group>\n<group-alias>RA</group-alias>\n<aggauth-handle>{h}</aggauth-handle>\n</opaque><auth><username>vpn</username><password>secret</password></auth><group-select>RA</group-select></config-auth>"
    );
    let req = [hdr(reply.len(), Some(&h)).as_bytes(), reply.as_bytes()].concat();
    let (done, _) = respond(s.handle_http(t0, &c, &req));
    assert!(done.contains("type=\"complete\""), "{done}");
    // Exactly one half-open login was used for the whole exchange, and it is gone now.
    assert_eq!(s.stats().auth_pending_refused, 0);
    let cookie = set_cookie(&done, "webvpn").unwrap();
    let t = connect(&mut s, t0, &cookie, PSK_SUITES, "");
    assert_eq!(header(&t.head, "X-CSTP-Address"), Some(CLIENT));
}

#[test]
fn reconnect_repeats_the_first_mtu() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let cookie = login(&mut s, t0, "vpn", "secret");
    let first = connect(&mut s, t0, &cookie, PSK_SUITES, "");
    assert_eq!(header(&first.head, "X-CSTP-MTU"), Some("1343"));
    s.handle_tls_closed(t0, first.session);
    // The reconnect lands on a TLS 1.2 AES-CBC-SHA384 connection (TLS MTU 1287) from a path
    // with Base-MTU 1300: the client is still told 1343 (it would not apply a change anyway).
    let mut c = conn(40002);
    c.tls_cipher = "ECDHE-RSA-AES256-SHA384".into();
    let req = String::from_utf8(connect_req(&cookie, PSK_SUITES, ""))
        .unwrap()
        .replace("Base-MTU: 1500", "Base-MTU: 1300");
    let head = match s.handle_http(t0, &c, req.as_bytes()) {
        Ok(HttpOutcome::Tunnel { bytes, .. }) => String::from_utf8(bytes).unwrap(),
        o => panic!("{o:?}"),
    };
    assert_eq!(header(&head, "X-CSTP-MTU"), Some("1343"));
    assert_eq!(header(&head, "X-DTLS-MTU"), Some("1343"));
    // ...and a full-size DF packet for the client still gets through on TLS, no ICMP.
    let mut p = ip_packet("10.1.0.5", CLIENT, 1343, true);
    s.handle_tun_packet(t0, &mut p).unwrap();
    assert_eq!(transmits(&mut s)[0].1, Channel::Tls);
    assert!(packets(&mut s).is_empty());
}

/// asa.md §6 reproduced with `MtuPolicy::Split` (RC4-SHA TLS, DTLS never comes up): the
/// adapter gets 1434 (1418 on the ASA's CBC default), a SYN's MSS 1378 passes the tcpmss
/// clamp, the server's 1418-byte segments exceed the TLS threshold 1347 -> dropped with
/// ICMP + 722036. The same client under `MtuPolicy::Common` is told 1347 and its SYNs are
/// clamped to 1307, so no segment ever exceeds the threshold.
#[test]
fn asa_black_hole_split_vs_common() {
    for (policy, adapter, mss, too_big) in [
        (MtuPolicy::Split, "1434", 1378, true),
        (MtuPolicy::Common, "1347", 1307, false),
    ] {
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.mtu_policy = policy;
        let mut s = server(t0, cfg);
        let cookie = login(&mut s, t0, "vpn", "secret");
        let mut c = conn(40001);
        c.tls_cipher = "RC4-SHA".into();
        let head = match s.handle_http(t0, &c, &connect_req(&cookie, PSK_SUITES, "")) {
            Ok(HttpOutcome::Tunnel { bytes, .. }) => String::from_utf8(bytes).unwrap(),
            o => panic!("{o:?}"),
        };
        assert_eq!(header(&head, "X-DTLS-MTU"), Some(adapter));
        // The browser's SYN (MSS from a 1418-byte adapter: 1378) through the tunnel.
        s.handle_tls_data(t0, SessionId(1), &cstp(0, &syn(CLIENT, "10.10.10.1", 1378)))
            .unwrap();
        let p = packets(&mut s).remove(0);
        assert_eq!(
            TcpPacket::new_checked(&p[20..]).unwrap().mss(),
            Some(mss),
            "{policy:?}"
        );
        // The server answers with full segments (MSS + 40) and DF.
        let mut seg = ip_packet("10.10.10.1", CLIENT, usize::from(mss) + 40, true);
        let r = s.handle_tun_packet(t0, &mut seg);
        assert_eq!(r.is_err(), too_big, "{policy:?}");
        assert_eq!(s.stats().icmp_sent, u64::from(too_big));
    }
}

#[test]
fn failed_logins_are_limited_per_address() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let c = conn(7);
    let mut now = t0;
    let mut codes = Vec::new();
    for _ in 0..6 {
        let h = start_login(&mut s, now, &c);
        for _ in 0..3 {
            now += Duration::from_millis(500);
            let (r, _) = respond(s.handle_http(
                now,
                &c,
                &post(
                    &oc_reply("vpn", "guess", None, &h),
                    &[("webvpncontext", &h)],
                ),
            ));
            codes.push(r[9..12].to_string());
            if !r.starts_with("HTTP/1.1 200") {
                break;
            }
        }
    }
    // 10 failures are answered (each 3rd with 401), then every reply gets 429 unhashed.
    assert_eq!(s.stats().auth_failures, 10);
    assert_eq!(
        codes[..10].iter().filter(|c| *c == "401").count(),
        3,
        "{codes:?}"
    );
    assert_eq!(codes[10..], ["429", "429", "429"], "{codes:?}");
    // Even the right password is refused from this address until the window passes...
    let h = start_login(&mut s, now, &c);
    let (r, _) = respond(s.handle_http(now, &c, &post(&oc_reply("vpn", "secret", None, &h), &[])));
    assert!(r.starts_with("HTTP/1.1 429"), "{r}");
    // ...while another address logs in normally, and this one can again a minute later.
    let other = ConnInfo {
        peer: "198.51.100.9:5".parse().unwrap(),
        ..conn(7)
    };
    let h = start_login(&mut s, now, &other);
    assert!(respond(s.handle_http(
        now,
        &other,
        &post(&oc_reply("vpn", "secret", None, &h), &[])
    ))
    .0
    .contains("complete"));
    let later = t0 + Duration::from_secs(61);
    let h = start_login(&mut s, later, &c);
    assert!(
        respond(s.handle_http(later, &c, &post(&oc_reply("vpn", "secret", None, &h), &[])))
            .0
            .contains("complete")
    );
}

/// A slow but working DTLS path (probe answers take `delay`) is not mistaken for a dead one:
/// the probe wait adapts to the measured RTT (4 x srtt, 0.7-1.0 s).
#[test]
fn slow_dtls_path_is_not_declared_dead() {
    for (delay_ms, max_fallbacks) in [(400u64, 0u32), (900, 1)] {
        let t0 = Instant::now();
        let mut s = server(t0, config());
        let id = dtls_session(&mut s, t0);
        let delay = Duration::from_millis(delay_ms);
        let mut inflight: Vec<(Instant, Vec<u8>)> = Vec::new();
        let mut now = t0;
        while now < t0 + Duration::from_secs(20) {
            now += Duration::from_millis(50);
            let mut p = ip_packet("10.1.0.5", CLIENT, 500, true);
            s.handle_tun_packet(now, &mut p).unwrap();
            if s.poll_timeout().is_some_and(|(t, _)| t <= now) {
                s.handle_timeout(now);
            }
            while let Some(t) = s.poll_transmit() {
                if t.channel == Channel::Dtls && t.data[0] == 0x03 {
                    let mut r = t.data.to_vec();
                    r[0] = 0x04;
                    inflight.push((now + delay, r));
                }
            }
            let due: Vec<Vec<u8>> = inflight
                .iter()
                .filter(|(t, _)| *t <= now)
                .map(|(_, r)| r.clone())
                .collect();
            inflight.retain(|(t, _)| *t > now);
            for r in due {
                s.handle_dtls_record(now, id, &r).unwrap();
            }
            drain_events(&mut s);
        }
        let info = &s.sessions(now)[0];
        assert!(
            info.fallbacks <= max_fallbacks,
            "{delay_ms} ms: {} fallbacks",
            info.fallbacks
        );
        assert_eq!(info.tx_channel, Some(Channel::Dtls), "{delay_ms} ms");
    }
}

/// A dropped connection is reported (the daemon keeps the session's flows); the saved form
/// holds no byte of the cookie; after a restart the downtime counts against the grace, the
/// cookie still reconnects to the same address, and a grace that ran out ends the session.
#[test]
fn snapshot_across_downtime_counts_the_grace_and_holds_no_cookie_bytes() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let cookie = login(&mut s, t0, "vpn", "secret");
    let t = connect(&mut s, t0, &cookie, PSK_SUITES, "");
    drain_events(&mut s);
    s.handle_tls_closed(t0 + Duration::from_secs(10), t.session);
    let ev = drain_events(&mut s);
    assert!(
        ev.contains(&Event::SessionDisconnected { session: t.session, address: Some(CLIENT.parse().unwrap()) }),
        "{ev:?}"
    );
    let snap = s.snapshot(t0 + Duration::from_secs(20));
    assert_eq!(snap.sessions[0].disconnected_for, Some(Duration::from_secs(10)));
    // No 8-byte window of the cookie appears anywhere in the serialized form.
    let mut raw = [0u8; 32];
    hex::decode_to_slice(&cookie, &mut raw).unwrap();
    let json = serde_json::to_string(&snap).unwrap();
    let numbers: Vec<u8> = json
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u16>().ok())
        .filter_map(|n| u8::try_from(n).ok())
        .collect();
    assert!(numbers.windows(8).all(|w| raw.windows(8).all(|c| c != w)), "cookie bytes in the snapshot");
    assert!(!json.to_ascii_uppercase().contains(&cookie.to_ascii_uppercase()));

    // Restart 200 s later: 10 + 200 of the 300 s grace are gone.
    let back: Snapshot = serde_json::from_str::<Snapshot>(&json).unwrap().aged(Duration::from_secs(200));
    let t1 = t0 + Duration::from_secs(1000);
    let mut r = Server::restore(t1, config(), Box::new(crypto::SeededRandom::new(9)), &back);
    assert_eq!(r.poll_timeout().map(|(at, _)| at), Some(t1 + Duration::from_secs(90)));
    let again = connect(&mut r, t1, &cookie, PSK_SUITES, &format!("X-CSTP-Address: {CLIENT}\r\n"));
    assert_eq!((again.session, header(&again.head, "X-CSTP-Address")), (t.session, Some(CLIENT)));
    assert!(drain_events(&mut r).iter().any(|e| matches!(e, Event::SessionUp { reconnect: true, .. })));

    // The same snapshot restored after more than the grace: the session ends at once.
    let late = serde_json::from_str::<Snapshot>(&json).unwrap().aged(Duration::from_secs(400));
    let mut r = Server::restore(t1, config(), Box::new(crypto::SeededRandom::new(9)), &late);
    r.handle_timeout(t1);
    let ev = drain_events(&mut r);
    assert!(ev.iter().any(|e| matches!(e, Event::SessionDown { reason: DisconnectReason::IdleTimeout, .. })), "{ev:?}");
    assert!(respond(r.handle_http(t1, &conn(1), &connect_req(&cookie, PSK_SUITES, ""))).0.starts_with("HTTP/1.1 401"));
}

// ---------------------------------------------------------------------------------------
// Two-step password logins (handle_http_deferred + handle_password_verdict)

fn deferred_post(s: &mut Server, now: Instant, c: &ConnInfo, user: &str, pass: &str, h: &str) -> (PasswordCheck, usize) {
    let req = post(&oc_reply(user, pass, None, h), &[("webvpncontext", h)]);
    match s.handle_http_deferred(now, c, &req) {
        Ok(HttpStep::VerifyPassword(check)) => (check, req.len()),
        other => panic!("expected a password check, got {other:?}"),
    }
}

fn verdict_response(o: HttpOutcome) -> (String, usize, bool) {
    match o {
        HttpOutcome::Respond { bytes, consumed, close } => (String::from_utf8(bytes).unwrap(), consumed, close),
        other => panic!("expected a response, got {other:?}"),
    }
}

#[test]
fn deferred_password_wrong_then_right() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let c = conn(40000);
    let h = start_login(&mut s, t0, &c);
    drain_events(&mut s);

    let (check, len) = deferred_post(&mut s, t0, &c, "vpn", "nope", &h);
    // Nothing decided yet: no syslog, no counters, and the secret stays out of Debug.
    assert!(drain_events(&mut s).is_empty());
    assert_eq!(s.stats().auth_failures, 0);
    assert!(!format!("{check:?}").contains("nope"));
    let ok = check.verify();
    assert!(!ok);
    let (r, consumed, close) = verdict_response(s.handle_password_verdict(t0, &c, check.ticket(), ok));
    assert_eq!(consumed, len);
    assert!(!close);
    assert!(r.contains("Login failed."), "{r}");
    assert!(syslog(&drain_events(&mut s)).iter().any(|l| l.contains("113015") && l.contains("Invalid password")));
    assert_eq!(s.stats().auth_failures, 1);

    let (check, len) = deferred_post(&mut s, t0, &c, "vpn", "secret", &h);
    assert!(check.verify());
    let (r, consumed, _) = verdict_response(s.handle_password_verdict(t0, &c, check.ticket(), true));
    assert_eq!(consumed, len);
    assert!(r.contains("type=\"complete\""), "{r}");
    let cookie = set_cookie(&r, "webvpn").expect("session cookie");
    assert!(syslog(&drain_events(&mut s)).iter().any(|l| l.contains("113012") && l.contains("user = vpn")));
    // The cookie is a real session: CONNECT gets the tunnel.
    let t = connect(&mut s, t0, &cookie, PSK_SUITES, "");
    assert!(t.head.starts_with("HTTP/1.1 200 CONNECTED"));
    // The ticket is spent: answering it again logs nobody in.
    let (r, consumed, close) = verdict_response(s.handle_password_verdict(t0, &c, check.ticket(), true));
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    assert_eq!((consumed, close), (0, true));
    assert_eq!(s.stats().auth_stale_verdicts, 1);
}

#[test]
fn deferred_verdict_for_unknown_user_is_ignored() {
    // The verification for an unknown name runs only to cost the same time; even a verdict
    // of "matches" must not log anyone in.
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let c = conn(40000);
    let h = start_login(&mut s, t0, &c);
    drain_events(&mut s);
    let (check, _) = deferred_post(&mut s, t0, &c, "mallory", "secret", &h);
    let (r, _, _) = verdict_response(s.handle_password_verdict(t0, &c, check.ticket(), true));
    assert!(r.contains("Login failed."), "{r}");
    assert!(syslog(&drain_events(&mut s))[0].contains("reason = Invalid username : local database : user = mallory"));
    assert_eq!(s.session_count(), 0);
}

#[test]
fn deferred_verdict_after_the_login_went_away() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let c = conn(40000);
    let h = start_login(&mut s, t0, &c);
    let (check, _) = deferred_post(&mut s, t0, &c, "vpn", "secret", &h);
    assert!(check.verify());
    // Another connection (other source port) cannot use this connection's ticket...
    let other = conn(40002);
    let (r, consumed, close) = verdict_response(s.handle_password_verdict(t0, &other, check.ticket(), true));
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    assert_eq!((consumed, close), (0, true));
    // ...which leaves it to its owner; but the owner answers after the login context expired.
    drain_events(&mut s);
    let late = t0 + s.config().limits.pending_auth_lifetime + Duration::from_secs(1);
    let (r, consumed, close) = verdict_response(s.handle_password_verdict(late, &c, check.ticket(), true));
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    // Expired with its context, so the engine no longer knows the request it belonged to.
    assert_eq!((consumed, close), (0, true));
    assert_eq!(s.session_count(), 0);
    assert!(drain_events(&mut s).iter().any(|e| matches!(e, Event::Refused { reason, .. } if reason.contains("no longer pending"))));
    assert_eq!(s.stats().auth_stale_verdicts, 2);

    // The login context dies while its check is still running: three wrong passwords on a
    // second connection with the same context end it; the right password that comes back
    // afterwards for the first connection logs nobody in.
    let h = start_login(&mut s, late, &c);
    let (check, len) = deferred_post(&mut s, late, &c, "vpn", "secret", &h);
    for _ in 0..3 {
        respond(s.handle_http(late, &other, &post(&oc_reply("vpn", "nope", None, &h), &[("webvpncontext", &h)])));
    }
    drain_events(&mut s);
    let (r, consumed, close) = verdict_response(s.handle_password_verdict(late, &c, check.ticket(), check.verify()));
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    assert_eq!((consumed, close), (len, true));
    assert!(drain_events(&mut s).iter().any(|e| matches!(e, Event::Refused { reason, .. } if reason.contains("expired during the password check"))));
    assert_eq!(s.session_count(), 0);
    assert_eq!(s.stats().auth_stale_verdicts, 3);
    assert_eq!(s.stats().auth_success, 0);
}

#[test]
fn deferred_checks_in_flight_count_against_the_address_budget() {
    // Once an address has failed, parallel connections must not all get a verification
    // before the next failure is counted: in-flight checks count as failures-to-be.
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.limits.auth_failures_per_peer = 3;
    let mut s = server(t0, cfg);
    let login = |s: &mut Server, port: u16| {
        let c = conn(41000 + port);
        let h = start_login(s, t0, &c);
        (c, h)
    };
    let (c, h) = login(&mut s, 0);
    let (check, _) = deferred_post(&mut s, t0, &c, "vpn", "guess", &h);
    verdict_response(s.handle_password_verdict(t0, &c, check.ticket(), check.verify()));
    assert_eq!(s.stats().auth_failures, 1);
    let mut checks = Vec::new();
    for port in 1..3u16 {
        let (c, h) = login(&mut s, port);
        checks.push((c.clone(), deferred_post(&mut s, t0, &c, "vpn", "guess", &h).0));
    }
    // 1 failure + 2 in flight = the budget of 3.
    let (c, h) = login(&mut s, 9);
    let req = post(&oc_reply("vpn", "guess", None, &h), &[("webvpncontext", &h)]);
    match s.handle_http_deferred(t0, &c, &req) {
        Ok(HttpStep::Done(HttpOutcome::Respond { bytes, close, .. })) => {
            assert!(String::from_utf8(bytes).unwrap().starts_with("HTTP/1.1 429"));
            assert!(close);
        }
        other => panic!("expected 429, got {other:?}"),
    }
    for (c, check) in checks {
        let ok = check.verify();
        verdict_response(s.handle_password_verdict(t0, &c, check.ticket(), ok));
    }
    assert_eq!(s.stats().auth_failures, 3);
    assert_eq!(s.stats().auth_rate_limited, 1);
}

#[test]
fn deferred_checks_in_flight_are_capped_per_address() {
    // No failures yet (many users behind one address): not rate limited, but at most
    // `pending_auth_per_peer` verifications from one address at once.
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.limits.pending_auth_per_peer = 2;
    let mut s = server(t0, cfg);
    let c0 = conn(42000);
    let h = start_login(&mut s, t0, &c0);
    let (a, _) = deferred_post(&mut s, t0, &c0, "vpn", "secret", &h);
    let c1 = conn(42001);
    let (b, _) = deferred_post(&mut s, t0, &c1, "vpn", "secret", &h);
    let c2 = conn(42002);
    let req = post(&oc_reply("vpn", "secret", None, &h), &[("webvpncontext", &h)]);
    match s.handle_http_deferred(t0, &c2, &req) {
        Ok(HttpStep::Done(HttpOutcome::Respond { bytes, close, .. })) => {
            assert!(String::from_utf8(bytes).unwrap().starts_with("HTTP/1.1 503"));
            assert!(close);
        }
        other => panic!("expected 503, got {other:?}"),
    }
    // The first verdict logs in (and ends the shared context); the second then finds its
    // login gone.
    let (r, _, _) = verdict_response(s.handle_password_verdict(t0, &c0, a.ticket(), a.verify()));
    assert!(r.contains("type=\"complete\""), "{r}");
    let (r, _, _) = verdict_response(s.handle_password_verdict(t0, &c1, b.ticket(), b.verify()));
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    assert_eq!(s.session_count(), 1);
}

/// https://gw/NOSUCH: no tunnel-group or alias of that name. The ASA puts such a client in
/// DefaultWEBVPNGroup; we continue in the default group too, but log 716900 once, naming what
/// was asked and what was given, and a later reply of the same login does not repeat it.
#[test]
fn unknown_url_group_falls_back_to_default_with_716900() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let c = conn(40000);
    let want = "%ASA-5-716900: IP <203.0.113.10> Group <NOSUCH> requested in the connection URL matches no tunnel-group or group-alias; using tunnel-group <RA>.";
    // openconnect https://192.0.2.1/NOSUCH: the group in <group-access> and in the POST path.
    let init = OC_INIT.replace("https://192.0.2.1/", "https://192.0.2.1/NOSUCH");
    let req = String::from_utf8(post(&init, &[])).unwrap().replacen("POST / ", "POST /NOSUCH ", 1);
    let (form, close) = respond(s.handle_http(t0, &c, req.as_bytes()));
    assert!(!close && form.contains("<tunnel-group>RA</tunnel-group>"), "{form}");
    assert!(!form.contains("not a valid group"), "a URL group is not an error: {form}");
    let ev = drain_events(&mut s);
    assert_eq!(syslog(&ev), vec![want.to_string()]);
    assert!(!ev.iter().any(|e| matches!(e, Event::Refused { .. })), "{ev:?}");
    assert_eq!(s.stats().auth_unknown_group, 0);
    // The reply continues the same login (no group-select): it completes in RA, no second 716900.
    let handle = set_cookie(&form, "webvpncontext").unwrap();
    let reply = oc_reply("vpn", "secret", None, &handle);
    let (done, _) = respond(s.handle_http(t0, &c, &post(&reply, &[("webvpncontext", &handle)])));
    assert!(done.contains("type=\"complete\""), "{done}");
    let lines = syslog(&drain_events(&mut s));
    assert!(!lines.iter().any(|l| l.contains("716900")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("113012")), "{lines:?}");

    // Only the <group-access> URL names an unknown alias (POST to /): the same line.
    let init = OC_INIT.replace("https://192.0.2.1/", "https://192.0.2.1/Sales?x=1");
    let (form, _) = respond(s.handle_http(t0, &c, &post(&init, &[])));
    assert!(form.contains("<tunnel-group>RA</tunnel-group>"), "{form}");
    assert_eq!(
        syslog(&drain_events(&mut s)),
        vec![want.replace("<NOSUCH>", "<Sales>")]
    );
    // A URL naming a real alias (case-insensitive, as the ASA matches aliases) logs nothing
    // and selects that group.
    let init = OC_INIT.replace("https://192.0.2.1/", "https://192.0.2.1/certificates");
    let (r, _) = respond(s.handle_http(t0, &c, &post(&init, &[])));
    assert!(r.starts_with("HTTP/1.1 401"), "the certificate group wants a certificate: {r}");
    assert!(!syslog(&drain_events(&mut s)).iter().any(|l| l.contains("716900")));
    // No group in the URL at all: the default group, silently.
    let (form, _) = respond(s.handle_http(t0, &c, &post(OC_INIT, &[])));
    assert!(form.contains("<tunnel-group>RA</tunnel-group>"), "{form}");
    assert!(syslog(&drain_events(&mut s)).is_empty());
}

/// X-DTLS-MTU at CONNECT comes from the cipher the DTLS channel will really use: the legacy
/// cipher the server picks, or (PSK-NEGOTIATE, negotiated only after CONNECT) the largest
/// expansion among the PSK suites the I/O layer offers. The terms are the issue's
/// `1380 - 5 - 8 - 0 - 20` arithmetic carried over to DTLS. X-DTLS-MTU 1406 under AES-GCM is the
/// ASA's default `anyconnect mtu 1406` capping the channel, not a CBC assumption.
#[test]
fn x_dtls_mtu_follows_the_dtls_cipher_psk_and_legacy() {
    let t0 = Instant::now();
    // TLS 1.2 ECDHE-RSA-AES256-GCM-SHA384 (conn()): 1380 - 5 - 8 (CSTP) - 8 (nonce) - 16 (tag).
    let tls = (1380 - 5 - 8 - 8 - 16).to_string();
    let gcm = (1500 - 13 - 8 - 16 - 1 - 28).to_string(); // DTLS header, nonce, tag, type, IPv4+UDP
    let cbc_sha1 = (1500 - 13 - 16 - 16 - 20 - 1 - 28).to_string(); // header, IV, pad, SHA1
    let split = || {
        let mut cfg = config();
        cfg.mtu_policy = MtuPolicy::Split;
        cfg
    };
    // PSK-NEGOTIATE.
    let mut s = server(t0, split());
    let cookie = login(&mut s, t0, "vpn", "secret");
    let t = connect(&mut s, t0, &cookie, PSK_SUITES, "");
    assert!(matches!(t.dtls, Some(DtlsKeying::Psk { .. })));
    assert_eq!(header(&t.head, "X-CSTP-MTU"), Some(tls.as_str()));
    assert_eq!(header(&t.head, "X-DTLS-MTU"), Some(gcm.as_str()), "{}", t.head);
    // Legacy: each cipher we can key, offered alone in the header it belongs to.
    use LegacyCipher::*;
    for (cipher, want) in [
        (OcDtls12Aes256Gcm, &gcm),
        (OcDtls12Aes128Gcm, &gcm),
        (Dtls12EcdheRsaAes256Gcm, &gcm),
        (Dtls12EcdheRsaAes128Gcm, &gcm),
        (Aes256Sha, &cbc_sha1),
        (Aes128Sha, &cbc_sha1),
    ] {
        let mut cfg = split();
        cfg.legacy_dtls_ciphers = vec![cipher];
        let mut s = server(t0, cfg);
        let cookie = login(&mut s, t0, "vpn", "secret");
        let hdr = if cipher.in_dtls12_header() { "X-DTLS12-CipherSuite" } else { "X-DTLS-CipherSuite" };
        let suites = format!("{hdr}: {}\r\n", cipher.client_name());
        let t = connect(&mut s, t0, &cookie, &suites, "");
        assert!(matches!(t.dtls, Some(DtlsKeying::Legacy { cipher: c, .. }) if c == cipher), "{cipher:?}");
        assert_eq!(header(&t.head, "X-DTLS-MTU"), Some(want.as_str()), "{cipher:?}: {}", t.head);
        assert_eq!(header(&t.head, "X-CSTP-MTU"), Some(tls.as_str()), "{cipher:?}");
    }
    // The same through the configuration: a split group policy without `anyconnect mtu` gets
    // the ASA default 1406, which caps the PSK channel's 1434; `anyconnect mtu 1462` does not.
    for (mtu_line, policy_mtu, want) in [("", 1406, "1406"), ("  anyconnect mtu 1462\n", 1462, gcm.as_str())] {
        let text = format!(
            "ip local pool VPNPOOL 10.99.0.100-10.99.0.199 mask 255.255.255.0\n\
             webvpn\n enable outside\n anyconnect enable\n\
             group-policy ac_users_group internal\n\
             group-policy ac_users_group attributes\n vpn-tunnel-protocol ssl-client\n webvpn\n  anyconnect mtu-policy split\n{mtu_line}\
             tunnel-group RA type remote-access\n\
             tunnel-group RA general-attributes\n address-pool VPNPOOL\n default-group-policy ac_users_group\n\
             crypto ca trustpoint VPN-TP\n certificate-file /etc/holdfast/server.pem\n key-file /etc/holdfast/server.key\n\
             ssl trust-point VPN-TP outside\n"
        );
        let loaded = ::config::parse("mtu.cfg", &text).unwrap_or_else(|d| panic!("{d}"));
        let from_cfg = config_from_policy(&loaded.config);
        let gp = from_cfg.group_policies["ac_users_group"].clone();
        assert_eq!(gp.mtu, Some(policy_mtu));
        let mut cfg = config();
        cfg.group_policies.insert("ac_users_group".into(), gp);
        let mut s = server(t0, cfg);
        let cookie = login(&mut s, t0, "vpn", "secret");
        let t = connect(&mut s, t0, &cookie, PSK_SUITES, "");
        assert_eq!(header(&t.head, "X-DTLS-MTU"), Some(want), "{mtu_line:?}: {}", t.head);
        assert_eq!(header(&t.head, "X-CSTP-MTU"), Some(tls.as_str()), "{mtu_line:?}");
    }
}
