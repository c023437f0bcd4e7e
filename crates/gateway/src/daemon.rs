//! The control plane: one task owning the `ike::Endpoint`, fed by the UDP 500 sockets, IKE
//! messages the RX thread found on UDP 4500, acquires from the TX thread and control-socket
//! commands. After every `handle_*` it drains transmits, then events, then re-arms the timer
//! (DESIGN.md). Events become SA installs in the shared SAD, ASA syslog and `show` state.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use policy::{ConnectionType, TrafficSelector, TunnelPolicy};
use tokio::sync::{mpsc, oneshot};

use crate::clock;
use crate::control::{self, LogoffTarget, Request, SessionFilter};
use crate::datapath::{self, Outside, Shared, ToControl};
use crate::flows::{self, SharedEngine, StateDir};
use crate::metrics;
use crate::ra::{self, RaConfig, RaHandle};
use crate::reload;
use crate::watch;
use crate::net::{self, SystemGuard};
use crate::sad::{ChildOut, Counters, Dest, InboundEntry, OutboundEntry, Sad, SadCell, SpdEntry};
use crate::show::{self, ChildSummary, IkeSaView, IpsecSaView};
use crate::syslog::{self, Direction, RateLimiter, Syslog, SyslogConfig};

/// How long a replaced or deleted inbound SA keeps accepting packets still in flight
/// (ipsec-peer.md §2: install inbound first, switch outbound, keep the old inbound a few seconds).
pub const INBOUND_LINGER: Duration = Duration::from_secs(5);
/// How often traffic totals and inbound activity are reported to the IKE engine.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// See `late_replays`: a few initiator round trips on a WAN, well under the 0.3 s resume target.
pub const LATE_REPLAY: Duration = Duration::from_millis(150);
/// RFC 3948 §4: the side behind a NAT sends a one-byte 0xFF keepalive on UDP 4500 so the NAT
/// mapping survives idle periods; 20 s is the customary interval.
pub const NAT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// Largest TUN MTU: the data path's per-packet buffers are sized for an ESP packet built from
/// an inner packet of at most this size (and the outside links are Ethernet-sized anyway).
pub const MAX_TUN_MTU: u16 = 1800;

/// How often the control task runs the connection table's timers, the tunnel-down grace
/// timers and the periodic snapshot.
pub const FLOW_TICK: Duration = Duration::from_millis(100);

