//! Trace context: which trace a request belongs to, what the mesh writes on the wire for the
//! next hop, whether the request is sampled, and what its spans are called.
//!
//! Envoy joins the spans of one request across the mesh only if the trace context travels
//! with it. Its OpenTelemetry tracer reads W3C Trace Context (`traceparent`, `tracestate`),
//! its Zipkin tracer reads B3 (the single `b3` header before the `x-b3-*` headers, and W3C as
//! a fallback with `USE_B3_WITH_W3C_PROPAGATION`). The mesh exports OTLP, so [`extract`]
//! reads W3C first, like the OpenTelemetry tracer, then the single `b3` header, then the
//! multi-header B3, so that B3-only clients still join; a header that does not parse is
//! treated as absent (the W3C rule) and the next format is tried. [`inject`] writes every
//! format at once and replaces what was there, so a request forwarded by an application never
//! carries two conflicting contexts.
//!
//! Sampling is Envoy's, as Istio configures it ([`Sampler`]): an incoming decision wins;
//! otherwise the decision is read from, or made on, the `x-request-id` — so it is the same for
//! a request id wherever it is made, and travels with the id (Envoy's UUID extension packs it
//! into the id). Ids come from a small non-cryptographic generator ([`IdGenerator`]); span
//! names follow Istio's route decorators ([`route_operation`], [`span_name`]); the attribute
//! names Envoy and Istio put on spans are in [`tag`].
//!
//! ```
//! use http::{HeaderMap, HeaderValue};
//! use mesh_core::trace::{self, IdGenerator, Sampler, SamplingInput, SpanContext};
//!
//! let mut incoming = HeaderMap::new();
//! incoming.insert(
//!     "traceparent",
//!     HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
//! );
//! let extracted = trace::extract(&incoming);
//! let decision = Sampler::new(1.0).decide(&SamplingInput::from_headers(&incoming, extracted.as_ref()));
//! assert!(decision.sampled); // the caller sampled it
//!
//! let mut ids = IdGenerator::from_seed(7);
//! let (span, parent) = SpanContext::start(extracted.as_ref(), &decision, &mut ids);
//! assert_eq!(span.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
//! assert_eq!(parent.map(|p| p.to_string()).as_deref(), Some("00f067aa0ba902b7"));
//!
//! let mut outgoing = HeaderMap::new();
//! trace::inject(&span, parent, &mut outgoing);
//! assert_eq!(outgoing["x-b3-parentspanid"], "00f067aa0ba902b7");
//! ```

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::num::{NonZeroU64, NonZeroU128};
use std::str::FromStr;

use http::{HeaderMap, HeaderName, HeaderValue};
use rand::SeedableRng;
use rand::rngs::{SysRng, Xoshiro256PlusPlus};
use rand_core::Rng;

/// The names of the headers this module reads and writes.
pub mod header {
    use http::HeaderName;

    /// W3C Trace Context: `{version}-{trace-id}-{parent-id}-{trace-flags}`.
    pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    /// W3C Trace Context: vendor-specific trace state, propagated as received.
    pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
    /// B3 single header: `{TraceId}-{SpanId}-{SamplingState}-{ParentSpanId}`.
    pub static B3: HeaderName = HeaderName::from_static("b3");
    /// B3 multi-header: the trace id (16 or 32 lowercase hex digits).
    pub static X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
    /// B3 multi-header: the id of the span that sent the request.
    pub static X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
    /// B3 multi-header: the parent of that span.
    pub static X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
    /// B3 multi-header: the sampling decision (`1`/`0`, or the legacy `true`/`false`).
    pub static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
    /// B3 multi-header: `1` is debug, which forces sampling.
    pub static X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
    /// The request id: a UUID that also carries Envoy's trace decision.
    pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    /// Forces tracing of a request (Envoy's service-forced trace).
    pub static X_ENVOY_FORCE_TRACE: HeaderName = HeaderName::from_static("x-envoy-force-trace");
    /// A client-supplied trace id: forces tracing (Envoy's client-forced trace).
    pub static X_CLIENT_TRACE_ID: HeaderName = HeaderName::from_static("x-client-trace-id");
    /// The client side's route operation, sent so that the server side names its span alike.
    pub static X_ENVOY_DECORATOR_OPERATION: HeaderName =
        HeaderName::from_static("x-envoy-decorator-operation");
}

use header::{
    B3, TRACEPARENT, TRACESTATE, X_B3_FLAGS, X_B3_PARENTSPANID, X_B3_SAMPLED, X_B3_SPANID,
    X_B3_TRACEID,
};

// ---------------------------------------------------------------------------------------
// Ids
// ---------------------------------------------------------------------------------------

/// Why a hexadecimal id does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id does not have the number of digits its format requires.
    #[error("expected {expected} lowercase hex digits, found {found} characters")]
    Length {
        /// The number of digits required.
        expected: usize,
        /// The number of characters found.
        found: usize,
    },
    /// A character is not a lowercase hexadecimal digit.
    #[error("not lowercase hex")]
    NotLowerHex,
    /// All digits are zero, which no format allows.
    #[error("all-zero id")]
    Zero,
}

/// The value of a lowercase hexadecimal digit.
fn lower_hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// The value of exactly `digits` lowercase hexadecimal digits (at most 32).
fn parse_lower_hex(s: &[u8], digits: usize) -> Result<u128, IdError> {
    if s.len() != digits {
        return Err(IdError::Length {
            expected: digits,
            found: s.len(),
        });
    }
    s.iter().try_fold(0u128, |v, &b| {
        lower_hex_digit(b)
            .map(|d| (v << 4) | u128::from(d))
            .ok_or(IdError::NotLowerHex)
    })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `v` as `out.len()` lowercase hexadecimal digits (the low `4 × len` bits).
fn write_hex(out: &mut [u8], v: u128) {
    let n = out.len();
    for (i, o) in out.iter_mut().enumerate() {
        let shift = 4 * (n - 1 - i);
        *o = HEX[((v >> shift) & 0xf) as usize];
    }
}

/// A 128-bit trace id; never all zeros (W3C and B3 both reserve that value for "invalid").
/// Displays and parses as 32 lowercase hexadecimal digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(NonZeroU128);

impl TraceId {
    /// The id with this value; `None` for zero.
    pub const fn new(value: u128) -> Option<Self> {
        match NonZeroU128::new(value) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// The id with these bytes (big-endian, as on the wire); `None` for all zeros.
    pub const fn from_bytes(bytes: [u8; 16]) -> Option<Self> {
        Self::new(u128::from_be_bytes(bytes))
    }

    /// The id's bytes, big-endian (the order of OTLP's `trace_id`).
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0.get().to_be_bytes()
    }

    /// The id's value.
    pub const fn get(self) -> u128 {
        self.0.get()
    }

    /// Parses exactly 32 lowercase hexadecimal digits, not all zero (W3C's `trace-id`).
    pub fn from_hex(hex: &[u8]) -> Result<Self, IdError> {
        Self::new(parse_lower_hex(hex, 32)?).ok_or(IdError::Zero)
    }

    /// Parses a B3 trace id: 32 lowercase hexadecimal digits, or 16 for a 64-bit id, which
    /// is left-padded with zeros to 128 bits (as OpenTelemetry's B3 propagator does).
    pub fn from_b3_hex(hex: &[u8]) -> Result<Self, IdError> {
        let value = match hex.len() {
            16 => parse_lower_hex(hex, 16)?,
            _ => parse_lower_hex(hex, 32)?,
        };
        Self::new(value).ok_or(IdError::Zero)
    }

    /// The 32 lowercase hexadecimal digits of the id.
    fn hex(self) -> [u8; 32] {
        let mut out = [0; 32];
        write_hex(&mut out, self.get());
        out
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.get())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl FromStr for TraceId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::from_hex(s.as_bytes())
    }
}

