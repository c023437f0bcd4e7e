//! Running commands with a time bound, in the current or in a lab namespace, and background
//! processes that are killed by PID when their handle is dropped.

use crate::{io_err, LabError, Result};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Result of a finished (or timed-out) command.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code; `None` when killed by a signal (including our timeout kill).
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0) && !self.timed_out
    }
}

/// `ip netns exec NS argv...` as a `Command`.
pub fn in_ns(ns: &str, argv: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(argv);
    c
}

/// Human-readable form of a command for error messages and `+ ...` trace lines.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion or until `timeout`, then kills it. Never fails because of the
/// command's exit status; see [`run_ok`] for that.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let desc = describe(cmd);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(io_err(format!("spawning `{desc}`")))?;
    // Drain both pipes on threads so a chatty command cannot block on a full pipe.
    let out_t = drain(child.stdout.take());
    let err_t = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait().map_err(io_err(format!("waiting for `{desc}`")))? {
            Some(st) => break st,
            None if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().map_err(io_err(format!("reaping `{desc}`")))?;
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    // A grandchild that inherited the pipes could keep them open; do not wait for it forever.
    let stdout = join_drain(out_t);
    let stderr = join_drain(err_t);
    Ok(Output { status: status.code(), stdout, stderr, timed_out })
}

/// Like [`run`], but a non-zero exit or a timeout is an error carrying the output.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let desc = describe(cmd);
    let out = run(cmd, timeout)?;
    if out.timed_out {
        return Err(LabError::Timeout { what: format!("running `{desc}` (stderr: {})", out.stderr.trim()), after: timeout });
    }
    if out.status != Some(0) {
        return Err(LabError::Command { cmd: desc, status: out.status, stdout: out.stdout, stderr: out.stderr });
    }
    Ok(out)
}

/// Shorthand: run `argv` (in namespace `ns` when given) with a timeout and require success.
pub fn sh(ns: Option<&str>, argv: &[&str], timeout: Duration) -> Result<Output> {
    let mut c = match ns {
        Some(ns) => in_ns(ns, argv),
        None => {
            let mut c = Command::new(argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    run_ok(&mut c, timeout)
}

type Drain = std::sync::mpsc::Receiver<String>;

fn drain<R: Read + Send + 'static>(r: Option<R>) -> Option<Drain> {
    let mut r = r?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    Some(rx)
}

fn join_drain(rx: Option<Drain>) -> String {
    rx.and_then(|rx| rx.recv_timeout(Duration::from_secs(2)).ok()).unwrap_or_default()
}

/// A background process started by the lab. Its stdout and stderr go to `log`. Dropping the
/// handle sends SIGTERM, waits up to `grace`, then SIGKILLs it — always by its own PID.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
    pub grace: Duration,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and output appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let desc = describe(&cmd);
        let f = File::options().create(true).append(true).open(log).map_err(io_err(format!("opening {}", log.display())))?;
        let f2 = f.try_clone().map_err(io_err("duplicating log fd"))?;
        cmd.stdin(Stdio::null()).stdout(f).stderr(f2);
        let child = cmd.spawn().map_err(io_err(format!("spawning `{desc}`")))?;
        eprintln!("lab: started {name} pid {} (`{desc}`), log {}", child.id(), log.display());
        Ok(Proc { name: name.to_string(), log: log.to_path_buf(), child: Some(child), grace: Duration::from_secs(3) })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `Some(exit code or -signal)` once the process has exited.
    pub fn exited(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(st)) => Some(st.code().unwrap_or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                -st.signal().unwrap_or(0)
            })),
            _ => None,
        }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.exited() {
                return Some(c);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `sig` to the process (by PID) if it still runs.
    pub fn signal(&mut self, sig: i32) {
        if self.exited().is_some() {
            return;
        }
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) with the PID of our own still-unreaped child (try_wait above said it
            // has not exited, and it cannot be reaped by anyone else), so the PID is not reused.
            unsafe {
                libc::kill(pid as libc::pid_t, sig);
            }
        }
    }

    /// SIGKILL now and reap (used to simulate a crash).
    pub fn kill_hard(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            eprintln!("lab: SIGKILLed {} pid {}", self.name, c.id());
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status if it exited on its own.
    pub fn stop(&mut self) -> Option<i32> {
        let Some(pid) = self.pid() else { return None };
        self.signal(libc::SIGTERM);
        let code = self.wait_exit(self.grace);
        if code.is_none() {
            eprintln!("lab: {} pid {pid} ignored SIGTERM for {:?}, killing", self.name, self.grace);
            self.kill_hard();
        }
        self.child = None;
        code
    }

    /// Last `n` lines of the log, for failure reports.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Last `n` lines of a text file (empty if unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `f` every `every` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout { what: what.to_string(), after: timeout });
        }
        std::thread::sleep(every);
    }
}
