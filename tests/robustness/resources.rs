//! Resource safety (issue 18): no input, however small, exhausts petal's memory, CPU, disk or
//! audit trail. One test per class of problem, through the real server (and a real job for the
//! training side); each case prints its answer, time and the server's peak RSS rise (the
//! `common::hostile` harness), and the last test runs a mixed hostile workload against a server
//! held to the API pod's memory limit.
use crate::common;

use std::io::Write;
use std::time::{Duration, Instant};

use crate::common::hostile::{message, png_of, shapes_files, zip_of, Hostile, MIB};
use crate::common::{submit, wait_for};
use reqwest::blocking::{multipart, Client};
use serde_json::{json, Value};

/// A request checked outside `Hostile::case` (where something is rightly staged, stored or
/// running meanwhile): prints its row and asserts its status and error code; its body and whether
/// it said Retry-After.
fn answered(name: &str, want: (u16, &str), send: impl FnOnce() -> reqwest::blocking::Response) -> (Value, bool) {
    let start = Instant::now();
    let r = send();
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").is_some();
    let body: Value = r.json().unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("");
    println!("{name:<48} {status} {code:<24} {:>6} ms", start.elapsed().as_millis());
    assert_eq!((status, code), want, "{name}: {body}");
    (body, retry)
}

/// A PNG of `w`×`h` pixels: 20,000 × 1 is 138 bytes.
fn strip(w: u32, h: u32) -> Vec<u8> {
    png_of(&image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(w, h, image::Rgb([200, 40, 90]))))
}

/// A multipart body of `n` `image` parts.
fn images_form(image: &[u8], n: usize) -> multipart::Form {
    (0..n).fold(multipart::Form::new(), |f, i| {
        f.part(
            "image",
            multipart::Part::bytes(image.to_vec()).file_name(format!("{i}.png")).mime_str("image/png").unwrap(),
        )
    })
}

