//! The exporters' configuration: [`OtlpConfig`] per signal, the batch span processor's
//! and the periodic metric reader's settings, and their reading from the environment as
//! the OpenTelemetry specification defines it.

use std::fmt::Write as _;
use std::time::Duration;

use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};

/// A setting that cannot be used: which one, its value, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}={value:?}: {reason}")]
pub struct OtlpConfigError {
    /// The environment variable (or `endpoint` for a programmatic one).
    pub setting: String,
    /// The value given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl OtlpConfigError {
    fn new(setting: &str, value: &str, reason: impl Into<String>) -> Self {
        OtlpConfigError {
            setting: setting.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// OTLP/gRPC (`grpc`); collectors listen on port 4317.
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`); collectors listen on port 4318.
    HttpProtobuf,
}

impl Protocol {
    /// The name the `OTEL_EXPORTER_OTLP_PROTOCOL` variable gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }

    fn parse(setting: &str, value: &str) -> Result<Self, OtlpConfigError> {
        match value.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "http/json" => Err(OtlpConfigError::new(
                setting,
                value,
                "OTLP/JSON is not supported: use `http/protobuf` or `grpc`",
            )),
            _ => Err(OtlpConfigError::new(
                setting,
                value,
                "not an OTLP protocol: expected `grpc` or `http/protobuf`",
            )),
        }
    }

    /// The specification's default endpoint of `signal` over this protocol.
    fn default_endpoint(self, signal: Signal) -> &'static str {
        match (self, signal) {
            (Protocol::Grpc, _) => "http://localhost:4317",
            (Protocol::HttpProtobuf, Signal::Traces) => "http://localhost:4318/v1/traces",
            (Protocol::HttpProtobuf, Signal::Metrics) => "http://localhost:4318/v1/metrics",
        }
    }
}

/// What is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// Spans.
    Traces,
    /// Metrics.
    Metrics,
}

impl Signal {
    /// The path OTLP/HTTP collectors receive it on (`/v1/traces`, `/v1/metrics`).
    pub fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }

    /// The gRPC method that receives it.
    pub fn grpc_path(self) -> &'static str {
        match self {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        }
    }

    /// Its part of the signal-specific variables' names (`TRACES`, `METRICS`).
    fn env(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
        }
    }
}

/// Where and how one signal is exported: the collector's endpoint, the protocol, the
/// headers sent with every export (gRPC metadata for `grpc`) and the time one export
/// may take. No compression.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    endpoint: Uri,
    protocol: Protocol,
    headers: HeaderMap,
    timeout: Duration,
}

impl OtlpConfig {
    /// The specification's default export timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`): 10 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// Exports to `endpoint` over `protocol`, without headers, within
    /// [`DEFAULT_TIMEOUT`](Self::DEFAULT_TIMEOUT).
    ///
    /// `endpoint` is used as it is: for OTLP/HTTP the whole URL, the signal's path
    /// included (`http://collector:4318/v1/traces`, see [`Signal::http_path`]); for gRPC
    /// the collector's origin (`http://collector:4317`; a path is ignored). Istio's
    /// `opentelemetry` extension provider maps to `http://{service}:{port}` with gRPC,
    /// or, with its `http` settings, to `http://{service}:{port}{path}` over OTLP/HTTP.
    ///
    /// # Errors
    ///
    /// `endpoint` is not an `http://` URL with a host (`https://` is refused: the
    /// exporter speaks plaintext only).
    pub fn new(endpoint: &str, protocol: Protocol) -> Result<Self, OtlpConfigError> {
        Ok(OtlpConfig {
            endpoint: parse_endpoint("endpoint", endpoint)?,
            protocol,
            headers: HeaderMap::new(),
            timeout: Self::DEFAULT_TIMEOUT,
        })
    }

    /// The same, also sending header `name: value` with every export.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// The same, sending `headers` with every export (instead of any before).
    pub fn with_headers(mut self, headers: HeaderMap) -> Self {
        self.headers = headers;
        self
    }

    /// The same, giving one export at most `timeout` (connecting included).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Where exports go (see [`new`](Self::new)).
    pub fn endpoint(&self) -> &Uri {
        &self.endpoint
    }

    /// The transport.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The headers sent with every export.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The time one export may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The configuration of `signal` from the environment as the OpenTelemetry
    /// specification defines it ("OTLP Exporter Configuration"), `lookup` reading a
    /// variable (`|n| std::env::var(n).ok()`; an empty value counts as unset). `None`:
    /// the signal is not exported.
    ///
    /// - The signal is exported when `OTEL_{TRACES,METRICS}_EXPORTER` lists `otlp`, or,
    ///   that variable unset, when `OTEL_EXPORTER_OTLP_ENDPOINT` or the signal's own
    ///   endpoint variable is set. (An SDK exports to `localhost` by default; a mesh
    ///   linked into every application does not send anywhere unless asked.)
    ///   `OTEL_SDK_DISABLED=true` or an exporter list without `otlp` (`none`,
    ///   `prometheus`, …) turns it off.
    /// - `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT` is used as it is;
    ///   `OTEL_EXPORTER_OTLP_ENDPOINT` is a base URL to which OTLP/HTTP appends
    ///   `v1/traces` or `v1/metrics` (after its path, `/` added when missing); gRPC uses
    ///   it as it is. Defaults: `http://localhost:4318/v1/{signal}`,
    ///   `http://localhost:4317` for gRPC.
    /// - `..._PROTOCOL`: `grpc` or `http/protobuf`, by default `http/protobuf` — the
    ///   specification's default for SDKs that support both (gRPC defaults exist only
    ///   for older stable releases' compatibility). Istio's own provider configuration
    ///   is gRPC unless given `http` settings: that mapping is [`new`](Self::new)'s.
    /// - `..._HEADERS`: `key=value` pairs separated by commas, W3C baggage style,
    ///   values percent-decoded, whitespace around them ignored.
    /// - `..._TIMEOUT`: milliseconds, by default 10000.
    /// - `..._COMPRESSION`: only `none` (`gzip` is refused as unsupported).
    ///
    /// Every signal-specific variable overrides the general one.
    ///
    /// # Errors
    ///
    /// A variable whose value is invalid or asks for what the exporter cannot do
    /// (OTLP/JSON, `https`, `gzip`).
    pub fn from_env(
        signal: Signal,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, OtlpConfigError> {
        let env = Env(&lookup);
        if env
            .get("OTEL_SDK_DISABLED")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        {
            return Ok(None);
        }
        let s = signal.env();
        let specific_endpoint = format!("OTEL_EXPORTER_OTLP_{s}_ENDPOINT");
        let wanted = match env.get(&format!("OTEL_{s}_EXPORTER")) {
            Some(list) => list
                .split(',')
                .any(|e| e.trim().eq_ignore_ascii_case("otlp")),
            None => {
                env.get(&specific_endpoint).is_some()
                    || env.get("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
            }
        };
        if !wanted {
            return Ok(None);
        }
        let protocol = match env.either(signal, "PROTOCOL") {
            Some((var, v)) => Protocol::parse(&var, &v)?,
            None => Protocol::HttpProtobuf,
        };
        let endpoint = if let Some(v) = env.get(&specific_endpoint) {
            parse_endpoint(&specific_endpoint, &v)?
        } else if let Some(v) = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            let base = parse_endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", &v)?;
            match protocol {
                Protocol::Grpc => base,
                Protocol::HttpProtobuf => signal_url(&base, signal)
                    .map_err(|r| OtlpConfigError::new("OTEL_EXPORTER_OTLP_ENDPOINT", &v, r))?,
            }
        } else {
            let default = protocol.default_endpoint(signal);
            parse_endpoint("endpoint", default)?
        };
        let headers = match env.either(signal, "HEADERS") {
            Some((var, v)) => parse_headers(&var, &v)?,
            None => HeaderMap::new(),
        };
        let timeout = match env.either(signal, "TIMEOUT") {
            Some((var, v)) => parse_millis(&var, &v)?,
            None => Self::DEFAULT_TIMEOUT,
        };
        if let Some((var, v)) = env.either(signal, "COMPRESSION") {
            match v.trim() {
                "none" => {}
                "gzip" => {
                    return Err(OtlpConfigError::new(
                        &var,
                        &v,
                        "compression is not supported: use `none`",
                    ));
                }
                _ => {
                    return Err(OtlpConfigError::new(
                        &var,
                        &v,
                        "not a compression: expected `gzip` or `none`",
                    ));
                }
            }
        }
        Ok(Some(OtlpConfig {
            endpoint,
            protocol,
            headers,
            timeout,
        }))
    }
}

/// Reads variables, empty values as unset.
struct Env<'a, F>(&'a F);

impl<F: Fn(&str) -> Option<String>> Env<'_, F> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.trim().is_empty())
    }

    /// `OTEL_EXPORTER_OTLP_{SIGNAL}_{suffix}`, else `OTEL_EXPORTER_OTLP_{suffix}`: the
    /// variable's name and value.
    fn either(&self, signal: Signal, suffix: &str) -> Option<(String, String)> {
        [
            format!("OTEL_EXPORTER_OTLP_{}_{suffix}", signal.env()),
            format!("OTEL_EXPORTER_OTLP_{suffix}"),
        ]
        .into_iter()
        .find_map(|var| self.get(&var).map(|v| (var, v)))
    }

    /// A positive number of milliseconds, `default` when unset.
    fn millis(&self, name: &str, default: Duration) -> Result<Duration, OtlpConfigError> {
        self.get(name)
            .map_or(Ok(default), |v| parse_millis(name, &v))
    }

    /// A positive count, `default` when unset.
    fn count(&self, name: &str, default: usize) -> Result<usize, OtlpConfigError> {
        let Some(v) = self.get(name) else {
            return Ok(default);
        };
        match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(OtlpConfigError::new(
                name,
                &v,
                "expected a positive integer",
            )),
        }
    }
}

