//! Puts the git commit into `holdfast --version` when the crate is built from a checkout
//! (HOLDFAST_GIT_SUFFIX = " (git abcdef123456)"), and nothing otherwise (a source tarball).

use std::process::Command;

fn main() {
    let git = |args: &[&str]| -> Option<String> {
        let o = Command::new("git").args(args).output().ok()?;
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string()).filter(|s| !s.is_empty())
    };
    let suffix = git(&["rev-parse", "--short=12", "HEAD"]).map(|c| format!(" (git {c})")).unwrap_or_default();
    println!("cargo:rustc-env=HOLDFAST_GIT_SUFFIX={suffix}");
    // Re-run when HEAD moves: HEAD itself (branch switch), the branch's ref (a commit) and
    // packed-refs. Only paths that exist: a missing one would re-run the script every build.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        let dir = std::path::PathBuf::from(dir);
        let mut watch = vec![dir.join("HEAD"), dir.join("packed-refs")];
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(dir.join(r));
        }
        for p in watch.into_iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    } else {
        println!("cargo:rerun-if-changed=build.rs");
    }
}
