//! The exec-mode command tree of `holdfast shell`: one table that drives TAB completion, `?`
//! help and the shell's reading of abbreviations (`sh cry ipsec sa`).
//!
//! The daemon's control parser (`gateway::control::parse`) stays the authority on what a line
//! means; this table only describes it for the operator. The unit tests below walk every complete
//! path of the table through that parser, so a command the table offers but the daemon refuses
//! fails the build's tests.

use std::net::{IpAddr, Ipv4Addr};

/// One word position of a command.
#[derive(Debug, Clone)]
pub struct Node {
    pub token: Token,
    /// One line, shown by `?` (ASA style: starts with a capital, no final period).
    pub help: &'static str,
    /// A command may end after this word (`?` then lists `<cr>`).
    pub end: bool,
    pub next: Vec<Node>,
}

/// What a word position accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// A keyword; any unambiguous prefix is accepted, in any case (ASA CLI).
    Keyword(&'static str),
    Arg(Arg),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    Ipv4,
    /// IPv4 or IPv6.
    Ip,
    /// A decimal number (a session index).
    Number,
    /// One free word (a user name).
    Word,
    /// A file name (one word).
    File,
    /// Every remaining word, as written (`show running-config crypto map`).
    Rest,
}

impl Arg {
    /// The placeholder `?` shows for the argument, as the ASA writes them.
    pub fn placeholder(self) -> &'static str {
        match self {
            Arg::Ipv4 => "A.B.C.D",
            Arg::Ip => "A.B.C.D|X:X:X:X::X",
            Arg::Number => "<0-4294967295>",
            Arg::Word => "WORD",
            Arg::File => "FILE",
            Arg::Rest => "LINE",
        }
    }

    fn accepts(self, word: &str) -> bool {
        match self {
            Arg::Ipv4 => word.parse::<Ipv4Addr>().is_ok(),
            Arg::Ip => word.parse::<IpAddr>().is_ok(),
            Arg::Number => word.parse::<u32>().is_ok(),
            Arg::Word | Arg::File | Arg::Rest => true,
        }
    }

    /// A value the daemon accepts, for the tests that walk the table through its parser.
    #[cfg(test)]
    pub fn samples(self) -> &'static [&'static str] {
        match self {
            Arg::Ipv4 => &["192.0.2.2"],
            Arg::Ip => &["192.0.2.2", "2001:db8::2"],
            Arg::Number => &["3"],
            Arg::Word => &["alice"],
            Arg::File => &["/etc/holdfast/new.cfg"],
            Arg::Rest => &["map"],
        }
    }
}

impl Node {
    /// The word as `?` and TAB show it.
    pub fn label(&self) -> &'static str {
        match self.token {
            Token::Keyword(k) => k,
            Token::Arg(a) => a.placeholder(),
        }
    }
}

fn kw(word: &'static str, help: &'static str, end: bool, next: Vec<Node>) -> Node {
    Node { token: Token::Keyword(word), help, end, next }
}

fn arg(a: Arg, help: &'static str, end: bool, next: Vec<Node>) -> Node {
    Node { token: Token::Arg(a), help, end, next }
}

/// Local words the shell handles itself (never sent to the daemon).
pub const LOCAL_WORDS: &[&str] = &["exit", "quit"];

/// Top-level configuration commands `show running-config` narrows to (the daemon's list).
const RUNNING_CONFIG_FILTERS: &[(&str, &str)] = &[
    ("access-list", "Show configured access control elements"),
    ("crypto", "Show crypto configuration"),
    ("group-policy", "Show configured group-policies"),
    ("hostname", "Show the system hostname"),
    ("interface", "Show the interface configuration"),
    ("ip", "Show ip local pool configuration"),
    ("logging", "Show logging configuration"),
    ("ssl", "Show SSL configuration"),
    ("sysopt", "Show system options"),
    ("timeout", "Show timeout configuration"),
    ("tunnel-group", "Show tunnel-group configuration"),
    ("username", "Show local user configuration"),
    ("webvpn", "Show webvpn (AnyConnect) configuration"),
];

