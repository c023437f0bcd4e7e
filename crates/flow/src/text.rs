//! Operator text: `show conn [long|detail|count]`, `show asp drop`, and the syslog lines
//! 302013/302014/302015/302016/302020/302021 in the ASA's exact shapes (asa.md §2-3).
//!
//! Log pipelines parse these lines with the Logstash patterns (`CISCOFW302013_302014_302015_302016`,
//! `CISCOFW302020_302021`); the tests run every shape through those very patterns.

use std::fmt::Write as _;
use std::time::Duration;

use crate::{ConnInfo, ConnRecord, DropReason, Engine, Event, IfcId, Stats, TeardownReason};
use wire::ip::proto;

/// One syslog message before framing (same fields as the daemon's `syslog::Message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogLine {
    pub severity: u8,
    pub id: u32,
    pub text: String,
}

impl SyslogLine {
    /// `%ASA-6-302013: text`
    pub fn asa(&self) -> String {
        format!("%ASA-{}-{}: {}", self.severity, self.id, self.text)
    }
}

/// Which `show conn` variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnView {
    Brief,
    Long,
    Detail,
    Count,
}

impl Engine {
    /// The syslog line for an event (`None` for events the ASA does not log this way, e.g.
    /// GRE conns or reclassification).
    pub fn syslog(&self, ev: &Event) -> Option<SyslogLine> {
        syslog_line(ev, |i| self.interface_name(i))
    }

    /// `show conn [long|detail|count]`.
    pub fn show_conn(&self, now: std::time::Instant, view: ConnView) -> String {
        self.show_conn_address(now, view, None)
    }

    /// `show conn address IP [long|detail]`: only conns with an endpoint at `address` (the
    /// header still counts the whole table, as the ASA's does).
    pub fn show_conn_address(&self, now: std::time::Instant, view: ConnView, address: Option<std::net::Ipv4Addr>) -> String {
        let mut recs = self.conns(now);
        if let Some(a) = address {
            recs.retain(|r| r.info.outside.addr == a || r.info.inside.addr == a);
        }
        format_show_conn(&recs, self.stats(), view, |i| self.interface_name(i), |t| self.tunnel_name(t).to_string())
    }

    /// `show asp drop`.
    pub fn show_asp_drop(&self) -> String {
        format_asp_drop(self.stats(), self.asp_last_clearing())
    }
}

/// Builds the ASA syslog line for a Built/Teardown event.
pub fn syslog_line<'a>(ev: &Event, ifc: impl Fn(IfcId) -> &'a str) -> Option<SyslogLine> {
    match ev {
        Event::Built(c) => built(c, &ifc),
        Event::Teardown { conn, duration, bytes, reason } => teardown(conn, *duration, *bytes, *reason, &ifc),
        Event::Reclassified { .. } => None,
    }
}

fn direction(c: &ConnInfo) -> &'static str {
    if c.inbound {
        "inbound"
    } else {
        "outbound"
    }
}

fn built<'a>(c: &ConnInfo, ifc: &impl Fn(IfcId) -> &'a str) -> Option<SyslogLine> {
    let (o, i) = (&c.outside, &c.inside);
    let (id, name) = match c.protocol {
        proto::TCP => (302013, "TCP"),
        proto::UDP => (302015, "UDP"),
        proto::ICMP => {
            // 302020: faddr = outside host, gaddr = mapped inside (no NAT: the same), laddr = inside.
            let text = format!(
                "Built {} ICMP connection for faddr {}/{} gaddr {}/{} laddr {}/{} type {} code {}",
                direction(c),
                o.addr,
                o.port,
                i.addr,
                i.port,
                i.addr,
                i.port,
                c.icmp_type,
                c.icmp_code
            );
            return Some(SyslogLine { severity: 6, id: 302020, text });
        }
        _ => return None,
    };
    // The ASA names the outside (foreign) endpoint first whatever the direction, each with its
    // mapped address in parentheses (no NAT here: mapped = real).
    let text = format!(
        "Built {} {} connection {} for {}:{}/{} ({}/{}) to {}:{}/{} ({}/{})",
        direction(c),
        name,
        c.id,
        ifc(o.ifc),
        o.addr,
        o.port,
        o.addr,
        o.port,
        ifc(i.ifc),
        i.addr,
        i.port,
        i.addr,
        i.port
    );
    Some(SyslogLine { severity: 6, id, text })
}

fn teardown<'a>(
    c: &ConnInfo,
    duration: Duration,
    bytes: u64,
    reason: TeardownReason,
    ifc: &impl Fn(IfcId) -> &'a str,
) -> Option<SyslogLine> {
    let (o, i) = (&c.outside, &c.inside);
    let (id, name) = match c.protocol {
        proto::TCP => (302014, "TCP"),
        proto::UDP => (302016, "UDP"),
        proto::ICMP => {
            let text = format!(
                "Teardown ICMP connection for faddr {}/{} gaddr {}/{} laddr {}/{} type {} code {}",
                o.addr, o.port, i.addr, i.port, i.addr, i.port, c.icmp_type, c.icmp_code
            );
            return Some(SyslogLine { severity: 6, id: 302021, text });
        }
        _ => return None,
    };
    let text = format!(
        "Teardown {} connection {} for {}:{}/{} to {}:{}/{} duration {} bytes {} {}",
        name,
        c.id,
        ifc(o.ifc),
        o.addr,
        o.port,
        ifc(i.ifc),
        i.addr,
        i.port,
        hms(duration),
        bytes,
        reason.text()
    );
    Some(SyslogLine { severity: 6, id, text })
}

