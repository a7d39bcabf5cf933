//! Listing what a directory holds, for `meshctl get` (`kubectl get`): the resources that
//! load, by kind and namespace, each with its file, its line and its text as a document
//! of its own.

use std::collections::HashMap;

use super::dir::DirFile;
use super::text::resource_text;
use super::{ConfigDir, Listed};
use crate::model::Kind;

impl ConfigDir {
    /// The resources of kind `kind` (all kinds when `None`) in namespace `namespace` (all
    /// namespaces when `None`) that load, sorted by namespace, name and kind.
    pub fn list(&self, kind: Option<Kind>, namespace: Option<&str>) -> Vec<Listed> {
        let set = self.config_set();
        let by_name: HashMap<&str, &DirFile> =
            self.files.iter().map(|f| (f.name.as_str(), f)).collect();
        let mut out = Vec::new();
        for r in set.resources() {
            if kind.is_some_and(|k| k != r.kind())
                || namespace.is_some_and(|ns| ns != r.namespace())
            {
                continue;
            }
            let origin = r.origin();
            let Some(file) = by_name.get(origin.source.name()) else {
                continue;
            };
            let key = r.key();
            let line = origin.location().span.start.line;
            // The resource at that line (the key alone, should the lines disagree).
            let text_where = |same_line: bool| {
                file.docs.iter().find_map(|d| {
                    d.resources
                        .iter()
                        .find(|f| f.key == key && (!same_line || f.line == line))
                        .and_then(|f| resource_text(&file.text, d, f))
                })
            };
            let text = text_where(true)
                .or_else(|| text_where(false))
                .unwrap_or_default();
            out.push(Listed {
                resource: r.clone(),
                path: file.path.clone(),
                line,
                text,
            });
        }
        super::sort_listed(&mut out);
        out
    }
}
