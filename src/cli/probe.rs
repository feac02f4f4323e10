//! `petal probe`: a container health check without curl.
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ProbeArgs {
    #[arg(default_value = "http://127.0.0.1:8080/healthz")]
    url: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
}

/// 0 when the URL answers 2xx within the timeout.
pub(super) fn run(args: &ProbeArgs) -> ExitCode {
    let url = &args.url;
    let client =
        match reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(args.timeout)).build() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("petal probe: {e}");
                return ExitCode::FAILURE;
            }
        };
    match client.get(url).send() {
        Ok(r) if r.status().is_success() => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("petal probe: {url} answered {}", r.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("petal probe: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}
