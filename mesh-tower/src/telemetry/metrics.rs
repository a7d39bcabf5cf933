//! Istio's standard metrics, kept as atomic counters per series and written in
//! Prometheus' text format.
//!
//! A series is one combination of Istio's 25 labels. Every label value comes from
//! configuration or from a small closed set (status codes, flags), so the series stay
//! bounded. A request is recorded once, when its response ends: one lookup in a sharded
//! map (keyed by digests computed per configuration, compared by pointer first: no
//! allocation once the series exists), then relaxed atomic additions — the request
//! count, and a bucket and a sum in each of the three histograms. Nothing is formatted
//! until someone reads `/stats/prometheus`.
//!
//! gRPC requests also count their messages (`istio_request_messages_total`,
//! `istio_response_messages_total`) in series of their own: Istio labels those with the
//! two ends and the service only (its first 20 labels), and adds to them while a stream
//! is open ([`MessageSeries`]). Such a series is shown once one of its requests has
//! counted a message.
//!
//! The OpenTelemetry SDK's instruments were measured against this: with Istio's label
//! set, each `add`/`record` costs 1.2–1.8 µs (it hashes every attribute on every call),
//! five to ten times this registry's whole cost per request.

use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::time::Duration;

use hashbrown::{Equivalent, HashMap};
use mesh_core::telemetry::{
    GRPC_LABELS, ISTIO_LABELS, MetricProfile, MetricShape, PeerLabels, REQUEST_METRICS,
    ServiceLabels, UNKNOWN,
};

use crate::flags::ResponseFlags;

/// Envoy's default histogram buckets, which Istio's three distributions use
/// (milliseconds for durations, bytes for sizes).
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Who reports a request: the client's side (`source`, also the ingress gateway) or the
/// server's (`destination`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reporter {
    /// The caller's side.
    Source,
    /// The server's side.
    Destination,
}

impl Reporter {
    fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// `connection_security_policy`: `unknown` from the source (it cannot tell what the
/// server enforced), `mutual_tls` or `none` from the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Security {
    /// Reported by the source.
    Unknown,
    /// The request arrived over mutual TLS.
    MutualTls,
    /// The request arrived in plaintext.
    None,
}

impl Security {
    fn as_str(self) -> &'static str {
        match self {
            Security::Unknown => "unknown",
            Security::MutualTls => "mutual_tls",
            Security::None => "none",
        }
    }
}

/// The labels of one request, borrowed (see [`Metrics::record`]).
#[derive(Debug, Clone, Copy)]
pub struct Labels<'a> {
    /// Who reports it.
    pub reporter: Reporter,
    /// The caller.
    pub source: &'a Arc<PeerLabels>,
    /// Whether `source_principal` is the caller's principal (mutual TLS) or `unknown`.
    pub source_principal: bool,
    /// The workload that served it.
    pub destination: &'a Arc<PeerLabels>,
    /// Whether `destination_principal` is the server's principal or `unknown`.
    pub destination_principal: bool,
    /// The service it was for.
    pub service: &'a Arc<ServiceLabels>,
    /// `request_protocol`: `grpc` or `http`.
    pub grpc: bool,
    /// `response_code` (0: no response was sent).
    pub code: u16,
    /// `grpc_response_status`, for gRPC.
    pub grpc_status: Option<u16>,
    /// `response_flags`.
    pub flags: ResponseFlags,
    /// `connection_security_policy`.
    pub security: Security,
    /// Which metrics are reported, with which labels (the Telemetry API's).
    pub profile: &'a Arc<MetricProfile>,
}

/// The owned key of a series.
#[derive(Debug, Clone)]
struct SeriesKey {
    reporter: Reporter,
    source: Arc<PeerLabels>,
    source_principal: bool,
    destination: Arc<PeerLabels>,
    destination_principal: bool,
    service: Arc<ServiceLabels>,
    grpc: bool,
    code: u16,
    grpc_status: Option<u16>,
    flags: ResponseFlags,
    security: Security,
    profile: Arc<MetricProfile>,
}

impl SeriesKey {
    fn labels(&self) -> Labels<'_> {
        Labels {
            reporter: self.reporter,
            source: &self.source,
            source_principal: self.source_principal,
            destination: &self.destination,
            destination_principal: self.destination_principal,
            service: &self.service,
            grpc: self.grpc,
            code: self.code,
            grpc_status: self.grpc_status,
            flags: self.flags,
            security: self.security,
            profile: &self.profile,
        }
    }
}

