//! Local-user password hashes for remote-access login (`username NAME password ...`).
//!
//! A password is stored only as a salted PBKDF2-HMAC-SHA256 hash (RFC 8018 §5.2, via
//! `ring::pbkdf2`) in a self-describing text form that the configuration keeps and prints:
//!
//! ```text
//! $pbkdf2-sha256$<iterations>$<salt, base64>$<hash, base64>
//! ```
//!
//! base64 is the standard alphabet (RFC 4648 §4) without `=` padding, so the string is one
//! whitespace-free configuration token. [`hash`] picks a random 16-byte salt and
//! [`DEFAULT_ITERATIONS`]; [`PasswordHash::verify`] compares in constant time (`ring` does the
//! comparison). Nothing here keeps or logs the plaintext.

use crate::Random;
use std::fmt;
use std::num::NonZeroU32;

/// Iterations for new hashes: OWASP's 2023 figure for PBKDF2-HMAC-SHA256 is 600 000; holdfast
/// uses 210 000 so that a configuration with dozens of clear-text users still loads in well
/// under a second, which stays far above the 100 000 floor this module enforces.
pub const DEFAULT_ITERATIONS: u32 = 210_000;
/// Fewest iterations a hash string may declare; weaker stored hashes are refused.
pub const MIN_ITERATIONS: u32 = 100_000;
/// Most iterations a hash string may declare: an attacker-supplied configuration must not make
/// every login burn minutes of CPU.
pub const MAX_ITERATIONS: u32 = 10_000_000;
/// Salt length for new hashes.
pub const SALT_LEN: usize = 16;
/// Output length: the SHA-256 block output, so the derived key is one PBKDF2 block.
pub const HASH_LEN: usize = 32;
/// Prefix of the textual form.
pub const PREFIX: &str = "$pbkdf2-sha256$";

/// Why a hash string was refused. Nothing in it repeats the string's secret parts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordHashError {
    #[error("not a holdfast password hash (expected `$pbkdf2-sha256$ITERATIONS$SALT$HASH`)")]
    UnknownFormat,
    #[error("password hash has {0} `$`-separated fields, expected 4 after the leading `$`")]
    FieldCount(usize),
    #[error("password hash iteration count `{0}` is not a number")]
    BadIterations(String),
    #[error("password hash iteration count {got} is out of range ({MIN_ITERATIONS} to {MAX_ITERATIONS})")]
    IterationsOutOfRange { got: u64 },
    #[error("the {field} field of the password hash is not valid base64 (standard alphabet, no padding)")]
    BadBase64 { field: &'static str },
    #[error("password hash salt is {got} bytes, expected 8 to 64")]
    SaltLength { got: usize },
    #[error("password hash is {got} bytes, expected {HASH_LEN}")]
    HashLength { got: usize },
}

/// A parsed `$pbkdf2-sha256$...` hash. `Debug` shows the iteration count only.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: [u8; HASH_LEN],
}

/// Hashes `password` with a fresh random salt and [`DEFAULT_ITERATIONS`].
pub fn hash(password: &str, rng: &mut dyn Random) -> PasswordHash {
    hash_with(password, rng, DEFAULT_ITERATIONS)
}

/// Hashes with an explicit iteration count, clamped to [`MIN_ITERATIONS`]..=[`MAX_ITERATIONS`]
/// (so a test asking for 1000 still gets a hash that [`PasswordHash::parse`] accepts).
pub fn hash_with(password: &str, rng: &mut dyn Random, iterations: u32) -> PasswordHash {
    let iterations = iterations.clamp(MIN_ITERATIONS, MAX_ITERATIONS);
    let iterations = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    let mut salt = vec![0u8; SALT_LEN];
    rng.fill(&mut salt);
    let mut out = [0u8; HASH_LEN];
    ring::pbkdf2::derive(ring::pbkdf2::PBKDF2_HMAC_SHA256, iterations, &salt, password.as_bytes(), &mut out);
    PasswordHash { iterations, salt, hash: out }
}

/// Parses `encoded` and checks `password` against it (constant-time comparison).
/// A malformed hash is an error, never a silent mismatch.
pub fn verify(encoded: &str, password: &str) -> Result<bool, PasswordHashError> {
    Ok(PasswordHash::parse(encoded)?.verify(password))
}

/// Like [`verify`] for a password received as bytes (a login form need not be UTF-8; the
/// bytes are hashed as they are, so a UTF-8 password matches its own `&str` form).
pub fn verify_bytes(encoded: &str, password: &[u8]) -> Result<bool, PasswordHashError> {
    Ok(PasswordHash::parse(encoded)?.verify_bytes(password))
}

