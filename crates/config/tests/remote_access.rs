//! Remote access (issue 5): the lowered values the gateway and the AnyConnect engine read,
//! password hashing at load, masking, and round trips.

use policy::{Ipv4Net, MtuPolicy, RaAuthentication, RekeyMethod, SplitTunnelPolicy};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

/// The issue's configuration block, verbatim.
const ISSUE: &str = include_str!("golden/anyconnect-issue.cfg");

fn golden(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)).expect("golden input")
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

#[test]
fn issue_block_lowers_to_what_the_engine_needs() {
    let loaded = config::parse("issue.cfg", ISSUE).unwrap_or_else(|d| panic!("{d}"));
    let cfg = &loaded.config;
    // The only remark: no `interface` has nameif outside in the bare block.
    assert_eq!(loaded.warnings.len(), 1, "{}", loaded.warnings);
    assert!(loaded.warnings.to_string().contains("no interface has `nameif outside`"));
    assert_eq!(cfg.sysopt.tcpmss, 1380);

    let ra = cfg.remote_access.as_ref().expect("remote access configured");
    assert_eq!(ra.webvpn.enabled_on, vec!["outside".to_string()]);
    assert!(ra.webvpn.anyconnect_enable);
    assert_eq!((ra.webvpn.port, ra.webvpn.dtls_port), (443, 443));
    let pool = ra.pool("VPNPOOL").expect("pool");
    assert_eq!((pool.start, pool.end, pool.mask()), (ip("10.99.0.100"), ip("10.99.0.199"), ip("255.255.255.0")));
    assert_eq!(pool.len(), 100);
    assert_eq!(pool.nth(99), Some(ip("10.99.0.199")));
    assert_eq!(pool.nth(100), None);

    let g = cfg.anyconnect_group("RA").expect("tunnel group RA");
    assert_eq!(g.aliases, vec!["RA".to_string()]);
    assert_eq!(g.authentication, RaAuthentication::Aaa);
    assert_eq!(g.pools.len(), 1);
    assert_eq!(g.pools[0].name, "VPNPOOL");
    let p = &g.policy;
    assert_eq!(p.name, "ac_users_group");
    assert!(p.ssl_client);
    assert_eq!(p.split_tunnel_policy, SplitTunnelPolicy::TunnelSpecified);
    assert_eq!(p.split_networks, vec![Ipv4Net::new(ip("10.1.0.0"), 24)]);
    assert_eq!(p.mtu, 1300);
    assert_eq!(p.mtu_policy, MtuPolicy::Common, "holdfast default: one MTU for both channels");
    assert!(p.dtls && p.df_bit_ignore);
    assert_eq!(p.dpd_client, Some(Duration::from_secs(30)));
    assert_eq!(p.dpd_gateway, Some(Duration::from_secs(30)));
    // Not written: ASA defaults.
    assert_eq!(p.keepalive, Some(Duration::from_secs(20)));
    assert_eq!(p.idle_timeout, Some(Duration::from_secs(30 * 60)));
    assert_eq!(p.session_timeout, None);
    assert_eq!(p.rekey_method, RekeyMethod::None);
    assert!(p.dns_servers.is_empty() && p.default_domain.is_none());

    // The user's password is kept only as a salted hash that verifies.
    let u = ra.user("vpn").expect("user vpn");
    let h = &u.password_hash.as_ref().expect("hash").0;
    assert!(h.starts_with("$pbkdf2-sha256$"), "{h}");
    assert!(!h.contains("<secret>"));
    assert!(crypto::password::verify(h, "<secret>").expect("well-formed"));
    assert!(!crypto::password::verify(h, "<Secret>").expect("well-formed"));
    assert!(!format!("{cfg:?}").contains("<secret>"), "plaintext must not survive loading");
    assert_eq!(u.privilege, 2);

    let l = cfg.anyconnect_listeners().expect("listeners");
    assert_eq!(l.len(), 1);
    assert_eq!((l[0].addr, l[0].tls_port, l[0].dtls_port), (Ipv4Addr::UNSPECIFIED, 443, 443));
    assert_eq!(l[0].ifname, None);
    assert_eq!(l[0].certificate_file, "/etc/holdfast/server.pem");
    assert_eq!(l[0].key_file, "/etc/holdfast/server.key");
    assert_eq!(cfg.ssl_trustpoint_name(), Some("VPN-TP"));
}

