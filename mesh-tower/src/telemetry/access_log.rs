//! Access logs: one entry per request, written when its response ends, in Istio's
//! default format — Envoy's text line, or the same fields as JSON (the MeshConfig's
//! `accessLogEncoding`) — for the workloads and sides the Telemetry API (provider
//! `envoy`) or the MeshConfig's `accessLogFile` turn on.
//!
//! Entries go to the runtime's sink ([`MeshRuntime::set_access_log_sink`]); without one,
//! to standard output through a writer thread, so that a request never waits on the
//! terminal (when the writer falls 16,384 lines behind, entries are dropped and counted,
//! as Envoy's access log buffer drops rather than blocks).
//!
//! [`MeshRuntime::set_access_log_sink`]: crate::MeshRuntime::set_access_log_sink

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, Method, Version};
use mesh_config::model::AccessLogEncoding;

use crate::flags::ResponseFlags;

/// Where access log entries go: each call gets one entry, without its newline.
#[derive(Clone)]
pub struct AccessLogSink(Arc<dyn Fn(&str) + Send + Sync>);

impl AccessLogSink {
    /// A sink calling `f` with each entry.
    pub fn new(f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        AccessLogSink(Arc::new(f))
    }

    /// Writes one entry.
    pub fn write(&self, entry: &str) {
        (self.0)(entry);
    }
}

impl std::fmt::Debug for AccessLogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLogSink")
    }
}

/// Entries dropped because the standard output writer fell behind.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// How many entries were dropped because the standard output writer fell behind.
pub fn dropped_entries() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The default sink: standard output, through a writer thread.
pub(crate) fn stdout_sink() -> &'static AccessLogSink {
    static SINK: OnceLock<AccessLogSink> = OnceLock::new();
    SINK.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel::<String>(16_384);
        let spawned = std::thread::Builder::new()
            .name("mesh-access-log".into())
            .spawn(move || {
                use std::io::Write as _;
                let stdout = std::io::stdout();
                while let Ok(line) = rx.recv() {
                    let mut out = stdout.lock();
                    let _ = writeln!(out, "{line}");
                    // Whatever else is queued goes out in the same write.
                    while let Ok(more) = rx.try_recv() {
                        let _ = writeln!(out, "{more}");
                    }
                    let _ = out.flush();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no access log writer thread: entries are dropped");
        }
        AccessLogSink::new(move |line: &str| {
            if tx.try_send(line.to_owned()).is_err() {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        })
    })
}

/// What an entry says of the request, taken when it arrives (only for requests whose
/// side logs).
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) encoding: AccessLogEncoding,
    pub(crate) start: SystemTime,
    pub(crate) method: Method,
    pub(crate) path: Option<http::uri::PathAndQuery>,
    pub(crate) protocol: Version,
    pub(crate) forwarded_for: Option<HeaderValue>,
    pub(crate) user_agent: Option<HeaderValue>,
    pub(crate) request_id: Option<HeaderValue>,
    pub(crate) authority: Option<String>,
    pub(crate) downstream_local: Option<SocketAddr>,
    pub(crate) downstream_remote: Option<SocketAddr>,
    pub(crate) server_name: Option<Arc<str>>,
    pub(crate) route_name: Option<Arc<str>>,
    /// The upstream cluster (`outbound|9080|v1|reviews…`, `inbound|9080||`).
    pub(crate) cluster: Option<Arc<str>>,
    /// The upstream host, when known on arrival (the inbound side: the application).
    pub(crate) upstream_host: Option<Arc<str>>,
    /// The side's filter, and what it may read of the request's headers.
    pub(crate) filter: Option<mesh_core::telemetry::Filter>,
    pub(crate) headers: Option<HeaderMap>,
    /// True over mutual TLS (`connection.mtls`).
    pub(crate) mtls: bool,
    /// The size of the request's headers.
    pub(crate) header_bytes: u64,
}

