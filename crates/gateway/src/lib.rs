//! The holdfast daemon: owns the clock, sockets, TUN device and threads around the sans-IO
//! engines (`ike`, `esp`), and turns their events into SA installs, ASA syslog and `show` output.

pub mod clock;
pub mod control;
pub mod syslog;
pub mod net;
pub mod show;
pub mod daemon;
pub mod datapath;
pub mod sad;