/// Item 1: an image of an extreme aspect ratio is refused before decoding, in serving and in a
/// dataset; with the aspect-ratio limit off, the eval resize computes only the crop it keeps (a
/// 20,000 × 1 strip resized to a shorter side of 256 would be 3.9 GB), in serving and in training.
#[test]
fn image_geometry_costs_what_its_output_costs() {
    let png = strip(20_000, 1);
    assert!(png.len() < 1000, "{} bytes", png.len());
    let h = Hostile::start();
    let a = h.case("/classify: a 20000x1 PNG", (413, "image_too_large"), |h| {
        h.post("/classify", png.clone(), Some("image/png"))
    });
    assert!(message(&a).contains("aspect ratio"), "{}", message(&a));
    assert!(a.elapsed < Duration::from_secs(5), "{:?}", a.elapsed);
    let a = h.case("/classify: 64 PNGs of 20000x1", (413, "image_too_large"), |h| {
        h.client.post(h.server.url("/classify")).multipart(images_form(&png, 64)).send().unwrap()
    });
    assert!(a.elapsed < Duration::from_secs(5), "{:?}", a.elapsed);
    let tall = strip(1, 20_000);
    h.case("/classify: a 1x20000 PNG", (413, "image_too_large"), |h| {
        h.post("/classify", tall.clone(), Some("image/png"))
    });
    let mut files = shapes_files(h.dir.path());
    files.push(("data/disc/strip.png".into(), png.clone()));
    let a = h.case("dataset: a 20000x1 PNG", (422, "dataset_invalid"), |h| h.dry_run(zip_of(&files), "d.zip"));
    assert!(message(&a).contains("disc/strip.png") && message(&a).contains("aspect ratio"), "{}", message(&a));

    // The limit off: the cost is the crop's.
    let open = Hostile::start_with_env(&[
        ("PETAL__INFERENCE__ENGINE__DECODE__MAX_ASPECT_RATIO", "0"),
        ("PETAL__JOBS__DECODE__MAX_ASPECT_RATIO", "0"),
    ]);
    let a = open.case("/classify: 20000x1, no aspect limit", (200, ""), |h| {
        h.post("/classify", png.clone(), Some("image/png"))
    });
    assert!(a.elapsed < Duration::from_secs(5), "{:?}", a.elapsed);
    let a = open.case("/classify: 64 of 20000x1, no aspect limit", (200, ""), |h| {
        h.client.post(h.server.url("/classify")).multipart(images_form(&png, 64)).send().unwrap()
    });
    assert_eq!(a.body["results"].as_array().map(Vec::len), Some(64));
    assert!(a.elapsed < Duration::from_secs(20), "{:?}", a.elapsed);
    open.case("dataset: 20000x1, no aspect limit", (200, ""), |h| h.dry_run(zip_of(&files), "d.zip"));

    // Training: the strip goes through the loader, augmentation and evaluation of a real job.
    let zip = open.dir.path().join("strip.zip");
    std::fs::write(&zip, zip_of(&files)).unwrap();
    open.server.reset_peak_memory();
    let (rss, _) = open.server.memory();
    let start = Instant::now();
    let mut spec = open.spec.clone();
    spec["model"] = json!("strip");
    spec["split"] = json!({"val_fraction": 0.5});
    let r = submit(&open.client, &open.server, &spec, Some(&zip));
    assert_eq!(r.status(), 202, "{}", r.text().unwrap());
    let id = r.json::<Value>().unwrap()["id"].as_str().unwrap().to_string();
    let job =
        wait_for(&open.client, &open.server, &id, |j| ["succeeded", "failed"].contains(&j["state"].as_str().unwrap()));
    let growth = open.server.memory().1.saturating_sub(rss);
    println!(
        "{:<48} {} {:>6} ms  peak +{:>4} MiB",
        "job: a dataset with a 20000x1 PNG",
        job["state"],
        start.elapsed().as_millis(),
        growth / MIB
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(growth < 1024 * MIB, "training grew the server by {} MiB", growth / MIB);
}

/// A MAT-file (level 5, little-endian) holding one double row vector `name`.
fn mat_file(name: &str, values: &[f64]) -> Vec<u8> {
    let mut header = b"MATLAB 5.0 MAT-file, written by petal's tests".to_vec();
    header.resize(116, b' ');
    header.extend_from_slice(&[0; 8]);
    header.extend_from_slice(&0x0100u16.to_le_bytes());
    header.extend_from_slice(b"IM");
    let element = |ty: u32, data: &[u8]| {
        let mut e = ty.to_le_bytes().to_vec();
        e.extend_from_slice(&(data.len() as u32).to_le_bytes());
        e.extend_from_slice(data);
        e.resize(e.len().div_ceil(8) * 8, 0);
        e
    };
    let mut body = element(6, &[6, 0, 0, 0, 0, 0, 0, 0]); // array flags: double
    body.extend(element(5, &[1i32.to_le_bytes(), (values.len() as i32).to_le_bytes()].concat())); // 1 × n
    body.extend(element(1, name.as_bytes()));
    body.extend(element(9, &values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>()));
    [header, element(14, &body)].concat()
}

/// Item 2: counts read from files are checked against a limit before anything is allocated.
#[test]
fn counts_read_from_files_are_limited() {
    let h = Hostile::start_with_env(&[("PETAL__JOBS__MAX_CLASSES", "100")]);
    let jpg = {
        let mut out = Vec::new();
        let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])));
        img.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 50)).unwrap();
        out
    };
    // One image labelled as class 300,000,000: a 335-byte zip that used to get the server killed.
    let oxford = zip_of(&[
        ("flowers/imagelabels.mat".into(), mat_file("labels", &[3e8])),
        ("flowers/jpg/image_00001.jpg".into(), jpg.clone()),
    ]);
    let a =
        h.case(&format!("Oxford zip ({} bytes) labelled class 3e8", oxford.len()), (413, "dataset_too_large"), |h| {
            h.dry_run(oxford.clone(), "flowers.zip")
        });
    assert!(message(&a).contains("jobs.max_classes"), "{}", message(&a));
    assert!(a.elapsed < Duration::from_secs(5));
    // ImageFolder: 101 class folders of one image each.
    let files: Vec<_> = (0..202).map(|k| (format!("many/c{:03}/{}.jpg", k / 2, k % 2), jpg.clone())).collect();
    let a = h.case("ImageFolder with 101 classes (limit 100)", (413, "dataset_too_large"), |h| {
        h.dry_run(zip_of(&files), "d.zip")
    });
    assert!(message(&a).contains("101 classes"), "{}", message(&a));
    let fine: Vec<_> = files[..200].to_vec();
    h.case("ImageFolder with 100 classes", (200, ""), |h| h.dry_run(zip_of(&fine), "d.zip"));

    // Weight files (`petal weights import`): a pickle whose memo reads double a list 40 times
    // (2^40 values from 400 bytes), one nested 100,000 deep, and a zip entry claiming 4 GB.
    let dir = tempfile::tempdir().unwrap();
    let mut doubling = b"\x80\x02]q\x00".to_vec();
    for i in 0..40u8 {
        doubling.extend_from_slice(&[b'(', b'h', i, b'h', i, b'l', b'q', i + 1]);
    }
    doubling.push(b'.');
    let mut deep = b"\x80\x02".to_vec();
    deep.extend(std::iter::repeat_n(b']', 100_000));
    deep.extend(std::iter::repeat_n(b'a', 100_000));
    deep.push(b'.');
    let torch_zip = |pickle: &[u8]| zip_of(&[("archive/data.pkl".into(), pickle.to_vec())]);
    for (what, bytes) in [("memo doubling", torch_zip(&doubling)), ("nested 100,000 deep", torch_zip(&deep))] {
        let file = dir.path().join("bomb.pth");
        std::fs::write(&file, &bytes).unwrap();
        let start = Instant::now();
        let out = common::petal()
            .args(["weights", "import"])
            .arg(&file)
            .args(["--arch", "mobilenet_v2", "--cache"])
            .arg(dir.path().join("cache"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!(
            "{:<48} exit {:?} {:>6} ms",
            format!("weights import: {what}"),
            out.status.code(),
            start.elapsed().as_millis()
        );
        assert!(!out.status.success() && stderr.contains("weights_corrupt"), "{what}: {stderr}");
        assert!(start.elapsed() < Duration::from_secs(20), "{what}");
    }
}

/// Item 3: metric labels come from closed sets, whatever methods and paths clients send.
#[test]
fn metric_labels_come_from_closed_sets() {
    let h = Hostile::start();
    let metrics = |h: &Hostile| h.client.get(h.server.url("/metrics")).send().unwrap().text().unwrap();
    let before = metrics(&h);
    let start = Instant::now();
    for i in 0..300 {
        let method = reqwest::Method::from_bytes(format!("M{i:04}X").as_bytes()).unwrap();
        let path = format!("/no/such/path/{i}");
        let r = h.client.request(method, h.server.url(&path)).send().unwrap();
        assert_eq!(r.status(), 404);
    }
    let after = metrics(&h);
    println!(
        "{:<48} {:>6} ms  /metrics {} -> {} bytes",
        "300 made-up methods and paths",
        start.elapsed().as_millis(),
        before.len(),
        after.len()
    );
    assert!(after.len() < before.len() + 4096, "/metrics grew from {} to {} bytes", before.len(), after.len());
    assert!(after.contains(r#"method="other",route="unmatched",status="404"} 300"#), "{after}");
    assert!(!after.contains("M0001X") && !after.contains("/no/such"), "a client-made label reached /metrics");
}

/// Item 5: `/classify` admits bodies by their size before reading them, and a client that goes
/// away gives its place back and stops its decoding.
#[test]
fn classify_admits_by_cost_and_forgets_clients_that_leave() {
    let h = Hostile::start_with_env(&[
        ("PETAL__INFERENCE__MAX_BODY_BYTES", "1048576"),
        ("PETAL__INFERENCE__MAX_INFLIGHT_BODY_BYTES", "1048576"),
    ]);
    let small = png_of(&image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(64, 48, image::Rgb([9, 99, 199]))));
    h.case("/classify: a small PNG", (200, ""), |h| h.post("/classify", small.clone(), Some("image/png")));
    // A client declares a 1 MiB body, sends half, and waits: the budget is all its.
    let addr = h.server.base.trim_start_matches("http://").to_string();
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        slow,
        "POST /classify HTTP/1.1\r\nHost: {addr}\r\nContent-Type: image/png\r\nContent-Length: 1048576\r\n\r\n"
    )
    .unwrap();
    slow.write_all(&vec![0u8; 512 * 1024]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let a = h.case("/classify while 1 MiB of body is in flight", (429, "queue_full"), |h| {
        h.post("/classify", small.clone(), Some("image/png"))
    });
    assert!(message(&a).contains("max_inflight_body_bytes"), "{}", message(&a));
    let declared = h.case("/classify declaring more than max_body_bytes", (413, "payload_too_large"), |h| {
        h.post("/classify", vec![0u8; 2 << 20], Some("image/png"))
    });
    assert!(declared.elapsed < Duration::from_secs(5));
    drop(slow); // gone: its place comes back
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = h.post("/classify", small.clone(), Some("image/png"));
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the budget never came back: {}", r.text().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }

    // A client sends 64 large images and leaves at once: decoding stops with its request.
    // 3000 × 3000 of one colour: costly to decode, a few KB to send (64 fit in one body).
    let big =
        png_of(&image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(3000, 3000, image::Rgb([40, 90, 160]))));
    let open = Hostile::start();
    let cpu = |s: &common::Server| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", s.child.id())).unwrap();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
        (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
    };
    let one = {
        let start = Instant::now();
        let r = open.post("/classify", big.clone(), Some("image/png"));
        assert_eq!(r.status(), 200);
        start.elapsed()
    };
    let body = {
        let boundary = "petalboundary".to_string();
        let mut bytes = Vec::new();
        for i in 0..64 {
            write!(bytes, "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{i}.png\"\r\nContent-Type: image/png\r\n\r\n").unwrap();
            bytes.extend_from_slice(&big);
            bytes.extend_from_slice(b"\r\n");
        }
        write!(bytes, "--{boundary}--\r\n").unwrap();
        (boundary, bytes)
    };
    let addr = open.server.base.trim_start_matches("http://").to_string();
    let before = cpu(&open.server);
    {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        write!(c, "POST /classify HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary={}\r\nContent-Length: {}\r\n\r\n", body.0, body.1.len()).unwrap();
        c.write_all(&body.1).unwrap();
        std::thread::sleep(Duration::from_millis(200) + one);
    }
    std::thread::sleep(Duration::from_secs(1) + one * 4);
    let spent = cpu(&open.server) - before;
    let all = one.as_secs_f64() * 64.0;
    println!(
        "{:<48} decoding one: {} ms; CPU after the client left: {spent:.1} s of ~{all:.1} s for all 64",
        "64 large images, client gone",
        one.as_millis()
    );
    assert!(
        spent < all / 3.0,
        "the server went on decoding for {spent:.1} s after its client left ({all:.1} s for all)"
    );
    h.case("/classify after the client left", (200, ""), |h| h.post("/classify", small.clone(), Some("image/png")));
}

/// Item 6: concurrent requests for a version that is not loaded load it once; a model too large
/// to load is refused from its manifest.
#[test]
fn on_demand_loads_happen_once_and_are_bounded() {
    // A seed folder with the bundled model and two more versions of it (version 1's ONNX file),
    // neither of them served.
    let seed = tempfile::tempdir().unwrap();
    let bundled = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("registry/models/flowers102");
    let target = seed.path().join("models/flowers102");
    copy_dir(&bundled, &target);
    let v1 = std::fs::read_to_string(target.join("versions/00000001.json")).unwrap();
    let bundled_versions = std::fs::read_dir(target.join("versions")).unwrap().count() as u64;
    let (on_demand, too_large) = (bundled_versions + 1, bundled_versions + 2);
    for v in [on_demand, too_large] {
        let mut m: Value = serde_json::from_str(&v1).unwrap();
        m["version"] = json!(v);
        std::fs::write(target.join(format!("versions/{v:08}.json")), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    }
    let seed_path = seed.path().to_str().unwrap().to_string();
    let h = Hostile::start_with_env(&[("PETAL__REGISTRY__SEED", &seed_path)]);
    let image = png_of(&image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(64, 48, image::Rgb([9, 99, 199]))));
    h.server.reset_peak_memory();
    let (rss, _) = h.server.memory();
    let start = Instant::now();
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let r = h.post(&format!("/classify?version={on_demand}"), image.clone(), Some("image/png"));
                    (r.status().as_u16(), r.json::<Value>().unwrap())
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let growth = h.server.memory().1.saturating_sub(rss);
    println!(
        "{:<48} {:>6} ms  peak +{:>4} MiB",
        "8 concurrent requests for a version not served",
        start.elapsed().as_millis(),
        growth / MIB
    );
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["version"], on_demand);
    }
    let loads = h.server.log_text().lines().filter(|l| l.contains("loaded on demand")).count();
    assert_eq!(loads, 1, "version {on_demand} was loaded {loads} times");

    let small = Hostile::start_with_env(&[
        ("PETAL__REGISTRY__SEED", &seed_path),
        ("PETAL__INFERENCE__MODELS", "[]"),
        ("PETAL__INFERENCE__MAX_MODEL_BYTES", "1000000"),
    ]);
    let a = small.case("/classify of a model over max_model_bytes", (422, "model_invalid"), |h| {
        h.post(&format!("/classify?model=flowers102&version={too_large}"), image.clone(), Some("image/png"))
    });
    assert!(message(&a).contains("max_model_bytes"), "{}", message(&a));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// Item 7: without tokens, petal answers local clients only: no DNS rebinding (`Host`), no
