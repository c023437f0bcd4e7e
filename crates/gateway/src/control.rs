//! The control socket: one command line in, text out, then the daemon closes the connection.
//!
//! Commands follow the ASA CLI, including unambiguous keyword abbreviations (`sh cry ipsec sa`).
//! Input the grammar does not accept is answered the way the ASA answers it: the line, a caret
//! under the first offending word, and `ERROR: % Invalid input detected at '^' marker.`

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Default control socket of `holdfast run` / `show` / `clear` (issue 2).
pub const DEFAULT_SOCKET: &str = "/run/holdfast/holdfast.sock";

/// Longest command line the daemon reads; anything longer is refused, not buffered.
pub const MAX_LINE: usize = 1024;

/// A parsed control command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    ShowIkev2Sa { detail: bool },
    ShowIpsecSa { peer: Option<IpAddr>, detail: bool },
    ShowIpsecStats,
    /// `show running-config [all] [COMMAND...]`; `show run` is the usual abbreviation.
    ShowRunningConfig { all: bool, filter: Vec<String> },
    ShowLogging,
    ShowVersion,
    /// `show conn [address IP] [long|detail]` / `show conn count`.
    ShowConn { view: ConnView, address: Option<Ipv4Addr> },
    ShowAspDrop,
    /// `show asp table vpn-context [detail]`.
    ShowVpnContext { detail: bool },
    ClearIkev2Sa { peer: Option<IpAddr> },
    ClearIpsecSa { peer: Option<IpAddr> },
    /// `clear conn [address IP]`.
    ClearConn { address: Option<Ipv4Addr> },
    ClearAspDrop,
    /// `show vpn-sessiondb anyconnect [filter name USER | filter ipaddress IP]`.
    ShowVpnSessiondb { filter: Option<SessionFilter> },
    /// `vpn-sessiondb logoff name USER | index N | all`. The ASA asks "Do you want to logoff
    /// the VPN session(s)? [confirm]"; the control socket is not interactive, so the command
    /// is carried out at once.
    VpnSessiondbLogoff { target: LogoffTarget },
    /// A Prometheus scrape (from the metrics listener, never from the socket's text).
    Metrics,
    /// `--json show ...`: the same show command answered as JSON (`holdfast show --json`).
    Json(Box<Request>),
    /// `reload [config FILE]` (`holdfast reload`): re-read, validate and apply the configuration
    /// file the daemon was started with, or FILE (docs/reload.md). FILE is one word (no spaces).
    Reload { config: Option<std::path::PathBuf> },
    /// `stop [keep-sessions]` (`holdfast stop [--keep-sessions]`): stop the daemon as SIGTERM
    /// does, or with `keep-sessions` as SIGQUIT does (a planned restart: remote-access sessions
    /// are saved for the next start and their clients are not told; docs/reload.md). The
    /// answer comes once the sessions are saved, with their number.
    Stop { keep_sessions: bool },
}

/// `filter ...` of `show vpn-sessiondb anyconnect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionFilter {
    Name(String),
    IpAddress(Ipv4Addr),
}

/// What `vpn-sessiondb logoff` ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogoffTarget {
    Name(String),
    Index(u32),
    All,
}

pub use flow::text::ConnView;

/// Top-level configuration commands `show running-config` can be narrowed to (the ASA accepts
/// any command word; these are the ones holdfast's configuration has).
const RUNNING_CONFIG_FILTERS: &[&str] = &[
    "access-list",
    "crypto",
    "group-policy",
    "hostname",
    "interface",
    "ip",
    "logging",
    "ssl",
    "sysopt",
    "timeout",
    "tunnel-group",
    "username",
    "webvpn",
];

/// Why a command line was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Byte column (0-based) of the first word that does not fit the grammar.
    Invalid { col: usize },
    /// The line ends where the grammar needs another word.
    Incomplete,
    /// The word at this column abbreviates a keyword that is only taken in full
    /// ([`FULL_WORD_ONLY`]).
    FullWordOnly { col: usize, keyword: &'static str },
}

