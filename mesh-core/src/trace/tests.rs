//! Trace context extraction and injection, sampling, ids and span names (table tests and
//! property tests).

use super::*;
use proptest::prelude::*;

const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const S: &str = "00f067aa0ba902b7";
const P: &str = "5b4185666d50f68b";

fn tid(s: &str) -> TraceId {
    s.parse().unwrap()
}

fn sid(s: &str) -> SpanId {
    s.parse().unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn remote(trace: &str, span: &str, parent: Option<&str>) -> Option<RemoteSpan> {
    Some(RemoteSpan {
        trace_id: tid(trace),
        span_id: sid(span),
        parent_span_id: parent.map(sid),
    })
}

#[test]
fn ids_display_parse_and_reject_zero() {
    let t = tid(T);
    assert_eq!(t.to_string(), T);
    assert_eq!(format!("{t:?}"), format!("TraceId({T})"));
    assert_eq!(TraceId::from_bytes(t.to_bytes()), Some(t));
    assert_eq!(t.to_bytes()[0], 0x4b);
    let s = sid(S);
    assert_eq!(s.to_string(), S);
    assert_eq!(SpanId::from_bytes(s.to_bytes()), Some(s));
    assert_eq!(s.get(), 0x00f0_67aa_0ba9_02b7);

    assert_eq!(TraceId::new(0), None);
    assert_eq!(SpanId::new(0), None);
    assert_eq!(TraceId::from_bytes([0; 16]), None);
    assert_eq!("0".repeat(32).parse::<TraceId>(), Err(IdError::Zero));
    assert_eq!("0".repeat(16).parse::<SpanId>(), Err(IdError::Zero));
    assert_eq!(
        T.to_uppercase().parse::<TraceId>(),
        Err(IdError::NotLowerHex)
    );
    assert_eq!(
        T[1..].parse::<TraceId>(),
        Err(IdError::Length {
            expected: 32,
            found: 31
        })
    );
    assert_eq!(
        "00f067aa0ba902b".parse::<SpanId>(),
        Err(IdError::Length {
            expected: 16,
            found: 15
        })
    );
    assert_eq!(
        "00f067aa0ba902bg".parse::<SpanId>(),
        Err(IdError::NotLowerHex)
    );
    // B3's 64-bit trace ids are left-padded.
    assert_eq!(
        TraceId::from_b3_hex(b"a3ce929d0e0e4736").map(|t| t.to_string()),
        Ok("0000000000000000a3ce929d0e0e4736".to_string())
    );
    assert_eq!(
        TraceId::from_b3_hex(b"0000000000000000"),
        Err(IdError::Zero)
    );
    assert_eq!(
        TraceId::from_b3_hex(b"a3ce929d0e0e47"),
        Err(IdError::Length {
            expected: 32,
            found: 14
        })
    );
}

#[test]
fn traceparent_cases() {
    let ok = |version: u8, flags: u8| {
        Ok(Traceparent {
            version,
            trace_id: tid(T),
            parent_id: sid(S),
            flags,
        })
    };
    let upper_t = T.to_uppercase();
    let zero_t = "0".repeat(32);
    let zero_s = "0".repeat(16);
    let table: Vec<(String, Result<Traceparent, InvalidContext>)> = vec![
        (format!("00-{T}-{S}-01"), ok(0, 1)),
        (format!("00-{T}-{S}-00"), ok(0, 0)),
        (format!("00-{T}-{S}-03"), ok(0, 3)),
        (format!(" \t00-{T}-{S}-01 "), ok(0, 1)),
        // Future versions: read the first four fields; more data must follow a dash.
        (format!("01-{T}-{S}-01"), ok(1, 1)),
        (
            format!("cc-{T}-{S}-01-what-the-future-will-be-like"),
            ok(0xcc, 1),
        ),
        (format!("01-{T}-{S}-01x"), Err(InvalidContext::TrailingData)),
        // Version 00 is exactly 55 characters.
        (
            format!("00-{T}-{S}-01-extra"),
            Err(InvalidContext::TrailingData),
        ),
        (format!("00-{T}-{S}-011"), Err(InvalidContext::TrailingData)),
        (format!("ff-{T}-{S}-01"), Err(InvalidContext::Version)),
        (format!("0A-{T}-{S}-01"), Err(InvalidContext::Version)),
        (format!("0-{T}-{S}-01"), Err(InvalidContext::Version)),
        (
            format!("00-{upper_t}-{S}-01"),
            Err(InvalidContext::TraceId(IdError::NotLowerHex)),
        ),
        (
            format!("00-{T}-{}-01", S.to_uppercase().replace('0', "F")),
            Err(InvalidContext::SpanId(IdError::NotLowerHex)),
        ),
        (
            format!("00-{zero_t}-{S}-01"),
            Err(InvalidContext::TraceId(IdError::Zero)),
        ),
        (
            format!("00-{T}-{zero_s}-01"),
            Err(InvalidContext::SpanId(IdError::Zero)),
        ),
        (format!("00-{T}-{S}-0"), Err(InvalidContext::Truncated)),
        (
            format!("00-{}-{S}-01", &T[1..]),
            Err(InvalidContext::Truncated),
        ),
        (
            format!("00-{T}0-{S}-01"),
            Err(InvalidContext::Delimiter(35)),
        ),
        (format!("00_{T}-{S}-01"), Err(InvalidContext::Delimiter(2))),
        (format!("00-{T}_{S}-01"), Err(InvalidContext::Delimiter(35))),
        (format!("00-{T}-{S}_01"), Err(InvalidContext::Delimiter(52))),
        (format!("00-{T}-{S}-0g"), Err(InvalidContext::Flags)),
        (format!("00-{T}-{S}-0A"), Err(InvalidContext::Flags)),
        (String::new(), Err(InvalidContext::Empty)),
        ("  ".to_string(), Err(InvalidContext::Empty)),
    ];
    for (input, want) in table {
        assert_eq!(parse_traceparent(input.as_bytes()), want, "{input:?}");
    }
    assert!(ok(0, 3).unwrap().sampled());
    assert!(!ok(0, 2).unwrap().sampled());
}

#[test]
fn traceparent_extraction() {
    let tp = format!("00-{T}-{S}-01");
    let e = extract(&headers(&[("traceparent", &tp)])).unwrap();
    assert_eq!(e.format, Format::TraceContext);
    assert_eq!(e.remote, remote(T, S, None));
    assert_eq!(e.sampling, Sampling::Accept);
    assert_eq!(e.sampled(), Some(true));
    assert_eq!(e.tracestate, None);

    let tp0 = format!("00-{T}-{S}-00");
    let e = extract(&headers(&[("traceparent", &tp0)])).unwrap();
    assert_eq!(e.sampling, Sampling::Deny);

    // A repeated traceparent starts a new trace, even when both agree.
    assert_eq!(
        extract(&headers(&[("traceparent", &tp), ("traceparent", &tp)])),
        None
    );
    // tracestate alone is discarded.
    assert_eq!(
        extract(&headers(&[("tracestate", "congo=t61rcWkgMzE")])),
        None
    );
}

#[test]
fn tracestate_cases() {
    let tp = format!("00-{T}-{S}-01");
    let state = |values: &[&str]| {
        let mut pairs = vec![("traceparent", tp.as_str())];
        pairs.extend(values.iter().map(|v| ("tracestate", *v)));
        extract(&headers(&pairs))
            .unwrap()
            .tracestate
            .map(|v| v.to_str().unwrap().to_string())
    };
    let s = |v: &str| Some(v.to_string());
    // Kept byte for byte, whitespace and empty members included.
    assert_eq!(
        state(&["congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"]),
        s("congo=t61rcWkgMzE, rojo=00f067aa0ba902b7")
    );
    assert_eq!(state(&["a=1,,b=2"]), s("a=1,,b=2"));
    assert_eq!(state(&["tenant1@sys=x y", "b=2"]), s("tenant1@sys=x y,b=2"));
    assert_eq!(state(&["9tenant@s=1"]), s("9tenant@s=1"));
    // Invalid: not propagated.
    assert_eq!(state(&["Congo=1"]), None);
    assert_eq!(state(&["1a=1"]), None);
    assert_eq!(state(&["a=b=c"]), None);
    assert_eq!(state(&["a=1,a=2"]), None);
    assert_eq!(state(&["a=1", "a=2"]), None);
    assert_eq!(state(&["a"]), None);
    assert_eq!(state(&["a="]), None);
    assert_eq!(state(&["t@=1"]), None);
    assert_eq!(state(&["t@S=1"]), None);
    assert_eq!(state(&["t@abcdefghijklmno=1"]), None);
    assert_eq!(state(&["", " , "]), None);
    assert_eq!(state(&[]), None);
    let members = |n: usize| {
        (0..n)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",")
    };
    assert_eq!(state(&[&members(32)]), s(&members(32)));
    assert_eq!(state(&[&members(33)]), None);

    // Over 512 characters: long members go first, then members from the end.
    let member = |k: &str, len: usize| format!("{k}={}", "v".repeat(len - k.len() - 1));
    let short: Vec<String> = (0..6).map(|i| member(&format!("s{i}"), 100)).collect();
    let long = member("long", 200);
    let with_long = [&short[0], &long, &short[1], &short[2], &short[3]]
        .map(String::as_str)
        .join(",");
    assert_eq!(with_long.len(), 604);
    assert_eq!(state(&[&with_long]), s(&short[..4].join(",")));
    let six = short.join(",");
    assert_eq!(six.len(), 605);
    assert_eq!(state(&[&six]), s(&short[..5].join(",")));
    assert_eq!(state(&[&short[..5].join(",")]).map(|v| v.len()), Some(504));

    // Only with a valid traceparent.
    let bad = format!("00-{T}-{S}-0x");
    let e = extract(&headers(&[
        ("traceparent", &bad),
        ("tracestate", "a=1"),
        ("b3", "1"),
    ]))
    .unwrap();
    assert_eq!(e.format, Format::B3Single);
    assert_eq!(e.tracestate, None);
}

