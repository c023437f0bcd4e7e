//! Issue 4, observability: Prometheus metrics of a running holdfast (holdfast <-> holdfast).
//! gw-a serves `metrics prometheus listen 10.1.0.1 port 9464`; the test scrapes it from the
//! gateway's own namespace (HTTP/1.1 over bash's /dev/tcp) and parses the text with a real exposition-format parser
//! (`prometheus-parse`), then checks that the values follow what happens:
//! tunnel up (tunnels_up 1, one ready IKE SA, one IPsec SA pair), a 4 MB transfer (bytes and
//! packets per tunnel grow by at least that much, conns built), `clear crypto ikev2 sa` with no
//! traffic to bring it back (tunnels_up 0 and stays 0), then traffic again (tunnels_up 1).
//!
//! A second test runs the seed scenario's download with `sysopt connection preserve-vpn-flows`
//! and breaks the tunnel with `clear crypto ikev2 sa` on gw-a: the held segment replayed when
//! the tunnel is back shows up in `holdfast_resume_seconds` and the replay counters.

mod common;

use common::*;
use lab::cmd::sh;
use lab::topo::{GW_B_WAN_IP, HOST_B_IP};
use lab::scenario::{Break, PeerKind, Scenario, ScenarioOpts};
use lab::{transfer, HoldfastParams, Suite, Topology, XferOpts};
use std::collections::HashMap;
use std::time::Duration;

const LISTEN: &str = "10.1.0.1:9464";

struct Scrape {
    text: String,
    samples: Vec<prometheus_parse::Sample>,
}

impl Scrape {
    /// The value of `name` whose labels include all of `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.iter().find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))).and_then(|s| {
            match &s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => Some(*v),
                _ => None,
            }
        })
    }

    fn must(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| panic!("{name}{labels:?} missing from the scrape:\n{}", self.text))
    }
}

fn scrape(t: &Topology) -> Scrape {
    scrape_ns(&t.gw_a)
}

fn scrape_ns(ns: &str) -> Scrape {
    // A plain HTTP/1.1 GET from bash's /dev/tcp inside the namespace (no HTTP client to
    // install); the daemon answers with Connection: close, so `cat` ends with the body.
    let (ip, port) = LISTEN.split_once(':').unwrap();
    let get = format!(
        "exec 3<>/dev/tcp/{ip}/{port} && printf 'GET /metrics HTTP/1.1\\r\\nHost: {LISTEN}\\r\\nAccept: text/plain\\r\\n\\r\\n' >&3 && timeout 5 cat <&3"
    );
    let out = sh(Some(ns), &["bash", "-c", &get], Duration::from_secs(10)).expect("GET /metrics");
    let (head, body) = out.stdout.split_once("\r\n\r\n").expect("HTTP head and body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/openmetrics-text"), "{head}");
    let samples = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("exposition text parses").samples;
    assert!(!samples.is_empty(), "no samples:\n{body}");
    Scrape { text: body.to_string(), samples }
}

