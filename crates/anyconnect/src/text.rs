//! Operator text: ASA syslog lines for remote-access sessions and `show vpn-sessiondb
//! anyconnect`.
//!
//! Message shapes: 113019, 602101 and 722036 as quoted in asa.md §2/§6 (602101 also matches the
//! Cisco ASA syslog guide, "Syslog Messages 602101 to 622102"); the 722xxx/716xxx/113012/113015
//! shapes follow the Cisco ASA syslog guide's message definitions ("Messages 722001 to 722056",
//! 716001-716002, 113012, 113015) with the `<value>` brackets real ASAs print around the
//! group/user/IP fields (as in asa.md's 722036 example).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{Channel, SessionId};

/// One syslog message: `%ASA-<severity>-<id>: <text>` (same fields as the daemon's
/// `gateway::syslog::Message`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyslogLine {
    pub severity: u8,
    pub id: u32,
    pub text: String,
}

impl SyslogLine {
    /// `%ASA-6-722036: ...`
    pub fn asa(&self) -> String {
        format!("%ASA-{}-{}: {}", self.severity, self.id, self.text)
    }
}

/// Why a session ended (the 113019 `Reason:` text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DisconnectReason {
    /// The client logged out (DISCONNECT 0xb0, or any DISCONNECT without reconnect).
    UserRequested,
    /// `vpn-sessiondb logoff`.
    AdministratorReset,
    /// vpn-idle-timeout, or the reconnect grace ran out without the client returning.
    IdleTimeout,
    /// vpn-session-timeout.
    MaxTimeExceeded,
    /// The gateway is shutting down (TERMINATE sent).
    AdministratorReboot,
}

impl DisconnectReason {
    pub fn text(self) -> &'static str {
        match self {
            Self::UserRequested => "User Requested",
            Self::AdministratorReset => "Administrator Reset",
            Self::IdleTimeout => "Idle Timeout",
            Self::MaxTimeExceeded => "Max time exceeded",
            Self::AdministratorReboot => "Administrator Reboot",
        }
    }
}

/// ASA duration text `0h:05m:12s` (113019 and `show vpn-sessiondb`).
pub fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}h:{:02}m:{:02}s", s / 3600, (s / 60) % 60, s % 60)
}

/// Who a 722xxx line is about.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub group_policy: &'a str,
    pub user: &'a str,
    pub peer: std::net::IpAddr,
}

impl Who<'_> {
    fn prefix(&self) -> String {
        format!(
            "Group <{}> User <{}> IP <{}>",
            self.group_policy, self.user, self.peer
        )
    }
}

fn proto(ch: Channel) -> &'static str {
    match ch {
        Channel::Tls => "TCP",
        Channel::Dtls => "UDP",
    }
}

/// Syslog line builders.
pub mod syslog {
    use super::*;

    fn line(severity: u8, id: u32, text: String) -> SyslogLine {
        SyslogLine { severity, id, text }
    }

    /// 113012: local-database authentication success.
    pub fn auth_ok_113012(user: &str) -> SyslogLine {
        line(
            6,
            113012,
            format!("AAA user authentication Successful : local database : user = {user}"),
        )
    }

    /// 113015: local-database authentication rejected.
    pub fn auth_rejected_113015(user: &str, reason: &str, peer: std::net::IpAddr) -> SyslogLine {
        line(
            6,
            113015,
            format!("AAA user authentication Rejected : reason = {reason} : local database : user = {user} : user IP = {peer}"),
        )
    }

    /// 716001: the (parent) session started at login.
    pub fn session_started_716001(w: Who<'_>) -> SyslogLine {
        line(6, 716001, format!("{} WebVPN session started.", w.prefix()))
    }

    /// 716002: the (parent) session ended.
    pub fn session_terminated_716002(w: Who<'_>, reason: DisconnectReason) -> SyslogLine {
        line(
            6,
            716002,
            format!(
                "{} WebVPN session terminated: {}.",
                w.prefix(),
                reason.text()
            ),
        )
    }

    /// 113039: the AnyConnect parent session started (at login, with 716001).
    pub fn parent_started_113039(w: Who<'_>) -> SyslogLine {
        line(
            6,
            113039,
            format!("{} AnyConnect parent session started.", w.prefix()),
        )
    }