#[test]
fn b3_single_cases() {
    let t64 = "a3ce929d0e0e4736";
    let padded = "0000000000000000a3ce929d0e0e4736";
    let table: Vec<(String, Result<B3, InvalidContext>)> = vec![
        (
            format!("{T}-{S}-1-{P}"),
            Ok(B3 {
                remote: remote(T, S, Some(P)),
                sampling: Sampling::Accept,
            }),
        ),
        (
            format!("{T}-{S}-1"),
            Ok(B3 {
                remote: remote(T, S, None),
                sampling: Sampling::Accept,
            }),
        ),
        (
            format!("{T}-{S}-0"),
            Ok(B3 {
                remote: remote(T, S, None),
                sampling: Sampling::Deny,
            }),
        ),
        (
            format!("{T}-{S}-d"),
            Ok(B3 {
                remote: remote(T, S, None),
                sampling: Sampling::Debug,
            }),
        ),
        (
            format!("{T}-{S}"),
            Ok(B3 {
                remote: remote(T, S, None),
                sampling: Sampling::Deferred,
            }),
        ),
        (
            format!("{t64}-{S}-1"),
            Ok(B3 {
                remote: remote(padded, S, None),
                sampling: Sampling::Accept,
            }),
        ),
        (
            format!("{T}-{S}-1-0000000000000000"),
            Ok(B3 {
                remote: remote(T, S, None),
                sampling: Sampling::Accept,
            }),
        ),
        (
            "0".into(),
            Ok(B3 {
                remote: None,
                sampling: Sampling::Deny,
            }),
        ),
        (
            "1".into(),
            Ok(B3 {
                remote: None,
                sampling: Sampling::Accept,
            }),
        ),
        (
            "d".into(),
            Ok(B3 {
                remote: None,
                sampling: Sampling::Debug,
            }),
        ),
        ("x".into(), Err(InvalidContext::Sampling)),
        (
            "true".into(),
            Err(InvalidContext::TraceId(IdError::Length {
                expected: 32,
                found: 4,
            })),
        ),
        (String::new(), Err(InvalidContext::Empty)),
        (T.into(), Err(InvalidContext::Truncated)),
        (
            format!("{T}-"),
            Err(InvalidContext::SpanId(IdError::Length {
                expected: 16,
                found: 0,
            })),
        ),
        (format!("{T}-{S}-"), Err(InvalidContext::Sampling)),
        (format!("{T}-{S}--{P}"), Err(InvalidContext::Sampling)),
        (format!("{T}-{S}-2"), Err(InvalidContext::Sampling)),
        (format!("{T}-{S}-11"), Err(InvalidContext::Sampling)),
        (
            format!("{T}-{S}-1-{P}-x"),
            Err(InvalidContext::TrailingData),
        ),
        (
            format!("{T}-{S}-1-{}", &P[1..]),
            Err(InvalidContext::ParentSpanId(IdError::Length {
                expected: 16,
                found: 15,
            })),
        ),
        (
            format!("{}-{S}-1", &T[1..]),
            Err(InvalidContext::TraceId(IdError::Length {
                expected: 32,
                found: 31,
            })),
        ),
        (
            format!("{}-{S}-1", T.to_uppercase()),
            Err(InvalidContext::TraceId(IdError::NotLowerHex)),
        ),
        (
            format!("{}-{S}-1", "0".repeat(32)),
            Err(InvalidContext::TraceId(IdError::Zero)),
        ),
        (
            format!("{T}-{}-1", "0".repeat(16)),
            Err(InvalidContext::SpanId(IdError::Zero)),
        ),
    ];
    for (input, want) in table {
        assert_eq!(parse_b3(input.as_bytes()), want, "{input:?}");
    }
}

