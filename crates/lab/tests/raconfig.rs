//! The remote-access lab configurations ([`lab::raconfig::RaConfigText`]) are accepted by the
//! real parser (crates/config), every knob the lab tests turn reaches the parsed policy, and
//! `line_of` names the line the parser itself reports for a statement. No root needed.

use lab::openconnect::{ServerCert, SERVER_IP};
use lab::raconfig::{RaConfigText, RaPool};

fn cert() -> ServerCert {
    ServerCert { cert: "/lab/server.pem".into(), key: "/lab/server.key".into(), pin: String::new() }
}

/// `show running-config` of the parsed text, with every secret masked.
fn running(c: &RaConfigText) -> String {
    let loaded = config::parse("ra.cfg", &c.text()).unwrap_or_else(|d| panic!("{d}\n{}", c.text()));
    config::running_config(&loaded.config)
}

#[test]
fn every_lab_variant_parses_and_carries_its_knobs() {
    let issue = RaConfigText::issue(&cert(), "pw-lab-5");
    let r = running(&issue);
    for want in ["anyconnect mtu 1300", "ip local pool VPNPOOL 10.99.0.100-10.99.0.199", "username vpn password *****"] {
        assert!(r.contains(want), "{want:?} in the issue's configuration:\n{r}");
    }

    let variants = [
        ("daemon", issue.clone().logging_host(SERVER_IP), vec![format!("logging host inside {SERVER_IP}")]),
        ("reload", issue.clone().mtu(None).tcpmss(None).user("carol", "carol-pw-9").add_split("10.2.0.0/24"), vec!["username carol".into(), "10.2.0.0 255.255.255.0".into()]),
        ("split mtus", issue.clone().mtu(None).mtu_policy_split(true), vec!["anyconnect mtu-policy split".into()]),
        (
            "pool + group",
            issue.clone().tunnel_group_list(true).add_pool(RaPool::new("POOL2", "10.98.0.10", "10.98.0.20", "255.255.255.0")).add_tunnel_group("RA2", "POOL2", false),
            vec!["ip local pool POOL2 10.98.0.10-10.98.0.20".into(), "tunnel-group RA2 general-attributes".into(), "tunnel-group-list enable".into()],
        ),
        (
            "certificate group",
            issue.clone().client_ca(std::path::Path::new("/lab/ca.pem")).add_tunnel_group("CERT", "VPNPOOL", true),
            vec!["ca-file /lab/ca.pem".into(), "authentication certificate".into()],
        ),
        ("no dtls", issue.clone().dtls(false).df_bit_ignore(false).dpd(None), vec!["anyconnect ssl dtls none".into()]),
        // 1380 is the default, which `show running-config` leaves out.
        ("tcpmss", issue.clone().tcpmss(Some(1300)), vec!["sysopt connection tcpmss 1300".into()]),
    ];
    for (name, c, wants) in variants {
        let r = running(&c);
        for want in &wants {
            assert!(r.contains(want.as_str()), "{name}: {want:?} in\n{r}");
        }
        if name != "daemon" {
            assert!(!r.contains("logging host"), "{name}: only what was asked for changes:\n{r}");
        }
    }
    let none = running(&issue.clone().mtu(None));
    assert!(!none.contains("anyconnect mtu "), "{none}");
}

#[test]
fn line_of_is_the_line_the_parser_reports() {
    // A range that is not a range: the parser's error names the pool line.
    let c = RaConfigText::issue(&cert(), "pw-lab-5").pool("10.99.0.199", "10.99.0.100", "255.255.255.0");
    let err = config::parse("ra.cfg", &c.text()).expect_err("a reversed pool range is refused").to_string();
    let line = c.line_of("ip local pool VPNPOOL 10.99.0.199-10.99.0.100 mask 255.255.255.0");
    assert!(err.contains(&format!("ra.cfg:{line}:")), "line {line} in:\n{err}");
}
