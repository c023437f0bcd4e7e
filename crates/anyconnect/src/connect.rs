//! `CONNECT /CSCOSSLC/tunnel`: the request headers (anyconnect.md §2), the DTLS mode and
//! cipher choice, and the `200 CONNECTED` response.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::GroupPolicy;
use crate::http::{Request, Response};
use crate::mtu::MtuPlan;

/// The tunnel path; ocserv answers 404 to any other CONNECT target.
pub const TUNNEL_PATH: &str = "/CSCOSSLC/tunnel";

/// What the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// `Cookie: webvpn=<cookie>`.
    pub cookie: Option<String>,
    pub hostname: Option<String>,
    /// X-CSTP-Base-MTU (the client's path-MTU estimate).
    pub base_mtu: Option<u16>,
    /// X-CSTP-MTU (legacy request; informational).
    pub mtu: Option<u16>,
    /// X-CSTP-Address: the address the client had (reconnect).
    pub address: Option<Ipv4Addr>,
    /// X-DTLS-Master-Secret (48 bytes), for legacy DTLS.
    pub master_secret: Option<[u8; 48]>,
    /// X-DTLS-CipherSuite entries in client order.
    pub dtls_ciphers: Vec<String>,
    /// X-DTLS12-CipherSuite entries in client order.
    pub dtls12_ciphers: Vec<String>,
    /// The User-Agent starts with "Open AnyConnect" (openconnect), whose DTLS DPD handling
    /// is known; see [`ConnectRequest::is_openconnect`].
    pub openconnect: bool,
}

/// Malformed tunnel request headers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("malformed {0} header")]
    BadHeader(&'static str),
}

impl ConnectRequest {
    pub fn parse(req: &Request<'_>) -> Result<Self, ConnectError> {
        let num = |name: &'static str| -> Result<Option<u16>, ConnectError> {
            req.header(name)
                .map(|v| {
                    v.trim()
                        .parse::<u16>()
                        .map_err(|_| ConnectError::BadHeader(name))
                })
                .transpose()
        };
        let list = |name: &str| -> Vec<String> {
            req.header(name)
                .map(|v| {
                    v.split(':')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default()
        };
        let address = req
            .header("X-CSTP-Address")
            .map(|v| {
                v.trim()
                    .parse::<Ipv4Addr>()
                    .map_err(|_| ConnectError::BadHeader("X-CSTP-Address"))
            })
            .transpose()?;
        let master_secret = match req.header("X-DTLS-Master-Secret") {
            None => None,
            Some(v) => {
                let mut ms = [0u8; 48];
                hex::decode_to_slice(v.trim(), &mut ms)
                    .map_err(|_| ConnectError::BadHeader("X-DTLS-Master-Secret"))?;
                Some(ms)
            }
        };
        Ok(Self {
            cookie: req.cookie("webvpn").map(String::from),
            hostname: req.header("X-CSTP-Hostname").map(String::from),
            base_mtu: num("X-CSTP-Base-MTU")?,
            mtu: num("X-CSTP-MTU")?,
            address,
            master_secret,
            dtls_ciphers: list("X-DTLS-CipherSuite"),
            dtls12_ciphers: list("X-DTLS12-CipherSuite"),
            openconnect: req.header("User-Agent").is_some_and(|u| u.trim_start().starts_with("Open AnyConnect")),
        })
    }

    /// openconnect by its User-Agent, or by offering PSK-NEGOTIATE, which only openconnect
    /// does (anyconnect.md §4). Anything else is treated as a Cisco client.
    pub fn is_openconnect(&self) -> bool {
        self.openconnect || self.offers_psk()
    }

    /// The client offered PSK-NEGOTIATE (openconnect): DTLS keyed from the TLS exporter.
    pub fn offers_psk(&self) -> bool {
        self.dtls_ciphers.iter().any(|c| c == "PSK-NEGOTIATE")
    }
}

/// Legacy (session-resumption) DTLS ciphers the engine can choose, by the names the clients
/// use. The I/O layer installs a resumable session with [`LegacyCipher::openssl_name`] and the
/// client's master secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LegacyCipher {
    /// `OC-DTLS1_2-AES256-GCM` in X-DTLS-CipherSuite: TLS_RSA_WITH_AES_256_GCM_SHA384 (0x009d)
    /// over DTLS 1.2.
    OcDtls12Aes256Gcm,
    /// `OC-DTLS1_2-AES128-GCM`: TLS_RSA_WITH_AES_128_GCM_SHA256 (0x009c) over DTLS 1.2.
    OcDtls12Aes128Gcm,
    /// `ECDHE-RSA-AES256-GCM-SHA384` in X-DTLS12-CipherSuite (Cisco clients), DTLS 1.2.
    Dtls12EcdheRsaAes256Gcm,
    /// `ECDHE-RSA-AES128-GCM-SHA256` in X-DTLS12-CipherSuite, DTLS 1.2.
    Dtls12EcdheRsaAes128Gcm,
    /// `AES256-SHA`: Cisco's pre-RFC "DTLS 0.9" (DTLS1_BAD_VER) with AES-256-CBC/SHA1.
    Aes256Sha,
    /// `AES128-SHA`: DTLS 0.9 with AES-128-CBC/SHA1.
    Aes128Sha,
}

