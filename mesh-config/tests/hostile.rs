//! Hostile and unusual input: the loader must stay within its stack and linear in time,
//! and keep positions right.
//!
//! - Aliases that would expand to a tree far deeper than the nesting limit are refused
//!   (MESH0011) before the tree is built, so nothing that walks it recursively can overflow
//!   the stack: the whole load and check runs on a thread with a 2 MiB stack.
//! - A configuration written on a single line (`kubectl get -o json | jq -c`) and a
//!   mapping with a hundred thousand keys load in linear time. The time bounds are
//!   deliberately generous (a quadratic loader took minutes, a linear one takes well under a
//!   second) so that a slow machine does not make them flaky.
//! - Lines and columns count characters, not bytes, deep into a long line and after
//!   multibyte characters.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use mesh_config::yaml::MAX_DEPTH;
use mesh_config::{Checked, Code, ConfigSet, Diagnostic};

/// Generous bound for work that takes well under a second when linear.
const GENEROUS: Duration = Duration::from_secs(10);

/// Runs `f` on a thread with a 2 MiB stack, the size of a default spawned thread.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .expect("spawn a thread")
        .join()
        .expect("the thread must not panic")
}

fn load(name: &str, text: &str) -> (ConfigSet, Checked) {
    let mut set = ConfigSet::new();
    set.add_str(name, text);
    let checked = set.check();
    (set, checked)
}

fn describe(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(|d| format!("\n  {}", d.short()))
        .collect()
}

/// The 1-based column, in characters, of the first `needle` in `line`.
fn char_column(line: &str, needle: &str) -> u32 {
    let byte = line.find(needle).expect("the needle is in the line");
    line[..byte].chars().count() as u32 + 1
}

/// `a0` is a scalar; every further anchor nests the previous one `levels` levels deeper.
fn alias_tower(anchors: usize, levels: usize) -> String {
    let mut text = String::from("a0: &a0 x\n");
    for i in 1..=anchors {
        let open = "[".repeat(levels);
        let close = "]".repeat(levels);
        text.push_str(&format!(
            "a{i}: &a{i} {open}*a{prev}{close}\n",
            prev = i - 1
        ));
    }
    text
}

#[test]
fn aliases_cannot_nest_beyond_the_limit() {
    // 120 anchors of 120 levels each: a tree 14,400 levels deep if it were built, while
    // no line nests deeper than 121.
    let text = alias_tower(120, 120);
    let (yaml, checked) = on_small_stack(move || {
        let (set, checked) = load("tower.yaml", &text);
        (set.diagnostics().to_vec(), checked.diagnostics)
    });
    let refused = yaml
        .iter()
        .find(|d| d.code == Code::YamlUnsupported)
        .unwrap_or_else(|| panic!("no MESH0011 among:{}", describe(&yaml)));
    assert_eq!(refused.code.as_str(), "MESH0011");
    assert!(refused.is_error());
    assert!(
        refused.message.contains("nesting deeper than"),
        "{}",
        refused.message
    );
    // `a2` is where it would go too deep: 121 open levels + the 120 of `a1`.
    assert_eq!(refused.line(), Some(3));
    assert_eq!(refused.column(), Some("a2: &a2 ".len() as u32 + 120 + 1));
    assert!(checked.iter().any(|d| d.code == Code::YamlUnsupported));
}

/// A ServiceEntry whose `metadata.generation` (read and ignored) is a tree `extra` + 120
/// levels deep built from aliases, under the top-level mapping and `metadata`.
fn deep_service_entry(extra: usize) -> String {
    // Four anchors of 30 levels each, defined in `metadata.uid` (also ignored).
    let mut uid = String::from("[");
    for i in 1..=4 {
        let inner = if i == 1 {
            "x".to_string()
        } else {
            format!("*a{}", i - 1)
        };
        uid.push_str(&format!(
            "&a{i} {}{inner}{}, ",
            "[".repeat(30),
            "]".repeat(30)
        ));
    }
    uid.push(']');
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: deep\n  \
         uid: {uid}\n  generation: {}*a4{}\n\
         spec: {{hosts: [x.example.com], resolution: DNS, ports: [{{number: 80, name: http, protocol: HTTP}}]}}\n",
        "[".repeat(extra),
        "]".repeat(extra),
    )
}

