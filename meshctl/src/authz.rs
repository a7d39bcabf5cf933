//! `meshctl authz`: explains an authorization decision without a network, through the
//! runtime's own code (`mesh_core::authz`): the policies that select the receiving
//! workload, CUSTOM → DENY → ALLOW, and the policy and rule that decided.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use http::HeaderMap;
use mesh_config::FieldPath;
use mesh_core::authz::{Action, Authorizer, AuthzRequest, Policy, Verdict};

use super::{EXIT_ERRORS, Output, RequestArgs, load_snapshot};

/// Arguments of `meshctl authz`.
#[derive(clap::Args)]
pub(crate) struct AuthzArgs {
    /// The request URL: its host is the `:authority`, its port the destination port
    /// (80 or 443 by default), its path the path (the query is not matched).
    url: String,
    /// Configuration (files or directories; repeatable, later ones applied over earlier
    /// ones by kind/namespace/name).
    #[arg(long = "config", value_name = "DIR", required = true)]
    config: Vec<PathBuf>,
    /// The WorkloadEntry receiving the request, `NAMESPACE/NAME`: its labels select the
    /// policies, its address is the destination IP.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    workload: String,
    /// The caller's mutual TLS identity, in Istio's form
    /// (`cluster.local/ns/bank/sa/frontend`); the source namespace comes from it.
    /// Without it the request is plaintext (no principal).
    #[arg(long)]
    principal: Option<String>,
    /// The caller's address.
    #[arg(long, default_value = "127.0.0.1")]
    source_ip: IpAddr,
    #[command(flatten)]
    request: RequestArgs,
}

/// Runs `meshctl authz`.
pub(crate) fn authz(args: &AuthzArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let Some(snapshot) = load_snapshot(&args.config)? else {
        return Ok(ExitCode::from(EXIT_ERRORS));
    };
    let (ns, name) = args
        .workload
        .split_once('/')
        .ok_or_else(|| format!("--workload `{}` is not NAMESPACE/NAME", args.workload))?;
    let Some(entry) = snapshot
        .workload_entries()
        .iter()
        .find(|w| w.namespace() == ns && w.name() == name)
    else {
        eprintln!("meshctl: no WorkloadEntry {ns}/{name} in the configuration");
        return Ok(ExitCode::from(EXIT_ERRORS));
    };
    let mesh = mesh_core::CompiledMesh::compile(&snapshot);
    let authorizer = Authorizer::for_workload(
        mesh.authorization_policies(),
        &mesh.settings().root_namespace,
        ns,
        &entry.spec.labels,
    );
    let uri: http::Uri = args.url.parse()?;
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let mut headers = HeaderMap::new();
    for (k, v) in args.request.header_pairs()? {
        headers.append(
            http::HeaderName::from_bytes(k.as_bytes())?,
            http::HeaderValue::from_str(v)?,
        );
    }
    let peer = args.principal.as_ref().map(|p| {
        let p = p.strip_prefix("spiffe://").unwrap_or(p);
        format!("spiffe://{p}")
    });
    let req = AuthzRequest {
        peer: peer.as_deref(),
        source_ip: args.source_ip,
        remote_ip: None,
        destination_ip: entry
            .spec
            .address
            .parse()
            .unwrap_or(IpAddr::from([127, 0, 0, 1])),
        destination_port: port,
        sni: None,
        method: &args.request.method,
        host: uri.authority().map_or("", |a| a.as_str()),
        path: uri.path_and_query().map_or("/", |p| p.as_str()),
        headers: &headers,
        auth: None,
    };
    let custom = authorizer.custom(&req);
    let verdict = authorizer.decide(&req);
    let explained = Explained::new(verdict, custom, &req);
    match args.request.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&explained.json(&authorizer, &req))?
        ),
        Output::Human => print!("{}", explained.text(args, &authorizer, &req)),
    }
    Ok(ExitCode::SUCCESS)
}

