//! Packets shared by the gateway's unit tests.

/// A TCP SYN 10.1.0.5:40000 -> 10.2.0.9:80 (IPv4, no options; checksums left zero, which the
/// connection table does not check).
pub(crate) fn tcp_syn() -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 1, 0, 5]);
    p[16..20].copy_from_slice(&[10, 2, 0, 9]);
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&80u16.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = 0x02;
    p
}
