//! Remote-access traffic in the connection table (issue 5): every packet between an
//! AnyConnect client and the inside goes through the daemon's `flow::Engine`, so `show conn`
//! lists it (the client's assigned address on the outside interface, as the ASA shows
//! remote-access flows) with the ASA's timeouts, flags and 302013-302021 lines.
//!
//! Each session is one flow-engine tunnel, named after its leased address ([`tunnel_name`]):
//! the lease outlives reconnects and restarts, and the names stay bounded by the pools.
//!
//! - session up (first CONNECT, or a reconnect with the cookie): `tunnel_up` — preserved flows
//!   lose `V` and their held segments are replayed to the client at once;
//! - connection lost, session waiting in its reconnect grace: `tunnel_down` with the tunnel
//!   preserved — TCP and UDP flows stay, flagged `V`; segments for the client are held (the
//!   latest one per flow) and answered with rate-limited ICMP unreachable (RFC 6069);
//! - session ended (logoff, idle/max time, grace expired): `tunnel_down` unpreserved — its flows
//!   are torn down with `Tunnel has been torn down`.
//!
//! The ASA does not preserve AnyConnect flows (asa.md §1: preserve-vpn-flows covers LAN-to-LAN
//! and Network Extension Mode only); holdfast does it for every remote-access session,
//! independent of `sysopt connection preserve-vpn-flows`, because the session (its cookie, its
//! address) survives the disconnect.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use anyconnect::SessionId;
use flow::{Dir, IfcPair, Route, TunnelId, Verdict};

use crate::flows::{self, SharedEngine};
use crate::syslog::{Message, Syslog};

/// Packets handed to the connection table's batch path per call (its internal group size).
const JUDGE_CHUNK: usize = 16;

/// Prefix of the flow-engine tunnel names of remote-access sessions.
pub const TUNNEL_PREFIX: &str = "ra:";

/// The flow-engine tunnel of the session leasing `addr`.
pub fn tunnel_name(addr: Ipv4Addr) -> String {
    format!("{TUNNEL_PREFIX}{addr}")
}

/// Whether a flow-engine tunnel belongs to a remote-access session.
pub fn is_ra_tunnel(name: &str) -> bool {
    name.starts_with(TUNNEL_PREFIX)
}

/// How the remote-access service reaches the daemon's connection table.
#[derive(Clone)]
pub struct FlowsConfig {
    pub engine: SharedEngine,
    /// `nameif` of the interface the clients connect to (`webvpn` / `enable outside`).
    pub outside: String,
    /// `nameif` of the protected side.
    pub inside: String,
    /// Source of the ICMP unreachables answering held segments: our address toward the
    /// inside hosts (`None`: no ICMP).
    pub icmp_from: Option<Ipv4Addr>,
}

impl FlowsConfig {
    /// From the configuration: the outside is the first interface `webvpn` is enabled on; the
    /// inside is chosen as for a site-to-site tunnel without selectors (`inside` if named so,
    /// else the highest security level), and ICMP comes from its address.
    pub fn from_policy(cfg: &policy::Config, engine: SharedEngine) -> FlowsConfig {
        let outside = cfg
            .anyconnect_listeners()
            .ok()
            .and_then(|l| l.first().map(|l| l.nameif.clone()))
            .unwrap_or_else(|| "outside".into());
        let inside = flows::inside_nameif(cfg, &[], &outside);
        let icmp_from = cfg.interfaces.iter().find(|i| i.nameif.as_deref() == Some(inside.as_str())).and_then(|i| i.address.map(|a| a.addr));
        FlowsConfig { engine, outside, inside, icmp_from }
    }
}

/// What the flow engine says about one packet for a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToClient {
    /// Hand it to the remote-access engine.
    Forward,
    /// Dropped by the connection table.
    Drop,
    /// Held for replay; when `icmp`, answer the sender with ICMP host unreachable.
    Hold { icmp: bool },
}

/// The remote-access side of the connection table.
pub struct RaFlows {
    engine: SharedEngine,
    ifcs: IfcPair,
    icmp_from: Option<Ipv4Addr>,
    tunnels: HashMap<SessionId, TunnelId>,
    msgs: Vec<Message>,
}

