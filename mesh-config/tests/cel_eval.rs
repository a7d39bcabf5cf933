//! CEL access log filters evaluated as Envoy evaluates them: a table of expressions over a
//! sample of Envoy's request attributes with the expected match, covering every operator,
//! literal form and function of `mesh_config::cel`, Envoy's rule that an evaluation error
//! or a non-boolean result does not match, the compile-time errors, and properties of
//! generated expressions (no panic, `&&`/`||` commutative with errors, De Morgan).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

use mesh_config::cel::{AttributeMap, Attributes, Filter, Options, Value};
use proptest::prelude::*;

/// A failed request: 503 from an upstream reset, with debug headers.
fn failed() -> AttributeMap {
    AttributeMap::new()
        .with("request.path", "/api/v1/users?id=7")
        .with("request.url_path", "/api/v1/users")
        .with("request.host", "reviews.default.svc.cluster.local:9080")
        .with("request.scheme", "http")
        .with("request.method", "GET")
        .with("request.referer", "https://example.com/")
        .with("request.useragent", "curl/8.5.0")
        // 2024-02-29T12:30:15Z, a Thursday.
        .with(
            "request.time",
            UNIX_EPOCH + Duration::from_secs(1_709_209_815),
        )
        .with("request.id", "7f3c2a10-8e1b-4c55-9d2e-3f9a1b2c4d5e")
        .with("request.protocol", "HTTP/1.1")
        .with("request.duration", Duration::from_millis(1500))
        .with("request.size", 128i64)
        .with("request.total_size", 512i64)
        .with("response.code", 503i64)
        .with(
            "response.code_details",
            "upstream_reset_before_response_started{connection_failure}",
        )
        // Envoy's response flags are an int: UF (upstream connection failure) is 0x20.
        .with("response.flags", 0x20i64)
        .with("response.grpc_status", 14i64)
        .with("response.size", 91i64)
        .with("response.total_size", 300i64)
        .with("source.address", "10.1.0.7:51234")
        .with("source.port", 51234i64)
        .with("destination.address", "10.1.0.9:9080")
        .with("destination.port", 9080i64)
        .with("connection.mtls", true)
        .with(
            "connection.requested_server_name",
            "outbound_.9080_._.reviews.default.svc.cluster.local",
        )
        .with("connection.id", 42u64)
        .with("upstream.address", "10.1.0.12:9080")
        .with("upstream.port", 9080i64)
        .with(
            "xds.cluster_name",
            "outbound|9080||reviews.default.svc.cluster.local",
        )
        .with("xds.route_name", "default")
        .with("filter_state.wasm.upstream_peer", "reviews-v2")
        .with(
            "metadata.filter_metadata",
            Value::Map(vec![(
                "istio".into(),
                Value::Map(vec![("version".into(), Value::Int(2))]),
            )]),
        )
        .with_request_header("X-Debug", "true")
        .with_request_header("x-user", "alice")
        .with_request_header("x-pattern", "^/api/v[0-9]")
        .with_request_header("x-bad-pattern", "(")
        .with_request_header("accept", "text/html")
        .with_request_header("accept", "application/json")
        .with_response_header("content-type", "application/json")
        .with_response_trailer("grpc-status", "14")
}

/// A successful plain-text health check: no debug header, no mTLS, no flags.
fn ok() -> AttributeMap {
    AttributeMap::new()
        .with("request.url_path", "/health")
        .with("request.method", "GET")
        .with("response.code", 200i64)
        .with("response.flags", 0i64)
        .with("connection.mtls", false)
        .with("xds.cluster_name", "inbound|9080||")
}

