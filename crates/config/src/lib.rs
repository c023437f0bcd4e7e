//! ASA-syntax configuration for holdfast: lexer -> spanned AST -> `policy::Config`, with
//! compiler-style diagnostics, and `show running-config` rendering that parses back to the same
//! configuration.
//!
//! ```text
//! gw-a.cfg:8:11: error: DH group 2 (1024-bit MODP) is refused as insecure; use group 19 or group 14
//!    group 19 2
//!             ^
//! ```
//!
//! Supported commands: `crates/config/README.md`.
//! holdfast extensions (not ASA commands), documented where they are parsed:
//! - `crypto map M N set udp-encapsulation force`: always UDP-encapsulate ESP (RFC 3948);
//! - `crypto ikev2 retransmit <base-ms> <tries>`: IKE retransmission timing;
//! - `sysopt connection preserve-vpn-flows udp`: preserve UDP flows as well as TCP.
//! - `crypto ca trustpoint NAME` lines `certificate-file PATH`, `key-file PATH`, `ca-file PATH`:
//!   PEM files instead of the ASA's certificate import.
//! - `group-policy NAME attributes` / ` webvpn` / `  anyconnect mtu-policy common|split`: one MTU
//!   for both AnyConnect channels (default) or the ASA's separate TLS and DTLS MTUs.
//! - `lifetime none acknowledge-no-rekey` in `crypto ikev2 policy` (and `lifetime 0
//!   acknowledge-no-rekey` in an IKEv1 policy): accept an IKE SA that is never re-keyed, refused
//!   without the acknowledgement.
//! - `metrics prometheus listen IP [port N]`: the Prometheus endpoint.
//!
//! The table of supported commands is [`commands::SUPPORTED`]; `docs/configuration.md` documents
//! each (checked by `tests/docs.rs`).
//!
//! Remote-access passwords (`username NAME password P`) are hashed while parsing
//! (`crypto::password`, PBKDF2-HMAC-SHA256); only the salted hash reaches `policy::Config`.
//!
//! Lines for ASA features outside holdfast's scope (nat, snmp-server, http, object, route, ...)
//! are summarised in one warning, or refused one by one in strict mode.

pub mod ast;
pub mod commands;
mod diag;
mod lexer;
mod lower;
mod parser;
mod render;

pub use diag::{Diagnostic, Diagnostics, Severity, Span};
pub use render::ShowOptions;

use diag::Issue;
use std::path::Path;

/// A configuration that passed every check, and the warnings found on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub config: policy::Config,
    pub warnings: Diagnostics,
}

/// How to parse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseOptions {
    /// Refuse lines for features outside holdfast's scope instead of ignoring them
    /// (`holdfast check --strict`).
    pub strict: bool,
}

/// Reads and parses a configuration file. A missing or unreadable file is one diagnostic naming
/// the path.
pub fn load(path: &Path) -> Result<Loaded, Diagnostics> {
    load_with(path, ParseOptions::default())
}

pub fn load_with(path: &Path, opts: ParseOptions) -> Result<Loaded, Diagnostics> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| {
        let what = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        };
        whole_file_error(&file, format!("cannot read configuration file {file}: {what}"))
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        whole_file_error(&file, format!("configuration file {file} is not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()))
    })?;
    parse_with(&file, &text, opts)
}

/// Parses configuration text; `file_name` is only used in messages.
pub fn parse(file_name: &str, text: &str) -> Result<Loaded, Diagnostics> {
    parse_with(file_name, text, ParseOptions::default())
}

pub fn parse_with(file_name: &str, text: &str, opts: ParseOptions) -> Result<Loaded, Diagnostics> {
    let (ast, mut issues) = parser::parse(text);
    let lowered = lower::lower(&ast);
    issues.extend(lowered.issues);
    let mut ignored = ast.ignored.clone();
    ignored.extend(lowered.ignored);
    ignored.sort_by_key(|i| i.span.start);
    ignored.dedup();
    if opts.strict {
        for i in &ignored {
            issues.push(Issue::error(i.span, format!("{}: outside holdfast's scope (refused in strict mode)", i.what)));
        }
    } else if let Some(first) = ignored.first() {
        let n = ignored.len();
        let lines = if n == 1 { "line" } else { "lines" };
        issues.push(Issue::warning(
            first.span,
            format!("ignored: {n} {lines} for features outside holdfast's scope, first at line {}", first.span.line),
        ));
    }
    issues.sort_by(|a, b| (a.span.start, a.span.line, b.severity).cmp(&(b.span.start, b.span.line, a.severity)));
    issues.dedup();
    let diags: Vec<Diagnostic> = issues.into_iter().map(|i| i.into_diagnostic(file_name, text)).collect();
    let diags = Diagnostics(diags);
    if diags.has_errors() {
        return Err(diags);
    }
    Ok(Loaded { config: lowered.config, warnings: diags })
}

/// The spanned syntax tree and the syntax errors, without lowering or cross-reference checks
/// (for tools such as a shell's completion or a reload diff that need positions).
pub fn parse_ast(file_name: &str, text: &str) -> (ast::Ast, Diagnostics) {
    let (ast, issues) = parser::parse(text);
    let diags = issues.into_iter().map(|i| i.into_diagnostic(file_name, text)).collect();
    (ast, Diagnostics(diags))
}

/// `show running-config`: canonical ASA text, keys masked as `*****`.
pub fn running_config(config: &policy::Config) -> String {
    render::show_running_config(config, &ShowOptions::default())
}

/// Like [`running_config`] but with keys in clear, so the text parses back to `config`.
pub fn running_config_unmasked(config: &policy::Config) -> String {
    render::show_running_config(config, &ShowOptions { unmasked: true, ..Default::default() })
}

/// `show running-config all sysopt`: every sysopt with its value, as the ASA prints it.
pub fn running_config_all_sysopt(config: &policy::Config) -> String {
    render::show_running_config(config, &ShowOptions { all: true, filter: vec!["sysopt".into()], unmasked: false })
}

/// `show running-config [all] [COMMAND...]` with the filters the ASA offers (for the daemon's
/// `show` and the shell).
pub fn show_running_config(config: &policy::Config, opts: &ShowOptions) -> String {
    render::show_running_config(config, opts)
}

fn whole_file_error(file: &str, message: String) -> Diagnostics {
    Diagnostics(vec![Diagnostic {
        severity: Severity::Error,
        file: file.to_string(),
        span: None,
        message,
        source_line: None,
        caret_len: 0,
    }])
}
