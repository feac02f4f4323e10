//! Hostile inputs through the real HTTP API (issue 8, hardening): archive bombs, escaping paths and
//! links, empty and truncated archives, odd images in datasets and on `/classify`, odd layouts,
//! oversized and malformed job specs, wrong content types, a pickle that would run code.
//!
//! Each case must get its documented status and stable error code (`src/error.rs`); after each,
//! the server still answers `/healthz`, nothing reached the registry (`datasets/` and `jobs/`
//! absent, `models/` as seeded), no staged upload is left in `jobs.work_dir`, and the server's peak
//! memory (VmHWM, reset before each case) grew far less than what a bomb expands to.
use crate::common;

use std::io::Write;
use std::time::Duration;

use crate::common::hostile::{message, png_of, shapes_files, zip_of, zip_with, Hostile, Want, MIB};
use crate::common::{submit, zip_dir};
use rand::{Rng, SeedableRng};
use serde_json::json;

const GIB: u64 = 1 << 30;

// --- archives built in memory ---

/// A tar header written raw: name and link target as given (the tar crate's builder refuses
/// `..` and absolute names, which is the point here).
fn tar_header(name: &str, kind: tar::EntryType, size: u64, link: &str) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let old = h.as_old_mut();
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    h
}

/// A tar entry: name, kind, bytes, link target.
type TarEntry<'a> = (&'a str, tar::EntryType, &'a [u8], &'a str);

fn tar_of(entries: &[TarEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, bytes, link) in entries {
        b.append(&tar_header(name, *kind, bytes.len() as u64, link), *bytes).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// Raw deflate data built from self-contained units: each unit is its data compressed by a fresh
/// compressor and closed with a full flush (byte-aligned, no reference to anything before it),
/// so copies of a unit laid end to end are valid deflate that decodes to as many copies of the
/// data. Gibibytes of zeros take milliseconds and are never in memory.
#[derive(Default)]
struct Deflated {
    bytes: Vec<u8>,
    crc: flate2::Crc,
    size: u64,
}

impl Deflated {
    fn push(mut self, data: &[u8], times: usize) -> Self {
        let mut c = flate2::Compress::new(flate2::Compression::best(), false);
        let mut unit = Vec::with_capacity(data.len() + 4096);
        c.compress_vec(data, &mut unit, flate2::FlushCompress::Full).unwrap();
        assert_eq!(c.total_in(), data.len() as u64);
        assert!(unit.ends_with(&[0, 0, 0xff, 0xff]), "a full flush ends on an empty stored block");
        let mut crc = flate2::Crc::new();
        crc.update(data);
        for _ in 0..times {
            self.bytes.extend_from_slice(&unit);
            self.crc.combine(&crc);
        }
        self.size += data.len() as u64 * times as u64;
        self
    }

    /// Closes the stream with an empty final block.
    fn finish(mut self) -> Self {
        self.bytes.extend_from_slice(&[0x03, 0x00]);
        self
    }

    /// `times` MiB of zeros.
    fn zeros(times: usize) -> Self {
        Deflated::default().push(&vec![0u8; MIB as usize], times).finish()
    }

    /// As a `.gz` file.
    fn gzip(&self) -> Vec<u8> {
        let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        out.extend_from_slice(&self.bytes);
        out.extend_from_slice(&self.crc.sum().to_le_bytes());
        out.extend_from_slice(&(self.size as u32).to_le_bytes());
        out
    }
}

/// A zip written by hand (the zip crate does not store data compressed elsewhere): `files` with
/// their local headers and data, then the central directory, where each of `shares` (name, index)
/// is one more entry pointing at the data of `files[index]` — overlapping entries, as in
/// Fifield's "better zip bomb".
fn zip_raw(files: &[(String, &Deflated)], shares: &[(String, usize)]) -> Vec<u8> {
    fn fields(out: &mut Vec<u8>, name: &str, d: &Deflated) {
        for v in [0u16, 8, 0, 0x21] {
            out.extend_from_slice(&v.to_le_bytes()); // flags, deflate, time, date (1980-01-01)
        }
        for v in [d.crc.sum(), d.bytes.len() as u32, u32::try_from(d.size).expect("< 4 GiB")] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // no extra field
    }
    let mut out = Vec::new();
    let mut offsets = Vec::new();
    for (name, d) in files {
        offsets.push(out.len() as u32);
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&20u16.to_le_bytes());
        fields(&mut out, name, d);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&d.bytes);
    }
    let central_at = out.len() as u32;
    let entries = files.iter().enumerate().map(|(i, (n, _))| (n, i)).chain(shares.iter().map(|(n, i)| (n, *i)));
    let mut count = 0u16;
    for (name, i) in entries {
        out.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        out.extend_from_slice(&[20, 0, 20, 0]); // made by, needed: 2.0
        fields(&mut out, name, files[i].1);
        out.extend_from_slice(&[0; 10]); // comment length, disk, internal and external attributes
        out.extend_from_slice(&offsets[i].to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        count += 1;
    }
    let central_len = out.len() as u32 - central_at;
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&central_len.to_le_bytes());
    out.extend_from_slice(&central_at.to_le_bytes());
    out.extend_from_slice(&[0; 2]);
    out
}