/// The whole tree: the roots are the first words of a line.
pub fn tree() -> &'static [Node] {
    static TREE: std::sync::OnceLock<Vec<Node>> = std::sync::OnceLock::new();
    TREE.get_or_init(build)
}

fn build() -> Vec<Node> {
    let detail = || kw("detail", "Show detailed information", true, vec![]);
    let filters = || -> Vec<Node> {
        RUNNING_CONFIG_FILTERS
            .iter()
            .map(|(w, h)| kw(w, h, true, vec![arg(Arg::Rest, "Further words of the command to narrow the output", true, vec![])]))
            .collect()
    };
    let mut running = vec![kw("all", "Show the configuration including default values", true, filters())];
    running.extend(filters());
    let conn_address = || {
        kw(
            "address",
            "Display connections of one inside or outside IP address",
            false,
            vec![arg(Arg::Ipv4, "IP address", true, vec![])],
        )
    };
    let noconfirm = || kw("noconfirm", "Do not ask for confirmation (the shell never asks)", true, vec![]);

    let show = kw(
        "show",
        "Show running system information",
        false,
        vec![
            kw(
                "asp",
                "Show accelerated security path information",
                false,
                vec![
                    kw("drop", "Show accelerated security path drop counters", true, vec![]),
                    kw(
                        "table",
                        "Show accelerated security path tables",
                        false,
                        vec![kw("vpn-context", "Show the VPN context table", true, vec![detail()])],
                    ),
                ],
            ),
            kw(
                "conn",
                "Display connection information",
                true,
                vec![
                    kw(
                        "address",
                        "Display connections of one inside or outside IP address",
                        false,
                        vec![arg(
                            Arg::Ipv4,
                            "IP address",
                            true,
                            vec![
                                kw("detail", "Display all information", true, vec![]),
                                kw("long", "Display in long format", true, vec![]),
                            ],
                        )],
                    ),
                    kw("count", "Display number of connections in use", true, vec![]),
                    kw("detail", "Display all information", true, vec![conn_address()]),
                    kw("long", "Display in long format", true, vec![conn_address()]),
                ],
            ),
            kw(
                "crypto",
                "Show crypto information",
                false,
                vec![
                    kw(
                        "ikev2",
                        "Show IKEv2 information",
                        false,
                        vec![kw("sa", "Show IKEv2 security associations", true, vec![detail()])],
                    ),
                    kw(
                        "ipsec",
                        "Show IPsec information",
                        false,
                        vec![
                            kw(
                                "sa",
                                "Show IPsec security associations",
                                true,
                                vec![
                                    kw(
                                        "detail",
                                        "Show detailed information",
                                        true,
                                        vec![kw(
                                            "peer",
                                            "Show IPsec security associations of one peer",
                                            false,
                                            vec![arg(Arg::Ip, "Peer IP address", true, vec![])],
                                        )],
                                    ),
                                    kw(
                                        "peer",
                                        "Show IPsec security associations of one peer",
                                        false,
                                        vec![arg(Arg::Ip, "Peer IP address", true, vec![detail()])],
                                    ),
                                ],
                            ),
                            kw("stats", "Show global IPsec statistics", true, vec![]),
                        ],
                    ),
                ],
            ),
            kw("logging", "Show the contents of the logging buffer", true, vec![]),
            kw("running-config", "Show the current operating configuration", true, running),
            kw("version", "Display the system software version", true, vec![]),
            kw(
                "vpn-sessiondb",
                "Show VPN session information",
                false,
                vec![kw(
                    "anyconnect",
                    "AnyConnect client sessions",
                    true,
                    vec![kw(
                        "filter",
                        "Filter the sessions",
                        false,
                        vec![
                            kw(
                                "ipaddress",
                                "Sessions with this assigned address",
                                false,
                                vec![arg(Arg::Ipv4, "Assigned IP address", true, vec![])],
                            ),
                            kw("name", "Sessions of this user", false, vec![arg(Arg::Word, "User name", true, vec![])]),
                        ],
                    )],
                )],
            ),
        ],
    );

    let clear = kw(
        "clear",
        "Reset functions",
        false,
        vec![
            kw(
                "asp",
                "Clear accelerated security path counters",
                false,
                vec![kw("drop", "Clear accelerated security path drop counters", true, vec![])],
            ),
            kw(
                "conn",
                "Clear connections",
                true,
                vec![kw(
                    "address",
                    "Clear connections of one IP address",
                    false,
                    vec![arg(Arg::Ipv4, "IP address", true, vec![])],
                )],
            ),
            kw(
                "crypto",
                "Clear crypto security associations",
                false,
                vec![
                    kw(
                        "ikev2",
                        "Clear IKEv2 information",
                        false,
                        vec![kw(
                            "sa",
                            "Delete IKEv2 security associations (and their child SAs)",
                            true,
                            vec![arg(Arg::Ip, "Peer IP address", true, vec![])],
                        )],
                    ),
                    kw(
                        "ipsec",
                        "Clear IPsec information",
                        false,
                        vec![kw(
                            "sa",
                            "Delete IPsec security associations",
                            true,
                            vec![kw(
                                "peer",
                                "Delete the IPsec security associations of one peer",
                                false,
                                vec![arg(Arg::Ip, "Peer IP address", true, vec![])],
                            )],
                        )],
                    ),
                ],
            ),
        ],
    );

    let sessiondb = kw(
        "vpn-sessiondb",
        "Manage the VPN session database",
        false,
        vec![kw(
            "logoff",
            "Log off remote-access sessions",
            false,
            vec![
                kw("all", "Log off all sessions", true, vec![noconfirm()]),
                kw(
                    "index",
                    "Log off the session with this index",
                    false,
                    vec![arg(Arg::Number, "Session index", true, vec![noconfirm()])],
                ),
                kw("name", "Log off the sessions of one user", false, vec![arg(Arg::Word, "User name", true, vec![noconfirm()])]),
            ],
        )],
    );

    let reload = kw(
        "reload",
        "Re-read the configuration file and apply what changed",
        true,
        vec![kw(
            "config",
            "Read this file instead of the one the daemon was started with",
            false,
            vec![arg(Arg::File, "Configuration file (absolute path, as the daemon sees it)", true, vec![])],
        )],
    );

    let stop = kw(
        "stop",
        "Stop the daemon; only the full word is taken (remote-access clients are told; the shell then exits)",
        true,
        vec![kw(
            "keep-sessions",
            "Planned restart: save the remote-access sessions for the next start, do not tell the clients",
            true,
            vec![],
        )],
    );

    vec![
        clear,
        kw("exit", "Exit the shell", true, vec![]),
        kw("quit", "Exit the shell", true, vec![]),
        reload,
        show,
        stop,
        sessiondb,
    ]
}