    /// 716058: the session lost its TLS connection and waits for the client to resume.
    pub fn waiting_to_resume_716058(w: Who<'_>) -> SyslogLine {
        line(
            6,
            716058,
            format!(
                "{} AnyConnect session lost connection. Waiting to resume.",
                w.prefix()
            ),
        )
    }

    /// 716059: the client came back with the session cookie (from `from`).
    pub fn resumed_716059(w: Who<'_>, from: std::net::IpAddr) -> SyslogLine {
        line(
            6,
            716059,
            format!(
                "{} AnyConnect session resumed connection from IP <{from}>.",
                w.prefix()
            ),
        )
    }

    /// 722022: a channel came up.
    pub fn svc_established_722022(w: Who<'_>, ch: Channel) -> SyslogLine {
        line(
            6,
            722022,
            format!(
                "{} {} SVC connection established without compression",
                w.prefix(),
                proto(ch)
            ),
        )
    }

    /// 722023: a channel went down.
    pub fn svc_terminated_722023(w: Who<'_>, ch: Channel) -> SyslogLine {
        line(
            6,
            722023,
            format!(
                "{} {} SVC connection terminated without compression",
                w.prefix(),
                proto(ch)
            ),
        )
    }

    /// 722028: a connection we no longer use was closed (replaced by a reconnect).
    pub fn stale_722028(w: Who<'_>) -> SyslogLine {
        line(
            5,
            722028,
            format!("{} Stale SVC connection closed.", w.prefix()),
        )
    }

    /// 722032: a reconnect replaced a still-open connection.
    pub fn replacing_722032(w: Who<'_>, ch: Channel) -> SyslogLine {
        line(
            5,
            722032,
            format!(
                "{} New {} SVC connection replacing old connection.",
                w.prefix(),
                proto(ch)
            ),
        )
    }

    /// 722033: the session's first connection.
    pub fn first_722033(w: Who<'_>, ch: Channel) -> SyslogLine {
        line(
            5,
            722033,
            format!(
                "{} First {} SVC connection established for SVC session.",
                w.prefix(),
                proto(ch)
            ),
        )
    }

    /// 722034: a connection of an existing session after the previous one had gone.
    pub fn new_no_existing_722034(w: Who<'_>, ch: Channel) -> SyslogLine {
        line(
            5,
            722034,
            format!(
                "{} New {} SVC connection, no existing connection.",
                w.prefix(),
                proto(ch)
            ),
        )
    }

    /// 722036: a packet larger than the channel's threshold.
    pub fn large_packet_722036(w: Who<'_>, len: usize, threshold: u16) -> SyslogLine {
        line(
            6,
            722036,
            format!(
                "{} Transmitting large packet {len} (threshold {threshold}).",
                w.prefix()
            ),
        )
    }

    /// 716900 (holdfast): the group the client asked for in its URL (`https://gw/NAME`, the
    /// `<group-access>` of aggregate-auth, or the POST path) matches no tunnel-group name or
    /// group-alias, so the login continues in the default group, as the ASA puts such a
    /// client in DefaultWEBVPNGroup. The ASA does that silently: the Cisco syslog guide has no
    /// message for it, so the id is ours. It is in the webvpn class (716, where the guide puts
    /// the clientless/aggregate-auth session messages) and far above the 7166xx messages,
    /// the highest in that class we know of, so no filter or parser mistakes it for a Cisco
    /// message while filters on the webvpn class still see it. Severity 5 (notification): the
    /// login is not refused, but the user may be in another group than intended.
    pub fn url_group_unknown_716900(asked: &str, peer: std::net::IpAddr, group: &str) -> SyslogLine {
        line(
            5,
            716900,
            format!(
                "IP <{peer}> Group <{asked}> requested in the connection URL matches no tunnel-group or group-alias; using tunnel-group <{group}>."
            ),
        )
    }

    /// 722037: we are closing a connection, with the reason.
    pub fn closing_722037(w: Who<'_>, reason: &str) -> SyslogLine {
        line(
            4,
            722037,
            format!("{} SVC closing connection: {reason}.", w.prefix()),
        )
    }

    /// 722051: the address assigned to the session.
    pub fn address_722051(w: Who<'_>, addr: Ipv4Addr) -> SyslogLine {
        line(
            4,
            722051,
            format!(
                "{} IPv4 Address <{addr}> IPv6 address <::> assigned to session",
                w.prefix()
            ),
        )
    }