impl Hash for SeriesKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.labels().hash(state);
    }
}

impl PartialEq for SeriesKey {
    fn eq(&self, other: &Self) -> bool {
        self.labels().same(&other.labels())
    }
}

impl Eq for SeriesKey {}

impl Hash for Labels<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The label structs hash their digests.
        self.source.hash(state);
        self.destination.hash(state);
        self.service.hash(state);
        self.profile.hash(state);
        state.write_u64(
            u64::from(self.code)
                | u64::from(self.grpc_status.map_or(0xffff, |s| s)) << 16
                | u64::from(self.grpc) << 48
                | u64::from(self.source_principal) << 49
                | u64::from(self.destination_principal) << 50
                | (self.reporter as u64) << 51
                | (self.security as u64) << 53,
        );
        state.write_u32(self.flags.bits());
    }
}

/// Equal when both are the same labels (the common case: the key holds the Arc the
/// configuration made), else when the labels are equal (after a reload).
fn same_labels<T: PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

impl Labels<'_> {
    fn same(&self, o: &Labels<'_>) -> bool {
        self.reporter == o.reporter
            && self.code == o.code
            && self.grpc_status == o.grpc_status
            && self.flags == o.flags
            && self.grpc == o.grpc
            && self.source_principal == o.source_principal
            && self.destination_principal == o.destination_principal
            && self.security == o.security
            && same_labels(self.source, o.source)
            && same_labels(self.destination, o.destination)
            && same_labels(self.service, o.service)
            && same_labels(self.profile, o.profile)
    }

    fn to_key(self) -> SeriesKey {
        SeriesKey {
            reporter: self.reporter,
            source: self.source.clone(),
            source_principal: self.source_principal,
            destination: self.destination.clone(),
            destination_principal: self.destination_principal,
            service: self.service.clone(),
            grpc: self.grpc,
            code: self.code,
            grpc_status: self.grpc_status,
            flags: self.flags,
            security: self.security,
            profile: self.profile.clone(),
        }
    }
}

impl Equivalent<SeriesKey> for Labels<'_> {
    fn equivalent(&self, key: &SeriesKey) -> bool {
        self.same(&key.labels())
    }
}

/// A histogram: per-bucket counts (not cumulative; the last is above every bound) and
/// the sum of the values, in thousandths of their unit.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_milli: AtomicU64,
}

impl Histogram {
    /// Records `milli` thousandths of the unit.
    fn record(&self, milli: u64) {
        let value = milli as f64 / 1000.0;
        let i = BUCKETS.partition_point(|b| *b < value);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Relaxed);
        }
        self.sum_milli.fetch_add(milli, Relaxed);
    }
}

/// The cells of one series for one stripe of threads.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Cells {
    requests: AtomicU64,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// How many copies of its cells a series keeps: threads add to the copy of their stripe,
/// so that two workers recording one series seldom write the same cache lines.
const STRIPES: usize = 4;

/// The cells of one series, striped by thread.
#[derive(Debug, Default)]
struct Series {
    stripes: [Cells; STRIPES],
}

