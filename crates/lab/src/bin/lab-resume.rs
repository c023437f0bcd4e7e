#![allow(clippy::disallowed_methods)] // wall-clock measurement is the point of this tool
//! Resume-time benchmark of issue 3 (root; not a test). See `lab::resume` for what is broken
//! and what is measured.
//!
//! ```text
//! lab-resume [--only strongswan|holdfast] [--metric a|b] [--rate-mbit R] [--keep DIR] [OUTAGE_SECS ...]
//! lab-resume recv --listen ADDR:PORT --log FILE            (role on host-b)
//! lab-resume send --connect ADDR:PORT --rate-mbit R        (role on host-a)
//! ```
//!
//! Outages default to 5 30 120. Every (outage, metric) runs strongSwan then holdfast back to
//! back, each on a fresh topology and gateway pair, so both meet the same machine load.
//! `scripts/bench-resume` builds and runs it.

use lab::resume::{describe, run_case, CaseResult, Imp, Metric, Opts};
use std::process::ExitCode;
use std::time::Duration;

fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("recv") => (|| {
            let listen = opt(&args, "--listen").ok_or("--listen is required")?.parse().map_err(|e| format!("--listen: {e}"))?;
            let log = opt(&args, "--log").ok_or("--log is required")?;
            lab::resume::run_receiver(listen, std::path::Path::new(log))
        })(),
        Some("send") => (|| {
            let to = opt(&args, "--connect").ok_or("--connect is required")?.parse().map_err(|e| format!("--connect: {e}"))?;
            let rate: f64 = opt(&args, "--rate-mbit").unwrap_or("60").parse().map_err(|e| format!("--rate-mbit: {e}"))?;
            let secs = opt(&args, "--seconds").map(|s| s.parse::<f64>()).transpose().map_err(|e| format!("--seconds: {e}"))?;
            lab::resume::run_sender(to, rate, secs)
        })(),
        _ => return bench(&args),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab-resume: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Row {
    outage: u64,
    metric: Metric,
    imp: Imp,
    result: Result<CaseResult, String>,
    load: String,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

fn bench(args: &[String]) -> ExitCode {
    let mut outages = Vec::new();
    let mut only = None;
    let mut metrics = vec![Metric::TunnelBack, Metric::PathBack];
    let mut rate = 60.0;
    let mut keep = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--only" => {
                only = args.get(i + 1).map(|s| s.to_ascii_lowercase());
                i += 1;
            }
            "--metric" => {
                metrics = match args.get(i + 1).map(String::as_str) {
                    Some("a") | Some("A") => vec![Metric::TunnelBack],
                    Some("b") | Some("B") => vec![Metric::PathBack],
                    _ => metrics,
                };
                i += 1;
            }
            "--keep" => {
                keep = args.get(i + 1).map(std::path::PathBuf::from);
                i += 1;
            }
            "--rate-mbit" => {
                rate = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(rate);
                i += 1;
            }
            a => match a.parse::<u64>() {
                Ok(n) if n > 0 => outages.push(n),
                _ => {
                    eprintln!("usage: lab-resume [--only strongswan|holdfast] [--metric a|b] [--rate-mbit R] [--keep DIR] [OUTAGE_SECS ...]");
                    return ExitCode::from(2);
                }
            },
        }
        i += 1;
    }
    if outages.is_empty() {
        outages = vec![5, 30, 120];
    }
    let imps: Vec<Imp> = [Imp::StrongSwan, Imp::Holdfast]
        .into_iter()
        .filter(|i| only.as_deref().is_none_or(|o| o == i.label().to_ascii_lowercase()))
        .collect();
    let tool = std::env::current_exe().unwrap_or_default();
    let o = Opts { rate_mbit: rate, warmup: Duration::from_secs(4), tool, keep };
    let start_load = loadavg();
    let started = lab::resume::epoch_now();
    let mut rows = Vec::new();
    let mut port = 5300u16;
    for &d in &outages {
        for &m in &metrics {
            for &imp in &imps {
                port += 1;
                eprintln!("lab-resume: === {} {}, outage {d} s (load {}) ===", imp.label(), m.label(), loadavg());
                let result = run_case(imp, m, Duration::from_secs(d), port, &o).map_err(|e| e.to_string());
                match &result {
                    Ok(r) => eprintln!("lab-resume: {} {} {d} s: resume {} s; {}", imp.label(), m.label(), fmt(r.resume_secs), describe(m, r)),
                    Err(e) => eprintln!("lab-resume: {} {} {d} s FAILED: {e}", imp.label(), m.label()),
                }
                rows.push(Row { outage: d, metric: m, imp, result, load: loadavg() });
            }
        }
    }
    report(&rows, rate, &start_load, lab::resume::epoch_now() - started);
    if rows.iter().any(|r| r.result.is_err()) {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn fmt(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.3}"))
}

