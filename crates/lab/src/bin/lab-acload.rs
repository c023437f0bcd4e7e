#![allow(clippy::disallowed_methods)] // a load generator measures wall-clock times
//! AnyConnect load generator (issue 5; root not needed, run it in a lab namespace): logs N
//! sessions in to a real holdfast daemon the way openconnect does — aggregate-auth XML over
//! TLS (certificate group: `init` answered with `complete`; password group: `init`, form,
//! `auth-reply`), the `webvpn` cookie, `CONNECT /CSCOSSLC/tunnel` — then keeps every session
//! alive over CSTP (answers the gateway's DPD requests, sends keepalives) and sends one ICMP
//! echo request per session and interval to an inside host; each reply must come back through
//! the same session. DTLS is not used (every session's data rides CSTP/TLS).
//!
//! ```text
//! lab-acload --server IP:PORT --sessions N [--cert-group CERT --client-cert PEM --client-key PEM]
//!            [--password-sessions M --group RA --user vpn --password PW]
//!            [--target 10.1.0.10] [--hold SECS] [--interval-ms MS] [--concurrency C]
//!            [--daemon-pid PID] [--flood N] [--ready-file FILE]
//! ```
//! Progress lines go to stderr; `established N ...` once every session is up (and the file
//! `--ready-file` is written then, so a test can look at the daemon); a final `report {json}`
//! line on stdout. Exit status 0 only if every session came up, no session was dropped and
//! every probe was answered.
//!
//! `--flood N` opens N TCP connections to the server after setup and never sends a byte on
//! them (stalled TLS handshakes; reopened when the server closes them) for the whole hold
//! time, and times one extra login in the middle of it: established sessions must not notice.

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_openssl::SslStream;

#[derive(Debug, Clone)]
struct Opts {
    server: SocketAddr,
    sessions: usize,
    cert_group: String,
    client_cert: Option<String>,
    client_key: Option<String>,
    password_sessions: usize,
    group: String,
    user: String,
    password: String,
    target: Ipv4Addr,
    hold: Duration,
    interval: Duration,
    concurrency: usize,
    daemon_pid: Option<u32>,
    flood: usize,
    ready_file: Option<String>,
}

fn opt(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn parse_opts() -> Result<Opts, String> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let num = |n: &str, d: u64| -> Result<u64, String> { opt(&a, n).map_or(Ok(d), |v| v.parse().map_err(|e| format!("{n}: {e}"))) };
    Ok(Opts {
        server: opt(&a, "--server").ok_or("--server is required")?.parse().map_err(|e| format!("--server: {e}"))?,
        sessions: num("--sessions", 10)? as usize,
        cert_group: opt(&a, "--cert-group").unwrap_or_else(|| "CERT".into()),
        client_cert: opt(&a, "--client-cert"),
        client_key: opt(&a, "--client-key"),
        password_sessions: num("--password-sessions", 0)? as usize,
        group: opt(&a, "--group").unwrap_or_else(|| "RA".into()),
        user: opt(&a, "--user").unwrap_or_else(|| "vpn".into()),
        password: opt(&a, "--password").unwrap_or_default(),
        target: opt(&a, "--target").unwrap_or_else(|| "10.1.0.10".into()).parse().map_err(|e| format!("--target: {e}"))?,
        hold: Duration::from_secs(num("--hold", 20)?),
        interval: Duration::from_millis(num("--interval-ms", 1000)?),
        concurrency: num("--concurrency", 16)?.max(1) as usize,
        daemon_pid: opt(&a, "--daemon-pid").and_then(|p| p.parse().ok()),
        flood: num("--flood", 0)? as usize,
        ready_file: opt(&a, "--ready-file"),
    })
}

