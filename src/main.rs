//! The `gracegate` binary: parse the command line, set up logging, run a subcommand.

use std::process::ExitCode;

use clap::Parser;
use gracegate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    gracegate::telemetry::init(cli.log_format);
    let outcome = match cli.command {
        Command::Serve(args) => gracegate::server::run(args),
        Command::Mutate(args) => gracegate::manifests::run(&args),
        Command::Certs(args) => gracegate::certs::run(&args),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("gracegate: {error:#}");
            ExitCode::FAILURE
        }
    }
}
