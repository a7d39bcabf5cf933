//! Turning samples into the report: each metric is the median over rounds (paths run
//! interleaved, so a noisy moment on the machine hits one round of every path rather
//! than every round of one), errors are summed, and each phase gets a Markdown table
//! with one row per path and its difference to `bare`; then pairs of paths that differ
//! by one feature, phase by phase, when both ran ([`COMPARISONS`]: `mesh-mtls` against
//! `bare-tls`, `mesh-ratelimit` against `mesh-inbound`). The same numbers, with every
//! round's, go to JSON for later tooling.

use std::fmt::Write as _;

use serde::Serialize;

use crate::load::{Phase, Sample};
use crate::paths::PathName;

/// The metrics of one path in one phase (one round's, or the medians over rounds).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Metrics {
    /// Successful requests per second.
    pub(crate) rps: f64,
    /// Median latency, µs.
    pub(crate) p50_us: f64,
    /// 99th percentile latency, µs.
    pub(crate) p99_us: f64,
    /// 99.9th percentile latency, µs.
    pub(crate) p999_us: f64,
    /// CPU time per request of this process and the sidecars, µs.
    pub(crate) cpu_us_per_req: f64,
    /// The sidecars' part of `cpu_us_per_req`, µs.
    pub(crate) sidecar_cpu_us_per_req: f64,
    /// Allocations in this process per request.
    pub(crate) allocs_per_req: f64,
    /// Peak resident memory (this process plus the sidecars), MB.
    pub(crate) peak_rss_mb: f64,
    /// Requests completed (successes and errors).
    pub(crate) requests: f64,
    /// Failed requests.
    pub(crate) errors: f64,
    /// Open loop: requests not sent on time (late or not sent).
    pub(crate) late: f64,
    /// Open loop: requests not sent at all.
    pub(crate) dropped: f64,
    /// Open loop: the 99th percentile of how late the load generator sent requests, µs.
    pub(crate) send_lag_p99_us: f64,
    /// Connections the backend accepted during the phase.
    pub(crate) new_connections: f64,
    /// CPU the rest of the machine used during the phase, % of all its CPUs.
    pub(crate) others_cpu_pct: f64,
    /// CPU the hypervisor stole during the phase, % of all the machine's CPUs.
    pub(crate) steal_pct: f64,
}

impl Metrics {
    /// The metrics of one sample.
    pub(crate) fn of(s: &Sample) -> Self {
        let h = &s.tally.hist;
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let requests = (s.tally.ok + s.tally.errors) as f64;
        let per_req = |x: f64| if requests > 0.0 { x / requests } else { 0.0 };
        let cpu_self = s.cost.cpu_self.as_secs_f64() * 1e6;
        let cpu_other = s.cost.cpu_other.as_secs_f64() * 1e6;
        Metrics {
            rps: s.tally.ok as f64 / s.cost.elapsed.as_secs_f64().max(1e-9),
            p50_us: us(0.5),
            p99_us: us(0.99),
            p999_us: us(0.999),
            cpu_us_per_req: per_req(cpu_self + cpu_other),
            sidecar_cpu_us_per_req: per_req(cpu_other),
            allocs_per_req: per_req(s.cost.allocs as f64),
            peak_rss_mb: s.cost.peak_rss as f64 / (1024.0 * 1024.0),
            requests,
            errors: s.tally.errors as f64,
            late: s.late as f64,
            dropped: s.dropped as f64,
            send_lag_p99_us: s
                .send_lag
                .as_ref()
                .map_or(0.0, |h| h.value_at_quantile(0.99) as f64 / 1000.0),
            new_connections: s.new_connections as f64,
            others_cpu_pct: s.cost.others_share * 100.0,
            steal_pct: s.cost.steal_share * 100.0,
        }
    }

