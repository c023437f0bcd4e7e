//! `holdfast shell`: the ASA's exec mode over the control socket (`show`, `clear`,
//! `vpn-sessiondb`, `reload`, `stop [keep-sessions]`).
//!
//! On a terminal: a `holdfast#` prompt with line editing (rustyline), history kept in
//! `$HOME/.holdfast_history` (mode 0600; `HOLDFAST_HISTORY` names another file), TAB completion
//! of command words, `?` help at any point of the line without pressing Enter, `exit` / `quit` /
//! Ctrl-D to leave. On anything else (a pipe, a file): one command per line, answers on stdout,
//! exit status 1 when any command failed, so the shell can be scripted.
//!
//! A line is checked with the daemon's own parser before it is sent, so a typing mistake is
//! answered at once, with the ASA's caret, even when the daemon is down.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use gateway::control;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Cmd, CompletionType, ConditionalEventHandler, Config, Editor, Event, EventContext, EventHandler, Helper, KeyEvent, RepeatCount};

use crate::commands::{self, WalkError};

pub const PROMPT: &str = "holdfast# ";

/// Runs the shell against the daemon at `control`.
pub fn run(control: &Path) -> ExitCode {
    if std::io::stdin().is_terminal() {
        interactive(control)
    } else {
        scripted(control, std::io::stdin().lock())
    }
}

/// What one line did.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Continue { ok: bool },
    Exit,
}

/// One command per input line; returns failure when any line failed.
fn scripted(control: &Path, input: impl BufRead) -> ExitCode {
    let mut all_ok = true;
    let mut out = std::io::stdout().lock();
    for line in input.lines() {
        let Ok(line) = line else { break };
        match execute(&line, control, None, &mut out) {
            Step::Exit => break,
            Step::Continue { ok } => all_ok &= ok,
        }
        let _ = out.flush();
    }
    if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Handles one line. `prompt_len` is Some on a terminal, where the line is on screen after the
/// prompt and the caret goes under it; in a script the line is repeated above the caret.
fn execute(line: &str, control: &Path, prompt_len: Option<usize>, out: &mut impl Write) -> Step {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('!') {
        // `!` starts a comment, as in ASA configuration scripts.
        return Step::Continue { ok: true };
    }
    if let Some(head) = line.trim_end().strip_suffix('?') {
        let ok = print_help(head, prompt_len, out);
        return Step::Continue { ok };
    }
    let ws = commands::words(trimmed);
    if ws.len() == 1 {
        if let Ok(n) = commands::match_word(commands::tree(), ws[0].text) {
            if commands::LOCAL_WORDS.contains(&n.label()) {
                return Step::Exit;
            }
        }
    }
    let request = match control::parse(line) {
        Ok(r) => r,
        Err(e) => {
            let text = match commands::walk(commands::tree(), &commands::words(line)) {
                Err(WalkError::Ambiguous { .. }) => format!("ERROR: % Ambiguous command:  \"{}\"\n", line.trim()),
                _ => error_text(line, &e, prompt_len),
            };
            let _ = out.write_all(text.as_bytes());
            return Step::Continue { ok: false };
        }
    };
    // After `stop` there is no daemon to talk to: the shell ends with it.
    let stops = matches!(request, control::Request::Stop { .. });
    let line = match request {
        // The daemon resolves a file name in its own working directory; the operator means
        // this shell's (as `holdfast reload --config` does).
        control::Request::Reload { config: Some(p) } if p.is_relative() => match std::path::absolute(&p) {
            Ok(abs) => format!("reload config {}", abs.display()),
            Err(_) => line.to_string(),
        },
        _ => line.to_string(),
    };
    match control::request(control, &line) {
        Ok(answer) => {
            let _ = out.write_all(answer.as_bytes());
            let ok = !control::is_error(&answer);
            if stops && ok {
                return Step::Exit;
            }
            Step::Continue { ok }
        }
        Err(e) => {
            eprintln!("ERROR: cannot reach the daemon at {}: {e}", control.display());
            Step::Continue { ok: false }
        }
    }
}

/// The ASA's refusal: on a terminal a caret under the word as typed after the prompt; in a
/// script the daemon's own form (the line, the caret, the error).
fn error_text(line: &str, e: &control::ParseError, prompt_len: Option<usize>) -> String {
    match (e, prompt_len) {
        (control::ParseError::Invalid { col }, Some(p)) => {
            format!("{}^\n{}\n", " ".repeat(p + col), control::INVALID_INPUT)
        }
        (control::ParseError::FullWordOnly { col, keyword }, Some(p)) => {
            format!("{}^\n{}\n", " ".repeat(p + col), control::full_word_message(keyword))
        }
        _ => control::format_error(line, e),
    }
}

/// `?`: the words that may come next, or where the line went wrong. Returns false on error.
fn print_help(head: &str, prompt_len: Option<usize>, out: &mut impl Write) -> bool {
    let text = match commands::help(head) {
        Ok(entries) => {
            let _ = out.write_all(commands::format_help(&entries).as_bytes());
            return true;
        }
        Err(WalkError::Ambiguous { word, .. }) => format!("ERROR: % Ambiguous command:  \"{word}\"\n"),
        Err(WalkError::Invalid { col }) => error_text(head, &control::ParseError::Invalid { col }, prompt_len),
    };
    let _ = out.write_all(text.as_bytes());
    false
}

/// The history file: `HOLDFAST_HISTORY`, else `$HOME/.holdfast_history`.
pub fn history_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HOLDFAST_HISTORY").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(PathBuf::from(home).join(".holdfast_history"))
}