/// A 64-bit span id; never all zeros. Displays and parses as 16 lowercase hexadecimal digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(NonZeroU64);

impl SpanId {
    /// The id with this value; `None` for zero.
    pub const fn new(value: u64) -> Option<Self> {
        match NonZeroU64::new(value) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// The id with these bytes (big-endian, as on the wire); `None` for all zeros.
    pub const fn from_bytes(bytes: [u8; 8]) -> Option<Self> {
        Self::new(u64::from_be_bytes(bytes))
    }

    /// The id's bytes, big-endian (the order of OTLP's `span_id`).
    pub const fn to_bytes(self) -> [u8; 8] {
        self.0.get().to_be_bytes()
    }

    /// The id's value.
    pub const fn get(self) -> u64 {
        self.0.get()
    }

    /// Parses exactly 16 lowercase hexadecimal digits, not all zero.
    pub fn from_hex(hex: &[u8]) -> Result<Self, IdError> {
        let value = parse_lower_hex(hex, 16)?;
        // 16 digits fit in 64 bits.
        Self::new(value as u64).ok_or(IdError::Zero)
    }

    /// The 16 lowercase hexadecimal digits of the id.
    fn hex(self) -> [u8; 16] {
        let mut out = [0; 16];
        write_hex(&mut out, u128::from(self.get()));
        out
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.get())
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

impl FromStr for SpanId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::from_hex(s.as_bytes())
    }
}

// ---------------------------------------------------------------------------------------
// Contexts
// ---------------------------------------------------------------------------------------

/// A sampling decision as the headers carry it (B3's words; W3C's `sampled` flag is
/// [`Accept`](Sampling::Accept) or [`Deny`](Sampling::Deny)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sampling {
    /// No decision: the receiver decides (B3 ids without a sampling state).
    #[default]
    Deferred,
    /// Not sampled (`-00`, `b3: 0`, `x-b3-sampled: 0`).
    Deny,
    /// Sampled (`-01`, `b3: 1`, `x-b3-sampled: 1`).
    Accept,
    /// Debug: sampled, and forced all the way (`b3: d`, `x-b3-flags: 1`).
    Debug,
}

impl Sampling {
    /// Whether the request is sampled, when decided.
    pub const fn sampled(self) -> Option<bool> {
        match self {
            Sampling::Deferred => None,
            Sampling::Deny => Some(false),
            Sampling::Accept | Sampling::Debug => Some(true),
        }
    }
}

/// The format a context was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// W3C Trace Context (`traceparent`, `tracestate`).
    TraceContext,
    /// The single `b3` header.
    B3Single,
    /// The `x-b3-*` headers.
    B3Multi,
}

/// The caller's span, as the headers name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteSpan {
    /// The trace the request belongs to.
    pub trace_id: TraceId,
    /// The span that sent the request: the parent of the span the receiver starts.
    pub span_id: SpanId,
    /// That span's own parent, when B3 names it (informative only).
    pub parent_span_id: Option<SpanId>,
}

/// What a request's headers say about its trace ([`extract`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// The format the context was read from.
    pub format: Format,
    /// The caller's span; `None` when the headers carry only a sampling decision
    /// (`b3: 0`, a lone `x-b3-sampled`).
    pub remote: Option<RemoteSpan>,
    /// The sampling decision carried.
    pub sampling: Sampling,
    /// W3C `tracestate`, kept as received (bounded, see [`parse_tracestate`]); only with a
    /// valid `traceparent`.
    pub tracestate: Option<HeaderValue>,
}

impl Extracted {
    /// Whether the headers decided the request is sampled.
    pub const fn sampled(&self) -> Option<bool> {
        self.sampling.sampled()
    }
}

/// A span of the mesh: the ids and flags it propagates to the next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace.
    pub trace_id: TraceId,
    /// This span.
    pub span_id: SpanId,
    /// Whether the trace is sampled (recorded and exported).
    pub sampled: bool,
    /// B3 debug: sampling forced (sent as `b3: …-d` and `x-b3-flags: 1`). Implies `sampled`.
    pub debug: bool,
    /// W3C `tracestate`, passed on unchanged.
    pub tracestate: Option<HeaderValue>,
}

impl SpanContext {
    /// The span a hop starts for a request that arrived with `incoming` (`None`: no
    /// context), sampled as `decision` says: a child of the caller's span in the caller's
    /// trace, or the root of a new trace. Returns it with its parent, the caller's span.
    pub fn start(
        incoming: Option<&Extracted>,
        decision: &SamplingDecision,
        ids: &mut IdGenerator,
    ) -> (SpanContext, Option<SpanId>) {
        let sampled = decision.sampled;
        let debug = decision.debug && sampled;
        match incoming.and_then(|e| e.remote.map(|r| (e, r))) {
            Some((e, remote)) => (
                SpanContext {
                    trace_id: remote.trace_id,
                    span_id: ids.span_id(),
                    sampled,
                    debug,
                    tracestate: e.tracestate.clone(),
                },
                Some(remote.span_id),
            ),
            None => (
                SpanContext {
                    trace_id: ids.trace_id(),
                    span_id: ids.span_id(),
                    sampled,
                    debug,
                    tracestate: None,
                },
                None,
            ),
        }
    }

    /// A child of this span: the same trace, flags and state, a new span id (its parent is
    /// `self.span_id`).
    pub fn child(&self, ids: &mut IdGenerator) -> SpanContext {
        SpanContext {
            span_id: ids.span_id(),
            ..self.clone()
        }
    }
}

// ---------------------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------------------

/// Why a trace context header is rejected (and treated as absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidContext {
    /// The header is empty.
    #[error("empty header")]
    Empty,
    /// The header appears more than once (W3C: start a new trace).
    #[error("the header appears more than once")]
    Duplicate,
    /// The header is shorter than its format's fields.
    #[error("truncated header")]
    Truncated,
    /// The version is not two lowercase hex digits, or is the forbidden `ff`.
    #[error("invalid version")]
    Version,
    /// A field separator `-` is missing at this character position.
    #[error("missing `-` at position {0}")]
    Delimiter(usize),
    /// The trace id does not parse.
    #[error("trace id: {0}")]
    TraceId(IdError),
    /// The span (W3C: parent) id does not parse.
    #[error("span id: {0}")]
    SpanId(IdError),
    /// The B3 parent span id does not parse.
    #[error("parent span id: {0}")]
    ParentSpanId(IdError),
    /// The W3C trace flags are not two lowercase hex digits.
    #[error("invalid trace flags")]
    Flags,
    /// The B3 sampling state is not `0`, `1` or `d`.
    #[error("invalid sampling state")]
    Sampling,
    /// Data follows the last field where the format allows none.
    #[error("unexpected data after the last field")]
    TrailingData,
}

