//! Prometheus metrics (holdfast extension `metrics prometheus listen <ip> [port <n>]`).
//!
//! A scrape is a [`crate::control::Request::Metrics`] sent to the control task over the same
//! channel as the control socket's commands: the control task copies counters that already exist
//! (SA atomics, the connection table's `Stats`, engine SA lists) into a [`Snapshot`] and the
//! text is encoded from that. The data-path threads never wait for a scrape except for the
//! connection-table lock: taken once to read its statistics, and for short slices (like
//! `show conn`'s copy) to count preserved conns (each 5-tuple once, as that copy lists it). The
//! resume-time histogram is the only state of its own: it is observed by the control task where
//! held segments are replayed.
//!
//! The text is the OpenMetrics/Prometheus exposition format written by `prometheus-client`.
//! Metric names are listed in docs/observability.md.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::control::Request;
use crate::daemon::ControlRequest;

/// Upper bounds (seconds) of the resume-time buckets: replays normally leave within
/// microseconds of the SA install; the top buckets catch a control task that was busy.
pub const RESUME_BUCKETS: [f64; 12] = [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0];

/// Content type of the OpenMetrics text `prometheus-client` writes (Prometheus accepts it).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Longest HTTP request head accepted from a scraper.
const MAX_REQUEST: usize = 8192;

/// Traffic of one tunnel (inner packets through its CHILD_SAs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
}

impl Traffic {
    pub fn add(&mut self, o: &Traffic) {
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.packets_in += o.packets_in;
        self.packets_out += o.packets_out;
    }
}

/// One configured site-to-site tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TunnelSample {
    /// The crypto map entry (`MAP:SEQ`).
    pub tunnel: String,
    /// The LAN-to-LAN tunnel-group (named after the peer address, as on the ASA).
    pub tunnel_group: String,
    pub peer: IpAddr,
    /// Has an outbound CHILD_SA to send on.
    pub up: bool,
    /// Live (not draining) CHILD_SA pairs.
    pub ipsec_sas: u64,
    /// Totals over the tunnel's SAs since the daemon started, removed SAs included.
    pub traffic: Traffic,
}

