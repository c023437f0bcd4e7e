//! Edges of the login exchange found by the session-10 review (notes/review-session10.md,
//! N1-N3): a UTF-8 byte order mark before the XML, bodies that are neither XML nor a form,
//! `HEAD` of the paths `GET` serves (stateless: review-session11 finding 2), and the form's own
//! action path taken for a URL group.

// The virtual clock needs some starting Instant; everything after it is computed.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use anyconnect::*;
use common::{conn, drain_events as events, pool, respond, set_cookie, syslog, tunnel_group, user};

fn config() -> Config {
    common::config_of(
        vec![user("vpn", "secret")],
        vec![tunnel_group("RA", "RA", "pol", "POOL", AuthMethod::Aaa)],
        vec![("pol", GroupPolicy::default())],
        vec![("POOL", pool("10.99.0.100", "10.99.0.102"))],
    )
}

fn server(now: Instant) -> Server {
    Server::new(now, config(), Box::new(crypto::SeededRandom::new(7)))
}

fn post_to(target: &str, body: &[u8], cookie: Option<&str>) -> Vec<u8> {
    let mut h = format!("POST {target} HTTP/1.1\r\nHost: vpn.example\r\nUser-Agent: AnyConnect Linux_64 5.1.2.42\r\n");
    if let Some(c) = cookie {
        h += &format!("Cookie: webvpncontext={c}\r\n");
    }
    h += &format!("Content-Length: {}\r\n\r\n", body.len());
    let mut v = h.into_bytes();
    v.extend_from_slice(body);
    v
}

fn request(method: &str, target: &str) -> Vec<u8> {
    format!("{method} {target} HTTP/1.1\r\nHost: vpn.example\r\nUser-Agent: AnyConnect Linux_64 5.1.2.42\r\n\r\n")
        .into_bytes()
}

