//! IPv4, TCP, UDP and ICMP as zero-copy views over byte buffers (smoltcp style).
//!
//! `X::new_checked(buf)` validates lengths once; after that every accessor is in bounds, so
//! nothing a peer sends can make an accessor panic. Mutating accessors exist where the data path
//! rewrites packets (TTL, MSS clamping), and they keep checksums valid incrementally (RFC 1624).

use std::net::Ipv4Addr;

/// Why a buffer is not a well-formed header of the requested kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("buffer too short")]
    Truncated,
    #[error("not IPv4 (version {0})")]
    BadVersion(u8),
    #[error("bad header length")]
    BadHeaderLen,
    #[error("bad total length")]
    BadTotalLen,
    #[error("output buffer too small")]
    NoSpace,
}

/// IP protocol numbers used by the gateway.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const IPIP: u8 = 4;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ESP: u8 = 50;
}

// ---------------------------------------------------------------------------------------------
// Internet checksum (RFC 1071) and incremental update (RFC 1624).

pub mod checksum {
    use std::net::Ipv4Addr;

    /// One's-complement sum of `data` as big-endian 16-bit words (odd tail padded with zero),
    /// not yet folded. Safe to add several partial sums as long as each part but the last has
    /// even length.
    pub fn sum(data: &[u8]) -> u32 {
        let mut acc: u64 = 0;
        let mut chunks = data.chunks_exact(2);
        for c in &mut chunks {
            acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            acc += u64::from(*last) << 8;
        }
        // Fold the 64-bit accumulator so callers can keep adding u32 partial sums.
        while acc > 0xffff_ffff {
            acc = (acc & 0xffff_ffff) + (acc >> 32);
        }
        acc as u32
    }

    /// Folds a partial sum to 16 bits (end-around carry).
    pub fn fold(mut s: u32) -> u16 {
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    /// The checksum field value for `data` (the complement of the folded sum).
    pub fn checksum(data: &[u8]) -> u16 {
        !fold(sum(data))
    }

    /// Partial sum of the IPv4 pseudo-header for TCP/UDP (RFC 793 §3.1, RFC 768).
    pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: u16) -> u32 {
        let s = src.octets();
        let d = dst.octets();
        u32::from(u16::from_be_bytes([s[0], s[1]]))
            + u32::from(u16::from_be_bytes([s[2], s[3]]))
            + u32::from(u16::from_be_bytes([d[0], d[1]]))
            + u32::from(u16::from_be_bytes([d[2], d[3]]))
            + u32::from(protocol)
            + u32::from(len)
    }

    /// RFC 1624 eqn. 3: the new checksum after one 16-bit word of the covered data changes
    /// from `old` to `new`: HC' = ~(~HC + ~m + m'). Computing it this way (rather than eqn. 2)
    /// never produces the -0 (0xffff sum) ambiguity RFC 1624 §3 describes.
    pub fn update_u16(check: u16, old: u16, new: u16) -> u16 {
        let s = u32::from(!check) + u32::from(!old) + u32::from(new);
        !fold(s)
    }

    /// Same as [`update_u16`] for a 32-bit field (two words), e.g. an address.
    pub fn update_u32(check: u16, old: u32, new: u32) -> u16 {
        let c = update_u16(check, (old >> 16) as u16, (new >> 16) as u16);
        update_u16(c, old as u16, new as u16)
    }
}

// ---------------------------------------------------------------------------------------------
// IPv4

/// Minimum IPv4 header length.
pub const IPV4_HEADER_LEN: usize = 20;