/// A `.tar.gz` of `entries` files of `mib` MiB of zeros each, built as one deflate stream.
fn tar_gz_bomb(entries: usize, mib: usize) -> (Vec<u8>, u64) {
    let zero_mib = vec![0u8; MIB as usize];
    let mut d = Deflated::default();
    for i in 0..entries {
        let name = format!("bomb/{}/{i}.jpg", ["a", "b"][i % 2]);
        d = d.push(tar_header(&name, tar::EntryType::Regular, mib as u64 * MIB, "").as_bytes(), 1);
        d = d.push(&zero_mib, mib);
    }
    let d = d.push(&[0u8; 1024], 1).finish(); // the end-of-archive blocks
    (d.gzip(), d.size)
}

/// Proves the hand-made archives are what they claim, on small sizes: the zip crate and the tar
/// crate read them back whole, CRCs included.
fn check_builders() {
    use std::io::Read;
    let (one, two) = (Deflated::zeros(3), Deflated::default().push(b"petal ", 1000).push(b"!", 1).finish());
    let zip = zip_raw(&[("x/a.bin".into(), &one), ("x/b.bin".into(), &two)], &[("x/c.bin".into(), 1)]);
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    let petal = [&b"petal ".repeat(1000)[..], b"!"].concat();
    for (i, want) in [vec![0u8; 3 << 20], petal.clone(), petal].iter().enumerate() {
        let mut got = Vec::new();
        archive.by_index(i).unwrap().read_to_end(&mut got).unwrap();
        assert!(got == *want, "entry {i}");
    }
    let (tgz, size) = tar_gz_bomb(2, 1);
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&tgz[..]));
    let sizes: Vec<u64> =
        tar.entries().unwrap().map(|e| std::io::copy(&mut e.unwrap(), &mut std::io::sink()).unwrap()).collect();
    assert_eq!(sizes, [MIB, MIB]);
    assert_eq!(size, 2 * MIB + 2 * 512 + 1024);
    let mut all = Vec::new();
    flate2::read::GzDecoder::new(&tgz[..]).read_to_end(&mut all).unwrap(); // checks the gzip CRC and size
}