/// A parsed W3C `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traceparent {
    /// The version (`00`, or a later one read as version `00`).
    pub version: u8,
    /// The trace.
    pub trace_id: TraceId,
    /// The caller's span (`parent-id`).
    pub parent_id: SpanId,
    /// The trace flags; bit 0 is `sampled`.
    pub flags: u8,
}

impl Traceparent {
    /// Whether the caller sampled the trace.
    pub const fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// The value without leading and trailing optional whitespace (spaces and tabs).
fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != b' ' && b != b'\t');
    let end = v.iter().rposition(|&b| b != b' ' && b != b'\t');
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

/// Two lowercase hex digits.
fn hex_byte(s: &[u8]) -> Option<u8> {
    match s {
        [h, l] => Some((lower_hex_digit(*h)? << 4) | lower_hex_digit(*l)?),
        _ => None,
    }
}

/// Parses a `traceparent` value as the W3C Trace Context specification says: lowercase hex
/// only; version `ff` is invalid; version `00` is exactly 55 characters; a later version is
/// read for its first four fields when it is at least 55 characters long and what follows
/// the flags, if anything, starts with `-`; all-zero ids are invalid.
pub fn parse_traceparent(value: &[u8]) -> Result<Traceparent, InvalidContext> {
    let v = trim_ows(value);
    if v.is_empty() {
        return Err(InvalidContext::Empty);
    }
    let version = v
        .get(..2)
        .and_then(hex_byte)
        .ok_or(InvalidContext::Version)?;
    if version == 0xff {
        return Err(InvalidContext::Version);
    }
    if v.len() < 55 {
        return Err(InvalidContext::Truncated);
    }
    for pos in [2, 35, 52] {
        if v[pos] != b'-' {
            return Err(InvalidContext::Delimiter(pos));
        }
    }
    let trace_id = TraceId::from_hex(&v[3..35]).map_err(InvalidContext::TraceId)?;
    let parent_id = SpanId::from_hex(&v[36..52]).map_err(InvalidContext::SpanId)?;
    let flags = hex_byte(&v[53..55]).ok_or(InvalidContext::Flags)?;
    if v.len() > 55 && (version == 0 || v[55] != b'-') {
        return Err(InvalidContext::TrailingData);
    }
    Ok(Traceparent {
        version,
        trace_id,
        parent_id,
        flags,
    })
}

/// W3C: at most 32 list members.
const TRACESTATE_MAX_MEMBERS: usize = 32;
/// W3C: propagate at least 512 characters; longer values are truncated to this.
const TRACESTATE_MAX_LEN: usize = 512;
/// W3C: when truncating, members longer than this go first.
const TRACESTATE_LONG_MEMBER: usize = 128;

fn is_key_char(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/')
}

/// A `tracestate` key: `simple-key` or `tenant-id@system-id`.
fn valid_tracestate_key(k: &[u8]) -> bool {
    match k.iter().position(|&b| b == b'@') {
        None => {
            (1..=256).contains(&k.len())
                && k[0].is_ascii_lowercase()
                && k.iter().all(|&b| is_key_char(b))
        }
        Some(at) => {
            let (tenant, system) = (&k[..at], &k[at + 1..]);
            (1..=241).contains(&tenant.len())
                && (tenant[0].is_ascii_lowercase() || tenant[0].is_ascii_digit())
                && tenant.iter().all(|&b| is_key_char(b))
                && (1..=14).contains(&system.len())
                && system[0].is_ascii_lowercase()
                && system.iter().all(|&b| is_key_char(b))
        }
    }
}

/// A `tracestate` value: 1 to 256 printable characters but `,` and `=`, not ending in a
/// space.
fn valid_tracestate_value(v: &[u8]) -> bool {
    (1..=256).contains(&v.len())
        && v.iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && v.last() != Some(&b' ')
}

/// The `tracestate` to propagate, from the header's values (several header lines are one
/// comma-separated list): kept byte for byte when it is valid and at most 512 characters;
/// longer, members over 128 characters are dropped first, then members from the end, until
/// it fits (the W3C truncation rule); invalid (a malformed member, a duplicate key, more than
/// 32 members) or empty, it is not propagated.
pub fn parse_tracestate<'a>(
    values: impl IntoIterator<Item = &'a HeaderValue>,
) -> Option<HeaderValue> {
    let mut values = values.into_iter();
    let first = values.next()?;
    let mut joined: Option<Vec<u8>> = None;
    for more in values {
        let buf = joined.get_or_insert_with(|| first.as_bytes().to_vec());
        buf.push(b',');
        buf.extend_from_slice(more.as_bytes());
    }
    let bytes = joined.as_deref().unwrap_or(first.as_bytes());

    let mut members: Vec<&[u8]> = Vec::new();
    for raw in bytes.split(|&b| b == b',') {
        let member = trim_ows(raw);
        if member.is_empty() {
            continue;
        }
        let eq = member.iter().position(|&b| b == b'=')?;
        let (key, value) = (&member[..eq], &member[eq + 1..]);
        if !valid_tracestate_key(key) || !valid_tracestate_value(value) {
            return None;
        }
        if members
            .iter()
            .any(|m| m.split(|&b| b == b'=').next() == Some(key))
        {
            return None;
        }
        members.push(member);
        if members.len() > TRACESTATE_MAX_MEMBERS {
            return None;
        }
    }
    if members.is_empty() {
        return None;
    }
    if bytes.len() <= TRACESTATE_MAX_LEN {
        return match joined {
            None => Some(first.clone()),
            Some(buf) => HeaderValue::from_bytes(&buf).ok(),
        };
    }
    let len = |ms: &[&[u8]]| ms.iter().map(|m| m.len()).sum::<usize>() + ms.len().saturating_sub(1);
    while len(&members) > TRACESTATE_MAX_LEN {
        match members
            .iter()
            .rposition(|m| m.len() > TRACESTATE_LONG_MEMBER)
        {
            Some(i) => {
                members.remove(i);
            }
            None => {
                members.pop();
            }
        }
    }
    if members.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&members.join(&b","[..])).ok()
}

/// The trace-related headers of a request, found in one pass over its headers.
///
/// Reading a request's trace context, its sampling inputs and whether it speaks B3 takes a
/// dozen header names; looking each up hashes the name and probes the map, which on a
/// request with a handful of headers costs more than walking them once and comparing
/// names. The scan keeps the first value of each header (what [`HeaderMap::get`] gives),
/// and counts repeated `traceparent` (invalid) and `tracestate` (one list) lines.
#[derive(Debug, Clone, Copy)]
pub struct TraceHeaders<'a> {
    headers: &'a HeaderMap,
    traceparent: Option<&'a HeaderValue>,
    traceparents: u8,
    tracestate: Option<&'a HeaderValue>,
    tracestates: u8,
    b3: Option<&'a HeaderValue>,
    x_b3_traceid: Option<&'a HeaderValue>,
    x_b3_spanid: Option<&'a HeaderValue>,
    x_b3_parentspanid: Option<&'a HeaderValue>,
    x_b3_sampled: Option<&'a HeaderValue>,
    x_b3_flags: Option<&'a HeaderValue>,
    request_id: Option<&'a HeaderValue>,
    request_ids: u8,
    force_trace: bool,
    client_trace_id: bool,
}

/// Keeps the first value seen.
fn first<'a>(slot: &mut Option<&'a HeaderValue>, value: &'a HeaderValue) {
    if slot.is_none() {
        *slot = Some(value);
    }
}

