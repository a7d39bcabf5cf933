//! Reading Prometheus' text exposition format, as a scraper would: each sample's metric
//! name, labels (in the order written) and value.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    /// The labels in the order the line writes them.
    pub order: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, k: &str) -> &str {
        self.labels.get(k).map_or("", String::as_str)
    }

    /// True when every `(label, value)` of `want` holds.
    pub fn has(&self, want: &[(&str, &str)]) -> bool {
        want.iter().all(|(k, v)| self.label(k) == *v)
    }
}

/// Parses an exposition; panics on a line that is not Prometheus' format.
pub fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (head, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => (
                n,
                rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}")),
            ),
            None => (head, ""),
        };
        let mut order = Vec::new();
        let mut map = BTreeMap::new();
        let mut rest = labels;
        while !rest.is_empty() {
            let (k, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
            let mut value = String::new();
            let mut chars = after.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => panic!("{line}"),
                    },
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let end = end.unwrap_or_else(|| panic!("unterminated value: {line}"));
            order.push(k.to_string());
            map.insert(k.to_string(), value);
            rest = after[end + 1..].trim_start_matches(',');
        }
        out.push(Sample {
            name: name.to_string(),
            order,
            labels: map,
            value,
        });
    }
    out
}

/// The sum of the samples of `name` with the labels `want`.
pub fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && s.has(want))
        .map(|s| s.value)
        .sum()
}

/// Prometheus' `histogram_quantile(q, …)` over cumulative `(le, count)` buckets (the
/// last one `+Inf`): linear interpolation inside the bucket that holds the rank.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let mut lower = 0.0;
    let mut below = 0.0;
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return lower;
            }
            if count == below {
                return le;
            }
            return lower + (le - lower) * (rank - below) / (count - below);
        }
        lower = le;
        below = count;
    }
    lower
}

/// The cumulative buckets of histogram `name` summed over the series with labels
/// `want`, by `le`, ascending.
pub fn buckets(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.name == format!("{name}_bucket") && s.has(want))
    {
        let le: f64 = match s.label("le") {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap(),
        };
        let e = by_le.entry(le.to_bits()).or_insert((le, 0.0));
        e.1 += s.value;
    }
    let mut v: Vec<_> = by_le.into_values().collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}
