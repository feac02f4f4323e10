//! Manifests and records read back from a registry (version manifests, job records) and the
//! Oxford Flowers label/split files (MATLAB v5 `.mat`). The first byte picks which.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    petal_fuzz_support::manifest(data);
});

#[path = "support.rs"]
mod petal_fuzz_support;
