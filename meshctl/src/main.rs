//! `meshctl`: the mesh's command line.
//!
//! `meshctl validate` checks Istio configuration the way `istioctl validate` and
//! `istioctl analyze` do, without a cluster: per-resource validation and cross-resource
//! analysis, rendered like rustc's errors or as JSON. `meshctl route` explains a routing
//! decision, `meshctl authz` an authorization decision. `meshctl apply`, `delete` and
//! `get` edit and list a configuration directory (the one a running mesh watches) or the
//! configuration in etcd (`--etcd URL`) the way `kubectl` does a cluster's.

mod authz;
mod ca;
mod edit;
mod get;

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use mesh_config::diag::{RenderOptions, counts, render, render_json};
use mesh_config::{ConfigSet, Diagnostic, LoadError};

/// Exit code when there are configuration errors.
const EXIT_ERRORS: u8 = 1;
/// Exit code for usage and I/O errors (clap uses 2 for usage errors too).
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "meshctl",
    version,
    about = "Command line of the in-process service mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate Istio configuration files and directories.
    ///
    /// Without --config, all PATHs are checked together as one configuration. With
    /// --config, each file under PATHs is checked on its own, applied on top of the
    /// configuration in --config (as `meshctl apply` would), and only what it adds is
    /// reported. Exit status: 0 without errors (warnings allowed), 1 with errors, 2 on
    /// usage or I/O errors.
    Validate(ValidateArgs),
    /// Explain where a request goes, without a network (like Envoy's router check tool).
    ///
    /// Loads --config, compiles it as the runtime does and routes one request from a
    /// workload of --source-namespace with --source-labels: VirtualService, rule
    /// (file:line), weighted destinations, timeout, retries, fault, redirect or direct
    /// response. Exit status: 0 when the request is routed, 1 when it is not (or the
    /// configuration has errors), 2 on usage or I/O errors.
    Route(RouteArgs),
    /// Explain an authorization decision, without a network.
    ///
    /// Loads --config, picks the AuthorizationPolicies that select the WorkloadEntry
    /// --workload, and decides one request as the workload's sidecar would: CUSTOM,
    /// DENY, then ALLOW. Prints the decision and the policy (and rule, file:line) that
    /// made it; no policy when allowed because no ALLOW policy applies, or denied because
    /// none of them matched. Exit status: 0 when a decision was made, 1 on configuration
    /// errors (or an unknown workload), 2 on usage or I/O errors.
    Authz(authz::AuthzArgs),
    /// Apply resources to a configuration directory, like `kubectl apply`.
    ///
    /// Each resource of the FILEs replaces the YAML document that holds its kind,
    /// namespace and name in DIR, in place (other documents, comments and formatting are
    /// kept), or goes to a new file `<kind>-<namespace>-<name>.yaml`. The configuration DIR
    /// would hold is checked first: with errors nothing is written. Files are written
    /// atomically. Exit status: 0 when applied, 1 on configuration errors (nothing
    /// written), 2 on usage or I/O errors.
    ///
    /// With --etcd instead of --config, each resource is one key,
    /// `<prefix>/<group>/<Kind>/<namespace>/<name>`, and everything is written in one
    /// transaction, only if the configuration in etcd did not change since it was read and
    /// checked (otherwise nothing is written and the exit status is 1: run it again).
    Apply(edit::EditArgs),
    /// Delete the resources named in FILEs from a configuration directory, like
    /// `kubectl delete -f`.
    ///
    /// Resources are matched by kind, namespace and name (the spec does not matter);
    /// their documents are removed, and files left without documents are deleted.
    /// References left dangling are reported as warnings. Exit status: 0 when everything
    /// was deleted, 1 when a resource was not found, 2 on usage or I/O errors.
    /// With --etcd, their keys are deleted in one transaction, as `apply` writes.
    Delete(edit::EditArgs),
    /// List resources of a configuration directory (or of etcd), like `kubectl get`.
    ///
    /// KIND is a singular, plural or short name (vs, dr, gw, se, we, pa, ap, ra,
    /// meshconfig, envoyfilter, localratelimitpolicy). SOURCE is where each resource is
    /// written. Exit status: 0 (also when
    /// nothing matches), 1 when the named resource does not exist, 2 for an unknown KIND
    /// or an I/O error.
    Get(get::GetArgs),
    /// A certificate authority for processes that run apart: `create-root`, then
    /// `issue` a workload certificate per namespace and service account, in Istio's file
    /// layout (`cert-chain.pem`, `key.pem`, `root-cert.pem`). Exit status: 0 when
    /// written, 1 when a root already exists, 2 on I/O errors.
    #[command(subcommand)]
    Ca(ca::CaCommand),
}

