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
    man.render_title(&mut buf)?;
    man.render_name_section(&mut buf)?;
    man.render_synopsis_section(&mut buf)?;
    man.render_description_section(&mut buf)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut buf)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut buf)?;
    }
    // The examples (clap's after_help) keep their lines: clap_mangen would fill them into one
    // paragraph.
    if let Some(text) = cmd.get_after_long_help().or(cmd.get_after_help()) {
        buf.extend_from_slice(examples_section(&text.to_string()).as_bytes());
    }
    if cmd.get_version().is_some() {
        man.render_version_section(&mut buf)?;
    }
    out.push((man.get_filename(), once_preamble(&buf)));
    Ok(())
}

/// Each clap_mangen section comes with the roff preamble that defines `\*(Aq`; one is enough.
fn once_preamble(page: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(page);
    let mut out = String::new();
    let mut seen = false;
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        if l.starts_with(".ie \\n(.g .ds Aq") && lines.peek().is_some_and(|n| n.starts_with(".el .ds Aq")) {
            lines.next();
            if seen {
                continue;
            }
            seen = true;
            out.push_str(l);
            out.push('\n');
            out.push_str(".el .ds Aq '\n");
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    out.into_bytes()
}

/// `.SH EXAMPLES` in no-fill mode, each line escaped for roff.
fn examples_section(text: &str) -> String {
    let body = text.strip_prefix("Examples:\n").unwrap_or(text);
    let mut s = String::from(".SH EXAMPLES\n.nf\n");
    for line in body.lines() {
        let l = line.replace('\\', "\\e").replace('-', "\\-");
        // A line starting with `.` or `'` would be read as a roff request.
        if l.starts_with('.') || l.starts_with('\'') {
            s.push_str("\\&");
        }
        s.push_str(&l);
        s.push('\n');
    }
    s.push_str(".fi\n");
    s
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
