//! What the subcommands share: how a result becomes an exit code, JSON output, a runtime for the
//! async commands, the command line a record keeps, and who acts by default.
use std::process::ExitCode;

use crate::error::{Error, Result};

/// Success, or the error on standard error with its stable code, and exit code 1.
pub(super) fn report(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("petal: {} [{}]", e.message, e.code.as_str());
            ExitCode::FAILURE
        }
    }
}

pub(super) fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializes"));
}

/// Runs a future to completion on a fresh tokio runtime (the CLI's async commands).
pub(super) fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Runtime::new().map_err(|e| Error::internal(format!("starting a runtime: {e}")))?.block_on(f)
}

/// This process's command line as a shell would take it back (`petal` for the binary's path):
/// what provenance records keep as the command that reproduces a result.
pub fn recorded_command() -> String {
    let quote = |a: String| {
        if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_=./:,@+%".contains(c)) {
            a
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    std::iter::once("petal".to_string()).chain(std::env::args().skip(1).map(quote)).collect::<Vec<_>>().join(" ")
}

/// Who acts when `--by` is not given: `$USER`, else `petal`.
pub fn default_actor(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok()).filter(|u| !u.is_empty()).unwrap_or_else(|| "petal".into())
}