/// Keywords no abbreviation stands for. `stop` ends the gateway and every remote-access
/// session with no confirmation (the ASA's `reload` asks "Proceed with reload? [confirm]";
/// a control socket cannot ask), so `st` or `sto` typed for something else must not do it;
/// and leaving it out of abbreviation makes `s` mean `show` again, as on the ASA.
pub const FULL_WORD_ONLY: &[&str] = &["stop"];

pub const INVALID_INPUT: &str = "ERROR: % Invalid input detected at '^' marker.";
pub const INCOMPLETE: &str = "ERROR: % Incomplete command";

/// Renders a refusal as the ASA does: the line, a caret, the error.
pub fn format_error(line: &str, err: &ParseError) -> String {
    match err {
        ParseError::Invalid { col } => format!("{}\n{}^\n{}\n", line.trim_end(), " ".repeat(*col), INVALID_INPUT),
        ParseError::Incomplete => format!("{INCOMPLETE}\n"),
        ParseError::FullWordOnly { col, keyword } => format!(
            "{}\n{}^\n{}\n",
            line.trim_end(),
            " ".repeat(*col),
            full_word_message(keyword)
        ),
    }
}

/// The refusal of an abbreviated [`FULL_WORD_ONLY`] keyword (after the caret line).
pub fn full_word_message(keyword: &str) -> String {
    format!("ERROR: % '{keyword}' is accepted only in full: type '{keyword}' to run it.")
}

/// The first word of a control line asking for JSON (`holdfast show --json ...` sends it).
pub const JSON_FLAG: &str = "--json";

/// `show` commands that have a JSON form.
pub fn has_json(req: &Request) -> bool {
    matches!(
        req,
        Request::ShowConn { .. }
            | Request::ShowIpsecSa { .. }
            | Request::ShowIkev2Sa { .. }
            | Request::ShowVpnSessiondb { .. }
            | Request::ShowAspDrop
            | Request::ShowVpnContext { .. }
            | Request::ShowLogging
            | Request::ShowIpsecStats
            | Request::ShowVersion
    )
}

/// Parses one command line.
pub fn parse(line: &str) -> Result<Request, ParseError> {
    let words = tokenize(line);
    if let Some((&(col, w), rest)) = words.split_first() {
        if w == JSON_FLAG {
            let rest: Vec<(usize, &str)> = rest.to_vec();
            let mut p = Parser { words: &rest, pos: 0 };
            let req = parse_words(&mut p)?;
            if !has_json(&req) {
                // Only show commands have a structured form; the caret marks the flag.
                return Err(ParseError::Invalid { col });
            }
            return Ok(Request::Json(Box::new(req)));
        }
    }
    let mut p = Parser { words: &words, pos: 0 };
    parse_words(&mut p)
}

