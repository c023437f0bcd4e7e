//! The data path: two threads around the SAD.
//!
//! * TX: TUN read (GSO super-packets split by tun-rs when offload is on) -> SPD lookup -> ESP
//!   seal -> UDP 4500 with UDP GSO (one `sendmsg` per train of equal-size packets) or raw IP
//!   protocol 50.
//! * RX: `poll` on the outside sockets -> `recvmmsg`/UDP GRO -> RFC 3948 demux (keepalive, IKE to
//!   the control task, ESP) -> ESP open -> selector check -> TUN write (TCP GRO coalescing by
//!   tun-rs when offload is on).
//!
//! Buffers are allocated once per thread; nothing is allocated per packet except IKE messages
//! forwarded to the control plane. Protected traffic with no SA is dropped, never sent in clear.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock;
use crate::flows::{self, SharedEngine};
use crate::sad::{flow_matches, Counters, Dest, Flow, OutboundEntry, SadCell, SadReader, SpdEntry};
use crate::syslog::{esp_dropped, EspDrop, RateLimiter, Syslog};

/// Minimum time between two initiate requests for the same tunnel caused by traffic.
pub const ACQUIRE_INTERVAL: Duration = Duration::from_secs(1);

/// Room for one ESP packet built from an inner packet of up to the TUN MTU.
const SLOT: usize = 2048;
/// Most segments one UDP GSO send may carry (kernel UDP_MAX_SEGMENTS is 64).
const MAX_GSO: usize = 64;
/// Most payload bytes one UDP GSO send may carry: the whole train is one IPv4 datagram to
/// `ip_append_data`, so it must fit 65535 - 20 (IP) - 8 (UDP) bytes or the send fails EMSGSIZE.
const MAX_GSO_BYTES: usize = 65_507;

/// Messages from the data path to the control task.
#[derive(Debug)]
pub enum ToControl {
    /// An IKE message received on UDP 4500 (non-ESP marker already stripped).
    Ike { local: SocketAddr, remote: SocketAddr, data: Vec<u8> },
    /// Protected traffic found no SA: bring the tunnel up.
    Acquire { tunnel: Arc<str> },
}

/// Most messages waiting for the control task. IKE arrives in bursts (a peer's retransmissions,
/// many tunnels coming up at once) of tens to hundreds of messages; a few thousand leaves room
/// for that while a spoofed flood of UDP 500/4500 cannot grow the queue without limit.
pub const CONTROL_QUEUE: usize = 4096;

/// Most IKE payload bytes waiting for the control task: the message count alone would let a
/// flood of 64 KiB datagrams hold 256 MiB. Legitimate messages are a few KiB at most
/// (certificates; RFC 7383 fragments are smaller still).
pub const CONTROL_QUEUE_BYTES: usize = 8 << 20;

/// Least time between two "IKE receive queue full" warnings.
pub const QUEUE_WARN_INTERVAL: Duration = Duration::from_secs(5);

/// The data path's bounded hand-off to the control task (`Shared::to_control`): IKE messages
/// from UDP 500 (the daemon's receive tasks) and 4500 (the RX thread), and acquires. Sending
/// never waits: beyond [`CONTROL_QUEUE`] messages or [`CONTROL_QUEUE_BYTES`] of IKE the message
/// is dropped and counted (`show crypto ipsec stats`: "IKE receive queue drops",
/// `holdfast_ike_queue_drops_total`), with a warning at most every [`QUEUE_WARN_INTERVAL`].
#[derive(Clone)]
pub struct ControlTx {
    tx: tokio::sync::mpsc::Sender<ToControl>,
    q: Arc<QueueState>,
}

/// The control task's end of [`ControlTx`].
pub struct ControlRx {
    rx: tokio::sync::mpsc::Receiver<ToControl>,
    q: Arc<QueueState>,
}

struct QueueState {
    /// IKE payload bytes in the queue, and their limit.
    ike_bytes: std::sync::atomic::AtomicUsize,
    byte_limit: usize,
    ike_dropped: AtomicU64,
    acquire_dropped: AtomicU64,
    /// Milliseconds since `epoch` (+1) of the last warning; 0 = none yet.
    last_warn: AtomicU64,
    epoch: Instant,
    /// Where the warning goes: through the syslog queue, never a blocking `eprintln!`.
    syslog: Option<Arc<Syslog>>,
}

/// A bounded control queue ([`ControlTx`]); `syslog` receives the rate-limited overflow warning.
pub fn control_queue(syslog: Option<Arc<Syslog>>) -> (ControlTx, ControlRx) {
    control_queue_sized(CONTROL_QUEUE, CONTROL_QUEUE_BYTES, syslog)
}

fn control_queue_sized(messages: usize, bytes: usize, syslog: Option<Arc<Syslog>>) -> (ControlTx, ControlRx) {
    let (tx, rx) = tokio::sync::mpsc::channel(messages.max(1));
    let q = Arc::new(QueueState {
        ike_bytes: std::sync::atomic::AtomicUsize::new(0),
        byte_limit: bytes,
        ike_dropped: AtomicU64::new(0),
        acquire_dropped: AtomicU64::new(0),
        last_warn: AtomicU64::new(0),
        epoch: clock::now(),
        syslog,
    });
    (ControlTx { tx, q: q.clone() }, ControlRx { rx, q })
}

impl ControlTx {
    /// Queues an IKE message for the control task; false (counted) when the queue is full. The
    /// room is checked before the copy is allocated, so a flood costs no allocation.
    pub fn ike(&self, local: SocketAddr, remote: SocketAddr, data: &[u8]) -> bool {
        let q = &self.q;
        let before = q.ike_bytes.fetch_add(data.len(), Ordering::AcqRel);
        if before.saturating_add(data.len()) > q.byte_limit {
            q.ike_bytes.fetch_sub(data.len(), Ordering::AcqRel);
            self.overflow();
            return false;
        }
        let permit = match self.tx.try_reserve() {
            Ok(p) => p,
            Err(e) => {
                q.ike_bytes.fetch_sub(data.len(), Ordering::AcqRel);
                if matches!(e, tokio::sync::mpsc::error::TrySendError::Full(())) {
                    self.overflow();
                }
                return false;
            }
        };
        permit.send(ToControl::Ike { local, remote, data: data.to_vec() });
        true
    }