/// Zip and tar.gz bombs: each is refused fast with `dataset_too_large` (or, never expanded, as
/// a bad dataset), and the server's peak memory grows far less than the bomb's expanded size.
#[test]
fn archive_bombs_are_refused_fast_in_bounded_memory() {
    check_builders();
    let h = Hostile::start();
    let bomb = |name: &str, archive: Vec<u8>, file: &str, expanded: u64, want: Want| {
        println!("{name}: {} KiB expanding to {} MiB", archive.len() >> 10, expanded / MIB);
        let a = h.case(name, want, |h| h.dry_run(archive, file));
        assert!(a.elapsed < Duration::from_secs(10), "{name}: answered in {:?}", a.elapsed);
        a
    };

    // One entry of 2 GiB of zeros (~2 MB): stops at one file's limit (64 MiB).
    let deep = Deflated::zeros(2048);
    let one = zip_raw(&[("bomb/a/0.jpg".into(), &deep)], &[]);
    let a = bomb("zip bomb: one 2 GiB entry", one.clone(), "bomb.zip", 2 * GIB, (413, "dataset_too_large"));
    assert!(message(&a).contains("dataset.limits."), "{}", message(&a));

    // 32 entries of 64 MiB each, every one within the per-file limit: 2 GiB in all.
    let wide = Deflated::zeros(64);
    let files: Vec<(String, &Deflated)> =
        (0..32).map(|i| (format!("bomb/{}/{i}.jpg", ["a", "b"][i % 2]), &wide)).collect();
    let a =
        bomb("zip bomb: 32 entries of 64 MiB", zip_raw(&files, &[]), "bomb.zip", 2 * GIB, (413, "dataset_too_large"));
    assert!(message(&a).contains("max_ratio"), "{}", message(&a));

    // Overlapping entries: 256 entries share one 16 MiB kernel that compresses only ~40:1, so
    // no single entry looks like a bomb; together they expand to 4 GiB from ~0.4 MB.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
    let noise: Vec<u8> = (0..16 << 10).map(|_| rng.gen()).collect();
    let kernel = Deflated::default().push(&noise.repeat(64), 16).finish();
    let ratio = kernel.size / kernel.bytes.len() as u64;
    assert!((20..100).contains(&ratio), "compresses {ratio}:1, under max_ratio");
    let shares: Vec<(String, usize)> = (1..256).map(|i| (format!("bomb/{}/{i}.jpg", ["a", "b"][i % 2]), 0)).collect();
    let overlap = zip_raw(&[("bomb/a/0.jpg".into(), &kernel)], &shares);
    let a = bomb("zip bomb: 256 overlapping entries", overlap, "bomb.zip", 4 * GIB, (413, "dataset_too_large"));
    assert!(message(&a).contains("max_ratio"), "{}", message(&a));

    // Zips in a zip: petal never opens an archive inside the dataset. Deflated again, the inner
    // bombs (repetitive themselves) are bombs of the outer zip; stored, they are just files that
    // are not images.
    let inner = [("nested/a/inner.zip".to_string(), one.clone()), ("nested/b/inner.zip".to_string(), one)];
    let nested = zip_of(&inner);
    let a = bomb("zip bomb: nested zips, deflated", nested, "nested.zip", 4 * GIB, (413, "dataset_too_large"));
    assert!(message(&a).contains("a/inner.zip expands"), "{}", message(&a));
    let nested = zip_with(&inner, zip::CompressionMethod::Stored);
    let a = bomb("zip bomb: nested zips, stored", nested, "nested.zip", 4 * GIB, (422, "dataset_invalid"));
    assert!(message(&a).contains("a/inner.zip") && message(&a).contains("b/inner.zip"), "{}", message(&a));

    // tar.gz: one 2 GiB file, then 32 files of 64 MiB.
    let (tgz, size) = tar_gz_bomb(1, 2048);
    bomb("tar.gz bomb: one 2 GiB file", tgz, "bomb.tar.gz", size, (413, "dataset_too_large"));
    let (tgz, size) = tar_gz_bomb(32, 64);
    let a = bomb("tar.gz bomb: 32 files of 64 MiB", tgz, "bomb.tar.gz", size, (413, "dataset_too_large"));
    assert!(message(&a).contains("max_ratio"), "{}", message(&a));
}

/// A pickle (protocol 2) that calls `os.system(command)` when Python unpickles it.
fn evil_pickle(command: &str) -> Vec<u8> {
    let mut p = b"\x80\x02cposix\nsystem\nX".to_vec();
    p.extend_from_slice(&(command.len() as u32).to_le_bytes());
    p.extend_from_slice(command.as_bytes());
    p.extend_from_slice(b"\x85R.");
    p
}