/// A word of a line with its byte column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Word<'a> {
    pub col: usize,
    pub text: &'a str,
}

/// Splits on whitespace, keeping byte columns (for the caret).
pub fn words(line: &str) -> Vec<Word<'_>> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        if c.is_whitespace() {
            if let Some(s) = start.take() {
                out.push(Word { col: s, text: &line[s..i] });
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        out.push(Word { col: s, text: &line[s..] });
    }
    out
}

/// Why words did not walk down the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkError {
    /// The word at this column fits nothing here.
    Invalid { col: usize },
    /// The word at this column is a prefix of several keywords.
    Ambiguous { col: usize, word: String },
}

/// Where a walk stopped: the nodes that may come next, and whether a line may end here.
#[derive(Debug, Clone)]
pub struct Position<'t> {
    pub next: &'t [Node],
    pub end: bool,
    /// Inside a `LINE` argument: every further word is accepted as written.
    pub rest: bool,
}

/// Matches one word against the choices of a position: an exact keyword, else a unique keyword
/// prefix, else an argument that accepts it.
pub fn match_word<'t>(choices: &'t [Node], word: &str) -> Result<&'t Node, MatchError> {
    let w = word.to_ascii_lowercase();
    let keywords = || choices.iter().filter_map(|n| if let Token::Keyword(k) = n.token { Some((k, n)) } else { None });
    if let Some((_, n)) = keywords().find(|(k, _)| *k == w) {
        return Ok(n);
    }
    // `stop` and its like are only taken in full, as the daemon takes them
    // (`gateway::control::FULL_WORD_ONLY`); `?` and TAB still offer them.
    let mut hits = keywords()
        .filter(|(k, _)| !gateway::control::FULL_WORD_ONLY.contains(k))
        .filter(|(k, _)| k.starts_with(w.as_str()));
    match (hits.next(), hits.next()) {
        (Some((_, n)), None) => return Ok(n),
        (Some(_), Some(_)) => return Err(MatchError::Ambiguous),
        _ => {}
    }
    choices
        .iter()
        .find(|n| matches!(n.token, Token::Arg(a) if a.accepts(word)))
        .ok_or(MatchError::NoMatch)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchError {
    NoMatch,
    Ambiguous,
}