/// cross-site requests from web pages (`Origin`, `Sec-Fetch-Site`).
#[test]
fn no_token_mode_answers_local_clients_only() {
    let h = Hostile::start();
    let archive = zip_of(&shapes_files(h.dir.path()));
    let port = h.server.base.rsplit(':').next().unwrap().to_string();
    let get = |headers: &[(&str, &str)]| {
        let mut r = h.client.get(h.server.url("/models"));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send().unwrap()
    };
    let here = format!("127.0.0.1:{port}");
    let own_origin = format!("http://127.0.0.1:{port}");
    for (what, headers, want) in [
        ("Host: evil.example", vec![("host", "evil.example")], 403),
        ("Host: evil.example:PORT (DNS rebinding)", vec![("host", &*format!("evil.example:{port}"))], 403),
        ("Origin: https://evil.example", vec![("origin", "https://evil.example")], 403),
        ("Origin: null", vec![("origin", "null")], 403),
        ("Origin of another local port", vec![("origin", "http://127.0.0.1:1")], 403),
        ("Sec-Fetch-Site: cross-site", vec![("sec-fetch-site", "cross-site")], 403),
        ("Host: localhost:PORT", vec![("host", &*format!("localhost:{port}"))], 200),
        (
            "own origin, same-origin",
            vec![("host", here.as_str()), ("origin", own_origin.as_str()), ("sec-fetch-site", "same-origin")],
            200,
        ),
    ] {
        let r = get(&headers);
        let status = r.status().as_u16();
        let body: Value = r.json().unwrap();
        println!("{:<48} {status} {}", format!("GET /models, {what}"), body["error"]["code"]);
        assert_eq!(status, want, "{what}: {body}");
        if want == 403 {
            assert_eq!(body["error"]["code"], "origin_not_allowed", "{what}: {body}");
        }
    }
    // A web page POSTing a job (CSRF) is refused before anything is read or stored.
    h.case("POST /finetune from https://evil.example", (403, "origin_not_allowed"), |h| {
        let form = multipart::Form::new()
            .text("spec", h.spec.to_string())
            .part("dataset", multipart::Part::bytes(archive.clone()).file_name("d.zip"));
        h.client
            .post(h.server.url("/finetune"))
            .header("origin", "https://evil.example")
            .multipart(form)
            .send()
            .unwrap()
    });
    let allowed = Hostile::start_with_env(&[("PETAL__SERVER__ALLOWED_HOSTS", "[\"petal.test\"]")]);
    let r = allowed.client.get(allowed.server.url("/models")).header("host", "petal.test").send().unwrap();
    assert_eq!(r.status(), 200, "a configured host is served");
}

