//! A real browser for tests: Debian's `chromedriver` (package `chromium-driver`) started
//! on a free loopback port, driving headless `chromium` (package `chromium`) over
//! WebDriver with fantoccini. The browser resolves no name but 127.0.0.1 and keeps its
//! profile in a temporary directory; the driver and every browser process it started
//! (one process group) are killed on drop.

#![allow(dead_code, unreachable_pub)]

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// The WebDriver server, as Debian's `chromium-driver` installs it.
pub const CHROMEDRIVER: &str = "chromedriver";
/// The browser, as Debian's `chromium` installs it.
pub const CHROMIUM: &str = "chromium";

/// A headless Chromium of the test's own, driven over WebDriver.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    driver: Child,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// Where `name` is on `PATH`, or `/usr/bin/name`.
fn binary(name: &str) -> String {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| std::path::Path::new("/usr/bin").join(name))
        .display()
        .to_string()
}

impl Browser {
    /// Starts `chromedriver` and a headless Chromium whose page is `width` × `height`
    /// pixels, and waits (at most 30 s) for the session.
    pub async fn start(width: u32, height: u32) -> Browser {
        let dir = tempfile::tempdir().unwrap();
        let chromium = binary(CHROMIUM);
        assert!(
            std::path::Path::new(&chromium).is_file(),
            "`{CHROMIUM}` is not installed: this test needs the Debian packages `chromium` \
             and `chromium-driver` (.ci/run installs them)"
        );
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("chromedriver.log")).unwrap();
        let driver = Command::new(binary(CHROMEDRIVER))
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group: the browsers it starts are killed with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "`{CHROMEDRIVER}` could not be started ({e}): this test needs the Debian \
                     packages `chromium` and `chromium-driver` (.ci/run installs them)"
                )
            });
        let mut browser = BrowserStart {
            driver: Some(driver),
            dir: Some(dir),
        };
        let profile = browser.dir().join("profile");
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // Root in a container has no user namespace for the sandbox.
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    format!("--window-size={width},{height}"),
                    "--force-device-scale-factor=1",
                    "--hide-scrollbars",
                    format!("--user-data-dir={}", profile.display()),
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-extensions",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-default-apps",
                    // Nothing but the loopback: no name resolves.
                    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object");
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let attempt = ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await;
            match attempt {
                Ok(client) => break client,
                Err(e) => {
                    if let Some(status) = browser.driver_exited() {
                        panic!("`{CHROMEDRIVER}` exited ({status}):\n{}", browser.log());
                    }
                    assert!(
                        Instant::now() < deadline,
                        "no WebDriver session within 30 s: {e}\n{}",
                        browser.log()
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        // The window's size is the outer one: grow it by what the browser's frame takes,
        // so that the page (and a screenshot) is `width` × `height`.
        let inner = client
            .execute(
                "return [window.innerWidth, window.innerHeight];",
                Vec::new(),
            )
            .await
            .unwrap();
        let (outer_w, outer_h) = client.get_window_size().await.unwrap();
        let frame = |outer: u64, inner: &Value| outer.saturating_sub(inner.as_u64().unwrap_or(0));
        let (w, h) = (
            u64::from(width) + frame(outer_w, &inner[0]),
            u64::from(height) + frame(outer_h, &inner[1]),
        );
        client
            .set_window_size(u32::try_from(w).unwrap(), u32::try_from(h).unwrap())
            .await
            .unwrap();
        let (driver, dir) = browser.take();
        Browser {
            client,
            driver,
            dir,
        }
    }

    /// Ends the session (the browser quits), then the driver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }

    /// The driver's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.driver);
    }
}

/// Kills `driver` and the processes of its group (the browsers it started).
fn kill_group(driver: &mut Child) {
    if let Ok(pid) = i32::try_from(driver.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = driver.kill();
    let _ = driver.wait();
}

/// The driver while the session starts: killed if the start fails.
struct BrowserStart {
    driver: Option<Child>,
    dir: Option<tempfile::TempDir>,
}

impl BrowserStart {
    fn dir(&self) -> std::path::PathBuf {
        self.dir.as_ref().unwrap().path().to_path_buf()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("chromedriver.log")).unwrap_or_default()
    }

    fn driver_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.driver.as_mut()?.try_wait().ok().flatten()
    }

    fn take(&mut self) -> (Child, tempfile::TempDir) {
        (self.driver.take().unwrap(), self.dir.take().unwrap())
    }
}

impl Drop for BrowserStart {
    fn drop(&mut self) {
        if let Some(driver) = self.driver.as_mut() {
            kill_group(driver);
        }
    }
}
