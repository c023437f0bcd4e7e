//! Oversize packets toward a client: IPv4 fragmentation into the tunnel (RFC 791 §3.2,
//! "fragmentation procedure") when DF is clear or `df-bit-ignore` is on; otherwise the caller
//! drops the packet and answers with ICMP fragmentation needed (RFC 1191 §4, via
//! `wire::ip::build_dest_unreachable`).

use wire::ip::{checksum, Ipv4Packet};

/// Why a packet could not be fragmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FragError {
    #[error("not a well-formed IPv4 packet")]
    Malformed,
    #[error("MTU {0} too small for the header plus 8 bytes")]
    MtuTooSmall(u16),
}

/// Splits `pkt` (one IPv4 packet, DF ignored) into fragments of at most `mtu` bytes and calls
/// `emit(header, payload)` for each in order (header with a valid checksum; the caller frames
/// and copies both, so no buffer is allocated here). Options whose copy flag is set are
/// repeated in every fragment, the others stay in the first (RFC 791 §3.1 "copied flag").
/// Returns the number of fragments. A packet that already fits is emitted unchanged.
pub fn fragment_ipv4<F>(pkt: &[u8], mtu: u16, mut emit: F) -> Result<usize, FragError>
where
    F: FnMut(&[u8], &[u8]),
{
    let ip = Ipv4Packet::new_checked(pkt).map_err(|_| FragError::Malformed)?;
    let total = ip.total_len();
    let mtu = usize::from(mtu);
    if total <= mtu {
        let hl = ip.header_len();
        emit(&pkt[..hl], &pkt[hl..total]);
        return Ok(1);
    }
    let first_hdr = ip.header();
    let payload = ip.payload();
    // Later fragments: fixed header + copied options, padded to a 4-byte multiple.
    let mut later = [0u8; 60];
    later[..20].copy_from_slice(&first_hdr[..20]);
    let mut later_len = 20;
    let opts = ip.options();
    let mut i = 0;
    while i < opts.len() {
        let kind = opts[i];
        if kind == 0 {
            break;
        }
        if kind == 1 {
            i += 1;
            continue;
        }
        let Some(&l) = opts.get(i + 1) else { break };
        let l = usize::from(l);
        if l < 2 || i + l > opts.len() {
            break;
        }
        if kind & 0x80 != 0 {
            later[later_len..later_len + l].copy_from_slice(&opts[i..i + l]);
            later_len += l;
        }
        i += l;
    }
    while later_len % 4 != 0 {
        later[later_len] = 0; // end-of-options padding
        later_len += 1;
    }
    let base_off = ip.frag_offset(); // bytes; non-zero if the packet was itself a fragment
    let orig_mf = ip.more_frags();
    let mut off = 0usize;
    let mut n = 0;
    let mut hdr = [0u8; 60];
    while off < payload.len() {
        let hl = if off == 0 { first_hdr.len() } else { later_len };
        let room = mtu
            .checked_sub(hl)
            .filter(|r| *r >= 8)
            .ok_or(FragError::MtuTooSmall(mtu as u16))?;
        let chunk = (room / 8 * 8).min(payload.len() - off);
        let last = off + chunk >= payload.len();
        if off == 0 {
            hdr[..hl].copy_from_slice(first_hdr);
        } else {
            hdr[..hl].copy_from_slice(&later[..hl]);
        }
        hdr[0] = 0x40 | (hl / 4) as u8;
        let tl = (hl + chunk) as u16;
        hdr[2..4].copy_from_slice(&tl.to_be_bytes());
        let fo = ((base_off + off) / 8) as u16;
        let mf = if last { orig_mf } else { true };
        // Flags: DF cleared (we are fragmenting), MF as computed.
        let flags_fo = (if mf { 0x2000 } else { 0 }) | (fo & 0x1fff);
        hdr[6..8].copy_from_slice(&flags_fo.to_be_bytes());
        hdr[10..12].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&hdr[..hl]);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        emit(&hdr[..hl], &payload[off..off + chunk]);
        off += chunk;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;
    use wire::ip::Ipv4Repr;

    pub fn packet(len: usize, df: bool, id: u16) -> Vec<u8> {
        let mut p = vec![0u8; len];
        Ipv4Repr {
            src: Ipv4Addr::new(10, 1, 0, 5),
            dst: Ipv4Addr::new(10, 99, 0, 100),
            protocol: 17,
            ttl: 63,
            ident: id,
            dont_frag: df,
            dscp_ecn: 0,
            payload_len: len - 20,
        }
        .emit(&mut p)
        .unwrap();
        for (i, b) in p[20..].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        p
    }

    /// Reassembles by offset and checks every header on the way.
    fn reassemble(frags: &[Vec<u8>], mtu: usize) -> Vec<u8> {
        let mut payload = Vec::new();
        for (k, f) in frags.iter().enumerate() {
            assert!(f.len() <= mtu);
            let ip = Ipv4Packet::new_checked(&f[..]).unwrap();
            assert!(ip.verify_checksum());
            assert!(!ip.dont_frag());
            assert_eq!(ip.more_frags(), k + 1 < frags.len());
            assert_eq!(ip.frag_offset(), payload.len());
            if k + 1 < frags.len() {
                assert_eq!(ip.payload().len() % 8, 0);
            }
            payload.extend_from_slice(ip.payload());
        }
        payload
    }

    #[test]
    fn fragments_1418_into_1347() {
        let p = packet(1418, true, 77);
        let mut frags = Vec::new();
        let n = fragment_ipv4(&p, 1347, |h, b| frags.push([h, b].concat())).unwrap();
        assert_eq!(n, 2);
        assert_eq!(frags[0].len(), 20 + 1320); // floor(1327 / 8) * 8
        assert_eq!(frags[1].len(), 20 + 1398 - 1320);
        assert_eq!(reassemble(&frags, 1347), p[20..]);
    }

    #[test]
    fn fitting_packet_unchanged_and_tiny_mtu_refused() {
        let p = packet(100, true, 1);
        let mut out = Vec::new();
        assert_eq!(fragment_ipv4(&p, 1500, |h, b| out = [h, b].concat()), Ok(1));
        assert_eq!(out, p);
        assert_eq!(
            fragment_ipv4(&packet(200, false, 1), 27, |_, _| {}),
            Err(FragError::MtuTooSmall(27))
        );
        assert_eq!(
            fragment_ipv4(&[0x45, 0], 576, |_, _| {}),
            Err(FragError::Malformed)
        );
    }

    proptest! {
        #[test]
        fn any_size_any_mtu(len in 21usize..4000, mtu in 68u16..1500) {
            let p = packet(len, false, 9);
            let mut frags = Vec::new();
            fragment_ipv4(&p, mtu, |h, b| frags.push([h, b].concat())).unwrap();
            prop_assert_eq!(reassemble(&frags, usize::from(mtu).max(len.min(usize::from(mtu)))), p[20..].to_vec());
        }
    }
}
