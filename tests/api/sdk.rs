//! Clients generated from the committed OpenAPI documents, unchanged, drive the whole story against a
//! live server with tokens: Python (openapi-python-client), TypeScript (openapi-generator
//! `typescript-fetch`, compiled with `tsc --strict`, run on Node) and Rust (openapi-generator
//! `rust`, built as the small crate in tests/sdk/rust).
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{self, shapes_spec, shapes_zip, Server};

const TOKEN: &str = "sdk-token-0123456789abcdef";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn spec_31() -> PathBuf {
    root().join("openapi/openapi.json")
}

fn spec_30() -> PathBuf {
    root().join("openapi/openapi-3.0.json")
}

/// A server whose only token is `TOKEN` (admin), and the story's inputs: the dataset archive, the
/// spec, a held-out image and its class.
struct Story {
    server: Server,
    args: Vec<String>,
}

fn story(dir: &Path, model: &str) -> Story {
    let config = dir.join("petal.toml");
    std::fs::write(&config, format!("[[auth.tokens]]\nname = \"sdk\"\ntoken = \"{TOKEN}\"\nscopes = [\"admin\"]\n"))
        .unwrap();
    let server = crate::start(dir, &dir.join("registry"), &[("PETAL_CONFIG", config.to_str().unwrap())]);
    let zip = shapes_zip(dir);
    let held_out = dir.join("held-out.png");
    std::fs::write(&held_out, crate::png(1, 77)).unwrap();
    let args = vec![
        server.base.clone(),
        TOKEN.to_string(),
        zip.to_str().unwrap().to_string(),
        shapes_spec(model, 5).to_string(),
        held_out.to_str().unwrap().to_string(),
        "square".to_string(),
    ];
    Story { server, args }
}

fn succeeded(what: &str, out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// openapi-generator (PyPI `openapi-generator-cli`, the jar run by Java) with `generator` on `spec`.
fn openapi_generator(generator: &str, spec: &Path, out: &Path, properties: &str) {
    let cli = common::python().parent().unwrap().join("openapi-generator-cli");
    let run = Command::new(cli)
        .args(["generate", "--generator-name", generator, "--input-spec"])
        .arg(spec)
        .arg("--output")
        .arg(out)
        .arg(format!("--additional-properties={properties}"))
        .output()
        .unwrap();
    let log = succeeded(&format!("openapi-generator {generator} on {}", spec.display()), run);
    // Every operation is generated: none is skipped for a construct the generator cannot express.
    assert!(!log.contains("ERROR"), "{log}");
}

/// The committed OpenAPI documents (3.1 and 3.0.3) are valid, and a Python SDK generated from it by
/// openapi-python-client drives the whole story against a server with tokens.
#[test]
fn a_generated_python_sdk_drives_the_whole_story() {
    let dir = tempfile::tempdir().unwrap();
    // The 3.1 document and its 3.0.3 rendering both validate.
    let check = Command::new(common::python())
        .args([
            "-c",
            "import json,sys; from openapi_spec_validator import validate\n\
             for f in sys.argv[1:]: validate(json.load(open(f)))",
        ])
        .arg(spec_31())
        .arg(spec_30())
        .output()
        .unwrap();
    succeeded("openapi-spec-validator", check);
    let sdk = dir.path().join("sdk");
    let hooks = dir.path().join("generator.yaml");
    std::fs::write(&hooks, "post_hooks: []\n").unwrap();
    let generator = common::python().parent().unwrap().join("openapi-python-client");
    let out = Command::new(generator)
        .args(["generate", "--meta", "none", "--path"])
        .arg(spec_31())
        .arg("--config")
        .arg(&hooks)
        .arg("--output-path")
        .arg(sdk.join("petal_client"))
        .output()
        .unwrap();
    let generated = succeeded("openapi-python-client", out);
    assert!(!generated.contains("will not be generated"), "an endpoint was skipped:\n{generated}");

    let story = story(dir.path(), "sdk-shapes");
    let out = Command::new(common::python())
        .arg(root().join("tests/oracles/sdk_story.py"))
        .args(&story.args)
        .env("PYTHONPATH", &sdk)
        .output()
        .unwrap();
    eprintln!("{}", succeeded("the Python SDK story", out));
    drop(story.server);
}

/// A TypeScript client from openapi-generator `typescript-fetch` compiles with `tsc --strict` from
/// both documents, and the one from the 3.1 document drives the whole story on Node.
#[test]
fn a_generated_typescript_client_compiles_strictly_and_drives_the_whole_story() {
    let dir = tempfile::tempdir().unwrap();
    let node_modules = common::tools().join("node/node_modules");
    let tsc = node_modules.join(".bin/tsc");
    assert!(tsc.exists(), "no TypeScript compiler at {}: run `make test` (scripts/setup.sh)", tsc.display());
    let project = |name: &str, spec: &Path| {
        let project = dir.path().join(name);
        std::fs::create_dir_all(&project).unwrap();
        openapi_generator("typescript-fetch", spec, &project.join("client"), "supportsES6=true");
        for file in ["story.ts", "tsconfig.json"] {
            std::fs::copy(root().join("tests/sdk/typescript").join(file), project.join(file)).unwrap();
        }
        std::os::unix::fs::symlink(&node_modules, project.join("node_modules")).unwrap();
        let compiled = Command::new(&tsc).current_dir(&project).args(["--strict", "-p", "tsconfig.json"]).output();
        succeeded(&format!("tsc --strict on the client from {}", spec.display()), compiled.unwrap());
        project
    };
    project("from-3.0", &spec_30());
    let project = project("from-3.1", &spec_31());

    let story = story(dir.path(), "ts-shapes");
    let out = Command::new("node").arg(project.join("out/story.js")).args(&story.args).output().unwrap();
    eprintln!("{}", succeeded("the TypeScript story", out));
}

/// A Rust client from openapi-generator `rust` (the 3.0.3 rendering) builds as a dependency of the
/// crate in tests/sdk/rust, which drives the whole story.
#[test]
fn a_generated_rust_client_builds_and_drives_the_whole_story() {
    let dir = tempfile::tempdir().unwrap();
    // Where tests/sdk/rust/Cargo.toml finds it; its build has a target folder of its own, so that
    // it never waits on the lock of the build running these tests.
    let client = root().join("target/sdk/rust-client");
    let _ = std::fs::remove_dir_all(&client);
    openapi_generator("rust", &spec_30(), &client, "packageName=petal-client");
    let manifest = root().join("tests/sdk/rust/Cargo.toml");
    let build = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--locked", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(root().join("target/sdk/target"))
        .output()
        .unwrap();
    succeeded("building the generated Rust client and its story", build);

    let story = story(dir.path(), "rust-shapes");
    let out = Command::new(root().join("target/sdk/target/debug/petal-sdk-story")).args(&story.args).output().unwrap();
    eprintln!("{}", succeeded("the Rust story", out));
}
