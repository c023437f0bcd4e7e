//! `holdfast`: run the gateway, check a configuration, or talk to a running gateway.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod commands;
mod demo;
mod manpage;
mod shell;

/// `holdfast --version`: the crate version and, when built from a git checkout, the commit.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), env!("HOLDFAST_GIT_SUFFIX"));

const LONG_ABOUT: &str = "\
holdfast is a VPN head-end configured with the Cisco ASA's syntax: site-to-site IKEv2/ESP \
tunnels, a stateful connection table whose flows survive a tunnel outage \
(sysopt connection preserve-vpn-flows) and AnyConnect remote access. `holdfast run` is the \
daemon; `show`, `clear`, `vpn-sessiondb` and `shell` talk to it over its control socket.";

const EXAMPLES: &str = "\
Examples:
  holdfast check --config /etc/holdfast/holdfast.cfg
  holdfast check --strict --config asa-running-config.txt
  holdfast run --config /etc/holdfast/holdfast.cfg --state-dir /var/lib/holdfast
  holdfast show crypto ipsec sa
  holdfast show conn long
  holdfast clear crypto ikev2 sa 192.0.2.2
  holdfast vpn-sessiondb logoff name alice
  holdfast stop --keep-sessions
  holdfast shell
  echo 'show version' | holdfast shell --control /run/holdfast/holdfast.sock

The control socket defaults to /run/holdfast/holdfast.sock; every talking command takes
--control SOCKET. See holdfast(1) and docs/ for the configuration reference.";