#[test]
fn metrics_follow_the_tunnel() {
    require_root();
    let t = Topology::new().expect("topology");
    let mut a = HoldfastParams::side('a', Suite::GcmX25519);
    let b = HoldfastParams::side('b', Suite::GcmX25519);
    a.extra.push("metrics prometheus listen 10.1.0.1 port 9464".into());
    let (ha, _hb) = holdfast_pair(&t, &a, &b);
    ping_through(&t);
    let tunnel = [("peer", GW_B_WAN_IP), ("tunnel_group", GW_B_WAN_IP)];

    // Up: one tunnel; the SA gauges count what `show crypto ikev2 sa` / `show crypto ipsec sa`
    // list (both ends initiate at start, so there may be a redundant pair for a while).
    let s1 = scrape(&t);
    assert_eq!(s1.must("holdfast_tunnels_up", &[]), 1.0);
    assert_eq!(s1.must("holdfast_tunnel_up", &tunnel), 1.0);
    let json = |what: &str| -> Vec<serde_json::Value> {
        let out = ha.show(&format!("--json {what}")).expect("show --json");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{what}: {e}: {out}"))
    };
    let mut agreed = None;
    for _ in 0..10 {
        let before = scrape(&t);
        let ready = json("crypto ikev2 sa").iter().filter(|s| s["status"] == "READY").count() as f64;
        let live = json("crypto ipsec sa").iter().filter(|s| s["draining"] == false).count() as f64;
        let after = scrape(&t);
        let gauges = |s: &Scrape| (s.must("holdfast_ike_sas", &[("state", "ready")]), s.must("holdfast_ipsec_sas", &[]));
        if gauges(&before) == (ready, live) && gauges(&after) == (ready, live) {
            agreed = Some((ready, live));
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let (ready, live) = agreed.expect("the SA gauges agree with show --json crypto ikev2 sa / ipsec sa");
    assert!(ready >= 1.0 && live >= 1.0, "ready IKE SAs {ready}, live IPsec SA pairs {live}");
    // Every show asp drop reason is exported, zero or not.
    for reason in ["tcp-not-syn", "ipsec-tun-down", "conn-limit"] {
        s1.must("holdfast_asp_drops_total", &[("reason", reason), ("kind", "frame")]);
    }
    s1.must("holdfast_asp_drops_total", &[("reason", "tunnel-torn-down"), ("kind", "flow")]);
    assert_eq!(s1.must("holdfast_ra_sessions", &[]), 0.0);
    let histogram = s1.samples.iter().find(|s| s.metric == "holdfast_resume_seconds").expect("resume histogram");
    assert!(matches!(histogram.value, prometheus_parse::Value::Histogram(ref b) if b.len() >= 10), "{:?}", histogram.value);
    let out0 = s1.must("holdfast_tunnel_bytes_out_total", &tunnel);
    let in0 = s1.must("holdfast_tunnel_bytes_in_total", &tunnel);
    let pk0 = s1.must("holdfast_tunnel_packets_out_total", &tunnel);
    let built0 = s1.must("holdfast_conns_built_total", &[]);
    assert!(out0 > 0.0 && in0 > 0.0, "the pings crossed the tunnel: out {out0} in {in0}");

    // 4 MB host-a -> host-b: gw-a's tunnel counters grow by at least that.
    let bytes = 4 * MB;
    let opts = XferOpts { timeout: Duration::from_secs(30), ..Default::default() };
    transfer(&t, &t.host_a, &t.host_b, HOST_B_IP, bytes, &opts).expect("transfer").check_intact(bytes).expect("intact");
    let s2 = scrape(&t);
    let out1 = s2.must("holdfast_tunnel_bytes_out_total", &tunnel);
    assert!(out1 - out0 >= bytes as f64, "bytes out grew by {} (< {bytes})", out1 - out0);
    assert!(s2.must("holdfast_tunnel_packets_out_total", &tunnel) - pk0 >= (bytes / 1500) as f64);
    assert!(s2.must("holdfast_tunnel_bytes_in_total", &tunnel) > in0, "ACKs came back");
    assert!(s2.must("holdfast_conns_built_total", &[]) > built0, "the transfer's TCP conn was built");
    assert!(s2.must("holdfast_conns_most_used", &[]) >= 1.0);

    // clear crypto ikev2 sa while the wan drops everything between the gateways. gw-a
    // re-initiates a tunnel it initiates right after a clear (as after any delete), so the
    // block is what keeps the tunnel down: the gauges must say down for as long as it lasts.
    t.wan_nft("table bridge lab_block {\n  chain cut {\n    type filter hook forward priority -200; policy accept;\n    drop\n  }\n}\n")
        .expect("block the wan");
    ha.clear("crypto ikev2 sa").expect("clear crypto ikev2 sa");
    let down = lab::cmd::wait_for("tunnels_up 0", Duration::from_secs(10), Duration::from_millis(200), || {
        let s = scrape(&t);
        (s.must("holdfast_tunnels_up", &[]) == 0.0).then_some(s)
    })
    .expect("tunnels_up drops to 0 after the clear");
    assert_eq!(down.must("holdfast_tunnel_up", &tunnel), 0.0);
    assert_eq!(down.must("holdfast_ipsec_sas", &[]), 0.0);
    // Counters are totals since start: the removed SAs' traffic stays counted.
    assert!(down.must("holdfast_tunnel_bytes_out_total", &tunnel) >= out1);
    std::thread::sleep(Duration::from_secs(2));
    let still = scrape(&t);
    assert_eq!(still.must("holdfast_tunnels_up", &[]), 0.0, "no SA can be negotiated through the block");
    assert_eq!(still.must("holdfast_ike_sas", &[("state", "ready")]), 0.0);
    eprintln!("lab: during the block: {} IKE SA(s) negotiating", still.must("holdfast_ike_sas", &[("state", "negotiating")]));

    // Path back: the re-initiation gets through and the gauges follow.
    t.wan_nft_flush().expect("lift the block");
    lab::cmd::wait_for("tunnels_up 1 again", Duration::from_secs(20), Duration::from_millis(200), || {
        (scrape(&t).must("holdfast_tunnels_up", &[]) == 1.0).then_some(())
    })
    .expect("the tunnel comes back after the block");
    ping_through(&t);
    let s3 = scrape(&t);
    assert_eq!(s3.must("holdfast_tunnels_up", &[]), 1.0);
    assert!(s3.must("holdfast_ike_sas", &[("state", "ready")]) >= 1.0);
    assert!(s3.must("holdfast_tunnel_bytes_out_total", &tunnel) > out1, "the pings after the return are counted on top");

    // Same numbers as the show commands: the JSON form of show conn count.
    let json = ha.show("--json conn count").expect("show --json conn count");
    let v: HashMap<String, serde_json::Value> = serde_json::from_str(&json).expect("json");
    assert_eq!(v["most_used"].as_f64(), Some(s3.must("holdfast_conns_most_used", &[])), "{json}");
}

/// Count of the resume-time histogram (`_count` sample or the `+Inf` bucket).
fn resume_count(s: &Scrape) -> f64 {
    if let Some(v) = s.get("holdfast_resume_seconds_count", &[]) {
        return v;
    }
    let h = s.samples.iter().find(|x| x.metric == "holdfast_resume_seconds").expect("resume histogram");
    match &h.value {
        prometheus_parse::Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
        v => panic!("resume histogram: {v:?}"),
    }
}

#[test]
fn resume_histogram_counts_a_preserved_flow() {
    require_root();
    let mut o = ScenarioOpts::new(PeerKind::Holdfast, true);
    o.blob_len = 40 * MB;
    o.rate_mbit = Some(50.0);
    o.capture = false;
    o.extra_a.push("metrics prometheus listen 10.1.0.1 port 9464".into());
    let mut s = Scenario::new(o).expect("scenario lab starts");
    let ns = s.topo.gw_a.clone();
    let before = scrape_ns(&ns);
    assert_eq!(resume_count(&before), 0.0, "nothing resumed yet:\n{}", before.text);
    let dl = s.start_download("dl").expect("download starts");
    dl.wait_bytes(8 * MB, Duration::from_secs(20)).unwrap_or_else(|e| panic!("download never got going: {e}\n{}", s.diagnostics()));
    let brk = Break::ClearIke('a');
    s.break_tunnel(&brk).expect("clear crypto ikev2 sa on gw-a");
    s.restore(&brk).expect("restore");
    let r = dl.wait(Duration::from_secs(40)).unwrap_or_else(|e| panic!("download did not finish: {e}\n{}", s.diagnostics()));
    r.check_intact(&s.blob).unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics()));
    let after = scrape_ns(&ns);
    let held = after.must("holdfast_segments_held_total", &[]);
    let replayed = after.must("holdfast_segments_replayed_total", &[]);
    assert!(held >= 1.0 && replayed >= 1.0, "held {held}, replayed {replayed}\n{}", s.diagnostics());
    let n = resume_count(&after);
    assert!(n >= 1.0, "a replay into the re-established tunnel is one resume observation:\n{}", after.text);
    let sum = after.must("holdfast_resume_seconds_sum", &[]);
    assert!(sum >= 0.0 && sum / n < 1.0, "the gateway's part of a resume is well under a second: sum {sum} count {n}");
    assert_eq!(after.must("holdfast_conns_preserved", &[]), 0.0, "nothing waits once the tunnel is back");
    assert_eq!(after.must("holdfast_tunnels_up", &[]), 1.0);
}