fn main() -> std::process::ExitCode {
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("lab-acload: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    raise_nofile();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lab-acload: runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(run(o)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("lab-acload: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn raise_nofile() {
    let lim = libc::rlimit { rlim_cur: 65536, rlim_max: 65536 };
    // SAFETY: setrlimit with a valid, initialised struct; failure only leaves the old limit.
    unsafe {
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

/// What one session saw.
#[derive(Debug, Default, Clone)]
struct SessionReport {
    index: usize,
    password: bool,
    address: Option<Ipv4Addr>,
    setup: Option<Duration>,
    error: Option<String>,
    sent: u64,
    answered: u64,
    dpd_answered: u64,
    dropped: Option<String>,
}

type Tls = SslStream<TcpStream>;

fn connector(o: &Opts, with_cert: bool) -> Result<SslConnector, String> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    // A load generator: the server is the lab's own, pinned nowhere else; the tunnel checks
    // (probes answered through each session) are what matters here.
    b.set_verify(SslVerifyMode::NONE);
    if with_cert {
        if let (Some(c), Some(k)) = (&o.client_cert, &o.client_key) {
            b.set_certificate_chain_file(c).map_err(|e| format!("{c}: {e}"))?;
            b.set_private_key_file(k, SslFiletype::PEM).map_err(|e| format!("{k}: {e}"))?;
        }
    }
    Ok(b.build())
}

async fn tls_connect(server: SocketAddr, conn: &SslConnector) -> Result<Tls, String> {
    let tcp = TcpStream::connect(server).await.map_err(|e| format!("tcp connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let ssl = conn.configure().map_err(|e| e.to_string())?.verify_hostname(false).into_ssl("vpn.example").map_err(|e| e.to_string())?;
    let mut s = SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
    Pin::new(&mut s).connect().await.map_err(|e| format!("tls handshake: {e}"))?;
    Ok(s)
}

async fn run(o: Opts) -> Result<bool, String> {
    let o = Arc::new(o);
    let cert_conn = Arc::new(connector(&o, true)?);
    let plain_conn = Arc::new(connector(&o, false)?);
    let rss_before = o.daemon_pid.map(rss_kib);
    let total = o.sessions;
    let gate = Arc::new(Semaphore::new(o.concurrency));
    let up = Arc::new(AtomicUsize::new(0));
    let all_up = Arc::new(tokio::sync::Notify::new());
    let failed = Arc::new(AtomicUsize::new(0));
    // The hold phase starts for every session at once, when the last one is up (or failed).
    let (start_tx, start_rx) = tokio::sync::watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        let password = i < o.password_sessions;
        let conn = if password { plain_conn.clone() } else { cert_conn.clone() };
        let (o, gate, up, all_up, failed) = (o.clone(), gate.clone(), up.clone(), all_up.clone(), failed.clone());
        let (mut start_rx, stop_rx) = (start_rx.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut rep = SessionReport { index: i, password, ..Default::default() };
            let permit = gate.acquire_owned().await;
            let begun = Instant::now();
            let setup = tokio::time::timeout(Duration::from_secs(60), establish(&o, &conn, password)).await;
            drop(permit);
            let tunnel = match setup {
                Ok(Ok(t)) => Some(t),
                Ok(Err(e)) => {
                    rep.error = Some(e);
                    None
                }
                Err(_) => {
                    rep.error = Some("setup timed out after 60 s".into());
                    None
                }
            };
            match &tunnel {
                Some(_) => {
                    rep.setup = Some(begun.elapsed());
                    up.fetch_add(1, Ordering::SeqCst);
                }
                None => {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
            if up.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst) == o.sessions {
                all_up.notify_one();
            }
            let Some(t) = tunnel else { return rep };
            rep.address = Some(t.address);
            let _ = start_rx.wait_for(|s| *s).await;
            hold(&o, t, i, stop_rx, &mut rep).await;
            rep
        }));
    }
    if total > 0 {
        all_up.notified().await;
    }
    let setup_secs = t0.elapsed().as_secs_f64();
    let n_up = up.load(Ordering::SeqCst);
    let rss_up = o.daemon_pid.map(rss_kib);
    eprintln!(
        "established {n_up} of {total} sessions in {setup_secs:.2} s ({:.1}/s); daemon RSS {:?} -> {:?} KiB",
        n_up as f64 / setup_secs.max(1e-9),
        rss_before,
        rss_up
    );
    if let Some(f) = &o.ready_file {
        let _ = std::fs::write(f, format!("established {n_up}\n"));
    }
    let _ = start_tx.send(true);

    // Optional flood of stalled handshakes during the hold, plus one timed login inside it.
    let flood_stop = Arc::new(tokio::sync::Notify::new());
    let flood_open = Arc::new(AtomicU64::new(0));
    let flood_task = (o.flood > 0).then(|| {
        let (o2, stop, open) = (o.clone(), flood_stop.clone(), flood_open.clone());
        tokio::spawn(async move { flood(o2.server, o2.flood, stop, open).await })
    });
    // One login timed from inside the flood, concurrently with the hold (it may take long:
    // the stalled connections occupy the server's handshake slots until their deadline).
    let flood_login = (o.flood > 0).then(|| {
        let (o2, conn, open) = (o.clone(), cert_conn.clone(), flood_open.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3).min(o2.hold / 3)).await;
            let opened = open.load(Ordering::SeqCst);
            let t = Instant::now();
            let r = establish(&o2, &conn, false).await;
            let res = match r {
                Ok(_t) => format!("ok in {:.3} s", t.elapsed().as_secs_f64()),
                Err(e) => format!("failed after {:.3} s: {e}", t.elapsed().as_secs_f64()),
            };
            eprintln!("login during the flood ({opened} stalled connections open): {res}");
            res
        })
    });
    tokio::time::sleep(o.hold).await;
    let _ = stop_tx.send(true);
    flood_stop.notify_waiters();
    let flood_peak = match flood_task {
        Some(t) => t.await.unwrap_or(0),
        None => 0,
    };
    let login_result = match flood_login {
        Some(t) if t.is_finished() => t.await.ok(),
        Some(t) => {
            t.abort();
            Some(format!("not done within the {} s hold", o.hold.as_secs()))
        }
        None => None,
    };
    let mut reports = Vec::new();
    for t in tasks {
        if let Ok(r) = t.await {
            reports.push(r);
        }
    }
    let established = reports.iter().filter(|r| r.setup.is_some()).count();
    let dropped: Vec<&SessionReport> = reports.iter().filter(|r| r.dropped.is_some()).collect();
    let sent: u64 = reports.iter().map(|r| r.sent).sum();
    let answered: u64 = reports.iter().map(|r| r.answered).sum();
    let all_answered = reports.iter().filter(|r| r.setup.is_some() && r.dropped.is_none() && r.sent > 0 && r.answered == r.sent).count();
    let mut setups: Vec<f64> = reports.iter().filter_map(|r| r.setup.map(|d| d.as_secs_f64())).collect();
    setups.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| setups.get(((setups.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);
    let rss_per = match (rss_before, rss_up) {
        (Some(a), Some(b)) if n_up > 0 => Some((b as f64 - a as f64) / n_up as f64),
        _ => None,
    };
    let errors: Vec<String> = reports
        .iter()
        .filter_map(|r| {
            let how = if r.password { "password" } else { "certificate" };
            r.error.as_ref().or(r.dropped.as_ref()).map(|e| format!("#{} ({how}) {e}", r.index))
        })
        .take(10)
        .collect();
    let short: Vec<String> = reports
        .iter()
        .filter(|r| r.setup.is_some() && r.answered < r.sent)
        .take(10)
        .map(|r| format!("#{} {}/{}", r.index, r.answered, r.sent))
        .collect();
    let report = serde_json::json!({
        "sessions": total,
        "password_sessions": o.password_sessions.min(total),
        "established": established,
        "setup_secs": setup_secs,
        "setup_rate_per_s": established as f64 / setup_secs.max(1e-9),
        "setup_latency_p50_s": pct(0.5),
        "setup_latency_p99_s": pct(0.99),
        "hold_secs": o.hold.as_secs_f64(),
        "probes_sent": sent,
        "probes_answered": answered,
        "sessions_all_probes_answered": all_answered,
        "dpd_requests_answered": reports.iter().map(|r| r.dpd_answered).sum::<u64>(),
        "dropped": dropped.len(),
        "daemon_rss_before_kib": rss_before,
        "daemon_rss_established_kib": rss_up,
        "daemon_rss_per_session_kib": rss_per,
        "flood_connections": o.flood,
        "flood_peak_open": flood_peak,
        "login_during_flood": login_result,
        "errors": errors,
        "short_sessions": short,
    });
    println!("report {report}");
    Ok(established == total && dropped.is_empty() && all_answered == total)
}

/// A tunnel after CONNECT: the stream (with any CSTP bytes already read) and the parameters.
struct Tunnel {
    tls: Tls,
    leftover: Vec<u8>,
    address: Ipv4Addr,
    keepalive: Duration,
}

async fn establish(o: &Opts, conn: &SslConnector, password: bool) -> Result<Tunnel, String> {
    let mut s = tls_connect(o.server, conn).await?;
    let mut buf = Vec::new();
    let group = if password { &o.group } else { &o.cert_group };
    let init = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<config-auth client=\"vpn\" type=\"init\" aggregate-auth-version=\"2\"><version who=\"vpn\">v9.01</version><device-id>linux-64</device-id><group-select>{group}</group-select><group-access>https://{}/</group-access></config-auth>",
        o.server.ip()
    );
    let r = post(&mut s, &mut buf, o.server, &init, None).await?;
    let r = if password {
        let handle = between(&r.body, "<aggauth-handle>", "</aggauth-handle>").ok_or_else(|| format!("no auth form: {} {}", r.status, r.body))?;
        let reply = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<config-auth client=\"vpn\" type=\"auth-reply\" aggregate-auth-version=\"2\"><version who=\"vpn\">v9.01</version><device-id>linux-64</device-id><opaque is-for=\"sg\"><tunnel-group>{group}</tunnel-group><aggauth-handle>{handle}</aggauth-handle></opaque><auth><username>{}</username><password>{}</password></auth><group-select>{group}</group-select></config-auth>",
            o.user, o.password
        );
        let ctx = r.cookie("webvpncontext");
        post(&mut s, &mut buf, o.server, &reply, ctx.as_deref()).await?
    } else {
        r
    };
    if r.status != 200 || !r.body.contains("type=\"complete\"") {
        return Err(format!("login not complete: {} {}", r.status, r.body.chars().take(200).collect::<String>()));
    }
    let cookie = r.cookie("webvpn").filter(|c| !c.is_empty()).ok_or("no webvpn cookie")?;
    let req = format!(
        "CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: {}\r\nUser-Agent: Open AnyConnect VPN Agent v9.01\r\nCookie: webvpn={cookie}\r\nX-CSTP-Version: 1\r\nX-CSTP-Hostname: loadgen\r\nX-CSTP-Base-MTU: 1500\r\nX-CSTP-MTU: 1390\r\nX-CSTP-Address-Type: IPv4\r\nX-CSTP-Full-IPv6-Capability: false\r\n\r\n",
        o.server.ip()
    );
    s.write_all(req.as_bytes()).await.map_err(|e| format!("CONNECT write: {e}"))?;
    let head = read_head(&mut s, &mut buf).await?;
    if head.status != 200 {
        return Err(format!("CONNECT answered {}", head.status));
    }
    let address: Ipv4Addr = head.header("X-CSTP-Address").and_then(|a| a.parse().ok()).ok_or("no X-CSTP-Address")?;
    let keepalive = head.header("X-CSTP-Keepalive").and_then(|k| k.parse::<u64>().ok()).filter(|k| *k > 0).unwrap_or(20);
    Ok(Tunnel { tls: s, leftover: buf, address, keepalive: Duration::from_secs(keepalive) })
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
    }
    /// Value of cookie `name` from the Set-Cookie headers.
    fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .filter_map(|(_, v)| v.split(';').next()?.trim().strip_prefix(name)?.strip_prefix('=').map(str::to_string))
            .next()
    }
}

