//! `holdfast`: run the gateway, check a configuration, or talk to a running gateway.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;

#[derive(Parser)]
#[command(name = "holdfast", version, about = "VPN head-end with ASA-style configuration")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway in the foreground in the current network namespace.
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
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
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// `show ...` on the running gateway (e.g. `show crypto ipsec sa`).
    Show {
        #[arg(required = true, num_args = 1.., value_name = "WORDS")]
        words: Vec<String>,
        #[arg(long, value_name = "SOCKET", default_value = gateway::control::DEFAULT_SOCKET)]
        control: PathBuf,
    },
    /// `vpn-sessiondb logoff name USER | index N | all` on the running gateway: ends
    /// remote-access sessions without asking for confirmation.
    #[command(name = "vpn-sessiondb")]
    VpnSessiondb {
        #[arg(required = true, num_args = 1.., value_name = "WORDS")]
        words: Vec<String>,
        #[arg(long, value_name = "SOCKET", default_value = gateway::control::DEFAULT_SOCKET)]
        control: PathBuf,
    },
    /// `clear ...` on the running gateway (e.g. `clear crypto ikev2 sa 192.0.2.2`).
    Clear {
        #[arg(required = true, num_args = 1.., value_name = "WORDS")]
        words: Vec<String>,
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
        Cmd::Check { config } => match load(&config) {
            Some(_) => {
                println!("{}: configuration OK", config.display());
                ExitCode::SUCCESS
            }
            None => ExitCode::FAILURE,
        },
        Cmd::Run { config, control, tun, mtu, no_offload, state_dir, ra_tun } => {
            let Some(cfg) = load(&config) else { return ExitCode::FAILURE };
            let opts = gateway::daemon::Options {
                control,
                tun_name: tun,
                tun_mtu: mtu,
                offload: !no_offload,
                state_dir,
                ra_tun_name: ra_tun,
            };
            match gateway::daemon::run(cfg, opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("holdfast: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Show { words, control } => remote("show", &words, &control),
        Cmd::Clear { words, control } => remote("clear", &words, &control),
        Cmd::VpnSessiondb { words, control } => remote("vpn-sessiondb", &words, &control),
        Cmd::Demo { quick, chart } => demo::run(demo::Options { quick, chart }),
    }
}

/// Parses and validates; prints diagnostics (errors and warnings) to stderr.
fn load(path: &Path) -> Option<policy::Config> {
    match config::load(path) {
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
