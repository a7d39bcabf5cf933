//! Regular expressions with RE2's meaning, checked the way Istio checks them.
//!
//! Istio and Envoy use RE2. The `regex` crate follows RE2's syntax, with one difference
//! that matters for routing: its `\w`, `\d`, `\s` and `\b` are Unicode-aware, RE2's are
//! ASCII. [`translate`] rewrites those classes to their ASCII forms (so that
//! `[\w.-]{1,64}` matches what Envoy matches, and compiles small), and enforces RE2's and
//! Istio's limits: repetition counts up to 1000, patterns up to 1024 characters.

/// Istio's longest regular expression.
pub const MAX_LEN: usize = 1024;
/// RE2's largest repetition count.
pub const MAX_REPEAT: u32 = 1000;

/// Rewrites an RE2 pattern for the `regex` crate (see the module documentation), or
/// says why RE2 or Istio would reject it.
pub fn translate(pattern: &str) -> Result<String, String> {
    if pattern.chars().count() > MAX_LEN {
        return Err(format!("longer than {MAX_LEN} characters"));
    }
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars().peekable();
    let mut in_class = false;
    // The position right after `[` or `[^`, where `]` is a literal.
    let mut class_start = false;
    // After a repetition operator (1), or a lazy one (2): RE2 refuses another one
    // (`a**`, `a++`), which the `regex` crate would take.
    let mut repeated = 0u8;
    while let Some(c) = chars.next() {
        let at_class_start = std::mem::replace(&mut class_start, false);
        let was_repeated = std::mem::replace(&mut repeated, 0);
        match c {
            '*' | '+' | '?' if !in_class => {
                match (was_repeated, c) {
                    (0, _) => repeated = 1,
                    (1, '?') => repeated = 2,
                    _ => return Err(format!("invalid nested repetition operator `{c}`")),
                }
                out.push(c);
            }
            '\\' => {
                let Some(e) = chars.next() else {
                    out.push('\\');
                    break;
                };
                let ascii = match (e, in_class) {
                    ('w', false) => Some("[0-9A-Za-z_]"),
                    ('W', false) => Some("[^0-9A-Za-z_]"),
                    ('d', false) => Some("[0-9]"),
                    ('D', false) => Some("[^0-9]"),
                    ('s', false) => Some("[\\t\\n\\f\\r ]"),
                    ('S', false) => Some("[^\\t\\n\\f\\r ]"),
                    ('b', false) => Some("(?-u:\\b)"),
                    ('B', false) => Some("(?-u:\\B)"),
                    ('w', true) => Some("0-9A-Za-z_"),
                    ('d', true) => Some("0-9"),
                    ('s', true) => Some("\\t\\n\\f\\r "),
                    _ => None,
                };
                match ascii {
                    Some(a) => out.push_str(a),
                    None => {
                        out.push('\\');
                        out.push(e);
                    }
                }
            }
            '[' if !in_class => {
                in_class = true;
                class_start = true;
                out.push('[');
                if chars.peek() == Some(&'^') {
                    chars.next();
                    out.push('^');
                    class_start = true;
                }
            }
            '[' if in_class && chars.peek() == Some(&':') => {
                // [:alpha:] inside a class
                out.push('[');
            }
            ']' if in_class && !at_class_start => {
                in_class = false;
                out.push(']');
            }
            '{' if !in_class => {
                // RE2 reads `{n}`, `{n,}` and `{n,m}` as repetitions; any other `{` is
                // text (`{,m}`, `x{`), which the `regex` crate would refuse or read
                // otherwise: it is escaped.
                let rest: String = chars.clone().collect();
                let body = rest.split_once('}').map(|(b, _)| b).filter(|b| {
                    b.starts_with(|c: char| c.is_ascii_digit())
                        && b.chars().all(|c| c.is_ascii_digit() || c == ',')
                        && b.matches(',').count() <= 1
                });
                let Some(body) = body else {
                    out.push_str("\\{");
                    continue;
                };
                if was_repeated != 0 {
                    return Err(format!("invalid nested repetition operator `{{{body}}}`"));
                }
                repeated = 1;
                for n in body.split(',').filter(|n| !n.is_empty()) {
                    let v: u64 = n.parse().unwrap_or(u64::MAX);
                    if v > u64::from(MAX_REPEAT) {
                        return Err(format!(
                            "repetition count {v} is above RE2's limit of {MAX_REPEAT}"
                        ));
                    }
                }
                out.push('{');
                out.push_str(body);
                out.push('}');
                for _ in 0..=body.chars().count() {
                    chars.next();
                }
            }
            '}' if !in_class => out.push_str("\\}"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Compiles an RE2 pattern (translated), matching anywhere (callers anchor it).
pub fn compile(pattern: &str) -> Result<regex::Regex, String> {
    let t = translate(pattern)?;
    regex::RegexBuilder::new(&t)
        .size_limit(16 << 20)
        .build()
        .map_err(|e| {
            let detail = e.to_string();
            detail.lines().last().unwrap_or("").trim().to_string()
        })
}

/// Compiles an RE2 pattern that must match the whole input, as Envoy's `safe_regex`.
pub fn compile_full(pattern: &str) -> Result<regex::Regex, String> {
    translate(pattern)?;
    compile(&format!("^(?:{pattern})$"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_classes() {
        let table = [
            (r"\w+", "[0-9A-Za-z_]+"),
            (r"[\w.-]{1,64}", "[0-9A-Za-z_.-]{1,64}"),
            (r"\d\s\b", r"[0-9][\t\n\f\r ](?-u:\b)"),
            (r"[^\d]", "[^0-9]"),
            (r"[]\w]", "[]0-9A-Za-z_]"),
            (r"a\.b", r"a\.b"),
        ];
        for (re, want) in table {
            assert_eq!(translate(re).unwrap(), want, "{re}");
        }
        let r = compile_full(r"/users/[\w.-]{1,64}/reviews").unwrap();
        assert!(r.is_match("/users/jason.b/reviews"));
        assert!(!r.is_match("/users/jasón/reviews"), "RE2's \\w is ASCII");
        assert!(compile_full(r"\w{1,200}").is_ok());
        // RE2 (and Go's regexp, which Istio checks with) refuse a repetition of a
        // repetition; a lazy `?` after one is no repetition.
        for bad in ["a**", "a++", "~++", "a?*", "a*{2}", "a{2}{3}", "a+?+"] {
            assert!(compile(bad).is_err(), "{bad}");
        }
        for ok in [
            "a*?", "a+?", "a??", "(a*)*", "[*+]+", r"\**", "a{2}?", "a*{,5}",
        ] {
            assert!(compile(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn limits() {
        assert!(translate("a{1000}").is_ok());
        assert!(translate("a{1001}").is_err());
        assert!(translate("a{2,1001}").is_err());
        assert!(translate(&"a".repeat(1025)).is_err());
        assert!(compile("(").is_err());
    }
}
