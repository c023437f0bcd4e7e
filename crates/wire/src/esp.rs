//! ESP header view (RFC 4303 §2) and the RFC 3948 demultiplexing of UDP port 4500.

/// SPI (4) + sequence number (4).
pub const ESP_HEADER_LEN: usize = 8;

/// RFC 3948 §2.2: the 4-byte zero "non-ESP marker" that precedes IKE messages on port 4500.
/// SPI 0 is reserved (RFC 4303 §2.1), so no ESP packet can start this way.
pub const NON_ESP_MARKER: [u8; 4] = [0; 4];

/// RFC 3948 §2.3: a NAT-keepalive is a single 0xFF octet.
pub const NAT_KEEPALIVE: u8 = 0xff;

/// A view of an ESP packet starting at the SPI. `new_checked` guarantees the 8-byte header.
#[derive(Debug, Clone)]
pub struct EspPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EspPacket<T> {
    pub fn new_checked(buffer: T) -> Option<Self> {
        (buffer.as_ref().len() >= ESP_HEADER_LEN).then_some(Self { buffer })
    }
    pub fn into_inner(self) -> T {
        self.buffer
    }
    pub fn spi(&self) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }
    /// The low 32 bits of the sequence number as sent (RFC 4303 §2.2).
    pub fn seq(&self) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([b[4], b[5], b[6], b[7]])
    }
    /// Everything after the header: IV, ciphertext, ICV.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[ESP_HEADER_LEN..]
    }
}

/// Writes the ESP header (SPI, low 32 bits of the sequence number).
pub fn emit_esp_header(out: &mut [u8], spi: u32, seq_lo: u32) -> Option<()> {
    let h = out.get_mut(..ESP_HEADER_LEN)?;
    h[..4].copy_from_slice(&spi.to_be_bytes());
    h[4..].copy_from_slice(&seq_lo.to_be_bytes());
    Some(())
}

/// The SPI of an ESP packet (its first four bytes), if it is long enough to be one.
pub fn esp_spi(packet: &[u8]) -> Option<u32> {
    EspPacket::new_checked(packet).map(|p| p.spi())
}

/// What a UDP datagram received on port 4500 carries (RFC 3948 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Udp4500<'a> {
    /// A NAT keepalive; nothing to do but note the peer is alive.
    Keepalive,
    /// An IKE message; the non-ESP marker is already stripped.
    Ike(&'a [u8]),
    /// An ESP packet starting at the SPI.
    Esp(&'a [u8]),
    /// Too short to be anything (drop and count).
    Invalid,
}

/// Classifies a UDP-4500 payload. ESP needs at least SPI and sequence number; an IKE header
/// is 28 bytes, but length checks beyond the marker are the IKE parser's job.
pub fn classify_udp4500(payload: &[u8]) -> Udp4500<'_> {
    match payload {
        [NAT_KEEPALIVE] => Udp4500::Keepalive,
        [0, 0, 0, 0, ike @ ..] => Udp4500::Ike(ike),
        p if p.len() >= ESP_HEADER_LEN => Udp4500::Esp(p),
        _ => Udp4500::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classifier() {
        assert_eq!(classify_udp4500(&[0xff]), Udp4500::Keepalive);
        assert_eq!(classify_udp4500(&[0, 0, 0, 0, 1, 2, 3]), Udp4500::Ike(&[1, 2, 3]));
        assert_eq!(classify_udp4500(&[0, 0, 0, 0]), Udp4500::Ike(&[]));
        let esp = [0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1, 9, 9];
        assert_eq!(classify_udp4500(&esp), Udp4500::Esp(&esp));
        assert_eq!(classify_udp4500(&[]), Udp4500::Invalid);
        assert_eq!(classify_udp4500(&[0xff, 0xff]), Udp4500::Invalid);
        assert_eq!(classify_udp4500(&[1, 2, 3, 4, 5, 6, 7]), Udp4500::Invalid);
        // SPI that merely starts with zero bytes is still ESP
        let esp2 = [0, 0, 0, 1, 0, 0, 0, 1];
        assert_eq!(classify_udp4500(&esp2), Udp4500::Esp(&esp2));
    }

    #[test]
    fn header_roundtrip() {
        let mut b = [0u8; 12];
        emit_esp_header(&mut b, 0xc0ffee01, 42).unwrap();
        let p = EspPacket::new_checked(&b[..]).unwrap();
        assert_eq!((p.spi(), p.seq(), p.payload().len()), (0xc0ffee01, 42, 4));
        assert_eq!(esp_spi(&b), Some(0xc0ffee01));
        assert_eq!(esp_spi(&b[..7]), None);
        assert!(emit_esp_header(&mut [0u8; 7], 1, 1).is_none());
    }

    proptest! {
        #[test]
        fn classify_never_panics(d in proptest::collection::vec(any::<u8>(), 0..64)) {
            match classify_udp4500(&d) {
                Udp4500::Esp(p) => prop_assert!(esp_spi(p).is_some()),
                Udp4500::Ike(m) => prop_assert_eq!(m.len() + 4, d.len()),
                _ => {}
            }
        }
    }
}