/// Escaping paths and links, empty and truncated archives, odd layouts, and a pickle.
#[test]
fn unsafe_broken_and_odd_datasets_have_their_codes() {
    use tar::EntryType::{Link, Regular, Symlink};
    let h = Hostile::start();
    let good = shapes_files(h.dir.path());
    let with = |extra: &[(&str, &[u8])]| -> Vec<(String, Vec<u8>)> {
        good.iter().cloned().chain(extra.iter().map(|(n, b)| (n.to_string(), b.to_vec()))).collect()
    };
    let png: &[u8] = &good[0].1;

    // Paths that escape, and links.
    for name in ["data/../../escape.png", "/tmp/absolute.png", "data/a\\..\\..\\escape.png"] {
        let zip = zip_of(&with(&[(name, png)]));
        h.case(&format!("zip entry {name:?}"), (422, "dataset_unsafe_path"), |h| h.dry_run(zip, "d.zip"));
    }
    let mut w = zip::ZipWriter::new_append(std::io::Cursor::new(zip_of(&good))).unwrap();
    w.add_symlink("data/disc/link.png", "/etc/passwd", zip::write::SimpleFileOptions::default()).unwrap();
    let zip = w.finish().unwrap().into_inner();
    h.case("zip symlink", (422, "dataset_unsafe_path"), |h| h.dry_run(zip, "d.zip"));
    let tars: [(&str, TarEntry); 4] = [
        ("tar entry with ..", ("data/disc/../../../escape.png", Regular, png, "")),
        ("tar entry with an absolute path", ("/tmp/absolute.png", Regular, png, "")),
        ("tar symlink", ("data/disc/link.png", Symlink, b"", "/etc/passwd")),
        ("tar hard link", ("data/disc/hard.png", Link, b"", "data/disc/0.png")),
    ];
    for (name, evil) in tars {
        let mut entries: Vec<_> = good.iter().map(|(n, b)| (n.as_str(), Regular, &b[..], "")).collect();
        entries.push(evil);
        let tar = tar_of(&entries);
        h.case(name, (422, "dataset_unsafe_path"), |h| h.dry_run(tar.clone(), "d.tar"));
        h.case(&format!("{name} (gzip)"), (422, "dataset_unsafe_path"), |h| h.dry_run(gzip(&tar), "d.tar.gz"));
    }

    // Empty and truncated archives.
    h.case("empty file", (422, "dataset_archive_invalid"), |h| h.dry_run(Vec::new(), "d.zip"));
    h.case("empty zip", (422, "dataset_archive_invalid"), |h| h.dry_run(zip_of(&[]), "d.zip"));
    let shapes = h.dir.path().join("shapes-files");
    let zipped = h.dir.path().join("shapes.zip");
    zip_dir(&shapes, "data", &zipped);
    let zipped = std::fs::read(&zipped).unwrap();
    let tgz = gzip(&tar_of(&good.iter().map(|(n, b)| (n.as_str(), Regular, &b[..], "")).collect::<Vec<_>>()));
    h.case("the valid zip", (200, ""), |h| h.dry_run(zipped.clone(), "d.zip"));
    h.case("the valid tar.gz", (200, ""), |h| h.dry_run(tgz.clone(), "d.tar.gz"));
    for cut in [zipped.len() / 2, zipped.len() - 10] {
        let part = zipped[..cut].to_vec();
        h.case(&format!("zip cut at {cut}/{}", zipped.len()), (422, "dataset_archive_invalid"), |h| {
            h.dry_run(part, "d.zip")
        });
    }
    for cut in [tgz.len() / 2, tgz.len() - 4] {
        let part = tgz[..cut].to_vec();
        h.case(&format!("tar.gz cut at {cut}/{}", tgz.len()), (422, "dataset_archive_invalid"), |h| {
            h.dry_run(part, "d.tar.gz")
        });
    }

    // Layouts: one class; empty class folders (invisible: classes are the folders with images);
    // 10,000 classes of two 1-pixel images each.
    let one = zip_of(&good[..3]);
    let a = h.case("one class", (422, "dataset_invalid"), |h| h.dry_run(one, "d.zip"));
    assert!(message(&a).contains("at least 2 classes"), "{}", message(&a));
    let empty_dirs = {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for d in ["data/", "data/tulip/", "data/rose/"] {
            w.add_directory(d, zip::write::SimpleFileOptions::default()).unwrap();
        }
        w.finish().unwrap().into_inner()
    };
    h.case("only empty class folders", (422, "dataset_archive_invalid"), |h| h.dry_run(empty_dirs, "d.zip"));
    let mut w = zip::ZipWriter::new_append(std::io::Cursor::new(zipped.clone())).unwrap();
    w.add_directory("data/tulip/", zip::write::SimpleFileOptions::default()).unwrap();
    let plus_empty = w.finish().unwrap().into_inner();
    let a = h.case("an empty class folder beside three", (200, ""), |h| h.dry_run(plus_empty, "d.zip"));
    assert_eq!(a.body["dataset"]["classes"], json!(["bar", "disc", "square"]));
    let tiny = png_of(&image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(1, 1, image::Rgb([9, 9, 9]))));
    let files: Vec<_> = (0..20_000).map(|k| (format!("many/c{:05}/{}.png", k / 2, k % 2), tiny.clone())).collect();
    let many = zip_with(&files, zip::CompressionMethod::Stored);
    let a = h.case("10,000 classes", (200, ""), |h| h.dry_run(many, "many.zip"));
    let d = &a.body["dataset"];
    assert_eq!(d["classes"].as_array().map(Vec::len), Some(10_000));
    assert_eq!((d["train_images"].as_u64(), d["val_images"].as_u64()), (Some(10_000), Some(10_000)));

    // A pickle that would run a command: the API takes no weight file (`weights` names catalog
    // entries), and a `.pth` in a dataset is a file like any other, never unpickled.
    let marker = h.dir.path().join("pwned");
    let pickle = evil_pickle(&format!("touch {}", marker.display()));
    let on_disk = h.dir.path().join("evil.pth");
    std::fs::write(&on_disk, &pickle).unwrap();
    let zip = zip_of(&with(&[("data/evil.pth", &pickle), ("data/disc/evil.pth", &pickle)]));
    let a = h.case("a pickle in a class folder", (422, "dataset_invalid"), |h| h.dry_run(zip, "d.zip"));
    assert!(message(&a).contains("disc/evil.pth: not an image"), "{}", message(&a));
    let mut spec = h.spec.clone();
    spec["weights"] = json!({"mobilenet_v2": on_disk});
    h.case("spec.weights naming a pickle on the server", (404, "unknown_weights"), |h| {
        h.dry_run_with(&spec.to_string(), zipped.clone(), "d.zip")
    });
    assert!(!marker.exists(), "the pickle ran");
}

