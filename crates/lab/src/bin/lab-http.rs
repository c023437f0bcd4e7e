#![allow(clippy::disallowed_methods)] // wall-clock timestamps are the point of this tool
//! The seed scenario's HTTP download and syslog receiver (issue 3), as small processes that the
//! lab starts inside the host namespaces.
//!
//! ```text
//! lab-http serve  --listen ADDR:PORT --file PATH [--rate-mbit R] [--no-catchup]
//! lab-http get    --url http://IP:PORT/NAME --progress PATH [--idle-timeout SECS]
//! lab-http syslog --listen ADDR:PORT --out PATH
//! ```
//!
//! `serve` answers `GET /<file name>` with the whole file (HTTP/1.1, `Content-Length`,
//! `Connection: close`), paced to an average rate so that a transfer spans a planned break. After
//! a stall it catches up at full speed unless `--no-catchup` is given (then the pace restarts
//! from the moment data flows again). Every request is logged on stdout as
//! `request n=N peer=IP:PORT method=.. path=.. range=yes|no`, every finished response as
//! `done peer=IP:PORT bytes=N` or `error peer=IP:PORT sent=N: ...`, so a test can prove that a
//! download was one request on one TCP connection.
//!
//! `get` makes exactly one request on one connection and never retries (a restart would hide a
//! broken connection). It writes `local IP:PORT` to the progress file as soon as it is
//! connected, then progress samples `T BYTES` (Unix time in seconds with microseconds, body
//! bytes so far) at most every 10 ms and always after a pause, and finally
//! `done bytes=N sha256=HEX` or `error bytes=N: ...`. The body is hashed, not stored.
//!
//! `syslog` appends every UDP datagram it receives to `--out`, one line each
//! (`UNIXTIME SENDER:PORT MESSAGE`), flushed at once.

use ring::digest::{Context, SHA256};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CHUNK: usize = 64 * 1024;
/// Minimum spacing of progress samples (a read after a longer pause is always sampled).
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("get") => get(&args[1..]),
        Some("syslog") => syslog(&args[1..]),
        _ => Err("usage: lab-http serve --listen ADDR:PORT --file PATH [--rate-mbit R] [--no-catchup] | \
                  get --url http://IP:PORT/NAME --progress PATH [--idle-timeout SECS] | \
                  syslog --listen ADDR:PORT --out PATH"
            .into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab-http: {e}");
            ExitCode::FAILURE
        }
    }
}

fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn parse<T: std::str::FromStr>(args: &[String], name: &str) -> Result<Option<T>, String> {
    opt(args, name).map(|v| v.parse::<T>().map_err(|_| format!("bad value for {name}: {v}"))).transpose()
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn say(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

// --- serve ---------------------------------------------------------------------------------

struct ServeOpts {
    file: PathBuf,
    name: String,
    rate_mbit: Option<f64>,
    catchup: bool,
}

fn serve(args: &[String]) -> Result<(), String> {
    let listen: SocketAddr = parse(args, "--listen")?.ok_or("--listen is required")?;
    let file: PathBuf = parse(args, "--file")?.ok_or("--file is required")?;
    let name = file.file_name().and_then(|n| n.to_str()).ok_or("--file needs a file name")?.to_string();
    let opts = Arc::new(ServeOpts { file, name, rate_mbit: parse(args, "--rate-mbit")?, catchup: !args.iter().any(|a| a == "--no-catchup") });
    let l = TcpListener::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    say(&format!("listening {listen}"));
    let requests = Arc::new(AtomicU64::new(0));
    loop {
        let (s, peer) = match l.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("accept: {e}")),
        };
        let opts = opts.clone();
        let requests = requests.clone();
        std::thread::spawn(move || {
            if let Err((sent, e)) = respond(s, peer, &opts, &requests) {
                say(&format!("error peer={peer} sent={sent}: {e}"));
            }
        });
    }
}

fn respond(s: TcpStream, peer: SocketAddr, o: &ServeOpts, requests: &AtomicU64) -> Result<(), (u64, String)> {
    let e0 = |e: std::io::Error| (0u64, e.to_string());
    s.set_read_timeout(Some(Duration::from_secs(30))).map_err(e0)?;
    let mut r = BufReader::new(s.try_clone().map_err(e0)?);
    let mut line = String::new();
    r.read_line(&mut line).map_err(e0)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut range = false;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).map_err(e0)? == 0 || h.trim().is_empty() {
            break;
        }
        if h.to_ascii_lowercase().starts_with("range:") {
            range = true;
        }
    }
    let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
    say(&format!("request n={n} peer={peer} method={method} path={path} range={}", if range { "yes" } else { "no" }));
    let mut w = s;
    if method != "GET" || path.trim_start_matches('/') != o.name {
        let _ = w.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return Err((0, format!("no such resource {method} {path}")));
    }
    // Ranges are never honoured: the lab must see a broken download fail, not resume.
    let mut f = File::open(&o.file).map_err(e0)?;
    let len = f.metadata().map_err(e0)?.len();
    let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
    w.write_all(head.as_bytes()).map_err(e0)?;
    let mut buf = vec![0u8; CHUNK];
    let mut sent: u64 = 0;
    // Pacing: the schedule says `sent` bytes are due at `epoch + sent*8/rate`. Without catch-up
    // the schedule is moved forward whenever it lags the clock by more than a second.
    let mut epoch = Instant::now();
    while sent < len {
        let n = f.read(&mut buf).map_err(|e| (sent, e.to_string()))?;
        if n == 0 {
            return Err((sent, "file shrank while serving".into()));
        }
        w.write_all(&buf[..n]).map_err(|e| (sent, format!("write: {e}")))?;
        sent += n as u64;
        if let Some(rate) = o.rate_mbit {
            let due = Duration::from_secs_f64(sent as f64 * 8.0 / (rate * 1e6));
            let elapsed = epoch.elapsed();
            if let Some(ahead) = due.checked_sub(elapsed) {
                std::thread::sleep(ahead);
            } else if !o.catchup && elapsed - due > Duration::from_secs(1) {
                epoch += elapsed - due;
            }
        }
    }
    w.shutdown(Shutdown::Write).map_err(|e| (sent, e.to_string()))?;
    say(&format!("done peer={peer} bytes={sent}"));
    // Drain until the client closes, so the last bytes are not reset away by an early close.
    let mut sink = [0u8; 256];
    let _ = w.set_read_timeout(Some(Duration::from_secs(30)));
    while matches!(w.read(&mut sink), Ok(n) if n > 0) {}
    Ok(())
}

