//! PeerAuthentication: which mutual TLS mode a workload's server side enforces, per port.
//!
//! Istio picks, for one workload, at most one policy per level and lets the narrowest
//! level that sets a mode win (pilot's `ComposePeerAuthentication`):
//!
//! - mesh: a policy of the root namespace without a selector;
//! - namespace: a policy of the workload's namespace without a selector;
//! - workload: a policy of the workload's namespace whose selector matches its labels.
//!
//! A selector with empty `matchLabels` counts as no selector. A policy of the root
//! namespace *with* a selector is ignored, for every workload (the root namespace's own
//! included). Policies of any other namespace never apply. The workload's mode is the
//! workload policy's, else the namespace policy's, else the mesh policy's, else
//! PERMISSIVE; UNSET (or no `mtls`) inherits from the level above. Only the workload
//! policy's `portLevelMtls` counts (Istio rejects it elsewhere, and ignores it if it gets
//! through): a port's mode overrides the workload's for the port the server listens on
//! (the workload's target port), and UNSET there inherits the workload's mode.
//!
//! When several policies compete at one level Istio takes the oldest (creation time, then
//! name). A configuration has no creation times, so the first loaded wins here. The
//! model has no `targetRef`, so nothing is attached the Gateway API way.
//!
//! A server and its clients must agree — auto mTLS sends mutual TLS to a server unless it
//! DISABLEs it — so the mode is computed the same way for both: [`PeerAuthn::for_workload`]
//! for a workload's own view, [`server_mode`] (through
//! [`CompiledMesh::server_mtls_mode`](crate::CompiledMesh::server_mtls_mode)) for a
//! client asking about a destination workload, without allocating.

use std::fmt;
use std::sync::Arc;

use mesh_config::FieldPath;
use mesh_config::model::Labels;
use mesh_config::model::Resource;
use mesh_config::model::security::{self, MutualTls, PeerAuthentication};

/// The mutual TLS mode a server enforces: Istio's effective mode, never UNSET.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MtlsMode {
    /// Mutual TLS only.
    Strict,
    /// Mutual TLS and plaintext (Istio's default).
    #[default]
    Permissive,
    /// Plaintext only.
    Disable,
}

impl MtlsMode {
    /// Istio's name (`STRICT`, `PERMISSIVE`, `DISABLE`).
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Strict => "STRICT",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Disable => "DISABLE",
        }
    }

    /// True when the server accepts plaintext connections.
    pub fn accepts_plaintext(self) -> bool {
        self != MtlsMode::Strict
    }

    /// True when the server accepts mutual TLS connections.
    pub fn accepts_mtls(self) -> bool {
        self != MtlsMode::Disable
    }

    /// True when a client with auto mTLS sends mutual TLS to a server in this mode:
    /// Istio does unless the server DISABLEs it.
    pub fn auto_mtls(self) -> bool {
        self != MtlsMode::Disable
    }

    /// The mode a written value sets; `None` for UNSET or nothing (inherit).
    fn written(mtls: Option<&MutualTls>) -> Option<Self> {
        match mtls.and_then(|m| m.mode)? {
            security::MtlsMode::Unset => None,
            security::MtlsMode::Disable => Some(MtlsMode::Disable),
            security::MtlsMode::Permissive => Some(MtlsMode::Permissive),
            security::MtlsMode::Strict => Some(MtlsMode::Strict),
        }
    }
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The level at which a PeerAuthentication applies to a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Root namespace, no selector: every workload.
    Mesh,
    /// The workload's namespace, no selector.
    Namespace,
    /// The workload's namespace, a selector that matches its labels.
    Workload,
}

