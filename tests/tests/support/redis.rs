//! A real Redis for tests: Debian's `redis-server` started on a free loopback port in a
//! temporary directory, without persistence, killed on drop; and a few commands to look
//! at what the mesh wrote (`GET`, `TTL`, `INFO commandstats`).

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary, as Debian installs it.
pub const REDIS_SERVER: &str = "redis-server";

/// A `redis-server` of the test's own.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free port (ports are picked by binding `127.0.0.1:0` and
    /// closing it; a port taken in between is retried with another).
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..10 {
            let port = free_port();
            if let Some(child) = spawn(port, dir.path()) {
                return RedisServer {
                    child: Some(child),
                    port,
                    dir,
                };
            }
        }
        panic!("redis-server did not start on any of 10 free ports");
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data is lost: there is no persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process without closing its connections (`SIGSTOP`): Redis is slow, not
    /// gone.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused process run again (`SIGCONT`).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(status.success(), "kill {sig} {pid}");
    }

    /// Starts the server again on the same port (retrying while the port is released).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(child) = spawn(self.port, self.dir.path()) {
                self.child = Some(child);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not start again on port {}", self.port);
    }

    /// Sends one command and returns its reply, as text (`nil` for a null reply).
    pub fn command(&self, args: &[&str]) -> String {
        command(self.port, args).unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// The integer at `key`, `None` when it does not exist.
    pub fn get(&self, key: &str) -> Option<i64> {
        let reply = self.command(&["GET", key]);
        (reply != "nil").then(|| reply.parse().unwrap())
    }

    /// The time to live of `key`, in seconds (-2: no key, -1: no expiry).
    pub fn ttl(&self, key: &str) -> i64 {
        self.command(&["TTL", key]).parse().unwrap()
    }

    /// How many times `cmd` (lowercase, e.g. `incrby`) ran, from `INFO commandstats`.
    pub fn calls(&self, cmd: &str) -> u64 {
        let info = self.command(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{cmd}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }

    /// The keys matching `pattern`, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let reply = self.command(&["KEYS", pattern]);
        let mut keys: Vec<String> = reply
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        keys.sort();
        keys
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A paused process would not die of SIGKILL before it is continued on some
            // systems; continue it first.
            let _ = self.child.as_ref().map(|c| {
                Command::new("kill")
                    .args(["-CONT", &c.id().to_string()])
                    .status()
            });
        }
        self.stop();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    l.local_addr().unwrap().port()
}

/// Starts `redis-server` on `port` and waits for it to answer `PING`; `None` when it
/// exits (the port was taken) or does not answer within 10 s.
fn spawn(port: u16, dir: &Path) -> Option<Child> {
    let mut child = match Command::new(REDIS_SERVER)
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--dir", &dir.display().to_string()])
        .args(["--logfile", &dir.join("redis.log").display().to_string()])
        .args(["--daemonize", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot run `{REDIS_SERVER}` ({e}): the global rate limit tests need a real Redis; \
             install Debian's redis-server package (`apt-get install redis-server`, as .ci/run does)"
        ),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if command(port, &["PING"]).is_ok_and(|r| r == "PONG") {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// One command over a fresh connection, in RESP; the reply as text (arrays one element
/// per line, `nil` for null).
pub fn command(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(req.as_bytes())?;
    let mut reader = BufReader::new(stream);
    read_reply(&mut reader)
}

fn read_reply(r: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let bad = |what: &str| std::io::Error::other(format!("{what}: {line:?}"));
    let (kind, rest) = line.split_at_checked(1).ok_or_else(|| bad("empty reply"))?;
    match kind {
        "+" | ":" => Ok(rest.to_string()),
        "-" => Err(bad("error reply")),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad("bad length"))?;
            if n < 0 {
                return Ok("nil".into());
            }
            let mut buf = vec![0; usize::try_from(n).unwrap_or(0) + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(buf.len() - 2);
            String::from_utf8(buf).map_err(|_| bad("not UTF-8"))
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad("bad length"))?;
            let mut out = Vec::new();
            for _ in 0..n.max(0) {
                out.push(read_reply(r)?);
            }
            Ok(out.join("\n"))
        }
        _ => Err(bad("unknown reply")),
    }
}