fn parse_words(p: &mut Parser<'_>) -> Result<Request, ParseError> {
    let verb = p.keyword(&["show", "clear", "vpn-sessiondb", "reload", "stop"])?;
    match verb {
        "stop" => {
            let keep_sessions = p.optional_keyword(&["keep-sessions"])?.is_some();
            p.end()?;
            Ok(Request::Stop { keep_sessions })
        }
        "reload" => {
            let config = match p.optional_keyword(&["config"])? {
                None => None,
                Some(_) => Some(std::path::PathBuf::from(p.word().ok_or(ParseError::Incomplete)?)),
            };
            p.end()?;
            Ok(Request::Reload { config })
        }
        "vpn-sessiondb" => {
            p.keyword(&["logoff"])?;
            let target = match p.keyword(&["name", "index", "all"])? {
                "name" => LogoffTarget::Name(p.word().ok_or(ParseError::Incomplete)?.to_string()),
                "index" => LogoffTarget::Index(p.number()?),
                _ => LogoffTarget::All,
            };
            // The ASA's optional `noconfirm` is accepted (the socket never asks anyway).
            p.optional_keyword(&["noconfirm"])?;
            p.end()?;
            Ok(Request::VpnSessiondbLogoff { target })
        }
        "show" => {
            let what = p.keyword(&["crypto", "running-config", "logging", "version", "conn", "asp", "vpn-sessiondb"])?;
            let req = match what {
                "vpn-sessiondb" => {
                    p.keyword(&["anyconnect"])?;
                    let filter = match p.optional_keyword(&["filter"])? {
                        None => None,
                        Some(_) => match p.keyword(&["name", "ipaddress"])? {
                            "name" => Some(SessionFilter::Name(p.word().ok_or(ParseError::Incomplete)?.to_string())),
                            _ => Some(SessionFilter::IpAddress(p.ipv4()?)),
                        },
                    };
                    Request::ShowVpnSessiondb { filter }
                }
                "crypto" => match p.keyword(&["ikev2", "ipsec"])? {
                    "ikev2" => {
                        p.keyword(&["sa"])?;
                        let detail = p.optional_keyword(&["detail"])?.is_some();
                        Request::ShowIkev2Sa { detail }
                    }
                    _ => {
                        if p.keyword(&["sa", "stats"])? == "stats" {
                            p.end()?;
                            return Ok(Request::ShowIpsecStats);
                        }
                        let mut peer = None;
                        let mut detail = false;
                        while let Some(k) = p.optional_keyword(&["peer", "detail"])? {
                            match k {
                                "peer" if peer.is_none() => peer = Some(p.ip()?),
                                "detail" if !detail => detail = true,
                                _ => return Err(p.invalid_prev()),
                            }
                        }
                        Request::ShowIpsecSa { peer, detail }
                    }
                },
                "running-config" => {
                    let mut all = false;
                    let mut filter = Vec::new();
                    let first = if p.at_end() { None } else { Some(p.keyword(&with_all(RUNNING_CONFIG_FILTERS))?) };
                    let first = match first {
                        Some("all") => {
                            all = true;
                            p.optional_keyword(RUNNING_CONFIG_FILTERS)?
                        }
                        other => other,
                    };
                    if let Some(w) = first {
                        filter.push(w.to_string());
                        // Further words narrow the command (`crypto map`), taken as written.
                        while let Some(w) = p.word() {
                            filter.push(w.to_ascii_lowercase());
                        }
                    }
                    Request::ShowRunningConfig { all, filter }
                }
                "conn" => {
                    let mut address = None;
                    let mut view = None;
                    while let Some(k) = p.optional_keyword(&["address", "long", "detail", "count"])? {
                        match k {
                            "address" if address.is_none() && view != Some(ConnView::Count) => address = Some(p.ipv4()?),
                            "long" if view.is_none() => view = Some(ConnView::Long),
                            "detail" if view.is_none() => view = Some(ConnView::Detail),
                            "count" if view.is_none() && address.is_none() => view = Some(ConnView::Count),
                            _ => return Err(p.invalid_prev()),
                        }
                    }
                    Request::ShowConn { view: view.unwrap_or(ConnView::Brief), address }
                }
                "asp" => match p.keyword(&["drop", "table"])? {
                    "drop" => Request::ShowAspDrop,
                    _ => {
                        p.keyword(&["vpn-context"])?;
                        let detail = p.optional_keyword(&["detail"])?.is_some();
                        Request::ShowVpnContext { detail }
                    }
                },
                "logging" => Request::ShowLogging,
                _ => Request::ShowVersion,
            };
            p.end()?;
            Ok(req)
        }
        _ => {
            let req = match p.keyword(&["crypto", "conn", "asp"])? {
                "conn" => {
                    let address = match p.optional_keyword(&["address"])? {
                        Some(_) => Some(p.ipv4()?),
                        None => None,
                    };
                    Request::ClearConn { address }
                }
                "asp" => {
                    p.keyword(&["drop"])?;
                    Request::ClearAspDrop
                }
                _ => match p.keyword(&["ikev2", "ipsec"])? {
                    "ikev2" => {
                        p.keyword(&["sa"])?;
                        let peer = if p.at_end() { None } else { Some(p.ip()?) };
                        Request::ClearIkev2Sa { peer }
                    }
                    _ => {
                        p.keyword(&["sa"])?;
                        let peer = match p.optional_keyword(&["peer"])? {
                            Some(_) => Some(p.ip()?),
                            None => None,
                        };
                        Request::ClearIpsecSa { peer }
                    }
                },
            };
            p.end()?;
            Ok(req)
        }
    }
}

