#![allow(clippy::disallowed_methods)] // wall-clock measurement is the point of this tool
//! Deterministic TCP transfer for the lab.
//!
//! ```text
//! lab-xfer recv --listen ADDR:PORT [--idle-timeout SECS]
//! lab-xfer send --connect ADDR:PORT --bytes N [--seed S] [--rate-mbit R]
//! ```
//!
//! The sender streams N bytes of a seeded pseudo-random sequence (so a lost, duplicated or
//! reordered byte changes the digest) and prints `sent bytes=.. sha256=.. secs=.. mbit=..`. The
//! receiver accepts one connection, reads to EOF and prints `recv bytes=.. sha256=.. secs=..
//! mbit=.. max_stall_ms=..`, where the stall is the longest gap between two consecutive reads
//! that returned data — a rekey that drops packets shows up there as a TCP retransmission wait.

use ring::digest::{Context, SHA256};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const CHUNK: usize = 64 * 1024;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("recv") => recv(&args[1..]),
        Some("send") => send(&args[1..]),
        _ => Err("usage: lab-xfer recv --listen ADDR:PORT | send --connect ADDR:PORT --bytes N [--seed S] [--rate-mbit R]".into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab-xfer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn parse<T: std::str::FromStr>(args: &[String], name: &str) -> Result<Option<T>, String> {
    opt(args, name).map(|v| v.parse::<T>().map_err(|_| format!("bad value for {name}: {v}"))).transpose()
}

fn recv(args: &[String]) -> Result<(), String> {
    let listen: SocketAddr = parse(args, "--listen")?.ok_or("--listen is required")?;
    let idle = Duration::from_secs(parse(args, "--idle-timeout")?.unwrap_or(30));
    let l = TcpListener::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    println!("listening {listen}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let (mut s, peer) = l.accept().map_err(|e| format!("accept: {e}"))?;
    s.set_read_timeout(Some(idle)).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; CHUNK];
    let mut ctx = Context::new(&SHA256);
    let mut total: u64 = 0;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut max_stall = Duration::ZERO;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read after {total} bytes from {peer}: {e}")),
        };
        let now = Instant::now();
        if first.is_some() {
            max_stall = max_stall.max(now - last);
        } else {
            first = Some(now);
        }
        last = now;
        ctx.update(&buf[..n]);
        total += n as u64;
    }
    let secs = first.map(|f| (last - f).as_secs_f64()).unwrap_or(0.0);
    println!(
        "recv bytes={total} sha256={} secs={secs:.3} mbit={:.1} max_stall_ms={:.1}",
        hex(ctx.finish().as_ref()),
        mbit(total, secs),
        max_stall.as_secs_f64() * 1000.0
    );
    Ok(())
}

fn send(args: &[String]) -> Result<(), String> {
    let to: SocketAddr = parse(args, "--connect")?.ok_or("--connect is required")?;
    let bytes: u64 = parse(args, "--bytes")?.ok_or("--bytes is required")?;
    let seed: u64 = parse(args, "--seed")?.unwrap_or(1);
    let rate: Option<f64> = parse(args, "--rate-mbit")?;
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10)).map_err(|e| format!("connect {to}: {e}"))?;
    s.set_write_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    let mut gen = Stream::new(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut ctx = Context::new(&SHA256);
    let start = Instant::now();
    let mut sent: u64 = 0;
    while sent < bytes {
        let n = (bytes - sent).min(CHUNK as u64) as usize;
        gen.fill(&mut buf[..n]);
        ctx.update(&buf[..n]);
        s.write_all(&buf[..n]).map_err(|e| format!("write after {sent} bytes: {e}"))?;
        sent += n as u64;
        if let Some(r) = rate {
            // Pace to the average rate so a transfer spans a chosen time (e.g. a rekey).
            let due = Duration::from_secs_f64(sent as f64 * 8.0 / (r * 1e6));
            if let Some(ahead) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
    }
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    // Wait for the receiver to close: then every byte has been acknowledged and read.
    s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    let mut sink = [0u8; 64];
    while s.read(&mut sink).map_err(|e| format!("waiting for receiver close: {e}"))? > 0 {}
    let secs = start.elapsed().as_secs_f64();
    println!("sent bytes={sent} sha256={} secs={secs:.3} mbit={:.1}", hex(ctx.finish().as_ref()), mbit(sent, secs));
    Ok(())
}

fn mbit(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 * 8.0 / secs / 1e6
    } else {
        0.0
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// xorshift64* — not cryptographic, only a reproducible byte stream that does not compress and
/// that nobody could mistake for a constant pattern.
struct Stream(u64);

impl Stream {
    fn new(seed: u64) -> Self {
        Stream(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn fill(&mut self, out: &mut [u8]) {
        for c in out.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}