impl<'a> TraceHeaders<'a> {
    /// Walks `headers` once.
    pub fn scan(headers: &'a HeaderMap) -> Self {
        let mut t = TraceHeaders {
            headers,
            traceparent: None,
            traceparents: 0,
            tracestate: None,
            tracestates: 0,
            b3: None,
            x_b3_traceid: None,
            x_b3_spanid: None,
            x_b3_parentspanid: None,
            x_b3_sampled: None,
            x_b3_flags: None,
            request_id: None,
            request_ids: 0,
            force_trace: false,
            client_trace_id: false,
        };
        for (name, value) in headers {
            let n = name.as_str().as_bytes();
            // Every name looked for starts with `t`, `b` or `x-`: most headers stop here.
            match n.first() {
                Some(b't') => match n {
                    b"traceparent" => {
                        first(&mut t.traceparent, value);
                        t.traceparents = t.traceparents.saturating_add(1);
                    }
                    b"tracestate" => {
                        first(&mut t.tracestate, value);
                        t.tracestates = t.tracestates.saturating_add(1);
                    }
                    _ => {}
                },
                Some(b'b') if n == b"b3" => first(&mut t.b3, value),
                Some(b'x') if n.get(1) == Some(&b'-') => match &n[2..] {
                    b"request-id" => {
                        first(&mut t.request_id, value);
                        t.request_ids = t.request_ids.saturating_add(1);
                    }
                    b"b3-traceid" => first(&mut t.x_b3_traceid, value),
                    b"b3-spanid" => first(&mut t.x_b3_spanid, value),
                    b"b3-parentspanid" => first(&mut t.x_b3_parentspanid, value),
                    b"b3-sampled" => first(&mut t.x_b3_sampled, value),
                    b"b3-flags" => first(&mut t.x_b3_flags, value),
                    b"envoy-force-trace" => t.force_trace = true,
                    b"client-trace-id" => t.client_trace_id = true,
                    _ => {}
                },
                _ => {}
            }
        }
        t
    }

    /// The trace context, in [`extract`]'s precedence.
    pub fn extract(&self) -> Option<Extracted> {
        self.trace_context()
            .or_else(|| self.b3_single())
            .or_else(|| self.b3_multi())
    }

    /// The `x-request-id` (its first value).
    pub fn request_id(&self) -> Option<&'a HeaderValue> {
        self.request_id
    }

    /// Whether the request carries a B3 context or decision: the single `b3` header or
    /// `x-b3-traceid` (the headers a hop that speaks B3 always writes).
    pub fn has_b3(&self) -> bool {
        self.b3.is_some() || self.x_b3_traceid.is_some()
    }

    /// Whether any `x-b3-*` or `b3` header is present.
    pub fn has_any_b3(&self) -> bool {
        self.b3.is_some()
            || self.x_b3_traceid.is_some()
            || self.x_b3_spanid.is_some()
            || self.x_b3_parentspanid.is_some()
            || self.x_b3_sampled.is_some()
            || self.x_b3_flags.is_some()
    }

    /// The headers found, for [`inject_over`].
    pub fn carried(&self) -> Carried {
        Carried {
            traceparent: self.traceparents.min(2),
            tracestates: self.tracestates.min(2),
            request_ids: self.request_ids.min(2),
            b3: self.has_any_b3(),
        }
    }

    /// The sampling input of the request, with the context extracted from it.
    pub fn sampling_input(&self, incoming: Option<&Extracted>) -> SamplingInput<'a> {
        SamplingInput {
            incoming: incoming.map_or(Sampling::Deferred, |e| e.sampling),
            request_id: self.request_id.map(HeaderValue::as_bytes),
            force_trace: self.force_trace,
            client_trace_id: self.client_trace_id,
        }
    }

    /// The W3C context: a valid, unique `traceparent` and its `tracestate`.
    fn trace_context(&self) -> Option<Extracted> {
        if self.traceparents != 1 {
            return None;
        }
        let tp = parse_traceparent(self.traceparent?.as_bytes()).ok()?;
        let tracestate = match self.tracestates {
            0 => None,
            1 => self.tracestate.and_then(|v| parse_tracestate([v])),
            _ => parse_tracestate(self.headers.get_all(&TRACESTATE)),
        };
        Some(Extracted {
            format: Format::TraceContext,
            remote: Some(RemoteSpan {
                trace_id: tp.trace_id,
                span_id: tp.parent_id,
                parent_span_id: None,
            }),
            sampling: if tp.sampled() {
                Sampling::Accept
            } else {
                Sampling::Deny
            },
            tracestate,
        })
    }

    /// The context of a valid single `b3` header.
    fn b3_single(&self) -> Option<Extracted> {
        let b3 = parse_b3(self.b3?.as_bytes()).ok()?;
        Some(Extracted {
            format: Format::B3Single,
            remote: b3.remote,
            sampling: b3.sampling,
            tracestate: None,
        })
    }

    /// The context of the `x-b3-*` headers (see [`extract_b3_multi`]).
    fn b3_multi(&self) -> Option<Extracted> {
        fn value(v: Option<&HeaderValue>) -> Option<&[u8]> {
            v.map(|v| trim_ows(v.as_bytes()))
        }
        let sampling = if value(self.x_b3_flags) == Some(&b"1"[..]) {
            Sampling::Debug
        } else {
            match value(self.x_b3_sampled) {
                Some(b"1" | b"true") => Sampling::Accept,
                Some(b"0" | b"false") => Sampling::Deny,
                _ => Sampling::Deferred,
            }
        };
        let remote = (|| {
            let trace_id = TraceId::from_b3_hex(value(self.x_b3_traceid)?).ok()?;
            let span_id = SpanId::from_hex(value(self.x_b3_spanid)?).ok()?;
            let parent_span_id = match value(self.x_b3_parentspanid) {
                None | Some([]) => None,
                Some(p) => b3_parent(p).ok()?,
            };
            Some(RemoteSpan {
                trace_id,
                span_id,
                parent_span_id,
            })
        })();
        if remote.is_none() && sampling == Sampling::Deferred {
            return None;
        }
        Some(Extracted {
            format: Format::B3Multi,
            remote,
            sampling,
            tracestate: None,
        })
    }
}

/// The W3C context of `headers`: a valid, unique `traceparent` and its `tracestate`.
pub fn extract_trace_context(headers: &HeaderMap) -> Option<Extracted> {
    TraceHeaders::scan(headers).trace_context()
}

/// A parsed single `b3` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct B3 {
    /// The caller's span; `None` for the sampling-only forms `0`, `1`, `d`.
    pub remote: Option<RemoteSpan>,
    /// The sampling state.
    pub sampling: Sampling,
}

/// A B3 sampling state character.
fn b3_sampling(b: u8) -> Option<Sampling> {
    match b {
        b'0' => Some(Sampling::Deny),
        b'1' => Some(Sampling::Accept),
        b'd' => Some(Sampling::Debug),
        _ => None,
    }
}

