//! MTU arithmetic for both channels, from the negotiated ciphers.
//!
//! TLS (asa.md §6): the ASA derives the CSTP MTU from `sysopt connection tcpmss`, assuming one
//! TLS record per TCP segment: `tcpmss - 5 (TLS header) - 8 (CSTP header) - padding - hash`,
//! e.g. RC4-SHA `1380 - 5 - 8 - 0 - 20 = 1347`. We generalise "padding" and "hash" to the
//! record expansion of the negotiated cipher (explicit IV/nonce, worst-case CBC padding, MAC or
//! AEAD tag, TLS 1.3 inner content type).
//!
//! DTLS (anyconnect.md §4, as ocserv computes it): `link MTU - DTLS record overhead - 1 (type
//! byte) - 28 (IPv4 + UDP)`, e.g. AES-GCM `1500 - 37 - 1 - 28 = 1434`, AES-CBC-SHA1
//! `1500 - 65 - 1 - 28 = 1406`.
//!
//! Which cipher, when: a legacy (session-resumption) DTLS cipher is chosen by the server in the
//! CONNECT exchange, so X-DTLS-MTU uses exactly that cipher. In PSK-NEGOTIATE mode the suite is
//! negotiated by the DTLS handshake *after* the `200 CONNECTED` that carries X-DTLS-MTU, so the
//! MTU is computed for the largest expansion among the suites the server's PSK context accepts
//! ([`PSK_DTLS_SUITES`], all AES-GCM: 37 bytes, 1434 on a 1500 path): whichever the client
//! picks, the advertised MTU fits.
//!
//! An X-DTLS-MTU of 1406 with AES-GCM is not this arithmetic going wrong: it is `anyconnect mtu`
//! capping both channels, and the policy layer applies the ASA's default of 1406 when a group
//! policy does not set it (policy::EffectiveGroupPolicy), hence `min(1434, 1406) = 1406`. Set
//! `anyconnect mtu 1462` (the ASA's maximum) to let DTLS use the cipher's full 1434. (asa.md §6
//! saw an ASA advertise a DTLS MTU of 1418 with its defaults, i.e. its own arithmetic does not
//! treat the default as a hard cap the way we do; we keep the cap because under the default
//! `MtuPolicy::Common` it only lowers what both channels are told, never makes it too big.)

use serde::{Deserialize, Serialize};

use crate::config::MtuPolicy;
use crate::TlsVersion;

/// TLS record header (RFC 5246 §6.2, RFC 8446 §5.1).
pub const TLS_HEADER: u16 = 5;
/// DTLS record header (RFC 6347 §4.1: type, version, epoch, sequence number, length).
pub const DTLS_HEADER: u16 = 13;
/// CSTP frame header.
pub const CSTP_HEADER: u16 = 8;
/// IPv4 + UDP headers under a DTLS record.
pub const IPV4_UDP: u16 = 28;
/// The smallest MTU we ever advertise (IPv4 minimum reassembly size, RFC 791; also the ASA's
/// `anyconnect mtu` lower bound).
pub const MIN_MTU: u16 = 576;

/// Per-record expansion of a cipher, in the ASA's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordOverhead {
    /// Record header (5 TLS, 13 DTLS).
    pub header: u16,
    /// Explicit IV (CBC, TLS >= 1.1) or explicit nonce (AES-GCM/CCM in TLS 1.2).
    pub iv: u16,
    /// Worst-case CBC padding including the length byte, or TLS 1.3's inner content type.
    pub padding: u16,
    /// MAC or AEAD tag.
    pub hash: u16,
    /// False when the cipher name was not recognised and a conservative guess was used.
    pub known: bool,
}

impl RecordOverhead {
    pub fn total(&self) -> u16 {
        self.header + self.iv + self.padding + self.hash
    }
}

/// Record expansion of a TLS cipher, by OpenSSL name (`SSL_CIPHER_get_name`).
pub fn tls_overhead(version: TlsVersion, cipher: &str) -> RecordOverhead {
    let mut o = cipher_expansion(cipher);
    o.header = TLS_HEADER;
    if version == TlsVersion::Tls13 {
        // RFC 8446 §5.2: no explicit nonce, one inner content-type byte, AEAD tag.
        o.iv = 0;
        o.padding = 1;
    }
    o
}

