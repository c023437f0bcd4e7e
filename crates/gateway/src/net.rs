//! The kernel edge: the TUN device, routes of the protected networks into it, IP forwarding,
//! and the outside sockets (UDP 500, UDP 4500, raw IP protocol 50). Everything added here is
//! recorded in [`SystemGuard`] and removed again on exit.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;

use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffers of the data path. A namespace's default (208 KiB) overflows at a few hundred
/// Mbit/s of ESP bursts; strongSwan's charon loses ~8 % of packets that way (ipsec-peer.md §1).
pub const SOCKET_BUFFER: usize = 16 << 20;

/// Packets the kernel may queue towards the TX thread; absorbs bursts of a fast sender while the
/// thread is busy encrypting (the default of 500 drops them).
pub const TUN_TX_QUEUE: u32 = 4000;

/// Creates the TUN device, with virtio-net offloads (GSO/GRO) when `offload` and the kernel
/// allow it, and brings it up. Returns the device and whether offload is active.
pub fn create_tun(name: &str, mtu: u16, offload: bool) -> io::Result<(tun_rs::SyncDevice, bool)> {
    if offload {
        let dev = tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .offload(true)
            .tx_queue_len(TUN_TX_QUEUE)
            .enable(true)
            .build_sync();
        match dev {
            Ok(d) => {
                quiet_ipv6(name);
                let active = d.tcp_gso();
                return Ok((d, active));
            }
            Err(e) => eprintln!("holdfast: TUN offload unavailable ({e}); using plain TUN"),
        }
    }
    let d = tun_rs::DeviceBuilder::new().name(name).mtu(mtu).tx_queue_len(TUN_TX_QUEUE).enable(true).build_sync()?;
    quiet_ipv6(name);
    Ok((d, false))
}

/// The tunnels are IPv4-only: keep the kernel from sending IPv6 router solicitations and MLD
/// reports into the TUN (the device disappears with the daemon, and the setting with it).
fn quiet_ipv6(dev: &str) {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1");
    // The ICMP unreachables answering held segments (RFC 6069) are written into the TUN with
    // our own inside address as source; without accept_local the kernel drops them as
    // martians instead of forwarding them to the sender.
    let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{dev}/accept_local"), "1");
}

/// What the daemon changed in the system, undone by [`SystemGuard::cleanup`] (also on drop).
#[derive(Debug, Default)]
pub struct SystemGuard {
    routes: Vec<(String, String)>,
    blackholes: Vec<String>,
    nft_table: Option<String>,
    ip_forward_before: Option<String>,
    socket_file: Option<std::path::PathBuf>,
}

impl SystemGuard {
    /// `ip route replace NET/LEN dev DEV [src SRC]`, remembered for removal.
    pub fn add_route(&mut self, net: Ipv4Addr, prefix_len: u8, dev: &str, src: Option<Ipv4Addr>) -> io::Result<()> {
        let dst = format!("{net}/{prefix_len}");
        let mut args = vec!["route".to_string(), "replace".into(), dst.clone(), "dev".into(), dev.into()];
        if let Some(s) = src {
            args.push("src".into());
            args.push(s.to_string());
        }
        ip(&args)?;
        self.routes.push((dst, dev.to_string()));
        Ok(())
    }

    /// `ip route replace blackhole NET/LEN metric BLACKHOLE_METRIC`, removed only by
    /// [`SystemGuard::cleanup`] (a clean exit). Fail closed (issue 2: "while no SA exists for
    /// protected traffic, nothing leaves the outside interface in clear"): the route into the
    /// TUN has metric 0 and wins while the TUN exists; when the daemon dies without cleaning up
    /// (SIGKILL, crash) the kernel deletes the TUN and its routes, and this route keeps the
    /// protected traffic from falling through to the default route in clear. `replace` is
    /// idempotent, so a restarted daemon adopts the routes a killed one left behind.
    pub fn add_blackhole(&mut self, net: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        let dst = format!("{net}/{prefix_len}");
        ip(&["route".into(), "replace".into(), "blackhole".into(), dst.clone(), "metric".into(), BLACKHOLE_METRIC.to_string()])?;
        if !self.blackholes.contains(&dst) {
            self.blackholes.push(dst);
        }
        Ok(())
    }

    /// Installs (atomically replacing any table a killed daemon left) the nftables table
    /// `ip holdfast_<tun>` that drops forwarded packets which did not come out of the TUN but
    /// carry a remote protected source and a local protected destination: traffic the peer's
    /// networks must send through the tunnel may not reach the inside in clear (the inbound
    /// half of issue 2's fail-closed rule; RFC 4301 §5.2 discards unprotected inbound traffic
    /// that matches a PROTECT policy). Like the blackhole routes it survives SIGKILL and is
    /// removed only on a clean exit. `pairs` is (remote prefixes, local prefixes) per tunnel.
    pub fn install_inbound_drop(&mut self, tun: &str, pairs: &[(Vec<String>, Vec<String>)]) -> io::Result<()> {
        let table = nft_table_name(tun);
        let mut rules = String::new();
        for (remote, local) in pairs {
            if remote.is_empty() || local.is_empty() {
                continue;
            }
            rules.push_str(&format!(
                "    iifname != \"{tun}\" ip saddr {{ {} }} ip daddr {{ {} }} counter drop\n",
                remote.join(", "),
                local.join(", ")
            ));
        }
        // `add` then `delete` makes the delete succeed whether or not the table exists; the
        // whole script is one nftables transaction, so no moment passes without the rules.
        let script = format!(
            "add table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n  chain forward {{\n    type filter hook forward priority -10; policy accept;\n{rules}  }}\n}}\n"
        );
        nft(&script)?;
        self.nft_table = Some(table);
        Ok(())
    }