/// A view of an IPv4 packet. After [`Ipv4Packet::new_checked`] the buffer holds at least
/// `total_len()` bytes and a header of `header_len()` bytes; bytes after `total_len()` (link
/// padding) are ignored by [`Ipv4Packet::payload`].
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps without checking; accessors may panic on short buffers. For buffers we built.
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Validates version, IHL and total length against the buffer (RFC 791 §3.1).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < IPV4_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let version = b[0] >> 4;
        if version != 4 {
            return Err(WireError::BadVersion(version));
        }
        let hl = usize::from(b[0] & 0x0f) * 4;
        if hl < IPV4_HEADER_LEN || hl > b.len() {
            return Err(WireError::BadHeaderLen);
        }
        let total = usize::from(u16::from_be_bytes([b[2], b[3]]));
        if total < hl || total > b.len() {
            return Err(WireError::BadTotalLen);
        }
        Ok(Self { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn version(&self) -> u8 {
        self.b()[0] >> 4
    }
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[0] & 0x0f) * 4
    }
    pub fn dscp_ecn(&self) -> u8 {
        self.b()[1]
    }
    pub fn total_len(&self) -> usize {
        usize::from(u16::from_be_bytes([self.b()[2], self.b()[3]]))
    }
    pub fn ident(&self) -> u16 {
        u16::from_be_bytes([self.b()[4], self.b()[5]])
    }
    /// Flags and fragment offset word.
    fn frag_word(&self) -> u16 {
        u16::from_be_bytes([self.b()[6], self.b()[7]])
    }
    pub fn dont_frag(&self) -> bool {
        self.frag_word() & 0x4000 != 0
    }
    pub fn more_frags(&self) -> bool {
        self.frag_word() & 0x2000 != 0
    }
    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> usize {
        usize::from(self.frag_word() & 0x1fff) * 8
    }
    /// True for any fragment (first, middle or last) of a fragmented datagram.
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }
    pub fn ttl(&self) -> u8 {
        self.b()[8]
    }
    pub fn protocol(&self) -> u8 {
        self.b()[9]
    }
    pub fn header_checksum(&self) -> u16 {
        u16::from_be_bytes([self.b()[10], self.b()[11]])
    }
    pub fn src(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[12], b[13], b[14], b[15])
    }
    pub fn dst(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[16], b[17], b[18], b[19])
    }
    pub fn options(&self) -> &[u8] {
        &self.b()[IPV4_HEADER_LEN..self.header_len()]
    }
    /// The header checksum verifies (sum over the header folds to 0xffff).
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(&self.b()[..self.header_len()])) == 0xffff
    }
    pub fn header(&self) -> &[u8] {
        &self.b()[..self.header_len()]
    }
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..self.total_len()]
    }
    /// The packet itself, without trailing link padding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.b()[..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    fn set_checksum_field(&mut self, v: u16) {
        self.bm()[10..12].copy_from_slice(&v.to_be_bytes());
    }

    /// Recomputes the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        self.set_checksum_field(0);
        let hl = self.header_len();
        let c = checksum::checksum(&self.b()[..hl]);
        self.set_checksum_field(c);
    }

    /// Sets the TTL and updates the checksum incrementally (TTL shares a word with protocol).
    pub fn set_ttl(&mut self, ttl: u8) {
        let old = u16::from_be_bytes([self.ttl(), self.protocol()]);
        let new = u16::from_be_bytes([ttl, self.protocol()]);
        let c = checksum::update_u16(self.header_checksum(), old, new);
        self.bm()[8] = ttl;
        self.set_checksum_field(c);
    }

    /// Decrements the TTL as a router does (RFC 1812 §5.3.1). Returns `false`, leaving the
    /// packet untouched, if the TTL would reach zero (the caller sends Time Exceeded or drops).
    pub fn decrement_ttl(&mut self) -> bool {
        let t = self.ttl();
        if t <= 1 {
            return false;
        }
        self.set_ttl(t - 1);
        true
    }

    /// Sets or clears DF with an incremental checksum update.
    pub fn set_dont_frag(&mut self, df: bool) {
        let old = self.frag_word();
        let new = if df { old | 0x4000 } else { old & !0x4000 };
        let c = checksum::update_u16(self.header_checksum(), old, new);
        self.bm()[6..8].copy_from_slice(&new.to_be_bytes());
        self.set_checksum_field(c);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (hl, tl) = (self.header_len(), self.total_len());
        &mut self.bm()[hl..tl]
    }
}

/// Fields of an IPv4 header to emit (no options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub ttl: u8,
    pub ident: u16,
    pub dont_frag: bool,
    pub dscp_ecn: u8,
    pub payload_len: usize,
}