/// `holdfast run` options besides the configuration.
#[derive(Debug, Clone)]
pub struct Options {
    pub control: PathBuf,
    pub tun_name: String,
    pub tun_mtu: u16,
    pub offload: bool,
    /// Where the connection table is saved across restarts (created mode 0700).
    pub state_dir: PathBuf,
    /// The remote-access TUN (AnyConnect client addresses are routed into it), kept apart
    /// from the site-to-site one.
    pub ra_tun_name: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            control: PathBuf::from(control::DEFAULT_SOCKET),
            tun_name: "hf0".into(),
            tun_mtu: 1400,
            offload: true,
            state_dir: PathBuf::from(flows::DEFAULT_STATE_DIR),
            ra_tun_name: "hfra0".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("configuration: {0}")]
    Config(#[from] policy::ResolveError),
    #[error("{what}: {err}")]
    Io { what: String, err: io::Error },
    #[error("TUN MTU {0} out of range (576..={MAX_TUN_MTU})")]
    Mtu(u16),
    #[error("certificate authentication: {0}")]
    CertAuth(#[from] ike::cert_auth::CertAuthError),
    #[error("control socket {0} is in use by a running daemon")]
    AlreadyRunning(PathBuf),
    #[error("remote access: {0}")]
    RemoteAccess(String),
    #[error("remote access: {0}")]
    Ra(#[from] ra::RaError),
}

fn io_ctx(what: impl Into<String>) -> impl FnOnce(io::Error) -> DaemonError {
    let what = what.into();
    move |err| DaemonError::Io { what, err }
}

/// `show conn` / `show --json conn` listings (not `count`): the table is copied a slice per
/// engine-lock hold and formatted on a blocking thread, because formatting a large table takes
/// long (about 1 s at 1 M conns) and the control task also drives IKE and the timers.
/// Commands from one control connection are still answered in order: its client waits for
/// each answer before it sends the next command.
#[derive(Debug, Clone, Copy)]
enum ConnListing {
    Text { view: control::ConnView, address: Option<Ipv4Addr> },
    Json { address: Option<Ipv4Addr> },
}

impl ConnListing {
    fn of(req: &Request) -> Option<Self> {
        match req {
            Request::ShowConn { view: control::ConnView::Count, .. } => None,
            Request::ShowConn { view, address } => Some(Self::Text { view: *view, address: *address }),
            Request::Json(inner) => match **inner {
                Request::ShowConn { view: control::ConnView::Count, .. } => None,
                Request::ShowConn { address, .. } => Some(Self::Json { address }),
                _ => None,
            },
            _ => None,
        }
    }

    fn answer(self, shared: &flows::Shared) -> String {
        let now = clock::now();
        match self {
            Self::Text { view, address } => flows::show_conn(shared, now, view, address),
            Self::Json { address } => {
                let mut copy = shared.copy_table(flows::COPY_SLICE_SLOTS);
                show::conn_json_copy(&copy.meta, now, address, &mut copy.conns)
            }
        }
    }

    fn answer_off_task(self, shared: SharedEngine, reply: oneshot::Sender<String>) {
        // One listing at a time: each holds a copy of the whole table (~64 MB at 1 M conns),
        // and two walks would interleave their lock slices ahead of the data path.
        static ONE_AT_A_TIME: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
        tokio::spawn(async move {
            let _permit = ONE_AT_A_TIME.acquire().await;
            let text = tokio::task::spawn_blocking(move || self.answer(&shared))
                .await
                .unwrap_or_else(|e| format!("ERROR: the connection listing failed: {e}\n"));
            let _ = reply.send(text);
        });
    }
}

/// Messages into the control task from the control socket.
pub struct ControlRequest {
    pub req: Request,
    pub reply: oneshot::Sender<String>,
}

/// Runs the gateway in the foreground until SIGINT/SIGTERM. Everything it adds to the system
/// (routes, TUN, forwarding, socket file) is removed on return, also on error.
pub fn run(cfg: policy::Config, opts: Options) -> Result<(), DaemonError> {
    run_reloadable(cfg, opts, None, false)
}

/// [`run`], remembering the configuration file it was loaded from (and whether with
/// `--strict`): `holdfast reload` and SIGHUP read that file again (docs/reload.md). Without a
/// file a plain reload is refused; `reload config FILE` still works.
pub fn run_reloadable(cfg: policy::Config, opts: Options, config_file: Option<PathBuf>, strict: bool) -> Result<(), DaemonError> {
    run_with_syslog(cfg, opts, config_file, strict, Box::new(io::stderr()))
}

/// [`run_reloadable`] with the stderr copies of the syslog lines written to `stderr_sink`
/// (tests read them from a pipe). The logger exists before anything can fail, and whatever
/// way this returns, an error is logged (199900) and the queue is flushed before the caller
/// sees the result: the lines that explain a failure are the ones that must not be lost.
pub fn run_with_syslog(
    cfg: policy::Config,
    opts: Options,
    config_file: Option<PathBuf>,
    strict: bool,
    stderr_sink: Box<dyn io::Write + Send>,
) -> Result<(), DaemonError> {
    let log = Arc::new(Syslog::with_stderr_sink(SyslogConfig::from_policy(&cfg.logging), stderr_sink));
    // Declared first, dropped last: also flushes when a panic unwinds through here.
    let _flush = syslog::FlushOnDrop(log.clone());
    let r = start_and_run(cfg, opts, config_file, strict, log.clone());
    if let Err(e) = &r {
        log.log(syslog::daemon_stopped(&e.to_string()));
    }
    r
}

fn start_and_run(
    cfg: policy::Config,
    opts: Options,
    config_file: Option<PathBuf>,
    strict: bool,
    syslog: Arc<Syslog>,
) -> Result<(), DaemonError> {
    let resolved = cfg.tunnels_with_auth()?;
    let tunnels: Vec<TunnelPolicy> = resolved.iter().map(|t| t.policy.clone()).collect();
    if !(576..=MAX_TUN_MTU).contains(&opts.tun_mtu) {
        return Err(DaemonError::Mtu(opts.tun_mtu));
    }
    // The engine and its certificate material before anything in the system changes: a
    // missing or mismatched trustpoint file is a configuration error (docs/certificates.md §4).
    let mut endpoint = ike::Endpoint::new(tunnels.clone(), cfg.ikev2.clone(), Box::new(crypto::OsRandom::default()));
    ike::cert_auth::install(&mut endpoint, &resolved)?;
    warn_identity(&resolved);
    // Remote access: listeners, certificate and key (loaded and matched here, so a bad
    // trustpoint file stops the start before any TUN, route or socket exists).
    let ra_plan = plan_remote_access(&cfg)?;
    if ra_plan.is_some() && opts.ra_tun_name == opts.tun_name {
        return Err(DaemonError::RemoteAccess(format!("the remote-access TUN must differ from the site-to-site TUN ({})", opts.tun_name)));
    }
    endpoint.set_wall_clock(clock::now(), clock::wall_now());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_ctx("tokio runtime"))?;
    rt.block_on(async_run(cfg, tunnels, endpoint, opts, ra_plan, (config_file, strict), syslog))
}

/// What the remote-access service will run with: resolved from the configuration and with
/// its certificate material already checked.
pub struct RaPlan {
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: Option<PathBuf>,
    pub engine: anyconnect::Config,
}

/// `webvpn` / `anyconnect enable` / `ssl trust-point` resolved to one TLS+DTLS listener, and
/// the trustpoint's certificate and key loaded and checked against each other (and the
/// client CA, when a tunnel group authenticates by certificate). `None` without remote
/// access. Loads files only; changes nothing in the system.
pub fn plan_remote_access(cfg: &policy::Config) -> Result<Option<RaPlan>, DaemonError> {
    let listeners = cfg.anyconnect_listeners()?;
    let Some(first) = listeners.first() else { return Ok(None) };
    // One engine serves every session (one address pool space, one session database);
    // several `enable NAMEIF` lines with different addresses are served on all addresses.
    let addr = if listeners.iter().all(|l| l.addr == first.addr) { first.addr } else { Ipv4Addr::UNSPECIFIED };
    for l in &listeners[1..] {
        if (l.tls_port, l.dtls_port, &l.certificate_file, &l.key_file) != (first.tls_port, first.dtls_port, &first.certificate_file, &first.key_file) {
            eprintln!(
                "holdfast: warning: webvpn on {}: one remote-access listener serves every interface; it uses trustpoint {} and the ports of {}",
                l.nameif, first.trustpoint, first.nameif
            );
        }
    }
    let cert_file = PathBuf::from(&first.certificate_file);
    let key_file = PathBuf::from(&first.key_file);
    let groups = cfg.anyconnect_groups();
    let wants_certs = groups.iter().any(|g| g.authentication != policy::RaAuthentication::Aaa);
    let ca_file = if wants_certs {
        let ca = groups.iter().flat_map(|g| g.client_ca_files.iter()).next().ok_or_else(|| {
            DaemonError::RemoteAccess("a tunnel group authenticates by certificate but no trustpoint has a ca-file".into())
        })?;
        Some(PathBuf::from(ca))
    } else {
        None
    };
    check_trustpoint_files(&first.trustpoint, &cert_file, &key_file, ca_file.as_deref())?;
    // The same loads `ra::spawn` does, without binding anything (anything the readable
    // checks above let through that OpenSSL still refuses is reported in its words).
    ra::tls::server_context(&cert_file, &key_file, ca_file.as_deref()).map_err(ra::RaError::from)?;
    ra::dtls::DtlsServer::new(&cert_file, &key_file).map_err(ra::RaError::from)?;
    let mut engine = anyconnect::config_from_policy(cfg);
    engine.dtls_port = first.dtls_port;
    engine.server_cert_sha1 = server_cert_sha1(&cert_file)?;
    if engine.tunnel_groups.is_empty() {
        return Err(DaemonError::RemoteAccess("anyconnect is enabled but no remote-access tunnel-group is configured".into()));
    }
    Ok(Some(RaPlan { listen: SocketAddr::new(IpAddr::V4(addr), first.tls_port), cert_file, key_file, ca_file, engine }))
}

/// Upper-case hex SHA-1 of the DER of the first (leaf) certificate in `cert`: the
/// `server-cert-hash` and `webvpnc` `sh:` value Cisco clients pin the gateway by (what the
/// ASA and ocserv send). Called at start and on every reload, which reads the file again.
pub fn server_cert_sha1(cert: &std::path::Path) -> Result<String, DaemonError> {
    let err = |what: String| DaemonError::RemoteAccess(format!("certificate-file {}: {what}", cert.display()));
    let pem = std::fs::read(cert).map_err(|e| err(e.to_string()))?;
    let chain = openssl::x509::X509::stack_from_pem(&pem).map_err(|_| err("not a PEM certificate".into()))?;
    let leaf = chain.first().ok_or_else(|| err("no certificate in it".into()))?;
    let d = leaf.digest(openssl::hash::MessageDigest::sha1()).map_err(|e| err(e.to_string()))?;
    Ok(d.iter().map(|b| format!("{b:02X}")).collect())
}

/// The trustpoint's files in the operator's terms: each one readable and PEM of the right
/// kind, and the key the private half of the certificate's public key.
fn check_trustpoint_files(tp: &str, cert: &std::path::Path, key: &std::path::Path, ca: Option<&std::path::Path>) -> Result<(), DaemonError> {
    let err = |what: String| DaemonError::RemoteAccess(format!("crypto ca trustpoint {tp}: {what}"));
    let read = |kind: &str, p: &std::path::Path| std::fs::read(p).map_err(|e| err(format!("{kind} {}: {e}", p.display())));
    let cert_pem = read("certificate-file", cert)?;
    let key_pem = read("key-file", key)?;
    let chain = openssl::x509::X509::stack_from_pem(&cert_pem)
        .map_err(|_| err(format!("certificate-file {}: not a PEM certificate", cert.display())))?;
    let leaf = chain.first().ok_or_else(|| err(format!("certificate-file {}: no certificate in it", cert.display())))?;
    let pkey = openssl::pkey::PKey::private_key_from_pem(&key_pem)
        .map_err(|_| err(format!("key-file {}: not a PEM private key (or it is encrypted)", key.display())))?;
    let public = leaf.public_key().map_err(|e| err(format!("certificate-file {}: {e}", cert.display())))?;
    if !public.public_eq(&pkey) {
        return Err(err(format!("key-file {} does not match certificate-file {}", key.display(), cert.display())));
    }
    if let Some(ca) = ca {
        let pem = read("ca-file", ca)?;
        let cas = openssl::x509::X509::stack_from_pem(&pem).map_err(|_| err(format!("ca-file {}: not a PEM certificate", ca.display())))?;
        if cas.is_empty() {
            return Err(err(format!("ca-file {}: no certificate in it", ca.display())));
        }
    }
    Ok(())
}

/// `holdfast check`: resolves the tunnels with their authentication and loads every
/// certificate, key and CA file they name, as `run` would. Returns how many tunnels use
/// certificates, and the identity warnings.
pub fn check_certificates(cfg: &policy::Config) -> Result<usize, DaemonError> {
    let resolved = cfg.tunnels_with_auth()?;
    let mut n = 0;
    for t in resolved.iter().filter(|t| t.auth.uses_certificates()) {
        ike::cert_auth::CertAuth::load(&t.auth)?;
        n += 1;
    }
    warn_identity(&resolved);
    plan_remote_access(cfg)?;
    Ok(n)
}

/// The engine sends ID_IPV4_ADDR with our outside address; a peer validating our certificate
/// refuses it unless the certificate names that address (docs/certificates.md §4).
fn warn_identity(resolved: &[policy::ResolvedTunnel]) {
    for t in resolved.iter().filter(|t| t.auth.uses_certificates()) {
        let Ok(material) = ike::cert_auth::CertAuth::load(&t.auth) else { continue };
        if let Some(signer) = &material.local {
            let id = crypto::sig::Identity::Ipv4(match t.policy.local_addr {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => continue,
            });
            if let Err(e) = signer.check_own_identity(&id) {
                eprintln!("holdfast: warning: tunnel {}: {e}", t.policy.name);
            }
        }
    }
}

async fn async_run(
    cfg: policy::Config,
    tunnels: Vec<TunnelPolicy>,
    endpoint: ike::Endpoint,
    opts: Options,
    ra_plan: Option<RaPlan>,
    (config_file, strict): (Option<PathBuf>, bool),
    syslog: Arc<Syslog>,
) -> Result<(), DaemonError> {
    let mut guard = SystemGuard::default();

    // Control socket first: a second daemon on the same socket must fail before touching anything.
    let listener = bind_control(&opts.control, &mut guard)?;
    // The metrics listener too (holdfast extension `metrics prometheus listen`): a taken port
    // is a configuration error to report before anything else changes.
    let metrics_listener = match cfg.metrics {
        Some(m) => {
            let l = std::net::TcpListener::bind(m.listen).map_err(io_ctx(format!("metrics listen {}", m.listen)))?;
            l.set_nonblocking(true).map_err(io_ctx("metrics listener"))?;
            Some(tokio::net::TcpListener::from_std(l).map_err(io_ctx("metrics listener"))?)
        }
        None => None,
    };

    // Outside sockets, one set per distinct local address of the tunnels.
    let mut locals: Vec<Ipv4Addr> = Vec::new();
    for t in &tunnels {
        if let IpAddr::V4(a) = t.local_addr {
            if !locals.contains(&a) {
                locals.push(a);
            }
        }
    }
    let (to_ctl, mut from_data) = datapath::control_queue(Some(syslog.clone()));
    let mut outsides = Vec::new();
    let mut ike500 = Vec::new();
    for a in &locals {
        let s500 = net::udp_socket(SocketAddr::new(IpAddr::V4(*a), 500)).map_err(io_ctx(format!("bind {a}:500")))?;
        s500.set_nonblocking(true).map_err(io_ctx("udp 500"))?;
        let s500 = Arc::new(tokio::net::UdpSocket::from_std(s500).map_err(io_ctx("udp 500"))?);
        let s4500 = net::udp_socket(SocketAddr::new(IpAddr::V4(*a), 4500)).map_err(io_ctx(format!("bind {a}:4500")))?;
        let state = quinn_udp::UdpSocketState::new((&s4500).into()).map_err(io_ctx("udp 4500"))?;
        // After quinn-udp (which forbids fragmentation for QUIC's sake): an ESP packet must
        // still get through a path narrower than our outside MTU, fragmented if need be.
        net::allow_fragmentation(&s4500);
        let raw = match net::raw_esp_socket(*a) {
            Ok(r) => {
                net::allow_fragmentation(&r);
                Some(Arc::new(r))
            }
            Err(e) => {
                eprintln!("holdfast: raw ESP socket on {a}: {e}; native ESP disabled");
                None
            }
        };
        ike500.push((*a, s500));
        outsides.push(Outside { local: *a, udp4500: Arc::new(s4500), udp_state: Arc::new(state), raw });
    }

    // Fail closed before anything can route protected traffic: blackhole routes for the
    // remote networks and the drop of clear inbound protected traffic, both surviving a
    // SIGKILL of this process (see SystemGuard::add_blackhole / install_inbound_drop).
    let mut pairs = Vec::new();
    for t in &tunnels {
        let prefixes = |v: &[TrafficSelector]| -> Vec<(Ipv4Addr, u8)> {
            v.iter().flat_map(|ts| range_to_prefixes(ts.start_addr, ts.end_addr)).collect()
        };
        let remote = prefixes(&t.remote_ts);
        for (net_addr, len) in &remote {
            guard.add_blackhole(*net_addr, *len).map_err(io_ctx("blackhole route"))?;
        }
        let fmt = |v: Vec<(Ipv4Addr, u8)>| v.into_iter().map(|(a, l)| format!("{a}/{l}")).collect::<Vec<_>>();
        pairs.push((fmt(remote), fmt(prefixes(&t.local_ts))));
    }
    // A remote-access-only configuration has no site-to-site tunnel: no nftables table, no
    // site-to-site TUN and no data-path threads (remote access brings its own TUN).
    let site_to_site = !tunnels.is_empty();
    match if site_to_site { guard.install_inbound_drop(&opts.tun_name, &pairs) } else { Ok(()) } {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            eprintln!("holdfast: nft not found; clear inbound traffic for the protected networks is not dropped");
        }
        Err(e) => return Err(DaemonError::Io { what: "nftables".into(), err: e }),
    }

    // TUN, routes of the remote protected networks, forwarding.
    let (tun, offload) = if site_to_site {
        let (t, o) = net::create_tun(&opts.tun_name, opts.tun_mtu, opts.offload).map_err(io_ctx(format!("TUN {}", opts.tun_name)))?;
        (Some(Arc::new(t)), o)
    } else {
        (None, false)
    };
    for t in &tunnels {
        let src = inside_source(&cfg, &t.local_ts);
        for ts in &t.remote_ts {
            for (net_addr, len) in range_to_prefixes(ts.start_addr, ts.end_addr) {
                guard.add_route(net_addr, len, &opts.tun_name, src).map_err(io_ctx("route"))?;
            }
        }
    }
    guard.enable_ip_forward().map_err(io_ctx("ip_forward"))?;

    // The connection table: restored from the state directory when a snapshot is there.
    let state = match StateDir::open(&opts.state_dir) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("holdfast: warning: state directory {}: {e}; the connection table will not survive a restart", opts.state_dir.display());
            None
        }
    };
    let (mut engine, start) = flows::start_engine(clock::now(), &cfg, flows::random_seed(), state.as_ref(), unix_ms());
    match &start {
        flows::Start::Fresh => {}
        flows::Start::Restored { flows, downtime } => {
            eprintln!("holdfast: connection table restored: {flows} conns saved {:.1} s ago", downtime.as_secs_f64())
        }
        flows::Start::Unreadable(e) => eprintln!("holdfast: warning: connection table snapshot unusable ({e}); starting with an empty table"),
    }
    let mut spd = Vec::new();
    let mut flow_tunnels = HashMap::new();
    let mut default_ifcs = None;
    for t in &tunnels {
        let outside = flows::outside_nameif(&cfg, &t.name);
        let inside = flows::inside_nameif(&cfg, &t.local_ts, &outside);
        let ifcs = match (engine.interface(&outside), engine.interface(&inside)) {
            (Ok(o), Ok(i)) => flow::IfcPair { outside: o, inside: i },
            _ => return Err(DaemonError::Io { what: "connection table".into(), err: io::Error::other("too many interfaces") }),
        };
        let ft = engine
            .tunnel(&t.name)
            .map_err(|e| DaemonError::Io { what: "connection table".into(), err: io::Error::other(e.to_string()) })?;
        default_ifcs.get_or_insert(ifcs);
        flow_tunnels.insert(t.name.clone(), ft);
        spd.push(SpdEntry {
            tunnel: Arc::from(t.name.as_str()),
            flow_tunnel: ft,
            ifcs,
            icmp_from: flows::icmp_source(inside_source(&cfg, &t.local_ts), t.local_addr),
            local_ts: t.local_ts.clone(),
            remote_ts: t.remote_ts.clone(),
            children: Vec::new(),
            last_acquire: Arc::new(AtomicU64::new(0)),
        });
    }
    let default_ifcs = match default_ifcs {
        Some(i) => i,
        None => flow::IfcPair {
            outside: engine.interface("outside").map_err(|e| DaemonError::Io { what: "connection table".into(), err: io::Error::other(e.to_string()) })?,
            inside: engine.interface("inside").map_err(|e| DaemonError::Io { what: "connection table".into(), err: io::Error::other(e.to_string()) })?,
        },
    };
    // A restore tears down unpreserved tunnelled conns (their tunnels start down): log them.
    let mut restored_msgs = Vec::new();
    flows::collect_events(&mut engine, &mut restored_msgs);
    for m in restored_msgs {
        syslog.log(m);
    }
    let flow_engine: SharedEngine = Arc::new(flows::Shared::new(engine));
    let sad = Arc::new(SadCell::new(Sad { inbound: HashMap::new(), spd }));
    let mss = if cfg.sysopt.tcpmss == 0 { 0 } else { cfg.sysopt.tcpmss.min(opts.tun_mtu.saturating_sub(40)) };
    let shared = Arc::new(Shared {
        sad: sad.clone(),
        outsides,
        tun,
        offload,
        syslog: syslog.clone(),
        limiter: RateLimiter::new(Duration::from_secs(5)),
        to_control: to_ctl.clone(),
        mss,
        stats: Default::default(),
        epoch: clock::now(),
        flows: flow_engine.clone(),
        default_ifcs,
    });
    if site_to_site {
        datapath::spawn(shared.clone()).map_err(io_ctx("data path threads"))?;
    }

    for (a, s) in &ike500 {
        let s = s.clone();
        let tx = to_ctl.clone();
        let local = SocketAddr::new(IpAddr::V4(*a), 500);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                match s.recv_from(&mut buf).await {
                    Ok((n, remote)) => {
                        tx.ike(local, remote, &buf[..n]);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
    }

    let (ctl_tx, mut ctl_rx) = mpsc::channel::<ControlRequest>(64);
    tokio::spawn(serve_control(listener, ctl_tx.clone()));
    if let Some(l) = metrics_listener {
        tokio::spawn(metrics::serve(l, ctl_tx));
    }

    let d_tunnels_empty = tunnels.is_empty();
    let mut d = Daemon {
        running_config: config::running_config(&cfg),
        cfg,
        tunnels,
        endpoint,
        syslog,
        sad,
        shared,
        ike500,
        children: BTreeMap::new(),
        removals: Vec::new(),
        conn_ids: 0,
        tun_mtu: opts.tun_mtu,
        last_keepalive: clock::now(),
        retired: Default::default(),
        flows: flow_engine,
        flow_tunnels,
        down_pending: HashMap::new(),
        late_replays: Vec::new(),
        deliberate: false,
        writer: state.and_then(|dir| match flows::SnapshotWriter::spawn(dir) {
            Ok(w) => Some(w),
            Err(e) => {
                eprintln!("holdfast: warning: snapshot writer thread: {e}; the connection table will not survive a restart");
                None
            }
        }),
        snapshot_mark: None,
        last_snapshot: clock::now(),
        flow_msgs: Vec::new(),
        watch: watch::PathWatch::new(),
        last_watch: clock::now(),
        ra: None,
        metrics: Default::default(),
        reload: ReloadState {
            file: config_file,
            strict,
            tun_name: opts.tun_name.clone(),
            has_tun: !d_tunnels_empty,
        },
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(io_ctx("signal"))?;
    // SIGHUP is `holdfast reload` without a file argument (systemd's ExecReload sends it).
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(io_ctx("signal"))?;
    // SIGQUIT is a planned restart: remote-access sessions are saved and their clients are not
    // told, so they reconnect to the next daemon (docs/remote-access.md).
    let mut sigquit = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::quit()).map_err(io_ctx("signal"))?;
    let mut keep_sessions = false;
    // `stop [keep-sessions]` from the control socket: answered once the shutdown has saved
    // (or ended) the sessions, so the answer can say how many were kept.
    let mut stop_reply: Option<(bool, oneshot::Sender<String>)> = None;
    // Remote access last: nothing fallible follows, so its handle (which owns a runtime that
    // must not be dropped inside this one) is only ever stopped by the shutdown below.
    if let Some(plan) = ra_plan {
        let rc = RaConfig {
            listen: plan.listen,
            cert_file: plan.cert_file,
            key_file: plan.key_file,
            ca_file: plan.ca_file,
            tun_name: opts.ra_tun_name.clone(),
            engine: plan.engine,
            handshake: ra::tls::HandshakeLimits::default(),
            http_idle: Duration::from_secs(30),
            syslog: d.syslog.clone(),
            // Remote-access traffic in the connection table; sessions saved next to it.
            flows: Some(ra::conntrack::FlowsConfig::from_policy(&d.cfg, d.flows.clone())),
            state_dir: Some(opts.state_dir.clone()),
        };
        let started = tokio::task::spawn_blocking(move || ra::spawn(rc))
            .await
            .map_err(|e| DaemonError::Io { what: "remote access start".into(), err: io::Error::other(e.to_string()) })?;
        let h = started?;
        eprintln!("holdfast: remote access listening on {} (TUN {})", h.tls_addr(), opts.ra_tun_name);
        d.ra = Some(h);
    }
    if site_to_site {
        eprintln!(
            "holdfast: running; TUN {} (mtu {}, offload {}), control socket {}",
            opts.tun_name,
            opts.tun_mtu,
            if offload { "on" } else { "off" },
            opts.control.display()
        );
    } else {
        eprintln!("holdfast: running (remote access only, no site-to-site TUN), control socket {}", opts.control.display());
    }
    let now = clock::now();
    for t in d.tunnels.clone() {
        if t.connection_type != ConnectionType::AnswerOnly {
            d.endpoint.handle_command(now, ike::Command::Initiate { tunnel: t.name.clone() });
        }
    }
    d.drain();

    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    let mut flow_tick = tokio::time::interval(FLOW_TICK);
    flow_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let deadline = d.endpoint.poll_timeout().map(|(t, _)| t);
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            m = from_data.recv() => {
                let Some(m) = m else { break };
                d.on_data_msg(m);
            }
            r = ctl_rx.recv() => {
                if let Some(r) = r {
                    if let Request::Stop { keep_sessions: keep } = r.req {
                        keep_sessions = keep;
                        stop_reply = Some((keep, r.reply));
                        break;
                    }
                    if let Some(listing) = ConnListing::of(&r.req) {
                        listing.answer_off_task(d.flows.clone(), r.reply);
                    } else {
                        let text = match &r.req {
                            // A reload changes routes and nftables: it needs the system guard.
                            Request::Reload { config } => d.reload(&mut guard, config.clone(), reload::Source::Control),
                            _ => d.on_request(&r.req),
                        };
                        let _ = r.reply.send(text);
                    }
                }
            }
            _ = sleep => {
                d.endpoint.handle_timeout(clock::now());
            }
            _ = flow_tick.tick() => {
                d.flow_timers(clock::now());
            }
            _ = tick.tick() => {
                d.report_traffic();
                // Follow wall-clock steps (NTP) for certificate validity checks.
                d.endpoint.set_wall_clock(clock::now(), clock::wall_now());
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = sigquit.recv() => {
                keep_sessions = true;
                break;
            }
            _ = sighup.recv() => {
                let text = d.reload(&mut guard, None, reload::Source::Sighup);
                eprint!("holdfast: {text}");
            }
        }
        d.drain();
    }
    eprintln!("holdfast: shutting down");
    // Remote-access clients get TERMINATE (they do not reconnect), then its TUN and routes go.
    let mut saved = RaStopped::NotConfigured;
    if let Some(h) = d.ra.take() {
        if keep_sessions {
            let how = if stop_reply.is_some() { "stop keep-sessions" } else { "SIGQUIT" };
            saved = save_outcome(how, tokio::task::spawn_blocking(move || h.shutdown_keeping_sessions()).await);
        } else {
            saved = end_outcome(tokio::task::spawn_blocking(move || h.shutdown()).await);
        }
    }
    if let Some((keep, reply)) = stop_reply.take() {
        let _ = reply.send(stop_answer(keep, saved, &opts.state_dir));
        // The control task writes the answer while the shutdown below goes on (it awaits).
        tokio::task::yield_now().await;
    }
    // Deleting our SAs tells the peer at once instead of letting it wait for liveness to fail.
    d.endpoint.handle_command(clock::now(), ike::Command::ClearIkeSa { peer: None });
    d.drain();
    // The table as it is now, for the next start (the tunnels' teardown above is not a drop the
    // flows should pay for: the engine only learns of it at the next start, as a restore).
    d.save_snapshot(clock::now(), true);
    if let Some(w) = d.writer.take() {
        w.finish();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    guard.cleanup();
    // The lines of the shutdown above (713050, 602304, 302014) are still in the logger queue.
    d.syslog.flush(syslog::FLUSH_TIMEOUT);
    Ok(())
}

/// What the shutdown did with remote access, for the answer to `stop [keep-sessions]`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RaStopped {
    /// The configuration has no remote access (no `webvpn` / `enable`).
    NotConfigured,
    /// Clients told the gateway is going away, sessions ended (`stop`, SIGTERM).
    Ended,
    /// `keep-sessions`: this many sessions written to the state directory.
    Saved(usize),
    /// `keep-sessions`, but the save failed (why); the sessions were ended instead.
    SaveFailed(String),
    /// `keep-sessions`, but the task saving them died (a panic; its message): nothing is
    /// known to have been written.
    SaveTaskFailed(String),
    /// `stop`, but the task ending the sessions died (a panic; its message): the clients may
    /// not have been told.
    EndTaskFailed(String),
}

