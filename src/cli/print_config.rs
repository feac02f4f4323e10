//! `petal config`: the effective configuration, after every layer.
use std::process::ExitCode;

use crate::config::Config;

pub(super) fn run(config: &Config) -> ExitCode {
    super::invocation::print_json(config);
    ExitCode::SUCCESS
}
