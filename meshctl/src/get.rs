//! `meshctl get`: list the resources of a configuration directory the way `kubectl get`
//! lists a cluster's (tables, `-o yaml` with the text as written, `-o json`).

use std::process::ExitCode;

use clap::ValueEnum;
use mesh_config::model::{AnyResource, Kind, Labels, Resolution, ServiceLocation};
use mesh_config::store::{Listed, qualified_kind};

use crate::{EXIT_ERRORS, EXIT_USAGE};

/// Arguments of `meshctl get`.
#[derive(clap::Args)]
pub(crate) struct GetArgs {
    /// The kind: singular, plural or short name, any case (`vs`, `virtualservices`, ...).
    kind: String,
    /// Only the resource of this name.
    name: Option<String>,
    #[command(flatten)]
    target: crate::edit::Target,
    /// The namespace (`default` when absent).
    #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
    namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Output format (a table when absent).
    #[arg(short = 'o', long, value_enum)]
    output: Option<GetOutput>,
}

/// `meshctl get -o`.
#[derive(Clone, Copy, ValueEnum)]
enum GetOutput {
    /// The table, with the apiVersion and the labels.
    Wide,
    /// The documents as written, separated by `---`.
    Yaml,
    /// A JSON array of {kind, namespace, name, file, line}.
    Json,
}

/// The names `meshctl get` accepts, for the error message.
const ACCEPTED: &str = "virtualservice (virtualservices, vs), destinationrule (destinationrules, dr), \
gateway (gateways, gw), serviceentry (serviceentries, se), workloadentry (workloadentries, we), \
peerauthentication (peerauthentications, pa), authorizationpolicy (authorizationpolicies, ap), \
requestauthentication (requestauthentications, ra), meshconfig";

