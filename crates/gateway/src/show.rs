//! `show crypto ikev2 sa [detail]` and `show crypto ipsec sa [peer IP]` in the ASA's layout.
//!
//! The formatters take plain views assembled by the daemon from engine state, SA events and
//! data-path counters, so they can be tested against golden text without any I/O.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use policy::{DhGroup, Encryption, Integrity, TrafficSelector};
use serde::Serialize;

/// One IKE SA as `show crypto ikev2 sa` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IkeSaView {
    pub tunnel_id: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// `READY`, `IN-NEG`, `DELETE`.
    pub status: String,
    pub initiator: bool,
    /// Negotiated algorithms when the engine reports them.
    pub encryption: Option<Encryption>,
    pub integrity: Option<Integrity>,
    pub prf: Option<policy::Prf>,
    pub dh_group: Option<DhGroup>,
    pub lifetime_secs: u64,
    pub active_secs: u64,
    pub spi_i: u64,
    pub spi_r: u64,
    pub children: Vec<ChildSummary>,
    /// Liveness (`isakmp keepalive threshold T retry R`), for `detail`.
    pub dpd: Option<(u64, u64)>,
    pub nat_t: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChildSummary {
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    pub spi_in: u32,
    pub spi_out: u32,
    pub encryption: Encryption,
    pub integrity: Integrity,
}

/// One CHILD_SA pair as `show crypto ipsec sa` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpsecSaView {
    pub interface: String,
    pub map: String,
    pub seq: u32,
    /// The crypto ACL's permit line, as `show access-list` would print it.
    pub acl_line: Option<String>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub local_ts: TrafficSelector,
    pub remote_ts: TrafficSelector,
    pub spi_in: u32,
    pub spi_out: u32,
    pub encryption: Encryption,
    pub integrity: Integrity,
    pub esn: bool,
    pub pfs: Option<DhGroup>,
    pub udp_encap: bool,
    pub conn_id: u32,
    pub remaining_secs: u64,
    /// `None` = unlimited.
    pub remaining_kb_in: Option<u64>,
    pub remaining_kb_out: Option<u64>,
    pub encaps: u64,
    pub decaps: u64,
    pub send_errors: u64,
    pub replay_drops: u64,
    pub auth_drops: u64,
    pub other_recv_errors: u64,
    /// Per-packet ESP overhead (outer IP and UDP included) and the ESP-only part.
    pub overhead: (usize, usize),
    pub media_mtu: u32,
    /// `true` while a rekeyed-away inbound SA lingers for in-flight packets.
    pub draining: bool,
}

pub fn transform_name(enc: Encryption, integ: Integrity) -> String {
    let e = match enc {
        Encryption::AesCbc128 => "esp-aes",
        Encryption::AesCbc192 => "esp-aes-192",
        Encryption::AesCbc256 => "esp-aes-256",
        Encryption::AesGcm128 => "esp-aes-gcm",
        Encryption::AesGcm192 => "esp-aes-gcm-192",
        Encryption::AesGcm256 => "esp-aes-gcm-256",
    };
    let i = match integ {
        Integrity::Null => "esp-null-hmac",
        Integrity::Sha1 => "esp-sha-hmac",
        Integrity::Sha256 => "esp-sha-256-hmac",
        Integrity::Sha384 => "esp-sha-384-hmac",
        Integrity::Sha512 => "esp-sha-512-hmac",
    };
    format!("{e} {i} no compression")
}

fn net_mask(ts: &TrafficSelector) -> (std::net::Ipv4Addr, std::net::Ipv4Addr) {
    // A selector from an ACL is a prefix; print it as addr/mask like the ASA's ident lines.
    let span = u32::from(ts.end_addr) ^ u32::from(ts.start_addr);
    let mask = !span;
    (ts.start_addr, std::net::Ipv4Addr::from(mask))
}

fn ident(ts: &TrafficSelector) -> String {
    let (a, m) = net_mask(ts);
    let port = if ts.start_port == ts.end_port { ts.start_port } else { 0 };
    format!("({a}/{m}/{}/{port})", ts.protocol)
}

fn selector(ts: &TrafficSelector) -> String {
    format!("{}/{} - {}/{}", ts.start_addr, ts.start_port, ts.end_addr, ts.end_port)
}

fn kb(v: Option<u64>) -> String {
    v.map(|k| k.to_string()).unwrap_or_else(|| "unlimited".into())
}