impl LegacyCipher {
    /// The server preference used by default: only the DTLS 1.2 AES-GCM suites (verified with
    /// OpenSSL 3 against openconnect 9.01). DTLS 0.9 needs DTLS1_BAD_VER on the server side,
    /// which the I/O layer must enable explicitly before adding `Aes*Sha` to the config.
    pub const DEFAULT_PREFERENCE: [LegacyCipher; 4] = [
        Self::OcDtls12Aes256Gcm,
        Self::OcDtls12Aes128Gcm,
        Self::Dtls12EcdheRsaAes256Gcm,
        Self::Dtls12EcdheRsaAes128Gcm,
    ];

    /// The name in the client's cipher list and in our response header.
    pub fn client_name(self) -> &'static str {
        match self {
            Self::OcDtls12Aes256Gcm => "OC-DTLS1_2-AES256-GCM",
            Self::OcDtls12Aes128Gcm => "OC-DTLS1_2-AES128-GCM",
            Self::Dtls12EcdheRsaAes256Gcm => "ECDHE-RSA-AES256-GCM-SHA384",
            Self::Dtls12EcdheRsaAes128Gcm => "ECDHE-RSA-AES128-GCM-SHA256",
            Self::Aes256Sha => "AES256-SHA",
            Self::Aes128Sha => "AES128-SHA",
        }
    }

    /// The OpenSSL cipher the fake resumable session must carry.
    pub fn openssl_name(self) -> &'static str {
        match self {
            Self::OcDtls12Aes256Gcm => "AES256-GCM-SHA384",
            Self::OcDtls12Aes128Gcm => "AES128-GCM-SHA256",
            Self::Dtls12EcdheRsaAes256Gcm => "ECDHE-RSA-AES256-GCM-SHA384",
            Self::Dtls12EcdheRsaAes128Gcm => "ECDHE-RSA-AES128-GCM-SHA256",
            Self::Aes256Sha => "AES256-SHA",
            Self::Aes128Sha => "AES128-SHA",
        }
    }

    /// True for the DTLS 0.9 (DTLS1_BAD_VER, 0x0100) suites; false for DTLS 1.2.
    pub fn is_dtls09(self) -> bool {
        matches!(self, Self::Aes256Sha | Self::Aes128Sha)
    }

    /// Offered in X-DTLS12-CipherSuite (answered with the same header name) rather than
    /// X-DTLS-CipherSuite.
    pub fn in_dtls12_header(self) -> bool {
        matches!(
            self,
            Self::Dtls12EcdheRsaAes256Gcm | Self::Dtls12EcdheRsaAes128Gcm
        )
    }

    /// Name for the `show vpn-sessiondb` Encryption/Hashing columns.
    pub fn show_names(self) -> (&'static str, &'static str) {
        match self {
            Self::OcDtls12Aes256Gcm | Self::Dtls12EcdheRsaAes256Gcm => ("AES-GCM-256", "SHA384"),
            Self::OcDtls12Aes128Gcm | Self::Dtls12EcdheRsaAes128Gcm => ("AES-GCM-128", "SHA256"),
            Self::Aes256Sha => ("AES256", "SHA1"),
            Self::Aes128Sha => ("AES128", "SHA1"),
        }
    }
}