/// The stripe of the current thread (threads are numbered in the order of their first
/// request).
fn stripe() -> usize {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static STRIPE: usize = (NEXT.fetch_add(1, Relaxed) as usize) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

type SeriesMap = HashMap<SeriesKey, Arc<Series>, foldhash::fast::FixedState>;

/// The message counts of one stripe.
#[derive(Debug, Default)]
#[repr(align(64))]
struct MessageCells {
    request: AtomicU64,
    response: AtomicU64,
}

/// The message counts of one gRPC series (`istio_request_messages_total` and
/// `istio_response_messages_total`), striped by thread; see
/// [`Metrics::message_series`].
#[derive(Debug, Default)]
pub struct MessageSeries {
    stripes: [MessageCells; STRIPES],
    /// Some request of the series has counted a message: it is reported.
    shown: AtomicBool,
}

impl MessageSeries {
    /// Counts `request` more request messages and `response` more response messages.
    pub fn add(&self, request: u64, response: u64) {
        if request | response == 0 {
            return;
        }
        let Some(c) = self.stripes.get(stripe()) else {
            return;
        };
        if request != 0 {
            c.request.fetch_add(request, Relaxed);
        }
        if response != 0 {
            c.response.fetch_add(response, Relaxed);
        }
        if !self.shown.load(Relaxed) {
            self.shown.store(true, Relaxed);
        }
    }

    /// The request and response messages counted so far.
    pub fn counts(&self) -> (u64, u64) {
        self.stripes.iter().fold((0, 0), |(q, r), c| {
            (q + c.request.load(Relaxed), r + c.response.load(Relaxed))
        })
    }

    fn shown(&self) -> bool {
        self.shown.load(Relaxed)
    }
}

type MessageMap = HashMap<SeriesKey, Arc<MessageSeries>, foldhash::fast::FixedState>;

/// Istio's standard metrics of a process (see the module documentation).
#[derive(Debug)]
pub struct Metrics {
    /// Read without a lock; replaced whole (under `insert`) when a series is added,
    /// which happens once per label combination.
    series: ArcSwap<SeriesMap>,
    /// The gRPC message counts, likewise, keyed by [`message_labels`].
    messages: ArcSwap<MessageMap>,
    insert: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        let hasher = foldhash::fast::FixedState::with_seed(0x1571_0000);
        Metrics {
            series: ArcSwap::from_pointee(SeriesMap::with_hasher(hasher.clone())),
            messages: ArcSwap::from_pointee(MessageMap::with_hasher(hasher)),
            insert: Mutex::new(()),
        }
    }
}

/// The labels of a gRPC request's message counts: `labels` without the outcome (the
/// five labels after Istio's first 20 take fixed values, so that every request between
/// the same ends shares one series).
fn message_labels<'a>(labels: &Labels<'a>) -> Labels<'a> {
    Labels {
        grpc: true,
        code: 0,
        grpc_status: None,
        flags: ResponseFlags::NONE,
        security: Security::Unknown,
        ..*labels
    }
}

