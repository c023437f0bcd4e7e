//! `holdfast check [--strict]` and `holdfast run --strict` on a pasted ASA configuration with
//! lines outside holdfast's scope: golden output (cli_golden/*.stderr), exit status 1 in strict
//! mode. Regenerate the golden files with `HOLDFAST_BLESS=1 cargo test -p holdfast --test cli_strict`
//! after checking the new output by eye.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_holdfast");

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli_golden")
}

/// Runs holdfast in the golden directory (so diagnostics name the file relatively).
fn holdfast(args: &[&str]) -> (Option<i32>, String, String) {
    let o = Command::new(BIN).args(args).current_dir(dir()).output().unwrap();
    (o.status.code(), String::from_utf8(o.stdout).unwrap(), String::from_utf8(o.stderr).unwrap())
}

fn golden(name: &str, actual: &str) {
    let p = dir().join(name);
    if std::env::var_os("HOLDFAST_BLESS").is_some() {
        std::fs::write(&p, actual).unwrap();
    }
    let want = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert_eq!(actual, want, "output differs from {} (HOLDFAST_BLESS=1 rewrites it)", p.display());
}

#[test]
fn check_summarises_ignored_lines() {
    let (code, out, err) = holdfast(&["check", "--config", "ignored-lines.cfg"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "ignored-lines.cfg: configuration OK\n");
    golden("check.stderr", &err);
    assert_eq!(err.matches("warning:").count(), 1, "one summary, not one line each:\n{err}");
}

#[test]
fn check_strict_refuses_each_ignored_line() {
    let (code, out, err) = holdfast(&["check", "--strict", "--config", "ignored-lines.cfg"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(out, "");
    golden("check-strict.stderr", &err);
    // Every line the summary counted is an error of its own, with its line and a caret.
    let (_, _, summary) = holdfast(&["check", "--config", "ignored-lines.cfg"]);
    let n: usize = summary.split("ignored: ").nth(1).and_then(|s| s.split(' ').next()).and_then(|s| s.parse().ok()).unwrap();
    assert_eq!(err.matches(": error: ").count(), n, "{err}");
    assert_eq!(err.lines().filter(|l| l.trim_start().starts_with('^')).count(), err.lines().filter(|l| l.contains(": error: ") || l.contains(": warning: ")).count());
}

/// `run --strict` refuses the same lines with the same text before touching the system (no
/// root needed: it never gets that far).
#[test]
fn run_strict_fails_like_check_strict() {
    let (code, _, err) = holdfast(&["run", "--strict", "--config", "ignored-lines.cfg", "--control", "/nonexistent/holdfast-test.sock"]);
    assert_eq!(code, Some(1), "{err}");
    let (_, _, check) = holdfast(&["check", "--strict", "--config", "ignored-lines.cfg"]);
    assert_eq!(err, check);
    // Without --strict the same file is accepted by check (the clean example too, strict or not).
    let gw_a = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/gw-a.cfg");
    let (code, _, err) = holdfast(&["check", "--strict", "--config", gw_a.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(err, "");
}
