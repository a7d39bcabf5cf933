//! Loading: files, directories, multi-document streams and Kubernetes `List`s into a
//! [`ConfigSet`].
//!
//! Loading decodes each document into its typed resource and records, as diagnostics,
//! everything that stops a document from being read (YAML syntax, wrong types, unknown
//! fields, unknown apiVersions). Kinds the mesh does not know (a Deployment next to the
//! Istio resources, say) are warnings, not errors. Checking what was loaded (validation
//! and analysis) is [`ConfigSet::check`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::de::{DeError, from_node};
use crate::diag::{Code, Diagnostic, Location, ResourceRef};
use crate::model::{AnyResource, Kind, ObjectMeta, Origin, Resource, ResourceKey, Trees};
use crate::path::FieldPath;
use crate::source::SourceFile;
use crate::yaml::{Node, Value, YamlErrorKind, parse_stream};

/// Largest file read (bytes). Istio configuration is small; a huge file is a mistake.
pub const MAX_FILE_SIZE: u64 = 32 * 1024 * 1024;

/// A problem reading files (not a problem with their content).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A path that does not exist or cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file larger than [`MAX_FILE_SIZE`].
    #[error("{path} is larger than {MAX_FILE_SIZE} bytes")]
    TooLarge {
        /// The path.
        path: PathBuf,
    },
    /// A file that is not UTF-8 text.
    #[error("{path} is not UTF-8 text")]
    NotText {
        /// The path.
        path: PathBuf,
    },
    /// A configuration file (`*.yaml`, `*.yml`, or a path given) that is no regular
    /// file: a FIFO, a socket or a device (or a link to one) would block or never end.
    #[error("{path} is {what}, not a regular file: only regular files are read as configuration")]
    NotARegularFile {
        /// The path.
        path: PathBuf,
        /// What it is (`a FIFO`, `a socket`, `a character device`, ...).
        what: &'static str,
    },
}

/// What a path that is neither a regular file nor a directory is, for
/// [`LoadError::NotARegularFile`]; `None` for a regular file or a directory.
fn special_file(t: std::fs::FileType) -> Option<&'static str> {
    if t.is_file() || t.is_dir() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        if t.is_fifo() {
            return Some("a FIFO");
        }
        if t.is_socket() {
            return Some("a socket");
        }
        if t.is_char_device() {
            return Some("a character device");
        }
        if t.is_block_device() {
            return Some("a block device");
        }
    }
    Some("a special file")
}

/// A set of loaded resources, not yet checked.
///
/// Resources are unique by kind, namespace and name: loading a second one is an error that
/// names both places; [`ConfigSet::apply`] replaces instead, as `kubectl apply` does.
#[derive(Debug, Clone, Default)]
pub struct ConfigSet {
    resources: Vec<AnyResource>,
    index: HashMap<ResourceKey, usize>,
    diagnostics: Vec<Diagnostic>,
    sources: Vec<Arc<SourceFile>>,
}

impl ConfigSet {
    /// An empty set.
    pub fn new() -> Self {
        ConfigSet::default()
    }

    /// Loads the files named by `paths` (see [`ConfigSet::load_path`]).
    pub fn load<P: AsRef<Path>>(paths: &[P]) -> Result<Self, LoadError> {
        let mut set = ConfigSet::new();
        for p in paths {
            set.load_path(p.as_ref())?;
        }
        Ok(set)
    }

    /// Loads a file, or every `*.yaml` / `*.yml` file under a directory (recursively, in
    /// name order, hidden files and directories skipped).
    pub fn load_path(&mut self, path: &Path) -> Result<(), LoadError> {
        for file in yaml_files(path)? {
            self.load_file(&file)?;
        }
        Ok(())
    }

    fn load_file(&mut self, path: &Path) -> Result<(), LoadError> {
        let source = crate::store::read_source(path)?;
        self.add_source(source);
        Ok(())
    }

    /// Parses `text` as if it were a file called `name`.
    pub fn add_str(&mut self, name: &str, text: &str) {
        self.add_source(SourceFile::new(name, text));
    }

