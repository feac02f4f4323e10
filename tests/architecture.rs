//! The structure of `src/`, held to what `src/lib.rs` writes: its layers, top to bottom, where a
//! module uses only modules of lower layers. Also: only the registry touches the object store.
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers of `src/lib.rs`'s documentation (`//! - name: module, module — what`), top first.
fn layers() -> Vec<(String, Vec<String>)> {
    let lib = std::fs::read_to_string("src/lib.rs").unwrap();
    let layers: Vec<(String, Vec<String>)> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//! - "))
        .map(|l| {
            let (name, rest) = l.split_once(": ").expect("`name: modules — what`");
            let modules = rest.split(" — ").next().unwrap();
            (name.to_string(), modules.split(", ").map(str::to_string).collect())
        })
        .collect();
    assert!(layers.len() > 5, "src/lib.rs lists the layers: {layers:?}");
    layers
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments (whole-line and trailing `//` comments).
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("//") {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a file names as `crate::module` (`crate::Error` and the like are the
/// error module's, re-exported at the root).
fn uses(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        if i > 0 && code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue; // `petal_crate::`, not ours
        }
        let name: String = code[i + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if name.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
            out.push("error".to_string());
        } else if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

#[test]
fn modules_use_only_lower_layers() {
    let layers = layers();
    let layer_of: BTreeMap<String, usize> =
        layers.iter().enumerate().flat_map(|(i, (_, ms))| ms.iter().map(move |m| (m.clone(), i))).collect();
    // Every module of the crate is in exactly one layer, and every listed one exists.
    let lib = std::fs::read_to_string("src/lib.rs").unwrap();
    let declared: Vec<String> =
        lib.lines().filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';').map(str::to_string)).collect();
    for m in &declared {
        assert!(layer_of.contains_key(m), "module {m} is in no layer of src/lib.rs");
    }
    assert_eq!(layer_of.len(), declared.len(), "src/lib.rs lists a layer module twice or one that does not exist");

    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix("src").unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        let code = code(file);
        if top == "lib" {
            continue;
        }
        if top == "main" {
            // The binary only parses and dispatches.
            assert!(!code.contains("crate::"), "src/main.rs");
            for (i, _) in code.match_indices("petal::") {
                assert!(code[i..].starts_with("petal::cli::"), "src/main.rs uses {}", &code[i..i + 30]);
            }
            continue;
        }
        let own = layer_of[&top];
        for used in uses(&code) {
            if used == top {
                continue;
            }
            let Some(&theirs) = layer_of.get(&used) else { panic!("{} uses crate::{used}, no module", file.display()) };
            if theirs <= own {
                wrong.push(format!(
                    "{} ({}, layer {}) uses {used} (layer {})",
                    file.display(),
                    top,
                    layers[own].0,
                    layers[theirs].0
                ));
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(wrong.is_empty(), "uses against the layer order of src/lib.rs:\n{}", wrong.join("\n"));
}

#[test]
fn only_the_registry_touches_the_object_store() {
    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    let outside: Vec<String> = files
        .iter()
        .filter(|f| !f.starts_with("src/registry"))
        .filter(|f| code(f).contains("object_store"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(outside.is_empty(), "object_store used outside src/registry/: {outside:?}");
}

#[test]
fn registry_keys_are_built_only_in_the_layout_module() {
    // A key of the layout as a format string would build it: `"jobs/{id}.json"`.
    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    let mut found = Vec::new();
    for f in files.iter().filter(|f| !f.ends_with("registry/layout.rs")) {
        let code = code(f);
        for area in ["\"models/{", "\"datasets/{", "\"jobs/{", "\"queue/{", "\"leases/{", "\".probe/{"] {
            if code.contains(area) {
                found.push(format!("{}: {area}", f.display()));
            }
        }
    }
    assert!(found.is_empty(), "registry keys built outside src/registry/layout.rs: {found:?}");
}

#[test]
fn the_documented_layout_reads_as_patterns() {
    let layout = common::documented_layout();
    assert!(layout.iter().any(|p| p == "jobs/{job}.json"), "{layout:?}");
    assert!(layout.iter().any(|p| p == "leases/{job}/{attempt:06}.claim.json"), "{layout:?}");
    assert!(common::key_fits("jobs/{job}.json", "jobs/0b6f3c1e-8d7a-4c1b-9e51-3f1f0c2a9d10.json"));
    assert!(common::key_fits("leases/{job}/{attempt:06}.claim.json", "leases/j/000001.claim.json"));
    assert!(!common::key_fits("leases/{job}/{attempt:06}.claim.json", "leases/j/000001.beat.json"));
    assert!(!common::key_fits("jobs/{job}.json", "jobs/x/y.json"));
    assert!(!common::key_fits("queue/{job}", "queue/"));
    assert!(common::key_fits("models/{model}/uploads/{upload_id}/{file}", "models/m/uploads/u/model.onnx"));
}
