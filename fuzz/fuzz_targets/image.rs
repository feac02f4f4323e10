//! Image decoding (JPEG, PNG, WebP, GIF…, grayscale, CMYK, alpha) under pixel limits, then the
//! eval transform (resize, centre crop, normalise) as serving applies it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    petal_fuzz_support::image(data);
});

#[path = "support.rs"]
mod petal_fuzz_support;
