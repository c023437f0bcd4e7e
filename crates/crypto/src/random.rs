//! Randomness as a trait so engines can run under a seeded, replayable simulation.

/// A source of random bytes. Engines take `Box<dyn Random>` and never reach for a global RNG,
/// so a simulation can substitute [`SeededRandom`].
pub trait Random: Send {
    fn fill(&mut self, buf: &mut [u8]);
}

/// The operating system's CSPRNG (`getrandom`), through `ring::rand::SystemRandom`.
#[derive(Debug, Clone)]
pub struct OsRandom {
    inner: ring::rand::SystemRandom,
}

impl OsRandom {
    pub fn new() -> Self {
        Self { inner: ring::rand::SystemRandom::new() }
    }
}

impl Default for OsRandom {
    fn default() -> Self {
        Self::new()
    }
}

impl Random for OsRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        use ring::rand::SecureRandom;
        if self.inner.fill(buf).is_ok() {
            return;
        }
        // getrandom failing is an OS fault, not something a peer can cause. Try OpenSSL's DRBG
        // before giving up, because continuing with predictable bytes would be far worse.
        if openssl::rand::rand_bytes(buf).is_err() {
            panic!("no operating-system randomness available");
        }
    }
}

/// Deterministic generator for tests and the simulator. **Not secure**: its output is a
/// function of the 64-bit seed (SplitMix64), so it must never key real traffic.
#[derive(Debug, Clone)]
pub struct SeededRandom {
    state: u64,
}

impl SeededRandom {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        // SplitMix64 (Steele, Lea, Flood 2014): a statistically good, trivially seedable
        // sequence; chosen for reproducibility, not secrecy.
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Random for SeededRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_is_reproducible_and_seed_dependent() {
        let (mut a, mut b, mut c) = (SeededRandom::new(7), SeededRandom::new(7), SeededRandom::new(8));
        let (mut x, mut y, mut z) = ([0u8; 37], [0u8; 37], [0u8; 37]);
        a.fill(&mut x);
        b.fill(&mut y);
        c.fill(&mut z);
        assert_eq!(x, y);
        assert_ne!(x, z);
        assert_ne!(x, [0u8; 37]);
    }

    #[test]
    fn os_random_fills() {
        let mut r = OsRandom::default();
        let (mut x, mut y) = ([0u8; 32], [0u8; 32]);
        r.fill(&mut x);
        r.fill(&mut y);
        // 2^-256 chance of a false failure.
        assert_ne!(x, y);
    }
}
