//! `holdfast show --json ...` against two running gateways in network namespaces (root):
//! host-a -- gw-a == gw-b -- host-b from examples/gw-a.cfg and gw-b.cfg. The JSON answers are
//! parsed and compared with the text form of the same command (same counters, same SPIs), and
//! failures are `{"error": ...}` with a non-zero exit status.
//!
//! Namespaces are named `gwjson-<pid>-<role>` and removed by a guard, also on failure.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{cli, examples, sh, skip_without_root, Netns, BIN};
use serde_json::Value;

/// `holdfast show WORDS` (text): (success, stdout).
fn text(sock: &Path, words: &str) -> (bool, String) {
    cli(sock, &format!("show {words}"))
}

/// `holdfast show --json WORDS`: (success, parsed stdout). Stdout must always be JSON.
fn json(sock: &Path, words: &str) -> (bool, Value) {
    let o = Command::new(BIN).args(["show", "--json"]).args(words.split_whitespace()).arg("--control").arg(sock).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("show --json {words}: not JSON ({e}): {out:?}"));
    (o.status.success(), v)
}

/// The first number after `label` in a text answer (`#pkts encaps: 12, ...`).
fn number_after(text: &str, label: &str) -> u64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{label} not in:\n{text}"))
}

#[test]
fn show_json_matches_the_text_form() {
    if skip_without_root() {
        return;
    }
    let examples = examples();
    let mut lab = Netns::new(format!("gwjson-{}", std::process::id()));
    let (ha, a, b, hb) = lab.two_gateways();
    let (sa, sb) = (lab.dir.join("a.sock"), lab.dir.join("b.sock"));
    lab.start_daemon(&b, &examples.join("gw-b.cfg"), &sb);
    lab.start_daemon(&a, &examples.join("gw-a.cfg"), &sa);
    let mut up = false;
    for _ in 0..100 {
        if json(&sa, "crypto ipsec sa").1.as_array().is_some_and(|v| !v.is_empty()) {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(up, "tunnel did not come up");
    // A TCP connection that stays open while we look (python3: no netcat needed).
    let server = "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('10.2.0.10',5555))\ns.listen(1)\nc,_=s.accept()\nwhile c.recv(4096): pass\n";
    let client = "import socket,time\nc=socket.create_connection(('10.2.0.10',5555),timeout=5)\nc.sendall(b'hello')\ntime.sleep(15)\n";
    // Both are `Netns::procs`: stopped by PID when the test ends, also on failure.
    let listener = Command::new("ip").args(["netns", "exec", &hb, "python3", "-c", server]).stdout(Stdio::null()).spawn().unwrap();
    lab.push(listener);
    std::thread::sleep(Duration::from_millis(500));
    let client = Command::new("ip").args(["netns", "exec", &ha, "python3", "-c", client]).stdout(Stdio::null()).spawn().unwrap();
    lab.push(client);
    sh(&format!("ip netns exec {ha} ping -c 5 -i 0.2 -W 2 10.2.0.10 > /dev/null"));

    // show crypto ipsec sa: the same SA and counters as the text.
    let (ok, sas) = json(&sa, "crypto ipsec sa");
    assert!(ok, "{sas}");
    let (_, t) = text(&sa, "crypto ipsec sa");
    // Both ends initiate at start: a redundant pair may be listed too; the busy one carried the pings.
    let sa0 = sas.as_array().unwrap().iter().max_by_key(|v| v["encaps"].as_u64()).unwrap();
    assert_eq!(sa0["remote"].as_str().unwrap().split(':').next(), Some("192.0.2.2"));
    let spi_out = sa0["spi_out"].as_u64().unwrap();
    assert!(t.contains(&format!("current outbound spi: {spi_out:08X}")), "{t}\n{sa0}");
    assert!(sa0["encaps"].as_u64().unwrap() >= 5, "{sa0}");
    // The text block of the same SA (blocks start at `Crypto map tag:`) has the same counter,
    // or more if a packet went by in between.
    let block = t.split("Crypto map tag:").find(|b| b.contains(&format!("current outbound spi: {spi_out:08X}"))).unwrap();
    let text_encaps = number_after(block, "#pkts encaps: ");
    let json_encaps = sa0["encaps"].as_u64().unwrap();
    assert!(json_encaps <= text_encaps && text_encaps <= json_encaps + 2, "json {json_encaps} vs text {text_encaps}");

    // show crypto ikev2 sa.
    let (ok, ike) = json(&sa, "crypto ikev2 sa");
    assert!(ok);
    let ready = ike.as_array().unwrap().iter().find(|s| s["status"] == "READY").unwrap_or_else(|| panic!("no READY IKE SA: {ike}"));
    assert_eq!(ready["remote"].as_str().unwrap().split(':').next(), Some("192.0.2.2"));
    assert!(text(&sa, "crypto ikev2 sa").1.contains("READY"));

    // show asp table vpn-context: both directions of the SA above.
    let (_, ctx) = json(&sa, "asp table vpn-context");
    let spis: Vec<&str> = ctx.as_array().unwrap().iter().filter_map(|c| c["spi"].as_str()).collect();
    assert!(spis.contains(&format!("0x{spi_out:08X}").as_str()), "{ctx}");
    let n = ctx.as_array().unwrap().len();
    assert!(n >= 2 && n % 2 == 0, "inbound and outbound of each live SA: {ctx}");

    // show conn: the TCP conn to 10.2.0.10:5555, tunnelled; count agrees with the list.
    let (ok, conns) = json(&sa, "conn");
    assert!(ok);
    let list = conns["conns"].as_array().unwrap();
    let tcp = list
        .iter()
        .find(|c| c["protocol"] == "TCP" && c["outside"]["port"] == 5555)
        .unwrap_or_else(|| panic!("no TCP conn to port 5555: {conns}"));
    assert_eq!(tcp["outside"]["addr"], "10.2.0.10");
    assert_eq!(tcp["inside"]["addr"], "10.1.0.10");
    assert_eq!(tcp["initiator"], "inside");
    assert!(tcp["tunnel"].is_string(), "{tcp}");
    // ICMP conns of the pings may time out between two answers: retry until both agree.
    let mut agreed = false;
    for _ in 0..10 {
        let (_, count) = json(&sa, "conn count");
        let (_, again) = json(&sa, "conn");
        assert!(count.get("conns").is_none(), "{count}");
        if count["in_use"].as_u64() == again["conns"].as_array().map(|l| l.len() as u64) {
            agreed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(agreed, "show --json conn count never agreed with the list");
    let (_, tconn) = text(&sa, "conn");
    assert!(tconn.contains("10.2.0.10:5555"), "{tconn}");
    let (_, addr) = json(&sa, "conn address 10.9.9.9");
    assert_eq!(addr["conns"].as_array().map(Vec::len), Some(0));

    // show asp drop: every reason keyed by keyword.
    let (_, drops) = json(&sa, "asp drop");
    assert!(drops["frame_drops"]["tcp-not-syn"].is_u64(), "{drops}");
    assert!(drops["flow_drops"]["tunnel-torn-down"].is_u64(), "{drops}");

    // show logging: the buffer as lines, the same lines as the text.
    let (_, log) = json(&sa, "logging");
    let lines: Vec<&str> = log["lines"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(lines.iter().any(|l| l.contains("%ASA-6-602303: IPSEC: An outbound LAN-to-LAN SA")), "{log}");
    assert!(lines.iter().any(|l| l.contains("%ASA-6-302013: Built outbound TCP connection")), "{log}");
    let (_, tlog) = text(&sa, "logging");
    assert!(lines.iter().all(|l| tlog.contains(l)));

    // No remote access configured: no sessions.
    let (ok, ra) = json(&sa, "vpn-sessiondb anyconnect");
    assert!(ok);
    assert_eq!(ra, serde_json::json!([]));

    // Failures: JSON error object, non-zero exit.
    for words in ["crypto foo", "running-config", "conn address 10.1"] {
        let (ok, v) = json(&sa, words);
        assert!(!ok, "show --json {words} must fail");
        assert!(v["error"].is_string(), "{words}: {v}");
    }
    let (ok, v) = json(&lab.dir.join("missing.sock"), "conn");
    assert!(!ok);
    assert!(v["error"].as_str().unwrap().contains("cannot reach the daemon"), "{v}");

}
