//! ASA-format syslog (`%ASA-<severity>-<id>: <text>`): message builders for the IPsec/IKE events
//! the daemon reports, a ring buffer for `show logging`, RFC 3164-style UDP export to the
//! configured `logging host`s, and a copy on stderr.
//!
//! Log-analysis tools parse these exact shapes (asa.md §2), so the builders keep the ASA's
//! spacing and punctuation, including its double spaces in 713050.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
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
    /// `%ASA-6-602303: text`. Control characters in the text are written as `#ooo` (octal, as
    /// rsyslog escapes them): texts quote what clients sent (a group name, a user name, a URL),
    /// and a line feed in one would otherwise forge a second `%ASA-` line in `show logging`,
    /// on stderr and at every collector that splits on newlines.
    pub fn asa(&self) -> String {
        use std::fmt::Write as _;
        let mut line = format!("%ASA-{}-{}: ", self.severity, self.id);
        if !self.text.chars().any(char::is_control) {
            line.push_str(&self.text);
            return line;
        }
        for c in self.text.chars() {
            if c.is_control() {
                // Cc is U+0000-001F and U+007F-009F: three octal digits always suffice.
                let _ = write!(line, "#{:03o}", u32::from(c));
            } else {
                line.push(c);
            }
        }
        line
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

/// Lines (stderr copies and UDP datagrams) that may wait for the logger thread. Sized for a
/// burst of connection-table lines (a few thousand 302013/302014 at once) on a slow sink.
pub const QUEUE_LINES: usize = 4096;

/// How long [`Syslog::flush`] waits on drop for the logger thread to write what is queued.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// The daemon's syslog sink. Cheap to call from any thread, including with the connection-table
/// or remote-access engine locked: [`Syslog::log`] formats the line (timestamp taken now),
/// appends it to the `show logging` buffer and hands the stderr copy and the UDP datagram to one
/// logger thread through a bounded queue. A sink that blocks (a pipe nobody reads, a slow
/// journald, a full socket) therefore stalls only that thread; when the queue is full the line
/// is dropped and counted ([`Syslog::dropped`], `show logging`, `holdfast_syslog_dropped_total`),
/// never waited for.
pub struct Syslog {
    /// Replaced by a configuration reload ([`Syslog::reconfigure`]); read once per message.
    cfg: std::sync::RwLock<SyslogConfig>,
    state: Mutex<State>,
    progress: Arc<Progress>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Default)]
struct State {
    buffer: VecDeque<String>,
    buffered: u64,
    trapped: u64,
    /// Lines the queue had no room for.
    dropped: u64,
    /// Jobs accepted by the queue so far (compared with [`Progress::written`] by `flush`).
    enqueued: u64,
    /// Sending half of the logger thread's queue; `None` once dropped (or if the thread could
    /// not be started). Kept under the same lock as the buffer so the queue's order is the
    /// buffer's order even with several threads logging.
    tx: Option<SyncSender<Job>>,
}

/// The logger thread's progress, for [`Syslog::flush`].
#[derive(Default)]
struct Progress {
    written: Mutex<u64>,
    cv: Condvar,
}

/// One unit of I/O for the logger thread, fully formatted at log time.
struct Job {
    /// Ends with a newline.
    stderr: Option<String>,
    datagram: Option<(String, Vec<SocketAddr>)>,
}

impl Syslog {
    pub fn new(cfg: SyslogConfig) -> Self {
        Self::with_stderr_sink(cfg, Box::new(io::stderr()))
    }