/// What the task ending the remote-access sessions (`stop`, SIGTERM) came to.
fn end_outcome(r: Result<(), tokio::task::JoinError>) -> RaStopped {
    match r {
        Ok(()) => RaStopped::Ended,
        Err(e) => {
            let why = if e.is_panic() { "it panicked".to_string() } else { e.to_string() };
            eprintln!("holdfast: ending the remote-access sessions failed ({why}); stopping normally");
            RaStopped::EndTaskFailed(why)
        }
    }
}

/// What the blocking `shutdown_keeping_sessions` task came back with (and the stderr line
/// for it).
fn save_outcome(how: &str, r: Result<Result<usize, String>, tokio::task::JoinError>) -> RaStopped {
    match r {
        Ok(Ok(n)) => {
            eprintln!("holdfast: {how}: {n} remote-access session(s) saved for the next start; clients were not told");
            RaStopped::Saved(n)
        }
        Ok(Err(e)) => {
            eprintln!("holdfast: {how}: {e}; the sessions were ended and the clients told instead");
            RaStopped::SaveFailed(e)
        }
        Err(e) => {
            // A panic in the save (a bug): remote access is gone with the task; the rest of
            // the shutdown (tunnels, flows, TUN) goes on as for any stop.
            let why = if e.is_panic() { "it panicked".to_string() } else { e.to_string() };
            eprintln!("holdfast: {how}: saving the remote-access sessions failed ({why}); stopping normally");
            RaStopped::SaveTaskFailed(why)
        }
    }
}

/// The answer to `stop [keep-sessions]`: what happened to the remote-access sessions. A
/// failed save is an `ERROR:` answer (the CLI exits non-zero): the operator was promised an
/// invisible restart and did not get one.
fn stop_answer(keep: bool, ra: RaStopped, state_dir: &std::path::Path) -> String {
    match ra {
        RaStopped::SaveFailed(e) => format!(
            "ERROR: {e}; the remote-access sessions were ended and the clients told the gateway is going away.\n"
        ),
        RaStopped::SaveTaskFailed(why) => format!(
            "ERROR: Remote-access sessions could not be saved: the task saving them failed ({why}); the gateway stops normally.\n"
        ),
        RaStopped::EndTaskFailed(why) => format!(
            "ERROR: Remote-access sessions could not be ended cleanly: the task ending them failed ({why}), clients may not have been told; the gateway stops normally.\n"
        ),
        RaStopped::Saved(n) => format!(
            "Stopping: {n} remote-access session(s) saved in {} for the next start; clients were not told.\n",
            state_dir.join(ra::persist::SESSIONS_FILE).display()
        ),
        RaStopped::NotConfigured if keep => {
            "Stopping the gateway; no remote access is configured, so there are no sessions to keep.\n".to_string()
        }
        RaStopped::NotConfigured => "Stopping the gateway; no remote access is configured.\n".to_string(),
        RaStopped::Ended => "Stopping: remote-access clients are told the gateway is going away; their sessions end.\n".to_string(),
    }
}

fn bind_control(path: &std::path::Path, guard: &mut SystemGuard) -> Result<tokio::net::UnixListener, DaemonError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_ctx(format!("create {}", dir.display())))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::AlreadyRunning(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    let l = tokio::net::UnixListener::bind(path).map_err(io_ctx(format!("bind {}", path.display())))?;
    guard.remember_socket_file(path.to_path_buf());
    // `clear` deletes tunnels: only root (and the socket's group) may talk to the daemon.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io_ctx(format!("chmod {}", path.display())))?;
    Ok(l)
}

