//! holdfast extension `metrics prometheus listen <ip> [port <n>]`: parsed into
//! `Config.metrics`, rendered by `show running-config`, and refused when malformed.

use std::net::SocketAddr;

fn metrics_of(text: &str) -> Option<policy::MetricsConfig> {
    config::parse("t.cfg", text).unwrap_or_else(|d| panic!("{text}: {d}")).config.metrics
}

#[test]
fn default_port_and_explicit_port() {
    let m = metrics_of("metrics prometheus listen 192.0.2.1\n").expect("metrics set");
    assert_eq!(m.listen, "192.0.2.1:9464".parse::<SocketAddr>().unwrap());
    let m = metrics_of("metrics prometheus listen 10.0.0.1 port 9100\n").expect("metrics set");
    assert_eq!(m.listen, "10.0.0.1:9100".parse::<SocketAddr>().unwrap());
    assert_eq!(metrics_of("hostname a\n"), None);
}

#[test]
fn running_config_round_trips_metrics() {
    for (input, line) in [
        ("metrics prometheus listen 192.0.2.1\n", "metrics prometheus listen 192.0.2.1\n"),
        ("metrics prometheus listen 192.0.2.1 port 9100\n", "metrics prometheus listen 192.0.2.1 port 9100\n"),
    ] {
        let cfg = config::parse("t.cfg", input).unwrap().config;
        let text = config::running_config(&cfg);
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
        let again = config::parse("running-config", &text).unwrap().config;
        assert_eq!(again.metrics, cfg.metrics);
    }
}

#[test]
fn malformed_lines_are_errors_with_position() {
    for bad in [
        "metrics prometheus\n",
        "metrics prometheus listen\n",
        "metrics prometheus listen not-an-ip\n",
        "metrics prometheus listen 192.0.2.1 port 0\n",
        "metrics prometheus listen 192.0.2.1 port 70000\n",
        "metrics prometheus listen 192.0.2.1 port 9100 extra\n",
        "metrics snmp listen 192.0.2.1\n",
    ] {
        let err = config::parse("t.cfg", bad).err().unwrap_or_else(|| panic!("{bad:?} accepted"));
        assert!(err.to_string().contains("t.cfg:1:"), "{bad:?}: {err}");
    }
}