    /// 602101: ICMP fragmentation-needed sent for an oversize DF packet.
    pub fn pmtud_602101(
        len: usize,
        mtu: u16,
        dst: Ipv4Addr,
        src: Ipv4Addr,
        protocol: u8,
    ) -> SyslogLine {
        let p = match protocol {
            1 => "ICMP".to_string(),
            6 => "TCP".to_string(),
            17 => "UDP".to_string(),
            n => n.to_string(),
        };
        line(6, 602101, format!("PMTU-D packet {len} bytes greater than effective mtu {mtu}, dest_addr={dst}, src_addr={src}, prot={p}"))
    }

    /// 113019: the session ended.
    pub fn disconnected_113019(
        group_policy: &str,
        user: &str,
        peer: std::net::IpAddr,
        duration: Duration,
        tx: u64,
        rx: u64,
        reason: DisconnectReason,
    ) -> SyslogLine {
        line(
            4,
            113019,
            format!(
                "Group = {group_policy}, Username = {user}, IP = {peer}, Session disconnected. Session Type: SSL, Duration: {}, Bytes xmt: {tx}, Bytes rcv: {rx}, Reason: {}",
                hms(duration),
                reason.text()
            ),
        )
    }
}

/// One session as `show vpn-sessiondb anyconnect` and the control socket see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub index: SessionId,
    pub username: String,
    pub assigned_ip: Ipv4Addr,
    pub public_ip: SocketAddr,
    pub tunnel_group: String,
    pub group_policy: String,
    /// TLS connected now.
    pub tls_up: bool,
    /// DTLS connected now.
    pub dtls_up: bool,
    /// Channel used for server->client traffic now.
    pub tx_channel: Option<Channel>,
    /// (encryption, hashing) names of the TLS cipher, e.g. ("AES-GCM-256", "SHA384").
    pub tls_cipher: (String, String),
    pub dtls_cipher: Option<(String, String)>,
    /// Bytes to the client / from the client (IP packet bytes).
    pub bytes_tx: u64,
    pub bytes_rx: u64,
    pub duration: Duration,
    /// How long the session has had no connection (0 while connected).
    pub inactivity: Duration,
    pub mtu_tls: u16,
    pub mtu_dtls: Option<u16>,
    pub mtu_advertised: u16,
    pub reconnects: u32,
    pub fallbacks: u32,
}

/// `show vpn-sessiondb` names of an OpenSSL TLS cipher: ("AES-GCM-256", "SHA384").
pub fn show_cipher_names(openssl: &str) -> (String, String) {
    let n = openssl.to_ascii_uppercase();
    let enc = if n.contains("CHACHA20") {
        "CHACHA20-POLY1305"
    } else if n.contains("AES_256_GCM") || n.contains("AES256-GCM") {
        "AES-GCM-256"
    } else if n.contains("AES_128_GCM") || n.contains("AES128-GCM") {
        "AES-GCM-128"
    } else if n.contains("AES256") {
        "AES256"
    } else if n.contains("AES128") {
        "AES128"
    } else if n.contains("DES-CBC3") {
        "3DES"
    } else if n.contains("RC4") {
        "RC4"
    } else {
        "unknown"
    };
    let hash = if n.ends_with("SHA384") {
        "SHA384"
    } else if n.ends_with("SHA256") {
        "SHA256"
    } else if n.ends_with("SHA") {
        "SHA1"
    } else if n.contains("CHACHA20") {
        "SHA256"
    } else {
        "unknown"
    };
    (enc.to_string(), hash.to_string())
}