async fn post(s: &mut Tls, buf: &mut Vec<u8>, server: SocketAddr, body: &str, ctx: Option<&str>) -> Result<Resp, String> {
    let cookie = ctx.map(|c| format!("Cookie: webvpncontext={c}\r\n")).unwrap_or_default();
    let req = format!(
        "POST / HTTP/1.1\r\nHost: {}\r\nUser-Agent: Open AnyConnect VPN Agent v9.01\r\nAccept: */*\r\nX-Transcend-Version: 1\r\nX-Aggregate-Auth: 1\r\nX-Support-HTTP-Auth: true\r\n{cookie}Content-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
        server.ip(),
        body.len()
    );
    s.write_all(req.as_bytes()).await.map_err(|e| format!("POST write: {e}"))?;
    let mut r = read_head(s, buf).await?;
    let len: usize = r.header("Content-Length").and_then(|l| l.parse().ok()).unwrap_or(0);
    while buf.len() < len {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.map_err(|e| format!("body read: {e}"))?;
        if n == 0 {
            return Err("connection closed in a response body".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    r.body = String::from_utf8_lossy(&buf[..len]).into_owned();
    buf.drain(..len);
    Ok(r)
}

/// Reads one HTTP response head; bytes after it stay in `buf`.
async fn read_head(s: &mut Tls, buf: &mut Vec<u8>) -> Result<Resp, String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let mut lines = head.split("\r\n");
            let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).ok_or("bad status line")?;
            let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
            return Ok(Resp { status, headers, body: String::new() });
        }
        if buf.len() > 65536 {
            return Err("response head too long".into());
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before a response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn between<'a>(s: &'a str, a: &str, b: &str) -> Option<&'a str> {
    let i = s.find(a)? + a.len();
    let j = s[i..].find(b)? + i;
    Some(&s[i..j])
}

