//! The mesh's etcd client against a real etcd: ranges at one revision across pages,
//! transactions guarded by revisions, watches from a revision (and a compacted one),
//! leases that expire without keep-alives and live on with them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use mesh_tests::etcd::EtcdServer;
use mesh_tower::etcd::proto::{
    CMP_EQUAL, Compare, CompareWith, EVENT_DELETE, EVENT_PUT, Op, PutRequest, RequestOp,
    TARGET_MOD, TxnRequest,
};
use mesh_tower::etcd::{Etcd, EtcdError};

#[tokio::test]
async fn keys_ranges_transactions_and_watches() {
    let server = EtcdServer::start();
    let etcd = Etcd::new(&server.url()).unwrap();

    // 2 500 keys: three pages, read at the revision of the first.
    let mut last = 0;
    for i in 0..2500 {
        last = etcd
            .put(
                format!("/mesh/k/{i:05}").as_bytes(),
                format!("{i}").as_bytes(),
                0,
            )
            .await
            .unwrap();
    }
    etcd.put(b"/other/x", b"outside", 0).await.unwrap();
    let listing = etcd.range_prefix(b"/mesh/").await.unwrap();
    assert_eq!(listing.kvs.len(), 2500);
    assert_eq!(listing.revision, last + 1);
    assert_eq!(listing.kvs[1234].key, b"/mesh/k/01234");
    assert_eq!(listing.kvs[1234].value, b"1234");
    assert!(listing.kvs.windows(2).all(|w| w[0].key < w[1].key));

    // A transaction guarded by a key's revision: applied once, refused the second time.
    let (_, kv) = etcd.get(b"/mesh/k/00007").await.unwrap();
    let seen = kv.unwrap().mod_revision;
    let guarded = |value: &[u8]| TxnRequest {
        compare: vec![Compare {
            result: CMP_EQUAL,
            target: TARGET_MOD,
            key: b"/mesh/k/00007".to_vec(),
            target_union: Some(CompareWith::ModRevision(seen)),
            range_end: Vec::new(),
        }],
        success: vec![RequestOp {
            request: Some(Op::Put(PutRequest {
                key: b"/mesh/k/00007".to_vec(),
                value: value.to_vec(),
                ..Default::default()
            })),
        }],
        failure: Vec::new(),
    };
    assert!(etcd.txn(guarded(b"first")).await.unwrap().succeeded);
    assert!(!etcd.txn(guarded(b"second")).await.unwrap().succeeded);
    assert_eq!(
        etcd.get(b"/mesh/k/00007").await.unwrap().1.unwrap().value,
        b"first"
    );

    // A watch from a past revision sees what happened since, in order.
    let from = etcd.get(b"/mesh/").await.unwrap().0 + 1;
    etcd.put(b"/mesh/w/a", b"1", 0).await.unwrap();
    etcd.delete(b"/mesh/w/a").await.unwrap();
    let mut watch = etcd.watch(b"/mesh/w/", from).await.unwrap();
    let mut events = Vec::new();
    while events.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .unwrap()
            .unwrap();
        events.extend(batch.events);
    }
    assert_eq!(events[0].r#type, EVENT_PUT);
    assert_eq!(events[0].kv.as_ref().unwrap().value, b"1");
    assert_eq!(events[1].r#type, EVENT_DELETE);
    // And what happens from now on.
    etcd.put(b"/mesh/w/b", b"2", 0).await.unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch.events[0].kv.as_ref().unwrap().key, b"/mesh/w/b");

    // A watch from a compacted revision fails as such.
    let now = etcd.put(b"/mesh/w/c", b"3", 0).await.unwrap();
    etcd.compact(now).await.unwrap();
    let mut watch = etcd.watch(b"/mesh/w/", from).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, EtcdError::Compacted { .. }), "{err}");
}

#[tokio::test]
async fn a_lease_keeps_its_keys_only_while_kept_alive() {
    let server = EtcdServer::start();
    let etcd = Etcd::new(&server.url()).unwrap();
    let (kept, ttl) = etcd.grant(Duration::from_secs(2)).await.unwrap();
    assert_eq!(ttl, 2);
    let (dropped, _) = etcd.grant(Duration::from_secs(2)).await.unwrap();
    etcd.put(b"/mesh/kept", b"1", kept).await.unwrap();
    etcd.put(b"/mesh/dropped", b"1", dropped).await.unwrap();
    let mut keep = etcd.keep_alive(kept).await.unwrap();
    for _ in 0..8 {
        assert_eq!(keep.renew().await.unwrap(), 2);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Four seconds on: the lease without keep-alives expired and took its key.
    assert!(etcd.get(b"/mesh/kept").await.unwrap().1.is_some());
    assert!(etcd.get(b"/mesh/dropped").await.unwrap().1.is_none());
    // A revoked lease takes its key at once, and says so to its keep-alive.
    etcd.revoke(kept).await.unwrap();
    assert!(etcd.get(b"/mesh/kept").await.unwrap().1.is_none());
    let err = keep.renew().await.unwrap_err();
    assert!(matches!(err, EtcdError::LeaseExpired { .. }), "{err}");
}

#[tokio::test]
async fn an_unreachable_cluster_is_an_error_naming_it() {
    let server = EtcdServer::start();
    let url = server.url();
    drop(server);
    let etcd = Etcd::new(&url).unwrap();
    let err = etcd.get(b"/mesh/").await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
}