impl RaFlows {
    pub fn new(cfg: &FlowsConfig) -> Result<RaFlows, flow::FlowError> {
        let ifcs = {
            let mut eng = flows::lock(&cfg.engine);
            IfcPair { outside: eng.interface(&cfg.outside)?, inside: eng.interface(&cfg.inside)? }
        };
        Ok(RaFlows { engine: cfg.engine.clone(), ifcs, icmp_from: cfg.icmp_from, tunnels: HashMap::new(), msgs: Vec::new() })
    }

    /// After a restart: the restored sessions (with their addresses) wait for their clients,
    /// their flows (restored by the daemon, flagged `V`) with them. Remote-access flows of a
    /// session that did not come back are torn down.
    pub fn adopt(&mut self, now: Instant, sessions: &[(SessionId, Ipv4Addr)], syslog: &Syslog) {
        let mut eng = flows::lock(&self.engine);
        for &(s, addr) in sessions {
            if let Ok(t) = eng.tunnel(&tunnel_name(addr)) {
                eng.set_tunnel_preserve(t, true, true);
                self.tunnels.insert(s, t);
            }
        }
        let mut orphans: Vec<TunnelId> = eng
            .conns(now)
            .iter()
            .filter_map(|c| c.info.tunnel)
            .filter(|t| is_ra_tunnel(eng.tunnel_name(*t)) && !self.tunnels.values().any(|x| x == t))
            .collect();
        orphans.sort_unstable();
        orphans.dedup();
        for t in orphans {
            eng.set_tunnel_preserve(t, false, false);
            eng.tunnel_down(now, t);
        }
        self.engine.release_and_log(eng, &mut self.msgs, syslog);
    }

    /// The session's tunnel is up (CONNECT accepted). Returns the held segments to deliver to
    /// the client now (oldest flow first).
    pub fn session_up(&mut self, now: Instant, session: SessionId, address: Ipv4Addr, syslog: &Syslog) -> Vec<Vec<u8>> {
        let mut eng = flows::lock(&self.engine);
        let Ok(t) = eng.tunnel(&tunnel_name(address)) else {
            return Vec::new();
        };
        self.tunnels.insert(session, t);
        eng.tunnel_up(now, t, &[], &[]);
        // tunnel_up of a tunnel that was down takes the sysopts' preserve setting; a session's
        // flows are always kept while it waits for a reconnect.
        eng.set_tunnel_preserve(t, true, true);
        // Only this tunnel's replays: other tunnels' stay queued for their own drainers.
        let replay = eng.take_transmits_for(t);
        self.engine.release_and_log(eng, &mut self.msgs, syslog);
        replay
    }

    /// The session lost its connection and waits for a reconnect: its flows stay (`V`).
    pub fn session_disconnected(&mut self, now: Instant, session: SessionId, syslog: &Syslog) {
        let Some(&t) = self.tunnels.get(&session) else { return };
        let mut eng = flows::lock(&self.engine);
        eng.tunnel_down(now, t);
        self.engine.release_and_log(eng, &mut self.msgs, syslog);
    }

    /// The session ended: its flows are torn down (`Tunnel has been torn down`).
    pub fn session_down(&mut self, now: Instant, session: SessionId, syslog: &Syslog) {
        let Some(t) = self.tunnels.remove(&session) else { return };
        let mut eng = flows::lock(&self.engine);
        eng.set_tunnel_preserve(t, false, false);
        eng.tunnel_down(now, t);
        self.engine.release_and_log(eng, &mut self.msgs, syslog);
    }

    /// A packet from a client (decrypted), before it is written to the TUN: false = drop.
    pub fn from_client(&mut self, now: Instant, session: SessionId, packet: &[u8], syslog: &Syslog) -> bool {
        let Some(&t) = self.tunnels.get(&session) else {
            // Not yet known (cannot happen: SessionUp comes first); let it through uncounted
            // rather than drop a client's traffic on our bookkeeping.
            return true;
        };
        let mut eng = flows::lock(&self.engine);
        let v = eng.handle_packet(now, Dir::Inbound, self.ifcs, Route::FromTunnel(t), packet);
        self.engine.release_and_log(eng, &mut self.msgs, syslog);
        v == Verdict::Forward
    }

