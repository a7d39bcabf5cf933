//! Helpers shared by the store's test files: writing and reading files, snapshots of a
//! directory, small resources.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use mesh_config::model::{Kind, ResourceKey};
use mesh_config::source::SourceFile;

/// The key of a resource.
pub(crate) fn key(kind: Kind, ns: &str, name: &str) -> ResourceKey {
    ResourceKey {
        kind,
        namespace: ns.to_string(),
        name: name.to_string(),
    }
}

/// Writes `text` to `dir/name`.
pub(crate) fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// Reads `dir/name`.
pub(crate) fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

/// Every file of a directory with its content.
pub(crate) fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

/// A source file held in memory.
pub(crate) fn src(name: &str, text: &str) -> Arc<SourceFile> {
    SourceFile::new(name, text)
}

/// A ServiceEntry `name` (in `ns`, or the default namespace) labelled `v: label`.
pub(crate) fn se(name: &str, ns: Option<&str>, label: &str) -> String {
    let ns = ns.map(|n| format!(", namespace: {n}")).unwrap_or_default();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}{ns}, labels: {{v: \"{label}\"}}}}\nspec:\n  hosts: [{name}.example.com]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: DNS\n"
    )
}

/// A DestinationRule `a`.
pub(crate) const DR_A: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: a
spec:
  host: a.example.com
";
