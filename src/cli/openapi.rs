//! `petal openapi`: writes the OpenAPI document the server publishes.
use std::path::PathBuf;
use std::process::ExitCode;

use utoipa::OpenApi;

#[derive(clap::Args)]
pub struct OpenapiArgs {
    /// Output file; `-` for standard output.
    #[arg(long, default_value = "openapi/openapi.json")]
    out: PathBuf,
}

pub(super) fn run(args: &OpenapiArgs) -> ExitCode {
    let out = &args.out;
    let spec = crate::api::ApiDoc::openapi().to_pretty_json().expect("spec serializes") + "\n";
    let written = if out.as_os_str() == "-" {
        print!("{spec}");
        Ok(())
    } else {
        out.parent().map(std::fs::create_dir_all).transpose().and_then(|_| std::fs::write(out, spec))
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("petal: cannot write {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}
