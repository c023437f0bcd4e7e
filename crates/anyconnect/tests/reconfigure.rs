//! `Server::reconfigure` (holdfast reload): which remote-access changes apply, to whom, and
//! which are refused, with the engine driven as openconnect 9.01 drives it (virtual clock).

// The virtual clock needs some starting Instant; everything after it is computed.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyconnect::*;
use common::{net, open_tunnel, pool, try_login, tunnel_group, user};

fn config() -> Config {
    common::config_of(
        vec![user("vpn", "secret")],
        vec![tunnel_group("RA", "RA", "GP", "VPNPOOL", AuthMethod::Aaa)],
        vec![("GP", GroupPolicy { split_include: vec![net("10.1.0.0", 24)], ..GroupPolicy::default() })],
        vec![("VPNPOOL", pool("10.99.0.100", "10.99.0.102"))],
    )
}

/// A CONNECT without DTLS: the session's tunnel and the head of the answer.
fn connect(s: &mut Server, now: Instant, cookie: &str) -> (SessionId, String) {
    let req = format!(
        "CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: 192.0.2.1\r\nCookie: webvpn={cookie}\r\nX-CSTP-Version: 1\r\nX-CSTP-Base-MTU: 1500\r\nX-CSTP-Address-Type: IPv4\r\n\r\n"
    );
    let t = open_tunnel(s, now, req.as_bytes());
    (t.session, t.head)
}

fn values<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines().filter_map(|l| l.strip_prefix(name)?.strip_prefix(": ")).collect()
}

fn server(now: Instant) -> Server {
    Server::new(now, config(), Box::new(crypto::SeededRandom::new(11)))
}

#[test]
fn changes_name_what_differs() {
    let a = config();
    assert!(a.changes(&a).is_empty());
    let mut b = config();
    b.users.push(User { name: "bob".into(), password_hash: "plain:b".into() });
    b.users[0].password_hash = "plain:other".into();
    b.group_policies.get_mut("GP").unwrap().dns = vec!["10.1.0.53".parse().unwrap()];
    b.pools.insert("MORE".into(), pool("10.99.1.1", "10.99.1.9"));
    b.tunnel_groups[0].aliases = vec!["Staff".into()];
    let c = a.changes(&b);
    assert_eq!(c.users_added, vec!["bob"]);
    assert_eq!(c.users_password_changed, vec!["vpn"]);
    assert!(c.users_removed.is_empty());
    assert_eq!(c.group_policies_changed, vec!["GP"]);
    assert_eq!(c.pools_added, vec!["MORE"]);
    assert_eq!(c.tunnel_groups_changed, vec!["RA"]);
    let back = b.changes(&a);
    assert_eq!(back.users_removed, vec!["bob"]);
    assert_eq!(back.pools_removed, vec!["MORE"]);
}

#[test]
fn added_user_logs_in_and_connected_session_keeps_its_split_list() {
    let t0 = Instant::now();
    let mut s = server(t0);
    let cookie = try_login(&mut s, t0, "vpn", "secret").expect("login");
    let (id, head) = connect(&mut s, t0, &cookie);
    assert_eq!(values(&head, "X-CSTP-Split-Include"), vec!["10.1.0.0/255.255.255.0"]);
    assert!(try_login(&mut s, t0, "carol", "pw").is_none(), "unknown user logged in");

    let mut new = config();
    new.users.push(User { name: "carol".into(), password_hash: "plain:pw".into() });
    new.group_policies.get_mut("GP").unwrap().split_include = vec![net("10.1.0.0", 24), net("10.7.0.0", 16)];
    let t1 = t0 + Duration::from_secs(1);
    let changes = s.reconfigure(t1, new).expect("applied");
    assert_eq!(changes.users_added, vec!["carol"]);
    assert_eq!(changes.group_policies_changed, vec!["GP"]);
    assert_eq!(s.session_count(), 1);

    // The connected session reconnects with its cookie: same address, same split list (the
    // client keeps its routes over a reconnect).
    s.handle_tls_closed(t1, id);
    let (id2, head2) = connect(&mut s, t1, &cookie);
    assert_eq!(id2, id);
    assert_eq!(values(&head2, "X-CSTP-Address"), values(&head, "X-CSTP-Address"));
    assert_eq!(values(&head2, "X-CSTP-Split-Include"), vec!["10.1.0.0/255.255.255.0"]);

    // The new user logs in and gets the new list.
    let c2 = try_login(&mut s, t1, "carol", "pw").expect("new user logs in after the reload");
    let (_, head3) = connect(&mut s, t1, &c2);
    assert_eq!(values(&head3, "X-CSTP-Split-Include"), vec!["10.1.0.0/255.255.255.0", "10.7.0.0/255.255.0.0"]);
}

