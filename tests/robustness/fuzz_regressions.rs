//! The fuzz targets' inputs replayed on the stable build: every seed (`fuzz/seeds/{target}/`) and
//! every input a fuzzing run found a problem with (`fuzz/regressions/{target}/`, kept once fixed),
//! through the very functions the targets call (`fuzz/fuzz_targets/support.rs`). The seeds are
//! also checked to be valid inputs, so the harness cannot pass by reading nothing.
#[path = "../../fuzz/fuzz_targets/support.rs"]
mod support;

use std::path::{Path, PathBuf};

fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut files: Vec<_> =
        entries.map(|e| e.unwrap().path()).filter(|p| p.is_file() && !p.ends_with("README.md")).collect();
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

/// Replays seeds and regressions of `target` through `run`; returns the seeds.
fn replay(target: &str, run: fn(&[u8])) -> Vec<(PathBuf, Vec<u8>)> {
    let seeds = inputs("seeds", target);
    assert!(!seeds.is_empty(), "no seeds for {target}: run scripts/fuzz_seeds.py");
    for (path, data) in seeds.iter().chain(&inputs("regressions", target)) {
        eprintln!("{target}: {}", path.display());
        // On a thread, so that an input that hangs fails the test instead of stalling it.
        let (done, finished) = std::sync::mpsc::channel();
        let data = data.clone();
        let worker = std::thread::spawn(move || {
            run(&data);
            let _ = done.send(());
        });
        match finished.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(()) => worker.join().unwrap(),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let panic = worker.join().unwrap_err();
                std::panic::resume_unwind(panic)
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{}: no answer within 60 s", path.display()),
        }
    }
    seeds
}

#[test]
fn archive() {
    for (path, data) in replay("archive", support::ingest) {
        let files = petal::dataset::archive::read_archive(std::io::Cursor::new(&data), &Default::default());
        assert_eq!(files.unwrap_or_else(|e| panic!("{}: {e}", path.display())).len(), 6, "{}", path.display());
    }
}

#[test]
fn image() {
    for (path, data) in replay("image", support::image) {
        let decoded = petal::vision::decode(&data, &Default::default());
        if path.file_name().unwrap().to_string_lossy().starts_with("refused-") {
            let code = decoded.err().unwrap_or_else(|| panic!("{} decoded", path.display())).code;
            assert_eq!(code, petal::error::ErrorCode::UnsupportedMediaType, "{}", path.display());
            continue;
        }
        let img = decoded.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if path.file_name().unwrap().to_string_lossy().starts_with("large") {
            // The seeds that take the target's shrunk-while-decoded path: 136 px, halved to 68.
            assert_eq!(img.dimensions(), (136, 136), "{}", path.display());
            let shrunk = petal::vision::decode_reduced(&data, &Default::default(), 64).unwrap();
            assert_eq!(shrunk.dimensions(), (68, 68), "{}", path.display());
            continue;
        }
        assert_eq!(img.dimensions(), (16, 16), "{}", path.display());
    }
}

#[test]
fn request() {
    for (path, data) in replay("request", support::request) {
        let name = path.file_name().unwrap().to_string_lossy();
        if name == "spec.json" {
            petal::api::jobs::parse_spec(&data[1..]).unwrap();
        } else if name == "classify.json" {
            assert_eq!(petal::api::classify::from_json(&data[1..]).unwrap().len(), 2);
        }
    }
    // A /finetune body cut inside its closing boundary: refused, not waited on forever.
    let hangs: Vec<_> = inputs("regressions", "request")
        .into_iter()
        .filter(|(p, _)| p.file_name().unwrap().to_string_lossy().starts_with("hang-multipart"))
        .collect();
    assert!(!hangs.is_empty());
    for (path, data) in hangs {
        let refused = support::finetune_form(&data[1..]).err();
        let code = refused.unwrap_or_else(|| panic!("{} was accepted", path.display())).code;
        assert_eq!(code, petal::error::ErrorCode::InvalidRequest, "{}", path.display());
    }
}

#[test]
fn weights() {
    for (path, data) in replay("weights", support::weights) {
        let tensors = petal::train::weights::read_bytes(&data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(tensors.iter().any(|(n, _)| n == "features.0.weight"), "{}", path.display());
    }
}

#[test]
fn manifest() {
    for (path, data) in replay("manifest", support::manifest) {
        let name = path.file_name().unwrap().to_string_lossy();
        match name.as_ref() {
            "version.json" => drop(serde_json::from_slice::<petal::registry::manifest::Manifest>(&data[1..]).unwrap()),
            "job.json" => drop(serde_json::from_slice::<petal::jobs::Job>(&data[1..]).unwrap()),
            _ => assert!(petal::dataset::mat::parse(&data[1..], 1 << 20).unwrap().contains_key("labels")),
        }
    }
}