impl Scope {
    /// Lower-case name (`mesh`, `namespace`, `workload`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Mesh => "mesh",
            Scope::Namespace => "namespace",
            Scope::Workload => "workload",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A PeerAuthentication, named for explanations.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyRef {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
    /// The file it was written in.
    pub file: Arc<str>,
    /// The line the resource starts at.
    pub line: u32,
}

impl fmt::Display for PolicyRef {
    /// `namespace/name`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Which policy, at which level and through which field, set an effective mode.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModeSource {
    /// The policy.
    pub policy: Arc<PolicyRef>,
    /// Its level for the workload.
    pub scope: Scope,
    /// The port of `portLevelMtls` that set it; `None` when `mtls` did.
    pub port: Option<u16>,
    /// The line of the field that set it (in [`PolicyRef::file`]).
    pub line: u32,
}

impl fmt::Display for ModeSource {
    /// `ns/name (file:line)`, with `portLevelMtls[port]` when a port entry set the mode.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}:{})", self.policy, self.policy.file, self.line)?;
        if let Some(port) = self.port {
            write!(f, " portLevelMtls[{port}]")?;
        }
        Ok(())
    }
}

/// One entry of `portLevelMtls`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PortLevel {
    port: u16,
    /// `None`: UNSET, inherits the workload's mode.
    mode: Option<MtlsMode>,
    line: u32,
}

/// A compiled PeerAuthentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPeerAuthentication {
    policy: Arc<PolicyRef>,
    /// `None` when absent or without labels (Istio treats both alike).
    selector: Option<Labels>,
    /// `None`: UNSET or no `mtls`.
    mode: Option<MtlsMode>,
    /// The line of `spec.mtls` (or of the resource when absent).
    mode_line: u32,
    /// Sorted by port; empty unless the policy has a selector.
    ports: Vec<PortLevel>,
    dropped: Vec<String>,
}

impl CompiledPeerAuthentication {
    /// Compiles one policy.
    pub fn compile(resource: &Resource<PeerAuthentication>) -> Self {
        let spec = &resource.spec;
        let origin = &resource.origin;
        let root = origin.location();
        let line_of = |path: &FieldPath| origin.locate(path).span.start.line;
        let spec_path = FieldPath::root().key("spec");
        let selector = spec
            .selector
            .as_ref()
            .filter(|s| !s.match_labels.is_empty())
            .map(|s| s.match_labels.clone());
        let mut dropped = Vec::new();
        let mut ports = Vec::new();
        if selector.is_none() {
            if !spec.port_level_mtls.is_empty() {
                dropped.push(
                    "portLevelMtls: ignored, a policy without selector labels has no per-port modes"
                        .to_string(),
                );
            }
        } else {
            // A BTreeMap: sorted by port already.
            for (&port, mtls) in &spec.port_level_mtls {
                let Ok(p) = u16::try_from(port) else {
                    dropped.push(format!("portLevelMtls[{port}]: ignored, not a port number"));
                    continue;
                };
                ports.push(PortLevel {
                    port: p,
                    mode: MtlsMode::written(Some(mtls)),
                    line: line_of(&spec_path.key("portLevelMtls").key(port.to_string())),
                });
            }
        }
        CompiledPeerAuthentication {
            policy: Arc::new(PolicyRef {
                namespace: resource.namespace().into(),
                name: resource.name().into(),
                file: root.source.name().into(),
                line: root.span.start.line,
            }),
            selector,
            mode: MtlsMode::written(spec.mtls.as_ref()),
            mode_line: line_of(&spec_path.key("mtls")),
            ports,
            dropped,
        }
    }

    /// The policy's name and location.
    pub fn policy(&self) -> &Arc<PolicyRef> {
        &self.policy
    }

    /// Its namespace.
    pub fn namespace(&self) -> &str {
        &self.policy.namespace
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.policy.name
    }

    /// The mode its `mtls` sets; `None` when UNSET or absent (inherited).
    pub fn mode(&self) -> Option<MtlsMode> {
        self.mode
    }

    /// The labels its selector matches; `None` when it has no selector or one without
    /// labels (it then applies to a whole namespace, or to the mesh).
    pub fn selector(&self) -> Option<&Labels> {
        self.selector.as_ref()
    }