#[test]
fn b3_multi_cases() {
    let t64 = "a3ce929d0e0e4736";
    type Want = Option<(Option<RemoteSpan>, Sampling)>;
    let table: Vec<(Vec<(&str, &str)>, Want)> = vec![
        (
            vec![
                ("x-b3-traceid", T),
                ("x-b3-spanid", S),
                ("x-b3-parentspanid", P),
                ("x-b3-sampled", "1"),
            ],
            Some((remote(T, S, Some(P)), Sampling::Accept)),
        ),
        (
            vec![("x-b3-traceid", T), ("x-b3-spanid", S)],
            Some((remote(T, S, None), Sampling::Deferred)),
        ),
        (
            vec![
                ("x-b3-traceid", t64),
                ("x-b3-spanid", S),
                ("x-b3-sampled", "0"),
            ],
            Some((
                remote("0000000000000000a3ce929d0e0e4736", S, None),
                Sampling::Deny,
            )),
        ),
        (
            vec![
                ("x-b3-traceid", T),
                ("x-b3-spanid", S),
                ("x-b3-sampled", "true"),
            ],
            Some((remote(T, S, None), Sampling::Accept)),
        ),
        (
            vec![
                ("x-b3-traceid", T),
                ("x-b3-spanid", S),
                ("x-b3-sampled", "false"),
            ],
            Some((remote(T, S, None), Sampling::Deny)),
        ),
        (
            vec![
                ("x-b3-traceid", T),
                ("x-b3-spanid", S),
                ("x-b3-sampled", "yes"),
            ],
            Some((remote(T, S, None), Sampling::Deferred)),
        ),
        (
            vec![
                ("x-b3-traceid", T),
                ("x-b3-spanid", S),
                ("x-b3-sampled", "0"),
                ("x-b3-flags", "1"),
            ],
            Some((remote(T, S, None), Sampling::Debug)),
        ),
        (vec![("x-b3-flags", "1")], Some((None, Sampling::Debug))),
        (
            vec![("x-b3-flags", "2"), ("x-b3-sampled", "1")],
            Some((None, Sampling::Accept)),
        ),
        // A sampling-only header still carries the decision.
        (vec![("x-b3-sampled", "0")], Some((None, Sampling::Deny))),
        (
            vec![
                ("x-b3-traceid", T),
                ("x-b3-spanid", "xyz"),
                ("x-b3-sampled", "1"),
            ],
            Some((None, Sampling::Accept)),
        ),
        (
            vec![
                ("x-b3-traceid", T),
                ("x-b3-spanid", S),
                ("x-b3-parentspanid", ""),
            ],
            Some((remote(T, S, None), Sampling::Deferred)),
        ),
        (
            vec![
                ("x-b3-traceid", T),
                ("x-b3-spanid", S),
                ("x-b3-parentspanid", "12"),
            ],
            None,
        ),
        (vec![("x-b3-traceid", T)], None),
        (vec![("x-b3-spanid", S)], None),
        (vec![("x-b3-traceid", &T[2..]), ("x-b3-spanid", S)], None),
        (vec![("x-b3-sampled", "maybe")], None),
        (vec![], None),
    ];
    for (pairs, want) in table {
        let got = extract(&headers(&pairs));
        assert_eq!(
            got.as_ref().map(|e| (e.remote, e.sampling)),
            want,
            "{pairs:?}"
        );
        if let Some(e) = got {
            assert_eq!(e.format, Format::B3Multi);
            assert_eq!(e.tracestate, None);
        }
    }
}

#[test]
fn precedence_w3c_then_b3_single_then_multi() {
    let other_t = "11111111111111111111111111111111";
    let other_s = "2222222222222222";
    let tp = format!("00-{T}-{S}-01");
    let bad_tp = format!("00-{T}-{S}-1");
    let b3 = format!("{other_t}-{other_s}-0");
    let all = [
        ("traceparent", tp.as_str()),
        ("b3", b3.as_str()),
        ("x-b3-traceid", other_t),
        ("x-b3-spanid", P),
        ("x-b3-sampled", "0"),
    ];
    let e = extract(&headers(&all)).unwrap();
    assert_eq!(
        (e.format, e.remote, e.sampling),
        (Format::TraceContext, remote(T, S, None), Sampling::Accept)
    );

    let mut rest = all;
    rest[0].1 = &bad_tp;
    let e = extract(&headers(&rest)).unwrap();
    assert_eq!(
        (e.format, e.remote, e.sampling),
        (
            Format::B3Single,
            remote(other_t, other_s, None),
            Sampling::Deny
        )
    );

    rest[1].1 = "garbage";
    let e = extract(&headers(&rest)).unwrap();
    assert_eq!(
        (e.format, e.remote, e.sampling),
        (Format::B3Multi, remote(other_t, P, None), Sampling::Deny)
    );

    // A valid sampling-only b3 header wins over the multi headers' ids.
    rest[1].1 = "1";
    let e = extract(&headers(&rest)).unwrap();
    assert_eq!(
        (e.format, e.remote, e.sampling),
        (Format::B3Single, None, Sampling::Accept)
    );

    // A repeated traceparent is absent: the B3 context applies.
    let e = extract(&headers(&[
        ("traceparent", &tp),
        ("traceparent", &tp),
        ("b3", &b3),
    ]))
    .unwrap();
    assert_eq!(e.format, Format::B3Single);
    assert_eq!(extract(&headers(&[("x-request-id", "abc")])), None);
}

fn context(sampled: bool, debug: bool, tracestate: Option<&str>) -> SpanContext {
    SpanContext {
        trace_id: tid(T),
        span_id: sid(S),
        sampled,
        debug,
        tracestate: tracestate.map(|v| HeaderValue::from_str(v).unwrap()),
    }
}

