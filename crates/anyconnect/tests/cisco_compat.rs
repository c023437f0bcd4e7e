//! What Cisco Secure Client (AnyConnect 4.x/5.x) needs from the server side beyond what
//! openconnect 9.01 uses (/work/notes/csc-review.md): the server certificate hash in the
//! `complete` document and the `webvpnc` cookie, the housekeeping GETs, the logout post, the
//! rekey method and the ASA-default CONNECT headers. Only openconnect runs here, so these
//! tests check the engine against the documented shapes (ASA, ocserv, anylink).

// The virtual clock needs some starting Instant; everything after it is computed.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use anyconnect::*;
use common::{conn_at, cookie_header, drain_events, pool, respond, set_cookie, tunnel_group, user};
use quick_xml::events::Event as XmlEvent;
use quick_xml::Reader;

const HASH: &str = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B";

fn config() -> Config {
    Config {
        server_cert_sha1: HASH.into(),
        ..common::config_of(
            vec![user("vpn", "secret")],
            vec![tunnel_group("RA", "RA", "pol", "POOL", AuthMethod::Aaa)],
            vec![("pol", GroupPolicy::default())],
            vec![("POOL", pool("10.99.0.100", "10.99.0.102"))],
        )
    }
}

fn conn(port: u16) -> ConnInfo {
    conn_at(SocketAddr::new("203.0.113.20".parse().unwrap(), port))
}

fn server(now: Instant, cfg: Config) -> Server {
    Server::new(now, cfg, Box::new(crypto::SeededRandom::new(11)))
}

/// The init a Cisco Secure Client 5.x posts (aggregate auth, `device-id` with platform
/// attributes; the shape ASA clients use).
const CISCO_INIT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<config-auth client="vpn" type="init" aggregate-auth-version="2">
<version who="vpn">5.1.2.42</version>
<device-id computer-name="pc" device-type="VMware" platform-version="10.0.19045" unique-id="ABCDEF">win</device-id>
<mac-address-list><mac-address public-interface="true">00-0c-29-00-00-01</mac-address></mac-address-list>
<group-select>RA</group-select>
<group-access>https://vpn.example/</group-access>
<capabilities><auth-method>single-sign-on-v2</auth-method><auth-method>multiple-cert</auth-method></capabilities>
</config-auth>
"#;

fn cisco_reply(handle: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<config-auth client="vpn" type="auth-reply" aggregate-auth-version="2">
<version who="vpn">5.1.2.42</version>
<device-id>win</device-id>
<session-token></session-token>
<session-id></session-id>
<opaque is-for="sg"><tunnel-group>RA</tunnel-group><aggauth-handle>{handle}</aggauth-handle></opaque>
<auth><username>vpn</username><password>secret</password></auth>
<group-select>RA</group-select>
</config-auth>
"#
    )
}

/// A POST the way Cisco clients send it (User-Agent "AnyConnect ...", X-Aggregate-Auth, no
/// Content-Type).
fn post(body: &str, cookies: &[(&str, &str)]) -> Vec<u8> {
    let mut h = String::from("POST / HTTP/1.1\r\nHost: vpn.example\r\nUser-Agent: AnyConnect Windows 5.1.2.42\r\n");
    h += "Accept: */*\r\nX-Transcend-Version: 1\r\nX-Aggregate-Auth: 1\r\n";
    h += &cookie_header(cookies);
    h += &format!("Content-Length: {}\r\n\r\n{body}", body.len());
    h.into_bytes()
}

/// Every `Set-Cookie` value (whole attribute list) for `name`, non-empty values only.
fn set_cookie_line(resp: &str, name: &str) -> Option<String> {
    resp.lines()
        .filter_map(|l| l.strip_prefix("Set-Cookie: "))
        .find(|v| v.split_once('=').is_some_and(|(k, rest)| k == name && !rest.starts_with(';')))
        .map(str::to_string)
}

fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