async fn serve_control(listener: tokio::net::UnixListener, tx: mpsc::Sender<ControlRequest>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut s, _)) = listener.accept().await else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(256);
            let mut chunk = [0u8; 256];
            // One line, bounded; a client that never sends a newline is cut off after 10 s.
            let read = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match s.read(&mut chunk).await {
                        Ok(0) => break,
                        Ok(n) => {
                            buf.extend_from_slice(&chunk[..n]);
                            if buf.contains(&b'\n') || buf.len() > control::MAX_LINE {
                                break;
                            }
                        }
                        Err(_) => break,
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.lines().next().unwrap_or("").to_string();
            let answer = if buf.len() > control::MAX_LINE {
                format!("{}\n", control::INVALID_INPUT)
            } else {
                match control::parse(&line) {
                    Err(e) => control::format_error(&line, &e),
                    Ok(req) => {
                        let (rtx, rrx) = oneshot::channel();
                        if tx.send(ControlRequest { req, reply: rtx }).await.is_err() {
                            return;
                        }
                        rrx.await.unwrap_or_default()
                    }
                }
            };
            let _ = s.write_all(answer.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

/// A CHILD_SA the daemon installed, for `show` and traffic reports.
struct ChildRecord {
    up: ike::ChildSaUp,
    installed: Instant,
    conn_id: u32,
    inbound: Arc<InboundEntry>,
    outbound: Arc<OutboundEntry>,
    /// Set when the SA was deleted or replaced: inbound lingers until `removals` fires.
    draining: bool,
    reported_bytes: u64,
    reported_packets: u64,
}

struct Daemon {
    cfg: policy::Config,
    running_config: String,
    tunnels: Vec<TunnelPolicy>,
    endpoint: ike::Endpoint,
    syslog: Arc<Syslog>,
    sad: Arc<SadCell>,
    shared: Arc<Shared>,
    ike500: Vec<(Ipv4Addr, Arc<tokio::net::UdpSocket>)>,
    children: BTreeMap<u32, ChildRecord>,
    removals: Vec<(Instant, u32)>,
    conn_ids: u32,
    tun_mtu: u16,
    last_keepalive: Instant,
    /// Counters of SAs already removed, for `show crypto ipsec stats`.
    retired: show::IpsecStats,
    flows: SharedEngine,
    flow_tunnels: HashMap<String, flow::TunnelId>,
    /// Tunnels left without an outbound CHILD_SA, and when the grace period ends.
    down_pending: HashMap<String, Instant>,
    /// Replays sent again a moment later because we answered the exchange that created the
    /// SA: the initiator may not have installed it when the first copies arrived.
    late_replays: Vec<(Instant, Vec<flow::Transmit>)>,
    /// An operator's `clear crypto ...` is being carried out: its tunnels go down at once.
    deliberate: bool,
    writer: Option<flows::SnapshotWriter>,
    /// What the table looked like at the last snapshot (changes trigger the next one).
    snapshot_mark: Option<(u64, u64, u64)>,
    last_snapshot: Instant,
    flow_msgs: Vec<syslog::Message>,
    /// Silent-path detection and knocks for the fast resumption of preserved flows.
    watch: watch::PathWatch,
    last_watch: Instant,
    /// The remote-access service, when the configuration enables AnyConnect.
    ra: Option<RaHandle>,
    /// Prometheus state of its own (resume-time histogram, removed SAs' traffic).
    metrics: metrics::Metrics,
    /// What `holdfast reload` / SIGHUP need to know about the start.
    reload: ReloadState,
}

/// See [`Daemon::reload`].
struct ReloadState {
    file: Option<PathBuf>,
    strict: bool,
    tun_name: String,
    /// The site-to-site TUN exists (a configuration without tunnels starts without one).
    has_tun: bool,
}

fn add_counters(s: &mut show::IpsecStats, r: &ChildRecord) {
    let (i, o) = (&r.inbound.counters, &r.outbound.counters);
    s.in_bytes += Counters::get(&i.bytes);
    s.in_packets += Counters::get(&i.packets);
    s.in_replay += Counters::get(&i.replay);
    s.in_auth_failures += Counters::get(&i.auth);
    s.in_other_drops += Counters::get(&i.errors);
    s.out_bytes += Counters::get(&o.bytes);
    s.out_packets += Counters::get(&o.packets);
    s.out_errors += Counters::get(&o.errors);
}

impl Daemon {
    fn on_data_msg(&mut self, m: ToControl) {
        let now = clock::now();
        match m {
            ToControl::Ike { local, remote, data } => {
                let _ = self.endpoint.handle_datagram(now, ike::Path { local, remote }, &data);
            }
            ToControl::Acquire { tunnel } => {
                let t = self.tunnels.iter().find(|t| *t.name == *tunnel);
                if t.is_some_and(|t| t.connection_type != ConnectionType::AnswerOnly) {
                    self.endpoint.handle_command(now, ike::Command::Initiate { tunnel: tunnel.to_string() });
                }
            }
        }
    }

    /// Transmits first, then events (DESIGN.md).
    fn drain(&mut self) {
        // Events before transmits: as responder, the ChildSaUp of an exchange is installed
        // before the response that lets the initiator use it leaves (ipsec-peer.md §2: inbound
        // first). The other order lost the initiator's first ESP packets — among them the
        // replayed segment of a preserved flow — as "invalid SPI" (lab, issue 3).
        while let Some(e) = self.endpoint.poll_event() {
            self.on_event(e);
        }
        while let Some(t) = self.endpoint.poll_transmit() {
            self.transmit(t);
        }
        while let Some(c) = self.endpoint.poll_encap_change() {
            self.change_encap(c);
        }
    }

    /// The peer moved (NAT rebinding, RFC 3948 / RFC 7296 §2.23): its CHILD_SAs keep their keys
    /// and sequence numbers, only the outer destination changes.
    fn change_encap(&mut self, c: ike::EncapChange) {
        for spi_in in &c.spi_in {
            let Some(r) = self.children.get_mut(spi_in) else { continue };
            let outside = self.shared.outsides.iter().position(|o| IpAddr::V4(o.local) == r.up.local).unwrap_or(0);
            let dest = match c.encap {
                esp::Encap::Native => Dest::Native { outside, to: c.peer.ip() },
                esp::Encap::Udp { remote_port, .. } => Dest::Udp { outside, to: SocketAddr::new(c.peer.ip(), remote_port) },
            };
            r.outbound.set_dest(dest);
            r.up.encap = c.encap;
        }
    }

    fn outside_index(&self, local: IpAddr) -> usize {
        self.shared.outsides.iter().position(|o| IpAddr::V4(o.local) == local).unwrap_or(0)
    }

    fn transmit(&self, t: ike::Transmit) {
        let idx = self.outside_index(t.path.local.ip());
        if t.path.local.port() == 4500 {
            // RFC 3948 §2.2: IKE on port 4500 carries the 4-byte non-ESP marker.
            let Some(o) = self.shared.outsides.get(idx) else { return };
            let mut buf = Vec::with_capacity(t.data.len() + 4);
            buf.extend_from_slice(&[0, 0, 0, 0]);
            buf.extend_from_slice(&t.data);
            let _ = o.udp4500.send_to(&buf, t.path.remote);
        } else if let Some((_, s)) = self.ike500.get(idx) {
            let _ = s.try_send_to(&t.data, t.path.remote);
        }
    }

    fn group(peer: IpAddr) -> String {
        // LAN-to-LAN tunnel groups are named after the peer address.
        peer.to_string()
    }

    fn on_event(&mut self, e: ike::Event) {
        let now = clock::now();
        match e {
            ike::Event::ChildSaUp(up) => self.install(up, now),
            ike::Event::ChildSaDown { tunnel, spi_in, spi_out, reason } => {
                self.sad.update(|s| {
                    for e in s.spd.iter_mut().filter(|e| *e.tunnel == *tunnel) {
                        e.children.retain(|c| c.spi_in != spi_in);
                    }
                });
                if let Some(r) = self.children.get_mut(&spi_in) {
                    if !r.draining {
                        r.draining = true;
                        self.removals.push((now + INBOUND_LINGER, spi_in));
                    }
                    let (local, peer) = (r.up.local, r.up.peer);
                    let g = Self::group(peer);
                    self.syslog.log(syslog::sa_deleted(Direction::Outbound, spi_out, local, peer, &g));
                    self.syslog.log(syslog::sa_deleted(Direction::Inbound, spi_in, local, peer, &g));
                    let _ = reason;
                }
                self.check_tunnel_left(&tunnel, now);
            }
            ike::Event::IkeSaUp { peer, .. } => {
                self.syslog.log(syslog::phase1_completed(&Self::group(peer), peer));
            }
            ike::Event::IkeSaDown { tunnel, peer, reason } => {
                self.check_tunnel_left(&tunnel, now);
                let (remote, local) = self.proxies(&tunnel);
                let why = match reason {
                    ike::DownReason::Cleared => "Administrator Reset",
                    ike::DownReason::PeerDeleted => "Peer Terminate",
                    ike::DownReason::PeerDead => "Lost Service",
                    ike::DownReason::Expired => "IPsec SA Max Time Exceeded",
                    ike::DownReason::PeerRestarted => "Peer Reconnected",
                    ike::DownReason::Rekeyed | ike::DownReason::Redundant => "Rekeyed",
                };
                self.syslog.log(syslog::connection_terminated(&Self::group(peer), peer, why, remote, local));
            }
            ike::Event::IkeSaRekeyed { .. } => {}
            ike::Event::ChildSaOutbound { tunnel, spi_in } => self.switch_outbound(&tunnel, spi_in, now),
            ike::Event::IkeNegotiationFailed { tunnel, peer, reason } | ike::Event::ChildSaFailed { tunnel, peer, reason } => {
                let local = self.tunnels.iter().find(|t| t.name == tunnel).map(|t| t.local_addr);
                let local = local.map(|l| l.to_string()).unwrap_or_default();
                self.syslog.log(syslog::Message {
                    severity: 4,
                    id: 750003,
                    text: format!("Local:{local}:500 Remote:{peer}:500 Username:{peer} IKEv2 Negotiation aborted due to ERROR: {reason}"),
                });
            }
        }
    }

    fn proxies(&self, tunnel: &str) -> (IpAddr, IpAddr) {
        let t = self.tunnels.iter().find(|t| t.name == tunnel);
        let first = |v: Option<&Vec<TrafficSelector>>| {
            v.and_then(|v| v.first()).map(|s| IpAddr::V4(s.start_addr)).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        };
        (first(t.map(|t| &t.remote_ts)), first(t.map(|t| &t.local_ts)))
    }

    fn install(&mut self, up: ike::ChildSaUp, now: Instant) {
        let inbound_sa = match esp::InboundSa::new(&up.inbound) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("holdfast: cannot install inbound SA {:08x}: {e}", up.inbound.spi);
                return;
            }
        };
        let outbound_sa = match esp::OutboundSa::new(&up.outbound) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("holdfast: cannot install outbound SA {:08x}: {e}", up.outbound.spi);
                return;
            }
        };
        let outside = self.outside_index(up.local);
        let dest = match up.encap {
            esp::Encap::Native => Dest::Native { outside, to: up.peer },
            esp::Encap::Udp { remote_port, .. } => Dest::Udp { outside, to: SocketAddr::new(up.peer, remote_port) },
        };
        let tunnel: Arc<str> = Arc::from(up.tunnel.as_str());
        let Some((flow_tunnel, ifcs)) = self.sad.load().spd.iter().find(|e| *e.tunnel == *tunnel).map(|e| (e.flow_tunnel, e.ifcs)) else {
            eprintln!("holdfast: CHILD_SA for unknown tunnel {tunnel}");
            return;
        };
        let inbound = Arc::new(InboundEntry {
            spi: up.inbound.spi,
            sa: Mutex::new(inbound_sa),
            tunnel: tunnel.clone(),
            flow_tunnel,
            ifcs,
            peer: up.peer,
            local_ts: up.local_ts.clone(),
            remote_ts: up.remote_ts.clone(),
            counters: Counters::default(),
        });
        let outbound = Arc::new(OutboundEntry { spi: up.outbound.spi, sa: Mutex::new(outbound_sa), dest: RwLock::new(dest), counters: Counters::default() });
        let child = ChildOut {
            spi_in: up.inbound.spi,
            local_ts: up.local_ts.clone(),
            remote_ts: up.remote_ts.clone(),
            out: outbound.clone(),
        };
        let replaces = up.replaces_spi_in;
        // RFC 7296 §2.8: the rekey responder must keep sending on the replaced SA until the
        // initiator has installed the new one (ChildSaUp.outbound_now == false, then
        // Event::ChildSaOutbound). Only then does the old SA leave the SPD.
        let switch_now = up.outbound_now || replaces.is_none();
        // One publish: the new inbound SA becomes visible no later than the outbound switch,
        // so the peer's first packets on the new SA always find it.
        self.sad.update(|s| {
            s.inbound.insert(inbound.spi, inbound.clone());
            if let Some(e) = s.spd.iter_mut().find(|e| *e.tunnel == *tunnel) {
                if switch_now {
                    if let Some(old) = replaces {
                        e.children.retain(|c| c.spi_in != old);
                    }
                    e.children.insert(0, child);
                } else {
                    // Behind the replaced SA: lookups keep choosing the old one until the switch.
                    let at = e.children.iter().position(|c| Some(c.spi_in) == replaces).map(|i| i + 1).unwrap_or(0);
                    e.children.insert(at, child);
                }
            }
        });
        if switch_now {
            if let Some(old) = replaces {
                self.retire(old, now);
            }
        }
        // The SA is in the SAD: the tunnel is up for the connection table (idempotent for a
        // rekey), and the segments it held go out on the new SA right away.
        self.down_pending.remove(&up.tunnel);
        if let Some(&t) = self.flow_tunnels.get(&up.tunnel) {
            let mut replay = Vec::new();
            let mut eng = flows::lock(&self.flows);
            eng.tunnel_up(now, t, &up.local_ts, &up.remote_ts);
            while let Some(tx) = eng.poll_transmit() {
                replay.push(tx);
            }
            drop(eng);
            if !up.initiator && !replay.is_empty() {
                // We answered: our copies may reach the initiator before it installed the SA
                // (its IKE response is still on the way). Send them once more a moment later;
                // a duplicate segment costs the receiver one duplicate ACK.
                self.late_replays.push((now + LATE_REPLAY, replay.clone()));
            }
            // The replays first: they leave within microseconds of the SA install.
            let replayed = !replay.is_empty();
            self.send_replays(replay);
            if replayed {
                self.metrics.observe_resume(clock::now().saturating_duration_since(now));
            }
            self.flows.release_and_log(flows::lock(&self.flows), &mut self.flow_msgs, &self.syslog);
        }
        let g = Self::group(up.peer);
        self.syslog.log(syslog::sa_created(Direction::Inbound, up.inbound.spi, up.local, up.peer, &g));
        self.syslog.log(syslog::sa_created(Direction::Outbound, up.outbound.spi, up.local, up.peer, &g));
        self.syslog.log(syslog::negotiation_complete(&g, up.peer, up.initiator, up.inbound.spi, up.outbound.spi));
        self.syslog.log(syslog::phase2_completed(&g, up.peer, up.msg_id));
        self.conn_ids += 1;
        self.children.insert(
            up.inbound.spi,
            ChildRecord {
                up,
                installed: now,
                conn_id: self.conn_ids,
                inbound,
                outbound,
                draining: false,
                reported_bytes: 0,
                reported_packets: 0,
            },
        );
    }

    /// Event::ChildSaOutbound: the deferred switch of a rekey responder. The new SA goes to the
    /// front of its tunnel's SPD entry and the SA it replaced stops sending (its inbound lingers).
    fn switch_outbound(&mut self, tunnel: &str, spi_in: u32, now: Instant) {
        let replaces = self.children.get(&spi_in).and_then(|r| r.up.replaces_spi_in);
        self.sad.update(|s| {
            if let Some(e) = s.spd.iter_mut().find(|e| *e.tunnel == *tunnel) {
                if let Some(old) = replaces {
                    e.children.retain(|c| c.spi_in != old);
                }
                if let Some(i) = e.children.iter().position(|c| c.spi_in == spi_in) {
                    let c = e.children.remove(i);
                    e.children.insert(0, c);
                }
            }
        });
        if let Some(old) = replaces {
            self.retire(old, now);
        }
    }

    /// Marks a replaced SA as draining and schedules its inbound removal.
    fn retire(&mut self, old: u32, now: Instant) {
        if let Some(r) = self.children.get_mut(&old) {
            if !r.draining {
                r.draining = true;
                self.removals.push((now + INBOUND_LINGER, old));
            }
        }
    }

    /// Periodic: traffic totals and inbound activity to the engine, delayed inbound removals.
    fn report_traffic(&mut self) {
        let now = clock::now();
        let mut cmds = Vec::new();
        for (spi, r) in self.children.iter_mut().filter(|(_, r)| !r.draining) {
            let pin = Counters::get(&r.inbound.counters.packets);
            if pin != r.reported_packets {
                r.reported_packets = pin;
                cmds.push(ike::Command::InboundActivity { spi_in: *spi });
            }
            // Kilobyte lifetimes apply per SA; the busier direction decides.
            let bytes = Counters::get(&r.inbound.counters.bytes).max(Counters::get(&r.outbound.counters.bytes));
            if bytes != r.reported_bytes {
                r.reported_bytes = bytes;
                cmds.push(ike::Command::ChildSaBytes { spi_in: *spi, bytes });
            }
        }
        for c in cmds {
            self.endpoint.handle_command(now, c);
        }
        if now.saturating_duration_since(self.last_keepalive) >= NAT_KEEPALIVE_INTERVAL {
            self.last_keepalive = now;
            self.send_nat_keepalives();
        }
        let due: Vec<u32> = self.removals.iter().filter(|(t, _)| *t <= now).map(|(_, s)| *s).collect();
        if !due.is_empty() {
            self.removals.retain(|(t, _)| *t > now);
            self.sad.update(|s| {
                for spi in &due {
                    s.inbound.remove(spi);
                }
            });
            for spi in due {
                if let Some(r) = self.children.remove(&spi) {
                    self.metrics.retire(&r.up.tunnel, child_traffic(&r));
                    add_counters(&mut self.retired, &r);
                    self.retired.previous_sas += 1;
                }
            }
        }
    }

    fn stats(&self) -> show::IpsecStats {
        let mut s = self.retired.clone();
        let mut tunnels: Vec<&str> = Vec::new();
        for r in self.children.values() {
            if !r.draining && !tunnels.contains(&r.up.tunnel.as_str()) {
                tunnels.push(&r.up.tunnel);
            }
            add_counters(&mut s, r);
        }
        s.active_tunnels = tunnels.len() as u64;
        let g = &self.shared.stats;
        s.missing_sa = Counters::get(&g.no_sa);
        s.invalid_spi = Counters::get(&g.invalid_spi);
        s.malformed = Counters::get(&g.malformed);
        s.nat_keepalives_rcvd = Counters::get(&g.keepalives);
        s.ike_queue_drops = self.shared.to_control.ike_dropped();
        s
    }

    fn send_nat_keepalives(&self) {
        for sa in self.endpoint.ike_sas() {
            if sa.nat_local && sa.status == ike::IkeStatus::Ready && sa.local.port() == 4500 {
                let idx = self.outside_index(sa.local.ip());
                if let Some(o) = self.shared.outsides.get(idx) {
                    let _ = o.udp4500.send_to(&[0xff], sa.remote);
                }
            }
        }
    }

    fn on_request(&mut self, req: &Request) -> String {
        let now = clock::now();
        match req {
            Request::ShowRunningConfig { all: false, filter } if filter.is_empty() => self.running_config.clone(),
            Request::ShowRunningConfig { all, filter } => {
                config::show_running_config(&self.cfg, &config::ShowOptions { all: *all, filter: filter.clone(), unmasked: false })
            }
            Request::ShowConn { view, address } => flows::show_conn(&self.flows, now, *view, *address),
            Request::ShowAspDrop => flows::lock(&self.flows).show_asp_drop(),
            Request::ShowVpnContext { detail } => flows::format_vpn_context(&self.vpn_contexts(), *detail),
            Request::ClearConn { address } => {
                let mut eng = flows::lock(&self.flows);
                let n = eng.clear_conn(now, *address);
                self.flows.release_and_log(eng, &mut self.flow_msgs, &self.syslog);
                format!("{n} connection(s) deleted.\n")
            }
            Request::ClearAspDrop => {
                let when = clock::asa_clearing_time(clock::unix_seconds());
                flows::lock(&self.flows).clear_asp_drop(&format!("{when} by admin"));
                String::new()
            }
            Request::ShowLogging => self.syslog.show_logging(),
            Request::ShowVpnSessiondb { filter } => {
                let Some(ra) = &self.ra else { return show::no_vpn_sessions() };
                let wall = clock::wall_now();
                ra.with_engine(|s, now| match filter {
                    None => s.show_vpn_sessiondb_anyconnect(now, wall),
                    Some(SessionFilter::Name(u)) => {
                        s.show_vpn_sessiondb_anyconnect_filter(now, wall, &anyconnect::ShowFilter::Name(u.clone()))
                    }
                    Some(SessionFilter::IpAddress(ip)) => {
                        s.show_vpn_sessiondb_anyconnect_filter(now, wall, &anyconnect::ShowFilter::IpAddress(*ip))
                    }
                })
            }
            Request::VpnSessiondbLogoff { target } => {
                let n = match &self.ra {
                    None => 0,
                    Some(ra) => ra.with_engine(|s, now| {
                        let t = match target {
                            LogoffTarget::Name(u) => anyconnect::Logoff::Name(u.clone()),
                            LogoffTarget::Index(i) => anyconnect::Logoff::Index(*i),
                            LogoffTarget::All => anyconnect::Logoff::All,
                        };
                        s.logoff(now, t)
                    }),
                };
                show::logoff_result(target, n)
            }
            Request::ShowVersion => format!("holdfast Version {}\n", env!("CARGO_PKG_VERSION")),
            Request::ShowIkev2Sa { detail } => show::ikev2_sa(&self.ike_views(), *detail),
            Request::ShowIpsecSa { peer, .. } => show::ipsec_sa(&self.ipsec_views(*peer, now)),
            Request::ShowIpsecStats => show::ipsec_stats(&self.stats()),
            Request::Metrics => metrics::encode_text(&self.metrics_snapshot(), &self.metrics),
            Request::Json(inner) => self.on_json(inner, now),
            // Handled by the control loop (it needs the system guard / ends it); never reaches here.
            Request::Reload { .. } | Request::Stop { .. } => format!("{}\n", control::INVALID_INPUT),
            // A deliberate teardown: the tunnels it empties go down for the connection table at
            // once, without the grace a rekey gets (the ASA tears the flows down immediately).
            Request::ClearIkev2Sa { peer } => {
                self.deliberate = true;
                self.endpoint.handle_command(now, ike::Command::ClearIkeSa { peer: *peer });
                self.drain();
                self.deliberate = false;
                String::new()
            }
            Request::ClearIpsecSa { peer } => {
                self.deliberate = true;
                self.endpoint.handle_command(now, ike::Command::ClearChildSas { peer: *peer });
                self.drain();
                self.deliberate = false;
                String::new()
            }
        }
    }

    /// A CHILD_SA of `tunnel` went away: if none is left to send on, the tunnel is down for the
    /// connection table — at once for an operator's clear, else after the grace period (a
    /// rekey or a break-before-make reauthentication brings a new one within it).
    fn check_tunnel_left(&mut self, tunnel: &str, now: Instant) {
        if self.tunnel_has_sa(tunnel) {
            return;
        }
        if self.deliberate {
            self.down_pending.remove(tunnel);
            self.flow_tunnel_down(tunnel, now);
        } else {
            self.down_pending.entry(tunnel.to_string()).or_insert(now + flows::TUNNEL_DOWN_GRACE);
            // During the grace the table still sees the tunnel up, but there is no SA to carry
            // anything: suspend it (preserve-vpn-flows tunnels only; the engine refuses the
            // others) so established TCP is held and ICMP-answered rather than silently dropped,
            // and replayed by `tunnel_up` if the SA returns within the grace — or by the next
            // `tunnel_up` after a real drop.
            if let Some(&t) = self.flow_tunnels.get(tunnel) {
                flows::lock(&self.flows).tunnel_suspend(now, t);
            }
        }
    }

    fn tunnel_has_sa(&self, tunnel: &str) -> bool {
        self.sad.load().spd.iter().any(|e| *e.tunnel == *tunnel && !e.children.is_empty())
    }

    fn flow_tunnel_down(&mut self, tunnel: &str, now: Instant) {
        let Some(&t) = self.flow_tunnels.get(tunnel) else { return };
        let mut eng = flows::lock(&self.flows);
        if !eng.tunnel_is_up(t) {
            return;
        }
        eng.tunnel_down(now, t);
        self.flows.release_and_log(eng, &mut self.flow_msgs, &self.syslog);
        self.watch.reset(tunnel);
    }

    /// Every [`FLOW_TICK`]: connection timeouts, expired tunnel-down grace periods, and the
    /// periodic snapshot.
    fn flow_timers(&mut self, now: Instant) {
        let mut eng = flows::lock(&self.flows);
        eng.handle_timeout(now);
        let mut replay = Vec::new();
        while let Some(tx) = eng.poll_transmit() {
            replay.push(tx);
        }
        self.flows.release_and_log(eng, &mut self.flow_msgs, &self.syslog);
        self.send_replays(replay);
        if self.late_replays.iter().any(|(t, _)| *t <= now) {
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.late_replays).into_iter().partition(|(t, _)| *t <= now);
            self.late_replays = later;
            for (_, r) in due {
                self.send_replays(r);
            }
        }
        let due: Vec<String> = self.down_pending.iter().filter(|(_, &t)| t <= now).map(|(n, _)| n.clone()).collect();
        for tunnel in due {
            self.down_pending.remove(&tunnel);
            if !self.tunnel_has_sa(&tunnel) {
                self.flow_tunnel_down(&tunnel, now);
            }
        }
        if now.saturating_duration_since(self.last_watch) >= watch::TICK {
            self.last_watch = now;
            self.path_watch(now);
        }
        if now.saturating_duration_since(self.last_snapshot) >= flows::SNAPSHOT_INTERVAL {
            self.save_snapshot(now, false);
        }
    }

    /// Samples every tunnel for the path watch and carries out what it asks: a liveness check
    /// when traffic goes out and nothing comes back, suspending (hold + ICMP) and resuming the
    /// tunnel's preserved flows, and knocks (re-sent negotiation) while held segments wait for
    /// a tunnel without SA (tcp-resume.md).
    fn path_watch(&mut self, now: Instant) {
        let sad = self.sad.load();
        let mut todo = Vec::new();
        {
            let eng = flows::lock(&self.flows);
            for t in &self.tunnels {
                let Some(&ft) = self.flow_tunnels.get(&t.name) else { continue };
                let (mut out_packets, mut in_packets) = (0u64, 0u64);
                for r in self.children.values().filter(|r| r.up.tunnel == t.name) {
                    in_packets += Counters::get(&r.inbound.counters.packets);
                    if !r.draining {
                        out_packets += Counters::get(&r.outbound.counters.packets);
                    }
                }
                let has_sa = sad.spd.iter().any(|e| e.flow_tunnel == ft && !e.children.is_empty());
                let sample = watch::Sample {
                    out_packets,
                    in_packets,
                    has_sa,
                    last_heard: self.endpoint.last_heard(&t.name),
                    held: eng.held_for(ft) > 0,
                };
                for a in self.watch.tick(now, &t.name, sample) {
                    todo.push((t.name.clone(), ft, t.connection_type != ConnectionType::AnswerOnly, a));
                }
            }
        }
        for (tunnel, ft, initiates, action) in todo {
            match action {
                watch::Action::CheckLiveness => self.endpoint.handle_command(now, ike::Command::CheckLiveness { tunnel }),
                watch::Action::Knock if initiates => self.endpoint.handle_command(now, ike::Command::Initiate { tunnel }),
                watch::Action::Knock => {}
                watch::Action::Suspend => {
                    flows::lock(&self.flows).tunnel_suspend(now, ft);
                }
                watch::Action::Resume => {
                    let replay = {
                        let mut eng = flows::lock(&self.flows);
                        eng.tunnel_resume(now, ft);
                        let mut v = Vec::new();
                        while let Some(tx) = eng.poll_transmit() {
                            v.push(tx);
                        }
                        v
                    };
                    let replayed = !replay.is_empty();
                    self.send_replays(replay);
                    if replayed {
                        self.metrics.observe_resume(clock::now().saturating_duration_since(now));
                    }
                }
            }
        }
    }

    /// Writes the table to the state directory if it changed since the last write (or always,
    /// with `force`). The engine is locked a bounded slice at a time to copy the table; the
    /// writer thread converts and writes it.
    fn save_snapshot(&mut self, now: Instant, force: bool) {
        self.last_snapshot = now;
        let Some(writer) = &self.writer else { return };
        {
            let eng = flows::lock(&self.flows);
            let st = eng.stats();
            let mark = (st.built, st.torn_down, st.packets);
            if !force && self.snapshot_mark == Some(mark) {
                return;
            }
            self.snapshot_mark = Some(mark);
        }
        let copy = self.flows.copy_table(flows::COPY_SLICE_SLOTS);
        writer.submit_copy(copy, now, unix_ms());
    }

    /// Held segments of a tunnel that came back, sealed with its current outbound SA.
    fn send_replays(&self, replay: Vec<flow::Transmit>) {
        if replay.is_empty() {
            return;
        }
        let sad = self.sad.load();
        for tx in replay {
            let out = sad.spd.iter().find(|e| e.flow_tunnel == tx.tunnel).and_then(|e| e.children.first());
            if let Some(c) = out {
                datapath::send_one(&self.shared, &c.out, &tx.packet);
            }
        }
    }

    /// `show asp table vpn-context`: both directions of every live CHILD_SA.
    fn vpn_contexts(&self) -> Vec<flows::VpnContext> {
        let eng = flows::lock(&self.flows);
        let mut out = Vec::new();
        for r in self.children.values().filter(|r| !r.draining) {
            let t = self.flow_tunnels.get(&r.up.tunnel).copied();
            let preserve = t.and_then(|t| eng.tunnel_info(t)).is_some_and(|i| i.preserve_tcp);
            let natt = matches!(r.up.encap, esp::Encap::Udp { .. });
            let group = t.map(|t| u32::from(t.index())).unwrap_or(0);
            let (i, o) = (&r.inbound.counters, &r.outbound.counters);
            let rekeys = u64::from(r.up.replaces_spi_in.is_some());
            out.push(flows::VpnContext {
                ctx: r.conn_id * 2 - 1,
                peer: r.up.peer,
                decrypt: true,
                spi: r.up.inbound.spi,
                natt,
                preserve,
                group,
                packets: Counters::get(&i.packets),
                bad_packets: Counters::get(&i.errors) + Counters::get(&i.replay),
                bad_crypto: Counters::get(&i.auth),
                rekeys,
            });
            out.push(flows::VpnContext {
                ctx: r.conn_id * 2,
                peer: r.up.peer,
                decrypt: false,
                spi: r.up.outbound.spi,
                natt,
                preserve,
                group,
                packets: Counters::get(&o.packets),
                bad_packets: Counters::get(&o.errors),
                bad_crypto: 0,
                rekeys,
            });
        }
        out
    }

    fn ike_views(&self) -> Vec<IkeSaView> {
        let children = self.endpoint.child_sas();
        self.endpoint
            .ike_sas()
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let tunnel = self.tunnels.iter().find(|t| t.name == s.tunnel);
                let kids = children
                    .iter()
                    .filter(|c| s.child_spis_in.contains(&c.spi_in))
                    .map(|c| ChildSummary {
                        local_ts: c.local_ts.clone(),
                        remote_ts: c.remote_ts.clone(),
                        spi_in: c.spi_in,
                        spi_out: c.spi_out,
                        encryption: c.suite.encryption,
                        integrity: c.suite.integrity,
                    })
                    .collect();
                IkeSaView {
                    tunnel_id: i as u32 + 1,
                    local: s.local,
                    remote: s.remote,
                    status: match s.status {
                        ike::IkeStatus::Ready => "READY",
                        ike::IkeStatus::Negotiating => "IN-NEG",
                        ike::IkeStatus::Deleting => "DELETE",
                    }
                    .into(),
                    initiator: s.role == ike::Role::Initiator,
                    encryption: s.suite.map(|x| x.encryption),
                    integrity: s.suite.map(|x| x.integrity),
                    prf: s.suite.map(|x| x.prf),
                    dh_group: s.suite.map(|x| x.dh),
                    lifetime_secs: s.lifetime.map(|d| d.as_secs()).unwrap_or(0),
                    active_secs: s.active_time.as_secs(),
                    spi_i: s.spi_i,
                    spi_r: s.spi_r,
                    children: kids,
                    dpd: tunnel.and_then(|t| t.dpd).map(|d| (d.threshold.as_secs(), d.retry.as_secs())),
                    nat_t: s.nat_t,
                }
            })
            .collect()
    }

    fn ipsec_views(&self, peer: Option<IpAddr>, now: Instant) -> Vec<IpsecSaView> {
        let infos = self.endpoint.child_sas();
        let mut out = Vec::new();
        for r in self.children.values() {
            if peer.is_some_and(|p| p != r.up.peer) {
                continue;
            }
            let (map, seq) = match r.up.tunnel.rsplit_once(':') {
                Some((m, s)) => (m.to_string(), s.parse().unwrap_or(0)),
                None => (r.up.tunnel.clone(), 0),
            };
            let entry = self.cfg.crypto_maps.iter().find(|e| e.map == map && e.seq == seq);
            let interface = self
                .cfg
                .crypto_map_bindings
                .iter()
                .find(|b| b.map == map)
                .map(|b| b.nameif.clone())
                .unwrap_or_else(|| "outside".into());
            let (Some(lts), Some(rts)) = (r.up.local_ts.first().copied(), r.up.remote_ts.first().copied()) else { continue };
            let info = infos.iter().find(|c| c.spi_in == r.up.inbound.spi);
            let remaining_secs = info
                .map(|i| i.expires_in.as_secs())
                .unwrap_or_else(|| r.up.lifetime.saturating_sub(now.saturating_duration_since(r.installed)).as_secs());
            let in_b = Counters::get(&r.inbound.counters.bytes);
            let out_b = Counters::get(&r.outbound.counters.bytes);
            let kb_left = |b: u64| r.up.lifetime_kilobytes.map(|k| k.saturating_sub(b / 1024));
            let (udp, local_port, remote_port) = match r.up.encap {
                esp::Encap::Udp { local_port, remote_port } => (true, local_port, remote_port),
                esp::Encap::Native => (false, 500, 500),
            };
            let esp_overhead = r.outbound.sa.lock().map(|s| s.overhead(1400)).unwrap_or(0);
            let outer = 20 + if udp { 8 } else { 0 };
            out.push(IpsecSaView {
                interface,
                map: map.clone(),
                seq,
                acl_line: entry.map(|e| show::acl_line(&e.match_address, &lts, &rts)),
                local: SocketAddr::new(r.up.local, local_port),
                remote: SocketAddr::new(r.up.peer, remote_port),
                local_ts: lts,
                remote_ts: rts,
                spi_in: r.up.inbound.spi,
                spi_out: r.up.outbound.spi,
                encryption: r.up.inbound.encryption,
                integrity: r.up.inbound.integrity,
                esn: r.up.inbound.esn,
                pfs: info.and_then(|i| i.suite.dh),
                udp_encap: udp,
                conn_id: r.conn_id,
                remaining_secs,
                remaining_kb_in: kb_left(in_b),
                remaining_kb_out: kb_left(out_b),
                encaps: Counters::get(&r.outbound.counters.packets),
                decaps: Counters::get(&r.inbound.counters.packets),
                send_errors: Counters::get(&r.outbound.counters.errors),
                replay_drops: Counters::get(&r.inbound.counters.replay),
                auth_drops: Counters::get(&r.inbound.counters.auth),
                other_recv_errors: Counters::get(&r.inbound.counters.errors),
                overhead: (esp_overhead + outer, esp_overhead),
                media_mtu: u32::from(self.tun_mtu) + 100,
                draining: r.draining,
            });
        }
        out
    }
}