/// The first cipher of our preference `allowed` that the client offered in the header the
/// cipher belongs to.
pub fn choose_legacy(req: &ConnectRequest, allowed: &[LegacyCipher]) -> Option<LegacyCipher> {
    allowed.iter().copied().find(|c| {
        let list = if c.in_dtls12_header() {
            &req.dtls12_ciphers
        } else {
            &req.dtls_ciphers
        };
        list.iter().any(|o| o == c.client_name())
    })
}

/// How the I/O layer keys the DTLS channel of a tunnel.
#[derive(Clone, PartialEq, Eq)]
pub enum DtlsKeying {
    /// PSK-NEGOTIATE: the client puts `app_id` into its ClientHello session_id; the PSK is the
    /// 32-byte RFC 5705 exporter of the CSTP TLS session, label `EXPORTER-openconnect-psk`,
    /// no context. Negotiate an AES-GCM PSK suite (the MTU assumes AES-GCM overhead).
    Psk { app_id: [u8; 32] },
    /// Legacy: accept an abbreviated handshake resuming `session_id` with the client's
    /// `master_secret` and `cipher`.
    Legacy {
        session_id: [u8; 32],
        master_secret: [u8; 48],
        cipher: LegacyCipher,
    },
}

impl std::fmt::Debug for DtlsKeying {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key material never reaches a log (DESIGN habit 7).
        match self {
            Self::Psk { .. } => f.write_str("Psk { .. }"),
            Self::Legacy { cipher, .. } => write!(f, "Legacy {{ cipher: {cipher:?}, .. }}"),
        }
    }
}

impl DtlsKeying {
    /// The 32 bytes the client sends as its ClientHello session_id.
    pub fn demux_id(&self) -> &[u8; 32] {
        match self {
            Self::Psk { app_id } => app_id,
            Self::Legacy { session_id, .. } => session_id,
        }
    }
}

/// Everything the `200 CONNECTED` response says.
pub struct Connected<'a> {
    pub address: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub policy: &'a GroupPolicy,
    pub mtu: MtuPlan,
    pub dtls: Option<&'a DtlsKeying>,
    pub dtls_port: u16,
    /// Seconds the session survives a dropped connection (X-CSTP-Disconnected-Timeout).
    pub disconnected_timeout: Duration,
    /// Cap on X-DTLS-DPD (see `Config::dtls_dpd_max`).
    pub dtls_dpd_max: Option<Duration>,
    /// Floor under a capped X-DTLS-DPD ([`CISCO_DPD_FLOOR`] for Cisco clients, none for
    /// openconnect).
    pub dtls_dpd_floor: Option<Duration>,
    /// Seconds left until the session timeout (X-CSTP-Session-Timeout; None = none).
    pub session_timeout_left: Option<Duration>,
}