trait SslTp {
    fn ssl_trustpoint_name(&self) -> Option<&str>;
}
impl SslTp for policy::Config {
    fn ssl_trustpoint_name(&self) -> Option<&str> {
        self.remote_access.as_ref()?.ssl_trustpoint_for("outside")
    }
}

#[test]
fn inheritance_defaults_and_extensions() {
    let loaded = config::parse("anyconnect.cfg", &golden("anyconnect.cfg")).unwrap_or_else(|d| panic!("{d}"));
    assert!(loaded.warnings.is_empty(), "{}", loaded.warnings);
    let cfg = &loaded.config;
    let l = cfg.anyconnect_listeners().expect("listeners");
    assert_eq!((l[0].addr, l[0].ifname.as_deref(), l[0].dtls_port), (ip("198.51.100.1"), Some("eth-out"), 8443));

    let ra = cfg.remote_access.as_ref().expect("ra");
    assert!(ra.webvpn.tunnel_group_list);
    assert_eq!(ra.group_policies[0].name, "DfltGrpPolicy", "printed first, as on the ASA");
    let all: Vec<String> = cfg.effective_group_policies().into_iter().map(|p| p.name).collect();
    assert_eq!(all, vec!["DfltGrpPolicy", "ac_users_group", "cert_users"]);

    let a = cfg.anyconnect_group("RA").expect("RA");
    assert_eq!(a.aliases, vec!["RA".to_string(), "Staff".to_string()], "disabled alias not offered");
    assert_eq!(ra.tunnel_group_by_alias("Staff").map(|t| t.name.as_str()), Some("RA"));
    assert_eq!(ra.tunnel_group_by_alias("Old").map(|t| t.name.as_str()), None);
    assert_eq!(ra.tunnel_group_by_alias("CERT").map(|t| t.name.as_str()), Some("CERT"));
    let p = &a.policy;
    // From DfltGrpPolicy:
    assert_eq!(p.dns_servers, vec![ip("10.1.0.53"), ip("10.1.0.54")]);
    assert_eq!(p.default_domain.as_deref(), Some("corp.example"));
    // Own values:
    assert_eq!(p.idle_timeout, Some(Duration::from_secs(120 * 60)));
    assert_eq!(p.rekey_time, Some(Duration::from_secs(3600)));
    assert_eq!(p.rekey_method, RekeyMethod::Ssl);
    assert_eq!(p.keepalive, Some(Duration::from_secs(20)));
    assert_eq!(p.split_networks, vec![Ipv4Net::new(ip("10.1.0.0"), 24), Ipv4Net::host(ip("10.2.0.10"))]);

    let c = cfg.anyconnect_group("CERT").expect("CERT");
    assert_eq!(c.authentication, RaAuthentication::AaaCertificate);
    assert_eq!(c.client_ca_files, vec!["/etc/holdfast/client-ca.pem".to_string()]);
    // The group policy's address-pools override the (absent) tunnel-group pools.
    assert_eq!(c.pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), vec!["CERTPOOL"]);
    let p = &c.policy;
    assert!(p.ssl_client, "inherited from DfltGrpPolicy's vpn-tunnel-protocol");
    assert_eq!(p.mtu, 1406, "ASA default anyconnect mtu");
    assert_eq!(p.mtu_policy, MtuPolicy::Split);
    assert!(!p.dtls);
    assert_eq!(p.dpd_client, None);
    assert_eq!(p.dpd_gateway, Some(Duration::from_secs(30)));
    assert_eq!(p.split_tunnel_policy, SplitTunnelPolicy::ExcludeSpecified);
    assert_eq!(p.split_networks, vec![Ipv4Net::new(ip("192.0.2.0"), 24)]);

    // A hash made by another PBKDF2 implementation (Python's hashlib) verifies.
    let alice = ra.user("alice").expect("alice");
    assert_eq!(alice.privilege, 0);
    assert!(crypto::password::verify(&alice.password_hash.as_ref().expect("hash").0, "Alice-Pass-2026").unwrap());
    assert!(!crypto::password::verify(&alice.password_hash.as_ref().expect("hash").0, "alice-pass-2026").unwrap());
    let ops = ra.user("ops").expect("ops");
    assert_eq!((ops.password_hash.is_none(), ops.privilege), (true, 15));
}