fn status(resp: &str) -> u16 {
    resp.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

/// The header lines, in order, as (name, value).
fn headers(resp: &str) -> Vec<(String, String)> {
    let head = resp.split("\r\n\r\n").next().unwrap_or("");
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn header(resp: &str, name: &str) -> Option<String> {
    headers(resp).into_iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

fn refusals(ev: &[Event]) -> Vec<String> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Refused { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

const INIT: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<config-auth client=\"vpn\" type=\"init\" aggregate-auth-version=\"2\"><version who=\"vpn\">5.1.2.42</version><group-access>https://vpn.example/</group-access></config-auth>\n";

fn reply(handle: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<config-auth client=\"vpn\" type=\"auth-reply\" aggregate-auth-version=\"2\"><opaque is-for=\"sg\"><aggauth-handle>{handle}</aggauth-handle></opaque><auth><username>vpn</username><password>secret</password></auth></config-auth>\n"
    )
}

fn context_cookie(resp: &str) -> String {
    set_cookie(resp, "webvpncontext").expect("webvpncontext cookie")
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// N1: a client (or a proxy re-encoding the body) that puts a UTF-8 byte order mark before
/// the XML declaration still logs in: the BOM is not a form, so its credentials are read.
#[test]
fn byte_order_mark_before_xml_is_still_xml() {
    let t0 = Instant::now();
    let mut s = server(t0);
    let c = conn(41000);
    let mut init = BOM.to_vec();
    init.extend_from_slice(INIT.as_bytes());
    let (form, close) = respond(s.handle_http(t0, &c, &post_to("/", &init, None)));
    assert!(!close && status(&form) == 200 && form.contains("type=\"auth-request\""), "{form}");
    let h = context_cookie(&form);
    // BOM, then blanks, then the reply.
    let mut r = BOM.to_vec();
    r.extend_from_slice(b"\r\n  ");
    r.extend_from_slice(reply(&h).as_bytes());
    let (done, _) = respond(s.handle_http(t0, &c, &post_to("/", &r, Some(&h))));
    assert!(done.contains("type=\"complete\""), "the BOM-prefixed reply logs in: {done}");
    assert_eq!(s.session_count(), 1);
}

/// N1: a body that is neither XML nor a form-encoded login (binary, no `name=value`) is a
/// 400 with a refusal reason, not a login form and not a pending login; the form-encoded
/// login itself still works.
#[test]
fn body_neither_xml_nor_form_is_refused() {
    let t0 = Instant::now();
    let mut s = server(t0);
    let c = conn(41001);
    for garbage in [
        &b"\x00\x01\x02\x03binary"[..],
        b"\x16\x03\x01\x00\xa5\x01",
        b"just some words",
        b"username\x00=vpn",
        b"\xEF\xBB\xBF",
        b"   \r\n ",
    ] {
        let (r, close) = respond(s.handle_http(t0, &c, &post_to("/", garbage, None)));
        assert_eq!(status(&r), 400, "{garbage:?}: {r}");
        assert!(close, "{garbage:?}");
        assert!(!r.contains("auth-request"), "{garbage:?}: no login form: {r}");
        let why = refusals(&events(&mut s));
        assert_eq!(why.len(), 1, "{garbage:?}: {why:?}");
        assert!(why[0].contains("neither"), "{garbage:?}: {why:?}");
    }
    // None of them left a pending login behind: a form-encoded reply without a context is
    // answered with the form (a new login), and the full form login completes.
    let (form, _) = respond(s.handle_http(t0, &c, &request("GET", "/")));
    let h = context_cookie(&form);
    let (done, _) = respond(s.handle_http(t0, &c, &post_to("/", b"username=vpn&password=secret", Some(&h))));
    assert!(done.contains("type=\"complete\""), "{done}");
    // A form whose fields are empty is still a form.
    let (r, _) = respond(s.handle_http(t0, &c, &post_to("/", b"username=&password=", None)));
    assert_eq!(status(&r), 200, "{r}");
}

/// N2: `HEAD /` answers what `GET /` answers (the login form's status, Content-Type and
/// Content-Length) without the content (RFC 9110 §9.3.2) and without the `webvpncontext`
/// cookie: HEAD opens no pending login, so it has no context to name (§9.3.2 lets a server
/// leave out fields whose value only generating the content determines). `HEAD` of an
/// unserved path (a group name included: `GET /RA` is no form either) mirrors `GET`'s 404
/// including its length.
#[test]
fn head_mirrors_get() {
    let t0 = Instant::now();
    let mut s = server(t0);
    let c = conn(41002);
    for target in ["/", "/?x=1"] {
        let (get, _) = respond(s.handle_http(t0, &c, &request("GET", target)));
        let (head, close) = respond(s.handle_http(t0, &c, &request("HEAD", target)));
        assert!(!close, "{head}");
        assert_eq!(status(&get), 200, "{get}");
        assert_eq!(head.lines().next(), get.lines().next(), "{head}");
        assert_eq!(header(&head, "Content-Length"), Some(body(&get).len().to_string()), "{head}");
        assert_eq!(header(&head, "Content-Type"), header(&get, "Content-Type"));
        assert_eq!(header(&head, "Content-Type").as_deref(), Some("text/xml"));
        assert_eq!(body(&head), "", "{head}");
        assert_eq!(set_cookie(&head, "webvpncontext"), None, "HEAD names no login context: {head}");
        // Every other header GET sends, HEAD sends with the same value.
        let others = |r: &str| {
            headers(r).into_iter().filter(|(k, _)| !k.eq_ignore_ascii_case("Set-Cookie")).collect::<Vec<_>>()
        };
        assert_eq!(others(&head), others(&get), "{head}\n---\n{get}");
        // A HEAD carrying GET's cookie answers the same and leaves that login usable.
        let h = context_cookie(&get);
        let with_cookie = format!(
            "HEAD {target} HTTP/1.1\r\nHost: vpn.example\r\nCookie: webvpncontext={h}\r\n\r\n"
        );
        let (head2, _) = respond(s.handle_http(t0, &c, with_cookie.as_bytes()));
        assert_eq!(head2.lines().next(), get.lines().next(), "{head2}");
        assert_eq!(header(&head2, "Content-Length"), header(&head, "Content-Length"), "{head2}");
        assert_eq!(set_cookie(&head2, "webvpncontext"), None, "{head2}");
        let (done, _) = respond(s.handle_http(t0, &c, &post_to("/", reply(&h).as_bytes(), Some(&h))));
        assert!(done.contains("type=\"complete\""), "GET's cookie still logs in: {done}");
    }
    for target in ["/index.html", "/+CSCOE+/logon.html", "/RA", "/RA?x=1"] {
        let (get, _) = respond(s.handle_http(t0, &c, &request("GET", target)));
        let (head, _) = respond(s.handle_http(t0, &c, &request("HEAD", target)));
        assert_eq!(status(&get), 404, "{target}: {get}");
        assert_eq!(head.lines().next(), get.lines().next(), "{head}");
        assert_eq!(headers(&head), headers(&get), "{head}\n---\n{get}");
        assert_eq!(body(&head), "", "{head}");
        assert!(!body(&get).is_empty());
    }
}

/// Review session 11, finding 2: a load balancer probing `HEAD /` every few seconds from one
/// address keeps getting 200, and a real login from that address still works. When each
/// HEAD opened a pending login (16 per address, 120 s each), the 17th probe within the
/// lifetime got 503 and so did every client behind that address.
#[test]
fn head_probes_open_no_pending_login() {
    let t0 = Instant::now();
    let mut s = server(t0);
    let c = conn(41004);
    let mut now = t0;
    let mut cookies = 0;
    // 40 probes 2.5 s apart: all within one pending-login lifetime (120 s).
    for i in 0..40 {
        now = t0 + Duration::from_millis(2500 * i);
        let (head, close) = respond(s.handle_http(now, &c, &request("HEAD", "/")));
        assert_eq!(status(&head), 200, "probe {i} at {:?}: {head}", now - t0);
        assert!(!close, "probe {i}: {head}");
        assert_eq!(refusals(&events(&mut s)), Vec::<String>::new(), "probe {i}");
        if set_cookie(&head, "webvpncontext").is_some() {
            cookies += 1;
        }
    }
    assert_eq!(cookies, 0, "HEAD names no login context");
    assert_eq!(s.stats().auth_pending_refused, 0);
    // A real client behind the same address logs in.
    let (form, _) = respond(s.handle_http(now, &c, &request("GET", "/")));
    assert_eq!(status(&form), 200, "{form}");
    let h = context_cookie(&form);
    let (done, _) = respond(s.handle_http(now, &c, &post_to("/", reply(&h).as_bytes(), Some(&h))));
    assert!(done.contains("type=\"complete\""), "{done}");
    assert_eq!(s.session_count(), 1);
}

/// HEAD reports what GET would answer now, also when GET would be refused: once GETs have
/// filled the address's unfinished logins, HEAD / gets GET's 503 (status, headers, length)
/// without adding to the count.
#[test]
fn head_reports_a_full_pending_quota_like_get() {
    let t0 = Instant::now();
    let mut s = server(t0);
    let c = conn(41005);
    let quota = config().limits.pending_auth_per_peer;
    for _ in 0..quota {
        let (r, _) = respond(s.handle_http(t0, &c, &request("GET", "/")));
        assert_eq!(status(&r), 200, "{r}");
    }
    events(&mut s);
    let (get, close) = respond(s.handle_http(t0, &c, &request("GET", "/")));
    assert!(close && status(&get) == 503, "{get}");
    events(&mut s);
    let refused = s.stats().auth_pending_refused;
    let (head, close) = respond(s.handle_http(t0, &c, &request("HEAD", "/")));
    assert!(close, "{head}");
    assert_eq!(head.lines().next(), get.lines().next(), "{head}");
    assert_eq!(headers(&head), headers(&get), "{head}\n---\n{get}");
    assert_eq!(body(&head), "");
    // A probe is not a login attempt: nothing counted, nothing reported.
    assert_eq!(s.stats().auth_pending_refused, refused);
    assert!(events(&mut s).is_empty());
}

/// N3: a reply posted to `/auth` (the action path of ocserv's login form, which openconnect
/// follows) after its pending login expired starts a new login in the default group without
/// a 716900: `auth` is not a group the user asked for. A real unknown URL group still logs it.
#[test]
fn form_action_path_is_not_a_url_group() {
    let t0 = Instant::now();
    let mut s = server(t0);
    let c = conn(41003);
    let (form, _) = respond(s.handle_http(t0, &c, &post_to("/", INIT.as_bytes(), None)));
    let h = context_cookie(&form);
    events(&mut s);
    // Long after the pending login expired.
    let later = t0 + Duration::from_secs(3600);
    let form_reply = b"username=vpn&password=wrong".to_vec();
    for body in [form_reply, reply(&h).into_bytes()] {
        let (r, _) = respond(s.handle_http(later, &c, &post_to("/auth", &body, Some(&h))));
        assert!(r.starts_with("HTTP/1.1 "), "{r}");
        let lines = syslog(&events(&mut s));
        assert!(!lines.iter().any(|l| l.contains("716900")), "{lines:?}");
    }
    // The same post to /NOSUCH: that is a group the user asked for in the URL.
    let (r, _) = respond(s.handle_http(later, &c, &post_to("/NOSUCH", INIT.as_bytes(), None)));
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(
        syslog(&events(&mut s)),
        vec!["%ASA-5-716900: IP <203.0.113.10> Group <NOSUCH> requested in the connection URL matches no tunnel-group or group-alias; using tunnel-group <RA>.".to_string()]
    );
}

/// In a certificate-only group `GET /` with a verified client certificate logs in at once;
/// `HEAD /` answers its status and Content-Type but makes no session (and, having no
/// session cookie to put in the content, sends no Content-Length). Without a certificate
/// both get the same 401.
#[test]
fn head_in_a_certificate_group_makes_no_session() {
    let t0 = Instant::now();
    let cfg = common::config_of(
        vec![user("vpn", "secret")],
        vec![tunnel_group("CERT", "CERT", "pol", "POOL", AuthMethod::Certificate)],
        vec![("pol", GroupPolicy::default())],
        vec![("POOL", pool("10.99.0.100", "10.99.0.102"))],
    );
    let mut s = Server::new(t0, cfg, Box::new(crypto::SeededRandom::new(7)));
    let bare = conn(41006);
    let (get, close) = respond(s.handle_http(t0, &bare, &request("GET", "/")));
    assert!(close && status(&get) == 401, "{get}");
    let (head, close) = respond(s.handle_http(t0, &bare, &request("HEAD", "/")));
    assert!(close, "{head}");
    assert_eq!(head.lines().next(), get.lines().next(), "{head}");
    assert_eq!(headers(&head), headers(&get), "{head}\n---\n{get}");
    assert_eq!(body(&head), "");

    let mut with_cert = conn(41007);
    with_cert.client_cert = Some(ClientCert { common_name: "alice".into() });
    for _ in 0..5 {
        let (head, close) = respond(s.handle_http(t0, &with_cert, &request("HEAD", "/")));
        assert!(!close && status(&head) == 200, "{head}");
        assert_eq!(header(&head, "Content-Type").as_deref(), Some("text/xml"));
        assert_eq!(set_cookie(&head, "webvpn"), None, "{head}");
        assert_eq!(body(&head), "");
    }
    assert_eq!(s.session_count(), 0, "HEAD made no session");
    let (get, _) = respond(s.handle_http(t0, &with_cert, &request("GET", "/")));
    assert_eq!(status(&get), 200, "{get}");
    assert_eq!(header(&get, "Content-Type").as_deref(), Some("text/xml"));
    assert!(set_cookie(&get, "webvpn").is_some(), "{get}");
    assert_eq!(s.session_count(), 1);
}
