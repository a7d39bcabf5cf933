//! Istio's Bookinfo, in-process.
//!
//! This version loads and checks the Bookinfo configuration (the registry of
//! `config/services.yaml` and `config/workloads.yaml`, Istio's DestinationRules and
//! gateway) and prints what the mesh would run: services, endpoints, subsets and routes.
//! The four Bookinfo services themselves, the ingress gateway and live reloading are the
//! next step (see the README's feature table); until then this command says so.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mesh_config::ConfigSet;
use mesh_config::diag::{RenderOptions, render};

#[derive(Parser)]
#[command(name = "bookinfo", about = "Istio's Bookinfo, in-process")]
struct Args {
    /// Configuration directory (Istio YAML).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/config"))]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let set = match ConfigSet::load(&[&args.config]) {
        Ok(set) => set,
        Err(e) => {
            eprintln!("bookinfo: {e}");
            return ExitCode::from(2);
        }
    };
    let checked = set.check();
    print!("{}", render(&checked.diagnostics, RenderOptions::default()));
    let Some(snapshot) = checked.snapshot else {
        eprintln!(
            "bookinfo: the configuration in {} has errors; nothing started",
            args.config.display()
        );
        return ExitCode::from(1);
    };
    println!(
        "Bookinfo configuration {} is valid (snapshot version {}, {} resources).",
        args.config.display(),
        snapshot.version(),
        snapshot.resources().len()
    );
    println!("\nServices and their endpoints:");
    for svc in snapshot.registry().services() {
        let ports: Vec<String> = svc
            .ports
            .iter()
            .map(|p| format!("{}/{}", p.number, p.protocol))
            .collect();
        println!("  {} [{}]", svc.host, ports.join(", "));
        for ep in svc.endpoints.iter() {
            let port = svc.ports.first().map(|p| ep.port_for(p)).unwrap_or(0);
            let labels: Vec<String> = ep.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "    {}:{}  {}  identity {}",
                ep.address,
                port,
                labels.join(","),
                ep.spiffe_id(&snapshot.mesh().trust_domain)
            );
        }
    }
    println!("\nSubsets:");
    for dr in snapshot.destination_rules() {
        let subsets: Vec<&str> = dr.spec.subsets.iter().map(|s| s.name.as_str()).collect();
        println!("  {} -> {}", dr.spec.host, subsets.join(", "));
    }
    for gw in snapshot.gateways() {
        for s in &gw.spec.servers {
            if let Some(p) = &s.port {
                println!(
                    "\nGateway {}/{}: port {} ({}) for hosts {:?}",
                    gw.namespace(),
                    gw.name(),
                    p.number,
                    p.protocol,
                    s.hosts
                );
            }
        }
    }
    println!(
        "\nThe Bookinfo services, the ingress gateway and live reloading are not implemented yet:\n\
         this command validates the configuration they will run on. See README.md."
    );
    ExitCode::SUCCESS
}
