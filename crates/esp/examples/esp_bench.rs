//! Quick single-core ESP throughput check (not a criterion benchmark): seals and opens
//! 1400-byte inner packets with AES-256-GCM and AES-256-CBC + HMAC-SHA-256-128 and prints
//! Gbit/s of inner traffic.
//!
//!     cargo run --release -p holdfast-esp --example esp_bench [seconds-per-case]
//!
//! "seal+open" is the rate at which one core can both encrypt and decrypt each packet, i.e.
//! the per-core budget when one thread does both directions of a tunnel.

// Examples measure wall time themselves; the engines never read the clock.
#![allow(clippy::disallowed_methods)]

use esp::{InboundSa, OutboundSa, SaParams};
use policy::{Encryption, Integrity};
use std::hint::black_box;
use std::time::{Duration, Instant};

const INNER: usize = 1400;

fn params(encryption: Encryption, integrity: Integrity) -> SaParams {
    let klen = usize::from(encryption.key_bits() / 8) + if encryption.is_aead() { 4 } else { 0 };
    let ilen = if integrity == Integrity::Null { 0 } else { 32 };
    SaParams {
        spi: 0x1234_5678,
        encryption,
        integrity,
        enc_key: (0..klen as u8).map(|x| x.wrapping_mul(29)).collect(),
        integ_key: (0..ilen as u8).map(|x| x.wrapping_mul(31)).collect(),
        esn: false,
    }
}

fn gbps(packets: u64, elapsed: Duration) -> f64 {
    (packets as f64 * INNER as f64 * 8.0) / elapsed.as_secs_f64() / 1e9
}

fn run(name: &str, enc: Encryption, integ: Integrity, secs: f64) {
    let p = params(enc, integ);
    let mut out = OutboundSa::new(&p).expect("params");
    let mut inb = InboundSa::new(&p).expect("params");
    let inner: Vec<u8> = (0..INNER).map(|i| i as u8).collect();
    let mut buf = vec![0u8; out.sealed_len(INNER)];
    let budget = Duration::from_secs_f64(secs);

    // seal only
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..256 {
            black_box(out.seal(black_box(&inner), 4, &mut buf).expect("seal"));
        }
        n += 256;
    }
    let seal = gbps(n, start.elapsed());

    // seal + open (each packet sealed then opened on the same core)
    let start = Instant::now();
    let mut m = 0u64;
    while start.elapsed() < budget {
        for _ in 0..256 {
            let len = out.seal(black_box(&inner), 4, &mut buf).expect("seal");
            let o = inb.open(&mut buf[..len]).expect("open");
            black_box(o.inner.len());
        }
        m += 256;
    }
    let both = gbps(m, start.elapsed());
    // open-only rate follows from the two: t_open = t_both - t_seal per packet
    let open = 1.0 / (1.0 / both - 1.0 / seal);
    println!(
        "{name:<24} seal {seal:6.2} Gbit/s   open {open:6.2} Gbit/s   seal+open {both:6.2} Gbit/s   ({} B on the wire per {INNER} B packet)",
        out.sealed_len(INNER)
    );
}

fn main() {
    let secs: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    println!("ESP single-core throughput, {INNER}-byte inner packets, {secs} s per measurement");
    run("AES-256-GCM-16", Encryption::AesGcm256, Integrity::Null, secs);
    run("AES-256-CBC/SHA-256-128", Encryption::AesCbc256, Integrity::Sha256, secs);
    run("AES-128-GCM-16", Encryption::AesGcm128, Integrity::Null, secs);
}
