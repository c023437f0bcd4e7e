#![allow(clippy::disallowed_methods)] // a load generator measures wall-clock times
//! AnyConnect load generator (issue 5; root not needed, run it in a lab namespace): logs N
//! sessions in to a real holdfast daemon the way openconnect does — aggregate-auth XML over
//! TLS (certificate group: `init` answered with `complete`; password group: `init`, form,
//! `auth-reply`), the `webvpn` cookie, `CONNECT /CSCOSSLC/tunnel` — then keeps every session
//! alive over CSTP (answers the gateway's DPD requests, sends keepalives) and sends one ICMP
//! echo request per session and interval to an inside host; each reply must come back through
//! the same session. With `--dtls-sessions K`, K certificate sessions also bring up
//! PSK-NEGOTIATE DTLS (see `mod dtls`) and send their probes over it; the others use CSTP.
//!
//! ```text
//! lab-acload --server IP:PORT --sessions N [--cert-group CERT --client-cert PEM --client-key PEM]
//!            [--password-sessions M --group RA --user vpn --password PW]
//!            [--target 10.1.0.10] [--hold SECS] [--interval-ms MS] [--concurrency C]
//!            [--daemon-pid PID] [--flood N] [--flood-source IP] [--ready-file FILE] [--dtls-sessions K]
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
    /// Sessions (after the password ones) that also bring up PSK-NEGOTIATE DTLS and send
    /// their probes over it.
    dtls_sessions: usize,
    /// Source address of the flood connections (another address than the logins').
    flood_source: Option<std::net::IpAddr>,
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
        dtls_sessions: num("--dtls-sessions", 0)? as usize,
        flood_source: opt(&a, "--flood-source").map(|v| v.parse()).transpose().map_err(|e| format!("--flood-source: {e}"))?,
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
    dtls: bool,
    /// Replies that came over DTLS.
    dtls_answered: u64,
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
        let with_dtls = !password && i < o.password_sessions + o.dtls_sessions;
        let conn = if password { plain_conn.clone() } else { cert_conn.clone() };
        let (o, gate, up, all_up, failed) = (o.clone(), gate.clone(), up.clone(), all_up.clone(), failed.clone());
        let (mut start_rx, stop_rx) = (start_rx.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut rep = SessionReport { index: i, password, ..Default::default() };
            let permit = gate.acquire_owned().await;
            let begun = Instant::now();
            let setup = tokio::time::timeout(Duration::from_secs(60), establish_with(&o, &conn, password, with_dtls)).await;
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
        tokio::spawn(async move { flood(o2.server, o2.flood_source, o2.flood, stop, open).await })
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
    let (flood_peak, flood_connects) = match flood_task {
        Some(t) => t.await.unwrap_or((0, 0)),
        None => (0, 0),
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
        "dtls_sessions": reports.iter().filter(|r| r.dtls).count(),
        "dtls_replies": reports.iter().map(|r| r.dtls_answered).sum::<u64>(),
        "daemon_rss_before_kib": rss_before,
        "daemon_rss_established_kib": rss_up,
        "daemon_rss_per_session_kib": rss_per,
        "flood_connections": o.flood,
        "flood_peak_open": flood_peak,
        "flood_connects": flood_connects,
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
    dtls: Option<dtls::Dtls>,
}

async fn establish(o: &Opts, conn: &SslConnector, password: bool) -> Result<Tunnel, String> {
    establish_with(o, conn, password, false).await
}

async fn establish_with(o: &Opts, conn: &SslConnector, password: bool, dtls: bool) -> Result<Tunnel, String> {
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
    // PSK-NEGOTIATE only (anyconnect.md §4): the PSK is the TLS exporter, no master secret
    // is needed, but openconnect always sends one and the gateway may expect the header.
    let dtls_headers = if dtls {
        let mut ms = [0u8; 48];
        openssl::rand::rand_bytes(&mut ms).map_err(|e| e.to_string())?;
        format!("X-DTLS-Master-Secret: {}\r\nX-DTLS-CipherSuite: PSK-NEGOTIATE\r\n", hex_upper(&ms))
    } else {
        String::new()
    };
    let req = format!(
        "CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: {}\r\nUser-Agent: Open AnyConnect VPN Agent v9.01\r\nCookie: webvpn={cookie}\r\nX-CSTP-Version: 1\r\nX-CSTP-Hostname: loadgen\r\nX-CSTP-Base-MTU: 1500\r\nX-CSTP-MTU: 1390\r\nX-CSTP-Address-Type: IPv4\r\nX-CSTP-Full-IPv6-Capability: false\r\n{dtls_headers}\r\n",
        o.server.ip()
    );
    s.write_all(req.as_bytes()).await.map_err(|e| format!("CONNECT write: {e}"))?;
    let head = read_head(&mut s, &mut buf).await?;
    if head.status != 200 {
        return Err(format!("CONNECT answered {}", head.status));
    }
    let address: Ipv4Addr = head.header("X-CSTP-Address").and_then(|a| a.parse().ok()).ok_or("no X-CSTP-Address")?;
    let keepalive = head.header("X-CSTP-Keepalive").and_then(|k| k.parse::<u64>().ok()).filter(|k| *k > 0).unwrap_or(20);
    let dtls = if dtls {
        let app_id = head.header("X-DTLS-App-ID").and_then(|h| unhex32(&h)).ok_or("no X-DTLS-App-ID (PSK-NEGOTIATE) in the CONNECT answer")?;
        let port: u16 = head.header("X-DTLS-Port").and_then(|p| p.parse().ok()).unwrap_or(o.server.port());
        let mut psk = [0u8; 32];
        s.ssl().export_keying_material(&mut psk, "EXPORTER-openconnect-psk", None).map_err(|e| format!("exporter: {e}"))?;
        let peer = SocketAddr::new(o.server.ip(), port);
        let d = tokio::task::spawn_blocking(move || dtls::connect(peer, app_id, psk)).await.map_err(|e| e.to_string())??;
        Some(d)
    } else {
        None
    };
    Ok(Tunnel { tls: s, leftover: buf, address, keepalive: Duration::from_secs(keepalive), dtls })
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
    let Tunnel { tls, leftover, address, keepalive, dtls } = t;
    rep.dtls = dtls.is_some();
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
    // DTLS sessions: a thread owns the association (blocking openssl), sends what it is given
    // and counts the replies it receives; replies may also come over TLS (the gateway answers
    // on the channel it believes in), and both count.
    let dtls_answered = Arc::new(AtomicU64::new(0));
    let (dtls_tx, dtls_worker) = match dtls {
        Some(d) => {
            let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
            let (answered, dtls_answered, target) = (answered.clone(), dtls_answered.clone(), o.target);
            let h = std::thread::spawn(move || {
                d.run(rx, |p| {
                    if is_echo_reply(p, target, address, ident) {
                        answered.fetch_add(1, Ordering::Relaxed);
                        dtls_answered.fetch_add(1, Ordering::Relaxed);
                    }
                })
            });
            (Some(tx), Some(h))
        }
        None => (None, None),
    };
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
                match &dtls_tx {
                    Some(tx) => {
                        if tx.send(p).is_err() {
                            rep.dropped = Some("DTLS association failed".into());
                            break;
                        }
                    }
                    None => {
                        if out_tx.send(frame(DATA, &p)).await.is_err() { break; }
                    }
                }
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
    drop(dtls_tx);
    if let Some(h) = dtls_worker {
        let r = tokio::task::spawn_blocking(move || h.join()).await;
        if let Ok(Ok(Err(e))) = r {
            rep.dropped.get_or_insert(format!("DTLS: {e}"));
        }
    }
    rep.answered = answered.load(Ordering::Relaxed);
    rep.dtls_answered = dtls_answered.load(Ordering::Relaxed);
    rep.dpd_answered = dpd.load(Ordering::Relaxed);
    // 0xb0: the user logs out (anyconnect.md §3).
    let _ = out_tx.send(frame(DISCONNECT, &[0xb0])).await;
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

fn unhex32(h: &str) -> Option<[u8; 32]> {
    let h = h.trim();
    if h.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
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
/// handshakes); reopens those the server closes. Returns the peak number open at once and
/// the number of connections made.
async fn flood(server: SocketAddr, source: Option<std::net::IpAddr>, n: usize, stop: Arc<tokio::sync::Notify>, open: Arc<AtomicU64>) -> (u64, u64) {
    let mut set = tokio::task::JoinSet::new();
    let peak = Arc::new(AtomicU64::new(0));
    let connects = Arc::new(AtomicU64::new(0));
    for _ in 0..n {
        let (open, peak, connects) = (open.clone(), peak.clone(), connects.clone());
        set.spawn(async move {
            loop {
                let Ok(mut s) = flood_connect(server, source).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                connects.fetch_add(1, Ordering::Relaxed);
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
                // Closed by the server (deadline, or refused at accept): come back soon, but
                // without spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    stop.notified().await;
    set.abort_all();
    (peak.load(Ordering::SeqCst), connects.load(Ordering::SeqCst))
}

async fn flood_connect(server: SocketAddr, source: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    sock.connect(server).await
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// The DTLS data channel of a load session (PSK-NEGOTIATE, anyconnect.md §4): DTLS 1.2 with
/// the 32-byte TLS exporter as PSK, and the X-DTLS-App-ID in the ClientHello's session_id so
/// the gateway can find the session before any crypto. openssl puts a session id into the
/// ClientHello only when it offers to resume a session, so the association starts from a
/// made-up resumable session carrying that id (the gateway does not resume it; the full PSK
/// handshake follows), the same way openconnect does it with OpenSSL.
mod dtls {
    use foreign_types::ForeignType;
    use openssl::ssl::{ErrorCode, HandshakeError, Ssl, SslContext, SslMethod, SslOptions, SslSession, SslStream, SslVersion};
    use std::ffi::{c_int, c_uchar, c_uint};
    use std::io::{Read, Write};
    use std::net::{SocketAddr, UdpSocket};
    use std::time::{Duration, Instant};

    extern "C" {
        fn SSL_CIPHER_find(ssl: *mut openssl_sys::SSL, ptr: *const c_uchar) -> *const openssl_sys::SSL_CIPHER;
        fn SSL_SESSION_new() -> *mut openssl_sys::SSL_SESSION;
        fn SSL_SESSION_set_cipher(s: *mut openssl_sys::SSL_SESSION, cipher: *const openssl_sys::SSL_CIPHER) -> c_int;
        fn SSL_SESSION_set1_id(s: *mut openssl_sys::SSL_SESSION, sid: *const c_uchar, len: c_uint) -> c_int;
        fn SSL_SESSION_set_protocol_version(s: *mut openssl_sys::SSL_SESSION, version: c_int) -> c_int;
        fn SSL_SESSION_set1_master_key(s: *mut openssl_sys::SSL_SESSION, key: *const c_uchar, len: usize) -> c_int;
    }

    const DTLS1_2_VERSION: c_int = 0xFEFD;
    /// TLS_PSK_WITH_AES_256_GCM_SHA384 (RFC 5487), the suite openconnect offers first.
    const PSK_AES256_GCM: [u8; 2] = [0x00, 0xA9];

    /// A connected UDP socket as the byte stream openssl's BIO wants: one read = one
    /// datagram, one write = one datagram.
    #[derive(Debug)]
    struct UdpIo(UdpSocket);

    impl Read for UdpIo {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.recv(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(std::io::ErrorKind::WouldBlock.into()),
                r => r,
            }
        }
    }

    impl Write for UdpIo {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.send(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    pub struct Dtls {
        s: SslStream<UdpIo>,
    }

    pub fn connect(peer: SocketAddr, app_id: [u8; 32], psk: [u8; 32]) -> Result<Dtls, String> {
        let e = |what: &'static str| move |err: openssl::error::ErrorStack| format!("DTLS {what}: {err}");
        let mut b = SslContext::builder(SslMethod::dtls()).map_err(e("context"))?;
        b.set_min_proto_version(Some(SslVersion::DTLS1_2)).map_err(e("version"))?;
        b.set_max_proto_version(Some(SslVersion::DTLS1_2)).map_err(e("version"))?;
        b.set_cipher_list("PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256").map_err(e("ciphers"))?;
        b.set_options(SslOptions::NO_QUERY_MTU | SslOptions::NO_TICKET);
        b.set_psk_client_callback(move |_ssl, _hint, identity, out| {
            // anyconnect.md §4: the identity is "psk" and ignored by the gateway.
            let id = b"psk\0";
            if identity.len() < id.len() || out.len() < psk.len() {
                return Ok(0);
            }
            identity[..id.len()].copy_from_slice(id);
            out[..psk.len()].copy_from_slice(&psk);
            Ok(psk.len())
        });
        let ctx = b.build();
        let mut ssl = Ssl::new(&ctx).map_err(e("ssl"))?;
        ssl.set_mtu(1400).map_err(e("mtu"))?;
        let mut fake_master = [0u8; 48];
        openssl::rand::rand_bytes(&mut fake_master).map_err(e("rand"))?;
        // SAFETY: `ssl` is alive for the call; SSL_CIPHER_find reads exactly two bytes and
        // returns a static table entry or NULL. SSL_SESSION_new returns a fresh session with
        // one reference, handed to SslSession::from_ptr, which frees it when dropped; each
        // setter copies exactly the given lengths from the local arrays passed.
        let session = unsafe {
            let c = SSL_CIPHER_find(ssl.as_ptr(), PSK_AES256_GCM.as_ptr());
            if c.is_null() {
                return Err("DTLS: PSK-AES256-GCM-SHA384 unknown to libssl".into());
            }
            let s = SSL_SESSION_new();
            if s.is_null() {
                return Err("DTLS: SSL_SESSION_new failed".into());
            }
            let session = SslSession::from_ptr(s);
            let ok = SSL_SESSION_set_protocol_version(s, DTLS1_2_VERSION) == 1
                && SSL_SESSION_set_cipher(s, c) == 1
                && SSL_SESSION_set1_master_key(s, fake_master.as_ptr(), fake_master.len()) == 1
                && SSL_SESSION_set1_id(s, app_id.as_ptr(), app_id.len() as c_uint) == 1;
            if !ok {
                return Err("DTLS: building the session that carries the App-ID failed".into());
            }
            session
        };
        // SAFETY: the session was made for this context's protocol (DTLS 1.2) and cipher
        // family; set_session takes its own reference.
        unsafe { ssl.set_session(&session) }.map_err(e("set_session"))?;
        let sock = UdpSocket::bind(("0.0.0.0", 0)).map_err(|err| format!("DTLS socket: {err}"))?;
        sock.connect(peer).map_err(|err| format!("DTLS connect: {err}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(200))).map_err(|err| err.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut attempt = ssl.connect(UdpIo(sock));
        let s = loop {
            match attempt {
                Ok(s) => break s,
                Err(HandshakeError::WouldBlock(mid)) => {
                    if Instant::now() > deadline {
                        return Err("DTLS handshake timed out".into());
                    }
                    attempt = mid.handshake();
                }
                Err(err) => return Err(format!("DTLS handshake: {err}")),
            }
        };
        if s.ssl().session_reused() {
            return Err("DTLS: the gateway resumed a made-up session".into());
        }
        s.get_ref().0.set_read_timeout(Some(Duration::from_millis(50))).map_err(|err| err.to_string())?;
        Ok(Dtls { s })
    }

    impl Dtls {
        /// Sends every packet from `rx` as a DATA record, answers DTLS DPD requests, hands
        /// received DATA payloads to `on_data`; returns when `rx` is closed.
        pub fn run(mut self, rx: std::sync::mpsc::Receiver<Vec<u8>>, mut on_data: impl FnMut(&[u8])) -> Result<(), String> {
            let mut buf = vec![0u8; 2048];
            let mut rec = Vec::with_capacity(2048);
            loop {
                loop {
                    match rx.try_recv() {
                        Ok(p) => {
                            rec.clear();
                            rec.push(super::DATA);
                            rec.extend_from_slice(&p);
                            self.s.ssl_write(&rec).map_err(|err| format!("DTLS write: {err}"))?;
                        }
                        Err(std::sync::mpsc::TryRecvError::Empty) => break,
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                            let _ = self.s.ssl_write(&[super::DISCONNECT, 0xb0]);
                            return Ok(());
                        }
                    }
                }
                match self.s.ssl_read(&mut buf) {
                    Ok(0) => {}
                    Ok(n) => match buf[0] {
                        super::DATA => on_data(&buf[1..n]),
                        super::DPD_REQ => {
                            buf[0] = super::DPD_RESP;
                            self.s.ssl_write(&buf[..n]).map_err(|err| format!("DTLS write: {err}"))?;
                        }
                        _ => {}
                    },
                    Err(err) if err.code() == ErrorCode::WANT_READ => {}
                    Err(err) if err.code() == ErrorCode::ZERO_RETURN => return Err("DTLS closed by the gateway".into()),
                    Err(err) => return Err(format!("DTLS read: {err}")),
                }
            }
        }
    }
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
