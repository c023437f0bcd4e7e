//! Demo (root): brings up host-a — gw-a — wan — gw-b — host-b in network namespaces, runs holdfast
//! on both gateways (`--peer strongswan`: strongSwan 5.9.8 on gw-b instead), pings host-b from
//! host-a through the tunnel, prints `show crypto ipsec sa` and tears everything down.
//! `--hold SECS` keeps the lab up that long before tearing down (namespaces are printed, so you
//! can `ip netns exec <ns> ...` into them meanwhile).
//!
//! The main demo (a download through a tunnel outage, preserve-vpn-flows on and off) is
//! `holdfast demo` (crates/cli/src/demo.rs).

use lab::cmd::{in_ns, run};
use lab::topo::HOST_B_IP;
use lab::{Holdfast, HoldfastParams, StrongSwan, Suite, SwanParams, Topology};
use std::time::Duration;

fn main() {
    if let Err(e) = demo() {
        eprintln!("lab-demo: {e}");
        std::process::exit(1);
    }
}

fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let hold: u64 = args.iter().position(|a| a == "--hold").and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(0);
    let swan_peer = args.iter().any(|a| a == "strongswan");
    let t = Topology::new()?;
    println!("namespaces: {} {} {} {} {}", t.host_a, t.gw_a, t.wan, t.gw_b, t.host_b);
    let (_swan, _hb) = if swan_peer {
        let (ike, esp) = Suite::GcmX25519.swan(false);
        (Some(StrongSwan::start(&t, &t.gw_b, "swan-b", SwanParams::side('b', &ike, &esp, false))?), None)
    } else {
        (None, Some(Holdfast::start(&t, &t.gw_b, "hf-b", &HoldfastParams::side('b', Suite::GcmX25519))?))
    };
    let ha = Holdfast::start(&t, &t.gw_a, "hf-a", &HoldfastParams::side('a', Suite::GcmX25519))?;
    println!("--- gw-a configuration ({}):\n{}", ha.config.display(), std::fs::read_to_string(&ha.config)?);
    let took = lab::wait_ping(&t.host_a, HOST_B_IP, Duration::from_secs(30))?;
    println!("tunnel up: first ping host-a -> host-b answered after {took:?}");
    let out = run(&mut in_ns(&t.host_a, &["ping", "-n", "-c", "4", "-i", "0.3", HOST_B_IP]), Duration::from_secs(10))?;
    println!("--- ip netns exec {} ping {HOST_B_IP}\n{}", t.host_a, out.stdout);
    println!("--- holdfast show crypto ipsec sa (gw-a)\n{}", ha.show("crypto ipsec sa")?);
    println!("--- holdfast show crypto ikev2 sa (gw-a)\n{}", ha.show("crypto ikev2 sa")?);
    if hold > 0 {
        println!("holding the lab for {hold} s (control socket {})", ha.control.display());
        std::thread::sleep(Duration::from_secs(hold));
    }
    println!("tearing down");
    Ok(())
}