#[derive(Parser)]
#[command(name = "holdfast", version = VERSION, about = "VPN head-end with ASA-style configuration", long_about = LONG_ABOUT, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway in the foreground in the current network namespace.
    ///
    /// Needs CAP_NET_ADMIN (TUN, routes, nftables), CAP_NET_BIND_SERVICE (UDP 500, TCP/UDP 443)
    /// and CAP_NET_RAW (native ESP); packaging/holdfast.service runs it with exactly these.
    #[command(after_help = "Examples:\n  holdfast run --config /etc/holdfast/holdfast.cfg\n  holdfast run --strict --config gw.cfg --control /run/holdfast/holdfast.sock --state-dir /var/lib/holdfast")]
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Refuse lines for ASA features outside holdfast's scope instead of ignoring them.
        #[arg(long)]
        strict: bool,
        #[arg(long, value_name = "SOCKET", default_value = gateway::control::DEFAULT_SOCKET)]
        control: PathBuf,
        /// Name of the TUN device the protected networks are routed into.
        #[arg(long, value_name = "NAME", default_value = "hf0")]
        tun: String,
        /// MTU of the TUN device (leave room for ESP-in-UDP overhead).
        #[arg(long, value_name = "BYTES", default_value_t = 1400)]
        mtu: u16,
        /// Disable TUN GSO/GRO offload.
        #[arg(long)]
        no_offload: bool,
        /// Directory for state kept across restarts (the connection table); created mode 0700.
        #[arg(long, value_name = "DIR", default_value = gateway::flows::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Name of the remote-access TUN (AnyConnect client addresses are routed into it).
        #[arg(long, value_name = "NAME", default_value = "hfra0")]
        ra_tun: String,
    },
    /// Validate a configuration and print its diagnostics.
    ///
    /// Exit status 0 when the configuration can run, 1 on any error. Lines for ASA features
    /// outside holdfast's scope are summarised in one warning, or refused one by one with --strict.
    #[command(after_help = "Examples:\n  holdfast check --config /etc/holdfast/holdfast.cfg\n  holdfast check --strict --config asa-running-config.txt")]
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Refuse lines for ASA features outside holdfast's scope instead of ignoring them.
        #[arg(long)]
        strict: bool,
    },
    /// Interactive exec-mode prompt (`holdfast#`) for show, clear, vpn-sessiondb, reload and stop.
    ///
    /// TAB completes command words, `?` lists what may come next, keywords may be abbreviated
    /// (`sh cry ipsec sa`) except `stop`, which is taken only as the full word (it asks no
    /// confirmation), history is kept in ~/.holdfast_history (HOLDFAST_HISTORY overrides),
    /// `exit`, `quit` or Ctrl-D leave. When standard input is not a terminal, commands are read
    /// one per line and the exit status is 1 if any failed.
    #[command(after_help = "Examples:\n  holdfast shell\n  printf 'show crypto ikev2 sa\\nshow conn count\\n' | holdfast shell")]
    Shell {
        #[arg(long, value_name = "SOCKET", default_value = gateway::control::DEFAULT_SOCKET)]
        control: PathBuf,
    },
    /// Write the man pages (holdfast.1 and one per command) into DIR.
    #[command(name = "__man", hide = true)]
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// `show ...` on the running gateway (e.g. `show crypto ipsec sa`).
    #[command(after_help = "Examples:\n  holdfast show crypto ikev2 sa detail\n  holdfast show crypto ipsec sa peer 192.0.2.2\n  holdfast show conn address 10.1.0.10 long\n  holdfast show running-config all sysopt\n  holdfast show vpn-sessiondb anyconnect\n  holdfast show logging")]
    Show {
        #[arg(required = true, num_args = 1.., value_name = "WORDS")]
        words: Vec<String>,
        #[arg(long, value_name = "SOCKET", default_value = gateway::control::DEFAULT_SOCKET)]
        control: PathBuf,
        /// Answer as JSON for automation (conn, crypto ipsec sa, crypto ikev2 sa, asp drop,
        /// asp table vpn-context, vpn-sessiondb anyconnect, logging, ...); failures are
        /// `{"error": "..."}` with a non-zero exit status.
        #[arg(long)]
        json: bool,
    },
    /// `vpn-sessiondb logoff name USER | index N | all` on the running gateway: ends
    /// remote-access sessions without asking for confirmation.
    #[command(name = "vpn-sessiondb", after_help = "Examples:\n  holdfast vpn-sessiondb logoff name alice\n  holdfast vpn-sessiondb logoff index 3\n  holdfast vpn-sessiondb logoff all")]
    VpnSessiondb {
        #[arg(required = true, num_args = 1.., value_name = "WORDS")]
        words: Vec<String>,
        #[arg(long, value_name = "SOCKET", default_value = gateway::control::DEFAULT_SOCKET)]
        control: PathBuf,
    },
    /// `clear ...` on the running gateway (e.g. `clear crypto ikev2 sa 192.0.2.2`).
    #[command(after_help = "Examples:\n  holdfast clear crypto ikev2 sa 192.0.2.2\n  holdfast clear crypto ipsec sa peer 192.0.2.2\n  holdfast clear conn address 10.1.0.10\n  holdfast clear asp drop")]
    Clear {
        #[arg(required = true, num_args = 1.., value_name = "WORDS")]
        words: Vec<String>,
        #[arg(long, value_name = "SOCKET", default_value = gateway::control::DEFAULT_SOCKET)]
        control: PathBuf,
    },
    /// Apply a changed configuration to the running gateway without losing what it does not touch.
    ///
    /// The daemon reads its configuration file again (or FILE), validates it like `check` and,
    /// if valid, applies the difference: unchanged tunnels keep their SAs and flows, changed ones
    /// are re-established, removed ones deleted, added ones brought up; timeout, sysopt and
    /// logging apply at once. A configuration with errors, or with changes that need a restart
    /// (interfaces, remote access, tcpmss, metrics), is refused as a whole and nothing changes;
    /// the exit status is then 1. SIGHUP to the daemon does the same as `reload` without FILE.
    #[command(after_help = "Examples:\n  holdfast reload\n  holdfast reload --config /etc/holdfast/holdfast.cfg --control /run/holdfast/holdfast.sock\n  systemctl reload holdfast")]
    Reload {
        /// Read this file instead of the one the daemon was started with (it becomes the
        /// file later reloads read only if it is the same path).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long, value_name = "SOCKET", default_value = gateway::control::DEFAULT_SOCKET)]
        control: PathBuf,
    },
    /// Stop the running gateway, or with --keep-sessions restart it without the users noticing.
    ///
    /// Without --keep-sessions this is SIGTERM: remote-access clients are told the gateway is
    /// going away (they do not reconnect) and site-to-site tunnels are deleted. With
    /// --keep-sessions it is SIGQUIT, a planned restart: the remote-access sessions are saved in
    /// the state directory (ra-sessions.json) and their clients are not told, so they reconnect
    /// to the next `holdfast run` with the same --state-dir and keep their addresses and flows.
    /// The answer says how many sessions were saved; the daemon exits right after it.
    #[command(after_help = "Examples:\n  holdfast stop\n  holdfast stop --keep-sessions && holdfast run --config /etc/holdfast/holdfast.cfg")]
    Stop {
        /// Save the remote-access sessions for the next start instead of ending them.
        #[arg(long)]
        keep_sessions: bool,
        #[arg(long, value_name = "SOCKET", default_value = gateway::control::DEFAULT_SOCKET)]
        control: PathBuf,
    },
    /// Demo (root, needs only iproute2): two offices in network namespaces, a long download
    /// through a holdfast tunnel that breaks and comes back, with preserve-vpn-flows on and off.
    #[command(after_help = "Examples:\n  sudo holdfast demo\n  sudo holdfast demo --quick --chart demo.svg")]
    Demo {
        /// Smaller and faster (for CI): the whole demo in well under a minute.
        #[arg(long)]
        quick: bool,
        /// Write the throughput over time of both runs, outage marked, as an SVG chart.
        #[arg(long, value_name = "FILE.svg")]
        chart: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check { config, strict } => match load(&config, strict) {
            Some(_) => {
                println!("{}: configuration OK", config.display());
                ExitCode::SUCCESS
            }
            None => ExitCode::FAILURE,
        },
        Cmd::Run { config, strict, control, tun, mtu, no_offload, state_dir, ra_tun } => {
            let Some(cfg) = load(&config, strict) else { return ExitCode::FAILURE };
            let opts = gateway::daemon::Options {
                control,
                tun_name: tun,
                tun_mtu: mtu,
                offload: !no_offload,
                state_dir,
                ra_tun_name: ra_tun,
            };
            // Absolute: `holdfast reload` / SIGHUP read the same file again later.
            let file = std::path::absolute(&config).unwrap_or(config);
            match gateway::daemon::run_reloadable(cfg, opts, Some(file), strict) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("holdfast: {e}");
                    if let Some(hint) = privilege_hint(&e.to_string()) {
                        eprintln!("holdfast: {hint}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Show { words, control, json: false } => remote("show", &words, &control),
        Cmd::Show { words, control, json: true } => {
            let (out, ok) = gateway::control::request_json(&control, &words);
            print!("{out}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Clear { words, control } => remote("clear", &words, &control),
        Cmd::Reload { config, control } => {
            // The daemon resolves the path in its own working directory: send it absolute.
            let words: Vec<String> = match config {
                Some(c) => vec!["config".into(), std::path::absolute(&c).unwrap_or(c).display().to_string()],
                None => Vec::new(),
            };
            remote("reload", &words, &control)
        }
        Cmd::VpnSessiondb { words, control } => remote("vpn-sessiondb", &words, &control),
        Cmd::Stop { keep_sessions, control } => {
            let words: Vec<String> = if keep_sessions { vec!["keep-sessions".into()] } else { Vec::new() };
            remote("stop", &words, &control)
        }
        Cmd::Shell { control } => shell::run(&control),
        Cmd::Demo { quick, chart } => demo::run(demo::Options { quick, chart }),
        Cmd::Man { dir } => match manpage::write_all(Cli::command(), &dir) {
            Ok(files) => {
                for f in files {
                    println!("{}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("holdfast: cannot write man pages to {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
    }
}

/// Parses and validates; prints diagnostics (errors and warnings) to stderr.
fn load(path: &Path, strict: bool) -> Option<policy::Config> {
    match config::load_with(path, config::ParseOptions { strict }) {
        Ok(loaded) => {
            let w = loaded.warnings.to_string();
            if !w.trim().is_empty() {
                eprint!("{w}");
                if !w.ends_with('\n') {
                    eprintln!();
                }
            }
            // Resolves the tunnels and loads every certificate/key/CA file they name, so a
            // missing or mismatched file is reported here rather than at `run`.
            if let Err(e) = gateway::daemon::check_certificates(&loaded.config) {
                eprintln!("{}: error: {e}", path.display());
                return None;
            }
            Some(loaded.config)
        }
        Err(diags) => {
            let d = diags.to_string();
            eprint!("{d}");
            if !d.ends_with('\n') {
                eprintln!();
            }
            None
        }
    }
}

/// What to do when the daemon was refused a privileged operation (EPERM on a route, TUN or
/// nftables change; EACCES on a port below 1024).
fn privilege_hint(error: &str) -> Option<&'static str> {
    (error.contains("Operation not permitted") || error.contains("Permission denied") || error.contains("os error 1)")).then_some(
        "the daemon needs CAP_NET_ADMIN (TUN, routes, nftables), CAP_NET_BIND_SERVICE (UDP 500, TCP 443) and \
         CAP_NET_RAW (native ESP): run it as root or with those capabilities (packaging/holdfast.service)",
    )
}

fn remote(verb: &str, words: &[String], control: &Path) -> ExitCode {
    let line = format!("{verb} {}", words.join(" "));
    match gateway::control::request(control, &line) {
        Ok(answer) => {
            print!("{answer}");
            if gateway::control::is_error(&answer) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("holdfast: cannot reach the daemon at {}: {e}", control.display());
            ExitCode::FAILURE
        }
    }
}
