//! `holdfast-ra`: the remote-access service on its own, for the lab tests until the daemon
//! starts it from the ASA configuration. Runs until SIGINT/SIGTERM, then removes its routes.
//!
//! ```text
//! holdfast-ra --listen IP:PORT --cert FILE --key FILE [--ca FILE] [--tun NAME]
//!             --user NAME:PASSWORD ... --pool FIRST-LAST/PREFIX
//!             [--split NET/PREFIX ...] [--mtu N] [--dpd SECONDS] [--no-dtls]
//!             [--cert-group NAME] [--dtls-port N]
//! ```
//! Prints `ready <tls address>` on stdout once listening.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyconnect::{AddressPool, AuthMethod, GroupPolicy, Ipv4Net, TunnelGroup, User};
use gateway::ra::{self, tls::HandshakeLimits, RaConfig};
use gateway::syslog::{Syslog, SyslogConfig};

fn main() {
    if let Err(e) = run() {
        eprintln!("holdfast-ra: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let mut listen: Option<SocketAddr> = None;
    let (mut cert, mut key, mut ca) = (None, None, None);
    let mut tun = "hfra0".to_string();
    let mut users = Vec::new();
    let mut pool: Option<AddressPool> = None;
    let mut policy = GroupPolicy::default();
    let mut dtls_port = None;
    let mut cert_group = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => listen = Some(val()?.parse().map_err(|e| format!("--listen: {e}"))?),
            "--cert" => cert = Some(PathBuf::from(val()?)),
            "--key" => key = Some(PathBuf::from(val()?)),
            "--ca" => ca = Some(PathBuf::from(val()?)),
            "--tun" => tun = val()?,
            "--user" => {
                let v = val()?;
                let (name, pw) = v.split_once(':').ok_or("--user NAME:PASSWORD")?;
                let hash = crypto::password::hash_with(pw, &mut crypto::OsRandom::new(), 1000).encode();
                users.push(User { name: name.into(), password_hash: hash });
            }
            "--pool" => {
                let v = val()?;
                let (range, prefix) = v.split_once('/').ok_or("--pool FIRST-LAST/PREFIX")?;
                let (first, last) = range.split_once('-').ok_or("--pool FIRST-LAST/PREFIX")?;
                let prefix: u8 = prefix.parse().map_err(|e| format!("--pool prefix: {e}"))?;
                let first: Ipv4Addr = first.parse().map_err(|e| format!("--pool: {e}"))?;
                let last: Ipv4Addr = last.parse().map_err(|e| format!("--pool: {e}"))?;
                let mask = Ipv4Net { addr: first, prefix }.netmask();
                pool = Some(AddressPool { first, last, mask });
            }
            "--split" => {
                let v = val()?;
                let (n, p) = v.split_once('/').ok_or("--split NET/PREFIX")?;
                policy.split_include.push(Ipv4Net {
                    addr: n.parse().map_err(|e| format!("--split: {e}"))?,
                    prefix: p.parse().map_err(|e| format!("--split: {e}"))?,
                });
            }
            "--mtu" => policy.mtu = Some(val()?.parse().map_err(|e| format!("--mtu: {e}"))?),
            "--dpd" => {
                let s: u64 = val()?.parse().map_err(|e| format!("--dpd: {e}"))?;
                policy.dpd_client = Some(Duration::from_secs(s));
                policy.dpd_gateway = Some(Duration::from_secs(s));
            }
            "--no-dtls" => policy.dtls = false,
            "--dtls-port" => dtls_port = Some(val()?.parse().map_err(|e| format!("--dtls-port: {e}"))?),
            "--cert-group" => cert_group = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let listen = listen.ok_or("--listen is required")?;
    let cert = cert.ok_or("--cert is required")?;
    let key = key.ok_or("--key is required")?;
    let pool = pool.ok_or("--pool is required")?;

    let mut engine = anyconnect::Config {
        users,
        pools: BTreeMap::from([("VPNPOOL".to_string(), pool)]),
        group_policies: BTreeMap::from([("ac_users_group".to_string(), policy)]),
        tunnel_groups: vec![TunnelGroup {
            name: "RA".into(),
            aliases: vec!["RA".into()],
            default_group_policy: "ac_users_group".into(),
            address_pools: vec!["VPNPOOL".into()],
            authentication: AuthMethod::Aaa,
        }],
        ..Default::default()
    };
    if cert_group {
        engine.tunnel_groups.push(TunnelGroup {
            name: "CERT".into(),
            aliases: vec!["CERT".into()],
            default_group_policy: "ac_users_group".into(),
            address_pools: vec!["VPNPOOL".into()],
            authentication: AuthMethod::Certificate,
        });
    }
    engine.dtls_port = dtls_port.unwrap_or(listen.port());
    engine.server_cert_sha1 = gateway::daemon::server_cert_sha1(&cert).map_err(|e| e.to_string())?;
    engine.verifier = Arc::new(|hash: &str, pw: &[u8]| match std::str::from_utf8(pw) {
        Ok(p) => crypto::password::verify(hash, p).unwrap_or(false),
        Err(_) => false,
    });

    let syslog = Arc::new(Syslog::new(SyslogConfig {
        enabled: false,
        hosts: Vec::new(),
        trap_level: 7,
        buffered_level: 7,
        timestamp: false,
        stderr: true,
    }));
    let signals = block_signals();
    let handle = ra::spawn(RaConfig {
        listen,
        cert_file: cert,
        key_file: key,
        ca_file: ca,
        tun_name: tun,
        engine,
        handshake: HandshakeLimits::default(),
        http_idle: Duration::from_secs(30),
        syslog,
        flows: None,
        state_dir: None,
    })
    .map_err(|e| e.to_string())?;
    println!("ready {}", handle.tls_addr());

    wait_for_signal(&signals);
    eprintln!("holdfast-ra: stopping; io stats {:?}", handle.io_stats());
    handle.shutdown();
    Ok(())
}

/// Blocks SIGINT and SIGTERM in this thread, before any other thread exists, so that every
/// thread inherits the mask and the signals wait for [`wait_for_signal`] instead of killing
/// the process without cleanup.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; the pointers
    // passed are to locals that outlive the calls.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for one of the signals in `set` (blocked by [`block_signals`]).
fn wait_for_signal(set: &libc::sigset_t) {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is an initialised sigset_t and `sig` a valid place for the result.
    unsafe {
        libc::sigwait(set, &mut sig);
    }
}