// Configuration reload (`holdfast reload`, SIGHUP; docs/reload.md).
impl Daemon {
    /// Re-reads the configuration file (the one `run` was given, or `file`), validates it as
    /// `holdfast check` does, refuses it as a whole when something in it needs a restart, and
    /// otherwise applies it: unchanged tunnels keep their SAs and flows, changed ones are
    /// re-established (flows follow preserve-vpn-flows, as for `clear crypto ...`), removed ones
    /// are deleted with their flows, added ones are initiated; timeouts, sysopts and logging
    /// apply at once. Returns the operator's answer (`ERROR: ` first when refused).
    fn reload(&mut self, guard: &mut SystemGuard, file: Option<PathBuf>, source: reload::Source) -> String {
        let Some(path) = file.or_else(|| self.reload.file.clone()) else {
            return reload::refusal("(no file)", "the daemon was started without a configuration file to read again\n");
        };
        let shown = path.display().to_string();
        self.syslog.log(reload::executed(source, &shown));
        match self.reload_checked(&path) {
            Err(why) => {
                self.syslog.log(reload::end_failed(&shown));
                reload::refusal(&shown, &why)
            }
            Ok((cfg, resolved)) => {
                // Remote access first: it can still refuse (a live lease outside the new
                // pools), and nothing else has changed yet.
                let ra_lines = match reload::remote_access(self.ra.as_mut(), &path, &cfg, &self.running_config) {
                    Ok(l) => l,
                    Err(why) => {
                        self.syslog.log(reload::end_failed(&shown));
                        return reload::refusal(&shown, &why);
                    }
                };
                let mut outcome = self.apply(guard, &shown, cfg, resolved);
                outcome.remote_access = ra_lines;
                self.syslog.log(reload::end_ok(&shown));
                outcome.text()
            }
        }
    }

