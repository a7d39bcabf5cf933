//! The typed model of Istio's resources.
//!
//! One Rust type per Istio message, with the field names of Istio's API reference (serde
//! renames them to the YAML's lowerCamelCase). Every struct denies unknown fields: a typo
//! is an error, never silently dropped. Optional protobuf fields are `Option`s so that
//! validation can tell "absent" from "zero".

pub mod common;
pub mod destination_rule;
pub mod envoy_filter;
pub mod envoy_ratelimit;
pub mod gateway;
pub mod mesh;
pub mod ratelimit;
pub mod security;
pub mod service_entry;
pub mod telemetry;
pub mod virtual_service;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde::de::IgnoredAny;

pub use common::*;
pub use destination_rule::*;
pub use envoy_filter::EnvoyFilter;
pub use gateway::*;
pub use mesh::*;
pub use ratelimit::*;
pub use security::*;
pub use service_entry::*;
pub use telemetry::Telemetry;
pub use virtual_service::*;

use crate::diag::{Location, ResourceRef};
use crate::path::FieldPath;
use crate::source::{SourceFile, Span};
use crate::yaml::Node;

/// The kinds of resource the mesh reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `networking.istio.io` VirtualService.
    VirtualService,
    /// `networking.istio.io` DestinationRule.
    DestinationRule,
    /// `networking.istio.io` Gateway.
    Gateway,
    /// `networking.istio.io` ServiceEntry.
    ServiceEntry,
    /// `networking.istio.io` WorkloadEntry.
    WorkloadEntry,
    /// `networking.istio.io` WorkloadGroup.
    WorkloadGroup,
    /// `security.istio.io` PeerAuthentication.
    PeerAuthentication,
    /// `security.istio.io` AuthorizationPolicy.
    AuthorizationPolicy,
    /// `security.istio.io` RequestAuthentication.
    RequestAuthentication,
    /// `mesh.rs` MeshConfig: mesh-wide settings.
    MeshConfig,
    /// `networking.istio.io` EnvoyFilter (served as `v1alpha3` only).
    EnvoyFilter,
    /// `mesh.rs` LocalRateLimitPolicy: local rate limits of workloads.
    LocalRateLimitPolicy,
    /// `telemetry.istio.io` Telemetry.
    Telemetry,
}