/// A collector's URL: `http://`, with a host.
fn parse_endpoint(setting: &str, value: &str) -> Result<Uri, OtlpConfigError> {
    let uri: Uri = value
        .trim()
        .parse()
        .map_err(|e| OtlpConfigError::new(setting, value, format!("not a URL: {e}")))?;
    match uri.scheme() {
        Some(s) if *s == Scheme::HTTP => {}
        Some(s) if *s == Scheme::HTTPS => {
            return Err(OtlpConfigError::new(
                setting,
                value,
                "https endpoints are not supported (the exporter speaks plaintext OTLP): use an http:// URL",
            ));
        }
        _ => {
            return Err(OtlpConfigError::new(
                setting,
                value,
                "expected an http:// URL (e.g. http://localhost:4318)",
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(OtlpConfigError::new(setting, value, "the URL has no host"));
    }
    Ok(uri)
}

/// `base` with the signal's path appended after its own, as the specification builds
/// OTLP/HTTP URLs from `OTEL_EXPORTER_OTLP_ENDPOINT`.
fn signal_url(base: &Uri, signal: Signal) -> Result<Uri, String> {
    let path = base.path().trim_end_matches('/');
    let mut pq = format!("{path}{}", signal.http_path());
    if let Some(q) = base.query() {
        let _ = write!(pq, "?{q}");
    }
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(pq).map_err(|e| e.to_string())?);
    Uri::from_parts(parts).map_err(|e| e.to_string())
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: `k=v,k2=v2`, values percent-decoded.
pub(super) fn parse_headers(setting: &str, value: &str) -> Result<HeaderMap, OtlpConfigError> {
    let mut headers = HeaderMap::new();
    for member in value.split(',') {
        if member.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = member.split_once('=') else {
            return Err(OtlpConfigError::new(
                setting,
                value,
                format!("`{}` is not a key=value pair", member.trim()),
            ));
        };
        let key = k.trim();
        let name = HeaderName::from_bytes(key.as_bytes()).map_err(|_| {
            OtlpConfigError::new(setting, value, format!("`{key}` is not a header name"))
        })?;
        let decoded = percent_encoding::percent_decode_str(v.trim())
            .decode_utf8()
            .map_err(|_| {
                OtlpConfigError::new(
                    setting,
                    value,
                    format!("the value of `{key}` is not UTF-8 once percent-decoded"),
                )
            })?;
        let header = HeaderValue::from_str(decoded.trim()).map_err(|_| {
            OtlpConfigError::new(
                setting,
                value,
                format!("the value of `{key}` cannot be sent in a header"),
            )
        })?;
        headers.append(name, header);
    }
    Ok(headers)
}

/// A positive number of milliseconds.
fn parse_millis(setting: &str, value: &str) -> Result<Duration, OtlpConfigError> {
    match value.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err(OtlpConfigError::new(
            setting,
            value,
            "expected a positive number of milliseconds",
        )),
    }
}

/// How spans are batched: the OpenTelemetry batch span processor's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Spans waiting to be exported; more are dropped (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048).
    pub max_queue_size: usize,
    /// Spans per export at most (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, 512; at most the
    /// queue's size).
    pub max_export_batch_size: usize,
    /// The longest a span waits for a batch to fill (`OTEL_BSP_SCHEDULE_DELAY`, 5000 ms).
    pub scheduled_delay: Duration,
    /// The longest one export may take (`OTEL_BSP_EXPORT_TIMEOUT`, 30000 ms; the
    /// endpoint's own timeout applies too).
    pub export_timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_queue_size: 2048,
            max_export_batch_size: 512,
            scheduled_delay: Duration::from_millis(5000),
            export_timeout: Duration::from_millis(30000),
        }
    }
}