fn status(resp: &str) -> u16 {
    resp.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The text of every element at `path` (element names from the root) in an XML document.
fn xml_texts(doc: &str, path: &[&str]) -> Vec<String> {
    let mut r = Reader::from_str(doc);
    r.config_mut().trim_text(true);
    let mut cur: Vec<String> = Vec::new();
    let mut out = Vec::new();
    loop {
        match r.read_event().expect("well-formed XML") {
            XmlEvent::Start(e) => cur.push(String::from_utf8_lossy(e.local_name().as_ref()).into_owned()),
            XmlEvent::End(_) => {
                cur.pop();
            }
            XmlEvent::Text(t) if cur.iter().map(String::as_str).eq(path.iter().copied()) => {
                out.push(t.unescape().unwrap().into_owned());
            }
            XmlEvent::Eof => break,
            _ => {}
        }
    }
    out
}

/// Attributes of the first element named `name`.
fn xml_attrs(doc: &str, name: &str) -> Option<Vec<(String, String)>> {
    let mut r = Reader::from_str(doc);
    loop {
        match r.read_event().expect("well-formed XML") {
            XmlEvent::Start(e) | XmlEvent::Empty(e) if e.local_name().as_ref() == name.as_bytes() => {
                return Some(
                    e.attributes()
                        .map(|a| {
                            let a = a.unwrap();
                            (String::from_utf8_lossy(a.key.as_ref()).into_owned(), a.unescape_value().unwrap().into_owned())
                        })
                        .collect(),
                );
            }
            XmlEvent::Eof => return None,
            _ => {}
        }
    }
}

/// init + auth-reply in Cisco's shape; returns the `complete` response.
fn cisco_login(s: &mut Server, now: Instant) -> String {
    let c = conn(50000);
    let (form, _) = respond(s.handle_http(now, &c, &post(CISCO_INIT, &[])));
    let handle = set_cookie(&form, "webvpncontext").expect("context cookie");
    let (done, _) = respond(s.handle_http(now, &c, &post(&cisco_reply(&handle), &[("webvpncontext", &handle)])));
    assert_eq!(status(&done), 200, "{done}");
    done
}

// ---------------------------------------------------------------------------------------------
// F2: server certificate hash

/// The ASA's `complete` carries `<config client="vpn" type="private"><vpn-base-config>
/// <server-cert-hash>` with the SHA-1 of the gateway certificate, and sets the `webvpnc`
/// cookie whose `sh:` field is the same hash; Cisco clients pin the gateway by it.
#[test]
fn complete_names_the_server_certificate_hash() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let done = cisco_login(&mut s, t0);
    let b = body(&done);
    assert_eq!(xml_attrs(b, "config-auth").unwrap().iter().find(|(k, _)| k == "type").unwrap().1, "complete");
    assert_eq!(xml_texts(b, &["config-auth", "config", "vpn-base-config", "server-cert-hash"]), vec![HASH.to_string()]);
    let attrs = xml_attrs(b, "config").expect("<config> element");
    assert!(attrs.contains(&("client".into(), "vpn".into())), "{attrs:?}");
    assert!(attrs.contains(&("type".into(), "private".into())), "{attrs:?}");
    // The session token is still there and is the webvpn cookie.
    let token = xml_texts(b, &["config-auth", "session-token"]);
    assert_eq!(token, vec![set_cookie(&done, "webvpn").expect("webvpn cookie")]);

    let c = set_cookie(&done, "webvpnc").expect("webvpnc cookie");
    let fields: Vec<&str> = c.split('&').collect();
    assert!(fields.contains(&"bu:/"), "{c}");
    assert!(fields.contains(&format!("sh:{HASH}").as_str()), "{c}");
    let line = set_cookie_line(&done, "webvpnc").unwrap();
    assert!(line.contains("path=/") && line.contains("Secure"), "{line}");

    // The hash follows a reload (the certificate file is read again).
    let mut cfg = config();
    cfg.server_cert_sha1 = "00112233445566778899AABBCCDDEEFF00112233".into();
    s.reconfigure(t0, cfg).unwrap();
    let done = cisco_login(&mut s, t0);
    assert_eq!(
        xml_texts(body(&done), &["config-auth", "config", "vpn-base-config", "server-cert-hash"]),
        vec!["00112233445566778899AABBCCDDEEFF00112233".to_string()]
    );
    assert!(set_cookie(&done, "webvpnc").unwrap().ends_with("sh:00112233445566778899AABBCCDDEEFF00112233"));
}

/// Without a known hash (an engine configured by hand) neither appears: an empty
/// `server-cert-hash` would make a pinning client refuse every gateway.
#[test]
fn no_hash_no_config_element() {
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.server_cert_sha1.clear();
    let mut s = server(t0, cfg);
    let done = cisco_login(&mut s, t0);
    assert!(xml_attrs(body(&done), "config").is_none(), "{done}");
    assert!(set_cookie_line(&done, "webvpnc").is_none(), "{done}");
    assert!(set_cookie(&done, "webvpn").is_some());
}

