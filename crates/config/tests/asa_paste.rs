//! The full ASA running-config pastes (`tests/golden/asa-paste-*.cfg`, written in the ASA 9.16
//! `show running-config` form): accepted as they are, every line outside holdfast's scope counted
//! once in the summary (multi-line blocks line by line), and each of them an error in strict mode.

use std::path::Path;

const PASTES: [&str; 3] = ["asa-paste.cfg", "asa-paste-branch.cfg", "asa-paste-hq.cfg"];

fn read(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)).expect("read paste")
}

/// `N` and `L` of "ignored: N lines for features outside holdfast's scope, first at line L".
fn summary(d: &config::Diagnostics) -> (usize, u32) {
    let w: Vec<_> = d.iter().filter(|w| w.message.starts_with("ignored: ")).collect();
    assert_eq!(w.len(), 1, "exactly one summary line:\n{d}");
    let words: Vec<&str> = w[0].message.split_whitespace().collect();
    let n = words[1].parse().expect("count");
    let line = words.last().and_then(|l| l.parse().ok()).expect("first line");
    assert_eq!(w[0].span.map(|s| s.line), Some(line), "the summary points at its first line");
    (n, line)
}

fn line_of(text: &str, needle: &str) -> u32 {
    text.lines().position(|l| l.contains(needle)).map(|i| i as u32 + 1).unwrap_or_else(|| panic!("no line with {needle:?}"))
}

#[test]
fn pastes_are_accepted_and_strict_refuses_exactly_the_ignored_lines() {
    for name in PASTES {
        let text = read(name);
        let loaded = config::parse(name, &text).unwrap_or_else(|d| panic!("{name} must be accepted:\n{d}"));
        let (n, first) = summary(&loaded.warnings);
        assert!(n > 50, "{name}: only {n} ignored lines");
        let strict = config::parse_with(name, &text, config::ParseOptions { strict: true }).expect_err("strict refuses");
        let scope: Vec<_> = strict.iter().filter(|d| d.message.contains("outside holdfast's scope (refused in strict mode)")).collect();
        assert_eq!(scope.len(), n, "{name}: strict mode must refuse exactly the {n} ignored lines");
        assert_eq!(scope[0].span.map(|s| s.line), Some(first));
        // Every diagnostic carries file, line, column and a caret under its token.
        for d in strict.iter().chain(loaded.warnings.iter()) {
            let s = d.span.expect("span");
            assert!(s.line >= 1 && s.col >= 1);
            let shown = d.to_string();
            let mut lines = shown.lines();
            assert!(lines.next().is_some_and(|l| l.starts_with(&format!("{name}:{}:{}: ", s.line, s.col))), "{shown}");
            assert!(lines.next().is_some(), "source line: {shown}");
            let caret = lines.next().expect("caret line");
            assert_eq!(caret.find('^'), Some(2 + s.col as usize - 1), "{shown}");
        }
        // No other error than the scope ones: the supported lines of a real paste are valid.
        assert_eq!(strict.error_count(), n, "{name}:\n{strict}");
    }
}

#[test]
fn multi_line_blocks_are_counted_line_by_line() {
    let text = read("asa-paste-hq.cfg");
    let strict = config::parse_with("hq", &text, config::ParseOptions { strict: true }).expect_err("strict");
    let refused: std::collections::BTreeSet<u32> = strict.iter().filter_map(|d| d.span.map(|s| s.line)).collect();
    // Certificate chain hex lines and their `quit`, policy-map class children, call-home
    // profile lines, webvpn nested modes, aaa-server host sub-lines, object members.
    for needle in [
        "crypto ca certificate chain TP-VPN-CORP",
        "    308206a4 3082058c",
        "  quit",
        "  inspect sqlnet",
        "  set connection advanced-options tcp-state-bypass",
        "  subscribe-to-alert-group telemetry periodic daily",
        "   max-age 31536000",
        " ldap-base-dn DC=corp",
        " protocol-object udp",
        " nat (dmz,outside) static obj-web-public service tcp https https",
        " service tcp destination eq https",
        "timeout igp stale-route 0:01:10",
        " anyconnect modules value dart,umbrella",
        " vpn-simultaneous-logins 1",
    ] {
        let l = line_of(&text, needle);
        assert!(refused.contains(&l), "line {l} ({needle:?}) is not counted");
    }
    // Supported lines are not among them.
    for needle in [
        "crypto map outside_map 20 set nat-t-disable",
        " anyconnect mtu 1300",
        "ip local pool AC-POOL",
        "timeout conn 4:00:00",
        " network-object host 10.10.0.54",
        "object-group network og-nantes",
        " subnet 10.43.0.0 255.255.255.0",
    ] {
        let l = line_of(&text, needle);
        assert!(!refused.contains(&l), "line {l} ({needle:?}) is supported but refused in strict mode");
    }
}

#[test]
fn the_paste_becomes_the_expected_tunnels() {
    let hq = config::parse("hq", &read("asa-paste-hq.cfg")).expect("hq").config;
    let branch = config::parse("branch", &read("asa-paste-branch.cfg")).expect("branch").config;
    let th = hq.tunnels().expect("hq tunnels");
    let tb = branch.tunnels().expect("branch tunnels");
    assert_eq!(th.len(), 2, "two crypto map entries at HQ");
    assert_eq!(tb.len(), 1);
    // The branch and the HQ entry towards it are mirror images (same keys, swapped).
    let to_branch = th.iter().find(|t| t.peer_addr.to_string() == "198.51.100.14").expect("HQ -> branch");
    assert_eq!(to_branch.local_addr, tb[0].peer_addr);
    assert_eq!(to_branch.local_ts, tb[0].remote_ts);
    assert_eq!(to_branch.remote_ts, tb[0].local_ts);
    assert_eq!(to_branch.local_psk, tb[0].remote_psk);
    assert_eq!(to_branch.remote_psk, tb[0].local_psk);
    // The AnyConnect part loads, but with the ASA's trustpoint (no PEM files) no listener starts.
    assert!(hq.anyconnect_groups().iter().any(|g| g.name == "AC-STAFF"));
    assert!(hq.anyconnect_listeners().expect("listeners").is_empty());
}
