//! `bookinfo`: Istio's Bookinfo demo.
//!
//! Starts the six workloads of `config/workloads.yaml` (or those `--workload` names), the
//! ingress gateway of `config/bookinfo-gateway.yaml` and the admin endpoint, prints the
//! product page's URL, and applies every change to the configuration (the directory, or
//! etcd with `--etcd`) until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bookinfo::run::{Options, StartError, start};
use clap::Parser;

/// jemalloc, with the background purging `.cargo/config.toml` sets: memory a burst of
/// requests took goes back to the system within seconds of the burst (glibc's malloc
/// keeps most of it mapped), as Envoy relies on tcmalloc for.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "bookinfo", about = "Istio's Bookinfo, in-process")]
struct Args {
    /// Configuration directory (Istio YAML), watched for changes.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/config"), conflicts_with = "etcd")]
    config: PathBuf,
    /// Read the configuration from etcd instead (`http://127.0.0.1:2379`,
    /// comma-separated members), watched for changes; write it with
    /// `meshctl apply -f examples/bookinfo/config --etcd URL`.
    #[arg(long, value_name = "URL")]
    etcd: Option<String>,
    /// The key prefix of the configuration in etcd.
    #[arg(
        long,
        value_name = "PREFIX",
        default_value = "/mesh",
        requires = "etcd"
    )]
    prefix: String,
    /// Where the last good configuration read from etcd is cached, to start from when
    /// etcd is down [default: a file under the system's temporary directory named after
    /// the URL and prefix].
    #[arg(long, value_name = "FILE", requires = "etcd")]
    cache: Option<PathBuf>,
    /// With --etcd, each workload registers itself under a lease of this many seconds:
    /// how long the endpoint of a process that died stays in the mesh.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, requires = "etcd")]
    lease_ttl: u64,
    /// Address of the ingress gateway's port 80 [default: 127.0.0.1:8080; with
    /// --workload, no gateway unless given].
    #[arg(long)]
    ingress: Option<SocketAddr>,
    /// Address of the admin endpoint (`/healthz`, `/config_dump`) [default:
    /// 127.0.0.1:15000; with --workload, a free port].
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Run only this workload (a Bookinfo WorkloadEntry's name: `reviews-v2`; or a
    /// WorkloadGroup's: an instance of it, registered as `<group>-<address>`);
    /// repeatable. Without it, all six run.
    #[arg(long = "workload", value_name = "NAME")]
    workloads: Vec<String>,
    /// The address an instance of a WorkloadGroup listens on and registers with.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    instance_address: std::net::IpAddr,
    /// Run no workload: the ingress gateway (and the admin endpoint) alone, for a mesh
    /// whose workloads run as processes of their own.
    #[arg(long, conflicts_with = "workloads")]
    no_workloads: bool,
    /// Read each workload's certificate from `DIR/<namespace>/<service account>/`
    /// (`meshctl ca issue` writes them) instead of an in-process CA: processes that run
    /// apart share one root this way.
    #[arg(long, value_name = "DIR")]
    certs: Option<PathBuf>,
    /// Redis of the global rate limits (`redis://127.0.0.1:6379`): the gateway's and
    /// workloads' `envoy.filters.http.ratelimit` EnvoyFilters count there, with the
    /// limits of `--rate-limit-config`.
    #[arg(long, requires = "rate_limit_config")]
    rate_limit_redis: Option<String>,
    /// The rate-limit service's configuration (its `config.yaml`, or Istio's
    /// `ratelimit-config` ConfigMap), a file or a directory of them.
    #[arg(long, requires = "rate_limit_redis")]
    rate_limit_config: Option<PathBuf>,
    /// Multiplies the services' own timeouts (productpage's 3 s, reviews' 10 s / 2.5 s).
    #[arg(long, default_value_t = 1.0, hide = true)]
    time_scale: f64,
}

/// The global rate limiter of `--rate-limit-redis` and `--rate-limit-config`.
fn global_rate_limiter(
    url: &str,
    path: &std::path::Path,
) -> Result<mesh_tower::ratelimit::global::GlobalRateLimiter, String> {
    use mesh_tower::ratelimit::global::{GlobalRateLimiter, RedisSettings};
    let parsed = mesh_config::rls::RlsConfig::read_path(path).map_err(|e| e.to_string())?;
    let rendered = mesh_config::diag::render(&parsed.diagnostics, Default::default());
    let Some(config) = parsed
        .config
        .filter(|_| !parsed.diagnostics.iter().any(|d| d.is_error()))
    else {
        return Err(format!("{} is not valid:\n{rendered}", path.display()));
    };
    if !parsed.diagnostics.is_empty() {
        eprintln!("{rendered}");
    }
    GlobalRateLimiter::new(config, RedisSettings::new(url)).map_err(|e| e.to_string())
}