    /// Everything that can refuse a reload, before anything changes.
    fn reload_checked(&self, path: &std::path::Path) -> Result<(policy::Config, Vec<policy::ResolvedTunnel>), String> {
        let loaded = config::load_with(path, config::ParseOptions { strict: self.reload.strict }).map_err(|d| d.to_string())?;
        let cfg = loaded.config;
        check_certificates(&cfg).map_err(|e| format!("{}: error: {e}\n", path.display()))?;
        let resolved = cfg.tunnels_with_auth().map_err(|e| format!("{}: error: {e}\n", path.display()))?;
        let tunnels: Vec<TunnelPolicy> = resolved.iter().map(|t| t.policy.clone()).collect();
        let bound: Vec<Ipv4Addr> = self.shared.outsides.iter().map(|o| o.local).collect();
        let restart = reload::restart_required(&self.cfg, &cfg, &tunnels, &bound, self.reload.has_tun);
        if !restart.is_empty() {
            return Err(reload::restart_lines(path, &restart));
        }
        Ok((cfg, resolved))
    }

    fn apply(&mut self, guard: &mut SystemGuard, shown: &str, cfg: policy::Config, resolved: Vec<policy::ResolvedTunnel>) -> reload::Outcome {
        let now = clock::now();
        let mut notes = Vec::new();
        let old_tunnels = self.tunnels.clone();
        let new_tunnels: Vec<TunnelPolicy> = resolved.iter().map(|t| t.policy.clone()).collect();
        let globals = reload::global_changes(&self.cfg, &cfg);

        // Removed tunnels take their flows with them, whatever preserve-vpn-flows says: nothing
        // would ever carry them again.
        for t in old_tunnels.iter().filter(|o| !new_tunnels.iter().any(|n| n.name == o.name)) {
            if let Some(&ft) = self.flow_tunnels.get(&t.name) {
                flows::lock(&self.flows).set_tunnel_preserve(ft, false, false);
            }
        }
        // A tunnel whose certificate authentication changed is re-established even if its
        // policy reads the same (the engine cannot compare certificate material).
        let old_auth: HashMap<String, policy::TunnelAuth> =
            self.cfg.tunnels_with_auth().map(|v| v.into_iter().map(|t| (t.policy.name, t.auth)).collect()).unwrap_or_default();
        let force: Vec<String> = resolved
            .iter()
            .filter(|t| t.auth.uses_certificates() && old_auth.get(&t.policy.name).is_some_and(|a| *a != t.auth))
            .map(|t| t.policy.name.clone())
            .collect();
        let result = self.endpoint.reconfigure(now, new_tunnels.clone(), cfg.ikev2.clone(), &force);
        // Certificate material for every tunnel that uses it: unchanged SAs keep theirs, the
        // next negotiation uses the files as they are now (checked above).
        if let Err(e) = ike::cert_auth::install(&mut self.endpoint, &resolved) {
            notes.push(format!("certificate material not installed: {e}"));
        }
        if resolved.iter().any(|t| t.auth.uses_certificates()) {
            notes.push("certificate files were read again; they apply to the next IKE negotiation".into());
        }
        // The deletions' events, handled like an operator's clear: the tunnels go down for the
        // connection table at once (preserved flows wait for the new SA, the others end).
        self.deliberate = true;
        self.drain();
        self.deliberate = false;

        // Routes and fail-closed rules: the new ones first, then the old ones go.
        let tun = self.reload.tun_name.clone();
        if self.reload.has_tun {
            let (old_routes, new_routes) = (reload::routes(&self.cfg, &old_tunnels), reload::routes(&cfg, &new_tunnels));
            let (old_bh, new_bh) = (reload::blackholes(&old_tunnels), reload::blackholes(&new_tunnels));
            let mut failed = Vec::new();
            for &(a, l) in new_bh.iter().filter(|p| !old_bh.contains(p)) {
                if let Err(e) = guard.add_blackhole(a, l) {
                    failed.push(format!("blackhole route {a}/{l}: {e}"));
                }
            }
            let pairs = reload::inbound_drop_pairs(&new_tunnels);
            if pairs != reload::inbound_drop_pairs(&old_tunnels) {
                match guard.install_inbound_drop(&tun, &pairs) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => failed.push(format!("nftables: {e}")),
                }
            }
            for (&(a, l), &src) in new_routes.iter().filter(|(p, s)| old_routes.get(p) != Some(s)) {
                if let Err(e) = guard.add_route(a, l, &tun, src) {
                    failed.push(format!("route {a}/{l}: {e}"));
                }
            }
            for &(a, l) in old_routes.keys().filter(|p| !new_routes.contains_key(p)) {
                if let Err(e) = guard.remove_route(a, l, &tun) {
                    failed.push(format!("removing route {a}/{l}: {e}"));
                }
            }
            for &(a, l) in old_bh.iter().filter(|p| !new_bh.contains(p)) {
                if let Err(e) = guard.remove_blackhole(a, l) {
                    failed.push(format!("removing blackhole route {a}/{l}: {e}"));
                }
            }
            for f in failed {
                eprintln!("holdfast: reload {shown}: {f}");
                notes.push(format!("FAILED: {f}"));
            }
        }

