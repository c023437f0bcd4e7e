//! Remote-access sessions across a daemon restart (issue 5): the engine's session snapshot
//! (user, groups, leased address, age, reconnect-grace state, the cookie's HMAC tag and the
//! HMAC key) in `<state-dir>/ra-sessions.json`, written like the connection table's snapshot
//! (temporary file, then rename; mode 0600). After a SIGKILL and a restart, openconnect's own
//! reconnect (it repeats CONNECT with its cookie when the TLS connection dies) finds its session,
//! gets the same address and its flows continue.
//!
//! What the file cannot do: let its reader log in. It holds no byte of any cookie: a cookie is
//! 32 random bytes and the file has HMAC-SHA256(key, cookie), from which no cookie can be
//! derived (finding one is a 2^256 search). The session lookup key is a prefix of that tag,
//! not of the cookie (anyconnect `Server`).

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// File name inside the state directory.
pub const SESSIONS_FILE: &str = "ra-sessions.json";

/// Written no more often than this while sessions change.
pub const SAVE_MIN_INTERVAL: Duration = Duration::from_millis(500);
/// Written at least this often while sessions exist (byte counters, ages).
pub const SAVE_MAX_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Serialize, Deserialize)]
struct SessionsFileV1 {
    version: u32,
    saved_unix_ms: u64,
    sessions: anyconnect::Snapshot,
}

const VERSION: u32 = 1;

/// The sessions file of a state directory.
#[derive(Debug, Clone)]
pub struct SessionsFile {
    dir: PathBuf,
}

impl SessionsFile {
    /// Creates the directory if missing (mode 0700, like the connection table's).
    pub fn open(dir: &Path) -> io::Result<SessionsFile> {
        if !dir.is_dir() {
            std::fs::create_dir_all(dir)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(SessionsFile { dir: dir.to_path_buf() })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(SESSIONS_FILE)
    }

    /// Serializes a snapshot (call outside the engine lock: JSON of many sessions takes a
    /// moment).
    pub fn encode(snap: anyconnect::Snapshot, saved_unix_ms: u64) -> io::Result<Vec<u8>> {
        serde_json::to_vec(&SessionsFileV1 { version: VERSION, saved_unix_ms, sessions: snap }).map_err(io::Error::other)
    }

    /// Writes an encoded snapshot: temporary file (0600) first, renamed over the old one, so a
    /// crash leaves the previous file or the new one, never half of one.
    pub fn write(&self, body: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!("{SESSIONS_FILE}.tmp"));
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            use std::os::unix::fs::PermissionsExt;
            // An existing temporary file keeps its old mode under `mode()`: set it again.
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(body)?;
        }
        std::fs::rename(&tmp, self.path())
    }

    /// The saved sessions, aged by the wall-clock time since they were saved; `Ok(None)` when
    /// there is no file. A clock that went backwards counts as no downtime.
    pub fn load(&self, now_unix_ms: u64) -> Result<Option<(anyconnect::Snapshot, Duration)>, String> {
        let path = self.path();
        let body = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let f: SessionsFileV1 = serde_json::from_slice(&body).map_err(|e| format!("{}: {e}", path.display()))?;
        if f.version != VERSION {
            return Err(format!("{}: unsupported version {}", path.display(), f.version));
        }
        let down = Duration::from_millis(now_unix_ms.saturating_sub(f.saved_unix_ms));
        Ok(Some((f.sessions.aged(down), down)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_mode_and_corruption() {
        let dir = std::env::temp_dir().join(format!("hf-ra-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let f = SessionsFile::open(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(f.load(0).unwrap().is_none());
        let snap = anyconnect::Snapshot { cookie_key: [7; 32], next_index: 5, sessions: Vec::new() };
        f.write(&SessionsFile::encode(snap, 10_000).unwrap()).unwrap();
        assert_eq!(std::fs::metadata(f.path()).unwrap().permissions().mode() & 0o777, 0o600);
        let (back, down) = f.load(12_000).unwrap().unwrap();
        assert_eq!((back.next_index, down), (5, Duration::from_secs(2)));
        // Clock went backwards: no downtime.
        assert_eq!(f.load(1_000).unwrap().unwrap().1, Duration::ZERO);
        std::fs::write(f.path(), b"{\"version\":1").unwrap();
        assert!(f.load(0).unwrap_err().contains(SESSIONS_FILE));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