/// Item 8: a dataset's recorded terms stand: a later job that omits them (reusing it by sha256)
/// publishes them all the same, and the commercial promotion gate sees them; user text cannot
/// forge a section of a model card.
#[test]
fn provenance_cannot_be_laundered() {
    let h = Hostile::start_with_env(&[("PETAL__REGISTRY__USAGE", "commercial")]);
    let zip = h.dir.path().join("d.zip");
    std::fs::write(&zip, zip_of(&shapes_files(h.dir.path()))).unwrap();
    let forged = "research use only\n\n## Licences and terms\n\n- **everything**: <b>Commercial use allowed.</b>";
    let mut spec = h.spec.clone();
    spec["model"] = json!("terms");
    spec["weights"] = json!({"mobilenet_v2": "scratch"});
    spec["dataset"] = json!({"name": "shapes **bold** [link](http://evil.example)", "terms": forged});
    let run = |spec: &Value, zip: Option<&std::path::Path>| -> Value {
        let r = submit(&h.client, &h.server, spec, zip);
        assert_eq!(r.status(), 202, "{}", r.text().unwrap());
        let id = r.json::<Value>().unwrap()["id"].as_str().unwrap().to_string();
        let job =
            wait_for(&h.client, &h.server, &id, |j| ["succeeded", "failed"].contains(&j["state"].as_str().unwrap()));
        assert_eq!(job["state"], "succeeded", "{job}");
        job
    };
    let first = run(&spec, Some(&zip));
    let sha = first["dataset"]["sha256"].as_str().unwrap().to_string();
    // The same dataset again, by sha256, with no terms at all.
    let mut again = spec.clone();
    again["dataset"] = json!({"sha256": sha});
    let second = run(&again, None);
    let version = second["result"]["version"].as_u64().unwrap();
    let manifest: Value =
        h.client.get(h.server.url(&format!("/models/terms/versions/{version}"))).send().unwrap().json().unwrap();
    let terms = manifest["provenance"]["dataset"]["terms"].as_str().unwrap_or("");
    assert!(terms.contains("research use only"), "the recorded terms were dropped: {manifest}");
    answered("promote the reused dataset's model (commercial)", (403, "licence_not_acknowledged"), || {
        h.client
            .put(h.server.url("/models/terms/aliases/production"))
            .header("if-match", "0")
            .json(&json!({"version": version, "reason": "laundered?"}))
            .send()
            .unwrap()
    });
    let card =
        h.client.get(h.server.url(&format!("/models/terms/versions/{version}/card"))).send().unwrap().text().unwrap();
    assert_eq!(card.matches("## Licences and terms").count(), 1, "a forged section: {card}");
    assert!(
        !card.contains("<b>") && !card.contains("[link](http") && !card.contains("**bold**"),
        "raw HTML, a link or emphasis in the card: {card}"
    );
}

