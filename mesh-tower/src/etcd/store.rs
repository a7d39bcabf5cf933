//! The mesh's configuration in etcd: reading a prefix into a [`KvStore`] and writing a
//! [`KvPlan`] as one transaction guarded by the revision it was checked at.
//!
//! The guard compares every configuration group's keys (`<prefix>/<group>/`) and the
//! writers' guard key: each must be unchanged since the plan's revision. Every write puts
//! the guard key too, so that a concurrent delete (which leaves no key to compare) is seen
//! as well. Two `meshctl apply` made at one revision cannot both be written: the second
//! fails as a conflict and nothing it planned is written. Registrations
//! (`<prefix>/registry/`) are not compared: workloads come and go while configuration is
//! written.

use mesh_config::model::{Kind, MESH_GROUP};
use mesh_config::store::kv::{KvPlan, KvStore, normalize_prefix};

use super::proto::{
    CMP_LESS, Compare, CompareWith, DeleteRangeRequest, Op, PutRequest, RequestOp, TARGET_MOD,
    TxnRequest,
};
use super::{Etcd, EtcdError, prefix_end};

/// Reads the configuration under `prefix` at one revision.
pub async fn read(etcd: &Etcd, prefix: &str) -> Result<KvStore, EtcdError> {
    let prefix = normalize_prefix(prefix);
    let listing = etcd.range_prefix(format!("{prefix}/").as_bytes()).await?;
    let mut store = KvStore::new(&prefix, listing.revision);
    for kv in &listing.kvs {
        store.insert(&kv.key, &kv.value, kv.mod_revision);
    }
    Ok(store)
}

/// What [`write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The plan was written; the store's new revision.
    At(i64),
    /// The configuration changed since the plan's revision: nothing was written.
    Conflict,
}

/// The configuration groups (each a range of keys to guard).
fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = Kind::ALL.iter().map(|k| k.group()).collect();
    groups.push(MESH_GROUP);
    groups.sort_unstable();
    groups.dedup();
    groups
}

/// The most operations etcd accepts in one transaction by default (`--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// Writes `plan` if nothing under its prefix's configuration changed since the revision
/// it was made at (see the module documentation). A plan of more than
/// [`MAX_TXN_OPS`] − 1 keys (the guard takes one) is refused before anything is sent.
pub async fn write(etcd: &Etcd, plan: &KvPlan) -> Result<Written, EtcdError> {
    let ops = plan.puts().len() + plan.deletes().len() + 1;
    if ops > MAX_TXN_OPS {
        return Err(EtcdError::Status {
            endpoint: etcd.endpoints().to_string(),
            code: tonic::Code::InvalidArgument as i32,
            message: format!(
                "{} keys to write in one transaction, and etcd takes at most {} operations in one (its --max-txn-ops, the guard included): apply fewer resources at a time",
                ops - 1,
                MAX_TXN_OPS
            ),
        });
    }
    let unchanged_since = |key: Vec<u8>, range_end: Vec<u8>| Compare {
        result: CMP_LESS,
        target: TARGET_MOD,
        key,
        target_union: Some(CompareWith::ModRevision(plan.revision() + 1)),
        range_end,
    };
    let mut compare: Vec<Compare> = groups()
        .into_iter()
        .map(|g| {
            let start = format!("{}/{g}/", plan.prefix()).into_bytes();
            let end = prefix_end(&start);
            unchanged_since(start, end)
        })
        .collect();
    let guard = plan.guard_key().into_bytes();
    compare.push(unchanged_since(guard.clone(), Vec::new()));
    let mut success: Vec<RequestOp> = plan
        .puts()
        .iter()
        .map(|(k, v)| RequestOp {
            request: Some(Op::Put(PutRequest {
                key: k.clone().into_bytes(),
                value: v.clone().into_bytes(),
                ..Default::default()
            })),
        })
        .collect();
    success.extend(plan.deletes().iter().map(|k| RequestOp {
        request: Some(Op::DeleteRange(DeleteRangeRequest {
            key: k.clone().into_bytes(),
            ..Default::default()
        })),
    }));
    success.push(RequestOp {
        request: Some(Op::Put(PutRequest {
            key: guard,
            value: plan.revision().to_string().into_bytes(),
            ..Default::default()
        })),
    });
    let resp = etcd
        .txn(TxnRequest {
            compare,
            success,
            failure: Vec::new(),
        })
        .await?;
    Ok(if resp.succeeded {
        Written::At(resp.header.map_or(0, |h| h.revision))
    } else {
        Written::Conflict
    })
}
