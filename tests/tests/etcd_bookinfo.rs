//! Bookinfo with its configuration in a real etcd: every change written there is in force
//! within a second; an invalid one is rejected naming its key while the last good one
//! stays; etcd stopped under load costs no request and changes made after its restart
//! arrive; a compacted revision is read again whole; a process started while etcd is down
//! starts from the configuration it cached.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use bookinfo::run::EtcdConfig;
use mesh_tests::etcd::{self, EtcdServer};
use mesh_tower::etcd::Etcd;
use mesh_tower::source::{ConfigSource, Delivery, EtcdSource};
use support::{Demo, sample};

/// A Bookinfo on ephemeral ports whose configuration is the example's, written to etcd.
async fn on_etcd(server: &EtcdServer, cache: &Path) -> Demo {
    let url = server.url();
    let cache = cache.to_path_buf();
    Demo::start_with(move |opts| {
        // The copy on ephemeral ports is in opts.config_dir: write it to etcd first.
        let dir = opts.config_dir.clone();
        let url2 = url.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(etcd::apply(&url2, "/mesh", &[&dir]))
        })
        .join()
        .unwrap();
        let mut etcd = EtcdConfig::new(url, "/mesh");
        etcd.cache = Some(cache);
        etcd.deregister_grace = Duration::from_millis(100);
        opts.etcd = Some(etcd);
    })
    .await
}