/// Everything a scrape reports, copied from the daemon's state at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub tunnels: Vec<TunnelSample>,
    /// IKE SAs by state (`ready`, `negotiating`, `deleting`).
    pub ike_sas: Vec<(&'static str, u64)>,
    pub conns_in_use: u64,
    pub conns_most_used: u64,
    pub conns_built: u64,
    /// Conns kept with the `V` flag while their tunnel is down (preserve-vpn-flows).
    pub conns_preserved: u64,
    pub segments_held: u64,
    pub segments_replayed: u64,
    /// `show asp drop` frame drops by keyword, every reason (zeros included).
    pub frame_drops: Vec<(&'static str, u64)>,
    /// `show asp drop` flow drops by keyword.
    pub flow_drops: Vec<(&'static str, u64)>,
    /// ESP/IPsec data-path drops (`show crypto ipsec stats`) by reason.
    pub esp_drops: Vec<(&'static str, u64)>,
    /// AnyConnect sessions with an assigned address.
    pub ra_sessions: u64,
    /// Syslog stderr/UDP copies dropped because the logger queue was full (`show logging`).
    pub syslog_dropped: u64,
    /// IKE datagrams dropped because the data path's queue to the control task was full.
    pub ike_queue_drops: u64,
    /// Remote-access I/O layer refusals and drops by reason (empty without remote access).
    pub ra_io_drops: Vec<(&'static str, u64)>,
}

/// The daemon's own metric state: the resume-time histogram and the traffic of SAs that were
/// removed (per tunnel, so per-tunnel counters never go backwards at a rekey).
pub struct Metrics {
    resume: Histogram,
    retired: Mutex<HashMap<String, Traffic>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self { resume: Histogram::new(RESUME_BUCKETS), retired: Mutex::new(HashMap::new()) }
    }
}

impl Metrics {
    /// Time from a preserved flow's tunnel coming back (SA installed, or a suspended path
    /// answering again) to its held segments leaving on the new SA.
    pub fn observe_resume(&self, d: Duration) {
        self.resume.observe(d.as_secs_f64());
    }

    /// Adds a removed SA's traffic to its tunnel's totals.
    pub fn retire(&self, tunnel: &str, t: Traffic) {
        let mut r = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        r.entry(tunnel.to_string()).or_default().add(&t);
    }

    /// Traffic of the tunnel's removed SAs.
    pub fn retired(&self, tunnel: &str) -> Traffic {
        let r = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        r.get(tunnel).copied().unwrap_or_default()
    }
}

type Labels = Vec<(&'static str, String)>;

fn gauge(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let g: Gauge = Gauge::default();
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
    reg.register(name, help, g);
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

fn counter_family(reg: &mut Registry, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, u64)>) {
    let f = Family::<Labels, Counter<u64, AtomicU64>>::default();
    for (l, v) in rows {
        f.get_or_create(&l).inc_by(v);
    }
    reg.register(name, help, f);
}

fn gauge_family(reg: &mut Registry, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, u64)>) {
    let f = Family::<Labels, Gauge>::default();
    for (l, v) in rows {
        f.get_or_create(&l).set(i64::try_from(v).unwrap_or(i64::MAX));
    }
    reg.register(name, help, f);
}

/// The exposition text for a snapshot (names: docs/observability.md).
pub fn encode_text(s: &Snapshot, m: &Metrics) -> String {
    let mut reg = Registry::with_prefix("holdfast");
    // `tunnel` (the crypto map entry) keeps two entries to one peer apart.
    let tl = |t: &TunnelSample| -> Labels {
        vec![("peer", t.peer.to_string()), ("tunnel_group", t.tunnel_group.clone()), ("tunnel", t.tunnel.clone())]
    };
    gauge(&mut reg, "tunnels_up", "Site-to-site tunnels with an outbound IPsec SA", s.tunnels.iter().filter(|t| t.up).count() as u64);
    gauge_family(&mut reg, "tunnel_up", "1 when the tunnel has an outbound IPsec SA", s.tunnels.iter().map(|t| (tl(t), u64::from(t.up))));
    gauge_family(&mut reg, "ike_sas", "IKEv2 SAs by state", s.ike_sas.iter().map(|(st, n)| (vec![("state", st.to_string())], *n)));
    gauge(&mut reg, "ipsec_sas", "Live IPsec SA pairs (CHILD_SAs)", s.tunnels.iter().map(|t| t.ipsec_sas).sum());
    counter_family(&mut reg, "tunnel_bytes_in", "Inner bytes received through the tunnel", s.tunnels.iter().map(|t| (tl(t), t.traffic.bytes_in)));
    counter_family(&mut reg, "tunnel_bytes_out", "Inner bytes sent through the tunnel", s.tunnels.iter().map(|t| (tl(t), t.traffic.bytes_out)));
    counter_family(
        &mut reg,
        "tunnel_packets_in",
        "Packets received through the tunnel",
        s.tunnels.iter().map(|t| (tl(t), t.traffic.packets_in)),
    );
    counter_family(&mut reg, "tunnel_packets_out", "Packets sent through the tunnel", s.tunnels.iter().map(|t| (tl(t), t.traffic.packets_out)));
    gauge(&mut reg, "conns_in_use", "Connections in the table (show conn count: in use)", s.conns_in_use);
    gauge(&mut reg, "conns_most_used", "Most connections in use at once (show conn count: most used)", s.conns_most_used);
    counter(&mut reg, "conns_built", "Connections built", s.conns_built);
    gauge(&mut reg, "conns_preserved", "Connections kept with flag V while their tunnel is down", s.conns_preserved);
    counter(&mut reg, "segments_held", "TCP segments held for preserved flows", s.segments_held);
    counter(&mut reg, "segments_replayed", "Held segments replayed into a tunnel that came back", s.segments_replayed);
    counter_family(
        &mut reg,
        "asp_drops",
        "Frame and flow drops by show asp drop reason",
        s.frame_drops
            .iter()
            .map(|(r, n)| (vec![("reason", r.to_string()), ("kind", "frame".to_string())], *n))
            .chain(s.flow_drops.iter().map(|(r, n)| (vec![("reason", r.to_string()), ("kind", "flow".to_string())], *n))),
    );
    counter_family(&mut reg, "esp_drops", "ESP data-path drops by reason", s.esp_drops.iter().map(|(r, n)| (vec![("reason", r.to_string())], *n)));
    gauge(&mut reg, "ra_sessions", "AnyConnect remote-access sessions", s.ra_sessions);
    counter(&mut reg, "syslog_dropped", "Syslog lines not written to stderr/UDP because the logger queue was full", s.syslog_dropped);
    counter(&mut reg, "ike_queue_drops", "IKE datagrams dropped because the queue to the control task was full", s.ike_queue_drops);
    counter_family(
        &mut reg,
        "ra_io_drops",
        "Remote-access I/O drops and refusals by reason (tls-queue-full: CSTP frames tail-dropped for a client not reading fast enough)",
        s.ra_io_drops.iter().map(|(r, n)| (vec![("reason", r.to_string())], *n)),
    );
    reg.register(
        "resume_seconds",
        "Time from a preserved flow's tunnel coming back to its held segments leaving on the new SA",
        m.resume.clone(),
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

/// Serves `GET /metrics` on `listener` until the daemon stops; each scrape asks the control
/// task (through `tx`) for the text. One request per connection (`Connection: close`).
pub async fn serve(listener: tokio::net::TcpListener, tx: mpsc::Sender<ControlRequest>) {
    loop {
        let Ok((s, _)) = listener.accept().await else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(s, tx)).await;
        });
    }
}

async fn answer(mut s: tokio::net::TcpStream, tx: mpsc::Sender<ControlRequest>) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    // RFC 9112 §2.1: the head ends with an empty line; a GET has no body to wait for.
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return respond(&mut s, "431 Request Header Fields Too Large", "text/plain", "request head too large\n").await;
        }
    }
    let (status, ctype, body) = match route(&buf) {
        Route::Metrics => {
            let (rtx, rrx) = oneshot::channel();
            if tx.send(ControlRequest { req: Request::Metrics, reply: rtx }).await.is_err() {
                ("503 Service Unavailable", "text/plain", "daemon stopping\n".to_string())
            } else {
                ("200 OK", CONTENT_TYPE, rrx.await.unwrap_or_default())
            }
        }
        Route::NotFound => ("404 Not Found", "text/plain", "not found; try /metrics\n".into()),
        Route::BadMethod => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
        Route::Bad => ("400 Bad Request", "text/plain", "bad request\n".into()),
    };
    respond(&mut s, status, ctype, &body).await?;
    s.shutdown().await
}

