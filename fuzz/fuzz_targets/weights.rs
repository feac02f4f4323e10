//! Pretrained weights import: `.pth` (zip and legacy pickle, through the allow-list unpickler
//! that never calls anything) and `.safetensors`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    petal_fuzz_support::weights(data);
});

#[path = "support.rs"]
mod petal_fuzz_support;
