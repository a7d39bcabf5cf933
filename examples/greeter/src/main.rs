//! `greeter`: the gRPC greeter demo. Starts greeter v1 and v2 from `config/`, calls them
//! as the `client` workload (and once as an `intruder`), prints what happened, and stops.

use std::path::PathBuf;
use std::process::ExitCode;

use greeter::pb::{HelloRequest, SetGreetingRequest};
use greeter::run::{Options, Running, StartError, start};

/// The configuration directory: the first argument, or the example's `config/`.
fn config_dir() -> PathBuf {
    std::env::args_os().nth(1).map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config")),
        PathBuf::from,
    )
}

/// `message`, or the status the call ended with.
fn show<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) -> String {
    match result {
        Ok(resp) => format!("{:?}", resp.into_inner()),
        Err(status) => format!("{:?}: {}", status.code(), status.message()),
    }
}

async fn demo(running: &Running) {
    let hello = || HelloRequest {
        name: "world".into(),
    };
    let v1_before = running.greeter("v1").map_or(0, |g| g.calls());
    // v1 is warming up: its first call fails with UNAVAILABLE, and the mesh retries.
    if let Some(v1) = running.greeter("v1") {
        v1.fail_next(1);
    }
    let mut client = running.client("client");
    println!("As cluster.local/ns/default/sa/client:");
    println!("  SayHello    -> {}", show(client.say_hello(hello()).await));
    let v1_calls = running.greeter("v1").map_or(0, |g| g.calls()) - v1_before;
    println!(
        "                 (v1 was called {v1_calls} times: the first failed with UNAVAILABLE, the mesh retried)"
    );
    println!(
        "  SayGoodbye  -> {}",
        show(client.say_goodbye(hello()).await)
    );
    let set = SetGreetingRequest {
        greeting: "Howdy".into(),
    };
    println!("  SetGreeting -> {}", show(client.set_greeting(set).await));
    let mut intruder = running.client("intruder");
    println!("As cluster.local/ns/default/sa/intruder:");
    println!(
        "  SayHello    -> {}",
        show(intruder.say_hello(hello()).await)
    );
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
    let config = config_dir();
    let running = match start(Options::new(&config)).await {
        Ok(r) => r,
        Err(e @ StartError::Invalid { .. }) => {
            eprintln!("greeter: {e}");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("greeter: {e}");
            return ExitCode::from(2);
        }
    };
    println!("Configuration: {}", config.display());
    for w in &running.workloads {
        println!(
            "Greeter {} ({}) listening on {}",
            w.spec.version, w.spec.name, w.addr
        );
    }
    println!();
    demo(&running).await;
    running.shutdown().await;
    ExitCode::SUCCESS
}