/// One request's measurements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// From the request's arrival to its response's end.
    pub duration: Duration,
    /// The request's size: headers and body.
    pub request_bytes: u64,
    /// The response's size: headers and body.
    pub response_bytes: u64,
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Metrics::default()
    }

    /// Records one request.
    pub fn record(&self, labels: &Labels<'_>, sample: Sample) {
        if let Some(series) = self.series.load().get(labels) {
            series.add(sample);
            return;
        }
        let series = {
            let _only_writer = self.insert.lock().unwrap_or_else(|e| e.into_inner());
            let current = self.series.load_full();
            match current.get(labels) {
                Some(s) => s.clone(),
                None => {
                    let mut next = SeriesMap::clone(&current);
                    let s = next.entry(labels.to_key()).or_default().clone();
                    self.series.store(Arc::new(next));
                    s
                }
            }
        };
        series.add(sample);
    }

    /// The message counts of the gRPC requests between the ends `labels` names (its
    /// outcome is ignored), made on first use; they are reported once they count a
    /// message.
    pub fn message_series(&self, labels: &Labels<'_>) -> Arc<MessageSeries> {
        let labels = message_labels(labels);
        if let Some(series) = self.messages.load().get(&labels) {
            return series.clone();
        }
        let _only_writer = self.insert.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.messages.load_full();
        match current.get(&labels) {
            Some(s) => s.clone(),
            None => {
                let mut next = MessageMap::clone(&current);
                let s = next.entry(labels.to_key()).or_default().clone();
                self.messages.store(Arc::new(next));
                s
            }
        }
    }

    /// Every gRPC message series that counted a message, with its counts now, in a
    /// stable order.
    pub fn read_messages(&self) -> Vec<MessageReading> {
        self.message_snapshot()
            .into_iter()
            .map(|(k, s)| {
                let all = label_values(&k.labels());
                let values: [String; GRPC_LABELS] =
                    std::array::from_fn(|i| all.get(i).cloned().unwrap_or_default());
                let reported = std::array::from_fn(|m| {
                    let shape = k
                        .profile
                        .shapes
                        .get(REQUEST_METRICS.len() + m)
                        .filter(|sh| sh.enabled)?;
                    Some(
                        shaped(&values, shape)
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    )
                });
                let (request_messages, response_messages) = s.counts();
                MessageReading {
                    values,
                    reported,
                    request_messages,
                    response_messages,
                }
            })
            .collect()
    }

    /// Every series with its values now, in a stable order: for exporters and views
    /// that compute rates from successive readings.
    pub fn read(&self) -> Vec<SeriesReading> {
        self.snapshot()
            .into_iter()
            .map(|(k, s)| {
                let values = label_values(&k.labels());
                let reported = std::array::from_fn(|m| {
                    let shape = k.profile.shapes.get(m).filter(|sh| sh.enabled)?;
                    Some(
                        shaped(&values, shape)
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    )
                });
                SeriesReading {
                    requests: s.requests(),
                    duration_ms: HistogramReading::of(s.stripes.iter().map(|c| &c.duration)),
                    request_bytes: HistogramReading::of(s.stripes.iter().map(|c| &c.request_bytes)),
                    response_bytes: HistogramReading::of(
                        s.stripes.iter().map(|c| &c.response_bytes),
                    ),
                    values,
                    reported,
                }
            })
            .collect()
    }

    /// How many series it holds.
    pub fn series_count(&self) -> usize {
        self.series.load().len()
    }

    /// How many gRPC message series it reports (those that counted a message).
    pub fn message_series_count(&self) -> usize {
        self.messages.load().values().filter(|s| s.shown()).count()
    }

    /// Every gRPC message series that counted a message, in a stable order.
    fn message_snapshot(&self) -> Vec<(SeriesKey, Arc<MessageSeries>)> {
        let mut all: Vec<_> = self
            .messages
            .load()
            .iter()
            .filter(|(_, s)| s.shown())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by_cached_key(|(k, _)| {
            label_text(&k.labels(), &MetricShape::default(), GRPC_LABELS)
        });
        all
    }

    /// Every series, in a stable order.
    fn snapshot(&self) -> Vec<(SeriesKey, Arc<Series>)> {
        let mut all: Vec<_> = self
            .series
            .load()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by_cached_key(|(k, _)| {
            label_text(&k.labels(), &MetricShape::default(), ISTIO_LABELS.len())
        });
        all
    }

    /// The metrics in Prometheus' text exposition format, as Envoy's
    /// `/stats/prometheus` writes Istio's: each metric's series with the labels its
    /// Telemetry shape gives them, then the gRPC message counts.
    pub fn prometheus_text(&self) -> String {
        let series = self.snapshot();
        let mut out = String::with_capacity(series.len() * 4096);
        let histograms: [(&str, HistogramOf); 3] = [
            ("istio_request_duration_milliseconds", |c| &c.duration),
            ("istio_request_bytes", |c| &c.request_bytes),
            ("istio_response_bytes", |c| &c.response_bytes),
        ];
        // In the order of `REQUEST_METRICS`: the count, then the three histograms.
        for (m, name) in [
            "istio_requests_total",
            "istio_request_duration_milliseconds",
            "istio_request_bytes",
            "istio_response_bytes",
        ]
        .iter()
        .enumerate()
        {
            let mut typed = false;
            for (k, s) in &series {
                let Some(shape) = k.profile.shapes.get(m).filter(|sh| sh.enabled) else {
                    continue;
                };
                if !typed {
                    let kind = if m == 0 { "counter" } else { "histogram" };
                    let _ = writeln!(out, "# TYPE {name} {kind}");
                    typed = true;
                }
                let l = label_text(&k.labels(), shape, ISTIO_LABELS.len());
                match histograms.get(m.wrapping_sub(1)) {
                    None => {
                        let _ = writeln!(out, "{name}{{{l}}} {}", s.requests());
                    }
                    Some((_, of)) => {
                        write_histogram(&mut out, name, &l, s.stripes.iter().map(*of));
                    }
                }
            }
        }
        let streams = self.message_snapshot();
        for (i, name) in [
            "istio_request_messages_total",
            "istio_response_messages_total",
        ]
        .iter()
        .enumerate()
        {
            let mut typed = false;
            for (k, s) in &streams {
                let m = REQUEST_METRICS.len() + i;
                let Some(shape) = k.profile.shapes.get(m).filter(|sh| sh.enabled) else {
                    continue;
                };
                if !typed {
                    let _ = writeln!(out, "# TYPE {name} counter");
                    typed = true;
                }
                let (request, response) = s.counts();
                let value = if i == 0 { request } else { response };
                let l = label_text(&k.labels(), shape, GRPC_LABELS);
                let _ = writeln!(out, "{name}{{{l}}} {value}");
            }
        }
        out
    }
}

