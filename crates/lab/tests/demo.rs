//! `holdfast demo` (issue 4) as the user runs it: the real binary, as root, in its own process.
//!
//! - `demo_quick_tells_the_story`: `holdfast demo --quick --chart FILE` exits 0 within a minute and
//!   its narration shows the tunnel up with SPIs, the flow, the flag-V line, the resumption in
//!   a few ms with the same SHA-256 on both hosts, then the ASA default: a `302014 ... Tunnel
//!   has been torn down` line and a failed download; the chart is well-formed SVG with both
//!   runs, the outage and the axes; nothing of the lab is left (namespaces, processes, dirs).
//! - `demo_sigint_cleans_up`: SIGINT while the tunnel is down in the middle of the first run
//!   (gateways, download threads and namespaces all live): the demo exits 130 within seconds
//!   and leaves nothing behind.
#![allow(clippy::disallowed_methods)] // the lab measures wall-clock time

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

mod common;

/// A started `holdfast demo` whose stdout lines arrive on a channel (stderr collected too).
struct DemoProc {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    err: std::thread::JoinHandle<String>,
}

impl DemoProc {
    fn start(args: &[&str]) -> DemoProc {
        let bin = lab::holdfast_bin();
        assert!(bin.exists(), "{} does not exist (cargo build --release -p holdfast)", bin.display());
        let mut child = Command::new(&bin)
            .arg("demo")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("holdfast demo starts");
        let out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut s);
            s
        });
        DemoProc { child, lines, seen: Vec::new(), err }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads stdout until a line contains `needle`; panics after `timeout`.
    fn wait_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("no line with {needle:?} within {timeout:?}; stdout so far:\n{}", self.seen.join("\n"));
                }
            }
        }
    }

    /// Waits for the exit (killing the demo after `timeout`); returns (code, stdout, stderr).
    fn finish(mut self, timeout: Duration) -> (Option<i32>, String, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                break Some(st);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(500)) {
            self.seen.push(l);
        }
        let err = self.err.join().unwrap_or_default();
        let out = self.seen.join("\n");
        assert!(status.is_some(), "holdfast demo did not exit within {timeout:?}\nstdout:\n{out}\nstderr:\n{err}");
        (status.and_then(|s| s.code()), out, err)
    }
}

/// Namespaces, processes and directories of the demo with PID `pid` still present.
fn leftovers(pid: u32) -> Vec<String> {
    let prefix = format!("{}{pid}n", lab::topo::PREFIX);
    let mut found = Vec::new();
    for e in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) {
            found.push(format!("namespace {n}"));
        }
    }
    let tmp = std::env::temp_dir();
    for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) || n == format!("holdfast-demo-{pid}") {
            found.push(format!("directory {}", e.path().display()));
        }
    }
    // Every gateway the demo starts has its configuration in the lab's run directory.
    let marker = format!("{}/{prefix}", tmp.display());
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&marker) {
            found.push(format!("process {p}: {cmd}"));
        }
    }
    found
}

fn namespaces_of(pid: u32) -> usize {
    let prefix = format!("{}{pid}n", lab::topo::PREFIX);
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .count()
}