/// `meshctl get`.
pub(crate) fn get(args: &GetArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let Some(kind) = Kind::from_cli_name(&args.kind) else {
        eprintln!(
            "error: unknown kind \"{}\": expected one of {ACCEPTED}",
            args.kind
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    };
    let dir = args.target.open()?;
    let namespace = match (&args.namespace, args.all_namespaces) {
        (_, true) => None,
        (Some(ns), false) => Some(ns.as_str()),
        (None, false) => Some("default"),
    };
    let items: Vec<Listed> = dir
        .list(Some(kind), namespace)
        .into_iter()
        .filter(|l| args.name.as_deref().is_none_or(|n| n == l.resource.name()))
        .collect();
    if items.is_empty() {
        if let Some(name) = &args.name {
            eprintln!(
                "Error: {} \"{name}\" not found in {} namespace",
                qualified_kind(kind),
                namespace.unwrap_or("any")
            );
            return Ok(ExitCode::from(EXIT_ERRORS));
        }
        if matches!(args.output, Some(GetOutput::Json)) {
            println!("[]");
        } else {
            match namespace {
                Some(ns) => eprintln!("No resources found in {ns} namespace."),
                None => eprintln!("No resources found"),
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    match args.output {
        Some(GetOutput::Yaml) => {
            let docs: Vec<&str> = items.iter().map(|l| l.text.as_str()).collect();
            print!("{}", docs.join("---\n"));
        }
        Some(GetOutput::Json) => {
            let arr: Vec<serde_json::Value> = items
                .iter()
                .map(|l| {
                    serde_json::json!({
                        "kind": l.resource.kind().as_str(),
                        "namespace": l.resource.namespace(),
                        "name": l.resource.name(),
                        "file": l.path.display().to_string(),
                        "line": l.line,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&arr)?);
        }
        Some(GetOutput::Wide) => print!("{}", table(kind, &items, namespace.is_none(), true)),
        None => print!("{}", table(kind, &items, namespace.is_none(), false)),
    }
    Ok(ExitCode::SUCCESS)
}

/// `a,b,c`, or `<none>` for nothing (as `kubectl` shows an empty column).
fn list<I: IntoIterator<Item = S>, S: AsRef<str>>(items: I) -> String {
    let v: Vec<String> = items.into_iter().map(|s| s.as_ref().to_string()).collect();
    if v.is_empty() {
        "<none>".to_string()
    } else {
        v.join(",")
    }
}

fn labels(l: &Labels) -> String {
    list(l.iter().map(|(k, v)| format!("{k}={v}")))
}

fn location(l: Option<ServiceLocation>) -> &'static str {
    match l {
        None => "<none>",
        Some(ServiceLocation::MeshExternal) => "MESH_EXTERNAL",
        Some(ServiceLocation::MeshInternal) => "MESH_INTERNAL",
    }
}

fn resolution(r: Option<Resolution>) -> &'static str {
    match r {
        None => "<none>",
        Some(Resolution::None) => "NONE",
        Some(Resolution::Static) => "STATIC",
        Some(Resolution::Dns) => "DNS",
        Some(Resolution::DnsRoundRobin) => "DNS_ROUND_ROBIN",
        Some(Resolution::DynamicDns) => "DYNAMIC_DNS",
    }
}

/// The kind's own columns: headers, and the values of one resource.
fn kind_columns(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::VirtualService => &["HOSTS", "GATEWAYS"],
        Kind::DestinationRule => &["HOST", "SUBSETS"],
        Kind::Gateway => &["SERVERS", "SELECTOR"],
        Kind::ServiceEntry => &["HOSTS", "LOCATION", "RESOLUTION"],
        Kind::WorkloadEntry => &["ADDRESS", "LABELS"],
        Kind::EnvoyFilter => &["SELECTOR", "PATCHES"],
        Kind::LocalRateLimitPolicy => &["SELECTOR", "TOTAL", "IDENTITY", "OVERRIDES"],
        _ => &[],
    }
}

fn kind_values(r: &AnyResource) -> Vec<String> {
    match r {
        AnyResource::VirtualService(vs) => vec![list(&vs.spec.hosts), list(&vs.spec.gateways)],
        AnyResource::DestinationRule(dr) => vec![
            dr.spec.host.clone(),
            list(dr.spec.subsets.iter().map(|s| &s.name)),
        ],
        AnyResource::Gateway(gw) => vec![
            list(gw.spec.servers.iter().filter_map(|s| {
                s.port
                    .as_ref()
                    .map(|p| format!("{}/{}", p.number, p.protocol))
            })),
            labels(&gw.spec.selector),
        ],
        AnyResource::ServiceEntry(se) => vec![
            list(&se.spec.hosts),
            location(se.spec.location).to_string(),
            resolution(se.spec.resolution).to_string(),
        ],
        AnyResource::WorkloadEntry(we) => {
            vec![we.spec.address.clone(), labels(&we.spec.labels)]
        }
        AnyResource::EnvoyFilter(ef) => vec![
            ef.spec
                .workload_selector
                .as_ref()
                .map_or_else(|| "<none>".to_string(), |s| labels(&s.labels)),
            ef.spec.config_patches.len().to_string(),
        ],
        AnyResource::LocalRateLimitPolicy(p) => {
            let rate =
                |r: Option<&mesh_config::model::RateLimitSpec>| match r.and_then(|r| r.rate()) {
                    None => "<none>".to_string(),
                    Some((n, unit)) => {
                        let unit = match unit.as_secs() {
                            1 => "s",
                            60 => "min",
                            _ => "h",
                        };
                        format!("{n}/{unit}")
                    }
                };
            vec![
                p.spec
                    .workload_selector
                    .as_ref()
                    .map_or_else(|| "<none>".to_string(), |s| labels(&s.labels)),
                rate(p.spec.total.as_ref()),
                rate(p.spec.identity.as_ref()),
                p.spec.overrides.len().to_string(),
            ]
        }
        _ => Vec::new(),
    }
}

/// The table `kubectl get` prints: columns separated by three spaces at least.
fn table(kind: Kind, items: &[Listed], with_namespace: bool, wide: bool) -> String {
    let mut header: Vec<&str> = Vec::new();
    if with_namespace {
        header.push("NAMESPACE");
    }
    header.push("NAME");
    header.extend_from_slice(kind_columns(kind));
    if wide {
        header.extend_from_slice(&["API VERSION", "RESOURCE LABELS"]);
    }
    header.push("SOURCE");
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for l in items {
        let r = &l.resource;
        let mut row = Vec::new();
        if with_namespace {
            row.push(r.namespace().to_string());
        }
        row.push(r.name().to_string());
        row.extend(kind_values(r));
        if wide {
            row.push(r.api_version().to_string());
            row.push(labels(&r.meta().labels));
        }
        row.push(format!("{}:{}", l.path.display(), l.line));
        rows.push(row);
    }
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                let pad = widths
                    .get(c)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(cell.chars().count())
                    + 3;
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
