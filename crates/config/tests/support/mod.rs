//! Code fences of `docs/*.md`, shared by `docs.rs` and `roundtrip.rs`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A fenced block. Its info string is `LANG [name=NAME] [context=NAME]`: a block with
/// `context=NAME` is a fragment that extends the block named NAME in the same file, and is
/// checked as that block followed by the fragment.
pub struct Fence {
    pub file: String,
    /// 1-based line of the first content line.
    pub line: usize,
    pub lang: String,
    /// The block's own lines.
    pub own: String,
    /// What is parsed: the context block's text, then `own`.
    pub text: String,
    /// The text between the previous heading (included) and the fence.
    pub preamble: String,
}

pub fn docs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs")
}

pub fn read_doc(name: &str) -> String {
    std::fs::read_to_string(docs_dir().join(name)).unwrap_or_else(|e| panic!("docs/{name}: {e}"))
}

/// Fenced blocks of one markdown text, contexts resolved.
pub fn fences(file: &str, md: &str) -> Vec<Fence> {
    let mut raw: Vec<(usize, String, String, String)> = Vec::new(); // line, info, body, preamble
    let mut open: Option<(usize, String, String)> = None;
    let mut body = String::new();
    let mut since_heading = String::new();
    for (i, l) in md.lines().enumerate() {
        if let Some(info) = l.trim_start().strip_prefix("```") {
            match open.take() {
                None => {
                    open = Some((i + 2, info.trim().to_string(), since_heading.clone()));
                    body.clear();
                }
                Some((line, info, preamble)) => raw.push((line, info, body.clone(), preamble)),
            }
            continue;
        }
        if open.is_some() {
            body.push_str(l);
            body.push('\n');
        } else {
            if l.starts_with('#') {
                since_heading.clear();
            }
            since_heading.push_str(l);
            since_heading.push('\n');
        }
    }
    assert!(open.is_none(), "{file}: unterminated code fence");
    let attr = |info: &str, key: &str| info.split_whitespace().find_map(|w| w.strip_prefix(key).map(str::to_string));
    let named: BTreeMap<String, String> =
        raw.iter().filter_map(|(_, info, body, _)| attr(info, "name=").map(|n| (n, body.clone()))).collect();
    raw.into_iter()
        .map(|(line, info, body, preamble)| {
            let text = match attr(&info, "context=") {
                Some(c) => {
                    let base = named.get(&c).unwrap_or_else(|| panic!("{file}:{line}: no block named {c}"));
                    format!("{base}{body}")
                }
                None => body.clone(),
            };
            let lang = info.split_whitespace().next().unwrap_or("").to_string();
            Fence { file: file.to_string(), line, lang, own: body, text, preamble }
        })
        .collect()
}

/// Every fence of every `docs/*.md`.
pub fn all_fences() -> Vec<Fence> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(docs_dir())
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    files.sort();
    let mut v = Vec::new();
    for p in files {
        let name = p.file_name().and_then(|n| n.to_str()).expect("name").to_string();
        let md = std::fs::read_to_string(&p).expect("read");
        v.extend(fences(&format!("docs/{name}"), &md));
    }
    v
}

pub fn label(f: &Fence) -> String {
    format!("{}:{}", f.file, f.line)
}