// ---------------------------------------------------------------------------------------------
// F3: housekeeping GETs

/// A GET/HEAD the way Cisco clients make them (the `webvpn` cookie when logged in).
fn get(method: &str, target: &str, cookie: Option<&str>) -> Vec<u8> {
    let mut h = format!("{method} {target} HTTP/1.1\r\nHost: vpn.example\r\nUser-Agent: AnyConnect Windows 5.1.2.42\r\nX-Transcend-Version: 1\r\n");
    if let Some(c) = cookie {
        h += &format!("Cookie: webvpn={c}\r\n");
    }
    h += "\r\n";
    h.into_bytes()
}

fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    resp.split("\r\n\r\n").next()?.lines().find_map(|l| {
        let (k, v) = l.split_once(": ")?;
        k.eq_ignore_ascii_case(name).then_some(v)
    })
}

/// The paths ocserv serves Cisco clients and the bodies that mean "nothing to install or
/// update" (csc-review F3 table).
const HOUSEKEEPING: &[(&str, &str)] = &[
    ("/1/index.html", "<html></html>\n"),
    ("/1/Linux", "<html></html>\n"),
    ("/1/Linux_64", "<html></html>\n"),
    ("/1/Windows", "<html></html>\n"),
    ("/1/Darwin_i386", "<html></html>\n"),
    ("/logout", "<html></html>\n"),
    ("/1/binaries/update.txt", "0,0,0000\n"),
    ("/1/VPNManifest.xml", "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<vpn rev=\"1.0\">\n</vpn>\n"),
    ("/VPNManifest.xml", "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<vpn rev=\"1.0\">\n</vpn>\n"),
    (
        "/+CSCOT+/translation-table?type=mo&textdomain=AnyConnect&lang=en-us",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<vpn rev=\"1.0\">\n</vpn>\n",
    ),
    ("/1/binaries/vpndownloader.sh", "#!/bin/sh\n\nexit 0"),
];

fn check_housekeeping(s: &mut Server, now: Instant, cookie: Option<&str>) {
    for (path, want) in HOUSEKEEPING {
        let (r, close) = respond(s.handle_http(now, &conn(50010), &get("GET", path, cookie)));
        assert_eq!(status(&r), 200, "{path}: {r}");
        assert_eq!(body(&r), *want, "{path}");
        assert!(!close, "{path}: the client goes on to CONNECT on the same connection");
        assert_eq!(header(&r, "X-Transcend-Version"), Some("1"), "{path}");
        assert_eq!(header(&r, "Content-Length"), Some(want.len().to_string().as_str()), "{path}");
        assert!(header(&r, "Set-Cookie").is_none(), "{path}: no state: {r}");
        // HEAD: same status and length, no content (RFC 9110 §9.3.2).
        let (h, _) = respond(s.handle_http(now, &conn(50010), &get("HEAD", path, cookie)));
        assert_eq!(status(&h), 200, "{path}");
        assert_eq!(header(&h, "Content-Length"), Some(want.len().to_string().as_str()), "{path}");
        assert_eq!(body(&h), "", "{path}");
    }
    // Anything else is still no portal.
    for other in ["/1/", "/1/binaries/other.pkg", "/index.html", "/CSCOT/translation-table"] {
        let (r, _) = respond(s.handle_http(now, &conn(50010), &get("GET", other, cookie)));
        assert_eq!(status(&r), 404, "{other}");
    }
}

/// Served before and after login, without creating anything: thousands of them from one
/// address leave no session and no pending login (a login from that address still gets its
/// form instead of "too many unfinished logins").
#[test]
fn housekeeping_gets_are_answered_without_state() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    check_housekeeping(&mut s, t0, None);
    for i in 0..5000 {
        let (path, _) = HOUSEKEEPING[i % HOUSEKEEPING.len()];
        let (r, _) = respond(s.handle_http(t0, &conn(50011), &get("GET", path, None)));
        assert_eq!(status(&r), 200);
    }
    assert_eq!(s.session_count(), 0);
    let (form, _) = respond(s.handle_http(t0, &conn(50012), &post(CISCO_INIT, &[])));
    assert!(form.contains("type=\"auth-request\""), "{form}");

    let done = cisco_login(&mut s, t0);
    let cookie = set_cookie(&done, "webvpn").unwrap();
    check_housekeeping(&mut s, t0, Some(&cookie));
    assert_eq!(s.session_count(), 1);
}

// ---------------------------------------------------------------------------------------------
// F4: logout post