impl Ipv4Repr {
    /// Writes a 20-byte header with a valid checksum at the start of `out`; the payload is
    /// expected to follow. Fails if the total exceeds 65535 or `out` has no room for the header.
    pub fn emit(&self, out: &mut [u8]) -> Result<(), WireError> {
        let total = IPV4_HEADER_LEN + self.payload_len;
        let total16 = u16::try_from(total).map_err(|_| WireError::BadTotalLen)?;
        let h = out.get_mut(..IPV4_HEADER_LEN).ok_or(WireError::NoSpace)?;
        h[0] = 0x45;
        h[1] = self.dscp_ecn;
        h[2..4].copy_from_slice(&total16.to_be_bytes());
        h[4..6].copy_from_slice(&self.ident.to_be_bytes());
        h[6..8].copy_from_slice(&(if self.dont_frag { 0x4000u16 } else { 0 }).to_be_bytes());
        h[8] = self.ttl;
        h[9] = self.protocol;
        h[10..12].copy_from_slice(&[0, 0]);
        h[12..16].copy_from_slice(&self.src.octets());
        h[16..20].copy_from_slice(&self.dst.octets());
        let c = checksum::checksum(h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// TCP

pub const TCP_HEADER_LEN: usize = 20;

/// TCP flag bits (RFC 793 §3.1, RFC 3168 §6.1).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// A view of a TCP segment (the IPv4 payload).
#[derive(Debug, Clone)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks that the fixed header and the options announced by the data offset fit.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < TCP_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let off = usize::from(b[12] >> 4) * 4;
        if off < TCP_HEADER_LEN || off > b.len() {
            return Err(WireError::BadHeaderLen);
        }
        Ok(Self { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    pub fn src_port(&self) -> u16 {
        u16::from_be_bytes([self.b()[0], self.b()[1]])
    }
    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes([self.b()[2], self.b()[3]])
    }
    pub fn seq(&self) -> u32 {
        u32::from_be_bytes([self.b()[4], self.b()[5], self.b()[6], self.b()[7]])
    }
    pub fn ack(&self) -> u32 {
        u32::from_be_bytes([self.b()[8], self.b()[9], self.b()[10], self.b()[11]])
    }
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[12] >> 4) * 4
    }
    /// The eight flag bits (see [`tcp_flags`]).
    pub fn flags(&self) -> u8 {
        self.b()[13]
    }
    pub fn syn(&self) -> bool {
        self.flags() & tcp_flags::SYN != 0
    }
    pub fn ack_flag(&self) -> bool {
        self.flags() & tcp_flags::ACK != 0
    }
    pub fn fin(&self) -> bool {
        self.flags() & tcp_flags::FIN != 0
    }
    pub fn rst(&self) -> bool {
        self.flags() & tcp_flags::RST != 0
    }
    pub fn window(&self) -> u16 {
        u16::from_be_bytes([self.b()[14], self.b()[15]])
    }
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.b()[16], self.b()[17]])
    }
    pub fn options(&self) -> &[u8] {
        &self.b()[TCP_HEADER_LEN..self.header_len()]
    }
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..]
    }

    /// The MSS option value (RFC 793 kind 2, length 4), if present and well formed.
    pub fn mss(&self) -> Option<u16> {
        let at = mss_value_offset(self.options())?;
        let o = self.options();
        Some(u16::from_be_bytes([o[at], o[at + 1]]))
    }

    /// Verifies the checksum over the pseudo-header and the whole segment.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        l4_sum(self.b(), src, dst, proto::TCP) == Some(0xffff)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    /// Recomputes the checksum from scratch. The segment is the whole buffer.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) -> Result<(), WireError> {
        self.bm()[16..18].copy_from_slice(&[0, 0]);
        let s = l4_sum(self.b(), src, dst, proto::TCP).ok_or(WireError::BadTotalLen)?;
        self.bm()[16..18].copy_from_slice(&(!s).to_be_bytes());
        Ok(())
    }

    /// MSS clamping: if the segment carries an MSS option larger than `max`, lowers it to
    /// `max` and patches the checksum incrementally (RFC 1624). Returns `(old, new)` when it
    /// changed something. Only meaningful on SYN segments; the caller decides when to apply.
    pub fn clamp_mss(&mut self, max: u16) -> Option<(u16, u16)> {
        let rel = mss_value_offset(self.options())?;
        let at = TCP_HEADER_LEN + rel;
        let b = self.b();
        let old = u16::from_be_bytes([b[at], b[at + 1]]);
        if old <= max {
            return None;
        }
        // The checksum sums 16-bit words aligned to the segment start. An MSS value at an odd
        // offset (e.g. after one NOP) straddles two words; its contribution to the sum is then
        // the byte-swapped value, so the update uses swapped words.
        let (o, n) = if at & 1 == 0 { (old, max) } else { (old.swap_bytes(), max.swap_bytes()) };
        let c = checksum::update_u16(self.checksum(), o, n);
        self.bm()[at..at + 2].copy_from_slice(&max.to_be_bytes());
        self.bm()[16..18].copy_from_slice(&c.to_be_bytes());
        Some((old, max))
    }
}