/// `show vpn-sessiondb anyconnect` in the ASA layout. `wall_now` (from the daemon) turns
/// durations into the Login Time column.
pub fn show_vpn_sessiondb_anyconnect(sessions: &[SessionInfo], wall_now: SystemTime) -> String {
    let mut out = String::from("\nSession Type: AnyConnect\n\n");
    if sessions.is_empty() {
        out.push_str("INFO: There are presently no active sessions\n");
        return out;
    }
    for s in sessions {
        let two =
            |l1: &str, v1: &str, l2: &str, v2: &str| format!("{l1:<13}: {v1:<23}{l2:<13}: {v2}\n");
        let one = |l: &str, v: &str| format!("{l:<13}: {v}\n");
        out += &two("Username", &s.username, "Index", &s.index.0.to_string());
        out += &two(
            "Assigned IP",
            &s.assigned_ip.to_string(),
            "Public IP",
            &s.public_ip.ip().to_string(),
        );
        let mut proto = String::from("AnyConnect-Parent");
        let mut enc = String::from("AnyConnect-Parent: (1)none");
        let mut hash = String::from("AnyConnect-Parent: (1)none");
        if s.tls_up {
            proto += " SSL-Tunnel";
            enc += &format!("  SSL-Tunnel: (1){}", s.tls_cipher.0);
            hash += &format!("  SSL-Tunnel: (1){}", s.tls_cipher.1);
        }
        if let (true, Some((e, h))) = (s.dtls_up, &s.dtls_cipher) {
            proto += " DTLS-Tunnel";
            enc += &format!("  DTLS-Tunnel: (1){e}");
            hash += &format!("  DTLS-Tunnel: (1){h}");
        }
        out += &one("Protocol", &proto);
        out += &one("License", "AnyConnect Premium");
        out += &one("Encryption", &enc);
        out += &one("Hashing", &hash);
        out += &two(
            "Bytes Tx",
            &s.bytes_tx.to_string(),
            "Bytes Rx",
            &s.bytes_rx.to_string(),
        );
        out += &two(
            "Group Policy",
            &s.group_policy,
            "Tunnel Group",
            &s.tunnel_group,
        );
        let login = wall_now.checked_sub(s.duration).unwrap_or(UNIX_EPOCH);
        out += &one("Login Time", &asa_time(login));
        out += &one("Duration", &hms(s.duration));
        out += &one("Inactivity", &hms(s.inactivity));
        out += &two("VLAN Mapping", "N/A", "VLAN", "none");
        // The ASA's 24 hex digits: address, index, login time (UNIX seconds).
        let login_secs = login.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as u32;
        out += &one(
            "Audit Sess ID",
            &format!(
                "{:08x}{:08x}{login_secs:08x}",
                u32::from(s.assigned_ip),
                s.index.0
            ),
        );
        out += &one("Security Grp", "none");
        out.push('\n');
    }
    out
}

/// `HH:MM:SS UTC Www Mmm D YYYY` (the ASA's Login Time column), from a UNIX time.
pub fn asa_time(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86400) as i64;
    let tod = secs % 86400;
    let (y, m, d) = civil_from_days(days);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MO: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{:02}:{:02}:{:02} UTC {} {} {} {}",
        tod / 3600,
        (tod / 60) % 60,
        tod % 60,
        WD[(days.rem_euclid(7)) as usize],
        MO[(m - 1) as usize],
        d,
        y
    )
}