const DATA: u8 = 0x00;
const DPD_REQ: u8 = 0x03;
const DPD_RESP: u8 = 0x04;
const DISCONNECT: u8 = 0x05;
const KEEPALIVE: u8 = 0x07;
const TERMINATE: u8 = 0x09;

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(b"STF\x01");
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.push(kind);
    f.push(0);
    f.extend_from_slice(payload);
    f
}

/// The hold phase of one session: probes every interval, keepalives, DPD answers; ends at
/// `stop` (after a grace for the last replies) with a DISCONNECT.
async fn hold(o: &Opts, t: Tunnel, index: usize, mut stop: tokio::sync::watch::Receiver<bool>, rep: &mut SessionReport) {
    let Tunnel { tls, leftover, address, keepalive } = t;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    let ident = (index & 0xffff) as u16;
    let answered = Arc::new(AtomicU64::new(0));
    let dpd = Arc::new(AtomicU64::new(0));
    // Reader: replies, DPD requests, the gateway ending the session.
    let reader = {
        let (out_tx, answered, dpd) = (out_tx.clone(), answered.clone(), dpd.clone());
        let target = o.target;
        tokio::spawn(async move {
            let mut buf = leftover;
            let mut chunk = vec![0u8; 16384];
            loop {
                while buf.len() >= 8 {
                    if &buf[..4] != b"STF\x01" {
                        return Some("bad CSTP framing from the gateway".to_string());
                    }
                    let len = u16::from_be_bytes([buf[4], buf[5]]) as usize;
                    if buf.len() < 8 + len {
                        break;
                    }
                    let kind = buf[6];
                    let payload = buf[8..8 + len].to_vec();
                    buf.drain(..8 + len);
                    match kind {
                        DATA if is_echo_reply(&payload, target, address, ident) => {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        DPD_REQ => {
                            dpd.fetch_add(1, Ordering::Relaxed);
                            let _ = out_tx.send(frame(DPD_RESP, &payload)).await;
                        }
                        DISCONNECT => return Some("gateway sent DISCONNECT".into()),
                        TERMINATE => return Some("gateway sent TERMINATE".into()),
                        _ => {}
                    }
                }
                match rd.read(&mut chunk).await {
                    Ok(0) => return Some("gateway closed the TLS connection".into()),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) => return Some(format!("read error: {e}")),
                }
            }
        })
    };
    // Writer: one CSTP frame per TLS record (openconnect's peers expect that too).
    let writer = tokio::spawn(async move {
        while let Some(f) = out_rx.recv().await {
            if wr.write_all(&f).await.is_err() {
                return false;
            }
            if f.get(6) == Some(&DISCONNECT) {
                let _ = wr.shutdown().await;
                return true;
            }
        }
        true
    });
    // Spread the probes of all sessions over the interval.
    let offset = o.interval.mul_f64((index % 1000) as f64 / 1000.0);
    let mut probe_tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, o.interval);
    let mut ka_tick = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    let mut seq: u16 = 0;
    let mut reader = reader;
    loop {
        tokio::select! {
            _ = probe_tick.tick() => {
                seq = seq.wrapping_add(1);
                let p = echo_request(address, o.target, ident, seq);
                if out_tx.send(frame(DATA, &p)).await.is_err() { break; }
                rep.sent += 1;
            }
            _ = ka_tick.tick() => {
                let _ = out_tx.send(frame(KEEPALIVE, &[])).await;
            }
            r = &mut reader => {
                rep.dropped = Some(r.ok().flatten().unwrap_or_else(|| "reader ended".into()));
                break;
            }
            _ = stop.changed() => break,
        }
    }
    if rep.dropped.is_none() {
        // Grace for the replies to the last probes.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while answered.load(Ordering::Relaxed) < rep.sent && tokio::time::Instant::now() < deadline {
            if reader.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if reader.is_finished() {
            rep.dropped = Some(reader.await.ok().flatten().unwrap_or_else(|| "reader ended".into()));
        } else {
            reader.abort();
        }
    }
    rep.answered = answered.load(Ordering::Relaxed);
    rep.dpd_answered = dpd.load(Ordering::Relaxed);
    // 0xb0: the user logs out (anyconnect.md §3).
    let _ = out_tx.send(frame(DISCONNECT, &[0xb0])).await;
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

