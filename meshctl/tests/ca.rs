//! `meshctl ca`: a root made once (refusing to replace one), workload certificates issued
//! from it in Istio's file layout, which the mesh reads as the identity of the namespace
//! and service account asked for, trusting the root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output};

use mesh_tower::identity::{IdentityTree, SpiffeId};

fn meshctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_root_then_workload_certificates_in_istio_layout() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let root_s = root.to_str().unwrap();
    let out = meshctl(&["ca", "create-root", "--out", root_s]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(root.join("root-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A second root over the first: refused, the first kept.
    let key = std::fs::read(root.join("root-key.pem")).unwrap();
    let out = meshctl(&["ca", "create-root", "--out", root_s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a root"));
    assert_eq!(std::fs::read(root.join("root-key.pem")).unwrap(), key);

    let certs = dir.path().join("certs");
    let reviews = certs.join("default/bookinfo-reviews");
    let out = meshctl(&[
        "ca",
        "issue",
        "--root",
        root_s,
        "--namespace",
        "default",
        "--service-account",
        "bookinfo-reviews",
        "--hours",
        "2",
        "--out",
        reviews.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews issued for 2 h: {}",
            reviews.display()
        )
    );
    for f in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
        assert!(reviews.join(f).is_file(), "{f}");
    }
    assert_eq!(
        std::fs::metadata(reviews.join("key.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(
        !reviews.join("root-key.pem").exists(),
        "the root's key stays with the root"
    );
    assert_eq!(
        std::fs::read_to_string(reviews.join("root-cert.pem")).unwrap(),
        std::fs::read_to_string(root.join("root-cert.pem")).unwrap()
    );

    // The mesh reads it as that workload's identity, valid for two hours.
    let tree = IdentityTree::new(&certs);
    let id = SpiffeId::new("cluster.local", "default", "bookinfo-reviews").unwrap();
    let identity = mesh_tower::identity::Identities::Tree(tree)
        .identity(&id)
        .unwrap();
    let current = identity.current();
    assert_eq!(current.spiffe_id(), &id);
    let lifetime = current
        .not_after()
        .duration_since(current.not_before())
        .unwrap();
    assert_eq!(lifetime.as_secs(), 2 * 3600 + 60);
    assert_eq!(current.roots(), 1);

    // A key of another root beside this root's certificate: refused, naming the mismatch.
    let other = dir.path().join("other");
    assert!(
        meshctl(&["ca", "create-root", "--out", other.to_str().unwrap()])
            .status
            .success()
    );
    std::fs::copy(other.join("root-key.pem"), root.join("root-key.pem")).unwrap();
    let out = meshctl(&[
        "ca",
        "issue",
        "--root",
        root_s,
        "--service-account",
        "x",
        "--out",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not belong to the root certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.path().join("x").exists(), "nothing written");

    // Without the root's key, nothing is issued.
    std::fs::remove_file(root.join("root-key.pem")).unwrap();
    let out = meshctl(&[
        "ca",
        "issue",
        "--root",
        root_s,
        "--service-account",
        "x",
        "--out",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("root-key.pem"));
}