    /// Queues any other message (acquires); false when the queue is full. A lost acquire is
    /// asked for again by the next packet after [`ACQUIRE_INTERVAL`].
    pub fn send(&self, m: ToControl) -> bool {
        match m {
            ToControl::Ike { local, remote, data } => self.ike(local, remote, &data),
            m => match self.tx.try_send(m) {
                Ok(()) => true,
                Err(_) => {
                    Counters::add(&self.q.acquire_dropped, 1);
                    false
                }
            },
        }
    }

    /// IKE messages dropped because the queue was full.
    pub fn ike_dropped(&self) -> u64 {
        Counters::get(&self.q.ike_dropped)
    }

    /// IKE payload bytes waiting in the queue now.
    pub fn ike_queued_bytes(&self) -> usize {
        self.q.ike_bytes.load(Ordering::Acquire)
    }

    fn overflow(&self) {
        let q = &self.q;
        let dropped = q.ike_dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let now_ms = clock::now().saturating_duration_since(q.epoch).as_millis() as u64 + 1;
        let last = q.last_warn.load(Ordering::Relaxed);
        if (last == 0 || now_ms.saturating_sub(last) >= QUEUE_WARN_INTERVAL.as_millis() as u64)
            && q.last_warn.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            if let Some(log) = &q.syslog {
                log.warn(&format!(
                    "IKE receive queue full ({CONTROL_QUEUE} messages / {} MiB): {dropped} IKE datagram(s) dropped so far",
                    q.byte_limit >> 20
                ));
            }
        }
    }
}

impl ControlRx {
    /// The next message, as `tokio::sync::mpsc::Receiver::recv`.
    pub async fn recv(&mut self) -> Option<ToControl> {
        let m = self.rx.recv().await?;
        if let ToControl::Ike { data, .. } = &m {
            self.q.ike_bytes.fetch_sub(data.len(), Ordering::AcqRel);
        }
        Some(m)
    }
}

/// One outside address with its sockets.
pub struct Outside {
    pub local: Ipv4Addr,
    pub udp4500: Arc<UdpSocket>,
    pub udp_state: Arc<quinn_udp::UdpSocketState>,
    pub raw: Option<Arc<socket2::Socket>>,
}

/// Drops and events not tied to one SA.
#[derive(Debug, Default)]
pub struct GlobalStats {
    pub no_sa: AtomicU64,
    pub unprotected: AtomicU64,
    pub invalid_spi: AtomicU64,
    pub malformed: AtomicU64,
    pub keepalives: AtomicU64,
    pub tun_errors: AtomicU64,
}

/// Everything both threads share.
pub struct Shared {
    pub sad: Arc<SadCell>,
    pub outsides: Vec<Outside>,
    /// The site-to-site TUN; `None` for a remote-access-only configuration (then the data
    /// path threads are not started).
    pub tun: Option<Arc<tun_rs::SyncDevice>>,
    pub offload: bool,
    pub syslog: Arc<Syslog>,
    pub limiter: RateLimiter,
    pub to_control: ControlTx,
    /// `sysopt connection tcpmss`: MSS clamp for TCP SYNs through the tunnel (0 = off).
    pub mss: u16,
    pub stats: GlobalStats,
    pub epoch: Instant,
    /// The connection table (issue 3), locked once per batch.
    pub flows: SharedEngine,
    /// Any valid interface pair (placeholder for unused batch slots).
    pub default_ifcs: flow::IfcPair,
}