    /// A packet from the inside for the client `session` (None: no session holds the
    /// destination; the remote-access engine counts and drops it).
    pub fn to_client(&mut self, now: Instant, session: Option<SessionId>, packet: &[u8], syslog: &Syslog) -> ToClient {
        let Some(&t) = session.and_then(|s| self.tunnels.get(&s)) else { return ToClient::Forward };
        let mut eng = flows::lock(&self.engine);
        let v = eng.handle_packet(now, Dir::Outbound, self.ifcs, Route::ToTunnel(t), packet);
        self.engine.release_and_log(eng, &mut self.msgs, syslog);
        match v {
            Verdict::Forward => ToClient::Forward,
            Verdict::Drop(_) => ToClient::Drop,
            Verdict::Hold { icmp } => ToClient::Hold { icmp: icmp && self.icmp_from.is_some() },
        }
    }

    /// [`RaFlows::from_client`] for packets `0..n` under one lock of the connection table:
    /// packet `data(i)` came from `session(i)` (`None`: generated by us, not tracked);
    /// `keep[i]` becomes whether it may be written to the TUN.
    pub fn from_client_batch<'p>(
        &mut self,
        now: Instant,
        n: usize,
        session: impl Fn(usize) -> Option<SessionId>,
        data: impl Fn(usize) -> &'p [u8],
        keep: &mut [bool],
        syslog: &Syslog,
    ) {
        let tunnels = &self.tunnels;
        // A session not (yet) known is let through uncounted, as in `from_client`.
        let route = |i: usize| session(i).and_then(|s| tunnels.get(&s)).map(|&t| Route::FromTunnel(t));
        let n = n.min(keep.len());
        let j = Judge { engine: &self.engine, ifcs: self.ifcs, msgs: &mut self.msgs, syslog };
        j.run(now, Dir::Inbound, n, route, data, |i, v| keep[i] = v.is_none_or(|v| v == Verdict::Forward));
    }

    /// [`RaFlows::to_client`] for packets `0..n` under one lock of the connection table.
    pub fn to_client_batch<'p>(
        &mut self,
        now: Instant,
        n: usize,
        session: impl Fn(usize) -> Option<SessionId>,
        data: impl Fn(usize) -> &'p [u8],
        out: &mut [ToClient],
        syslog: &Syslog,
    ) {
        let icmp_ok = self.icmp_from.is_some();
        let tunnels = &self.tunnels;
        let route = |i: usize| session(i).and_then(|s| tunnels.get(&s)).map(|&t| Route::ToTunnel(t));
        let n = n.min(out.len());
        let j = Judge { engine: &self.engine, ifcs: self.ifcs, msgs: &mut self.msgs, syslog };
        j.run(now, Dir::Outbound, n, route, data, |i, v| {
            out[i] = match v {
                None | Some(Verdict::Forward) => ToClient::Forward,
                Some(Verdict::Drop(_)) => ToClient::Drop,
                Some(Verdict::Hold { icmp }) => ToClient::Hold { icmp: icmp && icmp_ok },
            }
        });
    }

    /// The ICMP host unreachable answering a held `packet`, into `out` (its length).
    pub fn icmp_for(&self, packet: &[u8], out: &mut [u8]) -> Option<usize> {
        flow::icmp_host_unreachable(packet, self.icmp_from?, out)
    }

    /// The flow-engine tunnel of a session (tests, `show`).
    pub fn tunnel_of(&self, session: SessionId) -> Option<TunnelId> {
        self.tunnels.get(&session).copied()
    }
}

/// One batch judgment: the connection table's batch path under one lock.
struct Judge<'a> {
    engine: &'a SharedEngine,
    ifcs: IfcPair,
    msgs: &'a mut Vec<Message>,
    syslog: &'a Syslog,
}