/// Record expansion of a DTLS cipher, by OpenSSL name or Cisco/OpenConnect name.
pub fn dtls_overhead(cipher: &str) -> RecordOverhead {
    let mut o = cipher_expansion(cipher);
    o.header = DTLS_HEADER;
    o
}

/// The suites the I/O layer's PSK-NEGOTIATE DTLS context accepts, in its preference order
/// (OpenSSL names; crates/gateway/src/ra/dtls.rs must offer no other). anyconnect.md §4:
/// openconnect 9.01 leads its PSK ClientHello with AES-256-GCM and also offers AES-128-GCM.
pub const PSK_DTLS_SUITES: [&str; 2] = ["PSK-AES256-GCM-SHA384", "PSK-AES128-GCM-SHA256"];

/// The record expansion X-DTLS-MTU is computed with in PSK-NEGOTIATE mode: the largest of
/// [`PSK_DTLS_SUITES`] (the suite itself is only known after the DTLS handshake).
pub fn psk_dtls_overhead() -> RecordOverhead {
    PSK_DTLS_SUITES
        .iter()
        .map(|s| dtls_overhead(s))
        .max_by_key(RecordOverhead::total)
        .unwrap_or_else(|| dtls_overhead("unknown"))
}

/// Classifies a cipher suite name. AEAD: GCM/CCM carry an 8-byte explicit nonce in (D)TLS 1.2
/// (RFC 5288 §3, RFC 6655 §3), ChaCha20-Poly1305 none (RFC 7905 §2); CBC: a block-sized IV
/// (RFC 5246 §6.2.3.2) and up to one block of padding including the length byte; stream (RC4):
/// MAC only.
fn cipher_expansion(name: &str) -> RecordOverhead {
    let n = name.to_ascii_uppercase();
    let mac = if n.ends_with("SHA384") {
        48
    } else if n.ends_with("SHA256") {
        32
    } else if n.ends_with("MD5") {
        16
    } else {
        20 // "-SHA" suffix = HMAC-SHA1
    };
    let ro = |iv, padding, hash, known| RecordOverhead {
        header: 0,
        iv,
        padding,
        hash,
        known,
    };
    if n.contains("CHACHA20") {
        ro(0, 0, 16, true)
    } else if n.contains("GCM") {
        ro(8, 0, 16, true)
    } else if n.contains("CCM8") || n.contains("CCM_8") {
        ro(8, 0, 8, true)
    } else if n.contains("CCM") {
        ro(8, 0, 16, true)
    } else if n.contains("RC4") {
        ro(0, 0, mac, true)
    } else if n.contains("AES") || n.contains("CAMELLIA") || n.contains("ARIA") {
        ro(16, 16, mac, true)
    } else if n.contains("DES") {
        ro(8, 8, mac, true)
    } else {
        // Unknown: assume the largest common expansion so the MTU is never too big.
        ro(16, 16, 48, false)
    }
}

/// The ASA's TLS (CSTP) MTU: `tcpmss - header - CSTP header - iv - padding - hash`.
pub fn tls_mtu(tcpmss: u16, o: &RecordOverhead) -> u16 {
    tcpmss.saturating_sub(CSTP_HEADER + o.total())
}

/// The DTLS data MTU for a link (path) MTU: `link - overhead - 1 - 28`.
pub fn dtls_mtu(link_mtu: u16, o: &RecordOverhead) -> u16 {
    link_mtu.saturating_sub(o.total() + 1 + IPV4_UDP)
}

/// The MTUs of one tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MtuPlan {
    /// Largest packet the TLS channel takes (the 722036 threshold on TLS).
    pub tls: u16,
    /// Largest packet the DTLS channel takes (None: no DTLS offered).
    pub dtls: Option<u16>,
    /// X-CSTP-MTU.
    pub advertised_cstp: u16,
    /// X-DTLS-MTU.
    pub advertised_dtls: Option<u16>,
    /// X-CSTP-Base-MTU we answer with (the path MTU we assumed).
    pub base: u16,
}

/// Inputs of [`plan`].
#[derive(Debug, Clone, Copy)]
pub struct MtuInputs {
    pub policy: MtuPolicy,
    pub tcpmss: u16,
    pub tls: RecordOverhead,
    /// `None`: DTLS not offered to this client.
    pub dtls: Option<RecordOverhead>,
    /// X-CSTP-Base-MTU from the client, if any.
    pub client_base_mtu: Option<u16>,
    /// Our outside interface MTU.
    pub link_mtu: u16,
    /// `anyconnect mtu`.
    pub configured: Option<u16>,
}

