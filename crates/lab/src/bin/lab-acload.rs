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
//!            (--servercert pin-sha256:BASE64 | --cafile PEM)
//! ```
//! `lab-acload --tunnel ...` is a different mode: one session as a fast benchmark client with a
//! TUN device (see `mod tunnel`; `lab-acbench --client fast` runs it against holdfast and ocserv).
//!
//! The server certificate is always verified, like openconnect's `--servercert`: a pin of its
//! public key or a CA file; a mismatch ends the session with a clear error before any
//! credential is sent.
//!
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
    /// How the server's certificate is checked (always; there is no way to turn it off).
    server_check: ServerCheck,
    /// (read, write) buffer sizes under TLS: small for the many load sessions, large for
    /// the one `--tunnel` session.
    tls_buffers: (usize, usize),
}

/// The server certificate check, as openconnect does it: `--servercert pin-sha256:B64` pins
/// the SHA-256 of the certificate's SubjectPublicKeyInfo (checked right after the TLS
/// handshake, before a byte of HTTP is sent), `--cafile PEM` verifies the chain against a CA
/// (the lab's certificates name no IP address, so the host name is not checked then).
#[derive(Debug, Clone)]
enum ServerCheck {
    Pin([u8; 32]),
    CaFile(String),
}

/// `pin-sha256:<base64 of 32 bytes>` (openconnect's `--servercert` form).
fn parse_pin(v: &str) -> Result<[u8; 32], String> {
    let b64 = v.strip_prefix("pin-sha256:").ok_or_else(|| format!("--servercert {v}: expected pin-sha256:<base64>"))?;
    let raw = openssl::base64::decode_block(b64).map_err(|e| format!("--servercert {v}: bad base64: {e}"))?;
    raw.try_into().map_err(|r: Vec<u8>| format!("--servercert {v}: {} bytes, a SHA-256 pin has 32", r.len()))
}

/// openconnect's pin of a certificate: SHA-256 over the DER SubjectPublicKeyInfo.
fn cert_pin(cert: &openssl::x509::X509Ref) -> Result<[u8; 32], String> {
    let spki = cert.public_key().and_then(|k| k.public_key_to_der()).map_err(|e| format!("server public key: {e}"))?;
    Ok(openssl::sha::sha256(&spki))
}

fn pin_text(pin: &[u8; 32]) -> String {
    format!("pin-sha256:{}", openssl::base64::encode_block(pin))
}