impl Request {
    /// The request's head as an entry of a side logging as `settings` records it.
    pub(crate) fn of<B>(
        settings: &mesh_core::telemetry::AccessLogSettings,
        req: &http::Request<B>,
    ) -> Self {
        let h = req.headers();
        let get = |name: &str| h.get(name).cloned();
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                h.get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            });
        Request {
            encoding: settings.encoding,
            filter: settings.filter.clone(),
            // Only a filter reads the headers afterwards.
            headers: settings.filter.as_ref().map(|_| h.clone()),
            mtls: false,
            header_bytes: super::meter::header_bytes(h),
            start: SystemTime::now(),
            method: req.method().clone(),
            path: req.uri().path_and_query().cloned(),
            protocol: req.version(),
            forwarded_for: get("x-forwarded-for"),
            user_agent: get("user-agent"),
            request_id: h.get(super::X_REQUEST_ID).cloned(),
            authority,
            downstream_local: None,
            downstream_remote: None,
            server_name: None,
            route_name: None,
            cluster: None,
            upstream_host: None,
        }
    }
}

/// What an entry says of the response, once it ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome<'a> {
    pub(crate) code: u16,
    pub(crate) flags: ResponseFlags,
    /// True when the upstream (or the application) answered, not the mesh.
    pub(crate) via_upstream: bool,
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) duration: Duration,
    pub(crate) upstream_host: Option<&'a str>,
    pub(crate) grpc_status: Option<u16>,
    pub(crate) response_headers: Option<&'a HeaderMap>,
    /// The size of the response's headers and trailers.
    pub(crate) response_header_bytes: u64,
}

/// Whether the side's filter lets request `r`, which ended as `o`, be logged.
pub(crate) fn admitted(r: &Request, o: &Outcome<'_>) -> bool {
    match &r.filter {
        None => true,
        Some(mesh_core::telemetry::Filter::Invalid) => false,
        Some(mesh_core::telemetry::Filter::Cel(f)) => f.matches(&Attrs { r, o }),
    }
}

/// A request's Envoy attributes, for filters.
struct Attrs<'a> {
    r: &'a Request,
    o: &'a Outcome<'a>,
}

impl mesh_config::cel::Attributes for Attrs<'_> {
    fn attribute(&self, path: &str) -> Option<mesh_config::cel::Value<'_>> {
        use mesh_config::cel::Value;
        let (r, o) = (self.r, self.o);
        let int = |n: u64| Value::Int(i64::try_from(n).unwrap_or(i64::MAX));
        let header = |name: &str| r.headers.as_ref()?.get(name)?.to_str().ok();
        Some(match path {
            "request.path" => Value::from(r.path.as_ref()?.as_str()),
            "request.url_path" => Value::from(r.path.as_ref()?.path()),
            "request.host" => Value::from(r.authority.as_deref()?),
            "request.scheme" => Value::from("http"),
            "request.method" => Value::from(r.method.as_str()),
            "request.referer" => Value::from(header("referer")?),
            "request.useragent" => Value::from(r.user_agent.as_ref()?.to_str().ok()?),
            "request.id" => Value::from(r.request_id.as_ref()?.to_str().ok()?),
            "request.time" => Value::Timestamp(r.start),
            "request.protocol" => Value::from(protocol(r.protocol)),
            "request.duration" => Value::Duration(o.duration),
            "request.size" => int(o.bytes_received),
            "request.total_size" => int(o.bytes_received + r.header_bytes),
            "response.code" => Value::Int(i64::from(o.code)),
            "response.code_details" => Value::from(details(o)),
            "response.flags" => Value::Int(i64::try_from(o.flags.envoy_bits()).unwrap_or(i64::MAX)),
            "response.grpc_status" => Value::Int(i64::from(o.grpc_status?)),
            "response.size" => int(o.bytes_sent),
            "response.total_size" => int(o.bytes_sent + o.response_header_bytes),
            "source.address" => Value::from(r.downstream_remote?.ip().to_string()),
            "source.port" => Value::Int(i64::from(r.downstream_remote?.port())),
            "destination.address" => Value::from(r.downstream_local?.ip().to_string()),
            "destination.port" => Value::Int(i64::from(r.downstream_local?.port())),
            "connection.mtls" => Value::Bool(r.mtls),
            "connection.requested_server_name" => Value::from(r.server_name.as_deref()?),
            "upstream.address" => Value::from(o.upstream_host.or(r.upstream_host.as_deref())?),
            "xds.cluster_name" => Value::from(r.cluster.as_deref()?),
            "xds.route_name" => Value::from(r.route_name.as_deref()?),
            _ => return None,
        })
    }

    fn request_header(&self, name: &str) -> Option<&str> {
        self.r.headers.as_ref()?.get(name)?.to_str().ok()
    }

    fn response_header(&self, name: &str) -> Option<&str> {
        self.o.response_headers?.get(name)?.to_str().ok()
    }
}