async fn respond(s: &mut tokio::net::TcpStream, status: &str, ctype: &str, body: &str) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    BadMethod,
    Bad,
}

/// The request line decides everything (RFC 9112 §3): `GET /metrics[?query] HTTP/1.x`.
fn route(head: &[u8]) -> Route {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else { return Route::Bad };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else { return Route::Bad };
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return Route::Bad;
    }
    if method != "GET" && method != "HEAD" {
        return Route::BadMethod;
    }
    let path = target.split('?').next().unwrap_or("");
    if path == "/metrics" {
        Route::Metrics
    } else {
        Route::NotFound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            tunnels: vec![TunnelSample {
                tunnel: "outside_map:10".into(),
                tunnel_group: "192.0.2.2".into(),
                peer: "192.0.2.2".parse().unwrap(),
                up: true,
                ipsec_sas: 1,
                traffic: Traffic { bytes_in: 1000, bytes_out: 2000, packets_in: 10, packets_out: 20 },
            }],
            ike_sas: vec![("ready", 1), ("negotiating", 0), ("deleting", 0)],
            conns_in_use: 3,
            conns_most_used: 7,
            conns_built: 9,
            conns_preserved: 2,
            segments_held: 4,
            segments_replayed: 4,
            frame_drops: vec![("tcp-not-syn", 5), ("ipsec-tun-down", 0)],
            flow_drops: vec![("tunnel-torn-down", 1)],
            esp_drops: vec![("replay", 6)],
            ra_sessions: 0,
            syslog_dropped: 11,
            ike_queue_drops: 12,
            ra_io_drops: vec![("tls-queue-full", 13)],
        }
    }

    /// Value of the line that starts with `prefix` (name and labels as encoded).
    fn value(text: &str, prefix: &str) -> Option<f64> {
        text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
    }

    #[test]
    fn exposition_has_the_values() {
        let m = Metrics::default();
        m.observe_resume(Duration::from_micros(300));
        m.observe_resume(Duration::from_millis(30));
        let t = encode_text(&sample(), &m);
        assert_eq!(value(&t, "holdfast_tunnels_up "), Some(1.0), "{t}");
        assert_eq!(value(&t, "holdfast_tunnel_bytes_in_total{peer=\"192.0.2.2\",tunnel_group=\"192.0.2.2\",tunnel=\"outside_map:10\"}"), Some(1000.0), "{t}");
        assert_eq!(value(&t, "holdfast_tunnel_packets_out_total{peer=\"192.0.2.2\",tunnel_group=\"192.0.2.2\",tunnel=\"outside_map:10\"}"), Some(20.0));
        assert_eq!(value(&t, "holdfast_ike_sas{state=\"ready\"}"), Some(1.0));
        assert_eq!(value(&t, "holdfast_conns_most_used "), Some(7.0));
        assert_eq!(value(&t, "holdfast_conns_preserved "), Some(2.0));
        assert_eq!(value(&t, "holdfast_asp_drops_total{reason=\"tcp-not-syn\",kind=\"frame\"}"), Some(5.0), "{t}");
        assert_eq!(value(&t, "holdfast_asp_drops_total{reason=\"tunnel-torn-down\",kind=\"flow\"}"), Some(1.0));
        assert_eq!(value(&t, "holdfast_syslog_dropped_total "), Some(11.0), "{t}");
        assert_eq!(value(&t, "holdfast_ike_queue_drops_total "), Some(12.0), "{t}");
        assert_eq!(value(&t, "holdfast_ra_io_drops_total{reason=\"tls-queue-full\"} "), Some(13.0), "{t}");
        assert_eq!(value(&t, "holdfast_resume_seconds_count "), Some(2.0), "{t}");
        assert_eq!(value(&t, "holdfast_resume_seconds_bucket{le=\"0.0005\"}"), Some(1.0), "{t}");
        assert_eq!(value(&t, "holdfast_resume_seconds_bucket{le=\"0.05\"}"), Some(2.0), "{t}");
        assert!(t.ends_with("# EOF\n"));
    }

    #[test]
    fn retired_traffic_accumulates_per_tunnel() {
        let m = Metrics::default();
        m.retire("a:1", Traffic { bytes_in: 5, bytes_out: 6, packets_in: 1, packets_out: 1 });
        m.retire("a:1", Traffic { bytes_in: 5, bytes_out: 0, packets_in: 1, packets_out: 0 });
        assert_eq!(m.retired("a:1"), Traffic { bytes_in: 10, bytes_out: 6, packets_in: 2, packets_out: 1 });
        assert_eq!(m.retired("b:1"), Traffic::default());
    }

    #[test]
    fn request_line_routing() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::BadMethod);
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::Bad);
        assert_eq!(route(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"), Route::Bad);
        assert_eq!(route(b""), Route::Bad);
    }

    #[tokio::test]
    async fn http_scrape_goes_through_the_control_channel() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel::<ControlRequest>(4);
        tokio::spawn(serve(listener, tx));
        // The control task's side: answers Metrics with the encoded text.
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                assert_eq!(r.req, Request::Metrics);
                let _ = r.reply.send(encode_text(&sample(), &Metrics::default()));
            }
        });
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        let mut resp = String::new();
        c.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
        assert_eq!(value(body, "holdfast_conns_in_use "), Some(3.0));
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /other HTTP/1.1\r\n\r\n").await.unwrap();
        let mut resp = String::new();
        c.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 404 "), "{resp}");
    }
}