/// Walks complete words from the root.
pub fn walk<'t>(root: &'t [Node], words: &[Word<'_>]) -> Result<Position<'t>, WalkError> {
    let mut pos = Position { next: root, end: false, rest: false };
    for w in words {
        if pos.rest {
            continue;
        }
        match match_word(pos.next, w.text) {
            Ok(n) => {
                pos = Position { next: &n.next, end: n.end, rest: n.token == Token::Arg(Arg::Rest) };
            }
            Err(MatchError::Ambiguous) => return Err(WalkError::Ambiguous { col: w.col, word: w.text.to_string() }),
            Err(MatchError::NoMatch) => return Err(WalkError::Invalid { col: w.col }),
        }
    }
    Ok(pos)
}

/// The line with every keyword abbreviation written out (`sh cry ipsec sa` ->
/// `show crypto ipsec sa`); arguments stay as written. None when a word does not walk.
#[cfg(test)]
pub fn expand(line: &str) -> Option<String> {
    let ws = words(line);
    let mut next = tree();
    let mut rest = false;
    let mut out = Vec::new();
    for w in &ws {
        if rest {
            out.push(w.text.to_string());
            continue;
        }
        let n = match_word(next, w.text).ok()?;
        match n.token {
            Token::Keyword(k) => out.push(k.to_string()),
            Token::Arg(a) => {
                rest = a == Arg::Rest;
                out.push(w.text.to_string());
            }
        }
        next = &n.next;
    }
    Some(out.join(" "))
}

/// One line of `?` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelpEntry {
    pub label: String,
    pub help: String,
}

/// `?` at the end of `line`. After a space it lists every word that may come next (and `<cr>`
/// when the command may end there); right after a partial word it lists the words that word
/// may become. An error says where the line stopped making sense.
pub fn help(line: &str) -> Result<Vec<HelpEntry>, WalkError> {
    let (done, partial) = split_partial(line);
    let pos = walk(tree(), &done)?;
    let mut out = Vec::new();
    if pos.rest {
        out.push(HelpEntry { label: Arg::Rest.placeholder().into(), help: "Further words of the command".into() });
        out.push(cr());
        return Ok(out);
    }
    match partial {
        None => {
            for n in pos.next {
                out.push(HelpEntry { label: n.label().into(), help: n.help.into() });
            }
            if pos.end {
                out.push(cr());
            }
        }
        Some(p) => {
            let lower = p.text.to_ascii_lowercase();
            for n in pos.next {
                let fits = match n.token {
                    Token::Keyword(k) => k.starts_with(lower.as_str()),
                    Token::Arg(a) => a.accepts(p.text),
                };
                if fits {
                    out.push(HelpEntry { label: n.label().into(), help: n.help.into() });
                }
            }
            if out.is_empty() {
                return Err(WalkError::Invalid { col: p.col });
            }
        }
    }
    Ok(out)
}

fn cr() -> HelpEntry {
    HelpEntry { label: "<cr>".into(), help: String::new() }
}

/// Formats `?` output in two aligned columns, as the ASA prints it.
pub fn format_help(entries: &[HelpEntry]) -> String {
    let width = entries.iter().map(|e| e.label.len()).max().unwrap_or(0);
    let mut s = String::new();
    for e in entries {
        if e.help.is_empty() {
            s.push_str(&format!("  {}\n", e.label));
        } else {
            s.push_str(&format!("  {:width$}  {}\n", e.label, e.help));
        }
    }
    s
}