#[derive(clap::Args)]
struct RouteArgs {
    /// The request URL, e.g. `http://reviews:9080/reviews/0`.
    url: String,
    /// Configuration (files or directories; repeatable, later ones applied over earlier
    /// ones by kind/namespace/name).
    #[arg(long = "config", value_name = "DIR", required = true)]
    config: Vec<PathBuf>,
    /// Namespace of the calling workload [default: `default`; with `--gateway`, the
    /// gateway workload's: `istio-system`, where Istio's ingress gateway runs].
    #[arg(long)]
    source_namespace: Option<String>,
    /// Labels of the calling workload: `k=v,k2=v2` (with `--gateway`: of the gateway
    /// workload; by default the Gateway's selector).
    #[arg(long, value_name = "K=V,...")]
    source_labels: Option<String>,
    /// The Gateway the request arrives through (`namespace/name`): the request is routed
    /// as the ingress gateway routes it, by a gateway workload the Gateway selects, with
    /// the URL's port as the Gateway server port (an `https://` URL takes the TLS server
    /// its host chooses by SNI). Without it, the request is workload traffic.
    #[arg(long)]
    gateway: Option<String>,
    #[command(flatten)]
    request: RequestArgs,
}

/// What `route` and `authz` take of the request beyond its URL, and their output format.
#[derive(clap::Args)]
struct RequestArgs {
    /// A request header, `name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// The method.
    #[arg(short = 'X', long = "request", default_value = "GET")]
    method: String,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Human)]
    output: Output,
}

impl RequestArgs {
    /// The headers as (name, value) pairs.
    fn header_pairs(&self) -> Result<Vec<(&str, &str)>, String> {
        self.headers
            .iter()
            .map(|h| {
                h.split_once(':')
                    .map(|(k, v)| (k.trim(), v.trim()))
                    .ok_or_else(|| format!("header `{h}` is not `name: value`"))
            })
            .collect()
    }
}

#[derive(clap::Args)]
struct ValidateArgs {
    /// Files or directories (`*.yaml`, `*.yml`, recursively).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// A configuration (file or directory) the PATHs are applied to; may be repeated.
    #[arg(long = "config", value_name = "DIR")]
    config: Vec<PathBuf>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Human)]
    output: Output,
    /// Colour the human output.
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    /// Like rustc: source line and caret.
    Human,
    /// A JSON array of diagnostics.
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Color {
    /// When standard output is a terminal and NO_COLOR is unset.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate(args) => match validate(&args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("meshctl: {e}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::Route(args) => match route(&args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("meshctl: {e}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::Authz(args) => usage_errors(authz::authz(&args)),
        Command::Apply(args) => usage_errors(edit::apply(&args)),
        Command::Delete(args) => usage_errors(edit::delete(&args)),
        Command::Get(args) => usage_errors(get::get(&args)),
        Command::Ca(command) => usage_errors(ca::ca(&command)),
    }
}

