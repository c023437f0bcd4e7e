//! `holdfast --version`, `--help` of every command, and the committed man pages (docs/man/)
//! against what the current clap definition renders.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_holdfast");

fn holdfast(args: &[&str]) -> (bool, String) {
    let o = Command::new(BIN).args(args).output().unwrap();
    (o.status.success(), String::from_utf8(o.stdout).unwrap())
}

#[test]
fn version_names_the_crate_version_and_commit() {
    let (ok, out) = holdfast(&["--version"]);
    assert!(ok);
    let line = out.trim_end();
    let rest = line.strip_prefix(&format!("holdfast {}", env!("CARGO_PKG_VERSION"))).unwrap_or_else(|| panic!("{line}"));
    // Built from a checkout: " (git <12 hex digits>)"; from a tarball: nothing.
    let in_git = Command::new("git").args(["rev-parse", "HEAD"]).current_dir(env!("CARGO_MANIFEST_DIR")).output().map(|o| o.status.success()).unwrap_or(false);
    if in_git {
        let hash = rest.strip_prefix(" (git ").and_then(|r| r.strip_suffix(')')).unwrap_or_else(|| panic!("no commit in `{line}`"));
        assert!(hash.len() == 12 && hash.chars().all(|c| c.is_ascii_hexdigit()), "{line}");
        // The commit exists in this repository.
        let known = Command::new("git").args(["cat-file", "-e", &format!("{hash}^{{commit}}")]).current_dir(env!("CARGO_MANIFEST_DIR")).status().unwrap();
        assert!(known.success(), "{hash} is not a commit here");
    } else {
        assert_eq!(rest, "");
    }
}

/// The commands `holdfast --help` lists (not `help`).
fn commands() -> Vec<String> {
    let (ok, out) = holdfast(&["--help"]);
    assert!(ok);
    let section = out.split("Commands:\n").nth(1).expect("a Commands section");
    section
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.strip_prefix("  "))
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn help_covers_every_command_with_a_description_and_examples() {
    let cmds = commands();
    for c in ["run", "check", "shell", "show", "clear", "vpn-sessiondb"] {
        assert!(cmds.iter().any(|x| x == c), "{c} missing from --help: {cmds:?}");
    }
    let (_, top) = holdfast(&["--help"]);
    assert!(top.contains("Examples:"), "{top}");
    for c in &cmds {
        let (ok, out) = holdfast(&[c, "--help"]);
        assert!(ok, "{c} --help failed");
        let description = out.lines().next().unwrap_or("");
        assert!(description.len() > 10 && !description.starts_with("Usage"), "`holdfast {c} --help` has no description:\n{out}");
        assert!(out.contains("Examples:\n  "), "`holdfast {c} --help` has no examples:\n{out}");
        assert!(out.contains(&format!("holdfast {c}")), "`holdfast {c} --help` examples do not use the command:\n{out}");
    }
}

fn man_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/man")
}

#[test]
fn committed_man_pages_are_current() {
    let tmp = std::env::temp_dir().join(format!("holdfast-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let (ok, _) = holdfast(&["__man", tmp.to_str().unwrap()]);
    assert!(ok);
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".1")).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let fresh = names(&tmp);
    let rendered: Vec<(String, String)> = fresh.iter().map(|n| (n.clone(), std::fs::read_to_string(tmp.join(n)).unwrap())).collect();
    let _ = std::fs::remove_dir_all(&tmp);
    let regen = "regenerate with: cargo run -p holdfast -- __man docs/man   (from the repository root)";
    assert!(fresh.contains(&"holdfast.1".to_string()), "{fresh:?}");
    assert_eq!(names(&man_dir()), fresh, "docs/man has a different set of pages; {regen}");
    for (n, a) in &rendered {
        let b = std::fs::read_to_string(man_dir().join(n)).unwrap();
        assert!(*a == b, "docs/man/{n} is out of date; {regen}");
    }
    // One page per listed command.
    for c in commands() {
        assert!(fresh.contains(&format!("holdfast-{c}.1")), "no man page for {c}: {fresh:?}");
    }
}
