//! The public contract: `load`/`parse`, diagnostic rendering, the lowered values.

use policy::{ConnectionType, DhGroup, Encryption, Integrity, Ipv4Net, Prf, TrafficSelector};
use std::net::Ipv4Addr;
use std::time::Duration;

const GOOD: &str = "\
interface eth-out
 nameif outside
 ip address 192.0.2.1 255.255.255.0
access-list L2L extended permit ip 10.1.0.0 255.255.255.0 10.2.0.0 255.255.255.0
crypto ikev2 policy 10
 encryption aes-gcm-256 aes-256
 integrity null sha256
 group 19 14 31
 prf sha256
 lifetime seconds 86400
crypto ikev2 enable outside
crypto ipsec ikev2 ipsec-proposal P1
 protocol esp encryption aes-gcm-256 aes-256
 protocol esp integrity sha-256 sha-1
crypto map MAP 10 match address L2L
crypto map MAP 10 set peer 192.0.2.2
crypto map MAP 10 set ikev2 ipsec-proposal P1
crypto map MAP 10 set pfs group19
crypto map MAP 10 set security-association lifetime seconds 3600 kilobytes 4608000
crypto map MAP interface outside
tunnel-group 192.0.2.2 type ipsec-l2l
tunnel-group 192.0.2.2 ipsec-attributes
 ikev2 remote-authentication pre-shared-key theirs
 ikev2 local-authentication pre-shared-key ours
";