/// The exit code of a command; its errors (I/O, unreadable files) are exit 2.
fn usage_errors(result: Result<ExitCode, Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meshctl: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The configuration of `config` (later paths applied over earlier ones, as `kubectl
/// apply` would), or `None` after printing its errors.
fn load_snapshot(config: &[PathBuf]) -> Result<Option<mesh_config::Snapshot>, LoadError> {
    let mut set = ConfigSet::new();
    for path in config {
        set.apply(ConfigSet::load(&[path])?);
    }
    let checked = set.check();
    if checked.snapshot.is_none() {
        eprint!(
            "{}",
            render(
                &checked.diagnostics,
                RenderOptions {
                    color: std::io::stderr().is_terminal()
                }
            )
        );
        eprintln!("meshctl: the configuration has errors");
    }
    Ok(checked.snapshot)
}

fn route(args: &RouteArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let Some(snapshot) = load_snapshot(&args.config)? else {
        return Ok(ExitCode::from(EXIT_ERRORS));
    };
    let mesh = std::sync::Arc::new(mesh_core::CompiledMesh::compile(&snapshot));
    let uri: http::Uri = args.url.parse()?;
    let https = uri.scheme_str() == Some("https");
    let mut builder = http::Request::builder()
        .method(args.request.method.as_str())
        .uri(uri);
    for (k, v) in args.request.header_pairs()? {
        builder = builder.header(k, v);
    }
    let req = builder.body(())?;
    let mut labels: mesh_config::model::Labels = args
        .source_labels
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| format!("label `{kv}` is not `key=value`"))
        })
        .collect::<Result<_, _>>()?;
    let mut namespace = args.source_namespace.clone();
    if let Some(name) = &args.gateway {
        // The gateway workload: one the Gateway selects, unless told otherwise.
        let (ns, gw_name) = name.split_once('/').unwrap_or(("default", name));
        let Some(gw) = snapshot
            .gateways()
            .iter()
            .find(|g| g.namespace() == ns && g.name() == gw_name)
        else {
            eprintln!("meshctl: no Gateway {ns}/{gw_name} in the configuration");
            return Ok(ExitCode::from(EXIT_ERRORS));
        };
        if args.source_labels.is_none() {
            labels = gw.spec.selector.clone();
        }
        namespace.get_or_insert_with(|| "istio-system".to_string());
    }
    let workload =
        mesh_core::Workload::new("meshctl", namespace.unwrap_or_else(|| "default".into()))
            .labels(labels);
    let role = match args.gateway {
        Some(_) => mesh_core::Role::Gateway,
        None => mesh_core::Role::Sidecar,
    };
    let view = mesh_core::WorkloadView::compile(mesh, std::sync::Arc::new(workload), role);
    let default_port = if https { 443 } else { 80 };
    let written = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let port = req.uri().port_u16().unwrap_or(default_port);
    // Through a gateway the request is routed as the gateway routes it: `http`, the host
    // in lower case and the Gateway server's port.
    let req = match &args.gateway {
        Some(_) => {
            let (parts, body) = req.into_parts();
            let mut req = http::Request::from_parts(parts, body);
            let pq = req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.to_string());
            *req.uri_mut() = format!(
                "http://{}{pq}",
                mesh_core::gateway::route_authority(&written, port)
            )
            .parse()?;
            req
        }
        None => req,
    };
    let head = mesh_core::RequestHead::from_request(&req, port);
    let chain = if https && args.gateway.is_some() {
        let host = mesh_core::route::split_authority(&written)
            .0
            .to_ascii_lowercase();
        view.gateway()
            .and_then(|g| g.find_sni(u32::from(port), Some(&host), |_| true))
            .and_then(mesh_core::gateway::Chain::of)
    } else {
        None
    };
    let via = match &args.gateway {
        Some(_) => mesh_core::explain::Via::Gateway {
            chain: chain.as_ref(),
            authority: &written,
        },
        None => mesh_core::explain::Via::Mesh,
    };
    let e = mesh_core::explain::explain(&view, &head, via, &mut rand::rng());
    match args.request.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&explanation_json(&e))?),
        Output::Human => print!("{}", explanation_text(&e)),
    }
    Ok(if e.error.is_some() {
        ExitCode::from(EXIT_ERRORS)
    } else {
        ExitCode::SUCCESS
    })
}

fn explanation_json(e: &mesh_core::explain::Explanation) -> serde_json::Value {
    serde_json::json!({
        "host": e.host,
        "gateway": e.gateway,
        "virtual_service": e.virtual_service,
        "rule": e.rule,
        "rule_index": e.rule_index,
        "destinations": e.destinations.iter().map(|d| serde_json::json!({
            "host": d.host, "subset": d.subset, "port": d.port, "weight": d.weight,
        })).collect::<Vec<_>>(),
        "timeout_ms": e.timeout_ms,
        "retries": {
            "attempts": e.retries.attempts,
            "per_try_timeout_ms": e.retries.per_try_timeout_ms,
            "retry_on": e.retries.retry_on.join(","),
        },
        "fault": e.fault.as_ref().map(|f| serde_json::json!({
            "delay_ms": f.delay_ms, "delay_percent": f.delay_percent,
            "abort_status": f.abort_status, "abort_percent": f.abort_percent,
        })),
        "redirect": e.redirect.as_ref().map(|(s, l)| serde_json::json!({"status": s, "location": l})),
        "direct_response": e.direct_response.as_ref().map(|(s, b)| serde_json::json!({"status": s, "body": b})),
        "error": e.error,
    })
}