/// Computes both channel MTUs, honours `anyconnect mtu` (a cap on both, as on the ASA where
/// `anyconnect mtu 1300` makes TLS and DTLS equal) and chooses what to advertise.
pub fn plan(i: &MtuInputs) -> MtuPlan {
    let base = i
        .client_base_mtu
        .map_or(i.link_mtu, |b| b.min(i.link_mtu))
        .max(MIN_MTU);
    let cap = |m: u16| i.configured.map_or(m, |c| m.min(c)).max(MIN_MTU);
    let tls = cap(tls_mtu(i.tcpmss, &i.tls));
    let dtls = i.dtls.map(|o| cap(dtls_mtu(base, &o)));
    let (advertised_cstp, advertised_dtls) = match (i.policy, dtls) {
        (_, None) => (tls, None),
        (MtuPolicy::Split, Some(d)) => (tls, Some(d)),
        (MtuPolicy::Common, Some(d)) => {
            let m = tls.min(d);
            (m, Some(m))
        }
    };
    MtuPlan {
        tls,
        dtls,
        advertised_cstp,
        advertised_dtls,
        base,
    }
}

/// The MTUs told to a client (X-CSTP-MTU, X-DTLS-MTU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advertised {
    pub cstp: u16,
    pub dtls: Option<u16>,
}

impl Advertised {
    pub fn of(p: &MtuPlan) -> Self {
        Self {
            cstp: p.advertised_cstp,
            dtls: p.advertised_dtls,
        }
    }

    /// The MTU the client's adapter uses (openconnect: the larger of the two).
    pub fn adapter(&self) -> u16 {
        self.dtls.map_or(self.cstp, |d| d.max(self.cstp))
    }
}