#[test]
fn aliases_may_nest_up_to_the_limit() {
    // Top-level mapping + `metadata` + `extra` sequences + 120 levels of `a4`.
    let at_limit = MAX_DEPTH - 2 - 120;
    let (accepted, refused) = on_small_stack(move || {
        let (set, checked) = load("deep.yaml", &deep_service_entry(at_limit));
        assert!(!checked.has_errors(), "{}", describe(&checked.diagnostics));
        assert_eq!(set.resources().len(), 1);
        let (over, _) = load("deeper.yaml", &deep_service_entry(at_limit + 1));
        (set.diagnostics().to_vec(), over.diagnostics().to_vec())
    });
    assert!(accepted.is_empty(), "{}", describe(&accepted));
    assert!(
        refused.iter().any(|d| d.code == Code::YamlUnsupported),
        "not refused:{}",
        describe(&refused)
    );
}

/// One ServiceEntry as compact JSON, with a multibyte annotation so that characters and
/// bytes differ all along the line.
fn service_entry_json(i: usize, extra: &str) -> String {
    format!(
        concat!(
            r#"{{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntry","#,
            r#""metadata":{{"name":"svc-{i}","namespace":"default","#,
            r#""annotations":{{"note":"café ünïcødé 日本 {i}"}},"labels":{{"app":"app-{i}"}}}},"#,
            r#""spec":{{"hosts":["svc-{i}.example.com"],"#,
            r#""ports":[{{"number":443,"name":"https","protocol":"TLS"}}],"#,
            r#""resolution":"DNS","location":"MESH_EXTERNAL"{extra}}}}}"#
        ),
        i = i,
        extra = extra
    )
}

