//! `meshctl apply` and `meshctl delete`: edit a configuration directory, or the
//! configuration in etcd, the way `kubectl` edits a cluster. The planning is
//! `mesh_config::store`'s and the etcd transaction `mesh_tower::etcd::store`'s; this module
//! reads the arguments and prints what happened.

use std::collections::HashSet;
use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use mesh_config::diag::{RenderOptions, render};
use mesh_config::load::{MAX_FILE_SIZE, yaml_files};
use mesh_config::model::ResourceKey;
use mesh_config::source::SourceFile;
use mesh_config::store::kv::{self, KvStore};
use mesh_config::store::{self, ConfigDir, Outcome, StoreError};
use mesh_config::{Diagnostic, LoadError, Severity};
use mesh_tower::etcd::Etcd;
use mesh_tower::etcd::store::{self as etcd_store, Written};

use crate::{Color, EXIT_ERRORS, key};

/// Arguments of `meshctl apply` and `meshctl delete`.
#[derive(clap::Args)]
pub(crate) struct EditArgs {
    /// A file or directory of resources (`*.yaml`, `*.yml`); `-` reads standard input.
    /// Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) target: Target,
    /// Colour the diagnostics.
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

/// Where the configuration is: a directory or etcd (one of the two).
#[derive(clap::Args)]
pub(crate) struct Target {
    #[command(flatten)]
    store: StoreArg,
    /// The key prefix of the configuration in etcd [default: /mesh].
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<String>,
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct StoreArg {
    /// The configuration directory (the one the mesh watches).
    #[arg(long = "config", value_name = "DIR")]
    config: Option<PathBuf>,
    /// The etcd cluster holding the configuration (`http://host:2379`, comma-separated
    /// members).
    #[arg(long, value_name = "URL")]
    etcd: Option<String>,
}

/// An opened configuration.
pub(crate) enum Opened {
    /// A directory.
    Dir(ConfigDir),
    /// The keys under a prefix in etcd, read at one revision.
    Etcd {
        etcd: Etcd,
        store: KvStore,
        runtime: tokio::runtime::Runtime,
    },
}

impl Target {
    /// Reads the configuration.
    pub(crate) fn open(&self) -> Result<Opened, Box<dyn std::error::Error>> {
        if self.prefix.is_some() && self.store.etcd.is_none() {
            return Err("--prefix is a key prefix in etcd: it needs --etcd URL".into());
        }
        match (&self.store.config, &self.store.etcd) {
            (Some(dir), _) => Ok(Opened::Dir(ConfigDir::open(dir)?)),
            (None, Some(url)) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let etcd = Etcd::new(url)?;
                let store = runtime.block_on(etcd_store::read(&etcd, self.prefix()))?;
                Ok(Opened::Etcd {
                    etcd,
                    store,
                    runtime,
                })
            }
            (None, None) => Err("one of --config and --etcd is needed".into()),
        }
    }

    /// The key prefix (`--prefix`, else `/mesh`).
    fn prefix(&self) -> &str {
        self.prefix.as_deref().unwrap_or(kv::DEFAULT_PREFIX)
    }

    /// `DIR`, or `etcd at URL under PREFIX`, for messages.
    pub(crate) fn describe(&self) -> String {
        match (&self.store.config, &self.store.etcd) {
            (Some(dir), _) => dir.display().to_string(),
            (None, Some(url)) => {
                format!(
                    "etcd at {url} under {}",
                    kv::normalize_prefix(self.prefix())
                )
            }
            (None, None) => String::new(),
        }
    }
}

impl Opened {
    /// The diagnostics of the configuration as it is.
    fn diagnostics(&self) -> Vec<Diagnostic> {
        match self {
            Opened::Dir(dir) => dir.check().diagnostics,
            Opened::Etcd { store, .. } => store.check().diagnostics,
        }
    }

    /// The resources of `kind` in `namespace` (all when `None`).
    pub(crate) fn list(
        &self,
        kind: Option<mesh_config::model::Kind>,
        namespace: Option<&str>,
    ) -> Vec<store::Listed> {
        match self {
            Opened::Dir(dir) => dir.list(kind, namespace),
            Opened::Etcd { store, .. } => store.list(kind, namespace),
        }
    }