impl PasswordHash {
    /// Parses the textual form. Every field is checked, so a hash that parses is one that
    /// [`PasswordHash::verify`] can use.
    pub fn parse(s: &str) -> Result<Self, PasswordHashError> {
        let Some(rest) = s.strip_prefix(PREFIX) else { return Err(PasswordHashError::UnknownFormat) };
        let fields: Vec<&str> = rest.split('$').collect();
        if fields.len() != 3 {
            return Err(PasswordHashError::FieldCount(fields.len() + 1));
        }
        let it = fields[0];
        if it.is_empty() || !it.bytes().all(|b| b.is_ascii_digit()) || it.len() > 12 {
            return Err(PasswordHashError::BadIterations(it.chars().take(16).collect()));
        }
        let n: u64 = it.parse().map_err(|_| PasswordHashError::BadIterations(it.chars().take(16).collect()))?;
        if n < u64::from(MIN_ITERATIONS) || n > u64::from(MAX_ITERATIONS) {
            return Err(PasswordHashError::IterationsOutOfRange { got: n });
        }
        let iterations = u32::try_from(n).ok().and_then(NonZeroU32::new).ok_or(PasswordHashError::IterationsOutOfRange { got: n })?;
        let salt = b64_decode(fields[1]).ok_or(PasswordHashError::BadBase64 { field: "salt" })?;
        if !(8..=64).contains(&salt.len()) {
            return Err(PasswordHashError::SaltLength { got: salt.len() });
        }
        let h = b64_decode(fields[2]).ok_or(PasswordHashError::BadBase64 { field: "hash" })?;
        let hash: [u8; HASH_LEN] = h.as_slice().try_into().map_err(|_| PasswordHashError::HashLength { got: h.len() })?;
        Ok(PasswordHash { iterations, salt, hash })
    }

    /// True when `password` is the one this hash was made from. `ring::pbkdf2::verify`
    /// compares the derived key in constant time.
    pub fn verify(&self, password: &str) -> bool {
        self.verify_bytes(password.as_bytes())
    }

    /// [`PasswordHash::verify`] for raw bytes.
    pub fn verify_bytes(&self, password: &[u8]) -> bool {
        ring::pbkdf2::verify(ring::pbkdf2::PBKDF2_HMAC_SHA256, self.iterations, &self.salt, password, &self.hash).is_ok()
    }

    pub fn iterations(&self) -> u32 {
        self.iterations.get()
    }

    /// The textual form (`$pbkdf2-sha256$...`).
    pub fn encode(&self) -> String {
        format!("{PREFIX}{}${}${}", self.iterations, b64_encode(&self.salt), b64_encode(&self.hash))
    }
}

impl fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PasswordHash(pbkdf2-sha256, {} iterations, *****)", self.iterations)
    }
}

impl std::str::FromStr for PasswordHash {
    type Err = PasswordHashError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// RFC 4648 §4 base64 without padding.
fn b64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let idx = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(B64[idx as usize]));
        }
    }
    out
}