/// A histogram as read at one moment (its stripes added up).
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramReading {
    /// Observations per bucket (not cumulative): `counts[i]` fell in
    /// `(BUCKETS[i-1], BUCKETS[i]]`, the last one above every bound (`+Inf`).
    pub counts: [u64; BUCKETS.len() + 1],
    /// The sum of the observations, in the metric's unit.
    pub sum: f64,
}

impl HistogramReading {
    fn of<'h>(stripes: impl Iterator<Item = &'h Histogram>) -> Self {
        let mut counts = [0u64; BUCKETS.len() + 1];
        let mut sum_milli = 0u64;
        for h in stripes {
            for (total, b) in counts.iter_mut().zip(&h.buckets) {
                *total += b.load(Relaxed);
            }
            sum_milli += h.sum_milli.load(Relaxed);
        }
        HistogramReading {
            counts,
            sum: sum_milli as f64 / 1000.0,
        }
    }

    /// How many observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The observations since `earlier` (a reading of the same series), bucket by bucket.
    pub fn since(&self, earlier: &HistogramReading) -> HistogramReading {
        let mut counts = self.counts;
        for (c, e) in counts.iter_mut().zip(&earlier.counts) {
            *c = c.saturating_sub(*e);
        }
        HistogramReading {
            counts,
            sum: (self.sum - earlier.sum).max(0.0),
        }
    }

    /// The `q` quantile (0 ≤ q ≤ 1) as Prometheus' `histogram_quantile` estimates it:
    /// linear within the bucket, the highest finite bound for the `+Inf` bucket, `None`
    /// without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            if *c > 0 && (below + c) as f64 >= rank {
                let Some(upper) = BUCKETS.get(i) else {
                    return BUCKETS.last().copied();
                };
                let lower = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
                let within = (rank - below as f64) / *c as f64;
                return Some(lower + (upper - lower) * within);
            }
            below += c;
        }
        BUCKETS.last().copied()
    }
}

/// One series as read at one moment (see [`Metrics::read`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesReading {
    /// Istio's label values, in the order of [`ISTIO_LABELS`], before the Telemetry
    /// API's tag overrides.
    pub values: [String; 25],
    /// Per metric, in the order of `REQUEST_METRICS`, its label pairs as reported
    /// (after the Telemetry API's tag overrides), or `None` when the metric is disabled.
    pub reported: [Option<Vec<(String, String)>>; 4],
    /// `istio_requests_total`.
    pub requests: u64,
    /// `istio_request_duration_milliseconds`.
    pub duration_ms: HistogramReading,
    /// `istio_request_bytes`.
    pub request_bytes: HistogramReading,
    /// `istio_response_bytes`.
    pub response_bytes: HistogramReading,
}

impl SeriesReading {
    /// The value of Istio label `name` (before tag overrides), if it is one of Istio's.
    pub fn label(&self, name: &str) -> Option<&str> {
        istio_label(&self.values, name)
    }
}

/// The value of Istio label `name` in `values`, which follow [`ISTIO_LABELS`]' order.
fn istio_label<'a>(values: &'a [String], name: &str) -> Option<&'a str> {
    let i = ISTIO_LABELS.iter().position(|l| *l == name)?;
    values.get(i).map(|v| &**v)
}

/// The message counts of one gRPC series as read at one moment (see
/// [`Metrics::read_messages`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageReading {
    /// Its label values: the first [`GRPC_LABELS`] of [`ISTIO_LABELS`], in their
    /// order, before the Telemetry API's tag overrides.
    pub values: [String; GRPC_LABELS],
    /// Per metric (`istio_request_messages_total`, then
    /// `istio_response_messages_total`), its label pairs as reported (after the
    /// Telemetry API's tag overrides), or `None` when the metric is disabled.
    pub reported: [Option<Vec<(String, String)>>; 2],
    /// `istio_request_messages_total`.
    pub request_messages: u64,
    /// `istio_response_messages_total`.
    pub response_messages: u64,
}

impl MessageReading {
    /// The value of Istio label `name` (before tag overrides), if the series has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        istio_label(&self.values, name)
    }
}