        // The SPD: entries in configuration order; kept tunnels keep theirs (with their SAs),
        // changed ones get the new selectors and interfaces, added ones start empty.
        let mut entries = Vec::new();
        {
            let mut eng = flows::lock(&self.flows);
            for t in &new_tunnels {
                let outside = flows::outside_nameif(&cfg, &t.name);
                let inside = flows::inside_nameif(&cfg, &t.local_ts, &outside);
                let (Ok(o), Ok(i), Ok(ft)) = (eng.interface(&outside), eng.interface(&inside), eng.tunnel(&t.name)) else {
                    notes.push(format!("FAILED: tunnel {}: connection table full (interfaces or tunnels)", t.name));
                    continue;
                };
                entries.push((t.clone(), ft, flow::IfcPair { outside: o, inside: i }, flows::icmp_source(inside_source(&cfg, &t.local_ts), t.local_addr)));
            }
        }
        self.sad.update(|s| {
            let mut old = std::mem::take(&mut s.spd);
            for (t, ft, ifcs, icmp_from) in &entries {
                let mut e = match old.iter().position(|e| *e.tunnel == *t.name) {
                    Some(i) => old.remove(i),
                    None => SpdEntry {
                        tunnel: Arc::from(t.name.as_str()),
                        flow_tunnel: *ft,
                        ifcs: *ifcs,
                        icmp_from: *icmp_from,
                        local_ts: Vec::new(),
                        remote_ts: Vec::new(),
                        children: Vec::new(),
                        last_acquire: Arc::new(AtomicU64::new(0)),
                    },
                };
                e.flow_tunnel = *ft;
                e.ifcs = *ifcs;
                e.icmp_from = *icmp_from;
                e.local_ts = t.local_ts.clone();
                e.remote_ts = t.remote_ts.clone();
                s.spd.push(e);
            }
        });
        for (t, ft, ..) in &entries {
            self.flow_tunnels.insert(t.name.clone(), *ft);
        }
        for t in &result.removed {
            self.flow_tunnels.remove(t);
            self.down_pending.remove(t);
            self.watch.reset(t);
        }

        // Global settings.
        if globals.contains(&"timeout") || globals.contains(&"sysopt") {
            // New timeouts re-arm every conn; preserve-vpn-flows applies to tunnels from their
            // next establishment, as on the ASA (reference/asa.md §1).
            flows::lock(&self.flows).set_policy(now, cfg.timeouts.clone(), cfg.sysopt.clone());
        }
        if globals.contains(&"logging") {
            self.syslog.reconfigure(SyslogConfig::from_policy(&cfg.logging));
        }
        self.tunnels = new_tunnels;
        self.running_config = config::running_config(&cfg);
        self.cfg = cfg;

        // Every tunnel we initiate, as at start: a no-op for one that has its CHILD_SA or is
        // negotiating it; brings up added and changed ones, and a kept one that just stopped
        // being answer-only.
        for t in self.tunnels.iter().filter(|t| t.connection_type != ConnectionType::AnswerOnly) {
            self.endpoint.handle_command(now, ike::Command::Initiate { tunnel: t.name.clone() });
        }
        self.drain();
        reload::Outcome { file: shown.to_string(), tunnels: result, globals, notes, remote_access: Vec::new() }
    }
}

/// Source address for routes into the TUN: an inside interface address within our protected
/// networks, so traffic the gateway itself originates matches the tunnel's selectors.
pub(crate) fn inside_source(cfg: &policy::Config, local_ts: &[TrafficSelector]) -> Option<Ipv4Addr> {
    cfg.interfaces
        .iter()
        .filter_map(|i| i.address.map(|a| a.addr))
        .find(|a| local_ts.iter().any(|t| t.contains_addr(*a)))
}