/// Decodes unpadded standard base64; `None` on any character outside the alphabet, a length
/// that no unpadded encoding has, or non-zero trailing bits (so each value has one encoding).
fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let vals: Vec<u32> = s
        .bytes()
        .map(|c| B64.iter().position(|x| *x == c).map(|p| p as u32))
        .collect::<Option<Vec<u32>>>()?;
    if vals.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(vals.len() * 3 / 4);
    for chunk in vals.chunks(4) {
        let mut n = 0u32;
        for (i, v) in chunk.iter().enumerate() {
            n |= v << (18 - 6 * i);
        }
        let bytes = chunk.len() - 1;
        // Bits below the last full byte must be zero in a canonical encoding.
        let used_bits = 8 * bytes;
        let total_bits = 6 * chunk.len();
        let spare = total_bits - used_bits;
        if spare > 0 && (n >> (24 - total_bits)) & ((1 << spare) - 1) != 0 {
            return None;
        }
        for i in 0..bytes {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{OsRandom, SeededRandom};

    #[test]
    fn right_password_verifies_wrong_one_does_not() {
        let h = hash("correct horse", &mut OsRandom::default());
        let s = h.encode();
        assert!(s.starts_with("$pbkdf2-sha256$210000$"), "{s}");
        assert!(verify(&s, "correct horse").unwrap());
        assert!(!verify(&s, "correct horsE").unwrap());
        assert!(!verify(&s, "").unwrap());
        assert!(!verify(&s, "correct horse ").unwrap());
        assert!(verify_bytes(&s, b"correct horse").unwrap());
        assert!(!verify_bytes(&s, b"correct horse\xff").unwrap());
        let parsed = PasswordHash::parse(&s).unwrap();
        assert_eq!(parsed, h);
        assert_eq!(parsed.encode(), s, "encoding is canonical");
    }

    #[test]
    fn salts_differ_so_equal_passwords_hash_differently() {
        let a = hash("same", &mut OsRandom::default()).encode();
        let b = hash("same", &mut OsRandom::default()).encode();
        assert_ne!(a, b);
        assert!(verify(&a, "same").unwrap() && verify(&b, "same").unwrap());
    }

    /// Independent check against a published vector: RFC 7914 §11,
    /// PBKDF2-HMAC-SHA256(P="Password", S="NaCl", c=80000, dkLen=64). The first 32 bytes of
    /// dk are the first PBKDF2 block, which is what a 32-byte hash holds. 80000 is below the
    /// accepted floor, so the value is built directly rather than parsed.
    #[test]
    fn rfc7914_vector_verifies() {
        let dk = hex::decode("4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56").unwrap();
        let h = PasswordHash { iterations: NonZeroU32::new(80_000).unwrap(), salt: b"NaCl".to_vec(), hash: dk.try_into().unwrap() };
        assert!(h.verify("Password"));
        assert!(!h.verify("Passwort"));
        // The textual form of the same hash is refused only for its low iteration count.
        assert_eq!(PasswordHash::parse(&h.encode()), Err(PasswordHashError::IterationsOutOfRange { got: 80_000 }));
    }

    #[test]
    fn iteration_count_is_clamped_to_what_parse_accepts() {
        let low = hash_with("pw", &mut SeededRandom::new(9), 1000);
        assert_eq!(low.iterations(), MIN_ITERATIONS);
        assert_eq!(PasswordHash::parse(&low.encode()).unwrap(), low);
        assert!(low.verify("pw"));
    }

    #[test]
    fn seeded_rng_gives_reproducible_hash() {
        let a = hash("x", &mut SeededRandom::new(7)).encode();
        let b = hash("x", &mut SeededRandom::new(7)).encode();
        assert_eq!(a, b);
    }

    #[test]
    fn malformed_strings_give_typed_errors() {
        let good = hash("pw", &mut SeededRandom::new(1)).encode();
        let fields: Vec<&str> = good.split('$').collect(); // "", "pbkdf2-sha256", iter, salt, hash
        let (salt, h) = (fields[3], fields[4]);
        let cases: Vec<(String, PasswordHashError)> = vec![
            ("plaintext".into(), PasswordHashError::UnknownFormat),
            ("$sha512$5000$abcd$efgh".into(), PasswordHashError::UnknownFormat),
            (format!("{PREFIX}210000${salt}"), PasswordHashError::FieldCount(3)),
            (format!("{PREFIX}210000${salt}${h}$x"), PasswordHashError::FieldCount(5)),
            (format!("{PREFIX}abc${salt}${h}"), PasswordHashError::BadIterations("abc".into())),
            (format!("{PREFIX}${salt}${h}"), PasswordHashError::BadIterations(String::new())),
            (format!("{PREFIX}1000${salt}${h}"), PasswordHashError::IterationsOutOfRange { got: 1000 }),
            (format!("{PREFIX}99999999999${salt}${h}"), PasswordHashError::IterationsOutOfRange { got: 99_999_999_999 }),
            (format!("{PREFIX}210000$!!!!${h}"), PasswordHashError::BadBase64 { field: "salt" }),
            (format!("{PREFIX}210000${salt}$a"), PasswordHashError::BadBase64 { field: "hash" }),
            (format!("{PREFIX}210000$AAAA${h}"), PasswordHashError::SaltLength { got: 3 }),
            (format!("{PREFIX}210000${salt}$AAAA"), PasswordHashError::HashLength { got: 3 }),
        ];
        for (s, want) in cases {
            assert_eq!(PasswordHash::parse(&s), Err(want.clone()), "{s}");
            assert_eq!(verify(&s, "pw"), Err(want), "{s}");
        }
    }

    #[test]
    fn debug_does_not_show_salt_or_hash() {
        let h = hash("pw", &mut SeededRandom::new(3));
        let d = format!("{h:?}");
        let enc = h.encode();
        let hash_part = enc.rsplit('$').next().unwrap();
        assert!(!d.contains(hash_part), "{d}");
        assert!(d.contains("210000"));
    }

    #[test]
    fn base64_round_trips_and_is_canonical() {
        for len in 0..40usize {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let e = b64_encode(&data);
            assert!(!e.contains('='));
            assert_eq!(b64_decode(&e).as_deref(), Some(data.as_slice()), "len {len}");
        }
        assert_eq!(b64_encode(b"foobar"), "Zm9vYmFy"); // RFC 4648 §10
        assert_eq!(b64_encode(b"fo"), "Zm8");
        assert_eq!(b64_decode("Zm9"), None, "non-zero trailing bits");
        assert_eq!(b64_decode("Zm8="), None, "padding is not part of the form");
        assert_eq!(b64_decode("Z"), None);
    }
}
