//! The greeter example end to end on 127.0.0.1: the example's own configuration
//! (`config/`), its workloads on ephemeral ports, tonic clients calling through the mesh.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use greeter::pb::{HelloRequest, SetGreetingRequest};
use greeter::run::{Options, Running, start};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::Code;

const CLIENT: &str = "cluster.local/ns/default/sa/client";

/// The example, as `cargo run -p greeter` starts it, its two workloads listening on
/// ephemeral ports (their WorkloadEntries rewritten to match).
async fn greeter() -> Running {
    let mut opts = Options::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config"));
    for name in ["greeter-v1", "greeter-v2"] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        opts.listeners.insert(name.into(), listener);
    }
    let running = start(opts).await.unwrap();
    assert_eq!(running.workloads.len(), 2);
    for w in &running.workloads {
        assert!(w.addr.ip().is_loopback(), "{:?}", w.addr);
        assert!(!w.spec.addr.ends_with(":50061") && !w.spec.addr.ends_with(":50062"));
        assert_eq!(
            w.spec.addr,
            w.addr.to_string(),
            "the registry says where it listens"
        );
    }
    running
}

fn hello(name: &str) -> HelloRequest {
    HelloRequest { name: name.into() }
}

fn calls(running: &Running, version: &str) -> u32 {
    running.greeter(version).unwrap().calls()
}

#[tokio::test]
async fn routes_by_the_methods_path_over_mutual_tls() {
    let running = greeter().await;
    let mut client = running.client("client");

    let reply = client.say_hello(hello("world")).await.unwrap().into_inner();
    assert_eq!(
        reply.message,
        format!("Hello, world! (greeter v1, caller {CLIENT})")
    );
    let reply = client
        .say_goodbye(hello("world"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.message,
        format!("Goodbye, world! (greeter v2, caller {CLIENT})")
    );
    // Every method but SayGoodbye goes to v1; one call each, no retry.
    for _ in 0..3 {
        client.say_hello(hello("again")).await.unwrap();
    }
    assert_eq!((calls(&running, "v1"), calls(&running, "v2")), (4, 1));
    running.shutdown().await;
}

#[tokio::test]
async fn retries_a_call_answered_unavailable() {
    let running = greeter().await;
    let mut client = running.client("client");
    let v1 = running.greeter("v1").unwrap().clone();

    // The first attempt gets grpc-status 14; the mesh tries again (the request body,
    // tonic's stream, is replayed) and the client sees only the answer.
    v1.fail_next(1);
    let reply = client.say_hello(hello("retry")).await.unwrap().into_inner();
    assert_eq!(
        reply.message,
        format!("Hello, retry! (greeter v1, caller {CLIENT})")
    );
    assert_eq!(v1.calls(), 2, "one failed attempt, one retry");

    // `attempts: 3`: the first attempt and three retries, then the last answer is the
    // caller's.
    v1.fail_next(10);
    let status = client.say_hello(hello("retry")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "greeter v1 is warming up");
    assert_eq!(v1.calls(), 2 + 4);
    running.shutdown().await;
}

#[tokio::test]
async fn authorization_policies_on_the_principal_and_the_method() {
    let running = greeter().await;

    // Not `client`: the ALLOW policy matches nothing, the call is denied before the
    // application, as Envoy denies a gRPC call (grpc-status 7).
    let mut intruder = running.client("intruder");
    for result in [
        intruder.say_hello(hello("world")).await,
        intruder.say_goodbye(hello("world")).await,
    ] {
        let status = result.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert_eq!(status.message(), "RBAC: access denied");
    }

    // `client` may call the service, but the DENY policy on SetGreeting comes first.
    let mut client = running.client("client");
    let status = client
        .set_greeting(SetGreetingRequest {
            greeting: "Howdy".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!((calls(&running, "v1"), calls(&running, "v2")), (0, 0));

    // And the greeting did not change.
    let reply = client.say_hello(hello("world")).await.unwrap().into_inner();
    assert!(reply.message.starts_with("Hello, world!"), "{reply:?}");
    running.shutdown().await;
}

#[tokio::test]
async fn strict_mtls_refuses_plaintext_from_outside_the_mesh() {
    let running = greeter().await;
    let addr = running
        .workloads
        .iter()
        .find(|w| w.spec.version == "v1")
        .unwrap()
        .addr;
    // An HTTP/2 (prior knowledge) gRPC call straight to the workload, without TLS.
    let outcome = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::post(format!("http://{addr}/helloworld.Greeter/SayHello"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            // An empty HelloRequest: no compression, length 0.
            .body(http_body_util::Full::new(Bytes::from_static(&[
                0, 0, 0, 0, 0,
            ])))
            .unwrap();
        send.send_request(req)
            .await
            .map(|r| r.status())
            .map_err(|e| e.to_string())
    };
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), outcome)
        .await
        .expect("the server answers or closes");
    assert!(outcome.is_err(), "plaintext was served: {outcome:?}");
    assert_eq!(calls(&running, "v1"), 0);
    running.shutdown().await;
}