impl Judge<'_> {
    /// Runs packets `0..n` through [`flow::Engine::handle_batch`] in chunks of
    /// [`JUDGE_CHUNK`]; `route(i)` = None means untracked (verdict None, no lock needed).
    fn run<'p>(
        self,
        now: Instant,
        dir: Dir,
        n: usize,
        route: impl Fn(usize) -> Option<Route>,
        data: impl Fn(usize) -> &'p [u8],
        mut set: impl FnMut(usize, Option<Verdict>),
    ) {
        let mut any = false;
        for i in 0..n {
            if route(i).is_some() {
                any = true;
            } else {
                set(i, None);
            }
        }
        if !any {
            return;
        }
        let ifcs = self.ifcs;
        let mut verdicts = [Verdict::Forward; JUDGE_CHUNK];
        let mut eng = flows::lock(self.engine);
        let mut i = 0;
        while i < n {
            let mut pk = [flow::Packet { dir, ifcs, route: Route::Clear, data: &[] }; JUDGE_CHUNK];
            let mut at = [0usize; JUDGE_CHUNK];
            let mut k = 0;
            while i < n && k < JUDGE_CHUNK {
                if let Some(r) = route(i) {
                    pk[k] = flow::Packet { dir, ifcs, route: r, data: data(i) };
                    at[k] = i;
                    k += 1;
                }
                i += 1;
            }
            eng.handle_batch(now, &pk[..k], &mut verdicts[..k]);
            for (j, &idx) in at[..k].iter().enumerate() {
                set(idx, Some(verdicts[j]));
            }
        }
        self.engine.release_and_log(eng, self.msgs, self.syslog);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn tcp(src: [u8; 4], sp: u16, dst: [u8; 4], dp: u16, flags: u8, data: usize) -> Vec<u8> {
        let len = 40 + data;
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        let c = wire::ip::checksum::checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..22].copy_from_slice(&sp.to_be_bytes());
        p[22..24].copy_from_slice(&dp.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        p
    }

    const CLIENT: [u8; 4] = [10, 99, 0, 100];
    const SERVER: [u8; 4] = [10, 1, 0, 10];
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;

    fn rig(preserve_sysopt: bool) -> (RaFlows, SharedEngine, Syslog, Instant) {
        let now = crate::clock::now();
        let mut fc = flow::Config::default();
        fc.sysopt.preserve_vpn_flows = preserve_sysopt;
        let engine: SharedEngine = Arc::new(flows::Shared::new(flow::Engine::new(now, fc)));
        let cfg = FlowsConfig { engine: engine.clone(), outside: "outside".into(), inside: "inside".into(), icmp_from: Some(Ipv4Addr::new(10, 1, 0, 1)) };
        (
            RaFlows::new(&cfg).unwrap(),
            engine,
            Syslog::new(crate::syslog::SyslogConfig { enabled: false, hosts: vec![], trap_level: 6, buffered_level: 7, timestamp: false, stderr: false }),
            now,
        )
    }

    /// A client-initiated TCP conn up to established (client SYN, server SYN-ACK, client ACK).
    fn establish(f: &mut RaFlows, s: SessionId, now: Instant, log: &Syslog) {
        assert!(f.from_client(now, s, &tcp(CLIENT, 40000, SERVER, 80, SYN, 0), log));
        assert_eq!(f.to_client(now, Some(s), &tcp(SERVER, 80, CLIENT, 40000, SYN | ACK, 0), log), ToClient::Forward);
        assert!(f.from_client(now, s, &tcp(CLIENT, 40000, SERVER, 80, ACK, 0), log));
    }

    #[test]
    fn disconnect_keeps_flows_reconnect_replays_and_end_tears_down() {
        // preserve-vpn-flows is off: remote-access flows are kept all the same.
        let (mut f, engine, log, t0) = rig(false);
        let s = SessionId(7);
        assert!(f.session_up(t0, s, Ipv4Addr::from(CLIENT), &log).is_empty());
        establish(&mut f, s, t0, &log);
        let conns = flows::lock(&engine).conns(t0);
        assert_eq!(conns.len(), 1);
        let id = conns[0].info.id;
        // Inbound (the client is on the outside), as the ASA logs remote-access flows.
        assert!(conns[0].info.inbound && conns[0].info.outside.addr == Ipv4Addr::from(CLIENT));
        assert!(log.lines().iter().any(|l| l.contains("302013") && l.contains("Built inbound TCP connection")), "{:?}", log.lines());

        // Connection lost: kept, flagged V; the server's data is held and answered with ICMP.
        let t1 = t0 + Duration::from_secs(1);
        f.session_disconnected(t1, s, &log);
        let c = flows::lock(&engine).conns(t1);
        assert_eq!((c.len(), c[0].info.id), (1, id));
        assert!(c[0].flags.contains('V'), "{}", c[0].flags);
        let data = tcp(SERVER, 80, CLIENT, 40000, ACK, 100);
        assert_eq!(f.to_client(t1, Some(s), &data, &log), ToClient::Hold { icmp: true });
        let mut icmp = [0u8; 576];
        let n = f.icmp_for(&data, &mut icmp).expect("ICMP built");
        assert_eq!((icmp[9], icmp[20], icmp[21]), (1, 3, 1), "ICMP host unreachable");
        assert_eq!(&icmp[12..16], &[10, 1, 0, 1]);
        assert!(n > 28);

        // Reconnect: same conn, V gone, the held segment comes back for the client.
        let t2 = t0 + Duration::from_secs(5);
        let replay = f.session_up(t2, s, Ipv4Addr::from(CLIENT), &log);
        assert_eq!(replay, vec![data.clone()]);
        let c = flows::lock(&engine).conns(t2);
        assert_eq!((c.len(), c[0].info.id), (1, id));
        assert!(!c[0].flags.contains('V'), "{}", c[0].flags);
        assert_eq!(f.to_client(t2, Some(s), &data, &log), ToClient::Forward);

        // A second drop after the reconnect is still preserved (tunnel_up reset the sysopt).
        f.session_disconnected(t2, s, &log);
        assert_eq!(flows::lock(&engine).len(), 1);

        // Session ended: torn down with the ASA reason.
        f.session_down(t2, s, &log);
        assert!(flows::lock(&engine).is_empty());
        assert!(log.lines().iter().any(|l| l.contains("302014") && l.ends_with("Tunnel has been torn down")), "{:?}", log.lines());
        // Traffic for the ended session is no longer tracked.
        assert_eq!(f.to_client(t2, Some(s), &data, &log), ToClient::Forward);
        assert!(f.tunnel_of(s).is_none());
    }

    #[test]
    fn restored_sessions_keep_their_flows_and_orphans_go() {
        let (mut f, engine, log, t0) = rig(false);
        let (a, b) = (SessionId(1), SessionId(2));
        f.session_up(t0, a, Ipv4Addr::from(CLIENT), &log);
        f.session_up(t0, b, Ipv4Addr::new(10, 99, 0, 101), &log);
        establish(&mut f, a, t0, &log);
        assert!(f.from_client(t0, b, &tcp([10, 99, 0, 101], 40001, SERVER, 22, SYN, 0), &log));
        // A restart: the daemon restores the table (tunnels down), then the sessions file
        // brings back only session 1.
        let snap = flows::lock(&engine).snapshot(t0);
        let mut keep = flow::Config::default();
        keep.sysopt.preserve_vpn_flows = true;
        keep.sysopt.preserve_vpn_flows_udp = true;
        let restored = flow::Engine::restore(t0, keep, &snap, Duration::from_secs(2)).unwrap();
        let engine2: SharedEngine = Arc::new(flows::Shared::new(restored));
        let cfg = FlowsConfig { engine: engine2.clone(), outside: "outside".into(), inside: "inside".into(), icmp_from: None };
        let mut f2 = RaFlows::new(&cfg).unwrap();
        f2.adopt(t0, &[(a, Ipv4Addr::from(CLIENT))], &log);
        let c = flows::lock(&engine2).conns(t0);
        assert_eq!(c.len(), 1, "session 2's flow is torn down");
        assert!(c[0].flags.contains('V') && c[0].info.outside.addr == Ipv4Addr::from(CLIENT));
        let data = tcp(SERVER, 80, CLIENT, 40000, ACK, 10);
        // Held, but no ICMP without a source address.
        assert_eq!(f2.to_client(t0, Some(a), &data, &log), ToClient::Hold { icmp: false });
        assert_eq!(f2.session_up(t0, a, Ipv4Addr::from(CLIENT), &log), vec![data]);
    }

    /// A batch judged under one lock gives each packet the verdict it gets one by one, and
    /// leaves the table in the same state: two sessions, new and unknown flows, untracked
    /// packets.
    #[test]
    fn batch_judgments_match_one_by_one() {
        let (a, b) = (SessionId(1), SessionId(2));
        let b_addr = [10, 99, 0, 101];
        let from_b = |sp: u16, flags: u8| tcp(b_addr, sp, SERVER, 22, flags, 0);
        let pkts: Vec<(Option<SessionId>, Vec<u8>)> = vec![
            (Some(a), tcp(CLIENT, 40000, SERVER, 80, SYN, 0)),
            // A bare ACK with no connection: the table drops it.
            (Some(b), from_b(40001, ACK)),
            (Some(b), from_b(40002, SYN)),
            // Generated here (an ICMP error of ours): not tracked, kept.
            (None, tcp(SERVER, 1, CLIENT, 2, ACK, 0)),
            // A session the table does not know: let through uncounted.
            (Some(SessionId(9)), tcp(CLIENT, 40003, SERVER, 80, ACK, 0)),
            (Some(a), tcp(CLIENT, 40004, SERVER, 80, SYN, 0)),
        ];
        let (mut one, e1, log, t0) = rig(false);
        let (mut batch, e2, _, _) = rig(false);
        for f in [&mut one, &mut batch] {
            f.session_up(t0, a, Ipv4Addr::from(CLIENT), &log);
            f.session_up(t0, b, Ipv4Addr::from(b_addr), &log);
        }
        let want: Vec<bool> = pkts.iter().map(|(s, p)| s.is_none_or(|s| one.from_client(t0, s, p, &log))).collect();
        assert_eq!(want, vec![true, false, true, true, true, true]);
        let mut keep = vec![false; pkts.len()];
        batch.from_client_batch(t0, pkts.len(), |i| pkts[i].0, |i| &pkts[i].1[..], &mut keep, &log);
        assert_eq!(keep, want);
        assert_eq!(flows::lock(&e1).len(), 3);
        assert_eq!(flows::lock(&e2).len(), 3);

        // Toward the clients: replies to the flows above, one for a flow that does not exist.
        let back: Vec<(Option<SessionId>, Vec<u8>)> = vec![
            (Some(a), tcp(SERVER, 80, CLIENT, 40000, SYN | ACK, 0)),
            (Some(b), tcp(SERVER, 22, b_addr, 40002, SYN | ACK, 0)),
            (Some(a), tcp(SERVER, 80, CLIENT, 49999, ACK, 10)),
            (None, tcp(SERVER, 80, [10, 99, 0, 150], 40000, ACK, 0)),
        ];
        let want: Vec<ToClient> = back.iter().map(|(s, p)| one.to_client(t0, *s, p, &log)).collect();
        let mut got = vec![ToClient::Drop; back.len()];
        batch.to_client_batch(t0, back.len(), |i| back[i].0, |i| &back[i].1[..], &mut got, &log);
        assert_eq!(got, want);
        assert_eq!(got[0], ToClient::Forward);
        assert_eq!(got[3], ToClient::Forward);
        assert_eq!(got[2], ToClient::Drop);
    }

    /// A session coming back takes its own held segments and leaves another tunnel's queued
    /// replays in the engine for their owner.
    #[test]
    fn session_up_takes_only_its_own_replays() {
        let (mut f, engine, log, t0) = rig(false);
        let (a, b) = (SessionId(1), SessionId(2));
        let b_addr = [10, 99, 0, 101];
        f.session_up(t0, a, Ipv4Addr::from(CLIENT), &log);
        f.session_up(t0, b, Ipv4Addr::from(b_addr), &log);
        establish(&mut f, a, t0, &log);
        assert!(f.from_client(t0, b, &tcp(b_addr, 40001, SERVER, 22, SYN, 0), &log));
        assert_eq!(f.to_client(t0, Some(b), &tcp(SERVER, 22, b_addr, 40001, SYN | ACK, 0), &log), ToClient::Forward);
        assert!(f.from_client(t0, b, &tcp(b_addr, 40001, SERVER, 22, ACK, 0), &log));
        let t1 = t0 + Duration::from_secs(1);
        f.session_disconnected(t1, a, &log);
        f.session_disconnected(t1, b, &log);
        let da = tcp(SERVER, 80, CLIENT, 40000, ACK, 100);
        let db = tcp(SERVER, 22, b_addr, 40001, ACK, 50);
        assert!(matches!(f.to_client(t1, Some(a), &da, &log), ToClient::Hold { .. }));
        assert!(matches!(f.to_client(t1, Some(b), &db, &log), ToClient::Hold { .. }));
        // Someone else brings b's tunnel up in the engine and has not drained yet.
        let tb = f.tunnel_of(b).unwrap();
        flows::lock(&engine).tunnel_up(t1, tb, &[], &[]);
        assert_eq!(f.session_up(t1, a, Ipv4Addr::from(CLIENT), &log), vec![da]);
        let mut eng = flows::lock(&engine);
        let left = eng.poll_transmit().expect("b's replay still queued");
        assert_eq!((left.tunnel, left.packet), (tb, db));
        assert!(eng.poll_transmit().is_none());
    }
}
