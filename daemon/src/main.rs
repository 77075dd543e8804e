//! The `spillway` binary: parse the command line, set up logging, run one subcommand.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = spillway::cli::Cli::parse();
    spillway::cli::init_logging(cli.verbose);
    match spillway::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // One line, the whole cause chain: journald and terminals both read it well.
            eprintln!("spillway: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