    /// Parses a source: every document in it, `List`s unpacked.
    pub fn add_source(&mut self, source: Arc<SourceFile>) {
        let stream = parse_stream(&source);
        for e in &stream.errors {
            self.diagnostics.push(yaml_error(&source, e));
        }
        let broken: std::collections::HashSet<usize> = stream
            .errors
            .iter()
            .filter(|e| e.kind != YamlErrorKind::Syntax)
            .map(|e| e.document)
            .collect();
        let documents: Vec<(usize, Arc<Node>)> = stream
            .documents
            .into_iter()
            .map(|(index, node)| (index, Arc::new(node)))
            .collect();
        let trees = Trees::new(source.clone(), documents.clone());
        for (index, doc) in documents {
            let decoded = decode_document(&trees, &doc, index);
            self.diagnostics.extend(decoded.diagnostics);
            // A document with duplicate keys or bad tags was read, but is not trusted.
            if broken.contains(&index) {
                continue;
            }
            for r in decoded.resources {
                self.insert(r);
            }
        }
        self.sources.push(source);
    }

    fn insert(&mut self, r: AnyResource) {
        let key = r.key();
        if let Some(&i) = self.index.get(&key) {
            let first = &self.resources[i];
            let d = Diagnostic::new(
                Code::DuplicateResource,
                format!(
                    "{key} is defined twice (first at {})",
                    first.origin().location().display()
                ),
            )
            .at(r.origin().location())
            .resource(r.reference())
            .related(first.origin().location(), "first defined here")
            .help("a kind/namespace/name may be defined once; remove or rename one of them");
            self.diagnostics.push(d);
            return;
        }
        self.index.insert(key, self.resources.len());
        self.resources.push(r);
    }

    /// Adds or replaces the resources of `other` by kind, namespace and name (like
    /// `kubectl apply`), and keeps its loading diagnostics.
    pub fn apply(&mut self, other: ConfigSet) {
        for r in other.resources {
            let key = r.key();
            if let Some(&i) = self.index.get(&key) {
                self.resources[i] = r;
            } else {
                self.index.insert(key, self.resources.len());
                self.resources.push(r);
            }
        }
        self.diagnostics.extend(other.diagnostics);
        self.sources.extend(other.sources);
    }

    /// Adds a diagnostic found outside the loader (a source's own check, such as a store
    /// key that does not name the resource it holds).
    pub fn push_diagnostic(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }

    /// Removes a resource; returns whether it was there.
    pub fn remove(&mut self, key: &ResourceKey) -> bool {
        let Some(i) = self.index.remove(key) else {
            return false;
        };
        self.resources.remove(i);
        self.index = self
            .resources
            .iter()
            .enumerate()
            .map(|(i, r)| (r.key(), i))
            .collect();
        true
    }

    /// The resources, in load order.
    pub fn resources(&self) -> &[AnyResource] {
        &self.resources
    }

    /// Looks a resource up.
    pub fn get(&self, key: &ResourceKey) -> Option<&AnyResource> {
        self.index.get(key).map(|&i| &self.resources[i])
    }

    /// Diagnostics found while loading.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// The sources read.
    pub fn sources(&self) -> &[Arc<SourceFile>] {
        &self.sources
    }
}

