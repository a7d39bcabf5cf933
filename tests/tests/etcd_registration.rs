//! Workloads that register themselves in a real etcd: a registration replaces the static
//! WorkloadEntry of its name, every process watching sees it come and go, a clean
//! deregistration removes the endpoint at once, a crash (keep-alives stopped) lets it
//! expire after the lease's TTL, and a registration outlives an etcd restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use mesh_tests::etcd::EtcdServer;
use mesh_tests::{get, named};
use mesh_tower::etcd::Etcd;
use mesh_tower::etcd::registration::Registration;
use mesh_tower::source::{ConfigSource, EtcdSource, Offered};
use mesh_tower::{MeshRuntime, Workload};

/// A ServiceEntry selecting `app: echo` and a static WorkloadEntry `echo-1` on `port`.
fn config(port: u16) -> Vec<(String, String)> {
    vec![
        (
            "/mesh/networking.istio.io/ServiceEntry/default/echo".into(),
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: echo}\nspec:\n  hosts: [echo.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  ports: [{number: 9080, name: http, protocol: HTTP}]\n  resolution: STATIC\n  workloadSelector: {labels: {app: echo}}\n".into(),
        ),
        (
            "/mesh/networking.istio.io/WorkloadEntry/default/echo-1".into(),
            format!("apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: echo-1}}\nspec:\n  address: 127.0.0.1\n  ports: {{http: {port}}}\n  labels: {{app: echo}}\n"),
        ),
    ]
}

fn entry(port: u16) -> String {
    format!(
        "{{\"apiVersion\":\"networking.istio.io/v1\",\"kind\":\"WorkloadEntry\",\"metadata\":{{\"name\":\"echo-1\",\"namespace\":\"default\"}},\"spec\":{{\"address\":\"127.0.0.1\",\"ports\":{{\"http\":{port}}},\"labels\":{{\"app\":\"echo\"}}}}}}"
    )
}

/// Registers `echo-1` at `port` with a lease of `ttl`, as its workload's process does.
fn register(etcd: &Etcd, port: u16, ttl: Duration) -> Registration {
    Registration::start(
        etcd.clone(),
        "/mesh",
        "default",
        "echo-1",
        entry(port),
        ttl,
        None,
    )
}

/// A process watching the prefix: its runtime follows every change in the background.
async fn watcher(url: &str) -> MeshRuntime {
    let mut source = EtcdSource::new(Etcd::new(url).unwrap(), "/mesh");
    let first = source.load().await.unwrap();
    let runtime = MeshRuntime::from_snapshot(&first.check().snapshot.unwrap());
    let rt = runtime.clone();
    tokio::spawn(mesh_tower::source::drive(
        source,
        rt,
        std::future::pending(),
        |o| {
            if let Offered::Rejected { diagnostics, error } = o {
                panic!("rejected: {error:?} {diagnostics:?}");
            }
        },
    ));
    runtime
}

/// What a call to echo answers: 200 and the server's name, or 503.
async fn answer(runtime: &MeshRuntime) -> (u16, String) {
    let mesh = runtime.workload(Workload::new("caller", "default"));
    let (status, body, _) = get(&mesh, "http://echo:9080/", &[]).await;
    (status, body)
}

async fn until(runtime: &MeshRuntime, within: Duration, want: (u16, &str)) -> Duration {
    let start = Instant::now();
    loop {
        let got = answer(runtime).await;
        if got.0 == want.0 && (want.1.is_empty() || got.1 == want.1) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "not {want:?} within {within:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_come_and_go_in_every_process() {
    let mut server = EtcdServer::start();
    let url = server.url();
    let etcd = Etcd::new(&url).unwrap();
    let static_one = named("static").await;
    let registered = named("registered").await;
    for (k, v) in config(static_one.port()) {
        etcd.put(k.as_bytes(), v.as_bytes(), 0).await.unwrap();
    }
    let a = watcher(&url).await;
    let b = watcher(&url).await;
    // The static entry, until a workload registers under its name.
    assert_eq!(answer(&a).await, (200, "static".into()));

    let ttl = Duration::from_secs(2);
    let reg = register(&etcd, registered.port(), ttl);
    assert!(reg.registered(Duration::from_secs(5)).await);
    for p in [&a, &b] {
        until(p, Duration::from_secs(2), (200, "registered")).await;
    }
    // A clean deregistration: the endpoint is gone at once, and the static entry does
    // not come back (the workload claimed its name).
    reg.deregister().await;
    for p in [&a, &b] {
        until(p, Duration::from_secs(2), (503, "")).await;
    }
    assert_eq!(answer(&a).await.1, "no healthy upstream");

    // Registered again, then the process dies (keep-alives stop, nobody revokes): the
    // endpoint stays until the lease expires, then goes.
    let reg = register(&etcd, registered.port(), ttl);
    assert!(reg.registered(Duration::from_secs(5)).await);
    until(&a, Duration::from_secs(2), (200, "registered")).await;
    let died = Instant::now();
    drop(reg);
    until(&a, Duration::from_secs(10), (503, "")).await;
    let gone = died.elapsed();
    assert!(
        gone >= Duration::from_millis(900),
        "gone after {gone:?}, before the lease's TTL"
    );
    assert!(gone < ttl + Duration::from_secs(3), "gone after {gone:?}");

    // A registration survives etcd restarting: once etcd is back it is there again.
    let reg = register(&etcd, registered.port(), ttl);
    assert!(reg.registered(Duration::from_secs(5)).await);
    until(&b, Duration::from_secs(2), (200, "registered")).await;
    server.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // etcd away: the processes keep what they had.
    assert_eq!(answer(&b).await, (200, "registered".into()));
    server.restart();
    tokio::time::sleep(ttl * 2).await;
    let listing = etcd.range_prefix(b"/mesh/registry/").await.unwrap();
    assert_eq!(listing.kvs.len(), 1, "the registration is in etcd again");
    assert_eq!(answer(&b).await, (200, "registered".into()));
    reg.deregister().await;
    until(&b, Duration::from_secs(5), (503, "")).await;
}
