//! `show running-config` parses back to the same configuration: for every example at the repo
//! root, every ```asa block of docs/*.md and every golden input that is accepted, parse(running_config_unmasked(parse(x))) ==
//! parse(x), and rendering is a fixed point after one step.

mod support;

use std::path::{Path, PathBuf};

fn inputs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut v = Vec::new();
    for dir in [root.join("../../examples"), root.join("tests/golden")] {
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.expect("dir entry").path();
            if p.extension().is_some_and(|x| x == "cfg") {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

#[test]
fn running_config_round_trips() {
    let mut accepted = 0;
    let mut examples = 0;
    for path in inputs() {
        let strict = path.to_string_lossy().contains("strict");
        let opts = config::ParseOptions { strict };
        let is_example = path.components().any(|c| c.as_os_str() == "examples");
        let first = match config::load_with(&path, opts) {
            Ok(l) => l.config,
            Err(d) => {
                assert!(!is_example, "example {} must be valid:\n{d}", path.display());
                continue;
            }
        };
        accepted += 1;
        examples += usize::from(is_example);
        let text = config::running_config_unmasked(&first);
        let second = config::parse_with("running-config", &text, opts)
            .unwrap_or_else(|d| panic!("{}: running-config does not parse back:\n{d}\n--- text ---\n{text}", path.display()));
        assert_eq!(first, second.config, "{}: round trip changed the configuration\n{text}", path.display());
        // Everything `show running-config` prints is in scope: nothing of it may be ignored.
        assert!(
            !second.warnings.iter().any(|w| w.message.starts_with("ignored:")),
            "{}: running-config has lines outside holdfast's scope:\n{}",
            path.display(),
            second.warnings
        );
        assert_eq!(text, config::running_config_unmasked(&second.config), "{}: rendering is not a fixed point", path.display());
        // The masked form must differ from the real keys and must be refused, never accepted
        // with `*****` as a key.
        if first.tunnel_groups.iter().any(|t| t.ikev2_local_psk.is_some() || t.ikev2_remote_psk.is_some()) {
            let masked = config::running_config(&first);
            let key_lines: Vec<&str> = masked.lines().filter(|l| l.contains("pre-shared-key")).collect();
            assert!(!key_lines.is_empty());
            for l in key_lines {
                assert!(l.ends_with("pre-shared-key *****"), "{}: key not masked: {l}", path.display());
            }
            let err = config::parse("masked", &masked).expect_err("masked keys must be refused");
            assert!(err.to_string().contains("this key is masked"), "{err}");
        }
    }
    assert_eq!(examples, 2, "examples/gw-a.cfg and examples/gw-b.cfg");
    assert!(accepted >= 10, "only {accepted} inputs were accepted; the round trip covers too little");
}

#[test]
fn examples_are_mirror_images() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let a = config::load(&root.join("gw-a.cfg")).expect("gw-a").config;
    let b = config::load(&root.join("gw-b.cfg")).expect("gw-b").config;
    let ta = a.tunnels().expect("gw-a tunnels");
    let tb = b.tunnels().expect("gw-b tunnels");
    assert_eq!((ta.len(), tb.len()), (1, 1));
    let (ta, tb) = (&ta[0], &tb[0]);
    assert_eq!(ta.local_addr, tb.peer_addr);
    assert_eq!(tb.local_addr, ta.peer_addr);
    assert_eq!(ta.local_ts, tb.remote_ts);
    assert_eq!(ta.remote_ts, tb.local_ts);
    assert_eq!(ta.local_psk, tb.remote_psk);
    assert_eq!(ta.remote_psk, tb.local_psk);
    assert_ne!(ta.local_psk, ta.remote_psk, "distinct keys per direction catch local/remote mix-ups");
    assert_eq!(ta.outside_ifname, "wan-a");
    assert_eq!(tb.outside_ifname, "wan-b");
    assert_eq!(ta.ike_policies, tb.ike_policies);
    assert_eq!(ta.esp_proposals, tb.esp_proposals);
    assert_eq!(a.interface_by_nameif("inside").map(|i| i.name.as_str()), Some("lan-a"));
    assert_eq!(b.interface_by_nameif("inside").map(|i| i.name.as_str()), Some("lan-b"));
}

#[test]
fn doc_examples_round_trip() {
    let mut n = 0;
    for f in support::all_fences().into_iter().filter(|f| f.lang == "asa") {
        let name = support::label(&f);
        let first = config::parse(&name, &f.text).unwrap_or_else(|d| panic!("{d}")).config;
        let text = config::running_config_unmasked(&first);
        let second = config::parse("running-config", &text)
            .unwrap_or_else(|d| panic!("{name}: running-config does not parse back:\n{d}\n--- text ---\n{text}"));
        assert_eq!(first, second.config, "{name}: round trip changed the configuration\n{text}");
        assert_eq!(text, config::running_config_unmasked(&second.config), "{name}: rendering is not a fixed point");
        n += 1;
    }
    assert!(n >= 50, "only {n} doc examples");
}