fn logout_post(token: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<config-auth client=\"vpn\" type=\"logout\"><session-token>{token}</session-token></config-auth>\n"
    )
}

fn connect_req(cookie: &str) -> Vec<u8> {
    format!(
        "CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: vpn.example\r\nUser-Agent: Cisco AnyConnect VPN Agent for Windows 5.1.2.42\r\nCookie: webvpn={cookie}\r\n\
X-CSTP-Version: 1\r\nX-CSTP-Hostname: pc\r\nX-CSTP-Base-MTU: 1500\r\nX-CSTP-MTU: 1399\r\nX-CSTP-Address-Type: IPv6,IPv4\r\n\
X-DTLS-Master-Secret: 0102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F202122232425262728292A2B2C2D2E2F30\r\n\
X-DTLS-CipherSuite: AES256-SHA:AES128-SHA\r\nX-DTLS12-CipherSuite: ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256\r\n\r\n"
    )
    .into_bytes()
}

fn syslog(s: &mut Server) -> (Vec<String>, Vec<Event>) {
    let ev = drain_events(s);
    (common::syslog(&ev), ev)
}

/// Cisco's Disconnect posts `type="logout"` with the session token: the session (here with
/// its tunnel up) ends at once with 113019 "User Requested", its cookie stops working, the
/// answer is 200 and no login form (no pending login is created).
#[test]
fn logout_post_ends_the_session() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let done = cisco_login(&mut s, t0);
    let cookie = set_cookie(&done, "webvpn").unwrap();
    match s.handle_http(t0, &conn(50020), &connect_req(&cookie)) {
        Ok(HttpOutcome::Tunnel { .. }) => {}
        other => panic!("expected tunnel, got {other:?}"),
    }
    let _ = syslog(&mut s);
    assert_eq!(s.session_count(), 1);

    let t1 = t0 + std::time::Duration::from_secs(42);
    let (r, _) = respond(s.handle_http(t1, &conn(50021), &post(&logout_post(&cookie), &[("webvpn", &cookie)])));
    assert_eq!(status(&r), 200, "{r}");
    assert!(!r.contains("auth-request"), "a logout is not answered with a login form: {r}");
    assert!(set_cookie_line(&r, "webvpncontext").is_none(), "{r}");
    assert_eq!(s.session_count(), 0);
    let (lines, ev) = syslog(&mut s);
    let l113019: Vec<&String> = lines.iter().filter(|l| l.contains("113019")).collect();
    assert_eq!(l113019.len(), 1, "{lines:#?}");
    assert!(l113019[0].contains("Reason: User Requested"), "{}", l113019[0]);
    assert!(l113019[0].contains("Duration: 0h:00m:42s"), "{}", l113019[0]);
    assert!(
        ev.iter().any(|e| matches!(e, Event::SessionDown { reason: DisconnectReason::UserRequested, address: Some(_), .. })),
        "{ev:?}"
    );
    // The cookie is dead.
    match s.handle_http(t1, &conn(50022), &connect_req(&cookie)) {
        Ok(HttpOutcome::Respond { bytes, .. }) => assert!(String::from_utf8_lossy(&bytes).starts_with("HTTP/1.1 401"), "{}", String::from_utf8_lossy(&bytes)),
        other => panic!("expected 401, got {other:?}"),
    }
}