/// `show crypto ipsec sa`.
pub fn ipsec_sa(views: &[IpsecSaView]) -> String {
    let mut o = String::new();
    if views.is_empty() {
        o.push_str("There are no ipsec sas\n");
        return o;
    }
    let mut last_if: Option<&str> = None;
    for v in views {
        if last_if != Some(v.interface.as_str()) {
            let _ = writeln!(o, "interface: {}", v.interface);
            last_if = Some(&v.interface);
        }
        let _ = writeln!(o, "    Crypto map tag: {}, seq num: {}, local addr: {}", v.map, v.seq, v.local.ip());
        o.push('\n');
        if let Some(acl) = &v.acl_line {
            let _ = writeln!(o, "      {acl}");
        }
        let _ = writeln!(o, "      local ident (addr/mask/prot/port): {}", ident(&v.local_ts));
        let _ = writeln!(o, "      remote ident (addr/mask/prot/port): {}", ident(&v.remote_ts));
        let _ = writeln!(o, "      current_peer: {}", v.remote.ip());
        o.push_str("\n\n");
        let (e, d) = (v.encaps, v.decaps);
        let _ = writeln!(o, "      #pkts encaps: {e}, #pkts encrypt: {e}, #pkts digest: {e}");
        let _ = writeln!(o, "      #pkts decaps: {d}, #pkts decrypt: {d}, #pkts verify: {d}");
        o.push_str("      #pkts compressed: 0, #pkts decompressed: 0\n");
        let _ = writeln!(o, "      #pkts not compressed: {e}, #pkts comp failed: 0, #pkts decomp failed: 0");
        o.push_str("      #pre-frag successes: 0, #pre-frag failures: 0, #fragments created: 0\n");
        o.push_str("      #PMTUs sent: 0, #PMTUs rcvd: 0, #decapsulated frgs needing reassembly: 0\n");
        o.push_str("      #TFC rcvd: 0, #TFC sent: 0\n");
        o.push_str("      #Valid ICMP Errors rcvd: 0, #Invalid ICMP Errors rcvd: 0\n");
        let recv_errors = v.replay_drops + v.auth_drops + v.other_recv_errors;
        let _ = writeln!(o, "      #send errors: {}, #recv errors: {}", v.send_errors, recv_errors);
        let _ = writeln!(o, "      #replay failed (rcv): {}, #auth failed (rcv): {}", v.replay_drops, v.auth_drops);
        o.push('\n');
        let _ = writeln!(o, "      local crypto endpt.: {}, remote crypto endpt.: {}", v.local, v.remote);
        let _ = writeln!(
            o,
            "      path mtu {m}, ipsec overhead {}({}), media mtu {m}",
            v.overhead.0,
            v.overhead.1,
            m = v.media_mtu
        );
        o.push_str("      PMTU time remaining (sec): 0, DF policy: copy-df\n");
        o.push_str("      ICMP error validation: disabled, TFC packets: disabled\n");
        let _ = writeln!(o, "      current outbound spi: {:08X}", v.spi_out);
        let _ = writeln!(o, "      current inbound spi : {:08X}", v.spi_in);
        o.push('\n');
        let mut settings = String::from("L2L, Tunnel, ");
        if v.udp_encap {
            settings.push_str("NAT-T-Encaps, ");
        }
        if let Some(g) = v.pfs {
            let _ = write!(settings, "PFS Group {}, ", g.number());
        }
        settings.push_str("IKEv2, ");
        if v.esn {
            settings.push_str("ESN, ");
        }
        let iv = if v.encryption.is_aead() { 8 } else { 16 };
        let state = if v.draining { "draining" } else { "active" };
        for (dir, spi, rem_kb) in [("inbound", v.spi_in, v.remaining_kb_in), ("outbound", v.spi_out, v.remaining_kb_out)] {
            let _ = writeln!(o, "    {dir} esp sas:");
            let _ = writeln!(o, "      spi: 0x{spi:08X} ({spi})");
            let st = if dir == "outbound" && v.draining { "rekeyed" } else { state };
            let _ = writeln!(o, "         SA State: {st}");
            let _ = writeln!(o, "         transform: {}", transform_name(v.encryption, v.integrity));
            let _ = writeln!(o, "         in use settings ={{{settings}}}");
            let _ = writeln!(o, "         slot: 0, conn_id: {}, crypto-map: {}", v.conn_id, v.map);
            let _ = writeln!(o, "         sa timing: remaining key lifetime (kB/sec): ({}/{})", kb(rem_kb), v.remaining_secs);
            let _ = writeln!(o, "         IV size: {iv} bytes");
            let _ = writeln!(o, "         replay detection support: Y");
        }
        o.push('\n');
    }
    o
}

fn encr_name(e: Encryption) -> &'static str {
    if e.is_aead() {
        "AES-GCM"
    } else {
        "AES-CBC"
    }
}