/// Offset, within `opts`, of the 2-byte MSS value; `None` if absent or options are malformed.
fn mss_value_offset(opts: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => return None, // end of option list
            1 => i += 1,      // NOP
            kind => {
                let len = usize::from(*opts.get(i + 1)?);
                if len < 2 || i + len > opts.len() {
                    return None;
                }
                if kind == 2 {
                    return (len == 4).then_some(i + 2);
                }
                i += len;
            }
        }
    }
    None
}

/// Folded sum over pseudo-header + segment; `None` if the segment exceeds 65535 bytes.
fn l4_sum(seg: &[u8], src: Ipv4Addr, dst: Ipv4Addr, protocol: u8) -> Option<u16> {
    let len = u16::try_from(seg.len()).ok()?;
    Some(checksum::fold(checksum::pseudo_header(src, dst, protocol, len) + checksum::sum(seg)))
}

// ---------------------------------------------------------------------------------------------
// UDP

pub const UDP_HEADER_LEN: usize = 8;

/// A view of a UDP datagram. After `new_checked` the length field is within the buffer and
/// [`UdpPacket::payload`] stops at it.
#[derive(Debug, Clone)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < UDP_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let len = usize::from(u16::from_be_bytes([b[4], b[5]]));
        if len < UDP_HEADER_LEN || len > b.len() {
            return Err(WireError::BadTotalLen);
        }
        Ok(Self { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    pub fn src_port(&self) -> u16 {
        u16::from_be_bytes([self.b()[0], self.b()[1]])
    }
    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes([self.b()[2], self.b()[3]])
    }
    pub fn len(&self) -> usize {
        usize::from(u16::from_be_bytes([self.b()[4], self.b()[5]]))
    }
    pub fn is_empty(&self) -> bool {
        self.len() <= UDP_HEADER_LEN
    }
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.b()[6], self.b()[7]])
    }
    pub fn payload(&self) -> &[u8] {
        &self.b()[UDP_HEADER_LEN..self.len()]
    }
    /// Verifies the checksum; a zero checksum means "not computed" over IPv4 (RFC 768).
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.checksum() == 0 || l4_sum(&self.b()[..self.len()], src, dst, proto::UDP) == Some(0xffff)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        let len = self.len();
        let b = self.buffer.as_mut();
        b[6..8].copy_from_slice(&[0, 0]);
        let s = l4_sum(&b[..len], src, dst, proto::UDP).unwrap_or(0);
        // RFC 768: a computed checksum of zero is transmitted as all ones.
        let c = match !s {
            0 => 0xffff,
            c => c,
        };
        b[6..8].copy_from_slice(&c.to_be_bytes());
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let len = self.len();
        &mut self.buffer.as_mut()[UDP_HEADER_LEN..len]
    }
}