/// Envoy's `%RESPONSE_CODE_DETAILS%` for what the mesh did.
fn details(o: &Outcome<'_>) -> &'static str {
    const BY_FLAG: &[(ResponseFlags, &str)] = &[
        (ResponseFlags::NO_ROUTE_FOUND, "route_not_found"),
        (ResponseFlags::NO_CLUSTER_FOUND, "cluster_not_found"),
        (ResponseFlags::NO_HEALTHY_UPSTREAM, "no_healthy_upstream"),
        (
            ResponseFlags::UPSTREAM_OVERFLOW,
            "upstream_reset_before_response_started{overflow}",
        ),
        (
            ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
            "upstream_reset_before_response_started{connection_failure}",
        ),
        (
            ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
            "upstream_reset_before_response_started{connection_termination}",
        ),
        (
            ResponseFlags::LOCAL_RESET,
            "upstream_reset_before_response_started{local_reset}",
        ),
        (
            ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
            "upstream_response_timeout",
        ),
        (ResponseFlags::FAULT_INJECTED, "fault_filter_abort"),
        (ResponseFlags::RATE_LIMITED, "request_rate_limited"),
        (
            ResponseFlags::RATE_LIMIT_SERVICE_ERROR,
            "rate_limiter_error",
        ),
        (
            ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE,
            "ext_authz_denied",
        ),
        (
            ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
            "upstream_reset_before_response_started{protocol_error}",
        ),
        (
            ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
            "downstream_remote_disconnect",
        ),
    ];
    if let Some((_, d)) = BY_FLAG.iter().find(|(f, _)| o.flags.contains(*f)) {
        return d;
    }
    if o.via_upstream { "via_upstream" } else { "-" }
}

/// Envoy's `%PROTOCOL%`.
fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// `t` as Envoy's `%START_TIME%`: RFC 3339 UTC with milliseconds.
fn start_time(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// The fields of an entry in Istio's order, as (JSON key, value or `None` for `-`), the
/// numbers marked.
fn fields<'a>(r: &'a Request, o: &'a Outcome<'a>) -> [(&'static str, Field<'a>); 24] {
    let text = |v: Option<&'a HeaderValue>| {
        v.and_then(|v| v.to_str().ok())
            .map_or(Field::None, Field::Str)
    };
    let addr = |a: Option<SocketAddr>| a.map_or(Field::None, Field::Addr);
    let upstream = o
        .upstream_host
        .or(r.upstream_host.as_deref())
        .map_or(Field::None, Field::Str);
    [
        ("start_time", Field::Owned(start_time(r.start))),
        ("method", Field::Str(r.method.as_str())),
        (
            "path",
            r.path
                .as_ref()
                .map_or(Field::None, |p| Field::Str(p.as_str())),
        ),
        ("protocol", Field::Str(protocol(r.protocol))),
        ("response_code", Field::Num(u64::from(o.code))),
        (
            "response_flags",
            if o.flags.is_empty() {
                Field::None
            } else {
                Field::Owned(o.flags.to_string())
            },
        ),
        ("response_code_details", Field::Str(details(o))),
        ("connection_termination_details", Field::None),
        ("upstream_transport_failure_reason", Field::None),
        ("bytes_received", Field::Num(o.bytes_received)),
        ("bytes_sent", Field::Num(o.bytes_sent)),
        (
            "duration",
            Field::Num(u64::try_from(o.duration.as_millis()).unwrap_or(u64::MAX)),
        ),
        ("upstream_service_time", Field::None),
        ("x_forwarded_for", text(r.forwarded_for.as_ref())),
        ("user_agent", text(r.user_agent.as_ref())),
        ("request_id", text(r.request_id.as_ref())),
        (
            "authority",
            r.authority.as_deref().map_or(Field::None, Field::Str),
        ),
        ("upstream_host", upstream),
        (
            "upstream_cluster",
            r.cluster.as_deref().map_or(Field::None, Field::Str),
        ),
        ("upstream_local_address", Field::None),
        ("downstream_local_address", addr(r.downstream_local)),
        ("downstream_remote_address", addr(r.downstream_remote)),
        (
            "requested_server_name",
            r.server_name.as_deref().map_or(Field::None, Field::Str),
        ),
        (
            "route_name",
            r.route_name.as_deref().map_or(Field::None, Field::Str),
        ),
    ]
}