fn hash_name(i: Option<Integrity>) -> &'static str {
    match i {
        None | Some(Integrity::Null) => "N/A",
        Some(Integrity::Sha1) => "SHA96",
        Some(Integrity::Sha256) => "SHA256",
        Some(Integrity::Sha384) => "SHA384",
        Some(Integrity::Sha512) => "SHA512",
    }
}

/// `show crypto ikev2 sa [detail]`.
pub fn ikev2_sa(views: &[IkeSaView], detail: bool) -> String {
    let mut o = String::new();
    o.push_str("IKEv2 SAs:\n\n");
    for (i, v) in views.iter().enumerate() {
        let status = if v.status == "READY" { "UP-ACTIVE" } else { "UP-IN-NEGOTIATION" };
        let _ = writeln!(o, "Session-id:{}, Status:{}, IKE count:1, CHILD count:{}", i + 1, status, v.children.len());
        o.push('\n');
        let _ = writeln!(
            o,
            "{:<10}{:<52}{:<52}{:<21}{:<15}Role",
            "Tunnel-id", "Local", "Remote", "fvrf/ivrf", "Status"
        );
        let _ = writeln!(
            o,
            "{:>9} {:<52}{:<52}{:<21}{:>9}    {}",
            v.tunnel_id,
            v.local.to_string(),
            v.remote.to_string(),
            "Global/Global",
            v.status,
            if v.initiator { "INITIATOR" } else { "RESPONDER" }
        );
        let encr = match v.encryption {
            Some(e) => format!("Encr: {}, keysize: {}", encr_name(e), e.key_bits()),
            None => "Encr: unknown".to_string(),
        };
        let dh = v.dh_group.map(|g| g.number().to_string()).unwrap_or_else(|| "?".into());
        let _ = writeln!(o, "      {encr}, Hash: {}, DH Grp:{dh}, Auth sign: PSK, Auth verify: PSK", hash_name(v.integrity));
        let _ = writeln!(o, "      Life/Active Time: {}/{} sec", v.lifetime_secs, v.active_secs);
        if detail {
            if let Some(prf) = v.prf {
                let name = match prf {
                    policy::Prf::Sha1 => "SHA1",
                    policy::Prf::Sha256 => "SHA256",
                    policy::Prf::Sha384 => "SHA384",
                    policy::Prf::Sha512 => "SHA512",
                };
                let _ = writeln!(o, "      PRF: {name}");
            }
            let _ = writeln!(o, "      Local spi: {:016X}       Remote spi: {:016X}", if v.initiator { v.spi_i } else { v.spi_r }, if v.initiator { v.spi_r } else { v.spi_i });
            match v.dpd {
                Some((t, r)) => {
                    let _ = writeln!(o, "      DPD configured for {t} seconds, retry {r}");
                }
                None => o.push_str("      DPD disabled\n"),
            }
            let _ = writeln!(o, "      NAT-T is {}", if v.nat_t { "detected" } else { "not detected" });
        }
        for c in &v.children {
            let (Some(l), Some(r)) = (c.local_ts.first(), c.remote_ts.first()) else { continue };
            let _ = writeln!(o, "Child sa: local selector  {}", selector(l));
            let _ = writeln!(o, "          remote selector {}", selector(r));
            let _ = writeln!(o, "          ESP spi in/out: 0x{:x}/0x{:x}", c.spi_in, c.spi_out);
            if detail {
                let _ = writeln!(o, "          Encr: {}, keysize: {}, esp_hmac: {}", encr_name(c.encryption), c.encryption.key_bits(), hash_name(Some(c.integrity)));
                o.push_str("          ah_hmac: None, comp: IPCOMP_NONE, mode tunnel\n");
            }
        }
        o.push('\n');
    }
    o
}

/// Totals for `show crypto ipsec stats` (live SAs plus those already removed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IpsecStats {
    pub active_tunnels: u64,
    pub previous_sas: u64,
    pub in_bytes: u64,
    pub in_packets: u64,
    pub in_replay: u64,
    pub in_auth_failures: u64,
    /// Failed the inner selector check, bad padding, unsupported next header.
    pub in_other_drops: u64,
    pub out_bytes: u64,
    pub out_packets: u64,
    pub out_errors: u64,
    /// Protected traffic that found no SA (dropped, never sent in clear).
    pub missing_sa: u64,
    pub invalid_spi: u64,
    pub malformed: u64,
    pub nat_keepalives_rcvd: u64,
    /// IKE datagrams dropped because the data path's queue to the control task was full
    /// (holdfast line; a spoofed IKE flood, see `datapath::ControlTx`).
    pub ike_queue_drops: u64,
}