    /// Each metric's median over `rounds`.
    fn median(rounds: &[Metrics]) -> Metrics {
        let m = |f: fn(&Metrics) -> f64| median(rounds.iter().map(f).collect());
        Metrics {
            rps: m(|x| x.rps),
            p50_us: m(|x| x.p50_us),
            p99_us: m(|x| x.p99_us),
            p999_us: m(|x| x.p999_us),
            cpu_us_per_req: m(|x| x.cpu_us_per_req),
            sidecar_cpu_us_per_req: m(|x| x.sidecar_cpu_us_per_req),
            allocs_per_req: m(|x| x.allocs_per_req),
            peak_rss_mb: m(|x| x.peak_rss_mb),
            requests: m(|x| x.requests),
            errors: m(|x| x.errors),
            late: m(|x| x.late),
            dropped: m(|x| x.dropped),
            send_lag_p99_us: m(|x| x.send_lag_p99_us),
            new_connections: m(|x| x.new_connections),
            others_cpu_pct: m(|x| x.others_cpu_pct),
            steal_pct: m(|x| x.steal_pct),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Two paths that differ by one feature, compared phase by phase: what the feature costs.
struct Comparison {
    /// The table's title: the feature.
    title: &'static str,
    /// The path without it.
    base: PathName,
    /// The path with it.
    path: PathName,
}

/// The comparisons printed after the phases' tables.
const COMPARISONS: [Comparison; 3] = [
    // What the headers a meshed caller adds (request ID, trace context, peer metadata)
    // cost on the wire alone, between a bare client and server: the floor of any
    // implementation of Istio's telemetry.
    Comparison {
        title: "Istio's request headers on the wire",
        base: PathName::Bare,
        path: PathName::BareHeaders,
    },
    // What the mesh costs over mutual TLS against bare rustls (the aim: at least 0.85 of
    // its throughput).
    Comparison {
        title: "mutual TLS",
        base: PathName::BareTls,
        path: PathName::MeshMtls,
    },
    // What a local rate limit that never refuses costs the inbound side.
    Comparison {
        title: "rate limit",
        base: PathName::MeshInbound,
        path: PathName::MeshRatelimit,
    },
];

/// One path in one phase over all rounds.
#[derive(Debug, Serialize)]
pub(crate) struct Row {
    /// The path.
    pub(crate) path: PathName,
    /// The phase.
    pub(crate) phase: Phase,
    /// The phase's short name (`closed-1`, `open-1000`, ...).
    pub(crate) phase_name: String,
    /// Medians over rounds.
    pub(crate) median: Metrics,
    /// Every round's metrics, in order.
    pub(crate) rounds: Vec<Metrics>,
    /// Failed requests over all rounds.
    pub(crate) errors_total: u64,
    /// The first error seen, if any.
    pub(crate) first_error: Option<String>,
}

/// Everything measured, in the order rows were first seen.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Results {
    /// One row per (phase, path).
    pub(crate) rows: Vec<Row>,
}

impl Results {
    /// Adds one round's sample of `path` in `phase`.
    pub(crate) fn add(&mut self, path: PathName, phase: Phase, s: &Sample) {
        let metrics = Metrics::of(s);
        let row = match self
            .rows
            .iter_mut()
            .position(|r| r.path == path && r.phase == phase)
        {
            Some(i) => &mut self.rows[i],
            None => {
                self.rows.push(Row {
                    path,
                    phase,
                    phase_name: phase.short(),
                    median: metrics.clone(),
                    rounds: Vec::new(),
                    errors_total: 0,
                    first_error: None,
                });
                let last = self.rows.len() - 1;
                &mut self.rows[last]
            }
        };
        row.rounds.push(metrics);
        row.median = Metrics::median(&row.rounds);
        row.errors_total += s.tally.errors;
        if row.first_error.is_none() {
            row.first_error.clone_from(&s.tally.first_error);
        }
    }

    /// The Markdown tables, one per phase, in the order of `phases`.
    pub(crate) fn tables(&self, phases: &[Phase]) -> String {
        let mut out = String::new();
        for &phase in phases {
            let rows: Vec<&Row> = self.rows.iter().filter(|r| r.phase == phase).collect();
            if rows.is_empty() {
                continue;
            }
            let open = matches!(phase, Phase::Open { .. });
            let bare = rows
                .iter()
                .find(|r| r.path == PathName::Bare)
                .map(|r| &r.median);
            let _ = writeln!(out, "\n### {}\n", phase.title());
            let _ = writeln!(
                out,
                "| path | rps | rps ÷ bare | p50 µs | +p50 µs | p99 µs | +p99 µs | p99.9 µs |{} CPU µs/req | allocs/req | peak RSS MB | new conns | errors |",
                if open {
                    " late | send lag p99 µs |"
                } else {
                    ""
                }
            );
            let _ = writeln!(
                out,
                "|---|--:|--:|--:|--:|--:|--:|--:|{}--:|--:|--:|--:|--:|",
                if open { "--:|--:|" } else { "" }
            );
            for r in rows {
                let m = &r.median;
                let vs = |f: fn(&Metrics) -> f64, ratio: bool| match bare {
                    Some(b) if ratio && f(b) > 0.0 => format!("{:.2}", f(m) / f(b)),
                    Some(b) if !ratio => format!("{:+.1}", f(m) - f(b)),
                    _ => "-".into(),
                };
                let late = if open {
                    format!(" {} | {:.1} |", m.late, m.send_lag_p99_us)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "| {} | {:.0} | {} | {:.1} | {} | {:.1} | {} | {:.1} |{late} {:.1} | {:.1} | {:.1} | {} | {} |",
                    r.path.as_str(),
                    m.rps,
                    vs(|x| x.rps, true),
                    m.p50_us,
                    vs(|x| x.p50_us, false),
                    m.p99_us,
                    vs(|x| x.p99_us, false),
                    m.p999_us,
                    m.cpu_us_per_req,
                    m.allocs_per_req,
                    m.peak_rss_mb,
                    m.new_connections,
                    r.errors_total,
                );
            }
        }
        for c in &COMPARISONS {
            self.comparison_table(c, phases, &mut out);
        }
        out
    }

    /// Requests `path` completed in the phases kept, over every phase and round.
    pub(crate) fn requests(&self, path: PathName) -> u64 {
        self.rows
            .iter()
            .filter(|r| r.path == path)
            .flat_map(|r| r.rounds.iter().map(|m| m.requests))
            .sum::<f64>() as u64
    }

    /// `c.path` against `c.base` in each phase, when both ran.
    fn comparison_table(&self, c: &Comparison, phases: &[Phase], out: &mut String) {
        let median = |path: PathName, phase: Phase| {
            self.rows
                .iter()
                .find(|r| r.path == path && r.phase == phase)
                .map(|r| &r.median)
        };
        let pairs: Vec<(Phase, &Metrics, &Metrics)> = phases
            .iter()
            .filter_map(|&phase| Some((phase, median(c.base, phase)?, median(c.path, phase)?)))
            .collect();
        if pairs.is_empty() {
            return;
        }
        let (base, path) = (c.base.as_str(), c.path.as_str());
        let _ = writeln!(out, "\n### {}: {path} against {base}\n", c.title);
        let _ = writeln!(
            out,
            "| phase | {base} rps | {path} rps | rps ÷ {base} | {base} p50 µs | {path} p50 µs | +p50 µs | {base} p99 µs | {path} p99 µs | +p99 µs | +CPU µs/req | +allocs/req |"
        );
        let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for (phase, b, m) in pairs {
            // An open loop's throughput is its rate, whatever the path.
            let ratio = match phase {
                Phase::Closed { .. } if b.rps > 0.0 => format!("{:.2}", m.rps / b.rps),
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.0} | {ratio} | {:.1} | {:.1} | {:+.1} | {:.1} | {:.1} | {:+.1} | {:+.1} | {:+.1} |",
                phase.short(),
                b.rps,
                m.rps,
                b.p50_us,
                m.p50_us,
                m.p50_us - b.p50_us,
                b.p99_us,
                m.p99_us,
                m.p99_us - b.p99_us,
                m.cpu_us_per_req - b.cpu_us_per_req,
                m.allocs_per_req - b.allocs_per_req,
            );
        }
    }

    /// The median and the highest share of the machine's CPU that other processes
    /// used, and that the hypervisor stole, over every phase of every round, in %.
    pub(crate) fn background(&self) -> ((f64, f64), (f64, f64)) {
        let all = |f: fn(&Metrics) -> f64| {
            let v: Vec<f64> = self
                .rows
                .iter()
                .flat_map(|r| r.rounds.iter().map(f))
                .collect();
            let max = v.iter().copied().fold(0.0, f64::max);
            (median(v), max)
        };
        (all(|m| m.others_cpu_pct), all(|m| m.steal_pct))
    }
}