fn report(rows: &[Row], rate: f64, start_load: &str, secs: f64) {
    let figure = |r: &Row| -> String {
        match &r.result {
            Ok(c) => match c.resume_secs {
                Some(v) => format!("{v:.3}"),
                None => format!("none ({})", c.notes.join("; ")),
            },
            Err(e) => format!("FAILED ({})", e.lines().next().unwrap_or("")),
        }
    };
    println!();
    println!("Resume time: one TCP transfer host-a -> host-b paced at {rate} Mbit/s; seconds to the first new in-order byte at the receiver.");
    println!("A: from the completion of the IKE exchange that re-creates the CHILD_SA (IKE_AUTH response on the wan) after a tunnel outage (wan blocked + every SA cleared on both gateways at its start);");
    println!("B: from the removal of a silent wan block (nothing cleared).");
    println!();
    println!("| outage | metric | strongSwan (s) | holdfast (s) | strongSwan / holdfast | holdfast target | met |");
    println!("|---|---|---|---|---|---|---|");
    let mut keys: Vec<(u64, Metric)> = Vec::new();
    for r in rows {
        if !keys.contains(&(r.outage, r.metric)) {
            keys.push((r.outage, r.metric));
        }
    }
    for (d, m) in &keys {
        let get = |imp: Imp| rows.iter().find(|r| r.outage == *d && r.metric == *m && r.imp == imp);
        let sw = get(Imp::StrongSwan);
        let hf = get(Imp::Holdfast);
        let val = |r: Option<&Row>| r.and_then(|r| r.result.as_ref().ok()).and_then(|c| c.resume_secs);
        let ratio = match (val(sw), val(hf)) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.1}x", a / b),
            _ => "-".into(),
        };
        let met = match (hf, val(hf)) {
            (None, _) => "-".to_string(),
            (Some(_), Some(v)) => if v <= m.target_secs() { "yes" } else { "NO" }.to_string(),
            (Some(_), None) => "NO".to_string(),
        };
        println!(
            "| {d} s | {} | {} | {} | {ratio} | <= {} s | {met} |",
            m.label(),
            sw.map_or("-".into(), figure),
            hf.map_or("-".into(), figure),
            m.target_secs()
        );
    }
    println!();
    println!("Whole stall seen by the user: from the end of the block to the first new byte (A includes the IKE re-establishment):");
    println!();
    println!("| outage | metric | strongSwan (s) | holdfast (s) |");
    println!("|---|---|---|---|");
    for (d, m) in &keys {
        let total = |imp: Imp| {
            rows.iter()
                .find(|r| r.outage == *d && r.metric == *m && r.imp == imp)
                .map_or("-".to_string(), |r| match &r.result {
                    Ok(c) => fmt(c.total_after_unblock),
                    Err(_) => "FAILED".into(),
                })
        };
        println!("| {d} s | {} | {} | {} |", short(*m), total(Imp::StrongSwan), total(Imp::Holdfast));
    }
    println!();
    println!("Reading of the captures per case (times in seconds after the block ended; 'ref' = CHILD_SA up for A, block end for B):");
    for r in rows {
        match &r.result {
            Ok(c) => println!("- {} {} s {}: {} (load {})", r.imp.label(), r.outage, short(r.metric), describe(r.metric, c), r.load),
            Err(e) => println!("- {} {} s {}: FAILED: {}", r.imp.label(), r.outage, short(r.metric), e.lines().next().unwrap_or("")),
        }
    }
    println!();
    println!("load average (1/5/15 min) at start: {start_load}; at end: {}; run took {:.0} s", loadavg(), secs);
}

fn short(m: Metric) -> &'static str {
    match m {
        Metric::TunnelBack => "A",
        Metric::PathBack => "B",
    }
}