/// A B3 parent span id: 16 lowercase hex digits; all zeros means none.
fn b3_parent(hex: &[u8]) -> Result<Option<SpanId>, IdError> {
    match SpanId::from_hex(hex) {
        Ok(id) => Ok(Some(id)),
        Err(IdError::Zero) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Parses a single `b3` header: `{TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]`,
/// or the sampling state alone (`0`, `1`, `d`). The trace id is 32 or 16 lowercase hex
/// digits (a 64-bit id is left-padded), span ids 16; the state is `0`, `1` or `d` (debug).
pub fn parse_b3(value: &[u8]) -> Result<B3, InvalidContext> {
    let v = trim_ows(value);
    match v {
        [] => return Err(InvalidContext::Empty),
        [flag] => {
            return b3_sampling(*flag)
                .map(|sampling| B3 {
                    remote: None,
                    sampling,
                })
                .ok_or(InvalidContext::Sampling);
        }
        _ => {}
    }
    let mut fields = v.split(|&b| b == b'-');
    let trace = fields.next().unwrap_or_default();
    let trace_id = TraceId::from_b3_hex(trace).map_err(InvalidContext::TraceId)?;
    let span = fields.next().ok_or(InvalidContext::Truncated)?;
    let span_id = SpanId::from_hex(span).map_err(InvalidContext::SpanId)?;
    let sampling = match fields.next() {
        None => Sampling::Deferred,
        Some([flag]) => b3_sampling(*flag).ok_or(InvalidContext::Sampling)?,
        Some(_) => return Err(InvalidContext::Sampling),
    };
    let parent_span_id = match fields.next() {
        None => None,
        Some(p) => b3_parent(p).map_err(InvalidContext::ParentSpanId)?,
    };
    if fields.next().is_some() {
        return Err(InvalidContext::TrailingData);
    }
    Ok(B3 {
        remote: Some(RemoteSpan {
            trace_id,
            span_id,
            parent_span_id,
        }),
        sampling,
    })
}

/// The context of a valid single `b3` header (the first, when repeated).
pub fn extract_b3_single(headers: &HeaderMap) -> Option<Extracted> {
    TraceHeaders::scan(headers).b3_single()
}

/// The context of the `x-b3-*` headers (the first value of each): the ids when
/// `x-b3-traceid` and `x-b3-spanid` (and `x-b3-parentspanid`, when present) parse; the
/// decision from `x-b3-flags: 1` (debug), else `x-b3-sampled` (`1`/`true`, `0`/`false`; any
/// other value decides nothing). `None` when they carry neither ids nor a decision.
pub fn extract_b3_multi(headers: &HeaderMap) -> Option<Extracted> {
    TraceHeaders::scan(headers).b3_multi()
}

/// The trace context of a request's headers, in this precedence: a valid W3C `traceparent`
/// (with its `tracestate`), else a valid single `b3` header, else the `x-b3-*` headers.
/// Invalid headers count as absent; a sampling-only header (`b3: 0`, a lone `x-b3-sampled`)
/// still carries its decision. `None` when the headers say nothing.
///
/// W3C comes first because the mesh exports OpenTelemetry, whose Envoy tracer reads only
/// W3C; B3 is read as Envoy's Zipkin tracer reads it (the single header before the multi
/// headers), so that B3-only clients still join their traces.
pub fn extract(headers: &HeaderMap) -> Option<Extracted> {
    TraceHeaders::scan(headers).extract()
}

// ---------------------------------------------------------------------------------------
// Injection
// ---------------------------------------------------------------------------------------

/// Sets `name` to the single value `bytes` (always valid: hex digits and `-`).
fn put(headers: &mut HeaderMap, name: &HeaderName, bytes: &[u8]) {
    if let Ok(v) = HeaderValue::from_bytes(bytes) {
        headers.insert(name.clone(), v);
    }
}

/// A header value the mesh generates (hex digits and `-`), in one reference-counted
/// allocation: `HeaderValue::from_bytes` copies into a buffer that its first clone (the
/// retry layer's copy of the request head, for one) moves into a second allocation.
fn generated<const N: usize>(bytes: [u8; N]) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(bytes)).ok()
}

/// Sets `name` to the single `value`, where the request carries `carried` values of it.
///
/// With exactly one value there, it is overwritten in place: `HeaderMap::insert` first
/// reserves room for a new entry, and regrows (rehashing every header) a map that is
/// full — as hyper sizes the map of a request it parses — even to replace a value.
pub fn replace_header(headers: &mut HeaderMap, name: &HeaderName, value: HeaderValue, carried: u8) {
    if carried == 1
        && let Some(slot) = headers.get_mut(name)
    {
        *slot = value;
        return;
    }
    headers.insert(name.clone(), value);
}

/// Writes `span`'s context for the next hop in every format, replacing any previous value
/// of these headers: `traceparent` (version `00`), `tracestate` (removed when the span has
/// none), `x-b3-traceid` (32 digits), `x-b3-spanid`, `x-b3-parentspanid` (removed without a
/// `parent`), `x-b3-sampled` (`1`/`0`; for a debug span `x-b3-flags: 1` instead, as B3
/// says), and the single `b3` header (`{trace}-{span}-{1|0|d}[-{parent}]`).
pub fn inject(span: &SpanContext, parent: Option<SpanId>, headers: &mut HeaderMap) {
    inject_formats(span, parent, true, headers);
}

/// Writes `traceparent` and `tracestate` over what the request `carried`; without a
/// `tracestate` of its own, the span removes the request's only when it may carry one.
fn write_w3c(span: &SpanContext, carried: Carried, headers: &mut HeaderMap) {
    let sampled = span.sampled || span.debug;
    let mut tp = [0u8; 55];
    tp[..3].copy_from_slice(b"00-");
    tp[3..35].copy_from_slice(&span.trace_id.hex());
    tp[35] = b'-';
    tp[36..52].copy_from_slice(&span.span_id.hex());
    tp[52] = b'-';
    tp[53..].copy_from_slice(if sampled { b"01" } else { b"00" });
    if let Some(v) = generated(tp) {
        replace_header(headers, &TRACEPARENT, v, carried.traceparent);
    }
    match &span.tracestate {
        Some(state) => {
            replace_header(headers, &TRACESTATE, state.clone(), carried.tracestates);
        }
        None if carried.tracestates > 0 => {
            headers.remove(&TRACESTATE);
        }
        None => {}
    }
}

/// The trace headers a request carried, as a [`TraceHeaders`] scan found them: writing a
/// context over them then removes only what is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    /// How many `traceparent` values (at most 2: more counts as 2).
    pub traceparent: u8,
    /// How many `tracestate` values (likewise).
    pub tracestates: u8,
    /// How many `x-request-id` values (likewise).
    pub request_ids: u8,
    /// Any B3 header (single or multi).
    pub b3: bool,
}

impl Carried {
    /// Nothing known: every header may be there, more than once.
    pub const UNKNOWN: Carried = Carried {
        traceparent: 2,
        tracestates: 2,
        request_ids: 2,
        b3: true,
    };
}

/// Writes `span`'s context as [`inject`] does, in W3C always and in B3 (single and multi)
/// only when `b3` — the hop's context arrived in B3, so that B3-only receivers keep it —
/// removing any stale B3 headers otherwise, so that a request never carries two
/// conflicting contexts.
pub fn inject_formats(
    span: &SpanContext,
    parent: Option<SpanId>,
    b3: bool,
    headers: &mut HeaderMap,
) {
    inject_over(span, parent, b3, Carried::UNKNOWN, headers);
}