fn values(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[test]
fn inject_writes_every_format_and_replaces_previous_values() {
    let mut h = headers(&[
        (
            "traceparent",
            "00-11111111111111111111111111111111-2222222222222222-00",
        ),
        ("traceparent", "garbage"),
        ("tracestate", "old=1"),
        ("b3", "0"),
        ("x-b3-traceid", "1111111111111111"),
        ("x-b3-spanid", "2222222222222222"),
        ("x-b3-parentspanid", "3333333333333333"),
        ("x-b3-sampled", "0"),
        ("x-b3-flags", "1"),
        ("x-request-id", "kept"),
    ]);
    inject(&context(true, false, None), None, &mut h);
    assert_eq!(values(&h, "traceparent"), [format!("00-{T}-{S}-01")]);
    assert_eq!(values(&h, "tracestate"), Vec::<String>::new());
    assert_eq!(values(&h, "b3"), [format!("{T}-{S}-1")]);
    assert_eq!(values(&h, "x-b3-traceid"), [T]);
    assert_eq!(values(&h, "x-b3-spanid"), [S]);
    assert_eq!(values(&h, "x-b3-parentspanid"), Vec::<String>::new());
    assert_eq!(values(&h, "x-b3-sampled"), ["1"]);
    assert_eq!(values(&h, "x-b3-flags"), Vec::<String>::new());
    assert_eq!(values(&h, "x-request-id"), ["kept"]);

    inject(
        &context(false, false, Some("congo=t61rcWkgMzE")),
        Some(sid(P)),
        &mut h,
    );
    assert_eq!(values(&h, "traceparent"), [format!("00-{T}-{S}-00")]);
    assert_eq!(values(&h, "tracestate"), ["congo=t61rcWkgMzE"]);
    assert_eq!(values(&h, "b3"), [format!("{T}-{S}-0-{P}")]);
    assert_eq!(values(&h, "x-b3-parentspanid"), [P]);
    assert_eq!(values(&h, "x-b3-sampled"), ["0"]);

    // Debug: `d`, `x-b3-flags: 1` without `x-b3-sampled`, sampled in W3C.
    inject(&context(true, true, None), Some(sid(P)), &mut h);
    assert_eq!(values(&h, "traceparent"), [format!("00-{T}-{S}-01")]);
    assert_eq!(values(&h, "b3"), [format!("{T}-{S}-d-{P}")]);
    assert_eq!(values(&h, "x-b3-flags"), ["1"]);
    assert_eq!(values(&h, "x-b3-sampled"), Vec::<String>::new());
}

#[test]
fn start_continues_or_roots_the_trace() {
    let mut ids = IdGenerator::from_seed(3);
    let tp = format!("00-{T}-{S}-01");
    let h = headers(&[("traceparent", &tp), ("tracestate", "a=1")]);
    let e = extract(&h);
    let d = Sampler::new(0.0).decide(&SamplingInput::from_headers(&h, e.as_ref()));
    let (span, parent) = SpanContext::start(e.as_ref(), &d, &mut ids);
    assert_eq!(span.trace_id, tid(T));
    assert_ne!(span.span_id, sid(S));
    assert_eq!(parent, Some(sid(S)));
    assert!(span.sampled);
    assert!(!span.debug);
    assert_eq!(span.tracestate, Some(HeaderValue::from_static("a=1")));

    let child = span.child(&mut ids);
    assert_eq!(
        (child.trace_id, child.sampled, &child.tracestate),
        (span.trace_id, true, &span.tracestate)
    );
    assert_ne!(child.span_id, span.span_id);

    // b3: d alone: a new root, sampled and debug.
    let h = headers(&[("b3", "d")]);
    let e = extract(&h);
    let d = Sampler::new(0.0).decide(&SamplingInput::from_headers(&h, e.as_ref()));
    let (span, parent) = SpanContext::start(e.as_ref(), &d, &mut ids);
    assert_eq!(parent, None);
    assert_ne!(span.trace_id, tid(T));
    assert!(span.sampled && span.debug);

    // Nothing: a new root as decided.
    let none = SamplingDecision {
        sampled: false,
        debug: false,
        reason: TraceReason::NotTraceable,
        pack: false,
    };
    let (span, parent) = SpanContext::start(None, &none, &mut ids);
    assert_eq!(parent, None);
    assert!(!span.sampled);
    assert_eq!(span.tracestate, None);
}

fn uuid(prefix: &str, nibble: char) -> String {
    let mut id = format!("{prefix}-0000-4000-8000-000000000000");
    id.replace_range(14..15, &nibble.to_string());
    id
}

#[test]
fn sampling_cases() {
    let id99 = uuid("00000063", '4'); // 99 % 10 000 = 99 < 100: sampled at 1 %
    let id100 = uuid("00000064", '4');
    let id10099 = uuid("00002773", '4'); // 10 099 % 10 000 = 99
    let id10100 = uuid("00002774", '4');
    let marked9 = uuid("00000064", '9');
    let markeda = uuid("00000064", 'a');
    let upper = uuid("0000006A", '4'); // 106
    let id0 = uuid("00000000", '4');
    let id9999 = uuid("0000270f", '4');
    struct Case<'a> {
        sampler: Sampler,
        incoming: Sampling,
        id: Option<&'a str>,
        force: bool,
        client: bool,
        want: (bool, bool, TraceReason),
        packed: Option<char>,
    }
    let one = Sampler::new(1.0);
    let c = |sampler, incoming, id, force, client, want, packed| Case {
        sampler,
        incoming,
        id,
        force,
        client,
        want,
        packed,
    };
    use Sampling::{Accept, Debug, Deferred, Deny};
    use TraceReason::{ClientForced, NotTraceable, ServiceForced};
    const SAMPLED: TraceReason = TraceReason::Sampling;
    let table = [
        c(
            one,
            Deferred,
            None,
            false,
            false,
            (false, false, NotTraceable),
            None,
        ),
        c(
            one,
            Deferred,
            Some(id99.as_str()),
            false,
            false,
            (true, false, SAMPLED),
            Some('9'),
        ),
        c(
            one,
            Deferred,
            Some(id100.as_str()),
            false,
            false,
            (false, false, NotTraceable),
            None,
        ),
        c(
            one,
            Deferred,
            Some(id10099.as_str()),
            false,
            false,
            (true, false, SAMPLED),
            Some('9'),
        ),
        c(
            one,
            Deferred,
            Some(id10100.as_str()),
            false,
            false,
            (false, false, NotTraceable),
            None,
        ),
        c(
            one,
            Deferred,
            Some(upper.as_str()),
            false,
            false,
            (false, false, NotTraceable),
            None,
        ),
        c(
            one,
            Deferred,
            Some(id100.as_str()),
            true,
            false,
            (true, false, ServiceForced),
            Some('a'),
        ),
        c(
            one,
            Deferred,
            Some(id100.as_str()),
            true,
            true,
            (true, false, ClientForced),
            Some('b'),
        ),
        c(
            one,
            Deferred,
            Some(id100.as_str()),
            false,
            true,
            (true, false, ClientForced),
            Some('b'),
        ),
        // A reason already recorded stands and is not rewritten.
        c(
            one,
            Deferred,
            Some(marked9.as_str()),
            false,
            false,
            (true, false, SAMPLED),
            None,
        ),
        c(
            Sampler::new(0.0),
            Deferred,
            Some(markeda.as_str()),
            false,
            true,
            (true, false, ServiceForced),
            None,
        ),
        // An incoming decision wins; the request id still records its reason.
        c(
            one,
            Deny,
            Some(id99.as_str()),
            true,
            false,
            (false, false, ServiceForced),
            Some('a'),
        ),
        c(
            one,
            Accept,
            Some(id100.as_str()),
            false,
            false,
            (true, false, NotTraceable),
            None,
        ),
        c(
            one,
            Debug,
            None,
            false,
            false,
            (true, true, NotTraceable),
            None,
        ),
        // A request id Envoy cannot read traces nothing, not even forced.
        c(
            one,
            Deferred,
            Some("zzzzzzzz-0000-4000-8000-000000000000"),
            true,
            false,
            (false, false, NotTraceable),
            None,
        ),
        c(
            one,
            Deferred,
            Some("abc"),
            true,
            true,
            (false, false, NotTraceable),
            None,
        ),
        // Not a UUID but readable: sampled, nothing to pack into.
        c(
            one,
            Deferred,
            Some("00000063"),
            false,
            false,
            (true, false, SAMPLED),
            None,
        ),
        c(
            Sampler::new(0.0),
            Deferred,
            Some(id0.as_str()),
            false,
            false,
            (false, false, NotTraceable),
            None,
        ),
        c(
            Sampler::new(100.0),
            Deferred,
            Some(id9999.as_str()),
            false,
            false,
            (true, false, SAMPLED),
            Some('9'),
        ),
        // useRequestIdForTraceSampling: false — the tracer's decision, i.e. sampled.
        c(
            one.use_request_id(false),
            Deferred,
            None,
            false,
            false,
            (true, false, SAMPLED),
            None,
        ),
        c(
            one.use_request_id(false),
            Deferred,
            Some(id100.as_str()),
            false,
            false,
            (true, false, SAMPLED),
            None,
        ),
        c(
            one.use_request_id(false),
            Deny,
            Some(id99.as_str()),
            false,
            false,
            (false, false, SAMPLED),
            None,
        ),
    ];
    for (i, case) in table.iter().enumerate() {
        let input = SamplingInput {
            incoming: case.incoming,
            request_id: case.id.map(str::as_bytes),
            force_trace: case.force,
            client_trace_id: case.client,
        };
        let d = case.sampler.decide(&input);
        assert_eq!((d.sampled, d.debug, d.reason), case.want, "case {i}");
        let packed = case.id.and_then(|id| d.request_id(id.as_bytes()));
        let want = case.packed.map(|n| {
            let mut id = case.id.unwrap().to_string();
            id.replace_range(14..15, &n.to_string());
            id
        });
        assert_eq!(
            packed.map(|v| v.to_str().unwrap().to_string()),
            want,
            "case {i}"
        );
        // Same input, same decision.
        assert_eq!(case.sampler.decide(&input), d, "case {i}");
    }
}

