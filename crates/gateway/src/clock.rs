//! The daemon's only clock. Engines are sans-IO and receive time as a parameter; keeping every
//! read of the wall and monotonic clocks in this file makes that rule easy to audit (and lets a
//! simulation swap the whole thing out).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Monotonic time for engine calls, timers, lifetimes and rate limits.
#[allow(clippy::disallowed_methods)] // the one sanctioned read of the monotonic clock
pub fn now() -> Instant {
    Instant::now()
}

/// The wall clock, for certificate validity checks (handed to the IKE engine with the
/// monotonic instant it was read at).
#[allow(clippy::disallowed_methods)] // the one sanctioned read of the wall clock
pub fn wall_now() -> SystemTime {
    SystemTime::now()
}

/// Seconds since the Unix epoch, for syslog timestamps.
#[allow(clippy::disallowed_methods)] // the one sanctioned read of the wall clock
pub fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Formats Unix seconds the way ASA syslog timestamps look: `Nov 23 2026 07:03:54` (UTC).
pub fn asa_timestamp(unix: u64) -> String {
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{} {:02} {} {:02}:{:02}:{:02}",
        MONTHS[(m - 1) as usize],
        d,
        y,
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// The ASA's `Last clearing:` time: `10:43:33 UTC Nov 23 2026`.
pub fn asa_clearing_time(unix: u64) -> String {
    // asa_timestamp is `Mon DD YYYY HH:MM:SS`.
    let t = asa_timestamp(unix);
    match t.rsplit_once(' ') {
        Some((date, time)) => format!("{time} UTC {date}"),
        None => t,
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month 1..=12, day 1..=31), using the
/// era-based algorithm (400-year cycles of 146097 days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(asa_timestamp(0), "Jan 01 1970 00:00:00");
        // 2026-11-23T07:03:54Z
        assert_eq!(asa_timestamp(1_795_417_434), "Nov 23 2026 07:03:54");
        // Leap day 2024-02-29T23:59:59Z
        assert_eq!(asa_timestamp(1_709_251_199), "Feb 29 2024 23:59:59");
        assert_eq!(asa_clearing_time(1_795_417_434), "07:03:54 UTC Nov 23 2026");
    }
}