/// Starts the TX and RX threads.
pub fn spawn(sh: Arc<Shared>) -> io::Result<()> {
    let tx = sh.clone();
    std::thread::Builder::new().name("hf-tx".into()).spawn(move || tx_loop(&tx))?;
    let rx = sh;
    std::thread::Builder::new().name("hf-rx".into()).spawn(move || rx_loop(&rx))?;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// TX

fn tx_loop(sh: &Shared) {
    let Some(tun) = sh.tun.as_deref() else { return };
    let mut reader = SadReader::new(sh.sad.clone());
    let n_bufs = if sh.offload { tun_rs::IDEAL_BATCH_SIZE } else { 1 };
    let mut original = vec![0u8; tun_rs::VIRTIO_NET_HDR_LEN + 65536];
    let mut bufs = vec![vec![0u8; SLOT]; n_bufs];
    let mut sizes = vec![0usize; n_bufs];
    let mut batch = UdpBatch::new();
    let mut native = NativeBatch::new();
    let mut events: Vec<crate::syslog::Message> = Vec::with_capacity(64);
    let mut icmp = IcmpOut::new(sh.offload);
    loop {
        let got = if sh.offload {
            tun.recv_multiple(&mut original, &mut bufs, &mut sizes, 0)
        } else {
            tun.recv(&mut bufs[0]).map(|n| {
                sizes[0] = n;
                1
            })
        };
        let n = match got {
            Ok(n) => n.min(BATCH),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                Counters::add(&sh.stats.tun_errors, 1);
                if e.raw_os_error() == Some(libc::EBADFD) || e.raw_os_error() == Some(libc::EBADF) {
                    return;
                }
                // A malformed offload packet is skipped; anything persistent must not spin.
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        let sad = reader.get().clone();
        // Pass 1: the SPD decides which tunnel covers each packet (SA or not); the connection
        // table then judges every covered packet of the batch under one lock.
        let mut plan = [NO_TUNNEL; BATCH];
        let mut verdicts = [flow::Verdict::Forward; BATCH];
        let mut covered = false;
        for (i, p) in plan.iter_mut().enumerate().take(n) {
            let len = sizes[i].min(bufs[i].len());
            // Not IPv4 (the kernel's own IPv6 chatter on the device): no tunnel covers it.
            let Some(f) = parse_flow(&bufs[i][..len]) else { continue };
            if let Some((e, c)) = sad.lookup_out_index(&f) {
                *p = pack_plan(e, c);
                covered = true;
            }
        }
        if covered {
            let now = clock::now();
            let mut eng = flows::lock(&sh.flows);
            // In chunks of the engine's own group size: small stack arrays, rebuilt per chunk.
            let mut i = 0;
            while i < n {
                let mut pk = [flow::Packet { dir: flow::Dir::Outbound, ifcs: sh.default_ifcs, route: flow::Route::Clear, data: &[] }; CHUNK];
                let mut at = [0usize; CHUNK];
                let mut k = 0;
                while i < n && k < CHUNK {
                    if plan[i] != NO_TUNNEL {
                        let e = &sad.spd[(plan[i] >> 16) as usize];
                        let len = sizes[i].min(bufs[i].len());
                        pk[k] = flow::Packet { dir: flow::Dir::Outbound, ifcs: e.ifcs, route: flow::Route::ToTunnel(e.flow_tunnel), data: &bufs[i][..len] };
                        at[k] = i;
                        k += 1;
                    }
                    i += 1;
                }
                let mut v = [flow::Verdict::Forward; CHUNK];
                eng.handle_batch(now, &pk[..k], &mut v[..k]);
                for (j, &i) in at[..k].iter().enumerate() {
                    verdicts[i] = v[j];
                }
            }
            sh.flows.release_and_log(eng, &mut events, &sh.syslog);
        }
        // Pass 2: act on the verdicts.
        for i in 0..n {
            if plan[i] == NO_TUNNEL {
                Counters::add(&sh.stats.unprotected, 1);
                continue;
            }
            let entry = &sad.spd[(plan[i] >> 16) as usize];
            let out = entry.children.get((plan[i] & 0xffff) as usize).map(|c| &c.out);
            let len = sizes[i].min(bufs[i].len());
            let pkt = &mut bufs[i][..len];
            match (verdicts[i], out) {
                (flow::Verdict::Forward, Some(out)) => {
                    if sh.mss != 0 {
                        clamp_mss(pkt, sh.mss);
                    }
                    match out.dest() {
                        Dest::Udp { outside, to } => batch.push(sh, out, outside, to, pkt),
                        Dest::Native { outside, to } => native.push(sh, out, outside, to, pkt),
                    }
                }
                (v, out) => {
                    if let flow::Verdict::Hold { icmp: true } = v {
                        // RFC 6069: the sender of a preserved flow undoes one RTO backoff per
                        // host unreachable, so it retries at its base RTO while we hold on.
                        icmp.send(sh, pkt, entry.icmp_from);
                    }
                    if out.is_none() {
                        // The tunnel must come back, whatever the table said about the packet.
                        Counters::add(&sh.stats.no_sa, 1);
                        acquire(sh, entry);
                    }
                }
            }
        }
        batch.flush(sh);
        native.flush(sh);
    }
}

/// Most packets one TUN read hands the TX thread (tun-rs's batch size).
const BATCH: usize = tun_rs::IDEAL_BATCH_SIZE;

/// Packets handed to the connection table per call (its internal group size).
const CHUNK: usize = 16;

/// Pass-1 result for a packet no tunnel covers.
const NO_TUNNEL: u32 = u32::MAX;

/// Pass-1 result for a covered packet: SPD entry index (high 16 bits) and the index of the
/// child SA to use (low 16 bits; 0xffff = none).
fn pack_plan(entry: usize, child: Option<usize>) -> u32 {
    let c = child.filter(|&c| c < 0xffff).unwrap_or(0xffff) as u32;
    ((entry.min(0xfffe) as u32) << 16) | c
}

/// Asks the control task to bring a tunnel up, at most once per [`ACQUIRE_INTERVAL`].
fn acquire(sh: &Shared, entry: &SpdEntry) {
    let now_ms = clock::now().saturating_duration_since(sh.epoch).as_millis() as u64 + 1;
    let last = entry.last_acquire.load(Ordering::Relaxed);
    if now_ms.saturating_sub(last) >= ACQUIRE_INTERVAL.as_millis() as u64
        && entry.last_acquire.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    {
        let _ = sh.to_control.send(ToControl::Acquire { tunnel: entry.tunnel.clone() });
    }
}

/// The ICMP unreachables the TX thread writes back into the TUN (toward the inside sender).
struct IcmpOut {
    buf: [u8; tun_rs::VIRTIO_NET_HDR_LEN + 576],
    offset: usize,
}

impl IcmpOut {
    fn new(offload: bool) -> Self {
        // With offload the TUN expects a virtio-net header first; all-zero means "no GSO, no
        // checksum offload", which is what a complete ICMP packet needs.
        Self { buf: [0u8; tun_rs::VIRTIO_NET_HDR_LEN + 576], offset: if offload { tun_rs::VIRTIO_NET_HDR_LEN } else { 0 } }
    }

    fn send(&mut self, sh: &Shared, offending: &[u8], from: Ipv4Addr) {
        let off = self.offset;
        let Some(n) = flow::icmp_host_unreachable(offending, from, &mut self.buf[off..]) else { return };
        let Some(tun) = sh.tun.as_deref() else { return };
        if tun.send(&self.buf[..off + n]).is_err() {
            Counters::add(&sh.stats.tun_errors, 1);
        }
    }
}

/// Seals one inner packet with `out` and sends it: for the control task (held segments
/// replayed when their tunnel returns), not the per-packet path.
pub fn send_one(sh: &Shared, out: &OutboundEntry, inner: &[u8]) {
    let mut buf = [0u8; SLOT];
    let sealed = { out.sa.lock().unwrap_or_else(|p| p.into_inner()).seal(inner, 4, &mut buf) };
    let n = match sealed {
        Ok(n) => n,
        Err(_) => {
            Counters::add(&out.counters.errors, 1);
            return;
        }
    };
    let ok = match out.dest() {
        Dest::Udp { outside, to } => sh.outsides.get(outside).is_some_and(|o| o.udp4500.send_to(&buf[..n], to).is_ok()),
        Dest::Native { outside, to: IpAddr::V4(to) } => sh
            .outsides
            .get(outside)
            .and_then(|o| o.raw.as_ref())
            .is_some_and(|raw| sendmmsg_v4(raw.as_raw_fd(), &buf, SLOT, &[n], to) == 1),
        Dest::Native { .. } => false,
    };
    if ok {
        Counters::add(&out.counters.packets, 1);
        Counters::add(&out.counters.bytes, inner.len() as u64);
    } else {
        Counters::add(&out.counters.errors, 1);
    }
}

/// Native ESP packets for one raw socket and peer, sent with one `sendmmsg`.
struct NativeBatch {
    buf: Vec<u8>,
    lens: Vec<usize>,
    dest: Option<(usize, Ipv4Addr)>,
    entry: Option<Arc<OutboundEntry>>,
}

impl NativeBatch {
    fn new() -> Self {
        Self { buf: vec![0u8; SLOT * MAX_GSO], lens: Vec::with_capacity(MAX_GSO), dest: None, entry: None }
    }

    fn push(&mut self, sh: &Shared, out: &Arc<OutboundEntry>, outside: usize, to: IpAddr, inner: &[u8]) {
        let IpAddr::V4(to) = to else { return };
        let same = self.dest == Some((outside, to)) && self.entry.as_ref().is_some_and(|e| Arc::ptr_eq(e, out));
        if !same || self.lens.len() == MAX_GSO {
            self.flush(sh);
        }
        if self.entry.is_none() {
            self.entry = Some(out.clone());
            self.dest = Some((outside, to));
        }
        let at = self.lens.len() * SLOT;
        let sealed = { out.sa.lock().unwrap_or_else(|p| p.into_inner()).seal(inner, 4, &mut self.buf[at..at + SLOT]) };
        match sealed {
            Ok(n) => {
                Counters::add(&out.counters.packets, 1);
                Counters::add(&out.counters.bytes, inner.len() as u64);
                self.lens.push(n);
            }
            Err(_) => Counters::add(&out.counters.errors, 1),
        }
    }

    fn flush(&mut self, sh: &Shared) {
        let n = self.lens.len();
        if let (Some((outside, to)), true) = (self.dest, n > 0) {
            if let Some(raw) = sh.outsides.get(outside).and_then(|o| o.raw.as_ref()) {
                let sent = sendmmsg_v4(raw.as_raw_fd(), &self.buf, SLOT, &self.lens, to);
                if sent < n {
                    if let Some(e) = &self.entry {
                        Counters::add(&e.counters.errors, (n - sent) as u64);
                    }
                }
            }
        }
        self.lens.clear();
        self.dest = None;
        self.entry = None;
    }
}

/// Sends `lens.len()` datagrams stored at `buf[i * stride..][..lens[i]]` to `to` with
/// `sendmmsg`, retrying briefly while the socket buffer is full. Returns how many were sent.
fn sendmmsg_v4(fd: i32, buf: &[u8], stride: usize, lens: &[usize], to: Ipv4Addr) -> usize {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_addr = libc::in_addr { s_addr: u32::from(to).to_be() };
    let mut iov: [libc::iovec; MAX_GSO] = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_GSO];
    // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
    let mut msgs: [libc::mmsghdr; MAX_GSO] = unsafe { std::mem::zeroed() };
    let n = lens.len().min(MAX_GSO);
    for i in 0..n {
        iov[i] = libc::iovec { iov_base: buf[i * stride..].as_ptr() as *mut libc::c_void, iov_len: lens[i] };
        msgs[i].msg_hdr.msg_name = (&mut sa as *mut libc::sockaddr_in).cast();
        msgs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msgs[i].msg_hdr.msg_iov = &mut iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    let mut done = 0;
    let mut tries = 0;
    while done < n {
        // SAFETY: msgs[done..n] are initialised and point at iovecs into `buf` (alive for the
        // call) and at `sa` on this stack frame; the kernel only reads them.
        let rc = unsafe { libc::sendmmsg(fd, msgs[done..].as_mut_ptr(), (n - done) as libc::c_uint, 0) };
        if rc > 0 {
            done += rc as usize;
            continue;
        }
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock && tries < 20 {
            tries += 1;
            wait_fd(fd, libc::POLLOUT, 5);
            continue;
        }
        if err.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        // Skip the datagram the kernel refused and carry on with the rest.
        done += 1;
        tries = 0;
        if done >= n {
            break;
        }
    }
    done
}

/// A train of ESP-in-UDP packets for one destination, sent with one UDP GSO `sendmsg`: all
/// segments have the same size except possibly the last (the kernel's UDP_SEGMENT rule).
struct UdpBatch {
    buf: Vec<u8>,
    len: usize,
    seg: usize,
    count: usize,
    closed: bool,
    dest: Option<(usize, SocketAddr)>,
    entry: Option<Arc<OutboundEntry>>,
}

impl UdpBatch {
    fn new() -> Self {
        Self { buf: vec![0u8; SLOT * (MAX_GSO + 1)], len: 0, seg: 0, count: 0, closed: false, dest: None, entry: None }
    }

    fn push(&mut self, sh: &Shared, out: &Arc<OutboundEntry>, outside: usize, to: SocketAddr, inner: &[u8]) {
        let max = sh.outsides.get(outside).map(|o| o.udp_state.max_gso_segments()).unwrap_or(1).clamp(1, MAX_GSO);
        let same = self.dest == Some((outside, to)) && self.entry.as_ref().is_some_and(|e| Arc::ptr_eq(e, out));
        // Worst case an ESP packet is the inner packet plus < 100 bytes (header, IV, padding, ICV).
        if !same || self.closed || self.count >= max || self.len + inner.len() + 100 > MAX_GSO_BYTES {
            self.flush(sh);
        }
        if self.entry.is_none() {
            self.entry = Some(out.clone());
            self.dest = Some((outside, to));
        }
        let sealed = {
            let mut sa = out.sa.lock().unwrap_or_else(|p| p.into_inner());
            sa.seal(inner, 4, &mut self.buf[self.len..self.len + SLOT])
        };
        let n = match sealed {
            Ok(n) => n,
            Err(_) => {
                Counters::add(&out.counters.errors, 1);
                return;
            }
        };
        Counters::add(&out.counters.packets, 1);
        Counters::add(&out.counters.bytes, inner.len() as u64);
        if self.count == 0 {
            self.seg = n;
        } else if n > self.seg {
            // Larger than the train's segment size: send the train, start a new one with this.
            let start = self.len;
            self.send(sh, 0, start);
            self.buf.copy_within(start..start + n, 0);
            self.len = 0;
            self.count = 0;
            self.seg = n;
        } else if n < self.seg {
            self.closed = true;
        }
        self.len += n;
        self.count += 1;
    }

    fn flush(&mut self, sh: &Shared) {
        if self.count > 0 {
            let len = self.len;
            self.send(sh, 0, len);
        }
        self.len = 0;
        self.count = 0;
        self.closed = false;
        self.dest = None;
        self.entry = None;
    }

    fn send(&mut self, sh: &Shared, from: usize, to_: usize) {
        let Some((outside, to)) = self.dest else { return };
        let Some(o) = sh.outsides.get(outside) else { return };
        let contents = &self.buf[from..to_];
        let segment_size = (contents.len() > self.seg).then_some(self.seg);
        let t = quinn_udp::Transmit { destination: to, ecn: None, contents, segment_size, src_ip: None };
        let mut tries = 0;
        loop {
            match o.udp_state.try_send((&*o.udp4500).into(), &t) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && tries < 20 => {
                    tries += 1;
                    wait_fd(o.udp4500.as_raw_fd(), libc::POLLOUT, 5);
                }
                Err(_) if segment_size.is_some() => {
                    // GSO refused (quinn-udp then disables it): send the segments one by one.
                    for chunk in contents.chunks(self.seg) {
                        if o.udp4500.send_to(chunk, to).is_err() {
                            self.count_error();
                        }
                    }
                    return;
                }
                Err(_) => {
                    self.count_error();
                    return;
                }
            }
        }
    }

    fn count_error(&self) {
        if let Some(e) = &self.entry {
            Counters::add(&e.counters.errors, 1);
        }
    }
}

fn wait_fd(fd: i32, events: libc::c_short, timeout_ms: i32) {
    let mut p = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: one valid pollfd on the stack, count 1.
    unsafe {
        libc::poll(&mut p, 1, timeout_ms);
    }
}

// ------------------------------------------------------------------------------------------
// RX

/// Receive buffers per `recvmmsg` (quinn-udp's batch size on Linux). Each holds up to 64
/// GRO-coalesced datagrams; a peer without GSO (strongSwan) fills one per datagram, so the count
/// matters as much as the size.
const RX_BUFS: usize = 32;
const RX_BUF_LEN: usize = 64 * 1024;

struct TunOut {
    bufs: Vec<Vec<u8>>,
    /// The tunnel and interfaces each buffered packet came through, for the connection table.
    routes: Vec<(flow::TunnelId, flow::IfcPair)>,
    n: usize,
    gro: tun_rs::GROTable,
    offset: usize,
    events: Vec<crate::syslog::Message>,
}

impl TunOut {
    fn new(offload: bool) -> Self {
        let offset = if offload { tun_rs::VIRTIO_NET_HDR_LEN } else { 0 };
        let bufs = (0..BATCH).map(|_| Vec::with_capacity(offset + 65536)).collect();
        Self { bufs, routes: Vec::with_capacity(BATCH), n: 0, gro: tun_rs::GROTable::default(), offset, events: Vec::with_capacity(64) }
    }

    /// Appends a packet decrypted from `tunnel`; returns the copy so the caller can still edit
    /// it (MSS clamp).
    fn push(&mut self, pkt: &[u8], tunnel: flow::TunnelId, ifcs: flow::IfcPair) -> &mut [u8] {
        let b = &mut self.bufs[self.n];
        b.clear();
        b.resize(self.offset, 0);
        b.extend_from_slice(pkt);
        self.routes.truncate(self.n);
        self.routes.push((tunnel, ifcs));
        self.n += 1;
        &mut b[self.offset..]
    }

    fn full(&self) -> bool {
        self.n == self.bufs.len()
    }

    /// Runs the batch through the connection table (one lock), keeps what it forwards and
    /// writes that to the TUN.
    fn flush(&mut self, sh: &Shared) {
        if self.n == 0 {
            return;
        }
        let mut verdicts = [flow::Verdict::Forward; BATCH];
        {
            let now = clock::now();
            let mut eng = flows::lock(&sh.flows);
            let mut start = 0;
            while start < self.n {
                let m = CHUNK.min(self.n - start);
                let mut pk = [flow::Packet { dir: flow::Dir::Inbound, ifcs: sh.default_ifcs, route: flow::Route::Clear, data: &[] }; CHUNK];
                for (k, (b, &(t, ifcs))) in self.bufs[start..start + m].iter().zip(self.routes[start..start + m].iter()).enumerate() {
                    pk[k] = flow::Packet { dir: flow::Dir::Inbound, ifcs, route: flow::Route::FromTunnel(t), data: &b[self.offset..] };
                }
                eng.handle_batch(now, &pk[..m], &mut verdicts[start..start + m]);
                start += m;
            }
            sh.flows.release_and_log(eng, &mut self.events, &sh.syslog);
        }
        // Keep the forwarded packets, in order, at the front.
        let mut kept = 0;
        for (k, v) in verdicts.iter().enumerate().take(self.n) {
            if *v == flow::Verdict::Forward {
                self.bufs.swap(kept, k);
                kept += 1;
            }
        }
        if let (true, Some(tun)) = (kept > 0, sh.tun.as_deref()) {
            if sh.offload {
                if tun.send_multiple(&mut self.gro, &mut self.bufs[..kept], self.offset).is_err() {
                    Counters::add(&sh.stats.tun_errors, 1);
                }
            } else {
                for b in &self.bufs[..kept] {
                    if tun.send(b).is_err() {
                        Counters::add(&sh.stats.tun_errors, 1);
                    }
                }
            }
        }
        self.n = 0;
        self.routes.clear();
    }
}

fn rx_loop(sh: &Shared) {
    let mut reader = SadReader::new(sh.sad.clone());
    let mut pollfds: Vec<libc::pollfd> = Vec::new();
    // (outside index, is_raw)
    let mut kinds: Vec<(usize, bool)> = Vec::new();
    for (i, o) in sh.outsides.iter().enumerate() {
        pollfds.push(libc::pollfd { fd: o.udp4500.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        kinds.push((i, false));
        if let Some(r) = &o.raw {
            let _ = r.set_nonblocking(true);
            pollfds.push(libc::pollfd { fd: r.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            kinds.push((i, true));
        }
    }
    let mut rx_bufs = vec![vec![0u8; RX_BUF_LEN]; RX_BUFS];
    let mut meta = vec![quinn_udp::RecvMeta::default(); RX_BUFS];
    let mut tun_out = TunOut::new(sh.offload);
    let mut raw_bufs = vec![[0u8; SLOT]; RAW_BATCH];
    let mut raw_lens = vec![0usize; RAW_BATCH];
    loop {
        for p in pollfds.iter_mut() {
            p.revents = 0;
        }
        // SAFETY: pollfds is a valid, initialised array of the length passed.
        let rc = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, 1000) };
        if rc <= 0 {
            continue;
        }
        for (k, p) in pollfds.iter().enumerate() {
            if p.revents == 0 {
                continue;
            }
            let (idx, raw) = kinds[k];
            let o = &sh.outsides[idx];
            if raw {
                let Some(sock) = &o.raw else { continue };
                // Bounded so that one busy socket cannot starve the others.
                for _ in 0..64 {
                    let got = recvmmsg_raw(sock.as_raw_fd(), &mut raw_bufs, &mut raw_lens);
                    if got == 0 {
                        break;
                    }
                    for (buf, &n) in raw_bufs.iter_mut().zip(raw_lens.iter()).take(got) {
                        let n = n.min(buf.len());
                        // Raw IPv4 sockets deliver the IP header; ESP starts after IHL words.
                        if n < 20 || buf[0] >> 4 != 4 {
                            Counters::add(&sh.stats.malformed, 1);
                            continue;
                        }
                        let ihl = usize::from(buf[0] & 0x0f) * 4;
                        if n < ihl + 8 {
                            Counters::add(&sh.stats.malformed, 1);
                            continue;
                        }
                        let from = IpAddr::V4(Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]));
                        let sad = reader.get();
                        handle_esp(sh, sad, &mut buf[ihl..n], from, IpAddr::V4(o.local), &mut tun_out);
                        if tun_out.full() {
                            tun_out.flush(sh);
                        }
                    }
                    if got < raw_bufs.len() {
                        break;
                    }
                }
            } else {
                for _ in 0..64 {
                    let got = {
                        let mut iov: [IoSliceMut<'_>; RX_BUFS] = rx_iov(&mut rx_bufs);
                        o.udp_state.recv((&*o.udp4500).into(), &mut iov, &mut meta)
                    };
                    let n = match got {
                        Ok(n) => n,
                        Err(_) => break,
                    };
                    for (m, buf) in meta.iter().zip(rx_bufs.iter_mut()).take(n) {
                        let stride = if m.stride == 0 { m.len } else { m.stride };
                        let mut off = 0;
                        while off < m.len {
                            let end = (off + stride).min(m.len);
                            let d = &mut buf[off..end];
                            off = end;
                            let local = SocketAddr::new(IpAddr::V4(o.local), 4500);
                            handle_udp4500(sh, &mut reader, d, local, m.addr, &mut tun_out);
                            if tun_out.full() {
                                tun_out.flush(sh);
                            }
                        }
                    }
                }
            }
        }
        tun_out.flush(sh);
    }
}

/// Datagrams per `recvmmsg` on the raw ESP socket.
const RAW_BATCH: usize = 32;

/// Non-blocking `recvmmsg` into fixed buffers; returns how many datagrams arrived.
fn recvmmsg_raw(fd: i32, bufs: &mut [[u8; SLOT]], lens: &mut [usize]) -> usize {
    let n = bufs.len().min(lens.len()).min(RAW_BATCH);
    let mut iov: [libc::iovec; RAW_BATCH] = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; RAW_BATCH];
    // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
    let mut msgs: [libc::mmsghdr; RAW_BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        iov[i] = libc::iovec { iov_base: bufs[i].as_mut_ptr().cast(), iov_len: SLOT };
        msgs[i].msg_hdr.msg_iov = &mut iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: msgs[..n] point at iovecs covering `bufs[i]` (SLOT writable bytes each), alive for
    // the call; MSG_DONTWAIT makes it return at once when nothing is queued.
    let rc = unsafe { libc::recvmmsg(fd, msgs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
    if rc <= 0 {
        return 0;
    }
    let got = rc as usize;
    for i in 0..got {
        lens[i] = msgs[i].msg_len as usize;
    }
    got
}

fn rx_iov(bufs: &mut [Vec<u8>]) -> [IoSliceMut<'_>; RX_BUFS] {
    let mut it = bufs.iter_mut();
    std::array::from_fn(|_| IoSliceMut::new(it.next().map(|b| b.as_mut_slice()).unwrap_or(&mut [])))
}

/// RFC 3948 §2: on UDP 4500 a single 0xFF byte is a NAT keepalive, a zero 4-byte non-ESP marker
/// prefixes IKE, and anything else starts with a (non-zero) ESP SPI.
fn handle_udp4500(sh: &Shared, reader: &mut SadReader, d: &mut [u8], local: SocketAddr, remote: SocketAddr, tun_out: &mut TunOut) {
    if d.len() == 1 && d[0] == 0xff {
        Counters::add(&sh.stats.keepalives, 1);
        return;
    }
    if d.len() >= 4 && d[..4] == [0, 0, 0, 0] {
        sh.to_control.ike(local, remote, &d[4..]);
        return;
    }
    if d.len() < 8 {
        Counters::add(&sh.stats.malformed, 1);
        return;
    }
    let sad = reader.get();
    handle_esp(sh, sad, d, remote.ip(), local.ip(), tun_out);
}

fn handle_esp(sh: &Shared, sad: &crate::sad::Sad, pkt: &mut [u8], from: IpAddr, to: IpAddr, tun_out: &mut TunOut) {
    if pkt.len() < 8 {
        Counters::add(&sh.stats.malformed, 1);
        return;
    }
    let spi = u32::from_be_bytes([pkt[0], pkt[1], pkt[2], pkt[3]]);
    let seq = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
    let Some(entry) = sad.inbound.get(&spi) else {
        Counters::add(&sh.stats.invalid_spi, 1);
        drop_log(sh, EspDrop::InvalidSpi, spi, seq, from, to);
        return;
    };
    let opened = { entry.sa.lock().unwrap_or_else(|p| p.into_inner()).open(pkt) };
    match opened {
        Ok(o) => {
            // RFC 4303 §2.6: next header 4 = IPv4 (tunnel mode); 59 = dummy packet (TFC), dropped.
            if o.next_header != 4 {
                if o.next_header != 59 {
                    Counters::add(&entry.counters.errors, 1);
                }
                return;
            }
            let inner = o.inner;
            let Some(flow) = parse_flow(inner) else {
                Counters::add(&entry.counters.errors, 1);
                return;
            };
            // Source must be in the peer's selectors, destination in ours (RFC 4301 §5.2).
            if !flow_matches(&entry.remote_ts, &entry.local_ts, &flow) {
                Counters::add(&entry.counters.errors, 1);
                return;
            }
            let total = usize::from(u16::from_be_bytes([inner[2], inner[3]])).min(inner.len());
            Counters::add(&entry.counters.packets, 1);
            Counters::add(&entry.counters.bytes, total as u64);
            let copy = tun_out.push(&inner[..total], entry.flow_tunnel, entry.ifcs);
            if sh.mss != 0 {
                clamp_mss(copy, sh.mss);
            }
        }
        Err(esp::EspError::ReplayedOrTooOld { .. }) => {
            Counters::add(&entry.counters.replay, 1);
            drop_log(sh, EspDrop::Replay, spi, seq, from, to);
        }
        Err(esp::EspError::AuthFailed { .. }) => {
            Counters::add(&entry.counters.auth, 1);
            drop_log(sh, EspDrop::AuthFailed, spi, seq, from, to);
        }
        Err(_) => Counters::add(&entry.counters.errors, 1),
    }
}

fn drop_log(sh: &Shared, kind: EspDrop, spi: u32, seq: u32, from: IpAddr, to: IpAddr) {
    if sh.limiter.allow(kind, clock::now()) {
        sh.syslog.log(esp_dropped(kind, spi, seq, from, to));
    }
}

// ------------------------------------------------------------------------------------------
// Inner packet helpers

/// Selector fields of an IPv4 packet; `None` if it is not a well-formed IPv4 packet. Ports are
/// 0 for non-first fragments and protocols without ports (RFC 4301 §4.4.1.1 OPAQUE handling is
/// approximated by matching such packets only against port-agnostic selectors).
pub fn parse_flow(p: &[u8]) -> Option<Flow> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if ihl < 20 || p.len() < ihl {
        return None;
    }
    let proto = p[9];
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let frag_off = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
    let (mut sport, mut dport) = (0, 0);
    if frag_off == 0 && (proto == 6 || proto == 17) && p.len() >= ihl + 4 {
        sport = u16::from_be_bytes([p[ihl], p[ihl + 1]]);
        dport = u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]);
    }
    Some(Flow { src, dst, proto, sport, dport })
}

/// Lowers the MSS option of a TCP SYN to `mss` (ASA `sysopt connection tcpmss`). The option
/// walk and the incremental checksum update (RFC 1624, byte-swapped when the option value sits
/// at an odd offset) are `wire::ip::TcpPacket::clamp_mss`; this only picks the segments: IPv4,
/// TCP, first fragment, SYN. Anything else is left untouched.
pub fn clamp_mss(p: &mut [u8], mss: u16) {
    if p.len() < 20 || p[0] >> 4 != 4 || p[9] != 6 {
        return;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if ihl < 20 || u16::from_be_bytes([p[6], p[7]]) & 0x1fff != 0 || p.len() < ihl + 20 {
        return;
    }
    let Ok(mut tcp) = wire::ip::TcpPacket::new_checked(&mut p[ihl..]) else { return };
    if tcp.syn() {
        tcp.clamp_mss(mss);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ike_flood_is_bounded_counted_and_warned_then_ike_flows_again() {
        let sink = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let cfg = crate::syslog::SyslogConfig { enabled: false, hosts: vec![], trap_level: 6, buffered_level: 7, timestamp: false, stderr: true };
        let log = Arc::new(Syslog::with_stderr_sink(cfg, Box::new(Sink(sink.clone()))));
        let (tx, mut rx) = control_queue(Some(log.clone()));
        let local = addr("192.0.2.1:4500");
        let spoofed = addr("198.51.100.9:4500");
        // A flood of small spoofed messages while the control task is busy: the message bound.
        let flood = 50_000;
        let accepted = (0..flood).filter(|_| tx.ike(local, spoofed, &[0u8; 300])).count();
        assert_eq!(accepted, CONTROL_QUEUE);
        assert_eq!(tx.ike_dropped(), (flood - CONTROL_QUEUE) as u64);
        assert_eq!(tx.ike_queued_bytes(), CONTROL_QUEUE * 300);
        // An acquire has no room either, and is not an IKE drop.
        assert!(!tx.send(ToControl::Acquire { tunnel: Arc::from("t") }));
        assert_eq!(tx.ike_dropped(), (flood - CONTROL_QUEUE) as u64);
        // One warning for the whole flood (rate limit), through the syslog queue.
        assert!(log.flush(Duration::from_secs(2)));
        let warned = String::from_utf8(sink.lock().unwrap().clone()).unwrap();
        assert_eq!(warned.matches("IKE receive queue full").count(), 1, "{warned}");
        assert!(warned.contains("1 IKE datagram(s) dropped so far"), "{warned}");

        // The control task catches up: the queue and its byte count go back to zero, and the
        // next (legitimate) message is accepted and delivered intact.
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            for _ in 0..CONTROL_QUEUE {
                assert!(matches!(rx.recv().await, Some(ToControl::Ike { .. })));
            }
            assert_eq!(tx.ike_queued_bytes(), 0);
            let peer = addr("203.0.113.2:4500");
            assert!(tx.ike(local, peer, b"IKE_SA_INIT"));
            match rx.recv().await {
                Some(ToControl::Ike { local: l, remote, data }) => {
                    assert_eq!((l, remote, data.as_slice()), (local, peer, &b"IKE_SA_INIT"[..]));
                }
                other => panic!("{other:?}"),
            }
        });
    }

    #[test]
    fn ike_queue_bytes_are_bounded_before_allocation() {
        // Large spoofed datagrams hit the byte bound long before the message bound.
        let (tx, _rx) = control_queue_sized(CONTROL_QUEUE, 1 << 20, None);
        let big = vec![0u8; 65_000];
        let accepted = (0..1000).filter(|_| tx.ike(addr("192.0.2.1:500"), addr("198.51.100.9:500"), &big)).count();
        assert_eq!(accepted, (1 << 20) / 65_000);
        assert!(tx.ike_queued_bytes() <= 1 << 20);
        assert_eq!(tx.ike_dropped(), (1000 - accepted) as u64);
        // Small legitimate messages still fit in what is left.
        assert!(tx.ike(addr("192.0.2.1:500"), addr("203.0.113.2:500"), &[0u8; 500]));
    }

    /// Internet checksum over the TCP pseudo-header and segment, for verifying the clamp.
    fn tcp_checksum_ok(p: &[u8]) -> bool {
        let ihl = usize::from(p[0] & 0x0f) * 4;
        let tcp = &p[ihl..];
        let mut sum: u32 = 0;
        for c in p[12..20].chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        sum += 6 + tcp.len() as u32;
        for c in tcp.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum == 0xffff
    }

    fn syn(mss: u16) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 24];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&44u16.to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 1, 0, 5]);
        p[16..20].copy_from_slice(&[10, 2, 0, 9]);
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&80u16.to_be_bytes());
        t[12] = 6 << 4;
        t[13] = 0x02;
        t[14..16].copy_from_slice(&64240u16.to_be_bytes());
        t[20..24].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
        // Fill in a correct checksum first.
        let mut sum: u32 = 0;
        for c in p[12..20].chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        sum += 6 + 24;
        for c in p[20..].chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let ck = !(sum as u16);
        p[36..38].copy_from_slice(&ck.to_be_bytes());
        p
    }

    #[test]
    fn mss_clamp_rewrites_and_keeps_checksum_valid() {
        let mut p = syn(1460);
        assert!(tcp_checksum_ok(&p));
        clamp_mss(&mut p, 1360);
        assert_eq!(u16::from_be_bytes([p[42], p[43]]), 1360);
        assert!(tcp_checksum_ok(&p));
        // Already small: untouched.
        let mut q = syn(1200);
        let before = q.clone();
        clamp_mss(&mut q, 1360);
        assert_eq!(q, before);
        // Truncated or garbage input must not panic.
        for len in 0..p.len() {
            let mut t = p[..len].to_vec();
            clamp_mss(&mut t, 1000);
            let _ = parse_flow(&t);
        }
    }

    /// The MSS value at an odd offset (one NOP before the option): its bytes straddle two
    /// checksum words, which a naive incremental update gets wrong.
    #[test]
    fn mss_clamp_at_odd_offset_keeps_checksum_valid() {
        let mut p = syn(1460);
        // Options: NOP, MSS(4), NOP, NOP, NOP (still 24 bytes of TCP header); recompute checksum.
        p[40..44].copy_from_slice(&[1, 2, 4, 0x05]);
        p.extend_from_slice(&[0xb4, 1, 1, 1]);
        p[2..4].copy_from_slice(&48u16.to_be_bytes());
        p[32] = 7 << 4;
        p[36..38].copy_from_slice(&[0, 0]);
        let mut sum: u32 = 0;
        for c in p[12..20].chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        sum += 6 + 28;
        for c in p[20..].chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let ck = !(sum as u16);
        p[36..38].copy_from_slice(&ck.to_be_bytes());
        assert!(tcp_checksum_ok(&p));
        assert_eq!(u16::from_be_bytes([p[43], p[44]]), 1460);
        for mss in [1360u16, 1000, 1359, 536] {
            let mut q = p.clone();
            clamp_mss(&mut q, mss);
            assert_eq!(u16::from_be_bytes([q[43], q[44]]), mss);
            assert!(tcp_checksum_ok(&q), "checksum wrong after clamping to {mss}");
        }
        // Not a SYN: untouched.
        let mut r = p.clone();
        r[33] = 0x10;
        let before = r.clone();
        clamp_mss(&mut r, 1000);
        assert_eq!(r, before);
    }

    #[test]
    fn flow_parsing() {
        let p = syn(1460);
        let f = parse_flow(&p).unwrap();
        assert_eq!(f.src, Ipv4Addr::new(10, 1, 0, 5));
        assert_eq!(f.dst, Ipv4Addr::new(10, 2, 0, 9));
        assert_eq!((f.proto, f.sport, f.dport), (6, 40000, 80));
        assert!(parse_flow(&[0x60; 40]).is_none());
    }
}
