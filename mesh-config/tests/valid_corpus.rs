//! The valid-configuration corpus: every file in `tests/valid/` is Istio configuration
//! that Istio accepts — often a case an over-strict validator would refuse (relative
//! weights, JWT claim routing at a gateway, RE2 classes, wildcard destinations, legacy
//! gateway names, path templates, merged ServiceEntries, topology labels, ...). Each is
//! loaded alone: it must produce a snapshot (no error), and every diagnostic its
//! `# expect: <CODE> line <N> path <FIELD.PATH>` lines announce must be reported.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use mesh_config::{ConfigSet, Diagnostic};

/// The corpus must not shrink below this many files.
const MIN_FILES: usize = 14;

struct Expect {
    code: String,
    line: u32,
    path: String,
}

fn expectations(text: &str) -> Vec<Expect> {
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("# expect:"))
        .map(|rest| {
            let w: Vec<&str> = rest.trim().splitn(5, ' ').collect();
            assert!(
                w.len() == 5 && w[1] == "line" && w[3] == "path",
                "malformed `# expect:` line: {rest}"
            );
            Expect {
                code: w[0].to_string(),
                line: w[2].parse().unwrap(),
                path: w[4].to_string(),
            }
        })
        .collect()
}

fn show(d: &[Diagnostic]) -> String {
    d.iter()
        .map(|d| {
            format!(
                "    {} [{}]",
                d.short(),
                d.path.as_ref().map(|p| p.to_string()).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_valid_file_is_accepted_with_its_expected_notes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/valid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= MIN_FILES, "only {} valid files", files.len());
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let checked = ConfigSet::load(&[f]).unwrap().check();
        let name = f.file_name().unwrap().to_string_lossy();
        if checked.has_errors() || checked.snapshot.is_none() {
            failures.push(format!("{name}: rejected\n{}", show(&checked.diagnostics)));
            continue;
        }
        for e in expectations(&text) {
            let found = checked.diagnostics.iter().any(|d| {
                d.code.as_str() == e.code
                    && d.line() == Some(e.line)
                    && d.path.as_ref().map(|p| p.to_string()).as_deref() == Some(e.path.as_str())
            });
            if !found {
                failures.push(format!(
                    "{name}: expected {} at line {} path {}\n{}",
                    e.code,
                    e.line,
                    e.path,
                    show(&checked.diagnostics)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