/// `show crypto ipsec stats`, after the ASA's layout (lines it cannot know are left out).
pub fn ipsec_stats(s: &IpsecStats) -> String {
    let in_dropped = s.in_replay + s.in_auth_failures + s.in_other_drops + s.invalid_spi + s.malformed;
    let mut o = String::new();
    o.push_str("\nIPsec Global Statistics\n-----------------------\n");
    let _ = writeln!(o, "Active tunnels: {}", s.active_tunnels);
    let _ = writeln!(o, "Previous SAs: {}", s.previous_sas);
    o.push_str("Inbound\n");
    let _ = writeln!(o, "    Bytes: {}", s.in_bytes);
    let _ = writeln!(o, "    Packets: {}", s.in_packets);
    let _ = writeln!(o, "    Dropped packets: {in_dropped}");
    let _ = writeln!(o, "    Replay failures: {}", s.in_replay);
    let _ = writeln!(o, "    Authentications: {}", s.in_packets);
    let _ = writeln!(o, "    Authentication failures: {}", s.in_auth_failures);
    let _ = writeln!(o, "    Invalid SPI: {}", s.invalid_spi);
    let _ = writeln!(o, "    Malformed: {}", s.malformed);
    let _ = writeln!(o, "    NAT keepalives: {}", s.nat_keepalives_rcvd);
    o.push_str("Outbound\n");
    let _ = writeln!(o, "    Bytes: {}", s.out_bytes);
    let _ = writeln!(o, "    Packets: {}", s.out_packets);
    let _ = writeln!(o, "    Dropped packets: {}", s.out_errors + s.missing_sa);
    let _ = writeln!(o, "    Encryptions: {}", s.out_packets);
    let _ = writeln!(o, "    Encryption failures: {}", s.out_errors);
    let _ = writeln!(o, "Missing SA failures: {}", s.missing_sa);
    let _ = writeln!(o, "IKE receive queue drops: {}", s.ike_queue_drops);
    o
}

/// `access-list NAME extended permit ip A M B M` from two selectors (for the ipsec sa header).
pub fn acl_line(acl: &str, local: &TrafficSelector, remote: &TrafficSelector) -> String {
    let proto = match local.protocol {
        0 => "ip".to_string(),
        1 => "icmp".to_string(),
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        n => n.to_string(),
    };
    let (la, lm) = net_mask(local);
    let (ra, rm) = net_mask(remote);
    format!("access-list {acl} extended permit {proto} {la} {lm} {ra} {rm}")
}

/// Shortcut for tests and the daemon: the first address of an IP for a port.
pub fn endpoint(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// `show vpn-sessiondb anyconnect` when remote access is not configured: the ASA's answer
/// for an empty session database (the engine prints the same when it has no session).
pub fn no_vpn_sessions() -> String {
    "\nSession Type: AnyConnect\n\nINFO: There are presently no active sessions\n".to_string()
}

/// The answer to `vpn-sessiondb logoff ...`. The ASA first asks "Do you want to logoff the VPN
/// session(s)? [confirm]"; over the control socket the command is already confirmed, so only
/// the result line is printed.
pub fn logoff_result(target: &crate::control::LogoffTarget, n: usize) -> String {
    use crate::control::LogoffTarget;
    if n == 0 {
        return "INFO: There are presently no active sessions of the type specified\n".to_string();
    }
    match target {
        LogoffTarget::Name(u) => format!("INFO: Number of sessions with name \"{u}\" logged off : {n}\n"),
        LogoffTarget::Index(i) => format!("INFO: Number of sessions with index \"{i}\" logged off : {n}\n"),
        LogoffTarget::All => format!("INFO: Number of sessions logged off : {n}\n"),
    }
}

// --- JSON (`holdfast show --json ...`) ------------------------------------------------------
//
// Built from the same values as the text above (the views, the connection table's records and
// statistics, the syslog buffer), so the two forms cannot disagree.

/// Serializes a JSON answer (compact; the client pretty-prints).
pub fn to_json<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| crate::control::json_error(&format!("cannot encode: {e}")))
}

/// One end of a connection in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnEndJson {
    pub interface: String,
    pub addr: std::net::Ipv4Addr,
    pub port: u16,
}

/// One connection as `show --json conn` lists it (the fields of `show conn long`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnJson {
    pub id: u64,
    /// `TCP`, `UDP`, `ICMP` or the protocol number.
    pub protocol: String,
    /// Which side opened the connection: `outside` (ASA inbound) or `inside`.
    pub initiator: &'static str,
    pub outside: ConnEndJson,
    pub inside: ConnEndJson,
    /// The `show conn` flag letters (`V` = preserved while its tunnel is down).
    pub flags: String,
    pub bytes: u64,
    pub idle_secs: f64,
    pub uptime_secs: f64,
    /// `None` = never times out.
    pub timeout_secs: Option<u64>,
    /// The crypto map entry (`MAP:SEQ`) of a tunnelled connection.
    pub tunnel: Option<String>,
}