impl BatchConfig {
    /// The defaults, overridden by the `OTEL_BSP_*` variables `lookup` reads.
    ///
    /// # Errors
    ///
    /// A value that is not a positive integer, or a batch larger than the queue.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, OtlpConfigError> {
        let env = Env(&lookup);
        let d = BatchConfig::default();
        let max_queue_size = env.count("OTEL_BSP_MAX_QUEUE_SIZE", d.max_queue_size)?;
        let batch_var = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";
        let max_export_batch_size = match env.get(batch_var) {
            Some(v) => {
                let n = env.count(batch_var, d.max_export_batch_size)?;
                if n > max_queue_size {
                    return Err(OtlpConfigError::new(
                        batch_var,
                        &v,
                        format!("larger than the queue ({max_queue_size} spans)"),
                    ));
                }
                n
            }
            None => d.max_export_batch_size.min(max_queue_size),
        };
        Ok(BatchConfig {
            max_queue_size,
            max_export_batch_size,
            scheduled_delay: env.millis("OTEL_BSP_SCHEDULE_DELAY", d.scheduled_delay)?,
            export_timeout: env.millis("OTEL_BSP_EXPORT_TIMEOUT", d.export_timeout)?,
        })
    }
}

/// How metrics are exported: the OpenTelemetry periodic reader's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricReaderConfig {
    /// Between two exports (`OTEL_METRIC_EXPORT_INTERVAL`, 60000 ms).
    pub interval: Duration,
    /// The longest one export may take (`OTEL_METRIC_EXPORT_TIMEOUT`, 30000 ms; the
    /// endpoint's own timeout applies too).
    pub timeout: Duration,
}

