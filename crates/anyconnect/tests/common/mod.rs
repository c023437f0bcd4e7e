//! Fixtures shared by the engine's integration tests (engine, cisco_compat, reconfigure,
//! robustness, from_policy): configuration building blocks, the client's TLS connection,
//! openconnect 9.01's login exchange and CONNECT (anyconnect.md §1-2), response parsing, and
//! the issue's ASA configuration text.
//!
//! Each test file is its own crate and uses a different part of this module, so a helper one
//! file does not call would be reported as dead code in that file's build.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use anyconnect::*;

// ---------------------------------------------------------------------------------------------
// Configuration

pub fn net(a: &str, p: u8) -> Ipv4Net {
    Ipv4Net { addr: a.parse().unwrap(), prefix: p }
}

/// `ip local pool NAME FIRST-LAST mask 255.255.255.0`.
pub fn pool(first: &str, last: &str) -> AddressPool {
    AddressPool { first: first.parse().unwrap(), last: last.parse().unwrap(), mask: "255.255.255.0".parse().unwrap() }
}

/// A local user whose password is checked by [`plain_verifier`] (`plain:PASSWORD`).
pub fn user(name: &str, password: &str) -> User {
    User { name: name.into(), password_hash: format!("plain:{password}") }
}

/// A remote-access tunnel group with one alias, one pool and its default group policy.
pub fn tunnel_group(name: &str, alias: &str, policy: &str, pool: &str, authentication: AuthMethod) -> TunnelGroup {
    TunnelGroup {
        name: name.into(),
        aliases: vec![alias.into()],
        default_group_policy: policy.into(),
        address_pools: vec![pool.into()],
        authentication,
    }
}

/// A configuration of these users, groups, policies and pools, checked by the plain
/// verifier; everything else is the default.
pub fn config_of(
    users: Vec<User>,
    tunnel_groups: Vec<TunnelGroup>,
    policies: Vec<(&str, GroupPolicy)>,
    pools: Vec<(&str, AddressPool)>,
) -> Config {
    Config {
        users,
        tunnel_groups,
        group_policies: policies.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<BTreeMap<_, _>>(),
        pools: pools.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<BTreeMap<_, _>>(),
        verifier: plain_verifier(),
        ..Config::default()
    }
}

/// The issue's ASA configuration (issue 5) with `password` for user `vpn`. The text is the
/// config crate's golden file, so the parser's tests and the engine's read the same one.
pub fn issue_asa_config(password: &str) -> String {
    const TEXT: &str = include_str!("../../../config/tests/golden/anyconnect-issue.cfg");
    const LINE: &str = "username vpn password <secret>\n";
    assert!(TEXT.contains(LINE), "anyconnect-issue.cfg no longer has the line {LINE:?}");
    TEXT.replace(LINE, &format!("username vpn password {password}\n"))
}

// ---------------------------------------------------------------------------------------------
// The client's connection

/// A client at `peer` over TLS 1.2 with openconnect's usual cipher.
pub fn conn_at(peer: SocketAddr) -> ConnInfo {
    ConnInfo { peer, tls_version: TlsVersion::Tls12, tls_cipher: "ECDHE-RSA-AES256-GCM-SHA384".into(), client_cert: None }
}

/// [`conn_at`] 203.0.113.10:`port`.
pub fn conn(port: u16) -> ConnInfo {
    conn_at(SocketAddr::new("203.0.113.10".parse().unwrap(), port))
}

// ---------------------------------------------------------------------------------------------
// openconnect 9.01's requests

pub const OC_INIT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<config-auth client="vpn" type="init" aggregate-auth-version="2">
<version who="vpn">v9.01-3</version>
<device-id>linux-64</device-id>
<group-access>https://192.0.2.1/</group-access>
<capabilities><auth-method>single-sign-on-v2</auth-method><auth-method>multiple-cert</auth-method></capabilities>
</config-auth>
"#;

pub fn oc_reply(user: &str, pass: &str, group: Option<&str>, handle: &str) -> String {
    let g = group.map(|g| format!("<group-select>{g}</group-select>\n")).unwrap_or_default();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<config-auth client="vpn" type="auth-reply" aggregate-auth-version="2">
<version who="vpn">v9.01-3</version>
<device-id>linux-64</device-id>
<session-token/>
<session-id/>
<opaque is-for="sg">
<tunnel-group>RA</tunnel-group>
<aggauth-handle>{handle}</aggauth-handle>
</opaque>
<auth><username>{user}</username><password>{pass}</password></auth>
{g}</config-auth>
"#
    )
}

