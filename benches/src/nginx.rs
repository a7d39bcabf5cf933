//! The sidecar baseline: Istio's data path has two proxies per request, one next to the
//! client and one next to the server. We reproduce it with two nginx instances started
//! as child processes (nginx is what is installable everywhere; Envoy is not packaged in
//! Debian): client → nginx "client sidecar" → nginx "server sidecar" → backend, every hop
//! HTTP/1.1 with keep-alive. Each instance gets a generated configuration in a temporary
//! directory, one worker process, no access log, and is stopped when dropped. Keep-alive
//! limits are raised (nginx closes a connection after 1,000 requests by default) so the
//! baseline does not pay for connection churn that Envoy would not have.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::measure;

/// How long an nginx instance gets to start listening, or to stop.
const PATIENCE: Duration = Duration::from_secs(5);

/// Finds the nginx binary in `PATH` or at `/usr/sbin/nginx` (Debian's place, often not
/// in a user's `PATH`); the error says why it is not usable.
pub(crate) fn find() -> std::result::Result<PathBuf, String> {
    let in_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    for dir in in_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
    {
        let candidate = dir.join("nginx");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err("nginx is not installed (not in PATH, not /usr/sbin/nginx)".into())
}

/// The version nginx reports (`nginx -v`), e.g. `nginx/1.22.1`.
pub(crate) fn version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("-v").output().ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    text.split("version: ").nth(1).map(|v| v.trim().to_string())
}

/// The two running sidecars; both are stopped when this is dropped.
pub(crate) struct Sidecars {
    // Dropped in this order: the client sidecar first, the directory last.
    client: Instance,
    server: Instance,
    _dir: TempDir,
}

impl Sidecars {
    /// Starts the server sidecar (in front of the backend on 127.0.0.1:`backend_port`),
    /// then the client sidecar (in front of the server sidecar).
    pub(crate) async fn start(bin: &Path, backend_port: u16) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("mesh-bench-nginx")
            .tempdir()
            .context("creating a temporary directory for nginx")?;
        let server = Instance::start(bin, &dir.path().join("server"), backend_port).await?;
        let client = Instance::start(bin, &dir.path().join("client"), server.port).await?;
        Ok(Sidecars {
            client,
            server,
            _dir: dir,
        })
    }

    /// The client sidecar's port on 127.0.0.1: where the client sends its requests.
    pub(crate) fn port(&self) -> u16 {
        self.client.port
    }

    /// The master and worker processes of both instances, as they are now.
    pub(crate) fn pids(&self) -> Vec<u32> {
        let mut pids = self.client.pids();
        pids.extend(self.server.pids());
        pids
    }
}

/// One nginx master (and its worker) with its own prefix directory.
struct Instance {
    child: Child,
    port: u16,
}

impl Instance {
    /// Writes the configuration for a proxy listening on a free port in front of
    /// 127.0.0.1:`upstream`, starts nginx, and waits until it listens; tries a few
    /// ports in case another process takes the one chosen.
    async fn start(bin: &Path, dir: &Path, upstream: u16) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut last = None;
        for _ in 0..3 {
            let port = free_port()?;
            match Self::try_start(bin, dir, port, upstream).await {
                Ok(instance) => return Ok(instance),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("nginx did not start")))
    }

    async fn try_start(bin: &Path, dir: &Path, port: u16, upstream: u16) -> Result<Self> {
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config(dir, port, upstream))
            .with_context(|| format!("writing {}", conf.display()))?;
        let stderr = File::create(dir.join("stderr.log"))?;
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut instance = Instance { child, port };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = instance.child.try_wait()? {
                bail!(
                    "nginx exited at start ({status}):\n{}{}",
                    read(&dir.join("stderr.log")),
                    read(&dir.join("error.log"))
                );
            }
            // Listening, and the master has forked its worker.
            let listening = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok();
            if listening && instance.pids().len() > 1 {
                return Ok(instance);
            }
            if Instant::now() > deadline {
                bail!(
                    "nginx did not listen on 127.0.0.1:{port} within {PATIENCE:?}:\n{}",
                    read(&dir.join("error.log"))
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The master and its children (the worker).
    fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let mut pids = vec![master];
        pids.extend(measure::children(master));
        pids
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let pids = self.pids();
        // SIGTERM: nginx's fast shutdown; the master stops its worker and exits.
        let master = Pid::from_raw(self.child.id() as i32);
        let _ = kill(master, Signal::SIGTERM);
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Still there: kill the worker too, which a killed master would leave running.
        for pid in pids {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// The configuration of one proxy: listen on 127.0.0.1:`port`, pass everything to
/// 127.0.0.1:`upstream` over kept-alive HTTP/1.1 connections.
fn config(dir: &Path, port: u16, upstream: u16) -> String {
    let dir = dir.display();
    format!(
        "# Generated by mesh-bench: one sidecar proxy.
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    # nginx closes a client connection after 1,000 requests by default.
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    upstream next_hop {{
        server 127.0.0.1:{upstream};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://next_hop;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
"
    )
}

/// A port free on 127.0.0.1 right now (nginx binds it a moment later).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