/// A logout naming no current session (already gone, forged) changes nothing and still gets
/// 200 without a form; pending logins are not created by logouts, however many.
#[test]
fn logout_for_unknown_token_is_harmless() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let done = cisco_login(&mut s, t0);
    let cookie = set_cookie(&done, "webvpn").unwrap();
    let _ = syslog(&mut s);
    let forged = "00".repeat(32);
    for i in 0..500u16 {
        let (r, _) = respond(s.handle_http(t0, &conn(51000 + i), &post(&logout_post(&forged), &[])));
        assert_eq!(status(&r), 200);
        assert!(!r.contains("auth-request") && set_cookie_line(&r, "webvpncontext").is_none(), "{r}");
    }
    assert_eq!(s.session_count(), 1);
    let (lines, _) = syslog(&mut s);
    assert!(!lines.iter().any(|l| l.contains("113019")), "{lines:#?}");
    // The per-address pending-login budget is untouched.
    let (form, _) = respond(s.handle_http(t0, &conn(50030), &post(CISCO_INIT, &[])));
    assert!(form.contains("type=\"auth-request\""), "{form}");
    // The real token still works afterwards, and ends the session.
    let (r, _) = respond(s.handle_http(t0, &conn(50031), &post(&logout_post(&cookie), &[])));
    assert_eq!(status(&r), 200);
    assert_eq!(s.session_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// F10: rekey method

fn connected_head(s: &mut Server, now: Instant) -> String {
    let done = cisco_login(s, now);
    let cookie = set_cookie(&done, "webvpn").unwrap();
    match s.handle_http(now, &conn(50040), &connect_req(&cookie)) {
        Ok(HttpOutcome::Tunnel { bytes, .. }) => String::from_utf8(bytes).unwrap(),
        other => panic!("expected tunnel, got {other:?}"),
    }
}

/// `anyconnect ssl rekey method ssl` is advertised as `new-tunnel` on both channels (the
/// ASA guide: both make the client build a new tunnel; openconnect would try a TLS
/// renegotiation the server refuses); the other methods pass through unchanged.
#[test]
fn rekey_method_ssl_is_advertised_as_new_tunnel() {
    for (policy, want) in [("ssl", "new-tunnel"), ("new-tunnel", "new-tunnel"), ("none", "none")] {
        let t0 = Instant::now();
        let mut cfg = config();
        let p = cfg.group_policies.get_mut("pol").unwrap();
        p.rekey_method = policy.into();
        p.rekey_time = Some(std::time::Duration::from_secs(3600));
        let mut s = server(t0, cfg);
        let head = connected_head(&mut s, t0);
        assert_eq!(header(&head, "X-CSTP-Rekey-Method"), Some(want), "{policy}: {head}");
        assert_eq!(header(&head, "X-CSTP-Rekey-Time"), Some("3600"), "{policy}");
        assert_eq!(header(&head, "X-DTLS-Rekey-Method"), Some(want), "{policy}: {head}");
    }
}

// ---------------------------------------------------------------------------------------------
// F7/F8: ASA-default CONNECT headers, Keep-Alive and the cookie path

/// The CONNECT answer carries the client settings an ASA always sends, at its defaults.
#[test]
fn connect_carries_the_asa_default_client_headers() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let head = connected_head(&mut s, t0);
    for (name, value) in [
        ("X-CSTP-Smartcard-Removal-Disconnect", "true"),
        ("X-CSTP-MSIE-Proxy-Lockdown", "false"),
        ("X-CSTP-Routing-Filtering-Ignore", "false"),
        ("X-CSTP-Quarantine", "false"),
        ("X-CSTP-Disable-Always-On-VPN", "false"),
        ("X-CSTP-Client-Bypass-Protocol", "false"),
        ("X-CSTP-License", "accept"),
    ] {
        assert_eq!(header(&head, name), Some(value), "{name}: {head}");
        assert_eq!(head.matches(&format!("{name}:")).count(), 1, "{name} once");
    }
}

/// The login form and `complete` say Connection: Keep-Alive, and the `webvpn` cookie is
/// scoped to path=/ (as ocserv answers Cisco clients).
#[test]
fn auth_answers_keep_alive_and_cookie_path() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let c = conn(50050);
    let (form, close) = respond(s.handle_http(t0, &c, &post(CISCO_INIT, &[])));
    assert!(!close);
    assert_eq!(header(&form, "Connection"), Some("Keep-Alive"), "{form}");
    let handle = set_cookie(&form, "webvpncontext").unwrap();
    let (done, close) = respond(s.handle_http(t0, &c, &post(&cisco_reply(&handle), &[("webvpncontext", &handle)])));
    assert!(!close);
    assert_eq!(header(&done, "Connection"), Some("Keep-Alive"), "{done}");
    let line = set_cookie_line(&done, "webvpn").unwrap();
    let attrs: Vec<&str> = line.split(';').map(str::trim).collect();
    assert!(attrs.contains(&"path=/"), "{line}");
    assert!(attrs.contains(&"Secure") && attrs.contains(&"HttpOnly"), "{line}");
}

// ---------------------------------------------------------------------------------------------
// F6: DTLS DPD floor for Cisco clients

