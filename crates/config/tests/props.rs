//! Property tests: random and mutated input never panics, and every diagnostic points inside
//! the input (byte span within the text, on the line it names, caret column on that line).

use proptest::prelude::*;
use std::path::Path;

fn corpus() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut v = Vec::new();
    for dir in [root.join("tests/golden"), root.join("../../examples")] {
        let mut paths: Vec<_> = std::fs::read_dir(dir).expect("dir").map(|e| e.expect("entry").path()).collect();
        paths.sort();
        for p in paths {
            if p.extension().is_some_and(|e| e == "cfg") {
                v.push(std::fs::read_to_string(p).expect("read"));
            }
        }
    }
    v
}

fn check(text: &str, strict: bool) {
    let diags = match config::parse_with("p.cfg", text, config::ParseOptions { strict }) {
        Ok(l) => {
            // Whatever was accepted renders and parses back to the same thing.
            let again = config::running_config_unmasked(&l.config);
            let back = config::parse("again.cfg", &again).unwrap_or_else(|d| panic!("accepted config does not re-parse:\n{d}\n{again}"));
            assert_eq!(back.config, l.config, "round trip of accepted input");
            l.warnings
        }
        Err(d) => d,
    };
    let lines: Vec<&str> = text.split('\n').collect();
    for d in diags.iter() {
        let s = d.span.expect("parse diagnostics always have a span");
        assert!(s.start <= s.end && s.end <= text.len(), "span {s:?} outside input of {} bytes", text.len());
        assert!(s.line >= 1 && (s.line as usize) <= lines.len(), "line {} of {}", s.line, lines.len());
        let line = lines[s.line as usize - 1].trim_end_matches('\r');
        assert!(s.col >= 1 && (s.col as usize) <= line.chars().count() + 1, "col {} on {line:?}", s.col);
        assert_eq!(d.source_line.as_deref(), Some(line.replace('\t', " ").as_str()));
        let _ = d.to_string();
    }
}

const WORDS: &[&str] = &[
    "crypto", "map", "MAP", "10", "set", "peer", "ikev2", "policy", "ipsec-proposal", "protocol", "esp", "encryption",
    "integrity", "group", "prf", "lifetime", "seconds", "kilobytes", "unlimited", "tunnel-group", "type", "ipsec-l2l",
    "ipsec-attributes", "pre-shared-key", "remote-authentication", "local-authentication", "interface", "nameif",
    "ip", "address", "access-list", "extended", "standard", "permit", "deny", "host", "any4", "192.0.2.1",
    "255.255.255.0", "10.1.0.0", "sysopt", "connection", "preserve-vpn-flows", "timeout", "conn", "1:00:00", "no",
    "logging", "host", "trap", "7", "aes-gcm-256", "sha-256", "sha256", "19", "2", "3des", "md5", "\u{e9}", "\t", "!",
    "match", "pfs", "group19", "enable", "outside", "isakmp", "keepalive", "threshold", "retry", "*****", "",
    "webvpn", "group-policy", "attributes", "internal", "anyconnect", "mtu", "1300", "username", "password", "pbkdf2",
    "nopassword", "privilege", "local", "pool", "10.99.0.1-10.99.0.9", "mask", "ssl", "trust-point", "general-attributes",
    "webvpn-attributes", "address-pool", "default-group-policy", "split-tunnel-network-list", "split-tunnel-policy",
    "tunnelspecified", "value", "dpd-interval", "client", "none", "remote-access", "group-alias", "DfltGrpPolicy",
];

fn line_strategy() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(prop::sample::select(WORDS), 0..8))
        .prop_map(|(indent, words)| format!("{}{}", if indent { " " } else { "" }, words.join(" ")))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}", strict in any::<bool>()) {
        check(&text, strict);
    }

    #[test]
    fn token_soup_never_panics(lines in prop::collection::vec(line_strategy(), 0..40), crlf in any::<bool>()) {
        let text = lines.join(if crlf { "\r\n" } else { "\n" });
        check(&text, false);
    }

    #[test]
    fn mutated_corpus_never_panics(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<char>()), 1..8),
    ) {
        let corpus = corpus();
        let mut chars: Vec<char> = corpus[which.index(corpus.len())].chars().collect();
        for (pos, op, ch) in edits {
            if chars.is_empty() {
                chars.push(ch);
                continue;
            }
            let i = pos.index(chars.len());
            match op {
                0 => { chars.remove(i); }
                1 => chars.insert(i, ch),
                2 => chars[i] = ch,
                _ => {
                    // Duplicate or drop a whole line: exercises mode structure and references.
                    let text: String = chars.iter().collect();
                    let mut ls: Vec<&str> = text.split('\n').collect();
                    let j = i % ls.len();
                    if i % 2 == 0 { ls.remove(j); } else { let l = ls[j]; ls.insert(j, l); }
                    chars = ls.join("\n").chars().collect();
                }
            }
        }
        let text: String = chars.into_iter().collect();
        check(&text, false);
        check(&text, true);
    }
}

/// Found by `mutated_corpus_never_panics` in CI: a built-in remote-access group mentioned only
/// by an empty attributes block rendered to nothing and vanished on the round trip.
#[test]
fn builtin_group_left_at_defaults_round_trips() {
    for header in ["webvpn-attributes", "general-attributes"] {
        check(&format!("tunnel-group DefaultWEBVPNGroup {header}\n"), false);
        check(&format!("tunnel-group DefaultRAGroup {header}\n"), true);
    }
}
