//! Operator text: `show conn [long|detail|count]`, `show asp drop`, and the syslog lines
//! 302013/302014/302015/302016/302020/302021 in the ASA's exact shapes (asa.md §2-3).
//!
//! Log pipelines parse these lines with the Logstash patterns (`CISCOFW302013_302014_302015_302016`,
//! `CISCOFW302020_302021`); the tests run every shape through those very patterns.

use std::fmt::Write as _;
use std::time::Duration;

use crate::{ConnCounts, ConnInfo, ConnRecord, DropReason, Engine, Event, IfcId, RawConn, Stats, TableMeta, TeardownReason};
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
        if view == ConnView::Count {
            // The header only: O(1), no walk of the table.
            return format_show_conn(&[], self.stats(), view, |i| self.interface_name(i), |t| self.tunnel_name(t).to_string());
        }
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

impl TableMeta {
    /// `show conn [address IP] [long|detail|count]` from a copy of the table taken with
    /// [`Engine::copy_conns`] and this meta: the text [`Engine::show_conn_address`] gives for
    /// the same entries (oldest first), built without the engine. The header counts the copy
    /// ([`TableMeta::listed_counts`]: what is listed, not the counter at the walk's end), so
    /// pass the whole deduplicated copy ([`crate::ConnCursor::dedupe_by_key`]) and let
    /// `address` filter. Sorts `conns` in place.
    pub fn show_conn(&self, now: std::time::Instant, view: ConnView, address: Option<std::net::Ipv4Addr>, conns: &mut [RawConn]) -> String {
        let counts = self.listed_counts(conns);
        if view == ConnView::Count {
            return write_show_conn(std::iter::empty::<ConnRecord>(), counts, view, |i| self.interface_name(i), |t| self.tunnel_name(t).to_string());
        }
        // Conn ids are unique, so an unstable sort gives `Engine::conns`'s order.
        conns.sort_unstable_by_key(RawConn::id);
        let recs = conns.iter().filter(|c| address.is_none_or(|a| c.involves(a))).map(|c| self.record(now, c));
        write_show_conn(recs, counts, view, |i| self.interface_name(i), |t| self.tunnel_name(t).to_string())
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
    write_show_conn(recs, ConnCounts::from(stats), view, ifc, tunnel)
}

/// [`format_show_conn`] over any sequence of records, so a copy of the table can be formatted
/// one record at a time instead of materialising every `ConnRecord` first.
fn write_show_conn<'a, R: std::borrow::Borrow<ConnRecord>>(
    recs: impl IntoIterator<Item = R>,
    counts: ConnCounts,
    view: ConnView,
    ifc: impl Fn(IfcId) -> &'a str,
    tunnel: impl Fn(crate::TunnelId) -> String,
) -> String {
    let mut out = format!("{} in use, {} most used\n", counts.in_use, counts.most_used);
    match view {
        ConnView::Count => {}
        ConnView::Brief => {
            for r in recs {
                let r = r.borrow();
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
                let r = r.borrow();
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

#[cfg(test)]
mod tests {
    // The tests stand in for the daemon: they read the clock once for an origin.
    #![allow(clippy::disallowed_methods)]

    use super::*;
    use crate::tests::{tcp, udp, ACK, SYN};
    use crate::{Config, ConnCursor, Dir, IfcPair, Route, Verdict};
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};

    /// An engine with tunnelled TCP conns (one preserved `V` after its tunnel drops), clear UDP
    /// conns, and holes in the slab (conns cleared), so that slot order and id order differ.
    fn table() -> (Engine, Instant, IfcPair) {
        let t0 = Instant::now();
        let mut cfg = Config::default();
        cfg.sysopt.preserve_vpn_flows = true;
        let mut e = Engine::new(t0, cfg);
        let ifcs = IfcPair { outside: e.interface("outside").unwrap(), inside: e.interface("inside").unwrap() };
        let a = e.tunnel("MAP:10").unwrap();
        let b = e.tunnel("MAP:20").unwrap();
        e.tunnel_up(t0, a, &[], &[]);
        e.tunnel_up(t0, b, &[], &[]);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for n in 0..40u16 {
            let v = e.handle_packet(at(u64::from(n) * 100), Dir::Outbound, ifcs, Route::Clear, &udp("10.1.0.5", 1000 + n, "192.0.2.53", 53, b"q"));
            assert_eq!(v, Verdict::Forward);
        }
        // Holes: clearing 192.0.2.53 empties the first 40 slots; new conns reuse some of them,
        // with higher ids than conns in later slots.
        for n in 0..20u16 {
            let t = if n % 2 == 0 { a } else { b };
            let syn = tcp("10.1.0.7", 2000 + n, "10.2.0.9", 443, SYN, 1, 0, b"");
            assert_eq!(e.handle_packet(at(5_000), Dir::Outbound, ifcs, Route::ToTunnel(t), &syn), Verdict::Forward);
            let sa = tcp("10.2.0.9", 443, "10.1.0.7", 2000 + n, SYN | ACK, 9, 2, b"");
            assert_eq!(e.handle_packet(at(5_001), Dir::Inbound, ifcs, Route::FromTunnel(t), &sa), Verdict::Forward);
        }
        assert_eq!(e.clear_conn(at(6_000), Some("192.0.2.53".parse().unwrap())), 40);
        for n in 0..25u16 {
            let v = e.handle_packet(at(7_000), Dir::Outbound, ifcs, Route::Clear, &udp("10.1.0.6", 3000 + n, "192.0.2.54", 53, b"qq"));
            assert_eq!(v, Verdict::Forward);
        }
        e.tunnel_down(at(8_000), b);
        while e.poll_event().is_some() {}
        (e, t0, ifcs)
    }

    fn copy_all(e: &Engine, max_slots: usize) -> (Vec<RawConn>, usize) {
        let mut cur = ConnCursor::new();
        let mut out = Vec::new();
        let mut calls = 1;
        while !e.copy_conns(&mut cur, max_slots, &mut out) {
            calls += 1;
            assert!(calls < 10_000, "the walk does not end");
        }
        (out, calls)
    }

    /// The copied-and-formatted text is the engine's own, for every view, with and without an
    /// address filter, whatever the slice size; so is the snapshot.
    #[test]
    fn copies_format_like_the_engine() {
        let (e, t0, _) = table();
        let now = t0 + Duration::from_secs(75);
        assert_eq!(e.len(), 45);
        assert!(e.conns(now).iter().any(|r| r.flags.contains('V')), "a preserved conn is part of the case");
        for max_slots in [0, 1, 7, 64, 1 << 20] {
            let (copy, calls) = copy_all(&e, max_slots);
            assert_eq!(copy.len(), e.len());
            // 60 slots were handed out (40 + 20; the last 25 conns reuse freed ones).
            assert_eq!(calls, if max_slots >= 60 { 1 } else { 60usize.div_ceil(max_slots.max(1)) }, "{max_slots}");
            let meta = e.table_meta();
            for view in [ConnView::Brief, ConnView::Long, ConnView::Detail, ConnView::Count] {
                for addr in [None, Some("192.0.2.54".parse().unwrap()), Some("10.2.0.9".parse().unwrap()), Some("203.0.113.1".parse().unwrap())] {
                    let mut c = copy.clone();
                    assert_eq!(meta.show_conn(now, view, addr, &mut c), e.show_conn_address(now, view, addr), "{view:?} {addr:?}");
                }
            }
            assert_eq!(meta.snapshot(now, &copy), e.snapshot(now));
            assert_eq!(copy.iter().filter(|c| c.is_preserved()).count(), 10);
        }
    }

    /// Changes between two slices: a conn torn down after its slot was copied stays in the copy,
    /// one built in a visited slot is missed, one built beyond the cursor is found; nothing is
    /// copied twice and the walk still ends. A conn torn down and rebuilt on its tuple beyond
    /// the cursor is in the raw copy twice; after `dedupe_by_key` the listing and the snapshot
    /// hold only the live one.
    #[test]
    fn changes_between_slices() {
        let (mut e, t0, ifcs) = table();
        let now = t0 + Duration::from_secs(10);
        let mut cur = ConnCursor::new();
        let mut out = Vec::new();
        assert!(!e.copy_conns(&mut cur, 30, &mut out));
        let first: Vec<u64> = out.iter().map(RawConn::id).collect();
        // Tear everything down, then build 70 conns: 60 reuse freed slots, 10 go past the old
        // end of the slab.
        assert_eq!(e.clear_conn(now, None), 45);
        for n in 0..70u16 {
            let v = e.handle_packet(now, Dir::Outbound, ifcs, Route::Clear, &udp("10.1.0.8", 4000 + n, "192.0.2.99", 53, b""));
            assert_eq!(v, Verdict::Forward);
        }
        while !e.copy_conns(&mut cur, 30, &mut out) {}
        let ids: Vec<u64> = out.iter().map(RawConn::id).collect();
        let unique: std::collections::HashSet<u64> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "a conn copied twice");
        assert_eq!(&ids[..first.len()], &first[..], "the copied conns stay in the copy");
        // After the first slice: new conns only, those in slots 30.. (the 10 beyond the old end
        // among them); the ones that landed in slots 0..30 are missed.
        assert!((10..70).contains(&(ids.len() - first.len())), "{}", ids.len() - first.len());
        assert!(ids[first.len()..].iter().all(|id| !first.contains(id)));
        // The meta taken after the walk names every tunnel a copied conn refers to.
        let meta = e.table_meta();
        let snap = meta.snapshot(now, &out);
        let back = Engine::restore(now, Config::default(), &snap, Duration::ZERO).unwrap();
        assert_eq!(back.len(), out.len());

        // A conn copied, then torn down and built again on the same 5-tuple in a slot the walk
        // has not reached: the raw copy holds both, the dead one first. The listing and the
        // snapshot must name the live one (the higher id) once.
        let mut e = Engine::new(t0, Config::default());
        let ifcs = IfcPair { outside: e.interface("outside").unwrap(), inside: e.interface("inside").unwrap() };
        let k = |e: &mut Engine, payload: &[u8]| {
            let v = e.handle_packet(now, Dir::Outbound, ifcs, Route::Clear, &udp("10.1.0.9", 5000, "192.0.2.77", 53, payload));
            assert_eq!(v, Verdict::Forward);
        };
        k(&mut e, b"old");
        for host in ["10.1.0.10", "10.1.0.11"] {
            assert_eq!(e.handle_packet(now, Dir::Outbound, ifcs, Route::Clear, &udp(host, 5000, "192.0.2.77", 53, b"")), Verdict::Forward);
        }
        let mut cur = ConnCursor::new();
        let mut out = Vec::new();
        assert!(!e.copy_conns(&mut cur, 1, &mut out));
        let dead = out[0].id();
        assert_eq!(e.clear_conn(now, Some("10.1.0.9".parse().unwrap())), 1);
        // The freed slot 0 goes to another conn, so the rebuilt one lands beyond the cursor.
        assert_eq!(e.handle_packet(now, Dir::Outbound, ifcs, Route::Clear, &udp("10.1.0.12", 5000, "192.0.2.77", 53, b"")), Verdict::Forward);
        k(&mut e, b"newer");
        while !e.copy_conns(&mut cur, 1, &mut out) {}
        let live: Vec<u64> = e.conns(now).iter().filter(|r| r.info.inside.addr == Ipv4Addr::new(10, 1, 0, 9)).map(|r| r.info.id).collect();
        assert_eq!(live.len(), 1);
        assert!(live[0] > dead);
        let raw: Vec<u64> = out.iter().map(RawConn::id).collect();
        assert!(raw.contains(&dead) && raw.contains(&live[0]), "the case needs both in the raw copy: {raw:?}");
        cur.dedupe_by_key(&mut out);
        let ids: Vec<u64> = out.iter().map(RawConn::id).collect();
        assert!(!ids.contains(&dead) && ids.contains(&live[0]), "{ids:?}");
        let meta = e.table_meta();
        // The listing names the live conn (5 bytes, "newer") once; its text has no id, the
        // JSON listing's rows come from the same deduplicated copy.
        let text = meta.show_conn(now, ConnView::Brief, None, &mut out.clone());
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("inside 10.1.0.9:5000")).collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(lines[0].contains("bytes 5,"), "{text}");
        // For that tuple the rows are the engine's own; the header counts the copy (3), not the
        // table (4: the conn built in slot 0 was missed).
        let k_addr = Some(Ipv4Addr::new(10, 1, 0, 9));
        let body = |t: String| t.split_once('\n').map(|(_, b)| b.to_string());
        let copied = meta.show_conn(now, ConnView::Long, k_addr, &mut out.clone());
        assert_eq!(body(copied.clone()), body(e.show_conn_address(now, ConnView::Long, k_addr)));
        assert_eq!((out.len(), e.len()), (3, 4));
        assert!(copied.starts_with("3 in use, 4 most used\n"), "{copied}");
        let snap = meta.snapshot(now, &out);
        let back = Engine::restore(now, Config::default(), &snap, Duration::ZERO).unwrap();
        back.check_invariants();
        let restored: Vec<(u64, u64)> =
            back.conns(now).iter().filter(|r| r.info.inside.addr == Ipv4Addr::new(10, 1, 0, 9)).map(|r| (r.info.id, r.bytes)).collect();
        assert_eq!(restored, vec![(live[0], 5)], "the live conn, with its own byte count");
    }

    /// `show conn`'s header over a copy taken in slices counts the conns the copy lists, not
    /// the engine's counter at the walk's end: a conn torn down after its slot was copied is
    /// listed (the end counter said 3 over 4 rows), one built in a slot already visited is not
    /// (it said 4 over 3 rows). With an address filter the header still counts the whole copy.
    #[test]
    fn header_counts_what_the_copy_lists() {
        let t0 = Instant::now();
        let four = || {
            let mut e = Engine::new(t0, Config::default());
            let ifcs = IfcPair { outside: e.interface("outside").unwrap(), inside: e.interface("inside").unwrap() };
            for host in 1..=4u8 {
                let v = e.handle_packet(t0, Dir::Outbound, ifcs, Route::Clear, &udp(&format!("10.1.0.{host}"), 5000, "192.0.2.77", 53, b"q"));
                assert_eq!(v, Verdict::Forward);
            }
            (e, ifcs)
        };
        let rows = |text: &str| text.lines().skip(1).count();
        for torn_down in [true, false] {
            let (mut e, ifcs) = four();
            if !torn_down {
                // Slot 0 free before the walk; the conn built during it takes slot 0 again.
                assert_eq!(e.clear_conn(t0, Some(Ipv4Addr::new(10, 1, 0, 1))), 1);
            }
            let mut cur = ConnCursor::new();
            let mut out = Vec::new();
            assert!(!e.copy_conns(&mut cur, 2, &mut out));
            if torn_down {
                assert_eq!(e.clear_conn(t0, Some(Ipv4Addr::new(10, 1, 0, 1))), 1);
            } else {
                let v = e.handle_packet(t0, Dir::Outbound, ifcs, Route::Clear, &udp("10.1.0.9", 5000, "192.0.2.77", 53, b""));
                assert_eq!(v, Verdict::Forward);
            }
            while !e.copy_conns(&mut cur, 2, &mut out) {}
            cur.dedupe_by_key(&mut out);
            let (listed, engine_now) = if torn_down { (4, 3) } else { (3, 4) };
            assert_eq!((out.len(), e.len()), (listed, engine_now), "the case: the copy and the table differ");
            let meta = e.table_meta();
            let text = meta.show_conn(t0, ConnView::Brief, None, &mut out.clone());
            assert_eq!(rows(&text), listed, "{text}");
            assert_eq!(text.lines().next(), Some(format!("{listed} in use, 4 most used").as_str()), "{text}");
            assert_eq!(meta.show_conn(t0, ConnView::Count, None, &mut out.clone()), format!("{listed} in use, 4 most used\n"));
            let one = meta.show_conn(t0, ConnView::Brief, Some(Ipv4Addr::new(10, 1, 0, 2)), &mut out.clone());
            assert_eq!(one.lines().next(), text.lines().next(), "{one}");
            assert_eq!(rows(&one), 1, "{one}");
        }
    }

    /// A snapshot with two flows on one 5-tuple (a copy taken in slices can hold a dead conn
    /// and its live successor): restore keeps the higher id, in either order, and counts one.
    #[test]
    fn restore_keeps_the_newest_flow_of_a_tuple() {
        let t0 = Instant::now();
        let mut e = Engine::new(t0, Config::default());
        let ifcs = IfcPair { outside: e.interface("outside").unwrap(), inside: e.interface("inside").unwrap() };
        for (host, payload) in [("10.1.0.9", &b"abc"[..]), ("10.1.0.10", &b""[..])] {
            assert_eq!(e.handle_packet(t0, Dir::Outbound, ifcs, Route::Clear, &udp(host, 5000, "192.0.2.77", 53, payload)), Verdict::Forward);
        }
        let snap = e.snapshot(t0);
        let old = snap.flows.iter().find(|f| f.in_addr == Ipv4Addr::new(10, 1, 0, 9)).unwrap().clone();
        let mut newer = old.clone();
        newer.id = snap.next_id + 5;
        newer.bytes = 77;
        for flows in [vec![old.clone(), newer.clone()], vec![newer.clone(), old.clone()]] {
            let mut s = snap.clone();
            s.flows.retain(|f| f.in_addr != old.in_addr);
            s.flows.extend(flows);
            let back = Engine::restore(t0, Config::default(), &s, Duration::ZERO).unwrap();
            back.check_invariants();
            assert_eq!(back.len(), 2);
            assert_eq!(back.stats().built, 2);
            let mine: Vec<(u64, u64)> = back.conns(t0).iter().filter(|r| r.info.inside.addr == old.in_addr).map(|r| (r.info.id, r.bytes)).collect();
            assert_eq!(mine, vec![(newer.id, 77)]);
            // The table holds the flow under its key: its packets find it.
            let mut back = back;
            let v = back.handle_packet(t0, Dir::Outbound, ifcs, Route::Clear, &udp("10.1.0.9", 5000, "192.0.2.77", 53, b"x"));
            assert_eq!(v, Verdict::Forward);
            assert_eq!(back.len(), 2, "no second conn built");
        }
    }
}