/// `<tmp>/bookinfo-etcd-cache/<url, prefix and role, as a file name>.json`.
fn default_cache(url: &str, prefix: &str, role: &str) -> PathBuf {
    let name: String = format!("{url}{prefix}-{role}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    std::env::temp_dir()
        .join("bookinfo-etcd-cache")
        .join(format!("{name}.json"))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    // Stopping signals are listened to before anything starts: a SIGTERM arriving while
    // the workloads start (and register) still stops them cleanly.
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    // The listeners' and pools' default bounds follow the descriptor limit: the most the
    // process may open.
    let descriptors = mesh_tower::transport::accept::raise_descriptor_limit();
    tracing::debug!(descriptors, "descriptor limit");
    let mut opts = Options::new(&args.config);
    let apart = !args.workloads.is_empty();
    opts.only = args.workloads.clone();
    opts.instance_address = args.instance_address;
    opts.none = args.no_workloads;
    opts.gateway = !apart || args.ingress.is_some();
    opts.certs = args.certs.clone();
    // What this process runs, for its default cache's name: processes of one mesh on
    // one machine keep apart caches.
    let role = if args.no_workloads {
        "gateway".to_string()
    } else if args.workloads.is_empty() {
        "all".to_string()
    } else {
        // With the instance address: two instances of one WorkloadGroup on one machine
        // have addresses of their own.
        format!("{}-{}", args.workloads.join("-"), args.instance_address)
    };
    opts.etcd = args.etcd.as_ref().map(|url| {
        let mut etcd = bookinfo::run::EtcdConfig::new(url.clone(), args.prefix.clone());
        etcd.cache = Some(
            args.cache
                .clone()
                .unwrap_or_else(|| default_cache(url, &args.prefix, &role)),
        );
        etcd.lease_ttl = std::time::Duration::from_secs(args.lease_ttl.max(1));
        etcd
    });
    opts.ingress = args
        .ingress
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)));
    opts.admin = args.admin.unwrap_or(SocketAddr::from((
        [127, 0, 0, 1],
        if apart { 0 } else { 15000 },
    )));
    opts.time_scale = args.time_scale;
    // Traces and metrics go over OTLP when the standard variables say where.
    match mesh_tower::telemetry::otlp::OtlpEnv::from_env(|n| std::env::var(n).ok()) {
        Ok(otlp) => opts.otlp = Some(otlp),
        Err(e) => {
            eprintln!("bookinfo: {e}");
            return ExitCode::from(1);
        }
    }
    let running = match start(opts).await {
        Ok(r) => r,
        Err(e @ StartError::Invalid { .. }) => {
            eprintln!("bookinfo: {e}");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("bookinfo: {e}");
            return ExitCode::from(2);
        }
    };
    if let (Some(url), Some(path)) = (&args.rate_limit_redis, &args.rate_limit_config) {
        match global_rate_limiter(url, path) {
            Ok(limiter) => running.live.runtime().set_rate_limit_service(Some(limiter)),
            Err(e) => {
                eprintln!("bookinfo: {e}");
                running.shutdown().await;
                return ExitCode::from(1);
            }
        }
    }
    println!("Bookinfo is running.\n");
    if running.ingress.port() != 0 {
        println!("  Product page:  {}", running.product_page());
    }
    println!("  Admin:         http://{}/config_dump", running.admin);
    match &args.etcd {
        None => println!(
            "  Configuration: {} (watched: edit it, or `cargo run -p meshctl -- apply -f FILE --config {}`)",
            args.config.display(),
            args.config.display()
        ),
        Some(url) => println!(
            "  Configuration: {} (watched: `cargo run -p meshctl -- apply -f FILE --etcd {url} --prefix {}`)",
            running.live.source(),
            args.prefix
        ),
    }
    println!("\n  Workloads:");
    for (w, addr) in &running.workloads {
        println!("    {:<16} {addr}", w.name);
    }
    println!("\nCtrl-C to stop.");
    // Ctrl-C, or SIGTERM as a process manager stops a process: both shut down cleanly
    // (deregistered first, then drained).
    let terminate = async {
        match terminate.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = &mut interrupt => {
            if let Err(e) = r {
                eprintln!("bookinfo: cannot wait for Ctrl-C: {e}");
            }
        }
        () = terminate => {}
    }
    println!("\nStopping: finishing requests in progress.");
    running.shutdown().await;
    ExitCode::SUCCESS
}
