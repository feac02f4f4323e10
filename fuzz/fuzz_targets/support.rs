//! What each fuzz target does with its input, shared with `tests/robustness/fuzz_regressions.rs` (which
//! replays `fuzz/regressions/{target}/*` through the same functions on the stable build). Every
//! input must end in `Ok` or a petal `Error`, within the limits set here: a panic, a crash, a
//! hang or an allocation past libFuzzer's RSS limit is a finding.
#![allow(dead_code)]

use std::io::Cursor;

use petal::config::DecodeLimits;
use petal::dataset::archive::ArchiveLimits;
use petal::dataset::IngestOptions;
use petal::vision::EvalTransform;

/// Limits small enough that one input costs milliseconds; the code paths are the same at any size.
fn ingest_options() -> IngestOptions {
    IngestOptions {
        limits: ArchiveLimits {
            max_archive_bytes: 1 << 20,
            max_files: 512,
            max_total_bytes: 8 << 20,
            max_file_bytes: 4 << 20,
            max_ratio: 100,
        },
        decode: DecodeLimits { max_pixels: 1 << 20, max_side: 4096, max_aspect_ratio: 32 },
        max_classes: 1000,
        ..IngestOptions::default()
    }
}

fn small_eval() -> EvalTransform {
    EvalTransform { resize: 32, crop: 24, ..EvalTransform::default() }
}

pub fn ingest(data: &[u8]) {
    let opts = ingest_options();
    if let Ok(files) = petal::dataset::archive::read_archive(Cursor::new(data), &opts.limits) {
        let _ = petal::dataset::from_files(files, &opts, &small_eval());
    }
}

pub fn image(data: &[u8]) {
    // No aspect-ratio limit: the transform of any shape must cost what its crop costs.
    let limits = DecodeLimits { max_pixels: 1 << 22, max_side: 8192, max_aspect_ratio: 0 };
    let eval = small_eval();
    // At full size, and as the server decodes it (a JPEG over 4 × 32 px on its shorter side
    // shrunk while decoded, the default reducing gap of 2).
    for min_shorter in [0, eval.min_decoded_shorter(2.0)] {
        if let Ok(img) = petal::vision::decode_reduced(data, &limits, min_shorter) {
            let out = eval.apply(&img);
            assert_eq!(out.len(), 3 * 24 * 24);
            assert!(out.iter().all(|x| x.is_finite()));
        }
    }
}

/// A multipart body as the server would receive it: the fuzz input cut in chunks of a size the
/// input chooses, behind a fixed boundary.
fn multipart(
    data: &[u8],
) -> (actix_web::http::header::HeaderMap, Vec<Result<actix_web::web::Bytes, actix_web::error::PayloadError>>) {
    use actix_web::http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("multipart/form-data; boundary=xYzZY"));
    let (chunk, body) = match data.split_first() {
        Some((c, rest)) => (usize::from(*c).max(1), rest),
        None => (1, data),
    };
    let chunks = body.chunks(chunk).map(|c| Ok(actix_web::web::Bytes::copy_from_slice(c))).collect();
    (headers, chunks)
}

pub fn request(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 4 {
        0 => {
            let _ = petal::api::jobs::parse_spec(rest);
        }
        1 => {
            let _ = petal::api::classify::from_json(rest);
        }
        2 => {
            let (headers, chunks) = multipart(rest);
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            if let Ok(images) =
                rt.block_on(petal::api::classify::read_form(&headers, futures_util::stream::iter(chunks), 1 << 16))
            {
                assert!(images.iter().map(Vec::len).sum::<usize>() <= 1 << 16);
            }
        }
        _ => {
            if let Ok((_, Some((_, size)))) = finetune_form(rest) {
                assert!(size <= 1 << 16);
            }
        }
    }
}

/// `/finetune`'s multipart reader on `data` (as `multipart` makes it a body), uploads limited to
/// 64 KiB.
pub fn finetune_form(data: &[u8]) -> petal::error::Result<(petal::jobs::JobSpec, Option<(String, u64)>)> {
    let (headers, chunks) = multipart(data);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let file = tempfile::tempfile().unwrap();
    rt.block_on(petal::api::jobs::read_form(&headers, futures_util::stream::iter(chunks), &file, 1 << 16))
}

pub fn weights(data: &[u8]) {
    let _ = petal::train::weights::read_bytes(data);
}

pub fn manifest(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 3 {
        0 => {
            if let Ok(m) = serde_json::from_slice::<petal::registry::manifest::Manifest>(rest) {
                let _ = (m.non_commercial(), m.licences(), m.card());
            }
        }
        1 => {
            let _ = serde_json::from_slice::<petal::jobs::Job>(rest);
        }
        _ => {
            let _ = petal::dataset::mat::parse(rest, 1 << 20);
        }
    }
}