fn explanation_text(e: &mesh_core::explain::Explanation) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if let Some(err) = &e.error {
        let _ = writeln!(out, "not routed: {err}");
        return out;
    }
    let _ = writeln!(out, "host:        {}", e.host);
    if let Some(g) = &e.gateway {
        let _ = writeln!(out, "gateway:     {g}");
    }
    match (&e.virtual_service, &e.rule) {
        (Some(vs), Some(rule)) => {
            let _ = writeln!(
                out,
                "route:       VirtualService {vs}, rule #{} at {rule}",
                e.rule_index.unwrap_or(0)
            );
        }
        _ => {
            let _ = writeln!(out, "route:       default (no VirtualService for the host)");
        }
    }
    if let Some((status, location)) = &e.redirect {
        let _ = writeln!(out, "redirect:    {status} to {location}");
    }
    if let Some((status, body)) = &e.direct_response {
        let _ = writeln!(out, "answer:      {status} {body:?}");
    }
    for d in &e.destinations {
        let subset = d
            .subset
            .as_deref()
            .map(|s| format!(" subset {s}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "destination: {}:{}{subset} (weight {})",
            d.host, d.port, d.weight
        );
    }
    let timeout = e
        .timeout_ms
        .map_or("none".to_string(), |t| format!("{t} ms"));
    let _ = writeln!(out, "timeout:     {timeout}");
    let per_try = e
        .retries
        .per_try_timeout_ms
        .map(|t| format!(", {t} ms per try"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "retries:     {} on {}{per_try}",
        e.retries.attempts,
        if e.retries.retry_on.is_empty() {
            "-".to_string()
        } else {
            e.retries.retry_on.join(",")
        }
    );
    match &e.fault {
        None => {
            let _ = writeln!(out, "fault:       none");
        }
        Some(f) => {
            if let (Some(ms), Some(p)) = (f.delay_ms, f.delay_percent) {
                let _ = writeln!(out, "fault:       delay {ms} ms for {p}% of requests");
            }
            if let (Some(s), Some(p)) = (f.abort_status, f.abort_percent) {
                let _ = writeln!(out, "fault:       abort with {s} for {p}% of requests");
            }
        }
    }
    out
}

fn validate(args: &ValidateArgs) -> Result<ExitCode, LoadError> {
    let diagnostics = if args.config.is_empty() {
        ConfigSet::load(&args.paths)?.check().diagnostics
    } else {
        validate_overlays(args)?
    };
    let (errors, warnings, infos) = counts(&diagnostics);
    match args.output {
        Output::Json => println!("{}", render_json(&diagnostics)),
        Output::Human => {
            let color = match args.color {
                Color::Always => true,
                Color::Never => false,
                Color::Auto => {
                    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
                }
            };
            print!("{}", render(&diagnostics, RenderOptions { color }));
            if errors + warnings + infos == 0 {
                println!("configuration is valid");
            } else {
                println!("{errors} error(s), {warnings} warning(s), {infos} info(s)");
            }
        }
    }
    Ok(if errors > 0 {
        ExitCode::from(EXIT_ERRORS)
    } else {
        ExitCode::SUCCESS
    })
}

/// Checks each file under the paths on top of the --config base, reporting what it adds.
fn validate_overlays(args: &ValidateArgs) -> Result<Vec<Diagnostic>, LoadError> {
    let base = ConfigSet::load(&args.config)?;
    let base_diags = base.check().diagnostics;
    let mut seen: HashSet<String> = base_diags.iter().map(key).collect();
    let mut out = base_diags;
    for path in &args.paths {
        for file in mesh_config::load::yaml_files(path)? {
            let mut set = base.clone();
            set.apply(ConfigSet::load(&[&file])?);
            for d in set.check().diagnostics {
                if seen.insert(key(&d)) {
                    out.push(d);
                }
            }
        }
    }
    Ok(out)
}

/// What makes two diagnostics the same report.
fn key(d: &Diagnostic) -> String {
    format!(
        "{}|{}|{:?}|{:?}|{}",
        d.code,
        d.file().unwrap_or(""),
        d.line(),
        d.column(),
        d.message
    )
}
