use std::time::{Duration, SystemTime};

use super::*;

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

#[test]
fn spiffe_ids_are_parsed_into_their_parts() {
    let ok = [
        (
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
            "cluster.local",
            "default",
            "bookinfo-reviews",
        ),
        ("spiffe://td/ns/a/sa/b", "td", "a", "b"),
        (
            "spiffe://example.org/ns/istio-system/sa/istio-ingressgateway-service-account",
            "example.org",
            "istio-system",
            "istio-ingressgateway-service-account",
        ),
    ];
    for (uri, td, ns, sa) in ok {
        let parsed = id(uri);
        assert_eq!(
            (
                parsed.trust_domain(),
                parsed.namespace(),
                parsed.service_account()
            ),
            (td, ns, sa),
            "{uri}"
        );
        assert_eq!(parsed.as_str(), uri);
        assert_eq!(parsed.principal(), &uri["spiffe://".len()..]);
        assert_eq!(SpiffeId::new(td, ns, sa).unwrap(), parsed);
    }
    let bad = [
        "",
        "spiffe://",
        "http://cluster.local/ns/a/sa/b",
        "spiffe://cluster.local/ns/a",
        "spiffe://cluster.local/ns//sa/b",
        "spiffe:///ns/a/sa/b",
        "spiffe://cluster.local/ns/a/sa/",
        "spiffe://cluster.local/ns/a/sa/b/c",
        "spiffe://cluster.local/sa/b/ns/a",
        "cluster.local/ns/a/sa/b",
    ];
    for uri in bad {
        assert!(
            matches!(SpiffeId::parse(uri), Err(IdentityError::SpiffeId(_))),
            "{uri:?} should be refused"
        );
    }
}

fn ca(lifetime: Duration) -> CertificateAuthority {
    CertificateAuthority::new("cluster.local")
        .unwrap()
        .with_workload_lifetime(lifetime)
}

#[test]
fn the_ca_issues_a_certificate_naming_the_spiffe_id_for_its_lifetime() {
    let ca = ca(DEFAULT_WORKLOAD_LIFETIME);
    let me = id("spiffe://cluster.local/ns/default/sa/bookinfo-ratings");
    let before = SystemTime::now();
    let cert = ca.issue(&me).unwrap();
    assert_eq!(cert.spiffe_id(), &me);
    assert_eq!(cert.roots(), 1);
    assert_eq!(cert.chain().len(), 1);
    // X.509 times have one-second precision.
    let life = cert.not_after().duration_since(cert.not_before()).unwrap();
    assert!(
        life.abs_diff(DEFAULT_WORKLOAD_LIFETIME) <= Duration::from_secs(1),
        "{life:?}"
    );
    assert!(
        cert.not_before() <= before
            && before.duration_since(cert.not_before()).unwrap() < Duration::from_secs(2)
    );
    // Renewed at half its life, as Istio's agent does.
    let half = cert.renew_at().duration_since(cert.not_before()).unwrap();
    assert!(half.abs_diff(Duration::from_secs(12 * 3600)) <= Duration::from_secs(1));
    assert_eq!(
        cert.server_config().alpn_protocols,
        [b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    assert_eq!(cert.client_config(true).alpn_protocols, [b"h2".to_vec()]);
    assert_eq!(
        cert.client_config(false).alpn_protocols,
        [b"http/1.1".to_vec()]
    );
}

#[test]
fn a_ca_told_to_trust_another_root_hands_out_a_bundle_of_both() {
    let old = ca(DEFAULT_WORKLOAD_LIFETIME);
    let new = ca(DEFAULT_WORKLOAD_LIFETIME);
    new.trust(old.root().clone());
    let cert = new.issue(&id("spiffe://cluster.local/ns/a/sa/b")).unwrap();
    assert_eq!(cert.roots(), 2);
    assert_eq!(
        new.trust_bundle(),
        vec![new.root().clone(), old.root().clone()]
    );
}

#[tokio::test]
async fn an_identity_from_the_ca_is_renewed_at_half_its_lifetime() {
    let ca = Arc::new(ca(Duration::from_secs(2)));
    let me = id("spiffe://cluster.local/ns/a/sa/b");
    let identity = Identities::Ca(ca).identity(&me).unwrap();
    let first = identity.current();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while identity.renewals() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        identity.renewals() >= 2,
        "renewed {} times",
        identity.renewals()
    );
    let now = identity.current();
    assert_eq!(now.spiffe_id(), &me);
    assert_ne!(now.chain(), first.chain());
    assert!(now.not_after() > first.not_after());
}

#[tokio::test]
async fn dropping_an_identity_stops_its_renewal() {
    let ca = Arc::new(ca(Duration::from_secs(2)));
    let identity = Identities::Ca(ca)
        .identity(&id("spiffe://cluster.local/ns/a/sa/b"))
        .unwrap();
    let weak = Arc::downgrade(&identity);
    drop(identity);
    tokio::task::yield_now().await;
    assert!(
        weak.upgrade().is_none(),
        "the renewal task holds no strong reference"
    );
}

/// Writes the identity files of `id`, valid for an hour, into `dir`.
fn write_files(dir: &std::path::Path, ca: &CertificateAuthority, id: &SpiffeId) {
    let now = SystemTime::now();
    let (chain, key) = ca
        .issue_pem(id, now, now + Duration::from_secs(3600))
        .unwrap();
    std::fs::write(dir.join(CERT_CHAIN), chain).unwrap();
    std::fs::write(dir.join(KEY), key).unwrap();
    std::fs::write(dir.join(ROOT_CERT), ca.root_pem()).unwrap();
}

#[test]
fn files_are_read_with_istios_names() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(DEFAULT_WORKLOAD_LIFETIME);
    let me = id("spiffe://cluster.local/ns/shop/sa/cart");
    write_files(dir.path(), &ca, &me);
    let files = IdentityFiles::open(dir.path()).unwrap();
    let identity = files.identity();
    assert_eq!(identity.spiffe_id(), me);
    assert_eq!(identity.current().roots(), 1);
}

