//! `spillway config`: print the commented default configuration, or check a file and print
//! the settings it resolves to (environment included), with warnings about what would stop
//! `spillway serve` although the settings are valid (a missing model file).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::config::{Config, DEFAULT_CONFIG};

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Print the default configuration file, every setting commented.
    #[arg(long, conflicts_with = "check")]
    print_default: bool,
    /// Validate this file (plus SPILLWAY_* variables) and print the resulting settings.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
}

pub(crate) fn run(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    if args.print_default {
        print!("{DEFAULT_CONFIG}");
        return Ok(ExitCode::SUCCESS);
    }
    let config = Config::load(args.check.as_deref(), std::env::vars())?;
    let v = config.resolve()?;
    let mut shown = v.config.clone();
    if !shown.mqtt.password.is_empty() {
        shown.mqtt.password = "(set)".into();
    }
    print!("{}", toml::to_string(&shown)?);
    println!(
        "\n# resolved: device = {:?}, client id = {:?}, request topic = {:?}, board = {}",
        v.device, v.client_id, v.topics.request, v.board.profile.name
    );
    let warnings = v.warnings();
    for w in &warnings {
        println!("# warning: {w}");
        eprintln!("warning: {w}");
    }
    if warnings.is_empty() {
        println!("# OK");
    } else {
        println!(
            "# valid, with {} warning{}",
            warnings.len(),
            if warnings.len() == 1 { "" } else { "s" }
        );
    }
    Ok(ExitCode::SUCCESS)
}