/// [`inject_formats`] over a request whose trace headers are known to be `carried`: the
/// headers it does not carry need no removing (each removal is a hashed lookup).
pub fn inject_over(
    span: &SpanContext,
    parent: Option<SpanId>,
    b3: bool,
    carried: Carried,
    headers: &mut HeaderMap,
) {
    write_w3c(span, carried, headers);
    if !b3 {
        if carried.b3 {
            for name in [
                &X_B3_TRACEID,
                &X_B3_SPANID,
                &X_B3_PARENTSPANID,
                &X_B3_SAMPLED,
                &X_B3_FLAGS,
                &B3,
            ] {
                headers.remove(name);
            }
        }
        return;
    }
    let trace = span.trace_id.hex();
    let id = span.span_id.hex();
    let sampled = span.sampled || span.debug;
    let debug = span.debug;
    put(headers, &X_B3_TRACEID, &trace);
    put(headers, &X_B3_SPANID, &id);
    match parent {
        Some(p) => put(headers, &X_B3_PARENTSPANID, &p.hex()),
        None => {
            headers.remove(&X_B3_PARENTSPANID);
        }
    }
    if debug {
        put(headers, &X_B3_FLAGS, b"1");
        headers.remove(&X_B3_SAMPLED);
    } else {
        put(headers, &X_B3_SAMPLED, if sampled { b"1" } else { b"0" });
        headers.remove(&X_B3_FLAGS);
    }

    let mut b3 = [0u8; 32 + 1 + 16 + 2 + 17];
    b3[..32].copy_from_slice(&trace);
    b3[32] = b'-';
    b3[33..49].copy_from_slice(&id);
    b3[49] = b'-';
    b3[50] = match (debug, sampled) {
        (true, _) => b'd',
        (false, true) => b'1',
        (false, false) => b'0',
    };
    let len = match parent {
        Some(p) => {
            b3[51] = b'-';
            b3[52..].copy_from_slice(&p.hex());
            b3.len()
        }
        None => 51,
    };
    put(headers, &B3, &b3[..len]);
}

// ---------------------------------------------------------------------------------------
// Sampling
// ---------------------------------------------------------------------------------------

/// Istio's default trace sampling: 1 % of requests (`PILOT_TRACE_SAMPLING`, the fallback of
/// MeshConfig's `defaultConfig.tracing.sampling` and of the Telemetry API's
/// `randomSamplingPercentage`).
pub const DEFAULT_RANDOM_SAMPLING_PERCENTAGE: f64 = 1.0;

/// Envoy's sampling denominator: percentages are counted in hundredths.
const TEN_THOUSAND: u64 = 10_000;

/// Why a request is traced, as Envoy's UUID request id records it (`Tracing::Reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceReason {
    /// Not traced on the request id's account.
    NotTraceable,
    /// Randomly sampled (request id nibble `9`).
    Sampling,
    /// Forced by `x-envoy-force-trace` (nibble `a`).
    ServiceForced,
    /// Forced by `x-client-trace-id` (nibble `b`).
    ClientForced,
}

impl TraceReason {
    /// Whether this reason traces the request.
    pub const fn traced(self) -> bool {
        !matches!(self, TraceReason::NotTraceable)
    }

    /// The request id character at position 14 that records this reason (`4` for none,
    /// as in a fresh UUID v4).
    const fn nibble(self) -> u8 {
        match self {
            TraceReason::NotTraceable => b'4',
            TraceReason::Sampling => b'9',
            TraceReason::ServiceForced => b'a',
            TraceReason::ClientForced => b'b',
        }
    }
}

/// Where Envoy's UUID request id keeps the trace reason: the version nibble of a UUID v4.
const REQUEST_ID_TRACE_POSITION: usize = 14;
/// The length of a textual UUID.
const UUID_LEN: usize = 36;

/// The trace reason a request id records (Envoy: only in a 36-character id, at position 14).
pub fn request_id_reason(request_id: &[u8]) -> TraceReason {
    if request_id.len() != UUID_LEN {
        return TraceReason::NotTraceable;
    }
    match request_id[REQUEST_ID_TRACE_POSITION] {
        b'9' => TraceReason::Sampling,
        b'a' => TraceReason::ServiceForced,
        b'b' => TraceReason::ClientForced,
        _ => TraceReason::NotTraceable,
    }
}

/// The number Envoy samples a request id by: its first 8 characters read as hexadecimal
/// (either case). `None` when they are not.
pub fn request_id_integer(request_id: &[u8]) -> Option<u64> {
    request_id.get(..8)?.iter().try_fold(0u64, |v, &b| {
        char::from(b).to_digit(16).map(|d| (v << 4) | u64::from(d))
    })
}

/// What a [`Sampler`] decides from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SamplingInput<'a> {
    /// The decision the request's trace headers carry ([`Extracted::sampling`]).
    pub incoming: Sampling,
    /// The `x-request-id` the request will be forwarded with.
    pub request_id: Option<&'a [u8]>,
    /// `x-envoy-force-trace` is present.
    pub force_trace: bool,
    /// `x-client-trace-id` is present.
    pub client_trace_id: bool,
}

impl<'a> SamplingInput<'a> {
    /// The input of a request with these headers and this extracted context.
    pub fn from_headers(headers: &'a HeaderMap, incoming: Option<&Extracted>) -> Self {
        TraceHeaders::scan(headers).sampling_input(incoming)
    }
}

/// Whether a request is sampled, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplingDecision {
    /// Whether this hop's spans are sampled (recorded and exported).
    pub sampled: bool,
    /// Whether sampling is forced by B3 debug, to be propagated as such.
    pub debug: bool,
    /// The reason the request id gives or now records.
    pub reason: TraceReason,
    /// Whether the reason is new and is to be packed into the request id.
    pack: bool,
}

impl SamplingDecision {
    /// The request id to forward when this decision changed the reason it records: `id`
    /// with the reason packed in at position 14 (Envoy's `pack_trace_reason`), so that the
    /// next hop reads the same decision. `None` when `id` stays as it is.
    pub fn request_id(&self, id: &[u8]) -> Option<HeaderValue> {
        if !self.pack
            || id.len() != UUID_LEN
            || id[REQUEST_ID_TRACE_POSITION] == self.reason.nibble()
        {
            return None;
        }
        let mut marked = [0u8; UUID_LEN];
        marked.copy_from_slice(id);
        marked[REQUEST_ID_TRACE_POSITION] = self.reason.nibble();
        generated(marked)
    }
}

/// Envoy's trace sampling as Istio configures it: client sampling and overall sampling at
/// 100 %, random sampling at the configured percentage.
///
/// The rule ([`decide`](Sampler::decide)) is Envoy's
/// `ConnectionManagerUtility::mutateTracingRequestHeader` with the UUID request id extension,
/// then the tracer's respect for an incoming decision:
///
/// 1. the reason comes from the `x-request-id`: none when it is missing or its first 8
///    characters are not hexadecimal; the reason it already records (`9`, `a`, `b` at position
///    14 of a 36-character id) otherwise; else `x-client-trace-id` forces, then
///    `x-envoy-force-trace` forces, then the request is randomly sampled when the id's first 8
///    hex digits modulo 10 000 are below the percentage in hundredths
///    (`random_sampling_percentage × 100`, truncated — Envoy's `convertPercent`);
/// 2. a decision carried by the trace headers (W3C flags, B3 state) is honoured; otherwise
///    the reason decides.
///
/// With `useRequestIdForTraceSampling: false` Envoy skips step 1 and counts every request as
/// sampled ("the decision is the tracer's"), so only an incoming decision can stop it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampler {
    /// Requests sampled per 10 000.
    numerator: u32,
    /// Whether the request id decides (Istio's `useRequestIdForTraceSampling`).
    use_request_id: bool,
}

