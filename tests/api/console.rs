//! The web console at `/`: served from the binary with its security headers and versioned assets,
//! and driven end to end in a real browser (Debian's chromium through Playwright,
//! tests/console/story.py): classify a flower photo, check and train a generated dataset and watch
//! the job succeed with its curves drawn, read the version, promote and move an alias, see a bad
//! archive's error codes, cancel a job, give a token and acknowledge licence terms — with axe-core's WCAG checks on every page and a phone's
//! viewport. The screenshots land in `target/console-screenshots/`.
use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::blocking::Client;

use crate::common::{self, shapes_zip, weights_cache, Server};

const TOKEN: &str = "console-token-0123456789abcdef";

/// A server on the embedded default (the bundled flowers102 served), with the MobileNetV2 weights
/// for training and `extra` settings.
fn bundled_server(dir: &Path, extra: &[(&str, &str)]) -> Server {
    std::fs::create_dir_all(dir).unwrap();
    let cache = weights_cache(dir);
    let work = dir.join("work");
    let extra: Vec<(String, String)> = extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let server = Server::start_with(move |cmd| {
        Server::bundled(cmd);
        cmd.env("PETAL__WEIGHTS__CACHE", &cache).env("PETAL__JOBS__WORK_DIR", &work).envs(extra);
    });
    server.wait_ready(200);
    server
}

fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("console-screenshots")
}

#[test]
fn the_console_page_and_assets_are_served_with_their_headers() {
    let server = Server::start();
    let client = Client::new();
    let page = client.get(server.url("/")).send().unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert_eq!(headers["cache-control"], "no-cache");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let etag = headers["etag"].to_str().unwrap().to_string();
    let html = page.text().unwrap();
    let again = client.get(server.url("/")).header("if-none-match", &etag).send().unwrap();
    assert_eq!(again.status(), 304);

    // Every asset the page links, by its versioned URL: cached for a year, 304 on its ETag; the
    // same name without (or with a stale) version must be revalidated.
    let links: Vec<&str> =
        html.match_indices("/console/").map(|(i, _)| &html[i..]).map(|s| &s[..s.find('"').unwrap()]).collect();
    assert!(links.len() >= 3, "{html}");
    for link in links {
        let r = client.get(server.url(link)).send().unwrap();
        assert_eq!(r.status(), 200, "{link}");
        assert_eq!(r.headers()["cache-control"], "public, max-age=31536000, immutable", "{link}");
        let etag = r.headers()["etag"].to_str().unwrap().to_string();
        assert!(link.ends_with(&format!("v={}", etag.trim_matches('"'))), "{link} {etag}");
        let bare = link.split('?').next().unwrap();
        let r = client.get(server.url(bare)).send().unwrap();
        assert_eq!((r.status().as_u16(), r.headers()["cache-control"].to_str().unwrap()), (200, "no-cache"), "{bare}");
        let stale = client.get(server.url(&format!("{bare}?v=0000000000000000"))).send().unwrap();
        assert_eq!(stale.headers()["cache-control"], "no-cache", "{bare}");
        assert_eq!(client.get(server.url(bare)).header("if-none-match", &etag).send().unwrap().status(), 304);
    }
    for name in ["nope.js", "..%2Fapp.js", "app.js%00", "index.html"] {
        let missing = client.get(server.url(&format!("/console/{name}"))).send().unwrap();
        assert_eq!(missing.status(), 404, "{name}");
        let v: serde_json::Value = missing.json().unwrap();
        assert_eq!(v["error"]["code"], "route_not_found", "{name}");
    }
    let long = client.get(server.url(&format!("/console/app.js?v={}", "f".repeat(4000)))).send().unwrap();
    assert_eq!((long.status().as_u16(), long.headers()["cache-control"].to_str().unwrap()), (200, "no-cache"));

    // The page and its files need no token; the API behind them still does.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("petal.toml");
    std::fs::write(&config, format!("[[auth.tokens]]\nname = \"c\"\ntoken = \"{TOKEN}\"\nscopes = [\"classify\"]\n"))
        .unwrap();
    let guarded = Server::start_with(|cmd| {
        cmd.env("PETAL_CONFIG", &config);
    });
    guarded.wait_ready(200);
    assert_eq!(client.get(guarded.url("/")).send().unwrap().status(), 200);
    assert_eq!(client.get(guarded.url("/console/app.js")).send().unwrap().status(), 200);
    assert_eq!(client.get(guarded.url("/models")).send().unwrap().status(), 401);
}

#[test]
fn the_console_classifies_trains_promotes_and_shows_errors_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let open_dir = dir.path().join("open");
    let server = bundled_server(&open_dir, &[]);
    let guarded_dir = dir.path().join("guarded");
    std::fs::create_dir_all(&guarded_dir).unwrap();
    let config = guarded_dir.join("petal.toml");
    std::fs::write(
        &config,
        format!("[[auth.tokens]]\nname = \"console\"\ntoken = \"{TOKEN}\"\nscopes = [\"admin\"]\n"),
    )
    .unwrap();
    let guarded = bundled_server(
        &guarded_dir,
        &[("PETAL_CONFIG", config.to_str().unwrap()), ("PETAL__REGISTRY__USAGE", "commercial")],
    );

    // The datasets: the shapes (three classes), an archive that is not one, one class alone.
    let zip = shapes_zip(dir.path());
    let bad = dir.path().join("bad.zip");
    std::fs::write(&bad, b"PK\x03\x04 this is not a zip archive at all").unwrap();
    let one = dir.path().join("one");
    common::shapes_dataset(&one, 6, 72, 5);
    std::fs::remove_dir_all(one.join("square")).unwrap();
    std::fs::remove_dir_all(one.join("bar")).unwrap();
    let one_zip = dir.path().join("one-class.zip");
    common::zip_dir(&one, "one", &one_zip);
    // The form's knobs plus the small-image recipe of the other job tests (64-px crops).
    let spec = common::shapes_spec("shapes", 3);
    let (epochs1, epochs2) = (3, 1);
    let recipe = serde_json::json!({"recipe": spec["recipe"], "epochs1": epochs1, "epochs2": epochs2});

    let out = screenshots();
    let run = Command::new(common::python())
        .arg(root.join("tests/console/story.py"))
        .args(["--base", &server.base, "--token-base", &guarded.base, "--token", TOKEN])
        .arg("--out")
        .arg(&out)
        .arg("--flower")
        .arg(root.join("tests/fixtures/flowers102/sunflower/image_05400.jpg"))
        .args(["--flower-class", "sunflower"])
        .arg("--dataset")
        .arg(&zip)
        .args(["--recipe", &recipe.to_string(), "--epochs", &(epochs1 + epochs2).to_string()])
        .arg("--bad")
        .arg(&bad)
        .arg("--one-class")
        .arg(&one_zip)
        .arg("--axe")
        .arg(common::tools().join("node/node_modules/axe-core/axe.min.js"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "the browser story failed:\n{stdout}\n{stderr}\n--- server log ---\n{}",
        server.log_text().lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
    assert!(stdout.contains("every check passed"), "{stdout}");
    for shot in [
        "1-try",
        "2-train-bad-archive",
        "3-train-checked",
        "4-job-succeeded",
        "5-version",
        "6-models",
        "7-phone-try",
        "8-token",
    ] {
        let path = out.join(format!("{shot}.png"));
        let img = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(img.width() >= 390 && img.height() >= 300, "{shot}");
    }
}
