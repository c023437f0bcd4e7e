//! ESP decapsulation must survive anything a peer (or an attacker) sends: no panic, no
//! out-of-bounds, and a packet opens only if it is exactly what the sender sealed.
//!
//! Input layout: byte 0 picks the transform and ESN; byte 1 picks the mode:
//!  - even: the rest is a raw ESP packet, opened by an SA whose SPI matches its first 4 bytes;
//!  - odd:  the rest is an inner packet that is sealed, then mutated by flips taken from the
//!          input's tail, then opened; an unmutated packet must round-trip exactly.
#![no_main]

use esp::{classify_udp4500, EspError, InboundSa, OutboundSa, SaParams};
use libfuzzer_sys::fuzz_target;
use policy::{Encryption, Integrity};

const SUITES: [(Encryption, Integrity); 8] = [
    (Encryption::AesGcm128, Integrity::Null),
    (Encryption::AesGcm192, Integrity::Null),
    (Encryption::AesGcm256, Integrity::Null),
    (Encryption::AesCbc128, Integrity::Sha1),
    (Encryption::AesCbc128, Integrity::Sha256),
    (Encryption::AesCbc256, Integrity::Sha1),
    (Encryption::AesCbc256, Integrity::Sha256),
    (Encryption::AesCbc256, Integrity::Sha512),
];

/// `key_tweak` separates the keys of the two modes: libFuzzer observes the memcmp of sealed
/// packets in the sealed mode and would otherwise replay a genuine packet in the raw mode.
fn params(sel: u8, spi: u32, key_tweak: u8) -> SaParams {
    let (encryption, integrity) = SUITES[usize::from(sel) % SUITES.len()];
    let klen = usize::from(encryption.key_bits() / 8) + if encryption.is_aead() { 4 } else { 0 };
    let ilen = match integrity {
        Integrity::Null => 0,
        Integrity::Sha1 => 20,
        Integrity::Sha256 => 32,
        Integrity::Sha384 => 48,
        Integrity::Sha512 => 64,
    };
    SaParams {
        spi,
        encryption,
        integrity,
        enc_key: (0..klen as u8).map(|x| x ^ key_tweak).collect(),
        integ_key: (0..ilen as u8).map(|x| x ^ 0x5a).collect(),
        esn: sel & 0x80 != 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let [sel, mode, rest @ ..] = data else { return };
    let _ = classify_udp4500(rest);
    if mode & 1 == 0 {
        let spi = esp::esp_spi(rest).unwrap_or(1).max(1);
        let mut sa = InboundSa::new(&params(*sel, spi, 0xa5)).expect("valid params");
        let mut pkt = rest.to_vec();
        // Random bytes can only open if they forge the ICV.
        if let Ok(o) = sa.open(&mut pkt) {
            panic!("forged packet opened: seq {}", o.seq);
        }
        return;
    }
    // Sealed-then-mutated mode. The first up to 256 bytes are the inner packet, the remaining
    // bytes are (position, xor) pairs.
    let split = rest.len().min(usize::from(*sel) + 1);
    let (inner, flips) = rest.split_at(split);
    let p = params(*sel, 0x1000, 0);
    let mut out = OutboundSa::new(&p).expect("valid params");
    let mut inb = InboundSa::new(&p).expect("valid params");
    let mut buf = vec![0u8; out.sealed_len(inner.len())];
    let n = out.seal(inner, 4, &mut buf).expect("buffer sized by sealed_len");
    assert_eq!(n, buf.len());
    let original = buf.clone();
    for pair in flips.chunks_exact(2) {
        let at = usize::from(pair[0]) % n;
        buf[at] ^= pair[1];
    }
    let untouched = buf == original;
    match inb.open(&mut buf) {
        Ok(o) => {
            assert!(untouched, "mutated packet opened");
            assert_eq!(o.inner, inner);
            assert_eq!(o.next_header, 4);
        }
        Err(e) => {
            assert!(!untouched, "genuine packet rejected: {e}");
            assert!(!matches!(e, EspError::BadPadding), "mutation passed the ICV");
        }
    }
});