    /// Its level, the mesh's root namespace being `root`: `None` when Istio ignores it
    /// (a selector in the root namespace).
    pub fn scope(&self, root: &str) -> Option<Scope> {
        match (self.selector.is_some(), &*self.policy.namespace == root) {
            (false, true) => Some(Scope::Mesh),
            (false, false) => Some(Scope::Namespace),
            (true, false) => Some(Scope::Workload),
            (true, true) => None,
        }
    }

    /// What of it is ignored, and why (per-port modes without a selector, port numbers
    /// out of range), for the debug log and `meshctl`.
    pub fn dropped(&self) -> &[String] {
        &self.dropped
    }

    /// Its `portLevelMtls` entry for `port`, if any.
    fn port_mode(&self, port: u16) -> Option<&PortLevel> {
        self.ports
            .binary_search_by_key(&port, |p| p.port)
            .ok()
            .and_then(|i| self.ports.get(i))
    }

    fn source(self: &Arc<Self>, scope: Scope) -> ModeSource {
        ModeSource {
            policy: self.policy.clone(),
            scope,
            port: None,
            line: self.mode_line,
        }
    }
}

/// The policies that apply to one workload, at most one per level.
#[derive(Debug, Clone, Copy, Default)]
struct Selected<'a> {
    mesh: Option<&'a Arc<CompiledPeerAuthentication>>,
    namespace: Option<&'a Arc<CompiledPeerAuthentication>>,
    workload: Option<&'a Arc<CompiledPeerAuthentication>>,
}

impl<'a> Selected<'a> {
    /// Istio's `GetPeerAuthenticationsForWorkload` and the choice of
    /// `ComposePeerAuthentication`, the first loaded standing for the oldest.
    fn pick(
        all: &'a [Arc<CompiledPeerAuthentication>],
        root: &str,
        namespace: &str,
        labels: &Labels,
    ) -> Self {
        let mut s = Selected::default();
        for p in all {
            let ns = &*p.policy.namespace;
            if ns != namespace && ns != root {
                continue;
            }
            // Namespace and workload levels are not in the root namespace: they are in
            // the workload's.
            let slot = match p.scope(root) {
                Some(Scope::Mesh) => &mut s.mesh,
                Some(Scope::Namespace) => &mut s.namespace,
                Some(Scope::Workload)
                    if p.selector
                        .as_ref()
                        .is_some_and(|sel| mesh_config::registry::selects(sel, labels)) =>
                {
                    &mut s.workload
                }
                Some(Scope::Workload) | None => continue,
            };
            if slot.is_none() {
                *slot = Some(p);
            }
        }
        s
    }

    /// The narrowest level that sets a mode, as (policy, level).
    fn decider(&self) -> Option<(&'a Arc<CompiledPeerAuthentication>, Scope)> {
        [
            (self.workload, Scope::Workload),
            (self.namespace, Scope::Namespace),
            (self.mesh, Scope::Mesh),
        ]
        .into_iter()
        .find_map(|(p, scope)| p.filter(|p| p.mode.is_some()).map(|p| (p, scope)))
    }

    /// The workload's mode, before port-level overrides.
    fn default_mode(&self) -> MtlsMode {
        self.decider().and_then(|(p, _)| p.mode).unwrap_or_default()
    }
}

/// The mode of one port of a workload, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMode {
    /// The port the server listens on (the workload's target port).
    pub port: u16,
    /// Its effective mode.
    pub mode: MtlsMode,
    /// What set it; `None` for Istio's default (PERMISSIVE, nothing set a mode).
    pub source: Option<ModeSource>,
}