/// Where `?` left the line, for the prompt loop: the text left and right of the cursor.
type Pending = Arc<Mutex<Option<(String, String)>>>;

fn interactive(control: &Path) -> ExitCode {
    let config = Config::builder()
        .completion_type(CompletionType::List)
        .auto_add_history(false)
        .history_ignore_dups(true)
        .and_then(|b| b.max_history_size(1000))
        .map(|b| b.build());
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("holdfast shell: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut ed: Editor<ShellHelper, DefaultHistory> = match Editor::with_config(config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("holdfast shell: cannot start the line editor: {e}");
            return ExitCode::FAILURE;
        }
    };
    ed.set_helper(Some(ShellHelper));
    let pending: Pending = Arc::new(Mutex::new(None));
    ed.bind_sequence(KeyEvent::from('?'), EventHandler::Conditional(Box::new(HelpKey(pending.clone()))));

    let history = history_path();
    if let Some(h) = &history {
        prepare_history_file(h);
        // A missing file is the first run; anything else is worth a word.
        if let Err(e) = ed.load_history(h) {
            if h.exists() {
                eprintln!("holdfast shell: warning: history {}: {e}", h.display());
            }
        }
    }
    if control::request(control, "show version").is_err() {
        eprintln!("holdfast shell: warning: no daemon answers at {} (help and completion still work)", control.display());
    }

    let mut initial: Option<(String, String)> = None;
    let mut stdout = std::io::stdout();
    loop {
        let read = match initial.take() {
            Some((l, r)) => ed.readline_with_initial(PROMPT, (&l, &r)),
            None => ed.readline(PROMPT),
        };
        match read {
            Ok(line) => {
                let help_at = pending.lock().ok().and_then(|mut p| p.take());
                if let Some((left, right)) = help_at {
                    // The ASA answers `?` under the line and gives the line back for editing.
                    let _ = print_help(&left, Some(PROMPT.len()), &mut stdout);
                    let _ = stdout.flush();
                    initial = Some((left, right));
                    continue;
                }
                if !line.trim().is_empty() {
                    let _ = ed.add_history_entry(line.trim());
                    save_history(&mut ed, history.as_deref());
                }
                let step = execute(&line, control, Some(PROMPT.len()), &mut stdout);
                let _ = stdout.flush();
                if step == Step::Exit {
                    break;
                }
            }
            // Ctrl-C abandons the line, as on the ASA.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("holdfast shell: {e}");
                save_history(&mut ed, history.as_deref());
                return ExitCode::FAILURE;
            }
        }
    }
    save_history(&mut ed, history.as_deref());
    ExitCode::SUCCESS
}

/// Creates the history file readable by its owner only before anything is written to it:
/// command lines can name peers and users.
fn prepare_history_file(path: &Path) {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let _ = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path);
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

