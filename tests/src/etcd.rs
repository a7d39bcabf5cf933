//! A real etcd for tests: Debian's `etcd` (package `etcd-server`) started on free
//! loopback ports with a temporary data directory, killed on drop. It can be stopped and
//! started again on the same ports with its data, as an operator restarting it would.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary, as Debian installs it.
pub const ETCD: &str = "etcd";

/// An `etcd` of the test's own, one member.
#[derive(Debug)]
pub struct EtcdServer {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

impl EtcdServer {
    /// Starts a member on two free ports and waits until it answers. Panics, naming the
    /// package to install, when `etcd` is not installed.
    pub fn start() -> EtcdServer {
        let mut dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
        for _ in 0..5 {
            let mut server = EtcdServer {
                child: None,
                client_port: free_port(),
                peer_port: free_port(),
                dir,
            };
            if server.spawn() {
                return server;
            }
            dir = server.take_dir();
        }
        panic!("etcd did not start on any of 5 pairs of free ports");
    }

    fn take_dir(mut self) -> tempfile::TempDir {
        self.stop();
        std::mem::replace(
            &mut self.dir,
            tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}")),
        )
    }

    /// `http://127.0.0.1:<port>`, the client URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Starts the process and waits until it is healthy; false when it exited (a port
    /// taken in between).
    fn spawn(&mut self) -> bool {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(ETCD)
            .args(["--name", "test"])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`{ETCD}` is not installed: the etcd tests need a real etcd (Debian: apt-get install etcd-server)"
            ),
            Err(e) => panic!("cannot start {ETCD}: {e}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            // Healthy, and still ours: another test's etcd may have taken the port.
            if healthy(self.client_port) && matches!(child.try_wait(), Ok(None)) {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Kills the member (its data stays on disk).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the member again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("etcd did not start again on port {}", self.client_port);
    }
}

/// `GET /health` answers `"health":"true"`.
fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("\"health\":\"true\"")
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Applies the YAML files under `paths` to the configuration under `prefix` in etcd at
/// `url`, as `meshctl apply --etcd` does: checked whole first (panics with the
/// diagnostics when the result has errors), written in one guarded transaction. Returns
/// the store's revision after the write.
pub async fn apply(url: &str, prefix: &str, paths: &[&std::path::Path]) -> i64 {
    use mesh_tower::etcd::store::{self, Written};
    let etcd = mesh_tower::etcd::Etcd::new(url).unwrap_or_else(|e| panic!("{e}"));
    let mut sources = Vec::new();
    for p in paths {
        for file in mesh_config::load::yaml_files(p).unwrap_or_else(|e| panic!("{e}")) {
            sources.push(mesh_config::store::read_source(&file).unwrap_or_else(|e| panic!("{e}")));
        }
    }
    let current = store::read(&etcd, prefix)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let plan = current
        .plan_apply(&sources)
        .unwrap_or_else(|e| panic!("{e}"));
    let checked = plan.check();
    assert!(
        !checked.has_errors(),
        "{}",
        mesh_config::diag::render(&checked.diagnostics, Default::default())
    );
    match store::write(&etcd, &plan).await {
        Ok(Written::At(revision)) => revision,
        Ok(Written::Conflict) => panic!("etcd changed while applying {paths:?}"),
        Err(e) => panic!("{e}"),
    }
}

/// The value of `key` in etcd at `url`, if the key exists (as text).
pub async fn get(url: &str, key: &str) -> Option<String> {
    let etcd = mesh_tower::etcd::Etcd::new(url).unwrap_or_else(|e| panic!("{e}"));
    let (_, kv) = etcd
        .get(key.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}
