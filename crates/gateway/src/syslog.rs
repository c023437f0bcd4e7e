//! ASA-format syslog (`%ASA-<severity>-<id>: <text>`): message builders for the IPsec/IKE events
//! the daemon reports, a ring buffer for `show logging`, RFC 3164-style UDP export to the
//! configured `logging host`s, and a copy on stderr.
//!
//! Log-analysis tools parse these exact shapes (asa.md §2), so the builders keep the ASA's
//! spacing and punctuation, including its double spaces in 713050.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::clock;

/// Syslog severities (RFC 5424 §6.2.1), named as `logging trap <level>` does.
pub const LEVEL_NAMES: [&str; 8] =
    ["emergencies", "alerts", "critical", "errors", "warnings", "notifications", "informational", "debugging"];

/// ASA facility `local4` (20), the ASA default for `logging facility`.
pub const FACILITY_LOCAL4: u8 = 20;

/// How many lines `show logging` keeps.
pub const BUFFER_LINES: usize = 2000;

/// One syslog message before formatting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub severity: u8,
    pub id: u32,
    pub text: String,
}

impl Message {
    /// `%ASA-6-602303: text`
    pub fn asa(&self) -> String {
        format!("%ASA-{}-{}: {}", self.severity, self.id, self.text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    fn word(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// 602303: `IPSEC: An outbound LAN-to-LAN SA (SPI= 0x0B2CDA3A) between 192.0.2.1 and 192.0.2.2 (user= 192.0.2.2) has been created.`
pub fn sa_created(dir: Direction, spi: u32, local: IpAddr, peer: IpAddr, user: &str) -> Message {
    sa_event(602303, "created", dir, spi, local, peer, user)
}

/// 602304: same shape as 602303, `has been deleted.`
pub fn sa_deleted(dir: Direction, spi: u32, local: IpAddr, peer: IpAddr, user: &str) -> Message {
    sa_event(602304, "deleted", dir, spi, local, peer, user)
}

fn sa_event(id: u32, what: &str, dir: Direction, spi: u32, local: IpAddr, peer: IpAddr, user: &str) -> Message {
    // The ASA names the SA's source first: local->peer for outbound, peer->local for inbound.
    let (a, b) = match dir {
        Direction::Outbound => (local, peer),
        Direction::Inbound => (peer, local),
    };
    Message {
        severity: 6,
        id,
        text: format!(
            "IPSEC: An {} LAN-to-LAN SA (SPI= 0x{:08X}) between {} and {} (user= {}) has been {}.",
            dir.word(),
            spi,
            a,
            b,
            user,
            what
        ),
    }
}

/// 713119: `Group = G, IP = ip, PHASE 1 COMPLETED`
pub fn phase1_completed(group: &str, ip: IpAddr) -> Message {
    Message { severity: 5, id: 713119, text: format!("Group = {group}, IP = {ip}, PHASE 1 COMPLETED") }
}

/// 713120: `Group = G, IP = ip, PHASE 2 COMPLETED (msgid=0000000a)`
pub fn phase2_completed(group: &str, ip: IpAddr, msg_id: u32) -> Message {
    Message { severity: 5, id: 713120, text: format!("Group = {group}, IP = {ip}, PHASE 2 COMPLETED (msgid={msg_id:08x})") }
}

/// 713049: security negotiation complete, with both SPIs.
pub fn negotiation_complete(group: &str, ip: IpAddr, initiator: bool, spi_in: u32, spi_out: u32) -> Message {
    let role = if initiator { "Initiator" } else { "Responder" };
    Message {
        severity: 5,
        id: 713049,
        text: format!(
            "Group = {group}, IP = {ip}, Security negotiation complete for LAN-to-LAN Group ({group})  {role}, Inbound SPI = 0x{spi_in:08x}, Outbound SPI = 0x{spi_out:08x}"
        ),
    }
}

/// 713050: `Group = G, IP = ip, Connection terminated for peer ip.  Reason: R  Remote Proxy A, Local Proxy B`
pub fn connection_terminated(group: &str, ip: IpAddr, reason: &str, remote_proxy: IpAddr, local_proxy: IpAddr) -> Message {
    Message {
        severity: 5,
        id: 713050,
        text: format!(
            "Group = {group}, IP = {ip}, Connection terminated for peer {ip}.  Reason: {reason}  Remote Proxy {remote_proxy}, Local Proxy {local_proxy}"
        ),
    }
}

/// Why an ESP packet was dropped, for 402114/402119/402120.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EspDrop {
    InvalidSpi,
    Replay,
    AuthFailed,
}

/// 402114 / 402119 / 402120: `IPSEC: Received an ESP packet (SPI= 0x..., sequence number= 0x...) from A to B ...`
pub fn esp_dropped(kind: EspDrop, spi: u32, seq: u32, from: IpAddr, to: IpAddr) -> Message {
    let (id, tail) = match kind {
        EspDrop::InvalidSpi => (402114, "with an invalid SPI."),
        EspDrop::Replay => (402119, "that failed anti-replay checking."),
        EspDrop::AuthFailed => (402120, "that failed authentication."),
    };
    Message {
        severity: 4,
        id,
        text: format!("IPSEC: Received an ESP packet (SPI= 0x{spi:08X}, sequence number= 0x{seq:X}) from {from} to {to} {tail}"),
    }
}

/// Where messages go, from `policy::Logging`.
#[derive(Debug, Clone)]
pub struct SyslogConfig {
    pub enabled: bool,
    pub hosts: Vec<SocketAddr>,
    pub trap_level: u8,
    pub buffered_level: u8,
    pub timestamp: bool,
    /// Copy every message to stderr (foreground daemon).
    pub stderr: bool,
}

impl SyslogConfig {
    pub fn from_policy(l: &policy::Logging) -> Self {
        Self {
            enabled: l.enabled,
            hosts: l.hosts.iter().map(|h| SocketAddr::new(h.addr, h.port)).collect(),
            trap_level: l.trap_level.min(7),
            buffered_level: l.buffered_level.min(7),
            timestamp: l.timestamp,
            stderr: true,
        }
    }
}

/// The daemon's syslog sink. Cheap to call from any thread; the data path only calls it through
/// [`RateLimiter`], so the mutex is never on the per-packet path.
pub struct Syslog {
    /// Replaced by a configuration reload ([`Syslog::reconfigure`]); read once per message.
    cfg: std::sync::RwLock<SyslogConfig>,
    socket: Option<UdpSocket>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    buffer: VecDeque<String>,
    buffered: u64,
    trapped: u64,
}

impl Syslog {
    pub fn new(cfg: SyslogConfig) -> Self {
        // Bound even without a host: a reload may add `logging host` later.
        let socket = UdpSocket::bind("0.0.0.0:0").ok().inspect(|s| {
            let _ = s.set_nonblocking(true);
        });
        Self { cfg: std::sync::RwLock::new(cfg), socket, state: Mutex::new(State::default()) }
    }

    /// `logging ...` changed by a configuration reload: applies from the next message on (the
    /// buffer and the counters are kept, as on the ASA).
    pub fn reconfigure(&self, cfg: SyslogConfig) {
        *self.cfg.write().unwrap_or_else(|p| p.into_inner()) = cfg;
    }

    fn config(&self) -> SyslogConfig {
        self.cfg.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn log(&self, msg: Message) {
        let cfg = self.cfg.read().unwrap_or_else(|p| p.into_inner());
        let line = msg.asa();
        let stamp = clock::asa_timestamp(clock::unix_seconds());
        // The ASA prefixes its own timestamp only with `logging timestamp`.
        let body = if cfg.timestamp { format!("{stamp}: {line}") } else { line.clone() };
        if cfg.stderr {
            eprintln!("{stamp}: {line}");
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if msg.severity <= cfg.buffered_level {
            if st.buffer.len() == BUFFER_LINES {
                st.buffer.pop_front();
            }
            st.buffer.push_back(body.clone());
            st.buffered += 1;
        }
        if cfg.enabled && msg.severity <= cfg.trap_level {
            if let Some(sock) = &self.socket {
                // RFC 3164 §4.1.1: PRI = facility * 8 + severity, as the ASA sends it.
                let datagram = format!("<{}>{}", u16::from(FACILITY_LOCAL4) * 8 + u16::from(msg.severity), body);
                for host in &cfg.hosts {
                    let _ = sock.send_to(datagram.as_bytes(), host);
                }
                st.trapped += 1;
            }
        }
    }

    /// Buffered lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.buffer.iter().cloned().collect()
    }

    /// What `show logging` reports, copied under the lock once.
    pub fn snapshot(&self) -> LoggingSnapshot {
        let cfg = self.config();
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        LoggingSnapshot {
            enabled: cfg.enabled,
            facility: FACILITY_LOCAL4,
            timestamp: cfg.timestamp,
            buffered_level: LEVEL_NAMES[usize::from(cfg.buffered_level.min(7))],
            buffered_messages: st.buffered,
            trap: (cfg.enabled && !cfg.hosts.is_empty()).then(|| TrapSnapshot {
                level: LEVEL_NAMES[usize::from(cfg.trap_level.min(7))],
                messages: st.trapped,
                hosts: cfg.hosts.iter().map(|h| format!("{} udp/{}", h.ip(), h.port())).collect(),
            }),
            lines: st.buffer.iter().cloned().collect(),
        }
    }

    /// `show logging`: a header in the ASA's shape followed by the buffer.
    pub fn show_logging(&self) -> String {
        self.snapshot().text()
    }
}

/// `show logging` as data (the text and `show --json logging` are both made from it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LoggingSnapshot {
    pub enabled: bool,
    pub facility: u8,
    pub timestamp: bool,
    pub buffered_level: &'static str,
    pub buffered_messages: u64,
    /// `None`: trap logging disabled (no host, or `logging enable` missing).
    pub trap: Option<TrapSnapshot>,
    /// The buffer, oldest first.
    pub lines: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TrapSnapshot {
    pub level: &'static str,
    pub messages: u64,
    /// `IP udp/PORT`.
    pub hosts: Vec<String>,
}

impl LoggingSnapshot {
    pub fn text(&self) -> String {
        let mut out = String::new();
        let onoff = |b: bool| if b { "enabled" } else { "disabled" };
        out.push_str(&format!("Syslog logging: {}\n", onoff(self.enabled)));
        out.push_str(&format!("    Facility: {}\n", self.facility));
        out.push_str(&format!("    Timestamp logging: {}\n", onoff(self.timestamp)));
        out.push_str("    Console logging: disabled\n");
        out.push_str(&format!("    Buffer logging: level {}, {} messages logged\n", self.buffered_level, self.buffered_messages));
        match &self.trap {
            None => out.push_str("    Trap logging: disabled\n"),
            Some(t) => {
                out.push_str(&format!(
                    "    Trap logging: level {}, facility {}, {} messages logged\n",
                    t.level, self.facility, t.messages
                ));
                for h in &t.hosts {
                    out.push_str(&format!("        Logging to {h}\n"));
                }
            }
        }
        out.push('\n');
        for l in &self.lines {
            out.push_str(l);
            out.push('\n');
        }
        out
    }
}

/// One message per key per interval (402xxx: one every five seconds, asa.md §2).
pub struct RateLimiter {
    interval: Duration,
    last: Mutex<HashMap<EspDrop, Instant>>,
}

impl RateLimiter {
    pub fn new(interval: Duration) -> Self {
        Self { interval, last: Mutex::new(HashMap::new()) }
    }

    /// True when a message for `key` may be emitted at `now` (and records it).
    pub fn allow(&self, key: EspDrop, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get(&key) {
            Some(t) if now.saturating_duration_since(*t) < self.interval => false,
            _ => {
                last.insert(key, now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn golden_lines() {
        assert_eq!(
            sa_created(Direction::Outbound, 0x0B2C_DA3A, ip("192.0.2.1"), ip("192.0.2.2"), "192.0.2.2").asa(),
            "%ASA-6-602303: IPSEC: An outbound LAN-to-LAN SA (SPI= 0x0B2CDA3A) between 192.0.2.1 and 192.0.2.2 (user= 192.0.2.2) has been created."
        );
        assert_eq!(
            sa_deleted(Direction::Inbound, 0xC0FFEE, ip("192.0.2.1"), ip("192.0.2.2"), "192.0.2.2").asa(),
            "%ASA-6-602304: IPSEC: An inbound LAN-to-LAN SA (SPI= 0x00C0FFEE) between 192.0.2.2 and 192.0.2.1 (user= 192.0.2.2) has been deleted."
        );
        assert_eq!(
            phase1_completed("192.0.2.2", ip("192.0.2.2")).asa(),
            "%ASA-5-713119: Group = 192.0.2.2, IP = 192.0.2.2, PHASE 1 COMPLETED"
        );
        assert_eq!(
            phase2_completed("192.0.2.2", ip("192.0.2.2"), 1).asa(),
            "%ASA-5-713120: Group = 192.0.2.2, IP = 192.0.2.2, PHASE 2 COMPLETED (msgid=00000001)"
        );
        assert_eq!(
            connection_terminated("192.0.2.2", ip("192.0.2.2"), "Peer Terminate", ip("10.2.0.0"), ip("10.1.0.0")).asa(),
            "%ASA-5-713050: Group = 192.0.2.2, IP = 192.0.2.2, Connection terminated for peer 192.0.2.2.  Reason: Peer Terminate  Remote Proxy 10.2.0.0, Local Proxy 10.1.0.0"
        );
        assert_eq!(
            esp_dropped(EspDrop::InvalidSpi, 0xDEAD_BEEF, 0x10, ip("192.0.2.2"), ip("192.0.2.1")).asa(),
            "%ASA-4-402114: IPSEC: Received an ESP packet (SPI= 0xDEADBEEF, sequence number= 0x10) from 192.0.2.2 to 192.0.2.1 with an invalid SPI."
        );
        assert_eq!(
            esp_dropped(EspDrop::Replay, 1, 2, ip("192.0.2.2"), ip("192.0.2.1")).asa(),
            "%ASA-4-402119: IPSEC: Received an ESP packet (SPI= 0x00000001, sequence number= 0x2) from 192.0.2.2 to 192.0.2.1 that failed anti-replay checking."
        );
        assert_eq!(
            esp_dropped(EspDrop::AuthFailed, 1, 2, ip("192.0.2.2"), ip("192.0.2.1")).asa(),
            "%ASA-4-402120: IPSEC: Received an ESP packet (SPI= 0x00000001, sequence number= 0x2) from 192.0.2.2 to 192.0.2.1 that failed authentication."
        );
        assert_eq!(
            negotiation_complete("192.0.2.2", ip("192.0.2.2"), true, 0xab, 0xcd).asa(),
            "%ASA-5-713049: Group = 192.0.2.2, IP = 192.0.2.2, Security negotiation complete for LAN-to-LAN Group (192.0.2.2)  Initiator, Inbound SPI = 0x000000ab, Outbound SPI = 0x000000cd"
        );
    }

    #[test]
    fn buffer_levels_and_udp_export() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let cfg = SyslogConfig {
            enabled: true,
            hosts: vec![rx.local_addr().unwrap()],
            trap_level: 5,
            buffered_level: 6,
            timestamp: false,
            stderr: false,
        };
        let log = Syslog::new(cfg);
        log.log(Message { severity: 7, id: 1, text: "debug".into() });
        log.log(Message { severity: 6, id: 2, text: "info".into() });
        log.log(phase1_completed("g", ip("192.0.2.2")));
        assert_eq!(log.lines(), vec!["%ASA-6-2: info".to_string(), "%ASA-5-713119: Group = g, IP = 192.0.2.2, PHASE 1 COMPLETED".to_string()]);
        // Only the severity-5 message passes `logging trap 5`; PRI = 20*8+5 = 165.
        let mut buf = [0u8; 512];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"<165>%ASA-5-713119: Group = g, IP = 192.0.2.2, PHASE 1 COMPLETED");
        rx.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        assert!(rx.recv(&mut buf).is_err(), "severity 6 must not be exported at trap level 5");
        let show = log.show_logging();
        assert!(show.contains("Buffer logging: level informational, 2 messages logged"), "{show}");
        assert!(show.contains("Trap logging: level notifications, facility 20, 1 messages logged"), "{show}");
        assert!(show.ends_with("PHASE 1 COMPLETED\n"));
    }

    #[test]
    fn reconfigure_adds_a_host_and_changes_levels_keeping_the_buffer() {
        // Started without any host (as a configuration without `logging host`).
        let log = Syslog::new(SyslogConfig { enabled: false, hosts: vec![], trap_level: 6, buffered_level: 7, timestamp: false, stderr: false });
        log.log(Message { severity: 6, id: 1, text: "before".into() });
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        log.reconfigure(SyslogConfig {
            enabled: true,
            hosts: vec![rx.local_addr().unwrap()],
            trap_level: 5,
            buffered_level: 5,
            timestamp: false,
            stderr: false,
        });
        log.log(Message { severity: 6, id: 2, text: "not buffered, not sent".into() });
        log.log(Message { severity: 5, id: 3, text: "after".into() });
        assert_eq!(log.lines(), vec!["%ASA-6-1: before".to_string(), "%ASA-5-3: after".to_string()]);
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"<165>%ASA-5-3: after");
        let show = log.show_logging();
        assert!(show.contains("Trap logging: level notifications"), "{show}");
    }

    #[test]
    fn ring_buffer_is_bounded() {
        let log = Syslog::new(SyslogConfig { enabled: false, hosts: vec![], trap_level: 6, buffered_level: 7, timestamp: true, stderr: false });
        for i in 0..(BUFFER_LINES + 5) {
            log.log(Message { severity: 6, id: 1, text: format!("m{i}") });
        }
        let lines = log.lines();
        assert_eq!(lines.len(), BUFFER_LINES);
        assert!(lines[0].ends_with(": %ASA-6-1: m5"), "{}", lines[0]);
    }

    #[test]
    fn rate_limit_one_per_interval() {
        let rl = RateLimiter::new(Duration::from_secs(5));
        let t0 = clock::now();
        assert!(rl.allow(EspDrop::Replay, t0));
        assert!(!rl.allow(EspDrop::Replay, t0 + Duration::from_secs(4)));
        assert!(rl.allow(EspDrop::AuthFailed, t0 + Duration::from_secs(4)));
        assert!(rl.allow(EspDrop::Replay, t0 + Duration::from_secs(5)));
    }
}
