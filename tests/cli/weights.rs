//! `petal weights`: the catalog, import and fetch with checksum verification, and nothing stored
//! when a check fails.
use crate::common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::real_mobilenet;

fn weights(cache: &Path, args: &[&str]) -> std::process::Output {
    common::petal().args(["weights", "--cache"]).arg(cache).args(args).output().unwrap()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn list_shows_the_catalog_with_licences() {
    let cache = tempfile::tempdir().unwrap();
    let out = weights(cache.path(), &["list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for w in
        ["ResNet50_Weights.IMAGENET1K_V2", "VGG16_BN_Weights.IMAGENET1K_V1", "EfficientNet_B0_Weights.IMAGENET1K_V1"]
    {
        assert!(text.contains(w), "{text}");
    }
    assert!(text.contains("non-commercial"), "{text}");
    let out = weights(cache.path(), &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["catalog"]["weights"].as_array().unwrap().len(), 13);
}

#[test]
fn import_verifies_known_files_and_refuses_tampered_ones() {
    let cache = tempfile::tempdir().unwrap();
    let out = weights(cache.path(), &["import", real_mobilenet().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("MobileNet_V2_Weights.IMAGENET1K_V1") && text.contains("(Sha256)"), "{text}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.path().join("mobilenet_v2-b0353104.pth.json")).unwrap()).unwrap();
    assert_eq!(record["sha256"], "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889");
    assert_eq!(record["arch"], "mobilenet_v2");
    assert_eq!(record["licences"][1]["commercial_use"], false);

    // One byte changed in a tensor's data, same name: the checksum refuses it, nothing is stored.
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(real_mobilenet()).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x40;
    let tampered = dir.path().join("mobilenet_v2-b0353104.pth");
    std::fs::write(&tampered, &bytes).unwrap();
    let empty = tempfile::tempdir().unwrap();
    let out = weights(empty.path(), &["import", tampered.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[weights_checksum]") && err.contains("b03531047ffacf1e"), "{err}");
    assert!(files_in(empty.path()).is_empty(), "{:?}", files_in(empty.path()));
}

#[test]
fn import_of_an_unknown_file_checks_it_against_the_architecture() {
    let dir = tempfile::tempdir().unwrap();
    common::oracle("torchvision_parity.py", &["resnet18", dir.path().to_str().unwrap(), "32"]);
    let file = dir.path().join("resnet18.pth");
    let cache = tempfile::tempdir().unwrap();

    let out = weights(cache.path(), &["import", file.to_str().unwrap(), "--arch", "vgg16"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[weights_mismatch]") && err.contains("missing keys"), "{err}");
    assert!(files_in(cache.path()).is_empty());

    let out = weights(cache.path(), &["import", file.to_str().unwrap(), "--arch", "resnet18"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(Unknown)") && text.contains("not in the catalog"), "{text}");
    assert_eq!(files_in(cache.path()), vec!["resnet18.pth", "resnet18.pth.json"]);

    // `--arch` is typed: an unknown architecture is a usage error, named with the known ones.
    let out = weights(cache.path(), &["import", file.to_str().unwrap(), "--arch", "resnet9"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("unknown backbone \"resnet9\"") && err.contains("mobilenet_v2"), "{err}");
}

/// A real HTTP server on loopback serving a folder.
struct Mirror {
    child: Child,
    url: String,
}

impl Mirror {
    fn serve(dir: &Path) -> Mirror {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(common::python())
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mirror did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Mirror { child, url: format!("http://127.0.0.1:{port}") }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn fetch_downloads_verifies_and_caches() {
    let served = tempfile::tempdir().unwrap();
    std::fs::copy(real_mobilenet(), served.path().join("mobilenet_v2-b0353104.pth")).unwrap();
    let mirror = Mirror::serve(served.path());
    let cache = tempfile::tempdir().unwrap();

    let out = weights(cache.path(), &["fetch", "mobilenet_v2", "--weights", "IMAGENET1K_V1", "--mirror", &mirror.url]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(Sha256)") && text.contains(&mirror.url), "{text}");
    assert_eq!(
        std::fs::read(cache.path().join("mobilenet_v2-b0353104.pth")).unwrap(),
        std::fs::read(real_mobilenet()).unwrap()
    );

    // The mirror now serves different bytes under the same name: refused, nothing stored.
    let mut bytes = std::fs::read(real_mobilenet()).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(served.path().join("mobilenet_v2-b0353104.pth"), bytes).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let out = weights(fresh.path(), &["fetch", "mobilenet_v2", "--weights", "IMAGENET1K_V1", "--mirror", &mirror.url]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[weights_checksum]"));
    assert!(files_in(fresh.path()).is_empty());

    // A file the mirror lacks is a download error naming the URL.
    let out = weights(fresh.path(), &["fetch", "resnet18", "--mirror", &mirror.url]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[download_failed]") && err.contains("resnet18-f37072fd.pth"), "{err}");
}