#[test]
fn sampling_input_from_headers() {
    let h = headers(&[
        ("x-request-id", "00000063-0000-4000-8000-000000000000"),
        ("x-envoy-force-trace", "true"),
        ("x-client-trace-id", "abc"),
        ("b3", "0"),
    ]);
    let e = extract(&h);
    let input = SamplingInput::from_headers(&h, e.as_ref());
    assert_eq!(
        input,
        SamplingInput {
            incoming: Sampling::Deny,
            request_id: Some(b"00000063-0000-4000-8000-000000000000"),
            force_trace: true,
            client_trace_id: true,
        }
    );
    assert_eq!(
        SamplingInput::from_headers(&HeaderMap::new(), None),
        SamplingInput::default()
    );
}

#[test]
fn sampling_percentages_as_envoy_counts_them() {
    let table = [
        (0.0, 0),
        (0.01, 1),
        (0.05, 5),
        // Envoy truncates `10000 × (p / 100)`: 28.999… → 28.
        (0.29, 28),
        (DEFAULT_RANDOM_SAMPLING_PERCENTAGE, 100),
        (10.0, 1000),
        (33.33, 3333),
        (50.0, 5000),
        (100.0, 10_000),
        (150.0, 10_000),
        (-5.0, 0),
        (f64::NAN, 0),
        (f64::INFINITY, 10_000),
    ];
    for (p, want) in table {
        assert_eq!(Sampler::new(p).per_ten_thousand(), want, "{p}");
    }
    assert_eq!(Sampler::default(), Sampler::new(1.0));
    assert_eq!(DEFAULT_RANDOM_SAMPLING_PERCENTAGE, 1.0);
}

/// 10 000 generated request ids: the sampled share is within 4 standard deviations of
/// the percentage (σ = √(n·p·(1−p)): 10, 30 and 50 requests).
#[test]
fn sampled_share_of_generated_request_ids() {
    let mut ids = IdGenerator::from_seed(0x5eed);
    let request_ids: Vec<HeaderValue> = (0..10_000).map(|_| ids.request_id()).collect();
    for (percent, expected, tolerance) in [(1.0, 100, 40), (10.0, 1000, 120), (50.0, 5000, 200)] {
        let sampler = Sampler::new(percent);
        let sampled = request_ids
            .iter()
            .filter(|id| {
                let input = SamplingInput {
                    request_id: Some(id.as_bytes()),
                    ..SamplingInput::default()
                };
                let d = sampler.decide(&input);
                assert_eq!(sampler.decide(&input), d);
                d.sampled
            })
            .count();
        assert!(
            sampled.abs_diff(expected) <= tolerance,
            "{percent} %: {sampled} of 10 000 sampled, expected {expected} ± {tolerance}"
        );
    }
}

#[test]
fn request_id_reason_and_integer() {
    assert_eq!(
        request_id_reason(uuid("12345678", '4').as_bytes()),
        TraceReason::NotTraceable
    );
    assert_eq!(
        request_id_reason(uuid("12345678", '9').as_bytes()),
        TraceReason::Sampling
    );
    assert_eq!(
        request_id_reason(uuid("12345678", 'a').as_bytes()),
        TraceReason::ServiceForced
    );
    assert_eq!(
        request_id_reason(uuid("12345678", 'b').as_bytes()),
        TraceReason::ClientForced
    );
    assert_eq!(
        request_id_reason(uuid("12345678", 'A').as_bytes()),
        TraceReason::NotTraceable
    );
    assert_eq!(request_id_reason(b"short-9"), TraceReason::NotTraceable);
    assert_eq!(request_id_integer(b"0000ffFF-rest"), Some(0xffff));
    assert_eq!(request_id_integer(b"ffffffff"), Some(0xffff_ffff));
    assert_eq!(request_id_integer(b"fffffff"), None);
    assert_eq!(request_id_integer(b"+fffffff"), None);
}