/// `H:MM:SS` (hours unbounded), as in `duration 0:00:36` and `idle 0:00:11`.
pub fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// The compact form of `show conn long|detail`: `10s`, `1m3s`, `1h0m`, `2D3h`.
pub fn compact(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{}s", s / 60, s % 60)
    } else if s < 86400 {
        format!("{}h{}m", s / 3600, (s / 60) % 60)
    } else {
        format!("{}D{}h", s / 86400, (s / 3600) % 24)
    }
}

fn proto_name(p: u8) -> String {
    match p {
        proto::TCP => "TCP".into(),
        proto::UDP => "UDP".into(),
        proto::ICMP => "ICMP".into(),
        47 => "GRE".into(),
        50 => "ESP".into(),
        51 => "AH".into(),
        n => n.to_string(),
    }
}

const FLAGS_LEGEND: &str = "\
Flags: A - awaiting inside ACK to SYN, a - awaiting outside ACK to SYN,
       B - initial SYN from outside, F - outside FIN, f - inside FIN,
       I - inbound data, O - outbound data,
       R - outside acknowledged FIN, r - inside acknowledged FIN,
       S - awaiting inside SYN, s - awaiting outside SYN, U - up,
       V - VPN orphan (preserved, waiting for its tunnel)
";

/// Formats `show conn` from records (see [`Engine::show_conn`]).
pub fn format_show_conn<'a>(
    recs: &[ConnRecord],
    stats: &Stats,
    view: ConnView,
    ifc: impl Fn(IfcId) -> &'a str,
    tunnel: impl Fn(crate::TunnelId) -> String,
) -> String {
    let mut out = format!("{} in use, {} most used\n", stats.in_use, stats.most_used);
    match view {
        ConnView::Count => {}
        ConnView::Brief => {
            for r in recs {
                let (o, i) = (&r.info.outside, &r.info.inside);
                let _ = writeln!(
                    out,
                    "{} {} {}:{} {} {}:{}, idle {}, bytes {}, flags {}",
                    proto_name(r.info.protocol),
                    ifc(o.ifc),
                    o.addr,
                    o.port,
                    ifc(i.ifc),
                    i.addr,
                    i.port,
                    hms(r.idle),
                    r.bytes,
                    r.flags
                );
            }
        }
        ConnView::Long | ConnView::Detail => {
            out.push('\n');
            out.push_str(FLAGS_LEGEND);
            out.push('\n');
            for r in recs {
                let (o, i) = (&r.info.outside, &r.info.inside);
                let timeout = r.timeout.map(compact).unwrap_or_else(|| "0s".into());
                if view == ConnView::Long {
                    let _ = writeln!(
                        out,
                        "{} {}: {}/{} ({}/{}) {}: {}/{} ({}/{}), flags {}, idle {}, uptime {}, timeout {}, bytes {}",
                        proto_name(r.info.protocol),
                        ifc(o.ifc),
                        o.addr,
                        o.port,
                        o.addr,
                        o.port,
                        ifc(i.ifc),
                        i.addr,
                        i.port,
                        i.addr,
                        i.port,
                        r.flags,
                        compact(r.idle),
                        compact(r.uptime),
                        timeout,
                        r.bytes
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "{} {}: {}/{} {}: {}/{},\n    flags {}, idle {}, uptime {}, timeout {}, bytes {}",
                        proto_name(r.info.protocol),
                        ifc(o.ifc),
                        o.addr,
                        o.port,
                        ifc(i.ifc),
                        i.addr,
                        i.port,
                        r.flags,
                        compact(r.idle),
                        compact(r.uptime),
                        timeout,
                        r.bytes
                    );
                }
                let _ = writeln!(out, "  Initiator: {}, Responder: {}", r.info.initiator().addr, r.info.responder().addr);
                if view == ConnView::Detail {
                    let _ = writeln!(out, "  Connection lookup keyid: {}", r.info.id);
                    if let Some(t) = r.info.tunnel {
                        // holdfast extension: the tunnel (by name) the conn is bound to.
                        let _ = writeln!(out, "  Tunnel: {}", tunnel(t));
                    }
                }
            }
        }
    }
    out
}

/// Formats `show asp drop`: non-zero counters only, as the ASA does.
pub fn format_asp_drop(stats: &Stats, last_clearing: &str) -> String {
    let mut out = String::from("\nFrame drop:\n");
    for r in DropReason::ALL {
        let n = stats.drops(r);
        if n > 0 {
            let label = format!("{} ({})", r.description(), r.keyword());
            let _ = writeln!(out, "  {label:<60}{n:>18}");
        }
    }
    let _ = write!(out, "\nLast clearing: {last_clearing}\n\nFlow drop:\n");
    if stats.flows_tunnel_torn_down > 0 {
        let label = "Tunnel has been torn down (tunnel-torn-down)";
        let _ = writeln!(out, "  {label:<60}{:>18}", stats.flows_tunnel_torn_down);
    }
    let _ = writeln!(out, "\nLast clearing: {last_clearing}");
    out
}
