//! Man pages from the clap definition: `holdfast __man DIR` writes holdfast.1 and one page per
//! command (holdfast-run.1, ...). docs/man/ holds the committed copy; the `cli_man` test fails
//! when it differs from what the current definition renders.

use std::io;
use std::path::{Path, PathBuf};

/// Renders every page: (file name, roff text). The version is the crate's alone (no git
/// commit), so the committed pages do not change with every commit.
pub fn render_all(cmd: clap::Command) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = cmd.version(env!("CARGO_PKG_VERSION")).disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    render(&cmd, &mut out)?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn render(cmd: &clap::Command, out: &mut Vec<(String, Vec<u8>)>) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        render(sub, out)?;
    }
    let man = clap_mangen::Man::new(cmd.clone()).manual("holdfast manual").source(format!("holdfast {}", env!("CARGO_PKG_VERSION")));
    let mut buf = Vec::new();
    man.render(&mut buf)?;
    out.push((man.get_filename(), buf));
    Ok(())
}

/// Writes the pages into `dir` (created if missing) and returns their paths.
pub fn write_all(cmd: clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (name, text) in render_all(cmd)? {
        let p = dir.join(name);
        std::fs::write(&p, text)?;
        written.push(p);
    }
    Ok(written)
}
