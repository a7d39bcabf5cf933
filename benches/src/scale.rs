//! `mesh-bench scale`: the cost of a large configuration — 10 000 services with 100 000
//! endpoints (WorkloadEntries, ten per service) and 10 000 VirtualServices by default —
//! loaded, checked, compiled and swapped into a runtime (as a process does: the runtime
//! drops the YAML trees and compiles), compiled once more alone; then an endpoint change
//! applied by the full path (a reload), and endpoint changes applied incrementally
//! (`MeshRuntime::update_workloads`, as a workload registering or going away is).
//! `mesh-bench propagation` measures changes written to etcd until follower processes
//! have them.
//!
//! Times are wall-clock on this machine (shared and noisy): the figures are orders of
//! magnitude against the bounds (1 s, 10 ms), not precise measures. Peak memory
//! is the process's peak resident set (`VmHWM`), reset before each step where the kernel
//! allows it; the heap in use (allocated and not freed) falls when memory is freed, where
//! the resident set keeps what the allocator keeps mapped.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mesh_config::ConfigSet;

/// The generated configuration's size.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Size {
    pub(crate) services: usize,
    pub(crate) endpoints_per_service: usize,
    pub(crate) virtual_services: usize,
}

/// Services per generated file: the loader bounds what one YAML stream may expand to.
const PER_FILE: usize = 500;

