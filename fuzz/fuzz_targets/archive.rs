//! Dataset ingest: an uploaded archive (zip, tar, tar.gz) read under limits, then laid out as a
//! dataset (class folders or the Oxford layout), images decoded as training would.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    petal_fuzz_support::ingest(data);
});

#[path = "support.rs"]
mod petal_fuzz_support;