fn with_all(filters: &[&'static str]) -> Vec<&'static str> {
    let mut v = vec!["all"];
    v.extend_from_slice(filters);
    v
}

/// Sends one command to a running daemon and returns its answer.
pub fn request(socket: &Path, line: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(line.trim_end().as_bytes())?;
    s.write_all(b"\n")?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// True when a daemon answer is an ASA-style error (the client then exits non-zero).
pub fn is_error(answer: &str) -> bool {
    answer.lines().any(|l| l.starts_with("ERROR: "))
}

/// `holdfast show --json WORDS`: sends `--json show WORDS` and returns the JSON document to
/// print and whether it is a success. Every failure (daemon unreachable, a refused command,
/// a command without a JSON form) becomes `{"error": "..."}` with `false`.
pub fn request_json(socket: &Path, words: &[String]) -> (String, bool) {
    let line = format!("{JSON_FLAG} show {}", words.join(" "));
    let answer = match request(socket, &line) {
        Ok(a) => a,
        Err(e) => return (json_error(&format!("cannot reach the daemon at {}: {e}", socket.display())), false),
    };
    match serde_json::from_str::<serde_json::Value>(&answer) {
        Ok(v) => {
            let failed = v.get("error").is_some();
            (format!("{v:#}\n"), !failed)
        }
        Err(_) => {
            // A refusal in ASA text (caret and `ERROR: %` line), or an older daemon.
            let msg = answer.lines().filter(|l| l.starts_with("ERROR: ")).collect::<Vec<_>>().join(" ");
            let msg = if msg.is_empty() { answer.trim().to_string() } else { msg };
            (json_error(&msg), false)
        }
    }
}

/// `{"error": "..."}` as the JSON interface reports failures.
pub fn json_error(msg: &str) -> String {
    format!("{:#}\n", serde_json::json!({ "error": msg }))
}

/// Words with their starting byte columns.
fn tokenize(line: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        if c.is_whitespace() {
            if let Some(s) = start.take() {
                out.push((s, &line[s..i]));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        out.push((s, &line[s..]));
    }
    out
}

struct Parser<'a> {
    words: &'a [(usize, &'a str)],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn at_end(&self) -> bool {
        self.pos >= self.words.len()
    }

    /// Matches the next word against `options`, accepting an unambiguous prefix (ASA CLI).
    fn keyword(&mut self, options: &[&'static str]) -> Result<&'static str, ParseError> {
        self.optional_keyword(options)?.ok_or(ParseError::Incomplete)
    }

    fn optional_keyword(&mut self, options: &[&'static str]) -> Result<Option<&'static str>, ParseError> {
        let Some(&(col, word)) = self.words.get(self.pos) else { return Ok(None) };
        let w = word.to_ascii_lowercase();
        let exact = options.iter().find(|o| **o == w);
        let found = match exact {
            Some(o) => Some(*o),
            None => {
                let abbreviable = |o: &&&'static str| !FULL_WORD_ONLY.contains(*o);
                let mut hits = options.iter().filter(abbreviable).filter(|o| o.starts_with(w.as_str()));
                match (hits.next(), hits.next()) {
                    (Some(o), None) => Some(*o),
                    (None, _) => {
                        // Only a full-word keyword starts so: say what to type.
                        if let Some(k) = options.iter().find(|o| FULL_WORD_ONLY.contains(*o) && o.starts_with(w.as_str())) {
                            return Err(ParseError::FullWordOnly { col, keyword: k });
                        }
                        None
                    }
                    _ => None,
                }
            }
        };
        match found {
            Some(o) => {
                self.pos += 1;
                Ok(Some(o))
            }
            None => Err(ParseError::Invalid { col }),
        }
    }

    fn ip(&mut self) -> Result<IpAddr, ParseError> {
        let Some(&(col, word)) = self.words.get(self.pos) else { return Err(ParseError::Incomplete) };
        let ip = word.parse().map_err(|_| ParseError::Invalid { col })?;
        self.pos += 1;
        Ok(ip)
    }

    fn ipv4(&mut self) -> Result<Ipv4Addr, ParseError> {
        let Some(&(col, word)) = self.words.get(self.pos) else { return Err(ParseError::Incomplete) };
        let ip = word.parse().map_err(|_| ParseError::Invalid { col })?;
        self.pos += 1;
        Ok(ip)
    }

    /// A decimal number (a session index).
    fn number(&mut self) -> Result<u32, ParseError> {
        let Some(&(col, word)) = self.words.get(self.pos) else { return Err(ParseError::Incomplete) };
        let n = word.parse().map_err(|_| ParseError::Invalid { col })?;
        self.pos += 1;
        Ok(n)
    }

    /// The next word as written (free-form arguments).
    fn word(&mut self) -> Option<&'a str> {
        let &(_, w) = self.words.get(self.pos)?;
        self.pos += 1;
        Some(w)
    }

    fn invalid_prev(&self) -> ParseError {
        ParseError::Invalid { col: self.words[self.pos.saturating_sub(1)].0 }
    }

    fn end(&self) -> Result<(), ParseError> {
        match self.words.get(self.pos) {
            None => Ok(()),
            Some(&(col, _)) => Err(ParseError::Invalid { col }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_with_and_without_keep_sessions() {
        assert_eq!(parse("stop"), Ok(Request::Stop { keep_sessions: false }));
        assert_eq!(parse("stop keep-sessions"), Ok(Request::Stop { keep_sessions: true }));
        // `stop` ends the gateway without a confirmation, so only the full word does it
        // (review N4); its option may still be abbreviated, and the case does not matter.
        assert_eq!(parse("stop keep"), Ok(Request::Stop { keep_sessions: true }));
        assert_eq!(parse("STOP"), Ok(Request::Stop { keep_sessions: false }));
        for (line, col) in [("st", 0), ("sto", 0), ("sto keep", 0), ("  Sto", 2)] {
            let err = parse(line).unwrap_err();
            assert_eq!(err, ParseError::FullWordOnly { col, keyword: "stop" }, "{line}");
            let text = format_error(line, &err);
            assert!(is_error(&text), "{text}");
            assert!(text.contains("'stop'") && text.contains("in full"), "{text}");
            assert!(text.starts_with(&format!("{}\n{}^\n", line.trim_end(), " ".repeat(col))), "{text}");
        }
        // `s` is `show` again, as on the ASA.
        assert_eq!(parse("s run"), Ok(Request::ShowRunningConfig { all: false, filter: vec![] }));
        assert_eq!(parse("s ver"), Ok(Request::ShowVersion));
        assert_eq!(parse("stop keep-sessions now"), Err(ParseError::Invalid { col: 19 }));
        assert!(matches!(parse("stop now"), Err(ParseError::Invalid { col: 5 })));
        assert!(!has_json(&Request::Stop { keep_sessions: true }));
    }

    #[test]
    fn reload_with_and_without_a_file() {
        assert_eq!(parse("reload"), Ok(Request::Reload { config: None }));
        assert_eq!(parse("reload config /etc/holdfast/new.cfg"), Ok(Request::Reload { config: Some("/etc/holdfast/new.cfg".into()) }));
        assert_eq!(parse("reload config"), Err(ParseError::Incomplete));
        assert!(matches!(parse("reload now"), Err(ParseError::Invalid { .. })));
        assert!(!has_json(&Request::Reload { config: None }));
    }

    #[test]
    fn parses_the_issue_commands() {
        assert_eq!(parse("show crypto ikev2 sa"), Ok(Request::ShowIkev2Sa { detail: false }));
        assert_eq!(parse("show crypto ikev2 sa detail"), Ok(Request::ShowIkev2Sa { detail: true }));
        assert_eq!(parse("show crypto ipsec sa"), Ok(Request::ShowIpsecSa { peer: None, detail: false }));
        assert_eq!(
            parse("show crypto ipsec sa peer 192.0.2.2"),
            Ok(Request::ShowIpsecSa { peer: Some("192.0.2.2".parse().unwrap()), detail: false })
        );
        assert_eq!(parse("show running-config"), Ok(Request::ShowRunningConfig { all: false, filter: vec![] }));
        assert_eq!(parse("show crypto ipsec stats"), Ok(Request::ShowIpsecStats));
        assert_eq!(parse("show crypto ipsec stats x"), Err(ParseError::Invalid { col: 24 }));
        assert_eq!(parse("show logging"), Ok(Request::ShowLogging));
        assert_eq!(parse("clear crypto ikev2 sa"), Ok(Request::ClearIkev2Sa { peer: None }));
        assert_eq!(
            parse("clear crypto ikev2 sa 192.0.2.2"),
            Ok(Request::ClearIkev2Sa { peer: Some("192.0.2.2".parse().unwrap()) })
        );
        assert_eq!(parse("clear crypto ipsec sa"), Ok(Request::ClearIpsecSa { peer: None }));
        assert_eq!(
            parse("clear crypto ipsec sa peer 192.0.2.2\n"),
            Ok(Request::ClearIpsecSa { peer: Some("192.0.2.2".parse().unwrap()) })
        );
    }

    #[test]
    fn abbreviations_like_the_asa() {
        assert_eq!(parse("sh cry ipsec sa"), Ok(Request::ShowIpsecSa { peer: None, detail: false }));
        assert_eq!(parse("sh run"), Ok(Request::ShowRunningConfig { all: false, filter: vec![] }));
        assert_eq!(parse("  SHOW   Crypto IKEV2 sa det "), Ok(Request::ShowIkev2Sa { detail: true }));
        // `i` is ambiguous between ikev2 and ipsec.
        assert_eq!(parse("show crypto i sa"), Err(ParseError::Invalid { col: 12 }));
    }

    #[test]
    fn errors_point_at_the_word() {
        let line = "show crypto foo sa";
        let err = parse(line).unwrap_err();
        assert_eq!(err, ParseError::Invalid { col: 12 });
        assert_eq!(
            format_error(line, &err),
            "show crypto foo sa\n            ^\nERROR: % Invalid input detected at '^' marker.\n"
        );
        assert_eq!(parse("show crypto ipsec sa peer 300.1.1.1"), Err(ParseError::Invalid { col: 26 }));
        assert_eq!(parse("show running-config extra"), Err(ParseError::Invalid { col: 20 }));
        assert_eq!(parse("bogus"), Err(ParseError::Invalid { col: 0 }));
        assert_eq!(parse("show crypto"), Err(ParseError::Incomplete));
        assert_eq!(parse(""), Err(ParseError::Incomplete));
        assert_eq!(format_error("show crypto", &ParseError::Incomplete), "ERROR: % Incomplete command\n");
        assert!(is_error(&format_error(line, &err)));
        assert!(!is_error("IKEv2 SAs:\n"));
    }

    #[test]
    fn connection_table_commands() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(parse("show conn"), Ok(Request::ShowConn { view: ConnView::Brief, address: None }));
        assert_eq!(parse("show conn long"), Ok(Request::ShowConn { view: ConnView::Long, address: None }));
        assert_eq!(parse("sh conn det"), Ok(Request::ShowConn { view: ConnView::Detail, address: None }));
        assert_eq!(parse("show conn count"), Ok(Request::ShowConn { view: ConnView::Count, address: None }));
        assert_eq!(
            parse("show conn address 10.1.0.10 long"),
            Ok(Request::ShowConn { view: ConnView::Long, address: Some(ip("10.1.0.10")) })
        );
        assert_eq!(parse("show conn long long"), Err(ParseError::Invalid { col: 15 }));
        assert_eq!(parse("show conn count address 10.1.0.1"), Err(ParseError::Invalid { col: 16 }));
        assert_eq!(parse("show conn address 10.1.0"), Err(ParseError::Invalid { col: 18 }));
        assert_eq!(parse("show conn address"), Err(ParseError::Incomplete));
        // `c` alone is ambiguous (crypto, conn), as on the ASA.
        assert_eq!(parse("show c"), Err(ParseError::Invalid { col: 5 }));
        assert_eq!(parse("clear conn"), Ok(Request::ClearConn { address: None }));
        assert_eq!(parse("clear conn address 10.2.0.10"), Ok(Request::ClearConn { address: Some(ip("10.2.0.10")) }));
        assert_eq!(parse("clear conn 10.2.0.10"), Err(ParseError::Invalid { col: 11 }));
        assert_eq!(parse("show asp drop"), Ok(Request::ShowAspDrop));
        assert_eq!(parse("clear asp drop"), Ok(Request::ClearAspDrop));
        assert_eq!(parse("clear asp"), Err(ParseError::Incomplete));
        assert_eq!(parse("show asp table vpn-context"), Ok(Request::ShowVpnContext { detail: false }));
        assert_eq!(parse("show asp table vpn-context detail"), Ok(Request::ShowVpnContext { detail: true }));
        assert_eq!(parse("sh asp tab vpn det"), Ok(Request::ShowVpnContext { detail: true }));
        assert_eq!(parse("show asp table routing"), Err(ParseError::Invalid { col: 15 }));
        assert_eq!(parse("show asp drop frame"), Err(ParseError::Invalid { col: 14 }));
    }

    #[test]
    fn running_config_all_and_filters() {
        let run = |all: bool, f: &[&str]| Ok(Request::ShowRunningConfig { all, filter: f.iter().map(|s| s.to_string()).collect() });
        assert_eq!(parse("show running-config all sysopt"), run(true, &["sysopt"]));
        assert_eq!(parse("show run all sysopt"), run(true, &["sysopt"]));
        assert_eq!(parse("sh run all"), run(true, &[]));
        assert_eq!(parse("show run sysopt"), run(false, &["sysopt"]));
        assert_eq!(parse("show run crypto map"), run(false, &["crypto", "map"]));
        assert_eq!(parse("show run time"), run(false, &["timeout"]));
        assert_eq!(parse("show run all bogus"), Err(ParseError::Invalid { col: 13 }));
        assert_eq!(parse("show run webvpn"), run(false, &["webvpn"]));
        assert_eq!(parse("show run group-policy"), run(false, &["group-policy"]));
        assert_eq!(parse("show run ip local pool"), run(false, &["ip", "local", "pool"]));
        assert_eq!(parse("show run user"), run(false, &["username"]));
        assert_eq!(parse("show run all all"), Err(ParseError::Invalid { col: 13 }));
    }

    #[test]
    fn json_flag_wraps_show_commands() {
        let j = |r: Request| Ok(Request::Json(Box::new(r)));
        assert_eq!(parse("--json show conn count"), j(Request::ShowConn { view: ConnView::Count, address: None }));
        assert_eq!(parse("--json sh cry ipsec sa"), j(Request::ShowIpsecSa { peer: None, detail: false }));
        assert_eq!(parse("--json show asp table vpn-context"), j(Request::ShowVpnContext { detail: false }));
        assert_eq!(parse("--json show vpn-sessiondb anyconnect"), j(Request::ShowVpnSessiondb { filter: None }));
        // No JSON form: running-config is configuration text; clear is not a show.
        assert_eq!(parse("--json show running-config"), Err(ParseError::Invalid { col: 0 }));
        assert_eq!(parse("--json clear conn"), Err(ParseError::Invalid { col: 0 }));
        // Errors inside keep their columns in the whole line.
        assert_eq!(parse("--json show crypto foo"), Err(ParseError::Invalid { col: 19 }));
        assert_eq!(parse("--json"), Err(ParseError::Incomplete));
        // Only as the first word.
        assert_eq!(parse("show --json conn"), Err(ParseError::Invalid { col: 5 }));
    }

    #[test]
    fn json_client_reports_errors_as_json() {
        let (out, ok) = request_json(Path::new("/nonexistent/holdfast.sock"), &["conn".to_string()]);
        assert!(!ok);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(v["error"].as_str().unwrap().contains("cannot reach the daemon"), "{out}");
    }

    #[test]
    fn remote_access_commands() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(parse("show vpn-sessiondb anyconnect"), Ok(Request::ShowVpnSessiondb { filter: None }));
        assert_eq!(parse("sh vpn-s any"), Ok(Request::ShowVpnSessiondb { filter: None }));
        assert_eq!(
            parse("show vpn-sessiondb anyconnect filter name Vpn"),
            Ok(Request::ShowVpnSessiondb { filter: Some(SessionFilter::Name("Vpn".into())) })
        );
        assert_eq!(
            parse("show vpn-sessiondb anyconnect filter ipaddress 10.99.0.100"),
            Ok(Request::ShowVpnSessiondb { filter: Some(SessionFilter::IpAddress(ip("10.99.0.100"))) })
        );
        assert_eq!(parse("show vpn-sessiondb anyconnect filter ipaddress 10.99.0"), Err(ParseError::Invalid { col: 47 }));
        assert_eq!(parse("show vpn-sessiondb anyconnect filter"), Err(ParseError::Incomplete));
        assert_eq!(parse("show vpn-sessiondb anyconnect filter name"), Err(ParseError::Incomplete));
        assert_eq!(parse("show vpn-sessiondb l2l"), Err(ParseError::Invalid { col: 19 }));
        assert_eq!(parse("show vpn-sessiondb anyconnect x"), Err(ParseError::Invalid { col: 30 }));
        // `v` is ambiguous between version and vpn-sessiondb.
        assert_eq!(parse("show v"), Err(ParseError::Invalid { col: 5 }));
        assert_eq!(parse("show ver"), Ok(Request::ShowVersion));
        assert_eq!(
            parse("vpn-sessiondb logoff name vpn"),
            Ok(Request::VpnSessiondbLogoff { target: LogoffTarget::Name("vpn".into()) })
        );
        assert_eq!(parse("vpn-sessiondb logoff index 3"), Ok(Request::VpnSessiondbLogoff { target: LogoffTarget::Index(3) }));
        assert_eq!(parse("vpn-sessiondb logoff all"), Ok(Request::VpnSessiondbLogoff { target: LogoffTarget::All }));
        assert_eq!(parse("vpn-sessiondb logoff all noconfirm"), Ok(Request::VpnSessiondbLogoff { target: LogoffTarget::All }));
        assert_eq!(parse("vpn-sessiondb logoff index x"), Err(ParseError::Invalid { col: 27 }));
        assert_eq!(parse("vpn-sessiondb logoff name"), Err(ParseError::Incomplete));
        assert_eq!(parse("vpn-sessiondb logoff bogus"), Err(ParseError::Invalid { col: 21 }));
        assert_eq!(parse("vpn-sessiondb logoff name a b"), Err(ParseError::Invalid { col: 28 }));
        assert_eq!(parse("vpn-sessiondb"), Err(ParseError::Incomplete));
    }
}