impl Series {
    fn add(&self, sample: Sample) {
        let Some(c) = self.stripes.get(stripe()) else {
            return;
        };
        c.requests.fetch_add(1, Relaxed);
        let micros = u64::try_from(sample.duration.as_micros()).unwrap_or(u64::MAX);
        c.duration.record(micros);
        c.request_bytes
            .record(sample.request_bytes.saturating_mul(1000));
        c.response_bytes
            .record(sample.response_bytes.saturating_mul(1000));
    }

    fn requests(&self) -> u64 {
        self.stripes.iter().map(|c| c.requests.load(Relaxed)).sum()
    }
}

/// Which histogram of a series' cells.
type HistogramOf = fn(&Cells) -> &Histogram;

/// Writes a histogram's lines (its stripes added up): cumulative buckets, `+Inf`, sum
/// and count.
fn write_histogram<'h>(
    out: &mut String,
    name: &str,
    labels: &str,
    stripes: impl Iterator<Item = &'h Histogram>,
) {
    let h = HistogramReading::of(stripes);
    let mut cumulative = 0u64;
    for (count, bound) in h.counts.iter().zip(BUCKETS) {
        cumulative += count;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
    }
    cumulative += h.counts.last().copied().unwrap_or(0);
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
    let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
}

/// A label value escaped as Prometheus' text format requires.
fn escape(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Istio's 25 label values of a series, in the order of [`ISTIO_LABELS`], before any
/// Telemetry shape.
fn label_values(l: &Labels<'_>) -> [String; 25] {
    let principal = |p: &PeerLabels, shown: bool| -> String {
        if shown {
            p.principal.to_string()
        } else {
            UNKNOWN.to_string()
        }
    };
    [
        l.reporter.as_str().to_string(),
        l.source.workload.to_string(),
        l.source.canonical_service.to_string(),
        l.source.canonical_revision.to_string(),
        l.source.namespace.to_string(),
        principal(l.source, l.source_principal),
        l.source.app.to_string(),
        l.source.version.to_string(),
        l.source.cluster.to_string(),
        l.destination.workload.to_string(),
        l.destination.namespace.to_string(),
        principal(l.destination, l.destination_principal),
        l.destination.app.to_string(),
        l.destination.version.to_string(),
        l.service.host.to_string(),
        l.destination.canonical_service.to_string(),
        l.destination.canonical_revision.to_string(),
        l.service.name.to_string(),
        l.service.namespace.to_string(),
        l.destination.cluster.to_string(),
        (if l.grpc { "grpc" } else { "http" }).to_string(),
        l.code.to_string(),
        l.grpc_status.map(|s| s.to_string()).unwrap_or_default(),
        l.flags.to_string(),
        l.security.as_str().to_string(),
    ]
}

/// The label pairs of a series as `shape` reports them: Istio's (the first
/// `values.len()`), in Istio's order, removed or replaced as the shape says, then the
/// added ones. A change to a label the series does not have changes nothing, as in
/// Istio's stats filter.
fn shaped<'v>(values: &'v [String], shape: &'v MetricShape) -> Vec<(&'v str, &'v str)> {
    let mut pairs = Vec::with_capacity(values.len() + shape.added.len());
    for (i, (k, v)) in ISTIO_LABELS.iter().zip(values).enumerate() {
        if shape.removed & (1 << i) != 0 {
            continue;
        }
        let v = shape
            .replaced
            .iter()
            .find(|(j, _)| *j == i)
            .map_or(&**v, |(_, r)| &**r);
        pairs.push((*k, v));
    }
    for (k, v) in &shape.added {
        pairs.push((&**k, &**v));
    }
    pairs
}