/// Writes an 8-byte UDP header for `payload_len` bytes of payload with checksum 0 (allowed
/// over IPv4, RFC 768; RFC 3948 §2.1 lets ESP-in-UDP senders use 0).
pub fn emit_udp_header(out: &mut [u8], src_port: u16, dst_port: u16, payload_len: usize) -> Result<(), WireError> {
    let len = u16::try_from(UDP_HEADER_LEN + payload_len).map_err(|_| WireError::BadTotalLen)?;
    let h = out.get_mut(..UDP_HEADER_LEN).ok_or(WireError::NoSpace)?;
    h[0..2].copy_from_slice(&src_port.to_be_bytes());
    h[2..4].copy_from_slice(&dst_port.to_be_bytes());
    h[4..6].copy_from_slice(&len.to_be_bytes());
    h[6..8].copy_from_slice(&[0, 0]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// ICMP

pub const ICMP_HEADER_LEN: usize = 8;

pub mod icmp_type {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    pub const REDIRECT: u8 = 5;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;
}

/// Destination-unreachable codes (RFC 792, RFC 1812 §5.2.7.1).
pub mod unreach_code {
    pub const NET: u8 = 0;
    pub const HOST: u8 = 1;
    pub const PROTOCOL: u8 = 2;
    pub const PORT: u8 = 3;
    pub const FRAG_NEEDED: u8 = 4;
    pub const ADMIN_PROHIBITED: u8 = 13;
}

/// A view of an ICMP message (the IPv4 payload).
#[derive(Debug, Clone)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < ICMP_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Self { buffer })
    }
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    pub fn msg_type(&self) -> u8 {
        self.b()[0]
    }
    pub fn code(&self) -> u8 {
        self.b()[1]
    }
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.b()[2], self.b()[3]])
    }
    /// Bytes 4..8: identifier/sequence for echo, next-hop MTU for frag-needed, unused otherwise.
    pub fn rest_of_header(&self) -> [u8; 4] {
        let b = self.b();
        [b[4], b[5], b[6], b[7]]
    }
    /// Echo identifier (bytes 4..6) — meaningful for echo request/reply.
    pub fn echo_ident(&self) -> u16 {
        u16::from_be_bytes([self.b()[4], self.b()[5]])
    }
    pub fn echo_seq(&self) -> u16 {
        u16::from_be_bytes([self.b()[6], self.b()[7]])
    }
    /// Next-hop MTU of a "fragmentation needed" message (RFC 1191 §4).
    pub fn next_hop_mtu(&self) -> u16 {
        u16::from_be_bytes([self.b()[6], self.b()[7]])
    }
    pub fn is_error(&self) -> bool {
        is_icmp_error(self.msg_type())
    }
    pub fn data(&self) -> &[u8] {
        &self.b()[ICMP_HEADER_LEN..]
    }
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.b())) == 0xffff
    }
}

fn is_icmp_error(t: u8) -> bool {
    matches!(
        t,
        icmp_type::DEST_UNREACHABLE | icmp_type::REDIRECT | icmp_type::TIME_EXCEEDED | icmp_type::PARAMETER_PROBLEM | 4
    )
}

/// RFC 1812 §4.3.2.3: an ICMP error should quote as much of the original datagram as fits in
/// 576 bytes total.
pub const ICMP_ERROR_MAX_LEN: usize = 576;