fn opt(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn parse_opts() -> Result<Opts, String> {
    parse_opts_from(&std::env::args().skip(1).collect::<Vec<_>>())
}

fn parse_opts_from(a: &[String]) -> Result<Opts, String> {
    let num = |n: &str, d: u64| -> Result<u64, String> { opt(a, n).map_or(Ok(d), |v| v.parse().map_err(|e| format!("{n}: {e}"))) };
    Ok(Opts {
        server: opt(a, "--server").ok_or("--server is required")?.parse().map_err(|e| format!("--server: {e}"))?,
        sessions: num("--sessions", 10)? as usize,
        cert_group: opt(a, "--cert-group").unwrap_or_else(|| "CERT".into()),
        client_cert: opt(a, "--client-cert"),
        client_key: opt(a, "--client-key"),
        password_sessions: num("--password-sessions", 0)? as usize,
        group: opt(a, "--group").unwrap_or_else(|| "RA".into()),
        user: opt(a, "--user").unwrap_or_else(|| "vpn".into()),
        password: opt(a, "--password").unwrap_or_default(),
        target: opt(a, "--target").unwrap_or_else(|| "10.1.0.10".into()).parse().map_err(|e| format!("--target: {e}"))?,
        hold: Duration::from_secs(num("--hold", 20)?),
        interval: Duration::from_millis(num("--interval-ms", 1000)?),
        concurrency: num("--concurrency", 16)?.max(1) as usize,
        daemon_pid: opt(a, "--daemon-pid").and_then(|p| p.parse().ok()),
        flood: num("--flood", 0)? as usize,
        ready_file: opt(a, "--ready-file"),
        dtls_sessions: num("--dtls-sessions", 0)? as usize,
        flood_source: opt(a, "--flood-source").map(|v| v.parse()).transpose().map_err(|e| format!("--flood-source: {e}"))?,
        server_check: match (opt(a, "--servercert"), opt(a, "--cafile")) {
            (Some(p), None) => ServerCheck::Pin(parse_pin(&p)?),
            (None, Some(ca)) => ServerCheck::CaFile(ca),
            (Some(_), Some(_)) => return Err("give either --servercert or --cafile, not both".into()),
            (None, None) => return Err("the server certificate is always verified: --servercert pin-sha256:<base64> or --cafile PEM is required".into()),
        },
        tls_buffers: (4096, 4096),
    })
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--tunnel") {
        raise_nofile();
        return match tunnel::main(&args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lab-acload --tunnel: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
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

/// TLS over a buffered TCP stream: a writer puts many records (one CSTP frame each) into one
/// TCP write and flushes after its batch, and the reader takes many records per `recv`. Both
/// servers get the same records; only the number of system calls changes. Every write is
/// followed by a flush.
type Tls = SslStream<tokio::io::BufStream<TcpStream>>;

/// Write buffer under [`Tls`] of the `--tunnel` session: what one flush may hand the kernel at once.
const TLS_WRITE_BUFFER: usize = 256 * 1024;
/// Read buffer under [`Tls`] of the `--tunnel` session (load sessions: 4 KiB each way).
const TLS_READ_BUFFER: usize = 128 * 1024;

fn connector(o: &Opts, with_cert: bool) -> Result<SslConnector, String> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    match &o.server_check {
        ServerCheck::CaFile(ca) => {
            b.set_verify(SslVerifyMode::PEER);
            b.set_ca_file(ca).map_err(|e| format!("--cafile {ca}: {e}"))?;
        }
        // A pinned certificate is usually self-signed: libssl's chain check would refuse it,
        // so the pin is compared after the handshake instead (tls_connect), as openconnect does.
        ServerCheck::Pin(_) => b.set_verify(SslVerifyMode::NONE),
    }
    if with_cert {
        if let (Some(c), Some(k)) = (&o.client_cert, &o.client_key) {
            b.set_certificate_chain_file(c).map_err(|e| format!("{c}: {e}"))?;
            b.set_private_key_file(k, SslFiletype::PEM).map_err(|e| format!("{k}: {e}"))?;
        }
    }
    Ok(b.build())
}

async fn tls_connect(server: SocketAddr, conn: &SslConnector, check: &ServerCheck, bufs: (usize, usize)) -> Result<Tls, String> {
    let tcp = TcpStream::connect(server).await.map_err(|e| format!("tcp connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let ssl = conn.configure().map_err(|e| e.to_string())?.verify_hostname(false).into_ssl("vpn.example").map_err(|e| e.to_string())?;
    // ACLOAD_TLS_BUFFERS=0 (A/B measurements): no buffering (a 1-byte buffer: every record
    // bypasses it), one system call per record.
    let (r, w) = if std::env::var("ACLOAD_TLS_BUFFERS").is_ok_and(|v| v == "0") { (1, 1) } else { bufs };
    let tcp = tokio::io::BufStream::with_capacity(r, w, tcp);
    let mut s = SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
    Pin::new(&mut s).connect().await.map_err(|e| format!("tls handshake: {e}"))?;
    if let ServerCheck::Pin(want) = check {
        let cert = s.ssl().peer_certificate().ok_or("the server sent no certificate")?;
        let got = cert_pin(&cert)?;
        if &got != want {
            return Err(format!("server certificate mismatch: the server's key is {}, expected {}", pin_text(&got), pin_text(want)));
        }
    }
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
    /// X-CSTP-MTU and X-DTLS-MTU of the CONNECT answer.
    cstp_mtu: Option<u32>,
    dtls_mtu: Option<u32>,
    /// X-CSTP-Split-Include networks as `a.b.c.d/len`.
    split_include: Vec<String>,
}

async fn establish(o: &Opts, conn: &SslConnector, password: bool) -> Result<Tunnel, String> {
    establish_with(o, conn, password, false).await
}

async fn establish_with(o: &Opts, conn: &SslConnector, password: bool, dtls: bool) -> Result<Tunnel, String> {
    let mut s = tls_connect(o.server, conn, &o.server_check, o.tls_buffers).await?;
    let mut buf = Vec::new();
    let group = if password { &o.group } else { &o.cert_group };
    // No group named (the benchmark client against ocserv, which has no groups): the server's
    // default, as openconnect does without --authgroup.
    let gsel = if group.is_empty() { String::new() } else { format!("<group-select>{group}</group-select>") };
    let init = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<config-auth client=\"vpn\" type=\"init\" aggregate-auth-version=\"2\"><version who=\"vpn\">v9.01</version><device-id>linux-64</device-id>{gsel}<group-access>https://{}/</group-access></config-auth>",
        o.server.ip()
    );
    let r = post(&mut s, &mut buf, o.server, "/", &init, None).await?;
    let mut r = r;
    // Password login: answer each form with the fields it asks for (holdfast asks for both at
    // once; ocserv's plain module asks for the username, then the password), at most 4 forms.
    let mut ctx = r.cookie("webvpncontext");
    for _ in 0..4 {
        if !password || !r.body.contains("<form") || r.body.contains("type=\"complete\"") {
            break;
        }
        let opaque = match between(&r.body, "<aggauth-handle>", "</aggauth-handle>") {
            Some(handle) => {
                let tg = if group.is_empty() { String::new() } else { format!("<tunnel-group>{group}</tunnel-group>") };
                format!("<opaque is-for=\"sg\">{tg}<aggauth-handle>{handle}</aggauth-handle></opaque>")
            }
            None => String::new(),
        };
        let mut auth = String::new();
        if r.body.contains("name=\"username\"") {
            auth.push_str(&format!("<username>{}</username>", o.user));
        }
        if r.body.contains("name=\"password\"") {
            auth.push_str(&format!("<password>{}</password>", o.password));
        }
        if auth.is_empty() {
            return Err(format!("a login form without username or password: {}", r.body.chars().take(300).collect::<String>()));
        }
        let reply = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<config-auth client=\"vpn\" type=\"auth-reply\" aggregate-auth-version=\"2\"><version who=\"vpn\">v9.01</version><device-id>linux-64</device-id>{opaque}<auth>{auth}</auth>{gsel}</config-auth>"
        );
        // The reply goes to the form's action, as openconnect sends it (ocserv: /auth).
        let action = between(&r.body, "action=\"", "\"").filter(|a| a.starts_with('/')).unwrap_or("/").to_string();
        r = post(&mut s, &mut buf, o.server, &action, &reply, ctx.as_deref()).await?;
        if let Some(c) = r.cookie("webvpncontext") {
            ctx = Some(c);
        }
    }
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
    s.flush().await.map_err(|e| format!("CONNECT write: {e}"))?;
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
    let mtu = |h: &str| head.header(h).and_then(|v| v.parse().ok());
    let split_include = head
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("X-CSTP-Split-Include"))
        .filter_map(|(_, v)| {
            let (net, mask) = v.split_once('/')?;
            let len = match mask.parse::<Ipv4Addr>() {
                Ok(m) => u32::from(m).count_ones(),
                Err(_) => mask.parse().ok()?,
            };
            Some(format!("{net}/{len}"))
        })
        .collect();
    Ok(Tunnel {
        tls: s,
        leftover: buf,
        address,
        keepalive: Duration::from_secs(keepalive),
        dtls,
        cstp_mtu: mtu("X-CSTP-MTU"),
        dtls_mtu: mtu("X-DTLS-MTU"),
        split_include,
    })
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

async fn post(s: &mut Tls, buf: &mut Vec<u8>, server: SocketAddr, path: &str, body: &str, ctx: Option<&str>) -> Result<Resp, String> {
    // An empty context cookie is the server clearing it (ocserv does so on `init`).
    let cookie = ctx.filter(|c| !c.is_empty()).map(|c| format!("Cookie: webvpncontext={c}\r\n")).unwrap_or_default();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: Open AnyConnect VPN Agent v9.01\r\nAccept: */*\r\nX-Transcend-Version: 1\r\nX-Aggregate-Auth: 1\r\nX-Support-HTTP-Auth: true\r\n{cookie}Content-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
        server.ip(),
        body.len()
    );
    s.write_all(req.as_bytes()).await.map_err(|e| format!("POST write: {e}"))?;
    s.flush().await.map_err(|e| format!("POST write: {e}"))?;
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
    if std::env::var_os("ACLOAD_DEBUG").is_some() {
        eprintln!("lab-acload: sent {body}\n  answered {} {:?}\n{}", r.status, r.headers, r.body);
    }
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
    let Tunnel { tls, leftover, address, keepalive, dtls, .. } = t;
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
            if wr.write_all(&f).await.is_err() || wr.flush().await.is_err() {
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
    /// datagram, one write = one datagram. In batched mode (the benchmark client, after the
    /// handshake) reads come from `inq` and writes go to `outq`; the caller moves datagrams
    /// between those queues and the socket with recvmmsg/sendmmsg, many per system call.
    #[derive(Debug)]
    struct UdpIo {
        sock: UdpSocket,
        batched: bool,
        inq: std::collections::VecDeque<Vec<u8>>,
        outq: Vec<Vec<u8>>,
    }

    impl Read for UdpIo {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.batched {
                return match self.inq.pop_front() {
                    Some(d) => {
                        let n = d.len().min(buf.len());
                        buf[..n].copy_from_slice(&d[..n]);
                        Ok(n)
                    }
                    None => Err(std::io::ErrorKind::WouldBlock.into()),
                };
            }
            match self.sock.recv(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(std::io::ErrorKind::WouldBlock.into()),
                r => r,
            }
        }
    }

    impl Write for UdpIo {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.batched {
                self.outq.push(buf.to_vec());
                return Ok(buf.len());
            }
            self.sock.send(buf)
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
        let mut attempt = ssl.connect(UdpIo { sock, batched: false, inq: Default::default(), outq: Vec::new() });
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
        s.get_ref().sock.set_read_timeout(Some(Duration::from_millis(50))).map_err(|err| err.to_string())?;
        Ok(Dtls { s })
    }

    /// The association in batched mode: the caller owns the socket I/O (see [`UdpIo`]).
    pub struct Batched {
        s: SslStream<UdpIo>,
    }

    impl Dtls {
        pub fn into_batched(mut self) -> Result<Batched, String> {
            let io = self.s.get_mut();
            io.batched = true;
            io.sock.set_nonblocking(true).map_err(|e| e.to_string())?;
            Ok(Batched { s: self.s })
        }
    }

    impl Batched {
        pub fn fd(&self) -> std::os::fd::RawFd {
            use std::os::fd::AsRawFd;
            self.s.get_ref().sock.as_raw_fd()
        }
        /// One record (type byte + payload) into the out queue.
        pub fn write_record(&mut self, kind: u8, payload: &[u8], scratch: &mut Vec<u8>) -> Result<(), String> {
            scratch.clear();
            scratch.push(kind);
            scratch.extend_from_slice(payload);
            self.s.ssl_write(scratch).map(|_| ()).map_err(|e| format!("DTLS write: {e}"))
        }
        /// Datagrams received from the socket, to be decrypted by [`Batched::read_record`].
        pub fn push_datagram(&mut self, d: Vec<u8>) {
            self.s.get_mut().inq.push_back(d);
        }
        /// The next decrypted record, `None` once the queued datagrams are used up.
        pub fn read_record(&mut self, buf: &mut [u8]) -> Result<Option<usize>, String> {
            loop {
                match self.s.ssl_read(buf) {
                    Ok(0) => continue,
                    Ok(n) => return Ok(Some(n)),
                    Err(err) if err.code() == ErrorCode::WANT_READ => return Ok(None),
                    Err(err) if err.code() == ErrorCode::ZERO_RETURN => return Err("DTLS closed by the gateway".into()),
                    // A damaged or replayed datagram is dropped by libssl without an error;
                    // anything else ends the benchmark.
                    Err(err) => return Err(format!("DTLS read: {err}")),
                }
            }
        }
        /// Takes the encrypted datagrams waiting to be sent.
        pub fn take_out(&mut self, into: &mut Vec<Vec<u8>>) {
            std::mem::swap(&mut self.s.get_mut().outq, into);
        }
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

/// `lab-acload --tunnel`: a benchmark client for one session, where openconnect would be the
/// bottleneck of a throughput test (one thread, one read/write system call per packet). The
/// same login and CONNECT as the load sessions (password group), then a TUN device in the
/// calling namespace carrying the session's address and split-include routes, with
/// virtio-net offloads (tun-rs: TSO super-packets from the kernel are split into MTU-sized
/// packets; packets toward the kernel are GRO-coalesced) and batched channel I/O:
/// - DTLS (PSK-NEGOTIATE): one thread TUN -> DTLS and one DTLS -> TUN; the association is
///   shared under a lock (libssl objects are not thread-safe), the datagrams go out with
///   sendmmsg and come in with recvmmsg, up to 64 per call, outside the lock;
/// - TLS (`--no-dtls`): one thread TUN -> CSTP frames, handed over in batches and written one
///   frame per TLS record (what ocserv requires) into a 256 KiB buffer under TLS, flushed once
///   per run of ready batches (many records per TCP write, as a kernel TLS sender or any
///   buffered client does; without it each record was a `send` and the client was the limit
///   of the client->inside row); the TLS reader takes many records per `recv` and writes
///   received packets to the TUN in batches.
///
/// ```text
/// lab-acload --tunnel --server IP:443 --servercert pin-sha256:B64 --user U --password PW
///            --tun NAME --ready-file FILE [--no-dtls] [--group RA]
/// ```
/// Writes `address=A mtu=M channel=DTLS|TLS` to the ready file once traffic can flow, then
/// runs until killed.
mod tunnel {
    use super::{establish_with, frame, parse_opts_from, Opts, DATA, DPD_REQ, DPD_RESP, KEEPALIVE};
    use std::os::fd::{AsRawFd, RawFd};
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const BATCH: usize = 64;
    const SLOT: usize = 2048;

    pub fn main(args: &[String]) -> Result<(), String> {
        let mut o = parse_opts_from(args)?;
        o.tls_buffers = (super::TLS_READ_BUFFER, super::TLS_WRITE_BUFFER);
        if super::opt(args, "--group").is_none() {
            o.group.clear();
        }
        let tun_name = super::opt(args, "--tun").ok_or("--tun NAME is required")?;
        let ready = super::opt(args, "--ready-file").ok_or("--ready-file FILE is required")?;
        let use_dtls = !args.iter().any(|a| a == "--no-dtls");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(run(o, tun_name, ready, use_dtls))
    }

    async fn run(o: Opts, tun_name: String, ready: String, use_dtls: bool) -> Result<(), String> {
        let conn = super::connector(&o, false)?;
        let t = establish_with(&o, &conn, true, use_dtls).await?;
        let mtu = if t.dtls.is_some() { t.dtls_mtu.or(t.cstp_mtu) } else { t.cstp_mtu }.unwrap_or(1300);
        let tun = tun_rs::DeviceBuilder::new()
            .name(&tun_name)
            .mtu(mtu as u16)
            .offload(true)
            .enable(true)
            .build_sync()
            .map_err(|e| format!("TUN {tun_name}: {e}"))?;
        let offset = if tun.tcp_gso() { tun_rs::VIRTIO_NET_HDR_LEN } else { 0 };
        let tun = Arc::new(tun);
        let ip = |args: &[&str]| -> Result<(), String> {
            let st = std::process::Command::new("ip").args(args).status().map_err(|e| format!("ip: {e}"))?;
            st.success().then_some(()).ok_or_else(|| format!("ip {} failed", args.join(" ")))
        };
        ip(&["addr", "add", &format!("{}/32", t.address), "dev", &tun_name])?;
        for net in &t.split_include {
            ip(&["route", "replace", net, "dev", &tun_name])?;
        }
        let channel = if t.dtls.is_some() { "DTLS" } else { "TLS" };
        let keepalive = t.keepalive;
        let (rd, mut wr) = tokio::io::split(t.tls);
        let leftover = t.leftover;
        // Frames for the TLS channel (uplink data in TLS mode, DPD answers, keepalives).
        let (tls_tx, mut tls_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
        let writer = tokio::spawn(async move {
            let mut ka = tokio::time::interval(keepalive);
            loop {
                tokio::select! {
                    f = tls_rx.recv() => {
                        let Some(mut f) = f else { return "uplink ended".to_string() };
                        // Every batch ready now goes into the buffer, then one flush: many
                        // records per TCP write (the same for both servers).
                        let mut queued = 0;
                        loop {
                            // One CSTP frame per TLS record: ocserv parses each record as exactly
                            // one frame ("error parsing CSTP data" otherwise), as openconnect sends.
                            let mut off = 0;
                            while off + 8 <= f.len() {
                                let end = (off + 8 + usize::from(u16::from_be_bytes([f[off + 4], f[off + 5]]))).min(f.len());
                                if let Err(e) = wr.write_all(&f[off..end]).await { return format!("TLS write: {e}") }
                                off = end;
                            }
                            queued += f.len();
                            if queued >= super::TLS_WRITE_BUFFER {
                                break;
                            }
                            match tls_rx.try_recv() {
                                Ok(next) => f = next,
                                Err(_) => break,
                            }
                        }
                        if let Err(e) = wr.flush().await { return format!("TLS write: {e}") }
                    }
                    _ = ka.tick() => {
                        if let Err(e) = wr.write_all(&frame(KEEPALIVE, &[])).await { return format!("TLS write: {e}") }
                        if let Err(e) = wr.flush().await { return format!("TLS write: {e}") }
                    }
                }
            }
        });
        let reader = {
            let (tun, tls_tx) = (tun.clone(), tls_tx.clone());
            tokio::spawn(async move { tls_reader(rd, leftover, tun, offset, tls_tx).await })
        };
        let uplink = match t.dtls {
            Some(d) => {
                let d = Arc::new(Mutex::new(d.into_batched()?));
                let fd = lock(&d).fd();
                let (tun2, d2) = (tun.clone(), d.clone());
                std::thread::spawn(move || dtls_downlink(d2, fd, tun2, offset));
                let tun2 = tun.clone();
                std::thread::spawn(move || uplink_dtls(tun2, offset, d, fd))
            }
            None => {
                let tun2 = tun.clone();
                std::thread::spawn(move || uplink_tls(tun2, offset, tls_tx))
            }
        };
        std::fs::write(&ready, format!("address={} mtu={mtu} channel={channel} tun-offload={}\n", t.address, offset > 0))
            .map_err(|e| format!("{ready}: {e}"))?;
        eprintln!("lab-acload --tunnel: up, address {} mtu {mtu} over {channel}, TUN offload {}", t.address, offset > 0);
        let why = tokio::select! {
            r = reader => r.unwrap_or_else(|e| e.to_string()),
            r = writer => r.unwrap_or_else(|e| e.to_string()),
            r = tokio::task::spawn_blocking(move || uplink.join()) => format!("uplink ended: {:?}", r.ok().and_then(|r| r.ok())),
        };
        Err(format!("tunnel ended: {why}"))
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait_readable(fd: RawFd) -> bool {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd on the stack; the caller keeps `fd` open.
        unsafe { libc::poll(&mut pfd, 1, 200) > 0 }
    }

    /// Reads what the TUN has queued (up to a batch): packets in `bufs[..n]`, starting at 0.
    struct TunIn {
        original: Vec<u8>,
        bufs: Vec<Vec<u8>>,
        sizes: Vec<usize>,
    }

    impl TunIn {
        fn new() -> Self {
            TunIn {
                original: vec![0u8; tun_rs::VIRTIO_NET_HDR_LEN + 65536],
                bufs: vec![vec![0u8; SLOT]; 2 * tun_rs::IDEAL_BATCH_SIZE],
                sizes: vec![0; 2 * tun_rs::IDEAL_BATCH_SIZE],
            }
        }
        fn read(&mut self, tun: &tun_rs::SyncDevice, offload: bool) -> usize {
            if !wait_readable(tun.as_raw_fd()) {
                return 0;
            }
            let mut n = 0;
            while n < self.bufs.len() {
                let r = if offload {
                    if self.bufs.len() - n < tun_rs::IDEAL_BATCH_SIZE && n > 0 {
                        break;
                    }
                    tun.recv_multiple(&mut self.original, &mut self.bufs[n..], &mut self.sizes[n..], 0)
                } else {
                    tun.recv(&mut self.bufs[n]).map(|k| {
                        self.sizes[n] = k;
                        1
                    })
                };
                match r {
                    Ok(k) => n += k,
                    Err(_) => break,
                }
            }
            n
        }
        fn packet(&self, i: usize) -> &[u8] {
            &self.bufs[i][..self.sizes[i]]
        }
    }

    /// Packets toward the TUN, written with one `send_multiple` (GRO-coalesced) per batch.
    struct TunOut {
        bufs: Vec<Vec<u8>>,
        n: usize,
        offset: usize,
        gro: tun_rs::GROTable,
    }

    impl TunOut {
        fn new(offset: usize) -> Self {
            TunOut { bufs: Vec::new(), n: 0, offset, gro: tun_rs::GROTable::default() }
        }
        fn push(&mut self, p: &[u8]) {
            if self.n == self.bufs.len() {
                self.bufs.push(Vec::with_capacity(self.offset + 65536));
            }
            let b = &mut self.bufs[self.n];
            b.clear();
            // All-zero virtio-net header: no GSO, checksums complete.
            b.resize(self.offset, 0);
            b.extend_from_slice(p);
            self.n += 1;
        }
        fn flush(&mut self, tun: &tun_rs::SyncDevice) {
            if self.n == 0 {
                return;
            }
            if self.offset > 0 {
                let _ = tun.send_multiple(&mut self.gro, &mut self.bufs[..self.n], self.offset);
            } else {
                for b in &self.bufs[..self.n] {
                    let _ = tun.send(b);
                }
            }
            self.n = 0;
        }
    }

    fn uplink_tls(tun: Arc<tun_rs::SyncDevice>, offset: usize, tx: tokio::sync::mpsc::Sender<Vec<u8>>) -> String {
        let _ = tun.set_nonblocking(true);
        let mut tin = TunIn::new();
        loop {
            let n = tin.read(&tun, offset > 0);
            if n == 0 {
                continue;
            }
            let mut out = Vec::with_capacity(n * 1450);
            for i in 0..n {
                let p = tin.packet(i);
                out.extend_from_slice(b"STF\x01");
                out.extend_from_slice(&(p.len() as u16).to_be_bytes());
                out.extend_from_slice(&[DATA, 0]);
                out.extend_from_slice(p);
            }
            if tx.blocking_send(out).is_err() {
                return "TLS writer gone".into();
            }
        }
    }

    fn uplink_dtls(tun: Arc<tun_rs::SyncDevice>, offset: usize, d: Arc<Mutex<super::dtls::Batched>>, fd: RawFd) -> String {
        let _ = tun.set_nonblocking(true);
        let mut tin = TunIn::new();
        let mut scratch = Vec::with_capacity(SLOT);
        let mut out = Vec::new();
        loop {
            let n = tin.read(&tun, offset > 0);
            if n == 0 {
                continue;
            }
            {
                let mut g = lock(&d);
                for i in 0..n {
                    if let Err(e) = g.write_record(DATA, tin.packet(i), &mut scratch) {
                        return e;
                    }
                }
                g.take_out(&mut out);
            }
            send_all(fd, &mut out);
        }
    }

    /// DTLS -> TUN: recvmmsg outside the lock, decrypt under it, answer DPD, write the TUN.
    fn dtls_downlink(d: Arc<Mutex<super::dtls::Batched>>, fd: RawFd, tun: Arc<tun_rs::SyncDevice>, offset: usize) -> String {
        let mut rx = vec![[0u8; SLOT]; BATCH];
        let mut lens = [0usize; BATCH];
        let mut rec = vec![0u8; SLOT];
        let mut scratch = Vec::with_capacity(SLOT);
        let mut tout = TunOut::new(offset);
        let mut out = Vec::new();
        loop {
            if !wait_readable(fd) {
                continue;
            }
            let n = recv_batch(fd, &mut rx, &mut lens);
            if n == 0 {
                continue;
            }
            {
                let mut g = lock(&d);
                for i in 0..n {
                    g.push_datagram(rx[i][..lens[i]].to_vec());
                }
                loop {
                    match g.read_record(&mut rec) {
                        Ok(Some(k)) => match rec[0] {
                            DATA => tout.push(&rec[1..k]),
                            DPD_REQ => {
                                rec[0] = DPD_RESP;
                                if let Err(e) = g.write_record(DPD_RESP, &rec[1..k], &mut scratch) {
                                    return e;
                                }
                            }
                            _ => {}
                        },
                        Ok(None) => break,
                        Err(e) => return e,
                    }
                }
                g.take_out(&mut out);
            }
            send_all(fd, &mut out);
            tout.flush(&tun);
        }
    }

    /// sendmmsg(2) of every datagram in `q` (a full socket buffer drops the rest, like a
    /// congested link), then clears `q`.
    fn send_all(fd: RawFd, q: &mut Vec<Vec<u8>>) {
        let mut done = 0;
        while done < q.len() {
            let chunk = &q[done..q.len().min(done + BATCH)];
            let mut iov: Vec<libc::iovec> = chunk.iter().map(|d| libc::iovec { iov_base: d.as_ptr() as *mut _, iov_len: d.len() }).collect();
            // SAFETY: zeroed mmsghdr is a valid "no name, no control" header.
            let mut hdrs: Vec<libc::mmsghdr> = (0..chunk.len()).map(|_| unsafe { std::mem::zeroed() }).collect();
            for (h, v) in hdrs.iter_mut().zip(iov.iter_mut()) {
                h.msg_hdr.msg_iov = v;
                h.msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: `hdrs` points at `iov`, which points at the datagrams in `q`; all outlive
            // the call; the socket is connected, so no address is needed.
            let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), hdrs.len() as libc::c_uint, 0) };
            if r <= 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock {
                    let mut pfd = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
                    // SAFETY: one valid pollfd on the stack.
                    unsafe { libc::poll(&mut pfd, 1, 50) };
                    continue;
                }
                break;
            }
            done += r as usize;
        }
        q.clear();
    }

    /// recvmmsg(2) of up to a batch of datagrams (non-blocking).
    fn recv_batch(fd: RawFd, rx: &mut [[u8; SLOT]], lens: &mut [usize]) -> usize {
        let mut iov: Vec<libc::iovec> = rx.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr() as *mut _, iov_len: SLOT }).collect();
        // SAFETY: zeroed mmsghdr is a valid "no name, no control" header.
        let mut hdrs: Vec<libc::mmsghdr> = (0..iov.len()).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (h, v) in hdrs.iter_mut().zip(iov.iter_mut()) {
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at one iovec of a SLOT-byte buffer in `rx`; all outlive
        // the call; MSG_DONTWAIT never blocks.
        let r = unsafe { libc::recvmmsg(fd, hdrs.as_mut_ptr(), hdrs.len() as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if r <= 0 {
            return 0;
        }
        for (l, h) in lens.iter_mut().zip(&hdrs).take(r as usize) {
            *l = h.msg_len as usize;
        }
        r as usize
    }

    /// TLS -> TUN: CSTP frames from the TLS stream; DATA to the TUN in batches (one per read),
    /// DPD answered.
    async fn tls_reader(
        mut rd: tokio::io::ReadHalf<super::Tls>,
        mut buf: Vec<u8>,
        tun: Arc<tun_rs::SyncDevice>,
        offset: usize,
        tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    ) -> String {
        let mut tout = TunOut::new(offset);
        let mut chunk = vec![0u8; 65536];
        let mut start = 0;
        loop {
            while buf.len() - start >= 8 {
                let b = &buf[start..];
                if &b[..4] != b"STF\x01" {
                    return "bad CSTP framing from the gateway".into();
                }
                let len = u16::from_be_bytes([b[4], b[5]]) as usize;
                if b.len() < 8 + len {
                    break;
                }
                match b[6] {
                    DATA => tout.push(&b[8..8 + len]),
                    DPD_REQ => {
                        let _ = tx.send(frame(DPD_RESP, &b[8..8 + len])).await;
                    }
                    super::DISCONNECT | super::TERMINATE => return "the gateway ended the session".into(),
                    _ => {}
                }
                start += 8 + len;
            }
            buf.drain(..start);
            start = 0;
            // Write the TUN batch only when no more TLS data is ready at once (a gateway
            // sends one frame per record, so one read is often one packet): the batch then
            // holds a whole burst, which GRO coalesces.
            let ready = tokio::select! {
                biased;
                r = rd.read(&mut chunk) => Some(r),
                _ = std::future::ready(()) => None,
            };
            let r = match ready {
                Some(r) if tout.n < 256 => r,
                other => {
                    tout.flush(&tun);
                    match other {
                        Some(r) => r,
                        None => rd.read(&mut chunk).await,
                    }
                }
            };
            match r {
                Ok(0) => return "gateway closed the TLS connection".into(),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return format!("TLS read: {e}"),
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

    /// A self-signed EC certificate and its key, made with libssl.
    fn self_signed() -> (openssl::x509::X509, openssl::pkey::PKey<openssl::pkey::Private>) {
        use openssl::{asn1::Asn1Time, ec::*, hash::MessageDigest, nid::Nid, pkey::PKey, x509::*};
        let key = PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "vpn.example").unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        (b.build(), key)
    }

    /// A real TLS server on loopback: the right pin connects, a wrong pin is refused with a
    /// message naming both pins; the CA-file mode refuses a certificate from no trusted CA.
    #[test]
    fn server_certificate_is_verified_by_pin_or_ca() {
        use openssl::ssl::SslAcceptor;
        let (cert, key) = self_signed();
        let pin = cert_pin(&cert).unwrap();
        assert_eq!(parse_pin(&pin_text(&pin)).unwrap(), pin, "pin text round-trips");
        assert!(parse_pin("sha256:abcd").is_err(), "only the pin-sha256: form");
        assert!(parse_pin("pin-sha256:YWJj").is_err(), "a pin has 32 bytes");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut acc = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
        acc.set_certificate(&cert).unwrap();
        acc.set_private_key(&key).unwrap();
        let acc = acc.build();
        let server = std::thread::spawn(move || {
            for s in listener.incoming().take(3).flatten() {
                // The client may drop the connection right after the handshake.
                if let Ok(mut tls) = acc.accept(s) {
                    let mut b = [0u8; 1];
                    let _ = std::io::Read::read(&mut tls, &mut b);
                }
            }
        });
        let base = parse_opts_from(&["--server".into(), addr.to_string(), "--servercert".into(), pin_text(&pin)]).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let good = connector(&base, false).unwrap();
            tls_connect(addr, &good, &base.server_check, base.tls_buffers).await.expect("the pinned certificate is accepted");
            let mut wrong = pin;
            wrong[0] ^= 1;
            let err = tls_connect(addr, &good, &ServerCheck::Pin(wrong), base.tls_buffers).await.err().expect("a wrong pin is refused");
            assert!(err.contains("mismatch") && err.contains(&pin_text(&pin)) && err.contains(&pin_text(&wrong)), "{err}");
            // CA mode with a CA file that does not hold the server's (self-signed) certificate.
            let (other, _) = self_signed();
            let ca = std::env::temp_dir().join(format!("acload-test-ca-{}.pem", std::process::id()));
            std::fs::write(&ca, other.to_pem().unwrap()).unwrap();
            let mut o = base.clone();
            o.server_check = ServerCheck::CaFile(ca.to_string_lossy().into_owned());
            let strict = connector(&o, false).unwrap();
            let err = tls_connect(addr, &strict, &o.server_check, o.tls_buffers).await.err().expect("an untrusted certificate is refused");
            assert!(err.contains("certificate verify failed"), "{err}");
            let _ = std::fs::remove_file(&ca);
        });
        server.join().unwrap();
        assert!(parse_opts_from(&["--server".into(), addr.to_string()]).unwrap_err().contains("always verified"), "no check at all is refused");
    }

    #[test]
    fn frame_header_is_cstp() {
        let f = frame(DPD_RESP, &[1, 2, 3]);
        assert_eq!(&f[..8], &[b'S', b'T', b'F', 1, 0, 3, DPD_RESP, 0]);
        assert_eq!(&f[8..], &[1, 2, 3]);
    }
}