/// RFC 1071 Internet checksum.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { u16::from(c[0]) << 8 };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4 + ICMP echo request (RFC 792) with a 16-byte payload.
fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, ident: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; 20 + 8 + 16];
    let total = p.len() as u16;
    p[0] = 0x45;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[4..6].copy_from_slice(&seq.to_be_bytes());
    p[8] = 64;
    p[9] = 1;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20] = 8;
    p[24..26].copy_from_slice(&ident.to_be_bytes());
    p[26..28].copy_from_slice(&seq.to_be_bytes());
    p[28..].copy_from_slice(b"holdfast-acload!");
    let c = checksum(&p[20..]);
    p[22..24].copy_from_slice(&c.to_be_bytes());
    p
}

fn is_echo_reply(p: &[u8], from: Ipv4Addr, to: Ipv4Addr, ident: u16) -> bool {
    if p.len() < 28 || p[0] >> 4 != 4 || p[9] != 1 {
        return false;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if p.len() < ihl + 8 || p[12..16] != from.octets() || p[16..20] != to.octets() {
        return false;
    }
    p[ihl] == 0 && p[ihl + 4..ihl + 6] == ident.to_be_bytes()
}

/// Keeps `n` TCP connections to the server open without sending a byte (stalled TLS
/// handshakes); reopens those the server closes. Returns the peak number open at once.
async fn flood(server: SocketAddr, n: usize, stop: Arc<tokio::sync::Notify>, open: Arc<AtomicU64>) -> u64 {
    let mut set = tokio::task::JoinSet::new();
    let peak = Arc::new(AtomicU64::new(0));
    for _ in 0..n {
        let (open, peak) = (open.clone(), peak.clone());
        set.spawn(async move {
            loop {
                let Ok(mut s) = TcpStream::connect(server).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                let mut b = [0u8; 1024];
                // The server ends a stalled handshake at its deadline; reconnect then.
                loop {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                open.fetch_sub(1, Ordering::SeqCst);
            }
        });
    }
    stop.notified().await;
    set.abort_all();
    peak.load(Ordering::SeqCst)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksums_verify_and_reply_matcher_is_strict() {
        let src = Ipv4Addr::new(10, 99, 0, 100);
        let dst = Ipv4Addr::new(10, 1, 0, 10);
        let p = echo_request(src, dst, 7, 3);
        assert_eq!(checksum(&p[..20]), 0, "IPv4 header checksum verifies");
        assert_eq!(checksum(&p[20..]), 0, "ICMP checksum verifies");
        // A reply is the request with addresses swapped and type 0.
        let mut r = p.clone();
        r[12..16].copy_from_slice(&dst.octets());
        r[16..20].copy_from_slice(&src.octets());
        r[20] = 0;
        assert!(is_echo_reply(&r, dst, src, 7));
        assert!(!is_echo_reply(&r, dst, src, 8), "other session's identifier");
        assert!(!is_echo_reply(&p, dst, src, 7), "a request is not a reply");
        assert!(!is_echo_reply(&r[..20], dst, src, 7), "truncated");
    }

    #[test]
    fn frame_header_is_cstp() {
        let f = frame(DPD_RESP, &[1, 2, 3]);
        assert_eq!(&f[..8], &[b'S', b'T', b'F', 1, 0, 3, DPD_RESP, 0]);
        assert_eq!(&f[8..], &[1, 2, 3]);
    }
}