#[test]
fn missing_or_broken_files_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = IdentityFiles::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("cert-chain.pem"), "{err}");

    let ca = ca(DEFAULT_WORKLOAD_LIFETIME);
    write_files(dir.path(), &ca, &id("spiffe://cluster.local/ns/a/sa/b"));
    std::fs::write(dir.path().join(KEY), "not a key").unwrap();
    let err = IdentityFiles::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("key.pem"), "{err}");

    write_files(dir.path(), &ca, &id("spiffe://cluster.local/ns/a/sa/b"));
    std::fs::write(dir.path().join(ROOT_CERT), "").unwrap();
    let err = IdentityFiles::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("root-cert.pem"), "{err}");

    // A certificate without a SPIFFE ID is no workload identity.
    let (server, key) = {
        let params = rcgen::CertificateParams::new(vec!["web.example.com".to_string()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    };
    std::fs::write(dir.path().join(CERT_CHAIN), server).unwrap();
    std::fs::write(dir.path().join(KEY), key).unwrap();
    std::fs::write(dir.path().join(ROOT_CERT), ca.root_pem()).unwrap();
    let err = IdentityFiles::open(dir.path()).unwrap_err();
    assert!(matches!(err, IdentityError::NoSpiffeId(_)), "{err}");
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(DEFAULT_WORKLOAD_LIFETIME);
    write_files(dir.path(), &ca, &id("spiffe://cluster.local/ns/a/sa/b"));
    let other = tempfile::tempdir().unwrap();
    write_files(other.path(), &ca, &id("spiffe://cluster.local/ns/a/sa/b"));
    std::fs::copy(other.path().join(KEY), dir.path().join(KEY)).unwrap();
    let err = IdentityFiles::open(dir.path()).unwrap_err();
    assert!(matches!(err, IdentityError::Material(_)), "{err}");
}

#[tokio::test]
async fn changed_files_are_reloaded_and_broken_ones_leave_the_old_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(DEFAULT_WORKLOAD_LIFETIME);
    write_files(dir.path(), &ca, &id("spiffe://cluster.local/ns/a/sa/one"));
    let files = IdentityFiles::open(dir.path()).unwrap();
    let identity = files.identity();

    // A half-written rotation: the key is garbage for now. The old identity stays.
    std::fs::write(dir.path().join(KEY), "garbage").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(identity.spiffe_id().service_account(), "one");

    write_files(dir.path(), &ca, &id("spiffe://cluster.local/ns/a/sa/two"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while identity.spiffe_id().service_account() != "two" && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(identity.spiffe_id().service_account(), "two");
}