    /// Plans an apply.
    fn plan_apply(&self, sources: &[Arc<SourceFile>]) -> Result<Planned, StoreError> {
        match self {
            Opened::Dir(dir) => dir.plan_apply(sources).map(Planned::Dir),
            Opened::Etcd { store, .. } => store.plan_apply(sources).map(Planned::Etcd),
        }
    }

    /// Plans a delete.
    fn plan_delete(&self, keys: &[ResourceKey]) -> Result<Planned, StoreError> {
        match self {
            Opened::Dir(dir) => dir.plan_delete(keys).map(Planned::Dir),
            Opened::Etcd { store, .. } => Ok(Planned::Etcd(store.plan_delete(keys))),
        }
    }

    /// Writes a plan made from this configuration. `Ok(false)`: etcd's configuration
    /// changed since it was read, nothing was written.
    fn write(&self, plan: &Planned) -> Result<bool, Box<dyn std::error::Error>> {
        match (self, plan) {
            (Opened::Dir(_), Planned::Dir(plan)) => {
                plan.write()?;
                Ok(true)
            }
            (Opened::Etcd { etcd, runtime, .. }, Planned::Etcd(plan)) => {
                if plan.puts().is_empty() && plan.deletes().is_empty() {
                    return Ok(true);
                }
                let written = runtime.block_on(etcd_store::write(etcd, plan))?;
                Ok(written != Written::Conflict)
            }
            _ => Err("a plan written to another configuration than its own".into()),
        }
    }
}

/// A plan for a directory or for etcd.
enum Planned {
    Dir(store::Plan),
    Etcd(kv::KvPlan),
}

impl Planned {
    fn check(&self) -> mesh_config::Checked {
        match self {
            Planned::Dir(p) => p.check(),
            Planned::Etcd(p) => p.check(),
        }
    }

    fn changes(&self) -> &[store::Change] {
        match self {
            Planned::Dir(p) => p.changes(),
            Planned::Etcd(p) => p.changes(),
        }
    }
}

/// Says that etcd's configuration changed under the command, which wrote nothing.
fn conflict(target: &Target) -> ExitCode {
    eprintln!(
        "error: the configuration in {} changed since it was read and checked; nothing was written: run the command again",
        target.describe()
    );
    ExitCode::from(EXIT_ERRORS)
}

/// The name standard input gets in diagnostics.
const STDIN: &str = "<stdin>";

/// Reads every `-f` argument: standard input, a file, or the YAML files of a directory.
fn read_sources(files: &[PathBuf]) -> Result<Vec<Arc<SourceFile>>, LoadError> {
    let mut out = Vec::new();
    for f in files {
        if f.as_os_str() == "-" {
            let mut buf = Vec::new();
            std::io::stdin()
                .take(MAX_FILE_SIZE + 1)
                .read_to_end(&mut buf)
                .map_err(|source| LoadError::Io {
                    path: PathBuf::from(STDIN),
                    source,
                })?;
            if buf.len() as u64 > MAX_FILE_SIZE {
                return Err(LoadError::TooLarge {
                    path: PathBuf::from(STDIN),
                });
            }
            let text = String::from_utf8(buf).map_err(|_| LoadError::NotText {
                path: PathBuf::from(STDIN),
            })?;
            out.push(SourceFile::new(STDIN, text));
        } else {
            for file in yaml_files(f)? {
                out.push(store::read_source(&file)?);
            }
        }
    }
    Ok(out)
}

fn render_to_stderr(diagnostics: &[Diagnostic], color: Color) {
    if diagnostics.is_empty() {
        return;
    }
    let color = match color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    eprint!("{}", render(diagnostics, RenderOptions { color }));
}

/// The diagnostics worth showing after an edit: every error, and the warnings and
/// remarks the directory did not already have.
fn worth_showing(opened: &Opened, after: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let before: HashSet<String> = opened.diagnostics().iter().map(key).collect();
    after
        .into_iter()
        .filter(|d| d.is_error() || !before.contains(&key(d)))
        .collect()
}

/// Errors of the plan itself (not of the configuration): exit 1 for a List item, else
/// an I/O problem (exit 2).
fn plan_error(e: StoreError) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match e {
        StoreError::ListItem { .. } | StoreError::Unextractable { .. } => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(EXIT_ERRORS))
        }
        other => Err(other.into()),
    }
}

