//! Zero-copy packet views and emitters: IPv4/TCP/UDP/ICMP, ESP, and the IKEv2 message with its
//! payload chain. Input is checked once (`new_checked`); nothing here allocates per packet
//! except the IKE message builder.

pub mod esp;
pub mod ike;
pub mod ip;