/// `show --json conn [address IP]` / `show --json conn count`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnTableJson {
    pub in_use: u64,
    pub most_used: u64,
    /// Absent for `count`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conns: Option<Vec<ConnJson>>,
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "TCP".into(),
        17 => "UDP".into(),
        1 => "ICMP".into(),
        n => n.to_string(),
    }
}

/// The connection table as JSON; `records` already filtered (by address) by the caller.
pub fn conn_json(eng: &flow::Engine, records: Option<&[flow::ConnRecord]>) -> String {
    conn_table_json(eng.stats().into(), |i| eng.interface_name(i), |t| eng.tunnel_name(t), records.map(|r| r.iter()))
}

/// `show --json conn [address IP]` from a copy of the table (`flows::Shared::copy_table`): the
/// JSON [`conn_json`] gives for the same entries (oldest first), built with the engine lock
/// released. Sorts `conns` in place. `copy_table` has already removed a dead conn whose
/// 5-tuple was rebuilt during the copy, so each tuple is listed once. `in_use` / `most_used`
/// count the copy, as the text header does (`flow::TableMeta::listed_counts`: a counter read
/// at the walk's end can disagree with the rows).
pub fn conn_json_copy(meta: &flow::TableMeta, now: std::time::Instant, address: Option<std::net::Ipv4Addr>, conns: &mut [flow::RawConn]) -> String {
    let counts = meta.listed_counts(conns);
    // Conn ids are unique: an unstable sort gives `Engine::conns`'s order.
    conns.sort_unstable_by_key(flow::RawConn::id);
    let recs = conns.iter().filter(|c| address.is_none_or(|a| c.involves(a))).map(|c| meta.record(now, c));
    conn_table_json(counts, |i| meta.interface_name(i), |t| meta.tunnel_name(t), Some(recs))
}

fn conn_table_json<'a, R: std::borrow::Borrow<flow::ConnRecord>>(
    counts: flow::ConnCounts,
    ifc_name: impl Fn(flow::IfcId) -> &'a str,
    tunnel_name: impl Fn(flow::TunnelId) -> &'a str,
    records: Option<impl Iterator<Item = R>>,
) -> String {
    let end = |e: &flow::Endpoint| ConnEndJson { interface: ifc_name(e.ifc).to_string(), addr: e.addr, port: e.port };
    let conns = records.map(|recs| {
        recs.map(|r| {
            let r = r.borrow();
            ConnJson {
                id: r.info.id,
                protocol: proto_name(r.info.protocol),
                initiator: if r.info.inbound { "outside" } else { "inside" },
                outside: end(&r.info.outside),
                inside: end(&r.info.inside),
                flags: r.flags.clone(),
                bytes: r.bytes,
                idle_secs: r.idle.as_secs_f64(),
                uptime_secs: r.uptime.as_secs_f64(),
                timeout_secs: r.timeout.map(|d| d.as_secs()),
                tunnel: r.info.tunnel.map(|t| tunnel_name(t).to_string()),
            }
        })
        .collect()
    });
    to_json(&ConnTableJson { in_use: counts.in_use, most_used: counts.most_used, conns })
}

/// `show --json asp drop`: every reason (zeros included), keyed by the ASA keyword.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AspDropJson {
    pub frame_drops: std::collections::BTreeMap<&'static str, u64>,
    pub flow_drops: std::collections::BTreeMap<&'static str, u64>,
    /// As the text prints it (`Last clearing: ...`).
    pub last_clearing: String,
}

pub fn asp_drop_json(stats: &flow::Stats, text: &str) -> String {
    let last_clearing = text.lines().find_map(|l| l.strip_prefix("Last clearing: ")).unwrap_or("").to_string();
    to_json(&AspDropJson {
        frame_drops: flow::DropReason::ALL.iter().map(|r| (r.keyword(), stats.drops(*r))).collect(),
        flow_drops: [("tunnel-torn-down", stats.flows_tunnel_torn_down)].into_iter().collect(),
        last_clearing,
    })
}