fn save_history(ed: &mut Editor<ShellHelper, DefaultHistory>, path: Option<&Path>) {
    if let Some(p) = path {
        if let Err(e) = ed.save_history(p) {
            eprintln!("holdfast shell: warning: cannot save history to {}: {e}", p.display());
        }
        prepare_history_file(p);
    }
}

/// `?` ends the edit at once (no Enter needed); the loop prints the help and puts the line back.
struct HelpKey(Pending);

impl ConditionalEventHandler for HelpKey {
    fn handle(&self, _evt: &Event, _n: RepeatCount, _positive: bool, ctx: &EventContext) -> Option<Cmd> {
        let line = ctx.line();
        let pos = ctx.pos().min(line.len());
        if let Ok(mut p) = self.0.lock() {
            *p = Some((line[..pos].to_string(), line[pos..].to_string()));
        }
        Some(Cmd::AcceptLine)
    }
}

/// TAB completion from the command table.
struct ShellHelper;

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _ctx: &rustyline::Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let (start, words) = commands::complete(line, pos);
        Ok((start, words.into_iter().map(|w| Pair { display: w.trim_end().to_string(), replacement: w }).collect()))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;
}
impl Highlighter for ShellHelper {}
impl Validator for ShellHelper {}
impl Helper for ShellHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_line(line: &str, prompt: Option<usize>) -> (Step, String) {
        let mut out = Vec::new();
        // No daemon behind this path: only lines refused before sending are used here.
        let step = execute(line, Path::new("/nonexistent/holdfast.sock"), prompt, &mut out);
        (step, String::from_utf8(out).unwrap())
    }

    #[test]
    fn refusals_carry_the_asa_caret() {
        let (step, out) = run_line("show crypto foo sa", None);
        assert_eq!(step, Step::Continue { ok: false });
        assert_eq!(out, "show crypto foo sa\n            ^\nERROR: % Invalid input detected at '^' marker.\n");
        // On a terminal the caret sits under the word as typed after the prompt.
        let (_, out) = run_line("show crypto foo sa", Some(PROMPT.len()));
        assert_eq!(out, format!("{}^\nERROR: % Invalid input detected at '^' marker.\n", " ".repeat(PROMPT.len() + 12)));
        let (_, out) = run_line("sh c", None);
        assert_eq!(out, "ERROR: % Ambiguous command:  \"sh c\"\n");
        let (_, out) = run_line("show crypto", None);
        assert_eq!(out, "ERROR: % Incomplete command\n");
    }

    /// `stop` only in full: an abbreviation is refused before anything is sent, naming the
    /// command (review N4); `s` is `show` (this one is sent, and fails only for lack of a
    /// daemon, not as ambiguous).
    #[test]
    fn stop_must_be_typed_in_full() {
        for line in ["st", "sto", "sto keep"] {
            let (step, out) = run_line(line, None);
            assert_eq!(step, Step::Continue { ok: false }, "{line}");
            assert!(out.starts_with(&format!("{line}\n^\nERROR: % ")), "{line}: {out}");
            assert!(out.contains("'stop'") && out.contains("in full"), "{line}: {out}");
            assert!(!out.contains("Ambiguous"), "{out}");
        }
        let (_, out) = run_line("sto", Some(PROMPT.len()));
        assert!(out.starts_with(&format!("{}^\nERROR: % ", " ".repeat(PROMPT.len()))), "{out}");
        let (step, out) = run_line("s ver", None);
        assert_eq!((step, out.as_str()), (Step::Continue { ok: false }, ""), "sent to the (absent) daemon, not refused");
    }

    #[test]
    fn local_words_and_help_lines() {
        assert_eq!(run_line("exit", None).0, Step::Exit);
        assert_eq!(run_line("  QUIT ", None).0, Step::Exit);
        assert_eq!(run_line("ex", None).0, Step::Exit);
        assert_eq!(run_line("", None).0, Step::Continue { ok: true });
        let (step, out) = run_line("show crypto ?", None);
        assert_eq!(step, Step::Continue { ok: true });
        assert_eq!(out, "  ikev2  Show IKEv2 information\n  ipsec  Show IPsec information\n");
        let (step, out) = run_line("show cypto ?", None);
        assert_eq!(step, Step::Continue { ok: false });
        assert_eq!(out, "show cypto\n     ^\nERROR: % Invalid input detected at '^' marker.\n");
    }
}