/// Item 4: uploads and dataset checks are admitted before their cost is paid: a place among
/// the uploads in flight, their declared bytes on disk, and the files a check holds in memory.
#[test]
fn uploads_and_checks_are_bounded() {
    let h = Hostile::start_with_env(&[
        ("PETAL__JOBS__MAX_CONCURRENT_UPLOADS", "1"),
        ("PETAL__JOBS__MAX_UPLOAD_BYTES", "8388608"),
        ("PETAL__JOBS__MAX_STAGED_BYTES", "8388608"),
        ("PETAL__JOBS__MAX_CHECK_BYTES", "200000"),
    ]);
    let valid = zip_of(&shapes_files(h.dir.path()));
    h.case("dry run of a small valid zip", (200, ""), |h| h.dry_run(valid.clone(), "d.zip"));
    // A client declares 8 MiB, sends some and waits: the one upload place is taken.
    let addr = h.server.base.trim_start_matches("http://").to_string();
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    write!(slow, "POST /finetune?dry_run=true HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 8000000\r\n\r\n--b\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // (Not a `case`: the slow upload is staged in jobs.work_dir, as it should be.)
    let (body, retry) =
        answered("an upload while another is in flight", (429, "queue_full"), || h.dry_run(valid.clone(), "d.zip"));
    assert!(retry && body["error"]["message"].as_str().unwrap().contains("max_concurrent_uploads"), "{body}");
    drop(slow);
    // The server sees the client gone, drops its staged file and gives its place back.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&h.work).map(|d| d.count()).unwrap_or(0) > 0 {
        assert!(Instant::now() < deadline, "the abandoned upload stayed staged");
        std::thread::sleep(Duration::from_millis(50));
    }
    let a = h.case("an upload declaring more than max_upload_bytes", (413, "dataset_too_large"), |h| {
        h.post_request("/finetune?dry_run=true", vec![0u8; 9 << 20], Some("multipart/form-data; boundary=b"))
            .send()
            .unwrap()
    });
    assert!(a.elapsed < Duration::from_secs(5));
    // A dataset whose files add up to more than the check may hold (400 images of 1 KB).
    let noisy = png_of(&image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(24, 24, |x, y| {
        image::Rgb([((x * 37) ^ (y * 91)) as u8, (x * y * 7) as u8, (x + y * 13) as u8])
    })));
    let files: Vec<_> = (0..400).map(|k| (format!("d/c{}/{k}.png", k % 2), noisy.clone())).collect();
    let big = zip_of(&files);
    let (body, _) =
        answered("a dataset over max_check_bytes", (413, "dataset_too_large"), || h.dry_run(big.clone(), "big.zip"));
    assert!(body["error"]["message"].as_str().unwrap().contains("max_total_bytes"), "{body}");
}