    /// Removes a route [`SystemGuard::add_route`] added (configuration reload: a remote
    /// protected network that is no longer configured).
    pub fn remove_route(&mut self, net: Ipv4Addr, prefix_len: u8, dev: &str) -> io::Result<()> {
        let dst = format!("{net}/{prefix_len}");
        self.routes.retain(|(d, v)| !(*d == dst && v == dev));
        ip(&["route".into(), "del".into(), dst, "dev".into(), dev.into()])
    }

    /// Removes a blackhole route [`SystemGuard::add_blackhole`] added (configuration reload).
    pub fn remove_blackhole(&mut self, net: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        let dst = format!("{net}/{prefix_len}");
        self.blackholes.retain(|d| *d != dst);
        ip(&["route".into(), "del".into(), "blackhole".into(), dst, "metric".into(), BLACKHOLE_METRIC.to_string()])
    }

    /// Turns on IPv4 forwarding (a gateway forwards between inside and the tunnel) and restores
    /// the previous value on exit.
    pub fn enable_ip_forward(&mut self) -> io::Result<()> {
        const P: &str = "/proc/sys/net/ipv4/ip_forward";
        let before = std::fs::read_to_string(P)?.trim().to_string();
        if before != "1" {
            std::fs::write(P, "1")?;
            self.ip_forward_before = Some(before);
        }
        Ok(())
    }

    pub fn remember_socket_file(&mut self, p: std::path::PathBuf) {
        self.socket_file = Some(p);
    }

    pub fn cleanup(&mut self) {
        for (dst, dev) in self.routes.drain(..).rev() {
            // The route may already be gone with the TUN device; that is fine.
            let _ = ip(&["route".into(), "del".into(), dst, "dev".into(), dev]);
        }
        for dst in self.blackholes.drain(..).rev() {
            let _ = ip(&["route".into(), "del".into(), "blackhole".into(), dst, "metric".into(), BLACKHOLE_METRIC.to_string()]);
        }
        if let Some(t) = self.nft_table.take() {
            let _ = nft(&format!("delete table ip {t}\n"));
        }
        if let Some(v) = self.ip_forward_before.take() {
            let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", v);
        }
        if let Some(p) = self.socket_file.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for SystemGuard {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Metric of the fail-closed blackhole routes: far above the TUN routes' 0, so longest-prefix
/// match with the lowest metric keeps choosing the TUN while it exists.
pub const BLACKHOLE_METRIC: u32 = 4_242_000;

/// Name of the nftables table (family `ip`) holding a daemon's inbound fail-closed rules.
pub fn nft_table_name(tun: &str) -> String {
    let clean: String = tun.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("holdfast_{clean}")
}

fn nft(script: &str) -> io::Result<()> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("nft: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

fn ip(args: &[String]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A UDP socket bound to `addr` with large buffers.
pub fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.bind(&addr.into())?;
    set_buffers(&s);
    Ok(s.into())
}

/// A raw IPv4 socket for ESP (IP protocol 50), bound to the local outside address. Reads return
/// the IPv4 header too; writes get one from the kernel.
pub fn raw_esp_socket(local: Ipv4Addr) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(libc::IPPROTO_ESP)))?;
    s.bind(&SocketAddr::new(IpAddr::V4(local), 0).into())?;
    set_buffers(&s);
    Ok(s)
}

/// SO_RCVBUF/SO_SNDBUF at [`SOCKET_BUFFER`]; the FORCE variants pass `net.core.rmem_max` as root.
pub fn set_buffers(s: &Socket) {
    let fd = s.as_raw_fd();
    for (force, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
        let v: libc::c_int = SOCKET_BUFFER as libc::c_int;
        // SAFETY: fd is a valid socket owned by `s`; the option value is a c_int on the stack
        // whose size is passed alongside.
        let rc = unsafe {
            libc::setsockopt(fd, libc::SOL_SOCKET, force, (&v as *const libc::c_int).cast(), std::mem::size_of_val(&v) as libc::socklen_t)
        };
        if rc != 0 {
            // SAFETY: as above.
            unsafe {
                libc::setsockopt(fd, libc::SOL_SOCKET, plain, (&v as *const libc::c_int).cast(), std::mem::size_of_val(&v) as libc::socklen_t);
            }
        }
    }
}

/// IP_MTU_DISCOVER = IP_PMTUDISC_DONT: outer packets leave without DF, so a hop with a smaller
/// MTU fragments them instead of dropping them (the TUN MTU already leaves room for the ESP
/// overhead on an Ethernet-sized path; this is the fallback for narrower ones).
pub fn allow_fragmentation(s: &impl AsRawFd) {
    let v: libc::c_int = libc::IP_PMTUDISC_DONT;
    // SAFETY: valid socket fd; the option value is a c_int on the stack with its size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of_val(&v) as libc::socklen_t,
        );
    }
}

/// Reads back the receive buffer size (for the integration test and `show` diagnostics).
pub fn recv_buffer_size(s: &impl AsRawFd) -> usize {
    let fd = s.as_raw_fd();
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of_val(&v) as libc::socklen_t;
    // SAFETY: fd is a valid socket; v/len are valid for writes of their sizes.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, (&mut v as *mut libc::c_int).cast(), &mut len) };
    if rc == 0 { v.max(0) as usize } else { 0 }
}