// --- get -----------------------------------------------------------------------------------

fn get(args: &[String]) -> Result<(), String> {
    let url: String = parse(args, "--url")?.ok_or("--url is required")?;
    let progress: PathBuf = parse(args, "--progress")?.ok_or("--progress is required")?;
    let idle = Duration::from_secs(parse(args, "--idle-timeout")?.unwrap_or(600));
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (hostport, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let to: SocketAddr = hostport.parse().map_err(|_| format!("URL host must be IP:PORT, got {hostport}"))?;
    let mut p = File::create(&progress).map_err(|e| format!("create {}: {e}", progress.display()))?;
    let mut total: u64 = 0;
    let r = download(to, hostport, &path, idle, &mut p, &mut total);
    let line = match &r {
        Ok(sha) => format!("done bytes={total} sha256={sha}"),
        Err(e) => format!("error bytes={total}: {e}"),
    };
    let _ = writeln!(p, "{line}");
    let _ = p.flush();
    say(&line);
    r.map(|_| ())
}

fn download(to: SocketAddr, host: &str, path: &str, idle: Duration, p: &mut File, total: &mut u64) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10)).map_err(|e| format!("connect {to}: {e}"))?;
    let local = s.local_addr().map_err(|e| e.to_string())?;
    writeln!(p, "local {local}").and_then(|_| p.flush()).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(idle)).map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lab-http\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| format!("sending request: {e}"))?;
    // Response head, byte by byte into a buffer until the blank line (the body may follow in
    // the same segment, so keep what comes after it).
    let mut buf = vec![0u8; CHUNK];
    let mut head = Vec::new();
    let body_start = loop {
        let n = read_some(&mut s, &mut buf)?;
        if n == 0 {
            return Err("connection closed before the response head".into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > 16 * 1024 {
            return Err("response head too long".into());
        }
    };
    let text = String::from_utf8_lossy(&head[..body_start]).into_owned();
    let status = text.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
        return Err(format!("status line `{status}`"));
    }
    let len: u64 = text
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")).map(|(_, v)| v.trim().to_string()))
        .and_then(|v| v.parse().ok())
        .ok_or("no Content-Length")?;
    let mut ctx = Context::new(&SHA256);
    let mut last_sample = Instant::now();
    let mut last_read = Instant::now();
    let mut record = |p: &mut File, n: usize, total: &mut u64, data: &[u8], ctx: &mut Context| -> Result<(), String> {
        ctx.update(data);
        *total += n as u64;
        let now = Instant::now();
        if now - last_sample >= SAMPLE_EVERY || now - last_read >= SAMPLE_EVERY || *total == len {
            writeln!(p, "{:.6} {}", unix_now(), *total).map_err(|e| e.to_string())?;
            last_sample = now;
        }
        last_read = now;
        Ok(())
    };
    let first = head[body_start..].to_vec();
    if !first.is_empty() {
        record(p, first.len(), total, &first, &mut ctx)?;
    }
    while *total < len {
        let want = ((len - *total) as usize).min(CHUNK);
        let n = read_some(&mut s, &mut buf[..want]).map_err(|e| format!("after {} of {len} body bytes: {e}", *total))?;
        if n == 0 {
            return Err(format!("connection closed after {} of {len} body bytes", *total));
        }
        record(p, n, total, &buf[..n], &mut ctx)?;
    }
    p.flush().map_err(|e| e.to_string())?;
    Ok(ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

fn read_some(s: &mut TcpStream, buf: &mut [u8]) -> Result<usize, String> {
    loop {
        match s.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err("no data for the whole idle timeout".into())
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

// --- syslog --------------------------------------------------------------------------------

fn syslog(args: &[String]) -> Result<(), String> {
    let listen: SocketAddr = parse(args, "--listen")?.ok_or("--listen is required")?;
    let out: PathBuf = parse(args, "--out")?.ok_or("--out is required")?;
    let sock = UdpSocket::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    let mut f = File::options().create(true).append(true).open(&out).map_err(|e| format!("open {}: {e}", out.display()))?;
    say(&format!("listening {listen}"));
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = sock.recv_from(&mut buf).map_err(|e| format!("recv: {e}"))?;
        let text = String::from_utf8_lossy(&buf[..n]);
        writeln!(f, "{:.6} {from} {}", unix_now(), text.trim_end()).and_then(|_| f.flush()).map_err(|e| e.to_string())?;
    }
}