/// Builds a complete IPv4 packet carrying ICMP destination unreachable (`code`, e.g.
/// [`unreach_code::HOST`], or [`unreach_code::FRAG_NEEDED`] with `next_hop_mtu`, RFC 1191)
/// about `offending`, sent from `from` back to the offending packet's source. Returns the
/// length written to `out`, or `None` where RFC 1122 §3.2.2 / RFC 1812 §4.3.2.7 forbid an
/// error: the offending packet is itself an ICMP error, a non-first fragment, or comes from a
/// broadcast, multicast, unspecified or loopback source; or `out` is too small.
pub fn build_dest_unreachable(
    offending: &[u8],
    code: u8,
    next_hop_mtu: u16,
    from: Ipv4Addr,
    out: &mut [u8],
) -> Option<usize> {
    let orig = Ipv4Packet::new_checked(offending).ok()?;
    let src = orig.src();
    if src.is_broadcast() || src.is_multicast() || src.is_unspecified() || src.is_loopback() {
        return None;
    }
    if orig.frag_offset() != 0 {
        return None;
    }
    if orig.protocol() == proto::ICMP {
        // Never answer an ICMP error with an error (loops); an unreadable ICMP header counts
        // as an error to be safe.
        match orig.payload().first() {
            Some(&t) if !is_icmp_error(t) => {}
            _ => return None,
        }
    }
    let quote_len = orig.total_len().min(ICMP_ERROR_MAX_LEN - IPV4_HEADER_LEN - ICMP_HEADER_LEN);
    let icmp_len = ICMP_HEADER_LEN + quote_len;
    let total = IPV4_HEADER_LEN + icmp_len;
    let out = out.get_mut(..total)?;
    Ipv4Repr {
        src: from,
        dst: src,
        protocol: proto::ICMP,
        ttl: 64,
        ident: 0,
        dont_frag: false,
        // RFC 1812 §4.3.2.5: ICMP errors use precedence 6 (internetwork control) -> 0xc0.
        dscp_ecn: 0xc0,
        payload_len: icmp_len,
    }
    .emit(out)
    .ok()?;
    let icmp = &mut out[IPV4_HEADER_LEN..];
    icmp[0] = icmp_type::DEST_UNREACHABLE;
    icmp[1] = code;
    icmp[2..4].copy_from_slice(&[0, 0]);
    icmp[4..6].copy_from_slice(&[0, 0]);
    let mtu = if code == unreach_code::FRAG_NEEDED { next_hop_mtu } else { 0 };
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[ICMP_HEADER_LEN..].copy_from_slice(&orig.as_bytes()[..quote_len]);
    let c = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// The widely used example header 4500 0073 0000 4000 4011 [b861] c0a8 0001 c0a8 00c7,
    /// whose checksum is 0xb861.
    #[test]
    fn ipv4_checksum_known_header() {
        let mut h = hex::decode("450000730000400040110000c0a80001c0a800c7").unwrap();
        h.resize(0x73, 0);
        let mut p = Ipv4Packet::new_checked(&mut h[..]).unwrap();
        p.fill_checksum();
        assert_eq!(p.header_checksum(), 0xb861);
        assert!(p.verify_checksum());
        assert_eq!(p.src(), a("192.168.0.1"));
        assert_eq!(p.dst(), a("192.168.0.199"));
        assert_eq!(p.protocol(), proto::UDP);
        assert!(p.dont_frag());
        assert!(!p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.payload().len(), 0x73 - 20);
    }

    #[test]
    fn ipv4_rejects_malformed() {
        assert_eq!(Ipv4Packet::new_checked(&[0x45u8; 19][..]).unwrap_err(), WireError::Truncated);
        let mut h = hex::decode("450000140000400040110000c0a80001c0a800c7").unwrap();
        assert!(Ipv4Packet::new_checked(&h[..]).is_ok());
        h[0] = 0x65;
        assert_eq!(Ipv4Packet::new_checked(&h[..]).unwrap_err(), WireError::BadVersion(6));
        h[0] = 0x44;
        assert_eq!(Ipv4Packet::new_checked(&h[..]).unwrap_err(), WireError::BadHeaderLen);
        h[0] = 0x46; // 24-byte header in a 20-byte buffer
        assert_eq!(Ipv4Packet::new_checked(&h[..]).unwrap_err(), WireError::BadHeaderLen);
        h[0] = 0x45;
        h[3] = 0x15; // total 21 > 20
        assert_eq!(Ipv4Packet::new_checked(&h[..]).unwrap_err(), WireError::BadTotalLen);
        h[3] = 0x13; // total 19 < header
        assert_eq!(Ipv4Packet::new_checked(&h[..]).unwrap_err(), WireError::BadTotalLen);
        // trailing link padding is tolerated and excluded from the payload
        h[3] = 0x14;
        h.extend_from_slice(&[0; 6]);
        let p = Ipv4Packet::new_checked(&h[..]).unwrap();
        assert_eq!(p.payload().len(), 0);
        assert_eq!(p.as_bytes().len(), 20);
    }

    #[test]
    fn ttl_and_df_updates_keep_checksum_valid() {
        let mut buf = vec![0u8; 40];
        Ipv4Repr { src: a("10.1.0.5"), dst: a("10.2.0.9"), protocol: proto::TCP, ttl: 2, ident: 0x1234, dont_frag: true, dscp_ecn: 0, payload_len: 20 }
            .emit(&mut buf)
            .unwrap();
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        assert!(p.verify_checksum());
        assert!(p.decrement_ttl());
        assert_eq!(p.ttl(), 1);
        assert!(p.verify_checksum());
        assert!(!p.decrement_ttl());
        assert_eq!(p.ttl(), 1);
        p.set_dont_frag(false);
        assert!(!p.dont_frag());
        assert!(p.verify_checksum());
        p.set_dont_frag(true);
        assert!(p.verify_checksum());
        let inc = p.header_checksum();
        p.fill_checksum();
        assert_eq!(inc, p.header_checksum());
    }

    #[test]
    fn rfc1624_incremental_matches_recompute() {
        // RFC 1624 §4 example: HC = 0xdd2f, m = 0x5555 -> m' = 0x3285, HC' = 0x0000.
        assert_eq!(checksum::update_u16(0xdd2f, 0x5555, 0x3285), 0x0000);
        let mut data: Vec<u8> = (0..64u8).map(|x| x.wrapping_mul(37)).collect();
        let before = checksum::checksum(&data);
        data[10..12].copy_from_slice(&0xbeefu16.to_be_bytes());
        let old = u16::from_be_bytes([(10u8).wrapping_mul(37), (11u8).wrapping_mul(37)]);
        assert_eq!(checksum::update_u16(before, old, 0xbeef), checksum::checksum(&data));
    }

    fn syn_with_options(opts: &[u8]) -> (Vec<u8>, Ipv4Addr, Ipv4Addr) {
        let (src, dst) = (a("10.1.0.5"), a("10.2.0.9"));
        let hl = TCP_HEADER_LEN + opts.len();
        let mut seg = vec![0u8; hl + 3];
        seg[0..2].copy_from_slice(&40000u16.to_be_bytes());
        seg[2..4].copy_from_slice(&443u16.to_be_bytes());
        seg[4..8].copy_from_slice(&0x01020304u32.to_be_bytes());
        seg[12] = ((hl / 4) as u8) << 4;
        seg[13] = tcp_flags::SYN;
        seg[14..16].copy_from_slice(&64240u16.to_be_bytes());
        seg[TCP_HEADER_LEN..hl].copy_from_slice(opts);
        seg[hl..].copy_from_slice(b"abc");
        let mut t = TcpPacket::new_checked(&mut seg[..]).unwrap();
        t.fill_checksum(src, dst).unwrap();
        (seg, src, dst)
    }

    #[test]
    fn tcp_mss_clamp_even_and_odd_offsets() {
        // MSS first (value at even offset 22), and after one NOP (value at odd offset 23).
        for opts in [&[2u8, 4, 0x05, 0xb4, 1, 1, 1, 0][..], &[1u8, 2, 4, 0x05, 0xb4, 1, 1, 0][..], &[1, 1, 4, 2, 2, 4, 0x23, 0x28][..]] {
            let (mut seg, src, dst) = syn_with_options(opts);
            let mut t = TcpPacket::new_checked(&mut seg[..]).unwrap();
            assert!(t.verify_checksum(src, dst));
            assert!(t.syn());
            let before = t.mss().unwrap();
            assert_eq!(t.clamp_mss(1360), Some((before, 1360)));
            assert_eq!(t.mss(), Some(1360));
            assert!(t.verify_checksum(src, dst), "incremental checksum wrong for {opts:?}");
            assert_eq!(t.clamp_mss(1400), None, "never raises the MSS");
            assert_eq!(t.payload(), b"abc");
        }
        // no MSS option / malformed options
        for opts in [&[1u8, 1, 1, 0][..], &[2u8, 3, 0, 0][..], &[8u8, 40, 0, 0][..], &[2u8, 4, 5][..]] {
            let hl_ok = opts.len() % 4 == 0;
            if !hl_ok {
                continue;
            }
            let (mut seg, _, _) = syn_with_options(opts);
            let mut t = TcpPacket::new_checked(&mut seg[..]).unwrap();
            assert_eq!(t.mss(), None);
            assert_eq!(t.clamp_mss(1000), None);
        }
    }

    #[test]
    fn udp_view_and_checksum() {
        let (src, dst) = (a("192.0.2.1"), a("192.0.2.2"));
        let mut d = vec![0u8; 8 + 5];
        emit_udp_header(&mut d, 4500, 4500, 5).unwrap();
        d[8..].copy_from_slice(b"hello");
        let mut u = UdpPacket::new_checked(&mut d[..]).unwrap();
        assert!(u.verify_checksum(src, dst), "zero checksum means none");
        u.fill_checksum(src, dst);
        assert_ne!(u.checksum(), 0);
        assert!(u.verify_checksum(src, dst));
        assert!(!u.verify_checksum(src, a("192.0.2.3")));
        assert_eq!(u.payload(), b"hello");
        assert_eq!((u.src_port(), u.dst_port()), (4500, 4500));
        assert_eq!(UdpPacket::new_checked(&[0u8; 7][..]).unwrap_err(), WireError::Truncated);
        let mut bad = d.clone();
        bad[5] = 20; // length beyond buffer
        assert_eq!(UdpPacket::new_checked(&bad[..]).unwrap_err(), WireError::BadTotalLen);
    }

    fn tcp_packet(total_payload: usize) -> Vec<u8> {
        let mut p = vec![0u8; 20 + total_payload];
        Ipv4Repr { src: a("10.1.0.5"), dst: a("10.2.0.9"), protocol: proto::TCP, ttl: 63, ident: 7, dont_frag: true, dscp_ecn: 0, payload_len: total_payload }
            .emit(&mut p)
            .unwrap();
        for (i, x) in p[20..].iter_mut().enumerate() {
            *x = i as u8;
        }
        p
    }

    #[test]
    fn icmp_frag_needed_quotes_offending_packet() {
        let orig = tcp_packet(1480);
        let mut out = [0u8; 1500];
        let n = build_dest_unreachable(&orig, unreach_code::FRAG_NEEDED, 1400, a("10.1.0.1"), &mut out).unwrap();
        assert_eq!(n, ICMP_ERROR_MAX_LEN);
        let ip = Ipv4Packet::new_checked(&out[..n]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.dst(), a("10.1.0.5"));
        assert_eq!(ip.src(), a("10.1.0.1"));
        assert_eq!(ip.protocol(), proto::ICMP);
        let icmp = IcmpPacket::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!((icmp.msg_type(), icmp.code()), (3, 4));
        assert_eq!(icmp.next_hop_mtu(), 1400);
        assert!(icmp.is_error());
        assert_eq!(icmp.data(), &orig[..576 - 28]);

        // code 1 (host unreachable) with a short packet: whole packet quoted, MTU field zero
        let small = tcp_packet(20);
        let n = build_dest_unreachable(&small, unreach_code::HOST, 1400, a("10.1.0.1"), &mut out).unwrap();
        let ip = Ipv4Packet::new_checked(&out[..n]).unwrap();
        let icmp = IcmpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((icmp.code(), icmp.next_hop_mtu()), (1, 0));
        assert_eq!(icmp.data(), &small[..]);
        assert!(icmp.verify_checksum());

        // no error about an ICMP error
        let err_pkt = out[..n].to_vec();
        assert_eq!(build_dest_unreachable(&err_pkt, 1, 0, a("10.1.0.1"), &mut out), None);
        // no error about a non-first fragment
        let mut frag = tcp_packet(100);
        frag[7] = 0x10;
        Ipv4Packet::new_checked(&mut frag[..]).unwrap().fill_checksum();
        assert_eq!(build_dest_unreachable(&frag, 1, 0, a("10.1.0.1"), &mut out), None);
        // no room
        assert_eq!(build_dest_unreachable(&small, 1, 0, a("10.1.0.1"), &mut [0u8; 30]), None);
        // garbage in
        assert_eq!(build_dest_unreachable(&[1, 2, 3], 1, 0, a("10.1.0.1"), &mut out), None);
    }

    proptest! {
        #[test]
        fn views_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200), mss in any::<u16>()) {
            if let Ok(p) = Ipv4Packet::new_checked(&data[..]) {
                let _ = (p.src(), p.dst(), p.payload(), p.options(), p.verify_checksum(), p.frag_offset());
                let mut out = [0u8; 600];
                let _ = build_dest_unreachable(&data, 4, 1400, Ipv4Addr::new(10, 0, 0, 1), &mut out);
            }
            let mut d = data.clone();
            if let Ok(mut t) = TcpPacket::new_checked(&mut d[..]) {
                let _ = (t.mss(), t.payload(), t.options(), t.flags());
                let _ = t.clamp_mss(mss);
            }
            if let Ok(u) = UdpPacket::new_checked(&data[..]) {
                let _ = (u.payload(), u.verify_checksum(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST));
            }
            if let Ok(i) = IcmpPacket::new_checked(&data[..]) {
                let _ = (i.data(), i.verify_checksum());
            }
        }

        #[test]
        fn clamp_keeps_checksum_valid(pre_nops in 0usize..3, mss in 500u16..9000, max in 500u16..9000) {
            let mut opts = vec![1u8; pre_nops];
            opts.extend_from_slice(&[2, 4]);
            opts.extend_from_slice(&mss.to_be_bytes());
            while opts.len() % 4 != 0 { opts.push(0); }
            let (mut seg, src, dst) = syn_with_options(&opts);
            let mut t = TcpPacket::new_checked(&mut seg[..]).unwrap();
            let r = t.clamp_mss(max);
            prop_assert_eq!(r.is_some(), mss > max);
            prop_assert_eq!(t.mss(), Some(mss.min(max)));
            prop_assert!(t.verify_checksum(src, dst));
        }
    }
}