#[test]
fn secrets_are_masked_and_hashes_round_trip() {
    let first = config::parse("issue.cfg", ISSUE).expect("ok").config;
    let masked = config::running_config(&first);
    assert!(masked.lines().any(|l| l == "username vpn password ***** pbkdf2"), "{masked}");
    assert!(!masked.contains("$pbkdf2"), "hash must not be shown");

    // The unmasked form carries the hash, never the plaintext, and loads it as is.
    let unmasked = config::running_config_unmasked(&first);
    let hash = first.remote_access.as_ref().unwrap().users[0].password_hash.clone().unwrap().0;
    assert!(unmasked.contains(&format!("username vpn password {hash} pbkdf2")), "{unmasked}");
    let second = config::parse("again.cfg", &unmasked).expect("re-parse").config;
    assert_eq!(first, second);

    // Loading clear text twice salts differently; both verify.
    let other = config::parse("issue.cfg", ISSUE).expect("ok").config;
    let hash2 = other.remote_access.as_ref().unwrap().users[0].password_hash.clone().unwrap().0;
    assert_ne!(hash, hash2);
    assert!(crypto::password::verify(&hash2, "<secret>").unwrap());

    // The masked text is never taken as a password: the user is dropped with a warning.
    let back = config::parse("masked.cfg", &masked).expect("masked form loads");
    assert!(back.warnings.to_string().contains("user vpn: the password is masked"), "{}", back.warnings);
    assert!(back.config.remote_access.as_ref().unwrap().user("vpn").is_none());
}

#[test]
fn real_asa_fragment_is_accepted_with_extras_ignored() {
    let loaded = config::parse("asa.cfg", &golden("anyconnect-asa-paste.cfg")).unwrap_or_else(|d| panic!("{d}"));
    let w = loaded.warnings.to_string();
    assert!(w.contains("ignored: "), "{w}");
    let cfg = &loaded.config;
    let g = cfg.anyconnect_group("AC").expect("AC");
    assert_eq!(g.aliases, vec!["AnyConnect".to_string()]);
    assert_eq!(g.policy.mtu, 1300);
    assert!(g.policy.df_bit_ignore);
    let ra = cfg.remote_access.as_ref().unwrap();
    assert!(ra.user("helpdesk").is_some());
    assert!(ra.user("admin").is_none() && ra.user("vpnuser").is_none(), "unverifiable users are not loaded");
    // In strict mode every ignored line is refused, including the cosmetic webvpn ones.
    let err = config::parse_with("asa.cfg", &golden("anyconnect-asa-paste.cfg"), config::ParseOptions { strict: true }).expect_err("strict");
    let e = err.to_string();
    for what in ["`anyconnect image`", "`anyconnect profiles`", "`group-url`", "`http-headers`"] {
        assert!(e.contains(what), "{what} not refused in strict mode:\n{e}");
    }
}

