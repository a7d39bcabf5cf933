//! Diagnostics: what is wrong, where, and how bad.
//!
//! A diagnostic names its file, line, column, resource and field path, so that a typo is
//! found before anything starts, with an error as good as a compiler's. Codes follow
//! `istioctl analyze` where Istio has one (`IST0101`, `IST0130`, ...); problems Istio's
//! validation webhook rejects without a code get the project's own `MESHnnnn` codes, one
//! per kind of problem, so that scripts and tests can tell them apart.
//!
//! Diagnostics render like rustc's (source line and caret, via `codespan-reporting`) for
//! people, and as JSON for tools.

use std::fmt;
use std::sync::Arc;

use codespan_reporting::diagnostic as cs;
use codespan_reporting::files::SimpleFiles;
use codespan_reporting::term;
use serde::Serialize;

use crate::path::FieldPath;
use crate::source::{SourceFile, Span};

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The configuration is rejected.
    Error,
    /// The configuration is accepted, but something is probably not what was meant.
    Warning,
    /// A remark.
    Info,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        })
    }
}

macro_rules! codes {
    ($( $(#[$doc:meta])* $name:ident = ($code:literal, $sev:ident, $title:literal), )*) => {
        /// The kind of a diagnostic; each has a stable code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code {
            $( $(#[$doc])* $name, )*
        }

        impl Code {
            /// Every code, in order.
            pub const ALL: &'static [Code] = &[$(Code::$name,)*];

            /// The stable code, e.g. `IST0101` or `MESH0004`.
            pub fn as_str(self) -> &'static str {
                match self { $( Code::$name => $code, )* }
            }

            /// The severity a diagnostic of this kind has.
            pub fn severity(self) -> Severity {
                match self { $( Code::$name => Severity::$sev, )* }
            }

            /// A short title of the kind of problem.
            pub fn title(self) -> &'static str {
                match self { $( Code::$name => $title, )* }
            }

            /// Looks a code up by its text.
            pub fn from_code(s: &str) -> Option<Code> {
                match s { $( $code => Some(Code::$name), )* _ => None }
            }
        }
    };
}

codes! {
    /// The text is not valid YAML.
    YamlSyntax = ("MESH0001", Error, "YAML syntax error"),
    /// A mapping has the same key twice.
    DuplicateKey = ("MESH0002", Error, "duplicate key"),
    /// A field has a value of the wrong type.
    TypeMismatch = ("MESH0003", Error, "wrong type"),
    /// A field the API does not have.
    UnknownField = ("MESH0004", Error, "unknown field"),
    /// A required field is missing or empty.
    MissingField = ("MESH0005", Error, "missing required field"),
    /// A value outside an enumeration.
    InvalidEnum = ("MESH0006", Error, "unknown enum value"),
    /// A known kind under an apiVersion Istio does not serve.
    UnsupportedApiVersion = ("MESH0007", Error, "unsupported apiVersion"),
    /// A kind the mesh does not know; the document is ignored.
    UnknownKind = ("MESH0008", Warning, "unknown kind"),
    /// A document that is not a Kubernetes-style resource.
    NotAResource = ("MESH0009", Error, "not a resource"),
    /// Two resources with one kind, namespace and name.
    DuplicateResource = ("MESH0010", Error, "duplicate resource"),
    /// A YAML tag or size the loader does not accept.
    YamlUnsupported = ("MESH0011", Error, "unsupported YAML"),
    /// A name or namespace that is not a valid Kubernetes name.
    InvalidName = ("MESH0012", Error, "invalid name"),
    /// A kind Istio does not have, in one of Istio's API groups (a typo, most likely).
    UnknownIstioKind = ("MESH0013", Error, "unknown kind in an Istio API group"),
    /// An etcd key whose value is not the one resource the key names.
    KeyMismatch = ("MESH0014", Error, "key and resource differ"),
    /// Route weights of several destinations that add up to 0.
    WeightSum = ("MESH0101", Error, "total destination weight is 0"),
    /// A regular expression that is not valid RE2.
    InvalidRegex = ("MESH0102", Error, "invalid regular expression"),
    /// A duration that cannot be read or is out of range.
    InvalidDuration = ("MESH0103", Error, "invalid duration"),
    /// A percentage outside 0-100.
    PercentageRange = ("MESH0104", Error, "percentage out of range"),
    /// An HTTP status code out of range.
    HttpStatusRange = ("MESH0105", Error, "HTTP status out of range"),
    /// Two subsets with one name.
    DuplicateSubset = ("MESH0106", Error, "duplicate subset name"),
    /// Fields that cannot be used together.
    ExclusiveFields = ("MESH0107", Error, "mutually exclusive fields"),
    /// A label key or value Kubernetes would reject.
    InvalidLabel = ("MESH0108", Error, "invalid label"),
    /// A host name that is not valid.
    InvalidHost = ("MESH0109", Error, "invalid host"),
    /// A port number outside 1-65535.
    InvalidPort = ("MESH0110", Error, "invalid port"),
    /// A string match with none or several of exact, prefix and regex.
    InvalidStringMatch = ("MESH0111", Error, "invalid string match"),
    /// A value that is not valid for its field.
    InvalidValue = ("MESH0112", Error, "invalid value"),
    /// The same entry twice where entries must be unique.
    DuplicateEntry = ("MESH0113", Error, "duplicate entry"),
    /// A field the mesh reads but does not act on yet.
    NotEnforced = ("MESH0120", Warning, "parsed, not enforced"),
    /// A ServiceEntry host without a domain.
    ShortServiceEntryHost = ("MESH0121", Warning, "ServiceEntry host without a domain"),
    /// Several DestinationRules for one host.
    ConflictingDestinationRules = ("MESH0122", Warning, "several DestinationRules for one host"),
    /// A fault delay or abort without a percentage: Istio applies it to no request.
    FaultWithoutPercentage = ("MESH0123", Warning, "fault without a percentage"),
    /// Route weights that do not add up to 100: they are relative shares.
    WeightsNotHundred = ("MESH0124", Info, "weights do not add up to 100"),
    /// Several ServiceEntries define one host in one namespace: they are merged.
    MergedServiceEntries = ("MESH0125", Warning, "ServiceEntries merged"),
    /// A feature the configuration uses is deprecated.
    Deprecated = ("IST0002", Warning, "Deprecated"),
    /// A referenced resource does not exist.
    ReferencedResourceNotFound = ("IST0101", Error, "ReferencedResourceNotFound"),
    /// Several VirtualServices bound to the mesh define one host.
    ConflictingMeshGatewayVirtualServiceHosts =
        ("IST0109", Error, "ConflictingMeshGatewayVirtualServiceHosts"),
    /// A destination without a port for a service with several ports.
    VirtualServiceDestinationPortSelectorRequired =
        ("IST0112", Error, "VirtualServiceDestinationPortSelectorRequired"),
    /// A workload selector that selects no workload.
    NoMatchingWorkloadsFound = ("IST0127", Warning, "NoMatchingWorkloadsFound"),
    /// TLS to a destination without a CA to verify it.
    NoServerCertificateVerificationDestinationLevel =
        ("IST0128", Warning, "NoServerCertificateVerificationDestinationLevel"),
    /// Port-level TLS to a destination without a CA to verify it.
    NoServerCertificateVerificationPortLevel =
        ("IST0129", Warning, "NoServerCertificateVerificationPortLevel"),
    /// An HTTP rule that can never be reached.
    VirtualServiceUnreachableRule = ("IST0130", Warning, "VirtualServiceUnreachableRule"),
    /// A match that duplicates a match of an earlier rule.
    VirtualServiceIneffectiveMatch = ("IST0131", Info, "VirtualServiceIneffectiveMatch"),
    /// A VirtualService host that its gateway does not serve.
    VirtualServiceHostNotFoundInGateway =
        ("IST0132", Warning, "VirtualServiceHostNotFoundInGateway"),
    /// An EnvoyFilter without a priority whose patch is relative to other filters.
    EnvoyFilterUsesRelativeOperation = ("IST0151", Warning, "EnvoyFilterUsesRelativeOperation"),
    /// REPLACE where it does not apply. Istio's level is Error; a warning here, as the mesh's
    /// errors stop a configuration from loading and Envoy ignores the patch.
    EnvoyFilterUsesReplaceOperationIncorrectly =
        ("IST0152", Warning, "EnvoyFilterUsesReplaceOperationIncorrectly"),
    /// ADD where it is ignored (a warning here, see IST0152).
    EnvoyFilterUsesAddOperationIncorrectly =
        ("IST0153", Warning, "EnvoyFilterUsesAddOperationIncorrectly"),
    /// REMOVE where it is ignored (a warning here, see IST0152).
    EnvoyFilterUsesRemoveOperationIncorrectly =
        ("IST0154", Warning, "EnvoyFilterUsesRemoveOperationIncorrectly"),
    /// As IST0151, for a filter name another EnvoyFilter patches for a proxy version.
    EnvoyFilterUsesRelativeOperationWithProxyVersion =
        ("IST0155", Warning, "EnvoyFilterUsesRelativeOperationWithProxyVersion"),
    /// Gateways with one selector and port that serve one host. Istio's level is Error; it
    /// is a warning here because the mesh's errors stop a configuration from loading, and
    /// Istio still serves such gateways (the first server wins), as the mesh does.
    ConflictingGateways = ("IST0145", Warning, "ConflictingGateways"),
    /// A ServiceEntry port serving TCP (or an unset protocol) without addresses.
    ServiceEntryAddressesRequired = ("IST0134", Warning, "ServiceEntryAddressesRequired"),
    /// ServiceEntries giving one host and port different protocols.
    ConflictingServiceEntryProtocol = ("IST0177", Warning, "ConflictingServiceEntryProtocol"),
    /// A VirtualService bound to a gateway Istio generates for a Kubernetes Gateway.
    ReferencedInternalGateway = ("IST0165", Warning, "ReferencedInternalGateway"),
    /// A Telemetry's access logging without a provider, and no default provider.
    InvalidTelemetryProvider = ("IST0157", Warning, "InvalidTelemetryProvider"),
    /// Several Telemetries select one workload.
    ConflictingTelemetryWorkloadSelectors =
        ("IST0159", Error, "ConflictingTelemetryWorkloadSelectors"),
    /// Several Telemetries of one namespace without a selector.
    MultipleTelemetriesWithoutWorkloadSelectors =
        ("IST0160", Error, "MultipleTelemetriesWithoutWorkloadSelectors"),
    /// A subset that selects no endpoint.
    DestinationRuleSubsetNotSelectPods =
        ("IST0173", Warning, "DestinationRuleSubsetNotSelectPods"),
    /// A DestinationRule for a host the mesh does not know.
    UnknownDestinationRuleHost = ("IST0174", Warning, "UnknownDestinationRuleHost"),
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The resource a diagnostic is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceRef {
    /// Kind, e.g. `VirtualService`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A place in a source file.
#[derive(Debug, Clone)]
pub struct Location {
    /// The file (or named text).
    pub source: Arc<SourceFile>,
    /// The range in it.
    pub span: Span,
}

impl Location {
    /// `file:line:column`.
    pub fn display(&self) -> String {
        format!(
            "{}:{}:{}",
            self.source.name(),
            self.span.start.line,
            self.span.start.column
        )
    }
}

impl PartialEq for Location {
    fn eq(&self, other: &Self) -> bool {
        self.source.name() == other.source.name() && self.span == other.span
    }
}

/// A second place a diagnostic refers to.
#[derive(Debug, Clone, PartialEq)]
pub struct Related {
    /// Where.
    pub location: Location,
    /// What is there.
    pub message: String,
}

/// One finding about the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// How bad it is.
    pub severity: Severity,
    /// The kind of problem.
    pub code: Code,
    /// What is wrong and what is expected.
    pub message: String,
    /// Where it is, when it is in a file.
    pub location: Option<Location>,
    /// The resource it is about.
    pub resource: Option<ResourceRef>,
    /// The field it is about.
    pub path: Option<FieldPath>,
    /// Other places involved (the first definition of a duplicate, say).
    pub related: Vec<Related>,
    /// How to fix it, when there is something to say.
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic of kind `code` with its usual severity.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: code.severity(),
            code,
            message: message.into(),
            location: None,
            resource: None,
            path: None,
            related: Vec::new(),
            help: None,
        }
    }

    /// Sets the location.
    pub fn at(mut self, location: Location) -> Self {
        self.location = Some(location);
        self
    }

    /// Sets the resource.
    pub fn resource(mut self, resource: ResourceRef) -> Self {
        self.resource = Some(resource);
        self
    }

    /// Sets the field path.
    pub fn path(mut self, path: FieldPath) -> Self {
        self.path = Some(path);
        self
    }

    /// Adds a related place.
    pub fn related(mut self, location: Location, message: impl Into<String>) -> Self {
        self.related.push(Related {
            location,
            message: message.into(),
        });
        self
    }

    /// Sets the help text.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Overrides the severity.
    pub fn severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }

    /// True for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The file name, if any.
    pub fn file(&self) -> Option<&str> {
        self.location.as_ref().map(|l| l.source.name())
    }

    /// The 1-based line, if any.
    pub fn line(&self) -> Option<u32> {
        self.location.as_ref().map(|l| l.span.start.line)
    }

    /// The 1-based column, if any.
    pub fn column(&self) -> Option<u32> {
        self.location.as_ref().map(|l| l.span.start.column)
    }

    /// The JSON form: an object with `severity`, `code`, `message`, `file`, `line`,
    /// `column`, `kind`, `namespace`, `name`, `path`, `related` and `help`.
    pub fn to_json(&self) -> serde_json::Value {
        let r = self.resource.as_ref();
        serde_json::json!({
            "severity": self.severity,
            "code": self.code.as_str(),
            "message": self.message,
            "file": self.file(),
            "line": self.line(),
            "column": self.column(),
            "kind": r.map(|r| &r.kind),
            "namespace": r.map(|r| &r.namespace),
            "name": r.map(|r| &r.name),
            "path": self.path.as_ref().map(|p| p.to_string()),
            "related": self.related.iter().map(|rel| serde_json::json!({
                "file": rel.location.source.name(),
                "line": rel.location.span.start.line,
                "column": rel.location.span.start.column,
                "message": rel.message,
            })).collect::<Vec<_>>(),
            "help": self.help,
        })
    }

    /// A one-line summary: `file:line:col: error[CODE]: message`.
    pub fn short(&self) -> String {
        let place = self
            .location
            .as_ref()
            .map(|l| format!("{}: ", l.display()))
            .unwrap_or_default();
        format!("{place}{}[{}]: {}", self.severity, self.code, self.message)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short())
    }
}