/// One field's value.
enum Field<'a> {
    None,
    Str(&'a str),
    Owned(String),
    Num(u64),
    Addr(SocketAddr),
}

impl std::fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Field::None => f.write_str("-"),
            Field::Str(s) => f.write_str(s),
            Field::Owned(s) => f.write_str(s),
            Field::Num(n) => write!(f, "{n}"),
            Field::Addr(a) => write!(f, "{a}"),
        }
    }
}

/// The entry of request `r` that ended as `o`, in `r`'s encoding.
pub(crate) fn entry(r: &Request, o: &Outcome<'_>) -> String {
    let f = fields(r, o);
    match r.encoding {
        AccessLogEncoding::Text => text_entry(&f),
        AccessLogEncoding::Json => json_entry(&f),
    }
}

/// Istio's default text format (`meshConfig.accessLogFormat` unset):
/// `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"
/// %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%
/// %CONNECTION_TERMINATION_DETAILS% "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED%
/// %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%"
/// "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"
/// %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS%
/// %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%`.
fn text_entry(f: &[(&str, Field<'_>); 24]) -> String {
    let v = |i: usize| f.get(i).map_or(&Field::None, |(_, v)| v);
    let mut out = String::with_capacity(384);
    let _ = write!(
        out,
        "[{}] \"{} {} {}\" {} {} {} {} \"{}\" {} {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} {} {} {} {} {}",
        v(0),
        v(1),
        v(2),
        v(3),
        v(4),
        v(5),
        v(6),
        v(7),
        v(8),
        v(9),
        v(10),
        v(11),
        v(12),
        v(13),
        v(14),
        v(15),
        v(16),
        v(17),
        v(18),
        v(19),
        v(20),
        v(21),
        v(22),
        v(23),
    );
    out
}

/// Istio's default JSON format: the same fields under Istio's keys, numbers as numbers,
/// `null` for what is missing.
fn json_entry(f: &[(&str, Field<'_>); 24]) -> String {
    let mut map = serde_json::Map::with_capacity(f.len());
    for (k, v) in f {
        let value = match v {
            Field::None => serde_json::Value::Null,
            Field::Num(n) => serde_json::Value::from(*n),
            other => serde_json::Value::String(other.to_string()),
        };
        map.insert((*k).to_owned(), value);
    }
    serde_json::Value::Object(map).to_string()
}

/// The value of `x-request-id` Envoy generates: a random UUID (version 4), from the
/// thread's id generator.
pub(crate) fn request_id() -> HeaderValue {
    mesh_core::trace::random_request_id()
}

/// Gives a request an `x-request-id` when it has none, as Envoy does, and
/// returns the request's ID: its own, else `inherited` (when given), else a new one.
pub(crate) fn ensure_request_id(
    headers: &mut HeaderMap,
    inherited: Option<&HeaderValue>,
) -> HeaderValue {
    let new = || inherited.cloned().unwrap_or_else(request_id);
    // `entry` looks the name up once, but first reserves room for an insert: a full map
    // (as hyper sizes the map of a request it parses) would be regrown, every header
    // rehashed, even when the ID is there. A full map is looked up with `get` first.
    if headers.keys_len() < headers.capacity() {
        return match headers.entry(super::X_REQUEST_ID) {
            http::header::Entry::Occupied(id) => id.get().clone(),
            http::header::Entry::Vacant(slot) => slot.insert(new()).clone(),
        };
    }
    if let Some(id) = headers.get(super::X_REQUEST_ID) {
        return id.clone();
    }
    let id = new();
    headers.insert(super::X_REQUEST_ID, id.clone());
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Request, Outcome<'static>) {
        let req = http::Request::get("http://reviews:9080/reviews/0?x=1")
            .header("user-agent", "curl/8.5.0")
            .header("x-request-id", "84961386-6d84-429d-98bd-c5aee93b5c88")
            .body(())
            .unwrap_or_default();
        let settings = mesh_core::telemetry::AccessLogSettings {
            encoding: AccessLogEncoding::Text,
            filter: None,
        };
        let mut r = Request::of(&settings, &req);
        r.start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_408_000_123);
        r.cluster = Some("outbound|9080|v1|reviews.default.svc.cluster.local".into());
        r.route_name = Some("default".into());
        let o = Outcome {
            code: 200,
            flags: ResponseFlags::NONE,
            via_upstream: true,
            bytes_received: 0,
            bytes_sent: 295,
            duration: Duration::from_micros(4_900),
            upstream_host: Some("127.0.0.1:9083"),
            grpc_status: None,
            response_headers: None,
            response_header_bytes: 0,
        };
        (r, o)
    }

    #[test]
    fn text_entries_follow_istios_default_format() {
        let (r, o) = sample();
        assert_eq!(
            entry(&r, &o),
            "[2025-11-29T09:20:00.123Z] \"GET /reviews/0?x=1 HTTP/1.1\" 200 - via_upstream - \"-\" 0 295 4 - \"-\" \"curl/8.5.0\" \"84961386-6d84-429d-98bd-c5aee93b5c88\" \"reviews:9080\" \"127.0.0.1:9083\" outbound|9080|v1|reviews.default.svc.cluster.local - - - - default"
        );
        let failed = Outcome {
            code: 503,
            flags: ResponseFlags::UPSTREAM_OVERFLOW,
            via_upstream: false,
            upstream_host: None,
            ..o
        };
        let line = entry(&r, &failed);
        assert!(
            line.contains(" 503 UO upstream_reset_before_response_started{overflow} - "),
            "{line}"
        );
        assert!(line.contains("\"-\" outbound|9080|v1|"), "{line}");
    }

    #[test]
    fn json_entries_carry_the_same_fields() {
        let (mut r, o) = sample();
        r.encoding = AccessLogEncoding::Json;
        let v: serde_json::Value = serde_json::from_str(&entry(&r, &o)).unwrap_or_default();
        assert_eq!(v["start_time"], "2025-11-29T09:20:00.123Z");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/reviews/0?x=1");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["response_code"], 200);
        assert_eq!(v["response_flags"], serde_json::Value::Null);
        assert_eq!(v["response_code_details"], "via_upstream");
        assert_eq!(v["bytes_sent"], 295);
        assert_eq!(v["duration"], 4);
        assert_eq!(v["request_id"], "84961386-6d84-429d-98bd-c5aee93b5c88");
        assert_eq!(v["authority"], "reviews:9080");
        assert_eq!(v["upstream_host"], "127.0.0.1:9083");
        assert_eq!(
            v["upstream_cluster"],
            "outbound|9080|v1|reviews.default.svc.cluster.local"
        );
        assert_eq!(v["route_name"], "default");
        assert_eq!(v.as_object().map(|m| m.len()), Some(24));
    }

    #[test]
    fn request_ids_are_version_4_uuids_and_kept_when_present() {
        let a = request_id();
        let b = request_id();
        assert_ne!(a, b);
        let s = a.to_str().unwrap_or_default();
        assert_eq!(s.len(), 36);
        let parts: Vec<&str> = s.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("given"));
        let inherited = HeaderValue::from_static("inherited");
        assert_eq!(ensure_request_id(&mut h, Some(&inherited)), "given");
        assert_eq!(h["x-request-id"], "given");
        let mut h = HeaderMap::new();
        assert_eq!(ensure_request_id(&mut h, Some(&inherited)), "inherited");
        assert_eq!(h["x-request-id"], "inherited");
        let mut h = HeaderMap::new();
        let new = ensure_request_id(&mut h, None);
        assert_eq!(h["x-request-id"], new);
        assert_eq!(new.len(), 36);
        // A full map (three headers fill a map sized for three, as hyper sizes a parsed
        // request's) keeps its ID without regrowing; without one, it gets one.
        for given in [true, false] {
            let mut h = HeaderMap::with_capacity(3);
            h.insert("host", HeaderValue::from_static("reviews"));
            h.insert("baggage", HeaderValue::from_static("k8s.pod.name=a"));
            if given {
                h.insert("x-request-id", HeaderValue::from_static("given"));
            } else {
                h.insert("accept", HeaderValue::from_static("*/*"));
            }
            assert_eq!(h.keys_len(), h.capacity(), "full");
            let capacity = h.capacity();
            let id = ensure_request_id(&mut h, None);
            assert_eq!(h["x-request-id"], id);
            if given {
                assert_eq!((id.to_str().unwrap(), h.capacity()), ("given", capacity));
            } else {
                assert_eq!((id.len(), h.len()), (36, 4));
            }
        }
        // Unique over many, and every hex digit of the random part in use.
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        let digits: std::collections::HashSet<u8> = ids
            .iter()
            .flat_map(|v| v.as_bytes()[..8].to_vec())
            .collect();
        assert_eq!(digits.len(), 16);
    }
}