impl Default for Sampler {
    /// Istio's default: 1 %, decided on the request id.
    fn default() -> Self {
        Sampler::new(DEFAULT_RANDOM_SAMPLING_PERCENTAGE)
    }
}

impl Sampler {
    /// A sampler of `random_sampling_percentage` % of requests (0–100, hundredths counted;
    /// values outside are clamped, NaN is 0).
    pub fn new(random_sampling_percentage: f64) -> Self {
        let p = if random_sampling_percentage.is_nan() {
            0.0
        } else {
            random_sampling_percentage.clamp(0.0, 100.0)
        };
        // Envoy: `max_value * (percent / 100.0)`, truncated to an integer.
        let numerator = (TEN_THOUSAND as f64 * (p / 100.0)) as u32;
        Sampler {
            numerator,
            use_request_id: true,
        }
    }

    /// Whether the request id decides (`true` by default; Istio's
    /// `useRequestIdForTraceSampling`).
    pub fn use_request_id(self, use_request_id: bool) -> Self {
        Sampler {
            use_request_id,
            ..self
        }
    }

    /// Requests sampled per 10 000.
    pub fn per_ten_thousand(&self) -> u32 {
        self.numerator
    }

    /// Decides whether a request is sampled (the rule is in the type's documentation).
    pub fn decide(&self, input: &SamplingInput<'_>) -> SamplingDecision {
        let (reason, pack) = self.reason(input);
        SamplingDecision {
            sampled: input.incoming.sampled().unwrap_or(reason.traced()),
            debug: input.incoming == Sampling::Debug,
            reason,
            pack,
        }
    }