/// A `Cookie:` header line with `cookies` (name, value), or nothing when there are none.
pub fn cookie_header(cookies: &[(&str, &str)]) -> String {
    if cookies.is_empty() {
        return String::new();
    }
    let c: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("Cookie: {}\r\n", c.join("; "))
}

/// A POST in openconnect's header shape.
pub fn post(body: &str, cookies: &[(&str, &str)]) -> Vec<u8> {
    let mut h = String::from("POST / HTTP/1.1\r\nHost: 192.0.2.1\r\nUser-Agent: Open AnyConnect VPN Agent v9.01-3\r\n");
    h += "Accept: */*\r\nAccept-Encoding: identity\r\nX-Transcend-Version: 1\r\nX-Aggregate-Auth: 1\r\nX-Support-HTTP-Auth: true\r\n";
    h += "X-Pad: 0000000000000000000000000000000000000000000000\r\n";
    h += &cookie_header(cookies);
    h += &format!("Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    h.into_bytes()
}

/// openconnect's init from `c`: the login form's context cookie (its aggauth handle).
pub fn start_login(s: &mut Server, now: Instant, c: &ConnInfo) -> String {
    let (form, _) = respond(s.handle_http(now, c, &post(OC_INIT, &[])));
    set_cookie(&form, "webvpncontext").expect("context cookie")
}

/// init + auth-reply from `conn(40000)` (group RA); the server's answer to the reply.
fn login_answer(s: &mut Server, now: Instant, user: &str, pass: &str) -> String {
    let c = conn(40000);
    let handle = start_login(s, now, &c);
    let reply = oc_reply(user, pass, Some("RA"), &handle);
    respond(s.handle_http(now, &c, &post(&reply, &[("webvpncontext", &handle)]))).0
}

/// init + auth-reply, which must complete; returns the webvpn cookie.
pub fn login(s: &mut Server, now: Instant, user: &str, pass: &str) -> String {
    let done = login_answer(s, now, user, pass);
    assert!(done.contains("type=\"complete\""), "{done}");
    set_cookie(&done, "webvpn").expect("webvpn cookie")
}

/// The whole login; `Some(cookie)` when it completed.
pub fn try_login(s: &mut Server, now: Instant, user: &str, pass: &str) -> Option<String> {
    let done = login_answer(s, now, user, pass);
    done.contains("type=\"complete\"").then(|| set_cookie(&done, "webvpn")).flatten()
}

/// A tunnel the CONNECT request opened.
pub struct Tunnel {
    pub session: SessionId,
    pub dtls: Option<DtlsKeying>,
    pub head: String,
}

/// Sends the CONNECT request `req` from `conn(40001)`; it must open a tunnel and be consumed
/// whole.
pub fn open_tunnel(s: &mut Server, now: Instant, req: &[u8]) -> Tunnel {
    match s.handle_http(now, &conn(40001), req) {
        Ok(HttpOutcome::Tunnel { bytes, session, dtls, consumed }) => {
            assert_eq!(consumed, req.len());
            Tunnel { session, dtls, head: String::from_utf8(bytes).unwrap() }
        }
        other => panic!("expected tunnel, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The server's answers

/// The response text and whether the server closes the connection after it.
pub fn respond(o: Result<HttpOutcome, HttpReject>) -> (String, bool) {
    match o {
        Ok(HttpOutcome::Respond { bytes, close, .. }) => (String::from_utf8(bytes).unwrap(), close),
        other => panic!("expected a response, got {other:?}"),
    }
}

/// The non-empty value of the `Set-Cookie` for `name`.
pub fn set_cookie(resp: &str, name: &str) -> Option<String> {
    resp.lines()
        .filter_map(|l| l.strip_prefix("Set-Cookie: "))
        .filter_map(|v| v.split(';').next()?.split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.to_string())
}

/// The text between the first `a` and the next `b` after it.
pub fn between<'a>(s: &'a str, a: &str, b: &str) -> Option<&'a str> {
    let i = s.find(a)? + a.len();
    Some(&s[i..i + s[i..].find(b)?])
}

pub fn drain_events(s: &mut Server) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// The ASA syslog lines among `ev`.
pub fn syslog(ev: &[Event]) -> Vec<String> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Syslog(l) => Some(l.asa()),
            _ => None,
        })
        .collect()
}
