//! `cargo run -p holdfast-config --example check -- FILE [--strict] [--show]`: validates a
//! configuration like `holdfast check` and optionally prints `show running-config`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let strict = args.iter().any(|a| a == "--strict");
    let show = args.iter().any(|a| a == "--show");
    let Some(file) = args.iter().find(|a| !a.starts_with("--")) else {
        eprintln!("usage: check FILE [--strict] [--show]");
        return ExitCode::from(2);
    };
    match config::load_with(std::path::Path::new(file), config::ParseOptions { strict }) {
        Ok(loaded) => {
            if !loaded.warnings.is_empty() {
                eprintln!("{}", loaded.warnings);
            }
            if show {
                print!("{}", config::running_config(&loaded.config));
            }
            ExitCode::SUCCESS
        }
        Err(d) => {
            eprintln!("{d}");
            eprintln!("{} error(s)", d.error_count());
            ExitCode::FAILURE
        }
    }
}
