//! `mesh-bench load`: what the mesh costs per request over real loopback connections,
//! next to a bare client, to a bare rustls client and server over mutual TLS (against the
//! mesh's own mutual TLS, `mesh.client()` to `mesh.serve()`), and to Istio's two-sidecar
//! data path (two nginx proxies); and what a local rate limit costs, `mesh.client()` to
//! `mesh.serve()` in plaintext with and without one.
//! Microbenchmarks (the criterion benches) show the stack's own nanoseconds; this shows
//! what a service sees: latency under closed and open loads, throughput, CPU,
//! allocations and memory, with every path measured in one run, interleaved.
//!
//! `cargo run --release -p mesh-bench -- load` (a few minutes) or `... load --quick` (a
//! few seconds, run by CI so the benchmark keeps working). The process exits non-zero
//! when any request failed, so a broken path fails CI. `... soak` runs the Bookinfo
//! binary under a mixed load for 10 minutes and reports its memory and descriptors
//! over time (see `soak.rs`).

mod backend;
mod load;
mod measure;
mod nginx;
mod paths;
mod propagation;
mod report;
mod scale;
mod soak;
mod tls;

use std::alloc::System;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

use crate::backend::Backend;
use crate::load::{LATE_AFTER, MAX_IN_FLIGHT, Phase, REQUEST_TIMEOUT, Tally};
use crate::paths::{Path, PathName};
use crate::report::Results;

/// Counts every allocation, for allocations per request.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Requests sent one after the other to warm up a path before it is measured.
const WARM_UP: usize = 200;

/// Requests sent to warm a path up again at the start of each round.
const REWARM: usize = 50;

/// The command line.
#[derive(Parser)]
#[command(name = "mesh-bench", about = "Benchmarks of the mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What to run.
#[derive(Subcommand)]
enum Command {
    /// Load benchmark: a bare client, the mesh (client alone, and client to server with
    /// and without a local rate limit), both over mutual TLS, and two nginx sidecars to
    /// one local backend, in closed and open loops, interleaved; prints Markdown tables.
    Load(LoadArgs),
    /// Sends a fixed number of requests one after the other along one path and prints
    /// the time per request: a steady, repeatable workload to profile (`perf record`,
    /// `valgrind --tool=callgrind`) and to compare paths by instructions per request.
    Profile(ProfileArgs),
    /// Soak: the release `bookinfo` binary under a mixed load and configuration changes
    /// for minutes, its resident memory and descriptors sampled every 10 s; prints a
    /// Markdown table and the slope (not run by CI).
    Soak(SoakArgs),
    /// Scale: a configuration of 10 000 services, 100 000 endpoints and 10 000
    /// VirtualServices loaded, checked, compiled and swapped in; an endpoint change;
    /// prints a Markdown table of times and peak memory.
    Scale(ScaleArgs),
    /// Propagation: a real etcd, three follower processes watching it, 100 changes
    /// written; prints the time until each follower had each change in force (needs
    /// Debian's `etcd`).
    Propagation(PropagationArgs),
    /// A follower of `propagation` (not for direct use).
    #[command(hide = true)]
    Follow(FollowArgs),
}

/// Options of `propagation`.
#[derive(Args)]
struct PropagationArgs {
    /// Generated services added to Bookinfo's configuration.
    #[arg(long, default_value_t = 0)]
    services: usize,
    /// Changes written.
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// Follower processes.
    #[arg(long, default_value_t = 3)]
    followers: usize,
    /// Write workloads registering and going away (endpoint changes) instead of
    /// VirtualService changes.
    #[arg(long)]
    registrations: bool,
    /// Milliseconds between two writes.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
}

/// Options of `follow`.
#[derive(Args)]
struct FollowArgs {
    /// etcd's URL.
    #[arg(long)]
    etcd: String,
}

fn small_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// Options of `scale`.
#[derive(Args)]
struct ScaleArgs {
    /// Services (ServiceEntries).
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Endpoints (WorkloadEntries) per service.
    #[arg(long, default_value_t = 10)]
    endpoints_per_service: usize,
    /// VirtualServices (each with its DestinationRule), on the first services.
    #[arg(long, default_value_t = 10_000)]
    virtual_services: usize,
}