/// `meshctl apply`.
pub(crate) fn apply(args: &EditArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let dir = args.target.open()?;
    let sources = read_sources(&args.files)?;
    let plan = match dir.plan_apply(&sources) {
        Ok(p) => p,
        Err(e) => return plan_error(e),
    };
    let checked = plan.check();
    render_to_stderr(
        &worth_showing(&dir, checked.diagnostics.clone()),
        args.color,
    );
    if checked.has_errors() {
        let errors = checked.diagnostics.iter().filter(|d| d.is_error()).count();
        eprintln!(
            "error: the configuration would have {errors} error(s); nothing was written to {}",
            args.target.describe()
        );
        return Ok(ExitCode::from(EXIT_ERRORS));
    }
    if plan.changes().is_empty() {
        eprintln!("error: no objects passed to apply");
        return Ok(ExitCode::from(EXIT_ERRORS));
    }
    if !dir.write(&plan)? {
        return Ok(conflict(&args.target));
    }
    for c in plan.changes() {
        println!("{c}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `meshctl delete`.
///
/// As `kubectl delete -f` does, a resource the configuration has no type for (one of the
/// mesh's kinds under an `apiVersion` it does not serve, such as a Gateway API
/// `gateway.networking.k8s.io/v1` `Gateway`) is an error, `no matches for kind ...`,
/// that deletes nothing in its place (not the Istio resource of the same name) and makes
/// the exit status 1; the other resources are deleted all the same. A kind the mesh does
/// not read at all (a `Deployment`) is ignored with a warning, as the loader ignores it.
pub(crate) fn delete(args: &EditArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let dir = args.target.open()?;
    let sources = read_sources(&args.files)?;
    let mut keys = Vec::new();
    let mut yaml_errors = Vec::new();
    let mut no_matches = Vec::new();
    for s in &sources {
        let found = store::source_keys(s);
        keys.extend(found.keys);
        yaml_errors.extend(found.yaml_errors);
        no_matches.extend(
            found
                .no_matches
                .into_iter()
                .map(|n| (s.name().to_string(), n)),
        );
    }
    if !yaml_errors.is_empty() {
        render_to_stderr(&yaml_errors, args.color);
        eprintln!("error: the files to delete are not valid YAML; nothing was deleted");
        return Ok(ExitCode::from(EXIT_ERRORS));
    }
    let mut failed = false;
    for (source, n) in &no_matches {
        let name = if n.name.is_empty() {
            String::new()
        } else {
            format!(" {:?}", n.name)
        };
        match n.mesh_kind {
            Some(kind) => {
                failed = true;
                eprintln!(
                    "error: {n}: {}{name} at {source}:{} is not a resource of the configuration (the mesh reads {} as {})",
                    n.kind,
                    n.line,
                    kind,
                    kind.api_versions().join(", ")
                );
            }
            None => eprintln!(
                "warning: {} ({}){name} at {source}:{} is not a kind the mesh reads; ignored",
                n.kind, n.api_version, n.line
            ),
        }
    }
    if keys.is_empty() {
        if !failed {
            eprintln!("error: no objects passed to delete");
        }
        return Ok(ExitCode::from(EXIT_ERRORS));
    }
    let plan = match dir.plan_delete(&keys) {
        Ok(p) => p,
        Err(e) => return plan_error(e),
    };
    // Deleting may leave references dangling: say so, but delete (the running mesh keeps
    // its last good configuration until the references are fixed).
    let checked = plan.check();
    let shown: Vec<Diagnostic> = worth_showing(&dir, checked.diagnostics.clone())
        .into_iter()
        .map(|d| {
            if d.is_error() {
                d.severity(Severity::Warning)
            } else {
                d
            }
        })
        .collect();
    render_to_stderr(&shown, args.color);
    if checked.has_errors() {
        eprintln!(
            "warning: {} now has errors: a mesh watching it keeps its last good configuration until they are fixed",
            args.target.describe()
        );
    }
    if !dir.write(&plan)? {
        return Ok(conflict(&args.target));
    }
    for c in plan.changes() {
        if c.outcome == Outcome::NotFound {
            failed = true;
            eprintln!(
                "Error: {} \"{}\" not found in {}",
                store::qualified_kind(c.key.kind),
                c.key.name,
                args.target.describe()
            );
        } else {
            println!("{c}");
        }
    }
    Ok(if failed {
        ExitCode::from(EXIT_ERRORS)
    } else {
        ExitCode::SUCCESS
    })
}
