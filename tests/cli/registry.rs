//! `petal registry …` on the command line, against the local filesystem and s3s-fs.
use crate::common;

use std::path::Path;

fn run(cmd: &mut std::process::Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn cli_roundtrip(registry: impl Fn() -> std::process::Command, files: &Path) {
    std::fs::write(files.join("model.onnx"), b"not really onnx").unwrap();
    std::fs::write(files.join("notes.md"), b"# notes").unwrap();
    let provenance = files.join("provenance.json");
    std::fs::write(
        &provenance,
        serde_json::to_vec(&serde_json::json!({
            "code": {"petal_version": "0.1.0"},
            "metrics": {"best": {"val_top1": 0.9}, "per_epoch": []},
            "dataset": {"digest": "sha256:1", "name": "demo", "class_names": ["a", "b"], "counts": {"train": 4},
                        "terms": "research only", "licences": []}
        }))
        .unwrap(),
    )
    .unwrap();

    for _ in 0..2 {
        let (ok, out, err) = run(registry()
            .args(["publish", "demo"])
            .arg(files.join("model.onnx"))
            .arg(files.join("notes.md"))
            .arg("--provenance")
            .arg(&provenance));
        assert!(ok, "{out}{err}");
    }
    let (ok, out, _) = run(registry().arg("ls"));
    assert!(ok && out.lines().any(|l| l.starts_with("demo") && l.contains(" 2 ")), "{out}");
    let (ok, out, err) =
        run(registry().args(["promote", "demo", "1", "--alias", "production", "--by", "tester", "--reason", "first"]));
    assert!(ok && out.contains("demo@production → version 1 (seq 1, was unset)"), "{out}{err}");
    let (ok, out, err) = run(registry().args(["promote", "demo", "2", "--alias", "production", "--if-match", "0"]));
    assert!(!ok && err.contains("[alias_precondition_failed]"), "{out}{err}");
    let (ok, out, _) = run(registry().args(["promote", "demo", "2", "--alias", "production", "--if-match", "1"]));
    assert!(ok && out.contains("(seq 2, was 1)"), "{out}");
    let (ok, out, _) = run(registry().args(["history", "demo", "production"]));
    let h: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ok);
    assert_eq!(h.as_array().unwrap().len(), 2);
    assert_eq!(h[0]["by"], "tester");
    assert_eq!(h[0]["reason"], "first");
    let (ok, out, _) = run(registry().args(["ls", "demo"]));
    assert!(ok && out.lines().any(|l| l.trim_start().starts_with('2') && l.contains("production")), "{out}");
    let (ok, out, _) = run(registry().args(["show", "demo@production"]));
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ok);
    assert_eq!(m["version"], 2);
    assert_eq!(m["artifacts"].as_array().unwrap().len(), 2);
    let (ok, out, _) = run(registry().args(["show", "demo:1", "--card"]));
    assert!(ok && out.starts_with("# demo — version 1") && out.contains("research only"), "{out}");
    let (ok, out, _) = run(registry().arg("verify"));
    assert!(ok && out.contains("2 versions verified"), "{out}");
    let (ok, out, err) = run(registry().args(["show", "nope"]));
    assert!(!ok && err.contains("[not_found]"), "{out}{err}");
    let (ok, _, err) = run(registry().args(["show", "Bad/Name"]));
    assert!(!ok && err.contains("[invalid_name]"), "{err}");
    let (ok, out, _) = run(registry().args(["gc", "--grace-s", "0"]));
    assert!(ok && out.contains("0 orphaned objects"), "{out}");
}

#[test]
fn registry_cli_on_the_local_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let reg = dir.path().join("reg");
    let files = tempfile::tempdir().unwrap();
    cli_roundtrip(
        || {
            let mut c = common::petal();
            c.args(["registry", "--registry"]).arg(&reg);
            c
        },
        files.path(),
    );
    // Tamper with a stored artifact: verify fails and names it.
    let uploads = reg.join("models/demo/uploads");
    let upload = std::fs::read_dir(&uploads).unwrap().next().unwrap().unwrap().path();
    std::fs::write(upload.join("model.onnx"), b"not really onnX").unwrap();
    let (ok, _, err) = run(common::petal().args(["registry", "--registry"]).arg(&reg).arg("verify"));
    assert!(!ok && err.contains("[integrity_error]") && err.contains("model.onnx"), "{err}");
}

#[test]
fn registry_cli_on_s3() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = common::S3Server::start(dir.path());
    let files = tempfile::tempdir().unwrap();
    cli_roundtrip(
        || {
            let mut c = common::petal();
            c.arg("registry").envs(s3.env("cli"));
            c
        },
        files.path(),
    );
    assert!(dir.path().join("petal/cli/models/demo/versions/00000001.json").exists());
}