#[test]
fn policy_without_ssl_client_is_flagged() {
    let text = ISSUE.replace(" vpn-tunnel-protocol ssl-client\n", " vpn-tunnel-protocol ikev2\n");
    let loaded = config::parse("x.cfg", &text).unwrap_or_else(|d| panic!("{d}"));
    let w = loaded.warnings.to_string();
    assert!(w.contains("group-policy ac_users_group does not allow AnyConnect"), "{w}");
    assert!(!loaded.config.anyconnect_group("RA").unwrap().policy.ssl_client);
    // Removing the line falls back to the ASA default, which lacks ssl-client too.
    let text = ISSUE.replace(" vpn-tunnel-protocol ssl-client\n", "");
    let w = config::parse("x.cfg", &text).unwrap().warnings.to_string();
    assert!(w.contains("does not allow AnyConnect"), "{w}");
}

#[test]
fn reentered_modes_modify_and_last_user_line_wins() {
    let text = format!(
        "{ISSUE}group-policy ac_users_group attributes\n webvpn\n  anyconnect mtu 1200\n  anyconnect mtu-policy split\nusername vpn password Other-Pass privilege 5\n"
    );
    let cfg = config::parse("x.cfg", &text).unwrap_or_else(|d| panic!("{d}")).config;
    let p = cfg.effective_group_policy("ac_users_group").unwrap();
    assert_eq!((p.mtu, p.mtu_policy, p.df_bit_ignore), (1200, MtuPolicy::Split, true));
    let ra = cfg.remote_access.as_ref().unwrap();
    assert_eq!(ra.users.len(), 1);
    let u = ra.user("vpn").unwrap();
    assert_eq!(u.privilege, 5);
    assert!(crypto::password::verify(&u.password_hash.as_ref().unwrap().0, "Other-Pass").unwrap());
    assert!(!crypto::password::verify(&u.password_hash.as_ref().unwrap().0, "<secret>").unwrap());
}

#[test]
fn no_remote_access_lines_means_none() {
    let cfg = config::parse("x.cfg", "hostname a\nsysopt connection tcpmss 1380\n").unwrap().config;
    assert_eq!(cfg.remote_access, None);
    assert!(cfg.anyconnect_groups().is_empty());
    assert_eq!(cfg.anyconnect_listeners().expect("no listeners"), Vec::new());
    // An empty webvpn block or only ignored lines do not switch remote access on.
    let cfg = config::parse("x.cfg", "webvpn\n anyconnect image disk0:/x.pkg 1\n").unwrap().config;
    assert_eq!(cfg.remote_access, None);
}

#[test]
fn errors_point_at_the_offending_word() {
    let cases: &[(&str, &str, &str)] = &[
        ("ip local pool P 10.9.0.1-10.9.1.1 mask 255.255.255.0\n", "does not fit in one subnet", "255.255.255.0"),
        ("group-policy G internal\ngroup-policy G attributes\n webvpn\n  anyconnect mtu 1463\n", "from 576 to 1462", "1463"),
        ("tunnel-group T type remote-access\ntunnel-group T general-attributes\n address-pool NOPE\n", "ip local pool NOPE is not defined", "NOPE"),
        ("tunnel-group T type remote-access\ntunnel-group T general-attributes\n default-group-policy NOPE\n", "group-policy NOPE is not defined", "NOPE"),
        (
            "access-list E extended permit ip any4 any4\ngroup-policy G internal\ngroup-policy G attributes\n split-tunnel-network-list value E\n",
            "is an extended ACL",
            "E",
        ),
        ("group-policy G internal\ngroup-policy G attributes\n split-tunnel-network-list value NOACL\n", "access-list NOACL is not defined", "NOACL"),
    ];
    for (text, msg, word) in cases {
        let err = config::parse("e.cfg", text).expect_err(text);
        let d = err.iter().find(|d| d.message.contains(msg)).unwrap_or_else(|| panic!("{msg} not in\n{err}"));
        let s = d.span.expect("span");
        assert_eq!(&text[s.start..s.end], *word, "{d}");
        let rendered = d.to_string();
        assert!(rendered.starts_with(&format!("e.cfg:{}:{}: error: ", s.line, s.col)), "{rendered}");
        assert!(rendered.contains('^'), "{rendered}");
    }
}