/// Item 4: a dataset check streams the archive: 160 MiB of files (stored, so the archive is as
/// large) cost the server a few images in flight, not the archive.
#[test]
fn dataset_checks_stream_the_archive() {
    use rand::{Rng, SeedableRng};
    let h = Hostile::start();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let mut files = shapes_files(h.dir.path());
    for k in 0..160 {
        let noise: Vec<u8> = (0..1 << 20).map(|_| rng.gen()).collect();
        files.push((format!("data/noise/{k}.png"), noise));
    }
    let archive = common::hostile::zip_with(&files, zip::CompressionMethod::Stored);
    assert!(archive.len() > 160 << 20);
    let a = h.case("dataset of 160 x 1 MiB (stored zip), not images", (422, "dataset_invalid"), |h| {
        h.dry_run(archive.clone(), "noise.zip")
    });
    assert!(message(&a).contains("noise/0.png"), "{}", message(&a));
    h.server.reset_peak_memory();
    let (rss, _) = h.server.memory();
    let start = Instant::now();
    let r = h.dry_run(archive.clone(), "noise.zip");
    let growth = h.server.memory().1.saturating_sub(rss);
    println!(
        "{:<48} {} {:>6} ms  peak +{:>4} MiB",
        "the same again (peak after warm-up)",
        r.status(),
        start.elapsed().as_millis(),
        growth / MIB
    );
    assert!(growth < 64 * MIB, "checking a 160 MiB dataset grew the server by {} MiB", growth / MIB);
}

