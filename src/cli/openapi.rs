//! `petal openapi`: writes the OpenAPI document the server publishes (3.1), and its 3.0.3
//! rendering beside it for generators that lack 3.1.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct OpenapiArgs {
    /// Output file; `-` for standard output.
    #[arg(long, default_value = "openapi/openapi.json")]
    out: PathBuf,
    /// The OpenAPI 3.0.3 rendering (not written when `--out` is `-`).
    #[arg(long, default_value = "openapi/openapi-3.0.json")]
    out_30: PathBuf,
}

/// The document, as `petal openapi` writes it and the server serves it.
pub fn document() -> String {
    serde_json::to_string_pretty(&crate::api::document()).expect("spec serializes") + "\n"
}

/// Its OpenAPI 3.0.3 rendering.
pub fn document_30() -> String {
    serde_json::to_string_pretty(&crate::api::openapi30::render(&crate::api::document())).expect("spec serializes")
        + "\n"
}

fn write(out: &Path, text: &str) -> std::io::Result<()> {
    out.parent().map(std::fs::create_dir_all).transpose().and_then(|_| std::fs::write(out, text))
}

pub(super) fn run(args: &OpenapiArgs) -> ExitCode {
    let out = &args.out;
    let written = if out.as_os_str() == "-" {
        print!("{}", document());
        Ok(())
    } else {
        write(out, &document()).and_then(|()| write(&args.out_30, &document_30()))
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("petal: cannot write {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}