/// The labels of a series as Prometheus writes them: the first `n` of Istio's, in
/// Istio's order, as `shape` changes them (removed, replaced, added after).
fn label_text(l: &Labels<'_>, shape: &MetricShape, n: usize) -> String {
    let values = label_values(l);
    let mut out = String::with_capacity(1024);
    for (k, v) in shaped(values.get(..n).unwrap_or(&values), shape) {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape(v, &mut out);
        out.push('"');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(pairs: &[(usize, u64)], sum: f64) -> HistogramReading {
        let mut counts = [0u64; BUCKETS.len() + 1];
        for (i, c) in pairs {
            counts[*i] = *c;
        }
        HistogramReading { counts, sum }
    }

    #[test]
    fn quantiles_interpolate_as_prometheus_does() {
        // Buckets (0, 0.5], (0.5, 1], (1, 5], (5, 10].
        let h = reading(&[(0, 10), (2, 10), (3, 80)], 0.0);
        let cases = [
            (0.0, None), // rank 0 lands in the first non-empty bucket's lower edge
            (0.05, Some(0.25)),
            (0.10, Some(0.5)),
            (0.15, Some(3.0)),
            (0.20, Some(5.0)),
            (0.60, Some(7.5)),
            (1.00, Some(10.0)),
        ];
        for (q, want) in cases {
            let got = h.quantile(q);
            match want {
                None => assert_eq!(got, Some(0.0), "q={q}"),
                Some(w) => {
                    let g = got.unwrap_or(f64::NAN);
                    assert!((g - w).abs() < 1e-9, "q={q}: {g} != {w}");
                }
            }
        }
        assert_eq!(h.quantile(1.5), None);
        assert_eq!(reading(&[], 0.0).quantile(0.5), None);
        // Everything above the last bound: the last finite bound.
        let over = reading(&[(BUCKETS.len(), 3)], 0.0);
        assert_eq!(over.quantile(0.99), Some(3_600_000.0));
    }

    /// The labels of a gRPC request from `productpage` to `reviews` with `profile`.
    fn grpc_labels<'a>(
        peers: &'a (Arc<PeerLabels>, Arc<PeerLabels>, Arc<ServiceLabels>),
        profile: &'a Arc<MetricProfile>,
    ) -> Labels<'a> {
        Labels {
            reporter: Reporter::Source,
            source: &peers.0,
            source_principal: true,
            destination: &peers.1,
            destination_principal: true,
            service: &peers.2,
            grpc: true,
            code: 200,
            grpc_status: Some(0),
            flags: ResponseFlags::NONE,
            security: Security::Unknown,
            profile,
        }
    }

    fn peers() -> (Arc<PeerLabels>, Arc<PeerLabels>, Arc<ServiceLabels>) {
        let labels = |app: &str| -> mesh_config::model::Labels {
            [("app".to_string(), app.to_string())].into_iter().collect()
        };
        (
            Arc::new(PeerLabels::new(
                Some("productpage-v1"),
                "default",
                &labels("productpage"),
                "spiffe://cluster.local/ns/default/sa/productpage",
                "Kubernetes",
            )),
            Arc::new(PeerLabels::new(
                Some("reviews-v1"),
                "default",
                &labels("reviews"),
                "spiffe://cluster.local/ns/default/sa/reviews",
                "Kubernetes",
            )),
            Arc::new(ServiceLabels::new(
                "reviews.default.svc.cluster.local",
                "default",
            )),
        )
    }

    /// The lines of `text` for metric `name`, label pairs and value.
    fn lines<'t>(text: &'t str, name: &str) -> Vec<(Vec<(&'t str, &'t str)>, &'t str)> {
        text.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(name)?.strip_prefix('{')?;
                let (labels, value) = rest.rsplit_once("} ")?;
                let pairs = labels
                    .split(',')
                    .filter_map(|p| {
                        let (k, v) = p.split_once('=')?;
                        Some((k, v.trim_matches('"')))
                    })
                    .collect();
                Some((pairs, value))
            })
            .collect()
    }

    #[test]
    fn grpc_message_counts_have_istios_first_twenty_labels_and_no_outcome() {
        let metrics = Metrics::new();
        let peers = peers();
        let standard = Arc::new(MetricProfile::standard());
        let labels = grpc_labels(&peers, &standard);
        // Made, but nothing counted: not reported.
        let series = metrics.message_series(&labels);
        assert_eq!(metrics.message_series_count(), 0);
        assert!(!metrics.prometheus_text().contains("messages_total"));
        assert!(metrics.read_messages().is_empty());
        // Requests with other outcomes share the series.
        series.add(1, 0);
        let failed = Labels {
            code: 503,
            grpc_status: Some(14),
            flags: ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
            ..labels
        };
        metrics.message_series(&failed).add(2, 0);
        assert!(Arc::ptr_eq(&series, &metrics.message_series(&failed)));
        assert_eq!(series.counts(), (3, 0));
        // The other reporter has series of its own.
        let server = Labels {
            reporter: Reporter::Destination,
            security: Security::MutualTls,
            ..labels
        };
        metrics.message_series(&server).add(0, 4);
        assert_eq!(metrics.message_series_count(), 2);

        let text = metrics.prometheus_text();
        assert!(text.contains("# TYPE istio_request_messages_total counter\n"));
        assert!(text.contains("# TYPE istio_response_messages_total counter\n"));
        let requests = lines(&text, "istio_request_messages_total");
        let responses = lines(&text, "istio_response_messages_total");
        assert_eq!(requests.len(), 2);
        assert_eq!(responses.len(), 2);
        for (pairs, _) in requests.iter().chain(&responses) {
            let keys: Vec<&str> = pairs.iter().map(|p| p.0).collect();
            assert_eq!(keys, ISTIO_LABELS[..GRPC_LABELS]);
        }
        let value = |lines: &[(Vec<(&str, &str)>, &str)], reporter: &str| {
            lines
                .iter()
                .find(|(p, _)| p.contains(&("reporter", reporter)))
                .map(|(_, v)| v.to_string())
        };
        // Both counts of a series that counted either, a zero included.
        assert_eq!(value(&requests, "source").as_deref(), Some("3"));
        assert_eq!(value(&responses, "source").as_deref(), Some("0"));
        assert_eq!(value(&requests, "destination").as_deref(), Some("0"));
        assert_eq!(value(&responses, "destination").as_deref(), Some("4"));

        let readings = metrics.read_messages();
        assert_eq!(readings.len(), 2);
        let source = readings
            .iter()
            .find(|r| r.label("reporter") == Some("source"))
            .unwrap();
        assert_eq!((source.request_messages, source.response_messages), (3, 0));
        assert_eq!(source.label("destination_workload"), Some("reviews-v1"));
        assert_eq!(source.label("response_code"), None);
        let reported = source.reported[0].as_ref().unwrap();
        assert_eq!(reported.len(), GRPC_LABELS);
        // The request series are not touched.
        assert_eq!(metrics.series_count(), 0);
    }

    #[test]
    fn the_telemetry_api_shapes_each_message_count() {
        let metrics = Metrics::new();
        let peers = peers();
        let at = |name: &str| ISTIO_LABELS.iter().position(|l| *l == name).unwrap();
        let grpc = REQUEST_METRICS.len();
        let mut profile = MetricProfile::standard();
        // Request messages: one label removed, one replaced, one added, and two of
        // the outcome's changed — which the counts do not have: nothing happens.
        profile.shapes[grpc].removed = 1 << at("source_app") | 1 << at("response_flags");
        profile.shapes[grpc].replaced = vec![
            (at("destination_version"), "any".into()),
            (at("response_code"), "200".into()),
        ];
        profile.shapes[grpc].added = vec![("stream".into(), "yes".into())];
        // Response messages: off.
        profile.shapes[grpc + 1].enabled = false;
        let profile = Arc::new(profile);
        metrics
            .message_series(&grpc_labels(&peers, &profile))
            .add(2, 5);
        let text = metrics.prometheus_text();
        assert!(!text.contains("istio_response_messages_total"), "{text}");
        let requests = lines(&text, "istio_request_messages_total");
        assert_eq!(requests.len(), 1);
        let (pairs, value) = &requests[0];
        assert_eq!(*value, "2");
        let keys: Vec<&str> = pairs.iter().map(|p| p.0).collect();
        let mut want: Vec<&str> = ISTIO_LABELS[..GRPC_LABELS]
            .iter()
            .copied()
            .filter(|l| *l != "source_app")
            .collect();
        want.push("stream");
        assert_eq!(keys, want);
        assert!(pairs.contains(&("destination_version", "any")));
        assert!(pairs.contains(&("stream", "yes")));
        let reading = &metrics.read_messages()[0];
        assert_eq!(reading.reported[1], None);
        assert_eq!(
            reading.reported[0].as_ref().map(Vec::len),
            Some(GRPC_LABELS)
        );
        assert_eq!(reading.label("source_app"), Some("productpage"));
    }

    #[test]
    fn since_subtracts_bucket_by_bucket() {
        let later = reading(&[(1, 5), (4, 7)], 12.0);
        let earlier = reading(&[(1, 2), (4, 7)], 5.0);
        let d = later.since(&earlier);
        assert_eq!(d.count(), 3);
        assert_eq!(d.counts[1], 3);
        assert_eq!(d.counts[4], 0);
        assert_eq!(d.sum, 7.0);
        // A registry never goes backwards, but a reading from another one may.
        assert_eq!(earlier.since(&later).count(), 0);
    }
}
