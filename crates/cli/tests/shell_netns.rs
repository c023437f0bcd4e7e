//! `holdfast shell` against a real daemon in a network namespace (root): commands piped in
//! (scripted use) give the same answers as `holdfast show`, with the ASA's refusals, `?` help,
//! abbreviations and `exit`; and on a terminal (a pty from util-linux `script`): `?` answered
//! without Enter with the line given back, TAB completion, history saved mode 0600.

mod common;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{cli, examples, skip_without_root, Netns, BIN};

/// One namespace with gw-a's interfaces and a daemon on examples/gw-a.cfg; dropping it stops
/// the daemon (by PID) and deletes the namespace and the run directory.
struct Gateway {
    sock: PathBuf,
    net: Netns,
}

impl Gateway {
    fn start(tag: &str) -> Gateway {
        let mut net = Netns::new(format!("shtest-{}-{tag}", std::process::id()));
        net.term_grace = Duration::from_secs(5);
        let ns = net.gateway_alone("a");
        let sock = net.dir.join("holdfast.sock");
        net.start_daemon(&ns, &examples().join("gw-a.cfg"), &sock);
        Gateway { sock, net }
    }
}

/// `holdfast show|clear ...` (the one-shot client) for comparison.
fn show(sock: &Path, line: &str) -> (bool, String) {
    cli(sock, line)
}

/// Pipes `input` into `holdfast shell`; returns (exit code, stdout, stderr).
fn shell_piped(sock: &Path, input: &str) -> (Option<i32>, String, String) {
    let mut c = Command::new(BIN)
        .args(["shell", "--control"])
        .arg(sock)
        .env("HOLDFAST_HISTORY", "/nonexistent/never-written")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    (o.status.code(), String::from_utf8(o.stdout).unwrap(), String::from_utf8(o.stderr).unwrap())
}

#[test]
fn piped_commands_against_a_running_daemon() {
    if skip_without_root() {
        return;
    }
    let g = Gateway::start("pipe");

    // Valid commands only: the answers are exactly those of the one-shot client, in order,
    // abbreviations included; exit status 0.
    let script = "show version\nsh cry ipsec sa\nsh conn\nshow running-config crypto map\nsh run all sysopt\nshow crypto ikev2 sa\n";
    let (code, out, err) = shell_piped(&g.sock, script);
    assert_eq!(code, Some(0), "{err}");
    let mut want = String::new();
    for l in ["show version", "show crypto ipsec sa", "show conn", "show running-config crypto map", "show running-config all sysopt", "show crypto ikev2 sa"] {
        let (ok, text) = show(&g.sock, l);
        assert!(ok, "{l}");
        want.push_str(&text);
    }
    // `show version` carries an uptime that may tick between the two runs: compare the rest.
    let strip = |s: &str| s.lines().filter(|l| !l.contains("up ")).collect::<Vec<_>>().join("\n");
    assert_eq!(strip(&out), strip(&want));
    assert!(out.contains("There are no ipsec sas"), "{out}");
    assert!(out.contains("crypto map MAP 10 set peer 192.0.2.2"), "{out}");

    // A mistake, `?` help, a clear, `exit` (what follows it is not run); exit status 1.
    let script = "show crypto bogus sa\nsh c\nshow crypto ?\nclear crypto ikev2 sa\nshow crypto\nexit\nshow version\n";
    let (code, out, err) = shell_piped(&g.sock, script);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        out,
        "show crypto bogus sa\n            ^\nERROR: % Invalid input detected at '^' marker.\n\
         ERROR: % Ambiguous command:  \"sh c\"\n\
         \x20 ikev2  Show IKEv2 information\n  ipsec  Show IPsec information\n\
         ERROR: % Incomplete command\n"
    );
    // The daemon saw the clear (it logs nothing for an empty clear, but it answered): nothing
    // after `exit` ran, so the log is unchanged by a second `show version`.
    assert_eq!(err, "");

    // The daemon going away: a clear error naming the socket, exit status 1.
    let (code, _, err) = shell_piped(&g.net.dir.join("absent.sock"), "show version\n");
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot reach the daemon at") && err.contains("absent.sock"), "{err}");
}