/// Days since 1970-01-01 -> (year, month 1-12, day 1-31) (H. Hinnant's civil calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::syslog::*;
    use super::*;

    fn who() -> Who<'static> {
        Who {
            group_policy: "ac_users_group",
            user: "vpn",
            peer: "10.1.75.111".parse().unwrap(),
        }
    }

    #[test]
    fn golden_asa_md_examples() {
        // asa.md §6, verbatim.
        assert_eq!(
            large_packet_722036(who(), 1418, 1347).asa(),
            "%ASA-6-722036: Group <ac_users_group> User <vpn> IP <10.1.75.111> Transmitting large packet 1418 (threshold 1347)."
        );
        assert_eq!(
            pmtud_602101(1418, 1347, "10.10.10.1".parse().unwrap(), "10.48.66.200".parse().unwrap(), 6).asa(),
            "%ASA-6-602101: PMTU-D packet 1418 bytes greater than effective mtu 1347, dest_addr=10.10.10.1, src_addr=10.48.66.200, prot=TCP"
        );
    }

    #[test]
    fn golden_session_lines() {
        let w = who();
        let got: Vec<String> = vec![
            svc_established_722022(w, Channel::Tls).asa(),
            svc_established_722022(w, Channel::Dtls).asa(),
            svc_terminated_722023(w, Channel::Dtls).asa(),
            stale_722028(w).asa(),
            replacing_722032(w, Channel::Tls).asa(),
            first_722033(w, Channel::Tls).asa(),
            new_no_existing_722034(w, Channel::Tls).asa(),
            closing_722037(w, "User Requested").asa(),
            address_722051(w, "10.99.0.100".parse().unwrap()).asa(),
            session_started_716001(w).asa(),
            parent_started_113039(w).asa(),
            waiting_to_resume_716058(w).asa(),
            resumed_716059(w, "198.51.100.7".parse().unwrap()).asa(),
            session_terminated_716002(w, DisconnectReason::IdleTimeout).asa(),
            auth_ok_113012("vpn").asa(),
            auth_rejected_113015("vpn", "Invalid password", w.peer).asa(),
            disconnected_113019(
                "ac_users_group",
                "vpn",
                w.peer,
                Duration::from_secs(617),
                19873,
                2847,
                DisconnectReason::UserRequested,
            )
            .asa(),
        ];
        let want = "\
%ASA-6-722022: Group <ac_users_group> User <vpn> IP <10.1.75.111> TCP SVC connection established without compression
%ASA-6-722022: Group <ac_users_group> User <vpn> IP <10.1.75.111> UDP SVC connection established without compression
%ASA-6-722023: Group <ac_users_group> User <vpn> IP <10.1.75.111> UDP SVC connection terminated without compression
%ASA-5-722028: Group <ac_users_group> User <vpn> IP <10.1.75.111> Stale SVC connection closed.
%ASA-5-722032: Group <ac_users_group> User <vpn> IP <10.1.75.111> New TCP SVC connection replacing old connection.
%ASA-5-722033: Group <ac_users_group> User <vpn> IP <10.1.75.111> First TCP SVC connection established for SVC session.
%ASA-5-722034: Group <ac_users_group> User <vpn> IP <10.1.75.111> New TCP SVC connection, no existing connection.
%ASA-4-722037: Group <ac_users_group> User <vpn> IP <10.1.75.111> SVC closing connection: User Requested.
%ASA-4-722051: Group <ac_users_group> User <vpn> IP <10.1.75.111> IPv4 Address <10.99.0.100> IPv6 address <::> assigned to session
%ASA-6-716001: Group <ac_users_group> User <vpn> IP <10.1.75.111> WebVPN session started.
%ASA-6-113039: Group <ac_users_group> User <vpn> IP <10.1.75.111> AnyConnect parent session started.
%ASA-6-716058: Group <ac_users_group> User <vpn> IP <10.1.75.111> AnyConnect session lost connection. Waiting to resume.
%ASA-6-716059: Group <ac_users_group> User <vpn> IP <10.1.75.111> AnyConnect session resumed connection from IP <198.51.100.7>.
%ASA-6-716002: Group <ac_users_group> User <vpn> IP <10.1.75.111> WebVPN session terminated: Idle Timeout.
%ASA-6-113012: AAA user authentication Successful : local database : user = vpn
%ASA-6-113015: AAA user authentication Rejected : reason = Invalid password : local database : user = vpn : user IP = 10.1.75.111
%ASA-4-113019: Group = ac_users_group, Username = vpn, IP = 10.1.75.111, Session disconnected. Session Type: SSL, Duration: 0h:10m:17s, Bytes xmt: 19873, Bytes rcv: 2847, Reason: User Requested";
        assert_eq!(got.join("\n"), want);
    }

    #[test]
    fn asa_time_known_dates() {
        assert_eq!(asa_time(UNIX_EPOCH), "00:00:00 UTC Thu Jan 1 1970");
        // 2026-11-23 11:08:03 UTC is a Monday.
        assert_eq!(
            asa_time(UNIX_EPOCH + Duration::from_secs(1_795_432_083)),
            "11:08:03 UTC Mon Nov 23 2026"
        );
        // 2024-02-29 (leap day) 23:59:59, a Thursday.
        assert_eq!(
            asa_time(UNIX_EPOCH + Duration::from_secs(1_709_251_199)),
            "23:59:59 UTC Thu Feb 29 2024"
        );
    }

    #[test]
    fn cipher_show_names() {
        assert_eq!(
            show_cipher_names("ECDHE-RSA-AES256-GCM-SHA384"),
            ("AES-GCM-256".into(), "SHA384".into())
        );
        assert_eq!(
            show_cipher_names("TLS_AES_128_GCM_SHA256"),
            ("AES-GCM-128".into(), "SHA256".into())
        );
        assert_eq!(
            show_cipher_names("AES256-SHA"),
            ("AES256".into(), "SHA1".into())
        );
    }
}