/// Wall-clock milliseconds since the Unix epoch (snapshot ages across a restart).
fn unix_ms() -> u64 {
    clock::wall_now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Splits an address range into the CIDR prefixes covering exactly it.
pub fn range_to_prefixes(start: Ipv4Addr, end: Ipv4Addr) -> Vec<(Ipv4Addr, u8)> {
    let (mut s, e) = (u64::from(u32::from(start)), u64::from(u32::from(end)));
    let mut out = Vec::new();
    while s <= e {
        // Largest block aligned at s that does not pass e.
        let mut size: u64 = if s == 0 { 1 << 32 } else { 1 << s.trailing_zeros().min(32) };
        while s + size - 1 > e {
            size >>= 1;
        }
        out.push((Ipv4Addr::from(s as u32), (32 - size.trailing_zeros()) as u8));
        s += size;
    }
    out
}

/// A CHILD_SA's traffic as the metrics count it.
fn child_traffic(r: &ChildRecord) -> metrics::Traffic {
    metrics::Traffic {
        bytes_in: Counters::get(&r.inbound.counters.bytes),
        bytes_out: Counters::get(&r.outbound.counters.bytes),
        packets_in: Counters::get(&r.inbound.counters.packets),
        packets_out: Counters::get(&r.outbound.counters.packets),
    }
}

// Observability (metrics scrape and `show --json`): read-only views of the state above.
impl Daemon {
    /// Copies the counters a scrape reports. The connection table is locked for its statistics
    /// and a bounded slice at a time to count the preserved conns; everything else is atomics
    /// and engine lists.
    fn metrics_snapshot(&self) -> metrics::Snapshot {
        let sad = self.sad.load();
        let tunnels = self
            .tunnels
            .iter()
            .map(|t| {
                let mut traffic = self.metrics.retired(&t.name);
                let mut ipsec_sas = 0;
                for r in self.children.values().filter(|r| r.up.tunnel == t.name) {
                    traffic.add(&child_traffic(r));
                    ipsec_sas += u64::from(!r.draining);
                }
                metrics::TunnelSample {
                    tunnel: t.name.clone(),
                    tunnel_group: Self::group(t.peer_addr),
                    peer: t.peer_addr,
                    up: sad.spd.iter().any(|e| *e.tunnel == *t.name && !e.children.is_empty()),
                    ipsec_sas,
                    traffic,
                }
            })
            .collect();
        let ike = self.endpoint.ike_sas();
        let count = |st: ike::IkeStatus| ike.iter().filter(|s| s.status == st).count() as u64;
        let ike_sas = vec![
            ("ready", count(ike::IkeStatus::Ready)),
            ("negotiating", count(ike::IkeStatus::Negotiating)),
            ("deleting", count(ike::IkeStatus::Deleting)),
        ];
        let preserved = self.flows.count_preserved(flows::COPY_SLICE_SLOTS);
        let st = flows::lock(&self.flows).stats().clone();
        let ipsec = self.stats();
        let ra_sessions = self.ra.as_ref().map_or(0, |ra| {
            ra.with_engine(|s, now| s.sessions(now).iter().filter(|x| x.assigned_ip != Ipv4Addr::UNSPECIFIED).count() as u64)
        });
        metrics::Snapshot {
            tunnels,
            ike_sas,
            conns_in_use: st.in_use,
            conns_most_used: st.most_used,
            conns_built: st.built,
            conns_preserved: preserved,
            segments_held: st.held + st.held_suspended,
            segments_replayed: st.replayed,
            frame_drops: flow::DropReason::ALL.iter().map(|r| (r.keyword(), st.drops(*r))).collect(),
            flow_drops: vec![("tunnel-torn-down", st.flows_tunnel_torn_down)],
            esp_drops: vec![
                ("no-sa", ipsec.missing_sa),
                ("invalid-spi", ipsec.invalid_spi),
                ("malformed", ipsec.malformed),
                ("replay", ipsec.in_replay),
                ("auth", ipsec.in_auth_failures),
                ("other", ipsec.in_other_drops),
            ],
            ra_sessions,
            syslog_dropped: self.syslog.dropped(),
            ike_queue_drops: ipsec.ike_queue_drops,
            ra_io_drops: self.ra.as_ref().map_or_else(Vec::new, |ra| {
                let io = ra.io_stats();
                vec![
                    ("tls-queue-full", io.tls_send_overflow),
                    ("tls-refused-per-address", io.tls_refused_per_address),
                    ("tls-handshake-failed", io.tls_handshake_failures),
                    ("dtls-handshake-failed", io.dtls_handshake_failures),
                    ("udp-unmatched", io.udp_unmatched),
                ]
            }),
        }
    }

    /// `show --json ...`: the data behind the same command's text, as JSON.
    fn on_json(&mut self, req: &Request, now: Instant) -> String {
        match req {
            Request::ShowConn { view: control::ConnView::Count, .. } => show::conn_json(&flows::lock(&self.flows), None),
            // The control loop answers this off its task (ConnListing); kept for completeness.
            Request::ShowConn { address, .. } => ConnListing::Json { address: *address }.answer(&self.flows),
            Request::ShowAspDrop => {
                let eng = flows::lock(&self.flows);
                show::asp_drop_json(eng.stats(), &eng.show_asp_drop())
            }
            Request::ShowVpnContext { .. } => show::vpn_context_json(&self.vpn_contexts()),
            Request::ShowIkev2Sa { .. } => show::to_json(&self.ike_views()),
            Request::ShowIpsecSa { peer, .. } => show::to_json(&self.ipsec_views(*peer, now)),
            Request::ShowIpsecStats => show::to_json(&self.stats()),
            Request::ShowLogging => show::to_json(&self.syslog.snapshot()),
            Request::ShowVersion => show::to_json(&serde_json::json!({ "version": env!("CARGO_PKG_VERSION") })),
            Request::ShowVpnSessiondb { filter } => {
                let sessions = match &self.ra {
                    None => Vec::new(),
                    Some(ra) => ra.with_engine(|s, now| s.sessions(now)),
                };
                let v: Vec<_> = sessions
                    .into_iter()
                    .filter(|s| s.assigned_ip != Ipv4Addr::UNSPECIFIED)
                    .filter(|s| match filter {
                        None => true,
                        Some(SessionFilter::Name(u)) => &s.username == u,
                        Some(SessionFilter::IpAddress(a)) => s.assigned_ip == *a || s.public_ip.ip() == IpAddr::V4(*a),
                    })
                    .collect();
                show::to_json(&v)
            }
            _ => control::json_error("no JSON form for this command"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `stop keep-sessions` whose save failed must not claim the sessions were kept: the
    /// answer is an error (the CLI exits non-zero) that says why and what happened instead.
    #[test]
    fn stop_answer_reports_a_failed_save_as_an_error() {
        let dir = std::path::Path::new("/var/lib/holdfast");
        let ok = stop_answer(true, RaStopped::Saved(2), dir);
        use crate::control;
        assert!(!control::is_error(&ok), "{ok}");
        assert!(ok.contains("2 remote-access session(s) saved in /var/lib/holdfast/"), "{ok}");
        let failed = stop_answer(true, RaStopped::SaveFailed("disk full".into()), dir);
        assert!(control::is_error(&failed), "{failed}");
        assert!(failed.contains("disk full") && failed.contains("clients told"), "{failed}");
        assert!(!failed.contains("saved in"), "{failed}");
        assert!(!control::is_error(&stop_answer(true, RaStopped::NotConfigured, dir)));
        assert!(!control::is_error(&stop_answer(false, RaStopped::NotConfigured, dir)));
        assert!(!control::is_error(&stop_answer(false, RaStopped::Ended, dir)));
    }

    /// `stop` on a gateway without remote access does not talk about remote-access clients
    /// (review N5); with remote access it still says they are told.
    #[test]
    fn stop_answer_without_remote_access_says_so() {
        let dir = std::path::Path::new("/var/lib/holdfast");
        for keep in [false, true] {
            let a = stop_answer(keep, RaStopped::NotConfigured, dir);
            assert!(!crate::control::is_error(&a), "{a}");
            assert!(a.starts_with("Stopping"), "{a}");
            assert!(a.contains("no remote access is configured"), "{a}");
            assert!(!a.contains("clients are told") && !a.contains("not running"), "{a}");
        }
        let with_ra = stop_answer(false, RaStopped::Ended, dir);
        assert!(with_ra.contains("remote-access clients are told"), "{with_ra}");
    }

    /// A `stop keep-sessions` whose save task panicked (review N6) is answered as a failed
    /// save (an ERROR: line, the gateway still stops), not as "remote access is not running".
    #[test]
    fn stop_answer_after_a_panicked_save_task_is_an_error() {
        // The plain `stop` path's task (ending the sessions) panicking is an error too.
        let rt0 = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let ended = rt0.block_on(async { tokio::task::spawn_blocking(|| panic!("end task test panic")).await });
        let a = stop_answer(false, end_outcome(ended), std::path::Path::new("/var/lib/holdfast"));
        assert!(crate::control::is_error(&a), "{a}");
        assert!(a.contains("could not be ended cleanly") && !a.contains("clients are told"), "{a}");
        let fine = stop_answer(false, end_outcome(Ok(())), std::path::Path::new("/var/lib/holdfast"));
        assert!(fine.contains("clients are told") && !crate::control::is_error(&fine), "{fine}");

        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let joined = rt.block_on(async {
            tokio::task::spawn_blocking(|| -> Result<usize, String> { panic!("save task test panic") }).await
        });
        assert!(joined.is_err());
        let saved = save_outcome("stop keep-sessions", joined);
        let a = stop_answer(true, saved, std::path::Path::new("/var/lib/holdfast"));
        assert!(crate::control::is_error(&a), "{a}");
        assert!(a.contains("could not be saved") && a.contains("stops"), "{a}");
        assert!(!a.contains("not running") && !a.contains("configured"), "{a}");
    }

    /// `show conn` and `show --json conn` listings (not `count`) are the ones the control loop
    /// hands to a blocking thread, and what comes back through the reply channel is what the
    /// synchronous path gives for the same table (that it runs off the control task is by
    /// construction, not checked here).
    #[test]
    fn conn_listings_answer_like_the_synchronous_path() {
        use crate::control::ConnView;
        let count = Request::ShowConn { view: ConnView::Count, address: None };
        assert!(ConnListing::of(&count).is_none());
        assert!(ConnListing::of(&Request::Json(Box::new(count))).is_none());
        assert!(ConnListing::of(&Request::ShowVersion).is_none());

        let now = clock::now();
        let shared: SharedEngine = Arc::new(flows::Shared::new(flows::tests::filled(now, 600)));
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        let off_task = |req: &Request| {
            let listing = ConnListing::of(req).expect("a listing");
            let (tx, rx) = oneshot::channel();
            rt.block_on(async {
                listing.answer_off_task(shared.clone(), tx);
                rx.await.expect("an answer")
            })
        };
        // Idle times in the text may tick between the two answers: compare the shape.
        for view in [ConnView::Brief, ConnView::Long, ConnView::Detail] {
            let got = off_task(&Request::ShowConn { view, address: None });
            let want = flows::show_conn(&shared, clock::now(), view, None);
            assert_eq!(got.lines().count(), want.lines().count(), "{view:?}");
            assert_eq!(got.lines().next(), want.lines().next(), "{view:?}");
            assert!(got.starts_with("600 in use"), "{got:.80}");
        }
        let json = off_task(&Request::Json(Box::new(Request::ShowConn { view: ConnView::Brief, address: None })));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["conns"].as_array().map(Vec::len), Some(600), "{json:.200}");
        let one = off_task(&Request::Json(Box::new(Request::ShowConn { view: ConnView::Brief, address: Some(Ipv4Addr::new(10, 0, 0, 3)) })));
        let v: serde_json::Value = serde_json::from_str(&one).unwrap();
        assert_eq!(v["conns"].as_array().map(Vec::len), Some(75), "inside 10.0.0.3 holds one conn in eight: {one:.200}");
    }

    /// A self-signed certificate and its key (and a second, unrelated key) in `dir`.
    fn cert_files(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
        use openssl::{asn1::Asn1Time, hash::MessageDigest, pkey::PKey, rsa::Rsa, x509::X509};
        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let other = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let mut name = openssl::x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "vpn.example").unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
        b.set_not_after(&Asn1Time::days_from_now(2).unwrap()).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        let (c, k, o) = (dir.join("server.pem"), dir.join("server.key"), dir.join("other.key"));
        std::fs::write(&c, b.build().to_pem().unwrap()).unwrap();
        std::fs::write(&k, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        std::fs::write(&o, other.private_key_to_pem_pkcs8().unwrap()).unwrap();
        (c, k, o)
    }

    fn ra_config(cert: &std::path::Path, key: &std::path::Path) -> policy::Config {
        let text = format!(
            "interface out\n nameif outside\n ip address 203.0.113.1 255.255.255.0\n\
             ip local pool VPNPOOL 10.99.0.100-10.99.0.199 mask 255.255.255.0\n\
             webvpn\n enable outside\n anyconnect enable\n\
             group-policy G internal\ngroup-policy G attributes\n vpn-tunnel-protocol ssl-client\n\
             tunnel-group RA type remote-access\ntunnel-group RA general-attributes\n address-pool VPNPOOL\n default-group-policy G\n\
             tunnel-group RA webvpn-attributes\n group-alias RA enable\n\
             username vpn password secret-pw\n\
             crypto ca trustpoint TP\n certificate-file {}\n key-file {}\nssl trust-point TP outside\n",
            cert.display(),
            key.display()
        );
        config::parse("ra.cfg", &text).unwrap_or_else(|d| panic!("{d}")).config
    }

    #[test]
    fn remote_access_plan_checks_the_trustpoint_files() {
        let dir = std::env::temp_dir().join(format!("hf-ra-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key, other) = cert_files(&dir);

        let plan = plan_remote_access(&ra_config(&cert, &key)).unwrap().expect("remote access configured");
        assert_eq!(plan.listen, "203.0.113.1:443".parse().unwrap());
        assert_eq!(plan.engine.dtls_port, 443);
        assert_eq!(plan.engine.tunnel_groups.len(), 1);
        assert!(plan.engine.users.iter().any(|u| u.name == "vpn"));
        assert!(plan.ca_file.is_none());

        let e = plan_remote_access(&ra_config(&cert, &other)).err().expect("mismatched key refused").to_string();
        assert!(e.contains("does not match certificate-file"), "{e}");
        let e = plan_remote_access(&ra_config(&cert, &dir.join("missing.key"))).err().expect("missing key refused").to_string();
        assert!(e.contains("missing.key") && e.contains("No such file"), "{e}");
        let e = plan_remote_access(&ra_config(&key, &key)).err().expect("key as certificate refused").to_string();
        assert!(e.contains("certificate-file"), "{e}");

        // No webvpn: nothing to start.
        assert!(plan_remote_access(&policy::Config::default()).unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The hash Cisco clients pin the gateway by: the plan carries the SHA-1 of the leaf
    /// certificate's DER in upper-case hex, the value `openssl x509 -fingerprint -sha1` (the
    /// command-line tool, not this code) prints without its colons.
    #[test]
    fn remote_access_plan_carries_the_server_cert_sha1() {
        let dir = std::env::temp_dir().join(format!("hf-ra-sha1-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key, _) = cert_files(&dir);
        let plan = plan_remote_access(&ra_config(&cert, &key)).unwrap().expect("remote access configured");
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
            .arg(&cert)
            .output()
            .expect("openssl tool");
        let text = String::from_utf8(out.stdout).unwrap();
        let want: String = text.trim().rsplit('=').next().unwrap().replace(':', "");
        assert_eq!(want.len(), 40, "{text}");
        assert_eq!(plan.engine.server_cert_sha1, want);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ranges_become_prefixes() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(range_to_prefixes(ip("10.2.0.0"), ip("10.2.0.255")), vec![(ip("10.2.0.0"), 24)]);
        assert_eq!(range_to_prefixes(ip("0.0.0.0"), ip("255.255.255.255")), vec![(ip("0.0.0.0"), 0)]);
        assert_eq!(range_to_prefixes(ip("10.0.0.1"), ip("10.0.0.1")), vec![(ip("10.0.0.1"), 32)]);
        assert_eq!(
            range_to_prefixes(ip("10.0.0.1"), ip("10.0.0.6")),
            vec![(ip("10.0.0.1"), 32), (ip("10.0.0.2"), 31), (ip("10.0.0.4"), 31), (ip("10.0.0.6"), 32)]
        );
    }
}