/// Expressions with their expected match against `failed()` and `ok()`.
const TABLE: &[(&str, bool, bool)] = &[
    // The examples Istio and Envoy users write.
    ("response.code >= 400", true, false),
    (
        "response.code >= 400 || request.url_path.startsWith('/api')",
        true,
        false,
    ),
    ("request.headers['x-debug'] == 'true'", true, false),
    ("!connection.mtls", false, true),
    ("response.flags != 0u", true, false),
    ("response.flags != 0", true, false),
    (
        "response.code >= 400 || xds.cluster_name == 'BlackHoleCluster' || xds.cluster_name == 'PassthroughCluster'",
        true,
        false,
    ),
    ("request.path == '/filter-test'", false, false),
    ("response.code >= 500 && response.code < 600", true, false),
    (
        "response.code_details.contains('connection_failure')",
        true,
        false,
    ),
    ("response.grpc_status == 14", true, false),
    ("request.protocol == 'HTTP/1.1'", true, false),
    ("request.duration > duration('1s')", true, false),
    // Literals.
    ("true", true, true),
    ("false", false, false),
    ("null == null", true, true),
    ("4u == 4", true, true),
    ("0x10 == 16 && 0x10u == 16u && -0x10 == -16", true, true),
    ("1.5e3 == 1500 && .5 == 0.5 && 1e-3 < 0.01", true, true),
    (
        "-9223372036854775808 < 0 && 18446744073709551615u > 0u",
        true,
        true,
    ),
    (
        "\"a\\tb\" == 'a\\x09b' && 'a\\u0009b' == 'a\\011b'",
        true,
        true,
    ),
    ("'\\u00e9' == 'é' && '\\U0001F600' == '😀'", true, true),
    ("r'\\d+' == '\\\\d+' && R\"\\n\" == '\\\\n'", true, true),
    (
        "'''it's''' == \"it's\" && \"\"\"a\nb\"\"\" == 'a\\nb'",
        true,
        true,
    ),
    (
        "b'abc' == b\"abc\" && b'\\xff' != b'\\xfe' && size(b'\\xff\\000') == 2",
        true,
        true,
    ),
    ("'abc' == b'abc'", false, false),
    ("'abc' != b'abc'", true, true),
    ("1 == 'a'", false, false),
    ("null == 0", false, false),
    ("// a comment\n true", true, true),
    // Comparisons: int, uint and double by value.
    (
        "1 < 2u && 2u > 1 && -1 < 0u && 1 <= 1u && 1u >= 1",
        true,
        true,
    ),
    ("18446744073709551615u > 9223372036854775807", true, true),
    (
        "1 == 1.0 && 1u == 1.0 && 2.5 > 2 && 2.5 < 3u && 3u > 2.5",
        true,
        true,
    ),
    ("9223372036854775807 < 9223372036854775808.0", true, true),
    ("-9223372036854775808 == -9223372036854775808.0", true, true),
    ("18446744073709551615u < 18446744073709551616.0", true, true),
    ("-1 < -0.5 && -1.5 < -1 && 0u > -0.5", true, true),
    ("0.0 / 0.0 == 0.0 / 0.0", false, false),
    ("0.0 / 0.0 != 0.0 / 0.0", true, true),
    ("!(0.0 / 0.0 < 1) && !(0.0 / 0.0 >= 1)", true, true),
    (
        "'abc' < 'abd' && 'Z' < 'a' && '' < 'a' && 'é' > 'z'",
        true,
        true,
    ),
    ("b'a' < b'b' && false < true", true, true),
    ("'10' > 9", false, false),
    ("!('10' > 9)", false, false),
    (
        "[1, 2] == [1u, 2.0] && [1] != [1, 2] && [] == []",
        true,
        true,
    ),
    ("{'a': 1, 'b': [2]} == {'b': [2u], 'a': 1.0}", true, true),
    ("{'a': 1} != {'a': 2} && {'a': 1} != {'b': 1}", true, true),
    (
        "request.time < timestamp('2025-01-01T00:00:00Z')",
        true,
        false,
    ),
    ("request.headers == request.headers", false, false),
    // && and || absorb errors on either side; ! and ?: do not.
    ("false && response.nope > 1", false, false),
    ("!(response.nope > 1 && false)", true, true),
    ("true || response.nope", true, true),
    ("response.nope || true", true, true),
    ("response.nope && true", false, false),
    ("!(response.nope && true)", false, false),
    ("!(response.nope || false)", false, false),
    ("'x' || true", true, true),
    ("true && 'x'", false, false),
    ("!('x' && false)", true, true),
    (
        "response.code >= 400 && request.headers['nope'] == 'x'",
        false,
        false,
    ),
    (
        "request.headers['nope'] == 'x' || response.code < 400",
        false,
        true,
    ),
    (
        "response.code == 503 ? request.method == 'GET' : false",
        true,
        false,
    ),
    ("true ? true : response.nope", true, true),
    ("false ? response.nope : true", true, true),
    ("response.nope ? true : true", false, false),
    ("'x' ? true : true", false, false),
    ("false ? false : true ? true : false", true, true),
    ("!!true && !!!false", true, true),
    // Arithmetic: checked, no mixed types.
    (
        "1 + 2 * 3 == 7 && (1 + 2) * 3 == 9 && 10 - 2 - 3 == 5",
        true,
        true,
    ),
    (
        "7 / 2 == 3 && -7 / 2 == -3 && 7 % 3 == 1 && -7 % 3 == -1",
        true,
        true,
    ),
    (
        "7u / 2u == 3u && 7u % 2u == 1u && 2u * 3u == 6u && 5u - 2u == 3u",
        true,
        true,
    ),
    (
        "2.0 * 1.5 == 3.0 && 1.0 / 4.0 == 0.25 && 0.5 + 0.25 == 0.75 && 1.5 - 2.0 == -0.5",
        true,
        true,
    ),
    (
        "-(3) == -3 && -(-3) == 3 && -(2.5) == -2.5 && --3 == 3",
        true,
        true,
    ),
    ("1.0 / 0.0 > 1e308", true, true),
    (
        "response.code / 100 == 5 && response.size * 2 == 182",
        true,
        false,
    ),
    ("1 / 0 == 0", false, false),
    ("!(1 / 0 == 0)", false, false),
    ("1 % 0 == 0", false, false),
    ("1u / 0u == 0u", false, false),
    ("9223372036854775807 + 1 > 0", false, false),
    ("-9223372036854775808 - 1 < 0", false, false),
    ("-(-9223372036854775808) > 0", false, false),
    ("-9223372036854775808 / -1 < 0", false, false),
    ("4611686018427387904 * 2 > 0", false, false),
    ("0u - 1u == 0u", false, false),
    ("18446744073709551615u + 1u > 0u", false, false),
    ("-(1u) == 1u", false, false),
    ("1 + 1u == 2", false, false),
    ("1 + 1.0 == 2", false, false),
    ("5.5 % 2.0 == 1.5", false, false),
    ("'a' + 'b' == 'ab'", false, false),
    ("b'a' + b'b' == b'ab'", false, false),
    ("[1] + [2] == [1, 2]", false, false),
    ("request.time + duration('1h') > request.time", true, false),
    ("duration('1h') + request.time > request.time", true, false),
    (
        "request.time - timestamp('2024-02-29T12:00:00Z') == duration('30m15s')",
        true,
        false,
    ),
    (
        "request.time - duration('30m15s') == timestamp('2024-02-29T12:00:00Z')",
        true,
        false,
    ),
    (
        "duration('1h') - duration('30m') == duration('30m') && -duration('1s') < duration('0')",
        true,
        true,
    ),
    (
        "timestamp('9999-12-31T23:59:59Z') + duration('1s') > timestamp('0001-01-01T00:00:00Z')",
        false,
        false,
    ),
    // in: lists by value, maps and header maps by key.
    ("request.method in ['GET', 'HEAD']", true, true),
    ("request.method in ['PUT']", false, false),
    ("response.code in [500, 502, 503, 504]", true, false),
    ("2 in [1.0, 2.0] && 2u in [2] && !(3 in [])", true, true),
    (
        "'x-debug' in request.headers && 'X-Debug' in request.headers",
        true,
        false,
    ),
    ("'nope' in request.headers", false, false),
    ("1 in request.headers", false, false),
    (
        "'a' in {'a': 1} && 1u in {1: 'x'} && 1.0 in {1: 'x'} && !('b' in {'a': 1})",
        true,
        true,
    ),
    ("'a' in 'abc'", false, false),
    ("'url_path' in request", true, true),
    // Member selection and indexing.
    ("request.headers['x-user'] == 'alice'", true, false),
    ("request.headers['X-USER'] == 'alice'", true, false),
    (
        "request.headers.accept == 'text/html,application/json'",
        true,
        false,
    ),
    ("request.headers['x-' + 'user'] == 'alice'", false, false),
    ("request['url_path'] == '/api/v1/users'", true, false),
    ("(true ? request : response).method == 'GET'", true, true),
    ("(false ? request : response)['code'] == 200", false, true),
    (
        "(true ? request : response).headers['x-user'] == 'alice'",
        true,
        false,
    ),
    (
        "response.headers['content-type'].startsWith('application/json')",
        true,
        false,
    ),
    ("response.trailers['grpc-status'] == '14'", true, false),
    (
        "filter_state['wasm.upstream_peer'] == 'reviews-v2'",
        true,
        false,
    ),
    ("metadata.filter_metadata.istio.version == 2", true, false),
    (
        "metadata.filter_metadata['istio']['version'] == 2u",
        true,
        false,
    ),
    (
        "[10, 20, 30][1] == 20 && [10, 20][1u] == 20 && [10, 20][1.0] == 20",
        true,
        true,
    ),
    ("[10, 20][2] == 0", false, false),
    ("[10, 20][-1] == 0", false, false),
    ("[10, 20][0.5] == 10", false, false),
    ("[10, 20]['0'] == 10", false, false),
    (
        "{'a': {'b': 7}}.a.b == 7 && {'a': {'b': 7}}['a']['b'] == 7",
        true,
        true,
    ),
    (
        "{1: 'one', true: 'yes'}[1u] == 'one' && {1: 'one', true: 'yes'}[true] == 'yes'",
        true,
        true,
    ),
    ("{'a': 1}['b'] == 1", false, false),
    ("{'a': 1}.b == 1", false, false),
    ("{'a': 1, 'a': 2}.a == 1", false, false),
    ("{[1]: 1}.a == 1", false, false),
    ("{response.code: 'x'}[503] == 'x'", true, false),
    ("[response.code, 1][0] == 503", true, false),
    ("request.nope == 1", false, false),
    ("foo == 1", false, false),
    ("foo.bar == 1", false, false),
    ("response.code.value == 1", false, false),
    ("'abc'[0] == 'a'", false, false),
    (".request.method == 'GET'", true, true),
    // has(): presence, never an error for a missing field.
    (
        "has(request.headers.accept) && !has(request.headers.nope)",
        true,
        false,
    ),
    (
        "has(request.url_path) && has(response.grpc_status) && !has(request.query)",
        true,
        false,
    ),
    (
        "has(request.headers) && has(response.headers) && has(response.trailers)",
        true,
        true,
    ),
    ("has({'a': 1}.a) && !has({'a': 1}.b)", true, true),
    ("has(metadata.filter_metadata.istio)", true, false),
    ("has(response.code.x)", false, false),
    ("!has(response.code.x)", false, false),
    ("has(foo.bar)", false, false),
    // Strings.
    (
        "request.url_path.startsWith('/api') && startsWith(request.url_path, '/api')",
        true,
        false,
    ),
    (
        "request.host.endsWith(':9080') && endsWith(request.host, ':9080')",
        true,
        false,
    ),
    (
        "request.useragent.contains('curl') && contains(request.useragent, '')",
        true,
        false,
    ),
    ("response.code.startsWith('5')", false, false),
    ("request.url_path.startsWith(1)", false, false),
    (
        "request.url_path.matches('^/api/v[0-9]+/') && matches(request.url_path, 'users$')",
        true,
        false,
    ),
    (
        "request.url_path.matches('users') && !request.url_path.matches('^users')",
        true,
        false,
    ),
    (
        "request.url_path.matches(request.headers['x-pattern'])",
        true,
        false,
    ),
    (
        "request.url_path.matches(request.headers['x-bad-pattern'])",
        false,
        false,
    ),
    ("'é'.matches('^\\\\w$')", false, false),
    (
        "'_a9'.matches('^\\\\w+$') && '٣'.matches('^\\\\D$')",
        true,
        true,
    ),
    ("response.code.matches('5')", false, false),
    (
        "size(request.url_path) == 13 && request.url_path.size() == 13",
        true,
        false,
    ),
    (
        "size('héllo') == 5 && size(b'h\\xc3\\xa9llo') == 6 && size('') == 0",
        true,
        true,
    ),
    (
        "size([1, 2, 3]) == 3 && [1, 2].size() == 2 && size({'a': 1}) == 1",
        true,
        true,
    ),
    ("size(request.headers) > 0", false, false),
    ("size(1) == 1", false, false),
    // Conversions.
    (
        "int('42') == 42 && int('-7') == -7 && int(4.9) == 4 && int(-4.9) == -4",
        true,
        true,
    ),
    (
        "int(9223372036854775807u) == 9223372036854775807 && int(7) == 7",
        true,
        true,
    ),
    ("int(1e19) == 0", false, false),
    ("int(-9223372036854775808.0) < 0", false, false),
    ("int(18446744073709551615u) > 0", false, false),
    ("int('x') == 0", false, false),
    ("int(' 1') == 1", false, false),
    ("int(request.time) == 1709209815", true, false),
    (
        "uint(42) == 42u && uint('7') == 7u && uint(2.9) == 2u && uint(7u) == 7u",
        true,
        true,
    ),
    ("uint(response.flags) == 32u", true, false),
    ("uint(-1) == 0u", false, false),
    ("uint(-0.5) == 0u", false, false),
    ("uint(1.8446744073709552e19) > 0u", false, false),
    (
        "double(1) == 1.0 && double(7u) == 7.0 && double('2.5') == 2.5 && double(1.5) == 1.5",
        true,
        true,
    ),
    ("double('x') == 0.0", false, false),
    ("bytes('ab') == b'ab' && bytes(b'ab') == b'ab'", true, true),
    ("dyn(1) == 1u && dyn('a') == 'a'", true, true),
    ("int(true) == 1", false, false),
    // Durations and timestamps.
    (
        "duration('1.5s') == duration('1500ms') && duration('1h') == duration('60m')",
        true,
        true,
    ),
    (
        "duration('1us') == duration('1000ns') && duration('-1s') < duration('0s')",
        true,
        true,
    ),
    (
        "request.duration >= duration('1s') && request.duration < duration('2s')",
        true,
        false,
    ),
    (
        "request.duration.getMilliseconds() == 1500 && request.duration.getSeconds() == 1",
        true,
        false,
    ),
    (
        "duration('2h30m').getHours() == 2 && duration('2h30m').getMinutes() == 150",
        true,
        true,
    ),
    ("duration('bogus') > duration('1s')", false, false),
    ("duration('1s') == duration(duration('1s'))", true, true),
    (
        "timestamp('2024-02-29T12:30:15Z') == request.time",
        true,
        false,
    ),
    (
        "timestamp('2024-02-29T14:30:15+02:00') == request.time",
        true,
        false,
    ),
    (
        "timestamp(0) < request.time && timestamp(request.time) == request.time",
        true,
        false,
    ),
    (
        "request.time.getFullYear() == 2024 && request.time.getMonth() == 1",
        true,
        false,
    ),
    (
        "request.time.getDate() == 29 && request.time.getDayOfMonth() == 28",
        true,
        false,
    ),
    (
        "request.time.getDayOfWeek() == 4 && request.time.getDayOfYear() == 59",
        true,
        false,
    ),
    (
        "request.time.getHours() == 12 && request.time.getMinutes() == 30",
        true,
        false,
    ),
    (
        "request.time.getSeconds() == 15 && request.time.getMilliseconds() == 0",
        true,
        false,
    ),
    (
        "request.time.getHours('+02:00') == 14 && request.time.getHours('-13:00') == 23",
        true,
        false,
    ),
    (
        "request.time.getDate('+12:00') == 1 && request.time.getMonth('UTC') == 1",
        true,
        false,
    ),
    (
        "request.time.getHours('America/New_York') == 7",
        false,
        false,
    ),
    ("request.time.getHours(1) == 12", false, false),
    ("request.duration.getDayOfWeek() == 0", false, false),
    (
        "timestamp('2024-13-01T00:00:00Z') > request.time",
        false,
        false,
    ),
    ("duration('400000000000s') > duration('1s')", false, false),
    // Envoy: only a boolean true matches.
    ("response.code", false, false),
    ("request.url_path", false, false),
    ("'true'", false, false),
    ("1", false, false),
    ("null", false, false),
    ("[true]", false, false),
    ("request.headers", false, false),
];