    /// As [`Syslog::new`], with the stderr copies written to `sink` instead (tests use a pipe).
    pub fn with_stderr_sink(cfg: SyslogConfig, sink: Box<dyn Write + Send>) -> Self {
        // Bound even without a host: a reload may add `logging host` later. Blocking with a
        // bound: only the logger thread waits on it, and a burst then fills the socket buffer
        // instead of losing datagrams.
        let socket = UdpSocket::bind("0.0.0.0:0").ok().inspect(|s| {
            let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
        });
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE_LINES);
        let progress = Arc::new(Progress::default());
        let p = progress.clone();
        let worker = std::thread::Builder::new().name("hf-syslog".into()).spawn(move || write_loop(rx, sink, socket, &p)).ok();
        // Without the thread (cannot happen short of resource exhaustion) lines still reach the
        // buffer; their stderr/UDP copies count as dropped.
        let tx = worker.as_ref().map(|_| tx);
        Self {
            cfg: std::sync::RwLock::new(cfg),
            state: Mutex::new(State { tx, ..State::default() }),
            progress,
            worker: Mutex::new(worker),
        }
    }

    /// `logging ...` changed by a configuration reload: applies from the next message on (the
    /// buffer and the counters are kept, as on the ASA).
    pub fn reconfigure(&self, cfg: SyslogConfig) {
        *self.cfg.write().unwrap_or_else(|p| p.into_inner()) = cfg;
    }

    fn config(&self) -> SyslogConfig {
        self.cfg.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records `msg`: never blocks on I/O (see [`Syslog`]). The timestamp is the time of this
    /// call, so a line that waited in the queue still carries the time of its event.
    pub fn log(&self, msg: Message) {
        let cfg = self.cfg.read().unwrap_or_else(|p| p.into_inner());
        let line = msg.asa();
        let stamp = clock::asa_timestamp(clock::unix_seconds());
        // The ASA prefixes its own timestamp only with `logging timestamp`.
        let body = if cfg.timestamp { format!("{stamp}: {line}") } else { line.clone() };
        let stderr = cfg.stderr.then(|| format!("{stamp}: {line}\n"));
        let trap = cfg.enabled && msg.severity <= cfg.trap_level && !cfg.hosts.is_empty();
        // RFC 3164 §4.1.1: PRI = facility * 8 + severity, as the ASA sends it.
        let datagram = trap
            .then(|| (format!("<{}>{}", u16::from(FACILITY_LOCAL4) * 8 + u16::from(msg.severity), body), cfg.hosts.clone()));
        let buffered = msg.severity <= cfg.buffered_level;
        drop(cfg);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if buffered {
            if st.buffer.len() == BUFFER_LINES {
                st.buffer.pop_front();
            }
            st.buffer.push_back(body);
            st.buffered += 1;
        }
        let trapped = datagram.is_some();
        if (stderr.is_some() || trapped) && st.enqueue(Job { stderr, datagram }) {
            st.trapped += u64::from(trapped);
        }
    }

    /// A holdfast (non-ASA) warning for stderr only, with the same never-block guarantee as
    /// [`Syslog::log`]: for code on the data path that must not call `eprintln!`.
    pub fn warn(&self, text: &str) {
        if !self.cfg.read().unwrap_or_else(|p| p.into_inner()).stderr {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.enqueue(Job { stderr: Some(format!("holdfast: warning: {text}\n")), datagram: None });
    }

    /// Lines dropped because the logger thread's queue was full.
    pub fn dropped(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).dropped
    }

    /// Waits (at most `timeout`) until every line queued before this call has been written.
    /// True when it has. The daemon calls this last on shutdown so its final lines (113019,
    /// 302014 of the table's teardown) are not lost with the process.
    pub fn flush(&self, timeout: Duration) -> bool {
        let target = self.state.lock().unwrap_or_else(|p| p.into_inner()).enqueued;
        let written = self.progress.written.lock().unwrap_or_else(|p| p.into_inner());
        let (w, _) = self
            .progress
            .cv
            .wait_timeout_while(written, timeout, |w| *w < target)
            .unwrap_or_else(|p| p.into_inner());
        *w >= target
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
            queue_limit: QUEUE_LINES,
            queue_dropped: st.dropped,
            lines: st.buffer.iter().cloned().collect(),
        }
    }

    /// `show logging`: a header in the ASA's shape followed by the buffer.
    pub fn show_logging(&self) -> String {
        self.snapshot().text()
    }
}

impl State {
    /// Hands `job` to the logger thread without waiting; counts it as dropped if there is no room.
    fn enqueue(&mut self, job: Job) -> bool {
        match self.tx.as_ref().map(|tx| tx.try_send(job)) {
            Some(Ok(())) => {
                self.enqueued += 1;
                true
            }
            Some(Err(_)) | None => {
                self.dropped += 1;
                false
            }
        }
    }
}