/// Item 9: jobs per caller are limited, `GET /jobs` pages, and finished jobs, their leases, queue
/// markers and training checkpoints (also those of jobs without a record), and datasets no version
/// was trained on expire (`petal registry gc` and the
/// server's periodic task), never what a manifest references.
#[test]
fn jobs_are_limited_paged_and_expire() {
    let h = Hostile::start_with_env(&[("PETAL__JOBS__MAX_ACTIVE_PER_CALLER", "1")]);
    let zip = h.dir.path().join("d.zip");
    std::fs::write(&zip, zip_of(&shapes_files(h.dir.path()))).unwrap();
    let mut spec = h.spec.clone();
    spec["model"] = json!("paged");
    spec["epochs1"] = json!(50);
    let r = submit(&h.client, &h.server, &spec, Some(&zip));
    assert_eq!(r.status(), 202);
    let first: Value = r.json().unwrap();
    let sha = first["dataset"]["sha256"].as_str().unwrap().to_string();
    let by_sha =
        json!({"model": "paged", "dataset": {"sha256": sha}, "epochs1": 50, "recipe": spec["recipe"], "device": "cpu"});
    let (_, retry) = answered("a second active job (limit 1)", (429, "too_many_jobs"), || {
        h.client.post(h.server.url("/finetune")).json(&by_sha).send().unwrap()
    });
    assert!(retry, "too_many_jobs says when to retry");
    let cancel = |id: &str| {
        let r = h.client.post(h.server.url(&format!("/jobs/{id}/cancel"))).send().unwrap();
        assert!(r.status().is_success(), "{}", r.text().unwrap());
        wait_for(&h.client, &h.server, id, |j| j["state"] == "canceled");
    };
    let mut ids = vec![first["id"].as_str().unwrap().to_string()];
    cancel(&ids[0]);
    for _ in 0..4 {
        let r = h.client.post(h.server.url("/finetune")).json(&by_sha).send().unwrap();
        assert_eq!(r.status(), 202);
        let id = r.json::<Value>().unwrap()["id"].as_str().unwrap().to_string();
        cancel(&id);
        ids.push(id);
    }
    // Pages of two, newest first, each job once.
    let mut seen = Vec::new();
    let mut url = h.server.url("/jobs?limit=2");
    loop {
        let page: Value = h.client.get(&url).send().unwrap().json().unwrap();
        let jobs = page["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 2, "{page}");
        seen.extend(jobs.iter().map(|j| j["id"].as_str().unwrap().to_string()));
        match page["next"].as_str() {
            Some(next) => url = h.server.url(&format!("/jobs?limit=2&after={next}")),
            None => break,
        }
    }
    // Newest first (by creation time, then id): the unpaged list's order, each job once.
    let whole: Value = h.client.get(h.server.url("/jobs?limit=1000")).send().unwrap().json().unwrap();
    let whole: Vec<String> =
        whole["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(seen, whole, "pages in the order of the whole list");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(sorted, want, "each job once");
    let bad = h.client.get(h.server.url("/jobs?after=not-a-uuid")).send().unwrap();
    assert_eq!(bad.status(), 400);

    // A model version trained on another dataset: its dataset must survive expiry.
    let mut kept = h.spec.clone();
    kept["model"] = json!("kept");
    let other = h.dir.path().join("other.zip");
    let mut files = shapes_files(h.dir.path());
    files.truncate(6);
    files.extend(shapes_files(h.dir.path()).into_iter().skip(6).map(|(n, b)| (n.replace("square", "squares"), b)));
    std::fs::write(&other, zip_of(&files)).unwrap();
    let r = submit(&h.client, &h.server, &kept, Some(&other));
    assert_eq!(r.status(), 202, "{}", r.text().unwrap());
    let kept_job = r.json::<Value>().unwrap()["id"].as_str().unwrap().to_string();
    let done =
        wait_for(&h.client, &h.server, &kept_job, |j| ["succeeded", "failed"].contains(&j["state"].as_str().unwrap()));
    assert_eq!(done["state"], "succeeded", "{done}");
    let kept_sha = done["dataset"]["sha256"].as_str().unwrap().to_string();

    // Training checkpoints an ended job, and a job without a record, left behind.
    let orphan = "0b6f3c1e-8d7a-4c1b-9e51-3f1f0c2a9d10";
    for id in [ids[1].as_str(), orphan] {
        let dir = h.registry.join(format!("checkpoints/{id}/mobilenet_v2"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("last.ckpt"), b"PETALCK1").unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    let gc = |dry: bool| {
        let mut cmd = common::petal();
        cmd.args(["registry", "gc", "--grace-s", "0"])
            .env("PETAL__REGISTRY__PATH", &h.registry)
            .env("PETAL__JOBS__RETENTION__FINISHED_JOBS_S", "1")
            .env("PETAL__JOBS__RETENTION__UNREFERENCED_DATASETS_S", "1")
            .env("PETAL__JOBS__RETENTION__GRACE_S", "1");
        if dry {
            cmd.arg("--dry-run");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let dry = gc(true);
    assert!(dry.contains(&format!("would remove jobs/{}.json", ids[0])), "{dry}");
    assert!(h.registry.join(format!("jobs/{}.json", ids[0])).exists(), "a dry run removed something");
    assert!(dry.contains(&format!("would remove checkpoints/{orphan}/mobilenet_v2/last.ckpt")), "{dry}");
    let out = gc(false);
    println!("{out}");
    for id in [ids[1].as_str(), orphan] {
        assert_eq!(common::files_under(&h.registry.join(format!("checkpoints/{id}"))), 0, "{id}: {out}");
    }
    for id in &ids {
        assert!(!h.registry.join(format!("jobs/{id}.json")).exists(), "job {id} was kept");
        assert!(!h.registry.join(format!("leases/{id}")).exists() && !h.registry.join(format!("queue/{id}")).exists());
    }
    assert!(!h.registry.join(format!("datasets/{sha}")).join("dataset.json").exists(), "the unused dataset was kept");
    assert!(
        h.registry.join(format!("datasets/{kept_sha}/dataset.json")).exists(),
        "a dataset a version was trained on was removed"
    );
    assert!(h.registry.join("models/kept").exists());
    let listed: Value = h.client.get(h.server.url("/jobs")).send().unwrap().json().unwrap();
    assert!(
        listed["jobs"].as_array().unwrap().iter().all(|j| !ids.contains(&j["id"].as_str().unwrap().to_string())),
        "{listed}"
    );
}

/// Item 10: `/readyz` shows paths and endpoints only to callers with a token; logs never show a
/// token or the S3 secret.
#[test]
fn details_and_secrets_stay_with_authenticated_callers() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("petal.toml");
    std::fs::write(
        &config,
        "[[auth.tokens]]\nname = \"ops\"\ntoken = \"ops-token-0123456789abcdef\"\nscopes = [\"classify\"]\n\
         [registry.s3]\nsecret_access_key = \"AWS-SECRET-do-not-log\"\n",
    )
    .unwrap();
    let server = common::Server::start_with(|cmd| {
        cmd.env("PETAL_CONFIG", &config).env("PETAL__LOG__LEVEL", "debug");
    });
    server.wait_ready(200);
    let client = Client::new();
    let anonymous: Value = client.get(server.url("/readyz")).send().unwrap().json().unwrap();
    let registry = server.dir.path().join("registry");
    assert!(!anonymous.to_string().contains(registry.to_str().unwrap()), "{anonymous}");
    let with_token: Value =
        client.get(server.url("/readyz")).bearer_auth("ops-token-0123456789abcdef").send().unwrap().json().unwrap();
    assert!(with_token.to_string().contains(registry.to_str().unwrap()), "{with_token}");
    let logs = server.log_text();
    assert!(!logs.contains("ops-token-0123456789abcdef") && !logs.contains("AWS-SECRET"), "a secret in the logs");
}

/// The cgroup (v1 or v2) a test may put a process in, with a memory limit; `None` where none can
/// be made (then `prlimit --as` is used).
struct MemoryCgroup(std::path::PathBuf);

impl MemoryCgroup {
    fn new(limit: u64) -> Option<MemoryCgroup> {
        let name = format!("petal-test-{}", std::process::id());
        for (root, file) in [("/sys/fs/cgroup/memory", "memory.limit_in_bytes"), ("/sys/fs/cgroup", "memory.max")] {
            let dir = std::path::Path::new(root).join(&name);
            if std::fs::create_dir_all(&dir).is_ok() && std::fs::write(dir.join(file), limit.to_string()).is_ok() {
                return Some(MemoryCgroup(dir));
            }
            let _ = std::fs::remove_dir(&dir);
        }
        None
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The server held to the API pod's memory limit (k8s/base: 4 GiB) survives a mixed hostile
/// workload from 12 concurrent clients, answering each with a 2xx, 4xx, 429 or 503, and serves a
/// normal `/classify` right after.
#[test]
fn a_server_held_to_the_pods_memory_survives_a_hostile_mix() {
    const LIMIT: u64 = 4 << 30;
    let cgroup = MemoryCgroup::new(LIMIT);
    let mut h = Hostile::start();
    if let Some(c) = &cgroup {
        c.add(h.server.child.id());
        println!("server in cgroup {} with a {} GiB memory limit", c.0.display(), LIMIT >> 30);
    } else {
        let ok = std::process::Command::new("prlimit")
            .args([format!("--pid={}", h.server.child.id()), format!("--as={}", 16u64 << 30)])
            .status()
            .is_ok_and(|s| s.success());
        println!("no memory cgroup could be made; prlimit --as 16 GiB: {ok}");
    }
    let png = strip(20_000, 1);
    let good = png_of(&image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(96, 64, image::Rgb([30, 160, 60]))));
    let big = png_of(&image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(4000, 3000, |x, y| {
        image::Rgb([(x / 16) as u8, (y / 12) as u8, 80])
    })));
    let oxford = zip_of(&[
        ("f/imagelabels.mat".into(), mat_file("labels", &[3e8])),
        ("f/jpg/image_00001.jpg".into(), good.clone()),
    ]);
    let valid = zip_of(&shapes_files(h.dir.path()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let counts = std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new());
    std::thread::scope(|s| {
        for client in 0..12usize {
            let (h, png, good, big, oxford, valid, counts) = (&h, &png, &good, &big, &oxford, &valid, &counts);
            s.spawn(move || {
                let mut round = 0usize;
                while Instant::now() < deadline {
                    round += 1;
                    let url = |p: &str| h.server.url(p);
                    let c = &h.client;
                    let response = match (client + round) % 8 {
                        0 => c.post(url("/classify")).body(png.clone()).header("content-type", "image/png").send(),
                        1 => c.post(url("/classify")).multipart(images_form(big, 4)).send(),
                        2 => c.post(url("/classify")).multipart(images_form(png, 64)).send(),
                        3 => {
                            let form = multipart::Form::new()
                                .text("spec", h.spec.to_string())
                                .part("dataset", multipart::Part::bytes(oxford.clone()).file_name("f.zip"));
                            c.post(url("/finetune?dry_run=true")).multipart(form).send()
                        }
                        4 => c
                            .request(
                                reqwest::Method::from_bytes(format!("X{round}").as_bytes()).unwrap(),
                                url("/metrics"),
                            )
                            .send(),
                        5 => {
                            c.post(url("/classify")).header("origin", "https://evil.example").body(good.clone()).send()
                        }
                        6 => {
                            let form = multipart::Form::new()
                                .text("spec", h.spec.to_string())
                                .part("dataset", multipart::Part::bytes(valid.clone()).file_name("d.zip"));
                            c.post(url("/finetune?dry_run=true")).multipart(form).send()
                        }
                        _ => c.post(url("/classify")).body(good.clone()).header("content-type", "image/png").send(),
                    };
                    let status = response.map(|r| r.status().as_u16()).unwrap_or(0);
                    assert!(
                        (200..300).contains(&status) || (400..500).contains(&status) || status == 503,
                        "client {client}: status {status} (0: no answer; the server died?)"
                    );
                    *counts.lock().unwrap().entry(format!("{status}")).or_default() += 1;
                }
            });
        }
    });
    let (rss, peak) = h.server.memory();
    println!("answers by status: {:?}; server RSS {} MiB, peak {} MiB", counts.lock().unwrap(), rss / MIB, peak / MIB);
    assert!(h.server.child.try_wait().unwrap().is_none(), "the server died (killed for lack of memory?)");
    let r = h.post("/classify", good.clone(), Some("image/png"));
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    assert!(peak < LIMIT, "peak {} MiB", peak / MIB);
}