#[test]
fn the_table() {
    let (failed, ok) = (failed(), ok());
    let mut wrong = Vec::new();
    for (expr, on_failed, on_ok) in TABLE {
        let filter = match Filter::compile(expr) {
            Ok(f) => f,
            Err(e) => {
                wrong.push(format!("{expr}: does not compile: {e}"));
                continue;
            }
        };
        let got = (filter.matches(&failed), filter.matches(&ok));
        if got != (*on_failed, *on_ok) {
            let why = filter.evaluate(&failed);
            wrong.push(format!(
                "{expr}: got {got:?}, want {:?} ({why:?})",
                (on_failed, on_ok)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Without the attributes it reads, a filter does not match (and `has` says so).
#[test]
fn nothing_matches_a_request_without_attributes() {
    let none = AttributeMap::new();
    for expr in [
        "response.code >= 400",
        "response.code < 400",
        "!connection.mtls",
        "connection.mtls",
        "response.flags != 0u",
        "request.headers['x-debug'] == 'true'",
        "request.headers['x-debug'] != 'true'",
        "request.url_path.startsWith('/api')",
        "!request.url_path.startsWith('/api')",
        "request.duration > duration('0s')",
        "xds.cluster_name == 'BlackHoleCluster' || xds.cluster_name == 'PassthroughCluster'",
    ] {
        assert!(!Filter::compile(expr).unwrap().matches(&none), "{expr}");
    }
    assert!(
        Filter::compile("!has(response.code) && !has(request.headers.x)")
            .unwrap()
            .matches(&none)
    );
    assert!(
        Filter::compile("response.code >= 400 || true")
            .unwrap()
            .matches(&none)
    );
}

/// What Envoy's runtime does not offer is rejected when compiled (Envoy rejects the
/// configuration), with the column.
#[test]
fn compile_errors() {
    for (expr, what) in [
        ("response.code = 400", "use `==`"),
        ("", "empty"),
        (
            "request.url_path.startsWith()",
            "`startsWith` takes 1 argument(s), not 0 at column 17",
        ),
        (
            "startsWith(request.url_path)",
            "`startsWith` takes 2 argument(s), not 1",
        ),
        ("request.url_path.size(1)", "`size` takes 0 argument(s)"),
        ("int(1, 2)", "`int` takes 1 argument(s)"),
        (
            "request.time.getHours(1, 2)",
            "`getHours` takes 0 or 1 argument(s)",
        ),
        ("foo(1)", "unknown function `foo` at column 1"),
        (
            "response.code >= 400 && foo(1)",
            "unknown function `foo` at column 25",
        ),
        (
            "re.extract(request.url_path, '(.*)', '\\\\1')",
            "unknown function `extract`",
        ),
        ("'a'.int()", "`int` is not a method"),
        ("getHours(request.time)", "`getHours` is a method"),
        ("[1, 2].exists(x, x > 1)", "comprehension"),
        ("[1, 2].all(x, x > 1)", "comprehension"),
        ("[1, 2].map(x, x * 2) == [2, 4]", "comprehension"),
        ("string(response.code) == '503'", "`string()` is disabled"),
        (
            "request.url_path.matches('(')",
            "invalid regular expression `(`",
        ),
        ("request.url_path.matches('a{1001}')", "above RE2's limit"),
        (
            "1 + google.protobuf.Duration{seconds: 5}",
            "message construction `google.protobuf.Duration{...}` is not supported at column 5",
        ),
        ("has(request)", "invalid argument to has() macro"),
        ("9223372036854775808 > 0", "out of range"),
    ] {
        let e = Filter::compile(expr).expect_err(expr);
        assert!(e.contains(what), "{expr}: {e}");
    }
}

/// With CEL's whole standard library, `string()` and concatenation work; Envoy's options
/// turn them off.
#[test]
fn standard_options() {
    let attrs = failed();
    for expr in [
        "string(503) == '503' && string(7u) == '7' && string(true) == 'true'",
        "string(1.5) == '1.5' && string(1e6) == '1e+06' && string(-0.25) == '-0.25'",
        "string(b'ab') == 'ab' && string('x') == 'x'",
        "string(duration('1.5s')) == '1.5s' && string(request.time) == '2024-02-29T12:30:15Z'",
        "string(response.code) + '!' == '503!'",
        "'a' + 'b' == 'ab' && b'a' + b'b' == b'ab'",
        "[1] + [2u] == [1, 2] && size([1] + []) == 1",
        "request.headers['x-' + 'user'] == 'alice'",
    ] {
        let f = Filter::compile_with(expr, Options::STANDARD).unwrap();
        assert!(f.matches(&attrs), "{expr}: {:?}", f.evaluate(&attrs));
        let envoy = Filter::compile_with(expr, Options::ENVOY);
        assert!(envoy.is_err() || !envoy.unwrap().matches(&attrs), "{expr}");
    }
    let f = Filter::compile_with("string(b'\\xff') == ''", Options::STANDARD).unwrap();
    assert!(!f.matches(&attrs));
    assert_eq!(Options::default(), Options::ENVOY);
}

#[test]
fn values() {
    let attrs = failed();
    let eval = |e: &str| {
        Filter::compile(e)
            .unwrap()
            .evaluate(&attrs)
            .map(|v| format!("{v:?}"))
    };
    let f = Filter::compile("response.code").unwrap();
    assert_eq!(f.evaluate(&attrs), Ok(Value::Int(503)));
    assert_eq!(f.expression(), "response.code");
    let f = Filter::compile("request.headers['x-user']").unwrap();
    assert_eq!(
        f.evaluate(&attrs),
        Ok(Value::String(Cow::Borrowed("alice")))
    );
    let f = Filter::compile("request.duration").unwrap();
    assert_eq!(
        f.evaluate(&attrs),
        Ok(Value::Duration(Duration::from_millis(1500)))
    );
    let f = Filter::compile("request.time + duration('1.5s')").unwrap();
    assert_eq!(
        f.evaluate(&attrs),
        Ok(Value::Timestamp(
            UNIX_EPOCH + Duration::from_millis(1_709_209_816_500)
        ))
    );
    let f = Filter::compile("timestamp('1969-12-31T23:59:59Z')").unwrap();
    assert_eq!(
        f.evaluate(&attrs),
        Ok(Value::Timestamp(UNIX_EPOCH - Duration::from_secs(1)))
    );
    let f = Filter::compile("[1, 'a', b'b', 2u, 0.5, null, {'k': true}]").unwrap();
    assert_eq!(
        f.evaluate(&attrs),
        Ok(Value::List(vec![
            Value::Int(1),
            "a".into(),
            Value::Bytes(Cow::Borrowed(b"b")),
            Value::Uint(2),
            Value::Double(0.5),
            Value::Null,
            Value::Map(vec![("k".into(), Value::Bool(true))]),
        ]))
    );
    assert_eq!(eval("[request.method][0]"), Ok("String(\"GET\")".into()));
    for (e, what) in [
        ("request.headers['nope']", "no such key"),
        ("response.nope", "no such attribute"),
        ("foo", "undeclared reference to `foo`"),
        ("1 / 0", "division by zero"),
        ("1 % 0", "modulus by zero"),
        ("9223372036854775807 + 1", "integer overflow"),
        (
            "1 + 'a'",
            "no matching overload for `_+_` applied to (int, string)",
        ),
        ("request.headers", "cannot be listed"),
        ("-duration('1s')", "negative duration"),
        ("[1][3]", "index out of range"),
    ] {
        let err = Filter::compile(e).unwrap().evaluate(&attrs).unwrap_err();
        assert!(err.to_string().contains(what), "{e}: {err}");
    }
}

/// Attributes as the runtime provides them: header names are asked for in lower case
/// (constant names are lower-cased once when compiled), and values borrow from the
/// request.
struct Strict {
    code: i64,
    headers: Vec<(&'static str, String)>,
}

impl Attributes for Strict {
    fn attribute(&self, path: &str) -> Option<Value<'_>> {
        match path {
            "response.code" => Some(Value::Int(self.code)),
            "request.url_path" => Some(Value::String(Cow::Borrowed("/x"))),
            _ => None,
        }
    }
    fn request_header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
    fn response_header(&self, _name: &str) -> Option<&str> {
        None
    }
}

#[test]
fn the_runtime_gets_lower_case_header_names() {
    let req = Strict {
        code: 404,
        headers: vec![("x-debug", "true".to_string())],
    };
    for expr in [
        "request.headers['X-Debug'] == 'true'",
        "request.headers.x_debug == 'true' || request.headers['x-DEBUG'] == 'true'",
        "has(request.headers.X_Debug) || 'X-DEBUG' in request.headers",
        "request.headers[['X-Debug'][0]] == 'true'",
        "response.code == 404 && !has(response.headers.x) && !has(response.trailers.x)",
    ] {
        assert!(Filter::compile(expr).unwrap().matches(&req), "{expr}");
    }
}

#[test]
fn filters_are_shareable() {
    fn assert_traits<T: Send + Sync + Clone + std::fmt::Debug + 'static>() {}
    assert_traits::<Filter>();
    let f = Filter::compile("response.code >= 400").unwrap();
    let g = f.clone();
    let t = std::thread::spawn(move || g.matches(&failed()));
    assert!(t.join().unwrap());
    assert!(!f.matches(&ok()));
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

/// A value-typed expression over the sample vocabulary, some of whose leaves are errors.
fn value() -> impl Strategy<Value = String> {
    let leaf = prop::sample::select(vec![
        "response.code",
        "response.flags",
        "response.grpc_status",
        "request.url_path",
        "request.method",
        "request.headers['x-debug']",
        "request.headers['nope']",
        "request.duration",
        "request.time",
        "connection.mtls",
        "connection.id",
        "response.nope",
        "foo",
        "0",
        "1",
        "-1",
        "2u",
        "2.5",
        "0.0",
        "'GET'",
        "'/api'",
        "b'a'",
        "true",
        "false",
        "null",
        "[1, 2u, 'a']",
        "{'a': 1}",
        "duration('1s')",
    ])
    .prop_map(str::to_string);
    leaf.prop_recursive(4, 24, 3, |inner| {
        let ops = prop::sample::select(vec!["+", "-", "*", "/", "%"]);
        prop_oneof![
            (inner.clone(), ops, inner.clone()).prop_map(|(a, o, b)| format!("({a} {o} {b})")),
            inner.clone().prop_map(|a| format!("-({a})")),
            inner.clone().prop_map(|a| format!("size({a})")),
            inner.clone().prop_map(|a| format!("int({a})")),
            inner.clone().prop_map(|a| format!("uint({a})")),
            inner.clone().prop_map(|a| format!("double({a})")),
            (inner.clone(), inner.clone()).prop_map(|(a, i)| format!("({a})[{i}]")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("[{a}, {b}]")),
            (inner.clone(), inner.clone(), inner)
                .prop_map(|(c, a, b)| format!("({c} ? {a} : {b})")),
        ]
    })
}

/// A boolean-ish expression (possibly an error or a non-boolean) over `value()`.
fn condition() -> impl Strategy<Value = String> {
    let rel = prop::sample::select(vec!["==", "!=", "<", "<=", ">", ">=", "in"]);
    let atom = prop_oneof![
        (value(), rel, value()).prop_map(|(a, r, b)| format!("{a} {r} {b}")),
        (value(), value()).prop_map(|(a, b)| format!("({a}).startsWith({b})")),
        value().prop_map(|a| format!("({a}).matches('^/a')")),
        value().prop_map(|a| format!("has(({a}).x)")),
        Just("has(request.headers.accept)".to_string()),
        Just("!connection.mtls".to_string()),
        value(),
    ];
    atom.prop_recursive(3, 16, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} && {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} || {b})")),
            inner.prop_map(|a| format!("!({a})")),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        rng_seed: proptest::test_runner::RngSeed::Fixed(10),
        ..ProptestConfig::default()
    })]

    /// Any text: compiling never panics, and whatever compiles evaluates without panic.
    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,64}", bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        for text in [s, String::from_utf8_lossy(&bytes).into_owned()] {
            for options in [Options::ENVOY, Options::STANDARD] {
                if let Ok(f) = Filter::compile_with(&text, options) {
                    let _ = f.matches(&failed());
                    let _ = f.matches(&AttributeMap::new());
                    let _ = f.evaluate(&ok());
                }
            }
        }
    }

    /// Text built from CEL's tokens, which reaches deeper into the parser and evaluator.
    #[test]
    fn token_soup_never_panics(tokens in prop::collection::vec(prop::sample::select(vec![
        "response.code", "request.headers", "['x']", ".size()", "(", ")", "[", "]", "{", "}",
        ":", ",", "?", "!", "-", "+", "*", "/", "%", "==", "<", "&&", "||", " in ", "1", "0u",
        "2.5", "'a'", "b'b'", "null", "true", "has(", "int(", "duration(", "'1s'", ".", "x",
        "-9223372036854775808", "9223372036854775807", "18446744073709551615u",
    ]), 0..24)) {
        let text = tokens.concat();
        if let Ok(f) = Filter::compile_with(&text, Options::STANDARD) {
            let _ = f.matches(&failed());
            let _ = f.evaluate(&AttributeMap::new());
        }
    }

    /// Generated expressions compile, and `matches` is "evaluates to true".
    #[test]
    fn matches_is_evaluating_to_true(c in condition()) {
        let f = Filter::compile(&c).map_err(|e| TestCaseError::fail(format!("{c}: {e}")))?;
        for attrs in [failed(), ok(), AttributeMap::new()] {
            prop_assert_eq!(f.matches(&attrs), f.evaluate(&attrs) == Ok(Value::Bool(true)), "{}", c);
        }
    }

    /// `&&` and `||` are commutative, errors included; De Morgan's laws hold; an
    /// expression and its negation never both match.
    #[test]
    fn logic_is_commutative_with_errors(a in condition(), b in condition()) {
        let m = |e: &str| Filter::compile(e).map(|f| (f.matches(&failed()), f.matches(&ok())));
        prop_assert_eq!(m(&format!("({a}) && ({b})")), m(&format!("({b}) && ({a})")));
        prop_assert_eq!(m(&format!("({a}) || ({b})")), m(&format!("({b}) || ({a})")));
        prop_assert_eq!(m(&format!("!(({a}) && ({b}))")), m(&format!("!({a}) || !({b})")));
        prop_assert_eq!(m(&format!("!(({a}) || ({b}))")), m(&format!("!({a}) && !({b})")));
        let (yes, no) = (m(&a).unwrap(), m(&format!("!({a})")).unwrap());
        prop_assert!(!(yes.0 && no.0), "{}", a);
        prop_assert!(!(yes.1 && no.1), "{}", a);
    }
}