#[test]
fn terminal_help_without_enter_completion_and_history() {
    if skip_without_root() {
        return;
    }
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: util-linux `script` (to give the shell a terminal) is not installed");
        return;
    }
    let g = Gateway::start("tty");
    let home = g.net.dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let cmd = format!("{BIN} shell --control {}", g.sock.display());
    let mut c = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        .env("HOME", &home)
        .env_remove("HOLDFAST_HISTORY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = c.id();
    let mut stdin = c.stdin.take().unwrap();
    let screen = Arc::new(Mutex::new(String::new()));
    let mut stdout = c.stdout.take().unwrap();
    let sink = screen.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    // Types like a person: each step waits for the screen to show what it expects, so keys
    // reach the line editor (raw mode) rather than the terminal's line discipline.
    let mut seen = 0usize;
    let mut expect = |what: &str| {
        // Up to 10 s (counted in sleeps: the clock is the daemon's alone, DESIGN.md).
        let mut waited = 0;
        loop {
            let plain = strip_ansi(&screen.lock().unwrap());
            if let Some(i) = plain[seen.min(plain.len())..].find(what) {
                seen += i + what.len();
                break;
            }
            waited += 1;
            if waited > 500 {
                let _ = Command::new("kill").arg(pid.to_string()).status();
                panic!("the shell never showed {what:?}; screen:\n{plain}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let mut typ = |keys: &str| {
        stdin.write_all(keys.as_bytes()).unwrap();
        stdin.flush().unwrap();
    };
    let (_, ike) = show(&g.sock, "show crypto ikev2 sa");
    let (_, ver) = show(&g.sock, "show version");
    let ike_first = ike.lines().next().unwrap_or("?").to_string();
    let ver_first = ver.lines().next().unwrap_or("?").to_string();

    expect("holdfast# ");
    // `?` right after a partial word, no Enter: what the word can become, then the line is
    // given back for editing and finished.
    typ("show cry?");
    expect("crypto  Show crypto information");
    // The prompt is drawn once the editor is back in raw mode: keys typed before it would go
    // through the terminal's line discipline instead.
    expect("holdfast# ");
    typ("pto ikev2 sa\r");
    expect(&ike_first);
    expect("holdfast# ");
    // TAB completes `sh` and `ver`.
    typ("sh\t");
    expect("show ");
    typ("ver\t");
    expect("version ");
    typ("\r");
    expect(&ver_first);
    expect("holdfast# ");
    // `?` after a space lists the next words.
    typ("sh cry ipsec ?");
    expect("stats  Show global IPsec statistics");
    expect("holdfast# ");
    // Ctrl-U empties the line, Ctrl-D on an empty line leaves (the piped test covers `exit`).
    typ("\x15\x04");
    let status = {
        let mut waited = 0;
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                break st;
            }
            waited += 1;
            if waited > 200 {
                let _ = c.kill();
                panic!("the shell did not exit: {}", strip_ansi(&screen.lock().unwrap()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let _ = reader.join();
    let plain = strip_ansi(&screen.lock().unwrap());
    assert!(status.success(), "{plain}");

    let hist = home.join(".holdfast_history");
    let meta = std::fs::metadata(&hist).unwrap_or_else(|e| panic!("{}: {e}\n{plain}", hist.display()));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&hist).unwrap();
    assert!(text.contains("show crypto ikev2 sa"), "{text}");
    assert!(text.contains("show version"), "{text}");
    // Help requests are not history.
    assert!(!text.contains('?'), "{text}");
}

/// Drops terminal escape sequences (cursor moves, colours) and carriage returns.
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                while let Some(&n) = chars.peek() {
                    chars.next();
                    if n.is_ascii_alphabetic() || n == '~' {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}
