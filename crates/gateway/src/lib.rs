//! The holdfast daemon: owns the clock, sockets, TUN device and threads around the sans-IO
//! engines (`ike`, `esp`), and turns their events into SA installs, ASA syslog and `show` output.
//!
//! ```text
//!            control socket (one line in, text out)
//!                    │
//!   UDP 500 ──► control task (tokio, current thread) ──► ike::Endpoint
//!                    │  ▲ IKE on 4500 / acquires             │ events
//!                    ▼  │                                     ▼
//!               SAD (copy-on-write snapshot, per-SA mutex) ◄── installs/removals, syslog
//!                 ▲                          ▲
//!   TUN ─► hf-tx: split GSO, SPD lookup,     │
//!          ESP seal, UDP GSO / sendmmsg ─► outside
//!   outside ─► hf-rx: recvmmsg/GRO, RFC 3948 demux, ESP open, selector check,
//!              TUN write with GRO coalescing ─► TUN
//! ```
//!
//! * [`daemon`]: `holdfast run` — startup (sockets, TUN, routes, forwarding), the control
//!   loop, teardown on SIGINT/SIGTERM (IKE deletes sent, everything added removed).
//! * [`datapath`]: the two packet threads.
//! * [`sad`]: the SA database shared between them and the control task.
//! * [`flows`]: the connection table (`flow::Engine`) shared by both threads and the control
//!   task: engine set-up, syslog of its events, the state file, `show asp table vpn-context`.
//! * [`control`]: the control-socket command grammar and client.
//! * [`show`] and [`syslog`]: ASA-format text.
//! * [`net`]: the kernel edge (TUN, routes, sockets); [`clock`]: the only clock reads.

pub mod clock;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod flows;
pub mod metrics;
pub mod net;
pub mod ra;
pub mod reload;
pub mod sad;
pub mod show;
pub mod syslog;
pub mod watch;
#[cfg(test)]
mod test_packets;