/// API group of mesh-wide settings.
pub const MESH_GROUP: &str = "mesh.rs";

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 13] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Gateway,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::WorkloadGroup,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
        Kind::MeshConfig,
        Kind::EnvoyFilter,
        Kind::LocalRateLimitPolicy,
        Kind::Telemetry,
    ];

    /// The kind's name as written in `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Gateway => "Gateway",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::WorkloadGroup => "WorkloadGroup",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::MeshConfig => "MeshConfig",
            Kind::EnvoyFilter => "EnvoyFilter",
            Kind::LocalRateLimitPolicy => "LocalRateLimitPolicy",
            Kind::Telemetry => "Telemetry",
        }
    }

    /// Looks a kind up by its name (case-sensitive, as Kubernetes does).
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Looks a kind up by name, plural or short name, case-insensitively (`vs`,
    /// `virtualservices`, `VirtualService`), the way `kubectl get` does.
    pub fn from_cli_name(name: &str) -> Option<Kind> {
        let n = name.to_ascii_lowercase();
        let k = match n.as_str() {
            "virtualservice" | "virtualservices" | "vs" => Kind::VirtualService,
            "destinationrule" | "destinationrules" | "dr" => Kind::DestinationRule,
            "gateway" | "gateways" | "gw" => Kind::Gateway,
            "serviceentry" | "serviceentries" | "se" => Kind::ServiceEntry,
            "workloadentry" | "workloadentries" | "we" => Kind::WorkloadEntry,
            "workloadgroup" | "workloadgroups" | "wg" => Kind::WorkloadGroup,
            "peerauthentication" | "peerauthentications" | "pa" => Kind::PeerAuthentication,
            "authorizationpolicy" | "authorizationpolicies" | "ap" => Kind::AuthorizationPolicy,
            "requestauthentication" | "requestauthentications" | "ra" => {
                Kind::RequestAuthentication
            }
            "meshconfig" | "meshconfigs" => Kind::MeshConfig,
            "envoyfilter" | "envoyfilters" => Kind::EnvoyFilter,
            "localratelimitpolicy" | "localratelimitpolicies" => Kind::LocalRateLimitPolicy,
            "telemetry" | "telemetries" => Kind::Telemetry,
            _ => return None,
        };
        Some(k)
    }

    /// The API group.
    pub fn group(self) -> &'static str {
        match self {
            Kind::VirtualService
            | Kind::DestinationRule
            | Kind::Gateway
            | Kind::ServiceEntry
            | Kind::WorkloadEntry
            | Kind::WorkloadGroup
            | Kind::EnvoyFilter => "networking.istio.io",
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                "security.istio.io"
            }
            Kind::MeshConfig | Kind::LocalRateLimitPolicy => MESH_GROUP,
            Kind::Telemetry => "telemetry.istio.io",
        }
    }

    /// The versions Istio serves the kind under.
    pub fn versions(self) -> &'static [&'static str] {
        if self == Kind::EnvoyFilter {
            return &["v1alpha3"];
        }
        match self.group() {
            "networking.istio.io" => &["v1alpha3", "v1beta1", "v1"],
            "security.istio.io" => &["v1beta1", "v1"],
            "telemetry.istio.io" => &["v1alpha1", "v1"],
            _ => &["v1alpha1"],
        }
    }

    /// Every `apiVersion` accepted for the kind.
    pub fn api_versions(self) -> Vec<String> {
        self.versions()
            .iter()
            .map(|v| format!("{}/{v}", self.group()))
            .collect()
    }

    /// True when `api_version` is one Istio serves this kind under.
    pub fn accepts(self, api_version: &str) -> bool {
        match api_version.split_once('/') {
            Some((g, v)) => g == self.group() && self.versions().contains(&v),
            None => false,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Kubernetes object metadata. Fields Kubernetes writes (uid, resourceVersion, ...) are
/// accepted and ignored, so that `kubectl get -o yaml` output loads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Name.
    pub name: String,
    /// Namespace (`default` when absent).
    pub namespace: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    #[doc(hidden)]
    pub generate_name: Option<IgnoredAny>,
    #[doc(hidden)]
    pub uid: Option<IgnoredAny>,
    #[doc(hidden)]
    pub resource_version: Option<IgnoredAny>,
    #[doc(hidden)]
    pub generation: Option<IgnoredAny>,
    #[doc(hidden)]
    pub creation_timestamp: Option<IgnoredAny>,
    #[doc(hidden)]
    pub deletion_timestamp: Option<IgnoredAny>,
    #[doc(hidden)]
    pub deletion_grace_period_seconds: Option<IgnoredAny>,
    #[doc(hidden)]
    pub finalizers: Option<IgnoredAny>,
    #[doc(hidden)]
    pub owner_references: Option<IgnoredAny>,
    #[doc(hidden)]
    pub managed_fields: Option<IgnoredAny>,
    #[doc(hidden)]
    pub self_link: Option<IgnoredAny>,
}

/// The YAML trees of one source's documents, shared by the [`Origin`]s of its resources.
///
/// A tree is what turns a field path into `file:line:column`, and it is many times the
/// size of its text (a node per scalar, each with its span). It is needed while a
/// configuration is checked and compiled; after that, [`Trees::release`] drops it and a
/// later lookup (a diagnostic about a resource in force, say) parses the text again,
/// once per source, to the same tree.
pub struct Trees {
    source: Arc<SourceFile>,
    documents: Mutex<Option<Documents>>,
    /// How many times the text was parsed again.
    rereads: std::sync::atomic::AtomicUsize,
}

/// A source's document trees, each with its index in the stream, in order.
type Documents = Arc<[(usize, Arc<Node>)]>;

impl Trees {
    /// The trees of `source`'s documents (each with its index in the stream), as read.
    pub fn new(source: Arc<SourceFile>, documents: Vec<(usize, Arc<Node>)>) -> Arc<Self> {
        Arc::new(Trees {
            source,
            documents: Mutex::new(Some(documents.into())),
            rereads: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The tree of document `index`, parsed again from the text if it was released.
    pub fn document(&self, index: usize) -> Arc<Node> {
        let documents = {
            let mut kept = self.documents.lock().unwrap_or_else(|e| e.into_inner());
            kept.get_or_insert_with(|| {
                self.rereads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                crate::yaml::parse_stream(&self.source)
                    .documents
                    .into_iter()
                    .map(|(i, node)| (i, Arc::new(node)))
                    .collect()
            })
            .clone()
        };
        documents
            .binary_search_by_key(&index, |(i, _)| *i)
            .ok()
            .and_then(|at| documents.get(at))
            .map_or_else(
                // Parsing is deterministic: a document that was read is read again. Were
                // it not, an empty node locates everything at the file's start.
                || {
                    Arc::new(Node {
                        value: crate::yaml::Value::Null,
                        span: Span::default(),
                    })
                },
                |(_, node)| node.clone(),
            )
    }

    /// Drops the trees (see the type's documentation); true when they were kept.
    pub fn release(&self) -> bool {
        self.documents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_some()
    }

    /// How many times the text was parsed again after the trees were released.
    pub fn rereads(&self) -> usize {
        self.rereads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// True while the trees are kept.
    pub fn is_kept(&self) -> bool {
        self.documents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

impl fmt::Debug for Trees {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trees")
            .field("source", &self.source.name())
            .field("kept", &self.is_kept())
            .finish()
    }
}

/// Where a resource came from: its file and its place in it, to locate any of its fields.
#[derive(Clone)]
pub struct Origin {
    /// The file.
    pub source: Arc<SourceFile>,
    /// The trees of the file's documents.
    pub trees: Arc<Trees>,
    /// Path of the resource inside the document (`items[3]` in a `List`, else empty).
    pub base: FieldPath,
    /// Index of the document in its file (0-based).
    pub document_index: usize,
    /// Where the resource itself is (its node's span), kept apart from the trees so that
    /// naming a resource's place never needs them.
    span: Span,
    /// What validating the resource on its own found, once: a loaded resource does not
    /// change, and a configuration checked again (a store's next revision, most of its
    /// resources the same) need not read their trees again.
    validated: Arc<std::sync::OnceLock<Arc<[crate::diag::Diagnostic]>>>,
}

/// The place only: whether the trees are kept and what validating found are not part of
/// it.
impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Origin")
            .field("source", &self.source.name())
            .field("document_index", &self.document_index)
            .field("base", &self.base)
            .field("span", &self.span)
            .finish()
    }
}

impl Origin {
    /// The origin of the resource at `base` in document `document_index` of `trees`.
    pub fn new(trees: &Arc<Trees>, document_index: usize, base: FieldPath) -> Self {
        let mut origin = Origin {
            source: trees.source.clone(),
            trees: trees.clone(),
            base,
            document_index,
            span: Span::default(),
            validated: Arc::default(),
        };
        origin.span = origin.locate(&FieldPath::root()).span;
        origin
    }

    /// `path` (relative to the resource) as a path in the document.
    fn in_document(&self, path: &FieldPath) -> FieldPath {
        let mut full = self.base.clone();
        for seg in path.segments() {
            full.push(seg.clone());
        }
        full
    }

    /// The YAML tree of the document the resource is in.
    pub fn document(&self) -> Arc<Node> {
        self.trees.document(self.document_index)
    }

    /// The location of field `path` (relative to the resource), or of the nearest field
    /// that exists.
    pub fn locate(&self, path: &FieldPath) -> Location {
        let (span, _) = self.in_document(path).locate(&self.document());
        Location {
            source: self.source.clone(),
            span,
        }
    }

    /// The location of the key of field `path` (see [`FieldPath::locate_key`]).
    pub fn locate_key(&self, path: &FieldPath) -> Location {
        let (span, _) = self.in_document(path).locate_key(&self.document());
        Location {
            source: self.source.clone(),
            span,
        }
    }

    /// The location of the resource itself.
    pub fn location(&self) -> Location {
        Location {
            source: self.source.clone(),
            span: self.span,
        }
    }

    /// True when field `path` (relative to the resource) was written in the file.
    pub fn has(&self, path: &FieldPath) -> bool {
        self.in_document(path).locate(&self.document()).1
    }

    /// Calls `f` with the resource's own YAML node (the document, or the `List` item).
    pub fn with_node<R>(&self, f: impl FnOnce(&Node) -> R) -> R {
        let document = self.document();
        let mut node: &Node = &document;
        for seg in self.base.segments() {
            let next = match (seg, &node.value) {
                (crate::path::Segment::Key(k), _) => node.get(k),
                (crate::path::Segment::Index(i), crate::yaml::Value::Seq(items)) => items.get(*i),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        f(node)
    }

    /// The span of the resource itself.
    pub fn span(&self) -> Span {
        self.span
    }

    /// What `validate` finds, computed the first time only (see the field's reason).
    pub fn validated(
        &self,
        validate: impl FnOnce() -> Vec<crate::diag::Diagnostic>,
    ) -> Arc<[crate::diag::Diagnostic]> {
        self.validated.get_or_init(|| validate().into()).clone()
    }
}

/// One resource: its metadata, its typed spec and where it came from.
#[derive(Debug, Clone)]
pub struct Resource<S> {
    /// The `apiVersion` it was written with.
    pub api_version: String,
    /// Metadata; `namespace` is filled in.
    pub meta: ObjectMeta,
    /// The spec.
    pub spec: S,
    /// Where it was written.
    pub origin: Origin,
}

impl<S> Resource<S> {
    /// Name.
    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// Namespace (`default` when none was written).
    pub fn namespace(&self) -> &str {
        self.meta.namespace.as_deref().unwrap_or("default")
    }
}

/// A resource of any kind.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub enum AnyResource {
    VirtualService(Arc<Resource<VirtualService>>),
    DestinationRule(Arc<Resource<DestinationRule>>),
    Gateway(Arc<Resource<Gateway>>),
    ServiceEntry(Arc<Resource<ServiceEntry>>),
    WorkloadEntry(Arc<Resource<WorkloadEntry>>),
    WorkloadGroup(Arc<Resource<WorkloadGroup>>),
    PeerAuthentication(Arc<Resource<PeerAuthentication>>),
    AuthorizationPolicy(Arc<Resource<AuthorizationPolicy>>),
    RequestAuthentication(Arc<Resource<RequestAuthentication>>),
    MeshConfig(Arc<Resource<MeshConfigSpec>>),
    EnvoyFilter(Arc<Resource<EnvoyFilter>>),
    LocalRateLimitPolicy(Arc<Resource<LocalRateLimitPolicy>>),
    Telemetry(Arc<Resource<Telemetry>>),
}

macro_rules! each {
    ($self:expr, $r:ident => $e:expr) => {
        match $self {
            AnyResource::VirtualService($r) => $e,
            AnyResource::DestinationRule($r) => $e,
            AnyResource::Gateway($r) => $e,
            AnyResource::ServiceEntry($r) => $e,
            AnyResource::WorkloadEntry($r) => $e,
            AnyResource::WorkloadGroup($r) => $e,
            AnyResource::PeerAuthentication($r) => $e,
            AnyResource::AuthorizationPolicy($r) => $e,
            AnyResource::RequestAuthentication($r) => $e,
            AnyResource::MeshConfig($r) => $e,
            AnyResource::EnvoyFilter($r) => $e,
            AnyResource::LocalRateLimitPolicy($r) => $e,
            AnyResource::Telemetry($r) => $e,
        }
    };
}

impl AnyResource {
    /// The kind.
    pub fn kind(&self) -> Kind {
        match self {
            AnyResource::VirtualService(_) => Kind::VirtualService,
            AnyResource::DestinationRule(_) => Kind::DestinationRule,
            AnyResource::Gateway(_) => Kind::Gateway,
            AnyResource::ServiceEntry(_) => Kind::ServiceEntry,
            AnyResource::WorkloadEntry(_) => Kind::WorkloadEntry,
            AnyResource::WorkloadGroup(_) => Kind::WorkloadGroup,
            AnyResource::PeerAuthentication(_) => Kind::PeerAuthentication,
            AnyResource::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            AnyResource::RequestAuthentication(_) => Kind::RequestAuthentication,
            AnyResource::MeshConfig(_) => Kind::MeshConfig,
            AnyResource::EnvoyFilter(_) => Kind::EnvoyFilter,
            AnyResource::LocalRateLimitPolicy(_) => Kind::LocalRateLimitPolicy,
            AnyResource::Telemetry(_) => Kind::Telemetry,
        }
    }

    /// Name.
    pub fn name(&self) -> &str {
        each!(self, r => r.name())
    }

    /// Namespace.
    pub fn namespace(&self) -> &str {
        each!(self, r => r.namespace())
    }

    /// apiVersion as written.
    pub fn api_version(&self) -> &str {
        each!(self, r => &r.api_version)
    }

    /// Metadata.
    pub fn meta(&self) -> &ObjectMeta {
        each!(self, r => &r.meta)
    }

    /// Where it was written.
    pub fn origin(&self) -> &Origin {
        each!(self, r => &r.origin)
    }

    /// Kind, namespace and name.
    pub fn key(&self) -> ResourceKey {
        ResourceKey {
            kind: self.kind(),
            namespace: self.namespace().to_string(),
            name: self.name().to_string(),
        }
    }

    /// The reference used in diagnostics.
    pub fn reference(&self) -> ResourceRef {
        self.key().reference()
    }
}

/// Identifies a resource: kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    /// Kind.
    pub kind: Kind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ResourceKey {
    /// The reference used in diagnostics.
    pub fn reference(&self) -> ResourceRef {
        ResourceRef {
            kind: self.kind.as_str().to_string(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}