/// Polls the product page until `want` holds (at most `within`); how long it took.
async fn page_until(
    demo: &Demo,
    within: Duration,
    want: impl Fn(&support::Page) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let (status, html) = demo.get("/productpage", None).await;
        let page = support::Page::parse(&html);
        if status == 200 && want(&page) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "not within {within:?}: {status} {page:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes Istio's `virtual-service-all-v1.yaml` to etcd and waits (at most 10 s) until
/// the demo serves every page from reviews-v1.
async fn all_v1_arrives(server: &EtcdServer, demo: &Demo) {
    etcd::apply(
        &server.url(),
        "/mesh",
        &[&sample("virtual-service-all-v1.yaml")],
    )
    .await;
    page_until(demo, Duration::from_secs(10), |p| {
        p.podname.as_deref() == Some("reviews-v1")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_follows_its_configuration_in_etcd() {
    let server = EtcdServer::start();
    let cache = tempfile::tempdir().unwrap();
    let demo = on_etcd(&server, &cache.path().join("cache.json")).await;
    assert!(
        demo.running()
            .live
            .source()
            .starts_with("etcd at http://127.0.0.1:")
    );
    // The configuration it started with is cached at once, before any change.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(cache.path().join("cache.json"))
        .unwrap_or_default()
        .contains("/mesh/networking.istio.io/Gateway/default/bookinfo-gateway")
    {
        assert!(
            Instant::now() < deadline,
            "the first configuration was not cached"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = demo.page(None).await;
    assert!(first.podname.is_some(), "{first:?}");

    // Istio's sample, written to etcd: every page from reviews-v3 within a second.
    etcd::apply(
        &server.url(),
        "/mesh",
        &[&sample("virtual-service-reviews-v3.yaml")],
    )
    .await;
    let written = Instant::now();
    let reviews = mesh_config::model::ResourceKey {
        kind: mesh_config::model::Kind::VirtualService,
        namespace: "default".into(),
        name: "reviews".into(),
    };
    while demo.running().live.snapshot().get(&reviews).is_none() {
        assert!(
            written.elapsed() < Duration::from_secs(1),
            "not in force within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "reviews-v3 in force {:?} after the write",
        written.elapsed()
    );
    for _ in 0..10 {
        assert_eq!(demo.page(None).await.podname.as_deref(), Some("reviews-v3"));
    }
    // The accepted configuration is cached (written in the background).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let cached = std::fs::read_to_string(cache.path().join("cache.json")).unwrap_or_default();
        if cached.contains("/mesh/networking.istio.io/VirtualService/default/reviews") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the configuration was not cached"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // An invalid value written behind meshctl's back: rejected, naming its key; v3 stays.
    let client = Etcd::new(&server.url()).unwrap();
    let before = demo.version();
    client
        .put(
            b"/mesh/networking.istio.io/VirtualService/default/reviews",
            b"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v9}\n",
            0,
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while demo.running().live.rejected().is_none() {
        assert!(
            Instant::now() < deadline,
            "the invalid change was not rejected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rejected = demo.running().live.rejected().unwrap();
    let error = rejected.diagnostics.iter().find(|d| d.is_error()).unwrap();
    assert_eq!(error.code.as_str(), "IST0101");
    assert_eq!(
        error.file(),
        Some("etcd:/mesh/networking.istio.io/VirtualService/default/reviews")
    );
    assert_eq!(error.line(), Some(8));
    assert_eq!(demo.version(), before);
    assert_eq!(demo.page(None).await.podname.as_deref(), Some("reviews-v3"));

    // etcd stopped for three seconds under load: nothing on the request path waits on
    // it, so no request fails (the seven-process test does this across processes).
    let mut server = server;
    server.stop();
    let until = Instant::now() + Duration::from_secs(3);
    let mut served = 0;
    while Instant::now() < until {
        let (status, _) = demo.get("/productpage", None).await;
        assert_eq!(status, 200);
        served += 1;
    }
    assert!(served > 10, "{served}");
    server.restart();
    // A change made after the restart arrives.
    all_v1_arrives(&server, &demo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_watch_reads_everything_again() {
    let server = EtcdServer::start();
    let client = Etcd::new(&server.url()).unwrap();
    let vs = |name: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{name}.example.com]\n  http:\n  - directResponse: {{status: 204}}\n"
        )
    };
    let key = |name: &str| format!("/mesh/networking.istio.io/VirtualService/default/{name}");
    client
        .put(key("a").as_bytes(), vs("a").as_bytes(), 0)
        .await
        .unwrap();
    let mut source = EtcdSource::new(client.clone(), "/mesh/");
    let first = source.load().await.unwrap();
    assert_eq!(first.resources().len(), 1);
    let read_at = source.revision();

    // While nobody watches: a put, a delete, then a compaction past them.
    client
        .put(key("b").as_bytes(), vs("b").as_bytes(), 0)
        .await
        .unwrap();
    client.delete(key("a").as_bytes()).await.unwrap();
    let now = client
        .put(key("c").as_bytes(), vs("c").as_bytes(), 0)
        .await
        .unwrap();
    client.compact(now).await.unwrap();

    let next = tokio::time::timeout(Duration::from_secs(10), source.next())
        .await
        .unwrap()
        .unwrap();
    let next = whole(next);
    let mut names: Vec<&str> = next.resources().iter().map(|r| r.name()).collect();
    names.sort();
    assert_eq!(names, ["b", "c"]);
    assert_eq!(source.revision(), now);
    assert!(source.revision() > read_at);

    // Then it watches from there: one more change, one more configuration.
    client.delete(key("b").as_bytes()).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), source.next())
        .await
        .unwrap()
        .unwrap();
    let next = whole(next);
    let names: Vec<&str> = next.resources().iter().map(|r| r.name()).collect();
    assert_eq!(names, ["c"]);
    // A writer's guard key is not a configuration change (the next one is).
    client
        .put(b"/mesh/meshctl/generation", b"1", 0)
        .await
        .unwrap();
    client
        .put(key("d").as_bytes(), vs("d").as_bytes(), 0)
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), source.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(whole(next).resources().len(), 2);
}

/// The whole configuration a source delivered (a VirtualService changed: never only
/// WorkloadEntries).
fn whole(delivery: Delivery) -> mesh_config::ConfigSet {
    match delivery {
        Delivery::Config(set) => set,
        Delivery::Workloads(w) => panic!("only WorkloadEntries were delivered: {w:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_while_etcd_is_down_from_the_cached_configuration() {
    let mut server = EtcdServer::start();
    let cache = tempfile::tempdir().unwrap();
    let cache_file = cache.path().join("cache.json");
    {
        let demo = on_etcd(&server, &cache_file).await;
        etcd::apply(
            &server.url(),
            "/mesh",
            &[&sample("virtual-service-reviews-v3.yaml")],
        )
        .await;
        page_until(&demo, Duration::from_secs(5), |p| {
            p.podname.as_deref() == Some("reviews-v3")
        })
        .await;
        let running = {
            let mut d = demo;
            d.running.take().unwrap()
        };
        running.shutdown().await;
    }
    // etcd down; a new process with the same cache starts and serves what was cached.
    server.stop();
    let url = server.url();
    let cached = cache_file.clone();
    let demo = Demo::start_with(move |opts| {
        // The workloads listen where the cached configuration says (the first process's
        // ports, free again), not on the new copy's.
        opts.listeners.clear();
        let mut etcd = EtcdConfig::new(url, "/mesh");
        etcd.cache = Some(cached);
        opts.etcd = Some(etcd);
    })
    .await;
    // (Its own workloads join its configuration as they register, a moment after
    // start: the cache holds claims, and the registrations it held ended with the first
    // process.)
    page_until(&demo, Duration::from_secs(5), |p| {
        p.podname.as_deref() == Some("reviews-v3")
    })
    .await;
    // etcd back: it is read, and what changes there from then on is followed.
    server.restart();
    all_v1_arrives(&server, &demo).await;
}

/// Registrations, claims and static WorkloadEntries changing alone are delivered as the
/// entries that changed, relative to the configuration accepted last; anything else, or
/// a delivery not (yet) accepted, delivers the whole configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_changes_are_delivered_as_the_entries_that_changed() {
    let server = EtcdServer::start();
    let client = Etcd::new(&server.url()).unwrap();
    let se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: svc}\nspec:\n  hosts: [svc.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  workloadSelector: {labels: {app: svc}}\n";
    let we = |name: &str, address: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: default}}\nspec: {{address: {address}, labels: {{app: svc}}}}\n"
        )
    };
    client
        .put(
            b"/mesh/networking.istio.io/ServiceEntry/default/svc",
            se.as_bytes(),
            0,
        )
        .await
        .unwrap();
    client
        .put(
            b"/mesh/networking.istio.io/WorkloadEntry/default/a",
            we("a", "10.0.0.1").as_bytes(),
            0,
        )
        .await
        .unwrap();
    let mut source = EtcdSource::new(client.clone(), "/mesh");
    let first = source.load().await.unwrap();
    assert_eq!(first.resources().len(), 2);

    // Not accepted yet: a registration brings the whole configuration.
    client
        .put(
            b"/mesh/registry/default/b",
            we("b", "10.0.0.2").as_bytes(),
            0,
        )
        .await
        .unwrap();
    assert_eq!(whole(next_of(&mut source).await).resources().len(), 3);
    source.accepted();

    // Accepted: a registration going away is one change, the entry gone.
    client.delete(b"/mesh/registry/default/b").await.unwrap();
    let changes = workloads(next_of(&mut source).await);
    assert_eq!(summary(&changes), ["default/b: gone"]);
    source.accepted();

    // A registration and its claim in one transaction: the static entry of the name
    // gives way to the registered one.
    client
        .txn(puts_txn(&[
            ("/mesh/registry/default/a", we("a", "10.0.0.9")),
            ("/mesh/claims/default/a", String::new()),
        ]))
        .await
        .unwrap();
    let changes = workloads(next_of(&mut source).await);
    assert_eq!(summary(&changes), ["default/a: 10.0.0.9"]);
    source.accepted();

    // The claim deleted while registered: the registration still replaces the static
    // entry of its name, so nothing changes; once it goes, the static entry is back.
    // (One transaction: two requests could be watched apart, the registration then
    // delivered once more on its own.)
    client
        .txn(deletes_txn(&[
            "/mesh/claims/default/a",
            "/mesh/registry/default/a",
        ]))
        .await
        .unwrap();
    let changes = workloads(next_of(&mut source).await);
    assert_eq!(summary(&changes), ["default/a: 10.0.0.1"]);
    source.accepted();

    // A registration that is not a WorkloadEntry of its name: nothing changes but a
    // warning.
    client
        .put(
            b"/mesh/registry/default/c",
            we("other", "10.0.0.3").as_bytes(),
            0,
        )
        .await
        .unwrap();
    let changes = workloads(next_of(&mut source).await);
    assert!(changes.changes.is_empty());
    assert_eq!(changes.diagnostics.len(), 1);
    assert!(
        changes.diagnostics[0]
            .message
            .contains("not a WorkloadEntry default/c"),
        "{:?}",
        changes.diagnostics
    );
    source.accepted();

    // A static entry changed with meshctl's key: one change; a ServiceEntry: the whole.
    client
        .put(
            b"/mesh/networking.istio.io/WorkloadEntry/default/a",
            we("a", "10.0.0.4").as_bytes(),
            0,
        )
        .await
        .unwrap();
    let changes = workloads(next_of(&mut source).await);
    assert_eq!(summary(&changes), ["default/a: 10.0.0.4"]);
    source.accepted();
    client
        .put(
            b"/mesh/networking.istio.io/ServiceEntry/default/svc",
            se.replace("svc.example.com", "svc2.example.com").as_bytes(),
            0,
        )
        .await
        .unwrap();
    whole(next_of(&mut source).await);
}

/// What `source` delivers next (within 10 s).
async fn next_of(source: &mut EtcdSource) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), source.next())
        .await
        .unwrap()
        .unwrap()
}