/// `show --json asp table vpn-context`.
pub fn vpn_context_json(ctxs: &[crate::flows::VpnContext]) -> String {
    let v: Vec<serde_json::Value> = ctxs
        .iter()
        .map(|c| {
            serde_json::json!({
                "ctx": c.ctx,
                "peer": c.peer,
                "direction": if c.decrypt { "inbound" } else { "outbound" },
                "spi": format!("0x{:08X}", c.spi),
                "natt": c.natt,
                "preserve": c.preserve,
                "group": c.group,
                "packets": c.packets,
                "bad_packets": c.bad_packets,
                "bad_crypto": c.bad_crypto,
                "rekeys": c.rekeys,
            })
        })
        .collect();
    to_json(&v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_packets::tcp_syn;
    use policy::Ipv4Net;

    fn ts(s: &str, len: u8) -> TrafficSelector {
        TrafficSelector::from_net(Ipv4Net::new(s.parse().unwrap(), len), None)
    }

    fn ipsec_view() -> IpsecSaView {
        IpsecSaView {
            interface: "outside".into(),
            map: "MAP".into(),
            seq: 10,
            acl_line: Some(acl_line("L2L", &ts("10.1.0.0", 24), &ts("10.2.0.0", 24))),
            local: "192.0.2.1:4500".parse().unwrap(),
            remote: "192.0.2.2:4500".parse().unwrap(),
            local_ts: ts("10.1.0.0", 24),
            remote_ts: ts("10.2.0.0", 24),
            spi_in: 0x8A9C_7D21,
            spi_out: 0x4F2E_1A3B,
            encryption: Encryption::AesGcm256,
            integrity: Integrity::Null,
            esn: false,
            pfs: Some(DhGroup::Ecp256),
            udp_encap: true,
            conn_id: 1,
            remaining_secs: 3590,
            remaining_kb_in: Some(4_607_990),
            remaining_kb_out: None,
            encaps: 12,
            decaps: 11,
            send_errors: 0,
            replay_drops: 2,
            auth_drops: 1,
            other_recv_errors: 0,
            overhead: (63, 35),
            media_mtu: 1500,
            draining: false,
        }
    }

    #[test]
    fn ipsec_sa_golden() {
        let got = ipsec_sa(&[ipsec_view()]);
        let want = "\
interface: outside
    Crypto map tag: MAP, seq num: 10, local addr: 192.0.2.1

      access-list L2L extended permit ip 10.1.0.0 255.255.255.0 10.2.0.0 255.255.255.0
      local ident (addr/mask/prot/port): (10.1.0.0/255.255.255.0/0/0)
      remote ident (addr/mask/prot/port): (10.2.0.0/255.255.255.0/0/0)
      current_peer: 192.0.2.2


      #pkts encaps: 12, #pkts encrypt: 12, #pkts digest: 12
      #pkts decaps: 11, #pkts decrypt: 11, #pkts verify: 11
      #pkts compressed: 0, #pkts decompressed: 0
      #pkts not compressed: 12, #pkts comp failed: 0, #pkts decomp failed: 0
      #pre-frag successes: 0, #pre-frag failures: 0, #fragments created: 0
      #PMTUs sent: 0, #PMTUs rcvd: 0, #decapsulated frgs needing reassembly: 0
      #TFC rcvd: 0, #TFC sent: 0
      #Valid ICMP Errors rcvd: 0, #Invalid ICMP Errors rcvd: 0
      #send errors: 0, #recv errors: 3
      #replay failed (rcv): 2, #auth failed (rcv): 1

      local crypto endpt.: 192.0.2.1:4500, remote crypto endpt.: 192.0.2.2:4500
      path mtu 1500, ipsec overhead 63(35), media mtu 1500
      PMTU time remaining (sec): 0, DF policy: copy-df
      ICMP error validation: disabled, TFC packets: disabled
      current outbound spi: 4F2E1A3B
      current inbound spi : 8A9C7D21

    inbound esp sas:
      spi: 0x8A9C7D21 (2325511457)
         SA State: active
         transform: esp-aes-gcm-256 esp-null-hmac no compression
         in use settings ={L2L, Tunnel, NAT-T-Encaps, PFS Group 19, IKEv2, }
         slot: 0, conn_id: 1, crypto-map: MAP
         sa timing: remaining key lifetime (kB/sec): (4607990/3590)
         IV size: 8 bytes
         replay detection support: Y
    outbound esp sas:
      spi: 0x4F2E1A3B (1328421435)
         SA State: active
         transform: esp-aes-gcm-256 esp-null-hmac no compression
         in use settings ={L2L, Tunnel, NAT-T-Encaps, PFS Group 19, IKEv2, }
         slot: 0, conn_id: 1, crypto-map: MAP
         sa timing: remaining key lifetime (kB/sec): (unlimited/3590)
         IV size: 8 bytes
         replay detection support: Y

";
        assert_eq!(got, want);
        assert_eq!(ipsec_sa(&[]), "There are no ipsec sas\n");
    }

    #[test]
    fn ipsec_stats_golden() {
        let s = IpsecStats {
            active_tunnels: 1,
            previous_sas: 2,
            in_bytes: 1000,
            in_packets: 10,
            in_replay: 1,
            in_auth_failures: 2,
            in_other_drops: 0,
            out_bytes: 2000,
            out_packets: 20,
            out_errors: 0,
            missing_sa: 3,
            invalid_spi: 4,
            malformed: 0,
            nat_keepalives_rcvd: 5,
            ike_queue_drops: 6,
        };
        let want = "
IPsec Global Statistics
-----------------------
Active tunnels: 1
Previous SAs: 2
Inbound
    Bytes: 1000
    Packets: 10
    Dropped packets: 7
    Replay failures: 1
    Authentications: 10
    Authentication failures: 2
    Invalid SPI: 4
    Malformed: 0
    NAT keepalives: 5
Outbound
    Bytes: 2000
    Packets: 20
    Dropped packets: 3
    Encryptions: 20
    Encryption failures: 0
Missing SA failures: 3
IKE receive queue drops: 6
";
        assert_eq!(ipsec_stats(&s), want);
    }

    #[test]
    fn transforms() {
        assert_eq!(transform_name(Encryption::AesCbc256, Integrity::Sha256), "esp-aes-256 esp-sha-256-hmac no compression");
        assert_eq!(transform_name(Encryption::AesCbc128, Integrity::Sha1), "esp-aes esp-sha-hmac no compression");
    }

    #[test]
    fn ikev2_sa_golden() {
        let v = IkeSaView {
            tunnel_id: 1,
            local: "192.0.2.1:500".parse().unwrap(),
            remote: "192.0.2.2:500".parse().unwrap(),
            status: "READY".into(),
            initiator: true,
            encryption: Some(Encryption::AesGcm256),
            integrity: None,
            prf: Some(policy::Prf::Sha256),
            dh_group: Some(DhGroup::Curve25519),
            lifetime_secs: 86400,
            active_secs: 12,
            spi_i: 0x1122_3344_5566_7788,
            spi_r: 0x99AA_BBCC_DDEE_FF00,
            children: vec![ChildSummary {
                local_ts: vec![ts("10.1.0.0", 24)],
                remote_ts: vec![ts("10.2.0.0", 24)],
                spi_in: 0x8a9c7d21,
                spi_out: 0x4f2e1a3b,
                encryption: Encryption::AesGcm256,
                integrity: Integrity::Null,
            }],
            dpd: Some((10, 2)),
            nat_t: false,
        };
        let got = ikev2_sa(std::slice::from_ref(&v), false);
        let want = "IKEv2 SAs:

Session-id:1, Status:UP-ACTIVE, IKE count:1, CHILD count:1

Tunnel-id Local                                               Remote                                              fvrf/ivrf            Status         Role
        1 192.0.2.1:500                                       192.0.2.2:500                                       Global/Global            READY    INITIATOR
      Encr: AES-GCM, keysize: 256, Hash: N/A, DH Grp:31, Auth sign: PSK, Auth verify: PSK
      Life/Active Time: 86400/12 sec
Child sa: local selector  10.1.0.0/0 - 10.1.0.255/65535
          remote selector 10.2.0.0/0 - 10.2.0.255/65535
          ESP spi in/out: 0x8a9c7d21/0x4f2e1a3b

";
        assert_eq!(got, want);
        let d = ikev2_sa(&[v], true);
        assert!(d.contains("      Local spi: 1122334455667788       Remote spi: 99AABBCCDDEEFF00\n"), "{d}");
        assert!(d.contains("DPD configured for 10 seconds, retry 2"), "{d}");
        assert!(d.contains("      PRF: SHA256\n"), "{d}");
        assert!(d.contains("          Encr: AES-GCM, keysize: 256, esp_hmac: N/A\n"), "{d}");
        assert_eq!(ikev2_sa(&[], false), "IKEv2 SAs:\n\n");
    }

    #[test]
    fn logoff_lines() {
        use crate::control::LogoffTarget;
        assert_eq!(logoff_result(&LogoffTarget::Name("vpn".into()), 1), "INFO: Number of sessions with name \"vpn\" logged off : 1\n");
        assert_eq!(logoff_result(&LogoffTarget::Index(4), 1), "INFO: Number of sessions with index \"4\" logged off : 1\n");
        assert_eq!(logoff_result(&LogoffTarget::All, 3), "INFO: Number of sessions logged off : 3\n");
        assert_eq!(logoff_result(&LogoffTarget::All, 0), "INFO: There are presently no active sessions of the type specified\n");
        assert!(no_vpn_sessions().contains("no active sessions"));
    }

    #[test]
    fn conn_and_asp_drop_json_shapes() {
        let now = crate::clock::now();
        let mut e = flow::Engine::new(now, flow::Config::default());
        let ifcs = flow::IfcPair { outside: e.interface("outside").unwrap(), inside: e.interface("inside").unwrap() };
        let t = e.tunnel("MAP:10").unwrap();
        e.tunnel_up(now, t, &[], &[]);
        assert_eq!(e.handle_packet(now, flow::Dir::Outbound, ifcs, flow::Route::ToTunnel(t), &tcp_syn()), flow::Verdict::Forward);
        // A non-SYN first segment of another flow: a tcp-not-syn drop.
        let mut ack = tcp_syn();
        ack[21] = 0x41;
        ack[33] = 0x10;
        assert!(matches!(e.handle_packet(now, flow::Dir::Outbound, ifcs, flow::Route::ToTunnel(t), &ack), flow::Verdict::Drop(_)));
        let recs = e.conns(now);
        let v: serde_json::Value = serde_json::from_str(&conn_json(&e, Some(&recs))).unwrap();
        assert_eq!(v["in_use"], 1);
        assert_eq!(v["most_used"], 1);
        let c = &v["conns"][0];
        assert_eq!(c["protocol"], "TCP");
        assert_eq!(c["initiator"], "inside");
        assert_eq!(c["inside"]["addr"], "10.1.0.5");
        assert_eq!(c["inside"]["port"], 40000);
        assert_eq!(c["inside"]["interface"], "inside");
        assert_eq!(c["outside"]["addr"], "10.2.0.9");
        assert_eq!(c["tunnel"], "MAP:10");
        assert_eq!(c["flags"], recs[0].flags.as_str());
        // The text form lists the same conn.
        assert!(e.show_conn(now, flow::text::ConnView::Brief).contains("10.2.0.9:80"));
        let count: serde_json::Value = serde_json::from_str(&conn_json(&e, None)).unwrap();
        assert_eq!(count, serde_json::json!({"in_use": 1, "most_used": 1}));
        let text = e.show_asp_drop();
        let d: serde_json::Value = serde_json::from_str(&asp_drop_json(e.stats(), &text)).unwrap();
        assert_eq!(d["frame_drops"]["tcp-not-syn"], 1, "{d}");
        assert_eq!(d["frame_drops"].as_object().unwrap().len(), flow::DropReason::ALL.len());
        assert_eq!(d["flow_drops"]["tunnel-torn-down"], 0);
        assert!(text.contains("(tcp-not-syn)"));
    }

    #[test]
    fn sa_views_and_logging_json_shapes() {
        let v: serde_json::Value = serde_json::from_str(&to_json(&[ipsec_view()])).unwrap();
        let sa = &v[0];
        assert_eq!(sa["spi_in"], ipsec_view().spi_in);
        assert_eq!(sa["remote"], ipsec_view().remote.to_string());
        assert_eq!(sa["encaps"], ipsec_view().encaps);
        assert_eq!(sa["local_ts"]["start_addr"], ipsec_view().local_ts.start_addr.to_string());
        let ctx = crate::flows::VpnContext {
            ctx: 3,
            peer: "192.0.2.2".parse().unwrap(),
            decrypt: true,
            spi: 0xAB,
            natt: true,
            preserve: true,
            group: 1,
            packets: 9,
            bad_packets: 0,
            bad_crypto: 0,
            rekeys: 1,
        };
        let c: serde_json::Value = serde_json::from_str(&vpn_context_json(&[ctx])).unwrap();
        assert_eq!(c[0]["spi"], "0x000000AB");
        assert_eq!(c[0]["direction"], "inbound");
        assert_eq!(c[0]["preserve"], true);
        let log = crate::syslog::Syslog::new(crate::syslog::SyslogConfig {
            enabled: true,
            hosts: vec!["127.0.0.1:9".parse().unwrap()],
            trap_level: 4,
            buffered_level: 6,
            timestamp: false,
            stderr: false,
        });
        log.log(crate::syslog::phase1_completed("g", "192.0.2.2".parse().unwrap()));
        let snap = log.snapshot();
        let j: serde_json::Value = serde_json::from_str(&to_json(&snap)).unwrap();
        assert_eq!(j["lines"][0], "%ASA-5-713119: Group = g, IP = 192.0.2.2, PHASE 1 COMPLETED");
        assert_eq!(j["trap"]["level"], "warnings");
        assert_eq!(j["trap"]["hosts"][0], "127.0.0.1 udp/9");
        assert_eq!(j["buffered_messages"], 1);
        // The text is rendered from the same snapshot.
        assert_eq!(log.show_logging(), snap.text());
        assert!(snap.text().contains("Trap logging: level warnings, facility 20, 0 messages logged"));
    }
}