#[test]
fn demo_quick_tells_the_story() {
    common::require_root();
    let chart = std::env::temp_dir().join(format!("holdfast-demo-test-{}.svg", std::process::id()));
    let _ = std::fs::remove_file(&chart);
    let t0 = Instant::now();
    let d = DemoProc::start(&["--quick", "--chart", &chart.to_string_lossy()]);
    let pid = d.pid();
    let (code, out, err) = d.finish(Duration::from_secs(80));
    let took = t0.elapsed();
    eprintln!("----- holdfast demo --quick ({:.1} s) -----\n{out}\n----- stderr -----\n{err}", took.as_secs_f64());
    assert_eq!(code, Some(0), "holdfast demo --quick failed");

    // Run 1, preservation on.
    let up = line(&out, "tunnel up:");
    assert!(up.contains("peer 192.0.2.2") && up.contains("SPIs in 0x"), "{up}");
    let flow = line(&out, "flow on gw-a (show conn): TCP ");
    assert!(flow.contains(":8080"), "{flow}");
    let v = line(&out, "preserved flow waiting (flag V): TCP ");
    let flags = v.rsplit_once("flags ").map(|x| x.1).unwrap_or("");
    assert!(flags.contains('V'), "the preserved flow's show conn line lacks flag V: {v}");
    let resumed = line(&out, "resumed in ");
    let ms: f64 = resumed
        .split("resumed in ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in {resumed}"));
    // The gateway replays the held segment as the tunnel returns: about one round trip, which
    // is sub-millisecond here. 500 ms leaves room for a loaded CI machine, and is still far below
    // the seconds a TCP retransmission timer would take.
    assert!(ms <= 500.0, "resumed in {ms} ms after the tunnel was back (bound 500 ms)");
    let done = line(&out, "download complete:");
    let hashes: Vec<&str> = done.split("SHA-256 ").nth(1).unwrap_or("").split(|c: char| !c.is_ascii_hexdigit()).filter(|w| w.len() >= 16).collect();
    assert_eq!(hashes.len(), 2, "two SHA-256 prefixes in {done}");
    assert_eq!(hashes[0], hashes[1], "sent and received SHA-256 differ: {done}");

    // Run 2, the ASA default.
    let torn = line(&out, "302014");
    assert!(torn.contains("%ASA-6-302014") && torn.contains("Tunnel has been torn down") && torn.contains("/8080"), "{torn}");
    let failed = line(&out, "download failed:");
    assert!(failed.contains("no byte for"), "{failed}");
    assert!(!out.contains("unexpected"), "the ASA-default run did something unexpected:\n{out}");
    let wall = line(&out, "total wall time");
    let secs: f64 = wall.split_whitespace().nth(3).and_then(|n| n.parse().ok()).unwrap_or(f64::MAX);
    assert!(secs <= 60.0, "--quick took {secs} s (budget 60 s)");

    // The chart.
    let svg = std::fs::read_to_string(&chart).expect("the chart was written");
    let _ = std::fs::remove_file(&chart);
    check_well_formed(&svg).unwrap_or_else(|e| panic!("chart is not well-formed XML: {e}\n{svg}"));
    assert!(svg.contains("<svg") && svg.contains("xmlns=\"http://www.w3.org/2000/svg\""));
    for want in ["preserve-vpn-flows: the download resumes", "ASA default", "outage (", "Mbit/s", "seconds since the download started"] {
        assert!(svg.contains(want), "chart lacks {want:?}");
    }
    assert_eq!(svg.matches("<path ").count(), 2, "one line per run");

    let left = leftovers(pid);
    assert!(left.is_empty(), "holdfast demo left things behind: {left:#?}");
}

#[test]
fn demo_sigint_cleans_up() {
    common::require_root();
    let mut d = DemoProc::start(&["--quick"]);
    let pid = d.pid();
    // The tunnel is down, the flow preserved, both gateways and the download threads running.
    d.wait_line("preserved flow waiting", Duration::from_secs(40));
    let live = namespaces_of(pid);
    assert_eq!(live, 5, "the demo's five namespaces exist before the signal");
    let gateways = leftovers(pid).iter().filter(|l| l.starts_with("process")).count();
    assert_eq!(gateways, 2, "both gateways run before the signal: {:#?}", leftovers(pid));
    let t = Instant::now();
    // SAFETY: kill(2) of our own child, which has not been reaped (finish() reaps it below).
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGINT);
    }
    let (code, out, err) = d.finish(Duration::from_secs(30));
    eprintln!("----- holdfast demo, SIGINT after {:.1} s -----\n{out}\n----- stderr -----\n{err}", t.elapsed().as_secs_f64());
    assert_eq!(code, Some(130), "exit status after SIGINT");
    assert!(err.contains("interrupted"), "stderr says it was interrupted: {err}");
    assert!(t.elapsed() < Duration::from_secs(15), "cleanup took {:?}", t.elapsed());
    let left = leftovers(pid);
    assert!(left.is_empty(), "holdfast demo left things behind after SIGINT: {left:#?}");
}