    /// The reason the request id gives or gets, and whether it is new.
    fn reason(&self, input: &SamplingInput<'_>) -> (TraceReason, bool) {
        if !self.use_request_id {
            return (TraceReason::Sampling, false);
        }
        let Some(id) = input.request_id else {
            return (TraceReason::NotTraceable, false);
        };
        let Some(n) = request_id_integer(id) else {
            return (TraceReason::NotTraceable, false);
        };
        let recorded = request_id_reason(id);
        if recorded.traced() {
            return (recorded, false);
        }
        if input.client_trace_id {
            (TraceReason::ClientForced, true)
        } else if input.force_trace {
            (TraceReason::ServiceForced, true)
        } else if n % TEN_THOUSAND < u64::from(self.numerator) {
            (TraceReason::Sampling, true)
        } else {
            (TraceReason::NotTraceable, false)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Id generation
// ---------------------------------------------------------------------------------------

/// A generator of trace ids, span ids and request ids: xoshiro256++ (fast, not
/// cryptographic — ids need to be unique, not secret), seeded from the operating system
/// ([`from_os`](IdGenerator::from_os)) or from a number for reproducible tests
/// ([`from_seed`](IdGenerator::from_seed)). [`random_trace_id`], [`random_span_id`] and
/// [`random_request_id`] use one per thread.
#[derive(Debug, Clone)]
pub struct IdGenerator {
    rng: Xoshiro256PlusPlus,
}

impl IdGenerator {
    /// A generator seeded from the operating system's randomness (should it fail, from the
    /// process's hash seeds).
    pub fn from_os() -> Self {
        let rng = Xoshiro256PlusPlus::try_from_rng(&mut SysRng).unwrap_or_else(|_| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(std::process::id() as usize);
            Xoshiro256PlusPlus::seed_from_u64(h.finish())
        });
        IdGenerator { rng }
    }

    /// A deterministic generator: the same seed gives the same ids.
    pub fn from_seed(seed: u64) -> Self {
        IdGenerator {
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
        }
    }

    /// A random, non-zero trace id.
    pub fn trace_id(&mut self) -> TraceId {
        let v = (u128::from(self.rng.next_u64()) << 64) | u128::from(self.rng.next_u64());
        TraceId(NonZeroU128::new(v).unwrap_or(NonZeroU128::MIN))
    }

    /// A random, non-zero span id.
    pub fn span_id(&mut self) -> SpanId {
        SpanId(NonZeroU64::new(self.rng.next_u64()).unwrap_or(NonZeroU64::MIN))
    }

    /// A random UUID v4 in lowercase text, as Envoy generates `x-request-id` (its character
    /// 14 is `4`: no trace reason recorded yet).
    pub fn request_id(&mut self) -> HeaderValue {
        let mut v = (u128::from(self.rng.next_u64()) << 64) | u128::from(self.rng.next_u64());
        v = (v & !(0xf << 76)) | (0x4 << 76); // version 4
        v = (v & !(0x3 << 62)) | (0x2 << 62); // variant 10
        let mut hex = [0u8; 32];
        write_hex(&mut hex, v);
        let mut text = [b'-'; UUID_LEN];
        text[..8].copy_from_slice(&hex[..8]);
        text[9..13].copy_from_slice(&hex[8..12]);
        text[14..18].copy_from_slice(&hex[12..16]);
        text[19..23].copy_from_slice(&hex[16..20]);
        text[24..].copy_from_slice(&hex[20..]);
        // Hex digits and dashes are valid header bytes: the fallback is unreachable.
        generated(text)
            .unwrap_or_else(|| HeaderValue::from_static("00000000-0000-4000-8000-000000000000"))
    }
}

thread_local! {
    static THREAD_IDS: RefCell<Option<IdGenerator>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's generator (seeded from the OS on first use); with a fresh
/// one should the thread's be unavailable (during thread teardown).
pub fn with_thread_ids<R>(f: impl Fn(&mut IdGenerator) -> R) -> R {
    THREAD_IDS
        .try_with(|cell| {
            cell.try_borrow_mut()
                .ok()
                .map(|mut slot| f(slot.get_or_insert_with(IdGenerator::from_os)))
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| f(&mut IdGenerator::from_os()))
}

/// A random trace id from this thread's generator.
pub fn random_trace_id() -> TraceId {
    with_thread_ids(IdGenerator::trace_id)
}

/// A random span id from this thread's generator.
pub fn random_span_id() -> SpanId {
    with_thread_ids(IdGenerator::span_id)
}

/// A random `x-request-id` (UUID v4) from this thread's generator.
pub fn random_request_id() -> HeaderValue {
    with_thread_ids(IdGenerator::request_id)
}

// ---------------------------------------------------------------------------------------
// Span names
// ---------------------------------------------------------------------------------------

/// Envoy's name of an inbound span without a route operation.
pub const INGRESS_OPERATION: &str = "ingress";
/// Envoy's name of an outbound span without a route operation (followed by the host).
pub const EGRESS_OPERATION: &str = "egress";

/// The side of a request a span is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The server side (Envoy's ingress: an inbound listener).
    Inbound,
    /// The client side (Envoy's egress: outbound listeners and Istio's gateways).
    Outbound,
}

/// The path match of a route, as its operation names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutePath<'a> {
    /// `uri: {prefix: …}`: named `{prefix}*`.
    Prefix(&'a str),
    /// `uri: {exact: …}`: named by the path.
    Exact(&'a str),
    /// `uri: {regex: …}`: named by the regex.
    Regex(&'a str),
}

/// The operation of a route without a VirtualService: `{host}:{port}/*` (Istio's
/// `telemetry.TraceOperation`, the host and port joined as `net.JoinHostPort` does, with
/// brackets around an IPv6 host). Istio sets it on the default outbound route of a service
/// port (the service's host and port) and on the inbound route of a workload (the host of
/// the service it serves, the service port).
pub fn default_route_operation(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}/*")
    } else {
        format!("{host}:{port}/*")
    }
}

/// The operation of a VirtualService route (Istio's `route.GetRouteOperation`, set as the
/// route's Envoy decorator): the path is `/*` without a uri match, `{prefix}*`, the exact
/// path, or the regex; it follows `{host}:{port}` of the destination when the route sends to
/// a single destination (the host and port of the cluster it resolved), and
/// `{virtual service name}:{listener port}` otherwise (weighted destinations, redirects,
/// direct responses). E.g. `reviews.default.svc.cluster.local:9080/*`,
/// `productpage.default.svc.cluster.local:9080/productpage`, `reviews:9080/*`.
pub fn route_operation(
    path: Option<RoutePath<'_>>,
    single_destination: Option<(&str, u16)>,
    virtual_service: &str,
    listen_port: u16,
) -> String {
    let path: Cow<'_, str> = match path {
        None => Cow::Borrowed("/*"),
        Some(RoutePath::Prefix(p)) => Cow::Owned(format!("{p}*")),
        Some(RoutePath::Exact(p) | RoutePath::Regex(p)) => Cow::Borrowed(p),
    };
    match single_destination {
        Some((host, port)) => format!("{host}:{port}{path}"),
        None => format!("{virtual_service}:{listen_port}{path}"),
    }
}

/// The name of a request's span, as Envoy's HTTP connection manager sets it.
///
/// - Outbound (a sidecar's client side, and Istio's gateways, whose listeners are outbound):
///   the matched route's operation, else `egress {host}` (the request's authority).
/// - Inbound: the caller's operation when it sent a non-empty
///   `x-envoy-decorator-operation` (`propagated`: Envoy sends its route's operation so that
///   both sides of a call share one name), else the route's operation, else `ingress`.
pub fn span_name<'a>(
    direction: Direction,
    operation: Option<&'a str>,
    propagated: Option<&'a HeaderValue>,
    host: &str,
) -> Cow<'a, str> {
    match direction {
        Direction::Outbound => match operation {
            Some(op) => Cow::Borrowed(op),
            None => Cow::Owned(format!("{EGRESS_OPERATION} {host}")),
        },
        Direction::Inbound => propagated
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .or(operation)
            .map_or(Cow::Borrowed(INGRESS_OPERATION), Cow::Borrowed),
    }
}

/// The name of the upstream span Envoy's router adds when asked to spawn one (Istio does for
/// gateways, `PILOT_SPAWN_UPSTREAM_SPAN_FOR_GATEWAY`): `router {cluster} egress`, the cluster
/// as Istio names it (`outbound|9080||reviews.default.svc.cluster.local`).
pub fn upstream_span_name(cluster: &str) -> String {
    format!("router {cluster} egress")
}

// ---------------------------------------------------------------------------------------
// Attributes
// ---------------------------------------------------------------------------------------

/// The attribute (tag) names Envoy and Istio put on spans.
pub mod tag {
    /// `proxy` on every span Envoy makes ([`COMPONENT_PROXY`]).
    pub const COMPONENT: &str = "component";
    /// The value of [`COMPONENT`].
    pub const COMPONENT_PROXY: &str = "proxy";
    /// The request's URL (`{scheme}://{authority}{path}`, path truncated to 256 characters).
    pub const HTTP_URL: &str = "http.url";
    /// The request's method.
    pub const HTTP_METHOD: &str = "http.method";
    /// The response's status code (`0` without a response).
    pub const HTTP_STATUS_CODE: &str = "http.status_code";
    /// The request's protocol (`HTTP/1.1`, `HTTP/2`).
    pub const HTTP_PROTOCOL: &str = "http.protocol";
    /// The caller's `x-envoy-downstream-service-cluster`, or `-`.
    pub const DOWNSTREAM_CLUSTER: &str = "downstream_cluster";
    /// The request's `user-agent`, or `-`.
    pub const USER_AGENT: &str = "user_agent";
    /// The address of the peer: the caller on a server span, the endpoint on an upstream span.
    pub const PEER_ADDRESS: &str = "peer.address";
    /// The request's `x-request-id`.
    pub const GUID_X_REQUEST_ID: &str = "guid:x-request-id";
    /// The request's `x-client-trace-id`, when present.
    pub const GUID_X_CLIENT_TRACE_ID: &str = "guid:x-client-trace-id";
    /// Bytes received from the caller.
    pub const REQUEST_SIZE: &str = "request_size";
    /// Bytes sent to the caller.
    pub const RESPONSE_SIZE: &str = "response_size";
    /// Envoy's response flags (`-` when none: `UH`, `UF`, `URX`, …).
    pub const RESPONSE_FLAGS: &str = "response_flags";
    /// The upstream cluster's name (`outbound|9080|v1|reviews.default.svc.cluster.local`).
    pub const UPSTREAM_CLUSTER: &str = "upstream_cluster";
    /// The upstream cluster's observability name.
    pub const UPSTREAM_CLUSTER_NAME: &str = "upstream_cluster.name";
    /// The address of the endpoint the request went to.
    pub const UPSTREAM_ADDRESS: &str = "upstream_address";
    /// The proxy's node id.
    pub const NODE_ID: &str = "node_id";
    /// The proxy's zone.
    pub const ZONE: &str = "zone";
    /// `true` ([`ERROR_TRUE`]) on a 5xx response or when there was none.
    pub const ERROR: &str = "error";
    /// The value of [`ERROR`].
    pub const ERROR_TRUE: &str = "true";
    /// The number of retries of an upstream span.
    pub const RETRY_COUNT: &str = "retry.count";
    /// gRPC requests: the path.
    pub const GRPC_PATH: &str = "grpc.path";
    /// gRPC requests: the authority.
    pub const GRPC_AUTHORITY: &str = "grpc.authority";
    /// gRPC requests: the content type.
    pub const GRPC_CONTENT_TYPE: &str = "grpc.content_type";
    /// gRPC requests: the `grpc-timeout`.
    pub const GRPC_TIMEOUT: &str = "grpc.timeout";
    /// gRPC responses: the `grpc-status`.
    pub const GRPC_STATUS_CODE: &str = "grpc.status_code";
    /// gRPC responses: the `grpc-message`.
    pub const GRPC_MESSAGE: &str = "grpc.message";
    /// Istio: the workload's canonical service (`service.istio.io/canonical-name`, else
    /// `unknown`).
    pub const ISTIO_CANONICAL_SERVICE: &str = "istio.canonical_service";
    /// Istio: the workload's canonical revision (`service.istio.io/canonical-revision`, else
    /// `latest`).
    pub const ISTIO_CANONICAL_REVISION: &str = "istio.canonical_revision";
    /// Istio: the workload's namespace (else `default`).
    pub const ISTIO_NAMESPACE: &str = "istio.namespace";
    /// Istio: the mesh id (else `unknown`).
    pub const ISTIO_MESH_ID: &str = "istio.mesh_id";
    /// Istio: the cluster id (else `unknown`).
    pub const ISTIO_CLUSTER_ID: &str = "istio.cluster_id";
}

#[cfg(test)]
mod tests;