/// Options for [`render`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RenderOptions {
    /// Use ANSI colours.
    pub color: bool,
}

/// Longest source line quoted in a rendered diagnostic (bytes).
const MAX_SHOWN_LINE: usize = 400;

/// Renders diagnostics like rustc: message, `file:line:column`, the source line with a
/// caret under the field, then the resource and field path.
pub fn render(diagnostics: &[Diagnostic], options: RenderOptions) -> String {
    let mut files = SimpleFiles::new();
    let mut ids: Vec<(*const SourceFile, usize)> = Vec::new();
    let mut file_id = |files: &mut SimpleFiles<String, String>, src: &Arc<SourceFile>| {
        let ptr = Arc::as_ptr(src);
        if let Some((_, id)) = ids.iter().find(|(p, _)| *p == ptr) {
            return *id;
        }
        let id = files.add(src.name().to_string(), src.text().to_string());
        ids.push((ptr, id));
        id
    };
    let config = term::Config::default();
    let mut out = String::new();
    for d in diagnostics {
        // A source line too long to show (minified JSON, say): the one-line form, with
        // the resource and field, instead of the line.
        let too_long = d
            .location
            .iter()
            .map(|l| (l.source.clone(), l.span.start.line))
            .chain(
                d.related
                    .iter()
                    .map(|r| (r.location.source.clone(), r.location.span.start.line)),
            )
            .any(|(src, line)| src.line_text(line).len() > MAX_SHOWN_LINE);
        if too_long {
            out.push_str(&d.short());
            out.push('\n');
            if let Some(r) = &d.resource {
                out.push_str(&format!("  = in {r}"));
                if let Some(p) = &d.path {
                    out.push_str(&format!(", field {p}"));
                }
                out.push('\n');
            }
            if let Some(h) = &d.help {
                out.push_str(&format!("  = help: {h}\n"));
            }
            out.push('\n');
            continue;
        }
        let sev = match d.severity {
            Severity::Error => cs::Severity::Error,
            Severity::Warning => cs::Severity::Warning,
            Severity::Info => cs::Severity::Note,
        };
        let mut diag = cs::Diagnostic::new(sev)
            .with_code(d.code.as_str())
            .with_message(&d.message);
        let mut labels = Vec::new();
        if let Some(loc) = &d.location {
            let id = file_id(&mut files, &loc.source);
            let label = match &d.path {
                Some(p) if !p.segments().is_empty() => format!("{p}"),
                _ => String::new(),
            };
            labels.push(
                cs::Label::primary(id, loc.span.start.offset..loc.span.end.offset)
                    .with_message(label),
            );
        }
        for rel in &d.related {
            let id = file_id(&mut files, &rel.location.source);
            labels.push(
                cs::Label::secondary(
                    id,
                    rel.location.span.start.offset..rel.location.span.end.offset,
                )
                .with_message(&rel.message),
            );
        }
        diag = diag.with_labels(labels);
        let mut notes = Vec::new();
        // The caret's label names the field; the note names the resource (and the field
        // when there is no source line to put a caret under).
        let field = match (&d.location, &d.path) {
            (None, Some(p)) if !p.segments().is_empty() => Some(p),
            _ => None,
        };
        match (&d.resource, field) {
            (Some(r), Some(p)) => notes.push(format!("in {r}, field {p}")),
            (Some(r), None) => notes.push(format!("in {r}")),
            (None, Some(p)) => notes.push(format!("field {p}")),
            (None, None) => {}
        }
        if let Some(h) = &d.help {
            notes.push(format!("help: {h}"));
        }
        diag = diag.with_notes(notes);
        if options.color {
            let mut buf = term::termcolor::Buffer::ansi();
            if term::emit_to_write_style(&mut buf, &config, &files, &diag).is_ok() {
                out.push_str(&String::from_utf8_lossy(buf.as_slice()));
                continue;
            }
        }
        match term::emit_into_string(&config, &files, &diag) {
            Ok(s) => out.push_str(&s),
            Err(_) => {
                out.push_str(&d.short());
                out.push('\n');
            }
        }
    }
    out
}

/// Renders diagnostics as a JSON array (see [`Diagnostic::to_json`]).
pub fn render_json(diagnostics: &[Diagnostic]) -> String {
    let arr: Vec<_> = diagnostics.iter().map(Diagnostic::to_json).collect();
    serde_json::to_string_pretty(&arr).unwrap_or_else(|_| "[]".to_string())
}

/// Counts of errors, warnings and infos.
pub fn counts(diagnostics: &[Diagnostic]) -> (usize, usize, usize) {
    let mut c = (0, 0, 0);
    for d in diagnostics {
        match d.severity {
            Severity::Error => c.0 += 1,
            Severity::Warning => c.1 += 1,
            Severity::Info => c.2 += 1,
        }
    }
    c
}