/// `svc-<i>`'s ServiceEntry (selecting `app: svc-<i>`), its WorkloadEntries and, for the
/// first `virtual_services`, a VirtualService splitting it 90/10 between two subsets of
/// a DestinationRule; files of [`PER_FILE`] services.
pub(crate) fn generate(size: Size) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut services = String::new();
    let mut entries = String::new();
    let mut routes = String::new();
    for i in 0..size.services {
        if i > 0 && i % PER_FILE == 0 {
            let k = i / PER_FILE;
            files.push((format!("services-{k}.yaml"), std::mem::take(&mut services)));
            files.push((
                format!("workload-entries-{k}.yaml"),
                std::mem::take(&mut entries),
            ));
            files.push((format!("routes-{k}.yaml"), std::mem::take(&mut routes)));
        }
        let _ = write!(
            services,
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc-{i}}}\nspec:\n  hosts: [svc-{i}.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  ports: [{{number: 9080, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  workloadSelector: {{labels: {{app: svc-{i}}}}}\n"
        );
        for e in 0..size.endpoints_per_service {
            let n = i * size.endpoints_per_service + e;
            let (a, b, c) = ((n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
            let version = if e % 10 == 0 { "v2" } else { "v1" };
            let _ = write!(
                entries,
                "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: svc-{i}-{e}}}\nspec:\n  address: 10.{a}.{b}.{c}\n  ports: {{http: 8080}}\n  labels: {{app: svc-{i}, version: {version}}}\n"
            );
        }
        if i < size.virtual_services {
            let _ = write!(
                routes,
                "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc-{i}}}\nspec:\n  host: svc-{i}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: svc-{i}}}\nspec:\n  hosts: [svc-{i}]\n  http:\n  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]\n    route: [{{destination: {{host: svc-{i}, subset: v2}}}}]\n  - route:\n    - {{destination: {{host: svc-{i}, subset: v1}}, weight: 90}}\n    - {{destination: {{host: svc-{i}, subset: v2}}, weight: 10}}\n    timeout: 2s\n"
            );
        }
    }
    files.push(("services-last.yaml".into(), services));
    files.push(("workload-entries-last.yaml".into(), entries));
    files.push(("routes-last.yaml".into(), routes));
    files
}

/// The peak resident set of the process so far (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    status_kib("VmHWM:") * 1024
}

/// The resident set now (`VmRSS`), in bytes.
fn rss() -> u64 {
    status_kib("VmRSS:") * 1024
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The bytes the process's allocations hold now (what was allocated and not freed):
/// unlike the resident set, this falls when memory is freed, whether or not the
/// allocator gives it back to the system.
fn heap() -> u64 {
    let s = stats_alloc::INSTRUMENTED_SYSTEM.stats();
    // A reallocation is counted in both (what it grew by, or shrank by).
    s.bytes_allocated.saturating_sub(s.bytes_deallocated) as u64
}

/// Resets `VmHWM` to the current resident set (Linux 4.0+); false when refused.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs the in-process part; prints a Markdown table.
pub(crate) fn run(size: Size) -> Result<()> {
    let texts = generate(size);
    let bytes: usize = texts.iter().map(|(_, t)| t.len()).sum();
    println!(
        "Configuration: {} services, {} endpoints (WorkloadEntries), {} VirtualServices (with their DestinationRules): {:.1} MiB of YAML\n",
        size.services,
        size.services * size.endpoints_per_service,
        size.virtual_services,
        mib(bytes as u64)
    );
    println!("| step | time | peak RSS during the step | RSS after | heap in use after |");
    println!("|---|---:|---:|---:|---:|");
    let step = |name: &str, f: &mut dyn FnMut()| {
        reset_peak();
        let start = Instant::now();
        f();
        let took = start.elapsed();
        println!(
            "| {name} | {:.0} ms | {:.0} MiB | {:.0} MiB | {:.0} MiB |",
            ms(took),
            mib(peak_rss()),
            mib(rss()),
            mib(heap())
        );
        took
    };
    let mut set = ConfigSet::new();
    step("load (parse YAML)", &mut || {
        for (name, text) in &texts {
            set.add_str(name, text);
        }
    });
    let mut checked = None;
    step("check (validate, analyze, build the registry)", &mut || {
        checked = Some(set.check());
    });
    let checked = checked.context("checked")?;
    let Some(snapshot) = checked.snapshot else {
        anyhow::bail!(
            "the generated configuration has errors:\n{}",
            checked.summary()
        );
    };
    // As a process does it: the runtime drops the YAML trees, compiles, swaps in.
    let mut runtime = None;
    step("runtime: compile and swap in (one workload)", &mut || {
        let rt = mesh_tower::MeshRuntime::from_snapshot(&snapshot);
        let _ = rt.workload(mesh_tower::Workload::new("client", "default"));
        runtime = Some(rt);
    });
    // Compiling alone, beside the runtime's: its time, and what a compiled mesh holds
    // (the heap it adds).
    let before = heap();
    let mut compiled = None;
    step(
        "compile alone, beside the runtime's (route tables, clusters, balancers)",
        &mut || {
            compiled = Some(mesh_core::CompiledMesh::compile(&snapshot));
        },
    );
    let compiled_heap = heap().saturating_sub(before);
    drop(compiled);
    let runtime = runtime.context("runtime")?;
    drop((set, snapshot));
    // One endpoint changes (workload svc-0-0 moves to another address): the whole path,
    // as a reload does it (the sources read every resource again, as the directory and
    // etcd sources do for a change that is not of endpoints only).
    let mut applied = false;
    step(
        "endpoint change: full reload (load, check, compile, swap)",
        &mut || {
            let mut moved = ConfigSet::new();
            for (name, text) in &texts {
                moved.add_str(name, text);
            }
            let mut change = ConfigSet::new();
            change.add_str(
            "moved.yaml",
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: svc-0-0}\nspec:\n  address: 10.255.0.1\n  ports: {http: 8080}\n  labels: {app: svc-0, version: v2}\n",
        );
            moved.apply(change);
            if let Some(s) = moved.check().snapshot {
                runtime.update(&s);
                applied = true;
            }
        },
    );
    if !applied {
        anyhow::bail!("the endpoint change was rejected");
    }
    // Endpoint changes applied incrementally: a workload of svc-<i> moves, a new one
    // registers, then goes away; 100 rounds over different services.
    let entry = |name: &str, app: &str, address: &str| {
        let mut one = ConfigSet::new();
        one.add_str(
            "registered.yaml",
            &format!(
                "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}}}\nspec:\n  address: {address}\n  ports: {{http: 8080}}\n  labels: {{app: {app}, version: v1}}\n"
            ),
        );
        match one.resources() {
            [mesh_config::model::AnyResource::WorkloadEntry(we)] => Ok(we.clone()),
            _ => Err(anyhow::anyhow!("not one WorkloadEntry")),
        }
    };
    let change = |name: &str, entry| mesh_config::registry::WorkloadChange {
        namespace: "default".into(),
        name: name.into(),
        entry,
    };
    let mut times: [Vec<Duration>; 3] = Default::default();
    reset_peak();
    let rounds = 100usize;
    for round in 0..rounds {
        let svc = (round * 97) % size.services;
        let app = format!("svc-{svc}");
        let moved = entry(
            &format!("svc-{svc}-0"),
            &app,
            &format!("10.254.{}.{}", round / 250, round % 250),
        )?;
        let added = entry(&format!("svc-{svc}-new"), &app, "10.253.0.1")?;
        let steps = [
            change(&format!("svc-{svc}-0"), Some(moved)),
            change(&format!("svc-{svc}-new"), Some(added)),
            change(&format!("svc-{svc}-new"), None),
        ];
        for (i, c) in steps.into_iter().enumerate() {
            let start = Instant::now();
            let applied = runtime
                .update_workloads(std::slice::from_ref(&c))
                .map_err(|e| anyhow::anyhow!(e))?;
            times[i].push(start.elapsed());
            if applied.workload_entries().len()
                != size.services * size.endpoints_per_service + usize::from(i == 1)
            {
                anyhow::bail!("endpoint change {i} of round {round} was not applied");
            }
        }
    }
    for (name, t) in [
        "incremental endpoint change: a workload moves",
        "incremental endpoint change: a workload registers",
        "incremental endpoint change: a workload goes away",
    ]
    .iter()
    .zip(times.iter_mut())
    {
        t.sort();
        let p = |q: f64| t[((t.len() - 1) as f64 * q).round() as usize];
        println!(
            "| {name} (median / p99 / max of {rounds}) | {:.2} / {:.2} / {:.2} ms | {:.0} MiB | {:.0} MiB | {:.0} MiB |",
            ms(p(0.5)),
            ms(p(0.99)),
            ms(t[t.len() - 1]),
            mib(peak_rss()),
            mib(rss()),
            mib(heap())
        );
    }
    // A change of another kind (a VirtualService's weights), as the etcd source delivers
    // it: a store of one key per resource, each value decoded once and kept while it
    // stays the same; the changed key decoded again, the whole configuration checked,
    // compiled and swapped in.
    let mut store = mesh_config::store::kv::KvStore::new("/mesh", 1);
    for (_, text) in &texts {
        for doc in text.split("---\n").filter(|d| !d.trim().is_empty()) {
            let mut one = ConfigSet::new();
            one.add_str("doc.yaml", doc);
            let key = match one.resources() {
                [r] => store.key_of(&r.key()),
                _ => anyhow::bail!("a generated document is not one resource"),
            };
            store.insert(key.as_bytes(), doc.as_bytes(), 1);
        }
    }
    let deliver = |store: &mesh_config::store::kv::KvStore| -> Result<()> {
        // As the sources' `offer` does: reusing what the configuration in force computed
        // from the very same resources.
        let snapshot = store
            .config_set()
            .check_after(&runtime.snapshot())
            .snapshot
            .context("the store's configuration has errors")?;
        runtime.update(&snapshot);
        Ok(())
    };
    let mut first = Ok(());
    step(
        "etcd store: first delivery (decode every key, check, compile, swap)",
        &mut || {
            first = deliver(&store);
        },
    );
    first?;
    let mut times = Vec::new();
    let rounds = 10;
    reset_peak();
    for round in 0..rounds {
        let i = (round * 37) % size.virtual_services.max(1);
        let vs = format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: svc-{i}}}\nspec:\n  hosts: [svc-{i}]\n  http:\n  - route:\n    - {{destination: {{host: svc-{i}, subset: v1}}, weight: {w}}}\n    - {{destination: {{host: svc-{i}, subset: v2}}, weight: {r}}}\n",
            w = 50 + round,
            r = 50 - round
        );
        let key = format!("/mesh/networking.istio.io/VirtualService/default/svc-{i}");
        let start = Instant::now();
        store.insert(key.as_bytes(), vs.as_bytes(), 2 + round as i64);
        deliver(&store)?;
        times.push(start.elapsed());
    }
    times.sort();
    println!(
        "| etcd store: a VirtualService changes (median / max of {rounds}) | {:.0} / {:.0} ms | {:.0} MiB | {:.0} MiB | {:.0} MiB |",
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
        mib(peak_rss()),
        mib(rss()),
        mib(heap())
    );
    println!(
        "\nThe compiled mesh alone holds {:.0} MiB (the heap compiling it added).",
        mib(compiled_heap)
    );
    Ok(())
}