/// A reconnect's plan that repeats what the session was first told: the same X-CSTP-MTU and
/// the same X-DTLS-MTU when DTLS is offered again. Under [`MtuPolicy::Common`] the TLS
/// threshold is also kept no smaller than the adapter MTU (a CSTP frame can carry up to
/// 16 KiB; only the ASA's arithmetic limits it), preserving Common's promise that TLS carries
/// whatever the adapter sends; [`MtuPolicy::Split`] keeps the ASA's thresholds.
pub fn sticky(mut p: MtuPlan, prev: Advertised, policy: MtuPolicy) -> MtuPlan {
    p.advertised_cstp = prev.cstp;
    if p.advertised_dtls.is_some() {
        p.advertised_dtls = Some(prev.dtls.unwrap_or(prev.cstp));
    }
    if policy == MtuPolicy::Common {
        p.tls = p.tls.max(prev.adapter());
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asa_tls_examples() {
        // asa.md §6: RC4-SHA, tcpmss 1380 -> 1380 - 5 - 8 - 0 - 20 = 1347.
        let rc4 = tls_overhead(TlsVersion::Tls12, "RC4-SHA");
        assert_eq!((rc4.header, rc4.iv, rc4.padding, rc4.hash), (5, 0, 0, 20));
        assert_eq!(tls_mtu(1380, &rc4), 1347);
        // asa.md §6 fix 3: tcpmss 1460 -> 1427 with RC4/SHA1.
        assert_eq!(tls_mtu(1460, &rc4), 1427);
    }

    #[test]
    fn tls_cipher_table() {
        let t12 = TlsVersion::Tls12;
        let t13 = TlsVersion::Tls13;
        let cases: &[(TlsVersion, &str, u16)] = &[
            // 1380 - 8 - (5 + 8 + 16)
            (t12, "ECDHE-RSA-AES256-GCM-SHA384", 1343),
            (t12, "AES128-GCM-SHA256", 1343),
            // 1380 - 8 - (5 + 16)
            (t12, "ECDHE-RSA-CHACHA20-POLY1305", 1351),
            // 1380 - 8 - (5 + 16 + 16 + 20)
            (t12, "ECDHE-RSA-AES256-SHA", 1315),
            (t12, "AES256-SHA", 1315),
            // 1380 - 8 - (5 + 16 + 16 + 32)
            (t12, "ECDHE-RSA-AES128-SHA256", 1303),
            // 1380 - 8 - (5 + 16 + 16 + 48)
            (t12, "ECDHE-ECDSA-AES256-SHA384", 1287),
            // TLS 1.3: 1380 - 8 - (5 + 1 + 16)
            (t13, "TLS_AES_256_GCM_SHA384", 1350),
            (t13, "TLS_CHACHA20_POLY1305_SHA256", 1350),
            (t13, "TLS_AES_128_GCM_SHA256", 1350),
            // 1380 - 8 - (5 + 8 + 8 + 20)
            (t12, "DES-CBC3-SHA", 1331),
        ];
        for &(v, c, want) in cases {
            assert_eq!(tls_mtu(1380, &tls_overhead(v, c)), want, "{c}");
            assert!(tls_overhead(v, c).known);
        }
        assert!(!tls_overhead(t12, "MYSTERY").known);
        assert_eq!(
            tls_mtu(1380, &tls_overhead(t12, "MYSTERY")),
            1380 - 8 - 5 - 16 - 16 - 48
        );
    }

    #[test]
    fn dtls_cipher_table() {
        let cases: &[(&str, u16)] = &[
            ("OC-DTLS1_2-AES256-GCM", 1434), // anyconnect.md: 1500 - 38 - 28
            ("OC-DTLS1_2-AES128-GCM", 1434),
            ("AES256-GCM-SHA384", 1434),
            ("PSK-AES256-GCM-SHA384", 1434),
            ("OC2-DTLS1_2-CHACHA20-POLY1305", 1442), // 1500 - 29 - 1 - 28
            ("AES256-SHA", 1406),                    // the classic AnyConnect default
            ("AES128-SHA", 1406),
            ("ECDHE-RSA-AES256-SHA384", 1378), // 1500 - (13+16+16+48) - 1 - 28
        ];
        for &(c, want) in cases {
            assert_eq!(dtls_mtu(1500, &dtls_overhead(c)), want, "{c}");
        }
    }

    /// Every DTLS cipher we can key, against the arithmetic written out term by term
    /// (`link - header - iv - padding - hash - type byte - IPv4/UDP`, the DTLS twin of the
    /// ASA's `1380 - 5 - 8 - 0 - 20`) and against the record layouts of the RFCs.
    #[test]
    fn dtls_mtu_of_each_cipher_we_key() {
        use crate::LegacyCipher::*;
        // RFC 6347 §4.1 header 13; RFC 5288 §3 GCM: 8-byte explicit nonce + 16-byte tag.
        let gcm = 1500 - 13 - 8 - 0 - 16 - 1 - 28;
        // RFC 5246 §6.2.3.2 CBC: 16-byte IV, worst-case 16 bytes of padding, HMAC-SHA1 20.
        let cbc_sha1 = 1500 - 13 - 16 - 16 - 20 - 1 - 28;
        assert_eq!((gcm, cbc_sha1), (1434, 1406));
        let cases = [
            (OcDtls12Aes256Gcm, gcm),
            (OcDtls12Aes128Gcm, gcm),
            (Dtls12EcdheRsaAes256Gcm, gcm),
            (Dtls12EcdheRsaAes128Gcm, gcm),
            (Aes256Sha, cbc_sha1),
            (Aes128Sha, cbc_sha1),
        ];
        for (c, want) in cases {
            assert_eq!(dtls_mtu(1500, &dtls_overhead(c.openssl_name())), want, "{c:?}");
            assert_eq!(dtls_mtu(1500, &dtls_overhead(c.client_name())), want, "{c:?} by client name");
        }
        // PSK-NEGOTIATE: every suite the PSK context accepts, and the one X-DTLS-MTU uses.
        for s in PSK_DTLS_SUITES {
            assert_eq!(dtls_mtu(1500, &dtls_overhead(s)), gcm, "{s}");
        }
        assert_eq!(psk_dtls_overhead().total(), 13 + 8 + 16);
        assert_eq!(dtls_mtu(1500, &psk_dtls_overhead()), 1434);
        // A smaller client path MTU moves every cipher down by the same amount.
        assert_eq!(dtls_mtu(1400, &psk_dtls_overhead()), 1334);
        // The ASA default `anyconnect mtu 1406` caps the PSK figure to the CBC-SHA1 one.
        let mut i = inputs(MtuPolicy::Split);
        i.dtls = Some(psk_dtls_overhead());
        i.configured = Some(1406);
        assert_eq!(plan(&i).advertised_dtls, Some(1406));
        i.configured = Some(1462);
        assert_eq!(plan(&i).advertised_dtls, Some(1434));
    }

    fn inputs(policy: MtuPolicy) -> MtuInputs {
        MtuInputs {
            policy,
            tcpmss: 1380,
            tls: tls_overhead(TlsVersion::Tls12, "ECDHE-RSA-AES256-GCM-SHA384"),
            dtls: Some(dtls_overhead("OC-DTLS1_2-AES256-GCM")),
            client_base_mtu: Some(1500),
            link_mtu: 1500,
            configured: None,
        }
    }

    #[test]
    fn sticky_reconnect_plan() {
        let first = plan(&inputs(MtuPolicy::Common));
        let prev = Advertised::of(&first);
        // Reconnect over TLS 1.2 CBC-SHA384 with a smaller client path MTU: the computed plan
        // is smaller, but the client is told the same and TLS carries the adapter MTU.
        let mut i = inputs(MtuPolicy::Common);
        i.tls = tls_overhead(TlsVersion::Tls12, "ECDHE-RSA-AES256-SHA384");
        i.client_base_mtu = Some(1300);
        let again = sticky(plan(&i), prev, MtuPolicy::Common);
        assert_eq!(
            (again.advertised_cstp, again.advertised_dtls),
            (1343, Some(1343))
        );
        assert_eq!(again.tls, 1343);
        assert_eq!(again.dtls, Some(1234)); // the real DTLS limit stays: bigger goes on TLS
                                            // Reconnect without DTLS.
        i.dtls = None;
        let again = sticky(plan(&i), prev, MtuPolicy::Common);
        assert_eq!((again.advertised_cstp, again.advertised_dtls), (1343, None));
        // Split keeps the ASA's thresholds, only the advertisement is repeated.
        let prev = Advertised::of(&plan(&inputs(MtuPolicy::Split)));
        let mut i = inputs(MtuPolicy::Split);
        i.client_base_mtu = Some(1400);
        let again = sticky(plan(&i), prev, MtuPolicy::Split);
        assert_eq!(
            (again.advertised_cstp, again.advertised_dtls, again.tls),
            (1343, Some(1434), 1343)
        );
        assert_eq!(again.dtls, Some(1334));
    }

    #[test]
    fn plans() {
        let s = plan(&inputs(MtuPolicy::Split));
        assert_eq!(
            (s.tls, s.dtls, s.advertised_cstp, s.advertised_dtls),
            (1343, Some(1434), 1343, Some(1434))
        );
        let c = plan(&inputs(MtuPolicy::Common));
        assert_eq!(
            (c.tls, c.dtls, c.advertised_cstp, c.advertised_dtls),
            (1343, Some(1434), 1343, Some(1343))
        );
        // `anyconnect mtu 1300` caps both: equal, whatever the policy (Cisco's preferred fix).
        let mut i = inputs(MtuPolicy::Split);
        i.configured = Some(1300);
        let p = plan(&i);
        assert_eq!(
            (p.tls, p.dtls, p.advertised_cstp, p.advertised_dtls),
            (1300, Some(1300), 1300, Some(1300))
        );
        // Client path MTU 1400 lowers DTLS only.
        let mut i = inputs(MtuPolicy::Split);
        i.client_base_mtu = Some(1400);
        assert_eq!(plan(&i).dtls, Some(1334));
        assert_eq!(plan(&i).base, 1400);
        // Base MTU above our link is capped by the link; absurdly small base is floored.
        i.client_base_mtu = Some(9000);
        assert_eq!(plan(&i).base, 1500);
        i.client_base_mtu = Some(100);
        assert_eq!(plan(&i).dtls, Some(MIN_MTU));
        // No DTLS: only the TLS MTU.
        let mut i = inputs(MtuPolicy::Common);
        i.dtls = None;
        let p = plan(&i);
        assert_eq!((p.advertised_cstp, p.advertised_dtls), (1343, None));
        // tcpmss 1460 with GCM: TLS 1423 < DTLS 1434, Common advertises 1423.
        let mut i = inputs(MtuPolicy::Common);
        i.tcpmss = 1460;
        assert_eq!(plan(&i).advertised_dtls, Some(1423));
    }
}