/// Runs `scale`.
fn scale_main(args: &ScaleArgs) -> Result<ExitCode> {
    scale::run(scale::Size {
        services: args.services,
        endpoints_per_service: args.endpoints_per_service,
        virtual_services: args.virtual_services,
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Options of `soak`.
#[derive(Args)]
struct SoakArgs {
    /// How long to run.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
}

/// Runs `soak`.
fn soak_main(args: &SoakArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(soak::run(args.minutes))
}

/// Options of `profile`.
#[derive(Args)]
struct ProfileArgs {
    /// The path (not `nginx-sidecars`).
    #[arg(long, value_enum, default_value = "mesh-vs")]
    path: PathName,
    /// Requests to send after the warm-up.
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// Worker threads of the runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Trace: the mesh paths export spans to an in-process OTLP sink, at Istio's default
    /// sampling (1 %).
    #[arg(long)]
    trace: bool,
}

/// Runs `profile`.
fn profile_main(args: &ProfileArgs) -> Result<ExitCode> {
    paths::TRACE.store(args.trace, std::sync::atomic::Ordering::Relaxed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        let backend = Backend::start().await?;
        if args.path == PathName::NginxSidecars {
            bail!("profile runs in-process paths only");
        }
        let path = paths::start(args.path, &backend).await?;
        // On a worker thread, as the load benchmark's clients are.
        let sender = path.sender.clone();
        let requests = args.requests;
        let (elapsed, allocated) = tokio::spawn(async move {
            for _ in 0..WARM_UP {
                sender.send().await?;
            }
            let allocs = GLOBAL.stats();
            let started = std::time::Instant::now();
            for _ in 0..requests {
                sender.send().await?;
            }
            Ok::<_, anyhow::Error>((started.elapsed(), GLOBAL.stats() - allocs))
        })
        .await??;
        let n = args.requests.max(1) as f64;
        println!(
            "{}: {} requests, {:.2} µs/request, {:.1} allocations/request",
            args.path.as_str(),
            args.requests,
            elapsed.as_secs_f64() * 1e6 / n,
            allocated.allocations as f64 / n,
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// Options of `load`.
#[derive(Args)]
struct LoadArgs {
    /// A few seconds in all: 1 round of 0.3 s phases (what CI runs).
    #[arg(long)]
    quick: bool,
    /// Rounds; each runs every phase on every path once [default: 3, or 1 with --quick].
    #[arg(long)]
    rounds: Option<u32>,
    /// Seconds per phase [default: 3, or 0.3 with --quick].
    #[arg(long)]
    seconds: Option<f64>,
    /// Paths to measure, comma-separated [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    paths: Vec<PathName>,
    /// Requests in flight in the concurrent closed loop.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Open-loop rates in requests per second, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 5000])]
    rates: Vec<u64>,
    /// A phase during which other processes used more than 5% of the machine's CPU, or
    /// the hypervisor stole more than 0.5% (15 ms of a 3 s phase: at 5,000 requests/s,
    /// enough to move its p99), is run again up to this many times, and its quietest run
    /// kept [default: 2, or 0 with --quick].
    #[arg(long)]
    busy_repeats: Option<u32>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Trace: the mesh paths export spans to an in-process OTLP sink, at Istio's default
    /// sampling (1 %).
    #[arg(long)]
    trace: bool,
}

/// Other processes' share of the machine's CPU above which a phase was busy.
const BUSY_OTHERS_PCT: f64 = 5.0;
/// The hypervisor's steal above which a phase was busy.
const BUSY_STEAL_PCT: f64 = 0.5;

/// The settings of a run, as used and as reported.
#[derive(Debug, Serialize)]
struct Settings {
    /// Rounds; each runs every phase on every path once.
    rounds: u32,
    /// Duration of each phase.
    seconds_per_phase: f64,
    /// The paths measured, in order.
    paths: Vec<PathName>,
    /// The phases run on each path, in order.
    phases: Vec<Phase>,
    /// Requests in flight in the concurrent closed loop (and tasks of the warm-up).
    concurrency: usize,
    /// Sequential warm-up requests per path before the first round.
    warm_up_requests: usize,
    /// A request not answered within this time is an error.
    request_timeout_s: f64,
    /// Open loop: a request sent later than this after its due time is late.
    late_after_ms: f64,
    /// Open loop: requests in flight beyond which due requests are not sent.
    max_in_flight: usize,
    /// Worker threads of the tokio runtime running everything in-process.
    tokio_worker_threads: usize,
    /// How many times a busy phase is run again (see [`BUSY_OTHERS_PCT`]).
    busy_repeats: u32,
}

impl Settings {
    fn new(a: &LoadArgs) -> Result<Self> {
        let rounds = a.rounds.unwrap_or(if a.quick { 1 } else { 3 });
        let seconds = a.seconds.unwrap_or(if a.quick { 0.3 } else { 3.0 });
        if !(1..=100).contains(&rounds) {
            bail!("--rounds must be between 1 and 100");
        }
        if !(seconds.is_finite() && (0.01..=600.0).contains(&seconds)) {
            bail!("--seconds must be between 0.01 and 600");
        }
        if !(1..=4096).contains(&a.concurrency) {
            bail!("--concurrency must be between 1 and 4096");
        }
        if a.rates.iter().any(|r| !(1..=1_000_000).contains(r)) {
            bail!("--rates must be between 1 and 1000000 requests/s");
        }
        let paths = if a.paths.is_empty() {
            PathName::ALL.to_vec()
        } else {
            PathName::ALL
                .into_iter()
                .filter(|p| a.paths.contains(p))
                .collect()
        };
        let mut phases = vec![Phase::Closed { in_flight: 1 }];
        if a.concurrency > 1 {
            phases.push(Phase::Closed {
                in_flight: a.concurrency,
            });
        }
        phases.extend(a.rates.iter().map(|&rate| Phase::Open { rate }));
        Ok(Settings {
            rounds,
            seconds_per_phase: seconds,
            paths,
            phases,
            concurrency: a.concurrency,
            warm_up_requests: WARM_UP,
            request_timeout_s: REQUEST_TIMEOUT.as_secs_f64(),
            late_after_ms: LATE_AFTER.as_secs_f64() * 1e3,
            max_in_flight: MAX_IN_FLIGHT,
            tokio_worker_threads: 2,
            busy_repeats: a.busy_repeats.unwrap_or(if a.quick { 0 } else { 2 }),
        })
    }
}

/// What the JSON file holds.
#[derive(Serialize)]
struct JsonReport<'a> {
    /// Where the numbers come from.
    machine: &'a Machine,
    /// How they were taken.
    settings: &'a Settings,
    /// One row per (phase, path): medians and every round's metrics.
    results: &'a Results,
    /// Paths skipped, and why.
    skipped: &'a [String],
    /// Paths that failed to start or had failed requests in warm-up.
    failures: &'a [String],
}

/// The machine the numbers come from.
#[derive(Debug, Serialize)]
struct Machine {
    /// CPUs available to this process.
    nproc: usize,
    /// The CPU model (first `model name` of /proc/cpuinfo).
    cpu: String,
    /// The kernel release.
    kernel: String,
    /// Clock ticks per second of /proc times.
    clock_ticks_per_s: u64,
    /// Whether the clock tick came from sysconf (else 100 was assumed).
    clock_ticks_from_sysconf: bool,
    /// nginx's version, if installed.
    nginx: Option<String>,
}

impl Machine {
    fn probe() -> Self {
        let (clock_ticks_per_s, clock_ticks_from_sysconf) = measure::clock_ticks();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            clock_ticks_per_s,
            clock_ticks_from_sysconf,
            nginx: nginx::find().ok().and_then(|b| nginx::version(&b)),
        }
    }
}

/// Runs the command; exit code 0 when every request succeeded, 1 when some failed, 2
/// when the benchmark itself could not run.
fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Load(args) => load_main(args),
        Command::Profile(args) => profile_main(args),
        Command::Soak(args) => soak_main(args),
        Command::Scale(args) => scale_main(args),
        Command::Propagation(args) => small_runtime().and_then(|rt| {
            rt.block_on(propagation::run(
                args.services,
                args.changes,
                args.followers,
                args.registrations,
                std::time::Duration::from_millis(args.interval_ms),
            ))
            .map(|()| ExitCode::SUCCESS)
        }),
        Command::Follow(args) => small_runtime().and_then(|rt| {
            rt.block_on(propagation::follow(&args.etcd, "/mesh"))
                .map(|()| ExitCode::SUCCESS)
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mesh-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Starts the runtime and runs the benchmark, stopping cleanly on Ctrl-C.
fn load_main(args: &LoadArgs) -> Result<ExitCode> {
    paths::TRACE.store(args.trace, std::sync::atomic::Ordering::Relaxed);
    let settings = Settings::new(args)?;
    // Everything in-process (load generator, mesh, backend) shares two worker threads,
    // one per core of the machine this was written for.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.tokio_worker_threads)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        tokio::select! {
            r = run(&settings, args.json.as_deref()) => r,
            // Dropping `run` stops the nginx processes it started.
            Ok(()) = tokio::signal::ctrl_c() => {
                eprintln!("mesh-bench: interrupted");
                Ok(ExitCode::from(130))
            }
        }
    })
}

/// Sets up the backend and the paths, warms them up, runs the rounds and reports.
async fn run(settings: &Settings, json: Option<&std::path::Path>) -> Result<ExitCode> {
    let machine = Machine::probe();
    let backend = Backend::start().await?;
    let mut skipped = Vec::new();
    let mut failures = Vec::new();
    let mut paths: Vec<Path> = Vec::new();
    for &name in &settings.paths {
        match name {
            PathName::NginxSidecars => match nginx::find() {
                Err(why) => {
                    let line = format!(
                        "SKIPPED nginx-sidecars: {why}. Install it with `apt-get install nginx` to measure the two-sidecar baseline."
                    );
                    eprintln!("{line}");
                    skipped.push(line);
                }
                Ok(bin) => match nginx::Sidecars::start(&bin, backend.port).await {
                    Ok(s) => paths.push(paths::nginx(s)?),
                    Err(e) => {
                        let line = format!("FAILED nginx-sidecars: nginx did not start: {e:#}");
                        eprintln!("{line}");
                        failures.push(line);
                    }
                },
            },
            _ => paths.push(paths::start(name, &backend).await?),
        }
    }
    for p in &paths {
        let t = load::warm_up(&p.sender, WARM_UP, settings.concurrency).await?;
        note_failures(p.name, "warm-up", &t, &mut failures);
    }

    let duration = Duration::from_secs_f64(settings.seconds_per_phase);
    let mut results = Results::default();
    let mut rss_reset = true;
    let mut busy = Busy::default();
    let mut limits = Vec::new();
    for round in 1..=settings.rounds {
        for p in &paths {
            let t = load::warm_up(&p.sender, REWARM, 0).await?;
            note_failures(p.name, "re-warm", &t, &mut failures);
            for &phase in &settings.phases {
                let pids = p.sidecars.as_ref().map(|s| s.pids()).unwrap_or_default();
                let mut sample =
                    load::run(&p.sender, phase, duration, pids.clone(), &backend).await?;
                rss_reset &= sample.cost.rss_reset;
                let mut m = report::Metrics::of(&sample);
                let mut repeats = 0;
                while is_busy(&m) && repeats < settings.busy_repeats {
                    eprintln!(
                        "round {round}/{}  {:<15} {:<10} busy (others {:.0}% CPU, steal {:.0}%): run again",
                        settings.rounds,
                        p.name.as_str(),
                        phase.short(),
                        m.others_cpu_pct,
                        m.steal_pct,
                    );
                    repeats += 1;
                    let again =
                        load::run(&p.sender, phase, duration, pids.clone(), &backend).await?;
                    rss_reset &= again.cost.rss_reset;
                    let m2 = report::Metrics::of(&again);
                    if noise(&m2) < noise(&m) {
                        (sample, m) = (again, m2);
                    }
                }
                busy.repeated += u32::from(repeats > 0);
                busy.kept_busy += u32::from(is_busy(&m));
                eprintln!(
                    "round {round}/{}  {:<15} {:<10} {:>8.0} rps  p50 {:>7.1} µs  p99 {:>8.1} µs  errors {}  (others {:.0}% CPU, steal {:.0}%)",
                    settings.rounds,
                    p.name.as_str(),
                    phase.short(),
                    m.rps,
                    m.p50_us,
                    m.p99_us,
                    sample.tally.errors,
                    m.others_cpu_pct,
                    m.steal_pct,
                );
                results.add(p.name, phase, &sample);
            }
        }
    }
    // The local rate limit never refused and saw every request measured.
    for p in &paths {
        match p.check_rate_limit(results.requests(p.name)) {
            None => {}
            Some(Ok(line)) => limits.push(line),
            Some(Err(e)) => {
                let line = format!("FAILED {e:#}");
                eprintln!("{line}");
                failures.push(line);
            }
        }
    }
    drop(paths);

    let observed = Observed {
        rss_reset,
        busy,
        limits,
    };
    print_report(settings, &machine, &results, &skipped, &failures, &observed);
    if let Some(file) = json {
        let report = JsonReport {
            machine: &machine,
            settings,
            results: &results,
            skipped: &skipped,
            failures: &failures,
        };
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(file, text).with_context(|| format!("writing {}", file.display()))?;
        println!("\nResults written to {}", file.display());
    }
    for row in results.rows.iter().filter(|r| r.errors_total > 0) {
        failures.push(format!(
            "FAILED {} {}: {} requests failed; first: {}",
            row.path.as_str(),
            row.phase.short(),
            row.errors_total,
            row.first_error.as_deref().unwrap_or("?")
        ));
    }
    // Said again at the end, where a reader of a CI log looks.
    for line in &skipped {
        println!("\n{line}");
    }
    if failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        println!();
        for f in &failures {
            println!("{f}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// Phases run again because the machine was busy.
#[derive(Debug, Default, Clone, Copy)]
struct Busy {
    /// Phases run more than once.
    repeated: u32,
    /// Phases still busy in the run kept.
    kept_busy: u32,
}

/// What the run observed besides the tables.
#[derive(Debug)]
struct Observed {
    /// Whether the kernel reset the peak RSS before each phase.
    rss_reset: bool,
    /// Phases run again because the machine was busy.
    busy: Busy,
    /// What the local rate limits of the paths with one counted (see
    /// [`Path::check_rate_limit`]).
    limits: Vec<String>,
}

/// True when other processes or the hypervisor took enough of the machine during a
/// phase to disturb it.
fn is_busy(m: &report::Metrics) -> bool {
    m.others_cpu_pct > BUSY_OTHERS_PCT || m.steal_pct > BUSY_STEAL_PCT
}

/// How much of the machine others took during a phase (lower is quieter).
fn noise(m: &report::Metrics) -> f64 {
    m.others_cpu_pct + m.steal_pct
}

/// Records a failure line if warming up `path` had errors.
fn note_failures(path: PathName, what: &str, t: &Tally, failures: &mut Vec<String>) {
    if t.errors > 0 {
        let line = format!(
            "FAILED {} {what}: {} of {} requests failed; first: {}",
            path.as_str(),
            t.errors,
            t.errors + t.ok,
            t.first_error.as_deref().unwrap_or("?")
        );
        eprintln!("{line}");
        failures.push(line);
    }
}

/// Prints the Markdown report: machine, settings, tables, background load, notes.
fn print_report(
    s: &Settings,
    m: &Machine,
    results: &Results,
    skipped: &[String],
    failures: &[String],
    observed: &Observed,
) {
    let busy = observed.busy;
    println!("## mesh-bench load\n");
    println!(
        "Machine: nproc {}, {}, Linux {}; nginx {}.",
        m.nproc,
        m.cpu,
        m.kernel,
        m.nginx.as_deref().unwrap_or("not installed")
    );
    println!(
        "Settings: {} round(s) × {} s per phase, paths and phases interleaved in each round, medians over rounds; tokio multi-thread runtime with {} workers for load generator, clients, mesh and backend; warm-up {} requests + {}×10 concurrent per path, {} more per round; request timeout {} s.",
        s.rounds,
        s.seconds_per_phase,
        s.tokio_worker_threads,
        s.warm_up_requests,
        s.concurrency,
        REWARM,
        s.request_timeout_s,
    );
    for line in skipped.iter().chain(failures) {
        println!("\n**{line}**");
    }
    print!("{}", results.tables(&s.phases));
    let tick = if m.clock_ticks_from_sysconf {
        format!("{} Hz from sysconf(CLK_TCK)", m.clock_ticks_per_s)
    } else {
        format!(
            "{} Hz assumed: sysconf(CLK_TCK) failed",
            m.clock_ticks_per_s
        )
    };
    let ((others, others_max), (steal, steal_max)) = results.background();
    println!(
        "\nBackground: during the phases, other processes used a median {others:.1}% of the machine's CPU (at most {others_max:.1}%), and the hypervisor stole {steal:.1}% (at most {steal_max:.1}%)."
    );
    if s.busy_repeats > 0 {
        println!(
            "Busy phases (others above {BUSY_OTHERS_PCT}% CPU or steal above {BUSY_STEAL_PCT}%): {} were run again (up to {} times each, the quietest run kept); {} stayed busy.",
            busy.repeated, s.busy_repeats, busy.kept_busy
        );
    }
    if others_max > 10.0 || steal_max > 10.0 {
        println!(
            "**Warning: the machine was not idle during some phases; their numbers are noisy (see each round's others_cpu_pct and steal_pct in --json).**"
        );
    }
    println!("\nNotes:");
    println!("- rps ÷ bare, +p50, +p99: against the `bare` row of the same table.");
    println!(
        "- CPU µs/req: user + system time of this whole process (load generator, client, mesh and the in-process backend alike) per request; for nginx-sidecars plus the nginx masters' and workers' time from /proc/<pid>/stat (clock tick {tick}, so short phases are coarse)."
    );
    println!(
        "- allocs/req: every allocation in this process during the phase (backend and load generator included), per request; nginx's own are not counted."
    );
    if observed.rss_reset {
        println!(
            "- peak RSS: VmHWM, reset before each phase (/proc/<pid>/clear_refs); nginx-sidecars adds the nginx processes' VmHWM."
        );
    } else {
        println!(
            "- peak RSS: the kernel refused to reset VmHWM (/proc/self/clear_refs), so this is the peak since the process started."
        );
    }
    println!(
        "- open loop: request i is due at t0 + i/rate and its latency counts from then (no coordinated omission); late = sent more than {} ms after it was due, or not sent because {} were in flight; send lag = how late the load generator sent requests (its own error, included in the latencies).",
        s.late_after_ms, s.max_in_flight
    );
    println!(
        "- new conns: connections the backend accepted during the phase (0: pooled connections were reused); for nginx-sidecars only the server sidecar's connections to the backend are seen."
    );
    println!(
        "- mesh-vs requests carry no end-user header: they miss the header rule and take the 90/10 split (v1 and v2 are two registry endpoints at the one backend's address)."
    );
    println!(
        "- bare-tls and mesh-mtls: mutual TLS (rustls with ring; certificates from the mesh's in-process CA) to the backend's application on a listener of their own. bare-tls: the bare client over a rustls connector, to the backend's HTTP/1.1 server behind a rustls acceptor; mesh-mtls: mesh.client() (auto mTLS to a WorkloadEntry, Istio's defaults otherwise) to mesh.serve() with mesh.inbound() around the application. Their new conns are the connections these TLS listeners accepted. The mutual TLS table compares mesh-mtls with bare-tls (rps ÷ bare-tls for closed loops only: an open loop's throughput is its rate)."
    );
    println!(
        "- mesh-inbound and mesh-ratelimit: mesh.client() (a plain ServiceEntry endpoint, no identities: plaintext; Istio's defaults otherwise) to mesh.serve() with mesh.inbound() around the backend's application on a listener of its own (new conns: the connections mesh.serve() accepted); mesh-ratelimit adds a LocalRateLimitPolicy on the server (total 100,000,000 requests/s, burst 100,000,000: it never refuses). The rate limit table compares mesh-ratelimit with mesh-inbound: what a local limit costs per request."
    );
    for line in &observed.limits {
        println!("- {line}");
    }
}