#[test]
fn a_configuration_on_one_line_loads_in_linear_time() {
    let n = 2000;
    let items: Vec<String> = (0..n)
        .map(|i| {
            let extra = if i == n - 1 { r#","bogusField":1"# } else { "" };
            service_entry_json(i, extra)
        })
        .collect();
    let text = format!(
        r#"{{"apiVersion":"v1","kind":"List","items":[{}]}}"#,
        items.join(",")
    );
    assert!(!text.contains('\n'));
    assert!(text.len() > 400_000, "{} bytes", text.len());

    let started = Instant::now();
    let (set, checked) = load("one-line.json", &text);
    let elapsed = started.elapsed();
    assert!(
        elapsed < GENEROUS,
        "{} bytes on one line took {elapsed:?}",
        text.len()
    );

    // All but the last, which has an unknown field.
    assert_eq!(set.resources().len(), n - 1);
    let unknown: Vec<&Diagnostic> = checked
        .diagnostics
        .iter()
        .filter(|d| d.code == Code::UnknownField)
        .collect();
    assert_eq!(unknown.len(), 1, "{}", describe(&checked.diagnostics));
    let d = unknown[0];
    assert_eq!(d.line(), Some(1));
    assert_eq!(d.column(), Some(char_column(&text, r#""bogusField""#)));
    let span = &d.location.as_ref().unwrap().span;
    assert_eq!(&text[span.start.offset..span.end.offset], r#""bogusField""#);
    // Characters and bytes differ this far into the line.
    assert!(span.start.offset > d.column().unwrap() as usize + 1000);
}

#[test]
fn a_mapping_with_many_keys_loads_in_linear_time() {
    let n = 100_000;
    let mut text = String::from(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: wide\n  labels:\n",
    );
    for i in 0..n {
        text.push_str(&format!("    key-{i}: value-{i}\n"));
    }
    // One key written twice, far apart.
    text.push_str("    key-4321: again\n");
    let duplicate_line = 5 + n as u32 + 1;
    text.push_str("spec:\n  hosts: [wide.example.com]\n  resolution: DNS\n");
    text.push_str("  ports: [{number: 80, name: http, protocol: HTTP}]\n");

    let started = Instant::now();
    let (_set, checked) = load("wide.yaml", &text);
    let elapsed = started.elapsed();
    assert!(elapsed < GENEROUS, "{n} keys took {elapsed:?}");

    let duplicates: Vec<&Diagnostic> = checked
        .diagnostics
        .iter()
        .filter(|d| d.code == Code::DuplicateKey)
        .collect();
    assert_eq!(duplicates.len(), 1, "{}", describe(&checked.diagnostics));
    let d = duplicates[0];
    assert!(d.message.contains("key-4321"), "{}", d.message);
    assert_eq!((d.line(), d.column()), (Some(duplicate_line), Some(5)));
    let first = &d.related[0].location.span.start;
    assert_eq!((first.line, first.column), (5 + 4321 + 1, 5));
}

#[test]
fn merge_keys_still_let_written_keys_win() {
    let text = "\
base: &base {a: 1, b: 2, c: 3}
other: &other {c: 30, d: 40}
merged:
  <<: [*base, *other]
  b: 20
";
    let file = mesh_config::source::SourceFile::new("merge.yaml", text);
    let stream = mesh_config::yaml::parse_stream(&file);
    assert!(stream.errors.is_empty(), "{:?}", stream.errors);
    let merged = stream.documents[0].1.get("merged").unwrap();
    let mesh_config::yaml::Value::Map(entries) = &merged.value else {
        panic!("not a mapping: {merged:?}");
    };
    let pairs: Vec<(&str, String)> = entries
        .iter()
        .map(|e| (e.key.as_str(), format!("{:?}", e.value.value)))
        .collect();
    assert_eq!(
        pairs,
        [
            ("b", "Int(20)".to_string()),
            ("a", "Int(1)".to_string()),
            ("c", "Int(3)".to_string()),
            ("d", "Int(40)".to_string()),
        ]
    );
}

#[test]
fn columns_count_characters_after_multibyte_text() {
    let line = r#"metadata: {name: x, annotations: {a: "ééé"}, labels: {"bad key!": v}}"#;
    let text = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n{line}\n\
         spec: {{hosts: [x.example.com], resolution: DNS, ports: [{{number: 80, name: http, protocol: HTTP}}]}}\n"
    );
    let (_set, checked) = load("labels.yaml", &text);
    let bad = checked
        .diagnostics
        .iter()
        .find(|d| d.code == Code::InvalidLabel)
        .unwrap_or_else(|| panic!("no MESH0108 among:{}", describe(&checked.diagnostics)));
    assert_eq!(bad.line(), Some(3));
    assert_eq!(bad.column(), Some(char_column(line, r#""bad key!""#)));
    // The byte offset is three bytes further than the column says (three `é`).
    let span = &bad.location.as_ref().unwrap().span;
    assert_eq!(&text[span.start.offset..span.end.offset], r#""bad key!""#);
}

#[test]
fn columns_count_characters_after_a_block_scalar_with_multibyte_text() {
    // The parser counts the long line of a block scalar in bytes: positions after it must
    // not drift.
    let long = "é".repeat(200);
    let text = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: x\n  \
         annotations:\n    note: |\n      {long}\n  labels: {{ok: v, \"bad key!\": v}}\n\
         spec: {{hosts: [x.example.com], resolution: DNS, ports: [{{number: 80, name: http, protocol: HTTP}}]}}\n"
    );
    let (_set, checked) = load("block.yaml", &text);
    let bad = checked
        .diagnostics
        .iter()
        .find(|d| d.code == Code::InvalidLabel)
        .unwrap_or_else(|| panic!("no MESH0108 among:{}", describe(&checked.diagnostics)));
    assert_eq!(bad.line(), Some(8));
    assert_eq!(
        bad.column(),
        Some(char_column(
            "  labels: {ok: v, \"bad key!\": v}",
            "\"bad key!\""
        ))
    );
}

#[test]
fn a_byte_order_mark_is_not_part_of_the_document() {
    let mut set = ConfigSet::new();
    set.add_str(
        "bom.yaml",
        "\u{feff}apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]}\n",
    );
    let checked = set.check();
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    assert_eq!(checked.snapshot.unwrap().gateways().len(), 1);
}

#[test]
fn long_lines_render_in_the_short_form() {
    let filler = "x".repeat(2000);
    let text = format!(
        "{{\"apiVersion\": \"networking.istio.io/v1\", \"kind\": \"Gateway\", \"metadata\": {{\"name\": \"g\", \"annotations\": {{\"a\": \"{filler}\"}}}}, \"spec\": {{\"bogus\": 1}}}}\n"
    );
    let mut set = ConfigSet::new();
    set.add_str("long.json", &text);
    let checked = set.check();
    let out = mesh_config::diag::render(&checked.diagnostics, Default::default());
    assert!(out.contains("long.json:1:"), "{out}");
    assert!(out.contains("error[MESH0004]"), "{out}");
    assert!(out.contains("field spec.bogus"), "{out}");
    assert!(!out.contains(&filler), "the 2 KB line is not quoted");
}

/// A plain `a:b:` right before `,` or `]` in a flow sequence is one string, as Kubernetes'
/// YAML reader (go-yaml) and so Istio read it (an IPv6 address ending in `::`); every other
/// `:` keeps its YAML 1.2 meaning.
#[test]
fn a_colon_before_a_flow_indicator_is_read_as_go_yaml_reads_it() {
    use mesh_config::yaml::Value;
    let cases: &[(&str, &str)] = &[
        ("[1.2.3.4, 001:db8::]", r#"["1.2.3.4", "001:db8::"]"#),
        ("[2001:db8::, a]", r#"["2001:db8::", "a"]"#),
        ("[fe80::]", r#"["fe80::"]"#),
        // A space after the colon: a mapping in both readers.
        ("[a: b]", r#"[{"a": "b"}]"#),
        ("[a: ]", r#"[{"a": null}]"#),
        // Written as a flow mapping, or quoted: what YAML says.
        ("[{a:}]", r#"[{"a": null}]"#),
        (r#"["a":]"#, r#"[{"a": null}]"#),
    ];
    fn show(v: &Value) -> String {
        match v {
            Value::Null => "null".into(),
            Value::Str(s) => format!("{s:?}"),
            Value::Seq(items) => format!(
                "[{}]",
                items
                    .iter()
                    .map(|n| show(&n.value))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Value::Map(entries) => format!(
                "{{{}}}",
                entries
                    .iter()
                    .map(|e| format!("{:?}: {}", e.key, show(&e.value.value)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            other => format!("{other:?}"),
        }
    }
    for (text, want) in cases {
        let file = mesh_config::source::SourceFile::new("flow.yaml", format!("v: {text}\n"));
        let stream = mesh_config::yaml::parse_stream(&file);
        assert!(stream.errors.is_empty(), "{text}: {:?}", stream.errors);
        let v = stream.documents[0].1.get("v").unwrap();
        assert_eq!(show(&v.value), *want, "{text}");
    }
}

/// Only regular files are read as configuration: a FIFO (which would block the reader),
/// a link to a device (`/dev/zero` never ends) or a socket among the configuration files
/// is an error naming the file and what it is, whether the directory or the file itself
/// is given.
#[cfg(unix)]
#[test]
fn special_files_are_refused_with_their_name_and_kind() {
    use mesh_config::load::LoadError;
    /// Makes a special file at a path.
    type Make<'a> = &'a dyn Fn(&Path);
    let cases: [(&str, Make, &str); 3] = [
        (
            "pipe.yaml",
            &|p: &Path| {
                let ok = std::process::Command::new("mkfifo")
                    .arg(p)
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "mkfifo {}", p.display());
            },
            "a FIFO",
        ),
        (
            "zero.yaml",
            &|p: &Path| std::os::unix::fs::symlink("/dev/zero", p).unwrap(),
            "a character device",
        ),
        (
            "control.yml",
            &|p: &Path| {
                std::os::unix::net::UnixListener::bind(p).unwrap();
            },
            "a socket",
        ),
    ];
    for (name, make, what) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a-regular.yaml"),
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x}\nspec:\n  hosts: [x.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n",
        )
        .unwrap();
        let special = dir.path().join(name);
        make(&special);
        for given in [dir.path(), special.as_path()] {
            match ConfigSet::load(&[given]) {
                Err(e @ LoadError::NotARegularFile { .. }) => {
                    let LoadError::NotARegularFile { path, what: got } = &e else {
                        unreachable!()
                    };
                    assert_eq!((path.as_path(), *got), (special.as_path(), what));
                    let text = e.to_string();
                    assert!(
                        text.contains(name)
                            && text.contains(what)
                            && text.contains("not a regular file"),
                        "{text}"
                    );
                }
                other => panic!("{name} given as {}: {other:?}", given.display()),
            }
        }
        // A special file whose name is no configuration file's is not read, nor refused.
        std::fs::rename(&special, dir.path().join("notes.txt")).unwrap();
        assert!(ConfigSet::load(&[dir.path()]).is_ok(), "{name} renamed");
    }
}