#[test]
fn id_generator_is_deterministic_per_seed_and_never_zero() {
    let mut a = IdGenerator::from_seed(9);
    let mut b = IdGenerator::from_seed(9);
    let mut c = IdGenerator::from_seed(10);
    let (ta, tb, tc) = (a.trace_id(), b.trace_id(), c.trace_id());
    assert_eq!(ta, tb);
    assert_ne!(ta, tc);
    assert_eq!(a.span_id(), b.span_id());
    assert_eq!(a.request_id(), b.request_id());

    let mut seen = std::collections::HashSet::new();
    for _ in 0..1000 {
        assert!(seen.insert(a.trace_id()));
        assert!(seen.len() <= 1000);
    }
    for _ in 0..100 {
        let id = a.request_id();
        let id = id.to_str().unwrap();
        assert_eq!(id.len(), 36, "{id}");
        for (i, ch) in id.char_indices() {
            match i {
                8 | 13 | 18 | 23 => assert_eq!(ch, '-', "{id}"),
                14 => assert_eq!(ch, '4', "{id}"),
                19 => assert!("89ab".contains(ch), "{id}"),
                _ => assert!(ch.is_ascii_digit() || ('a'..='f').contains(&ch), "{id}"),
            }
        }
        assert_eq!(request_id_reason(id.as_bytes()), TraceReason::NotTraceable);
    }
    assert_ne!(random_trace_id(), random_trace_id());
    assert_ne!(random_span_id(), random_span_id());
    assert_ne!(random_request_id(), random_request_id());
    let os = IdGenerator::from_os().trace_id();
    assert_ne!(os, IdGenerator::from_os().trace_id());
}

#[test]
fn span_names_as_istio_sets_them() {
    let reviews = "reviews.default.svc.cluster.local";
    let productpage = "productpage.default.svc.cluster.local";
    assert_eq!(
        default_route_operation(reviews, 9080),
        "reviews.default.svc.cluster.local:9080/*"
    );
    assert_eq!(default_route_operation("::1", 80), "[::1]:80/*");
    let table = [
        (
            None,
            Some((reviews, 9080)),
            "reviews",
            9080,
            "reviews.default.svc.cluster.local:9080/*",
        ),
        (
            Some(RoutePath::Exact("/productpage")),
            Some((productpage, 9080)),
            "bookinfo",
            80,
            "productpage.default.svc.cluster.local:9080/productpage",
        ),
        (
            Some(RoutePath::Prefix("/static")),
            Some((productpage, 9080)),
            "bookinfo",
            80,
            "productpage.default.svc.cluster.local:9080/static*",
        ),
        (
            Some(RoutePath::Prefix("/")),
            Some((productpage, 9080)),
            "bookinfo",
            80,
            "productpage.default.svc.cluster.local:9080/*",
        ),
        (
            Some(RoutePath::Regex("^/api/v1/products.*")),
            Some((productpage, 9080)),
            "bookinfo",
            80,
            "productpage.default.svc.cluster.local:9080^/api/v1/products.*",
        ),
        // Weighted destinations: the VirtualService's name and the listener's port.
        (None, None, "reviews", 9080, "reviews:9080/*"),
        (
            Some(RoutePath::Exact("/login")),
            None,
            "bookinfo",
            8080,
            "bookinfo:8080/login",
        ),
    ];
    for (path, dest, vs, port, want) in table {
        assert_eq!(route_operation(path, dest, vs, port), want);
    }

    let op = "reviews.default.svc.cluster.local:9080/*";
    let propagated = HeaderValue::from_static("reviews:9080/*");
    let empty = HeaderValue::from_static("");
    use Direction::*;
    assert_eq!(span_name(Outbound, Some(op), None, "reviews:9080"), op);
    assert_eq!(
        span_name(Outbound, None, Some(&propagated), "reviews:9080"),
        "egress reviews:9080"
    );
    assert_eq!(
        span_name(Inbound, Some(op), Some(&propagated), "reviews:9080"),
        "reviews:9080/*"
    );
    assert_eq!(
        span_name(Inbound, Some(op), Some(&empty), "reviews:9080"),
        op
    );
    assert_eq!(span_name(Inbound, Some(op), None, "reviews:9080"), op);
    assert_eq!(span_name(Inbound, None, None, "reviews:9080"), "ingress");
    assert_eq!(
        upstream_span_name("outbound|9080||reviews.default.svc.cluster.local"),
        "router outbound|9080||reviews.default.svc.cluster.local egress"
    );
}

#[test]
fn tag_names() {
    assert_eq!(
        [
            tag::GUID_X_REQUEST_ID,
            tag::UPSTREAM_CLUSTER_NAME,
            tag::ISTIO_CANONICAL_SERVICE,
            tag::HTTP_STATUS_CODE
        ],
        [
            "guid:x-request-id",
            "upstream_cluster.name",
            "istio.canonical_service",
            "http.status_code"
        ]
    );
}

/// Every header this module writes.
const PROPAGATION: [&str; 8] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

fn only(h: &HeaderMap, names: &[&str]) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (k, v) in h {
        if names.contains(&k.as_str()) {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

fn arb_span() -> impl Strategy<Value = (SpanContext, Option<SpanId>)> {
    let tracestate = proptest::option::of(proptest::collection::btree_map(
        "[a-z][a-z0-9_*/-]{0,8}",
        "[!-+.-<>-~-]{1,12}",
        1..6,
    ));
    (
        any::<u128>(),
        any::<u64>(),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(any::<u64>()),
        tracestate,
    )
        .prop_map(|(t, s, sampled, debug, parent, state)| {
            let state = state.map(|m| {
                let joined = m
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",");
                HeaderValue::from_str(&joined).unwrap()
            });
            (
                SpanContext {
                    trace_id: TraceId::new(t.max(1)).unwrap(),
                    span_id: SpanId::new(s.max(1)).unwrap(),
                    sampled: sampled || debug,
                    debug,
                    tracestate: state,
                },
                parent.and_then(SpanId::new),
            )
        })
}

fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[0-9a-fA-F dtruefals\t=,@-]{0,80}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..80),
    ]
}