/// holdfast caps X-DTLS-DPD at 3 s so openconnect notices a dead DTLS path quickly; Cisco
/// clients are never told less than the ASA's minimum of 5 s, openconnect keeps 3 s, and a
/// policy below the cap (or DPD off) is passed through for both.
#[test]
fn dtls_dpd_is_never_below_five_seconds_for_cisco_clients() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let head = connected_head(&mut s, t0);
    assert_eq!(header(&head, "X-DTLS-DPD"), Some("5"), "{head}");
    assert_eq!(header(&head, "X-CSTP-DPD"), Some("30"), "{head}");

    // openconnect (its User-Agent) keeps the 3 s cap.
    let mut s = server(t0, config());
    let done = cisco_login(&mut s, t0);
    let cookie = set_cookie(&done, "webvpn").unwrap();
    let req = String::from_utf8(connect_req(&cookie))
        .unwrap()
        .replace("User-Agent: Cisco AnyConnect VPN Agent for Windows 5.1.2.42", "User-Agent: Open AnyConnect VPN Agent v9.01-3");
    match s.handle_http(t0, &conn(50060), req.as_bytes()) {
        Ok(HttpOutcome::Tunnel { bytes, .. }) => {
            let head = String::from_utf8(bytes).unwrap();
            assert_eq!(header(&head, "X-DTLS-DPD"), Some("3"), "{head}");
        }
        other => panic!("expected tunnel, got {other:?}"),
    }

    // A policy DPD of 4 s (under the floor, under no cap) is the operator's choice.
    let mut cfg = config();
    cfg.group_policies.get_mut("pol").unwrap().dpd_client = Some(std::time::Duration::from_secs(4));
    let mut s = server(t0, cfg);
    let head = connected_head(&mut s, t0);
    assert_eq!(header(&head, "X-DTLS-DPD"), Some("4"), "{head}");
}

// ---------------------------------------------------------------------------------------------
// F9: header values that are not UTF-8

/// A CONNECT whose X-CSTP-Hostname is in a legacy code page (Latin-1 "café-pc") gets its
/// tunnel: the value is dropped instead of refusing the whole request.
#[test]
fn non_utf8_hostname_does_not_refuse_the_connect() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let done = cisco_login(&mut s, t0);
    let cookie = set_cookie(&done, "webvpn").unwrap();
    let mut req = connect_req(&cookie);
    let at = req.windows(b"X-CSTP-Hostname: pc".len()).position(|w| w == b"X-CSTP-Hostname: pc").unwrap();
    req.splice(at..at + b"X-CSTP-Hostname: pc".len(), b"X-CSTP-Hostname: caf\xe9-pc".iter().copied());
    assert!(std::str::from_utf8(&req).is_err());
    match s.handle_http(t0, &conn(50070), &req) {
        Ok(HttpOutcome::Tunnel { bytes, .. }) => {
            let head = String::from_utf8(bytes).unwrap();
            assert!(head.starts_with("HTTP/1.1 200 CONNECTED"), "{head}");
        }
        other => panic!("expected tunnel, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// F5: non-aggregate login (GET / then a form-encoded post)

/// The older, non-aggregate login: `GET /` gets the same form as an init (with its
/// `webvpncontext`), and a form-encoded `username=..&password=..` post carrying that cookie
/// completes the login; a wrong password gets the form again with an error.
#[test]
fn form_encoded_login_after_get_root() {
    let t0 = Instant::now();
    let mut s = server(t0, config());
    let c = conn(50080);
    let (form, close) = respond(s.handle_http(t0, &c, &get("GET", "/", None)));
    assert!(!close);
    assert_eq!(status(&form), 200, "{form}");
    assert!(xml_texts(body(&form), &["config-auth", "auth", "title"]) == vec!["Login".to_string()], "{form}");
    let handle = set_cookie(&form, "webvpncontext").expect("context cookie");

    let (again, _) = respond(s.handle_http(t0, &c, &post("username=vpn&password=wrong", &[("webvpncontext", &handle)])));
    assert!(again.contains("type=\"auth-request\"") && again.contains("Login failed."), "{again}");
    assert_eq!(s.session_count(), 0);

    let (done, _) = respond(s.handle_http(t0, &c, &post("username=vpn&password=s%65cret&group_list=RA", &[("webvpncontext", &handle)])));
    assert_eq!(status(&done), 200, "{done}");
    assert_eq!(xml_attrs(body(&done), "config-auth").unwrap().iter().find(|(k, _)| k == "type").unwrap().1, "complete");
    assert!(set_cookie(&done, "webvpn").is_some());
    assert_eq!(s.session_count(), 1);

    // A malformed form body is refused like malformed XML.
    let (bad, close) = respond(s.handle_http(t0, &c, &post("username=%zz", &[])));
    assert_eq!(status(&bad), 400, "{bad}");
    assert!(close);
}
