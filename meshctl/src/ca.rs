//! `meshctl ca`: a small certificate authority for processes that run apart — a root
//! made once, and workload certificates issued from it in Istio's file layout
//! (`cert-chain.pem`, `key.pem`, `root-cert.pem`), which a process reads as it would read
//! what SPIRE or cert-manager delivers. Only `meshctl ca issue` reads the root's key; the
//! processes read their own directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use mesh_tower::identity::{CERT_CHAIN, CertificateAuthority, KEY, ROOT_CERT, SpiffeId};

use crate::EXIT_ERRORS;

/// The root's private key, next to its certificate, in the directory `create-root` writes.
const ROOT_KEY: &str = "root-key.pem";

/// `meshctl ca` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum CaCommand {
    /// Make a new root: `root-cert.pem` and `root-key.pem` in DIR (the key readable by
    /// its owner only). Refuses to replace an existing root.
    CreateRoot {
        /// Where to write the root.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The trust domain (the root's organization).
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// Issue a workload certificate for a namespace and service account, signed by the
    /// root in --root: `cert-chain.pem`, `key.pem` and `root-cert.pem` in DIR (replaced
    /// atomically, so a process watching DIR picks the new ones up).
    Issue {
        /// The root's directory (`create-root --out`).
        #[arg(long, value_name = "DIR")]
        root: PathBuf,
        /// The workload's namespace.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// The workload's service account.
        #[arg(long)]
        service_account: String,
        /// The trust domain of the SPIFFE ID.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Validity, in hours (Istio's default: 24).
        #[arg(long, default_value_t = 24)]
        hours: u64,
        /// Where to write the files (a process's `--certs DIR` reads
        /// `DIR/<namespace>/<service account>/`).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// Runs a `meshctl ca` subcommand.
pub(crate) fn ca(command: &CaCommand) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match command {
        CaCommand::CreateRoot { out, trust_domain } => {
            if out.join(ROOT_KEY).exists() || out.join(ROOT_CERT).exists() {
                eprintln!(
                    "error: {} already holds a root; nothing was written (remove it first to make another)",
                    out.display()
                );
                return Ok(ExitCode::from(EXIT_ERRORS));
            }
            let ca = CertificateAuthority::new(trust_domain)?;
            std::fs::create_dir_all(out)?;
            write_private(&out.join(ROOT_KEY), ca.root_key_pem().as_bytes())?;
            std::fs::write(out.join(ROOT_CERT), ca.root_pem())?;
            println!(
                "root for {trust_domain} written to {} ({ROOT_CERT}, {ROOT_KEY})",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        CaCommand::Issue {
            root,
            namespace,
            service_account,
            trust_domain,
            hours,
            out,
        } => {
            let read = |name: &str| {
                std::fs::read_to_string(root.join(name))
                    .map_err(|e| format!("cannot read {}: {e}", root.join(name).display()))
            };
            if *hours == 0 {
                eprintln!("error: --hours 0 would issue a certificate already expired");
                return Ok(ExitCode::from(EXIT_ERRORS));
            }
            let ca = CertificateAuthority::from_pem(&read(ROOT_CERT)?, &read(ROOT_KEY)?)?;
            let id = SpiffeId::new(trust_domain, namespace, service_account)?;
            let now = SystemTime::now();
            // Valid from a minute ago: clocks of other machines may lag a little.
            let not_after = hours
                .checked_mul(3600)
                .and_then(|s| now.checked_add(Duration::from_secs(s)))
                .ok_or_else(|| format!("--hours {hours} is too far in the future"))?;
            let (chain, key) = ca.issue_pem(&id, now - Duration::from_secs(60), not_after)?;
            std::fs::create_dir_all(out)?;
            // The key first, so that a watcher that reads between two renames never
            // pairs a new certificate with an old key for long.
            write_private(&out.join(KEY), key.as_bytes())?;
            write_atomically(&out.join(CERT_CHAIN), chain.as_bytes())?;
            write_atomically(&out.join(ROOT_CERT), ca.root_pem().as_bytes())?;
            println!("{} issued for {hours} h: {}", id.as_str(), out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writes `bytes` through a temporary file renamed over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_of(path);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// As [`write_atomically`], readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = tmp_of(path);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn tmp_of(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}