proptest::proptest! {
    #![proptest_config(ProptestConfig {
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x7ace),
        failure_persistence: None,
        cases: 1000,
        ..ProptestConfig::default()
    })]

    /// inject then extract gives the context back, from each format alone and from all.
    #[test]
    fn inject_then_extract_round_trips((span, parent) in arb_span()) {
        let mut h = HeaderMap::new();
        inject(&span, parent, &mut h);
        let sampling = if span.debug { Sampling::Debug } else if span.sampled { Sampling::Accept } else { Sampling::Deny };

        let w3c = extract(&only(&h, &["traceparent", "tracestate"])).unwrap();
        prop_assert_eq!(w3c.format, Format::TraceContext);
        prop_assert_eq!(w3c.remote, Some(RemoteSpan { trace_id: span.trace_id, span_id: span.span_id, parent_span_id: None }));
        prop_assert_eq!(w3c.sampled(), Some(span.sampled));
        prop_assert_eq!(&w3c.tracestate, &span.tracestate);

        let b3_remote = Some(RemoteSpan { trace_id: span.trace_id, span_id: span.span_id, parent_span_id: parent });
        let single = extract(&only(&h, &["b3"])).unwrap();
        prop_assert_eq!((single.format, single.remote, single.sampling), (Format::B3Single, b3_remote, sampling));
        let multi = extract(&only(&h, &PROPAGATION[3..])).unwrap();
        prop_assert_eq!((multi.format, multi.remote, multi.sampling), (Format::B3Multi, b3_remote, sampling));

        prop_assert_eq!(extract(&h), Some(w3c.clone()));

        // Injecting again over the result changes nothing.
        let mut again = h.clone();
        inject(&span, parent, &mut again);
        prop_assert_eq!(&again, &h);
    }

    /// Injection over any previous trace headers leaves one consistent context.
    #[test]
    fn inject_replaces_any_previous_context(
        (span, parent) in arb_span(),
        previous in proptest::collection::vec((0..PROPAGATION.len(), "[0-9a-f-]{1,70}"), 0..12),
    ) {
        let mut clean = HeaderMap::new();
        inject(&span, parent, &mut clean);
        let mut h = HeaderMap::new();
        for (i, v) in &previous {
            h.append(PROPAGATION[*i], HeaderValue::from_str(v).unwrap());
        }
        inject(&span, parent, &mut h);
        prop_assert_eq!(h, clean);
    }

    /// Extraction never panics on arbitrary header bytes.
    #[test]
    fn extract_never_panics(values in proptest::collection::vec((0..PROPAGATION.len(), arb_bytes()), 0..12)) {
        let mut h = HeaderMap::new();
        for (i, bytes) in &values {
            let _ = parse_traceparent(bytes);
            let _ = parse_b3(bytes);
            let _ = request_id_integer(bytes);
            if let Ok(v) = HeaderValue::from_bytes(bytes) {
                h.append(PROPAGATION[*i], v);
            }
        }
        if let Some(e) = extract(&h) {
            prop_assert!(e.remote.is_some() || e.sampling != Sampling::Deferred);
            prop_assert!(e.tracestate.is_none() || e.format == Format::TraceContext);
        }
    }

    /// A valid context with one byte of one header changed: the other formats are read as
    /// before, and a changed `traceparent` is either still valid or gives way to `b3`.
    #[test]
    fn one_corrupted_header_falls_back_to_the_others(
        (span, parent) in arb_span(),
        at in any::<usize>(),
        byte in any::<u8>(),
        which in 0..PROPAGATION.len(),
    ) {
        let mut clean = HeaderMap::new();
        inject(&span, parent, &mut clean);
        let w3c = extract(&clean).unwrap();
        let b3 = extract(&only(&clean, &["b3"])).unwrap();
        let mut h = clean.clone();
        let mut changed = false;
        if let Some(v) = clean.get(PROPAGATION[which]) {
            let mut bytes = v.as_bytes().to_vec();
            let i = at % bytes.len();
            changed = bytes[i] != byte;
            bytes[i] = byte;
            match HeaderValue::from_bytes(&bytes) {
                Ok(v) => {
                    h.insert(PROPAGATION[which], v);
                }
                Err(_) => changed = false,
            }
        }
        let e = extract(&h).unwrap();
        match PROPAGATION[which] {
            "traceparent" if changed => {
                if e.format == Format::TraceContext {
                    // Still a valid traceparent (a changed hex digit or flag bit).
                    prop_assert_eq!(e.remote.map(|r| r.parent_span_id), Some(None));
                } else {
                    prop_assert_eq!(e, b3);
                }
            }
            "tracestate" if changed => {
                prop_assert_eq!((e.format, e.remote, e.sampling), (w3c.format, w3c.remote, w3c.sampling));
                prop_assert!(e.tracestate.is_none() || e.tracestate.as_ref() == h.get("tracestate"));
            }
            _ => prop_assert_eq!(e, w3c),
        }
    }
}

#[test]
fn w3c_only_injection_drops_stale_b3_headers() {
    let mut ids = IdGenerator::from_seed(7);
    let span = SpanContext {
        trace_id: ids.trace_id(),
        span_id: ids.span_id(),
        sampled: true,
        debug: false,
        tracestate: None,
    };
    let mut h = HeaderMap::new();
    h.insert(
        "x-b3-traceid",
        HeaderValue::from_static("463ac35c9f6413ad48485a3953bb6124"),
    );
    h.insert("x-b3-spanid", HeaderValue::from_static("a2fb4a1d1a96d312"));
    h.insert("b3", HeaderValue::from_static("0"));
    h.insert("user-agent", HeaderValue::from_static("kept"));
    inject_formats(&span, None, false, &mut h);
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(h["user-agent"], "kept");
    let back = extract(&h).expect("a context");
    assert_eq!(back.format, Format::TraceContext);
    assert_eq!(back.remote.map(|r| r.span_id), Some(span.span_id));
    // With B3 asked for, every format is written and all agree.
    inject_formats(&span, None, true, &mut h);
    for read in [extract_trace_context, extract_b3_single, extract_b3_multi] {
        let r = read(&h).expect("each format");
        assert_eq!(
            r.remote.map(|r| (r.trace_id, r.span_id)),
            Some((span.trace_id, span.span_id))
        );
    }
}

/// Besides [`PROPAGATION`], the names the scan looks for, near misses of them, and other
/// headers.
const SCANNED_TOO: [&str; 8] = [
    "x-request-id",
    "x-envoy-force-trace",
    "x-client-trace-id",
    "host",
    "baggage",
    "x-b3",
    "traceparentx",
    "x-",
];

/// A map of `pairs` of an index into [`PROPAGATION`] then [`SCANNED_TOO`], and a value.
fn scanned(pairs: &[(usize, String)]) -> HeaderMap {
    let names: Vec<&str> = PROPAGATION.iter().chain(&SCANNED_TOO).copied().collect();
    let mut h = HeaderMap::new();
    for (i, v) in pairs {
        h.append(names[*i], HeaderValue::from_str(v).unwrap());
    }
    h
}

const SCANNED_LEN: usize = PROPAGATION.len() + SCANNED_TOO.len();

/// Values that parse in some format, and some that do not.
fn arb_scanned_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(format!("00-{T}-{S}-01")),
        Just(format!("00-{T}-{S}-00")),
        Just(format!("{T}-{S}-1-{P}")),
        Just(T.to_string()),
        Just(S.to_string()),
        Just("1".to_string()),
        Just("0".to_string()),
        Just("congo=t61rcWkgMzE".to_string()),
        Just("84961386-6d84-429d-98bd-c5aee93b5c88".to_string()),
        "[0-9a-z=,-]{0,40}",
    ]
}

