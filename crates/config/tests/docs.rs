//! The documentation is tested like code:
//! - every ```asa block in `docs/*.md` is a configuration the real parser accepts (warnings
//!   allowed), and parses back from `show running-config` (see also `roundtrip.rs`);
//! - `docs/configuration.md` documents every supported command (`config::commands::SUPPORTED`):
//!   each has an example line in an ```asa block that strict mode accepts, holdfast extensions
//!   under text that says so; no command the parser handles is missing from that table;
//! - `docs/asa-migration.md`: every ```asa-ignored block is ignored line for line, every
//!   ```asa-refused case is refused with a replacement, and every top-level command is listed as
//!   supported;
//! - `docs/getting-started.md`: the two holdfast ends mirror each other and the swanctl.conf
//!   matches the holdfast end it talks to.

mod support;

use config::commands::{top_level, SUPPORTED};
use std::path::Path;
use support::*;

#[test]
fn every_asa_block_in_the_docs_parses() {
    let blocks: Vec<Fence> = all_fences().into_iter().filter(|f| f.lang == "asa").collect();
    assert!(blocks.len() >= 50, "only {} ```asa blocks in docs/", blocks.len());
    let mut failures = Vec::new();
    for f in &blocks {
        if let Err(d) = config::parse(&label(f), &f.text) {
            failures.push(format!("{d}"));
        }
        let (ast, _) = config::parse_ast(&label(f), &f.text);
        assert!(ast.unlisted.is_empty(), "{}: parsed commands missing from parser::TOP_LEVEL: {:?}", label(f), ast.unlisted);
    }
    assert!(failures.is_empty(), "{} doc examples do not parse:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn no_parsed_command_is_missing_from_the_command_table() {
    // Every input the test suite has: golden files, examples, pastes, docs.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut texts: Vec<(String, String)> = Vec::new();
    for dir in [root.join("tests/golden"), root.join("../../examples")] {
        for e in std::fs::read_dir(&dir).expect("dir") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "cfg") {
                texts.push((p.display().to_string(), std::fs::read_to_string(&p).expect("read")));
            }
        }
    }
    for f in all_fences() {
        texts.push((label(&f), f.text));
    }
    for (name, text) in texts {
        let (ast, _) = config::parse_ast(&name, &text);
        assert!(ast.unlisted.is_empty(), "{name}: commands parsed but missing from parser::TOP_LEVEL (and so undocumented): {:?}", ast.unlisted);
    }
}

#[test]
fn the_reference_documents_every_supported_command() {
    let md = read_doc("configuration.md");
    let blocks: Vec<Fence> = fences("docs/configuration.md", &md).into_iter().filter(|f| f.lang == "asa").collect();
    // Strict mode: reference examples use supported lines only, so an example line that the
    // parser would merely ignore cannot pass for documentation of a command.
    for f in &blocks {
        if let Err(d) = config::parse_with(&label(f), &f.text, config::ParseOptions { strict: true }) {
            panic!("reference example uses lines outside holdfast's scope or is invalid:\n{d}");
        }
    }
    let mut missing = Vec::new();
    for c in SUPPORTED {
        let found: Vec<&Fence> = blocks
            .iter()
            .filter(|f| {
                let mut head: Option<&str> = None;
                f.own.lines().any(|l| {
                    if l.trim().is_empty() || l.trim_start().starts_with('!') {
                        return false;
                    }
                    if !l.starts_with(' ') {
                        head = Some(l);
                        c.matches(None, l)
                    } else {
                        c.matches(head, l)
                    }
                })
            })
            .collect();
        if found.is_empty() {
            missing.push(format!("{} (no example)", c.pattern));
        } else if c.extension && !found.iter().any(|f| f.preamble.to_lowercase().contains("holdfast extension")) {
            missing.push(format!("{} (an extension, but no example of it follows text that says `holdfast extension`)", c.pattern));
        }
        // Its syntax is written out in the text too (the first words of the pattern).
        let words: Vec<&str> = c.pattern.split(" > ").last().unwrap_or("").split_whitespace().take_while(|w| *w != "*").collect();
        let needle = format!("`{}", words.join(" "));
        if !md.contains(&needle) {
            missing.push(format!("{} (no syntax line containing {needle})", c.pattern));
        }
    }
    for w in top_level() {
        assert!(md.contains(&format!("`{w} ")) || md.contains(&format!("`{w}`")), "top-level command `{w}` is not in docs/configuration.md");
    }
    assert!(missing.is_empty(), "docs/configuration.md is missing:\n  {}", missing.join("\n  "));
}