impl Drop for Syslog {
    /// Writes out what is queued (bounded by [`FLUSH_TIMEOUT`]), then stops the logger thread.
    /// A thread stuck on a sink that never drains is left behind rather than waited for.
    fn drop(&mut self) {
        let flushed = self.flush(FLUSH_TIMEOUT);
        self.state.get_mut().unwrap_or_else(|p| p.into_inner()).tx = None;
        let worker = self.worker.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if let (true, Some(w)) = (flushed, worker) {
            let _ = w.join();
        }
    }
}

/// The logger thread: writes jobs in queue order until every sender is gone.
fn write_loop(rx: Receiver<Job>, mut sink: Box<dyn Write + Send>, socket: Option<UdpSocket>, progress: &Progress) {
    while let Ok(job) = rx.recv() {
        if let Some(line) = &job.stderr {
            let _ = sink.write_all(line.as_bytes());
            let _ = sink.flush();
        }
        if let (Some((datagram, hosts)), Some(sock)) = (&job.datagram, &socket) {
            for host in hosts {
                let _ = sock.send_to(datagram.as_bytes(), host);
            }
        }
        let mut w = progress.written.lock().unwrap_or_else(|p| p.into_inner());
        *w += 1;
        progress.cv.notify_all();
    }
}

/// Flushes the logger queue when dropped. The daemon holds one from the moment its [`Syslog`]
/// exists to the moment `run` returns, so every way out — a start that fails half-way, a
/// fatal error, a panic unwinding — writes what is queued. Dropping the last `Arc<Syslog>`
/// would do the same, but on an error path the data-path threads and the remote-access
/// runtime may still hold clones when the process exits, and the queued lines (those that
/// explain the failure) would go with it.
pub struct FlushOnDrop(pub Arc<Syslog>);

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        self.0.flush(FLUSH_TIMEOUT);
    }
}