proptest::proptest! {
    #![proptest_config(ProptestConfig {
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5ca9),
        failure_persistence: None,
        cases: 2000,
        ..ProptestConfig::default()
    })]

    /// Ids are written as `format!` writes them, and a generated request ID is a UUID v4
    /// in lowercase text.
    #[test]
    fn ids_are_written_as_format_writes_them(v in proptest::num::u128::ANY, seed in proptest::num::u64::ANY) {
        let mut out32 = [0u8; 32];
        super::write_hex(&mut out32, v);
        prop_assert_eq!(std::str::from_utf8(&out32).unwrap(), format!("{v:032x}"));
        let mut out16 = [0u8; 16];
        super::write_hex(&mut out16, v);
        prop_assert_eq!(std::str::from_utf8(&out16).unwrap(), format!("{:016x}", v as u64));
        let id = IdGenerator::from_seed(seed).request_id();
        let text = id.to_str().unwrap();
        prop_assert_eq!(text.len(), 36);
        for (i, c) in text.char_indices() {
            match i {
                8 | 13 | 18 | 23 => prop_assert_eq!(c, '-'),
                14 => prop_assert_eq!(c, '4'),
                19 => prop_assert!(matches!(c, '8' | '9' | 'a' | 'b'), "variant {}", c),
                _ => prop_assert!(matches!(c, '0'..='9' | 'a'..='f'), "digit {}", c),
            }
        }
    }

    /// One pass over the headers finds what a lookup of each name finds, and reads the
    /// context as reading each format by its lookups does.
    #[test]
    fn the_scan_agrees_with_lookups(
        pairs in proptest::collection::vec((0..SCANNED_LEN, arb_scanned_value()), 0..14),
    ) {
        let h = scanned(&pairs);
        let found = TraceHeaders::scan(&h);
        let get = |n: &str| h.get(n);
        let count = |n: &str| u8::try_from(h.get_all(n).iter().count().min(2)).unwrap();
        prop_assert_eq!(found.request_id(), get("x-request-id"));
        prop_assert_eq!(found.has_b3(), h.contains_key("b3") || h.contains_key("x-b3-traceid"));
        prop_assert_eq!(
            found.has_any_b3(),
            ["b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags"]
                .iter()
                .any(|n| h.contains_key(*n))
        );
        let carried = found.carried();
        prop_assert_eq!(
            (carried.traceparent, carried.tracestates, carried.request_ids),
            (count("traceparent"), count("tracestate"), count("x-request-id"))
        );
        let input = found.sampling_input(None);
        prop_assert_eq!(input.request_id, get("x-request-id").map(HeaderValue::as_bytes));
        prop_assert_eq!(input.force_trace, h.contains_key("x-envoy-force-trace"));
        prop_assert_eq!(input.client_trace_id, h.contains_key("x-client-trace-id"));

        // The reference: each format read through lookups, in the documented precedence.
        let w3c = (h.get_all("traceparent").iter().count() == 1)
            .then(|| parse_traceparent(h["traceparent"].as_bytes()).ok())
            .flatten()
            .map(|tp| Extracted {
                format: Format::TraceContext,
                remote: Some(RemoteSpan { trace_id: tp.trace_id, span_id: tp.parent_id, parent_span_id: None }),
                sampling: if tp.sampled() { Sampling::Accept } else { Sampling::Deny },
                tracestate: parse_tracestate(h.get_all("tracestate")),
            });
        let single = get("b3").and_then(|v| parse_b3(v.as_bytes()).ok()).map(|b| Extracted {
            format: Format::B3Single,
            remote: b.remote,
            sampling: b.sampling,
            tracestate: None,
        });
        let first = |n: &str| get(n).map(|v| trim_ows(v.as_bytes()));
        let sampling = if first("x-b3-flags") == Some(&b"1"[..]) {
            Sampling::Debug
        } else {
            match first("x-b3-sampled") {
                Some(b"1" | b"true") => Sampling::Accept,
                Some(b"0" | b"false") => Sampling::Deny,
                _ => Sampling::Deferred,
            }
        };
        let ids = (|| {
            let trace_id = TraceId::from_b3_hex(first("x-b3-traceid")?).ok()?;
            let span_id = SpanId::from_hex(first("x-b3-spanid")?).ok()?;
            let parent_span_id = match first("x-b3-parentspanid") {
                None | Some([]) => None,
                Some(p) => b3_parent(p).ok()?,
            };
            Some(RemoteSpan { trace_id, span_id, parent_span_id })
        })();
        let multi = (ids.is_some() || sampling != Sampling::Deferred).then_some(Extracted {
            format: Format::B3Multi,
            remote: ids,
            sampling,
            tracestate: None,
        });
        prop_assert_eq!(found.extract(), w3c.or(single).or(multi));
    }

    /// Writing over the headers a scan found gives what writing over unknown headers
    /// gives, in W3C alone and in every format.
    #[test]
    fn inject_over_what_was_found_is_inject(
        (span, parent) in arb_span(),
        b3 in any::<bool>(),
        pairs in proptest::collection::vec((0..SCANNED_LEN, arb_scanned_value()), 0..14),
    ) {
        let mut h = scanned(&pairs);
        let carried = TraceHeaders::scan(&h).carried();
        let mut known = h.clone();
        inject_over(&span, parent, b3, carried, &mut known);
        inject_formats(&span, parent, b3, &mut h);
        prop_assert_eq!(known, h);
    }
}

#[test]
fn replacing_a_header_in_a_full_map_keeps_its_other_headers() {
    // hyper sizes a parsed request's map to its headers: three fill a map of capacity 3.
    let mut h = HeaderMap::with_capacity(3);
    h.append("host", HeaderValue::from_static("reviews:9080"));
    h.append("traceparent", HeaderValue::from_static("old"));
    h.append("x-request-id", HeaderValue::from_static("id"));
    let capacity = h.capacity();
    replace_header(&mut h, &TRACEPARENT, HeaderValue::from_static("new"), 1);
    assert_eq!(h.capacity(), capacity, "replaced in place, no regrowth");
    assert_eq!(h["traceparent"], "new");
    assert_eq!(
        (h.len(), &h["host"], &h["x-request-id"]),
        (
            3,
            &HeaderValue::from_static("reviews:9080"),
            &HeaderValue::from_static("id")
        )
    );
    // Two values: both replaced by one.
    h.append("traceparent", HeaderValue::from_static("second"));
    replace_header(&mut h, &TRACEPARENT, HeaderValue::from_static("only"), 2);
    assert_eq!(
        h.get_all("traceparent").iter().collect::<Vec<_>>(),
        ["only"]
    );
    // None: added.
    replace_header(&mut h, &X_B3_FLAGS, HeaderValue::from_static("1"), 0);
    assert_eq!(h["x-b3-flags"], "1");
}