/// One transaction putting `puts` (key, value).
fn puts_txn(puts: &[(&str, String)]) -> mesh_tower::etcd::proto::TxnRequest {
    use mesh_tower::etcd::proto::{Op, PutRequest, RequestOp, TxnRequest};
    TxnRequest {
        compare: Vec::new(),
        success: puts
            .iter()
            .map(|(k, v)| RequestOp {
                request: Some(Op::Put(PutRequest {
                    key: k.as_bytes().to_vec(),
                    value: v.as_bytes().to_vec(),
                    lease: 0,
                    prev_kv: false,
                })),
            })
            .collect(),
        failure: Vec::new(),
    }
}

/// One transaction deleting `keys`.
fn deletes_txn(keys: &[&str]) -> mesh_tower::etcd::proto::TxnRequest {
    use mesh_tower::etcd::proto::{DeleteRangeRequest, Op, RequestOp, TxnRequest};
    TxnRequest {
        compare: Vec::new(),
        success: keys
            .iter()
            .map(|k| RequestOp {
                request: Some(Op::DeleteRange(DeleteRangeRequest {
                    key: k.as_bytes().to_vec(),
                    ..Default::default()
                })),
            })
            .collect(),
        failure: Vec::new(),
    }
}

/// The WorkloadEntries a source delivered.
fn workloads(delivery: Delivery) -> mesh_tower::source::WorkloadChanges {
    match delivery {
        Delivery::Workloads(w) => w,
        Delivery::Config(set) => panic!(
            "the whole configuration was delivered ({} resources)",
            set.resources().len()
        ),
    }
}

/// `namespace/name: address` (or `gone`) per change.
fn summary(w: &mesh_tower::source::WorkloadChanges) -> Vec<String> {
    w.changes
        .iter()
        .map(|c| {
            let now = c
                .entry
                .as_ref()
                .map_or("gone".to_string(), |e| e.spec.address.clone());
            format!("{}/{}: {now}", c.namespace, c.name)
        })
        .collect()
}
