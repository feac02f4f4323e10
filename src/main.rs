//! The `petal` command line: parses the arguments and hands them to `petal::cli`, where each
//! subcommand has its own file.
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    petal::cli::Cli::parse().run()
}