/// The mutual TLS modes one workload's server side enforces (see the module
/// documentation); with no policy, PERMISSIVE on every port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerAuthn {
    default: MtlsMode,
    default_source: Option<ModeSource>,
    /// Sorted by port: the workload policy's `portLevelMtls`, resolved.
    ports: Vec<PortMode>,
    /// The policies selected, mesh first.
    policies: Vec<(Scope, Arc<PolicyRef>)>,
}

impl PeerAuthn {
    /// The modes of a workload with `labels` in `namespace` under the policies `all` (in
    /// load order), the mesh's root namespace being `root`.
    pub fn for_workload(
        all: &[Arc<CompiledPeerAuthentication>],
        root: &str,
        namespace: &str,
        labels: &Labels,
    ) -> Self {
        let selected = Selected::pick(all, root, namespace, labels);
        let default = selected.default_mode();
        let default_source = selected.decider().map(|(p, scope)| p.source(scope));
        let ports = selected
            .workload
            .map(|w| {
                w.ports
                    .iter()
                    .map(|pl| match pl.mode {
                        Some(mode) => PortMode {
                            port: pl.port,
                            mode,
                            source: Some(ModeSource {
                                policy: w.policy.clone(),
                                scope: Scope::Workload,
                                port: Some(pl.port),
                                line: pl.line,
                            }),
                        },
                        None => PortMode {
                            port: pl.port,
                            mode: default,
                            source: default_source.clone(),
                        },
                    })
                    .collect()
            })
            .unwrap_or_default();
        let policies = [
            (Scope::Mesh, selected.mesh),
            (Scope::Namespace, selected.namespace),
            (Scope::Workload, selected.workload),
        ]
        .into_iter()
        .filter_map(|(scope, p)| p.map(|p| (scope, p.policy.clone())))
        .collect();
        PeerAuthn {
            default,
            default_source,
            ports,
            policies,
        }
    }

    /// The mode enforced on `port`, the port the server listens on (the workload's
    /// target port, not the service's).
    pub fn mode(&self, port: u16) -> MtlsMode {
        self.port(port).map_or(self.default, |p| p.mode)
    }

    /// What set the mode of `port`; `None` for Istio's default (PERMISSIVE).
    pub fn source(&self, port: u16) -> Option<&ModeSource> {
        match self.port(port) {
            Some(p) => p.source.as_ref(),
            None => self.default_source.as_ref(),
        }
    }

    /// The mode of the ports without a port-level mode.
    pub fn default_mode(&self) -> MtlsMode {
        self.default
    }

    /// What set [`PeerAuthn::default_mode`]; `None` for Istio's default.
    pub fn default_source(&self) -> Option<&ModeSource> {
        self.default_source.as_ref()
    }

    /// The ports with a port-level mode (UNSET entries resolved), sorted by port.
    pub fn ports(&self) -> &[PortMode] {
        &self.ports
    }

    /// The policies that apply, one per level at most, mesh first (including those
    /// that set no mode).
    pub fn policies(&self) -> &[(Scope, Arc<PolicyRef>)] {
        &self.policies
    }

    fn port(&self, port: u16) -> Option<&PortMode> {
        self.ports
            .binary_search_by_key(&port, |p| p.port)
            .ok()
            .and_then(|i| self.ports.get(i))
    }
}

/// The mode a workload with `labels` in `namespace` enforces on `port` (the port its
/// server listens on) under the policies `all`, the root namespace being `root`: what
/// [`PeerAuthn::for_workload`]`(..).mode(port)` answers, without allocating — for a
/// client deciding on auto mTLS toward a destination workload.
pub fn server_mode(
    all: &[Arc<CompiledPeerAuthentication>],
    root: &str,
    namespace: &str,
    labels: &Labels,
    port: u16,
) -> MtlsMode {
    let selected = Selected::pick(all, root, namespace, labels);
    let default = selected.default_mode();
    selected
        .workload
        .and_then(|w| w.port_mode(port))
        .map_or(default, |p| p.mode.unwrap_or(default))
}

#[cfg(test)]
mod tests;