/// The decision and what decided it.
struct Explained<'a> {
    allowed: bool,
    policy: Option<&'a Policy>,
    rule: Option<usize>,
    /// The CUSTOM policy that matched (its provider is asked first).
    custom: Option<&'a Policy>,
}

impl<'a> Explained<'a> {
    fn new(v: Verdict<'a>, custom: Option<&'a Policy>, req: &AuthzRequest<'_>) -> Self {
        // A CUSTOM policy decides when the rest would allow: the provider's answer
        // stands. A DENY decides whatever the provider says.
        match custom {
            Some(c) if v.allowed => Explained {
                allowed: true,
                policy: Some(c),
                rule: c.matching_rule(req),
                custom,
            },
            _ => Explained {
                allowed: v.allowed,
                policy: v.policy,
                rule: v.rule,
                custom,
            },
        }
    }

    fn location(&self) -> Option<(String, u32)> {
        let p = self.policy?;
        let origin = p.origin()?;
        let path = match self.rule {
            Some(i) => FieldPath::root().key("spec").key("rules").index(i),
            None => FieldPath::root(),
        };
        let loc = origin.locate(&path);
        Some((loc.source.name().to_string(), loc.span.start.line))
    }

    fn json(&self, authorizer: &Authorizer, req: &AuthzRequest<'_>) -> serde_json::Value {
        let (file, line) = self.location().unzip();
        let dry = authorizer.dry_run(req).map(|v| {
            serde_json::json!({
                "decision": if v.allowed { "ALLOW" } else { "DENY" },
                "policy": v.policy.map(qualified),
            })
        });
        serde_json::json!({
            "decision": if self.allowed { "ALLOW" } else { "DENY" },
            "policy": self.policy.map(qualified),
            "action": self.policy.map(|p| p.action().as_str()),
            "file": file,
            "line": line,
            "rule": self.rule,
            "provider": self.custom.and_then(Policy::provider),
            "audit": authorizer.audit(req).map(qualified),
            "dry_run": dry,
        })
    }

    fn text(&self, args: &AuthzArgs, authorizer: &Authorizer, req: &AuthzRequest<'_>) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let from = args
            .principal
            .as_deref()
            .unwrap_or("plaintext (no principal)");
        let _ = writeln!(out, "workload:  {}", args.workload);
        let _ = writeln!(
            out,
            "request:   {} {}{} from {from} at {}",
            req.method, req.host, req.path, req.source_ip
        );
        let decision = if self.allowed { "ALLOW" } else { "DENY" };
        let _ = writeln!(out, "decision:  {decision}");
        match self.policy {
            Some(p) => {
                let at = self
                    .location()
                    .map(|(f, l)| format!(" at {f}:{l}"))
                    .unwrap_or_default();
                let rule = self
                    .rule
                    .map(|r| format!(", rule #{r}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "policy:    {} ({}){rule}{at}",
                    qualified(p),
                    p.action().as_str()
                );
                if p.action() == Action::Custom && self.allowed {
                    let _ = writeln!(
                        out,
                        "           allowed only if provider {:?} allows it",
                        p.provider().unwrap_or("")
                    );
                }
            }
            None if self.allowed => {
                let _ = writeln!(out, "policy:    none (no ALLOW policy applies)");
            }
            None => {
                let _ = writeln!(
                    out,
                    "policy:    none (ALLOW policies apply and none matches)"
                );
            }
        }
        if let Some(p) = authorizer.audit(req) {
            let _ = writeln!(out, "audit:     {}", qualified(p));
        }
        if let Some(v) = authorizer.dry_run(req) {
            let _ = writeln!(
                out,
                "dry run:   {} ({})",
                if v.allowed { "ALLOW" } else { "DENY" },
                v.policy.map_or("no policy".to_string(), qualified)
            );
        }
        out
    }
}

fn qualified(p: &Policy) -> String {
    format!("{}/{}", p.namespace(), p.name())
}