/// The files a path names: the path itself when it is a file, else every `*.yaml` /
/// `*.yml` file under the directory (recursively, in name order, hidden entries skipped,
/// links followed). A configuration path that is no regular file (a FIFO, a socket, a
/// device, or a link to one) is [`LoadError::NotARegularFile`]: reading it would block
/// or never end.
pub fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let meta = std::fs::metadata(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        if let Some(what) = special_file(meta.file_type()) {
            return Err(LoadError::NotARegularFile {
                path: path.to_path_buf(),
                what,
            });
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let dir = path;
    let mut files = Vec::new();
    let walker = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
    for entry in walker {
        let entry = entry.map_err(|e| LoadError::Io {
            path: e.path().unwrap_or(dir).to_path_buf(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("filesystem loop")),
        })?;
        let is_yaml = entry
            .path()
            .extension()
            .is_some_and(|x| x == "yaml" || x == "yml");
        if !is_yaml {
            continue;
        }
        if let Some(what) = special_file(entry.file_type()) {
            return Err(LoadError::NotARegularFile {
                path: entry.into_path(),
                what,
            });
        }
        if entry.file_type().is_file() {
            files.push(entry.into_path());
        }
    }
    Ok(files)
}

/// The diagnostic of a YAML error in `source`.
pub(crate) fn yaml_error(source: &Arc<SourceFile>, e: &crate::yaml::YamlError) -> Diagnostic {
    let code = match e.kind {
        YamlErrorKind::Syntax => Code::YamlSyntax,
        YamlErrorKind::DuplicateKey => Code::DuplicateKey,
        YamlErrorKind::ComplexKey | YamlErrorKind::Tag | YamlErrorKind::Limit => {
            Code::YamlUnsupported
        }
    };
    let mut d = Diagnostic::new(code, e.message.clone()).at(Location {
        source: source.clone(),
        span: e.span,
    });
    if let Some(rel) = e.related {
        let what = match e.kind {
            YamlErrorKind::DuplicateKey => "first defined here",
            _ => "the parser stopped here",
        };
        d = d.related(
            Location {
                source: source.clone(),
                span: rel,
            },
            what,
        );
    }
    d
}

/// Istio kinds the mesh does not read: documents of these kinds are ignored with a
/// warning, while an unknown kind in an Istio group is an error (most likely a typo).
const OTHER_ISTIO_KINDS: &[&str] = &[
    "Sidecar",
    "WorkloadGroup",
    "ProxyConfig",
    "WasmPlugin",
    "IstioOperator",
];

struct Decoded {
    resources: Vec<AnyResource>,
    diagnostics: Vec<Diagnostic>,
}

fn decode_document(trees: &Arc<Trees>, doc: &Node, index: usize) -> Decoded {
    let mut out = Decoded {
        resources: Vec::new(),
        diagnostics: Vec::new(),
    };
    let origin = Origin::new(trees, index, FieldPath::root());
    let kind = doc.get("kind").and_then(Node::as_str);
    if kind == Some("List")
        || kind.is_some_and(|k| k.ends_with("List") && doc.get("items").is_some())
    {
        decode_list(&origin, doc, &mut out);
    } else {
        decode_resource(&origin, doc, &mut out);
    }
    out
}

fn decode_list(origin: &Origin, doc: &Node, out: &mut Decoded) {
    for e in entries(doc) {
        if !matches!(e.key.as_str(), "apiVersion" | "kind" | "items" | "metadata") {
            out.diagnostics.push(
                Diagnostic::new(
                    Code::UnknownField,
                    format!("unknown field `{}` in a List: expected `apiVersion`, `kind`, `metadata` or `items`", e.key),
                )
                .at(origin.locate(&FieldPath::root().key(e.key.as_str())))
                .path(FieldPath::root().key(e.key.as_str())),
            );
        }
    }
    match doc.get("items").map(|n| &n.value) {
        Some(Value::Seq(items)) => {
            for (i, item) in items.iter().enumerate() {
                let item_origin = Origin::new(
                    &origin.trees,
                    origin.document_index,
                    FieldPath::root().key("items").index(i),
                );
                decode_resource(&item_origin, item, out);
            }
        }
        Some(Value::Null) | None => {}
        Some(other) => out.diagnostics.push(
            Diagnostic::new(
                Code::TypeMismatch,
                format!(
                    "expected a sequence of resources, found {}",
                    other.type_name()
                ),
            )
            .at(origin.locate(&FieldPath::root().key("items")))
            .path(FieldPath::root().key("items")),
        ),
    }
}

fn entries(node: &Node) -> &[crate::yaml::Entry] {
    match &node.value {
        Value::Map(e) => e,
        _ => &[],
    }
}

/// Turns a serde error into a diagnostic located in the resource.
fn de_diagnostic(origin: &Origin, e: DeError, resource: Option<ResourceRef>) -> Diagnostic {
    let mut d = Diagnostic::new(e.code, e.message);
    if let Some((path, span)) = e.located {
        // `path` is relative to the resource; the span was taken from the tree itself.
        d = d
            .at(Location {
                source: origin.source.clone(),
                span,
            })
            .path(path);
    } else {
        d = d.at(origin.location());
    }
    if let Some(r) = resource {
        d = d.resource(r);
    }
    d
}

fn decode_resource(origin: &Origin, node: &Node, out: &mut Decoded) {
    let root = FieldPath::root();
    let Value::Map(top) = &node.value else {
        out.diagnostics.push(
            Diagnostic::new(
                Code::NotAResource,
                format!(
                    "expected a resource (a mapping with apiVersion, kind, metadata and spec), found {}",
                    node.value.type_name()
                ),
            )
            .at(origin.location()),
        );
        return;
    };
    let text_field = |name: &str, out: &mut Decoded| -> Option<String> {
        match node.get(name).map(|n| &n.value) {
            Some(Value::Str(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Str(_)) | Some(Value::Null) | None => {
                out.diagnostics.push(
                    Diagnostic::new(
                        Code::NotAResource,
                        format!("the document has no `{name}`: every resource needs `apiVersion` and `kind`"),
                    )
                    .at(origin.location())
                    .path(root.key(name)),
                );
                None
            }
            Some(other) => {
                out.diagnostics.push(
                    Diagnostic::new(
                        Code::TypeMismatch,
                        format!("expected a string, found {}", other.type_name()),
                    )
                    .at(origin.locate(&root.key(name)))
                    .path(root.key(name)),
                );
                None
            }
        }
    };
    let api_version = text_field("apiVersion", out);
    let kind_name = text_field("kind", out);
    let (Some(api_version), Some(kind_name)) = (api_version, kind_name) else {
        return;
    };
    let Some(kind) = Kind::from_name(&kind_name) else {
        let group = api_version.split_once('/').map_or("", |(g, _)| g);
        let istio_group = group.ends_with(".istio.io") || group == crate::model::MESH_GROUP;
        let (code, message) = if istio_group && !OTHER_ISTIO_KINDS.contains(&kind_name.as_str()) {
            (
                Code::UnknownIstioKind,
                format!("{group} has no kind {kind_name}"),
            )
        } else {
            (
                Code::UnknownKind,
                format!(
                    "{kind_name} ({api_version}) is not a kind the mesh reads; the document is ignored"
                ),
            )
        };
        let mut d = Diagnostic::new(code, message)
            .at(origin.locate(&root.key("kind")))
            .path(root.key("kind"));
        let names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        if let Some(s) = crate::de::suggest(&kind_name, &names) {
            d = d.help(format!("did you mean `{s}`?"));
        }
        out.diagnostics.push(d);
        return;
    };
    if !kind.accepts(&api_version) {
        out.diagnostics.push(
            Diagnostic::new(
                Code::UnsupportedApiVersion,
                format!(
                    "{kind} is not served under apiVersion `{api_version}`: expected one of {}",
                    kind.api_versions()
                        .iter()
                        .map(|v| format!("`{v}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .at(origin.locate(&root.key("apiVersion")))
            .path(root.key("apiVersion")),
        );
        return;
    }
    let mut ok = true;
    for e in top {
        if !matches!(
            e.key.as_str(),
            "apiVersion" | "kind" | "metadata" | "spec" | "status"
        ) {
            let expected = ["apiVersion", "kind", "metadata", "spec", "status"];
            let mut msg = format!("unknown field `{}`", e.key);
            if let Some(s) = crate::de::suggest(&e.key, &expected) {
                msg.push_str(&format!(" (did you mean `{s}`?)"));
            }
            msg.push_str(": expected `apiVersion`, `kind`, `metadata`, `spec` or `status`");
            out.diagnostics.push(
                Diagnostic::new(Code::UnknownField, msg)
                    .at(origin.locate(&root.key(e.key.as_str())))
                    .path(root.key(e.key.as_str())),
            );
            ok = false;
        }
    }
    let meta_node = node.get("metadata");
    let meta: ObjectMeta = match meta_node {
        Some(n) => match from_node(n, root.key("metadata")) {
            Ok(m) => m,
            Err(e) => {
                out.diagnostics.push(de_diagnostic(origin, e, None));
                return;
            }
        },
        None => ObjectMeta::default(),
    };
    let mut meta = meta;
    if meta.name.is_empty() {
        out.diagnostics.push(
            Diagnostic::new(Code::MissingField, format!("{kind} has no `metadata.name`"))
                .at(origin.locate(&root.key("metadata")))
                .path(root.key("metadata").key("name")),
        );
        return;
    }
    if meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = Some("default".to_string());
    }
    let reference = ResourceRef {
        kind: kind.as_str().to_string(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone(),
    };
    let null = Node {
        value: Value::Null,
        span: node.span,
    };
    let spec_node = node.get("spec").unwrap_or(&null);
    let spec_path = root.key("spec");
    macro_rules! typed {
        ($variant:ident) => {
            match from_node(spec_node, spec_path) {
                Ok(spec) => AnyResource::$variant(Arc::new(Resource {
                    api_version: api_version.clone(),
                    meta,
                    spec,
                    origin: origin.clone(),
                })),
                Err(e) => {
                    out.diagnostics
                        .push(de_diagnostic(origin, e, Some(reference)));
                    return;
                }
            }
        };
    }
    let resource = match kind {
        Kind::VirtualService => typed!(VirtualService),
        Kind::DestinationRule => typed!(DestinationRule),
        Kind::Gateway => typed!(Gateway),
        Kind::ServiceEntry => typed!(ServiceEntry),
        Kind::WorkloadEntry => typed!(WorkloadEntry),
        Kind::WorkloadGroup => typed!(WorkloadGroup),
        Kind::PeerAuthentication => typed!(PeerAuthentication),
        Kind::AuthorizationPolicy => typed!(AuthorizationPolicy),
        Kind::RequestAuthentication => typed!(RequestAuthentication),
        Kind::MeshConfig => typed!(MeshConfig),
        Kind::EnvoyFilter => typed!(EnvoyFilter),
        Kind::LocalRateLimitPolicy => typed!(LocalRateLimitPolicy),
        Kind::Telemetry => typed!(Telemetry),
    };
    if ok {
        out.resources.push(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(text: &str) -> ConfigSet {
        let mut s = ConfigSet::new();
        s.add_str("t.yaml", text);
        s
    }

    #[test]
    fn multi_document_and_list_and_default_namespace() {
        let s = set(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec: {hosts: [a]}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.istio.io/v1beta1\n  kind: DestinationRule\n  metadata: {name: b, namespace: prod}\n  spec: {host: b}\n",
        );
        assert!(s.diagnostics().is_empty(), "{:?}", s.diagnostics());
        assert_eq!(s.resources().len(), 2);
        assert_eq!(s.resources()[0].namespace(), "default");
        assert_eq!(s.resources()[1].kind(), Kind::DestinationRule);
        assert_eq!(s.resources()[1].namespace(), "prod");
        // the List item knows where it was written
        assert_eq!(s.resources()[1].origin().location().span.start.line, 10);
    }

    #[test]
    fn unknown_kind_is_a_warning_and_bad_api_version_an_error() {
        let s = set(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n---\napiVersion: networking.istio.io/v2\nkind: Gateway\nmetadata: {name: g}\n",
        );
        let codes: Vec<_> = s.diagnostics().iter().map(|d| d.code).collect();
        assert_eq!(codes, vec![Code::UnknownKind, Code::UnsupportedApiVersion]);
        assert_eq!(s.diagnostics()[1].line(), Some(5));
        assert!(s.resources().is_empty());
    }

    #[test]
    fn duplicate_resource_names_both_places() {
        let s = set(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\n---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: default}\n",
        );
        let d = &s.diagnostics()[0];
        assert_eq!(d.code, Code::DuplicateResource);
        assert_eq!(d.line(), Some(5));
        assert_eq!(d.related[0].location.span.start.line, 1);
        assert_eq!(s.resources().len(), 1);
    }

    #[test]
    fn apply_replaces_by_key() {
        let mut a = set(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [a]}\n",
        );
        let b = set(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [b]}\n",
        );
        a.apply(b);
        assert_eq!(a.resources().len(), 1);
        let AnyResource::VirtualService(vs) = &a.resources()[0] else {
            panic!("not a VirtualService");
        };
        assert_eq!(vs.spec.hosts, vec!["b".to_string()]);
        assert!(a.remove(&a.resources()[0].key()));
        assert!(a.resources().is_empty());
    }
}