fn line<'a>(out: &'a str, needle: &str) -> &'a str {
    out.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle:?} in:\n{out}"))
}

/// A small XML well-formedness check: one root element, every start tag closed in order,
/// quoted attributes, only the five predefined entities or character references.
fn check_well_formed(xml: &str) -> Result<(), String> {
    let mut stack: Vec<String> = Vec::new();
    let mut roots = 0;
    let mut rest = xml;
    while let Some(i) = rest.find(['<', '&']) {
        let text = &rest[..i];
        if stack.is_empty() && !text.trim().is_empty() {
            return Err(format!("text outside the root: {text:?}"));
        }
        rest = &rest[i..];
        if rest.starts_with('&') {
            let end = rest.find(';').ok_or("unterminated entity")?;
            let ent = &rest[1..end];
            if !(["amp", "lt", "gt", "quot", "apos"].contains(&ent) || ent.starts_with('#')) {
                return Err(format!("unknown entity &{ent};"));
            }
            rest = &rest[end + 1..];
            continue;
        }
        if let Some(r) = rest.strip_prefix("<?") {
            let end = r.find("?>").ok_or("unterminated <?")?;
            rest = &r[end + 2..];
            continue;
        }
        if let Some(r) = rest.strip_prefix("<!--") {
            let end = r.find("-->").ok_or("unterminated comment")?;
            rest = &r[end + 3..];
            continue;
        }
        // A tag: find its end outside quoted attribute values.
        let mut quote = None;
        let mut end = None;
        for (k, c) in rest.char_indices().skip(1) {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, '<') => return Err("'<' inside a tag".into()),
                (None, '>') => {
                    end = Some(k);
                    break;
                }
                _ => {}
            }
        }
        let end = end.ok_or("unterminated tag")?;
        let tag = &rest[1..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack.pop().ok_or_else(|| format!("</{name}> without a start tag"))?;
            if open != name.trim() {
                return Err(format!("<{open}> closed by </{name}>"));
            }
            continue;
        }
        let name: String = tag.chars().take_while(|c| !c.is_whitespace() && *c != '/').collect();
        if name.is_empty() {
            return Err(format!("tag without a name: <{tag}>"));
        }
        check_attributes(tag[name.len()..].trim_end_matches('/'))?;
        if stack.is_empty() {
            roots += 1;
        }
        if !tag.ends_with('/') {
            stack.push(name);
        }
    }
    if !rest.trim().is_empty() {
        return Err(format!("trailing text {rest:?}"));
    }
    if let Some(open) = stack.pop() {
        return Err(format!("<{open}> never closed"));
    }
    if roots != 1 {
        return Err(format!("{roots} root elements"));
    }
    Ok(())
}

fn check_attributes(mut a: &str) -> Result<(), String> {
    loop {
        a = a.trim_start();
        if a.is_empty() {
            return Ok(());
        }
        let eq = a.find('=').ok_or_else(|| format!("attribute without a value: {a:?}"))?;
        let name = a[..eq].trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(format!("bad attribute name {name:?}"));
        }
        let v = a[eq + 1..].trim_start();
        let q = v.chars().next().filter(|c| *c == '"' || *c == '\'').ok_or_else(|| format!("unquoted value of {name}"))?;
        let close = v[1..].find(q).ok_or_else(|| format!("unterminated value of {name}"))?;
        if v[1..1 + close].contains('<') {
            return Err(format!("'<' in the value of {name}"));
        }
        a = &v[close + 2..];
    }
}

#[test]
fn the_well_formedness_check_rejects_broken_xml() {
    assert!(check_well_formed("<?xml version=\"1.0\"?>\n<svg a=\"1\"><g><text>x &amp; y</text></g><line/></svg>\n").is_ok());
    for bad in ["<svg><g></svg>", "<svg></svg><svg></svg>", "<svg a=1></svg>", "<svg>&nbsp;</svg>", "<svg><text>a</svg>", "<svg>", "x<svg/>"] {
        assert!(check_well_formed(bad).is_err(), "accepted {bad:?}");
    }
}