/// Builds `HTTP/1.1 200 CONNECTED` with the X-CSTP-/X-DTLS- headers (anyconnect.md §2).
pub fn connected_response(c: &Connected<'_>) -> Vec<u8> {
    let secs =
        |d: Option<Duration>| d.map_or_else(|| "none".to_string(), |d| d.as_secs().to_string());
    let p = c.policy;
    let mut r = Response::new(200, "CONNECTED")
        .without_content_length()
        .header("Server", "holdfast")
        .header("X-CSTP-Version", "1")
        .header("X-CSTP-Protocol", "Copyright (c) 2004 Cisco Systems, Inc.")
        .header("X-CSTP-Address", c.address.to_string())
        .header("X-CSTP-Netmask", c.netmask.to_string());
    for d in &p.dns {
        r = r.header("X-CSTP-DNS", d.to_string());
    }
    if let Some(dom) = &p.default_domain {
        r = r.header("X-CSTP-Default-Domain", dom);
    }
    for n in &p.split_include {
        r = r.header(
            "X-CSTP-Split-Include",
            format!("{}/{}", n.addr, n.netmask()),
        );
    }
    for n in &p.split_exclude {
        r = r.header(
            "X-CSTP-Split-Exclude",
            format!("{}/{}", n.addr, n.netmask()),
        );
    }
    let idle = secs(p.idle_timeout);
    r = r
        .header("X-CSTP-Lease-Duration", "1209600")
        .header("X-CSTP-Session-Timeout", secs(c.session_timeout_left))
        .header("X-CSTP-Idle-Timeout", &idle)
        .header(
            "X-CSTP-Disconnected-Timeout",
            c.disconnected_timeout.as_secs().to_string(),
        )
        .header("X-CSTP-Keep", "true")
        .header("X-CSTP-Tunnel-All-DNS", "false")
        .header(
            "X-CSTP-Rekey-Time",
            p.rekey_time.map_or(0, |t| t.as_secs()).to_string(),
        )
        .header("X-CSTP-Rekey-Method", advertised_rekey_method(&p.rekey_method))
        .header("X-CSTP-DPD", secs(p.dpd_client).replace("none", "0"))
        .header("X-CSTP-Keepalive", secs(p.keepalive).replace("none", "0"))
        .header("X-CSTP-Base-MTU", c.mtu.base.to_string())
        .header("X-CSTP-MTU", c.mtu.advertised_cstp.to_string());
    // Client settings an ASA always sends Cisco clients, at the ASA's defaults for what
    // holdfast does not configure (no smartcard policy, no proxy lockdown, no quarantine, no
    // always-on, no client bypass; the licence is accepted). openconnect ignores X-CSTP-
    // headers it does not know.
    for (name, value) in ASA_CLIENT_DEFAULTS {
        r = r.header(name, value);
    }
    if let (Some(k), Some(dmtu)) = (c.dtls, c.mtu.advertised_dtls) {
        r = r
            .header("X-DTLS-Port", c.dtls_port.to_string())
            .header(
                "X-DTLS-DPD",
                secs(dtls_dpd(p.dpd_client, c.dtls_dpd_max, c.dtls_dpd_floor)).replace("none", "0"),
            )
            .header("X-DTLS-Keepalive", secs(p.keepalive).replace("none", "0"))
            .header(
                "X-DTLS-Rekey-Time",
                p.rekey_time.map_or(0, |t| t.as_secs()).to_string(),
            )
            .header("X-DTLS-Rekey-Method", advertised_rekey_method(&p.rekey_method))
            .header("X-DTLS-MTU", dmtu.to_string());
        match k {
            DtlsKeying::Psk { app_id } => {
                r = r
                    .header("X-DTLS-App-ID", hex::encode(app_id))
                    .header("X-DTLS-CipherSuite", "PSK-NEGOTIATE");
            }
            DtlsKeying::Legacy {
                session_id, cipher, ..
            } => {
                r = r.header("X-DTLS-Session-ID", hex::encode(session_id));
                let h = if cipher.in_dtls12_header() {
                    "X-DTLS12-CipherSuite"
                } else {
                    "X-DTLS-CipherSuite"
                };
                r = r.header(h, cipher.client_name());
            }
        }
    }
    r.to_bytes()
}

/// The fixed CONNECT headers of [`connected_response`] (values as anylink and the ASA reply
/// shapes in csc-review F7 send them; ocserv sends Smartcard-Removal-Disconnect and License).
const ASA_CLIENT_DEFAULTS: [(&str, &str); 7] = [
    ("X-CSTP-Smartcard-Removal-Disconnect", "true"),
    ("X-CSTP-MSIE-Proxy-Lockdown", "false"),
    ("X-CSTP-Routing-Filtering-Ignore", "false"),
    ("X-CSTP-Quarantine", "false"),
    ("X-CSTP-Disable-Always-On-VPN", "false"),
    ("X-CSTP-Client-Bypass-Protocol", "false"),
    ("X-CSTP-License", "accept"),
];

/// The rekey method told to the client. `ssl` is sent as `new-tunnel`: the ASA CLI guide
/// says both make a Cisco client establish a new tunnel rather than renegotiate, so Cisco
/// clients see no difference, while openconnect takes `ssl` literally and renegotiates TLS
/// 1.2, which our OpenSSL 3 server refuses (client-initiated renegotiation is off by default)
/// and which would then cost the tunnel. ocserv does the same downgrade when it cannot offer
/// safe renegotiation. A new tunnel reuses the cookie and keeps address and MTU.
pub fn advertised_rekey_method(policy: &str) -> &str {
    if policy.eq_ignore_ascii_case("ssl") {
        "new-tunnel"
    } else {
        policy
    }
}

/// The DTLS DPD interval told to the client: the policy's client DPD, capped. openconnect
/// declares DTLS dead after 2 x this interval without a DTLS datagram (anyconnect.md §5) and
/// only then sends its own traffic over TLS; a short DTLS DPD is what moves the client->server
/// direction to TLS quickly (the server->client direction is the engine's own fallback).
/// A disabled client DPD stays disabled. The cap never takes the value below `floor`, nor
/// below what the policy itself says.
fn dtls_dpd(client: Option<Duration>, cap: Option<Duration>, floor: Option<Duration>) -> Option<Duration> {
    match (client, cap) {
        (Some(c), Some(m)) => Some(c.min(m.max(floor.unwrap_or_default()))),
        (c, _) => c,
    }
}

