//! The table of supported commands, for documentation and tooling (a shell's completion, the
//! documentation test). Each entry is a pattern of words: `*` stands for one argument, and
//! `HEAD > LINE` is a sub-mode line under a head line. The table is checked against the parser
//! from both sides: every first word the parser handles has an entry (`tests/docs.rs`, through
//! `Ast::unlisted`), and every entry has an example in `docs/configuration.md` that the parser
//! accepts and does not ignore.

/// One supported command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    /// Words to match, `*` for any one word, `>` between a head line and a sub-mode line.
    pub pattern: &'static str,
    /// A holdfast extension (not an ASA command).
    pub extension: bool,
}

const fn asa(pattern: &'static str) -> Command {
    Command { pattern, extension: false }
}

const fn ext(pattern: &'static str) -> Command {
    Command { pattern, extension: true }
}

/// Every supported command, grouped as `docs/configuration.md` groups them.
pub const SUPPORTED: &[Command] = &[
    // Basic settings
    asa("hostname *"),
    asa("names"),
    asa("name * *"),
    asa("interface *"),
    asa("interface * > nameif *"),
    asa("interface * > no nameif"),
    asa("interface * > security-level *"),
    asa("interface * > no security-level"),
    asa("interface * > ip address * *"),
    asa("interface * > no ip address"),
    asa("interface * > shutdown"),
    asa("interface * > no shutdown"),
    asa("interface * > description"),
    asa("object network *"),
    asa("object network * > host *"),
    asa("object network * > subnet * *"),
    asa("object-group network *"),
    asa("object-group network * > network-object"),
    asa("object-group network * > group-object *"),
    asa("access-list * extended"),
    asa("access-list * standard"),
    asa("access-list * remark"),
    // Logging
    asa("logging enable"),
    asa("logging timestamp"),
    asa("logging trap *"),
    asa("logging buffered *"),
    asa("logging host * *"),
    asa("no logging"),
    ext("metrics prometheus listen *"),
    // Firewall
    asa("timeout"),
    asa("sysopt connection timewait"),
    asa("sysopt connection tcpmss *"),
    asa("sysopt connection tcpmss minimum *"),
    asa("sysopt connection permit-vpn"),
    asa("sysopt connection reclassify-vpn"),
    asa("sysopt connection preserve-vpn-flows"),
    ext("sysopt connection preserve-vpn-flows udp"),
    asa("sysopt nodnsalias *"),
    asa("sysopt radius ignore-secret"),
    asa("sysopt noproxyarp *"),
    asa("no sysopt"),
    // Site-to-site VPN
    asa("crypto ikev2 policy *"),
    asa("crypto ikev2 policy * > encryption"),
    asa("crypto ikev2 policy * > integrity"),
    asa("crypto ikev2 policy * > group"),
    asa("crypto ikev2 policy * > prf"),
    asa("crypto ikev2 policy * > lifetime seconds *"),
    ext("crypto ikev2 policy * > lifetime none acknowledge-no-rekey"),
    asa("crypto ikev2 enable *"),
    asa("crypto ikev2 cookie-challenge *"),
    asa("crypto ikev2 limit max-in-negotiation-sa *"),
    asa("crypto ikev2 fragmentation"),
    asa("no crypto ikev2 fragmentation"),
    ext("crypto ikev2 retransmit * *"),
    asa("crypto ipsec ikev2 ipsec-proposal *"),
    asa("crypto ipsec ikev2 ipsec-proposal * > protocol esp encryption"),
    asa("crypto ipsec ikev2 ipsec-proposal * > protocol esp integrity"),
    asa("crypto ipsec security-association lifetime"),
    asa("crypto map * * match address *"),
    asa("crypto map * * set peer"),
    asa("crypto map * * set ikev2 ipsec-proposal"),
    asa("crypto map * * set pfs"),
    asa("crypto map * * set security-association lifetime"),
    asa("crypto map * * set connection-type *"),
    asa("crypto map * * set nat-t-disable"),
    ext("crypto map * * set udp-encapsulation force"),
    asa("crypto map * * set trustpoint *"),
    asa("crypto map * interface *"),
    asa("crypto ca trustpoint *"),
    ext("crypto ca trustpoint * > certificate-file *"),
    ext("crypto ca trustpoint * > key-file *"),
    ext("crypto ca trustpoint * > ca-file *"),
    asa("tunnel-group * type *"),
    asa("tunnel-group * ipsec-attributes"),
    asa("tunnel-group * ipsec-attributes > ikev2 remote-authentication"),
    asa("tunnel-group * ipsec-attributes > ikev2 local-authentication"),
    asa("tunnel-group * ipsec-attributes > isakmp keepalive"),
    // Remote access
    asa("ip local pool *"),
    asa("webvpn"),
    asa("webvpn > enable *"),
    asa("webvpn > port *"),
    asa("webvpn > dtls port *"),
    asa("webvpn > anyconnect enable"),
    asa("webvpn > tunnel-group-list enable"),
    asa("webvpn > no tunnel-group-list enable"),
    asa("group-policy * internal"),
    asa("group-policy * attributes"),
    asa("group-policy * attributes > vpn-tunnel-protocol"),
    asa("group-policy * attributes > split-tunnel-policy *"),
    asa("group-policy * attributes > split-tunnel-network-list"),
    asa("group-policy * attributes > dns-server"),
    asa("group-policy * attributes > default-domain"),
    asa("group-policy * attributes > vpn-idle-timeout *"),
    asa("group-policy * attributes > vpn-session-timeout *"),
    asa("group-policy * attributes > address-pools"),
    asa("group-policy * attributes > webvpn"),
    asa("group-policy * attributes > anyconnect mtu *"),
    ext("group-policy * attributes > anyconnect mtu-policy *"),
    asa("group-policy * attributes > anyconnect ssl dtls *"),
    asa("group-policy * attributes > anyconnect ssl df-bit-ignore *"),
    asa("group-policy * attributes > anyconnect dpd-interval *"),
    asa("group-policy * attributes > anyconnect ssl keepalive *"),
    asa("group-policy * attributes > anyconnect ssl rekey time *"),
    asa("group-policy * attributes > anyconnect ssl rekey method *"),
    asa("tunnel-group * general-attributes"),
    asa("tunnel-group * general-attributes > address-pool"),
    asa("tunnel-group * general-attributes > default-group-policy *"),
    asa("tunnel-group * general-attributes > authentication-server-group LOCAL"),
    asa("tunnel-group * webvpn-attributes"),
    asa("tunnel-group * webvpn-attributes > group-alias * *"),
    asa("tunnel-group * webvpn-attributes > authentication"),
    asa("username * password"),
    asa("username * nopassword"),
    asa("ssl trust-point *"),
];