#[test]
fn the_migration_page_matches_the_parser() {
    let md = read_doc("asa-migration.md");
    let fs = fences("docs/asa-migration.md", &md);
    let mut ignored_lines = 0;
    let mut refused_cases = 0;
    for f in &fs {
        match f.lang.as_str() {
            "asa-ignored" => {
                // Each command (a head line and its sub-mode lines) alone: accepted, and every
                // one of its lines counted as outside holdfast's scope.
                for case in cases_by_head(&f.text) {
                    let n = case.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('!') && !l.trim_start().starts_with(':')).count();
                    let loaded = config::parse(&label(f), &case).unwrap_or_else(|d| panic!("{}: listed as ignored but refused:\n{case}\n{d}", label(f)));
                    let want = format!("ignored: {n} line");
                    assert!(
                        loaded.warnings.iter().any(|w| w.message.starts_with(&want)),
                        "{}: listed as ignored, but not {n} ignored line(s):\n{case}\n{}",
                        label(f),
                        loaded.warnings
                    );
                    ignored_lines += n;
                }
            }
            "asa-refused" => {
                // Cases are separated by blank lines; each is refused, and each error says
                // what to write instead.
                for case in f.text.split("\n\n").filter(|c| !c.trim().is_empty()) {
                    let d = config::parse(&label(f), case).err().unwrap_or_else(|| panic!("{}: listed as refused but accepted:\n{case}", label(f)));
                    for e in d.iter().filter(|e| e.is_error()) {
                        assert!(
                            e.message.contains("use ") || e.message.contains("write ") || e.message.contains("delete "),
                            "{}: refusal without a replacement: {e}",
                            label(f)
                        );
                    }
                    refused_cases += 1;
                }
            }
            _ => {}
        }
    }
    assert!(ignored_lines >= 40, "the ignored list covers only {ignored_lines} lines");
    assert!(refused_cases >= 12, "the refused list has only {refused_cases} cases");
    let supported = section(&md, "## Supported");
    assert!(!supported.contains("\n## Ignored"), "section() must stop at the next heading");
    for w in top_level() {
        assert!(supported.contains(&format!("`{w}")), "top-level command `{w}` is not listed under ## Supported in docs/asa-migration.md");
    }
    for c in SUPPORTED.iter().filter(|c| c.extension) {
        let words: Vec<&str> = c.pattern.split(" > ").last().unwrap_or("").split_whitespace().take_while(|w| *w != "*").collect();
        let needle = format!("`{}", words.join(" "));
        assert!(md.contains(&needle), "holdfast extension {} is not listed in docs/asa-migration.md ({needle})", c.pattern);
    }
}

/// A markdown section: from its heading to the next heading of the same or a higher level.
fn section<'a>(md: &'a str, heading: &str) -> &'a str {
    let start = md.find(&format!("\n{heading}")).unwrap_or_else(|| panic!("no section {heading}"));
    let rest = &md[start + 1..];
    let level = heading.chars().take_while(|c| *c == '#').count();
    let end = rest[1..]
        .match_indices("\n#")
        .find(|(i, _)| rest[i + 2..].chars().take_while(|c| *c == '#').count() <= level)
        .map_or(rest.len(), |(i, _)| i + 1);
    &rest[..end]
}

/// Splits configuration text into commands: an unindented line with the indented lines under it.
fn cases_by_head(text: &str) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for l in text.lines() {
        if l.trim().is_empty() {
            continue;
        }
        if !l.starts_with(' ') || v.is_empty() {
            v.push(String::new());
        }
        let last = v.last_mut().expect("pushed");
        last.push_str(l);
        last.push('\n');
    }
    v
}

#[test]
fn getting_started_configurations_fit_together() {
    let md = read_doc("getting-started.md");
    let fs = fences("docs/getting-started.md", &md);
    let cfg = |host: &str| {
        let f = fs
            .iter()
            .find(|f| f.lang == "asa" && f.text.lines().any(|l| l == format!("hostname {host}")))
            .unwrap_or_else(|| panic!("no ```asa block with hostname {host}"));
        config::parse(&label(f), &f.text).expect("parses").config
    };
    let a = cfg("lab-wan-a");
    let b = cfg("lab-wan-b");
    let ta = &a.tunnels().expect("a")[0];
    let tb = &b.tunnels().expect("b")[0];
    assert_eq!((ta.local_addr, ta.peer_addr), (tb.peer_addr, tb.local_addr));
    assert_eq!((&ta.local_ts, &ta.remote_ts), (&tb.remote_ts, &tb.local_ts));
    assert_eq!((&ta.local_psk, &ta.remote_psk), (&tb.remote_psk, &tb.local_psk));
    assert_eq!(ta.ike_policies, tb.ike_policies);
    assert_eq!(ta.esp_proposals, tb.esp_proposals);
    // The strongSwan end replaces lab-wan-b: same addresses, selectors and key.
    let swan = fs.iter().find(|f| f.text.contains("connections {")).expect("a swanctl.conf block");
    let kv = |k: &str| -> String {
        swan.text
            .lines()
            .filter_map(|l| l.trim().strip_prefix(k).map(|r| r.trim_start()))
            .find_map(|r| r.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_string())
            .unwrap_or_else(|| panic!("swanctl.conf has no {k}"))
    };
    assert_eq!(kv("local_addrs"), ta.peer_addr.to_string());
    assert_eq!(kv("remote_addrs"), ta.local_addr.to_string());
    let net = |t: &policy::TrafficSelector| format!("{}/{}", t.start_addr, prefix(t));
    assert_eq!(kv("local_ts"), net(&ta.remote_ts[0]));
    assert_eq!(kv("remote_ts"), net(&ta.local_ts[0]));
    assert_eq!(kv("secret"), ta.local_psk.0);
    assert_eq!(ta.local_psk, ta.remote_psk, "the swanctl.conf has one shared secret");
}

fn prefix(t: &policy::TrafficSelector) -> u32 {
    let size = u64::from(u32::from(t.end_addr)) - u64::from(u32::from(t.start_addr)) + 1;
    assert!(size.is_power_of_two(), "selector is not one prefix");
    32 - size.trailing_zeros()
}