/// The smallest DPD interval an ASA accepts ("client seconds ... from 5 to 3600", ASA CLI
/// guide, Dead Peer Detection), hence the smallest any Cisco client has ever been sent; what
/// one does with less is unknown, so the holdfast cap stops here for them. The gateway's own
/// detection of a dead DTLS path (the fallback timing) does not depend on this value.
pub const CISCO_DPD_FLOOR: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse;

    pub(crate) const OPENCONNECT_CONNECT: &str = "CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\n\
Host: 192.0.2.1\r\n\
User-Agent: Open AnyConnect VPN Agent v9.01-3\r\n\
Cookie: webvpn=00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF\r\n\
X-CSTP-Version: 1\r\n\
X-CSTP-Hostname: client\r\n\
X-CSTP-Base-MTU: 1500\r\n\
X-CSTP-MTU: 1390\r\n\
X-CSTP-Address-Type: IPv6,IPv4\r\n\
X-DTLS-Master-Secret: 0102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F202122232425262728292A2B2C2D2E2F30\r\n\
X-DTLS-CipherSuite: PSK-NEGOTIATE:OC-DTLS1_2-AES256-GCM:OC2-DTLS1_2-CHACHA20-POLY1305:OC-DTLS1_2-AES128-GCM:DHE-RSA-AES256-SHA:DHE-RSA-AES128-SHA:AES256-SHA:AES128-SHA\r\n\
X-DTLS12-CipherSuite: ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-GCM-SHA256\r\n\
X-CSTP-Accept-Encoding: oc-lz4,lzs\r\n\r\n";

    #[test]
    fn parses_openconnect_headers() {
        let req = parse(OPENCONNECT_CONNECT.as_bytes()).unwrap().unwrap();
        let c = ConnectRequest::parse(&req).unwrap();
        assert_eq!(c.base_mtu, Some(1500));
        assert_eq!(c.mtu, Some(1390));
        assert!(c.offers_psk());
        assert_eq!(c.master_secret.unwrap()[0], 1);
        assert_eq!(c.master_secret.unwrap()[47], 0x30);
        assert_eq!(c.cookie.as_deref().map(str::len), Some(64));
        assert_eq!(c.address, None);
        assert_eq!(
            choose_legacy(&c, &LegacyCipher::DEFAULT_PREFERENCE),
            Some(LegacyCipher::OcDtls12Aes256Gcm)
        );
        // Server preference order wins over client order.
        let pref = [LegacyCipher::Aes128Sha, LegacyCipher::OcDtls12Aes256Gcm];
        assert_eq!(choose_legacy(&c, &pref), Some(LegacyCipher::Aes128Sha));
        // Only DTLS12 names offered by a Cisco-style client.
        let mut cisco = c.clone();
        cisco.dtls_ciphers.clear();
        assert_eq!(
            choose_legacy(&cisco, &LegacyCipher::DEFAULT_PREFERENCE),
            Some(LegacyCipher::Dtls12EcdheRsaAes256Gcm)
        );
        cisco.dtls12_ciphers.clear();
        assert_eq!(
            choose_legacy(&cisco, &LegacyCipher::DEFAULT_PREFERENCE),
            None
        );
    }

    #[test]
    fn malformed_headers() {
        for (h, name) in [
            ("X-CSTP-Base-MTU: big", "X-CSTP-Base-MTU"),
            ("X-CSTP-MTU: 70000", "X-CSTP-MTU"),
            ("X-CSTP-Address: 10.0.0", "X-CSTP-Address"),
            ("X-DTLS-Master-Secret: 0102", "X-DTLS-Master-Secret"),
            ("X-DTLS-Master-Secret: zz", "X-DTLS-Master-Secret"),
        ] {
            let s = format!("CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\n{h}\r\n\r\n");
            let req = parse(s.as_bytes()).unwrap().unwrap();
            assert_eq!(
                ConnectRequest::parse(&req),
                Err(ConnectError::BadHeader(name))
            );
        }
    }
}