impl Default for MetricReaderConfig {
    fn default() -> Self {
        MetricReaderConfig {
            interval: Duration::from_millis(60000),
            timeout: Duration::from_millis(30000),
        }
    }
}

impl MetricReaderConfig {
    /// The defaults, overridden by the `OTEL_METRIC_EXPORT_*` variables `lookup` reads.
    ///
    /// # Errors
    ///
    /// A value that is not a positive number of milliseconds.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, OtlpConfigError> {
        let env = Env(&lookup);
        let d = MetricReaderConfig::default();
        Ok(MetricReaderConfig {
            interval: env.millis("OTEL_METRIC_EXPORT_INTERVAL", d.interval)?,
            timeout: env.millis("OTEL_METRIC_EXPORT_TIMEOUT", d.timeout)?,
        })
    }
}

/// Everything the environment says about OTLP export.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpEnv {
    /// Where spans go, if anywhere ([`OtlpConfig::from_env`]).
    pub traces: Option<OtlpConfig>,
    /// Where metrics go, if anywhere.
    pub metrics: Option<OtlpConfig>,
    /// How spans are batched.
    pub batch: BatchConfig,
    /// How often metrics are exported.
    pub metric_reader: MetricReaderConfig,
}

impl OtlpEnv {
    /// Reads every variable through `lookup` (`|n| std::env::var(n).ok()`).
    ///
    /// # Errors
    ///
    /// The first invalid variable.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, OtlpConfigError> {
        Ok(OtlpEnv {
            traces: OtlpConfig::from_env(Signal::Traces, &lookup)?,
            metrics: OtlpConfig::from_env(Signal::Metrics, &lookup)?,
            batch: BatchConfig::from_env(&lookup)?,
            metric_reader: MetricReaderConfig::from_env(&lookup)?,
        })
    }
}
