//! Network-namespace lab for holdfast (root only).
//!
//! The lab builds `host-a — gw-a — wan — gw-b — host-b` out of network namespaces and veth pairs,
//! runs real peers in the gateway namespaces (strongSwan 5.9.8 with userspace ESP, or the
//! `holdfast` daemon), moves data between the host namespaces and dissects a capture of the wan
//! link with tshark. Everything it creates is torn down by `Drop`, also when a test panics, and
//! leftovers of aborted runs are removed the next time a topology is built.
//!
//! Every blocking operation takes a timeout, so a test built from these pieces is bounded in
//! time even when a peer never answers.

// The lab is the outside world of the engines: it measures wall-clock stalls and timeouts, so
// the workspace rule that only crates/gateway reads the clock does not apply here.
#![allow(clippy::disallowed_methods)]

pub mod acprobe;
pub mod capture;
pub mod cmd;
pub mod demo;
pub mod holdfast;
pub mod openconnect;
pub mod ocserv;
pub mod http;
pub mod raconfig;
pub mod resume;
pub mod scenario;
pub mod strongswan;
pub mod topo;
pub mod xfer;

pub use capture::{check_capture, Capture, CaptureReport};
pub use cmd::{Output, Proc};
pub use holdfast::{Holdfast, HoldfastParams, Suite};
pub use strongswan::{StrongSwan, SwanParams};
pub use topo::Topology;
pub use xfer::{ping, transfer, wait_ping, XferOpts, XferResult};

use std::time::Duration;

/// Everything that can go wrong while driving the lab. Messages carry the command and its output
/// so that a failing CI run explains itself.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("i/o error while {what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("command `{cmd}` failed (status {status:?}):\nstdout: {stdout}\nstderr: {stderr}")]
    Command { cmd: String, status: Option<i32>, stdout: String, stderr: String },
    #[error("timed out after {after:?} while {what}")]
    Timeout { what: String, after: Duration },
    #[error("{0}")]
    Check(String),
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// True when the current process is root (the lab needs CAP_NET_ADMIN and CAP_SYS_ADMIN).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Path of the `holdfast` binary under test: `$HOLDFAST_BIN`, else
/// `$CARGO_TARGET_DIR/release/holdfast`, else `<workspace>/target/release/holdfast`.
pub fn holdfast_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("HOLDFAST_BIN") {
        return p.into();
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return std::path::PathBuf::from(t).join("release/holdfast");
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/holdfast")
}

/// [`holdfast_bin`], asserting that it was built (the lab tests run the release daemon).
///
/// # Panics
/// When the binary does not exist, with the command that builds it.
pub fn require_holdfast_bin() -> std::path::PathBuf {
    let b = holdfast_bin();
    assert!(b.exists(), "{} not found: build it (cargo build --release -p holdfast) or set HOLDFAST_BIN", b.display());
    b
}