/// Odd and broken images, in a dataset (dry run) and as `/classify` bodies against the bundled
/// flower model: grayscale, CMYK, 16-bit and animated PNG work; the rest get their codes.
#[test]
fn hostile_images_in_datasets_and_on_classify() {
    let h = Hostile::start();
    let good = shapes_files(h.dir.path());
    let out = h.dir.path();
    let script = "import sys\nfrom PIL import Image\nout = sys.argv[1]\n\
                  Image.new('CMYK', (48, 40), (0, 128, 255, 0)).save(out + '/cmyk.jpg', 'JPEG')\n\
                  a, b = Image.new('RGB', (40, 32), (255, 0, 0)), Image.new('RGB', (40, 32), (0, 0, 255))\n\
                  for ext in ('png', 'gif'):\n    a.save(out + '/animated.' + ext, save_all=True, append_images=[b], duration=100, loop=0)\n";
    let status = std::process::Command::new(common::python()).args(["-c", script]).arg(out).status().unwrap();
    assert!(status.success());
    let read = |name: &str| std::fs::read(out.join(name)).unwrap();
    let (cmyk, apng, gif) = (read("cmyk.jpg"), read("animated.png"), read("animated.gif"));
    assert!(cmyk.windows(5).any(|w| w == b"Adobe") && apng.windows(4).any(|w| w == b"acTL"));

    let noisy =
        image::RgbImage::from_fn(96, 64, |x, y| image::Rgb([((x * 7) ^ (y * 13)) as u8, (x * y) as u8, (x + y) as u8]));
    let jpeg = |img: image::DynamicImage| {
        let mut out = Vec::new();
        img.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)).unwrap();
        out
    };
    let rgb_jpeg = jpeg(image::DynamicImage::ImageRgb8(noisy.clone()));
    let gray = jpeg(image::DynamicImage::ImageLuma8(image::DynamicImage::ImageRgb8(noisy.clone()).to_luma8()));
    let deep = png_of(&image::DynamicImage::ImageRgb16(image::DynamicImage::ImageRgb8(noisy.clone()).to_rgb16()));
    let rgb_png = png_of(&image::DynamicImage::ImageRgb8(noisy));
    let huge = {
        // The IHDR of a small PNG, declaring 100000×100000 pixels, with a valid CRC.
        let mut p = rgb_png.clone();
        p[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        p[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(&p[12..29]);
        p[29..33].copy_from_slice(&crc.sum().to_be_bytes());
        p
    };
    let cut = |bytes: &[u8], keep: usize| bytes[..keep].to_vec();

    // (what, file name in the dataset, bytes, Content-Type, /classify's answer); a dataset holding
    // the image is accepted when /classify is, else refused as `dataset_invalid` naming it.
    let images: [(&str, &str, Vec<u8>, &str, Want); 12] = [
        ("text named .jpg", "text.jpg", b"not an image".to_vec(), "image/jpeg", (422, "undecodable_image")),
        (
            "truncated JPEG",
            "cut.jpg",
            cut(&rgb_jpeg, rgb_jpeg.len() * 6 / 10),
            "image/jpeg",
            (422, "undecodable_image"),
        ),
        (
            "JPEG without its end marker",
            "no-eoi.jpg",
            cut(&rgb_jpeg, rgb_jpeg.len() - 2),
            "image/jpeg",
            (422, "undecodable_image"),
        ),
        ("truncated CMYK JPEG", "cut-cmyk.jpg", cut(&cmyk, cmyk.len() - 2), "image/jpeg", (422, "undecodable_image")),
        ("truncated PNG", "cut.png", cut(&rgb_png, rgb_png.len() * 6 / 10), "image/png", (422, "undecodable_image")),
        ("PNG declaring 100000×100000", "huge.png", huge, "image/png", (413, "image_too_large")),
        ("animated GIF named .jpg", "gif.jpg", gif, "application/octet-stream", (415, "unsupported_media_type")),
        ("16-bit PNG", "deep.png", deep, "image/png", (200, "")),
        ("animated PNG", "animated.png", apng, "image/png", (200, "")),
        ("grayscale JPEG", "gray.jpg", gray, "image/jpeg", (200, "")),
        ("CMYK JPEG", "cmyk.jpg", cmyk, "image/jpeg", (200, "")),
        ("RGB JPEG", "rgb.jpg", rgb_jpeg, "image/jpeg", (200, "")),
    ];
    for (what, file, bytes, content_type, want) in &images {
        let a =
            h.case(&format!("/classify: {what}"), *want, |h| h.post("/classify", bytes.clone(), Some(content_type)));
        if want.0 == 200 {
            assert_eq!(a.body["predictions"].as_array().map(Vec::len), Some(5), "{}", a.body);
            assert_eq!(a.body["model"], "flowers102");
        }
        let mut files = good.clone();
        files.push((format!("data/disc/{file}"), bytes.clone()));
        let accepted = want.0 == 200;
        let a = h.case(&format!("dataset: {what}"), if accepted { (200, "") } else { (422, "dataset_invalid") }, |h| {
            h.dry_run(zip_of(&files), "d.zip")
        });
        if accepted {
            let d = &a.body["dataset"];
            assert_eq!(d["train_images"].as_u64().unwrap() + d["val_images"].as_u64().unwrap(), 10, "{d}");
        } else {
            assert!(message(&a).contains(&format!("disc/{file}")), "{}", message(&a));
        }
    }
    let gif = &images.iter().find(|i| i.1 == "gif.jpg").unwrap().2;
    h.case("/classify: a GIF as image/gif", (415, "unsupported_media_type"), |h| {
        h.post("/classify", gif.clone(), Some("image/gif"))
    });
}

/// Job specs that are huge, not JSON or of the wrong types, and bodies of the wrong type.
#[test]
fn hostile_specs_and_content_types() {
    let h = Hostile::start();
    let archive = zip_of(&shapes_files(h.dir.path()));
    let big = json!({"model": "m", "dataset": {"name": "x".repeat(50 << 20)}});
    h.case("50 MB spec part", (413, "payload_too_large"), |h| submit(&h.client, &h.server, &big, None));
    h.case("50 MB JSON spec", (413, "payload_too_large"), |h| {
        h.post("/finetune", big.to_string().into_bytes(), Some("application/json"))
    });
    let deep = format!("{{\"model\": \"m\", \"recipe\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let bad_specs: [(&str, String, Want); 7] = [
        ("a spec that is not JSON", "model: m".into(), (400, "invalid_json")),
        ("a spec nested 100,000 deep", deep, (400, "invalid_json")),
        ("model as a number", r#"{"model": 5}"#.into(), (400, "invalid_json")),
        ("epochs1 as a string", r#"{"model": "m", "epochs1": "ten"}"#.into(), (400, "invalid_json")),
        ("backbones as a string", r#"{"model": "m", "backbones": "mobilenet_v2"}"#.into(), (400, "invalid_json")),
        ("epochs1 zero", r#"{"model": "m", "epochs1": 0}"#.into(), (422, "invalid_arguments")),
        ("val_fraction 1.5", r#"{"model": "m", "split": {"val_fraction": 1.5}}"#.into(), (422, "invalid_arguments")),
    ];
    for (what, spec, want) in bad_specs {
        // The spec part is text: one that is no job spec is unprocessable, not malformed.
        let part_want = if want.1 == "invalid_json" { (422, "invalid_spec") } else { want };
        h.case(&format!("spec part: {what}"), part_want, |h| h.dry_run_with(&spec, archive.clone(), "d.zip"));
        h.case(&format!("JSON spec: {what}"), want, |h| {
            h.post("/finetune", spec.into_bytes(), Some("application/json"))
        });
    }
    let wrong_types: [(&str, Option<&str>, Want); 5] = [
        ("/finetune", Some("text/plain"), (415, "unsupported_media_type")),
        ("/finetune", Some("application/x-www-form-urlencoded"), (415, "unsupported_media_type")),
        ("/finetune", None, (415, "unsupported_media_type")),
        ("/classify", Some("text/plain"), (415, "unsupported_media_type")),
        ("/classify", None, (415, "unsupported_media_type")),
    ];
    for (path, ct, want) in wrong_types {
        h.case(&format!("{path} as {ct:?}"), want, |h| h.post(path, archive.clone(), ct));
    }
    h.case("multipart without a boundary", (400, "invalid_request"), |h| {
        h.post("/finetune?dry_run=true", archive.clone(), Some("multipart/form-data"))
    });
    // Bodies that end inside or before their closing boundary (found by the `request` fuzz
    // target: actix-multipart 0.7 waited forever for the rest, holding the request open).
    let spec_part = part("spec", h.spec.to_string().as_bytes(), "\r\n");
    let endings: [(&str, String); 3] = [
        ("cut inside the closing boundary", format!("\r\n--{}", &BOUNDARY[..1])),
        ("cut before the closing boundary's dashes", "\r\n".into()),
        ("without a closing boundary", String::new()),
    ];
    for (what, end) in endings {
        let body = [spec_part.as_slice(), &part("dataset\"; filename=\"d.zip", &archive, &end)].concat();
        h.case(&format!("/finetune multipart {what}"), (400, "invalid_request"), |h| {
            h.post_quickly("/finetune?dry_run=true", body, &format!("multipart/form-data; boundary={BOUNDARY}"))
        });
        let image = part("image\"; filename=\"x.jpg", &archive, &end);
        h.case(&format!("/classify multipart {what}"), (400, "invalid_request"), |h| {
            h.post_quickly("/classify", image, &format!("multipart/form-data; boundary={BOUNDARY}"))
        });
    }
}

const BOUNDARY: &str = "xYzZY";

/// One multipart part named `name` holding `data`, followed by `end` (the CRLF before the next
/// boundary, or what a truncated body has instead of its closing boundary).
fn part(name: &str, data: &[u8], end: &str) -> Vec<u8> {
    let head = format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n");
    [head.as_bytes(), data, end.as_bytes()].concat()
}