#[test]
fn issue_2_block_lowers_to_one_tunnel() {
    let loaded = config::parse("gw.cfg", GOOD).unwrap_or_else(|d| panic!("{d}"));
    assert!(loaded.warnings.is_empty(), "{}", loaded.warnings);
    let t = loaded.config.tunnels().expect("tunnels");
    assert_eq!(t.len(), 1);
    let t = &t[0];
    assert_eq!(t.name, "MAP:10");
    assert_eq!(t.local_addr, "192.0.2.1".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(t.peer_addr, "192.0.2.2".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(t.outside_ifname, "eth-out");
    assert_eq!(t.local_ts, vec![TrafficSelector::from_net(Ipv4Net::new(Ipv4Addr::new(10, 1, 0, 0), 24), None)]);
    assert_eq!(t.remote_ts[0].start_addr, Ipv4Addr::new(10, 2, 0, 0));
    assert_eq!(t.remote_ts[0].end_addr, Ipv4Addr::new(10, 2, 0, 255));
    let p = &t.ike_policies[0];
    assert_eq!(p.encryption, vec![Encryption::AesGcm256, Encryption::AesCbc256]);
    assert_eq!(p.integrity, vec![Integrity::Null, Integrity::Sha256]);
    assert_eq!(p.groups, vec![DhGroup::Ecp256, DhGroup::Modp2048, DhGroup::Curve25519]);
    assert_eq!(p.prf, vec![Prf::Sha256]);
    assert_eq!(p.lifetime, Some(Duration::from_secs(86400)));
    assert_eq!(t.esp_proposals[0].encryption, vec![Encryption::AesGcm256, Encryption::AesCbc256]);
    assert_eq!(t.esp_proposals[0].integrity, vec![Integrity::Sha256, Integrity::Sha1]);
    assert_eq!(t.pfs, Some(DhGroup::Ecp256));
    assert_eq!(t.child_lifetime, Duration::from_secs(3600));
    assert_eq!(t.child_lifetime_kilobytes, Some(4_608_000));
    assert_eq!(t.local_psk.0, "ours");
    assert_eq!(t.remote_psk.0, "theirs");
    assert_eq!(t.dpd, Some(policy::Dpd::default()));
    assert_eq!(t.connection_type, ConnectionType::Bidirectional);
    assert!(!t.nat_t_disable && !t.force_udp_encap);
}

#[test]
fn diagnostic_format_is_file_line_col_line_caret() {
    let text = GOOD.replace(" group 19 14 31", " group 19 2");
    let err = config::parse("gw-a.cfg", &text).expect_err("group 2 is refused");
    assert_eq!(err.error_count(), 1, "{err}");
    assert_eq!(
        err.to_string(),
        "gw-a.cfg:8:11: error: DH group 2 (1024-bit MODP) is refused as insecure; use group 19 or group 14\n   group 19 2\n            ^"
    );
    let d = &err.0[0];
    let span = d.span.expect("span");
    assert_eq!((span.line, span.col), (8, 11));
    assert_eq!(&text[span.start..span.end], "2");
}

#[test]
fn all_errors_are_reported_not_just_the_first() {
    let text = GOOD
        .replace("encryption aes-gcm-256 aes-256\n integrity", "encryption 3des\n integrity")
        .replace("integrity sha-256 sha-1", "integrity md5")
        .replace("set pfs group19", "set pfs group5")
        .replace("match address L2L", "match address NOPE");
    let err = config::parse("x.cfg", &text).expect_err("invalid");
    let msgs: Vec<String> = err.iter().map(|d| d.message.clone()).collect();
    assert!(msgs.iter().any(|m| m.starts_with("3DES")), "{err}");
    assert!(msgs.iter().any(|m| m.starts_with("MD5")), "{err}");
    assert!(msgs.iter().any(|m| m.starts_with("DH group 5")), "{err}");
    assert!(msgs.iter().any(|m| m == "access-list NOPE is not defined"), "{err}");
    // Sorted by position.
    let lines: Vec<u32> = err.iter().filter_map(|d| d.span).map(|s| s.line).collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{lines:?}");
}

#[test]
fn missing_file_names_the_path() {
    let err = config::load(std::path::Path::new("/nonexistent/holdfast/gw.cfg")).expect_err("missing");
    assert_eq!(err.len(), 1);
    assert_eq!(
        err.to_string(),
        "/nonexistent/holdfast/gw.cfg: error: cannot read configuration file /nonexistent/holdfast/gw.cfg: no such file"
    );
}

#[test]
fn non_utf8_file_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("holdfast-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let p = dir.join("latin1.cfg");
    std::fs::write(&p, b"hostname caf\xe9\n").expect("write");
    let err = config::load(&p).expect_err("not utf-8");
    assert!(err.to_string().contains("is not UTF-8 text (invalid byte at offset 12)"), "{err}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn strict_mode_turns_the_summary_into_errors() {
    let text = format!("snmp-server enable traps\n{GOOD}route outside 0.0.0.0 0.0.0.0 192.0.2.254\n");
    let ok = config::parse("x.cfg", &text).expect("non-strict accepts");
    assert_eq!(ok.warnings.len(), 1);
    assert_eq!(ok.warnings.0[0].message, "ignored: 2 lines for features outside holdfast's scope, first at line 1");
    let err = config::parse_with("x.cfg", &text, config::ParseOptions { strict: true }).expect_err("strict refuses");
    assert_eq!(err.error_count(), 2, "{err}");
}

#[test]
fn show_run_all_sysopt_matches_the_asa() {
    // asa.md §1, with the interface named `outside`.
    let cfg = config::parse("x.cfg", "interface e0\n nameif outside\nsysopt connection preserve-vpn-flows\n").expect("ok").config;
    assert_eq!(
        config::running_config_all_sysopt(&cfg),
        "no sysopt connection timewait
sysopt connection tcpmss 1380
sysopt connection tcpmss minimum 0
sysopt connection permit-vpn
sysopt connection reclassify-vpn
sysopt connection preserve-vpn-flows
no sysopt nodnsalias inbound
no sysopt nodnsalias outbound
no sysopt radius ignore-secret
no sysopt noproxyarp outside
"
    );
    assert!(cfg.sysopt.preserve_vpn_flows && !cfg.sysopt.preserve_vpn_flows_udp);
}

#[test]
fn show_filters_like_the_asa() {
    let cfg = config::parse("x.cfg", GOOD).expect("ok").config;
    let only_maps = config::show_running_config(&cfg, &config::ShowOptions { filter: vec!["crypto".into(), "map".into()], ..Default::default() });
    assert!(only_maps.lines().all(|l| l.starts_with("crypto map MAP ")), "{only_maps}");
    assert_eq!(only_maps.lines().count(), 6);
    let tg = config::show_running_config(&cfg, &config::ShowOptions { filter: vec!["tunnel-group".into()], ..Default::default() });
    assert_eq!(
        tg,
        "tunnel-group 192.0.2.2 type ipsec-l2l\ntunnel-group 192.0.2.2 ipsec-attributes\n ikev2 remote-authentication pre-shared-key *****\n ikev2 local-authentication pre-shared-key *****\n"
    );
}

#[test]
fn timeouts_follow_asa_ranges() {
    let ok = config::parse("t.cfg", "timeout conn 0:05:00 half-closed 0 udp 1193:00:00 icmp 0:00:02\n").expect("ok").config;
    assert_eq!(ok.timeouts.conn, Some(Duration::from_secs(300)));
    assert_eq!(ok.timeouts.half_closed, None);
    assert_eq!(ok.timeouts.udp, Some(Duration::from_secs(1193 * 3600)));
    for bad in ["timeout conn 0:04:59", "timeout half-closed 0:00:29", "timeout udp 0:00:59", "timeout icmp 0:00:01", "timeout conn 1193:00:01", "timeout conn 1:60:00"] {
        assert!(config::parse("t.cfg", bad).is_err(), "{bad} must be refused");
    }
}

/// Certificate authentication resolves to the trustpoint files per tunnel; the PSK-only
/// `tunnels()` view refuses such tunnels instead of running them with empty keys.
#[test]
fn certificate_authentication_resolves_to_trustpoint_files() {
    use policy::{LocalAuth, RemoteAuth};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let cfg = config::load(&dir.join("cert-auth.cfg")).unwrap_or_else(|d| panic!("{d}")).config;
    let err = cfg.tunnels().unwrap_err().to_string();
    assert!(err.contains("crypto map MAP 10") && err.contains("certificate authentication"), "{err}");
    let t = cfg.tunnels_with_auth().expect("resolves");
    assert_eq!(t.len(), 2);
    let ca = vec![("GW-A".to_string(), "/etc/holdfast/pki/ca.crt".to_string())];
    assert_eq!(t[0].policy.name, "MAP:10");
    assert_eq!(
        t[0].auth.local,
        LocalAuth::Certificate {
            trustpoint: "GW-A".into(),
            certificate_file: "/etc/holdfast/pki/gw-a-ecdsa.crt".into(),
            key_file: "/etc/holdfast/pki/gw-a-ecdsa.key".into()
        }
    );
    assert_eq!(t[0].auth.remote, RemoteAuth::Certificate { cas: ca.clone() });
    // The unused PSK slots are empty, never a configured key.
    assert_eq!(t[0].policy.local_psk.0, "");
    assert_eq!(t[0].policy.remote_psk.0, "");
    // `crypto map MAP 20 set trustpoint GW-A-RSA` overrides the tunnel group's GW-A; GW-A-RSA has
    // no ca-file, so the peer is checked against every trustpoint CA.
    assert_eq!(t[1].policy.name, "MAP:20");
    assert!(matches!(&t[1].auth.local, LocalAuth::Certificate { trustpoint, key_file, .. } if trustpoint == "GW-A-RSA" && key_file.ends_with("gw-a-rsa.key")));
    assert_eq!(t[1].auth.remote, RemoteAuth::Certificate { cas: ca });

    let mixed = config::load(&dir.join("cert-auth-mixed.cfg")).unwrap_or_else(|d| panic!("{d}")).config;
    let m = mixed.tunnels_with_auth().expect("resolves");
    assert_eq!(m[0].auth.local, LocalAuth::Psk(policy::Secret("ours".into())));
    // We sign with no trustpoint, so every trustpoint's ca-file is an anchor.
    assert_eq!(
        m[0].auth.remote,
        RemoteAuth::Certificate { cas: vec![("CA-ONLY".into(), "/etc/holdfast/pki/ca.crt".into()), ("RELATIVE".into(), "pki/ca.crt".into())] }
    );
    assert_eq!(m[0].policy.local_psk.0, "ours");
    assert!(mixed.tunnels().is_err());

    // PSK configurations are unchanged in both views.
    let psk = config::parse("gw.cfg", GOOD).unwrap().config;
    let r = psk.tunnels_with_auth().unwrap();
    assert!(!r[0].auth.uses_certificates());
    assert_eq!(vec![r[0].policy.clone()], psk.tunnels().unwrap());
}