/// TAB: the start of the word under completion and the keywords it may become (each followed
/// by a space, so a unique completion moves on to the next word). Arguments are not completed.
pub fn complete(line: &str, pos: usize) -> (usize, Vec<String>) {
    let head = &line[..pos.min(line.len())];
    let (done, partial) = split_partial(head);
    let start = partial.map(|p| p.col).unwrap_or(head.len());
    let Ok(position) = walk(tree(), &done) else { return (start, Vec::new()) };
    if position.rest {
        return (start, Vec::new());
    }
    let prefix = partial.map(|p| p.text.to_ascii_lowercase()).unwrap_or_default();
    let cands = position
        .next
        .iter()
        .filter_map(|n| match n.token {
            Token::Keyword(k) if k.starts_with(prefix.as_str()) => Some(format!("{k} ")),
            _ => None,
        })
        .collect();
    (start, cands)
}

/// The complete words of a line and the word being typed at its end (None after whitespace).
fn split_partial(line: &str) -> (Vec<Word<'_>>, Option<Word<'_>>) {
    let mut ws = words(line);
    let ends_in_space = line.chars().last().is_none_or(char::is_whitespace);
    let partial = if ends_in_space { None } else { ws.pop() };
    (ws, partial)
}

/// Every complete command the tree describes, with sample values for the arguments (each
/// keyword written out in full). Used by the tests against the daemon's parser.
#[cfg(test)]
pub fn complete_paths() -> Vec<String> {
    fn go(nodes: &[Node], prefix: &mut Vec<String>, out: &mut Vec<String>) {
        for n in nodes {
            let values: Vec<&str> = match n.token {
                Token::Keyword(k) => vec![k],
                Token::Arg(a) => a.samples().to_vec(),
            };
            for v in values {
                prefix.push(v.to_string());
                if n.end {
                    out.push(prefix.join(" "));
                }
                go(&n.next, prefix, out);
                prefix.pop();
            }
        }
    }
    let mut out = Vec::new();
    go(tree(), &mut Vec::new(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_local(line: &str) -> bool {
        LOCAL_WORDS.contains(&line)
    }

    /// The table and the daemon agree: every command the shell offers, the daemon's parser
    /// accepts, in full and with the shortest abbreviation of each keyword.
    #[test]
    fn every_complete_path_is_accepted_by_the_daemon_parser() {
        let paths = complete_paths();
        assert!(paths.len() > 40, "{paths:?}");
        for p in paths.iter().filter(|p| !is_local(p)) {
            assert!(gateway::control::parse(p).is_ok(), "daemon refuses `{p}`: {:?}", gateway::control::parse(p));
            let short = shortest_abbreviation(p);
            assert!(gateway::control::parse(&short).is_ok(), "daemon refuses `{short}` (from `{p}`)");
            assert_eq!(expand(&short).as_deref(), Some(p.as_str()), "shell expands `{short}` differently");
        }
    }

    /// Every word position that needs more words is also incomplete for the daemon, and one a
    /// command can end at is complete there: the `end` marks agree with the parser.
    #[test]
    fn incomplete_paths_are_incomplete_for_the_daemon() {
        fn go(nodes: &[Node], prefix: &mut Vec<String>) {
            for n in nodes {
                let v = match n.token {
                    Token::Keyword(k) => k.to_string(),
                    Token::Arg(a) => a.samples()[0].to_string(),
                };
                prefix.push(v);
                let line = prefix.join(" ");
                if !n.end && !LOCAL_WORDS.contains(&line.as_str()) {
                    assert_eq!(
                        gateway::control::parse(&line),
                        Err(gateway::control::ParseError::Incomplete),
                        "`{line}` ends early for the shell but not for the daemon"
                    );
                }
                go(&n.next, prefix);
                prefix.pop();
            }
        }
        go(tree(), &mut Vec::new());
    }

    /// Where a keyword is expected, a word the tree does not know is refused by the daemon at
    /// that word too (the tree is not missing a branch the parser has at that position, for the
    /// nonsense word used here, and the caret columns agree).
    #[test]
    fn unknown_words_are_refused_at_the_same_column() {
        for line in ["bogus", "show bogus", "show crypto bogus", "clear crypto ipsec bogus", "sh conn bogus", "vpn-sessiondb logoff bogus"] {
            let shell = help(line).unwrap_err();
            let daemon = gateway::control::parse(line).unwrap_err();
            match (shell, daemon) {
                (WalkError::Invalid { col: a }, gateway::control::ParseError::Invalid { col: b }) => assert_eq!(a, b, "{line}"),
                (s, d) => panic!("{line}: shell {s:?}, daemon {d:?}"),
            }
        }
    }

    /// The other direction: at every keyword position of the table, each letter is accepted
    /// (as a unique abbreviation) by the daemon exactly when the table accepts it. A keyword the
    /// daemon has and the table lacks (or the reverse) changes the answer for its first letter.
    #[test]
    fn the_daemon_has_no_keyword_the_table_lacks() {
        fn go(nodes: &[Node], prefix: &mut Vec<String>, mismatches: &mut Vec<String>) {
            let free = nodes.iter().any(|n| matches!(n.token, Token::Arg(Arg::Word | Arg::File | Arg::Rest)));
            let is_local = prefix.len() == 1 && LOCAL_WORDS.contains(&prefix[0].as_str());
            if !free && !is_local {
                let head = prefix.join(" ");
                for letter in 'a'..='z' {
                    let line = if head.is_empty() { letter.to_string() } else { format!("{head} {letter}") };
                    let col = line.len() - 1;
                    let daemon = !matches!(gateway::control::parse(&line), Err(gateway::control::ParseError::Invalid { col: c }) if c == col);
                    let shell = match_word(nodes, &letter.to_string()).is_ok()
                        && !(prefix.is_empty() && LOCAL_WORDS.iter().any(|w| w.starts_with(letter)));
                    if daemon != shell {
                        mismatches.push(format!("`{line}`: daemon {}, shell {}", daemon, shell));
                    }
                }
            }
            for n in nodes {
                let values: Vec<&str> = match n.token {
                    Token::Keyword(k) => vec![k],
                    Token::Arg(Arg::Rest) => continue,
                    Token::Arg(a) => a.samples()[..1].to_vec(),
                };
                for v in values {
                    prefix.push(v.to_string());
                    go(&n.next, prefix, mismatches);
                    prefix.pop();
                }
            }
        }
        let mut mismatches = Vec::new();
        go(tree(), &mut Vec::new(), &mut mismatches);
        assert!(mismatches.is_empty(), "table and daemon parser disagree:\n{}", mismatches.join("\n"));
    }

    fn shortest_abbreviation(path: &str) -> String {
        let mut next = tree();
        let mut out = Vec::new();
        let mut rest = false;
        for w in words(path) {
            if rest {
                out.push(w.text.to_string());
                continue;
            }
            let n = match_word(next, w.text).unwrap();
            match n.token {
                Token::Keyword(k) => {
                    let short = (1..=k.len()).map(|i| &k[..i]).find(|p| matches!(match_word(next, p), Ok(m) if m.label() == k)).unwrap();
                    out.push(short.to_string());
                }
                Token::Arg(a) => {
                    rest = a == Arg::Rest;
                    out.push(w.text.to_string());
                }
            }
            next = &n.next;
        }
        out.join(" ")
    }

    #[test]
    fn abbreviations_expand_like_the_asa() {
        assert_eq!(expand("sh cry ipsec sa").as_deref(), Some("show crypto ipsec sa"));
        assert_eq!(expand("sh conn").as_deref(), Some("show conn"));
        assert_eq!(expand("sh run all sysopt").as_deref(), Some("show running-config all sysopt"));
        assert_eq!(expand("SH CRY IKE SA DET").as_deref(), Some("show crypto ikev2 sa detail"));
        assert_eq!(expand("cl cry ips sa pe 192.0.2.9").as_deref(), Some("clear crypto ipsec sa peer 192.0.2.9"));
        assert_eq!(expand("vpn-s log na Bob").as_deref(), Some("vpn-sessiondb logoff name Bob"));
        // `s` is `show`, as on the ASA; `stop` is only taken in full (it ends the gateway
        // without a confirmation), so `st` and `sto` walk nowhere, while `?` and TAB offer it.
        assert_eq!(expand("s run").as_deref(), Some("show running-config"));
        assert_eq!(expand("s cry ipsec sa").as_deref(), Some("show crypto ipsec sa"));
        assert_eq!(expand("stop keep").as_deref(), Some("stop keep-sessions"));
        assert_eq!(expand("st"), None);
        assert_eq!(expand("sto keep"), None);
        let labels: Vec<String> = help("st").unwrap().into_iter().map(|e| e.label).collect();
        assert_eq!(labels, ["stop"]);
        assert_eq!(complete("sto", 3), (0, vec!["stop ".to_string()]));
        // `c` is ambiguous (conn, crypto) as on the ASA; `i` too (ikev2, ipsec).
        assert_eq!(expand("sh c"), None);
        assert_eq!(expand("show crypto i sa"), None);
        assert_eq!(walk(tree(), &words("show crypto i")).unwrap_err(), WalkError::Ambiguous { col: 12, word: "i".into() });
    }

    #[test]
    fn question_mark_lists_next_words_with_descriptions() {
        let h = help("show crypto ").unwrap();
        assert_eq!(
            format_help(&h),
            "  ikev2  Show IKEv2 information\n  ipsec  Show IPsec information\n"
        );
        // A command that may end: <cr> last.
        let h = help("sh cry ipsec sa ").unwrap();
        let labels: Vec<&str> = h.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(labels, ["detail", "peer", "<cr>"]);
        // Arguments by their ASA placeholder.
        let h = help("clear crypto ikev2 sa ").unwrap();
        assert_eq!(format_help(&h), "  A.B.C.D|X:X:X:X::X  Peer IP address\n  <cr>\n");
        // After a partial word: what it may become.
        let labels: Vec<String> = help("show c").unwrap().into_iter().map(|e| e.label).collect();
        assert_eq!(labels, ["conn", "crypto"]);
        let labels: Vec<String> = help("sh").unwrap().into_iter().map(|e| e.label).collect();
        assert_eq!(labels, ["show"]);
        // Top level lists every verb, local ones included.
        let labels: Vec<String> = help("").unwrap().into_iter().map(|e| e.label).collect();
        assert_eq!(labels, ["clear", "exit", "quit", "reload", "show", "stop", "vpn-sessiondb"]);
        // Errors carry the column of the word that does not fit.
        assert_eq!(help("show cypto ").unwrap_err(), WalkError::Invalid { col: 5 });
        assert_eq!(help("show zz").unwrap_err(), WalkError::Invalid { col: 5 });
        // Inside free-form filter words.
        let labels: Vec<String> = help("show run crypto ").unwrap().into_iter().map(|e| e.label).collect();
        assert_eq!(labels, ["LINE", "<cr>"]);
    }

    #[test]
    fn tab_completes_keywords() {
        assert_eq!(complete("sh", 2), (0, vec!["show ".to_string()]));
        assert_eq!(complete("show cr", 7), (5, vec!["crypto ".to_string()]));
        assert_eq!(complete("show c", 6), (5, vec!["conn ".to_string(), "crypto ".to_string()]));
        assert_eq!(complete("sh cry ", 7), (7, vec!["ikev2 ".to_string(), "ipsec ".to_string()]));
        assert_eq!(complete("SH CRY IP", 9), (7, vec!["ipsec ".to_string()]));
        // Cursor in the middle: completes the word before the cursor.
        assert_eq!(complete("sh ver xyz", 6), (3, vec!["version ".to_string()]));
        // Nothing after a wrong word, nothing for arguments.
        assert_eq!(complete("show bogus ", 11), (11, vec![]));
        assert_eq!(complete("clear conn address ", 19), (19, vec![]));
        let (_, all) = complete("", 0);
        assert_eq!(all, ["clear ", "exit ", "quit ", "reload ", "show ", "stop ", "vpn-sessiondb "]);
    }
}