/// `%ASA-2-199900: holdfast stopped: <error>.` — the daemon is stopping because of `error`
/// (a start that failed after the logger existed, or a fatal error while running), so the
/// syslog server learns why the gateway went away, not only its console. The ASA has no such
/// message (it does not fail to start on a configuration it loaded), so the id is holdfast's
/// own: in the system class (199, the ASA's start/reload/crash messages) and far above the
/// 1990xx ids Cisco's guide lists, so no parser takes it for a Cisco message. Severity 2
/// (critical): the gateway carries no traffic after it.
pub fn daemon_stopped(error: &str) -> Message {
    Message { severity: 2, id: 199900, text: format!("holdfast stopped: {error}.") }
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
    /// Lines the logger thread's queue holds at most ([`QUEUE_LINES`]).
    pub queue_limit: usize,
    /// Stderr/UDP copies dropped because that queue was full (the buffer still has the line).
    pub queue_dropped: u64,
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
        // The ASA's `show logging queue` wording.
        out.push_str(&format!(
            "    Logging queue length limit: {} msg(s), {} msg(s) discarded due to queue overflow\n",
            self.queue_limit, self.queue_dropped
        ));
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

    /// A client-supplied value with a line feed cannot forge a second ASA line.
    #[test]
    fn control_characters_in_texts_are_escaped() {
        let forged = Message {
            severity: 5,
            id: 716900,
            text: "Group <x\n%ASA-1-111111: forged\r\t\u{7f}\u{85}> é".into(),
        };
        let line = forged.asa();
        assert_eq!(line, "%ASA-5-716900: Group <x#012%ASA-1-111111: forged#015#011#177#205> é");
        assert_eq!(line.lines().count(), 1);
        let plain = Message { severity: 6, id: 1, text: "no controls, ünïcode kept".into() };
        assert_eq!(plain.asa(), "%ASA-6-1: no controls, ünïcode kept");
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

    /// The failing-start case: another owner (a data-path thread, the remote-access runtime)
    /// still holds the logger when the daemon's `run` returns, so dropping our `Arc` writes
    /// nothing; the [`FlushOnDrop`] guard waits until every queued line, the last one
    /// included, is out on stderr and on the UDP host.
    #[test]
    fn flush_guard_writes_the_last_lines_while_others_hold_the_logger() {
        let sink = Collect { delay: Duration::from_millis(20), ..Collect::default() };
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let cfg = SyslogConfig { enabled: true, hosts: vec![rx.local_addr().unwrap()], trap_level: 6, buffered_level: 7, timestamp: false, stderr: true };
        let log = Arc::new(Syslog::with_stderr_sink(cfg, Box::new(sink.clone())));
        let other_owner = log.clone();
        let guard = FlushOnDrop(log.clone());
        for i in 0..20 {
            log.log(Message { severity: 6, id: 302014, text: format!("teardown {i}") });
        }
        log.log(daemon_stopped("remote access: bind 192.0.2.1:443: Address already in use (os error 98)"));
        drop(log);
        // 21 lines x 20 ms: without the guard, nothing but the first line or two is out yet.
        drop(guard);
        let lines = sink.lines();
        assert_eq!(lines.len(), 21, "{lines:?}");
        assert!(
            lines[20].ends_with("%ASA-2-199900: holdfast stopped: remote access: bind 192.0.2.1:443: Address already in use (os error 98)."),
            "{}",
            lines[20]
        );
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while got.len() < 21 {
            let n = rx.recv(&mut buf).expect("datagram");
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        // RFC 3164 PRI: local4 (20) * 8 + critical (2) = 162.
        assert_eq!(got[20], "<162>%ASA-2-199900: holdfast stopped: remote access: bind 192.0.2.1:443: Address already in use (os error 98).");
        drop(other_owner);
    }

    /// A stderr sink shared with the test, optionally slow.
    #[derive(Clone, Default)]
    struct Collect {
        out: Arc<Mutex<Vec<u8>>>,
        delay: Duration,
    }

    impl Write for Collect {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            std::thread::sleep(self.delay);
            self.out.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Collect {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.out.lock().unwrap().clone()).unwrap().lines().map(str::to_string).collect()
        }
    }

    fn quiet(stderr: bool, timestamp: bool) -> SyslogConfig {
        SyslogConfig { enabled: false, hosts: vec![], trap_level: 6, buffered_level: 7, timestamp, stderr }
    }

    /// The number after `m` in `...: %ASA-6-1: m<N>`.
    fn seq(line: &str) -> u64 {
        line.rsplit(" m").next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no sequence in {line:?}"))
    }

    #[test]
    fn blocked_stderr_never_blocks_log_and_counts_drops() {
        let (mut reader, writer) = io::pipe().unwrap();
        let log = Syslog::with_stderr_sink(quiet(true, false), Box::new(writer));
        // Nobody reads the pipe: its 64 KiB fill up, the logger thread blocks in write, the
        // queue fills, and everything after that must be dropped, not waited for.
        let total = 20_000u64;
        let start = crate::clock::now();
        let mut slowest = Duration::ZERO;
        for i in 0..total {
            let t = crate::clock::now();
            log.log(Message { severity: 6, id: 1, text: format!("m{i}") });
            slowest = slowest.max(t.elapsed());
        }
        let took = start.elapsed();
        assert!(took < Duration::from_secs(5), "{total} log calls took {took:?}");
        assert!(slowest < Duration::from_millis(250), "one log call took {slowest:?}");
        let dropped = log.dropped();
        // At most the queue and the pipe's capacity (~40-byte lines) got through.
        assert!(dropped >= total - (QUEUE_LINES as u64 + 65536 / 30 + 2), "dropped {dropped}");
        assert!(log.show_logging().contains(&format!("{dropped} msg(s) discarded due to queue overflow")));
        assert_eq!(log.lines().len(), BUFFER_LINES, "the show logging buffer never drops");
        assert!(!log.flush(Duration::from_millis(100)), "flush cannot complete while the sink is blocked");

        // The reader wakes up; a line logged now must come out too, after the queued ones.
        let drain = std::thread::spawn(move || {
            let mut s = String::new();
            io::Read::read_to_string(&mut reader, &mut s).unwrap();
            s
        });
        assert!(log.flush(Duration::from_secs(10)), "the queue drains once the sink reads again");
        assert_eq!(log.dropped(), dropped, "nothing dropped while draining");
        log.log(Message { severity: 6, id: 1, text: format!("m{total}") });
        drop(log); // flush + stop: closes the pipe's write end, so the reader sees EOF.
        let text = drain.join().unwrap();
        let seqs: Vec<u64> = text.lines().map(seq).collect();
        assert_eq!(seqs.len() as u64, total + 1 - dropped, "every line not counted as dropped is written");
        assert_eq!(seqs.first(), Some(&0));
        assert_eq!(seqs.last(), Some(&total), "the line logged last is flushed on drop");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "queue order is log order");
    }

    #[test]
    fn concurrent_loggers_keep_one_order_everywhere() {
        let sink = Collect::default();
        let log = Arc::new(Syslog::with_stderr_sink(quiet(true, true), Box::new(sink.clone())));
        let per = (BUFFER_LINES / 4) as u64;
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..per {
                        log.log(Message { severity: 6, id: 1, text: format!("t{t} m{}", t * per + i) });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(log.flush(Duration::from_secs(5)));
        assert_eq!(log.dropped(), 0);
        let written = sink.lines();
        // With `logging timestamp` the buffer line and the stderr copy are the same text: the
        // logger thread wrote them in exactly the order `show logging` lists them.
        assert_eq!(written, log.lines());
        assert_eq!(written.len(), BUFFER_LINES);
        for t in 0..4u64 {
            let mine: Vec<u64> = written.iter().filter(|l| l.contains(&format!(": t{t} m"))).map(|l| seq(l)).collect();
            assert_eq!(mine, (t * per..(t + 1) * per).collect::<Vec<_>>(), "thread {t}'s lines out of order");
        }
    }

    #[test]
    fn drop_flushes_a_slow_sink() {
        let sink = Collect { delay: Duration::from_millis(2), ..Collect::default() };
        let log = Syslog::with_stderr_sink(quiet(true, false), Box::new(sink.clone()));
        let start = crate::clock::now();
        for i in 0..200 {
            log.log(Message { severity: 6, id: 1, text: format!("m{i}") });
        }
        // 200 writes of 2 ms each: log returned long before the sink could have taken them.
        assert!(start.elapsed() < Duration::from_millis(200), "{:?}", start.elapsed());
        assert!(sink.lines().len() < 200);
        drop(log);
        let seqs: Vec<u64> = sink.lines().iter().map(|l| seq(l)).collect();
        assert_eq!(seqs, (0..200).collect::<Vec<_>>());
    }

    #[test]
    fn timestamp_is_taken_at_log_time() {
        // A sink blocked for over a second: the line's stamp must still be the second it was logged.
        let (mut reader, writer) = io::pipe().unwrap();
        let log = Syslog::with_stderr_sink(quiet(true, false), Box::new(writer));
        let filler = "x".repeat(1000);
        for _ in 0..80 {
            log.log(Message { severity: 6, id: 1, text: filler.clone() }); // fills the pipe
        }
        let before = clock::asa_timestamp(clock::unix_seconds());
        log.log(Message { severity: 6, id: 2, text: "marked".into() });
        let after = clock::asa_timestamp(clock::unix_seconds());
        std::thread::sleep(Duration::from_millis(2100));
        let drain = std::thread::spawn(move || {
            let mut s = String::new();
            io::Read::read_to_string(&mut reader, &mut s).unwrap();
            s
        });
        drop(log);
        let text = drain.join().unwrap();
        let line = text.lines().find(|l| l.ends_with("%ASA-6-2: marked")).expect("marked line written");
        let stamp = line.trim_end_matches(": %ASA-6-2: marked");
        assert!(stamp == before || stamp == after, "stamp {stamp:?} not from log time ({before} / {after})");
    }

    #[test]
    fn warn_goes_through_the_queue() {
        let sink = Collect::default();
        let log = Syslog::with_stderr_sink(quiet(true, false), Box::new(sink.clone()));
        log.warn("IKE queue full");
        assert!(log.flush(Duration::from_secs(2)));
        assert_eq!(sink.lines(), vec!["holdfast: warning: IKE queue full".to_string()]);
        assert!(log.lines().is_empty(), "warnings are not ASA lines");
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
