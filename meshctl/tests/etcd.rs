//! `meshctl apply/delete/get --etcd` against a real etcd: the same output as for a
//! directory, nothing written when the resulting configuration has errors, and two
//! concurrent applies that together would be invalid never both written.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mesh_config::source::SourceFile;
use mesh_tests::etcd::EtcdServer;
use mesh_tower::etcd::Etcd;
use mesh_tower::etcd::store::{self, Written};

fn meshctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .output()
        .expect("meshctl runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn bookinfo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/bookinfo"))
}

fn sample(name: &str) -> String {
    bookinfo()
        .join("istio/networking")
        .join(name)
        .display()
        .to_string()
}

/// The store's revision now.
fn revision(url: &str) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { Etcd::new(url).unwrap().get(b"/").await.unwrap().0 })
}

#[test]
fn apply_get_and_delete_through_etcd() {
    let server = EtcdServer::start();
    let url = server.url();
    let config = bookinfo().join("config").display().to_string();

    let out = meshctl(&["apply", "-f", &config, "--etcd", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("virtualservice.networking.istio.io/bookinfo created"),
        "{stdout}"
    );
    assert!(
        stdout.contains("workloadentry.networking.istio.io/reviews-v2 created"),
        "{stdout}"
    );
    let created = stdout.lines().count();
    let resources = mesh_config::ConfigSet::load(&[&config])
        .unwrap()
        .resources()
        .len();
    assert_eq!(created, resources, "{stdout}");

    // The same files again: nothing changes, nothing is written.
    let before = revision(&url);
    let out = meshctl(&["apply", "-f", &config, "--etcd", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout)
            .lines()
            .filter(|l| l.ends_with(" unchanged"))
            .count(),
        created
    );
    assert_eq!(revision(&url), before);

    // `get` lists what etcd holds, naming each key.
    let out = meshctl(&["get", "dr", "--etcd", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table.contains("/mesh/networking.istio.io/DestinationRule/default/reviews:1"),
        "{table}"
    );
    let out = meshctl(&["get", "dr", "reviews", "-o", "yaml", "--etcd", &url]);
    assert!(
        text(&out.stdout).contains("name: v3"),
        "{}",
        text(&out.stdout)
    );

    // A change the configuration cannot take: the diagnostics name the file and line,
    // and nothing is written.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("reviews-v9.yaml");
    std::fs::write(
        &bad,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v9}\n",
    )
    .unwrap();
    let before = revision(&url);
    let out = meshctl(&[
        "apply",
        "-f",
        bad.to_str().unwrap(),
        "--etcd",
        &url,
        "--color",
        "never",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("IST0101"), "{stderr}");
    assert!(stderr.contains("reviews-v9.yaml:9"), "{stderr}");
    assert!(
        stderr.contains("nothing was written to etcd at"),
        "{stderr}"
    );
    assert_eq!(revision(&url), before);

    // A valid change, then its delete; a second delete finds nothing.
    let v3 = sample("virtual-service-reviews-v3.yaml");
    let out = meshctl(&["apply", "-f", &v3, "--etcd", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "virtualservice.networking.istio.io/reviews created\n"
    );
    let out = meshctl(&["delete", "-f", &v3, "--etcd", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "virtualservice.networking.istio.io/reviews deleted\n"
    );
    let out = meshctl(&["delete", "-f", &v3, "--etcd", &url]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("\"reviews\" not found in etcd at"),
        "{}",
        text(&out.stderr)
    );

    // Another prefix is another configuration.
    let out = meshctl(&["get", "vs", "-A", "--etcd", &url, "--prefix", "/other/"]);
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("No resources found"));
}

#[test]
fn an_unreachable_etcd_is_a_usage_error_naming_it() {
    let server = EtcdServer::start();
    let url = server.url();
    drop(server);
    let out = meshctl(&["get", "vs", "--etcd", &url]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains(&url), "{}", text(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().to_str().unwrap();
    let out = meshctl(&["get", "vs", "--config", config, "--prefix", "/x"]);
    assert_eq!(out.status.code(), Some(2), "--prefix without --etcd");
    assert!(
        text(&out.stderr).contains("--etcd"),
        "{}",
        text(&out.stderr)
    );
    let out = meshctl(&["get", "vs", "--config", config, "--etcd", &url]);
    assert_eq!(out.status.code(), Some(2), "--config and --etcd");
    let out = meshctl(&["get", "vs", "--config", config]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// The reviews DestinationRule without subset v3, and a VirtualService sending everything
/// to v3: each valid on its own against Bookinfo, invalid together.
fn conflicting(dir: &Path) -> (PathBuf, PathBuf) {
    let dr = dir.join("dr-without-v3.yaml");
    std::fs::write(
        &dr,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\nspec:\n  host: reviews\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n",
    )
    .unwrap();
    (dr, PathBuf::from(sample("virtual-service-reviews-v3.yaml")))
}

#[test]
fn two_plans_checked_at_one_revision_cannot_both_be_written() {
    let server = EtcdServer::start();
    let url = server.url();
    let config = bookinfo().join("config").display().to_string();
    assert!(
        meshctl(&["apply", "-f", &config, "--etcd", &url])
            .status
            .success()
    );
    let dir = tempfile::tempdir().unwrap();
    let (dr, vs) = conflicting(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let etcd = Etcd::new(&url).unwrap();
        let first = store::read(&etcd, "/mesh").await.unwrap();
        let second = store::read(&etcd, "/mesh").await.unwrap();
        assert_eq!(first.revision(), second.revision());
        let read = |p: &Path| {
            SourceFile::new(p.display().to_string(), std::fs::read_to_string(p).unwrap())
        };
        let a = first.plan_apply(&[read(&dr)]).unwrap();
        let b = second.plan_apply(&[read(&vs)]).unwrap();
        assert!(!a.check().has_errors());
        assert!(!b.check().has_errors());
        assert!(matches!(
            store::write(&etcd, &a).await.unwrap(),
            Written::At(_)
        ));
        assert_eq!(store::write(&etcd, &b).await.unwrap(), Written::Conflict);
        // The store holds the first and is valid.
        let now = store::read(&etcd, "/mesh").await.unwrap();
        assert!(!now.check().has_errors());
        assert_eq!(
            now.list(Some(mesh_config::model::Kind::VirtualService), None)
                .iter()
                .filter(|l| l.resource.name() == "reviews")
                .count(),
            0
        );

        // A delete made after a plan was read is seen too (it leaves no key to compare).
        let stale = store::read(&etcd, "/mesh").await.unwrap();
        let details = mesh_config::model::ResourceKey {
            kind: mesh_config::model::Kind::DestinationRule,
            namespace: "default".into(),
            name: "details".into(),
        };
        let fresh = store::read(&etcd, "/mesh").await.unwrap();
        assert!(matches!(
            store::write(&etcd, &fresh.plan_delete(&[details]))
                .await
                .unwrap(),
            Written::At(_)
        ));
        let late = stale.plan_apply(&[read(&vs)]).unwrap();
        assert_eq!(store::write(&etcd, &late).await.unwrap(), Written::Conflict);
    });
}

#[test]
fn of_two_concurrent_applies_that_together_are_invalid_one_fails() {
    let server = EtcdServer::start();
    let url = server.url();
    let config = bookinfo().join("config").display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (dr, vs) = conflicting(dir.path());
    for round in 0..5 {
        // Back to Bookinfo as it is (the reviews VirtualService gone).
        assert!(
            meshctl(&["apply", "-f", &config, "--etcd", &url])
                .status
                .success()
        );
        let _ = meshctl(&["delete", "-f", vs.to_str().unwrap(), "--etcd", &url]);
        let spawn = |file: &Path| {
            Command::new(env!("CARGO_BIN_EXE_meshctl"))
                .args(["apply", "-f", file.to_str().unwrap(), "--etcd", &url])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let a = spawn(&dr);
        let b = spawn(&vs);
        let a = a.wait_with_output().unwrap();
        let b = b.wait_with_output().unwrap();
        let succeeded = [&a, &b].iter().filter(|o| o.status.success()).count();
        assert_eq!(
            succeeded,
            1,
            "round {round}: DR: {} {}\nVS: {} {}",
            text(&a.stdout),
            text(&a.stderr),
            text(&b.stdout),
            text(&b.stderr)
        );
        let failed = if a.status.success() { &b } else { &a };
        assert_eq!(failed.status.code(), Some(1));
        let why = text(&failed.stderr);
        assert!(
            why.contains("changed since it was read") || why.contains("IST0101"),
            "{why}"
        );
        let check = meshctl(&["get", "vs", "-A", "--etcd", &url]);
        assert!(check.status.success());
    }
}
