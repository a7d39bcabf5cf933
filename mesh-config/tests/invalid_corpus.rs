//! The invalid-configuration corpus: every file in `tests/invalid/` holds exactly one
//! deliberate mistake and states in its `# expect: <CODE> line <N> path <FIELD.PATH>`
//! header the error a user must be shown for it. Each file is loaded alone and checked;
//! the check must refuse to produce a snapshot and must report an error with that code,
//! on that line, for that field (`path -` when the error names no field).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt;
use std::path::{Path, PathBuf};

use mesh_config::{Code, ConfigSet, Diagnostic, Severity};

/// The corpus must not shrink below this many files.
const MIN_FILES: usize = 45;

/// What a corpus file says the check reports.
#[derive(Debug)]
struct Expectation {
    code: String,
    line: u32,
    /// `None` for `path -`.
    path: Option<String>,
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "error {} at line {}, path {}",
            self.code,
            self.line,
            self.path.as_deref().unwrap_or("-")
        )
    }
}

/// Reads the `# expect:` line among the comment lines that open the file.
fn parse_expectation(text: &str) -> Result<Expectation, String> {
    let usage = "expected `# expect: <CODE> line <N> path <FIELD.PATH>` (or `path -`)";
    for line in text.lines() {
        let line = line.trim();
        if !line.starts_with('#') {
            break;
        }
        let Some(rest) = line.strip_prefix("# expect:") else {
            continue;
        };
        let mut words = rest.trim().splitn(5, ' ');
        let (Some(code), Some("line"), Some(n), Some("path"), Some(path)) = (
            words.next(),
            words.next(),
            words.next(),
            words.next(),
            words.next(),
        ) else {
            return Err(format!("malformed header `{line}`: {usage}"));
        };
        let line_no: u32 = n
            .parse()
            .map_err(|_| format!("malformed header `{line}`: `{n}` is not a line number"))?;
        match Code::from_code(code) {
            None => return Err(format!("header names an unknown code `{code}`")),
            Some(c) if c.severity() != Severity::Error => {
                return Err(format!(
                    "header names {code}, a {}: the corpus is about errors",
                    c.severity()
                ));
            }
            Some(_) => {}
        }
        let path = path.trim();
        return Ok(Expectation {
            code: code.to_string(),
            line: line_no,
            path: (path != "-" && !path.is_empty()).then(|| path.to_string()),
        });
    }
    Err(format!(
        "no `# expect:` line in the leading comments: {usage}"
    ))
}

/// The diagnostic's field path as written in the headers; `None` when it names no field.
fn path_of(d: &Diagnostic) -> Option<String> {
    d.path
        .as_ref()
        .map(ToString::to_string)
        .filter(|p| !p.is_empty())
}

fn corpus_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

/// `NN-short-description.yaml`.
fn well_named(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() > 3 && b[0].is_ascii_digit() && b[1].is_ascii_digit() && b[2] == b'-'
}

/// Checks one file; returns a readable report when it does not behave as its header says.
fn check_file(path: &Path) -> Option<String> {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut report = format!("{name}\n");
    if !well_named(&name) {
        report.push_str("  file name does not follow `NN-short-description.yaml`\n");
        return Some(report);
    }
    let text = std::fs::read_to_string(path).unwrap();
    let expected = match parse_expectation(&text) {
        Ok(e) => e,
        Err(e) => {
            report.push_str(&format!("  {e}\n"));
            return Some(report);
        }
    };
    report.push_str(&format!("  expected: {expected}\n"));
    let set = match ConfigSet::load(&[path]) {
        Ok(set) => set,
        Err(e) => {
            report.push_str(&format!("  cannot load: {e}\n"));
            return Some(report);
        }
    };
    let checked = set.check();
    let found = checked.diagnostics.iter().any(|d| {
        d.is_error()
            && d.code.as_str() == expected.code
            && d.line() == Some(expected.line)
            && path_of(d) == expected.path
    });
    if found && checked.snapshot.is_none() {
        return None;
    }
    if checked.snapshot.is_some() {
        report.push_str("  a snapshot was produced: the configuration was accepted\n");
    }
    if !found {
        report.push_str("  no such error was reported\n");
    }
    report.push_str("  diagnostics:\n");
    if checked.diagnostics.is_empty() {
        report.push_str("    (none)\n");
    }
    let full = path.display().to_string();
    for d in &checked.diagnostics {
        report.push_str(&format!(
            "    {} [path {}]\n",
            d.short().replacen(&full, &name, 1),
            path_of(d).as_deref().unwrap_or("-")
        ));
    }
    Some(report)
}

#[test]
fn every_invalid_file_reports_its_expected_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let files = corpus_files(&dir);
    assert!(
        files.len() >= MIN_FILES,
        "the corpus in {} has {} files, at least {MIN_FILES} are required",
        dir.display(),
        files.len()
    );
    let failures: Vec<String> = files.iter().filter_map(|f| check_file(f)).collect();
    assert!(
        failures.is_empty(),
        "{} of {} corpus files did not report their expected error:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}
