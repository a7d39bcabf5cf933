//! `meshctl`: the mesh's command line.
//!
//! `meshctl validate` checks Istio configuration the way `istioctl validate` and
//! `istioctl analyze` do, without a cluster: per-resource validation and cross-resource
//! analysis, rendered like rustc's errors or as JSON.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use mesh_config::diag::{RenderOptions, counts, render, render_json};
use mesh_config::{ConfigSet, Diagnostic, LoadError};

/// Exit code when there are configuration errors.
const EXIT_ERRORS: u8 = 1;
/// Exit code for usage and I/O errors (clap uses 2 for usage errors too).
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "meshctl",
    version,
    about = "Command line of the in-process service mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate Istio configuration files and directories.
    ///
    /// Without --config, all PATHs are checked together as one configuration. With
    /// --config, each file under PATHs is checked on its own, applied on top of the
    /// configuration in --config (as `meshctl apply` would), and only what it adds is
    /// reported. Exit status: 0 without errors (warnings allowed), 1 with errors, 2 on
    /// usage or I/O errors.
    Validate(ValidateArgs),
}

#[derive(clap::Args)]
struct ValidateArgs {
    /// Files or directories (`*.yaml`, `*.yml`, recursively).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// A configuration (file or directory) the PATHs are applied to; may be repeated.
    #[arg(long = "config", value_name = "DIR")]
    config: Vec<PathBuf>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Human)]
    output: Output,
    /// Colour the human output.
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    /// Like rustc: source line and caret.
    Human,
    /// A JSON array of diagnostics.
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Color {
    /// When standard output is a terminal and NO_COLOR is unset.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate(args) => match validate(&args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("meshctl: {e}");
                ExitCode::from(EXIT_USAGE)
            }
        },
    }
}

fn validate(args: &ValidateArgs) -> Result<ExitCode, LoadError> {
    let diagnostics = if args.config.is_empty() {
        ConfigSet::load(&args.paths)?.check().diagnostics
    } else {
        validate_overlays(args)?
    };
    let (errors, warnings, infos) = counts(&diagnostics);
    match args.output {
        Output::Json => println!("{}", render_json(&diagnostics)),
        Output::Human => {
            let color = match args.color {
                Color::Always => true,
                Color::Never => false,
                Color::Auto => {
                    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
                }
            };
            print!("{}", render(&diagnostics, RenderOptions { color }));
            if errors + warnings + infos == 0 {
                println!("configuration is valid");
            } else {
                println!("{errors} error(s), {warnings} warning(s), {infos} info(s)");
            }
        }
    }
    Ok(if errors > 0 {
        ExitCode::from(EXIT_ERRORS)
    } else {
        ExitCode::SUCCESS
    })
}

/// Checks each file under the paths on top of the --config base, reporting what it adds.
fn validate_overlays(args: &ValidateArgs) -> Result<Vec<Diagnostic>, LoadError> {
    let base = ConfigSet::load(&args.config)?;
    let base_diags = base.check().diagnostics;
    let mut seen: HashSet<String> = base_diags.iter().map(key).collect();
    let mut out = base_diags;
    for path in &args.paths {
        for file in mesh_config::load::yaml_files(path)? {
            let mut set = base.clone();
            set.apply(ConfigSet::load(&[&file])?);
            for d in set.check().diagnostics {
                if seen.insert(key(&d)) {
                    out.push(d);
                }
            }
        }
    }
    Ok(out)
}

/// What makes two diagnostics the same report.
fn key(d: &Diagnostic) -> String {
    format!(
        "{}|{}|{:?}|{:?}|{}",
        d.code,
        d.file().unwrap_or(""),
        d.line(),
        d.column(),
        d.message
    )
}