/// The first words of the commands holdfast parses (`no` prefixes a few of them).
pub fn top_level() -> &'static [&'static str] {
    &crate::parser::TOP_LEVEL
}

impl Command {
    /// Whether a line (its words) matches one side of the pattern.
    fn side_matches(side: &str, words: &[&str]) -> bool {
        let pat: Vec<&str> = side.split_whitespace().collect();
        pat.len() <= words.len() && pat.iter().zip(words).all(|(p, w)| *p == "*" || p.eq_ignore_ascii_case(w))
    }

    /// Whether `line` (with `head`, the unindented line above it, for sub-mode lines) is an
    /// instance of this command. `line` is the line itself; `head` is `None` for a head line.
    pub fn matches(&self, head: Option<&str>, line: &str) -> bool {
        let words: Vec<&str> = line.split_whitespace().collect();
        match (self.pattern.split_once(" > "), head) {
            (None, None) => Self::side_matches(self.pattern, &words),
            (Some((h, l)), Some(head)) => {
                let hw: Vec<&str> = head.split_whitespace().collect();
                Self::side_matches(h, &hw) && h.split_whitespace().count() == hw.len() && Self::side_matches(l, &words)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_heads_and_sub_mode_lines() {
        let c = asa("crypto map * * set peer");
        assert!(c.matches(None, "crypto map M 10 set peer 192.0.2.1"));
        assert!(!c.matches(None, "crypto map M interface outside"));
        assert!(!c.matches(Some("crypto map M 10"), "crypto map M 10 set peer 192.0.2.1"));
        let s = asa("crypto ikev2 policy * > group");
        assert!(s.matches(Some("crypto ikev2 policy 10"), " group 19"));
        assert!(!s.matches(None, "group 19"));
        assert!(!s.matches(Some("crypto ikev2 policy"), " group 19"));
    }

    #[test]
    fn every_top_level_word_has_an_entry() {
        for w in top_level() {
            assert!(SUPPORTED.iter().any(|c| c.pattern.split_whitespace().next() == Some(w)), "{w}");
        }
        for c in SUPPORTED {
            let first = c.pattern.split_whitespace().next().unwrap_or("");
            assert!(top_level().contains(&first), "{}", c.pattern);
        }
    }
}