#[test]
fn session_not_yet_connected_takes_the_new_policy() {
    let t0 = Instant::now();
    let mut s = server(t0);
    let cookie = try_login(&mut s, t0, "vpn", "secret").expect("login");
    let mut new = config();
    new.group_policies.get_mut("GP").unwrap().split_include = vec![net("10.8.0.0", 16)];
    s.reconfigure(t0, new).expect("applied");
    let (_, head) = connect(&mut s, t0, &cookie);
    assert_eq!(values(&head, "X-CSTP-Split-Include"), vec!["10.8.0.0/255.255.0.0"]);
}

#[test]
fn removed_user_keeps_the_live_session_but_cannot_log_in_again() {
    let t0 = Instant::now();
    let mut s = server(t0);
    let cookie = try_login(&mut s, t0, "vpn", "secret").expect("login");
    let (id, _) = connect(&mut s, t0, &cookie);
    let mut new = config();
    new.users = vec![User { name: "other".into(), password_hash: "plain:x".into() }];
    let ch = s.reconfigure(t0, new).expect("applied");
    assert_eq!(ch.users_removed, vec!["vpn"]);
    assert_eq!(s.session_count(), 1);
    // Its cookie still carries it over a reconnect (the ASA keeps the session until logoff).
    s.handle_tls_closed(t0, id);
    assert_eq!(connect(&mut s, t0, &cookie).0, id);
    assert!(try_login(&mut s, t0, "vpn", "secret").is_none());
    assert_eq!(s.logoff(t0, Logoff::Name("vpn".into())), 1);
}

#[test]
fn shrinking_a_pool_under_a_lease_is_refused_and_changes_nothing() {
    let t0 = Instant::now();
    let mut s = server(t0);
    let cookie = try_login(&mut s, t0, "vpn", "secret").expect("login");
    let (_, head) = connect(&mut s, t0, &cookie);
    assert_eq!(values(&head, "X-CSTP-Address"), vec!["10.99.0.100"]);

    let mut new = config();
    new.pools.insert("VPNPOOL".into(), pool("10.99.0.101", "10.99.0.110"));
    new.users.push(User { name: "carol".into(), password_hash: "plain:pw".into() });
    let err = s.reconfigure(t0, new).expect_err("must be refused");
    assert_eq!(err.len(), 1);
    assert_eq!(err[0].address, "10.99.0.100".parse::<Ipv4Addr>().unwrap());
    assert_eq!(err[0].user, "vpn");
    assert_eq!(err[0].pool.as_deref(), Some("VPNPOOL"));
    // Refused as a whole: the user in the same file was not added.
    assert!(try_login(&mut s, t0, "carol", "pw").is_none());

    // A removed tunnel group and a changed mask are refused the same way.
    let mut gone = config();
    gone.tunnel_groups[0].name = "OTHER".into();
    assert!(s.reconfigure(t0, gone).unwrap_err()[0].why.contains("tunnel-group RA is removed"));
    let mut mask = config();
    mask.pools.get_mut("VPNPOOL").unwrap().mask = "255.255.0.0".parse().unwrap();
    assert!(s.reconfigure(t0, mask).unwrap_err()[0].why.contains("mask"));

    // Growing it (and a second pool) is fine; the next lease may come from the new range.
    let mut grow = config();
    grow.pools.insert("VPNPOOL".into(), pool("10.99.0.100", "10.99.0.100"));
    grow.pools.insert("MORE".into(), pool("10.99.5.1", "10.99.5.2"));
    grow.tunnel_groups[0].address_pools.push("MORE".into());
    let ch = s.reconfigure(t0, grow).expect("applied");
    assert_eq!(ch.pools_added, vec!["MORE"]);
    assert_eq!(ch.pools_changed, vec!["VPNPOOL"]);
    let c2 = try_login(&mut s, t0, "vpn", "secret").expect("login");
    let (_, h2) = connect(&mut s, t0, &c2);
    assert_eq!(values(&h2, "X-CSTP-Address"), vec!["10.99.5.1"]);
}

#[test]
fn runtime_knobs_and_restart_only_settings_are_kept() {
    let t0 = Instant::now();
    let mut s = server(t0);
    let mut new = config();
    new.dtls_port = 4443;
    new.tcpmss = 1200;
    new.verifier = pbkdf2_verifier();
    s.reconfigure(t0, new).expect("applied");
    assert_eq!(s.config().dtls_port, 443);
    assert_eq!(s.config().tcpmss, 1380);
    // The plain verifier is still the one in use: the old password works.
    assert!(try_login(&mut s, t0, "vpn", "secret").is_some());
}
