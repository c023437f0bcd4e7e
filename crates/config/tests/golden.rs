//! Golden tests: every `tests/golden/NAME.cfg` (and every `examples/NAME.cfg` of the repository,
//! expected output in `tests/golden/example-NAME.out`) is parsed and the result (diagnostics, or
//! warnings plus `show running-config` and `show running-config all sysopt`) is compared with
//! `tests/golden/NAME.out`. Files whose name contains `strict` are parsed in strict mode.
//!
//! Regenerate after an intended change with `UPDATE_GOLDEN=1 cargo test -p holdfast-config
//! --test golden`, then review the diff before committing.

use std::path::{Path, PathBuf};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// What the golden `.out` file holds for one input.
pub fn render(name: &str, text: &str) -> String {
    let opts = config::ParseOptions { strict: name.contains("strict") };
    match config::parse_with(name, text, opts) {
        Ok(loaded) => {
            let mut s = String::new();
            for w in loaded.warnings.iter() {
                s.push_str(&w.to_string());
                s.push('\n');
            }
            s.push_str("--- show running-config ---\n");
            s.push_str(&config::running_config(&loaded.config));
            s.push_str("--- show running-config all sysopt ---\n");
            s.push_str(&config::running_config_all_sysopt(&loaded.config));
            s
        }
        Err(d) => format!("{d}\n"),
    }
}

#[test]
fn golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    // (input, expected output): the golden corpus, plus the repository's examples whose
    // expected output lives next to the corpus as `example-NAME.out`.
    let mut inputs: Vec<(PathBuf, PathBuf)> = Vec::new();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    for (dir, prefix) in [(golden_dir(), ""), (examples, "example-")] {
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.expect("dir entry").path();
            if p.extension().is_some_and(|e| e == "cfg") {
                let stem = p.file_stem().and_then(|n| n.to_str()).expect("utf-8 name");
                let out = golden_dir().join(format!("{prefix}{stem}.out"));
                inputs.push((p, out));
            }
        }
    }
    inputs.sort();
    let mut failures = Vec::new();
    for (input, out) in &inputs {
        let name = input.file_name().and_then(|n| n.to_str()).expect("utf-8 name");
        let text = std::fs::read_to_string(input).expect("read golden input");
        let got = render(name, &text);
        if update {
            std::fs::write(out, &got).expect("write golden output");
            continue;
        }
        let want = std::fs::read_to_string(out).unwrap_or_else(|_| format!("<missing {}>", out.display()));
        if got != want {
            failures.push(format!("=== {name}: got ===\n{got}=== want ===\n{want}"));
        }
    }
    assert!(inputs.len() >= 10, "expected the golden corpus, found {} files", inputs.len());
    assert!(failures.is_empty(), "{} golden mismatches (UPDATE_GOLDEN=1 to regenerate, then review):\n{}", failures.len(), failures.join("\n"));
}
